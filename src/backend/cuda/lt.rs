//! cuBLASLt products with a fused epilogue: the linear layer's y = x·op(W) + b in one pass, the
//! bias added as the product's tiles are written (CUBLASLT_EPILOGUE_BIAS), instead of a rank-1
//! product writing 1·bᵀ into y first and the main product reading it back (beta = 1): one write
//! and one read of y fewer per biased layer (every layer of GPT-2, q/k/v of Qwen2).
//!
//! Row-major to cuBLASLt's column-major: y (N, Dout) row-major is yᵀ (Dout × N) column-major, so
//! the product is yᵀ = op(W)·xᵀ with m = Dout, n = N, k = Din; the bias is per row of yᵀ (m of
//! them), i.e. per output feature. W stored (Dout, Din) is a (Din × Dout) column-major matrix used
//! transposed; stored (Din, Dout) (GPT-2's Conv1D) it is (Dout × Din) used as is.
//!
//! The best algorithm for a shape is asked of cuBLASLt's heuristic once per (device, shape, dtype)
//! and kept. f32 products compute in f32 (CUBLAS_COMPUTE_32F: no TF32), as the cuBLAS path does.

use super::device::CudaDevice;
use super::matmul::GemmElem;
use crate::backend::ops::LinearDims;
use crate::error::{Error, Result};
use cudarc::cublaslt::result as lt;
use cudarc::cublaslt::sys;
use cudarc::cublaslt::MatmulShared;
use cudarc::driver::{DevicePtr, DevicePtrMut};
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Mutex, OnceLock};

/// Bytes of scratch the product may use (cuBLASLt's own choice for sm_90).
pub const WORKSPACE_BYTES: usize = 32 << 20;

fn lt_err(what: &str) -> impl FnOnce(cudarc::cublaslt::result::CublasError) -> Error + '_ {
    move |e| Error::Cuda { context: format!("cuBLASLt {what}"), detail: e.to_string() }
}

/// A descriptor destroyed when dropped.
struct Desc(sys::cublasLtMatmulDesc_t);
impl Drop for Desc {
    fn drop(&mut self) {
        // SAFETY: created by create_matmul_desc, destroyed once.
        let _ = unsafe { lt::destroy_matmul_desc(self.0) };
    }
}
struct Layout(sys::cublasLtMatrixLayout_t);
impl Drop for Layout {
    fn drop(&mut self) {
        // SAFETY: created by create_matrix_layout, destroyed once.
        let _ = unsafe { lt::destroy_matrix_layout(self.0) };
    }
}
struct Pref(sys::cublasLtMatmulPreference_t);
impl Drop for Pref {
    fn drop(&mut self) {
        // SAFETY: created by create_matmul_pref, destroyed once.
        let _ = unsafe { lt::destroy_matmul_pref(self.0) };
    }
}

/// (device, m, n, k, W transposed, dtype, the alignments of W, x, y and b in bytes).
type AlgoKey = (usize, usize, usize, usize, bool, sys::cudaDataType, [u32; 4]);

/// The largest power of two (up to 256) dividing a device address: what an algorithm may assume.
fn alignment(ptr: u64) -> u32 {
    1u32 << ptr.trailing_zeros().min(8)
}

/// The heuristic's algorithm per `AlgoKey`; None where it has none (the caller then takes the
/// cuBLAS path). Views of the flat parameter buffer start at any element, so the heuristic is told
/// each operand's actual alignment (its default assumes 256 bytes).
fn algos() -> &'static Mutex<HashMap<AlgoKey, Option<sys::cublasLtMatmulAlgo_t>>> {
    static ALGOS: OnceLock<Mutex<HashMap<AlgoKey, Option<sys::cublasLtMatmulAlgo_t>>>> = OnceLock::new();
    ALGOS.get_or_init(Default::default)
}

