/*
 * imatrix.c: importance-matrix storage, accumulation, and the two file
 * formats llama.cpp uses (legacy .dat and GGUF). The legacy format stores
 * per-element means scaled by the call count; internally everything is
 * kept as raw sums and counts (doubles, so long calibration runs do not
 * lose small contributions), which both formats convert to exactly.
 */
#include "quant/imatrix.h"
#include "gguf/gguf.h"
#include "util/outfile.h"
#include "quant/quants.h"
#include "quant/tensor_groups.h"
#include "util/util.h"

#include <errno.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void *xcalloc(size_t n, size_t sz)
{
    void *p = calloc(n ? n : 1, sz);
    if (!p) { fprintf(stderr, "moeq: out of memory\n"); exit(1); }
    return p;
}

static char *xstrndup(const char *s, size_t n)
{
    char *p = xcalloc(n + 1, 1);
    memcpy(p, s, n);
    return p;
}

/* An entry's heap members, for moeq_free_entries. */
static const size_t entry_owned[] = { offsetof(struct moeq_imatrix_entry, name),
                                      offsetof(struct moeq_imatrix_entry, sums),
                                      offsetof(struct moeq_imatrix_entry, counts) };

struct moeq_imatrix *moeq_imatrix_new(void)
{
    return xcalloc(1, sizeof(struct moeq_imatrix));
}

void moeq_imatrix_free(struct moeq_imatrix *im)
{
    if (!im) return;
    for (int i = 0; i < im->n_datasets; i++) free(im->datasets[i]);
    free(im->datasets);
    moeq_free_entries(im->entries, (size_t)im->n_entries, sizeof *im->entries, entry_owned,
                      (int)(sizeof entry_owned / sizeof entry_owned[0]));
    free(im);
}

struct moeq_imatrix_entry *moeq_imatrix_find(const struct moeq_imatrix *im, const char *name)
{
    for (int64_t i = 0; i < im->n_entries; i++)
        if (strcmp(im->entries[i].name, name) == 0) return &im->entries[i];
    return NULL;
}

struct moeq_imatrix_entry *moeq_imatrix_find_weight(const struct moeq_imatrix *im, const char *name)
{
    struct moeq_imatrix_entry *e = moeq_imatrix_find(im, name);
    char alt[512];
    if (!e && moeq_shared_input_sibling(name, alt, sizeof alt)) e = moeq_imatrix_find(im, alt);
    return e;
}

struct moeq_imatrix_entry *moeq_imatrix_get(struct moeq_imatrix *im, const char *name,
                                            int64_t n_per_row, int64_t n_mat,
                                            char *err, size_t errlen)
{
    struct moeq_imatrix_entry *e = moeq_imatrix_find(im, name);
    if (e) {
        if (e->n_per_row == n_per_row && e->n_mat == n_mat) return e;
        /* legacy data has no matrix count: accept the same total and
         * re-split it, spreading the shared count over every matrix */
        if (e->n_mat == 1 && e->n_per_row == n_per_row * n_mat) {
            double c = e->counts[0];
            free(e->counts);
            e->counts = xcalloc((size_t)n_mat, sizeof(double));
            for (int64_t m = 0; m < n_mat; m++) e->counts[m] = c;
            e->n_per_row = n_per_row;
            e->n_mat = n_mat;
            return e;
        }
        moeq_set_err(err, errlen, "imatrix entry %s has %lld x %lld values, expected %lld x %lld",
                     name, (long long)e->n_per_row, (long long)e->n_mat,
                     (long long)n_per_row, (long long)n_mat);
        return NULL;
    }
    if (n_per_row <= 0 || n_mat <= 0 || n_per_row > (1 << 26) || n_mat > (1 << 16)) {
        moeq_set_err(err, errlen, "imatrix entry %s: bad shape %lld x %lld", name,
                     (long long)n_per_row, (long long)n_mat);
        return NULL;
    }
    if (im->n_entries == im->cap) {
        im->cap = im->cap ? im->cap * 2 : 64;
        im->entries = realloc(im->entries, (size_t)im->cap * sizeof *im->entries);
        if (!im->entries) { fprintf(stderr, "moeq: out of memory\n"); exit(1); }
    }
    e = &im->entries[im->n_entries++];
    memset(e, 0, sizeof *e);
    e->name = xstrndup(name, strlen(name));
    e->n_per_row = n_per_row;
    e->n_mat = n_mat;
    e->sums = xcalloc((size_t)(n_per_row * n_mat), sizeof(double));
    e->counts = xcalloc((size_t)n_mat, sizeof(double));
    return e;
}

