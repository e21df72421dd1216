//! A minimal reverse-mode autograd: a tape of coarse ops (embedding, linear, norms, rotary
//! embedding, attention, activations, residual add, cross-entropy), each with a hand-written
//! backward on every backend that implements it.
//!
//! Ops are recorded in execution order, so the tape is already topologically sorted: the backward
//! pass walks it once in reverse, accumulating each node's gradient into its inputs.

mod activation;
mod attention;
mod dispatch;
mod embedding;
mod linear;
mod loss;
mod narrow;
mod norm;
mod rope;

pub use attention::AttentionSpec;
pub use linear::WeightLayout;

use crate::error::{shape_err, Error, Result};
use crate::tensor::Tensor;

/// A value recorded on a tape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Var(usize);

/// Given d(loss)/d(output), the gradients with respect to each input (None: no gradient).
type BackwardFn = Box<dyn Fn(&Tensor) -> Result<Vec<Option<Tensor>>> + Send + Sync>;

struct Node {
    value: Tensor,
    inputs: Vec<Var>,
    requires_grad: bool,
    backward: Option<BackwardFn>,
}

#[derive(Default)]
pub struct Tape {
    nodes: Vec<Node>,
}

/// Gradients from one backward pass, indexed by `Var`.
#[derive(Debug)]
pub struct Grads(Vec<Option<Tensor>>);

impl Grads {
    pub fn get(&self, v: Var) -> Option<&Tensor> {
        self.0.get(v.0).and_then(|g| g.as_ref())
    }

    pub fn take(&mut self, v: Var) -> Option<Tensor> {
        self.0.get_mut(v.0).and_then(|g| g.take())
    }
}

impl Tape {
    pub fn new() -> Tape {
        Tape::default()
    }

    /// An input: a parameter (`requires_grad`) or data.
    pub fn leaf(&mut self, value: Tensor, requires_grad: bool) -> Var {
        self.nodes.push(Node { value, inputs: vec![], requires_grad, backward: None });
        Var(self.nodes.len() - 1)
    }

    pub fn value(&self, v: Var) -> &Tensor {
        &self.nodes[v.0].value
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    fn requires_grad(&self, v: Var) -> bool {
        self.nodes[v.0].requires_grad
    }

    /// Record an op's output; the backward closure is kept only if some input needs a gradient.
    fn push(&mut self, value: Tensor, inputs: Vec<Var>, backward: BackwardFn) -> Var {
        let requires_grad = inputs.iter().any(|&v| self.requires_grad(v));
        let backward = requires_grad.then_some(backward);
        self.nodes.push(Node { value, inputs, requires_grad, backward });
        Var(self.nodes.len() - 1)
    }

    /// Backward from a scalar (one-element) output, seeded with 1.
    pub fn backward(&self, loss: Var) -> Result<Grads> {
        let v = self.value(loss);
        if v.numel() != 1 {
            return shape_err("backward", format!("needs a scalar loss, got shape {}", v.shape()));
        }
        let seed = dispatch::full_like(v, 1.0)?;
        self.backward_from(loss, seed)
    }

    /// Backward from any output with a given d(loss)/d(output).
    pub fn backward_from(&self, out: Var, dout: Tensor) -> Result<Grads> {
        if dout.shape() != self.value(out).shape() {
            return shape_err(
                "backward",
                format!(
                    "gradient of shape {} for an output of shape {}",
                    dout.shape(),
                    self.value(out).shape()
                ),
            );
        }
        let mut grads: Vec<Option<Tensor>> = vec![None; out.0 + 1];
        grads[out.0] = Some(dout);
        for i in (0..=out.0).rev() {
            let node = &self.nodes[i];
            let Some(backward) = &node.backward else { continue };
            // Taking the gradient frees intermediates as soon as they are used; leaves keep theirs
            // (they have no backward and are skipped above).
            let Some(g) = grads[i].take() else { continue };
            let input_grads = backward(&g)?;
            if input_grads.len() != node.inputs.len() {
                return Err(Error::Msg(format!(
                    "internal: backward of node {i} returned {} gradients for {} inputs",
                    input_grads.len(),
                    node.inputs.len()
                )));
            }
            for (&inp, ig) in node.inputs.iter().zip(input_grads) {
                let Some(ig) = ig else { continue };
                if !self.requires_grad(inp) {
                    continue;
                }
                grads[inp.0] = Some(match grads[inp.0].take() {
                    None => ig,
                    Some(acc) => dispatch::add(&acc, &ig)?,
                });
            }
        }
        Ok(Grads(grads))
    }
}
