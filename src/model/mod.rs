//! Hugging Face causal language models: GPT-2 and the Llama family (Llama, Qwen2, Mistral).
//!
//! A `Model` is its `config.json` and its parameters under their Hugging Face names, in one flat
//! buffer on one device (`params.rs`). Each architecture has one forward (`forward`), recorded
//! on a `Tape`: with gradients for training, on `Tape::no_grad()` for the teacher, scoring and
//! generation; `Inputs` says whether attention runs over packed sequences (`TokenBatch`) or over a
//! key/value cache (`kv_cache.rs`) that the forward appends to.

pub mod checkpoint;
pub mod config;
mod gpt2;
pub mod kv_cache;
mod llama;
pub mod params;

pub use config::{Arch, FreshConfig, ModelConfig, RopeScaling};
pub use kv_cache::{CacheStep, Fresh, KvCache};
pub use llama::inv_freq as rope_inv_freq;
pub use params::{ParamEntry, ParamStore, ParamVars};

use crate::autograd::{
    CachedAttnDims, LinearLoss, LinearLossTarget, LossKind, Segment, Tape, Var, WeightLayout,
};
use crate::backend::ops::{AttnDims, IGNORE};
use crate::error::{Error, Result};
use crate::tensor::{CpuStorage, DType, Device, Element, Tensor};
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

/// B token sequences packed back to back, without padding: sequence b is rows
/// starts[b]..starts[b] + lengths[b], so no work is spent on padding rows.
#[derive(Clone, Debug)]
pub struct TokenBatch {
    pub ids: Vec<u32>,       // (N = Σ lengths)
    pub starts: Vec<usize>,  // (B)
    pub lengths: Vec<usize>, // (B)
}

impl TokenBatch {
    pub fn new(seqs: &[Vec<u32>]) -> Result<TokenBatch> {
        if seqs.is_empty() || seqs.iter().any(Vec::is_empty) {
            return Err(Error::Msg(
                "a batch needs at least one sequence, and every sequence at least one token".into(),
            ));
        }
        let lengths: Vec<usize> = seqs.iter().map(Vec::len).collect();
        let starts = lengths.iter().scan(0, |at, &l| Some(std::mem::replace(at, *at + l))).collect();
        Ok(TokenBatch { ids: seqs.concat(), starts, lengths })
    }

    pub fn batch(&self) -> usize {
        self.lengths.len()
    }

    /// Rows in all.
    pub fn rows(&self) -> usize {
        self.ids.len()
    }

    /// The row of position t of sequence b.
    pub fn row(&self, b: usize, t: usize) -> usize {
        self.starts[b] + t
    }

    /// The position of every row in its sequence.
    pub fn positions(&self) -> Vec<u32> {
        self.lengths.iter().flat_map(|&l| 0..l as u32).collect()
    }

    /// The forward's inputs on `device`.
    pub fn inputs(&self, device: Device) -> Result<Inputs<'static>> {
        let u32s = |v: &[usize]| v.iter().map(|&x| x as u32).collect::<Vec<u32>>();
        Ok(Inputs {
            ids: Tensor::from_u32(&self.ids, device)?,
            positions: Tensor::from_u32(&self.positions(), device)?,
            longest: self.lengths.iter().copied().max().unwrap_or(0),
            attend: Attend::Sequences {
                starts: Tensor::from_u32(&u32s(&self.starts), device)?,
                lengths: Tensor::from_u32(&u32s(&self.lengths), device)?,
            },
        })
    }
}

/// What attention runs over.
pub enum Attend<'a> {
    /// Causally within each sequence laid out in the rows: (B) starts and lengths.
    Sequences { starts: Tensor, lengths: Tensor },
    /// The step's new rows over a key/value cache, which the forward appends them to.
    Cache { cache: &'a mut KvCache, step: Box<CacheStep> },
}

/// The rows a forward processes: token ids and positions (N) u32 on the model's device, the
/// longest sequence the rows reach (a bound the caller vouches for: the model's length limit
/// applies to it), and what attention runs over.
pub struct Inputs<'a> {
    pub ids: Tensor,
    pub positions: Tensor,
    pub longest: usize,
    pub attend: Attend<'a>,
}

