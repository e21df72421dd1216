//! Cross-entropy on CUDA against the CPU reference (src/backend/cpu/cross_entropy.rs), on the
//! same inputs (rounded to the dtype under test):
//! - the kernel launcher (src/backend/cuda/cross_entropy.rs) on every kernel (warp and block per
//!   row, 16-byte and scalar accesses), gradient into its own buffer, in place and absent, rows
//!   that start off a 16-byte boundary, odd and even V; IGNORE rows, one target past the
//!   vocabulary (its row NaN, the others untouched by it), and guard elements around every output
//!   that must stay as they were;
//! - the fused output head with cross-entropy (src/backend/cuda/linear_divergence.rs,
//!   `LinearCrossEntropy`) at a Qwen-like shape scaled down (V = 151665 of a 151936-row head,
//!   H = 64) and smaller ones: loss, row losses without gradients, d(hidden), the increment added
//!   to d(head) (its padding rows untouched), chunks that do not divide N; the unfused baseline
//!   against the same reference, and the matmuls alone against their own products.
//!
//! Outputs start as NaN, so an element a kernel does not write fails. Logits are normal with σ = 3
//! so that softmax is peaked (the largest probability of a row ~0.1, far above the tolerances).

mod common;

use common::elem::{normal_f32, rel, round, to_t, Elem};
use gkd::backend::cpu::{cross_entropy_fwd_bwd, matmul, MatmulSpec};
use gkd::backend::cuda::cross_entropy::{cross_entropy_fwd_bwd as cuda_ce, CePath, CrossEntropyLaunch};
use gkd::backend::cuda::divergence::StudentGrad;
use gkd::backend::cuda::linear_divergence::{
    linear_cross_entropy_unfused, LinearCrossEntropy, LinearCrossEntropyInputs,
};
use gkd::backend::cuda::CudaDevice;
use gkd::backend::ops::IGNORE;
use half::bf16;

/// Targets that hit both ends of a row (the elements a 16-byte kernel takes one by one), IGNORE
/// rows, and the middle; row `bad` (if any) gets V, outside the vocabulary.
fn targets(rows: usize, vocab: usize, bad: Option<usize>) -> Vec<u32> {
    (0..rows)
        .map(|r| match r % 5 {
            _ if Some(r) == bad => vocab as u32,
            0 => 0,
            1 => vocab as u32 - 1,
            2 => IGNORE,
            3 => (r * 7919 % vocab) as u32,
            _ => 2.min(vocab as u32 - 1),
        })
        .collect()
}

/// The value written around every output window: a kernel that writes outside it fails.
const GUARD: f32 = 7.0;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Into,
    InPlace,
    LossOnly,
}

