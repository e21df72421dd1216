//! `gkd init`: a fresh, randomly initialized model in Hugging Face layout.

use anyhow::{bail, Context, Result};
use gkd::data::tokenizer::TOKENIZER_FILE;
use gkd::data::Tokenizer;
use gkd::model::{Arch, FreshConfig, Model, ModelConfig};
use gkd::DType;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct InitArgs {
    /// gpt2, llama, qwen2 or mistral.
    #[arg(long)]
    arch: Arch,
    #[arg(long)]
    hidden: usize,
    #[arg(long)]
    layers: usize,
    #[arg(long)]
    heads: usize,
    /// Key/value heads (grouped-query attention); defaults to --heads.
    #[arg(long)]
    kv_heads: Option<usize>,
    /// MLP width; defaults to 4·hidden for gpt2 and ⌈8·hidden/3⌉ rounded up to a multiple of 8 otherwise.
    #[arg(long)]
    intermediate: Option<usize>,
    /// The tokenizer.json to use; the vocabulary size is taken from it, and it is copied (with
    /// tokenizer_config.json and special_tokens_map.json when they sit beside it).
    #[arg(long)]
    tokenizer: PathBuf,
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Positions (a hard limit for gpt2); defaults to 1024 for gpt2 and 2048 otherwise.
    #[arg(long)]
    max_positions: Option<usize>,
    #[arg(long, default_value_t = 10000.0)]
    rope_theta: f64,
    /// Share the token embedding with the output head; defaults to true for gpt2, false otherwise.
    #[arg(long)]
    tie_word_embeddings: Option<bool>,
    /// Weight dtype on disk: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    dtype: String,
}

pub fn run(a: InitArgs) -> Result<()> {
    let dtype = match a.dtype.as_str() {
        "f32" => DType::F32,
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        d => bail!("unknown --dtype `{d}`: use f32, bf16 or f16"),
    };
    let tok = Tokenizer::from_file(&a.tokenizer)?;
    let gpt2 = a.arch == Arch::Gpt2;
    let config = ModelConfig::fresh(FreshConfig {
        arch: a.arch,
        vocab_size: tok.vocab_size(),
        hidden_size: a.hidden,
        num_layers: a.layers,
        num_heads: a.heads,
        num_kv_heads: a.kv_heads.unwrap_or(a.heads),
        intermediate_size: a.intermediate.unwrap_or(if gpt2 {
            4 * a.hidden
        } else {
            (8 * a.hidden).div_ceil(3).next_multiple_of(8)
        }),
        max_position_embeddings: a.max_positions.unwrap_or(if gpt2 { 1024 } else { 2048 }),
        rope_theta: a.rope_theta,
        tie_word_embeddings: a.tie_word_embeddings.unwrap_or(gpt2),
        bos_token_id: tok.bos,
        eos_token_ids: tok.eos.clone(),
        pad_token_id: tok.pad,
    })?;
    let model = Model::init(config, a.seed)?;
    model.save(&a.out, dtype).with_context(|| format!("writing the model to {}", a.out.display()))?;
    let from = a.tokenizer.parent().map(PathBuf::from).unwrap_or_default();
    Tokenizer::copy_files(&from, &a.out)?;
    // The given file may not be called tokenizer.json.
    let dst = a.out.join(TOKENIZER_FILE);
    if a.tokenizer.canonicalize()? != dst.canonicalize().unwrap_or_default() {
        std::fs::copy(&a.tokenizer, &dst)
            .with_context(|| format!("copying {} to {}", a.tokenizer.display(), a.out.display()))?;
    }
    eprintln!(
        "wrote a {} model with {} parameters to {}",
        model.config.arch,
        model.num_params(),
        a.out.display()
    );
    Ok(())
}