impl Inputs<'_> {
    pub fn rows(&self) -> usize {
        self.ids.numel()
    }

    /// An owned copy of inputs over packed sequences (what a recomputed segment runs on again in
    /// the backward); None over a key/value cache.
    pub(crate) fn owned_sequences(&self) -> Option<SeqInputs> {
        match &self.attend {
            Attend::Sequences { starts, lengths } => Some(SeqInputs {
                ids: self.ids.clone(),
                positions: self.positions.clone(),
                longest: self.longest,
                starts: starts.clone(),
                lengths: lengths.clone(),
            }),
            Attend::Cache { .. } => None,
        }
    }
}

pub struct Model {
    pub config: ModelConfig,
    params: ParamStore,
    recompute: Recompute,
}

/// Which activations a training forward keeps for the backward (`--recompute`): all of them, all
/// but each layer's attention block (its projections, rotary embedding and attention run again in
/// the backward), or only each layer's input (the whole layer runs again). Forwards without a
/// gradient ignore it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Recompute {
    #[default]
    None,
    Attention,
    Layers,
}

impl std::str::FromStr for Recompute {
    type Err = Error;
    fn from_str(s: &str) -> Result<Recompute> {
        match s {
            "none" => Ok(Recompute::None),
            "attention" => Ok(Recompute::Attention),
            "layers" => Ok(Recompute::Layers),
            _ => Err(Error::Msg(format!("unknown --recompute `{s}`: use none, attention or layers"))),
        }
    }
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

/// Writes `values` into elements `at..` of a host buffer of f32 or f64.
fn write_host<T: Element>(host: &mut CpuStorage, at: usize, values: &[T]) -> Result<()> {
    match host {
        CpuStorage::F32(v) => {
            v[at..at + values.len()].iter_mut().zip(values).for_each(|(d, s)| *d = s.to_f64() as f32)
        }
        CpuStorage::F64(v) => {
            v[at..at + values.len()].iter_mut().zip(values).for_each(|(d, s)| *d = s.to_f64())
        }
        other => return Err(Error::Msg(format!("internal: parameters built in {}", other.dtype()))),
    }
    Ok(())
}

impl Model {
    /// The parameters a configuration needs, in a fixed order.
    pub fn param_specs(cfg: &ModelConfig) -> Vec<ParamSpec> {
        match cfg.arch {
            Arch::Gpt2 => gpt2::param_specs(cfg),
            _ => llama::param_specs(cfg),
        }
    }

    fn shapes(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
        Model::param_specs(cfg).into_iter().map(|s| (s.name, s.shape)).collect()
    }

    /// Loads `config.json` and the safetensors checkpoint of a model directory, in f32 on the CPU.
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
        let params = ParamStore::build(&Model::shapes(&config), DType::F32, Device::Cpu, |e, host, at| {
            let name = match e.name.strip_prefix(prefix) {
                Some(short) if !ck.contains(&e.name) && ck.contains(short) => short,
                _ => e.name.as_str(),
            };
            if e.name == "lm_head.weight" && !ck.contains(name) {
                return Err(Error::Msg(format!(
                    "the checkpoint has no tensor `lm_head.weight` (expected shape {:?}) and config.json says the head is not tied (tie_word_embeddings: false)",
                    e.shape
                )));
            }
            let CpuStorage::F32(v) = host else { return Err(Error::Msg("internal: f32 parameters".into())) };
            ck.read_f32_into(name, &e.shape, &mut v[at..at + e.numel()])
        })?;
        Ok(Model { config, params, recompute: Recompute::None })
    }

    /// A fresh model, initialized as `transformers` initializes one, from a seed.
    pub fn init(config: ModelConfig, seed: u64) -> Result<Model> {
        let mut rng = StdRng::seed_from_u64(seed);
        // Drawn in the order of the specs (independent of the buffer's layout).
        let mut values: HashMap<String, Vec<f32>> = HashMap::new();
        for s in Model::param_specs(&config) {
            let n = s.shape.iter().product();
            let data = match s.init {
                Init::Normal { std } => normal(&mut rng, n, std),
                Init::Zeros => vec![0.0; n],
                Init::Ones => vec![1.0; n],
            };
            values.insert(s.name, data);
        }
        let params = ParamStore::build(&Model::shapes(&config), DType::F32, Device::Cpu, |e, host, at| {
            write_host(host, at, &values[&e.name])
        })?;
        Ok(Model { config, params, recompute: Recompute::None })
    }

