/*
 * Kernels: activation quantization, the scalar reference dot product of
 * every type against a float reference, every SIMD kernel against its
 * scalar reference (random, all-max and extreme-scale blocks), the gemm
 * driver against the vec_dot loop, and the MOEQ_ISA override.
 */
#include "test.h"
#include "kernels/kernels.h"
#include "quant/quants.h"
#include "quant/quants_blocks.h"

#include <stdint.h>

static const int all_types[] = {
    MOEQ_TYPE_F32, MOEQ_TYPE_F16, MOEQ_TYPE_BF16, MOEQ_TYPE_Q4_0, MOEQ_TYPE_Q8_0,
    MOEQ_TYPE_Q2_K, MOEQ_TYPE_Q3_K, MOEQ_TYPE_Q4_K, MOEQ_TYPE_Q5_K, MOEQ_TYPE_Q6_K,
    MOEQ_TYPE_IQ2_XXS, MOEQ_TYPE_IQ2_XS, MOEQ_TYPE_IQ2_S, MOEQ_TYPE_IQ3_XXS,
    MOEQ_TYPE_IQ3_S, MOEQ_TYPE_IQ4_NL, MOEQ_TYPE_IQ4_XS,
};
#define N_TYPES ((int)(sizeof all_types / sizeof all_types[0]))

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}
static float rnd_unit(void) { return (float)((rnd() >> 11) * (1.0 / 9007199254740992.0)); }
static float rnd_sym(void) { return 2.f * rnd_unit() - 1.f; }

enum fill { FILL_RANDOM, FILL_MAX, FILL_EXTREME };

/* Byte offsets of the half-float scale fields of one block. */
static int half_fields(int type, int *off)
{
    switch (type) {
    case MOEQ_TYPE_Q2_K: off[0] = 80; off[1] = 82; return 2;
    case MOEQ_TYPE_Q3_K: off[0] = 108; return 1;
    case MOEQ_TYPE_Q4_K: case MOEQ_TYPE_Q5_K: off[0] = 0; off[1] = 2; return 2;
    case MOEQ_TYPE_Q6_K: off[0] = 208; return 1;
    default: off[0] = 0; return 1;
    }
}

/*
 * A valid random row: quant bytes random (or all 0xff), half scales set to
 * sane values (or the largest / smallest normal half for FILL_EXTREME).
 */
static void fill_row(int type, void *row, int64_t n, enum fill mode)
{
    const struct moeq_type_traits *t = moeq_type_traits(type);
    uint8_t *p = row;
    if (!t->quantized) {
        for (int64_t i = 0; i < n; i++) {
            float v = mode == FILL_MAX ? (i % 2 ? -1.f : 1.f) * 60000.f
                    : mode == FILL_EXTREME ? rnd_sym() * 1e4f : rnd_sym();
            if (type == MOEQ_TYPE_F32) memcpy(p + 4 * i, &v, 4);
            else {
                uint16_t h = type == MOEQ_TYPE_F16 ? moeq_f32_to_f16(v) : moeq_f32_to_bf16(v);
                memcpy(p + 2 * i, &h, 2);
            }
        }
        return;
    }
    int64_t nb = n / t->blck_size;
    for (int64_t b = 0; b < nb; b++) {
        uint8_t *blk = p + b * t->type_size;
        for (size_t j = 0; j < t->type_size; j++) blk[j] = mode == FILL_MAX ? 0xff : (uint8_t)rnd();
        int off[2], nf = half_fields(type, off);
        for (int f = 0; f < nf; f++) {
            float d;
            if (mode == FILL_EXTREME) d = (b + f) % 2 ? 65504.f : 6.1035156e-05f;
            else if (mode == FILL_MAX) d = 0.5f;
            else d = (0.001f + 0.05f * rnd_unit()) * (rnd() & 1 ? -1.f : 1.f);
            uint16_t h = moeq_f32_to_f16(d);
            memcpy(blk + off[f], &h, 2);
        }
    }
}

