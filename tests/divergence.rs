//! The CPU reference of the distillation divergences (`gkd::backend::cpu::divergence_fwd_bwd`) against an
//! independent naive f64 formula written here: values, gradients by central finite differences of
//! that formula, the TRL ends of JSD, symmetry, temperature, masks, −inf logits, f32 vs f64, and
//! the command-line names.

mod common;

use common::reference::{kl, naive, softmax};
use gkd::backend::cpu::{divergence_fwd_bwd, DivergenceOut};
use gkd::backend::Divergence;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

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
    Divergence::SkewReverseKl { alpha: 0.6 },
];

fn logits(rng: &mut StdRng, n: usize, scale: f64) -> Vec<f64> {
    (0..n).map(|_| scale * (2.0 * rng.random::<f64>() - 1.0)).collect()
}

fn run(
    div: Divergence,
    tau: f64,
    s: &[f64],
    t: &[f64],
    v: usize,
    mask: Option<&[bool]>,
    scale: f64,
) -> DivergenceOut<f64> {
    divergence_fwd_bwd(div, tau, s, t, v, mask, scale, true).unwrap()
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * (1.0 + b.abs())
}

#[test]
fn identical_inputs_give_zero_and_zero_gradient() {
    let mut rng = StdRng::seed_from_u64(1);
    let (n, v) = (3, 17);
    let s = logits(&mut rng, n * v, 4.0);
    for div in ALL {
        for tau in [0.5, 1.0, 2.0] {
            let out = run(div, tau, &s, &s, v, None, 1.0);
            assert!(out.loss.abs() < 1e-12, "{div} τ={tau}: loss {}", out.loss);
            let g = out.grad.iter().fold(0.0f64, |m, x| m.max(x.abs()));
            assert!(g < 1e-12, "{div} τ={tau}: gradient {g}");
        }
    }
}

#[test]
fn values_match_the_naive_formula() {
    let mut rng = StdRng::seed_from_u64(2);
    for (n, v) in [(1, 1), (2, 2), (4, 7), (3, 33), (2, 1000)] {
        let s = logits(&mut rng, n * v, 5.0);
        let t = logits(&mut rng, n * v, 5.0);
        for div in ALL {
            for tau in [0.5, 1.0, 2.0] {
                let out = run(div, tau, &s, &t, v, None, 1.0);
                let mut total = 0.0;
                for r in 0..n {
                    let want = naive(div, tau, &s[r * v..(r + 1) * v], &t[r * v..(r + 1) * v]);
                    total += want;
                    assert!(
                        close(out.row_loss[r], want, 1e-12),
                        "{div} τ={tau} {n}x{v} row {r}: {} vs {want}",
                        out.row_loss[r]
                    );
                }
                assert!(close(out.loss, total, 1e-12), "{div}: total {} vs {total}", out.loss);
            }
        }
    }
}

#[test]
fn jsd_ends_are_forward_and_reverse_kl() {
    let mut rng = StdRng::seed_from_u64(3);
    let v = 11;
    let s = logits(&mut rng, 2 * v, 3.0);
    let t = logits(&mut rng, 2 * v, 3.0);
    let fkl = run(Divergence::ForwardKl, 1.3, &s, &t, v, None, 1.0);
    let rkl = run(Divergence::ReverseKl, 1.3, &s, &t, v, None, 1.0);
    let j0 = run(Divergence::Jsd { beta: 0.0 }, 1.3, &s, &t, v, None, 1.0);
    let j1 = run(Divergence::Jsd { beta: 1.0 }, 1.3, &s, &t, v, None, 1.0);
    let direct_fkl: f64 = (0..2)
        .map(|r| kl(&softmax(&t[r * v..(r + 1) * v], 1.3), &softmax(&s[r * v..(r + 1) * v], 1.3)))
        .sum();
    let direct_rkl: f64 = (0..2)
        .map(|r| kl(&softmax(&s[r * v..(r + 1) * v], 1.3), &softmax(&t[r * v..(r + 1) * v], 1.3)))
        .sum();
    assert!(close(j0.loss, direct_fkl, 1e-12) && close(fkl.loss, direct_fkl, 1e-12));
    assert!(close(j1.loss, direct_rkl, 1e-12) && close(rkl.loss, direct_rkl, 1e-12));
    assert_eq!(j0.grad, fkl.grad);
    assert_eq!(j1.grad, rkl.grad);
    // Skew KL with α = 0 is the plain KL.
    assert_eq!(run(Divergence::SkewForwardKl { alpha: 0.0 }, 1.3, &s, &t, v, None, 1.0).grad, fkl.grad);
    assert_eq!(run(Divergence::SkewReverseKl { alpha: 0.0 }, 1.3, &s, &t, v, None, 1.0).grad, rkl.grad);
}

