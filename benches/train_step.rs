//! One training step of the 784-512-512-10 ReLU MLP at batch 64 and 256 with Adam: forward,
//! fused cross-entropy, backward, fused Adam update. The GPU figure synchronises inside the
//! timed closure; on a GPU the row `cuda_graph` times the same step replayed as a CUDA graph. Its PyTorch twin is `benches/peer/mlp_step.py`; run both in one device
//! session and record the ratio and the card in docs/benchmarks.md.

use criterion::{Criterion, criterion_group, criterion_main};
use nabla::nn::{Activation, Gpt, GptConfig, Mlp, Module};
use nabla::optim::{Adam, AdamConfig, Optimizer};
use nabla::train::text::next_token_loss;
use nabla::{DType, Generator, Precision, Tensor};

/// Tensors start on cache lines (see `nabla::cpu::CacheAligned`).
#[global_allocator]
static ALLOCATOR: nabla::cpu::CacheAligned = nabla::cpu::CacheAligned;

mod common;

fn step(c: &mut Criterion) {
    let devices = common::devices();
    for batch in [64, 256] {
        let mut group = c.benchmark_group(format!("mlp_784_512_512_10_adam_batch{batch}"));
        for &device in &devices {
            let mut rng = Generator::new(0);
            let model = Mlp::new(&[784, 512, 512, 10], Activation::Relu, 0.0, &device, &mut rng).unwrap();
            let mut opt = Adam::new(model.parameters(), AdamConfig::adam(1e-3)).unwrap();
            let x = Tensor::rand(&[batch, 784], DType::F32, &device, &mut rng).unwrap();
            let y = Tensor::randint(0, 10, &[batch], &device, &mut rng).unwrap();
            let train = |opt: &mut Adam| {
                opt.zero_grad();
                let loss = model.forward(&x).unwrap().cross_entropy(&y).unwrap();
                loss.backward().unwrap();
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

/// One AdamW step of the char-GPT presets on random tokens (76 characters, as the shipped
/// plays): `--preset cpu`'s model on the CPU, `--preset gpu`'s on the GPU, there also with the
/// products autocast to bf16 (`--precision bf16`; its PyTorch twin: `benches/peer/char_gpt.py`,
/// whose whole run is the comparison in docs/benchmarks.md), in f32 with attention on the
/// tensor cores in 3xTF32 (`f32_attention_v2`: `nabla::ops::attention::set_f32_attention(2)`),
/// and in f32 with both attention and the products in 3xTF32 (`f32_gemm_v5_attention_v2`:
/// `nabla::cuda::gemm::set_f32_gemm(5)` too): an f32 step at f32's accuracy on the tensor cores.
fn gpt_step(c: &mut Criterion) {
    use nabla::cuda::gemm::{f32_gemm, set_f32_gemm, set_tensor_core_gemm, tensor_core_gemm};
    use nabla::ops::attention::{f32_attention, set_f32_attention};
    let devices = common::devices();
    let (default_version, default_attention, default_f32) = (tensor_core_gemm(), f32_attention(), f32_gemm());
    let mut group = c.benchmark_group("char_gpt_adamw_step");
    group.sample_size(10);
    for &device in &devices {
        let (layers, heads, width, context, batch) =
            if device.is_cuda() { (6, 6, 384, 256, 64) } else { (4, 4, 128, 64, 12) };
        let mut rng = Generator::new(0);
        let config = GptConfig { vocab: 76, context, layers, heads, width, dropout: 0.0 };
        let model = Gpt::new(config, &device, &mut rng).unwrap();
        let mut opt = Adam::new(model.parameters(), AdamConfig::adamw(1e-3)).unwrap();
        let x = Tensor::randint(0, 76, &[batch, context], &device, &mut rng).unwrap();
        let y = Tensor::randint(0, 76, &[batch, context], &device, &mut rng).unwrap();
        // (precision, tensor-core GEMM version, f32 attention version, f32 GEMM version): f32 as
        // configured, f32 with version 2 of f32 attention (the row `f32_attention_v2`), and with
        // version 5 of the f32 GEMM as well (`f32_gemm_v5_attention_v2`), bf16 with the default
        // version 2 of the GEMM, then with versions 3 and 1 (the rows `bf16_gemm_v3`,
        // `bf16_gemm_v1`).
        let rows: &[(Precision, u8, u8, u8)] = if device.is_cuda() {
            &[
                (Precision::F32, 2, default_attention, default_f32),
                (Precision::F32, 2, 2, default_f32),
                (Precision::F32, 2, 2, 5),
                (Precision::Bf16, 2, default_attention, default_f32),
                (Precision::Bf16, 3, default_attention, default_f32),
                (Precision::Bf16, 1, default_attention, default_f32),
            ]
        } else {
            &[(Precision::F32, 1, default_attention, default_f32)]
        };
        for &(precision, version, attention, f32_version) in rows {
            let gemm = if version == 2 { String::new() } else { format!("_gemm_v{version}") };
            let f32_gemm_name =
                if f32_version == default_f32 { String::new() } else { format!("_gemm_v{f32_version}") };
            let attention_name =
                if attention == default_attention { String::new() } else { format!("_attention_v{attention}") };
            let name = format!(
                "{device}/{precision}{gemm}{f32_gemm_name}{attention_name}/{layers}x{width}_context{context}_batch{batch}"
            );
            if device.is_cuda() {
                set_tensor_core_gemm(version).unwrap();
                set_f32_attention(attention).unwrap();
                set_f32_gemm(f32_version).unwrap();
            }
            group.bench_function(name, |b| {
                b.iter(|| {
                    common::step_on(&device, || {
                        opt.zero_grad();
                        precision.run(|| next_token_loss(&model, &x, &y)).unwrap().backward().unwrap();
                        opt.step().unwrap();
                        device.synchronize().unwrap();
                    })
                })
            });
        }
    }
    group.finish();
    if devices.iter().any(|d| d.is_cuda()) {
        set_tensor_core_gemm(default_version).unwrap();
        set_f32_attention(default_attention).unwrap();
        set_f32_gemm(default_f32).unwrap();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = step, gpt_step
}
criterion_main!(benches);
