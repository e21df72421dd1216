//! Launcher for `kernels/decode_attention.cu`: attention of new query rows over the key/value
//! cache, flash-decoding style (the math and the thread layout are in the kernel file's header).
//!
//! Kernels: `decode_attention_split_mma_bf16` (bf16, head dim a multiple of 32: the scores on
//! the tensor cores), `decode_attention_split_<dtype>` (16-byte loads), `_split_narrow_<dtype>`
//! (element loads: other head dims or misaligned caches), `decode_attention_combine_<dtype>`.
//!
//! Launch configuration: one CTA of 128 threads per (row, chunk of C positions, key/value head,
//! batch of ≤ 8 query heads of its group). The chunks are sized from the cache's capacity L (an
//! upper bound of every row's positions: pos stays on the device), so that even a few rows fill
//! the GPU: about 2 CTAs per SM where L allows, C a multiple of 64 in 64..=512 (a chunk's scores
//! live in shared memory); with one chunk (C ≥ L) the split kernel writes the output itself,
//! else it writes f32 partials to a workspace and `decode_attention_combine_<dtype>` (one warp
//! per (row, query head)) merges them in chunk order. Nothing is read back from the device and the
//! workspace's size depends only on the dimensions, so a launch can be captured in a CUDA graph.

use super::device::{cuda_err, CudaDevice};
use super::storage::{kernel, CudaElem};
use crate::backend::ops::CachedAttnDims;
use crate::backend::DType;
use crate::error::{shape_err, Result};
use cudarc::driver::{CudaSlice, CudaView, DevicePtr, LaunchConfig, PushKernelArg};

const MODULE: &str = "decode_attention";
/// The largest head dimension (32 lanes × DA_ELEMS elements).
pub const MAX_HEAD_DIM: usize = 256;
/// DA_THREADS, DA_WARPS and DA_HEADS of the kernel file.
const THREADS: u32 = 128;
const WARPS: usize = 4;
const HEADS: usize = 8;
/// Chunk lengths: multiples of MIN_CHUNK up to MAX_CHUNK (the scores of a chunk in shared memory).
const MIN_CHUNK: usize = 64;
const MAX_CHUNK: usize = 512;
/// CTAs per SM the chunking aims at.
const CTAS_PER_SM: usize = 2;
/// The combine: one warp per (row, query head), 8 per CTA.
const COMBINE_WARPS: usize = 8;

/// How a call is cut: chunks of `chunk` positions, `splits` of them covering the capacity, and
/// `head_batches` CTAs per key/value head (groups of more than 8 query heads).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    pub chunk: usize,
    pub splits: usize,
    pub head_batches: usize,
}

/// The chunking for `d` on a GPU of `sms` multiprocessors.
pub fn plan(d: &CachedAttnDims, sms: usize) -> Plan {
    let head_batches = (d.q_heads / d.kv_heads.max(1)).div_ceil(HEADS).max(1);
    let pairs = (d.rows * d.kv_heads * head_batches).max(1);
    let want_splits = (CTAS_PER_SM * sms.max(1)).div_ceil(pairs).max(1);
    // Rounded down, so that at least `want_splits` chunks cover the cache where it is long enough.
    let chunk = (d.capacity / want_splits / MIN_CHUNK * MIN_CHUNK).clamp(MIN_CHUNK, MAX_CHUNK);
    // One chunk when it covers the cache: no longer than the cache (shared memory is sized by it).
    let chunk = chunk.min(d.capacity).max(1);
    Plan { chunk, splits: d.capacity.div_ceil(chunk).max(1), head_batches }
}

/// The split kernel's dynamic shared memory (`da_region` in the kernel file, plus m and l).
fn smem_bytes(chunk: usize, head_dim: usize) -> usize {
    4 * ((HEADS * chunk).max(WARPS * HEADS * head_dim) + 2 * HEADS)
}

/// The limits of the kernels' indexing.
fn check_launch(op: &'static str, d: &CachedAttnDims, p: &Plan) -> Result<()> {
    if d.head_dim > MAX_HEAD_DIM {
        return shape_err(
            op,
            format!(
                "a head dimension of {}: the CUDA cached-attention kernel takes at most {MAX_HEAD_DIM}",
                d.head_dim
            ),
        );
    }
    if d.rows > i32::MAX as usize || d.batch > i32::MAX as usize || d.capacity > i32::MAX as usize {
        return shape_err(
            op,
            format!(
                "{} rows, {} sequences or {} positions exceed the kernel's 32-bit indexing",
                d.rows, d.batch, d.capacity
            ),
        );
    }
    if p.splits > 65535 || d.kv_heads * p.head_batches > 65535 {
        return shape_err(
            op,
            format!(
                "{} chunks of the cache or {} key/value heads exceed the grid's 65535",
                p.splits, d.kv_heads
            ),
        );
    }
    if d.rows * d.q_heads > i32::MAX as usize {
        return shape_err(op, format!("{} rows of {} heads exceed the combine's grid", d.rows, d.q_heads));
    }
    if d.q_heads * d.head_dim > i32::MAX as usize {
        return shape_err(
            op,
            format!("{} heads of {} exceed the kernel's 32-bit widths", d.q_heads, d.head_dim),
        );
    }
    Ok(())
}

