//! Cross-entropy over the vocabulary with an ignore mask (negative targets), mean over the
//! counted rows: the SFT loss.

use super::dispatch::{cpu_real, cpu_tensor};
use super::{Tape, Var};
use crate::backend::cpu;
use crate::error::{shape_err, Error, Result};
use crate::tensor::{Device, Tensor};

const OP: &str = "cross_entropy";

impl Tape {
    /// logits (N, V), targets (N) with negative entries ignored → scalar.
    pub fn cross_entropy(&mut self, logits: Var, targets: &[i32]) -> Result<Var> {
        let lt = self.value(logits).clone();
        let vocab = lt.shape().last();
        if targets.len() != lt.shape().rows() {
            return shape_err(OP, format!("{} targets for logits {}", targets.len(), lt.shape()));
        }
        if let Some(&bad) = targets.iter().find(|&&t| t >= 0 && t as usize >= vocab) {
            return shape_err(OP, format!("target {bad} is outside the vocabulary of {vocab}"));
        }
        if lt.device() != Device::Cpu {
            return Err(Error::Unsupported { op: OP, device: lt.device() });
        }
        let targets = targets.to_vec();
        let (loss, lse, valid) = cpu_real!(OP, lt, |T| {
            let o = cpu::cross_entropy_fwd::<T>(lt.cpu_slice()?, &targets, vocab);
            Ok((cpu_tensor(vec![o.loss], [1])?, cpu_tensor(o.lse, [targets.len()])?, o.valid))
        })?;
        let backward = move |dl: &Tensor| -> Result<Vec<Option<Tensor>>> {
            cpu_real!(OP, lt, |T| {
                let dloss = dl.cpu_slice::<T>()?[0];
                let g = cpu::cross_entropy_bwd::<T>(
                    lt.cpu_slice()?,
                    &targets,
                    lse.cpu_slice()?,
                    vocab,
                    dloss,
                    valid,
                );
                Ok(vec![Some(cpu_tensor(g, lt.shape().clone())?)])
            })
        };
        Ok(self.push(loss, vec![logits], Box::new(backward)))
    }
}
