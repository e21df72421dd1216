//! The residual add fused with RMSNorm: x, r (.., C), w (C) → (sum = x + r, y = rms_norm(sum)).
//! Both are outputs (sum is the residual stream, y feeds the next layer); the backward is the
//! norm's with the sum's own gradient added: dx = dr = (the norm's d input) + dsum.

use super::{dense, wrap, Tape, Var};
use crate::error::{shape_err, Result};
use crate::tensor::{Storage, Tensor};

impl Tape {
    /// → (sum, y).
    pub fn add_rms_norm(&mut self, x: &Var, r: &Var, w: &Var, eps: f64) -> Result<(Var, Var)> {
        const OP: &str = "add_rms_norm";
        let (xt, rt, wt) = (dense(x)?, dense(r)?, dense(w)?);
        let cols = xt.shape().last();
        if rt.shape() != xt.shape() || wt.dims() != [cols] {
            return shape_err(
                OP,
                format!("residual {} and weight {} for input {}", rt.shape(), wt.shape(), xt.shape()),
            );
        }
        let (sum, y, rstd) = Storage::add_rms_norm_fwd(xt.view()?, rt.view()?, wt.view()?, cols, eps)?;
        let shape = xt.shape().clone();
        let (sum, y) = (wrap(sum, shape.clone())?, wrap(y, shape.clone())?);
        let rstd = wrap(rstd, [shape.rows()])?;
        let saved = sum.clone();
        let mut out = self.push_many(vec![sum, y], &[x, r, w], move |g| {
            let mut g = g.into_iter();
            let (dsum, dy) = (g.next().flatten(), g.next().flatten());
            let (d, dw) = match (dy, dsum) {
                (None, None) => return Ok(vec![None, None, None]),
                (None, Some(dsum)) => (dsum, None),
                (Some(dy), None) => {
                    let dy = dy.contiguous()?;
                    let (d, dw) =
                        Storage::rms_norm_bwd(saved.view()?, wt.view()?, rstd.view()?, dy.view()?, cols)?;
                    (wrap(d, shape)?, Some(wrap(dw, [cols])?))
                }
                (Some(dy), Some(dsum)) => {
                    let dy = dy.contiguous()?;
                    let dsum = same_dtype(dsum, &dy)?;
                    let (d, dw) = Storage::add_rms_norm_bwd(
                        saved.view()?,
                        wt.view()?,
                        rstd.view()?,
                        dy.view()?,
                        dsum.view()?,
                        cols,
                    )?;
                    (wrap(d, shape)?, Some(wrap(dw, [cols])?))
                }
            };
            Ok(vec![Some(d.clone()), Some(d), dw])
        });
        let y = out.pop();
        let sum = out.pop();
        match (sum, y) {
            (Some(sum), Some(y)) => Ok((sum, y)),
            _ => Err(crate::error::Error::Msg("internal: add_rms_norm recorded no outputs".into())),
        }
    }
}

/// `g` dense and in `like`'s dtype (gradients of one activation arriving from two consumers may
/// have met in f32).
pub(super) fn same_dtype(g: Tensor, like: &Tensor) -> Result<Tensor> {
    let g = if g.dtype() == like.dtype() { g } else { g.to_dtype(like.dtype())? };
    g.contiguous()
}
