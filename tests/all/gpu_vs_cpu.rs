//! Every op on the GPU against the CPU reference, over seeded random inputs: sizes that are no
//! multiple of any block or tile, non-contiguous views, broadcasting, empty and one-element
//! tensors; every output element compared within the per-dtype tolerance of `common`.
//! Without a CUDA device each test prints `skipped: no CUDA device` (or fails when
//! NABLA_REQUIRE_CUDA=1).

use crate::common::*;
use nabla::{BinaryOp, DType, Device, Error, Generator, ReduceOp, Result, Tensor, UnaryOp};

/// Runs `op` on the CPU inputs and on copies on `dev`, and compares every element.
fn compare(what: &str, dev: Device, inputs: &[Tensor], tol: (f64, f64), op: impl Fn(&[Tensor]) -> Result<Tensor>) {
    let want = nabla::cpu::reference(|| op(inputs)).unwrap_or_else(|e| panic!("{what}: CPU failed: {e}"));
    let on_dev: Vec<Tensor> = inputs.iter().map(|t| t.to_device(&dev).unwrap()).collect();
    let got = op(&on_dev).unwrap_or_else(|e| panic!("{what}: {dev} failed: {e}"));
    assert_eq!(got.device(), dev, "{what}: result left the device");
    assert_close(what, &got, &want, tol);
}

fn integers(shape: &[usize], low: i64, high: i64, seed: u64) -> Tensor {
    Tensor::randint(low, high, shape, &Device::Cpu, &mut Generator::new(seed)).unwrap()
}

/// Inputs for unary op tests: positive for log and sqrt, spread out otherwise.
fn unary_input(op: UnaryOp, shape: &[usize], dtype: DType, seed: u64) -> Tensor {
    match (op, dtype) {
        (_, DType::I64) => integers(shape, -100, 100, seed),
        (UnaryOp::Log | UnaryOp::Sqrt, _) => uniform(shape, 0.05, 20.0, dtype, seed),
        _ => uniform(shape, -6.0, 6.0, dtype, seed),
    }
}

#[test]
fn unary_ops_match_cpu_reference_for_every_dtype_shape_and_strided_view() {
    for dev in devices_under_test("unary") {
        for op in UnaryOp::ALL {
            for dtype in DType::ALL.into_iter().filter(|d| op.supports(*d)) {
                for (i, shape) in SHAPES.iter().enumerate() {
                    let x = unary_input(op, shape, dtype, i as u64);
                    compare(&format!("{op:?} {dtype} {shape:?}"), dev, &[x], tolerance(dtype), |t| t[0].unary(op));
                }
                let x = unary_input(op, &[33, 65], dtype, 99);
                compare(&format!("{op:?} {dtype} transposed"), dev, std::slice::from_ref(&x), tolerance(dtype), |t| {
                    t[0].t()?.unary(op)
                });
                compare(&format!("{op:?} {dtype} narrowed"), dev, &[x], tolerance(dtype), |t| {
                    t[0].narrow(1, 3, 40)?.unary(op)
                });
            }
        }
    }
}

/// Operands for a binary op: small integers for comparisons (to make ties), safe ranges for
/// division and powers.
fn binary_inputs(op: BinaryOp, a: &[usize], b: &[usize], dtype: DType, seed: u64) -> [Tensor; 2] {
    if dtype == DType::I64 {
        // Integer division by zero is an error (tested in safety.rs): divisors in 1..=20 here.
        let low = if op == BinaryOp::Div { 1 } else { -20 };
        return [integers(a, -20, 20, seed), integers(b, low, 21, seed + 1)];
    }
    let ints = |shape: &[usize], s| integers(shape, -3, 4, s).to_dtype(dtype).unwrap();
    match op {
        BinaryOp::Eq | BinaryOp::Ne | BinaryOp::Lt | BinaryOp::Le | BinaryOp::Gt | BinaryOp::Ge => {
            [ints(a, seed), ints(b, seed + 1)]
        }
        BinaryOp::Div => [uniform(a, -4.0, 4.0, dtype, seed), uniform(b, 0.25, 4.0, dtype, seed + 1)],
        BinaryOp::Pow => [uniform(a, 0.1, 3.0, dtype, seed), uniform(b, -2.0, 2.0, dtype, seed + 1)],
        _ => [uniform(a, -4.0, 4.0, dtype, seed), uniform(b, -4.0, 4.0, dtype, seed + 1)],
    }
}

