//! The MLP activations, forward + backward through the tape: swiglu (Llama) and gelu (GPT-2) at a
//! training-sized activation, 8192 × 4864 bf16, on the GPU; the CPU reference at a small size
//! without one. Each is bandwidth-bound, so after criterion's numbers the ratio of its time to the
//! memory floor (the minimal traffic at the copy bandwidth measured in this same run) is printed:
//!   swiglu: forward reads gate, up and writes y; backward reads gate, up, dy and writes dgate,
//!           dup: 8 tensors of N elements
//!   gelu:   forward reads x and writes y; backward reads x, dy and writes dx: 5 tensors

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gkd::autograd::Tape;
use gkd::backend::cuda::bandwidth::{measure_copy_bandwidth, time_iters, time_ms};
use gkd::backend::cuda::{self, CudaDevice};
use gkd::{DType, Device, Tensor};
use std::time::Duration;

#[derive(Clone, Copy)]
enum Act {
    Swiglu,
    Gelu,
}

impl Act {
    fn name(self) -> &'static str {
        match self {
            Act::Swiglu => "swiglu",
            Act::Gelu => "gelu",
        }
    }

    /// Tensors of N elements the forward and backward must move at the least.
    fn floor_tensors(self) -> usize {
        match self {
            Act::Swiglu => 8,
            Act::Gelu => 5,
        }
    }
}

fn tensor(n: usize, seed: usize, dtype: DType, device: Device) -> Tensor {
    let v: Vec<f32> = (0..n).map(|i| (((i + seed) * 7919 % 1013) as f32 / 253.0) - 2.0).collect();
    Tensor::from_vec(v, [n]).unwrap().to_dtype(dtype).unwrap().to_device(device).unwrap()
}

struct Inputs {
    a: Tensor,
    b: Tensor,
    dy: Tensor,
}

impl Inputs {
    fn new(n: usize, dtype: DType, device: Device) -> Inputs {
        Inputs {
            a: tensor(n, 1, dtype, device),
            b: tensor(n, 2, dtype, device),
            dy: tensor(n, 3, dtype, device),
        }
    }
}

fn fwd_bwd(act: Act, x: &Inputs) -> gkd::Result<()> {
    let mut tape = Tape::new();
    let a = tape.leaf(x.a.clone(), true);
    let y = match act {
        Act::Swiglu => {
            let b = tape.leaf(x.b.clone(), true);
            tape.swiglu(&a, &b)?
        }
        Act::Gelu => tape.gelu(&a)?,
    };
    tape.backward_from(&y, x.dy.clone())?;
    Ok(())
}

fn bench(c: &mut Criterion) {
    if cuda::probe().usable_devices() == 0 {
        let n = 1 << 20;
        let x = Inputs::new(n, DType::F32, Device::Cpu);
        let mut g = c.benchmark_group("activation_cpu");
        for act in [Act::Swiglu, Act::Gelu] {
            g.throughput(Throughput::Bytes((act.floor_tensors() * n * 4) as u64));
            g.bench_function(format!("{}_f32_{n}", act.name()), |b| b.iter(|| fwd_bwd(act, &x).unwrap()));
        }
        g.finish();
        eprintln!("activation: no GPU, only the CPU reference was timed");
        return;
    }
    let dev = CudaDevice::get(0).unwrap();
    let bw = measure_copy_bandwidth(&dev, 1 << 31, 10).unwrap();
    let mut ratios = vec![format!("copy bandwidth {:.2} TB/s", bw / 1e12)];
    let (rows, cols) = (8192usize, 4864usize);
    let n = rows * cols;
    let x = Inputs::new(n, DType::BF16, Device::Cuda(dev.ordinal()));
    let mut g = c.benchmark_group(format!("activation_{rows}x{cols}_bf16"));
    for act in [Act::Swiglu, Act::Gelu] {
        let bytes = act.floor_tensors() * n * 2;
        g.throughput(Throughput::Bytes(bytes as u64));
        g.bench_function(act.name(), |b| {
            b.iter_custom(|i| time_iters(&dev, i, || fwd_bwd(act, &x).unwrap()))
        });
        let ms = time_ms(&dev, 20, || fwd_bwd(act, &x)).unwrap();
        let floor = bytes as f64 / bw * 1e3;
        ratios.push(format!(
            "{} fwd+bwd {rows}x{cols} bf16: {ms:.3} ms = {:.2}x the floor ({floor:.3} ms)",
            act.name(),
            ms / floor
        ));
    }
    g.finish();
    for r in ratios {
        eprintln!("activation: {r}");
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
