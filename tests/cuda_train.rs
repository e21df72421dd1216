//! Training on the GPU against the CPU reference: one step's loss and every parameter's gradient
//! on each fixture family (f32 mode, and bf16 mode within bf16's error), `gkd score`'s
//! log-probabilities, 50 SFT steps of the demo student, bit-identical losses from the same seed,
//! and no device allocation in steady-state steps. Every test prints SKIPPED without a GPU.

mod common;
mod model_common;

use common::cuda_or_skip;
use gkd::data::{read_jsonl, Example, Tokenizer};
use gkd::distill::trainer::{micro_batch_grads, Objective, TrainConfig, Trainer};
use gkd::distill::Divergence;
use gkd::generate::Sampler;
use gkd::model::Model;
use gkd::optim::adamw::AdamWConfig;
use gkd::optim::schedule::ScheduleKind;
use gkd::{DType, Device, Tensor};
use model_common::{fixture, reference, FAMILIES};
use std::path::PathBuf;

/// (prompt, completion) pairs from a fixture's reference sequences: the first token is the
/// prompt, so every other position is trained on.
fn pairs(family: &str) -> Vec<(Vec<u32>, Vec<u32>)> {
    reference(family)
        .sequences
        .iter()
        .filter(|s| s.len() >= 2)
        .map(|s| (s[..1].to_vec(), s[1..].to_vec()))
        .collect()
}

/// One SFT micro-batch's loss and flat f32 gradient of `model` placed on `device` in `dtype`.
fn loss_and_grads(
    model: &Model,
    device: Device,
    dtype: DType,
    pairs: &[(Vec<u32>, Vec<u32>)],
) -> (f64, Vec<f32>) {
    let m = model.to_compute(device, dtype, true).unwrap();
    let mut grads = Tensor::zeros([m.num_params()], DType::F32, device).unwrap();
    let tokens: usize = pairs.iter().map(|(_, c)| c.len()).sum();
    let loss =
        micro_batch_grads(&m, None, m.config.vocab_size, pairs, 1.0 / tokens as f64, &mut grads).unwrap();
    (loss, grads.to_vec_f32().unwrap())
}

/// ‖a − b‖ and ‖b‖ over one parameter's slice.
fn l2_diff_and_norm(a: &[f32], b: &[f32]) -> (f64, f64) {
    let (mut d, mut n) = (0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        d += (*x as f64 - *y as f64).powi(2);
        n += (*y as f64).powi(2);
    }
    (d.sqrt(), n.sqrt())
}

/// The loss and every parameter's gradient of one SFT step, GPU against CPU. f32 mode: cuBLAS
/// computes in f32 (no TF32), the kernels accumulate in f32, so only summation order differs:
/// relative errors ~1e-6; the bound 1e-4 (per parameter, in L2) leaves room for the orders and
/// still fails on any wrong term (a missing or sign-flipped contribution is O(1)). Each error is
/// relative to that parameter's gradient norm, floored at 1e-3 of the largest one: some gradients
/// are zero in exact arithmetic (the k-projection bias shifts every score of a row alike, and
/// softmax ignores that), so their computed values are rounding noise on both sides. bf16 mode:
/// weights, activations and gradients are rounded to 8 significant bits (2^-9 ≈ 2e-3 relative
/// per rounding) through two layers' chains of ~20 ops each, so errors reach ~1e-2: bound 6e-2
/// on each parameter's gradient and 2e-2 on the loss.
#[test]
fn one_sft_step_matches_the_cpu_on_every_family() {
    let Some(dev) = cuda_or_skip("cuda_train::one_sft_step_matches_the_cpu_on_every_family") else { return };
    let gpu = Device::Cuda(dev.ordinal());
    for family in FAMILIES {
        let model = Model::load(&fixture(family)).unwrap();
        let p = pairs(family);
        let (cpu_loss, cpu_g) = loss_and_grads(&model, Device::Cpu, DType::F32, &p);
        for (dtype, loss_tol, grad_tol) in [(DType::F32, 1e-5, 1e-4), (DType::BF16, 2e-2, 6e-2)] {
            let (loss, g) = loss_and_grads(&model, gpu, dtype, &p);
            let rel = (loss - cpu_loss).abs() / cpu_loss.abs();
            assert!(rel <= loss_tol, "{family} {dtype}: loss {loss} vs the CPU's {cpu_loss} ({rel:.1e})");
            let entries = model.params().entries();
            let largest = entries
                .iter()
                .map(|e| l2_diff_and_norm(&cpu_g[e.range()], &cpu_g[e.range()]).1)
                .fold(0.0, f64::max);
            assert!(largest > 0.0, "{family}: no gradient at all");
            for e in entries {
                let (diff, norm) = l2_diff_and_norm(&g[e.range()], &cpu_g[e.range()]);
                let err = diff / norm.max(1e-3 * largest);
                assert!(err <= grad_tol, "{family} {dtype}: d {} off by {err:.1e} (relative L2)", e.name);
            }
        }
    }
}

