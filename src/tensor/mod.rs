//! Tensors: a shape and an immutable, shared storage on one device.
//!
//! Tensors are values: ops return new tensors, and cloning one shares its storage (an `Arc`), so
//! the autograd tape can keep inputs for the backward pass at no cost.

mod device;
mod dtype;
mod shape;

pub use device::{Device, DeviceRequest};
pub use dtype::DType;
pub use shape::Shape;

use crate::backend::cuda::{CudaBuf, CudaDevice, CudaStorage};
use crate::error::{shape_err, Error, Result};
use half::{bf16, f16};
use std::sync::Arc;

/// Host storage, one variant per dtype.
#[derive(Clone, Debug)]
pub enum CpuStorage {
    F32(Vec<f32>),
    F64(Vec<f64>),
    BF16(Vec<bf16>),
    F16(Vec<f16>),
}

#[derive(Debug)]
pub enum Storage {
    Cpu(CpuStorage),
    Cuda(CudaStorage),
}

#[derive(Clone, Debug)]
pub struct Tensor {
    shape: Shape,
    storage: Arc<Storage>,
}

/// A host element type that has a `DType`.
pub trait Element: Copy + Send + Sync + 'static {
    const DTYPE: DType;
    fn wrap(v: Vec<Self>) -> CpuStorage;
    fn view(s: &CpuStorage) -> Option<&[Self]>;
}

macro_rules! element {
    ($t:ty, $v:ident) => {
        impl Element for $t {
            const DTYPE: DType = DType::$v;
            fn wrap(v: Vec<Self>) -> CpuStorage {
                CpuStorage::$v(v)
            }
            fn view(s: &CpuStorage) -> Option<&[Self]> {
                match s {
                    CpuStorage::$v(v) => Some(v),
                    _ => None,
                }
            }
        }
    };
}
element!(f32, F32);
element!(f64, F64);
element!(bf16, BF16);
element!(f16, F16);

impl CpuStorage {
    pub fn dtype(&self) -> DType {
        match self {
            CpuStorage::F32(_) => DType::F32,
            CpuStorage::F64(_) => DType::F64,
            CpuStorage::BF16(_) => DType::BF16,
            CpuStorage::F16(_) => DType::F16,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            CpuStorage::F32(v) => v.len(),
            CpuStorage::F64(v) => v.len(),
            CpuStorage::BF16(v) => v.len(),
            CpuStorage::F16(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn to_f64_vec(&self) -> Vec<f64> {
        match self {
            CpuStorage::F32(v) => v.iter().map(|&x| x as f64).collect(),
            CpuStorage::F64(v) => v.clone(),
            CpuStorage::BF16(v) => v.iter().map(|x| x.to_f64()).collect(),
            CpuStorage::F16(v) => v.iter().map(|x| x.to_f64()).collect(),
        }
    }

    pub fn to_f32_vec(&self) -> Vec<f32> {
        match self {
            CpuStorage::F32(v) => v.clone(),
            CpuStorage::F64(v) => v.iter().map(|&x| x as f32).collect(),
            CpuStorage::BF16(v) => v.iter().map(|x| x.to_f32()).collect(),
            CpuStorage::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
        }
    }

    /// Conversion with round-to-nearest-even for the 16-bit types.
    pub fn convert(&self, dtype: DType) -> CpuStorage {
        if self.dtype() == dtype {
            return self.clone();
        }
        match dtype {
            DType::F32 => CpuStorage::F32(self.to_f32_vec()),
            DType::F64 => CpuStorage::F64(self.to_f64_vec()),
            DType::BF16 => CpuStorage::BF16(self.to_f32_vec().into_iter().map(bf16::from_f32).collect()),
            DType::F16 => CpuStorage::F16(self.to_f32_vec().into_iter().map(f16::from_f32).collect()),
        }
    }
}

impl Tensor {
    fn new(shape: Shape, storage: Storage) -> Tensor {
        Tensor { shape, storage: Arc::new(storage) }
    }

    /// A CPU tensor from host data; the data length must match the shape.
    pub fn from_vec<T: Element>(data: Vec<T>, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if data.len() != shape.numel() {
            return shape_err("Tensor::from_vec", format!("{} values for shape {shape}", data.len()));
        }
        Ok(Tensor::new(shape, Storage::Cpu(T::wrap(data))))
    }

    pub fn from_cpu_storage(storage: CpuStorage, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if storage.len() != shape.numel() {
            return shape_err(
                "Tensor::from_cpu_storage",
                format!("{} values for shape {shape}", storage.len()),
            );
        }
        Ok(Tensor::new(shape, Storage::Cpu(storage)))
    }

    pub(crate) fn from_cuda(storage: CudaStorage, shape: Shape) -> Tensor {
        debug_assert_eq!(storage.buf.len(), shape.numel());
        Tensor::new(shape, Storage::Cuda(storage))
    }

    pub fn zeros(shape: impl Into<Shape>, dtype: DType, device: Device) -> Result<Tensor> {
        let shape = shape.into();
        let n = shape.numel();
        match device {
            Device::Cpu => {
                let s = match dtype {
                    DType::F32 => CpuStorage::F32(vec![0.0; n]),
                    DType::F64 => CpuStorage::F64(vec![0.0; n]),
                    DType::BF16 => CpuStorage::BF16(vec![bf16::ZERO; n]),
                    DType::F16 => CpuStorage::F16(vec![f16::ZERO; n]),
                };
                Ok(Tensor::new(shape, Storage::Cpu(s)))
            }
            Device::Cuda(i) => {
                let dev = CudaDevice::get(i)?;
                let buf = dev.zeros(dtype, n, "Tensor::zeros")?;
                Ok(Tensor::from_cuda(CudaStorage { dev, buf }, shape))
            }
        }
    }

    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }

    pub fn numel(&self) -> usize {
        self.shape.numel()
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    pub fn dtype(&self) -> DType {
        match &*self.storage {
            Storage::Cpu(s) => s.dtype(),
            Storage::Cuda(s) => s.buf.dtype(),
        }
    }

    pub fn device(&self) -> Device {
        match &*self.storage {
            Storage::Cpu(_) => Device::Cpu,
            Storage::Cuda(s) => Device::Cuda(s.dev.ordinal()),
        }
    }

    /// The same data under another shape with as many elements.
    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if shape.numel() != self.numel() {
            return shape_err("reshape", format!("cannot view {} as {shape}", self.shape));
        }
        Ok(Tensor { shape, storage: self.storage.clone() })
    }

    /// The host slice of a CPU tensor of element type `T`.
    pub fn cpu_slice<T: Element>(&self) -> Result<&[T]> {
        match &*self.storage {
            Storage::Cpu(s) => T::view(s)
                .ok_or_else(|| Error::Msg(format!("expected a {} tensor, found {}", T::DTYPE, s.dtype()))),
            Storage::Cuda(_) => {
                Err(Error::Msg(format!("expected a CPU tensor, found one on {}", self.device())))
            }
        }
    }

    /// Copy to another device (a no-op sharing the storage when already there).
    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        if device == self.device() {
            return Ok(self.clone());
        }
        let host = self.to_cpu_storage()?;
        match device {
            Device::Cpu => Ok(Tensor::new(self.shape.clone(), Storage::Cpu(host))),
            Device::Cuda(i) => {
                let dev = CudaDevice::get(i)?;
                let buf = dev.upload(&host, "Tensor::to_device")?;
                Ok(Tensor::from_cuda(CudaStorage { dev, buf }, self.shape.clone()))
            }
        }
    }

    /// A copy of the data on the host, in its own dtype.
    pub fn to_cpu_storage(&self) -> Result<CpuStorage> {
        match &*self.storage {
            Storage::Cpu(s) => Ok(s.clone()),
            Storage::Cuda(s) => s.dev.download(&s.buf),
        }
    }

    /// Convert the element type. On the GPU this goes through the host (not for hot paths).
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        let host = self.to_cpu_storage()?.convert(dtype);
        Tensor::from_cpu_storage(host, self.shape.clone())?.to_device(self.device())
    }

