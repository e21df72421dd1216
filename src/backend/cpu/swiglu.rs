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

/// Rows [gate | up] of 2·width → silu(gate)·up, (rows, width).
pub fn swiglu_packed_fwd<T: Real>(x: &[T] /* (N, 2I) */, width: usize) -> Vec<T> /* (N, I) */ {
    x.par_chunks(2 * width)
        .flat_map_iter(|row| row[..width].iter().zip(&row[width..]).map(|(&g, &u)| g * sigmoid(g) * u))
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The packed form equals swiglu of the two halves of each row (a swapped half or an
    /// off-by-one column would not).
    #[test]
    fn packed_rows_equal_the_halves() {
        let x: Vec<f64> = (0..3 * 10).map(|i| (i as f64 * 0.37).sin() * 2.0).collect();
        let y = swiglu_packed_fwd(&x, 5);
        let (g, u): (Vec<f64>, Vec<f64>) = (
            x.chunks(10).flat_map(|r| r[..5].to_vec()).collect(),
            x.chunks(10).flat_map(|r| r[5..].to_vec()).collect(),
        );
        assert_eq!(y, swiglu_fwd(&g, &u));
    }
}
