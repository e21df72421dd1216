//! `gkd doctor`: what this machine offers gkd. Exits 0 with or without a GPU.

use anyhow::Result;
use gkd::backend::cuda::{self, CudaDevice, MODULES};
use serde_json::json;

#[derive(clap::Args)]
pub struct DoctorArgs {
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

fn gib(bytes: usize) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

pub fn run(args: DoctorArgs) -> Result<()> {
    let threads = rayon::current_num_threads();
    let probe = cuda::probe();
    let modules: Vec<&str> = MODULES.iter().map(|m| m.name).collect();
    // On the first usable GPU, load every kernel module: proves the fatbin (or NVRTC) works here.
    let load_check: Option<Result<(), String>> = (probe.usable_devices() > 0).then(|| {
        let dev = CudaDevice::get(0).map_err(|e| e.to_string())?;
        for m in &modules {
            dev.module(m).map_err(|e| e.to_string())?;
        }
        Ok(())
    });
    let blas = probe.usable_devices() > 0 && unsafe { cudarc::cublas::sys::is_culib_present() };

    if args.json {
        let gpus: Vec<_> = probe
            .gpus
            .iter()
            .map(|g| match g {
                Ok(g) => json!({"ordinal": g.ordinal, "name": g.name,
                    "compute_capability": format!("{}.{}", g.compute_capability.0, g.compute_capability.1),
                    "memory_bytes": g.total_memory, "multiprocessors": g.multiprocessors}),
                Err(e) => json!({"error": e}),
            })
            .collect();
        let v = json!({
            "version": env!("CARGO_PKG_VERSION"),
            "cpu_threads": threads,
            "cuda_driver": match &probe.driver { Ok(v) => json!(format!("{}.{}", v / 1000, (v % 1000) / 10)), Err(e) => json!({"error": e}) },
            "gpus": gpus,
            "kernels": {
                "nvcc": cuda::compiled_by_nvcc(),
                "targets": cuda::kernel_targets(),
                "compiled_by": cuda::compiled_by(),
                "modules": modules,
                "load_check": load_check.as_ref().map(|r| match r { Ok(()) => json!("ok"), Err(e) => json!({"error": e}) }),
            },
            "cublas": blas,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }

    println!("gkd {} doctor", env!("CARGO_PKG_VERSION"));
    println!("  cpu          {threads} threads (rayon; set RAYON_NUM_THREADS to change)");
    match &probe.driver {
        Ok(v) => println!("  cuda driver  {}.{}", v / 1000, (v % 1000) / 10),
        Err(e) => println!("  cuda driver  not found: {e}"),
    }
    if probe.gpus.is_empty() {
        println!("  gpus         no GPU found: gkd runs on the CPU backend (--device auto picks it)");
    }
    for g in &probe.gpus {
        match g {
            Ok(g) => println!(
                "  gpu {}        {}, compute capability {}.{}, {:.1} GiB, {} SMs",
                g.ordinal,
                g.name,
                g.compute_capability.0,
                g.compute_capability.1,
                gib(g.total_memory),
                g.multiprocessors
            ),
            Err(e) => println!("  gpu          unusable: {e}"),
        }
    }
    println!("  kernels      {}", cuda::compiled_by());
    println!("  modules      {}", modules.join(", "));
    match load_check {
        Some(Ok(())) => println!("  kernel load  ok on cuda:0"),
        Some(Err(e)) => println!("  kernel load  FAILED on cuda:0: {e}"),
        None => {}
    }
    if probe.usable_devices() > 0 {
        println!(
            "  cublas       {}",
            if blas { "found" } else { "not found: set LD_LIBRARY_PATH=/usr/local/cuda/lib64" }
        );
    }
    Ok(())
}
