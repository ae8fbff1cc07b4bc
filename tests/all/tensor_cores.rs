//! The tensor-core path: the `mma.sync` intrinsics (and 3xTF32) on a known product (on a GPU the
//! PTX itself, here the emulator's body, both held to the PTX ISA's fragment layout), and the
//! f16/bf16 products that run on them against the f64 reference.

use crate::common::in_child_process;
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

    // m16n8k8 with TF32 operands: A 16 x 8, B 8 x 8 (small integers are exact in TF32).
    let (a, b) = (known(16, 8, 4), known(8, 8, 5));
    let mut expected = vec![0f32; 128];
    for r in 0..16 {
        for n in 0..8 {
            expected[r * 8 + n] = c[r * 8 + n] + (0..8).map(|k| a[r * 8 + k] * b[k * 8 + n]).sum::<f32>();
        }
    }
    assert_eq!(nabla::cuda::gemm::mma_probe_tf32(&dev, &a, &b, &c).unwrap(), expected, "tf32");
    // The conversion rounds to 10 mantissa bits, to nearest: 1 + 2^-11 + 2^-12 becomes 1 + 2^-10.
    let x = 1.0 + 2f32.powi(-11) + 2f32.powi(-12);
    let mut one = vec![0f32; 128];
    one[0] = x;
    let mut identity = vec![0f32; 64];
    identity[0] = 1.0;
    let d = nabla::cuda::gemm::mma_probe_tf32(&dev, &one, &identity, &vec![0.0; 128]).unwrap();
    assert_eq!(d[0], 1.0 + 2f32.powi(-10), "operands are rounded to TF32");
    assert!(nabla::cuda::gemm::mma_probe_tf32(&dev, &a, &b[..8], &c).is_err(), "sizes are checked");

    // 3xTF32 keeps what one TF32 product rounds away: x = 1 + 2^-11 + 2^-12 is 1 + 2^-10 as TF32
    // but big + small exactly, and random f32 products agree with f64 to f32's accuracy.
    let d = nabla::cuda::gemm::mma_probe_3xtf32(&dev, &one, &identity, &vec![0.0; 128]).unwrap();
    assert_eq!(d[0], x, "3xTF32 recovers the bits TF32 drops");
    let mut rng = Generator::new(33);
    let mut uniform = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.uniform() as f32 * 2.0 - 1.0).collect() };
    let (a, b, c) = (uniform(128), uniform(64), uniform(128));
    let three = nabla::cuda::gemm::mma_probe_3xtf32(&dev, &a, &b, &c).unwrap();
    let single = nabla::cuda::gemm::mma_probe_tf32(&dev, &a, &b, &c).unwrap();
    let (mut worst_three, mut worst_single) = (0f64, 0f64);
    for r in 0..16 {
        for n in 0..8 {
            let want = c[r * 8 + n] as f64 + (0..8).map(|k| a[r * 8 + k] as f64 * b[k * 8 + n] as f64).sum::<f64>();
            worst_three = worst_three.max((three[r * 8 + n] as f64 - want).abs());
            worst_single = worst_single.max((single[r * 8 + n] as f64 - want).abs());
        }
    }
    assert!(worst_three < 1e-5, "3xTF32 is off by {worst_three}");
    assert!(worst_single > 1e-4, "one TF32 product is off by only {worst_single}: the test is too easy");
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

