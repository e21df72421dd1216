//! Rotary position embedding (Hugging Face "rotate_half" convention), applied per head. Its
//! backward is the inverse rotation.

use super::{dense, wrap, Tape, Var};
use crate::backend::ops::RopeSpec;
use crate::error::{shape_err, Result};
use crate::tensor::{Storage, Tensor};
use std::sync::Arc;

impl Tape {
    /// x (N, H·D) with one position per row (positions (N) u32); `inv_freq` has D/2 entries
    /// (θ_i = pos · inv_freq[i]).
    pub fn rope(&mut self, x: &Var, positions: &Tensor, inv_freq: Arc<[f64]>, heads: usize) -> Result<Var> {
        const OP: &str = "rope";
        let xt = dense(x)?;
        let width = xt.shape().last();
        if heads == 0 || width != heads * 2 * inv_freq.len() {
            return shape_err(
                OP,
                format!("input {} is not {heads} heads of dimension {}", xt.shape(), 2 * inv_freq.len()),
            );
        }
        if positions.numel() != xt.shape().rows() {
            return shape_err(OP, format!("{} positions for {} rows", positions.numel(), xt.shape().rows()));
        }
        let pos = positions.contiguous()?;
        let spec = RopeSpec { heads, inv_freq: &inv_freq };
        let y = wrap(Storage::rope_fwd(xt.view()?, pos.view()?, &spec)?, xt.shape().clone())?;
        let shape = xt.shape().clone();
        Ok(self.push(y, &[x], move |dy| {
            let dy = dy.contiguous()?;
            let spec = RopeSpec { heads, inv_freq: &inv_freq };
            Ok(vec![Some(wrap(Storage::rope_bwd(dy.view()?, pos.view()?, &spec)?, shape)?)])
        }))
    }
}
