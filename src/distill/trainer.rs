//! The GKD trainer (DESIGN.md, the algorithm), and supervised fine-tuning on the same loop.
//!
//! One optimizer step = `grad_accum` micro-batches of `batch_size` prompts:
//! 1. draw u ~ U(0, 1) from the run's generator for this step; u ≤ λ → completions sampled from
//!    the student, else with seq-KD from the teacher, else the dataset's completions (+ EOS);
//! 2. per micro-batch: the teacher's forward on a no-grad tape, keeping only its final hidden
//!    states at the completion positions; the student's forward on a tape; one fused op for the
//!    output heads and the divergence (or SFT's cross-entropy) over the completion positions, in
//!    row chunks, so no (tokens × vocab) logits exist beyond one chunk; the backward adds each
//!    parameter's gradient into one flat f32 buffer beside the parameters;
//! 3. the loss is Σ over completion tokens ÷ their count in the whole step (known before any
//!    backward, since all completions of the step are built first);
//! 4. clip the summed gradients by global norm, AdamW on the flat parameter buffer in place, the
//!    LR schedule. Parameters, gradients and moments stay on the student's device.
//!
//! Every random choice of step k (u, the sampling seeds) and the data order are functions of
//! (seed, k), so a run resumed from a checkpoint at step k continues exactly.
//!
//! With an RL configuration (`with_rl`, see `rl.rs`), each prompt of a step is sampled K times,
//! the samples are scored by the reward, and the micro-batches add the policy-gradient term.

use super::reward::{advantages, mean_std, RewardInput};
use super::rl::{rl_micro_batch_grads_timed, RlConfig};
use crate::autograd::{LinearLoss, LinearLossTarget, LossKind, Tape};
use crate::backend::Divergence;
use crate::data::{Example, Tokenizer};
use crate::distill::phases::{Phase, PhaseClock, PhaseTimes};
use crate::error::{Error, Result};
use crate::generate::{generate, sequence_rng, GenerateConfig, Sampler};
use crate::metrics::Source;
use crate::model::{Model, TokenBatch};
use crate::optim::adamw::{AdamW, AdamWConfig, ParamGroup};
use crate::optim::clip::GradClip;
use crate::optim::schedule::{LrSchedule, ScheduleKind};
use crate::tensor::{DType, Tensor};
use rand::seq::SliceRandom;
use rand::Rng;
use std::cell::Cell;
use std::path::Path;
use std::time::Instant;

/// What the student is trained on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Objective {
    /// Cross-entropy on the dataset's completions.
    Sft,
    /// GKD against a teacher.
    Distill,
}

#[derive(Clone, Debug)]
pub struct TrainConfig {
    pub objective: Objective,
    pub divergence: Divergence,
    /// Fraction of steps on student samples (on-policy).
    pub lambda: f64,
    /// Off-policy steps use teacher samples instead of the dataset's completions.
    pub seq_kd: bool,
    pub loss_temperature: f64,
    /// Sampling of student / teacher completions.
    pub sampler: Sampler,
    pub max_new_tokens: usize,
    pub steps: u64,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub lr: f64,
    pub warmup: u64,
    pub schedule: ScheduleKind,
    pub adamw: AdamWConfig,
    pub max_grad_norm: f32,
    pub seed: u64,
}

impl TrainConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Msg(m));
        if !(0.0..=1.0).contains(&self.lambda) {
            return bad(format!(
                "lambda must be in [0, 1] (the fraction of on-policy steps), got {}",
                self.lambda
            ));
        }
        if self.batch_size == 0 || self.grad_accum == 0 {
            return bad("batch size and gradient accumulation must be at least 1".into());
        }
        if self.steps == 0 {
            return bad("the run needs at least one step (--steps or --epochs)".into());
        }
        if !(self.loss_temperature > 0.0 && self.loss_temperature.is_finite()) {
            return bad(format!("the loss temperature must be positive, got {}", self.loss_temperature));
        }
        if self.objective == Objective::Distill && self.uses_samples() && self.max_new_tokens == 0 {
            return bad("sampled completions need --max-new-tokens of at least 1".into());
        }
        self.sampler.validate().map_err(Error::Msg)?;
        self.divergence.validate()?;
        Ok(())
    }

    /// Whether some step may sample completions (student or teacher).
    pub fn uses_samples(&self) -> bool {
        self.objective == Objective::Distill && (self.lambda > 0.0 || self.seq_kd)
    }

    /// Whether some step trains on the dataset's completions.
    pub fn uses_dataset_completions(&self) -> bool {
        self.objective == Objective::Sft || (self.lambda < 1.0 && !self.seq_kd)
    }

    pub fn prompts_per_step(&self) -> u64 {
        (self.batch_size * self.grad_accum) as u64
    }
}

