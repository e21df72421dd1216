//! Activation recomputation (gradient checkpointing): a sub-computation whose intermediates are
//! not kept. The forward runs it on a no-grad tape, so only its inputs and outputs stay alive;
//! the backward runs it again on a fresh tape from the same inputs and back-propagates through
//! that, trading one more forward of the sub-computation for its activations' memory.
//!
//! The sub-computation must be a pure function of its inputs (the same values give the same
//! outputs): the kernels here are deterministic, so the recomputed forward equals the first.

use super::{Tape, Var};
use crate::error::{Error, Result};
use std::sync::Arc;

/// A sub-computation from its input vars (leaves of the tape it is given, in the order given) to
/// its outputs.
pub type Segment = Arc<dyn Fn(&mut Tape, &[Var]) -> Result<Vec<Var>> + Send + Sync>;

impl Tape {
    /// `f(inputs)`, keeping none of its intermediates for the backward (see the module doc).
    pub fn checkpoint(&mut self, inputs: &[&Var], f: Segment) -> Result<Vec<Var>> {
        if !self.needs_grad(inputs) {
            // Nothing to recompute for: an ordinary forward on this tape (no-grad or constants).
            let vars: Vec<Var> = inputs.iter().map(|v| (*v).clone()).collect();
            return f(self, &vars);
        }
        let values: Vec<_> = inputs.iter().map(|v| v.value().clone()).collect();
        let wants: Vec<bool> = inputs.iter().map(|v| v.requires_grad()).collect();
        let outputs = {
            let mut inner = Tape::no_grad();
            let vars: Vec<Var> = values.iter().map(|t| Var::constant(t.clone())).collect();
            f(&mut inner, &vars)?.into_iter().map(Var::into_value).collect()
        };
        Ok(self.push_many(outputs, inputs, move |douts| {
            let mut inner = Tape::new();
            let vars: Vec<Var> = values.iter().zip(&wants).map(|(t, &w)| inner.leaf(t.clone(), w)).collect();
            let outs = f(&mut inner, &vars)?;
            if outs.len() != douts.len() {
                return Err(Error::Msg(format!(
                    "internal: a recomputed segment gave {} outputs, the first run {}",
                    outs.len(),
                    douts.len()
                )));
            }
            // Outputs that nothing downstream used, or that do not depend on the inputs, add nothing.
            let seeds: Vec<_> = outs
                .iter()
                .zip(douts)
                .filter_map(|(o, g)| g.filter(|_| o.requires_grad()).map(|g| (o, g)))
                .collect();
            if seeds.is_empty() {
                return Ok(vec![None; vars.len()]);
            }
            let mut grads = inner.backward_many(seeds)?;
            Ok(vars.iter().zip(&wants).map(|(v, &w)| if w { grads.take(v) } else { None }).collect())
        }))
    }
}
