//! Benchmark workloads shared by `gkd bench` and the criterion benches.

pub mod cross_entropy;
pub mod distill;
pub mod divergence;
pub mod generate;
pub mod train;
