// Elementwise ops: out = a + b (residual add, gradient accumulation), f32 and bf16, fp32 math.
#include "common.cuh"

template <typename T>
__device__ void add(const T *a, const T *b, T *out, long n) {
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
        store_f32(out, i, load_f32(a, i) + load_f32(b, i));
}

extern "C" __global__ void add_f32(const float *a, const float *b, float *out, long n) { add(a, b, out, n); }
extern "C" __global__ void add_bf16(const bf16 *a, const bf16 *b, bf16 *out, long n) { add(a, b, out, n); }
