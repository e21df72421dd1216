//! The decode attention kernel (`kernels/decode_attention.cu`: attention of new query rows over the
//! key/value cache) against the CPU reference (`attention_cached_fwd`), on the same rounded inputs:
//! the model head shapes (GQA groups of 7 and 6, plain multi-head, head dims of 80 and 256, ones
//! that take the element-load paths, a group of more than 8 heads), caches of 1, 17, 300 and 4096 positions (one chunk,
//! several, many), rows of several sequences interleaved at the first, the last and middle
//! positions and a prefill run of consecutive positions. Also: vouched and checked indices give
//! the same bits, out-of-range indices give a zero row when vouched (and an error when not), the
//! query-head → key/value-head mapping, bit-identical reruns, the head-dimension limit, and a
//! vouched launch captured in a CUDA graph.
//! Outputs start as NaN (`cuda_or_skip` poisons allocations), so an unwritten row fails.
//! SKIPPED without a GPU.

mod common;

use common::harness::normals;
use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use gkd::autograd::{CachedAttnDims, Tape};
use gkd::{DType, Device, Tensor};
use std::sync::{Mutex, MutexGuard};

/// The tests of this file one at a time: the graph capture must not take in another test's work
/// on the device's one stream.
fn serial() -> MutexGuard<'static, ()> {
    static GPU: Mutex<()> = Mutex::new(());
    GPU.lock().unwrap_or_else(|e| e.into_inner())
}

/// (N, W) values rounded to `round`, then held as `dtype` on `device`.
fn tensor(x: &[f64], rows: usize, width: usize, round: DType, dtype: DType, device: Device) -> Tensor {
    let t = |x: Vec<f64>, d: DType, dev: Device| {
        Tensor::from_vec(x, [rows, width]).unwrap().to_dtype(d).unwrap().to_device(dev).unwrap()
    };
    let rounded = t(x.to_vec(), round, Device::Cpu).to_vec_f64().unwrap();
    t(rounded, dtype, device)
}

/// One attention problem over the cache.
struct Problem {
    d: CachedAttnDims,
    q: Vec<f64>,  // (N, Hq·D)
    kc: Vec<f64>, // (B·L, Hkv·D)
    vc: Vec<f64>, // (B·L, Hkv·D)
    seq: Vec<u32>,
    pos: Vec<u32>,
}

impl Problem {
    /// q ~ N(0, 2) and K, V ~ N(0, 1): scores scale·q·k of standard deviation ~2, a softmax
    /// neither uniform nor one-hot.
    fn random(
        rows: &[(u32, u32)],
        batch: usize,
        capacity: usize,
        heads: (usize, usize, usize),
        seed: u64,
    ) -> Problem {
        let (hq, hkv, dh) = heads;
        let n = rows.len();
        Problem {
            d: CachedAttnDims {
                rows: n,
                batch,
                capacity,
                q_heads: hq,
                kv_heads: hkv,
                head_dim: dh,
                scale: 1.0 / (dh as f64).sqrt(),
                vouched: false,
            },
            q: normals(n * hq * dh, 0.0, 2.0, seed),
            kc: normals(batch * capacity * hkv * dh, 0.0, 1.0, seed + 1),
            vc: normals(batch * capacity * hkv * dh, 0.0, 1.0, seed + 2),
            seq: rows.iter().map(|r| r.0).collect(),
            pos: rows.iter().map(|r| r.1).collect(),
        }
    }

    /// q, the caches, seq and pos, inputs rounded to `round` and held as `dtype` on `device`.
    fn tensors(&self, dtype: DType, device: Device, round: DType) -> gkd::Result<[Tensor; 5]> {
        let d = &self.d;
        let (n, cache_rows) = (d.rows, d.batch * d.capacity);
        let (wq, wkv) = (d.q_heads * d.head_dim, d.kv_heads * d.head_dim);
        Ok([
            tensor(&self.q, n, wq, round, dtype, device),
            tensor(&self.kc, cache_rows, wkv, round, dtype, device),
            tensor(&self.vc, cache_rows, wkv, round, dtype, device),
            Tensor::from_u32(&self.seq, device)?,
            Tensor::from_u32(&self.pos, device)?,
        ])
    }

