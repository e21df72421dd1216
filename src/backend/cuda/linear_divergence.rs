//! The fused output head: from final hidden states and the output head to the loss, d(hidden)
//! and d(head), without ever holding the (tokens × vocab) logits; the path the GPU trainer uses.
//! The loss is a divergence from the teacher (`LinearDivergence`: the teacher's hidden states and
//! head give its logits chunk by chunk) or cross-entropy against the next tokens
//! (`LinearCrossEntropy`, SFT). One chunk loop (`FusedHead::execute`) serves both.
//!
//! Rows are processed in chunks of `c` tokens; per chunk, with S (and T, divergence only) (c, V)
//! scratch buffers of the inputs' type (bf16 in training, f32 in tests) reused across chunks:
//!   S = h·Wᵀ (T = ht·Wtᵀ)                       (cuBLAS, fp32 accumulation)
//!   S ← scale·∂L/∂(student logits), row losses  (the divergence or cross-entropy kernel, in
//!                                                place over S)
//!   d_h[chunk] = S·W
//!   d_W += Sᵀ·h[chunk]                          (fp32 accumulator, beta = 1)
//! Extra device memory is (2 or 1)·c·V·sizeof(T) plus N floats of row losses, against the unfused
//! paths' full (N, V) logits and gradient (and the divergence's (N, V) fp32 intermediates). Only
//! the first `vocab` rows of each head are used: embedding-padding rows (e.g. 151936 of 152064)
//! are ignored and their d_W rows are left untouched.

use super::cross_entropy::{
    cross_entropy_fwd_bwd, cross_entropy_weighted_fwd_bwd, CePath, CrossEntropyLaunch,
};
use super::device::{cuda_err, CudaDevice};
use super::divergence::{divergence_fwd_bwd, DivElem, DivergenceLaunch, KernelPath, StudentGrad};
use super::divergence_unfused::divergence_unfused_fwd_bwd;
use super::matmul::{gemm, Gemm, GemmElem};
use crate::backend::Divergence;
use crate::error::{shape_err, Error, Result};
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, DeviceRepr, ValidAsZeroBits};

/// An element type of the fused head: f32 (tests at tight tolerances) or bf16 (training).
pub trait HeadElem: DivElem + GemmElem + ValidAsZeroBits + DeviceRepr {}
impl<T: DivElem + GemmElem + ValidAsZeroBits + DeviceRepr> HeadElem for T {}

/// Default scratch budget for the logit chunks (two with the divergence, one with cross-entropy).
pub const DEFAULT_CHUNK_BYTES: usize = 256 << 20;

/// The output head fused with a divergence from the teacher.
#[derive(Clone, Copy, Debug)]
pub struct LinearDivergence {
    /// Tokens N.
    pub rows: usize,
    /// Student hidden size Hs and teacher hidden size Ht.
    pub student_dim: usize,
    pub teacher_dim: usize,
    /// Vocabulary entries that count (≤ the rows of either head).
    pub vocab: usize,
    pub divergence: Divergence,
    pub temperature: f32,
    /// Multiplies loss and gradients (1 / completion tokens in the optimizer step).
    pub scale: f32,
    /// Tokens per chunk; 0 picks from `DEFAULT_CHUNK_BYTES`.
    pub chunk_rows: usize,
    pub path: KernelPath,
}

/// What `run` and `run_matmuls_only` of either head return.
#[derive(Clone, Copy, Debug)]
pub struct FusedHeadOut {
    /// Σ over the counted rows of scale·L_r (0 for the matmuls alone).
    pub loss: f64,
    pub chunk_rows: usize,
    /// Device memory this call allocated (the logit chunks and the row losses).
    pub scratch_bytes: usize,
}