#[test]
fn tf32_products_are_opt_in_and_match_the_reference_within_tf32_tolerance() {
    assert!(nabla::set_float32_matmul_precision("fastest").is_err(), "an unknown precision is refused");
    if !in_child_process("tensor_cores::tf32_products_are_opt_in_and_match_the_reference_within_tf32_tolerance", &[]) {
        return;
    }
    let Some(gpu) = crate::common::cuda_or_skip("tf32 products") else { return };
    let mut rng = Generator::new(32);
    let (m, k, n) = (70, 45, 37);
    let a = Tensor::randn(&[m, k], DType::F32, &Device::Cpu, &mut rng).unwrap();
    let w = Tensor::randn(&[n, k], DType::F32, &Device::Cpu, &mut rng).unwrap();
    let bias = Tensor::randn(&[n], DType::F32, &Device::Cpu, &mut rng).unwrap();
    let x = Tensor::randn(&[2, 3, 11, 13], DType::F32, &Device::Cpu, &mut rng).unwrap();
    let kernel = Tensor::randn(&[5, 3, 3, 3], DType::F32, &Device::Cpu, &mut rng).unwrap();
    let opt = nabla::Conv2dOptions::new(1, 1);
    let expected = [
        nabla::cpu::reference(|| a.linear(&w, Some(&bias))).unwrap(),
        nabla::cpu::reference(|| a.matmul(&w.transpose(0, 1).unwrap())).unwrap(),
        nabla::cpu::reference(|| x.conv2d(&kernel, None, opt)).unwrap(),
    ];
    let on_gpu = || {
        let (ga, gw, gb) = (a.to_device(&gpu).unwrap(), w.to_device(&gpu).unwrap(), bias.to_device(&gpu).unwrap());
        let (gx, gk) = (x.to_device(&gpu).unwrap(), kernel.to_device(&gpu).unwrap());
        [ga.linear(&gw, Some(&gb)), ga.matmul(&gw.transpose(0, 1).unwrap()), gx.conv2d(&gk, None, opt)]
            .map(|t| t.unwrap().to_vec::<f64>().unwrap())
    };
    // The error of each product against the f64 reference, relative to the largest output.
    let worst = |got: &[Vec<f64>; 3]| -> f64 {
        got.iter()
            .zip(&expected)
            .map(|(g, e)| {
                let e = e.to_vec::<f64>().unwrap();
                let scale = e.iter().fold(0f64, |m, v| m.max(v.abs()));
                g.iter().zip(&e).fold(0f64, |m, (x, y)| m.max((x - y).abs() / scale))
            })
            .fold(0.0, f64::max)
    };
    assert_eq!(nabla::float32_matmul_precision(), "highest", "f32 stays f32 by default");
    let exact = worst(&on_gpu());
    assert!(exact < 1e-5, "f32 products: relative error {exact}");
    nabla::set_float32_matmul_precision("high").unwrap();
    assert_eq!(nabla::float32_matmul_precision(), "high");
    let tf32 = worst(&on_gpu());
    println!("largest relative error: f32 {exact:e}, tf32 {tf32:e}");
    // TF32 keeps 10 mantissa bits: a product of depth 45 lands within about 1e-3 of the largest
    // output, and (on these random operands) measurably above f32's error.
    assert!(tf32 < 3e-3, "tf32 products: relative error {tf32}");
    assert!(tf32 > 10.0 * exact.max(1e-7), "tf32 rounding shows: {tf32} vs f32 {exact}");
    nabla::set_float32_matmul_precision("highest").unwrap();
}

#[test]
fn ldmatrix_intrinsics_load_the_ptx_fragment_layout_with_and_without_transpose() {
    let Some(Device::Cuda(ordinal)) = crate::common::cuda_or_skip("ldmatrix intrinsics") else { return };
    let dev = nabla::cuda::cuda_device(ordinal).unwrap();
    let matrix: Vec<u16> = (0..256).map(|i| (i * 37 + 11) as u16).collect();
    let got = nabla::cuda::gemm::ldmatrix_probe(&dev, &matrix).unwrap();
    let at = |row: usize, col: usize| matrix[row * 16 + col] as u32;
    for lane in 0..32 {
        let (group, pair) = (lane / 4, 2 * (lane % 4));
        for j in 0..4 {
            // Matrix j: rows 8 (j % 2).., columns 8 (j / 2)...
            let (r0, c0) = (8 * (j % 2), 8 * (j / 2));
            let plain = at(r0 + group, c0 + pair) | at(r0 + group, c0 + pair + 1) << 16;
            let transposed = at(r0 + pair, c0 + group) | at(r0 + pair + 1, c0 + group) << 16;
            assert_eq!(got[8 * lane + j], plain, "lane {lane} register {j}");
            assert_eq!(got[8 * lane + 4 + j], transposed, "lane {lane} register {j}, .trans");
        }
    }
    assert!(nabla::cuda::gemm::ldmatrix_probe(&dev, &matrix[..255]).is_err(), "sizes are checked");
}

