//! AdamW against a hand-computed example and PyTorch, exact resume through the state file, the
//! compute-weights copy of the updated weights, the learning-rate schedules against hand-computed
//! values, and gradient clipping; on a GPU, AdamW and the gradient norm (sum of squares) on CUDA
//! against the CPU backend and an f64 sum.

mod common;

use common::cuda_or_skip;
use common::harness::normals;
use gkd::backend::ops::AdamWStep;
use gkd::optim::{global_norm, AdamW, AdamWConfig, GradClip, LrSchedule, ParamGroup, ScheduleKind};
use gkd::{DType, Device, Tensor};
use std::path::PathBuf;

fn t(v: &[f32]) -> Tensor {
    Tensor::from_vec(v.to_vec(), [v.len()]).unwrap()
}

fn v(t: &Tensor) -> Vec<f32> {
    t.to_vec_f32().unwrap()
}

/// One group with decay over n parameters.
fn all(n: usize) -> Vec<ParamGroup> {
    vec![ParamGroup { range: 0..n, decay: true }]
}

/// Each element within `rel` of the reference, relative to max(|reference|, 1e-3).
fn close(got: &[f32], expected: &[f64], rel: f64) {
    assert_eq!(got.len(), expected.len());
    for (i, (&g, &e)) in got.iter().zip(expected).enumerate() {
        assert!(
            (g as f64 - e).abs() <= rel * e.abs().max(1e-3),
            "element {i}: {g} vs {e} (all: {got:?} vs {expected:?})"
        );
    }
}

/// One scalar parameter, two steps, worked out by hand (f64):
///   p0 = 1, g = 0.5 then −0.25, lr = 0.1, λ = 0.1, β = (0.9, 0.999), ε = 1e-8.
/// step 1: p = 1·(1 − 0.01) = 0.99;  m = 0.05;  v = 0.001·0.25 = 0.00025
///         m̂ = 0.05 / 0.1 = 0.5;  v̂ = 0.00025 / 0.001 = 0.25
///         p = 0.99 − 0.1·0.5 / (0.5 + 1e-8) = 0.890000002
/// step 2: p = 0.890000002·0.99 = 0.88110000198;  m = 0.045 − 0.025 = 0.02
///         v = 0.999·0.00025 + 0.001·0.0625 = 0.00031225
///         m̂ = 0.02 / 0.19 = 0.105263157895;  v̂ = 0.00031225 / 0.001999 = 0.156203101551
///         p = 0.88110000198 − 0.1·0.105263157895 / (0.395225380702 + 1e-8) = 0.854466298688
#[test]
fn adamw_two_steps_by_hand() {
    let cfg = AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1 };
    let mut opt = AdamW::new(cfg).unwrap();
    let mut p = t(&[1.0]);
    opt.step(&mut p, &t(&[0.5]), &all(1), 0.1, None).unwrap();
    close(&v(&p), &[0.890000002], 1e-6);
    let (m, s) = opt.moments().unwrap();
    close(&v(m), &[0.05], 1e-6);
    close(&v(s), &[0.00025], 1e-6);
    opt.step(&mut p, &t(&[-0.25]), &all(1), 0.1, None).unwrap();
    close(&v(&p), &[0.854466298688], 1e-6);
    let (m, s) = opt.moments().unwrap();
    close(&v(m), &[0.02], 1e-6);
    close(&v(s), &[0.00031225], 1e-6);
    assert_eq!(opt.steps_taken(), 2);
}

const GRADS: [([f32; 3], [f32; 4]); 3] = [
    ([0.3, -0.2, 0.05], [1.0, -0.5, 0.0, 2.0]),
    ([-0.1, 0.4, 0.05], [0.5, 0.5, -1.0, 1e-3]),
    ([0.2, 0.0, -0.3], [-2.0, 0.25, 0.75, -0.5]),
];

/// Two parameters (3 and 4 elements) in one flat buffer, both decayed.
fn run_three_steps(cfg: AdamWConfig, lrs: [f32; 3]) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut p = t(&[0.5, -1.25, 2.0, 0.1, 0.2, -0.3, 0.4]);
    let groups = [ParamGroup { range: 0..3, decay: true }, ParamGroup { range: 3..7, decay: true }];
    let mut opt = AdamW::new(cfg).unwrap();
    for ((g0, g1), lr) in GRADS.iter().zip(lrs) {
        opt.step(&mut p, &t(&[&g0[..], &g1[..]].concat()), &groups, lr, None).unwrap();
    }
    let (p, (m, s)) = (v(&p), opt.moments().unwrap());
    (p[..3].to_vec(), p[3..].to_vec(), v(m)[3..].to_vec(), v(s)[3..].to_vec())
}

