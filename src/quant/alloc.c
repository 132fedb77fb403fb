/*
 * alloc.c: importance-steered bit allocation (see alloc.h): units and
 * candidates of a model file, the damage measurement over sampled rows,
 * the sensitivity file, the multiple-choice knapsack and the plan output.
 */
#include "quant/alloc.h"

#include "engine/pool.h"
#include "util/outfile.h"
#include "quant/quant_plan.h"
#include "quant/quants.h"
#include "quant/tensor_groups.h"
#include "util/util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static uint64_t pad(uint64_t n, uint64_t a) { return (n + a - 1) / a * a; }

void moeq_alloc_free(struct moeq_alloc *a)
{
    if (!a) return;
    free(a->units);
    memset(a, 0, sizeof *a);
}

static int allowed(int type, const int *allow, int n_allow)
{
    if (!allow) return 1;
    for (int i = 0; i < n_allow; i++)
        if (allow[i] == type) return 1;
    return 0;
}

int moeq_alloc_init(struct moeq_alloc *a, const gguf_file *f, const int *allow, int n_allow,
                    int no_iq2, char *err, size_t errlen)
{
    memset(a, 0, sizeof *a);
    const int n = (int)f->n_tensors;
    a->n_tensors = n;
    a->alignment = f->alignment ? f->alignment : 32;
    a->units = calloc((size_t)n + 1, sizeof *a->units);
    if (!a->units) return moeq_fail(err, errlen, "alloc: out of memory");
    uint64_t names = 0;
    for (int i = 0; i < n; i++) {
        const gguf_tensor *t = &f->tensors[i];
        char name[128];
        snprintf(name, sizeof name, "%.*s", (int)t->name.n, t->name.s);
        uint64_t nel = t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
        a->nelem_all += nel;
        names += strlen(name) + 10;
        if (!moeq_plan_is_quantizable(name, t->n_dims)) { a->fixed_bytes += pad(t->nbytes, a->alignment); continue; }
        int group = moeq_tensor_group(name);
        struct moeq_alloc_unit *u = NULL;
        if (group == MOEQ_GROUP_FFN_UP_EXPS) {
            /* tie to the layer's gate, when it has one */
            char gate[128];
            snprintf(gate, sizeof gate, "blk.%d.ffn_gate_up_exps", moeq_tensor_layer(name));
            for (int k = 0; k < a->n_units; k++)
                if (!strcmp(a->units[k].name, gate)) u = &a->units[k];
        }
        if (u) {
            u->tensor[u->n_tensors++] = i;
            u->nelem += nel;
        } else {
            u = &a->units[a->n_units++];
            if (group == MOEQ_GROUP_FFN_GATE_EXPS) snprintf(u->name, sizeof u->name, "blk.%d.ffn_gate_up_exps", moeq_tensor_layer(name));
            else snprintf(u->name, sizeof u->name, "%s", name);
            u->layer = moeq_tensor_layer(name);
            u->group = group;
            u->n_tensors = 1;
            u->tensor[0] = i;
            u->nelem = nel;
            u->sens = 1.0;
        }
    }
    /* candidates: every type moeq writes that fits all the unit's rows */
    for (int k = 0; k < a->n_units; k++) {
        struct moeq_alloc_unit *u = &a->units[k];
        int special = u->group == MOEQ_GROUP_TOKEN_EMBD || u->group == MOEQ_GROUP_OUTPUT;
        for (int type = 0; type < MOEQ_TYPE_COUNT && u->n_cand < MOEQ_ALLOC_MAX_CAND; type++) {
            const struct moeq_type_traits *tt = moeq_type_traits(type);
            if (!tt || !tt->quantized || !tt->quantize || !tt->to_float || type == MOEQ_TYPE_Q8_K) continue;
            if (!allowed(type, allow, n_allow)) continue;
            if (no_iq2 && !special && moeq_type_needs_imatrix(type)) continue;
            uint64_t b = 0;
            int ok = 1;
            for (int j = 0; j < u->n_tensors && ok; j++) {
                const gguf_tensor *t = &f->tensors[u->tensor[j]];
                uint64_t nb = moeq_tensor_nbytes(type, t->ne[0], t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3], &ok);
                b += pad(nb, a->alignment);
            }
            if (!ok) continue;
            u->type[u->n_cand] = type;
            u->bytes[u->n_cand] = b;
            u->n_cand++;
        }
        if (!u->n_cand) return moeq_fail(err, errlen, "alloc: %s: no allowed type fits its row length", u->name);
    }
    /* header: the input's (a bound for the copied metadata and tensor
     * infos), the plan key, and room for the importance keys */
    a->header_bytes = f->data_offset + names + 1024;
    return 0;
}

