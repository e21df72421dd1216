//! `gkd sft`: supervised fine-tuning on completions (cross-entropy on completion tokens only);
//! how teachers and the SFT students that GKD starts from are made.

use super::compute::ComputeArgs;
use anyhow::{bail, Context, Result};
use gkd::data::{read_jsonl, Example, Tokenizer};
use gkd::distill::run::{run as run_training, RunOptions, RunSummary};
use gkd::distill::trainer::{Objective, TrainConfig, Trainer};
use gkd::distill::Divergence;
use gkd::generate::Sampler;
use gkd::model::Model;
use gkd::optim::adamw::AdamWConfig;
use gkd::optim::schedule::ScheduleKind;
use gkd::DType;
use serde_json::json;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct SftArgs {
    /// The model directory to fine-tune (Hugging Face layout, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    /// Prompt/completion JSONL.
    #[arg(long)]
    data: PathBuf,
    #[arg(long)]
    out: PathBuf,
    #[arg(long, conflicts_with = "epochs", required_unless_present = "epochs")]
    steps: Option<u64>,
    #[arg(long)]
    epochs: Option<f64>,
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,
    #[arg(long, default_value_t = 0)]
    warmup: u64,
    /// constant, linear or cosine.
    #[arg(long, default_value = "cosine")]
    schedule: String,
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Metrics JSONL [default OUT/metrics.jsonl].
    #[arg(long)]
    metrics: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    save_every: u64,
    #[arg(long)]
    resume: Option<PathBuf>,
    #[arg(long)]
    eval_data: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    eval_every: u64,
    #[arg(long)]
    eval_limit: Option<usize>,
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    save_dtype: String,
    #[command(flatten)]
    compute: ComputeArgs,
    /// Activations recomputed in the backward instead of kept: none, attention (each layer's
    /// attention block) or layers (everything but each layer's input), for long sequences.
    #[arg(long, default_value = "none")]
    recompute: String,
    #[arg(long)]
    quiet: bool,
}

pub(crate) fn parse_dtype(s: &str) -> Result<DType> {
    Ok(match s {
        "f32" => DType::F32,
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        d => bail!("unknown dtype `{d}`: use f32, bf16 or f16"),
    })
}

/// Distillation runs on the CPU until the GPU sampler and the whole GKD step land there: `auto`
/// uses the CPU, an explicit GPU is an error.
pub(crate) fn load_examples(path: &Path) -> Result<Vec<Example>> {
    Ok(read_jsonl(path, false)?)
}

pub(crate) fn print_summary(s: &RunSummary) {
    println!(
        "{}",
        json!({"steps": s.steps, "last_loss": s.last_loss, "tokens": s.tokens, "seconds": s.seconds, "eval_exact_match": s.last_eval})
    );
}

pub fn run(a: SftArgs) -> Result<()> {
    let compute = a.compute.resolve()?;
    let model_dir = a.resume.clone().unwrap_or_else(|| a.model.clone());
    let tok = Tokenizer::load(&model_dir)?;
    // Placed on the device as loaded: no second copy of the weights stays behind to share the
    // buffer (which would make the first optimizer write copy it).
    let mut model = Model::load(&model_dir)
        .and_then(|m| compute.place(&m, true))
        .with_context(|| format!("loading the model in {}", model_dir.display()))?;
    let examples = read_jsonl(&a.data, true)?;
    let steps = match (a.steps, a.epochs) {
        (Some(s), _) => s,
        (None, Some(e)) => ((e * examples.len() as f64) / (a.batch_size * a.grad_accum) as f64).ceil() as u64,
        (None, None) => bail!("give --steps or --epochs"),
    };
    let cfg = TrainConfig {
        objective: Objective::Sft,
        divergence: Divergence::ForwardKl,
        lambda: 0.0,
        seq_kd: false,
        loss_temperature: 1.0,
        sampler: Sampler::default(),
        max_new_tokens: a.max_new_tokens,
        steps,
        batch_size: a.batch_size,
        grad_accum: a.grad_accum,
        lr: a.lr,
        warmup: a.warmup,
        schedule: a.schedule.parse::<ScheduleKind>()?,
        adamw: AdamWConfig { weight_decay: a.weight_decay, ..AdamWConfig::default() },
        max_grad_norm: a.max_grad_norm,
        seed: a.seed,
    };
    model.set_recompute(a.recompute.parse()?);
    let mut trainer = Trainer::new(cfg, model, None, &tok, &examples)?;
    if let Some(r) = &a.resume {
        trainer.restore(r)?;
        eprintln!("resuming from {} at step {}", r.display(), trainer.state.step);
    }
    let eval_data = match &a.eval_data {
        Some(p) => {
            let mut e = read_jsonl(p, true)?;
            e.truncate(a.eval_limit.unwrap_or(usize::MAX));
            Some(e)
        }
        None => None,
    };
    let opts = RunOptions {
        metrics: a.metrics.clone().unwrap_or_else(|| a.out.join("metrics.jsonl")),
        out: a.out.clone(),
        save_every: a.save_every,
        eval_data,
        eval_every: a.eval_every,
        eval_max_new_tokens: a.max_new_tokens,
        save_dtype: parse_dtype(&a.save_dtype)?,
        resumed: a.resume.is_some(),
        divergence: None,
        progress: !a.quiet,
    };
    eprintln!(
        "fine-tuning {} ({} params) on {} examples for {} steps on {} in {}",
        model_dir.display(),
        trainer.student.num_params(),
        trainer.num_examples(),
        steps,
        compute.device,
        compute.dtype
    );
    let summary = run_training(&mut trainer, &opts)?;
    print_summary(&summary);
    Ok(())
}
