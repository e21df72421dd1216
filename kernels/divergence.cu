// Divergences between the teacher's and the student's next-token distributions, fused: per row,
// the loss and its gradient with respect to the student logits; f32 or bf16 logits, fp32 math.
// The formulas and their derivation are in src/distill/divergence.rs. Here they run in log2 units:
//   k = log2(e)/τ,  lq_j = k·s_j − A,  lp_j = k·t_j − B,  A = log2 Σ_j 2^{k·s_j},  B likewise,
//   q_j = 2^{lq_j},  p_j = 2^{lp_j};  a log that ends up in a result is multiplied by ln 2.
// Three passes over each row:
//   1. max and Σ 2^{k·(x − max)} of s and t (online per thread, merged across threads and CTAs);
//   2. the two row sums a divergence needs, and per element the part h_k of the gradient that
//      needs no row sum (Div<> in divergence_math.cuh);
//   3. grad_k = scale/τ · (hscale·h_k + λ·q_k), λ from the row sums, written in the logits' dtype.
// Probabilities are never stored. ex2/lg2 are the MUFU approximations (relative error ~2^-22).
//
// Arguments: s, t (rows, ld); grad (rows, ld), null for the loss alone, or s itself (in place);
// mask (rows) u8, 0 = row ignored (loss 0, gradient 0), or null; row_loss (rows) f32 = scale·D.
// Only the first V entries of a row are read or written.
//
// Kernels, each as _vec (16-byte accesses: s, t, grad and ld·sizeof(T) 16-byte aligned) and
// _scalar (any alignment), for _f32 and _bf16:
//   divergence_staged  a row is split over p.ctas CTAs (a thread-block cluster when > 1, sm_90);
//                      each copies its p.chunk entries of s and t to shared memory in pass 1, so
//                      HBM sees s and t read once and grad written once; pass 2 keeps h_k there
//                      in place of t_k, so pass 3 needs one exponential per element. The CTAs
//                      exchange their partial statistics through distributed shared memory. The
//                      grid is persistent: gridDim.x / p.ctas clusters walk the rows.
//   divergence_rows    one block per row; every pass reads s and t from global memory (the second
//                      and third reads hit L2 when the rows in flight fit in it).
//   divergence_warps   one warp per row, DIV_WARPS_PER_BLOCK rows per block, for small V.
#include "divergence_math.cuh"

#define DIV_STAGED_THREADS 256
#define DIV_STAGED_MIN_BLOCKS 3 // per SM: one CTA loads while the others compute
#define DIV_ROWS_THREADS 512
#define DIV_WARPS_PER_BLOCK 8

// ----------------------------------------------------------------------------------------------
// A CTA's slice of a row in shared memory (staged kernel): s and t as loaded in pass 1, then h
// (f32, scaled) in place of t from pass 2 on. Per element: f32 4 + 4 bytes; bf16 2 + 4 bytes,
// t sitting in the first half of h's slot. Vector v (VW elements) of a bf16 slice is a 48-byte
// block, s then t/h, so that 16-byte accesses of a quarter warp hit distinct banks; the elements
// after the last whole vector use the same block layout one element at a time. The host's
// staged_chunk() mirrors the sizes.

template <typename T, int VW> struct Stage;

template <int VW> struct Stage<float, VW> {
    float *s, *th; // (chunk) each
    __device__ __forceinline__ Stage(void *base, int chunk)
        : s(reinterpret_cast<float *>(base)), th(reinterpret_cast<float *>(base) + chunk) {}
    __device__ __forceinline__ void put(int v, const Vec<float, VW> &a, const Vec<float, VW> &b) const {
        a.store(s + v * VW);
        b.store(th + v * VW);
    }
    __device__ __forceinline__ void get(int v, Vec<float, VW> &a, Vec<float, VW> &b) const {
        a.load(s + v * VW);
        b.load(th + v * VW);
    }
    __device__ __forceinline__ void get_s(int v, Vec<float, VW> &a) const { a.load(s + v * VW); }
    __device__ __forceinline__ void put_h(int v, const float (&h)[VW]) const {
        Vec<float, VW> x;
        x.pack(h);
        x.store(th + v * VW);
    }
    __device__ __forceinline__ void get_h(int v, float (&h)[VW]) const {
        Vec<float, VW> x;
        x.load(th + v * VW);
#pragma unroll
        for (int i = 0; i < VW; i++) h[i] = x.get(i);
    }
    __device__ __forceinline__ void put1(int e, float a, float b) const { s[e] = a, th[e] = b; }
    __device__ __forceinline__ void get1(int e, float &a, float &b) const { a = s[e], b = th[e]; }
    __device__ __forceinline__ float get_s1(int e) const { return s[e]; }
    __device__ __forceinline__ void put_h1(int e, float h) const { th[e] = h; }
    __device__ __forceinline__ float get_h1(int e) const { return th[e]; }
};

