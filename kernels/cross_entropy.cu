// Cross-entropy of each row of logits against its target token, fused with the gradient with
// respect to the logits; f32 or bf16 logits, fp32 math. The CPU reference is
// src/backend/cpu/cross_entropy.rs:
//   loss_r = scale·(lse(z_r) − z_r[t_r]),   grad_rj = scale·(softmax(z_r)_j − [j = t_r])
// In log2 units as in divergence.cu (k = log2 e, ex2/lg2 the MUFU approximations, relative error
// ~2^-22):
//   pass 1  m = max_j z_j and S = Σ_j 2^{k·(z_j − m)}, online per thread (ms_fold), merged over the
//           warp or the block; loss = scale·((m − z_t) + ln2·log2 S);
//   pass 2  (gradient only) g_j = scale·2^{k·z_j − A} − scale·[j = t], A = k·m + log2 S, stored in
//           the logits' dtype. g may be z itself (in place, the fused output head): every thread
//           re-reads and overwrites only the elements it read in pass 1, and z_t is read (by one
//           thread) before the merge's barrier, which orders it before any write.
// HBM traffic per row: V·sizeof(T) read in pass 1, read again in pass 2 (from L2 when the rows in
// flight fit in it: the launcher sizes the grid for that) and written once.
//
// A row whose target is CE_IGNORE (u32 max) counts 0: loss 0 and gradient 0. A target ≥ V is an
// error the launcher cannot see without reading the targets back (a synchronization): that row's
// loss and gradient are NaN, so that it cannot train silently (the CPU backend refuses it).
//
// Row weights: with row_weight (rows) f32 non-null, row r's scale is scale·row_weight[r] (any
// sign: RL's policy-gradient term −A·ln p(y) is this cross-entropy weighted by A), so its loss and
// gradient are multiplied by it; an ignored row stays 0 whatever its weight.
//
// Arguments: z (rows, V) row-major; targets (rows) u32; g (rows, V), null for the loss alone, or z
// itself; row_loss (rows) f32; row_weight (rows) f32 or null. Only the V entries of each row are
// read or written.
//
// Kernels, each as _vec and _scalar, for _f32 and _bf16:
//   cross_entropy_rows   one block of CE_ROWS_THREADS threads per row; a block walks rows
//                        blockIdx.x, blockIdx.x + gridDim.x, … (the grid may hold fewer blocks
//                        than rows).
//   cross_entropy_warps  one warp per row, CE_WARPS_PER_BLOCK rows per block, for small V.
// _vec makes 16-byte accesses whatever V and the row's alignment: the first elements of a row up
// to a 16-byte boundary and the last ones after the last whole vector go one by one. It needs g
// and z at the same address modulo 16 (the launcher checks); _scalar takes any buffers.
#include "divergence_math.cuh"

#define CE_ROWS_THREADS 512
#define CE_ROWS_MIN_BLOCKS 2 // per SM (the launcher never asks for more rows in flight)
#define CE_WARPS_PER_BLOCK 8
#define CE_WARPS_MIN_BLOCKS 3 // per SM: caps registers at 85, where ptxas keeps everything in registers
#define CE_IGNORE 0xffffffffu
#define CE_NAN __int_as_float(0x7fffffff)

// ----------------------------------------------------------------------------------------------
// One row's (max, Σ 2^{k(x − max)}) and its merges.

__device__ __forceinline__ MaxSum ms_identity() {
    MaxSum r;
    r.m = GKD_NEG_INF;
    r.z = 0.0f;
    return r;
}

__device__ __forceinline__ MaxSum ms_warp(MaxSum v, float k) {
    for (int o = 16; o > 0; o >>= 1) {
        MaxSum w;
        w.m = __shfl_xor_sync(0xffffffffu, v.m, o);
        w.z = __shfl_xor_sync(0xffffffffu, v.z, o);
        v = ms_merge(v, w, k);
    }
    return v;
}

// Over the block; every thread gets the result. `scratch` holds 32 entries of shared memory; the
// call ends with a barrier so that it can be reused.
__device__ __forceinline__ MaxSum ms_block(MaxSum v, float k, MaxSum *scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = ms_warp(v, k);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < (int)(blockDim.x >> 5) ? scratch[lane] : ms_identity();
    v = ms_warp(v, k);
    __syncthreads();
    return v;
}

