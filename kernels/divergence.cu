// Divergences between the teacher's and the student's next-token distributions, fused: per row,
// the loss and its gradient with respect to the student logits; f32 or bf16 logits, fp32 math.
// The formulas and their derivation are in src/distill/divergence.rs. Here they run in log2 units:
//   k = log2(e)/τ,  lq_j = k·s_j − A,  lp_j = k·t_j − B,  A = log2 Σ_j 2^{k·s_j},  B likewise,
//   q_j = 2^{lq_j},  p_j = 2^{lp_j};  a log that ends up in a result is multiplied by ln 2.
// Three passes over each row:
//   1. max and Σ 2^{k·(x − max)} of s and t (online per thread, merged across threads and CTAs);
//   2. the two row sums a divergence needs: its loss D and Σ_j Q_j ∂D/∂Q_j (table in Div<> below);
//   3. grad_k = scale/τ · Q_k (∂D/∂Q_k − Σ_j Q_j ∂D/∂Q_j), written in the logits' dtype.
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
//                      HBM sees s and t read once and grad written once; the CTAs exchange their
//                      partial statistics through distributed shared memory.
//   divergence_rows    one block per row; every pass reads s and t from global memory (the second
//                      and third reads hit L2 when the rows in flight fit in it).
//   divergence_warps   one warp per row, DIV_WARPS_PER_BLOCK rows per block, for small V.
#include "common.cuh"

#define DIV_STAGED_THREADS 256
#define DIV_STAGED_MIN_BLOCKS 3 // per SM: one CTA loads while the others compute
#define DIV_ROWS_THREADS 512
#define DIV_WARPS_PER_BLOCK 8
#define DIV_LN2 0.693147180559945309f
#define DIV_LOG2E 1.442695040888963407f
#define DIV_FLT_MIN 1.175494351e-38f

__device__ __forceinline__ float ex2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

__device__ __forceinline__ float lg2(float x) {
    float y;
    asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

__device__ __forceinline__ float sgn(float x) { return (x > 0.0f ? 1.0f : 0.0f) - (x < 0.0f ? 1.0f : 0.0f); }

// ----------------------------------------------------------------------------------------------
// VW consecutive elements of a row in registers: one 16-byte access, or one element.

// 16 bytes (no cuda vector types: NVRTC compiles this file without headers).
struct alignas(16) Bits128 {
    unsigned int w[4];
};

template <typename T, int VW> struct Vec;

template <> struct Vec<float, 4> {
    float x[4];
    __device__ __forceinline__ void load(const float *p) {
        const Bits128 v = *reinterpret_cast<const Bits128 *>(p);
        x[0] = __uint_as_float(v.w[0]), x[1] = __uint_as_float(v.w[1]);
        x[2] = __uint_as_float(v.w[2]), x[3] = __uint_as_float(v.w[3]);
    }
    __device__ __forceinline__ void store(float *p) const {
        Bits128 v;
        for (int i = 0; i < 4; i++) v.w[i] = __float_as_uint(x[i]);
        *reinterpret_cast<Bits128 *>(p) = v;
    }
    __device__ __forceinline__ float get(int i) const { return x[i]; }
    __device__ __forceinline__ void pack(const float (&v)[4]) {
        for (int i = 0; i < 4; i++) x[i] = v[i];
    }
    __device__ __forceinline__ void zero() { x[0] = x[1] = x[2] = x[3] = 0.0f; }
};

template <> struct Vec<bf16, 8> {
    unsigned int w[4]; // element 2i in the low half of w[i]
    __device__ __forceinline__ void load(const bf16 *p) {
        const Bits128 v = *reinterpret_cast<const Bits128 *>(p);
        for (int i = 0; i < 4; i++) w[i] = v.w[i];
    }
    __device__ __forceinline__ void store(bf16 *p) const {
        Bits128 v;
        for (int i = 0; i < 4; i++) v.w[i] = w[i];
        *reinterpret_cast<Bits128 *>(p) = v;
    }
    __device__ __forceinline__ float get(int i) const {
        return __uint_as_float((i & 1) ? (w[i >> 1] & 0xffff0000u) : (w[i >> 1] << 16));
    }
    // Round to nearest even, two at a time (one instruction on sm_80+; NaN stays NaN).
    __device__ __forceinline__ void pack(const float (&v)[8]) {
        for (int i = 0; i < 4; i++)
            asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(w[i]) : "f"(v[2 * i + 1]), "f"(v[2 * i]));
    }
    __device__ __forceinline__ void zero() { w[0] = w[1] = w[2] = w[3] = 0u; }
};

