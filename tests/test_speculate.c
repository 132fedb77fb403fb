/*
 * test_speculate.c: prompt-lookup speculative decoding (src/engine/
 * speculate.c) gives exactly the tokens of plain greedy decoding, for many
 * prompts and lengths, on a model `moeq synth` writes; and the drafter
 * proposes what followed the latest earlier match of the longest suffix.
 * At a temperature, the accept/reject rule (moeq_sample_verify) returns
 * tokens distributed exactly as plain sampling's: a chi-square test with a
 * fixed seed on a small vocabulary, for drafts of every kind.
 */
#include "test.h"
#include "engine/engine.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

TEST(lookup_draft_longest_latest_match)
{
    const int32_t h[] = { 1, 2, 3, 9, 1, 2, 3, 7, 8, 5, 1, 2, 3 };
    int32_t d[8];
    int k = moeq_lookup_draft(h, 13, 1, 3, 4, d);   /* suffix 1 2 3: latest match at 4, followed by 7 8 5 1 */
    CHECK(k == 4 && d[0] == 7 && d[1] == 8 && d[2] == 5 && d[3] == 1);
    const int32_t g[] = { 4, 5, 6, 4 };
    k = moeq_lookup_draft(g, 4, 1, 3, 8, d);         /* only the 1-gram 4 matches */
    CHECK(k == 3 && d[0] == 5 && d[1] == 6 && d[2] == 4);
    CHECK(moeq_lookup_draft(g, 4, 2, 3, 8, d) == 0); /* no 2-gram repeats */
    CHECK(moeq_lookup_draft(g, 1, 1, 3, 8, d) == 0);
}

struct collect { int32_t *tok; int n, cap; };
static int collect_cb(void *ctx, int32_t t)
{
    struct collect *c = ctx;
    if (c->n < c->cap) c->tok[c->n++] = t;
    return 0;
}

TEST(speculative_greedy_equals_plain)
{
    const char *path = test_synth_model("spec.gguf", "--layers 2 --vocab 512 --ctx 1024");
    struct moeq_engine_params p = { .model_path = path, .n_threads = 2, .n_ctx = 1024, .n_seq = 1, .n_batch = 64 };
    char err[256];
    moeq_engine *e = moeq_engine_open(&p, err, sizeof err);
    REQUIREF(e, "%s", err);
    moeq_session *s = moeq_session_new(e, err, sizeof err);
    REQUIRE(s);
    const int V = moeq_engine_info(e)->n_vocab;
    int total_accepted = 0, total_steps = 0, total_made = 0;
    static const int lens[] = { 1, 2, 7, 33, 120 };
    for (int pi = 0; pi < 6; pi++) {
        /* prompts: random, and repetitive ones (code-like edits repeat spans) */
        int32_t prompt[96];
        int np = 16 + 13 * pi;
        uint32_t r = 77u + (uint32_t)pi;
        for (int i = 0; i < np; i++) {
            r = r * 1664525u + 1013904223u;
            prompt[i] = pi % 2 ? prompt[i % 11] * (i >= 11) + (int32_t)((r >> 8) % (uint32_t)V) * (i < 11)
                               : (int32_t)((r >> 8) % (uint32_t)V);
        }
        for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++) {
            int32_t a[128], b[128];
            struct collect ca = { a, 0, 128 }, cb = { b, 0, 128 };
            REQUIRE(moeq_generate(e, s, prompt, np, lens[li], NULL, collect_cb, &ca, NULL, err, sizeof err) == 0);
            struct moeq_spec_opts o = { .lookup = 1, .draft_max = 1 + (int)li * 2, .ngram_min = 1, .ngram_max = 3 };
            struct moeq_spec_stats st;
            REQUIRE(moeq_generate(e, s, prompt, np, lens[li], &o, collect_cb, &cb, &st, err, sizeof err) == 0);
            CHECKF(ca.n == cb.n, "prompt %d length %d: %d tokens plain, %d speculative", pi, lens[li], ca.n, cb.n);
            CHECKF(!memcmp(a, b, (size_t)ca.n * sizeof *a), "prompt %d length %d: tokens differ", pi, lens[li]);
            total_accepted += st.accepted;
            total_steps += st.steps;
            total_made += cb.n;
        }
    }
    printf("  %d tokens in %d verification steps, %d drafted tokens accepted\n", total_made, total_steps, total_accepted);
    CHECK(total_accepted > 0);   /* the repetitive prompts must be drafted from */
    moeq_session_free(s);
    moeq_engine_close(e);
}

