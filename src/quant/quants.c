/*
 * quants.c: the type traits table and the scalar conversions every format
 * shares (IEEE half, bfloat16). Per-format block code lives in
 * quants_dequant.c (decoding) and quants_k.c / quants_iq.c (encoding).
 */
#include "quant/quants.h"
#include "quant/quants_blocks.h"

#include <ctype.h>
#include <math.h>
#include <string.h>

#define ROW(T, n, blk, sz, q, deq, quant) \
    [MOEQ_TYPE_##T] = { n, MOEQ_TYPE_##T, blk, sz, q, deq, quant }

static const struct moeq_type_traits traits[MOEQ_TYPE_COUNT] = {
    ROW(F32,     "F32",     1,    4,                     0, dequantize_row_f32, NULL),
    ROW(F16,     "F16",     1,    2,                     0, dequantize_row_f16, quantize_f16),
    ROW(BF16,    "BF16",    1,    2,                     0, dequantize_row_bf16, quantize_bf16),
    ROW(Q4_0,    "Q4_0",    QK4_0, sizeof(block_q4_0),   1, dequantize_row_q4_0, quantize_q4_0),
    ROW(Q8_0,    "Q8_0",    QK8_0, sizeof(block_q8_0),   1, dequantize_row_q8_0, quantize_q8_0),
    ROW(Q2_K,    "Q2_K",    QK_K, sizeof(block_q2_K),    1, dequantize_row_q2_K, quantize_q2_K),
    ROW(Q3_K,    "Q3_K",    QK_K, sizeof(block_q3_K),    1, dequantize_row_q3_K, quantize_q3_K),
    ROW(Q4_K,    "Q4_K",    QK_K, sizeof(block_q4_K),    1, dequantize_row_q4_K, quantize_q4_K),
    ROW(Q5_K,    "Q5_K",    QK_K, sizeof(block_q5_K),    1, dequantize_row_q5_K, quantize_q5_K),
    ROW(Q6_K,    "Q6_K",    QK_K, sizeof(block_q6_K),    1, dequantize_row_q6_K, quantize_q6_K),
    ROW(Q8_K,    "Q8_K",    QK_K, sizeof(block_q8_K),    1, dequantize_row_q8_K, NULL),
    ROW(IQ2_XXS, "IQ2_XXS", QK_K, sizeof(block_iq2_xxs), 1, dequantize_row_iq2_xxs, quantize_iq2_xxs),
    ROW(IQ2_XS,  "IQ2_XS",  QK_K, sizeof(block_iq2_xs),  1, dequantize_row_iq2_xs, quantize_iq2_xs),
    ROW(IQ2_S,   "IQ2_S",   QK_K, sizeof(block_iq2_s),   1, dequantize_row_iq2_s, quantize_iq2_s),
    ROW(IQ3_XXS, "IQ3_XXS", QK_K, sizeof(block_iq3_xxs), 1, dequantize_row_iq3_xxs, quantize_iq3_xxs),
    ROW(IQ3_S,   "IQ3_S",   QK_K, sizeof(block_iq3_s),   1, dequantize_row_iq3_s, quantize_iq3_s),
    ROW(IQ4_NL,  "IQ4_NL",  QK4_NL, sizeof(block_iq4_nl), 1, dequantize_row_iq4_nl, quantize_iq4_nl),
    ROW(IQ4_XS,  "IQ4_XS",  QK_K, sizeof(block_iq4_xs),  1, dequantize_row_iq4_xs, quantize_iq4_xs),
};

int moeq_quant_unbiased(const struct moeq_quant_params *qp)
{
    return !qp || qp->fit != MOEQ_FIT_MIN_ERROR;
}

double moeq_unbias_factor(int type, const void *blk, const float *x, const float *qw)
{
    float y[QK_K];
    if (moeq_dequantize(type, blk, y, QK_K) != 0) return 0;
    double sxx = 0, sxy = 0;
    for (int i = 0; i < QK_K; i++) {
        const double wi = qw && qw[i] >= 0 && isfinite(qw[i]) ? qw[i] : 1.0;
        sxx += wi * x[i] * x[i];
        sxy += wi * x[i] * y[i];
    }
    if (!(sxx > 0) || !(sxy > 0) || !isfinite(sxx) || !isfinite(sxy)) return 0;
    const double f = sxx / sxy;
    return f < 0.8 || f > 1.25 ? 0 : f;
}

const struct moeq_type_traits *moeq_type_traits(int type)
{
    if (type < 0 || type >= MOEQ_TYPE_COUNT || traits[type].name == NULL)
        return NULL;
    return &traits[type];
}

int moeq_type_from_name(const char *name)
{
    if (!name) return -1;
    for (int t = 0; t < MOEQ_TYPE_COUNT; t++) {
        if (!traits[t].name) continue;
        const char *a = traits[t].name, *b = name;
        while (*a && *b && toupper((unsigned char)*a) == toupper((unsigned char)*b)) a++, b++;
        if (*a == 0 && *b == 0) return t;
    }
    return -1;
}

const char *moeq_type_name(int type)
{
    const struct moeq_type_traits *t = moeq_type_traits(type);
    return t ? t->name : "?";
}

size_t moeq_row_size(int type, int64_t n)
{
    const struct moeq_type_traits *t = moeq_type_traits(type);
    if (!t || n < 0 || n % t->blck_size) return 0;
    return (size_t)(n / t->blck_size) * t->type_size;
}

uint64_t moeq_tensor_nbytes(int type, uint64_t ne0, uint64_t nelem, int *ok)
{
    const struct moeq_type_traits *t = moeq_type_traits(type);
    *ok = 0;
    if (!t || ne0 == 0 || ne0 % (uint64_t)t->blck_size) return 0;
    uint64_t blocks = nelem / (uint64_t)t->blck_size;
    if (nelem % (uint64_t)t->blck_size) return 0;
    if (blocks > UINT64_MAX / t->type_size) return 0;
    *ok = 1;
    return blocks * t->type_size;
}

int moeq_dequantize(int type, const void *src, float *dst, int64_t n)
{
    const struct moeq_type_traits *t = moeq_type_traits(type);
    if (!t || !t->to_float) return -1;
    t->to_float(src, dst, n);
    return 0;
}

/* ------------------------------------------------------------ half floats */

static inline uint32_t f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

float moeq_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    if (exp == 0x1f)                      /* inf / nan */
        return bits_f32(sign | 0x7f800000u | (man << 13));
    if (exp == 0) {
        if (man == 0) return bits_f32(sign);
        /* subnormal: value = man * 2^-24 exactly */
        float v = (float)man * 5.9604644775390625e-8f;
        return sign ? -v : v;
    }
    return bits_f32(sign | ((exp + 112) << 23) | (man << 13));
}

