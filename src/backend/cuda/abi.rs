//! Rust mirrors of the structs in `kernels/abi.h`, passed by value to kernels.
//!
//! `verify_layout` compares their sizes, alignments and field offsets with what the C compiler
//! reports for `abi.h` (the table `kernels/abi_check.c` exports): a test runs it, and so does every
//! CUDA device at creation, so the two sides cannot drift silently.

use cudarc::driver::DeviceRepr;
use std::ffi::{c_char, CStr};
use std::mem::{align_of, offset_of, size_of};

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NormParams {
    pub rows: i32,
    pub cols: i32,
    pub eps: f32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NormWgradParams {
    pub rows: i32,
    pub cols: i32,
    pub row_chunks: i32,
    pub rows_per_chunk: i32,
}

// SAFETY: plain-old-data #[repr(C)] structs whose layout is checked against abi.h.
unsafe impl DeviceRepr for NormParams {}
unsafe impl DeviceRepr for NormWgradParams {}

/// `gkd_divergence_params`: one launch of kernels/divergence.cu or kernels/divergence_unfused.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DivergenceParams {
    pub ld: i64,
    pub rows: i32,
    pub vocab: i32,
    pub kind: i32,
    pub coef: f32,
    pub inv_temp: f32,
    pub scale: f32,
    pub ctas: i32,
    pub chunk: i32,
    pub flags: i32,
}

/// `GKD_DIV_*`: the `kind` of `DivergenceParams`.
pub const DIV_FKL: i32 = 0;
pub const DIV_RKL: i32 = 1;
pub const DIV_JSD: i32 = 2;
pub const DIV_TVD: i32 = 3;
pub const DIV_SKEW_FKL: i32 = 4;
pub const DIV_SKEW_RKL: i32 = 5;
/// `GKD_DIV_PREFETCH_L2`: a bit of `DivergenceParams::flags`.
pub const DIV_PREFETCH_L2: i32 = 1;

// SAFETY: plain-old-data #[repr(C)] struct whose layout is checked against abi.h.
unsafe impl DeviceRepr for DivergenceParams {}

/// (C name, Rust value) for every size, alignment and offset in the ABI.
fn rust_layout() -> Vec<(String, usize)> {
    let mut v = Vec::new();
    macro_rules! size {
        ($c:literal, $t:ty) => {
            v.push((concat!($c, ".size").to_string(), size_of::<$t>()));
            v.push((concat!($c, ".align").to_string(), align_of::<$t>()));
        };
    }
    macro_rules! field {
        ($c:literal, $t:ty, $f:ident) => {
            v.push((concat!($c, ".", stringify!($f)).to_string(), offset_of!($t, $f)));
        };
    }
    size!("gkd_norm_params", NormParams);
    field!("gkd_norm_params", NormParams, rows);
    field!("gkd_norm_params", NormParams, cols);
    field!("gkd_norm_params", NormParams, eps);
    size!("gkd_norm_wgrad_params", NormWgradParams);
    field!("gkd_norm_wgrad_params", NormWgradParams, rows);
    field!("gkd_norm_wgrad_params", NormWgradParams, cols);
    field!("gkd_norm_wgrad_params", NormWgradParams, row_chunks);
    field!("gkd_norm_wgrad_params", NormWgradParams, rows_per_chunk);
    size!("gkd_divergence_params", DivergenceParams);
    field!("gkd_divergence_params", DivergenceParams, ld);
    field!("gkd_divergence_params", DivergenceParams, rows);
    field!("gkd_divergence_params", DivergenceParams, vocab);
    field!("gkd_divergence_params", DivergenceParams, kind);
    field!("gkd_divergence_params", DivergenceParams, coef);
    field!("gkd_divergence_params", DivergenceParams, inv_temp);
    field!("gkd_divergence_params", DivergenceParams, scale);
    field!("gkd_divergence_params", DivergenceParams, ctas);
    field!("gkd_divergence_params", DivergenceParams, chunk);
    field!("gkd_divergence_params", DivergenceParams, flags);
    for (name, value) in [
        ("GKD_DIV_FKL", DIV_FKL),
        ("GKD_DIV_RKL", DIV_RKL),
        ("GKD_DIV_JSD", DIV_JSD),
        ("GKD_DIV_TVD", DIV_TVD),
        ("GKD_DIV_SKEW_FKL", DIV_SKEW_FKL),
        ("GKD_DIV_SKEW_RKL", DIV_SKEW_RKL),
        ("GKD_DIV_PREFETCH_L2", DIV_PREFETCH_L2),
    ] {
        v.push((name.to_string(), value as usize));
    }
    v
}

#[repr(C)]
struct AbiEntry {
    name: *const c_char,
    value: u64,
}

extern "C" {
    static gkd_abi_layout: [AbiEntry; 0];
    static gkd_abi_layout_len: u64;
}

/// The layout the C compiler gave `abi.h`.
fn c_layout() -> Vec<(String, usize)> {
    // SAFETY: abi_check.c defines an array of `gkd_abi_layout_len` entries with static C strings.
    unsafe {
        let n = gkd_abi_layout_len as usize;
        let base = std::ptr::addr_of!(gkd_abi_layout) as *const AbiEntry;
        (0..n)
            .map(|i| {
                let e = &*base.add(i);
                (CStr::from_ptr(e.name).to_string_lossy().into_owned(), e.value as usize)
            })
            .collect()
    }
}

/// Ok when every struct in abi.h has the same layout on both sides.
pub fn verify_layout() -> Result<(), String> {
    let c = c_layout();
    let r = rust_layout();
    let mut problems = Vec::new();
    for (name, cv) in &c {
        match r.iter().find(|(n, _)| n == name) {
            Some((_, rv)) if rv == cv => {}
            Some((_, rv)) => problems.push(format!("{name}: C {cv}, Rust {rv}")),
            None => problems.push(format!("{name}: in abi.h but not mirrored in src/backend/cuda/abi.rs")),
        }
    }
    for (name, _) in &r {
        if !c.iter().any(|(n, _)| n == name) {
            problems.push(format!("{name}: in abi.rs but not listed in kernels/abi_check.c"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "kernel ABI drift between kernels/abi.h and src/backend/cuda/abi.rs: {}",
            problems.join("; ")
        ))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rust_and_c_layouts_agree() {
        super::verify_layout().unwrap();
        assert!(super::c_layout().len() >= 9);
    }
}