template <> struct Stage<bf16, 8> {
    unsigned char *base; // 48-byte blocks: 8 s (16 bytes), then 8 t (16 bytes) / 8 h (32 bytes)
    __device__ __forceinline__ Stage(void *b, int) : base(reinterpret_cast<unsigned char *>(b)) {}
    __device__ __forceinline__ bf16 *sv(int v) const { return reinterpret_cast<bf16 *>(base + 48 * v); }
    __device__ __forceinline__ unsigned char *slot(int e) const { return base + 48 * (e >> 3) + 16 + 4 * (e & 7); }
    __device__ __forceinline__ void put(int v, const Vec<bf16, 8> &a, const Vec<bf16, 8> &b) const {
        a.store(sv(v));
        b.store(sv(v) + 8);
    }
    __device__ __forceinline__ void get(int v, Vec<bf16, 8> &a, Vec<bf16, 8> &b) const {
        a.load(sv(v));
        b.load(sv(v) + 8);
    }
    __device__ __forceinline__ void get_s(int v, Vec<bf16, 8> &a) const { a.load(sv(v)); }
    __device__ __forceinline__ void put_h(int v, const float (&h)[8]) const {
        Bits128 *d = reinterpret_cast<Bits128 *>(sv(v) + 8);
        Bits128 x, y;
#pragma unroll
        for (int i = 0; i < 4; i++) x.w[i] = __float_as_uint(h[i]), y.w[i] = __float_as_uint(h[4 + i]);
        d[0] = x;
        d[1] = y;
    }
    __device__ __forceinline__ void get_h(int v, float (&h)[8]) const {
        const Bits128 *d = reinterpret_cast<const Bits128 *>(sv(v) + 8);
        const Bits128 x = d[0], y = d[1];
#pragma unroll
        for (int i = 0; i < 4; i++) h[i] = __uint_as_float(x.w[i]), h[4 + i] = __uint_as_float(y.w[i]);
    }
    __device__ __forceinline__ void put1(int e, bf16 a, bf16 b) const {
        sv(e >> 3)[e & 7] = a;
        *reinterpret_cast<bf16 *>(slot(e)) = b;
    }
    __device__ __forceinline__ void get1(int e, bf16 &a, bf16 &b) const {
        a = sv(e >> 3)[e & 7];
        b = *reinterpret_cast<const bf16 *>(slot(e));
    }
    __device__ __forceinline__ bf16 get_s1(int e) const { return sv(e >> 3)[e & 7]; }
    __device__ __forceinline__ void put_h1(int e, float h) const { *reinterpret_cast<float *>(slot(e)) = h; }
    __device__ __forceinline__ float get_h1(int e) const { return *reinterpret_cast<const float *>(slot(e)); }
};

