//! Backends: `cpu` is the f32 reference for every op; `cuda` runs the same ops on NVIDIA GPUs.

pub mod cpu;
pub mod cuda;
