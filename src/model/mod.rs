//! Hugging Face causal language models: GPT-2 and the Llama family (Llama, Qwen2, Mistral).
//!
//! A `Model` is its `config.json` and its parameters under their Hugging Face names, in f32 on
//! one device. Two forward passes share those parameters:
//! - `forward_hidden` / `forward_logits` record the model on an autograd `Tape` (scoring and
//!   training: the student's backward runs through it);
//! - `forward_cached` runs without a tape on the CPU, appending to a `KvCache` (generation).
//!
//! A test checks that both give the same logits.

pub mod checkpoint;
pub mod config;
mod gpt2;
pub mod kv_cache;
mod llama;

pub use config::{Arch, FreshConfig, ModelConfig, RopeScaling};
pub use kv_cache::{CacheChunk, KvCache};

use crate::autograd::{Tape, Var};
use crate::error::{Error, Result};
use crate::tensor::{DType, Device, Tensor};
use checkpoint::Checkpoint;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::path::Path;

/// How a fresh parameter is initialized (as `transformers` does for these families).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    Normal { std: f64 },
    Zeros,
    Ones,
}

/// One parameter: Hugging Face name, shape (as stored in the checkpoint), initialization.
#[derive(Clone, Debug)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
}

impl ParamSpec {
    fn new(name: impl Into<String>, shape: &[usize], init: Init) -> ParamSpec {
        ParamSpec { name: name.into(), shape: shape.to_vec(), init }
    }
}

/// A model's parameters recorded on one tape, in `Model::names()` order.
#[derive(Clone, Debug)]
pub struct ParamVars(Vec<Var>);

impl ParamVars {
    pub fn vars(&self) -> &[Var] {
        &self.0
    }
}

/// B token sequences right-padded to a common length T (rows ordered b·T + t).
#[derive(Clone, Debug)]
pub struct TokenBatch {
    pub ids: Vec<u32>,       // (B, T); padding holds token 0
    pub lengths: Vec<usize>, // (B)
    pub seq: usize,          // T
}

impl TokenBatch {
    pub fn new(seqs: &[Vec<u32>]) -> Result<TokenBatch> {
        if seqs.is_empty() || seqs.iter().any(Vec::is_empty) {
            return Err(Error::Msg(
                "a batch needs at least one sequence, and every sequence at least one token".into(),
            ));
        }
        let seq = seqs.iter().map(Vec::len).max().unwrap_or(0);
        let mut ids = vec![0u32; seqs.len() * seq];
        for (b, s) in seqs.iter().enumerate() {
            ids[b * seq..b * seq + s.len()].copy_from_slice(s);
        }
        Ok(TokenBatch { ids, lengths: seqs.iter().map(Vec::len).collect(), seq })
    }

    pub fn batch(&self) -> usize {
        self.lengths.len()
    }

    /// The position of every row: t in 0..T for each sequence.
    pub fn positions(&self) -> Vec<u32> {
        (0..self.batch()).flat_map(|_| 0..self.seq as u32).collect()
    }
}

pub struct Model {
    pub config: ModelConfig,
    names: Vec<String>,
    tensors: Vec<Tensor>,
    index: HashMap<String, usize>,
}

/// Box–Muller normal draws.
fn normal(rng: &mut StdRng, n: usize, std: f64) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]
        let u2: f64 = rng.random::<f64>();
        let r = (-2.0 * u1.ln()).sqrt() * std;
        let a = std::f64::consts::TAU * u2;
        out.push((r * a.cos()) as f32);
        out.push((r * a.sin()) as f32);
    }
    out.truncate(n);
    out
}

impl Model {
    /// The parameters a configuration needs, in a fixed order.
    pub fn param_specs(cfg: &ModelConfig) -> Vec<ParamSpec> {
        match cfg.arch {
            Arch::Gpt2 => gpt2::param_specs(cfg),
            _ => llama::param_specs(cfg),
        }
    }

    /// Loads `config.json` and the safetensors checkpoint of a model directory.
    pub fn load(dir: &Path) -> Result<Model> {
        let config = ModelConfig::load(&dir.join("config.json"))?;
        let ck = Checkpoint::open(dir)?;
        Model::from_checkpoint(config, &ck)
    }

