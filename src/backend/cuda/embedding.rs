//! Launchers for `kernels/embedding.cu`: the row gather (forward) and its deterministic
//! scatter-add (backward: histogram, scan, ranks, stable placement, per-vocabulary-row sums; see
//! the kernel file), f32 and bf16, with their launch configurations. The backward's table gradient
//! is f32 (a weight gradient, see the contract's module documentation).
//!
//! Sizes: N, V and C are 32-bit in the kernels (`check_sizes`); the backward's ranks take N²/2
//! integer compares, meant for up to ~64k rows per call (at most 65535 tiles of 256 rows: a grid
//! dimension).

use super::device::{cuda_err, CudaDevice};
use super::storage::kernel;
use super::storage::CudaElem;
use crate::error::{shape_err, Result};
use cudarc::driver::{CudaSlice, CudaView, DevicePtr, LaunchConfig, PushKernelArg};

const MODULE: &str = "embedding";
/// Forward: one warp per row, this many rows per block (`GKD_EMB_ROWS_PER_BLOCK`).
const FWD_ROWS_PER_BLOCK: u32 = 8;
/// Backward ranks: rows per tile, the block size (`GKD_EMB_RANK_TILE`); one block per pair of tiles.
const RANK_TILE: u32 = 256;
/// The most tiles of rows: the rank grid is (tiles, tiles).
const MAX_RANK_TILES: usize = 65535;
/// Backward scan: one block of this many threads (a multiple of 32, at most 1024).
const SCAN_THREADS: u32 = 1024;
/// Backward histogram: grid-stride, at most this many blocks of 256.
const HISTOGRAM_BLOCKS: u32 = 1024;
/// Backward sums: at most this many threads per vocabulary row's block.
const SUM_MAX_THREADS: u32 = 256;

/// N rows, V vocabulary rows and C columns within the kernels' 32-bit indexing (the scan covers
/// V + 1 entries) and the rank grid's `MAX_RANK_TILES`.
fn check_sizes(op: &'static str, rows: usize, vocab: usize, cols: usize) -> Result<()> {
    let max = i32::MAX as usize;
    if rows > MAX_RANK_TILES * RANK_TILE as usize || vocab >= max || cols > max {
        return shape_err(
            op,
            format!("{rows} ids into {vocab} rows of {cols} exceed the kernels' 32-bit indexing"),
        );
    }
    Ok(())
}

/// Whether device address `ptr` is a multiple of `bytes`.
fn aligned(ptr: u64, bytes: u64) -> bool {
    ptr % bytes == 0
}

