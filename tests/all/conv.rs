//! Convolution: the CPU reference against an independent seven-loop definition and
//! hand-computed values, gradients by finite differences, and the GPU against the CPU over
//! random shapes (odd sizes, strides 1-4, padding 0-3, kernels 1-11, dilation, groups).

use crate::common::*;
use nabla::{Conv2dOptions, DType, Device, Generator, Tensor};

/// The definition, one output element at a time, in f64.
fn naive_conv(x: &Tensor, w: &Tensor, b: Option<&Tensor>, o: Conv2dOptions) -> (Vec<usize>, Vec<f64>) {
    let (xs, ws) = (x.shape().to_vec(), w.shape().to_vec());
    let (n, c, h, wd) = (xs[0], xs[1], xs[2], xs[3]);
    let (oc, cg, kh, kw) = (ws[0], ws[1], ws[2], ws[3]);
    let oh = (h + 2 * o.padding.0 - o.dilation.0 * (kh - 1) - 1) / o.stride.0 + 1;
    let ow = (wd + 2 * o.padding.1 - o.dilation.1 * (kw - 1) - 1) / o.stride.1 + 1;
    let (xv, wv) = (x.to_vec::<f64>().unwrap(), w.to_vec::<f64>().unwrap());
    let bv = b.map(|b| b.to_vec::<f64>().unwrap());
    let og = oc / o.groups;
    let mut out = vec![0.0; n * oc * oh * ow];
    for b_ in 0..n {
        for k in 0..oc {
            let g = k / og;
            for y in 0..oh {
                for x_ in 0..ow {
                    let mut acc = bv.as_ref().map_or(0.0, |b| b[k]);
                    for ci in 0..cg {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (y * o.stride.0 + ky * o.dilation.0) as isize - o.padding.0 as isize;
                                let ix = (x_ * o.stride.1 + kx * o.dilation.1) as isize - o.padding.1 as isize;
                                if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < wd {
                                    let xi = ((b_ * c + g * cg + ci) * h + iy as usize) * wd + ix as usize;
                                    acc += xv[xi] * wv[((k * cg + ci) * kh + ky) * kw + kx];
                                }
                            }
                        }
                    }
                    out[((b_ * oc + k) * oh + y) * ow + x_] = acc;
                }
            }
        }
    }
    (vec![n, oc, oh, ow], out)
}

/// (input shape, weight shape, options) covering the parameter space.
fn cases() -> Vec<([usize; 4], [usize; 4], Conv2dOptions)> {
    let opt = |s: (usize, usize), p: (usize, usize), d: (usize, usize), g| Conv2dOptions {
        stride: s,
        padding: p,
        dilation: d,
        groups: g,
    };
    vec![
        ([1, 1, 5, 5], [1, 1, 3, 3], Conv2dOptions::default()),
        ([2, 3, 7, 9], [4, 3, 3, 3], opt((1, 1), (1, 1), (1, 1), 1)),
        ([1, 2, 13, 11], [5, 2, 5, 3], opt((2, 3), (2, 0), (1, 1), 1)),
        ([3, 4, 10, 10], [6, 2, 3, 3], opt((1, 1), (1, 1), (1, 1), 2)),
        ([1, 6, 9, 8], [6, 1, 3, 3], opt((2, 2), (1, 1), (1, 1), 6)),
        ([2, 3, 15, 17], [3, 3, 3, 2], opt((1, 2), (3, 2), (2, 3), 1)),
        ([1, 3, 23, 23], [7, 3, 11, 11], opt((4, 4), (2, 2), (1, 1), 1)),
        ([2, 5, 6, 7], [3, 5, 1, 1], opt((1, 1), (0, 0), (1, 1), 1)),
    ]
}

