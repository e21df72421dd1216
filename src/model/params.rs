//! A model's parameters in one flat buffer on the model's device, each parameter a view of it.
//!
//! The buffer holds the weights in the compute dtype (f32 on the CPU; f64 for gradient checks).
//! One buffer makes the optimizer, the gradient norm and clipping single passes over contiguous
//! memory, and lets the optimizer update the weights in place: nothing is rebuilt after a step.
//! On a GPU the compute dtype may be bf16; training then keeps f32 master weights beside the bf16
//! buffer, in the same layout: the optimizer updates the masters and writes their rounded copy into
//! the compute buffer in the same pass, and a checkpoint saves the masters (nothing is lost to
//! rounding between steps).
//!
//! Parameters that get weight decay (every matrix) come first, those that do not (biases, norm
//! weights: every 1-D parameter, as Hugging Face's Trainer groups them) after, so each group is
//! one contiguous range.

use crate::autograd::{Tape, Var};
use crate::error::{Error, Result};
use crate::tensor::{CpuStorage, DType, Device, Tensor};
use std::collections::HashMap;
use std::ops::Range;

/// Where one parameter lives in the flat buffer.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamEntry {
    pub name: String,
    pub shape: Vec<usize>,
    pub offset: usize,
}

impl ParamEntry {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn range(&self) -> Range<usize> {
        self.offset..self.offset + self.numel()
    }

    /// Whether AdamW's weight decay applies (matrices, not biases or norm weights).
    pub fn decays(&self) -> bool {
        self.shape.len() > 1
    }
}

#[derive(Clone, Debug)]
pub struct ParamStore {
    entries: Vec<ParamEntry>,
    names: Vec<String>,
    index: HashMap<String, usize>,
    /// (total) in the compute dtype.
    weights: Tensor,
    /// (total) f32 master weights, when the compute dtype is not f32 and the model trains.
    master: Option<Tensor>,
}

/// A model's parameters recorded on one tape, in the store's order.
#[derive(Clone, Debug)]
pub struct ParamVars(Vec<Var>);

impl ParamVars {
    pub fn vars(&self) -> &[Var] {
        &self.0
    }
}

impl ParamStore {
    /// The layout for parameters of these names and shapes (in this order): decayed ones first.
    fn layout(specs: &[(String, Vec<usize>)]) -> (Vec<ParamEntry>, usize) {
        let mut entries: Vec<ParamEntry> =
            specs.iter().map(|(n, s)| ParamEntry { name: n.clone(), shape: s.clone(), offset: 0 }).collect();
        let mut offset = 0;
        for decays in [true, false] {
            for e in entries.iter_mut().filter(|e| e.decays() == decays) {
                e.offset = offset;
                offset += e.numel();
            }
        }
        (entries, offset)
    }

    /// Parameters of these names and shapes, their values written by `fill(name, shape, dst)`
    /// into a host buffer of `dtype` (f32 or f64), then moved to `device` in one copy.
    pub fn build(
        specs: &[(String, Vec<usize>)],
        dtype: DType,
        device: Device,
        mut fill: impl FnMut(&ParamEntry, &mut CpuStorage, usize) -> Result<()>,
    ) -> Result<ParamStore> {
        if !matches!(dtype, DType::F32 | DType::F64) {
            return Err(Error::Msg(format!("parameters are built in f32 or f64, not {dtype}")));
        }
        let (entries, total) = ParamStore::layout(specs);
        let mut host = CpuStorage::zeros(dtype, total);
        for e in &entries {
            fill(e, &mut host, e.offset)?;
        }
        let weights = Tensor::from_host(host, [total], device)?;
        let names = entries.iter().map(|e| e.name.clone()).collect();
        let index = entries.iter().enumerate().map(|(i, e)| (e.name.clone(), i)).collect();
        Ok(ParamStore { entries, names, index, weights, master: None })
    }

