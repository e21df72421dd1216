//! The residual add fused with LayerNorm: x, r (.., C), w, b (C) → (sum = x + r,
//! y = layer_norm(sum)). Both are outputs (sum is the residual stream, y feeds the next layer);
//! the backward is the norm's with the sum's own gradient added: dx = dr = (the norm's d input)
//! + dsum.

use super::add_rms_norm::same_dtype;
use super::{dense, wrap, Tape, Var};
use crate::error::{shape_err, Result};
use crate::tensor::Storage;

impl Tape {
    /// → (sum, y).
    pub fn add_layer_norm(&mut self, x: &Var, r: &Var, w: &Var, b: &Var, eps: f64) -> Result<(Var, Var)> {
        const OP: &str = "add_layer_norm";
        let (xt, rt, wt, bt) = (dense(x)?, dense(r)?, dense(w)?, dense(b)?);
        let cols = xt.shape().last();
        if rt.shape() != xt.shape() || wt.dims() != [cols] || bt.dims() != [cols] {
            return shape_err(
                OP,
                format!(
                    "residual {}, weight {} and bias {} for input {}",
                    rt.shape(),
                    wt.shape(),
                    bt.shape(),
                    xt.shape()
                ),
            );
        }
        let (sum, y, mean, rstd) =
            Storage::add_layer_norm_fwd(xt.view()?, rt.view()?, wt.view()?, bt.view()?, cols, eps)?;
        let shape = xt.shape().clone();
        let rows = shape.rows();
        let (sum, y) = (wrap(sum, shape.clone())?, wrap(y, shape.clone())?);
        let (mean, rstd) = (wrap(mean, [rows])?, wrap(rstd, [rows])?);
        let saved = sum.clone();
        let mut out = self.push_many(vec![sum, y], &[x, r, w, b], move |g| {
            let mut g = g.into_iter();
            let (dsum, dy) = (g.next().flatten(), g.next().flatten());
            let (d, dw, db) = match (dy, dsum) {
                (None, None) => return Ok(vec![None, None, None, None]),
                (None, Some(dsum)) => (dsum, None, None),
                (Some(dy), dsum) => {
                    let dy = dy.contiguous()?;
                    let (sv, wv, mv, rv, dyv) =
                        (saved.view()?, wt.view()?, mean.view()?, rstd.view()?, dy.view()?);
                    let (d, dw, db) = match dsum {
                        None => Storage::layer_norm_bwd(sv, wv, mv, rv, dyv, cols)?,
                        Some(dsum) => {
                            let dsum = same_dtype(dsum, &dy)?;
                            Storage::add_layer_norm_bwd(sv, wv, mv, rv, dyv, dsum.view()?, cols)?
                        }
                    };
                    (wrap(d, shape)?, Some(wrap(dw, [cols])?), Some(wrap(db, [cols])?))
                }
            };
            Ok(vec![Some(d.clone()), Some(d), dw, db])
        });
        let y = out.pop();
        let sum = out.pop();
        match (sum, y) {
            (Some(sum), Some(y)) => Ok((sum, y)),
            _ => Err(crate::error::Error::Msg("internal: add_layer_norm recorded no outputs".into())),
        }
    }
}
