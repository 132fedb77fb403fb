/*
 * quants_blocks.h: ggml block layouts (internal to quant, kernels, engine and
 * synth, which write or read blocks; and their tests).
 *
 * Each struct carries ggml's name and is asserted to ggml's byte size, since
 * GGUF files store these blocks verbatim and a wrong size silently shifts
 * every block after the first. Also declares the codebook grids and sign
 * tables of the i-quants (format constants, defined in quants_tables.c) and
 * the per-format dequantizers and quantizers the traits table points at.
 */
#ifndef MOEQ_QUANTS_BLOCKS_H
#define MOEQ_QUANTS_BLOCKS_H

#include <stdint.h>
#include <stddef.h>

typedef uint16_t ggml_half;

#define QK4_0  32
#define QK8_0  32
#define QK4_NL 32
#define QK_K   256
#define K_SCALE_SIZE 12

typedef struct { ggml_half d; uint8_t qs[QK4_0 / 2]; } block_q4_0;
typedef struct { ggml_half d; int8_t  qs[QK8_0]; } block_q8_0;

/* 2-bit: 16 sub-blocks of 16, 4-bit scale and 4-bit min per sub-block */
typedef struct {
    uint8_t scales[QK_K / 16];
    uint8_t qs[QK_K / 4];
    ggml_half d;
    ggml_half dmin;
} block_q2_K;

/* 3-bit: low 2 bits in qs, high bit in hmask, 16 6-bit scales packed in 12 bytes */
typedef struct {
    uint8_t hmask[QK_K / 8];
    uint8_t qs[QK_K / 4];
    uint8_t scales[12];
    ggml_half d;
} block_q3_K;

/* 4-bit: 8 sub-blocks of 32, 6-bit scales and mins packed in 12 bytes */
typedef struct {
    ggml_half d;
    ggml_half dmin;
    uint8_t scales[K_SCALE_SIZE];
    uint8_t qs[QK_K / 2];
} block_q4_K;

typedef struct {
    ggml_half d;
    ggml_half dmin;
    uint8_t scales[K_SCALE_SIZE];
    uint8_t qh[QK_K / 8];
    uint8_t qs[QK_K / 2];
} block_q5_K;

typedef struct {
    uint8_t ql[QK_K / 2];
    uint8_t qh[QK_K / 4];
    int8_t  scales[QK_K / 16];
    ggml_half d;
} block_q6_K;

/* activations for K- and i-quant dot products */
typedef struct {
    float   d;
    int8_t  qs[QK_K];
    int16_t bsums[QK_K / 16];
} block_q8_K;

typedef struct { ggml_half d; uint16_t qs[QK_K / 8]; } block_iq2_xxs;
typedef struct { ggml_half d; uint16_t qs[QK_K / 8]; uint8_t scales[QK_K / 32]; } block_iq2_xs;
typedef struct {
    ggml_half d;
    uint8_t qs[QK_K / 4];
    uint8_t qh[QK_K / 32];
    uint8_t scales[QK_K / 32];
} block_iq2_s;
typedef struct { ggml_half d; uint8_t qs[3 * QK_K / 8]; } block_iq3_xxs;
typedef struct {
    ggml_half d;
    uint8_t qs[QK_K / 4];
    uint8_t qh[QK_K / 32];
    uint8_t signs[QK_K / 8];
    uint8_t scales[QK_K / 64];
} block_iq3_s;
typedef struct { ggml_half d; uint8_t qs[QK4_NL / 2]; } block_iq4_nl;
typedef struct {
    ggml_half d;
    uint16_t scales_h;
    uint8_t  scales_l[QK_K / 64];
    uint8_t  qs[QK_K / 2];
} block_iq4_xs;

/*
 * K-quant sub-block scales as stored: the one home of their bit layout, a
 * get (for dequantizers and kernels) and a set (for quantizers and synth)
 * per layout. A set writes exactly its sub-block's bits, so a block is
 * complete once every sub-block is set, whatever the bytes held before.
 *
 * Q4_K / Q5_K: eight 6-bit scales and eight 6-bit mins in K_SCALE_SIZE
 * bytes. Sub-blocks 0..3 keep both in the low 6 bits of bytes 0..3
 * (scales) and 4..7 (mins); sub-blocks 4..7 keep their low 4 bits in the
 * nibbles of bytes 8..11 (scale low, min high) and their top 2 bits in the
 * spare top bits of bytes 0..3 (scales) and 4..7 (mins).
 */
