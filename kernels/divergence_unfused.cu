// The divergences of kernels/divergence.cu computed the way a framework does it: one kernel per
// step, (rows, V) fp32 intermediates in global memory. The baseline of the benchmarks; same
// arguments and results as the fused kernels. Natural logs, expf/logf.
//   unfused_log_softmax_T  x (rows, ld) T → out (rows, V) f32 = x/τ − lse, lse (rows)
//                          (run on s → lq and on t → lp)
//   unfused_log_mixture    lq, lp → lm (rows, V) = log(w_p P + w_q Q), for JSD and skew KL
//   unfused_terms          lq, lp, lm → ta, tb (rows, V): per-element terms of the two row sums
//   unfused_row_sums       ta, tb → sums (rows, 3) = (Σ ta, Σ tb, D), row_loss = scale·D
//   unfused_grad_T         lq, lp, lm, sums → grad (rows, ld) T = scale/τ · ∂D/∂a
// A row is skipped (loss 0, gradient 0) when masked or when lse is −inf for s or t.
#include "common.cuh"

#define UNF_THREADS 256

struct Weights {
    float p, q; // M = p·P + q·Q
};

__device__ __forceinline__ Weights mixture(const gkd_divergence_params &p) {
    Weights w;
    w.p = p.kind == GKD_DIV_SKEW_RKL ? 1.0f - p.coef : p.coef;
    w.q = p.kind == GKD_DIV_SKEW_RKL ? p.coef : 1.0f - p.coef;
    return w;
}

__device__ __forceinline__ float xlog(float p, float x, float y) { return p > 0.0f ? p * (x - y) : 0.0f; }
__device__ __forceinline__ float sign_of(float x) { return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : 0.0f); }

__device__ __forceinline__ bool row_skipped(const unsigned char *mask, const float *lse_s, const float *lse_t,
                                            long row) {
    return (mask && !mask[row]) || lse_s[row] == GKD_NEG_INF || lse_t[row] == GKD_NEG_INF;
}

template <typename T>
__device__ void log_softmax(const T *x, float *out, float *lse, gkd_divergence_params p) {
    __shared__ float scratch[32];
    const long row = blockIdx.x;
    const T *xr = x + row * p.ld;
    float *o = out + row * p.vocab;
    float m = GKD_NEG_INF;
    for (int j = threadIdx.x; j < p.vocab; j += blockDim.x) m = fmaxf(m, load_f32(xr, j) * p.inv_temp);
    m = block_max(m, scratch);
    if (m == GKD_NEG_INF) {
        for (int j = threadIdx.x; j < p.vocab; j += blockDim.x) o[j] = GKD_NEG_INF;
        if (threadIdx.x == 0) lse[row] = GKD_NEG_INF;
        return;
    }
    float z = 0.0f;
    for (int j = threadIdx.x; j < p.vocab; j += blockDim.x) z += expf(load_f32(xr, j) * p.inv_temp - m);
    const float l = m + logf(block_sum(z, scratch));
    for (int j = threadIdx.x; j < p.vocab; j += blockDim.x) o[j] = load_f32(xr, j) * p.inv_temp - l;
    if (threadIdx.x == 0) lse[row] = l;
}

extern "C" __global__ void unfused_log_mixture(const float *lq, const float *lp, float *lm, gkd_divergence_params p) {
    const Weights w = mixture(p);
    const float lwp = logf(w.p), lwq = logf(w.q);
    const long n = (long)p.rows * p.vocab;
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        const float x = lwp + lp[i], y = lwq + lq[i], m = fmaxf(x, y);
        lm[i] = m == GKD_NEG_INF ? m : m + log1pf(expf(-fabsf(x - y)));
    }
}