    /// The op on `tensors` (see `tensors`), the output left on its device.
    fn launch(&self, x: &[Tensor; 5], vouched: bool) -> gkd::Result<Tensor> {
        let mut tape = Tape::no_grad();
        let q = tape.leaf(x[0].clone(), false);
        let out =
            tape.attention_cached(&q, &x[1], &x[2], &x[3], &x[4], CachedAttnDims { vouched, ..self.d })?;
        Ok(out.value().clone())
    }

    /// The output (N, Hq·D) on the host, inputs rounded to `round` and computed in `dtype`.
    fn run(&self, dtype: DType, device: Device, round: DType, vouched: bool) -> gkd::Result<Vec<f64>> {
        self.launch(&self.tensors(dtype, device, round)?, vouched)?.to_vec_f64()
    }

    /// The CPU reference in f32 on inputs rounded to `round`.
    fn reference(&self, round: DType) -> Vec<f64> {
        self.run(DType::F32, Device::Cpu, round, false).unwrap()
    }
}

/// Largest |got − want| of each (row, head) slice of D, over that slice's largest |want|.
fn slice_err(got: &[f64], want: &[f64], dh: usize) -> f64 {
    assert_eq!(got.len(), want.len());
    got.chunks(dh)
        .zip(want.chunks(dh))
        .map(|(g, w)| {
            let scale = w.iter().fold(0.0f64, |m, x| m.max(x.abs()));
            assert!(scale > 0.0, "a degenerate all-zero reference slice");
            g.iter().zip(w).fold(0.0f64, |m, (x, y)| m.max((x - y).abs() / scale))
        })
        .fold(0.0, f64::max)
}

/// f32: the same f32 sums in another order and exp2 of pre-scaled scores instead of exp (~1e-6
/// of a slice). bf16: the CPU gets the same bf16-rounded inputs, so only the output's rounding
/// to bf16 (half an ulp, 2⁻⁹ of the element ≤ 2⁻⁹ of the slice's largest) and the f32 part
/// differ: 2⁻⁸ bounds both with a factor 2 to spare.
const TOLERANCES: [(DType, f64); 2] = [(DType::F32, 1e-5), (DType::BF16, 1.0 / 256.0)];

/// Rows for a cache of `capacity` positions and 3 sequences: the first and the last position,
/// the middle, a prefill run of 4 consecutive positions of sequence 0 with rows of the other
/// sequences interleaved (a cache of 1 position has only position 0).
fn mixed_rows(capacity: usize) -> Vec<(u32, u32)> {
    let last = capacity as u32 - 1;
    let at = |p: u32| p.min(last);
    let run = at(capacity as u32 / 3);
    vec![
        (0, 0),
        (1, last),
        (2, at(capacity as u32 / 2)),
        (0, run),
        (2, 0),
        (0, at(run + 1)),
        (1, at(run + 7)),
        (0, at(run + 2)),
        (0, at(run + 3)),
        (2, last),
    ]
}

