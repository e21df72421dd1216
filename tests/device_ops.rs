//! Every op of the backend contract on every backend, through the tape, against the CPU f32
//! reference: values and gradients (the harness in tests/common/harness.rs, the cases listed once
//! in tests/common/ops.rs). The CUDA half runs wherever a GPU exists and prints SKIPPED elsewhere;
//! every op has CUDA kernels, so an Unsupported error there is a failure. Also here: the harness rejects
//! wrong outputs, the cached attention equals the full one, and the in-place memory operations.

mod common;

use common::harness::{check, compare, corrupt, run, Corruption};
use common::{cuda_or_skip, ops};
use gkd::autograd::{CachedAttnDims, Tape, Var};
use gkd::backend::ops::{AdamWStep, AttnDims};
use gkd::{DType, Device, Tensor};

#[test]
fn every_op_small_shapes() {
    for case in ops::small() {
        check(&case);
    }
}

#[test]
fn every_op_large_shapes() {
    for case in ops::large() {
        check(&case);
    }
}

/// The harness's own test: outputs that are zeros, sign-flipped or shifted by a row fail it, on
/// every case (and the correct outcome from the f64 backend passes).
#[test]
fn harness_rejects_wrong_outputs() {
    for case in ops::small() {
        let want = run(&case, Device::Cpu, DType::F32, DType::F32).unwrap();
        let exact = run(&case, Device::Cpu, DType::F64, DType::F32).unwrap();
        compare(&exact, &want, case.tol.f32).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        for c in [Corruption::Zeros, Corruption::SignFlip, Corruption::ShiftRow] {
            let wrong = corrupt(&want, c);
            if c == Corruption::ShiftRow && wrong.out == want.out {
                continue; // a one-row (scalar) output has no row to shift
            }
            assert!(
                compare(&wrong, &want, case.tol.bf16).is_err(),
                "{}: {c:?} passed the harness",
                case.name
            );
        }
    }
}

/// Prefill 3 tokens of one sequence, then 2 single tokens, through the cache: the same as
/// attention over all 5 at once; a second sequence in the cache is not read.
#[test]
fn cached_attention_equals_full_attention() {
    let (hq, hkv, dh, t) = (4usize, 2usize, 3usize, 5usize);
    let q = common::harness::normals(t * hq * dh, 0.0, 1.0, 1);
    let k = common::harness::normals(t * hkv * dh, 0.0, 1.0, 2);
    let v = common::harness::normals(t * hkv * dh, 0.0, 1.0, 3);
    let mut devices = vec![Device::Cpu];
    if let Some(d) = cuda_or_skip("device_ops::cached_attention_equals_full_attention") {
        devices.push(Device::Cuda(d.ordinal()));
    }
    for device in devices {
        let tensor = |x: &[f64], rows: usize, width: usize| -> Tensor {
            Tensor::from_vec(x.to_vec(), [rows, width])
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
                .to_device(device)
                .unwrap()
        };
        let mut tape = Tape::no_grad();
        let full = tape
            .attention(
                &Var::constant(tensor(&q, t, hq * dh)),
                &Var::constant(tensor(&k, t, hkv * dh)),
                &Var::constant(tensor(&v, t, hkv * dh)),
                AttnDims::new(t, 1, hq, hkv, dh),
                &Tensor::from_u32(&[0], device).unwrap(),
                &Tensor::from_u32(&[t as u32], device).unwrap(),
            )
            .unwrap()
            .value()
            .to_vec_f64()
            .unwrap();
        let capacity = 6;
        let kv = hkv * dh;
        // The caches are filled on the host (the append, copy_rows, is tested with the other
        // memory operations); sequence 1 holds garbage that must not leak into sequence 0.
        let (mut kc, mut vc) = (vec![0.0; 2 * capacity * kv], vec![0.0; 2 * capacity * kv]);
        kc[capacity * kv..].iter_mut().for_each(|x| *x = 50.0);
        vc[capacity * kv..].iter_mut().for_each(|x| *x = 50.0);
        let mut got = Vec::new();
        for (a, b) in [(0usize, 3usize), (3, 4), (4, 5)] {
            kc[a * kv..b * kv].copy_from_slice(&k[a * kv..b * kv]);
            vc[a * kv..b * kv].copy_from_slice(&v[a * kv..b * kv]);
            let pos: Vec<u32> = (a as u32..b as u32).collect();
            let rows = Tensor::from_u32(&pos, device).unwrap();
            let d = CachedAttnDims {
                rows: b - a,
                batch: 2,
                capacity,
                q_heads: hq,
                kv_heads: hkv,
                head_dim: dh,
                scale: 1.0 / (dh as f64).sqrt(),
                vouched: false,
            };
            let out = tape
                .attention_cached(
                    &Var::constant(tensor(&q[a * hq * dh..b * hq * dh], b - a, hq * dh)),
                    &tensor(&kc, 2 * capacity, kv),
                    &tensor(&vc, 2 * capacity, kv),
                    &Tensor::from_u32(&vec![0; b - a], device).unwrap(),
                    &rows,
                    d,
                )
                .unwrap();
            got.extend(out.value().to_vec_f64().unwrap());
        }
        for (i, (x, y)) in got.iter().zip(&full).enumerate() {
            assert!((x - y).abs() < 1e-5, "{device} [{i}]: cached {x} vs full {y}");
        }
        // A tape that records gradients refuses the cached attention (it has no backward).
        let mut grad_tape = Tape::new();
        let qv = grad_tape.leaf(tensor(&q[..hq * dh], 1, hq * dh), true);
        let d = CachedAttnDims {
            rows: 1,
            batch: 2,
            capacity,
            q_heads: hq,
            kv_heads: hkv,
            head_dim: dh,
            scale: 1.0,
            vouched: false,
        };
        let zero = Tensor::from_u32(&[0], device).unwrap();
        let (kc, vc) = (tensor(&kc, 2 * capacity, kv), tensor(&vc, 2 * capacity, kv));
        assert!(grad_tape.attention_cached(&qv, &kc, &vc, &zero, &zero, d).is_err());
    }
}

