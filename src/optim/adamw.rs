//! AdamW exactly as PyTorch's `torch.optim.AdamW` (single-tensor path, `amsgrad=False`) computes it
//! for each element, with t the step count after incrementing:
//!
//! ```text
//! p ← p · (1 − lr·λ)                       decoupled weight decay
//! m ← m + (1 − β1)·(g − m)                 torch's lerp_ (one fused multiply-add), ≈ β1·m + (1 − β1)·g
//! v ← β2·v + (1 − β2)·g²
//! p ← p − (lr / (1 − β1^t)) · m / (√v / √(1 − β2^t) + ε)
//! ```
//!
//! The bias corrections are computed in f64 and rounded to f32 once, as PyTorch does with its
//! Python-float scalars; everything per element is f32, in PyTorch's order of operations. Against
//! torch 2.15 on x86-64 the results agree to an f32 ulp or two (bit for bit in most elements).
//!
//! State file (`save` / `load`): a safetensors file with one F32 tensor per parameter and moment,
//! named `exp_avg.<i>` and `exp_avg_sq.<i>` (i = the parameter's position in `step`'s slices), and
//! the string metadata `format = gkd.adamw.v1`, `step`, `beta1`, `beta2`, `eps`, `weight_decay`
//! (floats written with Rust's shortest round-trip formatting, so they load back bit for bit).
//! It is written to a temporary beside the target and renamed, so a crash never leaves half a file.

use crate::error::{Error, Result};
use rayon::prelude::*;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::HashMap;
use std::path::Path;

/// AdamW hyper-parameters other than the learning rate (which `step` takes, from the schedule).
/// The defaults are PyTorch's. They are f64 like PyTorch's Python floats: 1 − β2 is computed
/// before rounding to f32, and 1 − 0.999f32 would already be 1.3e-5 off.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }
    }
}

impl AdamWConfig {
    fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::Msg(format!("AdamW: {what}")));
        for (name, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return bad(format!("{name} = {b} must be in [0, 1)"));
            }
        }
        if !(self.eps.is_finite() && self.eps >= 0.0) {
            return bad(format!("eps = {} must be finite and non-negative", self.eps));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(format!("weight decay = {} must be finite and non-negative", self.weight_decay));
        }
        Ok(())
    }
}

/// AdamW over f32 master weights. The moments are created on the first `step`, sized like the
/// parameters; every later step must pass parameters of the same count and lengths.
#[derive(Clone, Debug)]
pub struct AdamW {
    config: AdamWConfig,
    /// Optimizer steps taken.
    step: u64,
    /// Per parameter: first moment (exp_avg) and second moment (exp_avg_sq).
    exp_avg: Vec<Vec<f32>>,
    exp_avg_sq: Vec<Vec<f32>>,
    /// Per parameter: whether weight decay applies (None: to all).
    decay_mask: Option<Vec<bool>>,
}

impl AdamW {
    pub fn new(config: AdamWConfig) -> Result<AdamW> {
        config.validate()?;
        Ok(AdamW { config, step: 0, exp_avg: Vec::new(), exp_avg_sq: Vec::new(), decay_mask: None })
    }

