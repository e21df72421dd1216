//! The decode loop's device side: the key/value cache of `batch` slots, the slots' state, their
//! outputs, and the step that advances every listed slot by one token without the host.
//!
//! A step reads its rows from the state (`Tensor::decode_rows`), runs the model over the cache,
//! draws with the sampling op and applies the draws (`Tensor::decode_advance_`): nothing comes back
//! to the host, so on CUDA the step is recorded once per number of rows as a CUDA graph and
//! replayed. The host looks at the state only between windows of steps (`generate`).

use super::GenerateConfig;
use crate::autograd::Tape;
use crate::backend::cuda::Graph;
use crate::backend::ops::SampleSpec;
use crate::error::{Error, Result};
use crate::model::{Attend, CacheStep, Inputs, KvCache, Model};
use crate::tensor::{DType, Device, Tensor};
use std::collections::HashMap;

/// The rows of the state (5, B).
const POS: usize = 1;
const GENERATED: usize = 2;
const DONE: usize = 3;
const SEQ: usize = 4;

/// The state as the host last read it, (5, B).
pub(super) struct HostState {
    v: Vec<u32>,
    batch: usize,
}

impl HostState {
    pub fn done(&self, slot: usize) -> bool {
        self.v[DONE * self.batch + slot] != 0
    }

    pub fn generated(&self, slot: usize) -> usize {
        self.v[GENERATED * self.batch + slot] as usize
    }
}

pub(super) struct Decoder<'m> {
    model: &'m Model,
    cache: KvCache,
    batch: usize,
    capacity: usize,
    max_new: usize,
    spec: SampleSpec,
    state: Tensor,        // (5, B) u32
    out_tokens: Tensor,   // (B, max_new) u32
    out_logprobs: Tensor, // (B, max_new, 2) f32: under the sampler, under the model
    stops: Tensor,        // (S) u32
    slots: Tensor,        // (B) u32: a step's slots, the first n of them
    graphs: HashMap<usize, Graph>,
    use_graphs: bool,
}