/// The inputs: hidden states and heads, all of one type T and row-major.
pub struct LinearDivergenceInputs<'a, T> {
    /// (N, Hs)
    pub student_hidden: &'a CudaView<'a, T>,
    /// (≥V, Hs)
    pub student_head: &'a CudaView<'a, T>,
    /// (N, Ht)
    pub teacher_hidden: &'a CudaView<'a, T>,
    /// (≥V, Ht)
    pub teacher_head: &'a CudaView<'a, T>,
    /// (N) u8, 0 = token not counted (prompt, padding).
    pub row_mask: Option<&'a CudaView<'a, u8>>,
}

/// What one call computes; `Matmuls` is the same sequence without the loss kernel (its time is
/// the yardstick the fused path is judged against).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Work {
    Fused,
    /// Row losses only (no gradient, no backward products).
    LossOnly,
    Matmuls,
}

impl LinearDivergence {
    /// Rows per chunk for elements of `elem` bytes.
    pub fn resolved_chunk(&self, elem: usize) -> usize {
        resolve_chunk(self.chunk_rows, self.rows, 2 * self.vocab * elem)
    }

    /// `grads`: the lengths of d(student hidden) and d(student head), when they are computed.
    fn check<T>(&self, x: &LinearDivergenceInputs<'_, T>, grads: Option<(usize, usize)>) -> Result<()> {
        const OP: &str = "linear + divergence (cuda)";
        let (n, ht, v) = (self.rows, self.teacher_dim, self.vocab);
        check_head(OP, n, self.student_dim, v, x.student_hidden.len(), x.student_head.len(), grads)?;
        if x.teacher_hidden.len() < n * ht {
            return too_short(OP, "teacher hidden", x.teacher_hidden.len(), n * ht);
        }
        if x.teacher_head.len() < v * ht {
            return too_short(OP, "teacher head", x.teacher_head.len(), v * ht);
        }
        if let Some(m) = x.row_mask {
            if m.len() < n {
                return too_short(OP, "row mask", m.len(), n);
            }
        }
        Ok(())
    }

    fn head<'x, T>(&'x self, x: &'x LinearDivergenceInputs<'x, T>) -> FusedHead<'x, T> {
        FusedHead {
            rows: self.rows,
            dim: self.student_dim,
            vocab: self.vocab,
            hidden: x.student_hidden,
            head: x.student_head,
            target: ChunkTarget::Teacher { p: self, x },
        }
    }

    /// Loss, d(student hidden) (written) and d(student head) (accumulated into, fp32).
    pub fn run<T: HeadElem>(
        &self,
        dev: &CudaDevice,
        x: &LinearDivergenceInputs<'_, T>,
        d_hidden: &mut CudaViewMut<T>,
        d_head: &mut CudaViewMut<f32>,
    ) -> Result<FusedHeadOut> {
        self.check(x, Some((d_hidden.len(), d_head.len())))?;
        self.head(x).summed(dev, (d_hidden, d_head), Work::Fused)
    }

    /// The row losses, (N) scale·D_r, left on the device (no synchronization); with `grads`,
    /// d(student hidden) written and d(student head) accumulated into as in `run`, without them
    /// only the losses (no backward products, no gradient buffers).
    pub fn run_rows<T: HeadElem>(
        &self,
        dev: &CudaDevice,
        x: &LinearDivergenceInputs<'_, T>,
        grads: Option<(&mut CudaViewMut<T>, &mut CudaViewMut<f32>)>,
    ) -> Result<CudaSlice<f32>> {
        self.check(x, grads.as_ref().map(|(h, w)| (h.len(), w.len())))?;
        let work = if grads.is_some() { Work::Fused } else { Work::LossOnly };
        Ok(self.head(x).execute(dev, grads, work)?.0)
    }

    /// The same matrix products, chunking and buffers as `run`, without the divergence kernel.
    pub fn run_matmuls_only<T: HeadElem>(
        &self,
        dev: &CudaDevice,
        x: &LinearDivergenceInputs<'_, T>,
        d_hidden: &mut CudaViewMut<T>,
        d_head: &mut CudaViewMut<f32>,
    ) -> Result<FusedHeadOut> {
        self.check(x, Some((d_hidden.len(), d_head.len())))?;
        self.head(x).summed(dev, (d_hidden, d_head), Work::Matmuls)
    }
}

