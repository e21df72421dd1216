// LayerNorm and RMSNorm over the last dimension, forward and backward, f32 and bf16.
//
//   LayerNorm: y = (x − mean) · rstd · w + b,  rstd = 1/sqrt(var + eps)  (biased variance)
//   RMSNorm:   y = x · rstd · w,               rstd = 1/sqrt(mean(x²) + eps)
// Backward, with x̂ the normalized input and g = dy · w:
//   LayerNorm: dx = rstd · (g − mean(g) − x̂ · mean(g · x̂))
//   RMSNorm:   dx = rstd · (g − x̂ · mean(g · x̂))
//   dw = Σ_rows dy · x̂,  db = Σ_rows dy   (fp32, never rounded to the input dtype)
// Statistics are computed in fp32; mean and rstd are saved in fp32 for the backward pass.
// One warp per row for the row-wise kernels; the weight gradients are a two-stage column sum
// (per-chunk partials in fp32, then a sum over chunks), so no atomics and a deterministic result.
#include "common.cuh"

#define ROWS_PER_BLOCK 8  // warps per 256-thread block, one row each

template <typename T>
__device__ void layernorm_fwd(const T *x,      // (rows, cols)
                              const T *w,      // (cols)
                              const T *b,      // (cols)
                              T *y,            // (rows, cols)
                              float *mean_out, // (rows)
                              float *rstd_out, // (rows)
                              gkd_norm_params p) {
    const int lane = threadIdx.x & 31;
    const long row = (long)blockIdx.x * ROWS_PER_BLOCK + (threadIdx.x >> 5);
    if (row >= p.rows) return;
    const T *xr = x + row * p.cols;
    float s = 0.0f;
    for (int c = lane; c < p.cols; c += 32) s += load_f32(xr, c);
    const float m = warp_sum(s) / p.cols;
    float v = 0.0f;
    for (int c = lane; c < p.cols; c += 32) {
        const float d = load_f32(xr, c) - m;
        v += d * d;
    }
    const float rs = rsqrtf(warp_sum(v) / p.cols + p.eps);
    T *yr = y + row * p.cols;
    for (int c = lane; c < p.cols; c += 32)
        store_f32(yr, c, (load_f32(xr, c) - m) * rs * load_f32(w, c) + load_f32(b, c));
    if (lane == 0) {
        mean_out[row] = m;
        rstd_out[row] = rs;
    }
}

template <typename T>
__device__ void rmsnorm_fwd(const T *x, const T *w, T *y, float *rstd_out, gkd_norm_params p) {
    const int lane = threadIdx.x & 31;
    const long row = (long)blockIdx.x * ROWS_PER_BLOCK + (threadIdx.x >> 5);
    if (row >= p.rows) return;
    const T *xr = x + row * p.cols;
    float s = 0.0f;
    for (int c = lane; c < p.cols; c += 32) {
        const float v = load_f32(xr, c);
        s += v * v;
    }
    const float rs = rsqrtf(warp_sum(s) / p.cols + p.eps);
    T *yr = y + row * p.cols;
    for (int c = lane; c < p.cols; c += 32) store_f32(yr, c, load_f32(xr, c) * rs * load_f32(w, c));
    if (lane == 0) rstd_out[row] = rs;
}

// dx for both norms: `mean` is null for RMSNorm (x̂ = x · rstd, no mean(g) term).
template <typename T>
__device__ void norm_bwd_dx(const T *x, const T *w, const float *mean, const float *rstd,
                            const T *dy, T *dx, gkd_norm_params p) {
    const int lane = threadIdx.x & 31;
    const long row = (long)blockIdx.x * ROWS_PER_BLOCK + (threadIdx.x >> 5);
    if (row >= p.rows) return;
    const T *xr = x + row * p.cols;
    const T *dyr = dy + row * p.cols;
    const float m = mean ? mean[row] : 0.0f;
    const float rs = rstd[row];
    float sg = 0.0f, sgx = 0.0f;
    for (int c = lane; c < p.cols; c += 32) {
        const float g = load_f32(dyr, c) * load_f32(w, c);
        sg += g;
        sgx += g * (load_f32(xr, c) - m) * rs;
    }
    const float mg = mean ? warp_sum(sg) / p.cols : 0.0f;
    const float mgx = warp_sum(sgx) / p.cols;
    T *dxr = dx + row * p.cols;
    for (int c = lane; c < p.cols; c += 32) {
        const float g = load_f32(dyr, c) * load_f32(w, c);
        const float xh = (load_f32(xr, c) - m) * rs;
        store_f32(dxr, c, rs * (g - mg - xh * mgx));
    }
}

