//! One GPU: its context, the stream everything runs on, cuBLAS handles, and loaded kernels.

use super::{modules, probe};
use crate::backend::Device;
use crate::error::{Error, Result};
use cudarc::cublas::CudaBlas;
use cudarc::cublaslt::CudaBlasLT;
use cudarc::driver::{
    sys::CUresult, CudaContext, CudaEvent, CudaFunction, CudaModule, CudaSlice, CudaStream, DeviceRepr,
    DriverError, ValidAsZeroBits,
};
use cudarc::nvrtc::Ptx;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

pub struct CudaDevice {
    ordinal: usize,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    compute_capability: (i32, i32),
    multiprocessors: i32,
    blas: OnceLock<std::result::Result<Arc<CudaBlas>, String>>,
    blaslt: OnceLock<std::result::Result<Arc<CudaBlasLT>, String>>,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    functions: Mutex<HashMap<(&'static str, &'static str), CudaFunction>>,
    /// The default memory pool every buffer comes from (None where the driver has no pools).
    pool: Option<PoolHandle>,
    /// Vectors of ones per element type (the bias products), grown on demand and kept.
    ones: Mutex<HashMap<std::any::TypeId, Arc<dyn std::any::Any + Send + Sync>>>,
    /// cuBLASLt's scratch, allocated on first use and kept.
    lt_workspace: Mutex<Option<Arc<CudaSlice<u8>>>>,
    /// While `time_gemms` is on: a (start, end) event pair around every cuBLAS product.
    gemm_events: Mutex<Option<Vec<(CudaEvent, CudaEvent)>>>,
}

/// A `CUmemoryPool`: a driver handle, valid as long as the context.
struct PoolHandle(cudarc::driver::sys::CUmemoryPool);
// SAFETY: a memory pool handle may be used from any thread (the driver synchronizes).
unsafe impl Send for PoolHandle {}
unsafe impl Sync for PoolHandle {}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaDevice(cuda:{})", self.ordinal)
    }
}

/// Maps a driver error to ours, naming what was being done.
pub(crate) fn cuda_err(context: impl Into<String>) -> impl FnOnce(DriverError) -> Error {
    let context = context.into();
    move |e| Error::Cuda { context, detail: e.to_string() }
}

static POISON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether every later uninitialized allocation is filled with 0xFF bytes (NaN) first: tests turn
/// it on, so that an output element a kernel does not write is caught.
pub fn set_poison_allocations(on: bool) {
    POISON.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// What the device's stream-ordered memory pool holds, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// In live buffers now, and at most since the last `reset_peak_memory`.
    pub used: u64,
    pub used_peak: u64,
    /// Taken from the driver (live buffers plus what the pool keeps cached for reuse).
    pub reserved: u64,
    pub reserved_peak: u64,
}

/// The caching allocator: every buffer comes from the device's default stream-ordered memory
/// pool (`cuMemAllocAsync` on the one stream), and a freed buffer goes back to that pool, not to
/// the driver (the release threshold is raised to "never"), so a steady-state training step
/// reuses the previous step's memory without a device allocation or a synchronization.
fn keep_pool_memory(ctx: &CudaContext) -> Result<Option<cudarc::driver::sys::CUmemoryPool>> {
    use cudarc::driver::sys;
    if !ctx.has_async_alloc() {
        return Ok(None);
    }
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    // SAFETY: `pool` is a valid out-pointer; the device handle comes from a live context.
    unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()) }
        .result()
        .map_err(cuda_err("getting the device's memory pool"))?;
    let mut never: u64 = u64::MAX;
    // SAFETY: the release threshold is a u64 attribute of a valid pool.
    unsafe {
        sys::cuMemPoolSetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut never as *mut u64).cast(),
        )
    }
    .result()
    .map_err(cuda_err("keeping freed memory in the pool"))?;
    Ok(Some(pool))
}

