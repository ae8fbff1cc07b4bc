//! Indexing with i64 indices: index_select, gather and one_hot (`kernels/index.cu`).
//!
//! The CUDA kernels flag out-of-range indices in a device word that the host reads back, so a
//! bad index is an `Err` on both backends (at the price of one wait per call).

use crate::cuda::{CudaStorage, elementwise_config, launch_error};
use crate::layout::normalize_axis;
use crate::storage::{CpuStorage, StorageRef, with_cpu_vec};
use crate::{DType, Error, Result, Tensor};
use cudarc::driver::PushKernelArg;

pub(crate) fn kernel_names() -> Vec<String> {
    DType::ALL
        .iter()
        .flat_map(|d| [format!("index_select_{d}"), format!("gather_{d}"), format!("one_hot_{d}")])
        .collect()
}

/// The tensor as [outer, size of `dim`, inner].
fn split_at(shape: &[usize], dim: usize) -> (usize, usize, usize) {
    (shape[..dim].iter().product(), shape[dim], shape[dim + 1..].iter().product())
}

impl Tensor {
    /// The slices `indices[j]` along `dim`: `out[.., j, ..] = self[.., indices[j], ..]`.
    /// `indices` is a 1-D i64 tensor on the same device.
    pub fn index_select(&self, dim: isize, indices: &Tensor) -> Result<Tensor> {
        const OP: &str = "index_select";
        check_indices(OP, self, indices)?;
        if indices.rank() != 1 {
            return Err(Error::shape(OP, format!("indices must be 1-D, got shape {:?}", indices.shape())));
        }
        let d = normalize_axis(OP, dim, self.shape())?;
        let (outer, size, inner) = split_at(self.shape(), d);
        let n_idx = indices.numel();
        let mut out_shape = self.shape().to_vec();
        out_shape[d] = n_idx;
        let (src, idx) = (self.dense()?, indices.dense()?);
        match (src.storage(), idx.storage()) {
            (StorageRef::Cpu(s), StorageRef::Cpu(ix)) => {
                let ix = ix.as_i64().expect("check_indices admits only i64 indices");
                check_range(OP, ix, size)?;
                let out = with_cpu_vec!(&*s, v => {
                    let mut o = Vec::with_capacity(outer * n_idx * inner);
                    for a in 0..outer {
                        for &k in ix {
                            let start = (a * size + k as usize) * inner;
                            o.extend_from_slice(&v[start..start + inner]);
                        }
                    }
                    CpuStorage::from_vec(o)
                });
                Ok(Tensor::from_cpu(out, &out_shape))
            }
            (StorageRef::Cuda(s), StorageRef::Cuda(ix)) => {
                let dims = [outer as i64, size as i64, n_idx as i64, inner as i64];
                let out = cuda_index(OP, "index_select", Some(s), ix, self.dtype, outer * n_idx * inner, &dims, size)?;
                Ok(Tensor::from_cuda(out, &out_shape))
            }
            _ => unreachable!("check_indices rejects mixed devices and non-i64 indices"),
        }
    }

    /// Picks along `dim` per element: `out[i][j][k] = self[i][index[i][j][k]][k]` (for dim 1).
    /// `index` is i64 with this tensor's shape except, possibly, along `dim`.
    pub fn gather(&self, dim: isize, index: &Tensor) -> Result<Tensor> {
        const OP: &str = "gather";
        check_indices(OP, self, index)?;
        let d = normalize_axis(OP, dim, self.shape())?;
        let fits =
            index.rank() == self.rank() && (0..self.rank()).all(|i| i == d || index.shape()[i] == self.shape()[i]);
        if !fits {
            return Err(Error::shape(
                OP,
                format!("index shape {:?} must match {:?} outside dim {d}", index.shape(), self.shape()),
            ));
        }
        let (outer, size, inner) = split_at(self.shape(), d);
        let idx_dim = index.shape()[d];
        let (src, idx) = (self.dense()?, index.dense()?);
        match (src.storage(), idx.storage()) {
            (StorageRef::Cpu(s), StorageRef::Cpu(ix)) => {
                let ix = ix.as_i64().expect("check_indices admits only i64 indices");
                check_range(OP, ix, size)?;
                let out = with_cpu_vec!(&*s, v => {
                    let o: Vec<_> = ix
                        .iter()
                        .enumerate()
                        .map(|(e, &k)| {
                            let (a, c) = (e / (idx_dim * inner), e % inner);
                            v[(a * size + k as usize) * inner + c]
                        })
                        .collect();
                    CpuStorage::from_vec(o)
                });
                Ok(Tensor::from_cpu(out, index.shape()))
            }
            (StorageRef::Cuda(s), StorageRef::Cuda(ix)) => {
                let dims = [outer as i64, size as i64, idx_dim as i64, inner as i64];
                let out = cuda_index(OP, "gather", Some(s), ix, self.dtype, index.numel(), &dims, size)?;
                Ok(Tensor::from_cuda(out, index.shape()))
            }
            _ => unreachable!("check_indices rejects mixed devices and non-i64 indices"),
        }
    }

