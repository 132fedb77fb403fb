/*
 * test_gguf_read.c: the GGUF reader on the reference models, on a
 * hand-built file holding every value type, and on broken inputs (every
 * truncation length, hostile counts), where it must fail with one line.
 */
#include "test.h"
#include "gguf/gguf.h"
#include "gguf_build.h"
#include "quant/quants.h"

TEST(gguf_read_sample_values)
{
    gbuf b = gb_sample();
    char err[256];
    gguf_file *f = gguf_open_buffer(b.p, b.n, "sample.gguf", err, sizeof err);
    REQUIREF(f, "open failed: %s", err);
    CHECK(f->version == 3);
    CHECK(f->n_kv == 17);
    CHECK(f->n_tensors == 2);
    CHECK(f->alignment == 64);
    CHECK(f->data_offset % 64 == 0);
    char s[64];
    CHECK(gguf_get_str(f, "general.architecture", s, sizeof s) == 0 && !strcmp(s, "qwen3moe"));
    CHECK(gguf_get_str(f, "general.architecture", s, 4) == 0 && !strcmp(s, "qwe"));
    uint64_t u; int64_t i; double d; int bo;
    CHECK(gguf_get_u64(f, "t.u8", &u) == 0 && u == 200);
    CHECK(gguf_get_i64(f, "t.i8", &i) == 0 && i == -2);
    CHECK(gguf_get_u64(f, "t.i8", &u) == -1);          /* negative: no u64 */
    CHECK(gguf_get_u64(f, "t.u16", &u) == 0 && u == 60000);
    CHECK(gguf_get_i64(f, "t.i16", &i) == 0 && i == -300);
    CHECK(gguf_get_u64(f, "t.u32", &u) == 0 && u == 4000000000u);
    CHECK(gguf_get_i64(f, "t.u32", &i) == 0 && i == 4000000000);
    CHECK(gguf_get_i64(f, "t.i32", &i) == 0 && i == -70000);
    CHECK(gguf_get_f64(f, "t.f32", &d) == 0 && d == 1.5);
    CHECK(gguf_get_bool(f, "t.bool", &bo) == 0 && bo == 1);
    CHECK(gguf_get_u64(f, "t.u64", &u) == 0 && u == 1ull << 40);
    CHECK(gguf_get_i64(f, "t.i64", &i) == 0 && i == -5);
    CHECK(gguf_get_f64(f, "t.f64", &d) == 0 && d == -2.25);
    CHECK(gguf_get_f64(f, "t.u8", &d) == -1);
    CHECK(gguf_get_u64(f, "missing", &u) == -1);
    CHECK(gguf_find_kv(f, "t.u") == NULL);

    const gguf_kv *kv = gguf_find_kv(f, "t.arr_i32");
    REQUIRE(kv && kv->val.type == GGUF_TYPE_ARRAY);
    CHECK(kv->val.v.arr.type == GGUF_TYPE_INT32 && kv->val.v.arr.n == 3);
    CHECK(gguf_arr_i64(&kv->val, 0) == 1 && gguf_arr_i64(&kv->val, 1) == -2);
    CHECK(gguf_arr_f64(&kv->val, 2) == 3.0);
    CHECK(gguf_arr_i64(&kv->val, 3) == 0);              /* out of range */

    kv = gguf_find_kv(f, "t.arr_str");
    REQUIRE(kv && kv->val.v.arr.type == GGUF_TYPE_STRING && kv->val.v.arr.n == 2);
    REQUIRE(kv->val.v.arr.items);
    CHECK(kv->val.v.arr.items[0].v.str.n == 5 && !memcmp(kv->val.v.arr.items[0].v.str.s, "hello", 5));
    CHECK(kv->val.v.arr.items[1].v.str.n == 0);

    kv = gguf_find_kv(f, "t.arr_arr");
    REQUIRE(kv && kv->val.v.arr.type == GGUF_TYPE_ARRAY && kv->val.v.arr.n == 2);
    const gguf_value *inner = &kv->val.v.arr.items[0];
    CHECK(inner->type == GGUF_TYPE_ARRAY && inner->v.arr.type == GGUF_TYPE_FLOAT32);
    CHECK(inner->v.arr.n == 2 && gguf_arr_f64(inner, 1) == 2.0);
    CHECK(kv->val.v.arr.items[1].v.arr.n == 0);

    int64_t ta = gguf_find_tensor(f, "a.weight"), tb = gguf_find_tensor(f, "b.weight");
    REQUIRE(ta == 0 && tb == 1);
    CHECK(gguf_find_tensor(f, "c.weight") == -1);
    const gguf_tensor *t = &f->tensors[ta];
    CHECK(t->n_dims == 2 && t->ne[0] == 4 && t->ne[1] == 2 && t->ne[2] == 1 && t->ne[3] == 1);
    CHECK(t->nbytes == 32);
    float x[8];
    memcpy(x, t->data, 32);
    CHECK(x[7] == 7.0f);
    CHECK(f->tensors[tb].nbytes == 34 && ((const uint8_t *)f->tensors[tb].data)[33] == 33);
    CHECK((const uint8_t *)f->tensors[tb].data == f->base + f->data_offset + 64);
    gguf_close(f);
    free(b.p);
}

