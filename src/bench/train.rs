//! The training-step workload of `gkd bench train`: one SFT step (forward, fused output head +
//! cross-entropy, backward, clipping, AdamW) of a named model shape with random-init weights made
//! in memory (nothing is downloaded), on random token sequences, through the trainer's own
//! micro-batch function. Reports tokens/s, achieved TFLOP/s and MFU against a dense peak, the
//! cuBLAS products' share of the step, and peak device memory.
//!
//! FLOPs per token are llm.c's and the Hugging Face anchor's count, 6·N + 6·L·C·T (N parameters,
//! L layers, C hidden size, T sequence length), so MFU compares with the peer's directly.

use crate::distill::trainer::micro_batch_grads;
use crate::error::{Error, Result};
use crate::model::{Arch, FreshConfig, Model, ModelConfig, Recompute};
use crate::optim::adamw::{AdamW, AdamWConfig, ParamGroup};
use crate::optim::clip::GradClip;
use crate::tensor::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::str::FromStr;
use std::time::Instant;

/// A model configuration the benchmark builds in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrainShape {
    /// Qwen2.5-0.5B: 24 layers, hidden 896, 14 query / 2 KV heads, MLP 4864, vocabulary 151936.
    Qwen25_05b,
    /// Qwen2.5-1.5B: 28 layers, hidden 1536, 12 query / 2 KV heads, MLP 8960, vocabulary 151936.
    Qwen25_15b,
    /// GPT-2 small (124M): 12 layers, hidden 768, 12 heads, vocabulary 50257.
    Gpt2_124m,
    /// A two-layer Llama-family model for smoke tests on the CPU.
    Tiny,
}

impl FromStr for TrainShape {
    type Err = Error;
    fn from_str(s: &str) -> Result<TrainShape> {
        match s {
            "qwen2.5-0.5b" => Ok(TrainShape::Qwen25_05b),
            "qwen2.5-1.5b" => Ok(TrainShape::Qwen25_15b),
            "gpt2-124m" => Ok(TrainShape::Gpt2_124m),
            "tiny" => Ok(TrainShape::Tiny),
            _ => Err(Error::Msg(format!(
                "unknown shape `{s}`: use qwen2.5-0.5b, qwen2.5-1.5b, gpt2-124m or tiny"
            ))),
        }
    }
}

impl TrainShape {
    pub fn config(self, seq: usize) -> Result<ModelConfig> {
        let base = |arch, vocab, hidden, layers, heads, kv, mlp| FreshConfig {
            arch,
            vocab_size: vocab,
            hidden_size: hidden,
            num_layers: layers,
            num_heads: heads,
            num_kv_heads: kv,
            intermediate_size: mlp,
            max_position_embeddings: seq.max(1024),
            rope_theta: 1e6,
            tie_word_embeddings: true,
            bos_token_id: None,
            eos_token_ids: vec![],
            pad_token_id: None,
        };
        ModelConfig::fresh(match self {
            TrainShape::Qwen25_05b => base(Arch::Qwen2, 151936, 896, 24, 14, 2, 4864),
            TrainShape::Qwen25_15b => base(Arch::Qwen2, 151936, 1536, 28, 12, 2, 8960),
            TrainShape::Gpt2_124m => base(Arch::Gpt2, 50257, 768, 12, 12, 12, 3072),
            TrainShape::Tiny => base(Arch::Qwen2, 512, 64, 2, 4, 2, 128),
        })
    }
}

/// What `run` measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TrainReport {
    pub shape: String,
    pub device: String,
    pub dtype: String,
    pub params: usize,
    pub batch: usize,
    pub seq: usize,
    /// Median step time over the timed steps, and every step's loss (warm-up included).
    pub step_ms: f64,
    pub losses: Vec<f64>,
    pub tokens_per_s: f64,
    pub tflops: f64,
    /// Achieved TFLOP/s ÷ the dense peak given.
    pub mfu: f64,
    pub peak_tflops: f64,
    /// The cuBLAS products' time in one step, and their share of it (GPU only).
    pub gemm_ms: Option<f64>,
    pub gemm_share: Option<f64>,
    pub gemm_calls: Option<usize>,
    pub peak_memory_gib: Option<f64>,
    pub recompute: String,
}

