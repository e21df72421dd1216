//! The argument checks of the contract's ops, shared by every backend: lengths and loss settings
//! only, made before any dtype dispatch or launch, so that each backend refuses the same inputs
//! with the same message. A backend adds what only it needs (CUDA's 32-bit indexing).

use super::divergence::Divergence;
use super::ops::{
    AttnDims, CachedAttnDims, LinearDims, LinearLossSpec, LossKind, LossSpec, RopeSpec, SampleSpec,
};
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

/// AdamW over `grad` elements from `start`: the weights, both moments and the optional
/// compute-weights copy must hold them.
pub(super) fn adamw(
    start: usize,
    grad: usize,
    weights: usize,
    m: usize,
    v: usize,
    out: Option<usize>,
) -> Result<()> {
    const OP: &str = "adamw";
    let Some(end) = start.checked_add(grad) else {
        return shape_err(OP, format!("{grad} elements from {start} overflow"));
    };
    let lens = [("weights", Some(weights)), ("first moment", Some(m)), ("second moment", Some(v))];
    for (what, len) in lens.into_iter().chain([("compute-weights copy", out)]) {
        if let Some(len) = len.filter(|&len| len < end) {
            return shape_err(OP, format!("the {what} has {len} elements; the update covers {start}..{end}"));
        }
    }
    Ok(())
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

/// The generation state (5, B) of `state` elements and `n` slots → B.
pub(super) fn decode_rows(state: usize, capacity: usize) -> Result<usize> {
    const OP: &str = "decode_rows";
    if capacity == 0 || capacity > u32::MAX as usize / 2 {
        return shape_err(OP, format!("a cache of {capacity} positions"));
    }
    let batch = rows_of(OP, state, 5)?;
    if batch > u32::MAX as usize / capacity {
        return shape_err(OP, format!("{batch} slots of {capacity} positions overflow the u32 cache rows"));
    }
    Ok(batch)
}

/// decode_advance's lengths: state (5, B), slots, tokens and logprobs of n rows, outputs of
/// B·max_new → B.
pub(super) fn decode_advance(
    state: usize,
    n: usize,
    tokens: usize,
    logprobs: usize,
    max_new: usize,
    out_tokens: usize,
    out_logprobs: usize,
) -> Result<usize> {
    const OP: &str = "decode_advance";
    let batch = state / 5;
    if batch * 5 != state {
        return shape_err(OP, format!("a state of {state} elements is not (5, B)"));
    }
    need(OP, "tokens", tokens, n)?;
    need(OP, "log-probabilities", logprobs, 2 * n)?;
    if max_new == 0 || max_new > u32::MAX as usize {
        return shape_err(OP, format!("max_new = {max_new}"));
    }
    need(OP, "output tokens", out_tokens, batch * max_new)?;
    need(OP, "output log-probabilities", out_logprobs, 2 * batch * max_new)?;
    Ok(batch)
}

/// Slots of one decode step: distinct and below `batch`.
pub(super) fn slots(op: &'static str, slots: &[u32], batch: usize) -> Result<()> {
    let mut seen = vec![false; batch];
    for &s in slots {
        match seen.get_mut(s as usize) {
            None => return shape_err(op, format!("slot {s} of a batch of {batch}")),
            Some(true) => return shape_err(op, format!("slot {s} twice in one step")),
            Some(x) => *x = true,
        }
    }
    Ok(())
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

/// A table of `table` elements in rows of `dim` → its vocabulary (rows).
pub(super) fn embedding_fwd(table: usize, dim: usize) -> Result<usize> {
    rows_of("embedding", table, dim)
}

/// dout (N, dim) for N ids.
pub(super) fn embedding_bwd(dout: usize, ids: usize, dim: usize) -> Result<()> {
    need("embedding backward", "dout", dout, ids * dim)
}

/// x (N, H·D) for N positions and `spec`'s heads of D = 2·inv_freq.len() → the row width H·D.
pub(super) fn rope(x: usize, positions: usize, spec: &RopeSpec) -> Result<usize> {
    const OP: &str = "rope";
    let width = spec.heads * 2 * spec.inv_freq.len();
    if width == 0 {
        return shape_err(OP, format!("{} heads of dimension {}", spec.heads, 2 * spec.inv_freq.len()));
    }
    need(OP, "input", x, positions * width)?;
    Ok(width)
}

/// The decode step's rotary embedding and cache append: q (N, Hq·D), k and v (N, Hkv·D), N
/// positions and cache rows, caches of (R, Hkv·D) each, `spec.heads` = Hq → (N, R).
#[allow(clippy::too_many_arguments)]
pub(super) fn rope_append(
    q: usize,
    k: usize,
    v: usize,
    positions: usize,
    rows: usize,
    k_cache: usize,
    v_cache: usize,
    spec: &RopeSpec,
    kv_heads: usize,
) -> Result<(usize, usize)> {
    const OP: &str = "rope_append";
    rope(q, positions, spec)?;
    let width = kv_heads * 2 * spec.inv_freq.len();
    if width == 0 {
        return shape_err(OP, "no key/value heads");
    }
    need(OP, "k", k, positions * width)?;
    need(OP, "v", v, positions * width)?;
    need(OP, "cache rows", rows, positions)?;
    let total = rows_of(OP, k_cache, width)?;
    need(OP, "the value cache", v_cache, k_cache)?;
    Ok((positions, total))
}

/// swiglu_packed: x of rows [gate | up] of 2·width → the rows.
pub(super) fn swiglu_packed(x: usize, width: usize) -> Result<usize> {
    rows_of("swiglu_packed", x, 2 * width)
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

/// Per-row weights of the fused head's cross-entropy: one f32 per row.
pub(super) fn row_weights(op: &'static str, len: usize, rows: usize) -> Result<()> {
    need(op, "row weights", len, rows)
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

fn heads(op: &'static str, q_heads: usize, kv_heads: usize, head_dim: usize) -> Result<()> {
    if kv_heads == 0 || q_heads % kv_heads != 0 {
        return shape_err(op, format!("{q_heads} query heads are not a multiple of {kv_heads} KV heads"));
    }
    if head_dim == 0 {
        return shape_err(op, "a head dimension of 0".to_string());
    }
    Ok(())
}

/// Attention: q, k, v of `q`, `k`, `v` elements fit `d`, and the sequences (start, len) are
/// disjoint runs of rows (when they are on the host: else `d.longest` must fit the rows).
pub(super) fn attention(
    op: &'static str,
    d: &AttnDims,
    q: usize,
    k: usize,
    v: usize,
    spans: Option<&[(usize, usize)]>,
) -> Result<()> {
    let AttnDims { rows, batch, q_heads, kv_heads, head_dim, .. } = *d;
    heads(op, q_heads, kv_heads, head_dim)?;
    for (name, len, heads) in [("q", q, q_heads), ("k", k, kv_heads), ("v", v, kv_heads)] {
        if len != rows * heads * head_dim {
            return shape_err(op, format!("{name} has {len} elements, expected {rows}×{heads}×{head_dim}"));
        }
    }
    let Some(spans) = spans else {
        return match d.longest {
            Some(l) if l <= rows => Ok(()),
            l => shape_err(op, format!("the longest sequence {l:?} is not within the {rows} rows")),
        };
    };
    if spans.len() != batch {
        return shape_err(op, format!("{} sequences for a batch of {batch}", spans.len()));
    }
    let mut sorted = spans.to_vec();
    sorted.sort_unstable();
    let mut end = 0;
    for &(s, l) in &sorted {
        if s < end || s.checked_add(l).is_none_or(|e| e > rows) {
            return shape_err(
                op,
                format!("sequences (start, length) {spans:?} overlap or run past the {rows} rows"),
            );
        }
        end = s + l;
    }
    Ok(())
}

/// Attention over a key/value cache: q, the caches and the row indices fit `d`.
pub(super) fn cached_attention(
    op: &'static str,
    d: &CachedAttnDims,
    q: usize,
    k_cache: usize,
    v_cache: usize,
    seq: &[u32],
    pos: &[u32],
) -> Result<()> {
    let CachedAttnDims { rows, batch, capacity, .. } = *d;
    cached_attention_shapes(op, d, q, k_cache, v_cache, seq.len(), pos.len())?;
    if let Some(i) = (0..rows).find(|&i| seq[i] as usize >= batch || pos[i] as usize >= capacity) {
        return shape_err(
            op,
            format!(
                "row {i} is at position {} of sequence {}: the cache holds {batch} sequences of {capacity} positions",
                pos[i], seq[i]
            ),
        );
    }
    Ok(())
}

/// Sampling: logits (N, V) of `logits` elements with `seq` and `pos` of N each, V ≥ 1, a finite
/// temperature ≥ 0 and top-p in (0, 1] → N.
pub(super) fn sample(spec: &SampleSpec, logits: usize, seq: usize, pos: usize) -> Result<usize> {
    const OP: &str = "sample";
    if spec.vocab == 0 {
        return shape_err(OP, "the vocabulary is empty");
    }
    let rows = rows_of(OP, logits, spec.vocab)?;
    need(OP, "seq (the rows' sequence indices)", seq, rows)?;
    need(OP, "pos (the rows' positions)", pos, rows)?;
    if !(spec.temperature.is_finite() && spec.temperature >= 0.0) {
        return Err(Error::Msg(format!(
            "{OP}: the temperature must be finite and ≥ 0 (0 is greedy), got {}",
            spec.temperature
        )));
    }
    if !(spec.top_p > 0.0 && spec.top_p <= 1.0) {
        return Err(Error::Msg(format!("{OP}: top-p must be in (0, 1] (1 is off), got {}", spec.top_p)));
    }
    Ok(rows)
}

/// Attention over a key/value cache, the lengths only: q, the caches and `seq` and `pos` indices
/// fit `d` (the indices themselves unread: a GPU backend whose caller vouches for them,
/// `CachedAttnDims::vouched`, leaves them on the device).
pub(super) fn cached_attention_shapes(
    op: &'static str,
    d: &CachedAttnDims,
    q: usize,
    k_cache: usize,
    v_cache: usize,
    seq: usize,
    pos: usize,
) -> Result<()> {
    let CachedAttnDims { rows, batch, capacity, q_heads, kv_heads, head_dim, .. } = *d;
    heads(op, q_heads, kv_heads, head_dim)?;
    if q != rows * q_heads * head_dim || seq != rows || pos != rows {
        return shape_err(
            op,
            format!("q of {q} elements, {seq} sequence and {pos} position indices for {rows} rows"),
        );
    }
    let cache = batch * capacity * kv_heads * head_dim;
    if k_cache != cache || v_cache != cache {
        return shape_err(
            op,
            format!("caches of {k_cache} and {v_cache} elements, expected {batch}×{capacity}×{kv_heads}×{head_dim}"),
        );
    }
    Ok(())
}
