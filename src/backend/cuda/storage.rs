//! A tensor's storage on a GPU, and the backend contract on top of the launchers: every op of
//! the contract has CUDA kernels (f32 and bf16; the others, f16 and f64, are dtype errors).

use super::adamw::WeightsOut;
use super::cross_entropy::{cross_entropy_fwd_bwd, CePath, CrossEntropyLaunch};
use super::device::{cuda_err, CudaDevice};
use super::divergence::{divergence_fwd_bwd, DivElem, DivergenceLaunch, KernelPath, StudentGrad};
use super::linear_divergence::{
    LinearCrossEntropy, LinearCrossEntropyInputs, LinearDivergence, LinearDivergenceInputs,
};
use super::matmul::GemmElem;
use super::{
    activation, adamw, attention, copy, decode_attention, decode_state, elementwise, embedding, grad_norm,
    layer_norm, rms_norm, rope, sampling,
};
use crate::backend::check;
use crate::backend::contract::{BackendStorage, LinearLossOut, LossTarget, View};
use crate::backend::ops::{
    AdamWStep, AttnDims, CachedAttnDims, LinearDims, LinearLossSpec, LossKind, LossSpec, RopeSpec, SampleSpec,
};
use crate::backend::{CpuStorage, DType, Device, Layout};
use crate::error::{shape_err, Error, Result};
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, DeviceRepr, ValidAsZeroBits};
use half::{bf16, f16};
use std::sync::Arc;

/// A device buffer, one variant per dtype the GPU path uses.
#[derive(Debug)]
pub enum CudaBuf {
    F32(CudaSlice<f32>),
    BF16(CudaSlice<bf16>),
    F16(CudaSlice<f16>),
    U32(CudaSlice<u32>),
    U8(CudaSlice<u8>),
}

/// A tensor's storage on a GPU: the buffer and the device that owns it.
#[derive(Debug)]
pub struct CudaStorage {
    pub dev: Arc<CudaDevice>,
    pub buf: CudaBuf,
}

/// An element type of a device buffer.
pub trait CudaElem: DeviceRepr + ValidAsZeroBits + Copy + Default + Unpin + 'static {
    const DTYPE: DType;
    fn of(b: &CudaBuf) -> Option<&CudaSlice<Self>>;
    fn of_mut(b: &mut CudaBuf) -> Option<&mut CudaSlice<Self>>;
    fn wrap(s: CudaSlice<Self>) -> CudaBuf;
}

macro_rules! cuda_elem {
    ($t:ty, $v:ident) => {
        impl CudaElem for $t {
            const DTYPE: DType = DType::$v;
            fn of(b: &CudaBuf) -> Option<&CudaSlice<Self>> {
                match b {
                    CudaBuf::$v(s) => Some(s),
                    _ => None,
                }
            }
            fn of_mut(b: &mut CudaBuf) -> Option<&mut CudaSlice<Self>> {
                match b {
                    CudaBuf::$v(s) => Some(s),
                    _ => None,
                }
            }
            fn wrap(s: CudaSlice<Self>) -> CudaBuf {
                CudaBuf::$v(s)
            }
        }
    };
}
/// The f32 or bf16 entry point of a kernel for element type T (the kernels exist for these two):
/// any other type is an error, never a launch that would read it as another width.
pub(crate) fn kernel<T: CudaElem>(f32_name: &'static str, bf16_name: &'static str) -> Result<&'static str> {
    match T::DTYPE {
        DType::F32 => Ok(f32_name),
        DType::BF16 => Ok(bf16_name),
        d => Err(dtype_err("cuda kernel", d, "f32, bf16")),
    }
}

cuda_elem!(f32, F32);
cuda_elem!(bf16, BF16);
cuda_elem!(f16, F16);
cuda_elem!(u32, U32);
cuda_elem!(u8, U8);

/// Runs `$body` with `$T` bound to the element type of the buffer `$b` and `$s` its slice.
macro_rules! with_buf {
    ($b:expr, |$s:ident: $T:ident| $body:expr) => {
        match $b {
            CudaBuf::F32($s) => {
                #[allow(dead_code)]
                type $T = f32;
                $body
            }
            CudaBuf::BF16($s) => {
                #[allow(dead_code)]
                type $T = bf16;
                $body
            }
            CudaBuf::F16($s) => {
                #[allow(dead_code)]
                type $T = f16;
                $body
            }
            CudaBuf::U32($s) => {
                #[allow(dead_code)]
                type $T = u32;
                $body
            }
            CudaBuf::U8($s) => {
                #[allow(dead_code)]
                type $T = u8;
                $body
            }
        }
    };
}

/// Runs `$body` with `$T` bound to f32 or bf16 (the dtype `$dt`); other dtypes are an error.
macro_rules! float {
    ($op:expr, $dt:expr, |$T:ident| $body:expr) => {
        match $dt {
            DType::F32 => {
                #[allow(dead_code)]
                type $T = f32;
                $body
            }
            DType::BF16 => {
                #[allow(dead_code)]
                type $T = bf16;
                $body
            }
            d => {
                Err(Error::DType { op: $op, dtype: d.name(), device: "cuda".into(), supported: "f32, bf16" })
            }
        }
    };
}

impl CudaBuf {
    pub fn dtype(&self) -> DType {
        with_buf!(self, |_s: T| <T as CudaElem>::DTYPE)
    }

