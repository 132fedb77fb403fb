/*
 * alloc_kld.c: the allocator's measured sensitivity factors (see alloc.h).
 * It runs the source model in the engine over calibration chunks for the
 * base log-probabilities, then swaps one unit at a time into the running
 * engine (the unit quantized in memory by quantize.h, computed through
 * moeq_engine_override_weight, so no model file is written), measures the
 * mean KL-divergence change, and turns it into the unit's factor. It also
 * owns Spearman's rank correlation and the report of how well predicted
 * damage ranks the measured changes.
 */
#include "quant/alloc.h"

#include "engine/engine.h"
#include "engine/pool.h"
#include "quant/quantize.h"
#include "quant/quants.h"
#include "quant/tensor_groups.h"
#include "util/logprobs.h"
#include "util/util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* reference and check points of the measurement, bits per weight */
#define REF_BPW   2.5
#define CHECK_BPW 3.5
/* logits asked of the engine at once: the whole scored half of a chunk
 * when it fits this many floats (256 MiB), else fewer rows */
#define LOGITS_FLOATS ((size_t)64 << 20)

static int nearest_cand(const struct moeq_alloc_unit *u, double bpw)
{
    int best = 0;
    double bd = INFINITY;
    for (int c = 0; c < u->n_cand; c++) {
        double d = fabs(8.0 * (double)u->bytes[c] / (double)u->nelem - bpw);
        if (d < bd - 1e-12) { bd = d; best = c; }
    }
    return best;
}

static int cand_of_type(const struct moeq_alloc_unit *u, int type)
{
    for (int c = 0; c < u->n_cand; c++)
        if (u->type[c] == type) return c;
    return -1;
}

struct kctx {
    moeq_engine *e;
    moeq_session *s;
    const int32_t *tok;
    int n_chunks, n_ctx, n_vocab;
    uint16_t *base;   /* [n_chunks][n_scored] encoded rows */
    float *logits;    /* [piece][n_vocab] */
    int piece;
};

/* Every chunk from an empty cache; the scored rows (the second half, as
 * perplexity) encoded into base, or compared with it: *mean the mean KLD. */
static int run_chunks(struct kctx *k, int encode, double *mean, char *err, size_t errlen)
{
    const int f0 = k->n_ctx / 2, n_sc = k->n_ctx - 1 - f0, rl = moeq_logprobs_row_len(k->n_vocab);
    double sum = 0;
    long cnt = 0;
    for (int c = 0; c < k->n_chunks; c++) {
        const int32_t *ct = k->tok + (size_t)c * (size_t)k->n_ctx;
        moeq_session_sync(k->s, NULL, 0);
        if (moeq_session_eval(k->s, ct, f0, NULL, err, errlen) != 0) return -1;
        for (int b = f0; b < k->n_ctx - 1; b += k->piece) {
            const int nb = k->n_ctx - 1 - b < k->piece ? k->n_ctx - 1 - b : k->piece;
            if (moeq_session_eval(k->s, ct + b, nb, k->logits, err, errlen) != 0) return -1;
            for (int j = 0; j < nb; j++) {
                const float *row = k->logits + (size_t)j * (size_t)k->n_vocab;
                uint16_t *bp = k->base + ((size_t)c * (size_t)n_sc + (size_t)(b + j - f0)) * (size_t)rl;
                if (encode) {
                    moeq_logprobs_encode(k->n_vocab, row, bp, ct[b + j + 1]);
                } else {
                    sum += moeq_logprobs_kld(k->n_vocab, row, moeq_logsumexp(row, k->n_vocab, NULL), bp, NULL);
                    cnt++;
                }
            }
        }
    }
    if (mean) *mean = cnt ? sum / (double)cnt : 0;
    return 0;
}