#[test]
fn conv2d_matches_the_definition_for_strided_padded_dilated_and_grouped_inputs() {
    for (i, (xs, ws, opt)) in cases().into_iter().enumerate() {
        let x = randn(&xs, DType::F64, i as u64);
        let w = randn(&ws, DType::F64, 100 + i as u64);
        let b = randn(&[ws[0]], DType::F64, 200 + i as u64);
        let y = x.conv2d(&w, Some(&b), opt).unwrap();
        let (shape, want) = naive_conv(&x, &w, Some(&b), opt);
        assert_eq!(y.shape(), &shape[..], "case {i}");
        for (j, (g, w)) in y.to_vec::<f64>().unwrap().iter().zip(&want).enumerate() {
            assert!((g - w).abs() < 1e-12, "case {i} element {j}: {g} vs {w}");
        }
    }
}

#[test]
fn classic_kernels_give_hand_computed_outputs() {
    // A 4x4 ramp: the Laplacian edge kernel vanishes inside, the box blur averages.
    let x = Tensor::arange(0.0, 16.0, 1.0, DType::F64, &Device::Cpu).unwrap().reshape(&[1, 1, 4, 4]).unwrap();
    let laplace =
        Tensor::from_vec(vec![0.0, -1.0, 0.0, -1.0, 4.0, -1.0, 0.0, -1.0, 0.0], &[1, 1, 3, 3], &Device::Cpu).unwrap();
    assert_eq!(x.conv2d(&laplace, None, Conv2dOptions::default()).unwrap().to_vec::<f64>().unwrap(), vec![0.0; 4]);
    let blur = Tensor::full(&[1, 1, 3, 3], 1.0 / 9.0, DType::F64, &Device::Cpu).unwrap();
    let y = x.conv2d(&blur, None, Conv2dOptions::default()).unwrap().to_vec::<f64>().unwrap();
    for (g, w) in y.iter().zip([5.0, 6.0, 9.0, 10.0]) {
        assert!((g - w).abs() < 1e-12);
    }
    // identity with padding 1 reproduces the image
    let mut id = vec![0.0; 9];
    id[4] = 1.0;
    let identity = Tensor::from_vec(id, &[1, 1, 3, 3], &Device::Cpu).unwrap();
    assert_eq!(
        x.conv2d(&identity, None, Conv2dOptions::new(1, 1)).unwrap().to_vec::<f64>().unwrap(),
        x.to_vec::<f64>().unwrap()
    );
}

#[test]
fn conv2d_rejects_mismatched_shapes_with_the_shapes_in_the_message() {
    let x = Tensor::zeros(&[1, 3, 8, 8], DType::F32, &Device::Cpu).unwrap();
    let w = Tensor::zeros(&[4, 2, 3, 3], DType::F32, &Device::Cpu).unwrap();
    let err = x.conv2d(&w, None, Conv2dOptions::default()).unwrap_err().to_string();
    assert!(err.contains("conv2d") && err.contains("[1, 3, 8, 8]") && err.contains("[4, 2, 3, 3]"), "{err}");
    let big = Tensor::zeros(&[4, 3, 11, 11], DType::F32, &Device::Cpu).unwrap();
    assert!(
        x.conv2d(&big, None, Conv2dOptions::default())
            .unwrap_err()
            .to_string()
            .contains("larger than the padded input")
    );
    let w3 = Tensor::zeros(&[4, 3, 3, 3], DType::F32, &Device::Cpu).unwrap();
    let bias = Tensor::zeros(&[5], DType::F32, &Device::Cpu).unwrap();
    assert!(x.conv2d(&w3, Some(&bias), Conv2dOptions::default()).is_err());
    assert!(x.conv2d(&w3, None, Conv2dOptions { groups: 0, ..Default::default() }).is_err());
    assert!(x.conv2d(&w3, None, Conv2dOptions { stride: (0, 1), ..Default::default() }).is_err());
}

