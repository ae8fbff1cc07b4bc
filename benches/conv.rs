//! conv2d forward and forward+backward on the three layers, and one LeNet-5 training
//! step at batch 256 with SGD momentum. The GPU runs every case (synchronising inside the
//! timed closure); the CPU (when there is no GPU, or with `NABLA_BENCH_CPU=1`) only the small
//! ones. FLOP/s are reported as criterion "elements". PyTorch twin: `benches/peer/conv.py`
//! (cuDNN, TF32 off), to be run in the same device session; ratios and the card go in
//! docs/benchmarks.md.

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use nabla::nn::{ConvNet, Module};
use nabla::optim::{Optimizer, Sgd, SgdConfig};
use nabla::{Conv2dOptions, DType, Device, Generator, Tensor};

/// Tensors start on cache lines (see `nabla::cpu::CacheAligned`).
#[global_allocator]
static ALLOCATOR: nabla::cpu::CacheAligned = nabla::cpu::CacheAligned;

mod common;
use common::devices;

struct Layer {
    name: &'static str,
    input: [usize; 4],
    out_channels: usize,
    kernel: usize,
    options: Conv2dOptions,
    on_cpu: bool,
}

fn layers() -> Vec<Layer> {
    vec![
        Layer {
            name: "lenet_c1",
            input: [256, 1, 28, 28],
            out_channels: 6,
            kernel: 5,
            options: Conv2dOptions::default(),
            on_cpu: true,
        },
        Layer {
            // The CPU table's convolution (docs/benchmarks.md): a ResNet stage at batch 16.
            name: "resnet_3x3_n16",
            input: [16, 64, 56, 56],
            out_channels: 64,
            kernel: 3,
            options: Conv2dOptions::new(1, 1),
            on_cpu: true,
        },
        Layer {
            name: "resnet_3x3",
            input: [64, 64, 56, 56],
            out_channels: 64,
            kernel: 3,
            options: Conv2dOptions::new(1, 1),
            on_cpu: false,
        },
        Layer {
            name: "alexnet_c1",
            input: [128, 3, 224, 224],
            out_channels: 64,
            kernel: 11,
            options: Conv2dOptions::new(4, 2),
            on_cpu: false,
        },
    ]
}

/// Benches `x` convolved with `w` on `device`: the forward (`forward{label}/{device}`) and the
/// forward+backward of its sum (`forward_backward{label}/{device}`); `flops` is the forward's.
fn forward_and_backward(
    group: &mut BenchmarkGroup<'_, WallTime>,
    label: &str,
    device: &Device,
    x: &Tensor,
    w: &Tensor,
    options: Conv2dOptions,
    flops: usize,
) {
    group.throughput(Throughput::Elements(flops as u64));
    group.bench_function(format!("forward{label}/{device}"), |b| {
        b.iter(|| {
            let out = x.conv2d(w, None, options).unwrap();
            device.synchronize().unwrap();
            out
        })
    });
    let (xl, wl) = (x.requires_grad_().unwrap(), w.requires_grad_().unwrap());
    group.throughput(Throughput::Elements(3 * flops as u64));
    group.bench_function(format!("forward_backward{label}/{device}"), |b| {
        b.iter(|| {
            common::step_on(device, || {
                xl.zero_grad();
                wl.zero_grad();
                xl.conv2d(&wl, None, options).unwrap().sum_all().unwrap().backward().unwrap();
                device.synchronize().unwrap();
            })
        })
    });
}

