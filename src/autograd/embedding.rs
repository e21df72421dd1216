//! Token embedding: out[i] = table[ids[i]]; d(table) accumulates dout rows at the ids. The same
//! op gathers rows of any (rows, C) value (the completion rows of hidden states).

use super::{dense, wrap, Tape, Var};
use crate::error::{shape_err, Result};
use crate::tensor::{Storage, Tensor};

impl Tape {
    /// ids (N) u32 into table (V, C) → (N, C).
    pub fn embedding(&mut self, ids: &Tensor, table: &Var) -> Result<Var> {
        const OP: &str = "embedding";
        let t = dense(table)?;
        let &[vocab, dim] = t.dims() else {
            return shape_err(OP, format!("table must be (vocab, dim), got {}", t.shape()));
        };
        if ids.dims().len() != 1 {
            return shape_err(OP, format!("ids must be one-dimensional, got {}", ids.shape()));
        }
        let ids = ids.contiguous()?;
        let y = wrap(Storage::embedding_fwd(t.view()?, ids.view()?, dim)?, [ids.numel(), dim])?;
        Ok(self.push(y, &[table], move |dy| {
            let dy = dy.contiguous()?;
            let g = Storage::embedding_bwd(dy.view()?, ids.view()?, vocab, dim)?;
            Ok(vec![Some(wrap(g, [vocab, dim])?)])
        }))
    }
}
