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
 * header is written to the output (src/util/outfile: a temporary file in the
 * target folder, never an input), tensor data is streamed after it (each
 * tensor zero-padded to the alignment, as ggml does), and the file is
 * fsync'd and renamed over the target only when complete.
 * The layout is ggml's own, so reading a file and writing it back unchanged
 * reproduces it byte for byte.
 */
#include "gguf/gguf.h"
#include "util/outfile.h"
#include "quant/quants.h"
#include "util/util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
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

/* A float element as an integer: truncated toward zero, saturated at the
 * type's bounds, NaN as 0. A plain cast of a value out of range (or NaN) is
 * undefined behaviour, and the elements come from the file. 0x1p63 and
 * 0x1p64 are exact doubles: every double below them converts. */
static int64_t f64_to_i64(double x)
{
    if (isnan(x)) return 0;
    if (x >= 0x1p63) return INT64_MAX;
    if (x < -0x1p63) return INT64_MIN;
    return (int64_t)x;
}

static uint64_t f64_to_u64(double x)
{
    if (isnan(x) || x <= -1.0) return 0;
    if (x >= 0x1p64) return UINT64_MAX;
    return (uint64_t)x;
}

int64_t gguf_arr_i64(const gguf_value *arr, uint64_t i)
{
    gguf_value e;
    if (arr_elem(arr, i, &e)) return 0;
    if (is_signed_type(e.type)) return e.v.i64;
    if (is_float_type(e.type)) return f64_to_i64(e.v.f64);
    return (int64_t)e.v.u64;
}

uint64_t gguf_arr_u64(const gguf_value *arr, uint64_t i)
{
    gguf_value e;
    if (arr_elem(arr, i, &e)) return 0;
    if (is_signed_type(e.type)) return (uint64_t)e.v.i64;
    if (is_float_type(e.type)) return f64_to_u64(e.v.f64);
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
    f->n_parts = 1;
    cursor c = { .base = buf, .size = size, .name = path, .err = err, .errlen = errlen };
    if (parse(f, &c) != 0) {
        gguf_close(f);
        return NULL;
    }
    return f;
}

static gguf_file *open_one(const char *path, char *err, size_t errlen)
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

/* ============================================================ split sets */

int gguf_split_path(char *out, size_t outlen, const char *path, uint32_t no, uint32_t count)
{
    size_t n = strlen(path);
    static const char tail[] = "-00000-of-00000.gguf";
    const size_t tn = sizeof tail - 1;
    int pattern = n >= tn && !strcmp(path + n - 5, ".gguf") && !strncmp(path + n - tn + 6, "-of-", 4);
    for (size_t i = 0; pattern && i < 5; i++)
        pattern = path[n - tn] == '-' && path[n - tn + 1 + i] >= '0' && path[n - tn + 1 + i] <= '9'
                  && path[n - tn + 10 + i] >= '0' && path[n - tn + 10 + i] <= '9';
    size_t stem = pattern ? n - tn : (n >= 5 && !strcmp(path + n - 5, ".gguf") ? n - 5 : n);
    int k = snprintf(out, outlen, "%.*s-%05u-of-%05u.gguf", (int)stem, path, no + 1, count);
    return k < 0 || (size_t)k >= outlen ? -1 : 0;
}

/* split.count of f: 1 when absent. -1 when present but not a u16 >= 1. */
static int64_t split_count(const gguf_file *f)
{
    const gguf_kv *kv = gguf_find_kv(f, GGUF_KEY_SPLIT_COUNT);
    uint64_t v;
    if (!kv) return 1;
    if (gguf_get_u64(f, GGUF_KEY_SPLIT_COUNT, &v) || v < 1 || v > 65535) return -1;
    return (int64_t)v;
}

/* Open parts 2..n of the set whose first file is f and merge their tensors
 * into f. 0, or -1 with err set. */
