// Token embedding: a row gather (forward) and its scatter-add (backward), f32 and bf16.
//
// forward:  out[n, :] = table[ids[n], :]                 table (V, C), ids (N) u32, out (N, C)
//   One warp per row, 8 rows per 256-thread block, the row copied bit for bit: 16-byte vectors when
//   the launcher found both pointers 16-byte aligned and C·sizeof(T) a multiple of 16, else one
//   element per lane. An id ≥ V is never read: its output row is written as NaN. The model checks
//   ids on the host before uploading them; this is the last line of defence against reading
//   outside the table (the CPU backend returns an error instead).
//
// backward: dtable[v, :] = Σ_{n : ids[n] = v} dout[n, :]  dout (N, C) T, dtable (V, C) fp32
//   Deterministic, no floating-point atomics: each sum is taken in increasing n, in fp32, exactly
//   as the CPU reference takes it (so f32 results are bit-identical to it). Five launches:
//   1. embedding_bwd_histogram: counts[ids[n]] += 1 (integer atomics; an id ≥ V is dropped)
//   2. embedding_bwd_scan: counts (V + 1, last 0) → offsets, the exclusive scan, in place, one block
//   3. embedding_bwd_rank: rank(n) = #{m < n : ids[m] = ids[n]}, one block per pair of 256-row
//      tiles (rows of tile b against the ids of tile j ≤ b, from shared memory), the partial
//      counts added with integer atomics (exact, so the result does not depend on their order)
//   4. embedding_bwd_place: order[offsets[ids[n]] + rank(n)] = n: a stable bucket sort by id
//   5. embedding_bwd_sum_<dtype>: one block per vocabulary row v, columns across threads, adding
//      the rows order[offsets[v] .. offsets[v + 1]] in order; an empty bucket writes zeros, so every
//      element of dtable is written.
//   Cost: step 3 makes N²/2 compares spread over (N/256)²/2 blocks of 256 compares per thread,
//   meant for N up to ~64k rows per call (a micro-batch's tokens; the launcher allows up to
//   65535 tiles); step 2 is one block over V + 1 counts; step 5 writes V·C fp32 (the floor) and
//   reads each dout row once.
#include "common.cuh"

#define GKD_EMB_ROWS_PER_BLOCK 8 // forward: warps per 256-thread block, one row each
#define GKD_EMB_RANK_TILE 256     // rank: rows per tile (the block size), ids per shared-memory tile
#define GKD_EMB_SUM_DEPTH 8      // sums: rows loaded ahead of their adds (vectorized path)
#define GKD_EMB_SCAN_ITEMS 16    // scan: consecutive counts per thread per tile (16 loads in flight)

__device__ __forceinline__ float quiet_nan() { return __int_as_float(0x7fc00000); }

// ----------------------------------------------------------------------------------------------
// forward

template <typename T>
__device__ void embedding_fwd(const T *__restrict__ table, // (V, C)
                              const unsigned int *__restrict__ ids, // (N)
                              T *__restrict__ out,   // (N, C)
                              int rows, int vocab, int cols, int vec) {
    const int lane = threadIdx.x & 31;
    const long row = (long)blockIdx.x * GKD_EMB_ROWS_PER_BLOCK + (threadIdx.x >> 5);
    if (row >= rows) return;
    const unsigned int id = ids[row];
    T *dst = out + row * cols;
    if (id >= (unsigned int)vocab) {
        for (int c = lane; c < cols; c += 32) store_f32(dst, c, quiet_nan());
        return;
    }
    const T *src = table + (long)id * cols;
    if (vec) {
        const uint4 *s4 = (const uint4 *)src;
        uint4 *d4 = (uint4 *)dst;
        const int n4 = (int)(cols * sizeof(T) / 16);
        for (int c = lane; c < n4; c += 32) d4[c] = s4[c];
    } else {
        for (int c = lane; c < cols; c += 32) dst[c] = src[c];
    }
}

// ----------------------------------------------------------------------------------------------
// backward, steps 1-4: the stable bucket sort of the rows by id (dtype-independent)