    pub fn to_vec_f32(&self) -> Result<Vec<f32>> {
        Ok(self.to_cpu_storage()?.to_f32_vec())
    }

    pub fn to_vec_f64(&self) -> Result<Vec<f64>> {
        Ok(self.to_cpu_storage()?.to_f64_vec())
    }

    /// The one value of a one-element tensor, as f64.
    pub fn scalar(&self) -> Result<f64> {
        if self.numel() != 1 {
            return shape_err("scalar", format!("tensor of shape {} is not a scalar", self.shape));
        }
        Ok(self.to_vec_f64()?[0])
    }
}

impl CudaBuf {
    pub fn dtype(&self) -> DType {
        match self {
            CudaBuf::F32(_) => DType::F32,
            CudaBuf::BF16(_) => DType::BF16,
            CudaBuf::F16(_) => DType::F16,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            CudaBuf::F32(s) => s.len(),
            CudaBuf::BF16(s) => s.len(),
            CudaBuf::F16(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_checks_and_conversions() {
        assert!(Tensor::from_vec(vec![1.0f32; 5], [2, 3]).is_err());
        let t = Tensor::from_vec(vec![1.0f32, -2.5, 3.0, 0.1, 1e-3, 7.0], [2, 3]).unwrap();
        assert_eq!(t.dims(), &[2, 3]);
        assert_eq!(t.shape().rows(), 2);
        let b = t.to_dtype(DType::BF16).unwrap();
        assert_eq!(b.dtype(), DType::BF16);
        let back = b.to_vec_f32().unwrap();
        for (x, y) in t.to_vec_f32().unwrap().iter().zip(&back) {
            assert!((x - y).abs() <= x.abs() / 256.0, "{x} vs {y}");
        }
        assert!(t.reshape([3, 3]).is_err());
        assert_eq!(t.reshape([6]).unwrap().dims(), &[6]);
        assert!(t.scalar().is_err());
    }
}
