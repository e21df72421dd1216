//! The generation workload of `gkd bench generate`: batched sampling (T = 1, no top-k/top-p, no
//! stop token) of `new` tokens after random `prompt`-token prompts from a model shape with
//! random-init weights made in memory, through `generate` itself (the device decode loop, CUDA
//! graphs). Reports new tokens per second, the time to the first token (prefill and one draw),
//! the decode step's time, the first call's extra time (graph capture and other warm-up), and on
//! CUDA the decode step against its floor: the bytes one step must read (every weight once, and
//! each row's cached keys and values at the mean context) at the copy bandwidth measured in the
//! same run. On CUDA also the products' share of an eager decode step (timed between events),
//! which says how much of a step is launch and small-kernel time.

use super::train::TrainShape;
use crate::error::{Error, Result};
use crate::generate::{generate, GenerateConfig, Sampler};
use crate::model::Model;
use crate::tensor::{DType, Device};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct GenerateBench {
    pub shape: TrainShape,
    pub name: String,
    pub batches: Vec<usize>,
    pub prompt: usize,
    pub new: usize,
    pub device: Device,
    pub dtype: DType,
    pub cuda_graphs: bool,
    pub sync_every: usize,
    /// Timed calls per batch size (median reported).
    pub reps: usize,
    /// The copy bandwidth the floor uses, bytes/s (CUDA; measured by the caller).
    pub bandwidth: Option<f64>,
}

/// One batch size's numbers.
#[derive(Clone, Debug, serde::Serialize)]
pub struct GenerateRow {
    pub batch: usize,
    pub new_tokens_per_s: f64,
    /// A whole call (prefill + every step), median.
    pub call_s: f64,
    /// Prefill and the first draw (a call with one new token), median.
    pub ttft_ms: f64,
    /// One decode step: (call − time to first token) / (new − 1).
    pub step_ms: f64,
    /// The first call's time beyond a timed call's (graph capture, module loading).
    pub warmup_s: f64,
    /// Bytes a decode step reads at least, and that at the copy bandwidth.
    pub floor_bytes: f64,
    pub floor_step_ms: Option<f64>,
    /// floor step time ÷ measured step time.
    pub of_floor: Option<f64>,
    /// CUDA: the cuBLAS products' time per decode step and their count, from one more call
    /// decoded eagerly (no graphs) with every product between timing events; and that call's
    /// step time, for the share.
    pub gemm_ms_per_step: Option<f64>,
    pub gemms_per_step: Option<f64>,
    pub eager_step_ms: Option<f64>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct GenerateReport {
    pub shape: String,
    pub device: String,
    pub dtype: String,
    pub params: usize,
    pub prompt: usize,
    pub new: usize,
    pub cuda_graphs: bool,
    pub copy_bandwidth_b_s: Option<f64>,
    pub rows: Vec<GenerateRow>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run(b: &GenerateBench) -> Result<GenerateReport> {
    if b.batches.is_empty() || b.batches.contains(&0) || b.prompt == 0 || b.new < 2 || b.reps == 0 {
        return Err(Error::Msg(
            "the benchmark needs batch sizes ≥ 1, --prompt ≥ 1, --new ≥ 2 and --reps ≥ 1".into(),
        ));
    }
    let cfg = b.shape.config(b.prompt + b.new)?;
    let (layers, kv_dim, vocab) = (cfg.num_layers, cfg.kv_dim(), cfg.vocab_size);
    let model = Model::init(cfg, 0)?.to_compute(b.device, b.dtype, false)?;
    let params = model.num_params();
    let elem = if b.dtype == DType::BF16 { 2.0 } else { 4.0 };
    let mut rng = StdRng::seed_from_u64(3);
    let mut rows = Vec::new();
    for &batch in &b.batches {
        let prompts: Vec<Vec<u32>> =
            (0..batch).map(|_| (0..b.prompt).map(|_| rng.random_range(0..vocab as u32)).collect()).collect();
        let gen_cfg = |new: usize| GenerateConfig {
            batch_size: batch,
            sync_every: b.sync_every,
            cuda_graphs: b.cuda_graphs,
            ..GenerateConfig::new(new, Sampler::default(), 7, vec![])
        };
        let call = |new: usize| -> Result<f64> {
            let t0 = Instant::now();
            let out = generate(&model, &prompts, &gen_cfg(new))?;
            let s = t0.elapsed().as_secs_f64();
            if out.iter().any(|c| c.ids.len() != new) {
                return Err(Error::Msg(format!("a sequence ended before {new} tokens without a stop token")));
            }
            Ok(s)
        };
        let first = call(b.new)?;
        let full = median((0..b.reps).map(|_| call(b.new)).collect::<Result<_>>()?);
        let ttft = median((0..b.reps).map(|_| call(1)).collect::<Result<_>>()?);
        let step_s = (full - ttft).max(0.0) / (b.new - 1) as f64;
        // Every weight once (the tied output head included), and each row's keys and values at
        // the mean context of the decode steps.
        let context = b.prompt as f64 + b.new as f64 / 2.0;
        let floor_bytes = params as f64 * elem + batch as f64 * context * (2 * layers * kv_dim) as f64 * elem;
        let floor_step_ms = b.bandwidth.map(|bw| floor_bytes / bw * 1e3);
        // Where the step's time goes: the products alone, timed in an eager call.
        let (mut gemm_ms_per_step, mut gemms_per_step, mut eager_step_ms) = (None, None, None);
        if let Device::Cuda(i) = b.device {
            let dev = crate::backend::cuda::CudaDevice::get(i)?;
            let eager = |new: usize| -> Result<f64> {
                let t0 = Instant::now();
                generate(&model, &prompts, &GenerateConfig { cuda_graphs: false, ..gen_cfg(new) })?;
                Ok(t0.elapsed().as_secs_f64())
            };
            let first = eager(1)?;
            dev.time_gemms()?;
            let (full, (g1, c1)) = (eager(b.new)?, dev.gemm_time()?);
            dev.time_gemms()?;
            let (_, (g0, c0)) = (eager(1)?, dev.gemm_time()?);
            let steps = (b.new - 1) as f64;
            gemm_ms_per_step = Some((g1 - g0) / steps);
            gemms_per_step = Some((c1 - c0) as f64 / steps);
            eager_step_ms = Some((full - first).max(0.0) / steps * 1e3);
        }
        rows.push(GenerateRow {
            batch,
            new_tokens_per_s: (batch * b.new) as f64 / full,
            call_s: full,
            ttft_ms: ttft * 1e3,
            step_ms: step_s * 1e3,
            warmup_s: (first - full).max(0.0),
            floor_bytes,
            floor_step_ms,
            of_floor: floor_step_ms.map(|f| f / (step_s * 1e3)),
            gemm_ms_per_step,
            gemms_per_step,
            eager_step_ms,
        });
    }
    Ok(GenerateReport {
        shape: b.name.clone(),
        device: b.device.to_string(),
        dtype: b.dtype.to_string(),
        params,
        prompt: b.prompt,
        new: b.new,
        cuda_graphs: b.cuda_graphs,
        copy_bandwidth_b_s: b.bandwidth,
        rows,
    })
}
