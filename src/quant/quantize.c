/*
 * quantize.c: the quantize-a-model-file job (see quantize.h), used by
 * tools/cmd_quantize.c and the tests.
 *
 * Streams the model tensor by tensor and, inside a tensor, expert by expert
 * and row block by row block: peak memory is a few row blocks, not the
 * model (the real source is a 32 GB Q8_0 on a 24 GB machine), and the
 * source pages already processed are dropped from the page cache mapping.
 * Rows are quantized in parallel; each 3-D expert tensor takes its expert's
 * slice of the importance matrix. Everything is checked (plan, importance
 * data, source and target types) before the output is opened.
 */
#include "quant/quantize.h"

#include "gguf/gguf.h"
#include "quant/finite.h"
#include "quant/gptq.h"
#include "quant/hessian.h"
#include "quant/hessian_seq.h"
#include "quant/imatrix.h"
#include "model/model.h"
#include "util/outfile.h"
#include "util/util.h"
#include "engine/pool.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

void moeq_quantize_opts_init(struct moeq_quantize_opts *o)
{
    memset(o, 0, sizeof *o);
    o->token_embd_type = -1;
    o->output_type = -1;
    o->qp.fit = MOEQ_FIT_UNBIASED;
}

void moeq_quantize_report_free(struct moeq_quantize_report *r)
{
    if (!r) return;
    for (int i = 0; r->tensors && i < r->n_tensors; i++) free(r->tensors[i].name);
    free(r->tensors);
    memset(r, 0, sizeof *r);
}

/* ---------------------------------------------------------- row worker */

struct qjob {
    int src_type, dst_type;
    int64_t ne0;
    const uint8_t *src;      /* first row of the block */
    size_t src_row, dst_row; /* bytes per row */
    uint8_t *dst;
    float *f32;              /* [rows][ne0] scratch for the block */
    float *back;             /* [threads][ne0] scratch */
    const float *w;          /* importance weights or NULL */
    const struct moeq_quant_params *qp;
    double *err2, *werr2, *wsum, *sum2; /* per thread */
    int failed;
    const moeq_gptq *g;      /* non-NULL: Hessian-aware rounding of this matrix */
};

static void quant_rows(void *ctx, int64_t b, int64_t e, int tid)
{
    struct qjob *j = ctx;
    const struct moeq_type_traits *st = moeq_type_traits(j->src_type);
    const struct moeq_type_traits *dt = moeq_type_traits(j->dst_type);
    float *x = j->f32 + b * j->ne0;
    for (int64_t r = b; r < e; r++)
        st->to_float(j->src + r * j->src_row, j->f32 + r * j->ne0, j->ne0);
    if (j->g) {
        char gerr[256];
        if (moeq_gptq_rows(j->g, j->dst_type, x, e - b, j->dst + b * j->dst_row, j->qp, gerr, sizeof gerr) != 0) {
            j->failed = 1;
            return;
        }
    } else if (dt->quantize) {
        dt->quantize(x, j->dst + b * j->dst_row, e - b, j->ne0, j->w, j->qp);
    } else if (j->dst_type == MOEQ_TYPE_F32) {
        memcpy(j->dst + b * j->dst_row, x, (size_t)((e - b) * j->ne0) * 4);
    } else {
        j->failed = 1;
        return;
    }
    /* error against the source, plain and importance-weighted */
    float *back = j->back + (int64_t)tid * j->ne0;
    double e2 = 0, we2 = 0, ws = 0, s2 = 0;
    for (int64_t r = b; r < e; r++) {
        dt->to_float(j->dst + r * j->dst_row, back, j->ne0);
        const float *xr = j->f32 + r * j->ne0;
        for (int64_t c = 0; c < j->ne0; c++) {
            double d = (double)xr[c] - back[c];
            double w = j->w ? j->w[c] : 1.0;
            e2 += d * d;
            we2 += w * d * d;
            ws += w;
            s2 += (double)xr[c] * xr[c];
        }
    }
    j->err2[tid] += e2;
    j->werr2[tid] += we2;
    j->wsum[tid] += ws;
    j->sum2[tid] += s2;
}

/* ----------------------------------------------------------- helpers */

static int name_listed(const char *name, const char *const *list, int n)
{
    for (int i = 0; i < n; i++)
        if (strcmp(list[i], name) == 0) return 1;
    return 0;
}

static int is_source_type_ok(int type)
{
    const struct moeq_type_traits *t = moeq_type_traits(type);
    return t && t->to_float && type != MOEQ_TYPE_Q8_K;
}

/* The model shape the mix rules read. */
/* The model shape for the mix rules: whatever counts the file has, read by
 * the one hyperparameter reader (the engine refuses what it cannot run;
 * quantize takes any file). */
