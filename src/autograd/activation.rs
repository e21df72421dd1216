//! Pointwise ops: GELU (tanh form, as GPT-2), SwiGLU (silu(gate)·up), residual add.

use super::dispatch::{self, cpu_real, cpu_tensor, same_device, same_dtype};
use super::{Tape, Var};
use crate::backend::cpu;
use crate::error::{shape_err, Error, Result};
use crate::tensor::{Device, Tensor};

impl Tape {
    pub fn gelu(&mut self, x: Var) -> Result<Var> {
        const OP: &str = "gelu";
        let xt = self.value(x).clone();
        if xt.device() != Device::Cpu {
            return Err(Error::Unsupported { op: OP, device: xt.device() });
        }
        let y =
            cpu_real!(OP, xt, |T| cpu_tensor(cpu::gelu_tanh_fwd::<T>(xt.cpu_slice()?), xt.shape().clone()))?;
        let backward = move |dy: &Tensor| -> Result<Vec<Option<Tensor>>> {
            cpu_real!(OP, xt, |T| Ok(vec![Some(cpu_tensor(
                cpu::gelu_tanh_bwd::<T>(xt.cpu_slice()?, dy.cpu_slice()?),
                xt.shape().clone()
            )?)]))
        };
        Ok(self.push(y, vec![x], Box::new(backward)))
    }

    /// silu(gate) · up, both (.., I).
    pub fn swiglu(&mut self, gate: Var, up: Var) -> Result<Var> {
        const OP: &str = "swiglu";
        let (gt, ut) = (self.value(gate).clone(), self.value(up).clone());
        if gt.shape() != ut.shape() {
            return shape_err(OP, format!("gate {} and up {} differ", gt.shape(), ut.shape()));
        }
        same_dtype(OP, &[&gt, &ut])?;
        let device = same_device(OP, &[&gt, &ut])?;
        if device != Device::Cpu {
            return Err(Error::Unsupported { op: OP, device });
        }
        let y = cpu_real!(OP, gt, |T| cpu_tensor(
            cpu::swiglu_fwd::<T>(gt.cpu_slice()?, ut.cpu_slice()?),
            gt.shape().clone()
        ))?;
        let backward = move |dy: &Tensor| -> Result<Vec<Option<Tensor>>> {
            cpu_real!(OP, gt, |T| {
                let (dg, du) = cpu::swiglu_bwd::<T>(gt.cpu_slice()?, ut.cpu_slice()?, dy.cpu_slice()?);
                Ok(vec![Some(cpu_tensor(dg, gt.shape().clone())?), Some(cpu_tensor(du, gt.shape().clone())?)])
            })
        };
        Ok(self.push(y, vec![gate, up], Box::new(backward)))
    }

    /// a + b (the residual connection); the gradient passes to both unchanged.
    pub fn add(&mut self, a: Var, b: Var) -> Result<Var> {
        let y = dispatch::add(self.value(a), self.value(b))?;
        let backward =
            |dy: &Tensor| -> Result<Vec<Option<Tensor>>> { Ok(vec![Some(dy.clone()), Some(dy.clone())]) };
        Ok(self.push(y, vec![a, b], Box::new(backward)))
    }
}
