/*
 * Quantizers of quants_k.c: round-trip error on structured random data,
 * importance weights paying off, re-quantization stability, thread safety,
 * degenerate rows, and (with ../shared) the imatrix-weighted error against
 * the reference quantizer's own blocks for two trained tiny-a tensors.
 */
#include "test.h"
#include "quant/quants.h"
#include "quant/quants_blocks.h"
#include "engine/pool.h"

#include <stdarg.h>
#include <stdint.h>

/* ------------------------------------------------------------ test data */

static uint64_t rng_state;
static uint32_t rng_u32(void)
{
    rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (uint32_t)(rng_state >> 33);
}
static float rng_unif(void) { return ((float)rng_u32() + 0.5f) / 4294967296.0f * 2.0f; }
static float rng_gauss(void)
{
    float u = rng_unif() * 0.5f, v = rng_unif() * 0.5f;
    return sqrtf(-2 * logf(u)) * cosf(6.2831853f * v);
}

/*
 * Rows like trained weights: Gaussian bulk with a per-row scale spread
 * over two decades, a heavier tail, and a few outlier columns (the columns
 * activations also emphasise). The imatrix spans three decades and is
 * largest on those columns.
 */
/* Whether MOEQ_KQ_VERBOSE asks for the measured errors on stderr. */
static int kq_verbose(void) { return getenv("MOEQ_KQ_VERBOSE") != NULL; }

/* One line of measurements on stderr when kq_verbose(). */
static void kq_note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void kq_note(const char *fmt, ...)
{
    if (!kq_verbose()) return;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
}

static void make_data(float *x, float *imat, int nrows, int n, uint64_t seed)
{
    rng_state = seed;
    for (int r = 0; r < nrows; r++) {
        float rs = expf(1.2f * rng_gauss()) * 0.02f;
        for (int j = 0; j < n; j++) {
            float v = rng_gauss();
            if (rng_u32() % 16 == 0) v *= 3;
            if (j % 61 == 7) v *= 8;           /* outlier columns */
            x[(size_t)r * n + j] = rs * v;
        }
    }
    for (int j = 0; j < n; j++) {
        float v = expf(1.5f * rng_gauss());
        if (j % 61 == 7) v *= 20;
        imat[j] = v;
    }
}

/* RMSE of y against x, weighted by w (NULL: unweighted), over nrows rows. */
static double wrmse(const float *x, const float *y, const float *w, int nrows, int n)
{
    double num = 0, den = 0;
    for (int r = 0; r < nrows; r++)
        for (int j = 0; j < n; j++) {
            double d = (double)x[(size_t)r * n + j] - y[(size_t)r * n + j];
            double wj = w ? w[j] : 1;
            num += wj * d * d;
            den += wj;
        }
    return sqrt(num / den);
}

static const int kq_types[] = {
    MOEQ_TYPE_F16, MOEQ_TYPE_BF16, MOEQ_TYPE_Q4_0, MOEQ_TYPE_Q8_0, MOEQ_TYPE_Q2_K,
    MOEQ_TYPE_Q3_K, MOEQ_TYPE_Q4_K, MOEQ_TYPE_Q5_K, MOEQ_TYPE_Q6_K, MOEQ_TYPE_IQ4_NL,
    MOEQ_TYPE_IQ4_XS,
};
#define N_KQ (int)(sizeof kq_types / sizeof kq_types[0])

/* Quantize and dequantize rows; returns the quantized bytes (malloc'd). */
static void *roundtrip(int type, const float *x, float *y, int nrows, int n, const float *imat)
{
    const struct moeq_type_traits *t = moeq_type_traits(type);
    REQUIREF(t && t->quantize && t->to_float, "%s: no quantizer or dequantizer", moeq_type_name(type));
    size_t rs = moeq_row_size(type, n);
    void *q = malloc(rs * nrows);
    REQUIRE(q);
    size_t got = t->quantize(x, q, nrows, n, imat, NULL);
    CHECKF(got == rs * nrows, "%s: wrote %zu bytes, want %zu", t->name, got, rs * nrows);
    t->to_float(q, y, (int64_t)nrows * n);
    return q;
}

/* x through type (quantized with importance qw) and back into y; returns
 * the error wrmse(x, y) weighted by w. */
