//! Gradient checks through the backend contract: every tape op (the cases of
//! tests/common/ops.rs) on the CPU backend in f64, its hand-written backward against central
//! finite differences of its forward; a proof that the checker fails on a gradient that is off by
//! 1e-3 relative in a single element; and properties beyond gradients (padding, rotations, the
//! cross-entropy's log-softmax, errors on bad input).
//!
//! The scalar under test is L = Σ out·R for a fixed random R, so dL/dout = R is what each
//! backward receives (the harness seeds it the same way).

mod common;

use common::harness::{forward_f64, run, seed_weights, Case};
use common::ops;
use gkd::autograd::{AttnDims, Tape, Var};
use gkd::backend::ops::IGNORE;
use gkd::{DType, Device, Tensor};

/// |analytic − numeric| ≤ GRAD_TOL·(1 + |numeric|).
const GRAD_TOL: f64 = 1e-6;

/// The analytic gradients (by the backward, seeded with R) of every input that has one.
fn analytic(case: &Case) -> Vec<Vec<f64>> {
    let o = run(case, Device::Cpu, DType::F64, DType::F64).unwrap_or_else(|e| panic!("{}: {e}", case.name));
    o.grads.into_iter().map(|g| g.2).collect()
}

/// Compares `grads` with central finite differences of L = Σ out·R.
fn check(case: &Case, grads: &[Vec<f64>]) -> Result<f64, String> {
    let values: Vec<Vec<f64>> = case.inputs.iter().map(|i| i.values.clone()).collect();
    let n_out = forward_f64(case, &values).map_err(|e| e.to_string())?.len();
    let r = seed_weights(n_out);
    let loss =
        |x: &[Vec<f64>]| -> f64 { forward_f64(case, x).unwrap().iter().zip(&r).map(|(o, w)| o * w).sum() };
    let mut x = values.clone();
    let mut worst = 0.0f64;
    let with_grad: Vec<usize> = (0..case.inputs.len()).filter(|&i| case.inputs[i].grad).collect();
    if with_grad.len() != grads.len() {
        return Err(format!(
            "{}: {} gradients for {} inputs that need one",
            case.name,
            grads.len(),
            with_grad.len()
        ));
    }
    for (&i, grad) in with_grad.iter().zip(grads) {
        let name = case.inputs[i].name;
        if grad.len() != values[i].len() {
            return Err(format!(
                "{}: d{name} has {} elements, the input {}",
                case.name,
                grad.len(),
                values[i].len()
            ));
        }
        for e in 0..values[i].len() {
            let x0 = values[i][e];
            let h = 1e-6 * x0.abs().max(1.0);
            x[i][e] = x0 + h;
            let up = loss(&x);
            x[i][e] = x0 - h;
            let down = loss(&x);
            x[i][e] = x0;
            let numeric = (up - down) / (2.0 * h);
            let err = (grad[e] - numeric).abs() / (1.0 + numeric.abs());
            if err.is_nan() || err > GRAD_TOL {
                return Err(format!(
                    "{}: d{name}[{e}]: analytic {:.12e} vs numeric {numeric:.12e} (error {err:.3e})",
                    case.name, grad[e]
                ));
            }
            worst = worst.max(err);
        }
    }
    Ok(worst)
}

#[test]
fn every_op_gradient_matches_finite_differences() {
    for case in ops::small() {
        let grads = analytic(&case);
        match check(&case, &grads) {
            Ok(worst) => println!("{}: max gradient error {worst:.2e}", case.name),
            Err(e) => panic!("{e}"),
        }
    }
}

/// The checker must reject an analytic gradient whose largest element is off by 1e-3 relative.
#[test]
fn checker_rejects_a_wrong_gradient_for_every_op() {
    for case in ops::small() {
        let mut grads = analytic(&case);
        let (mut bi, mut be) = (0, 0);
        for (i, g) in grads.iter().enumerate() {
            for (e, v) in g.iter().enumerate() {
                if v.abs() > grads[bi][be].abs() {
                    (bi, be) = (i, e);
                }
            }
        }
        grads[bi][be] *= 1.0 + 1e-3;
        assert!(check(&case, &grads).is_err(), "{}: the checker accepted a perturbed gradient", case.name);
    }
}

