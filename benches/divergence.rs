//! Fused softmax-and-divergence vs the unfused baseline, and fused lm_head + divergence vs its
//! matmuls alone, at N × V = 8192 × 32000 and 4096 × 151936, bf16, JSD(0.5); throughput in bytes
//! of the memory floor (read both logit tensors, write the gradient). After criterion's numbers,
//! the ratios measured in this same run are printed. Without a GPU: the CPU reference at a small
//! size. `gkd bench divergence` prints the same comparison as a table without criterion.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gkd::backend::cpu::divergence_fwd_bwd;
use gkd::backend::cuda::bandwidth::{measure_copy_bandwidth, time_iters, time_ms};
use gkd::backend::cuda::divergence::KernelPath;
use gkd::backend::cuda::linear_divergence::LinearDivergence;
use gkd::backend::cuda::{self, CudaDevice};
use gkd::backend::Divergence;
use gkd::bench::divergence::{random_values, DivergenceCase, LinearCase, LinearVariant};
use std::time::Duration;

const DIV: Divergence = Divergence::Jsd { beta: 0.5 };

fn bench(c: &mut Criterion) {
    if cuda::probe().usable_devices() == 0 {
        let (n, v) = (64, 32000);
        let (s, t) = (random_values(n * v, 1, 4.0), random_values(n * v, 2, 4.0));
        let mut g = c.benchmark_group("divergence_cpu");
        g.throughput(Throughput::Bytes((3 * n * v * 4) as u64));
        g.bench_function("reference_f32_64x32000", |b| {
            b.iter(|| divergence_fwd_bwd(DIV, 1.0, &s, &t, v, None, 1.0, true).unwrap())
        });
        g.finish();
        eprintln!("divergence: no GPU, only the CPU reference was timed");
        return;
    }
    let dev = CudaDevice::get(0).unwrap();
    let bw = measure_copy_bandwidth(&dev, 1 << 31, 10).unwrap();
    let mut ratios = vec![format!("copy bandwidth {:.2} TB/s", bw / 1e12)];
    for (n, v) in [(8192usize, 32000usize), (4096, 151936)] {
        let mut case = DivergenceCase::new(&dev, n, v, DIV).unwrap();
        let mut g = c.benchmark_group(format!("divergence_{n}x{v}"));
        g.throughput(Throughput::Bytes(case.floor_bytes() as u64));
        g.bench_function("fused", |b| {
            b.iter_custom(|i| time_iters(&dev, i, || drop(case.fused(&dev, KernelPath::Auto).unwrap())))
        });
        g.bench_function("unfused", |b| {
            b.iter_custom(|i| time_iters(&dev, i, || case.unfused(&dev).unwrap()))
        });
        g.finish();
        let fused = time_ms(&dev, 20, || case.fused(&dev, KernelPath::Auto).map(drop)).unwrap();
        let unfused = time_ms(&dev, 10, || case.unfused(&dev)).unwrap();
        let floor = case.floor_bytes() as f64 / bw * 1e3;
        ratios.push(format!(
            "{n}x{v}: fused {fused:.3} ms = {:.2}x the floor ({floor:.3} ms); unfused {unfused:.3} ms; fused is {:.1}x faster",
            fused / floor,
            unfused / fused
        ));
        drop(case);

        let params = LinearDivergence {
            rows: n,
            student_dim: 896,
            teacher_dim: 1536,
            vocab: v,
            divergence: DIV,
            temperature: 1.0,
            scale: 1.0 / n as f32,
            chunk_rows: 0,
            path: KernelPath::Auto,
        };
        let mut lc = LinearCase::new(&dev, params).unwrap();
        let mut g = c.benchmark_group(format!("lm_head_divergence_{n}x{v}"));
        g.sample_size(10);
        for (name, variant) in [("fused", LinearVariant::Fused), ("matmuls_only", LinearVariant::MatmulsOnly)]
        {
            g.bench_function(name, |b| {
                b.iter_custom(|i| {
                    time_iters(&dev, i, || {
                        lc.run(&dev, variant).unwrap();
                    })
                })
            });
        }
        g.finish();
        let f = time_ms(&dev, 5, || lc.run(&dev, LinearVariant::Fused).map(drop)).unwrap();
        let m = time_ms(&dev, 5, || lc.run(&dev, LinearVariant::MatmulsOnly).map(drop)).unwrap();
        ratios.push(format!("{n}x{v} lm_head: fused {f:.3} ms = {:.2}x its matmuls ({m:.3} ms)", f / m));
    }
    eprintln!("\nratios measured in this run:\n  {}", ratios.join("\n  "));
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
