/*
 * i-quant encoders (src/quant/quants_iq.c): round-trip error on structured random
 * data within measured bounds, the imatrix steering the error where it
 * matters, every block decoding to finite values, degenerate rows, thread
 * safety of the lazily built tables, and, when ../shared is present, the
 * imatrix-weighted error against the reference quantizer's own output for
 * the same tensors and imatrix.
 */
#include "test.h"
#include "quant/quants.h"
#include "quant/quants_blocks.h"
#include "gguf/gguf.h"

#include <pthread.h>
#include <stdint.h>
#include <time.h>

static const int iq_types[] = {
    MOEQ_TYPE_IQ2_XXS, MOEQ_TYPE_IQ2_XS, MOEQ_TYPE_IQ2_S, MOEQ_TYPE_IQ3_XXS, MOEQ_TYPE_IQ3_S,
};
#define N_IQ ((int)(sizeof iq_types / sizeof iq_types[0]))

/* ------------------------------------------------ structured data */

static uint32_t lcg(uint32_t *s) { *s = *s * 1664525u + 1013904223u; return *s >> 8; }
static float unif(uint32_t *s) { return (float)(lcg(s) & 0xffff) / 65536.0f; }

/*
 * Rows whose scales span two decades, bell-shaped values (sum of three
 * uniforms), and a few outlier columns eight times larger: the shape of
 * real weight matrices that breaks naive scale choices.
 */
#define NROWS 24
#define NCOLS 512
static void make_data(float *x, float *imat, uint32_t seed)
{
    uint32_t s = seed;
    for (int r = 0; r < NROWS; r++) {
        float scale = 0.002f * powf(100.0f, (float)r / (NROWS - 1));
        for (int c = 0; c < NCOLS; c++) {
            float v = unif(&s) + unif(&s) + unif(&s) - 1.5f;
            if (c % 97 == 5) v *= 8;
            x[r * NCOLS + c] = v * scale;
        }
    }
    /* importance: smooth variation plus heavy columns, as activations give */
    for (int c = 0; c < NCOLS; c++)
        imat[c] = 0.05f + unif(&s) * unif(&s) * 4 + (c % 61 == 3 ? 20.0f : 0.0f);
}

/* Relative error sum w (x - y)^2 / sum w x^2 over the matrix (w = 1 when imat is NULL). */
static double rel_err(const float *x, const float *y, const float *imat, int nrows, int ncols)
{
    double e = 0, n = 0;
    for (int r = 0; r < nrows; r++)
        for (int c = 0; c < ncols; c++) {
            double w = imat ? imat[c] : 1.0, d = x[r * ncols + c] - y[r * ncols + c];
            e += w * d * d;
            n += w * x[r * ncols + c] * x[r * ncols + c];
        }
    return e / n;
}

/* Quantize with the traits' encoder and decode with the traits' decoder. */
static void roundtrip_qp(int type, const float *x, float *y, int nrows, int ncols, const float *imat,
                        const struct moeq_quant_params *qp)
{
    const struct moeq_type_traits *t = moeq_type_traits(type);
    REQUIRE(t && t->quantize && t->to_float);
    size_t rs = moeq_row_size(type, ncols);
    void *q = malloc(rs * (size_t)nrows);
    REQUIRE(q != NULL);
    memset(q, 0xa5, rs * (size_t)nrows);
    size_t wrote = t->quantize(x, q, nrows, ncols, imat, qp);
    CHECKF(wrote == rs * (size_t)nrows, "%s: wrote %zu of %zu bytes", t->name, wrote, rs * (size_t)nrows);
    REQUIRE(moeq_dequantize(type, q, y, (int64_t)nrows * ncols) == 0);
    free(q);
}

static void roundtrip(int type, const float *x, float *y, int nrows, int ncols, const float *imat)
{
    roundtrip_qp(type, x, y, nrows, ncols, imat, NULL);
}

