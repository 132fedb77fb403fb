/*
 * kernels_avx512.c: AVX-512 (F/BW/VL/DQ + VNNI) twins of the scalar
 * kernels in kernels.c, one row kernel per type.
 *
 * Every kernel computes one weight row against up to MOEQ_GEMM_NC
 * activation columns. Per super-block the weight side is unpacked once into
 * registers: four 64-byte vectors of unsigned 8-bit magnitudes, a 64-bit
 * sign mask per vector where the format has explicit signs, and a vector of
 * per-lane integer scales. Each column then costs, per 64 weights, a load,
 * a masked negate of the activations (the signs go on the activation side
 * because VNNI's dpbusd multiplies unsigned by signed bytes), one dpbusd
 * into a fresh accumulator, and one dpwssd that multiplies each 4-byte
 * partial sum by its sub-block scale and adds it to the block's sum. That
 * last trick relies on every partial sum fitting in 16 bits (true for all
 * formats here: at most 4 * 63 * 127) and on the scale lanes having a zero
 * upper half. Q8_K activations never hold -128, so the negate is exact.
 * Mins and constant offsets (Q4_K, Q5_K, Q6_K) use the activations' bsums.
 */
#include "kernels_isa.h"
#include "quants.h"
#include "quants_blocks.h"

#include <immintrin.h>
#include <string.h>

#define AI static inline __attribute__((always_inline))

AI float h2f(ggml_half h) { return _cvtsh_ss(h); }

AI const block_q8_K *q8k_col(const void *a, size_t as, int c, int64_t b)
{
    return (const block_q8_K *)((const uint8_t *)a + (size_t)c * as) + b;
}

AI uint64_t load_u64(const void *p) { uint64_t v; memcpy(&v, p, 8); return v; }

/* Byte i of vector k holds sub-block 4k + i/4: spreads 16 per-16 scales
 * over the 16 dword lanes of the k-th 64-weight vector. */
static const uint8_t spread16[4][16] = {
    { 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3 },
    { 4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7 },
    { 8, 8, 8, 8, 9, 9, 9, 9, 10, 10, 10, 10, 11, 11, 11, 11 },
    { 12, 12, 12, 12, 13, 13, 13, 13, 14, 14, 14, 14, 15, 15, 15, 15 },
};

/*
 * The per-column inner step shared by the 256-element formats: the block
 * sum of sub-block-scaled integer dot products, as 16 int32 lanes.
 */
AI __m512i block_isum(const block_q8_K *y, const __m512i wv[4], const __mmask64 sg[4],
                      const __m512i sc[4], int has_signs)
{
    const __m512i zero = _mm512_setzero_si512();
    __m512i isum = zero;
#pragma GCC unroll 16
    for (int k = 0; k < 4; k++) {
        __m512i q = _mm512_loadu_si512((const void *)(y->qs + 64 * k));
        if (has_signs) q = _mm512_mask_sub_epi8(q, sg[k], zero, q);
        __m512i dp = _mm512_dpbusd_epi32(zero, wv[k], q);
        isum = _mm512_dpwssd_epi32(isum, dp, sc[k]);
    }
    return isum;
}

AI void store_sums(const __m512 *acc, int NC, float *s, size_t ss)
{
#pragma GCC unroll 16
    for (int c = 0; c < NC; c++) s[(size_t)c * ss] = _mm512_reduce_add_ps(acc[c]);
}

/* ------------------------------------------------------------- IQ2_S */