static int open_split(gguf_file *f, uint32_t count, char *err, size_t errlen)
{
    uint64_t no, total;
    if (gguf_get_u64(f, GGUF_KEY_SPLIT_NO, &no)) no = 0;
    if (no != 0) {
        char first[4096];
        if (gguf_split_path(first, sizeof first, f->path, 0, count)) first[0] = 0;
        snprintf(err, errlen, "%s: split.no: this is part %llu of %u; open the first part%s%s%s",
                 f->path, (unsigned long long)no + 1, count, first[0] ? " (" : "", first, first[0] ? ")" : "");
        return -1;
    }
    int64_t tc;
    if (gguf_get_i64(f, GGUF_KEY_SPLIT_TENSORS, &tc) || tc < 0) {
        if (gguf_get_u64(f, GGUF_KEY_SPLIT_TENSORS, &total)) {
            snprintf(err, errlen, "%s: split.tensors.count: missing or not a non-negative integer", f->path);
            return -1;
        }
    } else {
        total = (uint64_t)tc;
    }
    f->parts = calloc(count - 1, sizeof *f->parts);
    if (!f->parts) { snprintf(err, errlen, "%s: out of memory", f->path); return -1; }
    uint64_t n = f->n_tensors;
    for (uint32_t i = 1; i < count; i++) {
        char path[4096], perr[512];
        if (gguf_split_path(path, sizeof path, f->path, i, count)) {
            snprintf(err, errlen, "%s: split part %u of %u: name too long", f->path, i + 1, count);
            return -1;
        }
        gguf_file *p = open_one(path, perr, sizeof perr);
        if (!p) {
            snprintf(err, errlen, "%s: split part %u of %u missing or bad: %s", f->path, i + 1, count, perr);
            return -1;
        }
        f->parts[i - 1] = p;
        f->n_parts = i + 1;
        uint64_t pno;
        if (split_count(p) != count) {
            snprintf(err, errlen, "%s: split.count: not %u as in the first part %s", path, count, f->path);
            return -1;
        }
        if (gguf_get_u64(p, GGUF_KEY_SPLIT_NO, &pno) || pno != i) {
            snprintf(err, errlen, "%s: split.no: not %u (part %u of %u)", path, i, i + 1, count);
            return -1;
        }
        n += p->n_tensors;
    }
    if (n != total) {
        snprintf(err, errlen, "%s: split.tensors.count: %llu, but the %u parts hold %llu tensors", f->path,
                 (unsigned long long)total, count, (unsigned long long)n);
        return -1;
    }
    gguf_tensor *t = calloc(n ? (size_t)n : 1, sizeof *t);
    struct gguf_table tab;
    if (!t || table_init(&tab, n)) {
        free(t);
        snprintf(err, errlen, "%s: out of memory", f->path);
        return -1;
    }
    uint64_t k = 0;
    for (uint32_t i = 0; i < count; i++) {
        const gguf_file *p = i ? f->parts[i - 1] : f;
        for (uint64_t j = 0; j < p->n_tensors; j++, k++) {
            t[k] = p->tensors[j];
            t[k].part = i;
        }
    }
    free(f->tensors);
    f->tensors = t;
    f->n_tensors = n;
    free(f->index->tensors.slot);
    f->index->tensors = tab;
    for (uint64_t j = 0; j < n; j++) {
        int64_t d = table_find(&tab, t[j].name.s, t[j].name.n, tensor_name, f, (int64_t)j);
        if (d >= 0) {
            char nb[128];
            snprintf(err, errlen, "%s: tensor '%s' is in split part %u and again in part %u", f->path,
                     safe_name(t[j].name, nb, sizeof nb), t[d].part + 1, t[j].part + 1);
            return -1;
        }
    }
    return 0;
}

gguf_file *gguf_open(const char *path, char *err, size_t errlen)
{
    gguf_file *f = open_one(path, err, errlen);
    if (!f) return NULL;
    int64_t count = split_count(f);
    if (count < 0) {
        snprintf(err, errlen, "%s: split.count: not an integer in 1..65535", path);
        gguf_close(f);
        return NULL;
    }
    if (count > 1 && open_split(f, (uint32_t)count, err, errlen)) {
        gguf_close(f);
        return NULL;
    }
    return f;
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
    for (uint32_t i = 0; f->parts && i + 1 < f->n_parts; i++) gguf_close(f->parts[i]);
    free(f->parts);
    free(f->path);
    free(f);
}

/* ================================================================= writer */

struct wtensor {
    char    *name;
    uint32_t type, n_dims;
    uint64_t ne[GGUF_MAX_DIMS];
    uint64_t nbytes, offset;
    uint32_t part;
};

/* One file of a split output. */
struct wpart {
    char         *path;
    moeq_outfile *out;
};

struct gguf_writer {
    char           *path;
    moeq_outfile   *out;
    FILE           *fp;             /* out's stream */
    uint64_t        pos;            /* bytes written so far */
    uint32_t        version;
    uint64_t        alignment;
    gguf_kv        *kv;             /* keys and values owned by the writer */
    uint64_t        n_kv, cap_kv;
    struct wtensor *t;
    uint64_t        n_t, cap_t;
    int             in_data;        /* header written; only data from here */
    uint64_t        cur, cur_done;  /* tensor being written, bytes of it so far */
    char          **inputs;         /* copies, for refusing split part names */
    int             n_inputs;
    struct wpart   *parts;          /* split output (gguf_writer_split), else NULL */
    uint32_t        n_parts;
    char            err[512];
};

