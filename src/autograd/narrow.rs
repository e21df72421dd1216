//! A block of columns: x (.., W) → (.., L) = x[.., start..start+L]. The backward scatters the
//! gradient into zeros of the input's shape, so splitting one tensor in pieces accumulates back.

use super::dispatch::{cpu_real, cpu_tensor};
use super::{Tape, Var};
use crate::backend::cpu;
use crate::error::{shape_err, Error, Result};
use crate::tensor::{Device, Tensor};

const OP: &str = "narrow_cols";

impl Tape {
    pub fn narrow_cols(&mut self, x: Var, start: usize, len: usize) -> Result<Var> {
        let xt = self.value(x).clone();
        let width = xt.shape().last();
        if xt.shape().rank() == 0 || start + len > width {
            return shape_err(OP, format!("columns {start}..{} of an input {}", start + len, xt.shape()));
        }
        if xt.device() != Device::Cpu {
            return Err(Error::Unsupported { op: OP, device: xt.device() });
        }
        let mut out_shape = xt.dims().to_vec();
        *out_shape.last_mut().expect("rank ≥ 1") = len;
        let y = cpu_real!(OP, xt, |T| cpu_tensor(
            cpu::narrow_cols_fwd::<T>(xt.cpu_slice()?, width, start, len),
            out_shape
        ))?;
        let in_shape = xt.shape().clone();
        let backward = move |dy: &Tensor| -> Result<Vec<Option<Tensor>>> {
            cpu_real!(OP, dy, |T| Ok(vec![Some(cpu_tensor(
                cpu::narrow_cols_bwd::<T>(dy.cpu_slice()?, width, start, len),
                in_shape.clone()
            )?)]))
        };
        Ok(self.push(y, vec![x], Box::new(backward)))
    }
}
