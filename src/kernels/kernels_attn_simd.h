/*
 * kernels_attn_simd.h: the SIMD attention kernels (KV row conversion,
 * scores, weighted V sums, exp) and the SwiGLU product, written once and
 * compiled into each SIMD ISA file: kernels_avx2.c and kernels_avx512.c
 * include it (and nothing else may), each after defining ATTN_RB_SCORES and
 * ATTN_RB_ACCUM, the query rows that share one load of K or V. It defines
 * static functions and the static table attn_simd (kernels_isa.h) that
 * the including file puts in its ISA table.
 *
 * Both compilations run the very same 256-bit operations in the same order
 * (AVX-512 only brings 32 registers, so more rows share each load), so they
 * give the same bits; the scalar reference is kernels_attn.c. The one
 * exception, the integer scores of Q8_0 K (attn_scores_q8), forms exact
 * integer sums by other instructions with VNNI, so its bits are the same
 * too, and equal the scalar reference's.
 */
#ifndef ATTN_RB_SCORES
#error "define ATTN_RB_SCORES and ATTN_RB_ACCUM before including kernels_attn_simd.h"
#endif

#include "kernels/kernels_isa.h"
#include "quant/quants.h"
#include "quant/quants_blocks.h"

#include <immintrin.h>
#include <math.h>
#include <string.h>

/*
 * Horizontal sums of four 8-lane vectors, each by the same tree:
 * ((x0 + x4) + (x2 + x6)) + ((x1 + x5) + (x3 + x7)). Results land in lanes
 * 0 (a), 4 (b), 2 (c) and 6 (d). Every addition has the operands a
 * one-vector reduction in this order would have, so the bits are the same
 * whichever four vectors travel together.
 */
static inline __m256 attn_hsum8x4(__m256 a, __m256 b, __m256 c, __m256 d)
{
    __m256 ab = _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
    __m256 cd = _mm256_add_ps(_mm256_permute2f128_ps(c, d, 0x20), _mm256_permute2f128_ps(c, d, 0x31));
    __m256 x = _mm256_add_ps(_mm256_shuffle_ps(ab, cd, 0x44), _mm256_shuffle_ps(ab, cd, 0xEE));
    return _mm256_add_ps(x, _mm256_movehdup_ps(x));
}

/* Store the four sums of attn_hsum8x4 (rows r, r+1 x positions p, p+1) times
 * scale, leaving out a second row or position that does not exist. */
static inline void attn_store4(__m256 s, float scale, float *sc, size_t ld, int two_r, int two_p)
{
    float t[8];
    _mm256_storeu_ps(t, s);
    sc[0] = t[0] * scale;
    if (two_p) sc[1] = t[4] * scale;
    if (two_r) {
        sc[ld] = t[2] * scale;
        if (two_p) sc[ld + 1] = t[6] * scale;
    }
}

#define UNROLL _Pragma("GCC unroll 8")
/* Keep a loaded value in a register: the compiler would otherwise fold the
 * load into each FMA that uses it, loading it again for every position. */
#define IN_REG(x) __asm__("" : "+v"(x))

/* F16 K: two accumulators per dot product (even and odd 8-lane chunks),
 * added before the reduction; d is a multiple of 16 (moeq_attn_pick).
 * ATTN_RB_SCORES rows by two positions at a time; a missing row or
 * position repeats the last one and is not stored. */
