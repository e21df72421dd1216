//! Benchmark workloads shared by `gkd bench` and the criterion benches.

pub mod divergence;
pub mod train;
