//! Saving and initializing: a saved model reloads to the same numbers (single file, shards,
//! bf16), `Model::init` is seeded, and gradients flow through the taped forward of every family
//! (finite differences in f64).

mod model_common;

use gkd::autograd::Tape;
use gkd::backend::ops::IGNORE;
use gkd::model::{Arch, FreshConfig, Model, ModelConfig, TokenBatch};
use gkd::{DType, Device, Tensor};
use model_common::{fixture, max_abs_diff, reference, scratch, FAMILIES};

#[test]
fn save_then_load_gives_the_same_model() {
    for name in FAMILIES {
        let model = Model::load(&fixture(name)).unwrap();
        let seqs = reference(name).sequences;
        let before = model.logprobs(&seqs).unwrap();
        // f32 in shards of at most 16 KiB: bit-identical weights.
        let dir = scratch(&format!("save-{name}"));
        model.save_sharded(&dir, DType::F32, Some(16 << 10)).unwrap();
        assert!(dir.join("model.safetensors.index.json").exists());
        let back = Model::load(&dir).unwrap();
        assert_eq!(back.names(), model.names());
        for (a, b) in back.tensors().unwrap().iter().zip(model.tensors().unwrap()) {
            assert_eq!(a.to_vec_f32().unwrap(), b.to_vec_f32().unwrap());
        }
        assert_eq!(back.logprobs(&seqs).unwrap(), before);
        // bf16: every weight rounded to 8 significant bits, nothing else.
        let dir16 = scratch(&format!("save16-{name}"));
        model.save(&dir16, DType::BF16).unwrap();
        let back = Model::load(&dir16).unwrap();
        assert!(!dir16.join("model.safetensors.index.json").exists());
        for (a, b) in back.tensors().unwrap().iter().zip(model.tensors().unwrap()) {
            let want = b.to_dtype(DType::BF16).unwrap().to_vec_f32().unwrap();
            assert_eq!(a.to_vec_f32().unwrap(), want);
        }
        let cfg = std::fs::read_to_string(dir16.join("config.json")).unwrap();
        assert!(cfg.contains("bfloat16"), "{cfg}");
    }
}

#[test]
fn gpt2_keeps_the_conv1d_layout_and_a_tied_head_is_written_once() {
    let model = Model::load(&fixture("gpt2")).unwrap();
    let dir = scratch("layout");
    model.save(&dir, DType::F32).unwrap();
    let ck = gkd::model::checkpoint::Checkpoint::open(&dir).unwrap();
    assert_eq!(ck.shape("transformer.h.0.attn.c_attn.weight"), Some(&[32usize, 96][..]));
    assert_eq!(ck.shape("transformer.h.1.mlp.c_fc.weight"), Some(&[32usize, 128][..]));
    assert!(!ck.contains("lm_head.weight"));
}

fn fresh(arch: Arch) -> ModelConfig {
    ModelConfig::fresh(FreshConfig {
        arch,
        vocab_size: 40,
        hidden_size: 16,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: if arch == Arch::Gpt2 { 4 } else { 2 },
        intermediate_size: 24,
        max_position_embeddings: 32,
        rope_theta: 10000.0,
        tie_word_embeddings: arch == Arch::Gpt2,
        bos_token_id: Some(0),
        eos_token_ids: vec![1],
        pad_token_id: None,
    })
    .unwrap()
}

#[test]
fn init_is_seeded_and_follows_transformers_init() {
    let a = Model::init(fresh(Arch::Llama), 3).unwrap();
    let b = Model::init(fresh(Arch::Llama), 3).unwrap();
    let c = Model::init(fresh(Arch::Llama), 4).unwrap();
    let w = |m: &Model, n: &str| m.get(n).unwrap().to_vec_f32().unwrap();
    assert_eq!(w(&a, "model.embed_tokens.weight"), w(&b, "model.embed_tokens.weight"));
    assert_ne!(w(&a, "model.embed_tokens.weight"), w(&c, "model.embed_tokens.weight"));
    assert!(w(&a, "model.norm.weight").iter().all(|&x| x == 1.0));
    let e = w(&a, "model.embed_tokens.weight");
    let std = (e.iter().map(|x| (x * x) as f64).sum::<f64>() / e.len() as f64).sqrt();
    assert!((std - 0.02).abs() < 0.003, "embedding std {std}");
    let q = Model::init(fresh(Arch::Qwen2), 0).unwrap();
    assert!(
        q.get("model.layers.0.self_attn.q_proj.bias").is_ok()
            && q.get("model.layers.0.self_attn.o_proj.bias").is_err()
    );
    let e = ModelConfig::fresh(FreshConfig { num_kv_heads: 3, ..fresh_args(Arch::Llama) })
        .unwrap_err()
        .to_string();
    assert!(e.contains("4 attention heads") && e.contains("3 key/value heads"), "{e}");
}

