//! Parity with transformers for every family (tests/fixtures, written by
//! scripts/make-fixtures.py): log-probabilities within 1e-4, the same tokens for the same text,
//! the same greedy continuations; and the cached (generation) forward equals the taped one.

mod model_common;

use gkd::autograd::Tape;
use gkd::data::Tokenizer;
use gkd::generate::{generate, GenerateConfig, Sampler};
use gkd::model::{Arch, Model, TokenBatch};
use model_common::{fixture, max_abs_diff, reference, FAMILIES};

const TOL: f64 = 1e-4;

/// All reference sequences in one packed batch (lengths 2..24), against transformers.
fn check_logprobs(name: &str) {
    let model = Model::load(&fixture(name)).unwrap();
    let r = reference(name);
    let ours = model.logprobs(&r.sequences).unwrap();
    let diff = max_abs_diff(&ours, &r.logprobs);
    eprintln!("parity {name}: max |logprob gkd - transformers {}| = {diff:.2e}", r.transformers);
    assert!(diff <= TOL, "{name}: max logprob difference {diff:e} > {TOL:e}");
}

#[test]
fn gpt2_matches_transformers() {
    check_logprobs("gpt2");
}

#[test]
fn llama_gqa_rope_theta_llama3_scaling_untied_matches_transformers() {
    let model = Model::load(&fixture("llama")).unwrap();
    let c = &model.config;
    assert_eq!((c.arch, c.num_heads / c.num_kv_heads, c.tie_word_embeddings), (Arch::Llama, 3, false));
    assert_eq!(c.rope_theta, 500000.0);
    assert!(matches!(c.rope_scaling, gkd::model::RopeScaling::Llama3 { .. }));
    check_logprobs("llama");
    // The fixture exercises both: without the scaling, or with the default θ, parity is lost.
    let r = reference("llama");
    for edit in [
        |c: &mut gkd::model::ModelConfig| c.rope_scaling = gkd::model::RopeScaling::None,
        |c: &mut gkd::model::ModelConfig| c.rope_theta = 10000.0,
    ] {
        let mut cfg = model.config.clone();
        edit(&mut cfg);
        let named = model.names().iter().cloned().zip(model.tensors().unwrap()).collect();
        let wrong = Model::from_tensors(cfg, named).unwrap();
        let diff = max_abs_diff(&wrong.logprobs(&r.sequences).unwrap(), &r.logprobs);
        assert!(diff > 1e-2, "a wrong RoPE still matches ({diff:e})");
    }
}

#[test]
fn qwen2_qkv_bias_tied_bf16_matches_transformers() {
    let model = Model::load(&fixture("qwen2")).unwrap();
    assert!(model.config.qkv_bias && model.config.tie_word_embeddings);
    check_logprobs("qwen2");
}

#[test]
fn mistral_sharded_f16_matches_transformers() {
    assert!(fixture("mistral").join("model.safetensors.index.json").exists());
    check_logprobs("mistral");
}

#[test]
fn text_tokenizes_and_scores_as_transformers() {
    for name in FAMILIES {
        let dir = fixture(name);
        let (model, tok, r) = (Model::load(&dir).unwrap(), Tokenizer::load(&dir).unwrap(), reference(name));
        tok.check_fits(model.config.vocab_size).unwrap();
        let ids = tok.encode(&r.text, true).unwrap();
        assert_eq!(ids, r.text_ids, "{name}: tokenization");
        assert_eq!(
            (tok.bos, tok.eos.as_slice(), tok.pad),
            (Some(0), &[1u32][..], Some(2)),
            "{name}: special tokens"
        );
        let diff = max_abs_diff(&model.logprobs(&[ids]).unwrap(), &[r.text_logprobs]);
        assert!(diff <= TOL, "{name}: text logprob difference {diff:e}");
    }
}

#[test]
fn greedy_generation_matches_transformers() {
    for name in FAMILIES {
        let model = Model::load(&fixture(name)).unwrap();
        let r = reference(name);
        let cfg = GenerateConfig::new(r.greedy.max_new_tokens, Sampler::greedy(), 0, vec![]);
        let out = generate(&model, &r.greedy.prompts, &cfg).unwrap();
        let ids: Vec<Vec<u32>> = out.into_iter().map(|c| c.ids).collect();
        assert_eq!(ids, r.greedy.outputs, "{name}: greedy continuations");
    }
}

/// Prefill half a sequence, then feed one token at a time through the key/value cache: every
/// step's logits equal the logits of the padded (training) forward at that position.
#[test]
fn cached_forward_equals_padded_forward() {
    for name in FAMILIES {
        let model = Model::load(&fixture(name)).unwrap();
        let seq = reference(name).sequences.pop().unwrap();
        let v = model.config.vocab_size;
        let mut tape = Tape::no_grad();
        let p = model.bind(&mut tape, false).unwrap();
        let batch = TokenBatch::new(std::slice::from_ref(&seq)).unwrap();
        let h = model.forward(&mut tape, &p, &mut batch.inputs(model.device()).unwrap()).unwrap();
        let full = model.logits(&mut tape, &p, &h).unwrap().value().to_vec_f32().unwrap();
        let mut cache = model.new_cache(1, seq.len()).unwrap();
        let half = seq.len() / 2;
        let mut worst = 0.0f32;
        let mut check = |pos: usize, got: Vec<f32>| {
            for (a, b) in got.iter().zip(&full[pos * v..(pos + 1) * v]) {
                worst = worst.max((a - b).abs());
            }
        };
        let step = |cache: &mut gkd::model::KvCache, toks: &[u32]| {
            model.next_token_logits(cache, &[(0, toks)]).unwrap().to_vec_f32().unwrap()
        };
        check(half - 1, step(&mut cache, &seq[..half]));
        for t in half..seq.len() {
            check(t, step(&mut cache, &seq[t..t + 1]));
        }
        assert!(worst < 1e-4, "{name}: cached and padded logits differ by {worst}");
        // The cache is full: one more token is an error naming the capacity.
        let e = model.next_token_logits(&mut cache, &[(0, &seq[..1])]).unwrap_err().to_string();
        assert!(e.contains("past the cache"), "{e}");
    }
}
