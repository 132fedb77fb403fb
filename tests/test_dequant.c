/*
 * Dequantization of every ggml type.
 *
 * Two kinds of test. The structural ones need nothing from ../shared: each
 * builds blocks by hand through a small encoder written here from the
 * format's description (where element e's bits and its scale live), with
 * power-of-two block scales and small integers so the expected value is
 * exact whatever the order of the float operations; a few literal values
 * pin the layout directly. The shared ones decode the reference
 * quantizer's tensors in ../shared/testvectors/dequant and compare bit for
 * bit with the reference's own dequantization.
 */
#include "test.h"
#include "gguf/gguf.h"
#include "quant/quants.h"
#include "quant/quants_blocks.h"

#include <stdint.h>

/* Compare bit patterns (so -0.0 vs +0.0 and NaNs count), report the first. */
static void check_same(const float *got, const float *want, int n, const char *what)
{
    for (int i = 0; i < n; i++) {
        if (memcmp(&got[i], &want[i], sizeof(float)) != 0) {
            test_fail(__FILE__, __LINE__, "%s: element %d is %.9g, want %.9g", what, i,
                      (double)got[i], (double)want[i]);
            return;
        }
    }
}

/* Deterministic small pseudo-random numbers for filling fields. */
static uint32_t rng_state = 12345;
static uint32_t rnd(void)
{
    rng_state = rng_state * 1103515245u + 12345u;
    return rng_state >> 8;
}

static int grid8(uint64_t g, int j) { return (int)(g >> (8 * j)) & 0xff; }
static int grid4(uint32_t g, int j) { return (int)(g >> (8 * j)) & 0xff; }

/* Decode through the traits table, as every caller does. */
static void decode(int type, const void *src, float *dst, int n)
{
    const struct moeq_type_traits *t = moeq_type_traits(type);
    REQUIREF(t && t->to_float, "%s has no dequantizer", moeq_type_name(type));
    REQUIRE(moeq_dequantize(type, src, dst, n) == 0);
}

/* ------------------------------------------------------------ tables */

TEST(dequant_every_type_has_a_decoder)
{
    static const int types[] = {
        MOEQ_TYPE_F32, MOEQ_TYPE_F16, MOEQ_TYPE_BF16, MOEQ_TYPE_Q4_0, MOEQ_TYPE_Q8_0,
        MOEQ_TYPE_Q2_K, MOEQ_TYPE_Q3_K, MOEQ_TYPE_Q4_K, MOEQ_TYPE_Q5_K, MOEQ_TYPE_Q6_K,
        MOEQ_TYPE_Q8_K, MOEQ_TYPE_IQ2_XXS, MOEQ_TYPE_IQ2_XS, MOEQ_TYPE_IQ2_S,
        MOEQ_TYPE_IQ3_XXS, MOEQ_TYPE_IQ3_S, MOEQ_TYPE_IQ4_NL, MOEQ_TYPE_IQ4_XS,
    };
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        const struct moeq_type_traits *t = moeq_type_traits(types[i]);
        REQUIRE(t != NULL);
        CHECKF(t->to_float != NULL, "%s: no to_float", t->name);
    }
    float y[4];
    CHECK(moeq_dequantize(3, "", y, 4) == -1);   /* Q4_1: not a moeq type */
    CHECK(moeq_dequantize(999, "", y, 4) == -1);
}

/* ------------------------------------------------------------ plain floats */

TEST(dequant_plain_floats)
{
    const float f[4] = { 1.5f, -0.0f, 65504.0f, -3.25e-7f };
    float y[4];
    decode(MOEQ_TYPE_F32, f, y, 4);
    check_same(y, f, 4, "F32");

    const uint16_t h[4] = { 0x3e00, 0x8000, 0x7bff, 0x0001 };
    const float hw[4] = { 1.5f, -0.0f, 65504.0f, 5.9604644775390625e-8f };
    decode(MOEQ_TYPE_F16, h, y, 4);
    check_same(y, hw, 4, "F16");

    const uint16_t b[4] = { 0x3fc0, 0x8000, 0xc2f7, 0x0001 };
    const float bw[4] = { 1.5f, -0.0f, -123.5f, 9.18354961579912115600575419705e-41f };
    decode(MOEQ_TYPE_BF16, b, y, 4);
    check_same(y, bw, 4, "BF16");
}

