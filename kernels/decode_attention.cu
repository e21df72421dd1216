// Attention of new query rows over the key/value cache (generation), flash-decoding style. The CPU
// reference is attention_cached_fwd in src/backend/cpu/attention.rs; the launcher is
// src/backend/cuda/decode_attention.rs.
//
// Layout (row-major): q, out (N, Hq·D); k and v caches (B·L, Hkv·D), sequence b's position p at
// row b·L + p; seq, pos (N) u32. Query row i attends to positions 0..=pos[i] of sequence seq[i];
// query head h reads key/value head h / G, G = Hq/Hkv. With s_j = scale · q·k_j:
//   out = Σ_{j≤pos} exp(s_j − m) v_j / Σ_{j≤pos} exp(s_j − m),  m = max_j s_j
// Indices are clamped, never trusted: seq ≥ B or pos ≥ L makes an empty row, whose output is 0.
//
// The sequence is cut into chunks of C positions (C from the launcher: the grid must fill the GPU
// even for a few rows). One CTA per (row i, chunk s, key/value head g, batch of ≤ DA_HEADS query
// heads of g's group): it reads its chunk of K and V once for all those heads (a group of more
// than DA_HEADS heads takes several CTAs, each reading the chunk once), in three passes over
// shared memory:
//   1. scores of every position of the chunk and head, s2 = log2(e)·scale·q·k, into sc[head][j];
//   2. per head, m = max s2 and p_j = 2^(s2_j − m) in place, l = Σ p_j (fixed order);
//   3. acc[head] = Σ p_j v_j.
// Then with one chunk (C ≥ L) the CTA writes out = acc / l itself; with several it writes the
// partial (acc, m, l) per (row, query head, chunk) to an f32 workspace, and a second kernel
// combines the chunks of each (row, head) in chunk order (deterministic):
//   M = max_s m_s,  out = Σ_s 2^(m_s − M) acc_s / Σ_s 2^(m_s − M) l_s.
// A CTA whose chunk starts past pos writes nothing: the combine reads only the pos/C + 1 chunks
// that hold positions, so it never reads an unwritten partial.
//
// Threads: 4 warps. A head row of D elements is DV = D/V vectors of V elements (V = 16 bytes of
// T where D and the caches allow 16-byte loads, else 1); a position is read by LPP lanes (LPP =
// DV rounded up to a power of two, at most 32), lane r of the group holding vectors r + LPP·u,
// u < DA_ELEMS/V, so at most DA_ELEMS elements. The groups of the CTA take positions
// round-robin; a lane keeps its slice of q for every head in registers (pass 1) and its slice of
// acc for every head (pass 3), so each K and V element is loaded once and serves all the heads.
// Dot products are summed over the group's lanes with shuffles; acc over the groups of a warp
// with shuffles, then over the warps in shared memory, in fixed orders. For bf16 with D a
// multiple of 32, pass 1 runs on the tensor cores instead (da_scores_mma: a tile of 16 positions
// × the ≤ 8 heads per warp and mma): on the CUDA cores each K element costs G multiply-adds plus
// the group's shuffles, which at G = 7 takes more issue slots than the loads leave.
//
// f32 accumulation everywhere; f32 and bf16 inputs; D ≤ 256 (DA_ELEMS·32).
#include "common.cuh"
#include "mma.cuh"

#define DA_THREADS 128
#define DA_WARPS 4
// Query heads one CTA serves.
#define DA_HEADS 8
// Elements of a head row one lane holds: D ≤ 32·DA_ELEMS.
#define DA_ELEMS 8
// Positions a lane loads before it uses them (loads in flight).
#define DA_UNROLL 4
// 32-element blocks of a head row in the tensor-core score pass, at most (D ≤ 256).
#define DA_MMA_BLOCKS 8

extern __shared__ __align__(16) float da_smem[];

