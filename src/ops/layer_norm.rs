//! Layer normalisation over the last dimension, as `torch.nn.functional.layer_norm` with one
//! normalised dimension, with its fused backward (`kernels/layer_norm.cu`).
//!
//! Per row r of `cols` values, x̂ = (x - μ_r) / √(σ²_r + eps) with the row's mean and biased
//! variance, and y = γ x̂ + β (γ and β optional, `[cols]`). The backward, with g = dy γ, is
//! dx = (g - mean(g) - x̂ mean(g x̂)) / √(σ²_r + eps), dγ = Σ_r dy x̂ and dβ = Σ_r dy. The CPU
//! reference computes in f64; the kernels keep the statistics in f32 for f16/bf16 inputs.

use crate::autograd::record;
use crate::cpu::layer_norm as cpu_norm;
use crate::cuda::params::LayerNormParams;
use crate::cuda::{CudaStorage, launch_error};
use crate::storage::CpuStorage;
use crate::{DType, Error, Result, Tensor};
use cudarc::driver::{LaunchConfig, PushKernelArg};

const OP: &str = "layer_norm";
const THREADS: u32 = 128;

pub(crate) fn kernel_names() -> Vec<String> {
    let kinds = ["fwd", "bwd_input", "bwd_params"];
    let floats = DType::ALL.iter().filter(|d| d.is_float());
    floats.flat_map(|d| kinds.map(|k| format!("layer_norm_{k}_{d}"))).collect()
}

impl Tensor {
    /// Layer normalisation over the last dimension: each row of the last axis is shifted to
    /// mean 0 and scaled to variance 1 (biased, plus `eps`), then multiplied by `weight` and
    /// shifted by `bias` (`[cols]` each, both optional), as `torch.nn.functional.layer_norm(x,
    /// (cols,), weight, bias, eps)`. Differentiable in the input, the weight and the bias.
    ///
    /// ```
    /// # use nabla::{Device, Tensor};
    /// let x = Tensor::from_vec(vec![1.0f32, 3.0, 10.0, 20.0], &[2, 2], &Device::Cpu)?;
    /// let y = x.layer_norm(None, None, 0.0)?;
    /// assert_eq!(y.to_vec::<f32>()?, [-1.0, 1.0, -1.0, 1.0]);
    /// # Ok::<(), nabla::Error>(())
    /// ```
    pub fn layer_norm(&self, weight: Option<&Tensor>, bias: Option<&Tensor>, eps: f64) -> Result<Tensor> {
        self.check_float(OP)?;
        let cols = *self.shape().last().ok_or_else(|| Error::shape(OP, "input must have at least one dimension"))?;
        for t in weight.iter().chain(bias.iter()) {
            self.check_same(OP, t)?;
            if t.shape() != [cols] {
                return Err(Error::shape(
                    OP,
                    format!("weight and bias must be [{cols}] for input {:?}, got {:?}", self.shape(), t.shape()),
                ));
            }
        }
        if !(eps >= 0.0 && eps.is_finite()) {
            return Err(Error::invalid(OP, format!("eps must be a non-negative number, got {eps}")));
        }
        let rows = self.numel().checked_div(cols).unwrap_or(0);
        let chunk = param_chunk(rows, cols);
        let p = LayerNormParams { rows: rows as i64, cols: cols as i64, chunk: chunk as i64, eps };
        let x = self.dense()?.detach();
        let (w, b) = (weight.map(Tensor::detach), bias.map(Tensor::detach));
        let (y, mean, rstd) = forward(&x, w.as_ref(), b.as_ref(), p)?;
        let mut inputs = vec![self];
        inputs.extend(weight);
        inputs.extend(bias);
        let (has_weight, has_bias) = (weight.is_some(), bias.is_some());
        Ok(record(y, &inputs, move |g| {
            let g = g.dense()?;
            let dx = grad_input(&g, &x, w.as_ref(), &mean, &rstd, p)?;
            let mut grads = vec![Some(dx)];
            if has_weight || has_bias {
                let (dw, db) = grad_params(&g, &x, &mean, &rstd, p)?;
                if has_weight {
                    grads.push(Some(dw));
                }
                if has_bias {
                    grads.push(Some(db));
                }
            }
            Ok(grads)
        }))
    }
}