#[test]
fn the_pipelined_gemm_takes_only_operands_whose_16_byte_chunks_are_whole_and_aligned() {
    use nabla::cuda::gemm::pipelined_layout;
    let none = std::iter::empty::<i64>;
    let bf16 = |mnk, a, b, others: &[i64]| pipelined_layout(DType::BF16, mnk, a, b, others.iter().copied());
    // x Wᵀ, dY W and dYᵀ x of a linear layer 64 -> 24 at batch 40, and Xᵀ W.
    assert_eq!(bf16((40, 24, 64), (64, 1), (1, 64), &[]), Some("kk"));
    assert_eq!(bf16((40, 64, 24), (24, 1), (64, 1), &[]), Some("kn"));
    assert_eq!(bf16((24, 64, 40), (1, 24), (64, 1), &[]), Some("mn"));
    assert_eq!(bf16((24, 16, 40), (1, 24), (1, 40), &[]), Some("mk"));
    // Ragged extents away from the contiguous axis are fine (zero-filled); along it they are not.
    assert_eq!(bf16((37, 131, 64), (64, 1), (1, 64), &[]), Some("kk"));
    assert_eq!(bf16((40, 24, 60), (60, 1), (1, 60), &[]), None, "k not a multiple of 8");
    assert_eq!(bf16((40, 63, 24), (24, 1), (63, 1), &[]), None, "n not a multiple of 8");
    assert_eq!(bf16((40, 24, 64), (64, 2), (1, 64), &[]), None, "a strided depth");
    assert_eq!(bf16((40, 24, 64), (64, 1), (1, 64), &[0, 4]), None, "an offset of 4 elements");
    assert_eq!(bf16((40, 24, 64), (64, 1), (1, 64), &[8, 0, 2560, 0]), Some("kk"));
    // f32 chunks are 4 elements: what was ragged for 16-bit chunks is whole here, 2 is not.
    assert_eq!(pipelined_layout(DType::F32, (40, 24, 60), (60, 1), (1, 60), none()), Some("kk"));
    assert_eq!(pipelined_layout(DType::F32, (40, 24, 64), (64, 1), (1, 64), [0, 4]), Some("kk"));
    assert_eq!(pipelined_layout(DType::F32, (40, 24, 64), (64, 1), (1, 64), [0, 2]), None, "an offset of 2");
    assert_eq!(pipelined_layout(DType::F32, (40, 66, 24), (24, 1), (66, 1), none()), None, "n of 66");
}

/// Runs in a child process: the GEMM version is a process-wide setting. On the emulator, the
/// launches of versions 4 and 5 fail unless the host raised the kernels' dynamic shared memory
/// limit, and their shared memory starts as NaN patterns, so a stage read before its copies land
/// shows. Version 5 (3xTF32 on the tensor cores) is held to f32's tolerance, which TF32 products
/// miss (built as plain TF32, version 5 put an output 1.2e-3 off where the tolerance was 8e-5).
#[test]
fn versions_2_to_5_of_the_f32_gemm_match_the_reference_for_every_operand_layout_and_split_depths() {
    assert!(nabla::cuda::gemm::set_f32_gemm(6).is_err(), "an unknown version is refused");
    if !in_child_process(
        "tensor_cores::versions_2_to_5_of_the_f32_gemm_match_the_reference_for_every_operand_layout_and_split_depths",
        &[],
    ) {
        return;
    }
    let Some(gpu) = crate::common::cuda_or_skip("versions 2 to 5 of the f32 GEMM") else { return };
    assert_eq!(nabla::cuda::gemm::f32_gemm(), 1, "version 1 is the default");
    for version in [2, 3, 4, 5] {
        nabla::cuda::gemm::set_f32_gemm(version).unwrap();
        let mut rng = Generator::new(65);
        // Ragged against the 128 x 128 tiles and the 16-deep steps; depths of one, two and several
        // steps; a batch broadcast against a plain matrix; a long depth over few tiles, which splits.
        for (m, k, n) in [(136, 44, 200), (8, 16, 4), (72, 264, 132), (12, 2048, 20)] {
            layouts_match_reference(&gpu, DType::F32, (m, k, n), &mut rng, &format!("version {version}, {m}x{k}x{n}"));
        }
    }
}

/// A linear layer (kk with a bias) and the four operand layouts of a product of `dtype` on
/// `gpu`, `m` x `k` times `k` x `n`: kk, kn (a batch of 2 against a plain matrix), mk and mn,
/// each against the f64 reference.
fn layouts_match_reference(
    gpu: &Device,
    dtype: DType,
    (m, k, n): (usize, usize, usize),
    rng: &mut Generator,
    what: &str,
) {
    let (cases, host) = layout_cases(dtype, (m, k, n), rng);
    crate::common::assert_products_match_reference(&cases, &host, gpu, dtype, k, what);
}

