// Tensor-core matrix products shared by the attention kernels (attention.cu, decode_attention.cu).
// Header-free like common.cuh (NVRTC compiles it too); sm_80+ (the kernels' targets).
#ifndef GKD_MMA_CUH
#define GKD_MMA_CUH

#include "common.cuh"

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32: D (16×8) = A (16×16) · B (16×8) + C.
// With lane = threadIdx.x % 32, gid = lane / 4 (groupID), tig = lane % 4 (thread in group), the
// fragments (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type"):
//   A: four .b32 registers a[0..3], each two bf16 (the lower-indexed element in the low half):
//      a[0] = A[gid][2·tig .. 2·tig+1]       a[1] = A[gid+8][2·tig .. 2·tig+1]
//      a[2] = A[gid][2·tig+8 .. 2·tig+9]     a[3] = A[gid+8][2·tig+8 .. 2·tig+9]
//   B: two .b32 registers b[0..1] (column-major: pairs run along k):
//      b[0] = B[2·tig .. 2·tig+1][gid]       b[1] = B[2·tig+8 .. 2·tig+9][gid]
//   C, D: four f32 c[0..3]:
//      c[0] = C[gid][2·tig]  c[1] = C[gid][2·tig+1]  c[2] = C[gid+8][2·tig]  c[3] = C[gid+8][2·tig+1]

#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define GKD_HAS_MMA 1
#else
#define GKD_HAS_MMA 0
#endif

// c += A · B, the fragments above.
__device__ __forceinline__ void mma_bf16(float c[4], const unsigned a[4], unsigned b0, unsigned b1) {
#if GKD_HAS_MMA
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
                 "{%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

#endif