static void fill_act(float *x, int64_t n, enum fill mode)
{
    for (int64_t i = 0; i < n; i++) {
        if (mode == FILL_MAX) x[i] = (rnd() & 1) ? 3.f : -3.f;
        else if (mode == FILL_EXTREME) x[i] = rnd_sym() * (i % 64 == 0 ? 1e6f : 1e-3f);
        else x[i] = rnd_sym() * (1.f + 3.f * rnd_unit());
    }
}

/* The activation row as floats, as the integer kernels see it. */
static void act_to_float(int wtype, const void *a, float *x, int64_t n)
{
    int at = moeq_act_type(wtype);
    if (at == MOEQ_TYPE_F32) { memcpy(x, a, (size_t)n * 4); return; }
    if (at == MOEQ_TYPE_Q8_0) {
        const block_q8_0 *y = a;
        for (int64_t i = 0; i < n; i++) x[i] = moeq_f16_to_f32(y[i / 32].d) * y[i / 32].qs[i % 32];
        return;
    }
    const block_q8_K *y = a;
    for (int64_t i = 0; i < n; i++) x[i] = y[i / 256].d * y[i / 256].qs[i % 256];
}

/*
 * Sum of |partial dot| over the row's blocks, by the scalar kernel: the
 * scale against which a different summation order of the blocks is judged.
 */
static double block_magnitude(int type, int64_t n, const void *w, const void *a)
{
    const struct moeq_type_traits *t = moeq_type_traits(type);
    moeq_vec_dot_fn dot = moeq_vec_dot_isa(type, MOEQ_ISA_SCALAR);
    int64_t bn = t->quantized ? (t->blck_size < 32 ? 32 : t->blck_size) : 1;
    size_t wb = moeq_row_size(type, bn), ab = moeq_act_row_size(type, bn);
    double mag = 0;
    for (int64_t i = 0; i < n / bn; i++) {
        float s;
        dot(bn, &s, (const uint8_t *)w + i * wb, (const uint8_t *)a + i * ab);
        mag += fabs(s);
    }
    return mag;
}

TEST(kernels_act_q8_K_and_q8_0)
{
    enum { N = 512 };
    float x[N], back[N];
    for (int i = 0; i < N; i++) x[i] = rnd_sym() * (i + 1);
    block_q8_K yk[N / 256];
    REQUIRE(moeq_act_row_size(MOEQ_TYPE_Q4_K, N) == sizeof yk);
    moeq_quantize_act(MOEQ_TYPE_IQ2_S, x, yk, N);
    for (int b = 0; b < N / 256; b++)
        for (int g = 0; g < 16; g++) {
            int s = 0;
            for (int j = 0; j < 16; j++) {
                CHECK(yk[b].qs[16 * g + j] >= -127);
                s += yk[b].qs[16 * g + j];
            }
            CHECK(s == yk[b].bsums[g]);
        }
    act_to_float(MOEQ_TYPE_Q4_K, yk, back, N);
    for (int i = 0; i < N; i++) CHECKF(fabsf(back[i] - x[i]) <= yk[i / 256].d * 0.5001f, "q8_K %d", i);

    block_q8_0 y0[N / 32];
    REQUIRE(moeq_act_row_size(MOEQ_TYPE_Q8_0, N) == sizeof y0);
    moeq_quantize_act(MOEQ_TYPE_Q4_0, x, y0, N);
    act_to_float(MOEQ_TYPE_Q8_0, y0, back, N);
    for (int i = 0; i < N; i++) {
        float d = moeq_f16_to_f32(y0[i / 32].d);
        CHECKF(fabsf(back[i] - x[i]) <= d * 0.51f + fabsf(x[i]) * 2e-3f, "q8_0 %d", i);
    }

    /* an all-zero row gives zero scales and zero sums, not nan */
    memset(x, 0, sizeof x);
    moeq_quantize_act(MOEQ_TYPE_Q6_K, x, yk, N);
    CHECK(yk[0].d == 0 && yk[1].bsums[3] == 0 && yk[1].qs[7] == 0);
    CHECK(moeq_act_type(MOEQ_TYPE_F16) == MOEQ_TYPE_F32);
    CHECK(moeq_act_type(MOEQ_TYPE_IQ4_NL) == MOEQ_TYPE_Q8_0);
    CHECK(moeq_act_type(MOEQ_TYPE_IQ4_XS) == MOEQ_TYPE_Q8_K);
}