static inline void k4_get_scale_min(const uint8_t *s, int j, int *sc, int *mn)
{
    if (j < 4) {
        *sc = s[j] & 63;
        *mn = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4);
        *mn = (s[j + 4] >> 4)   | ((s[j]     >> 6) << 4);
    }
}

/* Sub-block j's scale sc and min mn, each 0..63. */
static inline void k4_set_scale_min(uint8_t *s, int j, int sc, int mn)
{
    sc &= 63;
    mn &= 63;
    if (j < 4) {
        s[j]     = (uint8_t)((s[j] & 0xc0) | sc);
        s[j + 4] = (uint8_t)((s[j + 4] & 0xc0) | mn);
    } else {
        s[j + 4] = (uint8_t)((sc & 0x0f) | (mn & 0x0f) << 4);
        s[j - 4] = (uint8_t)((s[j - 4] & 63) | (sc >> 4) << 6);
        s[j]     = (uint8_t)((s[j] & 63) | (mn >> 4) << 6);
    }
}

/* Q2_K: sixteen 4-bit scales and mins, one byte per sub-block (scale in
 * the low nibble, min in the high). The set writes the whole byte. */
static inline void q2k_get_scale_min(const uint8_t *s, int j, int *sc, int *mn)
{
    *sc = s[j] & 0x0f;
    *mn = s[j] >> 4;
}

/* Sub-block j's scale sc and min mn, each 0..15. */
static inline void q2k_set_scale_min(uint8_t *s, int j, int sc, int mn)
{
    s[j] = (uint8_t)((sc & 0x0f) | (mn & 0x0f) << 4);
}

/*
 * Q3_K: sixteen signed scales -32..31, stored as 6 bits biased by 32 in 12
 * bytes. Low 4 bits: scales 0..7 in the low nibbles of bytes 0..7, scales
 * 8..15 in their high nibbles. High 2 bits: scale j in bits 2*(j/4) of
 * byte 8 + j%4.
 */
static inline int q3k_get_scale(const uint8_t *s, int j)
{
    int lo = j < 8 ? (s[j] & 0x0f) : (s[j - 8] >> 4);
    int hi = (s[8 + (j & 3)] >> (2 * (j >> 2))) & 3;
    return (lo | hi << 4) - 32;
}

static inline void q3k_set_scale(uint8_t *s, int j, int scale)
{
    const int v = (scale + 32) & 63, lo = 4 * (j >> 3), hi = 2 * (j >> 2);
    s[j & 7]       = (uint8_t)((s[j & 7] & ~(0x0f << lo)) | (v & 0x0f) << lo);
    s[8 + (j & 3)] = (uint8_t)((s[8 + (j & 3)] & ~(3 << hi)) | (v >> 4) << hi);
}

/*
 * IQ4_XS: eight signed sub-block scales -32..31, stored +32 as 6 bits: the
 * low 4 of sub-block j in nibble j%2 of scales_l[j/2], the high 2 at bit
 * 2j of scales_h. The set writes just sub-block j's bits.
 */
static inline int iq4xs_get_scale(const block_iq4_xs *b, int j)
{
    return (((b->scales_l[j / 2] >> (4 * (j & 1))) & 0x0f) | ((b->scales_h >> (2 * j)) & 3) << 4) - 32;
}

static inline void iq4xs_set_scale(block_iq4_xs *b, int j, int scale)
{
    const int v = (scale + 32) & 63, lo = 4 * (j & 1), hi = 2 * j;
    b->scales_l[j / 2] = (uint8_t)((b->scales_l[j / 2] & ~(0x0f << lo)) | (v & 0x0f) << lo);
    b->scales_h = (uint16_t)((b->scales_h & ~(3u << hi)) | (unsigned)(v >> 4) << hi);
}