AI void k_iq2_s(int64_t n, const void *w, const void *a, size_t as, const int NC, float *s, size_t ss)
{
    const block_iq2_s *x = w;
    __m512 acc[MOEQ_GEMM_NC];
#pragma GCC unroll 16
    for (int c = 0; c < NC; c++) acc[c] = _mm512_setzero_ps();
    const __m128i m4 = _mm_set1_epi8(0x0f);
    for (int64_t b = 0; b < n / QK_K; b++) {
        const block_iq2_s *xb = x + b;
        __m512i wv[4], sc[4];
        __mmask64 sg[4];
        __m128i s8 = _mm_loadl_epi64((const __m128i *)xb->scales);
        __m128i ls = _mm_unpacklo_epi8(_mm_and_si128(s8, m4), _mm_and_si128(_mm_srli_epi16(s8, 4), m4));
        ls = _mm_add_epi8(_mm_add_epi8(ls, ls), _mm_set1_epi8(1));
#pragma GCC unroll 16
        for (int k = 0; k < 4; k++) {
            /* grid index: 8 low bits from qs, 2 high bits from qh. Eight
             * scalar loads beat a gather here, and beat building the
             * indices in a vector and storing them for the loads. */
            const uint8_t *q8 = xb->qs + 8 * k;
            uint32_t h0 = xb->qh[2 * k], h1 = xb->qh[2 * k + 1];
            wv[k] = _mm512_set_epi64(
                (long long)iq2s_grid[q8[7] | (h1 << 2 & 0x300)], (long long)iq2s_grid[q8[6] | (h1 << 4 & 0x300)],
                (long long)iq2s_grid[q8[5] | (h1 << 6 & 0x300)], (long long)iq2s_grid[q8[4] | (h1 << 8 & 0x300)],
                (long long)iq2s_grid[q8[3] | (h0 << 2 & 0x300)], (long long)iq2s_grid[q8[2] | (h0 << 4 & 0x300)],
                (long long)iq2s_grid[q8[1] | (h0 << 6 & 0x300)], (long long)iq2s_grid[q8[0] | (h0 << 8 & 0x300)]);
            sg[k] = load_u64(xb->qs + QK_K / 8 + 8 * k);
            sc[k] = _mm512_cvtepu8_epi32(_mm_shuffle_epi8(ls, _mm_loadu_si128((const __m128i *)spread16[k])));
        }
        const float d = h2f(xb->d) * 0.125f;
#pragma GCC unroll 16
        for (int c = 0; c < NC; c++) {
            const block_q8_K *y = q8k_col(a, as, c, b);
            __m512i isum = block_isum(y, wv, sg, sc, 1);
            acc[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_set1_ps(d * y->d), acc[c]);
        }
    }
    store_sums(acc, NC, s, ss);
}

/* ------------------------------------------------------------- IQ3_S */

AI void k_iq3_s(int64_t n, const void *w, const void *a, size_t as, const int NC, float *s, size_t ss)
{
    const block_iq3_s *x = w;
    __m512 acc[MOEQ_GEMM_NC];
#pragma GCC unroll 16
    for (int c = 0; c < NC; c++) acc[c] = _mm512_setzero_ps();
    const __m512i bit8 = _mm512_set1_epi32(256);
    for (int64_t b = 0; b < n / QK_K; b++) {
        const block_iq3_s *xb = x + b;
        __m512i wv[4], sc[4];
        __mmask64 sg[4];
#pragma GCC unroll 16
        for (int k = 0; k < 4; k++) {
            /* 16 grid entries of 4 bytes: 8 index bits from qs, the 9th from qh */
            __m512i idx = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(xb->qs + 16 * k)));
            __mmask16 h = (__mmask16)(xb->qh[2 * k] | (unsigned)xb->qh[2 * k + 1] << 8);
            idx = _mm512_mask_or_epi32(idx, h, idx, bit8);
            wv[k] = _mm512_i32gather_epi32(idx, (const void *)iq3s_grid, 4);
            sg[k] = load_u64(xb->signs + 8 * k);
            int s0 = 2 * (xb->scales[k] & 0xf) + 1, s1 = 2 * (xb->scales[k] >> 4) + 1;
            sc[k] = _mm512_mask_blend_epi32(0xff00, _mm512_set1_epi32(s0), _mm512_set1_epi32(s1));
        }
        const float d = h2f(xb->d);
#pragma GCC unroll 16
        for (int c = 0; c < NC; c++) {
            const block_q8_K *y = q8k_col(a, as, c, b);
            __m512i isum = block_isum(y, wv, sg, sc, 1);
            acc[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_set1_ps(d * y->d), acc[c]);
        }
    }
    store_sums(acc, NC, s, ss);
}

/* ------------------------------------------------------- Q4_K / Q5_K */

/*
 * The eight 6-bit scales (bytes 0..7) and mins (bytes 8..15) of a Q4_K /
 * Q5_K block, unpacked with 32-bit masks: scales 0..3 and mins 0..3 are the
 * low 6 bits of bytes 0..3 / 4..7; scales and mins 4..7 take their low 4
 * bits from the nibbles of bytes 8..11 and their top 2 bits from the spare
 * top bits of bytes 0..3 / 4..7.
 */
