//! Datasets: prompt/completion JSONL files and the built-in synthetic tasks.
//!
//! One example is `{"prompt": str, "completion": str}` (DESIGN.md, stable interfaces); the
//! completion may be absent where only prompts are needed (on-policy distillation, evaluation
//! prompts).

pub mod arithmetic;
pub mod jsonl;
pub mod tokenizer;

pub use jsonl::{parse_jsonl, read_jsonl, write_jsonl, write_jsonl_to, Example};
pub use tokenizer::Tokenizer;
