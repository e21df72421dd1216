// The MLP activations, forward and backward, f32 and bf16 (fp32 math), elementwise over N elements
// (the same functions as src/backend/cpu/{gelu,swiglu}.rs):
//   gelu (tanh form, GPT-2):  y = ½x(1 + tanh u),  u = √(2/π)(x + 0.044715x³)
//                             dx = dy·(½(1 + tanh u) + ½x(1 − tanh²u)·√(2/π)(1 + 3·0.044715x²))
//   swiglu (Llama):           y = silu(g)·up,  silu(g) = g·σ(g)
//   swiglu_packed:            the same over rows [g | up] of one (N, 2I) product (no backward)
//                             dg = dy·up·σ(g)(1 + g(1 − σ(g))),  dup = dy·silu(g)
// Grid-stride loops over 16-byte packs (4 f32 or 8 bf16) when every pointer is 16-byte aligned,
// then the tail (or everything, unaligned) one element at a time.
#include "common.cuh"

#define GELU_C 0.044715f
#define SQRT_2_OVER_PI 0.7978845608028654f

struct alignas(16) pack16 {
    unsigned int w[4];
};

// One 16-byte pack seen as its elements.
template <typename T>
union Pack {
    pack16 v;
    T e[16 / sizeof(T)];
};

__device__ __forceinline__ bool aligned16(const void *p) {
    return ((unsigned long long)p & 15ull) == 0;
}

// out_k[i] = f(in_0[i], .., in_{NIN-1}[i])_k for i < n: `f(const float *x, float *y)`.
template <typename T, int NIN, int NOUT, typename F>
__device__ __forceinline__ void map_elements(const T *const (&in)[NIN], T *const (&out)[NOUT], long n, F f) {
    constexpr int V = 16 / sizeof(T);
    bool vec = true;
#pragma unroll
    for (int k = 0; k < NIN; k++) vec = vec && aligned16(in[k]);
#pragma unroll
    for (int k = 0; k < NOUT; k++) vec = vec && aligned16(out[k]);
    const long stride = (long)gridDim.x * blockDim.x;
    const long tid = (long)blockIdx.x * blockDim.x + threadIdx.x;
    const long packs = vec ? n / V : 0;
    for (long i = tid; i < packs; i += stride) {
        Pack<T> a[NIN], b[NOUT];
#pragma unroll
        for (int k = 0; k < NIN; k++) a[k].v = reinterpret_cast<const pack16 *>(in[k])[i];
#pragma unroll
        for (int j = 0; j < V; j++) {
            float x[NIN], y[NOUT];
#pragma unroll
            for (int k = 0; k < NIN; k++) x[k] = load_f32(a[k].e, j);
            f(x, y);
#pragma unroll
            for (int k = 0; k < NOUT; k++) store_f32(b[k].e, j, y[k]);
        }
#pragma unroll
        for (int k = 0; k < NOUT; k++) reinterpret_cast<pack16 *>(out[k])[i] = b[k].v;
    }
    for (long i = packs * V + tid; i < n; i += stride) {
        float x[NIN], y[NOUT];
#pragma unroll
        for (int k = 0; k < NIN; k++) x[k] = load_f32(in[k], i);
        f(x, y);
#pragma unroll
        for (int k = 0; k < NOUT; k++) store_f32(out[k], i, y[k]);
    }
}

struct GeluFwd {
    __device__ void operator()(const float *x, float *y) const {
        const float v = x[0];
        y[0] = 0.5f * v * (1.0f + tanhf(SQRT_2_OVER_PI * (v + GELU_C * v * v * v)));
    }
};

struct GeluBwd { // x[0] = x, x[1] = dy
    __device__ void operator()(const float *x, float *y) const {
        const float v = x[0];
        const float t = tanhf(SQRT_2_OVER_PI * (v + GELU_C * v * v * v));
        const float du = SQRT_2_OVER_PI * (1.0f + 3.0f * GELU_C * v * v);
        y[0] = x[1] * (0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * du);
    }
};

__device__ __forceinline__ float sigmoid(float v) { return 1.0f / (1.0f + expf(-v)); }

struct SwigluFwd { // x[0] = gate, x[1] = up
    __device__ void operator()(const float *x, float *y) const {
        y[0] = x[0] * sigmoid(x[0]) * x[1];
    }
};

struct SwigluBwd { // x = (gate, up, dy) → y = (dgate, dup)
    __device__ void operator()(const float *x, float *y) const {
        const float g = x[0], s = sigmoid(g);
        y[0] = x[2] * x[1] * s * (1.0f + g * (1.0f - s));
        y[1] = x[2] * g * s;
    }
};

// ----------------------------------------------------------------------------------------------
// entry points, one per dtype; every tensor (N)

#define ACTIVATION_KERNELS(T, SUF)                                                                 \
    extern "C" __global__ void gelu_fwd_##SUF(const T *x, T *y, long n) {                          \
        const T *in[1] = {x};                                                                      \
        T *const out[1] = {y};                                                                     \
        map_elements<T, 1, 1>(in, out, n, GeluFwd());                                              \
    }                                                                                              \
    extern "C" __global__ void gelu_bwd_##SUF(const T *x, const T *dy, T *dx, long n) {            \
        const T *in[2] = {x, dy};                                                                  \
        T *const out[1] = {dx};                                                                    \
        map_elements<T, 2, 1>(in, out, n, GeluBwd());                                              \
    }                                                                                              \
    extern "C" __global__ void swiglu_fwd_##SUF(const T *gate, const T *up, T *y, long n) {        \
        const T *in[2] = {gate, up};                                                               \
        T *const out[1] = {y};                                                                     \
        map_elements<T, 2, 1>(in, out, n, SwigluFwd());                                            \
    }                                                                                              \
    extern "C" __global__ void swiglu_bwd_##SUF(const T *gate, const T *up, const T *dy,           \
                                                T *dgate, T *dup, long n) {                        \
        const T *in[3] = {gate, up, dy};                                                           \
        T *const out[2] = {dgate, dup};                                                            \
        map_elements<T, 3, 2>(in, out, n, SwigluBwd());                                            \
    }

ACTIVATION_KERNELS(float, f32)
ACTIVATION_KERNELS(bf16, bf16)

// swiglu over a packed product (N, 2I), each row [gate | up] (one product of the adjacent gate and
// up weights, in forwards without a gradient) → y (N, I): a grid-stride loop over the N·I outputs.
template <typename T>
__device__ __forceinline__ void swiglu_packed(const T *__restrict__ x, T *__restrict__ y, long rows,
                                              long width) {
    const long n = rows * width;
    for (long k = (long)blockIdx.x * blockDim.x + threadIdx.x; k < n; k += (long)gridDim.x * blockDim.x) {
        const long r = k / width, j = k - r * width;
        const float g = load_f32(x, r * 2 * width + j), u = load_f32(x, r * 2 * width + width + j);
        store_f32(y, k, g * sigmoid(g) * u);
    }
}

extern "C" __global__ void swiglu_packed_fwd_f32(const float *x, float *y, long rows, long width) {
    swiglu_packed<float>(x, y, rows, width);
}
extern "C" __global__ void swiglu_packed_fwd_bf16(const bf16 *x, bf16 *y, long rows, long width) {
    swiglu_packed<bf16>(x, y, rows, width);
}
