//! LayerNorm over the last dimension (C), one row at a time:
//!   x̂ = (x − μ)·rstd, rstd = 1/√(σ² + ε) with the biased σ² (as PyTorch); y = x̂·w + b.
//! Backward, with g = dy·w:
//!   dx = rstd·(g − mean(g) − x̂·mean(g·x̂)),  dw = Σ_rows dy·x̂,  db = Σ_rows dy.
//! RMSNorm (rms_norm.rs) shares the backward, without the mean.

use super::Real;
use rayon::prelude::*;

pub struct NormOut<T> {
    pub y: Vec<T>,    // (N, C)
    pub mean: Vec<T>, // (N); empty for RMSNorm
    pub rstd: Vec<T>, // (N)
}

pub struct NormGrads<T> {
    pub dx: Vec<T>,         // (N, C)
    pub dw: Vec<T>,         // (C)
    pub db: Option<Vec<T>>, // (C); None for RMSNorm
}

pub(super) fn rows_of<T>(op: &str, x: &[T], w: &[T], cols: usize) -> usize {
    assert!(cols > 0, "{op}: cols must be positive");
    assert_eq!(x.len() % cols, 0, "{op}: x has {} elements, not a multiple of cols {cols}", x.len());
    assert_eq!(w.len(), cols, "{op}: weight has {} elements, expected {cols}", w.len());
    x.len() / cols
}

pub(super) fn mean_of<T: Real>(v: impl Iterator<Item = T>, cols: usize) -> T {
    v.sum::<T>() / T::from_f64(cols as f64)
}

pub fn layer_norm_fwd<T: Real>(
    x: &[T], // (N, C)
    w: &[T], // (C)
    b: &[T], // (C)
    cols: usize,
    eps: f64,
) -> NormOut<T> {
    let rows = rows_of("layer_norm_fwd", x, w, cols);
    assert_eq!(b.len(), cols, "layer_norm_fwd: bias has {} elements, expected {cols}", b.len());
    let mut y = vec![T::zero(); x.len()];
    let mut mean = vec![T::zero(); rows];
    let mut rstd = vec![T::zero(); rows];
    y.par_chunks_mut(cols)
        .zip(x.par_chunks(cols))
        .zip(mean.par_iter_mut().zip(rstd.par_iter_mut()))
        .for_each(|((yr, xr), (m, r))| {
            let mu = mean_of(xr.iter().copied(), cols);
            let var = mean_of(xr.iter().map(|&v| (v - mu) * (v - mu)), cols);
            let rs = (var + T::from_f64(eps)).sqrt().recip();
            for (((o, &xv), &wv), &bv) in yr.iter_mut().zip(xr).zip(w).zip(b) {
                *o = (xv - mu) * rs * wv + bv;
            }
            *m = mu;
            *r = rs;
        });
    NormOut { y, mean, rstd }
}

pub fn layer_norm_bwd<T: Real>(
    x: &[T],    // (N, C)
    w: &[T],    // (C)
    mean: &[T], // (N)
    rstd: &[T], // (N)
    dy: &[T],   // (N, C)
    cols: usize,
) -> NormGrads<T> {
    let rows = rows_of("layer_norm_bwd", x, w, cols);
    assert_eq!(mean.len(), rows, "layer_norm_bwd: mean has {} elements, expected {rows}", mean.len());
    let (dx, dw, db) = norm_bwd(x, w, Some(mean), rstd, dy, cols);
    NormGrads { dx, dw, db: Some(db) }
}

/// Rows per partial sum of the weight gradients.
const WGRAD_ROWS: usize = 128;

/// The backward of both norms: `mean` is None for RMSNorm. Returns (dx, dw, db).
pub(super) fn norm_bwd<T: Real>(
    x: &[T],            // (N, C)
    w: &[T],            // (C)
    mean: Option<&[T]>, // (N)
    rstd: &[T],         // (N)
    dy: &[T],           // (N, C)
    cols: usize,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let rows = x.len() / cols;
    assert_eq!(rstd.len(), rows, "norm backward: rstd has {} elements, expected {rows}", rstd.len());
    assert_eq!(dy.len(), x.len(), "norm backward: dy has {} elements, expected {}", dy.len(), x.len());
    let xhat = |r: usize, c: usize| match mean {
        Some(m) => (x[r * cols + c] - m[r]) * rstd[r],
        None => x[r * cols + c] * rstd[r],
    };
    let mut dx = vec![T::zero(); x.len()];
    dx.par_chunks_mut(cols).enumerate().for_each(|(r, dxr)| {
        let dyr = &dy[r * cols..(r + 1) * cols];
        let g = |c: usize| dyr[c] * w[c];
        let mean_g = if mean.is_some() { mean_of((0..cols).map(g), cols) } else { T::zero() };
        let mean_gx = mean_of((0..cols).map(|c| g(c) * xhat(r, c)), cols);
        for (c, o) in dxr.iter_mut().enumerate() {
            *o = rstd[r] * (g(c) - mean_g - xhat(r, c) * mean_gx);
        }
    });
    // Column sums over rows: partial sums over fixed blocks of rows in parallel, then added in
    // block order (the same result whatever the threads do).
    let partials: Vec<(Vec<T>, Vec<T>)> = (0..rows.div_ceil(WGRAD_ROWS))
        .into_par_iter()
        .map(|blk| {
            let (mut dw, mut db) = (vec![T::zero(); cols], vec![T::zero(); cols]);
            for r in blk * WGRAD_ROWS..((blk + 1) * WGRAD_ROWS).min(rows) {
                let dyr = &dy[r * cols..(r + 1) * cols];
                for (c, &g) in dyr.iter().enumerate() {
                    dw[c] = dw[c] + g * xhat(r, c);
                    db[c] = db[c] + g;
                }
            }
            (dw, db)
        })
        .collect();
    let (mut dw, mut db) = (vec![T::zero(); cols], vec![T::zero(); cols]);
    for (pw, pb) in &partials {
        dw.iter_mut().zip(pw).for_each(|(a, &b)| *a = *a + b);
        db.iter_mut().zip(pb).for_each(|(a, &b)| *a = *a + b);
    }
    (dx, dw, db)
}
