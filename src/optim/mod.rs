//! Optimizers, learning-rate schedules and gradient clipping.
//!
//! Each optimizer step is one fused kernel per parameter (`kernels/optim.cu`) that reads the
//! parameter, its gradient and its state once and updates parameter and state in place; the
//! CPU reference runs the same arithmetic in f64. Hyper-parameters travel as kernel arguments,
//! so a schedule changing the learning rate costs no host synchronisation.

mod schedule;

pub use schedule::{ConstantLr, CosineLr, LrSchedule, StepLr, WarmupLr};

use crate::cuda::params::{AdamParams, SgdParams};
use crate::cuda::{elementwise_config, launch_error};
use crate::dtype::Element;
use crate::storage::{CpuStorage, Storage, StorageRef, with_cpu_vec};
use crate::{DType, Device, Error, Result, Tensor};
use cudarc::driver::{DeviceRepr, PushKernelArg};
use std::collections::BTreeMap;

/// Something that updates parameters from their gradients.
pub trait Optimizer {
    /// Applies one update to every parameter that has a gradient.
    fn step(&mut self) -> Result<()>;
    /// The learning rate of the next step.
    fn lr(&self) -> f64;
    /// Sets the learning rate (schedules call this between steps).
    fn set_lr(&mut self, lr: f64);
    /// The parameters being optimized.
    fn params(&self) -> &[Tensor];
    /// The per-parameter state as (parameter index, key, tensor), with PyTorch's keys
    /// (`momentum_buffer`; `exp_avg`, `exp_avg_sq`, `step`), for checkpoints.
    fn state(&self) -> Vec<(usize, String, Tensor)>;
    /// Restores parameter `index`'s state from a checkpoint's (key, tensor) pairs.
    fn set_state(&mut self, index: usize, state: &BTreeMap<String, Tensor>) -> Result<()>;
    /// Clears every parameter's gradient.
    fn zero_grad(&self) {
        self.params().iter().for_each(Tensor::zero_grad);
    }
}

pub(crate) fn kernel_names() -> Vec<String> {
    DType::ALL
        .iter()
        .filter(|d| d.is_float())
        .flat_map(|d| [format!("sgd_step_{d}"), format!("adam_step_{d}")])
        .collect()
}

/// Stochastic gradient descent with optional momentum, Nesterov momentum and weight decay,
/// as `torch.optim.SGD`.
pub struct Sgd {
    params: Vec<Tensor>,
    /// Hyper-parameters.
    pub config: SgdConfig,
    momentum: Vec<Option<Tensor>>,
}

/// SGD's hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdConfig {
    /// Learning rate.
    pub lr: f64,
    /// Momentum factor (0 disables momentum).
    pub momentum: f64,
    /// Dampening of the momentum's gradient term.
    pub dampening: f64,
    /// L2 penalty added to the gradient.
    pub weight_decay: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
}

impl SgdConfig {
    /// Plain SGD with learning rate `lr`.
    pub fn new(lr: f64) -> Self {
        SgdConfig { lr, momentum: 0.0, dampening: 0.0, weight_decay: 0.0, nesterov: false }
    }
}

impl Sgd {
    /// An optimizer over `params` (leaves created with `requires_grad_`).
    pub fn new(params: Vec<Tensor>, config: SgdConfig) -> Result<Self> {
        check_params("sgd", &params)?;
        if config.nesterov && (config.momentum <= 0.0 || config.dampening != 0.0) {
            return Err(Error::invalid("sgd", "Nesterov momentum needs momentum > 0 and no dampening"));
        }
        let momentum = vec![None; params.len()];
        Ok(Sgd { params, config, momentum })
    }
}