/* The unit alone at type: mean KLD against the base. */
static int measure_unit(struct kctx *k, moeq_pool *pool, const gguf_file *f, const struct moeq_alloc_unit *u,
                        int type, const struct moeq_imatrix *im, double *kld, char *err, size_t errlen)
{
    void *buf[2] = { NULL, NULL };
    char names[2][128];
    int n_sw = 0, rc = -1;
    const struct moeq_quant_params qp = { .fit = MOEQ_FIT_UNBIASED };   /* quantize's default */
    for (int j = 0; j < u->n_tensors; j++) {
        const gguf_tensor *t = &f->tensors[u->tensor[j]];
        snprintf(names[j], sizeof names[j], "%.*s", (int)t->name.n, t->name.s);
        const int64_t ne0 = (int64_t)t->ne[0], n_mat = (int64_t)(t->ne[2] * t->ne[3]);
        int ok = 1;
        const size_t nb = (size_t)moeq_tensor_nbytes(type, t->ne[0], t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3], &ok);
        struct moeq_imatrix_entry *ie = im ? moeq_imatrix_find_weight(im, names[j]) : NULL;
        /* an entry of another shape is no data for this tensor */
        if (ie && !(ie->n_per_row == ne0 && ie->n_mat == n_mat) && !(ie->n_mat == 1 && ie->n_per_row == ne0 * n_mat))
            ie = NULL;
        if (!ok || !(buf[j] = malloc(nb ? nb : 1))) { moeq_set_err(err, errlen, "alloc: %s: out of memory", names[j]); goto out; }
        if (moeq_quantize_tensor_mem(t, type, ie, &qp, pool, buf[j], nb, err, errlen) != 0) goto out;
        if (moeq_engine_override_weight(k->e, names[j], type, buf[j], nb, err, errlen) != 0) goto out;
        n_sw++;
    }
    rc = run_chunks(k, 0, kld, err, errlen);
out:
    for (int j = 0; j < n_sw; j++) {
        char e2[256];
        if (moeq_engine_override_weight(k->e, names[j], 0, NULL, 0, e2, sizeof e2) != 0 && rc == 0) {
            moeq_set_err(err, errlen, "alloc: %s", e2);
            rc = -1;
        }
    }
    free(buf[0]);
    free(buf[1]);
    return rc;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* The factor of a measured unit: KLD per unit of predicted error at the
 * reference type; a change at or under the measurement's floor counts as
 * a tiny one, so the unit is cheap but not free. */
static int unit_factor(const struct moeq_alloc_unit *u, double *fac)
{
    if (!u->n_meas) return 0;
    int c = cand_of_type(u, u->meas_type[0]);
    if (c < 0 || !(u->err[c] > 0)) return 0;
    double kld = u->meas_kld[0] > 1e-9 ? u->meas_kld[0] : 1e-9;
    *fac = kld / u->err[c];
    return 1;
}

/* An unmeasured layer unit's factor: interpolated in log space over the
 * layer index between the nearest measured units of its group below and
 * above it (sensitivity drifts with depth, and the first layers are often
 * far more sensitive than the median), the nearest one where it has a
 * measured neighbour on one side only; 0 when its group has none. */
static double depth_factor(const struct moeq_alloc *a, const struct moeq_alloc_unit *u)
{
    int lo = -1, hi = -1;
    double flo = 0, fhi = 0, fac;
    for (int i = 0; i < a->n_units; i++) {
        const struct moeq_alloc_unit *v = &a->units[i];
        if (v->group != u->group || v->layer < 0 || !unit_factor(v, &fac)) continue;
        if (v->layer <= u->layer && (lo < 0 || v->layer > lo)) { lo = v->layer; flo = fac; }
        if (v->layer >= u->layer && (hi < 0 || v->layer < hi)) { hi = v->layer; fhi = fac; }
    }
    if (lo < 0 && hi < 0) return 0;
    if (lo < 0) return fhi;
    if (hi < 0 || hi == lo) return flo;
    const double t = (double)(u->layer - lo) / (double)(hi - lo);
    return exp((1 - t) * log(flo) + t * log(fhi));
}

void moeq_alloc_set_factors(struct moeq_alloc *a)
{
    double *all = malloc(((size_t)a->n_units + 1) * sizeof *all);
    if (!all) return;
    int n_all = 0;
    for (int k = 0; k < a->n_units; k++) {
        double fac;
        if (unit_factor(&a->units[k], &fac)) { a->units[k].sens = fac; all[n_all++] = fac; }
    }
    if (n_all) {
        const double med_all = median(all, n_all);
        for (int k = 0; k < a->n_units; k++) {
            struct moeq_alloc_unit *u = &a->units[k];
            double fac;
            if (unit_factor(u, &fac)) continue;
            fac = u->layer >= 0 ? depth_factor(a, u) : 0;
            u->sens = fac > 0 ? fac : med_all;
        }
    }
    free(all);
}