    /// For an i64 tensor of class indices, a `[.., classes]` tensor of `dtype` with 1 at each index.
    pub fn one_hot(&self, classes: usize, dtype: DType) -> Result<Tensor> {
        const OP: &str = "one_hot";
        if self.dtype != DType::I64 {
            return Err(Error::unsupported(OP, self.dtype, " (class indices must be i64)"));
        }
        let mut out_shape = self.shape().to_vec();
        out_shape.push(classes);
        let idx = self.dense()?;
        match idx.storage() {
            StorageRef::Cpu(ix) => {
                let ix = ix.as_i64().expect("dtype checked above");
                check_range(OP, ix, classes)?;
                let mut values = vec![0.0; ix.len() * classes];
                for (r, &k) in ix.iter().enumerate() {
                    values[r * classes + k as usize] = 1.0;
                }
                Ok(Tensor::from_cpu(CpuStorage::from_f64(dtype, &values), &out_shape))
            }
            StorageRef::Cuda(ix) => {
                let dims = [ix.len as i64, classes as i64];
                let out = cuda_index(OP, "one_hot", None, ix, dtype, ix.len * classes, &dims, classes)?;
                Ok(Tensor::from_cuda(out, &out_shape))
            }
        }
    }
}

fn check_indices(op: &'static str, src: &Tensor, indices: &Tensor) -> Result<()> {
    if indices.dtype != DType::I64 {
        return Err(Error::unsupported(op, indices.dtype, " (indices must be i64)"));
    }
    if src.device != indices.device {
        return Err(Error::DeviceMismatch { op, lhs: src.device, rhs: indices.device });
    }
    Ok(())
}

fn check_range(op: &'static str, indices: &[i64], size: usize) -> Result<()> {
    match indices.iter().find(|&&k| k < 0 || k as u64 >= size as u64) {
        Some(&index) => Err(Error::IndexOutOfRange { op, index, size }),
        None => Ok(()),
    }
}

/// Launches `<kernel>_<dtype>` over `n` outputs and turns a raised range flag into an error.
#[allow(clippy::too_many_arguments)]
fn cuda_index(
    op: &'static str,
    kernel_base: &str,
    src: Option<&CudaStorage>,
    idx: &CudaStorage,
    dtype: DType,
    n: usize,
    dims: &[i64],
    size: usize,
) -> Result<CudaStorage> {
    let dev = idx.device.clone();
    let mut out = dev.alloc(op, dtype, n)?;
    if n == 0 {
        return Ok(out);
    }
    let mut bad = dev.stream.alloc_zeros::<i32>(1).map_err(|e| crate::cuda::cuda_error(op, e))?;
    let kernel = format!("{kernel_base}_{dtype}");
    let f = dev.function(op, "index", &kernel)?;
    let mut launch = dev.stream.launch_builder(&f);
    if let Some(src) = src {
        launch.arg(&src.buf);
    }
    launch.arg(&idx.buf).arg(&mut out.buf);
    for d in dims {
        launch.arg(d);
    }
    launch.arg(&mut bad);
    // SAFETY: index_select/gather_<T>(const T* src, const i64* idx, T* out, i64 x4, int* bad)
    // and one_hot_<T>(const i64* idx, T* out, i64 rows, i64 classes, int* bad) read inside the
    // dense buffers described by `dims` and write the n elements of `out`.
    unsafe { launch.launch(elementwise_config(n)) }.map_err(|e| launch_error(op, &kernel, e))?;
    let flag = dev.stream.clone_dtoh(&bad).map_err(|e| crate::cuda::cuda_error(op, e))?;
    if flag[0] != 0 {
        return Err(Error::IndexOutOfRange { op, index: -1, size });
    }
    Ok(out)
}
