/*
 * test_gguf_write.c: the GGUF writer. A file read and written back (same
 * keys in the same order, same tensors, same alignment) must be
 * byte-identical: checked on the reference models, the dequant test
 * vectors and a hand-built file with every value type. Also the safety
 * rules: never overwrite the input, temp file removed on abort/failure.
 */
#include "test.h"
#include "gguf/gguf.h"
#include "gguf_build.h"
#include "quant/quants.h"

#include <dirent.h>
#include <glob.h>
#include <sys/stat.h>
#include <unistd.h>

/* Read src and write it back to dst through the public writer API. */
static int copy_gguf(const gguf_file *f, const char *dst, char *err, size_t errlen)
{
    gguf_writer *w = gguf_writer_open(dst, f->path, err, errlen);
    if (!w) return -1;
    gguf_writer_set_version(w, f->version);
    if (gguf_writer_add_kvs_from(w, f)) goto fail;
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        char name[512];
        const gguf_tensor *t = &f->tensors[i];
        snprintf(name, sizeof name, "%.*s", (int)t->name.n, t->name.s);
        if (gguf_writer_add_tensor(w, name, t->type, t->n_dims, t->ne) != (int64_t)i) goto fail;
    }
    if (gguf_writer_begin_data(w)) goto fail;
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        /* split each tensor into two writes to exercise streaming */
        size_t half = (size_t)f->tensors[i].nbytes / 2;
        const uint8_t *p = f->tensors[i].data;
        if (gguf_writer_write(w, p, half) ||
            gguf_writer_write(w, p + half, (size_t)f->tensors[i].nbytes - half)) goto fail;
    }
    if (gguf_writer_finish(w)) {
        snprintf(err, errlen, "%s", gguf_writer_error(NULL));
        return -1;
    }
    return 0;
fail:
    snprintf(err, errlen, "%s", gguf_writer_error(w));
    gguf_writer_abort(w);
    return -1;
}

static void check_round_trip(const char *src)
{
    char err[512];
    gguf_file *f = gguf_open(src, err, sizeof err);
    REQUIREF(f, "%s", err);
    const char *dst = test_tmp("rt.gguf");
    int rc = copy_gguf(f, dst, err, sizeof err);
    gguf_close(f);
    REQUIREF(rc == 0, "%s: %s", src, err);
    size_t na, nb;
    void *a = test_read_file(src, &na), *b = test_read_file(dst, &nb);
    REQUIRE(a && b);
    CHECKF(na == nb && memcmp(a, b, na) == 0, "%s: round trip differs (%zu vs %zu bytes)", src, na, nb);
    free(a);
    free(b);
    unlink(dst);
}

static int round_trip_glob(const char *pattern)
{
    glob_t g;
    int n = 0;
    if (glob(pattern, 0, NULL, &g) != 0) return 0;
    for (size_t i = 0; i < g.gl_pathc; i++, n++) check_round_trip(g.gl_pathv[i]);
    globfree(&g);
    return n;
}

TEST(gguf_write_round_trip_tiny_a)
{
    char pat[4200];
    snprintf(pat, sizeof pat, "%s/*.gguf", test_shared_path("models/tiny-a"));
    CHECK(round_trip_glob(pat) >= 4);
}

TEST(gguf_write_round_trip_testvectors)
{
    char pat[4200];
    snprintf(pat, sizeof pat, "%s/*.gguf", test_shared_path("testvectors/dequant"));
    CHECK(round_trip_glob(pat) >= 1);
}

TEST(gguf_write_round_trip_every_value_type)
{
    gbuf b = gb_sample();
    const char *src = test_tmp("sample.gguf");
    FILE *fp = fopen(src, "wb");
    REQUIRE(fp && fwrite(b.p, 1, b.n, fp) == b.n);
    fclose(fp);
    free(b.p);
    check_round_trip(src);
    /* v2 round-trips too */
    b = gb_sample();
    b.p[4] = 2;
    fp = fopen(src, "wb");
    REQUIRE(fp && fwrite(b.p, 1, b.n, fp) == b.n);
    fclose(fp);
    free(b.p);
    check_round_trip(src);
}