AI __m128i k4_scales(const uint8_t *q)
{
    uint32_t u0, u1, u2;
    memcpy(&u0, q, 4);
    memcpy(&u1, q + 4, 4);
    memcpy(&u2, q + 8, 4);
    uint32_t sc_lo = u0 & 0x3f3f3f3fu, mn_lo = u1 & 0x3f3f3f3fu;
    uint32_t sc_hi = (u2 & 0x0f0f0f0fu) | ((u0 >> 2) & 0x30303030u);
    uint32_t mn_hi = ((u2 >> 4) & 0x0f0f0f0fu) | ((u1 >> 2) & 0x30303030u);
    return _mm_set_epi32((int)mn_hi, (int)mn_lo, (int)sc_hi, (int)sc_lo);
}

/* Byte i of pattern p selects scale 2p + i/8: lanes 0..7 of the p-th
 * 64-weight vector belong to sub-block 2p, lanes 8..15 to 2p + 1. */
static const uint8_t spread32[4][16] = {
    { 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1 },
    { 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3 },
    { 4, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 5, 5, 5 },
    { 6, 6, 6, 6, 6, 6, 6, 6, 7, 7, 7, 7, 7, 7, 7, 7 },
};
/* Bytes 8 + g/2: the min of each 16-element bsum group. */
static const uint8_t mins_pairs[16] = { 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15 };

AI void k_q45_K(int64_t n, const void *w, const void *a, size_t as, const int NC, float *s, size_t ss,
                const int five)
{
    const uint8_t *x = w;
    const size_t bsize = five ? sizeof(block_q5_K) : sizeof(block_q4_K);
    __m512 acc[MOEQ_GEMM_NC];
#pragma GCC unroll 16
    for (int c = 0; c < NC; c++) acc[c] = _mm512_setzero_ps();
    const __m512i m4 = _mm512_set1_epi8(0x0f), one = _mm512_set1_epi8(1);
    for (int64_t b = 0; b < n / QK_K; b++) {
        /* Q4_K and Q5_K share the header layout; Q5_K adds qh before qs */
        const block_q5_K *x5 = (const block_q5_K *)(x + b * bsize);
        const block_q4_K *x4 = (const block_q4_K *)(x + b * bsize);
        const uint8_t *qs = five ? x5->qs : x4->qs;
        __m128i scmn = k4_scales(x4->scales);
        __m512i wv[4], sc[4];
        __mmask64 none[4] = { 0, 0, 0, 0 };
        __m512i hb = five ? _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)x5->qh)) : m4;
#pragma GCC unroll 16
        for (int p = 0; p < 4; p++) {
            /* 32 bytes hold sub-block 2p (low nibbles) and 2p+1 (high) */
            __m512i q = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(qs + 32 * p)));
            q = _mm512_mask_srli_epi16(q, 0xffff0000u, q, 4);
            wv[p] = _mm512_and_si512(q, m4);
            if (five) {
                /* the 5th bit of element e is bit e/32 of qh[e % 32] */
                __m512i h = _mm512_mask_srli_epi16(hb, 0xffff0000u, hb, 1);
                h = _mm512_and_si512(_mm512_srli_epi16(h, 2 * p), one);
                wv[p] = _mm512_or_si512(wv[p], _mm512_slli_epi16(h, 4));
            }
            sc[p] = _mm512_cvtepu8_epi32(_mm_shuffle_epi8(scmn, _mm_loadu_si128((const __m128i *)spread32[p])));
        }
        /* mins as 16 int16 lanes, one per bsum (two per sub-block of 32) */
        __m256i mins = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(scmn, _mm_loadu_si128((const __m128i *)mins_pairs)));
        const float d = h2f(x4->d), dmin = h2f(x4->dmin);
#pragma GCC unroll 16
        for (int c = 0; c < NC; c++) {
            const block_q8_K *y = q8k_col(a, as, c, b);
            __m512i isum = block_isum(y, wv, none, sc, 0);
            __m256i msum = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)y->bsums), mins);
            acc[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_set1_ps(d * y->d), acc[c]);
            acc[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_zextsi256_si512(msum)),
                                     _mm512_set1_ps(-dmin * y->d), acc[c]);
        }
    }
    store_sums(acc, NC, s, ss);
}