    /// Reads every parameter from `ck`. A checkpoint may spell names without the family's prefix
    /// (`transformer.` for GPT-2, `model.` for Llama), as base-model checkpoints do; tensors the
    /// model does not use (a tied head's copy, buffers) are ignored.
    pub fn from_checkpoint(config: ModelConfig, ck: &Checkpoint) -> Result<Model> {
        let prefix = match config.arch {
            Arch::Gpt2 => "transformer.",
            _ => "model.",
        };
        let mut tensors = Vec::new();
        for spec in Model::param_specs(&config) {
            let name = match spec.name.strip_prefix(prefix) {
                Some(short) if !ck.contains(&spec.name) && ck.contains(short) => short,
                _ => spec.name.as_str(),
            };
            if spec.name == "lm_head.weight" && !ck.contains(name) {
                return Err(Error::Msg(format!(
                    "the checkpoint has no tensor `lm_head.weight` (expected shape {:?}) and config.json says the head is not tied (tie_word_embeddings: false)",
                    spec.shape
                )));
            }
            tensors.push((spec.name.clone(), ck.load_f32(name, &spec.shape)?));
        }
        Model::from_tensors(config, tensors)
    }

    /// A fresh model, initialized as `transformers` initializes one, from a seed.
    pub fn init(config: ModelConfig, seed: u64) -> Result<Model> {
        let mut rng = StdRng::seed_from_u64(seed);
        let tensors = Model::param_specs(&config)
            .into_iter()
            .map(|s| {
                let n = s.shape.iter().product();
                let data = match s.init {
                    Init::Normal { std } => normal(&mut rng, n, std),
                    Init::Zeros => vec![0.0; n],
                    Init::Ones => vec![1.0; n],
                };
                Ok((s.name, Tensor::from_vec(data, s.shape)?))
            })
            .collect::<Result<Vec<_>>>()?;
        Model::from_tensors(config, tensors)
    }

    /// A model from named tensors: exactly the names and shapes `param_specs` lists.
    pub fn from_tensors(config: ModelConfig, tensors: Vec<(String, Tensor)>) -> Result<Model> {
        let specs = Model::param_specs(&config);
        let mut given: HashMap<String, Tensor> = tensors.into_iter().collect();
        let mut names = Vec::with_capacity(specs.len());
        let mut values = Vec::with_capacity(specs.len());
        for s in specs {
            let t = given.remove(&s.name).ok_or_else(|| {
                Error::Msg(format!("missing tensor `{}` (expected shape {:?})", s.name, s.shape))
            })?;
            if t.dims() != s.shape.as_slice() {
                return Err(Error::Msg(format!(
                    "tensor `{}` has shape {:?}, but the config needs {:?}",
                    s.name,
                    t.dims(),
                    s.shape
                )));
            }
            names.push(s.name);
            values.push(t);
        }
        if let Some(extra) = given.keys().next() {
            return Err(Error::Msg(format!(
                "tensor `{extra}` is not a parameter of this {} model",
                config.arch
            )));
        }
        let index = names.iter().enumerate().map(|(i, n)| (n.clone(), i)).collect();
        Ok(Model { config, names, tensors: values, index })
    }

    /// Writes `config.json`, `generation_config.json` and the weights in `dtype`, in Hugging Face
    /// layout (GPT-2's Conv1D weights stay (in, out), a tied head is not written twice).
    pub fn save(&self, dir: &Path, dtype: DType) -> Result<()> {
        self.save_sharded(dir, dtype, None)
    }

