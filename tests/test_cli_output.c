/*
 * test_cli_output.c: output for logs and scripts: progress on a stderr
 * that is not a terminal is one line per step (no carriage returns), -q
 * silences it, --log-level is parsed the same way by every command, and
 * --json (perplexity, quantize) puts only one JSON object on stdout whose
 * numbers are the human report's.
 */
#include "test.h"

#include <jansson.h>
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

/* Every line of a log file ends in a newline and none holds a carriage
 * return; the count of lines holding needle. */
static int log_lines(const char *path, const char *needle)
{
    size_t n = 0;
    char *e = test_read_file(path, &n);
    REQUIREF(e != NULL, "no log %s", path);
    CHECKF(!strchr(e, '\r'), "carriage return in a log: %s", e);
    CHECKF(n == 0 || e[n - 1] == '\n', "log does not end in a newline: %s", e);
    int c = count_lines(e, needle);
    free(e);
    return c;
}

/* The library's long steps (synth's tensors, quantize --fit's measuring)
 * report through the one progress callback: one line each in a log. */
TEST(cli_library_progress_logs_one_line_per_step)
{
    const char *m = test_tmp("s.gguf"), *log = test_tmp("s.log");
    char *o = NULL;
    int rc = test_run(&o, "%s synth -v -o %s --layers 2 --vocab 512 --experts 4 --ctx 256 2> %s", test_moeq_bin(), m, log);
    REQUIREF(rc == 0, "synth: %s", o ? o : "");
    free(o);
    /* the expert tensors (3 a layer) and the last one */
    CHECK(log_lines(log, "moeq: synth [") == 7);
    CHECK(log_lines(log, "] output.weight") == 1);
    rc = test_run(&o, "%s quantize --fit 48M --reserve 0 --sample-rows 8 %s %s 1 2> %s", test_moeq_bin(), m,
                  test_tmp("f.gguf"), log);
    CHECKF(rc == 0, "quantize --fit: %s", o ? o : "");
    free(o);
    size_t n = 0;
    char *e = test_read_file(log, &n);
    REQUIRE(e != NULL);
    const char *last = strstr(e, "measuring [ 14/ 14]");
    free(e);
    CHECKF(last != NULL, "no last measuring step");
    CHECK(log_lines(log, "moeq: measuring [") == 14);
    /* -q: nothing from synth */
    rc = test_run(&o, "%s synth -q -o %s --layers 1 --vocab 512 --experts 4 2> %s", test_moeq_bin(), m, log);
    CHECKF(rc == 0, "synth -q: %s", o ? o : "");
    free(o);
    e = test_read_file(log, &n);
    CHECKF(e && n == 0, "synth -q left: %s", e ? e : "");
    free(e);
}

/* -q, -v and --log-level mean the same to every command. */
TEST(cli_log_level_parsing)
{
    const char *m = test_synth_model("l.gguf", "--layers 1 --vocab 512 --experts 4 --ctx 256");
    static const char *const cmds[] = { "info", "dump", "synth", "quantize", "imatrix", "perplexity", "compare",
                                        "fit", "tokenize", "run", "bench", "kbench", "serve" };
    char *o = NULL;
    REQUIRE(test_run(&o, "%s help", test_moeq_bin()) == 0);
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        char want[32];
        snprintf(want, sizeof want, "\n  %s ", cmds[i]);
        CHECKF(strstr(o, want) != NULL, "'moeq help' lists no %s", cmds[i]);
    }
    /* every command of `moeq help` is in the list */
    int listed = 0;
    for (const char *p = strstr(o, "commands:"); p && (p = strstr(p, "\n  ")) != NULL; p++) listed++;
    CHECKF(listed == (int)(sizeof cmds / sizeof cmds[0]) + 2, "moeq help lists %d commands", listed);
    free(o);
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        int rc = test_run(&o, "%s %s --log-level loud -m %s", test_moeq_bin(), cmds[i], m);
        CHECKF(rc == 2 && o && strstr(o, "--log-level must be error, warn, info or debug"),
               "%s: rc %d: %s", cmds[i], rc, o ? o : "");
        free(o);
        rc = test_run(&o, "%s %s --log-level", test_moeq_bin(), cmds[i]);
        CHECKF(rc == 2, "%s: missing level: rc %d", cmds[i], rc);
        free(o);
        rc = test_run(&o, "%s %s --help", test_moeq_bin(), cmds[i]);
        CHECKF(rc == 0 && o && strstr(o, "--log-level"), "%s --help names no --log-level", cmds[i]);
        free(o);
    }
    /* accepted where they are used, and -q drops what is not an error */
    const char *log = test_tmp("q.log");
    static const char *const quiet[] = { "info %s", "fit -m %s -c 64", "tokenize -m %s -p hello",
                                         "run -m %s -p hello -n 2 --temp 0 -t 1", "dump %s output_norm.weight -o /dev/null",
                                         "bench -m %s -p 8 -n 2 -r 1 -t 1" };
    for (size_t i = 0; i < sizeof quiet / sizeof quiet[0]; i++) {
        char args[256];
        snprintf(args, sizeof args, quiet[i], m);
        int rc = test_run(&o, "%s %s -v --log-level info -q >/dev/null 2> %s", test_moeq_bin(), args, log);
        CHECKF(rc == 0, "%s -q: rc %d: %s", args, rc, o ? o : "");
        free(o);
        size_t n = 0;
        char *e = test_read_file(log, &n);
        CHECKF(e && n == 0, "%s -q left on stderr: %s", args, e ? e : "");
        free(e);
    }
    /* without -q, run reports its timings */
    int rc = test_run(&o, "%s run -m %s -p hello -n 2 --temp 0 -t 1", test_moeq_bin(), m);
    CHECKF(rc == 0 && o && strstr(o, "generation: "), "run: %s", o ? o : "");
    free(o);
    /* quiet never hides errors */
    rc = test_run(&o, "%s perplexity -q -m /nonexistent.gguf -f /dev/null", test_moeq_bin());
    CHECK(rc == 1 && o && strstr(o, "moeq: "));
    free(o);
    rc = test_run(&o, "%s serve -q -m /nonexistent.gguf --port 0", test_moeq_bin());
    CHECKF(rc == 1 && o && strstr(o, "nonexistent.gguf") && !strstr(o, "listening"), "serve -q: %s", o ? o : "");
    free(o);
}

