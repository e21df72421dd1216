//! RL + GKD (src/distill/rl.rs) on tiny random models: the policy-gradient term against a closed
//! form computed here in f64 from the logits, α = 1 ≡ GKD bit for bit, α = 0 ≡ pure policy
//! gradient with the teacher never run, the per-prompt baseline, the rules and the reward
//! functions with every failure mode of a reward program.

use gkd::autograd::Tape;
use gkd::data::{arithmetic, Example, Tokenizer};
use gkd::distill::reward::{advantages, mean_std, Reward, RewardInput};
use gkd::distill::rl::{rl_micro_batch_grads, RlConfig};
use gkd::distill::trainer::{micro_batch_grads, Objective, TeacherLoss, TrainConfig, Trainer};
use gkd::distill::Divergence;
use gkd::generate::Sampler;
use gkd::model::{Arch, FreshConfig, Model, ModelConfig, TokenBatch};
use gkd::optim::adamw::AdamWConfig;
use gkd::optim::schedule::ScheduleKind;
use gkd::tensor::DType;
use gkd::Tensor;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gkd-rl-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn tokenizer() -> Tokenizer {
    Tokenizer::load(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama")).unwrap()
}

/// A one-layer Llama over the fixture tokenizer, its embedding padded by 7 rows (logit columns
/// past the vocabulary are ignored), with its own output head.
fn model(tok: &Tokenizer, hidden: usize, seed: u64) -> Model {
    let cfg = ModelConfig::fresh(FreshConfig {
        arch: Arch::Llama,
        vocab_size: tok.vocab_size() + 7,
        hidden_size: hidden,
        num_layers: 1,
        num_heads: 2,
        num_kv_heads: 2,
        intermediate_size: 2 * hidden,
        max_position_embeddings: 256,
        rope_theta: 10000.0,
        tie_word_embeddings: false,
        bos_token_id: tok.bos,
        eos_token_ids: tok.eos.clone(),
        pad_token_id: tok.pad,
    })
    .unwrap();
    Model::init(cfg, seed).unwrap()
}

fn config(steps: u64) -> TrainConfig {
    TrainConfig {
        objective: Objective::Distill,
        divergence: Divergence::Jsd { beta: 0.5 },
        lambda: 1.0,
        seq_kd: false,
        loss_temperature: 1.0,
        sampler: Sampler::default(),
        max_new_tokens: 6,
        steps,
        batch_size: 2,
        grad_accum: 2,
        lr: 1e-2,
        warmup: 0,
        schedule: ScheduleKind::Constant,
        adamw: AdamWConfig::default(),
        max_grad_norm: 1.0,
        seed: 11,
    }
}

fn data(n: usize) -> Vec<Example> {
    arithmetic::generate_examples(n, 3)
        .into_iter()
        .map(|e| Example::new(e.prompt, e.completion.unwrap().chars().take(12).collect::<String>()))
        .collect()
}

/// An executable sh script `name` in `dir`.
fn script(dir: &Path, name: &str, body: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p.to_str().unwrap().to_string()
}

fn cmd(program: &str, timeout_s: f64) -> Reward {
    Reward::parse(&format!("cmd:{program}"), timeout_s).unwrap()
}

fn rl(distill_weight: f64, k: usize, reward: Reward) -> RlConfig {
    RlConfig { distill_weight, samples_per_prompt: k, reward }
}

fn params(m: &Model) -> Vec<f32> {
    m.params().master().to_vec_f32().unwrap()
}

// ---- the policy-gradient term against its closed form ---------------------------------------

/// −(1 − α)·scale·Σ_s A_s·Σ_t ln p(y_{s,t}) and its gradient with respect to the output head
/// (all Vh × H of it: the policy samples every row, padding included), in f64 from the student's
/// final hidden states h:
///   ∂/∂z_{s,t} = (1 − α)·scale·A_s·(softmax(z) − onehot(y)),   ∂/∂W_v = Σ_{s,t} ∂/∂z_v · h.
fn closed_form(
    student: &Model,
    pairs: &[(Vec<u32>, Vec<u32>)],
    adv: &[f64],
    alpha: f64,
    scale: f64,
) -> (f64, Vec<f64>) {
    let seqs: Vec<Vec<u32>> =
        pairs.iter().map(|(p, c)| p.iter().chain(&c[..c.len() - 1]).copied().collect()).collect();
    let batch = TokenBatch::new(&seqs).unwrap();
    let mut tape = Tape::no_grad();
    let p = student.bind(&mut tape, false).unwrap();
    let h = student.forward(&mut tape, &p, &mut batch.inputs(student.device()).unwrap()).unwrap();
    let hv = h.value().to_vec_f64().unwrap();
    let w = student.get(student.lm_head_name()).unwrap().to_vec_f64().unwrap();
    let (dim, vocab) = (student.config.hidden_size, student.config.vocab_size);
    let (mut loss, mut dw) = (0.0, vec![0.0; vocab * dim]);
    for (b, (pr, c)) in pairs.iter().enumerate() {
        for (i, &y) in c.iter().enumerate() {
            let row = batch.row(b, pr.len() - 1 + i);
            let hr = &hv[row * dim..(row + 1) * dim];
            let z: Vec<f64> =
                (0..vocab).map(|v| (0..dim).map(|k| hr[k] * w[v * dim + k]).sum::<f64>()).collect();
            let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + z.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
            let c0 = (1.0 - alpha) * scale * adv[b];
            loss -= c0 * (z[y as usize] - lse);
            for v in 0..vocab {
                let g = c0 * ((z[v] - lse).exp() - if v == y as usize { 1.0 } else { 0.0 });
                for k in 0..dim {
                    dw[v * dim + k] += g * hr[k];
                }
            }
        }
    }
    (loss, dw)
}

/// The head's part of a flat gradient buffer.
fn head_grad(student: &Model, grads: &Tensor) -> Vec<f64> {
    let e = student.params().entries().iter().find(|e| e.name == student.lm_head_name()).unwrap();
    grads.to_vec_f64().unwrap()[e.range()].to_vec()
}

/// One-token completions whose reward depends on the token: r(y) = (y mod 5) + y/100. With α = 0
/// the step's loss and head gradient are the policy gradient's closed form; with α = 0.4 the
/// total minus the GKD term at weight α (computed by GKD's own micro-batch) is (1 − α)·that.
#[test]
fn policy_gradient_matches_its_closed_form() {
    let tok = tokenizer();
    let (student, teacher) = (model(&tok, 16, 1), model(&tok, 24, 2));
    let vocab = tok.vocab_size();
    let prompts =
        [tok.encode("What is 3 + 4?\n", true).unwrap(), tok.encode("Sum 12 and 9:\n", true).unwrap()];
    // K = 3 samples of each prompt, distinct tokens (and one two-token sample), so A ≠ 0.
    // 303 is an embedding-padding row: the sampler draws those too, so the policy covers them.
    let samples: [&[u32]; 6] = [&[40], &[57], &[91, 60], &[33], &[303], &[77]];
    let pairs: Vec<(Vec<u32>, Vec<u32>)> =
        samples.iter().enumerate().map(|(s, c)| (prompts[s / 3].clone(), c.to_vec())).collect();
    let rewards: Vec<f64> = samples.iter().map(|c| (c[0] % 5) as f64 + c[0] as f64 / 100.0).collect();
    let adv = advantages(&rewards, 3);
    assert!(adv.iter().all(|a| a.abs() > 0.05), "advantages {adv:?}");
    let tokens: usize = samples.iter().map(|c| c.len()).sum();
    let scale = 1.0 / tokens as f64;
    let zeros = || Tensor::zeros([student.num_params()], DType::F32, student.device()).unwrap();

    for alpha in [0.0, 0.4] {
        let mut g = zeros();
        let t = (alpha > 0.0).then_some(TeacherLoss {
            model: &teacher,
            divergence: Divergence::Jsd { beta: 0.5 },
            temperature: 1.0,
        });
        let (loss, distill, pg) =
            rl_micro_batch_grads(&student, t, vocab, &pairs, &adv, alpha, scale, &mut g).unwrap();
        let (want_loss, want_dw) = closed_form(&student, &pairs, &adv, alpha, scale);
        let mut got = head_grad(&student, &g);
        if let Some(t) = t {
            // Subtract GKD's own gradient at weight α: what is left is the policy gradient's.
            let mut gd = zeros();
            let d = micro_batch_grads(&student, Some(t), vocab, &pairs, alpha * scale, &mut gd).unwrap();
            assert!((distill - d).abs() <= 1e-6 * d.abs(), "distillation part {distill} vs GKD's {d}");
            for (x, y) in got.iter_mut().zip(head_grad(&student, &gd)) {
                *x -= y;
            }
        } else {
            assert_eq!(distill, 0.0);
        }
        assert!((loss - distill - pg).abs() < 1e-12);
        // f32 (weights, logits, the fused chunk loop) against f64: ~1e-6 relative of the largest
        // entry; a wrong sign, a missing (1 − α) or a wrong baseline is off by O(1).
        assert!(
            (pg - want_loss).abs() <= 1e-5 * want_loss.abs().max(1e-3),
            "α {alpha}: loss {pg} vs {want_loss}"
        );
        let big = want_dw.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        assert!(big > 1e-3, "the closed form's gradient is too small to test: {big}");
        for (i, (a, b)) in got.iter().zip(&want_dw).enumerate() {
            assert!((a - b).abs() <= 2e-5 * big, "α {alpha}: d head[{i}] {a} vs {b} (largest {big})");
        }
    }
}

/// A reward that does not depend on the sample has A = 0 everywhere: no policy gradient at all.
#[test]
fn constant_rewards_give_no_policy_gradient() {
    let tok = tokenizer();
    let student = model(&tok, 16, 1);
    let p = tok.encode("What is 3 + 4?\n", true).unwrap();
    let pairs: Vec<(Vec<u32>, Vec<u32>)> =
        [40u32, 57, 91, 33].iter().map(|&y| (p.clone(), vec![y, 5])).collect();
    // Two prompts' worth of samples with different constant rewards: only a per-prompt baseline
    // cancels both (a step-wide mean would leave ±0.5).
    let adv = advantages(&[0.7, 0.7, 1.7, 1.7], 2);
    assert_eq!(adv, vec![0.0; 4]);
    let mut g = Tensor::zeros([student.num_params()], DType::F32, student.device()).unwrap();
    let (loss, _, pg) =
        rl_micro_batch_grads(&student, None, tok.vocab_size(), &pairs, &adv, 0.0, 0.125, &mut g).unwrap();
    assert_eq!((loss, pg), (0.0, 0.0));
    assert!(g.to_vec_f32().unwrap().iter().all(|&x| x == 0.0));
}

/// The same through the trainer: a reward that depends only on the prompt (here its length) gives
/// zero gradients, so AdamW leaves every weight exactly where it was; a reward that depends on the
/// sample moves them.
#[test]
fn prompt_only_reward_leaves_the_student_unchanged() {
    let dir = scratch("baseline");
    let tok = tokenizer();
    let teacher = model(&tok, 24, 2);
    // JSON lines are {"prompt":…,"completion":…,"reference":…}: cut at the completion.
    let by_prompt =
        script(&dir, "prompt-len.sh", "sed 's/,\"completion\":.*//' | awk '{ print length($0) }'");
    let by_sample = script(&dir, "line-len.sh", "awk '{ print length($0) % 7 }'");
    for (program, moves) in [(by_prompt, false), (by_sample, true)] {
        // No weight decay: AdamW then leaves a weight with zero gradient exactly as it is.
        let mut cfg = config(2);
        cfg.adamw.weight_decay = 0.0;
        let t = Trainer::new(cfg, model(&tok, 16, 1), Some(&teacher), &tok, &data(4)).unwrap();
        let mut t = t.with_rl(rl(0.0, 3, cmd(&program, 30.0))).unwrap();
        let before = params(&t.student);
        for _ in 0..2 {
            let o = t.step().unwrap();
            let r = o.rl.unwrap();
            assert!(r.reward_mean > 0.0 && r.reward_std >= 0.0);
            assert_eq!(r.distill_loss, 0.0);
            assert_eq!(o.loss, r.pg_loss);
        }
        assert_eq!(params(&t.student) != before, moves, "{program}");
    }
}

// ---- α = 1 and α = 0 -------------------------------------------------------------------------

/// α = 1 is GKD (λ = 1): the same losses and weights bit for bit, the teacher run as often.
#[test]
fn distill_weight_one_is_gkd_bit_for_bit() {
    let tok = tokenizer();
    let teacher = model(&tok, 24, 2);
    let examples = data(6);
    let mut gkd = Trainer::new(config(3), model(&tok, 16, 1), Some(&teacher), &tok, &examples).unwrap();
    let t = Trainer::new(config(3), model(&tok, 16, 1), Some(&teacher), &tok, &examples).unwrap();
    let mut rlgkd = t.with_rl(rl(1.0, 1, Reward::ExactMatch)).unwrap();
    for _ in 0..3 {
        let (a, b) = (gkd.step().unwrap(), rlgkd.step().unwrap());
        assert_eq!(a.loss.to_bits(), b.loss.to_bits());
        assert_eq!(a.grad_norm.to_bits(), b.grad_norm.to_bits());
        assert_eq!(a.tokens, b.tokens);
        assert!(a.rl.is_none());
        let r = b.rl.unwrap();
        assert_eq!((r.pg_loss, r.distill_loss.to_bits()), (0.0, b.loss.to_bits()));
    }
    assert_eq!(params(&gkd.student), params(&rlgkd.student));
    assert_eq!(gkd.teacher_forwards(), rlgkd.teacher_forwards());
    assert_eq!(gkd.teacher_forwards(), 6);
}

/// α = 0 never runs the teacher: no teacher forward is counted, and two very different teachers
/// give bit-identical runs; the loss is the policy gradient's alone.
#[test]
fn distill_weight_zero_is_pure_policy_gradient() {
    let dir = scratch("alpha0");
    let tok = tokenizer();
    let reward = cmd(&script(&dir, "r.sh", "awk '{ print length($0) % 5 }'"), 30.0);
    let (t1, t2) = (model(&tok, 24, 2), model(&tok, 8, 9));
    let mut runs = Vec::new();
    for teacher in [&t1, &t2] {
        let t = Trainer::new(config(2), model(&tok, 16, 1), Some(teacher), &tok, &data(4)).unwrap();
        let mut t = t.with_rl(rl(0.0, 2, reward.clone())).unwrap();
        let losses: Vec<u64> = (0..2).map(|_| t.step().unwrap().loss.to_bits()).collect();
        assert_eq!(t.teacher_forwards(), 0);
        runs.push((losses, params(&t.student)));
    }
    assert_eq!(runs[0], runs[1]);
    // α = 0.5 does run it, once per micro-batch.
    let t = Trainer::new(config(1), model(&tok, 16, 1), Some(&t1), &tok, &data(4)).unwrap();
    let mut t = t.with_rl(rl(0.5, 2, reward)).unwrap();
    let o = t.step().unwrap();
    assert_eq!(t.teacher_forwards(), 2);
    let r = o.rl.unwrap();
    assert!(r.distill_loss > 0.0);
    assert!((o.loss - r.distill_loss - r.pg_loss).abs() < 1e-12);
}

/// An RL + GKD run stopped after 2 steps and resumed from its checkpoint logs the same losses and
/// rewards, and ends with the same weights, as one that never stopped (sampling, rewards and the
/// baseline are functions of the seed and the step).
#[test]
fn rl_resume_continues_exactly() {
    let dir = scratch("resume");
    let tok = tokenizer();
    let teacher = model(&tok, 24, 2);
    let examples = data(6);
    let reward = cmd(&script(&dir, "r.sh", "awk '{ print length($0) % 5 }'"), 30.0);
    let new = |student: Model| {
        let t = Trainer::new(config(4), student, Some(&teacher), &tok, &examples).unwrap();
        t.with_rl(rl(0.5, 2, reward.clone())).unwrap()
    };
    let outcome = |t: &mut Trainer| {
        let o = t.step().unwrap();
        (o.loss.to_bits(), o.rl.unwrap().reward_mean.to_bits())
    };
    let mut full = new(model(&tok, 16, 1));
    let want: Vec<_> = (0..4).map(|_| outcome(&mut full)).collect();
    let ck = dir.join("checkpoint-2");
    let mut first = new(model(&tok, 16, 1));
    let mut got: Vec<_> = (0..2).map(|_| outcome(&mut first)).collect();
    first.save_checkpoint(&ck).unwrap();
    drop(first);
    let mut resumed = new(Model::load(&ck).unwrap());
    resumed.restore(&ck).unwrap();
    got.extend((0..2).map(|_| outcome(&mut resumed)));
    assert_eq!(got, want);
    assert_eq!(params(&resumed.student), params(&full.student));
}

// ---- the rules ---------------------------------------------------------------------------------

#[test]
fn rules_are_clear_errors() {
    let tok = tokenizer();
    let teacher = model(&tok, 24, 2);
    let err = |cfg: TrainConfig, r: RlConfig, ex: &[Example]| {
        let t = Trainer::new(cfg, model(&tok, 16, 1), Some(&teacher), &tok, ex).unwrap();
        t.with_rl(r).err().expect("should be refused").to_string()
    };
    let e = err(config(1), rl(0.5, 1, Reward::ExactMatch), &data(4));
    assert!(e.contains("--samples-per-prompt of at least 2"), "{e}");
    let mut c = config(1);
    c.lambda = 0.5;
    let e = err(c, rl(0.5, 4, Reward::ExactMatch), &data(4));
    assert!(e.contains("--lambda 1"), "{e}");
    let mut c = config(1);
    c.seq_kd = true;
    let e = err(c, rl(1.0, 1, Reward::ExactMatch), &data(4));
    assert!(e.contains("--seq-kd"), "{e}");
    let e = err(config(1), rl(1.5, 4, Reward::ExactMatch), &data(4));
    assert!(e.contains("--distill-weight must be in [0, 1]"), "{e}");
    let mut ex = data(4);
    ex[2].completion = None;
    let e = err(config(1), rl(0.5, 4, Reward::ExactMatch), &ex);
    assert!(e.contains("example 3 (non-empty line 3") && e.contains("completion"), "{e}");
}

// ---- rewards -------------------------------------------------------------------------------------

fn inputs(pairs: &[(&str, &str)]) -> Vec<RewardInput> {
    pairs
        .iter()
        .map(|(c, r)| RewardInput {
            prompt: "What is 2 + 3?\n".into(),
            completion: c.to_string(),
            reference: r.to_string(),
        })
        .collect()
}

#[test]
fn built_in_rewards() {
    let x = inputs(&[
        ("2 + 3 = 5\n#### 5", "#### 5"),
        ("#### 6", "#### 5"),
        ("the cat sat on the mat", "the cat sat on the mat"),
        ("a b c d", "e f g h"),
    ]);
    assert_eq!(Reward::ExactMatch.score(&x).unwrap(), vec![1.0, 0.0, 1.0, 0.0]);
    let rouge = Reward::parse("rouge", 1.0).unwrap().score(&x).unwrap();
    assert!((rouge[2] - 1.0).abs() < 1e-12 && rouge[3] == 0.0, "{rouge:?}");
    // Tokens 2 3 5 5 against 5: LCS 1, precision 1/4, recall 1, F = 2·(1/4)/(5/4) = 0.4.
    assert!((rouge[0] - 0.4).abs() < 1e-12, "{rouge:?}");
    let bleu = Reward::parse("bleu", 1.0).unwrap().score(&x).unwrap();
    assert!((bleu[2] - 1.0).abs() < 1e-9 && bleu[3] < 0.05, "{bleu:?}");
    assert!(bleu.iter().all(|b| (0.0..=1.0).contains(b)));
    let e = Reward::parse("f1", 1.0).unwrap_err().to_string();
    assert!(e.contains("exact-match, rouge, bleu or cmd:PROGRAM"), "{e}");
    assert!(Reward::parse("cmd:", 1.0).unwrap_err().to_string().contains("needs a program"));
    assert!(Reward::parse("cmd:x", 0.0).unwrap_err().to_string().contains("--reward-timeout"));
    let want = [2.0 / 3.0, -1.0 / 3.0, -1.0 / 3.0, -2.0, 0.0, 2.0];
    for (a, b) in advantages(&[1.0, 0.0, 0.0, 0.0, 2.0, 4.0], 3).iter().zip(want) {
        assert!((a - b).abs() < 1e-15, "{a} vs {b}");
    }
    assert_eq!(mean_std(&[1.0, 3.0]), (2.0, 1.0));
}

/// A program reads every JSON line and answers one number per line, in order; its arguments are
/// split on whitespace.
#[test]
fn reward_program_scores_in_order() {
    let dir = scratch("program-ok");
    let p = script(&dir, "count.sh", "awk -v k=\"$1\" '{ print NR * k }'");
    let r = Reward::parse(&format!("cmd:{p} 0.5"), 10.0).unwrap();
    assert_eq!(r.score(&inputs(&[("a", "b"), ("c", "d"), ("e", "f")])).unwrap(), vec![0.5, 1.0, 1.5]);
    // What it reads: one JSON object per sample with the three fields.
    let echo = script(&dir, "fields.sh", &format!("cat > {}/seen.jsonl; echo 1", dir.display()));
    cmd(&echo, 10.0).score(&inputs(&[("x \"q\"", "#### 5")])).unwrap();
    let seen: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(dir.join("seen.jsonl")).unwrap().trim()).unwrap();
    assert_eq!(
        seen,
        serde_json::json!({"prompt": "What is 2 + 3?\n", "completion": "x \"q\"", "reference": "#### 5"})
    );
}