/// A tokenized example: prompt ids (with the tokenizer's special tokens), completion ids + EOS.
#[derive(Clone, Debug)]
pub struct Encoded {
    pub prompt: Vec<u32>,
    pub completion: Option<Vec<u32>>,
}

/// Tokenizes examples, checking each fits the `context`: a prompt needs room for at least one
/// completion token, and a dataset completion must fit whole.
pub fn encode_examples(
    tok: &Tokenizer,
    examples: &[Example],
    context: usize,
    need_completion: bool,
) -> Result<Vec<Encoded>> {
    if examples.is_empty() {
        return Err(Error::Msg("the dataset has no examples".into()));
    }
    let eos = tok.eos.first().copied();
    examples
        .iter()
        .enumerate()
        .map(|(i, ex)| {
            let prompt = tok.encode(&ex.prompt, true)?;
            if prompt.is_empty() {
                return Err(Error::Msg(format!("example {}: the prompt is empty", i + 1)));
            }
            if prompt.len() >= context {
                return Err(Error::Msg(format!(
                    "example {}: the prompt is {} tokens, but the context is {context} positions; it must leave room for the completion (shorten the prompt or use a model with more positions)",
                    i + 1,
                    prompt.len()
                )));
            }
            let completion = match &ex.completion {
                Some(c) => {
                    let mut ids = tok.encode(c, false)?;
                    ids.extend(eos);
                    if ids.is_empty() {
                        return Err(Error::Msg(format!(
                            "example {}: the completion is empty and the tokenizer has no EOS token",
                            i + 1
                        )));
                    }
                    if prompt.len() + ids.len() - 1 > context {
                        return Err(Error::Msg(format!(
                            "example {}: prompt and completion are {} tokens, longer than the context of {context} positions",
                            i + 1,
                            prompt.len() + ids.len()
                        )));
                    }
                    Some(ids)
                }
                None if need_completion => {
                    return Err(Error::Msg(format!(
                        "example {}: no completion, but this run trains on the dataset's completions (give every example a \"completion\", or use --lambda 1 / --seq-kd)",
                        i + 1
                    )))
                }
                None => None,
            };
            Ok(Encoded { prompt, completion })
        })
        .collect()
}

/// Teacher and student must share one vocabulary: the same token → id map.
pub fn check_same_tokenizer(teacher: &Tokenizer, student: &Tokenizer) -> Result<()> {
    let (a, b) = (teacher.inner().get_vocab(true), student.inner().get_vocab(true));
    if a != b {
        let differing = a.iter().filter(|(t, id)| b.get(*t) != Some(id)).count()
            + b.keys().filter(|t| !a.contains_key(*t)).count();
        return Err(Error::Msg(format!(
            "the teacher's tokenizer ({}, {} tokens) and the student's ({}, {} tokens) differ in {differing} entries: GKD compares next-token distributions, so both models must share one tokenizer",
            teacher.path().display(),
            a.len(),
            student.path().display(),
            b.len()
        )));
    }
    Ok(())
}

/// What one optimizer step did.
#[derive(Clone, Debug)]
pub struct StepOutcome {
    pub loss: f64,
    pub source: Source,
    /// The λ draw.
    pub u: f64,
    /// Completion tokens in the step.
    pub tokens: u64,
    /// Mean completion length (sampled or given).
    pub mean_completion_len: f64,
    pub grad_norm: f32,
    pub lr: f32,
    pub seconds: f64,
    /// The most device memory in use during the step (GPU only), in bytes.
    pub peak_memory: Option<u64>,
    /// Where the step's time went.
    pub phases: PhaseTimes,
    /// RL + GKD steps: the rewards of the step's samples.
    pub rl: Option<RlStep>,
}

