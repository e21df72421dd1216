//! The norm kernels (kernels/norm.cu) through the whole pipeline — tensors uploaded, ops recorded
//! on the tape, backward run on the GPU — against the same graph on the CPU reference backend.
//! Skipped, with a visible line, where no GPU exists.

mod common;

use gkd::autograd::Tape;
use gkd::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn randn(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| (rng.random::<f32>() * 2.0 - 1.0) * scale).collect()
}

/// ‖a − b‖ / ‖b‖.
fn rel(a: &[f64], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den.max(1e-30)).sqrt()
}

struct Outputs {
    y: Vec<f64>,
    grads: Vec<Vec<f64>>,
}

/// out = layernorm(rmsnorm(x, w1), w2, b2) + rmsnorm(x, w1): exercises both norms, their
/// backward passes, the residual add and gradient accumulation (rmsnorm's output is used twice).
fn run(device: Device, dtype: DType, rows: usize, cols: usize, inputs: &[Vec<f32>]) -> Outputs {
    let mut tape = Tape::new();
    let t = |v: &Vec<f32>, shape: Vec<usize>| {
        Tensor::from_vec(v.clone(), shape).unwrap().to_dtype(dtype).unwrap().to_device(device).unwrap()
    };
    let x = tape.leaf(t(&inputs[0], vec![rows, cols]), true);
    let w1 = tape.leaf(t(&inputs[1], vec![cols]), true);
    let w2 = tape.leaf(t(&inputs[2], vec![cols]), true);
    let b2 = tape.leaf(t(&inputs[3], vec![cols]), true);
    let a = tape.rmsnorm(x, w1, 1e-5).unwrap();
    let b = tape.layernorm(a, w2, b2, 1e-5).unwrap();
    let out = tape.add(b, a).unwrap();
    let dy = t(&inputs[4], vec![rows, cols]);
    let grads = tape.backward_from(out, dy).unwrap();
    Outputs {
        y: tape.value(out).to_vec_f64().unwrap(),
        grads: [x, w1, w2, b2].iter().map(|&v| grads.get(v).unwrap().to_vec_f64().unwrap()).collect(),
    }
}

#[test]
fn norms_match_cpu_reference() {
    let Some(_dev) = common::cuda_or_skip("cuda_norm::norms_match_cpu_reference") else { return };
    let mut rng = StdRng::seed_from_u64(7);
    // Odd widths, rows that are not a multiple of the 8 rows per block, several 256-row chunks.
    // (Widths 1 and 2 are degenerate for LayerNorm: its output is constant and dx is 0 up to
    // rounding, which no relative tolerance can judge.)
    let mut failures = Vec::new();
    for &(rows, cols) in &[(1, 5), (3, 7), (13, 33), (300, 896), (1031, 129), (64, 4099)] {
        let inputs: Vec<Vec<f32>> = vec![
            randn(&mut rng, rows * cols, 3.0),
            randn(&mut rng, cols, 1.0).iter().map(|v| v + 1.0).collect(),
            randn(&mut rng, cols, 1.0),
            randn(&mut rng, cols, 0.5),
            randn(&mut rng, rows * cols, 1.0),
        ];
        for (dtype, tol) in [(DType::F32, 2e-5), (DType::BF16, 1.5e-2)] {
            // The reference runs on the same (dtype-rounded) inputs in f32 on the CPU.
            let rounded: Vec<Vec<f32>> = inputs
                .iter()
                .map(|v| {
                    Tensor::from_vec(v.clone(), [v.len()])
                        .unwrap()
                        .to_dtype(dtype)
                        .unwrap()
                        .to_vec_f32()
                        .unwrap()
                })
                .collect();
            let want = run(Device::Cpu, DType::F32, rows, cols, &rounded);
            let got = run(Device::Cuda(0), dtype, rows, cols, &rounded);
            let e = rel(&got.y, &want.y);
            if e.is_nan() || e >= tol {
                failures.push(format!("{rows}x{cols} {dtype}: output rel err {e:.3e}"));
            }
            for (i, name) in ["dx", "dw_rms", "dw_ln", "db_ln"].iter().enumerate() {
                let e = rel(&got.grads[i], &want.grads[i]);
                if e.is_nan() || e >= tol {
                    failures.push(format!("{rows}x{cols} {dtype}: {name} rel err {e:.3e}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn kernels_write_every_output() {
    // NaN inputs in one row must stay in that row: a kernel reading or writing out of its row
    // would spread them (and an unwritten output would not be NaN-free elsewhere).
    let Some(_dev) = common::cuda_or_skip("cuda_norm::kernels_write_every_output") else { return };
    let (rows, cols) = (37, 61);
    let mut x = vec![0.5f32; rows * cols];
    for (i, v) in x.iter_mut().enumerate() {
        *v = ((i * 7919) % 97) as f32 / 50.0 - 1.0;
    }
    x[5 * cols..6 * cols].iter_mut().for_each(|v| *v = f32::NAN);
    let mut tape = Tape::new();
    let xt = tape.leaf(Tensor::from_vec(x, [rows, cols]).unwrap().to_device(Device::Cuda(0)).unwrap(), false);
    let w = tape.leaf(
        Tensor::from_vec(vec![1.0f32; cols], [cols]).unwrap().to_device(Device::Cuda(0)).unwrap(),
        true,
    );
    let y = tape.rmsnorm(xt, w, 1e-6).unwrap();
    let yv = tape.value(y).to_vec_f32().unwrap();
    for r in 0..rows {
        let row = &yv[r * cols..(r + 1) * cols];
        if r == 5 {
            assert!(row.iter().all(|v| v.is_nan()), "row 5 should be NaN");
        } else {
            assert!(row.iter().all(|v| v.is_finite()), "row {r} has a non-finite value");
        }
    }
}
