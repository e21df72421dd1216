//! Gradient checks of the CPU reference ops: every hand-written backward against central finite
//! differences in f64, every f32 forward against the f64 forward, and a proof that the checker
//! itself fails on a gradient that is off by 1e-3 relative in a single element.
//!
//! The scalar under test is L = Σ out·R for a fixed random R, so dL/dout = R is what each
//! backward receives.

use gkd::backend::cpu::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// |analytic − numeric| ≤ GRAD_TOL·(1 + |numeric|).
const GRAD_TOL: f64 = 1e-6;
/// |f32 − f64| ≤ F32_TOL·max(1, |f64|).
const F32_TOL: f64 = 1e-5;

/// An op under test: its float inputs, a forward generic over the element type, and the
/// hand-written backward in f64. Integer arguments (ids, targets, lengths) live in the op.
trait Op {
    fn name(&self) -> String;
    fn input_names(&self) -> Vec<&'static str>;
    fn fwd<T: Real>(&self, inputs: &[Vec<T>]) -> Vec<T>;
    fn bwd(&self, inputs: &[Vec<f64>], dout: &[f64]) -> Vec<Vec<f64>>;
}

fn uniform(rng: &mut StdRng, n: usize, scale: f64) -> Vec<f64> {
    (0..n).map(|_| scale * (2.0 * rng.random::<f64>() - 1.0)).collect()
}

fn weighted_sum(out: &[f64], r: &[f64]) -> f64 {
    out.iter().zip(r).map(|(o, r)| o * r).sum()
}

/// The fixed random R (one weight per output) and the analytic gradients of L = Σ out·R.
fn analytic<O: Op>(op: &O, inputs: &[Vec<f64>]) -> (Vec<f64>, Vec<Vec<f64>>) {
    let n_out = op.fwd(inputs).len();
    let r = uniform(&mut StdRng::seed_from_u64(0x5EED), n_out, 1.0);
    let grads = op.bwd(inputs, &r);
    (r, grads)
}

/// Compares `analytic` (gradients of L = Σ out·r) with central finite differences of L.
fn check<O: Op>(op: &O, inputs: &[Vec<f64>], analytic: &[Vec<f64>], r: &[f64]) -> Result<(), String> {
    let name = op.name();
    let names = op.input_names();
    if analytic.len() != inputs.len() {
        return Err(format!("{name}: {} gradients for {} inputs", analytic.len(), inputs.len()));
    }
    let mut x = inputs.to_vec();
    let mut max_err = 0.0f64;
    for (i, grad) in analytic.iter().enumerate() {
        if grad.len() != inputs[i].len() {
            return Err(format!(
                "{name}: gradient of {} has {} elements, the input {}",
                names[i],
                grad.len(),
                inputs[i].len()
            ));
        }
        for e in 0..inputs[i].len() {
            let x0 = inputs[i][e];
            let h = 1e-6 * x0.abs().max(1.0);
            x[i][e] = x0 + h;
            let up = weighted_sum(&op.fwd(&x), r);
            x[i][e] = x0 - h;
            let down = weighted_sum(&op.fwd(&x), r);
            x[i][e] = x0;
            let numeric = (up - down) / (2.0 * h);
            let err = (grad[e] - numeric).abs() / (1.0 + numeric.abs());
            if err.is_nan() || err > GRAD_TOL {
                return Err(format!(
                    "{name}: d/d{}[{e}]: analytic {:.12e} vs numeric {numeric:.12e} (error {err:.3e})",
                    names[i], grad[e]
                ));
            }
            max_err = max_err.max(err);
        }
    }
    println!("{name}: max gradient error {max_err:.2e}");
    Ok(())
}

fn gradcheck<O: Op>(op: &O, inputs: &[Vec<f64>]) -> Result<(), String> {
    let (r, grads) = analytic(op, inputs);
    check(op, inputs, &grads, &r)
}

