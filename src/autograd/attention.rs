//! Causal self-attention with grouped-query heads over sequences anywhere in the rows (packed back
//! to back, or with rows of no sequence between them), and attention of new rows over a key/value
//! cache (generation; no backward).

use super::{dense, wrap, Tape, Var};
use crate::backend::ops::{AttnDims, CachedAttnDims};
use crate::error::{shape_err, Error, Result};
use crate::tensor::{Storage, Tensor};

impl Tape {
    /// q (N, Hq·D), k and v (N, Hkv·D); sequence b is rows starts[b]..starts[b] + lengths[b]
    /// (both (B) u32) → (N, Hq·D). Rows of no sequence (padding) get output zero and pass no
    /// gradient.
    pub fn attention(
        &mut self,
        q: &Var,
        k: &Var,
        v: &Var,
        d: AttnDims,
        starts: &Tensor,
        lengths: &Tensor,
    ) -> Result<Var> {
        const OP: &str = "attention";
        let (qt, kt, vt) = (dense(q)?, dense(k)?, dense(v)?);
        let rows = d.rows;
        if d.kv_heads == 0 || d.q_heads % d.kv_heads != 0 {
            return shape_err(
                OP,
                format!("{} query heads cannot share {} key/value heads", d.q_heads, d.kv_heads),
            );
        }
        if qt.numel() != rows * d.q_heads * d.head_dim
            || kt.numel() != rows * d.kv_heads * d.head_dim
            || vt.numel() != rows * d.kv_heads * d.head_dim
        {
            return shape_err(
                OP,
                format!("q {}, k {}, v {} do not match {d:?}", qt.shape(), kt.shape(), vt.shape()),
            );
        }
        if starts.numel() != d.batch || lengths.numel() != d.batch {
            return shape_err(
                OP,
                format!(
                    "{} starts and {} lengths for {} sequences",
                    starts.numel(),
                    lengths.numel(),
                    d.batch
                ),
            );
        }
        let (starts, lengths) = (starts.contiguous()?, lengths.contiguous()?);
        let (y, lse) =
            Storage::attention_fwd(qt.view()?, kt.view()?, vt.view()?, starts.view()?, lengths.view()?, &d)?;
        let y = wrap(y, qt.shape().clone())?;
        let lse = wrap(lse, [d.rows, d.q_heads])?;
        let out = y.clone();
        Ok(self.push(y, &[q, k, v], move |dy| {
            let dy = dy.contiguous()?;
            let (dq, dk, dv) = Storage::attention_bwd(
                qt.view()?,
                kt.view()?,
                vt.view()?,
                starts.view()?,
                lengths.view()?,
                out.view()?,
                lse.view()?,
                dy.view()?,
                &d,
            )?;
            Ok(vec![
                Some(wrap(dq, qt.shape().clone())?),
                Some(wrap(dk, kt.shape().clone())?),
                Some(wrap(dv, vt.shape().clone())?),
            ])
        }))
    }

    /// Query rows q (N, Hq·D) over a cache (B·L, Hkv·D) that already holds their keys and values;
    /// row i is at position pos[i] of sequence seq[i] (both (N) u32). Forward only.
    pub fn attention_cached(
        &mut self,
        q: &Var,
        k_cache: &Tensor,
        v_cache: &Tensor,
        seq: &Tensor,
        pos: &Tensor,
        d: CachedAttnDims,
    ) -> Result<Var> {
        if self.needs_grad(&[q]) {
            return Err(Error::Msg(
                "attention over a key/value cache has no backward: run it on Tape::no_grad()".into(),
            ));
        }
        let (qt, kc, vc) = (dense(q)?, k_cache.contiguous()?, v_cache.contiguous()?);
        let (seq, pos) = (seq.contiguous()?, pos.contiguous()?);
        let y =
            Storage::attention_cached_fwd(qt.view()?, kc.view()?, vc.view()?, seq.view()?, pos.view()?, &d)?;
        Ok(Var::constant(wrap(y, qt.shape().clone())?))
    }
}
