//! Where and in which precision a command computes: `--device` and `--dtype`, shared by every
//! command that runs a model.

use anyhow::{bail, Result};
use gkd::model::Model;
use gkd::tensor::{Device, DeviceRequest};
use gkd::{DType, Error};

#[derive(clap::Args, Clone, Debug)]
pub struct ComputeArgs {
    /// auto (the first GPU when there is one, else the CPU), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: DeviceRequest,
    /// The dtype weights and activations compute in: auto (bf16 on a GPU, f32 on the CPU), f32 or
    /// bf16. Training keeps f32 master weights and optimizer state either way.
    #[arg(long, default_value = "auto")]
    pub dtype: String,
}

/// A resolved device and compute dtype.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Compute {
    pub device: Device,
    pub dtype: DType,
}

impl ComputeArgs {
    /// The device (`auto` resolved) and the dtype for it.
    pub fn resolve(&self) -> Result<Compute> {
        let device = self.device.resolve();
        compute_on(device, &self.dtype)
    }
}

/// The compute dtype named by `--dtype` on `device`.
pub fn compute_on(device: Device, dtype: &str) -> Result<Compute> {
    let dtype = match (dtype, device) {
        ("auto", Device::Cpu) | ("f32", _) => DType::F32,
        ("auto", Device::Cuda(_)) | ("bf16", Device::Cuda(_)) => DType::BF16,
        ("bf16", Device::Cpu) => {
            bail!("--dtype bf16 computes on a GPU; the CPU backend computes in f32 (use --dtype f32 or auto)")
        }
        (d, _) => bail!("unknown --dtype `{d}`: use auto, f32 or bf16"),
    };
    Ok(Compute { device, dtype })
}

impl Compute {
    /// `model` (loaded on the CPU in f32) moved to this device and dtype; `train` keeps f32
    /// masters beside bf16 weights.
    pub fn place(&self, model: &Model, train: bool) -> gkd::Result<Model> {
        model.to_compute(self.device, self.dtype, train)
    }
}

/// Runs `f` where `args` say. With `--device auto`, an op that has no CUDA kernel sends the work
/// back to the CPU (in f32) with a note on stderr; with an explicit `cuda` it is an error.
pub fn on_device<T>(args: &ComputeArgs, what: &str, f: impl Fn(Compute) -> gkd::Result<T>) -> Result<T> {
    let c = args.resolve()?;
    match f(c) {
        Err(e @ Error::Unsupported { .. })
            if args.device == DeviceRequest::Auto && c.device != Device::Cpu =>
        {
            eprintln!("note: {e}; {what} on the CPU instead");
            Ok(f(compute_on(Device::Cpu, "f32")?)?)
        }
        r => Ok(r?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtype_follows_the_device() {
        assert_eq!(compute_on(Device::Cpu, "auto").unwrap().dtype, DType::F32);
        assert_eq!(compute_on(Device::Cuda(0), "auto").unwrap().dtype, DType::BF16);
        assert_eq!(compute_on(Device::Cuda(1), "f32").unwrap().dtype, DType::F32);
        let e = compute_on(Device::Cpu, "bf16").unwrap_err().to_string();
        assert!(e.contains("GPU"), "{e}");
        assert!(compute_on(Device::Cpu, "f16").is_err());
    }
}