/*
 * K-quant levels as stored: a set (quantizers, synth) and a get (kernels)
 * per layout, on the 256 levels of a super-block as they decode (q[i] is
 * element i's integer before its sub-block scale): Q2_K 0..3, Q3_K -4..3,
 * Q4_K 0..15, Q5_K 0..31, Q6_K -32..31. Each set writes every bit of the
 * arrays it is given.
 *
 * Two bits per level (Q2_K, the low bits of Q3_K): element 128h + 32s + l
 * in bits 2s..2s+1 of qs[32h + l]. Q3_K's third bit (set: the level is not
 * below 0 once biased by 4) is bit e/32 of hmask[e % 32]. Nibbles (Q4_K,
 * the low bits of Q5_K): qs[32p + l] holds element 64p + l in its low and
 * 64p + 32 + l in its high nibble; Q5_K's fifth bits are bits 2p and 2p+1
 * of qh[l]. Q6_K, biased by 32, per 128-half h: ql[64h + l] holds the low
 * nibbles of elements 128h + l and 128h + 64 + l, ql[64h + 32 + l] those of
 * 128h + 32 + l and 128h + 96 + l, qh[32h + l] the top two bits of the four
 * (quarter k at bit 2k).
 */
static inline void k_set_2bit(uint8_t *qs, const int8_t *q, int bias)
{
    for (int h = 0; h < 2; h++)
        for (int l = 0; l < 32; l++) {
            const int8_t *e = q + 128 * h + l;
            qs[32 * h + l] = (uint8_t)(((e[0] + bias) & 3) | ((e[32] + bias) & 3) << 2 |
                                       ((e[64] + bias) & 3) << 4 | ((e[96] + bias) & 3) << 6);
        }
}

static inline void q2k_set_levels(block_q2_K *b, const int8_t *q) { k_set_2bit(b->qs, q, 0); }

static inline void q3k_set_levels(block_q3_K *b, const int8_t *q)
{
    k_set_2bit(b->qs, q, 4);
    for (int l = 0; l < 32; l++) {
        uint8_t m = 0;
        for (int k = 0; k < 8; k++) m |= (uint8_t)((q[32 * k + l] >= 0) << k);
        b->hmask[l] = m;
    }
}

static inline void k_set_nibbles(uint8_t *qs, const int8_t *q)
{
    for (int p = 0; p < 4; p++)
        for (int l = 0; l < 32; l++)
            qs[32 * p + l] = (uint8_t)((q[64 * p + l] & 15) | (q[64 * p + 32 + l] & 15) << 4);
}

static inline void q4k_set_levels(block_q4_K *b, const int8_t *q) { k_set_nibbles(b->qs, q); }

static inline void q5k_set_levels(block_q5_K *b, const int8_t *q)
{
    k_set_nibbles(b->qs, q);
    for (int l = 0; l < 32; l++) {
        uint8_t h = 0;
        for (int p = 0; p < 4; p++)
            h |= (uint8_t)((q[64 * p + l] >> 4) << (2 * p) | (q[64 * p + 32 + l] >> 4) << (2 * p + 1));
        b->qh[l] = h;
    }
}

static inline void q6k_set_levels(block_q6_K *b, const int8_t *q)
{
    for (int h = 0; h < 2; h++) {
        uint8_t *ql = b->ql + 64 * h, *qh = b->qh + 32 * h;
        const int8_t *e = q + 128 * h;
        for (int l = 0; l < 32; l++) {
            int q0 = e[l] + 32, q1 = e[l + 32] + 32, q2 = e[l + 64] + 32, q3 = e[l + 96] + 32;
            ql[l]      = (uint8_t)((q0 & 15) | (q2 & 15) << 4);
            ql[l + 32] = (uint8_t)((q1 & 15) | (q3 & 15) << 4);
            qh[l]      = (uint8_t)((q0 >> 4) | (q1 >> 4) << 2 | (q2 >> 4) << 4 | (q3 >> 4) << 6);
        }
    }
}

static inline void k_get_2bit(const uint8_t *qs, int8_t *q)
{
    for (int h = 0; h < 2; h++)
        for (int s = 0; s < 4; s++)
            for (int l = 0; l < 32; l++)
                q[128 * h + 32 * s + l] = (int8_t)((qs[32 * h + l] >> 2 * s) & 3);
}

static inline void q2k_get_levels(const block_q2_K *b, int8_t *q) { k_get_2bit(b->qs, q); }

static inline void q3k_get_levels(const block_q3_K *b, int8_t *q)
{
    k_get_2bit(b->qs, q);
    for (int e = 0; e < QK_K; e++) q[e] = (int8_t)(q[e] - 4 + 4 * ((b->hmask[e % 32] >> (e / 32)) & 1));
}

