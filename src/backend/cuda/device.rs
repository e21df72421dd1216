//! One GPU: its context, the stream everything runs on, cuBLAS handles, and loaded kernels.

use super::{modules, probe};
use crate::backend::Device;
use crate::error::{Error, Result};
use cudarc::cublas::CudaBlas;
use cudarc::cublaslt::CudaBlasLT;
use cudarc::driver::{
    sys::CUresult, CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DeviceRepr, DriverError,
    ValidAsZeroBits,
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
}

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
        // One stream per device: cudarc's cross-stream event tracking is not needed.
        // SAFETY: no other stream of this context is ever used.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
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
                Error::OutOfMemory { bytes, device: self.device().to_string(), context }
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
