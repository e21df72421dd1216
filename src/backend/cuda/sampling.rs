//! Launcher for `kernels/sampling.cu`: one token per row of logits, f32 and bf16, and the launch
//! configurations of its two paths:
//! - split (greedy, or no top-k / top-p): `sample_split_*` on a grid of N × ⌈V / SPLIT_CHUNK⌉
//!   blocks of SPLIT_THREADS, one chunk of a row each, one 16-byte unit of 8 logits per thread (at
//!   N = 8 and V = 151,936: 600 blocks, all resident at once on an H100/H200, so the pass costs
//!   about one memory latency), then `sample_finish_*`, one warp per row, FINISH_ROWS_PER_BLOCK
//!   rows per block, merging each row's chunk partials (f32 scratch (N, chunks, PARTS)).
//! - filtered (top-k and/or top-p): `sample_filtered_*`, one block of FILTERED_THREADS per row.
//!
//! The chunking is a function of V alone, so a row's result does not depend on N.

use super::device::{cuda_err, CudaDevice};
use super::storage::{kernel, CudaElem};
use crate::backend::ops::SampleSpec;
use crate::error::{shape_err, Error, Result};
use cudarc::driver::{CudaSlice, CudaView, DevicePtr, LaunchConfig, PushKernelArg};

const MODULE: &str = "sampling";
/// Logits per block of the split pass: a multiple of 8 (the kernel's unit of loads), here one
/// unit per thread.
pub const SPLIT_CHUNK: usize = 8 * SPLIT_THREADS as usize;
const SPLIT_THREADS: u32 = 256;
const FINISH_ROWS_PER_BLOCK: u32 = 8;
const FILTERED_THREADS: u32 = 1024;
/// Floats per (row, chunk) partial: max, Σexp(z − max), Σ_K exp((z − max)/T), best score, best id
/// (`SAMPLE_PARTS` in the kernel).
const PARTS: usize = 5;
/// The kernels index a row with i32 and step by 8 × the block: V stays well inside.
const MAX_VOCAB: usize = 1 << 30;

/// Which kernels a spec runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SamplePath {
    Split,
    Filtered,
}

impl SamplePath {
    pub fn of(spec: &SampleSpec) -> SamplePath {
        if !spec.is_greedy() && (spec.active_top_k().is_some() || spec.active_top_p().is_some()) {
            SamplePath::Filtered
        } else {
            SamplePath::Split
        }
    }
}

/// Chunks per row of the split path.
pub fn split_chunks(vocab: usize) -> usize {
    vocab.div_ceil(SPLIT_CHUNK).max(1)
}

