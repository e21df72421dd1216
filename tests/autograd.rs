//! The tape end to end: a small transformer (embedding, RMSNorm, q/k/v projections with bias,
//! rotary embedding, grouped-query causal attention over padded sequences, output projection,
//! residual adds, LayerNorm, a SwiGLU and a GELU MLP, a Conv1D-layout head, cross-entropy with
//! ignored targets) recorded in f64; every parameter's gradient from one backward pass is checked
//! against central finite differences of the whole forward.

use gkd::autograd::{AttnDims, Tape, Var, WeightLayout};
use gkd::backend::ops::IGNORE;
use gkd::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;

const B: usize = 2;
const T: usize = 4;
const C: usize = 8;
const HQ: usize = 4;
const HKV: usize = 2;
const D: usize = C / HQ;
const V: usize = 11;
const I: usize = 6;

struct Model {
    shapes: Vec<Vec<usize>>,
}

impl Model {
    fn new() -> Model {
        let kv = HKV * D;
        let shapes = vec![
            vec![V, C],  // 0 embedding
            vec![C],     // 1 rms w
            vec![C, C],  // 2 wq
            vec![C],     // 3 bq
            vec![kv, C], // 4 wk
            vec![kv, C], // 5 wv
            vec![kv],    // 6 bv
            vec![C, C],  // 7 wo
            vec![C],     // 8 ln w
            vec![C],     // 9 ln b
            vec![I, C],  // 10 gate
            vec![I, C],  // 11 up
            vec![C, I],  // 12 down
            vec![C, I],  // 13 gelu fc (Conv1D layout: (in, out))
            vec![I, C],  // 14 gelu proj (Conv1D)
            vec![C, V],  // 15 head (Conv1D)
            vec![V],     // 16 head bias
        ];
        Model { shapes }
    }

    /// The loss for these parameter values; with `grads`, also the gradient of each parameter.
    fn loss(&self, params: &[Vec<f64>], want_grads: bool) -> (f64, Vec<Vec<f64>>) {
        let ids = Tensor::from_u32(&[3, 1, 4, 1, 5, 9, 2, 6], Device::Cpu).unwrap();
        let lengths = Tensor::from_u32(&[4, 3], Device::Cpu).unwrap();
        let positions: Vec<u32> = (0..B * T).map(|i| (i % T) as u32).collect();
        let positions = Tensor::from_u32(&positions, Device::Cpu).unwrap();
        let targets = Tensor::from_u32(&[1, 4, IGNORE, 5, 9, 2, IGNORE, IGNORE], Device::Cpu).unwrap();
        let inv_freq: Arc<[f64]> = (0..D / 2).map(|i| 1.0 / 500f64.powf(2.0 * i as f64 / D as f64)).collect();
        let mut tape = Tape::new();
        let p: Vec<Var> = params
            .iter()
            .zip(&self.shapes)
            .map(|(v, s)| tape.leaf(Tensor::from_vec(v.clone(), s.clone()).unwrap(), true))
            .collect();
        let x = tape.embedding(&ids, &p[0]).unwrap();
        let h = tape.rms_norm(&x, &p[1], 1e-6).unwrap();
        let q = tape.linear(&h, &p[2], Some(&p[3]), WeightLayout::OutIn).unwrap();
        let k = tape.linear(&h, &p[4], None, WeightLayout::OutIn).unwrap();
        let v = tape.linear(&h, &p[5], Some(&p[6]), WeightLayout::OutIn).unwrap();
        let q = tape.rope(&q, &positions, inv_freq.clone(), HQ).unwrap();
        let k = tape.rope(&k, &positions, inv_freq, HKV).unwrap();
        let starts = Tensor::from_u32(&[0, T as u32], Device::Cpu).unwrap();
        let a = tape.attention(&q, &k, &v, AttnDims::new(B * T, B, HQ, HKV, D), &starts, &lengths).unwrap();
        let o = tape.linear(&a, &p[7], None, WeightLayout::OutIn).unwrap();
        let x = tape.add(&x, &o).unwrap();
        let h = tape.layer_norm(&x, &p[8], &p[9], 1e-5).unwrap();
        let g = tape.linear(&h, &p[10], None, WeightLayout::OutIn).unwrap();
        let u = tape.linear(&h, &p[11], None, WeightLayout::OutIn).unwrap();
        let m = tape.swiglu(&g, &u).unwrap();
        let m = tape.linear(&m, &p[12], None, WeightLayout::OutIn).unwrap();
        let x = tape.add(&x, &m).unwrap();
        let f = tape.linear(&x, &p[13], None, WeightLayout::InOut).unwrap();
        let f = tape.gelu(&f).unwrap();
        let f = tape.linear(&f, &p[14], None, WeightLayout::InOut).unwrap();
        let x = tape.add(&x, &f).unwrap();
        let logits = tape.linear(&x, &p[15], Some(&p[16]), WeightLayout::InOut).unwrap();
        // The mean over the 5 counted targets.
        let (loss, _) = tape.cross_entropy(&logits, &targets, 1.0 / 5.0).unwrap();
        let value = loss.value().scalar().unwrap();
        if !want_grads {
            return (value, vec![]);
        }
        let grads = tape.backward(&loss).unwrap();
        (value, p.iter().map(|v| grads.get(v).unwrap().to_vec_f64().unwrap()).collect())
    }
}