static inline void k_get_nibbles(const uint8_t *qs, int8_t *q)
{
    for (int p = 0; p < 4; p++)
        for (int l = 0; l < 32; l++) {
            q[64 * p + l]      = (int8_t)(qs[32 * p + l] & 0xf);
            q[64 * p + 32 + l] = (int8_t)(qs[32 * p + l] >> 4);
        }
}

static inline void q4k_get_levels(const block_q4_K *b, int8_t *q) { k_get_nibbles(b->qs, q); }

static inline void q5k_get_levels(const block_q5_K *b, int8_t *q)
{
    k_get_nibbles(b->qs, q);
    for (int p = 0; p < 4; p++)
        for (int l = 0; l < 32; l++) {
            q[64 * p + l]      = (int8_t)(q[64 * p + l] | ((b->qh[l] >> 2 * p) & 1) << 4);
            q[64 * p + 32 + l] = (int8_t)(q[64 * p + 32 + l] | ((b->qh[l] >> (2 * p + 1)) & 1) << 4);
        }
}

static inline void q6k_get_levels(const block_q6_K *b, int8_t *q)
{
    for (int h = 0; h < 2; h++) {
        const uint8_t *ql = b->ql + 64 * h, *qh = b->qh + 32 * h;
        int8_t *e = q + 128 * h;
        for (int l = 0; l < 32; l++) {
            e[l]      = (int8_t)(((ql[l] & 0xf)      | (qh[l] & 3) << 4) - 32);
            e[l + 32] = (int8_t)(((ql[l + 32] & 0xf) | (qh[l] >> 2 & 3) << 4) - 32);
            e[l + 64] = (int8_t)(((ql[l] >> 4)       | (qh[l] >> 4 & 3) << 4) - 32);
            e[l + 96] = (int8_t)(((ql[l + 32] >> 4)  | (qh[l] >> 6 & 3) << 4) - 32);
        }
    }
}

_Static_assert(sizeof(block_q4_0)    == 18,  "block_q4_0 size");
_Static_assert(sizeof(block_q8_0)    == 34,  "block_q8_0 size");
_Static_assert(sizeof(block_q2_K)    == 84,  "block_q2_K size");
_Static_assert(sizeof(block_q3_K)    == 110, "block_q3_K size");
_Static_assert(sizeof(block_q4_K)    == 144, "block_q4_K size");
_Static_assert(sizeof(block_q5_K)    == 176, "block_q5_K size");
_Static_assert(sizeof(block_q6_K)    == 210, "block_q6_K size");
_Static_assert(sizeof(block_q8_K)    == 292, "block_q8_K size");
_Static_assert(sizeof(block_iq2_xxs) == 66,  "block_iq2_xxs size");
_Static_assert(sizeof(block_iq2_xs)  == 74,  "block_iq2_xs size");
_Static_assert(sizeof(block_iq2_s)   == 82,  "block_iq2_s size");
_Static_assert(sizeof(block_iq3_xxs) == 98,  "block_iq3_xxs size");
_Static_assert(sizeof(block_iq3_s)   == 110, "block_iq3_s size");
_Static_assert(sizeof(block_iq4_nl)  == 18,  "block_iq4_nl size");
_Static_assert(sizeof(block_iq4_xs)  == 136, "block_iq4_xs size");

/* Codebooks and sign tables of the i-quants: ggml format constants. */
extern const uint64_t iq2xxs_grid[256];
extern const uint64_t iq2xs_grid[512];
extern const uint64_t iq2s_grid[1024];
extern const uint32_t iq3xxs_grid[256];
extern const uint32_t iq3s_grid[512];
extern const uint8_t  ksigns_iq2xs[128];
extern const uint8_t  kmask_iq2xs[8];
extern const int8_t   kvalues_iq4nl[16];

/* Per-format dequantizers (quants_dequant.c). */
void dequantize_row_f32(const void *x, float *y, int64_t n);
void dequantize_row_f16(const void *x, float *y, int64_t n);
void dequantize_row_bf16(const void *x, float *y, int64_t n);
void dequantize_row_q4_0(const void *x, float *y, int64_t n);
void dequantize_row_q8_0(const void *x, float *y, int64_t n);
void dequantize_row_q2_K(const void *x, float *y, int64_t n);
void dequantize_row_q3_K(const void *x, float *y, int64_t n);
void dequantize_row_q4_K(const void *x, float *y, int64_t n);
void dequantize_row_q5_K(const void *x, float *y, int64_t n);
void dequantize_row_q6_K(const void *x, float *y, int64_t n);
void dequantize_row_q8_K(const void *x, float *y, int64_t n);
void dequantize_row_iq2_xxs(const void *x, float *y, int64_t n);
void dequantize_row_iq2_xs(const void *x, float *y, int64_t n);
void dequantize_row_iq2_s(const void *x, float *y, int64_t n);
void dequantize_row_iq3_xxs(const void *x, float *y, int64_t n);
void dequantize_row_iq3_s(const void *x, float *y, int64_t n);
void dequantize_row_iq4_nl(const void *x, float *y, int64_t n);
void dequantize_row_iq4_xs(const void *x, float *y, int64_t n);

