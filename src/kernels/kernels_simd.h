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
 * after the including file has defined that kernel; likewise the float
 * kernel (SIMD_K_FLOAT, over the ISA's vector ops) and the row kernels
 * that walk a panel of columns (SIMD_ROW_KERNEL, SIMD_ROW_KERNELS).
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

/*
 * row_<name> and dot_<name> (kernels_isa.h) over k_<name>: the row kernel
 * walks its columns in passes of up to G (an ISA's register budget: 4 at
 * AVX2, 16 at AVX-512), one instantiation of k_<name> per pass width (1..8
 * and 16; widths above G are never taken and compile as width 1, so no
 * instantiation outgrows the ISA's accumulator arrays), so the accumulators
 * live in registers; at G 16, 9..15 columns take an 8-column pass and a
 * second one.
 */
#define SIMD_PASS(name, W)                                                                   \
    case W: k_##name(n, w, a, as, (W) <= G_ ? (W) : 1, s, ss); break;
#define SIMD_ROW_KERNEL(name, G)                                                             \
    static void row_##name(int64_t n, const void *w, const void *a, size_t as, int nc,      \
                           float *s, size_t ss)                                              \
    {                                                                                        \
        enum { G_ = (G) };                                                                   \
        while (nc > 0) {                                                                     \
            int done = nc >= 16 && G_ >= 16 ? 16 : nc > 8 && G_ >= 8 ? 8 : nc < G_ ? nc : G_; \
            switch (done) {                                                                  \
            SIMD_PASS(name, 1) SIMD_PASS(name, 2) SIMD_PASS(name, 3) SIMD_PASS(name, 4)      \
            SIMD_PASS(name, 5) SIMD_PASS(name, 6) SIMD_PASS(name, 7) SIMD_PASS(name, 8)      \
            default: SIMD_PASS(name, 16)                                                     \
            }                                                                                \
            a = (const uint8_t *)a + (size_t)done * as;                                      \
            s += (size_t)done * ss;                                                          \
            nc -= done;                                                                      \
        }                                                                                    \
    }                                                                                        \
    static void dot_##name(int64_t n, float *s, const void *w, const void *a)               \
    { k_##name(n, w, a, 0, 1, s, 0); }

/* The row kernels of the types every SIMD ISA walks with SIMD_ROW_KERNEL:
 * G columns per pass, G_FLOAT for the float types. (IQ2_S and IQ3_S are
 * the ISA file's: AVX2 walks them the same way, AVX-512 has its own.) */
#define SIMD_ROW_KERNELS(G, G_FLOAT)                                                         \
    SIMD_ROW_KERNEL(q4_K, G) SIMD_ROW_KERNEL(q5_K, G) SIMD_ROW_KERNEL(q6_K, G)             \
    SIMD_ROW_KERNEL(q8_0, G) SIMD_ROW_KERNEL(q4_0, G) SIMD_ROW_KERNEL(iq4_nl, G)           \
    SIMD_ROW_KERNEL(q2_K, G) SIMD_ROW_KERNEL(q3_K, G) SIMD_ROW_KERNEL(iq2_xxs, G)          \
    SIMD_ROW_KERNEL(iq2_xs, G) SIMD_ROW_KERNEL(iq3_xxs, G) SIMD_ROW_KERNEL(iq4_xs, G)      \
    SIMD_ROW_KERNEL(f32, G_FLOAT) SIMD_ROW_KERNEL(f16, G_FLOAT) SIMD_ROW_KERNEL(bf16, G_FLOAT)

/*
 * k_float and its entry points k_f32, k_f16, k_bf16: float weights (kind 0
 * F32, 1 F16, 2 BF16) against NC f32 activation columns, one accumulator
 * per column over whole vectors of LANES weights, then the tail in order.
 * Written once; each ISA file instantiates it after defining its ops: V the
 * float vector, load_w(w, i, kind) weights i.. as floats, vzero, vloadu,
 * vfmadd and vhsum (the reduction). The width fixes the summation order,
 * so AVX2 and AVX-512 sums may differ in their last bits.
 */
#define SIMD_K_FLOAT(V, LANES, NC_CAP, load_w, vzero, vloadu, vfmadd, vhsum)                   \
    AI void k_float(int64_t n, const void *w, const void *a, size_t as, const int NC, float *s, \
                    size_t ss, const int kind)                                                 \
    {                                                                                          \
        V acc[NC_CAP];                                                                         \
        _Pragma("GCC unroll 16")                                                               \
        for (int c = 0; c < NC; c++) acc[c] = vzero();                                         \
        int64_t i = 0;                                                                         \
        for (; i + (LANES) <= n; i += (LANES)) {                                               \
            V wv = load_w(w, i, kind);                                                         \
            _Pragma("GCC unroll 16")                                                           \
            for (int c = 0; c < NC; c++)                                                       \
                acc[c] = vfmadd(wv, vloadu(f32_col(a, as, c) + i), acc[c]);                    \
        }                                                                                      \
        _Pragma("GCC unroll 16")                                                               \
        for (int c = 0; c < NC; c++)                                                           \
            s[(size_t)c * ss] = float_tail(vhsum(acc[c]), w, f32_col(a, as, c), i, n, kind);   \
    }                                                                                          \
    SIMD_ENTRIES_FLOAT

#endif
