//! Token embedding and rotary embedding, forward + backward, through the backend contract: on a
//! GPU, the CUDA kernels at training sizes in bf16 — embedding 8192 rows × 896 from a vocabulary of
//! 151936 (Qwen2's), rope 8192 rows × 14 heads × 64 — each reported against its memory floor (the
//! bytes it must move at the copy bandwidth measured in the same run):
//! - embedding: read and write the N·C gathered rows; read dout (N·C), write dtable (V·C f32,
//!   every row: the backward's floor is almost all of it);
//! - rope: read x and write y, then read dy and write dx (N·H·D each).
//!
//! Without a GPU: the CPU reference at a small size.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gkd::backend::cuda::bandwidth::{measure_copy_bandwidth, time_iters, time_ms};
use gkd::backend::cuda::{self, CudaDevice, CudaStorage};
use gkd::backend::ops::RopeSpec;
use gkd::backend::{BackendStorage, CpuStorage, View};
use gkd::Result;
use std::sync::Arc;
use std::time::Duration;

fn values(n: usize, seed: usize) -> Vec<f32> {
    (0..n).map(|i| ((i * 7919 + seed) % 1013) as f32 / 506.0 - 1.0).collect()
}

/// Qwen2-like ids: spread over the vocabulary, every 16th row one frequent token.
fn ids(rows: usize, vocab: usize) -> Vec<u32> {
    (0..rows).map(|r| if r % 16 == 0 { 198 } else { (r * 104729 % vocab) as u32 }).collect()
}

fn inv_freq(head_dim: usize) -> Vec<f64> {
    (0..head_dim / 2).map(|i| 1.0 / 1e6f64.powf(2.0 * i as f64 / head_dim as f64)).collect()
}

/// Positions of packed sequences of 1024 tokens.
fn positions(rows: usize) -> Vec<u32> {
    (0..rows as u32).map(|r| r % 1024).collect()
}

fn whole<S>(s: &S) -> View<'_, S>
where
    S: BackendStorage,
{
    View::new(s, 0, s.len())
}

/// Embedding forward then backward on one backend.
fn embedding_fwd_bwd<S: BackendStorage>(
    table: &S,
    ids: &S,
    dout: &S,
    vocab: usize,
    dim: usize,
) -> Result<()> {
    let y = S::embedding_fwd(whole(table), whole(ids), dim)?;
    let g = S::embedding_bwd(whole(dout), whole(ids), vocab, dim)?;
    drop((y, g));
    Ok(())
}

/// Rope forward then backward on one backend.
fn rope_fwd_bwd<S: BackendStorage>(x: &S, pos: &S, dy: &S, spec: &RopeSpec) -> Result<()> {
    let y = S::rope_fwd(whole(x), whole(pos), spec)?;
    let dx = S::rope_bwd(whole(dy), whole(pos), spec)?;
    drop((y, dx));
    Ok(())
}

fn bench_cpu(c: &mut Criterion) {
    let (rows, vocab, dim) = (256, 4096, 896);
    let table = CpuStorage::F32(values(vocab * dim, 1));
    let dout = CpuStorage::F32(values(rows * dim, 2));
    let id = CpuStorage::U32(ids(rows, vocab));
    let mut g = c.benchmark_group("embedding_cpu");
    g.throughput(Throughput::Bytes((4 * (3 * rows * dim + vocab * dim)) as u64));
    g.bench_function("reference_f32_256x896_v4096", |b| {
        b.iter(|| embedding_fwd_bwd(&table, &id, &dout, vocab, dim).unwrap())
    });
    g.finish();
    let (rows, heads, head_dim) = (256, 14, 64);
    let freqs = inv_freq(head_dim);
    let spec = RopeSpec { heads, inv_freq: &freqs };
    let n = rows * heads * head_dim;
    let (x, dy, pos) =
        (CpuStorage::F32(values(n, 3)), CpuStorage::F32(values(n, 4)), CpuStorage::U32(positions(rows)));
    let mut g = c.benchmark_group("rope_cpu");
    g.throughput(Throughput::Bytes((4 * 4 * n) as u64));
    g.bench_function("reference_f32_256x14x64", |b| b.iter(|| rope_fwd_bwd(&x, &pos, &dy, &spec).unwrap()));
    g.finish();
}