/// The f32 forward against the f64 forward on the same (f32-representable) inputs.
fn f32_matches<O: Op>(op: &O, inputs: &[Vec<f64>]) -> Result<(), String> {
    let x32: Vec<Vec<f32>> = inputs.iter().map(|v| v.iter().map(|&x| x as f32).collect()).collect();
    let x64: Vec<Vec<f64>> = x32.iter().map(|v| v.iter().map(|&x| x as f64).collect()).collect();
    let (y32, y64) = (op.fwd(&x32), op.fwd(&x64));
    if y32.len() != y64.len() {
        return Err(format!("{}: f32 gives {} outputs, f64 {}", op.name(), y32.len(), y64.len()));
    }
    for (e, (&a, &b)) in y32.iter().zip(&y64).enumerate() {
        let err = (a as f64 - b).abs() / b.abs().max(1.0);
        if err.is_nan() || err > F32_TOL {
            return Err(format!("{}: f32 output[{e}] {a:e} vs f64 {b:e}", op.name()));
        }
    }
    Ok(())
}

/// The checker must reject an analytic gradient whose largest element is off by 1e-3 relative.
fn checker_rejects_perturbed<O: Op>(op: &O, inputs: &[Vec<f64>]) -> Result<(), String> {
    let (r, mut grads) = analytic(op, inputs);
    let (mut bi, mut be) = (0, 0);
    for (i, g) in grads.iter().enumerate() {
        for (e, v) in g.iter().enumerate() {
            if v.abs() > grads[bi][be].abs() {
                (bi, be) = (i, e);
            }
        }
    }
    grads[bi][be] *= 1.0 + 1e-3;
    match check(op, inputs, &grads, &r) {
        Err(msg) => {
            println!("rejected as expected: {msg}");
            Ok(())
        }
        Ok(()) => Err(format!("{}: checker accepted a perturbed gradient", op.name())),
    }
}

fn verify<O: Op>(op: &O, inputs: &[Vec<f64>]) {
    if let Err(msg) = gradcheck(op, inputs) {
        panic!("{msg}");
    }
    if let Err(msg) = f32_matches(op, inputs) {
        panic!("{msg}");
    }
}

// ---------------------------------------------------------------------------------------------
// The ops and their test cases.

struct Embedding {
    ids: Vec<u32>,
    vocab: usize,
    dim: usize,
}

impl Op for Embedding {
    fn name(&self) -> String {
        format!("embedding(N={}, V={}, C={})", self.ids.len(), self.vocab, self.dim)
    }
    fn input_names(&self) -> Vec<&'static str> {
        vec!["table"]
    }
    fn fwd<T: Real>(&self, x: &[Vec<T>]) -> Vec<T> {
        embedding_fwd(&self.ids, &x[0], self.dim)
    }
    fn bwd(&self, _: &[Vec<f64>], dout: &[f64]) -> Vec<Vec<f64>> {
        vec![embedding_bwd(&self.ids, dout, self.vocab, self.dim)]
    }
}

fn embedding_cases(rng: &mut StdRng) -> Vec<(Embedding, Vec<Vec<f64>>)> {
    let mut cases = Vec::new();
    // Repeated ids (3 and 10) must accumulate; some rows are never used.
    let fixed = Embedding { ids: vec![3, 3, 0, 10, 7, 3, 10], vocab: 11, dim: 7 };
    let random_dim = rng.random_range(1..=9);
    let random =
        Embedding { ids: (0..9).map(|_| rng.random_range(0..5)).collect(), vocab: 5, dim: random_dim };
    for op in [fixed, random] {
        let table = uniform(rng, op.vocab * op.dim, 1.0);
        cases.push((op, vec![table]));
    }
    cases
}

struct Linear {
    dims: LinearDims,
    bias: bool,
}

impl Op for Linear {
    fn name(&self) -> String {
        let d = self.dims;
        format!(
            "linear(N={}, Din={}, Dout={}, w_in_out={}, bias={})",
            d.n, d.d_in, d.d_out, d.w_in_out, self.bias
        )
    }
    fn input_names(&self) -> Vec<&'static str> {
        if self.bias {
            vec!["x", "w", "b"]
        } else {
            vec!["x", "w"]
        }
    }
    fn fwd<T: Real>(&self, x: &[Vec<T>]) -> Vec<T> {
        linear_fwd(self.dims, &x[0], &x[1], x.get(2).map(|b| b.as_slice()))
    }
    fn bwd(&self, x: &[Vec<f64>], dout: &[f64]) -> Vec<Vec<f64>> {
        let g = linear_bwd(self.dims, &x[0], &x[1], dout, self.bias);
        assert_eq!(g.db.is_some(), self.bias, "linear_bwd: db present iff has_bias");
        [Some(g.dx), Some(g.dw), g.db].into_iter().flatten().collect()
    }
}

