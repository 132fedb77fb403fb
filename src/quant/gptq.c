/*
 * gptq.c: GPTQ inside the ggml block formats (see gptq.h): the damped
 * Cholesky factorisations, the block-by-block quantize-and-propagate loop,
 * and the output error used to check it.
 *
 * Linear algebra in double, on dense ncols x ncols matrices (ncols is a
 * layer's input width: a few thousand at most), O(ncols^3) once per tensor
 * for the factorisations and O(nrows * ncols^2) for the propagation.
 */
#include "quant/gptq.h"
#include "util/util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* In-place lower Cholesky factor of the n x n symmetric a (row-major; the
 * upper triangle is zeroed). -1 when a is not positive definite. */
static int cholesky(double *a, int64_t n)
{
    for (int64_t j = 0; j < n; j++) {
        double d = a[j * n + j];
        for (int64_t k = 0; k < j; k++) d -= a[j * n + k] * a[j * n + k];
        if (!(d > 0)) return -1;
        d = sqrt(d);
        a[j * n + j] = d;
        for (int64_t i = j + 1; i < n; i++) {
            double s = a[i * n + j];
            for (int64_t k = 0; k < j; k++) s -= a[i * n + k] * a[j * n + k];
            a[i * n + j] = s / d;
        }
        for (int64_t k = j + 1; k < n; k++) a[j * n + k] = 0;
    }
    return 0;
}

/* The inverse of the lower-triangular l, in place (still lower). */
static void invert_lower(double *l, int64_t n)
{
    for (int64_t j = 0; j < n; j++) {
        l[j * n + j] = 1.0 / l[j * n + j];
        for (int64_t i = j + 1; i < n; i++) {
            double s = 0;
            for (int64_t k = j; k < i; k++) s += l[i * n + k] * l[k * n + j];
            l[i * n + j] = -s / l[i * n + i];
        }
    }
}

/*
 * u = the upper Cholesky factor of H^-1 (H^-1 = u^T u), H damped: from the
 * lower factor L of H, H^-1 = L^-T L^-1; its lower factor M gives u = M^T.
 * -1 when H stays indefinite after the retries.
 */
static int inverse_factor(const double *H, const int *dead, int64_t n, double damp, double *u)
{
    double mean = 0;
    for (int64_t i = 0; i < n; i++) mean += dead[i] ? 0 : H[i * n + i];
    mean = mean > 0 ? mean / (double)n : 1.0;
    double *t = malloc((size_t)n * (size_t)n * sizeof *t);
    if (!t) return -1;
    int rc = -1;
    for (int tries = 0; tries < 6 && rc != 0; tries++, damp = damp > 0 ? damp * 10 : 1e-4) {
        for (int64_t i = 0; i < n; i++)
            for (int64_t j = 0; j < n; j++)
                u[i * n + j] = dead[i] || dead[j] ? (i == j) : H[i * n + j];
        for (int64_t i = 0; i < n; i++) u[i * n + i] += damp * mean;
        if (cholesky(u, n) != 0) continue;
        invert_lower(u, n);
        /* t = L^-T L^-1 (symmetric): t[i][j] = sum_k linv[k][i] linv[k][j], k >= max(i, j) */
        for (int64_t i = 0; i < n; i++)
            for (int64_t j = 0; j <= i; j++) {
                double s = 0;
                for (int64_t k = i; k < n; k++) s += u[k * n + i] * u[k * n + j];
                t[i * n + j] = t[j * n + i] = s;
            }
        if (cholesky(t, n) != 0) continue;
        for (int64_t i = 0; i < n; i++)
            for (int64_t j = 0; j < n; j++) u[i * n + j] = j >= i ? t[j * n + i] : 0;
        rc = 0;
    }
    free(t);
    return rc;
}

struct moeq_gptq {
    int64_t n;
    double *u;     /* upper Cholesky factor of the damped H^-1 */
    float  *imp;   /* H's diagonal: the block quantizers' importance */
    int    *dead;  /* columns never active */
};

void moeq_gptq_free(moeq_gptq *g)
{
    if (!g) return;
    free(g->u); free(g->imp); free(g->dead);
    free(g);
}

