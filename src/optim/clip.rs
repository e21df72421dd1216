//! Gradient clipping by global L2 norm, as `torch.nn.utils.clip_grad_norm_`: with
//! n = ‖(g_1, …, g_k)‖₂ over every gradient element, each gradient is scaled by
//! min(1, max_norm / (n + 1e-6)). Gradients live in one flat buffer; the norm and the scaling are
//! backend ops (the sum of squares accumulated in f64 on the CPU).
//!
//! A NaN or infinite norm leaves the gradients untouched and comes back as an error
//! (`NonFiniteGradNorm`), so the trainer can stop and keep its last good checkpoint.

use crate::error::{Error, Result};
use crate::tensor::Tensor;
use std::fmt;

/// The global L2 norm of a gradient buffer.
pub fn global_norm(grads: &Tensor) -> Result<f32> {
    Ok(grads.sum_squares()?.sqrt() as f32)
}

/// The gradient norm was NaN or infinite: a diverged step or an overflow.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NonFiniteGradNorm {
    pub norm: f32,
}

impl fmt::Display for NonFiniteGradNorm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the gradient norm is {}: training diverged or overflowed (try a lower learning rate or loss temperature)",
            self.norm
        )
    }
}

impl std::error::Error for NonFiniteGradNorm {}

impl From<NonFiniteGradNorm> for Error {
    fn from(e: NonFiniteGradNorm) -> Error {
        Error::Msg(e.to_string())
    }
}

/// Clipping to a maximum global norm (`f32::INFINITY`: measure the norm, never scale).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GradClip {
    max_norm: f32,
}

impl GradClip {
    pub fn new(max_norm: f32) -> Result<GradClip> {
        if max_norm.is_nan() || max_norm <= 0.0 {
            return Err(Error::Msg(format!(
                "gradient clipping: max norm {max_norm} must be positive (use infinity to disable clipping)"
            )));
        }
        Ok(GradClip { max_norm })
    }

    pub fn max_norm(&self) -> f32 {
        self.max_norm
    }

    /// Scales the gradients in place if their global norm exceeds the maximum; returns the norm
    /// before clipping, or `NonFiniteGradNorm` (as an error) with the gradients untouched.
    pub fn clip(&self, grads: &mut Tensor) -> Result<f32> {
        let norm = global_norm(grads)?;
        if !norm.is_finite() {
            return Err(NonFiniteGradNorm { norm }.into());
        }
        let coef = (self.max_norm as f64 / (norm as f64 + 1e-6)).min(1.0);
        if coef < 1.0 {
            grads.scale_(coef as f32 as f64)?;
        }
        Ok(norm)
    }
}