/// The output head fused with cross-entropy against the next tokens (SFT): per chunk, S = h·Wᵀ,
/// the cross-entropy kernel in place over S (loss and scale·(softmax − onehot)), then the same
/// backward products as the divergence. One (c, V) scratch buffer.
#[derive(Clone, Copy, Debug)]
pub struct LinearCrossEntropy {
    /// Tokens N.
    pub rows: usize,
    /// Hidden size H.
    pub dim: usize,
    /// Vocabulary entries that count (≤ the head's rows).
    pub vocab: usize,
    /// Multiplies loss and gradients (1 / counted tokens in the step).
    pub scale: f32,
    /// Tokens per chunk; 0 picks from `DEFAULT_CHUNK_BYTES`.
    pub chunk_rows: usize,
    pub path: CePath,
}

/// The inputs of the fused head with cross-entropy; hidden states and head of one type T.
pub struct LinearCrossEntropyInputs<'a, T> {
    /// (N, H)
    pub hidden: &'a CudaView<'a, T>,
    /// (≥V, H)
    pub head: &'a CudaView<'a, T>,
    /// (N) u32; `ops::IGNORE` rows count 0, a target ≥ V makes its row's loss and gradient NaN
    /// (see kernels/cross_entropy.cu).
    pub targets: &'a CudaView<'a, u32>,
}

impl LinearCrossEntropy {
    /// Rows per chunk for elements of `elem` bytes.
    pub fn resolved_chunk(&self, elem: usize) -> usize {
        resolve_chunk(self.chunk_rows, self.rows, self.vocab * elem)
    }

    fn check<T>(&self, x: &LinearCrossEntropyInputs<'_, T>, grads: Option<(usize, usize)>) -> Result<()> {
        const OP: &str = "linear + cross-entropy (cuda)";
        check_head(OP, self.rows, self.dim, self.vocab, x.hidden.len(), x.head.len(), grads)?;
        if x.targets.len() < self.rows {
            return too_short(OP, "targets", x.targets.len(), self.rows);
        }
        Ok(())
    }