fn aligned16<T>(dev: &CudaDevice, v: &CudaView<'_, T>) -> bool {
    let (p, _guard) = v.device_ptr(dev.stream());
    p % 16 == 0
}

/// The split kernel for the dtype, head dim and caches: 16-byte loads where a head row is whole
/// 16-byte vectors and the caches start aligned, the scores on the tensor cores for bf16 with a
/// head dim that is a multiple of 32 (sm_80+), element loads otherwise.
fn split_kernel<T: CudaElem>(
    dev: &CudaDevice,
    head_dim: usize,
    k_cache: &CudaView<'_, T>,
    v_cache: &CudaView<'_, T>,
) -> Result<&'static str> {
    let vec =
        head_dim % (16 / std::mem::size_of::<T>()) == 0 && aligned16(dev, k_cache) && aligned16(dev, v_cache);
    if !vec {
        return kernel::<T>("decode_attention_split_narrow_f32", "decode_attention_split_narrow_bf16");
    }
    let mma = T::DTYPE == DType::BF16 && head_dim % 32 == 0 && dev.compute_capability().0 >= 8;
    kernel::<T>(
        "decode_attention_split_f32",
        if mma { "decode_attention_split_mma_bf16" } else { "decode_attention_split_bf16" },
    )
}

/// q (N, Hq·D), caches (B·L, Hkv·D), seq and pos (N) → (N, Hq·D). The lengths are already checked
/// (`check::cached_attention_shapes`); seq and pos may hold anything: a row with seq ≥ B or
/// pos ≥ L comes out 0.
pub fn fwd<T: CudaElem>(
    dev: &CudaDevice,
    d: &CachedAttnDims,
    q: &CudaView<'_, T>,
    k_cache: &CudaView<'_, T>,
    v_cache: &CudaView<'_, T>,
    seq: &CudaView<'_, u32>,
    pos: &CudaView<'_, u32>,
) -> Result<CudaSlice<T>> {
    const OP: &str = "cached attention (cuda)";
    let (hq, hkv, dh, rows) = (d.q_heads, d.kv_heads, d.head_dim, d.rows);
    let p = plan(d, dev.multiprocessors().max(1) as usize);
    check_launch(OP, d, &p)?;
    // SAFETY: the split kernel (one chunk) or the combine writes every (row, head) slice.
    let mut out = unsafe { dev.alloc_of::<T>(rows * hq * dh, OP)? };
    if rows == 0 {
        return Ok(out);
    }
    let name = split_kernel::<T>(dev, dh, k_cache, v_cache)?;
    let split = dev.function(MODULE, name)?;
    let cfg = LaunchConfig {
        grid_dim: (rows as u32, p.splits as u32, (hkv * p.head_batches) as u32),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: smem_bytes(p.chunk, dh) as u32,
    };
    let (batch_i, cap_i, hq_i, hkv_i, dh_i) =
        (d.batch as i32, d.capacity as i32, hq as i32, hkv as i32, dh as i32);
    let (chunk_i, splits_i) = (p.chunk as i32, p.splits as i32);
    let scale_log2 = (d.scale * std::f64::consts::LOG2_E) as f32;
    let s = dev.stream();
    if p.splits == 1 {
        let null = 0u64;
        // SAFETY: decode_attention_split_<...>(q, kc, vc, seq, pos, out, part_acc, part_ml, batch,
        // capacity, hq, hkv, d, chunk, splits, scale_log2): buffers sized from `d` (checked); with
        // one chunk the kernel writes `out` and never touches the (null) partials; every cache
        // read is clamped to seq < B, pos < L.
        unsafe {
            s.launch_builder(&split)
                .arg(q)
                .arg(k_cache)
                .arg(v_cache)
                .arg(seq)
                .arg(pos)
                .arg(&mut out)
                .arg(&null)
                .arg(&null)
                .arg(&batch_i)
                .arg(&cap_i)
                .arg(&hq_i)
                .arg(&hkv_i)
                .arg(&dh_i)
                .arg(&chunk_i)
                .arg(&splits_i)
                .arg(&scale_log2)
                .launch(cfg)
        }
        .map_err(cuda_err(OP))?;
        return Ok(out);
    }
    let parts = rows * hq * p.splits;
    // SAFETY: the combine reads only the partials of chunks that hold positions of their row,
    // and the split kernel writes exactly those.
    let (mut part_acc, mut part_ml) =
        unsafe { (dev.alloc_of::<f32>(parts * dh, OP)?, dev.alloc_of::<f32>(parts * 2, OP)?) };
    // SAFETY: as above, with the partials (N, Hq, splits, D) and (N, Hq, splits, 2) written and
    // `out` untouched by this kernel.
    unsafe {
        s.launch_builder(&split)
            .arg(q)
            .arg(k_cache)
            .arg(v_cache)
            .arg(seq)
            .arg(pos)
            .arg(&mut out)
            .arg(&mut part_acc)
            .arg(&mut part_ml)
            .arg(&batch_i)
            .arg(&cap_i)
            .arg(&hq_i)
            .arg(&hkv_i)
            .arg(&dh_i)
            .arg(&chunk_i)
            .arg(&splits_i)
            .arg(&scale_log2)
            .launch(cfg)
    }
    .map_err(cuda_err(OP))?;
    let combine =
        dev.function(MODULE, kernel::<T>("decode_attention_combine_f32", "decode_attention_combine_bf16")?)?;
    let rows_i = rows as i64;
    let ccfg = LaunchConfig {
        grid_dim: ((rows * hq).div_ceil(COMBINE_WARPS) as u32, 1, 1),
        block_dim: (32 * COMBINE_WARPS as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: decode_attention_combine_<dtype>(seq, pos, part_acc, part_ml, out, rows, batch,
    // capacity, hq, d, chunk, splits): one warp per (row, head) of out (N, Hq·D), reading the
    // partials the split kernel wrote (the same chunks: pos / chunk + 1 of a valid row).
    unsafe {
        s.launch_builder(&combine)
            .arg(seq)
            .arg(pos)
            .arg(&part_acc)
            .arg(&part_ml)
            .arg(&mut out)
            .arg(&rows_i)
            .arg(&batch_i)
            .arg(&cap_i)
            .arg(&hq_i)
            .arg(&dh_i)
            .arg(&chunk_i)
            .arg(&splits_i)
            .launch(ccfg)
    }
    .map_err(cuda_err(OP))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dims(
        rows: usize,
        capacity: usize,
        q_heads: usize,
        kv_heads: usize,
        head_dim: usize,
    ) -> CachedAttnDims {
        CachedAttnDims { rows, batch: 8, capacity, q_heads, kv_heads, head_dim, scale: 1.0, vouched: true }
    }

    /// The chunking fills an H200 (132 SMs) for a few decode rows, stays within shared memory,
    /// and covers the capacity.
    #[test]
    fn plans_cover_the_cache_and_fill_the_gpu() {
        for rows in [1, 8, 64, 512] {
            for capacity in [0, 1, 17, 256, 300, 1024, 4096, 100_000] {
                for (hq, hkv, dh) in [(14, 2, 64), (12, 2, 128), (12, 12, 64), (32, 1, 128)] {
                    let d = dims(rows, capacity, hq, hkv, dh);
                    let p = plan(&d, 132);
                    assert!(p.chunk >= 1 && p.chunk <= MAX_CHUNK, "{d:?}: {p:?}");
                    assert!(p.splits * p.chunk >= capacity, "{d:?}: {p:?} does not cover the cache");
                    assert!((p.splits - 1) * p.chunk < capacity.max(1), "{d:?}: {p:?} has an empty chunk");
                    assert!(smem_bytes(p.chunk, dh) <= 48 << 10, "{d:?}: {p:?}");
                    assert_eq!(p.head_batches, (hq / hkv).div_ceil(HEADS));
                    let (pairs, ctas) = (rows * hkv * p.head_batches, rows * hkv * p.head_batches * p.splits);
                    if capacity / 264usize.div_ceil(pairs) >= MIN_CHUNK {
                        assert!(ctas >= 264, "{d:?}: {p:?} gives {ctas} CTAs");
                    }
                }
            }
        }
        // 8 rows × 2 key/value heads at L = 4096: 22 chunks of 192, 352 CTAs.
        let p = plan(&dims(8, 4096, 14, 2, 64), 132);
        assert_eq!((p.chunk, p.splits), (192, 22));
        assert_eq!(plan(&dims(8, 17, 14, 2, 64), 132).splits, 1);
    }
}
