//! cuBLAS products (src/backend/cuda/matmul.rs) against the CPU GEMM: every transpose, strided
//! operands, f32 and bf16 inputs, bf16 and f32 outputs, accumulation with beta = 1, and an empty
//! inner dimension.

mod common;

use gkd::backend::cpu::{matmul, MatmulSpec};
use gkd::backend::cuda::matmul::{gemm, Gemm};
use half::bf16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn rel(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

#[test]
fn gemm_matches_cpu() {
    let Some(dev) = common::cuda_or_skip("cuda_matmul::gemm_matches_cpu") else { return };
    let s = dev.stream().clone();
    let mut rng = StdRng::seed_from_u64(3);
    for &(m, n, k) in &[(1, 1, 1), (7, 5, 3), (64, 96, 33), (129, 257, 65)] {
        for ta in [false, true] {
            for tb in [false, true] {
                // bf16-representable inputs so both precisions see identical operands.
                let a: Vec<f32> =
                    (0..m * k).map(|_| bf16::from_f32(rng.random::<f32>() - 0.5).to_f32()).collect();
                let b: Vec<f32> =
                    (0..k * n).map(|_| bf16::from_f32(rng.random::<f32>() - 0.5).to_f32()).collect();
                let c0: Vec<f32> = (0..m * n).map(|_| rng.random::<f32>()).collect();
                let spec = MatmulSpec { m, k, n, trans_a: ta, trans_b: tb, accumulate: true };
                let mut want = c0.clone();
                matmul(spec, &a, &b, &mut want);

                // f32 in, f32 out, beta = 1
                let g = Gemm { beta: 1.0, ..Gemm::dense(m, n, k, ta, tb) };
                let (da, db) = (s.clone_htod(&a).unwrap(), s.clone_htod(&b).unwrap());
                let mut dc = s.clone_htod(&c0).unwrap();
                gemm(&dev, &g, &da, &db, &mut dc).unwrap();
                let got = s.clone_dtoh(&dc).unwrap();
                assert!(
                    rel(&got, &want) < 1e-5,
                    "f32 m={m} n={n} k={k} ta={ta} tb={tb}: {}",
                    rel(&got, &want)
                );

                // bf16 in, f32 out (the gradient-accumulator case)
                let ab: Vec<bf16> = a.iter().map(|&x| bf16::from_f32(x)).collect();
                let bb: Vec<bf16> = b.iter().map(|&x| bf16::from_f32(x)).collect();
                let (da, db) = (s.clone_htod(&ab).unwrap(), s.clone_htod(&bb).unwrap());
                let mut dc = s.clone_htod(&c0).unwrap();
                gemm(&dev, &g, &da, &db, &mut dc).unwrap();
                let got = s.clone_dtoh(&dc).unwrap();
                assert!(rel(&got, &want) < 1e-5, "bf16->f32 m={m} n={n} k={k}: {}", rel(&got, &want));

                // bf16 in, bf16 out, beta = 0
                let g0 = Gemm::dense(m, n, k, ta, tb);
                let mut want0 = vec![0.0; m * n];
                matmul(MatmulSpec { accumulate: false, ..spec }, &a, &b, &mut want0);
                let mut dc = s.alloc_zeros::<bf16>(m * n).unwrap();
                gemm(&dev, &g0, &da, &db, &mut dc).unwrap();
                let got: Vec<f32> = s.clone_dtoh(&dc).unwrap().iter().map(|x| x.to_f32()).collect();
                assert!(rel(&got, &want0) < 1e-2, "bf16 m={m} n={n} k={k}: {}", rel(&got, &want0));
            }
        }
    }
}

#[test]
fn gemm_on_strided_blocks() {
    // C[2:5, 1:4] of a 6×5 buffer = A[rows 1..4 of a 5×4 buffer] · Bᵀ, B a 3×4 block of a 3×6 buffer.
    let Some(dev) = common::cuda_or_skip("cuda_matmul::gemm_on_strided_blocks") else { return };
    let s = dev.stream().clone();
    let a: Vec<f32> = (0..20).map(|i| i as f32 * 0.1).collect();
    let b: Vec<f32> = (0..18).map(|i| 1.0 - i as f32 * 0.05).collect();
    let mut c = vec![-1.0f32; 30];
    let (da, db) = (s.clone_htod(&a).unwrap(), s.clone_htod(&b).unwrap());
    let mut dc = s.clone_htod(&c).unwrap();
    let g = Gemm {
        m: 3,
        n: 3,
        k: 4,
        trans_a: false,
        trans_b: true,
        lda: 4,
        ldb: 6,
        ldc: 5,
        alpha: 1.0,
        beta: 0.0,
    };
    gemm(&dev, &g, &da.slice(4..), &db, &mut dc.slice_mut(11..)).unwrap();
    let got = s.clone_dtoh(&dc).unwrap();
    for i in 0..3 {
        for j in 0..3 {
            let want: f32 = (0..4).map(|p| a[(1 + i) * 4 + p] * b[j * 6 + p]).sum();
            c[(2 + i) * 5 + 1 + j] = want;
        }
    }
    for (idx, (g, w)) in got.iter().zip(&c).enumerate() {
        assert!((g - w).abs() < 1e-5, "element {idx}: {g} vs {w}");
    }
    // Too small a buffer is an error, not an out-of-bounds write.
    let bad = Gemm { ldc: 50, ..g };
    assert!(gemm(&dev, &bad, &da, &db, &mut dc).is_err());
}

/// k = 0 (an empty inner dimension: a bias gradient over no rows, a linear layer of no inputs):
/// C = 0 with beta = 0, C untouched with beta = 1, on a strided block, in every transpose (the
/// leading dimensions of A or B are then 0, which cuBLAS itself rejects).
#[test]
fn empty_inner_dimension() {
    let Some(dev) = common::cuda_or_skip("cuda_matmul::empty_inner_dimension") else { return };
    let s = dev.stream().clone();
    let (m, n, ldc) = (3, 4, 6);
    let c0: Vec<f32> = (0..m * ldc).map(|i| 1.0 + i as f32).collect();
    let (da, db) = (s.alloc_zeros::<f32>(1).unwrap(), s.alloc_zeros::<f32>(1).unwrap());
    for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
        for beta in [0.0, 1.0] {
            let g = Gemm { ldc, beta, ..Gemm::dense(m, n, 0, ta, tb) };
            let mut dc = s.clone_htod(&c0).unwrap();
            gemm(&dev, &g, &da.slice(..0), &db.slice(..0), &mut dc).unwrap();
            let got = s.clone_dtoh(&dc).unwrap();
            for (i, (&x, &x0)) in got.iter().zip(&c0).enumerate() {
                let inside = i % ldc < n;
                let want = if inside && beta == 0.0 { 0.0 } else { x0 };
                assert_eq!(x, want, "ta={ta} tb={tb} beta={beta}: element {i}");
            }
        }
    }
}