/* ------------------------------------------------------------ measure */

struct mjob {
    const struct moeq_alloc_unit *u;
    const gguf_file *f;
    const struct moeq_imatrix *im;
    int rows;            /* sampled rows per tensor */
    double *out;         /* [n_cand] */
    float **scratch;     /* per thread: src, back, w, q bytes */
    size_t scratch_len;
};

/* One candidate of one unit: its error over the sampled rows. */
static void measure_cand(void *ctx, int64_t b, int64_t e, int tid)
{
    struct mjob *j = ctx;
    for (int64_t c = b; c < e; c++) {
        int type = j->u->type[c];
        double total = 0;
        for (int ti = 0; ti < j->u->n_tensors; ti++) {
            const gguf_tensor *t = &j->f->tensors[j->u->tensor[ti]];
            char name[128];
            snprintf(name, sizeof name, "%.*s", (int)t->name.n, t->name.s);
            const int64_t ne0 = (int64_t)t->ne[0], ne1 = (int64_t)t->ne[1];
            const int64_t n_mat = (int64_t)(t->ne[2] * t->ne[3]);
            const struct moeq_type_traits *st = moeq_type_traits((int)t->type), *dt = moeq_type_traits(type);
            const size_t src_row = moeq_row_size((int)t->type, ne0), dst_row = moeq_row_size(type, ne0);
            float *x = j->scratch[tid], *back = x + ne0, *w = back + ne0;
            uint8_t *q = (uint8_t *)(w + ne0);
            struct moeq_imatrix_entry *ie = j->im ? moeq_imatrix_find_weight(j->im, name) : NULL;
            int64_t per_mat = j->rows / n_mat;
            if (per_mat < 4) per_mat = 4;
            if (per_mat > ne1) per_mat = ne1;
            /* routing frequency of each expert, where the data has it */
            double csum = 0;
            if (ie && ie->n_mat == n_mat && n_mat > 1)
                for (int64_t m = 0; m < n_mat; m++) csum += ie->counts[m];
            struct moeq_quant_params qp = { .fit = MOEQ_FIT_UNBIASED };
            for (int64_t m = 0; m < n_mat; m++) {
                const float *wts = NULL;
                if (ie && moeq_imatrix_weights(ie, ne0, n_mat, m, w) >= 0) wts = w;
                double freq = n_mat > 1 ? (csum > 0 ? ie->counts[m] / csum * (double)n_mat : 1.0) : 1.0;
                double e2 = 0;
                for (int64_t s = 0; s < per_mat; s++) {
                    int64_t r = (int64_t)(((double)s + 0.5) * (double)ne1 / (double)per_mat);
                    const uint8_t *src = (const uint8_t *)t->data + ((size_t)m * (size_t)ne1 + (size_t)r) * src_row;
                    st->to_float(src, x, ne0);
                    dt->quantize(x, q, 1, ne0, wts, &qp);
                    dt->to_float(q, back, ne0);
                    for (int64_t k = 0; k < ne0; k++) {
                        double d = (double)x[k] - back[k];
                        e2 += (wts ? wts[k] : 1.0) * d * d;
                    }
                }
                (void)dst_row;
                /* all rows of the matrix, weighted by how often it runs;
                 * the embedding's error summed over its rows too (scaled
                 * per token, by 1 / n_vocab, it went to IQ2_XXS and the
                 * file's KLD on tiny-a was 5x the fixed recipe's) */
                double scale = (double)ne1 / (double)per_mat * freq / (double)n_mat;
                total += e2 * scale;
            }
        }
        j->out[c] = total;
    }
}

