//! The optimizer step's two passes over every parameter, on the GPU at the Qwen2.5-0.5B size
//! (494 M parameters): the fused AdamW (f32 masters, gradients and moments, writing the bf16
//! compute copy in the same pass) and the deterministic gradient norm; the CPU reference at a
//! small size without a GPU. After criterion's numbers, each one's ratio to its memory floor (the
//! minimal traffic at the copy bandwidth measured in this same run):
//!   AdamW:     reads p, g, m, v (16 bytes) and writes p, m, v (12) and the bf16 copy (2): 30 B each
//!   grad norm: reads g once: 4 bytes each

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gkd::backend::cuda::bandwidth::{measure_copy_bandwidth, time_ms};
use gkd::backend::cuda::{self, CudaDevice};
use gkd::optim::adamw::{AdamW, AdamWConfig, ParamGroup};
use gkd::{DType, Device, Tensor};
use std::time::{Duration, Instant};

fn values(n: usize, seed: usize, device: Device) -> Tensor {
    let v: Vec<f32> = (0..n).map(|i| (((i + seed) * 7919 % 1013) as f32 / 5065.0) - 0.1).collect();
    Tensor::from_vec(v, [n]).unwrap().to_device(device).unwrap()
}

struct State {
    opt: AdamW,
    params: Tensor,
    grads: Tensor,
    copy: Option<Tensor>,
    groups: Vec<ParamGroup>,
}

impl State {
    fn new(n: usize, device: Device, copy: Option<DType>) -> State {
        let params = values(n, 1, device);
        let copy = copy.map(|d| params.to_dtype(d).unwrap());
        let split = n / 10 * 9;
        let groups =
            vec![ParamGroup { range: 0..split, decay: true }, ParamGroup { range: split..n, decay: false }];
        let opt = AdamW::new(AdamWConfig::default()).unwrap();
        State { opt, params, grads: values(n, 2, device), copy, groups }
    }

    fn step(&mut self) -> gkd::Result<()> {
        self.opt.step(&mut self.params, &self.grads, &self.groups, 1e-4, self.copy.as_mut())
    }
}

fn timed(dev: &CudaDevice, iters: u64, mut f: impl FnMut()) -> Duration {
    dev.synchronize().unwrap();
    let t0 = Instant::now();
    for _ in 0..iters {
        f();
    }
    dev.synchronize().unwrap();
    t0.elapsed()
}

fn bench(c: &mut Criterion) {
    if cuda::probe().usable_devices() == 0 {
        let n = 1 << 20;
        let mut s = State::new(n, Device::Cpu, None);
        let mut g = c.benchmark_group("adamw_cpu");
        g.throughput(Throughput::Bytes((28 * n) as u64));
        g.bench_function(format!("adamw_f32_{n}"), |b| b.iter(|| s.step().unwrap()));
        g.throughput(Throughput::Bytes((4 * n) as u64));
        g.bench_function(format!("grad_norm_f32_{n}"), |b| b.iter(|| s.grads.sum_squares().unwrap()));
        g.finish();
        eprintln!("adamw: no GPU, only the CPU reference was timed");
        return;
    }
    let dev = CudaDevice::get(0).unwrap();
    let bw = measure_copy_bandwidth(&dev, 1 << 31, 10).unwrap();
    let n = 494_032_768;
    let mut s = State::new(n, Device::Cuda(dev.ordinal()), Some(DType::BF16));
    let mut g = c.benchmark_group("optimizer_494m");
    g.throughput(Throughput::Bytes((30 * n) as u64));
    g.bench_function("adamw_bf16_copy", |b| b.iter_custom(|i| timed(&dev, i, || s.step().unwrap())));
    g.throughput(Throughput::Bytes((4 * n) as u64));
    g.bench_function("grad_norm_f32", |b| {
        b.iter_custom(|i| {
            timed(&dev, i, || {
                std::hint::black_box(s.grads.sum_squares().unwrap());
            })
        })
    });
    g.finish();
    let adamw = time_ms(&dev, 10, || s.step()).unwrap();
    let norm = time_ms(&dev, 10, || s.grads.sum_squares().map(drop)).unwrap();
    let floor = |bytes: usize| bytes as f64 / bw * 1e3;
    eprintln!("adamw: copy bandwidth {:.2} TB/s", bw / 1e12);
    eprintln!(
        "adamw: AdamW over {n} parameters with the bf16 copy: {adamw:.3} ms = {:.2}x the floor ({:.3} ms)",
        adamw / floor(30 * n),
        floor(30 * n)
    );
    eprintln!(
        "adamw: gradient norm over {n} f32: {norm:.3} ms = {:.2}x the floor ({:.3} ms)",
        norm / floor(4 * n),
        floor(4 * n)
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