/// Layers with a multiple of 8 (one of them 4) input channels per group, ragged against the
/// pipelines' 128 x 128 tiles and their 16- and 32-deep stages (a depth of 4, 8 and 9 taps x 64
/// channels; 136 output channels; 288 pixels), with or without a bias. At stride 1 the input
/// gradient runs as the pipelined forward over the output gradient, its taps stepping back
/// (negative padding and dilation; one case pads a 1 x 1 kernel). The weight gradient runs on
/// the pipeline too, reading dY in place where an output plane holds a whole number of chunks
/// (8 pixels of 16 bits, 4 of f32: 144, 64, 72 and 256 pixels) and a packed copy elsewhere (49,
/// 63 and 729 pixels, and 36 in 16 bits; its rows padded to a chunk but for f32's 4 x 729); two
/// cases split its depth, one of them packed.
fn channels_last_cases() -> [([usize; 4], [usize; 4], Conv2dOptions, bool); 8] {
    let opt = |s: (usize, usize), p: (usize, usize), d: (usize, usize), g| Conv2dOptions {
        stride: s,
        padding: p,
        dilation: d,
        groups: g,
    };
    [
        ([2, 16, 12, 12], [24, 16, 3, 3], opt((1, 1), (1, 1), (1, 1), 1), true),
        ([3, 32, 9, 10], [16, 16, 3, 2], opt((2, 1), (1, 0), (2, 1), 2), false),
        ([1, 8, 5, 7], [8, 8, 1, 1], opt((1, 1), (1, 0), (1, 1), 1), true),
        ([2, 64, 8, 8], [136, 64, 3, 3], opt((1, 1), (1, 1), (1, 1), 1), true),
        ([2, 16, 9, 8], [16, 8, 3, 3], opt((1, 1), (2, 1), (2, 1), 2), false),
        ([8, 16, 16, 16], [16, 16, 3, 3], opt((1, 1), (1, 1), (1, 1), 1), false),
        ([2, 8, 7, 9], [12, 4, 3, 3], opt((1, 1), (1, 1), (1, 1), 2), true),
        ([4, 8, 29, 29], [8, 8, 3, 3], opt((1, 1), (0, 0), (1, 1), 1), false),
    ]
}