    fn head<'x, T>(&'x self, x: &'x LinearCrossEntropyInputs<'x, T>) -> FusedHead<'x, T> {
        self.weighted_head(x, None)
    }

    fn weighted_head<'x, T>(
        &'x self,
        x: &'x LinearCrossEntropyInputs<'x, T>,
        row_weight: Option<&'x CudaView<'x, f32>>,
    ) -> FusedHead<'x, T> {
        FusedHead {
            rows: self.rows,
            dim: self.dim,
            vocab: self.vocab,
            hidden: x.hidden,
            head: x.head,
            target: ChunkTarget::Tokens { p: self, targets: x.targets, row_weight },
        }
    }

    /// Loss, d(hidden) (written) and d(head) (accumulated into, fp32).
    pub fn run<T: HeadElem>(
        &self,
        dev: &CudaDevice,
        x: &LinearCrossEntropyInputs<'_, T>,
        d_hidden: &mut CudaViewMut<T>,
        d_head: &mut CudaViewMut<f32>,
    ) -> Result<FusedHeadOut> {
        self.check(x, Some((d_hidden.len(), d_head.len())))?;
        self.head(x).summed(dev, (d_hidden, d_head), Work::Fused)
    }

    /// The row losses (N) left on the device, and with `grads` the gradients as in `run`.
    pub fn run_rows<T: HeadElem>(
        &self,
        dev: &CudaDevice,
        x: &LinearCrossEntropyInputs<'_, T>,
        grads: Option<(&mut CudaViewMut<T>, &mut CudaViewMut<f32>)>,
    ) -> Result<CudaSlice<f32>> {
        self.run_rows_weighted(dev, x, None, grads)
    }

    /// As `run_rows`, row r's loss and gradient multiplied by `row_weight[r]` (N) f32 when given
    /// (RL's policy-gradient term; see kernels/cross_entropy.cu).
    pub fn run_rows_weighted<T: HeadElem>(
        &self,
        dev: &CudaDevice,
        x: &LinearCrossEntropyInputs<'_, T>,
        row_weight: Option<&CudaView<'_, f32>>,
        grads: Option<(&mut CudaViewMut<T>, &mut CudaViewMut<f32>)>,
    ) -> Result<CudaSlice<f32>> {
        const OP: &str = "linear + cross-entropy (cuda)";
        self.check(x, grads.as_ref().map(|(h, w)| (h.len(), w.len())))?;
        if let Some(w) = row_weight.filter(|w| w.len() < self.rows) {
            return shape_err(OP, format!("{} row weights for {} rows", w.len(), self.rows));
        }
        let work = if grads.is_some() { Work::Fused } else { Work::LossOnly };
        let w = row_weight.map(|w| w.slice(..self.rows));
        Ok(self.weighted_head(x, w.as_ref()).execute(dev, grads, work)?.0)
    }

    /// The three products per chunk as in `run`, without the cross-entropy kernel: the matmul
    /// floor of the fused head.
    pub fn run_matmuls_only<T: HeadElem>(
        &self,
        dev: &CudaDevice,
        x: &LinearCrossEntropyInputs<'_, T>,
        d_hidden: &mut CudaViewMut<T>,
        d_head: &mut CudaViewMut<f32>,
    ) -> Result<FusedHeadOut> {
        self.check(x, Some((d_hidden.len(), d_head.len())))?;
        self.head(x).summed(dev, (d_hidden, d_head), Work::Matmuls)
    }
}

/// Rows per chunk: `chunk_rows` (at most the rows), or as many as fit `DEFAULT_CHUNK_BYTES` at
/// `row_bytes` of scratch per row, a multiple of 64 (at least 64, at most the rows).
fn resolve_chunk(chunk_rows: usize, rows: usize, row_bytes: usize) -> usize {
    if chunk_rows > 0 {
        return chunk_rows.min(rows.max(1));
    }
    let c = (DEFAULT_CHUNK_BYTES / row_bytes.max(1)) / 64 * 64;
    c.clamp(64, rows.max(64)).min(rows.max(1))
}

fn too_short(op: &'static str, what: &str, len: usize, need: usize) -> Result<()> {
    shape_err(op, format!("{what} has {len} elements, needs at least {need}"))
}

/// The student side: hidden (N, H), a head of at least V rows, and the gradients when given.
fn check_head(
    op: &'static str,
    n: usize,
    h: usize,
    v: usize,
    hidden: usize,
    head: usize,
    grads: Option<(usize, usize)>,
) -> Result<()> {
    if hidden < n * h {
        return too_short(op, "hidden", hidden, n * h);
    }
    if head < v * h {
        return too_short(op, "head", head, v * h);
    }
    if let Some((d_hidden, d_head)) = grads {
        if d_hidden < n * h {
            return too_short(op, "d(hidden)", d_hidden, n * h);
        }
        if d_head < v * h {
            return too_short(op, "d(head)", d_head, v * h);
        }
    }
    Ok(())
}

/// What each chunk of student logits is scored against.
enum ChunkTarget<'x, T> {
    /// The teacher's logits of the same rows, from its hidden states and head.
    Teacher { p: &'x LinearDivergence, x: &'x LinearDivergenceInputs<'x, T> },
    /// The next tokens, and a weight per row (N) f32 multiplying its loss and gradient.
    Tokens {
        p: &'x LinearCrossEntropy,
        targets: &'x CudaView<'x, u32>,
        row_weight: Option<&'x CudaView<'x, f32>>,
    },
}