    /// A model from named tensors: exactly the names and shapes `param_specs` lists, all f32 or
    /// all f64 (gradient checks), on the CPU.
    pub fn from_tensors(config: ModelConfig, tensors: Vec<(String, Tensor)>) -> Result<Model> {
        let shapes = Model::shapes(&config);
        let mut given: HashMap<String, Tensor> = tensors.into_iter().collect();
        for (name, shape) in &shapes {
            let t = given
                .get(name)
                .ok_or_else(|| Error::Msg(format!("missing tensor `{name}` (expected shape {shape:?})")))?;
            if t.dims() != shape.as_slice() {
                return Err(Error::Msg(format!(
                    "tensor `{name}` has shape {:?}, but the config needs {shape:?}",
                    t.dims()
                )));
            }
        }
        if let Some(extra) = given.keys().find(|k| !shapes.iter().any(|(n, _)| n == *k)) {
            return Err(Error::Msg(format!(
                "tensor `{extra}` is not a parameter of this {} model",
                config.arch
            )));
        }
        let dtype = if given.values().any(|t| t.dtype() == DType::F64) { DType::F64 } else { DType::F32 };
        let params = ParamStore::build(&shapes, dtype, Device::Cpu, |e, host, at| {
            let t = given.remove(&e.name).expect("checked above");
            match t.to_cpu_storage()? {
                CpuStorage::F64(v) => write_host(host, at, &v),
                other => write_host(host, at, &other.to_f32_vec()),
            }
        })?;
        Ok(Model { config, params, recompute: Recompute::None })
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
            d => return Err(Error::Msg(format!("weights cannot be saved as {d}: use f32, bf16 or f16"))),
        };
        // One copy of the buffer to the host, then every parameter is a slice of it.
        let host = self.params.master().to_device(Device::Cpu)?;
        let named: Vec<(String, Tensor)> = self
            .params
            .entries()
            .iter()
            .map(|e| Ok((e.name.clone(), host.narrow(0, e.offset, e.numel())?.reshape(e.shape.clone())?)))
            .collect::<Result<_>>()?;
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
        self.params.names()
    }

    /// Every parameter (views of the flat buffer), in `names()` order.
    pub fn tensors(&self) -> Result<Vec<Tensor>> {
        self.params.tensors()
    }

    pub fn params(&self) -> &ParamStore {
        &self.params
    }

    /// For an optimizer and for tests: the parameters, writable in place.
    pub fn params_mut(&mut self) -> &mut ParamStore {
        &mut self.params
    }

    pub fn get(&self, name: &str) -> Result<Tensor> {
        self.params
            .get(name)
            .ok_or_else(|| Error::Msg(format!("this {} model has no parameter `{name}`", self.config.arch)))?
    }

    pub fn num_params(&self) -> usize {
        self.params.numel()
    }

    pub fn device(&self) -> Device {
        self.params.device()
    }

    pub fn dtype(&self) -> DType {
        self.params.dtype()
    }

    pub fn to_device(&self, device: Device) -> Result<Model> {
        Ok(Model {
            config: self.config.clone(),
            params: self.params.to_device(device)?,
            recompute: self.recompute,
        })
    }

    /// The model on `device` computing in `dtype` (bf16 on a GPU); with `train`, f32 master
    /// weights are kept beside a bf16 compute copy for the optimizer (see `params.rs`).
    pub fn to_compute(&self, device: Device, dtype: DType, train: bool) -> Result<Model> {
        Ok(Model {
            config: self.config.clone(),
            params: self.params.to_compute(device, dtype, train)?,
            recompute: self.recompute,
        })
    }

    /// Sets which activations training forwards keep (see `Recompute`).
    pub fn set_recompute(&mut self, r: Recompute) {
        self.recompute = r;
    }

    pub fn recompute(&self) -> Recompute {
        self.recompute
    }

    /// Records every parameter as a leaf of `tape`.
    pub fn bind(&self, tape: &mut Tape, requires_grad: bool) -> Result<ParamVars> {
        self.params.bind(tape, requires_grad)
    }

    fn var<'p>(&self, p: &'p ParamVars, name: &str) -> Result<&'p Var> {
        self.params
            .position(name)
            .and_then(|i| p.vars().get(i))
            .ok_or_else(|| Error::Msg(format!("internal: parameter `{name}` is not bound")))
    }

    fn var_opt<'p>(&self, p: &'p ParamVars, name: &str) -> Option<&'p Var> {
        self.params.position(name).and_then(|i| p.vars().get(i))
    }

    /// The final hidden states (after the last norm), (N, hidden), of the rows of `x`. With a
    /// cache, the rows' keys and values are appended to it.
    pub fn forward(&self, tape: &mut Tape, p: &ParamVars, x: &mut Inputs) -> Result<Var> {
        if p.vars().len() != self.params.entries().len() {
            return Err(Error::Msg(format!(
                "{} bound parameters for a model with {}",
                p.vars().len(),
                self.params.entries().len()
            )));
        }
        if x.positions.numel() != x.rows() {
            return Err(Error::Msg(format!("{} token ids for {} positions", x.rows(), x.positions.numel())));
        }
        self.config.check_length(x.longest)?;
        let h = match self.config.arch {
            Arch::Gpt2 => gpt2::forward(self, tape, p, x),
            _ => llama::forward(self, tape, p, x),
        }?;
        if let Attend::Cache { cache, step } = &mut x.attend {
            cache.advance(step);
        }
        Ok(h)
    }

    /// The output projection, (vocab, hidden) as `nn.Linear` stores it: the token embedding when
    /// the head is tied.
    pub fn lm_head<'p>(&self, p: &'p ParamVars) -> Result<&'p Var> {
        self.var(p, self.lm_head_name())
    }

    pub fn lm_head_name(&self) -> &'static str {
        match (self.config.arch, self.config.tie_word_embeddings) {
            (_, false) => "lm_head.weight",
            (Arch::Gpt2, true) => "transformer.wte.weight",
            (_, true) => "model.embed_tokens.weight",
        }
    }

    /// Logits of some hidden rows, (rows, vocab): only for few rows (a decode step); losses over
    /// many rows go through `Tape::linear_loss`, which never holds them all.
    pub fn logits(&self, tape: &mut Tape, p: &ParamVars, hidden: &Var) -> Result<Var> {
        tape.linear(hidden, self.lm_head(p)?, None, WeightLayout::OutIn)
    }

    /// For each sequence s, ln p(s[i+1] | s[..=i]) for i < len − 1, from one batch without
    /// gradients, through the chunked output head (no (tokens × vocab) buffer).
    pub fn logprobs(&self, seqs: &[Vec<u32>]) -> Result<Vec<Vec<f64>>> {
        let batch = TokenBatch::new(seqs)?;
        let mut tape = Tape::no_grad();
        let p = self.bind(&mut tape, false)?;
        let h = self.forward(&mut tape, &p, &mut batch.inputs(self.device())?)?;
        // Every row predicts the next token of its sequence; a sequence's last row does not count.
        let targets: Vec<u32> = seqs
            .iter()
            .flat_map(|s| (0..s.len()).map(move |t| if t + 1 < s.len() { s[t + 1] } else { IGNORE }))
            .collect();
        let spec = LinearLoss {
            kind: LossKind::CrossEntropy,
            vocab: self.config.vocab_size,
            scale: 1.0,
            chunk_rows: 0,
        };
        let targets = Tensor::from_u32(&targets, self.device())?;
        let (_, rows) = tape.linear_loss(&h, self.lm_head(&p)?, LinearLossTarget::Tokens(&targets), &spec)?;
        let nll = rows.to_vec_f64()?;
        Ok(seqs
            .iter()
            .enumerate()
            .map(|(b, s)| (0..s.len() - 1).map(|t| -nll[batch.row(b, t)]).collect())
            .collect())
    }

    /// An empty key/value cache for `batch` sequences of up to `capacity` positions, on the
    /// model's device.
    pub fn new_cache(&self, batch: usize, capacity: usize) -> Result<KvCache> {
        let c = &self.config;
        KvCache::new(c.num_layers, batch, capacity, c.kv_dim(), self.dtype(), self.device())
    }

    /// Appends `chunks` — new tokens of some cached sequences, `(sequence, tokens)` — to the cache
    /// and returns the logits of each chunk's last token, (chunks, vocab), without gradients.
    pub fn next_token_logits(&self, cache: &mut KvCache, chunks: &[(usize, &[u32])]) -> Result<Tensor> {
        if let Some(&bad) =
            chunks.iter().flat_map(|(_, t)| t.iter()).find(|&&t| t as usize >= self.config.vocab_size)
        {
            return Err(Error::Msg(format!(
                "token id {bad} is outside the model's vocabulary of {}",
                self.config.vocab_size
            )));
        }
        let device = self.device();
        let step = cache.plan(&chunks.iter().map(|&(s, t)| (s, t.len())).collect::<Vec<_>>(), device)?;
        let ids: Vec<u32> = chunks.iter().flat_map(|(_, t)| t.iter().copied()).collect();
        let (positions, longest) = (step.pos.clone(), step.longest());
        let ids = Tensor::from_u32(&ids, device)?;
        let mut x = Inputs { ids, positions, longest, attend: Attend::Cache { cache, step: Box::new(step) } };
        let mut tape = Tape::no_grad();
        let p = self.bind(&mut tape, false)?;
        let h = self.forward(&mut tape, &p, &mut x)?;
        let mut last = Vec::with_capacity(chunks.len());
        let mut row = 0;
        for (_, t) in chunks {
            row += t.len();
            last.push(row as u32 - 1);
        }
        let h_last = tape.embedding(&Tensor::from_u32(&last, device)?, &h)?;
        Ok(self.logits(&mut tape, &p, &h_last)?.into_value())
    }
}

