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
//! Python-float scalars; everything per element is f32, in PyTorch's order of operations (the
//! backends' `adamw_step`, over the flat parameter buffer). Against torch 2.15 on x86-64 the
//! results agree to an f32 ulp or two (bit for bit in most elements).
//!
//! State file (`save` / `load`): a safetensors file with one F32 tensor per parameter and moment,
//! named `exp_avg.<i>` and `exp_avg_sq.<i>` (i = the parameter's position in the model), and
//! the string metadata `format = gkd.adamw.v1`, `step`, `beta1`, `beta2`, `eps`, `weight_decay`
//! (floats written with Rust's shortest round-trip formatting, so they load back bit for bit).
//! It is written to a temporary beside the target and renamed, so a crash never leaves half a file.

use crate::backend::ops::AdamWStep;
use crate::error::{Error, Result};
use crate::tensor::{DType, Device, Tensor};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::HashMap;
use std::ops::Range;
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

/// A run of the flat parameter buffer: its elements and whether weight decay applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamGroup {
    pub range: Range<usize>,
    pub decay: bool,
}

/// AdamW over f32 master weights held in one flat buffer. The moments are created on the first
/// `step`, like the buffer and on its device; every later step must pass a buffer of that length.
#[derive(Clone, Debug)]
pub struct AdamW {
    config: AdamWConfig,
    /// Optimizer steps taken.
    step: u64,
    /// First moment (exp_avg) and second moment (exp_avg_sq), each like the parameters.
    moments: Option<(Tensor, Tensor)>,
}

/// An error unless `groups` tile 0..n in order.
fn check_groups(groups: &[ParamGroup], n: usize) -> Result<()> {
    let mut at = 0;
    for g in groups {
        if g.range.start != at || g.range.end < g.range.start {
            return Err(Error::Msg(format!(
                "AdamW: parameter groups {groups:?} do not tile the {n} parameters in order"
            )));
        }
        at = g.range.end;
    }
    if at != n {
        return Err(Error::Msg(format!("AdamW: parameter groups cover {at} of the {n} parameters")));
    }
    Ok(())
}