/// What the reward side of an RL + GKD step saw.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RlStep {
    /// Mean and (population) standard deviation of the rewards of the step's B·K samples.
    pub reward_mean: f64,
    pub reward_std: f64,
    /// The loss's two parts (they sum to `loss`): α/T · Σ D and −(1 − α)/T · Σ A·ln p(y).
    pub distill_loss: f64,
    pub pg_loss: f64,
}

/// The resumable part of a run besides weights and optimizer: `trainer_state.json`.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainerState {
    pub step: u64,
    pub examples_seen: u64,
    pub seed: u64,
    pub total_steps: u64,
}

pub struct Trainer<'a> {
    pub cfg: TrainConfig,
    pub student: Model,
    teacher: Option<&'a Model>,
    tok: &'a Tokenizer,
    data: Vec<Encoded>,
    /// The tokenizer's vocabulary: logit columns past it (embedding padding) are ignored.
    vocab: usize,
    context: usize,
    opt: AdamW,
    /// d(loss)/d(parameters), laid out like the student's parameter buffer, f32.
    grads: Tensor,
    schedule: LrSchedule,
    clip: GradClip,
    pub state: TrainerState,
    order: Option<(u64, Vec<usize>)>,
    /// The examples' text (the prompts and reference completions the rewards see).
    examples: Vec<Example>,
    rl: Option<RlConfig>,
    /// Micro-batches that ran the teacher's forward.
    teacher_forwards: Cell<u64>,
}

/// Salts of the per-step generators, so the λ draw, the data order and the sampling seeds are
/// independent streams of one seed.
const SALT_LAMBDA: u64 = 0x6c61_6d62_6461;
const SALT_ORDER: u64 = 0x006f_7264_6572;
const SALT_SAMPLE: u64 = 0x7361_6d70_6c65;

/// The context (positions) of a model; unlimited RoPE models still stop at their configured maximum.
pub fn context_of(m: &Model) -> usize {
    m.config.max_position_embeddings
}

