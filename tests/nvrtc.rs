//! The NVRTC path (a build without nvcc compiles the embedded kernel sources at run time): every
//! module's source must compile for every GPU generation gkd supports. NVRTC needs no GPU, only
//! libnvrtc, so this runs wherever the library loads (CI installs the pinned wheel); elsewhere it
//! prints a SKIPPED line. Loading the PTX on a GPU is `.gpu/gpu-check run`'s NVRTC rows.

use gkd::backend::cuda::{nvrtc_available, nvrtc_ptx, MODULES};
use rayon::prelude::*;
use std::io::Write;

#[test]
fn every_kernel_source_compiles_with_nvrtc() {
    if !nvrtc_available() {
        let line = "SKIPPED nvrtc::every_kernel_source_compiles_with_nvrtc: libnvrtc cannot be loaded \
                    (LD_LIBRARY_PATH=.cuda/nvidia/cu13/lib after scripts/install-cuda-compiler)\n";
        let _ = std::io::stderr().write_all(line.as_bytes());
        return;
    }
    assert!(MODULES.iter().any(|m| m.name == "divergence"), "no divergence module in this build");
    // One NVRTC compilation per (module, architecture), in parallel.
    let jobs: Vec<_> =
        MODULES.iter().flat_map(|m| [(8, 0), (8, 6), (8, 9), (9, 0)].map(|a| (m, a))).collect();
    let failures: Vec<String> = jobs
        .par_iter()
        .filter_map(|&(m, arch)| {
            let ptx = match nvrtc_ptx(m, arch) {
                Ok(ptx) => ptx.to_src(),
                Err(e) => return Some(format!("{}.cu for {arch:?}: {e}", m.name)),
            };
            if !ptx.contains(".entry") {
                return Some(format!("{}.cu for {arch:?}: PTX without a kernel", m.name));
            }
            // The sm_90 features sit behind __CUDA_ARCH__ guards: present for 9.0 only.
            let hopper = ptx.contains("barrier.cluster") && ptx.contains("cp.async.bulk.prefetch.L2");
            (m.name == "divergence" && hopper != (arch.0 >= 9))
                .then(|| format!("divergence.cu for {arch:?}: cluster/prefetch code present = {hopper}"))
        })
        .collect();
    assert!(failures.is_empty(), "NVRTC failed:\n{}", failures.join("\n"));
}