/// The chunk loop's view of either fused head (inputs already checked).
struct FusedHead<'x, T> {
    rows: usize,
    dim: usize,
    vocab: usize,
    /// (N, H)
    hidden: &'x CudaView<'x, T>,
    /// (≥V, H)
    head: &'x CudaView<'x, T>,
    target: ChunkTarget<'x, T>,
}

impl<T: HeadElem> FusedHead<'_, T> {
    /// `execute` with the row losses summed on the host.
    fn summed(
        &self,
        dev: &CudaDevice,
        grads: (&mut CudaViewMut<T>, &mut CudaViewMut<f32>),
        work: Work,
    ) -> Result<FusedHeadOut> {
        let (row_loss, chunk_rows, scratch_bytes) = self.execute(dev, Some(grads), work)?;
        let losses = dev.stream().clone_dtoh(&row_loss).map_err(cuda_err("fused output head (cuda)"))?;
        let loss = losses[..self.rows].iter().map(|&l| l as f64).sum();
        Ok(FusedHeadOut { loss, chunk_rows, scratch_bytes })
    }

    /// (row losses, rows per chunk, scratch bytes). `grads` must be given unless `work` is
    /// `LossOnly`.
    fn execute(
        &self,
        dev: &CudaDevice,
        mut grads: Option<(&mut CudaViewMut<T>, &mut CudaViewMut<f32>)>,
        work: Work,
    ) -> Result<(CudaSlice<f32>, usize, usize)> {
        const OP: &str = "fused output head (cuda)";
        let (n, h, v) = (self.rows, self.dim, self.vocab);
        let elem = std::mem::size_of::<T>();
        let chunk = match self.target {
            ChunkTarget::Teacher { p, .. } => p.resolved_chunk(elem),
            ChunkTarget::Tokens { p, .. } => p.resolved_chunk(elem),
        };
        // SAFETY: every chunk's products overwrite S (and T) (beta = 0) before anything reads them.
        let mut s: CudaSlice<T> = unsafe { dev.alloc_of(chunk * v, OP)? };
        let mut t: Option<CudaSlice<T>> = match self.target {
            // SAFETY: as S.
            ChunkTarget::Teacher { .. } => Some(unsafe { dev.alloc_of(chunk * v, OP)? }),
            ChunkTarget::Tokens { .. } => None,
        };
        let mut row_loss: CudaSlice<f32> = dev.zeros_of(n, OP)?;
        let buffers = 1 + usize::from(t.is_some());
        let scratch_bytes = buffers * chunk * v * elem + n.max(1) * 4;
        let w = self.head.slice(..v * h);
        let mut r0 = 0;
        while r0 < n {
            let c = chunk.min(n - r0);
            let h_c = self.hidden.slice(r0 * h..(r0 + c) * h);
            // Logits: (c, V) = (c, H)·(V, H)ᵀ.
            gemm(dev, &Gemm::dense(c, v, h, false, true), &h_c, &w, &mut s.slice_mut(..c * v))?;
            let losses = &mut row_loss.slice_mut(r0..r0 + c);
            let logits = match work {
                Work::LossOnly => StudentGrad::LossOnly(s.slice(..c * v)),
                _ => StudentGrad::InPlace(s.slice_mut(..c * v)),
            };
            match &self.target {
                ChunkTarget::Teacher { p, x } => {
                    let t = t.as_mut().ok_or_else(|| Error::Msg(format!("{OP}: no teacher logit buffer")))?;
                    let ht = p.teacher_dim;
                    let th_c = x.teacher_hidden.slice(r0 * ht..(r0 + c) * ht);
                    gemm(
                        dev,
                        &Gemm::dense(c, v, ht, false, true),
                        &th_c,
                        &x.teacher_head.slice(..v * ht),
                        &mut t.slice_mut(..c * v),
                    )?;
                    if work != Work::Matmuls {
                        let launch = DivergenceLaunch {
                            rows: c,
                            vocab: v,
                            ld: v,
                            divergence: p.divergence,
                            temperature: p.temperature,
                            scale: p.scale,
                            path: p.path,
                        };
                        let mask = x.row_mask.map(|m| m.slice(r0..r0 + c));
                        divergence_fwd_bwd(dev, &launch, logits, &t.slice(..c * v), mask.as_ref(), losses)?;
                    }
                }
                ChunkTarget::Tokens { p, targets, row_weight } => {
                    if work != Work::Matmuls {
                        let launch = CrossEntropyLaunch {
                            rows: c,
                            vocab: v,
                            scale: p.scale,
                            path: p.path,
                            scalar: false,
                        };
                        let w = row_weight.map(|w| w.slice(r0..r0 + c));
                        let t = &targets.slice(r0..r0 + c);
                        cross_entropy_weighted_fwd_bwd(dev, &launch, logits, t, w.as_ref(), losses)?;
                    }
                }
            }
            let Some((d_hidden, d_head)) = grads.as_mut().filter(|_| work != Work::LossOnly) else {
                r0 += c;
                continue;
            };
            // d_h[chunk] (c, H) = G (c, V) · W (V, H).
            gemm(
                dev,
                &Gemm::dense(c, h, v, false, false),
                &s.slice(..c * v),
                &w,
                &mut d_hidden.slice_mut(r0 * h..(r0 + c) * h),
            )?;
            // d_W (V, H) += Gᵀ (V, c) · h[chunk] (c, H); G is stored (c, V).
            let g = Gemm { beta: 1.0, ..Gemm::dense(v, h, c, true, false) };
            gemm(dev, &g, &s.slice(..c * v), &h_c, &mut d_head.slice_mut(..v * h))?;
            r0 += c;
        }
        Ok((row_loss, chunk, scratch_bytes))
    }
}

