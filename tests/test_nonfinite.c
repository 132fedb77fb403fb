/* Values that are not numbers (issue 11, item 2): the scan of every
 * tensor type, `moeq info --check`, quantize refusing a NaN source, the
 * engine refusing NaN norms and routers at open, perplexity and run
 * failing on NaN logits instead of printing nan or NUL bytes, and imatrix
 * files that are never written unless moeq can read them back. Broken
 * inputs are synthesized models with a few bytes patched. */
#include "test.h"
#include "quant/finite.h"
#include "gguf/gguf.h"
#include "quant/imatrix.h"
#include "quant/quants.h"
#include "quant/quants_blocks.h"

#include <stdint.h>

static const uint8_t F32_NAN[4] = { 0x00, 0x00, 0xc0, 0x7f };
static const uint8_t F32_INF[4] = { 0x00, 0x00, 0x80, 0x7f };

/* Overwrite n bytes at byte `at` of tensor `name`'s data in the file. */
static void patch(const char *path, const char *name, uint64_t at, const void *bytes, size_t n)
{
    char err[256];
    gguf_file *f = gguf_open(path, err, sizeof err);
    REQUIREF(f != NULL, "%s", err);
    int64_t i = gguf_find_tensor(f, name);
    REQUIREF(i >= 0, "no tensor %s", name);
    REQUIRE(at + n <= f->tensors[i].nbytes);
    long off = (long)((const uint8_t *)f->tensors[i].data - f->base + (ptrdiff_t)at);
    gguf_close(f);
    FILE *fp = fopen(path, "r+b");
    REQUIRE(fp != NULL);
    REQUIRE(fseek(fp, off, SEEK_SET) == 0);
    REQUIRE(fwrite(bytes, 1, n, fp) == n);
    REQUIRE(fclose(fp) == 0);
}

static void write_text(const char *path, int lines)
{
    FILE *f = fopen(path, "w");
    REQUIRE(f != NULL);
    for (int i = 0; i < lines; i++)
        fprintf(f, "The river town wakes before the sun, line %d. Bakers open their doors at four.\n", i);
    fclose(f);
}

/* ------------------------------------------------------------ the scan */

TEST(nonfinite_scan_every_type)
{
    enum { N = 4 * QK_K };
    float x[N];
    for (int i = 0; i < N; i++) x[i] = sinf(0.37f * (float)i) * (1.0f + (float)(i % 5));
    const int types[] = { MOEQ_TYPE_F32, MOEQ_TYPE_F16, MOEQ_TYPE_BF16, MOEQ_TYPE_Q8_0, MOEQ_TYPE_Q4_0,
                          MOEQ_TYPE_Q2_K, MOEQ_TYPE_Q4_K, MOEQ_TYPE_Q6_K, MOEQ_TYPE_IQ4_XS, MOEQ_TYPE_IQ2_S };
    static uint8_t buf[N * 4];
    for (size_t k = 0; k < sizeof types / sizeof types[0]; k++) {
        const struct moeq_type_traits *t = moeq_type_traits(types[k]);
        REQUIRE(t != NULL);
        if (types[k] == MOEQ_TYPE_F32) memcpy(buf, x, sizeof x);
        else t->quantize(x, buf, 1, N, NULL, NULL);
        CHECKF(moeq_first_nonfinite(types[k], buf, N, NULL) == -1, "%s: clean data flagged", t->name);
        /* element 300 (block 1 of the K-quants, block 9 of the 32-blocks) */
        const int64_t el = 300, blk = el / t->blck_size;
        uint8_t *b = buf + (size_t)blk * t->type_size;
        const uint16_t hnan = 0x7e00, hinf = 0xfc00;
        if (types[k] == MOEQ_TYPE_F32) memcpy(buf + 4 * el, F32_INF, 4);
        else if (types[k] == MOEQ_TYPE_F16) memcpy(buf + 2 * el, &hinf, 2);
        else if (types[k] == MOEQ_TYPE_BF16) { uint16_t v = 0x7fc0; memcpy(buf + 2 * el, &v, 2); }
        else if (types[k] == MOEQ_TYPE_Q2_K) memcpy(b + offsetof(block_q2_K, dmin), &hinf, 2);
        else if (types[k] == MOEQ_TYPE_Q4_K) memcpy(b + offsetof(block_q4_K, dmin), &hnan, 2);
        else if (types[k] == MOEQ_TYPE_Q6_K) memcpy(b + offsetof(block_q6_K, d), &hinf, 2);
        else memcpy(b, &hnan, 2); /* d comes first in the other blocks */
        float v = 0;
        int64_t got = moeq_first_nonfinite(types[k], buf, N, &v);
        const int64_t want = t->quantized ? blk * t->blck_size : el;
        CHECKF(got == want, "%s: first bad element %lld, expected %lld", t->name, (long long)got, (long long)want);
        CHECKF(!isfinite(v), "%s: reported value %g", t->name, (double)v);
        /* and the dequantized block really holds non-numbers there */
        float y[QK_K];
        REQUIRE(moeq_dequantize(types[k], buf + (size_t)blk * t->type_size, y, t->blck_size) == 0);
        CHECKF(!isfinite(y[want - blk * t->blck_size]), "%s: decoded value is finite", t->name);
    }
    float f[3] = { 1, NAN, 2 };
    CHECK(moeq_first_nonfinite_f32(f, 3) == 1);
    CHECK(moeq_first_nonfinite_f32(f, 1) == -1);
}

