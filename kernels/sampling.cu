// Sampling: one token per row of logits, drawn on the device. The function, in f64, is
// src/backend/cpu/sampling.rs; this computes it in f32. For a row z (V logits), m = max z:
//   lp_model  = z_t − m − ln Σ exp(z − m)
//   T = 0:      t = argmax z (lowest id on ties), lp_sample = 0
//   T > 0:      kept set K = {z ≥ threshold} (top-k, then top-p within it; all when neither);
//               t = argmax_K (z/T + G) (lowest id on ties: Gumbel-max draws from softmax(z/T) on K)
//               lp_sample = (z_t − m)/T − ln Σ_K exp((z − m)/T)   (the largest z is always in K)
//   G_i = −ln(−ln u_i), u_i = ((x >> 8) + ½)·2⁻²⁴, x = word i % 4 of
//         philox4x32_10(counter (i/4, pos, seq, 0), key (seed_lo, seed_hi))
//
// Two paths (launch configurations: src/backend/cuda/sampling.rs):
// - split, for greedy and for plain sampling (no top-k, no top-p): sample_split_<dtype>, one block
//   per (row, chunk of `chunk` logits), one pass: running max, Σ exp(z − m), Σ exp((z − m)/T) and the
//   best (score, id); then sample_finish_<dtype>, one warp per row, merges a row's chunks in a fixed
//   order and writes the token and its log-probabilities.
// - filtered (top-k and/or top-p): sample_filtered_<dtype>, one block of 1024 threads per row.
//   top-k: radix select of the k-th largest key (order-preserving u32 of z; 8-bit digits from the
//   top, u32 histograms in shared memory; bf16 keys need only the top 2 digits). top-p: the same
//   descent over the fixed-point mass round(exp((z − m)/T)·2⁴⁰) (u64) of the tokens top-k kept,
//   finding the largest v with mass(z ≥ v) ≥ p·mass(K). Then the split path's pass over z ≥ the
//   threshold.
// Deterministic: the chunking depends on V only, reductions run in fixed trees, the only atomics
// are integer adds, so a row's result depends on its own logits, seq, pos and the spec alone.
#include "common.cuh"

#define SAMPLE_PARTS 5          // per (row, chunk): max z, Σexp(z−m), Σ_K exp((z−m)/T), best score, best id
#define SAMPLE_NO_ID 0x7fffffff // the id of an empty accumulator (above every real id)
#define SAMPLE_GUMBEL_MAX 17.5f // above every G: u ≤ 1 − 2⁻²⁵ gives G ≤ 25·ln 2 ≈ 17.33
#define SAMPLE_FIXED_ONE 1099511627776.0f // 2^40: the fixed-point unit of the top-p mass
#define SAMPLE_SUBHISTS 8       // copies of each radix histogram in the filtered kernel

