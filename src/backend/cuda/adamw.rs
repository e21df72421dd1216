//! Launcher for `kernels/adamw.cu`: one AdamW update of f32 master weights with their f32
//! gradients and moments, optionally writing the updated weights into the model's compute-dtype
//! weights (f32 or bf16) in the same pass. A grid-stride loop over 4-element vectors: blocks of
//! 256 threads, one per 1024 elements up to 4096 blocks (the update is elementwise, so the
//! launch shape never changes a result).

use super::device::{cuda_err, CudaDevice};
use crate::backend::ops::AdamWStep;
use crate::error::{shape_err, Result};
use cudarc::driver::{CudaView, CudaViewMut, LaunchArgs, LaunchConfig, PushKernelArg};
use half::bf16;

const MODULE: &str = "adamw";
const THREADS: u32 = 256;
const MAX_BLOCKS: usize = 4096;

fn cfg(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(4 * THREADS as usize).clamp(1, MAX_BLOCKS) as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The compute-weights copy of the updated masters, (n).
pub enum WeightsOut<'a, 'b> {
    F32(&'a mut CudaViewMut<'b, f32>),
    BF16(&'a mut CudaViewMut<'b, bf16>),
}

/// p, m, v (n) updated in place from g (n); `out` (n), when given, receives the new p.
pub fn step(
    dev: &CudaDevice,
    p: &mut CudaViewMut<'_, f32>,
    g: &CudaView<'_, f32>,
    m: &mut CudaViewMut<'_, f32>,
    v: &mut CudaViewMut<'_, f32>,
    h: &AdamWStep,
    out: Option<WeightsOut<'_, '_>>,
) -> Result<()> {
    const OP: &str = "adamw (cuda)";
    let n = p.len();
    let out_len = match &out {
        None => n,
        Some(WeightsOut::F32(o)) => o.len(),
        Some(WeightsOut::BF16(o)) => o.len(),
    };
    if [g.len(), m.len(), v.len(), out_len].iter().any(|&l| l != n) {
        return shape_err(
            OP,
            format!(
                "{n} weights with {} gradients, moments of {} and {}, a copy of {out_len}",
                g.len(),
                m.len(),
                v.len()
            ),
        );
    }
    if n == 0 {
        return Ok(());
    }
    let name = match &out {
        None => "adamw_f32",
        Some(WeightsOut::F32(_)) => "adamw_f32_out_f32",
        Some(WeightsOut::BF16(_)) => "adamw_f32_out_bf16",
    };
    let f = dev.function(MODULE, name)?;
    let n64 = n as i64;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(p).arg(g).arg(m).arg(v);
    match out {
        None => {}
        Some(WeightsOut::F32(o)) => {
            b.arg(o);
        }
        Some(WeightsOut::BF16(o)) => {
            b.arg(o);
        }
    }
    push_scalars(&mut b, &n64, h);
    // SAFETY: the arguments match adamw_f32[_out_<dtype>](p, g, m, v, [out,] n, decay,
    // one_minus_beta1, beta2, one_minus_beta2, neg_step_size, bc2_sqrt, eps) in adamw.cu, and
    // every buffer holds the n elements the kernel reads and writes (checked above); the views
    // are distinct buffers (they are borrowed mutably at once).
    unsafe { b.launch(cfg(n)) }.map_err(cuda_err(OP))?;
    Ok(())
}

fn push_scalars<'a>(b: &mut LaunchArgs<'a>, n: &'a i64, h: &'a AdamWStep) {
    b.arg(n)
        .arg(&h.decay)
        .arg(&h.one_minus_beta1)
        .arg(&h.beta2)
        .arg(&h.one_minus_beta2)
        .arg(&h.neg_step_size)
        .arg(&h.bc2_sqrt)
        .arg(&h.eps);
}
