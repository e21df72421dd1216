//! Distillation: the GKD trainer (and SFT and RL + GKD on the same loop, with its rewards), whole
//! runs with metrics and checkpoints, and evaluation during training. The divergences themselves are backend ops
//! (`backend::Divergence`, re-exported here).

pub mod evaluate;
pub mod phases;
pub mod reward;
pub mod rl;
pub mod run;
pub mod trainer;

pub use crate::backend::{Divergence, DIVERGENCE_NAMES};