// Order-preserving key of a logit: a < b ⇔ key(a) < key(b); −0 and +0 share one key, so that
// comparisons of keys are comparisons of values (ties at the top-k boundary stay together).
__device__ __forceinline__ unsigned int sample_key(float z) {
    const unsigned int b = __float_as_uint(z == 0.0f ? 0.0f : z);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// G = −ln(−ln u) for u = ((x >> 8) + ½)·2⁻²⁴ = (2m + 1)·2⁻²⁵. Below ½, (2m + 1) < 2²⁴ is exact in
// f32 and ln u is well conditioned; above, 1 − u = (2²⁵ − 2m − 1)·2⁻²⁵ is exact and −ln u is
// −log1p(−(1 − u)) (ln u of a rounded u near 1 would lose every digit, even give +inf).
__device__ __forceinline__ float gumbel_of_word(unsigned int x) {
    const unsigned int m = x >> 8;
    const float two_m25 = 2.98023223876953125e-8f; // 2^-25
    float e;
    if (m < (1u << 23))
        e = -logf((float)(2u * m + 1u) * two_m25);
    else
        e = -log1pf(-(float)((1u << 25) - (2u * m + 1u)) * two_m25);
    return -logf(e);
}

__device__ __forceinline__ unsigned int word_of(uint4 r, int j) {
    return j == 0 ? r.x : j == 1 ? r.y : j == 2 ? r.z : r.w;
}

// What a pass over (part of) a row accumulates.
struct SampleAcc {
    float m;    // the largest z seen (all tokens)
    float sz;   // Σ exp(z − m), all tokens
    float ss;   // Σ exp((z − m)/T), kept tokens (unused when greedy)
    float best; // the best score among kept tokens: z/T + G, or z when greedy
    int id;     // its token id, the lowest among equal scores; SAMPLE_NO_ID when none
};

__device__ __forceinline__ SampleAcc acc_empty() {
    SampleAcc a;
    a.m = GKD_NEG_INF;
    a.sz = 0.0f;
    a.ss = 0.0f;
    a.best = GKD_NEG_INF;
    a.id = SAMPLE_NO_ID;
    return a;
}

__device__ __forceinline__ void acc_best(SampleAcc &a, float score, int id) {
    if (score > a.best || (score == a.best && id < a.id)) {
        a.best = score;
        a.id = id;
    }
}

// One token: its logit z into the sums (ss only when kept), its score into the argmax when kept.
__device__ __forceinline__ void acc_add(SampleAcc &a, float z, bool kept, float score, int id, float inv_t,
                                        bool greedy) {
    if (z > a.m) {
        const float d = a.m - z; // −inf for the first token: the empty sums stay 0
        a.sz = a.sz * expf(d) + 1.0f;
        if (!greedy) a.ss = a.ss * expf(d * inv_t) + (kept ? 1.0f : 0.0f);
        a.m = z;
    } else if (a.m > GKD_NEG_INF) {
        const float d = z - a.m;
        a.sz += expf(d);
        if (!greedy && kept) a.ss += expf(d * inv_t);
    }
    if (kept) acc_best(a, score, id);
}

// b merged into a (inv_t is 1 when greedy, so that the unused ss stays finite).
__device__ __forceinline__ SampleAcc acc_merge(SampleAcc a, const SampleAcc &b, float inv_t) {
    const float m = fmaxf(a.m, b.m);
    if (m > GKD_NEG_INF) {
        const float da = a.m - m, db = b.m - m;
        a.sz = a.sz * expf(da) + b.sz * expf(db);
        a.ss = a.ss * expf(da * inv_t) + b.ss * expf(db * inv_t);
    }
    a.m = m;
    acc_best(a, b.best, b.id);
    return a;
}

// Butterfly over the warp; lane 0's result is the one used (each lane merges in a fixed order).
__device__ __forceinline__ SampleAcc acc_warp(SampleAcc a, float inv_t) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        SampleAcc b;
        b.m = __shfl_xor_sync(0xffffffffu, a.m, o);
        b.sz = __shfl_xor_sync(0xffffffffu, a.sz, o);
        b.ss = __shfl_xor_sync(0xffffffffu, a.ss, o);
        b.best = __shfl_xor_sync(0xffffffffu, a.best, o);
        b.id = __shfl_xor_sync(0xffffffffu, a.id, o);
        a = acc_merge(a, b, inv_t);
    }
    return a;
}

// Over the block (blockDim.x a multiple of 32); the result is valid in thread 0.
__device__ __forceinline__ SampleAcc acc_block(SampleAcc a, float inv_t, SampleAcc *scratch /* [32] */) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    a = acc_warp(a, inv_t);
    if (lane == 0) scratch[warp] = a;
    __syncthreads();
    if (warp == 0) {
        a = lane < warps ? scratch[lane] : acc_empty();
        a = acc_warp(a, inv_t);
    }
    return a;
}

// Eight logits from i0 (a multiple of 8) as f32: one 16-byte load (bf16) or two (f32) when `vec`
// (the row is 16-byte aligned) and all eight exist, else scalar loads of the n that exist.
__device__ __forceinline__ void load8(const float *row, int i0, int n, bool vec, float z[8]) {
    if (vec && n == 8) {
        const float4 a = *(const float4 *)(row + i0), b = *(const float4 *)(row + i0 + 4);
        z[0] = a.x; z[1] = a.y; z[2] = a.z; z[3] = a.w;
        z[4] = b.x; z[5] = b.y; z[6] = b.z; z[7] = b.w;
        return;
    }
#pragma unroll
    for (int j = 0; j < 8; ++j) z[j] = j < n ? row[i0 + j] : GKD_NEG_INF;
}