void moeq_imatrix_add(struct moeq_imatrix_entry *e, int64_t mat, const float *x, int64_t n_rows)
{
    double *s = e->sums + mat * e->n_per_row;
    for (int64_t r = 0; r < n_rows; r++) {
        const float *row = x + r * e->n_per_row;
        for (int64_t j = 0; j < e->n_per_row; j++) s[j] += (double)row[j] * row[j];
    }
    e->counts[mat] += (double)n_rows;
}

void moeq_imatrix_add_dataset(struct moeq_imatrix *im, const char *name)
{
    if (!name || !*name) return;
    for (int i = 0; i < im->n_datasets; i++)
        if (strcmp(im->datasets[i], name) == 0) return;
    char **d = realloc(im->datasets, (size_t)(im->n_datasets + 1) * sizeof *d);
    if (!d) { fprintf(stderr, "moeq: out of memory\n"); exit(1); }
    im->datasets = d;
    im->datasets[im->n_datasets++] = xstrndup(name, strlen(name));
}

/* Expert m's sums and count (a legacy flat vector shares one count), and
 * whether it has data: a count, some nonzero sum, and not the writers'
 * placeholder for an unrouted expert (llama-imatrix's and ours: every
 * column's mean exactly 1, sums equal to the count). */
static int expert_data(const struct moeq_imatrix_entry *e, int64_t ne0, int64_t n_expert, int64_t m,
                       const double **s, double *c)
{
    *s = e->sums + m * ne0;
    *c = e->n_mat == n_expert ? e->counts[m] : e->counts[0];
    int any = 0, ones = n_expert > 1;
    for (int64_t j = 0; j < ne0; j++) {
        any |= (*s)[j] != 0.0;
        ones &= (*s)[j] == *c;
    }
    return *c > 0.0 && any && !ones;
}

int moeq_imatrix_expert_has_data(const struct moeq_imatrix_entry *e, int64_t ne0, int64_t n_expert, int64_t expert)
{
    if (!(e->n_per_row == ne0 && e->n_mat == n_expert) && !(e->n_mat == 1 && e->n_per_row == ne0 * n_expert)) return 0;
    const double *s;
    double c;
    return expert_data(e, ne0, n_expert, expert, &s, &c);
}

int moeq_imatrix_weights(const struct moeq_imatrix_entry *e, int64_t ne0, int64_t n_expert,
                         int64_t expert, float *out)
{
    if (!(e->n_per_row == ne0 && e->n_mat == n_expert) &&
        !(e->n_mat == 1 && e->n_per_row == ne0 * n_expert))   /* legacy: experts side by side */
        return -1;
    const double *s;
    double c;
    if (!expert_data(e, ne0, n_expert, expert, &s, &c)) {
        /* an expert never routed: the mean of the tensor's other experts
         * that have data (their statistics are the best guess), ones when
         * none has; each share clamped so the sum stays finite, as the
         * routed case saturates */
        int n_ok = 0;
        for (int64_t m = 0; m < n_expert; m++)
            if (m != expert && expert_data(e, ne0, n_expert, m, &s, &c)) n_ok++;
        for (int64_t j = 0; j < ne0; j++) out[j] = n_ok ? 0.0f : 1.0f;
        const double cap = (double)FLT_MAX / (n_ok + 1);   /* headroom for rounding */
        for (int64_t m = 0; n_ok && m < n_expert; m++) {
            if (m == expert || !expert_data(e, ne0, n_expert, m, &s, &c)) continue;
            for (int64_t j = 0; j < ne0; j++) {
                double w = s[j] / c / n_ok;
                out[j] += (float)(w < cap ? w : cap);
            }
        }
        return 1;
    }
    /* A tiny count under big sums (a file may hold any finite floats, and
     * merged sums grow) gives a mean past float range: saturate, so the
     * weights stay finite (and the conversion defined). */
    for (int64_t j = 0; j < ne0; j++) {
        double w = s[j] / c;
        out[j] = w < FLT_MAX ? (float)w : FLT_MAX;
    }
    return 0;
}