/// `gkd score` on the GPU: the fixtures' reference sequences, against the CPU's log-probabilities
/// (within 1e-5 in f32, 2e-2 in bf16, of max(|log p|, 1)).
#[test]
fn scores_match_the_cpu_on_every_family() {
    let Some(dev) = cuda_or_skip("cuda_train::scores_match_the_cpu_on_every_family") else { return };
    for family in FAMILIES {
        let model = Model::load(&fixture(family)).unwrap();
        let seqs = reference(family).sequences;
        let want = model.logprobs(&seqs).unwrap();
        for (dtype, tol) in [(DType::F32, 1e-5), (DType::BF16, 2e-2)] {
            let m = model.to_compute(Device::Cuda(dev.ordinal()), dtype, false).unwrap();
            let got = m.logprobs(&seqs).unwrap();
            let err = got
                .iter()
                .flatten()
                .zip(want.iter().flatten())
                .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
                .fold(0.0, f64::max);
            assert!(err <= tol, "{family} {dtype}: log-probabilities off by {err:.1e}");
        }
    }
}

fn demo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/arithmetic")
}

fn sft_config(steps: u64) -> TrainConfig {
    TrainConfig {
        objective: Objective::Sft,
        divergence: Divergence::ForwardKl,
        lambda: 0.0,
        seq_kd: false,
        loss_temperature: 1.0,
        sampler: Sampler::default(),
        max_new_tokens: 16,
        steps,
        batch_size: 8,
        grad_accum: 1,
        lr: 1e-3,
        warmup: 0,
        schedule: ScheduleKind::Constant,
        adamw: AdamWConfig::default(),
        max_grad_norm: 1.0,
        seed: 3,
    }
}

/// The losses of `steps` SFT steps on the demo data, on `device` in `dtype`, of a fresh model of
/// the demo student's configuration (the bundled student is already fine-tuned: its loss would
/// barely move).
fn demo_losses(device: Device, dtype: DType, steps: u64) -> Vec<f64> {
    let dir = demo_dir().join("student");
    let tok = Tokenizer::load(&dir).unwrap();
    let examples: Vec<Example> = read_jsonl(&demo_dir().join("train.jsonl"), true).unwrap();
    let config = Model::load(&dir).unwrap().config;
    let model = Model::init(config, 7).unwrap().to_compute(device, dtype, true).unwrap();
    let mut t = Trainer::new(sft_config(steps), model, None, &tok, &examples).unwrap();
    (0..steps).map(|_| t.step().unwrap().loss).collect()
}

/// The CPU half of the comparison below, which runs everywhere: 50 SFT steps from a fresh model
/// more than halve the loss, so a GPU run that does not learn cannot follow the curve.
#[test]
fn fifty_demo_sft_steps_learn_on_the_cpu() {
    let cpu = demo_losses(Device::Cpu, DType::F32, 50);
    assert!(cpu[49] < 0.5 * cpu[0], "the CPU run does not learn: {} → {}", cpu[0], cpu[49]);
}

/// 50 SFT steps of a fresh demo-sized student: the GPU's bf16 loss curve follows the CPU's f32
/// one. Each step's loss within 5% relative: bf16 rounding moves a step's loss by ~1e-2 (see
/// above), and the trajectories drift apart slowly through the updates; a broken backward or
/// optimizer departs by far more within a few steps (the loss more than halves in these steps).
#[test]
fn fifty_demo_sft_steps_follow_the_cpu() {
    let Some(dev) = cuda_or_skip("cuda_train::fifty_demo_sft_steps_follow_the_cpu") else { return };
    let cpu = demo_losses(Device::Cpu, DType::F32, 50);
    let gpu = demo_losses(Device::Cuda(dev.ordinal()), DType::BF16, 50);
    for (i, (g, c)) in gpu.iter().zip(&cpu).enumerate() {
        assert!((g - c).abs() <= 0.05 * c.abs(), "step {}: GPU loss {g} vs CPU {c}", i + 1);
    }
}

/// The same seed on the same GPU gives bit-identical losses over 20 steps (no floating-point
/// atomics anywhere in the step).
#[test]
fn twenty_steps_are_bit_identical() {
    let Some(dev) = cuda_or_skip("cuda_train::twenty_steps_are_bit_identical") else { return };
    let gpu = Device::Cuda(dev.ordinal());
    let a = demo_losses(gpu, DType::BF16, 20);
    let b = demo_losses(gpu, DType::BF16, 20);
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert_eq!(x.to_bits(), y.to_bits(), "step {}: {x} vs {y}", i + 1);
    }
}

/// Steady-state steps take no memory from the driver: the pool keeps what step 2 freed, and
/// steps 3.. reuse it (the reserved bytes do not grow).
#[test]
fn steady_state_steps_allocate_nothing() {
    let Some(dev) = cuda_or_skip("cuda_train::steady_state_steps_allocate_nothing") else { return };
    let dir = demo_dir().join("student");
    let tok = Tokenizer::load(&dir).unwrap();
    let examples: Vec<Example> = read_jsonl(&demo_dir().join("train.jsonl"), true).unwrap();
    let model =
        Model::load(&dir).unwrap().to_compute(Device::Cuda(dev.ordinal()), DType::BF16, true).unwrap();
    let mut cfg = sft_config(6);
    // Every step the same batch shape: the dataset's first 8 examples, repeated.
    cfg.batch_size = examples.len().min(8);
    let examples: Vec<Example> = examples.into_iter().take(cfg.batch_size).collect();
    let mut t = Trainer::new(cfg, model, None, &tok, &examples).unwrap();
    t.step().unwrap();
    t.step().unwrap();
    let before = dev.memory().unwrap();
    for _ in 0..3 {
        t.step().unwrap();
    }
    let after = dev.memory().unwrap();
    assert!(before.reserved > 0, "the memory pool reports nothing: {before:?}");
    assert_eq!(after.reserved, before.reserved, "steady-state steps grew the pool: {before:?} → {after:?}");
}