__attribute__((format(printf, 2, 3)))
static int werr(gguf_writer *w, const char *fmt, ...)
{
    int n = snprintf(w->err, sizeof w->err, "%s: ", w->path ? w->path : "(writer)");
    if (n < 0 || (size_t)n >= sizeof w->err) n = 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->err + n, sizeof w->err - (size_t)n, fmt, ap);
    va_end(ap);
    return -1;
}

/* The message of the last gguf_writer_finish that failed on this thread:
 * finish frees the writer, so its error has to outlive it. */
static _Thread_local char finish_err[512];

const char *gguf_writer_error(const gguf_writer *w) { return w ? w->err : finish_err; }

/* Deep copy of a value into writer-owned memory. */
static int value_copy(gguf_value *dst, const gguf_value *src, int depth)
{
    memset(dst, 0, sizeof *dst);
    dst->type = src->type;
    if (src->type >= GGUF_TYPE_COUNT || depth > GGUF_MAX_NESTING) return -1;
    if (src->type == GGUF_TYPE_STRING) {
        char *s = malloc(src->v.str.n ? (size_t)src->v.str.n : 1);
        if (!s) return -1;
        if (src->v.str.n) memcpy(s, src->v.str.s, (size_t)src->v.str.n);
        dst->v.str.s = s;
        dst->v.str.n = src->v.str.n;
        return 0;
    }
    if (src->type != GGUF_TYPE_ARRAY) { dst->v = src->v; return 0; }
    uint32_t et = src->v.arr.type;
    uint64_t n = src->v.arr.n;
    if (et >= GGUF_TYPE_COUNT) return -1;
    dst->v.arr.type = et;
    size_t esz = gguf_type_size(et);
    if (esz) {
        if (n && !src->v.arr.data) return -1;
        if (n > SIZE_MAX / esz) return -1;
        void *d = malloc(n ? (size_t)n * esz : 1);
        if (!d) return -1;
        if (n) memcpy(d, src->v.arr.data, (size_t)n * esz);
        dst->v.arr.data = d;
        dst->v.arr.n = n;
        return 0;
    }
    if (n && !src->v.arr.items) return -1;
    if (n) {
        dst->v.arr.items = calloc((size_t)n, sizeof(gguf_value));
        if (!dst->v.arr.items) return -1;
    }
    /* Items not yet copied are zeroed (type UINT8): safe to free. */
    dst->v.arr.n = n;
    for (uint64_t i = 0; i < n; i++) {
        if (src->v.arr.items[i].type != et) return -1;
        if (value_copy(&dst->v.arr.items[i], &src->v.arr.items[i], depth + 1)) return -1;
    }
    return 0;
}

static void value_free_owned(gguf_value *v)
{
    if (v->type == GGUF_TYPE_STRING) {
        free((void *)v->v.str.s);
    } else if (v->type == GGUF_TYPE_ARRAY) {
        if (v->v.arr.items)
            for (uint64_t i = 0; i < v->v.arr.n; i++) value_free_owned(&v->v.arr.items[i]);
        free(v->v.arr.items);
        free((void *)v->v.arr.data);
    }
    memset(v, 0, sizeof *v);
}

static int64_t writer_find_kv(const gguf_writer *w, const char *key)
{
    size_t n = strlen(key);
    for (uint64_t i = 0; i < w->n_kv; i++)
        if (w->kv[i].key.n == n && !memcmp(w->kv[i].key.s, key, n)) return (int64_t)i;
    return -1;
}

gguf_writer *gguf_writer_open_inputs(const char *path, const char *const *inputs, int n_inputs,
                                     char *err, size_t errlen)
{
    gguf_writer *w = calloc(1, sizeof *w);
    if (!w || !(w->path = strdup(path))) {
        free(w);
        snprintf(err, errlen, "%s: out of memory", path);
        return NULL;
    }
    w->version = 3;
    w->alignment = GGUF_DEFAULT_ALIGNMENT;
    w->out = moeq_outfile_open(path, inputs, n_inputs, err, errlen);
    if (!w->out) {
        free(w->path);
        free(w);
        return NULL;
    }
    w->fp = moeq_outfile_fp(w->out);
    w->inputs = calloc(n_inputs > 0 ? (size_t)n_inputs : 1, sizeof *w->inputs);
    int ok = w->inputs != NULL;
    for (int i = 0; ok && i < n_inputs; i++)
        if (inputs[i]) ok = (w->inputs[w->n_inputs++] = strdup(inputs[i])) != NULL;
    if (!ok) {
        snprintf(err, errlen, "%s: out of memory", path);
        gguf_writer_abort(w);
        return NULL;
    }
    return w;
}