// x[0..V) = p[0..V) as f32; with V > 1, p is 16-byte aligned.
template <int V> __device__ __forceinline__ void load_vec(const float *p, float *x) {
    if constexpr (V == 4) {
        const float4 f = *(const float4 *)p;
        x[0] = f.x;
        x[1] = f.y;
        x[2] = f.z;
        x[3] = f.w;
    } else {
#pragma unroll
        for (int e = 0; e < V; e++) x[e] = p[e];
    }
}

template <int V> __device__ __forceinline__ void load_vec(const bf16 *p, float *x) {
    if constexpr (V == 8) {
        const uint4 u = *(const uint4 *)p;
        const unsigned w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
        for (int e = 0; e < 4; e++) {
            x[2 * e] = __uint_as_float(w[e] << 16); // the lower-addressed element
            x[2 * e + 1] = __uint_as_float(w[e] & 0xffff0000u);
        }
    } else {
#pragma unroll
        for (int e = 0; e < V; e++) x[e] = bf16_to_f32(p[e]);
    }
}

// Asks the L2 cache for the 128-byte line holding p (a hint: no result, no fault). Pass 1 asks
// for the V rows of the positions whose K it reads, so that pass 3 finds them in L2 and the
// chunk's V streams in while its scores are computed.
__device__ __forceinline__ void prefetch_l2(const void *p) { asm volatile("prefetch.global.L2 [%0];\n" ::"l"(p)); }

// The shared memory of a CTA, in floats: sc [DA_HEADS][chunk] (passes 1-3), reused as
// red [DA_WARPS][DA_HEADS][D] (the sum over warps), then m and l [DA_HEADS]. The launcher's
// smem_bytes computes the same.
__device__ __forceinline__ int da_region(int chunk, int D) {
    return max(DA_HEADS * chunk, DA_WARPS * DA_HEADS * D);
}

// Pass 1 on the CUDA cores: sc[head][j] = log2(e)·scale·q_head·k_j for the chunk's n positions
// (kb: position 0 of the chunk, row stride ld; q: the CTA's first query head, heads D apart).
// Each lane of a position group multiplies its slice and the group sums with shuffles.
template <typename T, int V>
__device__ __forceinline__ void da_scores_fma(const T *q, const T *kb, const T *vb, long ld, float *sc, int chunk,
                                              int n, int nh, int D, float scale_log2, int lpp, int r, int grp,
                                              int ngrp) {
    constexpr int VPL = DA_ELEMS / V;
    const int DV = D / V;
    // This lane's slice of q for every head, times log2(e)·scale (0 past D or past nh heads).
    float qr[DA_HEADS][DA_ELEMS];
#pragma unroll
    for (int hh = 0; hh < DA_HEADS; hh++)
#pragma unroll
        for (int u = 0; u < VPL; u++)
#pragma unroll
            for (int e = 0; e < V; e++) {
                const int c = r + lpp * u;
                qr[hh][u * V + e] =
                    hh < nh && c < DV ? load_f32(q, hh * D + c * V + e) * scale_log2 : 0.0f;
            }

    // The loop bound is the same for the whole CTA (the shuffles need every lane of a warp); a
    // lane past the chunk loads zeros and stores nothing.
    for (int j0 = 0; j0 < n; j0 += ngrp * DA_UNROLL) {
        float kx[DA_UNROLL][DA_ELEMS];
#pragma unroll
        for (int k = 0; k < DA_UNROLL; k++) {
            const int j = j0 + grp + k * ngrp;
#pragma unroll
            for (int u = 0; u < VPL; u++) {
                const int c = r + lpp * u;
                if (j < n && c < DV) {
                    load_vec<V>(kb + (long)j * ld + c * V, &kx[k][u * V]);
                } else {
#pragma unroll
                    for (int e = 0; e < V; e++) kx[k][u * V + e] = 0.0f;
                }
            }
            // Lane r of the group asks for the row's line r (a row of D·sizeof(T) ≤ 32·128 bytes
            // has at most LPP lines).
            if (j < n && r * 128 < D * (int)sizeof(T)) prefetch_l2((const char *)(vb + (long)j * ld) + r * 128);
        }
#pragma unroll
        for (int k = 0; k < DA_UNROLL; k++) {
            const int j = j0 + grp + k * ngrp;
#pragma unroll
            for (int hh = 0; hh < DA_HEADS; hh++) {
                if (hh < nh) {
                    float dot = 0.0f;
#pragma unroll
                    for (int e = 0; e < DA_ELEMS; e++) dot += qr[hh][e] * kx[k][e];
#pragma unroll
                    for (int o = 16; o > 0; o >>= 1)
                        if (o < lpp) dot += __shfl_xor_sync(0xffffffffu, dot, o);
                    if (r == 0 && j < n) sc[hh * chunk + j] = dot;
                }
            }
        }
    }
}