/// [`channels_last_cases`] in `dtype` on `dev` under the versions in force (`label` names them in
/// failures): the forward (every other case with the ReLU in its epilogue) and both gradients
/// of Σ y g against the CPU reference, within a sum of depth products each rounded by `rounding`.
fn assert_channels_last_cases_match_the_reference(dev: &Device, dtype: DType, rounding: f64, label: &str) {
    for (seed, (xs, ws, o, with_bias)) in channels_last_cases().into_iter().enumerate() {
        let x = randn(&xs, DType::F32, 10 + seed as u64).to_dtype(dtype).unwrap();
        let w = randn(&ws, DType::F32, 20 + seed as u64).to_dtype(dtype).unwrap();
        let b = with_bias.then(|| randn(&[ws[0]], DType::F32, 30 + seed as u64).to_dtype(dtype).unwrap());
        let on_gpu = |t: &Tensor| t.to_device(dev).unwrap();
        let relu = seed % 2 == 1;
        let (xg, wg, bg) = (on_gpu(&x), on_gpu(&w), b.as_ref().map(on_gpu));
        let got = if relu { xg.conv2d_relu(&wg, bg.as_ref(), o) } else { xg.conv2d(&wg, bg.as_ref(), o) }.unwrap();
        let (shape, mut want) = naive_conv(&x, &w, b.as_ref(), o);
        if relu {
            want.iter_mut().for_each(|v| *v = v.max(0.0));
        }
        let want = Tensor::from_vec(want, &shape, &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
        let depth = (ws[1] * ws[2] * ws[3]) as f64;
        let what = format!("{dtype} conv2d forward, {label}, {xs:?} * {ws:?}, ReLU: {relu}");
        let got = got.to_device(&Device::Cpu).unwrap();
        assert_close(&what, &got, &want, (2.0 * rounding * depth.sqrt(), 2.0 * rounding));
        // The gradients of Σ y g, on the GPU and by the CPU reference.
        let g = randn(&shape, DType::F32, 40 + seed as u64).to_dtype(dtype).unwrap();
        let grads = |device: &Device| {
            let xl = x.to_device(device).unwrap().requires_grad_().unwrap();
            let wl = w.to_device(device).unwrap().requires_grad_().unwrap();
            let y = xl.conv2d(&wl, None, o).unwrap();
            y.mul(&g.to_device(device).unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
            [xl, wl].map(|t| t.grad().unwrap().to_device(&Device::Cpu).unwrap())
        };
        let (gpu, cpu) = (grads(dev), nabla::cpu::reference(|| grads(&Device::Cpu)));
        let depth = (ws[0] / o.groups * ws[2] * ws[3]) as f64;
        let what = format!("{dtype} conv2d grad input, {label}, {xs:?} * {ws:?}");
        assert_close(&what, &gpu[0], &cpu[0], (2.0 * rounding * depth.sqrt(), 2.0 * rounding));
        let depth = (shape[0] * shape[2] * shape[3]) as f64;
        let what = format!("{dtype} conv2d grad weight, {label}, {xs:?} * {ws:?}");
        assert_close(&what, &gpu[1], &cpu[1], (2.0 * rounding * depth.sqrt(), 2.0 * rounding));
    }
}

/// f32 accumulation of K products of unit normals (about √K in size), rounded to dtype (f32:
/// the accumulation's own rounding, K additions).
fn accumulation_rounding(dtype: DType) -> f64 {
    match dtype {
        DType::BF16 => 2f64.powi(-8),
        DType::F16 => 2f64.powi(-11),
        _ => 2f64.powi(-18),
    }
}

/// Runs in a child process: the convolution versions are process-wide settings. Version 2 of the
/// tensor-core convolution gathers channels-last chunks of 8 channels by cp.async, version 2 of
/// the f32 convolution chunks of 4 (on the f32 GEMM's version-4 pipeline), over
/// [`channels_last_cases`], held to the CPU reference (the passes they do not take run on version 1).
#[test]
fn conv2d_forward_and_gradients_on_the_channels_last_pipelines_match_the_reference() {
    assert!(nabla::cuda::gemm::set_tensor_core_conv(3).is_err(), "an unknown version is refused");
    assert!(nabla::cuda::gemm::set_f32_conv(4).is_err(), "an unknown version is refused");
    const NAME: &str = "conv::conv2d_forward_and_gradients_on_the_channels_last_pipelines_match_the_reference";
    if !in_child_process(NAME, &[]) {
        return;
    }
    let Some(dev) = cuda_or_skip("conv2d forward, version 2") else { return };
    assert_eq!(nabla::cuda::gemm::tensor_core_conv(), 1, "version 1 is the default");
    assert_eq!(nabla::cuda::gemm::f32_conv(), 1, "version 1 is the default");
    nabla::cuda::gemm::set_tensor_core_conv(2).unwrap();
    nabla::cuda::gemm::set_f32_conv(2).unwrap();
    for dtype in [DType::BF16, DType::F16, DType::F32] {
        assert_channels_last_cases_match_the_reference(&dev, dtype, accumulation_rounding(dtype), "version 2");
    }
}

/// Runs in a child process (process-wide settings): f32 layers on the tensor-core pipeline of the
/// 16-bit convolution, over [`channels_last_cases`]. Version 3 of the f32 convolution (3xTF32:
/// each value split into two TF32 parts, three products for one) is held to f32's tolerance,
/// which a plain TF32 product misses; TF32 (`set_float32_matmul_precision("high")` with tensor-core
/// convolution version 2) to one of a TF32 rounding (2^-11) of each operand.
#[test]
fn f32_convolutions_on_the_tensor_core_pipeline_in_3xtf32_and_as_tf32_match_the_reference() {
    const NAME: &str = "conv::f32_convolutions_on_the_tensor_core_pipeline_in_3xtf32_and_as_tf32_match_the_reference";
    if !in_child_process(NAME, &[]) {
        return;
    }
    let Some(dev) = cuda_or_skip("f32 conv2d on the tensor cores") else { return };
    nabla::cuda::gemm::set_f32_conv(3).unwrap();
    assert_channels_last_cases_match_the_reference(&dev, DType::F32, accumulation_rounding(DType::F32), "3xTF32");
    nabla::set_float32_matmul_precision("high").unwrap();
    nabla::cuda::gemm::set_tensor_core_conv(2).unwrap();
    assert_channels_last_cases_match_the_reference(&dev, DType::F32, 2f64.powi(-10), "TF32");
}

#[test]
fn conv2d_on_the_gpu_matches_the_cpu_with_large_tiles_and_a_split_weight_gradient() {
    let Some(dev) = cuda_or_skip("conv2d large tiles") else { return };
    // Forward: 128 (then 64) output channels x 5·64·64 pixels is 160 tiles of 128 x 128 (of
    // 64 x 128), more than the 132 SMs of an H100/H200 (and of the emulator), so the large (the
    // wide) tiles run. The weight gradient is 128 x 27 (64 x 27) outputs, 20,480 pixels deep:
    // its depth is split across blocks and summed.
    let x = randn(&[5, 3, 66, 66], DType::F32, 1);
    for channels in [128, 64] {
        let w = randn(&[channels, 3, 3, 3], DType::F32, 2);
        let run = |device: &Device| -> Vec<Tensor> {
            let (xl, wl) = (x.to_device(device).unwrap(), w.to_device(device).unwrap().requires_grad_().unwrap());
            let y = xl.conv2d(&wl, None, Conv2dOptions::default()).unwrap();
            let g = randn(y.shape(), DType::F32, 3).to_device(device).unwrap();
            y.mul(&g).unwrap().sum_all().unwrap().backward().unwrap();
            [y.detach(), wl.grad().unwrap()].map(|t| t.to_device(&Device::Cpu).unwrap()).to_vec()
        };
        let (gpu, cpu) = (run(&dev), nabla::cpu::reference(|| run(&Device::Cpu)));
        assert_close(&format!("conv2d forward, {channels} channels"), &gpu[0], &cpu[0], (1e-4, 1e-5));
        // each weight-gradient element sums 20,480 products of unit normals (about 143 in size)
        assert_close(&format!("conv2d grad weight, {channels} channels"), &gpu[1], &cpu[1], (2e-2, 1e-5));
    }
}

#[test]
fn conv2d_grad_input_on_the_gpu_matches_the_cpu_on_both_sides_of_the_direct_kernel_rule() {
    let Some(dev) = cuda_or_skip("conv2d grad input, direct and GEMM") else { return };
    let opt = |s: (usize, usize), p: (usize, usize), d: (usize, usize), g| Conv2dOptions {
        stride: s,
        padding: p,
        dilation: d,
        groups: g,
    };
    // The direct kernel takes up to 4 input channels per group at stride 1 and up to 16 where
    // the strides' product is at least 4; the implicit GEMM the rest. Rows 70 wide at stride 2
    // give each residue class two runs of 32 lanes, the second partly past the row.
    let shapes = [
        ([2, 3, 27, 29], [5, 3, 11, 11], opt((4, 4), (2, 2), (1, 1), 1)), // direct: AlexNet's first layer, small
        ([1, 4, 9, 70], [3, 4, 3, 3], opt((1, 1), (1, 1), (1, 1), 1)),    // direct
        ([1, 5, 9, 10], [3, 5, 3, 3], opt((1, 1), (1, 1), (1, 1), 1)),    // GEMM
        ([1, 16, 9, 70], [3, 16, 3, 3], opt((2, 2), (1, 1), (1, 1), 1)),  // direct
        ([1, 17, 9, 12], [3, 17, 3, 3], opt((2, 2), (1, 1), (1, 1), 1)),  // GEMM
        ([2, 6, 13, 15], [4, 3, 5, 3], opt((1, 3), (2, 0), (2, 1), 2)),   // direct, two groups, dilated
        ([1, 10, 11, 11], [6, 5, 3, 3], opt((3, 1), (0, 2), (1, 2), 2)),  // direct, a channel block of 1
    ];
    for dtype in FLOATS {
        let (atol, rtol) = tolerance(dtype);
        for (i, (xs, ws, opt)) in shapes.iter().enumerate() {
            let x = randn(xs, dtype, 200 + i as u64);
            let w = randn(ws, dtype, 300 + i as u64);
            let depth = (ws[0] / opt.groups * ws[2] * ws[3]) as f64;
            let run = |device: &Device| -> Tensor {
                let xl = x.to_device(device).unwrap().requires_grad_().unwrap();
                let y = xl.conv2d(&w.to_device(device).unwrap(), None, *opt).unwrap();
                let g = randn(y.shape(), dtype, 400 + i as u64).to_device(device).unwrap();
                y.mul(&g).unwrap().sum_all().unwrap().backward().unwrap();
                xl.grad().unwrap().to_device(&Device::Cpu).unwrap()
            };
            let (gpu, cpu) = (run(&dev), nabla::cpu::reference(|| run(&Device::Cpu)));
            let tol = (atol * (depth.sqrt() + 1.0) * 4.0, rtol * 4.0);
            assert_close(&format!("conv2d grad input {dtype} {xs:?} {ws:?} {opt:?}"), &gpu, &cpu, tol);
        }
    }
}

#[test]
fn conv2d_forward_and_backward_on_the_gpu_match_the_cpu_over_random_shapes() {
    for dev in devices_under_test("conv2d") {
        let mut rng = Generator::new(42);
        let mut shapes = cases();
        for _ in 0..20 {
            let groups = [1, 1, 2, 3][rng.below(4).unwrap() as usize];
            let cg = 1 + rng.below(5).unwrap() as usize;
            let og = 1 + rng.below(5).unwrap() as usize;
            let k = 1 + rng.below(7).unwrap() as usize;
            let d = 1 + rng.below(2).unwrap() as usize;
            let p = rng.below(4).unwrap() as usize;
            let s = 1 + rng.below(4).unwrap() as usize;
            let size = d * (k - 1) + 1 + rng.below(12).unwrap() as usize;
            let n = 1 + rng.below(3).unwrap() as usize;
            let opt = Conv2dOptions {
                stride: (s, 1 + rng.below(4).unwrap() as usize),
                padding: (p, rng.below(4).unwrap() as usize),
                dilation: (d, 1),
                groups,
            };
            shapes.push(([n, cg * groups, size, size + rng.below(5).unwrap() as usize], [og * groups, cg, k, k], opt));
        }
        for dtype in FLOATS {
            let (atol, rtol) = tolerance(dtype);
            for (i, (xs, ws, opt)) in shapes.iter().enumerate() {
                let x = randn(xs, dtype, i as u64);
                let w = randn(ws, dtype, 50 + i as u64);
                let b = randn(&[ws[0]], dtype, 90 + i as u64);
                let depth = (ws[1] * ws[2] * ws[3]) as f64;
                let tol = (atol * (depth.sqrt() + 1.0) * 4.0, rtol * 4.0);
                // every third case with the ReLU in the epilogue, its backward masked by the output
                let relu = i % 3 == 2;
                let run = |device: &Device| -> Vec<Tensor> {
                    let leaves: Vec<Tensor> =
                        [&x, &w, &b].iter().map(|t| t.to_device(device).unwrap().requires_grad_().unwrap()).collect();
                    let y = if relu {
                        leaves[0].conv2d_relu(&leaves[1], Some(&leaves[2]), *opt)
                    } else {
                        leaves[0].conv2d(&leaves[1], Some(&leaves[2]), *opt)
                    };
                    let y = y.unwrap();
                    let g = randn(y.shape(), dtype, 7).to_device(device).unwrap();
                    y.mul(&g).unwrap().sum_all().unwrap().backward().unwrap();
                    let mut out = vec![y.detach()];
                    out.extend(leaves.iter().map(|l| l.grad().unwrap()));
                    out.into_iter().map(|t| t.to_device(&Device::Cpu).unwrap()).collect()
                };
                let (gpu, cpu) = (run(&dev), nabla::cpu::reference(|| run(&Device::Cpu)));
                for (what, (g, c)) in
                    ["forward", "grad input", "grad weight", "grad bias"].iter().zip(gpu.iter().zip(&cpu))
                {
                    // the weight and bias gradients sum over every output pixel
                    let scale = if *what == "forward" || *what == "grad input" {
                        1.0
                    } else {
                        (g.numel().max(1) as f64).sqrt() * 4.0
                    };
                    assert_close(
                        &format!("conv2d {what} {dtype} case {i} {xs:?} {ws:?} {opt:?}, ReLU: {relu}"),
                        g,
                        c,
                        (tol.0 * scale, tol.1),
                    );
                }
            }
        }
    }
}