gguf_writer *gguf_writer_open(const char *path, const char *refuse_path,
                              char *err, size_t errlen)
{
    return gguf_writer_open_inputs(path, &refuse_path, refuse_path ? 1 : 0, err, errlen);
}

void gguf_writer_set_version(gguf_writer *w, uint32_t version)
{
    if (w && !w->in_data && (version == 2 || version == 3)) w->version = version;
}

static int check_alignment_value(gguf_writer *w, const gguf_value *v, uint64_t *out)
{
    if (v->type != GGUF_TYPE_UINT32)
        return werr(w, "general.alignment must be u32, not %s", gguf_type_name(v->type));
    uint64_t a = v->v.u64;
    if (a == 0 || (a & (a - 1)) || a > UINT32_MAX)
        return werr(w, "general.alignment %llu is not a nonzero power of two", (unsigned long long)a);
    *out = a;
    return 0;
}

static int kv_store(gguf_writer *w, const char *key, const gguf_value *v, int replace)
{
    if (!w) return -1;
    if (w->in_data) return werr(w, "key '%s' added after the tensor data began", key);
    if (!key || !*key) return werr(w, "empty key");
    uint64_t align = w->alignment;
    if (!strcmp(key, "general.alignment") && check_alignment_value(w, v, &align)) return -1;
    int64_t at = writer_find_kv(w, key);
    if (at >= 0 && !replace) return werr(w, "duplicate key '%s'", key);
    gguf_value copy;
    if (value_copy(&copy, v, 0)) {
        value_free_owned(&copy);
        return werr(w, "key '%s': invalid value (or out of memory)", key);
    }
    if (at >= 0) {
        value_free_owned(&w->kv[at].val);
        w->kv[at].val = copy;
    } else {
        if (w->n_kv == w->cap_kv) {
            uint64_t cap = w->cap_kv ? w->cap_kv * 2 : 32;
            gguf_kv *nk = realloc(w->kv, (size_t)cap * sizeof *nk);
            if (!nk) { value_free_owned(&copy); return werr(w, "out of memory"); }
            w->kv = nk;
            w->cap_kv = cap;
        }
        char *k = strdup(key);
        if (!k) { value_free_owned(&copy); return werr(w, "out of memory"); }
        w->kv[w->n_kv].key.s = k;
        w->kv[w->n_kv].key.n = strlen(k);
        w->kv[w->n_kv].val = copy;
        w->n_kv++;
    }
    w->alignment = align;
    return 0;
}

int gguf_writer_add_kv(gguf_writer *w, const char *key, const gguf_value *v) { return kv_store(w, key, v, 0); }
int gguf_writer_set_kv(gguf_writer *w, const char *key, const gguf_value *v) { return kv_store(w, key, v, 1); }

int gguf_writer_add_kvs_from(gguf_writer *w, const gguf_file *f)
{
    if (!w || !f) return -1;
    for (uint64_t i = 0; i < f->n_kv; i++) {
        gguf_str k = f->kv[i].key;
        if (memchr(k.s, 0, (size_t)k.n)) return werr(w, "key %llu of %s holds a NUL byte", (unsigned long long)i, f->path);
        char *key = malloc((size_t)k.n + 1);
        if (!key) return werr(w, "out of memory");
        memcpy(key, k.s, (size_t)k.n);
        key[k.n] = 0;
        int rc = gguf_writer_add_kv(w, key, &f->kv[i].val);
        free(key);
        if (rc) return -1;
    }
    return 0;
}

int gguf_writer_remove_kv(gguf_writer *w, const char *key)
{
    if (!w) return -1;
    if (w->in_data) return werr(w, "key '%s' removed after the tensor data began", key);
    int64_t at = writer_find_kv(w, key);
    if (at < 0) return werr(w, "no key '%s' to remove", key);
    free((void *)w->kv[at].key.s);
    value_free_owned(&w->kv[at].val);
    memmove(&w->kv[at], &w->kv[at + 1], (size_t)(w->n_kv - (uint64_t)at - 1) * sizeof *w->kv);
    w->n_kv--;
    if (!strcmp(key, "general.alignment")) w->alignment = GGUF_DEFAULT_ALIGNMENT;
    return 0;
}

/* The typed setters: one value of the GGUF type, by the value's field. */
#define GGUF_ADD(name, ctype, gtype, field, expr)                              \
    int gguf_writer_add_##name(gguf_writer *w, const char *key, ctype v)       \
    {                                                                          \
        gguf_value x = { .type = gtype, .v.field = (expr) };                   \
        return gguf_writer_add_kv(w, key, &x);                                 \
    }