static void model_shape(const gguf_file *f, const char *path, struct moeq_model_shape *shape)
{
    struct moeq_hparams hp;
    moeq_hparams_read(f, path, &hp, NULL, 0);
    *shape = (struct moeq_model_shape){ hp.n_layer, hp.n_head, hp.n_head_kv, hp.n_expert,
                                        gguf_find_tensor(f, "output.weight") >= 0 };
}

/* Plan every tensor into r (names, shapes, types, bytes), the caller's
 * type plan applied over the computed one. */
static int plan(const struct moeq_quantize_opts *o, const gguf_file *f, int has_imatrix,
                struct moeq_quantize_report *r, char *err, size_t errlen)
{
    const int n = (int)f->n_tensors;
    if (o->types && o->n_types != n)
        return moeq_fail(err, errlen, "quantize: type plan of %d tensors for %s, which has %d", o->n_types, o->in_path, n);
    struct moeq_plan_tensor *pt = calloc((size_t)n + 1, sizeof *pt);
    struct moeq_plan_entry *pe = calloc((size_t)n + 1, sizeof *pe);
    r->tensors = calloc((size_t)n + 1, sizeof *r->tensors);
    int rc = -1;
    if (!pt || !pe || !r->tensors) { moeq_fail(err, errlen, "out of memory"); goto out; }
    r->n_tensors = n;
    for (int i = 0; i < n; i++) {
        const gguf_tensor *t = &f->tensors[i];
        struct moeq_quantize_tensor *q = &r->tensors[i];
        if (!(q->name = strndup(t->name.s, (size_t)t->name.n))) { moeq_fail(err, errlen, "out of memory"); goto out; }
        q->src_type = (int)t->type;
        q->n_dims = t->n_dims;
        memcpy(q->ne, t->ne, sizeof q->ne);
        q->nelem = t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
        q->src_bytes = t->nbytes;
        pt[i].name = q->name;
        pt[i].src_type = q->src_type;
        pt[i].n_dims = q->n_dims;
        memcpy(pt[i].ne, q->ne, sizeof pt[i].ne);
    }
    struct moeq_model_shape shape;
    model_shape(f, o->in_path, &shape);
    struct moeq_plan_opts po = { o->mix, o->pure, o->token_embd_type, o->output_type, has_imatrix,
                                 o->rules, o->n_rules, o->recipe };
    if (moeq_plan(&po, &shape, pt, n, pe, err, errlen) != 0) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", err);
        moeq_fail(err, errlen, "quantize: %s: %s", o->in_path, msg);
        goto out;
    }
    for (int i = 0; i < n; i++) {
        struct moeq_quantize_tensor *q = &r->tensors[i];
        q->type = pe[i].type;
        q->quantized = pe[i].quantize;
        q->fallback = pe[i].fallback;
        q->rule = pe[i].rule;
        q->recipe = pe[i].recipe;
        q->nbytes = pe[i].nbytes;
        if (o->leave_output_tensor && !strcmp(q->name, "output.weight")) {
            q->type = q->src_type;
            q->quantized = q->fallback = q->recipe = 0;
            q->rule = -1;
            q->nbytes = q->src_bytes;
            continue;
        }
        if (!o->types || o->types[i] < 0) continue;
        const struct moeq_type_traits *tt = moeq_type_traits(o->types[i]);
        if (!moeq_plan_is_quantizable(q->name, q->n_dims)) {
            moeq_fail(err, errlen, "quantize: type plan: %s is not a tensor quantization may change", q->name);
            goto out;
        }
        int ok = 0;
        uint64_t nb = tt ? moeq_tensor_nbytes(o->types[i], q->ne[0], q->nelem, &ok) : 0;
        if (!ok) {
            moeq_fail(err, errlen, "quantize: type plan: tensor %s: row length %llu does not fit type %s",
                 q->name, (unsigned long long)q->ne[0], moeq_type_name(o->types[i]));
            goto out;
        }
        q->type = o->types[i];
        q->quantized = q->type != q->src_type;
        q->fallback = q->recipe = 0;
        q->rule = -1;
        q->planned = 1;
        q->nbytes = nb;
    }
    rc = 0;
out:
    free(pt);
    free(pe);
    return rc;
}

/* Importance data per tensor and the type checks, all before anything is
 * written. */
