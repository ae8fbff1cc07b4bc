//! Indexing with i64 indices: index_select, gather and one_hot (`kernels/index.cu`).
//!
//! The CUDA kernels flag out-of-range indices in a device word that the host reads back, so a
//! bad index is an `Err` on both backends (at the price of one wait per call).

use crate::autograd::record;
use crate::cuda::{CudaStorage, elementwise_config, launch_error};
use crate::layout::normalize_axis;
use crate::storage::{CpuStorage, StorageRef, with_cpu_vec};
use crate::{DType, Error, Result, Tensor};
use cudarc::driver::PushKernelArg;

pub(crate) fn kernel_names() -> Vec<String> {
    let mut names: Vec<String> = DType::ALL
        .iter()
        .flat_map(|d| [format!("index_select_{d}"), format!("gather_{d}"), format!("one_hot_{d}")])
        .collect();
    for d in SCATTER_DTYPES {
        names.push(format!("index_add_{d}"));
        names.push(format!("scatter_add_{d}"));
    }
    names
}

/// Dtypes with atomic-add kernels; f16/bf16 scatter through f32.
const SCATTER_DTYPES: [DType; 3] = [DType::F32, DType::F64, DType::I64];

/// The tensor as [outer, size of `dim`, inner].
fn split_at(shape: &[usize], dim: usize) -> (usize, usize, usize) {
    (shape[..dim].iter().product(), shape[dim], shape[dim + 1..].iter().product())
}

impl Tensor {
    /// The slices `indices[j]` along `dim`: `out[.., j, ..] = self[.., indices[j], ..]`.
    /// `indices` is a 1-D i64 tensor on the same device.
    pub fn index_select(&self, dim: isize, indices: &Tensor) -> Result<Tensor> {
        let out = self.index_select_forward(dim, indices)?;
        let (shape, idx) = (self.shape().to_vec(), indices.detach());
        Ok(record(out, &[self], move |g| {
            Ok(vec![Some(Tensor::zeros(&shape, g.dtype(), &g.device())?.index_add(dim, &idx, g)?)])
        }))
    }

    fn index_select_forward(&self, dim: isize, indices: &Tensor) -> Result<Tensor> {
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
        if self.device == crate::Device::Cpu {
            crate::storage::check_allocatable(OP, &out_shape, self.dtype)?;
        }
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
                let out =
                    cuda_index(OP, "index_select", Some(s), ix, self.dtype, outer * n_idx * inner, &dims, size, None)?;
                Ok(Tensor::from_cuda(out, &out_shape))
            }
            _ => unreachable!("check_indices rejects mixed devices and non-i64 indices"),
        }
    }

    /// Picks along `dim` per element: `out[i][j][k] = self[i][index[i][j][k]][k]` (for dim 1).
    /// `index` is i64 with this tensor's shape except, possibly, along `dim`.
    pub fn gather(&self, dim: isize, index: &Tensor) -> Result<Tensor> {
        let out = self.gather_forward(dim, index)?;
        let (shape, idx) = (self.shape().to_vec(), index.detach());
        Ok(record(out, &[self], move |g| {
            Ok(vec![Some(Tensor::zeros(&shape, g.dtype(), &g.device())?.scatter_add(dim, &idx, g)?)])
        }))
    }

    fn gather_forward(&self, dim: isize, index: &Tensor) -> Result<Tensor> {
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
                let out = cuda_index(OP, "gather", Some(s), ix, self.dtype, index.numel(), &dims, size, None)?;
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
        crate::layout::checked_numel(OP, &out_shape)?;
        let idx = self.dense()?;
        match idx.storage() {
            StorageRef::Cpu(ix) => {
                let ix = ix.as_i64().expect("dtype checked above");
                check_range(OP, ix, classes)?;
                let mut values = crate::storage::try_filled(OP, ix.len() * classes, 0.0)?;
                for (r, &k) in ix.iter().enumerate() {
                    values[r * classes + k as usize] = 1.0;
                }
                Ok(Tensor::from_cpu(CpuStorage::from_f64(dtype, &values), &out_shape))
            }
            StorageRef::Cuda(ix) => {
                let dims = [ix.len as i64, classes as i64];
                let out = cuda_index(OP, "one_hot", None, ix, dtype, ix.len * classes, &dims, classes, None)?;
                Ok(Tensor::from_cuda(out, &out_shape))
            }
        }
    }
}

impl Tensor {
    /// `self` plus `source` added at `indices` along `dim`: `out[.., indices[j], ..] += source[.., j, ..]`
    /// (repeated indices accumulate). The adjoint of `index_select`.
    pub fn index_add(&self, dim: isize, indices: &Tensor, source: &Tensor) -> Result<Tensor> {
        const OP: &str = "index_add";
        check_indices(OP, self, indices)?;
        self.check_same(OP, source)?;
        let d = normalize_axis(OP, dim, self.shape())?;
        let mut expected = self.shape().to_vec();
        expected[d] = indices.numel();
        if indices.rank() != 1 || source.shape() != expected {
            return Err(Error::shape(
                OP,
                format!(
                    "indices {:?} and source {:?} do not fit {:?} along dim {d}",
                    indices.shape(),
                    source.shape(),
                    self.shape()
                ),
            ));
        }
        let out = self.scatter_forward(OP, "index_add", d, indices, source)?;
        let idx = indices.detach();
        Ok(record(out, &[self, source], move |g| Ok(vec![Some(g.clone()), Some(g.index_select(dim, &idx)?)])))
    }

