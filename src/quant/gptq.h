/*
 * gptq.h: Hessian-aware rounding (GPTQ / optimal brain quantization) inside
 * the ggml block formats.
 *
 * The error that reaches a layer's output is ||(W - Q) X||^2 = sum over
 * rows of e H e^T with H = X^T X the full second moment of the layer's
 * input, not only its diagonal (the importance matrix). GPTQ quantizes the
 * input columns in order and pushes each column's rounding error onto the
 * columns not yet quantized through the upper Cholesky factor U of H^-1, so
 * later blocks compensate for earlier ones. Each block (32 or 256 columns)
 * of every row is quantized by the type's own quantizer (importance: H's
 * diagonal over the block) from the weights as updated so far. Inside a
 * block the i-quants choose their scales as usual and then the codes of
 * each 8-weight group in order, the feedback hook (quants.h) moving the
 * later groups' targets; the K-quants and IQ4_XS re-pick each column's
 * code that way at their scales, and the 32-weight formats (Q8_0, Q4_0,
 * IQ4_NL) quantize the block at once.
 * A block is tried a few times (MOEQ_GPTQ_PASSES), its scales refitted to
 * where the last try's feedback moved the targets, and the try with the
 * lowest output error is kept. Its decoded values are then taken as fixed
 * and the error is propagated column by column, within the block and then,
 * in one matrix product, to every later column. The bytes
 * are the type's ordinary blocks, so files stay readable by llama.cpp.
 *
 * Pure computation on caller memory; no threads, no I/O.
 */
#ifndef MOEQ_GPTQ_H
#define MOEQ_GPTQ_H

#include <stddef.h>
#include <stdint.h>

#include "quant/quants.h"

/*
 * Default damping, a fraction of H's mean diagonal. GPTQ's usual 0.01 is
 * for Hessians from many tokens; on tiny-a (asym-2bitexp, H from 128 x 512
 * calibration tokens, 20 chunks of wiki.test.raw) mean KLD was 0.006065
 * without GPTQ and 0.005370, 0.005291, 0.005619, 0.005912 at damping 0.1,
 * 0.3, 1, 3 (16 x 512 tokens: 0.01 was worse than none), so 0.3; with
 * the K-quants' in-block re-picking too: 0.005472, 0.004942, 0.004839,
 * 0.005360 at 0.03, 0.1, 0.3, 1 (Q4_K_M: 0.002664, 0.002519, 0.002572,
 * 0.002570).
 */
#define MOEQ_GPTQ_DAMP 0.3

/*
 * Tries per block (struct moeq_quant_params' gptq_passes). The first
 * chooses the scales for the block's values as today's quantizer does, the
 * codes with the error feedback; each later one chooses them for the targets
 * the previous try's feedback left (what its codes approximated), the codes
 * again from the block's values, and the try with the lowest output error
 * (the sum of its scaled errors' squares) is kept, so a try never adds
 * error. On tiny-a (H from the unquantized model, 100 chunks of
 * wiki.test.raw) mean KLD for 1, 2, 3, 4 and 6 tries: Q4_K_M 0.002310,
 * 0.002303, 0.002217, 0.002210, 0.002224; asym-2bitexp 0.004666,
 * 0.004529, 0.004342 at 1, 2 and 3.
 */
#define MOEQ_GPTQ_PASSES 4

/* The factorisation of one matrix's Hessian, shared by every row (rows are
 * independent in GPTQ, so threads may quantize row ranges concurrently). */
typedef struct moeq_gptq moeq_gptq;

/* Factor H (n x n, as below); NULL with err set. */
moeq_gptq *moeq_gptq_prepare(const double *H, int64_t n, double damp, char *err, size_t errlen);
void moeq_gptq_free(moeq_gptq *g);
/* Quantize nrows rows of W (n floats each, not modified) to type into dst;
 * thread-safe on one g. 0, or -1 with err set. */
int moeq_gptq_rows(const moeq_gptq *g, int type, const float *W, int64_t nrows, void *dst,
                   const struct moeq_quant_params *qp, char *err, size_t errlen);

/*
 * Quantize W (nrows x ncols floats, row-major) to type into dst (nrows rows
 * of the type's row size) using H (ncols x ncols, row-major, symmetric,
 * the sum of x^T x over the inputs). damp (e.g. 0.01) is added to the
 * diagonal as a fraction of its mean; a matrix that is still not positive
 * definite gets ten times more, a few times. Columns whose H diagonal is 0
 * (never active) are quantized as they are and pass no error on. 0, or -1
 * with err set (out of memory, a type without a quantizer, ncols not a
 * multiple of the block).
 */
int moeq_gptq_quantize(int type, const float *W, int64_t nrows, int64_t ncols, const double *H, double damp,
                       void *dst, const struct moeq_quant_params *qp, char *err, size_t errlen);

/* The output error sum over rows of (W - Q) H (W - Q)^T, Q = dequantized
 * rows of q (type); for tests and reports. -1 on out of memory. */
double moeq_gptq_output_error(int type, const float *W, const void *q, int64_t nrows, int64_t ncols,
                              const double *H);

#endif
