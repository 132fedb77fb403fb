/*
 * runner.c: runs every registered test (or those whose name contains one of
 * the arguments), each in a forked child with a timeout, and ends with one
 * line "N passed, N failed, N skipped". More tests than its table holds, or
 * an argument that selects no test, is an error before anything runs: a
 * test is never dropped without a word.
 */
#include "test.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_TESTS 1024
struct test_entry { const char *name, *file; test_fn fn; };
static struct test_entry tests[MAX_TESTS];
static int n_tests, n_dropped;
static int failures_in_child;
static char tmpdir_buf[256];

enum { EXIT_PASS = 0, EXIT_FAIL = 1, EXIT_SKIP = 77 };

void test_register(const char *name, const char *file, test_fn fn)
{
    if (n_tests < MAX_TESTS) tests[n_tests++] = (struct test_entry){ name, file, fn };
    else n_dropped++;
}

void test_fail(const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "    %s:%d: ", file, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    failures_in_child++;
}

void test_end_now(void) { fflush(NULL); _exit(failures_in_child ? EXIT_FAIL : EXIT_PASS); }

void test_skip(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "    skip: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    fflush(NULL);
    _exit(failures_in_child ? EXIT_FAIL : EXIT_SKIP);
}

const char *test_tmpdir(void) { return tmpdir_buf; }

static void rm_rf(const char *path)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", path);
    if (system(cmd) != 0) fprintf(stderr, "runner: could not remove %s\n", path);
}

static int by_name(const void *a, const void *b)
{
    const struct test_entry *x = a, *y = b;
    int c = strcmp(x->file, y->file);
    return c ? c : strcmp(x->name, y->name);
}

int main(int argc, char **argv)
{
    const char *suite = getenv("MOEQ_SUITE") ? getenv("MOEQ_SUITE") : "tests";
    int timeout = getenv("MOEQ_TEST_TIMEOUT") ? atoi(getenv("MOEQ_TEST_TIMEOUT")) : 300;
    int passed = 0, failed = 0, skipped = 0;
    if (n_dropped) {
        fprintf(stderr, "runner: %d tests registered, the table holds %d (raise MAX_TESTS)\n",
                n_tests + n_dropped, MAX_TESTS);
        return 2;
    }
    for (int a = 1; a < argc; a++) {
        int hit = 0;
        for (int i = 0; i < n_tests && !hit; i++) hit = strstr(tests[i].name, argv[a]) != NULL;
        if (!hit) { fprintf(stderr, "runner: no test name contains '%s'\n", argv[a]); return 2; }
    }
    qsort(tests, (size_t)n_tests, sizeof tests[0], by_name);
    for (int i = 0; i < n_tests; i++) {
        int selected = argc < 2;
        for (int a = 1; a < argc; a++)
            if (strstr(tests[i].name, argv[a])) selected = 1;
        if (!selected) continue;
        snprintf(tmpdir_buf, sizeof tmpdir_buf, "/tmp/moeq-test-%d-%s", (int)getpid(), tests[i].name);
        rm_rf(tmpdir_buf);
        if (mkdir(tmpdir_buf, 0700) != 0) { perror(tmpdir_buf); return 2; }
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        fflush(NULL);
        pid_t pid = fork();
        if (pid == 0) {
            alarm((unsigned)timeout);
            tests[i].fn();
            test_end_now();
        }
        int status = 0;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double secs = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
        const char *verdict;
        if (WIFEXITED(status) && WEXITSTATUS(status) == EXIT_PASS) { verdict = "ok"; passed++; }
        else if (WIFEXITED(status) && WEXITSTATUS(status) == EXIT_SKIP) { verdict = "skip"; skipped++; }
        else {
            verdict = "FAIL"; failed++;
            if (WIFSIGNALED(status))
                fprintf(stderr, "    killed by signal %d%s\n", WTERMSIG(status),
                        WTERMSIG(status) == SIGALRM ? " (timeout)" : "");
        }
        printf("[%s] %-4s %s (%.2fs)\n", suite, verdict, tests[i].name, secs);
        fflush(stdout);
        rm_rf(tmpdir_buf);
    }
    printf("%s: %d passed, %d failed, %d skipped\n", suite, passed, failed, skipped);
    return failed ? 1 : 0;
}
