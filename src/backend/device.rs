//! Where a tensor lives, and how a user names it (`--device auto|cpu|cuda|cuda:N`).

use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Device {
    Cpu,
    Cuda(usize),
}

/// What the user asked for on the command line; `Auto` picks the first GPU when one is usable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceRequest {
    Auto,
    Exact(Device),
}

impl DeviceRequest {
    /// The device to run on: `Auto` falls back to the CPU when no GPU can be used.
    pub fn resolve(self) -> Device {
        match self {
            DeviceRequest::Exact(d) => d,
            DeviceRequest::Auto => {
                if super::cuda::probe().usable_devices() > 0 {
                    Device::Cuda(0)
                } else {
                    Device::Cpu
                }
            }
        }
    }
}

impl FromStr for DeviceRequest {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(DeviceRequest::Auto),
            "cpu" => Ok(DeviceRequest::Exact(Device::Cpu)),
            "cuda" => Ok(DeviceRequest::Exact(Device::Cuda(0))),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(DeviceRequest::Exact(Device::Cuda(n))),
                _ => Err(format!("unknown device `{s}`: use auto, cpu, cuda or cuda:N")),
            },
        }
    }
}

impl Device {
    /// The most device memory in use since the last `reset_peak_memory`, in bytes (the CUDA
    /// memory pool's high-water mark); None on the CPU.
    pub fn peak_memory(self) -> crate::error::Result<Option<u64>> {
        match self {
            Device::Cpu => Ok(None),
            Device::Cuda(i) => Ok(Some(super::cuda::CudaDevice::get(i)?.memory()?.used_peak)),
        }
    }

    /// Starts `peak_memory` again from what is in use now.
    pub fn reset_peak_memory(self) -> crate::error::Result<()> {
        match self {
            Device::Cpu => Ok(()),
            Device::Cuda(i) => super::cuda::CudaDevice::get(i)?.reset_peak_memory(),
        }
    }
}

impl Device {
    /// Waits until the work queued on this device has run (nothing to wait for on the CPU).
    pub fn synchronize(self) -> crate::error::Result<()> {
        match self {
            Device::Cpu => Ok(()),
            Device::Cuda(i) => super::cuda::CudaDevice::get(i)?.synchronize(),
        }
    }

    /// Records the work `f` queues on this device into a CUDA graph, replayed by `Graph::launch`
    /// (see `backend::cuda::graph` for what `f` may do). The CPU has no graphs: an error.
    pub fn capture(
        self,
        f: impl FnOnce() -> crate::error::Result<()>,
    ) -> crate::error::Result<super::cuda::Graph> {
        match self {
            Device::Cpu => Err(crate::error::Error::Msg("CUDA graphs need a CUDA device".into())),
            Device::Cuda(i) => super::cuda::CudaDevice::get(i)?.capture(f),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_names() {
        assert_eq!("cpu".parse(), Ok(DeviceRequest::Exact(Device::Cpu)));
        assert_eq!("cuda:3".parse(), Ok(DeviceRequest::Exact(Device::Cuda(3))));
        assert_eq!("cuda".parse(), Ok(DeviceRequest::Exact(Device::Cuda(0))));
        assert_eq!("auto".parse(), Ok(DeviceRequest::Auto));
        assert!("gpu".parse::<DeviceRequest>().is_err());
        assert!("cuda:x".parse::<DeviceRequest>().is_err());
    }
}
