//! LayerNorm over the last dimension (C), one row at a time:
//!   x̂ = (x − μ)·rstd, rstd = 1/√(σ² + ε) with the biased σ² (as PyTorch); y = x̂·w + b.
//! Backward, with g = dy·w:
//!   dx = rstd·(g − mean(g) − x̂·mean(g·x̂)),  dw = Σ_rows dy·x̂,  db = Σ_rows dy.
//! RMSNorm (rms_norm.rs) shares the backward, without the mean.
//! add_layer_norm: the residual add before it, fused: sum = x + r is an output too, and the
//! backward's dx (the gradient of both x and r) is the norm's dx + dsum.

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

/// x, r (N, C), w, b (C) → (sum = x + r (N, C), the norm of sum).
pub fn add_layer_norm_fwd<T: Real>(
    x: &[T],
    r: &[T],
    w: &[T],
    b: &[T],
    cols: usize,
    eps: f64,
) -> (Vec<T>, NormOut<T>) {
    assert_eq!(
        r.len(),
        x.len(),
        "add_layer_norm_fwd: residual has {} elements, expected {}",
        r.len(),
        x.len()
    );
    let sum: Vec<T> = x.iter().zip(r).map(|(&a, &b)| a + b).collect();
    let out = layer_norm_fwd(&sum, w, b, cols, eps);
    (sum, out)
}

pub fn add_layer_norm_bwd<T: Real>(
    sum: &[T],  // (N, C)
    w: &[T],    // (C)
    mean: &[T], // (N)
    rstd: &[T], // (N)
    dy: &[T],   // (N, C)
    dsum: &[T], // (N, C)
    cols: usize,
) -> NormGrads<T> {
    let mut g = layer_norm_bwd(sum, w, mean, rstd, dy, cols);
    add_into(&mut g.dx, dsum);
    g
}

/// acc += x, elementwise (the fused residual's gradient added to the norm's dx).
pub(super) fn add_into<T: Real>(acc: &mut [T], x: &[T]) {
    assert_eq!(acc.len(), x.len(), "add_into: {} += {} elements", acc.len(), x.len());
    acc.par_iter_mut().zip(x.par_iter()).with_min_len(4096).for_each(|(a, &b)| *a = *a + b);
}

/// Rows per partial sum of the weight gradients.
const WGRAD_ROWS: usize = 128;

/// The backward of both norms: `mean` is None for RMSNorm. Returns (dx, dw, db). One pass over
/// fixed blocks of rows in parallel: each block's dx rows and its partial column sums of dw and
/// db, the partials then added in block order (the same result whatever the threads do).
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
    let mut dx = vec![T::zero(); x.len()];
    let partials: Vec<(Vec<T>, Vec<T>)> = dx
        .par_chunks_mut(WGRAD_ROWS * cols)
        .enumerate()
        .map(|(blk, dx_blk)| {
            let (mut dw, mut db) = (vec![T::zero(); cols], vec![T::zero(); cols]);
            let (mut xhat, mut g) = (vec![T::zero(); cols], vec![T::zero(); cols]);
            for (i, dxr) in dx_blk.chunks_mut(cols).enumerate() {
                let r = blk * WGRAD_ROWS + i;
                let (xr, dyr) = (&x[r * cols..(r + 1) * cols], &dy[r * cols..(r + 1) * cols]);
                let (mu, rs) = (mean.map_or(T::zero(), |m| m[r]), rstd[r]);
                for c in 0..cols {
                    xhat[c] = (xr[c] - mu) * rs;
                    g[c] = dyr[c] * w[c];
                    dw[c] = dw[c] + dyr[c] * xhat[c];
                    db[c] = db[c] + dyr[c];
                }
                let mean_g = if mean.is_some() { mean_of(g.iter().copied(), cols) } else { T::zero() };
                let mean_gx = mean_of(g.iter().zip(&xhat).map(|(&a, &b)| a * b), cols);
                for c in 0..cols {
                    dxr[c] = rs * (g[c] - mean_g - xhat[c] * mean_gx);
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
