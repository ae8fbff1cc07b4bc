//! # nabla
//!
//! A deep-learning framework whose GPU work runs on handwritten CUDA C kernels (`kernels/*.cu`),
//! compiled with NVRTC at build time (or at first use), and whose every op has a CPU reference
//! implementation that the tests hold the kernels to.
//!
//! The layers, top to bottom: [`Tensor`] (a view over shared storage) → the ops
//! ([`ops`], one file per family: API, CPU reference, CUDA launch) → the backends ([`cpu`] computes
//! in each op's own dtype over slices on a thread pool; [`cuda`] owns devices, buffers and
//! modules) → `kernels/*.cu`. Each op also keeps its f64 reference, the definition the tests
//! hold both backends to ([`cpu::reference`]).
//!
//! ```
//! use nabla::{DType, Device, Generator, Tensor};
//! # fn main() -> nabla::Result<()> {
//! let device = Device::Cpu; // or Device::cuda_if_available()
//! let mut rng = Generator::new(0);
//! let x = Tensor::randn(&[4, 3], DType::F32, &device, &mut rng)?;
//! let w = Tensor::randn(&[3, 2], DType::F32, &device, &mut rng)?;
//! let y = x.matmul(&w)?.relu()?.sum(&[1], false)?;
//! assert_eq!(y.shape(), &[4]);
//! # Ok(())
//! # }
//! ```

pub mod amp;
mod autograd;
pub mod cpu;
pub mod cuda;
pub mod data;
mod device;
mod dtype;
mod error;
pub mod io;
mod layout;
pub mod metrics;
pub mod nn;
pub mod ops;
pub mod optim;
mod rng;
mod storage;
mod tensor;
pub mod train;
pub mod vision;
pub mod viz;

pub use amp::{Precision, autocast};
pub use autograd::{NoGradGuard, is_anomaly_enabled, is_grad_enabled, no_grad, set_detect_anomaly, take_anomaly};
pub use device::Device;
pub use dtype::{DType, Element};
pub use error::{Error, Result};
pub use layout::{Layout, StridedOffsets, broadcast_shapes, contiguous_strides};
pub use ops::binary::BinaryOp;
pub use ops::conv::Conv2dOptions;
pub use ops::pool::Pool2dOptions;
pub use ops::reduce::ReduceOp;
pub use ops::unary::{UnaryOp, erf};
pub use rng::Generator;
pub use storage::host_memory_bytes;
pub use tensor::Tensor;

pub use cpu::{num_threads, set_num_threads};
pub use cuda::gemm::{float32_matmul_precision, set_float32_matmul_precision};
pub use cuda::graph::CudaGraph;
