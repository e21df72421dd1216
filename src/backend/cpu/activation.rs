//! Elementwise activations and the residual add.
//!
//! GELU (GPT-2 tanh form): y = ½x(1 + tanh u), u = √(2/π)(x + 0.044715x³)
//!   dy/dx = ½(1 + tanh u) + ½x(1 − tanh²u)·√(2/π)(1 + 3·0.044715x²)
//! SwiGLU: y = silu(g)·up, silu(g) = g·σ(g)
//!   dg = dy·up·σ(g)(1 + g(1 − σ(g))),  dup = dy·silu(g)
//! add: y = a + b (the backward passes dy to both inputs unchanged).

use super::Real;
use rayon::prelude::*;

const GELU_C: f64 = 0.044715;
/// √(2/π)
const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;

fn same_len<T>(op: &str, a: &[T], b: &[T]) {
    assert_eq!(a.len(), b.len(), "{op}: inputs have {} and {} elements", a.len(), b.len());
}

fn sigmoid<T: Real>(x: T) -> T {
    (T::one() + (-x).exp()).recip()
}

pub fn gelu_tanh_fwd<T: Real>(x: &[T] /* (N) */) -> Vec<T> /* (N) */ {
    let (c, k, half) = (T::from_f64(GELU_C), T::from_f64(SQRT_2_OVER_PI), T::from_f64(0.5));
    x.par_iter().map(|&x| half * x * (T::one() + (k * (x + c * x * x * x)).tanh())).collect()
}

pub fn gelu_tanh_bwd<T: Real>(x: &[T] /* (N) */, dy: &[T] /* (N) */) -> Vec<T> /* dx (N) */ {
    same_len("gelu_tanh_bwd", x, dy);
    let (c, k, half) = (T::from_f64(GELU_C), T::from_f64(SQRT_2_OVER_PI), T::from_f64(0.5));
    let three = T::from_f64(3.0);
    x.par_iter()
        .zip(dy.par_iter())
        .map(|(&x, &g)| {
            let t = (k * (x + c * x * x * x)).tanh();
            let du = k * (T::one() + three * c * x * x);
            g * (half * (T::one() + t) + half * x * (T::one() - t * t) * du)
        })
        .collect()
}

pub fn swiglu_fwd<T: Real>(gate: &[T] /* (N) */, up: &[T] /* (N) */) -> Vec<T> /* (N) */ {
    same_len("swiglu_fwd", gate, up);
    gate.par_iter().zip(up.par_iter()).map(|(&g, &u)| g * sigmoid(g) * u).collect()
}

pub fn swiglu_bwd<T: Real>(
    gate: &[T], // (N)
    up: &[T],   // (N)
    dy: &[T],   // (N)
) -> (Vec<T>, Vec<T>) /* (dgate, dup), each (N) */ {
    same_len("swiglu_bwd", gate, up);
    same_len("swiglu_bwd", gate, dy);
    gate.par_iter()
        .zip(up.par_iter())
        .zip(dy.par_iter())
        .map(|((&g, &u), &d)| {
            let s = sigmoid(g);
            (d * u * s * (T::one() + g * (T::one() - s)), d * g * s)
        })
        .unzip()
}

pub fn add_fwd<T: Real>(a: &[T] /* (N) */, b: &[T] /* (N) */) -> Vec<T> /* (N) */ {
    same_len("add_fwd", a, b);
    a.par_iter().zip(b.par_iter()).map(|(&x, &y)| x + y).collect()
}
