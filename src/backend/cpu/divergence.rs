//! The divergences of generalized knowledge distillation between the teacher's and the student's
//! next-token distributions: per row, the loss and its gradient with respect to the student
//! logits, in one pass. The CPU reference of `kernels/divergence.cu`; the divergences themselves
//! are described in `backend/divergence.rs`.
//!
//! One row: student logits s, teacher logits t (V entries), loss temperature τ; a = s/τ, b = t/τ,
//! Q = softmax(a), P = softmax(b), log Q = a − lse(a), log P = b − lse(b).
//!
//! ```text
//! divergence   D                                            g_j = ∂D/∂Q_j
//! forward KL   Σ P (log P − log Q)                          −P_j/Q_j
//! reverse KL   Σ Q (log Q − log P)                          log Q_j − log P_j + 1
//! JSD(β)       β KL(P‖M) + (1−β) KL(Q‖M), M = βP + (1−β)Q   (1−β)(log Q_j − log M_j)
//! TVD          ½ Σ |P − Q|                                  ½ sign(Q_j − P_j), sign(0) = 0
//! skew FKL(α)  KL(P‖M), M = αP + (1−α)Q                     −(1−α) P_j/M_j
//! skew RKL(α)  KL(Q‖M), M = αQ + (1−α)P                     log(Q_j/M_j) + 1 − α Q_j/M_j
//! ```
//! (JSD: ∂/∂Q_j of β Σ P log(P/M) is −β(1−β)P_j/M_j, and of (1−β) Σ Q log(Q/M) it is
//! (1−β)(log(Q_j/M_j) + 1 − (1−β)Q_j/M_j); as βP_j + (1−β)Q_j = M_j, all but (1−β) log(Q_j/M_j)
//! cancels.) Through the softmax ∂Q_j/∂a_k = Q_j([j = k] − Q_k), so with c = Σ_j Q_j g_j
//! ∂D/∂a_k = Q_k (g_k − c) and ∂D/∂s_k = (1/τ) ∂D/∂a_k, which gives, per divergence:
//! ```text
//! FKL       c = −1                 → Q_k − P_k
//! RKL       c = D + 1              → Q_k (log Q_k − log P_k − D)
//! JSD       c = (1−β) KL(Q‖M)      → (1−β) Q_k (log Q_k − log M_k − KL(Q‖M))
//! TVD       c = ½ Σ Q sign(Q − P)  → ½ Q_k (sign(Q_k − P_k) − Σ_j Q_j sign(Q_j − P_j))
//! skew FKL  c = −(1−α) Σ P·Q/M     → (1−α) (Q_k Σ_j P_j Q_j/M_j − P_k Q_k/M_k)
//! skew RKL  c = D + 1 − α Σ Q²/M   → Q_k (log(Q_k/M_k) − α Q_k/M_k − D + α Σ_j Q_j²/M_j)
//! ```
//! TRL's convention: JSD(β = 0) is exactly forward KL and JSD(β = 1) reverse KL (the formula
//! itself vanishes there); skew KL with α = 0 is the plain KL. Those cases run as FKL / RKL.
//!
//! −inf logits (masked vocabulary entries) have probability 0 and 0·log 0 = 0: every P·(…) or
//! Q·(…) term is skipped where that probability is 0, and log M is a log-sum-exp, finite whenever
//! P or Q is not 0. A row whose student or teacher logits are all −inf has no distribution: its
//! loss and gradient are 0, as for a masked row.

use super::softmax::log_softmax;
use super::Real;
use crate::backend::Divergence;
use crate::error::{shape_err, Error, Result};
use rayon::prelude::*;

pub struct DivergenceOut<T> {
    /// scale · Σ over unmasked rows of D_r.
    pub loss: f64,
    /// (N) scale · D_r; 0 on masked rows.
    pub row_loss: Vec<f64>,
    /// (N, V) scale · ∂D_r/∂(student logits), 1/τ included; 0 on masked rows; empty unless asked.
    pub grad: Vec<T>,
}

/// Loss and gradient of `div` for every row of (N, V) student and teacher logits.
#[allow(clippy::too_many_arguments)]
pub fn divergence_fwd_bwd<T: Real>(
    div: Divergence,
    temperature: f64,
    student: &[T],             // (N, V)
    teacher: &[T],             // (N, V)
    vocab: usize,              // V
    row_mask: Option<&[bool]>, // (N); false = row ignored
    scale: f64,
    want_grad: bool,
) -> Result<DivergenceOut<T>> {
    const OP: &str = "divergence (cpu)";
    let div = div.validate()?.canonical();
    if !(temperature > 0.0 && temperature.is_finite()) {
        return Err(Error::Msg(format!("{OP}: the temperature must be positive, got {temperature}")));
    }
    if vocab == 0 || student.len() % vocab != 0 || teacher.len() != student.len() {
        return shape_err(
            OP,
            format!("student {} and teacher {} values for vocabulary {vocab}", student.len(), teacher.len()),
        );
    }
    let rows = student.len() / vocab;
    if let Some(m) = row_mask {
        if m.len() != rows {
            return shape_err(OP, format!("row mask of {} for {rows} rows", m.len()));
        }
    }
    let inv_t = T::from_f64(1.0 / temperature);
    let mut grad = if want_grad { vec![T::zero(); student.len()] } else { Vec::new() };
    let mut grad_rows: Vec<Option<&mut [T]>> = if want_grad {
        grad.chunks_mut(vocab).map(Some).collect()
    } else {
        (0..rows).map(|_| None).collect()
    };
    let row_loss: Vec<f64> = grad_rows
        .par_iter_mut()
        .enumerate()
        .map(|(r, g)| {
            if row_mask.is_some_and(|m| !m[r]) {
                return 0.0;
            }
            let span = r * vocab..(r + 1) * vocab;
            let d = row(div, inv_t, &student[span.clone()], &teacher[span], g.as_deref_mut());
            if let Some(g) = g {
                let gs = T::from_f64(scale) * inv_t;
                g.iter_mut().for_each(|x| *x = *x * gs);
            }
            scale * d.to_f64()
        })
        .collect();
    Ok(DivergenceOut { loss: row_loss.iter().sum(), row_loss, grad })
}

