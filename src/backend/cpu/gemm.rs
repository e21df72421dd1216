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

/// A product is split over the threads by rows when each gets at least this many.
const MIN_ROWS_PER_THREAD: usize = 32;

pub fn matmul<T: Real>(s: MatmulSpec, a: &[T], b: &[T], c: &mut [T]) {
    let MatmulSpec { m, k, n, .. } = s;
    assert_eq!(a.len(), m * k, "matmul: A has {} elements, expected {m}×{k}", a.len());
    assert_eq!(b.len(), k * n, "matmul: B has {} elements, expected {k}×{n}", b.len());
    assert_eq!(c.len(), m * n, "matmul: C has {} elements, expected {m}×{n}", c.len());
    // SAFETY: the lengths were checked above; C does not alias A or B.
    unsafe { product(s, a, b, c.as_mut_ptr()) }
}

/// op(A)·op(B) into a new (m, n) matrix, never filled before the product writes it.
pub fn matmul_new<T: Real>(s: MatmulSpec, a: &[T], b: &[T]) -> Vec<T> {
    let MatmulSpec { m, k, n, .. } = s;
    assert!(!s.accumulate, "matmul_new: nothing to accumulate into");
    assert_eq!(a.len(), m * k, "matmul: A has {} elements, expected {m}×{k}", a.len());
    assert_eq!(b.len(), k * n, "matmul: B has {} elements, expected {k}×{n}", b.len());
    let mut c = Vec::with_capacity(m * n);
    // SAFETY: the product writes all m·n elements (beta = 0: C is never read), then they are
    // counted in; the lengths were checked above.
    unsafe {
        product(s, a, b, c.as_mut_ptr());
        c.set_len(m * n);
    }
    c
}

/// C (m, n) at `c` (+)= op(A)·op(B).
///
/// # Safety
/// A and B hold m·k and k·n elements; `c` addresses m·n elements, initialized when
/// accumulating, aliasing neither.
unsafe fn product<T: Real>(s: MatmulSpec, a: &[T], b: &[T], c: *mut T) {
    let MatmulSpec { m, k, n, trans_a, trans_b, accumulate } = s;
    if m == 0 || n == 0 {
        return;
    }
    let beta = if accumulate { T::one() } else { T::zero() };
    if k == 0 {
        if !accumulate {
            std::ptr::write_bytes(c, 0, m * n);
        }
        return;
    }
    // (row stride, column stride) of op(A) and op(B) in elements.
    let (rsa, csa) = if trans_a { (1, m) } else { (k, 1) };
    let (rsb, csb) = if trans_b { (1, k) } else { (n, 1) };
    let work = m * n * k;
    let threads = rayon::current_num_threads();
    if work < 1 << 18 || threads == 1 {
        block(a, rsa, csa, b, rsb, csb, c, n, 0..m, 0..n, k, beta);
        return;
    }
    // One block per thread: each packs its operands once (64-row blocks repacked all of B for
    // every 64 rows, a quarter of the time at these sizes). Split the rows when there are enough,
    // else the columns.
    let by_rows = m >= MIN_ROWS_PER_THREAD * threads;
    let extent = if by_rows { m } else { n };
    let per = extent.div_ceil(threads);
    let base = Shared(c);
    (0..extent.div_ceil(per)).into_par_iter().for_each(|t| {
        let part = t * per..((t + 1) * per).min(extent);
        let c_ptr = base;
        let (rows, cols) = if by_rows { (part, 0..n) } else { (0..m, part) };
        // SAFETY: each task writes a disjoint block of C (its rows or its columns), through raw
        // pointers with C's row stride; the slice itself is not used while they run.
        unsafe { block(a, rsa, csa, b, rsb, csb, c_ptr.0, n, rows, cols, k, beta) };
    });
}

/// A raw pointer that tasks writing disjoint parts of one buffer may share.
#[derive(Clone, Copy)]
pub(super) struct Shared<T>(pub(super) *mut T);
// SAFETY: every use writes a region no other task touches (see the callers).
unsafe impl<T> Send for Shared<T> {}
unsafe impl<T> Sync for Shared<T> {}

/// C (m × n, row stride ldc) = alpha·A·B + beta·C on raw strided operands — (pointer, row
/// stride, column stride) — on the calling thread.
///
/// # Safety
/// The strides must describe matrices inside their buffers; C must not alias A or B and no other
/// thread may touch the elements of C addressed meanwhile.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn mm<T: Real>(
    m: usize,
    k: usize,
    n: usize,
    alpha: T,
    a: (*const T, usize, usize),
    b: (*const T, usize, usize),
    beta: T,
    c: (*mut T, usize),
) {
    let (a, b) = ((a.0, a.1 as isize, a.2 as isize), (b.0, b.1 as isize, b.2 as isize));
    T::gemm_raw(m, k, n, alpha, a.0, a.1, a.2, b.0, b.1, b.2, beta, c.0, c.1 as isize, 1);
}

/// C[rows, cols] (+)= op(A)[rows, :]·op(B)[:, cols], `c` pointing at C's first element (row
/// stride `ldc`).
///
/// # Safety
/// `a`, `b` and `c` must hold the rows and columns addressed; no other thread may write the
/// same elements of C meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn block<T: Real>(
    a: &[T],
    rsa: usize,
    csa: usize,
    b: &[T],
    rsb: usize,
    csb: usize,
    c: *mut T,
    ldc: usize,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    k: usize,
    beta: T,
) {
    let a0 = a.as_ptr().add(rows.start * rsa);
    let b0 = b.as_ptr().add(cols.start * csb);
    let c0 = c.add(rows.start * ldc + cols.start);
    mm(rows.len(), k, cols.len(), T::one(), (a0, rsa, csa), (b0, rsb, csb), beta, (c0, ldc));
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

    /// Small products run on the calling thread; the last three are split across a pool of four
    /// threads (≥ 2^18 multiply-adds): by rows (m ≥ 32 per thread) or by columns (m = 20), with
    /// remainders in the last part.
    #[test]
    fn matches_naive_in_every_layout() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(4).build().unwrap();
        pool.install(every_layout);
    }

    fn every_layout() {
        let sizes = [
            (1, 1, 1),
            (3, 5, 7),
            (130, 17, 65),
            (257, 33, 9),
            (300, 40, 70),
            (20, 300, 900),
            (1001, 17, 33),
        ];
        for &(m, k, n) in &sizes {
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
