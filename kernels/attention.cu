// Causal self-attention with grouped-query heads, FlashAttention-2 style: forward and backward
// (attention over the key/value cache is decode_attention.cu). The CPU reference is
// src/backend/cpu/attention.rs.
//
// Layout (all row-major): q, out, dq (N, Hq·D); k, v, dk, dv (N, Hkv·D); lse, Δ (N, Hq) f32.
// Sequence b is rows starts[b]..starts[b] + lengths[b] (packed or right-padded); rows of no
// sequence get output 0, lse 0 and zero gradients (the attention_zero_* kernels). Query head h
// reads key/value head h / (Hq/Hkv). For one sequence and head, with Q, K, V its rows:
//   S = scale·Q·Kᵀ,  P = softmax(S) over keys j ≤ i,  lse_i = log Σ_{j≤i} exp(S_ij),  O = P·V
// Backward (P recomputed from lse, never stored):
//   Δ_i = dO_i·O_i,  dV = Pᵀ·dO,  dP = dO·Vᵀ,  dS = P ∘ (dP − Δ),  dQ = scale·dS·K,  dK = scale·dSᵀ·Q
// where dK and dV sum over the query heads of a group.
//
// Two families of kernels compute the same function:
//   *_mma: bf16 with tensor cores (mma.sync m16n8k16, f32 accumulation), head dim 64 and 128.
//   *_scalar: f32 or bf16, any head dim up to ATTN_MAX_D, fp32 math from shared-memory tiles.
// The backward is deterministic: no atomics; one CTA owns each dK/dV tile (looping over the
// query tiles and the query heads of its group in a fixed order) and another owns each dQ tile.
// No [T×T] buffer exists: scores live in registers (mma) or in a shared tile (scalar).
#include "common.cuh"
#include "mma.cuh"

#define ATTN_MAX_D 256
// The scalar kernels: 128 threads, tiles of 16 query rows × 16 keys.
#define SC_THREADS 128
#define SC_BM 16
#define SC_BN 16
// The tensor-core kernels: 4 warps.
#define MMA_THREADS 128
#define LOG2E 1.4426950408889634f
#define LN2 0.6931471805599453f

// One dynamic shared memory buffer, declared identically in every kernel of this file.
extern __shared__ __align__(16) unsigned char attn_smem[];

struct Seq {
    long start; // first row
    int len;
};

__device__ __forceinline__ Seq seq_of(const unsigned *starts, const unsigned *lengths, int b) {
    Seq s;
    s.start = (long)starts[b];
    s.len = (int)lengths[b];
    return s;
}

// The first row of this CTA's query tile, the last tiles first: under the causal mask tile x
// reads x + 1 key tiles, so the longest CTAs start first and the short ones fill in behind them.
__device__ __forceinline__ int heavy_first(int rows) { return (gridDim.x - 1 - blockIdx.x) * rows; }

// =============================================================================================
// Scalar kernels (f32 and bf16, any D ≤ ATTN_MAX_D)
// =============================================================================================

// Odd row pitch for K and V tiles read across rows by consecutive threads (no bank conflicts).
__device__ __forceinline__ int odd_pitch(int d) { return d | 1; }

// One CTA per (query tile of SC_BM rows, query head h, sequence b); keys in tiles of SC_BN.
// Shared (floats): Q [BM][D], K [BN][kp], V [BN][D], O [BM][D], S/P [BM][BN], m, l, α [BM].
template <typename T>
__device__ void attn_fwd_scalar(const T *q, const T *k, const T *v, // (N, Hq·D), (N, Hkv·D) ×2
                                const unsigned *starts, const unsigned *lengths, // (B)
                                T *out, float *lse,                               // (N, Hq·D), (N, Hq)
                                int hq, int hkv, int D, float scale) {
    const Seq sq = seq_of(starts, lengths, blockIdx.z);
    const int h = blockIdx.y, r0 = heavy_first(SC_BM);
    if (r0 >= sq.len) return;
    const int g = h / (hq / hkv), kp = odd_pitch(D), tid = threadIdx.x;
    const long ldq = (long)hq * D, ldk = (long)hkv * D;
    const int rows = min(SC_BM, sq.len - r0);
    float *Qs = (float *)attn_smem, *Ks = Qs + SC_BM * D, *Vs = Ks + SC_BN * kp, *Os = Vs + SC_BN * D;
    float *Ss = Os + SC_BM * D, *ms = Ss + SC_BM * SC_BN, *ls = ms + SC_BM, *as = ls + SC_BM;
    for (int e = tid; e < SC_BM * D; e += SC_THREADS) {
        const int r = e / D, d = e - r * D;
        Qs[e] = r < rows ? load_f32(q, (sq.start + r0 + r) * ldq + (long)h * D + d) : 0.0f;
        Os[e] = 0.0f;
    }
    if (tid < SC_BM) {
        ms[tid] = GKD_NEG_INF;
        ls[tid] = 0.0f;
    }
    // Causal: this tile's rows r0..r0+rows-1 read keys 0..r0+rows-1 only.
    const int kend = r0 + rows;
    for (int j0 = 0; j0 < kend; j0 += SC_BN) {
        __syncthreads(); // the previous tile's K, V, P are consumed (and Q, m, l are staged)
        for (int e = tid; e < SC_BN * D; e += SC_THREADS) {
            const int j = e / D, d = e - j * D;
            const bool in = j0 + j < sq.len;
            const long at = (sq.start + j0 + j) * ldk + (long)g * D + d;
            Ks[j * kp + d] = in ? load_f32(k, at) : 0.0f;
            Vs[e] = in ? load_f32(v, at) : 0.0f;
        }
        __syncthreads();
        for (int e = tid; e < SC_BM * SC_BN; e += SC_THREADS) {
            const int r = e / SC_BN, j = e - r * SC_BN;
            float s = 0.0f;
            for (int d = 0; d < D; d++) s += Qs[r * D + d] * Ks[j * kp + d];
            Ss[e] = j0 + j <= r0 + r ? s * scale : GKD_NEG_INF;
        }
        __syncthreads();
        // Online softmax, one thread per row. Key 0 is in tile 0 for every row, so m is finite
        // after it and a fully masked later tile gives α = 1, p = 0.
        if (tid < SC_BM) {
            float *sr = Ss + tid * SC_BN;
            const float mo = ms[tid];
            float mx = mo;
            for (int j = 0; j < SC_BN; j++) mx = fmaxf(mx, sr[j]);
            float sum = 0.0f;
            for (int j = 0; j < SC_BN; j++) {
                const float p = expf(sr[j] - mx);
                sr[j] = p;
                sum += p;
            }
            const float a = expf(mo - mx);
            as[tid] = a;
            ls[tid] = ls[tid] * a + sum;
            ms[tid] = mx;
        }
        __syncthreads();
        for (int e = tid; e < SC_BM * D; e += SC_THREADS) {
            const int r = e / D, d = e - r * D;
            float o = Os[e] * as[r];
            for (int j = 0; j < SC_BN; j++) o += Ss[r * SC_BN + j] * Vs[j * D + d];
            Os[e] = o;
        }
    }
    __syncthreads();
    for (int e = tid; e < rows * D; e += SC_THREADS) {
        const int r = e / D, d = e - r * D;
        store_f32(out, (sq.start + r0 + r) * ldq + (long)h * D + d, Os[e] / ls[r]);
    }
    if (tid < rows) lse[(sq.start + r0 + tid) * hq + h] = ms[tid] + logf(ls[tid]);
}

