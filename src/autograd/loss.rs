//! The losses, each one op whose gradient is computed in the same pass as its value (no autograd
//! through the softmax): cross-entropy and the divergences over logits, and the output head fused
//! with either, in row chunks (`LinearLoss`: no (tokens × vocab) buffer larger than a chunk).
//!
//! Each returns the scalar loss, scale · Σ_rows L_r, as a `Var`, and the row losses (N) as a
//! plain tensor (scores, metrics). The backward multiplies the saved gradient by d(loss).

use super::{dense, wrap, Tape, Var};
use crate::backend::ops::{LinearLossSpec, LossKind, LossSpec};
use crate::backend::{Divergence, LinearLossOut, LossTarget};
use crate::error::{shape_err, Result};
use crate::tensor::{Storage, Tensor};

/// The output head fused with a loss: logits over the first `vocab` rows of the head.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinearLoss {
    pub kind: LossKind,
    /// Vocabulary entries that count (≤ the head's rows; embedding padding past it is ignored).
    pub vocab: usize,
    /// Multiplies every row loss and gradient (e.g. 1 / completion tokens in the step).
    pub scale: f64,
    /// Rows per chunk; 0 lets the backend choose.
    pub chunk_rows: usize,
}

/// What the fused head's loss is measured against.
pub enum LinearLossTarget<'a> {
    /// The next token of each row, (N) u32 (`ops::IGNORE`: the row does not count).
    Tokens(&'a Tensor),
    /// The next tokens (N) u32 and a weight per row (N) f32 multiplying that row's loss and
    /// gradient (any sign: RL's policy-gradient term −A·ln p(y) is cross-entropy weighted by A).
    WeightedTokens { targets: &'a Tensor, weights: &'a Tensor },
    /// The teacher's final hidden states (N, Ht) and its head (Vt, Ht).
    Teacher { hidden: &'a Tensor, head: &'a Tensor },
}

/// The scalar Σ rows, a one-element tensor beside them.
fn total(rows: &Tensor) -> Result<Tensor> {
    let sum: f64 = rows.to_vec_f64()?.iter().sum();
    Tensor::full([1], sum, rows.dtype(), rows.device())
}

/// The saved gradient times d(loss).
fn scaled(g: Option<Tensor>, dl: &Tensor) -> Result<Option<Tensor>> {
    let c = dl.scalar()?;
    match g {
        Some(mut g) if c != 1.0 => {
            g.scale_(c)?;
            Ok(Some(g))
        }
        g => Ok(g),
    }
}

impl Tape {
    /// logits (N, V), targets (N) u32 → (scale · Σ_r −log softmax(z_r)[y_r], row losses (N)).
    pub fn cross_entropy(&mut self, logits: &Var, targets: &Tensor, scale: f64) -> Result<(Var, Tensor)> {
        let z = dense(logits)?;
        let (rows, vocab) = (z.shape().rows(), z.shape().last());
        if z.dims().len() < 2 || targets.numel() != rows {
            return shape_err(
                "cross_entropy",
                format!("{} targets for logits {}", targets.numel(), z.shape()),
            );
        }
        let want_grad = self.needs_grad(&[logits]);
        let spec = LossSpec { rows, vocab, kind: LossKind::CrossEntropy, scale, want_grad };
        let t = targets.contiguous()?;
        let (row_loss, grad) = Storage::cross_entropy(z.view()?, t.view()?, &spec)?;
        let row_loss = wrap(row_loss, [rows])?;
        let grad = grad.map(|g| wrap(g, z.shape().clone())).transpose()?;
        let loss = self.push(total(&row_loss)?, &[logits], move |dl| Ok(vec![scaled(grad, dl)?]));
        Ok((loss, row_loss))
    }

