/*
 * fuzz_gguf.c: libFuzzer harness for the GGUF reader (`make fuzz`).
 *
 * Opens the input with gguf_open_buffer and, when it opens, touches
 * everything a caller may touch (every key and value, nested arrays, every
 * tensor's first and last data byte, the lookups), so ASan checks the
 * reader's promise that a file which opens is safe to use. Numeric arrays
 * are read through every accessor, whatever their element type (a float
 * element read as an integer must saturate, not be undefined behaviour).
 */
#include "fuzz.h"
#include "gguf/gguf.h"

static uint64_t gguf_walk_value(const gguf_value *v, int depth)
{
    uint64_t h = v->type;
    FUZZ_ASSERT(depth <= 64);   /* the reader caps nesting far below this */
    switch (v->type) {
    case GGUF_TYPE_STRING:
        if (v->v.str.n) h += (unsigned char)v->v.str.s[0] + (unsigned char)v->v.str.s[v->v.str.n - 1];
        break;
    case GGUF_TYPE_ARRAY:
        if (v->v.arr.items) {
            for (uint64_t i = 0; i < v->v.arr.n; i++) h += gguf_walk_value(&v->v.arr.items[i], depth + 1);
        } else if (v->v.arr.n) {
            h += gguf_arr_u64(v, 0) + gguf_arr_u64(v, v->v.arr.n - 1);
            h += (uint64_t)gguf_arr_i64(v, v->v.arr.n / 2);
            h += (uint64_t)(gguf_arr_f64(v, v->v.arr.n - 1) != 0);
        }
        break;
    default:
        h += v->v.u64;
    }
    return h;
}

FUZZ_ENTRY(gguf)
{
    char err[512];
    gguf_file *f = gguf_open_buffer(data, size, "fuzz.gguf", err, sizeof err);
    if (!f) {
        /* one line, naming the input */
        FUZZ_ASSERT(strncmp(err, "fuzz.gguf: ", 11) == 0 && !strchr(err, '\n'));
        return 0;
    }
    volatile uint64_t sink = 0;
    for (uint64_t i = 0; i < f->n_kv; i++) {
        sink += gguf_walk_value(&f->kv[i].val, 0);
        char key[300];
        size_t n = f->kv[i].key.n < sizeof key - 1 ? (size_t)f->kv[i].key.n : sizeof key - 1;
        memcpy(key, f->kv[i].key.s, n);
        key[n] = 0;
        FUZZ_ASSERT(strlen(key) != f->kv[i].key.n || gguf_find_kv(f, key) == &f->kv[i]);
    }
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const gguf_tensor *t = &f->tensors[i];
        const uint8_t *p = t->data;
        FUZZ_ASSERT(p >= f->base && t->nbytes <= f->size && p + t->nbytes <= f->base + f->size);
        sink += p[0] + p[t->nbytes - 1];
    }
    char s[64];
    uint64_t u;
    (void)gguf_get_str(f, "general.architecture", s, sizeof s);
    (void)gguf_get_u64(f, "general.alignment", &u);
    (void)sink;
    gguf_close(f);
    return 0;
}
