/* moeq perplexity and moeq imatrix on synthesized models: numbers checked
 * against direct computations through the engine API, KLD of a model
 * against itself, merging, and bad inputs. */
#include "test.h"
#include "engine/engine.h"
#include "gguf/gguf.h"
#include "quant/imatrix.h"
#include "quant/quants.h"

static double final_ppl(const char *out)
{
    const char *f = strstr(out, "Final estimate: PPL = ");
    return f ? atof(f + 22) : -1;
}

/* exp(mean NLL) over the second half of each chunk, computed here. */
static double direct_ppl(const char *model, const char *text_path, int n_ctx, int n_chunks)
{
    char err[256];
    struct moeq_engine_params ep = { model, 1, n_ctx, 1, MOEQ_KV_F16, MOEQ_KV_F16, n_ctx };
    moeq_engine *e = moeq_engine_open(&ep, err, sizeof err);
    REQUIREF(e != NULL, "%s", err);
    size_t n;
    char *text = test_read_file(text_path, &n);
    REQUIRE(text != NULL);
    int32_t *tok = malloc((n + 16) * sizeof *tok);
    int nt = moeq_tokenize(e, text, n, 0, tok, (int)n + 16);
    REQUIRE(nt >= n_ctx * n_chunks);
    int nv = moeq_engine_info(e)->n_vocab;
    float *logits = malloc((size_t)n_ctx * nv * sizeof *logits);
    moeq_session *s = moeq_session_new(e, err, sizeof err);
    REQUIRE(s != NULL);
    double nll = 0;
    long count = 0;
    for (int c = 0; c < n_chunks; c++) {
        moeq_session_sync(s, NULL, 0);
        REQUIRE(moeq_session_eval(s, tok + c * n_ctx, n_ctx, logits, err, sizeof err) == 0);
        for (int j = n_ctx / 2; j < n_ctx - 1; j++) {
            const float *row = logits + (size_t)j * nv;
            double mx = row[0], se = 0;
            for (int v = 1; v < nv; v++) if (row[v] > mx) mx = row[v];
            for (int v = 0; v < nv; v++) se += exp(row[v] - mx);
            nll += mx + log(se) - row[tok[c * n_ctx + j + 1]];
            count++;
        }
    }
    moeq_session_free(s);
    moeq_engine_close(e);
    free(logits); free(tok); free(text);
    return exp(nll / (double)count);
}

TEST(perplexity_equals_direct_nll)
{
    const char *m = test_synth_model("s.gguf", NULL);
    char *o = NULL;
    int rc = test_run(&o, "%s perplexity -m %s -f data/calibration.txt -c 64 --chunks 3 -t 2", test_moeq_bin(), m);
    REQUIREF(rc == 0, "%s", o);
    double got = final_ppl(o), want = direct_ppl(m, "data/calibration.txt", 64, 3);
    CHECKF(got > 0 && fabs(got - want) <= 1e-4 * want + 1e-4, "moeq perplexity %.6f, direct %.6f", got, want);
    CHECK(strstr(o, "[1]") && strstr(o, "[3]"));
    free(o);
}

TEST(perplexity_kld_self_is_zero_and_quantized_is_not)
{
    const char *m, *q;
    char *o = NULL;
    const char *base = test_kld_base(&m, &q, "", &o);
    double base_ppl = final_ppl(o);
    free(o);
    int rc = test_run(&o, "%s perplexity -m %s -f data/calibration.txt --kl-divergence-base %s --kl-divergence",
                      test_moeq_bin(), m, base);
    REQUIREF(rc == 0, "%s", o);
    const char *k = strstr(o, "Mean    KLD:");
    REQUIRE(k != NULL);
    double kld = atof(k + 12);
    CHECKF(fabs(kld) < 1e-5, "self KLD %g", kld);
    CHECK(strstr(o, "Same top p: 100.000"));
    const char *pq = strstr(o, "Mean PPL(Q)                   :");
    REQUIRE(pq != NULL);
    CHECKF(fabs(atof(pq + 32) - base_ppl) <= 1e-3 * base_ppl, "PPL(Q) %g vs base %g", atof(pq + 32), base_ppl);
    free(o);
    /* a model with other weights (same vocabulary) differs */
    rc = test_run(&o, "%s perplexity -m %s -f data/calibration.txt --kl-divergence-base %s --kl-divergence",
                  test_moeq_bin(), q, base);
    REQUIREF(rc == 0, "%s", o);
    k = strstr(o, "Mean    KLD:");
    REQUIRE(k != NULL);
    CHECKF(atof(k + 12) > 1e-4, "KLD %g", atof(k + 12));
    free(o);
}