// Pass 1 on the tensor cores (bf16, D a multiple of 32): per warp and tile of 16 positions,
// Sᵀ (16 positions × 8 heads) = K_tile (16 × D) · Qᵀ (D × 8 heads), mma m16n8k16 over D (heads
// past nh are zero columns). The product's k index runs over the head dimension in another
// order, the same for A and B: lane (gid, tig) loads 16 bytes, elements 32·kk + 8·tig .. +7, of
// K rows gid and gid + 8 of the tile and of q head gid; words 0, 1 of them are a[0], a[2] (rows
// gid), a[1], a[3] (rows gid + 8) and b[0], b[1] of one k-step, words 2, 3 those of the next.
// Over tig and the two k-steps that covers the 32 elements of block kk once.
__device__ __forceinline__ void da_scores_mma(const bf16 *q, const bf16 *kb, const bf16 *vb, long ld, float *sc,
                                              int chunk, int n, int nh, int D, float scale_log2) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int gid = lane >> 2, tig = lane & 3, nkk = D / 32;
    unsigned qb[DA_MMA_BLOCKS][4];
#pragma unroll
    for (int kk = 0; kk < DA_MMA_BLOCKS; kk++)
#pragma unroll
        for (int w = 0; w < 4; w++) {
            const long at = (long)gid * D + 32 * kk + 8 * tig + 2 * w;
            qb[kk][w] = kk < nkk && gid < nh ? (unsigned)q[at] | ((unsigned)q[at + 1] << 16) : 0u;
        }
    const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
    // The same trip count for every warp (mma.sync needs the whole warp; a tile past the chunk
    // multiplies zeros and stores nothing).
    for (int t0 = 0; t0 < n; t0 += 16 * DA_WARPS) {
        const int j = t0 + 16 * warp + gid; // rows j and j + 8 of the chunk
        uint4 lo[DA_MMA_BLOCKS], hi[DA_MMA_BLOCKS];
#pragma unroll
        for (int kk = 0; kk < DA_MMA_BLOCKS; kk++) {
            if (kk < nkk) {
                lo[kk] = j < n ? *(const uint4 *)(kb + (long)j * ld + 32 * kk + 8 * tig) : zero;
                hi[kk] = j + 8 < n ? *(const uint4 *)(kb + (long)(j + 8) * ld + 32 * kk + 8 * tig) : zero;
            }
        }
        // The V rows j and j + 8: lane tig asks for line tig of each (a row of D ≤ 256 bf16 has at
        // most 4 lines of 128 bytes).
        if (tig * 64 < D) {
            if (j < n) prefetch_l2(vb + (long)j * ld + 64 * tig);
            if (j + 8 < n) prefetch_l2(vb + (long)(j + 8) * ld + 64 * tig);
        }
        float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
        for (int kk = 0; kk < DA_MMA_BLOCKS; kk++) {
            if (kk < nkk) {
                const unsigned a0[4] = {lo[kk].x, hi[kk].x, lo[kk].y, hi[kk].y};
                mma_bf16(c, a0, qb[kk][0], qb[kk][1]);
                const unsigned a1[4] = {lo[kk].z, hi[kk].z, lo[kk].w, hi[kk].w};
                mma_bf16(c, a1, qb[kk][2], qb[kk][3]);
            }
        }
        // c[0], c[1]: position j, heads 2·tig and 2·tig + 1; c[2], c[3]: position j + 8.
        const int h = 2 * tig;
        if (j < n) {
            if (h < nh) sc[h * chunk + j] = c[0] * scale_log2;
            if (h + 1 < nh) sc[(h + 1) * chunk + j] = c[1] * scale_log2;
        }
        if (j + 8 < n) {
            if (h < nh) sc[h * chunk + j + 8] = c[2] * scale_log2;
            if (h + 1 < nh) sc[(h + 1) * chunk + j + 8] = c[3] * scale_log2;
        }
    }
}

