// Elementwise ops, grid-stride loops, fp32 math:
//   add:  out = a + b (residual add; with out = a it accumulates in place, e.g. gradients)
//   scale: x *= c, in place (gradient clipping, a loss's upstream gradient)
//   cast: bf16 ↔ f32 (round to nearest even into bf16)
#include "common.cuh"

template <typename T>
__device__ void add(const T *a, const T *b, T *out, long n) {
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
        store_f32(out, i, load_f32(a, i) + load_f32(b, i));
}

template <typename T>
__device__ void scale(T *x, float c, long n) {
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
        store_f32(x, i, load_f32(x, i) * c);
}

template <typename S, typename D>
__device__ void cast(const S *x, D *y, long n) {
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
        store_f32(y, i, load_f32(x, i));
}

extern "C" __global__ void add_f32(const float *a, const float *b, float *out, long n) { add(a, b, out, n); }
extern "C" __global__ void add_bf16(const bf16 *a, const bf16 *b, bf16 *out, long n) { add(a, b, out, n); }
extern "C" __global__ void scale_f32(float *x, float c, long n) { scale(x, c, n); }
extern "C" __global__ void scale_bf16(bf16 *x, float c, long n) { scale(x, c, n); }
extern "C" __global__ void cast_f32_bf16(const float *x, bf16 *y, long n) { cast(x, y, n); }
extern "C" __global__ void cast_bf16_f32(const bf16 *x, float *y, long n) { cast(x, y, n); }
