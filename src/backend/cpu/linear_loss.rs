//! The output head fused with the per-row loss, in row chunks, so that no (tokens × vocab) buffer
//! larger than a chunk exists (the CPU reference of `cuda/linear_divergence.rs`). Per chunk of c
//! rows, with W the first V rows of the head:
//!   Z = h_c·Wᵀ (c, V)                        the student's logits
//!   Zt = ht_c·Wtᵀ (c, V)                     the teacher's (divergence only)
//!   row losses and G = ∂loss/∂Z (c, V)       cross_entropy.rs or divergence.rs
//!   dh_c = G·W (c, H),  dW += Gᵀ·h_c (V, H)
//! Rows of the head past V (embedding padding) get no gradient.

use super::cross_entropy::cross_entropy_weighted_fwd_bwd;
use super::divergence::divergence_fwd_bwd;
use super::{matmul, MatmulSpec, Real};
use crate::backend::ops::{LinearLossSpec, LossKind};
use crate::error::Result;

/// Scratch the chunks may take: the logits of student and teacher and the gradient.
const CHUNK_BYTES: usize = 48 << 20;

pub enum Target<'a, T> {
    /// The next tokens (N), each row's loss and gradient times its weight (N) when given.
    Tokens {
        targets: &'a [u32],
        weights: Option<&'a [f32]>,
    },
    Teacher {
        hidden: &'a [T],
        head: &'a [T],
    }, // (N, Ht), (Vt, Ht)
}

pub struct LinearLossOut<T> {
    pub row_loss: Vec<T>,         // (N)
    pub d_hidden: Option<Vec<T>>, // (N, H)
    pub d_head: Option<Vec<T>>,   // (Vh, H)
}

/// Rows per chunk: `spec.chunk_rows`, or as many as fit the scratch budget.
pub fn chunk_rows(spec: &LinearLossSpec, elem: usize) -> usize {
    let rows = spec.loss.rows.max(1);
    if spec.chunk_rows > 0 {
        return spec.chunk_rows.min(rows);
    }
    (CHUNK_BYTES / (3 * spec.loss.vocab * elem).max(1)).clamp(1, rows)
}

pub fn linear_loss<T: Real>(
    hidden: &[T], // (N, H)
    head: &[T],   // (Vh, H)
    target: Target<'_, T>,
    spec: &LinearLossSpec,
) -> Result<LinearLossOut<T>> {
    let (n, h, v) = (spec.loss.rows, spec.hidden, spec.loss.vocab);
    let want = spec.loss.want_grad;
    let chunk = chunk_rows(spec, std::mem::size_of::<T>());
    let w = &head[..v * h];
    let mut row_loss = Vec::with_capacity(n);
    let mut d_hidden = if want { vec![T::zero(); n * h] } else { Vec::new() };
    let mut d_head = if want { vec![T::zero(); spec.head_rows * h] } else { Vec::new() };
    let mut z = vec![T::zero(); chunk * v];
    let mut zt = match target {
        Target::Teacher { .. } => vec![T::zero(); chunk * v],
        Target::Tokens { .. } => Vec::new(),
    };
    let mut r0 = 0;
    while r0 < n {
        let c = chunk.min(n - r0);
        let (z, h_c) = (&mut z[..c * v], &hidden[r0 * h..(r0 + c) * h]);
        matmul(MatmulSpec { m: c, k: h, n: v, trans_a: false, trans_b: true, accumulate: false }, h_c, w, z);
        let (losses, g) = match (&target, spec.loss.kind) {
            (Target::Tokens { targets, weights }, LossKind::CrossEntropy) => cross_entropy_weighted_fwd_bwd(
                z,
                &targets[r0..r0 + c],
                weights.map(|w| &w[r0..r0 + c]),
                v,
                spec.loss.scale,
                want,
            ),
            (Target::Teacher { hidden: th, head: tw }, LossKind::Divergence { divergence, temperature }) => {
                let ht = spec.teacher_hidden;
                let zt = &mut zt[..c * v];
                let spec_t =
                    MatmulSpec { m: c, k: ht, n: v, trans_a: false, trans_b: true, accumulate: false };
                matmul(spec_t, &th[r0 * ht..(r0 + c) * ht], &tw[..v * ht], zt);
                let o = divergence_fwd_bwd(divergence, temperature, z, zt, v, None, spec.loss.scale, want)?;
                (o.row_loss.into_iter().map(T::from_f64).collect(), o.grad)
            }
            _ => return Err(crate::error::Error::Msg(
                "linear_loss: cross-entropy takes token targets, a divergence the teacher's hidden states"
                    .into(),
            )),
        };
        row_loss.extend(losses);
        if want {
            let dh = &mut d_hidden[r0 * h..(r0 + c) * h];
            matmul(
                MatmulSpec { m: c, k: v, n: h, trans_a: false, trans_b: false, accumulate: false },
                &g,
                w,
                dh,
            );
            let dw = &mut d_head[..v * h];
            matmul(
                MatmulSpec { m: v, k: c, n: h, trans_a: true, trans_b: false, accumulate: true },
                &g,
                h_c,
                dw,
            );
        }
        r0 += c;
    }
    Ok(LinearLossOut { row_loss, d_hidden: want.then_some(d_hidden), d_head: want.then_some(d_head) })
}