/// The memory operations of the contract (in place: add, copy, fill, scale, rows; the sum of
/// squares; the AdamW step; bf16 ↔ f32 casts; contiguous() of strided views) on every backend
/// against the CPU. Copies are exact, so the tolerance (1e-6 of the largest element) only
/// absorbs the optimizer's arithmetic.
#[test]
fn in_place_operations_match_the_cpu() {
    let n = 1000;
    let a = common::harness::normals(n, 0.0, 1.0, 31);
    let b = common::harness::normals(n, 0.0, 1.0, 32);
    let run_on = |device: Device| -> Vec<(&'static str, gkd::Result<Vec<f64>>)> {
        let t = |x: &[f64]| {
            Tensor::from_vec(x.to_vec(), [x.len()])
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
                .to_device(device)
                .unwrap()
        };
        let mut out = Vec::new();
        let mut x = t(&a);
        out.push(("add_at", x.add_at(100, &t(&b[..500])).and_then(|()| x.to_vec_f64())));
        let mut x = t(&a);
        out.push(("copy_at", x.copy_at(7, &t(&b[..300])).and_then(|()| x.to_vec_f64())));
        let mut x = t(&a);
        out.push(("fill", x.fill_(0.0).and_then(|()| x.to_vec_f64())));
        let mut x = t(&a);
        out.push(("fill_nonzero", x.fill_(-1.75).and_then(|()| x.to_vec_f64())));
        // A window at an odd offset (the write copies the shared storage, the view keeps its offset).
        let mut x = t(&a).to_dtype(DType::BF16).unwrap().narrow(0, 3, 500).unwrap();
        out.push(("fill_bf16", x.fill_(3.3).and_then(|()| x.to_vec_f64())));
        let mut x = t(&a);
        out.push(("scale", x.scale_(-0.37).and_then(|()| x.to_vec_f64())));
        // contiguous() of strided views: a transposed matrix, a permuted and narrowed 3-D block,
        // a column block.
        let m = t(&a).reshape([25, 40]).unwrap();
        out.push((
            "copy_strided_transposed",
            m.transpose(0, 1).and_then(|v| v.contiguous()).and_then(|v| v.to_vec_f64()),
        ));
        let cube = t(&a).reshape([10, 10, 10]).unwrap();
        out.push((
            "copy_strided_3d",
            cube.transpose(0, 2)
                .and_then(|v| v.narrow(1, 3, 4))
                .and_then(|v| v.contiguous())
                .and_then(|v| v.to_vec_f64()),
        ));
        let bf = t(&a).to_dtype(DType::BF16).unwrap().reshape([100, 10]).unwrap();
        out.push((
            "copy_strided_columns_bf16",
            bf.narrow(1, 2, 5).and_then(|v| v.contiguous()).and_then(|v| v.to_vec_f64()),
        ));
        out.push(("sum_squares", t(&a).sum_squares().map(|s| vec![s])));
        let mut x = t(&a).reshape([100, 10]).unwrap();
        let rows = Tensor::from_u32(&[5, 0, 99], device).unwrap();
        out.push(("copy_rows", x.copy_rows_(10, &rows, &t(&b[..30]), false).and_then(|()| x.to_vec_f64())));
        // Rows of 32 bytes: the kernel moves 16-byte packs.
        let mut x = t(&a).reshape([125, 8]).unwrap();
        let rows = Tensor::from_u32(&[3, 124, 0], device).unwrap();
        out.push((
            "copy_rows_packed",
            x.copy_rows_(8, &rows, &t(&b[..24]), false).and_then(|()| x.to_vec_f64()),
        ));
        let mut x = t(&a).reshape([100, 10]).unwrap();
        let bad = Tensor::from_u32(&[5, 100], device).unwrap();
        let refused = x.copy_rows_(10, &bad, &t(&b[..20]), false).is_err();
        out.push(("copy_rows_out_of_range_refused", Ok(vec![f64::from(u8::from(refused))])));
        // Vouched indices are not read back: the row past the storage is skipped, the other written.
        let mut x = t(&a).reshape([100, 10]).unwrap();
        let r = x.copy_rows_(10, &bad, &t(&b[..20]), true).and_then(|()| x.to_vec_f64());
        out.push(("copy_rows_vouched_skips_out_of_range", r));
        out.extend(decode_state_cases(device));
        out.extend(rope_append_cases(device, &t));
        // silu(gate)·up over packed rows [gate | up]: 7 rows of 2 × 13 (odd widths, no 16-byte rows).
        let packed = t(&a[..7 * 26]).reshape([7, 26]).unwrap();
        let r = Tape::no_grad().swiglu_packed(&Var::constant(packed)).and_then(|y| y.value().to_vec_f64());
        out.push(("swiglu_packed", r));
        let (mut p, mut m, mut v) = (t(&a), t(&vec![0.0; n]), t(&vec![0.0; n]));
        let h = AdamWStep {
            decay: 0.99,
            one_minus_beta1: 0.1,
            beta2: 0.999,
            one_minus_beta2: 0.001,
            neg_step_size: -0.01,
            bc2_sqrt: 0.0316,
            eps: 1e-8,
        };
        let r = p
            .adamw_step_at(200, &t(&b[..600]), &mut m, &mut v, &h, None)
            .and_then(|()| Ok([p.to_vec_f64()?, m.to_vec_f64()?, v.to_vec_f64()?].concat()));
        out.push(("adamw", r));
        // The same step writing the updated weights into a bf16 copy.
        let (mut p, mut m, mut v) = (t(&a), t(&vec![0.0; n]), t(&vec![0.0; n]));
        let r = t(&a).to_dtype(DType::BF16).and_then(|mut w| {
            p.adamw_step_at(200, &t(&b[..600]), &mut m, &mut v, &h, Some(&mut w))?;
            Ok([p.to_vec_f64()?, w.to_vec_f64()?].concat())
        });
        out.push(("adamw_bf16_copy", r));
        out.push((
            "cast",
            t(&a).to_dtype(DType::BF16).and_then(|x| x.to_dtype(DType::F32)).and_then(|x| x.to_vec_f64()),
        ));
        out
    };
    let want = run_on(Device::Cpu);
    for (name, r) in &want {
        assert!(r.is_ok(), "cpu {name}: {:?}", r.as_ref().err());
    }
    // The CPU results against what the operations mean.
    let w = |name: &str| want.iter().find(|(n, _)| *n == name).unwrap().1.as_ref().unwrap().clone();
    let f32v = |x: f64| x as f32 as f64;
    assert_eq!(w("add_at")[150], f32v(f32v(a[150]) + f32v(b[50])));
    assert_eq!(w("add_at")[99], f32v(a[99]));
    assert_eq!(w("copy_at")[7..307], b[..300].iter().map(|&x| f32v(x)).collect::<Vec<_>>());
    assert!(w("fill").iter().all(|&x| x == 0.0));
    assert!(w("fill_nonzero").iter().all(|&x| x == -1.75));
    assert!(w("fill_bf16").iter().all(|&x| x == 3.296875), "3.3 rounds to 3.296875 in bf16");
    assert_eq!(w("copy_strided_transposed")[1], f32v(a[40]), "[0, 1] of the transpose is [1, 0]");
    // cube'[i, j, k] = cube[k, j + 3, i] (a 10 × 4 × 10 result).
    assert_eq!(w("copy_strided_3d")[2 * 40 + 2 * 10 + 7], f32v(a[7 * 100 + 5 * 10 + 2]));
    assert_eq!(w("copy_strided_columns_bf16")[5 + 4], half::bf16::from_f64(a[10 + 6]).to_f64());
    assert_eq!(w("copy_rows_packed")[124 * 8..1000], b[8..16].iter().map(|&x| f32v(x)).collect::<Vec<_>>());
    assert_eq!(w("copy_rows_out_of_range_refused"), vec![1.0]);
    assert_eq!(w("scale")[3], (f32v(a[3]) as f32 * -0.37f32) as f64);
    let ss: f64 = a.iter().map(|&x| f32v(x) * f32v(x)).sum();
    assert!((w("sum_squares")[0] - ss).abs() < 1e-9 * ss);
    assert_eq!(w("copy_rows")[990..1000], b[20..30].iter().map(|&x| f32v(x)).collect::<Vec<_>>());
    assert_eq!(w("copy_rows")[10..20], a[10..20].iter().map(|&x| f32v(x)).collect::<Vec<_>>());
    let adam = w("adamw");
    assert_eq!(adam[199], f32v(a[199]), "outside the range: untouched");
    assert_ne!(adam[200], f32v(a[200]));
    let copy = w("adamw_bf16_copy");
    assert_eq!(copy[..n], adam[..n], "the copy does not change the update");
    assert_eq!(copy[n + 199], half::bf16::from_f32(a[199] as f32).to_f64(), "outside: untouched");
    assert_eq!(copy[n + 200], half::bf16::from_f32(adam[200] as f32).to_f64());
    assert!(w("cast").iter().zip(&a).all(|(c, x)| (c - x).abs() <= x.abs() / 256.0));

    let Some(dev) = cuda_or_skip("device_ops::in_place_operations_match_the_cpu") else { return };
    let device = Device::Cuda(dev.ordinal());
    for ((name, got), (_, want)) in run_on(device).into_iter().zip(&want) {
        match got {
            Ok(g) => {
                let want = want.as_ref().unwrap();
                let scale = want.iter().fold(1e-30f64, |m, x| m.max(x.abs()));
                let err = g.iter().zip(want).fold(0.0f64, |m, (x, y)| m.max((x - y).abs() / scale));
                assert!(err <= 1e-6, "{device} {name}: error {err:.2e}");
            }
            // Every op has a CUDA kernel now: Unsupported is a failure too.
            Err(e) => panic!("{device} {name}: {e}"),
        }
    }
}