// ----------------------------------------------------------------------------------------------
// Elements [0, n) of a row at p, split for VW-wide access: [0, head) one by one, then nvec vectors
// from p + head (16-byte aligned), then [tail, n) one by one. With VW = 1 all are "vectors".

template <typename T, int VW> struct Split {
    int head, nvec, tail;
    __device__ __forceinline__ Split(const T *p, int n) {
        // Elements of p past the previous 16-byte boundary (p is aligned to sizeof(T)).
        const int past = VW == 1 ? 0 : (int)(((unsigned long long)p & 15ull) / sizeof(T));
        head = min(n, (VW - past) % VW);
        nvec = (n - head) / VW;
        tail = head + nvec * VW;
    }
};

// Pass 1: this thread's (max, sum) over its elements; U vectors are loaded before any is used.
template <typename T, int VW, int U>
__device__ __forceinline__ MaxSum ce_stats(const T *z, const Split<T, VW> &sp, int n, int rank, int size,
                                           float k) {
    MaxSum acc = ms_identity();
    const T *zv = z + sp.head;
    int v0 = rank;
    for (; v0 + (U - 1) * size < sp.nvec; v0 += U * size) { // whole iterations: no bounds checks
        Vec<T, VW> a[U];
#pragma unroll
        for (int u = 0; u < U; u++) a[u].load(zv + (v0 + u * size) * VW);
        float x[U * VW];
#pragma unroll
        for (int u = 0; u < U; u++) {
#pragma unroll
            for (int i = 0; i < VW; i++) x[u * VW + i] = a[u].get(i);
        }
        ms_fold(acc, x, k);
    }
    for (int v = v0; v < sp.nvec; v += size) {
        Vec<T, VW> a;
        a.load(zv + v * VW);
        float x[VW];
#pragma unroll
        for (int i = 0; i < VW; i++) x[i] = a.get(i);
        ms_fold(acc, x, k);
    }
    for (int e = rank; e < sp.head; e += size) {
        const float x[1] = {load_f32(z, e)};
        ms_fold(acc, x, k);
    }
    for (int e = sp.tail + rank; e < n; e += size) {
        const float x[1] = {load_f32(z, e)};
        ms_fold(acc, x, k);
    }
    return acc;
}

// scale·2^{k·x − A} − (scale at the target, 0 elsewhere).
__device__ __forceinline__ float ce_grad1(float x, float k, float A, float scale, bool target) {
    return fmaf(scale, ex2(fmaf(x, k, -A)), target ? -scale : 0.0f);
}

// Pass 2: the gradient of this thread's elements (the same ones as in pass 1); t the target.
template <typename T, int VW, int U>
__device__ __forceinline__ void ce_grad(const T *z, T *g, const Split<T, VW> &sp, int n, int rank, int size,
                                        float k, float A, float scale, int t) {
    const T *zv = z + sp.head;
    T *gv = g + sp.head;
    for (int v0 = rank; v0 < sp.nvec; v0 += U * size) {
        Vec<T, VW> a[U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            if (v0 + u * size < sp.nvec) a[u].load(zv + (v0 + u * size) * VW);
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int v = v0 + u * size;
            if (v < sp.nvec) {
                const int e0 = sp.head + v * VW; // the row index of the vector's first element
                float o[VW];
#pragma unroll
                for (int i = 0; i < VW; i++) o[i] = ce_grad1(a[u].get(i), k, A, scale, e0 + i == t);
                Vec<T, VW> out;
                out.pack(o);
                out.store(gv + v * VW);
            }
        }
    }
    for (int e = rank; e < sp.head; e += size) store_f32(g, e, ce_grad1(load_f32(z, e), k, A, scale, e == t));
    for (int e = sp.tail + rank; e < n; e += size) store_f32(g, e, ce_grad1(load_f32(z, e), k, A, scale, e == t));
}

// g = value over the row (0 for an ignored row, NaN for a target outside the vocabulary).
template <typename T, int VW>
__device__ __forceinline__ void ce_fill(T *g, const Split<T, VW> &sp, int n, int rank, int size, float value) {
    float o[VW];
#pragma unroll
    for (int i = 0; i < VW; i++) o[i] = value;
    Vec<T, VW> c;
    c.pack(o);
    T *gv = g + sp.head;
    for (int v = rank; v < sp.nvec; v += size) c.store(gv + v * VW);
    for (int e = rank; e < sp.head; e += size) store_f32(g, e, value);
    for (int e = sp.tail + rank; e < n; e += size) store_f32(g, e, value);
}