template <> struct Stage<bf16, 1> {
    bf16 *s;            // (chunk), then padding to 16 bytes
    unsigned char *sl; // (chunk) 4-byte slots: t in the first half, then h
    __device__ __forceinline__ Stage(void *b, int chunk)
        : s(reinterpret_cast<bf16 *>(b)), sl(reinterpret_cast<unsigned char *>(b) + ((2 * chunk + 15) & ~15)) {}
    __device__ __forceinline__ void put(int e, const Vec<bf16, 1> &a, const Vec<bf16, 1> &b) const { put1(e, a.x, b.x); }
    __device__ __forceinline__ void get(int e, Vec<bf16, 1> &a, Vec<bf16, 1> &b) const { get1(e, a.x, b.x); }
    __device__ __forceinline__ void get_s(int e, Vec<bf16, 1> &a) const { a.x = s[e]; }
    __device__ __forceinline__ void put_h(int e, const float (&h)[1]) const { put_h1(e, h[0]); }
    __device__ __forceinline__ void get_h(int e, float (&h)[1]) const { h[0] = get_h1(e); }
    __device__ __forceinline__ void put1(int e, bf16 a, bf16 b) const {
        s[e] = a;
        *reinterpret_cast<bf16 *>(sl + 4 * e) = b;
    }
    __device__ __forceinline__ void get1(int e, bf16 &a, bf16 &b) const {
        a = s[e];
        b = *reinterpret_cast<const bf16 *>(sl + 4 * e);
    }
    __device__ __forceinline__ bf16 get_s1(int e) const { return s[e]; }
    __device__ __forceinline__ void put_h1(int e, float h) const { *reinterpret_cast<float *>(sl + 4 * e) = h; }
    __device__ __forceinline__ float get_h1(int e) const { return *reinterpret_cast<const float *>(sl + 4 * e); }
};

// Pass 1 of the streaming kernels keeps nothing.
template <typename T, int VW> struct NoStage {
    __device__ __forceinline__ void put(int, const Vec<T, VW> &, const Vec<T, VW> &) const {}
    __device__ __forceinline__ void put1(int, T, T) const {}
};

// ----------------------------------------------------------------------------------------------
// The passes over elements [0, n) of a row slice, by thread `rank` of `size`; global pointers are
// 16-byte aligned when VW > 1. U vectors per thread are loaded before any is used. A thread
// visits the same elements in every pass, so what it keeps in the stage is its own.

template <typename T, int VW>
__device__ __forceinline__ void fold_vec(RowStats &acc, const Vec<T, VW> &a, const Vec<T, VW> &b, float k) {
    float xs[VW], xt[VW];
#pragma unroll
    for (int i = 0; i < VW; i++) xs[i] = a.get(i), xt[i] = b.get(i);
    ms_fold(acc.s, xs, k);
    ms_fold(acc.t, xt, k);
}

// Pass 1: this thread's statistics; the elements also go to `sink` (a Stage, or nowhere).
template <typename T, int VW, int U, typename Sink>
__device__ __forceinline__ RowStats pass_stats(const T *s, const T *t, const Sink &sink, int n, int rank, int size,
                                               float k) {
    RowStats acc = stats_identity();
    const int nvec = n / VW;
    int v0 = rank;
    for (; v0 + (U - 1) * size < nvec; v0 += U * size) { // whole iterations: no bounds checks
        Vec<T, VW> a[U], b[U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            a[u].load(s + (v0 + u * size) * VW);
            b[u].load(t + (v0 + u * size) * VW);
        }
        float xs[U * VW], xt[U * VW];
#pragma unroll
        for (int u = 0; u < U; u++) {
            sink.put(v0 + u * size, a[u], b[u]);
#pragma unroll
            for (int i = 0; i < VW; i++) xs[u * VW + i] = a[u].get(i), xt[u * VW + i] = b[u].get(i);
        }
        ms_fold(acc.s, xs, k);
        ms_fold(acc.t, xt, k);
    }
    for (int v = v0; v < nvec; v += size) {
        Vec<T, VW> a, b;
        a.load(s + v * VW);
        b.load(t + v * VW);
        sink.put(v, a, b);
        fold_vec(acc, a, b, k);
    }
    for (int e = nvec * VW + rank; e < n; e += size) {
        Vec<T, 1> a, b;
        a.load(s + e);
        b.load(t + e);
        sink.put1(e, a.x, b.x);
        fold_vec(acc, a, b, k);
    }
    return acc;
}