/* Per-format quantizers (quants_k.c), moeq_quant_fn signature. */
/*
 * The factor f = sum(qw*x*x) / sum(qw*x*y) by which a finished super-block
 * (QK_K values, decoded y, source x) is rescaled so that it is unbiased
 * along x (unit weights where qw is NULL or invalid); see unbias_scale in
 * quants_iq.c. 0 where the block does not decode or is degenerate: a ratio
 * outside [0.8, 1.25] means nearly all weight on one value.
 */
double moeq_unbias_factor(int type, const void *blk, const float *x, const float *qw);

struct moeq_quant_params;
/* Whether the quantizers rescale finished blocks to be unbiased (qp NULL,
 * or fit MOEQ_FIT_UNBIASED: every fit but MOEQ_FIT_MIN_ERROR). */
int moeq_quant_unbiased(const struct moeq_quant_params *qp);

size_t quantize_f16(const float *src, void *dst, int64_t nrows, int64_t n_per_row, const float *imatrix,
                    const struct moeq_quant_params *qp);
size_t quantize_bf16(const float *src, void *dst, int64_t nrows, int64_t n_per_row, const float *imatrix,
                    const struct moeq_quant_params *qp);
size_t quantize_q4_0(const float *src, void *dst, int64_t nrows, int64_t n_per_row, const float *imatrix,
                    const struct moeq_quant_params *qp);
size_t quantize_q8_0(const float *src, void *dst, int64_t nrows, int64_t n_per_row, const float *imatrix,
                    const struct moeq_quant_params *qp);
size_t quantize_q2_K(const float *src, void *dst, int64_t nrows, int64_t n_per_row, const float *imatrix,
                    const struct moeq_quant_params *qp);
size_t quantize_q3_K(const float *src, void *dst, int64_t nrows, int64_t n_per_row, const float *imatrix,
                    const struct moeq_quant_params *qp);
size_t quantize_q4_K(const float *src, void *dst, int64_t nrows, int64_t n_per_row, const float *imatrix,
                    const struct moeq_quant_params *qp);
size_t quantize_q5_K(const float *src, void *dst, int64_t nrows, int64_t n_per_row, const float *imatrix,
                    const struct moeq_quant_params *qp);
size_t quantize_q6_K(const float *src, void *dst, int64_t nrows, int64_t n_per_row, const float *imatrix,
                    const struct moeq_quant_params *qp);
size_t quantize_iq4_nl(const float *src, void *dst, int64_t nrows, int64_t n_per_row, const float *imatrix,
                    const struct moeq_quant_params *qp);
size_t quantize_iq4_xs(const float *src, void *dst, int64_t nrows, int64_t n_per_row, const float *imatrix,
                    const struct moeq_quant_params *qp);
/* Per-format i-quant quantizers (quants_iq.c), moeq_quant_fn signature. */
size_t quantize_iq2_xxs(const float *src, void *dst, int64_t nrows, int64_t n_per_row, const float *imatrix,
                    const struct moeq_quant_params *qp);
size_t quantize_iq2_xs(const float *src, void *dst, int64_t nrows, int64_t n_per_row, const float *imatrix,
                    const struct moeq_quant_params *qp);
size_t quantize_iq2_s(const float *src, void *dst, int64_t nrows, int64_t n_per_row, const float *imatrix,
                    const struct moeq_quant_params *qp);
size_t quantize_iq3_xxs(const float *src, void *dst, int64_t nrows, int64_t n_per_row, const float *imatrix,
                    const struct moeq_quant_params *qp);
size_t quantize_iq3_s(const float *src, void *dst, int64_t nrows, int64_t n_per_row, const float *imatrix,
                    const struct moeq_quant_params *qp);

#endif