__device__ __forceinline__ void load8(const bf16 *row, int i0, int n, bool vec, float z[8]) {
    if (vec && n == 8) {
        const uint4 u = *(const uint4 *)(row + i0); // element i0 is the low half of u.x
        z[0] = __uint_as_float(u.x << 16); z[1] = __uint_as_float(u.x & 0xffff0000u);
        z[2] = __uint_as_float(u.y << 16); z[3] = __uint_as_float(u.y & 0xffff0000u);
        z[4] = __uint_as_float(u.z << 16); z[5] = __uint_as_float(u.z & 0xffff0000u);
        z[6] = __uint_as_float(u.w << 16); z[7] = __uint_as_float(u.w & 0xffff0000u);
        return;
    }
#pragma unroll
    for (int j = 0; j < 8; ++j) z[j] = j < n ? bf16_to_f32(row[i0 + j]) : GKD_NEG_INF;
}

// Calls visit(i0, n, z) for the units of eight logits of row[begin, end) this thread owns
// (begin a multiple of 8; thread t takes units t, t + blockDim.x, …).
template <typename T, typename Visit>
__device__ __forceinline__ void for_each_unit(const T *row, int begin, int end, bool vec, Visit &visit) {
    for (int i0 = begin + 8 * (int)threadIdx.x; i0 < end; i0 += 8 * (int)blockDim.x) {
        float z[8];
        const int n = min(8, end - i0);
        load8(row, i0, n, vec, z);
        visit(i0, n, z);
    }
}

// The draw pass: every token into the sums, the tokens with key ≥ thr (0: all) into the argmax.
struct DrawVisit {
    SampleAcc acc;
    float inv_t;
    unsigned int thr;
    bool greedy;
    uint2 key;
    unsigned int pos, seq;

    __device__ __forceinline__ void operator()(int i0, int n, const float z[8]) {
#pragma unroll
        for (int g = 0; g < 2; ++g) {
            // One Philox call per group of four, skipped when no token of the group can beat this
            // thread's best (its score is below z/T + SAMPLE_GUMBEL_MAX).
            float zmax = GKD_NEG_INF;
#pragma unroll
            for (int j = 0; j < 4; ++j)
                if (4 * g + j < n) zmax = fmaxf(zmax, z[4 * g + j]);
            const bool draw = !greedy && 4 * g < n && zmax * inv_t + SAMPLE_GUMBEL_MAX >= acc.best;
            uint4 r = make_uint4(0u, 0u, 0u, 0u);
            if (draw) r = philox4x32_10(make_uint4((unsigned int)(i0 / 4 + g), pos, seq, 0u), key);
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int e = 4 * g + j;
                if (e >= n) break;
                const bool kept = thr == 0u || sample_key(z[e]) >= thr;
                float score = z[e];
                if (!greedy) score = draw ? z[e] * inv_t + gumbel_of_word(word_of(r, j)) : GKD_NEG_INF;
                acc_add(acc, z[e], kept, score, i0 + e, inv_t, greedy);
            }
        }
    }
};

// The token and its log-probabilities from a row's merged accumulator.
template <typename T>
__device__ __forceinline__ void write_draw(const T *row, int vocab, const SampleAcc &a, float inv_t, bool greedy,
                                           unsigned int *token, float *logprobs /* (2) */) {
    const int t = (a.id >= 0 && a.id < vocab) ? a.id : 0;
    const float zt = load_f32(row, t);
    *token = (unsigned int)t;
    logprobs[0] = greedy ? 0.0f : (zt - a.m) * inv_t - logf(a.ss);
    logprobs[1] = zt - a.m - logf(a.sz);
}

// ---------------------------------------------------------------------------------------------
// split path