fn fresh_args(arch: Arch) -> FreshConfig {
    let c = fresh(arch);
    FreshConfig {
        arch,
        vocab_size: c.vocab_size,
        hidden_size: c.hidden_size,
        num_layers: c.num_layers,
        num_heads: c.num_heads,
        num_kv_heads: c.num_kv_heads,
        intermediate_size: c.intermediate_size,
        max_position_embeddings: c.max_position_embeddings,
        rope_theta: c.rope_theta,
        tie_word_embeddings: c.tie_word_embeddings,
        bos_token_id: c.bos_token_id,
        eos_token_ids: c.eos_token_ids,
        pad_token_id: c.pad_token_id,
    }
}

/// Mean cross-entropy of a padded batch in f64, and its gradient with respect to every parameter.
fn loss_and_grads(model: &Model, seqs: &[Vec<u32>]) -> (f64, Vec<Tensor>) {
    let batch = TokenBatch::new(seqs).unwrap();
    let mut targets = vec![IGNORE; batch.rows()];
    for (b, s) in seqs.iter().enumerate() {
        for t in 0..s.len() - 1 {
            targets[batch.row(b, t)] = s[t + 1];
        }
    }
    let counted = targets.iter().filter(|&&t| t != IGNORE).count();
    let mut tape = Tape::new();
    let p = model.bind(&mut tape, true).unwrap();
    let h = model.forward(&mut tape, &p, &mut batch.inputs(Device::Cpu).unwrap()).unwrap();
    let logits = model.logits(&mut tape, &p, &h).unwrap();
    let targets = Tensor::from_u32(&targets, Device::Cpu).unwrap();
    let (loss, _) = tape.cross_entropy(&logits, &targets, 1.0 / counted as f64).unwrap();
    let value = loss.value().scalar().unwrap();
    let mut grads = tape.backward(&loss).unwrap();
    let g = p.vars().iter().map(|v| grads.take(v).expect("every parameter gets a gradient")).collect();
    (value, g)
}

#[test]
fn gradients_match_finite_differences() {
    for arch in Arch::ALL {
        let f32_model = Model::init(fresh(arch), 9).unwrap();
        // Larger weights than the 0.02 init, so that every path carries signal.
        let tensors: Vec<(String, Tensor)> = f32_model
            .names()
            .iter()
            .zip(f32_model.tensors().unwrap())
            .enumerate()
            .map(|(i, (n, t))| {
                let v: Vec<f64> = t
                    .to_vec_f64()
                    .unwrap()
                    .iter()
                    .enumerate()
                    .map(|(j, x)| x * 20.0 + 0.05 * (((i * 31 + j * 17) % 13) as f64 - 6.0) / 6.0)
                    .collect();
                (n.clone(), Tensor::from_vec(v, t.dims().to_vec()).unwrap())
            })
            .collect();
        let cfg = f32_model.config.clone();
        let model = Model::from_tensors(cfg.clone(), tensors.clone()).unwrap();
        let seqs = vec![vec![0u32, 5, 9, 13, 2, 7], vec![3u32, 8, 1]];
        let (_, grads) = loss_and_grads(&model, &seqs);
        let mut worst = 0.0f64;
        for (i, (name, t)) in tensors.iter().enumerate() {
            // One element per parameter, perturbed both ways.
            let j = (i * 7) % t.numel();
            let h = 1e-5;
            let bump = |d: f64| {
                let mut ts = tensors.clone();
                let mut v = t.to_vec_f64().unwrap();
                v[j] += d;
                ts[i].1 = Tensor::from_vec(v, t.dims().to_vec()).unwrap();
                loss_and_grads(&Model::from_tensors(cfg.clone(), ts).unwrap(), &seqs).0
            };
            let numeric = (bump(h) - bump(-h)) / (2.0 * h);
            let analytic = grads[i].to_vec_f64().unwrap()[j];
            let err = (numeric - analytic).abs() / analytic.abs().max(1e-3);
            assert!(err < 1e-4, "{arch} {name}[{j}]: analytic {analytic:e}, numeric {numeric:e}");
            worst = worst.max(err);
        }
        eprintln!("{arch}: worst relative gradient error {worst:.1e} over {} parameters", tensors.len());
    }
}

#[test]
fn batching_does_not_change_the_result() {
    let model = Model::load(&fixture("mistral")).unwrap();
    let seqs = reference("mistral").sequences;
    let batched = model.logprobs(&seqs).unwrap();
    let alone: Vec<Vec<f64>> =
        seqs.iter().map(|s| model.logprobs(std::slice::from_ref(s)).unwrap().remove(0)).collect();
    assert!(max_abs_diff(&batched, &alone) < 1e-5);
}
