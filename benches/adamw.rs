//! The optimizer step and the gradient norm at Qwen2.5-0.5B's size (494M parameters): fused AdamW
//! over f32 masters, gradients and moments writing the bf16 compute weights in the same pass,
//! against its memory floor (read p, g, m, v; write p, m, v and the bf16 copy: 30 bytes per
//! parameter) at the copy bandwidth measured in this run, and against the unfused baseline (the
//! step, then a separate cast to bf16); the deterministic sum of squares over the f32 gradients
//! against its floor (4 bytes per parameter), the one f64 read back included. Without a GPU: the
//! CPU reference at 1M parameters.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gkd::backend::cuda::bandwidth::{measure_copy_bandwidth, time_iters, time_ms};
use gkd::backend::cuda::{self, CudaDevice};
use gkd::optim::{AdamW, AdamWConfig, ParamGroup};
use gkd::{DType, Device, Tensor};
use std::time::Duration;

const PARAMS: usize = 494_032_768;
/// Bytes one AdamW step moves per parameter with the bf16 copy: 4 reads and 3 writes of f32, one
/// bf16 write.
const ADAMW_BYTES: usize = 7 * 4 + 2;

/// n values of a fixed pattern (nonzero, varied: every lane of the kernel does real work), built
/// from a 1M-element block copied on the device.
fn pattern(n: usize, scale: f32, device: Device) -> Tensor {
    let block = 1 << 20;
    let host: Vec<f32> =
        (0..block).map(|i| scale * (((i * 7919) % 2003) as f32 / 1001.0 - 1.0 + 1e-3)).collect();
    let src = Tensor::from_vec(host, [block]).unwrap().to_device(device).unwrap();
    let mut out = Tensor::zeros([n], DType::F32, device).unwrap();
    for at in (0..n).step_by(block) {
        let len = block.min(n - at);
        out.copy_at(at, &src.narrow(0, 0, len).unwrap()).unwrap();
    }
    out
}

fn bench(c: &mut Criterion) {
    let cfg = AdamWConfig { weight_decay: 0.01, ..AdamWConfig::default() };
    if cuda::probe().usable_devices() == 0 {
        let n = 1 << 20;
        let (mut p, g) = (pattern(n, 1.0, Device::Cpu), pattern(n, 1e-3, Device::Cpu));
        let groups = [ParamGroup { range: 0..n, decay: true }];
        let mut opt = AdamW::new(cfg).unwrap();
        let mut group = c.benchmark_group("adamw_cpu");
        group.throughput(Throughput::Bytes((n * 28) as u64));
        group.bench_function("reference_f32_1M", |b| {
            b.iter(|| opt.step(&mut p, &g, &groups, 1e-3, None).unwrap())
        });
        group.bench_function("sum_squares_f32_1M", |b| b.iter(|| g.sum_squares().unwrap()));
        group.finish();
        eprintln!("adamw: no GPU, only the CPU reference was timed");
        return;
    }
    let dev = CudaDevice::get(0).unwrap();
    let gpu = Device::Cuda(0);
    let bw = measure_copy_bandwidth(&dev, 1 << 31, 10).unwrap();
    let n = PARAMS;
    let mut p = pattern(n, 0.05, gpu);
    let g = pattern(n, 1e-3, gpu);
    let mut w = Tensor::zeros([n], DType::BF16, gpu).unwrap();
    let groups = [ParamGroup { range: 0..n, decay: true }];
    let mut opt = AdamW::new(cfg).unwrap();
    // The first step creates the moments.
    opt.step(&mut p, &g, &groups, 1e-4, Some(&mut w)).unwrap();

    let mut group = c.benchmark_group("adamw_494M");
    group.sample_size(10);
    group.throughput(Throughput::Bytes((n * ADAMW_BYTES) as u64));
    group.bench_function("fused_bf16_copy", |b| {
        b.iter_custom(|i| time_iters(&dev, i, || opt.step(&mut p, &g, &groups, 1e-4, Some(&mut w)).unwrap()))
    });
    group.bench_function("step_then_cast", |b| {
        b.iter_custom(|i| {
            time_iters(&dev, i, || {
                opt.step(&mut p, &g, &groups, 1e-4, None).unwrap();
                drop(p.to_dtype(DType::BF16).unwrap());
            })
        })
    });
    group.throughput(Throughput::Bytes((n * 4) as u64));
    group.bench_function("sum_squares_f32", |b| {
        b.iter_custom(|i| {
            time_iters(&dev, i, || {
                std::hint::black_box(g.sum_squares().unwrap());
            })
        })
    });
    group.finish();

    let fused = time_ms(&dev, 10, || opt.step(&mut p, &g, &groups, 1e-4, Some(&mut w))).unwrap();
    let unfused = time_ms(&dev, 10, || {
        opt.step(&mut p, &g, &groups, 1e-4, None)?;
        p.to_dtype(DType::BF16).map(drop)
    })
    .unwrap();
    let norm = time_ms(&dev, 20, || g.sum_squares().map(drop)).unwrap();
    let adamw_floor = (n * ADAMW_BYTES) as f64 / bw * 1e3;
    let norm_floor = (n * 4) as f64 / bw * 1e3;
    eprintln!(
        "\nratios measured in this run ({n} parameters, copy bandwidth {:.2} TB/s):\n  \
         adamw + bf16 copy: {fused:.3} ms = {:.2}x the floor ({adamw_floor:.3} ms); step then cast {unfused:.3} ms ({:.2}x the fused)\n  \
         sum of squares (f32, host read included): {norm:.3} ms = {:.2}x the floor ({norm_floor:.3} ms)",
        bw / 1e12,
        fused / adamw_floor,
        unfused / fused,
        norm / norm_floor
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
