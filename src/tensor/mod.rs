//! Tensors: a layout over a shared storage on one device.
//!
//! Cloning a tensor shares its storage (an `Arc`), so the autograd tape can keep inputs for the
//! backward pass at no cost, and narrowing, reshaping and transposing are views. Ops run on dense
//! (contiguous) inputs: `contiguous()` copies a strided view once. In-place updates (`*_at`,
//! optimizer steps, the key/value cache) write through the storage when this tensor is its only
//! holder, and copy it first otherwise (copy-on-write), so a tensor is always a value.

mod storage;

pub use crate::backend::{CpuStorage, DType, Device, DeviceRequest, Element, Layout, Shape};
pub use storage::Storage;

pub use crate::backend::ops::SampleSpec;

use crate::backend::ops::AdamWStep;
use crate::backend::View;
use crate::error::{shape_err, Error, Result};
use std::sync::Arc;

#[derive(Clone)]
pub struct Tensor {
    storage: Arc<Storage>,
    layout: Layout,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({} {} on {})", self.shape(), self.dtype(), self.device())
    }
}

impl Tensor {
    /// A dense tensor over the first elements of a new storage (a device storage of an empty
    /// tensor holds one element: drivers refuse empty allocations).
    pub(crate) fn from_storage(storage: Storage, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if storage.len() < shape.numel() || (storage.len() != shape.numel() && shape.numel() != 0) {
            return shape_err("tensor", format!("{} values for shape {shape}", storage.len()));
        }
        Ok(Tensor { storage: Arc::new(storage), layout: Layout::contiguous(shape, 0) })
    }

    /// A CPU tensor from host data; the data length must match the shape.
    pub fn from_vec<T: Element>(data: Vec<T>, shape: impl Into<Shape>) -> Result<Tensor> {
        Tensor::from_storage(Storage::Cpu(T::wrap(data)), shape)
    }

    /// A tensor on `device` from host data.
    pub fn from_host(host: CpuStorage, shape: impl Into<Shape>, device: Device) -> Result<Tensor> {
        let shape = shape.into();
        if host.len() != shape.numel() {
            return shape_err("tensor", format!("{} values for shape {shape}", host.len()));
        }
        Tensor::from_storage(Storage::from_host(device, host)?, shape)
    }

    /// A 1-D u32 tensor on `device` (token ids, positions, lengths).
    pub fn from_u32(values: &[u32], device: Device) -> Result<Tensor> {
        Tensor::from_host(CpuStorage::U32(values.to_vec()), [values.len()], device)
    }

    pub fn zeros(shape: impl Into<Shape>, dtype: DType, device: Device) -> Result<Tensor> {
        let shape = shape.into();
        Tensor::from_storage(Storage::zeros(device, dtype, shape.numel())?, shape)
    }

    /// Every element `value`.
    pub fn full(shape: impl Into<Shape>, value: f64, dtype: DType, device: Device) -> Result<Tensor> {
        let shape = shape.into();
        let host = CpuStorage::F64(vec![value; shape.numel()]).convert(dtype);
        Tensor::from_host(host, shape, device)
    }

    pub fn shape(&self) -> &Shape {
        self.layout.shape()
    }

    pub fn dims(&self) -> &[usize] {
        self.shape().dims()
    }