AI void k_q4_K(int64_t n, const void *w, const void *a, size_t as, const int NC, float *s, size_t ss)
{ k_q45_K(n, w, a, as, NC, s, ss, 0); }
AI void k_q5_K(int64_t n, const void *w, const void *a, size_t as, const int NC, float *s, size_t ss)
{ k_q45_K(n, w, a, as, NC, s, ss, 1); }

/* -------------------------------------------------------------- Q6_K */

AI void k_q6_K(int64_t n, const void *w, const void *a, size_t as, const int NC, float *s, size_t ss)
{
    const block_q6_K *x = w;
    __m512 acc[MOEQ_GEMM_NC];
#pragma GCC unroll 16
    for (int c = 0; c < NC; c++) acc[c] = _mm512_setzero_ps();
    const __m512i m4 = _mm512_set1_epi8(0x0f), m2 = _mm512_set1_epi8(0x03);
    const __m512i lo16 = _mm512_set1_epi32(0xffff);
    for (int64_t b = 0; b < n / QK_K; b++) {
        const block_q6_K *xb = x + b;
        __m512i wv[4], sc[4];
        __mmask64 none[4] = { 0, 0, 0, 0 };
#pragma GCC unroll 16
        for (int h = 0; h < 2; h++) {
            /* 64 ql bytes: low nibbles are elements 0..63 of this half,
             * high nibbles 64..127; qh supplies 2 bits at shifts 0/2/4/6 */
            __m512i ql = _mm512_loadu_si512((const void *)(xb->ql + 64 * h));
            __m512i qh = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(xb->qh + 32 * h)));
            qh = _mm512_mask_srli_epi16(qh, 0xffff0000u, qh, 2);
            wv[2 * h] = _mm512_or_si512(_mm512_and_si512(ql, m4),
                                        _mm512_slli_epi16(_mm512_and_si512(qh, m2), 4));
            wv[2 * h + 1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4), m4),
                                            _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(qh, 4), m2), 4));
        }
        __m128i sc8 = _mm_loadu_si128((const __m128i *)xb->scales);
#pragma GCC unroll 16
        for (int k = 0; k < 4; k++)
            sc[k] = _mm512_and_si512(_mm512_cvtepi8_epi32(_mm_shuffle_epi8(sc8, _mm_loadu_si128((const __m128i *)spread16[k]))), lo16);
        /* weights are stored +32: subtract 32 * scale * bsum per sub-block */
        __m256i off = _mm256_sub_epi16(_mm256_setzero_si256(), _mm256_slli_epi16(_mm256_cvtepi8_epi16(sc8), 5));
        const float d = h2f(xb->d);
#pragma GCC unroll 16
        for (int c = 0; c < NC; c++) {
            const block_q8_K *y = q8k_col(a, as, c, b);
            __m512i isum = block_isum(y, wv, none, sc, 0);
            __m256i corr = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)y->bsums), off);
            isum = _mm512_add_epi32(isum, _mm512_zextsi256_si512(corr));
            acc[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_set1_ps(d * y->d), acc[c]);
        }
    }
    store_sums(acc, NC, s, ss);
}

/* ---------------------------------------- Q8_0, Q4_0, IQ4_NL (vs Q8_0) */

/*
 * The 32 signed weights of one block: Q8_0 stores them, Q4_0 stores
 * nibbles offset by 8, IQ4_NL nibbles indexing a 16-entry codebook (one
 * byte shuffle). Low nibbles are elements 0..15, high nibbles 16..31.
 */
AI __m256i load_w32(const uint8_t *blk, const int kind)
{
    if (kind == 0) return _mm256_loadu_si256((const __m256i *)(blk + 2));
    __m128i q = _mm_loadu_si128((const __m128i *)(blk + 2));
    const __m128i m4 = _mm_set1_epi8(0x0f);
    __m256i nib = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(q, 4), m4), _mm_and_si128(q, m4));
    if (kind == 1) return _mm256_sub_epi8(nib, _mm256_set1_epi8(8));
    __m256i tab = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)kvalues_iq4nl));
    return _mm256_shuffle_epi8(tab, nib);
}