/// The products of [`layouts_match_reference`] and the host operands they take.
fn layout_cases(
    dtype: DType,
    (m, k, n): (usize, usize, usize),
    rng: &mut Generator,
) -> ([(&'static str, crate::common::Product); 7], [Tensor; 5]) {
    let mut randn = |shape: &[usize]| Tensor::randn(shape, dtype, &Device::Cpu, rng).unwrap();
    let (x, xt) = (randn(&[2, m, k]), randn(&[k, m]));
    let (w, wt) = (randn(&[n, k]), randn(&[k, n]));
    let bias = randn(&[n]);
    fn t(v: &Tensor) -> Tensor {
        v.transpose(0, 1).unwrap()
    }
    let cases: [(&str, crate::common::Product); 7] = [
        ("linear kk", |v| v[0].linear(&v[2], Some(&v[4]))),
        ("linear kk, ReLU in the epilogue", |v| v[0].linear_relu(&v[2], Some(&v[4]))),
        ("kn, ReLU in the epilogue, no bias", |v| v[0].linear_relu(&t(&v[3]), None)),
        ("kk", |v| v[0].matmul(&t(&v[2]))),
        ("kn", |v| v[0].matmul(&v[3])),
        ("mk", |v| t(&v[1]).matmul(&t(&v[2]))),
        ("mn", |v| t(&v[1]).matmul(&v[3])),
    ];
    (cases, [x, xt, w, wt, bias])
}

/// Runs in a child process: the precision and the GEMM version are process-wide settings. f32
/// operands as TF32 on the tensor-core pipeline (versions 2 and 3 of the tensor-core GEMM, whose
/// f32 stages hold 16 and 32 depths, padded rows for mn-major operands) against the f64
/// reference: each output within TF32's error relative to the largest output, and that error
/// above what the same products give in f32 (the rounding to TF32 happens).
#[test]
fn tf32_products_on_versions_2_and_3_of_the_tensor_core_gemm_match_the_reference_for_every_operand_layout() {
    if !in_child_process(
        "tensor_cores::tf32_products_on_versions_2_and_3_of_the_tensor_core_gemm_match_the_reference_for_every_operand_layout",
        &[],
    ) {
        return;
    }
    let Some(gpu) = crate::common::cuda_or_skip("TF32 on the tensor-core pipeline") else { return };
    // The largest error of each case against the f64 reference, relative to its largest output.
    let worst = |cases: &[(&str, crate::common::Product)], host: &[Tensor]| -> Vec<f64> {
        let on_gpu: Vec<Tensor> = host.iter().map(|v| v.to_device(&gpu).unwrap()).collect();
        cases
            .iter()
            .map(|(name, product)| {
                let want = nabla::cpu::reference(|| product(host)).unwrap().to_vec::<f64>().unwrap();
                let got = product(&on_gpu).unwrap().to_vec::<f64>().unwrap();
                let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
                let error = got.iter().zip(&want).fold(0f64, |m, (x, y)| m.max((x - y).abs() / scale));
                assert!(got.iter().all(|v| v.is_finite()), "{name}: not finite");
                error
            })
            .collect()
    };
    for version in [2, 3] {
        nabla::cuda::gemm::set_tensor_core_gemm(version).unwrap();
        let mut rng = Generator::new(66);
        // Ragged against the 128 x 128 tiles and the 16- and 32-deep stages; depths of one, two
        // and several stages; a long depth over one tile, which splits.
        for (m, k, n) in [(136, 44, 200), (8, 12, 4), (72, 100, 132), (16, 1024, 24)] {
            let (cases, host) = layout_cases(DType::F32, (m, k, n), &mut rng);
            nabla::set_float32_matmul_precision("highest").unwrap();
            let exact = worst(&cases, &host);
            nabla::set_float32_matmul_precision("high").unwrap();
            let tf32 = worst(&cases, &host);
            for ((name, _), (e, t)) in cases.iter().zip(exact.iter().zip(&tf32)) {
                let what = format!("version {version}, {m}x{k}x{n}, {name}");
                // 10 mantissa bits: within about 1e-3 of the largest output at these depths.
                assert!(*t < 3e-3, "{what}: TF32 relative error {t}");
                assert!(*t > 4.0 * e.max(1e-7), "{what}: TF32 rounding shows ({t} against f32's {e})");
            }
        }
    }
    nabla::set_float32_matmul_precision("highest").unwrap();
}

/// Runs in a child process: the GEMM version is a process-wide setting. On the emulator, version
/// 3's launches fail unless the host raised the kernels' dynamic shared memory limit past 48
/// KiB, as on a GPU, and its shared memory starts as NaN patterns, so a stage read before its
/// copies land shows.
#[test]
fn versions_2_and_3_of_the_tensor_core_gemm_match_the_reference_for_every_operand_layout() {
    assert!(nabla::cuda::gemm::set_tensor_core_gemm(4).is_err(), "an unknown version is refused");
    if !in_child_process(
        "tensor_cores::versions_2_and_3_of_the_tensor_core_gemm_match_the_reference_for_every_operand_layout",
        &[],
    ) {
        return;
    }
    let Some(gpu) = crate::common::cuda_or_skip("pipelined tensor-core products") else { return };
    for version in [2, 3] {
        nabla::cuda::gemm::set_tensor_core_gemm(version).unwrap();
        assert_eq!(nabla::cuda::gemm::tensor_core_gemm(), version);
        let mut rng = Generator::new(64);
        // Ragged against the 128 x 128 tiles and the 32- and 64-deep stages; depths of one, two
        // and several stages; a batch broadcast against a plain matrix; a long depth over one
        // tile, which splits.
        for (m, k, n) in [(136, 40, 200), (8, 96, 16), (72, 264, 136), (16, 2048, 24)] {
            for dtype in [DType::BF16, DType::F16] {
                layouts_match_reference(&gpu, dtype, (m, k, n), &mut rng, &format!("version {version}, {m}x{k}x{n}"));
            }
        }
    }
}

/// The number `kernels/mma_pipeline.cuh` defines `name` as (`#define name value`).
fn pipeline_define(name: &str) -> u32 {
    let header = include_str!("../../kernels/mma_pipeline.cuh");
    let prefix = format!("#define {name} ");
    let line = header.lines().find_map(|l| l.strip_prefix(&prefix));
    line.and_then(|v| v.trim().parse().ok()).unwrap_or_else(|| panic!("{name} is not a number in the header"))
}

#[test]
fn version_3_of_the_tensor_core_gemm_is_launched_with_the_shared_memory_its_stages_take() {
    let define = pipeline_define;
    // Both operands' stages of 16-bit values.
    let stages = 2 * define("PIPE_STAGES") * define("PIPE_BM") * define("PIPE_V3_BK") * 2;
    assert_eq!(nabla::cuda::gemm::TENSOR_CORE_V3_SHARED_BYTES, stages);
    assert!(stages > 48 * 1024, "version 3 is the one past the default limit");
}

#[test]
fn the_f32_tensor_core_pipeline_is_launched_with_the_shared_memory_its_stages_take() {
    let (header, define) = (include_str!("../../kernels/mma_pipeline.cuh"), pipeline_define);
    assert!(header.contains("ROW_STRIDE = SCALAR_READS ? ROW_LEN + PIPE_F32_ROW_PAD : ROW_LEN"));
    // Both operands' stages at their largest: depth rows of 128 + padding f32 values (mn-major)
    // against 128 rows of depth values (k-major). f32 stages hold half the 16-bit depth.
    let stages = |depth: u32| {
        let (rows, pad) = (define("PIPE_BM"), define("PIPE_F32_ROW_PAD"));
        assert!(depth * (rows + pad) >= rows * depth, "the mn-major tile is the larger");
        2 * define("PIPE_STAGES") * depth * (rows + pad) * 4
    };
    let (v2, v3) = (define("PIPE_V2_BK") / 2, define("PIPE_V3_BK") / 2);
    assert_eq!(nabla::cuda::gemm::f32_pipe_shared_bytes(v2), stages(v2));
    assert_eq!(nabla::cuda::gemm::f32_pipe_shared_bytes(v3), stages(v3));
    let matmul = include_str!("../../kernels/matmul.cu");
    for shape in [
        "PIPE_SHAPE_tf32_v2 PIPE_V2_BK / 2, true",
        "PIPE_SHAPE_tf32_v3 PIPE_V3_BK / 2, true",
        "PIPE_SHAPE_v5 PIPE_V2_BK / 2, true",
    ] {
        assert!(
            matmul.contains(&format!("#define {shape}")),
            "{shape}: the depth the host assumes, in dynamic shared memory"
        );
    }
}

#[test]
fn version_4_of_the_f32_gemm_is_launched_with_the_shared_memory_its_stages_take() {
    let header = include_str!("../../kernels/sgemm_v4.cuh");
    let v2 = include_str!("../../kernels/sgemm_v2.cuh");
    // The value a header gives `name` (`#define name value`).
    fn value<'a>(text: &'a str, name: &str) -> Option<&'a str> {
        text.lines().find_map(|l| l.strip_prefix(&format!("#define {name} "))).map(str::trim)
    }
    let define = |text: &str, name: &str| -> u32 {
        value(text, name).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{name} is not a number in its header"))
    };
    // A stage of each operand is the larger layout: 128 rows of 16 depths and 4 of padding
    // (k-major) against 16 depths of 128 and 4 (mn-major).
    assert_eq!(value(header, "SGEMM4_K_STRIDE"), Some("(SGEMM2_BK + 4)"));
    assert_eq!(value(v2, "SGEMM2_STRIDE"), Some("(SGEMM2_TILE + 4)"));
    let (tile, depth) = (define(v2, "SGEMM2_TILE"), define(v2, "SGEMM2_BK"));
    let stage = tile * (depth + 4);
    assert!(stage >= depth * (tile + 4), "the k-major tile is the larger");
    assert_eq!(nabla::cuda::gemm::FMA_V4_SHARED_BYTES, 2 * define(header, "SGEMM4_STAGES") * stage * 4);
}

