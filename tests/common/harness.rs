//! The device-ops harness: one op, run through the tape (and so through the backend contract) on
//! every backend, compared with the CPU f32 reference, values and gradients, each tensor against
//! its own largest element.
//!
//! A `Case` lists its float inputs (which need gradients) and the op as a closure of the tape, the
//! input vars and the device (integer inputs — ids, positions, lengths — are made on that device).
//! `check` runs it:
//! - on the CPU in f32 (the reference) and in f64: f32 must agree with f64 within `tol.f32`;
//! - on each GPU backend, f32 and bf16, against the CPU f32 run on the same inputs rounded to that
//!   dtype, within `tol.f32` / `tol.bf16`. Without a GPU the CUDA half prints SKIPPED; an op the
//!   CUDA backend has no kernel for yet prints UNSUPPORTED (both visible in every run), except in
//!   a case marked `on_cuda` (its op has CUDA kernels), where Unsupported is a failure;
//! - on every backend and dtype, also on a no-grad tape (the forward-only paths: loss-only
//!   kernels, no saved tensors), whose output must match the recording run's.
//!
//! The backward is seeded with d(out) = fixed random values, so every gradient element matters.
//! A reference tensor that is all zeros is refused as a degenerate case: a relative check cannot
//! tell a kernel that writes zeros from a correct one there. `corrupt` makes the wrong outputs
//! (zeros, a sign flip, rows shifted by one) that the harness's own test must reject.
#![allow(dead_code)]

use super::{cuda_or_skip, visible};
use gkd::autograd::{Tape, Var};
use gkd::{DType, Device, Error, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A float input of a case.
pub struct Input {
    pub name: &'static str,
    pub shape: Vec<usize>,
    pub values: Vec<f64>,
    /// Whether the op's gradient with respect to it is checked.
    pub grad: bool,
}

impl Input {
    /// Normal values of standard deviation `std` around `mean`, from `seed`.
    pub fn normal(name: &'static str, shape: &[usize], mean: f64, std: f64, seed: u64, grad: bool) -> Input {
        let n = shape.iter().product();
        Input { name, shape: shape.to_vec(), values: normals(n, mean, std, seed), grad }
    }
}

/// Box–Muller normals, reproducible from `seed`.
pub fn normals(n: usize, mean: f64, std: f64, seed: u64) -> Vec<f64> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let (u1, u2): (f64, f64) = (1.0 - rng.random::<f64>(), rng.random());
            mean + std * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
        })
        .collect()
}

pub type OpFn = Box<dyn Fn(&mut Tape, &[Var], Device) -> gkd::Result<Var>>;

pub struct Case {
    pub name: String,
    pub inputs: Vec<Input>,
    pub op: OpFn,
    pub tol: Tol,
    /// The CUDA backend implements the op: an Unsupported error there fails the case.
    pub cuda: bool,
}

/// Largest |got − want| / max|want| per tensor, for values and for gradients, per dtype.
#[derive(Clone, Copy, Debug)]
pub struct Tol {
    pub f32: f64,
    pub bf16: f64,
}

/// The design's tolerances: f32 against the f64 / f32 references ~1e-5 relative, bf16 kernels
/// against the f32 reference ~1e-2 (an input or output rounded to bf16 moves by up to 2^-9).
pub const TOL: Tol = Tol { f32: 2e-5, bf16: 2e-2 };

impl Case {
    pub fn new(name: impl Into<String>, inputs: Vec<Input>, op: OpFn) -> Case {
        Case { name: name.into(), inputs, op, tol: TOL, cuda: false }
    }

    /// Marks the op as one the CUDA backend implements.
    pub fn on_cuda(mut self) -> Case {
        self.cuda = true;
        self
    }

    pub fn tol(mut self, tol: Tol) -> Case {
        self.tol = tol;
        self
    }
}

/// The op's output and the gradient of each input that has one, on the host.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub out: (Vec<usize>, Vec<f64>),
    pub grads: Vec<(&'static str, Vec<usize>, Vec<f64>)>,
}

/// The inputs' values rounded to `dtype` (what a run in that dtype sees).
fn rounded(values: &[f64], dtype: DType) -> gkd::Result<Vec<f64>> {
    Tensor::from_vec(values.to_vec(), [values.len()])?.to_dtype(dtype)?.to_vec_f64()
}