/// y = x·op(W) + b through one cuBLASLt product with the bias epilogue; `Ok(false)` when
/// cuBLASLt offers no algorithm for this shape (nothing was launched).
pub fn linear_bias<T: GemmElem>(
    dev: &CudaDevice,
    d: LinearDims,
    x: &impl DevicePtr<T>,
    w: &impl DevicePtr<T>,
    b: &impl DevicePtr<T>,
    y: &mut impl DevicePtrMut<T>,
) -> Result<bool> {
    let LinearDims { n, d_in, d_out, w_in_out } = d;
    if x.len() < n * d_in || w.len() < d_in * d_out || b.len() < d_out || y.len() < n * d_out {
        return Err(Error::Shape {
            op: "linear (cuBLASLt)",
            detail: format!(
                "{d:?} does not fit buffers of {}, {}, {}, {}",
                x.len(),
                w.len(),
                b.len(),
                y.len()
            ),
        });
    }
    if [n, d_in, d_out].iter().any(|&v| v == 0 || v > i32::MAX as usize) {
        return Ok(false);
    }
    let ty = match T::CUDA_TYPE {
        cudarc::cublas::sys::cudaDataType::CUDA_R_32F => sys::cudaDataType::CUDA_R_32F,
        cudarc::cublas::sys::cudaDataType::CUDA_R_16BF => sys::cudaDataType::CUDA_R_16BF,
        _ => return Ok(false),
    };
    let handle = *dev.blaslt()?.handle();
    let (m, k) = (d_out as u64, d_in as u64);
    let trans_a = !w_in_out;
    let desc = Desc(
        lt::create_matmul_desc(sys::cublasComputeType_t::CUBLAS_COMPUTE_32F, sys::cudaDataType::CUDA_R_32F)
            .map_err(lt_err("matmul descriptor"))?,
    );
    let set = |attr: sys::cublasLtMatmulDescAttributes_t, v: *const c_void, size: usize| {
        // SAFETY: `v` points to `size` bytes of the attribute's type, alive for the call.
        unsafe { lt::set_matmul_desc_attribute(desc.0, attr, v, size) }.map_err(lt_err("matmul attribute"))
    };
    let op_a = if trans_a {
        cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_T
    } else {
        cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_N
    };
    set(
        sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
        (&op_a as *const cudarc::cublas::sys::cublasOperation_t).cast(),
        std::mem::size_of::<cudarc::cublas::sys::cublasOperation_t>(),
    )?;
    let epilogue = sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS;
    set(
        sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_EPILOGUE,
        (&epilogue as *const sys::cublasLtEpilogue_t).cast(),
        std::mem::size_of::<sys::cublasLtEpilogue_t>(),
    )?;
    let stream = dev.stream();
    let (bp, _rb) = b.device_ptr(stream);
    let (xp, _rx) = x.device_ptr(stream);
    let (wp, _rw) = w.device_ptr(stream);
    let (yp, _ry) = y.device_ptr_mut(stream);
    let aligns = [alignment(wp), alignment(xp), alignment(yp), alignment(bp)];
    set(
        sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
        (&bp as *const u64).cast(),
        std::mem::size_of::<u64>(),
    )?;
    // A: op(A) is m × k; stored k × m (ld k) when transposed, m × k (ld m) when not.
    let layout = |rows: u64, cols: u64, ld: u64| -> Result<Layout> {
        lt::create_matrix_layout(ty, rows, cols, ld as i64).map(Layout).map_err(lt_err("matrix layout"))
    };
    let a = if trans_a { layout(k, m, k)? } else { layout(m, k, m)? };
    let bl = layout(k, n as u64, k)?;
    let c = layout(m, n as u64, m)?;
    let key = (dev.ordinal(), d_out, n, d_in, trans_a, ty, aligns);
    let cached = algos()
        .lock()
        .map_err(|_| Error::Msg("cuBLASLt algorithm cache poisoned".into()))?
        .get(&key)
        .copied();
    let algo = match cached {
        Some(a) => a,
        None => {
            let pref = Pref(lt::create_matmul_pref().map_err(lt_err("preference"))?);
            use sys::cublasLtMatmulPreferenceAttributes_t as P;
            let bytes = WORKSPACE_BYTES as u64;
            // SAFETY: the workspace size is a u64 (size_t) byte count, the alignments u32.
            unsafe {
                lt::set_matmul_pref_attribute(
                    pref.0,
                    P::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                    (&bytes as *const u64).cast(),
                    std::mem::size_of::<u64>(),
                )
            }
            .map_err(lt_err("workspace preference"))?;
            let [aw, ax, ay, _] = aligns;
            for (attr, v) in [
                (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, aw),
                (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, ax),
                (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, ay),
                (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, ay),
            ] {
                // SAFETY: as above.
                unsafe {
                    lt::set_matmul_pref_attribute(
                        pref.0,
                        attr,
                        (&v as *const u32).cast(),
                        std::mem::size_of::<u32>(),
                    )
                }
                .map_err(lt_err("alignment preference"))?;
            }
            // SAFETY: every descriptor and layout is alive; the heuristic only reads them.
            let found =
                match unsafe { lt::get_matmul_algo_heuristic(handle, desc.0, a.0, bl.0, c.0, c.0, pref.0) } {
                    Ok(h) => Some(h.algo),
                    Err(e) if e.0 == sys::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED => None,
                    Err(e) => return Err(lt_err("algorithm heuristic")(e)),
                };
            algos()
                .lock()
                .map_err(|_| Error::Msg("cuBLASLt algorithm cache poisoned".into()))?
                .insert(key, found);
            found
        }
    };
    let Some(algo) = algo else { return Ok(false) };
    let workspace = dev.lt_workspace()?;
    let (wsp, _rws) = workspace.device_ptr(stream);
    let (alpha, beta) = (1.0f32, 0.0f32);
    dev.timed_gemm(|| {
        // SAFETY: extents checked above; A = W, B = x, C = D = y with the layouts made for them;
        // the handle and the workspace belong to this device and its one stream; alpha and beta
        // are f32 as the f32 scale type requires.
        unsafe {
            lt::matmul(
                handle,
                desc.0,
                (&alpha as *const f32).cast(),
                (&beta as *const f32).cast(),
                wp as *const c_void,
                a.0,
                xp as *const c_void,
                bl.0,
                yp as *const c_void,
                c.0,
                yp as *mut c_void,
                c.0,
                &algo,
                wsp as *mut c_void,
                WORKSPACE_BYTES,
                stream.cu_stream() as *mut _,
            )
        }
        .map_err(lt_err("matmul"))
    })?;
    Ok(true)
}
