//! SwiGLU, silu(gate)·up, and the residual add: elementwise ops of two inputs.

use super::{add_tensors, dense, wrap, Tape, Var};
use crate::error::{shape_err, Result};
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

    /// a + b (the residual connection); the gradient passes to both unchanged.
    pub fn add(&mut self, a: &Var, b: &Var) -> Result<Var> {
        let y = add_tensors(a.value(), b.value())?;
        Ok(self.push(y, &[a, b], |dy| Ok(vec![Some(dy.clone()), Some(dy.clone())])))
    }
}