    pub fn entries(&self) -> &[ParamEntry] {
        &self.entries
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn entry(&self, name: &str) -> Option<&ParamEntry> {
        self.index.get(name).map(|&i| &self.entries[i])
    }

    /// The parameter `name`, a view of the buffer.
    pub fn get(&self, name: &str) -> Option<Result<Tensor>> {
        self.entry(name).map(|e| self.view(e))
    }

    fn view(&self, e: &ParamEntry) -> Result<Tensor> {
        self.weights.narrow(0, e.offset, e.numel())?.reshape(e.shape.clone())
    }

    /// Every parameter, in order.
    pub fn tensors(&self) -> Result<Vec<Tensor>> {
        self.entries.iter().map(|e| self.view(e)).collect()
    }

    pub fn numel(&self) -> usize {
        self.weights.numel()
    }

    pub fn device(&self) -> Device {
        self.weights.device()
    }

    pub fn dtype(&self) -> DType {
        self.weights.dtype()
    }

    /// The flat buffer in the compute dtype, (total).
    pub fn weights(&self) -> &Tensor {
        &self.weights
    }

    /// The most precise copy of the weights: the f32 masters when there are any, else the
    /// compute buffer (what checkpoints save).
    pub fn master(&self) -> &Tensor {
        self.master.as_ref().unwrap_or(&self.weights)
    }

    /// Whether f32 master weights are kept beside a lower-precision compute buffer.
    pub fn has_master(&self) -> bool {
        self.master.is_some()
    }

    /// For the optimizer (in place while no view of them is alive): the weights it updates (the
    /// masters, or the compute buffer when there are none), and the compute buffer that receives
    /// the updated masters rounded to its dtype (None without masters).
    pub fn optimizer_buffers(&mut self) -> (&mut Tensor, Option<&mut Tensor>) {
        match &mut self.master {
            Some(m) => (m, Some(&mut self.weights)),
            None => (&mut self.weights, None),
        }
    }

    /// The same parameters on `device` in the compute dtype `dtype`, with f32 masters kept beside
    /// a non-f32 compute buffer when `train` is set (built from the most precise copy here).
    pub fn to_compute(&self, device: Device, dtype: DType, train: bool) -> Result<ParamStore> {
        let exact = self.master().to_device(device)?;
        let weights = exact.to_dtype(dtype)?;
        let master = (train && dtype != exact.dtype()).then_some(exact);
        Ok(ParamStore { weights, master, ..self.clone() })
    }

    /// The ranges of the flat buffer with and without weight decay.
    pub fn decay_groups(&self) -> [(Range<usize>, bool); 2] {
        let split = self.entries.iter().filter(|e| e.decays()).map(ParamEntry::numel).sum();
        [(0..split, true), (split..self.numel(), false)]
    }

    /// Overwrites parameter `name` with `value` (same shape).
    pub fn set(&mut self, name: &str, value: &Tensor) -> Result<()> {
        let e = self.entry(name).ok_or_else(|| Error::Msg(format!("no parameter `{name}`")))?.clone();
        if value.dims() != e.shape.as_slice() {
            return Err(Error::Msg(format!(
                "parameter `{name}` has shape {:?}, not {}",
                e.shape,
                value.shape()
            )));
        }
        let value = value.to_device(self.device())?;
        if let Some(m) = &mut self.master {
            m.copy_at(e.offset, &value.to_dtype(m.dtype())?)?;
        }
        self.weights.copy_at(e.offset, &value.to_dtype(self.dtype())?)
    }

    /// The same parameters on another device.
    pub fn to_device(&self, device: Device) -> Result<ParamStore> {
        let master = self.master.as_ref().map(|m| m.to_device(device)).transpose()?;
        Ok(ParamStore { weights: self.weights.to_device(device)?, master, ..self.clone() })
    }

    /// Records every parameter as a leaf of `tape`, in order.
    pub fn bind(&self, tape: &mut Tape, requires_grad: bool) -> Result<ParamVars> {
        Ok(ParamVars(self.tensors()?.into_iter().map(|t| tape.leaf(t, requires_grad)).collect()))
    }

    /// The position of `name` in the order of `bind` and `tensors`.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }
}
