//! Distillation on the GPU against the CPU, on the bundled demo teacher and student: the first
//! step's loss for every divergence and every mode (on-policy, mixed, supervised KD, seq-KD, SFT)
//! in f32 mode, and 20 steps in bf16 following the CPU's f32 losses. Every test prints SKIPPED
//! without a GPU.
//!
//! f32 mode: the GPU's logits and losses differ from the CPU's by summation order only (~1e-6
//! relative, see tests/cuda_train.rs), and its samples are the CPU's (the sampler's draw depends
//! only on the logits, the seed, the prompt and the position; a token flips only at a near-tie of
//! two perturbed logits, ~1e-5 per token): so the step trains on the same tokens and its loss
//! agrees to 1e-5 relative. A wrong term (a sign, a missing temperature, a shifted row) moves it
//! by O(1).

mod common;

use common::cuda_or_skip;
use gkd::data::{read_jsonl, Example, Tokenizer};
use gkd::distill::trainer::{Objective, StepOutcome, TrainConfig, Trainer};
use gkd::distill::Divergence;
use gkd::generate::Sampler;
use gkd::model::Model;
use gkd::optim::adamw::AdamWConfig;
use gkd::optim::schedule::ScheduleKind;
use gkd::{DType, Device};
use std::path::PathBuf;

fn demo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/arithmetic")
}

fn config(
    objective: Objective,
    divergence: Divergence,
    lambda: f64,
    seq_kd: bool,
    steps: u64,
) -> TrainConfig {
    TrainConfig {
        objective,
        divergence,
        lambda,
        seq_kd,
        loss_temperature: 1.0,
        sampler: Sampler::default(),
        max_new_tokens: 24,
        steps,
        batch_size: 4,
        grad_accum: 2,
        lr: 1e-3,
        warmup: 0,
        schedule: ScheduleKind::Constant,
        adamw: AdamWConfig::default(),
        max_grad_norm: 1.0,
        seed: 5,
    }
}

/// `steps` steps of the demo distillation on `device` in `dtype`.
fn run(cfg: TrainConfig, device: Device, dtype: DType) -> Vec<StepOutcome> {
    let tok = Tokenizer::load(&demo().join("student")).unwrap();
    let examples: Vec<Example> = read_jsonl(&demo().join("train.jsonl"), true).unwrap();
    let teacher = Model::load(&demo().join("teacher")).unwrap().to_compute(device, dtype, false).unwrap();
    let student = Model::load(&demo().join("student")).unwrap().to_compute(device, dtype, true).unwrap();
    let teacher = (cfg.objective == Objective::Distill).then_some(&teacher);
    let steps = cfg.steps;
    let mut t = Trainer::new(cfg, student, teacher, &tok, &examples).unwrap();
    (0..steps).map(|_| t.step().unwrap()).collect()
}

#[test]
fn first_step_loss_equals_the_cpu_for_every_divergence_and_mode() {
    let Some(dev) = cuda_or_skip("cuda_distill::first_step_loss_equals_the_cpu") else { return };
    let gpu = Device::Cuda(dev.ordinal());
    let divergences = [
        Divergence::ForwardKl,
        Divergence::ReverseKl,
        Divergence::Jsd { beta: 0.5 },
        Divergence::Jsd { beta: 0.1 },
        Divergence::Tvd,
        Divergence::SkewForwardKl { alpha: 0.1 },
        Divergence::SkewReverseKl { alpha: 0.1 },
    ];
    let mut cases: Vec<(String, TrainConfig)> = Vec::new();
    for d in divergences {
        cases.push((format!("on-policy {d}"), config(Objective::Distill, d, 1.0, false, 1)));
    }
    let jsd = Divergence::Jsd { beta: 0.5 };
    cases.push(("supervised KD".into(), config(Objective::Distill, jsd, 0.0, false, 1)));
    cases.push(("seq-KD".into(), config(Objective::Distill, jsd, 0.0, true, 1)));
    cases.push(("mixed".into(), config(Objective::Distill, jsd, 0.5, false, 1)));
    cases.push(("SFT".into(), config(Objective::Sft, jsd, 0.0, false, 1)));
    for (name, cfg) in cases {
        let c = run(cfg.clone(), Device::Cpu, DType::F32).remove(0);
        let g = run(cfg, gpu, DType::F32).remove(0);
        assert_eq!((g.source, g.tokens), (c.source, c.tokens), "{name}: the step's source and token count");
        let rel = (g.loss - c.loss).abs() / c.loss.abs().max(1e-12);
        assert!(rel <= 1e-5, "{name}: GPU loss {} vs CPU {} ({rel:.1e})", g.loss, c.loss);
        assert!(g.peak_memory.is_some() && g.phases.optimizer > 0.0, "{name}: the GPU step's metrics");
    }
}