/*
 * Measured relative weighted errors (sum w e^2 / sum w x^2) of this encoder
 * on make_data(seed 7), times 1.05: with the imatrix, and unweighted
 * without one. The reference quantizer's algorithm lands 12-16% above our
 * imatrix values on this data, so the bounds catch a search that regressed
 * to it or worse. (Without an imatrix the IQ3 types weight by x^2, as
 * ggml does; that objective is met twice as well as by the reference, but
 * the unweighted error shown here is 5-7% above the reference's.)
 */
static const struct { int type; double bound_imat, bound_plain; } bounds[] = {
    { MOEQ_TYPE_IQ2_XXS, 0.1478, 0.2200 },
    { MOEQ_TYPE_IQ2_XS,  0.0965, 0.1329 },
    { MOEQ_TYPE_IQ2_S,   0.0826, 0.1052 },
    { MOEQ_TYPE_IQ3_XXS, 0.0364, 0.0754 },
    { MOEQ_TYPE_IQ3_S,   0.0239, 0.0411 },
};

TEST(iq_roundtrip_error_bounds)
{
    float *x = malloc(sizeof(float) * NROWS * NCOLS), *y = malloc(sizeof(float) * NROWS * NCOLS);
    float imat[NCOLS];
    REQUIRE(x && y);
    make_data(x, imat, 7);
    for (int k = 0; k < N_IQ; k++) {
        int type = bounds[k].type;
        roundtrip(type, x, y, NROWS, NCOLS, imat);
        double ei = rel_err(x, y, imat, NROWS, NCOLS);
        roundtrip(type, x, y, NROWS, NCOLS, NULL);
        double ep = rel_err(x, y, NULL, NROWS, NCOLS);
        printf("  %-8s rel weighted err with imatrix %.5f, plain err without %.5f\n",
               moeq_type_name(type), ei, ep);
        CHECKF(ei <= bounds[k].bound_imat, "%s: %.5f > %.5f", moeq_type_name(type), ei, bounds[k].bound_imat);
        CHECKF(ep <= bounds[k].bound_plain, "%s: %.5f > %.5f", moeq_type_name(type), ep, bounds[k].bound_plain);
    }
    free(x); free(y);
}

/*
 * The imatrix must pay off where it is measured: quantized with it, the
 * imatrix-weighted error is no worse than quantized without it. Checked on
 * three seeds so one lucky draw cannot pass it.
 */
TEST(iq_imatrix_lowers_weighted_error)
{
    float *x = malloc(sizeof(float) * NROWS * NCOLS), *y = malloc(sizeof(float) * NROWS * NCOLS);
    float imat[NCOLS];
    REQUIRE(x && y);
    for (uint32_t seed = 1; seed <= 3; seed++) {
        make_data(x, imat, seed);
        for (int k = 0; k < N_IQ; k++) {
            roundtrip(iq_types[k], x, y, NROWS, NCOLS, imat);
            double with = rel_err(x, y, imat, NROWS, NCOLS);
            roundtrip(iq_types[k], x, y, NROWS, NCOLS, NULL);
            double without = rel_err(x, y, imat, NROWS, NCOLS);
            CHECKF(with <= without, "%s seed %u: weighted err %.5f with imatrix > %.5f without",
                   moeq_type_name(iq_types[k]), seed, with, without);
        }
    }
    free(x); free(y);
}

/*
 * Every super-block decodes unbiased along x under the imatrix weighting,
 * sum(imat*x*y) = sum(imat*x*x) (unit weights without an imatrix), to fp16
 * rounding of d: the property the KL divergence of chained experts depends
 * on, so that a search tuned for lower RMSE cannot give it up unnoticed
 * (without the rescale, blocks here range from 0.90 to 1.08).
 */
