//! Batched generation with a key/value cache pre-allocated on the model's device.
//!
//! All prompts are prefilled in one step (each its own length), then every unfinished sequence
//! advances one token per step; the logits of the step's last tokens come to the host, where the
//! sampler draws. A sequence stops at a stop token (kept in its output) or after
//! `max_new_tokens`. Sequence i draws from its own generator seeded from (seed, i), so a sample
//! does not depend on what else is in the batch.
//!
//! Beside each token, its log-probability under the model itself: ln softmax(logits)[token], at
//! temperature 1 and without top-k/top-p, as `gkd score` reports it (the cross-entropy op of the
//! model's backend, on the step's logits).

mod sampler;

pub use sampler::{argmax, Sampler};

use crate::autograd::{Tape, Var};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::tensor::Tensor;
use rand::rngs::StdRng;
use rand::SeedableRng;

#[derive(Clone, Debug)]
pub struct GenerateConfig {
    pub max_new_tokens: usize,
    pub sampler: Sampler,
    pub seed: u64,
    /// Generation of a sequence ends after any of these (usually the tokenizer's EOS ids).
    pub stop_tokens: Vec<u32>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    /// The new tokens, the stop token included when one ended the sequence.
    pub ids: Vec<u32>,
    /// ln p(ids[i] | prompt, ids[..i]) under the model, (len ids).
    pub logprobs: Vec<f64>,
    /// Ended by a stop token (rather than by `max_new_tokens`).
    pub stopped: bool,
}

/// The generator of sequence `index` for a run seeded with `seed` (splitmix64 of both).
pub fn sequence_rng(seed: u64, index: usize) -> StdRng {
    let mut z = seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    StdRng::seed_from_u64(z ^ (z >> 31))
}

/// Continues every prompt; one `Completion` per prompt, in order.
pub fn generate(model: &Model, prompts: &[Vec<u32>], cfg: &GenerateConfig) -> Result<Vec<Completion>> {
    cfg.sampler.validate().map_err(Error::Msg)?;
    if let Some(i) = prompts.iter().position(Vec::is_empty) {
        return Err(Error::Msg(format!("prompt {i} is empty: generation needs at least one prompt token")));
    }
    let mut out: Vec<Completion> =
        prompts.iter().map(|_| Completion { ids: vec![], logprobs: vec![], stopped: false }).collect();
    if cfg.max_new_tokens == 0 || prompts.is_empty() {
        return Ok(out);
    }
    // The last sampled token is never fed back, so a sequence needs prompt + max_new − 1 positions.
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0) + cfg.max_new_tokens - 1;
    model.config.check_length(longest)?;
    let vocab = model.config.vocab_size;
    let mut rngs: Vec<StdRng> = (0..prompts.len()).map(|i| sequence_rng(cfg.seed, i)).collect();
    let mut cache = model.new_cache(prompts.len(), longest)?;
    let mut active: Vec<usize> = (0..prompts.len()).collect();
    let mut feed: Vec<Vec<u32>> = prompts.to_vec();
    while !active.is_empty() {
        let chunks: Vec<(usize, &[u32])> = active.iter().map(|&s| (s, feed[s].as_slice())).collect();
        let logits = model.next_token_logits(&mut cache, &chunks)?;
        let host = logits.to_vec_f32()?;
        let tokens: Vec<u32> = active
            .iter()
            .enumerate()
            .map(|(row, &s)| cfg.sampler.sample(&host[row * vocab..(row + 1) * vocab], &mut rngs[s]))
            .collect();
        let logprobs = token_logprobs(&logits, &tokens)?;
        let mut still = Vec::with_capacity(active.len());
        for ((&s, &tok), lp) in active.iter().zip(&tokens).zip(logprobs) {
            let c = &mut out[s];
            c.ids.push(tok);
            c.logprobs.push(lp);
            c.stopped = cfg.stop_tokens.contains(&tok);
            if !(c.stopped || c.ids.len() == cfg.max_new_tokens) {
                feed[s] = vec![tok];
                still.push(s);
            }
        }
        active = still;
    }
    Ok(out)
}

/// ln softmax(logits_r)[tokens_r] of each row of (rows, V) logits.
fn token_logprobs(logits: &Tensor, tokens: &[u32]) -> Result<Vec<f64>> {
    let targets = Tensor::from_u32(tokens, logits.device())?;
    let (_, rows) = Tape::no_grad().cross_entropy(&Var::constant(logits.clone()), &targets, 1.0)?;
    Ok(rows.to_vec_f64()?.into_iter().map(|nll| -nll).collect())
}
