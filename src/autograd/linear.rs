//! Linear layer: y = x·Wᵀ + b (W stored (out, in), as nn.Linear) or y = x·W + b (W stored
//! (in, out), as GPT-2's Conv1D). Backward: dx = dy·W, dW = dyᵀ·x (or its transpose), db = Σ dy.

use super::dispatch::{cpu_real, cpu_tensor, same_device, same_dtype};
use super::{Tape, Var};
use crate::backend::cpu::{self, LinearDims};
use crate::error::{shape_err, Error, Result};
use crate::tensor::{Device, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightLayout {
    /// (out, in): PyTorch `nn.Linear`, Llama-family checkpoints.
    OutIn,
    /// (in, out): GPT-2 `Conv1D`.
    InOut,
}

const OP: &str = "linear";

fn dims(x: &Tensor, w: &Tensor, b: Option<&Tensor>, layout: WeightLayout) -> Result<LinearDims> {
    let d_in = x.shape().last();
    let (wo, wi) = match (w.dims(), layout) {
        (&[o, i], WeightLayout::OutIn) => (o, i),
        (&[i, o], WeightLayout::InOut) => (o, i),
        _ => return shape_err(OP, format!("weight must be 2-D, got {}", w.shape())),
    };
    if wi != d_in {
        return shape_err(
            OP,
            format!("input {} does not match weight {} ({layout:?})", x.shape(), w.shape()),
        );
    }
    if let Some(b) = b {
        if b.dims() != [wo] {
            return shape_err(OP, format!("bias {} for {wo} outputs", b.shape()));
        }
    }
    Ok(LinearDims { n: x.shape().rows(), d_in, d_out: wo, w_in_out: layout == WeightLayout::InOut })
}

impl Tape {
    /// x (.., Din) → (.., Dout).
    pub fn linear(&mut self, x: Var, w: Var, b: Option<Var>, layout: WeightLayout) -> Result<Var> {
        let (xt, wt) = (self.value(x).clone(), self.value(w).clone());
        let bt = b.map(|b| self.value(b).clone());
        let d = dims(&xt, &wt, bt.as_ref(), layout)?;
        let mut ins = vec![&xt, &wt];
        ins.extend(bt.as_ref());
        same_dtype(OP, &ins)?;
        let device = same_device(OP, &ins)?;
        if device != Device::Cpu {
            return Err(Error::Unsupported { op: OP, device });
        }
        let mut out_shape = xt.dims().to_vec();
        *out_shape.last_mut().unwrap() = d.d_out;
        let y = cpu_real!(OP, xt, |T| {
            let bs = bt.as_ref().map(|b| b.cpu_slice::<T>()).transpose()?;
            cpu_tensor(cpu::linear_fwd::<T>(d, xt.cpu_slice()?, wt.cpu_slice()?, bs), out_shape.clone())
        })?;
        let mut inputs = vec![x, w];
        inputs.extend(b);
        let has_bias = b.is_some();
        let backward = move |dy: &Tensor| -> Result<Vec<Option<Tensor>>> {
            cpu_real!(OP, xt, |T| {
                let g = cpu::linear_bwd::<T>(d, xt.cpu_slice()?, wt.cpu_slice()?, dy.cpu_slice()?, has_bias);
                let mut out = vec![
                    Some(cpu_tensor(g.dx, xt.shape().clone())?),
                    Some(cpu_tensor(g.dw, wt.shape().clone())?),
                ];
                if let Some(db) = g.db {
                    out.push(Some(cpu_tensor(db, [d.d_out])?));
                }
                Ok(out)
            })
        };
        Ok(self.push(y, inputs, Box::new(backward)))
    }
}
