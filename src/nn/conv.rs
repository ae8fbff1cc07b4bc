//! Convolutional layers: Conv2d, pooling, Flatten and BatchNorm2d, as in `torch.nn`.

use super::{Module, init};
use crate::{Conv2dOptions, DType, Device, Error, Generator, Pool2dOptions, Result, Tensor};
use std::sync::Mutex;

/// A learned 2-D filter bank: weight `[out, in / groups, kh, kw]`, bias `[out]`.
pub struct Conv2d {
    /// The filters.
    pub weight: Tensor,
    /// One bias per output channel.
    pub bias: Option<Tensor>,
    /// Stride, padding, dilation, groups.
    pub options: Conv2dOptions,
}

impl Conv2d {
    /// A layer with Kaiming-normal filters (for ReLU nets) and PyTorch's default bias range.
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        options: Conv2dOptions,
        device: &Device,
        rng: &mut Generator,
    ) -> Result<Self> {
        let groups = options.groups.max(1);
        if !in_channels.is_multiple_of(groups) || !out_channels.is_multiple_of(groups) {
            return Err(Error::invalid(
                "conv2d",
                format!("{in_channels} -> {out_channels} channels do not split into {groups} groups"),
            ));
        }
        let fan_in = in_channels / groups * kernel * kernel;
        let shape = [out_channels, in_channels / groups, kernel, kernel];
        let weight = init::kaiming_normal(&shape, fan_in, DType::F32, device, rng)?.requires_grad_()?;
        let bias = init::linear_default(&[out_channels], fan_in, DType::F32, device, rng)?.requires_grad_()?;
        Ok(Conv2d { weight, bias: Some(bias), options })
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.conv2d(&self.weight, self.bias.as_ref(), self.options)
    }

    /// One convolution with the ReLU applied as it writes ([`Tensor::conv2d_relu`]).
    fn forward_relu(&self, x: &Tensor) -> Result<Tensor> {
        x.conv2d_relu(&self.weight, self.bias.as_ref(), self.options)
    }

    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("weight".to_string(), self.weight.clone())];
        out.extend(self.bias.iter().map(|b| ("bias".to_string(), b.clone())));
        out
    }
}

/// Max pooling as a module.
pub struct MaxPool2d(pub Pool2dOptions);

impl Module for MaxPool2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.max_pool2d(self.0)
    }
}

/// Average pooling as a module.
pub struct AvgPool2d(pub Pool2dOptions);

impl Module for AvgPool2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.avg_pool2d(self.0)
    }
}

/// Adaptive average pooling to a fixed `(h, w)` as a module.
pub struct AdaptiveAvgPool2d(pub (usize, usize));

impl Module for AdaptiveAvgPool2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.adaptive_avg_pool2d(self.0)
    }
}

/// Flattens every dim after the batch dim.
pub struct Flatten;

impl Module for Flatten {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.flatten(1, -1)
    }
}

/// The per-channel mean and biased variance of NCHW input, shaped `[1, C, 1, 1]`, composed of
/// tensor ops: with [`batch_norm2d`], the definition the fused
/// [`Tensor::batch_norm2d_train`] is tested against.
pub fn batch_stats(x: &Tensor) -> Result<(Tensor, Tensor)> {
    let mean = x.mean(&[0, 2, 3], true)?;
    let centered = x.sub(&mean)?;
    let var = centered.mul(&centered)?.mean(&[0, 2, 3], true)?;
    Ok((mean, var))
}

/// (x - mean) / √(var + eps) · γ + β per channel of NCHW input, with `[1, C, 1, 1]` statistics
/// and `[C]` γ, β: the arithmetic of batch normalisation composed of tensor ops, differentiable
/// through every input (the models use the fused [`Tensor::batch_norm2d_train`] and
/// [`Tensor::batch_norm2d_eval`]).
pub fn batch_norm2d(
    x: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let c = weight.numel();
    if x.rank() != 4 || x.shape()[1] != c || bias.numel() != c {
        return Err(Error::shape(
            "batch_norm2d",
            format!("input {:?} with {c} scales and {} shifts", x.shape(), bias.numel()),
        ));
    }
    let per_channel = |t: &Tensor| t.reshape(&[1, c, 1, 1]);
    x.sub(mean)?.div(&var.add_scalar(eps)?.sqrt()?)?.mul(&per_channel(weight)?)?.add(&per_channel(bias)?)
}

/// The name of PyTorch's batch-norm step counter, which nabla writes and never reads.
pub const NUM_BATCHES_TRACKED: &str = "num_batches_tracked";