const BROADCAST_PAIRS: &[(&[usize], &[usize])] = &[
    (&[0], &[1]),
    (&[1], &[1]),
    (&[7], &[7]),
    (&[33, 65], &[65]),
    (&[4, 1], &[1, 5]),
    (&[2, 3, 257], &[2, 1, 257]),
    (&[1031], &[1]),
];

#[test]
fn binary_ops_match_cpu_reference_with_broadcasting_scalars_and_views() {
    for dev in devices_under_test("binary") {
        for op in BinaryOp::ALL {
            for dtype in DType::ALL.into_iter().filter(|d| op.supports(*d)) {
                let tol = tolerance(dtype);
                for (i, (a, b)) in BROADCAST_PAIRS.iter().enumerate() {
                    let inputs = binary_inputs(op, a, b, dtype, 10 * i as u64);
                    compare(&format!("{op:?} {dtype} {a:?} {b:?}"), dev, &inputs, tol, |t| t[0].binary(op, &t[1]));
                    let scalar = if op == BinaryOp::Pow { 1.5 } else { 1.75 };
                    compare(&format!("{op:?} {dtype} {a:?} scalar"), dev, &inputs[..1], tol, |t| {
                        t[0].binary_scalar(op, scalar)
                    });
                }
                let inputs = binary_inputs(op, &[65, 33], &[33, 65], dtype, 7);
                compare(&format!("{op:?} {dtype} transposed lhs"), dev, &inputs, tol, |t| t[0].t()?.binary(op, &t[1]));
            }
        }
    }
}

#[test]
fn where_cond_matches_cpu_reference_with_broadcasting() {
    for dev in devices_under_test("where") {
        for dtype in DType::ALL {
            let cond = integers(&[3, 1, 257], 0, 2, 1).to_dtype(dtype).unwrap();
            let a = integers(&[3, 5, 257], -50, 50, 2).to_dtype(dtype).unwrap();
            let b = integers(&[257], -50, 50, 3).to_dtype(dtype).unwrap();
            compare(&format!("where {dtype}"), dev, &[cond, a, b], (0.0, 0.0), |t| t[0].where_cond(&t[1], &t[2]));
        }
    }
}

#[test]
fn reductions_match_cpu_reference_over_any_axes_including_two_pass_sums() {
    for dev in devices_under_test("reduce") {
        let cases: &[(&[usize], &[isize])] = &[
            (&[1], &[]),
            (&[0], &[]),
            (&[1031], &[]),
            (&[33, 65], &[0]),
            (&[33, 65], &[1]),
            // Leading dims reduced on a dense tensor: the column kernel (a bias gradient's shape).
            (&[1000, 70], &[0]),
            // Wider than one block of columns, and a column sum of the char-GPT's bias shape.
            (&[40, 1500], &[0]),
            (&[12, 64, 384], &[0, 1]),
            (&[5, 40, 33], &[0, 1]),
            (&[2, 3, 257], &[0, 2]),
            (&[2, 3, 257], &[1]),
            (&[4, 0, 3], &[0]),
            (&[3, 100_003], &[1]),
            (&[300_007], &[]),
        ];
        for dtype in DType::ALL {
            for (i, (shape, axes)) in cases.iter().enumerate() {
                let x = if dtype == DType::I64 {
                    integers(shape, -1000, 1000, i as u64)
                } else {
                    randn(shape, dtype, i as u64)
                };
                let sum_abs =
                    x.abs().unwrap().to_dtype(DType::F64).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
                // Sums differ from the f64 reference by the accumulation's rounding, bounded by eps * Σ|x|.
                let acc_eps = match dtype {
                    DType::F64 => 1e-14,
                    DType::I64 => 0.0,
                    _ => 2e-6,
                };
                let (atol, rtol) = tolerance(dtype);
                let sum_tol = (atol + acc_eps * sum_abs, rtol);
                for op in [ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max, ReduceOp::Min] {
                    if (op == ReduceOp::Mean && dtype == DType::I64)
                        || (x.numel() == 0 && matches!(op, ReduceOp::Max | ReduceOp::Min))
                    {
                        continue;
                    }
                    let tol = match op {
                        ReduceOp::Sum | ReduceOp::Mean => sum_tol,
                        ReduceOp::Max | ReduceOp::Min => (0.0, 0.0),
                    };
                    for keepdim in [false, true] {
                        compare(
                            &format!("{op:?} {dtype} {shape:?} {axes:?} keepdim={keepdim}"),
                            dev,
                            std::slice::from_ref(&x),
                            tol,
                            |t| t[0].reduce(op, axes, keepdim),
                        );
                    }
                }
                if axes.len() == 1 && x.numel() > 0 {
                    compare(
                        &format!("argmax {dtype} {shape:?} {axes:?}"),
                        dev,
                        std::slice::from_ref(&x),
                        (0.0, 0.0),
                        |t| t[0].argmax(axes[0], false),
                    );
                    compare(
                        &format!("argmin {dtype} {shape:?} {axes:?}"),
                        dev,
                        std::slice::from_ref(&x),
                        (0.0, 0.0),
                        |t| t[0].argmin(axes[0], true),
                    );
                }
            }
            let x = randn(&[65, 33], dtype, 5);
            compare(&format!("sum {dtype} of a transposed view"), dev, &[x], (1e-2, 1e-2), |t| {
                t[0].t()?.sum(&[1], false)
            });
        }
    }
}

