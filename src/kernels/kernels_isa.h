/*
 * kernels_isa.h: the contract between kernels.c (dispatch, scalar
 * reference, gemm driver) and the per-ISA files kernels_avx2.c and
 * kernels_avx512.c. Internal to the kernels; nothing else includes it.
 *
 * Each ISA file exports one table (struct moeq_isa_kernels): a row per
 * weight type, indexed by the type id, with that type's kernels at that
 * ISA, and the ISA's activation quantizers. kernels.c holds the scalar
 * table of the same shape and the activation format of each type, and
 * resolves every (ISA, type) pair once into the row gemm uses. Adding a
 * type means a line in each table, nothing else. The tables are declared
 * weak: a build that leaves an ISA file out (the fuzz harness does) still
 * links, and the dispatcher treats a missing table like an ISA the CPU
 * lacks. The attention kernels (kernels_attn.c) pick from the same tables.
 */
#ifndef MOEQ_KERNELS_ISA_H
#define MOEQ_KERNELS_ISA_H

#include "kernels/kernels.h"
#include "quant/quants.h"

/* Columns a row kernel keeps in registers at once. */
#define MOEQ_GEMM_NC 16

/* A "row kernel" computes one weight row against a panel of activation
 * columns, so that the expensive part of a quantized dot product
 * (unpacking codebooks, nibbles and scales of the weight blocks) is paid
 * once per row and reused for every column:
 * s[c * s_stride] = dot(w, a + c * a_stride) for c in [0, nc), any nc >= 1;
 * the kernel walks the columns in groups it chooses. */
typedef void (*moeq_row_fn)(int64_t n, const void *w, const void *a, size_t a_stride,
                            int nc, float *s, size_t s_stride);

/* s[r] = dot(w + r * w_stride, a) for r in [0, nr): the decode shape (one
 * column), where fixed costs per row matter. */
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

/* One weight type's kernels at one ISA; NULL where the ISA has none (a
 * missing dot means the scalar one, a missing row the dot loop, a missing
 * rows or tile the row kernel). The activation format is the type's, the
 * same at every ISA: moeq_act_type. */
struct moeq_type_kernels {
    moeq_vec_dot_fn dot;    /* one row, one column */
    moeq_row_fn     row;    /* one row, many columns */
    moeq_rows_fn    rows;   /* many rows, one column (decode) */
    moeq_tile_fn    tile;   /* many rows, many columns (prompt batches) */
};

/* The most Q8_0 blocks per head the SIMD scores_q8 takes (d up to 512);
 * longer heads take the scalar one, which gives the same bits. */
#define ATTN_Q8_MAXB 16

/* An ISA's attention kernels for one KV cache type (struct moeq_attn_ops
 * in kernels.h has the signatures), and its exp and SwiGLU product. */
struct moeq_attn_simd {
    struct {
        void (*cvt)(const uint8_t *src, size_t stride, int n, int d, float *dst, float *scales);
        void (*scores)(const float *const *q, int nr, const float *k, const float *kscales,
                       int np, int d, float scale, float *sc, size_t ld);
        void (*accum)(float *const *out, int nr, const float *w, size_t ld, const float *v,
                      const float *vscales, int np, int d);
    } f16, q8_0;
    /* for heads of up to ATTN_Q8_MAXB Q8_0 blocks */
    void (*scores_q8)(const void *const *q, int nr, const uint8_t *k, size_t stride, int np, int d,
                      float scale, float *sc, size_t ld);
    void (*exp_shift)(float *x, int n, float m);
    void (*silu_mul)(float *g, const float *u, size_t n);
};

/* Everything an ISA file exports. */
struct moeq_isa_kernels {
    struct moeq_type_kernels type[MOEQ_TYPE_COUNT];
    moeq_actq_fn actq_q8_0, actq_q8_K;   /* NULL: the scalar quantizer */
    const struct moeq_attn_simd *attn;   /* NULL: the scalar kernels_attn.c */
};

/* The table of isa if its file is linked in and the CPU runs it, else NULL
 * (the scalar table for MOEQ_ISA_SCALAR). */
const struct moeq_isa_kernels *moeq_isa_kernels_of(int isa);

extern const struct moeq_isa_kernels moeq_kernels_avx2 __attribute__((weak));
extern const struct moeq_isa_kernels moeq_kernels_avx512 __attribute__((weak));

#endif
