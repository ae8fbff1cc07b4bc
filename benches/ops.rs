//! Criterion benches of the core kernels on the GPU when one is present, else on the CPU
//! (`NABLA_BENCH_CPU=1`: both; the CPU sizes are the rows of the CPU table in
//! docs/benchmarks.md): elementwise add and sum (bytes moved per second), softmax over rows, and
//! f32/TF32/f16/bf16 matmul (FLOP/s, reported by criterion as "elements" per second; f32 with
//! three versions of the FMA-pipe GEMM, f16/bf16 with both versions of the tensor-core GEMM).
//! GPU iterations end with a device synchronize inside the measured closure, so they time the
//! kernels, not the queueing.
//!
//! `cargo bench --bench ops`; on the GPU machine through ../shared/gpu (see docs/benchmarks.md).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use nabla::{DType, Device, Generator, Tensor};

/// Tensors start on cache lines (see `nabla::cpu::CacheAligned`).
#[global_allocator]
static ALLOCATOR: nabla::cpu::CacheAligned = nabla::cpu::CacheAligned;

mod common;
use common::devices;

/// Larger problems on the GPU, where small ones only measure launch latency.
fn size(device: Device, cpu: usize, gpu: usize) -> usize {
    if device.is_cuda() { gpu } else { cpu }
}

fn randn(shape: &[usize], dtype: DType, device: Device) -> Tensor {
    Tensor::randn(shape, dtype, &device, &mut Generator::new(0)).unwrap()
}

fn elementwise(c: &mut Criterion) {
    let mut group = c.benchmark_group("add_f32");
    for device in devices() {
        let n = size(device, 1 << 22, 1 << 26);
        let (a, b) = (randn(&[n], DType::F32, device), randn(&[n], DType::F32, device));
        group.throughput(Throughput::Bytes(3 * 4 * n as u64));
        group.bench_function(BenchmarkId::new(device.to_string(), n), |bench| {
            bench.iter(|| {
                let out = a.add(&b).unwrap();
                device.synchronize().unwrap();
                out
            })
        });
    }
    group.finish();
}

fn sum(c: &mut Criterion) {
    let mut group = c.benchmark_group("sum_f32");
    for device in devices() {
        let n = size(device, 1 << 22, 1 << 26);
        let x = randn(&[n], DType::F32, device);
        group.throughput(Throughput::Bytes(4 * n as u64));
        group.bench_function(BenchmarkId::new(device.to_string(), n), |bench| {
            bench.iter(|| {
                let out = x.sum_all().unwrap();
                device.synchronize().unwrap();
                out
            })
        });
    }
    group.finish();
}

fn softmax(c: &mut Criterion) {
    let mut group = c.benchmark_group("softmax_f32");
    for device in devices() {
        let rows = size(device, 256, 8192);
        let cols = 4096;
        let x = randn(&[rows, cols], DType::F32, device);
        group.throughput(Throughput::Bytes(3 * 4 * (rows * cols) as u64));
        group.bench_function(BenchmarkId::new(device.to_string(), format!("{rows}x{cols}")), |bench| {
            bench.iter(|| {
                let out = x.softmax(-1).unwrap();
                device.synchronize().unwrap();
                out
            })
        });
    }
    group.finish();
}

fn matmul(c: &mut Criterion) {
    // (row, dtype, f32 precision, tensor-core GEMM version, f32 GEMM version, GPU only): f32
    // with version 1 of the f32 GEMM (FMA pipes, the default), with versions 2-4 (`f32_v2` ..
    // `f32_v4`: 16-byte loads, two shared buffers or a cp.async pipeline) and 5 (`f32_v5`: 3xTF32
    // on the tensor cores), and as TF32 (as PyTorch's "high") on versions 2 (`tf32`), 3 and 1 of
    // the tensor-core GEMM; f16 and bf16 with version 2 of the tensor-core GEMM (cp.async
    // pipeline, ldmatrix; the default), then with version 3 (`_v3`: 64-deep stages in dynamic
    // shared memory) and version 1 (`_v1`). The row names match `benches/peer/matmul.py`'s
    // (`f32_v*` against its `f32`, `tf32_v*` against its `tf32`). TF32, bf16 and the other
    // versions are GPU rows (the CPU computes f32 as f32, and its 16-bit path is f16's).
    let rows = [
        ("f32", DType::F32, "highest", 2, 1, false),
        ("f32_v2", DType::F32, "highest", 2, 2, true),
        ("f32_v3", DType::F32, "highest", 2, 3, true),
        ("f32_v4", DType::F32, "highest", 2, 4, true),
        ("f32_v5", DType::F32, "highest", 2, 5, true),
        ("tf32", DType::F32, "high", 2, 1, true),
        ("tf32_v3", DType::F32, "high", 3, 1, true),
        ("tf32_v1", DType::F32, "high", 1, 1, true),
        ("f16", DType::F16, "highest", 2, 1, false),
        ("bf16", DType::BF16, "highest", 2, 1, true),
        ("f16_v3", DType::F16, "highest", 3, 1, true),
        ("bf16_v3", DType::BF16, "highest", 3, 1, true),
        ("f16_v1", DType::F16, "highest", 1, 1, true),
        ("bf16_v1", DType::BF16, "highest", 1, 1, true),
    ];
    let (default_version, default_f32) = (nabla::cuda::gemm::tensor_core_gemm(), nabla::cuda::gemm::f32_gemm());
    for (name, dtype, precision, version, f32_version, gpu_only) in rows {
        nabla::set_float32_matmul_precision(precision).unwrap();
        nabla::cuda::gemm::set_tensor_core_gemm(version).unwrap();
        nabla::cuda::gemm::set_f32_gemm(f32_version).unwrap();
        let mut group = c.benchmark_group(format!("matmul_{name}_flops"));
        for device in devices().into_iter().filter(|d| d.is_cuda() || !gpu_only) {
            let n = size(device, 1024, 4096);
            let (a, b) = (randn(&[n, n], dtype, device), randn(&[n, n], dtype, device));
            group.throughput(Throughput::Elements(2 * (n * n * n) as u64));
            group.bench_function(BenchmarkId::new(device.to_string(), n), |bench| {
                bench.iter(|| {
                    let out = a.matmul(&b).unwrap();
                    device.synchronize().unwrap();
                    out
                })
            });
        }
        group.finish();
    }
    nabla::set_float32_matmul_precision("highest").unwrap();
    nabla::cuda::gemm::set_tensor_core_gemm(default_version).unwrap();
    nabla::cuda::gemm::set_f32_gemm(default_f32).unwrap();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = elementwise, sum, softmax, matmul
}
criterion_main!(benches);