// Pass 2 of the streaming kernels: this thread's share of the row sums. A, B: the log2
// normalizers of s and t.
template <int KIND, typename T, int VW, int U>
__device__ __forceinline__ RowSums pass_sums(const T *s, const T *t, int n, int rank, int size, float k, float A,
                                             float B, float coef) {
    RowSums acc;
    acc.a = acc.b = 0.0f;
    const int nvec = n / VW;
    for (int v0 = rank; v0 < nvec; v0 += U * size) {
        Vec<T, VW> a[U], b[U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            if (v0 + u * size < nvec) {
                a[u].load(s + (v0 + u * size) * VW);
                b[u].load(t + (v0 + u * size) * VW);
            }
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            if (v0 + u * size < nvec) {
#pragma unroll
                for (int i = 0; i < VW; i++)
                    Div<KIND>::element(fmaf(a[u].get(i), k, -A), fmaf(b[u].get(i), k, -B), coef, acc);
            }
        }
    }
    for (int e = nvec * VW + rank; e < n; e += size)
        Div<KIND>::element(fmaf(load_f32(s, e), k, -A), fmaf(load_f32(t, e), k, -B), coef, acc);
    return acc;
}

// Pass 3 of the streaming kernels: g = hs·h + lam·q over the slice, h recomputed. g may be s
// (each element is read before it is written, by the same thread).
template <int KIND, typename T, int VW, int U>
__device__ __forceinline__ void pass_grad(const T *s, const T *t, T *g, int n, int rank, int size, float k, float A,
                                          float B, float coef, float hs, float lam) {
    RowSums unused;
    unused.a = unused.b = 0.0f;
    const int nvec = n / VW;
    for (int v0 = rank; v0 < nvec; v0 += U * size) {
        Vec<T, VW> a[U], b[U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            if (v0 + u * size < nvec) {
                a[u].load(s + (v0 + u * size) * VW);
                b[u].load(t + (v0 + u * size) * VW);
            }
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            if (v0 + u * size < nvec) {
                float o[VW];
#pragma unroll
                for (int i = 0; i < VW; i++) {
                    const float lq = fmaf(a[u].get(i), k, -A), lp = fmaf(b[u].get(i), k, -B);
                    o[i] = combine<true>(hs * Div<KIND>::element(lq, lp, coef, unused), lam, ex2(lq));
                }
                Vec<T, VW> out;
                out.pack(o);
                out.store(g + (v0 + u * size) * VW);
            }
        }
    }
    for (int e = nvec * VW + rank; e < n; e += size) {
        const float lq = fmaf(load_f32(s, e), k, -A), lp = fmaf(load_f32(t, e), k, -B);
        store_f32(g, e, combine<true>(hs * Div<KIND>::element(lq, lp, coef, unused), lam, ex2(lq)));
    }
}

// Pass 2 of the staged kernel: the row sums, and hs·h into the stage in place of t.
template <int KIND, typename T, int VW>
__device__ __forceinline__ void sums_vec(const Stage<T, VW> &sg, int v, const Vec<T, VW> &a, const Vec<T, VW> &b,
                                         float k, float A, float B, float coef, float hs, RowSums &acc) {
    float h[VW];
#pragma unroll
    for (int i = 0; i < VW; i++) h[i] = hs * Div<KIND>::element(fmaf(a.get(i), k, -A), fmaf(b.get(i), k, -B), coef, acc);
    sg.put_h(v, h);
}

template <int KIND, typename T, int VW, int U>
__device__ __forceinline__ RowSums staged_sums(const Stage<T, VW> &sg, int n, int rank, int size, float k, float A,
                                               float B, float coef, float hs) {
    RowSums acc;
    acc.a = acc.b = 0.0f;
    const int nvec = n / VW;
    int v0 = rank;
    for (; v0 + (U - 1) * size < nvec; v0 += U * size) {
        Vec<T, VW> a[U], b[U];
#pragma unroll
        for (int u = 0; u < U; u++) sg.get(v0 + u * size, a[u], b[u]);
#pragma unroll
        for (int u = 0; u < U; u++) sums_vec<KIND, T, VW>(sg, v0 + u * size, a[u], b[u], k, A, B, coef, hs, acc);
    }
    for (int v = v0; v < nvec; v += size) {
        Vec<T, VW> a, b;
        sg.get(v, a, b);
        sums_vec<KIND, T, VW>(sg, v, a, b, k, A, B, coef, hs, acc);
    }
    for (int e = nvec * VW + rank; e < n; e += size) {
        Vec<T, 1> a, b;
        sg.get1(e, a.x, b.x);
        sg.put_h1(e, hs * Div<KIND>::element(fmaf(a.get(0), k, -A), fmaf(b.get(0), k, -B), coef, acc));
    }
    return acc;
}

