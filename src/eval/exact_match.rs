//! Exact match of the final answer: the text after the last `####` when there is one (GSM8K's
//! convention), else the whole completion, trimmed of surrounding whitespace on both sides.

use crate::error::Result;

/// The answer part of a completion: what follows the last `####`, or all of it; trimmed.
pub fn final_answer(completion: &str) -> &str {
    match completion.rfind("####") {
        Some(i) => completion[i + 4..].trim(),
        None => completion.trim(),
    }
}

/// Whether `prediction` and `reference` have the same final answer.
pub fn exact_match(prediction: &str, reference: &str) -> bool {
    final_answer(prediction) == final_answer(reference)
}

/// The fraction of pairs (0–1) whose final answers match.
pub fn exact_match_rate<P: AsRef<str>, R: AsRef<str>>(predictions: &[P], references: &[R]) -> Result<f64> {
    super::check_pairs("exact match", predictions.len(), references.len())?;
    let hits =
        predictions.iter().zip(references).filter(|(p, r)| exact_match(p.as_ref(), r.as_ref())).count();
    Ok(hits as f64 / predictions.len() as f64)
}
