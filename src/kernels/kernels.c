/*
 * kernels.c: activation quantization, the scalar reference dot product of
 * every weight type, run-time ISA dispatch and the tiled gemm driver.
 *
 * The scalar kernels are the definition the SIMD twins are tested against,
 * so they favour plainness over speed: each quantized type has an unpack
 * step that turns one 256-element super-block into signed 8-bit values, an
 * integer scale per 16 elements and (for the types with mins) an integer
 * min per 16 elements; one shared integer dot product then does the rest.
 * The sums are exact integers, so only the final float scaling depends on
 * the order of operations, which keeps scalar and SIMD results within
 * float rounding of each other.
 */
#include "kernels/kernels.h"
#include "kernels/kernels_isa.h"
#include "quant/quants.h"
#include "quant/quants_blocks.h"

#include <cpuid.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ helpers */

/* Round to nearest, ties to even, for |x| < 2^22 (the range activation
 * quantization produces): adding 1.5*2^23 pushes the fraction out. */
static inline int round_int(float x)
{
    float v = x + 12582912.f;
    int32_t i;
    memcpy(&i, &v, 4);
    return (i & 0x007fffff) - 0x00400000;
}

static inline float f16(ggml_half h) { return moeq_f16_to_f32(h); }

/* max(m, |v|) as a plain compare: fmaxf's NaN rules make it a libm call. */
static inline float amax_step(float m, float v)
{
    float a = fabsf(v);
    return a > m ? a : m;
}

/* ------------------------------------------------- activation formats */

int moeq_act_type(int wtype)
{
    switch (wtype) {
    case MOEQ_TYPE_F32: case MOEQ_TYPE_F16: case MOEQ_TYPE_BF16:
        return MOEQ_TYPE_F32;
    case MOEQ_TYPE_Q4_0: case MOEQ_TYPE_Q8_0: case MOEQ_TYPE_IQ4_NL:
        return MOEQ_TYPE_Q8_0;
    default:
        return MOEQ_TYPE_Q8_K;
    }
}

size_t moeq_act_row_size(int wtype, int64_t n)
{
    switch (moeq_act_type(wtype)) {
    case MOEQ_TYPE_F32:  return (size_t)n * sizeof(float);
    case MOEQ_TYPE_Q8_0: return n % QK8_0 ? 0 : (size_t)(n / QK8_0) * sizeof(block_q8_0);
    default:             return n % QK_K ? 0 : (size_t)(n / QK_K) * sizeof(block_q8_K);
    }
}

/*
 * Q8_0: 32 values per block, d = amax/127 stored as half. The values are
 * rounded against the unrounded d, as ggml does, so the stored half d and
 * the integers can disagree by half a half-ulp; both sides of every test
 * use the stored d, so this only costs accuracy, never consistency.
 */
static void quantize_act_q8_0(const float *x, void *vy, int64_t n)
{
    block_q8_0 *y = vy;
    for (int64_t b = 0; b < n / QK8_0; b++, x += QK8_0) {
        float amax = 0;
        for (int j = 0; j < QK8_0; j++) amax = amax_step(amax, x[j]);
        float d = amax / 127.f, id = d > 0 ? 1.f / d : 0.f;
        y[b].d = moeq_f32_to_f16(d);
        for (int j = 0; j < QK8_0; j++) {
            int v = round_int(x[j] * id);
            y[b].qs[j] = (int8_t)(v > 127 ? 127 : v < -127 ? -127 : v);
        }
    }
}

/*
 * Q8_K: 256 values per block, float d = amax/127. The range is kept to
 * [-127, 127] (never -128) so a SIMD kernel may flip an activation's sign
 * without overflow. bsums hold the sum of each 16 values: kernels use them
 * for the min / offset terms of the weight formats.
 */