int moeq_alloc_measure(struct moeq_alloc *a, const gguf_file *f, const struct moeq_imatrix *im,
                       int rows_per_unit, int n_threads, moeq_progress_fn progress, void *ud,
                       char *err, size_t errlen)
{
    if (rows_per_unit < 1) rows_per_unit = 1024;
    moeq_pool *pool = moeq_pool_new(n_threads);
    const int nth = moeq_pool_size(pool);
    int64_t max_ne0 = 0;
    for (int i = 0; i < a->n_tensors; i++)
        if ((int64_t)f->tensors[i].ne[0] > max_ne0) max_ne0 = (int64_t)f->tensors[i].ne[0];
    float **scratch = calloc((size_t)nth, sizeof *scratch);
    int ok = scratch != NULL;
    for (int t = 0; ok && t < nth; t++) ok = (scratch[t] = malloc((size_t)max_ne0 * 4 * sizeof(float) + 64)) != NULL;
    if (!ok) { moeq_fail(err, errlen, "alloc: out of memory"); goto out; }
    uint64_t total = 0, done = 0;
    for (int k = 0; k < a->n_units; k++) total += a->units[k].nelem;
    const double t0 = moeq_now_s();
    for (int k = 0; k < a->n_units; k++) {
        struct moeq_alloc_unit *u = &a->units[k];
        struct mjob j = { u, f, im, rows_per_unit, u->err, scratch, 0 };
        moeq_pool_for(pool, u->n_cand, 1, measure_cand, &j);
        u->sens = 1.0;
        done += u->nelem;
        if (progress) {
            double el = moeq_now_s() - t0;
            struct moeq_progress pr = { "measuring", u->name, k + 1, a->n_units, el,
                                        done ? el * (double)(total - done) / (double)done : 0.0 };
            progress(ud, &pr);
        }
    }
out:
    for (int t = 0; scratch && t < nth; t++) free(scratch[t]);
    free(scratch);
    moeq_pool_free(pool);
    return ok ? 0 : -1;
}

/* --------------------------------------------------- sensitivity file */

int moeq_alloc_save(const struct moeq_alloc *a, const char *path, char *err, size_t errlen)
{
    char e2[512];
    moeq_outfile *of = moeq_outfile_open(path, NULL, 0, e2, sizeof e2);
    if (!of) return moeq_fail(err, errlen, "alloc: %s", e2);
    FILE *fp = moeq_outfile_fp(of);
    fprintf(fp, "moeq-sensitivity 2\n# unit NAME SENS NELEM / cand NAME TYPE BYTES ERR (damage = SENS x ERR)"
                " / kld NAME TYPE KLD (the unit alone at TYPE: measured mean KLD change)\n");
    for (int k = 0; k < a->n_units; k++) {
        const struct moeq_alloc_unit *u = &a->units[k];
        fprintf(fp, "unit %s %.9g %llu\n", u->name, u->sens, (unsigned long long)u->nelem);
        for (int c = 0; c < u->n_cand; c++)
            fprintf(fp, "cand %s %s %llu %.9g\n", u->name, moeq_type_name(u->type[c]),
                    (unsigned long long)u->bytes[c], u->err[c]);
        for (int m = 0; m < u->n_meas; m++)
            fprintf(fp, "kld %s %s %.9g\n", u->name, moeq_type_name(u->meas_type[m]), u->meas_kld[m]);
    }
    if (moeq_outfile_commit(of, e2, sizeof e2) != 0) return moeq_fail(err, errlen, "alloc: %s", e2);
    return 0;
}

