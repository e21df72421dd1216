//! The CPU backend: the f32 reference for every op (and f64, for gradient checks).
//!
//! Every function here works on contiguous row-major slices; shapes are written beside each
//! argument. Work is split over rows with rayon; matrix products go through `matrixmultiply`.

mod activation;
mod attention;
mod cross_entropy;
mod embedding;
mod gemm;
mod linear;
mod narrow;
mod norm;
mod real;
mod rope;

pub use activation::{add_fwd, gelu_tanh_bwd, gelu_tanh_fwd, swiglu_bwd, swiglu_fwd};
pub use attention::{attention_bwd, attention_fwd, AttnDims, AttnGrads, AttnOut};
pub use cross_entropy::{cross_entropy_bwd, cross_entropy_fwd, CrossEntropyOut};
pub use embedding::{embedding_bwd, embedding_fwd};
pub use gemm::{matmul, MatmulSpec};
pub use linear::{linear_bwd, linear_fwd, LinearDims, LinearGrads};
pub use narrow::{narrow_cols_bwd, narrow_cols_fwd};
pub use norm::{layernorm_bwd, layernorm_fwd, rmsnorm_bwd, rmsnorm_fwd, NormGrads, NormOut};
pub use real::Real;
pub use rope::{rope_bwd, rope_fwd};
