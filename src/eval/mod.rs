//! Evaluation metrics over generated completions: exact match of the final answer, ROUGE-1/2/L
//! (Google's `rouge-score`) and corpus BLEU (`sacrebleu` defaults).
//!
//! Each metric takes predictions and references as parallel slices and returns scores on the
//! same scale as the Python library it follows, so numbers can be compared with published ones.

pub mod bleu;
pub mod exact_match;
pub mod rouge;

pub use bleu::{corpus_bleu, corpus_bleu_multi, tokenize_13a, Bleu};
pub use exact_match::{exact_match, exact_match_rate, final_answer};
pub use rouge::{mean_rouge, rouge, Rouge, RougeScore};

use crate::error::{Error, Result};

/// Checks that predictions and references pair up and are not empty.
fn check_pairs(metric: &str, predictions: usize, references: usize) -> Result<()> {
    if predictions != references {
        return Err(Error::Msg(format!(
            "{metric}: {predictions} predictions but {references} references; they must pair up one to one"
        )));
    }
    if predictions == 0 {
        return Err(Error::Msg(format!("{metric}: no predictions to score")));
    }
    Ok(())
}
