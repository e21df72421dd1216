// Memory ops of the backend contract that move elements without arithmetic, so each kernel is
// written once per element size (entry points `<op>_b<bytes>`: 1 = u8, 2 = bf16/f16, 4 = f32/u32,
// 16 = a 16-byte pack of any of them, used when every row and pointer is 16-byte aligned):
//   copy_2d:      dst (rows, cols), row stride dst_ld ← src (rows, cols), row stride src_ld
//                 (narrow_cols forward: src points at column `start` of x (N, W), src_ld = W)
//   place_cols:   dst (rows, width) ← src (rows, len) at columns start..start+len, zero elsewhere
//                 (narrow_cols backward)
//   fill:         dst[i] = value (the value's bits, prepared on the host)
//   copy_rows:    dst row idx[i] ← src row i, rows of `width` (the key/value cache's append)
//   copy_strided: dst (d0, .., d5) row-major ← src[offset + Σ i_k·s_k] (contiguous() of a view)
// Rows are spread over blockIdx.y (a grid-stride loop), columns over x: no division per element.
#include "common.cuh"

struct alignas(16) pack16 {
    unsigned int w[4];
};

template <typename E>
__device__ void copy_2d(const E *__restrict__ src, long src_ld, E *__restrict__ dst, long dst_ld,
                        long rows, long cols) {
    for (long r = blockIdx.y; r < rows; r += gridDim.y)
        for (long c = (long)blockIdx.x * blockDim.x + threadIdx.x; c < cols; c += (long)gridDim.x * blockDim.x)
            dst[r * dst_ld + c] = src[r * src_ld + c];
}

template <typename E>
__device__ void place_cols(const E *__restrict__ src, // (rows, len)
                           E *__restrict__ dst,       // (rows, width)
                           long rows, long width, long start, long len) {
    for (long r = blockIdx.y; r < rows; r += gridDim.y)
        for (long c = (long)blockIdx.x * blockDim.x + threadIdx.x; c < width; c += (long)gridDim.x * blockDim.x)
            dst[r * width + c] = (c >= start && c < start + len) ? src[r * len + (c - start)] : E{};
}

template <typename E>
__device__ void fill(E *dst, E value, long n) {
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
        dst[i] = value;
}

// Row indices at or past `total` are skipped (the host checks them before the launch).
template <typename E>
__device__ void copy_rows(const unsigned int *__restrict__ idx, // (n)
                          const E *__restrict__ src,            // (n, width)
                          E *__restrict__ dst,                  // (total, width)
                          long n, long width, long total) {
    for (long i = blockIdx.y; i < n; i += gridDim.y) {
        const long r = idx[i];
        if (r >= total) continue;
        for (long c = (long)blockIdx.x * blockDim.x + threadIdx.x; c < width; c += (long)gridDim.x * blockDim.x)
            dst[r * width + c] = src[i * width + c];
    }
}

// dst is (d0, d1, d2, d3, d4, d5) row-major; `rows` = d0·d1·d2·d3·d4 outer rows of d5 elements. Each
// outer row's source offset is unravelled once; the last dimension walks src by s5.
template <typename E>
__device__ void copy_strided(const E *__restrict__ src, E *__restrict__ dst, long rows, long d1, long d2,
                             long d3, long d4, long d5, long s0, long s1, long s2, long s3, long s4,
                             long s5) {
    for (long r = blockIdx.y; r < rows; r += gridDim.y) {
        long rem = r;
        const long i4 = rem % d4;
        rem /= d4;
        const long i3 = rem % d3;
        rem /= d3;
        const long i2 = rem % d2;
        rem /= d2;
        const long i1 = rem % d1;
        const long i0 = rem / d1;
        const E *s = src + i0 * s0 + i1 * s1 + i2 * s2 + i3 * s3 + i4 * s4;
        E *d = dst + r * d5;
        for (long c = (long)blockIdx.x * blockDim.x + threadIdx.x; c < d5; c += (long)gridDim.x * blockDim.x)
            d[c] = s[c * s5];
    }
}

// ----------------------------------------------------------------------------------------------
// entry points, one per element size

#define COPY_KERNELS(E, SUF)                                                                       \
    extern "C" __global__ void copy_2d_##SUF(const E *src, long src_ld, E *dst, long dst_ld,       \
                                             long rows, long cols) {                               \
        copy_2d<E>(src, src_ld, dst, dst_ld, rows, cols);                                          \
    }                                                                                              \
    extern "C" __global__ void place_cols_##SUF(const E *src, E *dst, long rows, long width,       \
                                                long start, long len) {                            \
        place_cols<E>(src, dst, rows, width, start, len);                                          \
    }                                                                                              \
    extern "C" __global__ void copy_rows_##SUF(const unsigned int *idx, const E *src, E *dst,      \
                                               long n, long width, long total) {                   \
        copy_rows<E>(idx, src, dst, n, width, total);                                              \
    }

#define ELEMENT_KERNELS(E, SUF)                                                                    \
    COPY_KERNELS(E, SUF)                                                                           \
    extern "C" __global__ void fill_##SUF(E *dst, E value, long n) { fill<E>(dst, value, n); }     \
    extern "C" __global__ void copy_strided_##SUF(const E *src, E *dst, long rows, long d1,        \
                                                  long d2, long d3, long d4, long d5, long s0,     \
                                                  long s1, long s2, long s3, long s4, long s5) {   \
        copy_strided<E>(src, dst, rows, d1, d2, d3, d4, d5, s0, s1, s2, s3, s4, s5);               \
    }

ELEMENT_KERNELS(unsigned char, b1)
ELEMENT_KERNELS(unsigned short, b2)
ELEMENT_KERNELS(unsigned int, b4)
COPY_KERNELS(pack16, b16)
