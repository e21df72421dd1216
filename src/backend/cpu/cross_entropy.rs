//! Cross-entropy of each row of logits against its target, fused with the gradient:
//!
//! loss_r = scale·(lse(z_r) − z_r[y_r])
//! ∂loss_r/∂z_rk = scale·(softmax(z_r)_k − [k = y_r])
//!
//! Rows whose target is `ops::IGNORE` have loss 0 and gradient 0 (the caller picks `scale`, e.g.
//! 1 / the number of counted tokens). With row weights w (N), row r's scale is scale·w_r (w_r may
//! be negative: the policy-gradient term of RL, −A·ln p(y), is the row weight A·(1 − α)).

use super::softmax::log_sum_exp;
use super::Real;
use crate::backend::ops::IGNORE;
use rayon::prelude::*;

/// (row losses (N), gradient (N, V) or empty when `want_grad` is false).
pub fn cross_entropy_fwd_bwd<T: Real>(
    logits: &[T],    // (N, V)
    targets: &[u32], // (N)
    vocab: usize,    // V
    scale: f64,
    want_grad: bool,
) -> (Vec<T>, Vec<T>) {
    cross_entropy_weighted_fwd_bwd(logits, targets, None, vocab, scale, want_grad)
}

/// As `cross_entropy_fwd_bwd`, row r's loss and gradient multiplied by `weights[r]` when given.
pub fn cross_entropy_weighted_fwd_bwd<T: Real>(
    logits: &[T],            // (N, V)
    targets: &[u32],         // (N)
    weights: Option<&[f32]>, // (N)
    vocab: usize,            // V
    scale: f64,
    want_grad: bool,
) -> (Vec<T>, Vec<T>) {
    let one = T::one();
    let mut grad = if want_grad { vec![T::zero(); logits.len()] } else { Vec::new() };
    let row = |(r, g): (usize, Option<&mut [T]>)| -> T {
        let y = targets[r];
        if y == IGNORE {
            return T::zero();
        }
        let scale_t = T::from_f64(weights.map_or(scale, |w| scale * w[r] as f64));
        let z = &logits[r * vocab..(r + 1) * vocab];
        let lse = log_sum_exp(z, one);
        if let Some(g) = g {
            for (gk, &zk) in g.iter_mut().zip(z) {
                *gk = (zk - lse).exp() * scale_t;
            }
            g[y as usize] = g[y as usize] - scale_t;
        }
        scale_t * (lse - z[y as usize])
    };
    let losses = if want_grad {
        grad.par_chunks_mut(vocab).enumerate().map(|(r, g)| row((r, Some(g)))).collect()
    } else {
        (0..targets.len()).into_par_iter().map(|r| row((r, None))).collect()
    };
    (losses, grad)
}