/* -ctk/-ctv as llama-perplexity spells them: a Q8_0 cache scores close to
 * the F16 one but not the same; a bad type is a usage error. */
TEST(perplexity_kv_cache_types)
{
    const char *m = test_synth_model("s.gguf", NULL);
    char *o = NULL;
    double ppl[3];
    const char *kv[3] = { "", "-ctk q8_0 -ctv q8_0", "--cache-type-k q8_0" };
    for (int i = 0; i < 3; i++) {
        int rc = test_run(&o, "%s perplexity -m %s -f data/calibration.txt -c 64 --chunks 2 -t 2 %s", test_moeq_bin(), m, kv[i]);
        REQUIREF(rc == 0, "%s", o);
        ppl[i] = final_ppl(o);
        free(o);
    }
    CHECKF(ppl[0] > 0 && ppl[1] != ppl[0] && fabs(ppl[1] - ppl[0]) < 0.05 * ppl[0], "f16 %g, q8_0 %g", ppl[0], ppl[1]);
    CHECKF(ppl[2] != ppl[0] && fabs(ppl[2] - ppl[0]) < 0.05 * ppl[0], "f16 %g, q8_0 K %g", ppl[0], ppl[2]);
    int rc = test_run(&o, "%s perplexity -m %s -f data/calibration.txt -ctk q4_0", test_moeq_bin(), m);
    CHECKF(rc == 2 && strstr(o, "q4_0"), "%s", o);
    free(o);
}

TEST(perplexity_bad_inputs)
{
    const char *m = test_synth_model("s.gguf", NULL);
    const char *other = test_synth_model("v.gguf", "--vocab 600");
    const char *empty = test_tmp("empty.txt"), *garbage = test_tmp("garbage.kld"), *base = test_tmp("b.kld");
    FILE *f = fopen(empty, "w"); fclose(f);
    f = fopen(garbage, "w"); fputs("not logits at all", f); fclose(f);
    char *o = NULL;
    const char *shorttext = test_tmp("short.txt");
    f = fopen(shorttext, "w"); fputs("Only a few words of text here, far too short.", f); fclose(f);
    int rc = test_run(&o, "%s perplexity -m %s -f %s -c 64", test_moeq_bin(), m, shorttext);
    CHECKF(rc == 1 && strstr(o, "2 x n_ctx"), "%s", o);
    free(o);
    rc = test_run(&o, "%s perplexity -m %s -f %s", test_moeq_bin(), m, empty);
    CHECKF(rc == 1 && strstr(o, "empty"), "%s", o);
    free(o);
    rc = test_run(&o, "%s perplexity -m %s -f data/calibration.txt --kl-divergence-base %s --kl-divergence", test_moeq_bin(), m, garbage);
    CHECKF(rc == 1 && strstr(o, "garbage.kld"), "%s", o);
    free(o);
    rc = test_run(&o, "%s perplexity -m %s -f data/calibration.txt --kl-divergence-base %s/none --kl-divergence", test_moeq_bin(), m, test_tmpdir());
    CHECKF(rc == 1 && strstr(o, "none"), "%s", o);
    free(o);
    rc = test_run(&o, "%s perplexity -m %s -f data/calibration.txt -c 64 --chunks 2 --kl-divergence-base %s", test_moeq_bin(), m, base);
    REQUIREF(rc == 0, "%s", o);
    free(o);
    rc = test_run(&o, "%s perplexity -m %s -f data/calibration.txt --kl-divergence-base %s --kl-divergence", test_moeq_bin(), other, base);
    CHECKF(rc == 1 && strstr(o, "vocabulary"), "%s", o);
    free(o);
    rc = test_run(&o, "%s perplexity -m %s", test_moeq_bin(), m);
    CHECK(rc == 2);
    free(o);
}