impl AdamW {
    pub fn new(config: AdamWConfig) -> Result<AdamW> {
        config.validate()?;
        Ok(AdamW { config, step: 0, moments: None })
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// Optimizer steps taken so far (PyTorch's `state['step']`).
    pub fn steps_taken(&self) -> u64 {
        self.step
    }

    /// The first and second moments, once a step has been taken.
    pub fn moments(&self) -> Option<(&Tensor, &Tensor)> {
        self.moments.as_ref().map(|(m, v)| (m, v))
    }

    /// One AdamW update of the flat f32 parameters `params` with their gradient `grads` (same
    /// length, same device), at learning rate `lr`; `groups` tile the buffer and say where weight
    /// decay applies (Hugging Face's Trainer exempts biases and norm weights). `weights`, when
    /// given, is the model's compute-dtype copy of the parameters (f32 or bf16, same length and
    /// device): it receives the updated weights, cast, in the same pass. A refused step changes
    /// nothing.
    pub fn step(
        &mut self,
        params: &mut Tensor,
        grads: &Tensor,
        groups: &[ParamGroup],
        lr: f32,
        mut weights: Option<&mut Tensor>,
    ) -> Result<()> {
        let n = params.numel();
        if grads.numel() != n || params.dtype() != DType::F32 || grads.dtype() != DType::F32 {
            return Err(Error::Msg(format!(
                "AdamW: {n} {} parameters but {} {} gradients; pass one f32 gradient per f32 parameter",
                params.dtype(),
                grads.numel(),
                grads.dtype()
            )));
        }
        if !lr.is_finite() || lr < 0.0 {
            return Err(Error::Msg(format!("AdamW: learning rate {lr} must be finite and non-negative")));
        }
        check_groups(groups, n)?;
        if let Some(w) = &weights {
            if w.numel() != n
                || !matches!(w.dtype(), DType::F32 | DType::BF16)
                || w.device() != params.device()
            {
                return Err(Error::Msg(format!(
                    "AdamW: the compute weights are {} {} on {}, but the {n} parameters are on {}; \
                     pass f32 or bf16 weights of the same length on the same device",
                    w.numel(),
                    w.dtype(),
                    w.device(),
                    params.device()
                )));
            }
        }
        match &self.moments {
            Some((m, _)) if m.numel() != n => {
                return Err(Error::Msg(format!(
                    "AdamW: the optimizer state holds {} parameters but {n} were passed",
                    m.numel()
                )))
            }
            Some(_) => {}
            None => {
                let zeros = || Tensor::zeros([n], DType::F32, params.device());
                self.moments = Some((zeros()?, zeros()?));
            }
        }
        let (m, v) = self.moments.as_mut().expect("set above");

        let c = self.config;
        let t = (self.step + 1) as f64;
        let lr64 = lr as f64;
        // Python-float scalars in PyTorch, rounded to f32 where they meet f32 tensors.
        let bias_correction1 = 1.0 - c.beta1.powf(t);
        let bias_correction2 = 1.0 - c.beta2.powf(t);
        let base = AdamWStep {
            decay: 1.0,
            one_minus_beta1: (1.0 - c.beta1) as f32,
            beta2: c.beta2 as f32,
            one_minus_beta2: (1.0 - c.beta2) as f32,
            neg_step_size: -(lr64 / bias_correction1) as f32,
            bc2_sqrt: bias_correction2.sqrt() as f32,
            eps: c.eps as f32,
        };
        for g in groups.iter().filter(|g| !g.range.is_empty()) {
            let decay =
                if g.decay && c.weight_decay != 0.0 { (1.0 - lr64 * c.weight_decay) as f32 } else { 1.0 };
            let grad = grads.narrow(0, g.range.start, g.range.len())?;
            let h = AdamWStep { decay, ..base };
            params.adamw_step_at(g.range.start, &grad, m, v, &h, weights.as_deref_mut())?;
        }
        self.step += 1;
        Ok(())
    }

    /// Writes the state (moments, step count, hyper-parameters) to a safetensors file, one
    /// tensor per parameter: `params` lists each parameter's run of the flat buffer, in the
    /// model's order of parameters (which need not be the buffer's).
    pub fn save(&self, path: &Path, params: &[ParamGroup]) -> Result<()> {
        let (m, v) = match &self.moments {
            Some((m, v)) => (m.to_vec_f32()?, v.to_vec_f32()?),
            None => (Vec::new(), Vec::new()),
        };
        let mut bytes: Vec<(String, Vec<u8>)> = Vec::new();
        if !m.is_empty() {
            for (which, data) in [("exp_avg", &m), ("exp_avg_sq", &v)] {
                for (i, p) in params.iter().enumerate() {
                    let part = data.get(p.range.clone()).ok_or_else(|| {
                        Error::Msg(format!(
                            "AdamW: parameter {i} {:?} is outside the state of {}",
                            p.range,
                            data.len()
                        ))
                    })?;
                    bytes.push((format!("{which}.{i}"), part.iter().flat_map(|x| x.to_le_bytes()).collect()));
                }
            }
        }
        let tensors = bytes
            .iter()
            .map(|(name, b)| {
                TensorView::new(Dtype::F32, vec![b.len() / 4], b)
                    .map(|view| (name.clone(), view))
                    .map_err(|e| Error::Msg(format!("AdamW state: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let c = self.config;
        let mut meta = HashMap::new();
        meta.insert("format".to_string(), FORMAT.to_string());
        meta.insert("step".to_string(), self.step.to_string());
        meta.insert("beta1".to_string(), c.beta1.to_string());
        meta.insert("beta2".to_string(), c.beta2.to_string());
        meta.insert("eps".to_string(), c.eps.to_string());
        meta.insert("weight_decay".to_string(), c.weight_decay.to_string());
        meta.insert(
            "decay_mask".to_string(),
            params.iter().map(|p| if p.decay { '1' } else { '0' }).collect(),
        );
        let data = safetensors::serialize(tensors, Some(meta))
            .map_err(|e| Error::Msg(format!("cannot encode the AdamW state: {e}")))?;
        write_atomically(path, &data)
    }

    /// Reads a state written by `save` for parameters laid out as `params` (each parameter's
    /// run of the flat buffer, in the model's order; together they must cover the buffer), its
    /// moments on `device`: the optimizer continues exactly where it stopped. A state for other
    /// parameter shapes is refused, naming the first that differs.
    pub fn load(path: &Path, params: &[ParamGroup], device: Device) -> Result<AdamW> {
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
        let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
        if st.is_empty() {
            return Ok(AdamW { config, step, moments: None });
        }
        if st.len() != 2 * params.len() {
            return Err(Error::Msg(format!(
                "{shown}: the optimizer state holds {} parameters but the model has {}",
                st.len() / 2,
                params.len()
            )));
        }
        let n = params.iter().map(|p| p.range.end).max().unwrap_or(0);
        let mut sorted = params.to_vec();
        sorted.sort_by_key(|p| p.range.start);
        check_groups(&sorted, n)?;
        let read = |which: &str| -> Result<Vec<f32>> {
            let mut flat = vec![0f32; n];
            for (i, p) in params.iter().enumerate() {
                let name = format!("{which}.{i}");
                let t = st.tensor(&name).map_err(|_| bad(format!("tensor {name} is missing")))?;
                if t.dtype() != Dtype::F32 {
                    return Err(bad(format!("tensor {name} is {:?}, expected F32", t.dtype())));
                }
                let len = t.data().len() / 4;
                if len != p.range.len() {
                    return Err(Error::Msg(format!(
                        "{shown}: parameter {i} has {} elements but its optimizer state has {len}",
                        p.range.len()
                    )));
                }
                for (d, b) in flat[p.range.clone()].iter_mut().zip(t.data().chunks_exact(4)) {
                    *d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
            Ok(flat)
        };
        let m = Tensor::from_vec(read("exp_avg")?, [n])?.to_device(device)?;
        let v = Tensor::from_vec(read("exp_avg_sq")?, [n])?.to_device(device)?;
        Ok(AdamW { config, step, moments: Some((m, v)) })
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
