//! Batched generation with a key/value cache on the model's device, continuous batching, and the
//! whole decode loop on the device.
//!
//! `batch_size` slots decode at once (all prompts when 0). Prompts start in free slots with one
//! prefill; then every busy slot advances one token per step, the draw, the stop test and the
//! bookkeeping made on the device (`decoder.rs`), so the host only looks every `sync_every` steps:
//! it collects the slots that finished (a stop token, kept in the output, or `max_new_tokens`)
//! and gives each the next waiting prompt, without stopping the others. On CUDA each step is a
//! replayed CUDA graph.
//!
//! A token depends only on the seed, the prompt, its position and the model: not on the batch
//! size, on which prompts share the batch, on the order of the prompts or on the order slots free
//! up. (The sampler's sequence key is a hash of the prompt's tokens and of how many identical
//! prompts came before it, so copies of one prompt get different samples.) Beside each token,
//! its log-probability under the model itself (temperature 1, no top-k/top-p: what `gkd score`
//! gives) and under the sampling distribution.

mod decoder;
mod sampler;

pub use sampler::Sampler;

use crate::error::{Error, Result};
use crate::model::Model;
use crate::tensor::Device;
use decoder::Decoder;
use rand::rngs::StdRng;
use rand::SeedableRng;

#[derive(Clone, Debug)]
pub struct GenerateConfig {
    pub max_new_tokens: usize,
    pub sampler: Sampler,
    pub seed: u64,
    /// Generation of a sequence ends after any of these (usually the tokenizer's EOS ids).
    pub stop_tokens: Vec<u32>,
    /// Sequences decoded at once (the cache's slots); 0: every prompt at once.
    pub batch_size: usize,
    /// Decode steps between two looks of the host at the device's state (a look waits for the
    /// device). The CPU looks after every step.
    pub sync_every: usize,
    /// Replay the decode step as a CUDA graph (CUDA only).
    pub cuda_graphs: bool,
}

impl GenerateConfig {
    /// Every prompt at once, a look every 8 steps, CUDA graphs on.
    pub fn new(max_new_tokens: usize, sampler: Sampler, seed: u64, stop_tokens: Vec<u32>) -> GenerateConfig {
        GenerateConfig {
            max_new_tokens,
            sampler,
            seed,
            stop_tokens,
            batch_size: 0,
            sync_every: 8,
            cuda_graphs: true,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    /// The new tokens, the stop token included when one ended the sequence.
    pub ids: Vec<u32>,
    /// ln p(ids[i] | prompt, ids[..i]) under the model, (len ids).
    pub logprobs: Vec<f64>,
    /// The same under the sampling distribution (temperature, top-k, top-p; 0 when greedy).
    pub sampler_logprobs: Vec<f64>,
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

/// The sampler's sequence key of each prompt: a hash of its tokens and of its occurrence among
/// identical prompts (the first copy 0, the next 1, ...).
pub fn sequence_keys(prompts: &[Vec<u32>]) -> Vec<u32> {
    let mut seen: std::collections::HashMap<&[u32], u64> = std::collections::HashMap::new();
    prompts
        .iter()
        .map(|p| {
            let occurrence = seen.entry(p.as_slice()).or_insert(0);
            // FNV-1a over the tokens, then splitmix64 with the occurrence.
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for &t in p {
                for b in t.to_le_bytes() {
                    h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
                }
            }
            let mut z = h.wrapping_add(occurrence.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            *occurrence += 1;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 32) as u32 ^ z as u32
        })
        .collect()
}

/// Continues every prompt; one `Completion` per prompt, in order.
pub fn generate(model: &Model, prompts: &[Vec<u32>], cfg: &GenerateConfig) -> Result<Vec<Completion>> {
    cfg.sampler.validate().map_err(Error::Msg)?;
    let empty = Completion { ids: vec![], logprobs: vec![], sampler_logprobs: vec![], stopped: false };
    let mut out = vec![empty; prompts.len()];
    if cfg.max_new_tokens == 0 || prompts.is_empty() {
        return Ok(out);
    }
    let capacity = decoder::capacity(model, prompts, cfg.max_new_tokens)?;
    let vocab = model.config.vocab_size;
    if let Some(bad) = prompts.iter().flatten().find(|&&t| t as usize >= vocab) {
        return Err(Error::Msg(format!("token id {bad} is outside the model's vocabulary of {vocab}")));
    }
    let batch = match cfg.batch_size {
        0 => prompts.len(),
        b => b.min(prompts.len()),
    };
    let sync_every = if model.device() == Device::Cpu { 1 } else { cfg.sync_every.max(1) };
    let mut dec = Decoder::new(model, batch, capacity, cfg)?;
    let keys = sequence_keys(prompts);
    let mut owner: Vec<Option<usize>> = vec![None; batch];
    let mut next = 0;
    loop {
        let mut host = dec.read_state()?;
        // Collect the slots that finished.
        let finished: Vec<(usize, usize)> =
            (0..batch).filter_map(|s| owner[s].filter(|_| host.done(s)).map(|i| (s, i))).collect();
        if !finished.is_empty() {
            let (tokens, logprobs) = dec.read_outputs()?;
            for (s, i) in finished {
                let (at, n) = (s * dec.max_new(), host.generated(s));
                let c = &mut out[i];
                c.ids = tokens[at..at + n].to_vec();
                c.sampler_logprobs = (at..at + n).map(|k| logprobs[2 * k] as f64).collect();
                c.logprobs = (at..at + n).map(|k| logprobs[2 * k + 1] as f64).collect();
                c.stopped = c.ids.last().is_some_and(|t| cfg.stop_tokens.contains(t));
                owner[s] = None;
            }
        }
        // Give free slots the waiting prompts (their first token may finish them: look again).
        let starts: Vec<(usize, usize)> =
            (0..batch).filter(|&s| owner[s].is_none()).zip(next..prompts.len()).collect();
        if !starts.is_empty() {
            next += starts.len();
            starts.iter().for_each(|&(s, i)| owner[s] = Some(i));
            let starts: Vec<(usize, u32, &[u32])> =
                starts.iter().map(|&(s, i)| (s, keys[i], prompts[i].as_slice())).collect();
            dec.start(&mut host, &starts)?;
            continue;
        }
        let active: Vec<usize> = (0..batch).filter(|&s| owner[s].is_some()).collect();
        if active.is_empty() {
            return Ok(out);
        }
        // No slot needs more steps than it has tokens left.
        let left = active.iter().map(|&s| cfg.max_new_tokens - host.generated(s)).max().unwrap_or(1);
        dec.run(&active, sync_every.min(left))?;
    }
}
