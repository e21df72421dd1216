//! The CUDA divergence kernels, at the launcher level (every kernel path forced, strides, in place),
//! against the CPU reference (`gkd::backend::cpu::divergence_fwd_bwd` in f64, run on the same
//! inputs rounded to the kernel's dtype): every divergence, β ∈ {0, 0.1, 0.5, 0.9, 1},
//! τ ∈ {0.5, 1, 2}, masked rows, −inf entries, f32 and bf16, odd and large vocabularies, row
//! strides with padding, misaligned bases, in place and out of place, every kernel path (clusters
//! on sm_90 only), and the unfused baseline. (The op through the backend contract is in
//! tests/device_ops.rs.)
//!
//! Inputs are ordinary logits (normal, σ = 2) at every vocabulary and path, so each row's gradient
//! is large beside the tolerance: a kernel writing zeros, a sign flip or another row's gradient
//! fails. Logits up to ±80 (nearly one-hot rows, whose gradients are tiny) are a separate case
//! that checks robustness (finite, no NaN) with the bound derived below.
//!
//! Outputs are poisoned (NaN) before each launch; every element the kernel owns must be written
//! and every element it does not own (padding, the student when the gradient goes elsewhere) must
//! be left alone. Without a GPU each test prints a SKIPPED line and passes.
//!
//! Tolerances, from the fp32 error model. Loss within 1e-4 (f32) or 1e-3 (bf16) relative. Each
//! gradient element: |x − y| ≤ rel·|y| + 1e-5·max_row|y| (+ the extreme-case term), rel 1e-4 (f32)
//! or 1e-2 (bf16: the gradient is rounded to bf16); the row term covers cancellation in
//! differences like Q_k − P_k, whose inputs carry ~1e-6 relative error. With logits up to ±80 at
//! τ = 0.5 the exponents reach |a| = 160, where f32 values are ulp(160) = 1.5e-5 apart: a/τ, the
//! log-normalizer and log Q_k = a_k − lse each round by ≤ ulp(160)/2, so log Q_k (and log P_k) are
//! off by ≤ 2.4e-5, D by ≤ 4.8e-5, and the reverse-KL gradient Q_k(log Q_k − log P_k − D) by
//! ≤ 1.2e-4·Q_k ≤ 1.2e-4 (per unit of scale/τ): the extreme case adds 1.5e-4·(scale/τ)·
//! max(1, |D_r|/scale) (seen on the H100, 2026-11-27: a one-hot RKL row off by 1.04e-4).

mod common;

use common::cuda_or_skip;
use cudarc::driver::CudaSlice;
use gkd::backend::cpu::divergence_fwd_bwd as cpu_divergence;
use gkd::backend::cuda::divergence::{
    divergence_fwd_bwd, DivElem, DivergenceLaunch, KernelPath, LaunchPlan, StudentGrad,
};
use gkd::backend::cuda::divergence_unfused::divergence_unfused_fwd_bwd;
use gkd::backend::cuda::CudaDevice;
use gkd::backend::Divergence;
use gkd::DType;
use half::bf16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;

const ALL: [Divergence; 11] = [
    Divergence::ForwardKl,
    Divergence::ReverseKl,
    Divergence::Jsd { beta: 0.0 },
    Divergence::Jsd { beta: 0.1 },
    Divergence::Jsd { beta: 0.5 },
    Divergence::Jsd { beta: 0.9 },
    Divergence::Jsd { beta: 1.0 },
    Divergence::Tvd,
    Divergence::SkewForwardKl { alpha: 0.1 },
    Divergence::SkewReverseKl { alpha: 0.1 },
    Divergence::SkewReverseKl { alpha: 0.5 },
];
const TAUS: [f32; 3] = [0.5, 1.0, 2.0];
/// What the inputs hold in the padding between V and ld.
const PAD: f64 = 7.0;
/// Gradient tolerance per element, as a fraction of the row's largest reference gradient.
const GRAD_ROW: f64 = 1e-5;
/// Extreme logits (±80): absolute gradient tolerance per unit of scale/τ and of max(1, D/scale),
/// derived in the header.
const GRAD_ABS_EXTREME: f64 = 1.5e-4;

