//! The key/value cache of generation, pre-allocated on the model's device for a whole batch.
//!
//! Per layer, keys and values of `batch` sequences of up to `capacity` positions, (B·L, Hkv·D),
//! after RoPE; each sequence has its own length. A step appends the new tokens of some sequences
//! (prompts of different lengths in one prefill, then one token per sequence), and each new query
//! at position p attends to positions 0..=p of its own sequence (`Tape::attention_cached`).

use crate::error::{Error, Result};
use crate::tensor::{DType, Device, Tensor};

pub struct KvCache {
    k: Vec<Tensor>, // [layer] (B·L, Hkv·D)
    v: Vec<Tensor>, // [layer] (B·L, Hkv·D)
    lengths: Vec<usize>,
    capacity: usize,
    width: usize, // Hkv·D
}

/// The rows of one step: for each new token, its sequence and position, and the row of the cache
/// it goes to; (N) u32 each, on the cache's device.
pub struct CacheStep {
    pub seq: Tensor,
    pub pos: Tensor,
    pub rows: Tensor,
    /// Made on the device by the generation loop, which vouches for them (no read-back; see
    /// `CachedAttnDims::vouched`).
    pub vouched: bool,
    fresh: Option<Fresh>,
    longest: usize,
    chunks: Vec<(usize, usize)>,
}

/// A step whose every sequence starts at position 0 (a prefill of new prompts): the rows'
/// sequences, packed, so that attention runs within the rows (the prefill kernel) instead of
/// over the cache.
pub struct Fresh {
    pub starts: Tensor,
    pub lengths: Tensor,
    pub longest: usize,
}

impl CacheStep {
    /// One token per row, with indices made on the device (`Tensor::decode_rows`): rows are
    /// cache slots; `longest` bounds the positions + 1 (the cache's capacity). The cache's host
    /// lengths are not advanced by such a step: the device keeps the positions.
    pub fn on_device(seq: Tensor, pos: Tensor, rows: Tensor, longest: usize) -> CacheStep {
        CacheStep { seq, pos, rows, vouched: true, fresh: None, longest, chunks: vec![] }
    }

    pub fn fresh(&self) -> Option<&Fresh> {
        self.fresh.as_ref()
    }

    /// The longest sequence the step's rows reach.
    pub fn longest(&self) -> usize {
        self.longest
    }
}

impl KvCache {
    pub fn new(
        layers: usize,
        batch: usize,
        capacity: usize,
        width: usize,
        dtype: DType,
        device: Device,
    ) -> Result<KvCache> {
        let make = || Tensor::zeros([batch * capacity, width], dtype, device);
        Ok(KvCache {
            k: (0..layers).map(|_| make()).collect::<Result<_>>()?,
            v: (0..layers).map(|_| make()).collect::<Result<_>>()?,
            lengths: vec![0; batch],
            capacity,
            width,
        })
    }

