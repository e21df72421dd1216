//! Launchers for `kernels/attention.cu`: causal attention forward and backward over packed or
//! padded sequences (attention over the key/value cache is `decode_attention.rs`). Launch
//! configurations live here.
//!
//! Kernel choice: bf16 with head dim 64 or 128 on sm_80+ (and 16-byte aligned inputs) takes the
//! tensor-core kernels (`*_mma_d{64,128}_bf16`, 4 warps, 64-row tiles); everything else the
//! scalar tiled kernels (`*_scalar_<dtype>`, 128 threads, 16 × 16 tiles, any head dim up to
//! `MAX_HEAD_DIM`). The grids cover the longest sequence; CTAs past their own sequence's end
//! return at once. Rows of no sequence are zeroed by `attention_zero_{fwd,bwd}_<dtype>`, one CTA
//! per row, and the attention kernels write exactly the other rows.
//!
//! The backward is deterministic (no atomics): Δ = rowsum(dO ∘ O) first, then one CTA per
//! (key tile, key/value head, sequence) for dK and dV and one per (query tile, query head,
//! sequence) for dQ, each summing in a fixed order.

use super::device::{cuda_err, CudaDevice};
use super::storage::kernel;
use super::storage::CudaElem;
use crate::backend::check;
use crate::backend::ops::AttnDims;
use crate::backend::DType;
use crate::error::{shape_err, Error, Result};
use cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute};
use cudarc::driver::{CudaFunction, CudaSlice, CudaView, DevicePtr, LaunchConfig, PushKernelArg};
use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

const MODULE: &str = "attention";
/// The largest head dimension the kernels take (ATTN_MAX_D).
pub const MAX_HEAD_DIM: usize = 256;
/// Scalar kernels: SC_THREADS threads, tiles of SC_BM query rows × SC_BN keys.
const SC_THREADS: u32 = 128;
const SC_BM: usize = 16;
const SC_BN: usize = 16;
/// Tensor-core kernels: MMA_THREADS threads (4 warps × 16 rows); forward and dQ tiles of 64 query
/// rows; dK/dV tiles of 64 keys.
const MMA_THREADS: u32 = 128;
const MMA_ROWS: usize = 64;
/// Shared memory a kernel may use without opting in.
const DEFAULT_SMEM: usize = 48 << 10;

/// The sequences of an attention call. Where the caller vouches for them (`AttnDims::longest`,
/// the model's own packed batches) the longest sizes the grids and nothing is read back; else
/// the bounds are read back and checked on the host before any kernel indexes with them (a
/// synchronization per call).
pub struct Sequences<'a> {
    pub starts: CudaView<'a, u32>,  // (B)
    pub lengths: CudaView<'a, u32>, // (B)
    batch: usize,
    longest: usize,
}

impl<'a> Sequences<'a> {
    /// The sequences of `d`, checked with q, k and v's lengths (`check::attention`).
    pub fn new(
        dev: &CudaDevice,
        d: &AttnDims,
        starts: CudaView<'a, u32>,
        lengths: CudaView<'a, u32>,
        qkv: (usize, usize, usize),
    ) -> Result<Self> {
        const OP: &str = "attention (reading the sequence bounds)";
        if starts.len() != d.batch || lengths.len() != d.batch {
            return shape_err(
                "attention",
                format!("{} starts and {} lengths for a batch of {}", starts.len(), lengths.len(), d.batch),
            );
        }
        let (q, k, v) = qkv;
        let longest = match d.longest {
            Some(l) => {
                check::attention("attention", d, q, k, v, None)?;
                l
            }
            None => {
                let s = dev.stream().clone_dtoh(&starts).map_err(cuda_err(OP))?;
                let l = dev.stream().clone_dtoh(&lengths).map_err(cuda_err(OP))?;
                let spans: Vec<(usize, usize)> =
                    s.into_iter().zip(l).map(|(s, l)| (s as usize, l as usize)).collect();
                check::attention("attention", d, q, k, v, Some(&spans))?;
                spans.iter().map(|s| s.1).max().unwrap_or(0)
            }
        };
        Ok(Sequences { starts, lengths, batch: d.batch, longest })
    }