static int match_imatrix(const struct moeq_quantize_opts *o, const gguf_file *f, struct moeq_imatrix *im,
                         struct moeq_imatrix_entry **ie, struct moeq_quantize_report *r, FILE *log,
                         char *err, size_t errlen)
{
    const int n = r->n_tensors;
    int im_matched = 0, n_quantized = 0, requant_noted = 0;
    for (int i = 0; i < n; i++) {
        struct moeq_quantize_tensor *q = &r->tensors[i];
        if (!q->quantized) continue;
        n_quantized++;
        const gguf_tensor *t = &f->tensors[i];
        if (im) {
            struct moeq_imatrix_entry *e = moeq_imatrix_find_weight(im, q->name);
            if (e) {
                im_matched++;
                uint64_t n_mat = t->ne[2] * t->ne[3];
                if (!(e->n_per_row == (int64_t)t->ne[0] && e->n_mat == (int64_t)n_mat) &&
                    !(e->n_mat == 1 && e->n_per_row == (int64_t)(t->ne[0] * n_mat)))
                    return moeq_fail(err, errlen, "quantize: imatrix %s: entry %s has %lld values, but tensor %s in %s needs %llu x %llu",
                                o->imatrix_path, e->name, (long long)(e->n_per_row * e->n_mat), q->name, o->in_path,
                                (unsigned long long)t->ne[0], (unsigned long long)n_mat);
                int use = 1;
                if (o->n_include && !name_listed(q->name, o->include, o->n_include)) use = 0;
                if (o->n_exclude && name_listed(q->name, o->exclude, o->n_exclude)) use = 0;
                if (use) { ie[i] = e; q->imatrix = 1; r->imatrix_used++; }
            } else if (strcmp(q->name, "token_embd.weight") != 0) {
                fprintf(log, "moeq: warning: imatrix %s has no entry for %s\n", o->imatrix_path, q->name);
            }
        }
        if (!ie[i] && im && moeq_type_needs_imatrix(q->type) && !o->ignore_imatrix_rules &&
            strcmp(q->name, "token_embd.weight") != 0 && strcmp(q->name, "output.weight") != 0)
            fprintf(log, "moeq: warning: imatrix %s has no data for %s; quantizing it to %s with uniform weights\n",
                    o->imatrix_path, q->name, moeq_type_name(q->type));
        else if (!ie[i] && moeq_type_needs_imatrix(q->type) && !o->ignore_imatrix_rules &&
            strcmp(q->name, "token_embd.weight") != 0 && strcmp(q->name, "output.weight") != 0)
            return moeq_fail(err, errlen, "quantize: no importance data for %s, needed for %s (pass --imatrix, or --ignore-imatrix-rules)",
                        q->name, moeq_type_name(q->type));
        const struct moeq_type_traits *st = moeq_type_traits(q->src_type);
        if (st && st->quantized && !o->allow_requantize && o->dry_run) {
            if (!requant_noted)
                fprintf(log, "moeq: note: %s: tensor %s is already %s; writing needs --allow-requantize\n",
                        o->in_path, q->name, st->name);
            requant_noted = 1;
        } else if (st && st->quantized && !o->allow_requantize)
            return moeq_fail(err, errlen, "quantize: %s: tensor %s is already %s; requantizing is disabled (use --allow-requantize)",
                        o->in_path, q->name, st->name);
        if (!is_source_type_ok(q->src_type) || !moeq_type_traits(q->type)->to_float ||
            (!moeq_type_traits(q->type)->quantize && q->type != MOEQ_TYPE_F32))
            return moeq_fail(err, errlen, "quantize: cannot convert %s from %s to %s", q->name,
                        moeq_type_name(q->src_type), moeq_type_name(q->type));
    }
    /* (a plan that keeps every tensor as it is quantizes none: nothing to match) */
    if (im && n_quantized > 0 && im_matched == 0)
        return moeq_fail(err, errlen, "quantize: imatrix %s matches no tensor of %s (computed for a different model?)",
                    o->imatrix_path, o->in_path);
    /* report experts without calibration data */
    for (int i = 0; im && i < n; i++) {
        const int64_t ne0 = (int64_t)f->tensors[i].ne[0], n_mat = (int64_t)(f->tensors[i].ne[2] * f->tensors[i].ne[3]);
        if (!ie[i] || n_mat <= 1) continue;
        int first = 1;
        for (int64_t m = 0; m < n_mat; m++) {
            if (moeq_imatrix_expert_has_data(ie[i], ne0, n_mat, m)) continue;
            if (first) fprintf(log, "moeq: warning: %s: no imatrix data for experts:", r->tensors[i].name);
            fprintf(log, " %lld", (long long)m);
            first = 0;
        }
        if (!first) fprintf(log, " (filled from the tensor's other experts)\n");
    }
    return 0;
}

/* Load the Hessian file and find each quantized tensor's entry (its own,
 * or its gate/up sibling's); a shape that does not match is an error. */
