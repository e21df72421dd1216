//! RMSNorm forward + backward: the CPU reference at a small size, and on a GPU the CUDA kernels at
//! a training-sized activation (8192 × 4096 bf16), reported as bytes moved per second against the
//! minimal traffic (read x, dy; write y, dx — weights and statistics are negligible).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gkd::autograd::Tape;
use gkd::backend::cuda;
use gkd::{DType, Device, Tensor};
use std::time::{Duration, Instant};

fn inputs(rows: usize, cols: usize, dtype: DType, device: Device) -> (Tensor, Tensor, Tensor) {
    let x: Vec<f32> = (0..rows * cols).map(|i| ((i * 7919 % 1013) as f32 / 506.0) - 1.0).collect();
    let dy: Vec<f32> = (0..rows * cols).map(|i| ((i * 104729 % 997) as f32 / 498.0) - 1.0).collect();
    let w = vec![1.0f32; cols];
    let t = |v: Vec<f32>, s: Vec<usize>| {
        Tensor::from_vec(v, s).unwrap().to_dtype(dtype).unwrap().to_device(device).unwrap()
    };
    (t(x, vec![rows, cols]), t(w, vec![cols]), t(dy, vec![rows, cols]))
}

fn fwd_bwd(x: &Tensor, w: &Tensor, dy: &Tensor) {
    let mut tape = Tape::new();
    let xv = tape.leaf(x.clone(), true);
    let wv = tape.leaf(w.clone(), true);
    let y = tape.rms_norm(&xv, &wv, 1e-6).unwrap();
    tape.backward_from(&y, dy.clone()).unwrap();
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("rms_norm_fwd_bwd");
    let (rows, cols) = (256, 896);
    let (x, w, dy) = inputs(rows, cols, DType::F32, Device::Cpu);
    g.throughput(Throughput::Bytes((4 * rows * cols * 4) as u64));
    g.bench_function("cpu_f32_256x896", |b| b.iter(|| fwd_bwd(&x, &w, &dy)));

    if cuda::probe().usable_devices() == 0 {
        eprintln!("rms_norm_fwd_bwd: no GPU, CUDA cases skipped");
        return;
    }
    let dev = cuda::CudaDevice::get(0).unwrap();
    let (rows, cols) = (8192, 4096);
    let (x, w, dy) = inputs(rows, cols, DType::BF16, Device::Cuda(0));
    g.throughput(Throughput::Bytes((4 * rows * cols * 2) as u64));
    g.bench_function("cuda_bf16_8192x4096", |b| {
        b.iter_custom(|iters| {
            dev.synchronize().unwrap();
            let t0 = Instant::now();
            for _ in 0..iters {
                fwd_bwd(&x, &w, &dy);
            }
            dev.synchronize().unwrap();
            t0.elapsed()
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