/* ----------------------------------------------------------- moeq info */

TEST(nonfinite_info_check_names_tensor_and_element)
{
    const char *clean = test_synth_model("clean.gguf", NULL);
    char *o = NULL;
    int rc = test_run(&o, "%s info --check %s", test_moeq_bin(), clean);
    CHECKF(rc == 0 && strstr(o, "check: every value of the 27 tensors is a number"), "rc %d: %s", rc, o);
    free(o);

    /* row 3, column 5 of expert 2 of an F32 expert tensor [256, 256, 8] */
    const char *m = test_synth_model("nan.gguf", NULL);
    patch(m, "blk.1.ffn_up_exps.weight", 4 * (2 * 256 * 256 + 3 * 256 + 5), F32_NAN, 4);
    rc = test_run(&o, "%s info --check %s", test_moeq_bin(), m);
    CHECKF(rc == 1, "rc %d", rc);
    CHECKF(strstr(o, "nan.gguf: tensor blk.1.ffn_up_exps.weight: element 131845 (row 3, column 5, expert 2) is nan"),
           "%s", o);
    CHECKF(strstr(o, "1 of 27 tensors hold values that are not numbers"), "%s", o);
    free(o);

    /* a quantized tensor: the scale of block 3 of row 1 of a Q8_0 output */
    const char *q = test_synth_model("q8.gguf", "--type-output Q8_0");
    uint16_t inf = 0x7c00;
    patch(q, "output.weight", (uint64_t)(256 / 32 + 3) * sizeof(block_q8_0), &inf, 2);
    rc = test_run(&o, "%s info --check --json %s", test_moeq_bin(), q);
    CHECKF(rc == 1 && strstr(o, "tensor output.weight: element 352 (row 1, column 96) is "), "rc %d: %s", rc, o);
    free(o);
}

/* ------------------------------------------------------------ quantize */

TEST(nonfinite_quantize_refuses_source)
{
    const char *m = test_synth_model("src.gguf", NULL);
    patch(m, "blk.0.attn_q.weight", 4 * (7 * 256 + 9), F32_INF, 4);
    const char *out = test_tmp("out.gguf");
    char *o = NULL;
    int rc = test_run(&o, "%s quantize -q %s %s Q8_0", test_moeq_bin(), m, out);
    CHECKF(rc == 1, "rc %d: %s", rc, o);
    CHECKF(strstr(o, "tensor blk.0.attn_q.weight: element 1801 (row 7, column 9) is inf"), "%s", o);
    size_t n;
    void *b = test_read_file(out, &n);
    CHECKF(b == NULL, "an output of %zu bytes was written", n);
    free(b);
    free(o);
    /* a copied (not quantized) tensor is refused as well */
    const char *m2 = test_synth_model("src2.gguf", NULL);
    patch(m2, "output_norm.weight", 4 * 17, F32_NAN, 4);
    rc = test_run(&o, "%s quantize -q %s %s Q8_0", test_moeq_bin(), m2, out);
    CHECKF(rc == 1 && strstr(o, "tensor output_norm.weight: element 17 is nan"), "rc %d: %s", rc, o);
    free(o);
}

