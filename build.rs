//! Builds the CUDA kernels and the ABI layout table.
//!
//! Every `kernels/*.cu` is made self-contained (its local `#include "…"` lines inlined) and
//! embedded in the binary. When an `nvcc` is found (`NVCC`, `CUDA_HOME`, `PATH`, or the repo-local
//! toolchain that `scripts/install-cuda-compiler` puts in `.cuda/`), each file is also compiled into
//! a fatbin with SASS for sm_80/86/89/90 and PTX for compute_80, warnings as errors, and the
//! register/spill report is written to `$OUT_DIR/kernel-report.txt`. Without `nvcc` the build still
//! succeeds and the kernels are compiled at run time by NVRTC; set `GKD_REQUIRE_NVCC=1` (CI does)
//! to make a missing compiler an error instead, or `NVCC=none` to build the NVRTC way on purpose
//! (scripts/gpu-check does, to test that path on a GPU).
//!
//! The structs and constants that kernels and Rust share are generated from `kernels/abi.h` by
//! bindgen into `$OUT_DIR/abi_bindings.rs` (included by `src/backend/cuda/abi.rs`), with bindgen's
//! compile-time size, alignment and offset assertions. libclang is loaded at build time when it
//! can be (`LIBCLANG_PATH`, or the usual system places; `scripts/install-libclang` puts the pinned
//! wheel in `.libclang/`); where it cannot, the checked-in copy `src/backend/cuda/abi_bindings.rs`
//! is used instead, with a warning, provided it was generated from this very `abi.h` (its header
//! records a hash); otherwise the build fails and says to run `scripts/regen-abi`. A test checks
//! that the checked-in copy equals the fresh output. `GKD_REQUIRE_LIBCLANG=1` (CI sets it) makes a
//! missing libclang an error.

use std::collections::BTreeSet;
use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use bindgen::{Formatter, MacroTypeVariation, RustEdition, RustTarget};