TEST(run_lookup_prints_the_plain_greedy_text)
{
    const char *m = test_synth_model("run.gguf", NULL);
    char *a = NULL, *b = NULL, *c = NULL;
    const char *p = "the cat the cat the dog the cat the";
    CHECK(test_run(&a, "%s run -m '%s' -p '%s' -n 48 --temp 0 -t 2 2>/dev/null", test_moeq_bin(), m, p) == 0);
    CHECK(test_run(&b, "%s run -m '%s' -p '%s' -n 48 --temp 0 --lookup --draft-max 5 -t 2 2>/dev/null",
                   test_moeq_bin(), m, p) == 0);
    CHECKF(a && b && !strcmp(a, b), "plain '%s' / lookup '%s'", a ? a : "", b ? b : "");
    free(a); free(b);
    /* a context that fills: as many tokens as plain decoding (the last is
     * decided from the last position and never evaluated), and the notice */
    CHECK(test_run(&a, "%s run -m '%s' -p '%s' -n 100 -c 24 --temp 0 -t 2 2>/dev/null", test_moeq_bin(), m, p) == 0);
    CHECK(test_run(&b, "%s run -m '%s' -p '%s' -n 100 -c 24 --temp 0 --lookup -t 2 2>&1 >/dev/null | grep 'is full'",
                   test_moeq_bin(), m, p) == 0);
    free(b);
    CHECK(test_run(&b, "%s run -m '%s' -p '%s' -n 100 -c 24 --temp 0 --lookup -t 2 2>/dev/null", test_moeq_bin(), m, p) == 0);
    CHECKF(a && b && !strcmp(a, b), "full context: plain '%s' / lookup '%s'", a ? a : "", b ? b : "");
    CHECK(test_run(&c, "%s run -m '%s' --lookup", test_moeq_bin(), m) == 2);   /* needs a prompt */
    CHECK(c && strstr(c, "needs a prompt"));
    free(a); free(b); free(c);
    /* at a temperature: the same seed gives the same text, and it is text */
    CHECK(test_run(&a, "%s run -m '%s' -p '%s' -n 32 --temp 0.8 --seed 7 --lookup -t 2 2>/dev/null",
                   test_moeq_bin(), m, p) == 0);
    CHECK(test_run(&b, "%s run -m '%s' -p '%s' -n 32 --temp 0.8 --seed 7 --lookup -t 2 2>/dev/null",
                   test_moeq_bin(), m, p) == 0);
    CHECKF(a && b && !strcmp(a, b) && strlen(a) > strlen(p), "'%s' / '%s'", a ? a : "", b ? b : "");
    free(a); free(b);
}

/* Draws of moeq_sample_verify with draft d against the target p (the
 * softmax of the filtered logits at the temperature): the chi-square
 * statistic over the vocabulary, and the acceptance rate. */
static double verify_chi2(struct moeq_sampler *sp, const float *l, const double *p, int V, int32_t d, int trials,
                          double *acc_rate)
{
    int count[16] = { 0 }, acc_n = 0;
    for (int t = 0; t < trials; t++) {
        int acc;
        int32_t tok = moeq_sample_verify(sp, l, V, NULL, 0, d, &acc);
        REQUIRE(tok >= 0 && tok < V);
        REQUIRE(!acc || tok == d);
        count[tok]++;
        acc_n += acc;
    }
    double chi2 = 0;
    for (int i = 0; i < V; i++) {
        double e = p[i] * trials;
        if (e == 0) { CHECKF(count[i] == 0, "token %d has p 0 but came %d times", i, count[i]); continue; }
        chi2 += (count[i] - e) * (count[i] - e) / e;
    }
    *acc_rate = (double)acc_n / trials;
    return chi2;
}

