// The math of kernels/divergence.cu: 16-byte vectors of a row, the row statistics and their
// merges over a warp, a block and a cluster, and the divergences' per-element terms.
// Header-free like common.cuh (NVRTC compiles the inlined text without system headers).
#ifndef GKD_DIVERGENCE_MATH_CUH
#define GKD_DIVERGENCE_MATH_CUH

#include "common.cuh"

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

// Asks L2 to fetch [p, p + bytes) from global memory (p and bytes multiples of 16); a hint.
__device__ __forceinline__ void prefetch_l2(const void *p, unsigned int bytes) {
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p), "r"(bytes) : "memory");
}

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
// The divergences, per element k of a row, from its log2-probs lq = log2 Q_k, lp = log2 P_k:
//   element()  adds the element's share of the two row sums (a, b) and returns h_k, the part of
//              the gradient that needs no row sum;
//   loss()     D in nats from the row sums;
//   hscale(), lambda()  ∂D/∂a_k = Q_k (g_k − Σ_j Q_j g_j) = hscale·h_k + λ·Q_k, λ a row constant.
// The kernels multiply by scale/τ. A P·(…) or Q·(…) term is 0 where that probability is 0
// (0·log 0 = 0). M below FLT_MIN means P and Q are both negligible there: the element is
// dropped, so lg2(M) is finite. Derivations: src/distill/divergence.rs.

template <int KIND> struct Div;

// hscale·h + λ·q with hscale folded into h: λ·q counts only where q > 0, so that an infinite λ
// (reverse KL of a row where the teacher gives 0 to a token the student does not) leaves the
// entries with q = 0 at h instead of NaN. GUARD = false skips the test when λ is known finite.
template <bool GUARD> __device__ __forceinline__ float combine(float h, float lam, float q) {
    return GUARD && !(q > 0.0f) ? h : fmaf(lam, q, h);
}

template <> struct Div<GKD_DIV_FKL> { // a = Σ P log2(P/Q); ∂D/∂a_k = Q_k − P_k
    static __device__ __forceinline__ float element(float lq, float lp, float, RowSums &r) {
        const float p = ex2(lp);
        r.a += p > 0.0f ? p * (lp - lq) : 0.0f;
        return -p;
    }
    static __device__ __forceinline__ float loss(RowSums r, float) { return DIV_LN2 * r.a; }
    static __device__ __forceinline__ float hscale(float) { return 1.0f; }
    static __device__ __forceinline__ float lambda(RowSums, float, float) { return 1.0f; }
};

template <> struct Div<GKD_DIV_RKL> { // a = Σ Q log2(Q/P); ∂D/∂a_k = Q_k (ln2·log2(Q_k/P_k) − D)
    static __device__ __forceinline__ float element(float lq, float lp, float, RowSums &r) {
        const float q = ex2(lq), x = q > 0.0f ? q * (lq - lp) : 0.0f;
        r.a += x;
        return x;
    }
    static __device__ __forceinline__ float loss(RowSums r, float) { return DIV_LN2 * r.a; }
    static __device__ __forceinline__ float hscale(float) { return DIV_LN2; }
    static __device__ __forceinline__ float lambda(RowSums, float, float d) { return -d; }
};

// M = βP + (1−β)Q; a = Σ P log2(P/M), b = Σ Q log2(Q/M); ∂D/∂a_k = (1−β) ln2 Q_k (log2(Q_k/M_k) − b)
template <> struct Div<GKD_DIV_JSD> {
    static __device__ __forceinline__ float element(float lq, float lp, float beta, RowSums &r) {
        const float p = ex2(lp), q = ex2(lq), m = fmaf(beta, p, (1.0f - beta) * q), lm = lg2(m);
        const bool ok = m >= DIV_FLT_MIN;
        const float y = ok && q > 0.0f ? q * (lq - lm) : 0.0f;
        r.a += ok && p > 0.0f ? p * (lp - lm) : 0.0f;
        r.b += y;
        return y;
    }
    static __device__ __forceinline__ float loss(RowSums r, float beta) {
        return DIV_LN2 * fmaf(beta, r.a, (1.0f - beta) * r.b);
    }
    static __device__ __forceinline__ float hscale(float beta) { return (1.0f - beta) * DIV_LN2; }
    static __device__ __forceinline__ float lambda(RowSums r, float beta, float) { return -(1.0f - beta) * DIV_LN2 * r.b; }
};

template <> struct Div<GKD_DIV_TVD> { // a = Σ |P − Q|, b = Σ Q sign(Q − P); ∂D/∂a_k = Q_k (sign(Q_k − P_k) − b) / 2
    static __device__ __forceinline__ float element(float lq, float lp, float, RowSums &r) {
        const float p = ex2(lp), q = ex2(lq), y = q * sgn(q - p);
        r.a += fabsf(p - q);
        r.b += y;
        return y;
    }
    static __device__ __forceinline__ float loss(RowSums r, float) { return 0.5f * r.a; }
    static __device__ __forceinline__ float hscale(float) { return 0.5f; }
    static __device__ __forceinline__ float lambda(RowSums r, float, float) { return -0.5f * r.b; }
};

// M = αP + (1−α)Q, R = Q/M; a = Σ P log2(P/M), b = Σ P R; ∂D/∂a_k = (1−α)(Q_k b − P_k R_k)
template <> struct Div<GKD_DIV_SKEW_FKL> {
    static __device__ __forceinline__ float element(float lq, float lp, float alpha, RowSums &r) {
        const float p = ex2(lp), q = ex2(lq), m = fmaf(alpha, p, (1.0f - alpha) * q), lm = lg2(m);
        const bool ok = m >= DIV_FLT_MIN;
        const float pr = ok ? p * __fdividef(q, m) : 0.0f;
        r.a += ok && p > 0.0f ? p * (lp - lm) : 0.0f;
        r.b += pr;
        return pr;
    }
    static __device__ __forceinline__ float loss(RowSums r, float) { return DIV_LN2 * r.a; }
    static __device__ __forceinline__ float hscale(float alpha) { return alpha - 1.0f; }
    static __device__ __forceinline__ float lambda(RowSums r, float alpha, float) { return (1.0f - alpha) * r.b; }
};

// M = αQ + (1−α)P, R = Q/M; a = Σ Q log2(Q/M), b = Σ Q R;
// ∂D/∂a_k = Q_k (ln2·log2(Q_k/M_k) − α R_k − D + α b)
template <> struct Div<GKD_DIV_SKEW_RKL> {
    static __device__ __forceinline__ float element(float lq, float lp, float alpha, RowSums &r) {
        const float p = ex2(lp), q = ex2(lq), m = fmaf(alpha, q, (1.0f - alpha) * p), lm = lg2(m);
        const bool ok = m >= DIV_FLT_MIN, live = ok && q > 0.0f;
        const float qr = __fdividef(q, m);
        r.a += live ? q * (lq - lm) : 0.0f;
        r.b += ok ? q * qr : 0.0f;
        return live ? q * fmaf(DIV_LN2, lq - lm, -alpha * qr) : 0.0f;
    }
    static __device__ __forceinline__ float loss(RowSums r, float) { return DIV_LN2 * r.a; }
    static __device__ __forceinline__ float hscale(float) { return 1.0f; }
    static __device__ __forceinline__ float lambda(RowSums r, float alpha, float d) { return fmaf(alpha, r.b, -d); }
};

#endif
