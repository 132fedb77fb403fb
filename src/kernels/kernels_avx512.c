/*
 * kernels_avx512.c: AVX-512 (F/BW/VL/DQ + VNNI) twins of the scalar
 * kernels in kernels.c, one row kernel per type.
 *
 * Every kernel computes one weight row against a group of activation
 * columns (up to MOEQ_GEMM_NC at once). Per super-block the weight side is
 * unpacked once into registers: four 64-byte vectors of unsigned 8-bit
 * values, a 64-bit sign mask per vector where the format has explicit
 * signs, and per-lane integer scales. Each column then costs, per 64
 * weights, a load, a masked negate of the activations (the signs go on the
 * activation side because VNNI's dpbusd multiplies unsigned by signed
 * bytes) and one dpbusd; pairs of dpbusd results are packed to int16 and
 * one dpwssd applies the sub-block scales to both (block_isum). That relies
 * on every 4-byte partial sum fitting in 16 bits, true for all formats but
 * IQ4_XS, which multiplies in 32 bits instead. Q8_K activations never hold
 * -128, so the negate is exact. Mins and constant offsets (Q2_K, Q3_K,
 * Q4_K, Q5_K, Q6_K) come back through the activations' bsums.
 *
 * IQ2_S / IQ3_S, whose unpacking is dearest, decode a row once per panel
 * into a table that all column groups stream through; the one-column case
 * (decode) walks rows in fours with a joint reduction. For prompt batches
 * (8+ columns) IQ2_S, IQ3_S, Q4_K, Q5_K and Q6_K have tile kernels that
 * put 16 columns in the lanes of a vector (see tile_run). Those five
 * formats reduce each block to an exact integer before any float step, so
 * every path gives the same bits.
 *
 * What is the same at AVX2 comes from kernels_simd.h (helpers, per-type
 * entry points) and kernels_attn_simd.h (attention); this file exports the
 * ISA's table (kernels_isa.h). Compiled with the AVX-512 flags only.
 */
#include "kernels/kernels_simd.h"

/* Decode of rows of three blocks or more streams the weights from memory:
 * one row after another (which the prefetchers follow) beats four rows
 * side by side. Short rows stay in fours (they are contiguous anyway). */
AI int decode_row_by_row(int64_t n) { return n / QK_K >= 3; }

AI uint64_t load_u64(const void *p) { uint64_t v; memcpy(&v, p, 8); return v; }

/* Decoding streams weights from memory a row at a time; asking for the
 * bytes `ahead` further on (past the row's end: the next row) keeps more of
 * them in flight than the hardware prefetcher does. The K-quants decode
 * about twice as fast as the i-quants, so they look further ahead
 * (distances measured on the full-size shapes). */
#define PREFETCH_IQ 1024
#define PREFETCH_K  4096
AI void prefetch_ahead(const void *w, int64_t b, size_t bsize, size_t ahead)
{
    const char *p = (const char *)w + (size_t)b * bsize + ahead;
    _mm_prefetch(p, _MM_HINT_T0);
    if (bsize > 64) _mm_prefetch(p + 64, _MM_HINT_T0);
    if (bsize > 128) _mm_prefetch(p + 128, _MM_HINT_T0);
    if (bsize > 192) _mm_prefetch(p + 192, _MM_HINT_T0);
}

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
 * sum of sub-block-scaled integer dot products, as 16 int32 lanes. Two
 * dpbusd results are saturating-packed into one vector of int16 partial
 * sums (exact: every partial sum fits in 16 bits, at most 4 * 63 * 127),
 * and one dpwssd scales and adds both, so 64 weights cost 1.5 multiplies.
 * packs interleaves per 128-bit lane; the scale vectors are packed the same
 * way (pack_scales), so every partial sum meets its own scale.
 */
AI __m512i block_isum(const block_q8_K *y, const __m512i wv[4], const __mmask64 sg[4],
                      const __m512i sc16[2], int has_signs)
{
    const __m512i zero = _mm512_setzero_si512();
    __m512i isum = zero;
#pragma GCC unroll 16
    for (int h = 0; h < 2; h++) {
        __m512i q0 = _mm512_loadu_si512((const void *)(y->qs + 128 * h));
        __m512i q1 = _mm512_loadu_si512((const void *)(y->qs + 128 * h + 64));
        if (has_signs) {
            q0 = _mm512_mask_sub_epi8(q0, sg[2 * h], zero, q0);
            q1 = _mm512_mask_sub_epi8(q1, sg[2 * h + 1], zero, q1);
        }
        __m512i p = _mm512_packs_epi32(_mm512_dpbusd_epi32(zero, wv[2 * h], q0),
                                       _mm512_dpbusd_epi32(zero, wv[2 * h + 1], q1));
        isum = _mm512_dpwssd_epi32(isum, p, sc16[h]);
    }
    return isum;
}

/* Per-dword scales of the four 64-weight vectors, packed as block_isum
 * packs the partial sums (scales fit in 16 bits). */
AI void pack_scales(const __m512i sc[4], __m512i sc16[2])
{
    sc16[0] = _mm512_packs_epi32(sc[0], sc[1]);
    sc16[1] = _mm512_packs_epi32(sc[2], sc[3]);
}

/*
 * The same layout straight from 16 per-16 scales widened to int16: the
 * k-th 64-weight vector holds sub-block 4k + i/4 in dword i, so int16
 * lane 8L + j of sc16[h] takes scale 8h + L (j < 4) or 8h + 4 + L. One
 * permute per vector instead of four byte shuffles, four widenings and
 * two packs.
 */
#define SP16(h, L) 8*(h)+(L), 8*(h)+(L), 8*(h)+(L), 8*(h)+(L), \
                   8*(h)+4+(L), 8*(h)+4+(L), 8*(h)+4+(L), 8*(h)+4+(L)
static const uint16_t sc16_idx[2][32] __attribute__((aligned(64))) = {
    { SP16(0, 0), SP16(0, 1), SP16(0, 2), SP16(0, 3) },
    { SP16(1, 0), SP16(1, 1), SP16(1, 2), SP16(1, 3) },
};
#undef SP16

AI void scales16_packed(__m256i w16, __m512i sc16[2])
{
    sc16[0] = _mm512_permutexvar_epi16(_mm512_load_si512(sc16_idx[0]), _mm512_castsi256_si512(w16));
    sc16[1] = _mm512_permutexvar_epi16(_mm512_load_si512(sc16_idx[1]), _mm512_castsi256_si512(w16));
}

/*
 * Horizontal sums of 16 accumulators at once, with exactly the additions
 * of _mm512_reduce_add_ps (256-bit halves, 128-bit halves, lanes 0+2 and
 * 1+3, then those two) so results match the one-column path bit for bit;
 * pairing vectors in each shuffle halves the work, which matters for
 * short rows (one block of 256 per row costs about as much as its sums).
 */
AI void store_sums16(const __m512 *acc, float *s, size_t ss)
{
    __m512 y[8], z[4];
#pragma GCC unroll 16
    for (int p = 0; p < 8; p++) {
        __m512 lo = _mm512_shuffle_f32x4(acc[2 * p], acc[2 * p + 1], _MM_SHUFFLE(1, 0, 1, 0));
        __m512 hi = _mm512_shuffle_f32x4(acc[2 * p], acc[2 * p + 1], _MM_SHUFFLE(3, 2, 3, 2));
        y[p] = _mm512_add_ps(hi, lo);     /* [A.lo+hi (256) | B.lo+hi (256)] */
    }
#pragma GCC unroll 16
    for (int q = 0; q < 4; q++) {
        __m512 lo = _mm512_shuffle_f32x4(y[2 * q], y[2 * q + 1], _MM_SHUFFLE(2, 0, 2, 0));
        __m512 hi = _mm512_shuffle_f32x4(y[2 * q], y[2 * q + 1], _MM_SHUFFLE(3, 1, 3, 1));
        z[q] = _mm512_add_ps(hi, lo);     /* 128-bit lane i: column 4q + i, 4 partial sums */
    }
#pragma GCC unroll 16
    for (int q = 0; q < 4; q++) {
        __m512 t = _mm512_add_ps(z[q], _mm512_permute_ps(z[q], _MM_SHUFFLE(1, 0, 3, 2)));
        __m512 u = _mm512_add_ps(t, _mm512_permute_ps(t, _MM_SHUFFLE(2, 3, 0, 1)));
        s[(size_t)(4 * q + 0) * ss] = _mm_cvtss_f32(_mm512_castps512_ps128(u));
        s[(size_t)(4 * q + 1) * ss] = _mm_cvtss_f32(_mm512_extractf32x4_ps(u, 1));
        s[(size_t)(4 * q + 2) * ss] = _mm_cvtss_f32(_mm512_extractf32x4_ps(u, 2));
        s[(size_t)(4 * q + 3) * ss] = _mm_cvtss_f32(_mm512_extractf32x4_ps(u, 3));
    }
}

AI void store_sums(const __m512 *acc, int NC, float *s, size_t ss)
{
    if (NC == 16) {
        store_sums16(acc, s, ss);
        return;
    }
#pragma GCC unroll 16
    for (int c = 0; c < NC; c++) s[(size_t)c * ss] = _mm512_reduce_add_ps(acc[c]);
}

/* ------------------------------------------------------- IQ2_S / IQ3_S */

/*
 * These two pay most for unpacking (32 or 64 codebook lookups per block),
 * so a row that meets many columns is unpacked once into a small table of
 * decoded blocks (struct dec_signed) and every group of 16 columns then
 * streams through that table from L1. A row meeting 1..3 columns (decode)
 * unpacks per block instead.
 */
struct dec_signed {
    __m512i  wv[4];    /* grid magnitudes */
    __m512i  sc16[2];  /* scales, packed as block_isum wants them */
    uint64_t sg[4];    /* sign bits, one per weight */
    float    d;
};

/* Most blocks the table holds (32 * 448 bytes of stack): rows up to 8192.
 * Longer rows take the direct kernel, so that a row is always reduced once
 * and its result does not depend on the path. */
#define DEC_BLOCKS 32

AI void iq2_s_unpack(const block_iq2_s *xb, __m512i wv[4], __mmask64 sg[4], __m128i *ls_out)
{
    const __m128i m4 = _mm_set1_epi8(0x0f);
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
        __m256i lo = _mm256_set_epi64x(
            (long long)iq2s_grid[q8[3] | (h0 << 2 & 0x300)], (long long)iq2s_grid[q8[2] | (h0 << 4 & 0x300)],
            (long long)iq2s_grid[q8[1] | (h0 << 6 & 0x300)], (long long)iq2s_grid[q8[0] | (h0 << 8 & 0x300)]);
        __m256i hi = _mm256_set_epi64x(
            (long long)iq2s_grid[q8[7] | (h1 << 2 & 0x300)], (long long)iq2s_grid[q8[6] | (h1 << 4 & 0x300)],
            (long long)iq2s_grid[q8[5] | (h1 << 6 & 0x300)], (long long)iq2s_grid[q8[4] | (h1 << 8 & 0x300)]);
        wv[k] = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
        sg[k] = load_u64(xb->qs + QK_K / 8 + 8 * k);
    }
    *ls_out = ls;   /* the 16 per-16 scales as bytes */
}

/* Byte g selects g/2: one per-32 scale for each of the 16 bsums. */
static const uint8_t pairs16[16] = { 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7 };