/* Every scalar kernel equals the dot of the dequantized row with the
 * dequantized activations, accumulated in double. */
TEST(kernels_scalar_matches_float_reference)
{
    enum { N = 1024 };
    static uint8_t w[N * 4], a[N * 4];
    static float x[N], wf[N], af[N];
    int checked = 0;
    for (int ti = 0; ti < N_TYPES; ti++) {
        int type = all_types[ti];
        moeq_vec_dot_fn dot = moeq_vec_dot_isa(type, MOEQ_ISA_SCALAR);
        REQUIREF(dot != NULL, "%s: no scalar kernel", moeq_type_name(type));
        for (int mode = 0; mode < 3; mode++) {
            fill_row(type, w, N, (enum fill)mode);
            fill_act(x, N, (enum fill)mode);
            moeq_quantize_act(type, x, a, N);
            const struct moeq_type_traits *t = moeq_type_traits(type);
            if (type == MOEQ_TYPE_F32) memcpy(wf, w, sizeof wf);
            else if (type == MOEQ_TYPE_F16)
                for (int i = 0; i < N; i++) wf[i] = moeq_f16_to_f32(((uint16_t *)w)[i]);
            else if (type == MOEQ_TYPE_BF16)
                for (int i = 0; i < N; i++) wf[i] = moeq_bf16_to_f32(((uint16_t *)w)[i]);
            else if (!t->to_float || moeq_dequantize(type, w, wf, N) != 0)
                continue;       /* dequantizer not in this build yet */
            act_to_float(type, a, af, N);
            double ref = 0, mag = 0;
            for (int i = 0; i < N; i++) {
                ref += (double)wf[i] * af[i];
                mag += fabs((double)wf[i] * af[i]);
            }
            float s = 0;
            dot(N, &s, w, a);
            CHECKF(fabs(s - ref) <= 2e-5 * mag + 1e-30, "%s mode %d: kernel %.9g ref %.9g (mag %.3g)",
                   moeq_type_name(type), mode, s, ref, mag);
            checked++;
        }
    }
    if (checked == 0) SKIP("no dequantizers in this build");
}

/* Every SIMD kernel equals its scalar reference up to summation order. */
TEST(kernels_simd_matches_scalar)
{
    static uint8_t w[4096 * 4], a[4096 * 4];
    static float x[4096];
    static const int64_t lens[] = { 256, 512, 4096 };
    int tested = 0;
    for (int isa = MOEQ_ISA_AVX2; isa < MOEQ_ISA_COUNT; isa++) {
        if (moeq_vec_dot_isa(MOEQ_TYPE_F32, isa) == NULL && moeq_vec_dot_isa(MOEQ_TYPE_Q4_K, isa) == NULL &&
            moeq_vec_dot_isa(MOEQ_TYPE_IQ2_S, isa) == NULL)
            continue;   /* CPU or build lacks this ISA */
        for (int ti = 0; ti < N_TYPES; ti++) {
            int type = all_types[ti];
            moeq_vec_dot_fn simd = moeq_vec_dot_isa(type, isa);
            moeq_vec_dot_fn ref = moeq_vec_dot_isa(type, MOEQ_ISA_SCALAR);
            if (!simd) continue;
            for (int li = 0; li < 3; li++)
                for (int mode = 0; mode < 3; mode++)
                    for (int rep = 0; rep < 4; rep++) {
                        int64_t n = lens[li];
                        fill_row(type, w, n, (enum fill)mode);
                        fill_act(x, n, (enum fill)((mode + rep) % 3));
                        moeq_quantize_act(type, x, a, n);
                        float s1 = 0, s2 = 0;
                        ref(n, &s1, w, a);
                        simd(n, &s2, w, a);
                        double mag = block_magnitude(type, n, w, a);
                        CHECKF(fabs((double)s1 - s2) <= 1e-5 * mag + 1e-30,
                               "%s %s n=%lld mode %d: scalar %.9g simd %.9g (mag %.3g)",
                               moeq_isa_name(isa), moeq_type_name(type), (long long)n, mode,
                               s1, s2, mag);
                        tested++;
                    }
        }
    }
    if (!tested) SKIP("no SIMD kernels for this CPU");
}