/// Inputs over packed sequences, owned (tensors shared): a recomputed segment keeps them.
#[derive(Clone)]
pub(crate) struct SeqInputs {
    ids: Tensor,
    positions: Tensor,
    longest: usize,
    starts: Tensor,
    lengths: Tensor,
}

impl SeqInputs {
    pub(crate) fn inputs(&self) -> Inputs<'static> {
        Inputs {
            ids: self.ids.clone(),
            positions: self.positions.clone(),
            longest: self.longest,
            attend: Attend::Sequences { starts: self.starts.clone(), lengths: self.lengths.clone() },
        }
    }
}

/// A parameter by its Hugging Face name: one of the model's bound vars, or a recomputed
/// segment's input.
pub(crate) type Lookup<'a> = &'a dyn Fn(&str) -> Option<Var>;

/// `body(state, lookup)` recorded as a recomputed segment (`Tape::checkpoint`): its inputs are the
/// `state` vars and every bound parameter among `names`, and only they and the outputs are kept.
pub(crate) fn recomputed(
    tape: &mut Tape,
    m: &Model,
    p: &ParamVars,
    state: &[&Var],
    names: &[String],
    body: impl Fn(&mut Tape, &[Var], Lookup) -> Result<Vec<Var>> + Send + Sync + 'static,
) -> Result<Vec<Var>> {
    let mut inputs: Vec<&Var> = state.to_vec();
    let mut index: HashMap<String, usize> = HashMap::new();
    for name in names {
        if let Some(v) = m.var_opt(p, name) {
            index.insert(name.clone(), inputs.len());
            inputs.push(v);
        }
    }
    let k = state.len();
    let seg: Segment = std::sync::Arc::new(move |t: &mut Tape, vars: &[Var]| {
        let lookup = |name: &str| index.get(name).map(|&i| vars[i].clone());
        body(t, &vars[..k], &lookup)
    });
    tape.checkpoint(&inputs, seg)
}

