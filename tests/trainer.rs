//! The GKD trainer on tiny random models: the loss against an independent computation, the
//! reduction over micro-batches, exact resume, and the errors a user can hit.

mod common;

use common::reference::naive;
use gkd::data::{arithmetic, Example, Tokenizer};
use gkd::distill::trainer::{check_same_tokenizer, encode_examples, Objective, TrainConfig, Trainer};
use gkd::distill::Divergence;
use gkd::generate::Sampler;
use gkd::model::{Arch, FreshConfig, Model, ModelConfig};
use gkd::optim::adamw::AdamWConfig;
use gkd::optim::schedule::ScheduleKind;
use gkd::Tensor;
use std::path::PathBuf;

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gkd-trainer-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn tokenizer() -> Tokenizer {
    Tokenizer::load(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama")).unwrap()
}

fn model(tok: &Tokenizer, hidden: usize, layers: usize, seed: u64) -> Model {
    // A padded embedding: logit columns past the tokenizer's vocabulary are ignored.
    model_padded(tok, hidden, layers, seed, 7)
}

fn model_padded(tok: &Tokenizer, hidden: usize, layers: usize, seed: u64, padding: usize) -> Model {
    let cfg = ModelConfig::fresh(FreshConfig {
        arch: Arch::Llama,
        vocab_size: tok.vocab_size() + padding,
        hidden_size: hidden,
        num_layers: layers,
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

fn config(objective: Objective, lambda: f64) -> TrainConfig {
    TrainConfig {
        objective,
        divergence: Divergence::Jsd { beta: 0.5 },
        lambda,
        seq_kd: false,
        loss_temperature: 1.0,
        sampler: Sampler::default(),
        max_new_tokens: 12,
        steps: 4,
        batch_size: 2,
        grad_accum: 2,
        lr: 1e-3,
        warmup: 1,
        schedule: ScheduleKind::Cosine { min_lr_ratio: 0.0 },
        adamw: AdamWConfig::default(),
        max_grad_norm: 1.0,
        seed: 7,
    }
}

fn data(n: usize) -> Vec<Example> {
    // Short completions keep the tests fast.
    arithmetic::generate_examples(n, 3)
        .into_iter()
        .map(|e| Example::new(e.prompt, e.completion.unwrap().chars().take(20).collect::<String>()))
        .collect()
}

/// SFT with lr = 0: the step's loss is −Σ ln p(completion token) ÷ (completion tokens of all
/// micro-batches), computed here from `Model::logprobs` independently of the trainer.
#[test]
fn sft_loss_is_token_mean_over_the_whole_step() {
    let tok = tokenizer();
    // Unpadded, so that `Model::logprobs` (over every column) is the reference.
    let student = model_padded(&tok, 16, 1, 1, 0);
    let examples = data(4);
    let mut cfg = config(Objective::Sft, 0.0);
    cfg.lr = 0.0;
    cfg.steps = 1;
    let reference_model = model_padded(&tok, 16, 1, 1, 0);
    let mut t = Trainer::new(cfg, student, None, &tok, &examples).unwrap();
    let out = t.step().unwrap();
    // The step used all four examples (2 micro-batches of 2), in the seeded order: any order gives
    // the same mean when all are used.
    let enc = encode_examples(&tok, &examples, 256, true).unwrap();
    let (mut sum, mut n) = (0.0, 0usize);
    for e in &enc {
        let c = e.completion.as_ref().unwrap();
        let seq: Vec<u32> = e.prompt.iter().chain(c).copied().collect();
        let lp = &reference_model.logprobs(&[seq]).unwrap()[0];
        sum -= lp[e.prompt.len() - 1..].iter().sum::<f64>();
        n += c.len();
    }
    assert_eq!(out.tokens as usize, n);
    let want = sum / n as f64;
    assert!((out.loss - want).abs() < 1e-5 * want, "{} vs {want}", out.loss);
    // lr = 0 leaves the weights unchanged.
    for (a, b) in t.student.tensors().unwrap().iter().zip(reference_model.tensors().unwrap()) {
        assert_eq!(a.to_vec_f32().unwrap(), b.to_vec_f32().unwrap());
    }
}

#[test]
fn sft_reduces_the_loss() {
    let tok = tokenizer();
    let examples = data(4);
    let mut cfg = config(Objective::Sft, 0.0);
    cfg.lr = 1e-2;
    cfg.steps = 30;
    cfg.schedule = ScheduleKind::Constant;
    let mut t = Trainer::new(cfg, model(&tok, 16, 1, 1), None, &tok, &examples).unwrap();
    let first = t.step().unwrap().loss;
    let mut last = first;
    for _ in 1..30 {
        last = t.step().unwrap().loss;
    }
    assert!(last < 0.5 * first, "loss {first} → {last}");
}

/// A student identical to its teacher has divergence 0 and gets no update.
#[test]
fn identical_student_and_teacher_give_zero_loss() {
    let tok = tokenizer();
    let teacher = model(&tok, 16, 1, 5);
    let mut t =
        Trainer::new(config(Objective::Distill, 0.5), model(&tok, 16, 1, 5), Some(&teacher), &tok, &data(4))
            .unwrap();
    for _ in 0..2 {
        let o = t.step().unwrap();
        assert!(o.loss.abs() < 1e-6, "loss {}", o.loss);
        assert!(o.grad_norm < 1e-5, "grad norm {}", o.grad_norm);
    }
}

/// λ draws: λ = 1 always samples the student, λ = 0 never, seq-KD samples the teacher.
#[test]
fn lambda_selects_the_source() {
    use gkd::metrics::Source;
    let tok = tokenizer();
    let teacher = model(&tok, 16, 1, 5);
    for (lambda, seq_kd, want) in
        [(1.0, false, Source::Student), (0.0, false, Source::Dataset), (0.0, true, Source::Teacher)]
    {
        let mut cfg = config(Objective::Distill, lambda);
        cfg.seq_kd = seq_kd;
        let mut t = Trainer::new(cfg, model(&tok, 16, 1, 6), Some(&teacher), &tok, &data(4)).unwrap();
        for _ in 0..2 {
            let o = t.step().unwrap();
            assert_eq!(o.source, want);
            assert!(o.loss.is_finite() && o.loss > 0.0);
            if want != Source::Dataset {
                assert!(o.mean_completion_len <= 12.0);
            }
        }
    }
    // λ = 0.5: the draw decides, and is logged.
    let mut t =
        Trainer::new(config(Objective::Distill, 0.5), model(&tok, 16, 1, 6), Some(&teacher), &tok, &data(4))
            .unwrap();
    for _ in 0..4 {
        let o = t.step().unwrap();
        assert_eq!(o.source == Source::Student, o.u <= 0.5);
    }
}

/// A run stopped after 2 steps and resumed from its checkpoint logs the same losses as a run
/// that never stopped (mixed λ: sampling, data order and the λ draws all continue).
#[test]
fn resume_continues_exactly() {
    let tok = tokenizer();
    let teacher = model(&tok, 16, 1, 5);
    let examples = data(6);
    let cfg = config(Objective::Distill, 0.5);
    let mut full = Trainer::new(cfg.clone(), model(&tok, 16, 1, 6), Some(&teacher), &tok, &examples).unwrap();
    let want: Vec<f64> = (0..4).map(|_| full.step().unwrap().loss).collect();

    let dir = scratch("resume");
    let ck = dir.join("checkpoint-2");
    let mut first =
        Trainer::new(cfg.clone(), model(&tok, 16, 1, 6), Some(&teacher), &tok, &examples).unwrap();
    let mut got: Vec<f64> = (0..2).map(|_| first.step().unwrap().loss).collect();
    first.save_checkpoint(&ck).unwrap();
    drop(first);
    let student = Model::load(&ck).unwrap();
    let mut resumed = Trainer::new(cfg, student, Some(&teacher), &tok, &examples).unwrap();
    resumed.restore(&ck).unwrap();
    assert_eq!(resumed.state.step, 2);
    got.extend((0..2).map(|_| resumed.step().unwrap().loss));
    assert_eq!(got, want);
    for (a, b) in resumed.student.tensors().unwrap().iter().zip(full.student.tensors().unwrap()) {
        assert_eq!(a.to_vec_f32().unwrap(), b.to_vec_f32().unwrap());
    }
}

/// A NaN loss stops the step without touching the weights; the checkpoint taken before stays loadable.
#[test]
fn nan_loss_is_an_error_and_keeps_the_checkpoint() {
    let tok = tokenizer();
    let teacher = model(&tok, 16, 1, 5);
    let mut t =
        Trainer::new(config(Objective::Distill, 0.0), model(&tok, 16, 1, 6), Some(&teacher), &tok, &data(4))
            .unwrap();
    t.step().unwrap();
    let dir = scratch("nan");
    let ck = dir.join("checkpoint-1");
    t.save_checkpoint(&ck).unwrap();
    let names = t.student.names().to_vec();
    for (name, x) in names.iter().zip(t.student.tensors().unwrap()) {
        let nan = Tensor::from_vec(vec![f32::NAN; x.numel()], x.dims().to_vec()).unwrap();
        t.student.params_mut().set(name, &nan).unwrap();
    }
    let err = t.step().unwrap_err().to_string();
    assert!(err.contains("NaN") && err.contains("diverged"), "{err}");
    assert_eq!(t.state.step, 1, "a failed step is not counted");
    let back = Model::load(&ck).unwrap();
    assert!(back.tensors().unwrap()[0].to_vec_f32().unwrap().iter().all(|x| x.is_finite()));
}

#[test]
fn errors_a_user_can_hit() {
    let tok = tokenizer();
    let teacher = model(&tok, 16, 1, 5);
    let make = |cfg: TrainConfig, ex: &[Example]| {
        Trainer::new(cfg, model(&tok, 16, 1, 6), Some(&teacher), &tok, ex).err().map(|e| e.to_string())
    };
    // Empty dataset.
    let e = make(config(Objective::Distill, 0.0), &[]).unwrap();
    assert!(e.contains("no examples"), "{e}");
    // A missing completion when the run trains on the dataset's completions (λ < 1, no seq-KD)…
    let e = make(config(Objective::Distill, 0.5), &[Example::prompt_only("2 + 2 = ?")]).unwrap();
    assert!(e.contains("no completion") && e.contains("--lambda 1"), "{e}");
    // …but prompts alone are enough on-policy.
    assert!(make(config(Objective::Distill, 1.0), &[Example::prompt_only("2 + 2 = ?")]).is_none());
    // A prompt longer than the context.
    let long = Example::new("x".repeat(300), "y");
    let e = make(config(Objective::Distill, 0.0), &[long]).unwrap();
    assert!(e.contains("the prompt is") && e.contains("context is 256"), "{e}");
    // Tokenizers that differ.
    let dir = scratch("tok");
    let mut json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama/tokenizer.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let vocab = json["model"]["vocab"].as_object_mut().unwrap();
    let (k, v) = vocab.iter().nth(10).map(|(k, v)| (k.clone(), v.clone())).unwrap();
    vocab.remove(&k);
    vocab.insert(format!("{k}zz"), v);
    std::fs::write(dir.join("tokenizer.json"), json.to_string()).unwrap();
    let other = Tokenizer::load(&dir).unwrap();
    let e = check_same_tokenizer(&tok, &other).unwrap_err().to_string();
    assert!(e.contains("must share one tokenizer"), "{e}");
    check_same_tokenizer(&tok, &tokenizer()).unwrap();
    // Out-of-range options.
    let e = make(config(Objective::Distill, 1.5), &data(2)).unwrap();
    assert!(e.contains("lambda"), "{e}");
}

/// The model's logits in f64: an f64 copy of its weights, the forward, the output head.
fn logits_f64(m: &Model, seq: &[u32]) -> Vec<Vec<f64>> {
    use gkd::autograd::Tape;
    use gkd::model::TokenBatch;
    let named = m
        .names()
        .iter()
        .cloned()
        .zip(m.tensors().unwrap().iter().map(|t| t.to_dtype(gkd::DType::F64).unwrap()))
        .collect();
    let m64 = Model::from_tensors(m.config.clone(), named).unwrap();
    let mut tape = Tape::no_grad();
    let p = m64.bind(&mut tape, false).unwrap();
    let batch = TokenBatch::new(&[seq.to_vec()]).unwrap();
    let h = m64.forward(&mut tape, &p, &mut batch.inputs(gkd::Device::Cpu).unwrap()).unwrap();
    let z = m64.logits(&mut tape, &p, &h).unwrap().value().to_vec_f64().unwrap();
    z.chunks(m.config.vocab_size).map(<[f64]>::to_vec).collect()
}

/// The first step's loss through the trainer's whole path (teacher hidden states, the fused
/// heads and divergence in chunks, the token mean over the step's micro-batches) against the
/// divergence of DESIGN.md in f64 (tests/common/reference.rs) over logits from the models' own
/// forward, over the tokenizer's vocabulary only (the models carry 7 padding rows).
#[test]
fn distillation_loss_matches_an_f64_formula() {
    let tok = tokenizer();
    let v = tok.vocab_size();
    let teacher = model(&tok, 24, 2, 5);
    let examples = data(4);
    let enc = encode_examples(&tok, &examples, 256, true).unwrap();
    let tau = 1.3;
    for div in
        [Divergence::Jsd { beta: 0.5 }, Divergence::ReverseKl, Divergence::SkewForwardKl { alpha: 0.3 }]
    {
        let mut cfg = config(Objective::Distill, 0.0);
        (cfg.lr, cfg.steps, cfg.divergence, cfg.loss_temperature) = (0.0, 1, div, tau);
        let student = model(&tok, 16, 1, 6);
        let mut t = Trainer::new(cfg, student, Some(&teacher), &tok, &examples).unwrap();
        let got = t.step().unwrap().loss;
        // All four examples form the step (2 micro-batches of 2): the order does not matter.
        let (mut sum, mut n) = (0.0, 0usize);
        for e in &enc {
            let c = e.completion.as_ref().unwrap();
            let seq: Vec<u32> = e.prompt.iter().chain(&c[..c.len() - 1]).copied().collect();
            let (zs, zt) = (logits_f64(&t.student, &seq), logits_f64(&teacher, &seq));
            for i in 0..c.len() {
                let r = e.prompt.len() - 1 + i;
                sum += naive(div, tau, &zs[r][..v], &zt[r][..v]);
            }
            n += c.len();
        }
        let want = sum / n as f64;
        assert!(want > 1e-3, "{div}: a degenerate case (loss {want})");
        // f32 log-probabilities near log 100 (these near-uniform random models) are off by up to
        // ~2 ulp(4.6) = 1e-6, which a token's loss sees once through Σ p·(log p − log m): 2e-6
        // absolute, beside 1e-5 relative for the rest.
        let tol = 1e-5 * want + 2e-6;
        assert!((got - want).abs() <= tol, "{div}: trainer loss {got} vs the f64 formula {want}");
    }
}