template <typename T> struct Vec<T, 1> {
    T x;
    __device__ __forceinline__ void load(const T *p) { x = *p; }
    __device__ __forceinline__ void store(T *p) const { *p = x; }
    __device__ __forceinline__ float get(int) const { return load_f32(&x, 0); }
    __device__ __forceinline__ void pack(const float (&v)[1]) { store_f32(&x, 0, v[0]); }
    __device__ __forceinline__ void zero() { store_f32(&x, 0, 0.0f); }
};

// ----------------------------------------------------------------------------------------------
// Row statistics and their merges: per thread, then warp, block and cluster.

struct MaxSum {
    float m; // max of the raw logits seen
    float z; // Σ 2^{k·x − k·m} over them
};
struct RowStats {
    MaxSum s, t;
};
struct RowSums {
    float a, b;
};

// k·m, with 0 for m = −inf so that 2^{k·x − k·m} stays 0 (not NaN) for x = −inf.
__device__ __forceinline__ float kmax(float m, float k) { return m == GKD_NEG_INF ? 0.0f : m * k; }

__device__ __forceinline__ RowStats stats_identity() {
    RowStats r;
    r.s.m = r.t.m = GKD_NEG_INF;
    r.s.z = r.t.z = 0.0f;
    return r;
}

__device__ __forceinline__ MaxSum ms_merge(MaxSum a, MaxSum b, float k) {
    MaxSum r;
    r.m = fmaxf(a.m, b.m);
    const float mk = kmax(r.m, k);
    r.z = a.z * ex2(fmaf(a.m, k, -mk)) + b.z * ex2(fmaf(b.m, k, -mk));
    return r;
}

// Folds N values into a running (max, sum): one rescale per batch.
template <int N> __device__ __forceinline__ void ms_fold(MaxSum &a, const float (&x)[N], float k) {
    float m = a.m;
#pragma unroll
    for (int i = 0; i < N; i++) m = fmaxf(m, x[i]);
    const float mk = kmax(m, k);
    float z0 = a.z * ex2(fmaf(a.m, k, -mk)), z1 = 0.0f;
#pragma unroll
    for (int i = 0; i < N; i += 2) {
        z0 += ex2(fmaf(x[i], k, -mk));
        if (i + 1 < N) z1 += ex2(fmaf(x[i + 1], k, -mk));
    }
    a.m = m;
    a.z = z0 + z1;
}

__device__ __forceinline__ RowStats warp_stats(RowStats v, float k) {
    for (int o = 16; o > 0; o >>= 1) {
        MaxSum s, t;
        s.m = __shfl_xor_sync(0xffffffffu, v.s.m, o);
        s.z = __shfl_xor_sync(0xffffffffu, v.s.z, o);
        t.m = __shfl_xor_sync(0xffffffffu, v.t.m, o);
        t.z = __shfl_xor_sync(0xffffffffu, v.t.z, o);
        v.s = ms_merge(v.s, s, k);
        v.t = ms_merge(v.t, t, k);
    }
    return v;
}

__device__ __forceinline__ RowSums warp_sums(RowSums v) {
    v.a = warp_sum(v.a);
    v.b = warp_sum(v.b);
    return v;
}

// Over the block (blockDim.x a multiple of 32); every thread gets the result. `scratch` holds 32
// entries of shared memory and may be reused on return.
__device__ __forceinline__ RowStats block_stats(RowStats v, float k, RowStats *scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_stats(v, k);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < (int)(blockDim.x >> 5) ? scratch[lane] : stats_identity();
    v = warp_stats(v, k);
    __syncthreads();
    return v;
}

__device__ __forceinline__ RowSums block_sums(RowSums v, RowSums *scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sums(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    if (lane < (int)(blockDim.x >> 5)) {
        v = scratch[lane];
    } else {
        v.a = v.b = 0.0f;
    }
    v = warp_sums(v);
    __syncthreads();
    return v;
}

#if __CUDA_ARCH__ >= 900
__device__ __forceinline__ unsigned int cluster_rank() {
    unsigned int r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
    return r;
}

__device__ __forceinline__ unsigned int cluster_index() {
    unsigned int r;
    asm volatile("mov.u32 %0, %%clusterid.x;" : "=r"(r));
    return r;
}

__device__ __forceinline__ void cluster_arrive() { asm volatile("barrier.cluster.arrive.release;" ::: "memory"); }
__device__ __forceinline__ void cluster_wait() { asm volatile("barrier.cluster.wait.acquire;" ::: "memory"); }

// The float at `p` (in this CTA's shared memory) as held by CTA `rank` of the cluster.
__device__ __forceinline__ float cluster_load(const float *p, unsigned int rank) {
    unsigned int local, remote;
    float v;
    asm volatile("{ .reg .u64 g; cvta.to.shared.u64 g, %1; cvt.u32.u64 %0, g; }" : "=r"(local) : "l"(p));
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(local), "r"(rank));
    asm volatile("ld.shared::cluster.f32 %0, [%1];" : "=f"(v) : "r"(remote) : "memory");
    return v;
}

