//! Launchers for `kernels/divergence.cu`: the fused divergence between teacher and student
//! next-token distributions, loss and gradient with respect to the student logits in one kernel.
//!
//! The API works on raw device memory, so that it can run on row chunks of bigger buffers:
//!
//! ```text
//! divergence_fwd_bwd::<T>(dev, &DivergenceLaunch { rows, vocab, ld, divergence, temperature,
//!                                                   scale, path },
//!                         StudentGrad::InPlace(student)            // grad overwrites student
//!                           | StudentGrad::Into { student, grad }  // grad to its own buffer
//!                           | StudentGrad::LossOnly(student),      // no gradient
//!                         &teacher, row_mask, &mut row_loss) -> Result<LaunchPlan>
//! ```
//! T is f32 or bf16 (student, teacher and gradient share it). Student, teacher and gradient are
//! (rows, ld) row-major with the first `vocab` entries of each row used (entries ld − vocab of
//! each row are never touched); `row_mask` (rows) u8, 0 = row ignored (loss 0, gradient 0);
//! `row_loss` (rows) f32 receives scale·D_r. The gradient is scale·∂D_r/∂s (1/τ included), in T.
//! Borrowing makes in-place and out-of-place safe: `InPlace` holds the only mutable view of the
//! student, `Into` an immutable view of the student and a mutable one of a separate buffer.
//! All views must live on `dev`; work is queued on its stream (nothing synchronizes).
//!
//! Kernel paths (`KernelPath`, `Auto` picks; each can be forced, e.g. by tests):
//! - `Staged { ctas }`: a row is split over `ctas` CTAs of 256 threads (a thread-block cluster
//!   when > 1, sm_90 only, up to 16), each holding its slice of both rows in shared memory (and,
//!   from the second pass on, the gradient's per-element part in place of the teacher's: 6 bytes
//!   per bf16 entry, 8 per f32), so HBM traffic per row is the floor: V·sizeof(T) read twice,
//!   V·sizeof(T) written once. The grid is persistent: as many clusters as fit on the GPU at once
//!   (the driver's occupancy calculator) walk the rows. `ctas: 0` picks the count: on sm_90,
//!   from ⌈row's shared memory / 64 KiB⌉ (about 64 KiB each, 3 CTAs per SM) up to 16, the count
//!   that keeps the most CTAs resident (clusters pack into GPCs unevenly); below sm_90, 1 if it
//!   fits (on an A100, 163 KiB per CTA: V up to about 27K in bf16, 20K in f32; larger rows take
//!   `Rows`).
//! - `Rows`: one 512-thread block per row, three passes over global memory (2 + 2 + 3 row
//!   transfers; the re-reads hit L2 only while the rows in flight fit in it). Any V, any GPU.
//! - `Warps`: the same with one warp per row, 8 rows per block: for small V (Auto: V ≤ 1024).
//!
//! Each kernel has a 16-byte-access variant (used when s, t, grad and ld·sizeof(T) are 16-byte
//! aligned) and a scalar one (any alignment, e.g. odd V with ld = V).

use super::abi::{
    DivergenceParams, DIV_FKL, DIV_JSD, DIV_PREFETCH_L2, DIV_RKL, DIV_SKEW_FKL, DIV_SKEW_RKL, DIV_TVD,
};
use super::device::{cuda_err, CudaDevice};
use crate::backend::{DType, Divergence};
use crate::error::{shape_err, Error, Result};
use cudarc::driver::sys::{
    self, CUdevice_attribute, CUfunction_attribute, CUlaunchAttribute, CUlaunchAttributeID, CUlaunchConfig,
};
use cudarc::driver::{CudaFunction, CudaView, CudaViewMut, DevicePtr, DevicePtrMut, DeviceRepr};
use half::bf16;
use std::collections::{HashMap, HashSet};
use std::ffi::c_void;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock};

