//! Launchers for `kernels/cross_entropy.cu`: the cross-entropy of each row of logits against its
//! target token, loss and gradient with respect to the logits in one kernel (math and the IGNORE
//! and out-of-vocabulary rows in the kernel's header).
//!
//! ```text
//! cross_entropy_fwd_bwd::<T>(dev, &CrossEntropyLaunch { rows, vocab, scale, path, scalar },
//!                            StudentGrad::InPlace(logits)              // grad overwrites logits
//!                              | StudentGrad::Into { student, grad }   // grad to its own buffer
//!                              | StudentGrad::LossOnly(logits),        // no gradient
//!                            &targets, &mut row_loss) -> Result<kernel name>
//! cross_entropy_weighted_fwd_bwd::<T>(…, &targets, Some(&row_weight), &mut row_loss)
//! ```
//! T is f32 or bf16; logits and gradient (rows, vocab) row-major, targets (rows) u32, row_loss
//! (rows) f32 = scale·(lse − z[t]), times row_weight[r] (rows) f32 when given. Work is queued
//! on the device's stream; nothing synchronizes.
//!
//! Launch configuration (the kernels' constants beside them):
//! - `Warps` (Auto: V ≤ `WARPS_MAX_VOCAB`): one warp per row, 8 rows per 256-thread block.
//! - `Rows`: one 512-thread block per row. With the gradient, pass 2 re-reads the row; the grid
//!   then holds at most 2 blocks per SM, fewer when that many rows would not fit in ¾ of L2 (at
//!   V = 151936 in bf16, one per SM: 132 rows of 297 KiB on an H100), and the blocks walk the
//!   rows, so that the re-read comes from L2. The loss alone reads each row once: a block per row.
//! - 16-byte accesses (`_vec`) unless `scalar` is set or the gradient buffer and the logits are at
//!   different addresses modulo 16 (the kernel aligns each row itself, so any V works).

use super::device::{cuda_err, CudaDevice};
use super::divergence::{DivElem, StudentGrad};
use crate::backend::DType;
use crate::error::{shape_err, Error, Result};
use cudarc::driver::sys::CUdevice_attribute;
use cudarc::driver::{CudaView, CudaViewMut, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};

const MODULE: &str = "cross_entropy";
/// Threads per block of each kernel (CE_ROWS_THREADS, 32·CE_WARPS_PER_BLOCK).
const ROWS_THREADS: u32 = 512;
const WARPS_PER_BLOCK: u32 = 8;
/// Blocks of the rows kernel resident per SM at most (CE_ROWS_MIN_BLOCKS).
const ROWS_BLOCKS_PER_SM: u64 = 2;
/// Auto: rows up to this many entries take the warp-per-row kernel.
pub const WARPS_MAX_VOCAB: usize = 2048;

/// Which kernel runs; `Auto` picks from V.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CePath {
    #[default]
    Auto,
    /// One warp per row.
    Warps,
    /// One block per row.
    Rows,
}

#[derive(Clone, Copy, Debug)]
pub struct CrossEntropyLaunch {
    pub rows: usize,
    pub vocab: usize,
    /// Multiplies the loss and the gradient (e.g. 1 / counted tokens in the step).
    pub scale: f32,
    pub path: CePath,
    /// Force the one-element kernels (tests; the launcher falls back to them by itself when the
    /// gradient buffer is not aligned like the logits).
    pub scalar: bool,
}

fn kernel_name(warps: bool, vec: bool, dtype: DType) -> &'static str {
    match (warps, vec, dtype) {
        (true, true, DType::BF16) => "cross_entropy_warps_vec_bf16",
        (true, false, DType::BF16) => "cross_entropy_warps_scalar_bf16",
        (true, true, _) => "cross_entropy_warps_vec_f32",
        (true, false, _) => "cross_entropy_warps_scalar_f32",
        (false, true, DType::BF16) => "cross_entropy_rows_vec_bf16",
        (false, false, DType::BF16) => "cross_entropy_rows_scalar_bf16",
        (false, true, _) => "cross_entropy_rows_vec_f32",
        (false, false, _) => "cross_entropy_rows_scalar_f32",
    }
}

/// Blocks of the rows kernel: enough for every row without the gradient; with it, the rows in
/// flight (one per block) kept within ¾ of L2, between 1 and `ROWS_BLOCKS_PER_SM` per SM.
fn rows_grid(dev: &CudaDevice, rows: usize, row_bytes: usize, grad: bool) -> u64 {
    let rows = rows as u64;
    if !grad {
        return rows;
    }
    let sms = dev.multiprocessors().max(1) as u64;
    let l2 = dev
        .context()
        .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)
        .map_or(0, |b| b.max(0) as u64);
    let per_sm = (l2 * 3 / 4 / (sms * row_bytes.max(1) as u64)).clamp(1, ROWS_BLOCKS_PER_SM);
    rows.min(sms * per_sm)
}