#[test]
fn jsd_half_is_symmetric_and_jsd_tenth_is_not() {
    let mut rng = StdRng::seed_from_u64(4);
    let v = 9;
    let s = logits(&mut rng, v, 4.0);
    let t = logits(&mut rng, v, 4.0);
    let d = |beta, a: &[f64], b: &[f64]| run(Divergence::Jsd { beta }, 1.0, a, b, v, None, 1.0).loss;
    assert!(close(d(0.5, &s, &t), d(0.5, &t, &s), 1e-13));
    assert!((d(0.1, &s, &t) - d(0.1, &t, &s)).abs() > 1e-3);
    let tvd = |a: &[f64], b: &[f64]| run(Divergence::Tvd, 1.0, a, b, v, None, 1.0).loss;
    assert!(close(tvd(&s, &t), tvd(&t, &s), 1e-13));
}

#[test]
fn temperature_changes_the_value_and_scales_the_gradient() {
    let mut rng = StdRng::seed_from_u64(5);
    let v = 13;
    let s = logits(&mut rng, v, 4.0);
    let t = logits(&mut rng, v, 4.0);
    for div in ALL {
        let a = run(div, 1.0, &s, &t, v, None, 1.0).loss;
        let b = run(div, 2.0, &s, &t, v, None, 1.0).loss;
        assert!((a - b).abs() > 1e-4, "{div}: τ = 1 gives {a}, τ = 2 gives {b}");
        // D(s, t; τ) = D(s/τ, t/τ; 1); the gradient carries the 1/τ.
        let s2: Vec<f64> = s.iter().map(|x| x / 2.0).collect();
        let t2: Vec<f64> = t.iter().map(|x| x / 2.0).collect();
        let o1 = run(div, 2.0, &s, &t, v, None, 1.0);
        let o2 = run(div, 1.0, &s2, &t2, v, None, 1.0);
        assert!(close(o1.loss, o2.loss, 1e-13));
        for (g1, g2) in o1.grad.iter().zip(&o2.grad) {
            assert!((g1 - g2 / 2.0).abs() < 1e-13, "{div}: {g1} vs {}", g2 / 2.0);
        }
    }
}