/// One launch: the logits at element `offset` of their buffer (the gradient at `g_offset` of its
/// own in `Into`), checked against the CPU on the same rounded values.
#[allow(clippy::too_many_arguments)]
fn check_launch<T: Elem>(
    dev: &CudaDevice,
    rows: usize,
    vocab: usize,
    path: CePath,
    scalar: bool,
    mode: Mode,
    offset: usize,
    g_offset: usize,
) {
    let st = dev.stream();
    let bad = 6; // the row whose target is outside the vocabulary
    let scale = 0.37f32;
    let z = round::<T>(&normal_f32(rows * vocab, 3.0, 40 + vocab as u64));
    let t = targets(rows, vocab, Some(bad));
    // The reference skips the bad row (the CPU backend refuses such a target).
    let t_ref: Vec<u32> = t.iter().enumerate().map(|(r, &y)| if r == bad { IGNORE } else { y }).collect();
    let (want_loss, want_grad) = cross_entropy_fwd_bwd::<f32>(&z, &t_ref, vocab, scale as f64, true);

    let n = rows * vocab;
    let window = |buf_off: usize, inner: &[f32]| -> Vec<T> {
        let mut v = vec![GUARD; buf_off + n + 16];
        v[buf_off..buf_off + n].copy_from_slice(inner);
        to_t::<T>(&v)
    };
    let mut zbuf = st.clone_htod(&window(offset, &z)).unwrap();
    let mut gbuf = st.clone_htod(&window(g_offset, &vec![f32::NAN; n])).unwrap();
    let mut loss_buf = st.clone_htod(&[vec![f32::NAN; rows], vec![GUARD]].concat()).unwrap();
    let dt = st.clone_htod(&t).unwrap();
    let p = CrossEntropyLaunch { rows, vocab, scale, path, scalar };
    let tag = format!(
        "{} rows {rows} V {vocab} {path:?} scalar {scalar} {mode:?} offsets {offset}/{g_offset}",
        T::NAME
    );
    let logits = match mode {
        Mode::Into => StudentGrad::Into {
            student: zbuf.slice(offset..offset + n),
            grad: gbuf.slice_mut(g_offset..g_offset + n),
        },
        Mode::InPlace => StudentGrad::InPlace(zbuf.slice_mut(offset..offset + n)),
        Mode::LossOnly => StudentGrad::LossOnly(zbuf.slice(offset..offset + n)),
    };
    let kernel = cuda_ce(dev, &p, logits, &dt.slice(..), &mut loss_buf.slice_mut(..rows))
        .unwrap_or_else(|e| panic!("{tag}: {e}"));
    let aligned_alike = mode != Mode::Into
        || (offset * std::mem::size_of::<T>()) % 16 == (g_offset * std::mem::size_of::<T>()) % 16;
    assert_eq!(kernel.contains("scalar"), scalar || !aligned_alike, "{tag}: ran {kernel}");
    let warps = match path {
        CePath::Auto => vocab <= gkd::backend::cuda::cross_entropy::WARPS_MAX_VOCAB,
        CePath::Warps => true,
        CePath::Rows => false,
    };
    assert_eq!(kernel.contains("warps"), warps, "{tag}: ran {kernel}");

    // Row losses: f32 on both sides from the same values; ex2/lg2 approximations and the order of
    // the sums: ~1e-6 relative to the largest row loss (a few units); 1e-5 leaves margin.
    let loss = st.clone_dtoh(&loss_buf).unwrap();
    assert_eq!(loss[rows], GUARD, "{tag}: wrote past the row losses");
    assert!(loss[bad].is_nan(), "{tag}: the row with target {} ≥ V has loss {}", t[bad], loss[bad]);
    let (mut got_l, mut want_l) = (loss[..rows].to_vec(), want_loss.clone());
    got_l[bad] = 0.0;
    want_l[bad] = 0.0;
    let e = rel(&got_l, &want_l);
    assert!(e < 1e-5, "{tag}: row losses off by {e:.2e}: {got_l:?} vs {want_l:?}");
    for (r, &y) in t.iter().enumerate() {
        if y == IGNORE {
            assert_eq!(loss[r], 0.0, "{tag}: ignored row {r} has loss {}", loss[r]);
        }
    }

    // The gradient: f32 math on both sides (~1e-6 of the largest entry, scale at a target: 1e-5
    // with margin); bf16 stores each entry rounded to nearest (≤ 2^-9 of itself, so ≤ 2^-9 of the
    // largest: 4e-3).
    let tol = if T::NAME == "bf16" { 4e-3 } else { 1e-5 };
    let (buf, off) = match mode {
        Mode::Into => (st.clone_dtoh(&gbuf).unwrap(), g_offset),
        Mode::InPlace => (st.clone_dtoh(&zbuf).unwrap(), offset),
        Mode::LossOnly => {
            let zb = st.clone_dtoh(&zbuf).unwrap();
            let zb: Vec<f32> = zb.iter().map(|x| x.to_f32()).collect();
            assert_eq!(zb[offset..offset + n], z[..], "{tag}: the logits changed without a gradient");
            return;
        }
    };
    let buf: Vec<f32> = buf.iter().map(|x| x.to_f32()).collect();
    assert!(
        buf[..off].iter().chain(&buf[off + n..]).all(|&x| x == GUARD),
        "{tag}: wrote outside the gradient"
    );
    let mut g = buf[off..off + n].to_vec();
    assert!(
        g[bad * vocab..(bad + 1) * vocab].iter().all(|x| x.is_nan()),
        "{tag}: the bad row's gradient is not NaN"
    );
    g[bad * vocab..(bad + 1) * vocab].iter_mut().for_each(|x| *x = 0.0);
    let e = rel(&g, &want_grad);
    assert!(e < tol, "{tag}: gradient off by {e:.2e} of its largest entry");
    for (r, &y) in t.iter().enumerate() {
        if y == IGNORE {
            assert!(
                g[r * vocab..(r + 1) * vocab].iter().all(|&x| x == 0.0),
                "{tag}: ignored row {r} has a gradient"
            );
        }
    }
}