#[test]
fn whole_model_gradients_match_finite_differences() {
    let model = Model::new();
    let mut rng = StdRng::seed_from_u64(11);
    let mut params: Vec<Vec<f64>> = model
        .shapes
        .iter()
        .map(|s| (0..s.iter().product::<usize>()).map(|_| rng.random::<f64>() - 0.5).collect())
        .collect();
    params[1].iter_mut().for_each(|w| *w += 1.0);
    params[8].iter_mut().for_each(|w| *w += 1.0);
    let (_, analytic) = model.loss(&params, true);
    let mut worst = (0.0f64, 0usize, 0usize);
    for pi in 0..params.len() {
        for j in 0..params[pi].len() {
            let x0 = params[pi][j];
            let h = 1e-6 * x0.abs().max(1.0);
            params[pi][j] = x0 + h;
            let (lp, _) = model.loss(&params, false);
            params[pi][j] = x0 - h;
            let (lm, _) = model.loss(&params, false);
            params[pi][j] = x0;
            let numeric = (lp - lm) / (2.0 * h);
            let err = (analytic[pi][j] - numeric).abs() / (1e-6 + numeric.abs());
            let abs = (analytic[pi][j] - numeric).abs();
            assert!(
                abs < 1e-8 || err < 1e-5,
                "parameter {pi} element {j}: analytic {} vs numeric {numeric}",
                analytic[pi][j]
            );
            if abs >= 1e-8 && err > worst.0 {
                worst = (err, pi, j);
            }
        }
    }
    assert!(worst.0 < 1e-5, "worst relative error {worst:?}");
}

#[test]
fn tape_reports_shape_errors() {
    let mut tape = Tape::new();
    let x = tape.leaf(Tensor::from_vec(vec![1.0f32; 6], [2, 3]).unwrap(), true);
    let w = tape.leaf(Tensor::from_vec(vec![1.0f32; 8], [2, 4]).unwrap(), true);
    let e = tape.linear(&x, &w, None, WeightLayout::OutIn).unwrap_err().to_string();
    assert!(e.contains("does not match weight"), "{e}");
    let table = tape.leaf(Tensor::from_vec(vec![0.0f32; 6], [3, 2]).unwrap(), true);
    let e = tape.embedding(&Tensor::from_u32(&[0, 3], Device::Cpu).unwrap(), &table).unwrap_err().to_string();
    assert!(e.contains("outside the vocabulary"), "{e}");
    assert!(tape.backward(&x).unwrap_err().to_string().contains("scalar"));
}