impl CudaDevice {
    /// The device `cuda:ordinal`, created on first use and shared afterwards.
    pub fn get(ordinal: usize) -> Result<Arc<CudaDevice>> {
        static DEVICES: OnceLock<Mutex<HashMap<usize, Arc<CudaDevice>>>> = OnceLock::new();
        let map = DEVICES.get_or_init(Default::default);
        let mut map = map.lock().map_err(|_| Error::Msg("CUDA device table poisoned".into()))?;
        if let Some(d) = map.get(&ordinal) {
            return Ok(d.clone());
        }
        let p = probe::probe();
        if let Some(why) = p.unavailable_reason() {
            return Err(Error::NoCuda(format!("{why}; run with --device cpu")));
        }
        let info = match p.gpus.get(ordinal) {
            Some(Ok(info)) => info.clone(),
            Some(Err(e)) => return Err(Error::NoCuda(e.clone())),
            None => {
                return Err(Error::NoCuda(format!(
                    "cuda:{ordinal} does not exist: this machine has {} GPU(s)",
                    p.gpus.len()
                )))
            }
        };
        let ctx =
            CudaContext::new(ordinal).map_err(cuda_err(format!("creating a context on cuda:{ordinal}")))?;
        // One stream per device: cudarc's cross-stream event tracking is not needed. It is a
        // created stream, not the legacy default one, which cannot be captured into a CUDA graph.
        // SAFETY: no other stream of this context is ever used.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(cuda_err(format!("creating a stream on cuda:{ordinal}")))?;
        let pool = keep_pool_memory(&ctx)?.map(PoolHandle);
        let dev = Arc::new(CudaDevice {
            ordinal,
            ctx,
            stream,
            compute_capability: info.compute_capability,
            multiprocessors: info.multiprocessors,
            blas: OnceLock::new(),
            blaslt: OnceLock::new(),
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
            pool,
            ones: Mutex::new(HashMap::new()),
            lt_workspace: Mutex::new(None),
            gemm_events: Mutex::new(None),
        });
        map.insert(ordinal, dev.clone());
        Ok(dev)
    }

    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    pub fn device(&self) -> Device {
        Device::Cuda(self.ordinal)
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    pub fn compute_capability(&self) -> (i32, i32) {
        self.compute_capability
    }

    pub fn multiprocessors(&self) -> i32 {
        self.multiprocessors
    }

    /// The memory pool's current and peak use (zeros where the driver has no memory pools).
    pub fn memory(&self) -> Result<MemoryStats> {
        use cudarc::driver::sys::{cuMemPoolGetAttribute, CUmemPool_attribute as A};
        let Some(pool) = &self.pool else { return Ok(MemoryStats::default()) };
        let get = |attr: A| -> Result<u64> {
            let mut v: u64 = 0;
            // SAFETY: these four attributes are u64 values of a valid pool.
            unsafe { cuMemPoolGetAttribute(pool.0, attr, (&mut v as *mut u64).cast()) }
                .result()
                .map_err(cuda_err("reading the memory pool's statistics"))?;
            Ok(v)
        };
        Ok(MemoryStats {
            used: get(A::CU_MEMPOOL_ATTR_USED_MEM_CURRENT)?,
            used_peak: get(A::CU_MEMPOOL_ATTR_USED_MEM_HIGH)?,
            reserved: get(A::CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT)?,
            reserved_peak: get(A::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH)?,
        })
    }

    /// Starts the peaks of `memory()` again from the current use.
    pub fn reset_peak_memory(&self) -> Result<()> {
        use cudarc::driver::sys::{cuMemPoolSetAttribute, CUmemPool_attribute as A};
        let Some(pool) = &self.pool else { return Ok(()) };
        for attr in [A::CU_MEMPOOL_ATTR_USED_MEM_HIGH, A::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH] {
            let mut zero: u64 = 0;
            // SAFETY: the high-water marks are u64 attributes that may only be set to 0.
            unsafe { cuMemPoolSetAttribute(pool.0, attr, (&mut zero as *mut u64).cast()) }
                .result()
                .map_err(cuda_err("resetting the memory pool's peaks"))?;
        }
        Ok(())
    }

    /// Starts timing every cuBLAS product on this device (benchmarks: the GEMMs' share of a
    /// step), forgetting earlier timings.
    pub fn time_gemms(&self) -> Result<()> {
        *self.gemm_events.lock().map_err(|_| Error::Msg("GEMM timer poisoned".into()))? = Some(Vec::new());
        Ok(())
    }

    /// Stops timing products; the milliseconds they took since `time_gemms` and their count.
    pub fn gemm_time(&self) -> Result<(f64, usize)> {
        let events = self.gemm_events.lock().map_err(|_| Error::Msg("GEMM timer poisoned".into()))?.take();
        let events = events.unwrap_or_default();
        self.synchronize()?;
        let mut ms = 0.0;
        for (a, b) in &events {
            ms += a.elapsed_ms(b).map_err(cuda_err("GEMM timing"))? as f64;
        }
        Ok((ms, events.len()))
    }

    /// Runs `f` (one product), between timing events while `time_gemms` is on.
    pub(crate) fn timed_gemm(&self, f: impl FnOnce() -> Result<()>) -> Result<()> {
        let mut guard = self.gemm_events.lock().map_err(|_| Error::Msg("GEMM timer poisoned".into()))?;
        let Some(events) = guard.as_mut() else {
            drop(guard);
            return f();
        };
        let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let a = self.ctx.new_event(flags).map_err(cuda_err("GEMM timing event"))?;
        let b = self.ctx.new_event(flags).map_err(cuda_err("GEMM timing event"))?;
        a.record(&self.stream).map_err(cuda_err("GEMM timing event"))?;
        f()?;
        b.record(&self.stream).map_err(cuda_err("GEMM timing event"))?;
        events.push((a, b));
        Ok(())
    }

    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(cuda_err("synchronize"))
    }