static int match_hessian(const struct moeq_quantize_opts *o, const gguf_file *f, struct moeq_quantize_report *r,
                         struct moeq_hessian **hs_out, const struct moeq_hessian_entry ***he_out, FILE *log,
                         char *err, size_t errlen)
{
    struct moeq_hessian *hs = moeq_hessian_new();
    const struct moeq_hessian_entry **he = calloc((size_t)r->n_tensors + 1, sizeof *he);
    *hs_out = hs;
    *he_out = he;
    if (!hs || !he) return moeq_fail(err, errlen, "out of memory");
    if (moeq_hessian_load(hs, o->hessian_path, err, errlen) != 0) return -1;
    int used = 0;
    for (int i = 0; i < r->n_tensors; i++) {
        struct moeq_quantize_tensor *q = &r->tensors[i];
        if (!q->quantized) continue;
        const struct moeq_hessian_entry *e = moeq_hessian_find(hs, q->name);
        if (!e) continue;
        const gguf_tensor *t = &f->tensors[i];
        if ((uint64_t)e->n != t->ne[0] || (uint64_t)e->n_mat != t->ne[2] * t->ne[3])
            return moeq_fail(err, errlen, "quantize: hessian %s: entry %s is %lld x %lld x %lld, but tensor %s in %s "
                        "has rows of %llu in %llu matrices", o->hessian_path, e->name, (long long)e->n,
                        (long long)e->n, (long long)e->n_mat, q->name, o->in_path, (unsigned long long)t->ne[0],
                        (unsigned long long)(t->ne[2] * t->ne[3]));
        he[i] = e;
        used++;
    }
    if (used == 0)
        return moeq_fail(err, errlen, "quantize: hessian %s matches no tensor of %s (computed for a different model?)",
                    o->hessian_path, o->in_path);
    fprintf(log, "moeq: Hessian-aware rounding for %d tensors from %s\n", used, o->hessian_path);
    return 0;
}

/* The input's metadata less stale importance keys, then the file type,
 * the quantization version and this run's importance metadata. */
static int write_header(const struct moeq_quantize_opts *o, const gguf_file *f, const struct moeq_imatrix *im,
                        const struct moeq_quantize_report *r, gguf_writer *w)
{
    gguf_writer_set_version(w, f->version >= 3 ? 3 : f->version);
    int ok = gguf_writer_add_kvs_from(w, f) == 0;
    static const char stale[] = "quantize.imatrix."; /* from an earlier run */
    for (uint64_t k = 0; ok && k < f->n_kv; k++) {
        const gguf_str key = f->kv[k].key;
        if ((size_t)key.n < sizeof stale - 1 || memcmp(key.s, stale, sizeof stale - 1)) continue;
        char *name = strndup(key.s, (size_t)key.n);
        ok = name && gguf_writer_remove_kv(w, name) == 0;
        free(name);
    }
    gguf_value v;
    memset(&v, 0, sizeof v);
    v.type = GGUF_TYPE_UINT32;
    v.v.u64 = 2;
    ok = ok && gguf_writer_set_kv(w, "general.quantization_version", &v) == 0;
    v.v.u64 = (uint64_t)r->mix->ftype;
    ok = ok && gguf_writer_set_kv(w, "general.file_type", &v) == 0;
    if (im && ok) {
        gguf_value s;
        memset(&s, 0, sizeof s);
        s.type = GGUF_TYPE_STRING;
        s.v.str.s = o->imatrix_path; s.v.str.n = strlen(o->imatrix_path);
        ok = gguf_writer_set_kv(w, "quantize.imatrix.file", &s) == 0;
        if (ok && im->n_datasets) {
            s.v.str.s = im->datasets[0]; s.v.str.n = strlen(im->datasets[0]);
            ok = gguf_writer_set_kv(w, "quantize.imatrix.dataset", &s) == 0;
        }
        gguf_value iv;
        memset(&iv, 0, sizeof iv);
        iv.type = GGUF_TYPE_INT32;
        iv.v.i64 = r->imatrix_used;
        ok = ok && gguf_writer_set_kv(w, "quantize.imatrix.entries_count", &iv) == 0;
        iv.v.i64 = im->chunk_count;
        ok = ok && gguf_writer_set_kv(w, "quantize.imatrix.chunks_count", &iv) == 0;
    }
    if (ok && o->plan_meta) ok = gguf_writer_add_str(w, "moeq.plan", o->plan_meta) == 0;
    for (int i = 0; ok && i < o->n_kv; i++)
        ok = gguf_writer_set_kv(w, o->kv[i].key, &o->kv[i].val) == 0;
    for (int i = 0; ok && i < r->n_tensors; i++)
        ok = gguf_writer_add_tensor(w, r->tensors[i].name, (uint32_t)r->tensors[i].type,
                                    f->tensors[i].n_dims, f->tensors[i].ne) >= 0;
    return ok ? 0 : -1;
}

