/*
 * kernels_isa.h: the contract between kernels.c (dispatch, scalar
 * reference, gemm driver) and the per-ISA files kernels_avx2.c and
 * kernels_avx512.c. Internal to the kernels; nothing else includes it.
 *
 * Each ISA file exports two lookups. A "row kernel" computes one weight row
 * against a panel of activation columns, so that the expensive part
 * of a quantized dot product (unpacking codebooks, nibbles and scales of the
 * weight blocks) is paid once per row and reused for every column. vec_dot
 * is the same kernel with one column. The lookups are declared weak: a build
 * that leaves an ISA file out (the fuzz harness does) still links, and the
 * dispatcher treats a missing file like a type without a SIMD kernel.
 */
#ifndef MOEQ_KERNELS_ISA_H
#define MOEQ_KERNELS_ISA_H

#include "kernels.h"

/* Columns a row kernel keeps in registers at once. */
#define MOEQ_GEMM_NC 16

/* s[c * s_stride] = dot(w, a + c * a_stride) for c in [0, nc), any nc >= 1:
 * the kernel walks the columns in groups it chooses. */
typedef void (*moeq_row_fn)(int64_t n, const void *w, const void *a, size_t a_stride,
                            int nc, float *s, size_t s_stride);

/* s[r] = dot(w + r * w_stride, a) for r in [0, nr): the decode shape (one
 * column), where fixed costs per row matter. Optional per type. */
typedef void (*moeq_rows_fn)(int64_t n, const void *w, size_t w_stride, int64_t nr,
                             const void *a, float *s);

/* out[c * os + r] for a whole gemm call (rows [0, nr), columns [0, nc)),
 * for many columns at once; returns 0, having done nothing, for shapes it
 * does not take. Results equal the row kernels' bit for bit. */
typedef int (*moeq_tile_fn)(int64_t K, const void *w, size_t w_stride, int64_t nr,
                            const void *a, size_t a_stride, int64_t nc, float *out, size_t os);

/* Quantize n floats into an activation format (MOEQ_TYPE_Q8_K or _Q8_0),
 * bit-identical to the scalar code in kernels.c. */
typedef void (*moeq_actq_fn)(const float *x, void *y, int64_t n);

moeq_vec_dot_fn moeq_avx2_vec_dot(int wtype) __attribute__((weak));
moeq_row_fn     moeq_avx2_row(int wtype) __attribute__((weak));
moeq_vec_dot_fn moeq_avx512_vec_dot(int wtype) __attribute__((weak));
moeq_row_fn     moeq_avx512_row(int wtype) __attribute__((weak));
moeq_rows_fn    moeq_avx512_rows(int wtype) __attribute__((weak));
moeq_actq_fn    moeq_avx512_actq(int act_type) __attribute__((weak));
moeq_tile_fn    moeq_avx512_tile(int wtype) __attribute__((weak));

#endif