    /// The cuBLAS handle bound to this device's stream (created on first use).
    pub fn blas(&self) -> Result<Arc<CudaBlas>> {
        self.blas
            .get_or_init(|| {
                // SAFETY: only tries to dlopen libcublas.
                if !unsafe { cudarc::cublas::sys::is_culib_present() } {
                    return Err("libcublas not found: add the CUDA libraries to LD_LIBRARY_PATH \
                                (e.g. /usr/local/cuda/lib64)"
                        .into());
                }
                CudaBlas::new(self.stream.clone()).map(Arc::new).map_err(|e| format!("cuBLAS: {e}"))
            })
            .clone()
            .map_err(Error::NoCuda)
    }

    /// The cuBLASLt handle bound to this device's stream (created on first use).
    pub fn blaslt(&self) -> Result<Arc<CudaBlasLT>> {
        self.blaslt
            .get_or_init(|| {
                // SAFETY: only tries to dlopen libcublasLt.
                if !unsafe { cudarc::cublaslt::sys::is_culib_present() } {
                    return Err("libcublasLt not found: add the CUDA libraries to LD_LIBRARY_PATH \
                                (e.g. /usr/local/cuda/lib64)"
                        .into());
                }
                CudaBlasLT::new(self.stream.clone()).map(Arc::new).map_err(|e| format!("cuBLASLt: {e}"))
            })
            .clone()
            .map_err(Error::NoCuda)
    }

    /// Kernel `name` of module `kernels/<module>.cu`, loading the module on first use.
    pub fn function(&self, module: &'static str, name: &'static str) -> Result<CudaFunction> {
        let mut fns = self.functions.lock().map_err(|_| Error::Msg("kernel table poisoned".into()))?;
        if let Some(f) = fns.get(&(module, name)) {
            return Ok(f.clone());
        }
        let m = self.module(module)?;
        let f = m.load_function(name).map_err(cuda_err(format!("loading kernel {name} from {module}.cu")))?;
        fns.insert((module, name), f.clone());
        Ok(f)
    }

    /// Load (and, without a fatbin, compile with NVRTC) one embedded module.
    pub fn module(&self, module: &'static str) -> Result<Arc<CudaModule>> {
        let mut mods = self.modules.lock().map_err(|_| Error::Msg("module table poisoned".into()))?;
        if let Some(m) = mods.get(module) {
            return Ok(m.clone());
        }
        let em = modules::find(module)
            .ok_or_else(|| Error::Msg(format!("no kernel module `{module}` in this build")))?;
        let image = match em.fatbin {
            Some(bytes) => Ptx::from_binary(bytes.to_vec()),
            None => modules::nvrtc_ptx(em, self.compute_capability)?,
        };
        let m = self.ctx.load_module(image).map_err(cuda_err(format!("loading module {module}.cu")))?;
        mods.insert(module, m.clone());
        Ok(m)
    }

