/*
 * kernels_avx2.c: AVX2 + FMA + F16C twins of the scalar kernels in
 * kernels.c, one row kernel per type.
 *
 * Same plan as the AVX-512 file, on 32 weights at a time and without VNNI:
 * the weight side of a block is unpacked once per row into unsigned byte
 * magnitudes, sign masks and int16 scale vectors; per column, maddubs
 * multiplies magnitudes by (sign-flipped) activations into int16 pair
 * sums (at most 2 * 127 * 127, so never saturating), and madd multiplies
 * each pair by its sub-block scale into int32. With 16 vector registers,
 * a row kernel walks its columns four at a time.
 *
 * What is the same at AVX-512 comes from kernels_simd.h (helpers, per-type
 * entry points, the float kernel, the row walkers) and kernels_attn_simd.h
 * (attention); this file exports the ISA's table (kernels_isa.h).
 * Compiled with the AVX2 flags only.
 */
#include "kernels/kernels_simd.h"

#define NC_MAX 4

AI float hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* 0xff in byte i where bit i of bits is set. */
AI __m256i bits_to_mask(uint32_t bits)
{
    const __m256i shuf = _mm256_set_epi64x(0x0303030303030303ll, 0x0202020202020202ll,
                                           0x0101010101010101ll, 0);
    const __m256i sel = _mm256_set1_epi64x((long long)0x8040201008040201ull);
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)bits), shuf);
    return _mm256_cmpeq_epi8(_mm256_and_si256(v, sel), sel);
}

/* Two int16 scale halves: lanes 0..7 (bytes 0..15) s0, lanes 8..15 s1. */
AI __m256i scale_pair(int s0, int s1)
{
    return _mm256_set_m128i(_mm_set1_epi16((short)s1), _mm_set1_epi16((short)s0));
}

AI void store_sums(const __m256 *acc, int NC, float *s, size_t ss)
{
    for (int c = 0; c < NC; c++) s[(size_t)c * ss] = hsum8(acc[c]);
}

/*
 * One 32-weight step for every column: w unsigned magnitudes, m sign mask
 * (all-zero when the format has no signs), sc int16 scales; adds into the
 * int32 block sums of each column.
 */
AI void step32(const void *a, size_t as, int64_t b, int j, const int NC, __m256i w, __m256i m,
               __m256i sc, __m256i *isum, const int has_signs)
{
#pragma GCC unroll 8
    for (int c = 0; c < NC; c++) {
        const block_q8_K *y = q8k_col(a, as, c, b);
        __m256i q = _mm256_loadu_si256((const __m256i *)(y->qs + 32 * j));
        if (has_signs) q = _mm256_sub_epi8(_mm256_xor_si256(q, m), m);
        isum[c] = _mm256_add_epi32(isum[c], _mm256_madd_epi16(_mm256_maddubs_epi16(w, q), sc));
    }
}

/* ------------------------------------------------------- Q4_K / Q5_K */

/* Scales (bytes 0..7) and mins (bytes 8..15): see kernels_avx512.c. */
AI void k4_scales(const uint8_t *q, uint8_t out[16])
{
    uint32_t u0, u1, u2, v[4];
    memcpy(&u0, q, 4);
    memcpy(&u1, q + 4, 4);
    memcpy(&u2, q + 8, 4);
    v[0] = u0 & 0x3f3f3f3fu;
    v[1] = (u2 & 0x0f0f0f0fu) | ((u0 >> 2) & 0x30303030u);
    v[2] = u1 & 0x3f3f3f3fu;
    v[3] = ((u2 >> 4) & 0x0f0f0f0fu) | ((u1 >> 2) & 0x30303030u);
    memcpy(out, v, 16);
}

static const uint8_t mins_pairs[16] = { 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15 };