template <typename T>
__device__ void sample_split(const T *logits,          // (N, V)
                             const unsigned int *seq,  // (N)
                             const unsigned int *pos,  // (N)
                             float *part,              // (N, chunks, SAMPLE_PARTS)
                             int vocab, int chunk, int chunks, float inv_t, int greedy, unsigned int seed_lo,
                             unsigned int seed_hi, int vec) {
    __shared__ SampleAcc scratch[32];
    const long r = blockIdx.x / chunks;
    const int c = blockIdx.x % chunks;
    const int begin = c * chunk, end = min(begin + chunk, vocab);
    DrawVisit v;
    v.acc = acc_empty();
    v.inv_t = inv_t;
    v.thr = 0u;
    v.greedy = greedy != 0;
    v.key = make_uint2(seed_lo, seed_hi);
    v.pos = pos[r];
    v.seq = seq[r];
    for_each_unit(logits + r * vocab, begin, end, vec != 0, v);
    const SampleAcc a = acc_block(v.acc, inv_t, scratch);
    if (threadIdx.x == 0) {
        float *p = part + (r * chunks + c) * SAMPLE_PARTS;
        p[0] = a.m;
        p[1] = a.sz;
        p[2] = a.ss;
        p[3] = a.best;
        p[4] = __int_as_float(a.id);
    }
}

// One warp per row (blockDim.x / 32 rows per block): the row's chunks merged in a fixed order.
template <typename T>
__device__ void sample_finish(const T *logits,      // (N, V)
                              const float *part,    // (N, chunks, SAMPLE_PARTS)
                              unsigned int *tokens, // (N)
                              float *logprobs,      // (N, 2)
                              int rows, int vocab, int chunks, float inv_t, int greedy) {
    const int lane = threadIdx.x & 31;
    const long r = (long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (r >= rows) return;
    SampleAcc a = acc_empty();
    for (int c = lane; c < chunks; c += 32) {
        const float *p = part + (r * chunks + c) * SAMPLE_PARTS;
        SampleAcc b;
        b.m = p[0];
        b.sz = p[1];
        b.ss = p[2];
        b.best = p[3];
        b.id = __float_as_int(p[4]);
        a = acc_merge(a, b, inv_t);
    }
    a = acc_warp(a, inv_t);
    if (lane == 0) write_draw(logits + r * vocab, vocab, a, inv_t, greedy != 0, tokens + r, logprobs + 2 * r);
}

// ---------------------------------------------------------------------------------------------
// filtered path: one block per row

struct MaxVisit {
    float m;
    __device__ __forceinline__ void operator()(int, int n, const float z[8]) {
#pragma unroll
        for (int j = 0; j < 8; ++j)
            if (j < n) m = fmaxf(m, z[j]);
    }
};

// Histogram of the digit at `shift` of the keys ≥ `floor` whose digits above it equal `prefix`
// (under `mask`): a count per digit, or (mass) the fixed-point weight round(exp((z − m)/T)·2⁴⁰).
template <typename C, bool MASS>
struct DigitVisit {
    C *hist; // [256], shared
    unsigned int floor, prefix, mask;
    int shift;
    float m, inv_t;
    __device__ __forceinline__ void operator()(int, int n, const float z[8]) {
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            if (j >= n) break;
            const unsigned int k = sample_key(z[j]);
            if (k < floor || (k & mask) != prefix) continue;
            const unsigned int d = (k >> shift) & 255u;
            if constexpr (MASS) {
                const unsigned long long w = __float2ull_rn(expf((z[j] - m) * inv_t) * SAMPLE_FIXED_ONE);
                if (w != 0ull) atomicAdd(&hist[d], w); // most of a peaked row weighs 0 at 2^-40
            } else
                atomicAdd(&hist[d], 1u);
        }
    }
};

