//! Copies: `contiguous`, `to_dtype`, `cat` and `stack`, all one strided copy with conversion
//! (`kernels/copy.cu`): every element of a source view goes to the same logical position of a
//! destination view, converted to the destination dtype.

use crate::autograd::record;
use crate::cuda::{self, CudaStorage, elementwise_config, launch_error, strided_layout};
use crate::layout::{Layout, normalize_axis};
use crate::storage::{CpuStorage, Storage, StorageRef, with_cpu_vec};
use crate::{DType, Device, Element, Error, Result, Tensor};
use cudarc::driver::PushKernelArg;
use std::mem::MaybeUninit;

pub(crate) fn kernel_names() -> Vec<String> {
    let pairs = DType::ALL.iter().flat_map(|s| DType::ALL.iter().map(move |d| format!("{s}_{d}")));
    pairs.flat_map(|p| ["cast_", "cast_dense_", "cast_gather8_", "cast_gather_"].map(|k| format!("{k}{p}"))).collect()
}

impl Tensor {
    /// A row-major copy, or the tensor itself when it already is row-major.
    pub fn contiguous(&self) -> Result<Tensor> {
        if self.is_contiguous() { Ok(self.clone()) } else { self.copy_contiguous() }
    }

    /// A new row-major tensor with the same values (always copies).
    pub(crate) fn copy_contiguous(&self) -> Result<Tensor> {
        self.convert("contiguous", self.dtype)
    }

    /// The values converted to `dtype` (the tensor itself when it already has it). Floats to
    /// integers truncate toward zero and saturate; NaN becomes 0.
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype {
            return Ok(self.clone());
        }
        let out = self.convert("to_dtype", dtype)?;
        if !dtype.is_float() {
            return Ok(out);
        }
        let from = self.dtype;
        Ok(record(out, &[self], move |g| Ok(vec![Some(g.to_dtype(from)?)])))
    }

    fn convert(&self, op: &'static str, dtype: DType) -> Result<Tensor> {
        if self.device == Device::Cpu {
            crate::storage::check_allocatable(op, self.shape(), dtype)?;
        }
        if let StorageRef::Cpu(src) = self.storage()
            && crate::cpu::fast()
        {
            return Ok(Tensor::from_cpu(cpu_convert(&src, &self.layout, dtype), self.shape()));
        }
        let out = Tensor::empty_for_copy(op, self.shape(), dtype, self.device)?;
        copy_into(op, self, &out, &Layout::contiguous(self.shape()))?;
        Ok(out)
    }

    /// Overwrites this tensor's elements, in place, with `src`'s (converted to this dtype):
    /// every tensor sharing the storage sees the new values. Not recorded by autograd; for
    /// loading weights and optimizer updates.
    pub fn copy_(&self, src: &Tensor) -> Result<()> {
        if self.shape() != src.shape() {
            return Err(Error::shape("copy_", format!("cannot copy {:?} into {:?}", src.shape(), self.shape())));
        }
        if self.layout.is_broadcast() {
            // Several elements share one address: which write wins would be an accident.
            return Err(Error::invalid(
                "copy_",
                format!(
                    "cannot write into a broadcast view of shape {:?} (strides {:?})",
                    self.shape(),
                    self.layout.strides()
                ),
            ));
        }
        let src = src.to_device(&self.device)?;
        copy_into("copy_", &src, self, &self.layout)
    }

    /// Joins tensors along an existing dim; all other dims must match.
    pub fn cat(tensors: &[&Tensor], dim: isize) -> Result<Tensor> {
        let first = tensors.first().ok_or_else(|| Error::invalid("cat", "needs at least one tensor"))?;
        let d = normalize_axis("cat", dim, first.shape())?;
        let mut shape = first.shape().to_vec();
        shape[d] = 0;
        for t in tensors {
            first.check_same("cat", t)?;
            let fits = t.rank() == first.rank() && (0..t.rank()).all(|i| i == d || t.shape()[i] == first.shape()[i]);
            if !fits {
                let shapes: Vec<&[usize]> = tensors.iter().map(|t| t.shape()).collect();
                return Err(Error::shape("cat", format!("shapes {shapes:?} differ outside dim {d}")));
            }
            shape[d] += t.shape()[d];
        }
        let out = Tensor::empty_for_copy("cat", &shape, first.dtype, first.device)?;
        let whole = Layout::contiguous(&shape);
        let mut start = 0;
        for t in tensors {
            let part = whole.narrow(d as isize, start, t.shape()[d])?;
            copy_into("cat", t, &out, &part)?;
            start += t.shape()[d];
        }
        let sizes: Vec<usize> = tensors.iter().map(|t| t.shape()[d]).collect();
        Ok(record(out, tensors, move |g| {
            let mut start = 0;
            let mut grads = Vec::with_capacity(sizes.len());
            for &size in &sizes {
                grads.push(Some(g.narrow(d as isize, start, size)?));
                start += size;
            }
            Ok(grads)
        }))
    }

    /// Joins same-shaped tensors along a new dim.
    pub fn stack(tensors: &[&Tensor], dim: isize) -> Result<Tensor> {
        let expanded: Vec<Tensor> = tensors.iter().map(|t| t.unsqueeze(dim)).collect::<Result<_>>()?;
        let refs: Vec<&Tensor> = expanded.iter().collect();
        Tensor::cat(&refs, dim)
    }

    /// A fresh tensor whose every element the caller overwrites.
    fn empty_for_copy(op: &'static str, shape: &[usize], dtype: DType, device: Device) -> Result<Tensor> {
        let numel = crate::layout::checked_numel(op, shape)?;
        match device {
            Device::Cpu => Ok(Tensor::from_cpu(CpuStorage::filled(op, dtype, numel, 0.0)?, shape)),
            Device::Cuda(ordinal) => Ok(Tensor::from_cuda(cuda::cuda_device(ordinal)?.alloc(op, dtype, numel)?, shape)),
        }
    }
}

