//! Cross-entropy with a weight per row on CUDA (kernels/cross_entropy.cu's `row_weight`, the
//! policy-gradient term of RL + GKD) against the CPU reference
//! (`backend::cpu::cross_entropy_weighted_fwd_bwd`) on the same rounded inputs: every kernel (warp
//! and block per row, 16-byte and scalar accesses), the gradient into its own buffer, in place and
//! absent; weights of both signs, exactly 0, and non-zero on IGNORE rows (which must stay 0); and
//! the fused output head (`LinearCrossEntropy::run_rows_weighted`) in chunks that do not divide
//! the rows. Outputs start as NaN, so an element a kernel does not write fails; logits are normal
//! with σ = 3 so that softmax is peaked and the weighted quantities are far above the tolerances.

mod common;

use common::elem::{normal_f32, rel, round, to_t, Elem};
use cudarc::driver::CudaSlice;
use gkd::backend::cpu::{cross_entropy_weighted_fwd_bwd, matmul, MatmulSpec};
use gkd::backend::cuda::cross_entropy::{
    cross_entropy_weighted_fwd_bwd as cuda_wce, CePath, CrossEntropyLaunch,
};
use gkd::backend::cuda::divergence::StudentGrad;
use gkd::backend::cuda::linear_divergence::{LinearCrossEntropy, LinearCrossEntropyInputs};
use gkd::backend::cuda::CudaDevice;
use gkd::backend::ops::IGNORE;
use half::bf16;

/// Targets at both ends of a row and in the middle, every fourth row IGNORE.
fn targets(rows: usize, vocab: usize) -> Vec<u32> {
    (0..rows)
        .map(|r| match r % 4 {
            0 => 0,
            1 => vocab as u32 - 1,
            2 => IGNORE,
            _ => (r * 7919 % vocab) as u32,
        })
        .collect()
}

/// Weights in [−2, 2] by steps of 0.5 (0 on rows 4, 13, …), non-zero on most IGNORE rows.
fn weights(rows: usize) -> Vec<f32> {
    (0..rows).map(|r| ((r * 5 % 9) as f32 - 4.0) * 0.5).collect()
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Into,
    InPlace,
    LossOnly,
}

fn check_launch<T: Elem>(
    dev: &CudaDevice,
    rows: usize,
    vocab: usize,
    path: CePath,
    scalar: bool,
    mode: Mode,
) {
    let st = dev.stream();
    let scale = 0.37f32;
    let n = rows * vocab;
    let z = round::<T>(&normal_f32(n, 3.0, 90 + vocab as u64));
    let (t, w) = (targets(rows, vocab), weights(rows));
    let (want_loss, want_grad) =
        cross_entropy_weighted_fwd_bwd::<f32>(&z, &t, Some(&w), vocab, scale as f64, true);
    let mut zbuf = st.clone_htod(&to_t::<T>(&z)).unwrap();
    let mut gbuf = st.clone_htod(&to_t::<T>(&vec![f32::NAN; n])).unwrap();
    let mut loss_buf = st.clone_htod(&vec![f32::NAN; rows]).unwrap();
    let (dt, dw) = (st.clone_htod(&t).unwrap(), st.clone_htod(&w).unwrap());
    let p = CrossEntropyLaunch { rows, vocab, scale, path, scalar };
    let tag = format!("{} rows {rows} V {vocab} {path:?} scalar {scalar} {mode:?}", T::NAME);
    let logits = match mode {
        Mode::Into => StudentGrad::Into { student: zbuf.slice(..), grad: gbuf.slice_mut(..) },
        Mode::InPlace => StudentGrad::InPlace(zbuf.slice_mut(..)),
        Mode::LossOnly => StudentGrad::LossOnly(zbuf.slice(..)),
    };
    cuda_wce(dev, &p, logits, &dt.slice(..), Some(&dw.slice(..)), &mut loss_buf.slice_mut(..))
        .unwrap_or_else(|e| panic!("{tag}: {e}"));

    // Row losses: f32 on both sides from the same values (the weight multiplies the scale in f32
    // here, in f64 there: 2^-24 relative), ex2/lg2 approximations: ~1e-6 of the largest row loss
    // (|w|·scale·(lse − z_t), a few units); 1e-5 leaves margin, a dropped weight is off by O(1).
    let loss = st.clone_dtoh(&loss_buf).unwrap();
    let e = rel(&loss, &want_loss);
    assert!(e < 1e-5, "{tag}: row losses off by {e:.2e}: {loss:?} vs {want_loss:?}");
    for r in 0..rows {
        if t[r] == IGNORE || w[r] == 0.0 {
            assert_eq!(
                loss[r], 0.0,
                "{tag}: row {r} (target {}, weight {}) has loss {}",
                t[r], w[r], loss[r]
            );
        }
    }
    assert!(want_loss.iter().any(|&l| l < -0.5), "{tag}: no negative weighted loss to test");

    // The gradient: f32 math on both sides, 1e-5 of the largest entry; bf16 stores each entry
    // rounded to nearest (≤ 2^-9 of itself, so ≤ 2^-9 of the largest: 4e-3).
    let tol = if T::NAME == "bf16" { 4e-3 } else { 1e-5 };
    let g: Vec<f32> = match mode {
        Mode::Into => st.clone_dtoh(&gbuf).unwrap(),
        Mode::InPlace => st.clone_dtoh(&zbuf).unwrap(),
        Mode::LossOnly => return,
    }
    .iter()
    .map(|x| x.to_f32())
    .collect();
    let e = rel(&g, &want_grad);
    assert!(e < tol, "{tag}: gradient off by {e:.2e} of its largest entry");
    for r in (0..rows).filter(|&r| t[r] == IGNORE || w[r] == 0.0) {
        assert!(g[r * vocab..(r + 1) * vocab].iter().all(|&x| x == 0.0), "{tag}: row {r} has a gradient");
    }
}

