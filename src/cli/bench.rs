//! `gkd bench divergence`: the fused divergence kernel against the memory floor and the unfused
//! baseline, and the fused lm_head + divergence against its matmuls alone and the unfused path,
//! all measured in one run (CUDA events, median). On the CPU: the reference at a small size.
//! `gkd bench train`: one SFT step of a model shape (`gkd::bench::train`). `gkd bench generate`:
//! batched sampling (`gkd::bench::generate`). `gkd bench distill`: one on-policy GKD step
//! (`gkd::bench::distill`).

use anyhow::{bail, Context, Result};
use gkd::autograd::Tape;
use gkd::backend::cuda::bandwidth::{measure_copy_bandwidth, time_ms};
use gkd::backend::cuda::divergence::{set_staged_tuning, KernelPath, StagedTuning};
use gkd::backend::cuda::linear_divergence::LinearDivergence;
use gkd::backend::cuda::{self, CudaDevice};
use gkd::bench::distill::DistillBench;
use gkd::bench::divergence::{random_values, DivergenceCase, LinearCase, LinearVariant};
use gkd::bench::generate::GenerateBench;
use gkd::bench::train::{TrainBench, TrainShape};
use gkd::distill::Divergence;
use gkd::tensor::{Device, DeviceRequest};
use gkd::Tensor;
use serde_json::{json, Value};
use std::time::Instant;

#[derive(clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: BenchWhat,
}

#[derive(clap::Subcommand)]
enum BenchWhat {
    /// Fused softmax-and-divergence and fused lm_head + divergence vs their baselines.
    Divergence(DivergenceArgs),
    /// One SFT training step of a model shape (random-init weights): tokens/s, MFU, GEMM share,
    /// peak memory.
    Train(TrainArgs),
    /// Batched sampling from a model shape (random-init weights): new tokens/s, time to first
    /// token, the decode step against its memory floor.
    Generate(GenerateArgs),
    /// One on-policy GKD step (student sampling, teacher forward, student forward and backward,
    /// fused output head + JSD, AdamW) of model shapes with random-init weights: tokens/s, the
    /// time of each phase, peak memory.
    Distill(DistillArgs),
}

#[derive(clap::Args)]
struct DistillArgs {
    /// qwen2.5-0.5b, qwen2.5-1.5b, gpt2-124m or tiny.
    #[arg(long, default_value = "qwen2.5-0.5b")]
    student_shape: String,
    #[arg(long, default_value = "qwen2.5-1.5b")]
    teacher_shape: String,
    /// Prompts per step.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    #[arg(long, default_value_t = 128)]
    prompt: usize,
    /// Sampled tokens per prompt.
    #[arg(long, default_value_t = 128)]
    new: usize,
    #[command(flatten)]
    compute: super::compute::ComputeArgs,
    /// Untimed steps first.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Timed steps (median reported).
    #[arg(long, default_value_t = 3)]
    steps: usize,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(clap::Args)]
