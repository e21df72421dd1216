//! A whole training run around `Trainer::step`: metrics JSONL, progress bar, periodic evaluation,
//! checkpoints, the stop on a non-finite loss, the final save, the summary and the loss plot.

use crate::data::Example;
use crate::distill::evaluate::exact_match_greedy;
use crate::distill::trainer::Trainer;
use crate::error::{Error, Result};
use crate::metrics::{plot_curves, MetricsWriter, StepMetrics};
use crate::tensor::DType;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Map};
use std::path::{Path, PathBuf};
use std::time::Instant;

pub struct RunOptions {
    /// The finished student goes here; periodic checkpoints in `out/checkpoint-<step>`.
    pub out: PathBuf,
    pub metrics: PathBuf,
    /// Checkpoint every this many steps (0: only at the end).
    pub save_every: u64,
    /// Held-out examples scored by greedy exact match every `eval_every` steps and at the end.
    pub eval_data: Option<Vec<Example>>,
    pub eval_every: u64,
    pub eval_max_new_tokens: usize,
    pub save_dtype: DType,
    /// Continue the metrics file of a resumed run rather than start a new one.
    pub resumed: bool,
    /// Written into every metrics line (`"divergence"`), when distilling.
    pub divergence: Option<String>,
    pub progress: bool,
}

#[derive(Clone, Debug)]
pub struct RunSummary {
    pub steps: u64,
    pub last_loss: f64,
    pub tokens: u64,
    pub seconds: f64,
    pub last_eval: Option<f64>,
}

/// The directory of the checkpoint after `step` steps.
pub fn checkpoint_dir(out: &Path, step: u64) -> PathBuf {
    out.join(format!("checkpoint-{step}"))
}

pub fn run(trainer: &mut Trainer, opts: &RunOptions) -> Result<RunSummary> {
    std::fs::create_dir_all(&opts.out)
        .map_err(|e| Error::Msg(format!("cannot create {}: {e}", opts.out.display())))?;
    let mut writer = if opts.resumed {
        MetricsWriter::resume(&opts.metrics, trainer.state.step)?
    } else {
        MetricsWriter::create(&opts.metrics)?
    };
    let total = trainer.cfg.steps;
    let bar = if opts.progress { ProgressBar::new(total) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  ETA {eta}")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_position(trainer.state.step);
    let started = Instant::now();
    let mut last_good: Option<PathBuf> = None;
    let mut summary = RunSummary {
        steps: trainer.state.step,
        last_loss: f64::NAN,
        tokens: 0,
        seconds: 0.0,
        last_eval: None,
    };
    while trainer.state.step < total {
        let step_no = trainer.state.step + 1;
        let o = match trainer.step() {
            Ok(o) => o,
            Err(e) => {
                bar.abandon();
                let kept = match &last_good {
                    Some(p) => format!("the last good checkpoint is {}", p.display()),
                    None => "no checkpoint had been written yet".to_string(),
                };
                return Err(Error::Msg(format!("step {step_no}: {e}; training stopped ({kept})")));
            }
        };
        let mut extra = Map::new();
        if let Some(d) = &opts.divergence {
            extra.insert("divergence".into(), json!(d));
        }
        extra.insert("lambda_u".into(), json!(o.u));
        extra.insert("mean_completion_len".into(), json!(o.mean_completion_len));
        extra.insert("tokens_per_s".into(), json!(o.tokens as f64 / o.seconds.max(1e-9)));
        extra.insert("grad_norm".into(), json!(o.grad_norm));
        for (name, seconds) in o.phases.fields() {
            extra.insert(name.into(), json!(seconds));
        }
        if let Some(rl) = &o.rl {
            extra.insert("reward_mean".into(), json!(rl.reward_mean));
            extra.insert("reward_std".into(), json!(rl.reward_std));
            extra.insert("distill_loss".into(), json!(rl.distill_loss));
            extra.insert("pg_loss".into(), json!(rl.pg_loss));
        }
        if let Some(bytes) = o.peak_memory {
            extra.insert("peak_memory_gib".into(), json!(bytes as f64 / (1u64 << 30) as f64));
        }
        let eval_now = opts.eval_data.is_some()
            && ((opts.eval_every > 0 && step_no % opts.eval_every == 0) || step_no == total);
        if eval_now {
            let data = opts.eval_data.as_ref().expect("checked");
            let em =
                exact_match_greedy(&trainer.student, trainer.tokenizer(), data, opts.eval_max_new_tokens)?;
            extra.insert("eval_exact_match".into(), json!(em));
            summary.last_eval = Some(em);
        }
        writer.write(&StepMetrics {
            step: step_no,
            loss: o.loss,
            source: o.source,
            tokens: o.tokens,
            lr: o.lr as f64,
            seconds: o.seconds,
            extra,
        })?;
        summary.steps = step_no;
        summary.last_loss = o.loss;
        summary.tokens += o.tokens;
        bar.set_message(format!("loss {:.4}  {:.0} tok/s", o.loss, o.tokens as f64 / o.seconds.max(1e-9)));
        bar.inc(1);
        if opts.save_every > 0 && step_no % opts.save_every == 0 && step_no < total {
            let dir = checkpoint_dir(&opts.out, step_no);
            trainer.save_checkpoint(&dir)?;
            last_good = Some(dir);
        }
    }
    bar.finish_and_clear();
    trainer.save_final(&opts.out, opts.save_dtype)?;
    summary.seconds = started.elapsed().as_secs_f64();
    let png = opts.metrics.with_extension("png");
    if let Err(e) = plot_curves(&opts.metrics, &png) {
        eprintln!("note: no loss plot: {e}");
    }
    eprintln!(
        "done: {} steps, last loss {:.4}, {} completion tokens in {:.1} s{}; student in {}, metrics in {} (plot {})",
        summary.steps,
        summary.last_loss,
        summary.tokens,
        summary.seconds,
        summary.last_eval.map(|e| format!(", eval exact match {e:.3}")).unwrap_or_default(),
        opts.out.display(),
        opts.metrics.display(),
        png.display()
    );
    Ok(summary)
}
