//! A block of columns: x (.., W) → (.., L) = x[.., start..start+L]. The backward scatters the
//! gradient into zeros of the input's shape, so splitting one tensor in pieces accumulates back.

use super::{dense, wrap, Tape, Var};
use crate::error::{shape_err, Result};
use crate::tensor::Storage;

impl Tape {
    pub fn narrow_cols(&mut self, x: &Var, start: usize, len: usize) -> Result<Var> {
        const OP: &str = "narrow_cols";
        let xt = dense(x)?;
        let width = xt.shape().last();
        if xt.dims().is_empty() || start + len > width {
            return shape_err(OP, format!("columns {start}..{} of an input {}", start + len, xt.shape()));
        }
        let mut out_shape = xt.dims().to_vec();
        *out_shape.last_mut().expect("rank ≥ 1") = len;
        let y = wrap(Storage::narrow_cols_fwd(xt.view()?, width, start, len)?, out_shape)?;
        let in_shape = xt.shape().clone();
        Ok(self.push(y, &[x], move |dy| {
            let dy = dy.contiguous()?;
            Ok(vec![Some(wrap(Storage::narrow_cols_bwd(dy.view()?, width, start, len)?, in_shape)?)])
        }))
    }
}
