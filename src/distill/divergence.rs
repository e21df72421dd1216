//! The divergences of generalized knowledge distillation between the teacher's and the student's
//! next-token distributions: per row, the loss and its gradient with respect to the student
//! logits, in one pass. The CPU reference of `kernels/divergence.cu`.
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

use crate::backend::cpu::Real;
use crate::error::{shape_err, Error, Result};
use rayon::prelude::*;
use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Divergence {
    ForwardKl,
    ReverseKl,
    Jsd { beta: f64 },
    Tvd,
    SkewForwardKl { alpha: f64 },
    SkewReverseKl { alpha: f64 },
}

/// The command-line names, in the order of the enum.
pub const DIVERGENCE_NAMES: [&str; 6] = ["fkl", "rkl", "jsd", "tvd", "skew-fkl", "skew-rkl"];

/// β of `jsd` and α of the skew divergences when the name carries no value (TRL's GKD default
/// β = 0.5; DistiLLM's α = 0.1).
pub const DEFAULT_BETA: f64 = 0.5;
pub const DEFAULT_ALPHA: f64 = 0.1;

impl Divergence {
    /// From a command-line name (`fkl|rkl|jsd|tvd|skew-fkl|skew-rkl`); `beta` is used by `jsd`,
    /// `alpha` by the skew divergences, each ignored otherwise.
    pub fn from_cli(name: &str, beta: f64, alpha: f64) -> Result<Divergence> {
        let d = match name {
            "fkl" => Divergence::ForwardKl,
            "rkl" => Divergence::ReverseKl,
            "jsd" => Divergence::Jsd { beta },
            "tvd" => Divergence::Tvd,
            "skew-fkl" => Divergence::SkewForwardKl { alpha },
            "skew-rkl" => Divergence::SkewReverseKl { alpha },
            _ => {
                return Err(Error::Msg(format!(
                    "unknown divergence `{name}`: use one of {}",
                    DIVERGENCE_NAMES.join(", ")
                )))
            }
        };
        d.validate()
    }

    /// The divergence itself when its parameter is in range: 0 ≤ β ≤ 1, 0 ≤ α < 1.
    pub fn validate(self) -> Result<Divergence> {
        match self {
            Divergence::Jsd { beta } if !(0.0..=1.0).contains(&beta) => Err(Error::Msg(format!(
                "jsd: beta must be in [0, 1] (0 = forward KL, 1 = reverse KL), got {beta}"
            ))),
            Divergence::SkewForwardKl { alpha } | Divergence::SkewReverseKl { alpha }
                if !(0.0..1.0).contains(&alpha) =>
            {
                Err(Error::Msg(format!(
                    "{}: alpha must be in [0, 1) (α = 1 makes the divergence 0), got {alpha}",
                    self.name()
                )))
            }
            d => Ok(d),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Divergence::ForwardKl => "fkl",
            Divergence::ReverseKl => "rkl",
            Divergence::Jsd { .. } => "jsd",
            Divergence::Tvd => "tvd",
            Divergence::SkewForwardKl { .. } => "skew-fkl",
            Divergence::SkewReverseKl { .. } => "skew-rkl",
        }
    }

    /// The formula that is computed: JSD(0) → forward KL, JSD(1) → reverse KL, skew KL with
    /// α = 0 → the plain KL; anything else unchanged.
    pub fn canonical(self) -> Divergence {
        match self {
            Divergence::Jsd { beta: 0.0 } => Divergence::ForwardKl,
            Divergence::Jsd { beta: 1.0 } => Divergence::ReverseKl,
            Divergence::SkewForwardKl { alpha: 0.0 } => Divergence::ForwardKl,
            Divergence::SkewReverseKl { alpha: 0.0 } => Divergence::ReverseKl,
            d => d,
        }
    }
}

/// `fkl`, `rkl`, `tvd`, `jsd` (β = 0.5), `jsd:0.9`, `skew-fkl` (α = 0.1), `skew-rkl:0.2`.
impl FromStr for Divergence {
    type Err = Error;
    fn from_str(s: &str) -> Result<Divergence> {
        let (name, value) = match s.split_once(':') {
            Some((n, v)) => {
                let x = v
                    .trim()
                    .parse::<f64>()
                    .map_err(|_| Error::Msg(format!("divergence `{s}`: `{v}` is not a number")))?;
                if !matches!(n, "jsd" | "skew-fkl" | "skew-rkl") {
                    return Err(Error::Msg(format!(
                        "divergence `{s}`: only jsd, skew-fkl and skew-rkl take a parameter"
                    )));
                }
                (n, Some(x))
            }
            None => (s, None),
        };
        Divergence::from_cli(name, value.unwrap_or(DEFAULT_BETA), value.unwrap_or(DEFAULT_ALPHA))
    }
}

impl fmt::Display for Divergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Divergence::Jsd { beta: x }
            | Divergence::SkewForwardKl { alpha: x }
            | Divergence::SkewReverseKl { alpha: x } => write!(f, "{}:{x}", self.name()),
            d => f.write_str(d.name()),
        }
    }
}

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

/// Log-probabilities of softmax(x·inv_t); None when every entry is −inf.
fn log_softmax<T: Real>(x: &[T], inv_t: T) -> Option<Vec<T>> {
    let m = x.iter().fold(T::neg_infinity(), |m, &v| m.max(v * inv_t));
    if m == T::neg_infinity() {
        return None;
    }
    let lse = m + x.iter().map(|&v| (v * inv_t - m).exp()).sum::<T>().ln();
    Some(x.iter().map(|&v| v * inv_t - lse).collect())
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
    let sum = |f: &dyn Fn(usize) -> T| (0..v).map(f).sum::<T>();
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
