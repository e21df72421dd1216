//! Sampling one token per row (`Tensor::sample`, kernels/sampling.cu) at a decode step's shape:
//! N = 8 and 64 rows of V = 151,936 bf16 logits (Qwen2's vocabulary), on the plain path (T = 1),
//! top-k = 50 and top-p = 0.9. The op reads each logit once on the plain path, so its floor is
//! N·V·2 bytes at the copy bandwidth measured in this same run; after criterion's numbers each
//! case's time and ratio to that floor is printed (target for the plain path at N = 8: ≤ 10 µs).
//! The filtered paths make several passes over the row (radix select), so their ratio is larger
//! by design. Without a GPU, the CPU reference is timed at a small size.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gkd::backend::cuda::bandwidth::{measure_copy_bandwidth, time_iters, time_ms};
use gkd::backend::cuda::{self, CudaDevice};
use gkd::backend::ops::SampleSpec;
use gkd::{DType, Device, Tensor};
use std::time::Duration;

const VOCAB: usize = 151_936;

struct Inputs {
    logits: Tensor,
    seq: Tensor,
    pos: Tensor,
}

fn inputs(rows: usize, vocab: usize, dtype: DType, device: Device) -> Inputs {
    // Deterministic logits spread over about ±8, like a language model's.
    let z: Vec<f32> = (0..rows * vocab).map(|i| ((i * 7919 % 10007) as f32 / 10007.0 - 0.5) * 16.0).collect();
    let logits =
        Tensor::from_vec(z, [rows, vocab]).unwrap().to_dtype(dtype).unwrap().to_device(device).unwrap();
    let ids: Vec<u32> = (0..rows as u32).collect();
    Inputs {
        logits,
        seq: Tensor::from_u32(&ids, device).unwrap(),
        pos: Tensor::from_u32(&vec![17; rows], device).unwrap(),
    }
}

/// (name, T, top-k, top-p)
const PATHS: [(&str, f64, usize, f64); 3] =
    [("plain", 1.0, 0, 1.0), ("top_k50", 1.0, 50, 1.0), ("top_p0.9", 1.0, 0, 0.9)];

fn spec(vocab: usize, (_, t, k, p): (&str, f64, usize, f64)) -> SampleSpec {
    SampleSpec { vocab, temperature: t, top_k: k, top_p: p, seed: 1234 }
}

fn draw(x: &Inputs, s: &SampleSpec) -> gkd::Result<()> {
    x.logits.sample(&x.seq, &x.pos, s).map(drop)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("sampling");
    if cuda::probe().usable_devices() == 0 {
        let (rows, vocab) = (8, 4096);
        let x = inputs(rows, vocab, DType::F32, Device::Cpu);
        for path in PATHS {
            let s = spec(vocab, path);
            g.throughput(Throughput::Bytes((rows * vocab * 4) as u64));
            g.bench_function(format!("cpu_f32_{}_{rows}x{vocab}", path.0), |b| {
                b.iter(|| draw(&x, &s).unwrap())
            });
        }
        g.finish();
        eprintln!("sampling: no GPU, only the CPU reference was timed");
        return;
    }
    let dev = CudaDevice::get(0).unwrap();
    let bw = measure_copy_bandwidth(&dev, 1 << 31, 10).unwrap();
    let mut lines = vec![format!("copy bandwidth {:.2} TB/s", bw / 1e12)];
    for rows in [8usize, 64] {
        let x = inputs(rows, VOCAB, DType::BF16, Device::Cuda(dev.ordinal()));
        let bytes = rows * VOCAB * 2;
        let floor_us = bytes as f64 / bw * 1e6;
        for path in PATHS {
            let s = spec(VOCAB, path);
            g.throughput(Throughput::Bytes(bytes as u64));
            g.bench_function(format!("cuda_bf16_{}_{rows}x{VOCAB}", path.0), |b| {
                b.iter_custom(|iters| time_iters(&dev, iters, || draw(&x, &s).unwrap()))
            });
            let us = time_ms(&dev, 50, || draw(&x, &s)).unwrap() * 1e3;
            lines.push(format!(
                "{} N={rows} V={VOCAB} bf16: {us:.2} µs = {:.1}x the floor ({floor_us:.2} µs: {bytes} bytes read once)",
                path.0,
                us / floor_us
            ));
        }
    }
    g.finish();
    for l in lines {
        eprintln!("sampling: {l}");
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
