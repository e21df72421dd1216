//! The CUDA attention kernels beyond the device-ops cases (tests/common/ops.rs `attention`): the
//! backward is deterministic (two runs give bit-identical gradients, on the tensor-core and the
//! scalar kernels), and bad inputs are errors before any kernel runs (attention over the
//! key/value cache: tests/cuda_decode_attention.rs). SKIPPED without a GPU.

mod common;

use common::harness::normals;
use gkd::autograd::{AttnDims, Tape};
use gkd::{DType, Device, Tensor};

fn tensor(x: &[f64], shape: &[usize], dtype: DType, device: Device) -> Tensor {
    Tensor::from_vec(x.to_vec(), shape.to_vec()).unwrap().to_dtype(dtype).unwrap().to_device(device).unwrap()
}

/// Packed sequences of `lengths` → (output, dq, dk, dv) on the host, one forward and backward.
fn attention_grads(
    lengths: &[u32],
    (hq, hkv, dh): (usize, usize, usize),
    dtype: DType,
    device: Device,
) -> [Vec<f64>; 4] {
    let rows = lengths.iter().sum::<u32>() as usize;
    let starts: Vec<u32> = lengths.iter().scan(0, |at, &l| Some(std::mem::replace(at, *at + l))).collect();
    let mut tape = Tape::new();
    let q = tape.leaf(tensor(&normals(rows * hq * dh, 0.0, 1.0, 1), &[rows, hq * dh], dtype, device), true);
    let k = tape.leaf(tensor(&normals(rows * hkv * dh, 0.0, 1.0, 2), &[rows, hkv * dh], dtype, device), true);
    let v = tape.leaf(tensor(&normals(rows * hkv * dh, 0.0, 1.0, 3), &[rows, hkv * dh], dtype, device), true);
    let d = AttnDims::new(rows, lengths.len(), hq, hkv, dh);
    let (s, l) = (Tensor::from_u32(&starts, device).unwrap(), Tensor::from_u32(lengths, device).unwrap());
    let out = tape.attention(&q, &k, &v, d, &s, &l).unwrap();
    let dout = tensor(&normals(rows * hq * dh, 0.0, 1.0, 4), &[rows, hq * dh], dtype, device);
    let grads = tape.backward_from(&out, dout).unwrap();
    let host = |t: &Tensor| t.to_vec_f64().unwrap();
    [
        host(out.value()),
        host(grads.get(&q).unwrap()),
        host(grads.get(&k).unwrap()),
        host(grads.get(&v).unwrap()),
    ]
}

/// Two backward runs on the same inputs give the same bits: no atomics, fixed summation orders
/// (dK and dV sum over 7 query heads and 3 query tiles here).
#[test]
fn backward_is_deterministic() {
    let Some(dev) = common::cuda_or_skip("cuda_attention::backward_is_deterministic") else { return };
    let device = Device::Cuda(dev.ordinal());
    // bf16 head dim 64 and 128: the tensor-core kernels; f32 and head dim 24: the scalar ones.
    for (heads, dtype) in [
        ((14, 2, 64), DType::BF16),
        ((14, 2, 128), DType::BF16),
        ((7, 1, 64), DType::F32),
        ((4, 2, 24), DType::BF16),
    ] {
        let a = attention_grads(&[150, 37, 64], heads, dtype, device);
        let b = attention_grads(&[150, 37, 64], heads, dtype, device);
        for (name, (x, y)) in ["out", "dq", "dk", "dv"].iter().zip(a.iter().zip(&b)) {
            assert!(x.iter().all(|v| v.is_finite()), "{heads:?} {dtype}: {name} is not finite");
            let same = x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits());
            assert!(same, "{heads:?} {dtype}: {name} differs between two identical runs");
        }
    }
}

/// Bad inputs are errors with a reason, before any kernel indexes with them.
#[test]
fn bad_inputs_are_errors() {
    let Some(dev) = common::cuda_or_skip("cuda_attention::bad_inputs_are_errors") else { return };
    let device = Device::Cuda(dev.ordinal());
    let run = |rows: usize, dh: usize, starts: &[u32], lengths: &[u32]| {
        let mut tape = Tape::no_grad();
        let x = tape.leaf(tensor(&vec![0.5; rows * dh], &[rows, dh], DType::F32, device), false);
        let d = AttnDims::new(rows, starts.len(), 1, 1, dh);
        let (s, l) = (Tensor::from_u32(starts, device).unwrap(), Tensor::from_u32(lengths, device).unwrap());
        tape.attention(&x, &x, &x, d, &s, &l).map(|_| ())
    };
    run(8, 4, &[0, 4], &[4, 4]).unwrap();
    let e = run(8, 4, &[0, 3], &[4, 4]).unwrap_err().to_string();
    assert!(e.contains("overlap"), "overlapping sequences: {e}");
    let e = run(8, 4, &[6], &[4]).unwrap_err().to_string();
    assert!(e.contains("run past"), "a sequence past the rows: {e}");
    let e = run(4, 264, &[0], &[4]).unwrap_err().to_string();
    assert!(e.contains("256"), "head dim over the limit: {e}");
}