AI void iq3_s_unpack(const block_iq3_s *xb, __m512i wv[4], __mmask64 sg[4], __m128i *ls_out)
{
#pragma GCC unroll 16
    for (int k = 0; k < 4; k++) {
        /* 16 grid entries of 4 bytes: 8 index bits from qs, the 9th from
         * qh (a 16-bit mask); indices built in a vector, then scalar loads
         * into two 256-bit halves (beats a gather) */
        union { __m256i v; uint16_t u[16]; } ix;
        __m256i lo8 = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(xb->qs + 16 * k)));
        __mmask16 hm = (__mmask16)(xb->qh[2 * k] | (unsigned)xb->qh[2 * k + 1] << 8);
        ix.v = _mm256_mask_add_epi16(lo8, hm, lo8, _mm256_set1_epi16(256));
#define G3(i) (int)iq3s_grid[ix.u[i]]
        wv[k] = _mm512_inserti64x4(
            _mm512_castsi256_si512(_mm256_set_epi32(G3(7), G3(6), G3(5), G3(4), G3(3), G3(2), G3(1), G3(0))),
            _mm256_set_epi32(G3(15), G3(14), G3(13), G3(12), G3(11), G3(10), G3(9), G3(8)), 1);
#undef G3
        sg[k] = load_u64(xb->signs + 8 * k);
    }
    uint32_t s4;
    memcpy(&s4, xb->scales, 4);
    __m128i sv = _mm_cvtsi32_si128((int)s4), m4 = _mm_set1_epi8(0x0f);
    __m128i ls = _mm_unpacklo_epi8(_mm_and_si128(sv, m4), _mm_and_si128(_mm_srli_epi16(sv, 4), m4));
    ls = _mm_add_epi8(_mm_add_epi8(ls, ls), _mm_set1_epi8(1));
    *ls_out = _mm_shuffle_epi8(ls, _mm_loadu_si128((const __m128i *)pairs16));  /* per 16 */
}

/*
 * One arithmetic for every path. A block's integer sum S_b (sub-block
 * scales applied) is exact however it is grouped, so the float part is
 * fixed per (row, column) as: acc = 0; for each block b in order,
 * acc = fma((float)S_b, d_b * y_b.d, acc). The column-group kernel below,
 * the four-row decode kernel and the 16-column tile all perform exactly
 * these float operations, so a column's result does not depend on the
 * path or on its neighbours.
 */
AI int32_t hsum_epi32(__m512i v) { return _mm512_reduce_add_epi32(v); }

AI float fma_step(float acc, int32_t S, float p)
{
    /* a scalar fma (one vfmadd231ss): building vectors around it put an
     * insertps on the accumulator's dependency chain */
    return __builtin_fmaf((float)S, p, acc);
}

/* Four blocks' float steps in block order, from their exact sums S and
 * factors p (and, when M is given, the mins' sums M with factors q after
 * each block's S step), exactly as fma_step would do them one by one.
 * The sums stay in a vector: storing them to read back single lanes
 * stalled on store forwarding. */
AI float fma_steps4(float acc, __m128i S, __m128 p, const __m128i *M, __m128 q)
{
    const __m128 sf = _mm_cvtepi32_ps(S);
    const __m128 mf = M ? _mm_cvtepi32_ps(*M) : sf;
    __m128 a = _mm_set_ss(acc);
    /* lane j moved to lane 0 (the immediate holds j in every field) */
#define STEP(sel) do {                                                                 \
        a = _mm_fmadd_ss(_mm_permute_ps(sf, sel), _mm_permute_ps(p, sel), a);          \
        if (M) a = _mm_fmadd_ss(_mm_permute_ps(mf, sel), _mm_permute_ps(q, sel), a);   \
    } while (0)
    STEP(0x00); STEP(0x55); STEP(0xaa); STEP(0xff);
#undef STEP
    return _mm_cvtss_f32(a);
}

/* Four rows' (or columns') lane sums at once, exact (integer). */
AI __m128i hsum4_epi32(__m512i i0, __m512i i1, __m512i i2, __m512i i3)
{
    __m512i t0 = _mm512_add_epi32(_mm512_unpacklo_epi32(i0, i1), _mm512_unpackhi_epi32(i0, i1));
    __m512i t1 = _mm512_add_epi32(_mm512_unpacklo_epi32(i2, i3), _mm512_unpackhi_epi32(i2, i3));
    __m512i u = _mm512_add_epi32(_mm512_unpacklo_epi64(t0, t1), _mm512_unpackhi_epi64(t0, t1));
    __m256i v = _mm256_add_epi32(_mm512_castsi512_si256(u), _mm512_extracti64x4_epi64(u, 1));
    return _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
}

/* The five formats with exact integer block sums (decode loop, tiles). */
enum tile_kind { TK_IQ2_S, TK_IQ3_S, TK_Q4_K, TK_Q5_K, TK_Q6_K };

/* The one-column decode loop the five share (defined after the formats'
 * unpackers, below q6_isum). */
AI int64_t one_col4(const int kind, int64_t n, const void *w, const void *a, float *acc);

AI float signed_unpack(const void *w, int64_t b, const int three, __m512i wv[4], __mmask64 sg[4],
                       __m512i sc16[2])
{
    __m128i ls;
    float d;
    if (three) {
        const block_iq3_s *xb = (const block_iq3_s *)w + b;
        iq3_s_unpack(xb, wv, sg, &ls);
        d = h2f(xb->d);
    } else {
        const block_iq2_s *xb = (const block_iq2_s *)w + b;
        iq2_s_unpack(xb, wv, sg, &ls);
        d = h2f(xb->d) * 0.125f;
    }
    scales16_packed(_mm256_cvtepu8_epi16(ls), sc16);
    return d;
}

/* The direct kernel: unpack per block, signs on the activations. */
AI void k_signed(int64_t n, const void *w, const void *a, size_t as, const int NC, float *s, size_t ss,
                 const int three)
{
    float acc[MOEQ_GEMM_NC];
#pragma GCC unroll 16
    for (int c = 0; c < NC; c++) acc[c] = 0;
    int64_t b = 0;
    if (NC == 1) b = one_col4(three ? TK_IQ3_S : TK_IQ2_S, n, w, a, &acc[0]);
    for (; b < n / QK_K; b++) {
        __m512i wv[4], sc16[2];
        __mmask64 sg[4];
        prefetch_ahead(w, b, three ? sizeof(block_iq3_s) : sizeof(block_iq2_s), PREFETCH_IQ);
        float d = signed_unpack(w, b, three, wv, sg, sc16);
#pragma GCC unroll 16
        for (int c = 0; c < NC; c++) {
            const block_q8_K *y = q8k_col(a, as, c, b);
            acc[c] = fma_step(acc[c], hsum_epi32(block_isum(y, wv, sg, sc16, 1)), d * y->d);
        }
    }
    for (int c = 0; c < NC; c++) s[(size_t)c * ss] = acc[c];
}

AI void k_iq2_s(int64_t n, const void *w, const void *a, size_t as, const int NC, float *s, size_t ss)
{ k_signed(n, w, a, as, NC, s, ss, 0); }
AI void k_iq3_s(int64_t n, const void *w, const void *a, size_t as, const int NC, float *s, size_t ss)
{ k_signed(n, w, a, as, NC, s, ss, 1); }

/* Decode blocks [b0, b0 + cnt) of a row into the table. */
static void decode_signed(const void *w, int64_t b0, int cnt, int three, struct dec_signed *db)
{
    for (int i = 0; i < cnt; i++) {
        __mmask64 sg[4];
        db[i].d = signed_unpack(w, b0 + i, three, db[i].wv, sg, db[i].sc16);
        for (int k = 0; k < 4; k++) db[i].sg[k] = sg[k];
    }
}

/* NC columns against a row's cnt decoded blocks; four columns' block sums
 * are reduced together. */
AI void cols_signed(const struct dec_signed *db, int cnt, const void *a, size_t as,
                    const int NC, float *s, size_t ss)
{
    float acc[MOEQ_GEMM_NC];
#pragma GCC unroll 16
    for (int c = 0; c < NC; c++) acc[c] = 0;
    for (int i = 0; i < cnt; i++) {
        const __mmask64 sg[4] = { db[i].sg[0], db[i].sg[1], db[i].sg[2], db[i].sg[3] };
        int c = 0;
        for (; c + 4 <= NC; c += 4) {
            const block_q8_K *y0 = q8k_col(a, as, c, i), *y1 = q8k_col(a, as, c + 1, i);
            const block_q8_K *y2 = q8k_col(a, as, c + 2, i), *y3 = q8k_col(a, as, c + 3, i);
            __m128i S = hsum4_epi32(block_isum(y0, db[i].wv, sg, db[i].sc16, 1),
                                    block_isum(y1, db[i].wv, sg, db[i].sc16, 1),
                                    block_isum(y2, db[i].wv, sg, db[i].sc16, 1),
                                    block_isum(y3, db[i].wv, sg, db[i].sc16, 1));
            __m128 p = _mm_mul_ps(_mm_set1_ps(db[i].d), _mm_set_ps(y3->d, y2->d, y1->d, y0->d));
            __m128 r = _mm_fmadd_ps(_mm_cvtepi32_ps(S), p, _mm_loadu_ps(acc + c));
            _mm_storeu_ps(acc + c, r);
        }
        for (; c < NC; c++) {
            const block_q8_K *y = q8k_col(a, as, c, i);
            acc[c] = fma_step(acc[c], hsum_epi32(block_isum(y, db[i].wv, sg, db[i].sc16, 1)), db[i].d * y->d);
        }
    }
    for (int c = 0; c < NC; c++) s[(size_t)c * ss] = acc[c];
}

static void row_signed(int64_t n, const void *w, const void *a, size_t as, int nc, float *s, size_t ss,
                       int three)
{
    int64_t nb = n / QK_K;
    if (nc < 4 || nb > DEC_BLOCKS) {   /* too few columns to repay the table, or a long row */
        for (int left = nc; left > 0;) {
            int done = left >= 16 ? 16 : left > 8 ? 8 : left;
            switch (done) {
            case 1: k_signed(n, w, a, as, 1, s, ss, three); break;
            case 2: k_signed(n, w, a, as, 2, s, ss, three); break;
            case 3: k_signed(n, w, a, as, 3, s, ss, three); break;
            case 4: k_signed(n, w, a, as, 4, s, ss, three); break;
            case 5: k_signed(n, w, a, as, 5, s, ss, three); break;
            case 6: k_signed(n, w, a, as, 6, s, ss, three); break;
            case 7: k_signed(n, w, a, as, 7, s, ss, three); break;
            case 8: k_signed(n, w, a, as, 8, s, ss, three); break;
            default: k_signed(n, w, a, as, 16, s, ss, three); break;
            }
            a = (const uint8_t *)a + (size_t)done * as;
            s += (size_t)done * ss;
            left -= done;
        }
        return;
    }
    struct dec_signed db[DEC_BLOCKS];
    decode_signed(w, 0, (int)nb, three, db);
    for (int left = nc; left > 0;) {
        int done = left >= 16 ? 16 : left > 8 ? 8 : left;
        switch (done) {
        case 1: cols_signed(db, (int)nb, a, as, 1, s, ss); break;
        case 2: cols_signed(db, (int)nb, a, as, 2, s, ss); break;
        case 3: cols_signed(db, (int)nb, a, as, 3, s, ss); break;
        case 4: cols_signed(db, (int)nb, a, as, 4, s, ss); break;
        case 5: cols_signed(db, (int)nb, a, as, 5, s, ss); break;
        case 6: cols_signed(db, (int)nb, a, as, 6, s, ss); break;
        case 7: cols_signed(db, (int)nb, a, as, 7, s, ss); break;
        case 8: cols_signed(db, (int)nb, a, as, 8, s, ss); break;
        default: cols_signed(db, (int)nb, a, as, 16, s, ss); break;
        }
        a = (const uint8_t *)a + (size_t)done * as;
        s += (size_t)done * ss;
        left -= done;
    }
}