/* Build a file with the typed helpers and nested arrays, read it back. */
TEST(gguf_write_api_values)
{
    char err[512];
    const char *path = test_tmp("api.gguf");
    gguf_writer *w = gguf_writer_open(path, NULL, err, sizeof err);
    REQUIREF(w, "%s", err);
    CHECK(gguf_writer_add_str(w, "general.architecture", "qwen3moe") == 0);
    CHECK(gguf_writer_add_u32(w, "a.u32", 7) == 0);
    CHECK(gguf_writer_add_i32(w, "a.i32", -7) == 0);
    CHECK(gguf_writer_add_u64(w, "a.u64", 1ull << 50) == 0);
    CHECK(gguf_writer_add_f32(w, "a.f32", 0.25f) == 0);
    CHECK(gguf_writer_add_bool(w, "a.bool", 1) == 0);
    const char *strs[] = { "x", "", "zz" };
    CHECK(gguf_writer_add_arr_str(w, "a.strs", strs, 3) == 0);
    int32_t ints[4] = { 1, -2, 3, -4 };
    CHECK(gguf_writer_add_arr(w, "a.ints", GGUF_TYPE_INT32, ints, 4) == 0);
    CHECK(gguf_writer_add_arr(w, "a.bad", GGUF_TYPE_STRING, ints, 4) == -1);
    /* [[1, 2], [3]] as u16 arrays, and [["p", "q"]] */
    uint16_t u0[2] = { 1, 2 }, u1[1] = { 3 };
    gguf_value inner[2] = { { .type = GGUF_TYPE_ARRAY }, { .type = GGUF_TYPE_ARRAY } };
    inner[0].v.arr.type = GGUF_TYPE_UINT16; inner[0].v.arr.n = 2; inner[0].v.arr.data = u0;
    inner[1].v.arr.type = GGUF_TYPE_UINT16; inner[1].v.arr.n = 1; inner[1].v.arr.data = u1;
    gguf_value outer = { .type = GGUF_TYPE_ARRAY };
    outer.v.arr.type = GGUF_TYPE_ARRAY; outer.v.arr.n = 2; outer.v.arr.items = inner;
    CHECK(gguf_writer_add_kv(w, "a.nested", &outer) == 0);
    CHECK(gguf_writer_add_kv(w, "a.nested", &outer) == -1);   /* duplicate */
    CHECK(strstr(gguf_writer_error(w), "duplicate key 'a.nested'") != NULL);
    gguf_value sitems[2] = { { .type = GGUF_TYPE_STRING, .v.str = { "p", 1 } },
                             { .type = GGUF_TYPE_STRING, .v.str = { "q", 1 } } };
    gguf_value sarr = { .type = GGUF_TYPE_ARRAY };
    sarr.v.arr.type = GGUF_TYPE_STRING; sarr.v.arr.n = 2; sarr.v.arr.items = sitems;
    gguf_value souter = { .type = GGUF_TYPE_ARRAY };
    souter.v.arr.type = GGUF_TYPE_ARRAY; souter.v.arr.n = 1; souter.v.arr.items = &sarr;
    CHECK(gguf_writer_add_kv(w, "a.nested_str", &souter) == 0);
    CHECK(gguf_writer_add_u32(w, "general.alignment", 48) == -1);
    CHECK(gguf_writer_add_u32(w, "general.alignment", 128) == 0);
    CHECK(gguf_writer_add_u32(w, "tmp.key", 1) == 0);
    CHECK(gguf_writer_remove_kv(w, "tmp.key") == 0);
    gguf_value ft = { .type = GGUF_TYPE_UINT32, .v.u64 = 9 };
    CHECK(gguf_writer_set_kv(w, "a.u32", &ft) == 0);

    uint64_t ne1[2] = { 3, 2 }, ne2[1] = { 64 }, bad[1] = { 33 };
    CHECK(gguf_writer_add_tensor(w, "t1", MOEQ_TYPE_F32, 2, ne1) == 0);
    CHECK(gguf_writer_add_tensor(w, "t2", MOEQ_TYPE_Q8_0, 1, ne2) == 1);
    CHECK(gguf_writer_add_tensor(w, "t3", MOEQ_TYPE_Q8_0, 1, bad) == -1);
    CHECK(gguf_writer_add_tensor(w, "t1", MOEQ_TYPE_F32, 2, ne1) == -1);
    CHECK(gguf_writer_add_tensor(w, "t4", 99, 1, ne2) == -1);
    float v1[6] = { 1, 2, 3, 4, 5, 6 };
    uint8_t q[68];
    for (int i = 0; i < 68; i++) q[i] = (uint8_t)(i * 3);
    /* one write spanning both tensors */
    uint8_t all[24 + 68];
    memcpy(all, v1, 24);
    memcpy(all + 24, q, 68);
    CHECK(gguf_writer_write(w, all, sizeof all) == 0);
    CHECK(gguf_writer_write(w, all, 1) == -1);                /* past the end */
    CHECK(gguf_writer_add_u32(w, "late", 1) == -1);
    REQUIRE(gguf_writer_finish(w) == 0);

    gguf_file *f = gguf_open(path, err, sizeof err);
    REQUIREF(f, "%s", err);
    CHECK(f->alignment == 128 && f->data_offset % 128 == 0);
    CHECK(f->n_kv == 11);
    uint64_t u; int64_t i; double d; int bo; char s[32];
    CHECK(gguf_get_u64(f, "a.u32", &u) == 0 && u == 9);
    CHECK(gguf_get_i64(f, "a.i32", &i) == 0 && i == -7);
    CHECK(gguf_get_u64(f, "a.u64", &u) == 0 && u == 1ull << 50);
    CHECK(gguf_get_f64(f, "a.f32", &d) == 0 && d == 0.25);
    CHECK(gguf_get_bool(f, "a.bool", &bo) == 0 && bo == 1);
    CHECK(gguf_get_str(f, "general.architecture", s, sizeof s) == 0 && !strcmp(s, "qwen3moe"));
    CHECK(gguf_find_kv(f, "tmp.key") == NULL);
    CHECK(!strncmp(f->kv[1].key.s, "a.u32", 5));            /* replaced in place */
    const gguf_kv *kv = gguf_find_kv(f, "a.strs");
    REQUIRE(kv && kv->val.v.arr.n == 3 && kv->val.v.arr.items);
    CHECK(kv->val.v.arr.items[2].v.str.n == 2 && !memcmp(kv->val.v.arr.items[2].v.str.s, "zz", 2));
    kv = gguf_find_kv(f, "a.ints");
    REQUIRE(kv);
    CHECK(gguf_arr_i64(&kv->val, 3) == -4);
    kv = gguf_find_kv(f, "a.nested");
    REQUIRE(kv && kv->val.v.arr.type == GGUF_TYPE_ARRAY && kv->val.v.arr.n == 2);
    CHECK(gguf_arr_u64(&kv->val.v.arr.items[0], 1) == 2);
    CHECK(gguf_arr_u64(&kv->val.v.arr.items[1], 0) == 3);
    kv = gguf_find_kv(f, "a.nested_str");
    REQUIRE(kv && kv->val.v.arr.n == 1);
    const gguf_value *in = &kv->val.v.arr.items[0];
    CHECK(in->v.arr.type == GGUF_TYPE_STRING && in->v.arr.n == 2 && in->v.arr.items[1].v.str.s[0] == 'q');
    REQUIRE(f->n_tensors == 2);
    CHECK(f->tensors[1].offset == 128 && f->tensors[1].nbytes == 68);
    CHECK(!memcmp(f->tensors[0].data, v1, 24) && !memcmp(f->tensors[1].data, q, 68));
    CHECK(f->size % 128 == 0);
    gguf_close(f);
}