/// NaN inputs in one row stay in that row through both norms: a kernel reading or writing out of
/// its row would spread them, and an output it leaves unwritten would show as NaN elsewhere.
#[test]
fn nan_rows_stay_in_their_rows() {
    let (rows, cols) = (37, 61);
    let mut x: Vec<f32> = (0..rows * cols).map(|i| ((i * 7919) % 97) as f32 / 50.0 - 1.0).collect();
    x[5 * cols..6 * cols].iter_mut().for_each(|v| *v = f32::NAN);
    let mut devices = vec![Device::Cpu];
    if let Some(d) = cuda_or_skip("device_ops::nan_rows_stay_in_their_rows") {
        devices.push(Device::Cuda(d.ordinal()));
    }
    for device in devices {
        let t =
            |v: Vec<f32>, s: &[usize]| Tensor::from_vec(v, s.to_vec()).unwrap().to_device(device).unwrap();
        let mut tape = Tape::new();
        let xv = tape.leaf(t(x.clone(), &[rows, cols]), false);
        let w = tape.leaf(t(vec![1.0; cols], &[cols]), true);
        let b = tape.leaf(t(vec![0.5; cols], &[cols]), true);
        let y1 = tape.rms_norm(&xv, &w, 1e-6).unwrap();
        let y2 = tape.layer_norm(&xv, &w, &b, 1e-6).unwrap();
        for y in [y1, y2] {
            let yv = y.value().to_vec_f32().unwrap();
            for r in 0..rows {
                let row = &yv[r * cols..(r + 1) * cols];
                if r == 5 {
                    assert!(row.iter().all(|v| v.is_nan()), "{device}: row 5 should be NaN");
                } else {
                    assert!(row.iter().all(|v| v.is_finite()), "{device}: row {r} has a non-finite value");
                }
            }
        }
    }
}

