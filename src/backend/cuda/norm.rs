//! Launchers for `kernels/norm.cu`: LayerNorm and RMSNorm, forward and backward, f32 and bf16.
//!
//! Launch configuration: one warp per row, 8 rows per 256-thread block. The weight gradients are
//! summed in two stages over chunks of `WGRAD_ROWS_PER_CHUNK` rows (fp32 partials, then a sum), so
//! they come out in fp32 whatever the input dtype.

use super::abi::{NormParams, NormWgradParams};
use super::device::{cuda_err, CudaBuf, CudaDevice, CudaStorage};
use crate::error::{shape_err, Error, Result};
use crate::tensor::{DType, Shape, Storage, Tensor};
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use std::sync::Arc;

const MODULE: &str = "norm";
const ROWS_PER_BLOCK: u32 = 8;
const WGRAD_ROWS_PER_CHUNK: usize = 256;

pub struct NormFwd {
    /// (rows, cols), the input's dtype.
    pub y: Tensor,
    /// (rows) f32; None for RMSNorm.
    pub mean: Option<Tensor>,
    /// (rows) f32.
    pub rstd: Tensor,
}

pub struct NormBwd {
    pub dx: Tensor,
    /// (cols) f32.
    pub dw: Tensor,
    /// (cols) f32, when the norm has a bias.
    pub db: Option<Tensor>,
}

fn parts<'a>(t: &'a Tensor, what: &str) -> Result<(Arc<CudaDevice>, &'a CudaBuf)> {
    match t.storage() {
        Storage::Cuda(CudaStorage { dev, buf }) => Ok((dev.clone(), buf)),
        Storage::Cpu(_) => Err(Error::Msg(format!("{what}: expected a CUDA tensor, found a CPU one"))),
    }
}

fn f32_slice<'a>(t: &'a Tensor, what: &str) -> Result<&'a CudaSlice<f32>> {
    match parts(t, what)?.1 {
        CudaBuf::F32(s) => Ok(s),
        b => Err(Error::Msg(format!("{what}: expected f32 statistics, found {}", b.dtype()))),
    }
}

fn f32_tensor(dev: &Arc<CudaDevice>, s: CudaSlice<f32>, shape: impl Into<Shape>) -> Tensor {
    Tensor::from_cuda(CudaStorage { dev: dev.clone(), buf: CudaBuf::F32(s) }, shape.into())
}