// One row by a warp (WARP) or the whole block; `weight` (null: 1) multiplies `scale`. It is read
// only after pass 1, so that it holds no register during the loads of pass 1.
template <typename T, int VW, int U, bool WARP>
__device__ __forceinline__ void ce_row(const T *z, T *g, unsigned int t, float *loss, int n, float scale,
                                       const float *weight, MaxSum *scratch) {
    const int rank = WARP ? (threadIdx.x & 31) : threadIdx.x, size = WARP ? 32 : blockDim.x;
    const Split<T, VW> sp(z, n);
    if (t == CE_IGNORE || t >= (unsigned int)n) { // uniform over the warp / block: no barrier skipped unevenly
        const float value = t == CE_IGNORE ? 0.0f : CE_NAN;
        if (g) ce_fill<T, VW>(g, sp, n, rank, size, value);
        if (rank == 0) *loss = value;
        return;
    }
    const float k = DIV_LOG2E;
    const float zt = rank == 0 ? load_f32(z, t) : 0.0f; // before the merge: pass 2 may overwrite it
    MaxSum st = ce_stats<T, VW, U>(z, sp, n, rank, size, k);
    st = WARP ? ms_warp(st, k) : ms_block(st, k, scratch); // the block merge ends with a barrier
    const float l2s = lg2(st.z);
    if (weight) scale *= *weight; // one address for the warp / block
    if (rank == 0) *loss = scale * ((st.m - zt) + DIV_LN2 * l2s);
    if (g) {
        if (WARP) __syncwarp(); // orders lane 0's read of z_t before the other lanes' writes
        ce_grad<T, VW, U>(z, g, sp, n, rank, size, k, kmax(st.m, k) + l2s, scale, (int)t);
    }
}

template <typename T, int VW, int U, bool WARP>
__device__ __forceinline__ void ce_kernel(const T *z, const unsigned int *targets, T *g, float *row_loss, int rows,
                                          int vocab, float scale, const float *row_weight) {
    __shared__ MaxSum scratch[32];
    const long per_block = WARP ? (long)(blockDim.x >> 5) : 1;
    const long first = WARP ? (long)blockIdx.x * per_block + (threadIdx.x >> 5) : (long)blockIdx.x;
    const long stride = (long)gridDim.x * per_block;
    for (long row = first; row < rows; row += stride) { // uniform over the warp / block
        const long off = row * vocab;
        ce_row<T, VW, U, WARP>(z + off, g ? g + off : nullptr, targets[row], row_loss + row, vocab, scale,
                               row_weight ? row_weight + row : nullptr, scratch);
    }
}

// ----------------------------------------------------------------------------------------------
// entry points: (z, targets, g, row_loss, rows, vocab, scale, row_weight)

#define CE_KERNELS(T, SUF, VW, VSUF)                                                                               \
    extern "C" __global__ void __launch_bounds__(CE_ROWS_THREADS, CE_ROWS_MIN_BLOCKS)                              \
        cross_entropy_rows_##VSUF##_##SUF(const T *z, const unsigned int *targets, T *g, float *row_loss,          \
                                          int rows, int vocab, float scale, const float *row_weight) {             \
        ce_kernel<T, VW, 4, false>(z, targets, g, row_loss, rows, vocab, scale, row_weight);                       \
    }                                                                                                              \
    extern "C" __global__ void __launch_bounds__(32 * CE_WARPS_PER_BLOCK, CE_WARPS_MIN_BLOCKS)                     \
        cross_entropy_warps_##VSUF##_##SUF(const T *z, const unsigned int *targets, T *g, float *row_loss,         \
                                           int rows, int vocab, float scale, const float *row_weight) {            \
        ce_kernel<T, VW, 4, true>(z, targets, g, row_loss, rows, vocab, scale, row_weight);                        \
    }

CE_KERNELS(float, f32, 4, vec)
CE_KERNELS(float, f32, 1, scalar)
CE_KERNELS(bf16, bf16, 8, vec)
CE_KERNELS(bf16, bf16, 1, scalar)