/* moeq_gemm (every ISA, ragged column counts) equals the vec_dot loop. */
TEST(kernels_gemm_matches_vec_dot)
{
    enum { K = 512, R = 5, C = 19 };
    static uint8_t w[R * K * 4], a[C * K * 4];
    static float x[K], out[C * (R + 3)];
    for (int isa = 0; isa < MOEQ_ISA_COUNT; isa++) {
        if (isa > 0 && moeq_vec_dot_isa(MOEQ_TYPE_F32, isa) == NULL &&
            moeq_vec_dot_isa(MOEQ_TYPE_Q4_K, isa) == NULL && moeq_vec_dot_isa(MOEQ_TYPE_IQ2_S, isa) == NULL)
            continue;
        for (int ti = 0; ti < N_TYPES; ti++) {
            int type = all_types[ti];
            size_t ws = moeq_row_size(type, K), as = moeq_act_row_size(type, K);
            for (int r = 0; r < R; r++) fill_row(type, w + r * ws, K, r == 3 ? FILL_MAX : FILL_RANDOM);
            for (int c = 0; c < C; c++) {
                fill_act(x, K, c == 7 ? FILL_EXTREME : FILL_RANDOM);
                moeq_quantize_act(type, x, a + c * as, K);
            }
            moeq_vec_dot_fn dot = moeq_vec_dot_isa(type, isa);
            if (!dot) dot = moeq_vec_dot_isa(type, MOEQ_ISA_SCALAR);
            /* small column counts take other paths than large ones */
            static const int ncols[] = { 1, 2, 3, 5, C };
            for (int ni = 0; ni < 5; ni++) {
                int nc = ncols[ni];
                for (int i = 0; i < C * (R + 3); i++) out[i] = -12345.f;
                moeq_gemm_isa(isa, type, K, w, ws, R, a, as, nc, out, R + 3);
                for (int c = 0; c < nc; c++) {
                    for (int r = 0; r < R; r++) {
                        float s;
                        dot(K, &s, w + r * ws, a + c * as);
                        double mag = block_magnitude(type, K, w + r * ws, a + c * as);
                        CHECKF(fabs((double)s - out[c * (R + 3) + r]) <= 1e-5 * mag + 1e-30,
                               "%s %s r%d c%d: gemm %.9g dot %.9g", moeq_isa_name(isa),
                               moeq_type_name(type), r, c, out[c * (R + 3) + r], s);
                    }
                    for (int r = R; r < R + 3; r++) CHECK(out[c * (R + 3) + r] == -12345.f);
                }
                CHECK(nc == C || out[nc * (R + 3)] == -12345.f);
            }
        }
    }
}

TEST(kernels_isa_env_lowers_choice)
{
    setenv("MOEQ_ISA", "scalar", 1);
    CHECK(moeq_isa_best() == MOEQ_ISA_SCALAR);
    CHECK(moeq_vec_dot(MOEQ_TYPE_IQ2_S) == moeq_vec_dot_isa(MOEQ_TYPE_IQ2_S, MOEQ_ISA_SCALAR));
    CHECK(strcmp(moeq_isa_name(MOEQ_ISA_AVX512), "avx512") == 0);
    CHECK(moeq_vec_dot_isa(MOEQ_TYPE_Q8_K, MOEQ_ISA_SCALAR) == NULL);
    CHECK(moeq_vec_dot_isa(MOEQ_TYPE_Q4_K, 7) == NULL);
}