int moeq_alloc_measure_kld(struct moeq_alloc *a, const gguf_file *f, const struct moeq_alloc_kld_opts *o,
                           char *err, size_t errlen)
{
    const int n_ctx = o->n_ctx > 0 ? o->n_ctx : 512;
    int n_chunks = o->n_chunks > 0 ? o->n_chunks : 4;
    if (n_ctx < 8) { moeq_set_err(err, errlen, "alloc: --measure-kld needs chunks of at least 8 tokens"); return -1; }
    struct moeq_engine_params ep = { .model_path = o->model_path, .n_threads = o->n_threads, .n_ctx = n_ctx,
                                     .n_seq = 1, .n_batch = 512 };
    struct kctx k = { 0 };
    moeq_pool *pool = NULL;
    int32_t *tok = NULL;
    int *pick = NULL;
    int rc = -1;
    char e2[512];
    if (!(k.e = moeq_engine_open(&ep, e2, sizeof e2))) { moeq_set_err(err, errlen, "alloc: %s", e2); return -1; }
    const struct moeq_model_info *mi = moeq_engine_info(k.e);
    k.n_vocab = mi->n_vocab;
    int n_tok;
    if (!(tok = moeq_tokenize_text(k.e, o->text, o->text_len, 1, &n_tok, e2, sizeof e2))) {
        moeq_set_err(err, errlen, "alloc: %s: cannot tokenize the calibration text: %s", o->model_path, e2);
        goto out;
    }
    if (n_tok / n_ctx < n_chunks) {
        if (n_tok / n_ctx < 1) {
            moeq_set_err(err, errlen, "alloc: the calibration text has %d tokens, under one chunk of %d", n_tok, n_ctx);
            goto out;
        }
        if (o->log) fprintf(o->log, "moeq: kld: the calibration text holds %d chunks of %d tokens, not %d; using %d\n",
                            n_tok / n_ctx, n_ctx, n_chunks, n_tok / n_ctx);
        n_chunks = n_tok / n_ctx;
    }
    k.tok = tok;
    k.n_chunks = n_chunks;
    k.n_ctx = n_ctx;
    const size_t rows = (size_t)n_chunks * (size_t)(n_ctx - 1 - n_ctx / 2);
    k.base = malloc(rows * (size_t)moeq_logprobs_row_len(k.n_vocab) * sizeof *k.base);
    const int n_sc = n_ctx - 1 - n_ctx / 2;
    k.piece = LOGITS_FLOATS / (size_t)k.n_vocab < (size_t)n_sc ? (int)(LOGITS_FLOATS / (size_t)k.n_vocab) : n_sc;
    if (k.piece < 1) k.piece = 1;
    k.logits = malloc((size_t)k.piece * (size_t)k.n_vocab * sizeof *k.logits);
    k.s = moeq_session_new(k.e, e2, sizeof e2);
    pool = moeq_pool_new(o->n_threads);
    if (!k.base || !k.logits || !k.s || !pool) { moeq_set_err(err, errlen, "alloc: %s", k.s ? "out of memory" : e2); goto out; }
    /* which units: all, or token_embd and output (one of a kind, nothing
     * to interpolate from) and, per group, an even deterministic sample of
     * its layers from the first to the last (the group's share of the
     * rest), the others interpolated over depth */
    int n_meas = 0, n_layered = 0;
    pick = malloc(((size_t)a->n_units + 1) * sizeof *pick);
    if (!pick) { moeq_set_err(err, errlen, "alloc: out of memory"); goto out; }
    for (int i = 0; i < a->n_units; i++) {
        if (a->units[i].layer < 0) pick[n_meas++] = i;
        else n_layered++;
    }
    int want = o->max_units > 0 && o->max_units < a->n_units ? o->max_units - n_meas : n_layered;
    if (want < 1) want = 1;
    if (want > n_layered) want = n_layered;
    int n_in[MOEQ_GROUP_COUNT] = { 0 }, taken[MOEQ_GROUP_COUNT] = { 0 };
    for (int i = 0; i < a->n_units; i++)
        if (a->units[i].layer >= 0) n_in[a->units[i].group]++;
    for (int i = 0, cum = 0; i < a->n_units; i++) {
        const struct moeq_alloc_unit *u = &a->units[i];
        if (u->layer < 0 || taken[u->group]) continue;
        taken[u->group] = 1;   /* the groups in the order they first appear */
        const int n_g = n_in[u->group];
        /* its share of want, rounded so that the shares add up to want */
        const int m = (int)lround((double)want * (double)(cum + n_g) / (double)n_layered) -
                      (int)lround((double)want * (double)cum / (double)n_layered);
        cum += n_g;
        for (int j = i, seen = 0, next = 0; j < a->n_units && next < m; j++) {
            if (a->units[j].layer < 0 || a->units[j].group != u->group) continue;
            const int at = m == 1 ? (n_g - 1) / 2 : (int)lround((double)next * (double)(n_g - 1) / (double)(m - 1));
            if (seen++ == at) pick[n_meas++] = j, next++;
        }
    }
    const int per_unit = o->check ? 2 : 1;
    const double t0 = moeq_now_s();
    double floor_kld;
    if (run_chunks(&k, 1, NULL, err, errlen) != 0 || run_chunks(&k, 0, &floor_kld, err, errlen) != 0) goto out;
    const double t_pass = (moeq_now_s() - t0) / 2;
    if (o->log)
        fprintf(o->log, "moeq: kld: base over %d chunks of %d tokens (%.1fs a pass; floor %.3g); measuring %d of %d units, "
                "%d swap%s each, about %.0fs\n", n_chunks, n_ctx, t_pass, floor_kld, n_meas, a->n_units, per_unit,
                per_unit > 1 ? "s" : "", t_pass * n_meas * per_unit);
    for (int k0 = 0; k0 < a->n_units; k0++) a->units[k0].n_meas = 0;
    const double t1 = moeq_now_s();
    for (int i = 0; i < n_meas; i++) {
        struct moeq_alloc_unit *u = &a->units[pick[i]];
        for (int p = 0; p < per_unit; p++) {
            const int c = nearest_cand(u, p ? CHECK_BPW : REF_BPW);
            if (p && u->type[c] == u->meas_type[0]) break;   /* one candidate near both */
            double kld;
            if (measure_unit(&k, pool, f, u, u->type[c], o->im, &kld, err, errlen) != 0) goto out;
            u->meas_type[p] = u->type[c];
            u->meas_kld[p] = kld - floor_kld;   /* the change */
            u->n_meas = p + 1;
        }
        if (o->progress) {
            char item[256];
            int n = snprintf(item, sizeof item, "%s %s %.4e", u->name, moeq_type_name(u->meas_type[0]), u->meas_kld[0]);
            if (u->n_meas > 1 && n > 0 && (size_t)n < sizeof item)
                snprintf(item + n, sizeof item - (size_t)n, " %s %.4e", moeq_type_name(u->meas_type[1]), u->meas_kld[1]);
            const double el = moeq_now_s() - t1;
            struct moeq_progress pr = { "kld", item, i + 1, n_meas, el, el / (i + 1) * (n_meas - i - 1) };
            o->progress(o->progress_ud, &pr);
        }
    }
    moeq_alloc_set_factors(a);
    rc = 0;
out:
    free(pick);
    moeq_pool_free(pool);
    moeq_session_free(k.s);
    moeq_engine_close(k.e);
    free(k.base);
    free(k.logits);
    free(tok);
    return rc;
}