/* Quantize tensor i, expert by expert and row block by row block, each
 * block handed to sink (the file writer, or memory), with its error
 * against the source in q. */
typedef int (*block_sink)(void *ctx, const void *p, size_t n);

static int sink_writer(void *ctx, const void *p, size_t n) { return gguf_writer_write(ctx, p, n); }

static int write_tensor(const struct moeq_quantize_opts *o, const gguf_tensor *t,
                        struct moeq_quantize_tensor *q, const struct moeq_imatrix_entry *ie,
                        const struct moeq_hessian_entry *he, moeq_pool *pool, double *acc, block_sink sink,
                        void *sink_ctx, char *err, size_t errlen)
{
    const int nth = moeq_pool_size(pool);
    FILE *log = o->log ? o->log : stderr;
    const int64_t ne0 = (int64_t)t->ne[0], ne1 = (int64_t)t->ne[1];
    const int64_t n_mat = (int64_t)(t->ne[2] * t->ne[3]);
    const size_t src_row = moeq_row_size(q->src_type, ne0);
    const size_t dst_row = moeq_row_size(q->type, ne0);
    /* row blocks of about 16M values bound memory on huge matrices */
    int64_t block = (16 << 20) / ne0;
    if (block < 1) block = 1;
    if (block > ne1) block = ne1;
    float *f32 = malloc((size_t)(block * ne0) * sizeof(float));
    float *back = malloc((size_t)(nth * ne0) * sizeof(float));
    uint8_t *dst = malloc((size_t)block * dst_row);
    float *wbuf = malloc((size_t)ne0 * sizeof(float));
    int ok = 1;
    if (!f32 || !back || !dst || !wbuf) { moeq_fail(err, errlen, "out of memory"); ok = 0; }
    memset(acc, 0, (size_t)nth * 4 * sizeof(double));
    for (int64_t m = 0; ok && m < n_mat; m++) {
        const float *wts = NULL;
        if (ie) {
            moeq_imatrix_weights(ie, ne0, n_mat, m, wbuf);
            wts = wbuf;
        }
        moeq_gptq *g = NULL;
        if (he && he->counts[m] > 0) {
            if (he->counts[m] < (double)ne0) {
                /* fewer routed tokens than input columns leave H singular:
                 * such an expert keeps the diagonal (imatrix) rounding */
                if (!q->gptq_fallback++)
                    fprintf(log, "moeq: note: %s: matrices with fewer tokens than its %lld columns keep the "
                            "diagonal rounding:", q->name, (long long)ne0);
                fprintf(log, " %lld (%.0f)", (long long)m, he->counts[m]);
            } else if (q->src_type != q->type && moeq_type_traits(q->type)->quantize) {
                /* (a source already in the target type is re-encoded exactly
                 * as it is; moving its columns would only add error) */
                double *H = moeq_hessian_matrix(he, m);
                char gerr[256] = "out of memory";
                if (H) g = moeq_gptq_prepare(H, ne0, o->gptq_damp > 0 ? o->gptq_damp : MOEQ_GPTQ_DAMP, gerr,
                                             sizeof gerr);
                free(H);
                if (!g) { moeq_fail(err, errlen, "quantize: %s: %s", q->name, gerr); ok = 0; break; }
                q->gptq++;
            }
        }
        if (m + 1 == n_mat && q->gptq_fallback) fputc('\n', log);
        const uint8_t *msrc = (const uint8_t *)t->data + (size_t)m * (size_t)ne1 * src_row;
        for (int64_t r0 = 0; ok && r0 < ne1; r0 += block) {
            int64_t nr = ne1 - r0 < block ? ne1 - r0 : block;
            struct qjob j = { q->src_type, q->type, ne0, msrc + (size_t)r0 * src_row,
                              src_row, dst_row, dst, f32, back, wts, &o->qp,
                              acc, acc + nth, acc + 2 * nth, acc + 3 * nth, 0, g };
            moeq_pool_for(pool, nr, 4, quant_rows, &j);
            if (j.failed) { moeq_fail(err, errlen, "quantize: no quantizer for %s", moeq_type_name(q->type)); ok = 0; break; }
            ok = sink(sink_ctx, dst, (size_t)nr * dst_row) == 0;
        }
        /* this expert's source pages are done: drop them from our RSS */
        uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE);
        uintptr_t a0 = ((uintptr_t)msrc + pg - 1) & ~(pg - 1);
        uintptr_t a1 = ((uintptr_t)msrc + (size_t)ne1 * src_row) & ~(pg - 1);
        if (a1 > a0) madvise((void *)a0, a1 - a0, MADV_DONTNEED);
        moeq_gptq_free(g);
    }
    double e2 = 0, we2 = 0, ws = 0, s2 = 0;
    for (int k = 0; k < nth; k++) { e2 += acc[k]; we2 += acc[nth + k]; ws += acc[2 * nth + k]; s2 += acc[3 * nth + k]; }
    double nel = (double)ne0 * (double)ne1 * (double)n_mat;
    q->rmse = sqrt(e2 / nel);
    q->wrmse = ws > 0 ? sqrt(we2 / ws * (double)ne0) / sqrt((double)ne0) : 0;
    q->rel = s2 > 0 ? sqrt(e2 / s2) : 0;
    free(f32); free(back); free(dst); free(wbuf);
    return ok ? 0 : -1;
}

