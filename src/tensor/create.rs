//! Making tensors and getting their values out: vectors, ndarrays, constants, ranges, random
//! draws, and moves between devices.

use super::Tensor;
use crate::autograd::record;
use crate::cuda;
use crate::dtype::Element;
use crate::layout::{MAX_ELEMENTS, checked_numel};
use crate::rng::Generator;
use crate::storage::{CpuStorage, StorageRef, try_filled};
use crate::{DType, Device, Error, Result};

impl Tensor {
    /// A tensor of `shape` holding `data` in row-major order.
    pub fn from_vec<T: Element>(data: Vec<T>, shape: &[usize], device: &Device) -> Result<Tensor> {
        let numel = checked_numel("from_vec", shape)?;
        if numel != data.len() {
            return Err(Error::shape("from_vec", format!("{} values do not fill shape {shape:?}", data.len())));
        }
        Tensor::from_cpu(CpuStorage::from_vec(data), shape).to_device(device)
    }

    /// A tensor of `shape` holding a copy of `data`.
    pub fn from_slice<T: Element>(data: &[T], shape: &[usize], device: &Device) -> Result<Tensor> {
        Tensor::from_vec(data.to_vec(), shape, device)
    }

    /// A tensor with the shape and values of an ndarray.
    pub fn from_ndarray<T: Element, D: ndarray::Dimension>(
        array: &ndarray::Array<T, D>,
        device: &Device,
    ) -> Result<Tensor> {
        let shape = array.shape().to_vec();
        Tensor::from_vec(array.iter().copied().collect(), &shape, device)
    }

    /// The values as an ndarray of `T` (converting the dtype if it differs).
    pub fn to_ndarray<T: Element>(&self) -> Result<ndarray::ArrayD<T>> {
        let values = self.to_vec::<T>()?;
        ndarray::ArrayD::from_shape_vec(self.shape().to_vec(), values)
            .map_err(|e| Error::shape("to_ndarray", e.to_string()))
    }