/// Central finite differences of the naive formula against the analytic gradient.
#[test]
fn gradients_match_finite_differences() {
    let mut rng = StdRng::seed_from_u64(6);
    for (n, v) in [(1, 1), (2, 5), (3, 8), (4, 31)] {
        let s = logits(&mut rng, n * v, 3.0);
        let t = logits(&mut rng, n * v, 3.0);
        let mask: Vec<bool> = (0..n).map(|r| r != 1).collect();
        for div in ALL {
            for tau in [0.5, 1.0, 2.0] {
                let scale = 0.7;
                let out = run(div, tau, &s, &t, v, Some(&mask), scale);
                let h = 1e-6;
                for r in 0..n {
                    for j in 0..v {
                        let i = r * v + j;
                        let got = out.grad[i];
                        if !mask[r] {
                            assert_eq!(got, 0.0, "{div}: masked row {r} has gradient");
                            continue;
                        }
                        let row = |x: f64| {
                            let mut sr = s[r * v..(r + 1) * v].to_vec();
                            sr[j] = x;
                            scale * naive(div, tau, &sr, &t[r * v..(r + 1) * v])
                        };
                        let num = (row(s[i] + h) - row(s[i] - h)) / (2.0 * h);
                        assert!(
                            (got - num).abs() <= 1e-6 * (1.0 + num.abs()),
                            "{div} τ={tau} {n}x{v} [{r},{j}]: analytic {got}, numeric {num}"
                        );
                    }
                }
                let want: f64 = (0..n)
                    .filter(|&r| mask[r])
                    .map(|r| scale * naive(div, tau, &s[r * v..(r + 1) * v], &t[r * v..(r + 1) * v]))
                    .sum();
                assert!(close(out.loss, want, 1e-12));
                assert!((0..n).filter(|&r| !mask[r]).all(|r| out.row_loss[r] == 0.0));
            }
        }
    }
}

#[test]
fn f32_matches_f64() {
    let mut rng = StdRng::seed_from_u64(7);
    let (n, v) = (6, 257);
    let s = logits(&mut rng, n * v, 6.0);
    let t = logits(&mut rng, n * v, 6.0);
    let (s32, t32): (Vec<f32>, Vec<f32>) =
        (s.iter().map(|&x| x as f32).collect(), t.iter().map(|&x| x as f32).collect());
    // The f64 reference on the f32-rounded inputs.
    let (s64, t64): (Vec<f64>, Vec<f64>) =
        (s32.iter().map(|&x| x as f64).collect(), t32.iter().map(|&x| x as f64).collect());
    for div in ALL {
        for tau in [0.5, 1.0, 2.0] {
            let a = divergence_fwd_bwd(div, tau, &s32, &t32, v, None, 1.0, true).unwrap();
            let b = run(div, tau, &s64, &t64, v, None, 1.0);
            for r in 0..n {
                let (x, y) = (a.row_loss[r], b.row_loss[r]);
                assert!((x - y).abs() <= 1e-5 * y.abs().max(1e-2), "{div} τ={tau} row {r}: f32 {x}, f64 {y}");
                let row = r * v..(r + 1) * v;
                let gmax = b.grad[row.clone()].iter().fold(0.0f64, |m, g| m.max(g.abs()));
                for i in row {
                    let (x, y) = (a.grad[i] as f64, b.grad[i]);
                    // Normwise per row: the f32 log-normalizers carry ~1e-6 absolute error, which
                    // every element sees; cancellation inside a small gradient shows it.
                    assert!((x - y).abs() <= 2e-5 * gmax, "{div} τ={tau} [{i}]: f32 {x}, f64 {y}");
                }
            }
        }
    }
}

