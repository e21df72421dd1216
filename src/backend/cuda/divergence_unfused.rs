//! Launchers for `kernels/divergence_unfused.cu`: the divergence loss and gradient the way a
//! framework computes them (log-softmax of each input, mixture log-probabilities, per-element
//! terms, row sums, gradient: five kernels, (rows, V) fp32 intermediates). The baseline the
//! fused kernel is benchmarked against, with the same API and results as
//! `divergence::divergence_fwd_bwd` (`DivergenceLaunch::path` is ignored).
//!
//! Scratch: 4 (5 for JSD and skew KL) × rows·V fp32 buffers, allocated per call.

use super::abi::{DivergenceParams, DIV_JSD, DIV_SKEW_FKL, DIV_SKEW_RKL};
use super::device::{cuda_err, CudaDevice};
use super::divergence::{launch_raw, prepare, DivElem, DivergenceLaunch, RawLaunch, StudentGrad};
use crate::backend::DType;
use crate::error::Result;
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, DevicePtr};
use std::ffi::c_void;

const MODULE: &str = "divergence_unfused";
const THREADS: u32 = 256;
const MAX_BLOCKS: u64 = 4096;

/// Kernel argument: a raw device pointer or the parameter struct.
enum Arg {
    Ptr(u64),
    Params(DivergenceParams),
}

fn launch(dev: &CudaDevice, name: &'static str, grid: u64, args: &mut [Arg]) -> Result<()> {
    let f = dev.function(MODULE, name)?;
    let mut ptrs: Vec<*mut c_void> = args
        .iter_mut()
        .map(|a| match a {
            Arg::Ptr(p) => p as *mut u64 as *mut c_void,
            Arg::Params(p) => p as *mut DivergenceParams as *mut c_void,
        })
        .collect();
    // SAFETY: every caller passes the arguments of `name` in kernels/divergence_unfused.cu, with
    // buffers sized by check_launch (inputs, outputs) or allocated here for rows·V (scratch).
    unsafe { launch_raw(dev, &f, grid.max(1) as u32, THREADS, 0, 1, &mut ptrs) }
        .map_err(cuda_err(format!("divergence (unfused): launching {name}")))
}

fn ptr(s: &CudaSlice<f32>, dev: &CudaDevice) -> Arg {
    Arg::Ptr(s.device_ptr(dev.stream()).0)
}

/// Same contract as `divergence::divergence_fwd_bwd`.
pub fn divergence_unfused_fwd_bwd<T: DivElem>(
    dev: &CudaDevice,
    p: &DivergenceLaunch,
    student: StudentGrad<'_, T>,
    teacher: &CudaView<'_, T>,
    row_mask: Option<&CudaView<'_, u8>>,
    row_loss: &mut CudaViewMut<'_, f32>,
) -> Result<()> {
    const OP: &str = "divergence (unfused)";
    let RawLaunch { params, s: s_ptr, g: g_ptr, t: t_ptr, m: m_ptr, l: l_ptr } =
        prepare(OP, dev, p, student, teacher, row_mask, row_loss)?;
    if p.rows == 0 {
        return Ok(());
    }

    let n = p.rows * p.vocab;
    let mixture = matches!(params.kind, DIV_JSD | DIV_SKEW_FKL | DIV_SKEW_RKL);
    // SAFETY: each buffer is fully written by the kernel that produces it before any read.
    let (lq, lp, lm, ta, tb, lse_s, lse_t, sums) = unsafe {
        (
            dev.alloc_of::<f32>(n, OP)?,
            dev.alloc_of::<f32>(n, OP)?,
            dev.alloc_of::<f32>(if mixture { n } else { 1 }, OP)?,
            dev.alloc_of::<f32>(n, OP)?,
            dev.alloc_of::<f32>(n, OP)?,
            dev.alloc_of::<f32>(p.rows, OP)?,
            dev.alloc_of::<f32>(p.rows, OP)?,
            dev.alloc_of::<f32>(3 * p.rows, OP)?,
        )
    };
    let bf16 = T::DTYPE == DType::BF16;
    let rows = p.rows as u64;
    let elems = (n as u64).div_ceil(THREADS as u64).min(MAX_BLOCKS);
    let (softmax, grad) = if bf16 {
        ("unfused_log_softmax_bf16", "unfused_grad_bf16")
    } else {
        ("unfused_log_softmax_f32", "unfused_grad_f32")
    };
    let pp = || Arg::Params(params);
    launch(dev, softmax, rows, &mut [Arg::Ptr(s_ptr), ptr(&lq, dev), ptr(&lse_s, dev), pp()])?;
    launch(dev, softmax, rows, &mut [Arg::Ptr(t_ptr), ptr(&lp, dev), ptr(&lse_t, dev), pp()])?;
    // Without a mixture `lm` is never read; lq stands in for it.
    let lm_arg = || if mixture { ptr(&lm, dev) } else { ptr(&lq, dev) };
    if mixture {
        launch(dev, "unfused_log_mixture", elems, &mut [ptr(&lq, dev), ptr(&lp, dev), lm_arg(), pp()])?;
    }
    launch(
        dev,
        "unfused_terms",
        elems,
        &mut [ptr(&lq, dev), ptr(&lp, dev), lm_arg(), ptr(&ta, dev), ptr(&tb, dev), pp()],
    )?;
    launch(
        dev,
        "unfused_row_sums",
        rows,
        &mut [
            ptr(&ta, dev),
            ptr(&tb, dev),
            Arg::Ptr(m_ptr),
            ptr(&lse_s, dev),
            ptr(&lse_t, dev),
            ptr(&sums, dev),
            Arg::Ptr(l_ptr),
            pp(),
        ],
    )?;
    if g_ptr != 0 {
        launch(
            dev,
            grad,
            elems,
            &mut [
                ptr(&lq, dev),
                ptr(&lp, dev),
                lm_arg(),
                ptr(&sums, dev),
                Arg::Ptr(m_ptr),
                ptr(&lse_s, dev),
                ptr(&lse_t, dev),
                Arg::Ptr(g_ptr),
                pp(),
            ],
        )?;
    }
    Ok(())
}