/// Runs in child processes: each variable is read once per process.
#[test]
fn the_opt_in_engine_versions_default_to_1_and_follow_their_variables() {
    use nabla::cuda::gemm::{f32_conv, f32_gemm, set_f32_conv, set_f32_gemm, set_tensor_core_conv, tensor_core_conv};
    const NAME: &str = "tensor_cores::the_opt_in_engine_versions_default_to_1_and_follow_their_variables";
    type Switch = (&'static str, u8, fn() -> u8, fn(u8) -> nabla::Result<()>);
    let switches: [Switch; 3] = [
        ("NABLA_F32_GEMM", 5, f32_gemm, set_f32_gemm),
        ("NABLA_F32_CONV", 3, f32_conv, set_f32_conv),
        ("NABLA_TENSOR_CORE_CONV", 2, tensor_core_conv, set_tensor_core_conv),
    ];
    if std::env::var_os("NABLA_TEST_CHILD").is_some() {
        for (var, newest, get, set) in switches {
            let expected = match std::env::var(var).ok().and_then(|v| v.parse::<u8>().ok()) {
                Some(v) if (1..=newest).contains(&v) => v,
                _ => 1, // unset, or a value that is not a version: the default
            };
            assert_eq!(get(), expected, "{var}={:?}", std::env::var(var));
            let other = if expected == 1 { newest } else { 1 };
            set(other).unwrap();
            assert_eq!(get(), other, "a call overrides {var}");
            assert!(set(newest + 1).is_err() && set(0).is_err(), "{var}: unknown versions are refused");
        }
        return;
    }
    for value in ["1", "2", "3", "4", "5", "9", "two"] {
        let vars: Vec<(&str, &str)> = switches.iter().map(|s| (s.0, value)).collect();
        in_child_process(NAME, &vars);
    }
}

/// Runs in child processes: the variable is read once per process.
#[test]
fn the_tensor_core_gemm_version_defaults_to_2_and_follows_nabla_tensor_core_gemm() {
    const NAME: &str = "tensor_cores::the_tensor_core_gemm_version_defaults_to_2_and_follows_nabla_tensor_core_gemm";
    if std::env::var_os("NABLA_TEST_CHILD").is_some() {
        let expected = match std::env::var("NABLA_TENSOR_CORE_GEMM").as_deref() {
            Ok("1") => 1,
            Ok("3") => 3,
            _ => 2, // unset, or a value that is not a version: the default
        };
        assert_eq!(nabla::cuda::gemm::tensor_core_gemm(), expected);
        let other = if expected == 1 { 3 } else { 1 };
        nabla::cuda::gemm::set_tensor_core_gemm(other).unwrap();
        assert_eq!(nabla::cuda::gemm::tensor_core_gemm(), other, "a call overrides the variable");
        return;
    }
    for value in ["1", "2", "3", "7", "two"] {
        in_child_process(NAME, &[("NABLA_TENSOR_CORE_GEMM", value)]);
    }
}
