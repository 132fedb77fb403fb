/*
 * test.h: the one test runner's registration and check macros.
 *
 * TEST(name) { ... } registers a test through a constructor, so test files
 * never edit a shared table. CHECK records a failure and goes on; REQUIRE
 * ends the test; SKIP ends it as skipped (used when ../shared is absent).
 * Each test runs in its own forked process with a time limit, so a crash
 * or hang is one failed test, not a dead suite.
 */
#ifndef MOEQ_TEST_H
#define MOEQ_TEST_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <sys/types.h>

typedef void (*test_fn)(void);
void test_register(const char *name, const char *file, test_fn fn);
void test_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void test_skip(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
void test_end_now(void) __attribute__((noreturn));

#define TEST(name)                                                        \
    static void test_##name(void);                                        \
    __attribute__((constructor)) static void test_reg_##name(void)        \
    { test_register(#name, __FILE__, test_##name); }                      \
    static void test_##name(void)

#define CHECK(cond) do { if (!(cond)) test_fail(__FILE__, __LINE__, "CHECK(%s)", #cond); } while (0)
#define CHECKF(cond, ...) do { if (!(cond)) test_fail(__FILE__, __LINE__, __VA_ARGS__); } while (0)
#define REQUIRE(cond) do { if (!(cond)) { test_fail(__FILE__, __LINE__, "REQUIRE(%s)", #cond); test_end_now(); } } while (0)
#define REQUIREF(cond, ...) do { if (!(cond)) { test_fail(__FILE__, __LINE__, __VA_ARGS__); test_end_now(); } } while (0)
#define SKIP(...) test_skip(__VA_ARGS__)

/* Helpers shared by tests (tests/util.c). */
/* ../shared path (MOEQ_SHARED or ../shared beside the repo), NULL if absent. */
const char *test_shared_dir(void);
/* Path under ../shared, or SKIP when ../shared or the file is absent. */
const char *test_shared_path(const char *rel);
/* A fresh temporary directory for this test (removed by the runner). */
const char *test_tmpdir(void);
/* Path inside the test's temporary directory (static buffer ring). */
const char *test_tmp(const char *name);
/* The moeq binary under test (MOEQ_BIN, default ./moeq). */
const char *test_moeq_bin(void);
/* The model `moeq synth ARGS` (NULL: none) writes to test_tmp(name), whose
 * path it returns; a failed synth ends the test. */
const char *test_synth_model(const char *name, const char *args);
/* The tiny preset with 4 experts (2 used), written by the synth library
 * (no binary) to test_tmp(name); its path, or the test ends failed. */
const char *test_synth_moe_lib(const char *name);
/* The KL-divergence setup of the perplexity tests: the synth model (*m,
 * s.gguf), its asym-2bitexp quantization (*q, q.gguf), and the base run of
 * *m over data/calibration.txt (-c 64 --chunks 4, then extra) that saves
 * its logits to the returned temporary file; *out gets that run's output
 * (malloc'd). A failed run ends the test. */
const char *test_kld_base(const char **m, const char **q, const char *extra, char **out);
/* Run a shell command, capturing stdout+stderr into *out (malloc'd, may be
 * NULL); returns the exit status (or 128+signal). */
int test_run(char **out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* test_run that expects exit status 0 (a failed check naming the command
 * and its output otherwise); returns the output (malloc'd, never NULL). */
char *test_run_ok(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Read a whole file (malloc'd) or NULL; *n receives its size. */
void *test_read_file(const char *path, size_t *n);
/* Whether a slow test should run (MOEQ_LONG set). */
int test_long(void);
/* Whether this is the sanitizer suite (MOEQ_SUITE=asan): whole-model runs
 * that take minutes there are checked by the release suite instead. */
int test_sanitized(void);

/* Heap allocation calls (malloc, calloc, realloc, free, the aligned
 * allocators; all threads) between start and stop (tests/alloc_count.c).
 * test_alloc_counting() is 0 where they cannot be counted (under ASan,
 * which owns malloc): stop then returns -1. */
int  test_alloc_counting(void);
void test_alloc_count_start(void);
long test_alloc_count_stop(void);

/* The directory of an npm package installed once into build/npm (ignored
 * by git; run from the repo root), e.g. "openai" or "@langchain/openai"
 * (static buffer). SKIPs the test without node, a registry, or the
 * script (a path under tests/) that will use it. */
const char *test_npm_package(const char *pkg, const char *script);

/* HTTP helpers for the server tests (curl over loopback). */
/* Whether curl is there (the HTTP tests skip without it). */
int test_have_curl(void);
/* One request; the body (if any) goes through a file, so no shell quoting.
 * Returns the HTTP status (0 if curl failed), the response body in *out. */
int test_http(int port, const char *method, const char *path, const char *body, const char *extra,
              int timeout_s, char **out);
/* The concatenated texts (completions) or deltas (chat) of an event
 * stream's data events (malloc'd); *done (if not NULL): whether it ended
 * with [DONE] after its last data event. */
char *test_sse_text(const char *sse, int *done);
/* n POSTs to path at once (background curls, -N); out[i] receives response
 * i's body (malloc'd, NULL if none). Returns 0 when every curl succeeded. */
int test_http_concurrent(int port, const char *path, const char *const *bodies, int n, int timeout_s,
                         char **out);
/* A request the server must refuse: POSTing body to path gives status and
 * an error object whose message holds needle. */
struct test_bad_request {
    const char *path, *body;
    int         status;
    const char *needle;
};
/* POST each of the n cases (extra: more curl arguments, e.g. the key) and
 * CHECK its status and error message. */
void test_http_bad_requests(int port, const struct test_bad_request *cases, size_t n, const char *extra,
                            int timeout_s);
/* The refusals every server gives whatever its model and limits (bad JSON,
 * roles, types and values, unknown endpoints): the in-process server tests
 * and `moeq serve` end to end both run them. */
extern const struct test_bad_request test_bad_requests_common[];
extern const size_t test_n_bad_requests_common;
/* The size refusals, POSTed to /v1/completions: a prompt of prompt_bytes
 * ("hello " repeated, more than the server's context holds) is a 400
 * naming the context, a body of body_bytes (over its body limit) a 413. */
void test_http_too_big(int port, size_t prompt_bytes, size_t body_bytes, const char *extra, int timeout_s);
/* A /metrics value, or -1 when absent or the request fails. */
double test_http_metric(int port, const char *name, const char *auth);
/* Wait until that /metrics value equals value: a state, not a time (the
 * runner's time limit ends a wait that never comes). */
void test_wait_metric(int port, const char *name, double value, const char *auth);

/* `moeq serve` as a child process (tests/test_serve.c, test_server_slow.c). */
struct test_srv {
    pid_t pid;
    int   port;
    char  log[4096];
    char  model[4096];
};
/* A tiny model: synthesized when the binary can, else the shared one
 * (SKIP when neither is there). */
const char *test_tiny_model(void);
/* Monotonic seconds. */
double test_now(void);
/* Start `moeq serve -m model --host 127.0.0.1 --port 0 -t 2 args`; wait
 * until it listens and the model is loaded (health 200). The child gets
 * PR_SET_PDEATHSIG, so a test that dies early does not leave it running. */
void test_serve_start(struct test_srv *s, const char *model, const char *args);
/* SIGTERM and wait; the exit status (or 128+signal, -1 if it had to be
 * killed). */
int test_serve_stop(struct test_srv *s);

#endif
