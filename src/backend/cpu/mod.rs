//! The CPU backend: the reference for every op, in f32 (and f64, for gradient checks).
//!
//! Each op's math lives in its own file, on contiguous row-major slices with shapes written beside
//! each argument (work split over rows with rayon, matrix products through `matrixmultiply`); this
//! file implements the backend contract on top of them: it checks every length it is given and
//! returns an error, so the slice functions can assume valid input.

mod adamw;
mod attention;
mod cross_entropy;
mod decode_state;
mod divergence;
mod embedding;
mod gelu;
mod gemm;
mod layer_norm;
mod linear;
mod linear_loss;
mod narrow;
mod real;
mod rms_norm;
mod rope;
mod sampling;
mod softmax;
mod storage;
mod swiglu;

pub use attention::{attention_bwd, attention_cached_fwd, attention_fwd};
pub use cross_entropy::{cross_entropy_fwd_bwd, cross_entropy_weighted_fwd_bwd};
pub use divergence::{divergence_fwd_bwd, DivergenceOut};
pub use gemm::{matmul, MatmulSpec};
pub use real::Real;
pub use sampling::{
    argmax, draw_row, gumbel, gumbel_of_word, kept_threshold, philox4x32_10, sample_rows, RowDraw,
};
pub use softmax::{log_softmax, log_sum_exp};
pub use storage::{CpuStorage, Element};

use super::check::{self, need};
use super::contract::{BackendStorage, LinearLossOut, LossTarget, View};
use super::ops::{
    AdamWStep, AttnDims, CachedAttnDims, LinearDims, LinearLossSpec, LossSpec, RopeSpec, SampleSpec,
};
use super::{DType, Device, Layout};
use crate::error::{shape_err, Error, Result};
use storage::{check_range, typed_mut, with_elem};

/// Runs `$body` with `$T` bound to f32 or f64 (the dtype `$dt`); other dtypes are an error.
macro_rules! real {
    ($op:expr, $dt:expr, |$T:ident| $body:expr) => {
        match $dt {
            DType::F32 => {
                #[allow(dead_code)]
                type $T = f32;
                $body
            }
            DType::F64 => {
                #[allow(dead_code)]
                type $T = f64;
                $body
            }
            d => Err(Error::DType { op: $op, dtype: d.name(), device: "cpu".into(), supported: "f32, f64" }),
        }
    };
}

fn same_dtype(op: &'static str, views: &[View<'_, CpuStorage>]) -> Result<DType> {
    let d = views[0].dtype();
    if let Some(v) = views.iter().find(|v| v.dtype() != d) {
        return shape_err(op, format!("mixed dtypes {d} and {}", v.dtype()));
    }
    Ok(d)
}

fn indices(op: &'static str, v: View<'_, CpuStorage>) -> Result<Vec<usize>> {
    Ok(v.typed::<u32>(op)?.iter().map(|&i| i as usize).collect())
}

/// (start, length) of each sequence.
fn spans(
    op: &'static str,
    starts: View<'_, CpuStorage>,
    lengths: View<'_, CpuStorage>,
) -> Result<Vec<(usize, usize)>> {
    let (s, l) = (indices(op, starts)?, indices(op, lengths)?);
    need(op, "lengths", l.len(), s.len())?;
    Ok(s.into_iter().zip(l).collect())
}

fn wrap<T: Element>(v: Vec<T>) -> CpuStorage {
    T::wrap(v)
}

impl BackendStorage for CpuStorage {
    fn dtype(&self) -> DType {
        CpuStorage::dtype(self)
    }

    fn len(&self) -> usize {
        CpuStorage::len(self)
    }

    fn device(&self) -> Device {
        Device::Cpu
    }

    fn to_host(x: View<'_, Self>) -> Result<CpuStorage> {
        x.storage.slice_copy(x.start, x.len)
    }