AI void k_b32(int64_t n, const void *w, const void *a, size_t as, const int NC, float *s, size_t ss,
              const int kind)
{
    const uint8_t *x = w;
    const size_t bsize = kind == 0 ? sizeof(block_q8_0) : sizeof(block_q4_0);
    __m256 acc[MOEQ_GEMM_NC];
#pragma GCC unroll 16
    for (int c = 0; c < NC; c++) acc[c] = _mm256_setzero_ps();
    const __m256i zero = _mm256_setzero_si256();
    for (int64_t b = 0; b < n / QK8_0; b++) {
        /* signed x signed: |w| as the unsigned operand, w's sign on the activation */
        const uint8_t *blk = x + b * bsize;
        __m256i wq = load_w32(blk, kind);
        __mmask32 neg = _mm256_movepi8_mask(wq);
        __m256i wabs = _mm256_abs_epi8(wq);
        ggml_half dh;
        memcpy(&dh, blk, 2);
        const float dw = h2f(dh);
#pragma GCC unroll 16
        for (int c = 0; c < NC; c++) {
            const block_q8_0 *y = (const block_q8_0 *)((const uint8_t *)a + (size_t)c * as) + b;
            __m256i q = _mm256_loadu_si256((const __m256i *)y->qs);
            q = _mm256_mask_sub_epi8(q, neg, zero, q);
            __m256i dp = _mm256_dpbusd_epi32(zero, wabs, q);
            acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dp), _mm256_set1_ps(dw * h2f(y->d)), acc[c]);
        }
    }
    for (int c = 0; c < NC; c++) {
        __m128 v = _mm_add_ps(_mm256_castps256_ps128(acc[c]), _mm256_extractf128_ps(acc[c], 1));
        v = _mm_add_ps(v, _mm_movehl_ps(v, v));
        v = _mm_add_ss(v, _mm_movehdup_ps(v));
        s[(size_t)c * ss] = _mm_cvtss_f32(v);
    }
}

AI void k_q8_0(int64_t n, const void *w, const void *a, size_t as, const int NC, float *s, size_t ss)
{ k_b32(n, w, a, as, NC, s, ss, 0); }
AI void k_q4_0(int64_t n, const void *w, const void *a, size_t as, const int NC, float *s, size_t ss)
{ k_b32(n, w, a, as, NC, s, ss, 1); }
AI void k_iq4_nl(int64_t n, const void *w, const void *a, size_t as, const int NC, float *s, size_t ss)
{ k_b32(n, w, a, as, NC, s, ss, 2); }

/* ------------------------------------- the other 256-element formats */

/*
 * Q2_K, Q3_K, IQ2_XXS, IQ2_XS, IQ3_XXS and IQ4_XS: the scalar reference
 * unpacks a block into signed bytes and integer scales and mins, and the
 * vector code does the rest. Values reach 127 here (IQ4_XS), so a 4-byte
 * partial sum can pass 16 bits and the scales are applied with a 32-bit
 * multiply instead of dpwssd.
 */
AI void k_unpacked(int64_t n, const void *w, const void *a, size_t as, const int NC, float *s, size_t ss,
                   int wtype, size_t bsize)
{
    const uint8_t *x = w;
    moeq_unpack_fn unpack = moeq_unpack_for(wtype);
    struct moeq_unpacked u;
    __m512 acc[MOEQ_GEMM_NC];
#pragma GCC unroll 16
    for (int c = 0; c < NC; c++) acc[c] = _mm512_setzero_ps();
    const __m512i zero = _mm512_setzero_si512();
    for (int64_t b = 0; b < n / QK_K; b++) {
        unpack(x + b * bsize, &u);
        __m512i wv[4], sc[4];
        __mmask64 sg[4];
        __m512i scv = _mm512_loadu_si512((const void *)u.sc);
        __m256i mins = _mm512_cvtepi32_epi16(_mm512_loadu_si512((const void *)u.mn));
#pragma GCC unroll 16
        for (int k = 0; k < 4; k++) {
            __m512i q = _mm512_loadu_si512((const void *)(u.q + 64 * k));
            sg[k] = _mm512_movepi8_mask(q);
            wv[k] = _mm512_abs_epi8(q);
            sc[k] = _mm512_permutexvar_epi32(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)spread16[k])), scv);
        }