GGUF_ADD(u32, uint32_t, GGUF_TYPE_UINT32, u64, v)
GGUF_ADD(i32, int32_t, GGUF_TYPE_INT32, i64, v)
GGUF_ADD(u64, uint64_t, GGUF_TYPE_UINT64, u64, v)
GGUF_ADD(f32, float, GGUF_TYPE_FLOAT32, f64, v)
GGUF_ADD(bool, int, GGUF_TYPE_BOOL, u64, v != 0)
#undef GGUF_ADD

int gguf_writer_add_str(gguf_writer *w, const char *key, const char *v)
{
    gguf_value x = { .type = GGUF_TYPE_STRING, .v.str = { v ? v : "", v ? strlen(v) : 0 } };
    return gguf_writer_add_kv(w, key, &x);
}

int gguf_writer_add_arr_str(gguf_writer *w, const char *key, const char *const *v, uint64_t n)
{
    if (!w) return -1;
    gguf_value *items = n ? calloc((size_t)n, sizeof *items) : NULL;
    if (n && !items) return werr(w, "out of memory");
    for (uint64_t i = 0; i < n; i++) {
        items[i].type = GGUF_TYPE_STRING;
        items[i].v.str.s = v[i] ? v[i] : "";
        items[i].v.str.n = v[i] ? strlen(v[i]) : 0;
    }
    gguf_value x = { .type = GGUF_TYPE_ARRAY };
    x.v.arr.type = GGUF_TYPE_STRING;
    x.v.arr.n = n;
    x.v.arr.items = items;
    int rc = gguf_writer_add_kv(w, key, &x);
    free(items);
    return rc;
}

int gguf_writer_add_arr(gguf_writer *w, const char *key, uint32_t etype, const void *v, uint64_t n)
{
    if (!w) return -1;
    if (!gguf_type_size(etype))
        return werr(w, "key '%s': gguf_writer_add_arr takes numeric types, not %s", key, gguf_type_name(etype));
    gguf_value x = { .type = GGUF_TYPE_ARRAY };
    x.v.arr.type = etype;
    x.v.arr.n = n;
    x.v.arr.data = v;
    return gguf_writer_add_kv(w, key, &x);
}

int64_t gguf_writer_add_tensor(gguf_writer *w, const char *name, uint32_t type,
                               uint32_t n_dims, const uint64_t *ne)
{
    if (!w) return -1;
    if (w->in_data) return werr(w, "tensor '%s' added after the tensor data began", name);
    if (!name) return werr(w, "tensor without a name");
    if (n_dims < 1 || n_dims > GGUF_MAX_DIMS)
        return werr(w, "tensor '%s': n_dims %u not in 1..%d", name, n_dims, GGUF_MAX_DIMS);
    const struct moeq_type_traits *tr = moeq_type_traits((int)type);
    if (!tr) return werr(w, "tensor '%s': unknown type id %u", name, type);
    struct wtensor t = { .type = type, .n_dims = n_dims, .ne = { 1, 1, 1, 1 } };
    uint64_t nelem = 1;
    for (uint32_t d = 0; d < n_dims; d++) {
        if (ne[d] == 0 || ne[d] > (uint64_t)INT64_MAX / nelem)
            return werr(w, "tensor '%s': bad dimension %llu", name, (unsigned long long)ne[d]);
        t.ne[d] = ne[d];
        nelem *= ne[d];
    }
    int ok;
    t.nbytes = moeq_tensor_nbytes((int)type, t.ne[0], nelem, &ok);
    if (!ok)
        return werr(w, "tensor '%s': row length %llu does not fit %s blocks of %d", name,
                    (unsigned long long)t.ne[0], tr->name, tr->blck_size);
    for (uint64_t i = 0; i < w->n_t; i++)
        if (!strcmp(w->t[i].name, name)) return werr(w, "duplicate tensor name '%s'", name);
    if (w->n_t == w->cap_t) {
        uint64_t cap = w->cap_t ? w->cap_t * 2 : 64;
        struct wtensor *nt = realloc(w->t, (size_t)cap * sizeof *nt);
        if (!nt) return werr(w, "out of memory");
        w->t = nt;
        w->cap_t = cap;
    }
    if (!(t.name = strdup(name))) return werr(w, "out of memory");
    w->t[w->n_t] = t;
    return (int64_t)w->n_t++;
}

/* ---- serialization */

static void put(gguf_writer *w, const void *p, size_t n) { if (n) w->pos += fwrite(p, 1, n, w->fp); }
static void put_u32(gguf_writer *w, uint32_t v) { put(w, &v, 4); }
static void put_u64(gguf_writer *w, uint64_t v) { put(w, &v, 8); }
static void put_str(gguf_writer *w, gguf_str s) { put_u64(w, s.n); put(w, s.s, (size_t)s.n); }