/// The CPU reference's view of a tensor.
fn values(t: &Tensor) -> Result<Vec<f64>> {
    super::host_values(OP, t)
}

/// A CPU tensor's elements in logical order as `T` (f64 for f64, f32 for the others).
fn typed<T: crate::Element>(t: &Tensor) -> Result<super::HostSlice<'_, T>> {
    super::host_typed(OP, t)
}

/// A tensor's device buffer.
fn cuda(t: &Tensor) -> Result<&CudaStorage> {
    super::device_buffer(OP, t)
}

/// A block per row, or per four rows of at most 1024 columns; grid-stride past 65,535 blocks.
fn per_row_config(p: LayerNormParams) -> LaunchConfig {
    // Rows of at most 1024 columns take a warp each (ROW_VALUES in the kernel), four a block.
    let rows_per_block = if p.cols <= 1024 { THREADS as i64 / 32 } else { 1 };
    let blocks = (p.rows + rows_per_block - 1) / rows_per_block;
    LaunchConfig { grid_dim: (blocks.clamp(1, 65535) as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
}

/// Rows per block of the parameter gradients' partial sums (`layer_norm_bwd_params`): enough
/// chunks for about 1024 blocks, since a block's threads each add their column over the chunk
/// one row after another (192 blocks of 256 rows, the char-GPT's LayerNorm, ran at 1.25 TB/s on
/// an H200); at least 16 rows, so the [chunks, cols] partials stay small beside the input; and
/// no more than 65,535 chunks, the grid's y limit.
fn param_chunk(rows: usize, cols: usize) -> usize {
    let column_blocks = cols.div_ceil(THREADS as usize).max(1);
    let chunks = 1024usize.div_ceil(column_blocks);
    rows.div_ceil(chunks).max(16).max(rows.div_ceil(65_535))
}

/// y, and the rows' means and reciprocal standard deviations in the accumulate dtype.
fn forward(x: &Tensor, w: Option<&Tensor>, b: Option<&Tensor>, p: LayerNormParams) -> Result<(Tensor, Tensor, Tensor)> {
    let (rows, cols) = (p.rows as usize, p.cols as usize);
    let stats_dtype = x.dtype.accumulator();
    if !x.device().is_cuda() && crate::cpu::fast() {
        let stats = |v: Vec<f64>| Tensor::from_cpu(CpuStorage::F64(v), &[rows]);
        if x.dtype == DType::F64 {
            let (wv, bv) = (w.map(typed::<f64>).transpose()?, b.map(typed::<f64>).transpose()?);
            let (y, m, r) = cpu_norm::forward(&typed::<f64>(x)?, cols, wv.as_deref(), bv.as_deref(), p.eps);
            return Ok((Tensor::from_cpu(CpuStorage::F64(y), x.shape()), stats(m), stats(r)));
        }
        let (wv, bv) = (w.map(typed::<f32>).transpose()?, b.map(typed::<f32>).transpose()?);
        let (y, m, r) = cpu_norm::forward(&typed::<f32>(x)?, cols, wv.as_deref(), bv.as_deref(), p.eps);
        return Ok((Tensor::from_cpu(crate::cpu::narrow_vec(x.dtype, y), x.shape()), stats(m), stats(r)));
    }
    if !x.device().is_cuda() {
        let xv = values(x)?;
        let (wv, bv) = (w.map(values).transpose()?, b.map(values).transpose()?);
        let (mut y, mut mean, mut rstd) = (vec![0.0; xv.len()], vec![0.0; rows], vec![0.0; rows]);
        for r in 0..rows {
            let row = &xv[r * cols..(r + 1) * cols];
            let mu = row.iter().sum::<f64>() / cols as f64;
            let var = row.iter().map(|v| (v - mu).powi(2)).sum::<f64>() / cols as f64;
            let inv = 1.0 / (var + p.eps).sqrt();
            for (j, v) in row.iter().enumerate() {
                let scaled = (v - mu) * inv * wv.as_ref().map_or(1.0, |w| w[j]);
                y[r * cols + j] = scaled + bv.as_ref().map_or(0.0, |b| b[j]);
            }
            (mean[r], rstd[r]) = (mu, inv);
        }
        let make = |v: &[f64]| Tensor::from_cpu(CpuStorage::from_f64(DType::F64, v), &[rows]);
        return Ok((Tensor::from_cpu(CpuStorage::from_f64(x.dtype, &y), x.shape()), make(&mean), make(&rstd)));
    }
    let s = cuda(x)?;
    let y = s.device.alloc(OP, x.dtype, x.numel())?;
    let (mean, rstd) = (s.device.alloc(OP, stats_dtype, rows)?, s.device.alloc(OP, stats_dtype, rows)?);
    if rows > 0 {
        let (w, b) = (w.map(Tensor::dense).transpose()?, b.map(Tensor::dense).transpose()?);
        let null: u64 = 0;
        let kernel = format!("layer_norm_fwd_{}", x.dtype);
        let f = s.device.function(OP, "layer_norm", &kernel)?;
        let mut l = s.device.stream.launch_builder(&f);
        l.arg(&*s.buf);
        match &w {
            Some(w) => l.arg(&*cuda(w)?.buf),
            None => l.arg(&null),
        };
        match &b {
            Some(b) => l.arg(&*cuda(b)?.buf),
            None => l.arg(&null),
        };
        l.arg(&*y.buf).arg(&*mean.buf).arg(&*rstd.buf).arg(&p);
        // SAFETY: layer_norm_fwd_<T>(x, weight | null, bias | null, T* y, A* mean, A* rstd,
        // params) reads `rows` dense rows of `cols` and [cols] weight and bias, and writes every
        // element of y and `rows` statistics.
        unsafe { l.launch(per_row_config(p)) }.map_err(|e| launch_error(OP, &kernel, e))?;
    }
    Ok((Tensor::from_cuda(y, x.shape()), Tensor::from_cuda(mean, &[rows]), Tensor::from_cuda(rstd, &[rows])))
}

/// dx = (g - mean(g) - x̂ mean(g x̂)) · rstd with g = dy γ.
fn grad_input(
    dy: &Tensor,
    x: &Tensor,
    w: Option<&Tensor>,
    mean: &Tensor,
    rstd: &Tensor,
    p: LayerNormParams,
) -> Result<Tensor> {
    let (rows, cols) = (p.rows as usize, p.cols as usize);
    if !x.device().is_cuda() && crate::cpu::fast() {
        let (m, inv) = (values(mean)?, values(rstd)?);
        if x.dtype == DType::F64 {
            let wv = w.map(typed::<f64>).transpose()?;
            let dx = cpu_norm::grad_input(&typed::<f64>(dy)?, &typed::<f64>(x)?, cols, wv.as_deref(), &m, &inv);
            return Ok(Tensor::from_cpu(CpuStorage::F64(dx), x.shape()));
        }
        let wv = w.map(typed::<f32>).transpose()?;
        let dx = cpu_norm::grad_input(&typed::<f32>(dy)?, &typed::<f32>(x)?, cols, wv.as_deref(), &m, &inv);
        return Ok(Tensor::from_cpu(crate::cpu::narrow_vec(x.dtype, dx), x.shape()));
    }
    if !x.device().is_cuda() {
        let (g, xv, m, inv) = (values(dy)?, values(x)?, values(mean)?, values(rstd)?);
        let wv = w.map(values).transpose()?;
        let mut dx = vec![0.0; xv.len()];
        for r in 0..rows {
            let at = |j: usize| r * cols + j;
            let gw = |j: usize| g[at(j)] * wv.as_ref().map_or(1.0, |w| w[j]);
            let xhat = |j: usize| (xv[at(j)] - m[r]) * inv[r];
            let mean_g = (0..cols).map(gw).sum::<f64>() / cols as f64;
            let mean_gx = (0..cols).map(|j| gw(j) * xhat(j)).sum::<f64>() / cols as f64;
            for j in 0..cols {
                dx[at(j)] = inv[r] * (gw(j) - mean_g - xhat(j) * mean_gx);
            }
        }
        return Ok(Tensor::from_cpu(CpuStorage::from_f64(x.dtype, &dx), x.shape()));
    }
    let s = cuda(x)?;
    let dx = s.device.alloc(OP, x.dtype, x.numel())?;
    if rows > 0 {
        let w = w.map(Tensor::dense).transpose()?;
        let null: u64 = 0;
        let kernel = format!("layer_norm_bwd_input_{}", x.dtype);
        let f = s.device.function(OP, "layer_norm", &kernel)?;
        let mut l = s.device.stream.launch_builder(&f);
        l.arg(&*cuda(dy)?.buf).arg(&*s.buf);
        match &w {
            Some(w) => l.arg(&*cuda(w)?.buf),
            None => l.arg(&null),
        };
        l.arg(&*cuda(mean)?.buf).arg(&*cuda(rstd)?.buf).arg(&*dx.buf).arg(&p);
        // SAFETY: layer_norm_bwd_input_<T>(dy, x, weight | null, mean, rstd, T* dx, params) reads
        // dense [rows, cols] tensors, [cols] weight and [rows] statistics, and writes all of dx.
        unsafe { l.launch(per_row_config(p)) }.map_err(|e| launch_error(OP, &kernel, e))?;
    }
    Ok(Tensor::from_cuda(dx, x.shape()))
}

/// (dγ, dβ) = (Σ_r dy x̂, Σ_r dy), `[cols]` in the input's dtype.
fn grad_params(dy: &Tensor, x: &Tensor, mean: &Tensor, rstd: &Tensor, p: LayerNormParams) -> Result<(Tensor, Tensor)> {
    let (rows, cols) = (p.rows as usize, p.cols as usize);
    if !x.device().is_cuda() && crate::cpu::fast() {
        let (m, inv) = (values(mean)?, values(rstd)?);
        let (dw, db) = if x.dtype == DType::F64 {
            cpu_norm::grad_params(&typed::<f64>(dy)?, &typed::<f64>(x)?, cols, &m, &inv)
        } else {
            cpu_norm::grad_params(&typed::<f32>(dy)?, &typed::<f32>(x)?, cols, &m, &inv)
        };
        let make = |v: &[f64]| Tensor::from_cpu(CpuStorage::from_f64(x.dtype, v), &[cols]);
        return Ok((make(&dw), make(&db)));
    }
    if !x.device().is_cuda() {
        let (g, xv, m, inv) = (values(dy)?, values(x)?, values(mean)?, values(rstd)?);
        let (mut dw, mut db) = (vec![0.0; cols], vec![0.0; cols]);
        for r in 0..rows {
            for j in 0..cols {
                let at = r * cols + j;
                dw[j] += g[at] * (xv[at] - m[r]) * inv[r];
                db[j] += g[at];
            }
        }
        let make = |v: &[f64]| Tensor::from_cpu(CpuStorage::from_f64(x.dtype, v), &[cols]);
        return Ok((make(&dw), make(&db)));
    }
    let s = cuda(x)?;
    let acc = x.dtype.accumulator();
    let chunks = rows.div_ceil(p.chunk as usize).max(1);
    let (dw, db) = (s.device.alloc_zeros(OP, acc, chunks * cols)?, s.device.alloc_zeros(OP, acc, chunks * cols)?);
    if rows > 0 && cols > 0 {
        let kernel = format!("layer_norm_bwd_params_{}", x.dtype);
        let f = s.device.function(OP, "layer_norm", &kernel)?;
        let mut l = s.device.stream.launch_builder(&f);
        l.arg(&*cuda(dy)?.buf).arg(&*s.buf).arg(&*cuda(mean)?.buf).arg(&*cuda(rstd)?.buf);
        l.arg(&*dw.buf).arg(&*db.buf).arg(&p);
        let config = LaunchConfig {
            grid_dim: ((cols as u32).div_ceil(THREADS), chunks as u32, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: layer_norm_bwd_params_<T>(dy, x, mean, rstd, A* dweight, A* dbias, params)
        // reads dense [rows, cols] tensors and [rows] statistics, and block (i, c) writes
        // columns of partial row c of the [chunks, cols] outputs.
        unsafe { l.launch(config) }.map_err(|e| launch_error(OP, &kernel, e))?;
    }
    let total = |t: CudaStorage| -> Result<Tensor> {
        Tensor::from_cuda(t, &[chunks, cols]).sum(&[0], false)?.to_dtype(x.dtype)
    };
    Ok((total(dw)?, total(db)?))
}
