//! The CUDA backend: driver probing, one context and stream per GPU, cuBLAS handles, the embedded
//! kernel modules (loaded once, lazily), the launchers of each kernel family, and the backend
//! contract on top of them (`storage.rs`).
//!
//! A machine without the driver is a normal case: `probe()` reports it and every entry point
//! returns `Error::NoCuda` with the reason; nothing here panics for lack of a GPU.

pub mod abi;
mod activation;
mod adamw;
mod attention;
pub mod bandwidth;
mod copy;
pub mod cross_entropy;
mod decode_attention;
mod decode_state;
mod device;
pub mod divergence;
pub mod divergence_unfused;
mod elementwise;
mod embedding;
mod grad_norm;
mod graph;
mod layer_norm;
mod linear;
pub mod linear_divergence;
pub mod lt;
pub mod matmul;
mod modules;
mod norm_launch;
mod probe;
mod rms_norm;
mod rope;
pub mod sampling;
mod storage;

pub use device::{set_poison_allocations, CudaDevice, MemoryStats};
pub use graph::Graph;
pub use modules::{
    compiled_by, compiled_by_nvcc, kernel_targets, nvrtc_available, nvrtc_ptx, EmbeddedModule, MODULES,
};
pub use probe::{probe, GpuInfo, Probe};
pub use storage::{CudaBuf, CudaElem, CudaStorage};
