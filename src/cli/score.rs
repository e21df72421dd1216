//! `gkd score`: the log-probability of each token of a sequence given the ones before it.

use anyhow::{bail, Context, Result};
use gkd::data::Tokenizer;
use gkd::model::Model;
use gkd::tensor::{Device, DeviceRequest};
use gkd::Error;
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
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: DeviceRequest,
}

/// Runs `f` on the requested device. With `auto`, an op that has no CUDA kernel yet sends the work
/// back to the CPU with a note on stderr; with an explicit `cuda` it is an error.
pub(crate) fn on_device<T>(
    req: DeviceRequest,
    what: &str,
    f: impl Fn(Device) -> gkd::Result<T>,
) -> Result<T> {
    let device = req.resolve();
    match f(device) {
        Err(e @ Error::Unsupported { .. }) if req == DeviceRequest::Auto && device != Device::Cpu => {
            eprintln!("note: {e}; {what} on the CPU instead");
            Ok(f(Device::Cpu)?)
        }
        r => Ok(r?),
    }
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
    let logprobs = on_device(args.device, "scoring", |device| {
        let m = model.to_device(device)?;
        Ok(m.logprobs(std::slice::from_ref(&ids))?.remove(0))
    })?;
    println!("{}", json!({"ids": ids, "logprobs": logprobs}));
    Ok(())
}
