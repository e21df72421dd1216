//! Optimization on f32 master weights: AdamW (as `torch.optim.AdamW`), learning-rate schedules
//! (as `transformers`' schedules with warmup), and gradient clipping by global L2 norm.
//!
//! Parameters, gradients and moments are flat tensors on the model's device (`model::ParamStore`);
//! the per-element math runs in the backend (`adamw_step`, `sum_squares`, `scale`).

pub mod adamw;
pub mod clip;
pub mod schedule;

pub use adamw::{AdamW, AdamWConfig, ParamGroup};
pub use clip::{global_norm, GradClip, NonFiniteGradNorm};
pub use schedule::{LrSchedule, ScheduleKind};
