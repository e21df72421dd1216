//! Shared by the integration tests: the CUDA device (or a visible skip line where there is none),
//! and the device-ops harness (`harness.rs`).
#![allow(dead_code)]

pub mod elem;
pub mod harness;
pub mod ops;
pub mod reference;

use gkd::backend::cuda::{self, CudaDevice};
use std::io::Write;
use std::sync::Arc;

/// Prints a line straight to stderr: libtest captures only `print!`/`eprintln!`, so the line
/// shows in every `cargo test` run.
pub fn visible(line: &str) {
    let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
}

/// `cuda:0` when the machine has a GPU; a `SKIPPED <test>: …` line and None where there is no
/// driver or no GPU. A GPU whose context cannot be created is a failure, not a skip.
pub fn cuda_or_skip(test: &str) -> Option<Arc<CudaDevice>> {
    if let Some(reason) = cuda::probe().unavailable_reason() {
        visible(&format!("SKIPPED {test}: no CUDA device ({reason})"));
        return None;
    }
    // Outputs a kernel leaves unwritten come out NaN.
    cuda::set_poison_allocations(true);
    match CudaDevice::get(0) {
        Ok(d) => Some(d),
        Err(e) => panic!("{test}: this machine has a GPU, but cuda:0 cannot be used: {e}"),
    }
}

/// max |a − b| / max(|b|, floor) over the elements.
pub fn max_rel_err(a: &[f64], b: &[f64], floor: f64) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs() / y.abs().max(floor)).fold(0.0, f64::max)
}
