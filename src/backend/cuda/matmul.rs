//! Row-major matrix products through cuBLAS (`cublasGemmEx`, fp32 accumulation).
//!
//! `C[m, n] = alpha · op(A) · op(B) + beta · C`, every matrix row-major with its own row stride
//! (leading dimension), so sub-blocks of larger buffers can be used in place. cuBLAS is
//! column-major: a row-major C is a column-major Cᵀ = op(B)ᵀ·op(A)ᵀ, so the operands are swapped.
//! Inputs are f32 or bf16; the output may be bf16 or f32 (fp32 gradient accumulators).

use super::device::CudaDevice;
use crate::error::{Error, Result};
use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType};
use cudarc::driver::{DevicePtr, DevicePtrMut};
use half::bf16;

/// An element type cuBLAS can read or write here.
pub trait GemmElem: cudarc::driver::DeviceRepr {
    const CUDA_TYPE: cudaDataType;
}
impl GemmElem for f32 {
    const CUDA_TYPE: cudaDataType = cudaDataType::CUDA_R_32F;
}
impl GemmElem for bf16 {
    const CUDA_TYPE: cudaDataType = cudaDataType::CUDA_R_16BF;
}

/// Shape and transposes of one product. `trans_a`: A is stored (k, m); `trans_b`: B is stored (n, k).
#[derive(Clone, Copy, Debug)]
pub struct Gemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    pub lda: usize,
    pub ldb: usize,
    pub ldc: usize,
    pub alpha: f32,
    pub beta: f32,
}

impl Gemm {
    /// Contiguous operands: leading dimensions from the shapes.
    pub fn dense(m: usize, n: usize, k: usize, trans_a: bool, trans_b: bool) -> Gemm {
        Gemm {
            m,
            n,
            k,
            trans_a,
            trans_b,
            lda: if trans_a { m } else { k },
            ldb: if trans_b { k } else { n },
            ldc: n,
            alpha: 1.0,
            beta: 0.0,
        }
    }

    fn check(&self, a_len: usize, b_len: usize, c_len: usize) -> Result<()> {
        let (ar, ac) = if self.trans_a { (self.k, self.m) } else { (self.m, self.k) };
        let (br, bc) = if self.trans_b { (self.n, self.k) } else { (self.k, self.n) };
        let need = |rows: usize, cols: usize, ld: usize| if rows == 0 { 0 } else { (rows - 1) * ld + cols };
        let too_big =
            [self.m, self.n, self.k, self.lda, self.ldb, self.ldc].iter().any(|&d| d > i32::MAX as usize);
        if too_big
            || ac > self.lda
            || bc > self.ldb
            || self.n > self.ldc
            || need(ar, ac, self.lda) > a_len
            || need(br, bc, self.ldb) > b_len
            || need(self.m, self.n, self.ldc) > c_len
        {
            return Err(Error::Shape {
                op: "matmul (cuda)",
                detail: format!("{self:?} does not fit buffers of {a_len}, {b_len}, {c_len} elements"),
            });
        }
        Ok(())
    }
}

/// Runs `g` on the device's stream.
pub fn gemm<T: GemmElem, C: GemmElem>(
    dev: &CudaDevice,
    g: &Gemm,
    a: &impl DevicePtr<T>,
    b: &impl DevicePtr<T>,
    c: &mut impl DevicePtrMut<C>,
) -> Result<()> {
    g.check(a.len(), b.len(), c.len())?;
    if g.m == 0 || g.n == 0 {
        return Ok(());
    }
    let stream = dev.stream();
    if g.k == 0 {
        return empty_product(dev, g, c);
    }
    let blas = dev.blas()?;
    let op = |t: bool| if t { cublasOperation_t::CUBLAS_OP_T } else { cublasOperation_t::CUBLAS_OP_N };
    let (ap, _ra) = a.device_ptr(stream);
    let (bp, _rb) = b.device_ptr(stream);
    let (cp, _rc) = c.device_ptr_mut(stream);
    // SAFETY: extents checked above; the handle is bound to this device's stream; alpha and beta
    // are f32 as CUBLAS_COMPUTE_32F requires.
    dev.timed_gemm(|| unsafe {
        cudarc::cublas::result::gemm_ex(
            *blas.handle(),
            op(g.trans_b),
            op(g.trans_a),
            g.n as i32,
            g.m as i32,
            g.k as i32,
            (&g.alpha) as *const f32 as *const _,
            bp as *const _,
            T::CUDA_TYPE,
            g.ldb as i32,
            ap as *const _,
            T::CUDA_TYPE,
            g.lda as i32,
            (&g.beta) as *const f32 as *const _,
            cp as *mut _,
            C::CUDA_TYPE,
            g.ldc as i32,
            cublasComputeType_t::CUBLAS_COMPUTE_32F,
            cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
        .map_err(|e| Error::Cuda { context: format!("cublasGemmEx {g:?}"), detail: e.to_string() })
    })
}

/// C = beta·C for an empty inner dimension (k = 0), which cuBLAS rejects (its leading
/// dimensions would be 0): C is left alone (beta = 1) or zeroed row by row (beta = 0).
fn empty_product<C: GemmElem>(dev: &CudaDevice, g: &Gemm, c: &mut impl DevicePtrMut<C>) -> Result<()> {
    if g.beta == 1.0 {
        return Ok(());
    }
    if g.beta != 0.0 {
        return Err(Error::Shape {
            op: "matmul (cuda)",
            detail: format!("an empty product (k = 0) with beta = {}", g.beta),
        });
    }
    let stream = dev.stream();
    let elem = std::mem::size_of::<C>();
    let (cp, _rc) = c.device_ptr_mut(stream);
    // One memset when the rows are contiguous, else one per row.
    let (runs, run) = if g.ldc == g.n { (1, g.m * g.n) } else { (g.m, g.n) };
    for r in 0..runs {
        // SAFETY: check() bounded the m rows of n elements at stride ldc by C's length; the
        // memset is ordered on the stream C is used on.
        unsafe {
            cudarc::driver::result::memset_d8_async(
                cp + (r * g.ldc * elem) as u64,
                0,
                run * elem,
                stream.cu_stream(),
            )
        }
        .map_err(|e| Error::Cuda {
            context: "matmul (cuda): zeroing an empty product".into(),
            detail: e.to_string(),
        })?;
    }
    Ok(())
}
