//! Backends: the element types, shapes and layouts they compute on, the descriptions of each op,
//! the contract every backend implements (`BackendStorage`), and the two backends: `cpu`, the
//! reference for every op, and `cuda`.
//!
//! This layer imports nothing from the layers above it (tensor, autograd, model, …).

mod check;
mod contract;
pub mod cpu;
pub mod cuda;
mod device;
mod divergence;
mod dtype;
pub mod ops;
mod shape;

pub use contract::{BackendStorage, LinearLossOut, LossTarget, View};
pub use cpu::{CpuStorage, Element};
pub use device::{Device, DeviceRequest};
pub use divergence::{Divergence, DEFAULT_ALPHA, DEFAULT_BETA, DIVERGENCE_NAMES};
pub use dtype::DType;
pub use shape::{Layout, Shape};