#[test]
fn matches_the_cpu() {
    let _serial = serial();
    let Some(dev) = common::cuda_or_skip("cuda_decode_attention::matches_the_cpu") else { return };
    let device = Device::Cuda(dev.ordinal());
    // Qwen2.5-0.5B, Qwen2.5-1.5B, multi-head, a head dim of 80 (bf16: 16-byte loads, scores on the
    // CUDA cores), of 256 with groups of 2, one of 36 (f32: 16-byte loads; bf16: element loads),
    // one of 18 (element loads in both), and a group of 18 query heads (three CTAs per key/value
    // head: 8 + 8 + 2 heads).
    let shapes =
        [(14, 2, 64), (12, 2, 128), (4, 4, 32), (8, 2, 80), (6, 3, 256), (6, 2, 36), (3, 1, 18), (18, 1, 64)];
    for (si, &heads) in shapes.iter().enumerate() {
        for capacity in [1usize, 17, 300, 4096] {
            let p =
                Problem::random(&mixed_rows(capacity), 3, capacity, heads, 10 * si as u64 + capacity as u64);
            for (dtype, tol) in TOLERANCES {
                let want = p.reference(dtype);
                let got = p.run(dtype, device, dtype, false).unwrap();
                let err = slice_err(&got, &want, heads.2);
                assert!(err <= tol, "{heads:?} L={capacity} {dtype}: error {err:.2e} > {tol:.1e}");
                // The vouched launch reads nothing back and runs the same kernels: the same bits;
                // and a rerun gives the same bits (the chunks are combined in a fixed order).
                for again in
                    [p.run(dtype, device, dtype, true).unwrap(), p.run(dtype, device, dtype, false).unwrap()]
                {
                    let same = got.iter().zip(&again).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{heads:?} L={capacity} {dtype}: two launches differ");
                }
            }
        }
    }
}

/// Vouched indices are not read back: a row with seq ≥ B or pos ≥ L comes out 0 and the other
/// rows are right, with one chunk (L = 40) and with many (L = 3000). Unvouched, the same
/// indices are an error that names the row.
#[test]
fn out_of_range_rows_are_zero_when_vouched() {
    let _serial = serial();
    let Some(dev) = common::cuda_or_skip("cuda_decode_attention::out_of_range_rows_are_zero_when_vouched")
    else {
        return;
    };
    let device = Device::Cuda(dev.ordinal());
    let heads = (14, 2, 64);
    let dh = heads.2;
    for capacity in [40usize, 3000] {
        let l = capacity as u32;
        let good = [(0u32, 5u32), (1, l - 1), (2, l / 2), (1, 0)];
        let bad = [(3u32, 0u32), (0, l), (u32::MAX, 1), (2, u32::MAX)];
        // Bad rows interleaved with the good ones: good, bad, good, bad, …
        let rows: Vec<(u32, u32)> = good.iter().zip(&bad).flat_map(|(g, b)| [*g, *b]).collect();
        let all = Problem::random(&rows, 3, capacity, heads, 77);
        let width = heads.0 * dh;
        // The reference of the good rows alone: the same q rows, the same caches.
        let only_good = Problem {
            d: CachedAttnDims { rows: good.len(), ..all.d },
            q: (0..good.len()).flat_map(|i| all.q[2 * i * width..(2 * i + 1) * width].to_vec()).collect(),
            kc: all.kc.clone(),
            vc: all.vc.clone(),
            seq: good.iter().map(|r| r.0).collect(),
            pos: good.iter().map(|r| r.1).collect(),
        };
        for (dtype, tol) in TOLERANCES {
            let got = all.run(dtype, device, dtype, true).unwrap();
            let want = only_good.reference(dtype);
            for (i, row) in got.chunks(width).enumerate() {
                if i % 2 == 1 {
                    assert!(
                        row.iter().all(|&x| x == 0.0),
                        "L={capacity} {dtype}: bad row {i} is not 0: {:?}",
                        &row[..4]
                    );
                } else {
                    let err = slice_err(row, &want[i / 2 * width..(i / 2 + 1) * width], dh);
                    assert!(err <= tol, "L={capacity} {dtype}: good row {i}: error {err:.2e} > {tol:.1e}");
                }
            }
            let e = all.run(dtype, device, dtype, false).unwrap_err().to_string();
            assert!(e.contains("row 1 is at position"), "unvouched out-of-range indices: {e}");
        }
    }
}