impl Optimizer for Sgd {
    fn step(&mut self) -> Result<()> {
        let c = self.config;
        for (p, buf) in self.params.iter().zip(self.momentum.iter_mut()) {
            let Some(g) = p.grad() else { continue };
            let first_step = buf.is_none();
            let state = match buf {
                Some(b) => b.clone(),
                None => buf.insert(p.detach().zeros_like()?).clone(),
            };
            let args = SgdParams {
                lr: c.lr,
                momentum: c.momentum,
                dampening: c.dampening,
                weight_decay: c.weight_decay,
                nesterov: c.nesterov as i64,
                first_step: first_step as i64,
            };
            fused_step("sgd", "sgd_step", p, &g, [&state], &args, |p, g, s| {
                let mut grad = g + c.weight_decay * p;
                if c.momentum != 0.0 {
                    let b = if first_step { grad } else { c.momentum * s[0] + (1.0 - c.dampening) * grad };
                    s[0] = b;
                    grad = if c.nesterov { grad + c.momentum * b } else { b };
                }
                p - c.lr * grad
            })?;
        }
        Ok(())
    }

    fn lr(&self) -> f64 {
        self.config.lr
    }

    fn set_lr(&mut self, lr: f64) {
        self.config.lr = lr;
    }

    fn params(&self) -> &[Tensor] {
        &self.params
    }

    fn state(&self) -> Vec<(usize, String, Tensor)> {
        self.momentum
            .iter()
            .enumerate()
            .filter_map(|(i, b)| b.clone().map(|b| (i, "momentum_buffer".to_string(), b)))
            .collect()
    }

    fn set_state(&mut self, index: usize, state: &BTreeMap<String, Tensor>) -> Result<()> {
        let p = self.params.get(index).ok_or_else(|| Error::invalid("sgd", format!("no parameter {index}")))?;
        if let Some(b) = state.get("momentum_buffer") {
            self.momentum[index] = Some(restore("sgd", p, b)?);
        }
        Ok(())
    }
}

/// A state tensor shaped like `p`, on its device and in its dtype.
fn restore(op: &'static str, p: &Tensor, saved: &Tensor) -> Result<Tensor> {
    if saved.shape() != p.shape() {
        return Err(Error::shape(op, format!("saved state {:?} for a parameter {:?}", saved.shape(), p.shape())));
    }
    saved.to_dtype(p.dtype())?.to_device(&p.device())?.detach().contiguous()
}

/// Adam, or AdamW with `decoupled` weight decay, as `torch.optim.Adam` / `AdamW`.
pub struct Adam {
    params: Vec<Tensor>,
    /// Hyper-parameters.
    pub config: AdamConfig,
    state: Vec<Option<(Tensor, Tensor, u64)>>,
}

/// Adam's hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamConfig {
    /// Learning rate.
    pub lr: f64,
    /// Decay of the first-moment average.
    pub beta1: f64,
    /// Decay of the second-moment average.
    pub beta2: f64,
    /// Added to the denominator for stability.
    pub eps: f64,
    /// Weight decay: an L2 term in the gradient (Adam) or a decoupled shrink (AdamW).
    pub weight_decay: f64,
    /// AdamW's decoupled weight decay.
    pub decoupled: bool,
}

impl AdamConfig {
    /// Adam with PyTorch's defaults and learning rate `lr`.
    pub fn adam(lr: f64) -> Self {
        AdamConfig { lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, decoupled: false }
    }

    /// AdamW with PyTorch's defaults (weight decay 0.01) and learning rate `lr`.
    pub fn adamw(lr: f64) -> Self {
        AdamConfig { weight_decay: 0.01, decoupled: true, ..AdamConfig::adam(lr) }
    }
}

impl Adam {
    /// An optimizer over `params` (leaves created with `requires_grad_`).
    pub fn new(params: Vec<Tensor>, config: AdamConfig) -> Result<Self> {
        check_params("adam", &params)?;
        let state = vec![None; params.len()];
        Ok(Adam { params, config, state })
    }
}