// The backward's shared tile of the scalar kernels: query rows m0..m0+BM−1 (Q, dO, lse, Δ) and
// keys j0..j0+BN−1 (K, V) staged; computes P and dS = P ∘ (dP − Δ) for them into Ps and dSs
// ([BM][BN]). Entries with a key after the query, or a query outside the sequence, are 0.
__device__ __forceinline__ void scalar_probs_grads(const float *Qs, const float *dOs, const float *Ks,
                                                   const float *Vs, const float *lses, const float *Dis,
                                                   float *Ps, float *dSs, int D, int kp, int m0, int j0,
                                                   int len, float scale) {
    for (int e = threadIdx.x; e < SC_BM * SC_BN; e += SC_THREADS) {
        const int r = e / SC_BN, j = e - r * SC_BN;
        const int i = m0 + r, key = j0 + j;
        float s = 0.0f, dp = 0.0f;
        for (int d = 0; d < D; d++) {
            s += Qs[r * D + d] * Ks[j * kp + d];
            dp += dOs[r * D + d] * Vs[j * kp + d];
        }
        const float p = (i < len && key <= i) ? expf(s * scale - lses[r]) : 0.0f;
        Ps[e] = p;
        dSs[e] = p * (dp - Dis[r]);
    }
}

// Stages query rows m0..m0+BM−1 of head h: Q, dO (zero past the sequence), lse and Δ.
template <typename T>
__device__ __forceinline__ void scalar_stage_queries(const T *q, const T *dout, const float *lse,
                                                     const float *delta, float *Qs, float *dOs,
                                                     float *lses, float *Dis, Seq sq, int m0, int h,
                                                     int hq, int D) {
    const long ldq = (long)hq * D;
    for (int e = threadIdx.x; e < SC_BM * D; e += SC_THREADS) {
        const int r = e / D, d = e - r * D;
        const bool in = m0 + r < sq.len;
        const long at = (sq.start + m0 + r) * ldq + (long)h * D + d;
        Qs[e] = in ? load_f32(q, at) : 0.0f;
        dOs[e] = in ? load_f32(dout, at) : 0.0f;
    }
    if (threadIdx.x < SC_BM) {
        const int r = threadIdx.x;
        const bool in = m0 + r < sq.len;
        lses[r] = in ? lse[(sq.start + m0 + r) * hq + h] : 0.0f;
        Dis[r] = in ? delta[(sq.start + m0 + r) * hq + h] : 0.0f;
    }
}

// Stages keys j0..j0+BN−1 of key/value head g (zero past the sequence), both with the odd pitch.
template <typename T>
__device__ __forceinline__ void scalar_stage_keys(const T *k, const T *v, float *Ks, float *Vs, Seq sq,
                                                  int j0, int g, int hkv, int D, int kp) {
    const long ldk = (long)hkv * D;
    for (int e = threadIdx.x; e < SC_BN * D; e += SC_THREADS) {
        const int j = e / D, d = e - j * D;
        const bool in = j0 + j < sq.len;
        const long at = (sq.start + j0 + j) * ldk + (long)g * D + d;
        Ks[j * kp + d] = in ? load_f32(k, at) : 0.0f;
        Vs[j * kp + d] = in ? load_f32(v, at) : 0.0f;
    }
}

// Shared floats of the scalar backward kernels (both use the same carve-up).
struct ScalarBwdSmem {
    float *Qs, *dOs, *Ks, *Vs, *Acc0, *Acc1, *Ps, *dSs, *lses, *Dis;
};

__device__ __forceinline__ ScalarBwdSmem scalar_bwd_smem(int D, int kp) {
    ScalarBwdSmem s;
    s.Qs = (float *)attn_smem;
    s.dOs = s.Qs + SC_BM * D;
    s.Ks = s.dOs + SC_BM * D;
    s.Vs = s.Ks + SC_BN * kp;
    s.Acc0 = s.Vs + SC_BN * kp;
    s.Acc1 = s.Acc0 + SC_BN * D; // SC_BN == SC_BM: room for dQ [BM][D] or dK, dV [BN][D]
    s.Ps = s.Acc1 + SC_BN * D;
    s.dSs = s.Ps + SC_BM * SC_BN;
    s.lses = s.dSs + SC_BM * SC_BN;
    s.Dis = s.lses + SC_BM;
    return s;
}