/* RMSNorm of token_embd rows times attn_norm: the input of blk.0.attn_q. */
TEST(imatrix_sums_match_direct_computation)
{
    const char *m = test_synth_model("s.gguf", NULL);
    const char *out = test_tmp("im.gguf");
    char *o = NULL;
    int rc = test_run(&o, "%s imatrix -m %s -f data/calibration.txt -c 32 --chunks 2 --no-ppl -o %s",
                      test_moeq_bin(), m, out);
    REQUIREF(rc == 0, "%s", o);
    free(o);
    char err[256];
    struct moeq_imatrix *im = moeq_imatrix_new();
    REQUIREF(moeq_imatrix_load(im, out, err, sizeof err) == 0, "%s", err);
    struct moeq_imatrix_entry *q = moeq_imatrix_find(im, "blk.0.attn_q.weight");
    REQUIRE(q != NULL);
    CHECK(q->counts[0] == 64);
    /* recompute from the file */
    gguf_file *f = gguf_open(m, err, sizeof err);
    REQUIRE(f != NULL);
    const gguf_tensor *emb = &f->tensors[gguf_find_tensor(f, "token_embd.weight")];
    const gguf_tensor *nw = &f->tensors[gguf_find_tensor(f, "blk.0.attn_norm.weight")];
    int n_embd = (int)emb->ne[0];
    double eps = 1e-6;
    gguf_get_f64(f, "qwen3moe.attention.layer_norm_rms_epsilon", &eps);
    struct moeq_engine_params ep = { m, 1, 64, 1, MOEQ_KV_F16, MOEQ_KV_F16, 32 };
    moeq_engine *e = moeq_engine_open(&ep, err, sizeof err);
    REQUIRE(e != NULL);
    size_t n;
    char *text = test_read_file("data/calibration.txt", &n);
    int32_t *tok = malloc((n + 16) * sizeof *tok);
    int nt = moeq_tokenize(e, text, n, 0, tok, (int)n + 16);
    REQUIRE(nt >= 64);
    double *want = calloc((size_t)n_embd, sizeof *want);
    float *row = malloc((size_t)n_embd * sizeof *row), *w = malloc((size_t)n_embd * sizeof *w);
    REQUIRE(moeq_dequantize((int)nw->type, nw->data, w, n_embd) == 0);
    size_t row_bytes = moeq_row_size((int)emb->type, n_embd);
    for (int t = 0; t < 64; t++) {
        REQUIRE(moeq_dequantize((int)emb->type, (const uint8_t *)emb->data + (size_t)tok[t] * row_bytes, row, n_embd) == 0);
        double ss = 0;
        for (int j = 0; j < n_embd; j++) ss += (double)row[j] * row[j];
        double sc = 1.0 / sqrt(ss / n_embd + eps);
        for (int j = 0; j < n_embd; j++) {
            double v = row[j] * sc * w[j];
            want[j] += v * v;
        }
    }
    for (int j = 0; j < n_embd; j++)
        CHECKF(fabs(q->sums[j] - want[j]) <= 1e-3 * want[j] + 1e-6, "column %d: %g vs %g", j, q->sums[j], want[j]);
    /* routed experts: per-expert counts add up to tokens x experts used */
    struct moeq_imatrix_entry *g = moeq_imatrix_find(im, "blk.0.ffn_up_exps.weight");
    REQUIRE(g != NULL);
    double total = 0;
    for (int64_t x = 0; x < g->n_mat; x++) total += g->counts[x];
    CHECKF(total == 64.0 * moeq_engine_info(e)->n_expert_used, "routed rows %g", total);
    CHECK(moeq_imatrix_find(im, "blk.0.ffn_down_exps.weight") != NULL);
    CHECK(moeq_imatrix_find(im, "output.weight") == NULL);
    moeq_engine_close(e);
    gguf_close(f);
    free(want); free(row); free(w); free(tok); free(text);
    moeq_imatrix_free(im);
}