static void put_zeros(gguf_writer *w, uint64_t n)
{
    static const uint8_t zeros[256];
    while (n) {
        size_t k = n < sizeof zeros ? (size_t)n : sizeof zeros;
        put(w, zeros, k);
        n -= k;
    }
}

/* Encode a scalar of type t from the decoded value (the inverse of
 * decode_scalar, so a read value writes back to the same bytes). */
static void put_scalar(gguf_writer *w, uint32_t t, const gguf_value *v)
{
    uint8_t b[8];
    switch (t) {
    case GGUF_TYPE_UINT8: case GGUF_TYPE_BOOL: b[0] = (uint8_t)v->v.u64; break;
    case GGUF_TYPE_INT8:   b[0] = (uint8_t)(int8_t)v->v.i64; break;
    case GGUF_TYPE_UINT16: { uint16_t x = (uint16_t)v->v.u64; memcpy(b, &x, 2); break; }
    case GGUF_TYPE_INT16:  { int16_t x = (int16_t)v->v.i64; memcpy(b, &x, 2); break; }
    case GGUF_TYPE_UINT32: { uint32_t x = (uint32_t)v->v.u64; memcpy(b, &x, 4); break; }
    case GGUF_TYPE_INT32:  { int32_t x = (int32_t)v->v.i64; memcpy(b, &x, 4); break; }
    case GGUF_TYPE_UINT64: memcpy(b, &v->v.u64, 8); break;
    case GGUF_TYPE_INT64:  memcpy(b, &v->v.i64, 8); break;
    case GGUF_TYPE_FLOAT32: { float x = (float)v->v.f64; memcpy(b, &x, 4); break; }
    case GGUF_TYPE_FLOAT64: memcpy(b, &v->v.f64, 8); break;
    default: return;
    }
    put(w, b, gguf_type_size(t));
}

static void put_value(gguf_writer *w, const gguf_value *v)
{
    if (v->type == GGUF_TYPE_STRING) { put_str(w, v->v.str); return; }
    if (v->type != GGUF_TYPE_ARRAY) { put_scalar(w, v->type, v); return; }
    put_u32(w, v->v.arr.type);
    put_u64(w, v->v.arr.n);
    size_t esz = gguf_type_size(v->v.arr.type);
    if (esz) { put(w, v->v.arr.data, (size_t)(v->v.arr.n * esz)); return; }
    for (uint64_t i = 0; i < v->v.arr.n; i++) {
        const gguf_value *it = &v->v.arr.items[i];
        if (it->type == GGUF_TYPE_STRING) put_str(w, it->v.str);
        else put_value(w, it);   /* nested array: its own type and count */
    }
}

static uint64_t pad_to(uint64_t x, uint64_t a) { return (a - x % a) % a; }

int gguf_writer_split(gguf_writer *w, const uint32_t *part_of, uint32_t n_parts)
{
    if (!w) return -1;
    if (w->in_data) return werr(w, "split after the tensor data began");
    if (w->parts) return werr(w, "split twice");
    if (n_parts < 1 || n_parts > 65535 || n_parts > w->n_t + (w->n_t == 0))
        return werr(w, "cannot split %llu tensors into %u parts", (unsigned long long)w->n_t, n_parts);
    for (uint64_t i = 0; i < w->n_t; i++) {
        uint32_t prev = i ? w->t[i - 1].part : 0;
        if (part_of[i] != prev && part_of[i] != prev + 1)
            return werr(w, "tensor '%s': split part %u does not follow part %u", w->t[i].name, part_of[i], prev);
        w->t[i].part = part_of[i];
    }
    if (w->n_t && w->t[w->n_t - 1].part != n_parts - 1)
        return werr(w, "split into %u parts, but the tensors fill %u", n_parts, w->t[w->n_t - 1].part + 1);
    if (n_parts == 1) return 0;
    struct wpart *parts = calloc(n_parts, sizeof *parts);
    if (!parts) return werr(w, "out of memory");
    for (uint32_t i = 0; i < n_parts; i++) {
        char name[4096], e[512];
        if (gguf_split_path(name, sizeof name, w->path, i, n_parts) || !(parts[i].path = strdup(name))) {
            werr(w, "split part %u: name too long or out of memory", i + 1);
            goto fail;
        }
        parts[i].out = moeq_outfile_open(name, (const char *const *)w->inputs, w->n_inputs, e, sizeof e);
        if (!parts[i].out) {
            snprintf(w->err, sizeof w->err, "%s", e);
            goto fail;
        }
    }
    moeq_outfile_abort(w->out);
    w->parts = parts;
    w->n_parts = n_parts;
    w->out = parts[0].out;
    w->fp = moeq_outfile_fp(w->out);
    return 0;
fail:
    for (uint32_t i = 0; i < n_parts; i++) {
        moeq_outfile_abort(parts[i].out);
        free(parts[i].path);
    }
    free(parts);
    return -1;
}

