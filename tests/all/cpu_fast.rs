//! The fast CPU backend beside its f64 reference: the thread setting, the reference scope, and
//! results that do not depend on the number of threads. (Every op's fast path is compared with
//! the reference element by element in `gpu_vs_cpu.rs` and the other comparison tests, where
//! the CPU is one of the devices under test.)

use crate::common::*;
use nabla::nn::{Activation, ConvNet, Mlp, Module};
use nabla::optim::{Adam, AdamConfig, Optimizer};
use nabla::{Conv2dOptions, DType, Device, Generator, Tensor};
use std::io::Write;
use std::sync::Mutex;

/// Tests here change the process-wide thread count; they take turns.
static THREADS: Mutex<()> = Mutex::new(());

/// Every output of a mixed workload, as raw f32 bits: matrix products of odd sizes, a strided
/// convolution forward and backward, long sums, softmax, layer norm, attention, and two Adam
/// steps of a LeNet and an MLP.
fn workload() -> Vec<Vec<u32>> {
    let bits = |t: &Tensor| t.to_vec::<f32>().unwrap().into_iter().map(f32::to_bits).collect::<Vec<u32>>();
    let mut out = Vec::new();
    let a = randn(&[301, 203], DType::F32, 1);
    let b = randn(&[203, 517], DType::F32, 2);
    out.push(bits(&a.matmul(&b).unwrap()));
    out.push(bits(&a.t().unwrap().matmul(&a).unwrap()));
    let big = randn(&[3, 300_007], DType::F32, 3);
    out.push(bits(&big.sum(&[1], false).unwrap()));
    out.push(bits(&big.sum(&[0], false).unwrap()));
    out.push(bits(&randn(&[67, 1031], DType::F32, 4).softmax(-1).unwrap()));
    let x = randn(&[8, 5, 33, 31], DType::F32, 5).requires_grad_().unwrap();
    let w = randn(&[7, 5, 3, 3], DType::F32, 6).requires_grad_().unwrap();
    let y = x.conv2d(&w, None, Conv2dOptions { stride: (2, 1), padding: (1, 2), ..Conv2dOptions::default() }).unwrap();
    y.mul(&y).unwrap().sum_all().unwrap().backward().unwrap();
    out.extend([bits(&y), bits(&x.grad().unwrap()), bits(&w.grad().unwrap())]);
    let h = randn(&[70, 96], DType::F32, 7);
    out.push(bits(&h.layer_norm(None, None, 1e-5).unwrap()));
    let q = randn(&[3, 4, 70, 32], DType::F32, 8);
    out.push(bits(&q.scaled_dot_product_attention(&q, &q, true, None).unwrap()));
    let device = Device::Cpu;
    let models: Vec<Box<dyn Module>> = vec![
        Box::new(ConvNet::lenet5(1, 28, 10, &device, &mut Generator::new(9)).unwrap()),
        Box::new(Mlp::new(&[784, 300, 10], Activation::Relu, 0.0, &device, &mut Generator::new(10)).unwrap()),
    ];
    for (i, model) in models.iter().enumerate() {
        let mut opt = Adam::new(model.parameters(), AdamConfig::adamw(1e-3)).unwrap();
        let images = uniform(&[130, 1, 28, 28], 0.0, 1.0, DType::F32, 11 + i as u64);
        let input = if i == 0 { images } else { images.reshape(&[130, 784]).unwrap() };
        let labels = Tensor::randint(0, 10, &[130], &device, &mut Generator::new(12)).unwrap();
        for _ in 0..2 {
            opt.zero_grad();
            model.forward(&input).unwrap().cross_entropy(&labels).unwrap().backward().unwrap();
            opt.step().unwrap();
        }
        out.extend(model.parameters().iter().map(&bits));
    }
    out
}

#[test]
fn cpu_results_are_bit_identical_for_one_two_and_five_threads() {
    let _turn = THREADS.lock().unwrap_or_else(|e| e.into_inner());
    let before = nabla::num_threads();
    let runs: Vec<Vec<Vec<u32>>> = [1, 2, 5]
        .into_iter()
        .map(|threads| {
            nabla::set_num_threads(threads);
            assert_eq!(nabla::num_threads(), threads);
            workload()
        })
        .collect();
    nabla::set_num_threads(before);
    for (threads, run) in [2, 5].iter().zip(&runs[1..]) {
        for (i, (a, b)) in runs[0].iter().zip(run).enumerate() {
            assert!(a == b, "output {i} differs between 1 and {threads} threads");
        }
    }
}