TEST(speculative_sampling_keeps_the_distribution)
{
    enum { V = 6, TRIALS = 200000 };
    const float l[V] = { 2.0f, 1.5f, 0.3f, -0.5f, 1.0f, -2.0f };
    struct { float temp; int top_k; } cfg[] = { { 0.8f, 0 }, { 1.3f, 3 } };
    for (size_t c = 0; c < sizeof cfg / sizeof cfg[0]; c++) {
        /* the target: top-k by logit, then softmax at the temperature */
        double p[V] = { 0 }, sum = 0;
        for (int i = 0; i < V; i++) {
            int rank = 0;
            for (int j = 0; j < V; j++) rank += l[j] > l[i];
            if (cfg[c].top_k && rank >= cfg[c].top_k) continue;
            p[i] = exp(l[i] / cfg[c].temp);
            sum += p[i];
        }
        for (int i = 0; i < V; i++) p[i] /= sum;
        for (int32_t d = 0; d < V; d++) {
            struct moeq_sampler sp = { .temp = cfg[c].temp, .top_k = cfg[c].top_k, .top_p = 1, .rng = 1234 + (uint64_t)d };
            double acc;
            double chi2 = verify_chi2(&sp, l, p, V, d, TRIALS, &acc);
            /* 5 degrees of freedom: 99.99% of chi-square values lie below 25.7 */
            CHECKF(chi2 < 25.7, "temp %.1f top-k %d draft %d: chi-square %.1f", cfg[c].temp, cfg[c].top_k, d, chi2);
            double sd = sqrt(p[d] * (1 - p[d]) / TRIALS);
            CHECKF(fabs(acc - p[d]) <= 5 * sd + 1e-12, "draft %d accepted %.4f of the time, p %.4f", d, acc, p[d]);
            moeq_sampler_free(&sp);
        }
    }
    /* greedy: the draft stands exactly when it is the argmax */
    struct moeq_sampler g = { 0 };
    int acc;
    CHECK(moeq_sample_verify(&g, l, V, NULL, 0, 0, &acc) == 0 && acc == 1);
    CHECK(moeq_sample_verify(&g, l, V, NULL, 0, 4, &acc) == 0 && acc == 0);
}

TEST(speculative_sampling_on_a_model)
{
    const char *path = test_synth_model("spec_t.gguf", "--layers 2 --vocab 512 --ctx 512");
    struct moeq_engine_params ep = { .model_path = path, .n_threads = 2, .n_ctx = 512, .n_seq = 1, .n_batch = 64 };
    char err[256];
    moeq_engine *e = moeq_engine_open(&ep, err, sizeof err);
    REQUIREF(e, "%s", err);
    moeq_session *s = moeq_session_new(e, err, sizeof err);
    REQUIRE(s);
    int32_t prompt[64];
    for (int i = 0; i < 64; i++) prompt[i] = 20 + (i % 9) * 7;   /* a repeating span: drafts exist */
    int32_t a[100], b[100];
    struct moeq_sampler sa = { .temp = 0.7f, .rng = 99, .repeat_penalty = 1.1f, .repeat_last_n = 64 };
    struct moeq_sampler sb = sa;
    struct collect ca = { a, 0, 100 }, cb = { b, 0, 100 };
    struct moeq_spec_opts o = { .lookup = 1, .draft_max = 6, .sampler = &sa };
    struct moeq_spec_stats st;
    REQUIRE(moeq_generate(e, s, prompt, 64, 80, &o, collect_cb, &ca, &st, err, sizeof err) == 0);
    o.sampler = &sb;
    REQUIRE(moeq_generate(e, s, prompt, 64, 80, &o, collect_cb, &cb, NULL, err, sizeof err) == 0);
    CHECKF(ca.n == cb.n && !memcmp(a, b, (size_t)ca.n * sizeof *a), "same seed, different tokens");
    CHECK(ca.n > 0);
    for (int i = 0; i < ca.n; i++) CHECK(a[i] >= 0 && a[i] < moeq_engine_info(e)->n_vocab);
    printf("  %d tokens, %d steps, %d of %d drafted accepted\n", ca.n, st.steps, st.accepted, st.drafted);
    CHECK(st.drafted > 0);
    moeq_sampler_free(&sa);
    moeq_sampler_free(&sb);
    moeq_session_free(s);
    moeq_engine_close(e);
}

