/*
 * gguf_build.h: a tiny byte builder for hand-made GGUF files in tests (and
 * the corpus generator). It writes fields exactly as given, so a test can
 * produce both valid files and deliberately broken ones the writer would
 * refuse to make.
 */
#ifndef MOEQ_GGUF_BUILD_H
#define MOEQ_GGUF_BUILD_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gguf/gguf.h"

typedef struct {
    uint8_t *p;
    size_t   n, cap;
} gbuf;

static inline void gb_put(gbuf *b, const void *src, size_t n)
{
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n) cap *= 2;
        uint8_t *np = realloc(b->p, cap);
        if (!np) abort();
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->n, src, n);
    b->n += n;
}
static inline void gb_u8(gbuf *b, uint8_t v) { gb_put(b, &v, 1); }
static inline void gb_u16(gbuf *b, uint16_t v) { gb_put(b, &v, 2); }
static inline void gb_u32(gbuf *b, uint32_t v) { gb_put(b, &v, 4); }
static inline void gb_u64(gbuf *b, uint64_t v) { gb_put(b, &v, 8); }
static inline void gb_f32(gbuf *b, float v) { gb_put(b, &v, 4); }
static inline void gb_f64(gbuf *b, double v) { gb_put(b, &v, 8); }
static inline void gb_str(gbuf *b, const char *s) { gb_u64(b, strlen(s)); gb_put(b, s, strlen(s)); }
static inline void gb_header(gbuf *b, uint32_t version, uint64_t n_tensors, uint64_t n_kv)
{
    gb_put(b, "GGUF", 4);
    gb_u32(b, version);
    gb_u64(b, n_tensors);
    gb_u64(b, n_kv);
}
/* Key and value type of a key/value; the caller appends the value. */
static inline void gb_kv(gbuf *b, const char *key, uint32_t type) { gb_str(b, key); gb_u32(b, type); }
/* One tensor info with n_dims dims. */
static inline void gb_tinfo(gbuf *b, const char *name, uint32_t n_dims, const uint64_t *ne,
                            uint32_t type, uint64_t offset)
{
    gb_str(b, name);
    gb_u32(b, n_dims);
    for (uint32_t i = 0; i < n_dims; i++) gb_u64(b, ne[i]);
    gb_u32(b, type);
    gb_u64(b, offset);
}
static inline void gb_pad(gbuf *b, size_t align)
{
    while (b->n % align) gb_u8(b, 0);
}

/* A small valid v3 file: one key of every value type (including an array
 * of arrays and an array of strings), alignment 64, two tensors. */
static inline gbuf gb_sample(void)
{
    gbuf b = {0};
    gb_header(&b, 3, 2, 17);
    gb_kv(&b, "general.architecture", GGUF_TYPE_STRING); gb_str(&b, "qwen3moe");
    gb_kv(&b, "general.alignment", GGUF_TYPE_UINT32); gb_u32(&b, 64);
    gb_kv(&b, "t.u8", GGUF_TYPE_UINT8); gb_u8(&b, 200);
    gb_kv(&b, "t.i8", GGUF_TYPE_INT8); gb_u8(&b, 0xfe);
    gb_kv(&b, "t.u16", GGUF_TYPE_UINT16); gb_u16(&b, 60000);
    gb_kv(&b, "t.i16", GGUF_TYPE_INT16); gb_u16(&b, (uint16_t)-300);
    gb_kv(&b, "t.u32", GGUF_TYPE_UINT32); gb_u32(&b, 4000000000u);
    gb_kv(&b, "t.i32", GGUF_TYPE_INT32); gb_u32(&b, (uint32_t)-70000);
    gb_kv(&b, "t.f32", GGUF_TYPE_FLOAT32); gb_f32(&b, 1.5f);
    gb_kv(&b, "t.bool", GGUF_TYPE_BOOL); gb_u8(&b, 1);
    gb_kv(&b, "t.u64", GGUF_TYPE_UINT64); gb_u64(&b, 1ull << 40);
    gb_kv(&b, "t.i64", GGUF_TYPE_INT64); gb_u64(&b, (uint64_t)-5);
    gb_kv(&b, "t.f64", GGUF_TYPE_FLOAT64); gb_f64(&b, -2.25);
    gb_kv(&b, "t.arr_i32", GGUF_TYPE_ARRAY); gb_u32(&b, GGUF_TYPE_INT32); gb_u64(&b, 3);
    gb_u32(&b, 1); gb_u32(&b, (uint32_t)-2); gb_u32(&b, 3);
    gb_kv(&b, "t.arr_str", GGUF_TYPE_ARRAY); gb_u32(&b, GGUF_TYPE_STRING); gb_u64(&b, 2);
    gb_str(&b, "hello"); gb_str(&b, "");
    /* [[1.0, 2.0], []] of f32 */
    gb_kv(&b, "t.arr_arr", GGUF_TYPE_ARRAY); gb_u32(&b, GGUF_TYPE_ARRAY); gb_u64(&b, 2);
    gb_u32(&b, GGUF_TYPE_FLOAT32); gb_u64(&b, 2); gb_f32(&b, 1.0f); gb_f32(&b, 2.0f);
    gb_u32(&b, GGUF_TYPE_FLOAT32); gb_u64(&b, 0);
    gb_kv(&b, "t.empty", GGUF_TYPE_STRING); gb_str(&b, "");
    uint64_t ne_a[2] = { 4, 2 }, ne_b[1] = { 32 };
    gb_tinfo(&b, "a.weight", 2, ne_a, 0, 0);       /* F32, 32 bytes */
    gb_tinfo(&b, "b.weight", 1, ne_b, 8, 64);      /* Q8_0, 34 bytes */
    gb_pad(&b, 64);
    for (int i = 0; i < 8; i++) gb_f32(&b, (float)i);
    gb_pad(&b, 64);
    for (int i = 0; i < 34; i++) gb_u8(&b, (uint8_t)i);
    gb_pad(&b, 64);
    return b;
}

#endif