moeq_gptq *moeq_gptq_prepare(const double *H, int64_t n, double damp, char *err, size_t errlen)
{
    moeq_gptq *g = calloc(1, sizeof *g);
    if (g) {
        g->n = n;
        g->u = malloc((size_t)n * (size_t)n * sizeof *g->u);
        g->imp = malloc((size_t)n * sizeof *g->imp);
        g->dead = calloc((size_t)n, sizeof *g->dead);
    }
    if (!g || !g->u || !g->imp || !g->dead) {
        moeq_gptq_free(g);
        moeq_set_err(err, errlen, "gptq: out of memory");
        return NULL;
    }
    for (int64_t i = 0; i < n; i++) {
        g->dead[i] = !(H[i * n + i] > 0);
        g->imp[i] = g->dead[i] ? 0.0f : (float)H[i * n + i];
    }
    if (inverse_factor(H, g->dead, n, damp, g->u) != 0) {
        moeq_gptq_free(g);
        moeq_set_err(err, errlen, "gptq: the Hessian is not positive definite even with damping");
        return NULL;
    }
    return g;
}

/* The type's traits when it can be rounded here at n columns; NULL with
 * err set otherwise. */
static const struct moeq_type_traits *gptq_traits(int type, int64_t n, char *err, size_t errlen)
{
    const struct moeq_type_traits *tt = moeq_type_traits(type);
    if (!tt || !tt->quantize || !tt->to_float) {
        moeq_set_err(err, errlen, "gptq: moeq cannot quantize to %s", moeq_type_name(type));
        return NULL;
    }
    if (n <= 0 || n % tt->blck_size) {
        moeq_set_err(err, errlen, "gptq: %lld columns is not a multiple of %s's block of %d", (long long)n,
                     tt->name, tt->blck_size);
        return NULL;
    }
    return tt;
}

/*
 * Columns [j0, j0 + n) of the block [c0, c0 + B) are fixed at q: each
 * column's error, scaled by U's diagonal, moves the block's later targets
 * x[j + 1 .. B) (x indexed from the block's start). The scaled errors go to
 * e[j] when e is non-NULL (0 for a dead column).
 */
static void push_columns(const moeq_gptq *g, int64_t c0, int64_t B, int j0, int n, const float *q, float *x,
                         double *e)
{
    const int64_t N = g->n;
    for (int j = j0; j < j0 + n; j++) {
        const int64_t c = c0 + j;
        double ej = 0;
        if (!g->dead[c]) {
            const double *uc = g->u + c * N;
            ej = ((double)x[j] - q[j - j0]) / uc[c];
            for (int64_t k = j + 1; k < B; k++) x[k] -= (float)(ej * uc[c0 + k]);
        }
        if (e) e[j] = ej;
    }
}

/* The feedback a quantizer calls inside the block at c0. */
struct fb_ctx { const moeq_gptq *g; int64_t c0, B; };

static void feedback(void *ctx, int j0, int n, const float *q, float *x)
{
    const struct fb_ctx *f = ctx;
    push_columns(f->g, f->c0, f->B, j0, n, q, x, NULL);
}

