//! The memory behind tensors: a typed host vector or a device buffer.

use crate::cuda::CudaStorage;
use crate::dtype::{DType, Element};
use crate::layout::Layout;
use crate::{Error, Result};
use half::{bf16, f16};
use std::sync::{RwLock, RwLockReadGuard};

/// A tensor's storage. Views share it through an `Arc`. Host memory sits behind a lock so
/// in-place updates (optimizer steps, gradient accumulation) can write it; device memory is
/// written by kernels through its pointer.
pub(crate) enum Storage {
    Cpu(RwLock<CpuStorage>),
    Cuda(CudaStorage),
}

/// A borrowed view of a storage: host data under a read lock, or the device buffer.
pub(crate) enum StorageRef<'a> {
    Cpu(RwLockReadGuard<'a, CpuStorage>),
    Cuda(&'a CudaStorage),
}

impl Storage {
    /// Borrows the storage for reading.
    pub(crate) fn get(&self) -> StorageRef<'_> {
        match self {
            Storage::Cpu(lock) => StorageRef::Cpu(lock.read().unwrap_or_else(|e| e.into_inner())),
            Storage::Cuda(s) => StorageRef::Cuda(s),
        }
    }
}

/// Host storage, one variant per dtype.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum CpuStorage {
    F32(Vec<f32>),
    F64(Vec<f64>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    I64(Vec<i64>),
}

/// Runs `$body` with `$v` bound to the typed vector inside a `CpuStorage`, whatever its dtype.
macro_rules! with_cpu_vec {
    ($storage:expr, $v:ident => $body:expr) => {
        match $storage {
            $crate::storage::CpuStorage::F32($v) => $body,
            $crate::storage::CpuStorage::F64($v) => $body,
            $crate::storage::CpuStorage::F16($v) => $body,
            $crate::storage::CpuStorage::BF16($v) => $body,
            $crate::storage::CpuStorage::I64($v) => $body,
        }
    };
}
pub(crate) use with_cpu_vec;

impl CpuStorage {
    /// Storage owning `data`, without conversion.
    pub(crate) fn from_vec<T: Element>(data: Vec<T>) -> CpuStorage {
        match T::DTYPE {
            DType::F32 => CpuStorage::F32(reinterpret_vec(data)),
            DType::F64 => CpuStorage::F64(reinterpret_vec(data)),
            DType::F16 => CpuStorage::F16(reinterpret_vec(data)),
            DType::BF16 => CpuStorage::BF16(reinterpret_vec(data)),
            DType::I64 => CpuStorage::I64(reinterpret_vec(data)),
        }
    }

    /// The elements as `T`, if this storage holds `T`.
    pub(crate) fn typed_mut<T: Element>(&mut self) -> Option<&mut [T]> {
        if self.dtype() != T::DTYPE {
            return None;
        }
        let (ptr, len) = with_cpu_vec!(self, v => (v.as_mut_ptr().cast::<T>(), v.len()));
        // SAFETY: the storage holds exactly T (equal DTYPEs mean equal types); the borrow of
        // `self` is held by the returned slice.
        Some(unsafe { std::slice::from_raw_parts_mut(ptr, len) })
    }

    /// The elements as `T`, if this storage holds `T`.
    pub(crate) fn typed<T: Element>(&self) -> Option<&[T]> {
        if self.dtype() != T::DTYPE {
            return None;
        }
        let (ptr, len) = with_cpu_vec!(self, v => (v.as_ptr().cast::<T>(), v.len()));
        // SAFETY: the storage holds exactly T (equal DTYPEs mean equal types).
        Some(unsafe { std::slice::from_raw_parts(ptr, len) })
    }

    /// The elements, if they have the element type of `_like`.
    pub(crate) fn typed_like<T: Element>(&self, _like: &[T]) -> Option<&[T]> {
        self.typed()
    }

    /// The elements, if this is i64 storage.
    pub(crate) fn as_i64(&self) -> Option<&[i64]> {
        match self {
            CpuStorage::I64(v) => Some(v),
            _ => None,
        }
    }

    pub(crate) fn dtype(&self) -> DType {
        match self {
            CpuStorage::F32(_) => DType::F32,
            CpuStorage::F64(_) => DType::F64,
            CpuStorage::F16(_) => DType::F16,
            CpuStorage::BF16(_) => DType::BF16,
            CpuStorage::I64(_) => DType::I64,
        }
    }

