//! On-policy distillation trains on exactly what the student sampled: one λ = 1 step's loss and
//! updated weights equal those of a λ = 0 step whose dataset is the completions that step drew —
//! drawn here independently with the step's own sampling configuration, some ended by EOS and some
//! cut at `--max-new-tokens`, and kept exactly (no EOS added to the cut ones). Their
//! log-probabilities are `gkd score`'s. A trainer that dropped or appended a token, shifted the
//! completion against its rows, or sampled with another seed or length would fail.

use gkd::data::{read_jsonl, Example, Tokenizer};
use gkd::distill::trainer::{Encoded, Objective, TrainConfig, Trainer};
use gkd::distill::Divergence;
use gkd::generate::{generate, Sampler};
use gkd::metrics::Source;
use gkd::model::Model;
use gkd::optim::adamw::AdamWConfig;
use gkd::optim::schedule::ScheduleKind;
use std::path::PathBuf;

fn demo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/arithmetic")
}

fn config(lambda: f64, max_new_tokens: usize, batch_size: usize) -> TrainConfig {
    TrainConfig {
        objective: Objective::Distill,
        divergence: Divergence::Jsd { beta: 0.5 },
        lambda,
        seq_kd: false,
        loss_temperature: 1.0,
        sampler: Sampler::default(),
        max_new_tokens,
        steps: 1,
        batch_size,
        grad_accum: 1,
        lr: 1e-3,
        warmup: 0,
        schedule: ScheduleKind::Constant,
        adamw: AdamWConfig::default(),
        max_grad_norm: 1.0,
        seed: 7,
    }
}

fn weights(m: &Model) -> Vec<f32> {
    m.tensors().unwrap().iter().flat_map(|t| t.to_vec_f32().unwrap()).collect()
}

#[test]
fn an_on_policy_step_equals_a_supervised_step_on_its_own_samples() {
    let tok = Tokenizer::load(&demo().join("student")).unwrap();
    let eos = tok.eos.clone();
    assert!(!eos.is_empty(), "the demo tokenizer has an EOS token");
    let mut examples: Vec<Example> = read_jsonl(&demo().join("train.jsonl"), true).unwrap();
    examples.truncate(8);
    let n = examples.len();
    let teacher = Model::load(&demo().join("teacher")).unwrap();
    let student = || Model::load(&demo().join("student")).unwrap();
    let prompts: Vec<Vec<u32>> = examples.iter().map(|e| tok.encode(&e.prompt, true).unwrap()).collect();
    let start = weights(&student());

    // A length at which some samples end with EOS and others are cut.
    let mut found = None;
    for max_new in [12, 16, 20, 24, 32, 40, 48, 64] {
        let on = Trainer::new(config(1.0, max_new, n), student(), Some(&teacher), &tok, &examples).unwrap();
        let cfg = on.sampling_config(&prompts, 0);
        let samples = generate(&student(), &prompts, &cfg).unwrap();
        let stopped = samples.iter().filter(|c| c.stopped).count();
        if stopped > 0 && stopped < n {
            found = Some((on, cfg, samples));
            break;
        }
    }
    let (mut on, cfg, samples) = found.expect("some length gives both EOS-ended and cut samples");
    for (p, c) in prompts.iter().zip(&samples) {
        assert_eq!(c.stopped, eos.contains(c.ids.last().unwrap()));
        assert!(
            c.stopped || c.ids.len() == cfg.max_new_tokens,
            "a sample ended without EOS before the limit"
        );
        assert!(!c.ids[..c.ids.len() - 1].iter().any(|t| eos.contains(t)), "EOS inside a sample");
        let full: Vec<u32> = p.iter().chain(&c.ids).copied().collect();
        let scored = student().logprobs(&[full]).unwrap().remove(0);
        for (i, lp) in c.logprobs.iter().enumerate() {
            let want = scored[p.len() - 1 + i];
            assert!((lp - want).abs() < 1e-5, "sample token {i}: log-probability {lp} vs score's {want}");
        }
    }

    let o_on = on.step().unwrap();
    let tokens: usize = samples.iter().map(|c| c.ids.len()).sum();
    assert_eq!((o_on.source, o_on.tokens), (Source::Student, tokens as u64));

    let data: Vec<Encoded> = prompts
        .iter()
        .zip(&samples)
        .map(|(p, c)| Encoded { prompt: p.clone(), completion: Some(c.ids.clone()) })
        .collect();
    let sup_cfg = config(0.0, cfg.max_new_tokens, n);
    let mut sup =
        Trainer::new(sup_cfg, student(), Some(&teacher), &tok, &examples).unwrap().with_data(data).unwrap();
    let o_sup = sup.step().unwrap();
    assert_eq!((o_sup.source, o_sup.tokens), (Source::Dataset, tokens as u64));
    // The same rows in another order (the dataset's shuffle): equal up to summation order.
    let rel = (o_on.loss - o_sup.loss).abs() / o_sup.loss.abs();
    assert!(
        rel < 1e-6,
        "on-policy loss {} vs supervised on its samples {} ({rel:.1e})",
        o_on.loss,
        o_sup.loss
    );
    let (a, b) = (weights(&on.student), weights(&sup.student));
    let moved = a.iter().zip(&start).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    let diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    // AdamW's first step moves each weight by about lr = 1e-3; the two runs' gradients differ
    // by summation order only (~1e-7 relative), so their updates agree far below that.
    assert!(moved > 1e-4, "the step did not move the weights ({moved})");
    assert!(diff < 1e-6, "the updated weights differ by {diff}");
}