// Merge of every CTA's block result: each publishes it in `slot`, then every warp reads the
// `ctas` slots (ctas <= 32) and merges them in rank order, so all CTAs get the same bits.
__device__ __forceinline__ RowStats cluster_stats(RowStats v, float k, RowStats *slot, int ctas) {
    if (threadIdx.x == 0) *slot = v;
    cluster_arrive();
    cluster_wait();
    const int lane = threadIdx.x & 31;
    RowStats r = stats_identity();
    if (lane < ctas) {
        const float *f = reinterpret_cast<const float *>(slot);
        r.s.m = cluster_load(f + 0, lane);
        r.s.z = cluster_load(f + 1, lane);
        r.t.m = cluster_load(f + 2, lane);
        r.t.z = cluster_load(f + 3, lane);
    }
    return warp_stats(r, k);
}

__device__ __forceinline__ RowSums cluster_sums(RowSums v, RowSums *slot, int ctas) {
    if (threadIdx.x == 0) *slot = v;
    cluster_arrive();
    cluster_wait();
    const int lane = threadIdx.x & 31;
    RowSums r;
    r.a = r.b = 0.0f;
    if (lane < ctas) {
        const float *f = reinterpret_cast<const float *>(slot);
        r.a = cluster_load(f + 0, lane);
        r.b = cluster_load(f + 1, lane);
    }
    return warp_sums(r);
}
#endif

// ----------------------------------------------------------------------------------------------
// The divergences. sums() adds one element's share of the two row sums (a, b) of pass 2 from its
// log2-probs lq, lp; loss() is D in nats; grad() is ∂D/∂a_k = Q_k (g_k − Σ_j Q_j g_j) before the
// scale/τ factor. A P·(…) or Q·(…) term is 0 where that probability is 0 (0·log 0 = 0). M below
// FLT_MIN means P and Q are both negligible there: the element is dropped, so lg2(M) is finite.

template <int KIND> struct Div;

template <> struct Div<GKD_DIV_FKL> { // a = Σ P log2(P/Q)
    static __device__ __forceinline__ void sums(float lq, float lp, float, RowSums &r) {
        const float p = ex2(lp);
        r.a += p > 0.0f ? p * (lp - lq) : 0.0f;
    }
    static __device__ __forceinline__ float loss(RowSums r, float) { return DIV_LN2 * r.a; }
    static __device__ __forceinline__ float grad(float lq, float lp, float, RowSums, float) { return ex2(lq) - ex2(lp); }
};

template <> struct Div<GKD_DIV_RKL> { // a = Σ Q log2(Q/P)
    static __device__ __forceinline__ void sums(float lq, float lp, float, RowSums &r) {
        const float q = ex2(lq);
        r.a += q > 0.0f ? q * (lq - lp) : 0.0f;
    }
    static __device__ __forceinline__ float loss(RowSums r, float) { return DIV_LN2 * r.a; }
    static __device__ __forceinline__ float grad(float lq, float lp, float, RowSums, float d) {
        const float q = ex2(lq);
        return q > 0.0f ? q * fmaf(DIV_LN2, lq - lp, -d) : 0.0f;
    }
};

template <> struct Div<GKD_DIV_JSD> { // M = βP + (1−β)Q; a = Σ P log2(P/M), b = Σ Q log2(Q/M)
    static __device__ __forceinline__ void sums(float lq, float lp, float beta, RowSums &r) {
        const float p = ex2(lp), q = ex2(lq), m = fmaf(beta, p, (1.0f - beta) * q), lm = lg2(m);
        const bool ok = m >= DIV_FLT_MIN;
        r.a += ok && p > 0.0f ? p * (lp - lm) : 0.0f;
        r.b += ok && q > 0.0f ? q * (lq - lm) : 0.0f;
    }
    static __device__ __forceinline__ float loss(RowSums r, float beta) {
        return DIV_LN2 * fmaf(beta, r.a, (1.0f - beta) * r.b);
    }
    static __device__ __forceinline__ float grad(float lq, float lp, float beta, RowSums r, float) {
        const float p = ex2(lp), q = ex2(lq), m = fmaf(beta, p, (1.0f - beta) * q), lm = lg2(m);
        return m >= DIV_FLT_MIN && q > 0.0f ? (1.0f - beta) * DIV_LN2 * q * (lq - lm - r.b) : 0.0f;
    }
};

