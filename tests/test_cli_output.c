/*
 * test_cli_output.c: output for logs and scripts: progress on a stderr
 * that is not a terminal is one line per step (no carriage returns), -q
 * silences it, --log-level is parsed the same way by every command.
 */
#include "test.h"

#include <stdlib.h>
#include <string.h>

static int count_lines(const char *s, const char *needle)
{
    int n = 0;
    for (const char *p = s; (p = strstr(p, needle)) != NULL; p++) n++;
    return n;
}

/* Runs `moeq ARGS 2> log` (ARGS after the binary), checks that it exits 0,
 * and returns what it wrote to stderr. */
static char *stderr_of(const char *log, const char *args)
{
    char *o = NULL;
    int rc = test_run(&o, "%s %s 2> %s", test_moeq_bin(), args, log);
    CHECKF(rc == 0, "%s: %s", args, o ? o : "");
    free(o);
    size_t n = 0;
    char *e = test_read_file(log, &n);
    REQUIREF(e != NULL, "%s: no log", args);
    return e;
}

TEST(cli_progress_logs_one_line_per_step)
{
    const char *m = test_synth_model("p.gguf", "--layers 1 --vocab 512 --experts 4 --ctx 256");
    const char *txt = test_tmp("p.txt");
    REQUIRE(test_run(NULL, "for i in $(seq 1 400); do echo \"word$i and the other words\"; done > %s", txt) == 0);
    const char *log = test_tmp("p.log");
    const char *q = test_tmp("p-q8.gguf");
    char args[3][1024];
    snprintf(args[0], sizeof args[0], "perplexity -m %s -f %s -c 32 --chunks 3 -t 1", m, txt);
    snprintf(args[1], sizeof args[1], "quantize %s %s Q8_0 1", m, q);
    char *e = stderr_of(log, args[0]);
    CHECKF(!strchr(e, '\r'), "carriage return in a log: %s", e);
    CHECKF(count_lines(e, "perplexity: chunk ") == 3, "not one line per chunk: %s", e);
    CHECK(strstr(e, "perplexity: chunk 3/3") != NULL);
    free(e);
    /* quantize: one line per tensor */
    e = stderr_of(log, args[1]);
    CHECK(!strchr(e, '\r') && count_lines(e, "quantize: [") >= 3);
    free(e);
    /* -q or --log-level error: no progress, no info */
    snprintf(args[2], sizeof args[2], "perplexity -q -m %s -f %s -c 32 --chunks 2 -t 1", m, txt);
    e = stderr_of(log, args[2]);
    CHECKF(!*e, "-q left: %s", e);
    free(e);
    snprintf(args[2], sizeof args[2], "quantize --log-level error %s %s Q8_0 1", m, q);
    e = stderr_of(log, args[2]);
    CHECKF(!*e, "--log-level error left: %s", e);
    free(e);
}

TEST(cli_log_level_parsing)
{
    const char *m = test_synth_model("l.gguf", "--layers 1 --vocab 512 --experts 4 --ctx 256");
    const char *cmds[] = { "perplexity -f /dev/null", "imatrix -f /dev/null", "bench", "quantize" };
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        char *o = NULL;
        int rc = test_run(&o, "%s %s --log-level loud -m %s", test_moeq_bin(), cmds[i], m);
        CHECKF(rc == 2 && o && strstr(o, "--log-level must be error, warn, info or debug"),
               "%s: rc %d: %s", cmds[i], rc, o ? o : "");
        free(o);
        rc = test_run(&o, "%s %s --log-level", test_moeq_bin(), cmds[i]);
        CHECKF(rc == 2, "%s: missing level: rc %d", cmds[i], rc);
        free(o);
    }
    char *o = NULL;
    int rc = test_run(&o, "%s bench -m %s -p 8 -n 2 -r 1 -t 1 --log-level debug -q", test_moeq_bin(), m);
    CHECKF(rc == 0 && o && strstr(o, "| pp8 |"), "bench: %s", o ? o : "");
    free(o);
    /* quiet never hides errors */
    rc = test_run(&o, "%s perplexity -q -m /nonexistent.gguf -f /dev/null", test_moeq_bin());
    CHECK(rc == 1 && o && strstr(o, "moeq: "));
    free(o);
}