TEST(iq_blocks_unbiased)
{
    float *x = malloc(sizeof(float) * NROWS * NCOLS), *y = malloc(sizeof(float) * NROWS * NCOLS);
    float imat[NCOLS];
    REQUIRE(x && y);
    make_data(x, imat, 5);
    for (int k = 0; k < N_IQ; k++)
        for (int with = 0; with <= 1; with++) {
            roundtrip(iq_types[k], x, y, NROWS, NCOLS, with ? imat : NULL);
            double lo = 2, hi = 0;
            for (int b = 0; b < NROWS * NCOLS / QK_K; b++) {
                double sxx = 0, sxy = 0;
                for (int i = b * QK_K; i < (b + 1) * QK_K; i++) {
                    double wi = with ? imat[i % NCOLS] : 1.0;
                    sxx += wi * x[i] * x[i];
                    sxy += wi * x[i] * y[i];
                }
                double g = sxy / sxx;
                if (g < lo) lo = g;
                if (g > hi) hi = g;
            }
            CHECKF(lo >= 0.998 && hi <= 1.002, "%s %s imatrix: block gain sum(w*x*y)/sum(w*x*x) in [%.4f, %.4f]",
                   moeq_type_name(iq_types[k]), with ? "with" : "without", lo, hi);
        }
    free(x); free(y);
}

/*
 * Every block decodes to finite values, and degenerate input stays sane:
 * an all-zero row decodes to zeros, a row with one non-zero weight keeps
 * that weight's sign and rough size, a constant row stays near its value
 * (loosely: few codewords have four equal coordinates), huge and tiny magnitudes neither
 * overflow the fp16 scale nor produce NaN, NaN/inf input (or a corrupt
 * imatrix with NaN, inf, negative and huge values) does not crash,
 * and a bad row length is refused (0 bytes).
 */
TEST(iq_degenerate_rows)
{
    enum { N = 256 * 2 };
    float x[8][N], y[N];
    memset(x, 0, sizeof x);
    x[1][300] = -0.75f;                                     /* one weight */
    for (int i = 0; i < N; i++) x[2][i] = (i % 2 ? 1 : -1) * 3.0e4f * (1 + i % 5);  /* huge */
    for (int i = 0; i < N; i++) x[3][i] = (i % 3 - 1) * 1e-6f * (1 + i % 7);       /* tiny */
    for (int i = 0; i < N; i++) x[4][i] = (float)((i * 37) % 11 - 5);
    x[4][17] = NAN; x[4][100] = INFINITY;                   /* garbage in */
    for (int i = 0; i < N; i++) x[5][i] = 1.0f;              /* constant */
    for (int i = 0; i < N; i++) x[6][i] = i < 256 ? 0.0f : 0.01f * ((i * 13) % 9 - 4); /* half zero */
    for (int i = 0; i < N; i++) x[7][i] = -0.02f;            /* constant negative */
    float imat[N], badimat[N];
    for (int i = 0; i < N; i++) imat[i] = i % 5 ? 1.0f : 0.0f; /* dead columns too */
    for (int i = 0; i < N; i++)                              /* a corrupt imatrix */
        badimat[i] = i % 7 == 0 ? NAN : i % 7 == 1 ? INFINITY : i % 7 == 2 ? -3.0f : 1e30f * (float)(i % 3);

    for (int k = 0; k < N_IQ; k++) {
        const int type = iq_types[k];
        const struct moeq_type_traits *t = moeq_type_traits(type);
        const char *name = t->name;
        size_t rs = moeq_row_size(type, N);
        uint8_t q[1024];
        REQUIRE(rs <= sizeof q);
        CHECK(t->quantize(x[0], q, 1, 300, NULL, NULL) == 0);      /* not a multiple of 256 */
        for (int r = 0; r < 8; r++) {
            for (int pass = 0; pass < 3; pass++) {
                REQUIRE(t->quantize(x[r], q, 1, N, pass == 2 ? badimat : pass ? imat : NULL, NULL) == rs);
                REQUIRE(moeq_dequantize(type, q, y, N) == 0);
                int finite = 1;
                for (int i = 0; i < N; i++) finite &= isfinite(y[i]) != 0;
                CHECKF(finite, "%s row %d pass %d: non-finite output", name, r, pass);
                if (r == 0)
                    for (int i = 0; i < N; i++) CHECKF(y[i] == 0, "%s zero row: y[%d] = %g", name, i, (double)y[i]);
                if (r == 1 && pass == 0)
                    CHECKF(y[300] < -0.4f && y[300] > -1.2f, "%s single weight -> %g", name, (double)y[300]);
                if (r == 2 && pass == 0)
                    CHECKF(fabsf(y[4]) > 5e4f, "%s huge row: y[4] = %g", name, (double)y[4]);
                if (r == 5 && pass == 0)
                    CHECKF(fabsf(y[9] - 1.0f) < 0.3f, "%s constant row: y[9] = %g", name, (double)y[9]);
                if (r == 6 && pass == 0)
                    for (int i = 0; i < 256; i++) CHECKF(y[i] == 0, "%s zero half: y[%d] = %g", name, i, (double)y[i]);
                if (r == 7 && pass == 0)
                    CHECKF(fabsf(y[50] + 0.02f) < 0.005f, "%s negative row: y[50] = %g", name, (double)y[50]);
            }
        }
    }
}

