/*
 * kernels.h: dot products and matmuls directly on quantized weights.
 *
 * Activations are quantized once per row to the weight type's partner
 * format (Q8_K for K- and i-quants, Q8_0 for Q4_0/Q8_0/IQ4_NL, plain f32 for
 * F32/F16/BF16 weights) and the kernels work on integer dot products as ggml
 * does. Every type has a scalar reference kernel (kernels.c) and AVX2 /
 * AVX-512 twins (kernels_avx2.c, kernels_avx512.c) tested against it; the
 * best one for this CPU is chosen at run time. The attention kernels and
 * the SwiGLU product the engine runs are here too. A kernel knows nothing
 * of GGUF or models.
 */
#ifndef MOEQ_KERNELS_H
#define MOEQ_KERNELS_H

#include <stddef.h>
#include <stdint.h>

enum moeq_isa { MOEQ_ISA_SCALAR = 0, MOEQ_ISA_AVX2 = 1, MOEQ_ISA_AVX512 = 2, MOEQ_ISA_COUNT };

/* Best ISA this CPU and build support (MOEQ_ISA env var can lower it). */
int         moeq_isa_best(void);
const char *moeq_isa_name(int isa);

/* Activation format for weights of wtype: MOEQ_TYPE_Q8_K, _Q8_0 or _F32. */
int    moeq_act_type(int wtype);
/* Bytes of one activation row of n elements for wtype. */
size_t moeq_act_row_size(int wtype, int64_t n);
/* Quantize n floats into wtype's activation format (same bytes at every ISA);
 * MOEQ_TYPE_Q8_0's is also the KV cache's Q8_0 and the query rows' for
 * scores_q8. */
void   moeq_quantize_act(int wtype, const float *x, void *y, int64_t n);
/* The same with a given ISA's code (scalar where it has none): for tests. */
void   moeq_quantize_act_isa(int isa, int wtype, const float *x, void *y, int64_t n);

/* s = dot(weight row w of n elements, activation row a). */
typedef void (*moeq_vec_dot_fn)(int64_t n, float *s, const void *w, const void *a);

/* Kernel for wtype at the best ISA, or at a given ISA (NULL if unsupported
 * by the CPU or not written for that ISA: callers fall back to scalar). */
moeq_vec_dot_fn moeq_vec_dot(int wtype);
moeq_vec_dot_fn moeq_vec_dot_isa(int wtype, int isa);

/*
 * out[c * out_stride + r] = dot(W row r, A row c) for r in [0, n_rows),
 * c in [0, n_cols): W rows of type wtype, K elements each, w_stride bytes
 * apart; A rows in wtype's activation format, a_stride bytes apart. The
 * tiled kernel reads each weight row once for all columns. A column's
 * result is bit-identical whatever n_cols is (at a given ISA), so batching
 * sessions or tokens never changes logits.
 */
void moeq_gemm(int wtype, int64_t K,
               const void *W, size_t w_stride, int64_t n_rows,
               const void *A, size_t a_stride, int64_t n_cols,
               float *out, size_t out_stride);

/* moeq_gemm with the kernels of a given ISA (scalar where that ISA has none,
 * or where the CPU lacks it): for tests and benchmarks. */
void moeq_gemm_isa(int isa, int wtype, int64_t K,
                   const void *W, size_t w_stride, int64_t n_rows,
                   const void *A, size_t a_stride, int64_t n_cols,
                   float *out, size_t out_stride);

/*
 * Attention over a KV cache (kernels_attn.c). Converters take n cached
 * rows (one KV head each, stride bytes apart) to f32 rows of d values;
 * Q8_0 leaves the int8 values as floats (exact) and the block scales in
 * scales (d / 32 per row), so the kernels apply the scale where the per-row
 * arithmetic always did. Scores: sc[r * ld + p] = scale * q[r] . k[p] for
 * nr rows and np positions. Accumulation: out[r] += sum over p < np of
 * w[r * ld + p] * v[p], in position order. exp_shift: x = exp(x - m), in
 * place.
 *
 * scores_q8 (Q8_0 K only; NULL for F16 K, and scores is NULL for Q8_0 K)
 * replaces cvt_k and scores: the query rows come quantized to Q8_0 blocks
 * (moeq_quantize_act's Q8_0, as the cache's K rows are) and each score is
 * computed straight from the np cached rows stride bytes apart, the block
 * dot products in exact integers (int8 dot products) and then, over the
 * blocks in order, acc = fma((float)S_j, dq_j * dk_j, acc), score = acc *
 * scale: the same bits on every ISA, the scalar one included.
 */
struct moeq_attn_ops {
    void (*cvt_k)(const uint8_t *src, size_t stride, int n, int d, float *dst, float *scales);
    void (*cvt_v)(const uint8_t *src, size_t stride, int n, int d, float *dst, float *scales);
    void (*scores)(const float *const *q, int nr, const float *k, const float *kscales, int np,
                   int d, float scale, float *sc, size_t ld);
    void (*accum)(float *const *out, int nr, const float *w, size_t ld, const float *v,
                  const float *vscales, int np, int d);
    void (*scores_q8)(const void *const *q, int nr, const uint8_t *k, size_t stride, int np, int d,
                      float scale, float *sc, size_t ld);
    void (*exp_shift)(float *x, int n, float m);
};


/* The attention kernels for cache types type_k and type_v (MOEQ_TYPE_F16
 * or _Q8_0) and head size d, at isa or the CPU's best if that is lower. */
void moeq_attn_pick(int isa, int type_k, int type_v, int d, struct moeq_attn_ops *o);

/* g[i] = silu(g[i]) * u[i], at the best ISA (the same bits wherever a
 * value sits in the row). */
void moeq_silu_mul(float *g, const float *u, size_t n);

#endif