/// The unfused baseline: both (N, V) logit tensors materialized, the unfused divergence (its fp32
/// intermediates included), then the two backward products. Same outputs as `LinearDivergence::run`.
pub fn linear_divergence_unfused<T: HeadElem>(
    p: &LinearDivergence,
    dev: &CudaDevice,
    x: &LinearDivergenceInputs<'_, T>,
    d_hidden: &mut CudaViewMut<T>,
    d_head: &mut CudaViewMut<f32>,
) -> Result<FusedHeadOut> {
    const OP: &str = "linear + divergence (unfused)";
    p.check(x, Some((d_hidden.len(), d_head.len())))?;
    let (n, hs, ht, v) = (p.rows, p.student_dim, p.teacher_dim, p.vocab);
    let stream = dev.stream();
    let elem = std::mem::size_of::<T>();
    let mut s: CudaSlice<T> = dev.zeros_of(n * v, OP)?;
    let mut t: CudaSlice<T> = dev.zeros_of(n * v, OP)?;
    let mut g: CudaSlice<T> = dev.zeros_of(n * v, OP)?;
    let mut row_loss: CudaSlice<f32> = dev.zeros_of(n, OP)?;
    gemm(
        dev,
        &Gemm::dense(n, v, hs, false, true),
        &x.student_hidden.slice(..n * hs),
        &x.student_head.slice(..v * hs),
        &mut s,
    )?;
    gemm(
        dev,
        &Gemm::dense(n, v, ht, false, true),
        &x.teacher_hidden.slice(..n * ht),
        &x.teacher_head.slice(..v * ht),
        &mut t,
    )?;
    let launch = DivergenceLaunch {
        rows: n,
        vocab: v,
        ld: v,
        divergence: p.divergence,
        temperature: p.temperature,
        scale: p.scale,
        path: KernelPath::Auto,
    };
    let mask = x.row_mask.map(|m| m.slice(..n));
    divergence_unfused_fwd_bwd(
        dev,
        &launch,
        StudentGrad::Into { student: s.slice(..), grad: g.slice_mut(..) },
        &t.slice(..),
        mask.as_ref(),
        &mut row_loss.slice_mut(..),
    )?;
    gemm(
        dev,
        &Gemm::dense(n, hs, v, false, false),
        &g,
        &x.student_head.slice(..v * hs),
        &mut d_hidden.slice_mut(..n * hs),
    )?;
    let gw = Gemm { beta: 1.0, ..Gemm::dense(v, hs, n, true, false) };
    gemm(dev, &gw, &g, &x.student_hidden.slice(..n * hs), &mut d_head.slice_mut(..v * hs))?;
    let losses = stream.clone_dtoh(&row_loss).map_err(cuda_err(OP))?;
    let fp32_buffers = divergence_scratch_floats(p.divergence);
    Ok(FusedHeadOut {
        loss: losses[..n].iter().map(|&l| l as f64).sum(),
        chunk_rows: n,
        scratch_bytes: 3 * n * v * elem + n.max(1) * 4 + fp32_buffers * n * v * 4,
    })
}

