/*
 * cmd_bench.c: `moeq bench`, prompt processing (pp) and generation (tg)
 * speed measured as llama-bench measures it, with its flags and outputs:
 * -p, -n, -t, -d, -b, -ctk and -ctv take comma lists and the bench runs
 * their cross product; -pg PP,TG adds a test of a PP-token prompt then TG
 * generated tokens (one row, "ppPP+tgTG"). pp evaluates P random tokens
 * in batches; tg generates N tokens one at a time; each follows DEPTH
 * tokens already in the cache (evaluated untimed, kept between runs by
 * prefix reuse; the row's test reads "tg128 @ d4096"). Each test is run
 * once as a warm-up (unless --no-warmup), then REPS times, and reported
 * as mean ± standard deviation of tokens per second, as a markdown table
 * (default), csv, json (an array) or jsonl (an object a line) with
 * llama-bench's field names. Peak RSS (the weights touched, the KV cache
 * and the scratch) ends the report (on stderr for the formats meant for
 * scripts).
 */
#include "cmd.h"
#include "engine/engine.h"
#include "quant/quants.h"
#include "util/util.h"
#include "version.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

static void usage(FILE *o)
{
    fprintf(o,
        "usage: moeq bench -m FILE [-p N,..] [-n N,..] [-pg PP,TG] [-d N,..] [-t N,..] [-r REPS]\n"
        "                  [-b N,..] [-ctk T,..] [-ctv T,..] [-o md|csv|json|jsonl] [--no-warmup]\n"
        "\n"
        "Measure prompt processing (ppN) and generation (tgN) speed in tokens/s.\n"
        "Options marked \",..\" take a comma list (-p 64,128,512); the bench runs\n"
        "every combination, one row each.\n"
        "\n"
        "  -m, --model FILE      GGUF model\n"
        "  -p, --n-prompt N,..   prompt tokens (default 512; 0: skip)\n"
        "  -n, --n-gen N,..      generated tokens (default 128; 0: skip)\n"
        "  -pg PP,TG             also a prompt of PP tokens then TG generated, one row\n"
        "                        \"ppPP+tgTG\" (may be repeated)\n"
        "  -d, --n-depth N,..    tokens already in the KV cache before each test\n"
        "                        (default 0; the test reads \"tg128 @ d4096\")\n"
        "  -t, --threads N,..    threads (default: all cores)\n"
        "  -r, --repetitions N   repetitions of each test (default 5)\n"
        "  -b, --batch-size N,.. prompt tokens per batch (default 512)\n"
        "  -ctk, --cache-type-k T,..  KV cache type of K: f16 (default) or q8_0\n"
        "  -ctv, --cache-type-v T,..  KV cache type of V: f16 (default) or q8_0\n"
        "  -o, --output FORMAT   md (default), csv, json (an array) or jsonl (an\n"
        "                        object a line); fields as llama-bench's\n"
        "  --no-warmup           no untimed run before each test's repetitions\n"
        "  -ngl N                accepted for llama-bench compatibility; ignored (CPU engine)\n"
        "  -q, -v, --log-level L  quiet, verbose, or error|warn|info|debug\n"
        "  -h, --help            this help\n");
}

enum { OUT_MD, OUT_CSV, OUT_JSON, OUT_JSONL };

struct list { int64_t v[CLI_LIST_MAX]; int n; };

