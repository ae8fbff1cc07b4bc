//! The CPU reference implementation against hand-computed values and independent f64 math.

use crate::common::*;
use nabla::{DType, Device, Error, Generator, Tensor};

fn t(values: &[f64], shape: &[usize]) -> Tensor {
    Tensor::from_vec(values.to_vec(), shape, &Device::Cpu).unwrap()
}

fn vals(t: &Tensor) -> Vec<f64> {
    t.to_vec::<f64>().unwrap()
}

#[test]
fn views_share_storage_and_describe_strides() {
    let x = Tensor::arange(0.0, 24.0, 1.0, DType::F32, &Device::Cpu).unwrap().reshape(&[2, 3, 4]).unwrap();
    assert_eq!(x.strides(), &[12, 4, 1]);
    let p = x.permute(&[2, 0, 1]).unwrap();
    assert_eq!(p.shape(), &[4, 2, 3]);
    assert_eq!(p.strides(), &[1, 12, 4]);
    assert!(p.shares_storage_with(&x) && !p.is_contiguous());
    let n = x.narrow(2, 1, 2).unwrap();
    assert_eq!(n.offset(), 1);
    assert_eq!(vals(&n), vec![1., 2., 5., 6., 9., 10., 13., 14., 17., 18., 21., 22.]);
    let tr = x.transpose(0, 2).unwrap();
    assert_eq!(vals(&tr.contiguous().unwrap())[..6], [0., 12., 4., 16., 8., 20.]);
    let b = t(&[1., 2., 3.], &[3]).broadcast_as(&[2, 3]).unwrap();
    assert_eq!(b.strides(), &[0, 1]);
    assert_eq!(vals(&b), vec![1., 2., 3., 1., 2., 3.]);
    let u = x.unsqueeze(1).unwrap();
    assert_eq!(u.shape(), &[2, 1, 3, 4]);
    assert_eq!(u.squeeze(1).unwrap().shape(), &[2, 3, 4]);
    assert_eq!(x.flatten(1, 2).unwrap().shape(), &[2, 12]);
    // reshape of a non-contiguous view copies, and keeps the logical order
    assert_eq!(vals(&tr.reshape(&[24]).unwrap())[..4], [0., 12., 4., 16.]);
}

#[test]
fn unary_ops_match_hand_computed_values() {
    let x = t(&[-2.0, -0.5, 0.0, 1.0, 3.0], &[5]);
    let close = |got: Vec<f64>, want: &[f64]| {
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "got {got:?}, want {want:?}");
        }
    };
    close(vals(&x.neg().unwrap()), &[2.0, 0.5, 0.0, -1.0, -3.0]);
    close(vals(&x.abs().unwrap()), &[2.0, 0.5, 0.0, 1.0, 3.0]);
    close(vals(&x.relu().unwrap()), &[0.0, 0.0, 0.0, 1.0, 3.0]);
    close(
        vals(&x.exp().unwrap()),
        &[0.1353352832366127, 0.6065306597126334, 1.0, std::f64::consts::E, 20.085536923187668],
    );
    close(
        vals(&x.tanh().unwrap()),
        &[-0.9640275800758169, -0.46211715726000974, 0.0, 0.7615941559557649, 0.9950547536867305],
    );
    close(
        vals(&x.sigmoid().unwrap()),
        &[0.11920292202211755, 0.3775406687981454, 0.5, 0.7310585786300049, 0.9525741268224334],
    );
    // GELU = x Φ(x), with Φ(-2) = 0.022750131948179195, Φ(-0.5) = 0.3085375387259869,
    // Φ(1) = 0.8413447460685429, Φ(3) = 0.9986501019683699
    close(
        vals(&x.gelu().unwrap()),
        &[-2.0 * 0.022750131948179195, -0.5 * 0.3085375387259869, 0.0, 0.8413447460685429, 3.0 * 0.9986501019683699],
    );
    let y = t(&[0.25, 1.0, 4.0], &[3]);
    close(vals(&y.sqrt().unwrap()), &[0.5, 1.0, 2.0]);
    close(vals(&y.log().unwrap()), &[-1.3862943611198906, 0.0, 1.3862943611198906]);
}

