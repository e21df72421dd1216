//! RL + GKD (the GKD paper's Eq. 5): a reward term by policy gradient beside the distillation
//! term, both on the student's own samples.
//!
//! Per step, B prompts, each sampled K = `samples_per_prompt` times from the student (on-policy,
//! with the configured sampler), giving completions y_s (s over the B·K samples, each ending at EOS
//! or `max_new_tokens`) and rewards r_s. Advantage A_s = r_s − mean of r over the K samples of the
//! same prompt (the per-prompt baseline). With T = total completion tokens of the step and
//! α = `distill_weight` (the weight of the distillation term):
//!
//!   L = (1/T) Σ_s Σ_{t ∈ y_s} [ α · D(p_T ‖ p_S)(· | x, y_{s,<t}) − (1 − α) · A_s · ln p_S(y_{s,t} | x, y_{s,<t}) ]
//!
//! whose gradient is (1 − α)·(−E[A ∇ ln p(y)]) + α·∇GKD, i.e. it maximizes (1 − α)·E[r] − α·E[D]
//! (per token). No gradient flows through sampling or through A.
//!
//! The policy-gradient term is a weighted cross-entropy on the sampled tokens (d/dlogits of
//! −A·ln p(y) = A·(softmax − onehot(y))): the fused output head's cross-entropy with the row
//! weight (1 − α)·A_s on every token of sample s (`LinearLossTarget::WeightedTokens`, no
//! (tokens × vocab) buffer); the divergence is a second fused-head call on the same student
//! hidden rows at scale α/T, and the tape adds the two gradients. ln p_S is over every row of the
//! student's head, embedding padding included: the distribution the samples were drawn from (the
//! divergence, as in GKD, compares the first `vocab` logits, those the tokenizer can produce).
//!
//! Rules: every RL step is on the student's samples, so λ must be 1 and seq-KD off; K ≥ 2 when
//! α < 1 (with K = 1 the baseline cancels every reward); α = 1 runs exactly the GKD step (the same
//! code, no policy-gradient work; the rewards are still computed, for the metrics); α = 0 never
//! runs the teacher.

use super::phases::{Phase, PhaseClock};
use super::reward::Reward;
use super::trainer::{Objective, TeacherLoss, TrainConfig};
use crate::autograd::{LinearLoss, LinearLossTarget, LossKind, Tape};
use crate::error::{Error, Result};
use crate::model::{Model, TokenBatch};
use crate::tensor::{CpuStorage, DType, Tensor};

#[derive(Clone, Debug)]
pub struct RlConfig {
    /// α ∈ [0, 1]: the weight of the distillation term; 1 − α weighs the reward's.
    pub distill_weight: f64,
    /// K: samples of each prompt per step (the baseline is their mean reward).
    pub samples_per_prompt: usize,
    pub reward: Reward,
}

impl RlConfig {
    /// The rules of the module documentation, against the trainer's configuration.
    pub fn validate(&self, cfg: &TrainConfig) -> Result<()> {
        let bad = |m: String| Err(Error::Msg(m));
        let a = self.distill_weight;
        if !(0.0..=1.0).contains(&a) {
            return bad(format!(
                "--distill-weight must be in [0, 1] (1: pure GKD, 0: pure policy gradient on the reward), got {a}"
            ));
        }
        if self.samples_per_prompt == 0 {
            return bad("--samples-per-prompt must be at least 1".into());
        }
        if a < 1.0 && self.samples_per_prompt < 2 {
            return bad(format!(
                "--distill-weight {a} trains on the reward with a per-prompt baseline (the mean reward of the prompt's samples), which needs --samples-per-prompt of at least 2: with 1 sample every advantage is 0"
            ));
        }
        if cfg.objective != Objective::Distill {
            return bad("RL + GKD runs on the distillation trainer".into());
        }
        if cfg.lambda != 1.0 || cfg.seq_kd {
            return bad(format!(
                "RL + GKD trains on the student's own samples at every step: it needs --lambda 1 (the default with --distill-weight) and no --seq-kd; got λ = {}{}",
                cfg.lambda,
                if cfg.seq_kd { " with --seq-kd" } else { "" }
            ));
        }
        Ok(())
    }
}

