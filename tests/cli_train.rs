//! `gkd sft`, `gkd distill` (flags and --config), `gkd eval` and resume, as a user runs them.

mod cli_common;

use cli_common::{copy_dir, fails, losses, ok, s, scratch, setup};
use serde_json::Value;
use std::path::{Path, PathBuf};

#[test]
fn sft_distill_eval_end_to_end() {
    let dir = scratch("train-e2e");
    let (teacher, student, data) = setup(&dir);
    let sft = dir.join("sft");
    ok(&[
        "sft",
        "--model",
        s(&student),
        "--data",
        s(&data),
        "--out",
        s(&sft),
        "--steps",
        "3",
        "--batch-size",
        "2",
        "--lr",
        "1e-3",
        "--quiet",
    ]);
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "optimizer.safetensors",
        "trainer_state.json",
        "metrics.jsonl",
        "metrics.png",
    ] {
        assert!(sft.join(f).exists(), "sft output lacks {f}");
    }
    // Options from a TOML file, one overridden by a flag.
    let config = dir.join("gkd.toml");
    std::fs::write(
        &config,
        format!(
            "teacher = {:?}\nstudent = {:?}\ndata = {:?}\nlambda = 1.0\ndivergence = \"jsd\"\nbeta = 0.5\nmax_new_tokens = 6\nsteps = 2\nbatch-size = 2\nlr = 1e-3\nseed = 3\n",
            s(&teacher), s(&sft), s(&data)
        ),
    )
    .unwrap();
    let out = dir.join("distilled");
    let summary: Value = serde_json::from_str(&ok(&[
        "distill",
        "--config",
        s(&config),
        "--out",
        s(&out),
        "--steps",
        "3",
        "--eval-data",
        s(&data),
        "--quiet",
    ]))
    .unwrap();
    assert_eq!(summary["steps"], 3);
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let rows: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 3);
    for r in &rows {
        for k in [
            "step",
            "loss",
            "source",
            "tokens",
            "lr",
            "seconds",
            "divergence",
            "lambda_u",
            "mean_completion_len",
            "tokens_per_s",
        ] {
            assert!(r.get(k).is_some(), "metrics lack {k}: {r}");
        }
        assert_eq!(r["source"], "student");
        assert!(r["mean_completion_len"].as_f64().unwrap() <= 6.0);
    }
    assert!(rows[2].get("eval_exact_match").is_some());
    // The distilled student is a model `gkd eval` loads.
    let e: Value = serde_json::from_str(&ok(&[
        "eval",
        "--model",
        s(&out),
        "--data",
        s(&data),
        "--max-new-tokens",
        "4",
        "--limit",
        "3",
    ]))
    .unwrap();
    assert_eq!(e["n"], 3);
    assert!((0.0..=1.0).contains(&e["exact_match"].as_f64().unwrap()));
    let r: Value = serde_json::from_str(&ok(&[
        "eval",
        "--model",
        s(&out),
        "--data",
        s(&data),
        "--metric",
        "rouge",
        "--max-new-tokens",
        "4",
        "--temperature",
        "0.7",
    ]))
    .unwrap();
    assert!(r.get("rougeL").is_some());
}