/* --------------------------------------------------------- engine open */

TEST(nonfinite_engine_open_refuses_norm_and_router)
{
    const char *m = test_synth_model("norm.gguf", NULL);
    patch(m, "blk.0.ffn_norm.weight", 4 * 7, F32_INF, 4);
    char *o = NULL;
    int rc = test_run(&o, "%s run -m %s -p hello -n 2", test_moeq_bin(), m);
    CHECKF(rc == 1 && strstr(o, "norm.gguf: tensor blk.0.ffn_norm.weight: element 7 is inf"), "rc %d: %s", rc, o);
    free(o);
    const char *r = test_synth_model("router.gguf", "--type-router F16");
    uint16_t nan = 0xfe00;
    patch(r, "blk.1.ffn_gate_inp.weight", 2 * (256 * 3 + 10), &nan, 2);
    rc = test_run(&o, "%s run -m %s -p hello -n 2", test_moeq_bin(), r);
    CHECKF(rc == 1 && strstr(o, "tensor blk.1.ffn_gate_inp.weight: element 778 (row 3, column 10) is nan"),
           "rc %d: %s", rc, o);
    free(o);
}

/* ---------------------------------------------------------- perplexity */

TEST(nonfinite_perplexity_nan_logit_fails)
{
    /* row 5 of the output matrix (not scanned at open): logit 5 is nan */
    const char *m = test_synth_model("ppl.gguf", NULL);
    patch(m, "output.weight", 4 * (5 * 256 + 11), F32_NAN, 4);
    const char *text = test_tmp("text.txt");
    write_text(text, 20);
    char *o = NULL;
    int rc = test_run(&o, "%s perplexity -m %s -f %s -c 16 --chunks 2 -t 1", test_moeq_bin(), m, text);
    CHECKF(rc == 1, "rc %d: %s", rc, o);
    CHECKF(strstr(o, "ppl.gguf: chunk 1, position 8: logit of token 5 is nan"), "%s", o);
    CHECKF(!strstr(o, "Final estimate"), "%s", o);
    free(o);
}

/* ----------------------------------------------------------------- run */

/* Count of NUL bytes in the first n bytes of s. */
static size_t n_nul(const char *s, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += s[i] == 0;
    return k;
}

TEST(nonfinite_run_never_prints_nul)
{
    /* one NaN weight of a dense matrix every token uses: every logit is
     * nan, and greedy sampling used to pick token 0, the byte 0x00 */
    const char *m = test_synth_model("run.gguf", NULL);
    patch(m, "blk.1.attn_output.weight", 4 * 100, F32_NAN, 4);
    const char *out = test_tmp("run.out");
    char *o = NULL;
    int rc = test_run(&o, "%s run -m %s -p hello -n 4 -t 1 --temp 0 > %s", test_moeq_bin(), m, out);
    size_t n = 0;
    char *b = test_read_file(out, &n);
    REQUIRE(b != NULL);
    CHECKF(n_nul(b, n) == 0, "%zu NUL bytes in the output", n_nul(b, n));
    CHECKF(rc == 1 && strstr(o, "run: generated token 0: logit of token 0 is not a number"), "rc %d: %s", rc, o);
    free(b);
    free(o);
    /* sampling (the default) on nan logits fails the same way */
    rc = test_run(&o, "%s run -m %s -p hello -n 4 -t 1 --seed 3 > %s", test_moeq_bin(), m, out);
    b = test_read_file(out, &n);
    REQUIRE(b != NULL);
    CHECKF(rc == 1 && n_nul(b, n) == 0, "rc %d, %zu NUL bytes: %s", rc, n_nul(b, n), o);
    free(b);
    free(o);
    /* a prompt holding a NUL byte is echoed without it */
    const char *clean = test_synth_model("clean.gguf", NULL);
    const char *pf = test_tmp("prompt.txt");
    FILE *f = fopen(pf, "wb");
    REQUIRE(f != NULL);
    fwrite("ab\0cd", 1, 5, f);
    fclose(f);
    rc = test_run(&o, "%s run -m %s -f %s -n 0 -t 1 > %s", test_moeq_bin(), clean, pf, out);
    b = test_read_file(out, &n);
    REQUIRE(b != NULL);
    CHECKF(rc == 0 && n_nul(b, n) == 0 && n >= 4 && memcmp(b, "abcd", 4) == 0, "rc %d, %zu bytes: %s", rc, n, o);
    free(b);
    free(o);
}