#[test]
fn cross_entropy_kernels_match_cpu() {
    let Some(dev) = common::cuda_or_skip("cuda_cross_entropy::cross_entropy_kernels_match_cpu") else {
        return;
    };
    for (rows, vocab) in [(13usize, 50usize), (13, 4099), (9, 32000)] {
        for path in [CePath::Auto, CePath::Warps, CePath::Rows] {
            for scalar in [false, true] {
                for mode in [Mode::Into, Mode::InPlace, Mode::LossOnly] {
                    // Rows aligned, and rows starting 3 elements past a 16-byte boundary.
                    for offset in [0, 3] {
                        check_launch::<f32>(&dev, rows, vocab, path, scalar, mode, offset, offset);
                        check_launch::<bf16>(&dev, rows, vocab, path, scalar, mode, offset, offset);
                    }
                }
            }
        }
        // A gradient buffer aligned differently from the logits: the launcher falls back to the
        // scalar kernel by itself.
        check_launch::<bf16>(&dev, rows, vocab, CePath::Auto, false, Mode::Into, 0, 1);
        check_launch::<f32>(&dev, rows, vocab, CePath::Rows, false, Mode::Into, 2, 0);
    }
}

#[test]
fn cross_entropy_launcher_rejects_short_buffers() {
    let Some(dev) = common::cuda_or_skip("cuda_cross_entropy::cross_entropy_launcher_rejects_short_buffers")
    else {
        return;
    };
    let st = dev.stream();
    let z = st.alloc_zeros::<f32>(100).unwrap();
    let t = st.alloc_zeros::<u32>(4).unwrap();
    let mut l = st.alloc_zeros::<f32>(4).unwrap();
    let p = CrossEntropyLaunch { rows: 4, vocab: 26, scale: 1.0, path: CePath::Auto, scalar: false };
    let e = cuda_ce(&dev, &p, StudentGrad::LossOnly(z.slice(..)), &t.slice(..), &mut l.slice_mut(..))
        .unwrap_err()
        .to_string();
    assert!(e.contains("logits has 100 elements"), "{e}");
    let p = CrossEntropyLaunch { rows: 5, vocab: 20, ..p };
    let e = cuda_ce(&dev, &p, StudentGrad::LossOnly(z.slice(..)), &t.slice(..), &mut l.slice_mut(..))
        .unwrap_err()
        .to_string();
    assert!(e.contains("4 targets"), "{e}");
}

/// hidden·Wᵀ over the first V rows of W, rounded to T as the GPU holds logits.
fn logits<T: Elem>(hidden: &[f32], w: &[f32], n: usize, h: usize, v: usize) -> Vec<f32> {
    let mut s = vec![0.0f32; n * v];
    matmul(
        MatmulSpec { m: n, k: h, n: v, trans_a: false, trans_b: true, accumulate: false },
        hidden,
        &w[..v * h],
        &mut s,
    );
    round::<T>(&s)
}

