//! Fused lm_head + divergence (src/backend/cuda/linear_divergence.rs) against CPU matrix products
//! and the CPU divergence reference, on the same bf16-rounded inputs: loss, d(student hidden),
//! d(student head) (accumulated into, padding rows untouched), with several chunks and a row mask;
//! the matmuls-only variant and the unfused baseline against the same reference.

mod common;

use gkd::backend::cpu::{matmul, MatmulSpec};
use gkd::backend::cuda::divergence::KernelPath;
use gkd::backend::cuda::linear_divergence::{
    linear_divergence_unfused, LinearDivergence, LinearDivergenceInputs,
};
use gkd::distill::{divergence_fwd_bwd, Divergence};
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
    d_head: Vec<f32>,
}

#[allow(clippy::too_many_arguments)]
fn reference(
    p: &LinearDivergence,
    hs: &[f32],
    ws: &[f32],
    ht: &[f32],
    wt: &[f32],
    mask: &[bool],
    d_head0: &[f32],
) -> Reference {
    let (n, h_s, h_t, v) = (p.rows, p.student_dim, p.teacher_dim, p.vocab);
    let mut s = vec![0.0f32; n * v];
    matmul(
        MatmulSpec { m: n, k: h_s, n: v, trans_a: false, trans_b: true, accumulate: false },
        hs,
        &ws[..v * h_s],
        &mut s,
    );
    let mut t = vec![0.0f32; n * v];
    matmul(
        MatmulSpec { m: n, k: h_t, n: v, trans_a: false, trans_b: true, accumulate: false },
        ht,
        &wt[..v * h_t],
        &mut t,
    );
    // The GPU holds logits in bf16: round the same way before the divergence.
    let s: Vec<f32> = s.iter().map(|&x| bf16::from_f32(x).to_f32()).collect();
    let t: Vec<f32> = t.iter().map(|&x| bf16::from_f32(x).to_f32()).collect();
    let out =
        divergence_fwd_bwd(p.divergence, p.temperature as f64, &s, &t, v, Some(mask), p.scale as f64, true)
            .unwrap();
    let mut d_hidden = vec![0.0f32; n * h_s];
    matmul(
        MatmulSpec { m: n, k: v, n: h_s, trans_a: false, trans_b: false, accumulate: false },
        &out.grad,
        &ws[..v * h_s],
        &mut d_hidden,
    );
    let mut d_head = d_head0.to_vec();
    matmul(
        MatmulSpec { m: v, k: n, n: h_s, trans_a: true, trans_b: false, accumulate: true },
        &out.grad,
        hs,
        &mut d_head[..v * h_s],
    );
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
        let want = reference(&p, &hs, &ws, &ht, &wt, &mask, &d_head0);

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
            let e = rel(&gw[..v * h_s], &want.d_head[..v * h_s]);
            assert!(e < 2e-2, "{tag}: d_head rel err {e:.3e}");
            assert_eq!(&gw[v * h_s..], &d_head0[v * h_s..], "{tag}: padding rows of d_head were touched");
        }
        // The matmuls-only variant runs the same products (its loss is 0: no divergence).
        let mut d_hidden = st.alloc_zeros::<bf16>(n * h_s).unwrap();
        let mut d_head = st.clone_htod(&d_head0).unwrap();
        let out =
            p.run_matmuls_only(&dev, &x, &mut d_hidden.slice_mut(..), &mut d_head.slice_mut(..)).unwrap();
        assert_eq!(out.loss, 0.0);
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