#pragma GCC unroll 16
        for (int c = 0; c < NC; c++) {
            const block_q8_K *y = q8k_col(a, as, c, b);
            __m512i isum = zero;
#pragma GCC unroll 16
            for (int k = 0; k < 4; k++) {
                __m512i q = _mm512_loadu_si512((const void *)(y->qs + 64 * k));
                q = _mm512_mask_sub_epi8(q, sg[k], zero, q);
                isum = _mm512_add_epi32(isum, _mm512_mullo_epi32(_mm512_dpbusd_epi32(zero, wv[k], q), sc[k]));
            }
            acc[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_set1_ps(u.d * y->d), acc[c]);
            if (u.dmin != 0) {
                __m256i msum = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)y->bsums), mins);
                acc[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_zextsi256_si512(msum)),
                                         _mm512_set1_ps(-u.dmin * y->d), acc[c]);
            }
        }
    }
    store_sums(acc, NC, s, ss);
}

#define UNPACKED(name, TYPE, blk)                                                           \
    AI void k_##name(int64_t n, const void *w, const void *a, size_t as, const int NC,     \
                     float *s, size_t ss)                                                   \
    { k_unpacked(n, w, a, as, NC, s, ss, MOEQ_TYPE_##TYPE, sizeof(blk)); }

UNPACKED(q2_K, Q2_K, block_q2_K)
UNPACKED(q3_K, Q3_K, block_q3_K)
UNPACKED(iq2_xxs, IQ2_XXS, block_iq2_xxs)
UNPACKED(iq2_xs, IQ2_XS, block_iq2_xs)
UNPACKED(iq3_xxs, IQ3_XXS, block_iq3_xxs)
UNPACKED(iq4_xs, IQ4_XS, block_iq4_xs)

/* ----------------------------------------------------- F32 / F16 / BF16 */

AI __m512 load16_f(const void *w, int64_t i, const int kind)
{
    if (kind == 0) return _mm512_loadu_ps((const float *)w + i);
    __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)w + i));
    if (kind == 1) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

AI float load1_f(const void *w, int64_t i, const int kind)
{
    if (kind == 0) return ((const float *)w)[i];
    uint16_t h = ((const uint16_t *)w)[i];
    return kind == 1 ? _cvtsh_ss(h) : moeq_bf16_to_f32(h);
}

AI void k_float(int64_t n, const void *w, const void *a, size_t as, const int NC, float *s, size_t ss,
                const int kind)
{
    __m512 acc[MOEQ_GEMM_NC];
#pragma GCC unroll 16
    for (int c = 0; c < NC; c++) acc[c] = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 wv = load16_f(w, i, kind);
#pragma GCC unroll 16
        for (int c = 0; c < NC; c++) {
            const float *y = (const float *)((const uint8_t *)a + (size_t)c * as);
            acc[c] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(y + i), acc[c]);
        }
    }
#pragma GCC unroll 16
    for (int c = 0; c < NC; c++) {
        const float *y = (const float *)((const uint8_t *)a + (size_t)c * as);
        float t = _mm512_reduce_add_ps(acc[c]);
        for (int64_t j = i; j < n; j++) t += load1_f(w, j, kind) * y[j];
        s[(size_t)c * ss] = t;
    }
}

AI void k_f32(int64_t n, const void *w, const void *a, size_t as, const int NC, float *s, size_t ss)
{ k_float(n, w, a, as, NC, s, ss, 0); }
AI void k_f16(int64_t n, const void *w, const void *a, size_t as, const int NC, float *s, size_t ss)
{ k_float(n, w, a, as, NC, s, ss, 1); }
AI void k_bf16(int64_t n, const void *w, const void *a, size_t as, const int NC, float *s, size_t ss)
{ k_float(n, w, a, as, NC, s, ss, 2); }

/* ------------------------------------------------------------ tables */

/*
 * One instantiation per column count (1..8 and 16), so the accumulators
 * live in registers; 9..15 columns take a 8-column pass and a second one.
 */
