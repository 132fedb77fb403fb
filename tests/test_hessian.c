/*
 * test_hessian.c: the full second-moment collector and its file
 * (src/quant/hessian.c): sums equal a direct computation, the file round
 * trip keeps them, the gate/up sibling is found, bad files are one-line
 * errors; and `moeq imatrix --hessian` + `moeq quantize --hessian` on a
 * synth model write a file that loads, runs and reports Hessian-aware
 * tensors, never over an input.
 */
#include "test.h"
#include "quant/hessian.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

TEST(hessian_sums_and_file_round_trip)
{
    struct moeq_hessian *hs = moeq_hessian_new();
    REQUIRE(hs);
    const int64_t n = 8;
    float x[3 * 8];
    for (int i = 0; i < 24; i++) x[i] = (float)((i * 7) % 5) - 2.0f;
    char err[512];
    REQUIRE(moeq_hessian_add(hs, "blk.0.ffn_up_exps.weight", 4, 2, x, 3, n, err, sizeof err) == 0);
    REQUIRE(moeq_hessian_add(hs, "blk.0.attn_q.weight", 1, 0, x, 2, n, err, sizeof err) == 0);
    CHECK(moeq_hessian_add(hs, "blk.0.attn_q.weight", 1, 0, x, 2, 16, err, sizeof err) == -1);   /* shape */
    CHECK(strstr(err, "attn_q"));
    const char *path = test_tmp("h.gguf");
    REQUIRE(moeq_hessian_save(hs, path, NULL, 0, err, sizeof err) == 0);
    struct moeq_hessian *back = moeq_hessian_new();
    REQUIRE(moeq_hessian_load(back, path, err, sizeof err) == 0);
    /* gate finds up's statistics: they multiply the same input */
    const struct moeq_hessian_entry *e = moeq_hessian_find(back, "blk.0.ffn_gate_exps.weight");
    REQUIRE(e && e->n == n && e->n_mat == 4);
    CHECK(e->counts[2] == 3 && e->counts[0] == 0);
    double *H = moeq_hessian_matrix(e, 2);
    REQUIRE(H);
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < n; j++) {
            double want = 0;
            for (int r = 0; r < 3; r++) want += (double)x[r * n + i] * x[r * n + j];
            CHECKF(fabs(H[i * n + j] - want) < 1e-4, "H[%lld][%lld] %g, want %g", (long long)i, (long long)j,
                   H[i * n + j], want);
        }
    free(H);
    CHECK(moeq_hessian_find(back, "blk.1.attn_q.weight") == NULL);
    moeq_hessian_free(back);
    /* an imatrix file is not a Hessian file */
    const char *im = test_synth_model("notes.gguf", NULL);
    back = moeq_hessian_new();
    CHECK(moeq_hessian_load(back, im, err, sizeof err) == -1);
    CHECKF(strstr(err, "general.type") && strstr(err, "notes.gguf"), "%s", err);
    CHECK(moeq_hessian_load(back, "/nonexistent/h.gguf", err, sizeof err) == -1);
    CHECK(strstr(err, "No such file"));
    moeq_hessian_free(back);
    moeq_hessian_free(hs);
}

TEST(hessian_imatrix_and_quantize_end_to_end)
{
    const char *m = test_synth_model("hm.gguf", "--recipe f16");
    const char *txt = test_tmp("calib.txt");
    FILE *f = fopen(txt, "w");
    REQUIRE(f);
    for (int i = 0; i < 120; i++) fprintf(f, "the river town wakes before the sun %d, and the bakers open. ", i);
    fclose(f);
    char *o = NULL;
    const char *im = test_tmp("im.gguf"), *h = test_tmp("h.gguf"), *q = test_tmp("q.gguf"), *q0 = test_tmp("q0.gguf");
    CHECKF(test_run(&o, "%s imatrix -m %s -f %s -c 64 --chunks 4 --no-ppl -o %s --hessian %s -t 2", test_moeq_bin(),
                    m, txt, im, h) == 0, "%s", o ? o : "");
    CHECK(o && strstr(o, "Hessian entries"));
    free(o);
    /* never over an input, never the imatrix output */
    CHECK(test_run(NULL, "%s imatrix -m %s -f %s -c 128 --chunks 1 -o %s --hessian %s 2>/dev/null", test_moeq_bin(), m,
                   txt, im, m) != 0);
    CHECK(test_run(NULL, "%s imatrix -m %s -f %s -c 128 --chunks 1 -o %s --hessian %s 2>/dev/null", test_moeq_bin(), m,
                   txt, im, im) != 0);
    CHECKF(test_run(&o, "%s quantize --imatrix %s --hessian %s --recipe asym-2bitexp %s %s 2 --json", test_moeq_bin(),
                    im, h, m, q) == 0, "%s", o ? o : "");
    CHECK(o && strstr(o, "Hessian-aware rounding for"));
    /* 4 x 64 tokens over 8 experts: each expert saw fewer tokens than its
     * 256 input columns, so the experts keep the diagonal rounding, named */
    CHECKF(o && strstr(o, "ffn_down_exps.weight: matrices with fewer tokens than its 256 columns keep the diagonal"),
           "%s", o ? o : "");
    free(o);
    CHECK(test_run(NULL, "%s quantize -q --imatrix %s --recipe asym-2bitexp %s %s 2", test_moeq_bin(), im, m, q0) == 0);
    /* same types and bytes, other values; the file runs */
    size_t n1 = 0, n0 = 0;
    void *b1 = test_read_file(q, &n1), *b0 = test_read_file(q0, &n0);
    CHECK(b1 && b0 && n1 == n0 && memcmp(b1, b0, n1) != 0);
    free(b1); free(b0);
    CHECK(test_run(&o, "%s run -m %s -p hello -n 4 --temp 0 -t 2", test_moeq_bin(), q) == 0);
    free(o);
    /* a Hessian of another model is refused before anything is written */
    const char *other = test_synth_model("hm2.gguf", "--layers 1 --n-embd 512 --recipe f16");
    CHECK(test_run(&o, "%s quantize --hessian %s --recipe asym-2bitexp --ignore-imatrix-rules %s %s 2",
                   test_moeq_bin(), h, other, test_tmp("bad.gguf")) == 1);
    CHECKF(o && strstr(o, "hessian"), "%s", o ? o : "");
    free(o);
}