/*
 * Values that came out of a format are representable in it, so encoding
 * them again must land on (nearly) the same blocks: a search that misses
 * the right scale or codeword shows up here at once. Measured: relative
 * error 1e-6..8e-4 of the first round's output (the first round itself is
 * near 0.1); bound 3e-3.
 */
TEST(iq_requantize_nearly_idempotent)
{
    enum { R = 32, C = 512 };
    float *x = malloc(sizeof(float) * R * C), *y1 = malloc(sizeof(float) * R * C);
    float *y2 = malloc(sizeof(float) * R * C);
    REQUIRE(x && y1 && y2);
    uint32_t s = 3;
    for (int i = 0; i < R * C; i++) x[i] = (unif(&s) + unif(&s) - 1.0f) * 0.01f * (1 + i / C);
    for (int k = 0; k < N_IQ; k++) {
        roundtrip(iq_types[k], x, y1, R, C, NULL);
        roundtrip(iq_types[k], y1, y2, R, C, NULL);
        double e = 0, n = 0;
        for (int i = 0; i < R * C; i++) { e += (y1[i] - y2[i]) * (y1[i] - y2[i]); n += y1[i] * y1[i]; }
        CHECKF(e / n < 3e-3, "%s: re-encoding moved the values by %.3g (relative)",
               moeq_type_name(iq_types[k]), e / n);
    }
    free(x); free(y1); free(y2);
}

/* ------------------------------------------------ thread safety */

struct iq_job { int type; const float *x; uint8_t *q; };

static void *iq_worker(void *arg)
{
    struct iq_job *j = arg;
    moeq_type_traits(j->type)->quantize(j->x, j->q, NROWS, NCOLS, NULL, NULL);
    return NULL;
}

/*
 * Four threads racing into the first use of each codebook's tables (built
 * lazily under pthread_once) produce the same bytes as one thread.
 */
TEST(iq_threads_agree)
{
    float *x = malloc(sizeof(float) * NROWS * NCOLS);
    float imat[NCOLS];
    REQUIRE(x);
    make_data(x, imat, 11);
    for (int k = 0; k < N_IQ; k++) {
        size_t bytes = moeq_row_size(iq_types[k], NCOLS) * NROWS;
        uint8_t *q[5];
        pthread_t th[4];
        struct iq_job jobs[4];
        for (int i = 0; i < 5; i++) { q[i] = malloc(bytes); REQUIRE(q[i]); }
        for (int i = 0; i < 4; i++) {
            jobs[i] = (struct iq_job){ iq_types[k], x, q[i] };
            REQUIRE(pthread_create(&th[i], NULL, iq_worker, &jobs[i]) == 0);
        }
        for (int i = 0; i < 4; i++) pthread_join(th[i], NULL);
        moeq_type_traits(iq_types[k])->quantize(x, q[4], NROWS, NCOLS, NULL, NULL);
        for (int i = 0; i < 4; i++)
            CHECKF(memcmp(q[i], q[4], bytes) == 0, "%s: thread %d differs", moeq_type_name(iq_types[k]), i);
        for (int i = 0; i < 5; i++) free(q[i]);
    }
    free(x);
}