#[test]
fn the_reference_scope_computes_cpu_ops_by_their_f64_definition() {
    // exp in f32: the reference rounds the f64 exponential once; the fast path's vectorisable
    // exponential may differ in the last place, and must stay within a few ulp.
    let x = uniform(&[4099], -80.0, 80.0, DType::F32, 20);
    let inputs = x.to_vec::<f32>().unwrap();
    let definition: Vec<f32> = inputs.iter().map(|&v| (v as f64).exp() as f32).collect();
    let reference = nabla::cpu::reference(|| x.exp().unwrap()).to_vec::<f32>().unwrap();
    assert_eq!(reference, definition, "the reference scope must give the rounded f64 exponential");
    let fast = x.exp().unwrap().to_vec::<f32>().unwrap();
    for (i, (f, d)) in fast.iter().zip(&definition).enumerate() {
        assert!((f - d).abs() <= 4.0 * f32::EPSILON * d.abs(), "exp({}) = {f}, want {d}", inputs[i]);
    }
    // A nested scope restores the fast paths when it ends, panics included.
    let _ = std::panic::catch_unwind(|| nabla::cpu::reference(|| panic!("inside the scope")));
    let fast_again = x.exp().unwrap().to_vec::<f32>().unwrap();
    assert_eq!(fast_again, fast);
}

#[test]
fn gelu_and_sigmoid_fast_forms_hold_their_precision_across_the_real_line() {
    let x = Tensor::arange(-12.0, 12.0, 0.0012, DType::F32, &Device::Cpu).unwrap();
    for op in [nabla::UnaryOp::Gelu, nabla::UnaryOp::GeluGrad, nabla::UnaryOp::Sigmoid, nabla::UnaryOp::Exp] {
        let fast = x.unary(op).unwrap();
        let want = nabla::cpu::reference(|| x.unary(op).unwrap());
        assert_close(&format!("{op:?}"), &fast, &want, tolerance(DType::F32));
    }
}

#[test]
fn copies_into_strided_views_match_the_reference_in_parallel_and_across_dtypes() {
    // A slice of a wider tensor (not contiguous) filled from a transposed source: large enough
    // to run in parallel chunks, and converting between dtypes on the way.
    for (from, to) in
        [(DType::F32, DType::F32), (DType::F32, DType::BF16), (DType::F64, DType::F32), (DType::I64, DType::F32)]
    {
        let src = Tensor::randn(&[900, 64], DType::F64, &Device::Cpu, &mut Generator::new(5))
            .unwrap()
            .mul_scalar(100.0)
            .unwrap()
            .to_dtype(from)
            .unwrap();
        let fill = || {
            let dst = Tensor::zeros(&[64, 1200], to, &Device::Cpu).unwrap();
            dst.narrow(1, 100, 900).unwrap().copy_(&src.t().unwrap()).unwrap();
            dst.to_vec::<f64>().unwrap()
        };
        let (fast, reference) = (fill(), nabla::cpu::reference(fill));
        assert_eq!(fast, reference, "{from} -> {to}");
        assert!(fast[..100].iter().chain(&fast[1000..1200]).all(|&v| v == 0.0), "{from} -> {to}: outside the slice");
    }
    // A narrow's gradient is the upstream gradient in place and zeros around it.
    let x = Tensor::zeros(&[64, 3000], DType::F32, &Device::Cpu).unwrap().requires_grad_().unwrap();
    let g = Tensor::randn(&[64, 1000], DType::F32, &Device::Cpu, &mut Generator::new(6)).unwrap();
    x.narrow(1, 1000, 1000).unwrap().mul(&g).unwrap().sum_all().unwrap().backward().unwrap();
    let grad = x.grad().unwrap();
    assert_eq!(grad.narrow(1, 1000, 1000).unwrap().to_vec::<f32>().unwrap(), g.to_vec::<f32>().unwrap());
    assert_eq!(
        grad.abs().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap(),
        g.abs().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap()
    );
}

