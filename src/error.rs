//! The library's error type: every failure says what went wrong and what to do about it.
//!
//! The bottom of the crate's layers: it imports nothing from the crate, so dtypes and devices
//! appear here by name.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op}: {detail}")]
    Shape { op: &'static str, detail: String },

    #[error("{op}: dtype {dtype} is not supported on {device} (supported: {supported})")]
    DType { op: &'static str, dtype: &'static str, device: String, supported: &'static str },

    #[error("{op}: inputs are on different devices ({a} and {b}); move them to one device first")]
    DeviceMismatch { op: &'static str, a: String, b: String },

    #[error("{op} has no {device} implementation yet; run it with --device cpu")]
    Unsupported { op: &'static str, device: String },

    #[error("CUDA is not available: {0}")]
    NoCuda(String),

    #[error("CUDA error in {context}: {detail}")]
    Cuda { context: String, detail: String },

    #[error(
        "out of GPU memory on {device}: {context} needed {} more with {} already in use; lower \
         --batch-size (raising --grad-accum keeps the step's size), shorten the sequences, or use \
         --recompute layers",
        gib(*bytes as u64),
        gib(*in_use)
    )]
    OutOfMemory { bytes: usize, in_use: u64, device: String, context: String },

    #[error("{0}")]
    Msg(String),
}

fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

pub type Result<T> = std::result::Result<T, Error>;

/// Shorthand for a shape error.
pub fn shape_err<T>(op: &'static str, detail: impl Into<String>) -> Result<T> {
    Err(Error::Shape { op, detail: detail.into() })
}