    /// As `save`, splitting the weights into shards of at most `max_shard_bytes`.
    pub fn save_sharded(&self, dir: &Path, dtype: DType, max_shard_bytes: Option<usize>) -> Result<()> {
        let dtype_name = match dtype {
            DType::F32 => "float32",
            DType::BF16 => "bfloat16",
            DType::F16 => "float16",
            DType::F64 => "float64",
        };
        let named: Vec<(String, Tensor)> =
            self.names.iter().cloned().zip(self.tensors.iter().cloned()).collect();
        checkpoint::save(dir, &named, dtype, max_shard_bytes)?;
        let write = |file: &str, v: serde_json::Value| {
            let path = dir.join(file);
            std::fs::write(&path, serde_json::to_string_pretty(&v).expect("JSON") + "\n")
                .map_err(|e| Error::Msg(format!("cannot write {}: {e}", path.display())))
        };
        write("config.json", self.config.to_json(dtype_name))?;
        let c = &self.config;
        let eos = match c.eos_token_ids.as_slice() {
            [] => serde_json::Value::Null,
            [one] => serde_json::json!(one),
            many => serde_json::json!(many),
        };
        write(
            "generation_config.json",
            serde_json::json!({"bos_token_id": c.bos_token_id, "eos_token_id": eos, "pad_token_id": c.pad_token_id}),
        )
    }