    fn copy_strided(&self, layout: &Layout) -> Result<Self> {
        check::strided("copy_strided", CpuStorage::len(self), layout)?;
        Ok(with_elem!(self, |v: T| T::wrap(layout.storage_indices().map(|i| v[i]).collect())))
    }

    fn cast(x: View<'_, Self>, dtype: DType) -> Result<Self> {
        Ok(x.storage.slice_copy(x.start, x.len)?.convert(dtype))
    }

    fn try_clone(&self) -> Result<Self> {
        Ok(self.clone())
    }

    fn copy_in(&mut self, start: usize, src: View<'_, Self>) -> Result<()> {
        const OP: &str = "copy";
        with_elem!(src.storage, |_s: T| {
            let s = src.typed::<T>(OP)?;
            typed_mut::<T>(OP, self, start, s.len())?.copy_from_slice(s);
            Ok(())
        })
    }

    fn add_in(&mut self, start: usize, src: View<'_, Self>) -> Result<()> {
        const OP: &str = "add (in place)";
        real!(OP, src.dtype(), |T| {
            let s = src.typed::<T>(OP)?;
            let d = typed_mut::<T>(OP, self, start, s.len())?;
            d.iter_mut().zip(s).for_each(|(a, &b)| *a += b);
            Ok(())
        })
    }

    fn fill_in(&mut self, start: usize, len: usize, value: f64) -> Result<()> {
        const OP: &str = "fill";
        check_range(OP, CpuStorage::len(self), start, len)?;
        with_elem!(self, |v: T| {
            v[start..start + len].iter_mut().for_each(|x| *x = T::from_f64(value));
            Ok(())
        })
    }

    fn scale_in(&mut self, start: usize, len: usize, c: f64) -> Result<()> {
        const OP: &str = "scale";
        real!(OP, CpuStorage::dtype(self), |T| {
            let c = T::from_f64(c);
            typed_mut::<T>(OP, self, start, len)?.iter_mut().for_each(|x| *x *= c);
            Ok(())
        })
    }