#[test]
fn softmax_and_log_softmax_match_cpu_reference_along_every_axis() {
    for dev in devices_under_test("softmax") {
        let cases: &[(&[usize], isize)] = &[
            (&[1, 1], -1),
            (&[7, 33], -1),
            (&[7, 33], 0),
            (&[4, 1000], 1),
            (&[2, 3, 5], 1),
            (&[3, 0], 0),
            (&[2, 4097], -1),
        ];
        for dtype in crate::common::FLOATS {
            for (i, (shape, axis)) in cases.iter().enumerate() {
                let x = uniform(shape, -8.0, 8.0, dtype, i as u64);
                let tol = tolerance(dtype);
                compare(&format!("softmax {dtype} {shape:?} axis {axis}"), dev, std::slice::from_ref(&x), tol, |t| {
                    t[0].softmax(*axis)
                });
                compare(&format!("log_softmax {dtype} {shape:?} axis {axis}"), dev, &[x], tol, |t| {
                    t[0].log_softmax(*axis)
                });
            }
        }
    }
}

#[test]
fn matmul_matches_cpu_reference_for_odd_batched_broadcast_and_transposed_shapes() {
    for dev in devices_under_test("matmul") {
        let cases: &[(&[usize], &[usize])] = &[
            (&[1, 1], &[1, 1]),
            (&[7, 13], &[13, 5]),
            (&[64, 64], &[64, 64]),
            (&[65, 127], &[127, 33]),
            (&[130, 70], &[70, 257]),
            (&[3, 1, 17, 19], &[4, 19, 23]),
            // B shared by every batch entry: on the CPU one product of 2 · 3 · 5 rows.
            (&[2, 3, 5, 7], &[7, 4]),
            (&[5, 0], &[0, 3]),
            (&[0, 4], &[4, 2]),
            (&[9], &[9, 4]),
            (&[6, 9], &[9]),
        ];
        for dtype in crate::common::FLOATS {
            let (atol, rtol) = tolerance(dtype);
            for (i, (a, b)) in cases.iter().enumerate() {
                let k = *a.last().unwrap() as f64;
                let tol = (atol * (k.sqrt() + 1.0) * 4.0, rtol * 2.0);
                let inputs = [randn(a, dtype, 2 * i as u64), randn(b, dtype, 2 * i as u64 + 1)];
                compare(&format!("matmul {dtype} {a:?} x {b:?}"), dev, &inputs, tol, |t| t[0].matmul(&t[1]));
            }
            let tol = (atol * 40.0, rtol * 2.0);
            for (i, x_shape) in [&[7usize, 33][..], &[2, 3, 33], &[33]].into_iter().enumerate() {
                let inputs =
                    [randn(x_shape, dtype, 70 + i as u64), randn(&[65, 33], dtype, 75), randn(&[65], dtype, 76)];
                compare(&format!("linear {dtype} {x_shape:?} x [65, 33]ᵀ + b"), dev, &inputs, tol, |t| {
                    t[0].linear(&t[1], Some(&t[2]))
                });
                compare(&format!("linear_relu {dtype} {x_shape:?} x [65, 33]ᵀ + b"), dev, &inputs, tol, |t| {
                    t[0].linear_relu(&t[1], Some(&t[2]))
                });
            }
            let inputs = [randn(&[45, 77], dtype, 50), randn(&[91, 45], dtype, 51)];
            compare(&format!("matmul {dtype} aᵀ x bᵀ"), dev, &inputs, tol, |t| t[0].t()?.matmul(&t[1].t()?));
            let inputs = [randn(&[2, 9, 45], dtype, 54), randn(&[45, 33], dtype, 55)];
            compare(&format!("matmul {dtype} rows sliced from each batch entry, shared b"), dev, &inputs, tol, |t| {
                t[0].narrow(1, 2, 5)?.matmul(&t[1])
            });
            let inputs = [randn(&[2, 77, 45], dtype, 52), randn(&[77, 33], dtype, 53)];
            compare(&format!("matmul {dtype} batched aᵀ, shared b"), dev, &inputs, tol, |t| {
                t[0].transpose(1, 2)?.matmul(&t[1])
            });
        }
        let ints =
            [integers(&[2, 2], 0, 3, 1).to_device(&dev).unwrap(), integers(&[2, 2], 0, 3, 2).to_device(&dev).unwrap()];
        assert!(matches!(ints[0].matmul(&ints[1]), Err(Error::UnsupportedDType { op: "matmul", .. })));
    }
}

