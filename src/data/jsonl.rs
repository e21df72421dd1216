//! JSONL prompt/completion files: one JSON object per line, blank lines skipped.
//!
//! Every error names the file, the 1-based line and the problem, so a user can open the file at
//! that line and fix it. Fields other than `prompt` and `completion` are ignored (datasets often
//! carry ids or metadata).

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fs;
use std::io::{BufWriter, Write};
use std::path::Path;

/// One training or evaluation example.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Example {
    pub prompt: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion: Option<String>,
}

impl Example {
    pub fn new(prompt: impl Into<String>, completion: impl Into<String>) -> Example {
        Example { prompt: prompt.into(), completion: Some(completion.into()) }
    }

    pub fn prompt_only(prompt: impl Into<String>) -> Example {
        Example { prompt: prompt.into(), completion: None }
    }
}

/// Reads a JSONL file of examples. With `require_completion`, every line must carry a string
/// `completion`; without it, a missing (or null) completion reads as `None`.
pub fn read_jsonl(path: &Path, require_completion: bool) -> Result<Vec<Example>> {
    let bytes = fs::read(path).map_err(|e| Error::Msg(format!("cannot read {}: {e}", path.display())))?;
    parse_bytes(&bytes, &path.display().to_string(), require_completion)
}

/// Parses JSONL text; `source` names it in error messages (a file path, or `<stdin>`).
pub fn parse_jsonl(text: &str, source: &str, require_completion: bool) -> Result<Vec<Example>> {
    parse_bytes(text.as_bytes(), source, require_completion)
}

fn parse_bytes(bytes: &[u8], source: &str, require_completion: bool) -> Result<Vec<Example>> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes); // UTF-8 byte-order mark
    let mut examples = Vec::new();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let line_no = i + 1;
        let at = |problem: String| Error::Msg(format!("{source}:{line_no}: {problem}"));
        let line = std::str::from_utf8(raw)
            .map_err(|e| at(format!("not valid UTF-8 (byte {} of the line)", e.valid_up_to() + 1)))?;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(line).map_err(|e| at(json_problem(&e)))?;
        let Value::Object(obj) = value else {
            return Err(at(format!(
                "expected a JSON object like {{\"prompt\": \"...\", \"completion\": \"...\"}}, found {}",
                kind(&value)
            )));
        };
        let prompt = match obj.get("prompt") {
            Some(Value::String(s)) => s.clone(),
            Some(other) => {
                return Err(at(format!("field \"prompt\" must be a string, found {}", kind(other))))
            }
            None => return Err(at("missing field \"prompt\"".into())),
        };
        let completion =
            match obj.get("completion") {
                Some(Value::String(s)) => Some(s.clone()),
                None | Some(Value::Null) if !require_completion => None,
                None => return Err(at(
                    "missing field \"completion\" (this command trains on completions: every line needs one)"
                        .into(),
                )),
                Some(other) => {
                    return Err(at(format!("field \"completion\" must be a string, found {}", kind(other))))
                }
            };
        examples.push(Example { prompt, completion });
    }
    if examples.is_empty() {
        return Err(Error::Msg(format!(
            "{source}: no examples (the file is empty or has only blank lines); expected one JSON object per line"
        )));
    }
    Ok(examples)
}

/// serde_json's message without its "at line 1 column N" suffix (every parse here is one line).
fn json_problem(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let msg = msg.strip_suffix(&suffix).unwrap_or(&msg);
    format!("invalid JSON at column {}: {msg}", e.column())
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Writes examples as JSONL (one compact object per line, `completion` omitted when `None`).
/// The file is written to a temporary beside `path` and renamed, so a crash never leaves half a file.
pub fn write_jsonl(path: &Path, examples: &[Example]) -> Result<()> {
    let io_err = |what: &str, e: std::io::Error| Error::Msg(format!("cannot {what} {}: {e}", path.display()));
    let mut tmp_name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let file = fs::File::create(&tmp).map_err(|e| io_err("create", e))?;
    write_jsonl_to(BufWriter::new(file), examples)?;
    fs::rename(&tmp, path).map_err(|e| io_err("write", e))
}

/// Writes examples as JSONL to any writer (stdout, a buffer), then flushes it.
pub fn write_jsonl_to<W: Write>(mut w: W, examples: &[Example]) -> Result<()> {
    let io = |e: std::io::Error| Error::Msg(format!("cannot write JSONL: {e}"));
    for ex in examples {
        let line =
            serde_json::to_string(ex).map_err(|e| Error::Msg(format!("cannot encode example: {e}")))?;
        w.write_all(line.as_bytes()).map_err(io)?;
        w.write_all(b"\n").map_err(io)?;
    }
    w.flush().map_err(io)
}
