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

/// A CPU tensor's elements in logical order as `T` (the fast paths' dense input); `op` names
/// the caller in the error for a CUDA tensor.
pub(crate) fn host_typed<T: crate::Element>(op: &'static str, t: &crate::Tensor) -> crate::Result<Vec<T>> {
    match t.storage() {
        crate::storage::StorageRef::Cpu(s) => Ok(s.gather::<T>(&t.layout)),
        crate::storage::StorageRef::Cuda(_) => Err(crate::Error::invalid(op, "expected a CPU tensor")),
    }
}

/// A CUDA tensor's device buffer; `op` names the caller in the error for a CPU tensor.
pub(crate) fn device_buffer<'a>(op: &'static str, t: &'a crate::Tensor) -> crate::Result<&'a crate::cuda::CudaStorage> {
    match t.storage() {
        crate::storage::StorageRef::Cuda(s) => Ok(s),
        crate::storage::StorageRef::Cpu(_) => Err(crate::Error::invalid(op, "expected a CUDA tensor")),
    }
}
