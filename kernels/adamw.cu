// AdamW, one elementwise pass over the flat f32 master weights (optim/adamw.rs derives the
// scalars; the CPU reference is backend/cpu/adamw.rs, and this computes the same function):
//
//   p ← p·decay                                   (skipped when decay == 1: no weight decay)
//   m ← fma(1−β1, g − m, m)                       torch's lerp_
//   v ← (β2·v) + ((1−β2)·g)·g
//   p ← p + (neg_step·m) / ((√v / bc2) + ε)
//
// Every operation is an explicitly rounded intrinsic (__fmul_rn, __fadd_rn, __fdiv_rn,
// __fsqrt_rn, __fmaf_rn) in the reference's order: nvcc may not contract a·b + c into an FMA the
// reference does not have, so the result is the CPU's bit for bit.
//
// Optionally the updated weights are also written, in the same pass, into `out` (the model's
// compute-dtype weights: f32, or bf16 rounded to nearest even) at the same element offsets.
//
// p, m, v: (n) f32, read and written;  g: (n) f32;  out: (n) f32 or bf16, written (or none).
// Vectorized: 4 elements per access where every array is 16-byte aligned (8-byte for a bf16
// out) from the same element on; a few scalar elements before (until p is aligned) and after.
// If the arrays are not aligned alike (a gradient view at another offset), all scalar.
#include "common.cuh"

struct alignas(16) f32x4 {
    float a, b, c, d;
};
struct alignas(8) bf16x4 {
    bf16 a, b, c, d;
};

// The scalars of one step (ops::AdamWStep), passed by value.
struct AdamWHyper {
    float decay, one_minus_beta1, beta2, one_minus_beta2, neg_step_size, bc2_sqrt, eps;
};

// No compute-weights copy.
struct NoOut {};

__device__ __forceinline__ void put(NoOut *, long, float) {}
__device__ __forceinline__ void put(float *o, long i, float x) { o[i] = x; }
__device__ __forceinline__ void put(bf16 *o, long i, float x) { o[i] = f32_to_bf16(x); }

__device__ __forceinline__ void put4(NoOut *, long, const f32x4 &) {}
__device__ __forceinline__ void put4(float *o, long i, const f32x4 &x) {
    *reinterpret_cast<f32x4 *>(o + i) = x;
}
__device__ __forceinline__ void put4(bf16 *o, long i, const f32x4 &x) {
    bf16x4 y;
    y.a = f32_to_bf16(x.a);
    y.b = f32_to_bf16(x.b);
    y.c = f32_to_bf16(x.c);
    y.d = f32_to_bf16(x.d);
    *reinterpret_cast<bf16x4 *>(o + i) = y;
}

__device__ __forceinline__ bool aligned(const void *p, unsigned long long bytes) {
    return ((unsigned long long)p & (bytes - 1)) == 0;
}
// Whether out's element i starts a vector store.
__device__ __forceinline__ bool out_aligned(const NoOut *, long) { return true; }
__device__ __forceinline__ bool out_aligned(const float *o, long i) { return aligned(o + i, 16); }
__device__ __forceinline__ bool out_aligned(const bf16 *o, long i) { return aligned(o + i, 8); }

// One element, in the reference's order of f32 operations.
__device__ __forceinline__ void adamw_one(float &p, float g, float &m, float &v, const AdamWHyper &h,
                                          bool decays) {
    if (decays) p = __fmul_rn(p, h.decay);
    m = __fmaf_rn(h.one_minus_beta1, __fsub_rn(g, m), m);
    v = __fadd_rn(__fmul_rn(v, h.beta2), __fmul_rn(__fmul_rn(h.one_minus_beta2, g), g));
    const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(v), h.bc2_sqrt), h.eps);
    p = __fadd_rn(p, __fdiv_rn(__fmul_rn(h.neg_step_size, m), denom));
}