static void quantize_act_q8_K(const float *x, void *vy, int64_t n)
{
    block_q8_K *y = vy;
    for (int64_t b = 0; b < n / QK_K; b++, x += QK_K) {
        float amax = 0;
        for (int j = 0; j < QK_K; j++) amax = amax_step(amax, x[j]);
        if (amax == 0) {
            memset(&y[b], 0, sizeof y[b]);
            continue;
        }
        float id = 127.f / amax;
        for (int j = 0; j < QK_K; j++) {
            int v = round_int(x[j] * id);
            y[b].qs[j] = (int8_t)(v > 127 ? 127 : v < -127 ? -127 : v);
        }
        for (int g = 0; g < QK_K / 16; g++) {
            int s = 0;
            for (int j = 0; j < 16; j++) s += y[b].qs[16 * g + j];
            y[b].bsums[g] = (int16_t)s;
        }
        y[b].d = amax / 127.f;
    }
}

/* -------------------------------------------- float weights (scalar) */

static void dot_f32(int64_t n, float *s, const void *w, const void *a)
{
    const float *x = w, *y = a;
    float sum = 0;
    for (int64_t i = 0; i < n; i++) sum += x[i] * y[i];
    *s = sum;
}

static void dot_f16(int64_t n, float *s, const void *w, const void *a)
{
    const uint16_t *x = w;
    const float *y = a;
    float sum = 0;
    for (int64_t i = 0; i < n; i++) sum += moeq_f16_to_f32(x[i]) * y[i];
    *s = sum;
}

static void dot_bf16(int64_t n, float *s, const void *w, const void *a)
{
    const uint16_t *x = w;
    const float *y = a;
    float sum = 0;
    for (int64_t i = 0; i < n; i++) sum += moeq_bf16_to_f32(x[i]) * y[i];
    *s = sum;
}

/* ---------------------------------- 32-element types against Q8_0 */

static void dot_q4_0(int64_t n, float *s, const void *w, const void *a)
{
    const block_q4_0 *x = w;
    const block_q8_0 *y = a;
    float sum = 0;
    for (int64_t b = 0; b < n / QK8_0; b++) {
        int isum = 0;
        for (int j = 0; j < 16; j++) {
            isum += ((x[b].qs[j] & 0xf) - 8) * y[b].qs[j];
            isum += ((x[b].qs[j] >> 4) - 8) * y[b].qs[j + 16];
        }
        sum += f16(x[b].d) * f16(y[b].d) * (float)isum;
    }
    *s = sum;
}

static void dot_q8_0(int64_t n, float *s, const void *w, const void *a)
{
    const block_q8_0 *x = w;
    const block_q8_0 *y = a;
    float sum = 0;
    for (int64_t b = 0; b < n / QK8_0; b++) {
        int isum = 0;
        for (int j = 0; j < QK8_0; j++) isum += x[b].qs[j] * y[b].qs[j];
        sum += f16(x[b].d) * f16(y[b].d) * (float)isum;
    }
    *s = sum;
}

static void dot_iq4_nl(int64_t n, float *s, const void *w, const void *a)
{
    const block_iq4_nl *x = w;
    const block_q8_0 *y = a;
    float sum = 0;
    for (int64_t b = 0; b < n / QK4_NL; b++) {
        int isum = 0;
        for (int j = 0; j < 16; j++) {
            isum += kvalues_iq4nl[x[b].qs[j] & 0xf] * y[b].qs[j];
            isum += kvalues_iq4nl[x[b].qs[j] >> 4] * y[b].qs[j + 16];
        }
        sum += f16(x[b].d) * f16(y[b].d) * (float)isum;
    }
    *s = sum;
}

/* ------------------------------ 256-element types against Q8_K */

/*
 * One unpacked super-block: value i is d * sc[i/16] * q[i] - dmin * mn[i/16].
 * d folds in the type's constant factor (1/8 for the IQ2 scales, ...), so
 * sc and mn stay small integers and the whole block sum is one integer.
 */
struct moeq_unpacked {
    int8_t  q[QK_K];
    int32_t sc[QK_K / 16];
    int32_t mn[QK_K / 16];
    float   d, dmin;
};

typedef void (*moeq_unpack_fn)(const void *blk, struct moeq_unpacked *u);

