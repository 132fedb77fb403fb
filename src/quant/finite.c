/*
 * finite.c: the scan for values that are not numbers (see finite.h).
 *
 * A quantized block decodes to y = d * (small integer) [- dmin * (small
 * integer)], the integers being quants, sub-block scales or i-quant grid
 * entries, all bounded (|y| stays below 1e8 for the largest f16 scales).
 * So a block holds a NaN or an infinity exactly when one of its f16 scales
 * d, dmin is one (a non-finite scale times 0 is NaN too): the scan reads
 * those two bytes per block and decodes only a bad block, to give the
 * element. Types without a known scale layout are decoded in full.
 */
#include "quant/finite.h"

#include "quant/quants.h"
#include "quant/quants_blocks.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

int64_t moeq_first_nonfinite_f32(const float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return i;
    return -1;
}

/* Byte offsets of the f16 scales in a block: d, dmin (-1 when none). */
static int scale_offsets(int type, int *d, int *dmin)
{
    *dmin = -1;
    switch (type) {
    case MOEQ_TYPE_Q4_0:    *d = (int)offsetof(block_q4_0, d); return 0;
    case MOEQ_TYPE_Q8_0:    *d = (int)offsetof(block_q8_0, d); return 0;
    case MOEQ_TYPE_Q2_K:    *d = (int)offsetof(block_q2_K, d); *dmin = (int)offsetof(block_q2_K, dmin); return 0;
    case MOEQ_TYPE_Q3_K:    *d = (int)offsetof(block_q3_K, d); return 0;
    case MOEQ_TYPE_Q4_K:    *d = (int)offsetof(block_q4_K, d); *dmin = (int)offsetof(block_q4_K, dmin); return 0;
    case MOEQ_TYPE_Q5_K:    *d = (int)offsetof(block_q5_K, d); *dmin = (int)offsetof(block_q5_K, dmin); return 0;
    case MOEQ_TYPE_Q6_K:    *d = (int)offsetof(block_q6_K, d); return 0;
    case MOEQ_TYPE_IQ2_XXS: *d = (int)offsetof(block_iq2_xxs, d); return 0;
    case MOEQ_TYPE_IQ2_XS:  *d = (int)offsetof(block_iq2_xs, d); return 0;
    case MOEQ_TYPE_IQ2_S:   *d = (int)offsetof(block_iq2_s, d); return 0;
    case MOEQ_TYPE_IQ3_XXS: *d = (int)offsetof(block_iq3_xxs, d); return 0;
    case MOEQ_TYPE_IQ3_S:   *d = (int)offsetof(block_iq3_s, d); return 0;
    case MOEQ_TYPE_IQ4_NL:  *d = (int)offsetof(block_iq4_nl, d); return 0;
    case MOEQ_TYPE_IQ4_XS:  *d = (int)offsetof(block_iq4_xs, d); return 0;
    default: return -1;
    }
}

static int half_nonfinite(const uint8_t *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    return (h & 0x7c00) == 0x7c00;
}

/* The first bad element of one decoded block (bs <= QK_K elements). */
static int64_t bad_in_block(const struct moeq_type_traits *tt, const uint8_t *blk, float *value)
{
    float y[QK_K];
    tt->to_float(blk, y, tt->blck_size);
    int64_t j = moeq_first_nonfinite_f32(y, tt->blck_size);
    if (j < 0) j = 0; /* cannot happen (see above); point at the block */
    if (value) *value = y[j];
    return j;
}

int64_t moeq_first_nonfinite(int type, const void *data, int64_t n, float *value)
{
    const struct moeq_type_traits *tt = moeq_type_traits(type);
    if (!tt || !tt->to_float || n < 0 || n % tt->blck_size) return -2;
    const uint8_t *p = data;
    if (type == MOEQ_TYPE_F32) {
        for (int64_t i = 0; i < n; i++) {
            float v;
            memcpy(&v, p + 4 * i, 4); /* a GGUF F32 tensor need not be aligned for us */
            if (!isfinite(v)) { if (value) *value = v; return i; }
        }
        return -1;
    }
    if (type == MOEQ_TYPE_F16 || type == MOEQ_TYPE_BF16) {
        const uint16_t mask = type == MOEQ_TYPE_F16 ? 0x7c00 : 0x7f80;
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            if ((h & mask) == mask) {
                if (value) *value = type == MOEQ_TYPE_F16 ? moeq_f16_to_f32(h) : moeq_bf16_to_f32(h);
                return i;
            }
        }
        return -1;
    }
    const int64_t nb = n / tt->blck_size;
    int od, om;
    if (scale_offsets(type, &od, &om) == 0) {
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *blk = p + (size_t)b * tt->type_size;
            if (half_nonfinite(blk + od) || (om >= 0 && half_nonfinite(blk + om)))
                return b * tt->blck_size + bad_in_block(tt, blk, value);
        }
        return -1;
    }
    /* no known scale layout: decode every block */
    float y[QK_K];
    if (tt->blck_size > QK_K) return -2;
    for (int64_t b = 0; b < nb; b++) {
        tt->to_float(p + (size_t)b * tt->type_size, y, tt->blck_size);
        int64_t j = moeq_first_nonfinite_f32(y, tt->blck_size);
        if (j >= 0) { if (value) *value = y[j]; return b * tt->blck_size + j; }
    }
    return -1;
}

int moeq_tensor_check_finite(const gguf_tensor *t, char *err, size_t errlen)
{
    const uint64_t nel = t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
    float v = 0;
    int64_t i = moeq_first_nonfinite((int)t->type, t->data, (int64_t)nel, &v);
    if (i == -1) return 0;
    if (i == -2) {
        snprintf(err, errlen, "tensor %.*s: type %s cannot be checked for values that are not numbers",
                 (int)t->name.n, t->name.s, moeq_type_name((int)t->type));
        return -1;
    }
    const uint64_t u = (uint64_t)i, ne0 = t->ne[0], ne1 = t->ne[1];
    char where[96] = ""; /* a vector's element needs no row and column */
    if (t->n_dims >= 3)
        snprintf(where, sizeof where, " (row %llu, column %llu, expert %llu)", (unsigned long long)(u / ne0 % ne1),
                 (unsigned long long)(u % ne0), (unsigned long long)(u / ne0 / ne1));
    else if (t->n_dims == 2)
        snprintf(where, sizeof where, " (row %llu, column %llu)", (unsigned long long)(u / ne0),
                 (unsigned long long)(u % ne0));
    snprintf(err, errlen, "tensor %.*s: element %llu%s is %s", (int)t->name.n, t->name.s,
             (unsigned long long)u, where, isnan(v) ? "nan" : v > 0 ? "inf" : "-inf");
    return -1;
}
