//! ROUGE-1, ROUGE-2 and ROUGE-L as Google's `rouge-score` computes them (`RougeScorer` with
//! `use_stemmer=False`, its default).
//!
//! Tokens: the text lowercased, every run of characters other than `a-z0-9` replaced by a space,
//! split on whitespace (so non-ASCII letters are dropped, as there). ROUGE-N counts clipped n-gram
//! overlaps; ROUGE-L uses the longest common subsequence over the whole text (not `rougeLsum`).
//! precision = matches / prediction count, recall = matches / reference count, F = 2PR / (P + R).

use crate::error::Result;
use std::collections::HashMap;

/// Precision, recall and F-measure, each in 0–1.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RougeScore {
    pub precision: f64,
    pub recall: f64,
    pub fmeasure: f64,
}

impl RougeScore {
    fn new(precision: f64, recall: f64) -> RougeScore {
        let fmeasure =
            if precision + recall > 0.0 { 2.0 * precision * recall / (precision + recall) } else { 0.0 };
        RougeScore { precision, recall, fmeasure }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rouge {
    pub rouge1: RougeScore,
    pub rouge2: RougeScore,
    pub rouge_l: RougeScore,
}

/// `rouge-score`'s default tokenizer (no stemming).
pub fn tokenize(text: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut current = String::new();
    for c in text.to_lowercase().chars() {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            current.push(c);
        } else if !current.is_empty() {
            tokens.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        tokens.push(current);
    }
    tokens
}

/// ROUGE-1/2/L of one prediction against one reference (`RougeScorer.score(target=reference,
/// prediction=prediction)`).
pub fn rouge(prediction: &str, reference: &str) -> Rouge {
    let pred = tokenize(prediction);
    let reference = tokenize(reference);
    Rouge {
        rouge1: rouge_n(&pred, &reference, 1),
        rouge2: rouge_n(&pred, &reference, 2),
        rouge_l: rouge_l(&pred, &reference),
    }
}

/// The mean of each score over the pairs (the value `rouge-score`'s `BootstrapAggregator`
/// estimates as its `mid`).
pub fn mean_rouge<P: AsRef<str>, R: AsRef<str>>(predictions: &[P], references: &[R]) -> Result<Rouge> {
    super::check_pairs("ROUGE", predictions.len(), references.len())?;
    let n = predictions.len() as f64;
    let mut sum = [[0.0f64; 3]; 3];
    for (p, r) in predictions.iter().zip(references) {
        let s = rouge(p.as_ref(), r.as_ref());
        for (acc, score) in sum.iter_mut().zip([s.rouge1, s.rouge2, s.rouge_l]) {
            acc[0] += score.precision;
            acc[1] += score.recall;
            acc[2] += score.fmeasure;
        }
    }
    let mean = |a: [f64; 3]| RougeScore { precision: a[0] / n, recall: a[1] / n, fmeasure: a[2] / n };
    Ok(Rouge { rouge1: mean(sum[0]), rouge2: mean(sum[1]), rouge_l: mean(sum[2]) })
}

fn ngram_counts(tokens: &[String], n: usize) -> HashMap<&[String], usize> {
    let mut counts = HashMap::new();
    if tokens.len() >= n {
        for gram in tokens.windows(n) {
            *counts.entry(gram).or_insert(0) += 1;
        }
    }
    counts
}

fn rouge_n(pred: &[String], reference: &[String], n: usize) -> RougeScore {
    let p = ngram_counts(pred, n);
    let r = ngram_counts(reference, n);
    let overlap: usize = r.iter().map(|(g, &c)| c.min(p.get(g).copied().unwrap_or(0))).sum();
    let p_total: usize = p.values().sum();
    let r_total: usize = r.values().sum();
    RougeScore::new(overlap as f64 / p_total.max(1) as f64, overlap as f64 / r_total.max(1) as f64)
}

fn rouge_l(pred: &[String], reference: &[String]) -> RougeScore {
    if pred.is_empty() || reference.is_empty() {
        return RougeScore::default();
    }
    let lcs = lcs_len(reference, pred) as f64;
    RougeScore::new(lcs / pred.len() as f64, lcs / reference.len() as f64)
}

/// Length of the longest common subsequence, two rows of the usual DP table.
fn lcs_len(a: &[String], b: &[String]) -> usize {
    let mut prev = vec![0usize; b.len() + 1];
    let mut row = vec![0usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            row[j + 1] = if x == y { prev[j] + 1 } else { prev[j + 1].max(row[j]) };
        }
        std::mem::swap(&mut prev, &mut row);
    }
    prev[b.len()]
}
