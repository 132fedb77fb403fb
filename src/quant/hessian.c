/*
 * hessian.c: collecting, saving and loading full input second moments (see
 * hessian.h). Collection adds the lower triangle only (half the work);
 * moeq_hessian_matrix mirrors it. Saving writes the full symmetric
 * matrices as F32 so a reader needs no convention.
 */
#include "quant/hessian.h"
#include "gguf/gguf.h"
#include "quant/quants.h"
#include "quant/tensor_groups.h"
#include "util/util.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* An entry's heap members, for moeq_free_owned / moeq_free_entries. */
static const size_t entry_owned[] = { offsetof(struct moeq_hessian_entry, name),
                                      offsetof(struct moeq_hessian_entry, h),
                                      offsetof(struct moeq_hessian_entry, counts) };
#define N_OWNED (int)(sizeof entry_owned / sizeof entry_owned[0])

struct moeq_hessian *moeq_hessian_new(void)
{
    return calloc(1, sizeof(struct moeq_hessian));
}

void moeq_hessian_free(struct moeq_hessian *hs)
{
    if (hs) moeq_free_entries(hs->entries, (size_t)hs->n_entries, sizeof *hs->entries, entry_owned, N_OWNED);
    free(hs);
}

static struct moeq_hessian_entry *find_exact(const struct moeq_hessian *hs, const char *name)
{
    for (int64_t i = 0; i < hs->n_entries; i++)
        if (!strcmp(hs->entries[i].name, name)) return &hs->entries[i];
    return NULL;
}

struct moeq_hessian_entry *moeq_hessian_find(const struct moeq_hessian *hs, const char *name)
{
    struct moeq_hessian_entry *e = find_exact(hs, name);
    char alt[512];
    if (!e && moeq_shared_input_sibling(name, alt, sizeof alt)) e = find_exact(hs, alt);
    return e;
}

static struct moeq_hessian_entry *get(struct moeq_hessian *hs, const char *name, int64_t n, int64_t n_mat,
                                      char *err, size_t errlen)
{
    struct moeq_hessian_entry *e = find_exact(hs, name);
    if (e) {
        if (e->n != n || e->n_mat != n_mat) {
            moeq_set_err(err, errlen, "hessian: %s: %lld x %lld matrices, now given %lld x %lld", name,
                         (long long)e->n, (long long)e->n_mat, (long long)n, (long long)n_mat);
            return NULL;
        }
        return e;
    }
    if (hs->n_entries == hs->cap) {
        int64_t cap = hs->cap ? 2 * hs->cap : 32;
        void *ne = realloc(hs->entries, (size_t)cap * sizeof *hs->entries);
        if (!ne) goto oom;
        hs->entries = ne;
        hs->cap = cap;
    }
    e = &hs->entries[hs->n_entries];
    memset(e, 0, sizeof *e);
    e->name = strdup(name);
    e->n = n;
    e->n_mat = n_mat;
    e->h = calloc((size_t)(n * n * n_mat), sizeof *e->h);
    e->counts = calloc((size_t)n_mat, sizeof *e->counts);
    if (!e->name || !e->h || !e->counts) {
        moeq_free_owned(e, entry_owned, N_OWNED);
        goto oom;
    }
    hs->n_entries++;
    return e;
oom:
    moeq_set_err(err, errlen, "hessian: out of memory for %s (%lld x %lld x %lld)", name, (long long)n,
                 (long long)n, (long long)n_mat);
    return NULL;
}

int moeq_hessian_add(struct moeq_hessian *hs, const char *name, int64_t n_mat, int64_t m, const float *x,
                     int n_rows, int64_t n, char *err, size_t errlen)
{
    struct moeq_hessian_entry *e = get(hs, name, n, n_mat, err, errlen);
    if (!e) return -1;
    if (m < 0 || m >= n_mat) {
        moeq_set_err(err, errlen, "hessian: %s: matrix %lld of %lld", name, (long long)m, (long long)n_mat);
        return -1;
    }
    double *h = e->h + (size_t)m * (size_t)(n * n);
    for (int r = 0; r < n_rows; r++) {
        const float *xr = x + (size_t)r * (size_t)n;
        for (int64_t i = 0; i < n; i++) {
            const double xi = xr[i];
            if (xi == 0) continue;
            double *hi = h + i * n;
            for (int64_t j = 0; j <= i; j++) hi[j] += xi * xr[j];
        }
    }
    e->counts[m] += n_rows;
    return 0;
}

double *moeq_hessian_matrix(const struct moeq_hessian_entry *e, int64_t m)
{
    const int64_t n = e->n;
    double *out = malloc((size_t)(n * n) * sizeof *out);
    if (!out || m < 0 || m >= e->n_mat) { free(out); return NULL; }
    const double *h = e->h + (size_t)m * (size_t)(n * n);
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j <= i; j++) out[i * n + j] = out[j * n + i] = h[i * n + j];
    return out;
}

