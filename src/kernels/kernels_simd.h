/*
 * kernels_simd.h: the matmul-kernel pieces that are the same at every SIMD
 * ISA, written once. kernels_avx2.c and kernels_avx512.c include it (and
 * nothing else may), so each compiles it with its own target flags.
 *
 * This is the one way the ISA twins are written: code that is the same at
 * AVX2 and AVX-512 lives in a kernels_*simd.h header (this one, and
 * kernels_attn_simd.h for attention) that each ISA file includes; code
 * that differs (register width, VNNI, tile kernels) lives in the ISA file.
 * Entry points per type (k_<type>) over a shared kernel with a
 * compile-time kind are instantiated by the SIMD_ENTRIES_* lists below,
 * after the including file has defined that kernel.
 */
#ifndef MOEQ_KERNELS_SIMD_H
#define MOEQ_KERNELS_SIMD_H

#include "kernels/kernels_isa.h"
#include "quant/quants.h"
#include "quant/quants_blocks.h"

#include <immintrin.h>
#include <string.h>

#define AI static inline __attribute__((always_inline))

AI float h2f(ggml_half h) { return _cvtsh_ss(h); }

/* Block b of activation column c (columns as bytes apart). */
AI const block_q8_K *q8k_col(const void *a, size_t as, int c, int64_t b)
{
    return (const block_q8_K *)((const uint8_t *)a + (size_t)c * as) + b;
}

/* Eight sign bytes of four 7-bit sign indices (parity gives the 8th bit). */
AI uint32_t ksigns4(uint32_t s)
{
    return (uint32_t)ksigns_iq2xs[s & 127] | (uint32_t)ksigns_iq2xs[(s >> 7) & 127] << 8 |
           (uint32_t)ksigns_iq2xs[(s >> 14) & 127] << 16 | (uint32_t)ksigns_iq2xs[(s >> 21) & 127] << 24;
}

/*
 * The 32 signed weights of one 32-element block (kind 0 Q8_0, 1 Q4_0,
 * 2 IQ4_NL): Q8_0 stores them, Q4_0 stores nibbles offset by 8, IQ4_NL
 * nibbles indexing a 16-entry codebook (one byte shuffle). Low nibbles are
 * elements 0..15, high nibbles 16..31.
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

/* Float weight i of a row (kind 0 F32, 1 F16, 2 BF16): the row tails. */
AI float load1_f(const void *w, int64_t i, const int kind)
{
    if (kind == 0) return ((const float *)w)[i];
    uint16_t h = ((const uint16_t *)w)[i];
    return kind == 1 ? _cvtsh_ss(h) : moeq_bf16_to_f32(h);
}

/* Activation column c of f32 rows as bytes apart. */
AI const float *f32_col(const void *a, size_t as, int c)
{
    return (const float *)((const uint8_t *)a + (size_t)c * as);
}

/* t plus the products of a float row's elements i .. n-1, in order: the
 * tail past the last whole vector. */
AI float float_tail(float t, const void *w, const float *y, int64_t i, int64_t n, const int kind)
{
    for (int64_t j = i; j < n; j++) t += load1_f(w, j, kind) * y[j];
    return t;
}

/* The 256-element formats that go through the generic unpack-and-step
 * kernel k_vec of each ISA file (IQ2_S and IQ3_S at AVX2 only: AVX-512
 * has its own kernels for them). */
enum { V_Q2_K, V_Q3_K, V_IQ2_XXS, V_IQ2_XS, V_IQ3_XXS, V_IQ4_XS, V_IQ2_S, V_IQ3_S };

/* k_<name>(n, w, a, as, NC, s, ss): impl with its kind fixed. */
#define SIMD_ENTRY(name, impl, kind)                                                        \
    AI void k_##name(int64_t n, const void *w, const void *a, size_t as, const int NC,     \
                     float *s, size_t ss)                                                   \
    { impl(n, w, a, as, NC, s, ss, kind); }

#define SIMD_ENTRIES_Q45 SIMD_ENTRY(q4_K, k_q45_K, 0) SIMD_ENTRY(q5_K, k_q45_K, 1)
#define SIMD_ENTRIES_B32 SIMD_ENTRY(q8_0, k_b32, 0) SIMD_ENTRY(q4_0, k_b32, 1) \
                         SIMD_ENTRY(iq4_nl, k_b32, 2)
#define SIMD_ENTRIES_VEC SIMD_ENTRY(q2_K, k_vec, V_Q2_K) SIMD_ENTRY(q3_K, k_vec, V_Q3_K) \
                         SIMD_ENTRY(iq2_xxs, k_vec, V_IQ2_XXS)                           \
                         SIMD_ENTRY(iq2_xs, k_vec, V_IQ2_XS)                             \
                         SIMD_ENTRY(iq3_xxs, k_vec, V_IQ3_XXS)                           \
                         SIMD_ENTRY(iq4_xs, k_vec, V_IQ4_XS)
#define SIMD_ENTRIES_FLOAT SIMD_ENTRY(f32, k_float, 0) SIMD_ENTRY(f16, k_float, 1) \
                           SIMD_ENTRY(bf16, k_float, 2)

#endif