template <> struct Div<GKD_DIV_TVD> { // a = Σ |P − Q|, b = Σ Q sign(Q − P)
    static __device__ __forceinline__ void sums(float lq, float lp, float, RowSums &r) {
        const float p = ex2(lp), q = ex2(lq);
        r.a += fabsf(p - q);
        r.b += q * sgn(q - p);
    }
    static __device__ __forceinline__ float loss(RowSums r, float) { return 0.5f * r.a; }
    static __device__ __forceinline__ float grad(float lq, float lp, float, RowSums r, float) {
        const float p = ex2(lp), q = ex2(lq);
        return 0.5f * q * (sgn(q - p) - r.b);
    }
};

template <> struct Div<GKD_DIV_SKEW_FKL> { // M = αP + (1−α)Q, R = Q/M; a = Σ P log2(P/M), b = Σ P R
    static __device__ __forceinline__ void sums(float lq, float lp, float alpha, RowSums &r) {
        const float p = ex2(lp), q = ex2(lq), m = fmaf(alpha, p, (1.0f - alpha) * q), lm = lg2(m);
        const bool ok = m >= DIV_FLT_MIN;
        r.a += ok && p > 0.0f ? p * (lp - lm) : 0.0f;
        r.b += ok ? p * __fdividef(q, m) : 0.0f;
    }
    static __device__ __forceinline__ float loss(RowSums r, float) { return DIV_LN2 * r.a; }
    static __device__ __forceinline__ float grad(float lq, float lp, float alpha, RowSums r, float) {
        const float p = ex2(lp), q = ex2(lq), m = fmaf(alpha, p, (1.0f - alpha) * q);
        const float pr = m >= DIV_FLT_MIN ? p * __fdividef(q, m) : 0.0f;
        return (1.0f - alpha) * (q * r.b - pr);
    }
};

template <> struct Div<GKD_DIV_SKEW_RKL> { // M = αQ + (1−α)P, R = Q/M; a = Σ Q log2(Q/M), b = Σ Q R
    static __device__ __forceinline__ void sums(float lq, float lp, float alpha, RowSums &r) {
        const float p = ex2(lp), q = ex2(lq), m = fmaf(alpha, q, (1.0f - alpha) * p), lm = lg2(m);
        const bool ok = m >= DIV_FLT_MIN;
        r.a += ok && q > 0.0f ? q * (lq - lm) : 0.0f;
        r.b += ok ? q * __fdividef(q, m) : 0.0f;
    }
    static __device__ __forceinline__ float loss(RowSums r, float) { return DIV_LN2 * r.a; }
    static __device__ __forceinline__ float grad(float lq, float lp, float alpha, RowSums r, float d) {
        const float p = ex2(lp), q = ex2(lq), m = fmaf(alpha, q, (1.0f - alpha) * p), lm = lg2(m);
        if (!(m >= DIV_FLT_MIN && q > 0.0f)) return 0.0f;
        return q * (DIV_LN2 * (lq - lm) - alpha * __fdividef(q, m) - d + alpha * r.b);
    }
};

// ----------------------------------------------------------------------------------------------
// The three passes over elements [0, n) of a row slice, by thread `rank` of `size`; s, t and g
// are 16-byte aligned when VW > 1. U vectors per thread are loaded before any is used.