static double roundtrip_wrmse(int type, const float *x, float *y, int nrows, int n, const float *qw,
                              const float *w)
{
    free(roundtrip(type, x, y, nrows, n, qw));
    return wrmse(x, y, w, nrows, n);
}

/* ------------------------------------------------------------------ tests */

/*
 * Relative RMSE (error RMS over signal RMS; weighted by the importance
 * vector when one is given) on the structured data. The limits sit about 5%
 * above what the quantizers measure (the signal's own outliers dominate
 * the unweighted figure), so a broken scale search fails them.
 */
TEST(kquant_roundtrip_error)
{
    enum { R = 32, N = 512 };
    static float x[R * N], y[R * N], imat[N];
    make_data(x, imat, R, N, 1234);
    double rms = wrmse(x, (float[R * N]){0}, NULL, R, N);
    static const struct { int type; double plain, weighted; } lim[] = {
        {MOEQ_TYPE_F16,    0.00023, 0.00024},
        {MOEQ_TYPE_BF16,   0.00175, 0.00172},
        {MOEQ_TYPE_Q8_0,   0.0094,  0.0039},
        {MOEQ_TYPE_Q6_K,   0.0284,  0.0100},
        {MOEQ_TYPE_Q5_K,   0.0491,  0.0173},
        {MOEQ_TYPE_Q4_K,   0.0986,  0.0344},
        {MOEQ_TYPE_Q4_0,   0.147,   0.0597},
        {MOEQ_TYPE_IQ4_NL, 0.119,   0.0442},
        {MOEQ_TYPE_IQ4_XS, 0.121,   0.0457},
        {MOEQ_TYPE_Q3_K,   0.235,   0.0821},
        {MOEQ_TYPE_Q2_K,   0.311,   0.1019},
    };
    for (size_t k = 0; k < sizeof lim / sizeof lim[0]; k++) {
        double e_plain = roundtrip_wrmse(lim[k].type, x, y, R, N, NULL, NULL) / rms;
        double e_w = roundtrip_wrmse(lim[k].type, x, y, R, N, imat, imat) / wrmse(x, (float[R * N]){0}, imat, R, N);
        kq_note("%-7s plain %.5f weighted %.5f\n", moeq_type_name(lim[k].type), e_plain, e_w);
        CHECKF(e_plain <= lim[k].plain, "%s: relative RMSE %.5f > %.5f",
               moeq_type_name(lim[k].type), e_plain, lim[k].plain);
        CHECKF(e_w <= lim[k].weighted, "%s: relative weighted RMSE %.5f > %.5f",
               moeq_type_name(lim[k].type), e_w, lim[k].weighted);
        CHECK(isfinite(e_plain) && isfinite(e_w));
    }
}

/* With an importance vector the error it weighs must not be worse than
 * quantizing without it (it should be clearly better below 6 bits). */
TEST(kquant_imatrix_helps)
{
    enum { R = 32, N = 512 };
    static float x[R * N], y[R * N], imat[N];
    make_data(x, imat, R, N, 99);
    for (int k = 0; k < N_KQ; k++) {
        int type = kq_types[k];
        double e0 = roundtrip_wrmse(type, x, y, R, N, NULL, imat), e1 = roundtrip_wrmse(type, x, y, R, N, imat, imat);
        kq_note("%-7s no-imatrix %.4g imatrix %.4g (%.3f)\n", moeq_type_name(type), e0, e1, e1 / e0);
        CHECKF(e1 <= e0 * 1.0001, "%s: weighted RMSE with imatrix %.5g > without %.5g",
               moeq_type_name(type), e1, e0);
        if (type != MOEQ_TYPE_F16 && type != MOEQ_TYPE_BF16 && type != MOEQ_TYPE_Q8_0 &&
            type != MOEQ_TYPE_Q6_K)
            CHECKF(e1 <= e0 * 0.97, "%s: imatrix gains too little (%.5g vs %.5g)",
                   moeq_type_name(type), e1, e0);
    }
}

/*
 * Quantize -> dequantize -> quantize again: the second decode must stay
 * next to the first (the blocks' values are representable, so a sane search
 * lands on or beside them), and for F16/BF16 the bytes repeat exactly.
 */