/// Loss (and gradient) of every row; see the module documentation. Returns the kernel's name.
pub fn cross_entropy_fwd_bwd<T: DivElem>(
    dev: &CudaDevice,
    p: &CrossEntropyLaunch,
    logits: StudentGrad<'_, T>,
    targets: &CudaView<'_, u32>,
    row_loss: &mut CudaViewMut<'_, f32>,
) -> Result<&'static str> {
    cross_entropy_weighted_fwd_bwd(dev, p, logits, targets, None, row_loss)
}

/// As `cross_entropy_fwd_bwd`, row r's loss and gradient multiplied by `row_weight[r]` (rows) f32
/// when given (the kernel's `row_weight` argument; null without).
pub fn cross_entropy_weighted_fwd_bwd<T: DivElem>(
    dev: &CudaDevice,
    p: &CrossEntropyLaunch,
    mut logits: StudentGrad<'_, T>,
    targets: &CudaView<'_, u32>,
    row_weight: Option<&CudaView<'_, f32>>,
    row_loss: &mut CudaViewMut<'_, f32>,
) -> Result<&'static str> {
    const OP: &str = "cross_entropy (cuda)";
    if p.vocab == 0 || p.vocab > i32::MAX as usize || p.rows > i32::MAX as usize {
        return shape_err(OP, format!("rows {} vocab {}: need 1 ≤ vocab ≤ 2^31 − 1", p.rows, p.vocab));
    }
    if !p.scale.is_finite() {
        return Err(Error::Msg(format!("{OP}: the scale must be finite, got {}", p.scale)));
    }
    let need = p.rows * p.vocab;
    let (z_len, g_len) = match &logits {
        StudentGrad::LossOnly(z) => (z.len(), None),
        StudentGrad::InPlace(z) => (z.len(), Some(z.len())),
        StudentGrad::Into { student, grad } => (student.len(), Some(grad.len())),
    };
    for (name, len) in [("logits", Some(z_len)), ("grad", g_len)] {
        if let Some(len) = len.filter(|&l| l < need) {
            return shape_err(
                OP,
                format!("{name} has {len} elements, {} rows of {} need {need}", p.rows, p.vocab),
            );
        }
    }
    if targets.len() < p.rows || row_loss.len() < p.rows {
        return shape_err(
            OP,
            format!("{} targets and {} row losses for {} rows", targets.len(), row_loss.len(), p.rows),
        );
    }
    if let Some(w) = row_weight.filter(|w| w.len() < p.rows) {
        return shape_err(OP, format!("{} row weights for {} rows", w.len(), p.rows));
    }
    let warps = match p.path {
        CePath::Auto => p.vocab <= WARPS_MAX_VOCAB,
        CePath::Warps => true,
        CePath::Rows => false,
    };
    let stream = dev.stream();
    // Raw pointers (0: no gradient); dropping cudarc's guards at once is sound, event tracking is
    // off on every gkd context (one stream per device, see `CudaDevice::get`).
    let (z, g) = match &mut logits {
        StudentGrad::LossOnly(z) => (z.device_ptr(stream).0, 0),
        StudentGrad::InPlace(z) => {
            let zp = z.device_ptr_mut(stream).0;
            (zp, zp)
        }
        StudentGrad::Into { student, grad } => (student.device_ptr(stream).0, grad.device_ptr_mut(stream).0),
    };
    let vec = !p.scalar && (g == 0 || z.abs_diff(g) % 16 == 0);
    let name = kernel_name(warps, vec, T::DTYPE);
    if p.rows == 0 {
        return Ok(name);
    }
    let (grid, block) = if warps {
        ((p.rows as u64).div_ceil(WARPS_PER_BLOCK as u64), 32 * WARPS_PER_BLOCK)
    } else {
        (rows_grid(dev, p.rows, p.vocab * std::mem::size_of::<T>(), g != 0), ROWS_THREADS)
    };
    let cfg = LaunchConfig { grid_dim: (grid as u32, 1, 1), block_dim: (block, 1, 1), shared_mem_bytes: 0 };
    let t = targets.device_ptr(stream).0;
    let l = row_loss.device_ptr_mut(stream).0;
    let rw = row_weight.map_or(0, |w| w.device_ptr(stream).0);
    let (rows, vocab) = (p.rows as i32, p.vocab as i32);
    let f = dev.function(MODULE, name)?;
    // SAFETY: the arguments match cross_entropy_<path>_<vec|scalar>_<dtype>(z, targets, g,
    // row_loss, rows, vocab, scale, row_weight); the buffers were checked above to hold rows ×
    // vocab logits (and gradient), rows targets, row losses and row weights (or null); the grid (≤ rows ≤ 2^31 − 1 blocks) fits; the
    // views borrow their buffers for this call and the stream orders later frees after the kernel.
    unsafe {
        stream
            .launch_builder(&f)
            .arg(&z)
            .arg(&t)
            .arg(&g)
            .arg(&l)
            .arg(&rows)
            .arg(&vocab)
            .arg(&p.scale)
            .arg(&rw)
            .launch(cfg)
    }
    .map_err(cuda_err(format!("{OP}: launching {name}")))?;
    Ok(name)
}
