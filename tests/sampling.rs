//! The sampling op (`Tensor::sample`; the function is src/backend/cpu/sampling.rs, the kernels
//! kernels/sampling.cu).
//!
//! CPU (runs everywhere): Philox4x32-10 against Random123's known answers; greedy = argmax with
//! ties to the lowest id; lp_model against a direct f64 log-softmax; lp_sample = lp_model at T = 1
//! unfiltered; the kept sets of top-k and top-p on hand-made rows (ties at both boundaries, a tiny
//! p, k ≥ V); chi-square tests of 20,000 draws against the exact filtered softmax (and a wrong
//! temperature must fail the same test); the same (seed, seq, pos) giving the same draw whatever
//! the batch; bad arguments refused with an error.
//!
//! CUDA (SKIPPED without a GPU): the kernels against the CPU reference at V = 1, 7, 1000, 151,936,
//! f32 and bf16, greedy, plain and filtered (top-k 1, 50, V − 1; top-p 0.9 and 1e-6): the same
//! token (a difference only where two scores tie within f32 rounding), log-probabilities within
//! the f32 bound; the chi-square test on 20,000 rows in one launch; bit-identical runs, batch
//! sizes and aligned/misaligned rows. Outputs start as NaN (poisoned allocations).

mod common;

use common::harness::normals;
use common::{cuda_or_skip, visible};
use gkd::backend::cpu::{gumbel, kept_threshold, philox4x32_10};
use gkd::backend::ops::SampleSpec;
use gkd::{DType, Device, Tensor};

fn spec(vocab: usize, temperature: f64, top_k: usize, top_p: f64, seed: u64) -> SampleSpec {
    SampleSpec { vocab, temperature, top_k, top_p, seed }
}

/// `rows` rows of `logits` (rows × V, f32 values) as `dtype` on `device`, sampled: (tokens, logprobs).
fn run(
    logits: &[f32],
    rows: usize,
    seq: &[u32],
    pos: &[u32],
    s: &SampleSpec,
    dtype: DType,
    device: Device,
) -> (Vec<u32>, Vec<f32>) {
    let z = Tensor::from_vec(logits.to_vec(), [rows, s.vocab])
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
        .to_device(device)
        .unwrap();
    let (seq, pos) = (Tensor::from_u32(seq, device).unwrap(), Tensor::from_u32(pos, device).unwrap());
    let (t, lp) = z.sample(&seq, &pos, s).unwrap();
    assert_eq!((t.dims(), lp.dims()), (&[rows][..], &[rows, 2][..]));
    (t.to_vec_u32().unwrap(), lp.to_vec_f32().unwrap())
}

fn cpu(logits: &[f32], rows: usize, seq: &[u32], pos: &[u32], s: &SampleSpec) -> (Vec<u32>, Vec<f32>) {
    run(logits, rows, seq, pos, s, DType::F32, Device::Cpu)
}

/// ln Σ exp(z) in f64, written out (not the crate's log-softmax).
fn lse(z: &[f64]) -> f64 {
    let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    m + z.iter().map(|&x| (x - m).exp()).sum::<f64>().ln()
}

/// The filtered softmax at temperature t, computed here independently of the reference: tokens
/// sorted by logit, the first k and all tied with the k-th; then the shortest run of whole tie
/// groups whose weight reaches p of the kept weight. (V) probabilities, 0 off the kept set.
fn filtered_softmax(z: &[f64], t: f64, k: usize, p: f64) -> Vec<f64> {
    let v = z.len();
    let mut order: Vec<usize> = (0..v).collect();
    order.sort_by(|&a, &b| z[b].total_cmp(&z[a]));
    let mut n = v;
    if k > 0 && k < v {
        let kth = z[order[k - 1]];
        n = order.iter().take_while(|&&i| z[i] >= kth).count();
    }
    let m = z[order[0]];
    let w: Vec<f64> = order[..n].iter().map(|&i| ((z[i] - m) / t).exp()).collect();
    if p < 1.0 {
        let goal = p * w.iter().sum::<f64>();
        let (mut acc, mut j) = (0.0, 0);
        while j < n {
            let val = z[order[j]];
            while j < n && z[order[j]] == val {
                acc += w[j];
                j += 1;
            }
            if acc >= goal {
                break;
            }
        }
        n = j;
    }
    let total: f64 = w[..n].iter().sum();
    let mut q = vec![0.0; v];
    for j in 0..n {
        q[order[j]] = w[j] / total;
    }
    q
}