/* ----------------------------------------------------------- report */

static void ranks(const double *v, int n, double *r)
{
    int *idx = malloc((size_t)n * sizeof *idx);
    if (!idx) return;
    for (int i = 0; i < n; i++) idx[i] = i;
    /* insertion sort: n is a few hundred at most */
    for (int i = 1; i < n; i++) {
        int x = idx[i], j = i - 1;
        while (j >= 0 && v[idx[j]] > v[x]) { idx[j + 1] = idx[j]; j--; }
        idx[j + 1] = x;
    }
    for (int i = 0; i < n;) {
        int j = i;
        while (j + 1 < n && v[idx[j + 1]] == v[idx[i]]) j++;
        for (int t = i; t <= j; t++) r[idx[t]] = 0.5 * (i + j) + 1;
        i = j + 1;
    }
    free(idx);
}

double moeq_spearman(const double *x, const double *y, int n)
{
    if (n < 2) return 0;
    double *rx = malloc((size_t)n * sizeof *rx), *ry = malloc((size_t)n * sizeof *ry);
    double rho = 0;
    if (rx && ry) {
        ranks(x, n, rx);
        ranks(y, n, ry);
        double mx = 0, my = 0, sxy = 0, sxx = 0, syy = 0;
        for (int i = 0; i < n; i++) { mx += rx[i]; my += ry[i]; }
        mx /= n; my /= n;
        for (int i = 0; i < n; i++) {
            sxy += (rx[i] - mx) * (ry[i] - my);
            sxx += (rx[i] - mx) * (rx[i] - mx);
            syy += (ry[i] - my) * (ry[i] - my);
        }
        rho = sxx > 0 && syy > 0 ? sxy / sqrt(sxx * syy) : 0;
    }
    free(rx);
    free(ry);
    return rho;
}

