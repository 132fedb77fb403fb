/*
 * cmd_info.c: `moeq info FILE [--json]`: what a GGUF file holds.
 *
 * Prints the architecture and its hyperparameters (the ARCH.* keys), the
 * rest of the metadata (long arrays and strings abbreviated), a tensor table
 * (name, type, shape, bytes), the recipe-group summary and totals. --json
 * emits the same as one JSON object. --check also reads every tensor's
 * values and names each tensor holding a NaN or an infinity (exit status
 * 1). Everything printed comes from a file
 * the reader has validated, but names and strings are still escaped: they
 * are arbitrary bytes and must not break the output.
 */
#include "cmd.h"
#include "quant/finite.h"
#include "gguf/gguf.h"
#include "quant/quants.h"
#include "quant/tensor_groups.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ARRAY_SHOWN   8    /* array items printed before "..." */
#define STRING_SHOWN  120  /* string bytes printed before "..." */

static void usage(FILE *out)
{
    fprintf(out,
            "usage: moeq info FILE [--json] [--check]\n"
            "\n"
            "Show a GGUF file: architecture and hyperparameters, metadata (long arrays\n"
            "abbreviated), tensors (name, type, shape, bytes), the tensor-group summary\n"
            "and totals (bytes, parameters, bits per weight).\n"
            "\n"
            "  --json   print one JSON object instead of text\n"
            "  --check  also read every tensor's values; name each tensor holding a NaN\n"
            "           or an infinity (and its first such element) and exit with 1\n"
            "  -q, -v, --log-level L  quiet, verbose, or error|warn|info|debug\n");
}

/* ============================================================ text output */

/* Print s quoted, escaping anything not printable ASCII; at most max bytes. */
static void print_str(FILE *out, gguf_str s, uint64_t max)
{
    fputc('"', out);
    uint64_t n = s.n < max ? s.n : max;
    for (uint64_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s.s[i];
        if (c == '"' || c == '\\') fprintf(out, "\\%c", c);
        else if (c == '\n') fputs("\\n", out);
        else if (c == '\t') fputs("\\t", out);
        else if (c < 0x20 || c == 0x7f) fprintf(out, "\\x%02x", c);
        else fputc(c, out);
    }
    fputc('"', out);
    if (s.n > max) fprintf(out, "... (%llu bytes)", (unsigned long long)s.n);
}

/* A name for display: unquoted, control bytes replaced. */
static void print_name(FILE *out, gguf_str s)
{
    for (uint64_t i = 0; i < s.n; i++) {
        unsigned char c = (unsigned char)s.s[i];
        fputc(c < 0x20 || c == 0x7f ? '?' : c, out);
    }
}

/* An f32 value (held as double) as the double of its shortest decimal
 * spelling, so 1e-6f shows as 1e-06 and not 9.99999997e-07. */
static double f32_shortest(double d)
{
    float f = (float)d;
    char buf[32];
    for (int p = 6; p <= 9; p++) {
        snprintf(buf, sizeof buf, "%.*g", p, d);
        if (strtof(buf, NULL) == f) break;
    }
    return strtod(buf, NULL);
}

static void print_scalar(FILE *out, const gguf_value *v)
{
    switch (v->type) {
    case GGUF_TYPE_UINT8: case GGUF_TYPE_UINT16: case GGUF_TYPE_UINT32: case GGUF_TYPE_UINT64:
        fprintf(out, "%llu", (unsigned long long)v->v.u64); break;
    case GGUF_TYPE_INT8: case GGUF_TYPE_INT16: case GGUF_TYPE_INT32: case GGUF_TYPE_INT64:
        fprintf(out, "%lld", (long long)v->v.i64); break;
    case GGUF_TYPE_FLOAT32: fprintf(out, "%.9g", f32_shortest(v->v.f64)); break;
    case GGUF_TYPE_FLOAT64: fprintf(out, "%.17g", v->v.f64); break;
    case GGUF_TYPE_BOOL: fputs(v->v.u64 ? "true" : "false", out); break;
    default: fputs("?", out);
    }
}

