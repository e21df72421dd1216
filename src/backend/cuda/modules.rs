//! The kernel modules embedded by build.rs: a fatbin per `kernels/*.cu` when nvcc was found at build
//! time, and always the self-contained source, compiled by NVRTC at run time when there is no fatbin.

use crate::error::{Error, Result};
use cudarc::nvrtc::{CompileOptions, Ptx};

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

/// Whether libnvrtc can be loaded (the NVRTC path needs no GPU, only the library).
pub fn nvrtc_available() -> bool {
    // SAFETY: only tries to dlopen libnvrtc.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// PTX for compute capability (major, minor) compiled from the module's embedded source by NVRTC:
/// what a build without nvcc loads (also run without a GPU by tests/nvrtc.rs).
pub fn nvrtc_ptx(em: &EmbeddedModule, (major, minor): (i32, i32)) -> Result<Ptx> {
    if !nvrtc_available() {
        return Err(Error::NoCuda(
            "this binary was built without nvcc and libnvrtc cannot be loaded: add the CUDA \
             libraries to LD_LIBRARY_PATH (e.g. /usr/local/cuda/lib64) or rebuild after \
             scripts/install-cuda-compiler"
                .into(),
        ));
    }
    // NVRTC needs a &'static str; the set of architectures is small and fixed.
    let arch: &'static str = Box::leak(format!("compute_{major}{minor}").into_boxed_str());
    let opts = CompileOptions {
        arch: Some(arch),
        name: Some(format!("{}.cu", em.name)),
        options: vec!["-std=c++17".into(), "-default-device".into()],
        ..Default::default()
    };
    cudarc::nvrtc::compile_ptx_with_opts(em.source, opts)
        .map_err(|e| Error::Msg(format!("NVRTC failed to compile {}.cu for {arch}: {e}", em.name)))
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