TEST(kquant_requantize_stable)
{
    enum { R = 16, N = 512 };
    static float x[R * N], y1[R * N], y2[R * N], imat[N];
    make_data(x, imat, R, N, 7);
    for (int k = 0; k < N_KQ; k++) {
        int type = kq_types[k];
        for (int wi = 0; wi < 2; wi++) {
            const float *w = wi ? imat : NULL;
            void *q1 = roundtrip(type, x, y1, R, N, w);
            void *q2 = roundtrip(type, y1, y2, R, N, w);
            double e1 = wrmse(x, y1, NULL, R, N), e12 = wrmse(y1, y2, NULL, R, N);
            kq_note("%-7s %s first %.4g drift %.4g\n", moeq_type_name(type),
                    wi ? "imat" : "    ", e1, e12);
            CHECKF(e12 <= 0.35 * e1 + 1e-12, "%s%s: re-quantization drifts %.4g (first error %.4g)",
                   moeq_type_name(type), wi ? " +imatrix" : "", e12, e1);
            if (type == MOEQ_TYPE_F16 || type == MOEQ_TYPE_BF16)
                CHECKF(memcmp(q1, q2, moeq_row_size(type, N) * R) == 0,
                       "%s: re-quantization changed bytes", moeq_type_name(type));
            free(q1);
            free(q2);
        }
    }
}

/* Zero rows, constant rows, tiny and huge magnitudes, an all-zero importance
 * vector: finite output, zeros stay zero. */
TEST(kquant_degenerate_rows)
{
    enum { N = 256 };
    static float x[4 * N], y[4 * N], zimat[N];
    for (int j = 0; j < N; j++) {
        x[j] = 0;
        x[N + j] = 0.37f;
        x[2 * N + j] = (j % 3 ? 1e-9f : -2e-9f);
        x[3 * N + j] = (j % 5 ? 3e4f : -6e4f) * (j % 2 ? 1 : 0.25f);
    }
    for (int k = 0; k < N_KQ; k++) {
        int type = kq_types[k];
        for (int wi = 0; wi < 2; wi++) {
            free(roundtrip(type, x, y, 4, N, wi ? zimat : NULL));
            for (int j = 0; j < 4 * N; j++)
                REQUIREF(isfinite(y[j]), "%s: non-finite output at %d", moeq_type_name(type), j);
            for (int j = 0; j < N; j++)
                REQUIREF(y[j] == 0, "%s: zero row decodes to %g", moeq_type_name(type), y[j]);
            double e = wrmse(x + N, y + N, NULL, 1, N);
            CHECKF(e <= 0.37 * 0.02, "%s: constant row error %g", moeq_type_name(type), e);
            e = wrmse(x + 3 * N, y + 3 * N, NULL, 1, N);
            CHECKF(e <= 6e4 * 0.2, "%s: large row error %g", moeq_type_name(type), e);
        }
    }
}

/* The quantizers are pure: rows quantized on many threads equal one pass. */
struct par_ctx { int type; const float *x; uint8_t *q; int n; const float *imat; };
static void par_rows(void *vctx, int64_t b, int64_t e, int tid)
{
    (void)tid;
    struct par_ctx *c = vctx;
    size_t rs = moeq_row_size(c->type, c->n);
    for (int64_t r = b; r < e; r++)
        moeq_type_traits(c->type)->quantize(c->x + r * c->n, c->q + r * rs, 1, c->n, c->imat, NULL);
}

TEST(kquant_threads_match_serial)
{
    enum { R = 24, N = 512 };
    static float x[R * N], y[R * N], imat[N];
    make_data(x, imat, R, N, 5);
    moeq_pool *pool = moeq_pool_new(4);
    for (int k = 0; k < N_KQ; k++) {
        int type = kq_types[k];
        void *q1 = roundtrip(type, x, y, R, N, imat);
        uint8_t *q2 = calloc(R, moeq_row_size(type, N));
        struct par_ctx c = { type, x, q2, N, imat };
        moeq_pool_for(pool, R, 1, par_rows, &c);
        CHECKF(memcmp(q1, q2, moeq_row_size(type, N) * R) == 0, "%s: threaded rows differ",
               moeq_type_name(type));
        free(q1);
        free(q2);
    }
    moeq_pool_free(pool);
}

/* ------------------------------------------------- reference comparison */