static struct moeq_alloc_unit *unit_by_name(struct moeq_alloc *a, const char *name)
{
    for (int k = 0; k < a->n_units; k++)
        if (!strcmp(a->units[k].name, name)) return &a->units[k];
    return NULL;
}

int moeq_alloc_load(struct moeq_alloc *a, const char *path, char *err, size_t errlen)
{
    FILE *fp = fopen(path, "r");
    if (!fp) return moeq_fail(err, errlen, "alloc: cannot read %s", path);
    char line[512];
    int lineno = 0, rc = -1;
    unsigned char *seen = calloc((size_t)a->n_units + 1, MOEQ_ALLOC_MAX_CAND);
    if (!seen) { moeq_fail(err, errlen, "alloc: out of memory"); goto out; }
    /* version 1 (no kld lines) or 2 */
    if (!fgets(line, sizeof line, fp) || (strcmp(line, "moeq-sensitivity 1\n") && strcmp(line, "moeq-sensitivity 2\n"))) {
        moeq_fail(err, errlen, "alloc: %s is not a moeq sensitivity file", path);
        goto out;
    }
    lineno = 1;
    while (fgets(line, sizeof line, fp)) {
        lineno++;
        char kind[16], name[160], tname[32];
        unsigned long long nb;
        double v;
        if (line[0] == '#' || line[0] == '\n') continue;
        if (sscanf(line, "unit %159s %lf %llu", name, &v, &nb) == 3) {
            struct moeq_alloc_unit *u = unit_by_name(a, name);
            if (!u || u->nelem != nb) { moeq_fail(err, errlen, "alloc: %s:%d: unit %s does not match this model", path, lineno, name); goto out; }
            u->sens = v;
            u->n_meas = 0;
        } else if (sscanf(line, "kld %159s %31s %lf", name, tname, &v) == 3) {
            struct moeq_alloc_unit *u = unit_by_name(a, name);
            int type = moeq_type_from_name(tname);
            if (!u || type < 0) { moeq_fail(err, errlen, "alloc: %s:%d: measurement of %s at %s does not match this model", path, lineno, name, tname); goto out; }
            if (u->n_meas < 2) { u->meas_type[u->n_meas] = type; u->meas_kld[u->n_meas] = v; u->n_meas++; }
        } else if (sscanf(line, "%15s %159s %31s %llu %lf", kind, name, tname, &nb, &v) == 5 && !strcmp(kind, "cand")) {
            struct moeq_alloc_unit *u = unit_by_name(a, name);
            int type = moeq_type_from_name(tname), c = 0;
            while (u && c < u->n_cand && u->type[c] != type) c++;
            if (!u || c == u->n_cand) continue; /* not allowed this time */
            if (u->bytes[c] != nb) { moeq_fail(err, errlen, "alloc: %s:%d: %s as %s has %llu bytes, not %llu", path, lineno, name, tname, (unsigned long long)u->bytes[c], nb); goto out; }
            u->err[c] = v;
            seen[(size_t)(u - a->units) * MOEQ_ALLOC_MAX_CAND + (size_t)c] = 1;
        } else {
            moeq_fail(err, errlen, "alloc: %s:%d: bad line", path, lineno);
            goto out;
        }
    }
    /* drop candidates the file does not measure */
    for (int k = 0; k < a->n_units; k++) {
        struct moeq_alloc_unit *u = &a->units[k];
        int m = 0;
        for (int c = 0; c < u->n_cand; c++) {
            if (!seen[(size_t)k * MOEQ_ALLOC_MAX_CAND + (size_t)c]) continue;
            u->type[m] = u->type[c]; u->bytes[m] = u->bytes[c]; u->err[m] = u->err[c];
            m++;
        }
        u->n_cand = m;
        if (!m) { moeq_fail(err, errlen, "alloc: %s has no measurement for %s", path, u->name); goto out; }
    }
    rc = 0;
out:
    free(seen);
    fclose(fp);
    return rc;
}

/* -------------------------------------------------------------- solve */

