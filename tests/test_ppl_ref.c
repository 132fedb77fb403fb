/* Perplexity on ../shared's tiny-a equals the reference implementation's.
 * make test: the 20-chunk references (F16 and the reference asym file);
 * make check-long: the 200-chunk numbers of ref/README.md for all four
 * files. Tolerance 0.5%, as the issue asks. */
#include "test.h"

static double run_ppl(const char *model, int chunks)
{
    const char *text = test_shared_path("data/text/wiki.test.raw");
    char *o = NULL;
    int rc = test_run(&o, "%s perplexity -m %s -f %s -c 512 --chunks %d -t 2", test_moeq_bin(), model, text, chunks);
    REQUIREF(rc == 0, "%s", o);
    const char *f = strstr(o, "Final estimate: PPL = ");
    REQUIREF(f != NULL, "%s", o);
    double v = atof(f + 22);
    free(o);
    return v;
}

/* The reference files end with the final estimate on a line of its own. */
static double ref_value(const char *rel)
{
    size_t n;
    char *s = test_read_file(test_shared_path(rel), &n);
    REQUIRE(s != NULL && n > 0);
    while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == ' ')) s[--n] = 0;
    char *last = strrchr(s, '\n');
    double v = atof(last ? last + 1 : s);
    free(s);
    return v;
}

static void check_close(const char *what, double got, double want)
{
    CHECKF(want > 0 && fabs(got / want - 1) <= 0.005, "%s: PPL %.4f, reference %.4f (%.3f%%)", what, got,
           want, 100 * (got / want - 1));
}

TEST(ppl_tiny_a_matches_reference_20_chunks)
{
    if (test_sanitized()) SKIP("40k-token evaluations: checked by the release suite");
    check_close("tiny-a-f16 20 chunks", run_ppl(test_shared_path("models/tiny-a/tiny-a-f16.gguf"), 20),
                ref_value("models/tiny-a/ref/ppl20-f16.txt"));
    check_close("tiny-a-asym 20 chunks", run_ppl(test_shared_path("models/tiny-a/tiny-a-asym.gguf"), 20),
                ref_value("models/tiny-a/ref/ppl20-asym.txt"));
}

TEST(ppl_tiny_a_matches_reference_200_chunks)
{
    if (!test_long()) SKIP("200-chunk runs: make check-long");
    static const struct { const char *file; double ppl; } ref[] = {
        { "models/tiny-a/tiny-a-f16.gguf", 169.4878 },
        { "models/tiny-a/tiny-a-q8_0.gguf", 169.5810 },
        { "models/tiny-a/tiny-a-q4_k_m.gguf", 169.0231 },
        { "models/tiny-a/tiny-a-asym.gguf", 170.7064 },
    };
    for (size_t i = 0; i < sizeof ref / sizeof ref[0]; i++)
        check_close(ref[i].file, run_ppl(test_shared_path(ref[i].file), 200), ref[i].ppl);
}