/// Batch normalisation over the channels of NCHW input, as `torch.nn.BatchNorm2d`: in
/// training, normalise with the batch's per-channel mean and (biased) variance and fold them
/// into running averages (the variance unbiased); in evaluation, use the running averages.
/// Runs on the fused batch-norm kernels (statistics, normalisation and one backward).
pub struct BatchNorm2d {
    /// Per-channel scale γ.
    pub weight: Tensor,
    /// Per-channel shift β.
    pub bias: Tensor,
    running: Mutex<(Tensor, Tensor)>,
    /// Training forward passes so far, saved as PyTorch's `num_batches_tracked`.
    batches_tracked: std::sync::atomic::AtomicI64,
    momentum: f64,
    eps: f64,
    training: bool,
}

/// Batch norm's two settings, as `torch.nn.BatchNorm2d` takes them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNormOptions {
    /// Weight of the newest batch in the running averages, in (0, 1] (PyTorch's 0.1).
    pub momentum: f64,
    /// Added to the variance before the square root, > 0 (PyTorch's 1e-5).
    pub eps: f64,
}

impl Default for BatchNormOptions {
    fn default() -> Self {
        BatchNormOptions { momentum: 0.1, eps: 1e-5 }
    }
}

impl BatchNormOptions {
    /// Checks both settings: momentum in (0, 1], eps finite and > 0.
    pub fn validate(self) -> Result<Self> {
        if !(self.momentum > 0.0 && self.momentum <= 1.0) {
            return Err(Error::invalid("batch_norm2d", format!("momentum must be in (0, 1], got {}", self.momentum)));
        }
        if !(self.eps > 0.0 && self.eps.is_finite()) {
            return Err(Error::invalid("batch_norm2d", format!("eps must be finite and > 0, got {}", self.eps)));
        }
        Ok(self)
    }
}

impl BatchNorm2d {
    /// A layer over `channels` with γ = 1, β = 0, momentum 0.1 and eps 1e-5.
    pub fn new(channels: usize, device: &Device) -> Result<Self> {
        Self::with_options(channels, BatchNormOptions::default(), device)
    }

    /// A layer over `channels` with γ = 1, β = 0 and the given momentum and eps.
    pub fn with_options(channels: usize, options: BatchNormOptions, device: &Device) -> Result<Self> {
        let BatchNormOptions { momentum, eps } = options.validate()?;
        Ok(BatchNorm2d {
            weight: Tensor::ones(&[channels], DType::F32, device)?.requires_grad_()?,
            bias: Tensor::zeros(&[channels], DType::F32, device)?.requires_grad_()?,
            running: Mutex::new((
                Tensor::zeros(&[channels], DType::F32, device)?,
                Tensor::ones(&[channels], DType::F32, device)?,
            )),
            batches_tracked: std::sync::atomic::AtomicI64::new(0),
            momentum,
            eps,
            training: true,
        })
    }

    /// The running mean and variance.
    pub fn running_stats(&self) -> (Tensor, Tensor) {
        self.running.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Module for BatchNorm2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let c = self.weight.numel();
        if x.rank() != 4 || x.shape()[1] != c {
            return Err(Error::shape("batch_norm2d", format!("input {:?} is not [N, {c}, H, W]", x.shape())));
        }
        if !self.training {
            let (rm, rv) = self.running_stats();
            return x.batch_norm2d_eval(&rm, &rv, &self.weight, &self.bias, self.eps);
        }
        let (y, mean, var) = x.batch_norm2d_train(&self.weight, &self.bias, self.eps)?;
        let count = (x.numel() / c) as f64;
        self.batches_tracked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        crate::no_grad(|| -> Result<()> {
            let (rm, rv) = &*self.running.lock().unwrap_or_else(|e| e.into_inner());
            let m = self.momentum;
            let unbiased = var.mul_scalar(count / (count - 1.0).max(1.0))?;
            rm.copy_(&rm.mul_scalar(1.0 - m)?.add(&mean.mul_scalar(m)?)?)?;
            rv.copy_(&rv.mul_scalar(1.0 - m)?.add(&unbiased.mul_scalar(m)?)?)
        })?;
        Ok(y)
    }

    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        vec![("weight".to_string(), self.weight.clone()), ("bias".to_string(), self.bias.clone())]
    }

    fn named_buffers(&self) -> Vec<(String, Tensor)> {
        let (rm, rv) = self.running_stats();
        let tracked = self.batches_tracked.load(std::sync::atomic::Ordering::Relaxed);
        let mut buffers = vec![("running_mean".to_string(), rm), ("running_var".to_string(), rv)];
        // Written for PyTorch's sake; loading ignores it (see `io::load_into_module`).
        if let Ok(count) = Tensor::from_vec(vec![tracked], &[], &Device::Cpu) {
            buffers.push((NUM_BATCHES_TRACKED.to_string(), count));
        }
        buffers
    }

    fn set_training(&mut self, training: bool) {
        self.training = training;
    }
}