    /// D(teacher ‖ student) per row of (N, V) logits at temperature τ, rows with mask 0 (u8)
    /// skipped → (scale · Σ_r D_r, row losses (N)); the teacher gets no gradient.
    pub fn divergence(
        &mut self,
        student: &Var,
        teacher: &Tensor,
        mask: Option<&Tensor>,
        divergence: Divergence,
        temperature: f64,
        scale: f64,
    ) -> Result<(Var, Tensor)> {
        let s = dense(student)?;
        let t = teacher.contiguous()?;
        if s.shape() != t.shape() || s.dims().len() < 2 {
            return shape_err("divergence", format!("student {} and teacher {}", s.shape(), t.shape()));
        }
        let (rows, vocab) = (s.shape().rows(), s.shape().last());
        let want_grad = self.needs_grad(&[student]);
        let spec = LossSpec {
            rows,
            vocab,
            kind: LossKind::Divergence { divergence, temperature },
            scale,
            want_grad,
        };
        let m = mask.map(Tensor::contiguous).transpose()?;
        let (row_loss, grad) =
            Storage::divergence(s.view()?, t.view()?, m.as_ref().map(Tensor::view).transpose()?, &spec)?;
        let row_loss = wrap(row_loss, [rows])?;
        let grad = grad.map(|g| wrap(g, s.shape().clone())).transpose()?;
        let loss = self.push(total(&row_loss)?, &[student], move |dl| Ok(vec![scaled(grad, dl)?]));
        Ok((loss, row_loss))
    }

    /// The output head fused with the loss: hidden (N, H), head (Vh, H) → (scale · Σ_r L_r, row
    /// losses (N)), computed in row chunks; gradients flow to the hidden states and the head.
    pub fn linear_loss(
        &mut self,
        hidden: &Var,
        head: &Var,
        target: LinearLossTarget<'_>,
        spec: &LinearLoss,
    ) -> Result<(Var, Tensor)> {
        const OP: &str = "linear_loss";
        let (h, w) = (dense(hidden)?, dense(head)?);
        let (&[n, dim], &[head_rows, wdim]) = (h.dims(), w.dims()) else {
            return shape_err(OP, format!("hidden {} and head {} must be 2-D", h.shape(), w.shape()));
        };
        if wdim != dim || spec.vocab > head_rows {
            return shape_err(
                OP,
                format!("hidden {} and head {} for a vocabulary of {}", h.shape(), w.shape(), spec.vocab),
            );
        }
        let want_grad = self.needs_grad(&[hidden, head]);
        let mut bspec = LinearLossSpec {
            loss: LossSpec { rows: n, vocab: spec.vocab, kind: spec.kind, scale: spec.scale, want_grad },
            hidden: dim,
            head_rows,
            teacher_hidden: 0,
            teacher_head_rows: 0,
            chunk_rows: spec.chunk_rows,
        };
        let LinearLossOut { row_loss, d_hidden, d_head } = match target {
            LinearLossTarget::Tokens(t) => {
                if t.numel() != n {
                    return shape_err(OP, format!("{} targets for {n} rows", t.numel()));
                }
                let t = t.contiguous()?;
                Storage::linear_loss(h.view()?, w.view()?, LossTarget::Tokens(t.view()?), &bspec)?
            }
            LinearLossTarget::WeightedTokens { targets: t, weights: rw } => {
                if t.numel() != n || rw.numel() != n {
                    return shape_err(
                        OP,
                        format!("{} targets and {} weights for {n} rows", t.numel(), rw.numel()),
                    );
                }
                let (t, rw) = (t.contiguous()?, rw.contiguous()?);
                let target = LossTarget::WeightedTokens { targets: t.view()?, weights: rw.view()? };
                Storage::linear_loss(h.view()?, w.view()?, target, &bspec)?
            }
            LinearLossTarget::Teacher { hidden: th, head: tw } => {
                let (th, tw) = (th.contiguous()?, tw.contiguous()?);
                let (&[tn, tdim], &[trows, twdim]) = (th.dims(), tw.dims()) else {
                    return shape_err(
                        OP,
                        format!("teacher hidden {} and head {} must be 2-D", th.shape(), tw.shape()),
                    );
                };
                if tn != n || twdim != tdim {
                    return shape_err(
                        OP,
                        format!("teacher hidden {} and head {} for {n} rows", th.shape(), tw.shape()),
                    );
                }
                bspec.teacher_hidden = tdim;
                bspec.teacher_head_rows = trows;
                Storage::linear_loss(
                    h.view()?,
                    w.view()?,
                    LossTarget::Teacher { hidden: th.view()?, head: tw.view()? },
                    &bspec,
                )?
            }
        };
        let row_loss = wrap(row_loss, [n])?;
        let d_hidden = d_hidden.map(|g| wrap(g, [n, dim])).transpose()?;
        let d_head = d_head.map(|g| wrap(g, [head_rows, dim])).transpose()?;
        let loss = self.push(total(&row_loss)?, &[hidden, head], move |dl| {
            Ok(vec![scaled(d_hidden, dl)?, scaled(d_head, dl)?])
        });
        Ok((loss, row_loss))
    }
}
