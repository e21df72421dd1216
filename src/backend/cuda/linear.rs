//! The fully connected layer through cuBLAS (`matmul.rs`) and cuBLASLt (`lt.rs`), with no kernel
//! of its own:
//!   fwd: y = x·op(W) (+ b: in the product's epilogue through cuBLASLt; where it has no algorithm,
//!        first y = 1·bᵀ as a rank-1 product, then the product with beta = 1)
//!   bwd: dx = dy·op(W)ᵀ, dW = dyᵀ·x or xᵀ·dy (f32), db = 1ᵀ·dy (f32, a 1 × N product)
//! W is stored (Dout, Din) (`nn.Linear`) or (Din, Dout) (`Conv1D`, `w_in_out`).

use super::device::CudaDevice;
use super::matmul::{gemm, Gemm, GemmElem};
use super::storage::CudaElem;
use crate::backend::ops::LinearDims;
use crate::backend::Element;
use crate::error::Result;
use cudarc::driver::{CudaSlice, CudaView, DevicePtr};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

/// What a float type of the linear layer needs.
pub trait LinearElem: CudaElem + GemmElem + Element + Send + Sync {}
impl<T: CudaElem + GemmElem + Element + Send + Sync> LinearElem for T {}

pub struct LinearGrads<T> {
    pub dx: CudaSlice<T>,           // (N, Din)
    pub dw: CudaSlice<f32>,         // like W
    pub db: Option<CudaSlice<f32>>, // (Dout)
}

/// Set when a cuBLASLt product failed: the process keeps to the cuBLAS path after that.
static LT_OFF: AtomicBool = AtomicBool::new(false);

/// At least N ones of type T (the rank-1 products of the bias), kept on the device.
fn ones<T: LinearElem + Send + Sync>(dev: &CudaDevice, n: usize, op: &str) -> Result<Arc<CudaSlice<T>>> {
    dev.ones_of(n, T::from_f64(1.0), op)
}

/// x (N, Din) → (N, Dout).
pub fn linear_fwd<T: LinearElem>(
    dev: &CudaDevice,
    d: LinearDims,
    x: &CudaView<'_, T>,
    w: &CudaView<'_, T>,
    b: Option<&CudaView<'_, T>>,
) -> Result<CudaSlice<T>> {
    const OP: &str = "linear (cuda)";
    let LinearDims { n, d_in, d_out, w_in_out } = d;
    // SAFETY: the products below write every element (beta = 0 first).
    let mut y: CudaSlice<T> = unsafe { dev.alloc_of(n * d_out, OP)? };
    // The bias in the product's epilogue (cuBLASLt) when the bias is 16-byte aligned and an
    // algorithm exists for the shape; else as a rank-1 product first.
    if let Some(b) = b.filter(|b| b.device_ptr(dev.stream()).0 % 16 == 0 && !LT_OFF.load(Relaxed)) {
        match super::lt::linear_bias(dev, d, x, w, b, &mut y.slice_mut(..n * d_out)) {
            Ok(true) => return Ok(y),
            Ok(false) => {}
            // A cuBLASLt failure is not the user's problem: say so once, then keep to cuBLAS.
            Err(e) => {
                if !LT_OFF.swap(true, Relaxed) {
                    eprintln!(
                        "note: the cuBLASLt bias epilogue failed ({e}); biases go through cuBLAS from now on"
                    );
                }
            }
        }
    }
    let mut beta = 0.0;
    if let Some(b) = b {
        let one = ones::<T>(dev, n, OP)?;
        gemm(
            dev,
            &Gemm::dense(n, d_out, 1, false, false),
            &one.slice(..n),
            b,
            &mut y.slice_mut(..n * d_out),
        )?;
        beta = 1.0;
    }
    let g = Gemm { beta, ..Gemm::dense(n, d_out, d_in, false, !w_in_out) };
    gemm(dev, &g, x, w, &mut y.slice_mut(..n * d_out))?;
    Ok(y)
}

pub fn linear_bwd<T: LinearElem>(
    dev: &CudaDevice,
    d: LinearDims,
    x: &CudaView<'_, T>,
    w: &CudaView<'_, T>,
    dy: &CudaView<'_, T>,
    has_bias: bool,
) -> Result<LinearGrads<T>> {
    const OP: &str = "linear backward (cuda)";
    let LinearDims { n, d_in, d_out, w_in_out } = d;
    // SAFETY: each product writes every element of its output (beta = 0).
    let (mut dx, mut dw) =
        unsafe { (dev.alloc_of::<T>(n * d_in, OP)?, dev.alloc_of::<f32>(d_in * d_out, OP)?) };
    // dx (N, Din) = dy (N, Dout) · W (Dout, Din), or dy · Wᵀ when W is (Din, Dout).
    gemm(dev, &Gemm::dense(n, d_in, d_out, false, w_in_out), dy, w, &mut dx.slice_mut(..n * d_in))?;
    if w_in_out {
        // dW (Din, Dout) = xᵀ · dy
        gemm(dev, &Gemm::dense(d_in, d_out, n, true, false), x, dy, &mut dw.slice_mut(..d_in * d_out))?;
    } else {
        // dW (Dout, Din) = dyᵀ · x
        gemm(dev, &Gemm::dense(d_out, d_in, n, true, false), dy, x, &mut dw.slice_mut(..d_in * d_out))?;
    }
    let db = if has_bias {
        let one = ones::<T>(dev, n, OP)?;
        // SAFETY: written by the product (beta = 0).
        let mut db: CudaSlice<f32> = unsafe { dev.alloc_of(d_out, OP)? };
        gemm(dev, &Gemm::dense(1, d_out, n, false, false), &one.slice(..n), dy, &mut db.slice_mut(..d_out))?;
        Some(db)
    } else {
        None
    };
    Ok(LinearGrads { dx, dw, db })
}