/// −inf logits are entries outside the distribution: the result equals the one on the vocabulary
/// without them, and their gradient is 0. One-sided −inf entries where the divergence stays finite
/// give finite values and gradients that match finite differences.
#[test]
fn negative_infinity_entries_are_outside_the_distribution() {
    let mut rng = StdRng::seed_from_u64(8);
    let v = 12;
    let mut s = logits(&mut rng, v, 4.0);
    let mut t = logits(&mut rng, v, 4.0);
    let both = [2usize, 7];
    for &j in &both {
        s[j] = f64::NEG_INFINITY;
        t[j] = f64::NEG_INFINITY;
    }
    let keep: Vec<usize> = (0..v).filter(|j| !both.contains(j)).collect();
    let (sk, tk): (Vec<f64>, Vec<f64>) =
        (keep.iter().map(|&j| s[j]).collect(), keep.iter().map(|&j| t[j]).collect());
    for div in ALL {
        let out = run(div, 1.0, &s, &t, v, None, 1.0);
        let reduced = run(div, 1.0, &sk, &tk, keep.len(), None, 1.0);
        assert!(
            out.loss.is_finite() && close(out.loss, reduced.loss, 1e-12),
            "{div}: {} vs {}",
            out.loss,
            reduced.loss
        );
        for &j in &both {
            assert_eq!(out.grad[j], 0.0, "{div}: gradient at a −inf entry");
        }
        for (k, &j) in keep.iter().enumerate() {
            assert!((out.grad[j] - reduced.grad[k]).abs() < 1e-13, "{div}: entry {j}");
        }
    }
    // One-sided −inf where the divergence stays finite: teacher-only under forward KL, student-only
    // under reverse KL, either side for JSD, TVD and the skews.
    let mut t1 = logits(&mut rng, v, 4.0);
    t1[3] = f64::NEG_INFINITY;
    let mut s1 = logits(&mut rng, v, 4.0);
    s1[5] = f64::NEG_INFINITY;
    let s0 = logits(&mut rng, v, 4.0);
    let cases: Vec<(Divergence, &[f64], &[f64])> = vec![
        (Divergence::ForwardKl, &s0, &t1),
        (Divergence::ReverseKl, &s1, &s0),
        (Divergence::Jsd { beta: 0.5 }, &s1, &t1),
        (Divergence::Tvd, &s1, &t1),
        (Divergence::SkewForwardKl { alpha: 0.1 }, &s1, &t1),
        (Divergence::SkewReverseKl { alpha: 0.1 }, &s1, &t1),
    ];
    for (div, a, b) in cases {
        let out = run(div, 1.0, a, b, v, None, 1.0);
        assert!(out.loss.is_finite() && close(out.loss, naive(div, 1.0, a, b), 1e-12), "{div}: {}", out.loss);
        assert!(out.grad.iter().all(|g| g.is_finite()), "{div}: {:?}", out.grad);
        // Gradient by finite differences on the finite entries.
        for j in (0..v).filter(|&j| a[j].is_finite()) {
            let f = |x: f64| {
                let mut sr = a.to_vec();
                sr[j] = x;
                naive(div, 1.0, &sr, b)
            };
            let num = (f(a[j] + 1e-6) - f(a[j] - 1e-6)) / 2e-6;
            assert!(
                (out.grad[j] - num).abs() <= 1e-6 * (1.0 + num.abs()),
                "{div} [{j}]: {} vs {num}",
                out.grad[j]
            );
        }
    }
    // A row without a distribution: loss 0, gradient 0.
    let dead = vec![f64::NEG_INFINITY; v];
    for div in ALL {
        let out = run(div, 1.0, &dead, &t, v, None, 1.0);
        assert_eq!(out.loss, 0.0);
        assert!(out.grad.iter().all(|&g| g == 0.0));
    }
}

#[test]
fn masks_scale_and_loss_only() {
    let mut rng = StdRng::seed_from_u64(9);
    let (n, v) = (4, 10);
    let s = logits(&mut rng, n * v, 3.0);
    let t = logits(&mut rng, n * v, 3.0);
    let mask = [true, false, true, false];
    let div = Divergence::Jsd { beta: 0.5 };
    let full = run(div, 1.0, &s, &t, v, None, 1.0);
    let masked = run(div, 1.0, &s, &t, v, Some(&mask), 0.25);
    for (r, &keep) in mask.iter().enumerate() {
        let want = if keep { 0.25 * full.row_loss[r] } else { 0.0 };
        assert!(close(masked.row_loss[r], want, 1e-14));
        for j in 0..v {
            let want = if keep { 0.25 * full.grad[r * v + j] } else { 0.0 };
            assert!((masked.grad[r * v + j] - want).abs() < 1e-15);
        }
    }
    assert!(close(masked.loss, masked.row_loss.iter().sum(), 1e-14));
    let loss_only = divergence_fwd_bwd(div, 1.0, &s, &t, v, Some(&mask), 0.25, false).unwrap();
    assert!(loss_only.grad.is_empty());
    assert_eq!(loss_only.row_loss, masked.row_loss);
}

