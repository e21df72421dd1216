//! Causal self-attention with grouped-query heads over sequences that sit anywhere in the rows:
//! sequence b is rows start[b]..start[b] + len[b] (packed back to back, or right-padded with rows
//! that belong to no sequence: those get output 0 and no gradient).
//!
//! Query head h reads key/value head h / (Hq/Hkv). For each sequence and head, with Q, K, V its
//! rows (len × D):
//!   S = scale·Q·Kᵀ,  P = softmax(S) over j ≤ i (causal),  lse_i = log Σ_{j≤i} exp(S_ij),
//!   O = P·V
//! Backward, with P recomputed from lse:
//!   dV += Pᵀ·dO,  dP = dO·Vᵀ,  Δ_i = dO_i·O_i,  dS = P ∘ (dP − Δ),
//!   dQ = scale·dS·K,  dK += scale·dSᵀ·Q
//! where dK and dV sum over the query heads of a group. Each (sequence, head) block is a few small
//! matrix products read and written in place through row strides (no copies); blocks run in
//! parallel and write disjoint rows and columns.
//!
//! Attention over a key/value cache (generation) is `attention_cached_fwd`.

use super::gemm::{mm, Shared};
use super::Real;
use crate::backend::check::{self, need};
use crate::backend::ops::{AttnDims, CachedAttnDims};
use crate::error::Result;
use rayon::prelude::*;

pub struct AttnOut<T> {
    pub out: Vec<T>, // (N, Hq, D)
    pub lse: Vec<T>, // (N, Hq); 0 for rows of no sequence
}

pub struct AttnGrads<T> {
    pub dq: Vec<T>, // (N, Hq, D)
    pub dk: Vec<T>, // (N, Hkv, D)
    pub dv: Vec<T>, // (N, Hkv, D)
}

/// Query rows per tile: a tile of rows r0..r1 needs only keys 0..r1 (causal), so tiling skips
/// most of the masked half of each sequence's scores.
const TILE: usize = 64;

/// The tiles (r0, r1) of a sequence of `len` rows.
fn tiles(len: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..len).step_by(TILE).map(move |r0| (r0, (r0 + TILE).min(len)))
}

/// P (r1−r0 × r1) of query rows r0..r1 over keys 0..r1: scale·Q·Kᵀ, then for row i (global
/// r0 + i) exp(s − lse) over j ≤ r0 + i and 0 past it. `lse` None: computes the softmax and writes
/// each row's log-normalizer through `lse_out`.
///
/// # Safety
/// `q` points at row r0 of the sequence's Q (row stride lq), `k` at its row 0 (row stride lk).
#[allow(clippy::too_many_arguments)]
unsafe fn probs<T: Real>(
    p: &mut Vec<T>,
    q: *const T,
    lq: usize,
    k: *const T,
    lk: usize,
    (r0, r1): (usize, usize),
    dh: usize,
    scale: T,
    lse: Option<&dyn Fn(usize) -> T>,
    lse_out: &mut dyn FnMut(usize, T),
) {
    let (rows, keys) = (r1 - r0, r1);
    p.clear();
    p.reserve(rows * keys);
    // SAFETY (of set_len): the product writes all rows·keys elements (beta = 0) before any read.
    mm(rows, dh, keys, scale, (q, lq, 1), (k, 1, lk), T::zero(), (p.as_mut_ptr(), keys));
    p.set_len(rows * keys);
    for i in 0..rows {
        let valid = r0 + i + 1;
        let row = &mut p[i * keys..(i + 1) * keys];
        match lse {
            Some(l) => {
                let l = l(r0 + i);
                row[..valid].iter_mut().for_each(|x| *x = (*x - l).exp());
            }
            None => {
                let m = row[..valid].iter().copied().fold(T::neg_infinity(), T::max);
                let mut sum = T::zero();
                for x in &mut row[..valid] {
                    *x = (*x - m).exp();
                    sum = sum + *x;
                }
                let inv = sum.recip();
                row[..valid].iter_mut().for_each(|x| *x = *x * inv);
                lse_out(r0 + i, m + sum.ln());
            }
        }
        row[valid..].iter_mut().for_each(|x| *x = T::zero());
    }
}

