//! The key/value cache of generation, and causal attention over it.
//!
//! Per layer and sequence, keys and values of every position seen so far, (len, Hkv, D), after
//! RoPE. A step appends the new rows of some sequences, then each new query at position p attends
//! to positions 0..=p of its own sequence:
//!   s_j = scale·q·k_j,  out = Σ_j softmax(s)_j · v_j
//! with query head h reading KV head h / (Hq/Hkv), as `backend::cpu::attention_fwd`.

use crate::error::{Error, Result};
use rayon::prelude::*;

#[derive(Clone, Default)]
struct SeqKv {
    k: Vec<f32>, // (len, Hkv, D)
    v: Vec<f32>, // (len, Hkv, D)
}

/// New tokens of one sequence in a step: `rows` rows starting at row `row0` of the step's
/// (N, ·) activations, at positions `start..start + rows`.
#[derive(Clone, Copy, Debug)]
pub struct CacheChunk {
    pub seq: usize,
    pub row0: usize,
    pub start: usize,
    pub rows: usize,
}

pub struct KvCache {
    kv_heads: usize,
    head_dim: usize,
    layers: Vec<Vec<SeqKv>>, // [layer][sequence]
}

impl KvCache {
    pub fn new(layers: usize, sequences: usize, kv_heads: usize, head_dim: usize) -> KvCache {
        KvCache { kv_heads, head_dim, layers: vec![vec![SeqKv::default(); sequences]; layers] }
    }

    pub fn sequences(&self) -> usize {
        self.layers.first().map_or(0, Vec::len)
    }

    /// Positions cached for sequence `seq` (after the last completed step).
    pub fn seq_len(&self, seq: usize) -> Result<usize> {
        let row = self.kv_heads * self.head_dim;
        match self.layers.last().and_then(|l| l.get(seq)) {
            Some(s) => Ok(s.k.len() / row.max(1)),
            None => Err(Error::Msg(format!(
                "the cache holds {} sequences; there is no sequence {seq}",
                self.sequences()
            ))),
        }
    }

    /// Lays out a step: each (sequence, new tokens) becomes a chunk of consecutive rows.
    pub fn plan(&self, chunks: &[(usize, &[u32])]) -> Result<Vec<CacheChunk>> {
        let mut row0 = 0;
        let mut seen = vec![false; self.sequences()];
        chunks
            .iter()
            .map(|&(seq, toks)| {
                let start = self.seq_len(seq)?;
                if std::mem::replace(&mut seen[seq], true) {
                    return Err(Error::Msg(format!("sequence {seq} appears twice in one cached step")));
                }
                let c = CacheChunk { seq, row0, start, rows: toks.len() };
                row0 += toks.len();
                Ok(c)
            })
            .collect()
    }

    /// The position of every row of a step.
    pub fn positions(chunks: &[CacheChunk]) -> Vec<u32> {
        chunks.iter().flat_map(|c| (c.start..c.start + c.rows).map(|p| p as u32)).collect()
    }

    /// Appends the step's keys and values to layer `layer`, then attends.
    /// q (N, Hq, D), k and v (N, Hkv, D) → (N, Hq, D).
    pub fn attend(
        &mut self,
        layer: usize,
        chunks: &[CacheChunk],
        q_heads: usize,
        q: &[f32],
        k: &[f32],
        v: &[f32],
    ) -> Vec<f32> {
        let (hkv, dh) = (self.kv_heads, self.head_dim);
        let kv_row = hkv * dh;
        let caches = &mut self.layers[layer];
        for c in chunks {
            let s = &mut caches[c.seq];
            debug_assert_eq!(s.k.len(), c.start * kv_row, "cache and plan disagree");
            s.k.extend_from_slice(&k[c.row0 * kv_row..(c.row0 + c.rows) * kv_row]);
            s.v.extend_from_slice(&v[c.row0 * kv_row..(c.row0 + c.rows) * kv_row]);
        }
        let caches = &self.layers[layer];
        let group = q_heads / hkv;
        let scale = 1.0 / (dh as f32).sqrt();
        let n: usize = chunks.iter().map(|c| c.rows).sum();
        let mut out = vec![0.0f32; n * q_heads * dh];
        // One task per (row, query head).
        let tasks: Vec<(usize, usize, usize)> =
            chunks.iter().flat_map(|c| (0..c.rows).map(move |j| (c.row0 + j, c.seq, c.start + j))).collect();
        out.par_chunks_mut(q_heads * dh).zip(tasks.par_iter()).for_each(|(orow, &(row, seq, pos))| {
            let cache = &caches[seq];
            let mut s = vec![0.0f32; pos + 1];
            for h in 0..q_heads {
                let g = h / group;
                let qh = &q[(row * q_heads + h) * dh..][..dh];
                for (j, sj) in s.iter_mut().enumerate() {
                    let kj = &cache.k[(j * hkv + g) * dh..][..dh];
                    *sj = scale * qh.iter().zip(kj).map(|(a, b)| a * b).sum::<f32>();
                }
                let m = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut denom = 0.0f32;
                for sj in s.iter_mut() {
                    *sj = (*sj - m).exp();
                    denom += *sj;
                }
                let oh = &mut orow[h * dh..(h + 1) * dh];
                for (j, &p) in s.iter().enumerate() {
                    let vj = &cache.v[(j * hkv + g) * dh..][..dh];
                    for (o, &x) in oh.iter_mut().zip(vj) {
                        *o += p * x;
                    }
                }
                oh.iter_mut().for_each(|o| *o /= denom);
            }
        });
        out
    }

    /// Drops sequences' cached positions (a finished sequence frees its memory).
    pub fn clear(&mut self, seq: usize) {
        for l in &mut self.layers {
            if let Some(s) = l.get_mut(seq) {
                *s = SeqKv::default();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::{attention_fwd, AttnDims};

    fn pseudo(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                (((i as u32).wrapping_mul(2654435761).wrapping_add(seed * 97)) % 1000) as f32 / 500.0 - 1.0
            })
            .collect()
    }

    /// Prefill of 3 tokens then 2 single-token steps equals full causal attention over 5 tokens.
    #[test]
    fn cached_attention_equals_full_attention() {
        let (hq, hkv, dh, t) = (4, 2, 3, 5);
        let q = pseudo(t * hq * dh, 1);
        let k = pseudo(t * hkv * dh, 2);
        let v = pseudo(t * hkv * dh, 3);
        let d = AttnDims {
            batch: 1,
            seq: t,
            q_heads: hq,
            kv_heads: hkv,
            head_dim: dh,
            scale: 1.0 / (dh as f64).sqrt(),
        };
        let full = attention_fwd::<f32>(&d, &q, &k, &v, &[t]).out;
        let mut cache = KvCache::new(1, 2, hkv, dh);
        let mut got = Vec::new();
        for (a, b) in [(0, 3), (3, 4), (4, 5)] {
            let toks = vec![0u32; b - a];
            // Sequence 1 is left untouched: it must not influence sequence 0.
            let plan = cache.plan(&[(0, &toks)]).unwrap();
            got.extend(cache.attend(
                0,
                &plan,
                hq,
                &q[a * hq * dh..b * hq * dh],
                &k[a * hkv * dh..b * hkv * dh],
                &v[a * hkv * dh..b * hkv * dh],
            ));
        }
        assert_eq!(cache.seq_len(0).unwrap(), 5);
        assert_eq!(cache.seq_len(1).unwrap(), 0);
        for (x, y) in got.iter().zip(&full) {
            assert!((x - y).abs() < 1e-6, "{x} vs {y}");
        }
    }
}
