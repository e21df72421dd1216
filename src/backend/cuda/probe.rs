//! Is there a usable NVIDIA driver and GPU? Asked once, answered without panicking.
//!
//! cudarc panics when `libcuda` cannot be loaded, so the library's presence is checked first.

use cudarc::driver::{result, sys};
use std::sync::OnceLock;

#[derive(Clone, Debug)]
pub struct GpuInfo {
    pub ordinal: usize,
    pub name: String,
    pub compute_capability: (i32, i32),
    pub total_memory: usize,
    pub multiprocessors: i32,
}

#[derive(Clone, Debug)]
pub struct Probe {
    /// CUDA driver API version (e.g. 13000), or why the driver could not be used.
    pub driver: Result<i32, String>,
    /// One entry per GPU the driver reports: its properties, or why they could not be read.
    pub gpus: Vec<Result<GpuInfo, String>>,
}

impl Probe {
    pub fn usable_devices(&self) -> usize {
        self.gpus.iter().filter(|g| g.is_ok()).count()
    }

    /// Why CUDA cannot be used, when it cannot.
    pub fn unavailable_reason(&self) -> Option<String> {
        match &self.driver {
            Err(e) => Some(e.clone()),
            Ok(_) if self.gpus.is_empty() => Some("the CUDA driver reports no GPU".into()),
            Ok(_) => None,
        }
    }
}

pub fn probe() -> &'static Probe {
    static PROBE: OnceLock<Probe> = OnceLock::new();
    PROBE.get_or_init(run_probe)
}

fn run_probe() -> Probe {
    // SAFETY: only tries to dlopen the driver library under its usual names.
    if !unsafe { sys::is_culib_present() } {
        return Probe {
            driver: Err("no NVIDIA driver found (libcuda.so could not be loaded)".into()),
            gpus: vec![],
        };
    }
    if let Err(e) = result::init() {
        return Probe { driver: Err(format!("the CUDA driver failed to initialize: {e}")), gpus: vec![] };
    }
    let mut version = 0;
    // SAFETY: writes one int.
    let version = match unsafe { sys::cuDriverGetVersion(&mut version) }.result() {
        Ok(()) => version,
        Err(e) => return Probe { driver: Err(format!("cuDriverGetVersion failed: {e}")), gpus: vec![] },
    };
    let count = match result::device::get_count() {
        Ok(n) => n.max(0) as usize,
        Err(e) => return Probe { driver: Err(format!("cuDeviceGetCount failed: {e}")), gpus: vec![] },
    };
    let gpus = (0..count).map(gpu_info).collect();
    Probe { driver: Ok(version), gpus }
}

fn gpu_info(ordinal: usize) -> Result<GpuInfo, String> {
    use sys::CUdevice_attribute::*;
    let err = |what: &str, e: result::DriverError| format!("GPU {ordinal}: {what}: {e}");
    let dev = result::device::get(ordinal as i32).map_err(|e| err("cuDeviceGet", e))?;
    let name = result::device::get_name(dev).map_err(|e| err("name", e))?;
    // SAFETY: `dev` is a valid device handle from cuDeviceGet.
    let attr = |a| unsafe { result::device::get_attribute(dev, a) };
    let major = attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR).map_err(|e| err("capability", e))?;
    let minor = attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR).map_err(|e| err("capability", e))?;
    let sms = attr(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT).map_err(|e| err("SM count", e))?;
    // SAFETY: as above.
    let total = unsafe { result::device::total_mem(dev) }.map_err(|e| err("memory", e))?;
    Ok(GpuInfo {
        ordinal,
        name,
        compute_capability: (major, minor),
        total_memory: total,
        multiprocessors: sms,
    })
}
