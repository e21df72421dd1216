//! Launchers for `kernels/activation.cu`: gelu and swiglu, forward and backward, f32 and bf16.
//!
//! Launch configuration: grid-stride loops of 256-thread blocks, one thread per 16-byte pack
//! (4 f32 or 8 bf16 elements), at most 16 blocks per multiprocessor; the kernels fall back to
//! one element per step when a pointer is not 16-byte aligned (a view at an odd offset).

use super::device::{cuda_err, CudaDevice};
use super::storage::kernel;
use super::storage::CudaElem;
use crate::error::{shape_err, Result};
use cudarc::driver::{CudaSlice, CudaView, LaunchConfig, PushKernelArg};

const MODULE: &str = "activation";
const THREADS: u32 = 256;
const BLOCKS_PER_SM: u32 = 16;

fn cfg<T: CudaElem>(dev: &CudaDevice, n: usize) -> LaunchConfig {
    let per_pack = 16 / std::mem::size_of::<T>();
    let packs = n.div_ceil(per_pack);
    let most = (dev.multiprocessors().max(1) as u32) * BLOCKS_PER_SM;
    let blocks = packs.div_ceil(THREADS as usize).clamp(1, most as usize) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
}

fn same_len(op: &'static str, n: usize, others: &[usize]) -> Result<()> {
    match others.iter().find(|&&m| m != n) {
        Some(m) => shape_err(op, format!("inputs of {n} and {m} elements")),
        None => Ok(()),
    }
}

/// y = gelu(x), (N).
pub fn gelu_fwd<T: CudaElem>(dev: &CudaDevice, x: &CudaView<'_, T>) -> Result<CudaSlice<T>> {
    const OP: &str = "gelu (cuda)";
    let n = x.len();
    // SAFETY: the kernel writes all n elements.
    let mut y = unsafe { dev.alloc_of::<T>(n, OP)? };
    if n > 0 {
        let f = dev.function(MODULE, kernel::<T>("gelu_fwd_f32", "gelu_fwd_bf16")?)?;
        let n64 = n as i64;
        // SAFETY: argument types match gelu_fwd_<dtype>(x, y, n); both hold n elements.
        unsafe { dev.stream().launch_builder(&f).arg(x).arg(&mut y).arg(&n64).launch(cfg::<T>(dev, n)) }
            .map_err(cuda_err(OP))?;
    }
    Ok(y)
}

/// dx = gelu'(x)·dy, (N).
pub fn gelu_bwd<T: CudaElem>(
    dev: &CudaDevice,
    x: &CudaView<'_, T>,
    dy: &CudaView<'_, T>,
) -> Result<CudaSlice<T>> {
    const OP: &str = "gelu backward (cuda)";
    let n = x.len();
    same_len(OP, n, &[dy.len()])?;
    // SAFETY: the kernel writes all n elements.
    let mut dx = unsafe { dev.alloc_of::<T>(n, OP)? };
    if n > 0 {
        let f = dev.function(MODULE, kernel::<T>("gelu_bwd_f32", "gelu_bwd_bf16")?)?;
        let n64 = n as i64;
        // SAFETY: argument types match gelu_bwd_<dtype>(x, dy, dx, n); all hold n elements.
        unsafe {
            dev.stream().launch_builder(&f).arg(x).arg(dy).arg(&mut dx).arg(&n64).launch(cfg::<T>(dev, n))
        }
        .map_err(cuda_err(OP))?;
    }
    Ok(dx)
}

/// y = silu(gate)·up, (N).
pub fn swiglu_fwd<T: CudaElem>(
    dev: &CudaDevice,
    gate: &CudaView<'_, T>,
    up: &CudaView<'_, T>,
) -> Result<CudaSlice<T>> {
    const OP: &str = "swiglu (cuda)";
    let n = gate.len();
    same_len(OP, n, &[up.len()])?;
    // SAFETY: the kernel writes all n elements.
    let mut y = unsafe { dev.alloc_of::<T>(n, OP)? };
    if n > 0 {
        let f = dev.function(MODULE, kernel::<T>("swiglu_fwd_f32", "swiglu_fwd_bf16")?)?;
        let n64 = n as i64;
        // SAFETY: argument types match swiglu_fwd_<dtype>(gate, up, y, n); all hold n elements.
        unsafe {
            dev.stream().launch_builder(&f).arg(gate).arg(up).arg(&mut y).arg(&n64).launch(cfg::<T>(dev, n))
        }
        .map_err(cuda_err(OP))?;
    }
    Ok(y)
}

/// → (dgate, dup), each (N).
pub fn swiglu_bwd<T: CudaElem>(
    dev: &CudaDevice,
    gate: &CudaView<'_, T>,
    up: &CudaView<'_, T>,
    dy: &CudaView<'_, T>,
) -> Result<(CudaSlice<T>, CudaSlice<T>)> {
    const OP: &str = "swiglu backward (cuda)";
    let n = gate.len();
    same_len(OP, n, &[up.len(), dy.len()])?;
    // SAFETY: the kernel writes all n elements of both.
    let (mut dg, mut du) = unsafe { (dev.alloc_of::<T>(n, OP)?, dev.alloc_of::<T>(n, OP)?) };
    if n > 0 {
        let f = dev.function(MODULE, kernel::<T>("swiglu_bwd_f32", "swiglu_bwd_bf16")?)?;
        let n64 = n as i64;
        // SAFETY: argument types match swiglu_bwd_<dtype>(gate, up, dy, dgate, dup, n); all hold
        // n elements.
        unsafe {
            dev.stream()
                .launch_builder(&f)
                .arg(gate)
                .arg(up)
                .arg(dy)
                .arg(&mut dg)
                .arg(&mut du)
                .arg(&n64)
                .launch(cfg::<T>(dev, n))
        }
        .map_err(cuda_err(OP))?;
    }
    Ok((dg, du))
}

/// x (rows, 2·width), each row [gate | up] → silu(gate)·up (rows, width). Forward only.
pub fn swiglu_packed_fwd<T: CudaElem>(
    dev: &CudaDevice,
    x: &CudaView<'_, T>,
    width: usize,
) -> Result<CudaSlice<T>> {
    const OP: &str = "swiglu_packed (cuda)";
    let n = x.len() / 2;
    // SAFETY: the kernel writes all rows·width elements.
    let mut y = unsafe { dev.alloc_of::<T>(n, OP)? };
    if n > 0 {
        let f = dev.function(MODULE, kernel::<T>("swiglu_packed_fwd_f32", "swiglu_packed_fwd_bf16")?)?;
        let (rows, w) = ((n / width) as i64, width as i64);
        // SAFETY: swiglu_packed_fwd_<dtype>(x, y, rows, width): x holds rows·2·width elements
        // (checked by the caller), y rows·width.
        unsafe {
            dev.stream().launch_builder(&f).arg(x).arg(&mut y).arg(&rows).arg(&w).launch(cfg::<T>(dev, n))
        }
        .map_err(cuda_err(OP))?;
    }
    Ok(y)
}