/// The unfused baseline of the head with cross-entropy, as a framework runs it: the full (N, V)
/// logits, the cross-entropy kernel into a separate (N, V) gradient, then the two backward
/// products over all rows. Same outputs as `LinearCrossEntropy::run`.
pub fn linear_cross_entropy_unfused<T: HeadElem>(
    p: &LinearCrossEntropy,
    dev: &CudaDevice,
    x: &LinearCrossEntropyInputs<'_, T>,
    d_hidden: &mut CudaViewMut<T>,
    d_head: &mut CudaViewMut<f32>,
) -> Result<FusedHeadOut> {
    const OP: &str = "linear + cross-entropy (unfused)";
    p.check(x, Some((d_hidden.len(), d_head.len())))?;
    let (n, h, v) = (p.rows, p.dim, p.vocab);
    let elem = std::mem::size_of::<T>();
    // SAFETY: the logits product writes all of S (beta = 0), the kernel all of G.
    let (mut s, mut g): (CudaSlice<T>, CudaSlice<T>) =
        unsafe { (dev.alloc_of(n * v, OP)?, dev.alloc_of(n * v, OP)?) };
    let mut row_loss: CudaSlice<f32> = dev.zeros_of(n, OP)?;
    let w = x.head.slice(..v * h);
    let hidden = x.hidden.slice(..n * h);
    gemm(dev, &Gemm::dense(n, v, h, false, true), &hidden, &w, &mut s.slice_mut(..n * v))?;
    let launch = CrossEntropyLaunch { rows: n, vocab: v, scale: p.scale, path: p.path, scalar: false };
    cross_entropy_fwd_bwd(
        dev,
        &launch,
        StudentGrad::Into { student: s.slice(..n * v), grad: g.slice_mut(..n * v) },
        &x.targets.slice(..n),
        &mut row_loss.slice_mut(..n),
    )?;
    gemm(dev, &Gemm::dense(n, h, v, false, false), &g.slice(..n * v), &w, &mut d_hidden.slice_mut(..n * h))?;
    let gw = Gemm { beta: 1.0, ..Gemm::dense(v, h, n, true, false) };
    gemm(dev, &gw, &g.slice(..n * v), &hidden, &mut d_head.slice_mut(..v * h))?;
    let losses = dev.stream().clone_dtoh(&row_loss).map_err(cuda_err(OP))?;
    Ok(FusedHeadOut {
        loss: losses[..n].iter().map(|&l| l as f64).sum(),
        chunk_rows: n,
        scratch_bytes: 2 * n * v * elem + n.max(1) * 4,
    })
}

/// (rows·V) fp32 buffers the unfused divergence allocates (see divergence_unfused.rs).
fn divergence_scratch_floats(d: Divergence) -> usize {
    match d.canonical() {
        Divergence::Jsd { .. } | Divergence::SkewForwardKl { .. } | Divergence::SkewReverseKl { .. } => 5,
        _ => 4,
    }
}
