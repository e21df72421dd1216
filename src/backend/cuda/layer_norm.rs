//! Launchers for `kernels/layer_norm.cu`: LayerNorm forward and backward, f32 and bf16
//! (configuration in `norm_launch.rs`). mean, rstd and the weight and bias gradients are f32.

use super::device::{cuda_err, CudaDevice};
use super::norm_launch::{kernel, params, row_cfg, wgrad};
use super::storage::CudaElem;
use crate::error::Result;
use cudarc::driver::{CudaSlice, CudaView, PushKernelArg};

const MODULE: &str = "layer_norm";

/// x (rows, cols), w and b (cols) → (y (rows, cols), mean (rows) f32, rstd (rows) f32).
pub fn fwd<T: CudaElem>(
    dev: &CudaDevice,
    x: &CudaView<'_, T>,
    w: &CudaView<'_, T>,
    b: &CudaView<'_, T>,
    rows: usize,
    cols: usize,
    eps: f32,
) -> Result<(CudaSlice<T>, CudaSlice<f32>, CudaSlice<f32>)> {
    const OP: &str = "layer_norm (cuda)";
    // SAFETY: the kernel writes every row of y, mean and rstd.
    let (mut y, mut mean, mut rstd) = unsafe {
        (dev.alloc_of::<T>(rows * cols, OP)?, dev.alloc_of::<f32>(rows, OP)?, dev.alloc_of::<f32>(rows, OP)?)
    };
    if rows > 0 {
        let f = dev.function(MODULE, kernel::<T>("layer_norm_fwd_f32", "layer_norm_fwd_bf16"))?;
        let p = params(rows, cols, eps);
        // SAFETY: argument types match layer_norm_fwd_<dtype>(x, w, b, y, mean, rstd, p).
        unsafe {
            dev.stream()
                .launch_builder(&f)
                .arg(x)
                .arg(w)
                .arg(b)
                .arg(&mut y)
                .arg(&mut mean)
                .arg(&mut rstd)
                .arg(&p)
                .launch(row_cfg(rows))
        }
        .map_err(cuda_err(OP))?;
    }
    Ok((y, mean, rstd))
}

/// → (dx (rows, cols), dw (cols) f32, db (cols) f32).
#[allow(clippy::too_many_arguments)]
pub fn bwd<T: CudaElem>(
    dev: &CudaDevice,
    x: &CudaView<'_, T>,
    w: &CudaView<'_, T>,
    mean: &CudaView<'_, f32>,
    rstd: &CudaView<'_, f32>,
    dy: &CudaView<'_, T>,
    rows: usize,
    cols: usize,
) -> Result<(CudaSlice<T>, CudaSlice<f32>, CudaSlice<f32>)> {
    const OP: &str = "layer_norm backward (cuda)";
    let (wp, pcfg, fcfg) = wgrad(rows, cols);
    let chunks = wp.row_chunks as usize;
    // SAFETY: the kernels write every element of dx, the partials, dw and db.
    let (mut dx, mut dw_part, mut db_part, mut dw, mut db) = unsafe {
        (
            dev.alloc_of::<T>(rows * cols, OP)?,
            dev.alloc_of::<f32>(chunks * cols, OP)?,
            dev.alloc_of::<f32>(chunks * cols, OP)?,
            dev.alloc_of::<f32>(cols, OP)?,
            dev.alloc_of::<f32>(cols, OP)?,
        )
    };
    let s = dev.stream();
    let fdx = dev.function(MODULE, kernel::<T>("layer_norm_bwd_dx_f32", "layer_norm_bwd_dx_bf16"))?;
    let fwg = dev.function(MODULE, kernel::<T>("layer_norm_bwd_wgrad_f32", "layer_norm_bwd_wgrad_bf16"))?;
    let ffin = dev.function(MODULE, "layer_norm_bwd_wgrad_finish")?;
    let p = params(rows, cols, 0.0);
    // SAFETY: argument types match the kernels in layer_norm.cu; buffers sized above.
    unsafe {
        if rows > 0 {
            s.launch_builder(&fdx)
                .arg(x)
                .arg(w)
                .arg(mean)
                .arg(rstd)
                .arg(dy)
                .arg(&mut dx)
                .arg(&p)
                .launch(row_cfg(rows))
                .map_err(cuda_err(OP))?;
        }
        s.launch_builder(&fwg)
            .arg(x)
            .arg(mean)
            .arg(rstd)
            .arg(dy)
            .arg(&mut dw_part)
            .arg(&mut db_part)
            .arg(&wp)
            .launch(pcfg)
            .map_err(cuda_err(OP))?;
        s.launch_builder(&ffin)
            .arg(&dw_part)
            .arg(&db_part)
            .arg(&mut dw)
            .arg(&mut db)
            .arg(&wp)
            .launch(fcfg)
            .map_err(cuda_err(OP))?;
    }
    Ok((dx, dw, db))
}