int moeq_hessian_save(const struct moeq_hessian *hs, const char *path, const char *const *inputs, int n_inputs,
                      char *err, size_t errlen)
{
    gguf_writer *w = gguf_writer_open_inputs(path, inputs, n_inputs, err, errlen);
    if (!w) return -1;
    int ok = gguf_writer_add_str(w, "general.type", "moeq.hessian") == 0;
    for (int64_t i = 0; ok && i < hs->n_entries; i++) {
        const struct moeq_hessian_entry *e = &hs->entries[i];
        char name[600];
        uint64_t ne_h[3] = { (uint64_t)e->n, (uint64_t)e->n, (uint64_t)e->n_mat }, ne_c[1] = { (uint64_t)e->n_mat };
        snprintf(name, sizeof name, "%s.hessian", e->name);
        ok = gguf_writer_add_tensor(w, name, MOEQ_TYPE_F32, 3, ne_h) >= 0;
        snprintf(name, sizeof name, "%s.hcounts", e->name);
        ok = ok && gguf_writer_add_tensor(w, name, MOEQ_TYPE_F32, 1, ne_c) >= 0;
    }
    ok = ok && gguf_writer_begin_data(w) == 0;
    for (int64_t i = 0; ok && i < hs->n_entries; i++) {
        const struct moeq_hessian_entry *e = &hs->entries[i];
        float *row = malloc((size_t)e->n * sizeof *row);
        ok = row != NULL;
        for (int64_t m = 0; ok && m < e->n_mat; m++) {
            const double *h = e->h + (size_t)m * (size_t)(e->n * e->n);
            for (int64_t r = 0; ok && r < e->n; r++) {
                for (int64_t c = 0; c < e->n; c++) row[c] = (float)(c <= r ? h[r * e->n + c] : h[c * e->n + r]);
                ok = gguf_writer_write(w, row, (size_t)e->n * sizeof *row) == 0;
            }
        }
        for (int64_t m = 0; ok && m < e->n_mat; m++) {
            float c = (float)e->counts[m];
            ok = gguf_writer_write(w, &c, sizeof c) == 0;
        }
        free(row);
    }
    return gguf_writer_end(w, ok, err, errlen);
}

static int ends_with(const char *s, size_t n, const char *suf)
{
    size_t m = strlen(suf);
    return n >= m && !memcmp(s + n - m, suf, m);
}

int moeq_hessian_load(struct moeq_hessian *hs, const char *path, char *err, size_t errlen)
{
    char gerr[512];
    gguf_file *f = gguf_open(path, gerr, sizeof gerr);
    if (!f) { moeq_set_err(err, errlen, "%s", gerr); return -1; }
    char type[64] = "";
    int rc = -1;
    if (gguf_get_str(f, "general.type", type, sizeof type) != 0 || strcmp(type, "moeq.hessian")) {
        for (char *c = type; *c; c++)
            if ((unsigned char)*c < 0x20 || *c == 0x7f) *c = '?';   /* the message stays one line */
        moeq_set_err(err, errlen, "%s: general.type is '%s', not moeq.hessian (write one with moeq imatrix --hessian)",
                     path, type);
        goto out;
    }
    for (uint64_t t = 0; t < f->n_tensors; t++) {
        const gguf_tensor *ht = &f->tensors[t];
        size_t nl = ht->name.n;
        if (!ends_with(ht->name.s, nl, ".hessian")) continue;
        char base[600], cname[620];
        if (nl - 8 >= sizeof base) { moeq_set_err(err, errlen, "%s: tensor name too long", path); goto out; }
        memcpy(base, ht->name.s, nl - 8);
        base[nl - 8] = 0;
        snprintf(cname, sizeof cname, "%s.hcounts", base);
        int64_t ci = gguf_find_tensor(f, cname);
        const uint64_t n = ht->ne[0], n_mat = ht->ne[2];
        if (ht->type != MOEQ_TYPE_F32 || ht->n_dims != 3 || ht->ne[1] != n || n == 0 || n > (1u << 16) ||
            n_mat == 0 || n_mat > 4096) {
            moeq_set_err(err, errlen, "%s: tensor %s: expected F32 [n, n, n_mat]", path, base);
            goto out;
        }
        if (ci < 0 || f->tensors[ci].type != MOEQ_TYPE_F32 || f->tensors[ci].ne[0] != n_mat ||
            f->tensors[ci].nbytes < n_mat * 4) {
            moeq_set_err(err, errlen, "%s: tensor %s: no matching %s.hcounts [%llu]", path, base, base,
                         (unsigned long long)n_mat);
            goto out;
        }
        struct moeq_hessian_entry *e = get(hs, base, (int64_t)n, (int64_t)n_mat, err, errlen);
        if (!e) goto out;
        const float *src = ht->data, *cnt = f->tensors[ci].data;
        for (uint64_t m = 0; m < n_mat; m++) {
            double *h = e->h + m * n * n;
            for (uint64_t i = 0; i < n; i++)
                for (uint64_t j = 0; j <= i; j++) {
                    float v = src[(m * n + i) * n + j];
                    if (!(v == v) || v - v != 0) {
                        moeq_set_err(err, errlen, "%s: tensor %s: value (%llu, %llu) of matrix %llu is not a number",
                                     path, base, (unsigned long long)i, (unsigned long long)j, (unsigned long long)m);
                        goto out;
                    }
                    h[i * n + j] += v;
                }
            if (!(cnt[m] >= 0)) {
                moeq_set_err(err, errlen, "%s: tensor %s.hcounts: count %llu is not a count", path, base,
                             (unsigned long long)m);
                goto out;
            }
            e->counts[m] += cnt[m];
        }
    }
    rc = 0;
out:
    gguf_close(f);
    return rc;
}
