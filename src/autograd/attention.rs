//! Causal self-attention with grouped-query heads and per-sequence lengths (right padding).
//! q (B·T, Hq·D), k and v (B·T, Hkv·D) → (B·T, Hq·D). Rows at or past a sequence's length are
//! padding: their outputs are zero and no gradient flows through them.

use super::dispatch::{cpu_real, cpu_tensor, same_device, same_dtype};
use super::{Tape, Var};
use crate::backend::cpu::{self, AttnDims};
use crate::error::{shape_err, Error, Result};
use crate::tensor::{Device, Tensor};

const OP: &str = "attention";

#[derive(Clone, Copy, Debug)]
pub struct AttentionSpec {
    pub batch: usize,
    pub seq: usize,
    pub q_heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl Tape {
    pub fn attention(
        &mut self,
        q: Var,
        k: Var,
        v: Var,
        spec: AttentionSpec,
        lengths: &[usize],
    ) -> Result<Var> {
        let (qt, kt, vt) = (self.value(q).clone(), self.value(k).clone(), self.value(v).clone());
        let AttentionSpec { batch, seq, q_heads, kv_heads, head_dim } = spec;
        let rows = batch * seq;
        if kv_heads == 0 || q_heads % kv_heads != 0 {
            return shape_err(OP, format!("{q_heads} query heads cannot share {kv_heads} key/value heads"));
        }
        if qt.numel() != rows * q_heads * head_dim
            || kt.numel() != rows * kv_heads * head_dim
            || vt.numel() != rows * kv_heads * head_dim
        {
            return shape_err(
                OP,
                format!("q {}, k {}, v {} do not match {spec:?}", qt.shape(), kt.shape(), vt.shape()),
            );
        }
        if lengths.len() != batch || lengths.iter().any(|&l| l > seq) {
            return shape_err(OP, format!("lengths {lengths:?} for batch {batch} of {seq} positions"));
        }
        same_dtype(OP, &[&qt, &kt, &vt])?;
        let device = same_device(OP, &[&qt, &kt, &vt])?;
        if device != Device::Cpu {
            return Err(Error::Unsupported { op: OP, device });
        }
        let d = AttnDims { batch, seq, q_heads, kv_heads, head_dim, scale: 1.0 / (head_dim as f64).sqrt() };
        let lengths = lengths.to_vec();
        let (y, lse) = cpu_real!(OP, qt, |T| {
            let o = cpu::attention_fwd::<T>(&d, qt.cpu_slice()?, kt.cpu_slice()?, vt.cpu_slice()?, &lengths);
            Ok((cpu_tensor(o.out, qt.shape().clone())?, cpu_tensor(o.lse, [batch, q_heads, seq])?))
        })?;
        let out = y.clone();
        let backward = move |dy: &Tensor| -> Result<Vec<Option<Tensor>>> {
            cpu_real!(OP, qt, |T| {
                let g = cpu::attention_bwd::<T>(
                    &d,
                    qt.cpu_slice()?,
                    kt.cpu_slice()?,
                    vt.cpu_slice()?,
                    &lengths,
                    out.cpu_slice()?,
                    lse.cpu_slice()?,
                    dy.cpu_slice()?,
                );
                Ok(vec![
                    Some(cpu_tensor(g.dq, qt.shape().clone())?),
                    Some(cpu_tensor(g.dk, kt.shape().clone())?),
                    Some(cpu_tensor(g.dv, vt.shape().clone())?),
                ])
            })
        };
        Ok(self.push(y, vec![q, k, v], Box::new(backward)))
    }
}
