//! Fully connected layer.
//!
//! fwd: y = x·Wᵀ + b   (W stored (Dout, Din), PyTorch nn.Linear)
//!   or y = x·W + b    (W stored (Din, Dout), GPT-2 Conv1D; `w_in_out`)
//! bwd: dx = dy·W (or dy·Wᵀ), dW = dyᵀ·x (or xᵀ·dy), db = Σ_n dy[n, :]

use super::{matmul, MatmulSpec, Real};
use crate::backend::ops::LinearDims;

pub struct LinearGrads<T> {
    pub dx: Vec<T>,         // (N, Din)
    pub dw: Vec<T>,         // same layout as w
    pub db: Option<Vec<T>>, // (Dout)
}

pub fn linear_fwd<T: Real>(
    d: LinearDims,
    x: &[T],         // (N, Din)
    w: &[T],         // (Dout, Din), or (Din, Dout) if w_in_out
    b: Option<&[T]>, // (Dout)
) -> Vec<T> /* (N, Dout) */ {
    let mut y = vec![T::zero(); d.n * d.d_out];
    if let Some(b) = b {
        if d.d_out > 0 {
            y.chunks_mut(d.d_out).for_each(|row| row.copy_from_slice(b));
        }
    }
    let spec = MatmulSpec {
        m: d.n,
        k: d.d_in,
        n: d.d_out,
        trans_a: false,
        trans_b: !d.w_in_out,
        accumulate: b.is_some(),
    };
    matmul(spec, x, w, &mut y);
    y
}

pub fn linear_bwd<T: Real>(
    d: LinearDims,
    x: &[T],  // (N, Din)
    w: &[T],  // (Dout, Din), or (Din, Dout) if w_in_out
    dy: &[T], // (N, Dout)
    has_bias: bool,
) -> LinearGrads<T> {
    let LinearDims { n, d_in, d_out, w_in_out } = d;
    let mut dx = vec![T::zero(); n * d_in];
    // dx (N, Din) = dy (N, Dout) · W (Dout, Din), or dy · Wᵀ when W is (Din, Dout).
    matmul(
        MatmulSpec { m: n, k: d_out, n: d_in, trans_a: false, trans_b: w_in_out, accumulate: false },
        dy,
        w,
        &mut dx,
    );
    let mut dw = vec![T::zero(); d_in * d_out];
    if w_in_out {
        // dW (Din, Dout) = xᵀ · dy
        matmul(
            MatmulSpec { m: d_in, k: n, n: d_out, trans_a: true, trans_b: false, accumulate: false },
            x,
            dy,
            &mut dw,
        );
    } else {
        // dW (Dout, Din) = dyᵀ · x
        matmul(
            MatmulSpec { m: d_out, k: n, n: d_in, trans_a: true, trans_b: false, accumulate: false },
            dy,
            x,
            &mut dw,
        );
    }
    let db = has_bias.then(|| {
        let mut db = vec![T::zero(); d_out];
        for (i, &g) in dy.iter().enumerate() {
            db[i % d_out] = db[i % d_out] + g;
        }
        db
    });
    LinearGrads { dx, dw, db }
}
