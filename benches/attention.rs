//! Causal attention forward and forward + backward: the CPU reference at a small size, and on a
//! GPU the CUDA kernels at a training shape (8 sequences of 1024 tokens, 14 query / 2 key-value
//! heads, head dim 64, bf16), reported as achieved TFLOP/s against the cuBLAS bf16 GEMM rate
//! (4096³) measured in the same run. FLOPs counted as FlashAttention does for a causal mask: the
//! forward's two products 4·B·Hq·T²·D halved, the backward 2.5× the forward (five products).
//! scripts/peers-attention.py times PyTorch's flash SDPA at the same shape.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gkd::autograd::{AttnDims, Tape};
use gkd::backend::cuda::{self, bandwidth, matmul};
use gkd::{DType, Device, Tensor};
use std::time::{Duration, Instant};

struct Shape {
    batch: usize,
    t: usize,
    q_heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl Shape {
    fn rows(&self) -> usize {
        self.batch * self.t
    }

    fn fwd_flops(&self) -> f64 {
        4.0 * (self.batch * self.q_heads * self.t * self.t * self.head_dim) as f64 / 2.0
    }
}

struct Inputs {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    dout: Tensor,
    starts: Tensor,
    lengths: Tensor,
    d: AttnDims,
}

fn inputs(s: &Shape, dtype: DType, device: Device) -> Inputs {
    let vals = |n: usize, seed: usize| -> Vec<f32> {
        (0..n).map(|i| ((i * 7919 + seed * 104729) % 1013) as f32 / 506.0 - 1.0).collect()
    };
    let t = |v: Vec<f32>, w: usize| {
        Tensor::from_vec(v, vec![s.rows(), w]).unwrap().to_dtype(dtype).unwrap().to_device(device).unwrap()
    };
    let (wq, wk) = (s.q_heads * s.head_dim, s.kv_heads * s.head_dim);
    let starts: Vec<u32> = (0..s.batch).map(|b| (b * s.t) as u32).collect();
    Inputs {
        q: t(vals(s.rows() * wq, 1), wq),
        k: t(vals(s.rows() * wk, 2), wk),
        v: t(vals(s.rows() * wk, 3), wk),
        dout: t(vals(s.rows() * wq, 4), wq),
        starts: Tensor::from_u32(&starts, device).unwrap(),
        lengths: Tensor::from_u32(&vec![s.t as u32; s.batch], device).unwrap(),
        d: AttnDims::new(s.rows(), s.batch, s.q_heads, s.kv_heads, s.head_dim),
    }
}

fn forward(x: &Inputs) {
    let mut tape = Tape::no_grad();
    let (q, k, v) =
        (tape.leaf(x.q.clone(), false), tape.leaf(x.k.clone(), false), tape.leaf(x.v.clone(), false));
    tape.attention(&q, &k, &v, x.d, &x.starts, &x.lengths).unwrap();
}

fn fwd_bwd(x: &Inputs) {
    let mut tape = Tape::new();
    let (q, k, v) =
        (tape.leaf(x.q.clone(), true), tape.leaf(x.k.clone(), true), tape.leaf(x.v.clone(), true));
    let y = tape.attention(&q, &k, &v, x.d, &x.starts, &x.lengths).unwrap();
    tape.backward_from(&y, x.dout.clone()).unwrap();
}

/// The cuBLAS bf16 GEMM rate (FLOP/s) at 4096³, median of 10.
fn gemm_rate(dev: &cuda::CudaDevice) -> f64 {
    let n = 4096;
    let s = dev.stream();
    let a = s.alloc_zeros::<half::bf16>(n * n).unwrap();
    let b = s.alloc_zeros::<half::bf16>(n * n).unwrap();
    let mut c = s.alloc_zeros::<half::bf16>(n * n).unwrap();
    let g = matmul::Gemm::dense(n, n, n, false, false);
    let ms = bandwidth::time_ms(dev, 10, || matmul::gemm(dev, &g, &a, &b, &mut c)).unwrap();
    2.0 * (n * n * n) as f64 / (ms * 1e-3)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("attention");
    let small = Shape { batch: 1, t: 128, q_heads: 4, kv_heads: 2, head_dim: 64 };
    let x = inputs(&small, DType::F32, Device::Cpu);
    g.throughput(Throughput::Elements(small.fwd_flops() as u64));
    g.bench_function("cpu_f32_fwd_1x128_4q2kv_d64", |b| b.iter(|| forward(&x)));

    if cuda::probe().usable_devices() == 0 {
        eprintln!("attention: no GPU, CUDA cases skipped");
        return;
    }
    let dev = cuda::CudaDevice::get(0).unwrap();
    let shape = Shape { batch: 8, t: 1024, q_heads: 14, kv_heads: 2, head_dim: 64 };
    let x = inputs(&shape, DType::BF16, Device::Cuda(0));
    let fwd_flops = shape.fwd_flops();
    let both_flops = fwd_flops * 3.5;

    // The ratios, each timed with CUDA events (median of 20) beside the GEMM rate.
    let peak = gemm_rate(&dev);
    let fwd_ms = bandwidth::time_ms(&dev, 20, || {
        forward(&x);
        Ok(())
    })
    .unwrap();
    let both_ms = bandwidth::time_ms(&dev, 20, || {
        fwd_bwd(&x);
        Ok(())
    })
    .unwrap();
    let line = |what: &str, flops: f64, ms: f64| {
        let rate = flops / (ms * 1e-3);
        eprintln!(
            "attention {what} bf16 B=8 T=1024 14q/2kv D=64: {ms:.3} ms, {:.1} TFLOP/s = {:.2} of the \
             cuBLAS bf16 GEMM ({:.1} TFLOP/s)",
            rate / 1e12,
            rate / peak,
            peak / 1e12
        );
    };
    line("forward", fwd_flops, fwd_ms);
    line("forward+backward", both_flops, both_ms);
    line("backward (difference)", both_flops - fwd_flops, both_ms - fwd_ms);

    for (name, flops, f) in [
        ("cuda_bf16_fwd_8x1024_14q2kv_d64", fwd_flops, forward as fn(&Inputs)),
        ("cuda_bf16_fwd_bwd_8x1024_14q2kv_d64", both_flops, fwd_bwd as fn(&Inputs)),
    ] {
        g.throughput(Throughput::Elements(flops as u64));
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                dev.synchronize().unwrap();
                let t0 = Instant::now();
                for _ in 0..iters {
                    f(&x);
                }
                dev.synchronize().unwrap();
                t0.elapsed()
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
