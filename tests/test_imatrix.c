/* Importance matrices: accumulation, legacy .dat and GGUF round trips,
 * merging, per-expert weights, llama.cpp's reference file, bad input. */
#include "test.h"
#include "quant/imatrix.h"
#include "gguf_build.h"

#include <float.h>
#include <stdint.h>

static struct moeq_imatrix *sample(unsigned seed)
{
    struct moeq_imatrix *im = moeq_imatrix_new();
    char err[256];
    struct moeq_imatrix_entry *a = moeq_imatrix_get(im, "blk.0.attn_q.weight", 8, 1, err, sizeof err);
    struct moeq_imatrix_entry *b = moeq_imatrix_get(im, "blk.0.ffn_up_exps.weight", 4, 3, err, sizeof err);
    float x[8 * 5];
    for (int i = 0; i < 40; i++) x[i] = (float)((seed * 7 + (unsigned)i * 13) % 11) - 5.0f;
    moeq_imatrix_add(a, 0, x, 5);
    moeq_imatrix_add(b, 0, x, 3);
    moeq_imatrix_add(b, 2, x + 12, 2);
    a->ncall = b->ncall = 1;
    im->chunk_count = 1;
    im->chunk_size = 5;
    moeq_imatrix_add_dataset(im, "calib.txt");
    return im;
}

TEST(imatrix_accumulates_sum_of_squares)
{
    struct moeq_imatrix *im = sample(1);
    struct moeq_imatrix_entry *a = moeq_imatrix_find(im, "blk.0.attn_q.weight");
    REQUIRE(a != NULL);
    float x[40];
    for (int i = 0; i < 40; i++) x[i] = (float)((7 + i * 13) % 11) - 5.0f;
    for (int j = 0; j < 8; j++) {
        double s = 0;
        for (int r = 0; r < 5; r++) s += (double)x[r * 8 + j] * x[r * 8 + j];
        CHECK(fabs(a->sums[j] - s) < 1e-9);
    }
    CHECK(a->counts[0] == 5);
    float w[8];
    CHECK(moeq_imatrix_weights(a, 8, 1, 0, w) == 0);
    CHECK(fabsf(w[3] - (float)(a->sums[3] / 5)) < 1e-6f);
    /* expert 1 of the 3-D entry never saw a token: the mean of experts 0
     * and 2 */
    struct moeq_imatrix_entry *b = moeq_imatrix_find(im, "blk.0.ffn_up_exps.weight");
    float wb[4], w0[4], w2[4];
    CHECK(moeq_imatrix_weights(b, 4, 3, 0, w0) == 0 && moeq_imatrix_weights(b, 4, 3, 2, w2) == 0);
    CHECK(moeq_imatrix_weights(b, 4, 3, 1, wb) == 1);
    for (int j = 0; j < 4; j++) CHECK(fabsf(wb[j] - 0.5f * (w0[j] + w2[j])) < 1e-5f * (1 + w0[j] + w2[j]));
    CHECK(moeq_imatrix_weights(b, 4, 3, 2, wb) == 0);
    CHECK(moeq_imatrix_weights(b, 5, 3, 0, wb) == -1);
    moeq_imatrix_free(im);
}

static void check_same_weights(struct moeq_imatrix *x, struct moeq_imatrix *y, const char *name,
                               int64_t ne0, int64_t nmat)
{
    struct moeq_imatrix_entry *a = moeq_imatrix_find(x, name), *b = moeq_imatrix_find(y, name);
    REQUIREF(a && b, "entry %s missing", name);
    static float wa[4096], wb[4096];
    REQUIRE(ne0 <= 4096);
    for (int64_t m = 0; m < nmat; m++) {
        int ra = moeq_imatrix_weights(a, ne0, nmat, m, wa);
        int rb = moeq_imatrix_weights(b, ne0, nmat, m, wb);
        CHECK(ra >= 0 && rb >= 0);
        for (int64_t j = 0; j < ne0; j++)
            CHECKF(fabsf(wa[j] - wb[j]) <= 1e-5f * fabsf(wa[j]) + 1e-6f, "%s[%lld][%lld]: %g vs %g",
                   name, (long long)m, (long long)j, wa[j], wb[j]);
    }
}