/* Drafts from a draft model: greedy tokens equal plain decoding's, with the
 * model itself as its own draft every drafted token stands, and another
 * model of the same vocabulary (other weights) changes no token either. */
TEST(speculative_draft_model_equals_plain)
{
    const char *path = test_synth_model("spec_m.gguf", "--layers 2 --vocab 512 --ctx 512");
    const char *other = test_synth_model("spec_d.gguf", "--layers 1 --vocab 512 --ctx 512 --seed 5");
    char err[256];
    struct moeq_engine_params p = { .model_path = path, .n_threads = 2, .n_ctx = 512, .n_seq = 1, .n_batch = 64 };
    moeq_engine *e = moeq_engine_open(&p, err, sizeof err);
    REQUIREF(e, "%s", err);
    moeq_session *s = moeq_session_new(e, err, sizeof err);
    REQUIRE(s);
    const char *drafts[2] = { path, other };
    for (int di = 0; di < 2; di++) {
        struct moeq_engine_params dp = p;
        dp.model_path = drafts[di];
        moeq_engine *de = moeq_engine_open(&dp, err, sizeof err);
        REQUIREF(de, "%s", err);
        moeq_session *ds = moeq_session_new(de, err, sizeof err);
        REQUIRE(ds);
        for (int pi = 0; pi < 3; pi++) {
            int32_t prompt[40];
            for (int i = 0; i < 40; i++) prompt[i] = (int32_t)((i * 37 + pi * 101) % 500);
            int32_t a[64], b[64];
            struct collect ca = { a, 0, 64 }, cb = { b, 0, 64 };
            REQUIRE(moeq_generate(e, s, prompt, 40, 50, NULL, collect_cb, &ca, NULL, err, sizeof err) == 0);
            struct moeq_spec_opts o = { .draft = ds, .draft_max = 3 + pi };
            struct moeq_spec_stats st;
            REQUIRE(moeq_generate(e, s, prompt, 40, 50, &o, collect_cb, &cb, &st, err, sizeof err) == 0);
            CHECKF(ca.n == cb.n && !memcmp(a, b, (size_t)ca.n * sizeof *a), "draft %d prompt %d: tokens differ",
                   di, pi);
            CHECK(st.drafted > 0);
            if (di == 0) CHECKF(st.accepted == st.drafted, "self-draft: %d of %d accepted", st.accepted, st.drafted);
        }
        moeq_session_free(ds);
        moeq_engine_close(de);
    }
    moeq_session_free(s);
    moeq_engine_close(e);
}

TEST(run_draft_model_cli)
{
    const char *m = test_synth_model("run_md.gguf", NULL);
    const char *bad = test_synth_model("run_md_bad.gguf", "--vocab 600");
    char *a = NULL, *b = NULL, *c = NULL;
    const char *p = "the cat the dog";
    CHECK(test_run(&a, "%s run -m '%s' -p '%s' -n 24 --temp 0 -t 2 2>/dev/null", test_moeq_bin(), m, p) == 0);
    CHECK(test_run(&b, "%s run -m '%s' -md '%s' -p '%s' -n 24 --temp 0 -t 2 2>/dev/null", test_moeq_bin(), m, m, p) == 0);
    CHECKF(a && b && !strcmp(a, b), "plain '%s' / -md '%s'", a ? a : "", b ? b : "");
    CHECK(test_run(&c, "%s run -m '%s' -md '%s' -p '%s' -n 4 -t 2", test_moeq_bin(), m, bad, p) == 1);
    CHECKF(c && strstr(c, "vocabulary"), "%s", c ? c : "");
    free(a); free(b); free(c);
    CHECK(test_run(NULL, "%s run -m '%s' -md '%s' --lookup -p x", test_moeq_bin(), m, m) == 2);
}
