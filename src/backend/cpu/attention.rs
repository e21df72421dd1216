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
use rayon::prelude::*;

#[derive(Clone, Copy, Debug)]
pub struct AttnDims {
    pub batch: usize,    // B
    pub seq: usize,      // T
    pub q_heads: usize,  // Hq
    pub kv_heads: usize, // Hkv
    pub head_dim: usize, // D
    pub scale: f64,
}

pub struct AttnOut<T> {
    pub out: Vec<T>, // (B, T, Hq, D)
    pub lse: Vec<T>, // (B, Hq, T); 0 for padding rows
}

pub struct AttnGrads<T> {
    pub dq: Vec<T>, // (B, T, Hq, D)
    pub dk: Vec<T>, // (B, T, Hkv, D)
    pub dv: Vec<T>, // (B, T, Hkv, D)
}

impl AttnDims {
    fn validate<T>(&self, op: &str, q: &[T], k: &[T], v: &[T], lengths: &[usize]) {
        let AttnDims { batch, seq, q_heads, kv_heads, head_dim, .. } = *self;
        assert!(
            kv_heads > 0 && q_heads % kv_heads == 0,
            "{op}: {q_heads} query heads are not a multiple of {kv_heads} KV heads"
        );
        let expect = |name: &str, len: usize, heads: usize| {
            let (b, t, h, d) = (batch, seq, heads, head_dim);
            assert_eq!(len, b * t * h * d, "{op}: {name} has {len} elements, expected {b}×{t}×{h}×{d}");
        };
        expect("q", q.len(), q_heads);
        expect("k", k.len(), kv_heads);
        expect("v", v.len(), kv_heads);
        let nl = lengths.len();
        assert_eq!(nl, batch, "{op}: {nl} lengths for a batch of {batch}");
        if let Some(&l) = lengths.iter().find(|&&l| l > seq) {
            panic!("{op}: sequence length {l} exceeds the padded length {seq}");
        }
    }
    /// Offset of row (b, t, head) in a (B, T, heads, D) tensor.
    fn at(&self, b: usize, t: usize, heads: usize, head: usize) -> usize {
        ((b * self.seq + t) * heads + head) * self.head_dim
    }
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
    d.validate("attention_fwd", q, k, v, lengths);
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
                let qt = &q[d.at(b, t, hq, h)..][..dh];
                for (j, sj) in s[..=t].iter_mut().enumerate() {
                    *sj = scale * dot(qt, &k[d.at(b, j, hkv, g)..][..dh]);
                }
                let m = s[..=t].iter().copied().fold(T::neg_infinity(), T::max);
                let l = m + s[..=t].iter().map(|&x| (x - m).exp()).sum::<T>().ln();
                let ot = &mut out[t * dh..(t + 1) * dh];
                for (j, &sj) in s[..=t].iter().enumerate() {
                    let p = (sj - l).exp();
                    for (o, &vv) in ot.iter_mut().zip(&v[d.at(b, j, hkv, g)..][..dh]) {
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
            out[d.at(b, t, hq, h)..][..dh].copy_from_slice(&o[t * dh..(t + 1) * dh]);
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
    d.validate("attention_bwd", q, k, v, lengths);
    let AttnDims { batch, seq, q_heads: hq, kv_heads: hkv, head_dim: dh, .. } = *d;
    assert_eq!(out.len(), q.len(), "attention_bwd: out has {} elements, expected {}", out.len(), q.len());
    assert_eq!(dout.len(), q.len(), "attention_bwd: dout has {} elements, expected {}", dout.len(), q.len());
    assert_eq!(
        lse.len(),
        batch * hq * seq,
        "attention_bwd: lse has {} elements, expected {batch}×{hq}×{seq}",
        lse.len()
    );
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
                    let row = d.at(b, t, hq, h);
                    let (qt, ot, do_t) = (&q[row..][..dh], &out[row..][..dh], &dout[row..][..dh]);
                    let l = lse[(b * hq + h) * seq + t];
                    let delta = dot(do_t, ot);
                    let dqt = &mut dq[(j_head * seq + t) * dh..][..dh];
                    for j in 0..=t {
                        let kv = d.at(b, j, hkv, g);
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
                dq[d.at(b, t, hq, g * group + j_head)..][..dh].copy_from_slice(src);
            }
            dk[d.at(b, t, hkv, g)..][..dh].copy_from_slice(&gk[t * dh..][..dh]);
            dv[d.at(b, t, hkv, g)..][..dh].copy_from_slice(&gv[t * dh..][..dh]);
        }
    }
    AttnGrads { dq, dk, dv }
}