// One CTA per (row blockIdx.x, chunk blockIdx.y, (key/value head, head batch) blockIdx.z).
// MMA: pass 1 on the tensor cores (T = bf16, V = 8, D a multiple of 32).
template <typename T, int V, bool MMA>
__device__ void decode_attention_split(const T *q,            // (N, Hq·D)
                                       const T *kc,           // (B·L, Hkv·D)
                                       const T *vc,           // (B·L, Hkv·D)
                                       const unsigned *seq,   // (N)
                                       const unsigned *pos,   // (N)
                                       T *out,                // (N, Hq·D), when splits == 1
                                       float *part_acc,       // (N, Hq, splits, D), when splits > 1
                                       float *part_ml,        // (N, Hq, splits, 2): m, l
                                       int batch, int capacity, int hq, int hkv, int D, int chunk,
                                       int splits, float scale_log2) {
    constexpr int VPL = DA_ELEMS / V; // vectors per lane, at most
    const long i = blockIdx.x;
    const int s = blockIdx.y;
    const int G = hq / hkv, batches = (G + DA_HEADS - 1) / DA_HEADS;
    const int g = blockIdx.z / batches;
    const int h0 = g * G + (blockIdx.z - g * batches) * DA_HEADS; // first query head of the CTA
    const int nh = min(DA_HEADS, g * G + G - h0);
    const unsigned b = seq[i], p = pos[i];
    const bool valid = b < (unsigned)batch && p < (unsigned)capacity;
    const int last = valid ? (int)p : -1;
    const int c0 = s * chunk;
    if (c0 > last) {
        // An empty row with a single chunk is written here as zeros; with several, the combine
        // writes it (and reads no partial of a chunk past pos).
        if (splits == 1)
            for (int t = threadIdx.x; t < nh * D; t += DA_THREADS) store_f32(out, (i * hq + h0) * D + t, 0.0f);
        return;
    }
    const int n = min(chunk, last + 1 - c0); // positions c0..c0+n−1, n ≥ 1

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int DV = D / V;
    int lpp = 1;
    while (lpp < DV && lpp < 32) lpp <<= 1;
    const int r = lane & (lpp - 1);            // lane within its position group
    const int per_warp = 32 / lpp;             // position groups per warp
    const int ngrp = DA_WARPS * per_warp;      // position groups per CTA
    const int grp = warp * per_warp + lane / lpp; // this lane's group
    const long ld = (long)hkv * D;             // cache row stride
    const T *kb = kc + (long)b * capacity * ld + (long)g * D + (long)c0 * ld;
    const T *vb = vc + (long)b * capacity * ld + (long)g * D + (long)c0 * ld;

    float *sc = da_smem;
    float *red = da_smem;
    float *sm = da_smem + da_region(chunk, D);
    float *sl = sm + DA_HEADS;

    // Pass 1.
    if constexpr (MMA)
        da_scores_mma(q + (i * hq + h0) * D, kb, vb, ld, sc, chunk, n, nh, D, scale_log2);
    else
        da_scores_fma<T, V>(q + (i * hq + h0) * D, kb, vb, ld, sc, chunk, n, nh, D, scale_log2, lpp, r, grp, ngrp);
    __syncthreads();

    // Pass 2: per head (one warp each), the maximum, the probabilities in place and their sum.
    for (int hh = warp; hh < nh; hh += DA_WARPS) {
        float *row = sc + hh * chunk;
        float m = GKD_NEG_INF;
        for (int j = lane; j < n; j += 32) m = fmaxf(m, row[j]);
        m = warp_max(m);
        float l = 0.0f;
        for (int j = lane; j < n; j += 32) {
            const float e = exp2f(row[j] - m);
            row[j] = e;
            l += e;
        }
        l = warp_sum(l);
        if (lane == 0) {
            sm[hh] = m;
            sl[hh] = l;
        }
    }
    __syncthreads();

    // Pass 3: acc = Σ p_j v_j over this lane's positions.
    float acc[DA_HEADS][DA_ELEMS];
#pragma unroll
    for (int hh = 0; hh < DA_HEADS; hh++)
#pragma unroll
        for (int e = 0; e < DA_ELEMS; e++) acc[hh][e] = 0.0f;
    for (int j0 = 0; j0 < n; j0 += ngrp * DA_UNROLL) {
        float vx[DA_UNROLL][DA_ELEMS];
#pragma unroll
        for (int k = 0; k < DA_UNROLL; k++) {
            const int j = j0 + grp + k * ngrp;
#pragma unroll
            for (int u = 0; u < VPL; u++) {
                const int c = r + lpp * u;
                if (j < n && c < DV) {
                    load_vec<V>(vb + (long)j * ld + c * V, &vx[k][u * V]);
                } else {
#pragma unroll
                    for (int e = 0; e < V; e++) vx[k][u * V + e] = 0.0f;
                }
            }
        }
#pragma unroll
        for (int k = 0; k < DA_UNROLL; k++) {
            const int j = j0 + grp + k * ngrp;
            if (j < n) {
#pragma unroll
                for (int hh = 0; hh < DA_HEADS; hh++) {
                    if (hh < nh) {
                        const float pj = sc[hh * chunk + j];
#pragma unroll
                        for (int e = 0; e < DA_ELEMS; e++) acc[hh][e] += pj * vx[k][e];
                    }
                }
            }
        }
    }
    // Sum over the groups of the warp (lanes r, r + LPP, r + 2·LPP, … hold the same elements).
#pragma unroll
    for (int hh = 0; hh < DA_HEADS; hh++) {
        if (hh < nh) {
#pragma unroll
            for (int e = 0; e < DA_ELEMS; e++)
#pragma unroll
                for (int o = 1; o < 32; o <<= 1)
                    if (o >= lpp) acc[hh][e] += __shfl_xor_sync(0xffffffffu, acc[hh][e], o);
        }
    }
    __syncthreads(); // every warp has read sc: red may overwrite it
    if (lane < lpp) {
#pragma unroll
        for (int hh = 0; hh < DA_HEADS; hh++) {
            if (hh < nh) {
#pragma unroll
                for (int u = 0; u < VPL; u++) {
                    const int c = r + lpp * u;
                    if (c < DV) {
#pragma unroll
                        for (int e = 0; e < V; e++) red[(warp * DA_HEADS + hh) * D + c * V + e] = acc[hh][u * V + e];
                    }
                }
            }
        }
    }
    __syncthreads();
    for (int t = threadIdx.x; t < nh * D; t += DA_THREADS) {
        const int hh = t / D, d = t - hh * D;
        float o = red[hh * D + d];
#pragma unroll
        for (int w = 1; w < DA_WARPS; w++) o += red[(w * DA_HEADS + hh) * D + d];
        const long oh = i * hq + h0 + hh; // (row, query head)
        if (splits == 1) {
            store_f32(out, oh * D + d, o / sl[hh]);
        } else {
            const long at = oh * splits + s;
            part_acc[at * D + d] = o;
            if (d == 0) {
                part_ml[2 * at] = sm[hh];
                part_ml[2 * at + 1] = sl[hh];
            }
        }
    }
}