// Pass 3 of the staged kernel: g = h + lam·q from the stage (h already scaled), one exponential
// per element, whatever the divergence; GUARD as in combine().
template <bool GUARD, typename T, int VW>
__device__ __forceinline__ void grad_vec(const Vec<T, VW> &a, const float (&h)[VW], T *g, float k, float A, float lam) {
    float o[VW];
#pragma unroll
    for (int i = 0; i < VW; i++) o[i] = combine<GUARD>(h[i], lam, ex2(fmaf(a.get(i), k, -A)));
    Vec<T, VW> out;
    out.pack(o);
    out.store(g);
}

template <bool GUARD, typename T, int VW, int U>
__device__ __forceinline__ void staged_grad(const Stage<T, VW> &sg, T *g, int n, int rank, int size, float k, float A,
                                            float lam) {
    const int nvec = n / VW;
    int v0 = rank;
    for (; v0 + (U - 1) * size < nvec; v0 += U * size) {
        Vec<T, VW> a[U];
        float h[U][VW];
#pragma unroll
        for (int u = 0; u < U; u++) {
            sg.get_s(v0 + u * size, a[u]);
            sg.get_h(v0 + u * size, h[u]);
        }
#pragma unroll
        for (int u = 0; u < U; u++) grad_vec<GUARD>(a[u], h[u], g + (v0 + u * size) * VW, k, A, lam);
    }
    for (int v = v0; v < nvec; v += size) {
        Vec<T, VW> a;
        float h[VW];
        sg.get_s(v, a);
        sg.get_h(v, h);
        grad_vec<GUARD>(a, h, g + v * VW, k, A, lam);
    }
    for (int e = nvec * VW + rank; e < n; e += size) {
        Vec<T, 1> a;
        a.x = sg.get_s1(e);
        store_f32(g, e, combine<GUARD>(sg.get_h1(e), lam, ex2(fmaf(a.get(0), k, -A))));
    }
}

template <typename T, int VW> __device__ __forceinline__ void fill_zero(T *g, int n, int rank, int size) {
    const int nvec = n / VW;
    Vec<T, VW> z;
    z.zero();
    for (int v = rank; v < nvec; v += size) z.store(g + v * VW);
    for (int e = nvec * VW + rank; e < n; e += size) store_f32(g, e, 0.0f);
}

// A row (slice) has no distribution when all its student or all its teacher logits are −inf.
__device__ __forceinline__ bool degenerate(const RowStats &st) {
    return st.s.m == GKD_NEG_INF || st.t.m == GKD_NEG_INF;
}

// ----------------------------------------------------------------------------------------------
// divergence_rows / divergence_warps: a block (WARP = false) or a warp (WARP = true) per row.