/* Long rows: the activation panel holds fewer columns than the call, so
 * the gemm walks several panels; still equal to the vec_dot loop. */
TEST(kernels_gemm_several_panels)
{
    enum { K = 8192, R = 3, C = 37 };
    static const int types[] = { MOEQ_TYPE_Q4_K, MOEQ_TYPE_IQ2_S, MOEQ_TYPE_F16, MOEQ_TYPE_Q8_0 };
    static float x[K], out[C * R];
    for (int ti = 0; ti < 4; ti++) {
        int type = types[ti];
        size_t ws = moeq_row_size(type, K), as = moeq_act_row_size(type, K);
        uint8_t *w = malloc(ws * R), *a = malloc(as * C);
        REQUIRE(w && a);
        for (int r = 0; r < R; r++) fill_row(type, w + r * ws, K, FILL_RANDOM);
        for (int c = 0; c < C; c++) {
            fill_act(x, K, FILL_RANDOM);
            moeq_quantize_act(type, x, a + c * as, K);
        }
        moeq_gemm(type, K, w, ws, R, a, as, C, out, R);
        moeq_vec_dot_fn dot = moeq_vec_dot(type);
        for (int c = 0; c < C; c++)
            for (int r = 0; r < R; r++) {
                float s;
                dot(K, &s, w + r * ws, a + c * as);
                double mag = block_magnitude(type, K, w + r * ws, a + c * as);
                CHECKF(fabs((double)s - out[c * R + r]) <= 1e-5 * mag + 1e-30, "%s r%d c%d: gemm %.9g dot %.9g",
                       moeq_type_name(type), r, c, out[c * R + r], s);
            }
        free(w);
        free(a);
    }
}

TEST(kernels_kbench_cli)
{
    char *out = NULL;
    int rc = test_run(&out, "%s kbench --types q4_k,iq2_s -k 256 --cols 3 --mb 1 -r 1", test_moeq_bin());
    CHECKF(rc == 0, "kbench exit %d: %s", rc, out ? out : "");
    CHECK(out && strstr(out, "Q4_K") && strstr(out, "IQ2_S") && strstr(out, "scalar"));
    free(out);
    rc = test_run(&out, "%s kbench --types q9_z", test_moeq_bin());
    CHECK(rc == 2 && out && strstr(out, "moeq: kbench:"));
    free(out);
    rc = test_run(&out, "%s kbench -k 100", test_moeq_bin());
    CHECK(rc == 2);
    free(out);
    rc = test_run(&out, "%s kbench --help", test_moeq_bin());
    CHECK(rc == 0 && out && strstr(out, "usage: moeq kbench"));
    free(out);
}

/* Every ISA quantizes activations to the same bytes as the scalar code. */
TEST(kernels_act_quant_same_bytes_every_isa)
{
    enum { N = 1024 };
    static float x[N];
    static uint8_t ref[N * 2], got[N * 2];
    static const int wt[] = { MOEQ_TYPE_Q4_K, MOEQ_TYPE_Q8_0 };
    for (int isa = MOEQ_ISA_AVX2; isa < MOEQ_ISA_COUNT; isa++)
        for (int t = 0; t < 2; t++)
            for (int mode = 0; mode < 4; mode++) {
                if (mode < 3) fill_act(x, N, (enum fill)mode);
                else for (int i = 0; i < N; i++) x[i] = i < 300 ? 0.f : (float)(i % 7) - 3.f; /* zero blocks, exact halves */
                size_t bytes = moeq_act_row_size(wt[t], N);
                memset(ref, 0x55, sizeof ref);
                memset(got, 0xaa, sizeof got);
                moeq_quantize_act_isa(MOEQ_ISA_SCALAR, wt[t], x, ref, N);
                moeq_quantize_act_isa(isa, wt[t], x, got, N);
                CHECKF(memcmp(ref, got, bytes) == 0, "%s %s mode %d: bytes differ", moeq_isa_name(isa),
                       moeq_type_name(moeq_act_type(wt[t])), mode);
            }
}

