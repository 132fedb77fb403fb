/*
 * finite.h: finding values that are not numbers (NaN, +Inf, -Inf) in
 * tensors of any type moeq reads, and naming where the first one lies.
 *
 * One scan serves every place that must refuse such values: `moeq info
 * --check` (every tensor), quantize (each source tensor before it is
 * converted: a NaN would otherwise become all-zero blocks), the engine at
 * open (the small tensors it touches) and the tools that check logits.
 */
#ifndef MOEQ_FINITE_H
#define MOEQ_FINITE_H

#include <stddef.h>
#include <stdint.h>

#include "gguf/gguf.h"

/* Index of the first value of x[0..n) that is not finite, or -1. */
int64_t moeq_first_nonfinite_f32(const float *x, int64_t n);

/*
 * Index of the first element that is not finite among n elements (a
 * multiple of the block size) of ggml type `type` at data, or -1 when all
 * are finite, -2 for a type moeq cannot decode. *value (when not NULL)
 * receives the bad value. F32, F16 and BF16 are read directly; quantized
 * blocks through their f16 scales only (see finite.c), which is as exact
 * as decoding them and reads a few bytes per block.
 */
int64_t moeq_first_nonfinite(int type, const void *data, int64_t n, float *value);

/*
 * Check every value of tensor t. Returns 0 when all are numbers; else -1
 * with err set to "tensor NAME: element I (row R, column C[, expert X])
 * is nan" (the caller puts the file in front).
 */
int moeq_tensor_check_finite(const gguf_tensor *t, char *err, size_t errlen);

#endif
