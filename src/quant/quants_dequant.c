/*
 * quants_dequant.c: decoding of every ggml block format moeq knows to f32.
 *
 * These are the reference decoders: the SIMD kernels and the quantizers are
 * tested against them, and `moeq dump` and the engine's fallback paths use
 * them directly. Each must give bit for bit what ggml gives, so the float
 * arithmetic follows ggml's order: a block's (or sub-block's) scale is first
 * formed as a float (e.g. d * 6-bit scale), then multiplied by the quant,
 * and a min is subtracted last. For these formats that order is in fact
 * forgiving: an f16 scale (11 significant bits) times the small integers
 * involved (sub-scale, quant, grid magnitude, non-linear level) stays
 * within float's 24 bits, so every product is exact and the only rounding
 * is the final subtraction, which a fused multiply-add would round the same
 * way. The tests confirm it (reassociating Q6_K's or IQ2_XXS's products
 * leaves every reference vector unchanged); keeping ggml's order anyway
 * makes the equivalence obvious rather than argued.
 *
 * Layouts are read as little-endian bytes (GGUF stores blocks verbatim and
 * moeq targets x86-64); multi-byte packed fields are assembled from bytes
 * where their packing crosses field boundaries.
 *
 * Every function takes n, a multiple of its block size (the traits table
 * and the GGUF reader guarantee it), and decodes n / block_size blocks.
 */
#include "quant/quants.h"
#include "quant/quants_blocks.h"

#include <string.h>

/* ------------------------------------------------------------- helpers */

/* Byte j (0 = least significant) of a codebook entry: the grids pack one
 * unsigned magnitude per byte, first element in the low byte. */
static inline int grid_byte(uint64_t entry, int j) { return (int)((entry >> (8 * j)) & 0xff); }

/* v negated when bit j of signs is set. Flipping the sign bit gives exactly
 * what ggml's v * -1.0f gives (signed zeros and NaNs included), and does it
 * without a branch. */
static inline float signed_by(float v, unsigned signs, int j)
{
    uint32_t u;
    memcpy(&u, &v, 4);
    u ^= (uint32_t)((signs >> j) & 1u) << 31;
    memcpy(&v, &u, 4);
    return v;
}

static inline uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* ------------------------------------------------------ plain floats */

void dequantize_row_f32(const void *x, float *y, int64_t n)
{
    memcpy(y, x, (size_t)n * sizeof(float));
}

void dequantize_row_f16(const void *x, float *y, int64_t n)
{
    const uint16_t *h = x;
    for (int64_t i = 0; i < n; i++) y[i] = moeq_f16_to_f32(h[i]);
}

void dequantize_row_bf16(const void *x, float *y, int64_t n)
{
    const uint16_t *h = x;
    for (int64_t i = 0; i < n; i++) y[i] = moeq_bf16_to_f32(h[i]);
}

/* -------------------------------------------------- legacy 32-blocks */

/* Q4_0: value = d * (nibble - 8); byte j holds element j (low nibble) and
 * element j + 16 (high nibble). */
void dequantize_row_q4_0(const void *x, float *y, int64_t n)
{
    const block_q4_0 *b = x;
    for (int64_t i = 0; i < n / QK4_0; i++, b++, y += QK4_0) {
        const float d = moeq_f16_to_f32(b->d);
        for (int j = 0; j < QK4_0 / 2; j++) {
            y[j]             = (float)((b->qs[j] & 0x0f) - 8) * d;
            y[j + QK4_0 / 2] = (float)((b->qs[j] >> 4) - 8) * d;
        }
    }
}

void dequantize_row_q8_0(const void *x, float *y, int64_t n)
{
    const block_q8_0 *b = x;
    for (int64_t i = 0; i < n / QK8_0; i++, b++, y += QK8_0) {
        const float d = moeq_f16_to_f32(b->d);
        for (int j = 0; j < QK8_0; j++) y[j] = (float)b->qs[j] * d;
    }
}

