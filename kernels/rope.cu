// Rotary position embedding, Hugging Face "rotate_half" convention, per head, f32 and bf16:
//   x, y (N, H, D), positions (N) u32, half = D/2, θ_i = positions[n] · inv_freq[i] (i < half)
//   forward:  y[i] = x[i]·cos θ_i − x[i+half]·sin θ_i,   y[i+half] = x[i+half]·cos θ_i + x[i]·sin θ_i
//   backward: the same with θ → −θ (the inverse rotation), applied to dy
// As the CPU reference (backend/cpu/rope.rs) computes it: the angle and its cosine and sine in
// double, rounded to f32, then the rotation in f32 with every product and sum rounded on its own
// (no FMA contraction), so f32 results match the reference to the last bit up to the rare
// sin/cos that rounds differently. One thread per (row, i), looping over the heads: each
// double-precision sincos serves all H heads; a warp reads consecutive i of a head (coalesced).
// rope_append (decode) also writes the rotated keys and the values into the key/value cache.
#include "common.cuh"

#define GKD_INV_PI 0.318309886183790671537767526745 // 1/π

template <typename T>
__device__ __forceinline__ void rope(const T *__restrict__ x,                   // (N, H·D)
                                     const unsigned int *__restrict__ positions, // (N)
                                     T *__restrict__ y,                          // (N, H·D)
                                     const gkd_rope_params p, float sign) {
    const long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long)p.rows * p.half) return;
    const long row = idx / p.half;
    const int i = (int)(idx - row * p.half);
    // sin(πx) at x = θ/π: its argument reduction is exact (no large-argument slow path and its
    // local-memory stack); dividing by π moves the angle by ~θ·1e-16, far below f32 rounding.
    double s, c;
    sincospi((double)positions[row] * p.inv_freq[i] * GKD_INV_PI, &s, &c);
    const float cs = (float)c, sn = sign * (float)s;
    const int d = 2 * p.half;
    const long base = row * p.heads * d + i;
#pragma unroll 4
    for (int h = 0; h < p.heads; h++) {
        const long o = base + (long)h * d;
        const float a = load_f32(x, o), b = load_f32(x, o + p.half);
        store_f32(y, o, __fsub_rn(__fmul_rn(a, cs), __fmul_rn(b, sn)));
        store_f32(y, o + p.half, __fadd_rn(__fmul_rn(b, cs), __fmul_rn(a, sn)));
    }
}

// The decode step's rotary embedding and cache append in one pass (`rope_append`): one thread per
// (row, i < half), one sincos for all heads; q's heads rotated into qy, k's heads rotated and v's
// copied into cache row rows[row] of kc and vc. A cache row ≥ total is skipped (the launcher checks
// the rows on the host unless the caller vouched for them), so no index reaches past the caches.
template <typename T>
__device__ __forceinline__ void rope_append(const T *__restrict__ q,                  // (N, Hq·D)
                                            const T *__restrict__ k,                  // (N, Hkv·D)
                                            const T *__restrict__ v,                  // (N, Hkv·D)
                                            const unsigned int *__restrict__ positions, // (N)
                                            const unsigned int *__restrict__ rows,      // (N)
                                            T *__restrict__ qy,                       // (N, Hq·D)
                                            T *__restrict__ kc, T *__restrict__ vc,   // (total, Hkv·D)
                                            const gkd_rope_params p, int kv_heads, long total) {
    const long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long)p.rows * p.half) return;
    const long row = idx / p.half;
    const int i = (int)(idx - row * p.half);
    double s, c;
    sincospi((double)positions[row] * p.inv_freq[i] * GKD_INV_PI, &s, &c);
    const float cs = (float)c, sn = (float)s;
    const int d = 2 * p.half;
    const long qbase = row * p.heads * d + i;
#pragma unroll 4
    for (int h = 0; h < p.heads; h++) {
        const long o = qbase + (long)h * d;
        const float a = load_f32(q, o), b = load_f32(q, o + p.half);
        store_f32(qy, o, __fsub_rn(__fmul_rn(a, cs), __fmul_rn(b, sn)));
        store_f32(qy, o + p.half, __fadd_rn(__fmul_rn(b, cs), __fmul_rn(a, sn)));
    }
    const long r = rows[row];
    if (r >= total) return;
    const long kbase = row * kv_heads * d + i, cbase = r * kv_heads * d + i;
    for (int h = 0; h < kv_heads; h++) {
        const long o = kbase + (long)h * d, co = cbase + (long)h * d;
        const float a = load_f32(k, o), b = load_f32(k, o + p.half);
        store_f32(kc, co, __fsub_rn(__fmul_rn(a, cs), __fmul_rn(b, sn)));
        store_f32(kc, co + p.half, __fadd_rn(__fmul_rn(b, cs), __fmul_rn(a, sn)));
        vc[co] = v[o];
        vc[co + p.half] = v[o + p.half];
    }
}

// ----------------------------------------------------------------------------------------------
// entry points, one per dtype and direction

#define ROPE_KERNELS(T, SUF)                                                                       \
    extern "C" __global__ void rope_fwd_##SUF(const T *x, const unsigned int *positions, T *y,     \
                                              const gkd_rope_params p) {                           \
        rope<T>(x, positions, y, p, 1.0f);                                                         \
    }                                                                                              \
    extern "C" __global__ void rope_bwd_##SUF(const T *dy, const unsigned int *positions, T *dx,   \
                                              const gkd_rope_params p) {                           \
        rope<T>(dy, positions, dx, p, -1.0f);                                                      \
    }                                                                                              \
    extern "C" __global__ void rope_append_##SUF(                                                  \
        const T *q, const T *k, const T *v, const unsigned int *positions, const unsigned int *rows,\
        T *qy, T *kc, T *vc, const gkd_rope_params p, int kv_heads, long total) {                  \
        rope_append<T>(q, k, v, positions, rows, qy, kc, vc, p, kv_heads, total);                  \
    }

ROPE_KERNELS(float, f32)
ROPE_KERNELS(bf16, bf16)