int64_t moeq_imatrix_shrink_low_counts(struct moeq_imatrix *im, double frac, int64_t *n_tensors)
{
    int64_t n = 0, nt = 0;
    for (int64_t i = 0; i < im->n_entries; i++) {
        struct moeq_imatrix_entry *e = &im->entries[i];
        if (e->n_mat <= 1) continue;
        const int64_t ne0 = e->n_per_row;
        double csum = 0;
        int64_t n_data = 0;
        const double *s;
        double c;
        for (int64_t m = 0; m < e->n_mat; m++)
            if (expert_data(e, ne0, e->n_mat, m, &s, &c)) { csum += c; n_data++; }
        if (n_data < 2) continue;
        const double T = frac * csum / (double)n_data;
        int64_t changed = 0;
        double *mu = NULL;
        for (int64_t m = 0; m < e->n_mat; m++) {
            if (!expert_data(e, ne0, e->n_mat, m, &s, &c) || c >= T) continue;
            if (!mu) {   /* the entry's count-weighted mean, before any change */
                mu = xcalloc((size_t)ne0, sizeof *mu);
                for (int64_t k = 0; k < e->n_mat; k++) {
                    const double *sk;
                    double ck;
                    if (!expert_data(e, ne0, e->n_mat, k, &sk, &ck)) continue;
                    for (int64_t j = 0; j < ne0; j++) mu[j] += sk[j] / csum;
                }
            }
            double *sm = e->sums + m * ne0;
            for (int64_t j = 0; j < ne0; j++) sm[j] = (sm[j] + (T - c) * mu[j]) / T * c;
            changed++;
        }
        free(mu);
        n += changed;
        nt += changed > 0;
    }
    if (n_tensors) *n_tensors = nt;
    return n;
}

/* ------------------------------------------------------------- loading */

struct rd { const uint8_t *p; size_t n, off; const char *path; char *err; size_t errlen; int bad; };

static int rd_bytes(struct rd *r, void *dst, size_t n, const char *what)
{
    if (r->bad) return -1;
    if (n > r->n - r->off) {
        moeq_set_err(r->err, r->errlen, "%s: byte %zu: truncated reading %s", r->path, r->off, what);
        r->bad = 1;
        return -1;
    }
    memcpy(dst, r->p + r->off, n);
    r->off += n;
    return 0;
}

/* Index of the first control character of an entry name, or -1. Names go
 * into one-line messages (and tensor lookups): both readers refuse them. */
static long control_char(const char *s, size_t n)
{
    for (size_t k = 0; k < n; k++)
        if ((unsigned char)s[k] < 0x20 || s[k] == 0x7f) return (long)k;
    return -1;
}