template <int KIND, typename T, int VW, bool WARP>
__device__ __forceinline__ void streaming_row(const T *s, const T *t, T *g, float *loss, int n, float k,
                                              const gkd_divergence_params &p, RowStats *st_scratch,
                                              RowSums *sum_scratch) {
    constexpr int U = VW == 1 ? 4 : 16 / VW; // 16 elements of each row in flight per thread
    const int rank = WARP ? (threadIdx.x & 31) : threadIdx.x, size = WARP ? 32 : blockDim.x;
    RowStats st = pass_stats<T, VW, U>(s, t, NoStage<T, VW>(), n, rank, size, k);
    st = WARP ? warp_stats(st, k) : block_stats(st, k, st_scratch);
    if (degenerate(st)) {
        if (g) fill_zero<T, VW>(g, n, rank, size);
        if (rank == 0) *loss = 0.0f;
        return;
    }
    const float A = kmax(st.s.m, k) + lg2(st.s.z), B = kmax(st.t.m, k) + lg2(st.t.z);
    RowSums r = pass_sums<KIND, T, VW, U>(s, t, n, rank, size, k, A, B, p.coef);
    r = WARP ? warp_sums(r) : block_sums(r, sum_scratch);
    const float d = Div<KIND>::loss(r, p.coef), gscale = p.scale * p.inv_temp;
    if (rank == 0) *loss = p.scale * d;
    if (g)
        pass_grad<KIND, T, VW, U>(s, t, g, n, rank, size, k, A, B, p.coef, gscale * Div<KIND>::hscale(p.coef),
                                  gscale * Div<KIND>::lambda(r, p.coef, d));
}

template <typename T, int VW, bool WARP>
__device__ __forceinline__ void streaming_kernel(const T *s, const T *t, const unsigned char *mask, T *g,
                                                 float *row_loss, const gkd_divergence_params &p) {
    __shared__ RowStats st_scratch[32];
    __shared__ RowSums sum_scratch[32];
    const long row = WARP ? (long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5) : (long)blockIdx.x;
    if (row >= p.rows) return;
    const long off = row * p.ld;
    T *gr = g ? g + off : nullptr;
    if (mask && !mask[row]) {
        const int rank = WARP ? (threadIdx.x & 31) : threadIdx.x, size = WARP ? 32 : blockDim.x;
        if (gr) fill_zero<T, VW>(gr, p.vocab, rank, size);
        if (rank == 0) row_loss[row] = 0.0f;
        return;
    }
    const float k = p.inv_temp * DIV_LOG2E;
    const T *sr = s + off, *tr = t + off;
    float *l = row_loss + row;
    switch (p.kind) {
    case GKD_DIV_FKL: streaming_row<GKD_DIV_FKL, T, VW, WARP>(sr, tr, gr, l, p.vocab, k, p, st_scratch, sum_scratch); break;
    case GKD_DIV_RKL: streaming_row<GKD_DIV_RKL, T, VW, WARP>(sr, tr, gr, l, p.vocab, k, p, st_scratch, sum_scratch); break;
    case GKD_DIV_JSD: streaming_row<GKD_DIV_JSD, T, VW, WARP>(sr, tr, gr, l, p.vocab, k, p, st_scratch, sum_scratch); break;
    case GKD_DIV_TVD: streaming_row<GKD_DIV_TVD, T, VW, WARP>(sr, tr, gr, l, p.vocab, k, p, st_scratch, sum_scratch); break;
    case GKD_DIV_SKEW_FKL: streaming_row<GKD_DIV_SKEW_FKL, T, VW, WARP>(sr, tr, gr, l, p.vocab, k, p, st_scratch, sum_scratch); break;
    case GKD_DIV_SKEW_RKL: streaming_row<GKD_DIV_SKEW_RKL, T, VW, WARP>(sr, tr, gr, l, p.vocab, k, p, st_scratch, sum_scratch); break;
    default: break;
    }
}

// ----------------------------------------------------------------------------------------------
// divergence_staged: CTA `part` of a cluster of p.ctas holds entries [part·chunk, part·chunk + n)
// of its row in the stage. With a cluster the statistics and sums are merged through distributed
// shared memory; a CTA does not leave a row before every CTA of its cluster has read its slots,
// so the next row may overwrite them. Every decision that skips a barrier (mask, degenerate row)
// is uniform over the cluster.