fn linear_cases(rng: &mut StdRng) -> Vec<(Linear, Vec<Vec<f64>>)> {
    let random = (rng.random_range(1..=6), rng.random_range(1..=9), rng.random_range(1..=9));
    let shapes = [
        (5, 7, 13, false, true),
        (3, 13, 7, true, false),
        (4, 7, 11, true, true),
        (random.0, random.1, random.2, false, false),
    ];
    shapes
        .into_iter()
        .map(|(n, d_in, d_out, w_in_out, bias)| {
            let op = Linear { dims: LinearDims { n, d_in, d_out, w_in_out }, bias };
            let mut inputs = vec![uniform(rng, n * d_in, 1.0), uniform(rng, d_in * d_out, 1.0)];
            if bias {
                inputs.push(uniform(rng, d_out, 1.0));
            }
            (op, inputs)
        })
        .collect()
}

struct LayerNorm {
    cols: usize,
}

impl Op for LayerNorm {
    fn name(&self) -> String {
        format!("layernorm(C={})", self.cols)
    }
    fn input_names(&self) -> Vec<&'static str> {
        vec!["x", "w", "b"]
    }
    fn fwd<T: Real>(&self, x: &[Vec<T>]) -> Vec<T> {
        layernorm_fwd(&x[0], &x[1], &x[2], self.cols, 1e-5).y
    }
    fn bwd(&self, x: &[Vec<f64>], dout: &[f64]) -> Vec<Vec<f64>> {
        let f = layernorm_fwd(&x[0], &x[1], &x[2], self.cols, 1e-5);
        let g = layernorm_bwd(&x[0], &x[1], &f.mean, &f.rstd, dout, self.cols);
        vec![g.dx, g.dw, g.db.expect("layernorm_bwd returns db")]
    }
}

struct RmsNorm {
    cols: usize,
}

impl Op for RmsNorm {
    fn name(&self) -> String {
        format!("rmsnorm(C={})", self.cols)
    }
    fn input_names(&self) -> Vec<&'static str> {
        vec!["x", "w"]
    }
    fn fwd<T: Real>(&self, x: &[Vec<T>]) -> Vec<T> {
        rmsnorm_fwd(&x[0], &x[1], self.cols, 1e-6).y
    }
    fn bwd(&self, x: &[Vec<f64>], dout: &[f64]) -> Vec<Vec<f64>> {
        let f = rmsnorm_fwd(&x[0], &x[1], self.cols, 1e-6);
        assert!(f.mean.is_empty(), "rmsnorm_fwd: mean must be empty");
        let g = rmsnorm_bwd(&x[0], &x[1], &f.rstd, dout, self.cols);
        assert!(g.db.is_none(), "rmsnorm_bwd: db must be None");
        vec![g.dx, g.dw]
    }
}

fn norm_shapes(rng: &mut StdRng) -> Vec<(usize, usize)> {
    vec![(5, 7), (3, 13), (1, 1), (rng.random_range(1..=6), rng.random_range(2..=17))]
}

fn layernorm_cases(rng: &mut StdRng) -> Vec<(LayerNorm, Vec<Vec<f64>>)> {
    norm_shapes(rng)
        .into_iter()
        .map(|(rows, cols)| {
            let x = uniform(rng, rows * cols, 2.0);
            (LayerNorm { cols }, vec![x, uniform(rng, cols, 1.5), uniform(rng, cols, 1.0)])
        })
        .collect()
}

fn rmsnorm_cases(rng: &mut StdRng) -> Vec<(RmsNorm, Vec<Vec<f64>>)> {
    norm_shapes(rng)
        .into_iter()
        .map(|(rows, cols)| (RmsNorm { cols }, vec![uniform(rng, rows * cols, 2.0), uniform(rng, cols, 1.5)]))
        .collect()
}

struct Rope {
    positions: Vec<u32>,
    inv_freq: Vec<f64>,
    heads: usize,
}

impl Rope {
    fn new(positions: Vec<u32>, head_dim: usize, heads: usize) -> Self {
        let inv_freq = (0..head_dim / 2).map(|i| 10000f64.powf(-2.0 * i as f64 / head_dim as f64)).collect();
        Rope { positions, inv_freq, heads }
    }
    fn len(&self) -> usize {
        self.positions.len() * self.heads * 2 * self.inv_freq.len()
    }
}

