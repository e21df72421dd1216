//! Decode attention (attention of new query rows over the key/value cache) at the head shapes of
//! Qwen2.5-0.5B (14 query / 2 key-value heads, head dim 64) and Qwen2.5-1.5B (12 / 2, 128), bf16,
//! N = 8 and 64 rows, each its own sequence at position L − 1 of a cache of L = 256, 1024 and
//! 4096 positions, indices vouched for (no read-back: the generation loop's launch). Without a
//! GPU, the CPU reference at a small size. Bandwidth-bound: after criterion's numbers each
//! shape's time is printed against its floor, the bytes it must read (K and V of positions
//! 0..=L−1 of every row and key/value head, plus q) and write (out) at the copy bandwidth
//! measured in this same run.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gkd::autograd::{CachedAttnDims, Tape};
use gkd::backend::cuda::bandwidth::{measure_copy_bandwidth, time_iters, time_ms};
use gkd::backend::cuda::{self, CudaDevice};
use gkd::{DType, Device, Tensor};
use std::time::Duration;

struct Inputs {
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    seq: Tensor,
    pos: Tensor,
    d: CachedAttnDims,
}

impl Inputs {
    /// `rows` sequences of `capacity` positions, row i at the last position of sequence i.
    fn new(
        rows: usize,
        capacity: usize,
        (hq, hkv, dh): (usize, usize, usize),
        dtype: DType,
        device: Device,
    ) -> Inputs {
        let vals = |n: usize, seed: usize| -> Vec<f32> {
            (0..n).map(|i| ((i * 7919 + seed * 104729) % 1013) as f32 / 506.0 - 1.0).collect()
        };
        let t = |v: Vec<f32>, r: usize, w: usize| {
            Tensor::from_vec(v, vec![r, w]).unwrap().to_dtype(dtype).unwrap().to_device(device).unwrap()
        };
        let cache = rows * capacity;
        let seq: Vec<u32> = (0..rows as u32).collect();
        Inputs {
            q: t(vals(rows * hq * dh, 1), rows, hq * dh),
            k_cache: t(vals(cache * hkv * dh, 2), cache, hkv * dh),
            v_cache: t(vals(cache * hkv * dh, 3), cache, hkv * dh),
            seq: Tensor::from_u32(&seq, device).unwrap(),
            pos: Tensor::from_u32(&vec![capacity as u32 - 1; rows], device).unwrap(),
            d: CachedAttnDims {
                rows,
                batch: rows,
                capacity,
                q_heads: hq,
                kv_heads: hkv,
                head_dim: dh,
                scale: 1.0 / (dh as f64).sqrt(),
                vouched: true,
            },
        }
    }

    /// Bytes the op must move: K and V of every position of every row's sequence, q and out.
    fn floor_bytes(&self, elem: usize) -> usize {
        let d = &self.d;
        let kv = 2 * d.rows * d.capacity * d.kv_heads * d.head_dim;
        let q_out = 2 * d.rows * d.q_heads * d.head_dim;
        (kv + q_out) * elem
    }

    fn run(&self) -> gkd::Result<()> {
        let mut tape = Tape::no_grad();
        let q = tape.leaf(self.q.clone(), false);
        tape.attention_cached(&q, &self.k_cache, &self.v_cache, &self.seq, &self.pos, self.d).map(drop)
    }
}

const MODELS: [(&str, (usize, usize, usize)); 2] =
    [("qwen2.5-0.5b", (14, 2, 64)), ("qwen2.5-1.5b", (12, 2, 128))];

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode_attention");
    if cuda::probe().usable_devices() == 0 {
        let x = Inputs::new(8, 256, MODELS[0].1, DType::F32, Device::Cpu);
        g.throughput(Throughput::Bytes(x.floor_bytes(4) as u64));
        g.bench_function("cpu_f32_qwen2.5-0.5b_n8_l256", |b| b.iter(|| x.run().unwrap()));
        g.finish();
        eprintln!("decode_attention: no GPU, only the CPU reference was timed");
        return;
    }
    let dev = CudaDevice::get(0).unwrap();
    let device = Device::Cuda(dev.ordinal());
    let bw = measure_copy_bandwidth(&dev, 1 << 31, 10).unwrap();
    let mut ratios = vec![format!("copy bandwidth {:.2} TB/s", bw / 1e12)];
    for (model, heads) in MODELS {
        for rows in [8usize, 64] {
            for capacity in [256usize, 1024, 4096] {
                let x = Inputs::new(rows, capacity, heads, DType::BF16, device);
                let bytes = x.floor_bytes(2);
                let name = format!("cuda_bf16_{model}_n{rows}_l{capacity}");
                g.throughput(Throughput::Bytes(bytes as u64));
                g.bench_function(&name, |b| {
                    b.iter_custom(|iters| time_iters(&dev, iters, || x.run().unwrap()))
                });
                let ms = time_ms(&dev, 50, || x.run()).unwrap();
                let floor = bytes as f64 / bw * 1e3;
                ratios.push(format!(
                    "{name}: {:.1} us for {:.2} MB = {:.2}x the floor ({:.1} us)",
                    ms * 1e3,
                    bytes as f64 / 1e6,
                    ms / floor,
                    floor * 1e3
                ));
            }
        }
    }
    g.finish();
    for r in ratios {
        eprintln!("decode_attention: {r}");
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