fn row_cfg(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((rows as u32).div_ceil(ROWS_PER_BLOCK), 1, 1),
        block_dim: (32 * ROWS_PER_BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn check(op: &'static str, x: &Tensor, params: &[&Tensor]) -> Result<(usize, usize)> {
    let cols = x.shape().last();
    let rows = x.shape().rows();
    for p in params {
        if p.dims() != [cols] {
            return shape_err(op, format!("parameter of shape {} for input {}", p.shape(), x.shape()));
        }
        if p.dtype() != x.dtype() {
            return shape_err(
                op,
                format!("parameter dtype {} differs from input dtype {}", p.dtype(), x.dtype()),
            );
        }
    }
    if rows > i32::MAX as usize || cols > i32::MAX as usize {
        return shape_err(op, format!("input {} too large for 32-bit indexing", x.shape()));
    }
    Ok((rows, cols))
}

fn dtype_err(op: &'static str, t: &Tensor) -> Error {
    Error::DType { op, dtype: t.dtype(), device: t.device(), supported: "f32, bf16" }
}

/// LayerNorm forward: x (.., C), w (C), b (C).
pub fn layernorm_fwd(x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> Result<NormFwd> {
    const OP: &str = "layernorm (cuda)";
    let (rows, cols) = check(OP, x, &[w, b])?;
    let (dev, xb) = parts(x, OP)?;
    let p = NormParams { rows: rows as i32, cols: cols as i32, eps };
    // SAFETY: the kernel writes every row of y, mean and rstd.
    let (mut y, mut mean, mut rstd) = unsafe {
        (dev.alloc_buf(x.dtype(), rows * cols, OP)?, dev.alloc_f32(rows, OP)?, dev.alloc_f32(rows, OP)?)
    };
    let s = dev.stream();
    let launched = match (xb, parts(w, OP)?.1, parts(b, OP)?.1, &mut y) {
        (CudaBuf::F32(x), CudaBuf::F32(w), CudaBuf::F32(b), CudaBuf::F32(y)) => {
            let f = dev.function(MODULE, "layernorm_fwd_f32")?;
            // SAFETY: argument types and sizes match the kernel signature in norm.cu.
            unsafe {
                s.launch_builder(&f)
                    .arg(x)
                    .arg(w)
                    .arg(b)
                    .arg(y)
                    .arg(&mut mean)
                    .arg(&mut rstd)
                    .arg(&p)
                    .launch(row_cfg(rows))
            }
        }
        (CudaBuf::BF16(x), CudaBuf::BF16(w), CudaBuf::BF16(b), CudaBuf::BF16(y)) => {
            let f = dev.function(MODULE, "layernorm_fwd_bf16")?;
            // SAFETY: as above.
            unsafe {
                s.launch_builder(&f)
                    .arg(x)
                    .arg(w)
                    .arg(b)
                    .arg(y)
                    .arg(&mut mean)
                    .arg(&mut rstd)
                    .arg(&p)
                    .launch(row_cfg(rows))
            }
        }
        _ => return Err(dtype_err(OP, x)),
    };
    launched.map_err(cuda_err(OP))?;
    Ok(NormFwd {
        y: Tensor::from_cuda(CudaStorage { dev: dev.clone(), buf: y }, x.shape().clone()),
        mean: Some(f32_tensor(&dev, mean, [rows])),
        rstd: f32_tensor(&dev, rstd, [rows]),
    })
}

/// RMSNorm forward: x (.., C), w (C).
pub fn rmsnorm_fwd(x: &Tensor, w: &Tensor, eps: f32) -> Result<NormFwd> {
    const OP: &str = "rmsnorm (cuda)";
    let (rows, cols) = check(OP, x, &[w])?;
    let (dev, xb) = parts(x, OP)?;
    let p = NormParams { rows: rows as i32, cols: cols as i32, eps };
    // SAFETY: the kernel writes every row of y and rstd.
    let (mut y, mut rstd) = unsafe { (dev.alloc_buf(x.dtype(), rows * cols, OP)?, dev.alloc_f32(rows, OP)?) };
    let s = dev.stream();
    let launched = match (xb, parts(w, OP)?.1, &mut y) {
        (CudaBuf::F32(x), CudaBuf::F32(w), CudaBuf::F32(y)) => {
            let f = dev.function(MODULE, "rmsnorm_fwd_f32")?;
            // SAFETY: argument types and sizes match the kernel signature in norm.cu.
            unsafe { s.launch_builder(&f).arg(x).arg(w).arg(y).arg(&mut rstd).arg(&p).launch(row_cfg(rows)) }
        }
        (CudaBuf::BF16(x), CudaBuf::BF16(w), CudaBuf::BF16(y)) => {
            let f = dev.function(MODULE, "rmsnorm_fwd_bf16")?;
            // SAFETY: as above.
            unsafe { s.launch_builder(&f).arg(x).arg(w).arg(y).arg(&mut rstd).arg(&p).launch(row_cfg(rows)) }
        }
        _ => return Err(dtype_err(OP, x)),
    };
    launched.map_err(cuda_err(OP))?;
    Ok(NormFwd {
        y: Tensor::from_cuda(CudaStorage { dev: dev.clone(), buf: y }, x.shape().clone()),
        mean: None,
        rstd: f32_tensor(&dev, rstd, [rows]),
    })
}

/// Backward of either norm: `mean` is None for RMSNorm; `has_bias` asks for db (LayerNorm).
pub fn norm_bwd(
    x: &Tensor,
    w: &Tensor,
    mean: Option<&Tensor>,
    rstd: &Tensor,
    dy: &Tensor,
    has_bias: bool,
) -> Result<NormBwd> {
    const OP: &str = "norm backward (cuda)";
    let (rows, cols) = check(OP, x, &[w])?;
    if dy.shape() != x.shape() || dy.dtype() != x.dtype() {
        return shape_err(OP, format!("dy {} {} for x {} {}", dy.shape(), dy.dtype(), x.shape(), x.dtype()));
    }
    let (dev, xb) = parts(x, OP)?;
    let rstd_s = f32_slice(rstd, OP)?;
    let mean_s = mean.map(|m| f32_slice(m, OP)).transpose()?;
    let null: u64 = 0;
    let p = NormParams { rows: rows as i32, cols: cols as i32, eps: 0.0 };
    let chunks = rows.div_ceil(WGRAD_ROWS_PER_CHUNK).max(1);
    let wp = NormWgradParams {
        rows: rows as i32,
        cols: cols as i32,
        row_chunks: chunks as i32,
        rows_per_chunk: WGRAD_ROWS_PER_CHUNK as i32,
    };
    // SAFETY: the kernels write every element of dx, the partials, dw and db.
    let (mut dx, mut dw_part, mut db_part, mut dw, mut db) = unsafe {
        (
            dev.alloc_buf(x.dtype(), rows * cols, OP)?,
            dev.alloc_f32(chunks * cols, OP)?,
            dev.alloc_f32(if has_bias { chunks * cols } else { 1 }, OP)?,
            dev.alloc_f32(cols, OP)?,
            dev.alloc_f32(if has_bias { cols } else { 1 }, OP)?,
        )
    };
    let wcfg = LaunchConfig {
        grid_dim: ((cols as u32).div_ceil(32), chunks as u32, 1),
        block_dim: (32, 8, 1),
        shared_mem_bytes: 0,
    };
    let s = dev.stream();
    macro_rules! launch_all {
        ($x:expr, $w:expr, $dy:expr, $dx:expr, $suf:literal) => {{
            let fdx = dev.function(MODULE, concat!("norm_bwd_dx_", $suf))?;
            let fwp = dev.function(MODULE, concat!("norm_wgrad_partial_", $suf))?;
            // SAFETY: argument types and sizes match the kernel signatures in norm.cu; a null
            // pointer (0u64) stands for an absent mean or bias.
            unsafe {
                let mut b = s.launch_builder(&fdx);
                b.arg($x).arg($w);
                match mean_s {
                    Some(m) => b.arg(m),
                    None => b.arg(&null),
                };
                b.arg(rstd_s).arg($dy).arg($dx).arg(&p).launch(row_cfg(rows)).map_err(cuda_err(OP))?;
                let mut b = s.launch_builder(&fwp);
                b.arg($x);
                match mean_s {
                    Some(m) => b.arg(m),
                    None => b.arg(&null),
                };
                b.arg(rstd_s).arg($dy).arg(&mut dw_part);
                if has_bias {
                    b.arg(&mut db_part);
                } else {
                    b.arg(&null);
                }
                b.arg(&wp).launch(wcfg).map_err(cuda_err(OP))?;
            }
        }};
    }
    match (xb, parts(w, OP)?.1, parts(dy, OP)?.1, &mut dx) {
        (CudaBuf::F32(x), CudaBuf::F32(w), CudaBuf::F32(dy), CudaBuf::F32(dx)) => {
            launch_all!(x, w, dy, dx, "f32")
        }
        (CudaBuf::BF16(x), CudaBuf::BF16(w), CudaBuf::BF16(dy), CudaBuf::BF16(dx)) => {
            launch_all!(x, w, dy, dx, "bf16")
        }
        _ => return Err(dtype_err(OP, x)),
    }
    let ffin = dev.function(MODULE, "norm_wgrad_finish")?;
    let fcfg = LaunchConfig {
        grid_dim: ((cols as u32).div_ceil(256), 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: as above.
    unsafe {
        let mut b = s.launch_builder(&ffin);
        b.arg(&dw_part);
        if has_bias {
            b.arg(&db_part);
        } else {
            b.arg(&null);
        }
        b.arg(&mut dw);
        b.arg(&mut db);
        b.arg(&wp).launch(fcfg).map_err(cuda_err(OP))?;
    }
    Ok(NormBwd {
        dx: Tensor::from_cuda(CudaStorage { dev: dev.clone(), buf: dx }, x.shape().clone()),
        dw: f32_tensor(&dev, dw, [cols]),
        db: has_bias.then(|| f32_tensor(&dev, db, [cols])),
    })
}

/// The dtypes these kernels take.
pub fn supports(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::BF16)
}