// dK, dV of keys j0..j0+BN−1 of key/value head g: one CTA per (key tile, g, sequence), looping
// over the query heads of the group and the query tiles from j0 on (earlier queries see none of
// these keys). Each accumulator element belongs to one thread: a fixed order, no atomics.
template <typename T>
__device__ void attn_bwd_dkdv_scalar(const T *q, const T *k, const T *v, const T *dout, // (N, ·)
                                     const float *lse, const float *delta,            // (N, Hq)
                                     const unsigned *starts, const unsigned *lengths, // (B)
                                     T *dk, T *dv,                                    // (N, Hkv·D)
                                     int hq, int hkv, int D, float scale) {
    const Seq sq = seq_of(starts, lengths, blockIdx.z);
    const int g = blockIdx.y, j0 = blockIdx.x * SC_BN;
    if (j0 >= sq.len) return;
    const int group = hq / hkv, kp = odd_pitch(D), tid = threadIdx.x;
    const ScalarBwdSmem s = scalar_bwd_smem(D, kp);
    float *dKs = s.Acc0, *dVs = s.Acc1;
    for (int e = tid; e < SC_BN * D; e += SC_THREADS) dKs[e] = dVs[e] = 0.0f;
    scalar_stage_keys(k, v, s.Ks, s.Vs, sq, j0, g, hkv, D, kp);
    for (int h = g * group; h < (g + 1) * group; h++) {
        for (int m0 = j0; m0 < sq.len; m0 += SC_BM) { // SC_BM == SC_BN: m0 is tile-aligned
            __syncthreads();
            scalar_stage_queries(q, dout, lse, delta, s.Qs, s.dOs, s.lses, s.Dis, sq, m0, h, hq, D);
            __syncthreads();
            scalar_probs_grads(s.Qs, s.dOs, s.Ks, s.Vs, s.lses, s.Dis, s.Ps, s.dSs, D, kp, m0, j0, sq.len,
                               scale);
            __syncthreads();
            // dV[j] += Σ_r P[r][j]·dO[r],  dK[j] += Σ_r dS[r][j]·Q[r]
            for (int e = tid; e < SC_BN * D; e += SC_THREADS) {
                const int j = e / D, d = e - j * D;
                float av = dVs[e], ak = dKs[e];
                for (int r = 0; r < SC_BM; r++) {
                    av += s.Ps[r * SC_BN + j] * s.dOs[r * D + d];
                    ak += s.dSs[r * SC_BN + j] * s.Qs[r * D + d];
                }
                dVs[e] = av;
                dKs[e] = ak;
            }
        }
    }
    const long ldk = (long)hkv * D;
    const int keys = min(SC_BN, sq.len - j0);
    for (int e = tid; e < keys * D; e += SC_THREADS) { // same owner as the accumulation above
        const int j = e / D, d = e - j * D;
        const long at = (sq.start + j0 + j) * ldk + (long)g * D + d;
        store_f32(dk, at, dKs[e] * scale);
        store_f32(dv, at, dVs[e]);
    }
}

// dQ of query rows r0..r0+BM−1 of head h: one CTA per (query tile, h, sequence), looping over the
// key tiles up to the causal limit.
template <typename T>
__device__ void attn_bwd_dq_scalar(const T *q, const T *k, const T *v, const T *dout, // (N, ·)
                                   const float *lse, const float *delta,            // (N, Hq)
                                   const unsigned *starts, const unsigned *lengths, // (B)
                                   T *dq,                                            // (N, Hq·D)
                                   int hq, int hkv, int D, float scale) {
    const Seq sq = seq_of(starts, lengths, blockIdx.z);
    const int h = blockIdx.y, r0 = heavy_first(SC_BM);
    if (r0 >= sq.len) return;
    const int g = h / (hq / hkv), kp = odd_pitch(D), tid = threadIdx.x;
    const ScalarBwdSmem s = scalar_bwd_smem(D, kp);
    float *dQs = s.Acc0;
    for (int e = tid; e < SC_BM * D; e += SC_THREADS) dQs[e] = 0.0f;
    scalar_stage_queries(q, dout, lse, delta, s.Qs, s.dOs, s.lses, s.Dis, sq, r0, h, hq, D);
    const int kend = min(r0 + SC_BM, sq.len);
    for (int j0 = 0; j0 < kend; j0 += SC_BN) {
        __syncthreads();
        scalar_stage_keys(k, v, s.Ks, s.Vs, sq, j0, g, hkv, D, kp);
        __syncthreads();
        scalar_probs_grads(s.Qs, s.dOs, s.Ks, s.Vs, s.lses, s.Dis, s.Ps, s.dSs, D, kp, r0, j0, sq.len,
                           scale);
        __syncthreads();
        // dQ[r] += Σ_j dS[r][j]·K[j]
        for (int e = tid; e < SC_BM * D; e += SC_THREADS) {
            const int r = e / D, d = e - r * D;
            float a = dQs[e];
            for (int j = 0; j < SC_BN; j++) a += s.dSs[r * SC_BN + j] * s.Ks[j * kp + d];
            dQs[e] = a;
        }
    }
    const long ldq = (long)hq * D;
    const int rows = min(SC_BM, sq.len - r0);
    for (int e = tid; e < rows * D; e += SC_THREADS) { // same owner as the accumulation above
        const int r = e / D, d = e - r * D;
        store_f32(dq, (sq.start + r0 + r) * ldq + (long)h * D + d, dQs[e] * scale);
    }
}

// =============================================================================================
// Tensor-core kernels (bf16, D ∈ {64, 128}, sm_80+)
// =============================================================================================
//
// The fragments of mma.sync m16n8k16 are in mma.cuh.
// Consequences used below:
//   - B = Mᵀ for M stored row-major (n rows, k contiguous; K in Q·Kᵀ): b[0] is the 32-bit word at
//     M[n0+gid][k0+2·tig], b[1] at M[n0+gid][k0+8+2·tig].
//   - B = M for M stored row-major (k rows, n contiguous; V in P·V): b[0] pairs M[k0+2·tig][n0+gid]
//     with M[k0+2·tig+1][n0+gid]: ldmatrix .trans gives exactly that (ldsm_x4_trans).
//   - Two C tiles side by side (n-tiles 2kk, 2kk+1 of a row block) are an A fragment of k-step kk:
//     a[0] = (c[0], c[1]) of tile 2kk, a[1] = (c[2], c[3]) of 2kk, a[2], a[3] the same of 2kk+1.
// Shared tiles are bf16 rows of D + 8 elements (pitch 2D + 16 bytes): 32-bit fragment loads of
// 8 rows × 4 words and ldmatrix's 8 rows × 16 bytes then hit 32 distinct banks.