uint64_t moeq_alloc_unit_budget(const struct moeq_alloc *a, uint64_t file_bytes)
{
    uint64_t fixed = a->fixed_bytes + a->header_bytes;
    return file_bytes > fixed ? file_bytes - fixed : 0;
}

uint64_t moeq_alloc_file_bytes(const struct moeq_alloc *a, const int *choice)
{
    uint64_t b = a->fixed_bytes + a->header_bytes;
    for (int k = 0; k < a->n_units; k++) b += a->units[k].bytes[choice[k]];
    return b;
}

double moeq_alloc_damage(const struct moeq_alloc *a, const int *choice)
{
    double d = 0;
    for (int k = 0; k < a->n_units; k++) d += a->units[k].sens * a->units[k].err[choice[k]];
    return d;
}

static uint64_t gcd64(uint64_t x, uint64_t y)
{
    while (y) { uint64_t t = x % y; x = y; y = t; }
    return x;
}

static uint64_t chosen_bytes(const struct moeq_alloc *a, const int *choice)
{
    uint64_t b = 0;
    for (int k = 0; k < a->n_units; k++) b += a->units[k].bytes[choice[k]];
    return b;
}

/* DP with steps of g bytes and capacity cap steps; choice[] out. */
static int dp_solve(const struct moeq_alloc *a, uint64_t g, int64_t cap, int *choice)
{
    const int nu = a->n_units;
    int64_t *wmin = calloc((size_t)nu + 1, sizeof *wmin);
    double *dp = malloc(((size_t)cap + 1) * sizeof *dp), *nx = malloc(((size_t)cap + 1) * sizeof *nx);
    unsigned char *pick = malloc((size_t)nu * ((size_t)cap + 1));
    int rc = -1;
    if (!wmin || !dp || !nx || !pick) goto out;
    int64_t c0 = cap;
    for (int k = 0; k < nu; k++) {
        const struct moeq_alloc_unit *u = &a->units[k];
        int64_t m = INT64_MAX;
        for (int c = 0; c < u->n_cand; c++) {
            int64_t w = (int64_t)((u->bytes[c] + g / 2) / g);
            if (w < m) m = w;
        }
        wmin[k] = m;
        c0 -= m;
    }
    if (c0 < 0) goto out;
    for (int64_t c = 0; c <= c0; c++) dp[c] = 0;
    for (int k = 0; k < nu; k++) {
        const struct moeq_alloc_unit *u = &a->units[k];
        unsigned char *pk = pick + (size_t)k * ((size_t)cap + 1);
        for (int64_t c = 0; c <= c0; c++) { nx[c] = INFINITY; pk[c] = 0; }
        for (int ci = 0; ci < u->n_cand; ci++) {
            int64_t w = (int64_t)((u->bytes[ci] + g / 2) / g) - wmin[k];
            double d = u->sens * u->err[ci];
            for (int64_t c = w; c <= c0; c++) {
                double v = dp[c - w] + d;
                if (v < nx[c]) { nx[c] = v; pk[c] = (unsigned char)ci; }
            }
        }
        double *t = dp; dp = nx; nx = t;
    }
    int64_t c = c0;
    for (int k = nu - 1; k >= 0; k--) {
        const struct moeq_alloc_unit *u = &a->units[k];
        int ci = pick[(size_t)k * ((size_t)cap + 1) + (size_t)c];
        choice[k] = ci;
        c -= (int64_t)((u->bytes[ci] + g / 2) / g) - wmin[k];
    }
    rc = 0;
out:
    free(wmin); free(dp); free(nx); free(pick);
    return rc;
}