pub fn attention_fwd<T: Real>(
    d: &AttnDims,
    q: &[T],                  // (N, Hq, D)
    k: &[T],                  // (N, Hkv, D)
    v: &[T],                  // (N, Hkv, D)
    spans: &[(usize, usize)], // (B) (start, len)
) -> Result<AttnOut<T>> {
    // The blocks below write through raw pointers at offsets from `d` and `spans`: check first.
    check::attention("attention", d, q.len(), k.len(), v.len(), Some(spans))?;
    let AttnDims { q_heads: hq, kv_heads: hkv, head_dim: dh, .. } = *d;
    let group = hq / hkv;
    let scale = T::from_f64(d.scale);
    let (lq, lk) = (hq * dh, hkv * dh);
    let mut out = vec![T::zero(); q.len()];
    let mut lse = vec![T::zero(); d.rows * hq];
    let (out_p, lse_p) = (Shared(out.as_mut_ptr()), Shared(lse.as_mut_ptr()));
    let tasks: Vec<(usize, usize)> = (0..spans.len()).flat_map(|b| (0..hq).map(move |h| (b, h))).collect();
    tasks.into_par_iter().for_each(|(b, h)| {
        let (start, len) = spans[b];
        let g = h / group;
        let (out_p, lse_p) = (out_p, lse_p);
        let mut p = Vec::new();
        // SAFETY: the block reads rows start..start+len of q, k, v, and writes the same rows of
        // head h's columns of `out` and of `lse`, which no other (sequence, head) task writes.
        unsafe {
            let kb = k.as_ptr().add(start * lk + g * dh);
            let vb = v.as_ptr().add(start * lk + g * dh);
            for (r0, r1) in tiles(len) {
                let qb = q.as_ptr().add((start + r0) * lq + h * dh);
                let mut write_lse = |i: usize, l: T| *lse_p.0.add((start + i) * hq + h) = l;
                probs(&mut p, qb, lq, kb, lk, (r0, r1), dh, scale, None, &mut write_lse);
                let ob = out_p.0.add((start + r0) * lq + h * dh);
                mm(r1 - r0, r1, dh, T::one(), (p.as_ptr(), r1, 1), (vb, lk, 1), T::zero(), (ob, lq));
            }
        }
    });
    Ok(AttnOut { out, lse })
}

