//! Weight initialisers. Each draws from the seeded [`Generator`], so a seed gives the same
//! weights on every device.

use crate::{DType, Device, Generator, Result, Tensor};

/// Glorot/Xavier uniform: U(-a, a) with a = gain √(6 / (fan_in + fan_out)).
pub fn xavier_uniform(
    shape: &[usize],
    fan_in: usize,
    fan_out: usize,
    gain: f64,
    dtype: DType,
    device: &Device,
    rng: &mut Generator,
) -> Result<Tensor> {
    let a = gain * (6.0 / (fan_in + fan_out) as f64).sqrt();
    Tensor::uniform(shape, -a, a, dtype, device, rng)
}

/// Glorot/Xavier normal: N(0, gain² · 2 / (fan_in + fan_out)).
pub fn xavier_normal(
    shape: &[usize],
    fan_in: usize,
    fan_out: usize,
    gain: f64,
    dtype: DType,
    device: &Device,
    rng: &mut Generator,
) -> Result<Tensor> {
    let std = gain * (2.0 / (fan_in + fan_out) as f64).sqrt();
    Tensor::randn(shape, dtype, device, rng)?.mul_scalar(std)
}

/// Kaiming/He uniform for ReLU nets: U(-b, b) with b = √(6 / fan_in).
pub fn kaiming_uniform(
    shape: &[usize],
    fan_in: usize,
    dtype: DType,
    device: &Device,
    rng: &mut Generator,
) -> Result<Tensor> {
    let b = (6.0 / fan_in.max(1) as f64).sqrt();
    Tensor::uniform(shape, -b, b, dtype, device, rng)
}

/// Kaiming/He normal for ReLU nets: N(0, 2 / fan_in).
pub fn kaiming_normal(
    shape: &[usize],
    fan_in: usize,
    dtype: DType,
    device: &Device,
    rng: &mut Generator,
) -> Result<Tensor> {
    Tensor::randn(shape, dtype, device, rng)?.mul_scalar((2.0 / fan_in.max(1) as f64).sqrt())
}

/// PyTorch's default for `nn.Linear`: U(-1/√fan_in, 1/√fan_in) for weight and bias.
pub fn linear_default(
    shape: &[usize],
    fan_in: usize,
    dtype: DType,
    device: &Device,
    rng: &mut Generator,
) -> Result<Tensor> {
    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
    Tensor::uniform(shape, -bound, bound, dtype, device, rng)
}