/* ------------------------------------------------------ legacy 32-blocks */

TEST(dequant_q8_0)
{
    block_q8_0 b[2];
    float want[64], y[64];
    b[0].d = moeq_f32_to_f16(0.5f);
    b[1].d = moeq_f32_to_f16(-2.0f);
    for (int j = 0; j < 32; j++) {
        b[0].qs[j] = (int8_t)(j == 0 ? -3 : (j == 1 ? -128 : 4 * j - 60));
        b[1].qs[j] = (int8_t)(127 - j);
        want[j] = 0.5f * b[0].qs[j];
        want[32 + j] = -2.0f * b[1].qs[j];
    }
    decode(MOEQ_TYPE_Q8_0, b, y, 64);
    CHECK(y[0] == -1.5f);
    CHECK(y[1] == -64.0f);
    CHECK(y[32] == -254.0f);
    check_same(y, want, 64, "Q8_0");
}

TEST(dequant_q4_0)
{
    block_q4_0 b;
    float want[32], y[32];
    b.d = moeq_f32_to_f16(0.25f);
    /* element j in the low nibble of byte j, element j+16 in the high one */
    for (int e = 0; e < 32; e++) {
        int q = (e * 7 + 3) & 15;
        if (e < 16) b.qs[e] = (uint8_t)q;
        else b.qs[e - 16] |= (uint8_t)(q << 4);
        want[e] = 0.25f * (q - 8);
    }
    decode(MOEQ_TYPE_Q4_0, &b, y, 32);
    check_same(y, want, 32, "Q4_0");
    b.qs[0] = 0xf0;                  /* element 0 = 0 - 8, element 16 = 15 - 8 */
    decode(MOEQ_TYPE_Q4_0, &b, y, 32);
    CHECK(y[0] == -2.0f && y[16] == 1.75f);
}

TEST(dequant_iq4_nl)
{
    block_iq4_nl b;
    float y[32];
    b.d = moeq_f32_to_f16(1.0f);
    for (int j = 0; j < 16; j++) b.qs[j] = (uint8_t)(j | (15 - j) << 4);
    decode(MOEQ_TYPE_IQ4_NL, &b, y, 32);
    /* the 16 non-linear levels, then the same levels in reverse */
    static const float levels[16] = { -127, -104, -83, -65, -49, -35, -22, -10,
                                      1, 13, 25, 38, 53, 69, 89, 113 };
    for (int j = 0; j < 16; j++) {
        CHECKF(y[j] == levels[j], "element %d: %g", j, (double)y[j]);
        CHECKF(y[16 + j] == levels[15 - j], "element %d: %g", 16 + j, (double)y[16 + j]);
    }
    b.d = moeq_f32_to_f16(-0.5f);
    decode(MOEQ_TYPE_IQ4_NL, &b, y, 32);
    CHECK(y[0] == 63.5f && y[15] == -56.5f);
}

/*
 * The structural check of a 256-element format: build writes one block
 * into blk (zeroed first) and the 256 values it must decode to; decoded
 * through the traits table (into y), they must match bit for bit. blk and
 * y may be NULL where the caller has no further use for them.
 */
static void check_built(int type, void (*build)(void *blk, float *want), void *blk, float *y)
{
    _Alignas(8) uint8_t own[512];
    float own_y[256], want[256];
    const struct moeq_type_traits *t = moeq_type_traits(type);
    REQUIRE(t && t->blck_size == 256 && t->type_size <= sizeof own);
    if (!blk) blk = own;
    if (!y) y = own_y;
    memset(blk, 0, t->type_size);
    build(blk, want);
    decode(type, blk, y, 256);
    check_same(y, want, 256, t->name);
}

/* ------------------------------------------------------------ K-quants */

/* Q2_K: element e of the block; its 2 bits sit in byte 32*(e/128) + e%32 at
 * bit 2*((e%128)/32); its sub-block (scale, min) is e/16. */
static void q2k_put(block_q2_K *b, int e, int q)
{
    int r = e % 128;
    b->qs[32 * (e / 128) + r % 32] |= (uint8_t)(q << (2 * (r / 32)));
}