static void row_iq2_s(int64_t n, const void *w, const void *a, size_t as, int nc, float *s, size_t ss)
{ row_signed(n, w, a, as, nc, s, ss, 0); }
static void row_iq3_s(int64_t n, const void *w, const void *a, size_t as, int nc, float *s, size_t ss)
{ row_signed(n, w, a, as, nc, s, ss, 1); }
static void dot_iq2_s(int64_t n, float *s, const void *w, const void *a) { k_iq2_s(n, w, a, 0, 1, s, 0); }
static void dot_iq3_s(int64_t n, float *s, const void *w, const void *a) { k_iq3_s(n, w, a, 0, 1, s, 0); }


/*
 * The tile kernel for many columns (prompt batches). Sixteen columns sit
 * in the 16 lanes of a vector: their activations are transposed once per
 * call so that one 64-byte vector holds the same 4 bytes of every column,
 * and stored as unsigned (a + 128, i.e. a ^ 0x80). Each weight row is
 * unpacked once into signed bytes, and every 4 of them are broadcast
 * against that vector by one dpbusd: 64 multiply-adds an instruction, with
 * no per-column sign handling. The + 128 comes back out exactly through
 * the sub-block's weight sum (-128 * sum w, the accumulator's start), and
 * the sub-block scales are integer multiplies, so S_b is exact and the
 * float steps are those of the kernels above.
 */
#define TILE_BLOCKS 16      /* rows up to 4096 (longer rows use the others) */
#define TILE_COLS   64      /* columns per pass at the longest rows (4 groups of 16) */

struct tile_row {           /* one row's block, unpacked */
    int8_t  w[QK_K];        /* signed weights */
    int32_t ls[16];         /* scale of each 16 weights */
    __m512i sc16[2];        /* the same, packed for block_isum (tile_few) */
    int32_t corr;           /* -128 * sum of ls * w: takes the + 128 back out */
    float   d;
};

/* 16x16 transpose of 32-bit elements in place. */
AI void transpose16x16(__m512i r[16])
{
    __m512i t[16], u[16];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
#pragma GCC unroll 4
    for (int q = 0; q < 4; q++) {
        u[4 * q + 0] = _mm512_unpacklo_epi64(t[4 * q], t[4 * q + 2]);
        u[4 * q + 1] = _mm512_unpackhi_epi64(t[4 * q], t[4 * q + 2]);
        u[4 * q + 2] = _mm512_unpacklo_epi64(t[4 * q + 1], t[4 * q + 3]);
        u[4 * q + 3] = _mm512_unpackhi_epi64(t[4 * q + 1], t[4 * q + 3]);
    }
    /* u[4q + m], 128-bit lane L: rows 4q..4q+3 of column 4L + m */
#pragma GCC unroll 4
    for (int m = 0; m < 4; m++) {
        __m512i v0 = _mm512_shuffle_i32x4(u[m], u[4 + m], _MM_SHUFFLE(1, 0, 1, 0));
        __m512i v1 = _mm512_shuffle_i32x4(u[m], u[4 + m], _MM_SHUFFLE(3, 2, 3, 2));
        __m512i v2 = _mm512_shuffle_i32x4(u[8 + m], u[12 + m], _MM_SHUFFLE(1, 0, 1, 0));
        __m512i v3 = _mm512_shuffle_i32x4(u[8 + m], u[12 + m], _MM_SHUFFLE(3, 2, 3, 2));
        r[m] = _mm512_shuffle_i32x4(v0, v2, _MM_SHUFFLE(2, 0, 2, 0));
        r[4 + m] = _mm512_shuffle_i32x4(v0, v2, _MM_SHUFFLE(3, 1, 3, 1));
        r[8 + m] = _mm512_shuffle_i32x4(v1, v3, _MM_SHUFFLE(2, 0, 2, 0));
        r[12 + m] = _mm512_shuffle_i32x4(v1, v3, _MM_SHUFFLE(3, 1, 3, 1));
    }
}

/* Columns [c0, c0 + cnt) (cnt <= 16) of every block into group layout:
 * at[b][g] = dword g of the 16 columns, unsigned; yd[b] = their scales
 * (missing columns: zeros). */
static void tile_transpose(const void *a, size_t as, int c0, int cnt, int nb,
                           __m512i *at, __m512 *yd, int unsigned_acts)
{
    const __m512i flip = _mm512_set1_epi8(unsigned_acts ? (char)0x80 : 0);
    for (int b = 0; b < nb; b++) {
        float dv[16];
        for (int k = 0; k < 4; k++) {
            __m512i r[16];
            for (int c = 0; c < 16; c++)
                r[c] = c < cnt ? _mm512_xor_si512(_mm512_loadu_si512(q8k_col(a, as, c0 + c, b)->qs + 64 * k), flip)
                               : flip;
            transpose16x16(r);
            for (int j = 0; j < 16; j++) at[(size_t)b * 64 + 16 * k + j] = r[j];
        }
        for (int c = 0; c < 16; c++) dv[c] = c < cnt ? q8k_col(a, as, c0 + c, b)->d : 0.0f;
        yd[b] = _mm512_loadu_ps(dv);
    }
}

static void tile_unpack(const void *w, int64_t b, const int three, struct tile_row *t)
{
    __m512i wv[4], sc16[2];
    __mmask64 sg[4];
    __m128i ls;
    if (three) {
        const block_iq3_s *xb = (const block_iq3_s *)w + b;
        iq3_s_unpack(xb, wv, sg, &ls);
        t->d = h2f(xb->d);
    } else {
        const block_iq2_s *xb = (const block_iq2_s *)w + b;
        iq2_s_unpack(xb, wv, sg, &ls);
        t->d = h2f(xb->d) * 0.125f;
    }
    const __m512i zero = _mm512_setzero_si512(), one = _mm512_set1_epi8(1);
    __m512i sw[4];
#pragma GCC unroll 4
    for (int k = 0; k < 4; k++) {
        sw[k] = _mm512_mask_sub_epi8(wv[k], sg[k], zero, wv[k]);
        _mm512_storeu_si512(t->w + 64 * k, sw[k]);
    }
    /* sum of ls * w: the block sum against activations of all ones */
    scales16_packed(_mm256_cvtepu8_epi16(ls), sc16);
    __m512i isum = zero;
#pragma GCC unroll 2
    for (int h = 0; h < 2; h++) {
        __m512i p = _mm512_packs_epi32(_mm512_dpbusd_epi32(zero, one, sw[2 * h]),
                                       _mm512_dpbusd_epi32(zero, one, sw[2 * h + 1]));
        isum = _mm512_dpwssd_epi32(isum, p, sc16[h]);
    }
    t->corr = -128 * hsum_epi32(isum);
    _mm512_storeu_si512(t->ls, _mm512_cvtepu8_epi32(ls));
    t->sc16[0] = sc16[0];
    t->sc16[1] = sc16[1];
}

/*
 * The last one to three columns of a call, against four unpacked rows:
 * a group of 16 lanes would be mostly padding, so these go column by
 * column as the decode kernel does (signed activations, signs from the
 * table's weights), with the same exact block sums as tile_quad and the
 * same float steps.
 */
AI void tile_few(const struct tile_row *const t[4], int nb, const void *A, size_t as, int c0,
                 const int cnt, float *out, size_t os, int nrow)
{
    __m128 acc[3] = { _mm_setzero_ps(), _mm_setzero_ps(), _mm_setzero_ps() };
    for (int b = 0; b < nb; b++) {
        __m512i is[3][4];
#pragma GCC unroll 4
        for (int i = 0; i < 4; i++) {
            __m512i wv[4];
            __mmask64 sg[4];
#pragma GCC unroll 4
            for (int k = 0; k < 4; k++) {
                const __m512i w = _mm512_loadu_si512(t[i][b].w + 64 * k);
                wv[k] = _mm512_abs_epi8(w);
                sg[k] = _mm512_movepi8_mask(w);
            }
#pragma GCC unroll 3
            for (int c = 0; c < cnt; c++)
                is[c][i] = block_isum(q8k_col(A, as, c0 + c, b), wv, sg, t[i][b].sc16, 1);
        }
        const __m128 d4 = _mm_setr_ps(t[0][b].d, t[1][b].d, t[2][b].d, t[3][b].d);
#pragma GCC unroll 3
        for (int c = 0; c < cnt; c++) {
            const __m128i S = hsum4_epi32(is[c][0], is[c][1], is[c][2], is[c][3]);
            const __m128 p = _mm_mul_ps(d4, _mm_set1_ps(q8k_col(A, as, c0 + c, b)->d));
            acc[c] = _mm_fmadd_ps(_mm_cvtepi32_ps(S), p, acc[c]);
        }
    }
    for (int c = 0; c < cnt; c++) {
        float v[4];
        _mm_storeu_ps(v, acc[c]);
        for (int i = 0; i < nrow; i++) out[(size_t)(c0 + c) * os + i] = v[i];
    }
}

/* Four rows (t[i] over nb blocks) against one group of 16 columns: the
 * activation vectors are loaded once for the four. */
AI void tile_quad(const struct tile_row *const t[4], int nb, const __m512i *at,
                  const __m512 *yd, const int three, __m512 acc[4])
{
    const int nsub = three ? 8 : 16, per = three ? 8 : 4;   /* dwords per sub-block */
    __m512 a[4];
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) a[i] = _mm512_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const __m512i *ab = at + (size_t)b * 64;
        __m512i S[4];
#pragma GCC unroll 4
        for (int i = 0; i < 4; i++) S[i] = _mm512_set1_epi32(t[i][b].corr);
        for (int j = 0; j < nsub; j++) {
            __m512i v[4];
#pragma GCC unroll 4
            for (int i = 0; i < 4; i++) v[i] = _mm512_setzero_si512();
#pragma GCC unroll 8
            for (int g = 0; g < per; g++) {
                __m512i av = ab[per * j + g];
#pragma GCC unroll 4
                for (int i = 0; i < 4; i++)
                    v[i] = _mm512_dpbusd_epi32(v[i], av, _mm512_set1_epi32(((const int32_t *)t[i][b].w)[per * j + g]));
            }
            /* IQ3_S's ls holds each per-32 scale twice (per 16) */
#pragma GCC unroll 4
            for (int i = 0; i < 4; i++)
                S[i] = _mm512_add_epi32(S[i], _mm512_mullo_epi32(v[i], _mm512_set1_epi32(t[i][b].ls[(16 / nsub) * j])));
        }
#pragma GCC unroll 4
        for (int i = 0; i < 4; i++)
            a[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(S[i]), _mm512_mul_ps(_mm512_set1_ps(t[i][b].d), yd[b]), a[i]);
    }
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) acc[i] = a[i];
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

