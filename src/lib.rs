//! gkd: on-policy knowledge distillation (Generalized Knowledge Distillation, Agarwal et al. 2024)
//! of language models, on hand-written CUDA kernels with an f32 CPU reference backend.
//!
//! Layout (see DESIGN.md in the shared folder): `tensor` (shape, dtype, storage on a device),
//! `backend` (`cpu`: the reference for every op; `cuda`: context, kernels, launchers),
//! `autograd` (a tape of coarse ops with hand-written backward passes).

pub mod autograd;
pub mod backend;
pub mod bench;
pub mod data;
pub mod distill;
pub mod error;
pub mod eval;
pub mod generate;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod tensor;

pub use error::{Error, Result};
pub use tensor::{DType, Device, Shape, Tensor};