const MODULE: &str = "divergence";
/// Threads per CTA of each kernel (DIV_STAGED_THREADS, DIV_ROWS_THREADS, 32·DIV_WARPS_PER_BLOCK).
const STAGED_THREADS: u32 = 256;
const ROWS_THREADS: u32 = 512;
const WARPS_PER_BLOCK: u32 = 8;
/// Auto: rows up to this many entries take the warp-per-row kernel.
const WARPS_MAX_VOCAB: usize = 1024;
/// Auto on sm_90: shared memory per CTA to aim for (3 CTAs per SM).
const STAGED_TARGET_SMEM: usize = 64 << 10;
const MAX_CLUSTER: u32 = 16;
/// Shared memory the staged kernel declares statically (reduction scratch and cluster slots),
/// rounded up; the dynamic slice must fit in the opt-in maximum minus this.
const STAGED_STATIC_SMEM: usize = 1024;

/// An element type of the divergence kernels.
pub trait DivElem: DeviceRepr + Copy + 'static {
    const DTYPE: DType;
}
impl DivElem for f32 {
    const DTYPE: DType = DType::F32;
}
impl DivElem for bf16 {
    const DTYPE: DType = DType::BF16;
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KernelPath {
    #[default]
    Auto,
    /// One warp per row.
    Warps,
    /// One block per row, three passes over global memory.
    Rows,
    /// `ctas` CTAs per row (a cluster when > 1), the row staged in shared memory; 0 = pick.
    Staged { ctas: u32 },
}

#[derive(Clone, Copy, Debug)]
pub struct DivergenceLaunch {
    pub rows: usize,
    pub vocab: usize,
    /// Row stride (elements) of student, teacher and gradient; ≥ vocab.
    pub ld: usize,
    pub divergence: Divergence,
    /// The loss temperature τ (> 0).
    pub temperature: f32,
    /// Multiplies the loss and the gradient (e.g. 1 / completion tokens in the step).
    pub scale: f32,
    pub path: KernelPath,
}

/// Where the gradient goes; see the module documentation.
pub enum StudentGrad<'a, T> {
    LossOnly(CudaView<'a, T>),
    InPlace(CudaViewMut<'a, T>),
    Into { student: CudaView<'a, T>, grad: CudaViewMut<'a, T> },
}

/// Two switches of the staged kernel, process-wide, for benchmarks that compare them; both are on
/// unless `set_staged_tuning` turns them off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StagedTuning {
    /// Launch only as many clusters as can be resident and let each walk several rows (otherwise
    /// one cluster per row).
    pub persistent: bool,
    /// sm_90, 16-byte-aligned rows: prefetch a cluster's next row into L2 while it works on one.
    pub l2_prefetch: bool,
}

impl Default for StagedTuning {
    fn default() -> Self {
        StagedTuning { persistent: true, l2_prefetch: true }
    }
}

static TUNING: AtomicU8 = AtomicU8::new(0b11);

/// Sets the staged kernel's switches for every later launch in this process.
pub fn set_staged_tuning(t: StagedTuning) {
    TUNING.store(u8::from(t.persistent) | u8::from(t.l2_prefetch) << 1, Ordering::Relaxed);
}

pub fn staged_tuning() -> StagedTuning {
    let b = TUNING.load(Ordering::Relaxed);
    StagedTuning { persistent: b & 1 != 0, l2_prefetch: b & 2 != 0 }
}

/// What a launch ran: the kernel, the resolved path, and its configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchPlan {
    pub kernel: &'static str,
    /// `Auto` resolved, with `ctas` filled in for `Staged`.
    pub path: KernelPath,
    pub vectorized: bool,
    pub grid: u32,
    pub block: u32,
    /// Dynamic shared memory per CTA.
    pub smem_bytes: u32,
    /// Elements of a row per CTA (`Staged`), the whole row otherwise.
    pub chunk: usize,
    /// `Staged`: clusters (CTAs when `ctas` is 1) resident on the GPU at once, which is how many
    /// the persistent grid launches (at most one per row); 0 for the other paths.
    pub resident: u32,
    /// `Staged`: the switches this launch used.
    pub tuning: StagedTuning,
}

impl std::fmt::Display for LaunchPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.path {
            KernelPath::Staged { ctas } => write!(
                f,
                "Staged {ctas} CTA{} per row, {} KiB shared each, {} resident{}{} ({})",
                if ctas == 1 { "" } else { "s" },
                self.smem_bytes.div_ceil(1024),
                self.resident,
                if self.tuning.persistent { "" } else { ", one cluster per row" },
                if self.tuning.l2_prefetch { "" } else { ", no L2 prefetch" },
                self.kernel
            ),
            path => write!(f, "{path:?} ({})", self.kernel),
        }
    }
}