    /// The view's elements in row-major order, converted to `T`.
    pub(crate) fn gather<T: Element>(&self, layout: &Layout) -> Vec<T> {
        with_cpu_vec!(self, v => gather_converted(v, layout))
    }

    /// The view's elements in row-major order as f64: the CPU reference computes in f64.
    pub(crate) fn gather_f64(&self, layout: &Layout) -> Vec<f64> {
        self.gather::<f64>(layout)
    }

    /// The view's elements in row-major order, in the storage's own dtype (exact copy).
    pub(crate) fn gather_same(&self, layout: &Layout) -> CpuStorage {
        with_cpu_vec!(self, v => CpuStorage::from_vec(layout.offsets().map(|o| v[o]).collect()))
    }

    /// Storage of `dtype` holding `values` rounded to it.
    pub(crate) fn from_f64(dtype: DType, values: &[f64]) -> CpuStorage {
        match dtype {
            DType::F32 => CpuStorage::F32(convert_slice(values)),
            DType::F64 => CpuStorage::F64(values.to_vec()),
            DType::F16 => CpuStorage::F16(convert_slice(values)),
            DType::BF16 => CpuStorage::BF16(convert_slice(values)),
            DType::I64 => CpuStorage::I64(convert_slice(values)),
        }
    }

    /// `n` elements of `dtype` equal to `value` (rounded once); an allocation that fails is an
    /// error naming `op`.
    pub(crate) fn filled(op: &'static str, dtype: DType, n: usize, value: f64) -> Result<CpuStorage> {
        Ok(match dtype {
            DType::F32 => CpuStorage::F32(try_filled(op, n, <f32 as Element>::from_f64(value))?),
            DType::F64 => CpuStorage::F64(try_filled(op, n, value)?),
            DType::F16 => CpuStorage::F16(try_filled(op, n, <f16 as Element>::from_f64(value))?),
            DType::BF16 => CpuStorage::BF16(try_filled(op, n, <bf16 as Element>::from_f64(value))?),
            DType::I64 => CpuStorage::I64(try_filled(op, n, <i64 as Element>::from_f64(value))?),
        })
    }

    /// Reinterprets the elements as little-endian bytes (for uploads).
    pub(crate) fn as_bytes(&self) -> &[u8] {
        with_cpu_vec!(self, v => as_bytes(v))
    }

    /// Storage of `dtype` from raw bytes (for downloads). `bytes` holds whole elements.
    pub(crate) fn from_bytes(dtype: DType, bytes: &[u8]) -> CpuStorage {
        match dtype {
            DType::F32 => CpuStorage::F32(from_bytes(bytes)),
            DType::F64 => CpuStorage::F64(from_bytes(bytes)),
            DType::F16 => CpuStorage::F16(from_bytes(bytes)),
            DType::BF16 => CpuStorage::BF16(from_bytes(bytes)),
            DType::I64 => CpuStorage::I64(from_bytes(bytes)),
        }
    }
}

fn gather_converted<S: Element, T: Element>(v: &[S], layout: &Layout) -> Vec<T> {
    if S::DTYPE == T::DTYPE {
        // Same type: a plain copy, exact for every value (i64 included).
        let same: Vec<S> = crate::cpu::elementwise::map_vec(v, layout, |x| x);
        return reinterpret_vec(same);
    }
    crate::cpu::elementwise::map_vec(v, layout, |x| T::from_f64(x.to_f64()))
}

/// A `Vec<S>` as `Vec<T>` when S and T are the same type (each sealed Element type has its own
/// DTYPE, so equal DTYPEs mean equal types).
pub(crate) fn reinterpret_vec<S: Element, T: Element>(v: Vec<S>) -> Vec<T> {
    assert_eq!(S::DTYPE, T::DTYPE, "reinterpret_vec between different element types");
    // SAFETY: S and T are the same type (checked above).
    let mut v = std::mem::ManuallyDrop::new(v);
    unsafe { Vec::from_raw_parts(v.as_mut_ptr().cast::<T>(), v.len(), v.capacity()) }
}

/// A `&mut [S]` as `&mut [T]` when S and T are the same type (panics otherwise).
pub(crate) fn reinterpret_slice_mut<S: Element, T: Element>(v: &mut [S]) -> &mut [T] {
    assert_eq!(S::DTYPE, T::DTYPE, "reinterpret_slice_mut between different element types");
    // SAFETY: S and T are the same type (checked above); the borrow carries over.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<T>(), v.len()) }
}

