//! Matrix product on the CPU: `matrixmultiply` kernels, rows of the output split across rayon.

use super::Real;
use rayon::prelude::*;

/// `C[m, n] (+)= op(A) op(B)` where `op(A)` is `[m, k]` and `op(B)` is `[k, n]`; all row-major
/// and contiguous. `trans_a`: A is stored `[k, m]`; `trans_b`: B is stored `[n, k]`.
#[derive(Clone, Copy, Debug)]
pub struct MatmulSpec {
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    /// Add into C instead of overwriting it.
    pub accumulate: bool,
}

/// Rows of C handed to one task: large enough to keep the packing cost of B amortized.
const ROWS_PER_TASK: usize = 64;

pub fn matmul<T: Real>(s: MatmulSpec, a: &[T], b: &[T], c: &mut [T]) {
    let MatmulSpec { m, k, n, trans_a, trans_b, accumulate } = s;
    assert_eq!(a.len(), m * k, "matmul: A has {} elements, expected {m}×{k}", a.len());
    assert_eq!(b.len(), k * n, "matmul: B has {} elements, expected {k}×{n}", b.len());
    assert_eq!(c.len(), m * n, "matmul: C has {} elements, expected {m}×{n}", c.len());
    if m == 0 || n == 0 {
        return;
    }
    let beta = if accumulate { T::one() } else { T::zero() };
    if k == 0 {
        if !accumulate {
            c.iter_mut().for_each(|x| *x = T::zero());
        }
        return;
    }
    // (row stride, column stride) of op(A) and op(B) in elements.
    let (rsa, csa) = if trans_a { (1isize, m as isize) } else { (k as isize, 1) };
    let (rsb, csb) = if trans_b { (1isize, k as isize) } else { (n as isize, 1) };
    let work = m * n * k;
    let threads = rayon::current_num_threads();
    if work < 1 << 18 || threads == 1 {
        // SAFETY: the lengths were checked above; C does not alias A or B.
        unsafe { block(a, rsa, csa, b, rsb, csb, c, n, 0..m, 0..n, k, beta) };
    } else if m >= ROWS_PER_TASK * threads {
        c.par_chunks_mut(ROWS_PER_TASK * n).enumerate().for_each(|(i, c_blk)| {
            let r0 = i * ROWS_PER_TASK;
            let rows = r0..r0 + c_blk.len() / n;
            // SAFETY: `c_blk` is a disjoint mutable chunk of C holding exactly these rows.
            unsafe { block(a, rsa, csa, b, rsb, csb, c_blk, n, rows, 0..n, k, beta) };
        });
    } else {
        // Few rows (a chunk of the output head, a decode step): split the columns instead.
        let cols_per_task = n.div_ceil(threads * 4).max(64);
        let base = SendPtr(c.as_mut_ptr());
        (0..n.div_ceil(cols_per_task)).into_par_iter().for_each(|t| {
            let cols = t * cols_per_task..((t + 1) * cols_per_task).min(n);
            let c_ptr = base;
            // SAFETY: each task writes a disjoint block of columns of C, through raw pointers
            // with C's row stride; the slice itself is not touched while they run.
            unsafe {
                let c_all = std::slice::from_raw_parts_mut(c_ptr.0, m * n);
                block(a, rsa, csa, b, rsb, csb, c_all, n, 0..m, cols, k, beta)
            };
        });
    }
}

#[derive(Clone, Copy)]
struct SendPtr<T>(*mut T);
// SAFETY: used only to hand disjoint column blocks of one buffer to rayon tasks.
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

/// C[rows, cols] (+)= op(A)[rows, :]·op(B)[:, cols], where `c` starts at row `rows.start` of C
/// (row stride `ldc`).
///
/// # Safety
/// `a`, `b` and `c` must hold the rows and columns addressed; no other thread may write the
/// same elements of `c` meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn block<T: Real>(
    a: &[T],
    rsa: isize,
    csa: isize,
    b: &[T],
    rsb: isize,
    csb: isize,
    c: &mut [T],
    ldc: usize,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    k: usize,
    beta: T,
) {
    let a0 = a.as_ptr().offset(rows.start as isize * rsa);
    let b0 = b.as_ptr().offset(cols.start as isize * csb);
    let c0 = c.as_mut_ptr().add(cols.start);
    T::gemm_raw(rows.len(), k, cols.len(), T::one(), a0, rsa, csa, b0, rsb, csb, beta, c0, ldc as isize, 1);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(s: MatmulSpec, a: &[f64], b: &[f64]) -> Vec<f64> {
        let mut c = vec![0.0; s.m * s.n];
        for i in 0..s.m {
            for j in 0..s.n {
                for p in 0..s.k {
                    let av = if s.trans_a { a[p * s.m + i] } else { a[i * s.k + p] };
                    let bv = if s.trans_b { b[j * s.k + p] } else { b[p * s.n + j] };
                    c[i * s.n + j] += av * bv;
                }
            }
        }
        c
    }

    #[test]
    fn matches_naive_in_every_layout() {
        for &(m, k, n) in &[(1, 1, 1), (3, 5, 7), (130, 17, 65), (257, 33, 9)] {
            for ta in [false, true] {
                for tb in [false, true] {
                    let s = MatmulSpec { m, k, n, trans_a: ta, trans_b: tb, accumulate: false };
                    let a: Vec<f64> = (0..m * k).map(|i| ((i * 7 % 13) as f64) - 6.0).collect();
                    let b: Vec<f64> = (0..k * n).map(|i| ((i * 5 % 11) as f64) * 0.5 - 2.0).collect();
                    let mut c = vec![1.0; m * n];
                    matmul(s, &a, &b, &mut c);
                    assert_eq!(c, naive(s, &a, &b), "m={m} k={k} n={n} ta={ta} tb={tb}");
                    let mut c2 = vec![1.0; m * n];
                    matmul(MatmulSpec { accumulate: true, ..s }, &a, &b, &mut c2);
                    let want: Vec<f64> = naive(s, &a, &b).iter().map(|x| x + 1.0).collect();
                    assert_eq!(c2, want);
                }
            }
        }
    }
}
