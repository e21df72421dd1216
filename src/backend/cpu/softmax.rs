//! Log-softmax, the one implementation every CPU loss and score uses:
//!   lse(x/τ) = m + log Σ_j exp(x_j/τ − m),  m = max_j x_j/τ,   log softmax(x/τ)_j = x_j/τ − lse.
//! The sum is accumulated in f64. A row whose entries are all −inf has no distribution: its lse is
//! −inf (callers treat such a row as having no loss).

use super::Real;

/// lse(x·inv_t) of one row.
pub fn log_sum_exp<T: Real>(x: &[T], inv_t: T) -> T {
    let m = x.iter().fold(T::neg_infinity(), |m, &v| m.max(v * inv_t));
    if m == T::neg_infinity() {
        return m;
    }
    let sum: f64 = x.iter().map(|&v| (v * inv_t - m).exp().to_f64()).sum();
    m + T::from_f64(sum.ln())
}

/// log softmax(x·inv_t) of one row; None when every entry is −inf.
pub fn log_softmax<T: Real>(x: &[T], inv_t: T) -> Option<Vec<T>> {
    let lse = log_sum_exp(x, inv_t);
    (lse != T::neg_infinity()).then(|| x.iter().map(|&v| v * inv_t - lse).collect())
}
