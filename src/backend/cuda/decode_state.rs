//! Launchers for `kernels/decode_state.cu`: the generation loop's state on the device. One thread
//! per row of the step, blocks of 128. Neither reads anything back, so a decode step that uses
//! them can be captured in a CUDA graph; the host checks the slots it makes before uploading them.

use super::device::{cuda_err, CudaDevice};
use crate::error::Result;
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, LaunchConfig, PushKernelArg};

const MODULE: &str = "decode_state";
const THREADS: u32 = 128;

fn cfg(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(THREADS as usize) as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// state (5, B), slots (n) → (6, n); lengths checked by `check::decode_rows`.
pub fn rows(
    dev: &CudaDevice,
    state: &CudaView<'_, u32>,
    slots: &CudaView<'_, u32>,
    capacity: usize,
) -> Result<CudaSlice<u32>> {
    const OP: &str = "decode_rows (cuda)";
    let n = slots.len();
    // SAFETY: the kernel writes all 6·n elements.
    let mut out = unsafe { dev.alloc_of::<u32>(6 * n, OP)? };
    if n == 0 {
        return Ok(out);
    }
    let f = dev.function(MODULE, "decode_rows")?;
    let (b, n_i, cap) = ((state.len() / 5) as i32, n as i32, capacity as u32);
    // SAFETY: decode_rows(state, batch, slots, n, capacity, out): reads state (5·B) at slots
    // clamped below B, writes out (6·n).
    unsafe {
        dev.stream()
            .launch_builder(&f)
            .arg(state)
            .arg(&b)
            .arg(slots)
            .arg(&n_i)
            .arg(&cap)
            .arg(&mut out)
            .launch(cfg(n))
    }
    .map_err(cuda_err(OP))?;
    Ok(out)
}

/// The buffers `advance` updates in place.
pub struct Outputs<'a, 'b> {
    pub tokens: &'a mut CudaViewMut<'b, u32>,
    pub logprobs: &'a mut CudaViewMut<'b, f32>,
}

/// One draw per row applied to the state (5, B) and the outputs; lengths checked by
/// `check::decode_advance`.
#[allow(clippy::too_many_arguments)]
pub fn advance(
    dev: &CudaDevice,
    state: &mut CudaViewMut<'_, u32>,
    slots: &CudaView<'_, u32>,
    tokens: &CudaView<'_, u32>,
    logprobs: &CudaView<'_, f32>,
    stops: &CudaView<'_, u32>,
    max_new: usize,
    out: Outputs<'_, '_>,
) -> Result<()> {
    const OP: &str = "decode_advance (cuda)";
    let n = slots.len();
    if n == 0 {
        return Ok(());
    }
    let f = dev.function(MODULE, "decode_advance")?;
    let (b, n_i, n_stops, max_new) = ((state.len() / 5) as i32, n as i32, stops.len() as i32, max_new as u32);
    // SAFETY: decode_advance(state, batch, slots, tokens, logprobs, n, stops, n_stops, max_new,
    // out_tokens, out_logprobs): slots ≥ B are skipped, and a slot not done has generated <
    // max_new, so its output index s·max_new + generated is inside the (B·max_new) outputs.
    unsafe {
        dev.stream()
            .launch_builder(&f)
            .arg(state)
            .arg(&b)
            .arg(slots)
            .arg(tokens)
            .arg(logprobs)
            .arg(&n_i)
            .arg(stops)
            .arg(&n_stops)
            .arg(&max_new)
            .arg(out.tokens)
            .arg(out.logprobs)
            .launch(cfg(n))
    }
    .map_err(cuda_err(OP))?;
    Ok(())
}