/*
 * A column's result never depends on how many columns are computed with
 * it (decode of one session vs a batch of sessions, prefill vs decode):
 * gemm outputs are bit-identical for 1, 2, 3, 4, 5, 17 and 33 columns, at
 * every ISA, for short rows and for rows longer than the IQ2_S/IQ3_S table.
 */
TEST(kernels_gemm_bit_identical_for_any_column_count)
{
    static const int ks[] = { 768, 12288, 4096 };
    /* tile groups of 16, the leftover 1..3 columns of a call (tile_few),
     * and more than one pass (64 columns at 16 blocks a row) */
    static const int ncs[] = { 1, 2, 3, 4, 5, 8, 16, 17, 18, 19, 20, 33, 66, 67 };
    enum { R = 6, CMAX = 67, NNC = sizeof ncs / sizeof ncs[0] };
    for (int ki = 0; ki < 3; ki++) {
        int K = ks[ki];
        float *x = malloc(sizeof(float) * K), *ref = malloc(sizeof(float) * R * CMAX),
              *out = malloc(sizeof(float) * R * CMAX);
        uint8_t *w = malloc((size_t)R * K * 4), *a = malloc((size_t)CMAX * K * 4);
        REQUIRE(x && ref && out && w && a);
        for (int isa = 0; isa < MOEQ_ISA_COUNT; isa++) {
            if (isa > 0 && moeq_vec_dot_isa(MOEQ_TYPE_Q4_K, isa) == NULL) continue;
            for (int ti = 0; ti < N_TYPES; ti++) {
                int type = all_types[ti];
                if (K % moeq_type_traits(type)->blck_size) continue;
                if (ki >= 1 && type != MOEQ_TYPE_IQ2_S && type != MOEQ_TYPE_IQ3_S && type != MOEQ_TYPE_Q4_K &&
                    type != MOEQ_TYPE_Q6_K && type != MOEQ_TYPE_Q8_0)
                    continue;   /* the long rows are for the tiles' limits */
                size_t ws = moeq_row_size(type, K), as = moeq_act_row_size(type, K);
                for (int r = 0; r < R; r++) fill_row(type, w + r * ws, K, FILL_RANDOM);
                for (int c = 0; c < CMAX; c++) {
                    fill_act(x, K, FILL_RANDOM);
                    moeq_quantize_act(type, x, a + c * as, K);
                }
                moeq_gemm_isa(isa, type, K, w, ws, R, a, as, CMAX, ref, R);
                for (int ni = 0; ni < NNC; ni++) {
                    int nc = ncs[ni];
                    /* columns [c0, c0 + nc) of the same activations */
                    int c0 = (CMAX - nc) / 2;
                    moeq_gemm_isa(isa, type, K, w, ws, R, a + c0 * as, as, nc, out, R);
                    CHECKF(memcmp(out, ref + c0 * R, sizeof(float) * R * nc) == 0,
                           "%s %s K=%d: %d columns differ from %d", moeq_isa_name(isa),
                           moeq_type_name(type), K, nc, CMAX);
                }
            }
        }
        free(x); free(ref); free(out); free(w); free(a);
    }
}

/* Q8_0 K scores from int8 dot products (kernels.h scores_q8): every ISA
 * the CPU has gives the scalar reference's bits, for row counts that fill
 * eight-row groups or not, odd position counts, and the rows a stride
 * apart as in the cache; and each score is the integer dot product of the
 * quantized rows times their scales, within float rounding. */