struct mem_sink { uint8_t *p; size_t left; };

static int sink_mem(void *ctx, const void *p, size_t n)
{
    struct mem_sink *m = ctx;
    if (n > m->left) return -1;
    memcpy(m->p, p, n);
    m->p += n;
    m->left -= n;
    return 0;
}

/* the file's writer, and a copy of the tensor's blocks (hessian_seq) */
struct tee_sink { gguf_writer *w; struct mem_sink copy; };

static int sink_tee(void *ctx, const void *p, size_t n)
{
    struct tee_sink *t = ctx;
    return gguf_writer_write(t->w, p, n) == 0 && sink_mem(&t->copy, p, n) == 0 ? 0 : -1;
}

int moeq_quantize_tensor_mem(const gguf_tensor *t, int type, const struct moeq_imatrix_entry *ie,
                             const struct moeq_quant_params *qp, moeq_pool *pool, void *dst, size_t nbytes,
                             char *err, size_t errlen)
{
    const int nth = moeq_pool_size(pool);
    double *acc = calloc((size_t)nth * 4, sizeof *acc);
    char name[128];
    snprintf(name, sizeof name, "%.*s", (int)t->name.n, t->name.s);
    if (!acc) return moeq_fail(err, errlen, "out of memory");
    struct moeq_quantize_opts o;
    moeq_quantize_opts_init(&o);
    if (qp) o.qp = *qp;
    struct moeq_quantize_tensor q = { .name = name, .src_type = (int)t->type, .type = type };
    struct mem_sink ms = { dst, nbytes };
    err[0] = 0;
    int rc = write_tensor(&o, t, &q, ie, NULL, pool, acc, sink_mem, &ms, err, errlen);
    free(acc);
    if (rc == 0 && ms.left != 0) return moeq_fail(err, errlen, "quantize: %zu bytes given for a tensor of %zu", nbytes, nbytes - ms.left);
    if (rc != 0 && !err[0]) moeq_fail(err, errlen, "quantize: %zu bytes are too few for %s as %s", nbytes, name, moeq_type_name(type));
    return rc;
}

int moeq_kv_override_parse(const char *spec, struct moeq_kv_override *kv, char *err, size_t errlen)
{
    memset(kv, 0, sizeof *kv);
    const char *eq = strchr(spec, '='), *colon = eq ? strchr(eq + 1, ':') : NULL;
    if (!eq || !colon || eq == spec)
        return moeq_fail(err, errlen, "--override-kv: expected KEY=TYPE:VALUE, got '%s'", spec);
    if ((size_t)(eq - spec) >= sizeof kv->key)
        return moeq_fail(err, errlen, "--override-kv: key too long in '%s'", spec);
    memcpy(kv->key, spec, (size_t)(eq - spec));
    const char *type = eq + 1, *val = colon + 1;
    size_t tn = (size_t)(colon - type);
    char *end = NULL;
    errno = 0;
    if (tn == 3 && !memcmp(type, "int", 3)) {
        kv->val.type = GGUF_TYPE_INT64;
        kv->val.v.i64 = strtoll(val, &end, 10);
    } else if (tn == 5 && !memcmp(type, "float", 5)) {
        kv->val.type = GGUF_TYPE_FLOAT64;
        kv->val.v.f64 = strtod(val, &end);
    } else if (tn == 4 && !memcmp(type, "bool", 4)) {
        kv->val.type = GGUF_TYPE_BOOL;
        if (!strcmp(val, "true")) kv->val.v.u64 = 1;
        else if (strcmp(val, "false") != 0)
            return moeq_fail(err, errlen, "--override-kv: %s: bool must be true or false, got '%s'", kv->key, val);
        return 0;
    } else if (tn == 3 && !memcmp(type, "str", 3)) {
        kv->val.type = GGUF_TYPE_STRING;
        kv->val.v.str.s = val;
        kv->val.v.str.n = strlen(val);
        return 0;
    } else {
        return moeq_fail(err, errlen, "--override-kv: %s: type must be int, float, bool or str, got '%.*s'",
                    kv->key, (int)tn, type);
    }
    if (!*val || !end || *end || errno)
        return moeq_fail(err, errlen, "--override-kv: %s: bad %.*s value '%s'", kv->key, (int)tn, type, val);
    return 0;
}