static void build_q2_K(void *blk, float *want)
{
    block_q2_K *b = blk;
    b->d = moeq_f32_to_f16(0.5f);
    b->dmin = moeq_f32_to_f16(0.25f);
    for (int s = 0; s < 16; s++) b->scales[s] = (uint8_t)(s | (15 - s) << 4);
    for (int e = 0; e < 256; e++) {
        int q = (int)(rnd() & 3), s = e / 16;
        q2k_put(b, e, q);
        want[e] = 0.5f * s * q - 0.25f * (15 - s);
    }
}

TEST(dequant_q2_K) { check_built(MOEQ_TYPE_Q2_K, build_q2_K, NULL, NULL); }

/* Q3_K: 2 low bits as Q2_K; the high bit of element e is bit
 * 4*(e/128) + (e%128)/32 of hmask[e%32]; a clear high bit means -4. */
static void q3k_put(block_q3_K *b, int e, int v /* -4..3 */)
{
    int r = e % 128;
    b->qs[32 * (e / 128) + r % 32] |= (uint8_t)((v & 3) << (2 * (r / 32)));
    if (v >= 0) b->hmask[r % 32] |= (uint8_t)(1 << (4 * (e / 128) + r / 32));
}

/* Q3_K scale s (-32..31) stored +32 as 6 bits: low nibble in byte s%8 (low
 * nibble for s < 8, high for s >= 8), top 2 bits in byte 8 + s%4 at 2*(s/4). */
static void q3k_scale_put(block_q3_K *b, int s, int scale)
{
    int v = scale + 32;
    b->scales[s % 8] |= (uint8_t)((v & 15) << (s < 8 ? 0 : 4));
    b->scales[8 + s % 4] |= (uint8_t)((v >> 4) << (2 * (s / 4)));
}

static void build_q3_K(void *blk, float *want)
{
    block_q3_K *b = blk;
    static const int scales[16] = { -32, 31, 0, 1, -1, 17, -17, 5, 9, -20, 30, -31, 16, -16, 2, 11 };
    b->d = moeq_f32_to_f16(0.125f);
    for (int s = 0; s < 16; s++) q3k_scale_put(b, s, scales[s]);
    for (int e = 0; e < 256; e++) {
        int v = (int)(rnd() & 7) - 4;
        q3k_put(b, e, v);
        want[e] = 0.125f * scales[e / 16] * v;
    }
}

TEST(dequant_q3_K) { check_built(MOEQ_TYPE_Q3_K, build_q3_K, NULL, NULL); }

/* Q4_K / Q5_K: 6-bit scale and min of sub-block s (0..7) packed in 12 bytes:
 * s < 4 in the low 6 bits of bytes s and s+4; s >= 4 in the nibbles of byte
 * s+4 with the top 2 bits in the spare top bits of bytes s-4 and s. */
static void k4_pack(uint8_t out[12], const int sc[8], const int mn[8])
{
    memset(out, 0, 12);
    for (int s = 0; s < 4; s++) {
        out[s]     = (uint8_t)(sc[s] | (sc[s + 4] >> 4) << 6);
        out[s + 4] = (uint8_t)(mn[s] | (mn[s + 4] >> 4) << 6);
        out[s + 8] = (uint8_t)((sc[s + 4] & 15) | (mn[s + 4] & 15) << 4);
    }
}

static const int k4_sc[8] = { 1, 63, 17, 32, 45, 2, 60, 33 };
static const int k4_mn[8] = { 0, 5, 63, 16, 48, 31, 1, 62 };

static void build_q4_K(void *blk, float *want)
{
    block_q4_K *b = blk;
    b->d = moeq_f32_to_f16(1.0f);
    b->dmin = moeq_f32_to_f16(0.5f);
    k4_pack(b->scales, k4_sc, k4_mn);
    /* element e: nibble (e/32)%2 of byte 32*(e/64) + e%32 */
    for (int e = 0; e < 256; e++) {
        int q = (int)(rnd() & 15), s = e / 32;
        b->qs[32 * (e / 64) + e % 32] |= (uint8_t)(q << (4 * (s & 1)));
        want[e] = (float)(k4_sc[s] * q) - 0.5f * k4_mn[s];
    }
}

