//! `gkd distill`: generalized knowledge distillation of a student from a teacher.
//!
//! Every flag can also be given in `--config FILE.toml` under the same name (`lambda = 1.0`,
//! `max-new-tokens = 64` or `max_new_tokens = 64`); a flag on the command line overrides the file.

use super::compute::compute_on;
use super::sft::{load_examples, parse_dtype, print_summary};
use anyhow::{bail, Context, Result};
use gkd::data::Tokenizer;
use gkd::distill::reward::{Reward, DEFAULT_TIMEOUT_S};
use gkd::distill::rl::RlConfig;
use gkd::distill::run::{run as run_training, RunOptions};
use gkd::distill::trainer::{check_same_tokenizer, Objective, TrainConfig, Trainer};
use gkd::distill::Divergence;
use gkd::generate::Sampler;
use gkd::model::Model;
use gkd::optim::adamw::AdamWConfig;
use gkd::optim::schedule::ScheduleKind;
use gkd::tensor::DeviceRequest;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(clap::Args, Serialize, Deserialize, Default, Clone)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct DistillArgs {
    /// A TOML file with any of these options (flags override it).
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// The teacher model directory (Hugging Face layout).
    #[arg(long)]
    pub teacher: Option<PathBuf>,
    /// The student model directory; it must share the teacher's tokenizer.
    #[arg(long)]
    pub student: Option<PathBuf>,
    /// Training prompts (JSONL); completions are needed unless every step samples (λ = 1 or --seq-kd).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Where the distilled student is written (checkpoints in OUT/checkpoint-<step>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Fraction of steps on student samples (on-policy) [default 0.5; 1 with --distill-weight].
    #[arg(long = "lambda")]
    pub lambda: Option<f64>,
    /// RL + GKD (the paper's Eq. 5): α, the weight of the distillation term; the loss per
    /// completion token is α·D(teacher ‖ student) − (1 − α)·A·ln p(token), A the sample's reward
    /// minus the mean reward of its prompt's samples. 1: pure GKD, 0: pure policy gradient (the
    /// teacher is never run). Every step is on-policy (λ = 1) [default 1].
    #[arg(long)]
    pub distill_weight: Option<f64>,
    /// RL + GKD: samples of each prompt per step, K (≥ 2 when --distill-weight < 1: the
    /// baseline is their mean reward) [default 4 with --distill-weight < 1, else 1].
    #[arg(long)]
    pub samples_per_prompt: Option<usize>,
    /// RL + GKD: exact-match, rouge (ROUGE-L F), bleu (sentence BLEU / 100) of the decoded
    /// sample against the example's "completion", or cmd:PROGRAM [ARGS] (run once per step
    /// without a shell: one JSON line {"prompt", "completion", "reference"} per sample on its
    /// stdin, one number per line on its stdout) [default exact-match].
    #[arg(long)]
    pub reward: Option<String>,
    /// Seconds one call of a cmd: reward may take before it is killed [default 60].
    #[arg(long)]
    pub reward_timeout: Option<f64>,
    /// β of the generalized JSD (0 = forward KL, 1 = reverse KL) [default 0.5].
    #[arg(long)]
    pub beta: Option<f64>,
    /// fkl, rkl, jsd, tvd, skew-fkl or skew-rkl [default jsd].
    #[arg(long)]
    pub divergence: Option<String>,
    /// α of the skew divergences [default 0.1].
    #[arg(long)]
    pub alpha: Option<f64>,
    /// Sampling temperature of student / teacher completions (0: greedy) [default 1].
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Temperature dividing both models' logits inside the divergence [default 1].
    #[arg(long)]
    pub loss_temperature: Option<f64>,
    /// Off-policy steps train on teacher samples instead of the dataset's completions.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub seq_kd: Option<bool>,
    #[arg(long)]
    pub top_k: Option<usize>,
    #[arg(long)]
    pub top_p: Option<f64>,
    /// Longest sampled completion [default 128].
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// Optimizer steps (or --epochs).
    #[arg(long, conflicts_with = "epochs")]
    pub steps: Option<u64>,
    /// Passes over the prompts (rounded up to whole steps).
    #[arg(long)]
    pub epochs: Option<f64>,
    /// Prompts per micro-batch [default 8].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Micro-batches per optimizer step [default 1].
    #[arg(long)]
    pub grad_accum: Option<usize>,
    /// Peak learning rate [default 1e-4].
    #[arg(long)]
    pub lr: Option<f64>,
    /// Warmup steps [default 0].
    #[arg(long)]
    pub warmup: Option<u64>,
    /// constant, linear or cosine [default cosine].
    #[arg(long)]
    pub schedule: Option<String>,
    /// AdamW weight decay (not on biases and norm weights) [default 0].
    #[arg(long)]
    pub weight_decay: Option<f64>,
    #[arg(long)]
    pub beta1: Option<f64>,
    #[arg(long)]
    pub beta2: Option<f64>,
    /// Clip the global gradient norm to this [default 1].
    #[arg(long)]
    pub max_grad_norm: Option<f32>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Metrics JSONL, one line per step [default OUT/metrics.jsonl]; the plot goes beside it.
    #[arg(long)]
    pub metrics: Option<PathBuf>,
    /// Checkpoint every N steps (0: only at the end) [default 0].
    #[arg(long)]
    pub save_every: Option<u64>,
    /// Continue from a checkpoint directory (same options, same seed).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Held-out JSONL scored by greedy exact match.
    #[arg(long)]
    pub eval_data: Option<PathBuf>,
    /// Evaluate every N steps (and at the end) [default 0: only at the end].
    #[arg(long)]
    pub eval_every: Option<u64>,
    /// Score only the first N held-out examples.
    #[arg(long)]
    pub eval_limit: Option<usize>,
    /// Weight dtype of the final student: f32, bf16 or f16 [default f32].
    #[arg(long)]
    pub save_dtype: Option<String>,
    /// auto (the first GPU when there is one, else the CPU), cpu, cuda or cuda:N.
    #[arg(long)]
    pub device: Option<String>,
    /// auto (bf16 on a GPU, f32 on the CPU), f32 or bf16: the dtype both models compute in; the
    /// student keeps f32 master weights and optimizer state either way.
    #[arg(long)]
    pub dtype: Option<String>,
    /// No progress bar.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub quiet: Option<bool>,
}