static void print_value(FILE *out, const gguf_value *v)
{
    if (v->type == GGUF_TYPE_STRING) { print_str(out, v->v.str, STRING_SHOWN); return; }
    if (v->type != GGUF_TYPE_ARRAY) { print_scalar(out, v); return; }
    uint64_t n = v->v.arr.n, shown = n < ARRAY_SHOWN ? n : ARRAY_SHOWN;
    fprintf(out, "[%s x %llu] [", gguf_type_name(v->v.arr.type), (unsigned long long)n);
    for (uint64_t i = 0; i < shown; i++) {
        if (i) fputs(", ", out);
        if (v->v.arr.items) {
            const gguf_value *it = &v->v.arr.items[i];
            if (it->type == GGUF_TYPE_STRING) print_str(out, it->v.str, 40);
            else print_value(out, it);
        } else {
            gguf_value e = { .type = v->v.arr.type };
            if (v->v.arr.type == GGUF_TYPE_FLOAT32 || v->v.arr.type == GGUF_TYPE_FLOAT64)
                e.v.f64 = gguf_arr_f64(v, i);   /* print_scalar shortens f32 */
            else if (v->v.arr.type == GGUF_TYPE_INT8 || v->v.arr.type == GGUF_TYPE_INT16 ||
                     v->v.arr.type == GGUF_TYPE_INT32 || v->v.arr.type == GGUF_TYPE_INT64)
                e.v.i64 = gguf_arr_i64(v, i);
            else
                e.v.u64 = gguf_arr_u64(v, i);
            print_scalar(out, &e);
        }
    }
    if (n > shown) fputs(", ...", out);
    fputc(']', out);
}

/* The architecture prefix "ARCH." of a key, or 0 when the key is not one
 * of the architecture's hyperparameters. */
static size_t arch_prefix(const gguf_kv *kv, const char *arch)
{
    size_t al = strlen(arch);
    if (!al || kv->key.n <= al + 1) return 0;
    if (memcmp(kv->key.s, arch, al) != 0 || kv->key.s[al] != '.') return 0;
    return al + 1;
}

static void shape_str(const gguf_tensor *t, char *buf, size_t len)
{
    size_t k = 0;
    k += (size_t)snprintf(buf + k, len - k, "[");
    for (uint32_t d = 0; d < t->n_dims && k < len; d++)
        k += (size_t)snprintf(buf + k, len - k, "%s%llu", d ? ", " : "", (unsigned long long)t->ne[d]);
    if (k < len) snprintf(buf + k, len - k, "]");
}

static uint64_t tensor_nelem(const gguf_tensor *t)
{
    return t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];   /* checked by the reader */
}

static void print_text(FILE *out, const gguf_file *f, const char *arch,
                       const struct moeq_group_summary *s)
{
    fprintf(out, "file: %s\n", f->path);
    fprintf(out, "GGUF v%u, %llu bytes, %llu key/values, %llu tensors, alignment %llu, data at byte %llu\n",
            f->version, (unsigned long long)f->size, (unsigned long long)f->n_kv,
            (unsigned long long)f->n_tensors, (unsigned long long)f->alignment,
            (unsigned long long)f->data_offset);

    fprintf(out, "\narchitecture: %s\n", arch[0] ? arch : "(none: no general.architecture)");
    for (uint64_t i = 0; i < f->n_kv; i++) {
        size_t p = arch_prefix(&f->kv[i], arch);
        if (!p) continue;
        gguf_str rest = { f->kv[i].key.s + p, f->kv[i].key.n - p };
        fputs("  ", out);
        print_name(out, rest);
        fprintf(out, "%*s", rest.n < 40 ? (int)(40 - rest.n) : 1, "");
        print_value(out, &f->kv[i].val);
        fputc('\n', out);
    }

    fprintf(out, "\nmetadata:\n");
    for (uint64_t i = 0; i < f->n_kv; i++) {
        if (arch_prefix(&f->kv[i], arch)) continue;
        fputs("  ", out);
        print_name(out, f->kv[i].key);
        fprintf(out, "%*s", f->kv[i].key.n < 40 ? (int)(40 - f->kv[i].key.n) : 1, "");
        print_value(out, &f->kv[i].val);
        fputc('\n', out);
    }

    fprintf(out, "\ntensors:\n  %-40s %-8s %-24s %14s\n", "name", "type", "shape", "bytes");
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const gguf_tensor *t = &f->tensors[i];
        char shape[128];
        shape_str(t, shape, sizeof shape);
        fputs("  ", out);
        print_name(out, t->name);
        fprintf(out, "%*s %-8s %-24s %14llu\n", t->name.n < 40 ? (int)(40 - t->name.n) : 0, "",
                moeq_type_name((int)t->type), shape, (unsigned long long)t->nbytes);
    }

    fprintf(out, "\ngroups:\n");
    moeq_group_summary_print(out, s);
}

/* ============================================================ JSON output */

/* A JSON string from arbitrary bytes: jansson insists on UTF-8, so bytes
 * that are not valid UTF-8 become '?'. */
static json_t *jstr(gguf_str s)
{
    json_t *j = json_stringn(s.s, (size_t)s.n);
    if (j) return j;
    char *c = malloc(s.n ? (size_t)s.n : 1);
    if (!c) return json_null();
    for (uint64_t i = 0; i < s.n; i++) c[i] = (unsigned char)s.s[i] < 0x80 ? s.s[i] : '?';
    j = json_stringn(c, (size_t)s.n);
    free(c);
    return j ? j : json_null();
}