// Pass 1: this thread's statistics; with STAGE the elements are also copied to ss, st.
template <typename T, int VW, int U, bool STAGE>
__device__ __forceinline__ RowStats pass_stats(const T *s, const T *t, T *ss, T *st, int n, int rank, int size,
                                               float k) {
    RowStats acc = stats_identity();
    const int nvec = n / VW;
    for (int v0 = rank; v0 < nvec; v0 += U * size) {
        Vec<T, VW> a[U], b[U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int v = v0 + u * size;
            if (v < nvec) {
                a[u].load(s + v * VW);
                b[u].load(t + v * VW);
            } else {
                a[u].zero();
                b[u].zero();
            }
        }
        float xs[U * VW], xt[U * VW];
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int v = v0 + u * size;
            const bool in = v < nvec;
            if (STAGE && in) {
                a[u].store(ss + v * VW);
                b[u].store(st + v * VW);
            }
#pragma unroll
            for (int i = 0; i < VW; i++) {
                xs[u * VW + i] = in ? a[u].get(i) : GKD_NEG_INF;
                xt[u * VW + i] = in ? b[u].get(i) : GKD_NEG_INF;
            }
        }
        ms_fold(acc.s, xs, k);
        ms_fold(acc.t, xt, k);
    }
    for (int e = nvec * VW + rank; e < n; e += size) {
        Vec<T, 1> a, b;
        a.load(s + e);
        b.load(t + e);
        if (STAGE) {
            a.store(ss + e);
            b.store(st + e);
        }
        const float xs[1] = {a.get(0)}, xt[1] = {b.get(0)};
        ms_fold(acc.s, xs, k);
        ms_fold(acc.t, xt, k);
    }
    return acc;
}

// Pass 2: this thread's share of the row sums. A, B: the log2 normalizers of s and t.
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
                    Div<KIND>::sums(fmaf(a[u].get(i), k, -A), fmaf(b[u].get(i), k, -B), coef, acc);
            }
        }
    }
    for (int e = nvec * VW + rank; e < n; e += size)
        Div<KIND>::sums(fmaf(load_f32(s, e), k, -A), fmaf(load_f32(t, e), k, -B), coef, acc);
    return acc;
}

// Pass 3: g = gscale · ∂D/∂a over the slice. g may be s (each element is read before it is
// written, by the same thread).
template <int KIND, typename T, int VW, int U>
__device__ __forceinline__ void pass_grad(const T *s, const T *t, T *g, int n, int rank, int size, float k, float A,
                                          float B, float coef, RowSums r, float d, float gscale) {
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
                for (int i = 0; i < VW; i++)
                    o[i] = gscale * Div<KIND>::grad(fmaf(a[u].get(i), k, -A), fmaf(b[u].get(i), k, -B), coef, r, d);
                Vec<T, VW> out;
                out.pack(o);
                out.store(g + (v0 + u * size) * VW);
            }
        }
    }
    for (int e = nvec * VW + rank; e < n; e += size)
        store_f32(g, e, gscale * Div<KIND>::grad(fmaf(load_f32(s, e), k, -A), fmaf(load_f32(t, e), k, -B), coef, r, d));
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
    RowStats st = pass_stats<T, VW, U, false>(s, t, nullptr, nullptr, n, rank, size, k);
    st = WARP ? warp_stats(st, k) : block_stats(st, k, st_scratch);
    if (degenerate(st)) {
        if (g) fill_zero<T, VW>(g, n, rank, size);
        if (rank == 0) *loss = 0.0f;
        return;
    }
    const float A = kmax(st.s.m, k) + lg2(st.s.z), B = kmax(st.t.m, k) + lg2(st.t.z);
    RowSums r = pass_sums<KIND, T, VW, U>(s, t, n, rank, size, k, A, B, p.coef);
    r = WARP ? warp_sums(r) : block_sums(r, sum_scratch);
    const float d = Div<KIND>::loss(r, p.coef);
    if (rank == 0) *loss = p.scale * d;
    if (g) pass_grad<KIND, T, VW, U>(s, t, g, n, rank, size, k, A, B, p.coef, r, d, p.scale * p.inv_temp);
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
// divergence_staged: CTA `part` of the row's p.ctas holds entries [part·chunk, part·chunk + n) of s
// and t in shared memory. With a cluster the statistics and sums are merged through distributed
// shared memory; a CTA does not exit before every CTA of its cluster has read its slots.

