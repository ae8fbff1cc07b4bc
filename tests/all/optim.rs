//! Optimizers, schedules and gradient clipping: the CPU reference against hand-computed steps,
//! and N steps on the GPU against N steps on the CPU.

use crate::common::*;
use nabla::optim::{
    Adam, AdamConfig, ConstantLr, CosineLr, LrSchedule, Optimizer, Sgd, SgdConfig, StepLr, WarmupLr, clip_grad_norm,
};
use nabla::{DType, Device, Tensor};

fn param(values: &[f64]) -> Tensor {
    Tensor::from_vec(values.to_vec(), &[values.len()], &Device::Cpu).unwrap().requires_grad_().unwrap()
}

fn values(t: &Tensor) -> Vec<f64> {
    t.to_vec::<f64>().unwrap()
}

fn close(got: &[f64], want: &[f64], tol: f64) {
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() <= tol, "got {got:?}, want {want:?}");
    }
}

#[test]
fn sgd_with_momentum_nesterov_and_weight_decay_matches_hand_computed_steps() {
    // loss = Σ p², so g = 2p
    let p = param(&[1.0, -2.0]);
    let config = SgdConfig { lr: 0.1, momentum: 0.9, dampening: 0.0, weight_decay: 0.1, nesterov: true };
    let mut opt = Sgd::new(vec![p.clone()], config).unwrap();
    let mut want = [1.0f64, -2.0];
    let mut buf = [0.0f64; 2];
    for step in 0..3 {
        opt.zero_grad();
        p.mul(&p).unwrap().sum_all().unwrap().backward().unwrap();
        opt.step().unwrap();
        for i in 0..2 {
            let g = 2.0 * want[i] + 0.1 * want[i];
            buf[i] = if step == 0 { g } else { 0.9 * buf[i] + g };
            want[i] -= 0.1 * (g + 0.9 * buf[i]);
        }
        close(&values(&p), &want, 1e-12);
    }
}

#[test]
fn adam_and_adamw_match_hand_computed_steps() {
    for decoupled in [false, true] {
        let p = param(&[0.5, -1.5, 3.0]);
        let config = AdamConfig { lr: 0.01, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.05, decoupled };
        let mut opt = Adam::new(vec![p.clone()], config).unwrap();
        let mut want = [0.5f64, -1.5, 3.0];
        let (mut m, mut v) = ([0.0f64; 3], [0.0f64; 3]);
        for t in 1..=4 {
            opt.zero_grad();
            p.mul(&p).unwrap().sum_all().unwrap().backward().unwrap();
            opt.step().unwrap();
            for i in 0..3 {
                let mut g = 2.0 * want[i];
                if decoupled {
                    want[i] *= 1.0 - 0.01 * 0.05;
                } else {
                    g += 0.05 * want[i];
                }
                m[i] = 0.9 * m[i] + 0.1 * g;
                v[i] = 0.999 * v[i] + 0.001 * g * g;
                let (mh, vh) = (m[i] / (1.0 - 0.9f64.powi(t)), v[i] / (1.0 - 0.999f64.powi(t)));
                want[i] -= 0.01 * mh / (vh.sqrt() + 1e-8);
            }
            close(&values(&p), &want, 1e-12);
        }
    }
}

#[test]
fn parameters_without_gradients_are_left_alone_and_bad_parameters_are_rejected() {
    let (a, b) = (param(&[1.0]), param(&[2.0]));
    let mut opt = Sgd::new(vec![a.clone(), b.clone()], SgdConfig::new(0.5)).unwrap();
    a.mul_scalar(3.0).unwrap().sum_all().unwrap().backward().unwrap();
    opt.step().unwrap();
    assert_eq!(values(&a), vec![-0.5]);
    assert_eq!(values(&b), vec![2.0]);
    assert!(Sgd::new(vec![Tensor::zeros(&[2], DType::F32, &Device::Cpu).unwrap()], SgdConfig::new(0.1)).is_err());
    let nesterov_without_momentum = SgdConfig { nesterov: true, ..SgdConfig::new(0.1) };
    assert!(Sgd::new(vec![param(&[1.0])], nesterov_without_momentum).is_err());
}