/* IQ4_NL: Q4_0's layout with the nibble indexing a non-linear level. */
void dequantize_row_iq4_nl(const void *x, float *y, int64_t n)
{
    const block_iq4_nl *b = x;
    for (int64_t i = 0; i < n / QK4_NL; i++, b++, y += QK4_NL) {
        const float d = moeq_f16_to_f32(b->d);
        for (int j = 0; j < QK4_NL / 2; j++) {
            y[j]              = d * (float)kvalues_iq4nl[b->qs[j] & 0x0f];
            y[j + QK4_NL / 2] = d * (float)kvalues_iq4nl[b->qs[j] >> 4];
        }
    }
}

/* ------------------------------------------------------------ K-quants */

/*
 * The K-quants: levels through the setters' twins beside the block
 * layouts (quants_blocks.h), then y = d * scale * q - dmin * min per
 * sub-block, d * scale formed first as ggml does. One decoder for one
 * super-block of every K-quant type.
 */
static void dequantize_k_block(int type, const void *blk, float *y)
{
    int8_t q[QK_K];
    int sc[16], mn[16] = { 0 }, nsub = 16;
    float d, dmin = 0;
    switch (type) {
    case MOEQ_TYPE_Q2_K: {
        const block_q2_K *b = blk;
        q2k_get_levels(b, q);
        for (int s = 0; s < 16; s++) q2k_get_scale_min(b->scales, s, &sc[s], &mn[s]);
        d = moeq_f16_to_f32(b->d);
        dmin = moeq_f16_to_f32(b->dmin);
        break;
    }
    case MOEQ_TYPE_Q3_K: {
        const block_q3_K *b = blk;
        q3k_get_levels(b, q);
        for (int s = 0; s < 16; s++) sc[s] = q3k_get_scale(b->scales, s);
        d = moeq_f16_to_f32(b->d);
        break;
    }
    case MOEQ_TYPE_Q4_K: {
        const block_q4_K *b = blk;
        q4k_get_levels(b, q);
        for (int s = 0; s < 8; s++) k4_get_scale_min(b->scales, s, &sc[s], &mn[s]);
        d = moeq_f16_to_f32(b->d);
        dmin = moeq_f16_to_f32(b->dmin);
        nsub = 8;
        break;
    }
    case MOEQ_TYPE_Q5_K: {
        const block_q5_K *b = blk;
        q5k_get_levels(b, q);
        for (int s = 0; s < 8; s++) k4_get_scale_min(b->scales, s, &sc[s], &mn[s]);
        d = moeq_f16_to_f32(b->d);
        dmin = moeq_f16_to_f32(b->dmin);
        nsub = 8;
        break;
    }
    default: {  /* MOEQ_TYPE_Q6_K: a signed 8-bit scale per 16 */
        const block_q6_K *b = blk;
        q6k_get_levels(b, q);
        for (int s = 0; s < 16; s++) sc[s] = b->scales[s];
        d = moeq_f16_to_f32(b->d);
        break;
    }
    }
    /* without mins ml is 0, and v - 0.0f is v exactly */
    const int len = QK_K / nsub;
    for (int s = 0; s < nsub; s++) {
        const float dl = d * (float)sc[s], ml = dmin * (float)mn[s];
        for (int l = len * s; l < len * s + len; l++) y[l] = dl * (float)q[l] - ml;
    }
}