#define KERNEL(name)                                                                      \
    static void row_##name(int64_t n, const void *w, const void *a, size_t as, int nc,   \
                           float *s, size_t ss)                                           \
    {                                                                                     \
        while (nc > 0) {                                                                  \
            int done = nc >= 16 ? 16 : nc > 8 ? 8 : nc;                                   \
            switch (done) {                                                               \
            case 1: k_##name(n, w, a, as, 1, s, ss); break;                               \
            case 2: k_##name(n, w, a, as, 2, s, ss); break;                               \
            case 3: k_##name(n, w, a, as, 3, s, ss); break;                               \
            case 4: k_##name(n, w, a, as, 4, s, ss); break;                               \
            case 5: k_##name(n, w, a, as, 5, s, ss); break;                               \
            case 6: k_##name(n, w, a, as, 6, s, ss); break;                               \
            case 7: k_##name(n, w, a, as, 7, s, ss); break;                               \
            case 8: k_##name(n, w, a, as, 8, s, ss); break;                               \
            default: k_##name(n, w, a, as, 16, s, ss); break;                             \
            }                                                                             \
            a = (const uint8_t *)a + (size_t)done * as;                                   \
            s += (size_t)done * ss;                                                       \
            nc -= done;                                                                   \
        }                                                                                 \
    }                                                                                     \
    static void dot_##name(int64_t n, float *s, const void *w, const void *a)            \
    { k_##name(n, w, a, 0, 1, s, 0); }

_Static_assert(MOEQ_GEMM_NC == 16, "row kernels are instantiated for up to 16 columns");

KERNEL(iq2_s)
KERNEL(iq3_s)
KERNEL(q4_K)
KERNEL(q5_K)
KERNEL(q6_K)
KERNEL(q8_0)
KERNEL(f32)
KERNEL(f16)
KERNEL(bf16)
KERNEL(q4_0)
KERNEL(iq4_nl)
KERNEL(q2_K)
KERNEL(q3_K)
KERNEL(iq2_xxs)
KERNEL(iq2_xs)
KERNEL(iq3_xxs)
KERNEL(iq4_xs)

moeq_vec_dot_fn moeq_avx512_vec_dot(int wtype)
{
    switch (wtype) {
    case MOEQ_TYPE_IQ2_S: return dot_iq2_s;
    case MOEQ_TYPE_IQ3_S: return dot_iq3_s;
    case MOEQ_TYPE_Q4_K:  return dot_q4_K;
    case MOEQ_TYPE_Q5_K:  return dot_q5_K;
    case MOEQ_TYPE_Q6_K:  return dot_q6_K;
    case MOEQ_TYPE_Q8_0:  return dot_q8_0;
    case MOEQ_TYPE_F32:   return dot_f32;
    case MOEQ_TYPE_F16:   return dot_f16;
    case MOEQ_TYPE_BF16:  return dot_bf16;
    case MOEQ_TYPE_Q4_0:    return dot_q4_0;
    case MOEQ_TYPE_IQ4_NL:  return dot_iq4_nl;
    case MOEQ_TYPE_Q2_K:    return dot_q2_K;
    case MOEQ_TYPE_Q3_K:    return dot_q3_K;
    case MOEQ_TYPE_IQ2_XXS: return dot_iq2_xxs;
    case MOEQ_TYPE_IQ2_XS:  return dot_iq2_xs;
    case MOEQ_TYPE_IQ3_XXS: return dot_iq3_xxs;
    case MOEQ_TYPE_IQ4_XS:  return dot_iq4_xs;
    default:              return NULL;
    }
}

moeq_row_fn moeq_avx512_row(int wtype)
{
    switch (wtype) {
    case MOEQ_TYPE_IQ2_S: return row_iq2_s;
    case MOEQ_TYPE_IQ3_S: return row_iq3_s;
    case MOEQ_TYPE_Q4_K:  return row_q4_K;
    case MOEQ_TYPE_Q5_K:  return row_q5_K;
    case MOEQ_TYPE_Q6_K:  return row_q6_K;
    case MOEQ_TYPE_Q8_0:  return row_q8_0;
    case MOEQ_TYPE_F32:   return row_f32;
    case MOEQ_TYPE_F16:   return row_f16;
    case MOEQ_TYPE_BF16:  return row_bf16;
    case MOEQ_TYPE_Q4_0:    return row_q4_0;
    case MOEQ_TYPE_IQ4_NL:  return row_iq4_nl;
    case MOEQ_TYPE_Q2_K:    return row_q2_K;
    case MOEQ_TYPE_Q3_K:    return row_q3_K;
    case MOEQ_TYPE_IQ2_XXS: return row_iq2_xxs;
    case MOEQ_TYPE_IQ2_XS:  return row_iq2_xs;
    case MOEQ_TYPE_IQ3_XXS: return row_iq3_xxs;
    case MOEQ_TYPE_IQ4_XS:  return row_iq4_xs;
    default:              return NULL;
    }
}
