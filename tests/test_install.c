/*
 * test_install.c: `make install` into a temporary PREFIX (binary, man page,
 * bash completion, license), `moeq --version`, and the generated docs
 * naming every command and completing its flags.
 */
#include "test.h"

#include <stdlib.h>
#include <string.h>

TEST(version_prints_version_and_commit)
{
    char *out = NULL;
    int rc = test_run(&out, "%s --version", test_moeq_bin());
    REQUIREF(rc == 0, "%s", out ? out : "");
    char *want = test_read_file("VERSION", NULL);
    REQUIRE(want);
    want[strcspn(want, "\n")] = 0;
    char prefix[128];
    snprintf(prefix, sizeof prefix, "moeq %s (commit ", want);
    CHECKF(!strncmp(out, prefix, strlen(prefix)), "got '%s', want '%s...'", out, prefix);
    CHECK(strlen(out) > strlen(prefix) + 4);
    char *out2 = NULL;
    CHECK(test_run(&out2, "%s -v", test_moeq_bin()) == 0);
    CHECK(out2 && !strcmp(out, out2));
    free(out); free(out2); free(want);
}

TEST(make_install_into_prefix)
{
    if (test_sanitized()) SKIP("the release suite installs the release binary");
    const char *pfx = test_tmp("prefix");
    char *log = NULL;
    int rc = test_run(&log, "make -s install PREFIX='%s'", pfx);
    REQUIREF(rc == 0, "make install: %s", log ? log : "");
    free(log);
    static const char *const files[] = {
        "bin/moeq", "share/man/man1/moeq.1", "share/bash-completion/completions/moeq",
        "share/doc/moeq/LICENSE", "share/doc/moeq/README.md",
    };
    char path[4200];
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", pfx, files[i]);
        size_t n = 0;
        void *b = test_read_file(path, &n);
        CHECKF(b && n > 0, "%s missing or empty", path);
        free(b);
    }
    char *out = NULL;
    CHECK(test_run(&out, "'%s/bin/moeq' --version", pfx) == 0);
    CHECK(out && !strncmp(out, "moeq ", 5));
    free(out);

    /* The man page has a section per command the binary lists. */
    snprintf(path, sizeof path, "%s/share/man/man1/moeq.1", pfx);
    char *man = test_read_file(path, NULL);
    REQUIRE(man);
    static const char *const cmds[] = { "info", "dump", "quantize", "imatrix", "perplexity", "compare",
                                        "fit", "tokenize", "synth", "run", "bench", "kbench", "serve" };
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        char ss[64];
        snprintf(ss, sizeof ss, "\n.SS %s\n", cmds[i]);
        CHECKF(strstr(man, ss), "man page has no section for %s", cmds[i]);
    }
    free(man);
    if (test_run(NULL, "man -l '%s' >/dev/null 2>&1 || ! command -v man >/dev/null", path) != 0)
        test_fail(__FILE__, __LINE__, "man -l cannot format %s", path);

    /* The completion completes commands and a command's flags. */
    char *c1 = NULL, *c2 = NULL;
    snprintf(path, sizeof path, "%s/share/bash-completion/completions/moeq", pfx);
    rc = test_run(&c1, "bash -c 'source \"%s\"; COMP_WORDS=(moeq qu); COMP_CWORD=1; _moeq; echo \"${COMPREPLY[*]}\"'",
                  path);
    CHECKF(rc == 0 && c1 && !strcmp(c1, "quantize\n"), "command completion: '%s'", c1 ? c1 : "");
    rc = test_run(&c2, "bash -c 'source \"%s\"; COMP_WORDS=(moeq quantize --imat); COMP_CWORD=2; _moeq; "
                  "echo \"${COMPREPLY[*]}\"'", path);
    CHECKF(rc == 0 && c2 && !strcmp(c2, "--imatrix\n"), "flag completion: '%s'", c2 ? c2 : "");
    free(c1); free(c2);
}
