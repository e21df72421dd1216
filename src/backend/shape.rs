//! Shapes, and layouts: how a tensor's elements sit in its storage (strides and an offset, in
//! elements), so that narrowing, reshaping and transposing are views without copies.

use crate::error::{shape_err, Result};
use std::fmt;
use std::ops::Range;

#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Shape(Vec<usize>);

impl Shape {
    pub fn new(dims: impl Into<Vec<usize>>) -> Self {
        Shape(dims.into())
    }

    pub fn dims(&self) -> &[usize] {
        &self.0
    }

    pub fn rank(&self) -> usize {
        self.0.len()
    }

    pub fn numel(&self) -> usize {
        self.0.iter().product()
    }

    /// The last dimension (1 for a scalar).
    pub fn last(&self) -> usize {
        self.0.last().copied().unwrap_or(1)
    }

    /// Product of all dimensions but the last: the number of rows of the (rows, last) view.
    pub fn rows(&self) -> usize {
        self.numel() / self.last().max(1)
    }

    /// Row-major strides of a contiguous tensor of this shape.
    pub fn contiguous_strides(&self) -> Vec<usize> {
        let mut s = vec![1; self.0.len()];
        for i in (0..self.0.len().saturating_sub(1)).rev() {
            s[i] = s[i + 1] * self.0[i + 1];
        }
        s
    }
}

impl From<&[usize]> for Shape {
    fn from(d: &[usize]) -> Self {
        Shape(d.to_vec())
    }
}

impl<const N: usize> From<[usize; N]> for Shape {
    fn from(d: [usize; N]) -> Self {
        Shape(d.to_vec())
    }
}

impl From<Vec<usize>> for Shape {
    fn from(d: Vec<usize>) -> Self {
        Shape(d)
    }
}

impl From<&Shape> for Shape {
    fn from(s: &Shape) -> Self {
        s.clone()
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d: Vec<String> = self.0.iter().map(|x| x.to_string()).collect();
        write!(f, "[{}]", d.join(", "))
    }
}

/// Element (i₀, i₁, …) of a tensor is storage element `offset + Σ iₖ·strides[k]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    shape: Shape,
    strides: Vec<usize>,
    offset: usize,
}

impl Layout {
    /// Row-major and dense, from storage element `offset`.
    pub fn contiguous(shape: impl Into<Shape>, offset: usize) -> Layout {
        let shape = shape.into();
        Layout { strides: shape.contiguous_strides(), shape, offset }
    }

    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    pub fn strides(&self) -> &[usize] {
        &self.strides
    }

    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Row-major and dense (dimensions of size 1 may have any stride).
    pub fn is_contiguous(&self) -> bool {
        let want = self.shape.contiguous_strides();
        self.shape.dims().iter().zip(self.strides.iter().zip(&want)).all(|(&d, (&s, &w))| d <= 1 || s == w)
    }

    /// The storage range of a contiguous layout.
    pub fn contiguous_range(&self) -> Option<Range<usize>> {
        self.is_contiguous().then(|| self.offset..self.offset + self.shape.numel())
    }

    /// The same elements under another shape; only a contiguous layout can be reshaped in place.
    pub fn reshape(&self, shape: Shape) -> Option<Layout> {
        (self.is_contiguous() && shape.numel() == self.shape.numel())
            .then(|| Layout::contiguous(shape, self.offset))
    }

    /// Elements `start..start + len` along `dim`.
    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Layout> {
        match self.shape.dims().get(dim) {
            Some(&n) if start + len <= n => {
                let mut dims = self.shape.dims().to_vec();
                dims[dim] = len;
                Ok(Layout {
                    shape: Shape(dims),
                    strides: self.strides.clone(),
                    offset: self.offset + start * self.strides[dim],
                })
            }
            _ => shape_err(
                "narrow",
                format!("{start}..{} along dimension {dim} of {}", start + len, self.shape),
            ),
        }
    }

    /// Dimensions `a` and `b` swapped.
    pub fn transpose(&self, a: usize, b: usize) -> Result<Layout> {
        let r = self.shape.rank();
        if a >= r || b >= r {
            return shape_err("transpose", format!("dimensions {a} and {b} of {}", self.shape));
        }
        let mut dims = self.shape.dims().to_vec();
        let mut strides = self.strides.clone();
        dims.swap(a, b);
        strides.swap(a, b);
        Ok(Layout { shape: Shape(dims), strides, offset: self.offset })
    }

    /// The storage index of every element, in row-major order of the shape.
    pub fn storage_indices(&self) -> impl Iterator<Item = usize> + '_ {
        let dims = self.shape.dims();
        let n = self.shape.numel();
        let mut idx = vec![0usize; dims.len()];
        let mut pos = self.offset;
        (0..n).map(move |k| {
            let here = pos;
            if k + 1 < n {
                // Advance the multi-index like an odometer, keeping `pos` in step.
                for d in (0..dims.len()).rev() {
                    idx[d] += 1;
                    pos += self.strides[d];
                    if idx[d] < dims[d] {
                        break;
                    }
                    pos -= idx[d] * self.strides[d];
                    idx[d] = 0;
                }
            }
            here
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_walk_the_right_elements() {
        let l = Layout::contiguous([2, 3, 4], 0);
        assert!(l.is_contiguous());
        assert_eq!(l.contiguous_range(), Some(0..24));
        // Rows 1..2 of the first dimension: still contiguous.
        let n = l.narrow(0, 1, 1).unwrap();
        assert_eq!(n.contiguous_range(), Some(12..24));
        // Columns 1..3 of the last: strided.
        let c = l.narrow(2, 1, 2).unwrap();
        assert!(!c.is_contiguous());
        assert_eq!(c.storage_indices().take(5).collect::<Vec<_>>(), vec![1, 2, 5, 6, 9]);
        let t = Layout::contiguous([2, 3], 0).transpose(0, 1).unwrap();
        assert_eq!(t.shape().dims(), &[3, 2]);
        assert_eq!(t.storage_indices().collect::<Vec<_>>(), vec![0, 3, 1, 4, 2, 5]);
        assert!(t.reshape(Shape::new([6])).is_none());
        assert!(l.narrow(1, 2, 2).is_err());
    }
}
