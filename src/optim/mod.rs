//! Optimization on f32 master weights: AdamW (as `torch.optim.AdamW`), learning-rate schedules
//! (as `transformers`' schedules with warmup), and gradient clipping by global L2 norm.
//!
//! Parameters and gradients are plain `&mut [f32]` / `&[f32]` slices, one per parameter tensor,
//! always passed in the same order; the optimizer state follows that order.

pub mod adamw;
pub mod clip;
pub mod schedule;

pub use adamw::{AdamW, AdamWConfig};
pub use clip::{global_norm, GradClip, NonFiniteGradNorm};
pub use schedule::{LrSchedule, ScheduleKind};