/// Reference values from torch 2.15 (CPU, float32):
///
/// ```python
/// import torch
/// def run(cfg, lrs):
///     p0 = torch.tensor([0.5, -1.25, 2.0], requires_grad=True)
///     p1 = torch.tensor([[0.1, 0.2], [-0.3, 0.4]], requires_grad=True)
///     opt = torch.optim.AdamW([p0, p1], lr=lrs[0], foreach=False, **cfg)
///     grads = [([0.3, -0.2, 0.05], [[1.0, -0.5], [0.0, 2.0]]),
///              ([-0.1, 0.4, 0.05], [[0.5, 0.5], [-1.0, 1e-3]]),
///              ([0.2, 0.0, -0.3], [[-2.0, 0.25], [0.75, -0.5]])]
///     for (g0, g1), lr in zip(grads, lrs):
///         for group in opt.param_groups: group["lr"] = lr
///         p0.grad = torch.tensor(g0); p1.grad = torch.tensor(g1)
///         opt.step(, None)
///     fmt = lambda t: ", ".join("%.9g" % x for x in t.detach().flatten().tolist())
///     print(fmt(p0), fmt(p1), fmt(opt.state[p1]["exp_avg"]), fmt(opt.state[p1]["exp_avg_sq"]))
/// run(dict(betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01), [1e-3, 1e-3, 1e-3])
/// run(dict(betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1), [0.05, 0.02, 0.01])
/// ```
#[test]
fn adamw_matches_pytorch() {
    let (p0, p1, m, s) = run_three_steps(AdamWConfig::default(), [1e-3; 3]);
    close(&p0, &[0.497981697, -1.2496115, 1.99838436], 1e-6);
    close(&p1, &[0.098271206, 0.200689927, -0.299170166, 0.397969931], 1e-6);
    close(&m, &[-0.0740000159, 0.029500002, -0.0149999978, 0.112090006], 1e-6);
    close(&s, &[0.00524775125, 0.000561750261, 0.00156150002, 0.00424200529], 1e-6);

    let cfg = AdamWConfig { beta1: 0.8, beta2: 0.95, eps: 1e-6, weight_decay: 0.1 };
    let (p0, p1, m, s) = run_three_steps(cfg, [0.05, 0.02, 0.01]);
    close(&p0, &[0.433163464, -1.2015959, 1.91933572], 1e-6);
    close(&p1, &[0.0338879377, 0.242882758, -0.281823397, 0.331475526], 1e-6);
    close(&m, &[-0.191999987, 0.0660000071, -0.0100000026, 0.156159997], 1e-6);
    close(&s, &[0.256999999, 0.0262812488, 0.0756250024, 0.193000033], 1e-6);
}