// (lo, hi) rounded to nearest-even bf16, lo in the low half.
__device__ __forceinline__ unsigned pack_bf16(float lo, float hi) {
#if GKD_HAS_MMA
    unsigned r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
#else
    return (unsigned)f32_to_bf16(lo) | ((unsigned)f32_to_bf16(hi) << 16);
#endif
}

__device__ __forceinline__ float bf16_lo(unsigned w) { return __uint_as_float(w << 16); }
__device__ __forceinline__ float bf16_hi(unsigned w) { return __uint_as_float(w & 0xffff0000u); }

__device__ __forceinline__ unsigned ld32(const bf16 *p) { return *(const unsigned *)p; }

__device__ __forceinline__ unsigned smem_addr(const void *p) {
    unsigned a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }\n" : "=r"(a) : "l"(p));
    return a;
}

// B fragments of two n-tiles (n0, n0+8) of one k-step (k0..k0+15) of B = M, M row-major in shared
// memory with pitch `pitch` (k rows, n contiguous). Lane l gives the address of row k0 + (l & 15),
// column n0 + 8·(l >> 4): matrices 0..3 are (rows k0..+7, n0), (k0+8..+15, n0), (k0..+7, n0+8),
// (k0+8..+15, n0+8); .trans hands lane (gid, tig) the pair M[2·tig..2·tig+1][gid] of each:
// r[0], r[1] = b[0], b[1] of n-tile n0; r[2], r[3] = b[0], b[1] of n-tile n0+8.
__device__ __forceinline__ void ldsm_x4_trans(unsigned r[4], const bf16 *m, int pitch, int k0, int n0) {
    const int lane = threadIdx.x & 31;
    const bf16 *p = m + (k0 + (lane & 15)) * pitch + n0 + ((lane >> 4) << 3);
#if GKD_HAS_MMA
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
#else
    r[0] = r[1] = r[2] = r[3] = ld32(p);
#endif
}

// A fragment of k-step kk of a 16-row block stored row-major (pitch `pitch`, k contiguous), rows
// row0..row0+15: from global or shared memory.
__device__ __forceinline__ void load_a(unsigned a[4], const bf16 *m, long pitch, int row0, int k0, int lane,
                                       bool lo_ok, bool hi_ok) {
    const int gid = lane >> 2, tig = lane & 3;
    const bf16 *lo = m + (row0 + gid) * pitch + k0 + 2 * tig, *hi = lo + 8 * pitch;
    a[0] = lo_ok ? ld32(lo) : 0u;
    a[1] = hi_ok ? ld32(hi) : 0u;
    a[2] = lo_ok ? ld32(lo + 8) : 0u;
    a[3] = hi_ok ? ld32(hi + 8) : 0u;
}

// C tiles 2kk, 2kk+1 of a 16-row block as the A fragment of k-step kk (see above).
__device__ __forceinline__ void c_to_a(unsigned a[4], const float c0[4], const float c1[4]) {
    a[0] = pack_bf16(c0[0], c0[1]);
    a[1] = pack_bf16(c0[2], c0[3]);
    a[2] = pack_bf16(c1[0], c1[1]);
    a[3] = pack_bf16(c1[2], c1[3]);
}

// Rows j0..j0+ROWS−1 of head `head` of x (row stride ld) into shared memory (pitch D+8), 16 bytes
// per thread per step; rows at or past `len` are zero (their products then vanish, no NaN).
template <int D, int ROWS>
__device__ __forceinline__ void stage_rows(bf16 *dst, const bf16 *x, long ld, Seq sq, int j0, int head) {
    constexpr int P = D + 8, CHUNKS = D / 8;
    for (int c = threadIdx.x; c < ROWS * CHUNKS; c += MMA_THREADS) {
        const int j = c / CHUNKS, col = (c - j * CHUNKS) * 8;
        uint4 w = make_uint4(0u, 0u, 0u, 0u);
        if (j0 + j < sq.len) w = *(const uint4 *)(x + (sq.start + j0 + j) * ld + (long)head * D + col);
        *(uint4 *)(dst + j * P + col) = w;
    }
}

// stage_rows with cp.async (sm_80+): the copies run while the warps compute on the other buffer.
// Rows at or past `len` are zero-filled (src-size 0; the source address stays a valid row).
__device__ __forceinline__ void cp_async16(bf16 *dst, const bf16 *src, bool valid) {
#if GKD_HAS_MMA
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
                 "r"(valid ? 16 : 0));
#else
    *(uint4 *)dst = valid ? *(const uint4 *)src : make_uint4(0u, 0u, 0u, 0u);
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#if GKD_HAS_MMA
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}

// Waits until at most N of this thread's committed groups are still in flight.
template <int N> __device__ __forceinline__ void cp_async_wait() {
#if GKD_HAS_MMA
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

template <int D, int ROWS>
__device__ __forceinline__ void stage_rows_async(bf16 *dst, const bf16 *x, long ld, Seq sq, int j0, int head) {
    constexpr int P = D + 8, CHUNKS = D / 8;
    for (int c = threadIdx.x; c < ROWS * CHUNKS; c += MMA_THREADS) {
        const int j = c / CHUNKS, col = (c - j * CHUNKS) * 8;
        const bool valid = j0 + j < sq.len;
        cp_async16(dst + j * P + col, x + (sq.start + (valid ? j0 + j : 0)) * ld + (long)head * D + col, valid);
    }
}

// S (16 × 8·NT) += A · Mᵀ over D: A fragments af[D/16], M rows n (keys) in shared memory.
template <int D, int NT>
__device__ __forceinline__ void mma_abt(float s[NT][4], const unsigned af[D / 16][4], const bf16 *m, int lane) {
    constexpr int P = D + 8;
    const int gid = lane >> 2, tig = lane & 3;
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) {
            const bf16 *row = m + (nt * 8 + gid) * P + kk * 16 + 2 * tig;
            mma_bf16(s[nt], af[kk], ld32(row), ld32(row + 8));
        }
    }
}