static int load_dat(struct moeq_imatrix *im, struct rd *r)
{
    int32_t n_entries;
    if (rd_bytes(r, &n_entries, 4, "entry count")) return -1;
    if (n_entries < 1 || (size_t)n_entries > r->n / 12) {
        moeq_set_err(r->err, r->errlen, "%s: byte 0: bad entry count %d", r->path, n_entries);
        return -1;
    }
    float *tmp = NULL;
    for (int32_t i = 0; i < n_entries; i++) {
        int32_t len, ncall, nval;
        size_t at = r->off;
        if (rd_bytes(r, &len, 4, "name length")) goto fail;
        if (len < 1 || len > 4096 || (size_t)len > r->n - r->off) {
            moeq_set_err(r->err, r->errlen, "%s: byte %zu: entry %d: bad name length %d", r->path, at, i, len);
            goto fail;
        }
        char name[4097];
        if (rd_bytes(r, name, (size_t)len, "name")) goto fail;
        name[len] = 0;
        if (strlen(name) != (size_t)len) {
            moeq_set_err(r->err, r->errlen, "%s: byte %zu: entry %d: name contains NUL", r->path, at, i);
            goto fail;
        }
        if (control_char(name, (size_t)len) >= 0) {
            moeq_set_err(r->err, r->errlen, "%s: byte %zu: entry %d: name contains control character 0x%02x",
                    r->path, at, i, (unsigned char)name[control_char(name, (size_t)len)]);
            goto fail;
        }
        at = r->off;
        if (rd_bytes(r, &ncall, 4, "ncall") || rd_bytes(r, &nval, 4, "value count")) goto fail;
        if (ncall < 0 || nval < 1 || (size_t)nval > (r->n - r->off) / 4) {
            moeq_set_err(r->err, r->errlen, "%s: byte %zu: entry %s: bad ncall %d or value count %d",
                         r->path, at, name, ncall, nval);
            goto fail;
        }
        free(tmp);
        tmp = xcalloc((size_t)nval, sizeof(float));
        if (rd_bytes(r, tmp, (size_t)nval * 4, "values")) goto fail;
        for (int32_t j = 0; j < nval; j++) {
            if (!isfinite(tmp[j]) || tmp[j] < 0) {
                moeq_set_err(r->err, r->errlen, "%s: entry %s: value %d is %g (not a finite sum of squares)",
                             r->path, name, j, (double)tmp[j]);
                goto fail;
            }
        }
        /* stored values are mean * ncall. Scaled by the chunk size (tokens
         * per call, when known) they become raw sums over ncall * chunk
         * tokens, so they merge with token-counted data at the right weight */
        const double cs = im->chunk_size > 0 ? (double)im->chunk_size : 1.0;
        struct moeq_imatrix_entry *e = moeq_imatrix_find(im, name);
        if (!e) e = moeq_imatrix_get(im, name, nval, 1, r->err, r->errlen);
        if (!e) goto fail;
        if (e->n_per_row * e->n_mat != nval) {
            moeq_set_err(r->err, r->errlen, "%s: entry %s has %d values, already loaded with %lld",
                         r->path, name, nval, (long long)(e->n_per_row * e->n_mat));
            goto fail;
        }
        for (int64_t m = 0; m < e->n_mat; m++) {
            for (int64_t j = 0; j < e->n_per_row; j++)
                e->sums[m * e->n_per_row + j] += tmp[m * e->n_per_row + j] * cs;
            e->counts[m] += ncall * cs;
        }
        e->ncall += ncall;
    }
    free(tmp);
    tmp = NULL;
    /* optional trailer: chunk count, then dataset name; absent in old
     * files, but a trailer that is present must be whole */
    size_t left = r->n - r->off;
    if (left > 0) {
        int32_t chunks, len;
        if (rd_bytes(r, &chunks, 4, "chunk count")) return -1;
        if (chunks > 0) im->chunk_count += chunks;
        if (r->n - r->off > 0) {
            size_t at = r->off;
            if (rd_bytes(r, &len, 4, "dataset name length")) return -1;
            if (len < 0 || (size_t)len > r->n - r->off) {
                moeq_set_err(r->err, r->errlen, "%s: byte %zu: bad dataset name length %d", r->path, at, len);
                return -1;
            }
            char *ds = xstrndup((const char *)r->p + r->off, (size_t)len);
            r->off += (size_t)len;
            moeq_imatrix_add_dataset(im, ds);
            free(ds);
        }
    }
    return 0;
fail:
    free(tmp);
    return -1;
}