#[test]
fn erf_matches_tabulated_values_to_double_precision() {
    for (x, want) in [
        (0.1, 0.1124629160182849),
        (0.5, 0.5204998778130465),
        (1.0, 0.8427007929497149),
        (2.0, 0.9953222650189527),
        (2.4, 0.999311486103355),
        (2.6, 0.9997639655834707),
        (3.5, 0.9999992569016276),
        (-1.5, -0.9661051464753108),
    ] {
        assert!((nabla::erf(x) - want).abs() < 2e-15, "erf({x}) = {}, want {want}", nabla::erf(x));
    }
}

#[test]
fn binary_ops_broadcast_like_numpy() {
    let a = t(&[1., 2., 3., 4., 5., 6.], &[2, 3]);
    let b = t(&[10., 20., 30.], &[3]);
    let c = t(&[100., 200.], &[2, 1]);
    assert_eq!(vals(&a.add(&b).unwrap()), vec![11., 22., 33., 14., 25., 36.]);
    assert_eq!(vals(&a.mul(&c).unwrap()), vec![100., 200., 300., 800., 1000., 1200.]);
    let outer = t(&[1., 2.], &[2, 1]).sub(&t(&[1., 2., 3.], &[1, 3])).unwrap();
    assert_eq!(outer.shape(), &[2, 3]);
    assert_eq!(vals(&outer), vec![0., -1., -2., 1., 0., -1.]);
    assert_eq!(vals(&a.pow_scalar(2.0).unwrap()), vec![1., 4., 9., 16., 25., 36.]);
    assert_eq!(vals(&a.div_scalar(2.0).unwrap()), vec![0.5, 1., 1.5, 2., 2.5, 3.]);
    assert_eq!(vals(&a.gt_scalar(3.0).unwrap()), vec![0., 0., 0., 1., 1., 1.]);
    assert_eq!(vals(&a.le(&b.div_scalar(10.0).unwrap()).unwrap()), vec![1., 1., 1., 0., 0., 0.]);
    let nan = t(&[f64::NAN, 1.0], &[2]);
    let m = vals(&nan.maximum(&t(&[0.0, f64::NAN], &[2])).unwrap());
    assert!(m[0].is_nan() && m[1].is_nan(), "maximum propagates NaN from either side");
    let err = a.add(&t(&[1., 2.], &[2])).unwrap_err();
    assert!(
        err.to_string().contains("add") && err.to_string().contains("[2, 3]") && err.to_string().contains("[2]"),
        "{err}"
    );
}

#[test]
fn integer_ops_are_exact_and_division_truncates() {
    let a = Tensor::from_vec(vec![7i64, -7, 9, 5], &[4], &Device::Cpu).unwrap();
    let b = Tensor::from_vec(vec![2i64, 2, 4, -3], &[4], &Device::Cpu).unwrap();
    assert_eq!(a.div(&b).unwrap().to_vec::<i64>().unwrap(), vec![3, -3, 2, -1]);
    assert_eq!(a.mul(&b).unwrap().to_vec::<i64>().unwrap(), vec![14, -14, 36, -15]);
    assert_eq!(a.add_scalar(2.9).unwrap().to_vec::<i64>().unwrap(), vec![9, -5, 11, 7]);
    assert!(matches!(a.exp(), Err(Error::UnsupportedDType { op: "exp", .. })));
    assert!(matches!(a.pow(&b), Err(Error::UnsupportedDType { op: "pow", .. })));
}

#[test]
fn where_cond_selects_elementwise_with_broadcasting() {
    let cond = t(&[1., 0., 1.], &[3]);
    let a = t(&[1., 2., 3., 4., 5., 6.], &[2, 3]);
    let b = t(&[-1.], &[1]);
    assert_eq!(vals(&cond.where_cond(&a, &b).unwrap()), vec![1., -1., 3., 4., -1., 6.]);
}