    /// `self` plus `src` added at `index` along `dim`: `out[i][index[i][j][k]][k] += src[i][j][k]`
    /// (for dim 1). `index` and `src` share a shape that matches `self` outside `dim`. The
    /// adjoint of `gather`.
    pub fn scatter_add(&self, dim: isize, index: &Tensor, src: &Tensor) -> Result<Tensor> {
        const OP: &str = "scatter_add";
        check_indices(OP, self, index)?;
        self.check_same(OP, src)?;
        let d = normalize_axis(OP, dim, self.shape())?;
        let fits = index.shape() == src.shape()
            && index.rank() == self.rank()
            && (0..self.rank()).all(|i| i == d || index.shape()[i] == self.shape()[i]);
        if !fits {
            return Err(Error::shape(
                OP,
                format!(
                    "index {:?} and src {:?} do not fit {:?} along dim {d}",
                    index.shape(),
                    src.shape(),
                    self.shape()
                ),
            ));
        }
        let out = self.scatter_forward(OP, "scatter_add", d, index, src)?;
        let idx = index.detach();
        Ok(record(out, &[self, src], move |g| Ok(vec![Some(g.clone()), Some(g.gather(dim, &idx)?)])))
    }

    /// The shared body of index_add (1-D indices) and scatter_add (per-element indices).
    fn scatter_forward(
        &self,
        op: &'static str,
        kernel: &str,
        d: usize,
        index: &Tensor,
        src: &Tensor,
    ) -> Result<Tensor> {
        let (outer, size, inner) = split_at(self.shape(), d);
        let idx_dim = src.shape()[d];
        let per_element = kernel == "scatter_add";
        let (base, idx, source) = (self.dense()?, index.dense()?, src.dense()?);
        match (base.storage(), idx.storage(), source.storage()) {
            (StorageRef::Cpu(b), StorageRef::Cpu(ix), StorageRef::Cpu(s)) => {
                let ix = ix.as_i64().expect("check_indices admits only i64 indices");
                check_range(op, ix, size)?;
                let mut out = b.gather_f64(&base.layout);
                let values = s.gather_f64(&source.layout);
                // Source element e = (a · idx_dim + j) · inner + c, walked in that order (no
                // divisions per element: they were most of an embedding's backward).
                let mut e = 0;
                for a in 0..outer {
                    for j in 0..idx_dim {
                        for c in 0..inner {
                            let k = if per_element { ix[e] } else { ix[j] } as usize;
                            out[(a * size + k) * inner + c] += values[e];
                            e += 1;
                        }
                    }
                }
                Ok(Tensor::from_cpu(CpuStorage::from_f64(self.dtype, &out), self.shape()))
            }
            (StorageRef::Cuda(_), StorageRef::Cuda(ix), StorageRef::Cuda(_))
                if !SCATTER_DTYPES.contains(&self.dtype) =>
            {
                // 16-bit floats accumulate in an f32 copy.
                let _ = ix;
                let wide = self.to_dtype(DType::F32)?.detach();
                let src32 = src.to_dtype(DType::F32)?.detach();
                wide.scatter_forward(op, kernel, d, index, &src32)?.to_dtype(self.dtype)
            }
            (StorageRef::Cuda(b), StorageRef::Cuda(ix), StorageRef::Cuda(s)) => {
                let dev = b.device.clone();
                let mut out = dev.alloc(op, self.dtype, self.numel())?;
                let bytes = self.numel() * self.dtype.size_in_bytes();
                if bytes > 0 {
                    dev.stream
                        .memcpy_dtod(&b.buf.slice(0..bytes), &mut out.buf.slice_mut(0..bytes))
                        .map_err(|e| crate::cuda::cuda_error(op, e))?;
                }
                let dims = [outer as i64, size as i64, idx_dim as i64, inner as i64];
                let out = cuda_index(op, kernel, Some(s), ix, self.dtype, src.numel(), &dims, size, Some(out))?;
                Ok(Tensor::from_cuda(out, self.shape()))
            }
            _ => unreachable!("check_same and check_indices reject mixed devices"),
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

/// Launches `<kernel>_<dtype>` over `n` elements, writing a new buffer or adding into `into`,
/// and turns a raised range flag into an error.
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
    into: Option<CudaStorage>,
) -> Result<CudaStorage> {
    let dev = idx.device.clone();
    let mut out = match into {
        Some(out) => out,
        None => dev.alloc(op, dtype, n)?,
    };
    if n == 0 {
        return Ok(out);
    }
    dev.refuse_host_access(op, "checking its indices (the host reads the kernel's range flag)")?;
    let mut bad = dev.stream.alloc_zeros::<i32>(1).map_err(|e| crate::cuda::cuda_error(op, e))?;
    let kernel = format!("{kernel_base}_{dtype}");
    let f = dev.function(op, "index", &kernel)?;
    let mut launch = dev.stream.launch_builder(&f);
    if let Some(src) = src {
        launch.arg(&*src.buf);
    }
    launch.arg(&*idx.buf).arg(&mut *out.buf);
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