impl Op for Rope {
    fn name(&self) -> String {
        format!("rope(N={}, H={}, D={})", self.positions.len(), self.heads, 2 * self.inv_freq.len())
    }
    fn input_names(&self) -> Vec<&'static str> {
        vec!["x"]
    }
    fn fwd<T: Real>(&self, x: &[Vec<T>]) -> Vec<T> {
        rope_fwd(&x[0], &self.positions, &self.inv_freq, self.heads)
    }
    fn bwd(&self, _: &[Vec<f64>], dout: &[f64]) -> Vec<Vec<f64>> {
        vec![rope_bwd(dout, &self.positions, &self.inv_freq, self.heads)]
    }
}

fn rope_cases(rng: &mut StdRng) -> Vec<(Rope, Vec<Vec<f64>>)> {
    let random_positions = (0..4).map(|_| rng.random_range(0..2048)).collect();
    [Rope::new(vec![0, 1, 2, 7, 100], 6, 3), Rope::new(random_positions, 8, 2), Rope::new(vec![3], 2, 1)]
        .into_iter()
        .map(|op| {
            let x = uniform(rng, op.len(), 1.0);
            (op, vec![x])
        })
        .collect()
}

struct Attention {
    dims: AttnDims,
    lengths: Vec<usize>,
}

impl Attention {
    fn new(
        batch: usize,
        seq: usize,
        q_heads: usize,
        kv_heads: usize,
        head_dim: usize,
        lengths: Vec<usize>,
    ) -> Self {
        let scale = 1.0 / (head_dim as f64).sqrt();
        Attention { dims: AttnDims { batch, seq, q_heads, kv_heads, head_dim, scale }, lengths }
    }
    fn q_len(&self) -> usize {
        let d = self.dims;
        d.batch * d.seq * d.q_heads * d.head_dim
    }
    fn kv_len(&self) -> usize {
        let d = self.dims;
        d.batch * d.seq * d.kv_heads * d.head_dim
    }
    fn inputs(&self, rng: &mut StdRng) -> Vec<Vec<f64>> {
        vec![
            uniform(rng, self.q_len(), 1.5),
            uniform(rng, self.kv_len(), 1.5),
            uniform(rng, self.kv_len(), 1.0),
        ]
    }
}

impl Op for Attention {
    fn name(&self) -> String {
        let d = self.dims;
        format!(
            "attention(B={}, T={}, Hq={}, Hkv={}, D={}, lengths={:?})",
            d.batch, d.seq, d.q_heads, d.kv_heads, d.head_dim, self.lengths
        )
    }
    fn input_names(&self) -> Vec<&'static str> {
        vec!["q", "k", "v"]
    }
    fn fwd<T: Real>(&self, x: &[Vec<T>]) -> Vec<T> {
        attention_fwd(&self.dims, &x[0], &x[1], &x[2], &self.lengths).out
    }
    fn bwd(&self, x: &[Vec<f64>], dout: &[f64]) -> Vec<Vec<f64>> {
        let f = attention_fwd(&self.dims, &x[0], &x[1], &x[2], &self.lengths);
        let g = attention_bwd(&self.dims, &x[0], &x[1], &x[2], &self.lengths, &f.out, &f.lse, dout);
        vec![g.dq, g.dk, g.dv]
    }
}

fn attention_cases(rng: &mut StdRng) -> Vec<(Attention, Vec<Vec<f64>>)> {
    let random_len = rng.random_range(1..=4);
    [
        Attention::new(3, 5, 4, 2, 6, vec![5, 1, 3]),
        Attention::new(3, 5, 3, 3, 5, vec![5, 1, 3]),
        Attention::new(3, 5, 4, 1, 4, vec![5, 1, 3]),
        Attention::new(2, 4, 2, 1, 3, vec![0, random_len]),
    ]
    .into_iter()
    .map(|op| {
        let inputs = op.inputs(rng);
        (op, inputs)
    })
    .collect()
}

struct Gelu;

