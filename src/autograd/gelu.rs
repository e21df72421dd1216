//! GELU (tanh form, as GPT-2), elementwise.

use super::{dense, wrap, Tape, Var};
use crate::error::Result;
use crate::tensor::Storage;

impl Tape {
    pub fn gelu(&mut self, x: &Var) -> Result<Var> {
        let xt = dense(x)?;
        let y = wrap(Storage::gelu_fwd(xt.view()?)?, xt.shape().clone())?;
        Ok(self.push(y, &[x], move |dy| {
            let dy = dy.contiguous()?;
            Ok(vec![Some(wrap(Storage::gelu_bwd(xt.view()?, dy.view()?)?, xt.shape().clone())?)])
        }))
    }
}