/* ------------------------------------------------------------- the job */

/* One tensor with its statistics from the layer-by-layer pass, its blocks
 * written and handed to the engine for the passes after it. */
static int write_tensor_seq(const struct moeq_quantize_opts *o, const gguf_tensor *t, struct moeq_quantize_tensor *q,
                            const struct moeq_imatrix_entry *ie, moeq_hseq *seq, moeq_pool *pool, double *acc,
                            gguf_writer *w, char *err, size_t errlen)
{
    const struct moeq_hessian_entry *he = NULL;
    /* (a source already in the target type is re-encoded as it is) */
    if (q->src_type != q->type && moeq_type_traits(q->type)->quantize &&
        moeq_hseq_get(seq, q->name, &he, err, errlen) != 0)
        return -1;
    uint8_t *copy = malloc(q->nbytes ? (size_t)q->nbytes : 1);
    if (!copy) return moeq_fail(err, errlen, "out of memory");
    struct tee_sink tee = { w, { copy, (size_t)q->nbytes } };
    if (write_tensor(o, t, q, ie, he, pool, acc, sink_tee, &tee, err, errlen) != 0) {
        const char *we = gguf_writer_error(w);
        if (we && *we) moeq_fail(err, errlen, "%s", we);
        free(copy);
        return -1;
    }
    return moeq_hseq_quantized(seq, q->name, q->type, copy, (size_t)q->nbytes, err, errlen);
}