template <typename O>
__device__ void adamw(float *__restrict__ p,       // (n)
                      const float *__restrict__ g, // (n)
                      float *__restrict__ m,       // (n)
                      float *__restrict__ v,       // (n)
                      O *__restrict__ out,         // (n) or none
                      long n, const AdamWHyper &h) {
    const bool decays = h.decay != 1.0f;
    const long tid = (long)blockIdx.x * blockDim.x + threadIdx.x;
    const long stride = (long)gridDim.x * blockDim.x;

    // Elements before p + head is 16-byte aligned (f32 pointers are 4-byte aligned: 0..3).
    long head = (long)(((16ull - ((unsigned long long)p & 15ull)) & 15ull) >> 2);
    if (head > n) head = n;
    const bool vec = aligned(g + head, 16) && aligned(m + head, 16) && aligned(v + head, 16) &&
                     out_aligned(out, head);
    if (!vec) head = n; // everything on the scalar path
    const long quads = (n - head) >> 2;
    const long body_end = head + 4 * quads;

    for (long i = tid; i < head; i += stride) {
        float pi = p[i], mi = m[i], vi = v[i];
        adamw_one(pi, g[i], mi, vi, h, decays);
        p[i] = pi;
        m[i] = mi;
        v[i] = vi;
        put(out, i, pi);
    }
    for (long q = tid; q < quads; q += stride) {
        const long i = head + 4 * q;
        f32x4 p4 = *reinterpret_cast<const f32x4 *>(p + i);
        const f32x4 g4 = *reinterpret_cast<const f32x4 *>(g + i);
        f32x4 m4 = *reinterpret_cast<const f32x4 *>(m + i);
        f32x4 v4 = *reinterpret_cast<const f32x4 *>(v + i);
        adamw_one(p4.a, g4.a, m4.a, v4.a, h, decays);
        adamw_one(p4.b, g4.b, m4.b, v4.b, h, decays);
        adamw_one(p4.c, g4.c, m4.c, v4.c, h, decays);
        adamw_one(p4.d, g4.d, m4.d, v4.d, h, decays);
        *reinterpret_cast<f32x4 *>(p + i) = p4;
        *reinterpret_cast<f32x4 *>(m + i) = m4;
        *reinterpret_cast<f32x4 *>(v + i) = v4;
        put4(out, i, p4);
    }
    for (long i = body_end + tid; i < n; i += stride) {
        float pi = p[i], mi = m[i], vi = v[i];
        adamw_one(pi, g[i], mi, vi, h, decays);
        p[i] = pi;
        m[i] = mi;
        v[i] = vi;
        put(out, i, pi);
    }
}

// ---- launchers' entry points (backend/cuda/adamw.rs) ------------------------------------------
// The scalars are separate arguments (kernels/abi.h is shared and not needed for them).

#define ADAMW_HYPER                                                                                 \
    AdamWHyper h;                                                                                   \
    h.decay = decay;                                                                                \
    h.one_minus_beta1 = one_minus_beta1;                                                            \
    h.beta2 = beta2;                                                                                \
    h.one_minus_beta2 = one_minus_beta2;                                                            \
    h.neg_step_size = neg_step_size;                                                                \
    h.bc2_sqrt = bc2_sqrt;                                                                          \
    h.eps = eps;

#define ADAMW_ARGS                                                                                  \
    long n, float decay, float one_minus_beta1, float beta2, float one_minus_beta2,                 \
        float neg_step_size, float bc2_sqrt, float eps

// Master weights only.
extern "C" __global__ void adamw_f32(float *p, const float *g, float *m, float *v, ADAMW_ARGS) {
    ADAMW_HYPER
    adamw(p, g, m, v, (NoOut *)nullptr, n, h);
}

// ... and the updated weights copied into an f32 buffer.
extern "C" __global__ void adamw_f32_out_f32(float *p, const float *g, float *m, float *v, float *out,
                                             ADAMW_ARGS) {
    ADAMW_HYPER
    adamw(p, g, m, v, out, n, h);
}

// ... and the updated weights rounded to bf16 (nearest even) into a bf16 buffer.
extern "C" __global__ void adamw_f32_out_bf16(float *p, const float *g, float *m, float *v, bf16 *out,
                                              ADAMW_ARGS) {
    ADAMW_HYPER
    adamw(p, g, m, v, out, n, h);
}
