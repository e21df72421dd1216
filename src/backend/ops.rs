//! What each op needs to know besides its tensors: dimensions, layouts, hyper-parameters. Every
//! backend receives the same descriptions; shapes are written beside each field.

use super::Divergence;

/// How a linear layer's weight is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightLayout {
    /// (out, in): PyTorch `nn.Linear`, Llama-family checkpoints.
    OutIn,
    /// (in, out): GPT-2 `Conv1D`.
    InOut,
}

/// A fully connected layer: y = x·Wᵀ + b with W stored (Dout, Din) (`nn.Linear`), or y = x·W + b
/// with W stored (Din, Dout) (GPT-2's `Conv1D`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearDims {
    pub n: usize,     // N rows of x
    pub d_in: usize,  // Din
    pub d_out: usize, // Dout
    /// W is stored (Din, Dout) instead of (Dout, Din).
    pub w_in_out: bool,
}

/// Causal self-attention within each of `batch` sequences laid out in the rows: q (N, Hq·D), k and
/// v (N, Hkv·D), sequence b at rows start[b]..start[b] + len[b] (packed back to back, or padded:
/// rows of no sequence get output 0); query head h reads key/value head h / (Hq/Hkv); `scale`
/// multiplies q·k (1/√D).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttnDims {
    pub rows: usize,     // N
    pub batch: usize,    // B
    pub q_heads: usize,  // Hq
    pub kv_heads: usize, // Hkv
    pub head_dim: usize, // D
    pub scale: f64,
    /// The longest sequence, when the caller made the starts and lengths itself on the host and
    /// vouches for them (the model's packed batches): a GPU backend then sizes its grids from it
    /// instead of reading the bounds back to check them (a synchronization per call). None: the
    /// backend reads and checks them.
    pub longest: Option<usize>,
}

impl AttnDims {
    /// With the usual scale 1/√D.
    pub fn new(rows: usize, batch: usize, q_heads: usize, kv_heads: usize, head_dim: usize) -> AttnDims {
        AttnDims {
            rows,
            batch,
            q_heads,
            kv_heads,
            head_dim,
            scale: 1.0 / (head_dim as f64).sqrt(),
            longest: None,
        }
    }

    /// The same, with the longest sequence vouched for (see `longest`).
    pub fn with_longest(self, longest: usize) -> AttnDims {
        AttnDims { longest: Some(longest), ..self }
    }
}

/// Attention of new query rows over a key/value cache of `batch` sequences of `capacity`
/// positions each: q (N, Hq·D), cache (B·L, Hkv·D); query row i belongs to sequence seq[i] and
/// sits at position pos[i], attending to that sequence's positions 0..=pos[i].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CachedAttnDims {
    pub rows: usize,     // N
    pub batch: usize,    // B
    pub capacity: usize, // L
    pub q_heads: usize,  // Hq
    pub kv_heads: usize, // Hkv
    pub head_dim: usize, // D
    pub scale: f64,
    /// The caller computed seq and pos on the device itself and vouches that seq < B and
    /// pos < L (the generation loop's own state): a GPU backend then launches without reading
    /// them back (a synchronization per layer, and impossible inside a CUDA graph); its kernel
    /// still clamps them so that a wrong index cannot read outside the cache. false: the backend
    /// reads and checks them.
    pub vouched: bool,
}

/// Rotary position embedding (Hugging Face "rotate_half"), per head of a (N, H·D) input, with
/// one position per row; θ_i = position · inv_freq[i], i < D/2.
#[derive(Clone, Copy, Debug)]
pub struct RopeSpec<'a> {
    pub heads: usize,        // H
    pub inv_freq: &'a [f64], // (D/2)
}

/// A per-row loss over the vocabulary, fused with its gradient with respect to the logits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LossKind {
    /// −log softmax(z)[target]; rows whose target is `IGNORE` count 0.
    CrossEntropy,
    /// D(teacher ‖ student) at a loss temperature τ (both logits divided by τ; the gradient
    /// includes the 1/τ).
    Divergence { divergence: Divergence, temperature: f64 },
}

/// The target id of a cross-entropy row that does not count.
pub const IGNORE: u32 = u32::MAX;

/// A per-row loss over (rows, vocab) logits: row r's loss is `scale`·L_r, its gradient
/// `scale`·∂L_r/∂z_r (when asked for).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossSpec {
    pub rows: usize,  // N
    pub vocab: usize, // V
    pub kind: LossKind,
    pub scale: f64,
    pub want_grad: bool,
}

/// The output head fused with a per-row loss: logits z = h·Wᵀ over the first `vocab` rows of the
/// head W (Vh ≥ vocab rows: embedding padding is ignored), computed `chunk_rows` rows at a time so
/// that no (rows × vocab) buffer larger than a chunk exists. With the divergence, the teacher's
/// logits come from its own hidden states and head in the same chunks.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinearLossSpec {
    pub loss: LossSpec,
    pub hidden: usize,         // H of the student
    pub head_rows: usize,      // Vh ≥ vocab
    pub teacher_hidden: usize, // Ht (divergence only)
    pub teacher_head_rows: usize,
    /// Rows per chunk; 0 lets the backend choose from its scratch budget.
    pub chunk_rows: usize,
}

/// One AdamW update, elementwise, with every scalar already rounded to f32 as PyTorch rounds its
/// Python-float scalars (see `optim::adamw`):
/// p ← p·decay;  m ← m + (1−β1)(g − m);  v ← β2·v + (1−β2)·g²;  p ← p + neg_step·m / (√v / bc2 + ε)
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWStep {
    /// 1 − lr·λ, or exactly 1 without weight decay.
    pub decay: f32,
    pub one_minus_beta1: f32,
    pub beta2: f32,
    pub one_minus_beta2: f32,
    /// −lr / (1 − β1^t).
    pub neg_step_size: f32,
    /// √(1 − β2^t).
    pub bc2_sqrt: f32,
    pub eps: f32,
}

/// How `sample` draws one token per row of (N, V) logits z (see `backend/cpu/sampling.rs` for
/// the exact function every backend computes):
/// - `temperature` 0: greedy, the lowest id of the largest logit;
/// - else from softmax(z / T) restricted to the top-k logits (ties at the k-th stay; 0 = off),
///   then to the top-p nucleus of those (1 = off), by the Gumbel-max trick with Philox4x32-10
///   noise keyed by (`seed`, the row's sequence index and position): the same key gives the same
///   token whatever the batch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SampleSpec {
    pub vocab: usize, // V
    /// 0 = greedy.
    pub temperature: f64,
    /// 0 = off.
    pub top_k: usize,
    /// 1 = off.
    pub top_p: f64,
    pub seed: u64,
}

impl SampleSpec {
    /// Whether the draw is the argmax (temperature 0).
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// The top-k restriction, when it removes anything from a row of `vocab` (0 < k < V).
    pub fn active_top_k(&self) -> Option<usize> {
        (self.top_k > 0 && self.top_k < self.vocab).then_some(self.top_k)
    }

    /// The nucleus restriction, when it can remove anything (p < 1).
    pub fn active_top_p(&self) -> Option<f64> {
        (self.top_p < 1.0).then_some(self.top_p)
    }
}