/// Runs `case` on `device` in `dtype`, its inputs first rounded to `round` (a bf16 reference
/// sees exactly the bf16 inputs), the backward seeded with fixed random values.
pub fn run(case: &Case, device: Device, dtype: DType, round: DType) -> gkd::Result<Outcome> {
    let mut tape = Tape::new();
    let vars = leaves(case, &mut tape, device, dtype, round)?;
    let out = (case.op)(&mut tape, &vars, device)?;
    let shape = out.value().dims().to_vec();
    let dout = rounded(&normals(out.value().numel(), 0.0, 1.0, 0xD0D0), round)?;
    let dout = Tensor::from_vec(dout, shape.clone())?.to_dtype(out.value().dtype())?.to_device(device)?;
    let out_host = out.value().to_vec_f64()?;
    let grads = tape.backward_from(&out, dout)?;
    let mut g = Vec::new();
    for (i, v) in case.inputs.iter().zip(&vars) {
        if i.grad {
            let t = grads
                .get(v)
                .ok_or_else(|| Error::Msg(format!("{}: no gradient reached input {}", case.name, i.name)))?;
            g.push((i.name, t.dims().to_vec(), t.to_vec_f64()?));
        }
    }
    Ok(Outcome { out: (shape, out_host), grads: g })
}

/// The case's inputs as leaves of `tape`, on `device` in `dtype`, rounded to `round` first.
fn leaves(case: &Case, tape: &mut Tape, device: Device, dtype: DType, round: DType) -> gkd::Result<Vec<Var>> {
    let mut vars = Vec::new();
    for i in &case.inputs {
        let v = rounded(&i.values, round)?;
        let t = Tensor::from_vec(v, i.shape.clone())?.to_dtype(dtype)?.to_device(device)?;
        vars.push(tape.leaf(t, i.grad));
    }
    Ok(vars)
}

/// The op's output from a no-grad tape, as `run` would see it (same device, dtype, rounding).
pub fn run_no_grad(case: &Case, device: Device, dtype: DType, round: DType) -> gkd::Result<Vec<f64>> {
    let mut tape = Tape::no_grad();
    let vars = leaves(case, &mut tape, device, dtype, round)?;
    (case.op)(&mut tape, &vars, device)?.value().to_vec_f64()
}

/// The no-grad run's output against the recording run's `with_grad`, within `tol`.
fn same_without_grad(
    case: &Case,
    with_grad: &Outcome,
    device: Device,
    dtype: DType,
    tol: f64,
) -> Result<(), String> {
    let out =
        run_no_grad(case, device, dtype, dtype).map_err(|e| format!("{device} {dtype} no-grad: {e}"))?;
    match rel_err("output", &out, &with_grad.out.1) {
        Ok(e) if e <= tol => Ok(()),
        Ok(e) => Err(format!("{device} {dtype}: no-grad output differs from the recording run's by {e:.2e}")),
        Err(e) => Err(format!("{device} {dtype} no-grad: {e}")),
    }
}

/// max |got − want| / max |want|; an error when shapes differ, anything is NaN, or `want` is all
/// zeros (a degenerate check).
fn rel_err(what: &str, got: &[f64], want: &[f64]) -> Result<f64, String> {
    if got.len() != want.len() {
        return Err(format!("{what}: {} values, the reference has {}", got.len(), want.len()));
    }
    let scale = want.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    if scale == 0.0 || !scale.is_finite() {
        return Err(format!(
            "{what}: the reference is {} — a degenerate check; choose other inputs",
            if scale == 0.0 { "all zeros" } else { "not finite" }
        ));
    }
    let mut worst = 0.0f64;
    for (g, w) in got.iter().zip(want) {
        let e = (g - w).abs() / scale;
        if e.is_nan() {
            return Err(format!("{what}: NaN (got {g}, reference {w})"));
        }
        worst = worst.max(e);
    }
    Ok(worst)
}