#[test]
fn reductions_over_axes_match_hand_sums() {
    let x = Tensor::arange(0.0, 24.0, 1.0, DType::F64, &Device::Cpu).unwrap().reshape(&[2, 3, 4]).unwrap();
    assert_eq!(vals(&x.sum_all().unwrap()), vec![276.0]);
    assert_eq!(x.sum_all().unwrap().shape(), &[] as &[usize]);
    assert_eq!(vals(&x.sum(&[0], false).unwrap())[..4], [12., 14., 16., 18.]);
    let s = x.sum(&[0, 2], true).unwrap();
    assert_eq!(s.shape(), &[1, 3, 1]);
    assert_eq!(vals(&s), vec![60., 92., 124.]);
    assert_eq!(vals(&x.mean(&[-1], false).unwrap()), vec![1.5, 5.5, 9.5, 13.5, 17.5, 21.5]);
    assert_eq!(vals(&x.max(&[1], false).unwrap()), vec![8., 9., 10., 11., 20., 21., 22., 23.]);
    assert_eq!(vals(&x.min(&[1, 2], false).unwrap()), vec![0., 12.]);
    // a reduction of a transposed view reads through the strides
    assert_eq!(vals(&x.transpose(0, 2).unwrap().sum(&[2], false).unwrap())[..3], [12., 20., 28.]);
    assert!(matches!(x.sum(&[3], false), Err(Error::AxisOutOfRange { op: "sum", axis: 3, .. })));
    assert!(matches!(x.sum(&[1, -2], false), Err(Error::InvalidArgument { op: "sum", .. })));
    let empty = Tensor::zeros(&[2, 0], DType::F32, &Device::Cpu).unwrap();
    assert_eq!(vals(&empty.sum(&[1], false).unwrap()), vec![0.0, 0.0]);
    assert!(empty.max(&[1], false).is_err());
    assert!(matches!(
        Tensor::zeros(&[2], DType::I64, &Device::Cpu).unwrap().mean_all(),
        Err(Error::UnsupportedDType { .. })
    ));
}

#[test]
fn argmax_takes_first_of_ties_and_treats_nan_as_largest() {
    let x = t(&[1., 3., 3., 0., 5., f64::NAN, 5., 2., -1., -1., -2., -2.], &[3, 4]);
    assert_eq!(x.argmax(1, false).unwrap().to_vec::<i64>().unwrap(), vec![1, 1, 0]);
    assert_eq!(x.argmin(1, false).unwrap().to_vec::<i64>().unwrap(), vec![3, 1, 2]);
    assert_eq!(x.argmax(0, true).unwrap().shape(), &[1, 4]);
    assert_eq!(x.argmax(0, false).unwrap().to_vec::<i64>().unwrap(), vec![1, 1, 1, 1]);
}

#[test]
fn softmax_matches_hand_values_and_is_stable_for_huge_logits() {
    let x = t(&[1.0, 2.0, 3.0, 1000.0, 1000.0, 1000.0], &[2, 3]);
    let s = vals(&x.softmax(-1).unwrap());
    let e: f64 = 1.0 + 1f64.exp() + 2f64.exp();
    let want = [1.0 / e, 1f64.exp() / e, 2f64.exp() / e, 1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0];
    for (g, w) in s.iter().zip(want) {
        assert!((g - w).abs() < 1e-15);
    }
    let ls = vals(&x.log_softmax(1).unwrap());
    for (g, w) in ls.iter().zip(want) {
        assert!((g - w.ln()).abs() < 1e-13);
    }
    // along axis 0 the columns sum to one
    let col = x.softmax(0).unwrap().sum(&[0], false).unwrap();
    assert!(vals(&col).iter().all(|v| (v - 1.0).abs() < 1e-15));
}

#[test]
fn matmul_matches_a_naive_f64_triple_loop_for_batched_broadcast_and_transposed_operands() {
    let a = randn(&[3, 1, 5, 7], DType::F64, 1);
    let b = randn(&[4, 9, 7], DType::F64, 2).transpose(-1, -2).unwrap(); // [4, 7, 9], a view
    let c = a.matmul(&b).unwrap();
    assert_eq!(c.shape(), &[3, 4, 5, 9]);
    let (av, bv, cv) = (a.to_vec::<f64>().unwrap(), b.contiguous().unwrap().to_vec::<f64>().unwrap(), vals(&c));
    for i in 0..3 {
        for j in 0..4 {
            for r in 0..5 {
                for col in 0..9 {
                    let want: f64 = (0..7).map(|k| av[(i * 5 + r) * 7 + k] * bv[(j * 7 + k) * 9 + col]).sum();
                    let got = cv[((i * 4 + j) * 5 + r) * 9 + col];
                    assert!((got - want).abs() < 1e-12, "c[{i},{j},{r},{col}] = {got}, want {want}");
                }
            }
        }
    }
    let m = t(&[1., 2., 3., 4., 5., 6.], &[2, 3]);
    let v = t(&[1., 0., -1.], &[3]);
    assert_eq!(vals(&m.matmul(&v).unwrap()), vec![-2., -2.]);
    assert_eq!(vals(&t(&[1., 1.], &[2]).matmul(&m).unwrap()), vec![5., 7., 9.]);
    // an operand broadcast inside its matrix dims (stride 0) is read in place too
    let rows = t(&[1., 2., 3.], &[1, 3]).broadcast_as(&[2, 3]).unwrap();
    assert_eq!(vals(&rows.matmul(&m.t().unwrap()).unwrap()), vec![14., 32., 14., 32.]);
    let err = m.matmul(&m).unwrap_err().to_string();
    assert!(err.contains("matmul") && err.contains("[2, 3] x [2, 3]"), "{err}");
}

