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

/// softmax(logits / T), top-k then top-p, computed independently of the sampler.
pub fn expected(logits: &[f32], t: f64, top_k: usize, top_p: f64) -> Vec<f64> {
    let z: Vec<f64> = logits.iter().map(|&x| x as f64 / t).collect();
    let mut order: Vec<usize> = (0..z.len()).collect();
    order.sort_by(|&a, &b| z[b].partial_cmp(&z[a]).unwrap());
    let k = if top_k == 0 { z.len() } else { top_k };
    let kth = z[order[k - 1]];
    let m = z[order[0]];
    let w: Vec<f64> = z.iter().map(|&x| if x >= kth { (x - m).exp() } else { 0.0 }).collect();
    let total: f64 = w.iter().sum();
    let mut p: Vec<f64> = w.iter().map(|x| x / total).collect();
    if top_p < 1.0 {
        let mut mass = 0.0;
        for &i in &order {
            if mass >= top_p {
                p[i] = 0.0;
            }
            mass += w[i] / total;
        }
        let total: f64 = p.iter().sum();
        p.iter_mut().for_each(|x| *x /= total);
    }
    p
}

/// Pearson's statistic over bins with an expected count ≥ 5 (the rest pooled), its degrees of
/// freedom, and whether a token of probability 0 was drawn.
pub fn chi_square(counts: &[usize], probs: &[f64]) -> (f64, usize, bool) {
    let n: usize = counts.iter().sum();
    let (mut stat, mut bins, mut pooled_o, mut pooled_e, mut impossible) = (0.0, 0usize, 0.0, 0.0, false);
    for (&o, &p) in counts.iter().zip(probs) {
        let e = p * n as f64;
        if p == 0.0 {
            impossible |= o > 0;
        } else if e >= 5.0 {
            stat += (o as f64 - e).powi(2) / e;
            bins += 1;
        } else {
            pooled_o += o as f64;
            pooled_e += e;
        }
    }
    if pooled_e > 0.0 {
        stat += (pooled_o - pooled_e).powi(2) / pooled_e;
        bins += 1;
    }
    (stat, bins.saturating_sub(1), impossible)
}

/// The chi-square quantile at 1 − 1e-4 (Wilson–Hilferty; z = 3.719).
pub fn critical(df: usize) -> f64 {
    let k = df.max(1) as f64;
    let h = 2.0 / (9.0 * k);
    k * (1.0 - h + 3.719 * h.sqrt()).powi(3)
}
