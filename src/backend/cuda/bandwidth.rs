//! The copy kernel of `kernels/bandwidth.cu` and a timed measurement of the device's
//! read + write bandwidth, for the floors that benchmarks report ratios against.

use super::device::{cuda_err, CudaDevice};
use crate::error::{shape_err, Result};
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

/// dst ← src, both holding `n16 · 16` bytes.
pub fn copy(dev: &CudaDevice, src: &CudaSlice<u8>, dst: &mut CudaSlice<u8>) -> Result<()> {
    if src.len() != dst.len() || src.len() % 16 != 0 {
        return shape_err(
            "copy (cuda)",
            format!("{} and {} bytes (need equal multiples of 16)", src.len(), dst.len()),
        );
    }
    let n16 = (src.len() / 16) as i64;
    let f = dev.function("bandwidth", "copy_u128")?;
    let sms = dev.multiprocessors() as u32;
    let cfg = LaunchConfig { grid_dim: (sms * 8, 1, 1), block_dim: (512, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: the kernel reads and writes n16 16-byte elements of equal-sized buffers.
    unsafe { dev.stream().launch_builder(&f).arg(src).arg(dst).arg(&n16).launch(cfg) }
        .map(|_| ())
        .map_err(cuda_err("copy_u128"))
}

/// Median read+write bandwidth (bytes/s) of copying `bytes` bytes, over `reps` timed copies.
pub fn measure_copy_bandwidth(dev: &CudaDevice, bytes: usize, reps: usize) -> Result<f64> {
    let bytes = bytes / 16 * 16;
    let src = dev.stream().alloc_zeros::<u8>(bytes).map_err(cuda_err("bandwidth buffer"))?;
    let mut dst = dev.stream().alloc_zeros::<u8>(bytes).map_err(cuda_err("bandwidth buffer"))?;
    let ms = time_ms(dev, reps, || copy(dev, &src, &mut dst))?;
    Ok(2.0 * bytes as f64 / (ms * 1e-3))
}

/// Median time in ms of `f` over `reps` runs after two warm-ups, timed with CUDA events.
pub fn time_ms(dev: &CudaDevice, reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..2 {
        f()?;
    }
    let flags = Some(CUevent_flags::CU_EVENT_DEFAULT);
    let ctx = dev.context();
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let a = ctx.new_event(flags).map_err(cuda_err("event"))?;
        let b = ctx.new_event(flags).map_err(cuda_err("event"))?;
        a.record(dev.stream()).map_err(cuda_err("event record"))?;
        f()?;
        b.record(dev.stream()).map_err(cuda_err("event record"))?;
        b.synchronize().map_err(cuda_err("event sync"))?;
        times.push(a.elapsed_ms(&b).map_err(cuda_err("elapsed"))? as f64);
    }
    times.sort_by(|x, y| x.total_cmp(y));
    Ok(times[times.len() / 2])
}

/// Wall time of `iters` calls of `f`, the device synchronized before and after (criterion's
/// `iter_custom` for work queued on the GPU).
pub fn time_iters(dev: &CudaDevice, iters: u64, mut f: impl FnMut()) -> std::time::Duration {
    // A failed synchronization shows up in the next launch's error; timing goes on regardless.
    let _ = dev.synchronize();
    let t0 = std::time::Instant::now();
    for _ in 0..iters {
        f();
    }
    let _ = dev.synchronize();
    t0.elapsed()
}