/*
 * Per-32 scales straight into block_isum's packed layout: the p-th
 * 64-weight vector holds sub-block 2p in dwords 0..7 and 2p + 1 in 8..15,
 * and packs puts dwords 4L..4L+3 of vectors 2h and 2h + 1 into 128-bit
 * lane L, so int16 lane 8L + j of sc16[h] takes scale 4h + L/2 (j < 4) or
 * 4h + 2 + L/2. The indices select from the 16 scales and mins widened to
 * int16 (mins at 8..15); one permute per vector instead of four byte
 * shuffles, four widenings and two packs.
 */
#define SP32(h, L) 4*(h)+(L)/2, 4*(h)+(L)/2, 4*(h)+(L)/2, 4*(h)+(L)/2, \
                   4*(h)+2+(L)/2, 4*(h)+2+(L)/2, 4*(h)+2+(L)/2, 4*(h)+2+(L)/2
static const uint16_t sc32_idx[2][32] __attribute__((aligned(64))) = {
    { SP32(0, 0), SP32(0, 1), SP32(0, 2), SP32(0, 3) },
    { SP32(1, 0), SP32(1, 1), SP32(1, 2), SP32(1, 3) },
};
#undef SP32
/* 8 + g/2: the min of each 16-element bsum group. */
static const uint16_t mins_idx[16] __attribute__((aligned(32))) = {
    8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15,
};

/*
 * As for IQ2_S / IQ3_S, one arithmetic for every path: per block the
 * scaled integer sum S_b and the mins' sum M_b (sub-block mins times the
 * activations' bsums) are exact, and the float steps per (row, column) are
 * acc = fma((float)S_b, d * y.d, acc), then acc = fma((float)M_b,
 * -dmin * y.d, acc), block by block.
 */
struct q45_blk {
    __m512i wv[4];     /* unsigned values, 0..15 (0..31 for Q5_K) */
    __m512i sc16[2];   /* scales, packed for block_isum */
    __m256i mins;      /* one min per bsum (16 x int16) */
    __m128i scmn;      /* scales (bytes 0..7), mins (8..15) */
    float d, ndmin;    /* d and -dmin */
};

AI void q45_unpack(const void *w, int64_t b, const int five, struct q45_blk *k)
{
    const size_t bsize = five ? sizeof(block_q5_K) : sizeof(block_q4_K);
    const block_q5_K *x5 = (const block_q5_K *)((const uint8_t *)w + b * bsize);
    const block_q4_K *x4 = (const block_q4_K *)((const uint8_t *)w + b * bsize);
    const uint8_t *qs = five ? x5->qs : x4->qs;
    const __m512i m4 = _mm512_set1_epi8(0x0f), one = _mm512_set1_epi8(1);
    __m128i scmn = k4_scales(x4->scales);
    __m256i sm16 = _mm256_cvtepu8_epi16(scmn);
    __m512i hb = five ? _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)x5->qh)) : m4;
#pragma GCC unroll 16
    for (int p = 0; p < 4; p++) {
        /* 32 bytes hold sub-block 2p (low nibbles) and 2p+1 (high) */
        __m512i q = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(qs + 32 * p)));
        q = _mm512_mask_srli_epi16(q, 0xffff0000u, q, 4);
        k->wv[p] = _mm512_and_si512(q, m4);
        if (five) {
            /* the 5th bit of element e is bit e/32 of qh[e % 32] */
            __m512i h = _mm512_mask_srli_epi16(hb, 0xffff0000u, hb, 1);
            h = _mm512_and_si512(_mm512_srli_epi16(h, 2 * p), one);
            k->wv[p] = _mm512_or_si512(k->wv[p], _mm512_slli_epi16(h, 4));
        }
    }
    /* mins as 16 int16 lanes, one per bsum (two per sub-block of 32) */
    k->mins = _mm256_permutexvar_epi16(_mm256_load_si256((const __m256i *)mins_idx), sm16);
    k->sc16[0] = _mm512_permutexvar_epi16(_mm512_load_si512(sc32_idx[0]), _mm512_castsi256_si512(sm16));
    k->sc16[1] = _mm512_permutexvar_epi16(_mm512_load_si512(sc32_idx[1]), _mm512_castsi256_si512(sm16));
    k->scmn = scmn;
    k->d = h2f(x4->d);
    k->ndmin = -h2f(x4->dmin);
}

AI __m512i q45_msum(const block_q8_K *y, const struct q45_blk *k)
{
    return _mm512_zextsi256_si512(_mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)y->bsums), k->mins));
}

AI float q45_step(float acc, int32_t S, int32_t M, const struct q45_blk *k, float yd)
{
    acc = fma_step(acc, S, k->d * yd);
    return fma_step(acc, M, k->ndmin * yd);
}

AI void k_q45_K(int64_t n, const void *w, const void *a, size_t as, const int NC, float *s, size_t ss,
                const int five)
{
    float acc[MOEQ_GEMM_NC];
#pragma GCC unroll 16
    for (int c = 0; c < NC; c++) acc[c] = 0;
    const __mmask64 none[4] = { 0, 0, 0, 0 };
    int64_t b = 0;
    if (NC == 1) b = one_col4(five ? TK_Q5_K : TK_Q4_K, n, w, a, &acc[0]);
    for (; b < n / QK_K; b++) {
        struct q45_blk k;
        prefetch_ahead(w, b, five ? sizeof(block_q5_K) : sizeof(block_q4_K), PREFETCH_K);
        q45_unpack(w, b, five, &k);
        int c = 0;
        for (; c + 4 <= NC; c += 4) {
            const block_q8_K *y0 = q8k_col(a, as, c, b), *y1 = q8k_col(a, as, c + 1, b);
            const block_q8_K *y2 = q8k_col(a, as, c + 2, b), *y3 = q8k_col(a, as, c + 3, b);
            __m128i S = hsum4_epi32(block_isum(y0, k.wv, none, k.sc16, 0), block_isum(y1, k.wv, none, k.sc16, 0),
                                    block_isum(y2, k.wv, none, k.sc16, 0), block_isum(y3, k.wv, none, k.sc16, 0));
            __m128i M = hsum4_epi32(q45_msum(y0, &k), q45_msum(y1, &k), q45_msum(y2, &k), q45_msum(y3, &k));
            __m128 yd = _mm_set_ps(y3->d, y2->d, y1->d, y0->d);
            __m128 r = _mm_fmadd_ps(_mm_cvtepi32_ps(S), _mm_mul_ps(_mm_set1_ps(k.d), yd), _mm_loadu_ps(acc + c));
            r = _mm_fmadd_ps(_mm_cvtepi32_ps(M), _mm_mul_ps(_mm_set1_ps(k.ndmin), yd), r);
            _mm_storeu_ps(acc + c, r);
        }
        for (; c < NC; c++) {
            const block_q8_K *y = q8k_col(a, as, c, b);
            acc[c] = q45_step(acc[c], hsum_epi32(block_isum(y, k.wv, none, k.sc16, 0)),
                              hsum_epi32(q45_msum(y, &k)), &k, y->d);
        }
    }
    for (int c = 0; c < NC; c++) s[(size_t)c * ss] = acc[c];
}

SIMD_ENTRIES_Q45


/*
 * Tile kernel (many columns), as for IQ2_S / IQ3_S: the weights are
 * unsigned already, so the transposed activations stay signed and no
 * correction is needed; the mins meet the columns' bsums, summed per
 * sub-block of 32 and laid out column-per-lane at transpose time.
 */
/* One unpacked K-quant block of a tile row (Q4_K, Q5_K, Q6_K). */
struct tile_k {
    uint8_t w[QK_K];       /* values in element order (Q6_K: stored, 0..63) */
    int32_t sc[16];        /* sub-block scales: 8 (Q4_K / Q5_K) or 16 (Q6_K) */
    int32_t mnp[4];        /* Q4_K / Q5_K mins in int16 pairs: mn[2k] | mn[2k + 1] << 16 */
    float   d, ndmin;
};

static void tile_q45_unpack(const void *w, int64_t b, const int five, struct tile_k *t)
{
    struct q45_blk k;
    q45_unpack(w, b, five, &k);
    /* wv[p]: bytes 0..31 sub-block 2p, 32..63 sub-block 2p + 1, elements in order */
    for (int p = 0; p < 4; p++) _mm512_storeu_si512(t->w + 64 * p, k.wv[p]);
    uint8_t sm[16];
    _mm_storeu_si128((__m128i *)sm, k.scmn);
    for (int j = 0; j < 8; j++) t->sc[j] = sm[j];
    for (int k = 0; k < 4; k++) t->mnp[k] = sm[8 + 2 * k] | sm[9 + 2 * k] << 16;
    t->d = k.d;
    t->ndmin = k.ndmin;
}

/* Q6_K: each column's activation sums per sub-block of 16, times 32 (the
 * stored values' offset), one column per lane (missing columns 0). */
AI void tile_bsums32(const void *a, size_t as, int c0, int cnt, int nb, __m512i *bs)
{
    for (int b = 0; b < nb; b++)
        for (int j = 0; j < 16; j++) {
            int32_t v[16];
            for (int c = 0; c < 16; c++) v[c] = c < cnt ? 32 * q8k_col(a, as, c0 + c, b)->bsums[j] : 0;
            bs[b * 16 + j] = _mm512_loadu_si512(v);
        }
}

/* Q4_K / Q5_K: each column's activation sums per sub-block of 32 in int16
 * pairs (sub-blocks 2k, 2k + 1 in dword k; |sum| <= 32 * 127 fits), so
 * one dpwssd applies two mins. */
AI void tile_bsums_pairs(const void *a, size_t as, int c0, int cnt, int nb, __m512i *bs)
{
    for (int b = 0; b < nb; b++)
        for (int k = 0; k < 4; k++) {
            int32_t v[16];
            for (int c = 0; c < 16; c++) {
                int lo = 0, hi = 0;
                if (c < cnt) {
                    const int16_t *q = q8k_col(a, as, c0 + c, b)->bsums + 4 * k;
                    lo = q[0] + q[1];
                    hi = q[2] + q[3];
                }
                v[c] = (int32_t)((uint32_t)(uint16_t)lo | (uint32_t)(uint16_t)hi << 16);
            }
            bs[b * 4 + k] = _mm512_loadu_si512(v);
        }
}

/*
 * Sub-block j (G dwords of weights, G * 4 values) of four tile rows against
 * the transposed activations ab: v = v0 + the dpbusd sums in dword order,
 * then S[i] += sc[i] * v, all in exact int32 (Q4_K / Q5_K: G = 8, v0 = 0;
 * Q6_K: G = 4, v0 = -bs, the correction of its +32 offset).
 */
AI void tile_sub4(const int G, int j, const __m512i *ab, const uint8_t *const w[4], const int32_t sc[4],
                  __m512i v0, __m512i S[4])
{
    __m512i v[4];
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) v[i] = v0;
#pragma GCC unroll 8
    for (int g = 0; g < G; g++) {
        __m512i av = ab[G * j + g];
#pragma GCC unroll 4
        for (int i = 0; i < 4; i++)
            v[i] = _mm512_dpbusd_epi32(v[i], _mm512_set1_epi32(((const int32_t *)w[i])[G * j + g]), av);
    }
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) S[i] = _mm512_add_epi32(S[i], _mm512_mullo_epi32(v[i], _mm512_set1_epi32(sc[i])));
}