/// Copies `src` into the `dst_layout` view of `dst`'s storage, in place.
fn copy_into(op: &'static str, src: &Tensor, dst: &Tensor, dst_layout: &Layout) -> Result<()> {
    if std::sync::Arc::ptr_eq(&src.storage, &dst.storage) {
        // Reading and writing one storage: go through a copy of the source.
        return copy_into(op, &src.copy_contiguous()?, dst, dst_layout);
    }
    match (src.storage(), &*dst.storage) {
        (StorageRef::Cpu(s), Storage::Cpu(d)) => {
            cpu_copy(&s, &src.layout, &mut d.write().unwrap_or_else(|e| e.into_inner()), dst_layout);
            Ok(())
        }
        (StorageRef::Cuda(s), Storage::Cuda(d)) => cuda_copy(op, s, &src.layout, d, dst_layout),
        _ => Err(Error::DeviceMismatch { op, lhs: src.device, rhs: dst.device }),
    }
}

/// The fast CPU conversion: the view walked once into a fresh row-major vector of `dtype`.
fn cpu_convert(src: &CpuStorage, layout: &Layout, dtype: DType) -> CpuStorage {
    fn to<D: Element>(src: &CpuStorage, layout: &Layout) -> Vec<D> {
        crate::cpu::elementwise::new_vec(layout.numel(), |out| with_cpu_vec!(src, v => write_converted(v, layout, out)))
    }
    match dtype {
        DType::F32 => CpuStorage::F32(to(src, layout)),
        DType::F64 => CpuStorage::F64(to(src, layout)),
        DType::F16 => CpuStorage::F16(to(src, layout)),
        DType::BF16 => CpuStorage::BF16(to(src, layout)),
        DType::I64 => CpuStorage::I64(to(src, layout)),
    }
}

/// Writes the `layout` view of `src` into the dense `dst`, converting as the reference does
/// (exact within a dtype, rounded once between dtypes), in parallel chunks.
fn write_converted<S: Element, D: Element>(src: &[S], layout: &Layout, dst: &mut [MaybeUninit<D>]) {
    if S::DTYPE == D::DTYPE {
        let same: &mut [MaybeUninit<S>] = crate::storage::reinterpret_uninit_mut(dst);
        crate::cpu::elementwise::map(src, layout, same, |v| v);
    } else {
        crate::cpu::elementwise::map(
            src,
            layout,
            dst,
            #[inline(always)]
            |v| D::from_f64(v.to_f64()),
        );
    }
}

/// [`write_converted`] into a strided view `layout` of `dst` (not a broadcast one).
fn write_converted_into_view<S: Element, D: Element>(src: &[S], src_layout: &Layout, dst: &mut [D], layout: &Layout) {
    use crate::cpu::elementwise::copy_into_view;
    if S::DTYPE == D::DTYPE {
        let same: &mut [S] = crate::storage::reinterpret_slice_mut(dst);
        copy_into_view(src, src_layout, same, layout, |v| v);
    } else {
        copy_into_view(src, src_layout, dst, layout, |v| D::from_f64(v.to_f64()));
    }
}

