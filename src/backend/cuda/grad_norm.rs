//! Launcher for `kernels/grad_norm.cu`: Σ x² over f32 or bf16 x in two deterministic stages, a
//! fixed grid of `BLOCKS` blocks of `THREADS` threads writing one f64 partial per block, then one
//! block of `FINISH_THREADS` adding them; the one f64 comes back to the host. The grid is a
//! constant (not the SM count) because it fixes how the sum is split, hence its rounding: the same
//! values give the same bits on every GPU and every run.

use super::device::{cuda_err, CudaDevice};
use super::storage::kernel;
use super::storage::CudaElem;
use crate::error::Result;
use cudarc::driver::{CudaSlice, CudaView, LaunchConfig, PushKernelArg};

const MODULE: &str = "grad_norm";
/// Blocks of the first stage. With 4 (f32) or 8 (bf16) lanes per thread, each f32 accumulator
/// adds ⌈n / (lanes · BLOCKS · THREADS)⌉ terms: 10 for 10M f32 elements, ~470 for 494M.
pub const BLOCKS: u32 = 1024;
pub const THREADS: u32 = 256;
const FINISH_THREADS: u32 = 256;

/// Σ x² of the n elements (0 when there are none).
pub fn sum_squares<T: CudaElem>(dev: &CudaDevice, x: &CudaView<'_, T>) -> Result<f64> {
    const OP: &str = "sum_squares (cuda)";
    let n = x.len();
    if n == 0 {
        return Ok(0.0);
    }
    let name = kernel::<T>("sum_squares_f32", "sum_squares_bf16")?;
    let partial = dev.function(MODULE, name)?;
    let finish = dev.function(MODULE, "sum_squares_finish")?;
    // SAFETY: stage 1 writes one partial per block (BLOCKS of them), stage 2 the one result.
    let (mut partials, mut out): (CudaSlice<f64>, CudaSlice<f64>) =
        unsafe { (dev.alloc_of(BLOCKS as usize, OP)?, dev.alloc_of(1, OP)?) };
    let n64 = n as i64;
    let count = BLOCKS as i32;
    let s = dev.stream();
    let grid = |blocks: u32, threads: u32| LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: the arguments match sum_squares_<dtype>(x, n, partials) and
    // sum_squares_finish(partials, count, out) in grad_norm.cu; x holds n elements, partials
    // BLOCKS (= count) and out 1.
    unsafe {
        s.launch_builder(&partial)
            .arg(x)
            .arg(&n64)
            .arg(&mut partials)
            .launch(grid(BLOCKS, THREADS))
            .map_err(cuda_err(OP))?;
        s.launch_builder(&finish)
            .arg(&partials)
            .arg(&count)
            .arg(&mut out)
            .launch(grid(1, FINISH_THREADS))
            .map_err(cuda_err(OP))?;
    }
    let host = s.clone_dtoh(&out).map_err(cuda_err(OP))?;
    Ok(host[0])
}
