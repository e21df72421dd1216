//! Activation recomputation (gradient checkpointing): a sub-computation whose intermediates are
//! not kept. The forward runs it on a no-grad tape, so only its inputs and output stay alive;
//! the backward runs it again on a fresh tape from the same inputs and back-propagates through
//! that, trading one more forward of the sub-computation for its activations' memory.
//!
//! The sub-computation must be a pure function of its inputs (the same values give the same
//! output): the kernels here are deterministic, so the recomputed forward equals the first.

use super::{Tape, Var};
use crate::error::{Error, Result};
use std::sync::Arc;

/// A sub-computation over its input vars (leaves of the tape it is given), in the order given.
pub type Segment = Arc<dyn Fn(&mut Tape, &[Var]) -> Result<Var> + Send + Sync>;

impl Tape {
    /// `f(inputs)`, keeping none of its intermediates for the backward (see the module doc).
    pub fn checkpoint(&mut self, inputs: &[&Var], f: Segment) -> Result<Var> {
        if !self.needs_grad(inputs) {
            // Nothing to recompute for: an ordinary forward on this tape (no-grad or constants).
            let vars: Vec<Var> = inputs.iter().map(|v| (*v).clone()).collect();
            return f(self, &vars);
        }
        let values: Vec<_> = inputs.iter().map(|v| v.value().clone()).collect();
        let wants: Vec<bool> = inputs.iter().map(|v| v.requires_grad()).collect();
        let y = {
            let mut inner = Tape::no_grad();
            let vars: Vec<Var> = values.iter().map(|t| Var::constant(t.clone())).collect();
            f(&mut inner, &vars)?.into_value()
        };
        Ok(self.push(y, inputs, move |dy| {
            let mut inner = Tape::new();
            let vars: Vec<Var> = values.iter().zip(&wants).map(|(t, &w)| inner.leaf(t.clone(), w)).collect();
            let out = f(&mut inner, &vars)?;
            if !out.requires_grad() {
                return Err(Error::Msg(
                    "internal: a recomputed segment does not depend on its inputs".into(),
                ));
            }
            let mut grads = inner.backward_from(&out, dy.clone())?;
            Ok(vars.iter().zip(&wants).map(|(v, &w)| if w { grads.take(v) } else { None }).collect())
        }))
    }
}
