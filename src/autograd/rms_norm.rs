//! RMSNorm over the last dimension: x (.., C), w (C).

use super::{dense, wrap, Tape, Var};
use crate::error::{shape_err, Result};
use crate::tensor::Storage;

impl Tape {
    pub fn rms_norm(&mut self, x: &Var, w: &Var, eps: f64) -> Result<Var> {
        const OP: &str = "rms_norm";
        let (xt, wt) = (dense(x)?, dense(w)?);
        let cols = xt.shape().last();
        if wt.dims() != [cols] {
            return shape_err(OP, format!("weight {} for input {}", wt.shape(), xt.shape()));
        }
        let (y, rstd) = Storage::rms_norm_fwd(xt.view()?, wt.view()?, cols, eps)?;
        let y = wrap(y, xt.shape().clone())?;
        let rstd = wrap(rstd, [xt.shape().rows()])?;
        Ok(self.push(y, &[x, w], move |dy| {
            let dy = dy.contiguous()?;
            let (dx, dw) = Storage::rms_norm_bwd(xt.view()?, wt.view()?, rstd.view()?, dy.view()?, cols)?;
            Ok(vec![Some(wrap(dx, xt.shape().clone())?), Some(wrap(dw, [cols])?)])
        }))
    }
}
