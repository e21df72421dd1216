//! Fused lm_head + divergence (src/backend/cuda/linear_divergence.rs) against CPU matrix products
//! and the CPU divergence reference, on the same bf16-rounded inputs: loss, d(student hidden), and
//! the increment added to d(student head) (checked by itself, not hidden in the preset buffer it
//! is added to; padding rows untouched), with several chunks and a row mask; the unfused baseline
//! against the same reference, and the matmuls-only variant against its own products (the raw
//! logits in place of the gradient).

mod common;

use gkd::backend::cpu::divergence_fwd_bwd;
use gkd::backend::cpu::{matmul, MatmulSpec};
use gkd::backend::cuda::divergence::KernelPath;
use gkd::backend::cuda::linear_divergence::{
    linear_divergence_unfused, LinearDivergence, LinearDivergenceInputs,
};
use gkd::backend::Divergence;
use half::bf16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn rounded(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| bf16::from_f32((rng.random::<f32>() * 2.0 - 1.0) * scale).to_f32()).collect()
}

fn to_bf16(v: &[f32]) -> Vec<bf16> {
    v.iter().map(|&x| bf16::from_f32(x)).collect()
}

fn rel(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

struct Reference {
    loss: f64,
    d_hidden: Vec<f32>,
    /// What the call adds to d(student head), (V, Hs).
    d_head: Vec<f32>,
}

/// hs·Wᵀ over the first V rows of W, rounded to bf16 as the GPU holds logits.
fn logits_bf16(hs: &[f32], w: &[f32], n: usize, h: usize, v: usize) -> Vec<f32> {
    let mut s = vec![0.0f32; n * v];
    matmul(
        MatmulSpec { m: n, k: h, n: v, trans_a: false, trans_b: true, accumulate: false },
        hs,
        &w[..v * h],
        &mut s,
    );
    s.iter().map(|&x| bf16::from_f32(x).to_f32()).collect()
}

/// The backward products of a (n, V) logit gradient g: (g·W, gᵀ·hs).
fn backward_products(g: &[f32], hs: &[f32], w: &[f32], n: usize, h: usize, v: usize) -> (Vec<f32>, Vec<f32>) {
    let mut d_hidden = vec![0.0f32; n * h];
    matmul(
        MatmulSpec { m: n, k: v, n: h, trans_a: false, trans_b: false, accumulate: false },
        g,
        &w[..v * h],
        &mut d_hidden,
    );
    let mut d_head = vec![0.0f32; v * h];
    matmul(
        MatmulSpec { m: v, k: n, n: h, trans_a: true, trans_b: false, accumulate: false },
        g,
        hs,
        &mut d_head,
    );
    (d_hidden, d_head)
}

fn reference(
    p: &LinearDivergence,
    hs: &[f32],
    ws: &[f32],
    ht: &[f32],
    wt: &[f32],
    mask: &[bool],
) -> Reference {
    let (n, h_s, h_t, v) = (p.rows, p.student_dim, p.teacher_dim, p.vocab);
    let s = logits_bf16(hs, ws, n, h_s, v);
    let t = logits_bf16(ht, wt, n, h_t, v);
    let out =
        divergence_fwd_bwd(p.divergence, p.temperature as f64, &s, &t, v, Some(mask), p.scale as f64, true)
            .unwrap();
    let (d_hidden, d_head) = backward_products(&out.grad, hs, ws, n, h_s, v);
    Reference { loss: out.loss, d_hidden, d_head }
}

#[test]
fn fused_linear_divergence_matches_cpu() {
    let Some(dev) = common::cuda_or_skip("cuda_linear_divergence::fused_linear_divergence_matches_cpu")
    else {
        return;
    };
    let st = dev.stream().clone();
    let mut rng = StdRng::seed_from_u64(5);
    for &(n, h_s, h_t, v, chunk, div) in &[
        (37usize, 24usize, 40usize, 1001usize, 8usize, Divergence::Jsd { beta: 0.5 }),
        (70, 32, 48, 32003, 0, Divergence::ForwardKl),
        (19, 16, 16, 4099, 5, Divergence::ReverseKl),
        (33, 24, 8, 777, 32, Divergence::Jsd { beta: 0.1 }),
    ] {
        let pad = 5; // head rows beyond the vocabulary: ignored, their gradient rows untouched
        let hs = rounded(&mut rng, n * h_s, 2.0);
        let ws = rounded(&mut rng, (v + pad) * h_s, 1.0);
        let ht = rounded(&mut rng, n * h_t, 2.0);
        let wt = rounded(&mut rng, (v + pad) * h_t, 1.0);
        let mask: Vec<bool> = (0..n).map(|i| i % 7 != 3).collect();
        let d_head0: Vec<f32> = (0..(v + pad) * h_s).map(|i| (i % 13) as f32 * 0.01).collect();
        let p = LinearDivergence {
            rows: n,
            student_dim: h_s,
            teacher_dim: h_t,
            vocab: v,
            divergence: div,
            temperature: 1.5,
            scale: 1.0 / mask.iter().filter(|&&m| m).count() as f32,
            chunk_rows: chunk,
            path: KernelPath::Auto,
        };
        let want = reference(&p, &hs, &ws, &ht, &wt, &mask);

        let (dhs, dws) = (st.clone_htod(&to_bf16(&hs)).unwrap(), st.clone_htod(&to_bf16(&ws)).unwrap());
        let (dht, dwt) = (st.clone_htod(&to_bf16(&ht)).unwrap(), st.clone_htod(&to_bf16(&wt)).unwrap());
        let dmask = st.clone_htod(&mask.iter().map(|&m| m as u8).collect::<Vec<u8>>()).unwrap();
        let (vhs, vws, vht, vwt, vmask) =
            (dhs.slice(..), dws.slice(..), dht.slice(..), dwt.slice(..), dmask.slice(..));
        let x = LinearDivergenceInputs {
            student_hidden: &vhs,
            student_head: &vws,
            teacher_hidden: &vht,
            teacher_head: &vwt,
            row_mask: Some(&vmask),
        };
        for unfused in [false, true] {
            let what = if unfused { "unfused" } else { "fused" };
            let mut d_hidden = st.clone_htod(&vec![bf16::NAN; n * h_s]).unwrap();
            let mut d_head = st.clone_htod(&d_head0).unwrap();
            let out = if unfused {
                linear_divergence_unfused(
                    &p,
                    &dev,
                    &x,
                    &mut d_hidden.slice_mut(..),
                    &mut d_head.slice_mut(..),
                )
                .unwrap()
            } else {
                p.run(&dev, &x, &mut d_hidden.slice_mut(..), &mut d_head.slice_mut(..)).unwrap()
            };
            let gh: Vec<f32> = st.clone_dtoh(&d_hidden).unwrap().iter().map(|x| x.to_f32()).collect();
            let gw = st.clone_dtoh(&d_head).unwrap();
            let tag = format!("{what} n={n} Hs={h_s} Ht={h_t} V={v} chunk={chunk} {div}");
            assert!(
                (out.loss - want.loss).abs() <= 2e-3 * want.loss.abs().max(1e-3),
                "{tag}: loss {} vs {}",
                out.loss,
                want.loss
            );
            assert!(gh.iter().all(|x| x.is_finite()), "{tag}: d_hidden not fully written");
            let e = rel(&gh, &want.d_hidden);
            assert!(e < 2e-2, "{tag}: d_hidden rel err {e:.3e}");
            // The increment itself: a missing or sign-flipped gradient fails here.
            let added: Vec<f32> = gw[..v * h_s].iter().zip(&d_head0).map(|(g, g0)| g - g0).collect();
            let e = rel(&added, &want.d_head);
            assert!(e < 2e-2, "{tag}: d_head increment rel err {e:.3e}");
            assert_eq!(&gw[v * h_s..], &d_head0[v * h_s..], "{tag}: padding rows of d_head were touched");
        }
        // The matmuls-only variant runs the same products on the raw logits (no divergence in
        // between, loss 0): its outputs are the backward products of the student's logits.
        let mut d_hidden = st.clone_htod(&vec![bf16::NAN; n * h_s]).unwrap();
        let mut d_head = st.clone_htod(&d_head0).unwrap();
        let out =
            p.run_matmuls_only(&dev, &x, &mut d_hidden.slice_mut(..), &mut d_head.slice_mut(..)).unwrap();
        assert_eq!(out.loss, 0.0);
        let (mm_hidden, mm_head) = backward_products(&logits_bf16(&hs, &ws, n, h_s, v), &hs, &ws, n, h_s, v);
        let gh: Vec<f32> = st.clone_dtoh(&d_hidden).unwrap().iter().map(|x| x.to_f32()).collect();
        let gw = st.clone_dtoh(&d_head).unwrap();
        let added: Vec<f32> = gw[..v * h_s].iter().zip(&d_head0).map(|(g, g0)| g - g0).collect();
        let (eh, ew) = (rel(&gh, &mm_hidden), rel(&added, &mm_head));
        assert!(
            eh < 2e-2 && ew < 2e-2,
            "matmuls only, n={n} V={v}: d_hidden {eh:.3e}, d_head increment {ew:.3e}"
        );
    }
}

#[test]
fn fused_linear_divergence_rejects_short_buffers() {
    let Some(dev) =
        common::cuda_or_skip("cuda_linear_divergence::fused_linear_divergence_rejects_short_buffers")
    else {
        return;
    };
    let st = dev.stream().clone();
    let small = st.alloc_zeros::<bf16>(10).unwrap();
    let v = small.slice(..);
    let x = LinearDivergenceInputs {
        student_hidden: &v,
        student_head: &v,
        teacher_hidden: &v,
        teacher_head: &v,
        row_mask: None,
    };
    let p = LinearDivergence {
        rows: 4,
        student_dim: 8,
        teacher_dim: 8,
        vocab: 16,
        divergence: Divergence::ForwardKl,
        temperature: 1.0,
        scale: 1.0,
        chunk_rows: 0,
        path: KernelPath::Auto,
    };
    let mut dh = st.alloc_zeros::<bf16>(32).unwrap();
    let mut dw = st.alloc_zeros::<f32>(128).unwrap();
    let e = p.run(&dev, &x, &mut dh.slice_mut(..), &mut dw.slice_mut(..)).unwrap_err().to_string();
    assert!(e.contains("needs at least"), "{e}");
}
