// Shared device helpers: bf16 <-> f32 conversion, warp and block reductions, Philox4x32-10.
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

// Philox4x32-10 (Salmon et al., SC 2011; Random123's philox4x32): four random words per
// (counter, key), ten rounds of two 32x32->64 products, the key bumped by the Weyl constants between
// rounds. The Rust twin, tested against Random123's known answers: src/backend/cpu/sampling.rs.
__device__ __forceinline__ uint4 philox4x32_10(uint4 c, uint2 k) {
#pragma unroll
    for (int round = 0; round < 10; ++round) {
        if (round > 0) {
            k.x += 0x9E3779B9u;
            k.y += 0xBB67AE85u;
        }
        const unsigned int lo0 = 0xD2511F53u * c.x, hi0 = __umulhi(0xD2511F53u, c.x);
        const unsigned int lo1 = 0xCD9E8D57u * c.z, hi1 = __umulhi(0xCD9E8D57u, c.z);
        c = make_uint4(hi1 ^ c.y ^ k.x, lo1, hi0 ^ c.w ^ k.y, lo0);
    }
    return c;
}

#endif
