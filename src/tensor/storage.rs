//! A tensor's storage on its device, and the one place that matches on the device: every op of
//! the backend contract is forwarded from here to the backend that holds its inputs (inputs on
//! different devices are an error naming both).

use crate::backend::cuda::{CudaDevice, CudaStorage};
use crate::backend::ops::{
    AdamWStep, AttnDims, CachedAttnDims, LinearDims, LinearLossSpec, LossSpec, RopeSpec, SampleSpec,
};
use crate::backend::{BackendStorage, CpuStorage, DType, Device, Layout, LinearLossOut, LossTarget, View};
use crate::error::{Error, Result};

#[derive(Debug)]
pub enum Storage {
    Cpu(CpuStorage),
    Cuda(CudaStorage),
}

/// Inputs of one op, all on one backend.
enum Views<'a> {
    Cpu(Vec<View<'a, CpuStorage>>),
    Cuda(Vec<View<'a, CudaStorage>>),
}

fn mismatch(op: &'static str, a: &Storage, b: &Storage) -> Error {
    Error::DeviceMismatch { op, a: a.device().to_string(), b: b.device().to_string() }
}

fn split<'a>(op: &'static str, views: &[View<'a, Storage>]) -> Result<Views<'a>> {
    let first = views[0].storage;
    match first {
        Storage::Cpu(_) => views
            .iter()
            .map(|v| match v.storage {
                Storage::Cpu(s) => Ok(View::new(s, v.start, v.len)),
                other => Err(mismatch(op, first, other)),
            })
            .collect::<Result<_>>()
            .map(Views::Cpu),
        Storage::Cuda(f) => views
            .iter()
            .map(|v| match v.storage {
                Storage::Cuda(s) if s.dev.ordinal() == f.dev.ordinal() => Ok(View::new(s, v.start, v.len)),
                other => Err(mismatch(op, first, other)),
            })
            .collect::<Result<_>>()
            .map(Views::Cuda),
    }
}

/// Whether `others` live on `d`'s GPU (an in-place op's sources and state).
fn same_gpu(d: &CudaStorage, others: &[&CudaStorage]) -> bool {
    others.iter().all(|s| s.dev.ordinal() == d.dev.ordinal())
}

/// A backend's output, wrapped back into `Storage`.
pub(crate) trait Lift {
    type Out;
    fn lift(self) -> Self::Out;
}
impl Lift for CpuStorage {
    type Out = Storage;
    fn lift(self) -> Storage {
        Storage::Cpu(self)
    }
}
impl Lift for CudaStorage {
    type Out = Storage;
    fn lift(self) -> Storage {
        Storage::Cuda(self)
    }
}
impl<A: Lift> Lift for Option<A> {
    type Out = Option<A::Out>;
    fn lift(self) -> Self::Out {
        self.map(A::lift)
    }
}
impl<A: Lift, B: Lift> Lift for (A, B) {
    type Out = (A::Out, B::Out);
    fn lift(self) -> Self::Out {
        (self.0.lift(), self.1.lift())
    }
}
impl<A: Lift, B: Lift, C: Lift> Lift for (A, B, C) {
    type Out = (A::Out, B::Out, C::Out);
    fn lift(self) -> Self::Out {
        (self.0.lift(), self.1.lift(), self.2.lift())
    }
}
impl<A: Lift, B: Lift, C: Lift, D: Lift> Lift for (A, B, C, D) {
    type Out = (A::Out, B::Out, C::Out, D::Out);
    fn lift(self) -> Self::Out {
        (self.0.lift(), self.1.lift(), self.2.lift(), self.3.lift())
    }
}
impl<S: Lift<Out = Storage>> Lift for LinearLossOut<S> {
    type Out = LinearLossOut<Storage>;
    fn lift(self) -> Self::Out {
        LinearLossOut {
            row_loss: self.row_loss.lift(),
            d_hidden: self.d_hidden.lift(),
            d_head: self.d_head.lift(),
        }
    }
}

/// Calls `$call` on the backend all `$views` live on, `$B` naming its storage type and `$v` its
/// views (in the order given), and wraps the result back.
macro_rules! dispatch {
    ($op:expr, [$($x:expr),* $(,)?], |$B:ident, $v:ident| $call:expr) => {
        match split($op, &[$($x),*])? {
            Views::Cpu($v) => {
                type $B = CpuStorage;
                $call.map(Lift::lift)
            }
            Views::Cuda($v) => {
                type $B = CudaStorage;
                $call.map(Lift::lift)
            }
        }
    };
}

impl Storage {
    pub fn zeros(device: Device, dtype: DType, n: usize) -> Result<Storage> {
        Ok(match device {
            Device::Cpu => Storage::Cpu(CpuStorage::zeros(dtype, n)),
            Device::Cuda(i) => Storage::Cuda(CudaStorage::zeros(&CudaDevice::get(i)?, dtype, n)?),
        })
    }

    pub fn from_host(device: Device, host: CpuStorage) -> Result<Storage> {
        Ok(match device {
            Device::Cpu => Storage::Cpu(host),
            Device::Cuda(i) => Storage::Cuda(CudaStorage::upload(&CudaDevice::get(i)?, &host)?),
        })
    }

    pub fn dtype(&self) -> DType {
        match self {
            Storage::Cpu(s) => BackendStorage::dtype(s),
            Storage::Cuda(s) => s.dtype(),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Storage::Cpu(s) => BackendStorage::len(s),
            Storage::Cuda(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn device(&self) -> Device {
        match self {
            Storage::Cpu(_) => Device::Cpu,
            Storage::Cuda(s) => s.device(),
        }
    }

    pub fn to_host(x: View<'_, Storage>) -> Result<CpuStorage> {
        match x.storage {
            Storage::Cpu(s) => CpuStorage::to_host(View::new(s, x.start, x.len)),
            Storage::Cuda(s) => CudaStorage::to_host(View::new(s, x.start, x.len)),
        }
    }

    pub fn copy_strided(&self, layout: &Layout) -> Result<Storage> {
        Ok(match self {
            Storage::Cpu(s) => Storage::Cpu(s.copy_strided(layout)?),
            Storage::Cuda(s) => Storage::Cuda(s.copy_strided(layout)?),
        })
    }

    pub fn try_clone(&self) -> Result<Storage> {
        Ok(match self {
            Storage::Cpu(s) => Storage::Cpu(s.try_clone()?),
            Storage::Cuda(s) => Storage::Cuda(s.try_clone()?),
        })
    }

    pub fn cast(x: View<'_, Storage>, dtype: DType) -> Result<Storage> {
        dispatch!("cast", [x], |B, v| B::cast(v[0], dtype))
    }

    // ---- in place -------------------------------------------------------------------------

    pub fn copy_in(&mut self, start: usize, src: View<'_, Storage>) -> Result<()> {
        match (&mut *self, src.storage) {
            (Storage::Cpu(d), Storage::Cpu(s)) => d.copy_in(start, View::new(s, src.start, src.len)),
            (Storage::Cuda(d), Storage::Cuda(s)) if same_gpu(d, &[s]) => {
                d.copy_in(start, View::new(s, src.start, src.len))
            }
            (_, s) => Err(mismatch("copy", self, s)),
        }
    }

    pub fn add_in(&mut self, start: usize, src: View<'_, Storage>) -> Result<()> {
        match (&mut *self, src.storage) {
            (Storage::Cpu(d), Storage::Cpu(s)) => d.add_in(start, View::new(s, src.start, src.len)),
            (Storage::Cuda(d), Storage::Cuda(s)) if same_gpu(d, &[s]) => {
                d.add_in(start, View::new(s, src.start, src.len))
            }
            (_, s) => Err(mismatch("add (in place)", self, s)),
        }
    }

    pub fn fill_in(&mut self, start: usize, len: usize, value: f64) -> Result<()> {
        match self {
            Storage::Cpu(s) => s.fill_in(start, len, value),
            Storage::Cuda(s) => s.fill_in(start, len, value),
        }
    }

    pub fn scale_in(&mut self, start: usize, len: usize, c: f64) -> Result<()> {
        match self {
            Storage::Cpu(s) => s.scale_in(start, len, c),
            Storage::Cuda(s) => s.scale_in(start, len, c),
        }
    }

    pub fn copy_rows_in(
        &mut self,
        width: usize,
        rows: View<'_, Storage>,
        src: View<'_, Storage>,
        vouched: bool,
    ) -> Result<()> {
        const OP: &str = "copy_rows";
        let (r, s) = ((rows.start, rows.len), (src.start, src.len));
        match (&mut *self, rows.storage, src.storage) {
            (Storage::Cpu(d), Storage::Cpu(rs), Storage::Cpu(ss)) => {
                d.copy_rows_in(width, View::new(rs, r.0, r.1), View::new(ss, s.0, s.1), vouched)
            }
            (Storage::Cuda(d), Storage::Cuda(rs), Storage::Cuda(ss)) if same_gpu(d, &[rs, ss]) => {
                d.copy_rows_in(width, View::new(rs, r.0, r.1), View::new(ss, s.0, s.1), vouched)
            }
            (_, rs, ss) => Err(mismatch(OP, if rs.device() == self.device() { ss } else { rs }, self)),
        }
    }

    /// The decode step's rotary embedding and cache append (see the contract's `rope_append`);
    /// `self` is the key cache.
    #[allow(clippy::too_many_arguments)]
    pub fn rope_append(
        &mut self,
        v_cache: &mut Storage,
        q: View<'_, Storage>,
        k: View<'_, Storage>,
        v: View<'_, Storage>,
        positions: View<'_, Storage>,
        rows: View<'_, Storage>,
        spec: &RopeSpec,
        kv_heads: usize,
        vouched: bool,
    ) -> Result<Storage> {
        const OP: &str = "rope_append";
        let span = |x: &View<'_, Storage>| (x.start, x.len);
        let (a, b, c, d, e) = (span(&q), span(&k), span(&v), span(&positions), span(&rows));
        match (&mut *self, &mut *v_cache, q.storage, k.storage, v.storage, positions.storage, rows.storage) {
            (
                Storage::Cpu(kc),
                Storage::Cpu(vc),
                Storage::Cpu(qs),
                Storage::Cpu(ks),
                Storage::Cpu(vs),
                Storage::Cpu(ps),
                Storage::Cpu(rs),
            ) => Ok(Storage::Cpu(kc.rope_append(
                vc,
                View::new(qs, a.0, a.1),
                View::new(ks, b.0, b.1),
                View::new(vs, c.0, c.1),
                View::new(ps, d.0, d.1),
                View::new(rs, e.0, e.1),
                spec,
                kv_heads,
                vouched,
            )?)),
            (
                Storage::Cuda(kc),
                Storage::Cuda(vc),
                Storage::Cuda(qs),
                Storage::Cuda(ks),
                Storage::Cuda(vs),
                Storage::Cuda(ps),
                Storage::Cuda(rs),
            ) if same_gpu(kc, &[vc, qs, ks, vs, ps, rs]) => Ok(Storage::Cuda(kc.rope_append(
                vc,
                View::new(qs, a.0, a.1),
                View::new(ks, b.0, b.1),
                View::new(vs, c.0, c.1),
                View::new(ps, d.0, d.1),
                View::new(rs, e.0, e.1),
                spec,
                kv_heads,
                vouched,
            )?)),
            (_, vc, qs, ks, vs, ps, rs) => {
                let other = [&*vc, qs, ks, vs, ps, rs]
                    .into_iter()
                    .find(|x| x.device() != self.device())
                    .unwrap_or(qs);
                Err(mismatch(OP, other, self))
            }
        }
    }

    /// The generation state (5, B) after one draw per row (see the contract's `decode_advance`).
    #[allow(clippy::too_many_arguments)]
    pub fn decode_advance(
        &mut self,
        slots: View<'_, Storage>,
        tokens: View<'_, Storage>,
        logprobs: View<'_, Storage>,
        stops: View<'_, Storage>,
        max_new: usize,
        out_tokens: &mut Storage,
        out_logprobs: &mut Storage,
    ) -> Result<()> {
        const OP: &str = "decode_advance";
        let v = |x: &View<'_, Storage>| (x.start, x.len);
        let (a, b, c, d) = (v(&slots), v(&tokens), v(&logprobs), v(&stops));
        match (
            &mut *self,
            slots.storage,
            tokens.storage,
            logprobs.storage,
            stops.storage,
            out_tokens,
            out_logprobs,
        ) {
            (
                Storage::Cpu(st),
                Storage::Cpu(s),
                Storage::Cpu(t),
                Storage::Cpu(l),
                Storage::Cpu(p),
                Storage::Cpu(ot),
                Storage::Cpu(ol),
            ) => st.decode_advance(
                View::new(s, a.0, a.1),
                View::new(t, b.0, b.1),
                View::new(l, c.0, c.1),
                View::new(p, d.0, d.1),
                max_new,
                ot,
                ol,
            ),
            (
                Storage::Cuda(st),
                Storage::Cuda(s),
                Storage::Cuda(t),
                Storage::Cuda(l),
                Storage::Cuda(p),
                Storage::Cuda(ot),
                Storage::Cuda(ol),
            ) if same_gpu(st, &[s, t, l, p, ot, ol]) => st.decode_advance(
                View::new(s, a.0, a.1),
                View::new(t, b.0, b.1),
                View::new(l, c.0, c.1),
                View::new(p, d.0, d.1),
                max_new,
                ot,
                ol,
            ),
            (_, s, t, l, p, ot, ol) => {
                let other =
                    [s, t, l, p, &*ot, &*ol].into_iter().find(|x| x.device() != self.device()).unwrap_or(s);
                Err(mismatch(OP, other, self))
            }
        }
    }

    pub fn decode_rows(
        state: View<'_, Storage>,
        slots: View<'_, Storage>,
        capacity: usize,
    ) -> Result<Storage> {
        dispatch!("decode_rows", [state, slots], |B, v| B::decode_rows(v[0], v[1], capacity))
    }

    /// One AdamW update of `self[start..start + grad.len]` (f32 masters) and the moments `m`, `v`
    /// at the same offsets; `out`, when given, receives the updated weights in its dtype there.
    #[allow(clippy::too_many_arguments)]
    pub fn adamw_step(
        &mut self,
        start: usize,
        grad: View<'_, Storage>,
        m: &mut Storage,
        v: &mut Storage,
        h: &AdamWStep,
        out: Option<&mut Storage>,
    ) -> Result<()> {
        let g = (grad.start, grad.len);
        match (&mut *self, grad.storage, m, v, out) {
            (Storage::Cpu(p), Storage::Cpu(gs), Storage::Cpu(m), Storage::Cpu(v), None) => {
                p.adamw_step(start, View::new(gs, g.0, g.1), m, v, h, None)
            }
            (Storage::Cpu(p), Storage::Cpu(gs), Storage::Cpu(m), Storage::Cpu(v), Some(Storage::Cpu(o))) => {
                p.adamw_step(start, View::new(gs, g.0, g.1), m, v, h, Some(o))
            }
            (Storage::Cuda(p), Storage::Cuda(gs), Storage::Cuda(m), Storage::Cuda(v), None)
                if same_gpu(p, &[gs, m, v]) =>
            {
                p.adamw_step(start, View::new(gs, g.0, g.1), m, v, h, None)
            }
            (
                Storage::Cuda(p),
                Storage::Cuda(gs),
                Storage::Cuda(m),
                Storage::Cuda(v),
                Some(Storage::Cuda(o)),
            ) if same_gpu(p, &[gs, m, v, o]) => {
                p.adamw_step(start, View::new(gs, g.0, g.1), m, v, h, Some(o))
            }
            (_, gs, m, v, o) => {
                let other = [gs, &*m, &*v]
                    .into_iter()
                    .chain(o.as_deref())
                    .find(|s| s.device() != self.device())
                    .unwrap_or(gs);
                Err(mismatch("adamw", self, other))
            }
        }
    }

    pub fn sum_squares(x: View<'_, Storage>) -> Result<f64> {
        match x.storage {
            Storage::Cpu(s) => CpuStorage::sum_squares(View::new(s, x.start, x.len)),
            Storage::Cuda(s) => CudaStorage::sum_squares(View::new(s, x.start, x.len)),
        }
    }

    // ---- ops ------------------------------------------------------------------------------

    pub fn add(a: View<'_, Storage>, b: View<'_, Storage>) -> Result<Storage> {
        dispatch!("add", [a, b], |B, v| B::add(v[0], v[1]))
    }

    pub fn embedding_fwd(table: View<'_, Storage>, ids: View<'_, Storage>, dim: usize) -> Result<Storage> {
        dispatch!("embedding", [table, ids], |B, v| B::embedding_fwd(v[0], v[1], dim))
    }

    pub fn embedding_bwd(
        dout: View<'_, Storage>,
        ids: View<'_, Storage>,
        vocab: usize,
        dim: usize,
    ) -> Result<Storage> {
        dispatch!("embedding backward", [dout, ids], |B, v| B::embedding_bwd(v[0], v[1], vocab, dim))
    }

    pub fn linear_fwd(
        x: View<'_, Storage>,
        w: View<'_, Storage>,
        b: Option<View<'_, Storage>>,
        d: LinearDims,
    ) -> Result<Storage> {
        match b {
            Some(b) => dispatch!("linear", [x, w, b], |B, v| B::linear_fwd(v[0], v[1], Some(v[2]), d)),
            None => dispatch!("linear", [x, w], |B, v| B::linear_fwd(v[0], v[1], None, d)),
        }
    }

    pub fn linear_bwd(
        x: View<'_, Storage>,
        w: View<'_, Storage>,
        dy: View<'_, Storage>,
        d: LinearDims,
        has_bias: bool,
    ) -> Result<(Storage, Storage, Option<Storage>)> {
        dispatch!("linear backward", [x, w, dy], |B, v| B::linear_bwd(v[0], v[1], v[2], d, has_bias))
    }

    pub fn rms_norm_fwd(
        x: View<'_, Storage>,
        w: View<'_, Storage>,
        cols: usize,
        eps: f64,
    ) -> Result<(Storage, Storage)> {
        dispatch!("rms_norm", [x, w], |B, v| B::rms_norm_fwd(v[0], v[1], cols, eps))
    }

    pub fn rms_norm_bwd(
        x: View<'_, Storage>,
        w: View<'_, Storage>,
        rstd: View<'_, Storage>,
        dy: View<'_, Storage>,
        cols: usize,
    ) -> Result<(Storage, Storage)> {
        dispatch!("rms_norm backward", [x, w, rstd, dy], |B, v| B::rms_norm_bwd(v[0], v[1], v[2], v[3], cols))
    }

    pub fn layer_norm_fwd(
        x: View<'_, Storage>,
        w: View<'_, Storage>,
        b: View<'_, Storage>,
        cols: usize,
        eps: f64,
    ) -> Result<(Storage, Storage, Storage)> {
        dispatch!("layer_norm", [x, w, b], |B, v| B::layer_norm_fwd(v[0], v[1], v[2], cols, eps))
    }

    pub fn layer_norm_bwd(
        x: View<'_, Storage>,
        w: View<'_, Storage>,
        mean: View<'_, Storage>,
        rstd: View<'_, Storage>,
        dy: View<'_, Storage>,
        cols: usize,
    ) -> Result<(Storage, Storage, Storage)> {
        dispatch!("layer_norm backward", [x, w, mean, rstd, dy], |B, v| {
            B::layer_norm_bwd(v[0], v[1], v[2], v[3], v[4], cols)
        })
    }

    pub fn add_rms_norm_fwd(
        x: View<'_, Storage>,
        r: View<'_, Storage>,
        w: View<'_, Storage>,
        cols: usize,
        eps: f64,
    ) -> Result<(Storage, Storage, Storage)> {
        dispatch!("add_rms_norm", [x, r, w], |B, v| B::add_rms_norm_fwd(v[0], v[1], v[2], cols, eps))
    }

    pub fn add_rms_norm_bwd(
        sum: View<'_, Storage>,
        w: View<'_, Storage>,
        rstd: View<'_, Storage>,
        dy: View<'_, Storage>,
        dsum: View<'_, Storage>,
        cols: usize,
    ) -> Result<(Storage, Storage)> {
        dispatch!("add_rms_norm backward", [sum, w, rstd, dy, dsum], |B, v| {
            B::add_rms_norm_bwd(v[0], v[1], v[2], v[3], v[4], cols)
        })
    }

    pub fn add_layer_norm_fwd(
        x: View<'_, Storage>,
        r: View<'_, Storage>,
        w: View<'_, Storage>,
        b: View<'_, Storage>,
        cols: usize,
        eps: f64,
    ) -> Result<(Storage, Storage, Storage, Storage)> {
        dispatch!("add_layer_norm", [x, r, w, b], |B, v| B::add_layer_norm_fwd(
            v[0], v[1], v[2], v[3], cols, eps
        ))
    }

    #[allow(clippy::too_many_arguments)]
    pub fn add_layer_norm_bwd(
        sum: View<'_, Storage>,
        w: View<'_, Storage>,
        mean: View<'_, Storage>,
        rstd: View<'_, Storage>,
        dy: View<'_, Storage>,
        dsum: View<'_, Storage>,
        cols: usize,
    ) -> Result<(Storage, Storage, Storage)> {
        dispatch!("add_layer_norm backward", [sum, w, mean, rstd, dy, dsum], |B, v| {
            B::add_layer_norm_bwd(v[0], v[1], v[2], v[3], v[4], v[5], cols)
        })
    }

    pub fn rope_fwd(x: View<'_, Storage>, positions: View<'_, Storage>, spec: &RopeSpec) -> Result<Storage> {
        dispatch!("rope", [x, positions], |B, v| B::rope_fwd(v[0], v[1], spec))
    }

    pub fn rope_bwd(dy: View<'_, Storage>, positions: View<'_, Storage>, spec: &RopeSpec) -> Result<Storage> {
        dispatch!("rope backward", [dy, positions], |B, v| B::rope_bwd(v[0], v[1], spec))
    }

    pub fn attention_fwd(
        q: View<'_, Storage>,
        k: View<'_, Storage>,
        v: View<'_, Storage>,
        starts: View<'_, Storage>,
        lengths: View<'_, Storage>,
        d: &AttnDims,
    ) -> Result<(Storage, Storage)> {
        dispatch!("attention", [q, k, v, starts, lengths], |B, x| B::attention_fwd(
            x[0], x[1], x[2], x[3], x[4], d
        ))
    }

    #[allow(clippy::too_many_arguments)]
    pub fn attention_bwd(
        q: View<'_, Storage>,
        k: View<'_, Storage>,
        v: View<'_, Storage>,
        starts: View<'_, Storage>,
        lengths: View<'_, Storage>,
        out: View<'_, Storage>,
        lse: View<'_, Storage>,
        dout: View<'_, Storage>,
        d: &AttnDims,
    ) -> Result<(Storage, Storage, Storage)> {
        dispatch!("attention backward", [q, k, v, starts, lengths, out, lse, dout], |B, x| {
            B::attention_bwd(x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7], d)
        })
    }

    pub fn attention_cached_fwd(
        q: View<'_, Storage>,
        k_cache: View<'_, Storage>,
        v_cache: View<'_, Storage>,
        seq: View<'_, Storage>,
        pos: View<'_, Storage>,
        d: &CachedAttnDims,
    ) -> Result<Storage> {
        dispatch!("cached attention", [q, k_cache, v_cache, seq, pos], |B, x| {
            B::attention_cached_fwd(x[0], x[1], x[2], x[3], x[4], d)
        })
    }

    pub fn gelu_fwd(x: View<'_, Storage>) -> Result<Storage> {
        dispatch!("gelu", [x], |B, v| B::gelu_fwd(v[0]))
    }

    pub fn gelu_bwd(x: View<'_, Storage>, dy: View<'_, Storage>) -> Result<Storage> {
        dispatch!("gelu backward", [x, dy], |B, v| B::gelu_bwd(v[0], v[1]))
    }

    pub fn swiglu_fwd(gate: View<'_, Storage>, up: View<'_, Storage>) -> Result<Storage> {
        dispatch!("swiglu", [gate, up], |B, v| B::swiglu_fwd(v[0], v[1]))
    }

    pub fn swiglu_packed_fwd(x: View<'_, Storage>, width: usize) -> Result<Storage> {
        dispatch!("swiglu_packed", [x], |B, v| B::swiglu_packed_fwd(v[0], width))
    }

    pub fn swiglu_bwd(
        gate: View<'_, Storage>,
        up: View<'_, Storage>,
        dy: View<'_, Storage>,
    ) -> Result<(Storage, Storage)> {
        dispatch!("swiglu backward", [gate, up, dy], |B, v| B::swiglu_bwd(v[0], v[1], v[2]))
    }

    pub fn narrow_cols_fwd(x: View<'_, Storage>, width: usize, start: usize, len: usize) -> Result<Storage> {
        dispatch!("narrow_cols", [x], |B, v| B::narrow_cols_fwd(v[0], width, start, len))
    }

    pub fn narrow_cols_bwd(dy: View<'_, Storage>, width: usize, start: usize, len: usize) -> Result<Storage> {
        dispatch!("narrow_cols backward", [dy], |B, v| B::narrow_cols_bwd(v[0], width, start, len))
    }

    pub fn cross_entropy(
        logits: View<'_, Storage>,
        targets: View<'_, Storage>,
        spec: &LossSpec,
    ) -> Result<(Storage, Option<Storage>)> {
        dispatch!("cross_entropy", [logits, targets], |B, v| B::cross_entropy(v[0], v[1], spec))
    }

    pub fn divergence(
        student: View<'_, Storage>,
        teacher: View<'_, Storage>,
        mask: Option<View<'_, Storage>>,
        spec: &LossSpec,
    ) -> Result<(Storage, Option<Storage>)> {
        match mask {
            Some(m) => dispatch!("divergence", [student, teacher, m], |B, v| B::divergence(
                v[0],
                v[1],
                Some(v[2]),
                spec
            )),
            None => dispatch!("divergence", [student, teacher], |B, v| B::divergence(v[0], v[1], None, spec)),
        }
    }

    pub fn linear_loss(
        hidden: View<'_, Storage>,
        head: View<'_, Storage>,
        target: LossTarget<'_, Storage>,
        spec: &LinearLossSpec,
    ) -> Result<LinearLossOut<Storage>> {
        const OP: &str = "linear_loss";
        match target {
            LossTarget::Tokens(t) => {
                dispatch!(OP, [hidden, head, t], |B, v| B::linear_loss(
                    v[0],
                    v[1],
                    LossTarget::Tokens(v[2]),
                    spec
                ))
            }
            LossTarget::WeightedTokens { targets: t, weights: w } => {
                dispatch!(OP, [hidden, head, t, w], |B, v| B::linear_loss(
                    v[0],
                    v[1],
                    LossTarget::WeightedTokens { targets: v[2], weights: v[3] },
                    spec
                ))
            }
            LossTarget::Teacher { hidden: th, head: tw } => dispatch!(OP, [hidden, head, th, tw], |B, v| {
                B::linear_loss(v[0], v[1], LossTarget::Teacher { hidden: v[2], head: v[3] }, spec)
            }),
        }
    }

    pub fn sample(
        logits: View<'_, Storage>,
        seq: View<'_, Storage>,
        pos: View<'_, Storage>,
        spec: &SampleSpec,
    ) -> Result<(Storage, Storage)> {
        dispatch!("sample", [logits, seq, pos], |B, v| B::sample(v[0], v[1], v[2], spec))
    }
}
