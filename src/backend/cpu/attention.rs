//! Causal self-attention with grouped-query heads and per-sequence lengths (right padding).
//!
//! Query head h reads KV head h / (Hq/Hkv). For a valid query t < len[b]:
//!   s_j = scale·q_t·k_j (j ≤ t),  lse_t = log Σ_j exp(s_j),  p_j = exp(s_j − lse_t),
//!   out_t = Σ_j p_j·v_j.
//! Padding rows (t ≥ len[b]) have out = 0 and lse = 0 and receive no gradient.
//! Backward, with probabilities recomputed from lse:
//!   dp_j = dout_t·v_j,  Δ_t = dout_t·out_t,  ds_j = p_j·(dp_j − Δ_t),
//!   dq_t = scale·Σ_j ds_j·k_j,  dk_j += scale·ds_j·q_t,  dv_j += p_j·dout_t
//! where dk/dv sum over the query heads of a group.

use super::Real;
use crate::backend::ops::{AttnDims, CachedAttnDims};
use crate::error::{shape_err, Result};
use rayon::prelude::*;

pub struct AttnOut<T> {
    pub out: Vec<T>, // (B, T, Hq, D)
    pub lse: Vec<T>, // (B, Hq, T); 0 for padding rows
}

pub struct AttnGrads<T> {
    pub dq: Vec<T>, // (B, T, Hq, D)
    pub dk: Vec<T>, // (B, T, Hkv, D)
    pub dv: Vec<T>, // (B, T, Hkv, D)
}

/// An error unless q, k, v and the lengths fit `d`.
pub fn check_dims(
    op: &'static str,
    d: &AttnDims,
    q: usize,
    k: usize,
    v: usize,
    lengths: &[usize],
) -> Result<()> {
    let AttnDims { batch, seq, q_heads, kv_heads, head_dim, .. } = *d;
    if kv_heads == 0 || q_heads % kv_heads != 0 {
        return shape_err(op, format!("{q_heads} query heads are not a multiple of {kv_heads} KV heads"));
    }
    for (name, len, heads) in [("q", q, q_heads), ("k", k, kv_heads), ("v", v, kv_heads)] {
        if len != batch * seq * heads * head_dim {
            return shape_err(
                op,
                format!("{name} has {len} elements, expected {batch}×{seq}×{heads}×{head_dim}"),
            );
        }
    }
    if lengths.len() != batch || lengths.iter().any(|&l| l > seq) {
        return shape_err(
            op,
            format!("lengths {lengths:?} for a batch of {batch} sequences of {seq} positions"),
        );
    }
    Ok(())
}

/// Offset of row (b, t, head) in a (B, T, heads, D) tensor.
fn at(d: &AttnDims, b: usize, t: usize, heads: usize, head: usize) -> usize {
    ((b * d.seq + t) * heads + head) * d.head_dim
}

fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    a.iter().zip(b).map(|(&x, &y)| x * y).sum()
}

pub fn attention_fwd<T: Real>(
    d: &AttnDims,
    q: &[T],           // (B, T, Hq, D)
    k: &[T],           // (B, T, Hkv, D)
    v: &[T],           // (B, T, Hkv, D)
    lengths: &[usize], // (B)
) -> AttnOut<T> {
    let AttnDims { batch, seq, q_heads: hq, kv_heads: hkv, head_dim: dh, .. } = *d;
    let group = hq / hkv;
    let scale = T::from_f64(d.scale);
    // One task per (b, h): its (T, D) output rows and (T) lse.
    let per_head: Vec<(Vec<T>, Vec<T>)> = (0..batch * hq)
        .into_par_iter()
        .map(|bh| {
            let (b, h) = (bh / hq, bh % hq);
            let g = h / group;
            let mut out = vec![T::zero(); seq * dh];
            let mut lse = vec![T::zero(); seq];
            let mut s = vec![T::zero(); seq];
            for t in 0..lengths[b] {
                let qt = &q[at(d, b, t, hq, h)..][..dh];
                for (j, sj) in s[..=t].iter_mut().enumerate() {
                    *sj = scale * dot(qt, &k[at(d, b, j, hkv, g)..][..dh]);
                }
                let m = s[..=t].iter().copied().fold(T::neg_infinity(), T::max);
                let l = m + s[..=t].iter().map(|&x| (x - m).exp()).sum::<T>().ln();
                let ot = &mut out[t * dh..(t + 1) * dh];
                for (j, &sj) in s[..=t].iter().enumerate() {
                    let p = (sj - l).exp();
                    for (o, &vv) in ot.iter_mut().zip(&v[at(d, b, j, hkv, g)..][..dh]) {
                        *o = *o + p * vv;
                    }
                }
                lse[t] = l;
            }
            (out, lse)
        })
        .collect();
    let mut out = vec![T::zero(); q.len()];
    let mut lse = vec![T::zero(); batch * hq * seq];
    for (bh, (o, l)) in per_head.into_iter().enumerate() {
        let (b, h) = (bh / hq, bh % hq);
        for t in 0..seq {
            out[at(d, b, t, hq, h)..][..dh].copy_from_slice(&o[t * dh..(t + 1) * dh]);
        }
        lse[bh * seq..(bh + 1) * seq].copy_from_slice(&l);
    }
    AttnOut { out, lse }
}