// Passes 2 of the staged kernel for one divergence: the row sums over the block and the cluster,
// the loss, and h in the stage; returns λ·scale/τ for pass 3, which is the same for every
// divergence and runs in staged_kernel. With a cluster it ends with this CTA's "done reading the
// other CTAs' shared memory" arrive, whose wait follows pass 3.
template <int KIND, typename T, int VW>
__device__ __forceinline__ float staged_sums_row(const Stage<T, VW> &sg, float *loss, int n, float k, float A,
                                                 float B, bool first, const gkd_divergence_params &p,
                                                 RowSums *sum_scratch, RowSums *sum_slot) {
    const float gscale = p.scale * p.inv_temp;
    RowSums r = staged_sums<KIND, T, VW, 2>(sg, n, threadIdx.x, blockDim.x, k, A, B, p.coef,
                                            gscale * Div<KIND>::hscale(p.coef));
    r = block_sums(r, sum_scratch);
#if __CUDA_ARCH__ >= 900
    if (p.ctas > 1) {
        r = cluster_sums(r, sum_slot, p.ctas);
        cluster_arrive();
    }
#endif
    const float d = Div<KIND>::loss(r, p.coef);
    if (first && threadIdx.x == 0) *loss = p.scale * d;
    return gscale * Div<KIND>::lambda(r, p.coef, d);
}

template <typename T, int VW>
__device__ __forceinline__ void staged_kernel(const T *s, const T *t, const unsigned char *mask, T *g,
                                              float *row_loss, const gkd_divergence_params &p) {
    extern __shared__ Bits128 div_stage[]; // this CTA's Stage<T, VW> of p.chunk elements
    // One entry per warp: block_stats/block_sums read blockDim.x / 32 of them, and the launch
    // bounds cap blockDim.x at DIV_STAGED_THREADS.
    __shared__ RowStats st_scratch[DIV_STAGED_THREADS / 32];
    __shared__ RowSums sum_scratch[DIV_STAGED_THREADS / 32];
#if __CUDA_ARCH__ >= 900
    __shared__ RowStats st_slot; // this CTA's statistics, read by the cluster
    __shared__ RowSums sum_slot; // this CTA's sums, read by the cluster
    RowSums *sum_slot_p = &sum_slot;
#else
    RowSums *sum_slot_p = nullptr;
#endif
    long row0, stride;
    int part;
#if __CUDA_ARCH__ >= 900
    if (p.ctas > 1) {
        row0 = cluster_index();
        part = cluster_rank();
        stride = gridDim.x / p.ctas;
    } else {
        row0 = blockIdx.x;
        part = 0;
        stride = gridDim.x;
    }
#else
    if (p.ctas > 1) __trap(); // clusters need sm_90; the launcher never asks for them below
    row0 = blockIdx.x;
    part = 0;
    stride = gridDim.x;
#endif
    const int c0 = part * p.chunk;
    const int n = max(0, min(p.vocab - c0, p.chunk));
    const bool first = part == 0;
    const Stage<T, VW> sg(div_stage, p.chunk);
    const float k = p.inv_temp * DIV_LOG2E;
    for (long row = row0; row < p.rows; row += stride) {
        const long off = row * p.ld + c0;
        T *gr = g ? g + off : nullptr;
        if (mask && !mask[row]) { // no barrier and no shared memory: the next row may start at once
            if (gr) fill_zero<T, VW>(gr, n, threadIdx.x, blockDim.x);
            if (first && threadIdx.x == 0) row_loss[row] = 0.0f;
            continue;
        }
        RowStats stats = pass_stats<T, VW, 4>(s + off, t + off, sg, n, threadIdx.x, blockDim.x, k);
        stats = block_stats(stats, k, st_scratch);
#if __CUDA_ARCH__ >= 900
        const long next = row + stride;
        const unsigned int bytes = (unsigned int)(n * sizeof(T)) & ~15u;
        if (VW > 1 && (p.flags & GKD_DIV_PREFETCH_L2) && threadIdx.x == 0 && next < p.rows && bytes > 0 &&
            !(mask && !mask[next])) {
            prefetch_l2(s + next * p.ld + c0, bytes);
            prefetch_l2(t + next * p.ld + c0, bytes);
        }
        if (p.ctas > 1) stats = cluster_stats(stats, k, &st_slot, p.ctas);
#endif
        if (degenerate(stats)) { // uniform over the cluster: one barrier phase instead of two
#if __CUDA_ARCH__ >= 900
            if (p.ctas > 1) cluster_arrive();
#endif
            if (gr) fill_zero<T, VW>(gr, n, threadIdx.x, blockDim.x);
            if (first && threadIdx.x == 0) row_loss[row] = 0.0f;
#if __CUDA_ARCH__ >= 900
            if (p.ctas > 1) cluster_wait();
#endif
            continue;
        }
        const float A = kmax(stats.s.m, k) + lg2(stats.s.z), B = kmax(stats.t.m, k) + lg2(stats.t.z);
        float *l = row_loss + row;
        float lam;
        switch (p.kind) {
        case GKD_DIV_FKL: lam = staged_sums_row<GKD_DIV_FKL, T, VW>(sg, l, n, k, A, B, first, p, sum_scratch, sum_slot_p); break;
        case GKD_DIV_RKL: lam = staged_sums_row<GKD_DIV_RKL, T, VW>(sg, l, n, k, A, B, first, p, sum_scratch, sum_slot_p); break;
        case GKD_DIV_JSD: lam = staged_sums_row<GKD_DIV_JSD, T, VW>(sg, l, n, k, A, B, first, p, sum_scratch, sum_slot_p); break;
        case GKD_DIV_TVD: lam = staged_sums_row<GKD_DIV_TVD, T, VW>(sg, l, n, k, A, B, first, p, sum_scratch, sum_slot_p); break;
        case GKD_DIV_SKEW_FKL: lam = staged_sums_row<GKD_DIV_SKEW_FKL, T, VW>(sg, l, n, k, A, B, first, p, sum_scratch, sum_slot_p); break;
        case GKD_DIV_SKEW_RKL: lam = staged_sums_row<GKD_DIV_SKEW_RKL, T, VW>(sg, l, n, k, A, B, first, p, sum_scratch, sum_slot_p); break;
        default: __trap(); // the launcher validates the kind
        }
        // Pass 3: the fast loop when λ is finite (uniform over the row), else the guarded one.
        if (gr && fabsf(lam) <= 3.402823466e38f) staged_grad<false, T, VW, 2>(sg, gr, n, threadIdx.x, blockDim.x, k, A, lam);
        else if (gr) staged_grad<true, T, VW, 2>(sg, gr, n, threadIdx.x, blockDim.x, k, A, lam);
#if __CUDA_ARCH__ >= 900
        if (p.ctas > 1) cluster_wait(); // every other CTA is done reading this one's slots
#endif
        __syncthreads(); // every thread is done with the stage before the next row fills it
    }
}

