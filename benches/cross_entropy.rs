//! Cross-entropy on CUDA, bf16, at N × V = 8192 × 151936 (Qwen2.5's vocabulary):
//! - the kernel (gradient into its own buffer, in place, the loss alone) against its memory floor:
//!   read the logits once and write the gradient once, at the copy bandwidth measured in this run;
//! - the output head fused with cross-entropy (SFT; hidden 896, Qwen2.5-0.5B's) against its matmul
//!   floor (the same three chunk products alone) and the unfused path (the full logits, the
//!   kernel into a full gradient, the products over all rows).
//!
//! After criterion's numbers, the ratios measured in this same run are printed. Without a GPU:
//! the CPU reference at a small size.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gkd::backend::cpu::cross_entropy_fwd_bwd;
use gkd::backend::cuda::bandwidth::{measure_copy_bandwidth, time_iters, time_ms};
use gkd::backend::cuda::cross_entropy::CePath;
use gkd::backend::cuda::linear_divergence::LinearCrossEntropy;
use gkd::backend::cuda::{self, CudaDevice};
use gkd::bench::cross_entropy::{CeMode, CrossEntropyCase, LinearCeCase};
use gkd::bench::divergence::{random_values, LinearVariant};
use std::time::Duration;

const ROWS: usize = 8192;
const VOCAB: usize = 151936;
const HIDDEN: usize = 896;

fn bench(c: &mut Criterion) {
    if cuda::probe().usable_devices() == 0 {
        let (n, v) = (64, 32000);
        let z = random_values(n * v, 1, 4.0);
        let t: Vec<u32> = (0..n).map(|r| (r * 7919 % v) as u32).collect();
        let mut g = c.benchmark_group("cross_entropy_cpu");
        g.throughput(Throughput::Bytes((2 * n * v * 4) as u64));
        g.bench_function("reference_f32_64x32000", |b| {
            b.iter(|| cross_entropy_fwd_bwd(&z, &t, v, 1.0, true))
        });
        g.finish();
        eprintln!("cross_entropy: no GPU, only the CPU reference was timed");
        return;
    }
    let dev = CudaDevice::get(0).unwrap();
    let bw = measure_copy_bandwidth(&dev, 1 << 31, 10).unwrap();
    let mut ratios = vec![format!("copy bandwidth {:.2} TB/s", bw / 1e12)];

    let mut case = CrossEntropyCase::new(&dev, ROWS, VOCAB).unwrap();
    let modes = [("grad_into", CeMode::Into), ("in_place", CeMode::InPlace), ("loss_only", CeMode::LossOnly)];
    for (name, mode) in modes {
        let mut g = c.benchmark_group(format!("cross_entropy_{ROWS}x{VOCAB}"));
        g.throughput(Throughput::Bytes(case.floor_bytes(mode) as u64));
        g.bench_function(name, |b| {
            b.iter_custom(|i| {
                time_iters(&dev, i, || {
                    case.run(&dev, mode).unwrap();
                })
            })
        });
        g.finish();
    }
    for (name, mode) in modes {
        let mut kernel = "";
        let ms = time_ms(&dev, 20, || case.run(&dev, mode).map(|k| kernel = k)).unwrap();
        let floor = case.floor_bytes(mode) as f64 / bw * 1e3;
        ratios.push(format!(
            "{ROWS}x{VOCAB} cross_entropy {name}: {ms:.3} ms = {:.2}x the floor ({floor:.3} ms, {kernel})",
            ms / floor
        ));
    }
    drop(case);

    let params = LinearCrossEntropy {
        rows: ROWS,
        dim: HIDDEN,
        vocab: VOCAB,
        scale: 1.0 / ROWS as f32,
        chunk_rows: 0,
        path: CePath::Auto,
    };
    let mut lc = LinearCeCase::new(&dev, params).unwrap();
    let variants = [
        ("fused", LinearVariant::Fused),
        ("matmuls_only", LinearVariant::MatmulsOnly),
        ("unfused", LinearVariant::Unfused),
    ];
    let mut g = c.benchmark_group(format!("lm_head_cross_entropy_{ROWS}x{VOCAB}_h{HIDDEN}"));
    g.sample_size(10);
    for (name, variant) in variants {
        g.bench_function(name, |b| {
            b.iter_custom(|i| {
                time_iters(&dev, i, || {
                    lc.run(&dev, variant).unwrap();
                })
            })
        });
    }
    g.finish();
    let mut ms = Vec::new();
    for (_, variant) in variants {
        let mut out = None;
        lc.reset(&dev).unwrap();
        ms.push(time_ms(&dev, 5, || lc.run(&dev, variant).map(|o| out = Some(o))).unwrap());
        let d_hidden = lc.d_hidden(&dev).unwrap();
        assert!(d_hidden.iter().all(|x| x.is_finite()), "{variant:?} left d(hidden) unwritten");
        let out = out.expect("ran at least once");
        ratios.push(format!(
            "{ROWS}x{VOCAB} lm_head + cross-entropy {variant:?}: loss {:.4}, {}-row chunks, {:.2} GiB extra",
            out.loss,
            out.chunk_rows,
            out.scratch_bytes as f64 / (1u64 << 30) as f64
        ));
    }
    let (f, m, u) = (ms[0], ms[1], ms[2]);
    ratios.push(format!(
        "{ROWS}x{VOCAB} lm_head + cross-entropy: fused {f:.3} ms = {:.2}x its matmuls ({m:.3} ms); unfused {u:.3} ms = {:.2}x the fused",
        f / m,
        u / f
    ));
    eprintln!("\nratios measured in this run:\n  {}", ratios.join("\n  "));
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