#[test]
fn outputs_large_enough_for_streaming_stores_match_the_reference() {
    // Past 16 MiB the elementwise loops write with non-temporal stores: a binary op on two
    // views (one starting off its storage's first element), a unary op, and a cast to f64,
    // each over a length that ends in a partial step, against the reference element by element.
    let n = (1 << 22) + 37;
    let base = uniform(&[n + 3], -4.0, 4.0, DType::F32, 31);
    let (a, b) = (base.narrow(0, 3, n).unwrap(), uniform(&[n], -4.0, 4.0, DType::F32, 32));
    let cases: [(&str, &dyn Fn() -> Tensor); 3] = [
        ("mul", &|| a.mul(&b).unwrap()),
        ("exp", &|| a.exp().unwrap()),
        ("to f64", &|| a.to_dtype(DType::F64).unwrap()),
    ];
    for (what, op) in cases {
        let (fast, want) = (op(), nabla::cpu::reference(op));
        assert_close(what, &fast, &want, tolerance(DType::F32));
    }
}

#[test]
fn long_f32_sums_stay_within_the_bound_of_their_blocked_summation() {
    // Sums add 128-value blocks in f32 before f64: |error| <= 3·u·Σ|x| of each block, so the
    // whole sum is within 3·u·Σ|x| (plus the final rounding) of the exact one, for a sum with
    // heavy cancellation and one whose length ends in partial blocks.
    for (n, shift) in [((1 << 20) + 77, 0.0), (100_003, 1000.0)] {
        let x = uniform(&[n], -1.0, 1.0, DType::F32, 33).add_scalar(shift).unwrap();
        let values = x.to_vec::<f32>().unwrap();
        let exact: f64 = values.iter().map(|&v| v as f64).sum();
        let magnitude: f64 = values.iter().map(|&v| (v as f64).abs()).sum();
        let got = x.sum_all().unwrap().to_scalar::<f64>().unwrap();
        let bound = 3.0 * f32::EPSILON as f64 / 2.0 * magnitude + exact.abs() * f32::EPSILON as f64;
        assert!((got - exact).abs() <= bound, "sum of {n}: {got}, exact {exact}, bound {bound}");
    }
}

#[test]
fn the_allocator_can_be_asked_to_keep_freed_memory_on_glibc() {
    // Every setting must take where glibc is the allocator (CI and these machines); elsewhere
    // the call is a documented no-op.
    let kept = nabla::cpu::keep_freed_memory();
    assert_eq!(kept, cfg!(all(target_os = "linux", target_env = "gnu")));
}

/// Asserts every element of the f32 product `got = lhs rhs (+ bias)` lies within the classic
/// bound of a k-term f32 dot product, k·u·(|lhs| |rhs| + |bias|) with u = 2⁻²⁴, of the product in
/// f64: one wrong term is far outside it, rounding inside it.
fn assert_within_dot_product_bound(what: &str, got: &Tensor, lhs: &Tensor, rhs: &Tensor, bias: Option<&Tensor>) {
    let f64s = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
    let k = lhs.shape()[1] as f64 + 1.0;
    let mut exact = f64s(lhs).matmul(&f64s(rhs)).unwrap();
    let mut scale = f64s(lhs).abs().unwrap().matmul(&f64s(rhs).abs().unwrap()).unwrap();
    if let Some(bias) = bias {
        exact = exact.add(&f64s(bias)).unwrap();
        scale = scale.add(&f64s(bias).abs().unwrap()).unwrap();
    }
    assert_eq!(got.shape(), exact.shape(), "{what}");
    let (got, exact, scale) =
        (got.to_vec::<f64>().unwrap(), exact.to_vec::<f64>().unwrap(), scale.to_vec::<f64>().unwrap());
    for (i, ((g, e), s)) in got.iter().zip(&exact).zip(&scale).enumerate() {
        let bound = k * f64::from(f32::EPSILON) / 2.0 * s + f64::from(f32::MIN_POSITIVE);
        assert!((g - e).abs() <= bound, "{what}: element {i}: got {g}, want {e} (bound {bound:e})");
    }
}

