//! Launchers for `kernels/rope.cu`: the rotary embedding and its inverse rotation, f32 and bf16.
//! One thread per (row, frequency), 256 per block, each looping over the heads; the inverse
//! frequencies travel inline in `gkd_rope_params` (at most `GKD_ROPE_MAX_HALF` of them: head
//! dimensions up to 256).

use super::abi::{RopeParams, ROPE_MAX_HALF};
use super::device::{cuda_err, CudaDevice};
use super::storage::kernel;
use super::storage::CudaElem;
use crate::error::{shape_err, Result};
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, LaunchConfig, PushKernelArg};

const MODULE: &str = "rope";
const THREADS: u32 = 256;

/// The kernel parameters for `rows` rows of `heads` heads with these inverse frequencies (D/2 of
/// them); a head dimension past the inline table, or sizes past 32-bit indexing, are errors.
fn params(op: &'static str, rows: usize, heads: usize, inv_freq: &[f64]) -> Result<RopeParams> {
    let half = inv_freq.len();
    if half > ROPE_MAX_HALF as usize {
        return shape_err(
            op,
            format!(
                "head dimension {} exceeds the CUDA kernel's limit of {} (D/2 ≤ GKD_ROPE_MAX_HALF in kernels/abi.h)",
                2 * half,
                2 * ROPE_MAX_HALF
            ),
        );
    }
    if rows.checked_mul(half).is_none_or(|p| p > i32::MAX as usize) || heads > i32::MAX as usize {
        return shape_err(op, format!("{rows} rows of {heads} heads exceed the kernel's 32-bit indexing"));
    }
    let mut table = [0.0f64; ROPE_MAX_HALF as usize];
    table[..half].copy_from_slice(inv_freq);
    Ok(RopeParams { rows: rows as i32, heads: heads as i32, half: half as i32, pad: 0, inv_freq: table })
}

/// x (rows, heads·2·half), positions (rows) → y: x rotated by +θ (`inverse`: by −θ, the backward).
pub fn rotate<T: CudaElem>(
    dev: &CudaDevice,
    x: &CudaView<'_, T>,
    positions: &CudaView<'_, u32>,
    heads: usize,
    inv_freq: &[f64],
    inverse: bool,
) -> Result<CudaSlice<T>> {
    let op = if inverse { "rope backward (cuda)" } else { "rope (cuda)" };
    let rows = positions.len();
    let p = params(op, rows, heads, inv_freq)?;
    // SAFETY: the kernel writes every element: each (row, i < half) thread both halves of every head.
    let mut y: CudaSlice<T> = unsafe { dev.alloc_of(x.len(), op)? };
    if rows == 0 {
        return Ok(y);
    }
    let name = if inverse {
        kernel::<T>("rope_bwd_f32", "rope_bwd_bf16")?
    } else {
        kernel::<T>("rope_fwd_f32", "rope_fwd_bf16")?
    };
    let f = dev.function(MODULE, name)?;
    let threads = (rows * inv_freq.len()) as u32;
    let cfg = LaunchConfig {
        grid_dim: (threads.div_ceil(THREADS), 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: argument types match rope_<fwd|bwd>_<dtype>(x, positions, y, params); x and y hold
    // rows·heads·2·half elements (checked by the caller), positions rows.
    unsafe { dev.stream().launch_builder(&f).arg(x).arg(positions).arg(&mut y).arg(&p).launch(cfg) }
        .map_err(cuda_err(op))?;
    Ok(y)
}

/// The decode step's caches and the rows they receive: key and value caches (total, Hkv·D) and
/// each new row's cache row (N).
pub struct Append<'a, 'b, T> {
    pub k_cache: &'a mut CudaViewMut<'b, T>,
    pub v_cache: &'a mut CudaViewMut<'b, T>,
    pub rows: &'a CudaView<'b, u32>,
    pub kv_heads: usize,
}

/// q (N, Hq·D) rotated → returned; k (N, Hkv·D) rotated and v copied into the caches at `rows`
/// (rows ≥ the caches' rows skipped by the kernel). Lengths checked by `check::rope_append`.
#[allow(clippy::too_many_arguments)]
pub fn append<T: CudaElem>(
    dev: &CudaDevice,
    q: &CudaView<'_, T>,
    k: &CudaView<'_, T>,
    v: &CudaView<'_, T>,
    positions: &CudaView<'_, u32>,
    q_heads: usize,
    inv_freq: &[f64],
    to: Append<'_, '_, T>,
) -> Result<CudaSlice<T>> {
    const OP: &str = "rope_append (cuda)";
    let rows = positions.len();
    let p = params(OP, rows, q_heads, inv_freq)?;
    let width = to.kv_heads * 2 * inv_freq.len();
    let total = to.k_cache.len() / width.max(1);
    // SAFETY: the kernel writes every element of qy (each (row, i) thread both halves of every head).
    let mut qy: CudaSlice<T> = unsafe { dev.alloc_of(q.len(), OP)? };
    if rows == 0 {
        return Ok(qy);
    }
    let f = dev.function(MODULE, kernel::<T>("rope_append_f32", "rope_append_bf16")?)?;
    let cfg = LaunchConfig {
        grid_dim: (((rows * inv_freq.len()) as u32).div_ceil(THREADS), 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let (kv_heads, total) = (to.kv_heads as i32, total as i64);
    // SAFETY: rope_append_<dtype>(q, k, v, positions, rows, qy, kc, vc, params, kv_heads, total):
    // q and qy hold rows·Hq·D elements, k and v rows·Hkv·D, the caches total·Hkv·D; a cache row
    // ≥ total is skipped by the kernel.
    unsafe {
        dev.stream()
            .launch_builder(&f)
            .arg(q)
            .arg(k)
            .arg(v)
            .arg(positions)
            .arg(to.rows)
            .arg(&mut qy)
            .arg(to.k_cache)
            .arg(to.v_cache)
            .arg(&p)
            .arg(&kv_heads)
            .arg(&total)
            .launch(cfg)
    }
    .map_err(cuda_err(OP))?;
    Ok(qy)
}
