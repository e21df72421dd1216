//! RMSNorm over the last dimension (C), one row at a time:
//!   x̂ = x·rstd, rstd = 1/√(mean(x²) + ε); y = x̂·w.
//! Backward, with g = dy·w: dx = rstd·(g − x̂·mean(g·x̂)), dw = Σ_rows dy·x̂ (layer_norm.rs).
//! add_rms_norm: the residual add before it, fused: sum = x + r is an output too, and the
//! backward's dx (the gradient of both x and r) is the norm's dx + dsum.

use super::layer_norm::{add_into, mean_of, norm_bwd, rows_of, NormGrads, NormOut};
use super::Real;
use rayon::prelude::*;

pub fn rms_norm_fwd<T: Real>(
    x: &[T], // (N, C)
    w: &[T], // (C)
    cols: usize,
    eps: f64,
) -> NormOut<T> {
    let rows = rows_of("rms_norm_fwd", x, w, cols);
    let mut y = vec![T::zero(); x.len()];
    let mut rstd = vec![T::zero(); rows];
    y.par_chunks_mut(cols).zip(x.par_chunks(cols)).zip(rstd.par_iter_mut()).for_each(|((yr, xr), r)| {
        let ms = mean_of(xr.iter().map(|&v| v * v), cols);
        let rs = (ms + T::from_f64(eps)).sqrt().recip();
        for ((o, &xv), &wv) in yr.iter_mut().zip(xr).zip(w) {
            *o = (xv * rs) * wv;
        }
        *r = rs;
    });
    NormOut { y, mean: Vec::new(), rstd }
}

pub fn rms_norm_bwd<T: Real>(
    x: &[T],    // (N, C)
    w: &[T],    // (C)
    rstd: &[T], // (N)
    dy: &[T],   // (N, C)
    cols: usize,
) -> NormGrads<T> {
    rows_of("rms_norm_bwd", x, w, cols);
    let (dx, dw, _) = norm_bwd(x, w, None, rstd, dy, cols);
    NormGrads { dx, dw, db: None }
}

/// x, r (N, C), w (C) → (sum = x + r (N, C), the norm of sum).
pub fn add_rms_norm_fwd<T: Real>(x: &[T], r: &[T], w: &[T], cols: usize, eps: f64) -> (Vec<T>, NormOut<T>) {
    assert_eq!(r.len(), x.len(), "add_rms_norm_fwd: residual has {} elements, expected {}", r.len(), x.len());
    let sum: Vec<T> = x.iter().zip(r).map(|(&a, &b)| a + b).collect();
    let out = rms_norm_fwd(&sum, w, cols, eps);
    (sum, out)
}

pub fn add_rms_norm_bwd<T: Real>(
    sum: &[T],  // (N, C)
    w: &[T],    // (C)
    rstd: &[T], // (N)
    dy: &[T],   // (N, C)
    dsum: &[T], // (N, C)
    cols: usize,
) -> NormGrads<T> {
    let mut g = rms_norm_bwd(sum, w, rstd, dy, cols);
    add_into(&mut g.dx, dsum);
    g
}