static uint64_t mix(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* One timed run: the first depth tokens of tok are put in the cache
 * untimed (kept from the previous run when they are already there), then
 * np prompt tokens are evaluated in batches and ng generated one at a
 * time. Seconds, or -1 with err set. */
static double run_test(moeq_session *s, const int32_t *tok, int depth, int np, int ng, char *err, size_t errlen)
{
    int kept = moeq_session_sync(s, tok, depth + 1);
    if (moeq_session_eval(s, tok + kept, depth - kept, NULL, err, errlen) != 0) return -1;
    double t0 = moeq_now_s();
    if (moeq_session_eval(s, tok + depth, np, NULL, err, errlen) != 0) return -1;
    for (int i = 0; i < ng; i++)
        if (moeq_session_eval(s, tok + depth + np + i, 1, NULL, err, errlen) != 0) return -1;
    return moeq_now_s() - t0;
}

/* A test's name as llama-bench writes it: pp512, tg128, pp512+tg128,
 * then " @ dDEPTH" when there is a depth. */
static void test_name(char *buf, size_t n, int np, int ng, int depth)
{
    int k;
    if (np && ng) k = snprintf(buf, n, "pp%d+tg%d", np, ng);
    else if (np) k = snprintf(buf, n, "pp%d", np);
    else k = snprintf(buf, n, "tg%d", ng);
    if (depth && k > 0 && (size_t)k < n) snprintf(buf + k, n - (size_t)k, " @ d%d", depth);
}

/* The fields of one row, in llama-bench's names and order. */
static json_t *row_json(const char *model, const struct moeq_model_info *in, int threads, int n_batch,
                        int tk, int tv, int np, int ng, int depth, const char *when,
                        const double *sec, int reps)
{
    char name[64], type[96];
    test_name(name, sizeof name, np, ng, depth);
    snprintf(type, sizeof type, "%s %.2fM", in->arch, in->n_params / 1e6);
    double mean_ts = 0, mean_ns = 0, var_ts = 0, var_ns = 0;
    json_t *sns = json_array(), *sts = json_array();
    for (int r = 0; r < reps; r++) {
        double ts = (np + ng) / sec[r], ns = sec[r] * 1e9;
        mean_ts += ts / reps;
        mean_ns += ns / reps;
        json_array_append_new(sns, json_integer((json_int_t)ns));
        json_array_append_new(sts, json_real(ts));
    }
    for (int r = 0; r < reps; r++) {
        double ts = (np + ng) / sec[r], ns = sec[r] * 1e9;
        var_ts += (ts - mean_ts) * (ts - mean_ts);
        var_ns += (ns - mean_ns) * (ns - mean_ns);
    }
    double sd_ts = reps > 1 ? sqrt(var_ts / (reps - 1)) : 0, sd_ns = reps > 1 ? sqrt(var_ns / (reps - 1)) : 0;
    return json_pack("{s:s, s:s, s:s, s:s, s:I, s:I, s:i, s:i, s:s, s:s, s:i, s:i, s:i, s:s, s:s,"
                     " s:I, s:I, s:f, s:f, s:o, s:o}",
        "build_commit", MOEQ_COMMIT, "build_version", MOEQ_VERSION,
        "model_filename", model, "model_type", type,
        "model_size", (json_int_t)in->weight_bytes, "model_n_params", (json_int_t)in->n_params,
        "n_batch", n_batch, "n_threads", threads,
        "type_k", moeq_kv_type_name(tk), "type_v", moeq_kv_type_name(tv),
        "n_prompt", np, "n_gen", ng, "n_depth", depth, "test", name, "test_time", when,
        "avg_ns", (json_int_t)mean_ns, "stddev_ns", (json_int_t)sd_ns,
        "avg_ts", mean_ts, "stddev_ts", sd_ts, "samples_ns", sns, "samples_ts", sts);
}

/* A csv field: quoted (with "" for ") only when it holds , " or a newline. */
static void csv_field(FILE *o, const char *s)
{
    if (!strpbrk(s, ",\"\n")) { fputs(s, o); return; }
    fputc('"', o);
    for (; *s; s++) {
        if (*s == '"') fputc('"', o);
        fputc(*s, o);
    }
    fputc('"', o);
}

static void print_csv(FILE *o, json_t *row, int header)
{
    const char *key;
    json_t *v;
    int first = 1;
    json_object_foreach(row, key, v) {
        if (!first) fputc(',', o);
        first = 0;
        if (header) { csv_field(o, key); continue; }
        char buf[64];
        if (json_is_string(v)) csv_field(o, json_string_value(v));
        else if (json_is_integer(v)) fprintf(o, "%lld", (long long)json_integer_value(v));
        else if (json_is_real(v)) fprintf(o, "%.6f", json_real_value(v));
        else { /* the samples: space-separated, as llama-bench writes them */
            size_t i;
            json_t *x;
            fputc('"', o);
            json_array_foreach(v, i, x) {
                if (json_is_integer(x)) snprintf(buf, sizeof buf, "%lld", (long long)json_integer_value(x));
                else snprintf(buf, sizeof buf, "%.6f", json_real_value(x));
                fprintf(o, "%s%s", i ? " " : "", buf);
            }
            fputc('"', o);
        }
    }
    fputc('\n', o);
}

/* The table's optional columns, shown when their flag was given. */
enum { COL_BATCH = 1, COL_KV = 2 };

static void print_md(FILE *o, json_t *row, int cols, int header)
{
    if (header) {
        fprintf(o, "| model | size | params | threads |%s%s test | t/s |\n", cols & COL_BATCH ? " n_batch |" : "",
                cols & COL_KV ? " type_k | type_v |" : "");
        fprintf(o, "| --- | ---: | ---: | ---: |%s%s ---: | ---: |\n", cols & COL_BATCH ? " ---: |" : "",
                cols & COL_KV ? " --- | --- |" : "");
    }
    char kv[96] = "";
    int k = 0;
    if (cols & COL_BATCH)
        k = snprintf(kv, sizeof kv, " %lld |", (long long)json_integer_value(json_object_get(row, "n_batch")));
    if (cols & COL_KV)
        snprintf(kv + k, sizeof kv - (size_t)k, " %s | %s |", json_string_value(json_object_get(row, "type_k")),
                 json_string_value(json_object_get(row, "type_v")));
    const char *base = json_string_value(json_object_get(row, "model_filename"));
    const char *slash = strrchr(base, '/');
    fprintf(o, "| %s | %.2f MiB | %.2f M | %lld |%s %s | %.2f ± %.2f |\n", slash ? slash + 1 : base,
            (double)json_integer_value(json_object_get(row, "model_size")) / 1048576.0,
            (double)json_integer_value(json_object_get(row, "model_n_params")) / 1e6,
            (long long)json_integer_value(json_object_get(row, "n_threads")), kv,
            json_string_value(json_object_get(row, "test")),
            json_real_value(json_object_get(row, "avg_ts")), json_real_value(json_object_get(row, "stddev_ts")));
}

/* Print one finished row in the chosen format; n_rows counts those before. */
static int emit(int fmt, json_t *row, int n_rows, int cols)
{
    if (!row) { cli_error("bench: out of memory"); return -1; }
    if (fmt == OUT_MD) print_md(stdout, row, cols, n_rows == 0);
    else if (fmt == OUT_CSV) { if (!n_rows) print_csv(stdout, row, 1); print_csv(stdout, row, 0); }
    else {
        char *txt = json_dumps(row, fmt == OUT_JSON ? JSON_INDENT(2) | JSON_PRESERVE_ORDER
                                                    : JSON_COMPACT | JSON_PRESERVE_ORDER);
        if (!txt) { cli_error("bench: out of memory"); return -1; }
        if (fmt == OUT_JSON) printf("%s%s", n_rows ? ",\n" : "[\n", txt);
        else printf("%s\n", txt);
        free(txt);
    }
    fflush(stdout);
    return 0;
}

/* A comma list of KV cache type names. */
static int parse_kv_list(const char *v, struct list *l)
{
    char buf[256], *items[CLI_LIST_MAX];
    l->n = cli_split_list(v, items, CLI_LIST_MAX, buf, sizeof buf);
    for (int i = 0; i < l->n; i++)
        if ((l->v[i] = moeq_kv_type_from_name(items[i])) < 0) return -1;
    return l->n > 0 ? 0 : -1;
}

int cmd_bench(int argc, char **argv)
{
    const char *model = NULL;
    struct list lp = { { 512 }, 1 }, ln = { { 128 }, 1 }, lt = { { 0 }, 1 }, ld = { { 0 }, 1 };
    struct list lk = { { MOEQ_KV_F16 }, 1 }, lv = { { MOEQ_KV_F16 }, 1 }, lb = { { 512 }, 1 };
    int pg[CLI_LIST_MAX][2], n_pg = 0, fmt = OUT_MD, cols = 0, warmup = 1;
    int64_t reps = 5;
    const int64_t max_tok = 1 << 20;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (cli_is_help(a)) { usage(stdout); return 0; }
        CLI_LOG_OPTION("bench", argc, argv, i);
        if (!strcmp(a, "--no-warmup")) { warmup = 0; continue; }
        if (i + 1 >= argc) return cli_usage_error("bench", "option %s needs a value", a);
        const char *v = argv[++i];
        int bad = 0;
        struct list *l = NULL;
        int64_t lo = 0, hi = max_tok;
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) model = v;
        else if (!strcmp(a, "-p") || !strcmp(a, "--n-prompt")) l = &lp;
        else if (!strcmp(a, "-n") || !strcmp(a, "--n-gen")) l = &ln;
        else if (!strcmp(a, "-d") || !strcmp(a, "--n-depth")) l = &ld;
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) { l = &lt; hi = 1024; }
        else if (!strcmp(a, "-pg")) {
            int64_t two[2];
            bad = n_pg >= CLI_LIST_MAX || cli_parse_i64_list(v, 1, max_tok, two, 2) != 2;
            if (!bad) { pg[n_pg][0] = (int)two[0]; pg[n_pg][1] = (int)two[1]; n_pg++; }
            if (bad) return cli_usage_error("bench", "-pg wants PP,TG (two positive token counts), not '%s'", v);
        }
        else if (!strcmp(a, "-r") || !strcmp(a, "--repetitions")) bad = cli_parse_i64(v, &reps) || reps < 1 || reps > 1000;
        else if (!strcmp(a, "-b") || !strcmp(a, "--batch-size")) { l = &lb; lo = 1; hi = 65536; cols |= COL_BATCH; }
        else if (!strcmp(a, "-ngl") || !strcmp(a, "--n-gpu-layers")) { int64_t ngl; bad = cli_parse_i64(v, &ngl); }
        else if (!strcmp(a, "-ctk") || !strcmp(a, "--cache-type-k")) { bad = parse_kv_list(v, &lk); cols |= COL_KV; }
        else if (!strcmp(a, "-ctv") || !strcmp(a, "--cache-type-v")) { bad = parse_kv_list(v, &lv); cols |= COL_KV; }
        else if (!strcmp(a, "-o") || !strcmp(a, "--output")) {
            static const char *const names[] = { "md", "csv", "json", "jsonl" };
            for (fmt = 0; fmt < 4 && strcmp(v, names[fmt]); fmt++) {}
            if (fmt == 4) return cli_usage_error("bench", "-o wants md, csv, json or jsonl, not '%s'", v);
        }
        else return cli_usage_error("bench", "unknown option %s", a);
        if (l) bad = (l->n = cli_parse_i64_list(v, lo, hi, l->v, CLI_LIST_MAX)) < 0;
        if (bad) return cli_usage_error("bench", "bad value '%s' for %s", v, a);
    }
    if (!model) return cli_usage_error("bench", "-m FILE is required");

    /* the tests of one engine: each pp, each tg, each pg, at each depth */
    int tests[3 * CLI_LIST_MAX * CLI_LIST_MAX][3], n_tests = 0, need = 1;
    for (int d = 0; d < ld.n; d++) {
        for (int k = 0; k < lp.n + ln.n + n_pg; k++) {
            int np = k < lp.n ? (int)lp.v[k] : k < lp.n + ln.n ? 0 : pg[k - lp.n - ln.n][0];
            int ng = k < lp.n ? 0 : k < lp.n + ln.n ? (int)ln.v[k - lp.n] : pg[k - lp.n - ln.n][1];
            if (!np && !ng) continue;
            int *t = tests[n_tests++];
            t[0] = np; t[1] = ng; t[2] = (int)ld.v[d];
            if (t[0] + t[1] + t[2] > need) need = t[0] + t[1] + t[2];
        }
    }
    if (!n_tests) return cli_usage_error("bench", "nothing to measure (-p 0 and -n 0)");

    double *sec = malloc((size_t)reps * sizeof *sec);
    int32_t *tok = malloc((size_t)need * sizeof *tok);
    if (!sec || !tok) { free(sec); free(tok); cli_error("out of memory"); return 1; }
    char err[512], when[32];
    int rc = 0, n_rows = 0;
    for (int ik = 0; ik < lk.n && !rc; ik++)
    for (int iv = 0; iv < lv.n && !rc; iv++)
    for (int ib = 0; ib < lb.n && !rc; ib++)
    for (int it = 0; it < lt.n && !rc; it++) {
        struct moeq_engine_params p = { .model_path = model, .n_threads = (int)lt.v[it], .n_ctx = need,
                                        .n_seq = 1, .type_k = (int)lk.v[ik], .type_v = (int)lv.v[iv],
                                        .n_batch = (int)lb.v[ib] };
        moeq_engine *e = moeq_engine_open(&p, err, sizeof err);
        moeq_session *s = e ? moeq_session_new(e, err, sizeof err) : NULL;
        if (!s) { moeq_engine_close(e); rc = 1; break; }
        const struct moeq_model_info *in = moeq_engine_info(e);
        uint64_t rng = 1234;
        for (int i = 0; i < need; i++) tok[i] = (int32_t)(mix(&rng) % (uint64_t)in->n_vocab);
        for (int t = 0; t < n_tests && !rc; t++) {
            int np = tests[t][0], ng = tests[t][1], depth = tests[t][2];
            time_t now = time(NULL);
            strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
            if (warmup && run_test(s, tok, depth, np, ng, err, sizeof err) < 0) { rc = 1; break; }
            for (int r = 0; r < reps && !rc; r++)
                if ((sec[r] = run_test(s, tok, depth, np, ng, err, sizeof err)) < 0) rc = 1;
            if (rc) break;
            json_t *row = row_json(model, in, moeq_engine_n_threads(e), p.n_batch, p.type_k, p.type_v,
                                   np, ng, depth, when, sec, (int)reps);
            if (emit(fmt, row, n_rows++, cols) != 0) { json_decref(row); rc = 1; err[0] = 0; break; }
            json_decref(row);
        }
        moeq_session_free(s);
        moeq_engine_close(e);
    }
    if (fmt == OUT_JSON && n_rows) printf("\n]\n");
    if (rc && err[0]) cli_error("%s", err);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    if (fmt == OUT_MD) printf("\npeak RSS: %.1f MiB\n", ru.ru_maxrss / 1024.0);
    else cli_info("peak RSS: %.1f MiB", ru.ru_maxrss / 1024.0);
    free(tok);
    free(sec);
    return rc;
}