// Warp 0: the digit d where the total of the digits above d is < target ≤ that total + hist[d],
// scanning from digit 255 down; writes d and the total above it. Lane l holds digits 255 − 8l down
// to 248 − 8l. With p > 0 the target is first set to clamp(ceil(p · Σ hist), 1, Σ hist) (the
// nucleus's share of the mass) and also written to *target_out.
template <typename C>
__device__ __forceinline__ void radix_pick(const C *hist, C target, double p, int *digit, C *above, C *target_out) {
    const int lane = threadIdx.x & 31;
    C local = 0;
#pragma unroll
    for (int j = 0; j < 8; ++j) local += hist[255 - 8 * lane - j];
    C incl = local;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const C v = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += v;
    }
    if (p > 0.0) {
        const C total = __shfl_sync(0xffffffffu, incl, 31);
        const double t = ceil(p * (double)total);
        target = t < 1.0 ? (C)1 : t >= (double)total ? total : (C)t;
        if (lane == 0) *target_out = target;
    }
    const unsigned int reached = __ballot_sync(0xffffffffu, incl >= target);
    const int owner = __ffs(reached) - 1;
    if (lane == owner) {
        C acc = incl - local;
        for (int j = 0; j < 8; ++j) {
            const int d = 255 - 8 * lane - j;
            if (acc + hist[d] >= target) {
                *digit = d;
                *above = acc;
                break;
            }
            acc += hist[d];
        }
    }
}

// hist[0][d] = Σ_s hist[s][d]; ends with a barrier.
template <typename C>
__device__ __forceinline__ void fold_subhists(C (*hist)[256]) {
    for (int d = threadIdx.x; d < 256; d += blockDim.x) {
        C total = hist[0][d];
#pragma unroll
        for (int s = 1; s < SAMPLE_SUBHISTS; ++s) total += hist[s][d];
        hist[0][d] = total;
    }
    __syncthreads();
}

template <typename T>
__device__ void sample_filtered(const T *logits,         // (N, V)
                                const unsigned int *seq, // (N)
                                const unsigned int *pos, // (N)
                                unsigned int *tokens,    // (N)
                                float *logprobs,         // (N, 2)
                                int vocab, float inv_t, int top_k /* 0: off */, double top_p /* ≥ 1: off */,
                                unsigned int seed_lo, unsigned int seed_hi, int vec) {
    // SAMPLE_SUBHISTS copies of each histogram (warp w adds into copy w % SAMPLE_SUBHISTS), so that
    // the many tokens sharing a top digit do not all contend for one shared-memory word; the
    // copies are summed (integers: in any order) before each pick.
    __shared__ unsigned int hist32[SAMPLE_SUBHISTS][256];
    __shared__ unsigned long long hist64[SAMPLE_SUBHISTS][256];
    const int sub = (threadIdx.x >> 5) % SAMPLE_SUBHISTS;
    __shared__ SampleAcc scratch[32];
    __shared__ float red[32];
    __shared__ int s_digit;
    __shared__ unsigned int s_above32;
    __shared__ unsigned long long s_above64, s_target64;
    const long r = blockIdx.x;
    const T *row = logits + r * vocab;
    const bool vecb = vec != 0;
    // bf16 keys have 16 significant bits: two digits decide them (the low 16 bits of a key are
    // then all 0 or all 1, the same for every token of one value, so a threshold with them 0 keeps
    // exactly the tokens of value ≥ it).
    const int levels = sizeof(T) == 2 ? 2 : 4;

    unsigned int thr = 0u;
    if (top_k > 0) {
        unsigned int want = (unsigned int)top_k, prefix = 0u, mask = 0u;
        for (int level = 0; level < levels; ++level) {
            const int shift = 24 - 8 * level;
            for (int i = threadIdx.x; i < SAMPLE_SUBHISTS * 256; i += blockDim.x) hist32[i >> 8][i & 255] = 0u;
            if (threadIdx.x == 0) s_digit = 0, s_above32 = 0u;
            __syncthreads();
            DigitVisit<unsigned int, false> v{hist32[sub], 0u, prefix, mask, shift, 0.0f, 0.0f};
            for_each_unit(row, 0, vocab, vecb, v);
            __syncthreads();
            fold_subhists(hist32);
            if (threadIdx.x < 32) radix_pick<unsigned int>(hist32[0], want, 0.0, &s_digit, &s_above32, nullptr);
            __syncthreads();
            want -= s_above32;
            prefix |= (unsigned int)s_digit << shift;
            mask |= 255u << shift;
            __syncthreads(); // everyone has read s_digit before the next level resets it
        }
        thr = prefix;
    }

    // The largest logit (also the largest kept one).
    MaxVisit mv{GKD_NEG_INF};
    for_each_unit(row, 0, vocab, vecb, mv);
    const float m = block_max(mv.m, red);

    if (top_p < 1.0) {
        unsigned long long want = 0ull;
        unsigned int prefix = 0u, mask = 0u;
        for (int level = 0; level < levels; ++level) {
            const int shift = 24 - 8 * level;
            for (int i = threadIdx.x; i < SAMPLE_SUBHISTS * 256; i += blockDim.x) hist64[i >> 8][i & 255] = 0ull;
            if (threadIdx.x == 0) s_digit = 0, s_above64 = 0ull;
            __syncthreads();
            DigitVisit<unsigned long long, true> v{hist64[sub], thr, prefix, mask, shift, m, inv_t};
            for_each_unit(row, 0, vocab, vecb, v);
            __syncthreads();
            fold_subhists(hist64);
            if (threadIdx.x < 32)
                radix_pick<unsigned long long>(hist64[0], want, level == 0 ? top_p : 0.0, &s_digit, &s_above64,
                                               &s_target64);
            __syncthreads();
            want = (level == 0 ? s_target64 : want) - s_above64;
            prefix |= (unsigned int)s_digit << shift;
            mask |= 255u << shift;
            __syncthreads();
        }
        thr = prefix > thr ? prefix : thr;
    }

    DrawVisit dv;
    dv.acc = acc_empty();
    dv.inv_t = inv_t;
    dv.thr = thr;
    dv.greedy = false;
    dv.key = make_uint2(seed_lo, seed_hi);
    dv.pos = pos[r];
    dv.seq = seq[r];
    for_each_unit(row, 0, vocab, vecb, dv);
    const SampleAcc a = acc_block(dv.acc, inv_t, scratch);
    if (threadIdx.x == 0) write_draw(row, vocab, a, inv_t, false, tokens + r, logprobs + 2 * r);
}