    /// The values in row-major order as `T` (converting the dtype if it differs).
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        let host = if self.device == Device::Cpu { self.clone() } else { self.transfer(&Device::Cpu)? };
        match host.storage() {
            StorageRef::Cpu(s) => Ok(s.gather::<T>(&host.layout)),
            StorageRef::Cuda(_) => unreachable!("to_device(Cpu) returns host storage"),
        }
    }

    /// The single value of a one-element tensor.
    pub fn to_scalar<T: Element>(&self) -> Result<T> {
        if self.numel() != 1 {
            return Err(Error::shape("to_scalar", format!("expected one element, shape is {:?}", self.shape())));
        }
        Ok(self.to_vec::<T>()?[0])
    }

    /// A copy on `device` (the tensor itself if it is already there).
    pub fn to_device(&self, device: &Device) -> Result<Tensor> {
        if self.device == *device {
            return Ok(self.clone());
        }
        let out = self.transfer(device)?;
        let from = self.device;
        Ok(record(out, &[self], move |g| Ok(vec![Some(g.to_device(&from)?)])))
    }

    fn transfer(&self, device: &Device) -> Result<Tensor> {
        match (self.storage(), device) {
            (StorageRef::Cpu(s), Device::Cuda(ordinal)) => {
                let dense = s.gather_same(&self.layout);
                let dev = cuda::cuda_device(*ordinal)?;
                let uploaded = dev.upload("to_device", self.dtype, self.numel(), dense.as_bytes())?;
                Ok(Tensor::from_cuda(uploaded, self.shape()))
            }
            (StorageRef::Cuda(_), _) => {
                let dense = self.dense()?;
                let StorageRef::Cuda(s) = dense.storage() else { unreachable!("dense keeps the device") };
                let host = CpuStorage::from_bytes(
                    self.dtype,
                    &s.download("to_device")?[..self.numel() * self.dtype.size_in_bytes()],
                );
                Tensor::from_cpu(host, self.shape()).transfer(device)
            }
            (StorageRef::Cpu(_), Device::Cpu) => Ok(self.clone()),
        }
    }

    /// A tensor of `shape` filled with `value` (rounded to `dtype`).
    pub fn full(shape: &[usize], value: f64, dtype: DType, device: &Device) -> Result<Tensor> {
        let numel = checked_numel("full", shape)?;
        match device {
            Device::Cpu => Ok(Tensor::from_cpu(CpuStorage::filled("full", dtype, numel, value)?, shape)),
            Device::Cuda(ordinal) => {
                let dev = cuda::cuda_device(*ordinal)?;
                Ok(Tensor::from_cuda(crate::ops::fill::cuda_fill(&dev, dtype, numel, value)?, shape))
            }
        }
    }

    /// A tensor of zeros.
    pub fn zeros(shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        match device {
            Device::Cpu => Tensor::full(shape, 0.0, dtype, device),
            Device::Cuda(ordinal) => {
                let numel = checked_numel("zeros", shape)?;
                Ok(Tensor::from_cuda(cuda::cuda_device(*ordinal)?.alloc_zeros("zeros", dtype, numel)?, shape))
            }
        }
    }

    /// A tensor of ones.
    pub fn ones(shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        Tensor::full(shape, 1.0, dtype, device)
    }

    /// Zeros with this tensor's shape, dtype and device.
    pub fn zeros_like(&self) -> Result<Tensor> {
        Tensor::zeros(self.shape(), self.dtype, &self.device)
    }

    /// Ones with this tensor's shape, dtype and device.
    pub fn ones_like(&self) -> Result<Tensor> {
        Tensor::ones(self.shape(), self.dtype, &self.device)
    }

    /// The 1-D tensor `start, start + step, ...` of the values below `end` (above, for a
    /// negative step), as `torch.arange`.
    pub fn arange(start: f64, end: f64, step: f64, dtype: DType, device: &Device) -> Result<Tensor> {
        if step == 0.0 || !step.is_finite() || !start.is_finite() || !end.is_finite() {
            return Err(Error::invalid(
                "arange",
                format!("start {start}, end {end} and step {step} must be finite, step non-zero"),
            ));
        }
        let count = ((end - start) / step).ceil().max(0.0);
        if count.is_nan() || count > MAX_ELEMENTS as f64 {
            return Err(Error::shape(
                "arange",
                format!("{start}..{end} by {step} has {count} elements, too many to hold"),
            ));
        }
        let n = count as usize;
        match device {
            Device::Cpu => {
                let mut values = try_filled("arange", n, 0.0)?;
                values.iter_mut().enumerate().for_each(|(i, v)| *v = start + i as f64 * step);
                Ok(Tensor::from_cpu(CpuStorage::from_f64(dtype, &values), &[n]))
            }
            Device::Cuda(ordinal) => {
                let dev = cuda::cuda_device(*ordinal)?;
                Ok(Tensor::from_cuda(crate::ops::fill::cuda_arange(&dev, dtype, n, start, step)?, &[n]))
            }
        }
    }

    /// Uniform samples in [0, 1) drawn from `rng`; the same seed gives the same tensor on any device.
    pub fn rand(shape: &[usize], dtype: DType, device: &Device, rng: &mut Generator) -> Result<Tensor> {
        Tensor::uniform(shape, 0.0, 1.0, dtype, device, rng)
    }

    /// Uniform samples in [low, high).
    pub fn uniform(
        shape: &[usize],
        low: f64,
        high: f64,
        dtype: DType,
        device: &Device,
        rng: &mut Generator,
    ) -> Result<Tensor> {
        let mut values = try_filled("uniform", checked_numel("uniform", shape)?, 0.0)?;
        values.iter_mut().for_each(|v| *v = low + (high - low) * rng.uniform());
        Tensor::from_cpu(CpuStorage::from_f64(dtype, &values), shape).to_device(device)
    }

    /// Standard normal samples drawn from `rng`; the same seed gives the same tensor on any device.
    pub fn randn(shape: &[usize], dtype: DType, device: &Device, rng: &mut Generator) -> Result<Tensor> {
        let mut values = try_filled("randn", checked_numel("randn", shape)?, 0.0)?;
        values.iter_mut().for_each(|v| *v = rng.normal());
        Tensor::from_cpu(CpuStorage::from_f64(dtype, &values), shape).to_device(device)
    }

    /// Uniform integers in [low, high) as i64.
    pub fn randint(low: i64, high: i64, shape: &[usize], device: &Device, rng: &mut Generator) -> Result<Tensor> {
        if high <= low {
            return Err(Error::invalid("randint", format!("empty range {low}..{high}")));
        }
        let span = high.abs_diff(low);
        let mut values = try_filled("randint", checked_numel("randint", shape)?, 0i64)?;
        for v in values.iter_mut() {
            *v = low.wrapping_add(rng.below(span)? as i64);
        }
        Tensor::from_vec(values, shape, device)
    }
}