    pub fn batch(&self) -> usize {
        self.lengths.len()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Positions cached for sequence `seq`.
    pub fn seq_len(&self, seq: usize) -> Result<usize> {
        self.lengths.get(seq).copied().ok_or_else(|| {
            Error::Msg(format!("the cache holds {} sequences; there is no sequence {seq}", self.batch()))
        })
    }

    /// Lays out a step that appends `n` tokens to each listed sequence, `(sequence, n)`, in order.
    pub fn plan(&self, chunks: &[(usize, usize)], device: Device) -> Result<CacheStep> {
        let mut seen = vec![false; self.batch()];
        let (mut seq, mut pos, mut rows) = (Vec::new(), Vec::new(), Vec::new());
        let mut fresh = true;
        for &(s, n) in chunks {
            let start = self.seq_len(s)?;
            if std::mem::replace(&mut seen[s], true) {
                return Err(Error::Msg(format!("sequence {s} appears twice in one cached step")));
            }
            if n == 0 {
                return Err(Error::Msg("a cached step needs at least one token per sequence".into()));
            }
            if start + n > self.capacity {
                return Err(Error::Msg(format!(
                    "sequence {s} would reach {} positions, past the cache's {}",
                    start + n,
                    self.capacity
                )));
            }
            fresh &= start == 0;
            for p in start..start + n {
                seq.push(s as u32);
                pos.push(p as u32);
                rows.push((s * self.capacity + p) as u32);
            }
        }
        let fresh = match fresh && !chunks.is_empty() {
            false => None,
            true => {
                let lengths: Vec<u32> = chunks.iter().map(|&(_, n)| n as u32).collect();
                let starts: Vec<u32> =
                    lengths.iter().scan(0, |at, &l| Some(std::mem::replace(at, *at + l))).collect();
                Some(Fresh {
                    starts: Tensor::from_u32(&starts, device)?,
                    lengths: Tensor::from_u32(&lengths, device)?,
                    longest: chunks.iter().map(|c| c.1).max().unwrap_or(0),
                })
            }
        };
        Ok(CacheStep {
            seq: Tensor::from_u32(&seq, device)?,
            longest: pos.iter().map(|&p| p as usize + 1).max().unwrap_or(0),
            pos: Tensor::from_u32(&pos, device)?,
            rows: Tensor::from_u32(&rows, device)?,
            vouched: false,
            fresh,
            chunks: chunks.to_vec(),
        })
    }

    /// Writes the step's keys and values (N, Hkv·D) of `layer` into their rows.
    pub fn write(&mut self, layer: usize, step: &CacheStep, k: &Tensor, v: &Tensor) -> Result<()> {
        let width = self.width;
        let (kc, vc) = (self.k.get_mut(layer), self.v.get_mut(layer));
        let (Some(kc), Some(vc)) = (kc, vc) else {
            return Err(Error::Msg(format!("the cache has no layer {layer}")));
        };
        kc.copy_rows_(width, &step.rows, k, step.vouched)?;
        vc.copy_rows_(width, &step.rows, v, step.vouched)
    }

    /// The decode path's rotary embedding and append of `layer` in one pass: the step's q (N,
    /// Hq·D) → rotated; its k (N, Hkv·D) rotated and v written to the step's cache rows.
    #[allow(clippy::too_many_arguments)]
    pub fn rope_append(
        &mut self,
        layer: usize,
        step: &CacheStep,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        inv_freq: &[f64],
        heads: (usize, usize),
    ) -> Result<Tensor> {
        let (kc, vc) = (self.k.get_mut(layer), self.v.get_mut(layer));
        let (Some(kc), Some(vc)) = (kc, vc) else {
            return Err(Error::Msg(format!("the cache has no layer {layer}")));
        };
        kc.rope_append_(vc, q, k, v, &step.pos, &step.rows, inv_freq, heads, step.vouched)
    }

    /// Keys and values of `layer`, (B·L, Hkv·D).
    pub fn layer(&self, layer: usize) -> Result<(&Tensor, &Tensor)> {
        match (self.k.get(layer), self.v.get(layer)) {
            (Some(k), Some(v)) => Ok((k, v)),
            _ => Err(Error::Msg(format!("the cache has no layer {layer}"))),
        }
    }

    /// The identities of the layers' storages (see `Tensor::storage_id`).
    pub fn storage_ids(&self) -> Vec<usize> {
        self.k.iter().chain(&self.v).map(Tensor::storage_id).collect()
    }

    /// Counts the step's tokens as cached (after every layer has written them).
    pub fn advance(&mut self, step: &CacheStep) {
        for &(s, n) in &step.chunks {
            self.lengths[s] += n;
        }
    }

    /// Empties sequence `seq` (its rows are reused by the next tokens it gets).
    pub fn reset(&mut self, seq: usize) {
        if let Some(l) = self.lengths.get_mut(seq) {
            *l = 0;
        }
    }
}
