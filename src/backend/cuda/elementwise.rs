//! Launchers for `kernels/elementwise.cu`: add (out of place and in place), scale in place and
//! the bf16 ↔ f32 casts. Grid-stride loops: at most 1024 blocks of 256 threads.

use super::device::{cuda_err, CudaDevice};
use super::storage::kernel;
use super::storage::CudaElem;
use crate::error::{shape_err, Result};
use cudarc::driver::{
    CudaSlice, CudaView, CudaViewMut, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg,
};

const MODULE: &str = "elementwise";

fn cfg(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((n as u32).div_ceil(256).clamp(1, 1024), 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// a + b into a new buffer.
pub fn add<T: CudaElem>(dev: &CudaDevice, a: &CudaView<'_, T>, b: &CudaView<'_, T>) -> Result<CudaSlice<T>> {
    const OP: &str = "add (cuda)";
    if a.len() != b.len() {
        return shape_err(OP, format!("{} + {} elements", a.len(), b.len()));
    }
    let n = a.len();
    // SAFETY: the kernel writes all n elements.
    let mut out: CudaSlice<T> = unsafe { dev.alloc_of(n.max(1), OP)? };
    if n == 0 {
        return Ok(out);
    }
    let f = dev.function(MODULE, kernel::<T>("add_f32", "add_bf16")?)?;
    let n64 = n as i64;
    // SAFETY: argument types match add_<dtype>(a, b, out, n) in elementwise.cu.
    unsafe { dev.stream().launch_builder(&f).arg(a).arg(b).arg(&mut out).arg(&n64).launch(cfg(n)) }
        .map_err(cuda_err(OP))?;
    Ok(out)
}

/// acc += x, in place (the add kernel with out = a: each element reads and writes only itself).
pub fn add_in_place<T: CudaElem>(
    dev: &CudaDevice,
    acc: &mut CudaViewMut<'_, T>,
    x: &CudaView<'_, T>,
) -> Result<()> {
    const OP: &str = "add in place (cuda)";
    if acc.len() != x.len() {
        return shape_err(OP, format!("{} += {} elements", acc.len(), x.len()));
    }
    if acc.is_empty() {
        return Ok(());
    }
    let f = dev.function(MODULE, kernel::<T>("add_f32", "add_bf16")?)?;
    let stream = dev.stream();
    let n = acc.len();
    let n64 = n as i64;
    let (a, _ga) = acc.device_ptr_mut(stream);
    let (b, _gb) = x.device_ptr(stream);
    // SAFETY: add_<dtype>(a, b, out, n) with out = a, n elements of each; both views are alive
    // for the call and the stream orders later uses.
    unsafe { stream.launch_builder(&f).arg(&a).arg(&b).arg(&a).arg(&n64).launch(cfg(n)) }
        .map_err(cuda_err(OP))?;
    Ok(())
}

/// x *= c, in place.
pub fn scale_in_place<T: CudaElem>(dev: &CudaDevice, x: &mut CudaViewMut<'_, T>, c: f32) -> Result<()> {
    const OP: &str = "scale (cuda)";
    if x.is_empty() {
        return Ok(());
    }
    let f = dev.function(MODULE, kernel::<T>("scale_f32", "scale_bf16")?)?;
    let n = x.len();
    let n64 = n as i64;
    // SAFETY: argument types match scale_<dtype>(x, c, n), n elements of x.
    unsafe { dev.stream().launch_builder(&f).arg(x).arg(&c).arg(&n64).launch(cfg(n)) }
        .map_err(cuda_err(OP))?;
    Ok(())
}

/// x converted from S to D (f32 → bf16 rounds to nearest even).
pub fn cast<S: CudaElem, D: CudaElem>(dev: &CudaDevice, x: &CudaView<'_, S>) -> Result<CudaSlice<D>> {
    const OP: &str = "cast (cuda)";
    let kernel = match (S::DTYPE, D::DTYPE) {
        (crate::backend::DType::F32, crate::backend::DType::BF16) => "cast_f32_bf16",
        (crate::backend::DType::BF16, crate::backend::DType::F32) => "cast_bf16_f32",
        (a, b) => return shape_err(OP, format!("no kernel casts {a} to {b}")),
    };
    let n = x.len();
    // SAFETY: the kernel writes all n elements.
    let mut out: CudaSlice<D> = unsafe { dev.alloc_of(n.max(1), OP)? };
    if n == 0 {
        return Ok(out);
    }
    let f = dev.function(MODULE, kernel)?;
    let n64 = n as i64;
    // SAFETY: argument types match cast_<s>_<d>(x, y, n).
    unsafe { dev.stream().launch_builder(&f).arg(x).arg(&mut out).arg(&n64).launch(cfg(n)) }
        .map_err(cuda_err(OP))?;
    Ok(out)
}