TEST(imatrix_dat_and_gguf_round_trip)
{
    struct moeq_imatrix *im = sample(2);
    /* give the missing expert data so nothing is skipped */
    struct moeq_imatrix_entry *b = moeq_imatrix_find(im, "blk.0.ffn_up_exps.weight");
    float x[4] = { 1, 2, 3, 4 };
    moeq_imatrix_add(b, 1, x, 1);
    char err[256];
    for (int fmt = 0; fmt < 2; fmt++) {
        const char *path = test_tmp(fmt ? "im.gguf" : "im.dat");
        REQUIREF(moeq_imatrix_save(im, path, fmt, NULL, 0, err, sizeof err) == 0, "%s", err);
        struct moeq_imatrix *back = moeq_imatrix_new();
        REQUIREF(moeq_imatrix_load(back, path, err, sizeof err) == 0, "%s", err);
        CHECK(back->n_entries == 2);
        CHECK(back->chunk_count == 1);
        CHECK(back->n_datasets == 1 && strcmp(back->datasets[0], "calib.txt") == 0);
        check_same_weights(im, back, "blk.0.attn_q.weight", 8, 1);
        check_same_weights(im, back, "blk.0.ffn_up_exps.weight", 4, 3);
        moeq_imatrix_free(back);
    }
    moeq_imatrix_free(im);
}

TEST(imatrix_merge_equals_single_run)
{
    /* two runs merged give the same weights as one run over both inputs */
    struct moeq_imatrix *r1 = moeq_imatrix_new(), *r2 = moeq_imatrix_new(), *all = moeq_imatrix_new();
    char err[256];
    float x[6 * 4];
    for (int i = 0; i < 24; i++) x[i] = (float)(i % 7) - 3.0f + 0.25f * (float)i;
    moeq_imatrix_add(moeq_imatrix_get(r1, "w", 4, 1, err, sizeof err), 0, x, 2);
    moeq_imatrix_add(moeq_imatrix_get(r2, "w", 4, 1, err, sizeof err), 0, x + 8, 4);
    moeq_imatrix_add(moeq_imatrix_get(all, "w", 4, 1, err, sizeof err), 0, x, 6);
    const char *p1 = test_tmp("r1.gguf"), *p2 = test_tmp("r2.gguf");
    REQUIRE(moeq_imatrix_save(r1, p1, 1, NULL, 0, err, sizeof err) == 0);
    REQUIRE(moeq_imatrix_save(r2, p2, 1, NULL, 0, err, sizeof err) == 0);
    struct moeq_imatrix *m = moeq_imatrix_new();
    REQUIRE(moeq_imatrix_load(m, p1, err, sizeof err) == 0);
    REQUIRE(moeq_imatrix_load(m, p2, err, sizeof err) == 0);
    check_same_weights(all, m, "w", 4, 1);
    moeq_imatrix_free(r1); moeq_imatrix_free(r2); moeq_imatrix_free(all); moeq_imatrix_free(m);
}

TEST(imatrix_reference_dat_loads)
{
    const char *path = test_shared_path("models/tiny-a/imatrix.dat");
    struct moeq_imatrix *im = moeq_imatrix_new();
    char err[256];
    REQUIREF(moeq_imatrix_load(im, path, err, sizeof err) == 0, "%s", err);
    CHECK(im->n_entries > 0);
    CHECK(im->chunk_count == 128);
    struct moeq_imatrix_entry *e = moeq_imatrix_find(im, "blk.0.ffn_up_exps.weight");
    REQUIRE(e != NULL);
    CHECK(e->n_per_row * e->n_mat == 256 * 32);
    float w[256];
    CHECK(moeq_imatrix_weights(e, 256, 32, 5, w) >= 0);
    for (int j = 0; j < 256; j++) CHECK(w[j] >= 0 && isfinite(w[j]));
    struct moeq_imatrix_entry *q = moeq_imatrix_find(im, "blk.0.attn_q.weight");
    REQUIRE(q != NULL);
    CHECK(q->n_per_row == 256);
    /* a .dat written back from it loads to the same weights */
    const char *out = test_tmp("copy.dat");
    REQUIREF(moeq_imatrix_save(im, out, 0, NULL, 0, err, sizeof err) == 0, "%s", err);
    struct moeq_imatrix *back = moeq_imatrix_new();
    REQUIRE(moeq_imatrix_load(back, out, err, sizeof err) == 0);
    CHECK(back->n_entries == im->n_entries);
    check_same_weights(im, back, "blk.0.attn_q.weight", 256, 1);
    moeq_imatrix_free(back);
    moeq_imatrix_free(im);
}