// The chunks of each (row, query head), one warp each, 8 per 256-thread CTA: chunks 0..pos/C
// hold positions (none for an empty row, whose output is 0).
template <typename T>
__device__ void decode_attention_combine(const unsigned *seq,    // (N)
                                         const unsigned *pos,    // (N)
                                         const float *part_acc,  // (N, Hq, splits, D)
                                         const float *part_ml,   // (N, Hq, splits, 2)
                                         T *out,                 // (N, Hq·D)
                                         long rows, int batch, int capacity, int hq, int D, int chunk,
                                         int splits) {
    const long w = (long)blockIdx.x * 8 + (threadIdx.x >> 5); // (row, query head)
    if (w >= rows * hq) return;
    const int lane = threadIdx.x & 31;
    const long i = w / hq;
    const unsigned b = seq[i], p = pos[i];
    const int used = b < (unsigned)batch && p < (unsigned)capacity ? min((int)(p / (unsigned)chunk) + 1, splits) : 0;
    const float *ml = part_ml + w * splits * 2;
    const float *acc = part_acc + w * splits * D;
    float m = GKD_NEG_INF;
    for (int s = 0; s < used; s++) m = fmaxf(m, ml[2 * s]);
    float l = 0.0f;
    for (int s = 0; s < used; s++) l += exp2f(ml[2 * s] - m) * ml[2 * s + 1];
    for (int d = lane; d < D; d += 32) {
        float o = 0.0f;
        for (int s = 0; s < used; s++) o += exp2f(ml[2 * s] - m) * acc[(long)s * D + d];
        store_f32(out, w * D + d, used > 0 ? o / l : 0.0f);
    }
}

