//! `gkd generate`: sample continuations of a prompt, one JSON line per sample.

use super::compute::{on_device, ComputeArgs};
use anyhow::{Context, Result};
use gkd::data::Tokenizer;
use gkd::generate::{generate, GenerateConfig, Sampler};
use gkd::model::Model;
use serde_json::json;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct GenerateArgs {
    /// A Hugging Face model directory (config.json, *.safetensors, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    prompt: String,
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// Softmax temperature; 0 is greedy decoding.
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    /// Sample only among the k most likely tokens (0: all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Sample only from the smallest set of most likely tokens whose probability reaches p.
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 1)]
    num_samples: usize,
    /// Samples decoded at once (0: all); more wait for a slot (continuous batching).
    #[arg(long, default_value_t = 0)]
    batch_size: usize,
    #[command(flatten)]
    compute: ComputeArgs,
}

pub fn run(args: GenerateArgs) -> Result<()> {
    let model =
        Model::load(&args.model).with_context(|| format!("loading the model in {}", args.model.display()))?;
    let tok = Tokenizer::load(&args.model)?;
    tok.check_fits(model.config.vocab_size)?;
    let prompt = tok.encode(&args.prompt, true)?;
    let stop_tokens = if tok.eos.is_empty() { model.config.eos_token_ids.clone() } else { tok.eos.clone() };
    let sampler = Sampler { temperature: args.temperature, top_k: args.top_k, top_p: args.top_p };
    let cfg = GenerateConfig {
        batch_size: args.batch_size,
        ..GenerateConfig::new(args.max_new_tokens, sampler, args.seed, stop_tokens)
    };
    let prompts = vec![prompt; args.num_samples];
    let samples =
        on_device(&args.compute, "generating", |c| generate(&c.place(&model, false)?, &prompts, &cfg))?;
    for s in samples {
        let text = tok.decode(&s.ids, true)?;
        let finish = if s.stopped { "eos" } else { "length" };
        println!("{}", json!({"text": text, "ids": s.ids, "logprobs": s.logprobs, "finish_reason": finish}));
    }
    Ok(())
}