/// The cuBLASLt product with the bias epilogue (the linear layer's forward with a bias) runs —
/// it is not silently replaced by the cuBLAS fallback — and equals x·op(W) + b from the CPU
/// GEMM, for both weight layouts, f32 (within 1e-5: f32 compute, no TF32) and bf16 (within 1e-2:
/// the output rounded to bf16, 2⁻⁹ relative, on bf16-representable inputs).
#[test]
fn linear_bias_epilogue_matches_cpu() {
    use gkd::backend::cuda::lt::linear_bias;
    use gkd::backend::ops::LinearDims;
    let Some(dev) = common::cuda_or_skip("cuda_matmul::linear_bias_epilogue_matches_cpu") else { return };
    let s = dev.stream().clone();
    let mut rng = StdRng::seed_from_u64(9);
    for &(n, d_in, d_out) in &[(8, 16, 24), (100, 64, 200), (1000, 896, 128)] {
        for w_in_out in [false, true] {
            let r = |len: usize, rng: &mut StdRng| -> Vec<f32> {
                (0..len).map(|_| bf16::from_f32(rng.random::<f32>() - 0.5).to_f32()).collect()
            };
            let (x, w, b) = (r(n * d_in, &mut rng), r(d_in * d_out, &mut rng), r(d_out, &mut rng));
            // want = x·op(W) + b; W is (Dout, Din) (used transposed) or (Din, Dout).
            let mut want: Vec<f32> = (0..n * d_out).map(|i| b[i % d_out]).collect();
            let spec =
                MatmulSpec { m: n, k: d_in, n: d_out, trans_a: false, trans_b: !w_in_out, accumulate: true };
            matmul(spec, &x, &w, &mut want);
            let d = LinearDims { n, d_in, d_out, w_in_out };
            let (dx, dw, db) =
                (s.clone_htod(&x).unwrap(), s.clone_htod(&w).unwrap(), s.clone_htod(&b).unwrap());
            let mut dy = s.clone_htod(&vec![f32::NAN; n * d_out]).unwrap();
            assert!(
                linear_bias(&dev, d, &dx, &dw, &db, &mut dy).unwrap(),
                "no cuBLASLt algorithm for f32 {d:?}"
            );
            let got = s.clone_dtoh(&dy).unwrap();
            assert!(rel(&got, &want) < 1e-5, "f32 {d:?}: {}", rel(&got, &want));
            let h = |v: &[f32]| -> Vec<bf16> { v.iter().map(|&e| bf16::from_f32(e)).collect() };
            let (dx, dw, db) =
                (s.clone_htod(&h(&x)).unwrap(), s.clone_htod(&h(&w)).unwrap(), s.clone_htod(&h(&b)).unwrap());
            let mut dy = s.clone_htod(&vec![bf16::NAN; n * d_out]).unwrap();
            assert!(
                linear_bias(&dev, d, &dx, &dw, &db, &mut dy).unwrap(),
                "no cuBLASLt algorithm for bf16 {d:?}"
            );
            let got: Vec<f32> = s.clone_dtoh(&dy).unwrap().iter().map(|v| v.to_f32()).collect();
            assert!(rel(&got, &want) < 1e-2, "bf16 {d:?}: {}", rel(&got, &want));
        }
    }
}