/* -------------------------------------------------------------- Q6_K */

struct q6_blk {
    __m512i wv[4];     /* stored values, 0..63 (the weight + 32) */
    __m512i sc16[2];   /* scales, packed for block_isum */
    __m256i off;       /* -32 * scale per bsum */
    __m128i sc8;       /* the 16 scales */
    float d;
};

AI void q6_unpack(const block_q6_K *xb, struct q6_blk *k)
{
    const __m512i m4 = _mm512_set1_epi8(0x0f), m2 = _mm512_set1_epi8(0x03);
#pragma GCC unroll 16
    for (int h = 0; h < 2; h++) {
        /* 64 ql bytes: low nibbles are elements 0..63 of this half,
         * high nibbles 64..127; qh supplies 2 bits at shifts 0/2/4/6 */
        __m512i ql = _mm512_loadu_si512((const void *)(xb->ql + 64 * h));
        __m512i qh = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(xb->qh + 32 * h)));
        qh = _mm512_mask_srli_epi16(qh, 0xffff0000u, qh, 2);
        k->wv[2 * h] = _mm512_or_si512(_mm512_and_si512(ql, m4),
                                       _mm512_slli_epi16(_mm512_and_si512(qh, m2), 4));
        k->wv[2 * h + 1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4), m4),
                                           _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(qh, 4), m2), 4));
    }
    __m128i sc8 = _mm_loadu_si128((const __m128i *)xb->scales);
    __m256i s16 = _mm256_cvtepi8_epi16(sc8);
    scales16_packed(s16, k->sc16);
    /* weights are stored +32: subtract 32 * scale * bsum per sub-block */
    k->off = _mm256_sub_epi16(_mm256_setzero_si256(), _mm256_slli_epi16(s16, 5));
    k->sc8 = sc8;
    k->d = h2f(xb->d);
}

/* The block's exact integer sum against one column, as 16 lanes. */
AI __m512i q6_isum(const block_q8_K *y, const struct q6_blk *k)
{
    const __mmask64 none[4] = { 0, 0, 0, 0 };
    __m512i isum = block_isum(y, k->wv, none, k->sc16, 0);
    __m256i corr = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)y->bsums), k->off);
    return _mm512_add_epi32(isum, _mm512_zextsi256_si512(corr));
}

/* One block of any of the five against one column: its exact sum S (and
 * for Q4_K/Q5_K the mins' sum M), with the factors p = d * y.d and
 * q = -dmin * y.d of its float steps. */
AI void one_block(const int kind, const void *w, int64_t b, const void *a, __m512i *S, __m512i *M,
                  float *p, float *q, const int prefetch)
{
    const block_q8_K *y = q8k_col(a, 0, 0, b);
    if (kind == TK_IQ2_S || kind == TK_IQ3_S) {
        const int three = kind == TK_IQ3_S;
        __m512i wv[4], sc16[2];
        __mmask64 sg[4];
        if (prefetch) prefetch_ahead(w, b, three ? sizeof(block_iq3_s) : sizeof(block_iq2_s), PREFETCH_IQ);
        const float d = signed_unpack(w, b, three, wv, sg, sc16);
        *S = block_isum(y, wv, sg, sc16, 1);
        *p = d * y->d;
    } else if (kind == TK_Q4_K || kind == TK_Q5_K) {
        const int five = kind == TK_Q5_K;
        const __mmask64 none[4] = { 0, 0, 0, 0 };
        struct q45_blk k;
        if (prefetch) prefetch_ahead(w, b, five ? sizeof(block_q5_K) : sizeof(block_q4_K), PREFETCH_K);
        q45_unpack(w, b, five, &k);
        *S = block_isum(y, k.wv, none, k.sc16, 0);
        *M = q45_msum(y, &k);
        *p = k.d * y->d;
        *q = k.ndmin * y->d;
    } else {
        struct q6_blk k;
        if (prefetch) prefetch_ahead(w, b, sizeof(block_q6_K), PREFETCH_K);
        q6_unpack((const block_q6_K *)w + b, &k);
        *S = q6_isum(y, &k);
        *p = k.d * y->d;
    }
}

/* One column, four blocks at a time: their sums reduced together, then
 * the float steps in block order. Returns the blocks done (a multiple of
 * four); the caller's block loop takes the rest. */
AI int64_t one_col4(const int kind, int64_t n, const void *w, const void *a, float *acc)
{
    const int mins = kind == TK_Q4_K || kind == TK_Q5_K;
    const int64_t nb4 = n / QK_K / 4 * 4;
    for (int64_t b = 0; b < nb4; b += 4) {
        __m512i is[4], ms[4] = { _mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(),
                                 _mm512_setzero_si512() };
        float p[4], q[4] = { 0, 0, 0, 0 };
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) one_block(kind, w, b + j, a, &is[j], &ms[j], &p[j], &q[j], 1);
        const __m128i M = hsum4_epi32(ms[0], ms[1], ms[2], ms[3]);
        *acc = fma_steps4(*acc, hsum4_epi32(is[0], is[1], is[2], is[3]), _mm_setr_ps(p[0], p[1], p[2], p[3]),
                          mins ? &M : NULL, _mm_setr_ps(q[0], q[1], q[2], q[3]));
    }
    return nb4;
}

/* One float step per block: acc = fma((float)S_b, d * y.d, acc). */
AI void k_q6_K(int64_t n, const void *w, const void *a, size_t as, const int NC, float *s, size_t ss)
{
    const block_q6_K *x = w;
    float acc[MOEQ_GEMM_NC];
#pragma GCC unroll 16
    for (int c = 0; c < NC; c++) acc[c] = 0;
    int64_t b = 0;
    if (NC == 1) b = one_col4(TK_Q6_K, n, w, a, &acc[0]);
    for (; b < n / QK_K; b++) {
        struct q6_blk k;
        prefetch_ahead(w, b, sizeof(block_q6_K), PREFETCH_K);
        q6_unpack(x + b, &k);
        int c = 0;
        for (; c + 4 <= NC; c += 4) {
            const block_q8_K *y0 = q8k_col(a, as, c, b), *y1 = q8k_col(a, as, c + 1, b);
            const block_q8_K *y2 = q8k_col(a, as, c + 2, b), *y3 = q8k_col(a, as, c + 3, b);
            __m128i S = hsum4_epi32(q6_isum(y0, &k), q6_isum(y1, &k), q6_isum(y2, &k), q6_isum(y3, &k));
            __m128 p = _mm_mul_ps(_mm_set1_ps(k.d), _mm_set_ps(y3->d, y2->d, y1->d, y0->d));
            _mm_storeu_ps(acc + c, _mm_fmadd_ps(_mm_cvtepi32_ps(S), p, _mm_loadu_ps(acc + c)));
        }
        for (; c < NC; c++) {
            const block_q8_K *y = q8k_col(a, as, c, b);
            acc[c] = fma_step(acc[c], hsum_epi32(q6_isum(y, &k)), k.d * y->d);
        }
    }
    for (int c = 0; c < NC; c++) s[(size_t)c * ss] = acc[c];
}

/* One row, one column, by the kernel of kind. */
AI void one_row(const int kind, int64_t n, const void *w, const void *a, float *s)
{
    if (kind == TK_IQ2_S || kind == TK_IQ3_S) k_signed(n, w, a, 0, 1, s, 0, kind == TK_IQ3_S);
    else if (kind == TK_Q4_K || kind == TK_Q5_K) k_q45_K(n, w, a, 0, 1, s, 0, kind == TK_Q5_K);
    else k_q6_K(n, w, a, 0, 1, s, 0);
}

/* Decode (one column) for the five tile kinds: row after row where
 * by_row, else four rows at a time, their block sums reduced together
 * (then the float steps of the four as one vector; the mins' after). */
AI void rows_kind(const int kind, int64_t n, const void *w, size_t ws, int64_t nr, const void *a,
                  float *s, int by_row)
{
    const uint8_t *wr = w;
    const int mins = kind == TK_Q4_K || kind == TK_Q5_K;
    const int64_t nb = n / QK_K;
    int64_t r = 0;
    for (; !by_row && r + 4 <= nr; r += 4) {
        __m128 acc = _mm_setzero_ps();
        for (int64_t b = 0; b < nb; b++) {
            __m512i is[4], ms[4];
            float p[4], q[4];
#pragma GCC unroll 4
            for (int j = 0; j < 4; j++)
                one_block(kind, wr + (size_t)(r + j) * ws, b, a, &is[j], &ms[j], &p[j], &q[j], 0);
            /* (built in registers: a vector load of four scalar stores
             * would stall on store forwarding) */
            __m128i S = hsum4_epi32(is[0], is[1], is[2], is[3]);
            acc = _mm_fmadd_ps(_mm_cvtepi32_ps(S), _mm_setr_ps(p[0], p[1], p[2], p[3]), acc);
            if (mins) {
                __m128i M = hsum4_epi32(ms[0], ms[1], ms[2], ms[3]);
                acc = _mm_fmadd_ps(_mm_cvtepi32_ps(M), _mm_setr_ps(q[0], q[1], q[2], q[3]), acc);
            }
        }
        _mm_storeu_ps(s + r, acc);
    }
    for (; r < nr; r++) one_row(kind, n, wr + (size_t)r * ws, a, s + r);
}

static void rows_iq2_s(int64_t n, const void *w, size_t ws, int64_t nr, const void *a, float *s)
{ rows_kind(TK_IQ2_S, n, w, ws, nr, a, s, decode_row_by_row(n)); }
/* IQ3_S's unpacking (64 lookups a block) leaves no registers for four
 * rows in flight: row by row is faster there. */
static void rows_iq3_s(int64_t n, const void *w, size_t ws, int64_t nr, const void *a, float *s)
{ rows_kind(TK_IQ3_S, n, w, ws, nr, a, s, 1); }
static void rows_q4_K(int64_t n, const void *w, size_t ws, int64_t nr, const void *a, float *s)
{ rows_kind(TK_Q4_K, n, w, ws, nr, a, s, decode_row_by_row(n)); }
static void rows_q5_K(int64_t n, const void *w, size_t ws, int64_t nr, const void *a, float *s)
{ rows_kind(TK_Q5_K, n, w, ws, nr, a, s, decode_row_by_row(n)); }
static void rows_q6_K(int64_t n, const void *w, size_t ws, int64_t nr, const void *a, float *s)
{ rows_kind(TK_Q6_K, n, w, ws, nr, a, s, decode_row_by_row(n)); }

/* Tile kernel: unsigned stored values against signed transposed
 * activations; the +32 comes back out through 32 * bsum per sub-block of
 * 16, laid out one column per lane at transpose time. */

static void tile_q6_unpack(const void *w, int64_t b, struct tile_k *t)
{
    struct q6_blk k;
    q6_unpack((const block_q6_K *)w + b, &k);
    for (int p = 0; p < 4; p++) _mm512_storeu_si512(t->w + 64 * p, k.wv[p]);
    _mm512_storeu_si512(t->sc, _mm512_cvtepi8_epi32(k.sc8));
    t->d = k.d;
}

/* The four-row kernel of the K-quant tiles: per block, the sub-block sums
 * (Q4_K / Q5_K: 8 of 8 dwords; Q6_K: 16 of 4, less the +32 offset through
 * the bsums) and, for Q4_K / Q5_K, the mins against the paired bsums. */
