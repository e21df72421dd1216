//! The structs in `kernels/abi.h`, passed by value to kernels, and its `GKD_*` constants.
//!
//! They are bindgen's output for the header (build.rs), so the two sides cannot drift: the
//! generated file asserts at compile time that every size, alignment and field offset is the one
//! clang gave the C struct. Where libclang is missing, build.rs uses the checked-in copy
//! `abi_bindings.rs`, and only if it was generated from the same `abi.h`; the test below checks
//! that copy against bindgen's output wherever libclang loads (CI).

use cudarc::driver::DeviceRepr;

#[allow(non_camel_case_types, non_upper_case_globals)]
mod bindings {
    include!(concat!(env!("OUT_DIR"), "/abi_bindings.rs"));
}

/// `gkd_divergence_params`: one launch of kernels/divergence.cu or kernels/divergence_unfused.cu.
pub use bindings::gkd_divergence_params as DivergenceParams;
/// `gkd_norm_params`: LayerNorm / RMSNorm over the last dimension (kernels/rms_norm.cu, kernels/layer_norm.cu).
pub use bindings::gkd_norm_params as NormParams;
/// `gkd_norm_wgrad_params`: the column reduction of the norm weight gradients.
pub use bindings::gkd_norm_wgrad_params as NormWgradParams;

/// `gkd_rope_params`: the rotary embedding of kernels/rope.cu, its inverse frequencies inline.
pub use bindings::gkd_rope_params as RopeParams;
/// `GKD_ROPE_MAX_HALF`: the most inverse frequencies `RopeParams` carries (head dimension ≤ 256).
pub use bindings::GKD_ROPE_MAX_HALF as ROPE_MAX_HALF;

/// `GKD_DIV_PREFETCH_L2`: a bit of `DivergenceParams::flags`.
pub use bindings::GKD_DIV_PREFETCH_L2 as DIV_PREFETCH_L2;
/// `GKD_DIV_*`: the `kind` of `DivergenceParams`.
pub use bindings::{
    GKD_DIV_FKL as DIV_FKL, GKD_DIV_JSD as DIV_JSD, GKD_DIV_RKL as DIV_RKL, GKD_DIV_SKEW_FKL as DIV_SKEW_FKL,
    GKD_DIV_SKEW_RKL as DIV_SKEW_RKL, GKD_DIV_TVD as DIV_TVD,
};

// SAFETY: plain-old-data #[repr(C)] structs generated from abi.h, their layout asserted at compile
// time against clang's.
unsafe impl DeviceRepr for NormParams {}
unsafe impl DeviceRepr for NormWgradParams {}
unsafe impl DeviceRepr for DivergenceParams {}
unsafe impl DeviceRepr for RopeParams {}

#[cfg(test)]
mod tests {
    use std::io::Write;

    /// What the crate compiled: bindgen's output, or a copy of the checked-in file.
    const BUILT: &str = include_str!(concat!(env!("OUT_DIR"), "/abi_bindings.rs"));
    const CHECKED_IN: &str = include_str!("abi_bindings.rs");

    #[test]
    fn checked_in_bindings_match_bindgen() {
        let source = env!("GKD_ABI_BINDINGS");
        if source != "bindgen" {
            let line = format!(
                "SKIPPED backend::cuda::abi::tests::checked_in_bindings_match_bindgen: the build used \
                 the {source}, nothing to compare; LIBCLANG_PATH=$(scripts/install-libclang) gives \
                 bindgen a libclang\n"
            );
            let _ = std::io::stderr().write_all(line.as_bytes());
            return;
        }
        if BUILT != CHECKED_IN {
            let (built, checked_in): (Vec<&str>, Vec<&str>) =
                (BUILT.lines().collect(), CHECKED_IN.lines().collect());
            let end = built.len().max(checked_in.len());
            let i = (0..end).find(|&i| built.get(i) != checked_in.get(i)).unwrap_or(end);
            let at = |v: &[&str]| v.get(i).map_or("<end of file>".to_string(), |l| format!("{l:?}"));
            panic!(
                "src/backend/cuda/abi_bindings.rs is not bindgen's output for kernels/abi.h (first \
                 difference, line {}: bindgen {}, checked in {}): run scripts/regen-abi and commit the file",
                i + 1,
                at(&built),
                at(&checked_in)
            );
        }
    }
}