// ---------------------------------------------------------------------------------------------
// entry points, one per dtype

#define SAMPLING_KERNELS(T, SUF)                                                                    \
    extern "C" __global__ void __launch_bounds__(256)                                               \
        sample_split_##SUF(const T *logits, const unsigned int *seq, const unsigned int *pos,       \
                           float *part, int vocab, int chunk, int chunks, float inv_t, int greedy,  \
                           unsigned int seed_lo, unsigned int seed_hi, int vec) {                   \
        sample_split<T>(logits, seq, pos, part, vocab, chunk, chunks, inv_t, greedy, seed_lo,       \
                        seed_hi, vec);                                                              \
    }                                                                                               \
    extern "C" __global__ void __launch_bounds__(256)                                               \
        sample_finish_##SUF(const T *logits, const float *part, unsigned int *tokens,               \
                            float *logprobs, int rows, int vocab, int chunks, float inv_t,          \
                            int greedy) {                                                           \
        sample_finish<T>(logits, part, tokens, logprobs, rows, vocab, chunks, inv_t, greedy);       \
    }                                                                                               \
    extern "C" __global__ void __launch_bounds__(1024, 1)                                              \
        sample_filtered_##SUF(const T *logits, const unsigned int *seq, const unsigned int *pos,    \
                              unsigned int *tokens, float *logprobs, int vocab, float inv_t,        \
                              int top_k, double top_p, unsigned int seed_lo, unsigned int seed_hi,  \
                              int vec) {                                                            \
        sample_filtered<T>(logits, seq, pos, tokens, logprobs, vocab, inv_t, top_k, top_p, seed_lo, \
                           seed_hi, vec);                                                           \
    }

SAMPLING_KERNELS(float, f32)
SAMPLING_KERNELS(bf16, bf16)
