//! Fully connected layer.
//!
//! fwd: y = x·Wᵀ + b   (W stored (Dout, Din), PyTorch nn.Linear)
//!   or y = x·W + b    (W stored (Din, Dout), GPT-2 Conv1D; `w_in_out`)
//! bwd: dx = dy·W (or dy·Wᵀ), dW = dyᵀ·x (or xᵀ·dy), db = Σ_n dy[n, :]

use super::gemm::matmul_new;
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
    let spec = |accumulate| MatmulSpec {
        m: d.n,
        k: d.d_in,
        n: d.d_out,
        trans_a: false,
        trans_b: !d.w_in_out,
        accumulate,
    };
    match b {
        Some(b) => {
            // The bias in every row, then the product added to it.
            let mut y: Vec<T> = (0..d.n).flat_map(|_| b.iter().copied()).collect();
            matmul(spec(true), x, w, &mut y);
            y
        }
        None => matmul_new(spec(false), x, w),
    }
}

pub fn linear_bwd<T: Real>(
    d: LinearDims,
    x: &[T],  // (N, Din)
    w: &[T],  // (Dout, Din), or (Din, Dout) if w_in_out
    dy: &[T], // (N, Dout)
    has_bias: bool,
) -> LinearGrads<T> {
    let LinearDims { n, d_in, d_out, w_in_out } = d;
    let spec = |m, k, n, trans_a, trans_b| MatmulSpec { m, k, n, trans_a, trans_b, accumulate: false };
    // dx (N, Din) = dy (N, Dout) · W (Dout, Din), or dy · Wᵀ when W is (Din, Dout).
    let dx = matmul_new(spec(n, d_out, d_in, false, w_in_out), dy, w);
    let dw = if w_in_out {
        // dW (Din, Dout) = xᵀ · dy
        matmul_new(spec(d_in, n, d_out, true, false), x, dy)
    } else {
        // dW (Dout, Din) = dyᵀ · x
        matmul_new(spec(d_out, n, d_in, true, false), dy, x)
    };
    // db = Σ_n dy[n, :], rows added in order.
    let db = has_bias.then(|| {
        let mut db = vec![T::zero(); d_out];
        if d_out > 0 {
            for row in dy.chunks(d_out) {
                db.iter_mut().zip(row).for_each(|(a, &g)| *a = *a + g);
            }
        }
        db
    });
    LinearGrads { dx, dw, db }
}
