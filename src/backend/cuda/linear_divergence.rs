//! Fused lm_head + divergence: from the student's and the teacher's final hidden states and
//! output heads to the loss, d(student hidden) and d(student head), without ever holding the
//! (tokens × vocab) logits. The path the GPU trainer uses.
//!
//! Rows are processed in chunks of `c` tokens; per chunk, with S and T two (c, V) scratch buffers
//! of the inputs' type (bf16 in training, f32 in tests) reused across chunks:
//!   S = hs·Wsᵀ, T = ht·Wtᵀ                      (cuBLAS, fp32 accumulation)
//!   S ← scale·∂D/∂(student logits), row losses  (the fused divergence kernel, in place over S)
//!   d_hs[chunk] = S·Ws
//!   d_Ws += Sᵀ·hs[chunk]                        (fp32 accumulator, beta = 1)
//! Extra device memory is 2·c·V·2 bytes plus N floats of row losses, against the unfused path's
//! two full (N, V) logit tensors and the divergence's (N, V) fp32 intermediates. Only the first
//! `vocab` rows of each head are used: embedding-padding rows (e.g. 151936 of 152064) are ignored
//! and their d_Ws rows are left untouched.

use super::device::{cuda_err, CudaDevice};
use super::divergence::{divergence_fwd_bwd, DivElem, DivergenceLaunch, KernelPath, StudentGrad};
use super::divergence_unfused::divergence_unfused_fwd_bwd;
use super::matmul::{gemm, Gemm, GemmElem};
use crate::backend::Divergence;
use crate::error::{shape_err, Result};
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, DeviceRepr, ValidAsZeroBits};

/// An element type of the fused head: f32 (tests at tight tolerances) or bf16 (training).
pub trait HeadElem: DivElem + GemmElem + ValidAsZeroBits + DeviceRepr {}
impl<T: DivElem + GemmElem + ValidAsZeroBits + DeviceRepr> HeadElem for T {}

/// Default scratch budget for the two logit chunks.
pub const DEFAULT_CHUNK_BYTES: usize = 256 << 20;

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