/// Query head h reads key/value head h / G (G = Hq/Hkv): with the values of key/value head g all
/// near 2g − 1 (−1 and +1), heads 0..G come out near −1 and heads G..2G near +1. Reading head
/// h % Hkv instead would give alternating signs.
#[test]
fn query_heads_read_their_group() {
    let _serial = serial();
    let Some(dev) = common::cuda_or_skip("cuda_decode_attention::query_heads_read_their_group") else {
        return;
    };
    let device = Device::Cuda(dev.ordinal());
    for heads in [(14, 2, 64), (4, 2, 32)] {
        let (hq, hkv, dh) = heads;
        let capacity = 700; // several chunks
        let mut p = Problem::random(&[(0, 699), (1, 3), (0, 350)], 2, capacity, heads, 5);
        let noise = normals(p.vc.len(), 0.0, 0.1, 6);
        for (idx, (v, e)) in p.vc.iter_mut().zip(noise).enumerate() {
            let g = idx / dh % hkv;
            *v = 2.0 * g as f64 - 1.0 + e;
        }
        for (dtype, tol) in TOLERANCES {
            let got = p.run(dtype, device, dtype, true).unwrap();
            let want = p.reference(dtype);
            let err = slice_err(&got, &want, dh);
            assert!(err <= tol, "{heads:?} {dtype}: error {err:.2e} > {tol:.1e}");
            for (rh, slice) in got.chunks(dh).enumerate() {
                let h = rh % hq;
                let sign = if h / (hq / hkv) == 0 { -1.0 } else { 1.0 };
                let mean = slice.iter().sum::<f64>() / dh as f64;
                assert!(
                    (mean - sign).abs() < 0.2,
                    "{heads:?} {dtype}: head {h} averages {mean}, expected {sign}"
                );
            }
        }
    }
}

/// A head dimension past the kernel's 256 is an error that says so, before any launch.
#[test]
fn head_dim_over_the_limit_is_an_error() {
    let _serial = serial();
    let Some(dev) = common::cuda_or_skip("cuda_decode_attention::head_dim_over_the_limit_is_an_error") else {
        return;
    };
    let p = Problem::random(&[(0, 0)], 1, 4, (2, 1, 264), 9);
    let e = p.run(DType::F32, Device::Cuda(dev.ordinal()), DType::F32, true).unwrap_err().to_string();
    assert!(e.contains("256"), "head dim 264: {e}");
}

/// With vouched indices the op reads nothing back and allocates only from the stream-ordered
/// pool, so it can be captured into a CUDA graph (how the decode step runs): the graph's output
/// equals the eager launch's bit for bit, with one chunk (L = 40) and with several (L = 3000).
#[test]
fn runs_inside_a_cuda_graph() {
    let _serial = serial();
    let Some(dev) = common::cuda_or_skip("cuda_decode_attention::runs_inside_a_cuda_graph") else { return };
    let device = Device::Cuda(dev.ordinal());
    for capacity in [40usize, 3000] {
        let l = capacity as u32;
        let p = Problem::random(&[(0, l - 1), (1, 7), (0, l / 2)], 2, capacity, (14, 2, 64), 31);
        let x = p.tensors(DType::BF16, device, DType::BF16).unwrap();
        // Eager first: it also loads the kernels (module loading is no stream operation).
        let eager = p.launch(&x, true).unwrap().to_vec_f64().unwrap();
        let stream = dev.stream();
        stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL).unwrap();
        let captured = p.launch(&x, true);
        // The capture ends before any result is looked at, so that a failure leaves the stream usable.
        let graph = stream.end_capture(CUgraphInstantiate_flags(0));
        let out = captured.unwrap_or_else(|e| panic!("L={capacity}: the op failed under capture: {e}"));
        let graph = graph.unwrap().expect("the capture recorded nothing");
        graph.launch().unwrap();
        let got = out.to_vec_f64().unwrap();
        // The output was allocated by the graph: freed (on the stream, after the launch) before
        // the graph goes.
        drop(out);
        drop(graph);
        let same = got.iter().zip(&eager).all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "L={capacity}: the graph's output differs from the eager launch's");
    }
}
