//! One AdamW update per element, in PyTorch's order of f32 operations (`optim::adamw` derives the
//! scalars; see `ops::AdamWStep`):
//!   p ← p·decay
//!   m ← m + (1−β1)·(g − m)           torch's lerp_, one fused multiply-add
//!   v ← β2·v + (1−β2)·g²
//!   p ← p + neg_step·m / (√v / bc2 + ε)
//! and, when asked, the updated weights copied into the model's compute-dtype weights (f32, or
//! bf16 rounded to nearest even).

use crate::backend::ops::AdamWStep;
use half::bf16;
use rayon::prelude::*;

/// Where the updated weights are also written: the model's compute-dtype weights, (N).
pub enum WeightsOut<'a> {
    F32(&'a mut [f32]),
    BF16(&'a mut [bf16]),
}

pub fn adamw_step(
    p: &mut [f32], // (N) master weights
    g: &[f32],     // (N)
    m: &mut [f32], // (N)
    v: &mut [f32], // (N)
    h: &AdamWStep,
    out: Option<WeightsOut<'_>>,
) {
    let decays = h.decay != 1.0;
    p.par_iter_mut()
        .zip(m.par_iter_mut())
        .zip(v.par_iter_mut())
        .zip(g.par_iter())
        .with_min_len(4096)
        .for_each(|(((p, m), v), &g)| {
            if decays {
                *p *= h.decay;
            }
            *m = h.one_minus_beta1.mul_add(g - *m, *m);
            *v = *v * h.beta2 + h.one_minus_beta2 * g * g;
            let denom = v.sqrt() / h.bc2_sqrt + h.eps;
            *p += h.neg_step_size * *m / denom;
        });
    match out {
        None => {}
        Some(WeightsOut::F32(o)) => o.copy_from_slice(p),
        Some(WeightsOut::BF16(o)) => {
            o.par_iter_mut().zip(p.par_iter()).with_min_len(4096).for_each(|(o, &p)| *o = bf16::from_f32(p))
        }
    }
}
