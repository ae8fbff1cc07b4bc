//! What every bench shares: the devices it times.

use nabla::Device;

/// The devices a bench times: the GPU alone when one is present (the lent GPU machine's battery
/// gives the benches two minutes, and the CPU rows belong to the development machine's table;
/// `NABLA_BENCH_CPU=1` adds them back), else the CPU.
pub fn devices() -> Vec<Device> {
    if nabla::cuda::device_count() == 0 {
        return vec![Device::Cpu];
    }
    let with_cpu = std::env::var("NABLA_BENCH_CPU").is_ok_and(|v| v == "1");
    if with_cpu { vec![Device::Cpu, Device::Cuda(0)] } else { vec![Device::Cuda(0)] }
}

/// Runs one timed step: on the CPU from inside the pool, as `nabla train` runs its steps (see
/// `nabla::cpu::in_pool`); on the GPU directly.
#[allow(dead_code)] // not every bench times whole steps
pub fn step_on<R: Send>(device: &Device, f: impl FnOnce() -> R + Send) -> R {
    if device.is_cuda() { f() } else { nabla::cpu::in_pool(f) }
}
