// Shared device helpers: bf16 <-> f32 conversion, warp and block reductions.
// Header-free on purpose (no cuda_bf16.h, no <cstdint>): the same text compiles under nvcc and
// under NVRTC at run time, where no system headers are available.
#ifndef GKD_COMMON_CUH
#define GKD_COMMON_CUH

#include "abi.h"

#define GKD_NEG_INF __int_as_float(0xff800000u)

// bf16 is carried as its 16 raw bits.
typedef unsigned short bf16;

__device__ __forceinline__ float bf16_to_f32(bf16 h) {
    return __uint_as_float(((unsigned int)h) << 16);
}

// Round to nearest even; NaN stays NaN (quiet).
__device__ __forceinline__ bf16 f32_to_bf16(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16)(u >> 16);
}

// Load/store an element of type T as f32.
__device__ __forceinline__ float load_f32(const float *p, long i) { return p[i]; }
__device__ __forceinline__ float load_f32(const bf16 *p, long i) { return bf16_to_f32(p[i]); }
__device__ __forceinline__ void store_f32(float *p, long i, float v) { p[i] = v; }
__device__ __forceinline__ void store_f32(bf16 *p, long i, float v) { p[i] = f32_to_bf16(v); }

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the whole block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
// `scratch` holds 32 floats of shared memory; the call ends with a barrier so it can be reused.
__device__ __forceinline__ float block_sum(float v, float *scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_sum(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : 0.0f;
    v = warp_sum(v);
    __syncthreads();
    return v;
}

__device__ __forceinline__ float block_max(float v, float *scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_max(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : GKD_NEG_INF;
    v = warp_max(v);
    __syncthreads();
    return v;
}

#endif