/// [`reinterpret_slice_mut`] for slices still to be written.
pub(crate) fn reinterpret_uninit_mut<S: Element, T: Element>(
    v: &mut [std::mem::MaybeUninit<S>],
) -> &mut [std::mem::MaybeUninit<T>] {
    assert_eq!(S::DTYPE, T::DTYPE, "reinterpret_uninit_mut between different element types");
    // SAFETY: S and T are the same type (checked above), so are their MaybeUninit wrappers.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<std::mem::MaybeUninit<T>>(), v.len()) }
}

/// Refuses, before an op allocates its host output of `shape` and `dtype`, a size the machine
/// cannot hold: the element count is checked, and a large buffer (over 64 MiB) is held to
/// [`host_memory_bytes`] and then reserved once and released, so a request the allocator would
/// refuse becomes [`Error::OutOfMemory`] naming `op` instead of an abort inside the op. (Ops
/// whose outputs can outgrow their inputs call it: broadcasting, copies of views, products,
/// convolutions, lookups.)
pub(crate) fn check_allocatable(op: &'static str, shape: &[usize], dtype: DType) -> Result<()> {
    let numel = crate::layout::checked_numel(op, shape)?;
    let bytes = numel.saturating_mul(dtype.size_in_bytes());
    if bytes > 64 << 20 {
        let mut probe: Vec<u8> = Vec::new();
        reserve_host(op, &mut probe, bytes)?;
    }
    Ok(())
}

/// `n` copies of `value`, or [`Error::OutOfMemory`] naming `op` when the allocation fails
/// (instead of the abort of `vec![value; n]`).
pub(crate) fn try_filled<T: Clone>(op: &'static str, n: usize, value: T) -> Result<Vec<T>> {
    let mut v = Vec::new();
    reserve_host(op, &mut v, n)?;
    v.resize(n, value);
    Ok(v)
}

/// Reserves room for `n` values in `v`, or [`Error::OutOfMemory`] naming `op`. A request larger
/// than the machine's memory is refused before the allocator sees it: where the kernel
/// overcommits memory (`vm.overcommit_memory = 1`, common on GPU servers) such a reservation
/// succeeds, and the op then fills pages until the kernel kills the process.
fn reserve_host<T>(op: &'static str, v: &mut Vec<T>, n: usize) -> Result<()> {
    let bytes = n.saturating_mul(std::mem::size_of::<T>());
    let out_of_memory = || Error::OutOfMemory { op, bytes, device: crate::Device::Cpu };
    if host_memory_bytes().is_some_and(|total| bytes > total) {
        return Err(out_of_memory());
    }
    v.try_reserve_exact(n).map_err(|_| out_of_memory())
}

/// The machine's physical memory and swap together, in bytes (read once; `None` where the
/// system does not say): no single host buffer can be larger.
pub fn host_memory_bytes() -> Option<usize> {
    static TOTAL: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    *TOTAL.get_or_init(read_host_memory_bytes)
}

#[cfg(target_os = "linux")]
fn read_host_memory_bytes() -> Option<usize> {
    // SAFETY: sysinfo fills the struct it is given and reads nothing else.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    if unsafe { libc::sysinfo(&mut info) } != 0 {
        return None;
    }
    let unit = (info.mem_unit as usize).max(1);
    let pages = (info.totalram as usize).saturating_add(info.totalswap as usize);
    Some(pages.saturating_mul(unit)).filter(|&b| b > 0)
}

#[cfg(not(target_os = "linux"))]
fn read_host_memory_bytes() -> Option<usize> {
    None
}

fn convert_slice<T: Element>(values: &[f64]) -> Vec<T> {
    values.iter().map(|&x| T::from_f64(x)).collect()
}

fn as_bytes<T: Element>(v: &[T]) -> &[u8] {
    // SAFETY: every Element is a plain-old-data number without padding.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

fn from_bytes<T: Element>(bytes: &[u8]) -> Vec<T> {
    let n = bytes.len() / std::mem::size_of::<T>();
    let mut out: Vec<T> = vec![T::zero(); n];
    // SAFETY: `out` has room for n elements of T, every bit pattern is a valid T, and the
    // regions do not overlap.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), out.as_mut_ptr().cast::<u8>(), n * std::mem::size_of::<T>());
    }
    out
}