static void unpack_q2_K(const void *blk, struct moeq_unpacked *u)
{
    const block_q2_K *x = blk;
    q2k_get_levels(x, u->q);
    for (int g = 0; g < 16; g++) {
        int sc, mn;
        q2k_get_scale_min(x->scales, g, &sc, &mn);
        u->sc[g] = sc;
        u->mn[g] = mn;
    }
    u->d = f16(x->d);
    u->dmin = f16(x->dmin);
}

static void unpack_q3_K(const void *blk, struct moeq_unpacked *u)
{
    const block_q3_K *x = blk;
    q3k_get_levels(x, u->q);
    for (int g = 0; g < 16; g++) {
        u->sc[g] = q3k_get_scale(x->scales, g);
        u->mn[g] = 0;
    }
    u->d = f16(x->d);
    u->dmin = 0;
}

/* Q4_K / Q5_K: each 32's 6-bit scale and min, for both of its 16s. */
static void unpack_k4_scales(const uint8_t *scales, ggml_half d, ggml_half dmin, struct moeq_unpacked *u)
{
    for (int j = 0; j < 8; j++) {
        int sc, mn;
        k4_get_scale_min(scales, j, &sc, &mn);
        u->sc[2 * j] = u->sc[2 * j + 1] = sc;
        u->mn[2 * j] = u->mn[2 * j + 1] = mn;
    }
    u->d = f16(d);
    u->dmin = f16(dmin);
}

static void unpack_q4_K(const void *blk, struct moeq_unpacked *u)
{
    const block_q4_K *x = blk;
    q4k_get_levels(x, u->q);
    unpack_k4_scales(x->scales, x->d, x->dmin, u);
}

static void unpack_q5_K(const void *blk, struct moeq_unpacked *u)
{
    const block_q5_K *x = blk;
    q5k_get_levels(x, u->q);
    unpack_k4_scales(x->scales, x->d, x->dmin, u);
}

static void unpack_q6_K(const void *blk, struct moeq_unpacked *u)
{
    const block_q6_K *x = blk;
    q6k_get_levels(x, u->q);
    for (int g = 0; g < 16; g++) {
        u->sc[g] = x->scales[g];
        u->mn[g] = 0;
    }
    u->d = f16(x->d);
    u->dmin = 0;
}

/* Eight grid bytes with the signs of bit j of sgn applied to byte j. */
static void put_signed8(int8_t *q, const uint8_t *grid, uint8_t sgn)
{
    for (int j = 0; j < 8; j++) {
        int neg = -(sgn >> j & 1);              /* 0 or -1 */
        q[j] = (int8_t)((grid[j] ^ neg) - neg);
    }
}

static void unpack_iq2_xxs(const void *blk, struct moeq_unpacked *u)
{
    const block_iq2_xxs *x = blk;
    for (int ib = 0; ib < 8; ib++) {
        uint32_t idx, sg;
        memcpy(&idx, x->qs + 4 * ib, 4);
        memcpy(&sg, x->qs + 4 * ib + 2, 4);
        for (int l = 0; l < 4; l++)
            put_signed8(u->q + 32 * ib + 8 * l, (const uint8_t *)&iq2xxs_grid[(idx >> 8 * l) & 0xff],
                        ksigns_iq2xs[(sg >> 7 * l) & 127]);
        /* scale (0.5 + s) / 4 = (2s + 1) / 8 */
        u->sc[2 * ib] = u->sc[2 * ib + 1] = 2 * (int)(sg >> 28) + 1;
    }
    memset(u->mn, 0, sizeof u->mn);
    u->d = f16(x->d) * 0.125f;
    u->dmin = 0;
}

/* IQ2_XS / IQ2_S: a nibble scale s per 16 values, (2s + 1) / 8 of d. */
static void iq2_scales(const uint8_t *scales, ggml_half d, struct moeq_unpacked *u)
{
    for (int g = 0; g < 16; g++) {
        u->sc[g] = 2 * ((scales[g / 2] >> 4 * (g % 2)) & 0xf) + 1;
        u->mn[g] = 0;
    }
    u->d = f16(d) * 0.125f;
    u->dmin = 0;
}