AI void k_q45_K(int64_t n, const void *w, const void *a, size_t as, const int NC, float *s, size_t ss,
                const int five)
{
    const uint8_t *x = w;
    const size_t bsize = five ? sizeof(block_q5_K) : sizeof(block_q4_K);
    __m256 acc[NC_MAX];
    for (int c = 0; c < NC; c++) acc[c] = _mm256_setzero_ps();
    const __m256i m4 = _mm256_set1_epi8(0x0f), one = _mm256_set1_epi8(1), zero = _mm256_setzero_si256();
    for (int64_t b = 0; b < n / QK_K; b++) {
        const block_q5_K *x5 = (const block_q5_K *)(x + b * bsize);
        const block_q4_K *x4 = (const block_q4_K *)(x + b * bsize);
        const uint8_t *qs = five ? x5->qs : x4->qs;
        uint8_t scmn[16];
        k4_scales(x4->scales, scmn);
        __m256i hb = five ? _mm256_loadu_si256((const __m256i *)x5->qh) : zero;
        __m256i isum[NC_MAX];
        for (int c = 0; c < NC; c++) isum[c] = _mm256_setzero_si256();
#pragma GCC unroll 4
        for (int p = 0; p < 4; p++) {
            __m256i q = _mm256_loadu_si256((const __m256i *)(qs + 32 * p));
            __m256i lo = _mm256_and_si256(q, m4), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            if (five) {
                /* the 5th bit of element e is bit e/32 of qh[e % 32] */
                lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2 * p), one), 4));
                hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2 * p + 1), one), 4));
            }
            step32(a, as, b, 2 * p, NC, lo, zero, _mm256_set1_epi16(scmn[2 * p]), isum, 0);
            step32(a, as, b, 2 * p + 1, NC, hi, zero, _mm256_set1_epi16(scmn[2 * p + 1]), isum, 0);
        }
        __m256i mins = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)scmn),
                                                             _mm_loadu_si128((const __m128i *)mins_pairs)));
        const float d = h2f(x4->d), dmin = h2f(x4->dmin);
        for (int c = 0; c < NC; c++) {
            const block_q8_K *y = q8k_col(a, as, c, b);
            __m256i msum = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)y->bsums), mins);
            acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[c]), _mm256_set1_ps(d * y->d), acc[c]);
            acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(msum), _mm256_set1_ps(-dmin * y->d), acc[c]);
        }
    }
    store_sums(acc, NC, s, ss);
}

SIMD_ENTRIES_Q45

/* -------------------------------------------------------------- Q6_K */

AI void k_q6_K(int64_t n, const void *w, const void *a, size_t as, const int NC, float *s, size_t ss)
{
    const block_q6_K *x = w;
    __m256 acc[NC_MAX];
    for (int c = 0; c < NC; c++) acc[c] = _mm256_setzero_ps();
    const __m256i m4 = _mm256_set1_epi8(0x0f), m2 = _mm256_set1_epi8(0x03), zero = _mm256_setzero_si256();
    for (int64_t b = 0; b < n / QK_K; b++) {
        const block_q6_K *xb = x + b;
        __m256i isum[NC_MAX];
        for (int c = 0; c < NC; c++) isum[c] = _mm256_setzero_si256();
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++) {
            __m256i qh = _mm256_loadu_si256((const __m256i *)(xb->qh + 32 * h));
            __m256i l0 = _mm256_loadu_si256((const __m256i *)(xb->ql + 64 * h));
            __m256i l1 = _mm256_loadu_si256((const __m256i *)(xb->ql + 64 * h + 32));
            /* quarters of 32: low nibbles of l0, l1, then high nibbles;
             * qh bits at shifts 0, 2, 4, 6 */
            __m256i w0 = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_slli_epi16(_mm256_and_si256(qh, m2), 4));
            __m256i w1 = _mm256_or_si256(_mm256_and_si256(l1, m4),
                                         _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m2), 4));
            __m256i w2 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                                         _mm256_and_si256(qh, _mm256_set1_epi8(0x30)));
            __m256i w3 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                         _mm256_and_si256(_mm256_srli_epi16(qh, 2), _mm256_set1_epi8(0x30)));
            const int8_t *sc = xb->scales + 8 * h;
            step32(a, as, b, 4 * h + 0, NC, w0, zero, scale_pair(sc[0], sc[1]), isum, 0);
            step32(a, as, b, 4 * h + 1, NC, w1, zero, scale_pair(sc[2], sc[3]), isum, 0);
            step32(a, as, b, 4 * h + 2, NC, w2, zero, scale_pair(sc[4], sc[5]), isum, 0);
            step32(a, as, b, 4 * h + 3, NC, w3, zero, scale_pair(sc[6], sc[7]), isum, 0);
        }
        /* weights are stored +32: subtract 32 * scale * bsum per sub-block */
        __m256i off = _mm256_sub_epi16(zero, _mm256_slli_epi16(
            _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)xb->scales)), 5));
        const float d = h2f(xb->d);
        for (int c = 0; c < NC; c++) {
            const block_q8_K *y = q8k_col(a, as, c, b);
            __m256i corr = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)y->bsums), off);
            acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(isum[c], corr)),
                                     _mm256_set1_ps(d * y->d), acc[c]);
        }
    }
    store_sums(acc, NC, s, ss);
}