#[test]
fn cpu_matmul_matches_the_f64_product_across_kernel_tile_edges_block_sizes_and_layouts() {
    // Sizes on both sides of the micro-tile (12 x 32, 16-step transposes) and block (144 rows,
    // 256 steps, 1024 columns) edges, each product in the four layouts of its operands (plain,
    // transposed views as a linear layer's forward and weight gradient read them), and as a
    // linear layer accumulating onto its bias. Products of up to 160 rows read a row-major B in
    // place (all but its right edge), larger ones pack it: both sides are here.
    let _ = writeln!(std::io::stderr(), "f32 GEMM: {}", nabla::cpu::f32_gemm_kernel());
    let shapes = [(1, 1, 1), (11, 17, 31), (12, 16, 32), (13, 257, 33), (145, 300, 70), (40, 70, 1030), (300, 9, 5)];
    for (i, &(m, k, n)) in shapes.iter().enumerate() {
        let seed = 100 + 4 * i as u64;
        let a = randn(&[m, k], DType::F32, seed);
        let b = randn(&[k, n], DType::F32, seed + 1);
        let at = randn(&[k, m], DType::F32, seed + 2).t().unwrap();
        let bt = randn(&[n, k], DType::F32, seed + 3).t().unwrap();
        for (name, lhs, rhs) in [("a b", &a, &b), ("aᵀ b", &at, &b), ("a bᵀ", &a, &bt), ("aᵀ bᵀ", &at, &bt)] {
            let what = format!("[{m}, {k}] x [{k}, {n}] as {name}");
            assert_within_dot_product_bound(&what, &lhs.matmul(rhs).unwrap(), lhs, rhs, None);
        }
        let bias = randn(&[n], DType::F32, seed + 4);
        let y = a.linear(&bt.t().unwrap(), Some(&bias)).unwrap();
        assert_within_dot_product_bound(&format!("linear [{m}, {k}] -> {n}"), &y, &a, &bt, Some(&bias));
    }
}

#[test]
fn cpu_matmul_on_matrixmultiply_matches_the_f64_product_when_the_environment_asks_for_it() {
    // The kernel for CPUs without AVX-512, chosen by the environment in a child process.
    let name = "cpu_fast::cpu_matmul_on_matrixmultiply_matches_the_f64_product_when_the_environment_asks_for_it";
    if !in_child_process(name, &[("NABLA_CPU_GEMM", "matrixmultiply")]) {
        return;
    }
    assert_eq!(nabla::cpu::f32_gemm_kernel(), "matrixmultiply");
    let (a, b) = (randn(&[37, 300], DType::F32, 140), randn(&[50, 300], DType::F32, 141).t().unwrap());
    assert_within_dot_product_bound("matrixmultiply: a bᵀ", &a.matmul(&b).unwrap(), &a, &b, None);
}

