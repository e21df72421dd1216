//! `gkd score`: the log-probability of each token of a sequence given the ones before it.

use super::compute::{on_device, ComputeArgs};
use anyhow::{bail, Context, Result};
use gkd::data::Tokenizer;
use gkd::model::Model;
use serde_json::json;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct ScoreArgs {
    /// A Hugging Face model directory (config.json, *.safetensors, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    /// Text to tokenize with the model's tokenizer (special tokens added as transformers does).
    #[arg(long, conflicts_with = "ids", required_unless_present = "ids")]
    text: Option<String>,
    /// Token ids, comma-separated.
    #[arg(long, value_delimiter = ',')]
    ids: Option<Vec<u32>>,
    #[command(flatten)]
    compute: ComputeArgs,
}

pub fn run(args: ScoreArgs) -> Result<()> {
    let model =
        Model::load(&args.model).with_context(|| format!("loading the model in {}", args.model.display()))?;
    let ids = match (&args.text, args.ids) {
        (Some(text), _) => {
            let tok = Tokenizer::load(&args.model)?;
            tok.check_fits(model.config.vocab_size)?;
            tok.encode(text, true)?
        }
        (None, Some(ids)) => ids,
        (None, None) => bail!("give --text or --ids"),
    };
    if ids.is_empty() {
        bail!("nothing to score: the sequence is empty");
    }
    if let Some(&bad) = ids.iter().find(|&&i| i as usize >= model.config.vocab_size) {
        bail!("token id {bad} is outside the model's vocabulary of {}", model.config.vocab_size);
    }
    let logprobs = on_device(&args.compute, "scoring", |c| {
        let m = c.place(&model, false)?;
        Ok(m.logprobs(std::slice::from_ref(&ids))?.remove(0))
    })?;
    println!("{}", json!({"ids": ids, "logprobs": logprobs}));
    Ok(())
}