    fn batch(&self) -> usize {
        self.batch
    }

    fn longest(&self) -> usize {
        self.longest
    }
}

/// Which kernels run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    /// Tensor cores, head dim 64 or 128.
    Mma(usize),
    Scalar,
}

fn is_bf16<T: CudaElem>() -> bool {
    T::DTYPE == DType::BF16
}

fn aligned16<T>(dev: &CudaDevice, v: &CudaView<'_, T>) -> bool {
    let (p, _guard) = v.device_ptr(dev.stream());
    p % 16 == 0
}

fn path<T: CudaElem>(dev: &CudaDevice, head_dim: usize, inputs: &[&CudaView<'_, T>]) -> Path {
    let mma = is_bf16::<T>()
        && matches!(head_dim, 64 | 128)
        && dev.compute_capability().0 >= 8
        && inputs.iter().all(|v| aligned16(dev, v));
    if mma {
        Path::Mma(head_dim)
    } else {
        Path::Scalar
    }
}

/// The limits of the kernels' indexing: head dim, grid y and z (heads, sequences), 32-bit widths.
fn check_launch(op: &'static str, q_heads: usize, batch: usize, head_dim: usize) -> Result<()> {
    if head_dim > MAX_HEAD_DIM {
        return shape_err(
            op,
            format!("a head dimension of {head_dim}: the CUDA attention kernels take at most {MAX_HEAD_DIM}"),
        );
    }
    if q_heads > 65535 || batch > 65535 {
        return shape_err(op, format!("{q_heads} heads or {batch} sequences exceed the grid's 65535"));
    }
    if q_heads * head_dim > i32::MAX as usize {
        return shape_err(op, format!("{q_heads} heads of {head_dim} exceed the kernels' 32-bit widths"));
    }
    Ok(())
}

/// Shared memory of each kernel, in bytes (the carve-ups in attention.cu).
fn scalar_fwd_smem(d: usize) -> usize {
    let kp = d | 1;
    4 * (SC_BM * d + SC_BN * kp + SC_BN * d + SC_BM * d + SC_BM * SC_BN + 3 * SC_BM)
}

fn scalar_bwd_smem(d: usize) -> usize {
    let kp = d | 1;
    4 * (2 * SC_BM * d + 2 * SC_BN * kp + 2 * SC_BN * d + 2 * SC_BM * SC_BN + 2 * SC_BM)
}

/// bf16 tiles of `rows` rows, pitch D + 8.
fn mma_tiles(rows: usize, d: usize) -> usize {
    2 * rows * (d + 8)
}

/// The query tile of the dK/dV kernel and the key tile of the dQ kernel (ATTN_MMA_KERNELS).
fn mma_bwd_tile(d: usize) -> usize {
    if d == 64 {
        64
    } else {
        32
    }
}

/// The kernel `name`, allowed `smem` bytes of dynamic shared memory (opting in above 48 KiB once
/// per device and kernel); an error when the device has less.
fn prepare(dev: &CudaDevice, name: &'static str, smem: usize) -> Result<CudaFunction> {
    static DONE: OnceLock<Mutex<HashSet<(usize, &'static str)>>> = OnceLock::new();
    let f = dev.function(MODULE, name)?;
    if smem <= DEFAULT_SMEM {
        return Ok(f);
    }
    let done = DONE.get_or_init(Default::default);
    let mut done = done.lock().map_err(|_| Error::Msg("attention kernel table poisoned".into()))?;
    if done.contains(&(dev.ordinal(), name)) {
        return Ok(f);
    }
    let optin = dev
        .context()
        .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
        .map_err(cuda_err("reading the shared memory limit"))?;
    let optin = optin.max(0) as usize;
    if smem > optin {
        return Err(Error::Msg(format!(
            "attention: kernel {name} needs {smem} bytes of shared memory, the GPU allows {optin}; \
             use a smaller head dimension"
        )));
    }
    dev.context()
        .bind_to_thread()
        .and_then(|_| {
            f.set_attribute(
                CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                optin as i32,
            )
        })
        .map_err(cuda_err(format!("configuring {name}")))?;
    done.insert((dev.ordinal(), name));
    Ok(f)
}

fn tiles_cfg(
    longest: usize,
    tile: usize,
    heads: usize,
    batch: usize,
    threads: u32,
    smem: usize,
) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (longest.div_ceil(tile) as u32, heads as u32, batch as u32),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: smem as u32,
    }
}

