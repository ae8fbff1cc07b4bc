//! Batch normalisation of NCHW input over its channels, in training (batch statistics) and
//! evaluation (given statistics), each with its fused backward (`kernels/batch_norm.cu`).
//!
//! With M = N·H·W values per channel and x̂ = (x - μ) / √(σ² + eps), the forward is
//! y = γ x̂ + β; the backward needs the per-channel sums Σ dy (= dβ) and Σ dy x̂ (= dγ), and then
//! dx = γ / √(σ² + eps) · (dy - Σ dy / M - x̂ Σ dy x̂ / M) with batch statistics, or
//! γ / √(σ² + eps) · dy with fixed ones. The CPU reference computes in f64.

use crate::autograd::record;
use crate::cuda::params::BatchNormParams;
use crate::cuda::{CudaStorage, elementwise_config, launch_error};
use crate::storage::CpuStorage;
use crate::{DType, Error, Result, Tensor};
use cudarc::driver::{LaunchConfig, PushKernelArg};

const OP: &str = "batch_norm2d";

pub(crate) fn kernel_names() -> Vec<String> {
    let kinds = ["stats", "apply", "bwd_reduce", "bwd_input"];
    let floats = DType::ALL.iter().filter(|d| d.is_float());
    floats.flat_map(|d| kinds.map(|k| format!("batch_norm_{k}_{d}"))).collect()
}

