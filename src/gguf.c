/*
 * gguf.c: the GGUF v2/v3 reader and writer.
 *
 * Reading: the file is mapped read-only and walked with a bounds-checked
 * cursor. Every count, length, dimension, type id and offset that comes from
 * the file is checked before it is used or allocated for, and the first
 * problem found becomes the one error line "FILE: byte N: what was wrong",
 * N being the offset of the field at fault. Once gguf_open returns a file,
 * every tensor's bytes lie inside the mapping, aligned, without overlap, so
 * later stages never re-check them.
 *
 * Writing: metadata and tensor infos are collected in memory, then the
 * header is written to a temporary file in the target folder, tensor data is
 * streamed after it (each tensor zero-padded to the alignment, as ggml does),
 * and the file is fsync'd and renamed over the target only when complete.
 * The layout is ggml's own, so reading a file and writing it back unchanged
 * reproduces it byte for byte.
 */
#include "gguf.h"
#include "quants.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* Nested arrays are legal GGUF, but a hostile file could nest thousands of
 * levels to exhaust the stack; no real file nests more than two. */
#define GGUF_MAX_NESTING 16

/* Smallest encodings, used to reject counts that cannot fit in the bytes
 * left before anything is allocated for them. */
#define MIN_KV_BYTES     (8 + 4 + 1)          /* key length, type, 1-byte value */
#define MIN_TINFO_BYTES  (8 + 4 + 8 + 4 + 8)  /* name length, n_dims, ne0, type, offset */
#define MIN_ARRAY_BYTES  (4 + 8)              /* element type, count */

static const char MAGIC[4] = { 'G', 'G', 'U', 'F' };

/* ================================================================ helpers */

size_t gguf_type_size(uint32_t vtype)
{
    switch (vtype) {
    case GGUF_TYPE_UINT8: case GGUF_TYPE_INT8: case GGUF_TYPE_BOOL: return 1;
    case GGUF_TYPE_UINT16: case GGUF_TYPE_INT16: return 2;
    case GGUF_TYPE_UINT32: case GGUF_TYPE_INT32: case GGUF_TYPE_FLOAT32: return 4;
    case GGUF_TYPE_UINT64: case GGUF_TYPE_INT64: case GGUF_TYPE_FLOAT64: return 8;
    default: return 0;
    }
}

const char *gguf_type_name(uint32_t vtype)
{
    static const char *const names[GGUF_TYPE_COUNT] = {
        "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "str", "arr",
        "u64", "i64", "f64",
    };
    return vtype < GGUF_TYPE_COUNT ? names[vtype] : "?";
}

static int is_unsigned_type(uint32_t t)
{
    return t == GGUF_TYPE_UINT8 || t == GGUF_TYPE_UINT16 || t == GGUF_TYPE_UINT32 ||
           t == GGUF_TYPE_UINT64 || t == GGUF_TYPE_BOOL;
}

static int is_signed_type(uint32_t t)
{
    return t == GGUF_TYPE_INT8 || t == GGUF_TYPE_INT16 || t == GGUF_TYPE_INT32 ||
           t == GGUF_TYPE_INT64;
}

static int is_float_type(uint32_t t) { return t == GGUF_TYPE_FLOAT32 || t == GGUF_TYPE_FLOAT64; }

/* Decode one little-endian scalar of type t from p into v (type set). */
static void decode_scalar(uint32_t t, const uint8_t *p, gguf_value *v)
{
    v->type = t;
    switch (t) {
    case GGUF_TYPE_UINT8: case GGUF_TYPE_BOOL: v->v.u64 = p[0]; break;
    case GGUF_TYPE_INT8:   v->v.i64 = (int8_t)p[0]; break;
    case GGUF_TYPE_UINT16: { uint16_t x; memcpy(&x, p, 2); v->v.u64 = x; break; }
    case GGUF_TYPE_INT16:  { int16_t x;  memcpy(&x, p, 2); v->v.i64 = x; break; }
    case GGUF_TYPE_UINT32: { uint32_t x; memcpy(&x, p, 4); v->v.u64 = x; break; }
    case GGUF_TYPE_INT32:  { int32_t x;  memcpy(&x, p, 4); v->v.i64 = x; break; }
    case GGUF_TYPE_UINT64: { uint64_t x; memcpy(&x, p, 8); v->v.u64 = x; break; }
    case GGUF_TYPE_INT64:  { int64_t x;  memcpy(&x, p, 8); v->v.i64 = x; break; }
    case GGUF_TYPE_FLOAT32: { float x;   memcpy(&x, p, 4); v->v.f64 = x; break; }
    case GGUF_TYPE_FLOAT64: { double x;  memcpy(&x, p, 8); v->v.f64 = x; break; }
    default: break;
    }
}