const SASS_TARGETS: [&str; 4] = ["80", "86", "89", "90"];
const PTX_TARGET: &str = "80";
/// bindgen's output for kernels/abi.h, checked in for machines without libclang.
const ABI_BINDINGS: &str = "src/backend/cuda/abi_bindings.rs";

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let kdir = root.join("kernels");
    println!("cargo:rerun-if-changed=kernels");
    for var in ["NVCC", "CUDA_HOME", "PATH", "GKD_REQUIRE_NVCC"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    // Only an existing file: cargo treats a missing one as changed, and would rebuild every time.
    let local_nvcc = root.join(".cuda/nvidia/cu13/bin/nvcc");
    if local_nvcc.is_file() {
        println!("cargo:rerun-if-changed={}", local_nvcc.display());
    }

    abi_bindings(&root, &out);

    let mut sources: Vec<PathBuf> = fs::read_dir(&kdir)
        .expect("kernels/ is missing")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    sources.sort();

    let nvcc = find_nvcc(&root);
    let require = env::var("GKD_REQUIRE_NVCC").is_ok_and(|v| !v.is_empty() && v != "0");
    let version = match &nvcc {
        Some(n) => match nvcc_version(n) {
            Ok(v) => Some(v),
            Err(e) if require => panic!("{e}"),
            Err(e) => {
                println!("cargo:warning={e}; kernels will be compiled at run time by NVRTC");
                None
            }
        },
        None if require => panic!(
            "GKD_REQUIRE_NVCC is set but no nvcc was found (NVCC, CUDA_HOME, PATH, .cuda/): \
             run scripts/install-cuda-compiler"
        ),
        None => {
            println!(
                "cargo:warning=no nvcc found (NVCC, CUDA_HOME, PATH, .cuda/): kernels are embedded as \
                 source and compiled at run time by NVRTC; run scripts/install-cuda-compiler to \
                 compile them now"
            );
            None
        }
    };
    let nvcc = nvcc.filter(|_| version.is_some());

    // Inline local includes and compile every file, in parallel.
    let results: Vec<(String, PathBuf, Option<PathBuf>, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = sources
            .iter()
            .map(|src| {
                let (out, kdir, nvcc) = (&out, &kdir, &nvcc);
                s.spawn(move || {
                    let name = src.file_stem().unwrap().to_str().unwrap().to_string();
                    let flat = inline_includes(src, kdir, &mut BTreeSet::new());
                    let flat_path = out.join(format!("{name}.flat.cu"));
                    fs::write(&flat_path, flat).unwrap();
                    let (fatbin, report) = match nvcc {
                        Some(n) => {
                            let (f, r) = compile_fatbin(n, src, kdir, out, &name);
                            (Some(f), r)
                        }
                        None => (None, String::new()),
                    };
                    (name, flat_path, fatbin, report)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    let mut table = String::new();
    let mut report = String::new();
    writeln!(table, "/// Compiler that built the fatbins, or None (NVRTC at run time).").unwrap();
    writeln!(table, "pub const NVCC_VERSION: Option<&str> = {:?};", version).unwrap();
    let targets: Vec<String> = SASS_TARGETS.iter().map(|t| format!("sm_{t}")).collect();
    writeln!(table, "pub const SASS_TARGETS: &[&str] = &{:?};", targets).unwrap();
    writeln!(table, "pub const PTX_TARGET: &str = \"compute_{PTX_TARGET}\";").unwrap();
    writeln!(table, "pub static MODULES: &[EmbeddedModule] = &[").unwrap();
    for (name, flat, fatbin, rep) in &results {
        let fb = match fatbin {
            Some(p) => format!("Some(include_bytes!({:?}))", p.display().to_string()),
            None => "None".into(),
        };
        writeln!(
            table,
            "    EmbeddedModule {{ name: {name:?}, source: include_str!({:?}), fatbin: {fb} }},",
            flat.display().to_string()
        )
        .unwrap();
        report.push_str(rep);
    }
    writeln!(table, "];").unwrap();
    fs::write(out.join("kernels.rs"), table).unwrap();
    fs::write(out.join("kernel-report.txt"), report).unwrap();
}

/// Writes `$OUT_DIR/abi_bindings.rs`: bindgen's output for `kernels/abi.h` where libclang loads,
/// else the checked-in copy. Tells the crate which through `GKD_ABI_BINDINGS` ("bindgen", or
/// "checked-in copy (why)"), for the test that compares the two.
fn abi_bindings(root: &Path, out: &Path) {
    println!("cargo:rerun-if-changed={ABI_BINDINGS}");
    for var in ["LIBCLANG_PATH", "GKD_REQUIRE_LIBCLANG"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let header_path = root.join("kernels/abi.h");
    let header = fs::read(&header_path).expect("kernels/abi.h is missing");
    let (text, source) = match clang_sys::load() {
        Ok(()) => (generate_abi_bindings(&header_path, &header), "bindgen".to_string()),
        Err(e) => {
            let why = format!("libclang cannot be loaded ({})", e.trim_end_matches('.'));
            if env::var("GKD_REQUIRE_LIBCLANG").is_ok_and(|v| !v.is_empty() && v != "0") {
                panic!("GKD_REQUIRE_LIBCLANG is set but {why}: run scripts/install-libclang");
            }
            let checked_in =
                fs::read_to_string(root.join(ABI_BINDINGS)).unwrap_or_else(|e| panic!("{ABI_BINDINGS}: {e}"));
            if !checked_in.contains(&abi_header_stamp(&header)) {
                panic!(
                    "{ABI_BINDINGS} was generated from another kernels/abi.h, and bindgen cannot \
                     regenerate it here: {why}. Run scripts/regen-abi (it installs libclang) and \
                     commit the result"
                );
            }
            println!(
                "cargo:warning={why}: the kernel ABI structs come from the checked-in {ABI_BINDINGS} \
                 (generated from this kernels/abi.h); scripts/install-libclang gets libclang"
            );
            (checked_in, format!("checked-in copy: {why}"))
        }
    };
    fs::write(out.join("abi_bindings.rs"), text).unwrap();
    println!("cargo:rustc-env=GKD_ABI_BINDINGS={}", source.replace(['\n', '\r'], " "));
}

/// bindgen's output for abi.h, the same text on every machine and libclang version: no paths, no
/// versions, formatted in-process, for the target the crate supports (Rust 1.85, edition 2021).
fn generate_abi_bindings(path: &Path, header: &[u8]) -> String {
    let bindings = bindgen::Builder::default()
        .header(path.to_str().expect("non-UTF-8 path to kernels/abi.h"))
        .allowlist_type("gkd_.*")
        .allowlist_var("GKD_.*")
        // The kernels take these as `int`.
        .default_macro_constant_type(MacroTypeVariation::Signed)
        .derive_copy(true)
        .derive_debug(true)
        .derive_default(true)
        .layout_tests(true)
        .use_core()
        .generate_comments(false)
        .detect_include_paths(false)
        .disable_header_comment()
        .rust_target(RustTarget::stable(85, 0).unwrap())
        .rust_edition(RustEdition::Edition2021)
        .formatter(Formatter::Prettyplease)
        .generate()
        .unwrap_or_else(|e| panic!("bindgen failed on kernels/abi.h: {e}"));
    format!(
        "// @generated by build.rs (bindgen) from kernels/abi.h: do not edit.\n\
         // The crate compiles this copy only where libclang cannot be loaded, and bindgen's output\n\
         // otherwise; the test backend::cuda::abi::tests::checked_in_bindings_match_bindgen checks that\n\
         // the two agree. Regenerate with scripts/regen-abi.\n\
         {}\n\n{bindings}",
        abi_header_stamp(header)
    )
}

/// The line that ties the checked-in bindings to the header they were generated from.
fn abi_header_stamp(header: &[u8]) -> String {
    // FNV-1a, 64 bits: enough to notice an edit, no dependency.
    let hash = header
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    format!("// kernels/abi.h FNV-1a 64: {hash:016x}")
}

fn find_nvcc(root: &Path) -> Option<PathBuf> {
    if let Ok(p) = env::var("NVCC") {
        return (p != "none").then(|| PathBuf::from(p));
    }
    if let Ok(home) = env::var("CUDA_HOME") {
        let p = Path::new(&home).join("bin/nvcc");
        if p.is_file() {
            return Some(p);
        }
    }
    if let Some(path) = env::var_os("PATH") {
        for dir in env::split_paths(&path) {
            let p = dir.join("nvcc");
            if p.is_file() {
                return Some(p);
            }
        }
    }
    let local = root.join(".cuda/nvidia/cu13/bin/nvcc");
    local.is_file().then_some(local)
}

fn nvcc_version(nvcc: &Path) -> Result<String, String> {
    let out = Command::new(nvcc)
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", nvcc.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "Cuda compilation tools, release 13.0, V13.0.88"
    text.lines()
        .find_map(|l| l.split(", V").nth(1).map(|v| v.trim().to_string()))
        .ok_or_else(|| format!("{} --version printed no version: {text}", nvcc.display()))
}

/// The file's text with each `#include "local.h"` replaced by that file's (inlined) text, once.
fn inline_includes(path: &Path, kdir: &Path, seen: &mut BTreeSet<PathBuf>) -> String {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = String::new();
    for line in text.lines() {
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix("#include \"") {
            let inc = kdir.join(rest.trim_end_matches('"'));
            if seen.insert(inc.clone()) {
                out.push_str(&inline_includes(&inc, kdir, seen));
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn compile_fatbin(nvcc: &Path, src: &Path, kdir: &Path, out: &Path, name: &str) -> (PathBuf, String) {
    let fatbin = out.join(format!("{name}.fatbin"));
    let mut cmd = Command::new(nvcc);
    cmd.arg("-fatbin")
        .arg("-O3")
        .arg("-std=c++17")
        .arg("-lineinfo")
        // One thread per -gencode target: halves the build of the largest module on 2 cores.
        .arg("--threads=0")
        .args(["-Werror", "all-warnings"])
        .arg("-Xptxas=-v,-warn-spills,-warn-lmem-usage")
        .arg("-I")
        .arg(kdir);
    for t in SASS_TARGETS {
        cmd.arg(format!("-gencode=arch=compute_{t},code=sm_{t}"));
    }
    cmd.arg(format!("-gencode=arch=compute_{PTX_TARGET},code=compute_{PTX_TARGET}"));
    cmd.arg("-o").arg(&fatbin).arg(src);
    let res = cmd.output().unwrap_or_else(|e| panic!("cannot run {}: {e}", nvcc.display()));
    let log = format!("{}{}", String::from_utf8_lossy(&res.stdout), String::from_utf8_lossy(&res.stderr));
    if !res.status.success() {
        panic!("nvcc failed on {}:\n{log}", src.display());
    }
    (fatbin, format!("== {name}.cu\n{log}"))
}
