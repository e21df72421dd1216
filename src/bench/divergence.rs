//! Workloads of the divergence benchmarks, shared by `gkd bench divergence` and the criterion
//! bench: device buffers filled with reproducible random logits / activations, and one call per
//! variant (fused kernel on each path, unfused baseline, fused lm_head + divergence, its matmuls
//! alone, the unfused lm_head path).

use crate::backend::cuda::divergence::{divergence_fwd_bwd, DivergenceLaunch, KernelPath, StudentGrad};
use crate::backend::cuda::divergence_unfused::divergence_unfused_fwd_bwd;
use crate::backend::cuda::linear_divergence::{
    linear_divergence_unfused, FusedHeadOut, LinearDivergence, LinearDivergenceInputs,
};
use crate::backend::cuda::CudaDevice;
use crate::backend::Divergence;
use crate::error::{Error, Result};
use cudarc::driver::CudaSlice;
use half::bf16;
use rayon::prelude::*;

/// Uniform values in [-scale, scale), a pure function of (seed, index): reproducible and fast to
/// generate in parallel (splitmix64).
pub fn random_values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    (0..n)
        .into_par_iter()
        .map(|i| {
            let mut z = seed.wrapping_add((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn upload_bf16(dev: &CudaDevice, v: &[f32]) -> Result<CudaSlice<bf16>> {
    let h: Vec<bf16> = v.par_iter().map(|&x| bf16::from_f32(x)).collect();
    dev.stream()
        .clone_htod(&h)
        .map_err(|e| Error::Cuda { context: "uploading bench data".into(), detail: e.to_string() })
}

/// Student and teacher logits (N, V) in bf16 and the outputs of one divergence call.
pub struct DivergenceCase {
    pub rows: usize,
    pub vocab: usize,
    pub divergence: Divergence,
    student: CudaSlice<bf16>,
    teacher: CudaSlice<bf16>,
    grad: CudaSlice<bf16>,
    row_loss: CudaSlice<f32>,
}

impl DivergenceCase {
    pub fn new(
        dev: &CudaDevice,
        rows: usize,
        vocab: usize,
        divergence: Divergence,
    ) -> Result<DivergenceCase> {
        let n = rows * vocab;
        let student = upload_bf16(dev, &random_values(n, 1, 4.0))?;
        let teacher = upload_bf16(dev, &random_values(n, 2, 4.0))?;
        let grad = dev
            .stream()
            .alloc_zeros(n)
            .map_err(|e| Error::Cuda { context: "bench".into(), detail: e.to_string() })?;
        let row_loss = dev
            .stream()
            .alloc_zeros(rows)
            .map_err(|e| Error::Cuda { context: "bench".into(), detail: e.to_string() })?;
        Ok(DivergenceCase { rows, vocab, divergence, student, teacher, grad, row_loss })
    }

    fn launch(&self, path: KernelPath) -> DivergenceLaunch {
        DivergenceLaunch {
            rows: self.rows,
            vocab: self.vocab,
            ld: self.vocab,
            divergence: self.divergence,
            temperature: 1.0,
            scale: 1.0 / self.rows as f32,
            path,
        }
    }

    /// The minimal traffic: read both logit tensors and write the gradient once.
    pub fn floor_bytes(&self) -> usize {
        3 * self.rows * self.vocab * std::mem::size_of::<bf16>()
    }

    /// The outputs (gradient, row losses) filled with NaN: what a variant does not write shows
    /// in `outputs` as a mismatch.
    pub fn poison(&mut self, dev: &CudaDevice) -> Result<()> {
        dev.fill_nan(&mut self.grad)?;
        dev.fill_nan(&mut self.row_loss)
    }

    /// Fused kernel, gradient into its own buffer (the student logits stay intact across runs).
    pub fn fused(&mut self, dev: &CudaDevice, path: KernelPath) -> Result<String> {
        let p = self.launch(path);
        let plan = divergence_fwd_bwd(
            dev,
            &p,
            StudentGrad::Into { student: self.student.slice(..), grad: self.grad.slice_mut(..) },
            &self.teacher.slice(..),
            None,
            &mut self.row_loss.slice_mut(..),
        )?;
        Ok(plan.to_string())
    }

    pub fn unfused(&mut self, dev: &CudaDevice) -> Result<()> {
        let p = self.launch(KernelPath::Auto);
        divergence_unfused_fwd_bwd(
            dev,
            &p,
            StudentGrad::Into { student: self.student.slice(..), grad: self.grad.slice_mut(..) },
            &self.teacher.slice(..),
            None,
            &mut self.row_loss.slice_mut(..),
        )
    }

    /// The last call's row losses and its gradient on the first and last `SAMPLE_ROWS` rows (the
    /// rows a persistent grid takes first and last), as f32: what `Outputs::max_diff` compares.
    pub fn outputs(&self, dev: &CudaDevice) -> Result<Outputs> {
        let k = SAMPLE_ROWS.min(self.rows) * self.vocab;
        let n = self.rows * self.vocab;
        let mut grad = Vec::with_capacity(2 * k);
        for range in [0..k, n - k..n] {
            let part = dev.stream().clone_dtoh(&self.grad.slice(range)).map_err(|e| Error::Cuda {
                context: "reading the bench gradient".into(),
                detail: e.to_string(),
            })?;
            grad.extend(part.iter().map(|x| x.to_f32()));
        }
        Ok(Outputs { row_loss: dev.download_f32(&self.row_loss)?, grad })
    }
}

/// Rows at each end whose gradient `DivergenceCase::outputs` reads back.
const SAMPLE_ROWS: usize = 8;

/// Row losses and a sample of the gradient of one divergence call.
pub struct Outputs {
    pub row_loss: Vec<f32>,
    pub grad: Vec<f32>,
}

impl Outputs {
    /// (largest relative row-loss difference, largest gradient difference ÷ the largest |gradient|
    /// of `reference`); NaN anywhere makes both NaN.
    pub fn max_diff(&self, reference: &Outputs) -> (f64, f64) {
        let rel = |a: &[f32], b: &[f32], denom: &dyn Fn(f32) -> f64| {
            a.iter().zip(b).map(|(&x, &y)| (x as f64 - y as f64).abs() / denom(y)).fold(0.0, |m: f64, d| {
                if d.is_nan() || m.is_nan() {
                    f64::NAN
                } else {
                    m.max(d)
                }
            })
        };
        let gmax = reference.grad.iter().fold(0f64, |m, &y| m.max((y as f64).abs())).max(1e-30);
        (
            rel(&self.row_loss, &reference.row_loss, &|y| (y as f64).abs().max(1e-30)),
            rel(&self.grad, &reference.grad, &|_| gmax),
        )
    }
}

/// Hidden states and heads for the lm_head + divergence benchmark, and the gradient outputs.
pub struct LinearCase {
    pub params: LinearDivergence,
    hs: CudaSlice<bf16>,
    ws: CudaSlice<bf16>,
    ht: CudaSlice<bf16>,
    wt: CudaSlice<bf16>,
    d_hidden: CudaSlice<bf16>,
    d_head: CudaSlice<f32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinearVariant {
    Fused,
    MatmulsOnly,
    Unfused,
}

impl LinearCase {
    pub fn new(dev: &CudaDevice, params: LinearDivergence) -> Result<LinearCase> {
        let (n, h_s, h_t, v) = (params.rows, params.student_dim, params.teacher_dim, params.vocab);
        let e =
            |e: cudarc::driver::DriverError| Error::Cuda { context: "bench".into(), detail: e.to_string() };
        Ok(LinearCase {
            hs: upload_bf16(dev, &random_values(n * h_s, 3, 1.0))?,
            ws: upload_bf16(dev, &random_values(v * h_s, 4, 2.0 / (h_s as f32).sqrt()))?,
            ht: upload_bf16(dev, &random_values(n * h_t, 5, 1.0))?,
            wt: upload_bf16(dev, &random_values(v * h_t, 6, 2.0 / (h_t as f32).sqrt()))?,
            d_hidden: dev.stream().alloc_zeros(n * h_s).map_err(e)?,
            d_head: dev.stream().alloc_zeros(v * h_s).map_err(e)?,
            params,
        })
    }

    /// d(student hidden) filled with NaN (what a variant must overwrite), d(student head) zeroed
    /// (what it adds to).
    pub fn reset(&mut self, dev: &CudaDevice) -> Result<()> {
        dev.fill_nan(&mut self.d_hidden)?;
        dev.stream()
            .memset_zeros(&mut self.d_head)
            .map_err(|e| Error::Cuda { context: "bench".into(), detail: e.to_string() })
    }

    /// The last run's d(student hidden), as f32.
    pub fn d_hidden(&self, dev: &CudaDevice) -> Result<Vec<f32>> {
        let h = dev.stream().clone_dtoh(&self.d_hidden).map_err(|e| Error::Cuda {
            context: "reading the bench gradient".into(),
            detail: e.to_string(),
        })?;
        Ok(h.iter().map(|x| x.to_f32()).collect())
    }

    pub fn run(&mut self, dev: &CudaDevice, variant: LinearVariant) -> Result<FusedHeadOut> {
        let (hs, ws, ht, wt) = (self.hs.slice(..), self.ws.slice(..), self.ht.slice(..), self.wt.slice(..));
        let x = LinearDivergenceInputs {
            student_hidden: &hs,
            student_head: &ws,
            teacher_hidden: &ht,
            teacher_head: &wt,
            row_mask: None,
        };
        let (mut dh, mut dw) = (self.d_hidden.slice_mut(..), self.d_head.slice_mut(..));
        match variant {
            LinearVariant::Fused => self.params.run(dev, &x, &mut dh, &mut dw),
            LinearVariant::MatmulsOnly => self.params.run_matmuls_only(dev, &x, &mut dh, &mut dw),
            LinearVariant::Unfused => linear_divergence_unfused(&self.params, dev, &x, &mut dh, &mut dw),
        }
    }
}