/* Every prefix of a valid file that cuts into its metadata or tensor data
 * must fail cleanly with one line naming the file and a byte offset (only
 * the zero padding after the last tensor may go). The prefix is copied into
 * an exact-size heap block so ASan flags any read past it. */
TEST(gguf_read_every_truncation)
{
    gbuf b = gb_sample();
    char err[512];
    gguf_file *f = gguf_open_buffer(b.p, b.n, "full.gguf", err, sizeof err);
    REQUIREF(f != NULL, "full file failed: %s", err);
    size_t end = (size_t)(f->data_offset + f->tensors[1].offset + f->tensors[1].nbytes);
    gguf_close(f);
    for (size_t len = 0; len < b.n; len++) {
        uint8_t *p = malloc(len ? len : 1);
        memcpy(p, b.p, len);
        err[0] = 0;
        f = gguf_open_buffer(p, len, "cut.gguf", err, sizeof err);
        if (len < end) {
            CHECKF(f == NULL, "prefix of %zu bytes opened", len);
            CHECKF(!strncmp(err, "cut.gguf: byte ", 15) && !strchr(err, '\n'),
                   "prefix %zu: bad error '%s'", len, err);
        } else {
            CHECKF(f != NULL, "prefix of %zu bytes (all data present) failed: %s", len, err);
        }
        gguf_close(f);
        free(p);
    }
    /* the same through gguf_open (mmap of a file of each length) */
    const char *path = test_tmp("cut.gguf");
    for (size_t len = 0; len < b.n; len++) {
        FILE *fp = fopen(path, "wb");
        REQUIRE(fp);
        REQUIRE(len == 0 || fwrite(b.p, 1, len, fp) == len);
        fclose(fp);
        err[0] = 0;
        f = gguf_open(path, err, sizeof err);
        CHECKF((f == NULL) == (len < end), "file of %zu bytes: %s", len, f ? "opened" : err);
        CHECKF(f || (!strncmp(err, path, strlen(path)) && strstr(err, ": byte ") && !strchr(err, '\n')),
               "file of %zu bytes: bad error '%s'", len, err);
        gguf_close(f);
    }
    free(b.p);
}

static void expect_error(const gbuf *b, const char *want)
{
    char err[512] = "";
    gguf_file *f = gguf_open_buffer(b->p, b->n, "x.gguf", err, sizeof err);
    CHECKF(f == NULL && strstr(err, want) != NULL, "want '%s', got '%s'", want, err);
    gguf_close(f);
}