    fn alloc_err(&self, bytes: usize, context: &str) -> impl FnOnce(DriverError) -> Error + '_ {
        let context = context.to_string();
        move |e| {
            if e.0 == CUresult::CUDA_ERROR_OUT_OF_MEMORY {
                let in_use = self.memory().map(|m| m.used).unwrap_or(0);
                Error::OutOfMemory { bytes, in_use, device: self.device().to_string(), context }
            } else {
                Error::Cuda { context, detail: e.to_string() }
            }
        }
    }

    /// `n` zeros of `T`, at least one element (the driver refuses empty allocations).
    pub fn zeros_of<T: DeviceRepr + ValidAsZeroBits>(&self, n: usize, context: &str) -> Result<CudaSlice<T>> {
        let bytes = n.max(1) * std::mem::size_of::<T>();
        self.stream.alloc_zeros::<T>(n.max(1)).map_err(self.alloc_err(bytes, context))
    }

    /// A buffer of `n` elements (at least one) whose contents are undefined until written. With
    /// `set_poison_allocations(true)` (tests) every byte is 0xFF first: NaN in f32, bf16 and f16,
    /// so an element a kernel forgets to write shows.
    ///
    /// # Safety
    /// The caller must write every element before any is read.
    pub unsafe fn alloc_of<T: DeviceRepr>(&self, n: usize, context: &str) -> Result<CudaSlice<T>> {
        let bytes = n.max(1) * std::mem::size_of::<T>();
        let mut s = self.stream.alloc::<T>(n.max(1)).map_err(self.alloc_err(bytes, context))?;
        if POISON.load(std::sync::atomic::Ordering::Relaxed) {
            self.fill_nan(&mut s)?;
        }
        Ok(s)
    }

    /// Every byte of `s` 0xFF: NaN in f32, bf16 and f16 (outputs a kernel must overwrite).
    pub fn fill_nan<T>(&self, s: &mut impl cudarc::driver::DevicePtrMut<T>) -> Result<()> {
        let bytes = cudarc::driver::DeviceSlice::num_bytes(s);
        let (ptr, _guard) = s.device_ptr_mut(&self.stream);
        // SAFETY: `ptr` addresses `bytes` bytes of a live allocation of this stream.
        unsafe { cudarc::driver::result::memset_d8_async(ptr, 0xFF, bytes, self.stream.cu_stream()) }
            .map_err(cuda_err("filling a buffer with NaN"))
    }

    /// cuBLASLt's scratch (`lt::WORKSPACE_BYTES`), allocated on first use and kept.
    pub(crate) fn lt_workspace(&self) -> Result<Arc<CudaSlice<u8>>> {
        let mut w = self.lt_workspace.lock().map_err(|_| Error::Msg("cuBLASLt workspace poisoned".into()))?;
        if let Some(ws) = &*w {
            return Ok(ws.clone());
        }
        let ws = Arc::new(self.zeros_of::<u8>(super::lt::WORKSPACE_BYTES, "the cuBLASLt workspace")?);
        *w = Some(ws.clone());
        Ok(ws)
    }

    /// At least `n` ones of `T`, made once per size class and kept (no upload per call).
    pub fn ones_of<T>(&self, n: usize, one: T, context: &str) -> Result<Arc<CudaSlice<T>>>
    where
        T: DeviceRepr + ValidAsZeroBits + Clone + Send + Sync + 'static,
    {
        let mut map = self.ones.lock().map_err(|_| Error::Msg("ones cache poisoned".into()))?;
        let key = std::any::TypeId::of::<T>();
        if let Some(s) = map.get(&key).and_then(|a| a.clone().downcast::<CudaSlice<T>>().ok()) {
            if s.len() >= n {
                return Ok(s);
            }
        }
        let s = Arc::new(self.upload_of(&vec![one; n.max(1).next_power_of_two()], context)?);
        map.insert(key, s.clone());
        Ok(s)
    }

    /// A copy of host data on the device (at least one element).
    pub fn upload_of<T: DeviceRepr + ValidAsZeroBits>(&self, v: &[T], context: &str) -> Result<CudaSlice<T>> {
        if v.is_empty() {
            return self.zeros_of(1, context);
        }
        let bytes = std::mem::size_of_val(v);
        self.stream.clone_htod(v).map_err(self.alloc_err(bytes, context))
    }

    pub fn download_f32(&self, s: &CudaSlice<f32>) -> Result<Vec<f32>> {
        self.stream.clone_dtoh(s).map_err(cuda_err("copying to the host"))
    }
}
