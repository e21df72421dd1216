//! Linear layer: y = x·Wᵀ + b (W stored (out, in), as nn.Linear) or y = x·W + b (W stored
//! (in, out), as GPT-2's Conv1D). Backward: dx = dy·W, dW = dyᵀ·x (or its transpose), db = Σ dy.

use super::{dense, wrap, Tape, Var};
use crate::backend::ops::LinearDims;
pub use crate::backend::ops::WeightLayout;
use crate::error::{shape_err, Result};
use crate::tensor::{Storage, Tensor};

const OP: &str = "linear";

fn dims(x: &Tensor, w: &Tensor, b: Option<&Tensor>, layout: WeightLayout) -> Result<LinearDims> {
    let d_in = x.shape().last();
    let (wo, wi) = match (w.dims(), layout) {
        (&[o, i], WeightLayout::OutIn) => (o, i),
        (&[i, o], WeightLayout::InOut) => (o, i),
        _ => return shape_err(OP, format!("weight must be 2-D, got {}", w.shape())),
    };
    if wi != d_in || x.dims().is_empty() {
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
    pub fn linear(&mut self, x: &Var, w: &Var, b: Option<&Var>, layout: WeightLayout) -> Result<Var> {
        let (xt, wt) = (dense(x)?, dense(w)?);
        let bt = b.map(dense).transpose()?;
        let d = dims(&xt, &wt, bt.as_ref(), layout)?;
        let mut out_shape = xt.dims().to_vec();
        *out_shape.last_mut().expect("checked: rank ≥ 1") = d.d_out;
        let bv = bt.as_ref().map(|b| b.view()).transpose()?;
        let y = wrap(Storage::linear_fwd(xt.view()?, wt.view()?, bv, d)?, out_shape)?;
        let mut inputs = vec![x, w];
        inputs.extend(b);
        let has_bias = b.is_some();
        Ok(self.push(y, &inputs, move |dy| {
            let dy = dy.contiguous()?;
            let (dx, dw, db) = Storage::linear_bwd(xt.view()?, wt.view()?, dy.view()?, d, has_bias)?;
            let mut out = vec![Some(wrap(dx, xt.shape().clone())?), Some(wrap(dw, wt.shape().clone())?)];
            if let Some(db) = db {
                out.push(Some(wrap(db, [d.d_out])?));
            }
            Ok(out)
        }))
    }
}