#[test]
fn matmul_with_the_large_tiles_matches_cpu_reference_at_ragged_edges() {
    let Some(dev) = cuda_or_skip("matmul large tiles") else { return };
    // 12 x 13 tiles of 128 x 128, then 1 x 133 tiles of 64 x 128: more blocks than the 132 SMs
    // of an H100/H200 (and of the emulator), so the large and then the wide instantiation run;
    // the sizes leave partial tiles on the edges.
    for dtype in [DType::F32, DType::BF16] {
        let (atol, rtol) = tolerance(dtype);
        let tol = (atol * 24.0, rtol * 2.0);
        for (m, n) in [(1500, 1601), (64, 16_999)] {
            let inputs = [randn(&[m, 21], dtype, 60), randn(&[21, n], dtype, 61)];
            compare(&format!("matmul {dtype} {m}x21 x 21x{n}"), dev, &inputs, tol, |t| t[0].matmul(&t[1]));
            // the same shapes through the linear_* kernels, bias in the epilogue
            let inputs = [randn(&[m, 21], dtype, 62), randn(&[n, 21], dtype, 63), randn(&[n], dtype, 64)];
            compare(&format!("linear {dtype} {m}x21, {n} outputs"), dev, &inputs, tol, |t| {
                t[0].linear(&t[1], Some(&t[2]))
            });
        }
    }
}