// Acc (16 × D) += A (16 × 16·KT) · M (16·KT × D), A as C tiles c[2·KT] (converted to bf16), M
// row-major in shared memory (pitch D+8) read with ldmatrix.trans.
template <int D, int KT>
__device__ __forceinline__ void mma_cm(float acc[D / 8][4], const float c[2 * KT][4], const bf16 *m) {
    constexpr int P = D + 8;
#pragma unroll
    for (int kk = 0; kk < KT; kk++) {
        unsigned a[4];
        c_to_a(a, c[2 * kk], c[2 * kk + 1]);
#pragma unroll
        for (int dp = 0; dp < D / 16; dp++) {
            unsigned b[4];
            ldsm_x4_trans(b, m, P, kk * 16, dp * 16);
            mma_bf16(acc[2 * dp], a, b[0], b[1]);
            mma_bf16(acc[2 * dp + 1], a, b[2], b[3]);
        }
    }
}

// One key tile of the forward for one warp: S = Q·Kᵀ, mask, online softmax, O += P·V.
template <int D, int NT>
__device__ __forceinline__ void attn_fwd_tile(float o[D / 8][4], float m[2], float l[2],
                                              const unsigned qf[D / 16][4], const bf16 *Ks, const bf16 *Vs,
                                              int j0, int ra, int rb, float sl2, int lane) {
    constexpr int DT = D / 8, BN = NT * 8;
    const int tig = lane & 3;
    float s[NT][4];
#pragma unroll
    for (int i = 0; i < NT; i++) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.0f;
    mma_abt<D, NT>(s, qf, Ks, lane);
    // Mask (key after row: −∞) and scale. Key 0 is unmasked for every row in tile 0, so the
    // running max is finite from then on and a fully masked row of a later tile gives α = 1.
    float mx[2] = {m[0], m[1]};
#pragma unroll
    for (int nt = 0; nt < NT; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int key = j0 + nt * 8 + 2 * tig + (e & 1), row = e < 2 ? ra : rb;
            s[nt][e] = key <= row ? s[nt][e] * sl2 : GKD_NEG_INF;
            mx[e >> 1] = fmaxf(mx[e >> 1], s[nt][e]);
        }
    float alpha[2];
#pragma unroll
    for (int x = 0; x < 2; x++) {
        mx[x] = fmaxf(mx[x], __shfl_xor_sync(0xffffffffu, mx[x], 1));
        mx[x] = fmaxf(mx[x], __shfl_xor_sync(0xffffffffu, mx[x], 2));
        alpha[x] = exp2f(m[x] - mx[x]);
        m[x] = mx[x];
        l[x] *= alpha[x];
    }
#pragma unroll
    for (int nt = 0; nt < NT; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            s[nt][e] = exp2f(s[nt][e] - m[e >> 1]);
            l[e >> 1] += s[nt][e];
        }
#pragma unroll
    for (int i = 0; i < DT; i++) {
        o[i][0] *= alpha[0];
        o[i][1] *= alpha[0];
        o[i][2] *= alpha[1];
        o[i][3] *= alpha[1];
    }
    mma_cm<D, BN / 16>(o, s, Vs);
}