TEST(gguf_read_rejects_hostile_fields)
{
    gbuf b = {0};
    gb_header(&b, 3, 9999999999ull, 0);
    gb_u64(&b, 0);
    expect_error(&b, "x.gguf: byte 24: tensor count 9999999999 exceeds file size");
    b.n = 0;
    gb_header(&b, 1, 0, 0);
    expect_error(&b, "byte 4: unsupported GGUF version 1");
    b.n = 0;
    gb_header(&b, 3, 0, 0); b.p[0] = 'X';
    expect_error(&b, "byte 0: bad magic");
    b.n = 0;
    gb_header(&b, 3, 0, 1);
    gb_kv(&b, "k", GGUF_TYPE_STRING); gb_u64(&b, 1ull << 62);
    expect_error(&b, "byte 37: value of 'k' length 4611686018427387904 exceeds file size");
    b.n = 0;
    gb_header(&b, 3, 0, 1);
    gb_kv(&b, "k", GGUF_TYPE_ARRAY); gb_u32(&b, GGUF_TYPE_UINT64); gb_u64(&b, 1ull << 61);
    expect_error(&b, "array of 2305843009213693952 u64 exceeds file size");
    b.n = 0;
    gb_header(&b, 3, 0, 2);
    gb_kv(&b, "k", GGUF_TYPE_UINT8); gb_u8(&b, 1);
    gb_kv(&b, "k", GGUF_TYPE_UINT8); gb_u8(&b, 1);
    expect_error(&b, "duplicate key 'k'");
    b.n = 0;
    gb_header(&b, 3, 0, 1);
    gb_kv(&b, "general.alignment", GGUF_TYPE_UINT32); gb_u32(&b, 48);
    expect_error(&b, "general.alignment 48 is not a nonzero power of two");
    b.n = 0;
    gb_header(&b, 3, 0, 1);
    gb_kv(&b, "k", 13); gb_u8(&b, 1);
    expect_error(&b, "key 'k': unknown value type 13");
    /* arrays nested without end */
    b.n = 0;
    gb_header(&b, 3, 0, 1);
    gb_kv(&b, "k", GGUF_TYPE_ARRAY);
    for (int i = 0; i < 40; i++) { gb_u32(&b, GGUF_TYPE_ARRAY); gb_u64(&b, 1); }
    expect_error(&b, "nested deeper");

    /* tensor infos: one file per case of nt infos, then (data >= 0) the
     * aligned start and data zero bytes */
    static const uint64_t ne[5] = { 32, 2, 1, 1, 1 }, ne30[2] = { 30, 1 }, zero[2] = { 32, 0 };
    static const uint64_t big[4] = { 1ull << 32, 1ull << 32, 1, 1 };
    static const struct {
        int nt;
        struct { const char *name; uint32_t n_dims; const uint64_t *ne; uint32_t type; uint64_t off; } t[2];
        int data;
        const char *want;
    } cases[] = {
        { 1, { { "t", 5, ne, 0, 0 } }, -1, "tensor 't': n_dims 5 not in 1..4" },
        { 1, { { "t", 2, ne, 99, 0 } }, -1, "tensor 't': unknown type id 99" },
        { 1, { { "t", 2, ne30, 8, 0 } }, -1, "row length 30 is not a multiple of Q8_0's block size 32" },
        { 1, { { "t", 2, big, 0, 0 } }, -1, "element count overflows" },
        { 1, { { "t", 2, zero, 0, 0 } }, -1, "dimension 1 is 0" },
        { 1, { { "t", 2, ne, 0, 8 } }, -1, "data offset 8 is not a multiple of the alignment 32" },
        /* one byte short of the 256 the tensor needs */
        { 1, { { "t", 2, ne, 0, 0 } }, 255, "lies outside the file" },
        { 2, { { "t", 2, ne, 0, 0 }, { "u", 2, ne, 0, 224 } }, 512, "tensor 'u' overlaps tensor 't'" },
        { 2, { { "t", 2, ne, 0, 0 }, { "t", 2, ne, 0, 256 } }, 512, "duplicate tensor name 't'" },
        /* a control character in a name does not break the one-line error */
        { 1, { { "bad\nname", 5, ne, 0, 0 } }, -1, "tensor 'bad?name': n_dims 5" },
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        b.n = 0;
        gb_header(&b, 3, (uint64_t)cases[c].nt, 0);
        for (int i = 0; i < cases[c].nt; i++)
            gb_tinfo(&b, cases[c].t[i].name, cases[c].t[i].n_dims, cases[c].t[i].ne, cases[c].t[i].type,
                     cases[c].t[i].off);
        if (cases[c].data >= 0) {
            gb_pad(&b, 32);
            for (int i = 0; i < cases[c].data; i++) gb_u8(&b, 0);
        }
        expect_error(&b, cases[c].want);
    }
    free(b.p);
}

TEST(gguf_read_tiny_a_models)
{
    static const char *const names[] = { "tiny-a-f16.gguf", "tiny-a-q8_0.gguf",
                                         "tiny-a-asym.gguf", "tiny-a-q4_k_m.gguf" };
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
        char rel[128];
        snprintf(rel, sizeof rel, "models/tiny-a/%s", names[k]);
        const char *path = test_shared_path(rel);
        char err[512];
        gguf_file *f = gguf_open(path, err, sizeof err);
        REQUIREF(f, "%s", err);
        CHECK(f->n_tensors == 51);
        char arch[32];
        CHECK(gguf_get_str(f, "general.architecture", arch, sizeof arch) == 0 && !strcmp(arch, "qwen3moe"));
        uint64_t nl = 0;
        CHECK(gguf_get_u64(f, "qwen3moe.block_count", &nl) == 0 && nl == 4);
        int64_t ti = gguf_find_tensor(f, "blk.0.ffn_gate_exps.weight");
        REQUIRE(ti >= 0);
        const gguf_tensor *t = &f->tensors[ti];
        CHECK(t->n_dims == 3 && t->ne[0] == 256 && t->ne[1] == 256 && t->ne[2] == 32);
        ti = gguf_find_tensor(f, "blk.3.ffn_gate_inp.weight");
        REQUIRE(ti >= 0);
        CHECK(f->tensors[ti].type == MOEQ_TYPE_F32 && f->tensors[ti].ne[0] == 256 && f->tensors[ti].ne[1] == 32);
        const gguf_kv *tok = gguf_find_kv(f, "tokenizer.ggml.tokens");
        CHECK(tok && tok->val.v.arr.type == GGUF_TYPE_STRING && tok->val.v.arr.n == 8192);
        gguf_close(f);
    }
}