impl<'a> Trainer<'a> {
    pub fn new(
        cfg: TrainConfig,
        student: Model,
        teacher: Option<&'a Model>,
        tok: &'a Tokenizer,
        examples: &[Example],
    ) -> Result<Trainer<'a>> {
        cfg.validate()?;
        if cfg.objective == Objective::Distill && teacher.is_none() {
            return Err(Error::Msg("distillation needs a teacher".into()));
        }
        tok.check_fits(student.config.vocab_size)?;
        let mut context = context_of(&student);
        if let Some(t) = teacher {
            tok.check_fits(t.config.vocab_size)?;
            context = context.min(context_of(t));
        }
        if cfg.uses_samples() && tok.eos.is_empty() {
            eprintln!("note: the tokenizer has no EOS token: samples always run to --max-new-tokens");
        }
        let data = encode_examples(tok, examples, context, cfg.uses_dataset_completions())?;
        if student.params().master().dtype() != DType::F32 {
            return Err(Error::Msg(format!(
                "training needs f32 parameters (or f32 masters beside bf16 ones: Model::to_compute with train); the student's are {}",
                student.dtype()
            )));
        }
        if let Some(t) = teacher.filter(|t| t.device() != student.device()) {
            return Err(Error::Msg(format!(
                "the teacher is on {} and the student on {}: put both on one device",
                t.device(),
                student.device()
            )));
        }
        let grads = Tensor::zeros([student.num_params()], DType::F32, student.device())?;
        let opt = AdamW::new(cfg.adamw)?;
        let schedule = LrSchedule::new(cfg.schedule, cfg.lr, cfg.warmup, cfg.steps)?;
        let clip = GradClip::new(cfg.max_grad_norm)?;
        let state = TrainerState { step: 0, examples_seen: 0, seed: cfg.seed, total_steps: cfg.steps };
        Ok(Trainer {
            vocab: tok.vocab_size(),
            cfg,
            student,
            teacher,
            tok,
            data,
            context,
            opt,
            grads,
            schedule,
            clip,
            state,
            order: None,
            examples: examples.to_vec(),
            rl: None,
            teacher_forwards: Cell::new(0),
        })
    }

    /// Trains on these tokenized examples instead of the encoded text ones: prompt ids as the
    /// model reads them, completion ids exactly as given (no EOS added: a completion cut at
    /// `--max-new-tokens` stays cut). Each must fit the context; completions are needed when the
    /// run trains on the dataset's. (RL's rewards read the text examples: not with this data.)
    pub fn with_data(mut self, data: Vec<Encoded>) -> Result<Self> {
        if data.is_empty() {
            return Err(Error::Msg("the dataset has no examples".into()));
        }
        let need = self.cfg.uses_dataset_completions();
        for (i, e) in data.iter().enumerate() {
            let c = e.completion.as_ref().map_or(0, Vec::len);
            if e.prompt.is_empty() || (need && c == 0) {
                return Err(Error::Msg(format!("example {}: an empty prompt or completion", i + 1)));
            }
            if e.prompt.len() >= self.context || e.prompt.len() + c.max(1) - 1 > self.context {
                return Err(Error::Msg(format!(
                    "example {}: {} prompt and {c} completion tokens do not fit the context of {} positions",
                    i + 1,
                    e.prompt.len(),
                    self.context
                )));
            }
            if let Some(&bad) =
                e.prompt.iter().chain(e.completion.iter().flatten()).find(|&&t| t as usize >= self.vocab)
            {
                return Err(Error::Msg(format!(
                    "example {}: token {bad} is outside the vocabulary of {}",
                    i + 1,
                    self.vocab
                )));
            }
        }
        self.data = data;
        self.examples.clear();
        self.order = None;
        Ok(self)
    }

    /// Turns the trainer into RL + GKD (`rl.rs`): the rules there are checked, and every example
    /// needs its reference completion.
    pub fn with_rl(mut self, rl: RlConfig) -> Result<Self> {
        rl.validate(&self.cfg)?;
        if self.examples.len() != self.data.len() {
            return Err(Error::Msg(
                "RL + GKD scores samples against the text examples: build the trainer from them (Trainer::new), not from tokenized data".into(),
            ));
        }
        if let Some(i) = self.examples.iter().position(|e| e.completion.is_none()) {
            return Err(Error::Msg(format!(
                "example {} (non-empty line {} of the data) has no \"completion\": the reward `{}` compares each sample with its example's reference completion, so every example needs one",
                i + 1,
                i + 1,
                rl.reward
            )));
        }
        self.rl = Some(rl);
        Ok(self)
    }

    pub fn rl(&self) -> Option<&RlConfig> {
        self.rl.as_ref()
    }

    /// How many micro-batches have run the teacher's forward so far.
    pub fn teacher_forwards(&self) -> u64 {
        self.teacher_forwards.get()
    }

    pub fn num_examples(&self) -> usize {
        self.data.len()
    }

    /// Continues from a checkpoint written by `save_checkpoint` (the student must have been loaded
    /// from the same directory).
    pub fn restore(&mut self, dir: &Path) -> Result<()> {
        let path = dir.join(STATE_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            Error::Msg(format!(
                "cannot resume from {}: no {STATE_FILE} ({e}); is it a gkd checkpoint?",
                dir.display()
            ))
        })?;
        let state: TrainerState = serde_json::from_str(&text)
            .map_err(|e| Error::Msg(format!("{}: not a trainer state: {e}", path.display())))?;
        if state.seed != self.cfg.seed {
            return Err(Error::Msg(format!(
                "the checkpoint {} was trained with seed {}, this run has seed {}: resume with the same seed",
                dir.display(),
                state.seed,
                self.cfg.seed
            )));
        }
        self.opt = AdamW::load(&dir.join(OPTIMIZER_FILE), &self.param_groups(), self.student.device())?;
        self.state = TrainerState { total_steps: self.cfg.steps, ..state };
        Ok(())
    }

    /// Index into the data of the `pos`-th prompt of the run: a fresh seeded shuffle every epoch.
    fn example_at(&mut self, pos: u64) -> usize {
        let n = self.data.len() as u64;
        let epoch = pos / n;
        if self.order.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let mut order: Vec<usize> = (0..self.data.len()).collect();
            order.shuffle(&mut sequence_rng(self.cfg.seed ^ SALT_ORDER, epoch as usize));
            self.order = Some((epoch, order));
        }
        self.order.as_ref().expect("set above").1[(pos % n) as usize]
    }

    /// The λ draw of step `step` (0-based).
    pub fn lambda_draw(&self, step: u64) -> f64 {
        sequence_rng(self.cfg.seed ^ SALT_LAMBDA, step as usize).random::<f64>()
    }

    fn source_for(&self, u: f64) -> Source {
        match self.cfg.objective {
            Objective::Sft => Source::Dataset,
            Objective::Distill if self.cfg.lambda > 0.0 && u <= self.cfg.lambda => Source::Student,
            Objective::Distill if self.cfg.seq_kd => Source::Teacher,
            Objective::Distill => Source::Dataset,
        }
    }

    /// How this step samples micro-batch `micro`'s `prompts` (from the student or the teacher):
    /// the sampler, a seed drawn from (seed, step, micro), the tokenizer's EOS, and at most
    /// `--max-new-tokens` that fit the context.
    pub fn sampling_config(&self, prompts: &[Vec<u32>], micro: usize) -> GenerateConfig {
        // The training input is prompt + completion − its last token.
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let max_new = self.cfg.max_new_tokens.min(self.context + 1 - longest);
        let seed =
            sequence_rng(self.cfg.seed ^ SALT_SAMPLE, (self.state.step as usize) << 16 | micro).random();
        GenerateConfig::new(max_new, self.cfg.sampler, seed, self.tok.eos.clone())
    }

    /// Completions for `prompts` from `source`; (prompt, completion) pairs.
    fn completions(&self, source: Source, idx: &[usize], micro: usize) -> Result<Vec<(Vec<u32>, Vec<u32>)>> {
        let prompts: Vec<Vec<u32>> = idx.iter().map(|&i| self.data[i].prompt.clone()).collect();
        let model = match source {
            Source::Dataset => {
                return Ok(idx
                    .iter()
                    .map(|&i| {
                        let e = &self.data[i];
                        (e.prompt.clone(), e.completion.clone().expect("checked when encoding"))
                    })
                    .collect())
            }
            Source::Student => &self.student,
            Source::Teacher => self.teacher.expect("checked in new"),
        };
        let cfg = self.sampling_config(&prompts, micro);
        let out = generate(model, &prompts, &cfg)?;
        Ok(prompts.into_iter().zip(out).map(|(p, c)| (p, c.ids)).collect())
    }

    /// One optimizer step; on a non-finite loss or gradient norm the weights are left unchanged
    /// and an error comes back.
    pub fn step(&mut self) -> Result<StepOutcome> {
        let start = Instant::now();
        let device = self.student.device();
        device.reset_peak_memory()?;
        let mut clock = PhaseClock::on(device);
        clock.start()?;
        let step = self.state.step;
        let u = self.lambda_draw(step);
        let source = self.source_for(u);
        // Build every completion of the step first: the loss divides by their total token count.
        let mut micro = Vec::with_capacity(self.cfg.grad_accum);
        let mut micro_idx = Vec::with_capacity(self.cfg.grad_accum);
        let mut pos = self.state.examples_seen;
        let k = self.rl.as_ref().map_or(1, |r| r.samples_per_prompt);
        for m in 0..self.cfg.grad_accum {
            let idx: Vec<usize> = (0..self.cfg.batch_size).map(|k| self.example_at(pos + k as u64)).collect();
            let idx: Vec<usize> = idx.into_iter().flat_map(|i| std::iter::repeat_n(i, k)).collect();
            pos += self.cfg.batch_size as u64;
            micro.push(self.completions(source, &idx, m)?);
            micro_idx.push(idx);
        }
        clock.lap(Phase::Sampling)?;
        let tokens: usize = micro.iter().flatten().map(|(_, c)| c.len()).sum();
        let scale = 1.0 / tokens as f64;
        let rewards = self.rewards(&micro_idx, &micro)?;
        let advantage: Vec<Option<Vec<f64>>> = match &rewards {
            Some(r) => r.iter().map(|r| Some(advantages(r, k))).collect(),
            None => vec![None; micro.len()],
        };
        let parts = Cell::new((0.0, 0.0));
        // The buffer leaves `self` while the micro-batches borrow it, and comes back either way.
        let mut grads =
            std::mem::replace(&mut self.grads, Tensor::zeros([0], DType::F32, self.student.device())?);
        let summed = grads.fill_(0.0).and_then(|()| {
            micro.iter().zip(&advantage).try_fold(0.0, |acc, (pairs, adv)| {
                Ok(acc + self.micro_batch(pairs, adv.as_deref(), scale, &mut grads, &parts, &mut clock)?)
            })
        });
        self.grads = grads;
        let loss = summed?;
        if !loss.is_finite() {
            return Err(Error::Msg(format!(
                "the loss is {loss}: training diverged (try a lower learning rate)"
            )));
        }
        let grad_norm = self.clip.clip(&mut self.grads)?;
        let lr = self.schedule.lr(step);
        let groups: Vec<ParamGroup> = self
            .student
            .params()
            .decay_groups()
            .into_iter()
            .map(|(range, decay)| ParamGroup { range, decay })
            .collect();
        let (master, compute) = self.student.params_mut().optimizer_buffers();
        self.opt.step(master, &self.grads, &groups, lr, compute)?;
        clock.lap(Phase::Optimizer)?;
        self.state.step += 1;
        self.state.examples_seen = pos;
        let n_seq = micro.iter().map(Vec::len).sum::<usize>().max(1);
        let rl = rewards.map(|r| {
            let (reward_mean, reward_std) = mean_std(&r.concat());
            let (distill_loss, pg_loss) = parts.get();
            RlStep { reward_mean, reward_std, distill_loss, pg_loss }
        });
        Ok(StepOutcome {
            loss,
            source,
            u,
            tokens: tokens as u64,
            mean_completion_len: tokens as f64 / n_seq as f64,
            grad_norm,
            lr,
            seconds: start.elapsed().as_secs_f64(),
            peak_memory: device.peak_memory()?,
            phases: clock.times,
            rl,
        })
    }

    /// With RL: each micro-batch's rewards of its samples (`idx`: each sample's example), the
    /// decoded completions (special tokens dropped) scored against the examples' references in
    /// one call of the reward.
    fn rewards(
        &self,
        idx: &[Vec<usize>],
        micro: &[Vec<(Vec<u32>, Vec<u32>)>],
    ) -> Result<Option<Vec<Vec<f64>>>> {
        let Some(rl) = &self.rl else { return Ok(None) };
        let mut inputs = Vec::new();
        for (idx, pairs) in idx.iter().zip(micro) {
            for (&i, (_, c)) in idx.iter().zip(pairs) {
                let e = &self.examples[i];
                inputs.push(RewardInput {
                    prompt: e.prompt.clone(),
                    completion: self.tok.decode(c, true)?,
                    reference: e.completion.clone().unwrap_or_default(),
                });
            }
        }
        let mut flat = rl.reward.score(&inputs)?.into_iter();
        Ok(Some(micro.iter().map(|m| flat.by_ref().take(m.len()).collect()).collect()))
    }

    /// Each parameter's run of the flat buffer and whether it decays, in the model's order of
    /// parameters: the optimizer state file keeps one tensor per parameter in that order (as
    /// checkpoints written before the flat buffer did, so they resume too).
    fn param_groups(&self) -> Vec<ParamGroup> {
        self.student
            .params()
            .entries()
            .iter()
            .map(|e| ParamGroup { range: e.range(), decay: e.decays() })
            .collect()
    }

    /// Forward and backward of one micro-batch; adds scale · d(loss)/d(params) into `grads` and
    /// returns scale · Σ of its completion-token losses. With RL at α < 1 (`advantages` of the
    /// samples given), the RL + GKD loss, its (distillation, policy-gradient) parts added to
    /// `parts`; at α = 1 exactly GKD's.
    fn micro_batch(
        &self,
        pairs: &[(Vec<u32>, Vec<u32>)],
        advantages: Option<&[f64]>,
        scale: f64,
        grads: &mut Tensor,
        parts: &Cell<(f64, f64)>,
        clock: &mut PhaseClock,
    ) -> Result<f64> {
        let teacher = match (self.cfg.objective, self.teacher) {
            (Objective::Distill, Some(t)) => Some(TeacherLoss {
                model: t,
                divergence: self.cfg.divergence,
                temperature: self.cfg.loss_temperature,
            }),
            _ => None,
        };
        if let (Some(rl), Some(adv)) = (self.rl.as_ref().filter(|r| r.distill_weight < 1.0), advantages) {
            let a = rl.distill_weight;
            let teacher = teacher.filter(|_| a > 0.0);
            self.teacher_forwards.set(self.teacher_forwards.get() + u64::from(teacher.is_some()));
            let (loss, distill, pg) = rl_micro_batch_grads_timed(
                &self.student,
                teacher,
                self.vocab,
                pairs,
                adv,
                a,
                scale,
                grads,
                clock,
            )?;
            let (d, p) = parts.get();
            parts.set((d + distill, p + pg));
            return Ok(loss);
        }
        self.teacher_forwards.set(self.teacher_forwards.get() + u64::from(teacher.is_some()));
        let loss = micro_batch_grads_timed(&self.student, teacher, self.vocab, pairs, scale, grads, clock)?;
        if self.rl.is_some() {
            let (d, p) = parts.get();
            parts.set((d + loss, p));
        }
        Ok(loss)
    }

    /// Writes the student (f32, Hugging Face layout, tokenizer files), the optimizer state and the
    /// trainer state to `dir`, through a temporary directory renamed into place.
    pub fn save_checkpoint(&self, dir: &Path) -> Result<()> {
        write_dir_atomically(dir, |tmp| {
            self.student.save(tmp, DType::F32)?;
            self.write_side_files(tmp)?;
            self.opt.save(&tmp.join(OPTIMIZER_FILE), &self.param_groups())?;
            let state = serde_json::to_string_pretty(&self.state).expect("JSON") + "\n";
            std::fs::write(tmp.join(STATE_FILE), state)
                .map_err(|e| Error::Msg(format!("cannot write {}: {e}", tmp.join(STATE_FILE).display())))
        })
    }

    /// The finished student in `out` (weights in `dtype`), with optimizer and trainer state so the
    /// directory can also be resumed; each file is renamed into place from a temporary directory.
    pub fn save_final(&self, out: &Path, dtype: DType) -> Result<()> {
        let tmp = out.join(".final.tmp");
        write_dir_atomically(&tmp, |t| {
            self.student.save(t, dtype)?;
            self.write_side_files(t)?;
            self.opt.save(&t.join(OPTIMIZER_FILE), &self.param_groups())?;
            let state = serde_json::to_string_pretty(&self.state).expect("JSON") + "\n";
            std::fs::write(t.join(STATE_FILE), state)
                .map_err(|e| Error::Msg(format!("cannot write {}: {e}", t.join(STATE_FILE).display())))
        })?;
        let entries =
            std::fs::read_dir(&tmp).map_err(|e| Error::Msg(format!("cannot list {}: {e}", tmp.display())))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::Msg(format!("cannot list {}: {e}", tmp.display())))?;
            let dst = out.join(entry.file_name());
            std::fs::rename(entry.path(), &dst)
                .map_err(|e| Error::Msg(format!("cannot write {}: {e}", dst.display())))?;
        }
        std::fs::remove_dir(&tmp).map_err(|e| Error::Msg(format!("cannot remove {}: {e}", tmp.display())))
    }

    fn write_side_files(&self, dir: &Path) -> Result<()> {
        let from = self.tok.path().parent().unwrap_or(Path::new("."));
        Tokenizer::copy_files(from, dir)
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        self.tok
    }
}