TEST(imatrix_bad_files)
{
    char err[256];
    struct moeq_imatrix *im = moeq_imatrix_new();
    CHECK(moeq_imatrix_load(im, test_tmp("missing.dat"), err, sizeof err) == -1 && strstr(err, "missing.dat"));
    const char *p = test_tmp("bad.dat");
    FILE *f = fopen(p, "wb");
    int32_t hdr[3] = { 1, 1000000, 0 };
    fwrite(hdr, 4, 3, f);
    fclose(f);
    CHECK(moeq_imatrix_load(im, p, err, sizeof err) == -1 && strstr(err, "bad.dat"));
    /* a valid .dat cut short anywhere fails cleanly */
    struct moeq_imatrix *s = sample(3);
    const char *good = test_tmp("good.dat");
    REQUIRE(moeq_imatrix_save(s, good, 0, NULL, 0, err, sizeof err) == 0);
    size_t n;
    char *buf = test_read_file(good, &n);
    REQUIRE(buf != NULL);
    /* the trailer (chunk count, name length, "calib.txt") is optional as a
     * whole and after the chunk count; anything else cut short must fail */
    size_t entries_end = n - 17;
    for (size_t cut = 0; cut < n; cut++) {
        if (cut == entries_end || cut == entries_end + 4) continue;
        f = fopen(p, "wb");
        fwrite(buf, 1, cut, f);
        fclose(f);
        struct moeq_imatrix *t = moeq_imatrix_new();
        CHECKF(moeq_imatrix_load(t, p, err, sizeof err) == -1, "cut at %zu loaded", cut);
        moeq_imatrix_free(t);
    }
    free(buf);
    moeq_imatrix_free(s);
    moeq_imatrix_free(im);
}

/* Entry names go into one-line messages: a control character in one
 * (fuzz_imatrix found "blk\n0..." in a .dat) is refused, in both formats. */
TEST(imatrix_names_with_control_characters)
{
    char err[256];
    const char *p = test_tmp("ctl.dat");
    gbuf d = {0};
    gb_u32(&d, 1); gb_u32(&d, 5); gb_put(&d, "blk\n0", 5); gb_u32(&d, 1); gb_u32(&d, 1); gb_f32(&d, 1.0f);
    FILE *f = fopen(p, "wb");
    REQUIRE(f && fwrite(d.p, 1, d.n, f) == d.n && fclose(f) == 0);
    struct moeq_imatrix *im = moeq_imatrix_new();
    CHECKF(moeq_imatrix_load(im, p, err, sizeof err) == -1 && !strchr(err, '\n') &&
           strstr(err, "ctl.dat: byte 4: entry 0: name contains control character 0x0a"), "%s", err);
    free(d.p);

    const uint64_t ne_s[2] = { 2, 1 }, ne_c[2] = { 1, 1 };
    gbuf g = {0};
    gb_header(&g, 3, 2, 0);
    gb_tinfo(&g, "a\x1b[2J.in_sum2", 2, ne_s, 0 /* F32 */, 0);
    gb_tinfo(&g, "a\x1b[2J.counts", 2, ne_c, 0, 32);
    gb_pad(&g, 32);
    gb_f32(&g, 1.0f); gb_f32(&g, 2.0f);
    gb_pad(&g, 32);
    gb_f32(&g, 1.0f);
    p = test_tmp("ctl.gguf");
    f = fopen(p, "wb");
    REQUIRE(f && fwrite(g.p, 1, g.n, f) == g.n && fclose(f) == 0);
    CHECKF(moeq_imatrix_load(im, p, err, sizeof err) == -1 && !strchr(err, '\n') &&
           strstr(err, "ctl.gguf: tensor 0: name contains control character 0x1b"), "%s", err);
    free(g.p);
    moeq_imatrix_free(im);
}