/// Ok when every tensor of `got` is within `tol` of `want` (relative to its own largest element).
pub fn compare(got: &Outcome, want: &Outcome, tol: f64) -> Result<(), String> {
    let mut failures = Vec::new();
    if got.out.0 != want.out.0 {
        failures.push(format!("output shape {:?}, the reference's {:?}", got.out.0, want.out.0));
    }
    let mut pairs = vec![("output".to_string(), &got.out.1, &want.out.1)];
    if got.grads.len() != want.grads.len() {
        failures.push(format!("{} gradients, the reference has {}", got.grads.len(), want.grads.len()));
    }
    for (g, w) in got.grads.iter().zip(&want.grads) {
        if g.1 != w.1 {
            failures.push(format!("d{} has shape {:?}, the reference's {:?}", w.0, g.1, w.1));
        }
        pairs.push((format!("d{}", w.0), &g.2, &w.2));
    }
    for (what, g, w) in pairs {
        match rel_err(&what, g, w) {
            Ok(e) if e <= tol => {}
            Ok(e) => {
                failures.push(format!("{what}: error {e:.2e} > {tol:.0e} (relative to its largest element)"))
            }
            Err(e) => failures.push(e),
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

/// A wrong output the harness must reject.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Corruption {
    /// Every gradient (or the output when there is none) written as zeros.
    Zeros,
    /// The first gradient (or the output) negated.
    SignFlip,
    /// The output's rows (first dimension) shifted by one; for a one-row output (a loss), the
    /// first gradient's rows.
    ShiftRow,
}

pub fn corrupt(o: &Outcome, c: Corruption) -> Outcome {
    let mut o = o.clone();
    match c {
        Corruption::Zeros if !o.grads.is_empty() => {
            o.grads.iter_mut().for_each(|g| g.2.iter_mut().for_each(|x| *x = 0.0))
        }
        Corruption::Zeros => o.out.1.iter_mut().for_each(|x| *x = 0.0),
        Corruption::SignFlip => match o.grads.first_mut() {
            Some(g) => g.2.iter_mut().for_each(|x| *x = -*x),
            None => o.out.1.iter_mut().for_each(|x| *x = -*x),
        },
        Corruption::ShiftRow => {
            let shift = |shape: &[usize], v: &mut Vec<f64>| {
                let rows = shape.first().copied().unwrap_or(1).max(1);
                let width = v.len() / rows;
                v.rotate_right(width);
            };
            match o.grads.first_mut() {
                Some(g) if o.out.1.len() == 1 => shift(&g.1.clone(), &mut g.2),
                _ => shift(&o.out.0.clone(), &mut o.out.1),
            }
        }
    }
    o
}

/// Runs `case` everywhere and panics with every disagreement (see the module documentation).
pub fn check(case: &Case) {
    let fail = |what: String| -> ! { panic!("{}: {what}", case.name) };
    let reference =
        run(case, Device::Cpu, DType::F32, DType::F32).unwrap_or_else(|e| fail(format!("CPU f32: {e}")));
    let exact =
        run(case, Device::Cpu, DType::F64, DType::F32).unwrap_or_else(|e| fail(format!("CPU f64: {e}")));
    if let Err(e) = compare(&reference, &exact, case.tol.f32) {
        fail(format!("CPU f32 against CPU f64: {e}"));
    }
    same_without_grad(case, &reference, Device::Cpu, DType::F32, case.tol.f32).unwrap_or_else(|e| fail(e));
    let test = format!("device_ops::{}", case.name);
    let Some(dev) = cuda_or_skip(&test) else { return };
    let device = Device::Cuda(dev.ordinal());
    for (dtype, tol) in [(DType::F32, case.tol.f32), (DType::BF16, case.tol.bf16)] {
        let want = run(case, Device::Cpu, DType::F32, dtype)
            .unwrap_or_else(|e| fail(format!("CPU f32 on {dtype} inputs: {e}")));
        match run(case, device, dtype, dtype) {
            Ok(got) => {
                if let Err(e) = compare(&got, &want, tol) {
                    fail(format!("{device} {dtype} against CPU f32: {e}"));
                }
                same_without_grad(case, &got, device, dtype, tol).unwrap_or_else(|e| fail(e));
            }
            Err(Error::Unsupported { op, .. }) if !case.cuda => {
                visible(&format!("UNSUPPORTED {test} on {device} {dtype}: {op} has no CUDA kernel yet"))
            }
            Err(e) => fail(format!("{device} {dtype}: {e}")),
        }
    }
}

/// The op's output on the CPU in f64 for these input values, without gradients.
pub fn forward_f64(case: &Case, values: &[Vec<f64>]) -> gkd::Result<Vec<f64>> {
    let mut tape = Tape::no_grad();
    let vars: Vec<Var> = case
        .inputs
        .iter()
        .zip(values)
        .map(|(i, v)| Ok(tape.leaf(Tensor::from_vec(v.clone(), i.shape.clone())?, false)))
        .collect::<gkd::Result<_>>()?;
    (case.op)(&mut tape, &vars, Device::Cpu)?.value().to_vec_f64()
}

/// The weights R of L = Σ out·R that `run` seeds its backward with, in f64.
pub fn seed_weights(n: usize) -> Vec<f64> {
    normals(n, 0.0, 1.0, 0xD0D0)
}