/// `warmup` + `steps` SFT steps of `shape` at `batch` sequences of `seq` tokens on `device` in
/// `dtype`; MFU against `peak_tflops`.
#[derive(Clone, Debug)]
pub struct TrainBench {
    pub shape: TrainShape,
    pub name: String,
    pub batch: usize,
    pub seq: usize,
    pub device: Device,
    pub dtype: DType,
    pub warmup: usize,
    pub steps: usize,
    pub peak_tflops: f64,
    pub recompute: Recompute,
}

pub fn run(b: &TrainBench) -> Result<TrainReport> {
    let TrainBench { shape, batch, seq, device, dtype, warmup, steps, peak_tflops, .. } = b.clone();
    if batch == 0 || seq < 2 || steps == 0 {
        return Err(Error::Msg("the benchmark needs --batch ≥ 1, --seq ≥ 2 and at least one step".into()));
    }
    let cfg = shape.config(seq)?;
    let vocab = cfg.vocab_size;
    let (layers, hidden) = (cfg.num_layers, cfg.hidden_size);
    let mut model = Model::init(cfg, 0)?.to_compute(device, dtype, true)?;
    model.set_recompute(b.recompute);
    let n = model.num_params();
    // Each sequence is one "prompt" token and seq − 1 + 1 completion tokens: every row but the
    // last predicts the next token, as the SFT step over whole sequences does.
    let mut rng = StdRng::seed_from_u64(1);
    let pairs: Vec<(Vec<u32>, Vec<u32>)> = (0..batch)
        .map(|_| {
            let ids: Vec<u32> = (0..=seq).map(|_| rng.random_range(0..vocab as u32)).collect();
            (ids[..1].to_vec(), ids[1..].to_vec())
        })
        .collect();
    let tokens = batch * seq;
    let scale = 1.0 / tokens as f64;
    let groups: Vec<ParamGroup> =
        model.params().decay_groups().into_iter().map(|(range, decay)| ParamGroup { range, decay }).collect();
    let mut grads = Tensor::zeros([n], DType::F32, device)?;
    let mut opt = AdamW::new(AdamWConfig::default())?;
    let clip = GradClip::new(1.0)?;
    let cuda = match device {
        Device::Cuda(i) => Some(crate::backend::cuda::CudaDevice::get(i)?),
        Device::Cpu => None,
    };
    let mut step = |model: &mut Model, timed_gemms: bool| -> Result<(f64, f64)> {
        if let (Some(d), true) = (&cuda, timed_gemms) {
            d.time_gemms()?;
        }
        let t0 = Instant::now();
        grads.fill_(0.0)?;
        let loss = micro_batch_grads(model, None, vocab, &pairs, scale, &mut grads)?;
        clip.clip(&mut grads)?;
        let (master, compute) = model.params_mut().optimizer_buffers();
        opt.step(master, &grads, &groups, 1e-5, compute)?;
        if let Some(d) = &cuda {
            d.synchronize()?;
        }
        Ok((loss, t0.elapsed().as_secs_f64() * 1e3))
    };
    let mut losses = Vec::new();
    for _ in 0..warmup {
        losses.push(step(&mut model, false)?.0);
    }
    device.reset_peak_memory()?;
    let mut times = Vec::new();
    for _ in 0..steps {
        let (loss, ms) = step(&mut model, false)?;
        losses.push(loss);
        times.push(ms);
    }
    let peak_memory_gib = device.peak_memory()?.map(|b| b as f64 / (1u64 << 30) as f64);
    // One more step with every product between timing events (the events perturb it slightly,
    // so it is not among the timed steps).
    let (gemm_ms, gemm_calls, gemm_share) = match &cuda {
        Some(d) => {
            let (loss, ms) = step(&mut model, true)?;
            losses.push(loss);
            let (g, calls) = d.gemm_time()?;
            (Some(g), Some(calls), Some(g / ms))
        }
        None => (None, None, None),
    };
    times.sort_by(f64::total_cmp);
    let step_ms = times[times.len() / 2];
    let tokens_per_s = tokens as f64 / (step_ms * 1e-3);
    let flops_per_token = 6.0 * n as f64 + 6.0 * (layers * hidden * seq) as f64;
    let tflops = tokens_per_s * flops_per_token / 1e12;
    Ok(TrainReport {
        shape: b.name.clone(),
        device: device.to_string(),
        dtype: dtype.to_string(),
        params: n,
        batch,
        seq,
        step_ms,
        losses,
        tokens_per_s,
        tflops,
        mfu: tflops / peak_tflops,
        peak_tflops,
        gemm_ms,
        gemm_share,
        gemm_calls,
        peak_memory_gib,
        recompute: format!("{:?}", b.recompute).to_lowercase(),
    })
}