impl Op for Gelu {
    fn name(&self) -> String {
        "gelu_tanh".into()
    }
    fn input_names(&self) -> Vec<&'static str> {
        vec!["x"]
    }
    fn fwd<T: Real>(&self, x: &[Vec<T>]) -> Vec<T> {
        gelu_tanh_fwd(&x[0])
    }
    fn bwd(&self, x: &[Vec<f64>], dout: &[f64]) -> Vec<Vec<f64>> {
        vec![gelu_tanh_bwd(&x[0], dout)]
    }
}

struct SwiGlu;

impl Op for SwiGlu {
    fn name(&self) -> String {
        "swiglu".into()
    }
    fn input_names(&self) -> Vec<&'static str> {
        vec!["gate", "up"]
    }
    fn fwd<T: Real>(&self, x: &[Vec<T>]) -> Vec<T> {
        swiglu_fwd(&x[0], &x[1])
    }
    fn bwd(&self, x: &[Vec<f64>], dout: &[f64]) -> Vec<Vec<f64>> {
        let (dgate, dup) = swiglu_bwd(&x[0], &x[1], dout);
        vec![dgate, dup]
    }
}

struct Add;

impl Op for Add {
    fn name(&self) -> String {
        "add".into()
    }
    fn input_names(&self) -> Vec<&'static str> {
        vec!["a", "b"]
    }
    fn fwd<T: Real>(&self, x: &[Vec<T>]) -> Vec<T> {
        add_fwd(&x[0], &x[1])
    }
    fn bwd(&self, _: &[Vec<f64>], dout: &[f64]) -> Vec<Vec<f64>> {
        vec![dout.to_vec(), dout.to_vec()]
    }
}

struct CrossEntropy {
    targets: Vec<i32>,
    vocab: usize,
}

impl Op for CrossEntropy {
    fn name(&self) -> String {
        format!("cross_entropy(V={}, targets={:?})", self.vocab, self.targets)
    }
    fn input_names(&self) -> Vec<&'static str> {
        vec!["logits"]
    }
    fn fwd<T: Real>(&self, x: &[Vec<T>]) -> Vec<T> {
        vec![cross_entropy_fwd(&x[0], &self.targets, self.vocab).loss]
    }
    fn bwd(&self, x: &[Vec<f64>], dout: &[f64]) -> Vec<Vec<f64>> {
        let f = cross_entropy_fwd(&x[0], &self.targets, self.vocab);
        vec![cross_entropy_bwd(&x[0], &self.targets, &f.lse, self.vocab, dout[0], f.valid)]
    }
}

fn cross_entropy_cases(rng: &mut StdRng) -> Vec<(CrossEntropy, Vec<Vec<f64>>)> {
    let random: Vec<i32> =
        (0..6).map(|_| if rng.random::<f64>() < 0.3 { -100 } else { rng.random_range(0..13) }).collect();
    [
        CrossEntropy { targets: vec![3, -100, 0, 10, -1, 10, 5], vocab: 11 },
        CrossEntropy { targets: vec![0, 1, 2], vocab: 3 },
        CrossEntropy { targets: random, vocab: 13 },
    ]
    .into_iter()
    .map(|op| {
        let logits = uniform(rng, op.targets.len() * op.vocab, 4.0);
        (op, vec![logits])
    })
    .collect()
}