/// logits (rows, V), seq and pos (rows) → (tokens (rows) u32, logprobs (rows, 2) f32). The
/// lengths have been checked (`check::sample`).
pub fn sample<T: CudaElem>(
    dev: &CudaDevice,
    logits: &CudaView<'_, T>,
    seq: &CudaView<'_, u32>,
    pos: &CudaView<'_, u32>,
    rows: usize,
    spec: &SampleSpec,
) -> Result<(CudaSlice<u32>, CudaSlice<f32>)> {
    const OP: &str = "sample (cuda)";
    let vocab = spec.vocab;
    if vocab > MAX_VOCAB || rows > i32::MAX as usize {
        return shape_err(OP, format!("{rows} rows of {vocab} logits exceed the kernels' 32-bit indexing"));
    }
    let greedy = spec.is_greedy();
    let inv_t = if greedy { 1.0f32 } else { (1.0 / spec.temperature) as f32 };
    if !inv_t.is_finite() {
        return Err(Error::Msg(format!(
            "{OP}: a temperature of {} is too small for f32 (1/T overflows); use 0 for greedy",
            spec.temperature
        )));
    }
    // SAFETY: the kernels write every row's token and both log-probabilities.
    let (mut tokens, mut logprobs) =
        unsafe { (dev.alloc_of::<u32>(rows, OP)?, dev.alloc_of::<f32>(2 * rows, OP)?) };
    if rows == 0 {
        return Ok((tokens, logprobs));
    }
    let stream = dev.stream();
    // 16-byte loads need every row to start on a 16-byte boundary.
    let vec = {
        let (ptr, _guard) = logits.device_ptr(stream);
        i32::from(ptr % 16 == 0 && (vocab * std::mem::size_of::<T>()) % 16 == 0)
    };
    let (seed_lo, seed_hi) = (spec.seed as u32, (spec.seed >> 32) as u32);
    let v32 = vocab as i32;
    match SamplePath::of(spec) {
        SamplePath::Split => {
            let chunks = split_chunks(vocab);
            let blocks = rows
                .checked_mul(chunks)
                .filter(|&b| b <= i32::MAX as usize)
                .ok_or_else(|| Error::Msg(format!("{OP}: {rows} rows of {chunks} chunks exceed the grid")))?;
            // SAFETY: sample_finish reads back every partial that sample_split writes.
            let mut part = unsafe { dev.alloc_of::<f32>(blocks * PARTS, OP)? };
            let split = dev.function(MODULE, kernel::<T>("sample_split_f32", "sample_split_bf16")?)?;
            let finish = dev.function(MODULE, kernel::<T>("sample_finish_f32", "sample_finish_bf16")?)?;
            let (chunk32, chunks32, greedy32, rows32) =
                (SPLIT_CHUNK as i32, chunks as i32, i32::from(greedy), rows as i32);
            let split_cfg = LaunchConfig {
                grid_dim: (blocks as u32, 1, 1),
                block_dim: (SPLIT_THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            let finish_cfg = LaunchConfig {
                grid_dim: ((rows as u32).div_ceil(FINISH_ROWS_PER_BLOCK), 1, 1),
                block_dim: (32 * FINISH_ROWS_PER_BLOCK, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: sample_split_<dtype>(logits, seq, pos, part, vocab, chunk, chunks, inv_t,
            // greedy, seed_lo, seed_hi, vec) and sample_finish_<dtype>(logits, part, tokens,
            // logprobs, rows, vocab, chunks, inv_t, greedy) as in sampling.cu; logits hold rows × V
            // elements, seq, pos and tokens rows, logprobs 2 × rows, part rows × chunks × PARTS;
            // `vec` is set only when every row is 16-byte aligned.
            unsafe {
                stream
                    .launch_builder(&split)
                    .arg(logits)
                    .arg(seq)
                    .arg(pos)
                    .arg(&mut part)
                    .arg(&v32)
                    .arg(&chunk32)
                    .arg(&chunks32)
                    .arg(&inv_t)
                    .arg(&greedy32)
                    .arg(&seed_lo)
                    .arg(&seed_hi)
                    .arg(&vec)
                    .launch(split_cfg)
                    .map_err(cuda_err(OP))?;
                stream
                    .launch_builder(&finish)
                    .arg(logits)
                    .arg(&part)
                    .arg(&mut tokens)
                    .arg(&mut logprobs)
                    .arg(&rows32)
                    .arg(&v32)
                    .arg(&chunks32)
                    .arg(&inv_t)
                    .arg(&greedy32)
                    .launch(finish_cfg)
                    .map_err(cuda_err(OP))?;
            }
        }
        SamplePath::Filtered => {
            let f = dev.function(MODULE, kernel::<T>("sample_filtered_f32", "sample_filtered_bf16")?)?;
            let top_k = spec.active_top_k().unwrap_or(0) as i32;
            let top_p = spec.active_top_p().unwrap_or(1.0);
            let cfg = LaunchConfig {
                grid_dim: (rows as u32, 1, 1),
                block_dim: (FILTERED_THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: sample_filtered_<dtype>(logits, seq, pos, tokens, logprobs, vocab, inv_t,
            // top_k, top_p, seed_lo, seed_hi, vec) as in sampling.cu; buffers sized as above.
            unsafe {
                stream
                    .launch_builder(&f)
                    .arg(logits)
                    .arg(seq)
                    .arg(pos)
                    .arg(&mut tokens)
                    .arg(&mut logprobs)
                    .arg(&v32)
                    .arg(&inv_t)
                    .arg(&top_k)
                    .arg(&top_p)
                    .arg(&seed_lo)
                    .arg(&seed_hi)
                    .arg(&vec)
                    .launch(cfg)
                    .map_err(cuda_err(OP))?;
            }
        }
    }
    Ok((tokens, logprobs))
}