int moeq_alloc_sensitivity_report(const struct moeq_alloc *a, FILE *out)
{
    const int n = a->n_units;
    double *raw[2], *pred[2], *meas[2];
    int cnt[2] = { 0, 0 };
    for (int p = 0; p < 2; p++) {
        raw[p] = malloc(((size_t)n + 1) * sizeof(double));
        pred[p] = malloc(((size_t)n + 1) * sizeof(double));
        meas[p] = malloc(((size_t)n + 1) * sizeof(double));
    }
    /* pooled over both measurements: damage across units and types */
    double *praw = malloc((2 * (size_t)n + 1) * sizeof(double)), *pmeas = malloc((2 * (size_t)n + 1) * sizeof(double));
    int np = 0, rc = -1;
    if (!raw[0] || !raw[1] || !pred[0] || !pred[1] || !meas[0] || !meas[1] || !praw || !pmeas) goto out;
    fprintf(out, "%-30s %-7s %11s %11s %11s | %-7s %11s %11s %11s\n", "unit", "ref", "raw err", "KLD change", "factor",
            "check", "raw err", "predicted", "KLD change");
    for (int k = 0; k < n; k++) {
        const struct moeq_alloc_unit *u = &a->units[k];
        if (!u->n_meas) continue;
        for (int p = 0; p < u->n_meas; p++) {
            int c = cand_of_type(u, u->meas_type[p]);
            if (c < 0) continue;
            raw[p][cnt[p]] = u->err[c];
            pred[p][cnt[p]] = u->sens * u->err[c];
            meas[p][cnt[p]] = u->meas_kld[p];
            cnt[p]++;
            praw[np] = u->err[c]; pmeas[np] = u->meas_kld[p]; np++;
        }
        int c0 = cand_of_type(u, u->meas_type[0]);
        fprintf(out, "%-30s %-7s %11.4e %11.4e %11.4e", u->name, moeq_type_name(u->meas_type[0]),
                c0 >= 0 ? u->err[c0] : 0.0, u->meas_kld[0], u->sens);
        if (u->n_meas > 1) {
            int c1 = cand_of_type(u, u->meas_type[1]);
            fprintf(out, " | %-7s %11.4e %11.4e %11.4e", moeq_type_name(u->meas_type[1]), c1 >= 0 ? u->err[c1] : 0.0,
                    c1 >= 0 ? u->sens * u->err[c1] : 0.0, u->meas_kld[1]);
        }
        fputc('\n', out);
    }
    if (!cnt[0]) goto out;
    fprintf(out, "rank correlation (Spearman) of predicted damage and measured KLD change, single-unit swaps:\n");
    fprintf(out, "  reference types (~%.1f bpw), %3d units: raw error %.4f (with factors 1 by construction)\n",
            REF_BPW, cnt[0], moeq_spearman(raw[0], meas[0], cnt[0]));
    if (cnt[1] > 1) {
        fprintf(out, "  check types     (~%.1f bpw), %3d units: raw error %.4f, factor x error %.4f (factors from the reference types)\n",
                CHECK_BPW, cnt[1], moeq_spearman(raw[1], meas[1], cnt[1]), moeq_spearman(pred[1], meas[1], cnt[1]));
        fprintf(out, "  both pooled,               %3d swaps: raw error %.4f\n", np, moeq_spearman(praw, pmeas, np));
    }
    rc = 0;
out:
    for (int p = 0; p < 2; p++) { free(raw[p]); free(pred[p]); free(meas[p]); }
    free(praw); free(pmeas);
    return rc;
}