/// log(e^x + e^y).
fn log_add_exp<T: Real>(x: T, y: T) -> T {
    let m = x.max(y);
    if m == T::neg_infinity() {
        return m;
    }
    m + ((x - m).exp() + (y - m).exp()).ln()
}

/// p·(x − y), 0 where p is 0 (0·log 0 = 0).
fn xlog<T: Real>(p: T, x: T, y: T) -> T {
    if p > T::zero() {
        p * (x - y)
    } else {
        T::zero()
    }
}

fn sign<T: Real>(x: T) -> T {
    if x > T::zero() {
        T::one()
    } else if x < T::zero() {
        -T::one()
    } else {
        T::zero()
    }
}

/// D for one row of a canonical divergence; writes ∂D/∂a (before the 1/τ and scale) into `grad`.
fn row<T: Real>(div: Divergence, inv_t: T, s: &[T], t: &[T], grad: Option<&mut [T]>) -> T {
    let (Some(lq), Some(lp)) = (log_softmax(s, inv_t), log_softmax(t, inv_t)) else {
        return T::zero(); // a row without a distribution: gradient left at 0
    };
    let q: Vec<T> = lq.iter().map(|x| x.exp()).collect();
    let p: Vec<T> = lp.iter().map(|x| x.exp()).collect();
    let v = s.len();
    // Row sums accumulate in f64: over a large vocabulary an f32 running sum would drift by more
    // than the cancellations in the gradients below can absorb.
    let sum = |f: &dyn Fn(usize) -> T| T::from_f64((0..v).map(|j| f(j).to_f64()).sum::<f64>());
    // log M = log(w_p P + w_q Q), as a log-sum-exp.
    let log_mix =
        |wp: T, wq: T| -> Vec<T> { (0..v).map(|j| log_add_exp(wp.ln() + lp[j], wq.ln() + lq[j])).collect() };
    let one = T::one();
    let (d, g): (T, Box<dyn Fn(usize) -> T + '_>) = match div {
        Divergence::ForwardKl => (sum(&|j| xlog(p[j], lp[j], lq[j])), Box::new(|j| q[j] - p[j])),
        Divergence::ReverseKl => {
            let d = sum(&|j| xlog(q[j], lq[j], lp[j]));
            (d, Box::new(move |j| if q[j] > T::zero() { q[j] * (lq[j] - lp[j] - d) } else { T::zero() }))
        }
        Divergence::Jsd { beta } => {
            let b = T::from_f64(beta);
            let lm = log_mix(b, one - b);
            let kl_pm = sum(&|j| xlog(p[j], lp[j], lm[j]));
            let kl_qm = sum(&|j| xlog(q[j], lq[j], lm[j]));
            let d = b * kl_pm + (one - b) * kl_qm;
            (d, Box::new(move |j| (one - b) * xlog(q[j], lq[j], lm[j] + kl_qm)))
        }
        Divergence::Tvd => {
            let half = T::from_f64(0.5);
            let d = half * sum(&|j| (p[j] - q[j]).abs());
            let c = sum(&|j| q[j] * sign(q[j] - p[j]));
            (d, Box::new(move |j| half * q[j] * (sign(q[j] - p[j]) - c)))
        }
        Divergence::SkewForwardKl { alpha } => {
            let a = T::from_f64(alpha);
            let lm = log_mix(a, one - a);
            // r = Q/M, finite because M ≥ (1−α)Q.
            let r: Vec<T> =
                (0..v).map(|j| if q[j] > T::zero() { (lq[j] - lm[j]).exp() } else { T::zero() }).collect();
            let d = sum(&|j| xlog(p[j], lp[j], lm[j]));
            let pr = sum(&|j| p[j] * r[j]);
            (d, Box::new(move |j| (one - a) * (q[j] * pr - p[j] * r[j])))
        }
        Divergence::SkewReverseKl { alpha } => {
            let a = T::from_f64(alpha);
            let lm = log_mix(one - a, a);
            let r: Vec<T> =
                (0..v).map(|j| if q[j] > T::zero() { (lq[j] - lm[j]).exp() } else { T::zero() }).collect();
            let d = sum(&|j| xlog(q[j], lq[j], lm[j]));
            let qr = sum(&|j| q[j] * r[j]);
            (d, Box::new(move |j| xlog(q[j], lq[j], lm[j] + a * r[j] + d - a * qr)))
        }
    };
    if let Some(out) = grad {
        out.iter_mut().enumerate().for_each(|(j, o)| *o = g(j));
    }
    d
}
