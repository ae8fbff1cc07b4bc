//! Every op's backward against central finite differences in f64 on the CPU, and the autograd
//! engine's own rules: accumulation, zeroing, detach and no-grad scopes.

use crate::common::grad_cases::cases;
use crate::common::randn;
use nabla::{DType, Device, Result, Tensor};

/// The analytic gradients of Σ w ⊙ f(inputs) (fixed random w, so every output element counts
/// with its own weight).
fn analytic(inputs: &[Tensor], f: &dyn Fn(&[Tensor]) -> Result<Tensor>) -> Vec<Vec<f64>> {
    let leaves: Vec<Tensor> = inputs.iter().map(|t| t.requires_grad_().unwrap()).collect();
    let out = f(&leaves).unwrap();
    let w = randn(out.shape(), DType::F64, 777).to_device(&out.device()).unwrap();
    out.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
    leaves.iter().map(|l| l.grad().expect("every input gets a gradient").to_vec::<f64>().unwrap()).collect()
}

/// Central differences of the same loss, one input element at a time.
fn numeric(inputs: &[Tensor], f: &dyn Fn(&[Tensor]) -> Result<Tensor>, h: f64) -> Vec<Vec<f64>> {
    let loss = |ins: &[Tensor]| -> f64 {
        let out = f(ins).unwrap();
        let w = randn(out.shape(), DType::F64, 777);
        out.mul(&w).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap()
    };
    (0..inputs.len())
        .map(|i| {
            let base = inputs[i].to_vec::<f64>().unwrap();
            (0..base.len())
                .map(|j| {
                    let at = |delta: f64| {
                        let mut v = base.clone();
                        v[j] += delta;
                        let mut ins = inputs.to_vec();
                        ins[i] = Tensor::from_vec(v, inputs[i].shape(), &Device::Cpu).unwrap();
                        loss(&ins)
                    };
                    (at(h) - at(-h)) / (2.0 * h)
                })
                .collect()
        })
        .collect()
}

#[test]
fn every_op_backward_matches_central_finite_differences_in_f64() {
    for (name, inputs, f) in cases() {
        let got = analytic(&inputs, &*f);
        let want = numeric(&inputs, &*f, 1e-6);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            for (j, (a, b)) in g.iter().zip(w).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-6 + 1e-6 * b.abs(),
                    "{name}: d/d input {i}[{j}]: backward {a}, finite difference {b}"
                );
            }
        }
    }
}

#[test]
fn cast_backward_casts_the_gradient_back() {
    let x = randn(&[5], DType::F64, 1).requires_grad_().unwrap();
    let y = x.to_dtype(DType::F32).unwrap().mul_scalar(3.0).unwrap().to_dtype(DType::F64).unwrap();
    y.sum_all().unwrap().backward().unwrap();
    let g = x.grad().unwrap();
    assert_eq!(g.dtype(), DType::F64);
    assert_eq!(g.to_vec::<f64>().unwrap(), vec![3.0; 5]);
}

#[test]
fn gradients_accumulate_until_zeroed_and_paths_sum() {
    let x = Tensor::from_vec(vec![1.0f64, 2.0, 3.0], &[3], &Device::Cpu).unwrap().requires_grad_().unwrap();
    // y = x*x + x: two paths from x
    let loss = || x.mul(&x).unwrap().add(&x).unwrap().sum_all().unwrap();
    loss().backward().unwrap();
    assert_eq!(x.grad().unwrap().to_vec::<f64>().unwrap(), vec![3.0, 5.0, 7.0]);
    loss().backward().unwrap();
    assert_eq!(x.grad().unwrap().to_vec::<f64>().unwrap(), vec![6.0, 10.0, 14.0]);
    x.zero_grad();
    assert!(x.grad().is_none());
}

#[test]
fn detach_and_no_grad_stop_recording() {
    let x = randn(&[3], DType::F64, 2).requires_grad_().unwrap();
    assert!(x.exp().unwrap().requires_grad());
    assert!(!x.detach().exp().unwrap().requires_grad());
    let y = nabla::no_grad(|| x.exp().unwrap());
    assert!(!y.requires_grad());
    assert!(nabla::is_grad_enabled());
    // a detached branch contributes nothing
    x.mul(&x.detach()).unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(x.grad().unwrap().to_vec::<f64>().unwrap(), x.to_vec::<f64>().unwrap());
}

#[test]
fn backward_rejects_non_scalars_and_untracked_tensors() {
    let x = randn(&[3], DType::F64, 3).requires_grad_().unwrap();
    assert!(x.exp().unwrap().backward().unwrap_err().to_string().contains("backward"));
    assert!(x.detach().sum_all().unwrap().backward().is_err());
    assert!(Tensor::zeros(&[2], DType::I64, &Device::Cpu).unwrap().requires_grad_().is_err());
}
