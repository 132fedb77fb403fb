/*
 * test_corpus.c: the crafted bad files of tests/corpus/. The corpus must
 * match its generator (tests/corpus/gen_corpus.c, included here), every
 * file must fail to open in-process with one "NAME: byte N: ..." line, and
 * `moeq info` on each must exit 1 with exactly one stderr line starting
 * "moeq: " and naming the file: never a crash, hang or sanitizer report.
 */
#include "test.h"
#include "gguf/gguf.h"
#include "corpus/gen_corpus.c"

#include <glob.h>

#define CORPUS_DIR "tests/corpus"

struct cmp_ctx { int n, bad; };

static int compare_file(void *ctx, const char *name, const gbuf *b)
{
    struct cmp_ctx *c = ctx;
    char path[512];
    snprintf(path, sizeof path, "%s/%s", CORPUS_DIR, name);
    size_t n = 0;
    void *p = test_read_file(path, &n);
    int same = p && n == b->n && (n == 0 || memcmp(p, b->p, n) == 0);
    CHECKF(same, "%s differs from its generator (rerun gen_corpus)", path);
    c->bad += !same;
    c->n++;
    free(p);
    return 0;
}

static int open_in_process(void *ctx, const char *name, const gbuf *b)
{
    struct cmp_ctx *c = ctx;
    /* exact-size copy: ASan flags any read past the end */
    uint8_t *p = malloc(b->n ? b->n : 1);
    if (b->n) memcpy(p, b->p, b->n);
    char err[512] = "";
    gguf_file *f = gguf_open_buffer(p, b->n, name, err, sizeof err);
    char want[160];
    snprintf(want, sizeof want, "%s: byte ", name);
    CHECKF(f == NULL, "%s opened", name);
    CHECKF(!strncmp(err, want, strlen(want)) && !strchr(err, '\n'), "%s: error '%s'", name, err);
    gguf_close(f);
    free(p);
    c->n++;
    return 0;
}

TEST(corpus_matches_generator)
{
    struct cmp_ctx c = {0};
    corpus_generate(compare_file, &c);
    CHECK(c.n >= 90 && c.bad == 0);
    glob_t g;
    REQUIRE(glob(CORPUS_DIR "/*.gguf", 0, NULL, &g) == 0);
    CHECKF((int)g.gl_pathc == c.n, "%zu files in %s, generator makes %d", g.gl_pathc, CORPUS_DIR, c.n);
    globfree(&g);
}

TEST(corpus_rejected_in_process)
{
    struct cmp_ctx c = {0};
    corpus_generate(open_in_process, &c);
    CHECK(c.n >= 90);
}

TEST(corpus_moeq_info_one_line_errors)
{
    glob_t g;
    REQUIRE(glob(CORPUS_DIR "/*.gguf", 0, NULL, &g) == 0);
    const char *errf = test_tmp("stderr.txt");
    for (size_t i = 0; i < g.gl_pathc; i++) {
        const char *path = g.gl_pathv[i];
        int rc = test_run(NULL, "%s info '%s' >/dev/null 2>'%s'", test_moeq_bin(), path, errf);
        size_t n = 0;
        char *e = test_read_file(errf, &n);
        REQUIRE(e);
        int lines = 0;
        for (size_t k = 0; k < n; k++) lines += e[k] == '\n';
        char want[600];
        snprintf(want, sizeof want, "moeq: %s: ", path);
        CHECKF(rc == 1 && lines == 1 && !strncmp(e, want, strlen(want)),
               "%s: exit %d, %d lines: %.300s", path, rc, lines, e);
        free(e);
    }
    CHECK(g.gl_pathc >= 90);
    globfree(&g);
}
