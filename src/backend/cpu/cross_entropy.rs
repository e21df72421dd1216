//! Mean cross-entropy over the rows whose target is not ignored (target < 0, like −100).
//!
//! lse_n = m + log Σ_v exp(x_nv − m), m = max_v x_nv
//! loss  = (1/|valid|) Σ_{n valid} (lse_n − x_n,target)     (0 when no row is valid)
//! dx_nv = (softmax(x_n)_v − [v = target_n])·dloss/|valid| on valid rows, 0 on ignored rows.

use super::Real;
use rayon::prelude::*;

pub struct CrossEntropyOut<T> {
    /// Σ over valid rows of −log softmax(target), divided by the number of valid rows; 0 when none.
    pub loss: T,
    pub lse: Vec<T>, // (N)
    pub valid: usize,
}

fn check_shapes<T>(op: &str, logits: &[T], targets: &[i32], vocab: usize) {
    assert_eq!(
        logits.len(),
        targets.len() * vocab,
        "{op}: logits have {} elements, expected {}×{vocab}",
        logits.len(),
        targets.len()
    );
    if let Some(&t) = targets.iter().find(|&&t| t >= 0 && t as usize >= vocab) {
        panic!("{op}: target {t} out of range for vocabulary {vocab}");
    }
}

pub fn cross_entropy_fwd<T: Real>(
    logits: &[T],    // (N, V)
    targets: &[i32], // (N); < 0 ignored
    vocab: usize,    // V
) -> CrossEntropyOut<T> {
    check_shapes("cross_entropy_fwd", logits, targets, vocab);
    if vocab == 0 {
        return CrossEntropyOut { loss: T::zero(), lse: vec![T::neg_infinity(); targets.len()], valid: 0 };
    }
    let lse: Vec<T> = logits
        .par_chunks(vocab)
        .map(|row| {
            let m = row.iter().copied().fold(T::neg_infinity(), T::max);
            m + row.iter().map(|&x| (x - m).exp()).sum::<T>().ln()
        })
        .collect();
    let (mut sum, mut valid) = (T::zero(), 0usize);
    for (n, &t) in targets.iter().enumerate() {
        if t >= 0 {
            sum = sum + lse[n] - logits[n * vocab + t as usize];
            valid += 1;
        }
    }
    let loss = if valid > 0 { sum / T::from_f64(valid as f64) } else { T::zero() };
    CrossEntropyOut { loss, lse, valid }
}

pub fn cross_entropy_bwd<T: Real>(
    logits: &[T],    // (N, V)
    targets: &[i32], // (N)
    lse: &[T],       // (N)
    vocab: usize,    // V
    dloss: T,
    valid: usize,
) -> Vec<T> /* dlogits (N, V) */ {
    check_shapes("cross_entropy_bwd", logits, targets, vocab);
    assert_eq!(
        lse.len(),
        targets.len(),
        "cross_entropy_bwd: lse has {} elements, expected {}",
        lse.len(),
        targets.len()
    );
    let mut dx = vec![T::zero(); logits.len()];
    if valid == 0 || vocab == 0 {
        return dx;
    }
    let scale = dloss / T::from_f64(valid as f64);
    dx.par_chunks_mut(vocab).enumerate().for_each(|(n, row)| {
        let Ok(t) = usize::try_from(targets[n]) else {
            return;
        };
        for (v, o) in row.iter_mut().enumerate() {
            let p = (logits[n * vocab + v] - lse[n]).exp();
            let onehot = if v == t { T::one() } else { T::zero() };
            *o = (p - onehot) * scale;
        }
    });
    dx
}