/// 20 supervised-KD steps (the dataset's completions, so both runs train on the same tokens
/// throughout) in bf16 on the GPU against f32 on the CPU: each step's loss within 5% relative
/// (bf16 rounding moves a step's loss by ~1e-2 and the trajectories drift apart slowly through the
/// updates; a broken backward, head or optimizer departs by far more within a few steps). Then 5
/// on-policy steps in f32 mode, whose samples stay the CPU's as the weights move: 1e-4.
#[test]
fn twenty_demo_steps_follow_the_cpu() {
    let Some(dev) = cuda_or_skip("cuda_distill::twenty_demo_steps_follow_the_cpu") else { return };
    let gpu = Device::Cuda(dev.ordinal());
    let jsd = Divergence::Jsd { beta: 0.5 };
    let cfg = config(Objective::Distill, jsd, 0.0, false, 20);
    let (c, g) = (run(cfg.clone(), Device::Cpu, DType::F32), run(cfg, gpu, DType::BF16));
    for (i, (x, y)) in g.iter().zip(&c).enumerate() {
        assert!(
            (x.loss - y.loss).abs() <= 0.05 * y.loss.abs(),
            "step {}: GPU {} vs CPU {}",
            i + 1,
            x.loss,
            y.loss
        );
    }
    let cfg = config(Objective::Distill, jsd, 1.0, false, 5);
    let (c, g) = (run(cfg.clone(), Device::Cpu, DType::F32), run(cfg, gpu, DType::F32));
    for (i, (x, y)) in g.iter().zip(&c).enumerate() {
        assert_eq!(x.tokens, y.tokens, "on-policy step {}: sampled token count", i + 1);
        assert!(
            (x.loss - y.loss).abs() <= 1e-4 * y.loss.abs(),
            "on-policy step {}: {} vs {}",
            i + 1,
            x.loss,
            y.loss
        );
    }
}

/// On the GPU in bf16, a mixed run stopped after 2 steps and resumed from its checkpoint (f32
/// masters and moments written, the bf16 weights rebuilt from the masters as the fused AdamW
/// rounds them) gives the same losses, bit for bit, as a run that never stopped.
#[test]
fn resume_on_the_gpu_continues_exactly() {
    let Some(dev) = cuda_or_skip("cuda_distill::resume_on_the_gpu_continues_exactly") else { return };
    let gpu = Device::Cuda(dev.ordinal());
    let cfg = config(Objective::Distill, Divergence::Jsd { beta: 0.5 }, 0.5, false, 4);
    let want: Vec<f64> = run(cfg.clone(), gpu, DType::BF16).iter().map(|o| o.loss).collect();

    let tok = Tokenizer::load(&demo().join("student")).unwrap();
    let examples: Vec<Example> = read_jsonl(&demo().join("train.jsonl"), true).unwrap();
    let teacher = Model::load(&demo().join("teacher")).unwrap().to_compute(gpu, DType::BF16, false).unwrap();
    let student = Model::load(&demo().join("student")).unwrap().to_compute(gpu, DType::BF16, true).unwrap();
    let ck = std::env::temp_dir().join(format!("gkd-cuda-distill-resume-{}", std::process::id()));
    let mut first = Trainer::new(cfg.clone(), student, Some(&teacher), &tok, &examples).unwrap();
    let mut got: Vec<f64> = (0..2).map(|_| first.step().unwrap().loss).collect();
    first.save_checkpoint(&ck).unwrap();
    drop(first);
    let student = Model::load(&ck).unwrap().to_compute(gpu, DType::BF16, true).unwrap();
    let mut resumed = Trainer::new(cfg, student, Some(&teacher), &tok, &examples).unwrap();
    resumed.restore(&ck).unwrap();
    got.extend((0..2).map(|_| resumed.step().unwrap().loss));
    let _ = std::fs::remove_dir_all(&ck);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g.to_bits(), w.to_bits(), "step {}: resumed {g} vs straight {w}", i + 1);
    }
}
