// Structs passed by value from Rust to the kernels. Defined once, here; the Rust side
// (src/backend/cuda/abi.rs) mirrors them with #[repr(C)], and kernels/abi_check.c exports their
// sizes and offsets so that a test (and every CUDA context at start) checks the two agree.
// Plain C: included by the .cu files, by abi_check.c, and by NVRTC without any system header.
#ifndef GKD_ABI_H
#define GKD_ABI_H

// LayerNorm / RMSNorm over the last dimension of a (rows, cols) matrix.
typedef struct {
    int rows;
    int cols;
    float eps;
} gkd_norm_params;

// Column reduction of the norm weight gradients: rows are split into `row_chunks` chunks whose
// partial sums land in a (row_chunks, cols) fp32 scratch buffer, then are summed.
typedef struct {
    int rows;
    int cols;
    int row_chunks;
    int rows_per_chunk;
} gkd_norm_wgrad_params;

#endif