static int load_gguf(struct moeq_imatrix *im, const char *path, char *err, size_t errlen)
{
    gguf_file *f = gguf_open(path, err, errlen);
    if (!f) return -1;
    int rc = -1;
    const gguf_kv *ds = gguf_find_kv(f, "imatrix.datasets");
    if (ds && ds->val.type == GGUF_TYPE_ARRAY && ds->val.v.arr.type == GGUF_TYPE_STRING) {
        for (uint64_t i = 0; i < ds->val.v.arr.n; i++) {
            const gguf_str *s = &ds->val.v.arr.items[i].v.str;
            char *d = xstrndup(s->s, (size_t)s->n);
            moeq_imatrix_add_dataset(im, d);
            free(d);
        }
    }
    uint64_t u;
    if (gguf_get_u64(f, "imatrix.chunk_count", &u) == 0) im->chunk_count += (int64_t)u;
    if (gguf_get_u64(f, "imatrix.chunk_size", &u) == 0) im->chunk_size = (int64_t)u;
    int n_found = 0;
    for (uint64_t t = 0; t < f->n_tensors; t++) {
        const gguf_tensor *ts = &f->tensors[t];
        const char *suffix = ".in_sum2";
        size_t sl = strlen(suffix);
        if (ts->name.n <= sl || memcmp(ts->name.s + ts->name.n - sl, suffix, sl) != 0) continue;
        char name[1024];
        size_t nl = (size_t)ts->name.n - sl;
        if (nl >= sizeof name) continue;
        memcpy(name, ts->name.s, nl);
        name[nl] = 0;
        if (control_char(name, nl) >= 0) {
            moeq_set_err(err, errlen, "%s: tensor %llu: name contains control character 0x%02x", path,
                    (unsigned long long)t, (unsigned char)name[control_char(name, nl)]);
            goto done;
        }
        char cname[1100];
        snprintf(cname, sizeof cname, "%s.counts", name);
        int64_t ci = gguf_find_tensor(f, cname);
        if (ci < 0) {
            moeq_set_err(err, errlen, "%s: tensor %s has no matching %s", path, ts->name.s ? name : "?", cname);
            goto done;
        }
        const gguf_tensor *tc = &f->tensors[ci];
        if (ts->type != MOEQ_TYPE_F32 || tc->type != MOEQ_TYPE_F32 || ts->n_dims > 2 ||
            tc->ne[0] != 1 || tc->ne[1] != ts->ne[1] || ts->ne[2] != 1 || ts->ne[3] != 1) {
            moeq_set_err(err, errlen, "%s: tensor %s: in_sum2/counts must be F32 [n, n_mat] and [1, n_mat]", path, name);
            goto done;
        }
        int64_t n_per_row = (int64_t)ts->ne[0], n_mat = (int64_t)ts->ne[1];
        struct moeq_imatrix_entry *e = moeq_imatrix_get(im, name, n_per_row, n_mat, err, errlen);
        if (!e) goto done;
        const float *sums = ts->data, *counts = tc->data;
        for (int64_t m = 0; m < n_mat; m++) {
            float c;
            memcpy(&c, counts + m, 4);
            if (!isfinite(c) || c < 0) {
                moeq_set_err(err, errlen, "%s: tensor %s: count %lld is %g", path, cname, (long long)m, (double)c);
                goto done;
            }
            e->counts[m] += c;
            for (int64_t j = 0; j < n_per_row; j++) {
                float v;
                memcpy(&v, sums + m * n_per_row + j, 4);
                if (!isfinite(v) || v < 0) {
                    moeq_set_err(err, errlen, "%s: tensor %s.in_sum2: value %lld is %g", path, name,
                                 (long long)(m * n_per_row + j), (double)v);
                    goto done;
                }
                e->sums[m * n_per_row + j] += v;
            }
        }
        e->ncall += (int64_t)(im->chunk_count > 0 ? im->chunk_count : 1);
        n_found++;
    }
    if (n_found == 0) {
        moeq_set_err(err, errlen, "%s: no imatrix entries (no *.in_sum2 tensors)", path);
        goto done;
    }
    rc = 0;
done:
    gguf_close(f);
    return rc;
}