#[test]
fn weighted_cross_entropy_kernels_match_cpu() {
    let Some(dev) =
        common::cuda_or_skip("cuda_weighted_cross_entropy::weighted_cross_entropy_kernels_match_cpu")
    else {
        return;
    };
    for (rows, vocab) in [(13usize, 50usize), (13, 4099), (9, 32001)] {
        for path in [CePath::Auto, CePath::Warps, CePath::Rows] {
            for scalar in [false, true] {
                for mode in [Mode::Into, Mode::InPlace, Mode::LossOnly] {
                    check_launch::<f32>(&dev, rows, vocab, path, scalar, mode);
                    check_launch::<bf16>(&dev, rows, vocab, path, scalar, mode);
                }
            }
        }
    }
    // Too few weights for the rows: an error, not a read past the buffer.
    let st = dev.stream();
    let z = st.alloc_zeros::<f32>(40).unwrap();
    let t = st.alloc_zeros::<u32>(4).unwrap();
    let w = st.alloc_zeros::<f32>(3).unwrap();
    let mut l = st.alloc_zeros::<f32>(4).unwrap();
    let p = CrossEntropyLaunch { rows: 4, vocab: 10, scale: 1.0, path: CePath::Auto, scalar: false };
    let e = cuda_wce(
        &dev,
        &p,
        StudentGrad::LossOnly(z.slice(..)),
        &t.slice(..),
        Some(&w.slice(..)),
        &mut l.slice_mut(..),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("3 row weights for 4 rows"), "{e}");
}

/// The fused head with weighted rows: loss rows, d(hidden) and d(head) against the CPU's
/// logits → weighted cross-entropy → products, in f32 (bf16 is covered by tests/device_ops.rs).
#[test]
fn weighted_fused_head_matches_cpu() {
    let Some(dev) = common::cuda_or_skip("cuda_weighted_cross_entropy::weighted_fused_head_matches_cpu")
    else {
        return;
    };
    let st = dev.stream();
    for (rows, dim, vocab, head_rows, chunk) in
        [(37usize, 32usize, 1999usize, 2003usize, 8usize), (23, 16, 151665, 151936, 5)]
    {
        let hidden = normal_f32(rows * dim, 1.0, 7);
        let head = normal_f32(head_rows * dim, 0.6, 8);
        let (t, w) = (targets(rows, vocab), weights(rows));
        let scale = 0.125f32;
        // CPU: logits (rows, V) = h·W[..V]ᵀ, the weighted loss, then dh = G·W, dW = Gᵀ·h.
        let mut z = vec![0.0f32; rows * vocab];
        let mm = |m, k, n, ta, tb| MatmulSpec { m, k, n, trans_a: ta, trans_b: tb, accumulate: false };
        matmul(mm(rows, dim, vocab, false, true), &hidden, &head[..vocab * dim], &mut z);
        let (want_loss, g) =
            cross_entropy_weighted_fwd_bwd::<f32>(&z, &t, Some(&w), vocab, scale as f64, true);
        let mut want_dh = vec![0.0f32; rows * dim];
        matmul(mm(rows, vocab, dim, false, false), &g, &head[..vocab * dim], &mut want_dh);
        let mut want_dw = vec![0.0f32; vocab * dim];
        matmul(mm(vocab, rows, dim, true, false), &g, &hidden, &mut want_dw);

        let (dh, dhead) = (st.clone_htod(&hidden).unwrap(), st.clone_htod(&head).unwrap());
        let (dt, dwt) = (st.clone_htod(&t).unwrap(), st.clone_htod(&w).unwrap());
        let mut d_hidden: CudaSlice<f32> = st.clone_htod(&vec![f32::NAN; rows * dim]).unwrap();
        let mut d_head: CudaSlice<f32> = st.alloc_zeros(head_rows * dim).unwrap();
        let p = LinearCrossEntropy { rows, dim, vocab, scale, chunk_rows: chunk, path: CePath::Auto };
        let (vh, vw, vt) = (dh.slice(..), dhead.slice(..), dt.slice(..));
        let x = LinearCrossEntropyInputs { hidden: &vh, head: &vw, targets: &vt };
        let grads = Some((&mut d_hidden.slice_mut(..), &mut d_head.slice_mut(..)));
        let losses = p.run_rows_weighted(&dev, &x, Some(&dwt.slice(..)), grads).unwrap();
        let tag = format!("rows {rows} H {dim} V {vocab} chunk {chunk}");
        // f32 products of K = H or K = V terms on both sides, in different orders: ~1e-6·√K
        // relative to the largest entry; 1e-4 leaves margin (a dropped weight is off by O(1)).
        let loss = st.clone_dtoh(&losses).unwrap();
        let e = rel(&loss[..rows], &want_loss);
        assert!(e < 1e-4, "{tag}: row losses off by {e:.2e}");
        let e = rel(&st.clone_dtoh(&d_hidden).unwrap(), &want_dh);
        assert!(e < 1e-4, "{tag}: d(hidden) off by {e:.2e}");
        let dw = st.clone_dtoh(&d_head).unwrap();
        let e = rel(&dw[..vocab * dim], &want_dw);
        assert!(e < 1e-4, "{tag}: d(head) off by {e:.2e}");
        assert!(dw[vocab * dim..].iter().all(|&x| x == 0.0), "{tag}: d(head) padding rows written");
    }
}
