//! Where a training step's time goes: sampling, the teacher's forward, the student's forward, the
//! loss (the fused output head with the divergence or cross-entropy, whose gradient it computes in
//! the same pass), the student's backward, and the optimizer (clipping and AdamW). On a GPU the
//! clock waits for the device at each boundary, so each phase holds the work it queued.

use crate::error::Result;
use crate::tensor::Device;
use std::time::Instant;

/// Seconds per phase, summed over a step's micro-batches.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct PhaseTimes {
    pub sampling: f64,
    pub teacher: f64,
    pub student_forward: f64,
    pub loss: f64,
    pub backward: f64,
    pub optimizer: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Sampling,
    Teacher,
    StudentForward,
    Loss,
    Backward,
    Optimizer,
}

impl PhaseTimes {
    /// (metrics name, seconds) of every phase.
    pub fn fields(&self) -> [(&'static str, f64); 6] {
        [
            ("seconds_sampling", self.sampling),
            ("seconds_teacher", self.teacher),
            ("seconds_student_forward", self.student_forward),
            ("seconds_loss", self.loss),
            ("seconds_backward", self.backward),
            ("seconds_optimizer", self.optimizer),
        ]
    }

    fn slot(&mut self, p: Phase) -> &mut f64 {
        match p {
            Phase::Sampling => &mut self.sampling,
            Phase::Teacher => &mut self.teacher,
            Phase::StudentForward => &mut self.student_forward,
            Phase::Loss => &mut self.loss,
            Phase::Backward => &mut self.backward,
            Phase::Optimizer => &mut self.optimizer,
        }
    }
}

/// Splits wall time into phases; off, it neither waits for the device nor records anything.
pub struct PhaseClock {
    device: Option<Device>,
    last: Instant,
    pub times: PhaseTimes,
}

impl PhaseClock {
    /// A clock on `device` (waiting for it at each boundary).
    pub fn on(device: Device) -> PhaseClock {
        PhaseClock { device: Some(device), last: Instant::now(), times: PhaseTimes::default() }
    }

    pub fn off() -> PhaseClock {
        PhaseClock { device: None, last: Instant::now(), times: PhaseTimes::default() }
    }

    /// Restarts the current phase's time from now (what came before belongs to no phase).
    pub fn start(&mut self) -> Result<()> {
        if let Some(d) = self.device {
            d.synchronize()?;
            self.last = Instant::now();
        }
        Ok(())
    }

    /// The time since the last boundary goes to `p`.
    pub fn lap(&mut self, p: Phase) -> Result<()> {
        if let Some(d) = self.device {
            d.synchronize()?;
            let now = Instant::now();
            *self.times.slot(p) += (now - self.last).as_secs_f64();
            self.last = now;
        }
        Ok(())
    }
}