fn f64_tensor(v: Vec<f64>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(v, shape.to_vec()).unwrap()
}

/// Padding rows of attention have zero output and get zero gradient, and what they hold does not
/// move the valid outputs.
#[test]
fn attention_padding_is_inert() {
    for (lengths, hq, hkv, dh) in [(vec![5u32, 1, 3], 4, 2, 6), (vec![0, 2], 2, 1, 3)] {
        let (b, t) = (lengths.len(), 5usize.max(*lengths.iter().max().unwrap() as usize));
        let d = AttnDims::new(b * t, b, hq, hkv, dh);
        let starts: Vec<u32> = (0..b as u32).map(|i| i * t as u32).collect();
        let padded = |row: usize| row % t >= lengths[row / t] as usize;
        let inputs = [(hq, 41u64), (hkv, 42), (hkv, 43)]
            .map(|(heads, seed)| common::harness::normals(b * t * heads * dh, 0.0, 1.0, seed));
        let run_once = |x: &[Vec<f64>; 3]| {
            let mut tape = Tape::new();
            let vars: Vec<Var> = x
                .iter()
                .zip([hq, hkv, hkv])
                .map(|(v, heads)| tape.leaf(f64_tensor(v.clone(), &[b * t, heads * dh]), true))
                .collect();
            let lens = Tensor::from_u32(&lengths, Device::Cpu).unwrap();
            let st = Tensor::from_u32(&starts, Device::Cpu).unwrap();
            let out = tape.attention(&vars[0], &vars[1], &vars[2], d, &st, &lens).unwrap();
            let o = out.value().to_vec_f64().unwrap();
            let dout = f64_tensor(common::harness::normals(o.len(), 0.0, 1.0, 44), &[b * t, hq * dh]);
            let g = tape.backward_from(&out, dout).unwrap();
            let grads: Vec<Vec<f64>> = vars.iter().map(|v| g.get(v).unwrap().to_vec_f64().unwrap()).collect();
            (o, grads)
        };
        let (out, grads) = run_once(&inputs);
        for (i, &o) in out.iter().enumerate() {
            if padded(i / (hq * dh)) {
                assert_eq!(o, 0.0, "{lengths:?}: padded output element {i} is {o}");
            }
        }
        for (g, heads) in grads.iter().zip([hq, hkv, hkv]) {
            for (i, &v) in g.iter().enumerate() {
                if padded(i / (heads * dh)) {
                    assert_eq!(v, 0.0, "{lengths:?}: gradient at a padded position is {v}");
                }
            }
        }
        // Rewrite q, k and v at padded positions: valid outputs must not move.
        let mut other = inputs.clone();
        for (x, heads) in other.iter_mut().zip([hq, hkv, hkv]) {
            for (i, v) in x.iter_mut().enumerate() {
                if padded(i / (heads * dh)) {
                    *v = 50.0 - (i % 97) as f64;
                }
            }
        }
        assert_eq!(run_once(&other).0, out, "{lengths:?}: values at padded positions changed valid outputs");
    }
}

