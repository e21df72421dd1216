//! Launch configuration shared by the norm launchers (`rms_norm.rs`, `layer_norm.rs`; kernels in
//! `kernels/norm_backward.cuh`): one warp per row, 8 rows per 256-thread block; the weight
//! gradients are summed in two stages over chunks of `WGRAD_ROWS_PER_CHUNK` rows (fp32 partials,
//! then a sum), so they come out in fp32 whatever the input dtype.

use super::abi::{NormParams, NormWgradParams};
use cudarc::driver::LaunchConfig;

const ROWS_PER_BLOCK: u32 = 8;
const WGRAD_ROWS_PER_CHUNK: usize = 256;

pub(super) fn row_cfg(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((rows as u32).div_ceil(ROWS_PER_BLOCK).max(1), 1, 1),
        block_dim: (32 * ROWS_PER_BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

pub(super) fn params(rows: usize, cols: usize, eps: f32) -> NormParams {
    NormParams { rows: rows as i32, cols: cols as i32, eps }
}

/// The chunking of the weight-gradient sum, its partial kernel's and its finishing kernel's
/// launch configurations.
pub(super) fn wgrad(rows: usize, cols: usize) -> (NormWgradParams, LaunchConfig, LaunchConfig) {
    let chunks = rows.div_ceil(WGRAD_ROWS_PER_CHUNK).max(1);
    let p = NormWgradParams {
        rows: rows as i32,
        cols: cols as i32,
        row_chunks: chunks as i32,
        rows_per_chunk: WGRAD_ROWS_PER_CHUNK as i32,
    };
    let partial = LaunchConfig {
        grid_dim: ((cols as u32).div_ceil(32).max(1), chunks as u32, 1),
        block_dim: (32, 8, 1),
        shared_mem_bytes: 0,
    };
    let finish = LaunchConfig {
        grid_dim: ((cols as u32).div_ceil(256).max(1), 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    (p, partial, finish)
}