/// Pearson's chi-square of token counts against probabilities q (cells expecting fewer than 5
/// draws pooled into one) and its degrees of freedom; infinite when a token of probability 0 was
/// drawn.
fn chi_square(tokens: &[u32], q: &[f64]) -> (f64, usize) {
    let n = tokens.len() as f64;
    let mut counts = vec![0usize; q.len()];
    tokens.iter().for_each(|&t| counts[t as usize] += 1);
    let (mut stat, mut cells, mut pool_o, mut pool_e) = (0.0, 0usize, 0.0, 0.0);
    for (&c, &qi) in counts.iter().zip(q) {
        if qi == 0.0 {
            if c > 0 {
                return (f64::INFINITY, 1);
            }
            continue;
        }
        let e = n * qi;
        if e < 5.0 {
            pool_o += c as f64;
            pool_e += e;
        } else {
            stat += (c as f64 - e).powi(2) / e;
            cells += 1;
        }
    }
    if pool_e > 0.0 {
        stat += (pool_o - pool_e).powi(2) / pool_e;
        cells += 1;
    }
    (stat, cells.saturating_sub(1).max(1))
}

/// The 0.999 quantile of chi-square with `df` degrees of freedom (Wilson–Hilferty; z_0.999 =
/// 3.0902); within 1% of the exact quantile for df ≥ 3 (18.47 at df = 4: WH gives 18.39).
fn chi2_q999(df: usize) -> f64 {
    let d = df as f64;
    let a = 2.0 / (9.0 * d);
    d * (1.0 - a + 3.090_232_306 * a.sqrt()).powi(3)
}

// ---------------------------------------------------------------------------------------------
// CPU

