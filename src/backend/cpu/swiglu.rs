//! SwiGLU, the Llama MLP's gate: y = silu(g)·up, silu(g) = g·σ(g)
//!   dg = dy·up·σ(g)(1 + g(1 − σ(g))),  dup = dy·silu(g)

use super::Real;
use rayon::prelude::*;

fn sigmoid<T: Real>(x: T) -> T {
    (T::one() + (-x).exp()).recip()
}

pub fn swiglu_fwd<T: Real>(gate: &[T] /* (N) */, up: &[T] /* (N) */) -> Vec<T> /* (N) */ {
    gate.par_iter().zip(up.par_iter()).with_min_len(4096).map(|(&g, &u)| g * sigmoid(g) * u).collect()
}

pub fn swiglu_bwd<T: Real>(
    gate: &[T], // (N)
    up: &[T],   // (N)
    dy: &[T],   // (N)
) -> (Vec<T>, Vec<T>) /* (dgate, dup), each (N) */ {
    gate.par_iter()
        .zip(up.par_iter())
        .zip(dy.par_iter())
        .with_min_len(4096)
        .map(|((&g, &u), &d)| {
            let s = sigmoid(g);
            (d * u * s * (T::one() + g * (T::one() - s)), d * g * s)
        })
        .unzip()
}
