//! The norms, forward + backward through the tape: RMSNorm, LayerNorm and RMSNorm with the residual
//! add fused, at a training-sized activation (8192 × 4096 bf16) on the GPU; the CPU reference at a
//! small size without one. Bandwidth-bound, so after criterion's numbers each one's ratio to its
//! memory floor (the minimal traffic at the copy bandwidth measured in this same run) is printed:
//!   rms_norm, layer_norm: forward reads x, writes y; backward reads x, dy, writes dx (weights and
//!                         statistics are negligible): 5 tensors
//!   add_rms_norm:         forward reads x, r, writes sum, y; backward reads sum, dy, dsum, writes
//!                         dx (= dr): 8 tensors

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gkd::autograd::Tape;
use gkd::backend::cuda::bandwidth::{measure_copy_bandwidth, time_iters, time_ms};
use gkd::backend::cuda::{self, CudaDevice};
use gkd::{DType, Device, Tensor};
use std::time::Duration;

#[derive(Clone, Copy)]
enum Norm {
    Rms,
    Layer,
    AddRms,
}

impl Norm {
    fn name(self) -> &'static str {
        match self {
            Norm::Rms => "rms_norm",
            Norm::Layer => "layer_norm",
            Norm::AddRms => "add_rms_norm",
        }
    }

    fn floor_tensors(self) -> usize {
        match self {
            Norm::Rms | Norm::Layer => 5,
            Norm::AddRms => 8,
        }
    }
}

struct Inputs {
    x: Tensor,
    r: Tensor,
    w: Tensor,
    b: Tensor,
    dy: Tensor,
}

fn inputs(rows: usize, cols: usize, dtype: DType, device: Device) -> Inputs {
    let v = |mul: usize, m: usize| -> Vec<f32> {
        (0..rows * cols).map(|i| ((i * mul % m) as f32 / (m / 2) as f32) - 1.0).collect()
    };
    let t = |v: Vec<f32>, s: Vec<usize>| {
        Tensor::from_vec(v, s).unwrap().to_dtype(dtype).unwrap().to_device(device).unwrap()
    };
    Inputs {
        x: t(v(7919, 1013), vec![rows, cols]),
        r: t(v(6007, 1019), vec![rows, cols]),
        w: t(vec![1.0f32; cols], vec![cols]),
        b: t(vec![0.5f32; cols], vec![cols]),
        dy: t(v(104729, 997), vec![rows, cols]),
    }
}

fn fwd_bwd(norm: Norm, x: &Inputs) -> gkd::Result<()> {
    let mut tape = Tape::new();
    let xv = tape.leaf(x.x.clone(), true);
    let wv = tape.leaf(x.w.clone(), true);
    let y = match norm {
        Norm::Rms => tape.rms_norm(&xv, &wv, 1e-6)?,
        Norm::Layer => {
            let bv = tape.leaf(x.b.clone(), true);
            tape.layer_norm(&xv, &wv, &bv, 1e-5)?
        }
        Norm::AddRms => {
            let rv = tape.leaf(x.r.clone(), true);
            let (sum, y) = tape.add_rms_norm(&xv, &rv, &wv, 1e-6)?;
            return tape.backward_many(vec![(&sum, x.dy.clone()), (&y, x.dy.clone())]).map(drop);
        }
    };
    tape.backward_from(&y, x.dy.clone()).map(drop)
}

fn bench(c: &mut Criterion) {
    let all = [Norm::Rms, Norm::Layer, Norm::AddRms];
    let mut g = c.benchmark_group("norms_fwd_bwd");
    if cuda::probe().usable_devices() == 0 {
        let (rows, cols) = (256, 896);
        let x = inputs(rows, cols, DType::F32, Device::Cpu);
        for n in all {
            g.throughput(Throughput::Bytes((n.floor_tensors() * rows * cols * 4) as u64));
            g.bench_function(format!("cpu_f32_{}_{rows}x{cols}", n.name()), |b| {
                b.iter(|| fwd_bwd(n, &x).unwrap())
            });
        }
        g.finish();
        eprintln!("rms_norm: no GPU, only the CPU reference was timed");
        return;
    }
    let dev = CudaDevice::get(0).unwrap();
    let bw = measure_copy_bandwidth(&dev, 1 << 31, 10).unwrap();
    let (rows, cols) = (8192, 4096);
    let x = inputs(rows, cols, DType::BF16, Device::Cuda(dev.ordinal()));
    let mut ratios = vec![format!("copy bandwidth {:.2} TB/s", bw / 1e12)];
    for n in all {
        let bytes = n.floor_tensors() * rows * cols * 2;
        g.throughput(Throughput::Bytes(bytes as u64));
        g.bench_function(format!("cuda_bf16_{}_{rows}x{cols}", n.name()), |b| {
            b.iter_custom(|iters| time_iters(&dev, iters, || fwd_bwd(n, &x).unwrap()))
        });
        let ms = time_ms(&dev, 20, || fwd_bwd(n, &x)).unwrap();
        let floor = bytes as f64 / bw * 1e3;
        ratios.push(format!(
            "{} fwd+bwd {rows}x{cols} bf16: {ms:.3} ms = {:.2}x the floor ({floor:.3} ms)",
            n.name(),
            ms / floor
        ));
    }
    g.finish();
    for r in ratios {
        eprintln!("rms_norm: {r}");
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
