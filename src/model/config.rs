//! `config.json` → the architecture and its hyper-parameters, and back.
//!
//! Reads both the transformers 4.x spelling (`rope_theta`, `rope_scaling`) and the 5.x one
//! (`rope_parameters`). The original JSON is kept, so a loaded-then-saved model keeps every field
//! gkd does not use; `to_json` overwrites only the fields below.

use crate::error::{Error, Result};
use serde_json::{json, Map, Value};
use std::fmt;
use std::path::Path;
use std::str::FromStr;

/// The model families gkd implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arch {
    /// Learned positions, LayerNorm, tanh GELU, biases everywhere, Conv1D (in, out) weights, tied head.
    Gpt2,
    /// RoPE, RMSNorm, SwiGLU, grouped-query attention; optional biases; tied or untied head.
    Llama,
    /// Llama with q/k/v biases.
    Qwen2,
    /// Llama with a sliding attention window.
    Mistral,
}

impl Arch {
    pub const SUPPORTED: &'static str = "gpt2, llama, qwen2, mistral";
    pub const ALL: [Arch; 4] = [Arch::Gpt2, Arch::Llama, Arch::Qwen2, Arch::Mistral];

    /// The `model_type` of `config.json`.
    pub fn model_type(self) -> &'static str {
        match self {
            Arch::Gpt2 => "gpt2",
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Mistral => "mistral",
        }
    }

    /// The transformers class that `architectures` names.
    pub fn hf_class(self) -> &'static str {
        match self {
            Arch::Gpt2 => "GPT2LMHeadModel",
            Arch::Llama => "LlamaForCausalLM",
            Arch::Qwen2 => "Qwen2ForCausalLM",
            Arch::Mistral => "MistralForCausalLM",
        }
    }

    pub fn is_llama_family(self) -> bool {
        self != Arch::Gpt2
    }
}

impl FromStr for Arch {
    type Err = Error;
    fn from_str(s: &str) -> Result<Arch> {
        Arch::ALL.into_iter().find(|a| a.model_type() == s).ok_or_else(|| {
            Error::Msg(format!(
                "unsupported architecture (model_type) `{s}`: gkd supports {}",
                Arch::SUPPORTED
            ))
        })
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.model_type())
    }
}

/// How RoPE frequencies are rescaled for long contexts.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Every inverse frequency divided by `factor` (position interpolation).
    Linear {
        factor: f64,
    },
    /// Llama 3.x: low frequencies divided by `factor`, high ones kept, a smooth ramp between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

#[derive(Clone, Debug)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// MLP width (GPT-2: `n_inner`, 4·hidden when null).
    pub intermediate_size: usize,
    /// GPT-2: the number of learned positions (a hard limit). Llama family: informative only.
    pub max_position_embeddings: usize,
    pub norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    /// Biases on q, k, v (GPT-2, Qwen2, Llama with `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on the attention output projection (GPT-2, Llama with `attention_bias`).
    pub o_bias: bool,
    /// Biases in the MLP (GPT-2, Llama with `mlp_bias`).
    pub mlp_bias: bool,
    pub tie_word_embeddings: bool,
    /// Keys further back than this are not attended to (Mistral, Qwen2 with `use_sliding_window`).
    /// gkd does not implement the window: longer sequences are refused.
    pub sliding_window: Option<usize>,
    pub initializer_range: f64,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
    /// The `config.json` this came from (empty for a fresh model).
    pub raw: Map<String, Value>,
}

/// The hyper-parameters `gkd init` asks for; everything else takes the family's defaults.
#[derive(Clone, Debug)]
pub struct FreshConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    pub rope_theta: f64,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
}

fn bad(msg: impl Into<String>) -> Error {
    Error::Msg(msg.into())
}

struct Fields<'a>(&'a Map<String, Value>);