static void unpack_iq2_xs(const void *blk, struct moeq_unpacked *u)
{
    const block_iq2_xs *x = blk;
    for (int k = 0; k < 32; k++)
        put_signed8(u->q + 8 * k, (const uint8_t *)&iq2xs_grid[x->qs[k] & 511],
                    ksigns_iq2xs[x->qs[k] >> 9]);
    iq2_scales(x->scales, x->d, u);
}

static void unpack_iq2_s(const void *blk, struct moeq_unpacked *u)
{
    const block_iq2_s *x = blk;
    const uint8_t *signs = x->qs + QK_K / 8;
    for (int k = 0; k < 32; k++) {
        int idx = x->qs[k] | ((x->qh[k / 4] >> (2 * (k % 4))) & 3) << 8;
        put_signed8(u->q + 8 * k, (const uint8_t *)&iq2s_grid[idx], signs[k]);
    }
    iq2_scales(x->scales, x->d, u);
}

static void unpack_iq3_xxs(const void *blk, struct moeq_unpacked *u)
{
    const block_iq3_xxs *x = blk;
    const uint8_t *ss = x->qs + QK_K / 4;
    for (int ib = 0; ib < 8; ib++) {
        uint32_t sg;
        memcpy(&sg, ss + 4 * ib, 4);
        for (int l = 0; l < 4; l++) {
            uint8_t g8[8];
            memcpy(g8, &iq3xxs_grid[x->qs[8 * ib + 2 * l]], 4);
            memcpy(g8 + 4, &iq3xxs_grid[x->qs[8 * ib + 2 * l + 1]], 4);
            put_signed8(u->q + 32 * ib + 8 * l, g8, ksigns_iq2xs[(sg >> 7 * l) & 127]);
        }
        /* scale (0.5 + s) / 2 = (2s + 1) / 4 */
        u->sc[2 * ib] = u->sc[2 * ib + 1] = 2 * (int)(sg >> 28) + 1;
    }
    memset(u->mn, 0, sizeof u->mn);
    u->d = f16(x->d) * 0.25f;
    u->dmin = 0;
}

static void unpack_iq3_s(const void *blk, struct moeq_unpacked *u)
{
    const block_iq3_s *x = blk;
    for (int k = 0; k < 32; k++) {  /* k-th group of 8 values: two grid entries */
        uint8_t g8[8];
        int i0 = 2 * k, i1 = 2 * k + 1;
        int idx0 = x->qs[i0] | ((x->qh[i0 / 8] >> (i0 % 8)) & 1) << 8;
        int idx1 = x->qs[i1] | ((x->qh[i1 / 8] >> (i1 % 8)) & 1) << 8;
        memcpy(g8, &iq3s_grid[idx0], 4);
        memcpy(g8 + 4, &iq3s_grid[idx1], 4);
        put_signed8(u->q + 8 * k, g8, x->signs[k]);
    }
    for (int g = 0; g < 16; g++) {
        u->sc[g] = 2 * ((x->scales[g / 4] >> 4 * ((g / 2) % 2)) & 0xf) + 1;
        u->mn[g] = 0;
    }
    u->d = f16(x->d);
    u->dmin = 0;
}

static void unpack_iq4_xs(const void *blk, struct moeq_unpacked *u)
{
    const block_iq4_xs *x = blk;
    for (int ib = 0; ib < 8; ib++) {
        for (int j = 0; j < 16; j++) {
            u->q[32 * ib + j]      = kvalues_iq4nl[x->qs[16 * ib + j] & 0xf];
            u->q[32 * ib + j + 16] = kvalues_iq4nl[x->qs[16 * ib + j] >> 4];
        }
        u->sc[2 * ib] = u->sc[2 * ib + 1] = iq4xs_get_scale(x, ib);
    }
    memset(u->mn, 0, sizeof u->mn);
    u->d = f16(x->d);
    u->dmin = 0;
}

