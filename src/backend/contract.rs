//! The contract every backend implements: memory operations, and one forward and one backward
//! per op. `tensor::Storage` holds one backend's storage and forwards each call to it (the one
//! place that matches on the device); the tape's ops call `Storage` only.
//!
//! Inputs are `View`s: a contiguous run of a storage's elements (the tensor layer makes a strided
//! view contiguous before calling). Outputs are new, dense storages. Shapes are written beside
//! each argument; every backend checks the lengths it is given (the shared checks are in
//! `check.rs`) and returns an error (never panics) on a mismatch. An op a backend does not have returns `Error::Unsupported`.
//!
//! Element types: the CPU backend computes in f32 (the reference) and f64 (gradient checks); the
//! CUDA backend in f32 and bf16 with f32 accumulation. Statistics saved for a backward (norm rstd,
//! attention lse, row losses) are in the accumulation type: f32 on CUDA, the input's type on the
//! CPU; so are the weight gradients on CUDA (linear dw and db, norm weights, the fused output
//! head, the embedding table), which the optimizer's f32 gradient buffer adds up.

use super::ops::{
    AdamWStep, AttnDims, CachedAttnDims, LinearDims, LinearLossSpec, LossSpec, RopeSpec, SampleSpec,
};
use super::{CpuStorage, DType, Device, Layout};
use crate::error::Result;

/// Elements `start..start + len` of a storage, read-only.
pub struct View<'a, S> {
    pub storage: &'a S,
    pub start: usize,
    pub len: usize,
}

impl<S> Clone for View<'_, S> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<S> Copy for View<'_, S> {}

impl<'a, S> View<'a, S> {
    pub fn new(storage: &'a S, start: usize, len: usize) -> Self {
        View { storage, start, len }
    }
}

/// The loss target of the fused output head: the next tokens (cross-entropy), or the teacher's
/// hidden states and head (divergence).
pub enum LossTarget<'a, S> {
    /// (N) u32; `ops::IGNORE` marks a row that does not count.
    Tokens(View<'a, S>),
    /// As `Tokens`, row r's loss and gradient multiplied by weights[r], (N) f32 (any sign; the
    /// policy-gradient term of RL + GKD).
    WeightedTokens { targets: View<'a, S>, weights: View<'a, S> },
    /// hidden (N, Ht), head (Vt, Ht) in the student's dtype.
    Teacher { hidden: View<'a, S>, head: View<'a, S> },
}

/// What the fused output head computes.
pub struct LinearLossOut<S> {
    /// (N) scale · L_r.
    pub row_loss: S,
    /// (N, H): scale · ∂L/∂h, when asked for.
    pub d_hidden: Option<S>,
    /// (Vh, H): scale · ∂L/∂W (rows ≥ vocab are 0), when asked for.
    pub d_head: Option<S>,
}

