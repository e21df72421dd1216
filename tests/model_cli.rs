//! `gkd score`, `gkd generate` and `gkd init` as a user runs them.

mod cli_common;
mod model_common;

use cli_common::{gkd, ok};
use model_common::{fixture, reference, scratch};
use serde_json::Value;

#[test]
fn score_ids_and_text() {
    let dir = fixture("llama");
    let r = reference("llama");
    let ids: Vec<String> = r.sequences[2].iter().map(u32::to_string).collect();
    let out: Value = serde_json::from_str(&ok(&[
        "score",
        "--model",
        dir.to_str().unwrap(),
        "--ids",
        &ids.join(","),
        "--device",
        "cpu",
    ]))
    .unwrap();
    let lp: Vec<f64> = serde_json::from_value(out["logprobs"].clone()).unwrap();
    assert_eq!(lp.len(), r.sequences[2].len() - 1);
    for (a, b) in lp.iter().zip(&r.logprobs[2]) {
        assert!((a - b).abs() < 1e-4, "{a} vs {b}");
    }
    let out: Value =
        serde_json::from_str(&ok(&["score", "--model", dir.to_str().unwrap(), "--text", &r.text])).unwrap();
    assert_eq!(serde_json::from_value::<Vec<u32>>(out["ids"].clone()).unwrap(), r.text_ids);
}

#[test]
fn generate_prints_one_line_per_sample() {
    let dir = fixture("qwen2");
    let out = ok(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--prompt",
        "The teacher",
        "--max-new-tokens",
        "5",
        "--temperature",
        "0.8",
        "--top-k",
        "20",
        "--top-p",
        "0.9",
        "--seed",
        "3",
        "--num-samples",
        "3",
    ]);
    let lines: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    for l in &lines {
        let n = l["ids"].as_array().unwrap().len();
        assert!((1..=5).contains(&n) && l["logprobs"].as_array().unwrap().len() == n);
        assert!(l["text"].is_string());
        assert!(l["finish_reason"] == "eos" || n == 5);
    }
    // Seeded: the same command prints the same samples.
    let again = ok(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--prompt",
        "The teacher",
        "--max-new-tokens",
        "5",
        "--temperature",
        "0.8",
        "--top-k",
        "20",
        "--top-p",
        "0.9",
        "--seed",
        "3",
        "--num-samples",
        "3",
    ]);
    assert_eq!(out, again);
}

#[test]
fn init_writes_a_model_gkd_loads_and_scores() {
    let tok = fixture("gpt2").join("tokenizer.json");
    for (arch, extra) in [("gpt2", vec![]), ("mistral", vec!["--kv-heads", "2", "--dtype", "bf16"])] {
        let out = scratch(&format!("init-{arch}"));
        let mut args =
            vec!["init", "--arch", arch, "--hidden", "16", "--layers", "2", "--heads", "4", "--tokenizer"];
        args.extend([tok.to_str().unwrap(), "--out", out.to_str().unwrap()]);
        args.extend(extra);
        ok(&args);
        for f in [
            "config.json",
            "generation_config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
        ] {
            assert!(out.join(f).exists(), "{arch}: {f} missing");
        }
        let model = gkd::model::Model::load(&out).unwrap();
        assert_eq!(model.config.vocab_size, 300);
        assert_eq!(model.config.eos_token_ids, vec![1]);
        let scored: Value =
            serde_json::from_str(&ok(&["score", "--model", out.to_str().unwrap(), "--text", "hello"]))
                .unwrap();
        assert_eq!(scored["ids"][0], 0, "BOS first");
    }
}

#[test]
fn errors_are_sentences_not_panics() {
    let (success, _, stderr) = gkd(&["score", "--model", "/nonexistent", "--ids", "1,2"]);
    assert!(!success && stderr.contains("/nonexistent") && !stderr.contains("panicked"), "{stderr}");
    let dir = fixture("gpt2");
    let (success, _, stderr) = gkd(&["score", "--model", dir.to_str().unwrap(), "--ids", "1,999"]);
    assert!(!success && stderr.contains("999") && stderr.contains("300"), "{stderr}");
    let (success, _, stderr) = gkd(&[
        "init",
        "--arch",
        "bert",
        "--hidden",
        "8",
        "--layers",
        "1",
        "--heads",
        "2",
        "--tokenizer",
        "x",
        "--out",
        "y",
    ]);
    assert!(!success && stderr.contains("gpt2, llama, qwen2, mistral"), "{stderr}");
    let (success, _, stderr) =
        gkd(&["generate", "--model", dir.to_str().unwrap(), "--prompt", "a", "--top-p", "0"]);
    assert!(!success && stderr.contains("top-p"), "{stderr}");
}
