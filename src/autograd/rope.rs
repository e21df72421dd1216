//! Rotary position embedding (Hugging Face "rotate_half" convention), applied per head.
//! Its backward is the inverse rotation.

use super::dispatch::{cpu_real, cpu_tensor};
use super::{Tape, Var};
use crate::backend::cpu;
use crate::error::{shape_err, Error, Result};
use crate::tensor::{Device, Tensor};
use std::sync::Arc;

const OP: &str = "rope";

impl Tape {
    /// x (N, H·D) with one position per row; `inv_freq` has D/2 entries (θ_i = pos · inv_freq[i]).
    pub fn rope(&mut self, x: Var, positions: &[u32], inv_freq: Arc<[f64]>, heads: usize) -> Result<Var> {
        let xt = self.value(x).clone();
        let half = inv_freq.len();
        let width = xt.shape().last();
        if heads == 0 || width != heads * 2 * half {
            return shape_err(
                OP,
                format!("input {} is not {heads} heads of dimension {}", xt.shape(), 2 * half),
            );
        }
        if positions.len() != xt.shape().rows() {
            return shape_err(OP, format!("{} positions for {} rows", positions.len(), xt.shape().rows()));
        }
        if xt.device() != Device::Cpu {
            return Err(Error::Unsupported { op: OP, device: xt.device() });
        }
        let pos: Arc<[u32]> = positions.into();
        let y = cpu_real!(OP, xt, |T| cpu_tensor(
            cpu::rope_fwd::<T>(xt.cpu_slice()?, &pos, &inv_freq, heads),
            xt.shape().clone()
        ))?;
        let shape = xt.shape().clone();
        let backward = move |dy: &Tensor| -> Result<Vec<Option<Tensor>>> {
            cpu_real!(OP, dy, |T| Ok(vec![Some(cpu_tensor(
                cpu::rope_bwd::<T>(dy.cpu_slice()?, &pos, &inv_freq, heads),
                shape.clone()
            )?)]))
        };
        Ok(self.push(y, vec![x], Box::new(backward)))
    }
}
