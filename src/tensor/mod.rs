//! The tensor handle: a view (shape, strides, offset) over shared CPU or CUDA storage.

mod create;
mod views;

use crate::autograd::Node;
use crate::layout::Layout;
use crate::storage::{CpuStorage, Storage, StorageRef};
use crate::{DType, Device, Error, Result};
use std::sync::Arc;

/// An n-dimensional array on the CPU or a CUDA device.
///
/// Cloning a tensor or taking a view (reshape, transpose, narrow, broadcast...) shares the
/// storage; ops return new tensors. Every op runs on the device its operands live on: the CPU
/// reference implementation or a handwritten CUDA kernel.
///
/// ```
/// use nabla::{DType, Device, Tensor};
/// # fn main() -> nabla::Result<()> {
/// let x = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3], &Device::Cpu)?;
/// let y = x.matmul(&x.t()?)?; // [2, 2]
/// assert_eq!(y.to_vec::<f32>()?, vec![14.0, 32.0, 32.0, 77.0]);
/// let p = x.softmax(-1)?.sum(&[-1], false)?;
/// assert!(p.to_vec::<f32>()?.iter().all(|s| (s - 1.0).abs() < 1e-6));
/// assert_eq!(x.to_dtype(DType::I64)?.argmax(-1, false)?.to_vec::<i64>()?, vec![2, 2]);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Tensor {
    pub(crate) storage: Arc<Storage>,
    pub(crate) layout: Layout,
    pub(crate) dtype: DType,
    pub(crate) device: Device,
    /// Where this tensor sits in the autograd graph, if it tracks gradients.
    pub(crate) node: Option<Arc<Node>>,
}

impl Tensor {
    pub(crate) fn from_storage(storage: Storage, shape: &[usize]) -> Tensor {
        let (dtype, device) = match &storage {
            Storage::Cpu(s) => (s.read().unwrap_or_else(|e| e.into_inner()).dtype(), Device::Cpu),
            Storage::Cuda(s) => (s.dtype, s.device.device()),
        };
        Tensor { storage: Arc::new(storage), layout: Layout::contiguous(shape), dtype, device, node: None }
    }

    pub(crate) fn from_cpu(storage: CpuStorage, shape: &[usize]) -> Tensor {
        Tensor::from_storage(Storage::Cpu(std::sync::RwLock::new(storage)), shape)
    }

    pub(crate) fn from_cuda(storage: crate::cuda::CudaStorage, shape: &[usize]) -> Tensor {
        Tensor::from_storage(Storage::Cuda(storage), shape)
    }

    /// The same storage under another layout, outside the autograd graph (view ops record
    /// their own backward).
    pub(crate) fn with_layout(&self, layout: Layout) -> Tensor {
        Tensor { storage: self.storage.clone(), layout, dtype: self.dtype, device: self.device, node: None }
    }

    /// The storage, borrowed for reading (host data stays read-locked while the guard lives).
    pub(crate) fn storage(&self) -> StorageRef<'_> {
        self.storage.get()
    }

    /// The sizes of each dimension.
    pub fn shape(&self) -> &[usize] {
        self.layout.shape()
    }

    /// The number of dimensions.
    pub fn rank(&self) -> usize {
        self.layout.rank()
    }

    /// The size of one dimension (negative counts from the back).
    pub fn dim(&self, axis: isize) -> Result<usize> {
        Ok(self.shape()[crate::layout::normalize_axis("dim", axis, self.shape())?])
    }

    /// The number of elements.
    pub fn numel(&self) -> usize {
        self.layout.numel()
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Where the storage lives.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The view's layout (shape, strides, offset).
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Strides in elements.
    pub fn strides(&self) -> &[usize] {
        self.layout.strides()
    }

    /// Offset of element 0 into the storage, in elements.
    pub fn offset(&self) -> usize {
        self.layout.offset()
    }

    /// Whether the elements are row-major without gaps.
    pub fn is_contiguous(&self) -> bool {
        self.layout.is_contiguous()
    }

    /// Whether two tensors share storage.
    pub fn shares_storage_with(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.storage, &other.storage)
    }

    /// Fails unless `other` has this tensor's device and dtype.
    pub(crate) fn check_same(&self, op: &'static str, other: &Tensor) -> Result<()> {
        if self.device != other.device {
            return Err(Error::DeviceMismatch { op, lhs: self.device, rhs: other.device });
        }
        if self.dtype != other.dtype {
            return Err(Error::DTypeMismatch { op, lhs: self.dtype, rhs: other.dtype });
        }
        Ok(())
    }

    /// Fails unless this tensor has a floating-point dtype.
    pub(crate) fn check_float(&self, op: &'static str) -> Result<()> {
        if self.dtype.is_float() {
            Ok(())
        } else {
            Err(Error::unsupported(op, self.dtype, " (needs a floating-point tensor)"))
        }
    }

    /// A contiguous tensor whose element 0 is storage element 0: what kernels that take plain
    /// pointers need. Returns `self` when it already is.
    pub(crate) fn dense(&self) -> Result<Tensor> {
        if self.is_contiguous() && self.offset() == 0 { Ok(self.clone()) } else { self.copy_contiguous() }
    }
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor[{:?}, {}, {}]", self.shape(), self.dtype, self.device)?;
        const PREVIEW: usize = 8;
        if let Ok(values) =
            self.flatten_all().and_then(|t| t.narrow(0, 0, t.numel().min(PREVIEW))).and_then(|t| t.to_vec::<f64>())
        {
            write!(f, " {values:?}")?;
            if self.numel() > PREVIEW {
                write!(f, "...")?;
            }
        }
        Ok(())
    }
}
