//! A minimal reverse-mode autograd: a tape of coarse ops (embedding, linear, norms, rotary
//! embedding, attention, activations, residual add, the losses), each with a hand-written
//! backward, calling the backend contract through `tensor::Storage` only.
//!
//! A `Var` holds its value; the tape holds, per op that needs a gradient, the indices of its
//! inputs and a backward closure with the tensors it saved. Ops are recorded in execution order,
//! so the tape is already topologically sorted: `backward` consumes it, walking it once in
//! reverse and freeing each op's saved tensors as soon as they are used. An op with several
//! outputs (the fused residual add + norm: the new residual stream and its norm) takes one node
//! per output and runs its backward once, with all their gradients.
//!
//! `Tape::no_grad()` records nothing: every op runs its forward only, and an intermediate value is
//! freed as soon as the caller drops its `Var` (the teacher's forward, scoring, generation).

mod add_layer_norm;
mod add_rms_norm;
mod attention;
mod checkpoint;
mod embedding;
mod gelu;
mod layer_norm;
mod linear;
mod loss;
mod narrow;
mod rms_norm;
mod rope;
mod swiglu;

pub use crate::backend::ops::{AttnDims, CachedAttnDims, LossKind, SampleSpec};
pub use checkpoint::Segment;
pub use linear::WeightLayout;
pub use loss::{LinearLoss, LinearLossTarget};

use crate::error::{shape_err, Error, Result};
use crate::tensor::{DType, Storage, Tensor};

/// A value on a tape: the tensor, and the node that computes it when it needs a gradient.
#[derive(Clone, Debug)]
pub struct Var {
    value: Tensor,
    node: Option<NodeRef>,
}

/// Node `index` of the tape numbered `tape`: a Var used on another tape is an error, not a
/// gradient silently sent to some other node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct NodeRef {
    tape: u64,
    index: usize,
}

static NEXT_TAPE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Var {
    /// A value that needs no gradient (data, a frozen weight), usable on any tape.
    pub fn constant(value: Tensor) -> Var {
        Var { value, node: None }
    }

    pub fn value(&self) -> &Tensor {
        &self.value
    }

    pub fn into_value(self) -> Tensor {
        self.value
    }

    pub fn requires_grad(&self) -> bool {
        self.node.is_some()
    }
}

/// Given d(loss)/d(output), the gradients with respect to each input (None: no gradient).
type BackwardFn = Box<dyn FnOnce(&Tensor) -> Result<Vec<Option<Tensor>>> + Send>;
/// The same for an op with several outputs: given each output's gradient (None: nothing used
/// that output), the gradients with respect to each input.
type MultiBackwardFn = Box<dyn FnOnce(Vec<Option<Tensor>>) -> Result<Vec<Option<Tensor>>> + Send>;

enum Backward {
    One(BackwardFn),
    Many(MultiBackwardFn),
}

/// One output of an op (or a leaf). An op with k outputs takes k consecutive nodes: the first
/// holds the inputs and the backward, the other k − 1 only stand for their outputs.
struct Node {
    inputs: Vec<Option<usize>>,
    /// Each input's dtype: an intermediate's gradient comes back in it (a backend may return a
    /// gradient in its accumulation type, e.g. f32 for the rows gathered from bf16 hidden states).
    input_dtypes: Vec<DType>,
    /// A leaf (`Tape::leaf`): its gradient is a result, kept in the backend's accumulation type.
    leaf: bool,
    backward: Option<Backward>,
    /// How many consecutive nodes from this one are outputs of its op (1 but for the first node
    /// of a multi-output op).
    outputs: usize,
}

pub struct Tape {
    id: u64,
    nodes: Vec<Node>,
    enabled: bool,
    /// An op was recorded with an input from another tape (`backward` then fails).
    foreign_input: bool,
}

impl Default for Tape {
    fn default() -> Self {
        Tape::new()
    }
}

/// Gradients from one backward pass.
#[derive(Debug)]
pub struct Grads {
    tape: u64,
    grads: Vec<Option<Tensor>>,
}

impl Grads {
    /// The gradient of `v`; None when it has none (or is a Var of another tape).
    pub fn get(&self, v: &Var) -> Option<&Tensor> {
        self.index(v).and_then(|i| self.grads[i].as_ref())
    }

    pub fn take(&mut self, v: &Var) -> Option<Tensor> {
        self.index(v).and_then(|i| self.grads[i].take())
    }

