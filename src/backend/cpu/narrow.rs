//! A block of columns of a row-major matrix, and its backward.
//!
//! fwd: y[n, j] = x[n, start + j]            x (N, W) → y (N, L), j < L
//! bwd: dx[n, start + j] = dy[n, j], zero elsewhere
//! (GPT-2 splits its fused q|k|v projection this way.)

use super::Real;

pub fn narrow_cols_fwd<T: Real>(
    x: &[T],      // (N, W)
    width: usize, // W
    start: usize,
    len: usize, // L
) -> Vec<T> /* (N, L) */ {
    assert!(start + len <= width, "narrow_cols_fwd: columns {start}..{} of {width}", start + len);
    if width == 0 {
        return Vec::new();
    }
    assert_eq!(x.len() % width, 0, "narrow_cols_fwd: {} elements are not rows of {width}", x.len());
    x.chunks(width).flat_map(|row| row[start..start + len].iter().copied()).collect()
}

pub fn narrow_cols_bwd<T: Real>(
    dy: &[T],     // (N, L)
    width: usize, // W
    start: usize,
    len: usize, // L
) -> Vec<T> /* dx (N, W) */ {
    assert!(start + len <= width, "narrow_cols_bwd: columns {start}..{} of {width}", start + len);
    if len == 0 {
        return Vec::new();
    }
    assert_eq!(dy.len() % len, 0, "narrow_cols_bwd: {} elements are not rows of {len}", dy.len());
    let rows = dy.len() / len;
    let mut dx = vec![T::zero(); rows * width];
    for (dxr, dyr) in dx.chunks_mut(width).zip(dy.chunks(len)) {
        dxr[start..start + len].copy_from_slice(dyr);
    }
    dx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn narrow_and_scatter_back() {
        let x: Vec<f64> = (0..12).map(f64::from).collect(); // (3, 4)
        assert_eq!(narrow_cols_fwd(&x, 4, 1, 2), vec![1.0, 2.0, 5.0, 6.0, 9.0, 10.0]);
        let dx = narrow_cols_bwd(&[1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0], 4, 1, 2);
        assert_eq!(dx, vec![0.0, 1.0, 2.0, 0.0, 0.0, 3.0, 4.0, 0.0, 0.0, 5.0, 6.0, 0.0]);
    }
}