// ----------------------------------------------------------------------------------------------
// entry points: decode_attention_split_<dtype> with 16-byte loads of K and V (D a multiple of
// 16 bytes of T, caches 16-byte aligned), decode_attention_split_mma_bf16 the same with the
// scores on the tensor cores (D a multiple of 32), decode_attention_split_narrow_<dtype> with
// element loads (any D ≤ 256), decode_attention_combine_<dtype>.

// At least CTAS CTAs per SM: 3 caps registers at 168 a thread (no spills on the 16-byte paths);
// the element-load paths, which hold 8 single elements per lane, get 2 (no cap below 255).
#define DECODE_ATTENTION_SPLIT(NAME, T, VEC, MMA, CTAS)                                             \
    extern "C" __global__ void __launch_bounds__(DA_THREADS, CTAS)                                 \
        NAME(const T *q, const T *kc, const T *vc, const unsigned *seq, const unsigned *pos, T *out, \
             float *part_acc, float *part_ml, int batch, int capacity, int hq, int hkv, int d,     \
             int chunk, int splits, float scale_log2) {                                            \
        decode_attention_split<T, VEC, MMA>(q, kc, vc, seq, pos, out, part_acc, part_ml, batch,   \
                                            capacity, hq, hkv, d, chunk, splits, scale_log2);      \
    }

#define DECODE_ATTENTION_COMBINE(T, SUF)                                                           \
    extern "C" __global__ void decode_attention_combine_##SUF(                                     \
        const unsigned *seq, const unsigned *pos, const float *part_acc, const float *part_ml,    \
        T *out, long rows, int batch, int capacity, int hq, int d, int chunk, int splits) {       \
        decode_attention_combine<T>(seq, pos, part_acc, part_ml, out, rows, batch, capacity, hq,  \
                                    d, chunk, splits);                                             \
    }

DECODE_ATTENTION_SPLIT(decode_attention_split_f32, float, 4, false, 3)
DECODE_ATTENTION_SPLIT(decode_attention_split_bf16, bf16, 8, false, 3)
DECODE_ATTENTION_SPLIT(decode_attention_split_mma_bf16, bf16, 8, true, 3)
DECODE_ATTENTION_SPLIT(decode_attention_split_narrow_f32, float, 1, false, 2)
DECODE_ATTENTION_SPLIT(decode_attention_split_narrow_bf16, bf16, 1, false, 2)
DECODE_ATTENTION_COMBINE(float, f32)
DECODE_ATTENTION_COMBINE(bf16, bf16)