// Forward: one CTA per (64 query rows, query head, sequence), warp w owns rows r0+16w..r0+16w+15;
// keys in tiles of 64 staged in shared memory, two buffers (K, V: 2·2·64·(D+8) bf16): tile t+1 is
// copied (cp.async) while tile t is computed on. Scores in log2 units
// (s·scale·log2 e) so that exp2 is the exponential; each thread keeps its two rows' running max
// and a partial row sum (its quad's 16 of the 64 columns), summed over the quad at the end.
template <int D>
__device__ void attn_fwd_mma(const bf16 *q, const bf16 *k, const bf16 *v, const unsigned *starts,
                             const unsigned *lengths, bf16 *out, float *lse, int hq, int hkv, float scale) {
    constexpr int BM = 64, BN = 64, P = D + 8, DT = D / 8, KS = D / 16, NT = BN / 8;
    const Seq sq = seq_of(starts, lengths, blockIdx.z);
    const int h = blockIdx.y, r0 = heavy_first(BM);
    if (r0 >= sq.len) return;
    const int kvh = h / (hq / hkv), warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int gid = lane >> 2, tig = lane & 3;
    const long ldq = (long)hq * D, ldk = (long)hkv * D;
    const float sl2 = scale * LOG2E;
    bf16 *buf = (bf16 *)attn_smem; // [2][K, V][BN][P]
    const int wrow = r0 + warp * 16; // the warp's first row (sequence position)
    const int ra = wrow + gid, rb = ra + 8;
    unsigned qf[KS][4];
#pragma unroll
    for (int kk = 0; kk < KS; kk++)
        load_a(qf[kk], q + sq.start * ldq + (long)h * D, ldq, wrow, kk * 16, lane, ra < sq.len, rb < sq.len);
    float o[DT][4];
#pragma unroll
    for (int i = 0; i < DT; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
    float m[2] = {GKD_NEG_INF, GKD_NEG_INF}, l[2] = {0.0f, 0.0f};
    const int tiles = (min(r0 + BM, sq.len) + BN - 1) / BN; // causal: keys 0..r0+BM−1
    stage_rows_async<D, BN>(buf, k, ldk, sq, 0, kvh);
    stage_rows_async<D, BN>(buf + BN * P, v, ldk, sq, 0, kvh);
    cp_async_commit();
    for (int t = 0; t < tiles; t++) {
        const int j0 = t * BN;
        const bf16 *Ks = buf + (t & 1) * 2 * BN * P, *Vs = Ks + BN * P;
        if (t + 1 < tiles) {
            // Buffer (t+1) & 1 was last read in iteration t−1, which ended with a barrier.
            bf16 *next = buf + ((t + 1) & 1) * 2 * BN * P;
            stage_rows_async<D, BN>(next, k, ldk, sq, j0 + BN, kvh);
            stage_rows_async<D, BN>(next + BN * P, v, ldk, sq, j0 + BN, kvh);
            cp_async_commit();
            cp_async_wait<1>(); // tile t's group has landed (this thread's copies)
        } else {
            cp_async_wait<0>();
        }
        __syncthreads(); // everyone's copies of tile t are visible
        // Skip a tile whose every key is after every row of this warp.
        if (j0 <= wrow + 15) attn_fwd_tile<D, NT>(o, m, l, qf, Ks, Vs, j0, ra, rb, sl2, lane);
        __syncthreads(); // tile t is consumed before iteration t+1 refills its buffer
    }
#pragma unroll
    for (int x = 0; x < 2; x++) {
        l[x] += __shfl_xor_sync(0xffffffffu, l[x], 1);
        l[x] += __shfl_xor_sync(0xffffffffu, l[x], 2);
    }
    const float inv[2] = {1.0f / l[0], 1.0f / l[1]};
    bf16 *oa = out + (sq.start + ra) * ldq + (long)h * D + 2 * tig, *ob = oa + 8 * ldq;
#pragma unroll
    for (int i = 0; i < DT; i++) {
        if (ra < sq.len) *(unsigned *)(oa + i * 8) = pack_bf16(o[i][0] * inv[0], o[i][1] * inv[0]);
        if (rb < sq.len) *(unsigned *)(ob + i * 8) = pack_bf16(o[i][2] * inv[1], o[i][3] * inv[1]);
    }
    if (tig == 0) {
        if (ra < sq.len) lse[(sq.start + ra) * hq + h] = (m[0] + log2f(l[0])) * LN2;
        if (rb < sq.len) lse[(sq.start + rb) * hq + h] = (m[1] + log2f(l[1])) * LN2;
    }
}

// dK, dV: one CTA per (64 keys, key/value head, sequence), warp w owns keys j0+16w..j0+16w+15 and
// accumulates their dK, dV (16 × D each) in registers over the query heads of the group and the
// query tiles of BM rows from j0 on. It computes the transposed products directly:
//   Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ (keys × queries), Pᵀ = exp2(Sᵀ·scale·log2 e − lse·log2 e),
//   dSᵀ = Pᵀ ∘ (dPᵀ − Δ),  dV += Pᵀ·dO,  dK += dSᵀ·Q  (then dK ·= scale).
// Shared: K, V (64 rows), Q, dO (BM rows), all pitch D+8; lse·log2 e and Δ of the BM rows.
template <int D, int BM>
__device__ void attn_bwd_dkdv_mma(const bf16 *q, const bf16 *k, const bf16 *v, const bf16 *dout,
                                  const float *lse, const float *delta, const unsigned *starts,
                                  const unsigned *lengths, bf16 *dk, bf16 *dv, int hq, int hkv, float scale) {
    constexpr int BN = 64, P = D + 8, DT = D / 8, KS = D / 16, NT = BM / 8;
    const Seq sq = seq_of(starts, lengths, blockIdx.z);
    const int kvh = blockIdx.y, j0 = blockIdx.x * BN;
    if (j0 >= sq.len) return;
    const int group = hq / hkv, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int gid = lane >> 2, tig = lane & 3;
    const long ldq = (long)hq * D, ldk = (long)hkv * D;
    const float sl2 = scale * LOG2E;
    bf16 *Ks = (bf16 *)attn_smem, *Vs = Ks + BN * P, *Qs = Vs + BN * P, *dOs = Qs + BM * P;
    float *lse2s = (float *)(dOs + BM * P), *Dis = lse2s + BM;
    const int wkey = j0 + warp * 16; // the warp's first key
    const int ka = wkey + gid, kb = ka + 8;
    float dka[DT][4], dva[DT][4];
#pragma unroll
    for (int i = 0; i < DT; i++)
#pragma unroll
        for (int e = 0; e < 4; e++) dka[i][e] = dva[i][e] = 0.0f;
    stage_rows<D, BN>(Ks, k, ldk, sq, j0, kvh);
    stage_rows<D, BN>(Vs, v, ldk, sq, j0, kvh);
    for (int h = kvh * group; h < (kvh + 1) * group; h++) {
        for (int m0 = j0; m0 < sq.len; m0 += BM) { // BM divides 64: m0 is tile-aligned
            __syncthreads();
            stage_rows<D, BM>(Qs, q, ldq, sq, m0, h);
            stage_rows<D, BM>(dOs, dout, ldq, sq, m0, h);
            for (int r = threadIdx.x; r < BM; r += MMA_THREADS) {
                const bool in = m0 + r < sq.len;
                lse2s[r] = in ? lse[(sq.start + m0 + r) * hq + h] * LOG2E : 0.0f;
                Dis[r] = in ? delta[(sq.start + m0 + r) * hq + h] : 0.0f;
            }
            __syncthreads();
            if (m0 + BM - 1 < wkey) continue; // every query of the tile is before every key
            float st[NT][4], dpt[NT][4];
#pragma unroll
            for (int i = 0; i < NT; i++)
#pragma unroll
                for (int e = 0; e < 4; e++) st[i][e] = dpt[i][e] = 0.0f;
            {
                unsigned kf[KS][4];
#pragma unroll
                for (int kk = 0; kk < KS; kk++) load_a(kf[kk], Ks, P, warp * 16, kk * 16, lane, true, true);
                mma_abt<D, NT>(st, kf, Qs, lane);
            }
            {
                unsigned vf[KS][4];
#pragma unroll
                for (int kk = 0; kk < KS; kk++) load_a(vf[kk], Vs, P, warp * 16, kk * 16, lane, true, true);
                mma_abt<D, NT>(dpt, vf, dOs, lane);
            }
            // Pᵀ and dSᵀ in place; a query outside the sequence or before the key gives 0.
#pragma unroll
            for (int nt = 0; nt < NT; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int col = nt * 8 + 2 * tig + (e & 1), qi = m0 + col, key = e < 2 ? ka : kb;
                    const float p = (qi < sq.len && key <= qi) ? exp2f(st[nt][e] * sl2 - lse2s[col]) : 0.0f;
                    st[nt][e] = p;
                    dpt[nt][e] = p * (dpt[nt][e] - Dis[col]);
                }
            mma_cm<D, BM / 16>(dva, st, dOs);
            mma_cm<D, BM / 16>(dka, dpt, Qs);
        }
    }
    bf16 *pa = dk + (sq.start + ka) * ldk + (long)kvh * D + 2 * tig, *pb = pa + 8 * ldk;
    bf16 *va = dv + (sq.start + ka) * ldk + (long)kvh * D + 2 * tig, *vb = va + 8 * ldk;
#pragma unroll
    for (int i = 0; i < DT; i++) {
        if (ka < sq.len) {
            *(unsigned *)(pa + i * 8) = pack_bf16(dka[i][0] * scale, dka[i][1] * scale);
            *(unsigned *)(va + i * 8) = pack_bf16(dva[i][0], dva[i][1]);
        }
        if (kb < sq.len) {
            *(unsigned *)(pb + i * 8) = pack_bf16(dka[i][2] * scale, dka[i][3] * scale);
            *(unsigned *)(vb + i * 8) = pack_bf16(dva[i][2], dva[i][3]);
        }
    }
}

// dQ: one CTA per (64 query rows, query head, sequence), warp w owns rows r0+16w..+15 with their
// Q and dO fragments in registers; keys in tiles of BN up to the causal limit:
//   S = Q·Kᵀ, dP = dO·Vᵀ, dS = P ∘ (dP − Δ), dQ += dS·K  (then dQ ·= scale).
template <int D, int BN>
__device__ void attn_bwd_dq_mma(const bf16 *q, const bf16 *k, const bf16 *v, const bf16 *dout,
                                const float *lse, const float *delta, const unsigned *starts,
                                const unsigned *lengths, bf16 *dq, int hq, int hkv, float scale) {
    constexpr int BM = 64, P = D + 8, DT = D / 8, KS = D / 16, NT = BN / 8;
    const Seq sq = seq_of(starts, lengths, blockIdx.z);
    const int h = blockIdx.y, r0 = heavy_first(BM);
    if (r0 >= sq.len) return;
    const int kvh = h / (hq / hkv), warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int gid = lane >> 2, tig = lane & 3;
    const long ldq = (long)hq * D, ldk = (long)hkv * D;
    const float sl2 = scale * LOG2E;
    bf16 *Ks = (bf16 *)attn_smem, *Vs = Ks + BN * P;
    const int wrow = r0 + warp * 16;
    const int ra = wrow + gid, rb = ra + 8;
    const bool ina = ra < sq.len, inb = rb < sq.len;
    unsigned qf[KS][4], df[KS][4];
#pragma unroll
    for (int kk = 0; kk < KS; kk++) {
        load_a(qf[kk], q + sq.start * ldq + (long)h * D, ldq, wrow, kk * 16, lane, ina, inb);
        load_a(df[kk], dout + sq.start * ldq + (long)h * D, ldq, wrow, kk * 16, lane, ina, inb);
    }
    const float l2[2] = {ina ? lse[(sq.start + ra) * hq + h] * LOG2E : 0.0f,
                         inb ? lse[(sq.start + rb) * hq + h] * LOG2E : 0.0f};
    const float di[2] = {ina ? delta[(sq.start + ra) * hq + h] : 0.0f,
                         inb ? delta[(sq.start + rb) * hq + h] : 0.0f};
    float acc[DT][4];
#pragma unroll
    for (int i = 0; i < DT; i++) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.0f;
    const int kend = min(r0 + BM, sq.len);
    for (int j0 = 0; j0 < kend; j0 += BN) {
        __syncthreads();
        stage_rows<D, BN>(Ks, k, ldk, sq, j0, kvh);
        stage_rows<D, BN>(Vs, v, ldk, sq, j0, kvh);
        __syncthreads();
        if (j0 > wrow + 15) continue;
        float s[NT][4], dp[NT][4];
#pragma unroll
        for (int i = 0; i < NT; i++)
#pragma unroll
            for (int e = 0; e < 4; e++) s[i][e] = dp[i][e] = 0.0f;
        mma_abt<D, NT>(s, qf, Ks, lane);
        mma_abt<D, NT>(dp, df, Vs, lane);
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int key = j0 + nt * 8 + 2 * tig + (e & 1), row = e < 2 ? ra : rb, x = e >> 1;
                const float p =
                    (row < sq.len && key <= row) ? exp2f(s[nt][e] * sl2 - l2[x]) : 0.0f;
                s[nt][e] = p * (dp[nt][e] - di[x]);
            }
        mma_cm<D, BN / 16>(acc, s, Ks);
    }
    bf16 *pa = dq + (sq.start + ra) * ldq + (long)h * D + 2 * tig, *pb = pa + 8 * ldq;
#pragma unroll
    for (int i = 0; i < DT; i++) {
        if (ina) *(unsigned *)(pa + i * 8) = pack_bf16(acc[i][0] * scale, acc[i][1] * scale);
        if (inb) *(unsigned *)(pb + i * 8) = pack_bf16(acc[i][2] * scale, acc[i][3] * scale);
    }
}

