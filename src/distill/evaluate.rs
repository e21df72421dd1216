//! Evaluation of a model on prompt/completion examples: generate a completion for every prompt,
//! then score it against the reference with exact match, ROUGE or BLEU.

use crate::data::{Example, Tokenizer};
use crate::error::{Error, Result};
use crate::eval::{corpus_bleu, exact_match_rate, mean_rouge};
use crate::generate::{generate, GenerateConfig, Sampler};
use crate::model::Model;
use serde_json::{json, Value};
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Metric {
    ExactMatch,
    Rouge,
    Bleu,
}

impl FromStr for Metric {
    type Err = Error;
    fn from_str(s: &str) -> Result<Metric> {
        match s {
            "exact-match" | "exact_match" | "em" => Ok(Metric::ExactMatch),
            "rouge" => Ok(Metric::Rouge),
            "bleu" => Ok(Metric::Bleu),
            _ => Err(Error::Msg(format!("unknown metric `{s}`: use exact-match, rouge or bleu"))),
        }
    }
}

/// Prompts decoded at once (a finished one's slot takes the next: continuous batching).
const EVAL_BATCH: usize = 64;

/// The decoded completion of every prompt (special tokens dropped). Prompts longer than the
/// model's context are an error; generation stops at the context.
pub fn complete(
    model: &Model,
    tok: &Tokenizer,
    prompts: &[String],
    sampler: Sampler,
    max_new_tokens: usize,
    seed: u64,
) -> Result<Vec<String>> {
    let context = model.config.max_position_embeddings;
    let ids: Vec<Vec<u32>> = prompts.iter().map(|p| tok.encode(p, true)).collect::<Result<_>>()?;
    let longest = ids.iter().map(Vec::len).max().unwrap_or(0);
    if longest >= context {
        return Err(Error::Msg(format!(
            "a prompt of {longest} tokens leaves no room to generate in the model's {context} positions"
        )));
    }
    let max_new = max_new_tokens.min(context + 1 - longest);
    let cfg = GenerateConfig {
        batch_size: EVAL_BATCH,
        ..GenerateConfig::new(max_new, sampler, seed, tok.eos.clone())
    };
    generate(model, &ids, &cfg)?.iter().map(|c| tok.decode(&c.ids, true)).collect()
}

/// The metric as JSON (`{"exact_match": x}`, `{"rouge1": .., "rouge2": .., "rougeL": ..}` as
/// F-measures, `{"bleu": x}`), over the examples' completions as references.
pub fn score(metric: Metric, predictions: &[String], examples: &[Example]) -> Result<Value> {
    let refs: Vec<&str> = examples
        .iter()
        .enumerate()
        .map(|(i, e)| {
            e.completion.as_deref().ok_or_else(|| {
                Error::Msg(format!("example {}: evaluation needs a reference \"completion\"", i + 1))
            })
        })
        .collect::<Result<_>>()?;
    Ok(match metric {
        Metric::ExactMatch => json!({"exact_match": exact_match_rate(predictions, &refs)?}),
        Metric::Rouge => {
            let r = mean_rouge(predictions, &refs)?;
            json!({"rouge1": r.rouge1.fmeasure, "rouge2": r.rouge2.fmeasure, "rougeL": r.rouge_l.fmeasure})
        }
        Metric::Bleu => json!({"bleu": corpus_bleu(predictions, &refs)?.score}),
    })
}

/// Greedy exact match of `model` on `examples` (the trainer's periodic evaluation and the demo).
pub fn exact_match_greedy(
    model: &Model,
    tok: &Tokenizer,
    examples: &[Example],
    max_new_tokens: usize,
) -> Result<f64> {
    let prompts: Vec<String> = examples.iter().map(|e| e.prompt.clone()).collect();
    let sampler = Sampler { temperature: 0.0, top_k: 0, top_p: 1.0 };
    let preds = complete(model, tok, &prompts, sampler, max_new_tokens, 0)?;
    score(Metric::ExactMatch, &preds, examples)?["exact_match"]
        .as_f64()
        .ok_or_else(|| Error::Msg("internal: exact match is not a number".into()))
}
