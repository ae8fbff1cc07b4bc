//! Split-depth matrix products: few output tiles and a long depth (a linear layer's weight
//! gradient over many tokens) run as partial products over depth ranges, added up by a second
//! kernel. Every dtype, both tensor-core GEMM versions and the bias and ReLU epilogues against
//! the f64 reference.

use nabla::{DType, Device, Generator, Tensor};

fn t(v: &Tensor) -> Tensor {
    v.transpose(-2, -1).unwrap()
}

#[test]
fn split_depth_products_match_the_reference_for_every_dtype_layout_and_bias() {
    let Some(gpu) = crate::common::cuda_or_skip("split-depth products") else { return };
    let mut rng = Generator::new(77);
    // One 64 x 64 or 128 x 128 tile of output and 1536-2048 deep: four splits on 132 SMs. A
    // depth of 2045 keeps f16/bf16 off version 2 (its chunks need a multiple of 8).
    for (m, k, n) in [(40, 2048, 24), (24, 2045, 40)] {
        for dtype in [DType::F64, DType::F32, DType::F16, DType::BF16] {
            let randn = |shape: &[usize], rng: &mut Generator| Tensor::randn(shape, dtype, &Device::Cpu, rng).unwrap();
            let (x, w, bias) = (randn(&[m, k], &mut rng), randn(&[n, k], &mut rng), randn(&[n], &mut rng));
            let (dy, batched) = (randn(&[k, n], &mut rng), randn(&[2, m, k], &mut rng));
            let cases: [(&str, crate::common::Product); 5] = [
                ("linear x Wᵀ + b", |v| v[0].linear(&v[1], Some(&v[2]))),
                ("relu(x Wᵀ + b), clamped as the splits are added", |v| v[0].linear_relu(&v[1], Some(&v[2]))),
                ("weight gradient dYᵀ X", |v| t(&v[3]).matmul(&t(&v[0]))),
                ("batched X Wᵀ", |v| v[4].matmul(&t(&v[1]))),
                ("X Wᵀ", |v| v[0].matmul(&t(&v[1]))),
            ];
            let host = [x, w, bias, dy, batched];
            let what = format!("{m}x{k}x{n}");
            crate::common::assert_products_match_reference(&cases, &host, &gpu, dtype, k, &what);
        }
    }
}
