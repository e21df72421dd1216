//! GELU, the tanh form GPT-2 uses:
//!   y = ½x(1 + tanh u), u = √(2/π)(x + 0.044715x³)
//!   dy/dx = ½(1 + tanh u) + ½x(1 − tanh²u)·√(2/π)(1 + 3·0.044715x²)

use super::Real;
use rayon::prelude::*;

const GELU_C: f64 = 0.044715;
/// √(2/π)
const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;

pub fn gelu_fwd<T: Real>(x: &[T] /* (N) */) -> Vec<T> /* (N) */ {
    let (c, k, half) = (T::from_f64(GELU_C), T::from_f64(SQRT_2_OVER_PI), T::from_f64(0.5));
    x.par_iter()
        .with_min_len(4096)
        .map(|&x| half * x * (T::one() + (k * (x + c * x * x * x)).tanh()))
        .collect()
}

pub fn gelu_bwd<T: Real>(x: &[T] /* (N) */, dy: &[T] /* (N) */) -> Vec<T> /* dx (N) */ {
    let (c, k, half) = (T::from_f64(GELU_C), T::from_f64(SQRT_2_OVER_PI), T::from_f64(0.5));
    let three = T::from_f64(3.0);
    x.par_iter()
        .zip(dy.par_iter())
        .with_min_len(4096)
        .map(|(&x, &g)| {
            let t = (k * (x + c * x * x * x)).tanh();
            let du = k * (T::one() + three * c * x * x);
            g * (half * (T::one() + t) + half * x * (T::one() - t * t) * du)
        })
        .collect()
}