/* ------------------------------------------------------------- imatrix */

/* A legacy .dat of one entry "w" of n values v with call count ncall. */
static void write_dat(const char *path, int32_t ncall, int32_t n, float v, int32_t chunks)
{
    FILE *f = fopen(path, "wb");
    REQUIRE(f != NULL);
    int32_t one = 1, len = 1;
    fwrite(&one, 4, 1, f);
    fwrite(&len, 4, 1, f);
    fwrite("w", 1, 1, f);
    fwrite(&ncall, 4, 1, f);
    fwrite(&n, 4, 1, f);
    for (int32_t i = 0; i < n; i++) { float x = v * (float)(i + 1); fwrite(&x, 4, 1, f); }
    int32_t dl = 0;
    fwrite(&chunks, 4, 1, f);
    fwrite(&dl, 4, 1, f);
    fclose(f);
}

TEST(nonfinite_imatrix_nan_sums_never_written)
{
    char err[512];
    for (int fmt = 0; fmt < 2; fmt++) {
        struct moeq_imatrix *im = moeq_imatrix_new();
        struct moeq_imatrix_entry *e = moeq_imatrix_get(im, "blk.0.attn_q.weight", 4, 1, err, sizeof err);
        REQUIRE(e != NULL);
        float x[8] = { 1, 2, 3, 4, 5, NAN, 7, 8 };
        moeq_imatrix_add(e, 0, x, 2);
        const char *p = test_tmp(fmt ? "nan.gguf" : "nan.dat");
        CHECKF(moeq_imatrix_save(im, p, fmt, NULL, 0, err, sizeof err) == -1, "fmt %d: saved", fmt);
        CHECKF(strstr(err, "entry blk.0.attn_q.weight: value 1 (matrix 0, column 1) is nan"), "%s", err);
        size_t n;
        void *b = test_read_file(p, &n);
        CHECKF(b == NULL, "fmt %d: %zu bytes written", fmt, n);
        free(b);
        moeq_imatrix_free(im);
    }
    /* through the tool: activations of a model with a NaN weight */
    const char *m = test_synth_model("im.gguf", NULL);
    patch(m, "blk.0.attn_q.weight", 4 * 300, F32_NAN, 4);
    const char *text = test_tmp("text.txt");
    write_text(text, 4);
    const char *out = test_tmp("im.dat");
    char *o = NULL;
    int rc = test_run(&o, "%s imatrix -m %s -f %s -c 16 --chunks 1 --no-ppl -t 1 -o %s", test_moeq_bin(), m, text, out);
    CHECKF(rc == 1 && strstr(o, "is nan, not a finite sum of squares"), "rc %d: %s", rc, o);
    size_t n;
    void *b = test_read_file(out, &n);
    CHECKF(b == NULL, "%zu bytes written", n);
    free(b);
    free(o);
}

