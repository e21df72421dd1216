//! Launchers for `kernels/layer_norm.cu`: LayerNorm forward and backward, f32 and bf16
//! (configuration in `norm_launch.rs`). mean, rstd and the weight and bias gradients are f32.

use super::device::{cuda_err, CudaDevice};
use super::norm_launch::{params, row_cfg, wgrad};
use super::storage::kernel;
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
    let o = launch_fwd(dev, x, None, w, b, rows, cols, eps)?;
    Ok((o.y, o.mean, o.rstd))
}

/// The residual add fused in: x and r (rows, cols), w and b (cols) → (sum = x + r (rows, cols),
/// y = layer_norm(sum) (rows, cols), mean (rows) f32, rstd (rows) f32).
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
pub fn add_fwd<T: CudaElem>(
    dev: &CudaDevice,
    x: &CudaView<'_, T>,
    r: &CudaView<'_, T>,
    w: &CudaView<'_, T>,
    b: &CudaView<'_, T>,
    rows: usize,
    cols: usize,
    eps: f32,
) -> Result<(CudaSlice<T>, CudaSlice<T>, CudaSlice<f32>, CudaSlice<f32>)> {
    let o = launch_fwd(dev, x, Some(r), w, b, rows, cols, eps)?;
    let sum =
        o.sum.ok_or_else(|| crate::error::Error::Msg("internal: add_layer_norm wrote no sum".into()))?;
    Ok((sum, o.y, o.mean, o.rstd))
}

struct FwdOut<T> {
    sum: Option<CudaSlice<T>>,
    y: CudaSlice<T>,
    mean: CudaSlice<f32>,
    rstd: CudaSlice<f32>,
}

/// layer_norm_fwd_<dtype>(x, w, b, y, mean, rstd, p), or with a residual
/// add_layer_norm_fwd_<dtype>(x, r, w, b, sum, y, mean, rstd, p).
#[allow(clippy::too_many_arguments)]
fn launch_fwd<T: CudaElem>(
    dev: &CudaDevice,
    x: &CudaView<'_, T>,
    r: Option<&CudaView<'_, T>>,
    w: &CudaView<'_, T>,
    b: &CudaView<'_, T>,
    rows: usize,
    cols: usize,
    eps: f32,
) -> Result<FwdOut<T>> {
    const OP: &str = "layer_norm (cuda)";
    // SAFETY: the kernel writes every row of y, mean, rstd and (with a residual) sum.
    let (mut y, mut mean, mut rstd) = unsafe {
        (dev.alloc_of::<T>(rows * cols, OP)?, dev.alloc_of::<f32>(rows, OP)?, dev.alloc_of::<f32>(rows, OP)?)
    };
    let mut sum = match r {
        // SAFETY: as above.
        Some(_) => Some(unsafe { dev.alloc_of::<T>(rows * cols, OP)? }),
        None => None,
    };
    if rows > 0 {
        let name = match r {
            Some(_) => kernel::<T>("add_layer_norm_fwd_f32", "add_layer_norm_fwd_bf16")?,
            None => kernel::<T>("layer_norm_fwd_f32", "layer_norm_fwd_bf16")?,
        };
        let f = dev.function(MODULE, name)?;
        let p = params(rows, cols, eps);
        let stream = dev.stream();
        let mut lb = stream.launch_builder(&f);
        lb.arg(x);
        if let (Some(r), Some(sum)) = (r, sum.as_mut()) {
            lb.arg(r).arg(w).arg(b).arg(sum);
        } else {
            lb.arg(w).arg(b);
        }
        lb.arg(&mut y).arg(&mut mean).arg(&mut rstd).arg(&p);
        // SAFETY: the argument list matches the kernel chosen above (layer_norm.cu); every buffer
        // holds rows × cols (x, r, sum, y), cols (w, b) or rows (mean, rstd) elements.
        unsafe { lb.launch(row_cfg(rows)) }.map_err(cuda_err(OP))?;
    }
    Ok(FwdOut { sum, y, mean, rstd })
}

/// → (dx (rows, cols), dw (cols) f32, db (cols) f32). With `dsum` (the fused residual add's
/// backward: x is the sum), dx is the norm's dx + dsum, the gradient of both addends.
#[allow(clippy::too_many_arguments)]
pub fn bwd<T: CudaElem>(
    dev: &CudaDevice,
    x: &CudaView<'_, T>,
    w: &CudaView<'_, T>,
    mean: &CudaView<'_, f32>,
    rstd: &CudaView<'_, f32>,
    dy: &CudaView<'_, T>,
    dsum: Option<&CudaView<'_, T>>,
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
    let fdx = dev.function(
        MODULE,
        match dsum {
            Some(_) => kernel::<T>("add_layer_norm_bwd_dx_f32", "add_layer_norm_bwd_dx_bf16")?,
            None => kernel::<T>("layer_norm_bwd_dx_f32", "layer_norm_bwd_dx_bf16")?,
        },
    )?;
    let fwg = dev.function(MODULE, kernel::<T>("layer_norm_bwd_wgrad_f32", "layer_norm_bwd_wgrad_bf16")?)?;
    let ffin = dev.function(MODULE, "layer_norm_bwd_wgrad_finish")?;
    let p = params(rows, cols, 0.0);
    if rows > 0 {
        let mut b = s.launch_builder(&fdx);
        b.arg(x).arg(w).arg(mean).arg(rstd).arg(dy);
        if let Some(d) = dsum {
            b.arg(d);
        }
        b.arg(&mut dx).arg(&p);
        // SAFETY: (add_)layer_norm_bwd_dx_<dtype>(x, w, mean, rstd, dy, [dsum,] dx, p) as chosen
        // above; x, dy, dsum and dx hold rows × cols elements, mean and rstd rows, w cols.
        unsafe { b.launch(row_cfg(rows)) }.map_err(cuda_err(OP))?;
    }
    // SAFETY: argument types match the kernels in layer_norm.cu; buffers sized above.
    unsafe {
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