static void value_free(gguf_value *v)
{
    if (v->type != GGUF_TYPE_ARRAY || !v->v.arr.items) return;
    for (uint64_t i = 0; i < v->v.arr.n; i++) value_free(&v->v.arr.items[i]);
    free(v->v.arr.items);
    v->v.arr.items = NULL;
}

/* Copy a name from the file into buf for an error message: at most 48
 * characters, control bytes replaced, so a hostile name cannot break the
 * one-line error. */
static const char *safe_name(gguf_str s, char *buf, size_t len)
{
    size_t n = 0;
    for (uint64_t i = 0; i < s.n && n + 4 < len && i < 48; i++) {
        unsigned char c = (unsigned char)s.s[i];
        buf[n++] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    if (s.n > 48 && n + 4 < len) { buf[n++] = '.'; buf[n++] = '.'; buf[n++] = '.'; }
    buf[n] = 0;
    return buf;
}

/* ================================================================ lookups */

/* Open-addressing tables of (index + 1) by FNV-1a of the name; built while
 * parsing, where they also detect duplicate keys and tensor names. */
struct gguf_table {
    uint64_t *slot;
    uint64_t  mask;
};

struct gguf_index {
    struct gguf_table kv, tensors;
};

static uint64_t hash_bytes(const char *s, uint64_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (uint64_t i = 0; i < n; i++) { h ^= (unsigned char)s[i]; h *= 1099511628211ull; }
    return h;
}

static int table_init(struct gguf_table *t, uint64_t n)
{
    uint64_t cap = 8;
    while (cap < 2 * n) cap *= 2;
    t->slot = calloc(cap, sizeof *t->slot);
    t->mask = cap - 1;
    return t->slot ? 0 : -1;
}

/* Look up (s, n); names(i) gives the string of entry i. Returns the index or
 * -1; when insert_as >= 0 and absent, inserts it. */
typedef gguf_str (*name_of_fn)(const void *ctx, uint64_t i);

static int64_t table_find(const struct gguf_table *t, const char *s, uint64_t n,
                          name_of_fn name_of, const void *ctx, int64_t insert_as)
{
    if (!t->slot) return -1;
    for (uint64_t h = hash_bytes(s, n) & t->mask;; h = (h + 1) & t->mask) {
        uint64_t e = t->slot[h];
        if (e == 0) {
            if (insert_as >= 0) t->slot[h] = (uint64_t)insert_as + 1;
            return -1;
        }
        gguf_str o = name_of(ctx, e - 1);
        if (o.n == n && memcmp(o.s, s, n) == 0) return (int64_t)(e - 1);
    }
}

static gguf_str kv_name(const void *ctx, uint64_t i) { return ((const gguf_file *)ctx)->kv[i].key; }
static gguf_str tensor_name(const void *ctx, uint64_t i) { return ((const gguf_file *)ctx)->tensors[i].name; }

const gguf_kv *gguf_find_kv(const gguf_file *f, const char *key)
{
    if (!f || !key || !f->index) return NULL;
    int64_t i = table_find(&f->index->kv, key, strlen(key), kv_name, f, -1);
    return i < 0 ? NULL : &f->kv[i];
}

int64_t gguf_find_tensor(const gguf_file *f, const char *name)
{
    if (!f || !name || !f->index) return -1;
    return table_find(&f->index->tensors, name, strlen(name), tensor_name, f, -1);
}

int gguf_get_u64(const gguf_file *f, const char *key, uint64_t *out)
{
    const gguf_kv *kv = gguf_find_kv(f, key);
    if (!kv) return -1;
    if (is_unsigned_type(kv->val.type) && kv->val.type != GGUF_TYPE_BOOL) { *out = kv->val.v.u64; return 0; }
    if (is_signed_type(kv->val.type) && kv->val.v.i64 >= 0) { *out = (uint64_t)kv->val.v.i64; return 0; }
    return -1;
}

int gguf_get_i64(const gguf_file *f, const char *key, int64_t *out)
{
    const gguf_kv *kv = gguf_find_kv(f, key);
    if (!kv) return -1;
    if (is_signed_type(kv->val.type)) { *out = kv->val.v.i64; return 0; }
    if (is_unsigned_type(kv->val.type) && kv->val.type != GGUF_TYPE_BOOL &&
        kv->val.v.u64 <= (uint64_t)INT64_MAX) { *out = (int64_t)kv->val.v.u64; return 0; }
    return -1;
}

int gguf_get_f64(const gguf_file *f, const char *key, double *out)
{
    const gguf_kv *kv = gguf_find_kv(f, key);
    if (!kv || !is_float_type(kv->val.type)) return -1;
    *out = kv->val.v.f64;
    return 0;
}

int gguf_get_bool(const gguf_file *f, const char *key, int *out)
{
    const gguf_kv *kv = gguf_find_kv(f, key);
    if (!kv || kv->val.type != GGUF_TYPE_BOOL) return -1;
    *out = kv->val.v.u64 != 0;
    return 0;
}

int gguf_get_str(const gguf_file *f, const char *key, char *out, size_t outlen)
{
    const gguf_kv *kv = gguf_find_kv(f, key);
    if (!kv || kv->val.type != GGUF_TYPE_STRING || outlen == 0) return -1;
    uint64_t n = kv->val.v.str.n < outlen - 1 ? kv->val.v.str.n : outlen - 1;
    memcpy(out, kv->val.v.str.s, (size_t)n);
    out[n] = 0;
    return 0;
}

static int arr_elem(const gguf_value *a, uint64_t i, gguf_value *out)
{
    if (!a || a->type != GGUF_TYPE_ARRAY || i >= a->v.arr.n || !a->v.arr.data) return -1;
    size_t sz = gguf_type_size(a->v.arr.type);
    if (!sz) return -1;
    decode_scalar(a->v.arr.type, (const uint8_t *)a->v.arr.data + i * sz, out);
    return 0;
}

int64_t gguf_arr_i64(const gguf_value *arr, uint64_t i)
{
    gguf_value e;
    if (arr_elem(arr, i, &e)) return 0;
    if (is_signed_type(e.type)) return e.v.i64;
    if (is_float_type(e.type)) return (int64_t)e.v.f64;
    return (int64_t)e.v.u64;
}

uint64_t gguf_arr_u64(const gguf_value *arr, uint64_t i)
{
    gguf_value e;
    if (arr_elem(arr, i, &e)) return 0;
    if (is_signed_type(e.type)) return (uint64_t)e.v.i64;
    if (is_float_type(e.type)) return (uint64_t)e.v.f64;
    return e.v.u64;
}

double gguf_arr_f64(const gguf_value *arr, uint64_t i)
{
    gguf_value e;
    if (arr_elem(arr, i, &e)) return 0;
    if (is_signed_type(e.type)) return (double)e.v.i64;
    if (is_float_type(e.type)) return e.v.f64;
    return (double)e.v.u64;
}

/* ================================================================= cursor */

/* A read position over the whole file. The first failure writes the error
 * and latches; every later read is a no-op returning -1. */
typedef struct {
    const uint8_t *base;
    uint64_t       size, pos;
    const char    *name;
    char          *err;
    size_t         errlen;
    int            failed;
} cursor;

__attribute__((format(printf, 3, 4)))
static int cur_fail(cursor *c, uint64_t at, const char *fmt, ...)
{
    if (c->failed) return -1;
    c->failed = 1;
    if (c->err && c->errlen) {
        int n = snprintf(c->err, c->errlen, "%s: byte %llu: ", c->name, (unsigned long long)at);
        if (n >= 0 && (size_t)n < c->errlen) {
            va_list ap;
            va_start(ap, fmt);
            vsnprintf(c->err + n, c->errlen - (size_t)n, fmt, ap);
            va_end(ap);
        }
    }
    return -1;
}

static uint64_t cur_left(const cursor *c) { return c->size - c->pos; }

static int cur_read(cursor *c, void *out, uint64_t n, const char *what)
{
    if (c->failed) return -1;
    if (n > cur_left(c))
        return cur_fail(c, c->pos, "file truncated in %s (%llu bytes needed, %llu left)", what,
                        (unsigned long long)n, (unsigned long long)cur_left(c));
    memcpy(out, c->base + c->pos, (size_t)n);
    c->pos += n;
    return 0;
}

static int cur_u32(cursor *c, uint32_t *v, const char *what) { return cur_read(c, v, 4, what); }
static int cur_u64(cursor *c, uint64_t *v, const char *what) { return cur_read(c, v, 8, what); }

/* A length-prefixed string; s points into the file. */
static int cur_str(cursor *c, gguf_str *s, const char *what)
{
    uint64_t at = c->pos, n = 0;
    if (cur_u64(c, &n, what)) return -1;
    if (n > cur_left(c))
        return cur_fail(c, at, "%s length %llu exceeds file size (%llu bytes left)", what,
                        (unsigned long long)n, (unsigned long long)cur_left(c));
    s->s = (const char *)c->base + c->pos;
    s->n = n;
    c->pos += n;
    return 0;
}

/* ================================================================= reader */

static int read_value(cursor *c, uint32_t type, gguf_value *v, int depth, const char *what);

static int read_array(cursor *c, gguf_value *v, int depth, const char *what)
{
    uint64_t at = c->pos;
    uint32_t et = 0;
    uint64_t n = 0;
    if (cur_u32(c, &et, what) || cur_u64(c, &n, what)) return -1;
    if (et >= GGUF_TYPE_COUNT)
        return cur_fail(c, at, "%s: unknown array element type %u", what, et);
    if (et == GGUF_TYPE_ARRAY && depth + 1 >= GGUF_MAX_NESTING)
        return cur_fail(c, at, "%s: arrays nested deeper than %d", what, GGUF_MAX_NESTING);
    v->type = GGUF_TYPE_ARRAY;
    v->v.arr.type = et;
    v->v.arr.n = n;
    v->v.arr.data = NULL;
    v->v.arr.items = NULL;
    size_t esz = gguf_type_size(et);
    uint64_t min = esz ? esz : et == GGUF_TYPE_STRING ? 8 : MIN_ARRAY_BYTES;
    if (n > cur_left(c) / min)
        return cur_fail(c, at, "%s: array of %llu %s exceeds file size (%llu bytes left)", what,
                        (unsigned long long)n, gguf_type_name(et), (unsigned long long)cur_left(c));
    if (esz) {
        v->v.arr.data = c->base + c->pos;
        c->pos += n * esz;
        return 0;
    }
    if (n == 0) return 0;
    v->v.arr.items = calloc((size_t)n, sizeof(gguf_value));
    if (!v->v.arr.items) return cur_fail(c, at, "%s: out of memory for %llu array items", what, (unsigned long long)n);
    for (uint64_t i = 0; i < n; i++) {
        /* Mark every item so value_free can walk a half-read array. */
        v->v.arr.items[i].type = GGUF_TYPE_STRING;
    }
    for (uint64_t i = 0; i < n; i++)
        if (read_value(c, et, &v->v.arr.items[i], depth + 1, what)) return -1;
    return 0;
}

static int read_value(cursor *c, uint32_t type, gguf_value *v, int depth, const char *what)
{
    if (type == GGUF_TYPE_STRING) {
        v->type = GGUF_TYPE_STRING;
        return cur_str(c, &v->v.str, what);
    }
    if (type == GGUF_TYPE_ARRAY) return read_array(c, v, depth, what);
    size_t sz = gguf_type_size(type);
    uint8_t buf[8];
    if (cur_read(c, buf, sz, what)) return -1;
    decode_scalar(type, buf, v);
    return 0;
}

static uint64_t align_up(uint64_t x, uint64_t a, int *ok)
{
    uint64_t r = x % a;
    if (r == 0) return x;
    if (x > UINT64_MAX - (a - r)) { *ok = 0; return 0; }
    return x + (a - r);
}

/* Sort helper for the overlap check: tensor indices by data offset. */
static int cmp_by_offset(const void *a, const void *b, void *ctx)
{
    const gguf_tensor *t = ctx;
    uint64_t x = t[*(const uint64_t *)a].offset;
    uint64_t y = t[*(const uint64_t *)b].offset;
    return x < y ? -1 : x > y;
}

static int parse(gguf_file *f, cursor *c)
{
    char nb[64], nb2[64];
    char magic[4];
    if (cur_read(c, magic, 4, "header")) return -1;
    if (memcmp(magic, MAGIC, 4) != 0)
        return cur_fail(c, 0, "bad magic %02x %02x %02x %02x (not a GGUF file)",
                        (unsigned char)magic[0], (unsigned char)magic[1],
                        (unsigned char)magic[2], (unsigned char)magic[3]);
    if (cur_u32(c, &f->version, "header")) return -1;
    if (f->version != 2 && f->version != 3)
        return cur_fail(c, 4, "unsupported GGUF version %u (2 and 3 are read)", f->version);
    uint64_t n_tensors, n_kv;
    if (cur_u64(c, &n_tensors, "header") || cur_u64(c, &n_kv, "header")) return -1;
    if (n_kv > cur_left(c) / MIN_KV_BYTES)
        return cur_fail(c, c->pos, "key/value count %llu exceeds file size",
                        (unsigned long long)n_kv);
    if (n_tensors > cur_left(c) / MIN_TINFO_BYTES)
        return cur_fail(c, c->pos, "tensor count %llu exceeds file size",
                        (unsigned long long)n_tensors);

    f->index = calloc(1, sizeof *f->index);
    f->kv = calloc(n_kv ? (size_t)n_kv : 1, sizeof *f->kv);
    if (!f->index || !f->kv || table_init(&f->index->kv, n_kv))
        return cur_fail(c, c->pos, "out of memory for %llu key/values", (unsigned long long)n_kv);

    /* ---- key/values */
    f->alignment = GGUF_DEFAULT_ALIGNMENT;
    for (uint64_t i = 0; i < n_kv; i++) {
        gguf_kv *kv = &f->kv[i];
        uint64_t at = c->pos;
        if (cur_str(c, &kv->key, "key")) return -1;
        f->n_kv = i + 1;   /* from here on gguf_close frees this entry */
        kv->val.type = GGUF_TYPE_STRING;
        if (kv->key.n == 0) return cur_fail(c, at, "key/value %llu has an empty key", (unsigned long long)i);
        safe_name(kv->key, nb, sizeof nb);
        if (table_find(&f->index->kv, kv->key.s, kv->key.n, kv_name, f, (int64_t)i) >= 0)
            return cur_fail(c, at, "duplicate key '%s'", nb);
        uint64_t tat = c->pos;
        uint32_t type;
        char what[96];
        snprintf(what, sizeof what, "value of '%s'", nb);
        if (cur_u32(c, &type, what)) return -1;
        if (type >= GGUF_TYPE_COUNT)
            return cur_fail(c, tat, "key '%s': unknown value type %u", nb, type);
        uint64_t vat = c->pos;
        if (read_value(c, type, &kv->val, 0, what)) return -1;
        if (kv->key.n == 17 && memcmp(kv->key.s, "general.alignment", 17) == 0) {
            if (type != GGUF_TYPE_UINT32)
                return cur_fail(c, tat, "general.alignment has type %s, expected u32", gguf_type_name(type));
            uint64_t a = kv->val.v.u64;
            if (a == 0 || (a & (a - 1)))
                return cur_fail(c, vat, "general.alignment %llu is not a nonzero power of two",
                                (unsigned long long)a);
            f->alignment = a;
        }
    }

    /* ---- tensor infos */
    if (n_tensors > cur_left(c) / MIN_TINFO_BYTES)
        return cur_fail(c, c->pos, "tensor count %llu exceeds file size",
                        (unsigned long long)n_tensors);
    f->tensors = calloc(n_tensors ? (size_t)n_tensors : 1, sizeof *f->tensors);
    uint64_t *offset_at = calloc(n_tensors ? (size_t)n_tensors : 1, sizeof *offset_at);
    if (!f->tensors || !offset_at || table_init(&f->index->tensors, n_tensors)) {
        free(offset_at);
        return cur_fail(c, c->pos, "out of memory for %llu tensors", (unsigned long long)n_tensors);
    }
    f->n_tensors = n_tensors;
    int rc = -1;
    for (uint64_t i = 0; i < n_tensors; i++) {
        gguf_tensor *t = &f->tensors[i];
        uint64_t at = c->pos;
        if (cur_str(c, &t->name, "tensor name")) goto out;
        safe_name(t->name, nb, sizeof nb);
        if (table_find(&f->index->tensors, t->name.s, t->name.n, tensor_name, f, (int64_t)i) >= 0) {
            cur_fail(c, at, "duplicate tensor name '%s'", nb);
            goto out;
        }
        char what[96];
        snprintf(what, sizeof what, "info of tensor '%s'", nb);
        at = c->pos;
        if (cur_u32(c, &t->n_dims, what)) goto out;
        if (t->n_dims < 1 || t->n_dims > GGUF_MAX_DIMS) {
            cur_fail(c, at, "tensor '%s': n_dims %u not in 1..%d", nb, t->n_dims, GGUF_MAX_DIMS);
            goto out;
        }
        uint64_t nelem = 1;
        for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++) t->ne[d] = 1;
        for (uint32_t d = 0; d < t->n_dims; d++) {
            at = c->pos;
            if (cur_u64(c, &t->ne[d], what)) goto out;
            if (t->ne[d] == 0) {
                cur_fail(c, at, "tensor '%s': dimension %u is 0", nb, d);
                goto out;
            }
            /* ggml counts elements in int64_t */
            if (t->ne[d] > (uint64_t)INT64_MAX / nelem) {
                cur_fail(c, at, "tensor '%s': element count overflows", nb);
                goto out;
            }
            nelem *= t->ne[d];
        }
        at = c->pos;
        if (cur_u32(c, &t->type, what)) goto out;
        const struct moeq_type_traits *tr = moeq_type_traits((int)t->type);
        if (!tr) {
            cur_fail(c, at, "tensor '%s': unknown type id %u", nb, t->type);
            goto out;
        }
        if (t->ne[0] % (uint64_t)tr->blck_size) {
            cur_fail(c, at, "tensor '%s': row length %llu is not a multiple of %s's block size %d",
                     nb, (unsigned long long)t->ne[0], tr->name, tr->blck_size);
            goto out;
        }
        int ok;
        t->nbytes = moeq_tensor_nbytes((int)t->type, t->ne[0], nelem, &ok);
        if (!ok) {
            cur_fail(c, at, "tensor '%s': byte size overflows", nb);
            goto out;
        }
        offset_at[i] = c->pos;
        if (cur_u64(c, &t->offset, what)) goto out;
        if (t->offset % f->alignment) {
            cur_fail(c, offset_at[i], "tensor '%s': data offset %llu is not a multiple of the alignment %llu",
                     nb, (unsigned long long)t->offset, (unsigned long long)f->alignment);
            goto out;
        }
    }

    /* ---- data section */
    int ok = 1;
    f->data_offset = align_up(c->pos, f->alignment, &ok);
    if (!ok || (n_tensors > 0 && f->data_offset > c->size)) {
        cur_fail(c, c->pos, "data section (aligned to %llu) starts past the end of the file",
                 (unsigned long long)f->alignment);
        goto out;
    }
    uint64_t data_size = n_tensors > 0 ? c->size - f->data_offset : 0;
    for (uint64_t i = 0; i < n_tensors; i++) {
        gguf_tensor *t = &f->tensors[i];
        if (t->offset > data_size || t->nbytes > data_size - t->offset) {
            cur_fail(c, offset_at[i], "tensor '%s': data [%llu, +%llu) lies outside the file's %llu data bytes",
                     safe_name(t->name, nb, sizeof nb), (unsigned long long)t->offset,
                     (unsigned long long)t->nbytes, (unsigned long long)data_size);
            goto out;
        }
        t->data = c->base + f->data_offset + t->offset;
    }
    if (n_tensors > 1) {
        uint64_t *order = malloc((size_t)n_tensors * sizeof *order);
        if (!order) { cur_fail(c, c->pos, "out of memory"); goto out; }
        for (uint64_t i = 0; i < n_tensors; i++) order[i] = i;
        qsort_r(order, (size_t)n_tensors, sizeof *order, cmp_by_offset, f->tensors);
        for (uint64_t k = 1; k < n_tensors; k++) {
            const gguf_tensor *a = &f->tensors[order[k - 1]], *b = &f->tensors[order[k]];
            if (a->offset + a->nbytes > b->offset) {
                cur_fail(c, offset_at[order[k]], "tensor '%s' overlaps tensor '%s'",
                         safe_name(b->name, nb, sizeof nb), safe_name(a->name, nb2, sizeof nb2));
                free(order);
                goto out;
            }
        }
        free(order);
    }
    rc = 0;
out:
    free(offset_at);
    return rc;
}