impl Optimizer for Adam {
    fn step(&mut self) -> Result<()> {
        let c = self.config;
        for (p, slot) in self.params.iter().zip(self.state.iter_mut()) {
            let Some(g) = p.grad() else { continue };
            if slot.is_none() {
                *slot = Some((p.detach().zeros_like()?, p.detach().zeros_like()?, 0));
            }
            let (m, v, t) = slot.as_mut().expect("initialised above");
            *t += 1;
            let (bc1, bc2) = (1.0 - c.beta1.powi(*t as i32), 1.0 - c.beta2.powi(*t as i32));
            let args = AdamParams {
                lr: c.lr,
                beta1: c.beta1,
                beta2: c.beta2,
                eps: c.eps,
                weight_decay: c.weight_decay,
                bias_correction1: bc1,
                bias_correction2: bc2,
                decoupled: c.decoupled as i64,
            };
            fused_step("adam", "adam_step", p, &g, [m, v], &args, |mut p, mut g, s| {
                if c.weight_decay != 0.0 {
                    if c.decoupled {
                        p *= 1.0 - c.lr * c.weight_decay;
                    } else {
                        g += c.weight_decay * p;
                    }
                }
                s[0] = c.beta1 * s[0] + (1.0 - c.beta1) * g;
                s[1] = c.beta2 * s[1] + (1.0 - c.beta2) * g * g;
                p - c.lr * (s[0] / bc1) / ((s[1] / bc2).sqrt() + c.eps)
            })?;
        }
        Ok(())
    }

    fn lr(&self) -> f64 {
        self.config.lr
    }

    fn set_lr(&mut self, lr: f64) {
        self.config.lr = lr;
    }

    fn params(&self) -> &[Tensor] {
        &self.params
    }

    fn state(&self) -> Vec<(usize, String, Tensor)> {
        let mut out = Vec::new();
        for (i, slot) in self.state.iter().enumerate() {
            if let Some((m, v, t)) = slot {
                out.push((i, "exp_avg".to_string(), m.clone()));
                out.push((i, "exp_avg_sq".to_string(), v.clone()));
                if let Ok(step) = Tensor::from_vec(vec![*t as f64], &[], &Device::Cpu) {
                    out.push((i, "step".to_string(), step));
                }
            }
        }
        out
    }

    fn set_state(&mut self, index: usize, state: &BTreeMap<String, Tensor>) -> Result<()> {
        let p = self.params.get(index).ok_or_else(|| Error::invalid("adam", format!("no parameter {index}")))?;
        let (Some(m), Some(v), Some(t)) = (state.get("exp_avg"), state.get("exp_avg_sq"), state.get("step")) else {
            return Ok(());
        };
        let step = t.to_scalar::<f64>()?;
        if !(step >= 0.0 && step.fract() == 0.0) {
            return Err(Error::invalid("adam", format!("saved step {step} is not a count")));
        }
        self.state[index] = Some((restore("adam", p, m)?, restore("adam", p, v)?, step as u64));
        Ok(())
    }
}

/// Scales the gradients of `params` so their global L2 norm is at most `max_norm`, as
/// `torch.nn.utils.clip_grad_norm_`, and returns the norm before clipping as a one-element
/// tensor. Everything stays on the device: no host synchronisation.
pub fn clip_grad_norm(params: &[Tensor], max_norm: f64) -> Result<Option<Tensor>> {
    let _guard = crate::NoGradGuard::new();
    let grads: Vec<(&Tensor, Tensor)> = params.iter().filter_map(|p| p.grad().map(|g| (p, g))).collect();
    let Some((_, first)) = grads.first() else { return Ok(None) };
    let mut total = Tensor::zeros(&[], first.dtype(), &first.device())?;
    for (_, g) in &grads {
        total = total.add(&g.mul(g)?.sum_all()?)?;
    }
    let norm = total.sqrt()?;
    // coefficient = min(1, max_norm / (norm + 1e-6))
    let coefficient = norm.add_scalar(1e-6)?.pow_scalar(-1.0)?.mul_scalar(max_norm)?.minimum_scalar(1.0)?;
    for (p, g) in &grads {
        p.set_grad(Some(g.mul(&coefficient)?))?;
    }
    Ok(Some(norm))
}

