//! The CUDA backend: driver probing, one context and stream per GPU, cuBLAS handles, the embedded
//! kernel modules (loaded once, lazily), and the launchers of each kernel family.
//!
//! A machine without the driver is a normal case: `probe()` reports it and every entry point
//! returns `Error::NoCuda` with the reason; nothing here panics for lack of a GPU.

pub mod abi;
pub mod bandwidth;
mod device;
pub mod divergence;
pub mod divergence_unfused;
pub mod elementwise;
pub mod linear_divergence;
pub mod matmul;
mod modules;
pub mod norm;
mod probe;

pub use device::{CudaBuf, CudaDevice, CudaStorage};
pub use modules::{
    compiled_by, compiled_by_nvcc, kernel_targets, nvrtc_available, nvrtc_ptx, EmbeddedModule, MODULES,
};
pub use probe::{probe, GpuInfo, Probe};
