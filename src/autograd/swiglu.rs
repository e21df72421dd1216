//! SwiGLU, silu(gate)·up, and the residual add: elementwise ops of two inputs.

use super::{add_tensors, dense, wrap, Tape, Var};
use crate::error::{shape_err, Error, Result};
use crate::tensor::Storage;

impl Tape {
    /// silu(gate)·up, both (.., I).
    pub fn swiglu(&mut self, gate: &Var, up: &Var) -> Result<Var> {
        let (gt, ut) = (dense(gate)?, dense(up)?);
        if gt.shape() != ut.shape() {
            return shape_err("swiglu", format!("gate {} and up {} differ", gt.shape(), ut.shape()));
        }
        let y = wrap(Storage::swiglu_fwd(gt.view()?, ut.view()?)?, gt.shape().clone())?;
        Ok(self.push(y, &[gate, up], move |dy| {
            let dy = dy.contiguous()?;
            let (dg, du) = Storage::swiglu_bwd(gt.view()?, ut.view()?, dy.view()?)?;
            Ok(vec![Some(wrap(dg, gt.shape().clone())?), Some(wrap(du, gt.shape().clone())?)])
        }))
    }

    /// silu(gate)·up over rows [gate | up] of one (N, 2I) product (the adjacent gate and up weights
    /// as one matrix): forwards without a gradient only.
    pub fn swiglu_packed(&mut self, x: &Var) -> Result<Var> {
        if self.needs_grad(&[x]) {
            return Err(Error::Msg(
                "swiglu over a packed product has no backward: run it on Tape::no_grad()".into(),
            ));
        }
        let xt = dense(x)?;
        let width = xt.shape().last() / 2;
        if width == 0 || xt.shape().last() != 2 * width {
            return shape_err(
                "swiglu_packed",
                format!("rows of {} are not [gate | up] halves", xt.shape().last()),
            );
        }
        let rows = xt.numel() / (2 * width);
        Ok(Var::constant(wrap(Storage::swiglu_packed_fwd(xt.view()?, width)?, [rows, width])?))
    }

    /// a + b (the residual connection); the gradient passes to both unchanged.
    pub fn add(&mut self, a: &Var, b: &Var) -> Result<Var> {
        let y = add_tensors(a.value(), b.value())?;
        Ok(self.push(y, &[a, b], |dy| Ok(vec![Some(dy.clone()), Some(dy.clone())])))
    }
}
