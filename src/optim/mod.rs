//! Optimizers, learning-rate schedules and gradient clipping.
//!
//! On the GPU an optimizer step is one fused kernel launch per 24 parameters of a dtype
//! (`kernels/optim.cu`, a list of parameters by value) that reads each parameter, its gradient
//! and its state once and updates parameter and state in place; the CPU reference runs the same
//! arithmetic in f64, parameter by parameter. Hyper-parameters travel as kernel arguments,
//! so a schedule changing the learning rate costs no host synchronisation.

mod schedule;

pub use schedule::{ConstantLr, CosineLr, LrSchedule, StepLr, WarmupLr};

use crate::cpu::{Float, Lane};
use crate::cuda::CudaStorage;
use crate::cuda::graph::launch_refreshable;
use crate::cuda::params::{AdamParams, NABLA_MAX_TENSORS, SgdParams, TensorList};
use crate::storage::{CpuStorage, Storage, StorageRef};
use crate::{DType, Device, Error, Result, Tensor};
use cudarc::driver::{DevicePtr, DeviceRepr, LaunchConfig};
use rayon::prelude::*;
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

mod scaler;
pub use scaler::GradScaler;

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
        check_lr("sgd", config.lr, false)?;
        check_in("sgd", "momentum", config.momentum, 0.0..1.0)?;
        if !(0.0..=1.0).contains(&config.dampening) {
            return Err(Error::invalid("sgd", format!("dampening must be in [0, 1], got {}", config.dampening)));
        }
        check_in("sgd", "weight decay", config.weight_decay, 0.0..f64::INFINITY)?;
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
        check_lr("sgd", c.lr, true)?;
        let mut on_device = DeviceSteps::default();
        for (p, buf) in self.params.iter().zip(self.momentum.iter_mut()) {
            let Some(g) = p.grad() else { continue };
            let first_step = buf.is_none();
            let state = match buf {
                Some(b) => b.clone(),
                None => buf.insert(p.detach().zeros_like()?).clone(),
            };
            if p.device().is_cuda() {
                on_device.push("sgd", p, &g, [&state], (1.0, 1.0), first_step)?;
                continue;
            }
            cpu_step("sgd", p, &g, [&state], &SgdUpdate { config: c, first_step })?;
        }
        let args = SgdParams {
            lr: c.lr,
            momentum: c.momentum,
            dampening: c.dampening,
            weight_decay: c.weight_decay,
            nesterov: c.nesterov as i64,
        };
        on_device.launch("sgd", "sgd_step", &args)
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

/// Refuses a learning rate that is not finite and positive (0 too, once a schedule may have
/// annealed to it: `annealed`).
fn check_lr(op: &'static str, lr: f64, annealed: bool) -> Result<()> {
    let floor_ok = if annealed { lr >= 0.0 } else { lr > 0.0 };
    if !(lr.is_finite() && floor_ok) {
        let bound = if annealed { ">= 0" } else { "> 0" };
        return Err(Error::invalid(op, format!("the learning rate must be finite and {bound}, got {lr}")));
    }
    Ok(())
}

/// Refuses a hyper-parameter outside `range` (NaN included).
fn check_in(op: &'static str, name: &str, value: f64, range: std::ops::Range<f64>) -> Result<()> {
    if !range.contains(&value) {
        return Err(Error::invalid(op, format!("{name} must be in [{}, {}), got {value}", range.start, range.end)));
    }
    Ok(())
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
        check_lr("adam", config.lr, false)?;
        check_in("adam", "beta1", config.beta1, 0.0..1.0)?;
        check_in("adam", "beta2", config.beta2, 0.0..1.0)?;
        if !(config.eps.is_finite() && config.eps > 0.0) {
            return Err(Error::invalid("adam", format!("eps must be finite and > 0, got {}", config.eps)));
        }
        check_in("adam", "weight decay", config.weight_decay, 0.0..f64::INFINITY)?;
        let state = vec![None; params.len()];
        Ok(Adam { params, config, state })
    }
}