impl Fields<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }
    fn usize(&self, key: &str) -> Result<Option<usize>> {
        self.get(key)
            .map(|v| {
                v.as_u64().map(|x| x as usize).ok_or_else(|| {
                    bad(format!("config.json: `{key}` must be a non-negative integer, found {v}"))
                })
            })
            .transpose()
    }
    fn req_usize(&self, key: &str) -> Result<usize> {
        self.usize(key)?.ok_or_else(|| bad(format!("config.json: `{key}` is missing")))
    }
    fn f64(&self, key: &str) -> Result<Option<f64>> {
        self.get(key)
            .map(|v| {
                v.as_f64().ok_or_else(|| bad(format!("config.json: `{key}` must be a number, found {v}")))
            })
            .transpose()
    }
    fn bool(&self, key: &str) -> Result<Option<bool>> {
        self.get(key)
            .map(|v| {
                v.as_bool()
                    .ok_or_else(|| bad(format!("config.json: `{key}` must be true or false, found {v}")))
            })
            .transpose()
    }
    fn str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }
}

/// A token id field: an integer, a list of integers, or null.
pub(crate) fn token_ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_u64).map(|x| x as u32).collect(),
        _ => vec![],
    }
}

fn rope_from(theta_default: f64, f: &Fields<'_>) -> Result<(f64, RopeScaling)> {
    // transformers 5 writes `rope_parameters` (theta inside); 4.x wrote `rope_theta` + `rope_scaling`.
    let params = f.get("rope_parameters").or_else(|| f.get("rope_scaling"));
    let theta = match params.and_then(|p| p.get("rope_theta")).and_then(Value::as_f64) {
        Some(t) => t,
        None => f.f64("rope_theta")?.unwrap_or(theta_default),
    };
    let Some(p) = params else { return Ok((theta, RopeScaling::None)) };
    let Some(p) = p.as_object() else {
        return Err(bad(format!("config.json: rope scaling must be an object, found {p}")));
    };
    let p = Fields(p);
    let kind = p.str("rope_type").or_else(|| p.str("type")).unwrap_or("default");
    let num = |key: &str| -> Result<f64> {
        p.f64(key)?.ok_or_else(|| bad(format!("config.json: `{kind}` rope scaling needs `{key}`")))
    };
    let scaling = match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor: num("factor")? },
        "llama3" => RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")?,
        },
        other => {
            return Err(bad(format!(
                "config.json: rope scaling `{other}` is not supported (supported: default, linear, llama3)"
            )))
        }
    };
    Ok((theta, scaling))
}

impl ModelConfig {
    pub fn load(path: &Path) -> Result<ModelConfig> {
        let text =
            std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read {}: {e}", path.display())))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| bad(format!("{} is not valid JSON: {e}", path.display())))?;
        ModelConfig::from_json(&v).map_err(|e| bad(format!("{}: {e}", path.display())))
    }

