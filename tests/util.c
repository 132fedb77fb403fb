/*
 * util.c: helpers shared by the test files (paths, temporary files,
 * running the moeq binary, reading files).
 */
#include "test.h"

#include <stdarg.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

const char *test_shared_dir(void)
{
    static char buf[4096];
    static int done;
    if (!done) {
        done = 1;
        const char *env = getenv("MOEQ_SHARED");
        snprintf(buf, sizeof buf, "%s", env && *env ? env : "../shared");
        struct stat st;
        if (stat(buf, &st) != 0 || !S_ISDIR(st.st_mode)) buf[0] = 0;
    }
    return buf[0] ? buf : NULL;
}

const char *test_shared_path(const char *rel)
{
    static char ring[8][4096];
    static int k;
    const char *dir = test_shared_dir();
    if (!dir) SKIP("../shared is absent");
    char *p = ring[k++ % 8];
    snprintf(p, 4096, "%s/%s", dir, rel);
    if (access(p, R_OK) != 0) SKIP("%s is absent", p);
    return p;
}

const char *test_tmp(const char *name)
{
    static char ring[16][4096];
    static int k;
    char *p = ring[k++ % 16];
    snprintf(p, 4096, "%s/%s", test_tmpdir(), name);
    return p;
}

const char *test_moeq_bin(void)
{
    const char *b = getenv("MOEQ_BIN");
    return b && *b ? b : "./moeq";
}

int test_run(char **out, const char *fmt, ...)
{
    char cmd[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    char full[8300];
    snprintf(full, sizeof full, "(%s) 2>&1", cmd);
    fflush(NULL);
    FILE *p = popen(full, "r");
    if (!p) return -1;
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    size_t r;
    while (buf && (r = fread(buf + len, 1, cap - len - 1, p)) > 0) {
        len += r;
        if (cap - len < 2) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) break;
            buf = nb; cap *= 2;
        }
    }
    if (buf) buf[len] = 0;
    int st = pclose(p);
    if (out) *out = buf; else free(buf);
    if (WIFEXITED(st)) return WEXITSTATUS(st);
    if (WIFSIGNALED(st)) return 128 + WTERMSIG(st);
    return -1;
}

void *test_read_file(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    if (fseek(f, 0, SEEK_END) != 0) { fclose(f); return NULL; }
    long sz = ftell(f);
    if (sz < 0) { fclose(f); return NULL; }
    rewind(f);
    char *buf = malloc((size_t)sz + 1);
    if (buf && fread(buf, 1, (size_t)sz, f) != (size_t)sz) { free(buf); buf = NULL; }
    fclose(f);
    if (buf) { buf[sz] = 0; if (n) *n = (size_t)sz; }
    return buf;
}

int test_long(void) { const char *e = getenv("MOEQ_LONG"); return e && *e && *e != '0'; }

int test_sanitized(void)
{
    const char *s = getenv("MOEQ_SUITE");
    return s && strcmp(s, "asan") == 0;
}
