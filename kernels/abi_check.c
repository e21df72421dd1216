// Sizes and offsets of the structs in abi.h, as the C compiler lays them out. Read by
// src/backend/cuda/abi.rs, which compares them with the Rust mirrors.
#include <stddef.h>
#include "abi.h"

typedef struct {
    const char *name;
    unsigned long long value;
} gkd_abi_entry;

#define SIZE(T) {#T ".size", sizeof(T)}, {#T ".align", _Alignof(T)}
#define FIELD(T, f) {#T "." #f, offsetof(T, f)}

const gkd_abi_entry gkd_abi_layout[] = {
    SIZE(gkd_norm_params),
    FIELD(gkd_norm_params, rows),
    FIELD(gkd_norm_params, cols),
    FIELD(gkd_norm_params, eps),
    SIZE(gkd_norm_wgrad_params),
    FIELD(gkd_norm_wgrad_params, rows),
    FIELD(gkd_norm_wgrad_params, cols),
    FIELD(gkd_norm_wgrad_params, row_chunks),
    FIELD(gkd_norm_wgrad_params, rows_per_chunk),
    SIZE(gkd_divergence_params),
    FIELD(gkd_divergence_params, ld),
    FIELD(gkd_divergence_params, rows),
    FIELD(gkd_divergence_params, vocab),
    FIELD(gkd_divergence_params, kind),
    FIELD(gkd_divergence_params, coef),
    FIELD(gkd_divergence_params, inv_temp),
    FIELD(gkd_divergence_params, scale),
    FIELD(gkd_divergence_params, ctas),
    FIELD(gkd_divergence_params, chunk),
    FIELD(gkd_divergence_params, flags),
    {"GKD_DIV_FKL", GKD_DIV_FKL},
    {"GKD_DIV_RKL", GKD_DIV_RKL},
    {"GKD_DIV_JSD", GKD_DIV_JSD},
    {"GKD_DIV_TVD", GKD_DIV_TVD},
    {"GKD_DIV_SKEW_FKL", GKD_DIV_SKEW_FKL},
    {"GKD_DIV_SKEW_RKL", GKD_DIV_SKEW_RKL},
    {"GKD_DIV_PREFETCH_L2", GKD_DIV_PREFETCH_L2},
};

const unsigned long long gkd_abi_layout_len = sizeof(gkd_abi_layout) / sizeof(gkd_abi_layout[0]);