    pub fn numel(&self) -> usize {
        self.shape().numel()
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn dtype(&self) -> DType {
        self.storage.dtype()
    }

    pub fn device(&self) -> Device {
        self.storage.device()
    }

    pub fn is_contiguous(&self) -> bool {
        self.layout.is_contiguous()
    }

    /// Whether two tensors share one storage.
    /// Where this tensor's storage lives (an identity, not a device address): a CUDA graph that
    /// writes a tensor needs it to stay in place, which a copy-on-write would break.
    pub fn storage_id(&self) -> usize {
        Arc::as_ptr(&self.storage) as usize
    }

    pub fn shares_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.storage, &other.storage)
    }

    // ---- views ------------------------------------------------------------------------------

    /// The same elements under another shape (a view when contiguous, else a dense copy).
    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if shape.numel() != self.numel() {
            return shape_err("reshape", format!("cannot view {} as {shape}", self.shape()));
        }
        match self.layout.reshape(shape.clone()) {
            Some(layout) => Ok(Tensor { storage: self.storage.clone(), layout }),
            None => self.contiguous()?.reshape(shape),
        }
    }

    /// Elements `start..start + len` along `dim`, without a copy.
    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Tensor> {
        Ok(Tensor { storage: self.storage.clone(), layout: self.layout.narrow(dim, start, len)? })
    }

    /// Dimensions `a` and `b` swapped, without a copy.
    pub fn transpose(&self, a: usize, b: usize) -> Result<Tensor> {
        Ok(Tensor { storage: self.storage.clone(), layout: self.layout.transpose(a, b)? })
    }

    /// A dense tensor with these values: itself when already dense, else a copy.
    pub fn contiguous(&self) -> Result<Tensor> {
        if self.is_contiguous() {
            return Ok(self.clone());
        }
        Tensor::from_storage(self.storage.copy_strided(&self.layout)?, self.shape().clone())
    }

    /// The backend view of a dense tensor (what the contract's ops take).
    pub(crate) fn view(&self) -> Result<View<'_, Storage>> {
        let range = self.layout.contiguous_range().ok_or_else(|| {
            Error::Msg(format!(
                "internal: an op received a strided view of shape {}; make it contiguous",
                self.shape()
            ))
        })?;
        Ok(View::new(&self.storage, range.start, range.len()))
    }

    // ---- devices, dtypes, the host ------------------------------------------------------------

    /// Copy to another device (shares the storage when already there).
    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        if device == self.device() {
            return Ok(self.clone());
        }
        Tensor::from_host(self.to_cpu_storage()?, self.shape().clone(), device)
    }

    /// The element type converted on the tensor's device (bf16 ↔ f32 on the GPU).
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        let x = self.contiguous()?;
        Tensor::from_storage(Storage::cast(x.view()?, dtype)?, self.shape().clone())
    }

    /// A dense copy of the data on the host, in its own dtype.
    pub fn to_cpu_storage(&self) -> Result<CpuStorage> {
        let x = self.contiguous()?;
        Storage::to_host(x.view()?)
    }

    pub fn to_vec_f32(&self) -> Result<Vec<f32>> {
        Ok(self.to_cpu_storage()?.to_f32_vec())
    }

    pub fn to_vec_f64(&self) -> Result<Vec<f64>> {
        Ok(self.to_cpu_storage()?.to_f64_vec())
    }

    /// The values of a u32 tensor.
    pub fn to_vec_u32(&self) -> Result<Vec<u32>> {
        match self.to_cpu_storage()? {
            CpuStorage::U32(v) => Ok(v),
            s => Err(Error::Msg(format!("expected a u32 tensor, found {}", s.dtype()))),
        }
    }

    /// The one value of a one-element tensor, as f64.
    pub fn scalar(&self) -> Result<f64> {
        if self.numel() != 1 {
            return shape_err("scalar", format!("tensor of shape {} is not a scalar", self.shape()));
        }
        Ok(self.to_vec_f64()?[0])
    }

    /// Σ x² over the elements, accumulated in f64 (on the GPU: f32 per thread over a fixed split,
    /// then f64; deterministic).
    pub fn sum_squares(&self) -> Result<f64> {
        let x = self.contiguous()?;
        Storage::sum_squares(x.view()?)
    }

    // ---- in place -----------------------------------------------------------------------------

    /// The storage to write and where this tensor starts in it; copies the storage first when
    /// another tensor shares it. Only a dense tensor can be written.
    fn write_access(&mut self, op: &'static str) -> Result<(&mut Storage, usize)> {
        let Some(range) = self.layout.contiguous_range() else {
            return shape_err(op, format!("cannot write through a strided view of shape {}", self.shape()));
        };
        if Arc::get_mut(&mut self.storage).is_none() {
            self.storage = Arc::new(self.storage.try_clone()?);
        }
        let s = Arc::get_mut(&mut self.storage)
            .ok_or_else(|| Error::Msg(format!("internal: {op}: storage still shared")))?;
        Ok((s, range.start))
    }

    fn check_span(op: &'static str, total: usize, start: usize, len: usize) -> Result<()> {
        if start + len > total {
            return shape_err(op, format!("elements {start}..{} of a tensor of {total}", start + len));
        }
        Ok(())
    }

    /// self[start..start + src.numel()] (flat, row-major) += src.
    pub fn add_at(&mut self, start: usize, src: &Tensor) -> Result<()> {
        const OP: &str = "add (in place)";
        Tensor::check_span(OP, self.numel(), start, src.numel())?;
        let src = src.contiguous()?;
        let (s, base) = self.write_access(OP)?;
        s.add_in(base + start, src.view()?)
    }

    /// self[start..start + src.numel()] (flat, row-major) = src.
    pub fn copy_at(&mut self, start: usize, src: &Tensor) -> Result<()> {
        const OP: &str = "copy (in place)";
        Tensor::check_span(OP, self.numel(), start, src.numel())?;
        let src = src.contiguous()?;
        let (s, base) = self.write_access(OP)?;
        s.copy_in(base + start, src.view()?)
    }

    /// Every element `value`.
    pub fn fill_(&mut self, value: f64) -> Result<()> {
        let n = self.numel();
        let (s, base) = self.write_access("fill")?;
        s.fill_in(base, n, value)
    }

    /// Every element times `c`.
    pub fn scale_(&mut self, c: f64) -> Result<()> {
        let n = self.numel();
        let (s, base) = self.write_access("scale")?;
        s.scale_in(base, n, c)
    }

    /// Row rows[i] of self, seen as (rows, width), = row i of `src` (N, width). `vouched`: the
    /// indices were made on the device by the caller, which vouches for them (see the contract).
    pub fn copy_rows_(&mut self, width: usize, rows: &Tensor, src: &Tensor, vouched: bool) -> Result<()> {
        const OP: &str = "copy_rows";
        if src.numel() != rows.numel() * width {
            return shape_err(
                OP,
                format!("{} rows of width {width} from a source {}", rows.numel(), src.shape()),
            );
        }
        let (rows, src) = (rows.contiguous()?, src.contiguous()?);
        let (s, base) = self.write_access(OP)?;
        if base != 0 {
            return shape_err(OP, "the destination must be a whole storage");
        }
        s.copy_rows_in(width, rows.view()?, src.view()?, vouched)
    }

    /// The decode step's rotary embedding and cache append in one pass: `self` is a layer's key
    /// cache and `v_cache` its value cache, (R, Hkv·D) each; row i of `k` (N, Hkv·D) rotated by
    /// `positions[i]` and row i of `v` go to cache row `rows[i]`; → `q` (N, Hq·D) rotated. See
    /// the contract's `rope_append` for `vouched`. No tape: generation runs without gradients.
    #[allow(clippy::too_many_arguments)]
    pub fn rope_append_(
        &mut self,
        v_cache: &mut Tensor,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        positions: &Tensor,
        rows: &Tensor,
        inv_freq: &[f64],
        heads: (usize, usize),
        vouched: bool,
    ) -> Result<Tensor> {
        const OP: &str = "rope_append";
        let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
        let (positions, rows) = (positions.contiguous()?, rows.contiguous()?);
        let spec = crate::backend::ops::RopeSpec { heads: heads.0, inv_freq };
        let (vs, vb) = v_cache.write_access(OP)?;
        let (ks, kb) = self.write_access(OP)?;
        if kb != 0 || vb != 0 {
            return shape_err(OP, "the caches must be whole storages");
        }
        let (qv, kv, vv) = (q.view()?, k.view()?, v.view()?);
        let y = ks.rope_append(vs, qv, kv, vv, positions.view()?, rows.view()?, &spec, heads.1, vouched)?;
        Tensor::from_storage(y, q.shape().clone())
    }

    /// The rows of one decode step from the generation state `self` (5, B) u32 and the step's
    /// slots (n) u32 → (6, n) u32: input token, position, slot, cache row, the sampler's
    /// sequence and position keys (see the contract's `decode_rows`).
    pub fn decode_rows(&self, slots: &Tensor, capacity: usize) -> Result<Tensor> {
        let (state, slots) = (self.contiguous()?, slots.contiguous()?);
        let out = Storage::decode_rows(state.view()?, slots.view()?, capacity)?;
        Tensor::from_storage(out, [6, slots.numel()])
    }

    /// The generation state `self` (5, B) u32 after one draw per row of `slots`: `tokens` (n)
    /// u32 and `logprobs` (n, 2) f32 go to `out_tokens` (B, max_new) and `out_logprobs`
    /// (B, max_new, 2) (see the contract's `decode_advance`).
    #[allow(clippy::too_many_arguments)]
    pub fn decode_advance_(
        &mut self,
        slots: &Tensor,
        tokens: &Tensor,
        logprobs: &Tensor,
        stops: &Tensor,
        max_new: usize,
        out_tokens: &mut Tensor,
        out_logprobs: &mut Tensor,
    ) -> Result<()> {
        const OP: &str = "decode_advance";
        let (slots, tokens, logprobs, stops) =
            (slots.contiguous()?, tokens.contiguous()?, logprobs.contiguous()?, stops.contiguous()?);
        let (ots, otb) = out_tokens.write_access(OP)?;
        let (ols, olb) = out_logprobs.write_access(OP)?;
        let (ss, sb) = self.write_access(OP)?;
        if sb != 0 || otb != 0 || olb != 0 {
            return shape_err(OP, "the state and the outputs must be whole storages");
        }
        ss.decode_advance(slots.view()?, tokens.view()?, logprobs.view()?, stops.view()?, max_new, ots, ols)
    }

    /// One AdamW update of this tensor of f32 master weights from `start` on, with `grad` and the
    /// moments `m`, `v` (same length as self, the same offsets). With `out` (the model's
    /// compute-dtype weights, f32 or bf16, same length and offset as self), its elements
    /// `start..start + grad.numel()` receive the updated weights in its dtype, in the same pass.
    pub fn adamw_step_at(
        &mut self,
        start: usize,
        grad: &Tensor,
        m: &mut Tensor,
        v: &mut Tensor,
        h: &AdamWStep,
        out: Option<&mut Tensor>,
    ) -> Result<()> {
        const OP: &str = "adamw";
        Tensor::check_span(OP, self.numel(), start, grad.numel())?;
        if m.numel() != self.numel() || v.numel() != self.numel() {
            return shape_err(
                OP,
                format!("moments of {} and {} for {} weights", m.numel(), v.numel(), self.numel()),
            );
        }
        if let Some(o) = &out {
            if o.numel() != self.numel() {
                return shape_err(
                    OP,
                    format!("a compute-weights copy of {} for {} weights", o.numel(), self.numel()),
                );
            }
        }
        let grad = grad.contiguous()?;
        let (ms, mb) = m.write_access(OP)?;
        let (vs, vb) = v.write_access(OP)?;
        let out = match out {
            Some(o) => Some(o.write_access(OP)?),
            None => None,
        };
        let (ps, pb) = self.write_access(OP)?;
        if mb != pb || vb != pb || out.as_ref().is_some_and(|(_, ob)| *ob != pb) {
            return shape_err(
                OP,
                "weights, moments and the compute-weights copy must start at the same offset of their storages",
            );
        }
        ps.adamw_step(pb + start, grad.view()?, ms, vs, h, out.map(|(os, _)| os))
    }

    // ---- sampling -------------------------------------------------------------------------------

    /// One token per row of these logits (N, V) (f32 or bf16 on the GPU), drawn per `spec` on
    /// their device; `seq` and `pos` (N) u32 key each row's random numbers (its sequence's index
    /// in the run and the position the token will take). → (tokens (N) u32, logprobs (N, 2) f32:
    /// ln q(token) under the sampling distribution, ln softmax(logits)[token]). No tape, no
    /// gradient. The function is `backend/cpu/sampling.rs`.
    pub fn sample(&self, seq: &Tensor, pos: &Tensor, spec: &SampleSpec) -> Result<(Tensor, Tensor)> {
        const OP: &str = "sample";
        let &[rows, vocab] = self.dims() else {
            return shape_err(OP, format!("logits must be (rows, vocab), got {}", self.shape()));
        };
        if vocab != spec.vocab {
            return shape_err(OP, format!("logits {} for a vocabulary of {}", self.shape(), spec.vocab));
        }
        for (what, t) in [("seq", seq), ("pos", pos)] {
            if t.dims() != [rows] || t.dtype() != DType::U32 {
                return shape_err(
                    OP,
                    format!(
                        "{what} must be ({rows}) u32 (one per row of logits), got {} {}",
                        t.shape(),
                        t.dtype()
                    ),
                );
            }
        }
        let (z, seq, pos) = (self.contiguous()?, seq.contiguous()?, pos.contiguous()?);
        let (tokens, logprobs) = Storage::sample(z.view()?, seq.view()?, pos.view()?, spec)?;
        Ok((Tensor::from_storage(tokens, [rows])?, Tensor::from_storage(logprobs, [rows, 2])?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_checks_conversions_and_views() {
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
        // Views share the storage; a strided one is copied by `contiguous`.
        let col = t.narrow(1, 1, 2).unwrap();
        assert!(col.shares_storage(&t) && !col.is_contiguous());
        assert_eq!(col.to_vec_f32().unwrap(), vec![-2.5, 3.0, 1e-3, 7.0]);
        assert_eq!(t.transpose(0, 1).unwrap().to_vec_f32().unwrap(), vec![1.0, 0.1, -2.5, 1e-3, 3.0, 7.0]);
        let row = t.narrow(0, 1, 1).unwrap();
        assert!(row.is_contiguous());
        assert_eq!(row.to_vec_f32().unwrap(), vec![0.1, 1e-3, 7.0]);
    }

    #[test]
    fn in_place_writes_copy_a_shared_storage_first() {
        let mut a = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], [4]).unwrap();
        let keep = a.clone();
        a.add_at(1, &Tensor::from_vec(vec![10.0f32, 20.0], [2]).unwrap()).unwrap();
        assert_eq!(a.to_vec_f32().unwrap(), vec![1.0, 12.0, 23.0, 4.0]);
        assert_eq!(keep.to_vec_f32().unwrap(), vec![1.0, 2.0, 3.0, 4.0], "the other holder keeps its values");
        assert!(!a.shares_storage(&keep));
        // A sole holder is written in place.
        let before = Arc::as_ptr(&a.storage);
        a.scale_(2.0).unwrap();
        assert_eq!(Arc::as_ptr(&a.storage), before);
        assert_eq!(a.to_vec_f32().unwrap(), vec![2.0, 24.0, 46.0, 8.0]);
        assert!(a.add_at(3, &Tensor::from_vec(vec![1.0f32, 1.0], [2]).unwrap()).is_err());
    }
}