extern "C" __global__ void unfused_terms(const float *lq, const float *lp, const float *lm, float *ta, float *tb,
                                         gkd_divergence_params p) {
    const long n = (long)p.rows * p.vocab;
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        const float q = expf(lq[i]), pp = expf(lp[i]);
        float a = 0.0f, b = 0.0f;
        switch (p.kind) {
        case GKD_DIV_FKL: a = xlog(pp, lp[i], lq[i]); break;
        case GKD_DIV_RKL: a = xlog(q, lq[i], lp[i]); break;
        case GKD_DIV_JSD:
            a = xlog(pp, lp[i], lm[i]);
            b = xlog(q, lq[i], lm[i]);
            break;
        case GKD_DIV_TVD:
            a = fabsf(pp - q);
            b = q * sign_of(q - pp);
            break;
        case GKD_DIV_SKEW_FKL:
            a = xlog(pp, lp[i], lm[i]);
            b = q > 0.0f ? pp * expf(lq[i] - lm[i]) : 0.0f;
            break;
        case GKD_DIV_SKEW_RKL:
            a = xlog(q, lq[i], lm[i]);
            b = q > 0.0f ? q * expf(lq[i] - lm[i]) : 0.0f;
            break;
        default: break;
        }
        ta[i] = a;
        tb[i] = b;
    }
}

extern "C" __global__ void unfused_row_sums(const float *ta, const float *tb, const unsigned char *mask,
                                            const float *lse_s, const float *lse_t, float *sums, float *row_loss,
                                            gkd_divergence_params p) {
    __shared__ float scratch[32];
    const long row = blockIdx.x;
    float a = 0.0f, b = 0.0f;
    for (int j = threadIdx.x; j < p.vocab; j += blockDim.x) {
        a += ta[row * p.vocab + j];
        b += tb[row * p.vocab + j];
    }
    a = block_sum(a, scratch);
    b = block_sum(b, scratch);
    float d;
    switch (p.kind) {
    case GKD_DIV_JSD: d = p.coef * a + (1.0f - p.coef) * b; break;
    case GKD_DIV_TVD: d = 0.5f * a; break;
    default: d = a; break;
    }
    if (threadIdx.x == 0) {
        const bool skip = row_skipped(mask, lse_s, lse_t, row);
        sums[3 * row] = a;
        sums[3 * row + 1] = b;
        sums[3 * row + 2] = d;
        row_loss[row] = skip ? 0.0f : p.scale * d;
    }
}

template <typename T>
__device__ void grad(const float *lq, const float *lp, const float *lm, const float *sums, const unsigned char *mask,
                     const float *lse_s, const float *lse_t, T *g, gkd_divergence_params p) {
    const long n = (long)p.rows * p.vocab;
    const float gs = p.scale * p.inv_temp, c = p.coef;
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        const long row = i / p.vocab, j = i - row * p.vocab;
        float v = 0.0f;
        if (!row_skipped(mask, lse_s, lse_t, row)) {
            const float q = expf(lq[i]), pp = expf(lp[i]);
            const float b = sums[3 * row + 1], d = sums[3 * row + 2];
            switch (p.kind) {
            case GKD_DIV_FKL: v = q - pp; break;
            case GKD_DIV_RKL: v = xlog(q, lq[i], lp[i] + d); break;
            case GKD_DIV_JSD: v = (1.0f - c) * xlog(q, lq[i], lm[i] + b); break;
            case GKD_DIV_TVD: v = 0.5f * q * (sign_of(q - pp) - b); break;
            case GKD_DIV_SKEW_FKL: {
                const float r = q > 0.0f ? expf(lq[i] - lm[i]) : 0.0f;
                v = (1.0f - c) * (q * b - pp * r);
                break;
            }
            case GKD_DIV_SKEW_RKL: {
                const float r = q > 0.0f ? expf(lq[i] - lm[i]) : 0.0f;
                v = xlog(q, lq[i], lm[i] + c * r + d - c * b);
                break;
            }
            default: break;
            }
        }
        store_f32(g, row * p.ld + j, gs * v);
    }
}

#define UNFUSED_KERNELS(T, SUF)                                                                                    \
    extern "C" __global__ void unfused_log_softmax_##SUF(const T *x, float *out, float *lse,                       \
                                                         gkd_divergence_params p) {                                \
        log_softmax<T>(x, out, lse, p);                                                                            \
    }                                                                                                              \
    extern "C" __global__ void unfused_grad_##SUF(const float *lq, const float *lp, const float *lm,               \
                                                  const float *sums, const unsigned char *mask,                   \
                                                  const float *lse_s, const float *lse_t, T *g,                   \
                                                  gkd_divergence_params p) {                                       \
        grad<T>(lq, lp, lm, sums, mask, lse_s, lse_t, g, p);                                                       \
    }

UNFUSED_KERNELS(float, f32)
UNFUSED_KERNELS(bf16, bf16)