// counts (V + 1) zeroed by the launcher; grid-stride over the N ids.
extern "C" __global__ void embedding_bwd_histogram(const unsigned int *__restrict__ ids, // (N)
                                                   unsigned int *__restrict__ counts,   // (V + 1)
                                                   int rows, int vocab) {
    for (long n = (long)blockIdx.x * blockDim.x + threadIdx.x; n < rows; n += (long)gridDim.x * blockDim.x) {
        const unsigned int id = ids[n];
        if (id < (unsigned int)vocab) atomicAdd(&counts[id], 1u);
    }
}

// Exclusive scan of a (len), in place, by one block (blockDim.x a multiple of 32, at most 1024:
// the launch bound keeps registers within what 1024 threads may hold), in tiles of blockDim.x ·
// GKD_EMB_SCAN_ITEMS: each thread sums its consecutive items, the block scans those sums (warp
// shuffles, then the warp totals), and a carry runs across tiles.
extern "C" __global__ void __launch_bounds__(1024) embedding_bwd_scan(unsigned int *a, int len) {
    __shared__ unsigned int warp_prefix[32];
    __shared__ unsigned int tile_end;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    const long tile = (long)blockDim.x * GKD_EMB_SCAN_ITEMS;
    unsigned int carry = 0;
    for (long base = 0; base < len; base += tile) {
        const long i0 = base + (long)threadIdx.x * GKD_EMB_SCAN_ITEMS;
        unsigned int v[GKD_EMB_SCAN_ITEMS];
        unsigned int sum = 0;
#pragma unroll
        for (int k = 0; k < GKD_EMB_SCAN_ITEMS; k++) {
            v[k] = i0 + k < len ? a[i0 + k] : 0u;
            sum += v[k];
        }
        unsigned int inc = sum; // inclusive scan of the thread sums within the warp
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const unsigned int t = __shfl_up_sync(0xffffffffu, inc, o);
            if (lane >= o) inc += t;
        }
        if (lane == 31) warp_prefix[warp] = inc;
        __syncthreads();
        if (warp == 0) {
            const unsigned int w = lane < warps ? warp_prefix[lane] : 0u;
            unsigned int winc = w;
#pragma unroll
            for (int o = 1; o < 32; o <<= 1) {
                const unsigned int t = __shfl_up_sync(0xffffffffu, winc, o);
                if (lane >= o) winc += t;
            }
            if (lane < warps) warp_prefix[lane] = winc - w; // exclusive: the warps before
        }
        __syncthreads();
        unsigned int run = carry + warp_prefix[warp] + (inc - sum);
#pragma unroll
        for (int k = 0; k < GKD_EMB_SCAN_ITEMS; k++) {
            if (i0 + k < len) a[i0 + k] = run;
            run += v[k];
        }
        if (threadIdx.x == blockDim.x - 1) tile_end = run;
        __syncthreads();
        // The next tile writes warp_prefix only after its first barrier, and tile_end after its
        // second: every thread has read both by then.
        carry = tile_end;
    }
}

// Block (b, j), GKD_EMB_RANK_TILE threads: thread t counts the ids of tile j equal to the id of row
// n = b·TILE + t, among all of tile j when j < b and among rows b·TILE .. n − 1 when j = b; blocks
// with j > b have nothing to count. rank (N) is zeroed by the launcher.
extern "C" __global__ void embedding_bwd_rank(const unsigned int *__restrict__ ids, // (N)
                                              unsigned int *__restrict__ rank,      // (N)
                                              int rows) {
    __shared__ unsigned int tile[GKD_EMB_RANK_TILE];
    const int b = blockIdx.x, j = blockIdx.y;
    if (j > b) return; // the whole block: no barrier is skipped by part of it
    const int m = j * GKD_EMB_RANK_TILE + threadIdx.x;
    tile[threadIdx.x] = m < rows ? ids[m] : 0xffffffffu;
    __syncthreads();
    const int n = b * GKD_EMB_RANK_TILE + threadIdx.x;
    if (n >= rows) return;
    const unsigned int id = ids[n];
    const int upto = j < b ? GKD_EMB_RANK_TILE : (int)threadIdx.x;
    unsigned int r = 0;
#pragma unroll 8
    for (int k = 0; k < upto; k++) r += tile[k] == id ? 1u : 0u;
    if (r) atomicAdd(&rank[n], r);
}