/* A count far below one token under ordinary sums (fuzz_imatrix found a
 * file with a count of 1.4e-45): the mean is past float range. The weights
 * saturate instead of becoming infinite. */
TEST(imatrix_weights_stay_finite)
{
    char err[256];
    struct moeq_imatrix *im = moeq_imatrix_new();
    struct moeq_imatrix_entry *e = moeq_imatrix_get(im, "blk.0.ffn_up_exps.weight", 4, 2, err, sizeof err);
    REQUIRE(e);
    for (int j = 0; j < 4; j++) e->sums[j] = e->sums[4 + j] = 10.0 * (j + 1);
    e->counts[0] = 1.4e-45;
    e->counts[1] = 2.0;
    float w[4];
    CHECK(moeq_imatrix_weights(e, 4, 2, 0, w) == 0);
    for (int j = 0; j < 4; j++) CHECKF(isfinite(w[j]) && w[j] == FLT_MAX, "w[%d] = %g", j, (double)w[j]);
    CHECK(moeq_imatrix_weights(e, 4, 2, 1, w) == 0 && w[0] == 5.0f && w[3] == 20.0f);
    moeq_imatrix_free(im);
}

/* An expert that saw few tokens is pulled toward its tensor's
 * count-weighted mean (as if padded to the threshold with mean tokens);
 * the others, the counts and the 2-D entries stay. */
TEST(imatrix_low_count_experts_shrink_toward_mean)
{
    struct moeq_imatrix *im = moeq_imatrix_new();
    char err[256];
    struct moeq_imatrix_entry *e = moeq_imatrix_get(im, "blk.0.ffn_up_exps.weight", 4, 4, err, sizeof err);
    struct moeq_imatrix_entry *q = moeq_imatrix_get(im, "blk.0.attn_q.weight", 4, 1, err, sizeof err);
    REQUIRE(e && q);
    const float twos[4] = { 2, 2, 2, 2 }, few[4] = { 3, 0, 0, 0 };
    for (int m = 0; m < 3; m++)
        for (int r = 0; r < 100; r++) moeq_imatrix_add(e, m, twos, 1);
    for (int r = 0; r < 4; r++) moeq_imatrix_add(e, 3, few, 1);
    moeq_imatrix_add(q, 0, few, 1);
    int64_t nt = -1;
    CHECK(moeq_imatrix_shrink_low_counts(im, 0.25, &nt) == 1);
    CHECK(nt == 1);
    /* mean count 76, threshold 19; mu = (1236, 1200, 1200, 1200) / 304 */
    float w[4];
    CHECK(moeq_imatrix_weights(e, 4, 4, 3, w) == 0);
    const double mu0 = 1236.0 / 304, mu1 = 1200.0 / 304;
    CHECKF(fabs(w[0] - (36 + 15 * mu0) / 19) < 1e-5 && fabs(w[1] - 15 * mu1 / 19) < 1e-5, "%g %g", w[0], w[1]);
    CHECK(e->counts[3] == 4);
    for (int m = 0; m < 3; m++) {
        CHECK(moeq_imatrix_weights(e, 4, 4, m, w) == 0);
        CHECK(w[0] == 4 && w[3] == 4);
    }
    CHECK(moeq_imatrix_weights(q, 4, 1, 0, w) == 0 && w[0] == 9 && w[1] == 0);
    /* nothing under the threshold: nothing changes */
    CHECK(moeq_imatrix_shrink_low_counts(im, 0.01, NULL) == 0);
    moeq_imatrix_free(im);
}
