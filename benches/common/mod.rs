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

/// Adds the row `<device>/cuda_graph` to `group` on a CUDA device: `step` (a whole training
/// step on fixed tensors, ending with `optimizer.step()`) run once eagerly, captured as a CUDA
/// graph (`nabla::CudaGraph`), and timed as replays that refresh the optimizer's arguments, as
/// `nabla train --cuda-graph` runs it. The eager row beside it is the same step launch by launch.
#[allow(dead_code)] // not every bench times whole steps
pub fn bench_cuda_graph<O: nabla::optim::Optimizer>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    device: Device,
    optimizer: &mut O,
    mut step: impl FnMut(&mut O),
) {
    if !device.is_cuda() {
        return;
    }
    step(optimizer);
    let (graph, ()) = nabla::CudaGraph::capture(&device, || {
        step(optimizer);
        Ok(())
    })
    .expect("the step captures");
    group.bench_function(format!("{device}/cuda_graph"), |b| {
        b.iter(|| {
            graph.replay_with(|| optimizer.step()).unwrap();
            device.synchronize().unwrap();
        })
    });
}