/// The distillation target of a micro-batch: the teacher and the divergence at a loss temperature.
#[derive(Clone, Copy)]
pub struct TeacherLoss<'m> {
    pub model: &'m Model,
    pub divergence: Divergence,
    pub temperature: f64,
}

/// Forward and backward of one micro-batch of (prompt, completion) pairs: the student's loss on
/// the completion tokens (the divergence from `teacher`, else cross-entropy), over the first
/// `vocab` logits; adds scale · d(loss)/d(params) into `grads` (f32, laid out like the student's
/// parameter buffer) and returns scale · Σ of the completion-token losses. The trainer's step and
/// `gkd bench train` both run this.
pub fn micro_batch_grads(
    student: &Model,
    teacher: Option<TeacherLoss<'_>>,
    vocab: usize,
    pairs: &[(Vec<u32>, Vec<u32>)],
    scale: f64,
    grads: &mut Tensor,
) -> Result<f64> {
    micro_batch_grads_timed(student, teacher, vocab, pairs, scale, grads, &mut PhaseClock::off())
}

/// `micro_batch_grads`, its phases timed on `clock`.
pub fn micro_batch_grads_timed(
    student: &Model,
    teacher: Option<TeacherLoss<'_>>,
    vocab: usize,
    pairs: &[(Vec<u32>, Vec<u32>)],
    scale: f64,
    grads: &mut Tensor,
    clock: &mut PhaseClock,
) -> Result<f64> {
    // Input: prompt + completion[..c−1]; row p−1+i predicts completion[i].
    let seqs: Vec<Vec<u32>> =
        pairs.iter().map(|(p, c)| p.iter().chain(&c[..c.len() - 1]).copied().collect()).collect();
    let batch = TokenBatch::new(&seqs)?;
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    for (b, (p, c)) in pairs.iter().enumerate() {
        for (i, &y) in c.iter().enumerate() {
            rows.push(batch.row(b, p.len() - 1 + i) as u32);
            targets.push(y);
        }
    }
    let device = student.device();
    let rows = Tensor::from_u32(&rows, device)?;
    // The teacher first: its hidden states at the completion positions are all it keeps.
    let teacher_rows = match teacher {
        Some(t) => {
            let mut tt = Tape::no_grad();
            let tp = t.model.bind(&mut tt, false)?;
            let h = t.model.forward(&mut tt, &tp, &mut batch.inputs(device)?)?;
            Some((tt.embedding(&rows, &h)?.into_value(), t.model.get(t.model.lm_head_name())?, t))
        }
        None => None,
    };
    clock.lap(Phase::Teacher)?;
    let mut tape = Tape::new();
    let params = student.bind(&mut tape, true)?;
    let h = student.forward(&mut tape, &params, &mut batch.inputs(device)?)?;
    let h = tape.embedding(&rows, &h)?;
    clock.lap(Phase::StudentForward)?;
    let head = student.lm_head(&params)?;
    let targets_t;
    let (kind, target) = match &teacher_rows {
        Some((th, tw, t)) => (
            LossKind::Divergence { divergence: t.divergence, temperature: t.temperature },
            LinearLossTarget::Teacher { hidden: th, head: tw },
        ),
        None => {
            targets_t = Tensor::from_u32(&targets, device)?;
            (LossKind::CrossEntropy, LinearLossTarget::Tokens(&targets_t))
        }
    };
    let spec = LinearLoss { kind, vocab, scale, chunk_rows: 0 };
    let (loss, _) = tape.linear_loss(&h, head, target, &spec)?;
    let value = loss.value().scalar()?;
    clock.lap(Phase::Loss)?;
    let g = tape.backward(&loss)?;
    for (entry, var) in student.params().entries().iter().zip(params.vars()) {
        match g.get(var) {
            Some(t) if t.dtype() == DType::F32 => grads.add_at(entry.offset, t)?,
            Some(t) => grads.add_at(entry.offset, &t.to_dtype(DType::F32)?)?,
            None => {}
        }
    }
    clock.lap(Phase::Backward)?;
    Ok(value)
}

pub const STATE_FILE: &str = "trainer_state.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// Fills a fresh temporary directory beside `dir`, then replaces `dir` with it.
pub fn write_dir_atomically(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into());
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)
        .map_err(|e| Error::Msg(format!("cannot create {}: {e}", parent.display())))?;
    let tmp = parent.join(format!(".{name}.tmp"));
    let io =
        |what: &str, p: &Path, e: std::io::Error| Error::Msg(format!("cannot {what} {}: {e}", p.display()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| io("remove", &tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| io("create", &tmp, e))?;
    fill(&tmp)?;
    if dir.exists() {
        let old = parent.join(format!(".{name}.old"));
        let _ = std::fs::remove_dir_all(&old);
        std::fs::rename(dir, &old).map_err(|e| io("replace", dir, e))?;
        std::fs::rename(&tmp, dir).map_err(|e| io("write", dir, e))?;
        std::fs::remove_dir_all(&old).map_err(|e| io("remove", &old, e))
    } else {
        std::fs::rename(&tmp, dir).map_err(|e| io("write", dir, e))
    }
}