TEST(dequant_q4_K)
{
    block_q4_K b;
    float y[256];
    check_built(MOEQ_TYPE_Q4_K, build_q4_K, &b, y);
    /* a literal: sub-block 6 has scale 60 and min 1 */
    CHECK(y[6 * 32] == 60.0f * ((b.qs[3 * 32] >> 0) & 15) - 0.5f);
}

static void build_q5_K(void *blk, float *want)
{
    block_q5_K *b = blk;
    b->d = moeq_f32_to_f16(0.25f);
    b->dmin = moeq_f32_to_f16(2.0f);
    k4_pack(b->scales, k4_sc, k4_mn);
    /* as Q4_K, plus the fifth bit of element e at bit e/32 of qh[e%32] */
    for (int e = 0; e < 256; e++) {
        int q = (int)(rnd() & 31), s = e / 32;
        b->qs[32 * (e / 64) + e % 32] |= (uint8_t)((q & 15) << (4 * (s & 1)));
        b->qh[e % 32] |= (uint8_t)((q >> 4) << s);
        want[e] = 0.25f * k4_sc[s] * q - 2.0f * k4_mn[s];
    }
}

TEST(dequant_q5_K) { check_built(MOEQ_TYPE_Q5_K, build_q5_K, NULL, NULL); }

static void build_q6_K(void *blk, float *want)
{
    block_q6_K *b = blk;
    b->d = moeq_f32_to_f16(0.0625f);
    for (int s = 0; s < 16; s++) b->scales[s] = (int8_t)(s == 0 ? -128 : (s == 1 ? 127 : 13 * s - 100));
    /* element e = 128*h + 32*k + l: low nibble in ql[64*h + 32*(k%2) + l]
     * (high nibble for k >= 2), top 2 bits at 2k in qh[32*h + l]; scale e/16 */
    for (int e = 0; e < 256; e++) {
        int q = (int)(rnd() & 63), h = e / 128, k = (e % 128) / 32, l = e % 32;
        b->ql[64 * h + 32 * (k % 2) + l] |= (uint8_t)((q & 15) << (4 * (k / 2)));
        b->qh[32 * h + l] |= (uint8_t)((q >> 4) << (2 * k));
        want[e] = 0.0625f * b->scales[e / 16] * (q - 32);
    }
}

TEST(dequant_q6_K) { check_built(MOEQ_TYPE_Q6_K, build_q6_K, NULL, NULL); }

static void build_q8_K(void *blk, float *want)
{
    block_q8_K *b = blk;
    b->d = 0.03125f;
    for (int e = 0; e < 256; e++) {
        b->qs[e] = (int8_t)(e - 128);
        want[e] = 0.03125f * (e - 128);
    }
}

TEST(dequant_q8_K) { check_built(MOEQ_TYPE_Q8_K, build_q8_K, NULL, NULL); }

/* ------------------------------------------------------------- i-quants */

/* Expected value of element j of an 8-wide i-quant group. */
static float iq_val(float db, int mag, unsigned signs, int j)
{
    return (signs >> j & 1) ? -(db * mag) : db * mag;
}

static void build_iq2_xxs(void *blk, float *want)
{
    block_iq2_xxs *b = blk;
    b->d = moeq_f32_to_f16(1.0f);
    uint8_t *p = (uint8_t *)b->qs;
    /* per 32: 4 grid-index bytes, then a LE word of 4 x 7-bit sign indices
     * and a 4-bit scale in bits 28..31; scale = d * (0.5 + s) / 4 */
    for (int ib = 0; ib < 8; ib++) {
        int s = (ib * 5 + 1) & 15;
        uint32_t aux = (uint32_t)s << 28;
        for (int l = 0; l < 4; l++) {
            int gi = (int)(rnd() & 255), si = (int)(rnd() & 127);
            p[8 * ib + l] = (uint8_t)gi;
            aux |= (uint32_t)si << (7 * l);
            for (int j = 0; j < 8; j++)
                want[32 * ib + 8 * l + j] = iq_val((0.5f + s) * 0.25f, grid8(iq2xxs_grid[gi], j),
                                                   ksigns_iq2xs[si], j);
        }
        memcpy(p + 8 * ib + 4, &aux, 4);
    }
}