/// A no-grad tape records nothing and keeps no intermediate alive; backward from it is an error.
#[test]
fn no_grad_tape_records_nothing() {
    let mut tape = Tape::no_grad();
    let x = tape.leaf(Tensor::from_vec(vec![1.0f32, -2.0, 3.0, 0.5], [2, 2]).unwrap(), true);
    let w = tape.leaf(Tensor::from_vec(vec![0.5f32, 1.0, -1.0, 2.0], [2, 2]).unwrap(), true);
    let y = tape.linear(&x, &w, None, WeightLayout::OutIn).unwrap();
    assert!(!y.requires_grad() && tape.is_empty());
    assert_eq!(y.value().to_vec_f32().unwrap(), vec![-1.5, -5.0, 2.0, -2.0]);
    let e = tape.backward_from(&y, Tensor::zeros([2, 2], gkd::DType::F32, Device::Cpu).unwrap()).unwrap_err();
    assert!(e.to_string().contains("does not depend"), "{e}");
    // On a recording tape, an op over constants only is not recorded either.
    let mut tape = Tape::new();
    let c = Var::constant(Tensor::from_vec(vec![1.0f32; 4], [2, 2]).unwrap());
    let y = tape.add(&c, &c).unwrap();
    assert!(!y.requires_grad() && tape.is_empty());
}

/// A checkpointed segment (recomputed in the backward) gives exactly the value and gradients of
/// the same ops recorded directly, with an op after it and an input that needs no gradient; on a
/// no-grad tape it is a plain forward.
#[test]
fn checkpointed_segment_equals_direct_recording() {
    let mut rng = StdRng::seed_from_u64(5);
    let mut t = |shape: &[usize]| {
        let n = shape.iter().product();
        Tensor::from_vec((0..n).map(|_| rng.random_range(-1.0..1.0)).collect::<Vec<f64>>(), shape.to_vec())
            .unwrap()
    };
    let (x, w, lin, dy) = (t(&[5, 8]), t(&[8]), t(&[6, 8]), t(&[5, 6]));
    let seg: gkd::autograd::Segment = Arc::new(|tape: &mut Tape, v: &[Var]| {
        let n = tape.rms_norm(&v[0], &v[1], 1e-6)?;
        let y = tape.linear(&n, &v[2], None, WeightLayout::OutIn)?;
        Ok(vec![tape.gelu(&y)?, n])
    });
    let run = |checkpointed: bool| {
        let mut tape = Tape::new();
        let vars = [tape.leaf(x.clone(), true), tape.leaf(w.clone(), false), tape.leaf(lin.clone(), true)];
        let outs = if checkpointed {
            tape.checkpoint(&[&vars[0], &vars[1], &vars[2]], seg.clone()).unwrap()
        } else {
            seg(&mut tape, &vars).unwrap()
        };
        // Both outputs carry a gradient: the segment's output and one of its intermediates.
        let y = tape.swiglu(&outs[0], &outs[0]).unwrap();
        let part = tape.narrow_cols(&outs[1], 0, 6).unwrap();
        let z = tape.add(&y, &part).unwrap();
        let value = z.value().to_vec_f64().unwrap();
        let g = tape.backward_from(&z, dy.clone()).unwrap();
        assert!(g.get(&vars[1]).is_none(), "a gradient reached an input that needs none");
        let grads: Vec<Vec<f64>> =
            [&vars[0], &vars[2]].iter().map(|v| g.get(v).unwrap().to_vec_f64().unwrap()).collect();
        (value, grads)
    };
    let (direct, checkpointed) = (run(false), run(true));
    assert_eq!(direct, checkpointed);
    assert!(direct.1.iter().all(|g| g.iter().any(|&e| e.abs() > 1e-3)), "degenerate gradients");
    let mut tape = Tape::no_grad();
    let vars = [Var::constant(x.clone()), Var::constant(w.clone()), Var::constant(lin.clone())];
    let y = tape.checkpoint(&[&vars[0], &vars[1], &vars[2]], seg.clone()).unwrap();
    let direct_y = seg(&mut Tape::no_grad(), &vars).unwrap();
    assert_eq!(y[0].value().to_vec_f64().unwrap(), direct_y[0].value().to_vec_f64().unwrap());
}

