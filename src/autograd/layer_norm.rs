//! LayerNorm over the last dimension: x (.., C), w (C), b (C).

use super::{dense, wrap, Tape, Var};
use crate::error::{shape_err, Result};
use crate::tensor::Storage;

impl Tape {
    pub fn layer_norm(&mut self, x: &Var, w: &Var, b: &Var, eps: f64) -> Result<Var> {
        const OP: &str = "layer_norm";
        let (xt, wt, bt) = (dense(x)?, dense(w)?, dense(b)?);
        let cols = xt.shape().last();
        if wt.dims() != [cols] || bt.dims() != [cols] {
            return shape_err(
                OP,
                format!("weight {} and bias {} for input {}", wt.shape(), bt.shape(), xt.shape()),
            );
        }
        let (y, mean, rstd) = Storage::layer_norm_fwd(xt.view()?, wt.view()?, bt.view()?, cols, eps)?;
        let rows = xt.shape().rows();
        let y = wrap(y, xt.shape().clone())?;
        let (mean, rstd) = (wrap(mean, [rows])?, wrap(rstd, [rows])?);
        Ok(self.push(y, &[x, w, b], move |dy| {
            let dy = dy.contiguous()?;
            let (dx, dw, db) = Storage::layer_norm_bwd(
                xt.view()?,
                wt.view()?,
                mean.view()?,
                rstd.view()?,
                dy.view()?,
                cols,
            )?;
            Ok(vec![Some(wrap(dx, xt.shape().clone())?), Some(wrap(dw, [cols])?), Some(wrap(db, [cols])?)])
        }))
    }
}