/// The generation loop's state ops on `device` (compared with the CPU by the caller): the rows of
/// a step, and one draw applied to four slots — one ending at max_new, one at a stop token, one
/// already done (untouched), one going on.
fn decode_state_cases(device: Device) -> Vec<(&'static str, gkd::Result<Vec<f64>>)> {
    let u = |v: &[u32]| Tensor::from_u32(v, device).unwrap();
    #[rustfmt::skip]
    let state = [11, 12, 13, 14, /* pos */ 2, 8, 0, 5, /* generated */ 0, 1, 2, 0, /* done */ 0, 0, 0, 1, /* seq */ 7, 8, 9, 10];
    let rows = u(&state).decode_rows(&u(&[2, 0, 3]), 10).and_then(|r| r.to_vec_f64());
    let advance = || -> gkd::Result<Vec<f64>> {
        let mut st = u(&state);
        let mut out_t = u(&[0; 12]);
        let mut out_l = Tensor::zeros([24], DType::F32, device)?;
        let lp = Tensor::from_vec(vec![-0.5f32, -0.7, -1.5, -1.25, -2.0, -3.0, -0.125, -0.25], [8])?
            .to_device(device)?;
        st.decode_advance_(
            &u(&[2, 0, 3, 1]),
            &u(&[5, 99, 6, 42]),
            &lp,
            &u(&[99]),
            3,
            &mut out_t,
            &mut out_l,
        )?;
        Ok([st.to_vec_f64()?, out_t.to_vec_f64()?, out_l.to_vec_f64()?].concat())
    };
    vec![("decode_rows", rows), ("decode_advance", advance())]
}

