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
        // A backend may return the table's gradient in f32 (a weight gradient, for the optimizer);
        // when the table is an op's output (rows gathered from hidden states), the op before it
        // needs its gradient in the table's own dtype.
        let computed = table.node.is_some_and(|n| {
            n.tape == self.id && self.nodes.get(n.index).is_some_and(|n| n.backward.is_some())
        });
        let dtype = t.dtype();
        Ok(self.push(y, &[table], move |dy| {
            let dy = dy.contiguous()?;
            let g = wrap(Storage::embedding_bwd(dy.view()?, ids.view()?, vocab, dim)?, [vocab, dim])?;
            Ok(vec![Some(if computed && g.dtype() != dtype { g.to_dtype(dtype)? } else { g })])
        }))
    }
}