/* ------------------------------------------------ against the reference */

/*
 * llama.cpp's legacy imatrix .dat: int32 n_entries, then per entry int32
 * name length, the name, int32 ncall, int32 nval, nval float sums; values
 * are the sums divided by ncall, as llama-quantize reads them. Returns the
 * entry's nval values (malloc'd) or NULL.
 */
static float *dat_entry(const char *path, const char *want, int *nval_out)
{
    size_t n = 0;
    uint8_t *buf = test_read_file(path, &n);
    if (!buf) return NULL;
    size_t off = 0;
    float *res = NULL;
#define TAKE(dst, len) do { if (off + (len) > n) goto done; memcpy((dst), buf + off, (len)); off += (len); } while (0)
    int32_t count;
    TAKE(&count, 4);
    for (int32_t e = 0; e < count; e++) {
        int32_t len, ncall, nval;
        char name[512];
        TAKE(&len, 4);
        if (len < 0 || len >= (int32_t)sizeof name) goto done;
        TAKE(name, (size_t)len);
        name[len] = 0;
        TAKE(&ncall, 4);
        TAKE(&nval, 4);
        if (nval < 0 || off + (size_t)nval * 4 > n) goto done;
        if (strcmp(name, want) == 0) {
            res = malloc((size_t)nval * sizeof(float));
            if (!res) goto done;
            memcpy(res, buf + off, (size_t)nval * 4);
            for (int32_t i = 0; i < nval; i++) res[i] /= ncall > 0 ? (float)ncall : 1.0f;
            *nval_out = nval;
            goto done;
        }
        off += (size_t)nval * 4;
    }
done:
#undef TAKE
    free(buf);
    return res;
}

/* sqrt(sum_c imat[c] (x - y)^2 / sum_c imat[c]) over a matrix */
static double wrmse(const float *x, const float *y, const float *imat, int nrows, int ncols)
{
    double e = 0, sw = 0;
    for (int r = 0; r < nrows; r++)
        for (int c = 0; c < ncols; c++) {
            double d = x[r * ncols + c] - y[r * ncols + c];
            e += imat[c] * d * d;
            sw += imat[c];
        }
    return sqrt(e / sw);
}

/*
 * The reference quantized blk.0.attn_q.weight and blk.1.attn_output.weight
 * of tiny-a (f16) with imatrix.dat into ../shared/testvectors/dequant; its
 * own dequantization of them is TYPE__NAME.f32. Ours, from the same f16
 * weights and imatrix, must stay within the per-type bound below (the
 * measured ratio ours/ref per tensor, rounded up by about half a percent).
 * The search alone is 3-5% better, but each super-block's d is then
 * rescaled so the block is unbiased along x (see unbias_scale in
 * quants_iq.c: it lowers KL divergence in chained experts). The reference
 * is not unbiased (sum qw*x*y / sum qw*x*x is 0.98 for its IQ2_XXS, 0.985
 * for IQ2_XS, 1.00-1.02 for the others), and an unbiased block's error is
 * the shrunk fit's times about 1/cos^2 of its angle to x, which costs most
 * where the error is largest: measured 1.016-1.026 for IQ2_XXS and
 * 1.006-1.014 for IQ2_XS, 0.95-0.994 for the others.
 */
static const struct { const char *type; double bound; } vs_ref_bounds[] = {
    { "IQ2_XXS", 1.030 }, { "IQ2_XS", 1.019 }, { "IQ2_S", 0.999 },
    { "IQ3_XXS", 0.997 }, { "IQ3_S", 0.963 },
};