#[test]
fn rope_position_zero_is_identity_and_backward_inverts_forward() {
    let (heads, dh) = (3, 6);
    let inv_freq: std::sync::Arc<[f64]> =
        (0..dh / 2).map(|i| 1.0 / 500f64.powf(2.0 * i as f64 / dh as f64)).collect();
    let rope = |x: &Tensor, pos: &[u32]| {
        let mut tape = Tape::new();
        let v = tape.leaf(x.clone(), true);
        let y = tape.rope(&v, &Tensor::from_u32(pos, Device::Cpu).unwrap(), inv_freq.clone(), heads).unwrap();
        let out = y.value().clone();
        // The backward of y with dy = y rotates y back: x.
        let g = tape.backward_from(&y, out.clone()).unwrap();
        (out.to_vec_f64().unwrap(), g.get(&v).unwrap().to_vec_f64().unwrap())
    };
    let x = f64_tensor(common::harness::normals(4 * heads * dh, 0.0, 1.0, 45), &[4, heads * dh]);
    assert_eq!(rope(&x, &[0; 4]).0, x.to_vec_f64().unwrap(), "rope at position 0 is not the identity");
    let (y, back) = rope(&x, &[1, 5, 77, 4095]);
    assert!(y.iter().zip(x.to_vec_f64().unwrap()).any(|(a, b)| (a - b).abs() > 1e-3), "rope did not rotate");
    for (i, (a, b)) in back.iter().zip(x.to_vec_f64().unwrap()).enumerate() {
        assert!((a - b).abs() <= 1e-12, "rope backward of rope forward [{i}] = {a}, x = {b}");
    }
}

#[test]
fn cross_entropy_matches_explicit_log_softmax() {
    let (n, vocab) = (7, 11);
    let targets = [3, IGNORE, 0, 10, IGNORE, 10, 5];
    let logits = common::harness::normals(n * vocab, 0.0, 3.0, 46);
    let mut tape = Tape::new();
    let z = tape.leaf(f64_tensor(logits.clone(), &[n, vocab]), true);
    let (loss, rows) =
        tape.cross_entropy(&z, &Tensor::from_u32(&targets, Device::Cpu).unwrap(), 0.2).unwrap();
    let rows = rows.to_vec_f64().unwrap();
    let mut sum = 0.0;
    for (r, (row, &t)) in logits.chunks(vocab).zip(&targets).enumerate() {
        let lse = row.iter().map(|x| x.exp()).sum::<f64>().ln();
        let want = if t == IGNORE { 0.0 } else { 0.2 * (lse - row[t as usize]) };
        assert!((rows[r] - want).abs() <= 1e-12, "row {r}: {} vs explicit {want}", rows[r]);
        sum += want;
    }
    assert!((loss.value().scalar().unwrap() - sum).abs() <= 1e-12);
    let g = tape.backward(&loss).unwrap().get(&z).unwrap().to_vec_f64().unwrap();
    for (row, &t) in g.chunks(vocab).zip(&targets) {
        if t == IGNORE {
            assert!(row.iter().all(|&x| x == 0.0), "an ignored row got a gradient");
        }
    }
    // Large logits stay finite.
    let big = f64_tensor(logits.iter().map(|x| 1e3 * x).collect(), &[n, vocab]);
    let (l, _) = Tape::no_grad()
        .cross_entropy(&Var::constant(big), &Tensor::from_u32(&targets, Device::Cpu).unwrap(), 1.0)
        .unwrap();
    assert!(l.value().scalar().unwrap().is_finite());
}