    pub fn from_json(v: &Value) -> Result<ModelConfig> {
        let raw = v.as_object().ok_or_else(|| bad("config.json must be a JSON object"))?.clone();
        let f = Fields(&raw);
        let model_type = f.str("model_type").ok_or_else(|| {
            bad(format!("config.json has no `model_type`: gkd supports {}", Arch::SUPPORTED))
        })?;
        let arch: Arch = model_type.parse()?;
        let bos_token_id = token_ids(f.get("bos_token_id")).first().copied();
        let eos_token_ids = token_ids(f.get("eos_token_id"));
        let pad_token_id = token_ids(f.get("pad_token_id")).first().copied();
        let initializer_range = f.f64("initializer_range")?.unwrap_or(0.02);
        let cfg = match arch {
            Arch::Gpt2 => {
                let act = f.str("activation_function").unwrap_or("gelu_new");
                if !matches!(act, "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast") {
                    return Err(bad(format!(
                        "config.json: GPT-2 activation `{act}` is not supported (gkd implements the tanh GELU: gelu_new)"
                    )));
                }
                if f.bool("scale_attn_by_inverse_layer_idx")? == Some(true)
                    || f.bool("scale_attn_weights")? == Some(false)
                {
                    return Err(bad(
                        "config.json: GPT-2 attention scaling other than 1/sqrt(head_dim) is not supported",
                    ));
                }
                let hidden = f.req_usize("n_embd")?;
                let heads = f.req_usize("n_head")?;
                ModelConfig {
                    arch,
                    vocab_size: f.req_usize("vocab_size")?,
                    hidden_size: hidden,
                    num_layers: f.req_usize("n_layer")?,
                    num_heads: heads,
                    num_kv_heads: heads,
                    head_dim: hidden.checked_div(heads).unwrap_or(0),
                    intermediate_size: f.usize("n_inner")?.unwrap_or(4 * hidden),
                    max_position_embeddings: f.req_usize("n_positions")?,
                    norm_eps: f.f64("layer_norm_epsilon")?.unwrap_or(1e-5),
                    rope_theta: 0.0,
                    rope_scaling: RopeScaling::None,
                    qkv_bias: true,
                    o_bias: true,
                    mlp_bias: true,
                    tie_word_embeddings: f.bool("tie_word_embeddings")?.unwrap_or(true),
                    sliding_window: None,
                    initializer_range,
                    bos_token_id,
                    eos_token_ids,
                    pad_token_id,
                    raw: raw.clone(),
                }
            }
            Arch::Llama | Arch::Qwen2 | Arch::Mistral => {
                let act = f.str("hidden_act").unwrap_or("silu");
                if act != "silu" {
                    return Err(bad(format!(
                        "config.json: hidden_act `{act}` is not supported (gkd implements silu)"
                    )));
                }
                let hidden = f.req_usize("hidden_size")?;
                let heads = f.req_usize("num_attention_heads")?;
                let (rope_theta, rope_scaling) = rope_from(10000.0, &f)?;
                let attention_bias = f.bool("attention_bias")?.unwrap_or(false);
                let sliding_window = match arch {
                    Arch::Mistral => f.usize("sliding_window")?,
                    Arch::Qwen2 if f.bool("use_sliding_window")? == Some(true) => {
                        f.usize("sliding_window")?
                    }
                    _ => None,
                };
                ModelConfig {
                    arch,
                    vocab_size: f.req_usize("vocab_size")?,
                    hidden_size: hidden,
                    num_layers: f.req_usize("num_hidden_layers")?,
                    num_heads: heads,
                    num_kv_heads: f.usize("num_key_value_heads")?.unwrap_or(heads),
                    head_dim: match f.usize("head_dim")? {
                        Some(d) => d,
                        None => hidden.checked_div(heads).unwrap_or(0),
                    },
                    intermediate_size: f.req_usize("intermediate_size")?,
                    max_position_embeddings: f.usize("max_position_embeddings")?.unwrap_or(2048),
                    norm_eps: f.f64("rms_norm_eps")?.unwrap_or(1e-6),
                    rope_theta,
                    rope_scaling,
                    qkv_bias: arch == Arch::Qwen2 || attention_bias,
                    o_bias: arch != Arch::Qwen2 && attention_bias,
                    mlp_bias: arch == Arch::Llama && f.bool("mlp_bias")?.unwrap_or(false),
                    tie_word_embeddings: f.bool("tie_word_embeddings")?.unwrap_or(false),
                    sliding_window,
                    initializer_range,
                    bos_token_id,
                    eos_token_ids,
                    pad_token_id,
                    raw: raw.clone(),
                }
            }
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// A configuration for a new model with the family's defaults.
    pub fn fresh(c: FreshConfig) -> Result<ModelConfig> {
        let FreshConfig { arch, hidden_size, num_heads, .. } = c;
        let cfg = ModelConfig {
            arch,
            vocab_size: c.vocab_size,
            hidden_size,
            num_layers: c.num_layers,
            num_heads,
            num_kv_heads: if arch == Arch::Gpt2 { num_heads } else { c.num_kv_heads },
            head_dim: hidden_size.checked_div(num_heads).unwrap_or(0),
            intermediate_size: c.intermediate_size,
            max_position_embeddings: c.max_position_embeddings,
            norm_eps: if arch == Arch::Gpt2 { 1e-5 } else { 1e-6 },
            rope_theta: if arch == Arch::Gpt2 { 0.0 } else { c.rope_theta },
            rope_scaling: RopeScaling::None,
            qkv_bias: matches!(arch, Arch::Gpt2 | Arch::Qwen2),
            o_bias: arch == Arch::Gpt2,
            mlp_bias: arch == Arch::Gpt2,
            tie_word_embeddings: c.tie_word_embeddings,
            sliding_window: None,
            initializer_range: 0.02,
            bos_token_id: c.bos_token_id,
            eos_token_ids: c.eos_token_ids,
            pad_token_id: c.pad_token_id,
            raw: Map::new(),
        };
        if arch == Arch::Gpt2 && c.num_kv_heads != num_heads {
            return Err(bad(format!(
                "gpt2 has no grouped-query attention: --kv-heads must equal --heads ({num_heads}), got {}",
                c.num_kv_heads
            )));
        }
        if arch == Arch::Gpt2 && hidden_size % num_heads.max(1) != 0 {
            return Err(bad(format!(
                "gpt2: hidden size {hidden_size} is not a multiple of {num_heads} heads"
            )));
        }
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<()> {
        let nonzero = [
            ("vocab size", self.vocab_size),
            ("hidden size", self.hidden_size),
            ("number of layers", self.num_layers),
            ("number of heads", self.num_heads),
            ("number of key/value heads", self.num_kv_heads),
            ("head dimension", self.head_dim),
            ("intermediate size", self.intermediate_size),
        ];
        if let Some((what, _)) = nonzero.iter().find(|(_, v)| *v == 0) {
            return Err(bad(format!("config: the {what} must be positive")));
        }
        if self.num_heads % self.num_kv_heads != 0 {
            return Err(bad(format!(
                "config: {} attention heads cannot be shared by {} key/value heads (not a multiple)",
                self.num_heads, self.num_kv_heads
            )));
        }
        if self.arch.is_llama_family() && self.head_dim % 2 != 0 {
            return Err(bad(format!("config: RoPE needs an even head dimension, got {}", self.head_dim)));
        }
        if self.arch == Arch::Gpt2 && self.head_dim * self.num_heads != self.hidden_size {
            return Err(bad(format!(
                "config: gpt2 hidden size {} is not {} heads × {}",
                self.hidden_size, self.num_heads, self.head_dim
            )));
        }
        Ok(())
    }

    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    /// The longest sequence this model can process: GPT-2 has a fixed number of positions; the
    /// Llama family is limited only by a sliding window gkd does not implement.
    pub fn max_sequence(&self) -> Option<usize> {
        match self.arch {
            Arch::Gpt2 => Some(self.max_position_embeddings),
            _ => self.sliding_window,
        }
    }

    /// An error naming the limit when a sequence of `len` tokens is too long for this model.
    pub fn check_length(&self, len: usize) -> Result<()> {
        match (self.arch, self.max_sequence()) {
            (Arch::Gpt2, Some(m)) if len > m => Err(bad(format!(
                "a sequence of {len} tokens is longer than this gpt2 model's {m} positions (n_positions)"
            ))),
            (_, Some(w)) if len > w => Err(bad(format!(
                "a sequence of {len} tokens is longer than the sliding attention window ({w}); gkd does not implement sliding-window attention"
            ))),
            _ => Ok(()),
        }
    }

    /// The Hugging Face `config.json` for this model, with `dtype` naming the saved weights' type
    /// (`float32`, `bfloat16`, `float16`).
    pub fn to_json(&self, dtype: &str) -> Value {
        let mut m = self.raw.clone();
        let mut set = |k: &str, v: Value| {
            m.insert(k.to_string(), v);
        };
        set("model_type", json!(self.arch.model_type()));
        set("architectures", json!([self.arch.hf_class()]));
        set("vocab_size", json!(self.vocab_size));
        set("bos_token_id", json!(self.bos_token_id));
        set(
            "eos_token_id",
            match self.eos_token_ids.as_slice() {
                [] => Value::Null,
                [one] => json!(one),
                many => json!(many),
            },
        );
        set("pad_token_id", json!(self.pad_token_id));
        set("tie_word_embeddings", json!(self.tie_word_embeddings));
        set("initializer_range", json!(self.initializer_range));
        match self.arch {
            Arch::Gpt2 => {
                set("n_embd", json!(self.hidden_size));
                set("n_layer", json!(self.num_layers));
                set("n_head", json!(self.num_heads));
                set("n_inner", json!(self.intermediate_size));
                set("n_positions", json!(self.max_position_embeddings));
                set("layer_norm_epsilon", json!(self.norm_eps));
                if !self.raw.contains_key("activation_function") {
                    set("activation_function", json!("gelu_new"));
                }
                // No dropout in a fresh model: gkd trains without it.
                for k in ["attn_pdrop", "embd_pdrop", "resid_pdrop"] {
                    if !self.raw.contains_key(k) {
                        set(k, json!(0.0));
                    }
                }
            }
            Arch::Llama | Arch::Qwen2 | Arch::Mistral => {
                set("hidden_size", json!(self.hidden_size));
                set("num_hidden_layers", json!(self.num_layers));
                set("num_attention_heads", json!(self.num_heads));
                set("num_key_value_heads", json!(self.num_kv_heads));
                set("head_dim", json!(self.head_dim));
                set("intermediate_size", json!(self.intermediate_size));
                set("max_position_embeddings", json!(self.max_position_embeddings));
                set("rms_norm_eps", json!(self.norm_eps));
                set("hidden_act", json!("silu"));
                let scaling = match &self.rope_scaling {
                    RopeScaling::None => None,
                    RopeScaling::Linear { factor } => Some(json!({"rope_type": "linear", "factor": factor})),
                    RopeScaling::Llama3 {
                        factor,
                        low_freq_factor,
                        high_freq_factor,
                        original_max_position_embeddings,
                    } => Some(
                        json!({"rope_type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
                            "high_freq_factor": high_freq_factor,
                            "original_max_position_embeddings": original_max_position_embeddings}),
                    ),
                };
                if self.raw.contains_key("rope_parameters") {
                    let mut p = scaling.unwrap_or_else(|| json!({"rope_type": "default"}));
                    p["rope_theta"] = json!(self.rope_theta);
                    set("rope_parameters", p);
                } else {
                    set("rope_theta", json!(self.rope_theta));
                    set("rope_scaling", scaling.unwrap_or(Value::Null));
                }
                if self.arch == Arch::Llama {
                    set("attention_bias", json!(self.qkv_bias));
                    set("mlp_bias", json!(self.mlp_bias));
                }
                if self.arch == Arch::Mistral || self.raw.contains_key("sliding_window") {
                    set("sliding_window", json!(self.sliding_window));
                }
            }
        }
        if m.contains_key("dtype") {
            m.insert("dtype".into(), json!(dtype));
        } else {
            m.insert("torch_dtype".into(), json!(dtype));
        }
        Value::Object(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_model_type_names_the_supported_ones() {
        let e = ModelConfig::from_json(&json!({"model_type": "bert"})).unwrap_err().to_string();
        assert!(e.contains("bert") && e.contains("gpt2, llama, qwen2, mistral"), "{e}");
    }

    #[test]
    fn reads_both_rope_spellings() {
        let base = json!({"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1,
            "num_attention_heads": 2, "intermediate_size": 16});
        let mut v4 = base.clone();
        v4["rope_theta"] = json!(5e5);
        v4["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64});
        let mut v5 = base.clone();
        v5["rope_parameters"] = json!({"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64});
        let (a, b) = (ModelConfig::from_json(&v4).unwrap(), ModelConfig::from_json(&v5).unwrap());
        assert_eq!(a.rope_theta, 5e5);
        assert_eq!(a.rope_scaling, b.rope_scaling);
        assert_eq!(a.rope_theta, b.rope_theta);
        let mut dynamic = base;
        dynamic["rope_scaling"] = json!({"type": "dynamic", "factor": 2.0});
        let e = ModelConfig::from_json(&dynamic).unwrap_err().to_string();
        assert!(e.contains("dynamic") && e.contains("llama3"), "{e}");
    }

    #[test]
    fn round_trips_through_json() {
        let fresh = ModelConfig::fresh(FreshConfig {
            arch: Arch::Qwen2,
            vocab_size: 50,
            hidden_size: 16,
            num_layers: 2,
            num_heads: 4,
            num_kv_heads: 2,
            intermediate_size: 32,
            max_position_embeddings: 128,
            rope_theta: 1e6,
            tie_word_embeddings: true,
            bos_token_id: Some(1),
            eos_token_ids: vec![2],
            pad_token_id: None,
        })
        .unwrap();
        let back = ModelConfig::from_json(&fresh.to_json("float32")).unwrap();
        assert_eq!((back.arch, back.num_kv_heads, back.head_dim, back.rope_theta), (Arch::Qwen2, 2, 4, 1e6));
        assert!(back.qkv_bias && !back.o_bias && back.tie_word_embeddings);
        assert_eq!(back.eos_token_ids, vec![2]);
    }
}