/// (kind, coefficient) of the kernels for a divergence, after validation and TRL's β / α ends.
pub(crate) fn kernel_kind(d: Divergence) -> Result<(i32, f32)> {
    Ok(match d.validate()?.canonical() {
        Divergence::ForwardKl => (DIV_FKL, 0.0),
        Divergence::ReverseKl => (DIV_RKL, 0.0),
        Divergence::Jsd { beta } => (DIV_JSD, beta as f32),
        Divergence::Tvd => (DIV_TVD, 0.0),
        Divergence::SkewForwardKl { alpha } => (DIV_SKEW_FKL, alpha as f32),
        Divergence::SkewReverseKl { alpha } => (DIV_SKEW_RKL, alpha as f32),
    })
}

/// Checks the launch against the buffers' lengths; returns the kernel parameters (ctas/chunk unset).
pub(crate) fn check_launch(
    op: &'static str,
    p: &DivergenceLaunch,
    lens: &[(&str, usize)], // (name, elements) of each (rows, ld) buffer
    row_loss_len: usize,
    mask_len: Option<usize>,
) -> Result<DivergenceParams> {
    let (kind, coef) = kernel_kind(p.divergence)?;
    if !(p.temperature > 0.0 && p.temperature.is_finite()) {
        return Err(Error::Msg(format!("{op}: the temperature must be positive, got {}", p.temperature)));
    }
    if !p.scale.is_finite() {
        return Err(Error::Msg(format!("{op}: the scale must be finite, got {}", p.scale)));
    }
    if p.vocab == 0 || p.ld < p.vocab || p.vocab > i32::MAX as usize || p.rows > i32::MAX as usize {
        return shape_err(op, format!("rows {} vocab {} ld {}: need 1 ≤ vocab ≤ ld", p.rows, p.vocab, p.ld));
    }
    let need = if p.rows == 0 { 0 } else { (p.rows - 1) * p.ld + p.vocab };
    for (name, len) in lens {
        if *len < need {
            return shape_err(
                op,
                format!("{name} has {len} elements, {} rows of stride {} need {need}", p.rows, p.ld),
            );
        }
    }
    if row_loss_len < p.rows {
        return shape_err(op, format!("row_loss has {row_loss_len} elements for {} rows", p.rows));
    }
    if let Some(m) = mask_len.filter(|&m| m < p.rows) {
        return shape_err(op, format!("row mask has {m} elements for {} rows", p.rows));
    }
    Ok(DivergenceParams {
        ld: p.ld as i64,
        rows: p.rows as i32,
        vocab: p.vocab as i32,
        kind,
        coef,
        inv_temp: 1.0 / p.temperature,
        scale: p.scale,
        ctas: 1,
        chunk: p.vocab as i32,
        flags: 0,
    })
}

fn kernel_name(path: KernelPath, vec: bool, dtype: DType) -> &'static str {
    match (path, vec, dtype) {
        (KernelPath::Staged { .. }, true, DType::BF16) => "divergence_staged_vec_bf16",
        (KernelPath::Staged { .. }, false, DType::BF16) => "divergence_staged_scalar_bf16",
        (KernelPath::Staged { .. }, true, _) => "divergence_staged_vec_f32",
        (KernelPath::Staged { .. }, false, _) => "divergence_staged_scalar_f32",
        (KernelPath::Warps, true, DType::BF16) => "divergence_warps_vec_bf16",
        (KernelPath::Warps, false, DType::BF16) => "divergence_warps_scalar_bf16",
        (KernelPath::Warps, true, _) => "divergence_warps_vec_f32",
        (KernelPath::Warps, false, _) => "divergence_warps_scalar_f32",
        (_, true, DType::BF16) => "divergence_rows_vec_bf16",
        (_, false, DType::BF16) => "divergence_rows_scalar_bf16",
        (_, true, _) => "divergence_rows_vec_f32",
        (_, false, _) => "divergence_rows_scalar_f32",
    }
}

/// Dynamic shared memory one CTA of the staged kernel may use on this device.
fn staged_smem_limit(dev: &CudaDevice) -> Result<usize> {
    let optin = dev
        .context()
        .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
        .map_err(cuda_err("reading the shared memory limit"))?;
    Ok((optin.max(0) as usize).saturating_sub(STAGED_STATIC_SMEM))
}