uint16_t moeq_f32_to_f16(float f)
{
    uint32_t x = f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u)                /* inf or nan (nan stays quiet nan) */
        return sign | 0x7c00 | (ax > 0x7f800000u ? 0x200 | ((ax >> 13) & 0x3ff) : 0);
    if (ax >= 0x477ff000u)                /* rounds to >= 65520: overflow */
        return sign | 0x7c00;
    if (ax < 0x38800000u) {               /* below the smallest normal half */
        if (ax < 0x33000000u) return sign; /* < 2^-25 rounds to zero */
        uint32_t e = ax >> 23, m = (ax & 0x7fffff) | 0x800000;
        /* value = m * 2^(e-150) and the half subnormal unit is 2^-24,
         * so drop (126 - e) low bits of m with round-to-nearest-even */
        uint32_t shift = 126 - e;
        uint32_t q = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1))) q++;
        return sign | (uint16_t)q;
    }
    uint32_t e = (ax >> 23) - 112, m = ax & 0x7fffff;
    uint32_t q = (e << 10) | (m >> 13), rem = m & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (q & 1))) q++;
    return sign | (uint16_t)q;
}

float moeq_bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

uint16_t moeq_f32_to_bf16(float f)
{
    uint32_t x = f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u)  /* nan: force quiet */
        return (uint16_t)((x >> 16) | 64);
    return (uint16_t)((x + (0x7fff + ((x >> 16) & 1))) >> 16);
}