TEST(dequant_iq2_xxs)
{
    block_iq2_xxs b;
    float y[256];
    check_built(MOEQ_TYPE_IQ2_XXS, build_iq2_xxs, &b, y);

    /* literal: grid entry 1 is (43, 8, 8, 8, 8, 8, 8, 8); sign index 1 is
     * pattern 0x81 (the eighth sign keeps the parity even); scale 0 -> d/8 */
    memset(&b, 0, sizeof b);
    b.d = moeq_f32_to_f16(8.0f);
    uint8_t *p = (uint8_t *)b.qs;
    p[0] = 1;
    p[4] = 1;
    decode(MOEQ_TYPE_IQ2_XXS, &b, y, 256);
    CHECK(y[0] == -43.0f && y[1] == 8.0f && y[6] == 8.0f && y[7] == -8.0f);
    CHECK(y[8] == 8.0f && y[255] == 8.0f);
}

static void build_iq2_xs(void *blk, float *want)
{
    block_iq2_xs *b = blk;
    b->d = moeq_f32_to_f16(0.5f);
    /* per 8: a 16-bit word, grid index in bits 0..8, sign index in 9..15;
     * per 32: two 4-bit scales, low nibble for the first 16 elements */
    for (int ib = 0; ib < 8; ib++) {
        int s0 = ib, s1 = 15 - ib;
        b->scales[ib] = (uint8_t)(s0 | s1 << 4);
        for (int l = 0; l < 4; l++) {
            int gi = (int)(rnd() & 511), si = (int)(rnd() & 127);
            b->qs[4 * ib + l] = (uint16_t)(gi | si << 9);
            float db = 0.5f * (0.5f + (l < 2 ? s0 : s1)) * 0.25f;
            for (int j = 0; j < 8; j++)
                want[32 * ib + 8 * l + j] = iq_val(db, grid8(iq2xs_grid[gi], j), ksigns_iq2xs[si], j);
        }
    }
}

TEST(dequant_iq2_xs) { check_built(MOEQ_TYPE_IQ2_XS, build_iq2_xs, NULL, NULL); }

static void build_iq2_s(void *blk, float *want)
{
    block_iq2_s *b = blk;
    b->d = moeq_f32_to_f16(2.0f);
    /* per 8: 10-bit grid index (low byte in qs[k], top 2 bits at 2*(k%4) of
     * qh[k/4]) and an explicit sign byte qs[32 + k] */
    for (int ib = 0; ib < 8; ib++) {
        int s0 = 15 - 2 * ib, s1 = ib;
        b->scales[ib] = (uint8_t)(s0 | s1 << 4);
        for (int l = 0; l < 4; l++) {
            int k = 4 * ib + l, gi = (int)(rnd() & 1023), sg = (int)(rnd() & 255);
            b->qs[k] = (uint8_t)gi;
            b->qh[ib] |= (uint8_t)((gi >> 8) << (2 * l));
            b->qs[32 + k] = (uint8_t)sg;
            float db = 2.0f * (0.5f + (l < 2 ? s0 : s1)) * 0.25f;
            for (int j = 0; j < 8; j++)
                want[8 * k + j] = iq_val(db, grid8(iq2s_grid[gi], j), (unsigned)sg, j);
        }
    }
}

TEST(dequant_iq2_s)
{
    block_iq2_s b;
    float y[256];
    check_built(MOEQ_TYPE_IQ2_S, build_iq2_s, &b, y);

    /* literal: index 0x2a7 in group 0 (needs both qh bits), signs 0x0f,
     * scale nibble 3 -> d * 3.5 / 4; the decoded magnitudes are the grid's
     * bytes and the first four come out negative */
    memset(&b, 0, sizeof b);
    b.d = moeq_f32_to_f16(4.0f);
    b.qs[0] = 0xa7;
    b.qh[0] = 0x02;
    b.qs[32] = 0x0f;
    b.scales[0] = 3;
    decode(MOEQ_TYPE_IQ2_S, &b, y, 256);
    for (int j = 0; j < 8; j++) {
        float m = 3.5f * grid8(iq2s_grid[0x2a7], j);
        CHECKF(y[j] == (j < 4 ? -m : m), "element %d: %g", j, (double)y[j]);
    }
    CHECK(y[8] == 3.5f * grid8(iq2s_grid[0], 0));
    CHECK(y[16] == 0.5f * grid8(iq2s_grid[0], 0));   /* second half: scale nibble 0 */

    /* a zero scale gives signed zeros, as ggml's v * -1.0f does */
    b.d = 0;
    decode(MOEQ_TYPE_IQ2_S, &b, y, 256);
    CHECK(y[0] == 0.0f && signbit(y[0]) && !signbit(y[4]));
}

