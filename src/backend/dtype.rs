//! Element types.

use std::fmt;

/// Element type of a tensor. Floats: `F32` (the CPU reference, GPU master weights and
/// accumulators), `BF16` (GPU weights and activations), `F64` (CPU only: reference computations
/// and gradient checks), `F16` (checkpoints; converted on arrival). Integers: `U32` (token ids,
/// positions, lengths) and `U8` (row masks).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F64,
    BF16,
    F16,
    U32,
    U8,
}

impl DType {
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F64 => 8,
            DType::F32 | DType::U32 => 4,
            DType::BF16 | DType::F16 => 2,
            DType::U8 => 1,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
            DType::U32 => "u32",
            DType::U8 => "u8",
        }
    }

    pub fn is_float(self) -> bool {
        !matches!(self, DType::U32 | DType::U8)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
