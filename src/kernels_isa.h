/*
 * kernels_isa.h: the contract between kernels.c (dispatch, scalar
 * reference, gemm driver) and the per-ISA files kernels_avx2.c and
 * kernels_avx512.c. Internal to the kernels; nothing else includes it.
 *
 * Each ISA file exports two lookups. A "row kernel" computes one weight row
 * against up to MOEQ_GEMM_NC activation columns, so that the expensive part
 * of a quantized dot product (unpacking codebooks, nibbles and scales of the
 * weight blocks) is paid once per row and reused for every column. vec_dot
 * is the same kernel with one column. The lookups are declared weak: a build
 * that leaves an ISA file out (the fuzz harness does) still links, and the
 * dispatcher treats a missing file like a type without a SIMD kernel.
 */
#ifndef MOEQ_KERNELS_ISA_H
#define MOEQ_KERNELS_ISA_H

#include "kernels.h"

/* Columns one row-kernel call handles at most. */
#define MOEQ_GEMM_NC 8

/* s[c * s_stride] = dot(w, a + c * a_stride) for c in [0, nc), nc in 1..MOEQ_GEMM_NC. */
typedef void (*moeq_row_fn)(int64_t n, const void *w, const void *a, size_t a_stride,
                            int nc, float *s, size_t s_stride);

moeq_vec_dot_fn moeq_avx2_vec_dot(int wtype) __attribute__((weak));
moeq_row_fn     moeq_avx2_row(int wtype) __attribute__((weak));
moeq_vec_dot_fn moeq_avx512_vec_dot(int wtype) __attribute__((weak));
moeq_row_fn     moeq_avx512_row(int wtype) __attribute__((weak));

#endif