    /// Applies weight decay only to the parameters whose entry is `true` (Hugging Face's Trainer
    /// exempts biases and norm weights). The mask's length must match the parameter count.
    pub fn with_decay_mask(mut self, mask: Vec<bool>) -> AdamW {
        self.decay_mask = Some(mask);
        self
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// Optimizer steps taken so far (PyTorch's `state['step']`).
    pub fn steps_taken(&self) -> u64 {
        self.step
    }

    /// The first and second moments of parameter `i`, if it has state yet.
    pub fn moments(&self, i: usize) -> Option<(&[f32], &[f32])> {
        Some((self.exp_avg.get(i)?.as_slice(), self.exp_avg_sq.get(i)?.as_slice()))
    }

    /// One AdamW update of every parameter with its gradient, at learning rate `lr`.
    pub fn step(&mut self, params: &mut [&mut [f32]], grads: &[&[f32]], lr: f32) -> Result<()> {
        if params.len() != grads.len() {
            return Err(Error::Msg(format!(
                "AdamW: {} parameters but {} gradients; pass one gradient per parameter",
                params.len(),
                grads.len()
            )));
        }
        if !lr.is_finite() || lr < 0.0 {
            return Err(Error::Msg(format!("AdamW: learning rate {lr} must be finite and non-negative")));
        }
        for (i, (p, g)) in params.iter().zip(grads).enumerate() {
            if p.len() != g.len() {
                return Err(Error::Msg(format!(
                    "AdamW: parameter {i} has {} elements but its gradient has {}",
                    p.len(),
                    g.len()
                )));
            }
        }
        if let Some(mask) = &self.decay_mask {
            if mask.len() != params.len() {
                return Err(Error::Msg(format!(
                    "AdamW: the weight-decay mask has {} entries for {} parameters",
                    mask.len(),
                    params.len()
                )));
            }
        }
        if self.exp_avg.is_empty() {
            self.exp_avg = params.iter().map(|p| vec![0.0; p.len()]).collect();
            self.exp_avg_sq = self.exp_avg.clone();
        } else {
            self.check_shapes(params.iter().map(|p| p.len()))?;
        }

        self.step += 1;
        let c = self.config;
        let t = self.step as f64;
        let lr64 = lr as f64;
        // Python-float scalars in PyTorch, rounded to f32 where they meet f32 tensors.
        let bias_correction1 = 1.0 - c.beta1.powf(t);
        let bias_correction2 = 1.0 - c.beta2.powf(t);
        let neg_step_size = -(lr64 / bias_correction1) as f32;
        let bc2_sqrt = bias_correction2.sqrt() as f32;
        let one_minus_beta1 = (1.0 - c.beta1) as f32;
        let one_minus_beta2 = (1.0 - c.beta2) as f32;
        let beta2 = c.beta2 as f32;
        let eps = c.eps as f32;

        for (i, (p, g)) in params.iter_mut().zip(grads).enumerate() {
            let decays = self.decay_mask.as_ref().is_none_or(|m| m[i]);
            let decay = if decays && c.weight_decay != 0.0 {
                Some((1.0 - lr64 * c.weight_decay) as f32)
            } else {
                None
            };
            let (m, v) = (&mut self.exp_avg[i], &mut self.exp_avg_sq[i]);
            p.par_iter_mut()
                .zip(m.par_iter_mut())
                .zip(v.par_iter_mut())
                .zip(g.par_iter())
                .with_min_len(4096)
                .for_each(|(((p, m), v), &g)| {
                    if let Some(d) = decay {
                        *p *= d;
                    }
                    *m = one_minus_beta1.mul_add(g - *m, *m); // lerp_, fused as in torch's CPU kernel
                    *v = *v * beta2 + one_minus_beta2 * g * g;
                    let denom = v.sqrt() / bc2_sqrt + eps;
                    *p += neg_step_size * *m / denom; // addcdiv_: (value · m) / denom
                });
        }
        Ok(())
    }

    fn check_shapes(&self, lens: impl ExactSizeIterator<Item = usize>) -> Result<()> {
        if lens.len() != self.exp_avg.len() {
            return Err(Error::Msg(format!(
                "AdamW: the optimizer state holds {} parameters but {} were passed",
                self.exp_avg.len(),
                lens.len()
            )));
        }
        for (i, (len, m)) in lens.zip(&self.exp_avg).enumerate() {
            if len != m.len() {
                return Err(Error::Msg(format!(
                    "AdamW: parameter {i} has {len} elements but its optimizer state has {}",
                    m.len()
                )));
            }
        }
        Ok(())
    }

    /// Writes the state (moments, step count, hyper-parameters) to a safetensors file.
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes: Vec<Vec<u8>> = self
            .exp_avg
            .iter()
            .chain(&self.exp_avg_sq)
            .map(|v| v.iter().flat_map(|x| x.to_le_bytes()).collect())
            .collect();
        let n = self.exp_avg.len();
        let mut tensors = Vec::with_capacity(2 * n);
        for (k, b) in bytes.iter().enumerate() {
            let name = if k < n { format!("exp_avg.{k}") } else { format!("exp_avg_sq.{}", k - n) };
            let view = TensorView::new(Dtype::F32, vec![b.len() / 4], b)
                .map_err(|e| Error::Msg(format!("AdamW state: {e}")))?;
            tensors.push((name, view));
        }
        let c = self.config;
        let mut meta = HashMap::new();
        meta.insert("format".to_string(), FORMAT.to_string());
        meta.insert("step".to_string(), self.step.to_string());
        meta.insert("beta1".to_string(), c.beta1.to_string());
        meta.insert("beta2".to_string(), c.beta2.to_string());
        meta.insert("eps".to_string(), c.eps.to_string());
        meta.insert("weight_decay".to_string(), c.weight_decay.to_string());
        if let Some(mask) = &self.decay_mask {
            meta.insert("decay_mask".to_string(), mask.iter().map(|&b| if b { '1' } else { '0' }).collect());
        }
        let data = safetensors::serialize(tensors, Some(meta))
            .map_err(|e| Error::Msg(format!("cannot encode the AdamW state: {e}")))?;
        write_atomically(path, &data)
    }