#[test]
fn schedules_follow_their_formulas() {
    assert_eq!(ConstantLr(0.3).lr(100), 0.3);
    let step = StepLr { base: 1.0, step_size: 10, gamma: 0.5 };
    assert_eq!((step.lr(0), step.lr(9), step.lr(10), step.lr(25)), (1.0, 1.0, 0.5, 0.25));
    let cosine = CosineLr { base: 1.0, min: 0.1, total: 100 };
    assert!(
        (cosine.lr(0) - 1.0).abs() < 1e-12
            && (cosine.lr(50) - 0.55).abs() < 1e-12
            && (cosine.lr(100) - 0.1).abs() < 1e-12
    );
    assert_eq!(cosine.lr(500), cosine.lr(100));
    let warm = WarmupLr { warmup: 4, after: ConstantLr(2.0) };
    assert_eq!((warm.lr(0), warm.lr(3), warm.lr(4)), (0.5, 2.0, 2.0));
}

#[test]
fn clip_grad_norm_scales_every_gradient_to_the_global_norm() {
    let (a, b) = (param(&[3.0]), param(&[0.0, 4.0]));
    // grads equal the values: global norm 5
    a.mul(&a).unwrap().sum_all().unwrap().mul_scalar(0.5).unwrap().backward().unwrap();
    b.mul(&b).unwrap().sum_all().unwrap().mul_scalar(0.5).unwrap().backward().unwrap();
    let norm = clip_grad_norm(&[a.clone(), b.clone()], 1.0).unwrap().unwrap();
    assert!((norm.to_scalar::<f64>().unwrap() - 5.0).abs() < 1e-12);
    close(&values(&a.grad().unwrap()), &[0.6], 1e-6);
    close(&values(&b.grad().unwrap()), &[0.0, 0.8], 1e-6);
    // under the limit nothing changes
    let norm = clip_grad_norm(&[a.clone(), b.clone()], 10.0).unwrap().unwrap();
    assert!((norm.to_scalar::<f64>().unwrap() - 1.0).abs() < 1e-5);
    close(&values(&a.grad().unwrap()), &[0.6], 1e-6);
}

#[test]
fn optimizer_steps_on_the_gpu_match_the_cpu_for_n_steps() {
    for dev in devices_under_test("optimizer steps") {
        let run = |device: &Device, dtype: DType, which: usize| -> Vec<f64> {
            let w = randn(&[33, 17], dtype, 1).to_device(device).unwrap().requires_grad_().unwrap();
            let x = randn(&[65, 33], dtype, 2).to_device(device).unwrap();
            let mut opt: Box<dyn Optimizer> = match which {
                0 => Box::new(
                    Sgd::new(vec![w.clone()], SgdConfig { momentum: 0.9, weight_decay: 0.01, ..SgdConfig::new(0.05) })
                        .unwrap(),
                ),
                1 => Box::new(
                    Sgd::new(vec![w.clone()], SgdConfig { momentum: 0.9, nesterov: true, ..SgdConfig::new(0.05) })
                        .unwrap(),
                ),
                2 => Box::new(
                    Adam::new(vec![w.clone()], AdamConfig { weight_decay: 0.01, ..AdamConfig::adam(0.01) }).unwrap(),
                ),
                _ => Box::new(Adam::new(vec![w.clone()], AdamConfig::adamw(0.01)).unwrap()),
            };
            for _ in 0..10 {
                opt.zero_grad();
                x.matmul(&w).unwrap().tanh().unwrap().sum_all().unwrap().backward().unwrap();
                opt.step().unwrap();
            }
            w.to_vec::<f64>().unwrap()
        };
        for dtype in [DType::F32, DType::F64] {
            for which in 0..4 {
                let (gpu, cpu) = (run(&dev, dtype, which), nabla::cpu::reference(|| run(&Device::Cpu, dtype, which)));
                let tol = if dtype == DType::F64 { 1e-10 } else { 1e-4 };
                for (i, (g, c)) in gpu.iter().zip(&cpu).enumerate() {
                    assert!(
                        (g - c).abs() <= tol * (1.0 + c.abs()),
                        "optimizer {which} {dtype} element {i}: gpu {g}, cpu {c}"
                    );
                }
            }
        }
    }
}