impl Optimizer for Adam {
    fn step(&mut self) -> Result<()> {
        let c = self.config;
        check_lr("adam", c.lr, true)?;
        let mut on_device = DeviceSteps::default();
        for (p, slot) in self.params.iter().zip(self.state.iter_mut()) {
            let Some(g) = p.grad() else { continue };
            if slot.is_none() {
                *slot = Some((p.detach().zeros_like()?, p.detach().zeros_like()?, 0));
            }
            let (m, v, t) = slot.as_mut().expect("initialised above");
            *t += 1;
            let (bc1, bc2) = (1.0 - c.beta1.powi(*t as i32), 1.0 - c.beta2.powi(*t as i32));
            if p.device().is_cuda() {
                on_device.push("adam", p, &g, [m, v], (bc1, bc2), false)?;
                continue;
            }
            cpu_step("adam", p, &g, [m, v], &AdamUpdate { config: c, bias_correction: (bc1, bc2) })?;
        }
        let args = AdamParams {
            lr: c.lr,
            beta1: c.beta1,
            beta2: c.beta2,
            eps: c.eps,
            weight_decay: c.weight_decay,
            decoupled: c.decoupled as i64,
        };
        on_device.launch("adam", "adam_step", &args)
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

/// One optimizer's per-element update, generic over the compute type: the reference runs it in
/// f64, the fast CPU path in the parameter's compute type (f32 for f32 and 16-bit floats).
trait Update<const N: usize>: Sync {
    /// The new parameter from (parameter, gradient), updating the `N` state values.
    fn apply<C: Float>(&self, p: C, g: C, state: &mut [C; N]) -> C;
}

/// SGD with momentum, dampening, weight decay and Nesterov, as `torch.optim.SGD`.
struct SgdUpdate {
    config: SgdConfig,
    first_step: bool,
}

impl Update<1> for SgdUpdate {
    #[inline(always)]
    fn apply<C: Float>(&self, p: C, g: C, s: &mut [C; 1]) -> C {
        let c = &self.config;
        let k = |v: f64| C::from_f64_(v);
        let mut grad = g + k(c.weight_decay) * p;
        if c.momentum != 0.0 {
            let b = if self.first_step { grad } else { k(c.momentum) * s[0] + k(1.0 - c.dampening) * grad };
            s[0] = b;
            grad = if c.nesterov { grad + k(c.momentum) * b } else { b };
        }
        p - k(c.lr) * grad
    }
}

/// Adam and AdamW (decoupled weight decay), as `torch.optim.Adam`/`AdamW`.
struct AdamUpdate {
    config: AdamConfig,
    bias_correction: (f64, f64),
}

impl Update<2> for AdamUpdate {
    #[inline(always)]
    fn apply<C: Float>(&self, mut p: C, mut g: C, s: &mut [C; 2]) -> C {
        let c = &self.config;
        let k = |v: f64| C::from_f64_(v);
        let (bc1, bc2) = self.bias_correction;
        if c.weight_decay != 0.0 {
            if c.decoupled {
                p *= k(1.0 - c.lr * c.weight_decay);
            } else {
                g += k(c.weight_decay) * p;
            }
        }
        s[0] = k(c.beta1) * s[0] + k(1.0 - c.beta1) * g;
        s[1] = k(c.beta2) * s[1] + k(1.0 - c.beta2) * g * g;
        p - k(c.lr) * (s[0] * k(1.0 / bc1)) / ((s[1] * k(1.0 / bc2)).sqrt_() + k(c.eps))
    }
}

/// One parallel task of an update: parameter values, their gradients, and the state values.
type Chunk<'a, T, const N: usize> = (&'a mut [T], &'a [T], [&'a mut [T]; N]);