// =============================================================================================
// Small kernels: Δ, rows of no sequence, attention over the key/value cache
// =============================================================================================

// Δ (N, Hq) f32 = rowsum(dO ∘ O) per (row, head); one warp per (row, head), 8 per block.
template <typename T>
__device__ void attn_bwd_delta(const T *out, const T *dout, float *delta, long rows, int hq, int D) {
    const long w = (long)blockIdx.x * 8 + (threadIdx.x >> 5);
    if (w >= rows * hq) return;
    const int lane = threadIdx.x & 31;
    float s = 0.0f;
    for (int d = lane; d < D; d += 32) s += load_f32(out, w * D + d) * load_f32(dout, w * D + d);
    s = warp_sum(s);
    if (lane == 0) delta[w] = s;
}

__device__ __forceinline__ bool in_any_sequence(long row, const unsigned *starts, const unsigned *lengths,
                                                int batch) {
    for (int b = 0; b < batch; b++)
        if (row >= (long)starts[b] && row < (long)starts[b] + (long)lengths[b]) return true;
    return false;
}

// Rows of no sequence: the output and lse (forward) or the gradients (backward) are 0. One CTA
// per row; the attention kernels write exactly the other rows.
template <typename T>
__device__ void attn_zero_rows(T *a, long wa, T *b, long wb, T *c, long wc, float *s, long ws,
                               const unsigned *starts, const unsigned *lengths, int batch) {
    const long row = blockIdx.x;
    if (in_any_sequence(row, starts, lengths, batch)) return;
    for (long i = threadIdx.x; i < wa; i += blockDim.x) store_f32(a, row * wa + i, 0.0f);
    for (long i = threadIdx.x; i < wb; i += blockDim.x) store_f32(b, row * wb + i, 0.0f);
    for (long i = threadIdx.x; i < wc; i += blockDim.x) store_f32(c, row * wc + i, 0.0f);
    for (long i = threadIdx.x; i < ws; i += blockDim.x) s[row * ws + i] = 0.0f;
}

