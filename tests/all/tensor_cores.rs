//! The tensor-core path: the `mma.sync.m16n8k16` intrinsics on a known product (on a GPU the
//! PTX itself, here the emulator's body, both held to the PTX ISA's fragment layout), and the
//! f16/bf16 products that run on them against the f64 reference.

use nabla::{DType, Device, Generator, Tensor};

/// Small integers, exact in f16, bf16 and every f32 sum of their products.
fn known(rows: usize, cols: usize, seed: usize) -> Vec<f32> {
    (0..rows * cols).map(|i| ((i * 7 + seed * 3) % 9) as f32 - 4.0).collect()
}

#[test]
fn mma_intrinsics_compute_a_known_product_through_the_ptx_fragment_layout() {
    let Some(Device::Cuda(ordinal)) = crate::common::cuda_or_skip("mma intrinsics") else { return };
    let dev = nabla::cuda::cuda_device(ordinal).unwrap();
    let (a, b, c) = (known(16, 16, 1), known(16, 8, 2), known(16, 8, 3));
    let mut expected = vec![0f32; 128];
    for r in 0..16 {
        for n in 0..8 {
            expected[r * 8 + n] = c[r * 8 + n] + (0..16).map(|k| a[r * 16 + k] * b[k * 8 + n]).sum::<f32>();
        }
    }
    let bits = |v: &[f32], dtype: DType| -> Vec<u16> {
        match dtype {
            DType::BF16 => v.iter().map(|&x| half::bf16::from_f32(x).to_bits()).collect(),
            _ => v.iter().map(|&x| half::f16::from_f32(x).to_bits()).collect(),
        }
    };
    for dtype in [DType::BF16, DType::F16] {
        let d = nabla::cuda::gemm::mma_probe(&dev, dtype, &bits(&a, dtype), &bits(&b, dtype), &c).unwrap();
        assert_eq!(d, expected, "{dtype}");
    }
    assert!(nabla::cuda::gemm::mma_probe(&dev, DType::F32, &[], &[], &[]).is_err());
}

#[test]
fn half_precision_products_on_the_tensor_cores_match_the_reference_at_ragged_edges() {
    let Some(gpu) = crate::common::cuda_or_skip("tensor-core products") else { return };
    let mut rng = Generator::new(16);
    // Ragged sizes (no multiple of any tile), a depth that is not a multiple of 16, a transposed
    // operand, a batch, and a linear layer's bias.
    for (m, k, n) in [(37, 29, 70), (130, 33, 9), (5, 100, 131)] {
        for dtype in [DType::BF16, DType::F16] {
            let a = Tensor::randn(&[2, m, k], dtype, &Device::Cpu, &mut rng).unwrap();
            let w = Tensor::randn(&[n, k], dtype, &Device::Cpu, &mut rng).unwrap();
            let bias = Tensor::randn(&[n], dtype, &Device::Cpu, &mut rng).unwrap();
            let expected = nabla::cpu::reference(|| a.linear(&w, Some(&bias))).unwrap();
            let (ga, gw, gb) = (a.to_device(&gpu).unwrap(), w.to_device(&gpu).unwrap(), bias.to_device(&gpu).unwrap());
            let got = ga.linear(&gw, Some(&gb)).unwrap();
            let plain = ga.matmul(&gw.transpose(0, 1).unwrap()).unwrap();
            let expected_plain = nabla::cpu::reference(|| a.matmul(&w.transpose(0, 1).unwrap())).unwrap();
            // Each output rounds once to the dtype: within its tolerance, scaled by the depth.
            let (atol, rtol) = crate::common::tolerance(dtype);
            let scale = (k as f64).sqrt();
            for (got, want) in [(&got, &expected), (&plain, &expected_plain)] {
                let (g, w) = (got.to_vec::<f64>().unwrap(), want.to_vec::<f64>().unwrap());
                for (i, (x, y)) in g.iter().zip(&w).enumerate() {
                    assert!((x - y).abs() <= atol * scale + rtol * y.abs(), "{dtype} {m}x{k}x{n} [{i}]: {x} vs {y}");
                }
            }
        }
    }
}
