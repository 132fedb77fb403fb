/*
 * test_fuzz_corpus.c: the fuzz harnesses of tests/fuzz/ as tests.
 *
 * In `make test` every seed of every harness (tests/fuzz/corpus_NAME, and
 * tests/corpus for gguf) is replayed through the harness's own checks,
 * compiled in here without libFuzzer (MOEQ_FUZZ_REPLAY), in both suites: an
 * input that once broke a parser stays a regression test under ASan and
 * UBSan. Under make check-long each harness also fuzzes for a bounded time
 * (`make fuzz-NAME`, MOEQ_FUZZ_SECONDS each), and the planted finding of
 * fuzz_selftest.c must make `make fuzz-selftest` fail: a report that does
 * not stop the run would let the fuzzer find things and still pass.
 */
#include "test.h"

#define MOEQ_FUZZ_REPLAY
#include "fuzz/fuzz_callcon.c"
#include "fuzz/fuzz_gguf.c"
#include "fuzz/fuzz_hessian.c"
#include "fuzz/fuzz_imatrix.c"
#include "fuzz/fuzz_server.c"
#include "fuzz/fuzz_tokenizer.c"

#include <glob.h>

/* Every file of dir through one(); the number of files. */
static int replay_dir(const char *dir, int (*one)(const uint8_t *, size_t))
{
    char pat[256];
    snprintf(pat, sizeof pat, "%s/*", dir);
    glob_t g;
    if (glob(pat, 0, NULL, &g) != 0) return 0;
    int n = 0;
    for (size_t i = 0; i < g.gl_pathc; i++) {
        size_t len = 0;
        uint8_t *p = test_read_file(g.gl_pathv[i], &len);
        REQUIREF(p, "cannot read %s", g.gl_pathv[i]);
        /* exact-size copy: ASan flags any read past the end */
        uint8_t *q = malloc(len ? len : 1);
        REQUIRE(q);
        memcpy(q, p, len);
        fuzz_input = g.gl_pathv[i];
        CHECK(one(q, len) == 0);
        free(q);
        free(p);
        n++;
    }
    globfree(&g);
    return n;
}

TEST(fuzz_corpus_gguf)
{
    CHECK(replay_dir("tests/fuzz/corpus_gguf", fuzz_one_gguf) >= 2);
    CHECK(replay_dir("tests/corpus", fuzz_one_gguf) >= 90);
}

TEST(fuzz_corpus_callcon) { CHECK(replay_dir("tests/fuzz/corpus_callcon", fuzz_one_callcon) >= 4); }
TEST(fuzz_corpus_hessian) { CHECK(replay_dir("tests/fuzz/corpus_hessian", fuzz_one_hessian) >= 3); }
TEST(fuzz_corpus_imatrix) { CHECK(replay_dir("tests/fuzz/corpus_imatrix", fuzz_one_imatrix) >= 3); }
TEST(fuzz_corpus_tokenizer) { CHECK(replay_dir("tests/fuzz/corpus_tokenizer", fuzz_one_tokenizer) >= 3); }
TEST(fuzz_corpus_server) { CHECK(replay_dir("tests/fuzz/corpus_server", fuzz_one_server) >= 3); }

/* ------------------------------------------------------ make check-long */

/* `make fuzz-NAME` with the Makefile's own command line; its exit status. */
static int run_fuzz(const char *name, int seconds, char **out)
{
    return test_run(out, "env -u MAKEFLAGS -u MFLAGS nice make -s fuzz-%s FUZZ_SECONDS=%d 2>&1",
                    name, seconds);
}

static int fuzz_seconds(void)
{
    const char *e = getenv("MOEQ_FUZZ_SECONDS");
    return e && atoi(e) > 0 ? atoi(e) : 30;
}

static void fuzz_for_a_while(const char *name)
{
    if (!test_long()) SKIP("fuzzing runs in make check-long");
    char *out = NULL;
    int rc = run_fuzz(name, fuzz_seconds(), &out);
    const char *stats = out ? strstr(out, "stat::number_of_executed_units") : NULL;
    if (stats) fprintf(stderr, "    %s: %.*s\n", name, (int)strcspn(stats, "\n"), stats);
    CHECKF(rc == 0, "make fuzz-%s exited %d:\n%s", name, rc, out ? out : "");
    free(out);
}

TEST(fuzz_long_callcon) { fuzz_for_a_while("callcon"); }
TEST(fuzz_long_gguf) { fuzz_for_a_while("gguf"); }
TEST(fuzz_long_hessian) { fuzz_for_a_while("hessian"); }
TEST(fuzz_long_imatrix) { fuzz_for_a_while("imatrix"); }
TEST(fuzz_long_server) { fuzz_for_a_while("server"); }
TEST(fuzz_long_tokenizer) { fuzz_for_a_while("tokenizer"); }

TEST(fuzz_finding_fails_the_run)
{
    if (!test_long()) SKIP("fuzzing runs in make check-long");
    REQUIRE(test_run(NULL, "rm -f build/fuzz/selftest/crash-*") == 0);
    char *out = NULL;
    int rc = run_fuzz("selftest", 20, &out);
    CHECKF(rc != 0, "make fuzz-selftest passed over its planted finding:\n%s", out ? out : "");
    CHECKF(out && strstr(out, "runtime error: signed integer overflow"), "no UBSan report:\n%s",
           out ? out : "");
    free(out);
    glob_t g;
    CHECK(glob("build/fuzz/selftest/crash-*", 0, NULL, &g) == 0 && g.gl_pathc == 1);
    globfree(&g);
    /* the harness itself is sound: without the planted input it passes */
    CHECK(test_run(NULL, "build/fuzz/fuzz_selftest tests/fuzz/corpus_selftest/benign >/dev/null 2>&1") == 0);
}