/*
 * Legacy llama.cpp imatrix (.dat): int32 entry count; per entry int32 name
 * length, the name, int32 ncall, int32 nval, nval float sums (divided by
 * ncall gives the mean squared activation); then the chunk count and the
 * dataset name. Returns the averaged vector for name (malloc'd) or NULL.
 */
static float *imatrix_lookup(const uint8_t *buf, size_t len, const char *name, int *nval_out)
{
    size_t off = 0;
    int32_t n_entries;
#define TAKE(dst, sz) do { if (off + (sz) > len) return NULL; memcpy((dst), buf + off, (sz)); off += (sz); } while (0)
    TAKE(&n_entries, 4);
    for (int32_t e = 0; e < n_entries; e++) {
        int32_t nl, ncall, nval;
        char nm[512];
        TAKE(&nl, 4);
        if (nl < 0 || nl >= (int32_t)sizeof nm) return NULL;
        TAKE(nm, (size_t)nl);
        nm[nl] = 0;
        TAKE(&ncall, 4);
        TAKE(&nval, 4);
        if (nval < 0 || off + (size_t)nval * 4 > len) return NULL;
        if (strcmp(nm, name) == 0) {
            float *v = malloc((size_t)nval * 4);
            memcpy(v, buf + off, (size_t)nval * 4);
            for (int i = 0; i < nval; i++) v[i] = ncall > 0 ? v[i] / ncall : 1;
            *nval_out = nval;
            return v;
        }
        off += (size_t)nval * 4;
    }
#undef TAKE
    return NULL;
}

/*
 * For each type: quantize the source (the F16 test vector is the f16
 * model's tensor) with the reference imatrix and compare our
 * imatrix-weighted RMSE with that of the reference quantizer's blocks
 * (TYPE__NAME.f32, the reference's own decode). Ours must not be worse than
 * the reference by more than 0.2% (it measures 0.5-5% better; BF16 equal).
 */
TEST(kquant_vs_reference)
{
    static const char *tensors[] = { "blk.0.attn_q.weight", "blk.1.attn_output.weight" };
    size_t imlen;
    uint8_t *im = test_read_file(test_shared_path("models/tiny-a/imatrix.dat"), &imlen);
    REQUIRE(im);
    const int verbose = kq_verbose();
    for (int t = 0; t < 2; t++) {
        char rel[256];
        snprintf(rel, sizeof rel, "testvectors/dequant/F16__%s.f32", tensors[t]);
        size_t nbytes;
        float *x = test_read_file(test_shared_path(rel), &nbytes);
        REQUIRE(x);
        int n = 0;
        float *imat = imatrix_lookup(im, imlen, tensors[t], &n);
        REQUIREF(imat && n > 0, "no imatrix entry for %s", tensors[t]);
        int nrows = (int)(nbytes / 4 / (size_t)n);
        REQUIRE((size_t)nrows * n * 4 == nbytes);
        float *y = malloc(nbytes);
        for (int k = 0; k < N_KQ; k++) {
            int type = kq_types[k];
            snprintf(rel, sizeof rel, "testvectors/dequant/%s__%s.f32", moeq_type_name(type), tensors[t]);
            size_t rb;
            char path[4096];
            snprintf(path, sizeof path, "%s/%s", test_shared_dir(), rel);
            float *ref = test_read_file(path, &rb);
            if (!ref) continue;
            REQUIRE(rb == nbytes);
            double ours = roundtrip_wrmse(type, x, y, nrows, n, imat, imat), theirs = wrmse(x, ref, imat, nrows, n);
            if (verbose) {
                size_t same = 0;
                for (size_t i = 0; i < (size_t)nrows * n; i++) same += y[i] == ref[i];
                fprintf(stderr, "%-26s %-7s ours %.6g ref %.6g ratio %.4f  (unweighted %.4f, %.2f%% values equal)\n",
                        tensors[t], moeq_type_name(type), ours, theirs, ours / theirs,
                        wrmse(x, y, NULL, nrows, n) / wrmse(x, ref, NULL, nrows, n),
                        100.0 * same / ((double)nrows * n));
            }
            CHECKF(ours <= theirs * 1.002 + 1e-12, "%s %s: weighted RMSE %.6g vs reference %.6g",
                   tensors[t], moeq_type_name(type), ours, theirs);
            free(ref);
        }
        free(y);
        free(x);
        free(imat);
    }
    free(im);
}
