//! Learning-rate schedules: the rate for each step, from the base rate.

/// A learning rate as a function of the step number (0-based).
pub trait LrSchedule {
    /// The learning rate for `step`.
    fn lr(&self, step: usize) -> f64;
}

/// The same rate throughout.
#[derive(Clone, Copy, Debug)]
pub struct ConstantLr(pub f64);

impl LrSchedule for ConstantLr {
    fn lr(&self, _step: usize) -> f64 {
        self.0
    }
}

/// `base * gamma^(step / step_size)`, as `torch.optim.lr_scheduler.StepLR`.
#[derive(Clone, Copy, Debug)]
pub struct StepLr {
    /// The initial rate.
    pub base: f64,
    /// Steps between decays.
    pub step_size: usize,
    /// The decay factor.
    pub gamma: f64,
}

impl LrSchedule for StepLr {
    fn lr(&self, step: usize) -> f64 {
        self.base * self.gamma.powi((step / self.step_size.max(1)) as i32)
    }
}

/// Cosine annealing from `base` to `min` over `total` steps, as `CosineAnnealingLR`.
#[derive(Clone, Copy, Debug)]
pub struct CosineLr {
    /// The initial rate.
    pub base: f64,
    /// The final rate.
    pub min: f64,
    /// Steps to reach `min`; the rate stays there afterwards.
    pub total: usize,
}

impl LrSchedule for CosineLr {
    fn lr(&self, step: usize) -> f64 {
        let t = step.min(self.total) as f64 / self.total.max(1) as f64;
        self.min + 0.5 * (self.base - self.min) * (1.0 + (std::f64::consts::PI * t).cos())
    }
}

/// A linear warm-up from 0 over `warmup` steps, then `after` (counted from the warm-up's end).
#[derive(Clone, Copy, Debug)]
pub struct WarmupLr<S> {
    /// Warm-up steps.
    pub warmup: usize,
    /// The schedule after the warm-up.
    pub after: S,
}

impl<S: LrSchedule> LrSchedule for WarmupLr<S> {
    fn lr(&self, step: usize) -> f64 {
        if step < self.warmup {
            self.after.lr(0) * (step + 1) as f64 / self.warmup as f64
        } else {
            self.after.lr(step - self.warmup)
        }
    }
}