#[allow(clippy::too_many_arguments)]
pub fn attention_bwd<T: Real>(
    d: &AttnDims,
    q: &[T],                  // (N, Hq, D)
    k: &[T],                  // (N, Hkv, D)
    v: &[T],                  // (N, Hkv, D)
    spans: &[(usize, usize)], // (B) (start, len)
    out: &[T],                // (N, Hq, D)
    lse: &[T],                // (N, Hq)
    dout: &[T],               // (N, Hq, D)
) -> Result<AttnGrads<T>> {
    const OP: &str = "attention backward";
    check::attention(OP, d, q.len(), k.len(), v.len(), Some(spans))?;
    need(OP, "out", out.len(), q.len())?;
    need(OP, "dout", dout.len(), q.len())?;
    need(OP, "lse", lse.len(), d.rows * d.q_heads)?;
    let AttnDims { q_heads: hq, kv_heads: hkv, head_dim: dh, .. } = *d;
    let group = hq / hkv;
    let scale = T::from_f64(d.scale);
    let (lq, lk) = (hq * dh, hkv * dh);
    let mut dq = vec![T::zero(); q.len()];
    let mut dk = vec![T::zero(); k.len()];
    let mut dv = vec![T::zero(); v.len()];
    let ptrs = (Shared(dq.as_mut_ptr()), Shared(dk.as_mut_ptr()), Shared(dv.as_mut_ptr()));
    // One task per (sequence, key/value head): it owns dK and dV of its rows and head, and dQ of
    // its rows for the query heads of its group.
    let tasks: Vec<(usize, usize)> = (0..spans.len()).flat_map(|b| (0..hkv).map(move |g| (b, g))).collect();
    tasks.into_par_iter().for_each(|(b, g)| {
        let (start, len) = spans[b];
        let (dq_p, dk_p, dv_p) = ptrs;
        let (mut p, mut ds) = (Vec::new(), Vec::new());
        // SAFETY: reads rows start..start+len of the inputs; writes those rows of key/value head
        // g's columns of dk and dv and of its query heads' columns of dq: no other task does.
        unsafe {
            let kb = k.as_ptr().add(start * lk + g * dh);
            let vb = v.as_ptr().add(start * lk + g * dh);
            let dkb = dk_p.0.add(start * lk + g * dh);
            let dvb = dv_p.0.add(start * lk + g * dh);
            for h in g * group..(g + 1) * group {
                let saved = |i: usize| lse[(start + i) * hq + h];
                for (r0, r1) in tiles(len) {
                    let (rows, keys) = (r1 - r0, r1);
                    let at = (start + r0) * lq + h * dh;
                    let (qb, dob, ob) = (q.as_ptr().add(at), dout.as_ptr().add(at), out.as_ptr().add(at));
                    probs(&mut p, qb, lq, kb, lk, (r0, r1), dh, scale, Some(&saved), &mut |_, _| {});
                    // dV[0..r1] += Pᵀ·dO
                    mm(keys, rows, dh, T::one(), (p.as_ptr(), 1, keys), (dob, lq, 1), T::one(), (dvb, lk));
                    // dS = P ∘ (dO·Vᵀ − Δ)
                    ds.clear();
                    ds.reserve(rows * keys);
                    mm(
                        rows,
                        dh,
                        keys,
                        T::one(),
                        (dob, lq, 1),
                        (vb, 1, lk),
                        T::zero(),
                        (ds.as_mut_ptr(), keys),
                    );
                    ds.set_len(rows * keys);
                    for i in 0..rows {
                        let o = std::slice::from_raw_parts(ob.add(i * lq), dh);
                        let g_o = std::slice::from_raw_parts(dob.add(i * lq), dh);
                        let delta: T = o.iter().zip(g_o).map(|(&x, &y)| x * y).sum();
                        let (prow, drow) = (&p[i * keys..(i + 1) * keys], &mut ds[i * keys..(i + 1) * keys]);
                        for (x, &pj) in drow.iter_mut().zip(prow) {
                            *x = pj * (*x - delta);
                        }
                    }
                    // dQ[r0..r1] = scale·dS·K,  dK[0..r1] += scale·dSᵀ·Q
                    let dqb = dq_p.0.add(at);
                    mm(rows, keys, dh, scale, (ds.as_ptr(), keys, 1), (kb, lk, 1), T::zero(), (dqb, lq));
                    mm(keys, rows, dh, scale, (ds.as_ptr(), 1, keys), (qb, lq, 1), T::one(), (dkb, lk));
                }
            }
        }
    });
    Ok(AttnGrads { dq, dk, dv })
}

fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    a.iter().zip(b).map(|(&x, &y)| x * y).sum()
}

/// Each new query row attends to its own sequence's cached positions 0..=pos (the keys and values
/// of the new rows are already in the cache), with the same math as `attention_fwd`.
pub fn attention_cached_fwd<T: Real>(
    d: &CachedAttnDims,
    q: &[T],       // (N, Hq, D)
    k_cache: &[T], // (B, L, Hkv, D)
    v_cache: &[T], // (B, L, Hkv, D)
    seq: &[u32],   // (N)
    pos: &[u32],   // (N)
) -> Result<Vec<T>> /* (N, Hq, D) */ {
    check::cached_attention("cached attention", d, q.len(), k_cache.len(), v_cache.len(), seq, pos)?;
    let CachedAttnDims { capacity, q_heads: hq, kv_heads: hkv, head_dim: dh, .. } = *d;
    let group = hq / hkv;
    let scale = T::from_f64(d.scale);
    let mut out = vec![T::zero(); q.len()];
    // One task per (row, query head).
    out.par_chunks_mut(dh).enumerate().for_each(|(rh, o)| {
        let (i, h) = (rh / hq, rh % hq);
        let (b, p, g) = (seq[i] as usize, pos[i] as usize, h / group);
        let kv = |j: usize| ((b * capacity + j) * hkv + g) * dh;
        let qh = &q[rh * dh..(rh + 1) * dh];
        let s: Vec<T> = (0..=p).map(|j| scale * dot(qh, &k_cache[kv(j)..][..dh])).collect();
        let m = s.iter().copied().fold(T::neg_infinity(), T::max);
        let mut denom = T::zero();
        for (j, &sj) in s.iter().enumerate() {
            let w = (sj - m).exp();
            denom = denom + w;
            for (ox, &vx) in o.iter_mut().zip(&v_cache[kv(j)..][..dh]) {
                *ox = *ox + w * vx;
            }
        }
        o.iter_mut().for_each(|x| *x = *x / denom);
    });
    Ok(out)
}
