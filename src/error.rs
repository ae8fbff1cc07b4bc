//! The one error type of nabla.

use crate::{DType, Device};

/// Everything that can go wrong in nabla. Messages name the op (and kernel) and the shapes.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Operand shapes do not fit the op.
    #[error("{op}: shape mismatch: {detail}")]
    ShapeMismatch {
        /// The op that rejected its operands.
        op: &'static str,
        /// The shapes involved and what was expected of them.
        detail: String,
    },
    /// Operands of one op have different dtypes.
    #[error("{op}: dtype mismatch: {lhs} vs {rhs}")]
    DTypeMismatch {
        /// The op that rejected its operands.
        op: &'static str,
        /// The first operand's dtype.
        lhs: DType,
        /// The second operand's dtype.
        rhs: DType,
    },
    /// The op does not exist for this dtype (say `exp` of an integer tensor).
    #[error("{op}: dtype {dtype} is not supported{detail}")]
    UnsupportedDType {
        /// The op that rejected its operand.
        op: &'static str,
        /// The offending dtype.
        dtype: DType,
        /// Extra context, starting with a separator, or empty.
        detail: String,
    },
    /// Operands of one op live on different devices.
    #[error("{op}: device mismatch: {lhs} vs {rhs}")]
    DeviceMismatch {
        /// The op that rejected its operands.
        op: &'static str,
        /// The first operand's device.
        lhs: Device,
        /// The second operand's device.
        rhs: Device,
    },
    /// An axis outside `-rank..rank`.
    #[error("{op}: axis {axis} is out of range for a tensor of shape {shape:?}")]
    AxisOutOfRange {
        /// The op that rejected the axis.
        op: &'static str,
        /// The axis as given.
        axis: isize,
        /// The tensor's shape.
        shape: Vec<usize>,
    },
    /// An index outside `0..size`.
    #[error("{op}: index {index} is out of range for size {size}")]
    IndexOutOfRange {
        /// The op that rejected the index.
        op: &'static str,
        /// The offending index (for device-side checks: the first one seen, or -1 if unknown).
        index: i64,
        /// The size of the indexed axis.
        size: usize,
    },
    /// Any other bad argument.
    #[error("{op}: {detail}")]
    InvalidArgument {
        /// The op that rejected the argument.
        op: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// No usable CUDA driver or device.
    #[error("CUDA is not available: {0}")]
    CudaUnavailable(String),
    /// An allocation failed, or asked for more than the machine can address.
    #[error("{op}: out of memory: {} requested on {device}", readable_bytes(*bytes))]
    OutOfMemory {
        /// The op that allocated.
        op: &'static str,
        /// The size of the failed allocation.
        bytes: usize,
        /// The device.
        device: Device,
    },
    /// NVRTC rejected a kernel module.
    #[error("kernel module `{module}` failed to compile: {log}")]
    KernelCompile {
        /// The module (`kernels/<module>.cu`).
        module: String,
        /// NVRTC's log.
        log: String,
    },
    /// A kernel could not be found or launched.
    #[error("{op}: kernel `{kernel}` failed: {detail}")]
    KernelLaunch {
        /// The op that launched it.
        op: &'static str,
        /// The kernel's name.
        kernel: String,
        /// The driver's message.
        detail: String,
    },
    /// Any other CUDA driver failure.
    #[error("{op}: CUDA driver error: {detail}")]
    Cuda {
        /// The op during which it happened.
        op: &'static str,
        /// The driver's message.
        detail: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// nabla's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn shape(op: &'static str, detail: impl Into<String>) -> Self {
        Error::ShapeMismatch { op, detail: detail.into() }
    }

    /// An [`Error::InvalidArgument`] of `op`.
    pub fn invalid(op: &'static str, detail: impl Into<String>) -> Self {
        Error::InvalidArgument { op, detail: detail.into() }
    }

    pub(crate) fn unsupported(op: &'static str, dtype: DType, detail: impl Into<String>) -> Self {
        Error::UnsupportedDType { op, dtype, detail: detail.into() }
    }
}

/// `bytes` for people: `57.9 GB`, `512 B`.
fn readable_bytes(bytes: usize) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}