/// Applies `update` to every element in place: parameter, gradient and state in one pass,
/// in fixed chunks spread over the CPU pool (the reference: sequentially, in f64).
fn update_in_place<T: Lane, const N: usize>(
    values: &mut [T],
    grads: &[T],
    states: [&mut [T]; N],
    update: &impl Update<N>,
    fast: bool,
) {
    const CHUNK: usize = 1 << 14;
    let one = |values: &mut [T], grads: &[T], states: [&mut [T]; N]| {
        // The optimizers here keep at most two state tensors: as separate arguments the
        // compiler knows they do not alias, and the loops vectorise.
        let mut states = states.into_iter();
        let (s0, s1) = (states.next().unwrap_or(&mut []), states.next().unwrap_or(&mut []));
        if fast {
            fused_loop::<T, N, _, true>(values, grads, s0, s1, update)
        } else {
            fused_loop::<T, N, _, false>(values, grads, s0, s1, update)
        }
    };
    if !fast || values.len() < crate::cpu::PARALLEL_MIN {
        one(values, grads, states);
        return;
    }
    let mut state_chunks = states.map(|s| s.chunks_mut(CHUNK));
    let tasks: Vec<Chunk<'_, T, N>> = values
        .chunks_mut(CHUNK)
        .zip(grads.chunks(CHUNK))
        .map(|(v, g)| (v, g, std::array::from_fn(|j| state_chunks[j].next().expect("state matches the parameter"))))
        .collect();
    crate::cpu::install(|| tasks.into_par_iter().for_each(|(v, g, s)| one(v, g, s)));
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

/// One pass of `update` over a chunk: in the compute type when `FAST`, else in f64 (the
/// reference). `s0` and `s1` are the state values (empty when the optimizer has fewer).
fn fused_loop<T: Lane, const N: usize, U: Update<N>, const FAST: bool>(
    values: &mut [T],
    grads: &[T],
    s0: &mut [T],
    s1: &mut [T],
    update: &U,
) {
    assert!(N <= 2, "at most two state tensors");
    let n = values.len();
    // Equal lengths up front, so the loop carries no bounds checks.
    let (grads, s0, s1) = (&grads[..n], &mut s0[..if N > 0 { n } else { 0 }], &mut s1[..if N > 1 { n } else { 0 }]);
    for i in 0..n {
        if FAST {
            let mut s: [T::C; N] = std::array::from_fn(|j| if j == 0 { s0[i].widen() } else { s1[i].widen() });
            values[i] = T::narrow(update.apply(values[i].widen(), grads[i].widen(), &mut s));
            if N > 0 {
                s0[i] = T::narrow(s[0]);
            }
            if N > 1 {
                s1[i] = T::narrow(s[N - 1]);
            }
        } else {
            let mut s: [f64; N] = std::array::from_fn(|j| if j == 0 { s0[i].to_f64() } else { s1[i].to_f64() });
            values[i] = T::from_f64(update.apply(values[i].to_f64(), grads[i].to_f64(), &mut s));
            if N > 0 {
                s0[i] = T::from_f64(s[0]);
            }
            if N > 1 {
                s1[i] = T::from_f64(s[N - 1]);
            }
        }
    }
}

/// Updates the CPU parameter `p` and its `state` tensors in place with `update`, reading the
/// gradient where it lies (converted to the parameter's dtype first if it differs).
fn cpu_step<const N: usize>(
    op: &'static str,
    p: &Tensor,
    g: &Tensor,
    state: [&Tensor; N],
    update: &impl Update<N>,
) -> Result<()> {
    if g.shape() != p.shape() {
        return Err(Error::shape(op, format!("gradient {:?} for parameter {:?}", g.shape(), p.shape())));
    }
    let g = g.to_dtype(p.dtype())?.dense()?;
    let n = p.numel();
    let g_ref = g.storage();
    let StorageRef::Cpu(g_store) = &g_ref else {
        return Err(Error::invalid(op, "the gradient is not on the parameter's device"));
    };
    let fast = crate::cpu::fast();
    let mut p_guard = cpu_write(op, p)?;
    let mut state_guards = state.iter().map(|s| cpu_write(op, s)).collect::<Result<Vec<_>>>()?;
    let (offset, _) = (g.layout.offset(), ());
    crate::cpu::with_float_vec!(&mut *p_guard, values => {
        let grads = &g_store.typed_like(values.as_slice()).expect("gradient converted to the parameter's dtype")[offset..offset + n];
        let states: Vec<&mut [_]> = state_guards.iter_mut().map(|s| s.typed_mut().expect("state has the parameter's dtype")).collect();
        let Ok(states) = <[_; N]>::try_from(states) else { unreachable!("one guard per state tensor") };
        update_in_place(&mut values[..n], grads, states, update, fast)
    })
    .ok_or_else(|| Error::unsupported(op, p.dtype(), " (parameters must be floating point)"))
}

/// Elements each block of an optimizer launch updates.
const STEP_CHUNK: usize = 2048;

/// One device parameter's update: parameter, gradient (dense, in the parameter's dtype), up to
/// two state tensors, and its own step state.
struct DeviceStep {
    param: Tensor,
    grad: Tensor,
    state: Vec<Tensor>,
    bias_correction: (f64, f64),
    first_step: bool,
}

/// The device parameters of one optimizer step, launched together by dtype and device.
#[derive(Default)]
struct DeviceSteps(Vec<DeviceStep>);

impl DeviceSteps {
    fn push<const N: usize>(
        &mut self,
        op: &'static str,
        p: &Tensor,
        g: &Tensor,
        state: [&Tensor; N],
        bias_correction: (f64, f64),
        first_step: bool,
    ) -> Result<()> {
        if g.shape() != p.shape() {
            return Err(Error::shape(op, format!("gradient {:?} for parameter {:?}", g.shape(), p.shape())));
        }
        let grad = g.to_dtype(p.dtype())?.dense()?;
        let state = state.iter().map(|s| (*s).clone()).collect();
        self.0.push(DeviceStep { param: p.clone(), grad, state, bias_correction, first_step });
        Ok(())
    }

    /// Launches `{kernel}_{dtype}` once per NABLA_MAX_TENSORS parameters of a dtype and device.
    fn launch(self, op: &'static str, kernel: &str, args: &impl DeviceRepr) -> Result<()> {
        let mut groups: BTreeMap<(String, String), Vec<DeviceStep>> = BTreeMap::new();
        for step in self.0.into_iter().filter(|s| s.param.numel() > 0) {
            let key = (step.param.device().to_string(), step.param.dtype().to_string());
            groups.entry(key).or_default().push(step);
        }
        for ((_, dtype), steps) in groups {
            for batch in steps.chunks(NABLA_MAX_TENSORS) {
                launch_list(op, &format!("{kernel}_{dtype}"), batch, args)?;
            }
        }
        Ok(())
    }
}

fn device_storage<'a>(op: &'static str, t: &'a Tensor) -> Result<&'a CudaStorage> {
    match t.storage() {
        StorageRef::Cuda(s) => Ok(s),
        StorageRef::Cpu(_) => Err(Error::invalid(op, "optimizer state and gradient must be on the parameter's device")),
    }
}

/// One launch over at most NABLA_MAX_TENSORS parameters of one dtype and device.
fn launch_list(op: &'static str, kernel: &str, batch: &[DeviceStep], args: &impl DeviceRepr) -> Result<()> {
    let dev = device_storage(op, &batch[0].param)?.device.clone();
    let mut list = TensorList { count: batch.len() as i64, chunk: STEP_CHUNK as i64, ..Default::default() };
    // cudarc's guard that comes with a raw address records an event only under event tracking,
    // which nabla turns off (one stream orders everything), so it may drop at once.
    let address = |t: &Tensor| -> Result<i64> { Ok(device_storage(op, t)?.buf.device_ptr(&dev.stream).0 as i64) };
    let mut blocks = 0;
    for (i, step) in batch.iter().enumerate() {
        let n = step.param.numel();
        list.numel[i] = n as i64;
        list.first_block[i] = blocks as i64;
        blocks += n.div_ceil(STEP_CHUNK);
        list.param[i] = address(&step.param)?;
        list.grad[i] = address(&step.grad)?;
        list.state0[i] = step.state.first().map(address).transpose()?.unwrap_or(0);
        list.state1[i] = step.state.get(1).map(address).transpose()?.unwrap_or(0);
        (list.bias_correction1[i], list.bias_correction2[i]) = step.bias_correction;
        list.first_step[i] = step.first_step as i64;
    }
    list.first_block[batch.len()] = blocks as i64;
    let f = dev.function(op, "optim", kernel)?;
    let cfg = LaunchConfig {
        grid_dim: (blocks.clamp(1, i32::MAX as usize) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    // Refreshable: in a captured training step, the learning rate and the bias corrections of
    // each replay reach the graph's node through this same call (cuda/graph.rs).
    // Its safety: sgd_step_<T>(TensorList, SgdParams) and adam_step_<T>(TensorList, AdamParams)
    // read and write numel[t] elements at each listed address: dense device buffers of the
    // parameter's size and dtype (parameters and state are contiguous, gradients made dense
    // above), alive until the queued kernel has run (frees are stream-ordered after it, and a
    // graph keeps what it reads).
    launch_refreshable(&dev, op, kernel, &f, cfg, (&list, args))
}