/* dequantize_row_NAME for K-quant NAME (type T) */
#define K_DEQUANT(NAME, T)                                                     \
    void dequantize_row_##NAME(const void *x, float *y, int64_t n)            \
    {                                                                          \
        const block_##NAME *b = x;                                             \
        for (int64_t i = 0; i < n / QK_K; i++, b++, y += QK_K)                 \
            dequantize_k_block(MOEQ_TYPE_##T, b, y);                           \
    }

K_DEQUANT(q2_K, Q2_K)
K_DEQUANT(q3_K, Q3_K)
K_DEQUANT(q4_K, Q4_K)
K_DEQUANT(q5_K, Q5_K)
K_DEQUANT(q6_K, Q6_K)

/* Q8_K: activations; float scale, 8-bit quants (bsums are redundant). */
void dequantize_row_q8_K(const void *x, float *y, int64_t n)
{
    const block_q8_K *b = x;
    for (int64_t i = 0; i < n / QK_K; i++, b++, y += QK_K)
        for (int j = 0; j < QK_K; j++) y[j] = b->d * (float)b->qs[j];
}

/* ------------------------------------------------------------- i-quants */

/* Eight elements from one grid entry of eight magnitudes (IQ2_*), or from
 * two of four (IQ3_*, g1 for elements 4..7), each times db, signed by the
 * bits of signs. */
static inline void put_grid8(float *y, float db, uint64_t g, unsigned signs)
{
    for (int j = 0; j < 8; j++) y[j] = signed_by(db * (float)grid_byte(g, j), signs, j);
}

static inline void put_grid4x2(float *y, float db, uint32_t g0, uint32_t g1, unsigned signs)
{
    for (int j = 0; j < 4; j++) {
        y[j]     = signed_by(db * (float)grid_byte(g0, j), signs, j);
        y[j + 4] = signed_by(db * (float)grid_byte(g1, j), signs, j + 4);
    }
}

/* IQ2_XS / IQ2_S: a 32-block's byte of two 4-bit scales (low nibble for its
 * first 16 elements) as d * (0.5 + s) * 0.25. */
static inline void iq2_scale_pair(float d, uint8_t s, float db[2])
{
    db[0] = d * (0.5f + (float)(s & 0x0f)) * 0.25f;
    db[1] = d * (0.5f + (float)(s >> 4)) * 0.25f;
}

/*
 * IQ2_XXS: per 32 elements, 8 bytes read as two little-endian words: the
 * first holds four 8-bit grid indices (one per 8 elements); the second
 * four 7-bit sign indices (into the even-parity table) and a 4-bit scale
 * in its top bits. Element scale = d * (0.5 + s) * 0.25.
 */
void dequantize_row_iq2_xxs(const void *x, float *y, int64_t n)
{
    const block_iq2_xxs *b = x;
    for (int64_t i = 0; i < n / QK_K; i++, b++) {
        const float d = moeq_f16_to_f32(b->d);
        const uint8_t *q8 = (const uint8_t *)b->qs;
        for (int ib = 0; ib < QK_K / 32; ib++, q8 += 8) {
            const uint32_t aux = le32(q8 + 4);
            const float db = d * (0.5f + (float)(aux >> 28)) * 0.25f;
            for (int l = 0; l < 4; l++, y += 8)
                put_grid8(y, db, iq2xxs_grid[q8[l]], ksigns_iq2xs[(aux >> (7 * l)) & 127]);
        }
    }
}

/*
 * IQ2_XS: per 8 elements a 16-bit word, 9-bit grid index and 7-bit sign
 * index; per 32 elements a byte of two 4-bit scales (low for the first 16).
 */
void dequantize_row_iq2_xs(const void *x, float *y, int64_t n)
{
    const block_iq2_xs *b = x;
    for (int64_t i = 0; i < n / QK_K; i++, b++) {
        const float d = moeq_f16_to_f32(b->d);
        for (int ib = 0; ib < QK_K / 32; ib++) {
            float db[2];
            iq2_scale_pair(d, b->scales[ib], db);
            for (int l = 0; l < 4; l++, y += 8) {
                const uint16_t w = b->qs[4 * ib + l];
                put_grid8(y, db[l / 2], iq2xs_grid[w & 511], ksigns_iq2xs[w >> 9]);
            }
        }
    }
}

/*
 * IQ2_S: 10-bit grid index per 8 elements (low 8 bits in qs[0..31], top 2
 * bits in qh, two per index), an explicit 8-bit sign mask per 8 elements
 * in qs[32..63], and IQ2_XS's pair of 4-bit scales per 32.
 */
void dequantize_row_iq2_s(const void *x, float *y, int64_t n)
{
    const block_iq2_s *b = x;
    for (int64_t i = 0; i < n / QK_K; i++, b++) {
        const float d = moeq_f16_to_f32(b->d);
        const uint8_t *idx = b->qs, *sgn = b->qs + QK_K / 8;
        for (int ib = 0; ib < QK_K / 32; ib++) {
            float db[2];
            iq2_scale_pair(d, b->scales[ib], db);
            for (int l = 0; l < 4; l++, y += 8) {
                const int k = 4 * ib + l;
                put_grid8(y, db[l / 2], iq2s_grid[idx[k] | (((b->qh[ib] >> (2 * l)) & 3) << 8)], sgn[k]);
            }
        }
    }
}

/*
 * IQ3_XXS: 8-bit index into a grid of 4-magnitude points per 4 elements
 * (qs[0..63]); per 32 elements a little-endian word (qs[64..95]) with four
 * 7-bit sign indices and a 4-bit scale: d * (0.5 + s) * 0.5.
 */
void dequantize_row_iq3_xxs(const void *x, float *y, int64_t n)
{
    const block_iq3_xxs *b = x;
    for (int64_t i = 0; i < n / QK_K; i++, b++) {
        const float d = moeq_f16_to_f32(b->d);
        const uint8_t *idx = b->qs, *ss = b->qs + QK_K / 4;
        for (int ib = 0; ib < QK_K / 32; ib++) {
            const uint32_t aux = le32(ss + 4 * ib);
            const float db = d * (0.5f + (float)(aux >> 28)) * 0.5f;
            for (int l = 0; l < 4; l++, y += 8) {
                const unsigned signs = ksigns_iq2xs[(aux >> (7 * l)) & 127];
                const uint32_t g0 = iq3xxs_grid[idx[8 * ib + 2 * l]];
                const uint32_t g1 = iq3xxs_grid[idx[8 * ib + 2 * l + 1]];
                put_grid4x2(y, db, g0, g1, signs);
            }
        }
    }
}

/*
 * IQ3_S: 9-bit grid index per 4 elements (low 8 bits in qs, bit 8 from qh:
 * bit k of qh[ib] for the k-th index of 32-block ib), an explicit sign mask
 * byte per 8 elements, and a 4-bit scale per 32: d * (1 + 2*s).
 */
void dequantize_row_iq3_s(const void *x, float *y, int64_t n)
{
    const block_iq3_s *b = x;
    for (int64_t i = 0; i < n / QK_K; i++, b++) {
        const float d = moeq_f16_to_f32(b->d);
        for (int ib = 0; ib < QK_K / 32; ib++) {
            const int s = (b->scales[ib / 2] >> (4 * (ib & 1))) & 0x0f;
            const float db = d * (float)(1 + 2 * s);
            const uint8_t *idx = b->qs + 8 * ib;
            for (int l = 0; l < 4; l++, y += 8) {
                const unsigned signs = b->signs[4 * ib + l];
                const uint32_t g0 = iq3s_grid[idx[2 * l]     | (((b->qh[ib] >> (2 * l)) & 1) << 8)];
                const uint32_t g1 = iq3s_grid[idx[2 * l + 1] | (((b->qh[ib] >> (2 * l + 1)) & 1) << 8)];
                put_grid4x2(y, db, g0, g1, signs);
            }
        }
    }
}

/*
 * IQ4_XS: IQ4_NL levels in 256-blocks with a 6-bit scale (biased by 32)
 * per 32: low 4 bits in scales_l nibbles, high 2 bits in scales_h.
 */
void dequantize_row_iq4_xs(const void *x, float *y, int64_t n)
{
    const block_iq4_xs *b = x;
    for (int64_t i = 0; i < n / QK_K; i++, b++) {
        const float d = moeq_f16_to_f32(b->d);
        for (int ib = 0; ib < QK_K / 32; ib++, y += 32) {
            const float dl = d * (float)iq4xs_get_scale(b, ib);
            const uint8_t *q = b->qs + 16 * ib;
            for (int j = 0; j < 16; j++) {
                y[j]      = dl * (float)kvalues_iq4nl[q[j] & 0x0f];
                y[j + 16] = dl * (float)kvalues_iq4nl[q[j] >> 4];
            }
        }
    }
}