// One thread per row: its place in its id's bucket. Rows with an id ≥ V have no bucket.
extern "C" __global__ void embedding_bwd_place(const unsigned int *__restrict__ ids,     // (N)
                                               const unsigned int *__restrict__ offsets, // (V + 1)
                                               const unsigned int *__restrict__ rank,    // (N)
                                               unsigned int *__restrict__ order,         // (N)
                                               int rows, int vocab) {
    const long n = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= rows) return;
    const unsigned int id = ids[n];
    if (id < (unsigned int)vocab) order[offsets[id] + rank[n]] = (unsigned int)n;
}

// ----------------------------------------------------------------------------------------------
// backward, step 5: the sums, one block per vocabulary row

// Four consecutive elements of dout as f32 (the launcher checked their alignment: 16 bytes in
// f32, 8 in bf16).
__device__ __forceinline__ float4 load4(const float *p, long i) { return *(const float4 *)(p + i); }
__device__ __forceinline__ float4 load4(const bf16 *p, long i) {
    const uint2 u = *(const uint2 *)(p + i);
    return make_float4(__uint_as_float(u.x << 16), __uint_as_float(u.x & 0xffff0000u),
                       __uint_as_float(u.y << 16), __uint_as_float(u.y & 0xffff0000u));
}

__device__ __forceinline__ void add4(float4 &acc, float4 x) {
    acc.x += x.x;
    acc.y += x.y;
    acc.z += x.z;
    acc.w += x.w;
}

template <typename T>
__device__ void embedding_bwd_sum(const T *__restrict__ dout,                // (N, C)
                                  const unsigned int *__restrict__ offsets, // (V + 1)
                                  const unsigned int *__restrict__ order,   // (N)
                                  float *__restrict__ dtable,               // (V, C)
                                  int cols, int vec) {
    const long v = blockIdx.x;
    const unsigned int b0 = offsets[v], b1 = offsets[v + 1];
    float *dst = dtable + v * cols;
    if (vec) {
        // C a multiple of 4. A frequent id's bucket is a long chain of dependent adds: the rows of
        // a step of GKD_EMB_SUM_DEPTH are all loaded before they are added (in order), so that many
        // loads are in flight instead of one.
        for (int c = threadIdx.x; c < (cols >> 2); c += blockDim.x) {
            const long col = 4L * c;
            float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            unsigned int k = b0;
            for (; k + GKD_EMB_SUM_DEPTH <= b1; k += GKD_EMB_SUM_DEPTH) {
                float4 x[GKD_EMB_SUM_DEPTH];
#pragma unroll
                for (int u = 0; u < GKD_EMB_SUM_DEPTH; u++) x[u] = load4(dout, (long)order[k + u] * cols + col);
#pragma unroll
                for (int u = 0; u < GKD_EMB_SUM_DEPTH; u++) add4(acc, x[u]);
            }
            for (; k < b1; k++) add4(acc, load4(dout, (long)order[k] * cols + col));
            *(float4 *)(dst + col) = acc;
        }
    } else {
        for (int c = threadIdx.x; c < cols; c += blockDim.x) {
            float acc = 0.0f;
            for (unsigned int k = b0; k < b1; k++) acc += load_f32(dout, (long)order[k] * cols + c);
            dst[c] = acc;
        }
    }
}

// ----------------------------------------------------------------------------------------------
// entry points, one per dtype

#define EMBEDDING_KERNELS(T, SUF)                                                                   \
    extern "C" __global__ void embedding_fwd_##SUF(const T *table, const unsigned int *ids, T *out, \
                                                   int rows, int vocab, int cols, int vec) {       \
        embedding_fwd<T>(table, ids, out, rows, vocab, cols, vec);                                 \
    }                                                                                              \
    extern "C" __global__ void embedding_bwd_sum_##SUF(const T *dout, const unsigned int *offsets, \
                                                       const unsigned int *order, float *dtable,   \
                                                       int cols, int vec) {                        \
        embedding_bwd_sum<T>(dout, offsets, order, dtable, cols, vec);                             \
    }

EMBEDDING_KERNELS(float, f32)
EMBEDDING_KERNELS(bf16, bf16)