// Stage 1 of dw/db: block (32, 8) covers 32 columns of one row chunk; partials (row_chunks, cols).
// `mean` null for RMSNorm; `db_part` null when there is no bias.
template <typename T>
__device__ void norm_wgrad_partial(const T *x, const float *mean, const float *rstd, const T *dy,
                                   float *dw_part, float *db_part, gkd_norm_wgrad_params p) {
    __shared__ float sw[8][33];
    __shared__ float sb[8][33];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int col = blockIdx.x * 32 + tx;
    const int chunk = blockIdx.y;
    const int r0 = chunk * p.rows_per_chunk;
    const int r1 = min(r0 + p.rows_per_chunk, p.rows);
    float aw = 0.0f, ab = 0.0f;
    if (col < p.cols) {
        for (int r = r0 + ty; r < r1; r += 8) {
            const long i = (long)r * p.cols + col;
            const float d = load_f32(dy, i);
            const float xh = (load_f32(x, i) - (mean ? mean[r] : 0.0f)) * rstd[r];
            aw += d * xh;
            ab += d;
        }
    }
    sw[ty][tx] = aw;
    sb[ty][tx] = ab;
    __syncthreads();
    if (ty == 0 && col < p.cols) {
        for (int k = 1; k < 8; k++) {
            aw += sw[k][tx];
            ab += sb[k][tx];
        }
        dw_part[(long)chunk * p.cols + col] = aw;
        if (db_part) db_part[(long)chunk * p.cols + col] = ab;
    }
}

extern "C" __global__ void norm_wgrad_finish(const float *dw_part, const float *db_part,
                                             float *dw, float *db, gkd_norm_wgrad_params p) {
    const int col = blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= p.cols) return;
    float aw = 0.0f, ab = 0.0f;
    for (int k = 0; k < p.row_chunks; k++) {
        aw += dw_part[(long)k * p.cols + col];
        if (db_part) ab += db_part[(long)k * p.cols + col];
    }
    dw[col] = aw;
    if (db_part) db[col] = ab;
}

// ----------------------------------------------------------------------------------------------
// entry points, one per dtype

#define NORM_KERNELS(T, SUF)                                                                      \
    extern "C" __global__ void layernorm_fwd_##SUF(const T *x, const T *w, const T *b, T *y,      \
                                                   float *mean, float *rstd, gkd_norm_params p) { \
        layernorm_fwd<T>(x, w, b, y, mean, rstd, p);                                              \
    }                                                                                             \
    extern "C" __global__ void rmsnorm_fwd_##SUF(const T *x, const T *w, T *y, float *rstd,       \
                                                 gkd_norm_params p) {                             \
        rmsnorm_fwd<T>(x, w, y, rstd, p);                                                         \
    }                                                                                             \
    extern "C" __global__ void norm_bwd_dx_##SUF(const T *x, const T *w, const float *mean,       \
                                                 const float *rstd, const T *dy, T *dx,           \
                                                 gkd_norm_params p) {                             \
        norm_bwd_dx<T>(x, w, mean, rstd, dy, dx, p);                                              \
    }                                                                                             \
    extern "C" __global__ void norm_wgrad_partial_##SUF(const T *x, const float *mean,            \
                                                        const float *rstd, const T *dy,           \
                                                        float *dw_part, float *db_part,           \
                                                        gkd_norm_wgrad_params p) {                \
        norm_wgrad_partial<T>(x, mean, rstd, dy, dw_part, db_part, p);                            \
    }

NORM_KERNELS(float, f32)
NORM_KERNELS(bf16, bf16)