#[test]
fn groups_without_decay_are_exempt() {
    let cfg = AdamWConfig { weight_decay: 0.5, ..AdamWConfig::default() };
    let steps = [[0.1f32, -0.2], [0.3, 0.1]];
    // Two parameters in one buffer, decay on the first only ...
    let mut both = t(&[1.0, 2.0, 1.0, 2.0]);
    let groups = [ParamGroup { range: 0..2, decay: true }, ParamGroup { range: 2..4, decay: false }];
    let mut masked = AdamW::new(cfg).unwrap();
    // ... against each alone, with and without decay.
    let (mut with_decay, mut without) = (t(&[1.0, 2.0]), t(&[1.0, 2.0]));
    let mut opt_with = AdamW::new(cfg).unwrap();
    let mut opt_without = AdamW::new(AdamWConfig { weight_decay: 0.0, ..cfg }).unwrap();
    for g in &steps {
        masked.step(&mut both, &t(&[&g[..], &g[..]].concat()), &groups, 0.01, None).unwrap();
        opt_with.step(&mut with_decay, &t(g), &all(2), 0.01, None).unwrap();
        opt_without.step(&mut without, &t(g), &all(2), 0.01, None).unwrap();
    }
    let both = v(&both);
    assert_eq!(both[..2], v(&with_decay)[..]);
    assert_eq!(both[2..], v(&without)[..]);
    assert_ne!(both[..2], both[2..]);
    // Groups must tile the buffer in order.
    let mut bad = AdamW::new(cfg).unwrap();
    let gaps = [ParamGroup { range: 0..1, decay: true }, ParamGroup { range: 2..4, decay: false }];
    assert!(bad.step(&mut t(&[0.0; 4]), &t(&[0.0; 4]), &gaps, 0.1, None).is_err());
    assert!(bad.step(&mut t(&[0.0; 4]), &t(&[0.0; 4]), &all(3), 0.1, None).is_err());
}

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gkd-optim-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn state_file_resumes_exactly() {
    let cfg = AdamWConfig { beta1: 0.85, beta2: 0.97, eps: 1e-7, weight_decay: 0.05 };
    let grads = |k: usize| -> Tensor {
        let g0 = (0..5).map(|i| ((i * 7 + k * 3) % 11) as f32 / 11.0 - 0.5);
        let g1 = (0..3).map(|i| ((i * 5 + k * 2) % 7) as f32 / 7.0 - 0.4);
        t(&g0.chain(g1).collect::<Vec<_>>())
    };
    let init = || t(&[0.3, -0.1, 0.7, 1.5, -2.0, 0.01, 0.02, -0.03]);
    let params = [ParamGroup { range: 0..5, decay: true }, ParamGroup { range: 5..8, decay: false }];
    let lr = |k: usize| 1e-2 / (1.0 + k as f32);

    let mut a = init();
    let mut straight = AdamW::new(cfg).unwrap();
    for k in 0..5 {
        straight.step(&mut a, &grads(k), &params, lr(k), None).unwrap();
    }

    let dir = scratch("resume");
    let path = dir.join("optimizer.safetensors");
    let mut b = init();
    let mut first = AdamW::new(cfg).unwrap();
    for k in 0..3 {
        first.step(&mut b, &grads(k), &params, lr(k), None).unwrap();
    }
    first.save(&path, &params).unwrap();
    drop(first);
    let mut resumed = AdamW::load(&path, &params, Device::Cpu).unwrap();
    assert_eq!(resumed.steps_taken(), 3);
    assert_eq!(*resumed.config(), cfg);
    for k in 3..5 {
        resumed.step(&mut b, &grads(k), &params, lr(k), None).unwrap();
    }
    assert_eq!(v(&a), v(&b), "bit-identical to the uninterrupted run");
    let (m1, s1) = straight.moments().unwrap();
    let (m2, s2) = resumed.moments().unwrap();
    assert_eq!((v(m1), v(s1)), (v(m2), v(s2)));

    // A state for other parameter shapes is refused, not silently reinterpreted.
    let other = [ParamGroup { range: 0..4, decay: true }, ParamGroup { range: 4..7, decay: false }];
    let e = AdamW::load(&path, &other, Device::Cpu).unwrap_err();
    assert!(e.to_string().contains("parameter 0 has 4 elements but its optimizer state has 5"), "{e}");
    let e = AdamW::load(&path, &params[..1], Device::Cpu).unwrap_err();
    assert!(e.to_string().contains("holds 2 parameters but the model has 1"), "{e}");
    let garbage = dir.join("garbage.safetensors");
    std::fs::write(&garbage, b"not a safetensors file").unwrap();
    assert!(AdamW::load(&garbage, &params, Device::Cpu)
        .unwrap_err()
        .to_string()
        .contains("garbage.safetensors"));
    assert!(AdamW::load(&dir.join("missing"), &params, Device::Cpu).is_err());
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn adamw_rejects_bad_input() {
    assert!(AdamW::new(AdamWConfig { beta1: 1.0, ..AdamWConfig::default() }).is_err());
    assert!(AdamW::new(AdamWConfig { eps: f64::NAN, ..AdamWConfig::default() }).is_err());
    assert!(AdamW::new(AdamWConfig { weight_decay: -0.1, ..AdamWConfig::default() }).is_err());
    let mut opt = AdamW::new(AdamWConfig::default()).unwrap();
    let mut p = t(&[0.0; 3]);
    assert!(opt.step(&mut p, &t(&[0.0; 2]), &all(3), 0.1, None).is_err());
    assert!(opt.step(&mut p, &t(&[0.0; 3]), &[], 0.1, None).is_err());
    assert!(opt.step(&mut p, &t(&[0.0; 3]), &all(3), f32::NAN, None).is_err());
    let f64_grads = Tensor::from_vec(vec![0.0f64; 3], [3]).unwrap();
    assert!(opt.step(&mut p, &f64_grads, &all(3), 0.1, None).is_err());
    assert_eq!(opt.steps_taken(), 0, "a refused step changes nothing");
    assert!(opt.moments().is_none());
}

#[test]
fn schedules_match_hand_computed_values() {
    let m = |kind, w, t, s| LrSchedule::new(kind, 1.0, w, t).unwrap().multiplier(s);
    let cos = ScheduleKind::Cosine { min_lr_ratio: 0.0 };
    let eps = 1e-12;
    // Warmup: s / W, so the first step (s = 0) has lr 0, as in transformers.
    assert_eq!(m(cos, 10, 110, 0), 0.0);
    assert!((m(cos, 10, 110, 5) - 0.5).abs() < eps);
    assert!((m(cos, 10, 110, 10) - 1.0).abs() < eps);
    // Cosine, W = 10, T = 110: progress p = (s − 10) / 100; ½(1 + cos πp).
    assert!((m(cos, 10, 110, 35) - 0.5 * (1.0 + std::f64::consts::FRAC_1_SQRT_2)).abs() < eps); // p = ¼
    assert!((m(cos, 10, 110, 60) - 0.5).abs() < eps); // p = ½
    assert!((m(cos, 10, 110, 85) - 0.5 * (1.0 - std::f64::consts::FRAC_1_SQRT_2)).abs() < eps); // p = ¾
    assert!(m(cos, 10, 110, 110).abs() < eps);
    assert!(m(cos, 10, 110, 200).abs() < eps, "stays at the floor past the end");
    // With a floor of 0.1: 0.1 + 0.9 · ½(1 + cos πp).
    let floor = ScheduleKind::Cosine { min_lr_ratio: 0.1 };
    assert!((m(floor, 10, 110, 60) - 0.55).abs() < eps);
    assert!((m(floor, 10, 110, 110) - 0.1).abs() < eps);
    assert!((m(floor, 10, 110, 5) - 0.5).abs() < eps, "warmup ignores the floor");
    // Linear, W = 10, T = 110: (110 − s) / 100.
    let lin = ScheduleKind::Linear;
    assert!((m(lin, 10, 110, 35) - 0.75).abs() < eps);
    assert!((m(lin, 10, 110, 100) - 0.1).abs() < eps);
    assert_eq!(m(lin, 10, 110, 110), 0.0);
    assert_eq!(m(lin, 10, 110, 130), 0.0);
    // No warmup: the first step has the peak.
    assert_eq!(m(lin, 0, 100, 0), 1.0);
    assert!((m(lin, 0, 100, 1) - 0.99).abs() < eps);
    // Constant with and without warmup.
    assert!((m(ScheduleKind::Constant, 4, 0, 2) - 0.5).abs() < eps);
    assert_eq!(m(ScheduleKind::Constant, 4, 0, 4), 1.0);
    assert_eq!(m(ScheduleKind::Constant, 0, 0, 0), 1.0);
    // lr = peak · multiplier.
    let s = LrSchedule::new(lin, 2e-4, 10, 110).unwrap();
    assert_eq!(s.lr(35), (2e-4f64 * 0.75) as f32);

    assert_eq!("cosine".parse::<ScheduleKind>().unwrap(), cos);
    assert!("exponential".parse::<ScheduleKind>().is_err());
    assert!(LrSchedule::new(lin, 1.0, 20, 10).is_err());
    assert!(LrSchedule::new(ScheduleKind::Cosine { min_lr_ratio: 1.5 }, 1.0, 0, 10).is_err());
    assert!(LrSchedule::new(lin, f64::NAN, 0, 10).is_err());
}

#[test]
fn clipping_by_global_norm() {
    // ‖(3, 0, 4)‖ = 5.
    let mut g = t(&[3.0, 0.0, 4.0]);
    assert_eq!(global_norm(&g).unwrap(), 5.0);
    let norm = GradClip::new(10.0).unwrap().clip(&mut g).unwrap();
    assert_eq!((norm, v(&g)), (5.0, vec![3.0, 0.0, 4.0]), "under the max: untouched");
    let norm = GradClip::new(1.0).unwrap().clip(&mut g).unwrap();
    assert_eq!(norm, 5.0, "the norm before clipping");
    let coef = 1.0 / (5.0 + 1e-6);
    close(&v(&g), &[3.0 * coef, 0.0, 4.0 * coef], 1e-6);
    assert!((global_norm(&g).unwrap() - 1.0).abs() < 1e-6);

    // A non-finite norm is an error naming it, and the gradients are left alone.
    let mut bad = t(&[1.0, f32::NAN]);
    let e = GradClip::new(1.0).unwrap().clip(&mut bad).unwrap_err();
    assert!(e.to_string().contains("gradient norm is NaN"), "{e}");
    assert_eq!(v(&bad)[0], 1.0);
    let mut huge = t(&[f32::INFINITY]);
    let e = GradClip::new(1.0).unwrap().clip(&mut huge).unwrap_err();
    assert!(e.to_string().contains("gradient norm is inf"), "{e}");

    // Infinity measures without clipping; zero or NaN is refused.
    let mut g = t(&[300.0, 400.0]);
    assert_eq!(GradClip::new(f32::INFINITY).unwrap().clip(&mut g).unwrap(), 500.0);
    assert_eq!(v(&g), [300.0, 400.0]);
    assert!(GradClip::new(0.0).is_err());
    assert!(GradClip::new(f32::NAN).is_err());
}

/// x rounded to bf16, nearest even, computed here from the bits (independent of the engine's
/// casts), back as f32. (No NaN in these tests.)
fn bf16_rne(x: f32) -> f32 {
    let u = x.to_bits();
    f32::from_bits(u.wrapping_add(0x7fff + ((u >> 16) & 1)) & 0xffff_0000)
}

fn f32s(x: &[f64]) -> Vec<f32> {
    x.iter().map(|&x| x as f32).collect()
}

/// The compute-weights copy on the CPU: an f32 copy equals the masters, a bf16 copy equals the
/// masters rounded to nearest even, bit for bit; the copy never changes the masters; elements
/// outside the updated range keep their value; wrong lengths and dtypes are refused.
#[test]
fn adamw_writes_the_compute_weights() {
    let n = 9;
    let p0 = f32s(&normals(n, 0.0, 1.0, 5));
    let groups = [ParamGroup { range: 0..5, decay: true }, ParamGroup { range: 5..n, decay: false }];
    let cfg = AdamWConfig { weight_decay: 0.1, ..AdamWConfig::default() };
    let (mut plain, mut with_f32, mut with_bf16) = (t(&p0), t(&p0), t(&p0));
    let mut w32 = t(&[7.0; 9]);
    let mut w16 = t(&[7.0; 9]).to_dtype(DType::BF16).unwrap();
    let mut opts = [(); 3].map(|()| AdamW::new(cfg).unwrap());
    for k in 0..3 {
        let g = t(&f32s(&normals(n, 0.0, 1.0, 100 + k)));
        opts[0].step(&mut plain, &g, &groups, 0.05, None).unwrap();
        opts[1].step(&mut with_f32, &g, &groups, 0.05, Some(&mut w32)).unwrap();
        opts[2].step(&mut with_bf16, &g, &groups, 0.05, Some(&mut w16)).unwrap();
    }
    let masters = v(&plain);
    assert_eq!(v(&with_f32), masters);
    assert_eq!(v(&with_bf16), masters);
    assert_eq!(v(&w32), masters);
    assert_eq!(w16.dtype(), DType::BF16);
    let want16: Vec<f32> = masters.iter().map(|&x| bf16_rne(x)).collect();
    assert_eq!(v(&w16), want16);
    assert!(want16.iter().zip(&masters).any(|(a, b)| a != b), "the rounding must show");

    // Part of the buffer: the copy's other elements are untouched.
    let h = AdamWStep {
        decay: 0.99,
        one_minus_beta1: 0.1,
        beta2: 0.999,
        one_minus_beta2: 0.001,
        neg_step_size: -0.01,
        bc2_sqrt: 0.0316,
        eps: 1e-8,
    };
    let (mut p, mut m, mut s) = (t(&p0), t(&[0.0; 9]), t(&[0.0; 9]));
    let mut w = t(&[7.0; 9]).to_dtype(DType::BF16).unwrap();
    p.adamw_step_at(3, &t(&[0.5, -0.25, 1.0, 2.0]), &mut m, &mut s, &h, Some(&mut w)).unwrap();
    let (p, w) = (v(&p), v(&w));
    assert_eq!(w[..3], [7.0; 3]);
    assert_eq!(w[7..], [7.0; 2]);
    assert_eq!(w[3..7], p[3..7].iter().map(|&x| bf16_rne(x)).collect::<Vec<_>>());
    assert_ne!(p[3], p0[3]);

    // Refused: a copy of another length or dtype, or on another device; nothing changes.
    let mut opt = AdamW::new(cfg).unwrap();
    let mut p = t(&p0);
    let g = t(&[0.1; 9]);
    assert!(opt.step(&mut p, &g, &groups, 0.1, Some(&mut t(&[0.0; 8]))).is_err());
    let mut ids = Tensor::from_u32(&[0; 9], Device::Cpu).unwrap();
    let e = opt.step(&mut p, &g, &groups, 0.1, Some(&mut ids)).unwrap_err();
    assert!(e.to_string().contains("f32 or bf16"), "{e}");
    let mut f64s = Tensor::from_vec(vec![0.0f64; 9], [9]).unwrap();
    assert!(opt.step(&mut p, &g, &groups, 0.1, Some(&mut f64s)).is_err());
    assert_eq!(opt.steps_taken(), 0);
    assert!(opt.moments().is_none());
    assert_eq!(v(&p), p0);
    // The same checks below the optimizer: the storage refuses a short copy or a u32 one.
    let (mut m, mut s) = (t(&[0.0; 9]), t(&[0.0; 9]));
    assert!(p.adamw_step_at(0, &g, &mut m, &mut s, &h, Some(&mut t(&[0.0; 8]))).is_err());
    let mut ids = Tensor::from_u32(&[0; 9], Device::Cpu).unwrap();
    assert!(p.adamw_step_at(0, &g, &mut m, &mut s, &h, Some(&mut ids)).is_err());
}

/// Distance in f32 units in the last place (finite values of one sign or near zero).
fn ulps(a: f32, b: f32) -> u64 {
    let key = |x: f32| {
        let u = x.to_bits() as i64;
        if u & (1 << 31) != 0 {
            -(u & 0x7fff_ffff)
        } else {
            u
        }
    };
    (key(a) - key(b)).unsigned_abs()
}

fn max_ulps(got: &[f32], want: &[f32]) -> u64 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(&a, &b)| if a.is_nan() || b.is_nan() { u64::MAX } else { ulps(a, b) })
        .max()
        .unwrap_or(0)
}