fn elementwise_cases(rng: &mut StdRng, n_inputs: usize, scale: f64) -> Vec<Vec<Vec<f64>>> {
    [1, 13, rng.random_range(2..40)]
        .into_iter()
        .map(|n| (0..n_inputs).map(|_| uniform(rng, n, scale)).collect())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Gradient checks and f32 forwards, one test per op.

fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

#[test]
fn embedding_gradients() {
    for (op, x) in embedding_cases(&mut rng(1)) {
        verify(&op, &x);
    }
}

#[test]
fn linear_gradients() {
    for (op, x) in linear_cases(&mut rng(2)) {
        verify(&op, &x);
    }
}

#[test]
fn layernorm_gradients() {
    for (op, x) in layernorm_cases(&mut rng(3)) {
        verify(&op, &x);
    }
}

#[test]
fn rmsnorm_gradients() {
    for (op, x) in rmsnorm_cases(&mut rng(4)) {
        verify(&op, &x);
    }
}

#[test]
fn rope_gradients() {
    for (op, x) in rope_cases(&mut rng(5)) {
        verify(&op, &x);
    }
}

#[test]
fn attention_gradients() {
    for (op, x) in attention_cases(&mut rng(6)) {
        verify(&op, &x);
    }
}

#[test]
fn gelu_tanh_gradients() {
    for x in elementwise_cases(&mut rng(7), 1, 4.0) {
        verify(&Gelu, &x);
    }
}

#[test]
fn swiglu_gradients() {
    for x in elementwise_cases(&mut rng(8), 2, 4.0) {
        verify(&SwiGlu, &x);
    }
}

#[test]
fn add_gradients() {
    for x in elementwise_cases(&mut rng(9), 2, 2.0) {
        verify(&Add, &x);
    }
}

#[test]
fn cross_entropy_gradients() {
    for (op, x) in cross_entropy_cases(&mut rng(10)) {
        verify(&op, &x);
    }
}

/// Every op's case list, visited with the checker-sensitivity test.
#[test]
fn checker_rejects_a_wrong_gradient_for_every_op() {
    fn all<O: Op>(cases: Vec<(O, Vec<Vec<f64>>)>) {
        for (op, x) in cases {
            if let Err(msg) = checker_rejects_perturbed(&op, &x) {
                panic!("{msg}");
            }
        }
    }
    let r = &mut rng(11);
    all(embedding_cases(r));
    all(linear_cases(r));
    all(layernorm_cases(r));
    all(rmsnorm_cases(r));
    all(rope_cases(r));
    all(attention_cases(r));
    all(elementwise_cases(r, 1, 4.0).into_iter().map(|x| (Gelu, x)).collect());
    all(elementwise_cases(r, 2, 4.0).into_iter().map(|x| (SwiGlu, x)).collect());
    all(elementwise_cases(r, 2, 2.0).into_iter().map(|x| (Add, x)).collect());
    all(cross_entropy_cases(r));
}

// ---------------------------------------------------------------------------------------------
// Properties beyond gradients.

#[test]
fn attention_padding_is_inert() {
    let r = &mut rng(12);
    for op in [Attention::new(3, 5, 4, 2, 6, vec![5, 1, 3]), Attention::new(2, 4, 2, 1, 3, vec![0, 2])] {
        let d = op.dims;
        let x = op.inputs(r);
        let f = attention_fwd(&d, &x[0], &x[1], &x[2], &op.lengths);
        let padded = |b: usize, t: usize| t >= op.lengths[b];
        // Rows of a (B, T, H, D) tensor: index / (H·D) = b·T + t.
        let row_padded = |i: usize, heads: usize| {
            let bt = i / (heads * d.head_dim);
            padded(bt / d.seq, bt % d.seq)
        };
        for (i, &o) in f.out.iter().enumerate() {
            if row_padded(i, d.q_heads) {
                assert_eq!(o, 0.0, "{}: padded output element {i} is {o}", op.name());
            }
        }
        for (i, &l) in f.lse.iter().enumerate() {
            if padded(i / (d.q_heads * d.seq), i % d.seq) {
                assert_eq!(l, 0.0, "{}: padded lse element {i} is {l}", op.name());
            }
        }
        // Rewrite q, k and v at padded positions: valid outputs must not move.
        let mut y = x.clone();
        for (t, heads) in [(0, d.q_heads), (1, d.kv_heads), (2, d.kv_heads)] {
            for (i, v) in y[t].iter_mut().enumerate() {
                if row_padded(i, heads) {
                    *v = 100.0 * r.random::<f64>() - 50.0;
                }
            }
        }
        let g = attention_fwd(&d, &y[0], &y[1], &y[2], &op.lengths);
        assert_eq!(f.out, g.out, "{}: values at padded positions changed valid outputs", op.name());
        assert_eq!(f.lse, g.lse, "{}: values at padded positions changed the lse", op.name());
        // Gradients into padded positions are 0, even with a nonzero dout there.
        let dout = uniform(r, f.out.len(), 1.0);
        let grads = attention_bwd(&d, &x[0], &x[1], &x[2], &op.lengths, &f.out, &f.lse, &dout);
        for (name, grad, heads) in
            [("dq", &grads.dq, d.q_heads), ("dk", &grads.dk, d.kv_heads), ("dv", &grads.dv, d.kv_heads)]
        {
            for (i, &v) in grad.iter().enumerate() {
                if row_padded(i, heads) {
                    assert_eq!(v, 0.0, "{}: {name}[{i}] at a padded position is {v}", op.name());
                }
            }
        }
    }
}

#[test]
fn rope_position_zero_is_identity_and_bwd_inverts_fwd() {
    let r = &mut rng(13);
    let zero = Rope::new(vec![0; 4], 6, 3);
    let x = uniform(r, zero.len(), 1.0);
    assert_eq!(
        rope_fwd(&x, &zero.positions, &zero.inv_freq, zero.heads),
        x,
        "rope at position 0 is not the identity"
    );
    let op = Rope::new(vec![0, 1, 5, 77, 4095], 6, 3);
    let x = uniform(r, op.len(), 1.0);
    let y = rope_fwd(&x, &op.positions, &op.inv_freq, op.heads);
    assert!(y.iter().zip(&x).any(|(a, b)| (a - b).abs() > 1e-3), "rope did not rotate anything");
    let back = rope_bwd(&y, &op.positions, &op.inv_freq, op.heads);
    for (i, (a, b)) in back.iter().zip(&x).enumerate() {
        assert!((a - b).abs() <= 1e-12, "rope_bwd(rope_fwd(x))[{i}] = {a}, x = {b}");
    }
}

#[test]
fn cross_entropy_matches_explicit_log_softmax() {
    let r = &mut rng(14);
    let (n, vocab) = (7, 11);
    let targets = [3, -100, 0, 10, -1, 10, 5];
    let logits = uniform(r, n * vocab, 6.0);
    let mut sum = 0.0;
    let mut valid = 0;
    for (row, &t) in logits.chunks(vocab).zip(&targets) {
        let z: f64 = row.iter().map(|x| x.exp()).sum();
        if t >= 0 {
            sum -= (row[t as usize].exp() / z).ln();
            valid += 1;
        }
    }
    let f = cross_entropy_fwd(&logits, &targets, vocab);
    assert_eq!(f.valid, valid);
    let expected = sum / valid as f64;
    assert!(
        (f.loss - expected).abs() <= 1e-12 * expected.abs().max(1.0),
        "loss {} vs explicit {expected}",
        f.loss
    );
    for (row, &lse) in logits.chunks(vocab).zip(&f.lse) {
        let explicit = row.iter().map(|x| x.exp()).sum::<f64>().ln();
        assert!((lse - explicit).abs() <= 1e-12, "lse {lse} vs explicit {explicit}");
    }
    // Ignored rows receive no gradient.
    let d = cross_entropy_bwd(&logits, &targets, &f.lse, vocab, 1.0, f.valid);
    for (row, &t) in d.chunks(vocab).zip(&targets) {
        if t < 0 {
            assert!(row.iter().all(|&g| g == 0.0), "an ignored row got a gradient");
        }
    }
    // All rows ignored: loss 0 and no gradient; large logits stay finite.
    let none = [-100; 7];
    let big: Vec<f64> = logits.iter().map(|x| 1e3 * x).collect();
    let f = cross_entropy_fwd(&big, &none, vocab);
    assert_eq!((f.loss, f.valid), (0.0, 0));
    assert!(f.lse.iter().all(|l| l.is_finite()), "lse overflowed on large logits");
    assert!(cross_entropy_bwd(&big, &none, &f.lse, vocab, 1.0, 0).iter().all(|&g| g == 0.0));
}

#[test]
#[should_panic(expected = "out of range")]
fn embedding_rejects_an_id_past_the_vocabulary() {
    embedding_fwd(&[0, 5], &[0.0f32; 10], 2);
}

#[test]
#[should_panic(expected = "not a multiple")]
fn attention_rejects_mismatched_head_groups() {
    let op = Attention::new(1, 2, 3, 2, 2, vec![2]);
    let x = op.inputs(&mut rng(15));
    attention_fwd(&op.dims, &x[0], &x[1], &x[2], &op.lengths);
}

#[test]
#[should_panic(expected = "exceeds")]
fn attention_rejects_a_length_past_the_sequence() {
    let op = Attention::new(1, 2, 2, 2, 2, vec![3]);
    let x = op.inputs(&mut rng(16));
    attention_fwd(&op.dims, &x[0], &x[1], &x[2], &op.lengths);
}

#[test]
#[should_panic(expected = "out of range")]
fn cross_entropy_rejects_a_target_past_the_vocabulary() {
    cross_entropy_fwd(&[0.0f64; 6], &[1, 3], 3);
}