TEST(kernels_attn_scores_q8_same_bits_every_isa)
{
    const int ds[2] = { 64, 128 };
    for (int di = 0; di < 2; di++) {
        const int d = ds[di], nb = d / QK8_0, np = 37, maxr = 17;
        const size_t head = (size_t)nb * sizeof(block_q8_0), stride = 3 * head + 6;
        uint8_t *k = calloc((size_t)np, stride);
        uint8_t *qq = malloc((size_t)maxr * head);
        float *x = malloc((size_t)d * sizeof *x), *ref = malloc((size_t)maxr * np * sizeof *ref);
        float *got = malloc((size_t)maxr * np * sizeof *got);
        REQUIRE(k && qq && x && ref && got);
        uint32_t seed = 7;
        for (int p = 0; p < np; p++) {
            for (int i = 0; i < d; i++) { seed = seed * 1664525u + 1013904223u; x[i] = (float)(int)(seed >> 16 & 1023) / 64.0f - 8.0f; }
            moeq_quantize_act(MOEQ_TYPE_Q8_0, x, k + (size_t)p * stride + head, d);   /* the second head of the row */
        }
        const void *q[17];
        for (int r = 0; r < maxr; r++) {
            for (int i = 0; i < d; i++) { seed = seed * 1664525u + 1013904223u; x[i] = (float)(int)(seed >> 16 & 2047) / 100.0f - 10.0f; }
            moeq_quantize_act(MOEQ_TYPE_Q8_0, x, qq + (size_t)r * head, d);
            q[r] = qq + (size_t)r * head;
        }
        const int nrs[5] = { 1, 3, 8, 12, 17 };
        for (int ni = 0; ni < 5; ni++) {
            const int nr = nrs[ni];
            struct moeq_attn_ops o;
            moeq_attn_pick(MOEQ_ISA_SCALAR, MOEQ_TYPE_Q8_0, MOEQ_TYPE_Q8_0, d, &o);
            REQUIRE(o.scores_q8);
            o.scores_q8(q, nr, k + head, stride, np, d, 0.125f, ref, (size_t)np);
            for (int r = 0; r < nr; r++)
                for (int p = 0; p < np; p++) {
                    const block_q8_0 *a = q[r], *b = (const block_q8_0 *)(k + (size_t)p * stride + head);
                    double want = 0;
                    for (int j = 0; j < nb; j++) {
                        long s = 0;
                        for (int i = 0; i < QK8_0; i++) s += (long)a[j].qs[i] * b[j].qs[i];
                        want += (double)s * moeq_f16_to_f32(a[j].d) * moeq_f16_to_f32(b[j].d);
                    }
                    want *= 0.125;
                    CHECKF(fabs(ref[(size_t)r * np + p] - want) <= 1e-5 * (fabs(want) + 1),
                           "d %d row %d pos %d: %g, want %g", d, r, p, ref[(size_t)r * np + p], want);
                }
            for (int isa = MOEQ_ISA_AVX2; isa <= moeq_isa_best(); isa++) {
                moeq_attn_pick(isa, MOEQ_TYPE_Q8_0, MOEQ_TYPE_Q8_0, d, &o);
                REQUIRE(o.scores_q8);
                memset(got, 0, (size_t)maxr * np * sizeof *got);
                o.scores_q8(q, nr, k + head, stride, np, d, 0.125f, got, (size_t)np);
                CHECKF(memcmp(got, ref, (size_t)nr * np * sizeof *got) == 0, "d %d, %d rows, isa %s: not the scalar bits",
                       d, nr, moeq_isa_name(isa));
            }
        }
        /* F16 K has no integer path */
        struct moeq_attn_ops o;
        moeq_attn_pick(MOEQ_ISA_COUNT, MOEQ_TYPE_F16, MOEQ_TYPE_F16, d, &o);
        CHECK(o.scores_q8 == NULL);
        free(k); free(qq); free(x); free(ref); free(got);
    }
}