/* The shared Q8_K dot over a row of super-blocks of bsize bytes each. */
static float dot_unpacked(int64_t n, const void *w, size_t bsize, moeq_unpack_fn unpack, const void *a)
{
    const uint8_t *x = w;
    const block_q8_K *y = a;
    struct moeq_unpacked u;
    float sum = 0;
    for (int64_t b = 0; b < n / QK_K; b++) {
        unpack(x + b * bsize, &u);
        int isum = 0, msum = 0;
        for (int g = 0; g < 16; g++) {
            int gs = 0;
            for (int j = 0; j < 16; j++) gs += u.q[16 * g + j] * y[b].qs[16 * g + j];
            isum += u.sc[g] * gs;
            msum += u.mn[g] * y[b].bsums[g];
        }
        sum += y[b].d * (u.d * (float)isum - u.dmin * (float)msum);
    }
    return sum;
}

#define DOT_K(name, blk)                                                          \
    static void dot_##name(int64_t n, float *s, const void *w, const void *a)    \
    { *s = dot_unpacked(n, w, sizeof(blk), unpack_##name, a); }

DOT_K(q2_K, block_q2_K)
DOT_K(q3_K, block_q3_K)
DOT_K(q4_K, block_q4_K)
DOT_K(q5_K, block_q5_K)
DOT_K(q6_K, block_q6_K)
DOT_K(iq2_xxs, block_iq2_xxs)
DOT_K(iq2_xs, block_iq2_xs)
DOT_K(iq2_s, block_iq2_s)
DOT_K(iq3_xxs, block_iq3_xxs)
DOT_K(iq3_s, block_iq3_s)
DOT_K(iq4_xs, block_iq4_xs)

/* The scalar table: a dot product for every type, nothing else (the gemm
 * driver's loop is the scalar row kernel). The AVX2 and AVX-512 files
 * hold tables of the same shape on purpose, deliberate ISA twins: one row
 * per type and ISA, each naming that ISA's kernels. */
#define SCALAR(T, name) [MOEQ_TYPE_##T] = { .dot = dot_##name }
static const struct moeq_isa_kernels scalar_kernels = {
    .type = {
        SCALAR(F32, f32),     SCALAR(F16, f16),         SCALAR(BF16, bf16),
        SCALAR(Q4_0, q4_0),   SCALAR(Q8_0, q8_0),       SCALAR(IQ4_NL, iq4_nl),
        SCALAR(Q2_K, q2_K),   SCALAR(Q3_K, q3_K),       SCALAR(Q4_K, q4_K),
        SCALAR(Q5_K, q5_K),   SCALAR(Q6_K, q6_K),       SCALAR(IQ2_XXS, iq2_xxs),
        SCALAR(IQ2_XS, iq2_xs), SCALAR(IQ2_S, iq2_s),   SCALAR(IQ3_XXS, iq3_xxs),
        SCALAR(IQ3_S, iq3_s), SCALAR(IQ4_XS, iq4_xs),
    },
    .actq_q8_0 = quantize_act_q8_0,
    .actq_q8_K = quantize_act_q8_K,
};
#undef SCALAR

/* ------------------------------------------------------------ dispatch */

/* F16C straight from cpuid: not every compiler's __builtin_cpu_supports
 * knows it. The AVX2 check below already implies the OS saves ymm state. */
static int cpu_has_f16c(void)
{
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
}

static int cpu_isa(void)
{
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma") || !cpu_has_f16c())
        return MOEQ_ISA_SCALAR;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512vnni"))
        return MOEQ_ISA_AVX512;
    return MOEQ_ISA_AVX2;
}

/*
 * CPU detection, the MOEQ_ISA override and the resolution of every kernel
 * row run once, on first use, under pthread_once: kernels are looked up
 * from pool threads, and the first use (not load time) is when a test or
 * tool has set MOEQ_ISA.
 */
static pthread_once_t isa_once = PTHREAD_ONCE_INIT;
static int isa_hw, isa_best;

/* The table of an ISA, if its file is linked in. */
static const struct moeq_isa_kernels *isa_table(int isa)
{
    switch (isa) {
    case MOEQ_ISA_SCALAR: return &scalar_kernels;
    case MOEQ_ISA_AVX2:   return &moeq_kernels_avx2;
    case MOEQ_ISA_AVX512: return &moeq_kernels_avx512;
    default:              return NULL;
    }
}

/* Whether the ISA file is linked in and the CPU runs it. */
static int isa_linked(int isa, int hw)
{
    return isa >= 0 && isa <= hw && isa_table(isa) != NULL;
}

/*
 * What gemm, vec_dot and activation quantization use for one weight type
 * at one ISA, resolved once: the ISA's own kernels where it has them and
 * the CPU runs them, the scalar ones where not. own_dot is the ISA's dot
 * alone (moeq_vec_dot_isa reports NULL where there is none).
 */
struct kernel_row {
    int             act;       /* activation format: moeq_act_type */
    moeq_actq_fn    actq;      /* NULL for f32 activations (a copy) */
    moeq_vec_dot_fn dot, own_dot;
    moeq_row_fn     row;
    moeq_rows_fn    rows;
    moeq_tile_fn    tile;
};
static struct kernel_row rows_of[MOEQ_ISA_COUNT][MOEQ_TYPE_COUNT];

static void resolve_rows(int isa)
{
    const struct moeq_isa_kernels *sc = &scalar_kernels;
    const struct moeq_isa_kernels *k = isa_linked(isa, isa_hw) ? isa_table(isa) : sc;
    for (int t = 0; t < MOEQ_TYPE_COUNT; t++) {
        struct kernel_row *r = &rows_of[isa][t];
        const struct moeq_type_kernels *kt = &k->type[t];
        r->act = moeq_act_type(t);
        r->actq = r->act == MOEQ_TYPE_Q8_0 ? (k->actq_q8_0 ? k->actq_q8_0 : sc->actq_q8_0)
                : r->act == MOEQ_TYPE_Q8_K ? (k->actq_q8_K ? k->actq_q8_K : sc->actq_q8_K) : NULL;
        r->own_dot = k == sc && isa != MOEQ_ISA_SCALAR ? NULL : kt->dot;
        r->dot = kt->dot ? kt->dot : sc->type[t].dot;
        r->row = kt->row;
        r->rows = kt->rows;
        r->tile = kt->tile;
    }
}

static void isa_init(void)
{
    isa_hw = cpu_isa();
    int b = MOEQ_ISA_SCALAR;
    for (int i = MOEQ_ISA_AVX2; i < MOEQ_ISA_COUNT; i++)
        if (isa_linked(i, isa_hw)) b = i;
    /* MOEQ_ISA may only lower the choice: forcing an ISA the CPU lacks
     * would crash on the first kernel call. */
    const char *env = getenv("MOEQ_ISA");
    if (env && *env) {
        for (int i = 0; i < MOEQ_ISA_COUNT; i++)
            if (!strcmp(env, moeq_isa_name(i)) && i < b) b = i;
    }
    isa_best = b;
    for (int i = 0; i < MOEQ_ISA_COUNT; i++) resolve_rows(i);
}

const struct moeq_isa_kernels *moeq_isa_kernels_of(int isa)
{
    pthread_once(&isa_once, isa_init);
    return isa_linked(isa, isa_hw) ? isa_table(isa) : NULL;
}

/* The resolved row of wtype at isa, or NULL for an unknown ISA or type. */
static const struct kernel_row *kernel_row(int isa, int wtype)
{
    if (isa < 0 || isa >= MOEQ_ISA_COUNT || wtype < 0 || wtype >= MOEQ_TYPE_COUNT) return NULL;
    pthread_once(&isa_once, isa_init);
    return &rows_of[isa][wtype];
}

int moeq_isa_best(void)
{
    pthread_once(&isa_once, isa_init);
    return isa_best;
}

const char *moeq_isa_name(int isa)
{
    switch (isa) {
    case MOEQ_ISA_SCALAR: return "scalar";
    case MOEQ_ISA_AVX2:   return "avx2";
    case MOEQ_ISA_AVX512: return "avx512";
    default:              return "?";
    }
}

moeq_vec_dot_fn moeq_vec_dot_isa(int wtype, int isa)
{
    const struct kernel_row *r = kernel_row(isa, wtype);
    return r ? r->own_dot : NULL;
}

moeq_vec_dot_fn moeq_vec_dot(int wtype)
{
    const struct kernel_row *r = kernel_row(moeq_isa_best(), wtype);
    return r ? r->dot : NULL;
}

void moeq_quantize_act_isa(int isa, int wtype, const float *x, void *y, int64_t n)
{
    const struct kernel_row *r = kernel_row(isa, wtype);
    if (!r) r = kernel_row(MOEQ_ISA_SCALAR, wtype);
    if (!r) r = kernel_row(MOEQ_ISA_SCALAR, MOEQ_TYPE_Q8_K);  /* moeq_act_type's default */
    if (r->actq) r->actq(x, y, n);
    else memcpy(y, x, (size_t)n * sizeof(float));
}

void moeq_quantize_act(int wtype, const float *x, void *y, int64_t n)
{
    moeq_quantize_act_isa(moeq_isa_best(), wtype, x, y, n);
}

/* ---------------------------------------------------------------- gemm */

/*
 * Columns are taken in panels small enough that a panel of activation rows
 * stays in L2 while every weight row streams past it once; a row kernel
 * takes the whole panel and unpacks each weight block once for a group of
 * columns (IQ2_S / IQ3_S: once for the whole panel). Without a row kernel,
 * the vec_dot loop keeps the same order, so a weight row is still read
 * from memory once per panel.
 */
#define GEMM_PANEL_BYTES (256 * 1024)
#define GEMM_TILE_MIN_COLS 8

void moeq_gemm_isa(int isa, int wtype, int64_t K,
                   const void *W, size_t w_stride, int64_t n_rows,
                   const void *A, size_t a_stride, int64_t n_cols,
                   float *out, size_t out_stride)
{
    const struct kernel_row *k = kernel_row(isa, wtype);
    if (!k) k = kernel_row(MOEQ_ISA_SCALAR, wtype);
    if (!k || !k->dot || n_rows <= 0 || n_cols <= 0) return;

    /* prompt batches: a tile kernel where the ISA has one */
    if (n_cols >= GEMM_TILE_MIN_COLS && k->tile &&
        k->tile(K, W, w_stride, n_rows, A, a_stride, n_cols, out, out_stride))
        return;

    /* decode: one column against many rows */
    if (n_cols == 1 && k->rows) {
        k->rows(K, W, w_stride, n_rows, A, out);
        return;
    }

    size_t arow = moeq_act_row_size(wtype, K);
    int64_t panel = arow ? (int64_t)(GEMM_PANEL_BYTES / arow) : n_cols;
    if (panel < MOEQ_GEMM_NC) panel = MOEQ_GEMM_NC;
    panel -= panel % MOEQ_GEMM_NC;

    const uint8_t *w = W, *a = A;
    for (int64_t c0 = 0; c0 < n_cols; c0 += panel) {
        int64_t c1 = c0 + panel < n_cols ? c0 + panel : n_cols;
        for (int64_t r = 0; r < n_rows; r++) {
            const uint8_t *wr = w + (size_t)r * w_stride;
            if (k->row) {
                k->row(K, wr, a + (size_t)c0 * a_stride, a_stride, (int)(c1 - c0),
                       out + (size_t)c0 * out_stride + r, out_stride);
            } else {
                for (int64_t c = c0; c < c1; c++)
                    k->dot(K, out + (size_t)c * out_stride + r, wr, a + (size_t)c * a_stride);
            }
        }
    }
}

void moeq_gemm(int wtype, int64_t K,
               const void *W, size_t w_stride, int64_t n_rows,
               const void *A, size_t a_stride, int64_t n_cols,
               float *out, size_t out_stride)
{
    moeq_gemm_isa(moeq_isa_best(), wtype, K, W, w_stride, n_rows, A, a_stride, n_cols,
                  out, out_stride);
}