AI void tile_k_quad(const int six, const struct tile_k *const t[4], int nb, const __m512i *at,
                    const __m512i *bs, const __m512 *yd, __m512 acc[4])
{
    __m512 a[4];
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) a[i] = _mm512_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const __m512i *ab = at + (size_t)b * 64;
        __m512i S[4], M[4];
#pragma GCC unroll 4
        for (int i = 0; i < 4; i++) { S[i] = _mm512_setzero_si512(); M[i] = _mm512_setzero_si512(); }
        for (int j = 0; j < (six ? 16 : 8); j++)
            tile_sub4(six ? 4 : 8, j, ab, (const uint8_t *const[4]){ t[0][b].w, t[1][b].w, t[2][b].w, t[3][b].w },
                      (const int32_t[4]){ t[0][b].sc[j], t[1][b].sc[j], t[2][b].sc[j], t[3][b].sc[j] },
                      six ? _mm512_sub_epi32(_mm512_setzero_si512(), bs[b * 16 + j]) : _mm512_setzero_si512(), S);
        if (!six) {
#pragma GCC unroll 4
            for (int k = 0; k < 4; k++) {
                const __m512i bk = bs[b * 4 + k];
#pragma GCC unroll 4
                for (int i = 0; i < 4; i++) M[i] = _mm512_dpwssd_epi32(M[i], bk, _mm512_set1_epi32(t[i][b].mnp[k]));
            }
        }
#pragma GCC unroll 4
        for (int i = 0; i < 4; i++) {
            a[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(S[i]), _mm512_mul_ps(_mm512_set1_ps(t[i][b].d), yd[b]), a[i]);
            if (!six)
                a[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(M[i]), _mm512_mul_ps(_mm512_set1_ps(t[i][b].ndmin), yd[b]), a[i]);
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) acc[i] = a[i];
}

/* ------------------------------------------------------- tile driver */

/*
 * One driver for the five tile kernels: per pass of up to 64 x 16 / blocks
 * columns per row, transpose them (and lay out their bsums where the format needs
 * them) once, then take the rows four at a time: unpack each row's blocks,
 * run the format's four-row kernel against every group of 16 columns and
 * scatter the sums to out[c * os + r].
 */

AI void tile_run(int64_t K, const void *W, size_t ws, int64_t nr, const void *A, size_t as,
                 int64_t nc, float *out, size_t os, const int kind)
{
    const int nb = (int)(K / QK_K);
    const int iq = kind == TK_IQ2_S || kind == TK_IQ3_S;
    /* transposed activations of one pass: 256 KiB, whatever the row
     * length, so shorter rows take more columns per pass (each pass
     * unpacks the rows again) */
    enum { GB = (TILE_COLS / 16) * TILE_BLOCKS };    /* group-blocks per pass */
    __m512i at[GB * 64];
    __m512i bs[GB * 16];
    __m512 yd[GB];
    const int pass_cols = 16 * (GB / nb);
    union {
        struct tile_row iq[4][TILE_BLOCKS];
        struct tile_k k[4][TILE_BLOCKS];
    } tr;
    const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    const __m512i idx = _mm512_mullo_epi32(lane, _mm512_set1_epi32((int)os));
    for (int64_t c0 = 0; c0 < nc; c0 += pass_cols) {
        int cols = nc - c0 < pass_cols ? (int)(nc - c0) : pass_cols;
        /* the last 1..3 columns go to tile_few (IQ: from the unpacked
         * table) or the direct kernel (K-quants: cheap to unpack), not to a
         * group of 16 lanes that would be mostly padding */
        const int few = c0 + cols == nc && cols % 16 <= 3 ? cols % 16 : 0;
        int ng = (cols - few + 15) / 16;
        for (int g = 0; g < ng; g++) {
            int cnt = cols - 16 * g < 16 ? cols - 16 * g : 16;
            tile_transpose(A, as, (int)c0 + 16 * g, cnt, nb, at + (size_t)g * nb * 64, yd + (size_t)g * nb, iq);
            if (kind == TK_Q4_K || kind == TK_Q5_K) tile_bsums_pairs(A, as, (int)c0 + 16 * g, cnt, nb, bs + (size_t)g * nb * 16);
            if (kind == TK_Q6_K) tile_bsums32(A, as, (int)c0 + 16 * g, cnt, nb, bs + (size_t)g * nb * 16);
        }
        for (int64_t r = 0; r < nr; r += 4) {
            const int nrow = nr - r < 4 ? (int)(nr - r) : 4;
            for (int i = 0; i < nrow && (ng || iq); i++) {
                const uint8_t *wr = (const uint8_t *)W + (size_t)(r + i) * ws;
                for (int b = 0; b < nb; b++) {
                    if (iq) tile_unpack(wr, b, kind == TK_IQ3_S, &tr.iq[i][b]);
                    else if (kind == TK_Q6_K) tile_q6_unpack(wr, b, &tr.k[i][b]);
                    else tile_q45_unpack(wr, b, kind == TK_Q5_K, &tr.k[i][b]);
                }
            }
            for (int g = 0; g < ng; g++) {
                int cnt = cols - 16 * g < 16 ? cols - 16 * g : 16;
                __mmask16 m = (__mmask16)((1u << cnt) - 1);
                __m512 acc[4];
                if (iq) {
                    const struct tile_row *t[4];
                    for (int i = 0; i < 4; i++) t[i] = tr.iq[i < nrow ? i : 0];
                    tile_quad(t, nb, at + (size_t)g * nb * 64, yd + (size_t)g * nb, kind == TK_IQ3_S, acc);
                } else {
                    const struct tile_k *t[4];
                    for (int i = 0; i < 4; i++) t[i] = tr.k[i < nrow ? i : 0];
                    tile_k_quad(kind == TK_Q6_K, t, nb, at + (size_t)g * nb * 64, bs + (size_t)g * nb * 16,
                                yd + (size_t)g * nb, acc);
                }
                float *o = out + (size_t)(c0 + 16 * g) * os + r;
                for (int i = 0; i < nrow; i++) _mm512_mask_i32scatter_ps(o + i, m, idx, acc[i], 4);
            }
            if (few && !iq) {
                const int cf = (int)c0 + 16 * ng;
                const void *af = (const uint8_t *)A + (size_t)cf * as;
                for (int i = 0; i < nrow; i++) {
                    const uint8_t *wr = (const uint8_t *)W + (size_t)(r + i) * ws;
                    float *o = out + (size_t)cf * os + r + i;
#define FEW_K(NC) do {                                                          \
                        if (kind == TK_Q6_K) k_q6_K(K, wr, af, as, NC, o, os);           \
                        else k_q45_K(K, wr, af, as, NC, o, os, kind == TK_Q5_K);          \
                    } while (0)
                    if (few == 1) FEW_K(1); else if (few == 2) FEW_K(2); else FEW_K(3);
#undef FEW_K
                }
            }
            if (few && iq) {
                const struct tile_row *t[4];
                for (int i = 0; i < 4; i++) t[i] = tr.iq[i < nrow ? i : 0];
                const int cf = (int)c0 + 16 * ng;
                if (few == 1) tile_few(t, nb, A, as, cf, 1, out + r, os, nrow);
                else if (few == 2) tile_few(t, nb, A, as, cf, 2, out + r, os, nrow);
                else tile_few(t, nb, A, as, cf, 3, out + r, os, nrow);
            }
        }
    }
}

#define TILE_ENTRY(name, kind)                                                                 \
    static int tile_##name(int64_t K, const void *W, size_t ws, int64_t nr, const void *A,     \
                           size_t as, int64_t nc, float *out, size_t os)                       \
    {                                                                                          \
        if (K / QK_K > TILE_BLOCKS || (int64_t)os * 16 > INT32_MAX / 4) return 0;             \
        tile_run(K, W, ws, nr, A, as, nc, out, os, kind);                                      \
        return 1;                                                                              \
    }
TILE_ENTRY(iq2_s, TK_IQ2_S)
TILE_ENTRY(iq3_s, TK_IQ3_S)
TILE_ENTRY(q4_K, TK_Q4_K)
TILE_ENTRY(q5_K, TK_Q5_K)
TILE_ENTRY(q6_K, TK_Q6_K)

/* ---------------------------------------- Q8_0, Q4_0, IQ4_NL (vs Q8_0) */

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

SIMD_ENTRIES_B32

/*
 * Tile kernel for Q8_0 / Q4_0 / IQ4_NL (many columns). The direct kernel
 * above fixes these formats' arithmetic: eight float lanes per (row,
 * column), lane L accumulating fma((float)dp_L, dw * dy, .) block by block,
 * where dp_L is the exact sum of the products of weights 4L..4L+3, then
 * ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7)). The tile keeps those
 * eight lanes as eight vectors of 16 columns and ends with the same sums,
 * so its results are the direct kernel's bit for bit. Activations are
 * transposed as unsigned (+128) bytes; each dword's correction
 * -128 * (its four weights) starts the dpbusd.
 */
struct tile_b32 {
    int8_t  w[32];          /* signed weights */
    int32_t corr[8];        /* -128 * sum of weights 4L..4L+3 */
    float   d;
};

#define TB32_BLOCKS 128     /* rows up to 4096 */
#define TB32_GB     256     /* group-blocks transposed per pass (128 KiB) */

static void tile_b32_unpack(const void *w, int64_t b, const int kind, struct tile_b32 *t)
{
    const size_t bsize = kind == 0 ? sizeof(block_q8_0) : sizeof(block_q4_0);
    const uint8_t *blk = (const uint8_t *)w + b * bsize;
    const __m256i q = load_w32(blk, kind);
    _mm256_storeu_si256((__m256i *)t->w, q);
    const __m256i s4 = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_set1_epi8(1), q);
    _mm256_storeu_si256((__m256i *)t->corr, _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(s4, 7)));
    ggml_half dh;
    memcpy(&dh, blk, 2);
    t->d = h2f(dh);
}

/* Columns [c0, c0 + cnt) of every block of 32 (nb even): at[8b + L] =
 * dword L of the 16 columns, unsigned; yd[b] = their scales (missing
 * columns: zeros). Two blocks make one 16 x 16 transpose. */
static void tile_b32_transpose(const void *a, size_t as, int c0, int cnt, int nb, __m512i *at, __m512 *yd)
{
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    for (int b = 0; b < nb; b += 2) {
        __m512i r[16];
        float d0[16], d1[16];
        for (int c = 0; c < 16; c++) {
            if (c < cnt) {
                const block_q8_0 *y = (const block_q8_0 *)((const uint8_t *)a + (size_t)(c0 + c) * as) + b;
                const __m512i q = _mm512_inserti64x4(
                    _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)y[0].qs)),
                    _mm256_loadu_si256((const __m256i *)y[1].qs), 1);
                r[c] = _mm512_xor_si512(q, flip);
                d0[c] = h2f(y[0].d);
                d1[c] = h2f(y[1].d);
            } else {
                r[c] = flip;
                d0[c] = d1[c] = 0.0f;
            }
        }
        transpose16x16(r);
        for (int j = 0; j < 16; j++) at[(size_t)b * 8 + j] = r[j];
        yd[b] = _mm512_loadu_ps(d0);
        yd[b + 1] = _mm512_loadu_ps(d1);
    }
}

