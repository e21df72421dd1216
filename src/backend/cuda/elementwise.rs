//! Launchers for `kernels/elementwise.cu`. Grid-stride loops: at most 1024 blocks of 256 threads.

use super::device::{cuda_err, CudaBuf, CudaStorage};
use crate::error::{shape_err, Error, Result};
use crate::tensor::{Storage, Tensor};
use cudarc::driver::{LaunchConfig, PushKernelArg};

/// a + b, same shape and dtype (f32 or bf16), on one GPU.
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    const OP: &str = "add (cuda)";
    if a.shape() != b.shape() || a.dtype() != b.dtype() {
        return shape_err(OP, format!("{} {} + {} {}", a.shape(), a.dtype(), b.shape(), b.dtype()));
    }
    let (Storage::Cuda(sa), Storage::Cuda(sb)) = (a.storage(), b.storage()) else {
        return Err(Error::Msg(format!("{OP}: both inputs must be on the GPU")));
    };
    let dev = sa.dev.clone();
    let n = a.numel();
    // SAFETY: the kernel writes all n elements.
    let mut out = unsafe { dev.alloc_buf(a.dtype(), n, OP)? };
    let cfg = LaunchConfig {
        grid_dim: ((n as u32).div_ceil(256).clamp(1, 1024), 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let n64 = n as i64;
    let s = dev.stream();
    // SAFETY: argument types match add_<dtype> in elementwise.cu.
    let r = unsafe {
        match (&sa.buf, &sb.buf, &mut out) {
            (CudaBuf::F32(x), CudaBuf::F32(y), CudaBuf::F32(o)) => {
                let f = dev.function("elementwise", "add_f32")?;
                s.launch_builder(&f).arg(x).arg(y).arg(o).arg(&n64).launch(cfg)
            }
            (CudaBuf::BF16(x), CudaBuf::BF16(y), CudaBuf::BF16(o)) => {
                let f = dev.function("elementwise", "add_bf16")?;
                s.launch_builder(&f).arg(x).arg(y).arg(o).arg(&n64).launch(cfg)
            }
            _ => {
                return Err(Error::DType {
                    op: OP,
                    dtype: a.dtype(),
                    device: a.device(),
                    supported: "f32, bf16",
                })
            }
        }
    };
    r.map_err(cuda_err(OP))?;
    Ok(Tensor::from_cuda(CudaStorage { dev: dev.clone(), buf: out }, a.shape().clone()))
}
