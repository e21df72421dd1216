//! Token embedding: out[i] = table[ids[i]]; d(table) accumulates dout rows at the ids.

use super::dispatch::{cpu_real, cpu_tensor};
use super::{Tape, Var};
use crate::backend::cpu;
use crate::error::{shape_err, Error, Result};
use crate::tensor::{Device, Tensor};

const OP: &str = "embedding";

impl Tape {
    /// ids (N) into table (V, C) → (N, C).
    pub fn embedding(&mut self, ids: &[u32], table: Var) -> Result<Var> {
        let tt = self.value(table).clone();
        let &[vocab, dim] = tt.dims() else {
            return shape_err(OP, format!("table must be (vocab, dim), got {}", tt.shape()));
        };
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= vocab) {
            return shape_err(OP, format!("token id {bad} is outside the vocabulary of {vocab} rows"));
        }
        if tt.device() != Device::Cpu {
            return Err(Error::Unsupported { op: OP, device: tt.device() });
        }
        let ids: Vec<u32> = ids.to_vec();
        let y = cpu_real!(OP, tt, |T| cpu_tensor(
            cpu::embedding_fwd::<T>(&ids, tt.cpu_slice()?, dim),
            [ids.len(), dim]
        ))?;
        let backward = move |dy: &Tensor| -> Result<Vec<Option<Tensor>>> {
            cpu_real!(OP, tt, |T| {
                Ok(vec![Some(cpu_tensor(
                    cpu::embedding_bwd::<T>(&ids, dy.cpu_slice()?, vocab, dim),
                    [vocab, dim],
                )?)])
            })
        };
        Ok(self.push(y, vec![table], Box::new(backward)))
    }
}
