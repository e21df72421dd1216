//! Launchers for `kernels/rms_norm.cu`: RMSNorm forward and backward, f32 and bf16 (configuration
//! in `norm_launch.rs`). rstd and the weight gradient are f32.

use super::device::{cuda_err, CudaDevice};
use super::norm_launch::{kernel, params, row_cfg, wgrad};
use super::storage::CudaElem;
use crate::error::Result;
use cudarc::driver::{CudaSlice, CudaView, PushKernelArg};

const MODULE: &str = "rms_norm";

/// x (rows, cols), w (cols) → (y (rows, cols), rstd (rows) f32).
pub fn fwd<T: CudaElem>(
    dev: &CudaDevice,
    x: &CudaView<'_, T>,
    w: &CudaView<'_, T>,
    rows: usize,
    cols: usize,
    eps: f32,
) -> Result<(CudaSlice<T>, CudaSlice<f32>)> {
    const OP: &str = "rms_norm (cuda)";
    // SAFETY: the kernel writes every row of y and rstd.
    let (mut y, mut rstd) = unsafe { (dev.alloc_of::<T>(rows * cols, OP)?, dev.alloc_of::<f32>(rows, OP)?) };
    if rows > 0 {
        let f = dev.function(MODULE, kernel::<T>("rms_norm_fwd_f32", "rms_norm_fwd_bf16"))?;
        let p = params(rows, cols, eps);
        // SAFETY: argument types match rms_norm_fwd_<dtype>(x, w, y, rstd, p).
        unsafe {
            dev.stream()
                .launch_builder(&f)
                .arg(x)
                .arg(w)
                .arg(&mut y)
                .arg(&mut rstd)
                .arg(&p)
                .launch(row_cfg(rows))
        }
        .map_err(cuda_err(OP))?;
    }
    Ok((y, rstd))
}

/// → (dx (rows, cols), dw (cols) f32).
pub fn bwd<T: CudaElem>(
    dev: &CudaDevice,
    x: &CudaView<'_, T>,
    w: &CudaView<'_, T>,
    rstd: &CudaView<'_, f32>,
    dy: &CudaView<'_, T>,
    rows: usize,
    cols: usize,
) -> Result<(CudaSlice<T>, CudaSlice<f32>)> {
    const OP: &str = "rms_norm backward (cuda)";
    let (wp, pcfg, fcfg) = wgrad(rows, cols);
    // SAFETY: the kernels write every element of dx, the partials and dw.
    let (mut dx, mut part, mut dw) = unsafe {
        (
            dev.alloc_of::<T>(rows * cols, OP)?,
            dev.alloc_of::<f32>(wp.row_chunks as usize * cols, OP)?,
            dev.alloc_of::<f32>(cols, OP)?,
        )
    };
    let s = dev.stream();
    let fdx = dev.function(MODULE, kernel::<T>("rms_norm_bwd_dx_f32", "rms_norm_bwd_dx_bf16"))?;
    let fwg = dev.function(MODULE, kernel::<T>("rms_norm_bwd_wgrad_f32", "rms_norm_bwd_wgrad_bf16"))?;
    let ffin = dev.function(MODULE, "rms_norm_bwd_wgrad_finish")?;
    let p = params(rows, cols, 0.0);
    // SAFETY: argument types match the kernels in rms_norm.cu; buffers sized above.
    unsafe {
        if rows > 0 {
            s.launch_builder(&fdx)
                .arg(x)
                .arg(w)
                .arg(rstd)
                .arg(dy)
                .arg(&mut dx)
                .arg(&p)
                .launch(row_cfg(rows))
                .map_err(cuda_err(OP))?;
        }
        s.launch_builder(&fwg)
            .arg(x)
            .arg(rstd)
            .arg(dy)
            .arg(&mut part)
            .arg(&wp)
            .launch(pcfg)
            .map_err(cuda_err(OP))?;
        s.launch_builder(&ffin).arg(&part).arg(&mut dw).arg(&wp).launch(fcfg).map_err(cuda_err(OP))?;
    }
    Ok((dx, dw))
}