int moeq_alloc_solve(const struct moeq_alloc *a, uint64_t budget, int *choice, char *err, size_t errlen)
{
    uint64_t minb = 0, g = 0;
    for (int k = 0; k < a->n_units; k++) {
        const struct moeq_alloc_unit *u = &a->units[k];
        uint64_t m = UINT64_MAX;
        for (int c = 0; c < u->n_cand; c++) {
            if (u->bytes[c] < m) m = u->bytes[c];
            g = gcd64(g, u->bytes[c]);
        }
        minb += m;
    }
    if (minb > budget)
        return moeq_fail(err, errlen, "alloc: budget %llu bytes for the weights is below the smallest plan (%llu bytes)",
                    (unsigned long long)budget, (unsigned long long)minb);
    const uint64_t states = 1u << 17;
    if (g == 0) g = 1;
    if (budget / g > states) g = (budget + states - 1) / states;
    int64_t cap = (int64_t)(budget / g);
    for (int it = 0; it < 64; it++) {
        if (cap < 0 || dp_solve(a, g, cap, choice) != 0) return moeq_fail(err, errlen, "alloc: no plan fits %llu bytes", (unsigned long long)budget);
        uint64_t b = chosen_bytes(a, choice);
        if (b <= budget) break;
        cap -= (int64_t)((b - budget + g - 1) / g);
        if (it == 63) return moeq_fail(err, errlen, "alloc: no plan fits %llu bytes", (unsigned long long)budget);
    }
    /* exact greedy fill of the slack: the best damage reduction that fits */
    for (;;) {
        uint64_t slack = budget - chosen_bytes(a, choice);
        int bk = -1, bc = -1;
        double best = 0;
        for (int k = 0; k < a->n_units; k++) {
            const struct moeq_alloc_unit *u = &a->units[k];
            for (int c = 0; c < u->n_cand; c++) {
                if (u->bytes[c] > u->bytes[choice[k]] + slack) continue;
                double gain = u->sens * (u->err[choice[k]] - u->err[c]);
                if (gain > best) { best = gain; bk = k; bc = c; }
            }
        }
        if (bk < 0) break;
        choice[bk] = bc;
    }
    return 0;
}

/* --------------------------------------------------------------- plan */

void moeq_alloc_types(const struct moeq_alloc *a, const int *choice, int *types)
{
    for (int i = 0; i < a->n_tensors; i++) types[i] = -1;
    for (int k = 0; k < a->n_units; k++)
        for (int j = 0; j < a->units[k].n_tensors; j++) types[a->units[k].tensor[j]] = a->units[k].type[choice[k]];
}

static void tensor_name_of(const struct moeq_alloc_unit *u, int j, char *out, size_t n)
{
    if (!strstr(u->name, "ffn_gate_up_exps")) { snprintf(out, n, "%s", u->name); return; }
    snprintf(out, n, "blk.%d.%s", u->layer, j == 0 ? "ffn_gate_exps.weight" : "ffn_up_exps.weight");
}

int moeq_alloc_write_plan(const struct moeq_alloc *a, const int *choice, FILE *out)
{
    fprintf(out, "# moeq plan: one --tensor-type rule a line (REGEX=TYPE), read by --recipe-file\n");
    for (int k = 0; k < a->n_units; k++) {
        const struct moeq_alloc_unit *u = &a->units[k];
        for (int j = 0; j < u->n_tensors; j++) {
            char name[160];
            tensor_name_of(u, j, name, sizeof name);
            fputc('^', out);
            for (const char *p = name; *p; p++) {
                if (*p == '.') fputc('\\', out);
                fputc(*p, out);
            }
            fprintf(out, "$=%s\n", moeq_type_name(u->type[choice[k]]));
        }
    }
    return ferror(out) ? -1 : 0;
}

char *moeq_alloc_plan_string(const struct moeq_alloc *a, const int *choice, const gguf_file *f)
{
    (void)f;
    size_t cap = 64;
    for (int k = 0; k < a->n_units; k++) cap += strlen(a->units[k].name) + 12;
    char *s = malloc(cap);
    if (!s) return NULL;
    size_t n = 0;
    s[0] = 0;
    for (int k = 0; k < a->n_units; k++)
        n += (size_t)snprintf(s + n, cap - n, "%s%s=%s", k ? ";" : "", a->units[k].name,
                              moeq_type_name(a->units[k].type[choice[k]]));
    return s;
}
