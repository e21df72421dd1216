//! Distillation: the divergences between the teacher's and the student's next-token distributions
//! (the GKD trainer and RL + GKD build on them).
//!
//! `divergence` runs on whichever device the logits live: the CPU reference
//! (`divergence::divergence_fwd_bwd`, f32 or f64) or the fused CUDA kernel
//! (`backend::cuda::divergence`, f32 or bf16).

pub mod divergence;
pub mod evaluate;
pub mod run;
pub mod sft;
pub mod trainer;

pub use divergence::{divergence_fwd_bwd, Divergence, DivergenceOut, DIVERGENCE_NAMES};