#[test]
fn reward_program_failures_name_cause_and_fix() {
    let dir = scratch("program-fail");
    let x = inputs(&[("a", "b"), ("c", "d")]);
    let fails = |r: Reward| r.score(&x).unwrap_err().to_string();

    let e = fails(cmd(dir.join("no-such-program").to_str().unwrap(), 10.0));
    assert!(e.contains("cannot be started") && e.contains("executable"), "{e}");

    let e = fails(cmd(&script(&dir, "crash.sh", "cat > /dev/null; echo 'bad model path' >&2; exit 3"), 10.0));
    assert!(e.contains("exited with status 3") && e.contains("bad model path"), "{e}");

    let start = Instant::now();
    let e = fails(cmd(&script(&dir, "slow.sh", "sleep 30; echo 1; echo 1"), 0.5));
    assert!(e.contains("ran past the reward timeout of 0.5 s") && e.contains("--reward-timeout"), "{e}");
    assert!(start.elapsed() < Duration::from_secs(10), "not killed in time: {:?}", start.elapsed());

    for (name, out, line) in
        [("word.sh", "1\\nhigh", "high"), ("nan.sh", "nan\\n1", "nan"), ("inf.sh", "1\\ninf", "inf")]
    {
        let e = fails(cmd(&script(&dir, name, &format!("cat > /dev/null; printf '{out}\\n'")), 10.0));
        let (no, sample) = if out.starts_with('1') { (2, 1) } else { (1, 0) };
        assert!(
            e.contains(&format!("`{line}` on line {no} (the reward of sample {sample}"))
                && e.contains("not a finite number"),
            "{e}"
        );
    }

    let e = fails(cmd(&script(&dir, "few.sh", "cat > /dev/null; echo 1"), 10.0));
    assert!(e.contains("wrote 1 lines for 2 samples"), "{e}");
    let e = fails(cmd(&script(&dir, "many.sh", "cat > /dev/null; printf '1\\n2\\n3\\n'"), 10.0));
    assert!(e.contains("wrote 3 lines for 2 samples"), "{e}");
}

