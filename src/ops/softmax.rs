//! Numerically stable softmax and log-softmax along one axis (`kernels/softmax.cu`).

use crate::autograd::record;
use crate::cuda::launch_error;
use crate::layout::normalize_axis;
use crate::storage::{CpuStorage, StorageRef};
use crate::{DType, Result, Tensor};
use cudarc::driver::{LaunchConfig, PushKernelArg};

const THREADS: u32 = 256;

pub(crate) fn kernel_names() -> Vec<String> {
    DType::ALL
        .iter()
        .filter(|d| d.is_float())
        .flat_map(|d| [format!("softmax_{d}"), format!("log_softmax_{d}")])
        .collect()
}

/// CPU reference for one row, in f64: subtract the max, exponentiate, normalise.
pub fn softmax_row(row: &mut [f64], log: bool) {
    let max = row.iter().copied().fold(f64::NEG_INFINITY, |a, b| if a.is_nan() || a > b { a } else { b });
    let sum: f64 = row.iter().map(|&x| (x - max).exp()).sum();
    for x in row.iter_mut() {
        *x = if log { *x - max - sum.ln() } else { (*x - max).exp() / sum };
    }
}

impl Tensor {
    /// exp(x - max) / Σ exp(x - max) along `axis`.
    pub fn softmax(&self, axis: isize) -> Result<Tensor> {
        let out = self.softmax_impl("softmax", axis, false)?;
        let y = out.detach();
        // dx = y (g - Σ g y)
        Ok(record(out, &[self], move |g| Ok(vec![Some(y.mul(&g.sub(&g.mul(&y)?.sum(&[axis], true)?)?)?)])))
    }

    /// x - max - log Σ exp(x - max) along `axis`.
    pub fn log_softmax(&self, axis: isize) -> Result<Tensor> {
        let out = self.softmax_impl("log_softmax", axis, true)?;
        let y = out.detach();
        // dx = g - softmax(x) Σ g
        Ok(record(out, &[self], move |g| Ok(vec![Some(g.sub(&y.exp()?.mul(&g.sum(&[axis], true)?)?)?)])))
    }

    fn softmax_impl(&self, name: &'static str, axis: isize, log: bool) -> Result<Tensor> {
        self.check_float(name)?;
        let a = normalize_axis(name, axis, self.shape())?;
        let last = self.rank() - 1;
        if a != last {
            // Rows must be the last axis: move it there, and the result back.
            let moved = self.transpose(a as isize, last as isize)?;
            return moved.softmax_impl(name, -1, log)?.transpose(a as isize, last as isize)?.contiguous();
        }
        let cols = self.shape()[last];
        let rows = self.numel().checked_div(cols).unwrap_or(0);
        match self.storage() {
            StorageRef::Cpu(s) => {
                if crate::cpu::fast() {
                    let dense = self.dense()?;
                    let StorageRef::Cpu(d) = dense.storage() else { unreachable!("dense keeps the device") };
                    let (o, n) = (dense.layout.offset(), dense.numel());
                    let out = crate::cpu::with_float_vec!(&*d, v => CpuStorage::from_vec(crate::cpu::softmax::softmax(&v[o..o + n], cols, log)));
                    if let Some(out) = out {
                        return Ok(Tensor::from_cpu(out, self.shape()));
                    }
                }
                let mut values = s.gather_f64(&self.layout);
                if cols > 0 {
                    values.chunks_mut(cols).for_each(|row| softmax_row(row, log));
                }
                Ok(Tensor::from_cpu(CpuStorage::from_f64(self.dtype, &values), self.shape()))
            }
            StorageRef::Cuda(_) => {
                let dense = self.dense()?;
                let StorageRef::Cuda(s) = dense.storage() else { unreachable!("dense keeps the device") };
                let dev = s.device.clone();
                let mut out = dev.alloc(name, self.dtype, self.numel())?;
                if rows > 0 {
                    let kernel = format!("{name}_{}", self.dtype);
                    let f = dev.function(name, "softmax", &kernel)?;
                    let cfg = LaunchConfig {
                        grid_dim: (rows.min(65535) as u32, 1, 1),
                        block_dim: (THREADS, 1, 1),
                        shared_mem_bytes: 0,
                    };
                    let (rows_arg, cols_arg) = (rows as i64, cols as i64);
                    let mut launch = dev.stream.launch_builder(&f);
                    launch.arg(&*s.buf).arg(&mut *out.buf).arg(&rows_arg).arg(&cols_arg);
                    // SAFETY: softmax_<T>(const T* x, T* y, i64 rows, i64 cols) reads and writes
                    // rows * cols contiguous elements; both buffers hold that many.
                    unsafe { launch.launch(cfg) }.map_err(|e| launch_error(name, &kernel, e))?;
                }
                Ok(Tensor::from_cuda(out, self.shape()))
            }
        }
    }
}