    fn copy_rows_in(
        &mut self,
        width: usize,
        rows: View<'_, Self>,
        src: View<'_, Self>,
        vouched: bool,
    ) -> Result<()> {
        const OP: &str = "copy_rows";
        let total = check::copy_rows(CpuStorage::len(self), width, rows.len, src.len)?;
        if !vouched {
            check::rows_in_range(OP, rows.typed::<u32>(OP)?, total)?;
        }
        let idx = indices(OP, rows)?;
        with_elem!(src.storage, |_s: T| {
            let s = src.typed::<T>(OP)?;
            let d = typed_mut::<T>(OP, self, 0, total * width)?;
            // Vouched indices past the storage are skipped, as the GPU kernel does.
            for (i, &r) in idx.iter().enumerate().filter(|&(_, &r)| r < total) {
                d[r * width..(r + 1) * width].copy_from_slice(&s[i * width..(i + 1) * width]);
            }
            Ok(())
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
        let (kc, vc) = (CpuStorage::len(self), CpuStorage::len(v_cache));
        let (_, total) =
            check::rope_append(q.len, k.len, v.len, positions.len, rows.len, kc, vc, spec, kv_heads)?;
        // The reference is the composition: both rotations, then the two row copies.
        let qy = rope(q, positions, spec, false)?;
        let kv_spec = RopeSpec { heads: kv_heads, inv_freq: spec.inv_freq };
        let ky = rope(k, positions, &kv_spec, false)?;
        let width = kv_heads * 2 * spec.inv_freq.len();
        if !vouched {
            check::rows_in_range(OP, rows.typed::<u32>(OP)?, total)?;
        }
        self.copy_rows_in(width, rows, View::new(&ky, 0, CpuStorage::len(&ky)), true)?;
        v_cache.copy_rows_in(width, rows, v, true)?;
        Ok(qy)
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
        const OP: &str = "decode_advance";
        let (ot, ol) = (CpuStorage::len(out_tokens), CpuStorage::len(out_logprobs));
        let b = check::decode_advance(
            CpuStorage::len(self),
            slots.len,
            tokens.len,
            logprobs.len,
            max_new,
            ot,
            ol,
        )?;
        let slots = slots.typed::<u32>(OP)?;
        check::slots(OP, slots, b)?;
        let a = decode_state::Advance {
            slots,
            tokens: tokens.typed::<u32>(OP)?,
            logprobs: logprobs.typed::<f32>(OP)?,
            stops: stops.typed::<u32>(OP)?,
            max_new,
        };
        let out_tokens = typed_mut::<u32>(OP, out_tokens, 0, ot)?;
        let out_logprobs = typed_mut::<f32>(OP, out_logprobs, 0, ol)?;
        let len = CpuStorage::len(self);
        decode_state::decode_advance(typed_mut::<u32>(OP, self, 0, len)?, &a, out_tokens, out_logprobs);
        Ok(())
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
        let lens = (BackendStorage::len(&*self), BackendStorage::len(&*m), BackendStorage::len(&*v));
        check::adamw(start, grad.len, lens.0, lens.1, lens.2, out.as_deref().map(BackendStorage::len))?;
        let g = grad.typed::<f32>(OP)?;
        let n = g.len();
        let out = match out {
            None => None,
            Some(o) => Some(match BackendStorage::dtype(&*o) {
                DType::F32 => adamw::WeightsOut::F32(typed_mut::<f32>(OP, o, start, n)?),
                DType::BF16 => adamw::WeightsOut::BF16(typed_mut::<half::bf16>(OP, o, start, n)?),
                d => {
                    return Err(Error::DType {
                        op: "adamw (compute-weights copy)",
                        dtype: d.name(),
                        device: "cpu".into(),
                        supported: "f32, bf16",
                    })
                }
            }),
        };
        adamw::adamw_step(
            typed_mut::<f32>(OP, self, start, n)?,
            g,
            typed_mut::<f32>(OP, m, start, n)?,
            typed_mut::<f32>(OP, v, start, n)?,
            h,
            out,
        );
        Ok(())
    }

    fn sum_squares(x: View<'_, Self>) -> Result<f64> {
        const OP: &str = "sum_squares";
        real!(OP, x.dtype(), |T| {
            use rayon::prelude::*;
            let s = x.typed::<T>(OP)?;
            // Fixed blocks summed in order: the same result whatever the threads do.
            let blocks: Vec<f64> =
                s.par_chunks(1 << 14).map(|c| c.iter().map(|&v| v.to_f64() * v.to_f64()).sum()).collect();
            Ok(blocks.iter().sum())
        })
    }

    fn decode_rows(state: View<'_, Self>, slots: View<'_, Self>, capacity: usize) -> Result<Self> {
        const OP: &str = "decode_rows";
        let b = check::decode_rows(state.len, capacity)?;
        let slots = slots.typed::<u32>(OP)?;
        check::slots(OP, slots, b)?;
        Ok(wrap(decode_state::decode_rows(state.typed::<u32>(OP)?, slots, capacity)))
    }

    fn add(a: View<'_, Self>, b: View<'_, Self>) -> Result<Self> {
        const OP: &str = "add";
        check::add(a.len, b.len)?;
        real!(OP, same_dtype(OP, &[a, b])?, |T| {
            let (x, y) = (a.typed::<T>(OP)?, b.typed::<T>(OP)?);
            Ok(wrap(x.iter().zip(y).map(|(&p, &q)| p + q).collect()))
        })
    }

    fn embedding_fwd(table: View<'_, Self>, ids: View<'_, Self>, dim: usize) -> Result<Self> {
        const OP: &str = "embedding";
        let vocab = check::embedding_fwd(table.len, dim)?;
        let ids = ids.typed::<u32>(OP)?;
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= vocab) {
            return shape_err(OP, format!("token id {bad} is outside the vocabulary of {vocab} rows"));
        }
        real!(OP, table.dtype(), |T| Ok(wrap(embedding::embedding_fwd::<T>(ids, table.typed(OP)?, dim))))
    }

    fn embedding_bwd(dout: View<'_, Self>, ids: View<'_, Self>, vocab: usize, dim: usize) -> Result<Self> {
        const OP: &str = "embedding backward";
        let ids = ids.typed::<u32>(OP)?;
        check::embedding_bwd(dout.len, ids.len(), dim)?;
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= vocab) {
            return shape_err(OP, format!("token id {bad} is outside the vocabulary of {vocab} rows"));
        }
        real!(OP, dout.dtype(), |T| Ok(wrap(embedding::embedding_bwd::<T>(ids, dout.typed(OP)?, vocab, dim))))
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
        real!(OP, same_dtype(OP, &all)?, |T| {
            let bias = b.map(|b| b.typed::<T>(OP)).transpose()?;
            Ok(wrap(linear::linear_fwd::<T>(d, x.typed(OP)?, w.typed(OP)?, bias)))
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
        real!(OP, same_dtype(OP, &[x, w, dy])?, |T| {
            let g = linear::linear_bwd::<T>(d, x.typed(OP)?, w.typed(OP)?, dy.typed(OP)?, has_bias);
            Ok((wrap(g.dx), wrap(g.dw), g.db.map(wrap)))
        })
    }

    fn rms_norm_fwd(x: View<'_, Self>, w: View<'_, Self>, cols: usize, eps: f64) -> Result<(Self, Self)> {
        const OP: &str = "rms_norm";
        check::rms_norm_fwd(x.len, w.len, cols)?;
        real!(OP, same_dtype(OP, &[x, w])?, |T| {
            let o = rms_norm::rms_norm_fwd::<T>(x.typed(OP)?, w.typed(OP)?, cols, eps);
            Ok((wrap(o.y), wrap(o.rstd)))
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
        check::rms_norm_bwd(x.len, w.len, rstd.len, dy.len, cols)?;
        real!(OP, same_dtype(OP, &[x, w, rstd, dy])?, |T| {
            let g =
                rms_norm::rms_norm_bwd::<T>(x.typed(OP)?, w.typed(OP)?, rstd.typed(OP)?, dy.typed(OP)?, cols);
            Ok((wrap(g.dx), wrap(g.dw)))
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
        need(OP, "residual", r.len, x.len)?;
        check::rms_norm_fwd(x.len, w.len, cols)?;
        real!(OP, same_dtype(OP, &[x, r, w])?, |T| {
            let (sum, o) =
                rms_norm::add_rms_norm_fwd::<T>(x.typed(OP)?, r.typed(OP)?, w.typed(OP)?, cols, eps);
            Ok((wrap(sum), wrap(o.y), wrap(o.rstd)))
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
        check::rms_norm_bwd(sum.len, w.len, rstd.len, dy.len, cols)?;
        need(OP, "dsum", dsum.len, sum.len)?;
        real!(OP, same_dtype(OP, &[sum, w, rstd, dy, dsum])?, |T| {
            let g = rms_norm::add_rms_norm_bwd::<T>(
                sum.typed(OP)?,
                w.typed(OP)?,
                rstd.typed(OP)?,
                dy.typed(OP)?,
                dsum.typed(OP)?,
                cols,
            );
            Ok((wrap(g.dx), wrap(g.dw)))
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
        check::layer_norm_fwd(x.len, w.len, b.len, cols)?;
        real!(OP, same_dtype(OP, &[x, w, b])?, |T| {
            let o = layer_norm::layer_norm_fwd::<T>(x.typed(OP)?, w.typed(OP)?, b.typed(OP)?, cols, eps);
            Ok((wrap(o.y), wrap(o.mean), wrap(o.rstd)))
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
        check::layer_norm_bwd(x.len, w.len, mean.len, rstd.len, dy.len, cols)?;
        real!(OP, same_dtype(OP, &[x, w, mean, rstd, dy])?, |T| {
            let g = layer_norm::layer_norm_bwd::<T>(
                x.typed(OP)?,
                w.typed(OP)?,
                mean.typed(OP)?,
                rstd.typed(OP)?,
                dy.typed(OP)?,
                cols,
            );
            let db = g.db.ok_or_else(|| Error::Msg("internal: layer_norm_bwd returned no db".into()))?;
            Ok((wrap(g.dx), wrap(g.dw), wrap(db)))
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
        need(OP, "residual", r.len, x.len)?;
        check::layer_norm_fwd(x.len, w.len, b.len, cols)?;
        real!(OP, same_dtype(OP, &[x, r, w, b])?, |T| {
            let (sum, o) = layer_norm::add_layer_norm_fwd::<T>(
                x.typed(OP)?,
                r.typed(OP)?,
                w.typed(OP)?,
                b.typed(OP)?,
                cols,
                eps,
            );
            Ok((wrap(sum), wrap(o.y), wrap(o.mean), wrap(o.rstd)))
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
        check::layer_norm_bwd(sum.len, w.len, mean.len, rstd.len, dy.len, cols)?;
        need(OP, "dsum", dsum.len, sum.len)?;
        real!(OP, same_dtype(OP, &[sum, w, mean, rstd, dy, dsum])?, |T| {
            let g = layer_norm::add_layer_norm_bwd::<T>(
                sum.typed(OP)?,
                w.typed(OP)?,
                mean.typed(OP)?,
                rstd.typed(OP)?,
                dy.typed(OP)?,
                dsum.typed(OP)?,
                cols,
            );
            let db = g.db.ok_or_else(|| Error::Msg("internal: layer_norm_bwd returned no db".into()))?;
            Ok((wrap(g.dx), wrap(g.dw), wrap(db)))
        })
    }

    fn rope_fwd(x: View<'_, Self>, positions: View<'_, Self>, spec: &RopeSpec) -> Result<Self> {
        rope(x, positions, spec, false)
    }

    fn rope_bwd(dy: View<'_, Self>, positions: View<'_, Self>, spec: &RopeSpec) -> Result<Self> {
        rope(dy, positions, spec, true)
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
        let spans = spans(OP, starts, lengths)?;
        real!(OP, same_dtype(OP, &[q, k, v])?, |T| {
            let o = attention::attention_fwd::<T>(d, q.typed(OP)?, k.typed(OP)?, v.typed(OP)?, &spans)?;
            Ok((wrap(o.out), wrap(o.lse)))
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
        let spans = spans(OP, starts, lengths)?;
        real!(OP, same_dtype(OP, &[q, k, v, out, lse, dout])?, |T| {
            let g = attention::attention_bwd::<T>(
                d,
                q.typed(OP)?,
                k.typed(OP)?,
                v.typed(OP)?,
                &spans,
                out.typed(OP)?,
                lse.typed(OP)?,
                dout.typed(OP)?,
            )?;
            Ok((wrap(g.dq), wrap(g.dk), wrap(g.dv)))
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
        let (seq, pos) = (seq.typed::<u32>(OP)?, pos.typed::<u32>(OP)?);
        real!(OP, same_dtype(OP, &[q, k_cache, v_cache])?, |T| {
            Ok(wrap(attention::attention_cached_fwd::<T>(
                d,
                q.typed(OP)?,
                k_cache.typed(OP)?,
                v_cache.typed(OP)?,
                seq,
                pos,
            )?))
        })
    }

    fn gelu_fwd(x: View<'_, Self>) -> Result<Self> {
        const OP: &str = "gelu";
        real!(OP, x.dtype(), |T| Ok(wrap(gelu::gelu_fwd::<T>(x.typed(OP)?))))
    }

    fn gelu_bwd(x: View<'_, Self>, dy: View<'_, Self>) -> Result<Self> {
        const OP: &str = "gelu backward";
        check::elementwise(OP, x.len, &[("dy", dy.len)])?;
        real!(OP, same_dtype(OP, &[x, dy])?, |T| Ok(wrap(gelu::gelu_bwd::<T>(x.typed(OP)?, dy.typed(OP)?))))
    }

    fn swiglu_fwd(gate: View<'_, Self>, up: View<'_, Self>) -> Result<Self> {
        const OP: &str = "swiglu";
        check::elementwise(OP, gate.len, &[("up", up.len)])?;
        real!(OP, same_dtype(OP, &[gate, up])?, |T| {
            Ok(wrap(swiglu::swiglu_fwd::<T>(gate.typed(OP)?, up.typed(OP)?)))
        })
    }

    fn swiglu_packed_fwd(x: View<'_, Self>, width: usize) -> Result<Self> {
        const OP: &str = "swiglu_packed";
        check::swiglu_packed(x.len, width)?;
        real!(OP, x.dtype(), |T| Ok(wrap(swiglu::swiglu_packed_fwd::<T>(x.typed(OP)?, width))))
    }

    fn swiglu_bwd(gate: View<'_, Self>, up: View<'_, Self>, dy: View<'_, Self>) -> Result<(Self, Self)> {
        const OP: &str = "swiglu backward";
        check::elementwise(OP, gate.len, &[("up", up.len), ("dy", dy.len)])?;
        real!(OP, same_dtype(OP, &[gate, up, dy])?, |T| {
            let (dg, du) = swiglu::swiglu_bwd::<T>(gate.typed(OP)?, up.typed(OP)?, dy.typed(OP)?);
            Ok((wrap(dg), wrap(du)))
        })
    }

    fn narrow_cols_fwd(x: View<'_, Self>, width: usize, start: usize, len: usize) -> Result<Self> {
        const OP: &str = "narrow_cols";
        check::narrow_cols(OP, x.len, width, start, len, false)?;
        real!(OP, x.dtype(), |T| Ok(wrap(narrow::narrow_cols_fwd::<T>(x.typed(OP)?, width, start, len))))
    }

    fn narrow_cols_bwd(dy: View<'_, Self>, width: usize, start: usize, len: usize) -> Result<Self> {
        const OP: &str = "narrow_cols backward";
        check::narrow_cols(OP, dy.len, width, start, len, true)?;
        real!(OP, dy.dtype(), |T| Ok(wrap(narrow::narrow_cols_bwd::<T>(dy.typed(OP)?, width, start, len))))
    }

    fn cross_entropy(
        logits: View<'_, Self>,
        targets: View<'_, Self>,
        spec: &LossSpec,
    ) -> Result<(Self, Option<Self>)> {
        const OP: &str = "cross_entropy";
        let targets = targets.typed::<u32>(OP)?;
        check::loss(OP, spec, logits.len, targets.len())?;
        check_targets(OP, targets, spec.vocab)?;
        real!(OP, logits.dtype(), |T| {
            let (loss, grad) = cross_entropy::cross_entropy_fwd_bwd::<T>(
                logits.typed(OP)?,
                targets,
                spec.vocab,
                spec.scale,
                spec.want_grad,
            );
            Ok((wrap(loss), spec.want_grad.then(|| wrap(grad))))
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
        let mask: Option<Vec<bool>> = match mask {
            Some(m) => {
                let m = m.typed::<u8>(OP)?;
                need(OP, "row mask", m.len(), spec.rows)?;
                Some(m.iter().map(|&x| x != 0).collect())
            }
            None => None,
        };
        real!(OP, same_dtype(OP, &[student, teacher])?, |T| {
            let o = divergence::divergence_fwd_bwd::<T>(
                divergence,
                temperature,
                student.typed(OP)?,
                teacher.typed(OP)?,
                spec.vocab,
                mask.as_deref(),
                spec.scale,
                spec.want_grad,
            )?;
            let loss: Vec<T> = o.row_loss.into_iter().map(T::from_f64).collect();
            Ok((wrap(loss), spec.want_grad.then(|| wrap(o.grad))))
        })
    }

    fn linear_loss(
        hidden: View<'_, Self>,
        head: View<'_, Self>,
        target: LossTarget<'_, Self>,
        spec: &LinearLossSpec,
    ) -> Result<LinearLossOut<Self>> {
        const OP: &str = "linear_loss";
        let (n, v) = (spec.loss.rows, spec.loss.vocab);
        check::linear_loss(spec, hidden.len, head.len)?;
        real!(OP, same_dtype(OP, &[hidden, head])?, |T| {
            let target = match target {
                LossTarget::Tokens(t) => {
                    let t = t.typed::<u32>(OP)?;
                    need(OP, "targets", t.len(), n)?;
                    check_targets(OP, t, v)?;
                    linear_loss::Target::Tokens { targets: t, weights: None }
                }
                LossTarget::WeightedTokens { targets: t, weights: w } => {
                    let t = t.typed::<u32>(OP)?;
                    need(OP, "targets", t.len(), n)?;
                    check_targets(OP, t, v)?;
                    let w = w.typed::<f32>(OP)?;
                    check::row_weights(OP, w.len(), n)?;
                    if let Some(r) = w.iter().position(|x| !x.is_finite()) {
                        return Err(Error::Msg(format!("{OP}: the weight of row {r} is {}", w[r])));
                    }
                    linear_loss::Target::Tokens { targets: t, weights: Some(w) }
                }
                LossTarget::Teacher { hidden: th, head: tw } => {
                    check::linear_loss_teacher(spec, th.len, tw.len)?;
                    same_dtype(OP, &[hidden, th, tw])?;
                    linear_loss::Target::Teacher { hidden: th.typed::<T>(OP)?, head: tw.typed::<T>(OP)? }
                }
            };
            let o = linear_loss::linear_loss::<T>(hidden.typed(OP)?, head.typed(OP)?, target, spec)?;
            Ok(LinearLossOut {
                row_loss: wrap(o.row_loss),
                d_hidden: o.d_hidden.map(wrap),
                d_head: o.d_head.map(wrap),
            })
        })
    }

    /// Any float dtype (the logits are widened to f64; bf16 and f16 take their exact values).
    fn sample(
        logits: View<'_, Self>,
        seq: View<'_, Self>,
        pos: View<'_, Self>,
        spec: &SampleSpec,
    ) -> Result<(Self, Self)> {
        const OP: &str = "sample";
        check::sample(spec, logits.len, seq.len, pos.len)?;
        let (seq, pos) = (seq.typed::<u32>(OP)?, pos.typed::<u32>(OP)?);
        let z = match logits.dtype() {
            DType::F32 | DType::F64 | DType::BF16 | DType::F16 => {
                logits.storage.slice_copy(logits.start, logits.len)?.to_f64_vec()
            }
            d => {
                return Err(Error::DType {
                    op: OP,
                    dtype: d.name(),
                    device: "cpu".into(),
                    supported: "f32, f64, bf16, f16",
                })
            }
        };
        let (tokens, logprobs) = sampling::sample_rows(&z, seq, pos, spec);
        Ok((wrap(tokens), wrap(logprobs)))
    }
}

fn rope(
    x: View<'_, CpuStorage>,
    positions: View<'_, CpuStorage>,
    spec: &RopeSpec,
    inverse: bool,
) -> Result<CpuStorage> {
    const OP: &str = "rope";
    let pos = positions.typed::<u32>(OP)?;
    check::rope(x.len, pos.len(), spec)?;
    real!(OP, x.dtype(), |T| {
        let f = if inverse { rope::rope_bwd::<T> } else { rope::rope_fwd::<T> };
        Ok(wrap(f(x.typed(OP)?, pos, spec.inv_freq, spec.heads)))
    })
}

fn check_targets(op: &'static str, targets: &[u32], vocab: usize) -> Result<()> {
    match targets.iter().find(|&&t| t != super::ops::IGNORE && t as usize >= vocab) {
        Some(&bad) => shape_err(op, format!("target {bad} is outside the vocabulary of {vocab}")),
        None => Ok(()),
    }
}
