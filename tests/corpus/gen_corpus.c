/*
 * tests/corpus/gen_corpus.c: writes the crafted bad GGUF files of tests/corpus/.
 *
 * Each file breaks one rule the reader enforces: truncation inside every
 * section (header, each key/value kind, tensor info, data), huge counts and
 * lengths, bad offsets, overlapping tensors, unknown type ids, bad
 * alignment, wrong magic/version, n_dims 0 and 5, a zero dimension, element
 * overflow, duplicate names. Every file is a few hundred bytes at most.
 *
 * The test suite includes this file (tests/test_corpus.c) to regenerate the
 * corpus and compare it with the checked-in copy; to rewrite the copy:
 *
 *   cc -std=c11 -D_GNU_SOURCE -Isrc -Itests -DGEN_CORPUS_MAIN \
 *      -o /tmp/gen_corpus tests/corpus/gen_corpus.c src/gguf.c src/quants.c \
 *      && /tmp/gen_corpus tests/corpus
 */
#include "../gguf_build.h"

#include <stdio.h>

typedef int (*corpus_emit_fn)(void *ctx, const char *name, const gbuf *b);

#define LONG_KEY  "general.a_key_long_enough_to_fill_the_count"
#define LONG_NAME "blk.0.a_tensor_name_of_forty_characters_"

/* n bytes of filler, so a count check passes and the field itself fails. */
static void filler(gbuf *b, size_t n)
{
    for (size_t i = 0; i < n; i++) gb_u8(b, 0x55);
}

/* A header, n_kv keys and n_tensors counts as given. */
static void hdr(gbuf *b, uint64_t n_tensors, uint64_t n_kv) { b->n = 0; gb_header(b, 3, n_tensors, n_kv); }

/* Fill pad bytes to the alignment and n data bytes. */
static void data(gbuf *b, size_t align, size_t n)
{
    gb_pad(b, align);
    for (size_t i = 0; i < n; i++) gb_u8(b, (uint8_t)i);
}

/* A scalar key/value of type t with a value of the right width. */
static void kv_scalar(gbuf *b, const char *key, uint32_t t)
{
    gb_kv(b, key, t);
    uint64_t v = 1;
    gb_put(b, &v, gguf_type_size(t));
}

