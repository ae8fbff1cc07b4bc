//! Constant fills and ranges on the device (`kernels/fill.cu`). The CPU side lives with the
//! constructors in `tensor/create.rs`.

use crate::cuda::{CudaDevice, CudaStorage, elementwise_config, launch_error};
use crate::{DType, Result};
use cudarc::driver::PushKernelArg;
use std::sync::Arc;

pub(crate) fn kernel_names() -> Vec<String> {
    DType::ALL.iter().flat_map(|d| [format!("fill_{d}"), format!("arange_{d}"), format!("dropout_mask_{d}")]).collect()
}

/// A new buffer of `n` elements of `dtype`, all `value`.
pub(crate) fn cuda_fill(dev: &Arc<CudaDevice>, dtype: DType, n: usize, value: f64) -> Result<CudaStorage> {
    let mut out = dev.alloc("full", dtype, n)?;
    if n == 0 {
        return Ok(out);
    }
    let kernel = format!("fill_{dtype}");
    let f = dev.function("full", "fill", &kernel)?;
    let n_arg = n as i64;
    let mut launch = dev.stream.launch_builder(&f);
    launch.arg(&mut *out.buf).arg(&n_arg).arg(&value);
    // SAFETY: fill_<dtype>(T* out, i64 n, double value) writes n elements of `out`.
    unsafe { launch.launch(elementwise_config(n)) }.map_err(|e| launch_error("full", &kernel, e))?;
    Ok(out)
}

/// A new buffer of `n` elements of `dtype`: start + i * step.
pub(crate) fn cuda_arange(dev: &Arc<CudaDevice>, dtype: DType, n: usize, start: f64, step: f64) -> Result<CudaStorage> {
    let mut out = dev.alloc("arange", dtype, n)?;
    if n == 0 {
        return Ok(out);
    }
    let kernel = format!("arange_{dtype}");
    let f = dev.function("arange", "fill", &kernel)?;
    let n_arg = n as i64;
    let mut launch = dev.stream.launch_builder(&f);
    launch.arg(&mut *out.buf).arg(&n_arg).arg(&start).arg(&step);
    // SAFETY: arange_<dtype>(T* out, i64 n, double start, double step) writes n elements.
    unsafe { launch.launch(elementwise_config(n)) }.map_err(|e| launch_error("arange", &kernel, e))?;
    Ok(out)
}