#[derive(Clone, Copy, Debug)]
pub struct LinearDivergenceOut {
    /// Σ over unmasked rows of scale·D_r.
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

/// What one call computes; `Matmuls` is the same sequence without the divergence kernel (its
/// time is the yardstick the fused path is judged against).
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
        if self.chunk_rows > 0 {
            return self.chunk_rows.min(self.rows.max(1));
        }
        let per_row = 2 * self.vocab * elem;
        let c = (DEFAULT_CHUNK_BYTES / per_row.max(1)) / 64 * 64;
        c.clamp(64, self.rows.max(64)).min(self.rows.max(1))
    }

    /// `grads`: the lengths of d(student hidden) and d(student head), when they are computed.
    fn check<T>(&self, x: &LinearDivergenceInputs<'_, T>, grads: Option<(usize, usize)>) -> Result<()> {
        const OP: &str = "linear + divergence (cuda)";
        let (n, hs, ht, v) = (self.rows, self.student_dim, self.teacher_dim, self.vocab);
        let bad = |what: &str, len: usize, need: usize| {
            shape_err::<()>(OP, format!("{what} has {len} elements, needs at least {need}"))
        };
        if x.student_hidden.len() < n * hs {
            return bad("student hidden", x.student_hidden.len(), n * hs);
        }
        if x.teacher_hidden.len() < n * ht {
            return bad("teacher hidden", x.teacher_hidden.len(), n * ht);
        }
        if x.student_head.len() < v * hs {
            return bad("student head", x.student_head.len(), v * hs);
        }
        if x.teacher_head.len() < v * ht {
            return bad("teacher head", x.teacher_head.len(), v * ht);
        }
        if let Some((d_hidden, d_head)) = grads {
            if d_hidden < n * hs {
                return bad("d(student hidden)", d_hidden, n * hs);
            }
            if d_head < v * hs {
                return bad("d(student head)", d_head, v * hs);
            }
        }
        if let Some(m) = x.row_mask {
            if m.len() < n {
                return bad("row mask", m.len(), n);
            }
        }
        Ok(())
    }

    /// Loss, d(student hidden) (written) and d(student head) (accumulated into, fp32).
    pub fn run<T: HeadElem>(
        &self,
        dev: &CudaDevice,
        x: &LinearDivergenceInputs<'_, T>,
        d_hidden: &mut CudaViewMut<T>,
        d_head: &mut CudaViewMut<f32>,
    ) -> Result<LinearDivergenceOut> {
        self.summed(dev, x, (d_hidden, d_head), Work::Fused)
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
        let work = if grads.is_some() { Work::Fused } else { Work::LossOnly };
        Ok(self.execute(dev, x, grads, work)?.0)
    }

    /// The same matrix products, chunking and buffers as `run`, without the divergence kernel.
    pub fn run_matmuls_only<T: HeadElem>(
        &self,
        dev: &CudaDevice,
        x: &LinearDivergenceInputs<'_, T>,
        d_hidden: &mut CudaViewMut<T>,
        d_head: &mut CudaViewMut<f32>,
    ) -> Result<LinearDivergenceOut> {
        self.summed(dev, x, (d_hidden, d_head), Work::Matmuls)
    }

    /// `execute` with the row losses summed on the host.
    fn summed<T: HeadElem>(
        &self,
        dev: &CudaDevice,
        x: &LinearDivergenceInputs<'_, T>,
        grads: (&mut CudaViewMut<T>, &mut CudaViewMut<f32>),
        work: Work,
    ) -> Result<LinearDivergenceOut> {
        let (row_loss, chunk_rows, scratch_bytes) = self.execute(dev, x, Some(grads), work)?;
        let losses = dev.stream().clone_dtoh(&row_loss).map_err(cuda_err("linear + divergence (cuda)"))?;
        let loss = losses[..self.rows].iter().map(|&l| l as f64).sum();
        Ok(LinearDivergenceOut { loss, chunk_rows, scratch_bytes })
    }

    /// (row losses, rows per chunk, scratch bytes). `grads` must be given unless `work` is
    /// `LossOnly`.
    fn execute<T: HeadElem>(
        &self,
        dev: &CudaDevice,
        x: &LinearDivergenceInputs<'_, T>,
        mut grads: Option<(&mut CudaViewMut<T>, &mut CudaViewMut<f32>)>,
        work: Work,
    ) -> Result<(CudaSlice<f32>, usize, usize)> {
        const OP: &str = "linear + divergence (cuda)";
        self.check(x, grads.as_ref().map(|(h, w)| (h.len(), w.len())))?;
        let (n, hs, ht, v) = (self.rows, self.student_dim, self.teacher_dim, self.vocab);
        let elem = std::mem::size_of::<T>();
        let chunk = self.resolved_chunk(elem);
        // SAFETY: every chunk's products overwrite S and T (beta = 0) before anything reads them.
        let (mut s, mut t): (CudaSlice<T>, CudaSlice<T>) =
            unsafe { (dev.alloc_of(chunk * v, OP)?, dev.alloc_of(chunk * v, OP)?) };
        let mut row_loss: CudaSlice<f32> = dev.zeros_of(n, OP)?;
        let scratch_bytes = 2 * chunk * v * elem + n.max(1) * 4;
        let mut r0 = 0;
        while r0 < n {
            let c = chunk.min(n - r0);
            let hs_c = x.student_hidden.slice(r0 * hs..(r0 + c) * hs);
            let ht_c = x.teacher_hidden.slice(r0 * ht..(r0 + c) * ht);
            // Logits: (c, V) = (c, H)·(V, H)ᵀ.
            gemm(
                dev,
                &Gemm::dense(c, v, hs, false, true),
                &hs_c,
                &x.student_head.slice(..v * hs),
                &mut s.slice_mut(..c * v),
            )?;
            gemm(
                dev,
                &Gemm::dense(c, v, ht, false, true),
                &ht_c,
                &x.teacher_head.slice(..v * ht),
                &mut t.slice_mut(..c * v),
            )?;
            if work != Work::Matmuls {
                let launch = DivergenceLaunch {
                    rows: c,
                    vocab: v,
                    ld: v,
                    divergence: self.divergence,
                    temperature: self.temperature,
                    scale: self.scale,
                    path: self.path,
                };
                let mask = x.row_mask.map(|m| m.slice(r0..r0 + c));
                let student = match work {
                    Work::LossOnly => StudentGrad::LossOnly(s.slice(..c * v)),
                    _ => StudentGrad::InPlace(s.slice_mut(..c * v)),
                };
                divergence_fwd_bwd(
                    dev,
                    &launch,
                    student,
                    &t.slice(..c * v),
                    mask.as_ref(),
                    &mut row_loss.slice_mut(r0..r0 + c),
                )?;
            }
            let Some((d_hidden, d_head)) = grads.as_mut().filter(|_| work != Work::LossOnly) else {
                r0 += c;
                continue;
            };
            // d_hs[chunk] (c, Hs) = G (c, V) · Ws (V, Hs).
            gemm(
                dev,
                &Gemm::dense(c, hs, v, false, false),
                &s.slice(..c * v),
                &x.student_head.slice(..v * hs),
                &mut d_hidden.slice_mut(r0 * hs..(r0 + c) * hs),
            )?;
            // d_Ws (V, Hs) += Gᵀ (V, c) · hs[chunk] (c, Hs); G is stored (c, V).
            let g = Gemm { beta: 1.0, ..Gemm::dense(v, hs, c, true, false) };
            gemm(dev, &g, &s.slice(..c * v), &hs_c, &mut d_head.slice_mut(..v * hs))?;
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
) -> Result<LinearDivergenceOut> {
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
    Ok(LinearDivergenceOut {
        loss: losses[..n].iter().map(|&l| l as f64).sum(),
        chunk_rows: n,
        scratch_bytes: 3 * n * v * elem + n.max(1) * 4 + fp32_buffers * n * v * 4,
    })
}

/// (rows·V) fp32 buffers the unfused divergence allocates (see divergence_unfused.rs).
fn divergence_scratch_floats(d: Divergence) -> usize {
    match d.canonical() {
        Divergence::Jsd { .. } | Divergence::SkewForwardKl { .. } | Divergence::SkewReverseKl { .. } => 5,
        _ => 4,
    }
}
