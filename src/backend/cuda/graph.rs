//! CUDA graphs: the work a closure queues on the device's stream, recorded once and replayed with
//! one launch (the decode step of generation: hundreds of small kernels whose launch overhead
//! would otherwise exceed their run time at small batch).
//!
//! What a captured closure may do: launch kernels and library calls on the device's stream,
//! allocate and free through the stream-ordered pool (they become graph memory nodes). What it
//! may not: read anything back, upload from the host, synchronize. The caller runs the closure
//! once eagerly first, so that lazily made things (modules, cuBLAS handles, the cached ones
//! vector, cuBLASLt's workspace) exist before the capture.

use super::device::{cuda_err, CudaDevice};
use crate::error::{Error, Result};
use cudarc::driver::{sys, CudaGraph};

/// A recorded sequence of work, replayed on the stream it was recorded from.
pub struct Graph {
    graph: CudaGraph,
}

impl Graph {
    /// Queues one replay (asynchronous, like any launch).
    pub fn launch(&self) -> Result<()> {
        self.graph.launch().map_err(cuda_err("replaying a CUDA graph"))
    }
}

impl CudaDevice {
    /// Records what `f` queues on the device's stream (nothing runs now). A failure inside `f`,
    /// or work that cannot be captured, is an error; the stream is left out of capture mode.
    pub fn capture(&self, f: impl FnOnce() -> Result<()>) -> Result<Graph> {
        const OP: &str = "capturing a CUDA graph";
        let stream = self.stream();
        stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(cuda_err(OP))?;
        let recorded = f();
        // The capture always ends, also after a failure, so that the stream works again.
        let ended = stream.end_capture(sys::CUgraphInstantiate_flags(0));
        recorded?;
        match ended.map_err(cuda_err(OP))? {
            Some(graph) => {
                graph.upload().map_err(cuda_err(OP))?;
                Ok(Graph { graph })
            }
            None => Err(Error::Msg(format!("{OP}: the driver recorded an empty graph"))),
        }
    }
}