    fn index(&self, v: &Var) -> Option<usize> {
        v.node.filter(|n| n.tape == self.tape && n.index < self.grads.len()).map(|n| n.index)
    }
}

/// a + b for gradient accumulation; gradients of different dtypes (a bf16 activation gradient and
/// an f32 weight gradient of one tied parameter) meet in f32.
fn accumulate(a: Tensor, b: Tensor) -> Result<Tensor> {
    let (a, b) =
        if a.dtype() == b.dtype() { (a, b) } else { (a.to_dtype(DType::F32)?, b.to_dtype(DType::F32)?) };
    add_tensors(&a, &b)
}

pub(crate) fn add_tensors(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.shape() != b.shape() {
        return shape_err("add", format!("{} + {}", a.shape(), b.shape()));
    }
    let (a, b) = (a.contiguous()?, b.contiguous()?);
    Tensor::from_storage(Storage::add(a.view()?, b.view()?)?, a.shape().clone())
}

impl Tape {
    /// A tape that records ops for a backward pass.
    pub fn new() -> Tape {
        Tape::with(true)
    }

    /// A tape that records nothing: forward passes only.
    pub fn no_grad() -> Tape {
        Tape::with(false)
    }

    fn with(enabled: bool) -> Tape {
        let id = NEXT_TAPE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Tape { id, nodes: Vec::new(), enabled, foreign_input: false }
    }

    fn next_node(&self) -> NodeRef {
        NodeRef { tape: self.id, index: self.nodes.len() }
    }

    pub fn grad_enabled(&self) -> bool {
        self.enabled
    }

    /// Ops recorded so far.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// An input: a parameter (`requires_grad`, on a recording tape) or data.
    pub fn leaf(&mut self, value: Tensor, requires_grad: bool) -> Var {
        if !(requires_grad && self.enabled) {
            return Var::constant(value);
        }
        let node = self.next_node();
        self.nodes.push(Node {
            inputs: vec![],
            input_dtypes: vec![],
            leaf: true,
            backward: None,
            outputs: 1,
        });
        Var { value, node: Some(node) }
    }

    /// Whether an op over `inputs` needs its backward (some input needs a gradient).
    pub(crate) fn needs_grad(&self, inputs: &[&Var]) -> bool {
        self.enabled && inputs.iter().any(|v| v.requires_grad())
    }

    /// Records an op's output; the backward closure is kept only if some input needs a gradient.
    pub(crate) fn push(
        &mut self,
        value: Tensor,
        inputs: &[&Var],
        backward: impl FnOnce(&Tensor) -> Result<Vec<Option<Tensor>>> + Send + 'static,
    ) -> Var {
        if !self.needs_grad(inputs) {
            return Var::constant(value);
        }
        self.foreign_input |= inputs.iter().any(|v| v.node.is_some_and(|n| n.tape != self.id));
        let input_dtypes = inputs.iter().map(|v| v.value().dtype()).collect();
        let inputs = inputs.iter().map(|v| v.node.map(|n| n.index)).collect();
        let node = self.next_node();
        self.nodes.push(Node {
            inputs,
            input_dtypes,
            leaf: false,
            backward: Some(Backward::One(Box::new(backward))),
            outputs: 1,
        });
        Var { value, node: Some(node) }
    }

    /// Records an op with several outputs (in order); its backward receives one gradient per
    /// output, None for an output nothing downstream used, and runs once, when every output's
    /// gradient is complete.
    pub(crate) fn push_many(
        &mut self,
        values: Vec<Tensor>,
        inputs: &[&Var],
        backward: impl FnOnce(Vec<Option<Tensor>>) -> Result<Vec<Option<Tensor>>> + Send + 'static,
    ) -> Vec<Var> {
        if !self.needs_grad(inputs) || values.is_empty() {
            return values.into_iter().map(Var::constant).collect();
        }
        self.foreign_input |= inputs.iter().any(|v| v.node.is_some_and(|n| n.tape != self.id));
        let input_dtypes = inputs.iter().map(|v| v.value().dtype()).collect();
        let inputs = inputs.iter().map(|v| v.node.map(|n| n.index)).collect();
        let first = self.next_node();
        let k = values.len();
        self.nodes.push(Node {
            inputs,
            input_dtypes,
            leaf: false,
            backward: Some(Backward::Many(Box::new(backward))),
            outputs: k,
        });
        for _ in 1..k {
            self.nodes.push(Node {
                inputs: vec![],
                input_dtypes: vec![],
                leaf: false,
                backward: None,
                outputs: 1,
            });
        }
        values
            .into_iter()
            .enumerate()
            .map(|(j, value)| Var { value, node: Some(NodeRef { tape: self.id, index: first.index + j }) })
            .collect()
    }