static int corpus_generate(corpus_emit_fn emit, void *ctx)
{
    gbuf b = {0};
    int rc = 0;
    char name[128];
    uint64_t ne2[2] = { 32, 2 }, ne5[5] = { 32, 1, 1, 1, 1 };
#define EMIT(nm) do { rc |= emit(ctx, nm, &b); } while (0)

    /* ---- magic, version, header */
    b.n = 0; EMIT("empty.gguf");
    b.n = 0; gb_put(&b, "GGU", 3); EMIT("trunc_magic.gguf");
    hdr(&b, 0, 0); b.p[0] = 'F'; EMIT("bad_magic.gguf");
    hdr(&b, 0, 0); b.p[4] = 1; EMIT("version_1.gguf");
    hdr(&b, 0, 0); b.p[4] = 4; EMIT("version_4.gguf");
    hdr(&b, 0, 0); b.p[4] = 0; b.p[7] = 0x80; EMIT("version_huge.gguf");
    hdr(&b, 0, 0); b.n = 6; EMIT("trunc_version.gguf");
    hdr(&b, 0, 0); b.n = 12; EMIT("trunc_tensor_count.gguf");
    hdr(&b, 0, 0); b.n = 20; EMIT("trunc_kv_count.gguf");

    /* ---- huge counts and lengths */
    hdr(&b, 9999999999ull, 0); gb_u64(&b, 0); EMIT("huge_tensor_count.gguf");
    hdr(&b, UINT64_MAX, 0); gb_u64(&b, 0); EMIT("max_tensor_count.gguf");
    hdr(&b, 0, 1ull << 63); gb_u64(&b, 0); EMIT("huge_kv_count.gguf");
    hdr(&b, 0, 2); kv_scalar(&b, "a", GGUF_TYPE_UINT8); EMIT("kv_count_past_end.gguf");
    hdr(&b, 0, 1); gb_u64(&b, 1ull << 62); gb_put(&b, "key", 3); filler(&b, 32); EMIT("huge_key_length.gguf");
    hdr(&b, 0, 1); gb_u64(&b, UINT64_MAX); filler(&b, 32); EMIT("max_key_length.gguf");
    hdr(&b, 0, 1); gb_kv(&b, "s", GGUF_TYPE_STRING); gb_u64(&b, UINT64_MAX - 3); gb_put(&b, "abcd", 4);
    EMIT("huge_string_length.gguf");
    hdr(&b, 0, 1); gb_kv(&b, "a", GGUF_TYPE_ARRAY); gb_u32(&b, GGUF_TYPE_UINT64); gb_u64(&b, 1ull << 61);
    gb_u64(&b, 0); EMIT("array_bytes_overflow.gguf");
    hdr(&b, 0, 1); gb_kv(&b, "a", GGUF_TYPE_ARRAY); gb_u32(&b, GGUF_TYPE_STRING); gb_u64(&b, 1ull << 40);
    gb_str(&b, "x"); EMIT("huge_string_array.gguf");
    hdr(&b, 0, 1); gb_kv(&b, "a", GGUF_TYPE_ARRAY); gb_u32(&b, GGUF_TYPE_ARRAY); gb_u64(&b, 1ull << 50);
    gb_u32(&b, GGUF_TYPE_UINT8); gb_u64(&b, 0); EMIT("huge_nested_array.gguf");
    hdr(&b, 0, 1); gb_kv(&b, "a", GGUF_TYPE_ARRAY); gb_u32(&b, GGUF_TYPE_STRING); gb_u64(&b, 2);
    gb_str(&b, "x"); gb_u64(&b, 1ull << 60); EMIT("huge_string_in_array.gguf");
    hdr(&b, 1, 0); gb_u64(&b, 1ull << 62); gb_put(&b, "t", 1); filler(&b, 64); EMIT("huge_tensor_name_length.gguf");

    /* ---- truncated inside each key/value kind */
    for (uint32_t t = 0; t < GGUF_TYPE_COUNT; t++) {
        hdr(&b, 0, 1);
        gb_kv(&b, "key", t);
        if (t == GGUF_TYPE_STRING) { gb_u64(&b, 10); gb_put(&b, "abc", 3); }
        else if (t == GGUF_TYPE_ARRAY) { gb_u32(&b, GGUF_TYPE_INT32); gb_u64(&b, 4); gb_u32(&b, 1); gb_u16(&b, 2); }
        else if (gguf_type_size(t) > 1) { uint64_t v = 0; gb_put(&b, &v, gguf_type_size(t) - 1); }
        snprintf(name, sizeof name, "trunc_kv_value_%s.gguf", gguf_type_name(t));
        EMIT(name);
    }
    /* one complete key first, so the key/value count fits the file size
     * and the cut is met inside the second key */
    hdr(&b, 0, 2); kv_scalar(&b, LONG_KEY, GGUF_TYPE_UINT32); gb_u32(&b, 3); EMIT("trunc_kv_key_length.gguf");
    hdr(&b, 0, 2); kv_scalar(&b, LONG_KEY, GGUF_TYPE_UINT32); gb_u64(&b, 8); gb_put(&b, "gen", 3);
    EMIT("trunc_kv_key.gguf");
    hdr(&b, 0, 1); gb_str(&b, "key"); gb_u16(&b, 0); EMIT("trunc_kv_type.gguf");
    hdr(&b, 0, 1); gb_kv(&b, "a", GGUF_TYPE_ARRAY); gb_u16(&b, 0); EMIT("trunc_array_type.gguf");
    hdr(&b, 0, 1); gb_kv(&b, "a", GGUF_TYPE_ARRAY); gb_u32(&b, GGUF_TYPE_UINT8); gb_u32(&b, 3);
    EMIT("trunc_array_count.gguf");
    hdr(&b, 0, 1); gb_kv(&b, "a", GGUF_TYPE_ARRAY); gb_u32(&b, GGUF_TYPE_STRING); gb_u64(&b, 3);
    gb_str(&b, "one"); gb_u64(&b, 5); gb_put(&b, "tw", 2); EMIT("trunc_string_array.gguf");
    hdr(&b, 0, 1); gb_kv(&b, "a", GGUF_TYPE_ARRAY); gb_u32(&b, GGUF_TYPE_ARRAY); gb_u64(&b, 2);
    gb_u32(&b, GGUF_TYPE_FLOAT32); gb_u64(&b, 1); gb_f32(&b, 1);
    gb_u32(&b, GGUF_TYPE_FLOAT32); gb_u64(&b, 2); gb_f32(&b, 1); EMIT("trunc_nested_array.gguf");
    /* a valid file's second key cut short */
    hdr(&b, 0, 2); gb_kv(&b, "general.architecture", GGUF_TYPE_STRING); gb_str(&b, "qwen3moe");
    gb_u64(&b, 20); gb_put(&b, "qwen3moe.bl", 11); EMIT("trunc_second_key.gguf");

    /* ---- bad values */
    hdr(&b, 0, 1); gb_kv(&b, "k", 13); gb_u8(&b, 0); EMIT("unknown_value_type.gguf");
    hdr(&b, 0, 1); gb_kv(&b, "k", UINT32_MAX); gb_u64(&b, 0); EMIT("unknown_value_type_max.gguf");
    hdr(&b, 0, 1); gb_kv(&b, "k", GGUF_TYPE_ARRAY); gb_u32(&b, 200); gb_u64(&b, 1); gb_u64(&b, 0);
    EMIT("unknown_array_type.gguf");
    hdr(&b, 0, 1); gb_kv(&b, "k", GGUF_TYPE_ARRAY);
    for (int i = 0; i < 64; i++) { gb_u32(&b, GGUF_TYPE_ARRAY); gb_u64(&b, 1); }
    EMIT("deep_nesting.gguf");
    hdr(&b, 0, 2); kv_scalar(&b, "dup", GGUF_TYPE_UINT32); kv_scalar(&b, "dup", GGUF_TYPE_INT8);
    EMIT("duplicate_key.gguf");
    hdr(&b, 0, 1); kv_scalar(&b, "", GGUF_TYPE_UINT8); EMIT("empty_key.gguf");

    /* ---- alignment */
    static const uint32_t bad_align[] = { 0, 3, 48, 0x80000001u };
    for (size_t i = 0; i < sizeof bad_align / sizeof bad_align[0]; i++) {
        hdr(&b, 1, 1); gb_kv(&b, "general.alignment", GGUF_TYPE_UINT32); gb_u32(&b, bad_align[i]);
        gb_tinfo(&b, "t", 2, ne2, 0, 0); data(&b, 64, 256);
        snprintf(name, sizeof name, "alignment_%u.gguf", bad_align[i]);
        EMIT(name);
    }
    hdr(&b, 0, 1); gb_kv(&b, "general.alignment", GGUF_TYPE_UINT64); gb_u64(&b, 32);
    EMIT("alignment_u64.gguf");
    hdr(&b, 0, 1); gb_kv(&b, "general.alignment", GGUF_TYPE_STRING); gb_str(&b, "32");
    EMIT("alignment_string.gguf");
    /* alignment so large the data section would start past the end */
    hdr(&b, 1, 1); gb_kv(&b, "general.alignment", GGUF_TYPE_UINT32); gb_u32(&b, 0x80000000u);
    gb_tinfo(&b, "t", 2, ne2, 0, 0); gb_u64(&b, 0); EMIT("alignment_2g.gguf");

    /* ---- tensor infos */
    /* Long names keep the tensor count within the file size, so the cut
     * is met inside the info itself. */
    hdr(&b, 2, 0); gb_tinfo(&b, LONG_NAME, 2, ne2, 0, 0); gb_u32(&b, 1); EMIT("trunc_tinfo_name_length.gguf");
    hdr(&b, 1, 0); gb_u64(&b, 60); gb_put(&b, LONG_NAME, 40); EMIT("trunc_tinfo_name.gguf");
    hdr(&b, 1, 0); gb_str(&b, LONG_NAME); gb_u16(&b, 2); EMIT("trunc_tinfo_n_dims.gguf");
    hdr(&b, 1, 0); gb_str(&b, LONG_NAME); gb_u32(&b, 2); gb_u64(&b, 32); gb_u32(&b, 2); EMIT("trunc_tinfo_dims.gguf");
    hdr(&b, 1, 0); gb_str(&b, LONG_NAME); gb_u32(&b, 2); gb_u64(&b, 32); gb_u64(&b, 2); gb_u16(&b, 0);
    EMIT("trunc_tinfo_type.gguf");
    hdr(&b, 1, 0); gb_str(&b, LONG_NAME); gb_u32(&b, 2); gb_u64(&b, 32); gb_u64(&b, 2); gb_u32(&b, 0);
    gb_u32(&b, 0); EMIT("trunc_tinfo_offset.gguf");
    hdr(&b, 2, 0); gb_tinfo(&b, LONG_NAME, 2, ne2, 0, 0); gb_str(&b, "u"); gb_u32(&b, 2); gb_u64(&b, 32);
    EMIT("trunc_second_tinfo.gguf");
    hdr(&b, 1, 0); gb_tinfo(&b, "t", 0, ne5, 0, 0); data(&b, 32, 256); EMIT("n_dims_0.gguf");
    hdr(&b, 1, 0); gb_tinfo(&b, "t", 5, ne5, 0, 0); data(&b, 32, 256); EMIT("n_dims_5.gguf");
    hdr(&b, 1, 0); gb_str(&b, "t"); gb_u32(&b, 0xffffffffu);
    for (int i = 0; i < 6; i++) gb_u64(&b, 32);
    EMIT("n_dims_max.gguf");
    { uint64_t ne[3] = { 32, 0, 4 };
      hdr(&b, 1, 0); gb_tinfo(&b, "t", 3, ne, 0, 0); data(&b, 32, 64); EMIT("dimension_0.gguf"); }
    { uint64_t ne[4] = { 1ull << 16, 1ull << 16, 1ull << 16, 1ull << 16 };
      hdr(&b, 1, 0); gb_tinfo(&b, "t", 4, ne, 0, 0); data(&b, 32, 64); EMIT("element_overflow.gguf"); }
    { uint64_t ne[2] = { UINT64_MAX, 1 };
      hdr(&b, 1, 0); gb_tinfo(&b, "t", 2, ne, 0, 0); data(&b, 32, 64); EMIT("dimension_max.gguf"); }
    { uint64_t ne[2] = { 1ull << 61, 2 };   /* fits int64 elements, bytes overflow for F32 */
      hdr(&b, 1, 0); gb_tinfo(&b, "t", 2, ne, 0, 0); data(&b, 32, 64); EMIT("byte_size_overflow.gguf"); }
    static const uint32_t bad_types[] = { 3, 4, 5, 6, 7, 19, 29, 31, 99, 0xffffffffu };
    for (size_t i = 0; i < sizeof bad_types / sizeof bad_types[0]; i++) {
        hdr(&b, 1, 0); gb_tinfo(&b, "t", 2, ne2, bad_types[i], 0); data(&b, 32, 256);
        snprintf(name, sizeof name, "unknown_type_%u.gguf", bad_types[i]);
        EMIT(name);
    }
    { uint64_t ne[2] = { 48, 2 };   /* Q4_K needs rows of 256 */
      hdr(&b, 1, 0); gb_tinfo(&b, "t", 2, ne, 12, 0); data(&b, 32, 256); EMIT("row_not_block_multiple.gguf"); }
    hdr(&b, 2, 0); gb_tinfo(&b, "t", 2, ne2, 0, 0); gb_tinfo(&b, "t", 2, ne2, 0, 256); data(&b, 32, 512);
    EMIT("duplicate_tensor_name.gguf");
    hdr(&b, 1, 0); gb_tinfo(&b, "t\n\x1b[2J", 5, ne5, 0, 0); EMIT("control_chars_in_name.gguf");

    /* ---- offsets and data */
    hdr(&b, 1, 0); gb_tinfo(&b, "t", 2, ne2, 0, 4); data(&b, 32, 260); EMIT("offset_unaligned.gguf");
    hdr(&b, 1, 0); gb_tinfo(&b, "t", 2, ne2, 0, 1024); data(&b, 32, 256); EMIT("offset_past_end.gguf");
    hdr(&b, 1, 0); gb_tinfo(&b, "t", 2, ne2, 0, UINT64_MAX - 31); data(&b, 32, 256); EMIT("offset_wraps.gguf");
    hdr(&b, 1, 0); gb_tinfo(&b, "t", 2, ne2, 0, 0); data(&b, 32, 200); EMIT("trunc_data.gguf");
    hdr(&b, 1, 0); gb_tinfo(&b, "t", 2, ne2, 0, 0); EMIT("no_data_section.gguf");
    hdr(&b, 2, 0); gb_tinfo(&b, "t", 2, ne2, 0, 0); gb_tinfo(&b, "u", 2, ne2, 0, 0); data(&b, 32, 512);
    EMIT("overlap_same_offset.gguf");
    hdr(&b, 2, 0); gb_tinfo(&b, "t", 2, ne2, 0, 224); gb_tinfo(&b, "u", 2, ne2, 0, 0); data(&b, 32, 512);
    EMIT("overlap_partial.gguf");
    hdr(&b, 3, 0); gb_tinfo(&b, "a", 2, ne2, 0, 512); gb_tinfo(&b, "b", 2, ne2, 0, 0);
    { uint64_t ne[1] = { 32 }; gb_tinfo(&b, "c", 1, ne, 0, 192); }   /* inside b */
    data(&b, 32, 768); EMIT("overlap_inside.gguf");
    hdr(&b, 2, 0); gb_tinfo(&b, "t", 2, ne2, 0, 0); gb_tinfo(&b, "u", 2, ne2, 0, 256); data(&b, 32, 300);
    EMIT("second_tensor_truncated.gguf");

#undef EMIT
    free(b.p);
    return rc;
}

#ifdef GEN_CORPUS_MAIN
static int write_file(void *ctx, const char *name, const gbuf *b)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", (const char *)ctx, name);
    FILE *f = fopen(path, "wb");
    if (!f || (b->n && fwrite(b->p, 1, b->n, f) != b->n) || fclose(f) != 0) {
        fprintf(stderr, "gen_corpus: cannot write %s\n", path);
        return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 2) { fprintf(stderr, "usage: gen_corpus DIR\n"); return 2; }
    return corpus_generate(write_file, argv[1]);
}
#endif
