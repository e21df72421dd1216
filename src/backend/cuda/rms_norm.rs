//! Launchers for `kernels/rms_norm.cu`: RMSNorm forward and backward, f32 and bf16 (configuration
//! in `norm_launch.rs`). rstd and the weight gradient are f32.

use super::device::{cuda_err, CudaDevice};
use super::norm_launch::{params, row_cfg, wgrad};
use super::storage::kernel;
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
    let (_, y, rstd) = launch_fwd(dev, x, None, w, rows, cols, eps)?;
    Ok((y, rstd))
}

/// The residual add fused in: x and r (rows, cols), w (cols) → (sum = x + r (rows, cols),
/// y = rms_norm(sum) (rows, cols), rstd (rows) f32).
pub fn add_fwd<T: CudaElem>(
    dev: &CudaDevice,
    x: &CudaView<'_, T>,
    r: &CudaView<'_, T>,
    w: &CudaView<'_, T>,
    rows: usize,
    cols: usize,
    eps: f32,
) -> Result<(CudaSlice<T>, CudaSlice<T>, CudaSlice<f32>)> {
    let (sum, y, rstd) = launch_fwd(dev, x, Some(r), w, rows, cols, eps)?;
    let sum = sum.ok_or_else(|| crate::error::Error::Msg("internal: add_rms_norm wrote no sum".into()))?;
    Ok((sum, y, rstd))
}

/// rms_norm_fwd_<dtype>(x, w, y, rstd, p), or with a residual
/// add_rms_norm_fwd_<dtype>(x, r, w, sum, y, rstd, p).
#[allow(clippy::type_complexity)]
fn launch_fwd<T: CudaElem>(
    dev: &CudaDevice,
    x: &CudaView<'_, T>,
    r: Option<&CudaView<'_, T>>,
    w: &CudaView<'_, T>,
    rows: usize,
    cols: usize,
    eps: f32,
) -> Result<(Option<CudaSlice<T>>, CudaSlice<T>, CudaSlice<f32>)> {
    const OP: &str = "rms_norm (cuda)";
    // SAFETY: the kernel writes every row of y, rstd and (with a residual) sum.
    let (mut y, mut rstd) = unsafe { (dev.alloc_of::<T>(rows * cols, OP)?, dev.alloc_of::<f32>(rows, OP)?) };
    let mut sum = match r {
        // SAFETY: as above.
        Some(_) => Some(unsafe { dev.alloc_of::<T>(rows * cols, OP)? }),
        None => None,
    };
    if rows > 0 {
        let name = match r {
            Some(_) => kernel::<T>("add_rms_norm_fwd_f32", "add_rms_norm_fwd_bf16")?,
            None => kernel::<T>("rms_norm_fwd_f32", "rms_norm_fwd_bf16")?,
        };
        let f = dev.function(MODULE, name)?;
        let p = params(rows, cols, eps);
        let stream = dev.stream();
        let mut b = stream.launch_builder(&f);
        b.arg(x);
        if let (Some(r), Some(sum)) = (r, sum.as_mut()) {
            b.arg(r).arg(w).arg(sum);
        } else {
            b.arg(w);
        }
        b.arg(&mut y).arg(&mut rstd).arg(&p);
        // SAFETY: the argument list matches the kernel chosen above (rms_norm.cu); every buffer
        // holds rows × cols (x, r, sum, y), cols (w) or rows (rstd) elements.
        unsafe { b.launch(row_cfg(rows)) }.map_err(cuda_err(OP))?;
    }
    Ok((sum, y, rstd))
}

/// → (dx (rows, cols), dw (cols) f32). With `dsum` (the fused residual add's backward: x is the
/// sum), dx is the norm's dx + dsum, the gradient of both addends.
#[allow(clippy::too_many_arguments)]
pub fn bwd<T: CudaElem>(
    dev: &CudaDevice,
    x: &CudaView<'_, T>,
    w: &CudaView<'_, T>,
    rstd: &CudaView<'_, f32>,
    dy: &CudaView<'_, T>,
    dsum: Option<&CudaView<'_, T>>,
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
    let fdx = dev.function(
        MODULE,
        match dsum {
            Some(_) => kernel::<T>("add_rms_norm_bwd_dx_f32", "add_rms_norm_bwd_dx_bf16")?,
            None => kernel::<T>("rms_norm_bwd_dx_f32", "rms_norm_bwd_dx_bf16")?,
        },
    )?;
    let fwg = dev.function(MODULE, kernel::<T>("rms_norm_bwd_wgrad_f32", "rms_norm_bwd_wgrad_bf16")?)?;
    let ffin = dev.function(MODULE, "rms_norm_bwd_wgrad_finish")?;
    let p = params(rows, cols, 0.0);
    if rows > 0 {
        let mut b = s.launch_builder(&fdx);
        b.arg(x).arg(w).arg(rstd).arg(dy);
        if let Some(d) = dsum {
            b.arg(d);
        }
        b.arg(&mut dx).arg(&p);
        // SAFETY: (add_)rms_norm_bwd_dx_<dtype>(x, w, rstd, dy, [dsum,] dx, p) as chosen above;
        // x, dy, dsum and dx hold rows × cols elements, rstd rows, w cols.
        unsafe { b.launch(row_cfg(rows)) }.map_err(cuda_err(OP))?;
    }
    // SAFETY: argument types match the kernels in rms_norm.cu; buffers sized above.
    unsafe {
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