#[test]
fn casts_round_to_nearest_and_truncate_to_integers() {
    let x = t(&[1.5, -2.7, 1e10, f64::NAN, 0.1], &[5]);
    assert_eq!(x.to_dtype(DType::I64).unwrap().to_vec::<i64>().unwrap(), vec![1, -2, 10_000_000_000, 0, 0]);
    let h = x.to_dtype(DType::F16).unwrap().to_vec::<f64>().unwrap();
    assert_eq!(h[0], 1.5);
    assert!(h[2].is_infinite(), "1e10 overflows f16");
    assert_eq!(h[4], half::f16::from_f64(0.1).to_f64());
    let b = x.to_dtype(DType::BF16).unwrap().to_vec::<f64>().unwrap();
    assert_eq!(b[4], half::bf16::from_f64(0.1).to_f64());
}

#[test]
fn index_select_gather_and_one_hot_pick_the_right_elements() {
    let x = Tensor::arange(0.0, 12.0, 1.0, DType::F32, &Device::Cpu).unwrap().reshape(&[3, 4]).unwrap();
    let idx = Tensor::from_vec(vec![2i64, 0, 2], &[3], &Device::Cpu).unwrap();
    assert_eq!(vals(&x.index_select(0, &idx).unwrap()), vec![8., 9., 10., 11., 0., 1., 2., 3., 8., 9., 10., 11.]);
    assert_eq!(vals(&x.index_select(1, &idx).unwrap()), vec![2., 0., 2., 6., 4., 6., 10., 8., 10.]);
    let g = Tensor::from_vec(vec![3i64, 0, 1, 1, 2, 2], &[3, 2], &Device::Cpu).unwrap();
    assert_eq!(vals(&x.gather(1, &g).unwrap()), vec![3., 0., 5., 5., 10., 10.]);
    let labels = Tensor::from_vec(vec![1i64, 0, 3], &[3], &Device::Cpu).unwrap();
    let oh = labels.one_hot(4, DType::F32).unwrap();
    assert_eq!(oh.shape(), &[3, 4]);
    assert_eq!(vals(&oh), vec![0., 1., 0., 0., 1., 0., 0., 0., 0., 0., 0., 1.]);
    let bad = Tensor::from_vec(vec![4i64], &[1], &Device::Cpu).unwrap();
    assert!(matches!(x.index_select(1, &bad), Err(Error::IndexOutOfRange { op: "index_select", index: 4, size: 4 })));
    assert!(matches!(labels.one_hot(3, DType::F32), Err(Error::IndexOutOfRange { op: "one_hot", index: 3, size: 3 })));
    assert!(matches!(x.index_select(0, &x), Err(Error::UnsupportedDType { op: "index_select", .. })));
}

#[test]
fn index_add_and_scatter_add_accumulate_repeated_indices_along_an_inner_dim() {
    // [2, 3, 4] base; index_add along dim 1 with ids [2, 0, 2] from a [2, 3, 4] source.
    let base = randn(&[2, 3, 4], DType::F64, 70);
    let source = randn(&[2, 3, 4], DType::F64, 71);
    let ids = [2usize, 0, 2];
    let index = Tensor::from_vec(ids.iter().map(|&i| i as i64).collect(), &[3], &Device::Cpu).unwrap();
    let got = vals(&base.index_add(1, &index, &source).unwrap());
    let (mut want, src) = (vals(&base), vals(&source));
    for a in 0..2 {
        for (j, &k) in ids.iter().enumerate() {
            for c in 0..4 {
                want[(a * 3 + k) * 4 + c] += src[(a * 3 + j) * 4 + c];
            }
        }
    }
    assert_eq!(got, want, "index_add along dim 1");
    // scatter_add along dim 1: each source element to its own index.
    let per = [[1i64, 1], [0, 2], [2, 2]];
    let index = Tensor::from_vec(per.concat(), &[3, 2], &Device::Cpu).unwrap();
    let source = randn(&[3, 2], DType::F64, 72);
    let base = randn(&[3, 3], DType::F64, 73);
    let got = vals(&base.scatter_add(1, &index, &source).unwrap());
    let (mut want, src) = (vals(&base), vals(&source));
    for (r, row) in per.iter().enumerate() {
        for (j, &k) in row.iter().enumerate() {
            want[r * 3 + k as usize] += src[r * 2 + j];
        }
    }
    assert_eq!(got, want, "scatter_add along dim 1");
}

