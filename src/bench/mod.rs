//! Benchmark workloads shared by `gkd bench` and the criterion benches (GPU only).

pub mod divergence;