#[test]
fn softmax_and_cross_entropy_rows_holding_nan_or_infinities_match_the_reference() {
    // Rows of 1000 (62 sixteen-lane chunks and a tail of 8): a NaN inside the vector body, one in
    // the tail, a −inf, a +inf, and a clean row.
    let (rows, cols) = (5, 1000);
    let mut values = uniform(&[rows, cols], -8.0, 8.0, DType::F64, 3).to_vec::<f64>().unwrap();
    values[cols + 37] = f64::NAN;
    values[2 * cols + 996] = f64::NAN;
    values[3 * cols + 5] = f64::NEG_INFINITY;
    values[4 * cols + 900] = f64::INFINITY;
    for dtype in FLOATS {
        let x = Tensor::from_vec(values.clone(), &[rows, cols], &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
        let tol = tolerance(dtype);
        for log in [false, true] {
            let run = || if log { x.log_softmax(-1) } else { x.softmax(-1) }.unwrap();
            let (fast, want) = (run(), nabla::cpu::reference(run));
            assert_close(&format!("{dtype} softmax (log {log})"), &fast, &want, tol);
            let first_row = fast.narrow(0, 0, 1).unwrap().to_vec::<f64>().unwrap();
            assert!(first_row.iter().all(|v| v.is_finite()), "{dtype}: the clean row stays finite");
        }
        // Cross-entropy of the clean row and of the row holding −inf (its label elsewhere), with
        // the gradient of the logits.
        for (row, label) in [(0, 0i64), (3, 6)] {
            let logits = x.narrow(0, row, 1).unwrap().contiguous().unwrap().requires_grad_().unwrap();
            let labels = Tensor::from_vec(vec![label], &[1], &Device::Cpu).unwrap();
            let run = || {
                let loss = logits.cross_entropy(&labels).unwrap();
                loss.backward().unwrap();
                let grad = logits.grad().unwrap();
                logits.zero_grad();
                (loss, grad)
            };
            let ((loss, grad), (want_loss, want_grad)) = (run(), nabla::cpu::reference(run));
            assert!(loss.to_vec::<f64>().unwrap()[0].is_finite(), "{dtype}: row {row}'s loss is finite");
            assert_close(&format!("{dtype} cross-entropy of row {row}"), &loss, &want_loss, tol);
            assert_close(&format!("{dtype} its gradient"), &grad, &want_grad, tol);
        }
    }
}

/// A convolution's output and its leaves' gradients (input, weight, and bias when it has one)
/// after a backward from a seeded random upstream gradient: on the fast CPU path, then under the
/// f64 reference.
fn conv2d_fast_and_reference(
    xs: &[usize; 4],
    ws: &[usize; 4],
    opt: Conv2dOptions,
    with_bias: bool,
    dtype: DType,
    seed: u64,
) -> (Vec<Tensor>, Vec<Tensor>) {
    let leaves: Vec<Tensor> = [randn(xs, dtype, seed), randn(ws, dtype, seed + 1), randn(&[ws[0]], dtype, seed + 2)]
        .into_iter()
        .map(|t| t.requires_grad_().unwrap())
        .collect();
    let run = || -> Vec<Tensor> {
        leaves.iter().for_each(Tensor::zero_grad);
        let y = leaves[0].conv2d(&leaves[1], with_bias.then_some(&leaves[2]), opt).unwrap();
        y.mul(&randn(y.shape(), dtype, seed + 3)).unwrap().sum_all().unwrap().backward().unwrap();
        std::iter::once(y.detach()).chain(leaves.iter().filter_map(Tensor::grad)).collect()
    };
    (run(), nabla::cpu::reference(run))
}

#[test]
fn cpu_conv2d_matches_the_reference_when_its_patch_matrix_is_unfolded_in_blocks_of_rows() {
    // The fast path unfolds about 2¹⁷ patch values at a time. 288 patch rows x 40 output columns
    // make blocks of 11 output rows, so 42 rows are four blocks, the last of 9; the grouped,
    // dilated case (72 rows x 72 columns) makes blocks of 25, 25 and 20. The first case's 17
    // filters take the weight gradient's transposed product (dWᵀ = col · dyᵀ), the second's 4 per
    // group the direct one. (In f32 on CPUs with AVX-512F, at most 16 filters per group run
    // `conv_direct` instead: there the second case takes it; f64 always takes the patch matrix.)
    let cases = [
        (
            [2, 32, 42, 81],
            [17, 32, 3, 3],
            Conv2dOptions { stride: (1, 2), padding: (1, 0), ..Conv2dOptions::default() },
        ),
        (
            [1, 16, 70, 70],
            [8, 8, 3, 3],
            Conv2dOptions { padding: (2, 1), dilation: (2, 1), groups: 2, ..Conv2dOptions::default() },
        ),
    ];
    for dtype in [DType::F32, DType::F64] {
        let (atol, rtol) = tolerance(dtype);
        for (i, (xs, ws, opt)) in cases.iter().enumerate() {
            let (fast, want) = conv2d_fast_and_reference(xs, ws, *opt, true, dtype, 150 + 4 * i as u64);
            assert_eq!(fast.len(), 4, "an output and three gradients");
            for (what, (got, want)) in
                ["forward", "grad input", "grad weight", "grad bias"].iter().zip(fast.iter().zip(&want))
            {
                // An output element sums a patch's products of unit normals; a weight or bias
                // gradient element sums one per output pixel of every image.
                let terms = if what.starts_with("grad w") || what.ends_with("bias") {
                    fast[0].numel() / ws[0]
                } else {
                    ws[1] * ws[2] * ws[3]
                } as f64;
                let tol = (atol * f64::sqrt(terms) * 4.0, rtol * 4.0);
                assert_close(&format!("conv2d {what} {dtype} {xs:?} {ws:?}"), got, want, tol);
            }
        }
    }
}

#[test]
fn cpu_conv2d_with_few_filters_matches_the_reference_forward_and_backward_for_padded_strided_dilated_and_grouped_layers()
 {
    // At most 16 filters per group run the direct kernels on CPUs with AVX-512F (elsewhere the
    // patch matrix's). Forward: output rows cut into equal steps of up to 12 pixels (10; 28 as
    // 10, 9, 9; 37 as 10, 9, 9, 9; 1). Weight gradient: patch positions in equal chunks of up to
    // 12 (150 as 11 and 12s; 2; 9), 5 images (a block of 4 and one). Input gradient (unit
    // strides, padding within the kernel's reach): rows of 14, 28 (16 + 12), 37 (16 + 16 + 5)
    // and 3 pixels, 14 channels as two chunks of 7, dilation; strided layers and a padded 1 × 1
    // take the patch matrix's. Padded layers read from bordered copies; one case has no bias;
    // 17 filters are on the patch-matrix side.
    let opt = |s: (usize, usize), p: (usize, usize), d: (usize, usize), g| Conv2dOptions {
        stride: s,
        padding: p,
        dilation: d,
        groups: g,
    };
    let cases: [([usize; 4], [usize; 4], Conv2dOptions, bool); 9] = [
        ([5, 6, 14, 14], [16, 6, 5, 5], Conv2dOptions::default(), true),
        ([2, 1, 28, 28], [6, 1, 5, 5], opt((1, 1), (2, 2), (1, 1), 1), true),
        ([2, 3, 15, 31], [5, 3, 3, 2], opt((2, 3), (1, 2), (2, 1), 1), true),
        ([1, 8, 9, 37], [12, 2, 3, 3], opt((1, 1), (0, 1), (1, 1), 4), true),
        ([2, 4, 11, 13], [4, 1, 3, 3], opt((2, 2), (1, 1), (1, 1), 4), false),
        ([1, 2, 5, 3], [7, 2, 3, 3], Conv2dOptions::default(), true),
        ([2, 14, 9, 21], [10, 14, 3, 3], opt((1, 1), (2, 1), (2, 1), 1), true),
        ([1, 2, 6, 6], [3, 2, 1, 1], opt((1, 1), (1, 1), (1, 1), 1), true),
        ([1, 3, 8, 8], [17, 3, 3, 3], Conv2dOptions::default(), true),
    ];
    for dtype in [DType::F32, DType::BF16] {
        let (atol, rtol) = tolerance(dtype);
        for (i, (xs, ws, opt, with_bias)) in cases.iter().enumerate() {
            let (fast, want) = conv2d_fast_and_reference(xs, ws, *opt, *with_bias, dtype, 170 + 4 * i as u64);
            assert_eq!(fast.len(), 3 + usize::from(*with_bias), "an output and its gradients");
            for (what, (got, want)) in ["forward", "grad input", "grad weight"].iter().zip(fast.iter().zip(&want)) {
                // An output sums a patch's products of unit normals, an input gradient element
                // at most one per filter and tap, a weight gradient element one per output pixel
                // of every image.
                let terms = match *what {
                    "forward" => ws[1] * ws[2] * ws[3],
                    "grad input" => ws[0] * ws[2] * ws[3],
                    _ => fast[0].numel() / ws[0],
                };
                let tol = (atol * f64::sqrt(terms as f64) * 4.0, rtol * 4.0);
                assert_close(&format!("conv2d {what} {dtype} {xs:?} {ws:?} {opt:?}"), got, want, tol);
            }
        }
    }
}

#[test]
fn large_allocations_start_on_cache_lines_and_keep_their_values_when_grown_past_the_threshold() {
    // This test binary's allocator passes every call to `nabla::cpu::CacheAligned`.
    for len in [256usize, 1000, 4096, 100_003] {
        let v = vec![1.5f32; len];
        assert_eq!(v.as_ptr() as usize % 64, 0, "a {len}-value vector starts on a cache line");
    }
    // Grown one value at a time from 16 bytes to 40 KB: across the 1 KiB threshold (a fresh,
    // aligned block and a copy) and within each side of it.
    let mut grown: Vec<u32> = Vec::new();
    for i in 0..10_000u32 {
        grown.push(i);
        if grown.capacity() * 4 >= 1024 {
            assert_eq!(grown.as_ptr() as usize % 64, 0, "capacity {}", grown.capacity());
        }
    }
    assert!(grown.iter().enumerate().all(|(i, &x)| x == i as u32), "values survive every move");
    grown.truncate(10);
    grown.shrink_to_fit();
    assert_eq!(grown, (0..10).collect::<Vec<u32>>(), "and a shrink back below it");
}