static void attn_scores_f16(const float *const *q, int nr, const float *k, const float *ks,
                            int np, int d, float scale, float *sc, size_t ld)
{
    (void)ks;
    for (int r = 0; r < nr; r += (ATTN_RB_SCORES)) {
        const float *qr[ATTN_RB_SCORES];
        UNROLL for (int rr = 0; rr < (ATTN_RB_SCORES); rr++) qr[rr] = q[r + rr < nr ? r + rr : nr - 1];
        for (int p = 0; p < np; p += 2) {
            const float *ka = k + (size_t)p * d;
            const float *kb = k + (size_t)(p + 1 < np ? p + 1 : p) * d;
            __m256 e0[ATTN_RB_SCORES][2], e1[ATTN_RB_SCORES][2];
            UNROLL for (int rr = 0; rr < (ATTN_RB_SCORES); rr++)
                e0[rr][0] = e0[rr][1] = e1[rr][0] = e1[rr][1] = _mm256_setzero_ps();
            for (int i = 0; i < d; i += 16) {
                __m256 u = _mm256_loadu_ps(ka + i), v = _mm256_loadu_ps(kb + i);
                UNROLL for (int rr = 0; rr < (ATTN_RB_SCORES); rr++) {
                    __m256 x = _mm256_loadu_ps(qr[rr] + i);
                    IN_REG(x);
                    e0[rr][0] = _mm256_fmadd_ps(x, u, e0[rr][0]);
                    e0[rr][1] = _mm256_fmadd_ps(x, v, e0[rr][1]);
                }
                u = _mm256_loadu_ps(ka + i + 8);
                v = _mm256_loadu_ps(kb + i + 8);
                UNROLL for (int rr = 0; rr < (ATTN_RB_SCORES); rr++) {
                    __m256 x = _mm256_loadu_ps(qr[rr] + i + 8);
                    IN_REG(x);
                    e1[rr][0] = _mm256_fmadd_ps(x, u, e1[rr][0]);
                    e1[rr][1] = _mm256_fmadd_ps(x, v, e1[rr][1]);
                }
            }
            UNROLL for (int rr = 0; rr < (ATTN_RB_SCORES); rr += 2) {
                if (r + rr >= nr) break;
                __m256 s = attn_hsum8x4(_mm256_add_ps(e0[rr][0], e1[rr][0]),
                                   _mm256_add_ps(e0[rr][1], e1[rr][1]),
                                   _mm256_add_ps(e0[rr + 1][0], e1[rr + 1][0]),
                                   _mm256_add_ps(e0[rr + 1][1], e1[rr + 1][1]));
                attn_store4(s, scale, sc + (size_t)(r + rr) * ld + p, ld, r + rr + 1 < nr,
                       p + 1 < np);
            }
        }
    }
}

/* out[r + rr][i .. i + 8 NC) += weight(r + rr, p) * v[p][i ..) for p in
 * order, R rows at a time, the outputs held in registers across positions. */
#define ACC_BLOCK(R, NC, WEIGHT)                                                           \
    do {                                                                                   \
        __m256 acc[R][NC];                                                                 \
        UNROLL for (int rr = 0; rr < (R); rr++)                                            \
            UNROLL for (int c = 0; c < (NC); c++)                                          \
                acc[rr][c] = _mm256_loadu_ps(out[r + rr] + i + 8 * c);                     \
        for (int p = 0; p < np; p++) {                                                     \
            __m256 x[NC];                                                                  \
            UNROLL for (int c = 0; c < (NC); c++) {                                        \
                x[c] = _mm256_loadu_ps(v + (size_t)p * d + i + 8 * c);                     \
                IN_REG(x[c]);                                                              \
            }                                                                              \
            UNROLL for (int rr = 0; rr < (R); rr++) {                                      \
                __m256 wp = _mm256_set1_ps(WEIGHT(r + rr, p));                             \
                UNROLL for (int c = 0; c < (NC); c++)                                      \
                    acc[rr][c] = _mm256_fmadd_ps(wp, x[c], acc[rr][c]);                    \
            }                                                                              \
        }                                                                                  \
        UNROLL for (int rr = 0; rr < (R); rr++)                                            \
            UNROLL for (int c = 0; c < (NC); c++)                                          \
                _mm256_storeu_ps(out[r + rr] + i + 8 * c, acc[rr][c]);                     \
    } while (0)

/* F16 V: out = fma(w, v, out) per lane; d is a multiple of 16. */
#define W_F16(row, p) w[(size_t)(row) * ld + (p)]
static void attn_accum_f16(float *const *out, int nr, const float *w, size_t ld,
                           const float *v, const float *vs, int np, int d)
{
    (void)vs;
    int r = 0;
    for (; r + (ATTN_RB_ACCUM) <= nr; r += (ATTN_RB_ACCUM)) {
        int i = 0;
        for (; i + 32 <= d; i += 32) ACC_BLOCK(ATTN_RB_ACCUM, 4, W_F16);
        for (; i < d; i += 16) ACC_BLOCK(ATTN_RB_ACCUM, 2, W_F16);
    }
    for (; r < nr; r++) {
        int i = 0;
        for (; i + 32 <= d; i += 32) ACC_BLOCK(1, 4, W_F16);
        for (; i < d; i += 16) ACC_BLOCK(1, 2, W_F16);
    }
}