/// Forward and backward of one micro-batch of RL + GKD with α < 1: (prompt, sampled completion)
/// pairs, the advantage A_s of each, α = `distill_weight`, `teacher` given iff α > 0 (it is run
/// only then); `vocab`: the logits the divergence compares. Adds d(loss)/d(params) into `grads` (f32, laid out like the student's parameter
/// buffer), the loss being `scale` · Σ over the completion tokens of the module's summand (scale =
/// 1/T); returns (that loss, its distillation part, its policy-gradient part).
#[allow(clippy::too_many_arguments)]
pub fn rl_micro_batch_grads(
    student: &Model,
    teacher: Option<TeacherLoss<'_>>,
    vocab: usize,
    pairs: &[(Vec<u32>, Vec<u32>)],
    advantages: &[f64],
    distill_weight: f64,
    scale: f64,
    grads: &mut Tensor,
) -> Result<(f64, f64, f64)> {
    let mut clock = PhaseClock::off();
    rl_micro_batch_grads_timed(
        student,
        teacher,
        vocab,
        pairs,
        advantages,
        distill_weight,
        scale,
        grads,
        &mut clock,
    )
}

/// `rl_micro_batch_grads`, its phases timed on `clock` (the trainer's metrics).
#[allow(clippy::too_many_arguments)]
pub fn rl_micro_batch_grads_timed(
    student: &Model,
    teacher: Option<TeacherLoss<'_>>,
    vocab: usize,
    pairs: &[(Vec<u32>, Vec<u32>)],
    advantages: &[f64],
    distill_weight: f64,
    scale: f64,
    grads: &mut Tensor,
    clock: &mut PhaseClock,
) -> Result<(f64, f64, f64)> {
    if advantages.len() != pairs.len() {
        return Err(Error::Msg(format!(
            "RL micro-batch: {} advantages for {} samples",
            advantages.len(),
            pairs.len()
        )));
    }
    if (distill_weight > 0.0) != teacher.is_some() {
        return Err(Error::Msg(format!(
            "RL micro-batch: α = {distill_weight} {} the teacher",
            if teacher.is_some() { "does not use" } else { "needs" }
        )));
    }
    // Input: prompt + completion[..c−1]; row p−1+i predicts completion[i] (as in GKD's step).
    let seqs: Vec<Vec<u32>> =
        pairs.iter().map(|(p, c)| p.iter().chain(&c[..c.len() - 1]).copied().collect()).collect();
    let batch = TokenBatch::new(&seqs)?;
    let (mut rows, mut targets, mut weights) = (Vec::new(), Vec::new(), Vec::new());
    for (b, (p, c)) in pairs.iter().enumerate() {
        let w = ((1.0 - distill_weight) * advantages[b]) as f32;
        for (i, &y) in c.iter().enumerate() {
            rows.push(batch.row(b, p.len() - 1 + i) as u32);
            targets.push(y);
            weights.push(w);
        }
    }
    let device = student.device();
    let rows = Tensor::from_u32(&rows, device)?;
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
    let mut losses = Vec::with_capacity(2);
    let mut distill = 0.0;
    if let Some((th, tw, t)) = &teacher_rows {
        let spec = LinearLoss {
            kind: LossKind::Divergence { divergence: t.divergence, temperature: t.temperature },
            vocab,
            scale: distill_weight * scale,
            chunk_rows: 0,
        };
        let (l, _) = tape.linear_loss(&h, head, LinearLossTarget::Teacher { hidden: th, head: tw }, &spec)?;
        distill = l.value().scalar()?;
        losses.push(l);
    }
    let targets = Tensor::from_u32(&targets, device)?;
    let weights = Tensor::from_host(CpuStorage::F32(weights), [targets.numel()], device)?;
    let policy_vocab = student.config.vocab_size;
    let spec = LinearLoss { kind: LossKind::CrossEntropy, vocab: policy_vocab, scale, chunk_rows: 0 };
    let target = LinearLossTarget::WeightedTokens { targets: &targets, weights: &weights };
    let (pg, _) = tape.linear_loss(&h, head, target, &spec)?;
    let policy = pg.value().scalar()?;
    losses.push(pg);
    clock.lap(Phase::Loss)?;
    let seeds = losses
        .iter()
        .map(|l| Ok((l, Tensor::full([1], 1.0, l.value().dtype(), device)?)))
        .collect::<Result<Vec<_>>>()?;
    let g = tape.backward_many(seeds)?;
    for (entry, var) in student.params().entries().iter().zip(params.vars()) {
        match g.get(var) {
            Some(t) if t.dtype() == DType::F32 => grads.add_at(entry.offset, t)?,
            Some(t) => grads.add_at(entry.offset, &t.to_dtype(DType::F32)?)?,
            None => {}
        }
    }
    clock.lap(Phase::Backward)?;
    Ok((distill + policy, distill, policy))
}
