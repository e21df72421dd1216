// RMSNorm over the last dimension, forward and backward, f32 and bf16:
//   y = x · rstd · w,  rstd = 1/sqrt(mean(x²) + eps)
// and the same fused with the residual add before it (add_rms_norm): sum = x + r is written (the
// residual stream, rounded to T) and normalized; its backward adds the gradient of sum to dx.
// Statistics in fp32; rstd is saved in fp32 for the backward (norm_backward.cuh). One warp per row.
#include "norm_backward.cuh"

// With a residual `r`, the input is sum = x + r, written to `sum` and read back as rounded there.
template <typename T>
__device__ void rms_norm_fwd(const T *x,       // (rows, cols)
                             const T *r,       // (rows, cols) or null
                             T *sum,           // (rows, cols), written when r is not null
                             const T *w,       // (cols)
                             T *y,             // (rows, cols)
                             float *rstd_out,  // (rows)
                             gkd_norm_params p) {
    const int lane = threadIdx.x & 31;
    const long row = (long)blockIdx.x * ROWS_PER_BLOCK + (threadIdx.x >> 5);
    if (row >= p.rows) return;
    const T *xr = x + row * p.cols;
    float s = 0.0f;
    if (r) {
        const T *rr = r + row * p.cols;
        T *sr = sum + row * p.cols;
        for (int c = lane; c < p.cols; c += 32) {
            store_f32(sr, c, load_f32(xr, c) + load_f32(rr, c));
            const float v = load_f32(sr, c);
            s += v * v;
        }
        xr = sr;
    } else {
        for (int c = lane; c < p.cols; c += 32) {
            const float v = load_f32(xr, c);
            s += v * v;
        }
    }
    const float rs = rsqrtf(warp_sum(s) / p.cols + p.eps);
    T *yr = y + row * p.cols;
    for (int c = lane; c < p.cols; c += 32) store_f32(yr, c, load_f32(xr, c) * rs * load_f32(w, c));
    if (lane == 0) rstd_out[row] = rs;
}

// ----------------------------------------------------------------------------------------------
// entry points, one per dtype

#define RMS_NORM_KERNELS(T, SUF)                                                                   \
    extern "C" __global__ void rms_norm_fwd_##SUF(const T *x, const T *w, T *y, float *rstd,      \
                                                  gkd_norm_params p) {                            \
        rms_norm_fwd<T>(x, nullptr, nullptr, w, y, rstd, p);                                      \
    }                                                                                             \
    extern "C" __global__ void add_rms_norm_fwd_##SUF(const T *x, const T *r, const T *w, T *sum, \
                                                      T *y, float *rstd, gkd_norm_params p) {     \
        rms_norm_fwd<T>(x, r, sum, w, y, rstd, p);                                                \
    }                                                                                             \
    extern "C" __global__ void rms_norm_bwd_dx_##SUF(const T *x, const T *w, const float *rstd,   \
                                                     const T *dy, T *dx, gkd_norm_params p) {     \
        norm_bwd_dx<T>(x, w, nullptr, rstd, dy, nullptr, dx, p);                                  \
    }                                                                                             \
    extern "C" __global__ void add_rms_norm_bwd_dx_##SUF(const T *sum, const T *w,                \
                                                         const float *rstd, const T *dy,          \
                                                         const T *dsum, T *dx,                    \
                                                         gkd_norm_params p) {                     \
        norm_bwd_dx<T>(sum, w, nullptr, rstd, dy, dsum, dx, p);                                   \
    }                                                                                             \
    extern "C" __global__ void rms_norm_bwd_wgrad_##SUF(const T *x, const float *rstd,            \
                                                        const T *dy, float *dw_part,              \
                                                        gkd_norm_wgrad_params p) {                \
        norm_wgrad_partial<T>(x, nullptr, rstd, dy, dw_part, nullptr, p);                         \
    }

RMS_NORM_KERNELS(float, f32)
RMS_NORM_KERNELS(bf16, bf16)

extern "C" __global__ void rms_norm_bwd_wgrad_finish(const float *dw_part, float *dw,
                                                     gkd_norm_wgrad_params p) {
    norm_wgrad_finish(dw_part, nullptr, dw, nullptr, p);
}