/* Q8_0 V: the weight times the block scale first (one float multiply),
 * then out = fma(that, int8 value, out) per lane; i walks whole blocks. */
#define W_Q8_0(row, p) (w[(size_t)(row) * ld + (p)] * vs[(p) * nb + i / QK8_0])
static void attn_accum_q8_0(float *const *out, int nr, const float *w, size_t ld,
                            const float *v, const float *vs, int np, int d)
{
    const int nb = d / QK8_0;
    int r = 0;
    for (; r + (ATTN_RB_ACCUM) <= nr; r += (ATTN_RB_ACCUM))
        for (int i = 0; i < d; i += 32) ACC_BLOCK(ATTN_RB_ACCUM, 4, W_Q8_0);
    for (; r < nr; r++)
        for (int i = 0; i < d; i += 32) ACC_BLOCK(1, 4, W_Q8_0);
}

#undef ACC_BLOCK
#undef W_F16
#undef W_Q8_0
#undef UNROLL
#undef IN_REG

/*
 * x[p] = exp(x[p] - m), eight at a time: 2^n e^r with n = round(y / ln 2),
 * r = y - n ln 2 (ln 2 split in two so r is nearly exact, |r| <= ln 2 / 2)
 * and e^r by its Taylor polynomial to r^7 (truncation below 1e-8
 * relative), 2^n added to the exponent field. Within about an ulp of
 * expf, and the same bits for a value wherever it sits in the row (a short
 * tail goes through the same code in a padded buffer). y below -87.3
 * (results that would be subnormal) gives 0; NaN stays NaN.
 */
static inline __m256 attn_exp8(__m256 y)
{
    const __m256 log2e = _mm256_set1_ps(1.44269504f);
    const __m256 ln2_hi = _mm256_set1_ps(0.693145751953125f);   /* 12 significant bits */
    const __m256 ln2_lo = _mm256_set1_ps(1.428606765330187e-06f);
    __m256 n = _mm256_round_ps(_mm256_mul_ps(y, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, ln2_hi, y);
    r = _mm256_fnmadd_ps(n, ln2_lo, r);
    __m256 p = _mm256_set1_ps(1.0f / 5040);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    __m256 under = _mm256_cmp_ps(y, _mm256_set1_ps(-87.3f), _CMP_LT_OQ);
    __m256 big = _mm256_cmp_ps(y, _mm256_set1_ps(88.0f), _CMP_GT_OQ);
    n = _mm256_min_ps(_mm256_max_ps(n, _mm256_set1_ps(-126.0f)), _mm256_set1_ps(127.0f));
    __m256i e = _mm256_slli_epi32(_mm256_cvtps_epi32(n), 23);
    __m256 v = _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), e));
    v = _mm256_andnot_ps(under, v);
    v = _mm256_blendv_ps(v, _mm256_set1_ps(INFINITY), big);
    return _mm256_blendv_ps(v, y, _mm256_cmp_ps(y, y, _CMP_UNORD_Q));
}

static void attn_exp_shift(float *x, int n, float m)
{
    const __m256 vm = _mm256_set1_ps(m);
    int p = 0;
    for (; p + 8 <= n; p += 8)
        _mm256_storeu_ps(x + p, attn_exp8(_mm256_sub_ps(_mm256_loadu_ps(x + p), vm)));
    if (p < n) {
        float t[8] = { 0 };
        memcpy(t, x + p, (size_t)(n - p) * sizeof *t);
        _mm256_storeu_ps(t, attn_exp8(_mm256_sub_ps(_mm256_loadu_ps(t), vm)));
        memcpy(x + p, t, (size_t)(n - p) * sizeof *t);
    }
}