// ---- the command line ------------------------------------------------------------------------------

fn gkd_cli(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gkd")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// `gkd distill --reward exact-match --distill-weight 0.5 --samples-per-prompt 4` on the bundled
/// arithmetic models: every step is on-policy and logs the reward's mean and spread.
#[test]
fn cli_rl_gkd_on_the_demo() {
    let dir = scratch("cli");
    let a = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/arithmetic");
    let s = |p: PathBuf| p.to_str().unwrap().to_string();
    let (teacher, student, train, out) =
        (s(a.join("teacher")), s(a.join("student")), s(a.join("train.jsonl")), s(dir.join("out")));
    let base = [
        "distill",
        "--teacher",
        &teacher,
        "--student",
        &student,
        "--data",
        &train,
        "--out",
        &out,
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--max-new-tokens",
        "40",
        "--quiet",
    ];
    let run = |extra: &[&str]| gkd_cli(&[&base[..], extra].concat());
    let (ok, err) = run(&["--reward", "exact-match", "--distill-weight", "0.5", "--samples-per-prompt", "4"]);
    assert!(ok, "{err}");
    assert!(
        err.contains("RL + GKD: distill weight α = 0.5, reward exact-match, 4 samples per prompt"),
        "{err}"
    );
    let metrics: Vec<serde_json::Value> = std::fs::read_to_string(dir.join("out/metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(metrics.len(), 2);
    for m in &metrics {
        assert_eq!(m["source"], "student");
        let (mean, std) = (m["reward_mean"].as_f64().unwrap(), m["reward_std"].as_f64().unwrap());
        assert!((0.0..=1.0).contains(&mean) && (0.0..=0.5).contains(&std), "{m}");
        let (d, pg, loss) = (
            m["distill_loss"].as_f64().unwrap(),
            m["pg_loss"].as_f64().unwrap(),
            m["loss"].as_f64().unwrap(),
        );
        assert!(d > 0.0 && (d + pg - loss).abs() < 1e-9, "{m}");
    }
    // The rules as a user meets them.
    let (ok, err) = run(&["--distill-weight", "0.5", "--samples-per-prompt", "1"]);
    assert!(!ok && err.contains("--samples-per-prompt of at least 2"), "{err}");
    let (ok, err) = run(&["--distill-weight", "0.5", "--lambda", "0.5"]);
    assert!(!ok && err.contains("--lambda 1"), "{err}");
    let (ok, err) = run(&["--reward", "cmd:/no/such/scorer"]);
    assert!(!ok && err.contains("cannot be started"), "{err}");
    // A line without a completion, named by its number.
    let partial = dir.join("partial.jsonl");
    std::fs::write(
        &partial,
        "{\"prompt\": \"1 + 1?\", \"completion\": \"#### 2\"}\n\n{\"prompt\": \"2 + 2?\"}\n",
    )
    .unwrap();
    let mut args = base.to_vec();
    args[6] = partial.to_str().unwrap();
    let (ok, err) = gkd_cli(&[&args[..], &["--distill-weight", "0.5"]].concat());
    assert!(
        !ok && err.contains("partial.jsonl:3: missing field \"completion\"") && err.contains("RL + GKD"),
        "{err}"
    );
    let (ok, err) = run(&["--reward-timeout", "5"]);
    assert!(!ok && err.contains("--reward-timeout applies to --reward cmd:PROGRAM"), "{err}");
    let (ok, help) = {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_gkd"))
            .args(["distill", "--help"])
            .output()
            .unwrap();
        (o.status.success(), String::from_utf8_lossy(&o.stdout).into_owned())
    };
    assert!(ok);
    for flag in ["--distill-weight", "--samples-per-prompt", "--reward", "--reward-timeout"] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}

/// Pure policy gradient learns: with a reward of ±(the count of the letter `e` in the decoded
/// completion), 40 steps raise the count (+) or lower it (−) from where it starts; a sign error
/// would move both the wrong way.
#[test]
fn policy_gradient_moves_the_reward() {
    let dir = scratch("learns");
    let tok = tokenizer();
    let teacher = model(&tok, 24, 2);
    // The completion's text out of the JSON line, then ± the number of e's in it.
    let body = |sign: &str| {
        format!("sed 's/.*\"completion\":\"//; s/\",\"reference\".*//' | awk '{{ print {sign}gsub(/e/, \"e\") }}'")
    };
    let mut counts = Vec::new();
    for (name, sign) in [("more.sh", ""), ("fewer.sh", "-")] {
        let reward = cmd(&script(&dir, name, &body(sign)), 30.0);
        let mut cfg = config(40);
        cfg.max_new_tokens = 8;
        cfg.grad_accum = 1;
        cfg.lr = 1e-2;
        let t = Trainer::new(cfg, model(&tok, 16, 1), Some(&teacher), &tok, &data(8)).unwrap();
        let mut t = t.with_rl(rl(0.0, 4, reward)).unwrap();
        let r: Vec<f64> = (0..40).map(|_| t.step().unwrap().rl.unwrap().reward_mean.abs()).collect();
        let (first, last) = (r[..8].iter().sum::<f64>() / 8.0, r[32..].iter().sum::<f64>() / 8.0);
        eprintln!("{name}: e's per sample, first 8 steps {first:.2}, last 8 {last:.2}");
        counts.push((first, last));
    }
    let ((up0, up1), (down0, down1)) = (counts[0], counts[1]);
    assert!(up1 > 1.5 * up0 && up1 > up0 + 0.5, "rewarding e's: {up0:.2} → {up1:.2} e's per sample");
    assert!(down1 < 0.6 * down0, "penalizing e's: {down0:.2} → {down1:.2} e's per sample");
}
