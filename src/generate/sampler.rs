//! How the next token is drawn: greedy, or softmax(logits / T) restricted to the top-k tokens and
//! then to the top-p nucleus. The draw itself is the backend's `sample` op (`kernels/sampling.cu`
//! on CUDA, `backend/cpu/sampling.rs` on the CPU), which documents the exact rule: top-k keeps
//! every token whose logit is at least the k-th largest, top-p every token whose logit is at least
//! the largest value v such that the tokens at or above v hold p of the mass (ties at either
//! boundary stay), and the token is the Gumbel-max of the kept logits with Philox noise keyed by
//! (seed, sequence, position).

use crate::backend::ops::SampleSpec;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampler {
    /// 0 means greedy (argmax, lowest id on ties).
    pub temperature: f64,
    /// 0 means no top-k restriction.
    pub top_k: usize,
    /// 1 means no nucleus restriction.
    pub top_p: f64,
}

impl Default for Sampler {
    fn default() -> Sampler {
        Sampler { temperature: 1.0, top_k: 0, top_p: 1.0 }
    }
}

impl Sampler {
    pub fn greedy() -> Sampler {
        Sampler { temperature: 0.0, ..Sampler::default() }
    }

    /// A sentence for settings that cannot sample.
    pub fn validate(&self) -> Result<(), String> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(format!("temperature must be ≥ 0 (0 is greedy), got {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top-p must be in (0, 1], got {}", self.top_p));
        }
        Ok(())
    }

    /// The sampling op's description for a vocabulary and a run's seed.
    pub fn spec(&self, vocab: usize, seed: u64) -> SampleSpec {
        SampleSpec { vocab, temperature: self.temperature, top_k: self.top_k, top_p: self.top_p, seed }
    }
}