#[test]
fn optimizer_steps_on_the_gpu_update_many_parameters_of_mixed_sizes_and_dtypes_like_the_cpu() {
    for dev in devices_under_test("optimizer lists") {
        // 31 parameters: two dtypes (two launch groups), more than one list of 24 in f32, sizes
        // around the 2048-element chunk of a block, an empty one, and two that sit out two steps
        let sizes = [1, 5, 0, 2047, 2048, 2049, 5000, 3, 17, 64, 129, 1000, 7, 2, 300, 4096];
        let specs: Vec<(usize, DType)> =
            (0..31).map(|i| (sizes[i % sizes.len()], if i % 4 == 3 { DType::F64 } else { DType::F32 })).collect();
        let run = |device: &Device, which: usize| -> Vec<Vec<f64>> {
            let params: Vec<Tensor> = specs
                .iter()
                .enumerate()
                .map(|(i, &(n, dtype))| {
                    randn(&[n], dtype, 100 + i as u64).to_device(device).unwrap().requires_grad_().unwrap()
                })
                .collect();
            let mut opt: Box<dyn Optimizer> = match which {
                0 => Box::new(
                    Sgd::new(params.clone(), SgdConfig { momentum: 0.9, weight_decay: 0.01, ..SgdConfig::new(0.05) })
                        .unwrap(),
                ),
                1 => Box::new(
                    Sgd::new(params.clone(), SgdConfig { momentum: 0.8, nesterov: true, ..SgdConfig::new(0.1) })
                        .unwrap(),
                ),
                2 => Box::new(
                    Adam::new(params.clone(), AdamConfig { weight_decay: 0.01, ..AdamConfig::adam(0.01) }).unwrap(),
                ),
                _ => Box::new(Adam::new(params.clone(), AdamConfig::adamw(0.01)).unwrap()),
            };
            for step in 0..4 {
                opt.zero_grad();
                let mut loss: Option<Tensor> = None;
                for (i, p) in params.iter().enumerate() {
                    // parameters 6 and 20 sit out the first two steps (their own step counts lag)
                    if (i == 6 || i == 20) && step < 2 {
                        continue;
                    }
                    let term = p.tanh().unwrap().mul(p).unwrap().sum_all().unwrap().to_dtype(DType::F64).unwrap();
                    loss = Some(match loss {
                        Some(l) => l.add(&term).unwrap(),
                        None => term,
                    });
                }
                loss.unwrap().backward().unwrap();
                opt.step().unwrap();
            }
            let mut out: Vec<Vec<f64>> = params.iter().map(|p| p.to_vec::<f64>().unwrap()).collect();
            out.extend(opt.state().iter().map(|(_, _, t)| t.to_vec::<f64>().unwrap()));
            out
        };
        for which in 0..4 {
            let (gpu, cpu) = (run(&dev, which), nabla::cpu::reference(|| run(&Device::Cpu, which)));
            assert_eq!(gpu.len(), cpu.len());
            for (t, (g, c)) in gpu.iter().zip(&cpu).enumerate() {
                assert_eq!(g.len(), c.len());
                for (i, (a, b)) in g.iter().zip(c).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                        "optimizer {which} tensor {t}[{i}]: gpu {a}, cpu {b}"
                    );
                }
            }
        }
    }
}