    pub fn len(&self) -> usize {
        with_buf!(self, |s: T| s.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl CudaStorage {
    pub fn new<T: CudaElem>(dev: &Arc<CudaDevice>, s: CudaSlice<T>) -> CudaStorage {
        CudaStorage { dev: dev.clone(), buf: T::wrap(s) }
    }

    pub fn zeros(dev: &Arc<CudaDevice>, dtype: DType, n: usize) -> Result<CudaStorage> {
        let buf = match dtype {
            DType::F32 => CudaBuf::F32(dev.zeros_of(n, "zeros")?),
            DType::BF16 => CudaBuf::BF16(dev.zeros_of(n, "zeros")?),
            DType::F16 => CudaBuf::F16(dev.zeros_of(n, "zeros")?),
            DType::U32 => CudaBuf::U32(dev.zeros_of(n, "zeros")?),
            DType::U8 => CudaBuf::U8(dev.zeros_of(n, "zeros")?),
            DType::F64 => return Err(f64_on_gpu("zeros")),
        };
        Ok(CudaStorage { dev: dev.clone(), buf })
    }

    pub fn upload(dev: &Arc<CudaDevice>, host: &CpuStorage) -> Result<CudaStorage> {
        let buf = match host {
            CpuStorage::F32(v) => CudaBuf::F32(dev.upload_of(v, "upload")?),
            CpuStorage::BF16(v) => CudaBuf::BF16(dev.upload_of(v, "upload")?),
            CpuStorage::F16(v) => CudaBuf::F16(dev.upload_of(v, "upload")?),
            CpuStorage::U32(v) => CudaBuf::U32(dev.upload_of(v, "upload")?),
            CpuStorage::U8(v) => CudaBuf::U8(dev.upload_of(v, "upload")?),
            CpuStorage::F64(_) => return Err(f64_on_gpu("upload")),
        };
        Ok(CudaStorage { dev: dev.clone(), buf })
    }

    pub fn dtype(&self) -> DType {
        self.buf.dtype()
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn device(&self) -> Device {
        self.dev.device()
    }

    /// Elements `start..start + len` as `T`, mutable.
    pub(crate) fn typed_mut<T: CudaElem>(
        &mut self,
        op: &'static str,
        start: usize,
        len: usize,
    ) -> Result<cudarc::driver::CudaViewMut<'_, T>> {
        let dtype = self.dtype();
        let s = T::of_mut(&mut self.buf).ok_or_else(|| dtype_err(op, dtype, T::DTYPE.name()))?;
        check_range(op, s.len(), start, len)?;
        Ok(s.slice_mut(start..start + len))
    }
}

fn f64_on_gpu(context: &str) -> Error {
    Error::Msg(format!("{context}: f64 tensors exist on the CPU only; convert to f32 or bf16 first"))
}

fn dtype_err(op: &'static str, dtype: DType, supported: &'static str) -> Error {
    Error::DType { op, dtype: dtype.name(), device: "cuda".into(), supported }
}

fn check_range(op: &'static str, total: usize, start: usize, len: usize) -> Result<()> {
    if start.checked_add(len).is_none_or(|end| end > total) {
        return shape_err(op, format!("elements {start}..{} of a buffer of {total}", start + len));
    }
    Ok(())
}

impl<'a> View<'a, CudaStorage> {
    /// The elements as a device view of `T`.
    pub fn typed<T: CudaElem>(&self, op: &'static str) -> Result<CudaView<'a, T>> {
        let s =
            T::of(&self.storage.buf).ok_or_else(|| dtype_err(op, self.storage.dtype(), T::DTYPE.name()))?;
        check_range(op, s.len(), self.start, self.len)?;
        Ok(s.slice(self.start..self.start + self.len))
    }

    pub fn dtype(&self) -> DType {
        self.storage.dtype()
    }

    pub fn dev(&self) -> &'a Arc<CudaDevice> {
        &self.storage.dev
    }
}

/// One dtype for all, f32 or bf16.
fn same_float(op: &'static str, views: &[View<'_, CudaStorage>]) -> Result<DType> {
    let d = views[0].dtype();
    if let Some(v) = views.iter().find(|v| v.dtype() != d) {
        return shape_err(op, format!("mixed dtypes {d} and {}", v.dtype()));
    }
    Ok(d)
}

impl BackendStorage for CudaStorage {
    fn dtype(&self) -> DType {
        self.buf.dtype()
    }

    fn len(&self) -> usize {
        self.buf.len()
    }

    fn device(&self) -> Device {
        self.dev.device()
    }

    fn to_host(x: View<'_, Self>) -> Result<CpuStorage> {
        const OP: &str = "copy to the host";
        let stream = x.dev().stream();
        with_buf!(&x.storage.buf, |_s: T| {
            let v = stream.clone_dtoh(&x.typed::<T>(OP)?).map_err(cuda_err(OP))?;
            Ok(<T as crate::backend::Element>::wrap(v))
        })
    }

    fn copy_strided(&self, layout: &Layout) -> Result<Self> {
        const OP: &str = "contiguous copy";
        match layout.contiguous_range() {
            Some(r) => {
                let v = View::new(self, r.start, r.len());
                with_buf!(&self.buf, |_s: T| {
                    let out = self.dev.stream().clone_dtod(&v.typed::<T>(OP)?).map_err(cuda_err(OP))?;
                    Ok(CudaStorage::new(&self.dev, out))
                })
            }
            None => {
                check::strided(OP, self.len(), layout)?;
                with_buf!(&self.buf, |_s: T| {
                    let all = View::new(self, 0, self.len()).typed::<T>(OP)?;
                    Ok(CudaStorage::new(&self.dev, copy::copy_strided::<T>(&self.dev, &all, layout)?))
                })
            }
        }
    }

    fn cast(x: View<'_, Self>, dtype: DType) -> Result<Self> {
        const OP: &str = "cast";
        let dev = x.dev();
        match (x.dtype(), dtype) {
            (a, b) if a == b => {
                with_buf!(&x.storage.buf, |_s: T| {
                    let out = dev.stream().clone_dtod(&x.typed::<T>(OP)?).map_err(cuda_err(OP))?;
                    Ok(CudaStorage::new(dev, out))
                })
            }
            (DType::F32, DType::BF16) => {
                Ok(CudaStorage::new(dev, elementwise::cast::<f32, bf16>(dev, &x.typed(OP)?)?))
            }
            (DType::BF16, DType::F32) => {
                Ok(CudaStorage::new(dev, elementwise::cast::<bf16, f32>(dev, &x.typed(OP)?)?))
            }
            (a, b) => Err(Error::Unsupported {
                op: if a == DType::F64 || b == DType::F64 { "cast to or from f64" } else { "this cast" },
                device: x.storage.device().to_string(),
            }),
        }
    }

    fn try_clone(&self) -> Result<Self> {
        const OP: &str = "copy";
        with_buf!(&self.buf, |s: T| {
            let out = self.dev.stream().clone_dtod(s).map_err(cuda_err(OP))?;
            Ok(CudaStorage::new(&self.dev, out))
        })
    }

    fn copy_in(&mut self, start: usize, src: View<'_, Self>) -> Result<()> {
        const OP: &str = "copy (in place)";
        let dev = self.dev.clone();
        with_buf!(&src.storage.buf, |_s: T| {
            let s = src.typed::<T>(OP)?;
            let mut d = self.typed_mut::<T>(OP, start, src.len)?;
            dev.stream().memcpy_dtod(&s, &mut d).map_err(cuda_err(OP))
        })
    }

    fn add_in(&mut self, start: usize, src: View<'_, Self>) -> Result<()> {
        const OP: &str = "add (in place)";
        let dev = self.dev.clone();
        float!(OP, src.dtype(), |T| {
            let s = src.typed::<T>(OP)?;
            let mut d = self.typed_mut::<T>(OP, start, src.len)?;
            elementwise::add_in_place::<T>(&dev, &mut d, &s)
        })
    }

    fn fill_in(&mut self, start: usize, len: usize, value: f64) -> Result<()> {
        const OP: &str = "fill";
        let dev = self.dev.clone();
        if value == 0.0 && value.is_sign_positive() {
            return with_buf!(&self.buf, |_s: T| {
                let mut d = self.typed_mut::<T>(OP, start, len)?;
                dev.stream().memset_zeros(&mut d).map_err(cuda_err(OP))
            });
        }
        // The value rounded into the element type as the CPU's `Element::from_f64` rounds it.
        with_buf!(&self.buf, |_s: T| {
            let v = <T as crate::backend::Element>::from_f64(value);
            copy::fill::<T>(&dev, &mut self.typed_mut::<T>(OP, start, len)?, v)
        })
    }

    fn scale_in(&mut self, start: usize, len: usize, c: f64) -> Result<()> {
        const OP: &str = "scale";
        let dev = self.dev.clone();
        float!(OP, self.dtype(), |T| elementwise::scale_in_place::<T>(
            &dev,
            &mut self.typed_mut::<T>(OP, start, len)?,
            c as f32
        ))
    }

    fn copy_rows_in(
        &mut self,
        width: usize,
        rows: View<'_, Self>,
        src: View<'_, Self>,
        vouched: bool,
    ) -> Result<()> {
        const OP: &str = "copy_rows";
        let total = check::copy_rows(self.len(), width, rows.len, src.len)?;
        let idx = rows.typed::<u32>(OP)?;
        // Unless vouched for, the indices are checked on the host (a few per step) so that a bad
        // one is an error, as on the CPU, rather than a row silently skipped by the kernel.
        if !vouched {
            let host = self.dev.stream().clone_dtoh(&idx).map_err(cuda_err(OP))?;
            check::rows_in_range(OP, &host, total)?;
        }
        let dev = self.dev.clone();
        if src.dtype() != self.dtype() {
            return shape_err(OP, format!("{} rows into a {} storage", src.dtype(), self.dtype()));
        }
        with_buf!(&src.storage.buf, |_s: T| {
            let s = src.typed::<T>(OP)?;
            let mut d = self.typed_mut::<T>(OP, 0, total * width)?;
            copy::copy_rows::<T>(&dev, &mut d, &idx, &s, width)
        })
    }

    fn rope_append(
        &mut self,
        v_cache: &mut Self,
        q: View<'_, Self>,
        k: View<'_, Self>,
        v: View<'_, Self>,
        positions: View<'_, Self>,
        rows: View<'_, Self>,
        spec: &RopeSpec,
        kv_heads: usize,
        vouched: bool,
    ) -> Result<Self> {
        const OP: &str = "rope_append";
        let (kc, vc) = (self.len(), v_cache.len());
        let (_, total) =
            check::rope_append(q.len, k.len, v.len, positions.len, rows.len, kc, vc, spec, kv_heads)?;
        let idx = rows.typed::<u32>(OP)?;
        // Unless vouched for (the decode loop's own, made on the device), the rows are checked on
        // the host, as on the CPU.
        if !vouched {
            let host = self.dev.stream().clone_dtoh(&idx).map_err(cuda_err(OP))?;
            check::rows_in_range(OP, &host, total)?;
        }
        let dev = self.dev.clone();
        let pos = positions.typed::<u32>(OP)?;
        float!(OP, same_float(OP, &[q, k, v])?, |T| {
            let mut kcv = self.typed_mut::<T>(OP, 0, kc)?;
            let mut vcv = v_cache.typed_mut::<T>(OP, 0, vc)?;
            let to = rope::Append { k_cache: &mut kcv, v_cache: &mut vcv, rows: &idx, kv_heads };
            let (qv, kv, vv) = (q.typed(OP)?, k.typed(OP)?, v.typed(OP)?);
            let qy = rope::append::<T>(&dev, &qv, &kv, &vv, &pos, spec.heads, spec.inv_freq, to)?;
            Ok(CudaStorage::new(&dev, qy))
        })
    }

    fn decode_advance(
        &mut self,
        slots: View<'_, Self>,
        tokens: View<'_, Self>,
        logprobs: View<'_, Self>,
        stops: View<'_, Self>,
        max_new: usize,
        out_tokens: &mut Self,
        out_logprobs: &mut Self,
    ) -> Result<()> {
        // The slots are not read back (the step may be inside a CUDA graph): the generation loop
        // checks them on the host before uploading them, and the kernel skips a slot ≥ B.
        const OP: &str = "decode_advance";
        let (ot, ol) = (out_tokens.len(), out_logprobs.len());
        check::decode_advance(self.len(), slots.len, tokens.len, logprobs.len, max_new, ot, ol)?;
        let dev = self.dev.clone();
        let mut ot = out_tokens.typed_mut::<u32>(OP, 0, ot)?;
        let mut ol = out_logprobs.typed_mut::<f32>(OP, 0, ol)?;
        let len = self.len();
        decode_state::advance(
            &dev,
            &mut self.typed_mut::<u32>(OP, 0, len)?,
            &slots.typed(OP)?,
            &tokens.typed(OP)?,
            &logprobs.typed(OP)?,
            &stops.typed(OP)?,
            max_new,
            decode_state::Outputs { tokens: &mut ot, logprobs: &mut ol },
        )
    }

    fn adamw_step(
        &mut self,
        start: usize,
        grad: View<'_, Self>,
        m: &mut Self,
        v: &mut Self,
        h: &AdamWStep,
        out: Option<&mut Self>,
    ) -> Result<()> {
        const OP: &str = "adamw";
        check::adamw(start, grad.len, self.len(), m.len(), v.len(), out.as_deref().map(CudaStorage::len))?;
        let dev = self.dev.clone();
        let n = grad.len;
        let g = grad.typed::<f32>(OP)?;
        let mut m = m.typed_mut::<f32>(OP, start, n)?;
        let mut v = v.typed_mut::<f32>(OP, start, n)?;
        let mut p = self.typed_mut::<f32>(OP, start, n)?;
        let Some(out) = out else {
            return adamw::step(&dev, &mut p, &g, &mut m, &mut v, h, None);
        };
        match out.dtype() {
            DType::F32 => {
                let mut w = out.typed_mut::<f32>(OP, start, n)?;
                adamw::step(&dev, &mut p, &g, &mut m, &mut v, h, Some(WeightsOut::F32(&mut w)))
            }
            DType::BF16 => {
                let mut w = out.typed_mut::<bf16>(OP, start, n)?;
                adamw::step(&dev, &mut p, &g, &mut m, &mut v, h, Some(WeightsOut::BF16(&mut w)))
            }
            d => Err(dtype_err("adamw (compute-weights copy)", d, "f32, bf16")),
        }
    }

    fn sum_squares(x: View<'_, Self>) -> Result<f64> {
        const OP: &str = "sum_squares";
        let dev = x.dev();
        float!(OP, x.dtype(), |T| grad_norm::sum_squares::<T>(dev, &x.typed(OP)?))
    }

    fn decode_rows(state: View<'_, Self>, slots: View<'_, Self>, capacity: usize) -> Result<Self> {
        const OP: &str = "decode_rows";
        check::decode_rows(state.len, capacity)?;
        let dev = state.dev();
        Ok(CudaStorage::new(dev, decode_state::rows(dev, &state.typed(OP)?, &slots.typed(OP)?, capacity)?))
    }

    fn add(a: View<'_, Self>, b: View<'_, Self>) -> Result<Self> {
        const OP: &str = "add";
        check::add(a.len, b.len)?;
        let dev = a.dev();
        float!(OP, same_float(OP, &[a, b])?, |T| {
            Ok(CudaStorage::new(dev, elementwise::add::<T>(dev, &a.typed(OP)?, &b.typed(OP)?)?))
        })
    }

    /// Ids are not checked against the vocabulary here (that would need their values on the
    /// host): the kernel writes a NaN row for an id ≥ V instead of reading outside the table.
    fn embedding_fwd(table: View<'_, Self>, ids: View<'_, Self>, dim: usize) -> Result<Self> {
        const OP: &str = "embedding";
        let vocab = check::embedding_fwd(table.len, dim)?;
        let dev = table.dev();
        let ids = ids.typed::<u32>(OP)?;
        float!(OP, table.dtype(), |T| {
            Ok(CudaStorage::new(dev, embedding::fwd::<T>(dev, &table.typed(OP)?, &ids, vocab, dim)?))
        })
    }

    /// dtable in f32 (a weight gradient); rows whose id is ≥ `vocab` add nothing (their forward
    /// rows were NaN).
    fn embedding_bwd(dout: View<'_, Self>, ids: View<'_, Self>, vocab: usize, dim: usize) -> Result<Self> {
        const OP: &str = "embedding backward";
        check::embedding_bwd(dout.len, ids.len, dim)?;
        let dev = dout.dev();
        let ids = ids.typed::<u32>(OP)?;
        float!(OP, dout.dtype(), |T| {
            Ok(CudaStorage::new(dev, embedding::bwd::<T>(dev, &dout.typed(OP)?, &ids, vocab, dim)?))
        })
    }

    fn linear_fwd(
        x: View<'_, Self>,
        w: View<'_, Self>,
        b: Option<View<'_, Self>>,
        d: LinearDims,
    ) -> Result<Self> {
        const OP: &str = "linear";
        check::linear_fwd(&d, x.len, w.len, b.map(|b| b.len))?;
        let mut all = vec![x, w];
        all.extend(b);
        let dev = x.dev();
        float!(OP, same_float(OP, &all)?, |T| {
            let bias = b.map(|b| b.typed::<T>(OP)).transpose()?;
            let y = super::linear::linear_fwd::<T>(dev, d, &x.typed(OP)?, &w.typed(OP)?, bias.as_ref())?;
            Ok(CudaStorage::new(dev, y))
        })
    }

    fn linear_bwd(
        x: View<'_, Self>,
        w: View<'_, Self>,
        dy: View<'_, Self>,
        d: LinearDims,
        has_bias: bool,
    ) -> Result<(Self, Self, Option<Self>)> {
        const OP: &str = "linear backward";
        check::linear_bwd(&d, x.len, w.len, dy.len)?;
        let dev = x.dev();
        float!(OP, same_float(OP, &[x, w, dy])?, |T| {
            let g = super::linear::linear_bwd::<T>(
                dev,
                d,
                &x.typed(OP)?,
                &w.typed(OP)?,
                &dy.typed(OP)?,
                has_bias,
            )?;
            Ok((
                CudaStorage::new(dev, g.dx),
                CudaStorage::new(dev, g.dw),
                g.db.map(|db| CudaStorage::new(dev, db)),
            ))
        })
    }

    fn rms_norm_fwd(x: View<'_, Self>, w: View<'_, Self>, cols: usize, eps: f64) -> Result<(Self, Self)> {
        const OP: &str = "rms_norm";
        let rows = indexable(OP, check::rms_norm_fwd(x.len, w.len, cols)?, cols)?;
        let dev = x.dev();
        float!(OP, same_float(OP, &[x, w])?, |T| {
            let (y, rstd) = rms_norm::fwd::<T>(dev, &x.typed(OP)?, &w.typed(OP)?, rows, cols, eps as f32)?;
            Ok((CudaStorage::new(dev, y), CudaStorage::new(dev, rstd)))
        })
    }

    fn rms_norm_bwd(
        x: View<'_, Self>,
        w: View<'_, Self>,
        rstd: View<'_, Self>,
        dy: View<'_, Self>,
        cols: usize,
    ) -> Result<(Self, Self)> {
        const OP: &str = "rms_norm backward";
        let rows = indexable(OP, check::rms_norm_bwd(x.len, w.len, rstd.len, dy.len, cols)?, cols)?;
        let dev = x.dev();
        float!(OP, same_float(OP, &[x, w, dy])?, |T| {
            let (dx, dw) = rms_norm::bwd::<T>(
                dev,
                &x.typed(OP)?,
                &w.typed(OP)?,
                &rstd.typed::<f32>(OP)?,
                &dy.typed(OP)?,
                None,
                rows,
                cols,
            )?;
            Ok((CudaStorage::new(dev, dx), CudaStorage::new(dev, dw)))
        })
    }

    fn add_rms_norm_fwd(
        x: View<'_, Self>,
        r: View<'_, Self>,
        w: View<'_, Self>,
        cols: usize,
        eps: f64,
    ) -> Result<(Self, Self, Self)> {
        const OP: &str = "add_rms_norm";
        check::need(OP, "residual", r.len, x.len)?;
        let rows = indexable(OP, check::rms_norm_fwd(x.len, w.len, cols)?, cols)?;
        let dev = x.dev();
        float!(OP, same_float(OP, &[x, r, w])?, |T| {
            let (sum, y, rstd) = rms_norm::add_fwd::<T>(
                dev,
                &x.typed(OP)?,
                &r.typed(OP)?,
                &w.typed(OP)?,
                rows,
                cols,
                eps as f32,
            )?;
            Ok((CudaStorage::new(dev, sum), CudaStorage::new(dev, y), CudaStorage::new(dev, rstd)))
        })
    }

    fn add_rms_norm_bwd(
        sum: View<'_, Self>,
        w: View<'_, Self>,
        rstd: View<'_, Self>,
        dy: View<'_, Self>,
        dsum: View<'_, Self>,
        cols: usize,
    ) -> Result<(Self, Self)> {
        const OP: &str = "add_rms_norm backward";
        let rows = indexable(OP, check::rms_norm_bwd(sum.len, w.len, rstd.len, dy.len, cols)?, cols)?;
        check::need(OP, "dsum", dsum.len, sum.len)?;
        let dev = sum.dev();
        float!(OP, same_float(OP, &[sum, w, dy, dsum])?, |T| {
            let (dx, dw) = rms_norm::bwd::<T>(
                dev,
                &sum.typed(OP)?,
                &w.typed(OP)?,
                &rstd.typed::<f32>(OP)?,
                &dy.typed(OP)?,
                Some(&dsum.typed(OP)?),
                rows,
                cols,
            )?;
            Ok((CudaStorage::new(dev, dx), CudaStorage::new(dev, dw)))
        })
    }

    fn layer_norm_fwd(
        x: View<'_, Self>,
        w: View<'_, Self>,
        b: View<'_, Self>,
        cols: usize,
        eps: f64,
    ) -> Result<(Self, Self, Self)> {
        const OP: &str = "layer_norm";
        let rows = indexable(OP, check::layer_norm_fwd(x.len, w.len, b.len, cols)?, cols)?;
        let dev = x.dev();
        float!(OP, same_float(OP, &[x, w, b])?, |T| {
            let (y, mean, rstd) = layer_norm::fwd::<T>(
                dev,
                &x.typed(OP)?,
                &w.typed(OP)?,
                &b.typed(OP)?,
                rows,
                cols,
                eps as f32,
            )?;
            Ok((CudaStorage::new(dev, y), CudaStorage::new(dev, mean), CudaStorage::new(dev, rstd)))
        })
    }

    fn layer_norm_bwd(
        x: View<'_, Self>,
        w: View<'_, Self>,
        mean: View<'_, Self>,
        rstd: View<'_, Self>,
        dy: View<'_, Self>,
        cols: usize,
    ) -> Result<(Self, Self, Self)> {
        const OP: &str = "layer_norm backward";
        let rows =
            indexable(OP, check::layer_norm_bwd(x.len, w.len, mean.len, rstd.len, dy.len, cols)?, cols)?;
        let dev = x.dev();
        float!(OP, same_float(OP, &[x, w, dy])?, |T| {
            let (dx, dw, db) = layer_norm::bwd::<T>(
                dev,
                &x.typed(OP)?,
                &w.typed(OP)?,
                &mean.typed::<f32>(OP)?,
                &rstd.typed::<f32>(OP)?,
                &dy.typed(OP)?,
                None,
                rows,
                cols,
            )?;
            Ok((CudaStorage::new(dev, dx), CudaStorage::new(dev, dw), CudaStorage::new(dev, db)))
        })
    }

    fn add_layer_norm_fwd(
        x: View<'_, Self>,
        r: View<'_, Self>,
        w: View<'_, Self>,
        b: View<'_, Self>,
        cols: usize,
        eps: f64,
    ) -> Result<(Self, Self, Self, Self)> {
        const OP: &str = "add_layer_norm";
        check::need(OP, "residual", r.len, x.len)?;
        let rows = indexable(OP, check::layer_norm_fwd(x.len, w.len, b.len, cols)?, cols)?;
        let dev = x.dev();
        float!(OP, same_float(OP, &[x, r, w, b])?, |T| {
            let (sum, y, mean, rstd) = layer_norm::add_fwd::<T>(
                dev,
                &x.typed(OP)?,
                &r.typed(OP)?,
                &w.typed(OP)?,
                &b.typed(OP)?,
                rows,
                cols,
                eps as f32,
            )?;
            let s = |x| CudaStorage::new(dev, x);
            Ok((s(sum), s(y), CudaStorage::new(dev, mean), CudaStorage::new(dev, rstd)))
        })
    }

    fn add_layer_norm_bwd(
        sum: View<'_, Self>,
        w: View<'_, Self>,
        mean: View<'_, Self>,
        rstd: View<'_, Self>,
        dy: View<'_, Self>,
        dsum: View<'_, Self>,
        cols: usize,
    ) -> Result<(Self, Self, Self)> {
        const OP: &str = "add_layer_norm backward";
        let rows =
            indexable(OP, check::layer_norm_bwd(sum.len, w.len, mean.len, rstd.len, dy.len, cols)?, cols)?;
        check::need(OP, "dsum", dsum.len, sum.len)?;
        let dev = sum.dev();
        float!(OP, same_float(OP, &[sum, w, dy, dsum])?, |T| {
            let (dx, dw, db) = layer_norm::bwd::<T>(
                dev,
                &sum.typed(OP)?,
                &w.typed(OP)?,
                &mean.typed::<f32>(OP)?,
                &rstd.typed::<f32>(OP)?,
                &dy.typed(OP)?,
                Some(&dsum.typed(OP)?),
                rows,
                cols,
            )?;
            Ok((CudaStorage::new(dev, dx), CudaStorage::new(dev, dw), CudaStorage::new(dev, db)))
        })
    }

    fn rope_fwd(x: View<'_, Self>, positions: View<'_, Self>, spec: &RopeSpec) -> Result<Self> {
        rope_into(x, positions, spec, false)
    }

    fn rope_bwd(dy: View<'_, Self>, positions: View<'_, Self>, spec: &RopeSpec) -> Result<Self> {
        rope_into(dy, positions, spec, true)
    }

    fn attention_fwd(
        q: View<'_, Self>,
        k: View<'_, Self>,
        v: View<'_, Self>,
        starts: View<'_, Self>,
        lengths: View<'_, Self>,
        d: &AttnDims,
    ) -> Result<(Self, Self)> {
        const OP: &str = "attention";
        let dev = q.dev();
        let seqs =
            attention::Sequences::new(dev, d, starts.typed(OP)?, lengths.typed(OP)?, (q.len, k.len, v.len))?;
        float!(OP, same_float(OP, &[q, k, v])?, |T| {
            let (out, lse) = attention::fwd::<T>(dev, d, &q.typed(OP)?, &k.typed(OP)?, &v.typed(OP)?, &seqs)?;
            Ok((CudaStorage::new(dev, out), CudaStorage::new(dev, lse)))
        })
    }

    fn attention_bwd(
        q: View<'_, Self>,
        k: View<'_, Self>,
        v: View<'_, Self>,
        starts: View<'_, Self>,
        lengths: View<'_, Self>,
        out: View<'_, Self>,
        lse: View<'_, Self>,
        dout: View<'_, Self>,
        d: &AttnDims,
    ) -> Result<(Self, Self, Self)> {
        const OP: &str = "attention backward";
        let dev = q.dev();
        let seqs =
            attention::Sequences::new(dev, d, starts.typed(OP)?, lengths.typed(OP)?, (q.len, k.len, v.len))?;
        check::need(OP, "out", out.len, q.len)?;
        check::need(OP, "dout", dout.len, q.len)?;
        check::need(OP, "lse", lse.len, d.rows * d.q_heads)?;
        let lse = lse.typed::<f32>(OP)?;
        float!(OP, same_float(OP, &[q, k, v, out, dout])?, |T| {
            let (o, g) = (out.typed::<T>(OP)?, dout.typed::<T>(OP)?);
            let saved = attention::Saved { out: &o, lse: &lse, dout: &g };
            let (dq, dk, dv) =
                attention::bwd::<T>(dev, d, &q.typed(OP)?, &k.typed(OP)?, &v.typed(OP)?, &seqs, saved)?;
            Ok((CudaStorage::new(dev, dq), CudaStorage::new(dev, dk), CudaStorage::new(dev, dv)))
        })
    }

    fn attention_cached_fwd(
        q: View<'_, Self>,
        k_cache: View<'_, Self>,
        v_cache: View<'_, Self>,
        seq: View<'_, Self>,
        pos: View<'_, Self>,
        d: &CachedAttnDims,
    ) -> Result<Self> {
        const OP: &str = "cached attention";
        let dev = q.dev();
        let (seq, pos) = (seq.typed::<u32>(OP)?, pos.typed::<u32>(OP)?);
        if d.vouched {
            // Left on the device (no synchronization; capturable in a CUDA graph): the kernel
            // clamps them, a row out of range comes out 0.
            check::cached_attention_shapes(OP, d, q.len, k_cache.len, v_cache.len, seq.len(), pos.len())?;
        } else {
            // Read back and checked, so that a bad index is an error rather than a zero row.
            let host = |x: &CudaView<'_, u32>| dev.stream().clone_dtoh(x).map_err(cuda_err(OP));
            check::cached_attention(OP, d, q.len, k_cache.len, v_cache.len, &host(&seq)?, &host(&pos)?)?;
        }
        float!(OP, same_float(OP, &[q, k_cache, v_cache])?, |T| {
            let out = decode_attention::fwd::<T>(
                dev,
                d,
                &q.typed(OP)?,
                &k_cache.typed(OP)?,
                &v_cache.typed(OP)?,
                &seq,
                &pos,
            )?;
            Ok(CudaStorage::new(dev, out))
        })
    }

    fn gelu_fwd(x: View<'_, Self>) -> Result<Self> {
        const OP: &str = "gelu";
        let dev = x.dev();
        float!(OP, x.dtype(), |T| Ok(CudaStorage::new(dev, activation::gelu_fwd::<T>(dev, &x.typed(OP)?)?)))
    }

    fn gelu_bwd(x: View<'_, Self>, dy: View<'_, Self>) -> Result<Self> {
        const OP: &str = "gelu backward";
        check::elementwise(OP, x.len, &[("dy", dy.len)])?;
        let dev = x.dev();
        float!(OP, same_float(OP, &[x, dy])?, |T| {
            Ok(CudaStorage::new(dev, activation::gelu_bwd::<T>(dev, &x.typed(OP)?, &dy.typed(OP)?)?))
        })
    }

    fn swiglu_fwd(gate: View<'_, Self>, up: View<'_, Self>) -> Result<Self> {
        const OP: &str = "swiglu";
        check::elementwise(OP, gate.len, &[("up", up.len)])?;
        let dev = gate.dev();
        float!(OP, same_float(OP, &[gate, up])?, |T| {
            Ok(CudaStorage::new(dev, activation::swiglu_fwd::<T>(dev, &gate.typed(OP)?, &up.typed(OP)?)?))
        })
    }

    fn swiglu_packed_fwd(x: View<'_, Self>, width: usize) -> Result<Self> {
        const OP: &str = "swiglu_packed";
        check::swiglu_packed(x.len, width)?;
        let dev = x.dev();
        float!(OP, x.dtype(), |T| {
            Ok(CudaStorage::new(dev, activation::swiglu_packed_fwd::<T>(dev, &x.typed(OP)?, width)?))
        })
    }

    fn swiglu_bwd(gate: View<'_, Self>, up: View<'_, Self>, dy: View<'_, Self>) -> Result<(Self, Self)> {
        const OP: &str = "swiglu backward";
        check::elementwise(OP, gate.len, &[("up", up.len), ("dy", dy.len)])?;
        let dev = gate.dev();
        float!(OP, same_float(OP, &[gate, up, dy])?, |T| {
            let (dg, du) =
                activation::swiglu_bwd::<T>(dev, &gate.typed(OP)?, &up.typed(OP)?, &dy.typed(OP)?)?;
            Ok((CudaStorage::new(dev, dg), CudaStorage::new(dev, du)))
        })
    }

    fn narrow_cols_fwd(x: View<'_, Self>, width: usize, start: usize, len: usize) -> Result<Self> {
        const OP: &str = "narrow_cols";
        let rows = check::narrow_cols(OP, x.len, width, start, len, false)?;
        let dev = x.dev();
        float!(OP, x.dtype(), |T| {
            Ok(CudaStorage::new(
                dev,
                copy::narrow_cols_fwd::<T>(dev, &x.typed(OP)?, rows, width, start, len)?,
            ))
        })
    }

    fn narrow_cols_bwd(dy: View<'_, Self>, width: usize, start: usize, len: usize) -> Result<Self> {
        const OP: &str = "narrow_cols backward";
        let rows = check::narrow_cols(OP, dy.len, width, start, len, true)?;
        let dev = dy.dev();
        float!(OP, dy.dtype(), |T| {
            Ok(CudaStorage::new(
                dev,
                copy::narrow_cols_bwd::<T>(dev, &dy.typed(OP)?, rows, width, start, len)?,
            ))
        })
    }

    /// A target outside the vocabulary cannot be seen here without reading the targets back (a
    /// synchronization): that row's loss and gradient come out NaN (the CPU backend refuses it).
    fn cross_entropy(
        logits: View<'_, Self>,
        targets: View<'_, Self>,
        spec: &LossSpec,
    ) -> Result<(Self, Option<Self>)> {
        const OP: &str = "cross_entropy";
        check::loss(OP, spec, logits.len, targets.len)?;
        if spec.kind != LossKind::CrossEntropy {
            return Err(Error::Msg(format!("{OP}: the loss must be cross-entropy, got {:?}", spec.kind)));
        }
        let dev = logits.dev();
        let launch = CrossEntropyLaunch {
            rows: spec.rows,
            vocab: spec.vocab,
            scale: spec.scale as f32,
            path: CePath::Auto,
            scalar: false,
        };
        let targets = targets.typed::<u32>(OP)?;
        float!(OP, logits.dtype(), |T| {
            let z = logits.typed::<T>(OP)?;
            // SAFETY: the kernel writes every row's loss (ignored rows too).
            let mut row_loss: CudaSlice<f32> = unsafe { dev.alloc_of(spec.rows, OP)? };
            let rl = &mut row_loss.slice_mut(..spec.rows);
            let grad = if spec.want_grad {
                // SAFETY: the kernel writes every gradient element (ignored rows too).
                let mut g: CudaSlice<T> = unsafe { dev.alloc_of(z.len(), OP)? };
                let into = StudentGrad::Into { student: z.slice(..), grad: g.slice_mut(..z.len()) };
                cross_entropy_fwd_bwd(dev, &launch, into, &targets, rl)?;
                Some(CudaStorage::new(dev, g))
            } else {
                cross_entropy_fwd_bwd(dev, &launch, StudentGrad::LossOnly(z.slice(..)), &targets, rl)?;
                None
            };
            Ok((CudaStorage::new(dev, row_loss), grad))
        })
    }

    fn divergence(
        student: View<'_, Self>,
        teacher: View<'_, Self>,
        mask: Option<View<'_, Self>>,
        spec: &LossSpec,
    ) -> Result<(Self, Option<Self>)> {
        const OP: &str = "divergence";
        let (divergence, temperature) = check::divergence(spec, student.len, teacher.len)?;
        let dev = student.dev();
        let launch = DivergenceLaunch {
            rows: spec.rows,
            vocab: spec.vocab,
            ld: spec.vocab,
            divergence,
            temperature: temperature as f32,
            scale: spec.scale as f32,
            path: KernelPath::Auto,
        };
        let mask = mask.map(|m| m.typed::<u8>(OP)).transpose()?;
        float!(OP, same_float(OP, &[student, teacher])?, |T| {
            divergence_into::<T>(
                dev,
                &launch,
                &student.typed(OP)?,
                &teacher.typed(OP)?,
                mask.as_ref(),
                spec.want_grad,
            )
        })
    }

    /// With cross-entropy, a target outside the vocabulary makes its row's loss and gradient NaN
    /// (see `cross_entropy`).
    fn linear_loss(
        hidden: View<'_, Self>,
        head: View<'_, Self>,
        target: LossTarget<'_, Self>,
        spec: &LinearLossSpec,
    ) -> Result<LinearLossOut<Self>> {
        const OP: &str = "linear_loss";
        let (n, h, v) = (spec.loss.rows, spec.hidden, spec.loss.vocab);
        check::linear_loss(spec, hidden.len, head.len)?;
        let dev = hidden.dev();
        match (spec.loss.kind, target) {
            (
                LossKind::Divergence { divergence, temperature },
                LossTarget::Teacher { hidden: th, head: tw },
            ) => {
                check::linear_loss_teacher(spec, th.len, tw.len)?;
                let p = LinearDivergence {
                    rows: n,
                    student_dim: h,
                    teacher_dim: spec.teacher_hidden,
                    vocab: v,
                    divergence,
                    temperature: temperature as f32,
                    scale: spec.loss.scale as f32,
                    chunk_rows: spec.chunk_rows,
                    path: KernelPath::Auto,
                };
                float!(OP, same_float(OP, &[hidden, head, th, tw])?, |T| {
                    let (hs, ws, hts, wts) = (
                        hidden.typed::<T>(OP)?,
                        head.typed::<T>(OP)?,
                        th.typed::<T>(OP)?,
                        tw.typed::<T>(OP)?,
                    );
                    let x = LinearDivergenceInputs {
                        student_hidden: &hs,
                        student_head: &ws,
                        teacher_hidden: &hts,
                        teacher_head: &wts,
                        row_mask: None,
                    };
                    fused_head_into::<T>(dev, spec, |grads| p.run_rows(dev, &x, grads))
                })
            }
            (LossKind::CrossEntropy, LossTarget::Tokens(t)) => {
                linear_cross_entropy_into(hidden, head, t, None, spec)
            }
            (LossKind::CrossEntropy, LossTarget::WeightedTokens { targets, weights }) => {
                linear_cross_entropy_into(hidden, head, targets, Some(weights), spec)
            }
            _ => Err(Error::Msg(format!(
                "{OP}: cross-entropy takes token targets, a divergence the teacher's hidden states"
            ))),
        }
    }

    fn sample(
        logits: View<'_, Self>,
        seq: View<'_, Self>,
        pos: View<'_, Self>,
        spec: &SampleSpec,
    ) -> Result<(Self, Self)> {
        const OP: &str = "sample";
        let rows = check::sample(spec, logits.len, seq.len, pos.len)?;
        let dev = logits.dev();
        let (seq, pos) = (seq.typed::<u32>(OP)?, pos.typed::<u32>(OP)?);
        float!(OP, logits.dtype(), |T| {
            let (tokens, logprobs) = sampling::sample::<T>(dev, &logits.typed(OP)?, &seq, &pos, rows, spec)?;
            Ok((CudaStorage::new(dev, tokens), CudaStorage::new(dev, logprobs)))
        })
    }
}

/// The fused head with cross-entropy against `targets` (N) u32, each row's loss and gradient
/// times `weights` (N) f32 when given.
fn linear_cross_entropy_into(
    hidden: View<'_, CudaStorage>,
    head: View<'_, CudaStorage>,
    targets: View<'_, CudaStorage>,
    weights: Option<View<'_, CudaStorage>>,
    spec: &LinearLossSpec,
) -> Result<LinearLossOut<CudaStorage>> {
    const OP: &str = "linear_loss";
    let n = spec.loss.rows;
    check::need(OP, "targets", targets.len, n)?;
    if let Some(w) = weights {
        check::row_weights(OP, w.len, n)?;
    }
    let dev = hidden.dev();
    let weights = weights.map(|w| w.typed::<f32>(OP)).transpose()?;
    let targets = targets.typed::<u32>(OP)?;
    let p = LinearCrossEntropy {
        rows: n,
        dim: spec.hidden,
        vocab: spec.loss.vocab,
        scale: spec.loss.scale as f32,
        chunk_rows: spec.chunk_rows,
        path: CePath::Auto,
    };
    float!(OP, same_float(OP, &[hidden, head])?, |T| {
        let (hs, ws) = (hidden.typed::<T>(OP)?, head.typed::<T>(OP)?);
        let x = LinearCrossEntropyInputs { hidden: &hs, head: &ws, targets: &targets };
        fused_head_into::<T>(dev, spec, |grads| p.run_rows_weighted(dev, &x, weights.as_ref(), grads))
    })
}

/// The rotary embedding (`inverse`: its backward) into a fresh buffer.
fn rope_into(
    x: View<'_, CudaStorage>,
    positions: View<'_, CudaStorage>,
    spec: &RopeSpec,
    inverse: bool,
) -> Result<CudaStorage> {
    const OP: &str = "rope";
    check::rope(x.len, positions.len, spec)?;
    let dev = x.dev();
    let pos = positions.typed::<u32>(OP)?;
    float!(OP, x.dtype(), |T| {
        let y = rope::rotate::<T>(dev, &x.typed(OP)?, &pos, spec.heads, spec.inv_freq, inverse)?;
        Ok(CudaStorage::new(dev, y))
    })
}

/// The fused head's outputs in fresh buffers: `run` computes the row losses, and gets the
/// gradient buffers when they are asked for: d(hidden) (N, H), written whole, and d(head)
/// (Vh, H) f32, accumulated into from zero (its rows past the vocabulary stay 0).
fn fused_head_into<T: CudaElem>(
    dev: &Arc<CudaDevice>,
    spec: &LinearLossSpec,
    run: impl FnOnce(Option<(&mut CudaViewMut<'_, T>, &mut CudaViewMut<'_, f32>)>) -> Result<CudaSlice<f32>>,
) -> Result<LinearLossOut<CudaStorage>> {
    const OP: &str = "linear_loss";
    if !spec.loss.want_grad {
        let row_loss = run(None)?;
        return Ok(LinearLossOut { row_loss: CudaStorage::new(dev, row_loss), d_hidden: None, d_head: None });
    }
    // SAFETY: the backward products write every element of d_hidden (beta = 0).
    let mut d_hidden: CudaSlice<T> = unsafe { dev.alloc_of(spec.loss.rows * spec.hidden, OP)? };
    let mut d_head: CudaSlice<f32> = dev.zeros_of(spec.head_rows * spec.hidden, OP)?;
    let row_loss = run(Some((&mut d_hidden.slice_mut(..), &mut d_head.slice_mut(..))))?;
    Ok(LinearLossOut {
        row_loss: CudaStorage::new(dev, row_loss),
        d_hidden: Some(CudaStorage::new(dev, d_hidden)),
        d_head: Some(CudaStorage::new(dev, d_head)),
    })
}

/// `rows` of `cols` within the norm kernels' 32-bit indexing.
fn indexable(op: &'static str, rows: usize, cols: usize) -> Result<usize> {
    if rows > i32::MAX as usize || cols > i32::MAX as usize {
        return shape_err(op, format!("{rows} rows of {cols} exceed the kernels' 32-bit indexing"));
    }
    Ok(rows)
}

/// The fused divergence into fresh buffers: (row losses f32, the gradient when asked for).
fn divergence_into<T: DivElem + CudaElem + GemmElem>(
    dev: &Arc<CudaDevice>,
    launch: &DivergenceLaunch,
    student: &CudaView<'_, T>,
    teacher: &CudaView<'_, T>,
    mask: Option<&CudaView<'_, u8>>,
    want_grad: bool,
) -> Result<(CudaStorage, Option<CudaStorage>)> {
    const OP: &str = "divergence";
    let mut row_loss: CudaSlice<f32> = dev.zeros_of(launch.rows.max(1), OP)?;
    let grad = if want_grad {
        // SAFETY: the kernel writes every gradient element (masked rows too).
        let mut g: CudaSlice<T> = unsafe { dev.alloc_of(student.len().max(1), OP)? };
        divergence_fwd_bwd(
            dev,
            launch,
            StudentGrad::Into { student: student.slice(..), grad: g.slice_mut(..student.len()) },
            teacher,
            mask,
            &mut row_loss.slice_mut(..launch.rows),
        )?;
        Some(g)
    } else {
        divergence_fwd_bwd(
            dev,
            launch,
            StudentGrad::LossOnly(student.slice(..)),
            teacher,
            mask,
            &mut row_loss.slice_mut(..launch.rows),
        )?;
        None
    };
    Ok((CudaStorage::new(dev, row_loss), grad.map(|g| CudaStorage::new(dev, g))))
}
