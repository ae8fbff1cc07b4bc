//! The ops. Each file holds one family: its public methods on [`Tensor`](crate::Tensor), its CPU
//! reference (computing in f64 unless stated) and its CUDA launch (`kernels/<family>.cu`).
//! Each family also lists the kernels its launches can name, so a test can check that every
//! one of them exists in the compiled modules.

pub mod attention;
pub mod batch_norm;
pub mod binary;
pub mod conv;
pub mod copy;
pub mod fill;
pub mod index;
pub mod layer_norm;
pub mod loss;
pub mod matmul;
pub mod pool;
pub mod reduce;
pub mod softmax;
pub mod unary;

/// Every kernel the host side can launch, as (module, kernel name).
pub fn launchable_kernels() -> Vec<(&'static str, String)> {
    let mut all = Vec::new();
    all.extend(unary::kernel_names().into_iter().map(|k| ("unary", k)));
    all.extend(binary::kernel_names().into_iter().map(|k| ("binary", k)));
    all.extend(reduce::kernel_names().into_iter().map(|k| ("reduce", k)));
    all.extend(softmax::kernel_names().into_iter().map(|k| ("softmax", k)));
    all.extend(matmul::kernel_names().into_iter().map(|k| ("matmul", k)));
    all.extend(copy::kernel_names().into_iter().map(|k| ("copy", k)));
    all.extend(index::kernel_names().into_iter().map(|k| ("index", k)));
    all.extend(fill::kernel_names().into_iter().map(|k| ("fill", k)));
    all.extend(loss::kernel_names().into_iter().map(|k| ("loss", k)));
    all.extend(conv::kernel_names().into_iter().map(|k| ("conv2d", k)));
    all.extend(pool::kernel_names().into_iter().map(|k| ("pool", k)));
    all.extend(batch_norm::kernel_names().into_iter().map(|k| ("batch_norm", k)));
    all.extend(layer_norm::kernel_names().into_iter().map(|k| ("layer_norm", k)));
    all.extend(attention::kernel_names().into_iter().map(|k| ("attention", k)));
    all.extend(attention::tensor_core_kernel_names().into_iter().map(|k| ("attention_tc", k)));
    all.extend(crate::optim::kernel_names().into_iter().map(|k| ("optim", k)));
    all
}

/// A CPU tensor's elements in logical order as f64 (the CPU references' input); `op` names the
/// caller in the error for a CUDA tensor.
pub(crate) fn host_values(op: &'static str, t: &crate::Tensor) -> crate::Result<Vec<f64>> {
    match t.storage() {
        crate::storage::StorageRef::Cpu(s) => Ok(s.gather_f64(&t.layout)),
        crate::storage::StorageRef::Cuda(_) => Err(crate::Error::invalid(op, "expected a CPU tensor")),
    }
}

/// A CPU tensor's elements in logical order as `T` (the fast paths' dense input), to read:
/// borrowed from the storage, under its read lock, when the tensor is contiguous and holds `T`;
/// gathered into a new vector otherwise (a strided view, another dtype). `op` names the caller in
/// the error for a CUDA tensor.
pub(crate) fn host_typed<'a, T: crate::Element>(
    op: &'static str,
    t: &'a crate::Tensor,
) -> crate::Result<HostSlice<'a, T>> {
    match t.storage() {
        crate::storage::StorageRef::Cpu(s) => {
            if t.is_contiguous() && s.typed::<T>().is_some() {
                Ok(HostSlice::Borrowed(s, t.offset(), t.numel()))
            } else {
                Ok(HostSlice::Gathered(s.gather::<T>(&t.layout)))
            }
        }
        crate::storage::StorageRef::Cuda(_) => Err(crate::Error::invalid(op, "expected a CPU tensor")),
    }
}

/// A tensor's elements as a dense slice: see [`host_typed`].
pub(crate) enum HostSlice<'a, T> {
    /// Storage of `T` under its read lock, with the view's offset and length.
    Borrowed(std::sync::RwLockReadGuard<'a, crate::storage::CpuStorage>, usize, usize),
    /// A gathered copy.
    Gathered(Vec<T>),
}

impl<T: crate::Element> std::ops::Deref for HostSlice<'_, T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        match self {
            // `host_typed` borrows only storage of `T`, so `typed` is always `Some` here.
            HostSlice::Borrowed(storage, offset, len) => {
                storage.typed::<T>().map_or(&[], |v| &v[*offset..*offset + len])
            }
            HostSlice::Gathered(v) => v,
        }
    }
}

/// A CUDA tensor's device buffer; `op` names the caller in the error for a CPU tensor.
pub(crate) fn device_buffer<'a>(op: &'static str, t: &'a crate::Tensor) -> crate::Result<&'a crate::cuda::CudaStorage> {
    match t.storage() {
        crate::storage::StorageRef::Cuda(s) => Ok(s),
        crate::storage::StorageRef::Cpu(_) => Err(crate::Error::invalid(op, "expected a CUDA tensor")),
    }
}