#[test]
fn casts_copies_cat_and_stack_match_cpu_reference_exactly() {
    for dev in devices_under_test("copy") {
        for from in DType::ALL {
            let x = if from == DType::I64 {
                integers(&[33, 65], -70_000, 70_000, 1)
            } else {
                uniform(&[33, 65], -300.0, 300.0, from, 1)
            };
            for to in DType::ALL {
                compare(&format!("cast {from} -> {to}"), dev, std::slice::from_ref(&x), (0.0, 0.0), |t| {
                    t[0].to_dtype(to)
                });
                compare(&format!("cast {from} -> {to} transposed"), dev, std::slice::from_ref(&x), (0.0, 0.0), |t| {
                    t[0].t()?.to_dtype(to)
                });
                // Dense slices whose first element is 16-byte aligned (row 16 of 65) or not (row 1).
                for first in [1, 16] {
                    let what = format!("cast {from} -> {to} of rows {first}..");
                    compare(&what, dev, std::slice::from_ref(&x), (0.0, 0.0), |t| {
                        t[0].narrow(0, first, 17)?.to_dtype(to)
                    });
                }
            }
            compare(&format!("contiguous {from}"), dev, std::slice::from_ref(&x), (0.0, 0.0), |t| {
                t[0].permute(&[1, 0])?.narrow(0, 5, 50)?.contiguous()
            });
            let y = x.narrow(1, 0, 7).unwrap().contiguous().unwrap();
            compare(&format!("cat {from}"), dev, &[x.clone(), y], (0.0, 0.0), |t| {
                Tensor::cat(&[&t[0], &t[1], &t[0]], 1)
            });
            compare(&format!("stack {from}"), dev, std::slice::from_ref(&x), (0.0, 0.0), |t| {
                Tensor::stack(&[&t[0], &t[0].t()?.t()?], 2)
            });
            compare(&format!("broadcast copy {from}"), dev, &[x.narrow(0, 0, 1).unwrap()], (0.0, 0.0), |t| {
                t[0].broadcast_as(&[4, 33, 65])?.contiguous()
            });
            // Views whose runs of 8 are contiguous and aligned (cast_gather8): attention's head
            // split [B, T, 3, H, 8] -> [B, H, T, 8] and its merge back, and parts written into a
            // slice; and the same with the run's start off by one element (cast_gather).
            let z = if from == DType::I64 { integers(&[2, 5, 48], -9, 9, 2) } else { randn(&[2, 5, 48], from, 2) };
            for (first, what) in [(16, "aligned"), (17, "unaligned")] {
                for to in [from, DType::F32, DType::BF16] {
                    compare(
                        &format!("head split {from} -> {to} {what}"),
                        dev,
                        std::slice::from_ref(&z),
                        (0.0, 0.0),
                        |t| {
                            let heads = t[0].narrow(2, first, 16)?.reshape(&[2, 5, 2, 8])?;
                            heads.permute(&[0, 2, 1, 3])?.to_dtype(to)?.contiguous()
                        },
                    );
                }
            }
            compare(&format!("head merge and cat {from}"), dev, std::slice::from_ref(&z), (0.0, 0.0), |t| {
                let heads = t[0].reshape(&[2, 5, 6, 8])?.permute(&[0, 2, 1, 3])?.contiguous()?;
                let merged = heads.permute(&[0, 2, 1, 3])?.reshape(&[2, 5, 48])?;
                Tensor::cat(&[&merged, &t[0].narrow(2, 8, 16)?.to_dtype(DType::BF16)?.to_dtype(from)?], 2)
            });
        }
    }
}

#[test]
fn index_select_gather_and_one_hot_match_cpu_reference_and_reject_bad_indices() {
    for dev in devices_under_test("index") {
        for dtype in DType::ALL {
            let x = randn(&[17, 33, 5], dtype, 3);
            for (dim, size) in [(0, 17), (1, 33), (2, 5)] {
                let idx = integers(&[29], 0, size, dim as u64);
                compare(&format!("index_select {dtype} dim {dim}"), dev, &[x.clone(), idx], (0.0, 0.0), |t| {
                    t[0].index_select(dim, &t[1])
                });
                let mut shape = [17, 33, 5];
                shape[dim as usize] = 4;
                let g = integers(&shape, 0, size, 7 + dim as u64);
                compare(&format!("gather {dtype} dim {dim}"), dev, &[x.clone(), g], (0.0, 0.0), |t| {
                    t[0].gather(dim, &t[1])
                });
            }
            let labels = integers(&[257], 0, 10, 4);
            compare(&format!("one_hot {dtype}"), dev, &[labels], (0.0, 0.0), |t| t[0].one_hot(10, dtype));
        }
        let x = randn(&[4, 3], DType::F32, 1).to_device(&dev).unwrap();
        let bad = Tensor::from_vec(vec![0i64, 4], &[2], &dev).unwrap();
        assert!(matches!(x.index_select(0, &bad), Err(Error::IndexOutOfRange { op: "index_select", .. })));
        assert!(matches!(bad.one_hot(4, DType::F32), Err(Error::IndexOutOfRange { op: "one_hot", .. })));
    }
}

