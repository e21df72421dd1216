//! The supervised objective: token-level cross-entropy of the student on given completions, with
//! its gradient with respect to the logits in the same pass (as the divergences do).
//!
//! One row: logits s (V entries), target y; log Q = s − lse(s);
//! loss = −log Q_y, ∂loss/∂s_k = Q_k − [k = y].

use crate::error::{shape_err, Result};
use rayon::prelude::*;

/// Loss (scale · Σ rows −log Q_y) and, per row, scale · (Q − onehot(y)), (N, V).
pub fn cross_entropy_fwd_bwd(
    logits: &[f32],  // (N, V)
    targets: &[u32], // (N)
    vocab: usize,    // V
    scale: f64,
) -> Result<(f64, Vec<f32>)> {
    if vocab == 0 || logits.len() != targets.len() * vocab {
        return shape_err(
            "cross entropy",
            format!("{} logits for {} targets of vocabulary {vocab}", logits.len(), targets.len()),
        );
    }
    if let Some(&bad) = targets.iter().find(|&&t| t as usize >= vocab) {
        return shape_err("cross entropy", format!("target {bad} outside the vocabulary of {vocab}"));
    }
    let mut grad = vec![0f32; logits.len()];
    let loss: f64 = grad
        .par_chunks_mut(vocab)
        .zip(logits.par_chunks(vocab))
        .zip(targets.par_iter())
        .map(|((g, row), &y)| {
            let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let sum: f64 = row.iter().map(|&x| (x as f64 - m).exp()).sum();
            let lse = m + sum.ln();
            for (gk, &x) in g.iter_mut().zip(row) {
                *gk = ((x as f64 - lse).exp() * scale) as f32;
            }
            g[y as usize] -= scale as f32;
            scale * (lse - row[y as usize] as f64)
        })
        .sum();
    Ok((loss, grad))
}