impl Tensor {
    /// Batch normalisation with this batch's statistics, as `torch.nn.functional.batch_norm`
    /// with `training=True`: per channel c of `[N, C, H, W]` input, y = γ_c (x - μ_c) /
    /// √(σ²_c + eps) + β_c with the channel's mean μ_c and biased variance σ²_c. Returns y
    /// (differentiable with respect to the input, γ and β, through one fused backward) and the
    /// statistics `[C]` (not differentiable), for running averages.
    ///
    /// ```
    /// # use nabla::{DType, Device, Tensor};
    /// let x = Tensor::from_vec(vec![1.0f32, 3.0, 2.0, 6.0], &[2, 1, 1, 2], &Device::Cpu)?;
    /// let (one, zero) = (Tensor::ones(&[1], DType::F32, &Device::Cpu)?, Tensor::zeros(&[1], DType::F32, &Device::Cpu)?);
    /// let (y, mean, var) = x.batch_norm2d_train(&one, &zero, 0.0)?;
    /// assert_eq!(mean.to_vec::<f32>()?, [3.0]);
    /// assert_eq!(var.to_vec::<f32>()?, [3.5]);
    /// assert!((y.sum_all()?.to_scalar::<f64>()?).abs() < 1e-6);
    /// # Ok::<(), nabla::Error>(())
    /// ```
    pub fn batch_norm2d_train(&self, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<(Tensor, Tensor, Tensor)> {
        let p = self.batch_norm_params(&[weight, bias], eps)?;
        if p.n * p.hw < 2 {
            return Err(Error::invalid(
                OP,
                format!("training needs more than one value per channel, got input {:?}", self.shape()),
            ));
        }
        let (x, w, b) = (self.dense()?.detach(), weight.detach(), bias.detach());
        let (mean, var) = stats(&x, p)?;
        let y = apply(&x, &mean, &var, &w, &b, p)?;
        let (m, v) = (mean.clone(), var.clone());
        let y = record(y, &[self, weight, bias], move |g| {
            let g = g.dense()?;
            let (sum_dy, sum_dy_xhat) = grad_sums(&g, &x, &m, &v, p)?;
            let dx = grad_input(&g, &x, &m, &v, &w, Some((&sum_dy, &sum_dy_xhat)), p)?;
            Ok(vec![Some(dx), Some(sum_dy_xhat), Some(sum_dy)])
        });
        Ok((y, mean, var))
    }

    /// Batch normalisation with fixed statistics `mean` and `var` (`[C]`, the running averages),
    /// as `torch.nn.functional.batch_norm` with `training=False`: y = γ (x - mean) /
    /// √(var + eps) + β, differentiable with respect to the input, γ and β.
    pub fn batch_norm2d_eval(
        &self,
        mean: &Tensor,
        var: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        eps: f64,
    ) -> Result<Tensor> {
        let p = self.batch_norm_params(&[mean, var, weight, bias], eps)?;
        let (x, w) = (self.dense()?.detach(), weight.detach());
        let (m, v) = (mean.dense()?.detach(), var.dense()?.detach());
        let y = apply(&x, &m, &v, &w, &bias.detach(), p)?;
        Ok(record(y, &[self, weight, bias], move |g| {
            let g = g.dense()?;
            let (sum_dy, sum_dy_xhat) = grad_sums(&g, &x, &m, &v, p)?;
            let dx = grad_input(&g, &x, &m, &v, &w, None, p)?;
            Ok(vec![Some(dx), Some(sum_dy_xhat), Some(sum_dy)])
        }))
    }

    /// Checks an `[N, C, H, W]` float input against `[C]` per-channel tensors of its dtype and
    /// device, and a non-negative eps.
    fn batch_norm_params(&self, per_channel: &[&Tensor], eps: f64) -> Result<BatchNormParams> {
        self.check_float(OP)?;
        let &[n, c, h, w] = self.shape() else {
            return Err(Error::shape(OP, format!("input must be [N, C, H, W], got {:?}", self.shape())));
        };
        for t in per_channel {
            self.check_same(OP, t)?;
            if t.shape() != [c] {
                return Err(Error::shape(
                    OP,
                    format!("per-channel tensors must be [{c}] for input {:?}, got {:?}", self.shape(), t.shape()),
                ));
            }
        }
        if !(eps >= 0.0 && eps.is_finite()) {
            return Err(Error::invalid(OP, format!("eps must be a non-negative number, got {eps}")));
        }
        let i = |v: usize| v as i64;
        Ok(BatchNormParams { n: i(n), c: i(c), hw: i(h * w), eps })
    }
}

/// (N, C, HW) as usize.
fn dims(p: BatchNormParams) -> (usize, usize, usize) {
    (p.n as usize, p.c as usize, p.hw as usize)
}

/// Calls `f(c, i)` for every element i of channel c, channel by channel.
fn per_channel(p: BatchNormParams, mut f: impl FnMut(usize, usize)) {
    let (n, c, hw) = dims(p);
    for ch in 0..c {
        for image in 0..n {
            let plane = (image * c + ch) * hw;
            (plane..plane + hw).for_each(|i| f(ch, i));
        }
    }
}

/// The CPU reference's view of a tensor.
fn values(t: &Tensor) -> Result<Vec<f64>> {
    super::host_values(OP, t)
}

/// A tensor's device buffer.
fn cuda(t: &Tensor) -> Result<&CudaStorage> {
    super::device_buffer(OP, t)
}

/// One block per channel (grid-stride over channels past the grid limit).
fn per_channel_config(p: BatchNormParams) -> LaunchConfig {
    LaunchConfig { grid_dim: ((p.c as u32).clamp(1, 65535), 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

/// Per-channel mean and biased variance, `[C]`, computed in two passes.
fn stats(x: &Tensor, p: BatchNormParams) -> Result<(Tensor, Tensor)> {
    let (n, c, hw) = dims(p);
    let count = (n * hw) as f64;
    if !x.device().is_cuda() {
        let xv = values(x)?;
        let mut mean = vec![0.0; c];
        per_channel(p, |ch, i| mean[ch] += xv[i]);
        mean.iter_mut().for_each(|m| *m /= count);
        let mut var = vec![0.0; c];
        per_channel(p, |ch, i| var[ch] += (xv[i] - mean[ch]).powi(2));
        var.iter_mut().for_each(|v| *v /= count);
        let make = |v: &[f64]| Tensor::from_cpu(CpuStorage::from_f64(x.dtype, v), &[c]);
        return Ok((make(&mean), make(&var)));
    }
    let s = cuda(x)?;
    let (mean, var) = (s.device.alloc(OP, x.dtype, c)?, s.device.alloc(OP, x.dtype, c)?);
    let kernel = format!("batch_norm_stats_{}", x.dtype);
    let f = s.device.function(OP, "batch_norm", &kernel)?;
    let mut l = s.device.stream.launch_builder(&f);
    l.arg(&*s.buf).arg(&*mean.buf).arg(&*var.buf).arg(&p);
    // SAFETY: batch_norm_stats_<T>(const T* x, T* mean, T* var, BatchNormParams) reads the dense
    // [n, c, hw] input and writes c means and variances.
    unsafe { l.launch(per_channel_config(p)) }.map_err(|e| launch_error(OP, &kernel, e))?;
    Ok((Tensor::from_cuda(mean, &[c]), Tensor::from_cuda(var, &[c])))
}

/// y = γ (x - mean) / √(var + eps) + β.
fn apply(x: &Tensor, mean: &Tensor, var: &Tensor, w: &Tensor, b: &Tensor, p: BatchNormParams) -> Result<Tensor> {
    let shape = x.shape().to_vec();
    if !x.device().is_cuda() {
        let (xv, m, v, wv, bv) = (values(x)?, values(mean)?, values(var)?, values(w)?, values(b)?);
        let mut y = vec![0.0; xv.len()];
        per_channel(p, |c, i| y[i] = (xv[i] - m[c]) / (v[c] + p.eps).sqrt() * wv[c] + bv[c]);
        return Ok(Tensor::from_cpu(CpuStorage::from_f64(x.dtype, &y), &shape));
    }
    let (w, b) = (w.dense()?, b.dense()?);
    let s = cuda(x)?;
    let y = s.device.alloc(OP, x.dtype, x.numel())?;
    if x.numel() > 0 {
        let kernel = format!("batch_norm_apply_{}", x.dtype);
        let f = s.device.function(OP, "batch_norm", &kernel)?;
        let mut l = s.device.stream.launch_builder(&f);
        l.arg(&*s.buf).arg(&*cuda(mean)?.buf).arg(&*cuda(var)?.buf).arg(&*cuda(&w)?.buf).arg(&*cuda(&b)?.buf);
        l.arg(&*y.buf).arg(&p);
        // SAFETY: batch_norm_apply_<T>(x, mean, var, weight, bias, T* y, BatchNormParams) reads
        // the dense input and four dense [c] tensors, and writes every element of y.
        unsafe { l.launch(elementwise_config(x.numel())) }.map_err(|e| launch_error(OP, &kernel, e))?;
    }
    Ok(Tensor::from_cuda(y, &shape))
}

/// Σ dy and Σ dy x̂ per channel: the gradients of β and γ.
fn grad_sums(dy: &Tensor, x: &Tensor, mean: &Tensor, var: &Tensor, p: BatchNormParams) -> Result<(Tensor, Tensor)> {
    let c = p.c as usize;
    if !x.device().is_cuda() {
        let (g, xv, m, v) = (values(dy)?, values(x)?, values(mean)?, values(var)?);
        let (mut sum, mut sum_xhat) = (vec![0.0; c], vec![0.0; c]);
        per_channel(p, |ch, i| {
            sum[ch] += g[i];
            sum_xhat[ch] += g[i] * (xv[i] - m[ch]) / (v[ch] + p.eps).sqrt();
        });
        let make = |v: &[f64]| Tensor::from_cpu(CpuStorage::from_f64(x.dtype, v), &[c]);
        return Ok((make(&sum), make(&sum_xhat)));
    }
    let s = cuda(x)?;
    let (sum, sum_xhat) = (s.device.alloc(OP, x.dtype, c)?, s.device.alloc(OP, x.dtype, c)?);
    let kernel = format!("batch_norm_bwd_reduce_{}", x.dtype);
    let f = s.device.function(OP, "batch_norm", &kernel)?;
    let mut l = s.device.stream.launch_builder(&f);
    l.arg(&*cuda(dy)?.buf).arg(&*s.buf).arg(&*cuda(mean)?.buf).arg(&*cuda(var)?.buf);
    l.arg(&*sum.buf).arg(&*sum_xhat.buf).arg(&p);
    // SAFETY: batch_norm_bwd_reduce_<T>(dy, x, mean, var, T* sum_dy, T* sum_dy_xhat, params)
    // reads dense [n, c, hw] gradients and inputs and [c] statistics, and writes 2 x c sums.
    unsafe { l.launch(per_channel_config(p)) }.map_err(|e| launch_error(OP, &kernel, e))?;
    Ok((Tensor::from_cuda(sum, &[c]), Tensor::from_cuda(sum_xhat, &[c])))
}

/// dx, with the batch-statistics terms when `sums` (Σ dy, Σ dy x̂) are given.
fn grad_input(
    dy: &Tensor,
    x: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    w: &Tensor,
    sums: Option<(&Tensor, &Tensor)>,
    p: BatchNormParams,
) -> Result<Tensor> {
    let shape = x.shape().to_vec();
    let count = (p.n * p.hw) as f64;
    if !x.device().is_cuda() {
        let (g, xv, m, v, wv) = (values(dy)?, values(x)?, values(mean)?, values(var)?, values(w)?);
        let sums = sums.map(|(s, sx)| Ok::<_, Error>((values(s)?, values(sx)?))).transpose()?;
        let mut dx = vec![0.0; xv.len()];
        per_channel(p, |c, i| {
            let inv_std = 1.0 / (v[c] + p.eps).sqrt();
            let centred = match &sums {
                Some((s, sx)) => g[i] - s[c] / count - (xv[i] - m[c]) * inv_std * sx[c] / count,
                None => g[i],
            };
            dx[i] = wv[c] * inv_std * centred;
        });
        return Ok(Tensor::from_cpu(CpuStorage::from_f64(x.dtype, &dx), &shape));
    }
    let w = w.dense()?;
    let s = cuda(x)?;
    let dx = s.device.alloc(OP, x.dtype, x.numel())?;
    if x.numel() > 0 {
        let null: u64 = 0;
        let kernel = format!("batch_norm_bwd_input_{}", x.dtype);
        let f = s.device.function(OP, "batch_norm", &kernel)?;
        let mut l = s.device.stream.launch_builder(&f);
        l.arg(&*cuda(dy)?.buf).arg(&*s.buf).arg(&*cuda(mean)?.buf).arg(&*cuda(var)?.buf).arg(&*cuda(&w)?.buf);
        match sums {
            Some((sum, sum_xhat)) => l.arg(&*cuda(sum)?.buf).arg(&*cuda(sum_xhat)?.buf),
            None => l.arg(&null).arg(&null),
        };
        l.arg(&*dx.buf).arg(&p);
        // SAFETY: batch_norm_bwd_input_<T>(dy, x, mean, var, weight, sum_dy | null,
        // sum_dy_xhat | null, T* dx, params) reads dense tensors of the sizes the params give
        // and writes every element of dx.
        unsafe { l.launch(elementwise_config(x.numel())) }.map_err(|e| launch_error(OP, &kernel, e))?;
    }
    Ok(Tensor::from_cuda(dx, &shape))
}