#[test]
fn cat_and_stack_join_along_any_dim() {
    let a = t(&[1., 2., 3., 4.], &[2, 2]);
    let b = t(&[5., 6.], &[2, 1]);
    assert_eq!(vals(&Tensor::cat(&[&a, &b], 1).unwrap()), vec![1., 2., 5., 3., 4., 6.]);
    let s = Tensor::stack(&[&a, &a.neg().unwrap()], 0).unwrap();
    assert_eq!(s.shape(), &[2, 2, 2]);
    assert_eq!(vals(&s), vec![1., 2., 3., 4., -1., -2., -3., -4.]);
    let err = Tensor::cat(&[&a, &b], 0).unwrap_err().to_string();
    assert!(err.contains("cat") && err.contains("[2, 2]") && err.contains("[2, 1]"), "{err}");
}

#[test]
fn constructors_ndarray_and_generator_are_deterministic() {
    let a = Tensor::randn(&[100], DType::F32, &Device::Cpu, &mut Generator::new(3)).unwrap();
    let b = Tensor::randn(&[100], DType::F32, &Device::Cpu, &mut Generator::new(3)).unwrap();
    assert_eq!(a.to_vec::<f32>().unwrap(), b.to_vec::<f32>().unwrap());
    let mean =
        vals(&Tensor::randn(&[20000], DType::F64, &Device::Cpu, &mut Generator::new(1)).unwrap().mean_all().unwrap())
            [0];
    assert!(mean.abs() < 0.03, "randn mean {mean}");
    let u = vals(&Tensor::rand(&[1000], DType::F64, &Device::Cpu, &mut Generator::new(2)).unwrap());
    assert!(u.iter().all(|&v| (0.0..1.0).contains(&v)));
    assert_eq!(vals(&Tensor::arange(1.0, 2.0, 0.25, DType::F32, &Device::Cpu).unwrap()), vec![1.0, 1.25, 1.5, 1.75]);
    assert_eq!(vals(&Tensor::full(&[2], 7.0, DType::I64, &Device::Cpu).unwrap()), vec![7.0, 7.0]);
    let arr = ndarray::Array2::from_shape_fn((2, 3), |(i, j)| (i * 3 + j) as f32);
    let x = Tensor::from_ndarray(&arr, &Device::Cpu).unwrap();
    assert_eq!(x.shape(), &[2, 3]);
    assert_eq!(x.t().unwrap().to_ndarray::<f32>().unwrap(), arr.t().into_dyn());
    assert!(matches!(
        Tensor::from_vec(vec![1.0f32; 5], &[2, 3], &Device::Cpu),
        Err(Error::ShapeMismatch { op: "from_vec", .. })
    ));
}

#[test]
fn bad_input_is_an_error_naming_the_op_and_shapes() {
    let x = Tensor::zeros(&[2, 3], DType::F32, &Device::Cpu).unwrap();
    let y = Tensor::zeros(&[2, 3], DType::F64, &Device::Cpu).unwrap();
    assert_eq!(x.add(&y).unwrap_err().to_string(), "add: dtype mismatch: f32 vs f64");
    assert_eq!(
        x.transpose(0, 2).unwrap_err().to_string(),
        "transpose: axis 2 is out of range for a tensor of shape [2, 3]"
    );
    assert!(x.reshape(&[4]).unwrap_err().to_string().contains("cannot reshape [2, 3] into [4]"));
    assert!(x.narrow(1, 2, 2).unwrap_err().to_string().contains("narrow"));
    assert!(x.squeeze(0).unwrap_err().to_string().contains("squeeze"));
    assert!(x.broadcast_as(&[3, 3]).unwrap_err().to_string().contains("cannot broadcast [2, 3] to [3, 3]"));
    assert!(x.permute(&[0, 0]).unwrap_err().to_string().contains("permute"));
    assert!(Tensor::arange(0.0, 1.0, 0.0, DType::F32, &Device::Cpu).is_err());
}