/// AdamW on CUDA against the CPU backend: five steps over 100 003 f32 masters (a length not a
/// multiple of 4), a decayed group and an undecayed one starting at element 37 (not 16-byte
/// aligned: the kernel's scalar head, float4 body and scalar tail), with the bf16 and the f32
/// compute-weights copies; then one step with the gradient at another alignment than the weights
/// (the all-scalar path), and one without decay anywhere.
///
/// Bound: both backends run the same correctly rounded f32 operations in the same order (the
/// kernel uses explicitly rounded intrinsics, so nothing is contracted into an FMA), so the bits
/// should agree; 1 ulp is what one differently rounded final operation (p + Δ) could cause, and
/// more means a different formula. The copies are checked exactly: the f32 copy is the CUDA
/// masters, the bf16 copy their round-to-nearest-even, bit for bit.
#[test]
fn adamw_on_cuda_matches_the_cpu() {
    let Some(dev) = cuda_or_skip("optim::adamw_on_cuda_matches_the_cpu") else { return };
    adamw_against_the_cpu(Device::Cuda(dev.ordinal()));
}

/// The same comparison with the CPU on both sides: it must pass trivially, which checks the
/// test itself (its independent bf16 rounding against the CPU backend's copy, the ranges).
#[test]
fn adamw_comparison_passes_on_the_cpu() {
    adamw_against_the_cpu(Device::Cpu);
}

