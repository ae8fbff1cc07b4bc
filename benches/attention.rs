//! Fused scaled dot-product attention, forward and forward+backward, on the GPU at the shapes
//! of the transformer issue: bf16 batch 4, 16 heads, seq 2048, head_dim 64 and 128 (full and
//! causal), and f32 batch 8, 8 heads, seq 512, head_dim 64. The CPU reference is too slow for
//! these sizes and is skipped. FLOP/s are criterion "elements" (4·B·H·Sq·Sk·D for the forward,
//! halved when causal; 2.5x that for forward+backward). The f32 shape runs on both f32
//! versions: `f32_*` on the default (version 1, the FP32 pipes unless `NABLA_F32_ATTENTION` says
//! otherwise) and `f32_*_v2` on the tensor cores in 3xTF32 (`nabla::ops::attention::set_f32_attention`).
//! PyTorch twin: `benches/peer/attention.py`, to be run in the same device session.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use nabla::{DType, Device, Generator, Tensor};

/// Tensors start on cache lines (see `nabla::cpu::CacheAligned`).
#[global_allocator]
static ALLOCATOR: nabla::cpu::CacheAligned = nabla::cpu::CacheAligned;

fn attention(c: &mut Criterion) {
    if nabla::cuda::device_count() == 0 {
        eprintln!("attention bench: no CUDA device, skipped");
        return;
    }
    let device = Device::Cuda(0);
    use nabla::ops::attention::{f32_attention, set_f32_attention};
    let default_f32 = f32_attention();
    // (name, dtype, shape, causal, f32 version)
    let cases = [
        ("bf16_b4_h16_s2048_d64", DType::BF16, [4, 16, 2048, 64], false, default_f32),
        ("bf16_b4_h16_s2048_d64_causal", DType::BF16, [4, 16, 2048, 64], true, default_f32),
        ("bf16_b4_h16_s2048_d128", DType::BF16, [4, 16, 2048, 128], false, default_f32),
        ("f32_b8_h8_s512_d64", DType::F32, [8, 8, 512, 64], false, default_f32),
        ("f32_b8_h8_s512_d64_v2", DType::F32, [8, 8, 512, 64], false, 2),
    ];
    let mut group = c.benchmark_group("attention");
    group.sample_size(10);
    for (name, dtype, shape, causal, version) in cases {
        set_f32_attention(version).unwrap();
        let mut rng = Generator::new(0);
        let [b, h, s, d] = shape;
        let make = |rng: &mut Generator| Tensor::randn(&shape, dtype, &device, rng).unwrap();
        let (q, k, v) = (make(&mut rng), make(&mut rng), make(&mut rng));
        let flops = 4 * b * h * s * s * d / if causal { 2 } else { 1 };
        group.throughput(Throughput::Elements(flops as u64));
        group.bench_function(format!("{name}/forward"), |bench| {
            bench.iter(|| {
                let out = q.scaled_dot_product_attention(&k, &v, causal, None).unwrap();
                device.synchronize().unwrap();
                out
            })
        });
        let (ql, kl, vl) = (q.requires_grad_().unwrap(), k.requires_grad_().unwrap(), v.requires_grad_().unwrap());
        let grad = make(&mut rng);
        group.throughput(Throughput::Elements((flops as f64 * 3.5) as u64));
        group.bench_function(format!("{name}/forward_backward"), |bench| {
            bench.iter(|| {
                for t in [&ql, &kl, &vl] {
                    t.zero_grad();
                }
                let out = ql.scaled_dot_product_attention(&kl, &vl, causal, None).unwrap();
                out.mul(&grad).unwrap().sum_all().unwrap().backward().unwrap();
                device.synchronize().unwrap();
            })
        });
    }
    group.finish();
    set_f32_attention(default_f32).unwrap();
}

criterion_group!(benches, attention);
criterion_main!(benches);