int gguf_writer_split_max_size(gguf_writer *w, uint64_t max_bytes, uint32_t *n_parts)
{
    if (!w) return -1;
    if (max_bytes == 0) return werr(w, "split size 0");
    uint32_t *part_of = calloc(w->n_t ? (size_t)w->n_t : 1, sizeof *part_of);
    if (!part_of) return werr(w, "out of memory");
    uint32_t part = 0;
    uint64_t used = 0;
    for (uint64_t i = 0; i < w->n_t; i++) {
        uint64_t nb = w->t[i].nbytes + pad_to(w->t[i].nbytes, w->alignment);
        if (used > 0 && nb > max_bytes - (used < max_bytes ? used : max_bytes)) {
            part++;
            used = 0;
        }
        used += nb;
        part_of[i] = part;
    }
    int rc = gguf_writer_split(w, part_of, part + 1);
    free(part_of);
    if (rc == 0 && n_parts) *n_parts = part + 1;
    return rc;
}

/* The header of split part `part` (0 when unsplit): every key/value but the
 * split.* ones for the first part, then the split keys when split; its
 * tensor infos; padding. */
static void put_header(gguf_writer *w, uint32_t part)
{
    static const char *const split_keys[] = { GGUF_KEY_SPLIT_NO, GGUF_KEY_SPLIT_COUNT, GGUF_KEY_SPLIT_TENSORS };
    uint64_t n_kv = 0, n_t = 0;
    for (uint64_t i = 0; part == 0 && i < w->n_kv; i++) {
        int sk = 0;
        for (int k = 0; k < 3; k++) sk |= w->kv[i].key.n == strlen(split_keys[k]) && !memcmp(w->kv[i].key.s, split_keys[k], w->kv[i].key.n);
        n_kv += !sk;
    }
    if (w->parts) n_kv += 3;
    for (uint64_t i = 0; i < w->n_t; i++) n_t += w->t[i].part == part;
    w->pos = 0;
    put(w, MAGIC, 4);
    put_u32(w, w->version);
    put_u64(w, n_t);
    put_u64(w, n_kv);
    for (uint64_t i = 0; part == 0 && i < w->n_kv; i++) {
        int sk = 0;
        for (int k = 0; k < 3; k++) sk |= w->kv[i].key.n == strlen(split_keys[k]) && !memcmp(w->kv[i].key.s, split_keys[k], w->kv[i].key.n);
        if (sk) continue;
        put_str(w, w->kv[i].key);
        put_u32(w, w->kv[i].val.type);
        put_value(w, &w->kv[i].val);
    }
    if (w->parts) {
        uint16_t no = (uint16_t)part, count = (uint16_t)w->n_parts;
        int32_t total = (int32_t)w->n_t;
        put_str(w, (gguf_str){ GGUF_KEY_SPLIT_NO, strlen(GGUF_KEY_SPLIT_NO) });
        put_u32(w, GGUF_TYPE_UINT16);
        put(w, &no, 2);
        put_str(w, (gguf_str){ GGUF_KEY_SPLIT_COUNT, strlen(GGUF_KEY_SPLIT_COUNT) });
        put_u32(w, GGUF_TYPE_UINT16);
        put(w, &count, 2);
        put_str(w, (gguf_str){ GGUF_KEY_SPLIT_TENSORS, strlen(GGUF_KEY_SPLIT_TENSORS) });
        put_u32(w, GGUF_TYPE_INT32);
        put(w, &total, 4);
    }
    for (uint64_t i = 0; i < w->n_t; i++) {
        const struct wtensor *t = &w->t[i];
        if (t->part != part) continue;
        put_str(w, (gguf_str){ t->name, strlen(t->name) });
        put_u32(w, t->n_dims);
        for (uint32_t d = 0; d < t->n_dims; d++) put_u64(w, t->ne[d]);
        put_u32(w, t->type);
        put_u64(w, t->offset);
    }
    put_zeros(w, pad_to(w->pos, w->alignment));
}

/* Make part's file the one written to. */
static void use_part(gguf_writer *w, uint32_t part)
{
    if (!w->parts) return;
    w->out = w->parts[part].out;
    w->fp = moeq_outfile_fp(w->out);
}

