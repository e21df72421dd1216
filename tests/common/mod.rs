//! Shared by the integration tests: the CUDA device, or a visible skip line when there is none.
#![allow(dead_code)]

use gkd::backend::cuda::{self, CudaDevice};
use std::io::Write;
use std::sync::Arc;

/// `cuda:0` when a GPU is usable; otherwise prints `SKIPPED <test>: <reason>` straight to stderr
/// (libtest captures only `print!`/`eprintln!`, so the line shows in every `cargo test` run) and
/// returns None.
pub fn cuda_or_skip(test: &str) -> Option<Arc<CudaDevice>> {
    let reason = match cuda::probe().unavailable_reason() {
        None => match CudaDevice::get(0) {
            Ok(d) => return Some(d),
            Err(e) => e.to_string(),
        },
        Some(r) => r,
    };
    let line = format!("SKIPPED {test}: no CUDA device ({reason})\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
    None
}

/// max |a − b| / max(|b|, floor) over the elements.
pub fn max_rel_err(a: &[f64], b: &[f64], floor: f64) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs() / y.abs().max(floor)).fold(0.0, f64::max)
}
