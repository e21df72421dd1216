// Σ x² over f32 or bf16 x (the global gradient norm's sum, optim/clip.rs), deterministic: the
// result depends only on the values and n, never on the GPU, the SM count, the alignment of x,
// or the order in which blocks run.
//
// Stage 1 (sum_squares_<dtype>): a fixed grid of blocks (the launcher's constant, not the SM
// count). x is cut into chunks of VEC elements (4 f32 or 8 bf16: 16 bytes); chunk c belongs to
// thread c mod T (T = all threads of the grid), which visits its chunks in increasing order and
// keeps one f32 accumulator per lane l of a chunk: acc[l] = fma(x, x, acc[l]) (one rounding per
// term). The last, partial chunk (n mod VEC elements) is its owner's last. Each thread adds its
// VEC accumulators in f64, the block adds its threads in f64 in a fixed tree, and writes one f64
// partial per block. 16-byte loads when x is 16-byte aligned, else element loads in the same
// order (the same sums either way).
//
// Stage 2 (sum_squares_finish): one block adds the partials in a fixed order in f64.
//
// Error: with k = ⌈n / (VEC·T)⌉ terms per accumulator and every term ≥ 0, the f32 stage is within
// γ_k ≈ k·2⁻²⁴ of the exact sum (relative); the f64 stages add ~1e-13. A square beyond f32's range
// (|x| ≥ 2⁶⁴) gives infinity.
#include "common.cuh"

struct alignas(16) f32x4 {
    float v[4];
};
struct alignas(16) bf16x8 {
    bf16 v[8];
};

template <typename T> struct Lanes;
template <> struct Lanes<float> {
    static constexpr int VEC = 4;
};
template <> struct Lanes<bf16> {
    static constexpr int VEC = 8;
};

// Chunk c of x (all VEC elements inside x) as f32.
__device__ __forceinline__ void load_chunk(const float *x, long c, bool vec, float (&y)[4]) {
    if (vec) {
        const f32x4 q = reinterpret_cast<const f32x4 *>(x)[c];
#pragma unroll
        for (int l = 0; l < 4; l++) y[l] = q.v[l];
    } else {
#pragma unroll
        for (int l = 0; l < 4; l++) y[l] = x[4 * c + l];
    }
}

__device__ __forceinline__ void load_chunk(const bf16 *x, long c, bool vec, float (&y)[8]) {
    if (vec) {
        const bf16x8 q = reinterpret_cast<const bf16x8 *>(x)[c];
#pragma unroll
        for (int l = 0; l < 8; l++) y[l] = bf16_to_f32(q.v[l]);
    } else {
#pragma unroll
        for (int l = 0; l < 8; l++) y[l] = bf16_to_f32(x[8 * c + l]);
    }
}

// Sum over the block in f64 (blockDim.x a multiple of 32, at most 1024), in a fixed order;
// thread 0 gets it. `scratch` holds 32 doubles of shared memory.
__device__ __forceinline__ double block_sum_f64(double s, double *scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0) scratch[warp] = s;
    __syncthreads();
    s = 0.0;
    if (warp == 0) {
        s = lane < warps ? scratch[lane] : 0.0;
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    }
    return s;
}

template <typename T>
__device__ void sum_squares_partial(const T *__restrict__ x, // (n)
                                    long n,
                                    double *__restrict__ partials) { // (gridDim.x)
    constexpr int VEC = Lanes<T>::VEC;
    __shared__ double scratch[32];
    const long threads = (long)gridDim.x * blockDim.x;
    const long full = n / VEC; // whole chunks
    const bool vec = ((unsigned long long)x & 15ull) == 0;

    float acc[VEC];
#pragma unroll
    for (int l = 0; l < VEC; l++) acc[l] = 0.0f;

    long c = (long)blockIdx.x * blockDim.x + threadIdx.x;
    // Four chunks per iteration: the loads first (more bytes in flight), then the sums in
    // chunk order, exactly as the one-chunk loop below would add them.
    for (; c + 3 * threads < full; c += 4 * threads) {
        float y[4][VEC];
#pragma unroll
        for (int u = 0; u < 4; u++) load_chunk(x, c + u * threads, vec, y[u]);
#pragma unroll
        for (int u = 0; u < 4; u++)
#pragma unroll
            for (int l = 0; l < VEC; l++) acc[l] = __fmaf_rn(y[u][l], y[u][l], acc[l]);
    }
    for (; c < full; c += threads) {
        float y[VEC];
        load_chunk(x, c, vec, y);
#pragma unroll
        for (int l = 0; l < VEC; l++) acc[l] = __fmaf_rn(y[l], y[l], acc[l]);
    }
    // c is now this thread's first chunk at or past `full`: the partial chunk is its if c == full.
    if (c == full) {
#pragma unroll
        for (int l = 0; l < VEC; l++) {
            const long i = full * VEC + l;
            if (i < n) {
                const float y = load_f32(x, i);
                acc[l] = __fmaf_rn(y, y, acc[l]);
            }
        }
    }

    double s = 0.0;
#pragma unroll
    for (int l = 0; l < VEC; l++) s += (double)acc[l];
    s = block_sum_f64(s, scratch);
    if (threadIdx.x == 0) partials[blockIdx.x] = s;
}

extern "C" __global__ void sum_squares_f32(const float *x, long n, double *partials) {
    sum_squares_partial(x, n, partials);
}

extern "C" __global__ void sum_squares_bf16(const bf16 *x, long n, double *partials) {
    sum_squares_partial(x, n, partials);
}

// One block: out[0] = Σ partials[0..count), each thread its strided share in order, then the
// block tree.
extern "C" __global__ void sum_squares_finish(const double *__restrict__ partials, // (count)
                                              int count,
                                              double *__restrict__ out) { // (1)
    __shared__ double scratch[32];
    double s = 0.0;
    for (int i = threadIdx.x; i < count; i += blockDim.x) s += partials[i];
    s = block_sum_f64(s, scratch);
    if (threadIdx.x == 0) out[0] = s;
}