#[test]
fn bad_arguments_are_errors() {
    let x = vec![0.0f64; 6];
    let ok = |r: gkd::Result<DivergenceOut<f64>>| r.is_ok();
    assert!(ok(divergence_fwd_bwd(Divergence::Tvd, 1.0, &x, &x, 3, None, 1.0, true)));
    assert!(!ok(divergence_fwd_bwd(Divergence::Tvd, 1.0, &x, &x, 4, None, 1.0, true)));
    assert!(!ok(divergence_fwd_bwd(Divergence::Tvd, 1.0, &x, &x[..3], 3, None, 1.0, true)));
    assert!(!ok(divergence_fwd_bwd(Divergence::Tvd, 1.0, &x, &x, 0, None, 1.0, true)));
    assert!(!ok(divergence_fwd_bwd(Divergence::Tvd, 0.0, &x, &x, 3, None, 1.0, true)));
    assert!(!ok(divergence_fwd_bwd(Divergence::Tvd, 1.0, &x, &x, 3, Some(&[true]), 1.0, true)));
    assert!(!ok(divergence_fwd_bwd(Divergence::Jsd { beta: 1.5 }, 1.0, &x, &x, 3, None, 1.0, true)));
    assert!(!ok(divergence_fwd_bwd(
        Divergence::SkewForwardKl { alpha: 1.0 },
        1.0,
        &x,
        &x,
        3,
        None,
        1.0,
        true
    )));
}

#[test]
fn command_line_names() {
    let parse = |s: &str| s.parse::<Divergence>();
    assert_eq!(parse("fkl").unwrap(), Divergence::ForwardKl);
    assert_eq!(parse("rkl").unwrap(), Divergence::ReverseKl);
    assert_eq!(parse("tvd").unwrap(), Divergence::Tvd);
    assert_eq!(parse("jsd").unwrap(), Divergence::Jsd { beta: 0.5 });
    assert_eq!(parse("jsd:0.9").unwrap(), Divergence::Jsd { beta: 0.9 });
    assert_eq!(parse("skew-fkl").unwrap(), Divergence::SkewForwardKl { alpha: 0.1 });
    assert_eq!(parse("skew-rkl:0.3").unwrap(), Divergence::SkewReverseKl { alpha: 0.3 });
    for bad in ["kl", "jsd:2", "jsd:-0.1", "jsd:x", "skew-fkl:1", "fkl:0.5", ""] {
        let e = parse(bad);
        assert!(e.is_err(), "`{bad}` parsed as {e:?}");
    }
    assert!(parse("jsd:1.5").unwrap_err().to_string().contains("beta must be in [0, 1]"));
    assert!(parse("nope").unwrap_err().to_string().contains("fkl, rkl, jsd, tvd, skew-fkl, skew-rkl"));
    assert_eq!(Divergence::from_cli("jsd", 0.25, 0.7).unwrap(), Divergence::Jsd { beta: 0.25 });
    assert_eq!(
        Divergence::from_cli("skew-rkl", 0.25, 0.7).unwrap(),
        Divergence::SkewReverseKl { alpha: 0.7 }
    );
    assert!(Divergence::from_cli("skew-rkl", 0.25, 1.0).is_err());
    for div in ALL {
        assert_eq!(parse(&div.to_string()).unwrap(), div);
    }
    assert_eq!(Divergence::Jsd { beta: 0.0 }.canonical(), Divergence::ForwardKl);
    assert_eq!(Divergence::Jsd { beta: 1.0 }.canonical(), Divergence::ReverseKl);
    assert_eq!(Divergence::Jsd { beta: 0.3 }.canonical(), Divergence::Jsd { beta: 0.3 });
}