/* ---------------------------------------- Q8_0, Q4_0, IQ4_NL (vs Q8_0) */

AI void k_b32(int64_t n, const void *w, const void *a, size_t as, const int NC, float *s, size_t ss,
              const int kind)
{
    const uint8_t *x = w;
    const size_t bsize = kind == 0 ? sizeof(block_q8_0) : sizeof(block_q4_0);
    __m256 acc[NC_MAX];
    for (int c = 0; c < NC; c++) acc[c] = _mm256_setzero_ps();
    const __m256i ones = _mm256_set1_epi16(1);
    for (int64_t b = 0; b < n / QK8_0; b++) {
        /* |w| times the activation carrying w's sign; |w| <= 128 and
         * |x| <= 127, so a pair sum stays under 32767 */
        const uint8_t *blk = x + b * bsize;
        __m256i wq = load_w32(blk, kind);
        __m256i wabs = _mm256_abs_epi8(wq);
        ggml_half dh;
        memcpy(&dh, blk, 2);
        const float dw = h2f(dh);
#pragma GCC unroll 8
        for (int c = 0; c < NC; c++) {
            const block_q8_0 *y = (const block_q8_0 *)((const uint8_t *)a + (size_t)c * as) + b;
            __m256i q = _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)y->qs), wq);
            __m256i dp = _mm256_madd_epi16(_mm256_maddubs_epi16(wabs, q), ones);
            acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dp), _mm256_set1_ps(dw * h2f(y->d)), acc[c]);
        }
    }
    store_sums(acc, NC, s, ss);
}

SIMD_ENTRIES_B32

/* ------------------------------------- the other 256-element formats */

/*
 * Q2_K, Q3_K, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S and IQ4_XS: each
 * format unpacks 32 weights at a time into unsigned values, a sign mask
 * and int16 scales, and the shared step32 does the rest. Q3_K values are stored +4 (0..7)
 * and corrected through the bsums; IQ4_XS magnitudes reach 127, so maddubs
 * pairs reach 2 * 127 * 127, still inside int16.
 */
/* The 16 signed six-bit scales of a Q3_K block, as 4 words of 4 bytes. */
AI void q3_scales(const uint8_t *q, uint32_t out[4])
{
    uint32_t u0, u1, u2;
    memcpy(&u0, q, 4);
    memcpy(&u1, q + 4, 4);
    memcpy(&u2, q + 8, 4);
    out[0] = (u0 & 0x0f0f0f0fu) | ((u2 & 0x03030303u) << 4);
    out[1] = (u1 & 0x0f0f0f0fu) | (((u2 >> 2) & 0x03030303u) << 4);
    out[2] = ((u0 >> 4) & 0x0f0f0f0fu) | (((u2 >> 4) & 0x03030303u) << 4);
    out[3] = ((u1 >> 4) & 0x0f0f0f0fu) | (((u2 >> 6) & 0x03030303u) << 4);
}

AI int byte_of(const uint32_t *w4, int i) { return (int)((w4[i / 4] >> (8 * (i % 4))) & 0xff); }

