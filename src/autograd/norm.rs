//! LayerNorm and RMSNorm over the last dimension, on the CPU and on CUDA (`kernels/norm.cu`).
//! On CUDA the weight and bias gradients come out in f32 whatever the weights' dtype.

use super::dispatch::{cpu_real, cpu_tensor, same_device, same_dtype};
use super::{Tape, Var};
use crate::backend::{cpu, cuda};
use crate::error::{shape_err, Error, Result};
use crate::tensor::{Device, Tensor};

fn check_params(op: &'static str, x: &Tensor, ps: &[&Tensor]) -> Result<usize> {
    let cols = x.shape().last();
    for p in ps {
        if p.dims() != [cols] {
            return shape_err(op, format!("parameter {} for input {}", p.shape(), x.shape()));
        }
    }
    let mut all = vec![x];
    all.extend_from_slice(ps);
    same_dtype(op, &all)?;
    same_device(op, &all)?;
    Ok(cols)
}

impl Tape {
    /// LayerNorm: x (.., C), w (C), b (C).
    pub fn layernorm(&mut self, x: Var, w: Var, b: Var, eps: f64) -> Result<Var> {
        const OP: &str = "layernorm";
        let (xt, wt, bt) = (self.value(x).clone(), self.value(w).clone(), self.value(b).clone());
        let cols = check_params(OP, &xt, &[&wt, &bt])?;
        let backward: super::BackwardFn;
        let y;
        match xt.device() {
            Device::Cpu => {
                let (yv, mean, rstd) = cpu_real!(OP, xt, |T| {
                    let o =
                        cpu::layernorm_fwd::<T>(xt.cpu_slice()?, wt.cpu_slice()?, bt.cpu_slice()?, cols, eps);
                    let rows = o.rstd.len();
                    Ok((
                        cpu_tensor(o.y, xt.shape().clone())?,
                        cpu_tensor(o.mean, [rows])?,
                        cpu_tensor(o.rstd, [rows])?,
                    ))
                })?;
                y = yv;
                backward = Box::new(move |dy: &Tensor| {
                    cpu_real!(OP, xt, |T| {
                        let g = cpu::layernorm_bwd::<T>(
                            xt.cpu_slice()?,
                            wt.cpu_slice()?,
                            mean.cpu_slice()?,
                            rstd.cpu_slice()?,
                            dy.cpu_slice()?,
                            cols,
                        );
                        let db =
                            g.db.ok_or_else(|| Error::Msg("internal: layernorm_bwd returned no db".into()))?;
                        Ok(vec![
                            Some(cpu_tensor(g.dx, xt.shape().clone())?),
                            Some(cpu_tensor(g.dw, [cols])?),
                            Some(cpu_tensor(db, [cols])?),
                        ])
                    })
                });
            }
            Device::Cuda(_) => {
                let o = cuda::norm::layernorm_fwd(&xt, &wt, &bt, eps as f32)?;
                y = o.y;
                let (mean, rstd) = (o.mean, o.rstd);
                backward = Box::new(move |dy: &Tensor| {
                    let g = cuda::norm::norm_bwd(&xt, &wt, mean.as_ref(), &rstd, dy, true)?;
                    Ok(vec![Some(g.dx), Some(g.dw), g.db])
                });
            }
        }
        Ok(self.push(y, vec![x, w, b], backward))
    }

    /// RMSNorm: x (.., C), w (C).
    pub fn rmsnorm(&mut self, x: Var, w: Var, eps: f64) -> Result<Var> {
        const OP: &str = "rmsnorm";
        let (xt, wt) = (self.value(x).clone(), self.value(w).clone());
        let cols = check_params(OP, &xt, &[&wt])?;
        let backward: super::BackwardFn;
        let y;
        match xt.device() {
            Device::Cpu => {
                let (yv, rstd) = cpu_real!(OP, xt, |T| {
                    let o = cpu::rmsnorm_fwd::<T>(xt.cpu_slice()?, wt.cpu_slice()?, cols, eps);
                    let rows = o.rstd.len();
                    Ok((cpu_tensor(o.y, xt.shape().clone())?, cpu_tensor(o.rstd, [rows])?))
                })?;
                y = yv;
                backward = Box::new(move |dy: &Tensor| {
                    cpu_real!(OP, xt, |T| {
                        let g = cpu::rmsnorm_bwd::<T>(
                            xt.cpu_slice()?,
                            wt.cpu_slice()?,
                            rstd.cpu_slice()?,
                            dy.cpu_slice()?,
                            cols,
                        );
                        Ok(vec![Some(cpu_tensor(g.dx, xt.shape().clone())?), Some(cpu_tensor(g.dw, [cols])?)])
                    })
                });
            }
            Device::Cuda(_) => {
                let o = cuda::norm::rmsnorm_fwd(&xt, &wt, eps as f32)?;
                y = o.y;
                let rstd = o.rstd;
                backward = Box::new(move |dy: &Tensor| {
                    let g = cuda::norm::norm_bwd(&xt, &wt, None, &rstd, dy, false)?;
                    Ok(vec![Some(g.dx), Some(g.dw)])
                });
            }
        }
        Ok(self.push(y, vec![x, w], backward))
    }
}