fn conv(c: &mut Criterion) {
    for layer in layers() {
        let mut group = c.benchmark_group(format!("conv2d_{}", layer.name));
        group.sample_size(10);
        for device in devices() {
            if device == Device::Cpu && !layer.on_cpu {
                continue;
            }
            let mut rng = Generator::new(0);
            let [n, ci, _, _] = layer.input;
            let x = Tensor::randn(&layer.input, DType::F32, &device, &mut rng).unwrap();
            let weight =
                Tensor::randn(&[layer.out_channels, ci, layer.kernel, layer.kernel], DType::F32, &device, &mut rng)
                    .unwrap();
            let y = x.conv2d(&weight, None, layer.options).unwrap();
            let (oh, ow) = (y.shape()[2], y.shape()[3]);
            let flops = 2 * n * layer.out_channels * oh * ow * ci * layer.kernel * layer.kernel;
            forward_and_backward(&mut group, "", &device, &x, &weight, layer.options, flops);
            // f32 on the GPU over channels-last copies (its forward, at stride 1 its input
            // gradient, and its weight gradient), for layers with a multiple of 4 input channels:
            // version 2 on the FP32 pipes (`_v2`, the f32 GEMM's cp.async pipeline), version 3 in
            // 3xTF32 on the tensor cores (`_v3`); then as TF32 (set_float32_matmul_precision
            // "high") on versions 1 and 2 of the tensor-core convolution (`_tf32`, `_tf32_v2`;
            // `benches/peer/conv.py` times cuDNN's TF32 beside them).
            if device.is_cuda() && ci.is_multiple_of(4) {
                use nabla::cuda::gemm::{f32_conv, set_f32_conv, set_tensor_core_conv, tensor_core_conv};
                let default_version = f32_conv();
                for (version, label) in [(2, "_v2"), (3, "_v3")] {
                    set_f32_conv(version).unwrap();
                    forward_and_backward(&mut group, label, &device, &x, &weight, layer.options, flops);
                }
                set_f32_conv(default_version).unwrap();
                let (default_precision, default_version) = (nabla::float32_matmul_precision(), tensor_core_conv());
                nabla::set_float32_matmul_precision("high").unwrap();
                for (version, label) in [(1, "_tf32"), (2, "_tf32_v2")] {
                    set_tensor_core_conv(version).unwrap();
                    forward_and_backward(&mut group, label, &device, &x, &weight, layer.options, flops);
                }
                nabla::set_float32_matmul_precision(default_precision).unwrap();
                set_tensor_core_conv(default_version).unwrap();
            }
            // bf16 on the GPU, for layers whose channels suit the channels-last pipeline: on
            // version 1 of the tensor-core convolution, then on version 2 (`_v2`: its forward, at
            // stride 1 its input gradient, and its weight gradient; `benches/peer/conv.py` times
            // PyTorch's bf16 channels-last convolution beside them).
            if device.is_cuda() && ci.is_multiple_of(8) {
                let (xb, wb) = (x.to_dtype(DType::BF16).unwrap(), weight.to_dtype(DType::BF16).unwrap());
                let default_version = nabla::cuda::gemm::tensor_core_conv();
                for (version, label) in [(1, "_bf16"), (2, "_bf16_v2")] {
                    nabla::cuda::gemm::set_tensor_core_conv(version).unwrap();
                    forward_and_backward(&mut group, label, &device, &xb, &wb, layer.options, flops);
                }
                nabla::cuda::gemm::set_tensor_core_conv(default_version).unwrap();
            }
        }
        group.finish();
    }
}

fn lenet_step(c: &mut Criterion) {
    for batch in [64, 256] {
        let mut group = c.benchmark_group(format!("lenet5_sgd_momentum_batch{batch}"));
        group.sample_size(10);
        for device in devices() {
            let mut rng = Generator::new(0);
            let model = ConvNet::lenet5(1, 28, 10, &device, &mut rng).unwrap();
            let mut opt = Sgd::new(model.parameters(), SgdConfig { momentum: 0.9, ..SgdConfig::new(0.01) }).unwrap();
            let x = Tensor::rand(&[batch, 1, 28, 28], DType::F32, &device, &mut rng).unwrap();
            let y = Tensor::randint(0, 10, &[batch], &device, &mut rng).unwrap();
            let train = |opt: &mut Sgd| {
                opt.zero_grad();
                model.forward(&x).unwrap().cross_entropy(&y).unwrap().backward().unwrap();
                opt.step().unwrap();
            };
            group.bench_function(device.to_string(), |b| {
                b.iter(|| {
                    common::step_on(&device, || {
                        train(&mut opt);
                        device.synchronize().unwrap();
                    })
                })
            });
            common::bench_cuda_graph(&mut group, device, &mut opt, train);
        }
        group.finish();
    }
}

criterion_group!(benches, conv, lenet_step);
criterion_main!(benches);