static void build_iq3_xxs(void *blk, float *want)
{
    block_iq3_xxs *b = blk;
    b->d = moeq_f32_to_f16(0.25f);
    /* per 4: a grid-index byte qs[k]; per 32: a LE word at qs[64 + 4*ib]
     * of 4 x 7-bit sign indices (one per 8) and a 4-bit scale in 28..31;
     * scale = d * (0.5 + s) / 2 */
    for (int ib = 0; ib < 8; ib++) {
        int s = 15 - ib;
        uint32_t aux = (uint32_t)s << 28;
        float db = 0.25f * (0.5f + s) * 0.5f;
        for (int l = 0; l < 4; l++) {
            int si = (int)(rnd() & 127);
            aux |= (uint32_t)si << (7 * l);
            for (int h = 0; h < 2; h++) {
                int gi = (int)(rnd() & 255);
                b->qs[8 * ib + 2 * l + h] = (uint8_t)gi;
                for (int j = 0; j < 4; j++)
                    want[32 * ib + 8 * l + 4 * h + j] =
                        iq_val(db, grid4(iq3xxs_grid[gi], j), ksigns_iq2xs[si], 4 * h + j);
            }
        }
        memcpy(b->qs + 64 + 4 * ib, &aux, 4);
    }
}

TEST(dequant_iq3_xxs) { check_built(MOEQ_TYPE_IQ3_XXS, build_iq3_xxs, NULL, NULL); }

static void build_iq3_s(void *blk, float *want)
{
    block_iq3_s *b = blk;
    b->d = moeq_f32_to_f16(0.5f);
    /* per 4: 9-bit grid index, low byte qs[k], bit 8 = bit k%8 of qh[k/8];
     * per 8: explicit sign byte; per 32: 4-bit scale, d * (1 + 2s) */
    for (int ib = 0; ib < 8; ib++) {
        int s = (3 * ib + 2) & 15;
        b->scales[ib / 2] |= (uint8_t)(s << (4 * (ib & 1)));
        float db = 0.5f * (1 + 2 * s);
        for (int l = 0; l < 4; l++) {
            int sg = (int)(rnd() & 255);
            b->signs[4 * ib + l] = (uint8_t)sg;
            for (int h = 0; h < 2; h++) {
                int k = 8 * ib + 2 * l + h, gi = (int)(rnd() & 511);
                b->qs[k] = (uint8_t)gi;
                b->qh[ib] |= (uint8_t)((gi >> 8) << (k % 8));
                for (int j = 0; j < 4; j++)
                    want[4 * k + j] = iq_val(db, grid4(iq3s_grid[gi], j), (unsigned)sg, 4 * h + j);
            }
        }
    }
}

TEST(dequant_iq3_s) { check_built(MOEQ_TYPE_IQ3_S, build_iq3_s, NULL, NULL); }

static void build_iq4_xs(void *blk, float *want)
{
    block_iq4_xs *b = blk;
    b->d = moeq_f32_to_f16(0.125f);
    /* per 32: 6-bit scale stored +32, low nibble in scales_l[ib/2] (low for
     * even ib), top 2 bits at 2*ib of scales_h; element j of the 32 in
     * nibble j/16 of qs[16*ib + j%16] */
    static const int ls[8] = { 0, 63, 32, 31, 33, 1, 47, 16 };
    for (int ib = 0; ib < 8; ib++) {
        b->scales_l[ib / 2] |= (uint8_t)((ls[ib] & 15) << (4 * (ib & 1)));
        b->scales_h |= (uint16_t)((ls[ib] >> 4) << (2 * ib));
        for (int j = 0; j < 32; j++) {
            int q = (int)(rnd() & 15);
            b->qs[16 * ib + j % 16] |= (uint8_t)(q << (4 * (j / 16)));
            want[32 * ib + j] = 0.125f * (ls[ib] - 32) * kvalues_iq4nl[q];
        }
    }
}