#[allow(clippy::too_many_arguments)]
pub fn attention_bwd<T: Real>(
    d: &AttnDims,
    q: &[T],           // (B, T, Hq, D)
    k: &[T],           // (B, T, Hkv, D)
    v: &[T],           // (B, T, Hkv, D)
    lengths: &[usize], // (B)
    out: &[T],         // (B, T, Hq, D)
    lse: &[T],         // (B, Hq, T)
    dout: &[T],        // (B, T, Hq, D)
) -> AttnGrads<T> {
    let AttnDims { batch, seq, q_heads: hq, kv_heads: hkv, head_dim: dh, .. } = *d;
    let group = hq / hkv;
    let scale = T::from_f64(d.scale);
    // One task per (b, KV head g): dq for its `group` query heads (G, T, D), dk and dv (T, D).
    let per_group: Vec<(Vec<T>, Vec<T>, Vec<T>)> = (0..batch * hkv)
        .into_par_iter()
        .map(|bg| {
            let (b, g) = (bg / hkv, bg % hkv);
            let mut dq = vec![T::zero(); group * seq * dh];
            let mut dk = vec![T::zero(); seq * dh];
            let mut dv = vec![T::zero(); seq * dh];
            for j_head in 0..group {
                let h = g * group + j_head;
                for t in 0..lengths[b] {
                    let row = at(d, b, t, hq, h);
                    let (qt, ot, do_t) = (&q[row..][..dh], &out[row..][..dh], &dout[row..][..dh]);
                    let l = lse[(b * hq + h) * seq + t];
                    let delta = dot(do_t, ot);
                    let dqt = &mut dq[(j_head * seq + t) * dh..][..dh];
                    for j in 0..=t {
                        let kv = at(d, b, j, hkv, g);
                        let (kj, vj) = (&k[kv..][..dh], &v[kv..][..dh]);
                        let p = (scale * dot(qt, kj) - l).exp();
                        let ds = p * (dot(do_t, vj) - delta);
                        for i in 0..dh {
                            dqt[i] = dqt[i] + scale * ds * kj[i];
                            dk[j * dh + i] = dk[j * dh + i] + scale * ds * qt[i];
                            dv[j * dh + i] = dv[j * dh + i] + p * do_t[i];
                        }
                    }
                }
            }
            (dq, dk, dv)
        })
        .collect();
    let mut dq = vec![T::zero(); q.len()];
    let mut dk = vec![T::zero(); k.len()];
    let mut dv = vec![T::zero(); v.len()];
    for (bg, (gq, gk, gv)) in per_group.into_iter().enumerate() {
        let (b, g) = (bg / hkv, bg % hkv);
        for t in 0..seq {
            for j_head in 0..group {
                let src = &gq[(j_head * seq + t) * dh..][..dh];
                dq[at(d, b, t, hq, g * group + j_head)..][..dh].copy_from_slice(src);
            }
            dk[at(d, b, t, hkv, g)..][..dh].copy_from_slice(&gk[t * dh..][..dh]);
            dv[at(d, b, t, hkv, g)..][..dh].copy_from_slice(&gv[t * dh..][..dh]);
        }
    }
    AttnGrads { dq, dk, dv }
}

/// An error unless q, the caches and the row indices fit `d`.
pub fn check_cached_dims(
    op: &'static str,
    d: &CachedAttnDims,
    q: usize,
    k_cache: usize,
    v_cache: usize,
    seq: &[u32],
    pos: &[u32],
) -> Result<()> {
    let CachedAttnDims { rows, batch, capacity, q_heads, kv_heads, head_dim, .. } = *d;
    if kv_heads == 0 || q_heads % kv_heads != 0 {
        return shape_err(op, format!("{q_heads} query heads are not a multiple of {kv_heads} KV heads"));
    }
    if q != rows * q_heads * head_dim || seq.len() != rows || pos.len() != rows {
        return shape_err(
            op,
            format!(
                "q of {q} elements, {} sequence and {} position indices for {rows} rows",
                seq.len(),
                pos.len()
            ),
        );
    }
    let cache = batch * capacity * kv_heads * head_dim;
    if k_cache != cache || v_cache != cache {
        return shape_err(op, format!("caches of {k_cache} and {v_cache} elements, expected {batch}×{capacity}×{kv_heads}×{head_dim}"));
    }
    if let Some(i) = (0..rows).find(|&i| seq[i] as usize >= batch || pos[i] as usize >= capacity) {
        return shape_err(op, format!("row {i} is at position {} of sequence {}: the cache holds {batch} sequences of {capacity} positions", pos[i], seq[i]));
    }
    Ok(())
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
) -> Vec<T> /* (N, Hq, D) */ {
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
    out
}