static json_t *jnum_u64(uint64_t v)
{
    return v <= (uint64_t)INT64_MAX ? json_integer((json_int_t)v) : json_real((double)v);
}

static json_t *jreal(double d) { return isfinite(d) ? json_real(d) : json_null(); }

static json_t *jvalue(const gguf_value *v)
{
    switch (v->type) {
    case GGUF_TYPE_UINT8: case GGUF_TYPE_UINT16: case GGUF_TYPE_UINT32: case GGUF_TYPE_UINT64:
        return jnum_u64(v->v.u64);
    case GGUF_TYPE_INT8: case GGUF_TYPE_INT16: case GGUF_TYPE_INT32: case GGUF_TYPE_INT64:
        return json_integer((json_int_t)v->v.i64);
    case GGUF_TYPE_FLOAT32: return jreal(f32_shortest(v->v.f64));
    case GGUF_TYPE_FLOAT64: return jreal(v->v.f64);
    case GGUF_TYPE_BOOL: return json_boolean(v->v.u64 != 0);
    case GGUF_TYPE_STRING: {
        if (v->v.str.n <= 4 * STRING_SHOWN) return jstr(v->v.str);
        json_t *o = json_object();
        json_object_set_new(o, "bytes", jnum_u64(v->v.str.n));
        json_object_set_new(o, "first", jstr((gguf_str){ v->v.str.s, STRING_SHOWN }));
        return o;
    }
    case GGUF_TYPE_ARRAY: {
        /* Arrays are always an object so a reader need not guess whether
         * it was abbreviated. */
        json_t *o = json_object(), *items = json_array();
        uint64_t n = v->v.arr.n, shown = n < ARRAY_SHOWN ? n : ARRAY_SHOWN;
        json_object_set_new(o, "type", json_string(gguf_type_name(v->v.arr.type)));
        json_object_set_new(o, "count", jnum_u64(n));
        for (uint64_t i = 0; i < shown; i++) {
            if (v->v.arr.items) {
                json_array_append_new(items, jvalue(&v->v.arr.items[i]));
            } else {
                uint32_t et = v->v.arr.type;
                if (et == GGUF_TYPE_FLOAT32) json_array_append_new(items, jreal(f32_shortest(gguf_arr_f64(v, i))));
                else if (et == GGUF_TYPE_FLOAT64) json_array_append_new(items, jreal(gguf_arr_f64(v, i)));
                else if (et == GGUF_TYPE_BOOL) json_array_append_new(items, json_boolean(gguf_arr_u64(v, i) != 0));
                else if (et == GGUF_TYPE_INT8 || et == GGUF_TYPE_INT16 || et == GGUF_TYPE_INT32 || et == GGUF_TYPE_INT64)
                    json_array_append_new(items, json_integer(gguf_arr_i64(v, i)));
                else json_array_append_new(items, jnum_u64(gguf_arr_u64(v, i)));
            }
        }
        json_object_set_new(o, "items", items);
        json_object_set_new(o, "truncated", json_boolean(n > shown));
        return o;
    }
    default: return json_null();
    }
}

/* Object key from file bytes (NUL-terminated, valid UTF-8). */
static void jset(json_t *obj, gguf_str key, json_t *val)
{
    char buf[512];
    size_t n = key.n < sizeof buf - 1 ? (size_t)key.n : sizeof buf - 1;
    memcpy(buf, key.s, n);
    buf[n] = 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)buf[i] >= 0x80 || buf[i] == 0) buf[i] = '?';
    json_object_set_new(obj, buf, val);
}

