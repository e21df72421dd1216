// Device-memory copy at 16 bytes per thread per iteration: the bandwidth ceiling that the
// benchmarks' floors are computed from (bytes read + bytes written over time), measured in the
// same run as the kernels they judge.
#include "common.cuh"

// 16 bytes, one vector load/store (own type: NVRTC runs without the CUDA headers).
struct alignas(16) u128 {
    unsigned int a, b, c, d;
};

extern "C" __global__ void copy_u128(const u128 *__restrict__ src, u128 *__restrict__ dst, long n) {
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
        dst[i] = src[i];
}