/// Bad input is an error naming the problem, never a panic.
#[test]
fn bad_input_is_an_error() {
    let mut tape = Tape::new();
    let table = tape.leaf(f64_tensor(vec![0.0; 10], &[5, 2]), true);
    let e = tape.embedding(&Tensor::from_u32(&[0, 5], Device::Cpu).unwrap(), &table).unwrap_err().to_string();
    assert!(e.contains("outside the vocabulary"), "{e}");
    let q = Var::constant(f64_tensor(vec![0.0; 12], &[2, 6]));
    let kv = Var::constant(f64_tensor(vec![0.0; 8], &[2, 4]));
    let u = |v: &[u32]| Tensor::from_u32(v, Device::Cpu).unwrap();
    let e = tape
        .attention(&q, &kv, &kv, AttnDims::new(2, 1, 3, 2, 2), &u(&[0]), &u(&[2]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot share"), "{e}");
    let q = Var::constant(f64_tensor(vec![0.0; 8], &[2, 4]));
    let e = tape
        .attention(&q, &kv, &kv, AttnDims::new(2, 1, 2, 2, 2), &u(&[0]), &u(&[3]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("run past"), "{e}");
    let e = tape
        .attention(&q, &kv, &kv, AttnDims::new(2, 2, 2, 2, 2), &u(&[0, 1]), &u(&[2, 1]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("overlap"), "{e}");
    let z = Var::constant(f64_tensor(vec![0.0; 6], &[2, 3]));
    let e = tape
        .cross_entropy(&z, &Tensor::from_u32(&[1, 3], Device::Cpu).unwrap(), 1.0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("outside the vocabulary"), "{e}");
    let w = Var::constant(f64_tensor(vec![0.0; 8], &[2, 4]));
    let e = tape.linear(&z, &w, None, gkd::autograd::WeightLayout::OutIn).unwrap_err().to_string();
    assert!(e.contains("does not match weight"), "{e}");
    let q0 = Var::constant(f64_tensor(vec![], &[2, 0]));
    let e = tape
        .attention(&q0, &q0, &q0, AttnDims::new(2, 1, 1, 1, 0), &u(&[0]), &u(&[2]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("head dimension of 0"), "{e}");
}

/// The CPU attention kernels write through raw pointers: called directly (they are public), a
/// sequence past the rows is an error, never a write outside the buffers.
#[test]
fn cpu_attention_checks_its_own_arguments() {
    use gkd::backend::cpu::{attention_bwd, attention_fwd};
    let q = vec![0.5f64; 8];
    let d = AttnDims::new(2, 1, 1, 1, 4);
    let e = attention_fwd(&d, &q, &q, &q, &[(0, 64)]).err().unwrap().to_string();
    assert!(e.contains("run past"), "{e}");
    let lse = vec![0.0; 2];
    let e = attention_bwd(&d, &q, &q, &q, &[(1, 2)], &q, &lse, &q).err().unwrap().to_string();
    assert!(e.contains("run past"), "{e}");
    let e = attention_bwd(&d, &q, &q, &q, &[(0, 2)], &q, &lse[..1], &q).err().unwrap().to_string();
    assert!(e.contains("lse has 1 elements"), "{e}");
}

/// A parameter of one tape used in an op on another: backward fails, rather than sending its
/// gradient to whatever node has the same index on the second tape.
#[test]
fn a_var_from_another_tape_is_an_error() {
    let mut first = Tape::new();
    let w = first.leaf(f64_tensor(vec![0.5, -0.3, 0.2, 0.7, -0.1, 0.4], &[3, 2]), true);
    let mut second = Tape::new();
    let own = second.leaf(f64_tensor(vec![0.0; 6], &[3, 2]), true);
    let x = Var::constant(f64_tensor(vec![1.0, 2.0, -1.0, 0.5], &[2, 2]));
    let z = second.linear(&x, &w, None, gkd::autograd::WeightLayout::OutIn).unwrap();
    let (loss, _) = second.cross_entropy(&z, &Tensor::from_u32(&[0, 2], Device::Cpu).unwrap(), 1.0).unwrap();
    let e = second.backward(&loss).unwrap_err().to_string();
    assert!(e.contains("another tape"), "{e}");
    // The gradients of one tape answer only for its own Vars.
    let mut third = Tape::new();
    let v = third.leaf(f64_tensor(vec![0.1, 0.2, 0.3, 0.4, 0.5, 0.6], &[3, 2]), true);
    let z = third.linear(&x, &v, None, gkd::autograd::WeightLayout::OutIn).unwrap();
    let (loss, _) = third.cross_entropy(&z, &Tensor::from_u32(&[0, 2], Device::Cpu).unwrap(), 1.0).unwrap();
    let g = third.backward(&loss).unwrap();
    assert!(g.get(&v).is_some() && g.get(&own).is_none() && g.get(&w).is_none());
}
