// Rotary position embedding, Hugging Face "rotate_half" convention, per head, f32 and bf16:
//   x, y (N, H, D), positions (N) u32, half = D/2, θ_i = positions[n] · inv_freq[i] (i < half)
//   forward:  y[i] = x[i]·cos θ_i − x[i+half]·sin θ_i,   y[i+half] = x[i+half]·cos θ_i + x[i]·sin θ_i
//   backward: the same with θ → −θ (the inverse rotation), applied to dy
// As the CPU reference (backend/cpu/rope.rs) computes it: the angle and its cosine and sine in
// double, rounded to f32, then the rotation in f32 with every product and sum rounded on its own
// (no FMA contraction), so f32 results match the reference to the last bit up to the rare
// sin/cos that rounds differently. One thread per (row, i), looping over the heads: each
// double-precision sincos serves all H heads; a warp reads consecutive i of a head (coalesced).
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
    }

ROPE_KERNELS(float, f32)
ROPE_KERNELS(bf16, bf16)