TEST(nonfinite_imatrix_merged_counts_saturate)
{
    /* two runs of 1.5e9 calls each: the merged count exceeds int32, which
     * used to wrap negative and make a file the loader refuses */
    const char *a = test_tmp("a.dat"), *b = test_tmp("b.dat"), *c = test_tmp("c.dat"), *g = test_tmp("c.gguf");
    write_dat(a, 1500000000, 4, 3e9f, 2000000000);
    write_dat(b, 1500000000, 4, 3e9f, 2000000000);
    char *o = NULL;
    int rc = test_run(&o, "%s imatrix --in-file %s --in-file %s -o %s", test_moeq_bin(), a, b, c);
    CHECKF(rc == 0, "rc %d: %s", rc, o);
    free(o);
    rc = test_run(&o, "%s imatrix --in-file %s --in-file %s -o %s", test_moeq_bin(), a, b, g);
    CHECKF(rc == 0, "rc %d: %s", rc, o);
    free(o);
    char err[512];
    for (int k = 0; k < 2; k++) {
        struct moeq_imatrix *im = moeq_imatrix_new();
        REQUIREF(moeq_imatrix_load(im, k ? g : c, err, sizeof err) == 0, "%s", err);
        struct moeq_imatrix_entry *e = moeq_imatrix_find(im, "w");
        REQUIRE(e != NULL);
        if (!k) CHECKF(e->ncall == INT32_MAX, "ncall %lld", (long long)e->ncall);
        CHECKF(im->chunk_count == (k ? 4000000000 : INT32_MAX), "chunks %lld", (long long)im->chunk_count);
        /* the means (value / ncall = 2, 4, 6, 8) survive the saturation */
        float w[4];
        REQUIRE(moeq_imatrix_weights(e, 4, 1, 0, w) == 0);
        for (int j = 0; j < 4; j++)
            CHECKF(fabsf(w[j] - 2.0f * (float)(j + 1)) < 1e-3f * (float)(j + 1), "%s: w[%d] = %g",
                   k ? "gguf" : "dat", j, (double)w[j]);
        moeq_imatrix_free(im);
    }
}

TEST(nonfinite_imatrix_count_printed_is_count_written)
{
    /* of two entries one has no data: one is written and "saved 1" said */
    const char *a = test_tmp("a.dat"), *z = test_tmp("z.dat"), *out = test_tmp("out.dat");
    write_dat(a, 10, 4, 1.0f, 10);
    FILE *f = fopen(z, "wb");
    REQUIRE(f != NULL);
    int32_t hdr[] = { 1, 1 };
    fwrite(hdr, 4, 2, f);
    fwrite("v", 1, 1, f);
    int32_t zero = 0, four = 4;
    float zeros[4] = { 0, 0, 0, 0 };
    fwrite(&zero, 4, 1, f);
    fwrite(&four, 4, 1, f);
    fwrite(zeros, 4, 4, f);
    fclose(f);
    char *o = NULL;
    int rc = test_run(&o, "%s imatrix --in-file %s --in-file %s -o %s", test_moeq_bin(), a, z, out);
    CHECKF(rc == 0 && strstr(o, "saved 1 entries"), "rc %d: %s", rc, o);
    free(o);
    char err[512];
    struct moeq_imatrix *im = moeq_imatrix_new();
    REQUIREF(moeq_imatrix_load(im, out, err, sizeof err) == 0, "%s", err);
    CHECK(im->n_entries == 1);
    moeq_imatrix_free(im);

    /* nothing with data: refused, instead of "saved 1 entries" and a .dat
     * of zero entries that no reader accepts */
    rc = test_run(&o, "%s imatrix --in-file %s -o %s", test_moeq_bin(), z, test_tmp("empty.dat"));
    CHECKF(rc == 1 && strstr(o, "none of the 1 entries has data to store; nothing written"), "rc %d: %s", rc, o);
    CHECKF(!strstr(o, "saved"), "%s", o);
    size_t n;
    void *b = test_read_file(test_tmp("empty.dat"), &n);
    CHECKF(b == NULL, "%zu bytes written", n);
    free(b);
    free(o);
    /* the library call refuses the same for either format */
    for (int fmt = 0; fmt < 2; fmt++) {
        struct moeq_imatrix *e = moeq_imatrix_new();
        REQUIRE(moeq_imatrix_get(e, "blk.0.ffn_up_exps.weight", 4, 8, err, sizeof err) != NULL);
        CHECK(moeq_imatrix_n_storable(e) == 0);
        const char *p = test_tmp(fmt ? "e.gguf" : "e.dat");
        CHECK(moeq_imatrix_save(e, p, fmt, NULL, 0, err, sizeof err) == -1 && strstr(err, "nothing written"));
        b = test_read_file(p, &n);
        CHECKF(b == NULL, "fmt %d: %zu bytes written", fmt, n);
        free(b);
        moeq_imatrix_free(e);
    }
}
