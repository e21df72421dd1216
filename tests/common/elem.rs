//! Element types of the CUDA launcher tests (f32 and bf16) and their helpers: rounding through
//! the type, random normal inputs, and the relative error the tolerances are written against.

use super::harness::normals;
use gkd::backend::cuda::linear_divergence::HeadElem;
use half::bf16;

/// An element type under test: f32 or bf16.
pub trait Elem: HeadElem + cudarc::driver::ValidAsZeroBits {
    const NAME: &'static str;
    fn from_f32(x: f32) -> Self;
    fn to_f32(self) -> f32;
}
impl Elem for f32 {
    const NAME: &'static str = "f32";
    fn from_f32(x: f32) -> f32 {
        x
    }
    fn to_f32(self) -> f32 {
        self
    }
}
impl Elem for bf16 {
    const NAME: &'static str = "bf16";
    fn from_f32(x: f32) -> bf16 {
        bf16::from_f32(x)
    }
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
}

/// x rounded to T, as f32.
pub fn round<T: Elem>(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| T::from_f32(v).to_f32()).collect()
}

pub fn to_t<T: Elem>(x: &[f32]) -> Vec<T> {
    x.iter().map(|&v| T::from_f32(v)).collect()
}

pub fn normal_f32(n: usize, std: f64, seed: u64) -> Vec<f32> {
    normals(n, 0.0, std, seed).into_iter().map(|x| x as f32).collect()
}

/// max |a − b| / max |b|, NaN anywhere → infinity.
pub fn rel(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0.0f64, |m, &y| m.max((y as f64).abs())).max(1e-30);
    a.iter().zip(b).fold(0.0f64, |m, (&x, &y)| {
        let e = (x as f64 - y as f64).abs() / scale;
        if e.is_nan() {
            f64::INFINITY
        } else {
            m.max(e)
        }
    })
}
