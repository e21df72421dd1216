//! The divergences of DESIGN.md written straight from the probabilities, in f64: the reference
//! the kernels and the trainer are checked against.

use gkd::backend::Divergence;

/// softmax(x / tau).
pub fn softmax(x: &[f64], tau: f64) -> Vec<f64> {
    let m = x.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v / tau));
    let e: Vec<f64> = x.iter().map(|&v| (v / tau - m).exp()).collect();
    let z: f64 = e.iter().sum();
    e.iter().map(|v| v / z).collect()
}

/// KL(a‖b) = Σ a ln(a/b), with 0·ln 0 = 0.
pub fn kl(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).filter(|(x, _)| **x > 0.0).map(|(x, y)| x * (x / y).ln()).sum()
}

/// w·a + (1 − w)·b.
pub fn mix(w: f64, a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| w * x + (1.0 - w) * y).collect()
}

/// The definitions of DESIGN.md, straight from the probabilities.
pub fn naive(div: Divergence, tau: f64, s: &[f64], t: &[f64]) -> f64 {
    let (q, p) = (softmax(s, tau), softmax(t, tau));
    match div {
        Divergence::ForwardKl => kl(&p, &q),
        Divergence::ReverseKl => kl(&q, &p),
        Divergence::Jsd { beta: 0.0 } => kl(&p, &q),
        Divergence::Jsd { beta: 1.0 } => kl(&q, &p),
        Divergence::Jsd { beta } => {
            let m = mix(beta, &p, &q);
            beta * kl(&p, &m) + (1.0 - beta) * kl(&q, &m)
        }
        Divergence::Tvd => 0.5 * p.iter().zip(&q).map(|(a, b)| (a - b).abs()).sum::<f64>(),
        Divergence::SkewForwardKl { alpha } => kl(&p, &mix(alpha, &p, &q)),
        Divergence::SkewReverseKl { alpha } => kl(&q, &mix(alpha, &q, &p)),
    }
}