struct GenerateArgs {
    /// qwen2.5-0.5b, gpt2-124m, or tiny (a two-layer model for the CPU).
    #[arg(long, default_value = "qwen2.5-0.5b")]
    shape: String,
    /// Comma-separated batch sizes.
    #[arg(long, default_value = "8,64")]
    batch: String,
    /// Prompt tokens per sequence.
    #[arg(long, default_value_t = 128)]
    prompt: usize,
    /// New tokens per sequence.
    #[arg(long, default_value_t = 128)]
    new: usize,
    #[command(flatten)]
    compute: super::compute::ComputeArgs,
    /// Replay the decode step as a CUDA graph (on or off).
    #[arg(long, default_value = "on")]
    graphs: String,
    /// Decode steps between two looks of the host at the device's state.
    #[arg(long, default_value_t = 8)]
    sync_every: usize,
    /// Timed calls per batch size (median reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(clap::Args)]
struct TrainArgs {
    /// qwen2.5-0.5b, gpt2-124m, or tiny (a two-layer model for the CPU).
    #[arg(long, default_value = "qwen2.5-0.5b")]
    shape: String,
    #[arg(long, default_value_t = 8)]
    batch: usize,
    #[arg(long, default_value_t = 1024)]
    seq: usize,
    #[command(flatten)]
    compute: super::compute::ComputeArgs,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Timed steps (median reported).
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Activations recomputed in the backward: none, attention or layers.
    #[arg(long, default_value = "none")]
    recompute: String,
    /// The dense bf16 peak MFU divides by, TFLOP/s (H100 and H200 SXM: 989).
    #[arg(long, default_value_t = 989.0)]
    peak_tflops: f64,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(clap::Args)]
struct DivergenceArgs {
    #[arg(long, default_value = "auto")]
    device: DeviceRequest,
    /// Comma-separated N×V sizes (tokens × vocabulary).
    #[arg(long, default_value = "8192x32000,4096x151936")]
    sizes: String,
    /// jsd (with --beta), fkl, rkl, tvd, skew-fkl, skew-rkl (with --alpha).
    #[arg(long, default_value = "jsd")]
    divergence: String,
    #[arg(long, default_value_t = 0.5)]
    beta: f64,
    #[arg(long, default_value_t = 0.1)]
    alpha: f64,
    /// Student and teacher hidden sizes of the lm_head benchmark (Qwen2.5-0.5B / 1.5B).
    #[arg(long, default_value_t = 896)]
    student_hidden: usize,
    #[arg(long, default_value_t = 1536)]
    teacher_hidden: usize,
    /// Timed repetitions per variant (median reported).
    #[arg(long, default_value_t = 10)]
    reps: usize,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

pub fn run(args: BenchArgs) -> Result<()> {
    match args.what {
        BenchWhat::Divergence(a) => divergence(a),
        BenchWhat::Train(a) => train(a),
        BenchWhat::Generate(a) => generate(a),
        BenchWhat::Distill(a) => distill(a),
    }
}

fn distill(a: DistillArgs) -> Result<()> {
    let (student, teacher): (TrainShape, TrainShape) = (a.student_shape.parse()?, a.teacher_shape.parse()?);
    let c = a.compute.resolve()?;
    eprintln!(
        "gkd bench distill: student {} ← teacher {} on {} in {}, batch {} × ({} prompt + {} sampled) tokens, JSD(0.5), random-init weights",
        a.student_shape, a.teacher_shape, c.device, c.dtype, a.batch, a.prompt, a.new
    );
    let r = gkd::bench::distill::run(&DistillBench {
        student,
        teacher,
        names: (a.student_shape.clone(), a.teacher_shape.clone()),
        batch: a.batch,
        prompt: a.prompt,
        new: a.new,
        device: c.device,
        dtype: c.dtype,
        warmup: a.warmup,
        steps: a.steps,
    })?;
    let p = &r.phases;
    println!("| student ← teacher | batch × (prompt + new) | step s | tokens/s | sampling | teacher | student fwd | loss | backward | optimizer | peak memory |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} ← {} | {} × ({} + {}) | {:.3} | {:.0} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {} |",
        r.student,
        r.teacher,
        r.batch,
        r.prompt,
        r.new,
        r.step_s,
        r.tokens_per_s,
        p.sampling,
        p.teacher,
        p.student_forward,
        p.loss,
        p.backward,
        p.optimizer,
        r.peak_memory_gib.map(|g| format!("{g:.2} GiB")).unwrap_or_else(|| "—".into())
    );
    if let Some(bad) = r.losses.iter().find(|l| !l.is_finite()) {
        bail!("a step's loss was {bad}: the distillation step is broken on {}", r.device);
    }
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_string_pretty(&r)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn generate(a: GenerateArgs) -> Result<()> {
    let shape: TrainShape = a.shape.parse()?;
    let c = a.compute.resolve()?;
    let batches: Vec<usize> = a
        .batch
        .split(',')
        .map(|x| x.trim().parse::<usize>().with_context(|| format!("batch size `{x}` is not a number")))
        .collect::<Result<_>>()?;
    let cuda_graphs = match a.graphs.as_str() {
        "on" => true,
        "off" => false,
        g => bail!("--graphs takes on or off, not `{g}`"),
    };
    let bandwidth = match c.device {
        Device::Cuda(i) => Some(measure_copy_bandwidth(&*CudaDevice::get(i)?, 1 << 31, 10)?),
        Device::Cpu => None,
    };
    eprintln!(
        "gkd bench generate: {} on {} in {}, batch {}, {} prompt + {} new tokens, T = 1 (random-init weights, graphs {})",
        a.shape, c.device, c.dtype, a.batch, a.prompt, a.new, a.graphs
    );
    let r = gkd::bench::generate::run(&GenerateBench {
        shape,
        name: a.shape.clone(),
        batches,
        prompt: a.prompt,
        new: a.new,
        device: c.device,
        dtype: c.dtype,
        cuda_graphs,
        sync_every: a.sync_every,
        reps: a.reps,
        bandwidth,
    })?;
    if let Some(bw) = r.copy_bandwidth_b_s {
        println!("copy bandwidth {:.2} TB/s (read + write, 2 GiB)", bw / 1e12);
    }
    println!("| shape | batch | new tokens/s | time to first token | decode step | floor step | of floor | first-call warm-up | eager step: cuBLAS / all |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for row in &r.rows {
        let opt = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map(f).unwrap_or_else(|| "—".into());
        println!(
            "| {} | {} | {:.0} | {:.1} ms | {:.3} ms | {} | {} | {:.2} s | {} |",
            r.shape,
            row.batch,
            row.new_tokens_per_s,
            row.ttft_ms,
            row.step_ms,
            opt(row.floor_step_ms, &|f| format!("{f:.3} ms")),
            opt(row.of_floor, &|x| format!("{:.0}%", 100.0 * x)),
            row.warmup_s,
            match (row.gemm_ms_per_step, row.gemms_per_step, row.eager_step_ms) {
                (Some(g), Some(c), Some(e)) => format!("{g:.3} ms ({c:.0} products) / {e:.3} ms"),
                _ => "—".into(),
            }
        );
    }
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_string_pretty(&r)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn train(a: TrainArgs) -> Result<()> {
    let shape: TrainShape = a.shape.parse()?;
    let c = a.compute.resolve()?;
    eprintln!(
        "gkd bench train: {} at {} × {} on {} in {} (random-init weights, {} warm-up + {} timed steps)",
        a.shape, a.batch, a.seq, c.device, c.dtype, a.warmup, a.steps
    );
    let r = gkd::bench::train::run(&TrainBench {
        shape,
        name: a.shape.clone(),
        batch: a.batch,
        seq: a.seq,
        device: c.device,
        dtype: c.dtype,
        warmup: a.warmup,
        steps: a.steps,
        peak_tflops: a.peak_tflops,
        recompute: a.recompute.parse()?,
    })?;
    let opt = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map(f).unwrap_or_else(|| "—".into());
    println!(
        "| shape | params | batch × seq | step ms | tokens/s | TFLOP/s | MFU | GEMM share | peak memory |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {:.1} M | {} × {} | {:.1} | {:.0} | {:.1} | {:.1}% of {:.0} | {} | {} |",
        r.shape,
        r.params as f64 / 1e6,
        r.batch,
        r.seq,
        r.step_ms,
        r.tokens_per_s,
        r.tflops,
        100.0 * r.mfu,
        r.peak_tflops,
        opt(r.gemm_share, &|s| format!("{:.0}% ({} products)", 100.0 * s, r.gemm_calls.unwrap_or(0))),
        opt(r.peak_memory_gib, &|g| format!("{g:.2} GiB")),
    );
    if let Some(bad) = r.losses.iter().find(|l| !l.is_finite()) {
        bail!("a step's loss was {bad}: the training step is broken on {}", r.device);
    }
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_string_pretty(&r)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn parse_sizes(s: &str) -> Result<Vec<(usize, usize)>> {
    s.split(',')
        .map(|p| {
            let (n, v) =
                p.trim().split_once(['x', 'X', '×']).with_context(|| format!("size `{p}` is not NxV"))?;
            let (n, v) = (n.trim().parse::<usize>()?, v.trim().parse::<usize>()?);
            if n == 0 || v == 0 {
                bail!("size `{p}`: N and V must be positive");
            }
            Ok((n, v))
        })
        .collect()
}

fn divergence(a: DivergenceArgs) -> Result<()> {
    let div = Divergence::from_cli(&a.divergence, a.beta, a.alpha)?;
    let sizes = parse_sizes(&a.sizes)?;
    let report = match a.device.resolve() {
        Device::Cpu => cpu_reference(div, a.reps)?,
        Device::Cuda(i) => cuda_bench(i, div, &sizes, &a)?,
    };
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(bad) = report["mismatches"].as_array().filter(|m| !m.is_empty()) {
        let lines: Vec<&str> = bad.iter().filter_map(|m| m.as_str()).collect();
        bail!(
            "{} fused variant(s) disagree with the unfused baseline (Δ loss > {MAX_LOSS_DIFF:.0e} or \
             Δ grad > {MAX_GRAD_DIFF:.0e}): a kernel bug; run `cargo test --release --test cuda_divergence`:\n  {}",
            lines.len(),
            lines.join("\n  ")
        );
    }
    Ok(())
}

/// Largest relative row-loss difference a fused variant may show against the unfused baseline.
const MAX_LOSS_DIFF: f64 = 1e-3;
/// Largest gradient difference ÷ the largest |gradient| (bf16 on both sides: one ulp is 2^-8).
const MAX_GRAD_DIFF: f64 = 1e-2;

fn cpu_reference(div: Divergence, reps: usize) -> Result<Value> {
    let (n, v) = (256, 32000);
    println!("gkd bench divergence on the CPU: the f32 reference at {n} × {v}, {div} (no GPU in use)");
    let s = Tensor::from_vec(random_values(n * v, 1, 4.0), [n, v])?;
    let t = Tensor::from_vec(random_values(n * v, 2, 4.0), [n, v])?;
    let mut times = Vec::new();
    for _ in 0..reps.max(1) {
        let t0 = Instant::now();
        let mut tape = Tape::new();
        let sv = tape.leaf(s.clone(), true);
        let out = tape.divergence(&sv, &t, None, div, 1.0, 1.0 / n as f64)?;
        std::hint::black_box(out);
        times.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    let ms = times[times.len() / 2];
    let gbs = 3.0 * (n * v * 4) as f64 / (ms * 1e-3) / 1e9;
    println!("| N × V | kernel | ms | GB/s |\n|---|---|---|---|\n| {n} × {v} | cpu reference f32 | {ms:.2} | {gbs:.1} |");
    Ok(json!({"device": "cpu", "threads": rayon::current_num_threads(), "divergence": div.to_string(),
           "rows": [{"N": n, "V": v, "case": "cpu_reference_f32", "ms": ms, "GB_s": gbs}]}))
}

fn cuda_bench(
    ordinal: usize,
    div: Divergence,
    sizes: &[(usize, usize)],
    a: &DivergenceArgs,
) -> Result<Value> {
    let dev = CudaDevice::get(ordinal)?;
    let gpu = cuda::probe()
        .gpus
        .get(ordinal)
        .and_then(|g| g.as_ref().ok())
        .map(|g| g.name.clone())
        .unwrap_or_default();
    let bw = measure_copy_bandwidth(&dev, 1 << 31, 10)?;
    println!("gkd bench divergence on {gpu} (cuda:{ordinal}), {div}, bf16; copy bandwidth {:.2} TB/s (read + write, 2 GiB)", bw / 1e12);
    let mut rows = Vec::new();
    let mut mismatches = Vec::new();
    println!(
        "\nEvery fused row is checked against the unfused baseline: the largest relative row-loss \
         difference, and the largest gradient difference (first and last 8 rows) ÷ the largest |gradient|.\n"
    );
    println!(
        "| N × V | variant | ms | GB/s | × floor | speed-up vs unfused | Δ loss, Δ grad |\n|---|---|---|---|---|---|---|"
    );
    for &(n, v) in sizes {
        let mut case = DivergenceCase::new(&dev, n, v, div)?;
        let floor_bytes = case.floor_bytes() as f64;
        let floor_ms = floor_bytes / bw * 1e3;
        case.poison(&dev)?;
        let unfused_ms = time_ms(&dev, a.reps, || case.unfused(&dev))?;
        let reference = case.outputs(&dev)?;
        let gbs = |ms: f64| floor_bytes / (ms * 1e-3) / 1e9;
        println!("| {n} × {v} | floor: 3·N·V·2 bytes at the copy bandwidth | {floor_ms:.3} | | 1.00 | |");
        // Auto with each staged-kernel switch off too, so one run compares them.
        let on = StagedTuning::default();
        let variants = [
            (KernelPath::Auto, on),
            (KernelPath::Auto, StagedTuning { persistent: false, ..on }),
            (KernelPath::Auto, StagedTuning { l2_prefetch: false, ..on }),
        ];
        let paths = [
            KernelPath::Rows,
            KernelPath::Staged { ctas: 2 },
            KernelPath::Staged { ctas: 3 },
            KernelPath::Staged { ctas: 4 },
            KernelPath::Staged { ctas: 8 },
            KernelPath::Staged { ctas: 12 },
            KernelPath::Staged { ctas: 14 },
            KernelPath::Staged { ctas: 16 },
        ];
        for (path, tuning) in variants.into_iter().chain(paths.map(|p| (p, on))) {
            let mut plan = String::new();
            // A variant that writes nothing leaves NaN behind: a mismatch, not Δ = 0.
            case.poison(&dev)?;
            set_staged_tuning(tuning);
            let ms = time_ms(&dev, a.reps, || case.fused(&dev, path).map(|p| plan = p));
            set_staged_tuning(on);
            let ms = match ms {
                Ok(ms) => ms,
                Err(e) if path != KernelPath::Auto => {
                    // A forced path that cannot run at this size (shared memory, cluster limits).
                    println!("| {n} × {v} | fused {path:?}: not runnable here ({e}) | | | | |");
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let (d_loss, d_grad) = case.outputs(&dev)?.max_diff(&reference);
            // bf16 outputs on both sides: a gradient entry may differ by an ulp (2^-8 relative).
            let ok = d_loss <= MAX_LOSS_DIFF && d_grad <= MAX_GRAD_DIFF;
            if !ok {
                mismatches.push(format!("{n} × {v} {plan}: Δ loss {d_loss:.1e}, Δ grad {d_grad:.1e}"));
            }
            println!(
                "| {n} × {v} | fused {plan} | {ms:.3} | {:.0} | {:.2} | {:.1}× | {d_loss:.0e}, {d_grad:.0e}{} |",
                gbs(ms),
                ms / floor_ms,
                unfused_ms / ms,
                if ok { "" } else { " MISMATCH" }
            );
            rows.push(json!({"N": n, "V": v, "case": format!("fused {plan}"), "ms": ms, "GB_s": gbs(ms),
                "x_floor": ms / floor_ms, "speedup_vs_unfused": unfused_ms / ms, "floor_ms": floor_ms,
                "loss_rel_diff_vs_unfused": d_loss, "grad_diff_vs_unfused": d_grad}));
        }
        println!("| {n} × {v} | unfused (5 kernels, fp32 intermediates) | {unfused_ms:.3} | {:.0} | {:.2} | 1.0× | reference |", gbs(unfused_ms), unfused_ms / floor_ms);
        rows.push(json!({"N": n, "V": v, "case": "unfused", "ms": unfused_ms, "GB_s": gbs(unfused_ms),
            "x_floor": unfused_ms / floor_ms, "floor_ms": floor_ms}));
    }

    println!(
        "\nlm_head + divergence (student hidden {}, teacher hidden {}): loss, d(student hidden), d(student head)\n",
        a.student_hidden, a.teacher_hidden
    );
    println!("| N × V | variant | ms | × its matmuls | extra device memory |\n|---|---|---|---|---|");
    for &(n, v) in sizes {
        let params = LinearDivergence {
            rows: n,
            student_dim: a.student_hidden,
            teacher_dim: a.teacher_hidden,
            vocab: v,
            divergence: div,
            temperature: 1.0,
            scale: 1.0 / n as f32,
            chunk_rows: 0,
            path: KernelPath::Auto,
        };
        let mut case = LinearCase::new(&dev, params)?;
        let reps = a.reps.div_ceil(2).max(3);
        let mut outs = Vec::new();
        let mut d_hidden = Vec::new();
        for variant in [LinearVariant::MatmulsOnly, LinearVariant::Fused, LinearVariant::Unfused] {
            let mut out = None;
            case.reset(&dev)?;
            let ms = time_ms(&dev, reps, || case.run(&dev, variant).map(|o| out = Some(o)))?;
            outs.push((variant, ms, out.expect("ran at least once")));
            d_hidden.push(case.d_hidden(&dev)?);
        }
        // The fused path against the unfused one: d(student hidden), relative to its largest entry.
        let (fused, unfused) = (&d_hidden[1], &d_hidden[2]);
        let scale = unfused.iter().fold(1e-30f64, |m, &y| m.max((y as f64).abs()));
        let d_grad = fused
            .iter()
            .zip(unfused)
            .map(|(&x, &y)| (x as f64 - y as f64).abs() / scale)
            .fold(0.0, |m: f64, d| if d.is_nan() || m.is_nan() { f64::NAN } else { m.max(d) });
        let d_loss = (outs[1].2.loss - outs[2].2.loss).abs() / outs[2].2.loss.abs().max(1e-30);
        if !(d_loss <= MAX_LOSS_DIFF && d_grad <= MAX_GRAD_DIFF) || d_hidden[0].iter().any(|x| x.is_nan()) {
            mismatches.push(format!(
                "{n} × {v} lm_head: fused vs unfused Δ loss {d_loss:.1e}, Δ d(hidden) {d_grad:.1e}; matmuls-only wrote every d(hidden): {}",
                !d_hidden[0].iter().any(|x| x.is_nan())
            ));
        }
        let mm_ms = outs[0].1;
        let unfused_bytes = outs[2].2.scratch_bytes as f64;
        for (variant, ms, out) in &outs {
            let name = match variant {
                LinearVariant::Fused => format!("fused, {}-row chunks", out.chunk_rows),
                LinearVariant::MatmulsOnly => format!("its matmuls alone, {}-row chunks", out.chunk_rows),
                LinearVariant::Unfused => "unfused: full logits + unfused divergence".to_string(),
            };
            let mem = out.scratch_bytes as f64;
            println!(
                "| {n} × {v} | {name} | {ms:.3} | {:.2} | {:.3} GiB ({:.1}% of unfused) |",
                ms / mm_ms,
                mem / (1u64 << 30) as f64,
                100.0 * mem / unfused_bytes
            );
            rows.push(
                json!({"N": n, "V": v, "case": format!("lm_head {name}"), "ms": ms, "x_matmuls": ms / mm_ms,
                "extra_bytes": out.scratch_bytes, "extra_vs_unfused": mem / unfused_bytes, "loss": out.loss}),
            );
        }
    }
    Ok(
        json!({"device": gpu, "copy_bandwidth_B_s": bw, "divergence": div.to_string(), "dtype": "bf16", "rows": rows,
               "mismatches": mismatches}),
    )
}
