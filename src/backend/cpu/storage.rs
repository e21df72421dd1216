//! Host storage: one vector per dtype, and typed access to a `View` of it.

use super::super::{DType, View};
use crate::error::{shape_err, Error, Result};
use half::{bf16, f16};

#[derive(Clone, Debug, PartialEq)]
pub enum CpuStorage {
    F32(Vec<f32>),
    F64(Vec<f64>),
    BF16(Vec<bf16>),
    F16(Vec<f16>),
    U32(Vec<u32>),
    U8(Vec<u8>),
}

/// A host element type that has a `DType`.
pub trait Element: Copy + Send + Sync + 'static {
    const DTYPE: DType;
    fn wrap(v: Vec<Self>) -> CpuStorage;
    fn slice(s: &CpuStorage) -> Option<&[Self]>;
    fn slice_mut(s: &mut CpuStorage) -> Option<&mut [Self]>;
    fn to_f64(self) -> f64;
    fn from_f64(x: f64) -> Self;
}

macro_rules! element {
    ($t:ty, $v:ident, |$x:ident| $to:expr, |$y:ident| $from:expr) => {
        impl Element for $t {
            const DTYPE: DType = DType::$v;
            fn wrap(v: Vec<Self>) -> CpuStorage {
                CpuStorage::$v(v)
            }
            fn slice(s: &CpuStorage) -> Option<&[Self]> {
                match s {
                    CpuStorage::$v(v) => Some(v),
                    _ => None,
                }
            }
            fn slice_mut(s: &mut CpuStorage) -> Option<&mut [Self]> {
                match s {
                    CpuStorage::$v(v) => Some(v),
                    _ => None,
                }
            }
            fn to_f64(self) -> f64 {
                let $x = self;
                $to
            }
            fn from_f64($y: f64) -> Self {
                $from
            }
        }
    };
}
element!(f32, F32, |x| x as f64, |y| y as f32);
element!(f64, F64, |x| x, |y| y);
element!(bf16, BF16, |x| x.to_f64(), |y| bf16::from_f64(y));
element!(f16, F16, |x| x.to_f64(), |y| f16::from_f64(y));
element!(u32, U32, |x| x as f64, |y| y as u32);
element!(u8, U8, |x| x as f64, |y| y as u8);

/// Runs `$body` with `$T` bound to the element type of `$s` (any dtype).
macro_rules! with_elem {
    ($s:expr, |$v:ident: $T:ident| $body:expr) => {
        match $s {
            CpuStorage::F32($v) => {
                #[allow(dead_code)]
                type $T = f32;
                $body
            }
            CpuStorage::F64($v) => {
                #[allow(dead_code)]
                type $T = f64;
                $body
            }
            CpuStorage::BF16($v) => {
                #[allow(dead_code)]
                type $T = ::half::bf16;
                $body
            }
            CpuStorage::F16($v) => {
                #[allow(dead_code)]
                type $T = ::half::f16;
                $body
            }
            CpuStorage::U32($v) => {
                #[allow(dead_code)]
                type $T = u32;
                $body
            }
            CpuStorage::U8($v) => {
                #[allow(dead_code)]
                type $T = u8;
                $body
            }
        }
    };
}
pub(crate) use with_elem;

impl CpuStorage {
    pub fn dtype(&self) -> DType {
        with_elem!(self, |_v: T| T::DTYPE)
    }

    pub fn len(&self) -> usize {
        with_elem!(self, |v: T| v.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn zeros(dtype: DType, n: usize) -> CpuStorage {
        match dtype {
            DType::F32 => CpuStorage::F32(vec![0.0; n]),
            DType::F64 => CpuStorage::F64(vec![0.0; n]),
            DType::BF16 => CpuStorage::BF16(vec![bf16::ZERO; n]),
            DType::F16 => CpuStorage::F16(vec![f16::ZERO; n]),
            DType::U32 => CpuStorage::U32(vec![0; n]),
            DType::U8 => CpuStorage::U8(vec![0; n]),
        }
    }

    pub fn to_f64_vec(&self) -> Vec<f64> {
        with_elem!(self, |v: T| v.iter().map(|x| x.to_f64()).collect())
    }

    pub fn to_f32_vec(&self) -> Vec<f32> {
        match self {
            CpuStorage::F32(v) => v.clone(),
            CpuStorage::BF16(v) => v.iter().map(|x| x.to_f32()).collect(),
            CpuStorage::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
            s => s.to_f64_vec().into_iter().map(|x| x as f32).collect(),
        }
    }

    /// Conversion with round-to-nearest-even for the 16-bit types (from f32, as torch rounds).
    pub fn convert(&self, dtype: DType) -> CpuStorage {
        if self.dtype() == dtype {
            return self.clone();
        }
        fn via_f32<T: Element>(s: &CpuStorage, f: impl Fn(f32) -> T + Sync) -> CpuStorage {
            T::wrap(s.to_f32_vec().into_iter().map(f).collect())
        }
        match dtype {
            DType::F32 => CpuStorage::F32(self.to_f32_vec()),
            DType::F64 => CpuStorage::F64(self.to_f64_vec()),
            DType::BF16 => via_f32(self, bf16::from_f32),
            DType::F16 => via_f32(self, f16::from_f32),
            DType::U32 => CpuStorage::U32(self.to_f64_vec().into_iter().map(|x| x as u32).collect()),
            DType::U8 => CpuStorage::U8(self.to_f64_vec().into_iter().map(|x| x as u8).collect()),
        }
    }

    /// Elements `start..start + len`, as a new storage.
    pub fn slice_copy(&self, start: usize, len: usize) -> Result<CpuStorage> {
        check_range("slice", self.len(), start, len)?;
        Ok(with_elem!(self, |v: T| T::wrap(v[start..start + len].to_vec())))
    }
}

pub(crate) fn check_range(op: &'static str, total: usize, start: usize, len: usize) -> Result<()> {
    if start.checked_add(len).is_none_or(|end| end > total) {
        return shape_err(op, format!("elements {start}..{} of a storage of {total}", start + len));
    }
    Ok(())
}

impl<'a> View<'a, CpuStorage> {
    /// The elements as a slice of `T`; an error naming `op` if the dtype differs or the range
    /// does not fit.
    pub fn typed<T: Element>(&self, op: &'static str) -> Result<&'a [T]> {
        let s = T::slice(self.storage).ok_or_else(|| Error::DType {
            op,
            dtype: self.storage.dtype().name(),
            device: "cpu".into(),
            supported: T::DTYPE.name(),
        })?;
        check_range(op, s.len(), self.start, self.len)?;
        Ok(&s[self.start..self.start + self.len])
    }

    pub fn dtype(&self) -> DType {
        self.storage.dtype()
    }
}

/// The mutable elements `start..start + len` of `s` as `T`.
pub(crate) fn typed_mut<'a, T: Element>(
    op: &'static str,
    s: &'a mut CpuStorage,
    start: usize,
    len: usize,
) -> Result<&'a mut [T]> {
    let dtype = s.dtype();
    let v = T::slice_mut(s).ok_or_else(|| Error::DType {
        op,
        dtype: dtype.name(),
        device: "cpu".into(),
        supported: T::DTYPE.name(),
    })?;
    check_range(op, v.len(), start, len)?;
    Ok(&mut v[start..start + len])
}
