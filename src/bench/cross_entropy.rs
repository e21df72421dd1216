//! Workloads of the cross-entropy benchmarks (benches/cross_entropy.rs): the cross-entropy kernel
//! over bf16 logits (gradient into its own buffer, in place, or the loss alone), and the output
//! head fused with cross-entropy (SFT) beside its matmuls alone and the unfused path, on device
//! buffers filled with reproducible random values.

use super::divergence::{random_values, LinearVariant};
use crate::backend::cuda::cross_entropy::{cross_entropy_fwd_bwd, CePath, CrossEntropyLaunch};
use crate::backend::cuda::divergence::StudentGrad;
use crate::backend::cuda::linear_divergence::{
    linear_cross_entropy_unfused, FusedHeadOut, LinearCrossEntropy, LinearCrossEntropyInputs,
};
use crate::backend::cuda::CudaDevice;
use crate::backend::ops::IGNORE;
use crate::error::{Error, Result};
use cudarc::driver::CudaSlice;
use half::bf16;
use rayon::prelude::*;

fn bench_err(e: cudarc::driver::DriverError) -> Error {
    Error::Cuda { context: "cross-entropy bench data".into(), detail: e.to_string() }
}

fn upload_bf16(dev: &CudaDevice, v: &[f32]) -> Result<CudaSlice<bf16>> {
    let h: Vec<bf16> = v.par_iter().map(|&x| bf16::from_f32(x)).collect();
    dev.stream().clone_htod(&h).map_err(bench_err)
}

/// Next-token ids spread over the vocabulary, every 16th row IGNORE (a prompt token).
fn targets(rows: usize, vocab: usize) -> Vec<u32> {
    (0..rows).map(|r| if r % 16 == 15 { IGNORE } else { (r * 7919 % vocab) as u32 }).collect()
}

/// Where the kernel's gradient goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CeMode {
    /// Into its own buffer (the logits stay intact across runs).
    Into,
    /// Over the logits (what the fused head does; the values drift across runs, the traffic
    /// does not).
    InPlace,
    /// No gradient: the loss alone, one read of the logits.
    LossOnly,
}

/// Logits (N, V) bf16, targets, and the outputs of one cross-entropy call.
pub struct CrossEntropyCase {
    pub rows: usize,
    pub vocab: usize,
    logits: CudaSlice<bf16>,
    grad: CudaSlice<bf16>,
    targets: CudaSlice<u32>,
    row_loss: CudaSlice<f32>,
}

impl CrossEntropyCase {
    pub fn new(dev: &CudaDevice, rows: usize, vocab: usize) -> Result<CrossEntropyCase> {
        let n = rows * vocab;
        Ok(CrossEntropyCase {
            rows,
            vocab,
            logits: upload_bf16(dev, &random_values(n, 7, 4.0))?,
            grad: dev.stream().alloc_zeros(n).map_err(bench_err)?,
            targets: dev.stream().clone_htod(&targets(rows, vocab)).map_err(bench_err)?,
            row_loss: dev.stream().alloc_zeros(rows).map_err(bench_err)?,
        })
    }

    /// The minimal traffic of a mode: read the logits once, and write the gradient once.
    pub fn floor_bytes(&self, mode: CeMode) -> usize {
        let passes = if mode == CeMode::LossOnly { 1 } else { 2 };
        passes * self.rows * self.vocab * std::mem::size_of::<bf16>()
    }

    /// One call; returns the kernel that ran.
    pub fn run(&mut self, dev: &CudaDevice, mode: CeMode) -> Result<&'static str> {
        let p = CrossEntropyLaunch {
            rows: self.rows,
            vocab: self.vocab,
            scale: 1.0 / self.rows as f32,
            path: CePath::Auto,
            scalar: false,
        };
        let logits = match mode {
            CeMode::Into => {
                StudentGrad::Into { student: self.logits.slice(..), grad: self.grad.slice_mut(..) }
            }
            CeMode::InPlace => StudentGrad::InPlace(self.logits.slice_mut(..)),
            CeMode::LossOnly => StudentGrad::LossOnly(self.logits.slice(..)),
        };
        cross_entropy_fwd_bwd(dev, &p, logits, &self.targets.slice(..), &mut self.row_loss.slice_mut(..))
    }
}

/// Hidden states, head and targets of the output head fused with cross-entropy, and the
/// gradient outputs.
pub struct LinearCeCase {
    pub params: LinearCrossEntropy,
    hidden: CudaSlice<bf16>,
    head: CudaSlice<bf16>,
    targets: CudaSlice<u32>,
    d_hidden: CudaSlice<bf16>,
    d_head: CudaSlice<f32>,
}

impl LinearCeCase {
    pub fn new(dev: &CudaDevice, params: LinearCrossEntropy) -> Result<LinearCeCase> {
        let (n, h, v) = (params.rows, params.dim, params.vocab);
        Ok(LinearCeCase {
            hidden: upload_bf16(dev, &random_values(n * h, 8, 1.0))?,
            head: upload_bf16(dev, &random_values(v * h, 9, 2.0 / (h as f32).sqrt()))?,
            targets: dev.stream().clone_htod(&targets(n, v)).map_err(bench_err)?,
            d_hidden: dev.stream().alloc_zeros(n * h).map_err(bench_err)?,
            d_head: dev.stream().alloc_zeros(v * h).map_err(bench_err)?,
            params,
        })
    }

    /// d(hidden) filled with NaN (what a variant must overwrite), d(head) zeroed (what it adds to).
    pub fn reset(&mut self, dev: &CudaDevice) -> Result<()> {
        dev.fill_nan(&mut self.d_hidden)?;
        dev.stream().memset_zeros(&mut self.d_head).map_err(bench_err)
    }

    /// The last run's d(hidden), as f32.
    pub fn d_hidden(&self, dev: &CudaDevice) -> Result<Vec<f32>> {
        let h = dev.stream().clone_dtoh(&self.d_hidden).map_err(bench_err)?;
        Ok(h.iter().map(|x| x.to_f32()).collect())
    }

    pub fn run(&mut self, dev: &CudaDevice, variant: LinearVariant) -> Result<FusedHeadOut> {
        let (hidden, head, targets) = (self.hidden.slice(..), self.head.slice(..), self.targets.slice(..));
        let x = LinearCrossEntropyInputs { hidden: &hidden, head: &head, targets: &targets };
        let (mut dh, mut dw) = (self.d_hidden.slice_mut(..), self.d_head.slice_mut(..));
        match variant {
            LinearVariant::Fused => self.params.run(dev, &x, &mut dh, &mut dw),
            LinearVariant::MatmulsOnly => self.params.run_matmuls_only(dev, &x, &mut dh, &mut dw),
            LinearVariant::Unfused => linear_cross_entropy_unfused(&self.params, dev, &x, &mut dh, &mut dw),
        }
    }
}