/// The decode step's fused rotary embedding and cache append on `device` (compared with the CPU by
/// the caller): 3 rows of 3 query and 2 key/value heads of dimension 8, rotated at positions far
/// apart (a wrong angle or a swapped half moves every output), appended to rows 5, 0 and 9 of
/// 10-row caches; the returned q, both caches whole (untouched rows included), and a vouched
/// row past the caches skipped rather than written.
fn rope_append_cases(
    device: Device,
    t: &dyn Fn(&[f64]) -> Tensor,
) -> Vec<(&'static str, gkd::Result<Vec<f64>>)> {
    let vals = |n: usize, s: f64| (0..n).map(|i| (i as f64 * 0.61 + s).sin() * 1.7).collect::<Vec<f64>>();
    let inv_freq = [1.0, 0.3, 0.05, 0.001];
    let case = |rows: &[u32], vouched: bool| -> gkd::Result<Vec<f64>> {
        let (q, k, v) =
            (t(&vals(3 * 24, 0.1)).reshape([3, 24])?, t(&vals(3 * 16, 0.7)), t(&vals(3 * 16, 1.3)));
        let (mut kc, mut vc) = (t(&vals(160, 2.0)), t(&vals(160, 2.9)));
        let pos = Tensor::from_u32(&[0, 17, 1000], device)?;
        let rows = Tensor::from_u32(rows, device)?;
        let qy = kc.rope_append_(
            &mut vc,
            &q,
            &k.reshape([3, 16])?,
            &v.reshape([3, 16])?,
            &pos,
            &rows,
            &inv_freq,
            (3, 2),
            vouched,
        )?;
        Ok([qy.to_vec_f64()?, kc.to_vec_f64()?, vc.to_vec_f64()?].concat())
    };
    vec![
        ("rope_append", case(&[5, 0, 9], false)),
        ("rope_append_vouched_skips_past_the_cache", case(&[5, 10, 9], true)),
    ]
}