int moeq_gptq_rows(const moeq_gptq *g, int type, const float *W, int64_t nrows, void *dst,
                   const struct moeq_quant_params *qp, char *err, size_t errlen)
{
    const int64_t n = g->n;
    const struct moeq_type_traits *tt = gptq_traits(type, n, err, errlen);
    if (!tt) return -1;
    const int64_t B = tt->blck_size, nb = n / B;
    const size_t row_bytes = moeq_row_size(type, n);
    const int passes = qp && qp->gptq_passes > 0 ? qp->gptq_passes : MOEQ_GPTQ_PASSES;
    float *w = malloc((size_t)n * sizeof *w), *q = malloc((size_t)B * sizeof *q);
    float *xt = malloc((size_t)B * sizeof *xt), *fit = malloc((size_t)B * sizeof *fit);
    double *e = malloc((size_t)B * sizeof *e), *eb = malloc((size_t)B * sizeof *eb);
    uint8_t *cand = malloc(tt->type_size);
    int *has_imp = malloc((size_t)nb * sizeof *has_imp);
    if (!w || !q || !xt || !fit || !e || !eb || !cand || !has_imp) {
        free(w); free(q); free(xt); free(fit); free(e); free(eb); free(cand); free(has_imp);
        moeq_set_err(err, errlen, "gptq: out of memory");
        return -1;
    }
    for (int64_t ib = 0; ib < nb; ib++) {
        has_imp[ib] = 0;
        for (int64_t j = 0; j < B; j++) has_imp[ib] |= g->imp[ib * B + j] > 0;
    }
    /* the quantizer picks its codes group by group with this feedback
     * (where it supports it); the propagation below then uses the values
     * that decode */
    struct fb_ctx fc = { g, 0, B };
    struct moeq_quant_feedback fb = { feedback, &fc, NULL };
    struct moeq_quant_params p = { 0 };
    if (qp) p = *qp;
    p.fb = &fb;
    /* rows are independent: one at a time, block by block */
    for (int64_t r = 0; r < nrows; r++) {
        memcpy(w, W + r * n, (size_t)n * sizeof *w);
        for (int64_t ib = 0; ib < nb; ib++) {
            const int64_t b = ib * B;
            uint8_t *blk = (uint8_t *)dst + (size_t)r * row_bytes + (size_t)ib * tt->type_size;
            fc.c0 = b;
            /* try k > 0 fits the scales to the targets try k - 1's
             * feedback left; the block with the lowest output error
             * (the sum of the scaled errors' squares) is kept */
            double best = INFINITY;
            fb.fit = NULL;
            for (int pass = 0; pass < passes; pass++) {
                tt->quantize(w + b, cand, 1, B, has_imp[ib] ? g->imp + b : NULL, &p);
                tt->to_float(cand, q, B);
                memcpy(xt, w + b, (size_t)B * sizeof *xt);
                push_columns(g, b, B, 0, (int)B, q, xt, e);
                double err2 = 0;
                for (int64_t j = 0; j < B; j++) err2 += e[j] * e[j];
                if (err2 < best || pass == 0) {
                    best = err2;
                    memcpy(blk, cand, tt->type_size);
                    memcpy(eb, e, (size_t)B * sizeof *eb);
                }
                /* the same targets again would give the same try (the
                 * 32-weight formats take no feedback: always) */
                if (pass > 0 && !memcmp(fit, xt, (size_t)B * sizeof *fit)) break;
                memcpy(fit, xt, (size_t)B * sizeof *fit);
                fb.fit = fit;
            }
            /* later blocks: w[b+B:] -= e U[b:b+B, b+B:] */
            for (int64_t j = 0; j < B && b + B < n; j++) {
                if (eb[j] == 0) continue;
                const double *uc = g->u + (b + j) * n;
                for (int64_t c = b + B; c < n; c++) w[c] -= (float)(eb[j] * uc[c]);
            }
        }
    }
    free(w); free(q); free(xt); free(fit); free(e); free(eb); free(cand); free(has_imp);
    return 0;
}

int moeq_gptq_quantize(int type, const float *W, int64_t nrows, int64_t ncols, const double *H, double damp,
                       void *dst, const struct moeq_quant_params *qp, char *err, size_t errlen)
{
    /* the shape is checked before the O(n^3) factorisation */
    if (!gptq_traits(type, ncols, err, errlen)) return -1;
    moeq_gptq *g = moeq_gptq_prepare(H, ncols, damp, err, errlen);
    if (!g) return -1;
    int rc = moeq_gptq_rows(g, type, W, nrows, dst, qp, err, errlen);
    moeq_gptq_free(g);
    return rc;
}

double moeq_gptq_output_error(int type, const float *W, const void *q, int64_t nrows, int64_t ncols,
                              const double *H)
{
    const size_t row_bytes = moeq_row_size(type, ncols);
    float *d = malloc((size_t)ncols * sizeof *d);
    if (!d) return -1;
    double total = 0;
    for (int64_t r = 0; r < nrows; r++) {
        if (moeq_dequantize(type, (const uint8_t *)q + (size_t)r * row_bytes, d, ncols) != 0) { free(d); return -1; }
        for (int64_t i = 0; i < ncols; i++) d[i] = W[r * ncols + i] - d[i];
        for (int64_t i = 0; i < ncols; i++) {
            double s = 0;
            for (int64_t j = 0; j < ncols; j++) s += H[i * ncols + j] * d[j];
            total += d[i] * s;
        }
    }
    free(d);
    return total;
}