/// A run killed after its step-2 checkpoint (with a half-written metrics line) and resumed logs
/// the same losses as a run that was never interrupted.
#[test]
fn resume_after_kill_logs_the_same_losses() {
    let dir = scratch("train-resume");
    let (teacher, student, data) = setup(&dir);
    let common = |out: &Path| -> Vec<String> {
        [
            "distill",
            "--teacher",
            s(&teacher),
            "--data",
            s(&data),
            "--out",
            s(out),
            "--lambda",
            "0.5",
            "--max-new-tokens",
            "5",
            "--steps",
            "4",
            "--batch-size",
            "2",
            "--grad-accum",
            "2",
            "--save-every",
            "2",
            "--seed",
            "11",
            "--quiet",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect()
    };
    let full = dir.join("full");
    let mut args = common(&full);
    args.extend(["--student".into(), s(&student).into()]);
    ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let want = losses(&full.join("metrics.jsonl"));
    assert_eq!(want.len(), 4);

    // The "killed" run: its checkpoint at step 2 and a metrics file cut in the middle of step 3.
    let cut = dir.join("cut");
    std::fs::create_dir_all(&cut).unwrap();
    let text = std::fs::read_to_string(full.join("metrics.jsonl")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    std::fs::write(cut.join("metrics.jsonl"), format!("{}\n{}\n{}", lines[0], lines[1], &lines[2][..20]))
        .unwrap();
    let ck = cut.join("checkpoint-2");
    copy_dir(&full.join("checkpoint-2"), &ck);
    let mut args = common(&cut);
    args.extend(["--resume".into(), s(&ck).into()]);
    ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(losses(&cut.join("metrics.jsonl")), want);
}

#[test]
fn clear_errors() {
    let dir = scratch("train-errors");
    let (teacher, student, data) = setup(&dir);
    let out = dir.join("out");
    let distill = |data: &Path, extra: &[&str]| {
        let mut a = vec![
            "distill",
            "--teacher",
            s(&teacher),
            "--student",
            s(&student),
            "--data",
            s(data),
            "--out",
            s(&out),
            "--steps",
            "1",
            "--batch-size",
            "2",
            "--max-new-tokens",
            "4",
            "--quiet",
        ];
        a.extend(extra);
        fails(&a)
    };
    // Missing field, with file and line.
    let bad = dir.join("bad.jsonl");
    std::fs::write(&bad, "{\"prompt\": \"a\", \"completion\": \"b\"}\n{\"completion\": \"b\"}\n").unwrap();
    let e = distill(&bad, &["--lambda", "0"]);
    assert!(e.contains("bad.jsonl:2") && e.contains("missing field \"prompt\""), "{e}");
    let e = fails(&["sft", "--model", s(&student), "--data", s(&bad), "--out", s(&out), "--steps", "1"]);
    assert!(e.contains("bad.jsonl:2"), "{e}");
    // Empty dataset.
    let empty = dir.join("empty.jsonl");
    std::fs::write(&empty, "\n").unwrap();
    let e = distill(&empty, &[]);
    assert!(e.contains("no examples"), "{e}");
    // A prompt longer than the context (256 positions).
    let long = dir.join("long.jsonl");
    std::fs::write(&long, format!("{{\"prompt\": \"{}\", \"completion\": \"x\"}}\n", "a ".repeat(400)))
        .unwrap();
    let e = distill(&long, &[]);
    assert!(e.contains("context"), "{e}");
    // Mismatched tokenizers: a student with another vocabulary.
    let other = dir.join("other");
    let gpt2_tok = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gpt2/tokenizer.json");
    let mut json: Value = serde_json::from_str(&std::fs::read_to_string(gpt2_tok).unwrap()).unwrap();
    json["model"]["vocab"].as_object_mut().unwrap().insert("zzqq".into(), 9999.into());
    std::fs::create_dir_all(&other).unwrap();
    let tj = dir.join("other-tokenizer.json");
    std::fs::write(&tj, json.to_string()).unwrap();
    ok(&[
        "init",
        "--arch",
        "llama",
        "--hidden",
        "16",
        "--layers",
        "1",
        "--heads",
        "2",
        "--tokenizer",
        s(&tj),
        "--out",
        s(&other),
    ]);
    let e = fails(&[
        "distill",
        "--teacher",
        s(&teacher),
        "--student",
        s(&other),
        "--data",
        s(&data),
        "--out",
        s(&out),
        "--steps",
        "1",
    ]);
    assert!(e.contains("must share one tokenizer"), "{e}");
    // A NaN loss stops training with a clear message; no final model is written.
    let nan = dir.join("nan");
    std::fs::create_dir_all(&nan).unwrap();
    for f in ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"] {
        if student.join(f).exists() {
            std::fs::copy(student.join(f), nan.join(f)).unwrap();
        }
    }
    poison(&student.join("model.safetensors"), &nan.join("model.safetensors"));
    let nan_out = dir.join("nan-out");
    let e = fails(&[
        "distill",
        "--teacher",
        s(&teacher),
        "--student",
        s(&nan),
        "--data",
        s(&data),
        "--out",
        s(&nan_out),
        "--steps",
        "2",
        "--lambda",
        "0",
        "--quiet",
    ]);
    assert!(e.contains("step 1") && e.contains("NaN") && e.contains("training stopped"), "{e}");
    assert!(!nan_out.join("model.safetensors").exists());
}

/// Copies a safetensors file with every f32 value replaced by NaN.
fn poison(from: &Path, to: &Path) {
    let bytes = std::fs::read(from).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut out = bytes.clone();
    for chunk in out[8 + n..].chunks_exact_mut(4) {
        chunk.copy_from_slice(&f32::NAN.to_le_bytes());
    }
    std::fs::write(to, out).unwrap();
}