static json_t *build_json(const gguf_file *f, const char *arch, const struct moeq_group_summary *s)
{
    json_t *root = json_object();
    json_object_set_new(root, "file", jstr((gguf_str){ f->path, strlen(f->path) }));
    json_object_set_new(root, "version", json_integer(f->version));
    json_object_set_new(root, "file_bytes", jnum_u64(f->size));
    json_object_set_new(root, "alignment", jnum_u64(f->alignment));
    json_object_set_new(root, "data_offset", jnum_u64(f->data_offset));
    json_object_set_new(root, "architecture", arch[0] ? json_string(arch) : json_null());

    json_t *hp = json_object(), *meta = json_object();
    for (uint64_t i = 0; i < f->n_kv; i++) {
        size_t p = arch_prefix(&f->kv[i], arch);
        if (p) jset(hp, (gguf_str){ f->kv[i].key.s + p, f->kv[i].key.n - p }, jvalue(&f->kv[i].val));
        else jset(meta, f->kv[i].key, jvalue(&f->kv[i].val));
    }
    json_object_set_new(root, "hyperparameters", hp);
    json_object_set_new(root, "metadata", meta);

    json_t *ts = json_array();
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const gguf_tensor *t = &f->tensors[i];
        json_t *o = json_object(), *shape = json_array();
        for (uint32_t d = 0; d < t->n_dims; d++) json_array_append_new(shape, jnum_u64(t->ne[d]));
        json_object_set_new(o, "name", jstr(t->name));
        json_object_set_new(o, "type", json_string(moeq_type_name((int)t->type)));
        json_object_set_new(o, "shape", shape);
        json_object_set_new(o, "bytes", jnum_u64(t->nbytes));
        json_object_set_new(o, "offset", jnum_u64(t->offset));
        json_object_set_new(o, "group", json_string(moeq_group_key(moeq_tensor_group_n(t->name.s, t->name.n))));
        json_array_append_new(ts, o);
    }
    json_object_set_new(root, "tensors", ts);

    /* group -> type -> count, the shape of a recipe table */
    json_t *groups = json_object();
    for (int g = 0; g < MOEQ_GROUP_COUNT; g++) {
        json_t *types = NULL;
        for (int t = 0; t < MOEQ_TYPE_COUNT; t++) {
            if (!s->count[g][t]) continue;
            if (!types) types = json_object();
            json_object_set_new(types, moeq_type_name(t), jnum_u64(s->count[g][t]));
        }
        if (types) json_object_set_new(groups, moeq_group_key(g), types);
    }
    json_object_set_new(root, "groups", groups);

    json_t *tot = json_object();
    json_object_set_new(tot, "tensors", jnum_u64(s->n_tensors));
    json_object_set_new(tot, "parameters", jnum_u64(s->total_elems));
    json_object_set_new(tot, "bytes", jnum_u64(s->total_bytes));
    json_object_set_new(tot, "gb", json_real((double)s->total_bytes / 1e9));
    json_object_set_new(tot, "gib", json_real((double)s->total_bytes / (1024.0 * 1024.0 * 1024.0)));
    json_object_set_new(tot, "bits_per_weight", json_real(moeq_group_summary_bpw(s)));
    json_object_set_new(root, "totals", tot);
    return root;
}

/* ================================================================= command */

int cmd_info(int argc, char **argv)
{
    const char *path = NULL;
    int json = 0, check = 0;
    for (int i = 1; i < argc; i++) {
        if (cli_is_help(argv[i])) { usage(stdout); return 0; }
        CLI_LOG_OPTION("info", argc, argv, i);
        if (!strcmp(argv[i], "--json")) json = 1;
        else if (!strcmp(argv[i], "--check")) check = 1;
        else if (argv[i][0] == '-' && argv[i][1]) return cli_usage_error("info", "unknown option '%s'", argv[i]);
        else if (path) return cli_usage_error("info", "more than one FILE");
        else path = argv[i];
    }
    if (!path) return cli_usage_error("info", "missing FILE");

    char err[1024];
    gguf_file *f = gguf_open(path, err, sizeof err);
    if (!f) { cli_error("%s", err); return 1; }

    char arch[128] = "";
    if (gguf_get_str(f, "general.architecture", arch, sizeof arch) != 0) arch[0] = 0;
    struct moeq_group_summary *s = malloc(sizeof *s);
    if (!s) { gguf_close(f); cli_error("%s: out of memory", path); return 1; }
    moeq_group_summary_init(s);
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const gguf_tensor *t = &f->tensors[i];
        moeq_group_summary_add(s, t->name.s, (size_t)t->name.n, (int)t->type, tensor_nelem(t), t->nbytes);
    }

    int rc = 0;
    if (json) {
        json_t *root = build_json(f, arch, s);
        if (!root || json_dumpf(root, stdout, JSON_INDENT(1) | JSON_PRESERVE_ORDER) != 0) {
            cli_error("%s: cannot format JSON", path);
            rc = 1;
        } else {
            fputc('\n', stdout);
        }
        json_decref(root);
    } else {
        print_text(stdout, f, arch, s);
    }
    if (check) {
        uint64_t bad = 0;
        for (uint64_t i = 0; i < f->n_tensors; i++) {
            if (moeq_tensor_check_finite(&f->tensors[i], err, sizeof err) == 0) continue;
            cli_error("%s: %s", path, err);
            bad++;
        }
        if (bad) {
            cli_error("%s: %llu of %llu tensors hold values that are not numbers", path,
                      (unsigned long long)bad, (unsigned long long)f->n_tensors);
            rc = 1;
        } else if (!json) {
            printf("\ncheck: every value of the %llu tensors is a number\n", (unsigned long long)f->n_tensors);
        }
    }
    if (fflush(stdout) != 0 || ferror(stdout)) { cli_error("writing stdout: %s", strerror(errno)); rc = 1; }
    free(s);
    gguf_close(f);
    return rc;
}