    /// Backward from a scalar (one-element) output, seeded with 1.
    pub fn backward(self, loss: &Var) -> Result<Grads> {
        let v = loss.value();
        if v.numel() != 1 {
            return shape_err("backward", format!("needs a scalar loss, got shape {}", v.shape()));
        }
        let seed = Tensor::full(v.shape().clone(), 1.0, v.dtype(), v.device())?;
        self.backward_from(loss, seed)
    }

    /// Backward from any output with a given d(loss)/d(output).
    pub fn backward_from(self, out: &Var, dout: Tensor) -> Result<Grads> {
        self.backward_many(vec![(out, dout)])
    }

    /// Backward from several outputs at once, each with its d(loss)/d(output) (a recomputed
    /// segment with two outputs).
    pub fn backward_many(mut self, seeds: Vec<(&Var, Tensor)>) -> Result<Grads> {
        if seeds.is_empty() {
            return Err(Error::Msg("backward: no output to start from".into()));
        }
        let mut top = 0;
        let mut start = Vec::with_capacity(seeds.len());
        for (out, dout) in seeds {
            if dout.shape() != out.value().shape() {
                return shape_err(
                    "backward",
                    format!(
                        "gradient of shape {} for an output of shape {}",
                        dout.shape(),
                        out.value().shape()
                    ),
                );
            }
            let Some(node) = out.node else {
                return Err(Error::Msg(
                    "backward: the output does not depend on anything that requires a gradient (a no-grad tape, or no parameter leaves)".into(),
                ));
            };
            if node.tape != self.id || self.foreign_input {
                return Err(Error::Msg(
                    "backward: a value recorded on another tape was used on this one; build the whole computation on one tape".into(),
                ));
            }
            top = top.max(node.index);
            start.push((node.index, dout));
        }
        let mut grads: Vec<Option<Tensor>> = vec![None; top + 1];
        for (i, dout) in start {
            grads[i] = Some(match grads[i].take() {
                None => dout,
                Some(acc) => accumulate(acc, dout)?,
            });
        }
        for i in (0..=top).rev() {
            let node = &mut self.nodes[i];
            let Some(backward) = node.backward.take() else { continue };
            // Taking the gradient frees intermediates as soon as they are used; leaves keep theirs
            // (they have no backward and are skipped above).
            let input_grads = match backward {
                Backward::One(f) => {
                    let Some(g) = grads[i].take() else { continue };
                    f(&g)?
                }
                Backward::Many(f) => {
                    // Outputs i..i + k: every consumer of them was recorded after them, so each
                    // gradient is complete here (past `top`: the backward did not reach it).
                    let g: Vec<Option<Tensor>> =
                        (i..i + node.outputs).map(|j| grads.get_mut(j).and_then(Option::take)).collect();
                    if g.iter().all(Option::is_none) {
                        continue;
                    }
                    f(g)?
                }
            };
            if input_grads.len() != node.inputs.len() {
                return Err(Error::Msg(format!(
                    "internal: backward of node {i} returned {} gradients for {} inputs",
                    input_grads.len(),
                    node.inputs.len()
                )));
            }
            let (inputs, dtypes) = (std::mem::take(&mut node.inputs), std::mem::take(&mut node.input_dtypes));
            for ((inp, dtype), ig) in inputs.into_iter().zip(dtypes).zip(input_grads) {
                let (Some(inp), Some(mut ig)) = (inp, ig) else { continue };
                // Leaves (parameters) keep the backend's accumulation type; an intermediate's
                // gradient flows on in the intermediate's dtype.
                if ig.dtype() != dtype && !self.nodes[inp].leaf {
                    ig = ig.to_dtype(dtype)?;
                }
                grads[inp] = Some(match grads[inp].take() {
                    None => ig,
                    Some(acc) => accumulate(acc, ig)?,
                });
            }
        }
        Ok(Grads { tape: self.id, grads })
    }
}

/// The dense view of an op's input and its shape, for the ops' bodies.
pub(crate) fn dense(v: &Var) -> Result<Tensor> {
    v.value().contiguous()
}

/// A tensor over a backend output.
pub(crate) fn wrap(s: Storage, shape: impl Into<crate::tensor::Shape>) -> Result<Tensor> {
    Tensor::from_storage(s, shape)
}