int moeq_quantize_file(const struct moeq_quantize_opts *o, struct moeq_quantize_report *r,
                       char *err, size_t errlen)
{
    memset(r, 0, sizeof *r);
    if (!o->mix || !o->in_path || !o->out_path) return moeq_fail(err, errlen, "quantize: no mix, input or output given");
    /* every file the job reads; the output may be none of them */
    const char *inputs[4] = { o->in_path };
    int n_inputs = 1;
    if (o->imatrix_path) inputs[n_inputs++] = o->imatrix_path;
    if (o->hessian_path) inputs[n_inputs++] = o->hessian_path;
    if (o->calib_text && o->calib_path) inputs[n_inputs++] = o->calib_path;
    if (o->calib_text && o->hessian_path)
        return moeq_fail(err, errlen, "quantize: Hessian statistics from a file and from calibration text are exclusive");
    char oerr[512];
    if (moeq_outfile_check(o->out_path, inputs, n_inputs, oerr, sizeof oerr) != 0)
        return moeq_fail(err, errlen, "quantize: %s", oerr);
    FILE *log = o->log ? o->log : stderr;
    r->mix = o->mix;

    gguf_file *f = gguf_open(o->in_path, err, errlen);
    if (!f) return -1;
    int rc = -1;
    struct moeq_imatrix *im = NULL;
    struct moeq_imatrix_entry **ie = NULL;
    struct moeq_hessian *hs = NULL;
    const struct moeq_hessian_entry **he = NULL;
    if (o->imatrix_path) {
        im = moeq_imatrix_new();
        if (moeq_imatrix_load(im, o->imatrix_path, err, errlen) != 0) goto out;
        int64_t nt, nx = moeq_imatrix_shrink_low_counts(im, MOEQ_IMATRIX_LOW_COUNT_FRAC, &nt);
        if (nx)
            fprintf(log, "moeq: imatrix %s: %lld expert(s) in %lld tensor(s) saw under %.0f%% of their tensor's mean token "
                    "count; their importance is shrunk toward the tensor's mean\n", o->imatrix_path, (long long)nx,
                    (long long)nt, 100 * MOEQ_IMATRIX_LOW_COUNT_FRAC);
    }
    if (plan(o, f, im != NULL, r, err, errlen) != 0) goto out;
    const int n = r->n_tensors;
    if (!(ie = calloc((size_t)n + 1, sizeof *ie))) { moeq_fail(err, errlen, "out of memory"); goto out; }
    if (match_imatrix(o, f, im, ie, r, log, err, errlen) != 0) goto out;
    if (o->hessian_path && match_hessian(o, f, r, &hs, &he, log, err, errlen) != 0) goto out;
    for (int i = 0; i < n; i++) {
        r->src_bytes += r->tensors[i].src_bytes;
        r->out_bytes += r->tensors[i].nbytes;
        if (r->tensors[i].fallback)
            fprintf(log, "moeq: note: %s: row length %llu does not fit the planned type; using %s\n",
                    r->tensors[i].name, (unsigned long long)r->tensors[i].ne[0], moeq_type_name(r->tensors[i].type));
    }
    if (o->dry_run) { rc = 0; goto out; }

    gguf_writer *w = gguf_writer_open_inputs(o->out_path, inputs, n_inputs, err, errlen);
    if (!w) goto out;
    int split_ok = 1;
    if (write_header(o, f, im, r, w) != 0) split_ok = 0;
    else if (o->keep_split) {
        uint32_t *part_of = calloc(f->n_tensors ? (size_t)f->n_tensors : 1, sizeof *part_of);
        for (uint64_t i = 0; part_of && i < f->n_tensors; i++) part_of[i] = f->tensors[i].part;
        split_ok = part_of && gguf_writer_split(w, part_of, f->n_parts) == 0;
        free(part_of);
    } else if (o->split_max_size) {
        split_ok = gguf_writer_split_max_size(w, o->split_max_size, NULL) == 0;
    }
    if (!split_ok || gguf_writer_begin_data(w) != 0) {
        moeq_fail(err, errlen, "%s", gguf_writer_error(w));
        gguf_writer_abort(w);
        goto out;
    }
    moeq_hseq *seq = NULL;
    if (o->calib_text) {
        /* (a line per pass: progress, so only when progress is shown) */
        struct moeq_hseq_opts so = { o->in_path, o->calib_text, o->calib_len, o->calib_path, o->calib_ctx,
                                     o->calib_chunks, o->n_threads, o->progress ? log : NULL };
        if (!(seq = moeq_hseq_open(&so, err, errlen))) { gguf_writer_abort(w); goto out; }
    }
    moeq_pool *pool = moeq_pool_new(o->n_threads);
    const int nth = moeq_pool_size(pool);
    r->n_threads = nth;
    const double t0 = moeq_now_s();
    uint64_t done_bytes = 0;
    double *acc = calloc((size_t)nth * 4, sizeof(double));
    int ok = 1;
    if (!acc) { moeq_fail(err, errlen, "out of memory"); ok = 0; }
    for (int i = 0; ok && i < n; i++) {
        const gguf_tensor *t = &f->tensors[i];
        /* a NaN or Inf would be written as all-zero blocks: refuse the source */
        char ferr[512];
        if (moeq_tensor_check_finite(t, ferr, sizeof ferr) != 0) {
            moeq_fail(err, errlen, "quantize: %s: %s; refusing to convert it", o->in_path, ferr);
            ok = 0;
            break;
        }
        if (!r->tensors[i].quantized) {
            ok = gguf_writer_write(w, t->data, (size_t)t->nbytes) == 0;
            if (!ok) moeq_fail(err, errlen, "%s", gguf_writer_error(w));
        } else if (seq) {
            ok = write_tensor_seq(o, t, &r->tensors[i], ie[i], seq, pool, acc, w, err, errlen) == 0;
        } else if (write_tensor(o, t, &r->tensors[i], ie[i], he ? he[i] : NULL, pool, acc, sink_writer, w, err, errlen) != 0) {
            const char *we = gguf_writer_error(w);
            if (we && *we) moeq_fail(err, errlen, "%s", we);
            ok = 0;
        }
        done_bytes += t->nbytes;
        if (ok && o->progress) {
            struct moeq_quantize_progress p = { i, n, &r->tensors[i], done_bytes, r->src_bytes, moeq_now_s() - t0 };
            o->progress(o->progress_ctx, &p);
        }
    }
    free(acc);
    moeq_pool_free(pool);
    if (seq) {
        int passes;
        double secs;
        moeq_hseq_stats(seq, &passes, &secs);
        if (ok && o->progress) fprintf(log, "moeq: Hessian statistics layer by layer: %d passes over %s in %.1f s\n", passes,
                        o->calib_path ? o->calib_path : "the calibration text", secs);
        moeq_hseq_close(seq);
    }
    if (!ok) { gguf_writer_abort(w); goto out; }
    if (gguf_writer_finish(w) != 0) { moeq_fail(err, errlen, "quantize: %s", gguf_writer_error(NULL)); goto out; }
    r->seconds = moeq_now_s() - t0;
    rc = 0;
out:
    free(ie);
    free(he);
    moeq_hessian_free(hs);
    moeq_imatrix_free(im);
    gguf_close(f);
    if (rc) moeq_quantize_report_free(r);
    return rc;
}