impl<'m> Decoder<'m> {
    /// `batch` slots of `capacity` positions; every slot starts done (free).
    pub fn new(model: &'m Model, batch: usize, capacity: usize, cfg: &GenerateConfig) -> Result<Decoder<'m>> {
        let device = model.device();
        let max_new = cfg.max_new_tokens;
        let mut state = vec![0u32; 5 * batch];
        state[DONE * batch..(DONE + 1) * batch].fill(1);
        // An id no vocabulary reaches stands for "no stop token" (the op takes at least one).
        let stops = if cfg.stop_tokens.is_empty() { vec![u32::MAX] } else { cfg.stop_tokens.clone() };
        Ok(Decoder {
            model,
            cache: model.new_cache(batch, capacity)?,
            batch,
            capacity,
            max_new,
            spec: cfg.sampler.spec(model.config.vocab_size, cfg.seed),
            state: Tensor::from_u32(&state, device)?.reshape([5, batch])?,
            out_tokens: Tensor::zeros([batch, max_new], DType::U32, device)?,
            out_logprobs: Tensor::zeros([batch, max_new, 2], DType::F32, device)?,
            stops: Tensor::from_u32(&stops, device)?,
            slots: Tensor::zeros([batch], DType::U32, device)?,
            graphs: HashMap::new(),
            use_graphs: cfg.cuda_graphs && matches!(device, Device::Cuda(_)),
        })
    }

    fn device(&self) -> Device {
        self.model.device()
    }

    /// The state now (waits for the device).
    pub fn read_state(&self) -> Result<HostState> {
        Ok(HostState { v: self.state.to_vec_u32()?, batch: self.batch })
    }

    /// Every slot's outputs: tokens (B·max_new) and log-probabilities (B·max_new·2).
    pub fn read_outputs(&self) -> Result<(Vec<u32>, Vec<f32>)> {
        Ok((self.out_tokens.to_vec_u32()?, self.out_logprobs.to_vec_f32()?))
    }

    pub fn max_new(&self) -> usize {
        self.max_new
    }

    /// Starts prompts in free slots, `(slot, the sampler's sequence key, prompt)`: one prefill of
    /// all of them (attention within the new rows), then the first draw of each.
    pub fn start(&mut self, host: &mut HostState, starts: &[(usize, u32, &[u32])]) -> Result<()> {
        let b = self.batch;
        for &(slot, seq, prompt) in starts {
            // The prompt's last token sits at P − 1; the first drawn token goes to P.
            host.v[POS * b + slot] = prompt.len() as u32 - 1;
            host.v[GENERATED * b + slot] = 0;
            host.v[DONE * b + slot] = 0;
            host.v[SEQ * b + slot] = seq;
            self.cache.reset(slot);
        }
        let device = self.device();
        self.state.copy_at(0, &Tensor::from_u32(&host.v, device)?)?;
        let chunks: Vec<(usize, &[u32])> = starts.iter().map(|&(s, _, p)| (s, p)).collect();
        let logits = self.model.next_token_logits(&mut self.cache, &chunks)?;
        let key_seq: Vec<u32> = starts.iter().map(|s| s.1).collect();
        let key_pos: Vec<u32> = starts.iter().map(|s| s.2.len() as u32).collect();
        let slots: Vec<u32> = starts.iter().map(|s| s.0 as u32).collect();
        let (key_seq, key_pos) = (Tensor::from_u32(&key_seq, device)?, Tensor::from_u32(&key_pos, device)?);
        let slots = Tensor::from_u32(&slots, device)?;
        let (tokens, logprobs) = logits.sample(&key_seq, &key_pos, &self.spec)?;
        self.advance(&slots, &tokens, &logprobs)
    }

    fn advance(&mut self, slots: &Tensor, tokens: &Tensor, logprobs: &Tensor) -> Result<()> {
        let (outs, max_new) = ((&mut self.out_tokens, &mut self.out_logprobs), self.max_new);
        self.state.decode_advance_(slots, tokens, logprobs, &self.stops, max_new, outs.0, outs.1)
    }

    /// `steps` decode steps of the slots `active` (distinct, not done). With CUDA graphs the
    /// step's rows are padded with free slots to a power of two (one graph per size).
    pub fn run(&mut self, active: &[usize], steps: usize) -> Result<()> {
        let n = match self.use_graphs {
            true => active.len().next_power_of_two().min(self.batch),
            false => active.len(),
        };
        let mut slots: Vec<u32> = active.iter().map(|&s| s as u32).collect();
        let free = (0..self.batch as u32).filter(|s| !active.contains(&(*s as usize)));
        slots.extend(free.take(n - active.len()));
        self.slots.copy_at(0, &Tensor::from_u32(&slots, self.device())?)?;
        for _ in 0..steps {
            self.step(n)?;
        }
        Ok(())
    }

    fn step(&mut self, n: usize) -> Result<()> {
        if !self.use_graphs {
            return self.step_eager(n);
        }
        if let Some(g) = self.graphs.get(&n) {
            return g.launch();
        }
        // The first step of a size runs eagerly (it makes what is made lazily: modules, library
        // handles, workspaces), then the next ones are recorded.
        self.step_eager(n)?;
        let before = self.buffers();
        let device = self.device();
        match device.capture(|| self.step_eager(n)) {
            Ok(g) if self.buffers() == before => {
                self.graphs.insert(n, g);
            }
            Ok(_) => self.without_graphs("a state buffer moved during the capture"),
            Err(e) => self.without_graphs(&e.to_string()),
        }
        Ok(())
    }

    fn without_graphs(&mut self, why: &str) {
        eprintln!("note: decoding without CUDA graphs: {why}");
        self.use_graphs = false;
        self.graphs.clear();
    }

    /// The storages a recorded step writes: replaying it is only right while they stay put.
    fn buffers(&self) -> Vec<usize> {
        let mut ids =
            vec![self.state.storage_id(), self.out_tokens.storage_id(), self.out_logprobs.storage_id()];
        ids.extend(self.cache.storage_ids());
        ids
    }

    /// One step of the first `n` slots of `self.slots`, queued without reading anything back.
    fn step_eager(&mut self, n: usize) -> Result<()> {
        let slots = self.slots.narrow(0, 0, n)?;
        let rows = self.state.decode_rows(&slots, self.capacity)?;
        let row = |k: usize| -> Result<Tensor> { rows.narrow(0, k, 1)?.reshape([n]) };
        let step = CacheStep::on_device(row(2)?, row(1)?, row(3)?, self.capacity);
        let attend = Attend::Cache { cache: &mut self.cache, step: Box::new(step) };
        let mut x = Inputs { ids: row(0)?, positions: row(1)?, longest: self.capacity, attend };
        let mut tape = Tape::no_grad();
        let p = self.model.bind(&mut tape, false)?;
        let h = self.model.forward(&mut tape, &p, &mut x)?;
        let logits = self.model.logits(&mut tape, &p, &h)?.into_value();
        let (tokens, logprobs) = logits.sample(&row(4)?, &row(5)?, &self.spec)?;
        self.advance(&slots, &tokens, &logprobs)
    }
}

/// Slots, prompts and the cache's length: what `generate` checks before decoding.
pub(super) fn capacity(model: &Model, prompts: &[Vec<u32>], max_new: usize) -> Result<usize> {
    if let Some(i) = prompts.iter().position(Vec::is_empty) {
        return Err(Error::Msg(format!("prompt {i} is empty: generation needs at least one prompt token")));
    }
    // The last drawn token is never fed back, so a sequence needs prompt + max_new − 1 positions.
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0) + max_new - 1;
    model.config.check_length(longest)?;
    Ok(longest)
}