/*
 * The expert hidden rows, g[i] = silu(g[i]) * u[i], a sizeable share of a
 * prompt's time with a libm expf per element: attn_exp8 eight at a time, the
 * tail through the same code in a padded buffer, so a value does not
 * depend on where it sits in the row.
 */
static void attn_silu_mul(float *g, const float *u, size_t n)
{
    const __m256 one = _mm256_set1_ps(1.0f);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 x = _mm256_loadu_ps(g + i);
        __m256 e = attn_exp8(_mm256_sub_ps(_mm256_setzero_ps(), x));
        _mm256_storeu_ps(g + i, _mm256_mul_ps(_mm256_div_ps(x, _mm256_add_ps(one, e)), _mm256_loadu_ps(u + i)));
    }
    if (i < n) {
        float tg[8] = { 0 }, tu[8] = { 0 };
        memcpy(tg, g + i, (n - i) * sizeof *tg);
        memcpy(tu, u + i, (n - i) * sizeof *tu);
        attn_silu_mul(tg, tu, 8);
        memcpy(g + i, tg, (n - i) * sizeof *tg);
    }
}

/* A cached Q8_0 row ATTN_PF_ROWS positions ahead is asked for while this
 * one is read (one head's rows lie a whole cache row, every KV head of a
 * position, apart): 14% less time in attention for one token over 4096
 * cached positions out of memory, measured when K rows went through the
 * conversion too (8 query heads per KV head, AMD EPYC Zen 4; 8, 16 and 32
 * rows ahead measured alike). F16 rows showed no gain and are not
 * prefetched. A prefetch past the cache's end is harmless: prefetches do
 * not fault. */
#define ATTN_PF_ROWS 16
static inline void attn_prefetch_row(const uint8_t *p, size_t len)
{
    for (size_t o = 0; o < len + 63; o += 64) _mm_prefetch((const char *)p + o, _MM_HINT_T0);
}

/* Cached rows to f32: deliberate ISA twins of the scalar cvt_f16 and
 * cvt_q8_0 in kernels_attn.c, eight values per store. */
static void attn_cvt_f16(const uint8_t *src, size_t stride, int n, int d, float *dst, float *ds)
{
    (void)ds;
    for (int p = 0; p < n; p++) {
        const uint16_t *h = (const uint16_t *)(src + (size_t)p * stride);
        for (int i = 0; i < d; i += 8)
            _mm256_storeu_ps(dst + (size_t)p * d + i,
                             _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i))));
    }
}

static void attn_cvt_q8_0(const uint8_t *src, size_t stride, int n, int d, float *dst, float *ds)
{
    const int nb = d / QK8_0;
    for (int p = 0; p < n; p++) {
        attn_prefetch_row(src + (size_t)(p + ATTN_PF_ROWS) * stride, (size_t)nb * sizeof(block_q8_0));
        const block_q8_0 *b = (const block_q8_0 *)(src + (size_t)p * stride);
        for (int j = 0; j < nb; j++) {
            ds[p * nb + j] = moeq_f16_to_f32(b[j].d);
            for (int i = 0; i < QK8_0; i += 8) {
                __m128i q8 = _mm_loadl_epi64((const __m128i *)(b[j].qs + i));
                _mm256_storeu_ps(dst + (size_t)p * d + j * QK8_0 + i,
                                 _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q8)));
            }
        }
    }
}

/*
 * Q8_0 K against query rows quantized to Q8_0 (kernels.h scores_q8), eight
 * rows at a time with a row per lane for the float steps; a missing row
 * repeats the last one and is not stored. The block sums are exact
 * integers however they are formed: with AVX-512 VNNI one dpbusd per row
 * on K + 128 (unsigned) against the query (signed), less 128 times the
 * query block's sum; with AVX2 the sign trick (|k| times q with k's signs,
 * maddubs then madd; no pair of products exceeds 16 bits). So both
 * compilations, and the scalar reference, give the same bits.
 */

