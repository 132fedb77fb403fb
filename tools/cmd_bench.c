/*
 * cmd_bench.c: `moeq bench`, prompt processing (pp) and generation (tg)
 * speed measured as llama-bench measures it: pp evaluates P random tokens
 * from an empty cache in batches; tg generates N tokens one at a time from
 * an empty cache; each test is run once as a warm-up, then REPS times, and
 * reported as mean ± standard deviation of tokens per second. Peak RSS
 * (the weights touched, the KV cache and the scratch) ends the report.
 */
#include "cmd.h"
#include "engine/engine.h"
#include "quant/quants.h"
#include "util/util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

static void usage(FILE *o)
{
    fprintf(o,
        "usage: moeq bench -m FILE [-p N] [-n N] [-t N] [-r REPS] [-b N] [-ctk T] [-ctv T]\n"
        "\n"
        "Measure prompt processing (ppN) and generation (tgN) speed in tokens/s.\n"
        "\n"
        "  -m, --model FILE      GGUF model\n"
        "  -p, --n-prompt N      prompt tokens (default 512; 0: skip)\n"
        "  -n, --n-gen N         generated tokens (default 128; 0: skip)\n"
        "  -t, --threads N       threads (default: all cores)\n"
        "  -r, --repetitions N   repetitions of each test (default 5)\n"
        "  -b, --batch-size N    prompt tokens per batch (default 512)\n"
        "  -ctk, --cache-type-k T  KV cache type of K: f16 (default) or q8_0\n"
        "  -ctv, --cache-type-v T  KV cache type of V: f16 (default) or q8_0\n"
        "  -q, -v, --log-level L  quiet, verbose, or error|warn|info|debug\n"
        "  -h, --help            this help\n");
}

static uint64_t mix(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* One run of a test: seconds, or -1 with err set. */
static double run_pp(moeq_session *s, const int32_t *tok, int n, char *err, size_t errlen)
{
    moeq_session_sync(s, tok, 0);
    double t0 = moeq_now_s();
    if (moeq_session_eval(s, tok, n, NULL, err, errlen) != 0) return -1;
    return moeq_now_s() - t0;
}

static double run_tg(moeq_session *s, const int32_t *tok, int n, char *err, size_t errlen)
{
    moeq_session_sync(s, tok, 0);
    double t0 = moeq_now_s();
    for (int i = 0; i < n; i++)
        if (moeq_session_eval(s, tok + i, 1, NULL, err, errlen) != 0) return -1;
    return moeq_now_s() - t0;
}

int cmd_bench(int argc, char **argv)
{
    const char *model = NULL;
    int64_t n_prompt = 512, n_gen = 128, n_threads = 0, reps = 5, n_batch = 512;
    int tk = MOEQ_KV_F16, tv = MOEQ_KV_F16;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (cli_is_help(a)) { usage(stdout); return 0; }
        int lr = cli_log_option("bench", argc, argv, &i);
        if (lr == 2) return 2;
        if (lr) continue;
        if (i + 1 >= argc) return cli_usage_error("bench", "option %s needs a value", a);
        const char *v = argv[++i];
        int bad = 0, kv;
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) model = v;
        else if (!strcmp(a, "-p") || !strcmp(a, "--n-prompt")) bad = cli_parse_i64(v, &n_prompt) || n_prompt < 0 || n_prompt > (1 << 20);
        else if (!strcmp(a, "-n") || !strcmp(a, "--n-gen")) bad = cli_parse_i64(v, &n_gen) || n_gen < 0 || n_gen > (1 << 20);
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) bad = cli_parse_i64(v, &n_threads) || n_threads < 0 || n_threads > 1024;
        else if (!strcmp(a, "-r") || !strcmp(a, "--repetitions")) bad = cli_parse_i64(v, &reps) || reps < 1 || reps > 1000;
        else if (!strcmp(a, "-b") || !strcmp(a, "--batch-size")) bad = cli_parse_i64(v, &n_batch) || n_batch < 1 || n_batch > 65536;
        else if ((kv = cli_kv_option(a, v, &tk, &tv)) != 0) bad = kv < 0;
        else return cli_usage_error("bench", "unknown option %s", a);
        if (bad) return cli_usage_error("bench", "bad value '%s' for %s", v, a);
    }
    if (!model) return cli_usage_error("bench", "-m FILE is required");
    if (!n_prompt && !n_gen) return cli_usage_error("bench", "nothing to measure (-p 0 and -n 0)");

    int need = (int)(n_prompt > n_gen ? n_prompt : n_gen);
    struct moeq_engine_params p = { .model_path = model, .n_threads = (int)n_threads, .n_ctx = need,
                                    .n_seq = 1, .type_k = tk, .type_v = tv, .n_batch = (int)n_batch };
    char err[512];
    moeq_engine *e = moeq_engine_open(&p, err, sizeof err);
    if (!e) { cli_error("%s", err); return 1; }
    moeq_session *s = moeq_session_new(e, err, sizeof err);
    if (!s) { moeq_engine_close(e); cli_error("%s", err); return 1; }
    const struct moeq_model_info *in = moeq_engine_info(e);
    int32_t *tok = malloc((size_t)need * sizeof *tok);
    double *ts = malloc((size_t)reps * sizeof *ts);
    if (!tok || !ts) { cli_error("out of memory"); free(tok); free(ts); moeq_session_free(s); moeq_engine_close(e); return 1; }
    uint64_t rng = 1234;
    for (int i = 0; i < need; i++) tok[i] = (int32_t)(mix(&rng) % (uint64_t)in->n_vocab);

    const char *base = strrchr(model, '/');
    base = base ? base + 1 : model;
    int threads = n_threads > 0 ? (int)n_threads : 0;
    printf("| model | size | params | threads | test | t/s |\n");
    printf("| --- | ---: | ---: | ---: | ---: | ---: |\n");
    int rc = 0;
    for (int test = 0; test < 2 && rc == 0; test++) {
        int n = (int)(test == 0 ? n_prompt : n_gen);
        if (!n) continue;
        double (*fn)(moeq_session *, const int32_t *, int, char *, size_t) = test == 0 ? run_pp : run_tg;
        if (fn(s, tok, n, err, sizeof err) < 0) { rc = 1; break; } /* warm-up */
        for (int r = 0; r < reps; r++) {
            double t = fn(s, tok, n, err, sizeof err);
            if (t < 0) { rc = 1; break; }
            ts[r] = n / t;
        }
        if (rc) break;
        double mean = 0, var = 0;
        for (int r = 0; r < reps; r++) mean += ts[r];
        mean /= reps;
        for (int r = 0; r < reps; r++) var += (ts[r] - mean) * (ts[r] - mean);
        double sd = reps > 1 ? sqrt(var / (reps - 1)) : 0;
        char thr[16];
        snprintf(thr, sizeof thr, "%d", threads ? threads : -1);
        printf("| %s | %.2f MiB | %.2f M | %s | %s%d | %.2f ± %.2f |\n", base,
               in->weight_bytes / 1048576.0, in->n_params / 1e6, threads ? thr : "all",
               test == 0 ? "pp" : "tg", n, mean, sd);
        fflush(stdout);
    }
    if (rc) cli_error("%s", err);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("\npeak RSS: %.1f MiB\n", ru.ru_maxrss / 1024.0);
    free(tok);
    free(ts);
    moeq_session_free(s);
    moeq_engine_close(e);
    return rc;
}
