//! A Hugging Face `tokenizer.json` (through the tokenizers crate) and the model's special tokens.
//!
//! BOS, EOS and PAD are looked up, each in the first file that names it, in the order
//! `generation_config.json` (`*_token_id`), `config.json` (`*_token_id`), `tokenizer_config.json`
//! and `special_tokens_map.json` (`*_token`, a string or `{"content": ...}`), all beside
//! `tokenizer.json`. EOS may be several ids (Llama 3 chat models stop on any of them).

use crate::error::{Error, Result};
use crate::model::config::token_ids;
use serde_json::Value;
use std::path::{Path, PathBuf};

pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// The files that travel with a tokenizer when a model is saved.
pub const TOKENIZER_FILES: [&str; 3] = [TOKENIZER_FILE, "tokenizer_config.json", "special_tokens_map.json"];

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pub bos: Option<u32>,
    pub eos: Vec<u32>,
    pub pad: Option<u32>,
    path: PathBuf,
}

fn read_json(path: &Path) -> Option<Value> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

impl Tokenizer {
    /// `tokenizer.json` in a model directory.
    pub fn load(dir: &Path) -> Result<Tokenizer> {
        Tokenizer::from_file(&dir.join(TOKENIZER_FILE))
    }

    /// A `tokenizer.json`; special tokens from the configuration files beside it.
    pub fn from_file(path: &Path) -> Result<Tokenizer> {
        if !path.exists() {
            return Err(Error::Msg(format!(
                "no tokenizer at {}: gkd needs a Hugging Face tokenizer.json",
                path.display()
            )));
        }
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| Error::Msg(format!("cannot load the tokenizer {}: {e}", path.display())))?;
        let mut t = Tokenizer { inner, bos: None, eos: vec![], pad: None, path: path.to_path_buf() };
        let dir = path.parent().unwrap_or(Path::new("."));
        let id_files: Vec<Value> = ["generation_config.json", "config.json"]
            .iter()
            .filter_map(|f| read_json(&dir.join(f)))
            .collect();
        let token_files: Vec<Value> = ["tokenizer_config.json", "special_tokens_map.json"]
            .iter()
            .filter_map(|f| read_json(&dir.join(f)))
            .collect();
        let lookup = |what: &str| -> Vec<u32> {
            for v in &id_files {
                let ids = token_ids(v.get(format!("{what}_token_id")));
                if !ids.is_empty() {
                    return ids;
                }
            }
            for v in &token_files {
                let tok = match v.get(format!("{what}_token")) {
                    Some(Value::String(s)) => Some(s.as_str()),
                    Some(Value::Object(o)) => o.get("content").and_then(Value::as_str),
                    _ => None,
                };
                if let Some(id) = tok.and_then(|s| t.inner.token_to_id(s)) {
                    return vec![id];
                }
            }
            vec![]
        };
        let (bos, eos, pad) = (lookup("bos"), lookup("eos"), lookup("pad"));
        t.bos = bos.first().copied();
        t.eos = eos;
        t.pad = pad.first().copied();
        Ok(t)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One more than the largest token id, added tokens included: the embedding rows it needs.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab(true).values().map(|&i| i as usize + 1).max().unwrap_or(0)
    }

    /// An error when this tokenizer can produce ids the model's embedding has no row for.
    pub fn check_fits(&self, embedding_rows: usize) -> Result<()> {
        let n = self.vocab_size();
        if n > embedding_rows {
            return Err(Error::Msg(format!(
                "the tokenizer {} has {n} tokens but the model's embedding has only {embedding_rows} rows: use the tokenizer the model was trained with",
                self.path.display()
            )));
        }
        Ok(())
    }

    /// Token ids of `text`; `add_special_tokens` applies the tokenizer's template (e.g. a BOS), as
    /// `tokenizer(text)` does in transformers.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| Error::Msg(format!("cannot tokenize: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| Error::Msg(format!("cannot decode {ids:?}: {e}")))
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Copies the tokenizer files that exist in `from` into `to`.
    pub fn copy_files(from: &Path, to: &Path) -> Result<()> {
        for f in TOKENIZER_FILES {
            let (src, dst) = (from.join(f), to.join(f));
            let same = matches!((src.canonicalize(), dst.canonicalize()), (Ok(a), Ok(b)) if a == b);
            if src.exists() && !same {
                std::fs::copy(&src, &dst).map_err(|e| {
                    Error::Msg(format!("cannot copy {} to {}: {e}", src.display(), to.display()))
                })?;
            }
        }
        Ok(())
    }
}
