/*
 * test_speculate.c: prompt-lookup speculative decoding (src/engine/
 * speculate.c) gives exactly the tokens of plain greedy decoding, for many
 * prompts and lengths, on a model `moeq synth` writes; and the drafter
 * proposes what followed the latest earlier match of the longest suffix.
 */
#include "test.h"
#include "engine/engine.h"

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
            REQUIRE(moeq_generate_greedy(e, s, prompt, np, lens[li], NULL, collect_cb, &ca, NULL, err, sizeof err) == 0);
            struct moeq_spec_opts o = { .lookup = 1, .draft_max = 1 + (int)li * 2, .ngram_min = 1, .ngram_max = 3 };
            struct moeq_spec_stats st;
            REQUIRE(moeq_generate_greedy(e, s, prompt, np, lens[li], &o, collect_cb, &cb, &st, err, sizeof err) == 0);
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
    CHECK(test_run(&c, "%s run -m '%s' -p x --lookup", test_moeq_bin(), m) == 2);   /* needs --temp 0 */
    CHECK(c && strstr(c, "--temp 0"));
    free(a); free(b); free(c);
}
