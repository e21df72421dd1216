//! Benchmark workloads shared by `gkd bench` and the criterion benches (GPU only).

pub mod cross_entropy;
pub mod divergence;