/* Two rows against one group of 16 columns. */
AI void tile_b32_pair(const struct tile_b32 *const t[2], int nb, const __m512i *at, const __m512 *yd,
                      __m512 out[2])
{
    __m512 acc[2][8];
#pragma GCC unroll 8
    for (int L = 0; L < 8; L++) acc[0][L] = acc[1][L] = _mm512_setzero_ps();
    for (int b = 0; b < nb; b++) {
        __m512 p[2];
#pragma GCC unroll 2
        for (int i = 0; i < 2; i++) p[i] = _mm512_mul_ps(_mm512_set1_ps(t[i][b].d), yd[b]);
#pragma GCC unroll 8
        for (int L = 0; L < 8; L++) {
            const __m512i av = at[(size_t)b * 8 + L];
#pragma GCC unroll 2
            for (int i = 0; i < 2; i++) {
                const __m512i v = _mm512_dpbusd_epi32(_mm512_set1_epi32(t[i][b].corr[L]), av,
                                                      _mm512_set1_epi32(((const int32_t *)t[i][b].w)[L]));
                acc[i][L] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(v), p[i], acc[i][L]);
            }
        }
    }
#pragma GCC unroll 2
    for (int i = 0; i < 2; i++) {
        const __m512 *l = acc[i];
        out[i] = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(l[0], l[4]), _mm512_add_ps(l[2], l[6])),
                               _mm512_add_ps(_mm512_add_ps(l[1], l[5]), _mm512_add_ps(l[3], l[7])));
    }
}

AI int tile_b32_run(int64_t K, const void *W, size_t ws, int64_t nr, const void *A, size_t as,
                    int64_t nc, float *out, size_t os, const int kind)
{
    const int nb = (int)(K / QK8_0);
    if (K % (2 * QK8_0) || nb > TB32_BLOCKS || (int64_t)os * 16 > INT32_MAX / 4) return 0;
    __m512i at[TB32_GB * 8];
    __m512 yd[TB32_GB];
    struct tile_b32 tr[2][TB32_BLOCKS];
    const int pass_cols = 16 * (TB32_GB / nb);
    const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    const __m512i idx = _mm512_mullo_epi32(lane, _mm512_set1_epi32((int)os));
    for (int64_t c0 = 0; c0 < nc; c0 += pass_cols) {
        const int cols = nc - c0 < pass_cols ? (int)(nc - c0) : pass_cols;
        /* the last 1..3 columns: the direct kernel, as for the K-quants */
        const int few = c0 + cols == nc && cols % 16 <= 3 ? cols % 16 : 0;
        const int ng = (cols - few + 15) / 16;
        for (int g = 0; g < ng; g++) {
            const int cnt = cols - 16 * g < 16 ? cols - 16 * g : 16;
            tile_b32_transpose(A, as, (int)c0 + 16 * g, cnt, nb, at + (size_t)g * nb * 8, yd + (size_t)g * nb);
        }
        for (int64_t r = 0; r < nr; r += 2) {
            const int nrow = nr - r < 2 ? (int)(nr - r) : 2;
            for (int i = 0; i < nrow && ng; i++)
                for (int b = 0; b < nb; b++) tile_b32_unpack((const uint8_t *)W + (size_t)(r + i) * ws, b, kind, &tr[i][b]);
            const struct tile_b32 *t[2] = { tr[0], tr[nrow > 1 ? 1 : 0] };
            for (int g = 0; g < ng; g++) {
                const int cnt = cols - 16 * g < 16 ? cols - 16 * g : 16;
                const __mmask16 m = (__mmask16)((1u << cnt) - 1);
                __m512 acc[2];
                tile_b32_pair(t, nb, at + (size_t)g * nb * 8, yd + (size_t)g * nb, acc);
                float *o = out + (size_t)(c0 + 16 * g) * os + r;
                for (int i = 0; i < nrow; i++) _mm512_mask_i32scatter_ps(o + i, m, idx, acc[i], 4);
            }
            if (few) {
                const int cf = (int)c0 + 16 * ng;
                const void *af = (const uint8_t *)A + (size_t)cf * as;
                for (int i = 0; i < nrow; i++) {
                    const uint8_t *wr = (const uint8_t *)W + (size_t)(r + i) * ws;
                    float *o = out + (size_t)cf * os + r + i;
                    if (few == 1) k_b32(K, wr, af, as, 1, o, os, kind);
                    else if (few == 2) k_b32(K, wr, af, as, 2, o, os, kind);
                    else k_b32(K, wr, af, as, 3, o, os, kind);
                }
            }
        }
    }
    return 1;
}

static int tile_q8_0(int64_t K, const void *W, size_t ws, int64_t nr, const void *A, size_t as, int64_t nc,
                     float *out, size_t os)
{ return tile_b32_run(K, W, ws, nr, A, as, nc, out, os, 0); }
static int tile_q4_0(int64_t K, const void *W, size_t ws, int64_t nr, const void *A, size_t as, int64_t nc,
                     float *out, size_t os)
{ return tile_b32_run(K, W, ws, nr, A, as, nc, out, os, 1); }
static int tile_iq4_nl(int64_t K, const void *W, size_t ws, int64_t nr, const void *A, size_t as, int64_t nc,
                       float *out, size_t os)
{ return tile_b32_run(K, W, ws, nr, A, as, nc, out, os, 2); }

/* ------------------------------------- the other 256-element formats */

/*
 * Q2_K, Q3_K, IQ2_XXS, IQ2_XS, IQ3_XXS and IQ4_XS share one kernel: each
 * format unpacks a block into the common register form (struct vblk) and
 * the column loop is the same as for the formats above. Q3_K values are
 * stored +4 (0..7, corrected through the bsums), the IQ2/IQ3 grids carry
 * sign masks, and IQ4_XS codebook values reach 127, so its 4-byte partial
 * sums can pass 16 bits: it multiplies them by the scales in 32 bits.
 */
struct vblk {
    __m512i   wv[4];   /* unsigned values (magnitudes where sg is used) */
    __mmask64 sg[4];   /* sign bits, one per weight */
    __m512i   sc[4];   /* per-dword scales */
    __m256i   bs16;    /* per-bsum factor: Q2_K mins, Q3_K -4 * scale */
    float     d, dmin;
};

AI __m512i join256(__m256i lo, __m256i hi) { return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1); }

AI __m512i blend_scales(int s0, int s1)
{
    return _mm512_mask_blend_epi32(0xff00, _mm512_set1_epi32(s0), _mm512_set1_epi32(s1));
}

/* Low two bits of Q2_K / Q3_K: element 128h + 32j + l is bits 2j..2j+1 of
 * qs[32h + l]; vector k holds j = 2(k%2) (low half) and 2(k%2)+1 (high). */
AI __m512i k_low2(const uint8_t *qs, int k)
{
    __m512i q = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(qs + 32 * (k / 2))));
    q = _mm512_srli_epi16(q, 4 * (k % 2));
    q = _mm512_mask_srli_epi16(q, 0xffff0000u, q, 2);
    return _mm512_and_si512(q, _mm512_set1_epi8(3));
}

AI void vunpack(const int T, const void *w, int64_t b, struct vblk *v)
{
    const __m128i m4 = _mm_set1_epi8(0x0f);
    if (T == V_Q2_K) {
        /* scales in the low nibbles, mins in the high ones: the layout of
         * q2k_get_scale_min (quants_blocks.h), read 16 at a time */
        const block_q2_K *x = (const block_q2_K *)w + b;
        __m128i s8 = _mm_loadu_si128((const __m128i *)x->scales);
        __m128i lo = _mm_and_si128(s8, m4);
        for (int k = 0; k < 4; k++) {
            v->wv[k] = k_low2(x->qs, k);
            v->sc[k] = _mm512_cvtepu8_epi32(_mm_shuffle_epi8(lo, _mm_loadu_si128((const __m128i *)spread16[k])));
        }
        v->bs16 = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(s8, 4), m4));
        v->d = h2f(x->d);
        v->dmin = h2f(x->dmin);
    } else if (T == V_Q3_K) {
        const block_q3_K *x = (const block_q3_K *)w + b;
        /* the high bit of element e is bit e/32 of hmask[e % 32] */
        __m512i hm = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)x->hmask));
        hm = _mm512_mask_srli_epi16(hm, 0xffff0000u, hm, 1);
        for (int k = 0; k < 4; k++) {
            __m512i hi = _mm512_and_si512(_mm512_srli_epi16(hm, 2 * k), _mm512_set1_epi8(1));
            v->wv[k] = _mm512_or_si512(k_low2(x->qs, k), _mm512_slli_epi16(hi, 2));
        }
        /* 16 six-bit scales: low nibbles from bytes 0..7, top pairs from 8..11 */
        uint32_t u0, u1, u2;
        memcpy(&u0, x->scales, 4);
        memcpy(&u1, x->scales + 4, 4);
        memcpy(&u2, x->scales + 8, 4);
        uint32_t a0 = (u0 & 0x0f0f0f0fu) | ((u2 & 0x03030303u) << 4);
        uint32_t a1 = (u1 & 0x0f0f0f0fu) | (((u2 >> 2) & 0x03030303u) << 4);
        uint32_t a2 = ((u0 >> 4) & 0x0f0f0f0fu) | (((u2 >> 4) & 0x03030303u) << 4);
        uint32_t a3 = ((u1 >> 4) & 0x0f0f0f0fu) | (((u2 >> 6) & 0x03030303u) << 4);
        __m128i sc8 = _mm_sub_epi8(_mm_set_epi32((int)a3, (int)a2, (int)a1, (int)a0), _mm_set1_epi8(32));
        for (int k = 0; k < 4; k++)
            v->sc[k] = _mm512_cvtepi8_epi32(_mm_shuffle_epi8(sc8, _mm_loadu_si128((const __m128i *)spread16[k])));
        v->bs16 = _mm256_sub_epi16(_mm256_setzero_si256(), _mm256_slli_epi16(_mm256_cvtepi8_epi16(sc8), 2));
        v->d = h2f(x->d);
        v->dmin = 0;
    } else if (T == V_IQ2_XXS) {
        const block_iq2_xxs *x = (const block_iq2_xxs *)w + b;
        const uint8_t *q = (const uint8_t *)x->qs;
        for (int k = 0; k < 4; k++) {
            const uint8_t *p0 = q + 16 * k, *p1 = p0 + 8;
            uint32_t s0, s1;
            memcpy(&s0, p0 + 4, 4);
            memcpy(&s1, p1 + 4, 4);
            v->wv[k] = join256(
                _mm256_set_epi64x((long long)iq2xxs_grid[p0[3]], (long long)iq2xxs_grid[p0[2]],
                                  (long long)iq2xxs_grid[p0[1]], (long long)iq2xxs_grid[p0[0]]),
                _mm256_set_epi64x((long long)iq2xxs_grid[p1[3]], (long long)iq2xxs_grid[p1[2]],
                                  (long long)iq2xxs_grid[p1[1]], (long long)iq2xxs_grid[p1[0]]));
            v->sg[k] = (uint64_t)ksigns4(s0) | (uint64_t)ksigns4(s1) << 32;
            v->sc[k] = blend_scales(2 * (int)(s0 >> 28) + 1, 2 * (int)(s1 >> 28) + 1);
        }
        v->d = h2f(x->d) * 0.125f;
        v->dmin = 0;
    } else if (T == V_IQ2_XS) {
        const block_iq2_xs *x = (const block_iq2_xs *)w + b;
        __m128i s8 = _mm_loadl_epi64((const __m128i *)x->scales);
        __m128i ls = _mm_unpacklo_epi8(_mm_and_si128(s8, m4), _mm_and_si128(_mm_srli_epi16(s8, 4), m4));
        ls = _mm_add_epi8(_mm_add_epi8(ls, ls), _mm_set1_epi8(1));
        for (int k = 0; k < 4; k++) {
            const uint16_t *q = x->qs + 8 * k;
            v->wv[k] = join256(
                _mm256_set_epi64x((long long)iq2xs_grid[q[3] & 511], (long long)iq2xs_grid[q[2] & 511],
                                  (long long)iq2xs_grid[q[1] & 511], (long long)iq2xs_grid[q[0] & 511]),
                _mm256_set_epi64x((long long)iq2xs_grid[q[7] & 511], (long long)iq2xs_grid[q[6] & 511],
                                  (long long)iq2xs_grid[q[5] & 511], (long long)iq2xs_grid[q[4] & 511]));
            uint64_t m = 0;
            for (int j = 0; j < 8; j++) m |= (uint64_t)ksigns_iq2xs[q[j] >> 9] << (8 * j);
            v->sg[k] = m;
            v->sc[k] = _mm512_cvtepu8_epi32(_mm_shuffle_epi8(ls, _mm_loadu_si128((const __m128i *)spread16[k])));
        }
        v->d = h2f(x->d) * 0.125f;
        v->dmin = 0;
    } else if (T == V_IQ3_XXS) {
        const block_iq3_xxs *x = (const block_iq3_xxs *)w + b;
        for (int k = 0; k < 4; k++) {
            const uint8_t *q = x->qs + 16 * k;
            uint32_t s0, s1;
            memcpy(&s0, x->qs + QK_K / 4 + 8 * k, 4);
            memcpy(&s1, x->qs + QK_K / 4 + 8 * k + 4, 4);
#define G(i) (int)iq3xxs_grid[q[i]]
            v->wv[k] = join256(_mm256_set_epi32(G(7), G(6), G(5), G(4), G(3), G(2), G(1), G(0)),
                               _mm256_set_epi32(G(15), G(14), G(13), G(12), G(11), G(10), G(9), G(8)));
#undef G
            v->sg[k] = (uint64_t)ksigns4(s0) | (uint64_t)ksigns4(s1) << 32;
            v->sc[k] = blend_scales(2 * (int)(s0 >> 28) + 1, 2 * (int)(s1 >> 28) + 1);
        }
        v->d = h2f(x->d) * 0.25f;
        v->dmin = 0;
    } else {  /* V_IQ4_XS */
        const block_iq4_xs *x = (const block_iq4_xs *)w + b;
        const __m512i tab = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)kvalues_iq4nl));
        const __m256i m4y = _mm256_set1_epi8(0x0f);
        for (int k = 0; k < 4; k++) {
            /* 32 bytes = two sub-blocks of 32: low nibbles are the first 16
             * values of each, high nibbles the last 16 */
            __m256i q = _mm256_loadu_si256((const __m256i *)(x->qs + 32 * k));
            __m512i z = join256(_mm256_and_si256(q, m4y), _mm256_and_si256(_mm256_srli_epi16(q, 4), m4y));
            z = _mm512_shuffle_i64x2(z, z, _MM_SHUFFLE(3, 1, 2, 0));
            __m512i val = _mm512_shuffle_epi8(tab, z);
            v->sg[k] = _mm512_movepi8_mask(val);
            v->wv[k] = _mm512_abs_epi8(val);
            v->sc[k] = blend_scales(iq4xs_get_scale(x, 2 * k), iq4xs_get_scale(x, 2 * k + 1));
        }
        v->d = h2f(x->d);
        v->dmin = 0;
    }
}