// ----------------------------------------------------------------------------------------------
// entry points

#define DIV_KERNELS(T, SUF, VW, VSUF)                                                                              \
    extern "C" __global__ void __launch_bounds__(DIV_STAGED_THREADS, DIV_STAGED_MIN_BLOCKS)                         \
        divergence_staged_##VSUF##_##SUF(const T *s, const T *__restrict__ t, const unsigned char *mask, T *g,     \
                                         float *row_loss, gkd_divergence_params p) {                               \
        staged_kernel<T, VW>(s, t, mask, g, row_loss, p);                                                          \
    }                                                                                                              \
    extern "C" __global__ void __launch_bounds__(DIV_ROWS_THREADS, 1)                                               \
        divergence_rows_##VSUF##_##SUF(const T *s, const T *__restrict__ t, const unsigned char *mask, T *g,       \
                                       float *row_loss, gkd_divergence_params p) {                                 \
        streaming_kernel<T, VW, false>(s, t, mask, g, row_loss, p);                                                \
    }                                                                                                              \
    extern "C" __global__ void __launch_bounds__(32 * DIV_WARPS_PER_BLOCK, 1)                                       \
        divergence_warps_##VSUF##_##SUF(const T *s, const T *__restrict__ t, const unsigned char *mask, T *g,      \
                                        float *row_loss, gkd_divergence_params p) {                                \
        streaming_kernel<T, VW, true>(s, t, mask, g, row_loss, p);                                                 \
    }

DIV_KERNELS(float, f32, 4, vec)
DIV_KERNELS(float, f32, 1, scalar)
DIV_KERNELS(bf16, bf16, 8, vec)
DIV_KERNELS(bf16, bf16, 1, scalar)