pub trait BackendStorage: Sized {
    // ---- memory -------------------------------------------------------------------------
    fn dtype(&self) -> DType;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn device(&self) -> Device;
    /// A copy on the host, in the same dtype.
    fn to_host(x: View<'_, Self>) -> Result<CpuStorage>;
    /// A dense copy of the elements a (possibly strided) layout selects, in row-major order.
    fn copy_strided(&self, layout: &Layout) -> Result<Self>;
    /// The same values in another element type (round to nearest even into the 16-bit types).
    fn cast(x: View<'_, Self>, dtype: DType) -> Result<Self>;
    /// A fresh copy of the whole storage (copy-on-write of a shared tensor before a write).
    fn try_clone(&self) -> Result<Self>;

    // ---- in place: `self`'s elements from `start` ----------------------------------------
    /// self[start..start + src.len] = src
    fn copy_in(&mut self, start: usize, src: View<'_, Self>) -> Result<()>;
    /// self[start..start + src.len] += src
    fn add_in(&mut self, start: usize, src: View<'_, Self>) -> Result<()>;
    /// self[start..start + len] = value
    fn fill_in(&mut self, start: usize, len: usize, value: f64) -> Result<()>;
    /// self[start..start + len] *= c
    fn scale_in(&mut self, start: usize, len: usize, c: f64) -> Result<()>;
    /// Row `rows[i]` of self (rows of `width` elements) = row i of `src` (N, width): the
    /// key/value cache's append. An index past the storage is an error, except for `vouched`
    /// indices (the generation loop's own, made on the device), which a GPU backend does not
    /// read back: every backend then skips such a row.
    fn copy_rows_in(
        &mut self,
        width: usize,
        rows: View<'_, Self>,
        src: View<'_, Self>,
        vouched: bool,
    ) -> Result<()>;
    /// The decode step's rotary embedding and cache append in one pass: `self` is a layer's key
    /// cache and `v_cache` its value cache, (R, Hkv·D) each; row i of k (N, Hkv·D), rotated by
    /// positions[i], and row i of v go to cache row rows[i]; → q (N, Hq·D) rotated (`spec.heads`
    /// = Hq). A row past the caches is an error, or skipped when `vouched` (see `copy_rows_in`).
    #[allow(clippy::too_many_arguments)]
    fn rope_append(
        &mut self,
        v_cache: &mut Self,
        q: View<'_, Self>,
        k: View<'_, Self>,
        v: View<'_, Self>,
        positions: View<'_, Self>,
        rows: View<'_, Self>,
        spec: &RopeSpec,
        kv_heads: usize,
        vouched: bool,
    ) -> Result<Self>;
    /// The generation loop's state (`self`, (5, B) u32: each slot's next token, its position,
    /// tokens generated, done, sequence index) after one draw per row, slots (n) u32 distinct:
    /// for each row of a slot not done, the token (n) u32 and its log-probabilities (n, 2) f32 go
    /// to the slot's outputs at index `generated` (out_tokens (B, max_new) u32, out_logprobs
    /// (B, max_new, 2) f32); the slot is then done after a stop token (stops (S) u32) or
    /// `max_new` tokens, else the token is its next input, one position further.
    #[allow(clippy::too_many_arguments)]
    fn decode_advance(
        &mut self,
        slots: View<'_, Self>,
        tokens: View<'_, Self>,
        logprobs: View<'_, Self>,
        stops: View<'_, Self>,
        max_new: usize,
        out_tokens: &mut Self,
        out_logprobs: &mut Self,
    ) -> Result<()>;
    /// The optimizer: `self[start..]` are f32 master weights (`grad.len` of them, f32 gradients),
    /// `m` and `v` their f32 moments at the same offsets; one AdamW update of each. With `out`
    /// (the model's compute-dtype weights, f32 or bf16), `out[start..start + grad.len]` also
    /// receives the updated weights in out's dtype (bf16 rounded to nearest even).
    fn adamw_step(
        &mut self,
        start: usize,
        grad: View<'_, Self>,
        m: &mut Self,
        v: &mut Self,
        h: &AdamWStep,
        out: Option<&mut Self>,
    ) -> Result<()>;

    // ---- reductions -----------------------------------------------------------------------
    /// Σ x² (accumulated in f64 on the CPU; on CUDA in f32 per thread over a fixed split, then
    /// f64, deterministic); the global gradient norm's building block.
    fn sum_squares(x: View<'_, Self>) -> Result<f64>;

    // ---- ops --------------------------------------------------------------------------------
    /// The rows of one decode step: state (5, B) u32 (see `decode_advance`), slots (n) u32 →
    /// (6, n) u32: each row's input token, its position (clamped below `capacity`), its slot, its
    /// cache row (slot·capacity + position), and the sampler's keys (sequence index, position + 1).
    fn decode_rows(state: View<'_, Self>, slots: View<'_, Self>, capacity: usize) -> Result<Self>;
    /// a + b (N)
    fn add(a: View<'_, Self>, b: View<'_, Self>) -> Result<Self>;
    /// table (V, C), ids (N) u32 → (N, C)
    fn embedding_fwd(table: View<'_, Self>, ids: View<'_, Self>, dim: usize) -> Result<Self>;
    /// dout (N, C), ids (N) → dtable (V, C); repeated ids accumulate, in increasing row order
    /// (deterministic); dtable in f32 on CUDA (see the module documentation)
    fn embedding_bwd(dout: View<'_, Self>, ids: View<'_, Self>, vocab: usize, dim: usize) -> Result<Self>;
    /// x (N, Din), w per `d`, b (Dout) → (N, Dout)
    fn linear_fwd(
        x: View<'_, Self>,
        w: View<'_, Self>,
        b: Option<View<'_, Self>>,
        d: LinearDims,
    ) -> Result<Self>;
    /// → (dx (N, Din), dw shaped like w, db (Dout) when `has_bias`); dw and db in f32 on CUDA
    /// (see the module documentation)
    fn linear_bwd(
        x: View<'_, Self>,
        w: View<'_, Self>,
        dy: View<'_, Self>,
        d: LinearDims,
        has_bias: bool,
    ) -> Result<(Self, Self, Option<Self>)>;
    /// x (N, C), w (C) → (y (N, C), rstd (N))
    fn rms_norm_fwd(x: View<'_, Self>, w: View<'_, Self>, cols: usize, eps: f64) -> Result<(Self, Self)>;
    /// → (dx (N, C), dw (C))
    fn rms_norm_bwd(
        x: View<'_, Self>,
        w: View<'_, Self>,
        rstd: View<'_, Self>,
        dy: View<'_, Self>,
        cols: usize,
    ) -> Result<(Self, Self)>;
    /// The residual add fused with RMSNorm: x, r (N, C), w (C) → (sum = x + r (N, C),
    /// y = rms_norm(sum) (N, C), rstd (N))
    fn add_rms_norm_fwd(
        x: View<'_, Self>,
        r: View<'_, Self>,
        w: View<'_, Self>,
        cols: usize,
        eps: f64,
    ) -> Result<(Self, Self, Self)>;
    /// sum, dy and dsum (N, C) → (the norm's dx + dsum (N, C): the gradient of both x and r,
    /// dw (C))
    fn add_rms_norm_bwd(
        sum: View<'_, Self>,
        w: View<'_, Self>,
        rstd: View<'_, Self>,
        dy: View<'_, Self>,
        dsum: View<'_, Self>,
        cols: usize,
    ) -> Result<(Self, Self)>;
    /// x (N, C), w (C), b (C) → (y (N, C), mean (N), rstd (N))
    fn layer_norm_fwd(
        x: View<'_, Self>,
        w: View<'_, Self>,
        b: View<'_, Self>,
        cols: usize,
        eps: f64,
    ) -> Result<(Self, Self, Self)>;
    /// → (dx (N, C), dw (C), db (C))
    fn layer_norm_bwd(
        x: View<'_, Self>,
        w: View<'_, Self>,
        mean: View<'_, Self>,
        rstd: View<'_, Self>,
        dy: View<'_, Self>,
        cols: usize,
    ) -> Result<(Self, Self, Self)>;
    /// The residual add fused with LayerNorm: x, r (N, C), w, b (C) → (sum = x + r (N, C),
    /// y = layer_norm(sum) (N, C), mean (N), rstd (N))
    fn add_layer_norm_fwd(
        x: View<'_, Self>,
        r: View<'_, Self>,
        w: View<'_, Self>,
        b: View<'_, Self>,
        cols: usize,
        eps: f64,
    ) -> Result<(Self, Self, Self, Self)>;
    /// sum, dy and dsum (N, C) → (the norm's dx + dsum (N, C): the gradient of both x and r,
    /// dw (C), db (C))
    #[allow(clippy::too_many_arguments)]
    fn add_layer_norm_bwd(
        sum: View<'_, Self>,
        w: View<'_, Self>,
        mean: View<'_, Self>,
        rstd: View<'_, Self>,
        dy: View<'_, Self>,
        dsum: View<'_, Self>,
        cols: usize,
    ) -> Result<(Self, Self, Self)>;
    /// x (N, H·D), positions (N) u32 → (N, H·D)
    fn rope_fwd(x: View<'_, Self>, positions: View<'_, Self>, spec: &RopeSpec) -> Result<Self>;
    /// The inverse rotation of dy.
    fn rope_bwd(dy: View<'_, Self>, positions: View<'_, Self>, spec: &RopeSpec) -> Result<Self>;
    /// q, k, v per `d`, starts and lengths (B) u32 → (out (N, Hq·D), lse (N, Hq))
    fn attention_fwd(
        q: View<'_, Self>,
        k: View<'_, Self>,
        v: View<'_, Self>,
        starts: View<'_, Self>,
        lengths: View<'_, Self>,
        d: &AttnDims,
    ) -> Result<(Self, Self)>;
    /// → (dq, dk, dv)
    #[allow(clippy::too_many_arguments)]
    fn attention_bwd(
        q: View<'_, Self>,
        k: View<'_, Self>,
        v: View<'_, Self>,
        starts: View<'_, Self>,
        lengths: View<'_, Self>,
        out: View<'_, Self>,
        lse: View<'_, Self>,
        dout: View<'_, Self>,
        d: &AttnDims,
    ) -> Result<(Self, Self, Self)>;
    /// q (N, Hq·D), caches (B·L, Hkv·D), seq and pos (N) u32 → (N, Hq·D); no backward.
    fn attention_cached_fwd(
        q: View<'_, Self>,
        k_cache: View<'_, Self>,
        v_cache: View<'_, Self>,
        seq: View<'_, Self>,
        pos: View<'_, Self>,
        d: &CachedAttnDims,
    ) -> Result<Self>;
    /// GELU, tanh form (N)
    fn gelu_fwd(x: View<'_, Self>) -> Result<Self>;
    fn gelu_bwd(x: View<'_, Self>, dy: View<'_, Self>) -> Result<Self>;
    /// silu(gate)·up (N)
    fn swiglu_fwd(gate: View<'_, Self>, up: View<'_, Self>) -> Result<Self>;
    /// → (dgate, dup)
    fn swiglu_bwd(gate: View<'_, Self>, up: View<'_, Self>, dy: View<'_, Self>) -> Result<(Self, Self)>;
    /// x (N, 2I), each row [gate | up] (one product of the adjacent gate and up weights) →
    /// silu(gate)·up (N, I); no backward (forwards without a gradient)
    fn swiglu_packed_fwd(x: View<'_, Self>, width: usize) -> Result<Self>;
    /// x (N, W) → columns start..start+len (N, L)
    fn narrow_cols_fwd(x: View<'_, Self>, width: usize, start: usize, len: usize) -> Result<Self>;
    /// dy (N, L) → dx (N, W), zero outside the columns
    fn narrow_cols_bwd(dy: View<'_, Self>, width: usize, start: usize, len: usize) -> Result<Self>;
    /// logits (N, V), targets (N) u32 → (row_loss (N), grad (N, V) when asked for)
    fn cross_entropy(
        logits: View<'_, Self>,
        targets: View<'_, Self>,
        spec: &LossSpec,
    ) -> Result<(Self, Option<Self>)>;
    /// student and teacher logits (N, V), row mask (N) u8 → (row_loss (N), grad w.r.t. the
    /// student logits (N, V) when asked for); `spec.kind` is a divergence
    fn divergence(
        student: View<'_, Self>,
        teacher: View<'_, Self>,
        mask: Option<View<'_, Self>>,
        spec: &LossSpec,
    ) -> Result<(Self, Option<Self>)>;
    /// hidden (N, H), head (Vh, H) and the target → row losses and gradients, in row chunks
    fn linear_loss(
        hidden: View<'_, Self>,
        head: View<'_, Self>,
        target: LossTarget<'_, Self>,
        spec: &LinearLossSpec,
    ) -> Result<LinearLossOut<Self>>;
    /// One token per row, drawn per `spec` (the function is `backend/cpu/sampling.rs`): logits
    /// (N, V) f32 or bf16, seq and pos (N) u32 (each row's random-number key: its sequence's
    /// index in the run and the position the token will take) → (tokens (N) u32, logprobs (N, 2)
    /// f32: ln q(token) under the sampling distribution, ln softmax(logits)[token]); no backward.
    fn sample(
        logits: View<'_, Self>,
        seq: View<'_, Self>,
        pos: View<'_, Self>,
        spec: &SampleSpec,
    ) -> Result<(Self, Self)>;
}