/// Layer `layer_prefix` as a recomputed segment from the residual stream h and its norm n: its
/// inputs are h, n, every parameter named with the prefix and the `next_norm` ones (the norm fused
/// into its last residual add); `block(tape, x, lookup, h, n)` runs the layer on `seq` again.
pub(crate) fn recomputed_layer(
    tape: &mut Tape,
    m: &Model,
    p: &ParamVars,
    (h, n): (&Var, &Var),
    (layer_prefix, next_norm): (&str, &[String]),
    seq: &SeqInputs,
    block: impl Fn(&mut Tape, &mut Inputs, Lookup, &Var, &Var) -> Result<(Var, Var)> + Send + Sync + 'static,
) -> Result<(Var, Var)> {
    let names: Vec<String> =
        m.names().iter().filter(|n| n.starts_with(layer_prefix)).chain(next_norm).cloned().collect();
    let seq = seq.clone();
    let out = recomputed(tape, m, p, &[h, n], &names, move |t, s, w| {
        let (h, n) = block(t, &mut seq.inputs(), w, &s[0], &s[1])?;
        Ok(vec![h, n])
    })?;
    let [h, n]: [Var; 2] =
        out.try_into().map_err(|_| Error::Msg("internal: a layer gave no (h, n)".into()))?;
    Ok((h, n))
}