fn adamw_against_the_cpu(gpu: Device) {
    let n = 100_003;
    let p0 = f32s(&normals(n, 0.0, 1.0, 11));
    let groups = [ParamGroup { range: 0..37, decay: true }, ParamGroup { range: 37..n, decay: false }];
    let cfg = AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 };
    let grads: Vec<Vec<f32>> = (0..5).map(|k| f32s(&normals(n, 0.0, 1.0 + k as f64, 20 + k))).collect();

    let mut cpu_p = t(&p0);
    let mut cpu_opt = AdamW::new(cfg).unwrap();
    let mut gpu_p = t(&p0).to_device(gpu).unwrap();
    let mut gpu_opt = AdamW::new(cfg).unwrap();
    for (k, g) in grads.iter().enumerate() {
        let lr = 1e-2 / (1 + k) as f32;
        cpu_opt.step(&mut cpu_p, &t(g), &groups, lr, None).unwrap();
        // Alternate the copies: bf16 on even steps, f32 on odd ones.
        let dtype = if k % 2 == 0 { DType::BF16 } else { DType::F32 };
        // NaN until the kernel writes it.
        let mut w = Tensor::full([n], f64::NAN, dtype, gpu).unwrap();
        gpu_opt.step(&mut gpu_p, &t(g).to_device(gpu).unwrap(), &groups, lr, Some(&mut w)).unwrap();
        let masters = v(&gpu_p);
        let d = max_ulps(&masters, &v(&cpu_p));
        assert!(d <= 1, "step {k}: CUDA masters {d} ulps from the CPU");
        let copy = v(&w);
        if dtype == DType::BF16 {
            let want: Vec<f32> = masters.iter().map(|&x| bf16_rne(x)).collect();
            assert!(copy == want, "step {k}: the bf16 copy is not the masters rounded to nearest even");
        } else {
            assert!(copy == masters, "step {k}: the f32 copy is not the masters");
        }
    }
    let ((cm, cv), (gm, gv)) = (cpu_opt.moments().unwrap(), gpu_opt.moments().unwrap());
    assert!(max_ulps(&v(gm), &v(cm)) <= 1, "first moments");
    assert!(max_ulps(&v(gv), &v(cv)) <= 1, "second moments");

    // The weights' range from element 5 with the gradient from element 2 of its buffer: they
    // reach 16-byte alignment at different elements (5 + 3 vs 2 + 2), so every element takes the
    // scalar path; and no decay (the multiply skipped).
    let h = AdamWStep {
        decay: 1.0,
        one_minus_beta1: 0.1,
        beta2: 0.999,
        one_minus_beta2: 0.001,
        neg_step_size: -0.02,
        bc2_sqrt: 0.0447,
        eps: 1e-8,
    };
    let len = n - 9;
    let wide = f32s(&normals(n, 0.0, 2.0, 40));
    let run = |device: Device| {
        let d = |x: &[f32]| t(x).to_device(device).unwrap();
        let (mut p, mut m, mut s) = (d(&p0), d(&f32s(&normals(n, 0.0, 0.1, 41))), d(&vec![1e-4; n]));
        let g = d(&wide).narrow(0, 2, len).unwrap();
        let mut w = Tensor::full([n], 3.0, DType::BF16, device).unwrap();
        p.adamw_step_at(5, &g, &mut m, &mut s, &h, Some(&mut w)).unwrap();
        (v(&p), v(&m), v(&s), v(&w))
    };
    let (cp, cm, cs, cw) = run(Device::Cpu);
    let (gp, gm, gs, gw) = run(gpu);
    assert!(max_ulps(&gp, &cp) <= 1, "unaligned gradient: weights");
    assert!(max_ulps(&gm, &cm) <= 1 && max_ulps(&gs, &cs) <= 1, "unaligned gradient: moments");
    assert_eq!(gw[..5], [3.0; 5], "before the range: untouched");
    assert_eq!(gw[5 + len..], [3.0; 4], "after the range: untouched");
    let want: Vec<f32> = gp[5..5 + len].iter().map(|&x| bf16_rne(x)).collect();
    assert!(gw[5..5 + len] == want[..], "unaligned gradient: the bf16 copy");
    let cpu_want: Vec<f32> = cp[5..5 + len].iter().map(|&x| bf16_rne(x)).collect();
    assert_eq!(cw[5..5 + len], cpu_want[..], "the CPU's copy too");
    assert_ne!(gp[5], p0[5]);

    // A copy that is not f32 or bf16 is refused by the backend.
    let d = |x: &[f32]| t(x).to_device(gpu).unwrap();
    let (mut p, mut m, mut s) = (d(&p0), d(&vec![0.0; n]), d(&vec![0.0; n]));
    let mut ids = Tensor::from_u32(&vec![0; n], gpu).unwrap();
    let e = p.adamw_step_at(0, &d(&wide), &mut m, &mut s, &h, Some(&mut ids)).unwrap_err();
    assert!(e.to_string().contains("u32"), "{e}");
}