static void vs_reference_bound(const char *type_name, double bound, const struct moeq_quant_params *qp);

static void vs_reference(const char *type_name)
{
    double bound = 0;
    for (size_t i = 0; i < sizeof vs_ref_bounds / sizeof vs_ref_bounds[0]; i++)
        if (!strcmp(vs_ref_bounds[i].type, type_name)) bound = vs_ref_bounds[i].bound;
    REQUIREF(bound > 0, "no bound for %s", type_name);
    vs_reference_bound(type_name, bound, NULL);
}

static void vs_reference_bound(const char *type_name, double bound, const struct moeq_quant_params *qp)
{
    static const char *names[2] = { "blk.0.attn_q.weight", "blk.1.attn_output.weight" };
    const int type = moeq_type_from_name(type_name);
    char err[512], rel[256];
    gguf_file *src = gguf_open(test_shared_path("models/tiny-a/tiny-a-f16.gguf"), err, sizeof err);
    REQUIREF(src != NULL, "%s", err);
    const char *dat = test_shared_path("models/tiny-a/imatrix.dat");
    for (int k = 0; k < 2; k++) {
        int64_t ti = gguf_find_tensor(src, names[k]);
        REQUIREF(ti >= 0, "tiny-a-f16.gguf: no %s", names[k]);
        const gguf_tensor *t = &src->tensors[ti];
        const int ncols = (int)t->ne[0], nrows = (int)(t->ne[1] * t->ne[2] * t->ne[3]);
        REQUIRE(ncols == 256 && nrows == 256);
        const int64_t n = (int64_t)nrows * ncols;
        float *x = malloc(n * sizeof(float)), *y = malloc(n * sizeof(float));
        REQUIRE(x && y);
        REQUIRE(moeq_dequantize((int)t->type, t->data, x, n) == 0);

        int nval = 0;
        float *imat = dat_entry(dat, names[k], &nval);
        REQUIREF(imat != NULL && nval == ncols, "imatrix.dat: %s has %d values", names[k], nval);

        snprintf(rel, sizeof rel, "testvectors/dequant/%s__%s.f32", type_name, names[k]);
        size_t rn = 0;
        float *yref = test_read_file(test_shared_path(rel), &rn);
        REQUIREF(yref != NULL && rn == (size_t)n * sizeof(float), "%s: %zu bytes", rel, rn);

        roundtrip_qp(type, x, y, nrows, ncols, imat, qp);
        double ours = wrmse(x, y, imat, nrows, ncols), ref = wrmse(x, yref, imat, nrows, ncols);
        printf("  %-8s %-26s imatrix-weighted RMSE ours %.6f ref %.6f (%.3f)\n",
               type_name, names[k], ours, ref, ours / ref);
        CHECKF(ours <= bound * ref, "%s %s: weighted RMSE %.6f vs reference %.6f (bound %.3fx)",
               type_name, names[k], ours, ref, bound);
        free(x); free(y); free(imat); free(yref);
    }
    gguf_close(src);
}

TEST(iq_vs_reference_iq2_xxs) { vs_reference("IQ2_XXS"); }
TEST(iq_vs_reference_iq2_xs)  { vs_reference("IQ2_XS"); }
TEST(iq_vs_reference_iq2_s)   { vs_reference("IQ2_S"); }
TEST(iq_vs_reference_iq3_xxs) { vs_reference("IQ3_XXS"); }
TEST(iq_vs_reference_iq3_s)   { vs_reference("IQ3_S"); }

/*
 * With --min-error (no unbiasing rescale) the search alone is measured:
 * below the reference's weighted RMSE for every i-quant, on both tensors.
 */
TEST(iq_vs_reference_min_error)
{
    static const char *types[] = { "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S" };
    const struct moeq_quant_params min_error = { .fit = MOEQ_FIT_MIN_ERROR };
    for (int i = 0; i < 5; i++) vs_reference_bound(types[i], 0.985, &min_error);
}