int moeq_imatrix_load(struct moeq_imatrix *im, const char *path, char *err, size_t errlen)
{
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        moeq_set_err(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    char magic[4] = {0};
    size_t got = fread(magic, 1, 4, fp);
    if (got == 4 && memcmp(magic, "GGUF", 4) == 0) {
        fclose(fp);
        return load_gguf(im, path, err, errlen);
    }
    if (fseek(fp, 0, SEEK_END) != 0) {
        moeq_set_err(err, errlen, "%s: cannot seek: %s", path, strerror(errno));
        fclose(fp);
        return -1;
    }
    long sz = ftell(fp);
    if (sz < 4) {
        fclose(fp);
        moeq_set_err(err, errlen, "%s: byte 0: file too short for an imatrix (%ld bytes)", path, sz < 0 ? 0 : sz);
        return -1;
    }
    rewind(fp);
    uint8_t *buf = xcalloc((size_t)sz, 1);
    if (fread(buf, 1, (size_t)sz, fp) != (size_t)sz) {
        moeq_set_err(err, errlen, "%s: cannot read: %s", path, ferror(fp) ? strerror(errno) : "the file shrank while read");
        fclose(fp);
        free(buf);
        return -1;
    }
    fclose(fp);
    struct rd r = { buf, (size_t)sz, 0, path, err, errlen, 0 };
    int rc = load_dat(im, &r);
    free(buf);
    return rc;
}

/* -------------------------------------------------------------- saving */

/* Which matrices of e lack data; returns the count and fills missing[]. */
static int64_t missing_mats(const struct moeq_imatrix_entry *e, unsigned char *missing)
{
    int64_t n = 0;
    for (int64_t m = 0; m < e->n_mat; m++) {
        missing[m] = e->counts[m] <= 0.0;
        n += missing[m];
    }
    return n;
}

/* llama-imatrix's rule: store a tensor with a few missing experts (filled
 * with ones), skip one with many (or with none at all). Each case is
 * reported on stderr when report is set. */
static int entry_storable_report(const struct moeq_imatrix_entry *e, unsigned char *missing, int report)
{
    int64_t nm = missing_mats(e, missing);
    if (nm == 0) return 1;
    if (nm == e->n_mat) {
        if (report) fprintf(stderr, "moeq: imatrix: %s has no data - skipping\n", e->name);
        return 0;
    }
    /* unlike llama-imatrix (which skips a tensor with 5% of its experts
     * unrouted, leaving quantize without data for all of them), keep the
     * routed experts' data; the missing ones are stored with ones and the
     * quantizer fills them from the other experts */
    const int keep = e->n_mat > 1;
    if (!report) return keep;
    fprintf(stderr, "moeq: imatrix: %s: %lld of %lld experts never routed:", e->name,
            (long long)nm, (long long)e->n_mat);
    for (int64_t m = 0; m < e->n_mat; m++)
        if (missing[m]) fprintf(stderr, " %lld", (long long)m);
    fprintf(stderr, keep ? " - keeping the other experts' data\n" : " - skipping the tensor\n");
    return keep;
}

static int entry_storable(const struct moeq_imatrix_entry *e, unsigned char *missing)
{
    return entry_storable_report(e, missing, 1);
}

int64_t moeq_imatrix_n_storable(const struct moeq_imatrix *im)
{
    int64_t n = 0;
    for (int64_t i = 0; i < im->n_entries; i++) {
        unsigned char *missing = xcalloc((size_t)im->entries[i].n_mat, 1);
        n += entry_storable_report(&im->entries[i], missing, 0);
        free(missing);
    }
    return n;
}

/* What the files store, computed in one place for the writers and the
 * check before writing. The legacy call count is an int32: a merge of
 * long runs can exceed it, so it saturates, and the stored values (mean
 * times the stored count) keep every mean exact; only the weight of this
 * file in a later merge is capped. Chunk counts saturate the same way. */
static int32_t dat_ncall(const struct moeq_imatrix_entry *e)
{
    return e->ncall > INT32_MAX ? INT32_MAX : e->ncall > 0 ? (int32_t)e->ncall : 1;
}

static float dat_value(const struct moeq_imatrix_entry *e, int64_t m, int64_t j)
{
    const int32_t ncall = dat_ncall(e);
    return e->counts[m] > 0 ? (float)(e->sums[m * e->n_per_row + j] / e->counts[m] * ncall)
                            : (float)ncall; /* a missing expert stored with ones */
}

static float gguf_sum(const struct moeq_imatrix_entry *e, int64_t m, int64_t j)
{
    return e->counts[m] > 0 ? (float)e->sums[m * e->n_per_row + j] : 1.0f;
}

static float gguf_count(const struct moeq_imatrix_entry *e, int64_t m)
{
    return e->counts[m] > 0 ? (float)e->counts[m] : 1.0f;
}

static uint32_t saturate_u32(int64_t v, uint32_t max)
{
    return v < 0 ? 0 : (uint64_t)v > max ? max : (uint32_t)v;
}

/* Refuse to write what the loader would refuse to read: no entry at all
 * (every one skipped for lack of data), or a stored value that is not a
 * finite non-negative number (NaN activations, a sum beyond float range). */
static int check_storable(const struct moeq_imatrix *im, const char *path, int gguf_format,
                          char *err, size_t errlen)
{
    int64_t n_store = 0;
    for (int64_t i = 0; i < im->n_entries; i++) {
        const struct moeq_imatrix_entry *e = &im->entries[i];
        unsigned char *missing = xcalloc((size_t)e->n_mat, 1);
        int store = entry_storable_report(e, missing, 0);
        free(missing);
        if (!store) continue;
        n_store++;
        for (int64_t m = 0; m < e->n_mat; m++) {
            const float c = gguf_count(e, m);
            if (gguf_format && !(isfinite(c) && c >= 0)) {
                moeq_set_err(err, errlen, "%s: entry %s: count of matrix %lld is %g; refusing to write it",
                        path, e->name, (long long)m, (double)c);
                return -1;
            }
            for (int64_t j = 0; j < e->n_per_row; j++) {
                const float v = gguf_format ? gguf_sum(e, m, j) : dat_value(e, m, j);
                if (isfinite(v) && v >= 0) continue;
                moeq_set_err(err, errlen, "%s: entry %s: value %lld (matrix %lld, column %lld) is %g, "
                        "not a finite sum of squares; refusing to write it",
                        path, e->name, (long long)(m * e->n_per_row + j), (long long)m, (long long)j, (double)v);
                return -1;
            }
        }
    }
    if (n_store == 0) {
        moeq_set_err(err, errlen, "%s: none of the %lld entries has data to store; nothing written",
                path, (long long)im->n_entries);
        return -1;
    }
    return 0;
}

static int save_dat(const struct moeq_imatrix *im, FILE *fp)
{
    unsigned char *missing = NULL;
    int32_t n_store = 0;
    unsigned char *store = xcalloc((size_t)(im->n_entries ? im->n_entries : 1), 1);
    for (int64_t i = 0; i < im->n_entries; i++) {
        const struct moeq_imatrix_entry *e = &im->entries[i];
        free(missing);
        missing = xcalloc((size_t)e->n_mat, 1);
        store[i] = (unsigned char)entry_storable(e, missing);
        n_store += store[i];
    }
    int ok = fwrite(&n_store, 4, 1, fp) == 1;
    float *vals = NULL;
    for (int64_t i = 0; ok && i < im->n_entries; i++) {
        if (!store[i]) continue;
        const struct moeq_imatrix_entry *e = &im->entries[i];
        int32_t len = (int32_t)strlen(e->name);
        int32_t ncall = dat_ncall(e);
        int32_t nval = (int32_t)(e->n_per_row * e->n_mat);
        free(vals);
        vals = xcalloc((size_t)nval, sizeof(float));
        for (int64_t m = 0; m < e->n_mat; m++)
            for (int64_t j = 0; j < e->n_per_row; j++)
                vals[m * e->n_per_row + j] = dat_value(e, m, j);
        ok = fwrite(&len, 4, 1, fp) == 1 && fwrite(e->name, 1, (size_t)len, fp) == (size_t)len &&
             fwrite(&ncall, 4, 1, fp) == 1 && fwrite(&nval, 4, 1, fp) == 1 &&
             fwrite(vals, 4, (size_t)nval, fp) == (size_t)nval;
    }
    int32_t chunks = (int32_t)saturate_u32(im->chunk_count, INT32_MAX);
    const char *ds = im->n_datasets ? im->datasets[0] : "";
    int32_t dl = (int32_t)strlen(ds);
    ok = ok && fwrite(&chunks, 4, 1, fp) == 1 && fwrite(&dl, 4, 1, fp) == 1 &&
         fwrite(ds, 1, (size_t)dl, fp) == (size_t)dl;
    free(vals);
    free(missing);
    free(store);
    return ok ? 0 : -1;
}

static int write_dat_file(const struct moeq_imatrix *im, const char *path, const char *const *inputs,
                          int n_inputs, char *err, size_t errlen)
{
    moeq_outfile *o = moeq_outfile_open(path, inputs, n_inputs, err, errlen);
    if (!o) return -1;
    if (save_dat(im, moeq_outfile_fp(o)) != 0) {
        if (moeq_outfile_failed(o, err, errlen) == 0) moeq_set_err(err, errlen, "writing %s failed", path);
        moeq_outfile_abort(o);
        return -1;
    }
    return moeq_outfile_commit(o, err, errlen);
}

static int write_gguf_file(const struct moeq_imatrix *im, const char *path, const char *const *inputs,
                           int n_inputs, char *err, size_t errlen)
{
    gguf_writer *w = gguf_writer_open_inputs(path, inputs, n_inputs, err, errlen);
    if (!w) return -1;
    int ok = gguf_writer_add_str(w, "general.type", "imatrix") == 0;
    const char **ds = xcalloc((size_t)(im->n_datasets ? im->n_datasets : 1), sizeof *ds);
    for (int i = 0; i < im->n_datasets; i++) ds[i] = im->datasets[i];
    ok = ok && gguf_writer_add_arr_str(w, "imatrix.datasets", ds, (uint64_t)im->n_datasets) == 0;
    free(ds);
    ok = ok && gguf_writer_add_u32(w, "imatrix.chunk_count", saturate_u32(im->chunk_count, UINT32_MAX)) == 0;
    ok = ok && gguf_writer_add_u32(w, "imatrix.chunk_size", saturate_u32(im->chunk_size, UINT32_MAX)) == 0;
    unsigned char *store = xcalloc((size_t)(im->n_entries ? im->n_entries : 1), 1);
    for (int64_t i = 0; ok && i < im->n_entries; i++) {
        const struct moeq_imatrix_entry *e = &im->entries[i];
        unsigned char *missing = xcalloc((size_t)e->n_mat, 1);
        store[i] = (unsigned char)entry_storable(e, missing);
        free(missing);
        if (!store[i]) continue;
        char name[1100];
        uint64_t ne_s[2] = { (uint64_t)e->n_per_row, (uint64_t)e->n_mat };
        uint64_t ne_c[2] = { 1, (uint64_t)e->n_mat };
        snprintf(name, sizeof name, "%s.in_sum2", e->name);
        ok = gguf_writer_add_tensor(w, name, MOEQ_TYPE_F32, 2, ne_s) >= 0;
        snprintf(name, sizeof name, "%s.counts", e->name);
        ok = ok && gguf_writer_add_tensor(w, name, MOEQ_TYPE_F32, 2, ne_c) >= 0;
    }
    ok = ok && gguf_writer_begin_data(w) == 0;
    float *buf = NULL;
    for (int64_t i = 0; ok && i < im->n_entries; i++) {
        if (!store[i]) continue;
        const struct moeq_imatrix_entry *e = &im->entries[i];
        free(buf);
        buf = xcalloc((size_t)(e->n_per_row * e->n_mat), sizeof(float));
        for (int64_t m = 0; m < e->n_mat; m++)
            for (int64_t j = 0; j < e->n_per_row; j++)
                buf[m * e->n_per_row + j] = gguf_sum(e, m, j);
        ok = gguf_writer_write(w, buf, (size_t)(e->n_per_row * e->n_mat) * 4) == 0;
        for (int64_t m = 0; ok && m < e->n_mat; m++) {
            float c = gguf_count(e, m);
            ok = gguf_writer_write(w, &c, 4) == 0;
        }
    }
    free(buf);
    free(store);
    return gguf_writer_end(w, ok, err, errlen);
}

int moeq_imatrix_save(const struct moeq_imatrix *im, const char *path, int gguf_format,
                      const char *const *inputs, int n_inputs, char *err, size_t errlen)
{
    if (check_storable(im, path, gguf_format, err, errlen) != 0) return -1;
    return gguf_format ? write_gguf_file(im, path, inputs, n_inputs, err, errlen)
                       : write_dat_file(im, path, inputs, n_inputs, err, errlen);
}