static int count_tmp_files(const char *dir)
{
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (strstr(e->d_name, ".tmp.")) n++;
    if (d) closedir(d);
    return n;
}

TEST(gguf_write_safety)
{
    char err[512];
    const char *in = test_tmp("in.gguf");
    gguf_writer *w = gguf_writer_open(in, NULL, err, sizeof err);
    REQUIRE(w);
    REQUIRE(gguf_writer_finish(w) == 0);
    /* zero tensors, no keys: a valid file */
    gguf_file *f = gguf_open(in, err, sizeof err);
    CHECKF(f && f->n_tensors == 0 && f->n_kv == 0, "%s", err);
    gguf_close(f);

    /* the same path, and another name for the same file */
    CHECK(gguf_writer_open(in, in, err, sizeof err) == NULL);
    CHECK(strstr(err, "refusing to overwrite the input") != NULL);
    const char *sym = test_tmp("link.gguf");
    REQUIRE(symlink(in, sym) == 0);
    CHECK(gguf_writer_open(sym, in, err, sizeof err) == NULL);
    const char *hard = test_tmp("hard.gguf");
    REQUIRE(link(in, hard) == 0);
    CHECK(gguf_writer_open(in, hard, err, sizeof err) == NULL);

    /* unwritable folder (a missing one: the tests may run as root) */
    CHECK(gguf_writer_open(test_tmp("no/such/dir/out.gguf"), in, err, sizeof err) == NULL);
    CHECK(strstr(err, "cannot create a temporary file") != NULL);

    /* abort removes the temp file and leaves the target alone */
    const char *out = test_tmp("out.gguf");
    w = gguf_writer_open(out, in, err, sizeof err);
    REQUIRE(w);
    CHECK(count_tmp_files(test_tmpdir()) == 1);
    gguf_writer_abort(w);
    CHECK(count_tmp_files(test_tmpdir()) == 0);
    CHECK(access(out, F_OK) != 0);

    /* finish with a tensor short of data fails, removes the temp file */
    w = gguf_writer_open(out, in, err, sizeof err);
    REQUIRE(w);
    uint64_t ne[1] = { 8 };
    REQUIRE(gguf_writer_add_tensor(w, "t", MOEQ_TYPE_F32, 1, ne) == 0);
    float x[4] = { 0 };
    CHECK(gguf_writer_write(w, x, sizeof x) == 0);
    CHECK(gguf_writer_finish(w) == -1);
    CHECK(strstr(gguf_writer_error(NULL), "tensor 't' has 16 of 32 bytes written") != NULL);
    CHECK(count_tmp_files(test_tmpdir()) == 0);
    CHECK(access(out, F_OK) != 0);
}
