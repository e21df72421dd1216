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
