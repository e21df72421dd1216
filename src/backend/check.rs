//! The argument checks of the contract's ops, shared by every backend: lengths and loss settings
//! only, made before any dtype dispatch or launch, so that each backend refuses the same inputs
//! with the same message. A backend adds what only it needs (CUDA's 32-bit indexing).

use super::divergence::Divergence;
use super::ops::{LinearDims, LinearLossSpec, LossKind, LossSpec};
use super::Layout;
use crate::error::{shape_err, Error, Result};

pub(super) fn need(op: &'static str, what: &str, len: usize, want: usize) -> Result<()> {
    if len != want {
        return shape_err(op, format!("{what} has {len} elements, expected {want}"));
    }
    Ok(())
}

/// Rows of a (rows, cols) input of `len` elements.
pub(super) fn rows_of(op: &'static str, len: usize, cols: usize) -> Result<usize> {
    if cols == 0 || len % cols != 0 {
        return shape_err(op, format!("{len} elements are not rows of {cols}"));
    }
    Ok(len / cols)
}

pub(super) fn add(a: usize, b: usize) -> Result<()> {
    need("add", "b", b, a)
}

/// An elementwise op over `n` elements: every other input (`what`, length) as long.
pub(super) fn elementwise(op: &'static str, n: usize, others: &[(&str, usize)]) -> Result<()> {
    others.iter().try_for_each(|&(what, len)| need(op, what, len, n))
}

/// Columns `start..start + len` of rows of `width`; `elements` of the input, rows of `width`
/// (forward) or of `len` (backward) → rows.
pub(super) fn narrow_cols(
    op: &'static str,
    elements: usize,
    width: usize,
    start: usize,
    len: usize,
    backward: bool,
) -> Result<usize> {
    if start.checked_add(len).is_none_or(|end| end > width) {
        return shape_err(op, format!("columns {start}..{} of {width}", start.saturating_add(len)));
    }
    rows_of(op, elements, if backward { len } else { width })
}

/// The key/value cache's append: `n` row indices and a source of `n` rows of `width` into a
/// storage of `dst` elements → the storage's rows.
pub(super) fn copy_rows(dst: usize, width: usize, n: usize, src: usize) -> Result<usize> {
    const OP: &str = "copy_rows";
    let total = rows_of(OP, dst, width)?;
    need(OP, "source", src, n * width)?;
    Ok(total)
}

/// Every row index below `total`.
pub(super) fn rows_in_range(op: &'static str, rows: &[u32], total: usize) -> Result<()> {
    match rows.iter().find(|&&r| r as usize >= total) {
        Some(bad) => shape_err(op, format!("row {bad} of a storage of {total} rows")),
        None => Ok(()),
    }
}

/// A (possibly strided) layout's elements all inside a storage of `len` elements.
pub(super) fn strided(op: &'static str, len: usize, layout: &Layout) -> Result<()> {
    let dims = layout.shape().dims();
    if dims.contains(&0) {
        return Ok(());
    }
    let last = dims
        .iter()
        .zip(layout.strides())
        .try_fold(layout.offset(), |acc, (&d, &s)| (d - 1).checked_mul(s).and_then(|x| acc.checked_add(x)));
    match last {
        Some(last) if last < len => Ok(()),
        _ => shape_err(op, format!("a view of shape {} reaches past a storage of {len}", layout.shape())),
    }
}

pub(super) fn linear_fwd(d: &LinearDims, x: usize, w: usize, b: Option<usize>) -> Result<()> {
    const OP: &str = "linear";
    need(OP, "x", x, d.n * d.d_in)?;
    need(OP, "weight", w, d.d_in * d.d_out)?;
    b.map_or(Ok(()), |b| need(OP, "bias", b, d.d_out))
}

pub(super) fn linear_bwd(d: &LinearDims, x: usize, w: usize, dy: usize) -> Result<()> {
    const OP: &str = "linear backward";
    need(OP, "x", x, d.n * d.d_in)?;
    need(OP, "weight", w, d.d_in * d.d_out)?;
    need(OP, "dy", dy, d.n * d.d_out)
}

/// → rows.
pub(super) fn rms_norm_fwd(x: usize, w: usize, cols: usize) -> Result<usize> {
    const OP: &str = "rms_norm";
    let rows = rows_of(OP, x, cols)?;
    need(OP, "weight", w, cols)?;
    Ok(rows)
}