/// One warp per (row, head), 8 per 256-thread block.
fn warps_cfg(warps: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (warps.div_ceil(8) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

fn rows_cfg(rows: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 }
}

/// q (N, Hq·D), k, v (N, Hkv·D) → (out (N, Hq·D), lse (N, Hq) f32). `d` and the sequences are
/// already checked (`check::attention`).
pub fn fwd<T: CudaElem>(
    dev: &CudaDevice,
    d: &AttnDims,
    q: &CudaView<'_, T>,
    k: &CudaView<'_, T>,
    v: &CudaView<'_, T>,
    seqs: &Sequences<'_>,
) -> Result<(CudaSlice<T>, CudaSlice<f32>)> {
    const OP: &str = "attention (cuda)";
    let (hq, hkv, dh, rows) = (d.q_heads, d.kv_heads, d.head_dim, d.rows);
    check_launch(OP, hq, seqs.batch(), dh)?;
    // SAFETY: the attention kernel writes every row of a sequence, the zero kernel every other.
    let (mut out, mut lse) =
        unsafe { (dev.alloc_of::<T>(rows * hq * dh, OP)?, dev.alloc_of::<f32>(rows * hq, OP)?) };
    if rows == 0 {
        return Ok((out, lse));
    }
    let s = dev.stream();
    let (hq_i, hkv_i, dh_i, scale) = (hq as i32, hkv as i32, dh as i32, d.scale as f32);
    let (longest, batch) = (seqs.longest(), seqs.batch());
    if longest > 0 {
        match path(dev, dh, &[q, k, v]) {
            Path::Mma(dm) => {
                let name =
                    if dm == 64 { "attention_fwd_mma_d64_bf16" } else { "attention_fwd_mma_d128_bf16" };
                // Two buffers of K and V tiles (cp.async double buffering).
                let smem = mma_tiles(4 * MMA_ROWS, dm);
                let f = prepare(dev, name, smem)?;
                let cfg = tiles_cfg(longest, MMA_ROWS, hq, batch, MMA_THREADS, smem);
                // SAFETY: attention_fwd_mma_d<D>_bf16(q, k, v, starts, lengths, out, lse, hq, hkv,
                // scale); the sequences lie within the rows (checked), buffers sized from `d`.
                unsafe {
                    s.launch_builder(&f)
                        .arg(q)
                        .arg(k)
                        .arg(v)
                        .arg(&seqs.starts)
                        .arg(&seqs.lengths)
                        .arg(&mut out)
                        .arg(&mut lse)
                        .arg(&hq_i)
                        .arg(&hkv_i)
                        .arg(&scale)
                        .launch(cfg)
                }
                .map_err(cuda_err(OP))?;
            }
            Path::Scalar => {
                let name = kernel::<T>("attention_fwd_scalar_f32", "attention_fwd_scalar_bf16")?;
                let smem = scalar_fwd_smem(dh);
                let f = prepare(dev, name, smem)?;
                let cfg = tiles_cfg(longest, SC_BM, hq, batch, SC_THREADS, smem);
                // SAFETY: attention_fwd_scalar_<dtype>(q, k, v, starts, lengths, out, lse, hq, hkv,
                // d, scale); as above.
                unsafe {
                    s.launch_builder(&f)
                        .arg(q)
                        .arg(k)
                        .arg(v)
                        .arg(&seqs.starts)
                        .arg(&seqs.lengths)
                        .arg(&mut out)
                        .arg(&mut lse)
                        .arg(&hq_i)
                        .arg(&hkv_i)
                        .arg(&dh_i)
                        .arg(&scale)
                        .launch(cfg)
                }
                .map_err(cuda_err(OP))?;
            }
        }
    }
    let f = dev.function(MODULE, kernel::<T>("attention_zero_fwd_f32", "attention_zero_fwd_bf16")?)?;
    let (width, batch_i) = ((hq * dh) as i64, batch as i32);
    // SAFETY: attention_zero_fwd_<dtype>(out, width, lse, hq, starts, lengths, batch), one CTA per
    // row of out (N, width) and lse (N, hq).
    unsafe {
        s.launch_builder(&f)
            .arg(&mut out)
            .arg(&width)
            .arg(&mut lse)
            .arg(&hq_i)
            .arg(&seqs.starts)
            .arg(&seqs.lengths)
            .arg(&batch_i)
            .launch(rows_cfg(rows))
    }
    .map_err(cuda_err(OP))?;
    Ok((out, lse))
}

/// The saved forward and the output gradient of one backward.
pub struct Saved<'a, 'b, T> {
    pub out: &'a CudaView<'b, T>,   // (N, Hq·D)
    pub lse: &'a CudaView<'b, f32>, // (N, Hq)
    pub dout: &'a CudaView<'b, T>,  // (N, Hq·D)
}

/// → (dq (N, Hq·D), dk, dv (N, Hkv·D)), deterministic. `d`, the sequences and the lengths of
/// `saved` are already checked.
pub fn bwd<T: CudaElem>(
    dev: &CudaDevice,
    d: &AttnDims,
    q: &CudaView<'_, T>,
    k: &CudaView<'_, T>,
    v: &CudaView<'_, T>,
    seqs: &Sequences<'_>,
    saved: Saved<'_, '_, T>,
) -> Result<(CudaSlice<T>, CudaSlice<T>, CudaSlice<T>)> {
    const OP: &str = "attention backward (cuda)";
    let (hq, hkv, dh, rows) = (d.q_heads, d.kv_heads, d.head_dim, d.rows);
    check_launch(OP, hq, seqs.batch(), dh)?;
    // SAFETY: the gradient kernels write every row of a sequence, the zero kernel every other;
    // delta is written whole by its kernel.
    let (mut dq, mut dk, mut dv, mut delta) = unsafe {
        (
            dev.alloc_of::<T>(rows * hq * dh, OP)?,
            dev.alloc_of::<T>(rows * hkv * dh, OP)?,
            dev.alloc_of::<T>(rows * hkv * dh, OP)?,
            dev.alloc_of::<f32>(rows * hq, OP)?,
        )
    };
    if rows == 0 {
        return Ok((dq, dk, dv));
    }
    let s = dev.stream();
    let (hq_i, hkv_i, dh_i, scale) = (hq as i32, hkv as i32, dh as i32, d.scale as f32);
    let (longest, batch) = (seqs.longest(), seqs.batch());
    let fdelta = dev.function(MODULE, kernel::<T>("attention_bwd_delta_f32", "attention_bwd_delta_bf16")?)?;
    let rows_i = rows as i64;
    // SAFETY: attention_bwd_delta_<dtype>(out, dout, delta, rows, hq, d): one warp per (row, head)
    // of out, dout (N, Hq·D) and delta (N, Hq).
    unsafe {
        s.launch_builder(&fdelta)
            .arg(saved.out)
            .arg(saved.dout)
            .arg(&mut delta)
            .arg(&rows_i)
            .arg(&hq_i)
            .arg(&dh_i)
            .launch(warps_cfg(rows * hq))
    }
    .map_err(cuda_err(OP))?;
    if longest > 0 {
        let (kv_name, q_name, kv_cfg, q_cfg, with_d) = match path(dev, dh, &[q, k, v, saved.dout]) {
            Path::Mma(dm) => {
                let t = mma_bwd_tile(dm);
                let kv_smem = mma_tiles(2 * MMA_ROWS + 2 * t, dm) + 8 * t;
                let q_smem = mma_tiles(2 * t, dm);
                let (kv_name, q_name) = if dm == 64 {
                    ("attention_bwd_dkdv_mma_d64_bf16", "attention_bwd_dq_mma_d64_bf16")
                } else {
                    ("attention_bwd_dkdv_mma_d128_bf16", "attention_bwd_dq_mma_d128_bf16")
                };
                (
                    prepare(dev, kv_name, kv_smem)?,
                    prepare(dev, q_name, q_smem)?,
                    tiles_cfg(longest, MMA_ROWS, hkv, batch, MMA_THREADS, kv_smem),
                    tiles_cfg(longest, MMA_ROWS, hq, batch, MMA_THREADS, q_smem),
                    false,
                )
            }
            Path::Scalar => {
                let smem = scalar_bwd_smem(dh);
                let kv_name = kernel::<T>("attention_bwd_dkdv_scalar_f32", "attention_bwd_dkdv_scalar_bf16")?;
                let q_name = kernel::<T>("attention_bwd_dq_scalar_f32", "attention_bwd_dq_scalar_bf16")?;
                (
                    prepare(dev, kv_name, smem)?,
                    prepare(dev, q_name, smem)?,
                    tiles_cfg(longest, SC_BN, hkv, batch, SC_THREADS, smem),
                    tiles_cfg(longest, SC_BM, hq, batch, SC_THREADS, smem),
                    true,
                )
            }
        };
        // SAFETY: attention_bwd_dkdv_<path>(q, k, v, dout, lse, delta, starts, lengths, dk, dv, hq,
        // hkv, [d,] scale): inputs and outputs sized from `d`, sequences within the rows.
        unsafe {
            let mut b = s.launch_builder(&kv_name);
            b.arg(q)
                .arg(k)
                .arg(v)
                .arg(saved.dout)
                .arg(saved.lse)
                .arg(&delta)
                .arg(&seqs.starts)
                .arg(&seqs.lengths)
                .arg(&mut dk)
                .arg(&mut dv)
                .arg(&hq_i)
                .arg(&hkv_i);
            if with_d {
                b.arg(&dh_i);
            }
            b.arg(&scale).launch(kv_cfg)
        }
        .map_err(cuda_err(OP))?;
        // SAFETY: attention_bwd_dq_<path>(q, k, v, dout, lse, delta, starts, lengths, dq, hq, hkv,
        // [d,] scale); as above.
        unsafe {
            let mut b = s.launch_builder(&q_name);
            b.arg(q)
                .arg(k)
                .arg(v)
                .arg(saved.dout)
                .arg(saved.lse)
                .arg(&delta)
                .arg(&seqs.starts)
                .arg(&seqs.lengths)
                .arg(&mut dq)
                .arg(&hq_i)
                .arg(&hkv_i);
            if with_d {
                b.arg(&dh_i);
            }
            b.arg(&scale).launch(q_cfg)
        }
        .map_err(cuda_err(OP))?;
    }
    let fz = dev.function(MODULE, kernel::<T>("attention_zero_bwd_f32", "attention_zero_bwd_bf16")?)?;
    let (wq, wk, batch_i) = ((hq * dh) as i64, (hkv * dh) as i64, batch as i32);
    // SAFETY: attention_zero_bwd_<dtype>(dq, wq, dk, dv, wk, starts, lengths, batch), one CTA per
    // row of dq (N, wq), dk and dv (N, wk).
    unsafe {
        s.launch_builder(&fz)
            .arg(&mut dq)
            .arg(&wq)
            .arg(&mut dk)
            .arg(&mut dv)
            .arg(&wk)
            .arg(&seqs.starts)
            .arg(&seqs.lengths)
            .arg(&batch_i)
            .launch(rows_cfg(rows))
    }
    .map_err(cuda_err(OP))?;
    Ok((dq, dk, dv))
}