AI void k_vec(int64_t n, const void *w, const void *a, size_t as, const int NC, float *s, size_t ss,
              const int T)
{
    __m256 acc[NC_MAX];
    for (int c = 0; c < NC; c++) acc[c] = _mm256_setzero_ps();
    const __m256i zero = _mm256_setzero_si256(), m3 = _mm256_set1_epi8(3), one = _mm256_set1_epi8(1);
    for (int64_t b = 0; b < n / QK_K; b++) {
        __m256i isum[NC_MAX];
        for (int c = 0; c < NC; c++) isum[c] = zero;
        __m256i bs16 = zero;   /* Q2_K mins / Q3_K -4 * scale, per bsum */
        float d = 0, dmin = 0;
        if (T == V_Q2_K) {
            /* scales in the low nibbles, mins in the high ones: the layout
             * of q2k_get_scale_min (quants_blocks.h), read 16 at a time */
            const block_q2_K *x = (const block_q2_K *)w + b;
            for (int j = 0; j < 8; j++) {
                __m256i q = _mm256_loadu_si256((const __m256i *)(x->qs + 32 * (j / 4)));
                __m256i wv = _mm256_and_si256(_mm256_srli_epi16(q, 2 * (j % 4)), m3);
                step32(a, as, b, j, NC, wv, zero,
                       scale_pair(x->scales[2 * j] & 0xf, x->scales[2 * j + 1] & 0xf), isum, 0);
            }
            __m128i s8 = _mm_loadu_si128((const __m128i *)x->scales);
            bs16 = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(s8, 4), _mm_set1_epi8(0x0f)));
            d = h2f(x->d);
            dmin = h2f(x->dmin);
        } else if (T == V_Q3_K) {
            const block_q3_K *x = (const block_q3_K *)w + b;
            uint32_t sc4[4];
            q3_scales(x->scales, sc4);
            __m256i hm = _mm256_loadu_si256((const __m256i *)x->hmask);
            for (int j = 0; j < 8; j++) {
                __m256i q = _mm256_loadu_si256((const __m256i *)(x->qs + 32 * (j / 4)));
                __m256i lo = _mm256_and_si256(_mm256_srli_epi16(q, 2 * (j % 4)), m3);
                __m256i hi = _mm256_and_si256(_mm256_srli_epi16(hm, j), one);
                step32(a, as, b, j, NC, _mm256_or_si256(lo, _mm256_slli_epi16(hi, 2)), zero,
                       scale_pair(byte_of(sc4, 2 * j) - 32, byte_of(sc4, 2 * j + 1) - 32), isum, 0);
            }
            __m128i s8 = _mm_sub_epi8(_mm_loadu_si128((const __m128i *)sc4), _mm_set1_epi8(32));
            bs16 = _mm256_sub_epi16(zero, _mm256_slli_epi16(_mm256_cvtepi8_epi16(s8), 2));
            d = h2f(x->d);
        } else if (T == V_IQ2_XXS) {
            const block_iq2_xxs *x = (const block_iq2_xxs *)w + b;
            const uint8_t *q = (const uint8_t *)x->qs;
            for (int j = 0; j < 8; j++) {
                const uint8_t *p = q + 8 * j;
                uint32_t sg;
                memcpy(&sg, p + 4, 4);
                __m256i wv = _mm256_set_epi64x((long long)iq2xxs_grid[p[3]], (long long)iq2xxs_grid[p[2]],
                                               (long long)iq2xxs_grid[p[1]], (long long)iq2xxs_grid[p[0]]);
                step32(a, as, b, j, NC, wv, bits_to_mask(ksigns4(sg)),
                       _mm256_set1_epi16((short)(2 * (sg >> 28) + 1)), isum, 1);
            }
            d = h2f(x->d) * 0.125f;
        } else if (T == V_IQ2_XS) {
            const block_iq2_xs *x = (const block_iq2_xs *)w + b;
            for (int j = 0; j < 8; j++) {
                const uint16_t *q = x->qs + 4 * j;
                __m256i wv = _mm256_set_epi64x((long long)iq2xs_grid[q[3] & 511], (long long)iq2xs_grid[q[2] & 511],
                                               (long long)iq2xs_grid[q[1] & 511], (long long)iq2xs_grid[q[0] & 511]);
                uint32_t sb = (uint32_t)ksigns_iq2xs[q[0] >> 9] | (uint32_t)ksigns_iq2xs[q[1] >> 9] << 8 |
                              (uint32_t)ksigns_iq2xs[q[2] >> 9] << 16 | (uint32_t)ksigns_iq2xs[q[3] >> 9] << 24;
                step32(a, as, b, j, NC, wv, bits_to_mask(sb),
                       scale_pair(2 * (x->scales[j] & 0xf) + 1, 2 * (x->scales[j] >> 4) + 1), isum, 1);
            }
            d = h2f(x->d) * 0.125f;
        } else if (T == V_IQ3_XXS) {
            const block_iq3_xxs *x = (const block_iq3_xxs *)w + b;
            for (int j = 0; j < 8; j++) {
                const uint8_t *q = x->qs + 8 * j;
                uint32_t sg;
                memcpy(&sg, x->qs + QK_K / 4 + 4 * j, 4);
                __m256i wv = _mm256_set_epi32((int)iq3xxs_grid[q[7]], (int)iq3xxs_grid[q[6]], (int)iq3xxs_grid[q[5]],
                                              (int)iq3xxs_grid[q[4]], (int)iq3xxs_grid[q[3]], (int)iq3xxs_grid[q[2]],
                                              (int)iq3xxs_grid[q[1]], (int)iq3xxs_grid[q[0]]);
                step32(a, as, b, j, NC, wv, bits_to_mask(ksigns4(sg)),
                       _mm256_set1_epi16((short)(2 * (sg >> 28) + 1)), isum, 1);
            }
            d = h2f(x->d) * 0.25f;
        } else if (T == V_IQ2_S) {
            const block_iq2_s *x = (const block_iq2_s *)w + b;
            const uint8_t *signs = x->qs + QK_K / 8;
            for (int j = 0; j < 8; j++) {
                const uint8_t *q = x->qs + 4 * j;
                uint32_t h = x->qh[j];
                __m256i wv = _mm256_set_epi64x((long long)iq2s_grid[q[3] | (h << 2 & 0x300)],
                                               (long long)iq2s_grid[q[2] | (h << 4 & 0x300)],
                                               (long long)iq2s_grid[q[1] | (h << 6 & 0x300)],
                                               (long long)iq2s_grid[q[0] | (h << 8 & 0x300)]);
                uint32_t sb;
                memcpy(&sb, signs + 4 * j, 4);
                __m256i sc = scale_pair(2 * (x->scales[j] & 0xf) + 1, 2 * (x->scales[j] >> 4) + 1);
                step32(a, as, b, j, NC, wv, bits_to_mask(sb), sc, isum, 1);
            }
            d = h2f(x->d) * 0.125f;
        } else if (T == V_IQ3_S) {
            const block_iq3_s *x = (const block_iq3_s *)w + b;
            for (int j = 0; j < 8; j++) {
                const uint8_t *q = x->qs + 8 * j;
                uint32_t h = x->qh[j];
                __m256i wv = _mm256_set_epi32(
                    (int)iq3s_grid[q[7] | (h << 1 & 256)], (int)iq3s_grid[q[6] | (h << 2 & 256)],
                    (int)iq3s_grid[q[5] | (h << 3 & 256)], (int)iq3s_grid[q[4] | (h << 4 & 256)],
                    (int)iq3s_grid[q[3] | (h << 5 & 256)], (int)iq3s_grid[q[2] | (h << 6 & 256)],
                    (int)iq3s_grid[q[1] | (h << 7 & 256)], (int)iq3s_grid[q[0] | (h << 8 & 256)]);
                uint32_t sb;
                memcpy(&sb, x->signs + 4 * j, 4);
                int ls = 2 * ((x->scales[j / 2] >> 4 * (j % 2)) & 0xf) + 1;
                step32(a, as, b, j, NC, wv, bits_to_mask(sb), _mm256_set1_epi16((short)ls), isum, 1);
            }
            d = h2f(x->d);
        } else {  /* V_IQ4_XS */
            const block_iq4_xs *x = (const block_iq4_xs *)w + b;
            const __m256i tab = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)kvalues_iq4nl));
            for (int j = 0; j < 8; j++) {
                __m128i q = _mm_loadu_si128((const __m128i *)(x->qs + 16 * j));
                __m256i nib = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(q, 4), _mm_set1_epi8(0x0f)),
                                               _mm_and_si128(q, _mm_set1_epi8(0x0f)));
                __m256i val = _mm256_shuffle_epi8(tab, nib);
                step32(a, as, b, j, NC, _mm256_abs_epi8(val), _mm256_cmpgt_epi8(zero, val),
                       _mm256_set1_epi16((short)iq4xs_get_scale(x, j)), isum, 1);
            }
            d = h2f(x->d);
        }
        for (int c = 0; c < NC; c++) {
            const block_q8_K *y = q8k_col(a, as, c, b);
            __m256i is = isum[c];
            if (T == V_Q3_K)
                is = _mm256_add_epi32(is, _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)y->bsums), bs16));
            acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(is), _mm256_set1_ps(d * y->d), acc[c]);
            if (T == V_Q2_K) {
                __m256i msum = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)y->bsums), bs16);
                acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(msum), _mm256_set1_ps(-dmin * y->d), acc[c]);
            }
        }
    }
    store_sums(acc, NC, s, ss);
}