/* stdout of CMD (stderr dropped) parsed as one JSON value: json_loads
 * refuses anything after it, so nothing else may be on stdout. */
static json_t *json_of(const char *what, const char *fmt, const char *a, const char *b, const char *c)
{
    char *o = NULL;
    char cmd[4096];
    snprintf(cmd, sizeof cmd, fmt, a, b, c);
    int rc = test_run(&o, "%s %s 2>/dev/null", test_moeq_bin(), cmd);
    REQUIREF(rc == 0, "%s: rc %d: %s", what, rc, o ? o : "");
    json_error_t je;
    json_t *j = json_loads(o, 0, &je);
    REQUIREF(json_is_object(j), "%s: stdout is not one JSON object (%s): %s", what, je.text, o);
    free(o);
    return j;
}

static double jnum(json_t *j, const char *path)
{
    char buf[128];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *k = strtok(buf, "."); k && j; k = strtok(NULL, ".")) j = json_object_get(j, k);
    REQUIREF(json_is_number(j), "no number at %s", path);
    return json_number_value(j);
}

/* The number after label in a human report. */
static double after(const char *text, const char *label)
{
    const char *p = strstr(text, label);
    REQUIREF(p != NULL, "no '%s' in: %s", label, text);
    return atof(p + strlen(label));
}

static int close_to(double a, double b, double rel) { return fabs(a - b) <= rel * fabs(b) + 1e-9; }