TEST(imatrix_merge_of_runs_equals_one_run)
{
    /* few experts, so every expert is routed in each short run (a tensor
     * with a never-routed expert is dropped by llama-imatrix's rule) */
    const char *m = test_synth_model("s.gguf", "--experts 4");
    /* GGUF keeps per-expert token counts; legacy .dat keeps only per-element
     * means, so only GGUF merges can be exact */
    const char *a = test_tmp("a.gguf"), *b = test_tmp("b.gguf"), *all = test_tmp("all.gguf"), *mg = test_tmp("merged.gguf");
    char *o = NULL;
    REQUIRE(test_run(&o, "%s imatrix -m %s -f data/calibration.txt -c 32 --chunks 2 --no-ppl -o %s", test_moeq_bin(), m, a) == 0);
    free(o);
    REQUIRE(test_run(&o, "%s imatrix -m %s -f data/calibration.txt -c 32 --chunk 2 --chunks 2 --no-ppl -o %s", test_moeq_bin(), m, b) == 0);
    free(o);
    REQUIRE(test_run(&o, "%s imatrix -m %s -f data/calibration.txt -c 32 --chunks 4 --no-ppl -o %s", test_moeq_bin(), m, all) == 0);
    free(o);
    int rc = test_run(&o, "%s imatrix -c 32 --in-file %s --in-file %s -o %s", test_moeq_bin(), a, b, mg);
    REQUIREF(rc == 0, "%s", o);
    free(o);
    char err[256];
    struct moeq_imatrix *x = moeq_imatrix_new(), *y = moeq_imatrix_new();
    REQUIRE(moeq_imatrix_load(x, all, err, sizeof err) == 0);
    REQUIRE(moeq_imatrix_load(y, mg, err, sizeof err) == 0);
    CHECK(x->n_entries == y->n_entries);
    CHECK(y->chunk_count == 4);
    for (int64_t i = 0; i < x->n_entries; i++) {
        struct moeq_imatrix_entry *ex = &x->entries[i], *ey = moeq_imatrix_find(y, ex->name);
        REQUIREF(ey != NULL, "%s missing after merge", ex->name);
        static float wx[4096], wy[4096];
        for (int64_t mt = 0; mt < ex->n_mat; mt++) {
            int rx = moeq_imatrix_weights(ex, ex->n_per_row, ex->n_mat, mt, wx);
            int ry = moeq_imatrix_weights(ey, ex->n_per_row, ex->n_mat, mt, wy);
            CHECK(rx == ry);
            for (int64_t j = 0; j < ex->n_per_row; j++)
                CHECKF(fabsf(wx[j] - wy[j]) <= 1e-4f * fabsf(wx[j]) + 1e-7f, "%s[%lld][%lld] %g vs %g",
                       ex->name, (long long)mt, (long long)j, wx[j], wy[j]);
        }
    }
    moeq_imatrix_free(x);
    moeq_imatrix_free(y);
}

TEST(imatrix_bad_inputs)
{
    const char *m = test_synth_model("s.gguf", NULL);
    const char *other = test_synth_model("o.gguf", "--n-embd 512");
    const char *im = test_tmp("o.dat"), *empty = test_tmp("e.txt");
    FILE *f = fopen(empty, "w"); fclose(f);
    char *o = NULL;
    REQUIRE(test_run(&o, "%s imatrix -m %s -f data/calibration.txt -c 32 --chunks 1 --no-ppl -o %s", test_moeq_bin(), other, im) == 0);
    free(o);
    int rc = test_run(&o, "%s imatrix -m %s -f data/calibration.txt -c 32 --chunks 1 --no-ppl --in-file %s -o %s",
                      test_moeq_bin(), m, im, test_tmp("x.dat"));
    CHECKF(rc == 1 && strstr(o, "different model"), "%s", o);
    free(o);
    rc = test_run(&o, "%s imatrix -m %s -f %s -o %s", test_moeq_bin(), m, empty, test_tmp("y.dat"));
    CHECKF(rc == 1 && strstr(o, "empty"), "%s", o);
    free(o);
    rc = test_run(&o, "%s imatrix -m %s -f data/calibration.txt -c 100000 -o %s", test_moeq_bin(), m, test_tmp("z.dat"));
    CHECK(rc == 1);
    free(o);
    rc = test_run(&o, "%s imatrix --in-file %s -o %s", test_moeq_bin(), im, im);
    CHECKF(rc == 1 && strstr(o, "overwrite"), "%s", o);
    free(o);
}