static gguf_file *open_common(const void *buf, uint64_t size, const char *name, int mapped,
                              char *err, size_t errlen)
{
    gguf_file *f = calloc(1, sizeof *f);
    char *path = strdup(name ? name : "(buffer)");
    if (!f || !path) {
        free(f); free(path);
        if (mapped) munmap((void *)buf, (size_t)size);
        snprintf(err, errlen, "%s: out of memory", name ? name : "(buffer)");
        return NULL;
    }
    f->path = path;
    f->base = buf;
    f->size = size;
    f->mapped = mapped;
    cursor c = { .base = buf, .size = size, .name = path, .err = err, .errlen = errlen };
    if (parse(f, &c) != 0) {
        gguf_close(f);
        return NULL;
    }
    return f;
}

gguf_file *gguf_open(const char *path, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        snprintf(err, errlen, "%s: cannot stat: %s", path, strerror(errno));
        close(fd);
        return NULL;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "%s: not a regular file", path);
        close(fd);
        return NULL;
    }
    if (st.st_size < 24) {
        close(fd);
        snprintf(err, errlen, "%s: byte 0: file truncated in header (%lld bytes, 24 needed)",
                 path, (long long)st.st_size);
        return NULL;
    }
    void *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (m == MAP_FAILED) {
        snprintf(err, errlen, "%s: cannot map: %s", path, strerror(errno));
        return NULL;
    }
    return open_common(m, (uint64_t)st.st_size, path, 1, err, errlen);
}

gguf_file *gguf_open_buffer(const void *buf, size_t size, const char *name,
                            char *err, size_t errlen)
{
    static const uint8_t empty[1];
    return open_common(buf ? buf : empty, buf ? size : 0, name, 0, err, errlen);
}

void gguf_close(gguf_file *f)
{
    if (!f) return;
    for (uint64_t i = 0; f->kv && i < f->n_kv; i++) value_free(&f->kv[i].val);
    free(f->kv);
    free(f->tensors);
    if (f->index) {
        free(f->index->kv.slot);
        free(f->index->tensors.slot);
        free(f->index);
    }
    if (f->mapped) munmap((void *)f->base, (size_t)f->size);
    free(f->path);
    free(f);
}