TEST(cli_json_perplexity_matches_the_report)
{
    const char *m, *q;
    char *o = NULL;
    const char *base = test_kld_base(&m, &q, "-t 1", &o);
    double ppl = after(o, "Final estimate: PPL = "), unc = after(o, " +/- ");
    free(o);
    json_t *j = json_of("ppl", "perplexity -m %s -f data/calibration.txt -c 64 --chunks 4 -t 1 --json%s%s", m, "", "");
    CHECKF(close_to(jnum(j, "ppl"), ppl, 1e-4), "json ppl %g, report %g", jnum(j, "ppl"), ppl);
    CHECKF(close_to(jnum(j, "ppl_unc"), unc, 1e-3), "json unc %g, report %g", jnum(j, "ppl_unc"), unc);
    CHECK(jnum(j, "n_chunks") == 4 && jnum(j, "n_ctx") == 64);
    CHECK(jnum(j, "scored") == 4 * (64 - 1 - 32));
    CHECK(jnum(j, "tokens") >= 4 * 64);
    json_decref(j);
    /* --kl-divergence: the statistics the report prints */
    int rc = test_run(&o, "%s perplexity -m %s -f data/calibration.txt -t 1 --kl-divergence-base %s --kl-divergence",
                      test_moeq_bin(), q, base);
    REQUIREF(rc == 0, "%s", o);
    double kld = after(o, "Mean    KLD: "), kmax = after(o, "Maximum KLD: "), kmed = after(o, "Median  KLD: ");
    double top = after(o, "Same top p: "), pq = after(o, "Mean PPL(Q)                   : ");
    double pb = after(o, "Mean PPL(base)                : "), rms = after(o, "RMS Δp    : ");
    free(o);
    j = json_of("kld", "perplexity -m %s -f data/calibration.txt -t 1 --kl-divergence-base %s --kl-divergence --json%s",
                q, base, "");
    CHECKF(close_to(jnum(j, "kld.mean"), kld, 1e-4), "kld %g vs %g", jnum(j, "kld.mean"), kld);
    CHECK(close_to(jnum(j, "kld.max"), kmax, 1e-4) && close_to(jnum(j, "kld.median"), kmed, 1e-4));
    CHECK(close_to(jnum(j, "same_top_pct.mean"), top, 1e-4));
    CHECK(close_to(jnum(j, "ppl"), pq, 1e-5) && close_to(jnum(j, "ppl_base"), pb, 1e-5));
    CHECK(close_to(jnum(j, "delta_p_pct.rms"), rms, 1e-3));
    CHECK(jnum(j, "kld.min") <= jnum(j, "kld.p10") && jnum(j, "kld.p10") <= jnum(j, "kld.median") &&
          jnum(j, "kld.median") <= jnum(j, "kld.p90") && jnum(j, "kld.p90") <= jnum(j, "kld.p99") &&
          jnum(j, "kld.p99") <= jnum(j, "kld.p99_9") && jnum(j, "kld.p99_9") <= jnum(j, "kld.max"));
    CHECK(jnum(j, "kld.mean") > 1e-4 && jnum(j, "n_chunks") == 4 && jnum(j, "scored") == 4 * 31);
    json_decref(j);
}

TEST(cli_json_quantize_report_matches_the_file)
{
    const char *m = test_synth_model("s.gguf", "--layers 2 --vocab 512 --experts 4 --ctx 256");
    const char *q = test_tmp("q.gguf"), *d = test_tmp("dry.gguf");
    json_t *r = json_of("quantize", "quantize %s %s Q4_K_M 1 --json%s", m, q, "");
    json_t *info = json_of("info", "info %s --json%s%s", q, "", "");
    CHECK(jnum(r, "output_bytes") == jnum(info, "totals.bytes"));
    CHECK(jnum(r, "parameters") == jnum(info, "totals.parameters"));
    CHECK(close_to(jnum(r, "bits_per_weight"), jnum(info, "totals.bits_per_weight"), 1e-9));
    CHECK(jnum(r, "n_tensors") == (double)json_array_size(json_object_get(info, "tensors")));
    CHECK(jnum(r, "input_bits_per_weight") == 32.0 && jnum(r, "input_bytes") > jnum(r, "output_bytes"));
    CHECK(json_is_false(json_object_get(r, "dry_run")) && !strcmp(json_string_value(json_object_get(r, "mix")), "Q4_K_M"));
    /* the per-type totals add up, and each group's types are the file's */
    double sum = 0;
    const char *k;
    json_t *v;
    json_object_foreach(json_object_get(r, "types"), k, v) sum += json_number_value(json_object_get(v, "bytes"));
    CHECK(sum == jnum(r, "output_bytes"));
    CHECK(jnum(r, "types.Q4_K.tensors") >= 1);
    json_t *ig = json_object_get(info, "groups"), *g;
    json_object_foreach(json_object_get(r, "groups"), k, g) {
        const char *t;
        json_object_foreach(g, t, v)
            CHECKF(json_number_value(json_object_get(v, "tensors")) ==
                   json_number_value(json_object_get(json_object_get(ig, k), t)), "group %s type %s", k, t);
    }
    json_decref(info);
    /* the human report's total line says the same */
    char *o = NULL;
    REQUIRE(test_run(&o, "%s quantize %s %s Q4_K_M 1 2>/dev/null", test_moeq_bin(), m, q) == 0);
    CHECK(after(o, "tensors, ") == jnum(r, "parameters"));
    CHECK(after(o, "parameters, ") == jnum(r, "output_bytes"));
    free(o);
    /* a dry run reports the same sizes and writes nothing */
    json_t *dr = json_of("dry run", "quantize --dry-run %s %s Q4_K_M 1 --json%s", m, d, "");
    CHECK(json_is_true(json_object_get(dr, "dry_run")) && jnum(dr, "output_bytes") == jnum(r, "output_bytes"));
    CHECK(test_run(NULL, "test -e %s", d) != 0);
    json_decref(dr);
    json_decref(r);
}