    /// Reads a state written by `save`: the optimizer continues exactly where it stopped.
    pub fn load(path: &Path) -> Result<AdamW> {
        let shown = path.display();
        let bytes = std::fs::read(path)
            .map_err(|e| Error::Msg(format!("cannot read optimizer state {shown}: {e}")))?;
        let bad = |what: String| Error::Msg(format!("{shown}: not a gkd AdamW state: {what}"));
        let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let field = |k: &str| meta.get(k).ok_or_else(|| bad(format!("metadata has no \"{k}\"")));
        if field("format")? != FORMAT {
            return Err(bad(format!("format is {:?}, expected {FORMAT:?}", meta.get("format"))));
        }
        let num = |k: &str| -> Result<f64> { field(k)?.parse().map_err(|e| bad(format!("\"{k}\": {e}"))) };
        let config = AdamWConfig {
            beta1: num("beta1")?,
            beta2: num("beta2")?,
            eps: num("eps")?,
            weight_decay: num("weight_decay")?,
        };
        config.validate()?;
        let step: u64 = field("step")?.parse().map_err(|e| bad(format!("\"step\": {e}")))?;
        let decay_mask = meta.get("decay_mask").map(|s| s.chars().map(|c| c == '1').collect());

        let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
        let n = st.len() / 2;
        let read = |name: String| -> Result<Vec<f32>> {
            let t = st.tensor(&name).map_err(|_| bad(format!("tensor {name} is missing")))?;
            if t.dtype() != Dtype::F32 {
                return Err(bad(format!("tensor {name} is {:?}, expected F32", t.dtype())));
            }
            Ok(t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
        };
        let exp_avg = (0..n).map(|i| read(format!("exp_avg.{i}"))).collect::<Result<Vec<_>>>()?;
        let exp_avg_sq = (0..n).map(|i| read(format!("exp_avg_sq.{i}"))).collect::<Result<Vec<_>>>()?;
        for (i, (m, v)) in exp_avg.iter().zip(&exp_avg_sq).enumerate() {
            if m.len() != v.len() {
                return Err(bad(format!(
                    "parameter {i}: exp_avg has {} elements, exp_avg_sq {}",
                    m.len(),
                    v.len()
                )));
            }
        }
        Ok(AdamW { config, step, exp_avg, exp_avg_sq, decay_mask })
    }
}

const FORMAT: &str = "gkd.adamw.v1";

fn write_atomically(path: &Path, data: &[u8]) -> Result<()> {
    let mut tmp_name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    std::fs::write(&tmp, data)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| Error::Msg(format!("cannot write optimizer state {}: {e}", path.display())))
}