    /// Parameter names, in the order of `tensors()` and of `bind`'s vars.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn tensors(&self) -> &[Tensor] {
        &self.tensors
    }

    /// For an optimizer: replace parameters in place (shapes must not change).
    pub fn tensors_mut(&mut self) -> &mut [Tensor] {
        &mut self.tensors
    }

    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.index
            .get(name)
            .map(|&i| &self.tensors[i])
            .ok_or_else(|| Error::Msg(format!("this {} model has no parameter `{name}`", self.config.arch)))
    }

    pub fn num_params(&self) -> usize {
        self.tensors.iter().map(Tensor::numel).sum()
    }

    pub fn device(&self) -> Device {
        self.tensors.first().map(Tensor::device).unwrap_or(Device::Cpu)
    }

    pub fn to_device(&self, device: Device) -> Result<Model> {
        let tensors = self.tensors.iter().map(|t| t.to_device(device)).collect::<Result<_>>()?;
        Ok(Model {
            config: self.config.clone(),
            names: self.names.clone(),
            tensors,
            index: self.index.clone(),
        })
    }

    /// Records every parameter as a leaf of `tape`.
    pub fn bind(&self, tape: &mut Tape, requires_grad: bool) -> ParamVars {
        ParamVars(self.tensors.iter().map(|t| tape.leaf(t.clone(), requires_grad)).collect())
    }

    fn var(&self, p: &ParamVars, name: &str) -> Result<Var> {
        self.index
            .get(name)
            .and_then(|&i| p.0.get(i).copied())
            .ok_or_else(|| Error::Msg(format!("internal: parameter `{name}` is not bound")))
    }

    /// The final hidden states (after the last norm), (B·T, hidden).
    pub fn forward_hidden(&self, tape: &mut Tape, p: &ParamVars, batch: &TokenBatch) -> Result<Var> {
        if p.0.len() != self.tensors.len() {
            return Err(Error::Msg(format!(
                "{} bound parameters for a model with {}",
                p.0.len(),
                self.tensors.len()
            )));
        }
        self.config.check_length(batch.seq)?;
        match self.config.arch {
            Arch::Gpt2 => gpt2::forward_hidden(self, tape, p, batch),
            _ => llama::forward_hidden(self, tape, p, batch),
        }
    }

    /// The output projection, (vocab, hidden) as `nn.Linear` stores it: the token embedding when
    /// the head is tied.
    pub fn lm_head(&self, p: &ParamVars) -> Result<Var> {
        self.var(p, self.lm_head_name())
    }

    pub fn lm_head_name(&self) -> &'static str {
        match (self.config.arch, self.config.tie_word_embeddings) {
            (_, false) => "lm_head.weight",
            (Arch::Gpt2, true) => "transformer.wte.weight",
            (_, true) => "model.embed_tokens.weight",
        }
    }

    /// Logits, (B·T, vocab).
    pub fn forward_logits(&self, tape: &mut Tape, p: &ParamVars, batch: &TokenBatch) -> Result<Var> {
        let h = self.forward_hidden(tape, p, batch)?;
        let w = self.lm_head(p)?;
        tape.linear(h, w, None, crate::autograd::WeightLayout::OutIn)
    }

    /// For each sequence s, ln p(s[i+1] | s[..=i]) for i < len − 1, computed in one padded batch
    /// without gradients.
    pub fn logprobs(&self, seqs: &[Vec<u32>]) -> Result<Vec<Vec<f64>>> {
        let batch = TokenBatch::new(seqs)?;
        let mut tape = Tape::new();
        let p = self.bind(&mut tape, false);
        let logits = self.forward_logits(&mut tape, &p, &batch)?;
        let logits = tape.value(logits).to_vec_f32()?;
        let v = self.config.vocab_size;
        Ok(seqs
            .iter()
            .enumerate()
            .map(|(b, s)| {
                (0..s.len() - 1)
                    .map(|t| log_softmax_at(&logits[(b * batch.seq + t) * v..][..v], s[t + 1] as usize))
                    .collect()
            })
            .collect())
    }

    /// Runs `chunks` (new tokens of some cached sequences) through the model without a tape,
    /// appending their keys and values to `cache`; returns the logits of each chunk's last token,
    /// (chunks, vocab). CPU and f32 only.
    pub fn forward_cached(&self, cache: &mut KvCache, chunks: &[(usize, &[u32])]) -> Result<Vec<f32>> {
        if self.device() != Device::Cpu {
            return Err(Error::Unsupported { op: "cached forward (generation)", device: self.device() });
        }
        if chunks.iter().any(|(_, t)| t.is_empty()) {
            return Err(Error::Msg("forward_cached: every chunk needs at least one token".into()));
        }
        for &(s, toks) in chunks {
            self.config.check_length(cache.seq_len(s)? + toks.len())?;
            if let Some(&bad) = toks.iter().find(|&&t| t as usize >= self.config.vocab_size) {
                return Err(Error::Msg(format!(
                    "token id {bad} is outside the model's vocabulary of {}",
                    self.config.vocab_size
                )));
            }
        }
        match self.config.arch {
            Arch::Gpt2 => gpt2::forward_cached(self, cache, chunks),
            _ => llama::forward_cached(self, cache, chunks),
        }
    }

    /// An empty cache for `sequences` sequences of this model.
    pub fn new_cache(&self, sequences: usize) -> KvCache {
        KvCache::new(self.config.num_layers, sequences, self.config.num_kv_heads, self.config.head_dim)
    }

    /// The CPU f32 slice of a parameter (the cached path).
    fn f32(&self, name: &str) -> Result<&[f32]> {
        self.get(name)?.cpu_slice::<f32>()
    }

    fn f32_opt(&self, name: &str) -> Result<Option<&[f32]>> {
        match self.index.get(name) {
            Some(&i) => Ok(Some(self.tensors[i].cpu_slice::<f32>()?)),
            None => Ok(None),
        }
    }
}

/// ln softmax(row)[target], in f64.
pub fn log_softmax_at(row: &[f32], target: usize) -> f64 {
    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = m + row.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
    row[target] as f64 - lse
}

/// Building blocks of the cached (no-tape) forward, on f32 slices.
mod cached_ops {
    use crate::backend::cpu::{self, LinearDims};

    /// x (N, Din) → (N, Dout); `in_out`: W stored (Din, Dout) (GPT-2 Conv1D), else (Dout, Din).
    pub fn linear(
        x: &[f32],
        w: &[f32],
        b: Option<&[f32]>,
        d_in: usize,
        d_out: usize,
        in_out: bool,
    ) -> Vec<f32> {
        let n = x.len() / d_in;
        cpu::linear_fwd(LinearDims { n, d_in, d_out, w_in_out: in_out }, x, w, b)
    }

    pub fn add_assign(h: &mut [f32], d: &[f32]) {
        for (a, b) in h.iter_mut().zip(d) {
            *a += b;
        }
    }

    /// The rows `rows` of x (N, C).
    pub fn gather_rows(x: &[f32], cols: usize, rows: &[usize]) -> Vec<f32> {
        rows.iter().flat_map(|&r| x[r * cols..(r + 1) * cols].iter().copied()).collect()
    }
}
