//! Where a tensor lives.

/// A device: the host CPU or one CUDA GPU by ordinal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Device {
    /// Host memory; ops run the CPU reference implementation.
    Cpu,
    /// The CUDA device with this ordinal.
    Cuda(usize),
}

impl Device {
    /// `Cuda(0)` when a CUDA driver and at least one device are present, else `Cpu`.
    pub fn cuda_if_available() -> Device {
        if crate::cuda::device_count() > 0 { Device::Cuda(0) } else { Device::Cpu }
    }

    /// Waits until every op queued on this device has finished (a no-op on the CPU, whose ops
    /// finish before they return). For timing and for handing buffers to other libraries.
    pub fn synchronize(self) -> crate::Result<()> {
        match self {
            Device::Cpu => Ok(()),
            Device::Cuda(ordinal) => crate::cuda::cuda_device(ordinal)?.synchronize(),
        }
    }

    /// Whether this is a CUDA device.
    pub fn is_cuda(self) -> bool {
        matches!(self, Device::Cuda(_))
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl std::str::FromStr for Device {
    type Err = crate::Error;
    /// Parses `cpu`, `cuda`, `cuda:N` or `auto` (CUDA when available).
    fn from_str(s: &str) -> crate::Result<Self> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            "auto" => Ok(Device::cuda_if_available()),
            _ => s.strip_prefix("cuda:").and_then(|n| n.parse().ok()).map(Device::Cuda).ok_or_else(|| {
                crate::Error::invalid("device", format!("unknown device `{s}` (cpu, cuda, cuda:N, auto)"))
            }),
        }
    }
}