/// The fused residual add + norm has two outputs: a backward from either one alone reaches the
/// inputs through the right path (sum only: dx = dr = dsum and no weight gradient; y only: the
/// norm's backward), and from both it equals the unfused add followed by the norm.
#[test]
fn fused_add_norm_outputs_backpropagate_separately_and_together() {
    let (rows, cols) = (3usize, 5usize);
    let vals = |seed: u64, n: usize| -> Vec<f64> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n).map(|_| rng.random::<f64>() * 2.0 - 1.0).collect()
    };
    let (x, r, w) = (vals(1, rows * cols), vals(2, rows * cols), vals(3, cols));
    let (ds, dy) = (vals(4, rows * cols), vals(5, rows * cols));
    let t = |v: &[f64], s: &[usize]| Tensor::from_vec(v.to_vec(), s.to_vec()).unwrap();
    // (dx, dr, dw) from the fused op, seeded on the chosen outputs.
    let fused = |seed_sum: bool, seed_y: bool| -> (Vec<f64>, Vec<f64>, Option<Vec<f64>>) {
        let mut tape = Tape::new();
        let (xv, rv, wv) = (
            tape.leaf(t(&x, &[rows, cols]), true),
            tape.leaf(t(&r, &[rows, cols]), true),
            tape.leaf(t(&w, &[cols]), true),
        );
        let (sum, y) = tape.add_rms_norm(&xv, &rv, &wv, 1e-6).unwrap();
        let out = tape.add(&sum, &y).unwrap();
        let g = match (seed_sum, seed_y) {
            (true, true) => tape.backward_from(&out, t(&ds, &[rows, cols])).unwrap(),
            (true, false) => tape.backward_from(&sum, t(&ds, &[rows, cols])).unwrap(),
            (false, true) => tape.backward_from(&y, t(&dy, &[rows, cols])).unwrap(),
            (false, false) => unreachable!(),
        };
        let v = |x: &Var| g.get(x).map(|t| t.to_vec_f64().unwrap());
        (v(&xv).unwrap(), v(&rv).unwrap(), v(&wv))
    };
    // The unfused reference: add, then rms_norm, seeded the same way.
    let unfused = |seed_sum: bool, seed_y: bool| -> (Vec<f64>, Vec<f64>, Option<Vec<f64>>) {
        let mut tape = Tape::new();
        let (xv, rv, wv) = (
            tape.leaf(t(&x, &[rows, cols]), true),
            tape.leaf(t(&r, &[rows, cols]), true),
            tape.leaf(t(&w, &[cols]), true),
        );
        let sum = tape.add(&xv, &rv).unwrap();
        let y = tape.rms_norm(&sum, &wv, 1e-6).unwrap();
        let out = tape.add(&sum, &y).unwrap();
        let g = match (seed_sum, seed_y) {
            (true, true) => tape.backward_from(&out, t(&ds, &[rows, cols])).unwrap(),
            (true, false) => tape.backward_from(&sum, t(&ds, &[rows, cols])).unwrap(),
            (false, true) => tape.backward_from(&y, t(&dy, &[rows, cols])).unwrap(),
            (false, false) => unreachable!(),
        };
        let v = |x: &Var| g.get(x).map(|t| t.to_vec_f64().unwrap());
        (v(&xv).unwrap(), v(&rv).unwrap(), v(&wv))
    };
    for (s, y) in [(true, false), (false, true), (true, true)] {
        let (fx, fr, fw) = fused(s, y);
        let (ux, ur, uw) = unfused(s, y);
        let close =
            |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(p, q)| (p - q).abs() <= 1e-12 * (1.0 + q.abs()));
        assert!(close(&fx, &ux) && close(&fr, &ur), "seeds (sum {s}, y {y}): dx or dr differ");
        assert_eq!(fw.is_some(), uw.is_some(), "seeds (sum {s}, y {y}): weight gradient presence");
        if let (Some(f), Some(u)) = (fw, uw) {
            assert!(close(&f, &u), "seeds (sum {s}, y {y}): dw differs");
        }
        if s && !y {
            assert_eq!(fx, ds, "from sum alone, dx is dsum");
        }
    }
}
