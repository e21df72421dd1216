//! The kernel modules embedded by build.rs: a fatbin per `kernels/*.cu` when nvcc was found at build
//! time, and always the self-contained source, compiled by NVRTC at run time when there is no fatbin.

/// One `kernels/NAME.cu`.
pub struct EmbeddedModule {
    pub name: &'static str,
    /// The source with its local includes inlined (what NVRTC compiles).
    pub source: &'static str,
    /// SASS for the targets in `SASS_TARGETS` plus PTX for `PTX_TARGET`, when built by nvcc.
    pub fatbin: Option<&'static [u8]>,
}

include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

/// How the kernels in this binary were built, in one line.
pub fn compiled_by() -> String {
    match NVCC_VERSION {
        Some(v) => {
            format!("nvcc {v} at build time: SASS for {} and PTX for {PTX_TARGET}", SASS_TARGETS.join(", "))
        }
        None => {
            "not compiled at build time (no nvcc): NVRTC compiles them at run time for the GPU in use".into()
        }
    }
}

pub fn find(name: &str) -> Option<&'static EmbeddedModule> {
    MODULES.iter().find(|m| m.name == name)
}

/// The nvcc version that compiled the fatbins, if any.
pub fn compiled_by_nvcc() -> Option<&'static str> {
    NVCC_VERSION
}

/// The SASS targets and the PTX target of the fatbins (empty without nvcc).
pub fn kernel_targets() -> Vec<&'static str> {
    match NVCC_VERSION {
        Some(_) => SASS_TARGETS.iter().copied().chain([PTX_TARGET]).collect(),
        None => vec![],
    }
}