template <int KIND, typename T, int VW>
__device__ __forceinline__ void staged_rest(const T *ss, const T *st, T *g, float *loss, int n, float k,
                                            const RowStats &stats, bool first, const gkd_divergence_params &p,
                                            RowSums *sum_scratch, RowSums *sum_slot) {
#if __CUDA_ARCH__ >= 900
    const bool cluster = p.ctas > 1;
#endif
    const int rank = threadIdx.x, size = blockDim.x;
    if (degenerate(stats)) {
#if __CUDA_ARCH__ >= 900
        if (cluster) cluster_arrive();
#endif
        if (g) fill_zero<T, VW>(g, n, rank, size);
        if (first && rank == 0) *loss = 0.0f;
#if __CUDA_ARCH__ >= 900
        if (cluster) cluster_wait();
#endif
        return;
    }
    const float A = kmax(stats.s.m, k) + lg2(stats.s.z), B = kmax(stats.t.m, k) + lg2(stats.t.z);
    RowSums r = block_sums(pass_sums<KIND, T, VW, 2>(ss, st, n, rank, size, k, A, B, p.coef), sum_scratch);
#if __CUDA_ARCH__ >= 900
    if (cluster) {
        r = cluster_sums(r, sum_slot, p.ctas);
        cluster_arrive(); // done reading the other CTAs' shared memory
    }
#endif
    const float d = Div<KIND>::loss(r, p.coef);
    if (first && rank == 0) *loss = p.scale * d;
    if (g) pass_grad<KIND, T, VW, 2>(ss, st, g, n, rank, size, k, A, B, p.coef, r, d, p.scale * p.inv_temp);
#if __CUDA_ARCH__ >= 900
    if (cluster) cluster_wait(); // and every other CTA is done reading ours
#endif
}

template <typename T, int VW>
__device__ __forceinline__ void staged_kernel(const T *s, const T *t, const unsigned char *mask, T *g,
                                              float *row_loss, const gkd_divergence_params &p) {
    extern __shared__ Bits128 div_stage[]; // (2, p.chunk) elements: the slice of s, then of t
    __shared__ RowStats st_scratch[32];
    __shared__ RowSums sum_scratch[32];
#if __CUDA_ARCH__ >= 900
    __shared__ RowStats st_slot; // this CTA's statistics, read by the cluster
    __shared__ RowSums sum_slot; // this CTA's sums, read by the cluster
    RowSums *sum_slot_p = &sum_slot;
#else
    RowSums *sum_slot_p = nullptr;
#endif
    long row;
    int part;
#if __CUDA_ARCH__ >= 900
    if (p.ctas > 1) {
        row = cluster_index();
        part = cluster_rank();
    } else {
        row = blockIdx.x;
        part = 0;
    }
#else
    if (p.ctas > 1) __trap(); // clusters need sm_90; the launcher never asks for them below
    row = blockIdx.x;
    part = 0;
#endif
    const int c0 = part * p.chunk;
    const int n = max(0, min(p.vocab - c0, p.chunk));
    const long off = row * p.ld + c0;
    T *gr = g ? g + off : nullptr;
    const bool first = part == 0;
    if (mask && !mask[row]) { // uniform over the cluster: no CTA touches shared memory of another
        if (gr) fill_zero<T, VW>(gr, n, threadIdx.x, blockDim.x);
        if (first && threadIdx.x == 0) row_loss[row] = 0.0f;
        return;
    }
    T *ss = reinterpret_cast<T *>(div_stage), *st = ss + p.chunk;
    const float k = p.inv_temp * DIV_LOG2E;
    RowStats stats = pass_stats<T, VW, 4, true>(s + off, t + off, ss, st, n, threadIdx.x, blockDim.x, k);
    stats = block_stats(stats, k, st_scratch); // its barriers also publish the staged slice
#if __CUDA_ARCH__ >= 900
    if (p.ctas > 1) stats = cluster_stats(stats, k, &st_slot, p.ctas);
#endif
    float *l = row_loss + row;
    switch (p.kind) {
    case GKD_DIV_FKL: staged_rest<GKD_DIV_FKL, T, VW>(ss, st, gr, l, n, k, stats, first, p, sum_scratch, sum_slot_p); break;
    case GKD_DIV_RKL: staged_rest<GKD_DIV_RKL, T, VW>(ss, st, gr, l, n, k, stats, first, p, sum_scratch, sum_slot_p); break;
    case GKD_DIV_JSD: staged_rest<GKD_DIV_JSD, T, VW>(ss, st, gr, l, n, k, stats, first, p, sum_scratch, sum_slot_p); break;
    case GKD_DIV_TVD: staged_rest<GKD_DIV_TVD, T, VW>(ss, st, gr, l, n, k, stats, first, p, sum_scratch, sum_slot_p); break;
    case GKD_DIV_SKEW_FKL: staged_rest<GKD_DIV_SKEW_FKL, T, VW>(ss, st, gr, l, n, k, stats, first, p, sum_scratch, sum_slot_p); break;
    case GKD_DIV_SKEW_RKL: staged_rest<GKD_DIV_SKEW_RKL, T, VW>(ss, st, gr, l, n, k, stats, first, p, sum_scratch, sum_slot_p); break;
    default: break;
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