/// Σ x² in f64 of the values as stored.
fn f64_sum_squares(x: &[f32]) -> f64 {
    x.iter().map(|&x| x as f64 * x as f64).sum()
}

/// The gradient norm's sum of squares on CUDA against an f64 sum, f32 and bf16.
///
/// Bound at 10M elements: the kernel gives each f32 accumulator k = ⌈n / (lanes · 1024 · 256)⌉
/// terms (lanes = 4 for f32, 8 for bf16): k = 10 (f32), 5 (bf16); each term is one FMA into it,
/// all terms ≥ 0, so the f32 stage is within γ_k ≈ k · 2⁻²⁴ ≤ 6.0e-7 of the exact sum,
/// relative; the f64 stages add ~1e-13. Hence 1e-6 relative, at every length here (k ≤ 10).
/// Deterministic: the same bits twice, and from a buffer at another alignment.
#[test]
fn sum_squares_on_cuda_matches_f64_and_is_deterministic() {
    let Some(dev) = cuda_or_skip("optim::sum_squares_on_cuda_matches_f64_and_is_deterministic") else {
        return;
    };
    let gpu = Device::Cuda(dev.ordinal());
    let big = 10_000_000;
    let host = f32s(&normals(big, 0.0, 1.0, 77));
    let x = t(&host).to_device(gpu).unwrap();
    let x16 = x.to_dtype(DType::BF16).unwrap();
    let host16 = v(&x16);
    for (name, x, values) in [("f32", &x, &host[..]), ("bf16", &x16, &host16[..])] {
        for len in [big, 1, 1023, 4097, 1_000_003] {
            let part = x.narrow(0, 0, len).unwrap();
            let got = part.sum_squares().unwrap();
            let want = f64_sum_squares(&values[..len]);
            assert!(want > 0.0);
            let rel = (got - want).abs() / want;
            assert!(rel <= 1e-6, "{name}, {len} elements: {got} vs {want} (relative {rel:.2e})");
            assert_eq!(got.to_bits(), part.sum_squares().unwrap().to_bits(), "{name}, {len}: run to run");
        }
        // From element 1 (not 16-byte aligned: element loads) and the same values copied to a
        // fresh buffer (aligned: vector loads): the same split of the sum, the same bits.
        let len = 1_000_001;
        let view = x.narrow(0, 1, len).unwrap();
        let copy = t(&values[1..1 + len]).to_device(gpu).unwrap().to_dtype(x.dtype()).unwrap();
        let (a, b) = (view.sum_squares().unwrap(), copy.sum_squares().unwrap());
        assert_eq!(a.to_bits(), b.to_bits(), "{name}: the result depends on the alignment ({a} vs {b})");
        let want = f64_sum_squares(&values[1..1 + len]);
        assert!((a - want).abs() <= 1e-6 * want, "{name} from element 1: {a} vs {want}");
    }
    let empty = x.narrow(0, 0, 0).unwrap();
    assert_eq!(empty.sum_squares().unwrap(), 0.0);

    // Clipping on the GPU: ‖(3, 0, 4)‖ = 5, scaled to norm 1.
    let mut g = t(&[3.0, 0.0, 4.0]).to_device(gpu).unwrap();
    assert_eq!(GradClip::new(1.0).unwrap().clip(&mut g).unwrap(), 5.0);
    let coef = 1.0 / (5.0 + 1e-6);
    close(&v(&g), &[3.0 * coef, 0.0, 4.0 * coef], 1e-6);
    let mut bad = t(&[1.0, f32::NAN]).to_device(gpu).unwrap();
    assert!(GradClip::new(1.0).unwrap().clip(&mut bad).is_err());
}
