//! Rotary position embedding, Hugging Face "rotate_half" convention, applied per head.
//!
//! For i < D/2 and θ = pos·inv_freq[i]:
//!   y[i]       = x[i]·cosθ − x[i+D/2]·sinθ
//!   y[i+D/2]   = x[i+D/2]·cosθ + x[i]·sinθ
//! The backward is the inverse rotation (θ → −θ). cos/sin are computed in f64, then cast.

use super::Real;
use rayon::prelude::*;

pub fn rope_fwd<T: Real>(
    x: &[T],           // (N, H, D)
    positions: &[u32], // (N)
    inv_freq: &[f64],  // (D/2)
    heads: usize,      // H
) -> Vec<T> /* (N, H, D) */ {
    rotate("rope_fwd", x, positions, inv_freq, heads, 1.0)
}

pub fn rope_bwd<T: Real>(
    dy: &[T],          // (N, H, D)
    positions: &[u32], // (N)
    inv_freq: &[f64],  // (D/2)
    heads: usize,      // H
) -> Vec<T> /* dx (N, H, D) */ {
    rotate("rope_bwd", dy, positions, inv_freq, heads, -1.0)
}

/// Rotates every head of every row by `sign`·θ.
fn rotate<T: Real>(
    op: &str,
    x: &[T],
    positions: &[u32],
    inv_freq: &[f64],
    heads: usize,
    sign: f64,
) -> Vec<T> {
    let half = inv_freq.len();
    let row = heads * 2 * half;
    assert_eq!(
        x.len(),
        positions.len() * row,
        "{op}: input has {} elements, expected {}×{heads}×{}",
        x.len(),
        positions.len(),
        2 * half
    );
    let mut y = vec![T::zero(); x.len()];
    if row == 0 {
        return y;
    }
    // cos and sin once per distinct position (rows share them: every sequence starts at 0).
    let table_len = positions.iter().max().map_or(0, |&p| p as usize + 1);
    let table: Vec<(T, T)> = (0..table_len)
        .into_par_iter()
        .flat_map_iter(|pos| {
            inv_freq.iter().map(move |&f| {
                let theta = pos as f64 * f;
                (T::from_f64(theta.cos()), T::from_f64(sign * theta.sin()))
            })
        })
        .collect();
    y.par_chunks_mut(row).zip(x.par_chunks(row)).zip(positions.par_iter()).for_each(|((yr, xr), &pos)| {
        let cs = &table[pos as usize * half..(pos as usize + 1) * half];
        for (yh, xh) in yr.chunks_mut(2 * half).zip(xr.chunks(2 * half)) {
            for (i, &(cos, sin)) in cs.iter().enumerate() {
                let (a, b) = (xh[i], xh[i + half]);
                yh[i] = a * cos - b * sin;
                yh[i + half] = b * cos + a * sin;
            }
        }
    });
    y
}