/// → rows.
pub(super) fn rms_norm_bwd(x: usize, w: usize, rstd: usize, dy: usize, cols: usize) -> Result<usize> {
    const OP: &str = "rms_norm backward";
    let rows = rows_of(OP, x, cols)?;
    need(OP, "weight", w, cols)?;
    need(OP, "rstd", rstd, rows)?;
    need(OP, "dy", dy, x)?;
    Ok(rows)
}

/// → rows.
pub(super) fn layer_norm_fwd(x: usize, w: usize, b: usize, cols: usize) -> Result<usize> {
    const OP: &str = "layer_norm";
    let rows = rows_of(OP, x, cols)?;
    need(OP, "weight", w, cols)?;
    need(OP, "bias", b, cols)?;
    Ok(rows)
}

/// → rows.
pub(super) fn layer_norm_bwd(
    x: usize,
    w: usize,
    mean: usize,
    rstd: usize,
    dy: usize,
    cols: usize,
) -> Result<usize> {
    const OP: &str = "layer_norm backward";
    let rows = rows_of(OP, x, cols)?;
    need(OP, "weight", w, cols)?;
    need(OP, "mean", mean, rows)?;
    need(OP, "rstd", rstd, rows)?;
    need(OP, "dy", dy, x)?;
    Ok(rows)
}

/// A loss over `rows` × `vocab` logits of `logits` elements, with `targets` rows: the lengths,
/// a finite scale, and a valid divergence at a positive temperature.
pub(super) fn loss(op: &'static str, spec: &LossSpec, logits: usize, targets: usize) -> Result<()> {
    if spec.vocab == 0 {
        return shape_err(op, "the vocabulary is empty");
    }
    need(op, "logits", logits, spec.rows * spec.vocab)?;
    need(op, "targets", targets, spec.rows)?;
    if !spec.scale.is_finite() {
        return Err(Error::Msg(format!("{op}: the scale must be finite, got {}", spec.scale)));
    }
    if let LossKind::Divergence { divergence, temperature } = spec.kind {
        divergence.validate()?;
        if !(temperature > 0.0 && temperature.is_finite()) {
            return Err(Error::Msg(format!("{op}: the temperature must be positive, got {temperature}")));
        }
    }
    Ok(())
}

/// The divergence op: a divergence loss over student and teacher logits of one size → the
/// divergence and its temperature.
pub(super) fn divergence(spec: &LossSpec, student: usize, teacher: usize) -> Result<(Divergence, f64)> {
    const OP: &str = "divergence";
    let LossKind::Divergence { divergence, temperature } = spec.kind else {
        return Err(Error::Msg(format!("{OP}: the loss must be a divergence")));
    };
    loss(OP, spec, student, spec.rows)?;
    need(OP, "teacher", teacher, student)?;
    Ok((divergence, temperature))
}

/// The fused output head: the student's hidden states and head, the head covering the vocabulary.
pub(super) fn linear_loss(spec: &LinearLossSpec, hidden: usize, head: usize) -> Result<()> {
    const OP: &str = "linear_loss";
    let (n, h, v) = (spec.loss.rows, spec.hidden, spec.loss.vocab);
    loss(OP, &spec.loss, n * v, n)?;
    need(OP, "hidden", hidden, n * h)?;
    need(OP, "head", head, spec.head_rows * h)?;
    if spec.head_rows < v {
        return shape_err(OP, format!("a head of {} rows for a vocabulary of {v}", spec.head_rows));
    }
    Ok(())
}

/// The fused output head's teacher: its hidden states and head, the head covering the vocabulary.
pub(super) fn linear_loss_teacher(spec: &LinearLossSpec, hidden: usize, head: usize) -> Result<()> {
    const OP: &str = "linear_loss";
    let (n, ht, v) = (spec.loss.rows, spec.teacher_hidden, spec.loss.vocab);
    need(OP, "teacher hidden", hidden, n * ht)?;
    need(OP, "teacher head", head, spec.teacher_head_rows * ht)?;
    if spec.teacher_head_rows < v {
        return shape_err(
            OP,
            format!("a teacher head of {} rows for a vocabulary of {v}", spec.teacher_head_rows),
        );
    }
    Ok(())
}