/// CPU reference: element-by-element copy through the two views (exact within a dtype).
fn cpu_copy(src: &CpuStorage, src_layout: &Layout, dst: &mut CpuStorage, dst_layout: &Layout) {
    if dst_layout.is_contiguous() && crate::cpu::fast() {
        let (o, n) = (dst_layout.offset(), dst_layout.numel());
        with_cpu_vec!(dst, d => with_cpu_vec!(src, s => {
            write_converted(s, src_layout, crate::cpu::elementwise::as_uninit(&mut d[o..o + n]))
        }));
        return;
    }
    if crate::cpu::fast() && !dst_layout.is_broadcast() {
        // A slice of a larger tensor (cat's parts, a narrow's gradient): written run by run.
        with_cpu_vec!(dst, d => with_cpu_vec!(src, s => write_converted_into_view(s, src_layout, d, dst_layout)));
        return;
    }
    with_cpu_vec!(dst, d => {
        let values = src.gather(src_layout);
        for (o, v) in dst_layout.offsets().zip(values) {
            d[o] = v;
        }
    })
}

fn cuda_copy(
    op: &'static str,
    src: &CudaStorage,
    src_layout: &Layout,
    dst: &CudaStorage,
    dst_layout: &Layout,
) -> Result<()> {
    let n = src_layout.numel();
    if n == 0 {
        return Ok(());
    }
    let dev = dst.device.clone();
    let n_arg = n as i64;
    let (src_offset, dst_offset) = (src_layout.offset() as i64, dst_layout.offset() as i64);
    if cuda::packable(src_layout, src.dtype) && cuda::packable(dst_layout, dst.dtype) {
        let kernel = format!("cast_dense_{}_{}", src.dtype, dst.dtype);
        let f = dev.function(op, "copy", &kernel)?;
        let mut launch = dev.stream.launch_builder(&f);
        launch.arg(&*src.buf).arg(&*dst.buf).arg(&n_arg).arg(&src_offset).arg(&dst_offset);
        // SAFETY: cast_dense_<s>_<d>(const S*, D*, i64 n, i64 src_offset, i64 dst_offset) reads
        // n elements from src_offset and writes n from dst_offset, inside their buffers (the
        // views are), both 16-byte aligned as its Pack8 accesses need (checked above).
        unsafe { launch.launch(elementwise_config(n.div_ceil(8))) }.map_err(|e| launch_error(op, &kernel, e))?;
        return Ok(());
    }
    // Views under 2^31 elements: in runs of 8 elements where both views allow it (layouts in
    // units of 8), else element by element.
    let packed = || match (cuda::gather_layout_packed(src_layout), cuda::gather_layout_packed(dst_layout)) {
        (Some(ls), Some(ld)) => Some(("cast_gather8", 8, ls, ld)),
        _ => None,
    };
    let single = || match (cuda::gather_layout(src_layout), cuda::gather_layout(dst_layout)) {
        (Some(ls), Some(ld)) => Some(("cast_gather", 1, ls, ld)),
        _ => None,
    };
    if let Some((name, unit, ls, ld)) = packed().or_else(single) {
        let kernel = format!("{name}_{}_{}", src.dtype, dst.dtype);
        let f = dev.function(op, "copy", &kernel)?;
        let units = n / unit;
        let units_arg = units as i64;
        let mut launch = dev.stream.launch_builder(&f);
        launch.arg(&*src.buf).arg(&*dst.buf).arg(&units_arg).arg(&ls).arg(&ld);
        // SAFETY: cast_gather8_<s>_<d> and cast_gather_<s>_<d>(const S*, D*, i64 units,
        // GatherLayout, GatherLayout) read `units` runs of `unit` elements (n < 2^31 in all, a
        // multiple of the unit) through `ls` and write them through `ld`, layouts in units of
        // `unit` elements; every run lies inside its buffer and, for runs of 8, is 16-byte
        // aligned, as gather_layout_packed checked. Distinct storages.
        unsafe { launch.launch(elementwise_config(units)) }.map_err(|e| launch_error(op, &kernel, e))?;
        return Ok(());
    }
    let kernel = format!("cast_{}_{}", src.dtype, dst.dtype);
    let f = dev.function(op, "copy", &kernel)?;
    let (ls, ld) = (strided_layout(op, src_layout)?, strided_layout(op, dst_layout)?);
    let mut launch = dev.stream.launch_builder(&f);
    launch.arg(&*src.buf).arg(&*dst.buf).arg(&n_arg).arg(&ls).arg(&ld);
    // SAFETY: cast_<s>_<d>(const S*, D*, i64 n, StridedLayout, StridedLayout) reads n elements
    // through `ls` and writes n through `ld`, both inside their buffers (distinct storages).
    // The destination is device memory written by the kernel, so a shared handle suffices.
    unsafe { launch.launch(elementwise_config(n)) }.map_err(|e| launch_error(op, &kernel, e))?;
    Ok(())
}
