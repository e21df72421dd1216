//! Cross-entropy with a weight per row on CUDA (RL's policy-gradient term, kernels/cross_entropy.cu
//! `row_weight`), bf16, at N × V = 8192 × 151936 (Qwen2.5's vocabulary), gradient in place (as
//! the fused head runs it): against its memory floor (read the logits once, write the gradient
//! once, at the copy bandwidth measured in this run) and against the unweighted kernel in the
//! same run (the weight is one f32 load per row: the two should time alike).
//!
//! After criterion's numbers, the ratios are printed. Without a GPU: the CPU reference at a small
//! size.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gkd::backend::cpu::cross_entropy_weighted_fwd_bwd as cpu_weighted;
use gkd::backend::cuda::bandwidth::{measure_copy_bandwidth, time_iters, time_ms};
use gkd::backend::cuda::cross_entropy::{cross_entropy_weighted_fwd_bwd, CePath, CrossEntropyLaunch};
use gkd::backend::cuda::divergence::StudentGrad;
use gkd::backend::cuda::{self, CudaDevice};
use gkd::bench::divergence::random_values;
use half::bf16;

const ROWS: usize = 8192;
const VOCAB: usize = 151936;

fn bench(c: &mut Criterion) {
    let weights_of = |n: usize| -> Vec<f32> { (0..n).map(|r| (r % 7) as f32 * 0.5 - 1.5).collect() };
    let targets_of = |n: usize, v: usize| -> Vec<u32> { (0..n).map(|r| (r * 7919 % v) as u32).collect() };
    if cuda::probe().usable_devices() == 0 {
        let (n, v) = (64, 32000);
        let (z, t, w) = (random_values(n * v, 1, 4.0), targets_of(n, v), weights_of(n));
        let mut g = c.benchmark_group("weighted_cross_entropy_cpu");
        g.throughput(Throughput::Bytes((2 * n * v * 4) as u64));
        g.bench_function("reference_f32_64x32000", |b| {
            b.iter(|| cpu_weighted(&z, &t, Some(&w), v, 1.0, true))
        });
        g.finish();
        eprintln!("weighted_cross_entropy: no GPU, only the CPU reference was timed");
        return;
    }
    let dev = CudaDevice::get(0).unwrap();
    let st = dev.stream();
    let bw = measure_copy_bandwidth(&dev, 1 << 31, 10).unwrap();
    let z: Vec<bf16> = random_values(ROWS * VOCAB, 7, 4.0).into_iter().map(bf16::from_f32).collect();
    let mut logits = st.clone_htod(&z).unwrap();
    drop(z);
    let targets = st.clone_htod(&targets_of(ROWS, VOCAB)).unwrap();
    let weights = st.clone_htod(&weights_of(ROWS)).unwrap();
    let mut row_loss = st.alloc_zeros::<f32>(ROWS).unwrap();
    let p = CrossEntropyLaunch {
        rows: ROWS,
        vocab: VOCAB,
        scale: 1.0 / ROWS as f32,
        path: CePath::Auto,
        scalar: false,
    };
    let floor_bytes = 2 * ROWS * VOCAB * std::mem::size_of::<bf16>();
    let mut run = |weighted: bool| {
        let w = weights.slice(..);
        cross_entropy_weighted_fwd_bwd(
            &dev,
            &p,
            StudentGrad::InPlace(logits.slice_mut(..)),
            &targets.slice(..),
            weighted.then_some(&w),
            &mut row_loss.slice_mut(..),
        )
    };
    let mut g = c.benchmark_group(format!("weighted_cross_entropy_{ROWS}x{VOCAB}"));
    g.throughput(Throughput::Bytes(floor_bytes as u64));
    for (name, weighted) in [("weighted_in_place", true), ("unweighted_in_place", false)] {
        g.bench_function(name, |b| {
            b.iter_custom(|i| {
                time_iters(&dev, i, || {
                    run(weighted).unwrap();
                })
            })
        });
    }
    g.finish();
    let floor = floor_bytes as f64 / bw * 1e3;
    let mut kernel = "";
    let weighted = time_ms(&dev, 20, || run(true).map(|k| kernel = k)).unwrap();
    let plain = time_ms(&dev, 20, || run(false).map(|_| ())).unwrap();
    eprintln!("copy bandwidth {:.2} TB/s", bw / 1e12);
    eprintln!(
        "{ROWS}x{VOCAB} weighted cross_entropy in place: {weighted:.3} ms = {:.2}x the floor ({floor:.3} ms, {kernel}); unweighted {plain:.3} ms ({:.3}x of it)",
        weighted / floor,
        weighted / plain
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(std::time::Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