AI void k_vec(int64_t n, const void *w, const void *a, size_t as, const int NC, float *s, size_t ss,
              const int T)
{
    const int signs = T >= V_IQ2_XXS, wide = T == V_IQ4_XS;
    __m512 acc[MOEQ_GEMM_NC];
#pragma GCC unroll 16
    for (int c = 0; c < NC; c++) acc[c] = _mm512_setzero_ps();
    const __m512i zero = _mm512_setzero_si512();
    for (int64_t b = 0; b < n / QK_K; b++) {
        struct vblk v;
        vunpack(T, w, b, &v);
        __m512i sc16[2];
        if (!wide) pack_scales(v.sc, sc16);
#pragma GCC unroll 16
        for (int c = 0; c < NC; c++) {
            const block_q8_K *y = q8k_col(a, as, c, b);
            __m512i isum;
            if (wide) {
                isum = zero;
#pragma GCC unroll 16
                for (int k = 0; k < 4; k++) {
                    __m512i q = _mm512_loadu_si512((const void *)(y->qs + 64 * k));
                    q = _mm512_mask_sub_epi8(q, v.sg[k], zero, q);
                    isum = _mm512_add_epi32(isum, _mm512_mullo_epi32(_mm512_dpbusd_epi32(zero, v.wv[k], q), v.sc[k]));
                }
            } else {
                isum = block_isum(y, v.wv, v.sg, sc16, signs);
            }
            if (T == V_Q3_K) {
                __m256i corr = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)y->bsums), v.bs16);
                isum = _mm512_add_epi32(isum, _mm512_zextsi256_si512(corr));
            }
            acc[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_set1_ps(v.d * y->d), acc[c]);
            if (T == V_Q2_K) {
                __m256i msum = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)y->bsums), v.bs16);
                acc[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_zextsi256_si512(msum)),
                                         _mm512_set1_ps(-v.dmin * y->d), acc[c]);
            }
        }
    }
    store_sums(acc, NC, s, ss);
}

SIMD_ENTRIES_VEC

/* ----------------------------------------------------- F32 / F16 / BF16 */

/* Weights i..i+15 as floats (kind as k_float): a deliberate ISA twin of
 * load8_f in kernels_avx2.c, since the load and widening intrinsics are
 * width-specific; k_float itself is shared (kernels_simd.h). */
AI __m512 load16_f(const void *w, int64_t i, const int kind)
{
    if (kind == 0) return _mm512_loadu_ps((const float *)w + i);
    __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)w + i));
    if (kind == 1) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

SIMD_K_FLOAT(__m512, 16, MOEQ_GEMM_NC, load16_f, _mm512_setzero_ps, _mm512_loadu_ps, _mm512_fmadd_ps,
             _mm512_reduce_add_ps)

/* ---------------------------------------------- activation quantization */

/*
 * Same arithmetic as kernels.c, in the same order, so the bytes match the
 * scalar code exactly: amax, id = 127 / amax (Q8_0: 1 / (amax / 127)), round
 * to nearest even (the default MXCSR mode of cvtps2dq), saturate to int8.
 */
static void actq_q8_K(const float *x, void *vy, int64_t n)
{
    block_q8_K *y = vy;
    const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
    for (int64_t b = 0; b < n / QK_K; b++, x += QK_K) {
        __m512 m = _mm512_setzero_ps();
        for (int j = 0; j < QK_K; j += 16)
            m = _mm512_max_ps(m, _mm512_and_ps(_mm512_loadu_ps(x + j), absmask));
        float amax = _mm512_reduce_max_ps(m);
        if (amax == 0) {
            memset(&y[b], 0, sizeof y[b]);
            continue;
        }
        const __m512 id = _mm512_set1_ps(127.f / amax);
        for (int g = 0; g < QK_K / 16; g++) {
            __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + 16 * g), id));
            v = _mm512_max_epi32(_mm512_min_epi32(v, _mm512_set1_epi32(127)), _mm512_set1_epi32(-127));
            _mm_storeu_si128((__m128i *)(y[b].qs + 16 * g), _mm512_cvtepi32_epi8(v));
            y[b].bsums[g] = (int16_t)_mm512_reduce_add_epi32(v);
        }
        y[b].d = amax / 127.f;
    }
}

static void actq_q8_0(const float *x, void *vy, int64_t n)
{
    block_q8_0 *y = vy;
    const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
    for (int64_t b = 0; b < n / QK8_0; b++, x += QK8_0) {
        __m512 v0 = _mm512_loadu_ps(x), v1 = _mm512_loadu_ps(x + 16);
        float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_and_ps(v0, absmask), _mm512_and_ps(v1, absmask)));
        float d = amax / 127.f, idf = d > 0 ? 1.f / d : 0.f;
        y[b].d = (ggml_half)_cvtss_sh(d, _MM_FROUND_TO_NEAREST_INT);
        const __m512 id = _mm512_set1_ps(idf);
        const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
        __m512i q0 = _mm512_max_epi32(_mm512_min_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(v0, id)), hi), lo);
        __m512i q1 = _mm512_max_epi32(_mm512_min_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(v1, id)), hi), lo);
        _mm_storeu_si128((__m128i *)y[b].qs, _mm512_cvtepi32_epi8(q0));
        _mm_storeu_si128((__m128i *)(y[b].qs + 16), _mm512_cvtepi32_epi8(q1));
    }
}

/* ------------------------------------------------------------ tables */

_Static_assert(MOEQ_GEMM_NC == 16, "row kernels are instantiated for up to 16 columns");
/* Float activation rows are often a multiple of 4 KiB apart, so more than
 * a few column streams at once alias in the 8-way L1: four at a time. */
SIMD_ROW_KERNELS(MOEQ_GEMM_NC, 4)


/* The attention kernels and the SwiGLU product, compiled for this ISA:
 * rows of queries sharing one load of K (scores) and of V (accumulation). */
#define ATTN_RB_SCORES 4
#define ATTN_RB_ACCUM  4
#include "kernels/kernels_attn_simd.h"

/* This ISA's table (kernels_isa.h; its deliberate ISA twins in kernels.c
 * and kernels_avx2.c have the same shape on purpose): the row kernels of every
 * type, the decode (rows) and prompt (tile) kernels of the types that have
 * them, and the activation quantizers. */
#define ROW(T, name) [MOEQ_TYPE_##T] = { .dot = dot_##name, .row = row_##name }
#define ROW_RT(T, name) [MOEQ_TYPE_##T] = { dot_##name, row_##name, rows_##name, tile_##name }
#define ROW_T(T, name) [MOEQ_TYPE_##T] = { .dot = dot_##name, .row = row_##name, .tile = tile_##name }
const struct moeq_isa_kernels moeq_kernels_avx512 = {
    .type = {
        ROW(F32, f32),          ROW(F16, f16),          ROW(BF16, bf16),
        ROW_T(Q4_0, q4_0),      ROW_T(Q8_0, q8_0),      ROW_T(IQ4_NL, iq4_nl),
        ROW(Q2_K, q2_K),        ROW(Q3_K, q3_K),        ROW_RT(Q4_K, q4_K),
        ROW_RT(Q5_K, q5_K),     ROW_RT(Q6_K, q6_K),     ROW(IQ2_XXS, iq2_xxs),
        ROW(IQ2_XS, iq2_xs),    ROW_RT(IQ2_S, iq2_s),   ROW(IQ3_XXS, iq3_xxs),
        ROW_RT(IQ3_S, iq3_s),   ROW(IQ4_XS, iq4_xs),
    },
    .actq_q8_0 = actq_q8_0,
    .actq_q8_K = actq_q8_K,
    .attn      = &attn_simd,
};
#undef ROW
#undef ROW_RT
#undef ROW_T