/// Catches a wrong multiplier, a missing or misplaced key bump, a wrong round count or a permuted
/// output word.
#[test]
fn philox_known_answers() {
    assert_eq!(philox4x32_10([0; 4], [0; 2]), [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]);
    assert_eq!(philox4x32_10([u32::MAX; 4], [u32::MAX; 2]), [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]);
    assert_eq!(
        philox4x32_10([0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344], [0xa4093822, 0x299f31d0]),
        [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
    );
}

/// The noise's extremes stay finite (u never reaches 0 or 1) and its mean is Euler's γ.
#[test]
fn gumbel_noise_is_finite_with_mean_gamma() {
    use gkd::backend::cpu::gumbel_of_word;
    for x in [0u32, 255, 1 << 31, (1 << 31) - 1, u32::MAX] {
        assert!(gumbel_of_word(x).is_finite(), "G({x:#x})");
    }
    assert!(gumbel_of_word(u32::MAX) < 17.4 && gumbel_of_word(0) > -3.0);
    let n = 200_000;
    let mean = (0..n).map(|i| gumbel(7, 3, i as u32 / 16, i % 16)).sum::<f64>() / n as f64;
    // σ(G) = π/√6 ≈ 1.28: the mean of 2·10⁵ is within 4σ/√n ≈ 0.012 of γ.
    assert!((mean - 0.577_215_66).abs() < 0.012, "mean Gumbel noise {mean}");
}

/// Catches an argmax that keeps the last of equal maxima, or a greedy path that samples.
#[test]
fn greedy_is_the_argmax_lowest_id_on_ties() {
    let z = [1.0f32, 3.0, 2.0, 3.0, 0.0, -1.0, 3.0, 2.5];
    let s = spec(8, 0.0, 3, 0.5, 11);
    let (t, lp) = cpu(&z, 1, &[0], &[5], &s);
    assert_eq!(t, vec![1]);
    let zf: Vec<f64> = z.iter().map(|&x| x as f64).collect();
    assert_eq!(lp[0], 0.0);
    assert!((lp[1] as f64 - (3.0 - lse(&zf))).abs() < 1e-6);
    // Any position draws the same argmax.
    let z8: Vec<f32> = z.iter().cycle().take(8 * 8).copied().collect();
    let (t, _) = cpu(&z8, 8, &[0; 8], &[0, 1, 2, 3, 4, 5, 6, 7], &s);
    assert_eq!(t, vec![1; 8]);
}

/// lp_model is ln softmax(z)[t] at temperature 1 whatever the spec, and at T = 1 with nothing
/// filtered lp_sample equals it. Catches a log-probability taken at the sampling temperature, over
/// the kept set only, or of a token other than the one returned.
#[test]
fn log_probabilities_against_a_direct_log_softmax() {
    let (rows, v) = (40, 50);
    let z: Vec<f32> = normals(rows * v, 0.0, 2.0, 3).into_iter().map(|x| x as f32).collect();
    let seq: Vec<u32> = (0..rows as u32).collect();
    let pos: Vec<u32> = (0..rows as u32).map(|i| 100 + i).collect();
    for s in
        [spec(v, 0.7, 0, 1.0, 1), spec(v, 1.3, 5, 1.0, 2), spec(v, 1.0, 0, 0.8, 3), spec(v, 1.0, 0, 1.0, 4)]
    {
        let (t, lp) = cpu(&z, rows, &seq, &pos, &s);
        for r in 0..rows {
            let row: Vec<f64> = z[r * v..(r + 1) * v].iter().map(|&x| x as f64).collect();
            let want = row[t[r] as usize] - lse(&row);
            assert!(
                (lp[2 * r + 1] as f64 - want).abs() < 1e-5,
                "{s:?} row {r}: lp_model {} vs {want}",
                lp[2 * r + 1]
            );
            let q = filtered_softmax(&row, s.temperature, s.top_k, s.top_p);
            assert!(q[t[r] as usize] > 0.0, "{s:?} row {r}: token {} is not in the kept set", t[r]);
            let want = q[t[r] as usize].ln();
            assert!(
                (lp[2 * r] as f64 - want).abs() < 1e-5,
                "{s:?} row {r}: lp_sample {} vs {want}",
                lp[2 * r]
            );
            if s.temperature == 1.0 && s.top_k == 0 && s.top_p == 1.0 {
                assert!((lp[2 * r] - lp[2 * r + 1]).abs() <= 1e-6, "T = 1 unfiltered: lp_sample = lp_model");
            }
        }
    }
}

/// (row, T, k, p, the kept ids)
type KeptCase = (Vec<f64>, f64, usize, f64, Vec<usize>);

/// The kept sets of hand-made rows, through the reference's threshold and through draws (every
/// draw lands in the set, and over many positions every kept token shows up). Catches a top-k that
/// drops ties at the k-th value or counts distinct values, a top-p that drops tokens tied at its
/// boundary, stops one group early or late, or runs before top-k.
#[test]
fn kept_sets_of_hand_made_rows() {
    let l2 = std::f64::consts::LN_2;
    let cases: Vec<KeptCase> = vec![
        // top-k: sorted 3, 3, 2, 2, 1, 0; the 3rd largest is 2 and both 2s stay.
        (vec![1.0, 3.0, 2.0, 3.0, 0.0, 2.0], 1.0, 3, 1.0, vec![1, 2, 3, 5]),
        (vec![1.0, 3.0, 2.0, 3.0, 0.0, 2.0], 1.0, 2, 1.0, vec![1, 3]),
        (vec![1.0, 3.0, 2.0, 3.0, 0.0, 2.0], 1.0, 1, 1.0, vec![1, 3]),
        // k ≥ V: no filter.
        (vec![1.0, 3.0, 2.0], 1.0, 3, 1.0, vec![0, 1, 2]),
        (vec![1.0, 3.0, 2.0], 1.0, 9, 1.0, vec![0, 1, 2]),
        // top-p: w = 1, ½, ½, ¼ (W = 2.25). p = 0.5 → 1 ≥ 1.125? no; 2 ≥ 1.125: both ½s stay.
        (vec![0.0, -l2, -l2, -2.0 * l2], 1.0, 0, 0.5, vec![0, 1, 2]),
        // p·W = 0.44·2.25 = 0.99 < 1: the most likely token alone.
        (vec![0.0, -l2, -l2, -2.0 * l2], 1.0, 0, 0.44, vec![0]),
        // p = 0.9: 2.025 > 2 → the ¼ joins.
        (vec![0.0, -l2, -l2, -2.0 * l2], 1.0, 0, 0.9, vec![0, 1, 2, 3]),
        // p tiny: the argmax only; tied maxima both stay.
        (vec![0.5, 2.0, 1.0, -3.0], 0.8, 0, 1e-9, vec![1]),
        (vec![2.0, 1.0, 2.0, -3.0], 0.8, 0, 1e-9, vec![0, 2]),
        // top-k then top-p on the top-k set: z = 3, 2, 1, 0, −1, T = 1, p = 0.9. On K = {0, 1, 2}
        // W = 1.503, p·W = 1.353 ≤ 1.368 → {0, 1}; on the whole row p·W = 1.414 would keep 2 too.
        (vec![3.0, 2.0, 1.0, 0.0, -1.0], 1.0, 3, 0.9, vec![0, 1]),
        (vec![3.0, 2.0, 1.0, 0.0, -1.0], 1.0, 0, 0.9, vec![0, 1, 2]),
        // The temperature reshapes the nucleus: at T = 0.25 the weights are 1, e⁻⁴, …
        (vec![3.0, 2.0, 1.0, 0.0, -1.0], 0.25, 0, 0.9, vec![0]),
    ];
    for (z, t, k, p, want) in cases {
        let s = spec(z.len(), t, k, p, 5);
        let thr = kept_threshold(&z, &s);
        let kept: Vec<usize> = (0..z.len()).filter(|&i| z[i] >= thr).collect();
        assert_eq!(kept, want, "row {z:?} T={t} k={k} p={p}: threshold {thr}");
        let q = filtered_softmax(&z, t, k, p);
        assert_eq!((0..z.len()).filter(|&i| q[i] > 0.0).collect::<Vec<_>>(), want, "the test's own filter");
        // 2000 draws: only kept tokens, and each kept one (probability ≥ 1.3% here) at least once.
        let n = 2000;
        let zf: Vec<f32> = z.iter().map(|&x| x as f32).cycle().take(n * z.len()).collect();
        let pos: Vec<u32> = (0..n as u32).collect();
        let (tokens, _) = cpu(&zf, n, &vec![9; n], &pos, &s);
        let mut seen = vec![false; z.len()];
        tokens.iter().for_each(|&x| seen[x as usize] = true);
        let drawn: Vec<usize> = (0..z.len()).filter(|&i| seen[i]).collect();
        assert_eq!(drawn, want, "row {z:?} T={t} k={k} p={p}: tokens drawn");
    }
}

/// The 12-token row of the distribution tests, and its four settings (T, k, p).
const ROW12: [f32; 12] = [2.0, 1.6, 1.3, 1.0, 0.8, 0.5, 0.3, 0.0, -0.2, -0.5, -0.9, -1.4];
const SETTINGS: [(f64, usize, f64); 4] = [(0.7, 0, 1.0), (1.0, 5, 1.0), (1.3, 0, 0.8), (1.0, 6, 0.9)];

/// Draws `n` tokens from one row (pos = 0..n, one launch) and checks them against the exact
/// filtered softmax, and that the same draws fail against the softmax at a temperature 20%
/// higher.
fn check_distribution(
    name: &str,
    row: &[f32],
    n: usize,
    dtype: DType,
    device: Device,
    settings: &[(f64, usize, f64)],
) {
    let v = row.len();
    let z: Vec<f32> = row.iter().copied().cycle().take(n * v).collect();
    let exact: Vec<f64> = row
        .iter()
        .map(|&x| if dtype == DType::BF16 { half::bf16::from_f32(x).to_f64() } else { x as f64 })
        .collect();
    let pos: Vec<u32> = (0..n as u32).collect();
    for (i, &(t, k, p)) in settings.iter().enumerate() {
        let s = spec(v, t, k, p, 0x5EED_0000_0000_0001 + i as u64);
        let (tokens, _) = run(&z, n, &vec![3; n], &pos, &s, dtype, device);
        let (stat, df) = chi_square(&tokens, &filtered_softmax(&exact, t, k, p));
        let q = chi2_q999(df);
        assert!(stat < q, "{name} T={t} k={k} p={p}: chi-square {stat:.1} ≥ {q:.1} (df {df})");
        let (wrong, wdf) = chi_square(&tokens, &filtered_softmax(&exact, 1.2 * t, k, p));
        assert!(
            wrong > chi2_q999(wdf),
            "{name} T={t} k={k} p={p}: the test cannot tell T from 1.2·T ({wrong:.1}, df {wdf})"
        );
    }
}

/// Catches a draw that is not softmax(z/T) on the kept set: a wrong noise (uniform instead of
/// Gumbel, a biased u), the temperature applied twice or not at all, a kept set off by one group.
#[test]
fn draws_follow_the_filtered_softmax() {
    check_distribution("cpu", &ROW12, 20_000, DType::F32, Device::Cpu, &SETTINGS);
    // The CUDA test's row, here too: the reference passes it and, with these very draws, a 20%
    // wrong temperature fails it (so the GPU test's own negative check is not luck).
    for dtype in [DType::F32, DType::BF16] {
        check_distribution(&format!("cpu {dtype} V=1000"), &row1000(), 20_000, dtype, Device::Cpu, &SETTINGS);
    }
}

/// The V = 1000 row of the distribution tests: normal logits, σ = 1.
fn row1000() -> Vec<f32> {
    normals(1000, 0.0, 1.0, 77).into_iter().map(|x| x as f32).collect()
}

/// A row's draw depends on its logits, seq, pos and the spec only: the same rows sampled in one
/// batch of 8, in batches of 3, 3 and 2, one by one, and permuted give identical outputs. Catches
/// noise keyed by the row index in the batch.
#[test]
fn a_rows_draw_does_not_depend_on_the_batch() {
    let v = 300;
    let z: Vec<f32> = normals(8 * v, 0.0, 1.5, 8).into_iter().map(|x| x as f32).collect();
    let seq = [0u32, 1, 2, 3, 0, 1, 2, 3];
    let pos = [5u32, 5, 5, 5, 6, 6, 6, 6];
    for s in [spec(v, 1.0, 0, 1.0, 42), spec(v, 0.9, 20, 0.9, 43)] {
        let (t8, lp8) = cpu(&z, 8, &seq, &pos, &s);
        let mut t = vec![];
        let mut lp = vec![];
        for (a, b) in [(0, 3), (3, 6), (6, 8)] {
            let (ti, li) = cpu(&z[a * v..b * v], b - a, &seq[a..b], &pos[a..b], &s);
            t.extend(ti);
            lp.extend(li);
        }
        assert_eq!((&t, &lp), (&t8, &lp8), "batches of 3, 3, 2");
        for r in 0..8 {
            let (t1, l1) = cpu(&z[r * v..(r + 1) * v], 1, &seq[r..r + 1], &pos[r..r + 1], &s);
            assert_eq!((t1[0], &l1[..]), (t8[r], &lp8[2 * r..2 * r + 2]), "row {r} alone");
        }
        let perm = [5usize, 2, 7, 0, 3, 6, 1, 4];
        let zp: Vec<f32> = perm.iter().flat_map(|&r| z[r * v..(r + 1) * v].to_vec()).collect();
        let (sp, pp): (Vec<u32>, Vec<u32>) = perm.iter().map(|&r| (seq[r], pos[r])).unzip();
        let (tp, _) = cpu(&zp, 8, &sp, &pp, &s);
        assert_eq!(tp, perm.iter().map(|&r| t8[r]).collect::<Vec<_>>(), "rows permuted");
        // Different positions of one sequence draw different noise: not every token alike.
        let same_row: Vec<f32> = z[..v].iter().copied().cycle().take(8 * v).collect();
        let (tv, _) = cpu(&same_row, 8, &[0; 8], &[0, 1, 2, 3, 4, 5, 6, 7], &spec(v, 5.0, 0, 1.0, 1));
        assert!(tv.iter().any(|&x| x != tv[0]), "eight positions, one token: {tv:?}");
    }
}

/// Bad arguments are errors naming the problem, never a panic.
#[test]
fn bad_arguments_are_refused() {
    let z = Tensor::from_vec(vec![0.5f32; 6], [2, 3]).unwrap();
    let two = Tensor::from_u32(&[0, 1], Device::Cpu).unwrap();
    let three = Tensor::from_u32(&[0, 1, 2], Device::Cpu).unwrap();
    let ok = spec(3, 1.0, 0, 1.0, 0);
    assert!(z.sample(&two, &two, &ok).is_ok());
    let err = |r: gkd::Result<(Tensor, Tensor)>| r.err().map(|e| e.to_string()).unwrap_or_default();
    for (what, e) in [
        ("seq length", err(z.sample(&three, &two, &ok))),
        ("pos length", err(z.sample(&two, &three, &ok))),
        ("vocab mismatch", err(z.sample(&two, &two, &spec(4, 1.0, 0, 1.0, 0)))),
        ("1-D logits", err(z.reshape([6]).unwrap().sample(&two, &two, &ok))),
        ("negative T", err(z.sample(&two, &two, &spec(3, -1.0, 0, 1.0, 0)))),
        ("NaN T", err(z.sample(&two, &two, &spec(3, f64::NAN, 0, 1.0, 0)))),
        ("infinite T", err(z.sample(&two, &two, &spec(3, f64::INFINITY, 0, 1.0, 0)))),
        ("p = 0", err(z.sample(&two, &two, &spec(3, 1.0, 0, 0.0, 0)))),
        ("p > 1", err(z.sample(&two, &two, &spec(3, 1.0, 0, 1.5, 0)))),
        ("float seq", err(z.sample(&Tensor::from_vec(vec![0.0f32, 1.0], [2]).unwrap(), &two, &ok))),
    ] {
        assert!(!e.is_empty(), "{what}: accepted");
    }
    assert!(err(z.sample(&two, &two, &spec(3, 1.0, 0, 1.5, 0))).contains("top-p"));
    assert!(err(z.sample(&two, &two, &spec(3, -1.0, 0, 1.0, 0))).contains("temperature"));
    // V = 1: the token is 0 and both log-probabilities 0.
    let one = Tensor::from_vec(vec![3.0f32, -2.0], [2, 1]).unwrap();
    let (t, lp) = one.sample(&two, &two, &spec(1, 0.7, 0, 0.5, 0)).unwrap();
    assert_eq!(t.to_vec_u32().unwrap(), vec![0, 0]);
    assert_eq!(lp.to_vec_f32().unwrap(), vec![0.0; 4]);
}

// ---------------------------------------------------------------------------------------------
// CUDA

/// The specs the kernels are compared on at vocabulary v: greedy, plain (two temperatures) and
/// filtered (top-k 1, 50, V − 1; top-p 0.9 and 1e-6; both).
fn cuda_specs(v: usize) -> Vec<SampleSpec> {
    let mut s = vec![spec(v, 0.0, 0, 1.0, 1), spec(v, 1.0, 0, 1.0, 2), spec(v, 0.8, 0, 1.0, 3)];
    s.extend([
        spec(v, 1.0, 1, 1.0, 4),
        spec(v, 0.9, 50, 1.0, 5),
        spec(v, 1.1, v.saturating_sub(1), 1.0, 6),
        spec(v, 1.0, 0, 0.9, 7),
        spec(v, 0.7, 0, 1e-6, 8),
        spec(v, 1.2, 50, 0.9, 9),
    ]);
    s
}

/// The reference's score z_i/T + G_i of token i (f64).
fn score(z: &[f64], i: usize, s: &SampleSpec, seq: u32, pos: u32) -> f64 {
    z[i] / s.temperature + gumbel(s.seed, seq, pos, i)
}

/// Compares a GPU draw of `rows` rows with the CPU reference on the same (dtype-rounded) logits.
/// Returns the number of rows whose token differs (each such difference must be a near-tie).
fn compare_with_reference(
    z: &[f32],
    rows: usize,
    s: &SampleSpec,
    dtype: DType,
    dev: Device,
    what: &str,
) -> usize {
    let v = s.vocab;
    let seq: Vec<u32> = (0..rows as u32).map(|r| r * 7 % 5).collect();
    let pos: Vec<u32> = (0..rows as u32).map(|r| 1000 + r).collect();
    let (tg, lg) = run(z, rows, &seq, &pos, s, dtype, dev);
    let (tc, _) = run(z, rows, &seq, &pos, s, dtype, Device::Cpu);
    let exact: Vec<f64> =
        Tensor::from_vec(z.to_vec(), [rows, v]).unwrap().to_dtype(dtype).unwrap().to_vec_f64().unwrap();
    let mut mismatches = 0;
    for r in 0..rows {
        let row = &exact[r * v..(r + 1) * v];
        let (g, c) = (tg[r] as usize, tc[r] as usize);
        assert!(g < v, "{what} row {r}: token {g} outside the vocabulary");
        let thr = if s.temperature == 0.0 { f64::NEG_INFINITY } else { kept_threshold(row, s) };
        assert!(row[g] >= thr, "{what} row {r}: token {g} is not in the kept set");
        if g != c {
            // Only a tie within f32 rounding may differ: the kernel computes z·(1/T) + G in f32
            // (z/T within 2 ulp, G within ~4 ulp of |G| + 1 through two logarithms), so two scores
            // closer than 1e-6·(1 + |z/T| + |G|) may swap. Greedy compares exact values: no slack.
            assert!(s.temperature > 0.0, "{what} row {r}: greedy token {g}, the reference {c}");
            let (sg, sc) = (score(row, g, s, seq[r], pos[r]), score(row, c, s, seq[r], pos[r]));
            let slack = 1e-6 * (1.0 + sc.abs() + (row[c] / s.temperature).abs());
            assert!(
                (sg - sc).abs() <= slack,
                "{what} row {r}: token {g} (score {sg}) vs the reference's {c} (score {sc})"
            );
            mismatches += 1;
        }
        // The log-probabilities of the kernel's token, from the exact values. Both sides see the
        // same (bf16-rounded) logits, so bf16 needs no more room than f32: the kernel's f32 sums
        // of ≤ V terms in trees of depth ~log2(V) are within ~20·2⁻²⁴ relative, ln of them within
        // that absolute, and z_t − m within 1 ulp of |z|: 1e-5·(1 + |lp|) covers V = 151,936.
        let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let lp_model = row[g] - lse(row);
        let lp_sample = if s.temperature == 0.0 {
            0.0
        } else {
            let kept: Vec<f64> =
                row.iter().filter(|&&x| x >= thr).map(|&x| (x - m) / s.temperature).collect();
            (row[g] - m) / s.temperature - lse(&kept)
        };
        for (k, (got, want)) in [(lg[2 * r], lp_sample), (lg[2 * r + 1], lp_model)].into_iter().enumerate() {
            assert!(
                (got as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()),
                "{what} row {r}: logprob[{k}] {got} vs {want}"
            );
        }
        if s.top_k == 1 || s.top_p == 1e-6 {
            // Only the argmax (or tokens tied with it) can be drawn.
            assert_eq!(row[g], m, "{what} row {r}: k = 1 / p = 1e-6 drew a non-maximal token");
        }
    }
    mismatches
}

/// Catches wrong index math at odd V (tails, the scalar path, chunk edges), a wrong Philox counter
/// or word, a wrong radix descent, NaN-poisoned outputs left unwritten, wrong log-probabilities.
#[test]
fn cuda_kernels_match_the_reference() {
    let Some(dev) = cuda_or_skip("sampling::cuda_kernels_match_the_reference") else { return };
    let dev = Device::Cuda(dev.ordinal());
    for dtype in [DType::F32, DType::BF16] {
        let (mut rows_total, mut mismatches) = (0, 0);
        for (v, rows) in [(1usize, 16usize), (7, 64), (1000, 64), (151_936, 8)] {
            let z: Vec<f32> = normals(rows * v, 0.0, 3.0, v as u64).into_iter().map(|x| x as f32).collect();
            for s in cuda_specs(v) {
                let what = format!("{dtype} V={v} {s:?}");
                mismatches += compare_with_reference(&z, rows, &s, dtype, dev, &what);
                rows_total += rows;
            }
        }
        assert!(mismatches * 1000 <= rows_total, "{dtype}: {mismatches} of {rows_total} tokens differ");
        visible(&format!("sampling {dtype}: {mismatches} near-tie differences in {rows_total} rows"));
    }
}

/// The kernels' draws follow the filtered softmax: 20,000 rows of one V = 1000 row in one launch
/// (pos = the row index), each setting, and a temperature 20% off fails the same test.
#[test]
fn cuda_draws_follow_the_filtered_softmax() {
    let Some(dev) = cuda_or_skip("sampling::cuda_draws_follow_the_filtered_softmax") else { return };
    for dtype in [DType::F32, DType::BF16] {
        let d = Device::Cuda(dev.ordinal());
        check_distribution(&format!("cuda {dtype}"), &row1000(), 20_000, dtype, d, &SETTINGS);
    }
}

/// Bit-identical outputs run to run, for a row alone or among 64, and whether the logits start on
/// a 16-byte boundary or not (vector and scalar loads). Catches float atomics, chunking that
/// depends on N, and any order-dependent reduction.
#[test]
fn cuda_draws_are_deterministic() {
    let Some(dev) = cuda_or_skip("sampling::cuda_draws_are_deterministic") else { return };
    let dev = Device::Cuda(dev.ordinal());
    let bits = |lp: &[f32]| lp.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for v in [1000usize, 151_936] {
        let rows = 64;
        let z: Vec<f32> = normals(rows * v, 0.0, 3.0, 5).into_iter().map(|x| x as f32).collect();
        let seq: Vec<u32> = (0..rows as u32).collect();
        let pos: Vec<u32> = (0..rows as u32).map(|r| 3 * r).collect();
        for dtype in [DType::F32, DType::BF16] {
            for s in [
                spec(v, 0.0, 0, 1.0, 1),
                spec(v, 1.0, 0, 1.0, 2),
                spec(v, 1.0, 50, 1.0, 3),
                spec(v, 0.8, 0, 0.9, 4),
            ] {
                let what = format!("{dtype} V={v} {s:?}");
                let (t1, l1) = run(&z, rows, &seq, &pos, &s, dtype, dev);
                let (t2, l2) = run(&z, rows, &seq, &pos, &s, dtype, dev);
                assert_eq!((&t1, bits(&l1)), (&t2, bits(&l2)), "{what}: two runs differ");
                for r in [0usize, 17, 63] {
                    let (ta, la) =
                        run(&z[r * v..(r + 1) * v], 1, &seq[r..r + 1], &pos[r..r + 1], &s, dtype, dev);
                    assert_eq!(
                        (ta[0], bits(&la)),
                        (t1[r], bits(&l1[2 * r..2 * r + 2])),
                        "{what}: row {r} alone"
                    );
                }
                // The same logits one element into a larger buffer: not 16-byte aligned.
                let mut shifted = vec![0.0f32];
                shifted.extend_from_slice(&z);
                let t = Tensor::from_vec(shifted, [rows * v + 1])
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap()
                    .to_device(dev)
                    .unwrap();
                let zt = t.narrow(0, 1, rows * v).unwrap().reshape([rows, v]).unwrap();
                let (ts, ls) = zt
                    .sample(&Tensor::from_u32(&seq, dev).unwrap(), &Tensor::from_u32(&pos, dev).unwrap(), &s)
                    .unwrap();
                assert_eq!(
                    (ts.to_vec_u32().unwrap(), bits(&ls.to_vec_f32().unwrap())),
                    (t1.clone(), bits(&l1)),
                    "{what}: misaligned rows"
                );
            }
        }
    }
}