/// A layer's attention block (from its normed input n) as a recomputed segment over n and the
/// parameters `names`; `attn(tape, x, lookup, n)` runs it on `seq` again.
pub(crate) fn recomputed_attention(
    tape: &mut Tape,
    m: &Model,
    p: &ParamVars,
    n: &Var,
    names: &[String],
    seq: SeqInputs,
    attn: impl Fn(&mut Tape, &mut Inputs, Lookup, &Var) -> Result<Var> + Send + Sync + 'static,
) -> Result<Var> {
    let out =
        recomputed(tape, m, p, &[n], names, move |t, s, w| Ok(vec![attn(t, &mut seq.inputs(), w, &s[0])?]))?;
    out.into_iter().next().ok_or_else(|| Error::Msg("internal: attention gave no output".into()))
}

/// A bound parameter by name, or an error naming it.
pub(crate) fn need(w: Lookup, name: &str) -> Result<Var> {
    w(name).ok_or_else(|| Error::Msg(format!("internal: parameter `{name}` is not bound")))
}

/// Attention of one layer over what `x` says: q (N, Hq·D), k and v (N, Hkv·D) → (N, Hq·D).
pub(crate) fn attend(
    tape: &mut Tape,
    x: &mut Inputs,
    layer: usize,
    c: &ModelConfig,
    q: &Var,
    k: &Var,
    v: &Var,
) -> Result<Var> {
    let rows = x.rows();
    let longest = x.longest;
    match &mut x.attend {
        Attend::Sequences { starts, lengths } => {
            // The batch's own starts and lengths (made by TokenBatch): the longest vouched for.
            let d = AttnDims::new(rows, starts.numel(), c.num_heads, c.num_kv_heads, c.head_dim)
                .with_longest(longest);
            tape.attention(q, k, v, d, starts, lengths)
        }
        Attend::Cache { cache, step } => {
            cache.write(layer, step, k.value(), v.value())?;
            if let Some(f) = step.fresh() {
                // A prefill of fresh prompts: attention within the rows themselves.
                let d = AttnDims::new(rows, f.starts.numel(), c.num_heads, c.num_kv_heads, c.head_dim)
                    .with_longest(f.longest);
                return tape.attention(q, k, v, d, &f.starts, &f.lengths);
            }
            cached_attention(tape, cache, step, layer, c, q)
        }
    }
}

/// Attention of the step's query rows q (N, Hq·D) over layer `layer` of the cache, which already
/// holds the step's keys and values.
pub(crate) fn cached_attention(
    tape: &mut Tape,
    cache: &KvCache,
    step: &CacheStep,
    layer: usize,
    c: &ModelConfig,
    q: &Var,
) -> Result<Var> {
    let (kc, vc) = cache.layer(layer)?;
    let d = CachedAttnDims {
        rows: step.pos.numel(),
        batch: cache.batch(),
        capacity: cache.capacity(),
        q_heads: c.num_heads,
        kv_heads: c.num_kv_heads,
        head_dim: c.head_dim,
        scale: 1.0 / (c.head_dim as f64).sqrt(),
        vouched: step.vouched,
    };
    tape.attention_cached(q, kc, vc, &step.seq, &step.pos, d)
}
