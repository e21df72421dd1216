//! Backend selection for the ops: which device the inputs are on, and the CPU element type.

use crate::backend::{cpu, cuda};
use crate::error::{Error, Result};
use crate::tensor::{CpuStorage, DType, Device, Element, Tensor};

/// Runs `$body` with `$T` bound to the CPU element type of `$t` (f32 or f64); other dtypes are an
/// error naming the op.
macro_rules! cpu_real {
    ($op:expr, $t:expr, |$T:ident| $body:expr) => {
        match $t.dtype() {
            $crate::tensor::DType::F32 => {
                type $T = f32;
                $body
            }
            $crate::tensor::DType::F64 => {
                type $T = f64;
                $body
            }
            d => Err($crate::error::Error::DType {
                op: $op,
                dtype: d,
                device: $crate::tensor::Device::Cpu,
                supported: "f32, f64",
            }),
        }
    };
}
pub(crate) use cpu_real;

/// The one device all `ts` are on.
pub fn same_device(op: &'static str, ts: &[&Tensor]) -> Result<Device> {
    let d = ts[0].device();
    for t in &ts[1..] {
        if t.device() != d {
            return Err(Error::DeviceMismatch { op, a: d, b: t.device() });
        }
    }
    Ok(d)
}

/// All `ts` share one dtype.
pub fn same_dtype(op: &'static str, ts: &[&Tensor]) -> Result<DType> {
    let d = ts[0].dtype();
    for t in &ts[1..] {
        if t.dtype() != d {
            return Err(Error::Shape { op, detail: format!("mixed dtypes {d} and {}", t.dtype()) });
        }
    }
    Ok(d)
}

/// A CPU tensor from an op's output vector.
pub fn cpu_tensor<T: Element>(data: Vec<T>, shape: impl Into<crate::tensor::Shape>) -> Result<Tensor> {
    Tensor::from_vec(data, shape)
}

/// A tensor like `t` (shape, dtype, device) filled with `value`.
pub fn full_like(t: &Tensor, value: f64) -> Result<Tensor> {
    let host = CpuStorage::F64(vec![value; t.numel()]).convert(t.dtype());
    Tensor::from_cpu_storage(host, t.shape().clone())?.to_device(t.device())
}

/// a + b (same shape and dtype).
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    const OP: &str = "add";
    if a.shape() != b.shape() {
        return Err(Error::Shape { op: OP, detail: format!("{} + {}", a.shape(), b.shape()) });
    }
    same_dtype(OP, &[a, b])?;
    match same_device(OP, &[a, b])? {
        Device::Cpu => cpu_real!(OP, a, |T| {
            cpu_tensor(cpu::add_fwd::<T>(a.cpu_slice()?, b.cpu_slice()?), a.shape().clone())
        }),
        Device::Cuda(_) => cuda::elementwise::add(a, b),
    }
}
