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

#endif