/// The CPU reference of a fused step: per element, in f64, writing parameter and state back.
fn update_in_place<T: Element, const N: usize>(
    values: &mut [T],
    state_guards: &mut [std::sync::RwLockWriteGuard<'_, CpuStorage>; N],
    grads: &[f64],
    update: &impl Fn(f64, f64, &mut [f64; N]) -> f64,
) {
    let states: [&mut [T]; N] =
        state_guards.each_mut().map(|guard| guard.typed_mut::<T>().expect("state has the parameter's dtype"));
    for (i, value) in values.iter_mut().enumerate() {
        let mut s: [f64; N] = std::array::from_fn(|j| states[j][i].to_f64());
        *value = T::from_f64(update(value.to_f64(), grads[i], &mut s));
        for j in 0..N {
            states[j][i] = T::from_f64(s[j]);
        }
    }
}

/// The host storage of a dense tensor, locked for writing.
fn cpu_write<'a>(op: &'static str, t: &'a Tensor) -> Result<std::sync::RwLockWriteGuard<'a, CpuStorage>> {
    match &*t.storage {
        Storage::Cpu(lock) => Ok(lock.write().unwrap_or_else(|e| e.into_inner())),
        Storage::Cuda(_) => Err(Error::invalid(op, "optimizer state is not on the parameter's device")),
    }
}

fn check_params(op: &'static str, params: &[Tensor]) -> Result<()> {
    for (i, p) in params.iter().enumerate() {
        if !p.requires_grad() || !p.dtype().is_float() {
            return Err(Error::invalid(
                op,
                format!("parameter {i} ({:?}, {}) does not require grad", p.shape(), p.dtype()),
            ));
        }
        if !p.is_contiguous() || p.offset() != 0 {
            return Err(Error::invalid(
                op,
                format!("parameter {i} ({:?}) is a strided view; optimize its base", p.shape()),
            ));
        }
    }
    Ok(())
}

/// Updates `p` and its `state` tensors in place: one fused kernel on the GPU, or `update`
/// (param, grad, state) -> new param per element in f64 on the CPU.
fn fused_step<const N: usize>(
    op: &'static str,
    kernel: &str,
    p: &Tensor,
    g: &Tensor,
    state: [&Tensor; N],
    args: &impl DeviceRepr,
    update: impl Fn(f64, f64, &mut [f64; N]) -> f64,
) -> Result<()> {
    if g.shape() != p.shape() {
        return Err(Error::shape(op, format!("gradient {:?} for parameter {:?}", g.shape(), p.shape())));
    }
    let g = g.to_dtype(p.dtype())?.dense()?;
    match p.device() {
        Device::Cpu => {
            let grads = g.to_vec::<f64>()?;
            let n = p.numel();
            let mut p_guard = cpu_write(op, p)?;
            let mut state_guards = state.iter().map(|s| cpu_write(op, s)).collect::<Result<Vec<_>>>()?;
            let Ok(mut state_guards) = <[_; N]>::try_from(std::mem::take(&mut state_guards)) else {
                unreachable!("one guard per state tensor")
            };
            with_cpu_vec!(&mut *p_guard, values => update_in_place(&mut values[..n], &mut state_guards, &grads, &update));
            Ok(())
        }
        Device::Cuda(_) => {
            let n = p.numel();
            if n == 0 {
                return Ok(());
            }
            let (ps, gs) = (p.storage(), g.storage());
            let states: Vec<_> = state.iter().map(|s| s.storage()).collect();
            let (StorageRef::Cuda(pc), StorageRef::Cuda(gc)) = (&ps, &gs) else {
                return Err(Error::invalid(op, "gradient and parameter are on different devices"));
            };
            let dev = pc.device.clone();
            let name = format!("{kernel}_{}", p.dtype());
            let f = dev.function(op, "optim", &name)?;
            let n_arg = n as i64;
            let mut launch = dev.stream.launch_builder(&f);
            launch.arg(&pc.buf).arg(&gc.buf);
            for s in &states {
                match s {
                    StorageRef::Cuda(sc) => launch.arg(&sc.buf),
                    StorageRef::Cpu(_) => return Err(Error::invalid(op, "optimizer state is not on the device")),
                };
            }
            launch.arg(&n_arg).arg(args);
            // SAFETY: sgd_step_<T>(T* p, const T* g, T* buf, i64 n, SgdParams) and
            // adam_step_<T>(T* p, const T* g, T* m, T* v, i64 n, AdamParams) read and write n
            // elements of dense buffers of the parameter's size. Parameter and state are device
            // memory written only by this kernel.
            unsafe { launch.launch(elementwise_config(n)) }.map_err(|e| launch_error(op, &name, e))?;
            Ok(())
        }
    }
}
