//! Sampling one token per row of logits, in f64: the function every backend's `sample` computes
//! (kernels/sampling.cu up to f32 rounding). z = a row's logits, T = the temperature.
//!
//!   lp_model = z_t − lse(z)                                        (the model's own ln p(t))
//!   T = 0:  t = argmax z (lowest id on ties), lp_sample = 0
//!   T > 0:  s_i = z_i / T, and the kept set K:
//!     top-k (0 < k < V): v_k = the k-th largest z counting duplicates; K = {z_i ≥ v_k}
//!     top-p (p < 1), on K: w_i = exp(s_i − max s), W = Σ_K w_i; v_p = the largest v among the
//!       z of K with Σ_{K, z_i ≥ v} w_i ≥ p·W; K ← {i ∈ K: z_i ≥ v_p} (ties at v_p stay, the
//!       most likely token always does)
//!     t = argmax_{i∈K} (s_i + G_i), lowest id on ties (Gumbel-max: t ~ softmax(s) on K)
//!     lp_sample = s_t − ln Σ_K exp(s_i)
//!   G_i = −ln(−ln u_i), u_i = ((x >> 8) + ½)·2⁻²⁴ ∈ (0, 1), x = word i mod 4 of
//!   Philox4x32-10(counter (i/4, pos, seq, 0), key (seed mod 2³², seed / 2³²)).
//!
//! A row's result depends only on its logits, its (seq, pos) and the spec, never on the batch.

use crate::backend::ops::SampleSpec;
use rayon::prelude::*;

/// Philox4x32-10 (Salmon et al., SC 2011; Random123's `philox4x32`): ten rounds of two 32×32→64
/// products, the key bumped by the Weyl constants between rounds.
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    const M0: u64 = 0xD251_1F53;
    const M1: u64 = 0xCD9E_8D57;
    let (mut c, mut k) = (counter, key);
    for round in 0..10 {
        if round > 0 {
            k = [k[0].wrapping_add(0x9E37_79B9), k[1].wrapping_add(0xBB67_AE85)];
        }
        let p0 = M0 * c[0] as u64;
        let p1 = M1 * c[2] as u64;
        c = [(p1 >> 32) as u32 ^ c[1] ^ k[0], p1 as u32, (p0 >> 32) as u32 ^ c[3] ^ k[1], p0 as u32];
    }
    c
}

/// The Gumbel noise G_i of token `i` of the row keyed (seed, seq, pos).
pub fn gumbel(seed: u64, seq: u32, pos: u32, i: usize) -> f64 {
    let x = philox4x32_10([(i / 4) as u32, pos, seq, 0], [seed as u32, (seed >> 32) as u32])[i % 4];
    gumbel_of_word(x)
}

/// −ln(−ln u) for u = ((x >> 8) + ½)·2⁻²⁴ (exact in f64). −ln u is taken as −ln_1p(−(1 − u))
/// above ½, where 1 − u is exact and ln u alone would lose its digits.
pub fn gumbel_of_word(x: u32) -> f64 {
    let m = (x >> 8) as f64;
    let e = if m < (1u32 << 23) as f64 {
        -((m + 0.5) * 2f64.powi(-24)).ln()
    } else {
        -(-((16_777_216.0 - m - 0.5) * 2f64.powi(-24))).ln_1p()
    };
    -e.ln()
}

/// One row's draw, in f64.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RowDraw {
    pub token: u32,
    /// ln q(token) under the sampling distribution (0 when greedy).
    pub lp_sample: f64,
    /// ln softmax(z)[token].
    pub lp_model: f64,
}

/// The smallest logit that stays after top-k and top-p: K = {i : z_i ≥ it} (−∞ when nothing is
/// filtered). Meaningless for greedy specs (the argmax needs no kept set).
pub fn kept_threshold(z: &[f64], spec: &SampleSpec) -> f64 {
    let filter_k = spec.top_k > 0 && spec.top_k < z.len();
    let filter_p = spec.top_p < 1.0;
    if !(filter_k || filter_p) || z.is_empty() {
        return f64::NEG_INFINITY;
    }
    let mut sorted = z.to_vec();
    sorted.sort_unstable_by(|a, b| b.total_cmp(a));
    let mut threshold = f64::NEG_INFINITY;
    if filter_k {
        threshold = sorted[spec.top_k - 1];
    }
    if filter_p {
        let kept = sorted.iter().take_while(|&&v| v >= threshold).count();
        let m = sorted[0];
        let w: Vec<f64> = sorted[..kept].iter().map(|&v| ((v - m) / spec.temperature).exp()).collect();
        let target = spec.top_p * w.iter().sum::<f64>();
        let mut mass = 0.0;
        let mut i = 0;
        while i < kept {
            // Tokens tied at one value enter together.
            let v = sorted[i];
            while i < kept && sorted[i] == v {
                mass += w[i];
                i += 1;
            }
            if mass >= target {
                threshold = v;
                break;
            }
        }
    }
    threshold
}

/// ln Σ exp(x_i − m) over the given values (m their largest, passed in).
fn ln_sum_exp_from(values: impl Iterator<Item = f64>, m: f64) -> f64 {
    values.map(|v| (v - m).exp()).sum::<f64>().ln()
}

/// The draw of one row of logits z (V ≥ 1) keyed (spec.seed, seq, pos).
pub fn draw_row(z: &[f64], seq: u32, pos: u32, spec: &SampleSpec) -> RowDraw {
    let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let lse = m + ln_sum_exp_from(z.iter().copied(), m);
    if spec.temperature == 0.0 {
        let t = argmax(z);
        return RowDraw { token: t as u32, lp_sample: 0.0, lp_model: z[t] - lse };
    }
    let temp = spec.temperature;
    let threshold = kept_threshold(z, spec);
    let mut best = (f64::NEG_INFINITY, usize::MAX);
    for (i, &v) in z.iter().enumerate() {
        if v >= threshold {
            let score = v / temp + gumbel(spec.seed, seq, pos, i);
            if best.1 == usize::MAX || score > best.0 {
                best = (score, i);
            }
        }
    }
    let t = if best.1 == usize::MAX { argmax(z) } else { best.1 };
    let kept = z.iter().filter(|&&v| v >= threshold).map(|&v| v / temp);
    let lp_sample = (z[t] - m) / temp - ln_sum_exp_from(kept, m / temp);
    RowDraw { token: t as u32, lp_sample, lp_model: z[t] - lse }
}

/// The lowest index of the largest value (torch.argmax).
pub fn argmax(z: &[f64]) -> usize {
    let mut best = 0;
    for (i, &v) in z.iter().enumerate() {
        if v > z[best] {
            best = i;
        }
    }
    best
}

/// Every row of `logits` (N, V): (tokens (N), logprobs (N, 2) f32 as [lp_sample, lp_model]).
/// The caller has checked the lengths (`check::sample`).
pub fn sample_rows(
    logits: &[f64], // (N, V)
    seq: &[u32],    // (N)
    pos: &[u32],    // (N)
    spec: &SampleSpec,
) -> (Vec<u32>, Vec<f32>) {
    let draws: Vec<RowDraw> = logits
        .par_chunks(spec.vocab)
        .zip(seq.par_iter().zip(pos.par_iter()))
        .map(|(z, (&s, &p))| draw_row(z, s, p, spec))
        .collect();
    let tokens = draws.iter().map(|d| d.token).collect();
    let logprobs = draws.iter().flat_map(|d| [d.lp_sample as f32, d.lp_model as f32]).collect();
    (tokens, logprobs)
}
