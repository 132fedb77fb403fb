/*
 * test_hessian.c: the full second-moment collector and its file
 * (src/quant/hessian.c): sums equal a direct computation, the file round
 * trip keeps them, the gate/up sibling is found, bad files are one-line
 * errors; and `moeq imatrix --hessian` + `moeq quantize --hessian` on a
 * synth model write a file that loads, runs and reports Hessian-aware
 * tensors, never over an input. The layer-by-layer statistics
 * (hessian_seq.c): with nothing quantized they are imatrix --hessian's, a
 * quantized weight changes the statistics downstream of it and only
 * those, and `quantize --calibration-text` runs one pass per layer stage.
 */
#include "test.h"
#include "engine/engine.h"
#include "gguf/gguf.h"
#include "quant/hessian.h"
#include "quant/hessian_seq.h"
#include "quant/quants.h"

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

/* the calibration text the end-to-end tests share */
static const char *calib_text(void)
{
    const char *txt = test_tmp("calib.txt");
    FILE *f = fopen(txt, "w");
    if (!f) return NULL;
    for (int i = 0; i < 120; i++) fprintf(f, "the river town wakes before the sun %d, and the bakers open. ", i);
    fclose(f);
    return txt;
}

TEST(hessian_imatrix_and_quantize_end_to_end)
{
    const char *m = test_synth_model("hm.gguf", "--recipe f16");
    const char *txt = calib_text();
    REQUIRE(txt);
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

/* Largest relative difference between the matrices of two entries. */
static double entry_diff(const struct moeq_hessian_entry *a, const struct moeq_hessian_entry *b)
{
    if (!a || !b || a->n != b->n || a->n_mat != b->n_mat) return INFINITY;
    double d = 0, s = 0;
    for (int64_t m = 0; m < a->n_mat; m++) {
        double *ha = moeq_hessian_matrix(a, m), *hb = moeq_hessian_matrix(b, m);
        if (!ha || !hb) { free(ha); free(hb); return INFINITY; }
        for (int64_t k = 0; k < a->n * a->n; k++) {
            d = fmax(d, fabs(ha[k] - hb[k]));
            s = fmax(s, fabs(ha[k]));
        }
        free(ha); free(hb);
    }
    return s > 0 ? d / s : d;
}

TEST(hessian_layer_by_layer_follows_the_quantized_weights)
{
    const char *m = test_synth_model("hs.gguf", "--recipe f16");
    const char *txt = calib_text();
    REQUIRE(txt);
    const char *im = test_tmp("hs-im.gguf"), *h = test_tmp("hs-h.gguf");
    char *o = NULL;
    CHECKF(test_run(&o, "%s imatrix -m %s -f %s -c 64 --chunks 4 --no-ppl --process-output -o %s --hessian %s -t 2",
                    test_moeq_bin(), m, txt, im, h) == 0, "%s", o ? o : "");
    free(o);
    struct moeq_hessian *ref = moeq_hessian_new();
    char err[512];
    REQUIRE(moeq_hessian_load(ref, h, err, sizeof err) == 0);

    size_t len = 0;
    char *text = test_read_file(txt, &len);
    REQUIRE(text);
    struct moeq_hseq_opts so = { m, text, len, txt, 64, 4, 2, NULL };
    moeq_hseq *seq = moeq_hseq_open(&so, err, sizeof err);
    REQUIREF(seq, "%s", err);
    const struct moeq_hessian_entry *e = NULL;
    int passes;
    double secs;
    /* nothing quantized yet: the same sums as imatrix --hessian's */
    REQUIRE(moeq_hseq_get(seq, "blk.0.attn_q.weight", &e, err, sizeof err) == 0);
    CHECKF(entry_diff(e, moeq_hessian_find(ref, "blk.0.attn_q.weight")) < 1e-6, "%g",
           entry_diff(e, moeq_hessian_find(ref, "blk.0.attn_q.weight")));
    REQUIRE(moeq_hseq_get(seq, "blk.1.ffn_down_exps.weight", &e, err, sizeof err) == 0);
    CHECK(entry_diff(e, moeq_hessian_find(ref, "blk.1.ffn_down_exps.weight")) < 1e-6);
    moeq_hseq_stats(seq, &passes, &secs);
    CHECK(passes == 2);

    /* blk.0.attn_q "quantized" to zeros: q/k/v's shared input is unchanged
     * (no new pass for k), attn_output's and everything after it differ */
    REQUIRE(moeq_hseq_get(seq, "blk.0.attn_q.weight", &e, err, sizeof err) == 0);
    const int64_t nq = e->n;
    moeq_hseq_stats(seq, &passes, &secs);
    CHECK(passes == 3);
    gguf_file *gf = gguf_open(m, err, sizeof err);
    REQUIRE(gf);
    int64_t ti = gguf_find_tensor(gf, "blk.0.attn_q.weight");
    REQUIRE(ti >= 0);
    const size_t nb = (size_t)(gf->tensors[ti].ne[0] * gf->tensors[ti].ne[1]) * sizeof(float);
    CHECK((int64_t)gf->tensors[ti].ne[0] == nq);
    gguf_close(gf);
    void *zeros = calloc(1, nb);
    REQUIRE(zeros);
    REQUIREF(moeq_hseq_quantized(seq, "blk.0.attn_q.weight", MOEQ_TYPE_F32, zeros, nb, err, sizeof err) == 0, "%s", err);
    REQUIRE(moeq_hseq_get(seq, "blk.0.attn_k.weight", &e, err, sizeof err) == 0);
    CHECK(entry_diff(e, moeq_hessian_find(ref, "blk.0.attn_k.weight")) < 1e-6);
    moeq_hseq_stats(seq, &passes, &secs);
    CHECK(passes == 3);
    REQUIRE(moeq_hseq_get(seq, "blk.0.attn_output.weight", &e, err, sizeof err) == 0);
    CHECK(entry_diff(e, moeq_hessian_find(ref, "blk.0.attn_output.weight")) > 1e-3);
    REQUIRE(moeq_hseq_get(seq, "blk.1.attn_q.weight", &e, err, sizeof err) == 0);
    CHECK(entry_diff(e, moeq_hessian_find(ref, "blk.1.attn_q.weight")) > 1e-3);
    moeq_hseq_stats(seq, &passes, &secs);
    CHECK(passes == 5);
    /* output.weight: a pass of the whole model, every position counted (as
     * imatrix --process-output counts them), after blk.0.attn_q changed */
    REQUIRE(moeq_hseq_get(seq, "output.weight", &e, err, sizeof err) == 0);
    REQUIRE(e);
    CHECKF(e->counts[0] == 4 * 64, "%g", e->counts[0]);
    CHECK(entry_diff(e, moeq_hessian_find(ref, "output.weight")) > 1e-3);
    moeq_hseq_stats(seq, &passes, &secs);
    CHECK(passes == 6);
    /* token_embd and the norms: no statistics, no pass */
    REQUIRE(moeq_hseq_get(seq, "token_embd.weight", &e, err, sizeof err) == 0);
    CHECK(e == NULL);
    REQUIRE(moeq_hseq_get(seq, "blk.0.attn_norm.weight", &e, err, sizeof err) == 0);
    CHECK(e == NULL);
    moeq_hseq_stats(seq, &passes, &secs);
    CHECK(passes == 6);
    /* bytes the engine cannot compute with are an error naming the weight */
    void *junk = calloc(1, 16);
    CHECK(moeq_hseq_quantized(seq, "blk.0.attn_k.weight", MOEQ_TYPE_F32, junk, 16, err, sizeof err) == -1);
    CHECKF(strstr(err, "blk.0.attn_k.weight"), "%s", err);
    moeq_hseq_close(seq);
    /* with nothing quantized, output.weight's sums are imatrix's */
    seq = moeq_hseq_open(&so, err, sizeof err);
    REQUIREF(seq, "%s", err);
    REQUIRE(moeq_hseq_get(seq, "output.weight", &e, err, sizeof err) == 0);
    REQUIRE(e && moeq_hessian_find(ref, "output.weight"));
    /* (imatrix computes every position's logits for output.weight even
     * with --no-ppl) */
    CHECKF(moeq_hessian_find(ref, "output.weight")->counts[0] == 4 * 64, "%g",
           moeq_hessian_find(ref, "output.weight")->counts[0]);
    CHECKF(entry_diff(e, moeq_hessian_find(ref, "output.weight")) < 1e-6, "%g",
           entry_diff(e, moeq_hessian_find(ref, "output.weight")));
    moeq_hseq_close(seq);
    free(text);
    moeq_hessian_free(ref);
}

TEST(quantize_calibration_text_in_one_run)
{
    const char *m = test_synth_model("hq.gguf", "--recipe f16");
    const char *txt = calib_text();
    REQUIRE(txt);
    const char *im = test_tmp("hq-im.gguf"), *q = test_tmp("hq.q.gguf"), *q0 = test_tmp("hq.q0.gguf");
    char *o = NULL;
    REQUIRE(test_run(NULL, "%s imatrix -q -m %s -f %s -c 64 --chunks 4 --no-ppl -o %s -t 2", test_moeq_bin(), m, txt,
                     im) == 0);
    CHECKF(test_run(&o, "%s quantize --imatrix %s --calibration-text %s --calibration-ctx 64 --calibration-chunks 4 "
                    "--recipe asym-2bitexp %s %s 2", test_moeq_bin(), im, txt, m, q) == 0, "%s", o ? o : "");
    /* 2 layers, 4 stages each, then output.weight's; the chunks asked for */
    CHECKF(o && strstr(o, "Hessian statistics layer by layer: 9 passes"), "%s", o ? o : "");
    CHECK(o && strstr(o, "Hessian statistics of blk.1 stage 3: 4 chunks of 64 tokens"));
    CHECK(o && strstr(o, "Hessian statistics of output.weight: 4 chunks of 64 tokens"));
    free(o);
    /* -q: the passes are progress, silenced with the rest; the same bytes */
    const char *qq = test_tmp("hq.qq.gguf");
    CHECK(test_run(&o, "%s quantize -q --imatrix %s --calibration-text %s --calibration-ctx 64 --calibration-chunks 4 "
                   "--recipe asym-2bitexp %s %s 2", test_moeq_bin(), im, txt, m, qq) == 0);
    CHECKF(o && !strstr(o, "Hessian statistics"), "%s", o ? o : "");
    free(o);
    CHECK(test_run(NULL, "%s quantize -q --imatrix %s --recipe asym-2bitexp %s %s 2", test_moeq_bin(), im, m, q0) == 0);
    size_t n1 = 0, n0 = 0, nq = 0;
    void *bq = test_read_file(qq, &nq), *b1q = test_read_file(q, &n1);
    CHECK(bq && b1q && nq == n1 && memcmp(bq, b1q, nq) == 0);
    free(bq); free(b1q);
    void *b1 = test_read_file(q, &n1), *b0 = test_read_file(q0, &n0);
    CHECK(b1 && b0 && n1 == n0 && memcmp(b1, b0, n1) != 0);
    free(b1); free(b0);
    CHECK(test_run(&o, "%s run -m %s -p hello -n 4 --temp 0 -t 2", test_moeq_bin(), q) == 0);
    free(o);
    /* a dry run collects nothing; one source of statistics at a time; the
     * text is an input the output may not replace */
    CHECK(test_run(&o, "%s quantize --dry-run --imatrix %s --calibration-text %s --recipe asym-2bitexp %s %s",
                   test_moeq_bin(), im, txt, m, q) == 0);
    CHECK(o && !strstr(o, "Hessian statistics"));
    free(o);
    CHECK(test_run(NULL, "%s quantize --imatrix %s --calibration-text %s --hessian %s --recipe asym-2bitexp %s %s "
                   "2>/dev/null", test_moeq_bin(), im, txt, im, m, test_tmp("x.gguf")) == 2);
    CHECK(test_run(&o, "%s quantize --imatrix %s --calibration-text %s --recipe asym-2bitexp %s %s", test_moeq_bin(),
                   im, txt, m, txt) == 1);
    CHECKF(o && strstr(o, "calib.txt"), "%s", o ? o : "");
    free(o);
    CHECK(test_run(&o, "%s quantize --imatrix %s --calibration-text /nonexistent/c.txt --recipe asym-2bitexp %s %s",
                   test_moeq_bin(), im, m, test_tmp("x.gguf")) == 1);
    CHECKF(o && strstr(o, "/nonexistent/c.txt") && strstr(o, "No such file"), "%s", o ? o : "");
    free(o);
}

struct layers_seen { int max_layer, calls; };

static void note_layer(void *ud, const char *tensor, int expert, const float *x, int n_rows, int n_cols)
{
    struct layers_seen *ls = ud;
    (void)expert; (void)x; (void)n_rows; (void)n_cols;
    int l = -1;
    if (sscanf(tensor, "blk.%d.", &l) == 1 && l > ls->max_layer) ls->max_layer = l;
    ls->calls++;
}

TEST(engine_layer_limit_runs_only_the_first_layers)
{
    const char *m = test_synth_model("hl.gguf", "--recipe f16");
    char err[512];
    struct moeq_engine_params ep = { .model_path = m, .n_threads = 2, .n_ctx = 64, .n_seq = 1 };
    moeq_engine *e = moeq_engine_open(&ep, err, sizeof err);
    REQUIREF(e, "%s", err);
    moeq_session *s = moeq_session_new(e, err, sizeof err);
    REQUIRE(s);
    const int32_t tok[8] = { 1, 2, 3, 4, 5, 6, 7, 8 };
    const int V = moeq_engine_info(e)->n_vocab;
    float *full = malloc((size_t)V * sizeof *full);
    REQUIRE(full);
    REQUIRE(moeq_session_eval(s, tok, 8, NULL, err, sizeof err) == 0);
    memcpy(full, moeq_session_logits(s), (size_t)V * sizeof *full);
    struct layers_seen ls = { -1, 0 };
    moeq_engine_set_act_hook(e, note_layer, &ls);
    moeq_engine_set_layer_limit(e, 1);
    moeq_session_sync(s, NULL, 0);
    REQUIRE(moeq_session_eval(s, tok, 8, NULL, err, sizeof err) == 0);
    CHECK(ls.calls > 0 && ls.max_layer == 0);
    /* lifted: every layer again, the same logits as before */
    moeq_engine_set_layer_limit(e, 0);
    ls.max_layer = -1;
    moeq_session_sync(s, NULL, 0);
    REQUIRE(moeq_session_eval(s, tok, 8, NULL, err, sizeof err) == 0);
    CHECK(ls.max_layer == moeq_engine_info(e)->n_layer - 1);
    CHECK(memcmp(full, moeq_session_logits(s), (size_t)V * sizeof *full) == 0);
    free(full);
    moeq_session_free(s);
    moeq_engine_close(e);
}