SIMD_ENTRIES_VEC
SIMD_ENTRY(iq2_s, k_vec, V_IQ2_S)
SIMD_ENTRY(iq3_s, k_vec, V_IQ3_S)

/* ----------------------------------------------------- F32 / F16 / BF16 */

/* Weights i..i+7 as floats (kind as k_float): a deliberate ISA twin of
 * load16_f in kernels_avx512.c, since the load and widening intrinsics
 * are width-specific; k_float itself is shared (kernels_simd.h). */
AI __m256 load8_f(const void *w, int64_t i, const int kind)
{
    if (kind == 0) return _mm256_loadu_ps((const float *)w + i);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)w + i));
    if (kind == 1) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

SIMD_K_FLOAT(__m256, 8, NC_MAX, load8_f, _mm256_setzero_ps, _mm256_loadu_ps, _mm256_fmadd_ps, hsum8)

/* ------------------------------------------------------------ tables */

SIMD_ROW_KERNELS(NC_MAX, NC_MAX)
SIMD_ROW_KERNEL(iq2_s, NC_MAX)
SIMD_ROW_KERNEL(iq3_s, NC_MAX)

/* The attention kernels and the SwiGLU product, compiled for this ISA:
 * rows of queries sharing one load of K (scores) and of V (accumulation). */
#define ATTN_RB_SCORES 2
#define ATTN_RB_ACCUM  3
#include "kernels/kernels_attn_simd.h"

/* This ISA's table (kernels_isa.h); its deliberate ISA twins in kernels.c
 * and kernels_avx512.c have the same shape on purpose. */
#define ROW(T, name) [MOEQ_TYPE_##T] = { .dot = dot_##name, .row = row_##name }
const struct moeq_isa_kernels moeq_kernels_avx2 = {
    .type = {
        ROW(F32, f32),       ROW(F16, f16),         ROW(BF16, bf16),
        ROW(Q4_0, q4_0),     ROW(Q8_0, q8_0),       ROW(IQ4_NL, iq4_nl),
        ROW(Q2_K, q2_K),     ROW(Q3_K, q3_K),       ROW(Q4_K, q4_K),
        ROW(Q5_K, q5_K),     ROW(Q6_K, q6_K),       ROW(IQ2_XXS, iq2_xxs),
        ROW(IQ2_XS, iq2_xs), ROW(IQ2_S, iq2_s),     ROW(IQ3_XXS, iq3_xxs),
        ROW(IQ3_S, iq3_s),   ROW(IQ4_XS, iq4_xs),
    },
    .attn = &attn_simd,
};
#undef ROW