/// Elements per CTA and dynamic shared memory of the staged kernel with `ctas` CTAs per row: per
/// element s, then t replaced by an f32 (Stage<> in kernels/divergence.cu).
fn staged_chunk(vocab: usize, ctas: u32, width: usize, elem: usize) -> (usize, usize) {
    let chunk = vocab.div_ceil(ctas as usize).div_ceil(width) * width;
    (chunk, (chunk * elem).next_multiple_of(16) + chunk * elem.max(4))
}

/// Sets a staged kernel's function attributes once per device: the opt-in shared memory limit,
/// the largest shared memory carve-out, and (sm_90) cluster sizes above 8.
fn prepare_staged(dev: &CudaDevice, name: &'static str, limit: usize) -> Result<CudaFunction> {
    static DONE: OnceLock<Mutex<HashSet<(usize, &'static str)>>> = OnceLock::new();
    let f = dev.function(MODULE, name)?;
    let done = DONE.get_or_init(Default::default);
    let mut done = done.lock().map_err(|_| Error::Msg("divergence kernel table poisoned".into()))?;
    if done.contains(&(dev.ordinal(), name)) {
        return Ok(f);
    }
    let set = |attr: CUfunction_attribute, v: i32| {
        dev.context()
            .bind_to_thread()
            .and_then(|_| f.set_attribute(attr, v))
            .map_err(cuda_err(format!("configuring {name}")))
    };
    set(CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, limit as i32)?;
    set(CUfunction_attribute::CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT, 100)?;
    if dev.compute_capability().0 >= 9 {
        set(CUfunction_attribute::CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED, 1)?;
    }
    done.insert((dev.ordinal(), name));
    Ok(f)
}

/// How many clusters of `ctas` CTAs (CTAs when `ctas` is 1) of the staged kernel with `smem`
/// bytes each can be resident on the GPU at once; 0 when none can be scheduled (the driver's
/// occupancy calculator; answers are cached).
fn staged_resident(dev: &CudaDevice, f: &CudaFunction, name: &'static str, ctas: u32, smem: usize) -> u32 {
    type Key = (usize, &'static str, u32, usize);
    static SEEN: OnceLock<Mutex<HashMap<Key, u32>>> = OnceLock::new();
    let key = (dev.ordinal(), name, ctas, smem);
    let seen = SEEN.get_or_init(Default::default);
    if let Some(&n) = seen.lock().ok().as_ref().and_then(|m| m.get(&key)) {
        return n;
    }
    let mut n: std::ffi::c_int = 0;
    let ok = dev.context().bind_to_thread().is_ok()
        && if ctas <= 1 {
            let sms = dev
                .context()
                .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
                .unwrap_or(0);
            // SAFETY: writes one int; `f` is a loaded function of this context.
            let per_sm = unsafe {
                sys::cuOccupancyMaxActiveBlocksPerMultiprocessor(
                    &mut n,
                    f.cu_function(),
                    STAGED_THREADS as i32,
                    smem,
                )
            };
            n *= sms;
            per_sm.result().is_ok()
        } else {
            // SAFETY: a zeroed attribute is valid plain data; the config only lives for the call.
            let mut attr = unsafe { cluster_attr(ctas) };
            let cfg = launch_config(dev, ctas, STAGED_THREADS, smem as u32, ctas, &mut attr);
            // SAFETY: writes one int; `f` is a loaded function of this context.
            unsafe { sys::cuOccupancyMaxActiveClusters(&mut n, f.cu_function(), &cfg) }.result().is_ok()
        };
    let n = if ok { n.max(0) as u32 } else { 0 };
    if let Ok(mut m) = seen.lock() {
        m.insert(key, n);
    }
    n
}

/// The launch configuration `p.path` resolves to on `dev` for element type `dtype` (and, for the
/// staged kernel, its function configured for it).
pub fn plan(dev: &CudaDevice, p: &DivergenceLaunch, dtype: DType, vectorized: bool) -> Result<LaunchPlan> {
    const OP: &str = "divergence (cuda)";
    let elem = dtype.size_in_bytes();
    let width = if vectorized { 16 / elem } else { 1 };
    let (major, minor) = dev.compute_capability();
    let cluster_ok = major >= 9;
    let limit = staged_smem_limit(dev)?;
    let tuning = staged_tuning();
    let staged_name = kernel_name(KernelPath::Staged { ctas: 1 }, vectorized, dtype);
    // Ok(None) when the slice does not fit or the cluster cannot be scheduled; else (chunk, smem,
    // resident clusters).
    let staged = |ctas: u32| -> Result<Option<(usize, usize, u32)>> {
        let (chunk, smem) = staged_chunk(p.vocab, ctas, width, elem);
        if smem > limit {
            return Ok(None);
        }
        let f = prepare_staged(dev, staged_name, limit)?;
        let resident = staged_resident(dev, &f, staged_name, ctas, smem);
        Ok((resident > 0).then_some((chunk, smem, resident)))
    };
    let pick_ctas = || -> Result<Option<u32>> {
        if !cluster_ok {
            return Ok(staged(1)?.map(|_| 1));
        }
        // From the fewest CTAs that stay near the target, the count that keeps the most CTAs
        // resident: clusters pack into GPCs, so e.g. 16 can beat 14 (the fewest on ties).
        let (_, row_smem) = staged_chunk(p.vocab, 1, width, elem);
        let want = row_smem.div_ceil(STAGED_TARGET_SMEM).clamp(1, MAX_CLUSTER as usize) as u32;
        let mut best: Option<(u64, u32)> = None;
        for c in want..=MAX_CLUSTER {
            if let Some((_, _, resident)) = staged(c)? {
                let ctas_resident = resident as u64 * c as u64;
                if best.is_none_or(|(r, _)| ctas_resident > r) {
                    best = Some((ctas_resident, c));
                }
            }
        }
        Ok(best.map(|(_, c)| c))
    };
    // Auto's count depends on the device, the kernel and V only: decided once, then looked up.
    type AutoKey = (usize, &'static str, usize);
    static AUTO: OnceLock<Mutex<HashMap<AutoKey, Option<u32>>>> = OnceLock::new();
    let auto_key = (dev.ordinal(), staged_name, p.vocab);
    let auto_ctas = || -> Result<Option<u32>> {
        let table = AUTO.get_or_init(Default::default);
        if let Some(&c) = table.lock().ok().as_ref().and_then(|m| m.get(&auto_key)) {
            return Ok(c);
        }
        let c = pick_ctas()?;
        if let Ok(mut m) = table.lock() {
            m.insert(auto_key, c);
        }
        Ok(c)
    };
    let path = match p.path {
        KernelPath::Auto if p.vocab <= WARPS_MAX_VOCAB => KernelPath::Warps,
        KernelPath::Auto => auto_ctas()?.map_or(KernelPath::Rows, |ctas| KernelPath::Staged { ctas }),
        KernelPath::Staged { ctas: 0 } => match auto_ctas()? {
            Some(ctas) => KernelPath::Staged { ctas },
            None => {
                return Err(Error::Msg(format!(
                    "{OP}: a row of {} {dtype} entries does not fit in the shared memory of {} CTAs \
                     ({limit} bytes each): use KernelPath::Rows",
                    p.vocab,
                    if cluster_ok { MAX_CLUSTER } else { 1 }
                )))
            }
        },
        other => other,
    };
    let rows = p.rows as u64;
    let (grid, block, smem, chunk, resident) = match path {
        KernelPath::Warps => (rows.div_ceil(WARPS_PER_BLOCK as u64), 32 * WARPS_PER_BLOCK, 0, p.vocab, 0),
        KernelPath::Rows => (rows, ROWS_THREADS, 0, p.vocab, 0),
        KernelPath::Staged { ctas } => {
            if ctas > 1 && !cluster_ok {
                return Err(Error::Msg(format!(
                    "{OP}: {ctas} CTAs per row need thread-block clusters (sm_90+); this GPU is sm_{major}{minor}"
                )));
            }
            if ctas > MAX_CLUSTER {
                return Err(Error::Msg(format!(
                    "{OP}: at most {MAX_CLUSTER} CTAs per row, asked for {ctas}"
                )));
            }
            let Some((chunk, smem, resident)) = staged(ctas)? else {
                let (chunk, smem) = staged_chunk(p.vocab, ctas, width, elem);
                return Err(Error::Msg(if smem > limit {
                    format!(
                        "{OP}: a slice of {chunk} {dtype} entries of both rows needs {smem} bytes of \
                         shared memory, this GPU allows {limit} per CTA: use more CTAs per row or \
                         KernelPath::Rows"
                    )
                } else if ctas == 1 {
                    format!(
                        "{OP}: a CTA with {smem} bytes of shared memory cannot be scheduled on this \
                         GPU (the occupancy calculator says none fits): use KernelPath::Rows"
                    )
                } else {
                    format!(
                        "{OP}: clusters of {ctas} CTAs with {smem} bytes of shared memory each cannot \
                         be scheduled on this GPU: use fewer CTAs per row"
                    )
                }));
            };
            // Persistent: one cluster per row at most, as many as can be resident.
            let clusters = if tuning.persistent { rows.min(resident as u64).max(1) } else { rows };
            (clusters * ctas as u64, STAGED_THREADS, smem, chunk, resident)
        }
        KernelPath::Auto => unreachable!("resolved above"),
    };
    if grid > i32::MAX as u64 {
        return shape_err(OP, format!("{} rows need {grid} blocks, more than a grid holds", p.rows));
    }
    Ok(LaunchPlan {
        kernel: kernel_name(path, vectorized, dtype),
        path,
        vectorized,
        grid: grid as u32,
        block,
        smem_bytes: smem as u32,
        chunk,
        resident,
        tuning,
    })
}

/// The cluster-dimension launch attribute for `ctas` CTAs along x.
///
/// # Safety
/// Only builds plain data (a zeroed union is a valid value).
unsafe fn cluster_attr(ctas: u32) -> CUlaunchAttribute {
    let mut attr: CUlaunchAttribute = std::mem::zeroed();
    attr.id = CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
    attr.value.clusterDim.x = ctas;
    attr.value.clusterDim.y = 1;
    attr.value.clusterDim.z = 1;
    attr
}

/// Launches `f` with a cluster of `cluster` CTAs along x when > 1 (cudarc's builder cannot).
///
/// # Safety
/// `args` must point at values matching the kernel's parameters, alive until this returns, and
/// the device memory they name must stay valid until the kernel has run.
pub(crate) unsafe fn launch_raw(
    dev: &CudaDevice,
    f: &CudaFunction,
    grid: u32,
    block: u32,
    smem: u32,
    cluster: u32,
    args: &mut [*mut c_void],
) -> std::result::Result<(), cudarc::driver::DriverError> {
    dev.context().bind_to_thread()?;
    let mut attr = cluster_attr(cluster);
    let cfg = launch_config(dev, grid, block, smem, cluster, &mut attr);
    sys::cuLaunchKernelEx(&cfg, f.cu_function(), args.as_mut_ptr(), std::ptr::null_mut()).result()
}

/// A 1-D launch on `dev`'s stream, with `attr` (the cluster dimension) attached when `cluster` > 1;
/// the config points at `attr`, which must outlive its use.
fn launch_config(
    dev: &CudaDevice,
    grid: u32,
    block: u32,
    smem: u32,
    cluster: u32,
    attr: &mut CUlaunchAttribute,
) -> CUlaunchConfig {
    CUlaunchConfig {
        gridDimX: grid,
        gridDimY: 1,
        gridDimZ: 1,
        blockDimX: block,
        blockDimY: 1,
        blockDimZ: 1,
        sharedMemBytes: smem,
        hStream: dev.stream().cu_stream(),
        attrs: attr,
        numAttrs: u32::from(cluster > 1),
    }
}

fn aligned(ptr: u64) -> bool {
    ptr % 16 == 0
}

/// What both launchers (fused and unfused) need once the buffers are checked: the kernel
/// parameters and raw device pointers (0 for an absent gradient or mask).
pub(crate) struct RawLaunch {
    pub params: DivergenceParams,
    pub s: u64,
    pub g: u64,
    pub t: u64,
    pub m: u64,
    pub l: u64,
}

/// Checks every buffer against the (rows, ld) extent of `p` and takes the raw pointers. Dropping
/// cudarc's synchronization guards at once is sound: event tracking is off on every gkd context
/// (one stream per device, see `CudaDevice::get`), so they record nothing.
pub(crate) fn prepare<T: DivElem>(
    op: &'static str,
    dev: &CudaDevice,
    p: &DivergenceLaunch,
    mut student: StudentGrad<'_, T>,
    teacher: &CudaView<'_, T>,
    row_mask: Option<&CudaView<'_, u8>>,
    row_loss: &mut CudaViewMut<'_, f32>,
) -> Result<RawLaunch> {
    let stream = dev.stream();
    let (s_len, g_len) = match &student {
        StudentGrad::LossOnly(s) => (s.len(), None),
        StudentGrad::InPlace(s) => (s.len(), Some(s.len())),
        StudentGrad::Into { student, grad } => (student.len(), Some(grad.len())),
    };
    let mut lens = vec![("student", s_len), ("teacher", teacher.len())];
    lens.extend(g_len.map(|l| ("grad", l)));
    let params = check_launch(op, p, &lens, row_loss.len(), row_mask.map(|m| m.len()))?;
    let (s, g) = match &mut student {
        StudentGrad::LossOnly(s) => (s.device_ptr(stream).0, 0),
        StudentGrad::InPlace(s) => {
            let sp = s.device_ptr_mut(stream).0;
            (sp, sp)
        }
        StudentGrad::Into { student, grad } => (student.device_ptr(stream).0, grad.device_ptr_mut(stream).0),
    };
    Ok(RawLaunch {
        params,
        s,
        g,
        t: teacher.device_ptr(stream).0,
        m: row_mask.map_or(0, |m| m.device_ptr(stream).0),
        l: row_loss.device_ptr_mut(stream).0,
    })
}

/// Loss (and gradient) of `p.divergence` for every row; see the module documentation.
pub fn divergence_fwd_bwd<T: DivElem>(
    dev: &CudaDevice,
    p: &DivergenceLaunch,
    student: StudentGrad<'_, T>,
    teacher: &CudaView<'_, T>,
    row_mask: Option<&CudaView<'_, u8>>,
    row_loss: &mut CudaViewMut<'_, f32>,
) -> Result<LaunchPlan> {
    const OP: &str = "divergence (cuda)";
    let RawLaunch { mut params, s: s_ptr, g: g_ptr, t: t_ptr, m: m_ptr, l: l_ptr } =
        prepare(OP, dev, p, student, teacher, row_mask, row_loss)?;
    let row_bytes = (p.ld * std::mem::size_of::<T>()) as u64;
    let vectorized =
        aligned(s_ptr) && aligned(t_ptr) && (g_ptr == 0 || aligned(g_ptr)) && row_bytes % 16 == 0;
    let plan = plan(dev, p, T::DTYPE, vectorized)?;
    if p.rows == 0 {
        return Ok(plan);
    }
    if let KernelPath::Staged { ctas } = plan.path {
        params.ctas = ctas as i32;
        params.chunk = plan.chunk as i32;
        params.flags = if plan.tuning.l2_prefetch { DIV_PREFETCH_L2 } else { 0 };
    }
    let f = dev.function(MODULE, plan.kernel)?; // configured by plan() when staged
    let cluster = match plan.path {
        KernelPath::Staged { ctas } => ctas,
        _ => 1,
    };
    let (mut s_arg, mut t_arg, mut m_arg, mut g_arg, mut l_arg) = (s_ptr, t_ptr, m_ptr, g_ptr, l_ptr);
    let mut args: [*mut c_void; 6] = [
        &mut s_arg as *mut u64 as *mut c_void,
        &mut t_arg as *mut u64 as *mut c_void,
        &mut m_arg as *mut u64 as *mut c_void,
        &mut g_arg as *mut u64 as *mut c_void,
        &mut l_arg as *mut u64 as *mut c_void,
        &mut params as *mut DivergenceParams as *mut c_void,
    ];
    // SAFETY: the arguments match divergence_<path>_<vec|scalar>_<dtype>(s, t, mask, g, row_loss,
    // params); check_launch verified every buffer holds the (rows, ld) extent the kernel touches;
    // the views borrow their buffers for this call, and the stream orders later frees after the kernel.
    unsafe { launch_raw(dev, &f, plan.grid, plan.block, plan.smem_bytes, cluster, &mut args) }
        .map_err(cuda_err(format!("{OP}: launching {}", plan.kernel)))?;
    Ok(plan)
}
