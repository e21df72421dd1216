//! Shared by the model tests: the committed fixtures (tests/fixtures/<family>/, written by
//! scripts/make-fixtures.py with transformers) and scratch directories.
#![allow(dead_code)]

use serde::Deserialize;
use std::path::{Path, PathBuf};

pub const FAMILIES: [&str; 4] = ["gpt2", "llama", "qwen2", "mistral"];

#[derive(Deserialize)]
pub struct Greedy {
    pub prompts: Vec<Vec<u32>>,
    pub max_new_tokens: usize,
    pub outputs: Vec<Vec<u32>>,
}

/// What transformers computed for a fixture (`reference.json`).
#[derive(Deserialize)]
pub struct Reference {
    pub transformers: String,
    pub sequences: Vec<Vec<u32>>,
    /// ln p(s[i+1] | s[..=i]) from the fp32 checkpoint evaluated in fp64.
    pub logprobs: Vec<Vec<f64>>,
    pub text: String,
    pub text_ids: Vec<u32>,
    pub text_logprobs: Vec<f64>,
    pub greedy: Greedy,
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("fixtures").join(name)
}

pub fn reference(name: &str) -> Reference {
    let path = fixture(name).join("reference.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// max |a − b| over nested sequences of equal shape.
pub fn max_abs_diff(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len());
            x.iter().zip(y).map(|(p, q)| (p - q).abs())
        })
        .fold(0.0, f64::max)
}

/// A fresh, empty directory for one test (removed first if a previous run left it).
pub fn scratch(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gkd-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A scratch copy of a fixture directory.
pub fn copy_fixture(name: &str, test: &str) -> PathBuf {
    let d = scratch(test);
    for e in std::fs::read_dir(fixture(name)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), d.join(e.file_name())).unwrap();
    }
    d
}
