//! Dynamic loss scaling for f16 mixed precision, as `torch.amp.GradScaler`: the loss is
//! multiplied by a large scale before the backward pass, so that gradients too small for f16
//! survive its products; the f32 gradients are divided by the same scale before the optimizer
//! sees them. A step whose gradients hold an infinity or a NaN (the scale was too large) is
//! skipped and the scale halved; after `growth_interval` good steps in a row it doubles.

use super::Optimizer;
use crate::{DType, Device, Error, Result, Tensor};
use std::collections::BTreeMap;

/// Key of the scale in a saved optimizer state (PyTorch's GradScaler `state_dict` name).
const SCALE_KEY: &str = "grad_scaler.scale";
/// Key of the count of good steps since the last change of scale.
const TRACKER_KEY: &str = "grad_scaler._growth_tracker";

/// A dynamic loss scaler (see the module's documentation).
#[derive(Clone, Debug, PartialEq)]
pub struct GradScaler {
    scale: f64,
    growth_factor: f64,
    backoff_factor: f64,
    growth_interval: usize,
    good_steps: usize,
    skipped: usize,
}

impl Default for GradScaler {
    /// PyTorch's defaults: scale 2^16, doubled after 2000 good steps, halved on an overflow.
    fn default() -> Self {
        GradScaler {
            scale: 65536.0,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 2000,
            good_steps: 0,
            skipped: 0,
        }
    }
}

impl GradScaler {
    /// A scaler starting at `init_scale`, multiplied by `growth_factor` (> 1) after
    /// `growth_interval` (≥ 1) good steps and by `backoff_factor` (in (0, 1)) after a step with
    /// non-finite gradients.
    pub fn new(init_scale: f64, growth_factor: f64, backoff_factor: f64, growth_interval: usize) -> Result<GradScaler> {
        let bad = |what: String| Err(Error::invalid("GradScaler", what));
        if !(init_scale.is_finite() && init_scale > 0.0) {
            return bad(format!("init_scale must be finite and > 0, got {init_scale}"));
        }
        if !(growth_factor.is_finite() && growth_factor > 1.0) {
            return bad(format!("growth_factor must be finite and > 1, got {growth_factor}"));
        }
        if !(backoff_factor > 0.0 && backoff_factor < 1.0) {
            return bad(format!("backoff_factor must be in (0, 1), got {backoff_factor}"));
        }
        if growth_interval == 0 {
            return bad("growth_interval must be at least 1".into());
        }
        Ok(GradScaler { scale: init_scale, growth_factor, backoff_factor, growth_interval, good_steps: 0, skipped: 0 })
    }

    /// The current scale.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Steps skipped so far because their gradients were not finite.
    pub fn skipped_steps(&self) -> usize {
        self.skipped
    }

    /// The loss multiplied by the scale: call `backward` on this.
    pub fn scale_loss(&self, loss: &Tensor) -> Result<Tensor> {
        loss.mul_scalar(self.scale)
    }

    /// Divides every gradient of `params` by the scale, in place of the old one, and says
    /// whether all of them are finite. One value is read back from the device.
    pub fn unscale(&self, params: &[Tensor]) -> Result<bool> {
        let _guard = crate::NoGradGuard::new();
        let mut poison: Option<Tensor> = None;
        for p in params {
            let Some(g) = p.grad() else { continue };
            let unscaled = g.mul_scalar(1.0 / self.scale)?;
            // x · 0 is 0 for a finite x and NaN for an infinite or NaN one.
            let probe = unscaled.mul_scalar(0.0)?.sum_all()?.to_dtype(DType::F32)?;
            poison = Some(match poison {
                Some(sum) => sum.add(&probe)?,
                None => probe,
            });
            p.set_grad(Some(unscaled))?;
        }
        Ok(match poison {
            Some(sum) => sum.to_scalar::<f64>()?.is_finite(),
            None => true,
        })
    }

    /// Moves the scale after a step whose gradients were (`finite`) or were not all finite.
    pub fn update(&mut self, finite: bool) {
        if finite {
            self.good_steps += 1;
            if self.good_steps >= self.growth_interval {
                self.scale = (self.scale * self.growth_factor).min(f32::MAX as f64);
                self.good_steps = 0;
            }
        } else {
            self.scale *= self.backoff_factor;
            self.good_steps = 0;
            self.skipped += 1;
        }
    }

    /// Unscales the optimizer's gradients, steps if they are all finite, and updates the
    /// scale; says whether the step was taken.
    pub fn step(&mut self, optimizer: &mut dyn Optimizer) -> Result<bool> {
        let finite = self.unscale(optimizer.params())?;
        if finite {
            optimizer.step()?;
        }
        self.update(finite);
        Ok(finite)
    }

    /// The state to save with the optimizer's: (key, scalar tensor) pairs.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let scalar = |v: f64| Tensor::from_vec(vec![v], &[], &Device::Cpu);
        [(SCALE_KEY, self.scale), (TRACKER_KEY, self.good_steps as f64)]
            .into_iter()
            .filter_map(|(k, v)| scalar(v).ok().map(|t| (k.to_string(), t)))
            .collect()
    }

    /// Restores the scale and its count of good steps from a saved state (keys absent: kept).
    pub fn set_state(&mut self, saved: &BTreeMap<String, Tensor>) -> Result<()> {
        if let Some(t) = saved.get(SCALE_KEY) {
            let scale = t.to_scalar::<f64>()?;
            if !(scale.is_finite() && scale > 0.0) {
                return Err(Error::invalid("GradScaler", format!("a saved scale must be finite and > 0, got {scale}")));
            }
            self.scale = scale;
        }
        if let Some(t) = saved.get(TRACKER_KEY) {
            let steps = t.to_scalar::<f64>()?;
            if !(steps.is_finite() && steps >= 0.0 && steps < self.growth_interval as f64) {
                return Err(Error::invalid(
                    "GradScaler",
                    format!("a saved count of good steps is out of range: {steps}"),
                ));
            }
            self.good_steps = steps as usize;
        }
        Ok(())
    }
}