/// The backward products of a (n, V) logit gradient g: (g·W, gᵀ·hidden).
fn backward(g: &[f32], hidden: &[f32], w: &[f32], n: usize, h: usize, v: usize) -> (Vec<f32>, Vec<f32>) {
    let mut dh = vec![0.0f32; n * h];
    matmul(
        MatmulSpec { m: n, k: v, n: h, trans_a: false, trans_b: false, accumulate: false },
        g,
        &w[..v * h],
        &mut dh,
    );
    let mut dw = vec![0.0f32; v * h];
    matmul(
        MatmulSpec { m: v, k: n, n: h, trans_a: true, trans_b: false, accumulate: false },
        g,
        hidden,
        &mut dw,
    );
    (dh, dw)
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum HeadVariant {
    Fused,
    Unfused,
    MatmulsOnly,
}

fn check_head<T: Elem>(dev: &CudaDevice, n: usize, h: usize, v: usize, head_rows: usize, chunk: usize) {
    let st = dev.stream();
    let hidden = round::<T>(&normal_f32(n * h, 1.0, 50));
    // σ = 3/√H: logits of σ ≈ 3, as in the kernel test.
    let w = round::<T>(&normal_f32(head_rows * h, 3.0 / (h as f64).sqrt(), 51));
    let t = targets(n, v, None);
    let counted = t.iter().filter(|&&y| y != IGNORE).count();
    let p = LinearCrossEntropy {
        rows: n,
        dim: h,
        vocab: v,
        scale: 1.0 / counted as f32,
        chunk_rows: chunk,
        path: CePath::Auto,
    };
    let z = logits::<T>(&hidden, &w, n, h, v);
    let (want_rows, want_g) = cross_entropy_fwd_bwd::<f32>(&z, &t, v, p.scale as f64, true);
    let want_loss: f64 = want_rows.iter().map(|&x| x as f64).sum();
    let (want_dh, want_dw) = backward(&want_g, &hidden, &w, n, h, v);
    // The matmuls alone leave the raw logits in place of the gradient.
    let (mm_dh, mm_dw) = backward(&z, &hidden, &w, n, h, v);

    let (dhid, dw, dt) = (
        st.clone_htod(&to_t::<T>(&hidden)).unwrap(),
        st.clone_htod(&to_t::<T>(&w)).unwrap(),
        st.clone_htod(&t).unwrap(),
    );
    let (vh, vw, vt) = (dhid.slice(..), dw.slice(..), dt.slice(..));
    let x = LinearCrossEntropyInputs { hidden: &vh, head: &vw, targets: &vt };
    // d(head) starts nonzero: the call adds to it, and the increment is what is checked.
    let d_head0: Vec<f32> = (0..head_rows * h).map(|i| (i % 13) as f32 * 0.01).collect();
    // Tolerances against the largest entry. f32: cuBLAS and the CPU sum up to V products in
    // different orders, ~√V·2^-24 ≈ 2e-5 relative at V = 151665; 1e-4 leaves margin. bf16: the
    // GPU rounds the logits and G to bf16 (2^-9 relative each) before the products: 2e-2, as
    // tests/cuda_linear_divergence.rs. The loss: f32 sums on rounded logits, the logits themselves
    // an ulp apart where cuBLAS and the CPU round differently: 1e-4 (f32), 2e-3 (bf16).
    let (tol, loss_tol) = if T::NAME == "bf16" { (2e-2, 2e-3) } else { (1e-4, 1e-4) };
    for variant in [HeadVariant::Fused, HeadVariant::Unfused, HeadVariant::MatmulsOnly] {
        let tag = format!("{} {variant:?} n={n} H={h} V={v} head rows {head_rows} chunk {chunk}", T::NAME);
        let mut d_hidden = st.clone_htod(&vec![T::from_f32(f32::NAN); n * h]).unwrap();
        let mut d_head = st.clone_htod(&d_head0).unwrap();
        let (mut gh, mut gw) = (d_hidden.slice_mut(..), d_head.slice_mut(..));
        let out = match variant {
            HeadVariant::Fused => p.run(dev, &x, &mut gh, &mut gw),
            HeadVariant::Unfused => linear_cross_entropy_unfused(&p, dev, &x, &mut gh, &mut gw),
            HeadVariant::MatmulsOnly => p.run_matmuls_only(dev, &x, &mut gh, &mut gw),
        }
        .unwrap_or_else(|e| panic!("{tag}: {e}"));
        let (want_h, want_w) =
            if variant == HeadVariant::MatmulsOnly { (&mm_dh, &mm_dw) } else { (&want_dh, &want_dw) };
        if variant == HeadVariant::MatmulsOnly {
            assert_eq!(out.loss, 0.0, "{tag}");
        } else {
            assert!(
                (out.loss - want_loss).abs() <= loss_tol * want_loss.abs(),
                "{tag}: loss {} vs {want_loss}",
                out.loss
            );
        }
        let got_h: Vec<f32> = st.clone_dtoh(&d_hidden).unwrap().iter().map(|x| x.to_f32()).collect();
        let e = rel(&got_h, want_h);
        assert!(e < tol, "{tag}: d(hidden) off by {e:.2e}");
        let got_w = st.clone_dtoh(&d_head).unwrap();
        let added: Vec<f32> = got_w[..v * h].iter().zip(&d_head0).map(|(g, g0)| g - g0).collect();
        let e = rel(&added, want_w);
        assert!(e < tol, "{tag}: d(head) increment off by {e:.2e}");
        assert_eq!(got_w[v * h..], d_head0[v * h..], "{tag}: padding rows of d(head) were touched");
    }
    // The losses alone: no gradient buffers, the same row losses.
    let rows = p.run_rows(dev, &x, None).unwrap();
    let rows: Vec<f32> = st.clone_dtoh(&rows).unwrap()[..n].to_vec();
    let e = rel(&rows, &want_rows);
    assert!(e < loss_tol * 10.0, "{} n={n} V={v}: loss-only row losses off by {e:.2e}", T::NAME);
}

#[test]
fn fused_head_cross_entropy_matches_cpu() {
    let Some(dev) = common::cuda_or_skip("cuda_cross_entropy::fused_head_cross_entropy_matches_cpu") else {
        return;
    };
    // (N, H, V, head rows, chunk rows): Qwen2.5's vocabulary and padded head with H scaled down
    // from 896 and N from 8192, in chunks of 64 (the last of one row) and in the automatic chunk;
    // an odd V in chunks of 8; a V small enough for one warp per row.
    for (n, h, v, head_rows, chunk) in [
        (257usize, 64usize, 151665usize, 151936usize, 64usize),
        (257, 64, 151665, 151936, 0),
        (37, 24, 4099, 4104, 8),
        (19, 16, 50, 53, 5),
    ] {
        check_head::<bf16>(&dev, n, h, v, head_rows, chunk);
        check_head::<f32>(&dev, n, h, v, head_rows, chunk);
    }
}