/// The file's options under the flags: every flag given on the command line wins.
fn merged(args: DistillArgs) -> Result<DistillArgs> {
    let Some(path) = args.config.clone() else { return Ok(args) };
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let table: toml::Table = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let table: toml::Table = table.into_iter().map(|(k, v)| (k.replace('_', "-"), v)).collect();
    let file: DistillArgs =
        table.try_into().with_context(|| format!("{}: an unknown or mistyped option", path.display()))?;
    let mut file = serde_json::to_value(file)?;
    let flags = serde_json::to_value(&args)?;
    if let (Some(f), Some(a)) = (file.as_object_mut(), flags.as_object()) {
        for (k, v) in a {
            if !v.is_null() {
                f.insert(k.clone(), v.clone());
            }
        }
    }
    let mut out: DistillArgs = serde_json::from_value(file)?;
    out.config = Some(path);
    Ok(out)
}

pub fn run(args: DistillArgs) -> Result<()> {
    let a = merged(args)?;
    let need = |v: &Option<PathBuf>, name: &str| -> Result<PathBuf> {
        v.clone().with_context(|| format!("--{name} is required (on the command line or in --config)"))
    };
    let (teacher_dir, data_path, out) =
        (need(&a.teacher, "teacher")?, need(&a.data, "data")?, need(&a.out, "out")?);
    let student_dir = match &a.resume {
        Some(r) => r.clone(),
        None => need(&a.student, "student")?,
    };
    let device =
        a.device.as_deref().unwrap_or("auto").parse::<DeviceRequest>().map_err(anyhow::Error::msg)?;
    let compute = compute_on(device.resolve(), a.dtype.as_deref().unwrap_or("auto"))?;
    // Tokenizers first: a mismatch is an error before any model is loaded.
    let tok =
        Tokenizer::load(&teacher_dir).with_context(|| format!("the teacher in {}", teacher_dir.display()))?;
    let student_tok =
        Tokenizer::load(&student_dir).with_context(|| format!("the student in {}", student_dir.display()))?;
    check_same_tokenizer(&tok, &student_tok)?;
    // The teacher computes without a tape; the student keeps f32 masters beside its compute
    // weights. (The loaded copies are dropped here: a shared buffer would be copied on the first
    // optimizer write.)
    let teacher = Model::load(&teacher_dir)
        .and_then(|m| compute.place(&m, false))
        .with_context(|| format!("loading the teacher in {}", teacher_dir.display()))?;
    let student = Model::load(&student_dir)
        .and_then(|m| compute.place(&m, true))
        .with_context(|| format!("loading the student in {}", student_dir.display()))?;
    let rl_flags = a.distill_weight.is_some() || a.reward.is_some() || a.samples_per_prompt.is_some();
    let examples = if rl_flags {
        // The reward compares each sample with its example's completion: every line needs one.
        gkd::data::read_jsonl(&data_path, true).context(
            "RL + GKD (--distill-weight, --reward, --samples-per-prompt) scores each sample against its example's \"completion\"",
        )?
    } else {
        load_examples(&data_path)?
    };
    let divergence = Divergence::from_cli(
        a.divergence.as_deref().unwrap_or("jsd"),
        a.beta.unwrap_or(0.5),
        a.alpha.unwrap_or(0.1),
    )?;
    let batch_size = a.batch_size.unwrap_or(8);
    let grad_accum = a.grad_accum.unwrap_or(1);
    let steps = match (a.steps, a.epochs) {
        (Some(s), _) => s,
        (None, Some(e)) => ((e * examples.len() as f64) / (batch_size * grad_accum) as f64).ceil() as u64,
        (None, None) => bail!("give --steps or --epochs"),
    };
    // RL + GKD when any of its flags is given; its steps are all on-policy (λ = 1 by default).
    let rl = if rl_flags {
        let distill_weight = a.distill_weight.unwrap_or(1.0);
        Some(RlConfig {
            distill_weight,
            samples_per_prompt: a.samples_per_prompt.unwrap_or(if distill_weight < 1.0 { 4 } else { 1 }),
            reward: Reward::parse(
                a.reward.as_deref().unwrap_or("exact-match"),
                a.reward_timeout.unwrap_or(DEFAULT_TIMEOUT_S),
            )?,
        })
    } else {
        if a.reward_timeout.is_some() {
            bail!("--reward-timeout applies to --reward cmd:PROGRAM (RL + GKD)");
        }
        None
    };
    let cfg = TrainConfig {
        objective: Objective::Distill,
        divergence,
        lambda: a.lambda.unwrap_or(if rl.is_some() { 1.0 } else { 0.5 }),
        seq_kd: a.seq_kd.unwrap_or(false),
        loss_temperature: a.loss_temperature.unwrap_or(1.0),
        sampler: Sampler {
            temperature: a.temperature.unwrap_or(1.0),
            top_k: a.top_k.unwrap_or(0),
            top_p: a.top_p.unwrap_or(1.0),
        },
        max_new_tokens: a.max_new_tokens.unwrap_or(128),
        steps,
        batch_size,
        grad_accum,
        lr: a.lr.unwrap_or(1e-4),
        warmup: a.warmup.unwrap_or(0),
        schedule: a.schedule.as_deref().unwrap_or("cosine").parse::<ScheduleKind>()?,
        adamw: AdamWConfig {
            beta1: a.beta1.unwrap_or(0.9),
            beta2: a.beta2.unwrap_or(0.999),
            eps: 1e-8,
            weight_decay: a.weight_decay.unwrap_or(0.0),
        },
        max_grad_norm: a.max_grad_norm.unwrap_or(1.0),
        seed: a.seed.unwrap_or(0),
    };
    let mut trainer = Trainer::new(cfg, student, Some(&teacher), &tok, &examples)?;
    if let Some(rl) = rl {
        trainer = trainer.with_rl(rl)?;
    }
    if let Some(r) = &a.resume {
        trainer.restore(r)?;
        eprintln!("resuming from {} at step {}", r.display(), trainer.state.step);
    }
    let eval_data = match &a.eval_data {
        Some(p) => {
            let mut e = gkd::data::read_jsonl(p, true)?;
            e.truncate(a.eval_limit.unwrap_or(usize::MAX));
            Some(e)
        }
        None => None,
    };
    let opts = RunOptions {
        metrics: a.metrics.clone().unwrap_or_else(|| out.join("metrics.jsonl")),
        out,
        save_every: a.save_every.unwrap_or(0),
        eval_data,
        eval_every: a.eval_every.unwrap_or(0),
        eval_max_new_tokens: a.max_new_tokens.unwrap_or(128),
        save_dtype: parse_dtype(a.save_dtype.as_deref().unwrap_or("f32"))?,
        resumed: a.resume.is_some(),
        divergence: Some(divergence.to_string()),
        progress: !a.quiet.unwrap_or(false),
    };
    let rl_note = trainer.rl().map_or(String::new(), |r| {
        format!(
            ", RL + GKD: distill weight α = {}, reward {}, {} samples per prompt",
            r.distill_weight, r.reward, r.samples_per_prompt
        )
    });
    eprintln!(
        "distilling {} ({} params) from {} ({} params): {} prompts, {} steps, λ = {}, {}{rl_note}, on {} in {}",
        student_dir.display(),
        trainer.student.num_params(),
        teacher_dir.display(),
        teacher.num_params(),
        trainer.num_examples(),
        trainer.cfg.steps,
        trainer.cfg.lambda,
        divergence,
        compute.device,
        compute.dtype
    );
    let summary = run_training(&mut trainer, &opts)?;
    print_summary(&summary);
    Ok(())
}