/* Lane i: the sum of the eight lanes of v[i]. */
static inline __m256i attn_hsum8x8_epi32(const __m256i v[8])
{
    __m256i t0 = _mm256_hadd_epi32(v[0], v[1]), t1 = _mm256_hadd_epi32(v[2], v[3]);
    __m256i t2 = _mm256_hadd_epi32(v[4], v[5]), t3 = _mm256_hadd_epi32(v[6], v[7]);
    __m256i u0 = _mm256_hadd_epi32(t0, t1), u1 = _mm256_hadd_epi32(t2, t3);
    return _mm256_add_epi32(_mm256_permute2x128_si256(u0, u1, 0x20), _mm256_permute2x128_si256(u0, u1, 0x31));
}

static void attn_scores_q8(const void *const *q, int nr, const uint8_t *k, size_t stride, int np, int d,
                           float scale, float *sc, size_t ld)
{
    const int nb = d / QK8_0;   /* at most ATTN_Q8_MAXB (moeq_attn_pick) */
    const size_t rowlen = (size_t)nb * sizeof(block_q8_0);
    for (int r = 0; r < nr; r += 8) {
        const block_q8_0 *qr[8];
        for (int rr = 0; rr < 8; rr++) qr[rr] = q[r + rr < nr ? r + rr : nr - 1];
        __m256 dq[ATTN_Q8_MAXB];
        for (int j = 0; j < nb; j++) {
            float t[8];
            for (int rr = 0; rr < 8; rr++) t[rr] = _cvtsh_ss(qr[rr][j].d);
            dq[j] = _mm256_loadu_ps(t);
        }
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
        /* 128 times each query block's sum, taken back off K + 128's */
        __m256i corr[ATTN_Q8_MAXB];
        for (int j = 0; j < nb; j++) {
            int32_t u[8];
            for (int rr = 0; rr < 8; rr++) {
                int32_t sum = 0;
                for (int i = 0; i < QK8_0; i++) sum += qr[rr][j].qs[i];
                u[rr] = 128 * sum;
            }
            corr[j] = _mm256_loadu_si256((const __m256i *)u);
        }
#endif
        for (int p = 0; p < np; p++) {
            const block_q8_0 *kp = (const block_q8_0 *)(k + (size_t)p * stride);
            attn_prefetch_row((const uint8_t *)kp + ATTN_PF_ROWS * stride, rowlen);
            __m256 acc = _mm256_setzero_ps();
            for (int j = 0; j < nb; j++) {
                const __m256i kv = _mm256_loadu_si256((const __m256i *)kp[j].qs);
                __m256i s8[8];
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
                const __m256i ku = _mm256_xor_si256(kv, _mm256_set1_epi8((char)0x80));
                _Pragma("GCC unroll 8") for (int rr = 0; rr < 8; rr++)
                    s8[rr] = _mm256_dpbusd_epi32(_mm256_setzero_si256(), ku,
                                                 _mm256_loadu_si256((const __m256i *)qr[rr][j].qs));
                const __m256i S = _mm256_sub_epi32(attn_hsum8x8_epi32(s8), corr[j]);
#else
                const __m256i ka = _mm256_sign_epi8(kv, kv), ones = _mm256_set1_epi16(1);
                _Pragma("GCC unroll 8") for (int rr = 0; rr < 8; rr++) {
                    __m256i qs = _mm256_loadu_si256((const __m256i *)qr[rr][j].qs);
                    s8[rr] = _mm256_madd_epi16(_mm256_maddubs_epi16(ka, _mm256_sign_epi8(qs, kv)), ones);
                }
                const __m256i S = attn_hsum8x8_epi32(s8);
#endif
                acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(S), _mm256_mul_ps(dq[j], _mm256_set1_ps(_cvtsh_ss(kp[j].d))),
                                      acc);
            }
            float t[8];
            _mm256_storeu_ps(t, _mm256_mul_ps(acc, _mm256_set1_ps(scale)));
            for (int rr = 0; rr < 8 && r + rr < nr; rr++) sc[(size_t)(r + rr) * ld + p] = t[rr];
        }
    }
}

static const struct moeq_attn_simd attn_simd = {
    .f16       = { attn_cvt_f16, attn_scores_f16, attn_accum_f16 },
    .q8_0      = { attn_cvt_q8_0, NULL, attn_accum_q8_0 },   /* K: scores_q8 */
    .scores_q8 = attn_scores_q8,
    .exp_shift = attn_exp_shift,
    .silu_mul  = attn_silu_mul,
};
