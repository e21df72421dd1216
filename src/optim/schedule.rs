//! Learning-rate schedules, as `transformers.optimization` defines them. With s the number of
//! optimizer steps already taken (0 for the first step, as the scheduler's `current_step`),
//! W warmup steps and T total steps, the multiplier of the peak learning rate is:
//!
//! ```text
//! warmup (s < W):  s / max(1, W)                              (so the very first step has lr 0)
//! constant:        1
//! linear:          max(0, (T − s) / max(1, T − W))            get_linear_schedule_with_warmup
//! cosine:          p = (s − W) / max(1, T − W)
//!                  f = ½·(1 + cos(π·p)),  floor + (1 − floor)·f
//!                      get_cosine_with_min_lr_schedule_with_warmup(min_lr_rate = floor, num_cycles = ½);
//!                      floor = 0 is get_cosine_schedule_with_warmup
//! ```
//!
//! One departure: past T the cosine stays at its floor (transformers' cosine would rise again).

use crate::error::{Error, Result};
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ScheduleKind {
    Constant,
    Linear,
    /// Cosine decay to `min_lr_ratio` × the peak learning rate.
    Cosine {
        min_lr_ratio: f64,
    },
}

impl FromStr for ScheduleKind {
    type Err = Error;
    /// `constant`, `linear` or `cosine` (to 0).
    fn from_str(s: &str) -> Result<ScheduleKind> {
        match s {
            "constant" => Ok(ScheduleKind::Constant),
            "linear" => Ok(ScheduleKind::Linear),
            "cosine" => Ok(ScheduleKind::Cosine { min_lr_ratio: 0.0 }),
            other => Err(Error::Msg(format!(
                "unknown learning-rate schedule {other:?}: use constant, linear or cosine"
            ))),
        }
    }
}

/// A schedule bound to a peak learning rate and a run length.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LrSchedule {
    pub kind: ScheduleKind,
    pub peak_lr: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
}

impl LrSchedule {
    pub fn new(kind: ScheduleKind, peak_lr: f64, warmup_steps: u64, total_steps: u64) -> Result<LrSchedule> {
        let bad = |what: String| Err(Error::Msg(format!("learning-rate schedule: {what}")));
        if !(peak_lr.is_finite() && peak_lr >= 0.0) {
            return bad(format!("peak learning rate {peak_lr} must be finite and non-negative"));
        }
        if let ScheduleKind::Cosine { min_lr_ratio } = kind {
            if !(0.0..=1.0).contains(&min_lr_ratio) {
                return bad(format!(
                    "the cosine floor {min_lr_ratio} must be a fraction of the peak in [0, 1]"
                ));
            }
        }
        if kind != ScheduleKind::Constant && warmup_steps > total_steps {
            return bad(format!("{warmup_steps} warmup steps exceed the {total_steps} total steps"));
        }
        Ok(LrSchedule { kind, peak_lr, warmup_steps, total_steps })
    }

    /// The multiplier of the peak learning rate after `step` optimizer steps.
    pub fn multiplier(&self, step: u64) -> f64 {
        let (s, w, t) = (step as f64, self.warmup_steps as f64, self.total_steps as f64);
        if step < self.warmup_steps {
            return s / w.max(1.0);
        }
        match self.kind {
            ScheduleKind::Constant => 1.0,
            ScheduleKind::Linear => ((t - s) / (t - w).max(1.0)).max(0.0),
            ScheduleKind::Cosine { min_lr_ratio } => {
                let progress = ((s - w) / (t - w).max(1.0)).min(1.0);
                let f = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
                (min_lr_ratio + (1.0 - min_lr_ratio) * f).max(0.0)
            }
        }
    }

    /// The learning rate for the optimizer step that follows `step` steps already taken.
    pub fn lr(&self, step: u64) -> f32 {
        (self.peak_lr * self.multiplier(step)) as f32
    }
}