TEST(dequant_iq4_xs) { check_built(MOEQ_TYPE_IQ4_XS, build_iq4_xs, NULL, NULL); }

/* Two blocks in a row: the second must be read from its own offset. */
TEST(dequant_multiple_blocks)
{
    block_q4_K b[3];
    memset(b, 0, sizeof b);
    for (int i = 0; i < 3; i++) {
        b[i].d = moeq_f32_to_f16((float)(i + 1));
        k4_pack(b[i].scales, k4_sc, k4_mn);
        memset(b[i].qs, 0x11 * (i + 1), sizeof b[i].qs);
    }
    float y[768];
    decode(MOEQ_TYPE_Q4_K, b, y, 768);
    for (int i = 0; i < 3; i++)
        CHECKF(y[256 * i] == (float)((i + 1) * k4_sc[0] * (i + 1)), "block %d: %g", i, (double)y[256 * i]);
}

/* ------------------------------------------------ reference vectors */

/*
 * Decode one tensor of ../shared/testvectors/dequant/TYPE.gguf and compare
 * it bit for bit with the reference's own dequantization of it.
 */
static void check_vector(const char *type, const char *tensor)
{
    char rel[256];
    snprintf(rel, sizeof rel, "testvectors/dequant/%s.gguf", type);
    const char *gpath = test_shared_path(rel);
    char err[512];
    gguf_file *f = gguf_open(gpath, err, sizeof err);
    REQUIREF(f != NULL, "%s", err);

    int64_t ti = gguf_find_tensor(f, tensor);
    REQUIREF(ti >= 0, "%s: no tensor %s", gpath, tensor);
    const gguf_tensor *t = &f->tensors[ti];
    CHECKF(t->type == (uint32_t)moeq_type_from_name(type), "%s: %s has type %u", gpath, tensor, t->type);
    uint64_t n = t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
    REQUIRE(n == 65536);
    REQUIRE(t->nbytes == moeq_row_size((int)t->type, (int64_t)n));

    snprintf(rel, sizeof rel, "testvectors/dequant/%s__%s.f32", type, tensor);
    size_t wn = 0;
    float *want = test_read_file(test_shared_path(rel), &wn);
    REQUIREF(want != NULL && wn == n * sizeof(float), "%s: %zu bytes", rel, wn);

    float *got = malloc(n * sizeof(float));
    REQUIRE(got != NULL);
    REQUIRE(moeq_dequantize((int)t->type, t->data, got, (int64_t)n) == 0);
    char what[128];
    snprintf(what, sizeof what, "%s %s", type, tensor);
    check_same(got, want, (int)n, what);
    free(got);
    free(want);
    gguf_close(f);
}

static void check_type_vectors(const char *type)
{
    check_vector(type, "blk.0.attn_q.weight");
    check_vector(type, "blk.1.attn_output.weight");
}

TEST(dequant_ref_f16)     { check_type_vectors("F16"); }
TEST(dequant_ref_bf16)    { check_type_vectors("BF16"); }
TEST(dequant_ref_q4_0)    { check_type_vectors("Q4_0"); }
TEST(dequant_ref_q8_0)    { check_type_vectors("Q8_0"); }
TEST(dequant_ref_q2_K)    { check_type_vectors("Q2_K"); }
TEST(dequant_ref_q3_K)    { check_type_vectors("Q3_K"); }
TEST(dequant_ref_q4_K)    { check_type_vectors("Q4_K"); }
TEST(dequant_ref_q5_K)    { check_type_vectors("Q5_K"); }
TEST(dequant_ref_q6_K)    { check_type_vectors("Q6_K"); }
TEST(dequant_ref_iq2_xxs) { check_type_vectors("IQ2_XXS"); }
TEST(dequant_ref_iq2_xs)  { check_type_vectors("IQ2_XS"); }
TEST(dequant_ref_iq2_s)   { check_type_vectors("IQ2_S"); }
TEST(dequant_ref_iq3_xxs) { check_type_vectors("IQ3_XXS"); }
TEST(dequant_ref_iq3_s)   { check_type_vectors("IQ3_S"); }
TEST(dequant_ref_iq4_nl)  { check_type_vectors("IQ4_NL"); }
TEST(dequant_ref_iq4_xs)  { check_type_vectors("IQ4_XS"); }