trait El: DivElem + Copy + Send + Sync + std::fmt::Debug {
    const NAME: &'static str;
    const LOSS_REL: f64;
    const GRAD_REL: f64;
    fn from_f64(x: f64) -> Self;
    fn to_f64(self) -> f64;
    fn nan() -> Self;
    fn bits(self) -> u32;
}

impl El for f32 {
    const NAME: &'static str = "f32";
    const LOSS_REL: f64 = 1e-4;
    const GRAD_REL: f64 = 1e-4;
    fn from_f64(x: f64) -> Self {
        x as f32
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn nan() -> Self {
        f32::NAN
    }
    fn bits(self) -> u32 {
        self.to_bits()
    }
}

impl El for bf16 {
    const NAME: &'static str = "bf16";
    const LOSS_REL: f64 = 1e-3;
    const GRAD_REL: f64 = 1e-2;
    fn from_f64(x: f64) -> Self {
        bf16::from_f64(x)
    }
    fn to_f64(self) -> f64 {
        bf16::to_f64(self)
    }
    fn nan() -> Self {
        bf16::NAN
    }
    fn bits(self) -> u32 {
        self.to_bits() as u32
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Into,
    InPlace,
    LossOnly,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Impl {
    Fused(KernelPath),
    Unfused,
}

/// The logits a case draws.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Logits {
    /// Normal, σ = 2.
    Ordinary,
    /// Normal, σ = 2, about 1% of the entries −inf in both (the same positions, so every
    /// divergence is finite).
    NegInf,
    /// Uniform in ±4 with about 2% of the entries in ±80 (nearly one-hot rows), and −inf entries.
    Extreme,
}

#[derive(Clone, Debug)]
struct Case {
    rows: usize,
    vocab: usize,
    ld: usize,
    /// Elements before row 0 in the buffers (1 makes every pointer misaligned).
    offset: usize,
    div: Divergence,
    tau: f32,
    scale: f32,
    mask: Option<Vec<bool>>,
    mode: Mode,
    imp: Impl,
}

impl Case {
    fn new(rows: usize, vocab: usize, div: Divergence, tau: f32, imp: Impl) -> Case {
        Case { rows, vocab, ld: vocab, offset: 0, div, tau, scale: 0.5, mask: None, mode: Mode::Into, imp }
    }
}

/// (rows, V) student and teacher logits of the given kind.
fn logits(seed: u64, rows: usize, vocab: usize, kind: Logits) -> (Vec<f64>, Vec<f64>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let gen = |rng: &mut StdRng| match kind {
        Logits::Extreme => {
            let big = rng.random::<f64>() < 0.02;
            (if big { 80.0 } else { 4.0 }) * (2.0 * rng.random::<f64>() - 1.0)
        }
        _ => {
            let (u1, u2): (f64, f64) = (1.0 - rng.random::<f64>(), rng.random());
            2.0 * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
        }
    };
    let mut s: Vec<f64> = (0..rows * vocab).map(|_| gen(&mut rng)).collect();
    let mut t: Vec<f64> = (0..rows * vocab).map(|_| gen(&mut rng)).collect();
    if kind != Logits::Ordinary && vocab > 2 {
        for i in 0..rows * vocab {
            // Never the whole row: entry 0 of each row stays finite.
            if i % vocab != 0 && rng.random::<f64>() < 0.01 {
                s[i] = f64::NEG_INFINITY;
                t[i] = f64::NEG_INFINITY;
            }
        }
    }
    (s, t)
}

/// The kernel paths to test on this GPU; the cluster paths only on sm_90+ (a SKIPPED line otherwise).
fn paths(dev: &CudaDevice, test: &str) -> Vec<KernelPath> {
    let mut p = vec![
        KernelPath::Auto,
        KernelPath::Warps,
        KernelPath::Rows,
        KernelPath::Staged { ctas: 1 },
        KernelPath::Staged { ctas: 0 },
    ];
    let (major, minor) = dev.compute_capability();
    if major >= 9 {
        p.extend([2, 3, 8, 16].map(|ctas| KernelPath::Staged { ctas }));
    } else {
        common::visible(&format!(
            "SKIPPED {test} (cluster paths): the GPU is sm_{major}{minor}, clusters need sm_90"
        ));
    }
    p
}

fn up<T: cudarc::driver::DeviceRepr>(dev: &CudaDevice, v: &[T]) -> CudaSlice<T> {
    dev.stream().clone_htod(v).expect("upload")
}

fn down<T: cudarc::driver::DeviceRepr>(dev: &CudaDevice, s: &CudaSlice<T>) -> Vec<T> {
    dev.stream().clone_dtoh(s).expect("download")
}

/// Runs one case on the GPU and checks it against the CPU reference; Ok(plan) (None: unfused).
/// `extreme`: the logits reach ±80 (the tolerance adds the derived absolute term).
fn run<T: El>(
    dev: &Arc<CudaDevice>,
    c: &Case,
    s: &[f64],
    t: &[f64],
    extreme: bool,
) -> Result<Option<LaunchPlan>, String> {
    let (rows, v, ld, off) = (c.rows, c.vocab, c.ld, c.offset);
    let total = off + rows * ld;
    let at = |r: usize, j: usize| off + r * ld + j;
    let mut sh = vec![T::from_f64(PAD); total.max(1)];
    let mut th = sh.clone();
    for r in 0..rows {
        for j in 0..v {
            sh[at(r, j)] = T::from_f64(s[r * v + j]);
            th[at(r, j)] = T::from_f64(t[r * v + j]);
        }
    }
    // The reference sees exactly the kernel's inputs.
    let s_ref: Vec<f64> = (0..rows * v).map(|i| sh[at(i / v, i % v)].to_f64()).collect();
    let t_ref: Vec<f64> = (0..rows * v).map(|i| th[at(i / v, i % v)].to_f64()).collect();
    let want_grad = c.mode != Mode::LossOnly;
    let want =
        cpu_divergence(c.div, c.tau as f64, &s_ref, &t_ref, v, c.mask.as_deref(), c.scale as f64, want_grad)
            .map_err(|e| format!("CPU reference: {e}"))?;

    let mut sd = up(dev, &sh);
    let td = up(dev, &th);
    let mut gd = up(dev, &vec![T::nan(); total.max(1)]);
    let mut ld_ = up(dev, &vec![f32::NAN; rows.max(1)]);
    let md = c.mask.as_ref().map(|m| up(dev, &m.iter().map(|&b| u8::from(b)).collect::<Vec<u8>>()));
    let launch = DivergenceLaunch {
        rows,
        vocab: v,
        ld,
        divergence: c.div,
        temperature: c.tau,
        scale: c.scale,
        path: match c.imp {
            Impl::Fused(p) => p,
            Impl::Unfused => KernelPath::Auto,
        },
    };
    let end = total.max(off);
    let student = match c.mode {
        Mode::Into => StudentGrad::Into { student: sd.slice(off..end), grad: gd.slice_mut(off..end) },
        Mode::InPlace => StudentGrad::InPlace(sd.slice_mut(off..end)),
        Mode::LossOnly => StudentGrad::LossOnly(sd.slice(off..end)),
    };
    let tv = td.slice(off..end);
    let mv = md.as_ref().map(|m| m.as_view());
    let mut lv = ld_.slice_mut(0..rows);
    let plan = match c.imp {
        Impl::Fused(_) => Some(
            divergence_fwd_bwd(dev, &launch, student, &tv, mv.as_ref(), &mut lv)
                .map_err(|e| e.to_string())?,
        ),
        Impl::Unfused => {
            divergence_unfused_fwd_bwd(dev, &launch, student, &tv, mv.as_ref(), &mut lv)
                .map_err(|e| e.to_string())?;
            None
        }
    };
    dev.synchronize().map_err(|e| format!("kernel failed: {e}"))?;
    let (s_out, g_out, l_out) = (down(dev, &sd), down(dev, &gd), down(dev, &ld_));

    // Ownership: what the kernel must write and what it must leave alone.
    let inside = |i: usize| i >= off && (i - off) % ld < v && (i - off) / ld < rows;
    let (grad_buf, other) = match c.mode {
        Mode::Into => (Some(&g_out), Some((&s_out, &sh))),
        Mode::InPlace => (Some(&s_out), None),
        Mode::LossOnly => (None, Some((&s_out, &sh))),
    };
    if let Some((got, orig)) = other {
        if let Some(i) = (0..total).find(|&i| got[i].bits() != orig[i].bits()) {
            return Err(format!("the student logits changed at {i} without being the gradient's buffer"));
        }
    }
    match c.mode {
        Mode::Into => {
            if let Some(i) = (0..total).find(|&i| !inside(i) && !g_out[i].to_f64().is_nan()) {
                return Err(format!("grad padding element {i} was written"));
            }
        }
        Mode::InPlace => {
            if let Some(i) = (0..total).find(|&i| !inside(i) && s_out[i].bits() != sh[i].bits()) {
                return Err(format!("student padding element {i} was overwritten"));
            }
        }
        Mode::LossOnly => {
            if let Some(i) = (0..total).find(|&i| !g_out[i].to_f64().is_nan()) {
                return Err(format!("loss-only launch wrote the spare gradient buffer at {i}"));
            }
        }
    }

    for r in 0..rows {
        let masked = c.mask.as_ref().is_some_and(|m| !m[r]);
        let (x, y) = (l_out[r] as f64, want.row_loss[r]);
        if masked && x != 0.0 {
            return Err(format!("masked row {r}: loss {x}, expected exactly 0"));
        }
        let le = (x - y).abs() / y.abs().max(1e-2 * c.scale as f64);
        if le.is_nan() || le > T::LOSS_REL {
            return Err(format!("row {r}: loss {x}, reference {y} (relative error {le:.2e})"));
        }
        let Some(g) = grad_buf else { continue };
        let row_ref = &want.grad[r * v..(r + 1) * v];
        let row_max = row_ref.iter().fold(0.0f64, |m, y| m.max(y.abs()));
        let extreme_abs = if extreme {
            GRAD_ABS_EXTREME * (c.scale / c.tau) as f64 * (y.abs() / c.scale as f64).max(1.0)
        } else {
            0.0
        };
        let abs = GRAD_ROW * row_max + extreme_abs;
        // The check must be able to fail: an ordinary row's largest gradient is far above its
        // tolerance, so zeros or another row's values would not pass. A row whose reference
        // gradient is exactly zero (masked, or without a distribution) must be exactly zero.
        if !extreme && row_max > 0.0 && row_max <= 2.0 * abs {
            return Err(format!(
                "row {r}: largest reference gradient {row_max:.2e} is not above the tolerance {abs:.2e}: a degenerate case"
            ));
        }
        for j in 0..v {
            let (x, y) = (g[at(r, j)].to_f64(), row_ref[j]);
            if masked && x != 0.0 {
                return Err(format!("masked row {r}: gradient {x} at {j}, expected exactly 0"));
            }
            let excess = (x - y).abs() - T::GRAD_REL * y.abs();
            if excess.is_nan() || excess > abs {
                return Err(format!(
                    "gradient [{r}, {j}] = {x}, reference {y} (|error| {:.3e} > {:.1e}·|ref| + {abs:.3e})",
                    (x - y).abs(),
                    T::GRAD_REL
                ));
            }
        }
    }
    Ok(plan)
}

/// Runs `cases` for one dtype; panics with every failure listed.
fn run_all<T: El>(
    dev: &Arc<CudaDevice>,
    test: &str,
    cases: &[(Case, u64, Logits)],
) -> Vec<Option<LaunchPlan>> {
    let mut failures = Vec::new();
    let mut plans = Vec::new();
    for (c, seed, kind) in cases {
        let (s, t) = logits(*seed, c.rows, c.vocab, *kind);
        match run::<T>(dev, c, &s, &t, *kind == Logits::Extreme) {
            Ok(p) => plans.push(p),
            Err(e) => failures.push(format!("{} {c:?}: {e}", T::NAME)),
        }
    }
    assert!(
        failures.is_empty(),
        "{test}: {} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    plans
}

#[test]
fn fused_every_path_matches_cpu() {
    let test = "cuda_divergence::fused_every_path_matches_cpu";
    let Some(dev) = cuda_or_skip(test) else { return };
    let mut cases = Vec::new();
    // (rows, V): odd V (scalar kernels), V a multiple of 8 (vectorized), V above the warp limit.
    for (rows, v) in [(5, 7), (4, 2056), (3, 4099)] {
        for path in paths(&dev, test) {
            for div in ALL {
                for tau in TAUS {
                    let mut c = Case::new(rows, v, div, tau, Impl::Fused(path));
                    c.mask = Some((0..rows).map(|r| r != 1).collect());
                    cases.push((c, (rows * v) as u64 + tau.to_bits() as u64, Logits::NegInf));
                }
            }
        }
    }
    // Nearly one-hot rows (logits up to ±80 at τ = 0.5): finite, and within the derived bound.
    for (rows, v) in [(5, 7), (4, 2056), (3, 4099)] {
        for path in paths(&dev, test) {
            for div in ALL {
                let mut c = Case::new(rows, v, div, 0.5, Impl::Fused(path));
                c.mask = Some((0..rows).map(|r| r != 1).collect());
                cases.push((c, (rows * v) as u64, Logits::Extreme));
            }
        }
    }
    let plans = run_all::<f32>(&dev, test, &cases);
    assert!(plans.iter().flatten().any(|p| p.vectorized) && plans.iter().flatten().any(|p| !p.vectorized));
    run_all::<bf16>(&dev, test, &cases);
}

#[test]
fn fused_odd_and_large_vocabularies() {
    let test = "cuda_divergence::fused_odd_and_large_vocabularies";
    let Some(dev) = cuda_or_skip(test) else { return };
    let cluster = dev.compute_capability().0 >= 9;
    let divs = [
        Divergence::Jsd { beta: 0.5 },
        Divergence::ForwardKl,
        Divergence::ReverseKl,
        Divergence::Tvd,
        Divergence::SkewReverseKl { alpha: 0.1 },
    ];
    let mut cases = Vec::new();
    for v in [1usize, 7, 32000, 32001, 151936, 151937, 262144] {
        let mut paths = vec![KernelPath::Auto, KernelPath::Rows, KernelPath::Staged { ctas: 0 }];
        if cluster && v >= 32000 {
            paths.extend([KernelPath::Staged { ctas: 8 }, KernelPath::Staged { ctas: 16 }]);
        }
        for path in paths {
            for (i, div) in divs.iter().enumerate() {
                let tau = if i == 0 { 0.5 } else { 1.0 };
                let mut c = Case::new(3, v, *div, tau, Impl::Fused(path));
                c.mask = Some(vec![true, false, true]);
                cases.push((c, v as u64, Logits::NegInf));
            }
        }
    }
    for dtype in [DType::F32, DType::BF16] {
        // A path whose row does not fit (Staged on a small GPU) is an error by design: skip it.
        let fits: Vec<(Case, u64, Logits)> = cases
            .iter()
            .filter(|(c, _, _)| {
                let launch = DivergenceLaunch {
                    rows: c.rows,
                    vocab: c.vocab,
                    ld: c.ld,
                    divergence: c.div,
                    temperature: c.tau,
                    scale: c.scale,
                    path: match c.imp {
                        Impl::Fused(p) => p,
                        Impl::Unfused => KernelPath::Auto,
                    },
                };
                let ok = gkd::backend::cuda::divergence::plan(&dev, &launch, dtype, true).is_ok();
                if !ok {
                    common::visible(&format!(
                        "SKIPPED {test}: {dtype} V={} on {:?} does not fit this GPU",
                        c.vocab, c.imp
                    ));
                }
                ok
            })
            .cloned()
            .collect();
        match dtype {
            DType::F32 => run_all::<f32>(&dev, test, &fits),
            _ => run_all::<bf16>(&dev, test, &fits),
        };
    }
}

#[test]
fn fused_in_place_out_of_place_and_strides() {
    let test = "cuda_divergence::fused_in_place_out_of_place_and_strides";
    let Some(dev) = cuda_or_skip(test) else { return };
    let mut path_list =
        vec![KernelPath::Auto, KernelPath::Warps, KernelPath::Rows, KernelPath::Staged { ctas: 1 }];
    if dev.compute_capability().0 >= 9 {
        path_list.push(KernelPath::Staged { ctas: 4 });
    }
    let mut cases = Vec::new();
    for mode in [Mode::Into, Mode::InPlace, Mode::LossOnly] {
        for (v, pad) in [(1000usize, 0usize), (1000, 5), (1000, 8), (2053, 3), (600, 8)] {
            for offset in [0usize, 1] {
                for &path in &path_list {
                    for div in [Divergence::Jsd { beta: 0.5 }, Divergence::ReverseKl] {
                        let mut c = Case::new(4, v, div, 1.0, Impl::Fused(path));
                        c.ld = v + pad;
                        c.offset = offset;
                        c.mode = mode;
                        c.scale = 1.0 / 1024.0;
                        c.mask = Some(vec![true, true, false, true]);
                        cases.push((c, 11, Logits::NegInf));
                    }
                }
            }
        }
    }
    let plans = run_all::<f32>(&dev, test, &cases);
    for ((c, _, _), p) in cases.iter().zip(&plans) {
        let p = p.as_ref().expect("fused");
        let aligned = c.offset == 0 && (c.ld * 4) % 16 == 0;
        assert_eq!(p.vectorized, aligned, "{c:?}: {p:?}");
    }
    let plans = run_all::<bf16>(&dev, test, &cases);
    for ((c, _, _), p) in cases.iter().zip(&plans) {
        let p = p.as_ref().expect("fused");
        let aligned = c.offset == 0 && (c.ld * 2) % 16 == 0;
        assert_eq!(p.vectorized, aligned, "{c:?}: {p:?}");
    }
}

#[test]
fn unfused_matches_cpu() {
    let test = "cuda_divergence::unfused_matches_cpu";
    let Some(dev) = cuda_or_skip(test) else { return };
    let mut cases = Vec::new();
    for (rows, v) in [(5, 7), (3, 4099), (2, 151937)] {
        for div in ALL {
            for tau in TAUS {
                for mode in [Mode::Into, Mode::InPlace] {
                    if v > 100_000 && (tau != 1.0 || mode == Mode::InPlace) {
                        continue;
                    }
                    let mut c = Case::new(rows, v, div, tau, Impl::Unfused);
                    c.mode = mode;
                    c.ld = v + 3;
                    c.mask = Some((0..rows).map(|r| r != 1).collect());
                    cases.push((c, v as u64, Logits::NegInf));
                }
            }
        }
    }
    run_all::<f32>(&dev, test, &cases);
    run_all::<bf16>(&dev, test, &cases);
}

/// Rows whose student (or teacher) logits are all −inf have no distribution: loss 0, gradient 0.
#[test]
fn rows_without_distribution_are_zero() {
    let test = "cuda_divergence::rows_without_distribution_are_zero";
    let Some(dev) = cuda_or_skip(test) else { return };
    for v in [7usize, 4096, 4099] {
        let (mut s, mut t) = logits(3, 3, v, Logits::Ordinary);
        s[..v].iter_mut().for_each(|x| *x = f64::NEG_INFINITY);
        t[2 * v..].iter_mut().for_each(|x| *x = f64::NEG_INFINITY);
        let mut imps: Vec<Impl> = paths(&dev, test).into_iter().map(Impl::Fused).collect();
        imps.push(Impl::Unfused);
        for imp in imps {
            for div in ALL {
                let c = Case::new(3, v, div, 1.0, imp);
                for r in [
                    run::<f32>(&dev, &c, &s, &t, false).map(|_| ()),
                    run::<bf16>(&dev, &c, &s, &t, false).map(|_| ()),
                ] {
                    if let Err(e) = r {
                        panic!("{c:?}: {e}");
                    }
                }
            }
        }
    }
}

/// The staged kernel's grid is persistent: each cluster walks rows r, r + clusters, … Here there
/// are more rows than resident clusters, so every cluster handles several rows, with masked rows
/// (no barrier) and rows without a distribution (one barrier phase fewer) among them.
#[test]
fn persistent_staged_grid_walks_many_rows() {
    let test = "cuda_divergence::persistent_staged_grid_walks_many_rows";
    let Some(dev) = cuda_or_skip(test) else { return };
    let (v, ld) = (515, 520); // a tail after the last whole vector; 16-byte aligned rows
    let mut ctas_list = vec![1];
    if dev.compute_capability().0 >= 9 {
        ctas_list.extend([2, 16]);
    }
    for ctas in ctas_list {
        let base = DivergenceLaunch {
            rows: 1,
            vocab: v,
            ld,
            divergence: Divergence::Jsd { beta: 0.5 },
            temperature: 1.0,
            scale: 0.5,
            path: KernelPath::Staged { ctas },
        };
        let resident =
            gkd::backend::cuda::divergence::plan(&dev, &base, DType::BF16, true).unwrap().resident as usize;
        assert!(resident > 0, "ctas {ctas}: no resident cluster");
        let rows = 2 * resident + 5;
        let (mut s, t) = logits(ctas as u64, rows, v, Logits::NegInf);
        for r in (3..rows).step_by(11) {
            s[r * v..(r + 1) * v].iter_mut().for_each(|x| *x = f64::NEG_INFINITY);
        }
        for div in
            [Divergence::Jsd { beta: 0.5 }, Divergence::ReverseKl, Divergence::SkewForwardKl { alpha: 0.1 }]
        {
            let mut c = Case::new(rows, v, div, 1.0, Impl::Fused(KernelPath::Staged { ctas }));
            c.ld = ld;
            c.mask = Some((0..rows).map(|r| r % 7 != 5).collect());
            for mode in [Mode::Into, Mode::InPlace] {
                c.mode = mode;
                let plan = run::<f32>(&dev, &c, &s, &t, false)
                    .unwrap_or_else(|e| panic!("f32 {ctas} CTAs {div:?} {mode:?}: {e}"));
                let plan = plan.expect("fused");
                assert!(plan.grid < (rows * ctas as usize) as u32, "{plan}: the grid should be persistent");
                run::<bf16>(&dev, &c, &s, &t, false)
                    .unwrap_or_else(|e| panic!("bf16 {ctas} CTAs {div:?} {mode:?}: {e}"));
            }
        }
    }
}

/// Reverse KL of a row where the teacher gives probability 0 (logit −inf) to a token the student
/// does not: the loss is +inf, and the gradient of every token the student gives 0 stays exactly
/// 0 (the CPU reference's `q > 0` guard), not NaN from ∞·0.
#[test]
fn infinite_reverse_kl_keeps_zero_gradients() {
    let test = "cuda_divergence::infinite_reverse_kl_keeps_zero_gradients";
    let Some(dev) = cuda_or_skip(test) else { return };
    let (rows, v) = (3usize, 4104usize);
    let (mut s, t) = logits(5, rows, v, Logits::Ordinary);
    let mut t = t;
    for r in 0..rows {
        for j in (1..v).step_by(5) {
            s[r * v + j] = f64::NEG_INFINITY; // q = 0 here
        }
        if r != 1 {
            t[r * v + 2] = f64::NEG_INFINITY; // p = 0 where q > 0: D = +inf
        }
    }
    for path in paths(&dev, test) {
        let sd = up(&dev, &s.iter().map(|&x| x as f32).collect::<Vec<f32>>());
        let td = up(&dev, &t.iter().map(|&x| x as f32).collect::<Vec<f32>>());
        let mut gd = up(&dev, &vec![0f32; rows * v]);
        let mut ld_ = up(&dev, &vec![0f32; rows]);
        let launch = DivergenceLaunch {
            rows,
            vocab: v,
            ld: v,
            divergence: Divergence::ReverseKl,
            temperature: 1.0,
            scale: 1.0,
            path,
        };
        let student = StudentGrad::Into { student: sd.slice(..), grad: gd.slice_mut(..) };
        divergence_fwd_bwd(&dev, &launch, student, &td.slice(..), None, &mut ld_.slice_mut(..)).unwrap();
        dev.synchronize().unwrap();
        let (g, l) = (down(&dev, &gd), down(&dev, &ld_));
        for r in 0..rows {
            let want_inf = r != 1;
            assert!(
                if want_inf { l[r] == f32::INFINITY } else { l[r].is_finite() },
                "{path:?}: row {r} loss {} (want +inf for rows 0 and 2, finite for row 1)",
                l[r]
            );
            for j in (1..v).step_by(5) {
                assert_eq!(g[r * v + j], 0.0, "{path:?}: gradient [{r}, {j}] where the student gives 0");
            }
        }
    }
}

#[test]
fn bad_launches_are_errors() {
    let test = "cuda_divergence::bad_launches_are_errors";
    let Some(dev) = cuda_or_skip(test) else { return };
    let base = DivergenceLaunch {
        rows: 2,
        vocab: 8,
        ld: 8,
        divergence: Divergence::Tvd,
        temperature: 1.0,
        scale: 1.0,
        path: KernelPath::Auto,
    };
    let sd = up(&dev, &[0.0f32; 16]);
    let td = up(&dev, &[0.0f32; 16]);
    let mut ld_ = up(&dev, &[0.0f32; 2]);
    let try_launch = |p: DivergenceLaunch, ld_: &mut CudaSlice<f32>| {
        divergence_fwd_bwd(
            &dev,
            &p,
            StudentGrad::LossOnly(sd.as_view()),
            &td.as_view(),
            None,
            &mut ld_.as_view_mut(),
        )
    };
    assert!(try_launch(base, &mut ld_).is_ok());
    for bad in [
        DivergenceLaunch { ld: 7, ..base },
        DivergenceLaunch { ld: 9, ..base },
        DivergenceLaunch { rows: 3, ..base },
        DivergenceLaunch { vocab: 0, ..base },
        DivergenceLaunch { temperature: 0.0, ..base },
        DivergenceLaunch { scale: f32::NAN, ..base },
        DivergenceLaunch { divergence: Divergence::Jsd { beta: 2.0 }, ..base },
        DivergenceLaunch { path: KernelPath::Staged { ctas: 17 }, ..base },
    ] {
        assert!(try_launch(bad, &mut ld_).is_err(), "{bad:?} was accepted");
    }
    let huge = DivergenceLaunch {
        vocab: 1 << 22,
        ld: 1 << 22,
        rows: 0,
        path: KernelPath::Staged { ctas: 1 },
        ..base
    };
    assert!(gkd::backend::cuda::divergence::plan(&dev, &huge, DType::F32, true).is_err());
    if dev.compute_capability().0 < 9 {
        let c2 = DivergenceLaunch { path: KernelPath::Staged { ctas: 2 }, ..base };
        assert!(try_launch(c2, &mut ld_).is_err());
    }
}