#[test]
fn constructors_and_transfers_give_identical_tensors_on_both_devices() {
    let Some(dev) = cuda_or_skip("constructors") else { return };
    for dtype in DType::ALL {
        let pairs = [
            (Tensor::full(&[3, 257], 2.5, dtype, &Device::Cpu), Tensor::full(&[3, 257], 2.5, dtype, &dev)),
            (Tensor::zeros(&[1031], dtype, &Device::Cpu), Tensor::zeros(&[1031], dtype, &dev)),
            (Tensor::ones(&[0, 3], dtype, &Device::Cpu), Tensor::ones(&[0, 3], dtype, &dev)),
            (Tensor::arange(-3.0, 500.0, 1.5, dtype, &Device::Cpu), Tensor::arange(-3.0, 500.0, 1.5, dtype, &dev)),
            (
                Tensor::randn(&[5, 7], dtype, &Device::Cpu, &mut Generator::new(9)),
                Tensor::randn(&[5, 7], dtype, &dev, &mut Generator::new(9)),
            ),
            (
                Tensor::rand(&[1000], dtype, &Device::Cpu, &mut Generator::new(9)),
                Tensor::rand(&[1000], dtype, &dev, &mut Generator::new(9)),
            ),
        ];
        for (i, (cpu, gpu)) in pairs.into_iter().enumerate() {
            let (cpu, gpu) = (cpu.unwrap(), gpu.unwrap());
            assert_eq!(gpu.device(), dev);
            assert_close(&format!("constructor {i} {dtype}"), &gpu, &cpu, (0.0, 0.0));
        }
        let x = randn(&[9, 11], dtype, 4);
        let view = x.t().unwrap().narrow(0, 2, 5).unwrap();
        let back = view.to_device(&dev).unwrap().to_device(&Device::Cpu).unwrap();
        assert_close(&format!("round trip {dtype}"), &back, &view.contiguous().unwrap(), (0.0, 0.0));
    }
}

#[test]
fn mixing_devices_is_an_error_naming_the_op() {
    let Some(dev) = cuda_or_skip("devices") else { return };
    let a = Tensor::zeros(&[2], DType::F32, &Device::Cpu).unwrap();
    let b = Tensor::zeros(&[2], DType::F32, &dev).unwrap();
    assert_eq!(a.add(&b).unwrap_err().to_string(), format!("add: device mismatch: cpu vs {dev}"));
    assert!(matches!(Tensor::zeros(&[1], DType::F32, &Device::Cuda(99)), Err(Error::CudaUnavailable(_))));
}

#[test]
fn every_op_backward_on_the_gpu_matches_the_cpu_backward() {
    for dev in devices_under_test("backward") {
        for dtype in [DType::F32, DType::F64] {
            for (name, inputs, f) in crate::common::grad_cases::cases() {
                let grads_on = |device: &Device| -> Vec<Tensor> {
                    let leaves: Vec<Tensor> = inputs
                        .iter()
                        .map(|t| t.to_dtype(dtype).unwrap().to_device(device).unwrap().requires_grad_().unwrap())
                        .collect();
                    let out = f(&leaves).unwrap_or_else(|e| panic!("{name} on {device}: {e}"));
                    let w = randn(out.shape(), dtype, 777).to_device(device).unwrap();
                    out.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
                    leaves.iter().map(|l| l.grad().unwrap().to_device(&Device::Cpu).unwrap()).collect()
                };
                let (gpu, cpu) = (grads_on(&dev), nabla::cpu::reference(|| grads_on(&Device::Cpu)));
                let (atol, rtol) = tolerance(dtype);
                for (i, (g, c)) in gpu.iter().zip(&cpu).enumerate() {
                    assert_close(&format!("{name} {dtype} d/d input {i}"), g, c, (atol * 10.0, rtol * 10.0));
                }
            }
        }
    }
}