int gguf_writer_begin_data(gguf_writer *w)
{
    if (!w) return -1;
    if (w->in_data) return 0;
    if (w->n_t > (uint64_t)INT32_MAX && w->parts) return werr(w, "too many tensors for split.tensors.count");
    uint64_t off = 0;
    for (uint64_t i = 0; i < w->n_t; i++) {
        if (i && w->t[i].part != w->t[i - 1].part) off = 0;
        w->t[i].offset = off;
        uint64_t p = pad_to(w->t[i].nbytes, w->alignment);
        if (w->t[i].nbytes > UINT64_MAX - p || off > UINT64_MAX - (w->t[i].nbytes + p))
            return werr(w, "tensor data size overflows");
        off += w->t[i].nbytes + p;
    }
    for (uint32_t part = 0; part < (w->parts ? w->n_parts : 1); part++) {
        use_part(w, part);
        put_header(w, part);
        if (moeq_outfile_failed(w->out, w->err, sizeof w->err)) return -1;
    }
    use_part(w, w->n_t ? w->t[0].part : 0);
    w->in_data = 1;
    w->cur = 0;
    w->cur_done = 0;
    /* Zero-byte tensors cannot exist (dimensions are >= 1), so nothing to skip. */
    return 0;
}

int gguf_writer_write(gguf_writer *w, const void *data, size_t n)
{
    if (!w) return -1;
    if (!w->in_data && gguf_writer_begin_data(w)) return -1;
    const uint8_t *p = data;
    while (n) {
        if (w->cur >= w->n_t) return werr(w, "%zu bytes written past the last tensor", n);
        const struct wtensor *t = &w->t[w->cur];
        uint64_t left = t->nbytes - w->cur_done;
        size_t k = n < left ? n : (size_t)left;
        put(w, p, k);
        p += k;
        n -= k;
        w->cur_done += k;
        if (w->cur_done == t->nbytes) {
            put_zeros(w, pad_to(t->nbytes, w->alignment));
            w->cur++;
            w->cur_done = 0;
            if (w->cur < w->n_t && w->t[w->cur].part != t->part) {
                if (moeq_outfile_failed(w->out, w->err, sizeof w->err)) return -1;
                use_part(w, w->t[w->cur].part);
            }
        }
    }
    if (moeq_outfile_failed(w->out, w->err, sizeof w->err)) return -1;
    return 0;
}

static void writer_free(gguf_writer *w)
{
    for (uint64_t i = 0; i < w->n_kv; i++) {
        free((void *)w->kv[i].key.s);
        value_free_owned(&w->kv[i].val);
    }
    free(w->kv);
    for (uint64_t i = 0; i < w->n_t; i++) free(w->t[i].name);
    free(w->t);
    for (int i = 0; i < w->n_inputs; i++) free(w->inputs[i]);
    free(w->inputs);
    for (uint32_t i = 0; i < w->n_parts; i++) free(w->parts[i].path);
    free(w->parts);
    free(w->path);
    free(w);
}

void gguf_writer_abort(gguf_writer *w)
{
    if (!w) return;
    if (w->parts)
        for (uint32_t i = 0; i < w->n_parts; i++) moeq_outfile_abort(w->parts[i].out);
    else
        moeq_outfile_abort(w->out);
    writer_free(w);
}

int gguf_writer_end(gguf_writer *w, int ok, char *err, size_t errlen)
{
    if (!ok) {
        moeq_set_err(err, errlen, "%s", gguf_writer_error(w));
        gguf_writer_abort(w);
        return -1;
    }
    if (gguf_writer_finish(w) != 0) return moeq_fail(err, errlen, "%s", gguf_writer_error(NULL));
    return 0;
}

int gguf_writer_finish(gguf_writer *w)
{
    if (!w) return -1;
    int rc = -1;
    if (!w->in_data && gguf_writer_begin_data(w)) goto fail;
    if (w->cur < w->n_t) {
        werr(w, "tensor '%s' has %llu of %llu bytes written", w->t[w->cur].name,
             (unsigned long long)w->cur_done, (unsigned long long)w->t[w->cur].nbytes);
        goto fail;
    }
    for (uint32_t i = 0; i < (w->parts ? w->n_parts : 1); i++) {
        moeq_outfile *out = w->parts ? w->parts[i].out : w->out;
        if (w->parts) w->parts[i].out = NULL;
        w->out = NULL;
        if (moeq_outfile_commit(out, w->err, sizeof w->err) != 0) goto fail;
    }
    writer_free(w);
    return 0;
fail:
    snprintf(finish_err, sizeof finish_err, "%s", w->err);
    gguf_writer_abort(w);
    return rc;
}
