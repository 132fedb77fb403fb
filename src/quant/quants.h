/*
 * quants.h: the ggml tensor types moeq reads and writes.
 *
 * One traits table (name, ggml id, elements per block, bytes per block,
 * dequantize, quantize) drives every generic path: GGUF size checks, info,
 * dump, quantize and the engine's fallbacks. Block layouts live in
 * quants_blocks.h and are bit-identical to ggml's (each size is asserted).
 * Type ids are ggml's, because they are what GGUF files store.
 */
#ifndef MOEQ_QUANTS_H
#define MOEQ_QUANTS_H

#include <stddef.h>
#include <stdint.h>

enum moeq_type {
    MOEQ_TYPE_F32     = 0,
    MOEQ_TYPE_F16     = 1,
    MOEQ_TYPE_Q4_0    = 2,
    MOEQ_TYPE_Q8_0    = 8,
    MOEQ_TYPE_Q2_K    = 10,
    MOEQ_TYPE_Q3_K    = 11,
    MOEQ_TYPE_Q4_K    = 12,
    MOEQ_TYPE_Q5_K    = 13,
    MOEQ_TYPE_Q6_K    = 14,
    MOEQ_TYPE_Q8_K    = 15, /* activations only; never stored in a file we write */
    MOEQ_TYPE_IQ2_XXS = 16,
    MOEQ_TYPE_IQ2_XS  = 17,
    MOEQ_TYPE_IQ3_XXS = 18,
    MOEQ_TYPE_IQ4_NL  = 20,
    MOEQ_TYPE_IQ3_S   = 21,
    MOEQ_TYPE_IQ2_S   = 22,
    MOEQ_TYPE_IQ4_XS  = 23,
    MOEQ_TYPE_BF16    = 30,
    MOEQ_TYPE_COUNT   = 31  /* one past the largest id in the table */
};

/* Dequantize n values (a multiple of the block size) from src to dst. */
typedef void (*moeq_dequant_fn)(const void *src, float *dst, int64_t n);

/*
 * What the quantizers minimise. MOEQ_FIT_UNBIASED (the default) minimises
 * the importance-weighted squared error, then rescales each super-block of
 * the i-quants and of Q4_K so the decoded block is unbiased along the
 * weights: a little more error per tensor, but shrinkage no longer
 * compounds through chained experts, so the model's KL divergence is
 * lower. MOEQ_FIT_MIN_ERROR stops at the minimum weighted error (lowest
 * per-tensor RMSE).
 */
enum moeq_fit { MOEQ_FIT_UNBIASED = 0, MOEQ_FIT_MIN_ERROR = 1 };

/*
 * Hessian-aware rounding's hook (gptq.h). A quantizer that supports it
 * (the i-quants) chooses each super-block's scales as usual, then picks the
 * codes group by group in column order from its own copy x of the block's
 * targets, and after each group [j0, j0 + n) calls fn with the group's
 * decoded values q; fn moves the targets x[j0 + n ..] of the block's later
 * columns (the group's error pushed through H^-1). Others ignore it. With
 * fit set, the scales are chosen for those values instead of the block's
 * (a second pass fits them to the targets the first pass's feedback left);
 * the codes still start from the block's own values.
 */
struct moeq_quant_feedback {
    void (*fn)(void *ctx, int j0, int n, const float *q, float *x);
    void *ctx;
    const float *fit;   /* NULL: fit the scales to the block's values */
};

/* How a quantizer searches, given with every call (NULL: the defaults,
 * all fields zero). */
struct moeq_quant_params {
    int fit;   /* enum moeq_fit */
    const struct moeq_quant_feedback *fb;   /* NULL: none */
    int gptq_passes;   /* Hessian-aware rounding's tries per block (gptq.h; 0: MOEQ_GPTQ_PASSES) */
};

/*
 * Quantize nrows rows of n_per_row floats from src into dst (rows are
 * contiguous, each row_size bytes). imatrix is NULL or n_per_row importance
 * weights shared by every row; qp is NULL or the search parameters.
 * Returns bytes written.
 */
typedef size_t (*moeq_quant_fn)(const float *src, void *dst, int64_t nrows,
                                int64_t n_per_row, const float *imatrix,
                                const struct moeq_quant_params *qp);

struct moeq_type_traits {
    const char     *name;       /* ggml's name: "Q4_K", "IQ2_S", ... */
    int             type;       /* ggml type id */
    int             blck_size;  /* elements per block */
    size_t          type_size;  /* bytes per block */
    int             quantized;  /* 0 for F32/F16/BF16 */
    moeq_dequant_fn to_float;
    moeq_quant_fn   quantize;   /* NULL where moeq cannot produce the type */
};

/* Traits for a ggml type id, or NULL for an id moeq does not know. */
const struct moeq_type_traits *moeq_type_traits(int type);

/* Type id for a name ("q4_k" and "Q4_K" both work), or -1. */
int moeq_type_from_name(const char *name);

/* Name for an id, or "?" for an unknown one. */
const char *moeq_type_name(int type);

/*
 * Bytes of a row of n elements of type; 0 when the type is unknown or n is
 * not a multiple of the block size.
 */
size_t moeq_row_size(int type, int64_t n);

/*
 * Bytes of a tensor with element count nelem and row length ne0; returns 0
 * (and sets *ok = 0) on an unknown type, a row length not divisible by the
 * block size, or overflow.
 */
uint64_t moeq_tensor_nbytes(int type, uint64_t ne0, uint64_t nelem, int *ok);

/* Dequantize n values; returns -1 for a type with no dequantizer. */
int moeq_dequantize(int type, const void *src, float *dst, int64_t n);

/* IEEE half and bfloat16 conversions, round-to-nearest-even as ggml does. */
float    moeq_f16_to_f32(uint16_t h);
uint16_t moeq_f32_to_f16(float f);
float    moeq_bf16_to_f32(uint16_t h);
uint16_t moeq_f32_to_bf16(float f);

#endif
