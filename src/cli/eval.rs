//! `gkd eval`: generate a completion for every prompt and score it against the reference.

use super::compute::{on_device, ComputeArgs};
use anyhow::{Context, Result};
use gkd::data::{read_jsonl, Tokenizer};
use gkd::distill::evaluate::{complete, score, Metric};
use gkd::generate::Sampler;
use gkd::model::Model;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct EvalArgs {
    #[arg(long)]
    model: PathBuf,
    /// Prompt/completion JSONL; the completions are the references.
    #[arg(long)]
    data: PathBuf,
    /// exact-match, rouge or bleu.
    #[arg(long, default_value = "exact-match")]
    metric: String,
    /// Sampling temperature (0 is greedy).
    #[arg(long, default_value_t = 0.0, conflicts_with = "greedy")]
    temperature: f64,
    /// Greedy decoding (the default).
    #[arg(long)]
    greedy: bool,
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// Score only the first N examples.
    #[arg(long)]
    limit: Option<usize>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also write every prompt, prediction and reference to this JSONL.
    #[arg(long)]
    predictions: Option<PathBuf>,
    #[command(flatten)]
    compute: ComputeArgs,
}

pub fn run(a: EvalArgs) -> Result<()> {
    let metric: Metric = a.metric.parse()?;
    let model =
        Model::load(&a.model).with_context(|| format!("loading the model in {}", a.model.display()))?;
    let tok = Tokenizer::load(&a.model)?;
    tok.check_fits(model.config.vocab_size)?;
    let mut examples = read_jsonl(&a.data, true)?;
    examples.truncate(a.limit.unwrap_or(usize::MAX));
    let temperature = if a.greedy { 0.0 } else { a.temperature };
    let sampler = Sampler { temperature, top_k: 0, top_p: 1.0 };
    let prompts: Vec<String> = examples.iter().map(|e| e.prompt.clone()).collect();
    let preds = on_device(&a.compute, "evaluating", |c| {
        complete(&c.place(&model, false)?, &tok, &prompts, sampler, a.max_new_tokens, a.seed)
    })?;
    if let Some(path) = &a.predictions {
        let lines: String = examples
            .iter()
            .zip(&preds)
            .map(|(e, p)| {
                serde_json::json!({"prompt": e.prompt, "prediction": p, "reference": e.completion})
                    .to_string()
                    + "\n"
            })
            .collect();
        std::fs::write(path, lines).with_context(|| format!("writing {}", path.display()))?;
    }
    let mut out = score(metric, &preds, &examples)?;
    out["n"] = examples.len().into();
    out["model"] = a.model.display().to_string().into();
    println!("{out}");
    Ok(())
}