fn upload_bf16(dev: &Arc<CudaDevice>, v: Vec<f32>) -> CudaStorage {
    let f = CudaStorage::upload(dev, &CpuStorage::F32(v)).unwrap();
    CudaStorage::cast(whole(&f), gkd::DType::BF16).unwrap()
}

fn bench(c: &mut Criterion) {
    if cuda::probe().usable_devices() == 0 {
        bench_cpu(c);
        eprintln!("embedding: no GPU, only the CPU reference was timed");
        return;
    }
    let dev = CudaDevice::get(0).unwrap();
    let bw = measure_copy_bandwidth(&dev, 1 << 31, 10).unwrap();
    let mut ratios = vec![format!("copy bandwidth {:.2} TB/s", bw / 1e12)];
    let floor_ms = |bytes: usize| bytes as f64 / bw * 1e3;

    // Embedding: bf16 table and dout, f32 dtable.
    let (rows, vocab, dim) = (8192usize, 151936usize, 896usize);
    let table = upload_bf16(&dev, values(vocab * dim, 1));
    let dout = upload_bf16(&dev, values(rows * dim, 2));
    let id = CudaStorage::upload(&dev, &CpuStorage::U32(ids(rows, vocab))).unwrap();
    let fwd_bytes = 2 * rows * dim * 2;
    let bwd_bytes = rows * dim * 2 + vocab * dim * 4;
    let mut g = c.benchmark_group("embedding_8192x896_v151936_bf16");
    g.throughput(Throughput::Bytes((fwd_bytes + bwd_bytes) as u64));
    g.bench_function("cuda_fwd_bwd", |b| {
        b.iter_custom(|i| time_iters(&dev, i, || embedding_fwd_bwd(&table, &id, &dout, vocab, dim).unwrap()))
    });
    g.finish();
    let fwd =
        time_ms(&dev, 20, || CudaStorage::embedding_fwd(whole(&table), whole(&id), dim).map(drop)).unwrap();
    let bwd =
        time_ms(&dev, 20, || CudaStorage::embedding_bwd(whole(&dout), whole(&id), vocab, dim).map(drop))
            .unwrap();
    ratios.push(format!(
        "embedding {rows}x{dim} from {vocab}: forward {fwd:.3} ms = {:.2}x its floor ({:.3} ms); backward {bwd:.3} ms = {:.2}x its floor ({:.3} ms)",
        fwd / floor_ms(fwd_bytes),
        floor_ms(fwd_bytes),
        bwd / floor_ms(bwd_bytes),
        floor_ms(bwd_bytes)
    ));
    drop((table, dout, id));

    // Rope: bf16.
    let (rows, heads, head_dim) = (8192usize, 14usize, 64usize);
    let freqs = inv_freq(head_dim);
    let spec = RopeSpec { heads, inv_freq: &freqs };
    let n = rows * heads * head_dim;
    let x = upload_bf16(&dev, values(n, 3));
    let dy = upload_bf16(&dev, values(n, 4));
    let pos = CudaStorage::upload(&dev, &CpuStorage::U32(positions(rows))).unwrap();
    let one_way = 2 * n * 2;
    let mut g = c.benchmark_group("rope_8192x14x64_bf16");
    g.throughput(Throughput::Bytes((2 * one_way) as u64));
    g.bench_function("cuda_fwd_bwd", |b| {
        b.iter_custom(|i| time_iters(&dev, i, || rope_fwd_bwd(&x, &pos, &dy, &spec).unwrap()))
    });
    g.finish();
    let fwd = time_ms(&dev, 50, || CudaStorage::rope_fwd(whole(&x), whole(&pos), &spec).map(drop)).unwrap();
    let bwd = time_ms(&dev, 50, || CudaStorage::rope_bwd(whole(&dy), whole(&pos), &spec).map(drop)).unwrap();
    ratios.push(format!(
        "rope {rows}x{heads}x{head_dim}: forward {fwd:.4} ms, backward {bwd:.4} ms = {:.2}x and {:.2}x the floor ({:.4} ms each)",
        fwd / floor_ms(one_way),
        bwd / floor_ms(one_way),
        floor_ms(one_way)
    ));
    eprintln!("\nratios measured in this run:\n  {}", ratios.join("\n  "));
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
