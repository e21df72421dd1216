//! The on-policy distillation workload of `gkd bench distill`: the TRL-equivalent step of
//! `../shared/anchors/gkd_anchor.py` with random-init student and teacher shapes made in memory.
//! Each step samples `new` tokens (T = 1, no stop token) after `batch` random `prompt`-token
//! prompts from the student's own current weights (the GPU decode loop), runs the teacher without
//! a tape, the student's forward, the fused output head + JSD(0.5) and the backward (the trainer's
//! own micro-batch function), then clipping and AdamW. Reports tokens/s over prompt and
//! completion of every sample (the anchor's count), seconds per phase, and peak device memory.

use super::train::TrainShape;
use crate::backend::Divergence;
use crate::distill::phases::{Phase, PhaseClock, PhaseTimes};
use crate::distill::trainer::{micro_batch_grads_timed, TeacherLoss};
use crate::error::{Error, Result};
use crate::generate::{generate, GenerateConfig, Sampler};
use crate::model::Model;
use crate::optim::adamw::{AdamW, AdamWConfig, ParamGroup};
use crate::optim::clip::GradClip;
use crate::tensor::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct DistillBench {
    pub student: TrainShape,
    pub teacher: TrainShape,
    pub names: (String, String),
    pub batch: usize,
    pub prompt: usize,
    pub new: usize,
    pub device: Device,
    pub dtype: DType,
    pub warmup: usize,
    pub steps: usize,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct DistillReport {
    pub student: String,
    pub teacher: String,
    pub device: String,
    pub dtype: String,
    pub student_params: usize,
    pub teacher_params: usize,
    pub batch: usize,
    pub prompt: usize,
    pub new: usize,
    /// Median step time over the timed steps, and each phase's median.
    pub step_s: f64,
    pub phases: PhaseTimes,
    /// batch · (prompt + new) / step_s.
    pub tokens_per_s: f64,
    pub losses: Vec<f64>,
    pub peak_memory_gib: Option<f64>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run(b: &DistillBench) -> Result<DistillReport> {
    if b.batch == 0 || b.prompt == 0 || b.new == 0 || b.steps == 0 {
        return Err(Error::Msg("the benchmark needs --batch, --prompt, --new and --steps ≥ 1".into()));
    }
    let length = b.prompt + b.new;
    let (sc, tc) = (b.student.config(length)?, b.teacher.config(length)?);
    if sc.vocab_size != tc.vocab_size {
        return Err(Error::Msg(format!(
            "the student's vocabulary ({}) differs from the teacher's ({}): pick shapes of one family",
            sc.vocab_size, tc.vocab_size
        )));
    }
    let vocab = sc.vocab_size;
    let student = Model::init(sc, 0)?.to_compute(b.device, b.dtype, true)?;
    let teacher = Model::init(tc, 1)?.to_compute(b.device, b.dtype, false)?;
    let mut student = student;
    let mut rng = StdRng::seed_from_u64(2);
    let prompts: Vec<Vec<u32>> =
        (0..b.batch).map(|_| (0..b.prompt).map(|_| rng.random_range(0..vocab as u32)).collect()).collect();
    let groups: Vec<ParamGroup> = student
        .params()
        .decay_groups()
        .into_iter()
        .map(|(range, decay)| ParamGroup { range, decay })
        .collect();
    let mut grads = Tensor::zeros([student.num_params()], DType::F32, b.device)?;
    let mut opt = AdamW::new(AdamWConfig::default())?;
    let clip = GradClip::new(1.0)?;
    let t = TeacherLoss { model: &teacher, divergence: Divergence::Jsd { beta: 0.5 }, temperature: 1.0 };
    let mut step = |student: &mut Model, i: usize| -> Result<(f64, f64, PhaseTimes)> {
        let t0 = Instant::now();
        let mut clock = PhaseClock::on(b.device);
        clock.start()?;
        let cfg = GenerateConfig::new(b.new, Sampler::default(), i as u64, vec![]);
        let out = generate(student, &prompts, &cfg)?;
        clock.lap(Phase::Sampling)?;
        let pairs: Vec<(Vec<u32>, Vec<u32>)> =
            prompts.iter().cloned().zip(out.into_iter().map(|c| c.ids)).collect();
        let tokens: usize = pairs.iter().map(|(_, c)| c.len()).sum();
        grads.fill_(0.0)?;
        let loss = micro_batch_grads_timed(
            student,
            Some(t),
            vocab,
            &pairs,
            1.0 / tokens as f64,
            &mut grads,
            &mut clock,
        )?;
        clip.clip(&mut grads)?;
        let (master, compute) = student.params_mut().optimizer_buffers();
        opt.step(master, &grads, &groups, 1e-5, compute)?;
        clock.lap(Phase::Optimizer)?;
        Ok((loss, t0.elapsed().as_secs_f64(), clock.times))
    };
    let mut losses = Vec::new();
    for i in 0..b.warmup {
        losses.push(step(&mut student, i)?.0);
    }
    b.device.reset_peak_memory()?;
    let mut runs = Vec::new();
    for i in 0..b.steps {
        let (loss, s, p) = step(&mut student, b.warmup + i)?;
        losses.push(loss);
        runs.push((s, p));
    }
    let med = |f: &dyn Fn(&PhaseTimes) -> f64| median(runs.iter().map(|(_, p)| f(p)).collect());
    let phases = PhaseTimes {
        sampling: med(&|p| p.sampling),
        teacher: med(&|p| p.teacher),
        student_forward: med(&|p| p.student_forward),
        loss: med(&|p| p.loss),
        backward: med(&|p| p.backward),
        optimizer: med(&|p| p.optimizer),
    };
    let step_s = median(runs.iter().map(|r| r.0).collect());
    Ok(DistillReport {
        student: b.names.0.clone(),
        teacher: b.names.1.clone(),
        device: b.device.to_string(),
        dtype: b.dtype.to_string(),
        student_params: student.num_params(),
        teacher_params: teacher.num_params(),
        batch: b.batch,
        prompt: b.prompt,
        new: b.new,
        step_s,
        phases,
        tokens_per_s: (b.batch * length) as f64 / step_s,
        losses,
        peak_memory_gib: b.device.peak_memory()?.map(|x| x as f64 / (1u64 << 30) as f64),
    })
}
