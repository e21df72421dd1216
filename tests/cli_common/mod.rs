//! Shared by the tests that run the `gkd` binary as a user does.
#![allow(dead_code)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `gkd args`: (exit status success, stdout, stderr).
pub fn gkd(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gkd")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

/// Runs `gkd args`, which must succeed; its stdout.
pub fn ok(args: &[&str]) -> String {
    let (success, stdout, stderr) = gkd(args);
    assert!(success, "gkd {args:?} failed: {stderr}");
    stdout
}

/// Runs `gkd args`, which must fail; its stderr.
pub fn fails(args: &[&str]) -> String {
    let (success, _, stderr) = gkd(args);
    assert!(!success, "gkd {args:?} should have failed");
    stderr
}

/// A fresh, empty directory `gkd-cli-<name>-<pid>` in the system's temporary directory.
pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gkd-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A teacher (hidden 32) and a student (hidden 16), one-layer Llamas sharing the fixture tokenizer,
/// in `dir`, and `dir/train.jsonl`: six examples "What is i + i?\n" → "#### 2i".
pub fn setup(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let tok = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama/tokenizer.json");
    let (t, st) = (dir.join("teacher"), dir.join("student"));
    for (out, hidden, seed) in [(&t, "32", "1"), (&st, "16", "2")] {
        ok(&[
            "init",
            "--arch",
            "llama",
            "--hidden",
            hidden,
            "--layers",
            "1",
            "--heads",
            "2",
            "--tokenizer",
            s(&tok),
            "--max-positions",
            "256",
            "--seed",
            seed,
            "--out",
            s(out),
        ]);
    }
    let data = dir.join("train.jsonl");
    let lines: String = (0..6)
        .map(|i| format!("{{\"prompt\": \"What is {i} + {i}?\\n\", \"completion\": \"#### {}\"}}\n", 2 * i))
        .collect();
    std::fs::write(&data, lines).unwrap();
    (t, st, data)
}

/// Every line of a metrics JSONL file.
pub fn metrics(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .collect()
}

/// The `loss` of every line of a metrics JSONL file.
pub fn losses(path: &Path) -> Vec<f64> {
    metrics(path).iter().map(|r| r["loss"].as_f64().unwrap()).collect()
}

/// Copies the files (not subdirectories) of `from` into `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}