/// table (vocab, cols), ids (rows) → out (rows, cols); an id ≥ vocab gives a NaN row (see the kernel).
pub fn fwd<T: CudaElem>(
    dev: &CudaDevice,
    table: &CudaView<'_, T>,
    ids: &CudaView<'_, u32>,
    vocab: usize,
    cols: usize,
) -> Result<CudaSlice<T>> {
    const OP: &str = "embedding (cuda)";
    let rows = ids.len();
    check_sizes(OP, rows, vocab, cols)?;
    // SAFETY: the kernel writes every element of every row (NaN for an id out of range).
    let mut out: CudaSlice<T> = unsafe { dev.alloc_of(rows * cols, OP)? };
    if rows == 0 || cols == 0 {
        return Ok(out);
    }
    let stream = dev.stream();
    // 16-byte copies when every row of both the table and the output starts 16-byte aligned.
    let row_bytes = (cols * std::mem::size_of::<T>()) as u64;
    let vec = i32::from(
        aligned(table.device_ptr(stream).0, 16)
            && aligned(out.device_ptr(stream).0, 16)
            && row_bytes % 16 == 0,
    );
    let f = dev.function(MODULE, kernel::<T>("embedding_fwd_f32", "embedding_fwd_bf16")?)?;
    let (r, v, c) = (rows as i32, vocab as i32, cols as i32);
    let cfg = LaunchConfig {
        grid_dim: ((rows as u32).div_ceil(FWD_ROWS_PER_BLOCK), 1, 1),
        block_dim: (32 * FWD_ROWS_PER_BLOCK, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: argument types match embedding_fwd_<dtype>(table, ids, out, rows, vocab, cols, vec);
    // the table holds vocab·cols elements (checked by the caller), ids rows, out rows·cols; an id
    // ≥ vocab is not read through.
    unsafe {
        stream
            .launch_builder(&f)
            .arg(table)
            .arg(ids)
            .arg(&mut out)
            .arg(&r)
            .arg(&v)
            .arg(&c)
            .arg(&vec)
            .launch(cfg)
    }
    .map_err(cuda_err(OP))?;
    Ok(out)
}

/// dout (rows, cols), ids (rows) → dtable (vocab, cols) f32: for each v, the dout rows of the ids
/// equal to v summed in increasing row order (ids ≥ vocab are dropped). Deterministic.
pub fn bwd<T: CudaElem>(
    dev: &CudaDevice,
    dout: &CudaView<'_, T>,
    ids: &CudaView<'_, u32>,
    vocab: usize,
    cols: usize,
) -> Result<CudaSlice<f32>> {
    const OP: &str = "embedding backward (cuda)";
    let rows = ids.len();
    check_sizes(OP, rows, vocab, cols)?;
    // SAFETY: the sum kernel writes every element of every vocabulary row (zeros for an id that
    // does not occur).
    let mut dtable: CudaSlice<f32> = unsafe { dev.alloc_of(vocab * cols, OP)? };
    if vocab == 0 || cols == 0 {
        return Ok(dtable);
    }
    let stream = dev.stream();
    // counts, then (scanned in place) offsets: vocab + 1 entries, the last 0 before the scan.
    let mut offsets: CudaSlice<u32> = dev.zeros_of(vocab + 1, OP)?;
    // SAFETY: only order[0..offsets[vocab]] is read, and placement writes exactly those.
    let mut order: CudaSlice<u32> = unsafe { dev.alloc_of(rows, OP)? };
    let (r, v, c) = (rows as i32, vocab as i32, cols as i32);
    let scan_len = v + 1;
    if rows > 0 {
        let hist = dev.function(MODULE, "embedding_bwd_histogram")?;
        let cfg = LaunchConfig {
            grid_dim: ((rows as u32).div_ceil(256).min(HISTOGRAM_BLOCKS), 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: embedding_bwd_histogram(ids, counts, rows, vocab): ids has rows elements,
        // counts vocab + 1; only ids < vocab are counted.
        unsafe { stream.launch_builder(&hist).arg(ids).arg(&mut offsets).arg(&r).arg(&v).launch(cfg) }
            .map_err(cuda_err(OP))?;
    }
    let scan = dev.function(MODULE, "embedding_bwd_scan")?;
    let cfg = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (SCAN_THREADS, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: embedding_bwd_scan(a, len) over the vocab + 1 counts, one block.
    unsafe { stream.launch_builder(&scan).arg(&mut offsets).arg(&scan_len).launch(cfg) }
        .map_err(cuda_err(OP))?;
    if rows > 0 {
        let tiles = (rows as u32).div_ceil(RANK_TILE);
        // Zeroed: the rank kernel adds each row's partial counts to it.
        let mut rank: CudaSlice<u32> = dev.zeros_of(rows, OP)?;
        let f = dev.function(MODULE, "embedding_bwd_rank")?;
        let cfg =
            LaunchConfig { grid_dim: (tiles, tiles, 1), block_dim: (RANK_TILE, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: embedding_bwd_rank(ids, rank, rows): block (b, j) reads ids of tiles b and j
        // (bounded by rows) and adds to rank[n] for its rows n < rows.
        unsafe { stream.launch_builder(&f).arg(ids).arg(&mut rank).arg(&r).launch(cfg) }
            .map_err(cuda_err(OP))?;
        let f = dev.function(MODULE, "embedding_bwd_place")?;
        let cfg = LaunchConfig { grid_dim: (tiles, 1, 1), block_dim: (RANK_TILE, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: embedding_bwd_place(ids, offsets, rank, order, rows, vocab): each row with an id
        // < vocab writes order[offsets[id] + rank] < offsets[id + 1] ≤ rows.
        unsafe {
            stream
                .launch_builder(&f)
                .arg(ids)
                .arg(&offsets)
                .arg(&rank)
                .arg(&mut order)
                .arg(&r)
                .arg(&v)
                .launch(cfg)
        }
        .map_err(cuda_err(OP))?;
    }
    // Four columns per thread step when C is a multiple of 4 and every dout row starts aligned to
    // four elements (dtable is a fresh allocation: aligned).
    let elem = std::mem::size_of::<T>() as u64;
    let vec = i32::from(cols % 4 == 0 && aligned(dout.device_ptr(stream).0, 4 * elem));
    let steps = if vec == 1 { cols / 4 } else { cols } as u32;
    let sum = dev.function(MODULE, kernel::<T>("embedding_bwd_sum_f32", "embedding_bwd_sum_bf16")?)?;
    let cfg = LaunchConfig {
        grid_dim: (vocab as u32, 1, 1),
        block_dim: (steps.div_ceil(32).clamp(1, SUM_MAX_THREADS / 32) * 32, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: embedding_bwd_sum_<dtype>(dout, offsets, order, dtable, cols, vec): block v reads
    // offsets[v..=v + 1], the order entries between them (all written, each < rows) and those dout
    // rows, and writes row v of dtable (vocab·cols elements).
    unsafe {
        stream
            .launch_builder(&sum)
            .arg(dout)
            .arg(&offsets)
            .arg(&order)
            .arg(&mut dtable)
            .arg(&c)
            .arg(&vec)
            .launch(cfg)
    }
    .map_err(cuda_err(OP))?;
    Ok(dtable)
}