TEST(gguf_read_open_errors)
{
    char err[512];
    CHECK(gguf_open(test_tmp("nonexistent.gguf"), err, sizeof err) == NULL);
    CHECK(strstr(err, "nonexistent.gguf: cannot open") != NULL);
    CHECK(gguf_open(test_tmpdir(), err, sizeof err) == NULL);
    CHECK(strstr(err, "not a regular file") != NULL);
    FILE *fp = fopen(test_tmp("short.gguf"), "wb");
    REQUIRE(fp);
    fputs("GGUF", fp);
    fclose(fp);
    CHECK(gguf_open(test_tmp("short.gguf"), err, sizeof err) == NULL);
    CHECK(strstr(err, "short.gguf: byte 0: file truncated in header") != NULL);
}

/* Float array elements read as integers (what 67 M fuzz runs found: a
 * plain cast of NaN or of a value out of range is undefined behaviour).
 * They saturate, NaN reads as 0. The fuzz harness reads every array
 * through every accessor, whatever its element type. */
TEST(gguf_read_float_array_as_integer_saturates)
{
    static const float f32[] = { NAN, 1e30f, -1e30f, INFINITY, -INFINITY, 3.75f, -3.75f, -0.0f };
    static const int64_t f32_i64[] = { 0, INT64_MAX, INT64_MIN, INT64_MAX, INT64_MIN, 3, -3, 0 };
    static const uint64_t f32_u64[] = { 0, UINT64_MAX, 0, UINT64_MAX, 0, 3, 0, 0 };
    static const double f64[] = { -NAN, 1e300, -1e300, 0x1p63, 0x1p64, -0x1p63, -0.5, 0x1p63 - 1024 };
    static const int64_t f64_i64[] = { 0, INT64_MAX, INT64_MIN, INT64_MAX, INT64_MAX, INT64_MIN, 0,
                                       INT64_MAX - 1023 };
    static const uint64_t f64_u64[] = { 0, UINT64_MAX, 0, 1ull << 63, UINT64_MAX, 0, 0, (1ull << 63) - 1024 };
    gbuf b = {0};
    gb_header(&b, 3, 0, 2);
    gb_kv(&b, "t.f32", GGUF_TYPE_ARRAY); gb_u32(&b, GGUF_TYPE_FLOAT32); gb_u64(&b, 8);
    for (int i = 0; i < 8; i++) gb_f32(&b, f32[i]);
    gb_kv(&b, "t.f64", GGUF_TYPE_ARRAY); gb_u32(&b, GGUF_TYPE_FLOAT64); gb_u64(&b, 8);
    for (int i = 0; i < 8; i++) gb_f64(&b, f64[i]);
    char err[256];
    gguf_file *f = gguf_open_buffer(b.p, b.n, "floats.gguf", err, sizeof err);
    REQUIREF(f, "open failed: %s", err);
    const gguf_value *a = &gguf_find_kv(f, "t.f32")->val, *d = &gguf_find_kv(f, "t.f64")->val;
    for (int i = 0; i < 8; i++) {
        CHECKF(gguf_arr_i64(a, (uint64_t)i) == f32_i64[i], "f32[%d] as i64: %lld", i, (long long)gguf_arr_i64(a, (uint64_t)i));
        CHECKF(gguf_arr_u64(a, (uint64_t)i) == f32_u64[i], "f32[%d] as u64: %llu", i, (unsigned long long)gguf_arr_u64(a, (uint64_t)i));
        CHECKF(gguf_arr_i64(d, (uint64_t)i) == f64_i64[i], "f64[%d] as i64: %lld", i, (long long)gguf_arr_i64(d, (uint64_t)i));
        CHECKF(gguf_arr_u64(d, (uint64_t)i) == f64_u64[i], "f64[%d] as u64: %llu", i, (unsigned long long)gguf_arr_u64(d, (uint64_t)i));
    }
    CHECK(isnan(gguf_arr_f64(a, 0)) && gguf_arr_f64(d, 1) == 1e300);
    CHECK(gguf_arr_i64(a, 8) == 0 && gguf_arr_u64(d, 8) == 0);   /* past the end */
    gguf_close(f);
    free(b.p);
}
