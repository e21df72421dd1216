// Structs passed by value from Rust to the kernels, and their constants. Defined once, here: build.rs
// generates the Rust side from this file with bindgen (gkd_* types, GKD_* macros), layout assertions
// included; src/backend/cuda/abi_bindings.rs is that output, checked in for machines without
// libclang: run scripts/regen-abi after editing this file.
// Plain C: included by the .cu files, compiled by NVRTC without any system header, parsed by libclang.
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

// Divergences between the teacher's and the student's next-token distributions, loss and gradient
// per row (kernels/divergence.cu, kernels/divergence_unfused.cu). Student, teacher and gradient
// are (rows, ld) with the first `vocab` entries of each row used.
#define GKD_DIV_FKL 0
#define GKD_DIV_RKL 1
#define GKD_DIV_JSD 2
#define GKD_DIV_TVD 3
#define GKD_DIV_SKEW_FKL 4
#define GKD_DIV_SKEW_RKL 5

typedef struct {
    long long ld;   // row stride in elements, >= vocab
    int rows;       // N
    int vocab;      // V
    int kind;       // GKD_DIV_*; JSD with beta 0 or 1 and skews with alpha 0 arrive as FKL/RKL
    float coef;     // beta of JSD, alpha of the skew divergences, unused otherwise
    float inv_temp; // 1 / loss temperature
    float scale;    // multiplies the loss and the gradient
    int ctas;       // staged kernel: CTAs per row (the cluster size); 1 for the other kernels
    int chunk;      // staged kernel: elements per CTA, a multiple of the vector width
    int flags;      // staged kernel: GKD_DIV_PREFETCH_*; 0 for the other kernels
} gkd_divergence_params;

// Staged kernel, sm_90, 16-byte-aligned rows: while a cluster works on a row, it asks L2 for its
// slice of the next row it will take (cp.async.bulk.prefetch.L2), so that pass 1 reads from L2.
#define GKD_DIV_PREFETCH_L2 1

// Rotary position embedding of a (rows, heads · 2·half) matrix, one position per row
// (kernels/rope.cu): θ_i = position · inv_freq[i] for i < half, the inverse frequencies inline
// (passed by value: no device buffer to upload), computed in double as the CPU reference does.
#define GKD_ROPE_MAX_HALF 128

typedef struct {
    int rows;  // N
    int heads; // H
    int half;  // D/2, at most GKD_ROPE_MAX_HALF
    int pad;   // keeps inv_freq 8-byte aligned on every ABI; unused
    double inv_freq[GKD_ROPE_MAX_HALF];
} gkd_rope_params;

#endif