// =============================================================================================
// entry points
// =============================================================================================

#define ATTN_SCALAR_KERNELS(T, SUF)                                                                \
    extern "C" __global__ void __launch_bounds__(SC_THREADS)                                       \
        attention_fwd_scalar_##SUF(const T *q, const T *k, const T *v, const unsigned *starts,    \
                                   const unsigned *lengths, T *out, float *lse, int hq, int hkv,  \
                                   int d, float scale) {                                           \
        attn_fwd_scalar<T>(q, k, v, starts, lengths, out, lse, hq, hkv, d, scale);                \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(SC_THREADS) attention_bwd_dkdv_scalar_##SUF(     \
        const T *q, const T *k, const T *v, const T *dout, const float *lse, const float *delta,  \
        const unsigned *starts, const unsigned *lengths, T *dk, T *dv, int hq, int hkv, int d,    \
        float scale) {                                                                             \
        attn_bwd_dkdv_scalar<T>(q, k, v, dout, lse, delta, starts, lengths, dk, dv, hq, hkv, d,   \
                                scale);                                                            \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(SC_THREADS) attention_bwd_dq_scalar_##SUF(       \
        const T *q, const T *k, const T *v, const T *dout, const float *lse, const float *delta,  \
        const unsigned *starts, const unsigned *lengths, T *dq, int hq, int hkv, int d,           \
        float scale) {                                                                             \
        attn_bwd_dq_scalar<T>(q, k, v, dout, lse, delta, starts, lengths, dq, hq, hkv, d, scale); \
    }                                                                                              \
    extern "C" __global__ void attention_bwd_delta_##SUF(const T *out, const T *dout,             \
                                                          float *delta, long rows, int hq, int d) { \
        attn_bwd_delta<T>(out, dout, delta, rows, hq, d);                                          \
    }                                                                                              \
    extern "C" __global__ void attention_zero_fwd_##SUF(T *out, long width, float *lse, int hq,   \
                                                         const unsigned *starts,                  \
                                                         const unsigned *lengths, int batch) {     \
        attn_zero_rows<T>(out, width, out, 0, out, 0, lse, hq, starts, lengths, batch);            \
    }                                                                                              \
    extern "C" __global__ void attention_zero_bwd_##SUF(T *dq, long wq, T *dk, T *dv, long wk,    \
                                                         const unsigned *starts,                  \
                                                         const unsigned *lengths, int batch) {     \
        attn_zero_rows<T>(dq, wq, dk, wk, dv, wk, nullptr, 0, starts, lengths, batch);             \
    }

ATTN_SCALAR_KERNELS(float, f32)
ATTN_SCALAR_KERNELS(bf16, bf16)

// bf16 tensor-core kernels for head dim D: dK/dV over query tiles of DKDV_BM rows, dQ over key
// tiles of DQ_BN keys (smaller tiles at D = 128 keep the accumulators in registers).
#define ATTN_MMA_KERNELS(D, DKDV_BM, DQ_BN)                                                        \
    extern "C" __global__ void __launch_bounds__(MMA_THREADS)                                      \
        attention_fwd_mma_d##D##_bf16(const bf16 *q, const bf16 *k, const bf16 *v,                \
                                      const unsigned *starts, const unsigned *lengths, bf16 *out, \
                                      float *lse, int hq, int hkv, float scale) {                  \
        attn_fwd_mma<D>(q, k, v, starts, lengths, out, lse, hq, hkv, scale);                       \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(MMA_THREADS) attention_bwd_dkdv_mma_d##D##_bf16( \
        const bf16 *q, const bf16 *k, const bf16 *v, const bf16 *dout, const float *lse,          \
        const float *delta, const unsigned *starts, const unsigned *lengths, bf16 *dk, bf16 *dv,  \
        int hq, int hkv, float scale) {                                                            \
        attn_bwd_dkdv_mma<D, DKDV_BM>(q, k, v, dout, lse, delta, starts, lengths, dk, dv, hq, hkv,\
                                      scale);                                                      \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(MMA_THREADS) attention_bwd_dq_mma_d##D##_bf16(   \
        const bf16 *q, const bf16 *k, const bf16 *v, const bf16 *dout, const float *lse,          \
        const float *delta, const unsigned *starts, const unsigned *lengths, bf16 *dq, int hq,    \
        int hkv, float scale) {                                                                    \
        attn_bwd_dq_mma<D, DQ_BN>(q, k, v, dout, lse, delta, starts, lengths, dq, hq, hkv, scale); \
    }

ATTN_MMA_KERNELS(64, 64, 64)
ATTN_MMA_KERNELS(128, 32, 32)
