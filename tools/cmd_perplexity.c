/*
 * cmd_perplexity.c: `moeq perplexity`, the llama-perplexity method.
 *
 * The text is tokenized once and cut into chunks of n_ctx tokens; each
 * chunk is evaluated from an empty cache and only its second half is
 * scored (every scored token then sees at least n_ctx/2 tokens of
 * context), so numbers are comparable with llama-perplexity's.
 *
 * --kl-divergence-base FILE stores the base model's log-probabilities of
 * the scored positions in llama.cpp's format ("_logits_", n_ctx, n_vocab,
 * n_chunk, the tokens, then per scored position two floats (scale, min)
 * and n_vocab 16-bit quantized log-probabilities, padded); --kl-divergence
 * reads such a file and compares the current model against it. --json
 * prints only the final statistics, as one JSON object on stdout.
 */
#include "cmd.h"
#include "engine/engine.h"
#include "util/outfile.h"
#include "quant/finite.h"
#include "quant/quants.h"
#include "util/logprobs.h"
#include "util/util.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void usage(FILE *out)
{
    fprintf(out,
        "usage: moeq perplexity -m MODEL -f TEXT [options]\n"
        "\n"
        "  -c N                    context (chunk) size, default 512\n"
        "  --chunks N              evaluate at most N chunks\n"
        "  -b N                    tokens per forward batch, default min(512, n_ctx)\n"
        "  -t N                    threads (default: all cores)\n"
        "  -ctk, --cache-type-k T  KV cache type of K: f16 (default) or q8_0\n"
        "  -ctv, --cache-type-v T  KV cache type of V: f16 (default) or q8_0\n"
        "  --kl-divergence-base F  store the model's log-probabilities in F (llama.cpp format)\n"
        "  --kl-divergence         with --kl-divergence-base F: compare against F's model\n"
        "  --json                  print only one JSON object with the final statistics\n"
        "  -q, -v, --log-level L   quiet, verbose, or error|warn|info|debug\n"
        "\nexample:\n"
        "  moeq perplexity -m model-asym.gguf -f wiki.test.raw -c 512 --chunks 20\n");
}

/* ---------------------------------------------------- base log-probs */

struct kld_acc {
    double sum_nll, sum_nll2, sum_nll_base, sum_nll_base2, sum_nll_nll_base;
    double sum_kld, sum_kld2, sum_p_diff, sum_p_diff2, sum_p_diff4;
    float  max_p_diff;
    size_t n_same_top, count;
};

/* Compare one row of logits with the stored base log-probabilities. */
static void kld_row(int n_vocab, const float *logits, const uint16_t *base, int tok,
                    struct kld_acc *k, float *kld_out, float *pdiff_out)
{
    int imax, imax_base;
    const float norm = moeq_logsumexp(logits, n_vocab, &imax);
    const float nll = norm - logits[tok];
    const float nll_base = -moeq_logprobs_at(base, tok);
    k->sum_nll += nll; k->sum_nll2 += (double)nll * nll;
    k->sum_nll_base += nll_base; k->sum_nll_base2 += (double)nll_base * nll_base;
    k->sum_nll_nll_base += (double)nll * nll_base;
    const double kl = moeq_logprobs_kld(n_vocab, logits, norm, base, &imax_base);
    k->sum_kld += kl; k->sum_kld2 += kl * kl;
    k->count++;
    if (imax == imax_base) k->n_same_top++;
    const float pd = expf(-nll) - expf(-nll_base);
    k->sum_p_diff += pd;
    k->sum_p_diff2 += (double)pd * pd;
    k->sum_p_diff4 += (double)pd * pd * pd * pd;
    if (fabsf(pd) > k->max_p_diff) k->max_p_diff = fabsf(pd);
    *kld_out = (float)kl;
    *pdiff_out = pd;
}

static void mean_unc(double sum, double sum2, size_t n, double *m, double *u)
{
    *m = n ? sum / (double)n : 0;
    double v = n ? sum2 / (double)n - *m * *m : 0;
    *u = v > 0 && n > 10 ? sqrt(v / (double)(n - 1)) : 0;
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

static float percentile(const float *v, size_t n, double frac)
{
    if (frac <= 0) return v[0];
    if (frac >= 1) return v[n - 1];
    double p = frac * (double)(n - 1);
    size_t ip = (size_t)p;
    p -= (double)ip;
    return (float)((1 - p) * v[ip] + p * v[ip + 1 < n ? ip + 1 : n - 1]);
}

/* The final statistics of --kl-divergence, computed once for both the
 * human report and --json (kv and pv, the per-token KLD and Δp, are
 * sorted in place). */
struct kld_stats {
    double ppl, ppl_unc, ppl_base, ppl_base_unc, cor, ln_ratio, ln_ratio_unc, ratio, ratio_unc, ppl_diff;
    double kld, kld_unc, kld_max, kld_999, kld_99, kld_90, kld_med, kld_10, kld_min;
    double dp, dp_unc, dp_max, dp_99, dp_med, dp_01, dp_min, dp_rms, dp_rms_unc; /* percent */
    double same_top, same_top_unc;                                               /* percent */
};

static void kld_summary(const struct kld_acc *k, float *kv, float *pv, size_t n, struct kld_stats *o)
{
    double lp, lpu, lb, lbu;
    mean_unc(k->sum_nll, k->sum_nll2, k->count, &lp, &lpu);
    mean_unc(k->sum_nll_base, k->sum_nll_base2, k->count, &lb, &lbu);
    double cov = k->count >= 10 ? (k->sum_nll_nll_base / (double)k->count - lp * lb) / (double)(k->count - 1) : 0;
    double ratio = lp - lb, ratio_u = sqrt(fmax(0, lpu * lpu + lbu * lbu - 2 * cov));
    o->ppl = exp(lp); o->ppl_unc = exp(lp) * lpu;
    o->ppl_base = exp(lb); o->ppl_base_unc = exp(lb) * lbu;
    o->cor = lpu * lbu > 0 ? 100.0 * cov / (lpu * lbu) : 0;
    o->ln_ratio = ratio; o->ln_ratio_unc = ratio_u;
    o->ratio = exp(ratio); o->ratio_unc = exp(ratio) * ratio_u;
    o->ppl_diff = exp(lp) - exp(lb);
    mean_unc(k->sum_kld, k->sum_kld2, k->count, &o->kld, &o->kld_unc);
    qsort(kv, n, sizeof *kv, cmp_float);
    qsort(pv, n, sizeof *pv, cmp_float);
    o->kld_max = kv[n - 1]; o->kld_999 = percentile(kv, n, 0.999); o->kld_99 = percentile(kv, n, 0.990);
    o->kld_90 = percentile(kv, n, 0.900); o->kld_med = percentile(kv, n, 0.5); o->kld_10 = percentile(kv, n, 0.1);
    o->kld_min = kv[0];
    double pm, pu, p2m, p2u;
    mean_unc(k->sum_p_diff, k->sum_p_diff2, k->count, &pm, &pu);
    mean_unc(k->sum_p_diff2, k->sum_p_diff4, k->count, &p2m, &p2u);
    double rms = sqrt(p2m), rms_u = rms > 0 ? 0.5 / rms * p2u : 0;
    double top = (double)k->n_same_top / (double)k->count;
    o->dp = 100 * pm; o->dp_unc = 100 * pu; o->dp_max = 100 * pv[n - 1]; o->dp_99 = 100 * percentile(pv, n, 0.99);
    o->dp_med = 100 * percentile(pv, n, 0.5); o->dp_01 = 100 * percentile(pv, n, 0.01); o->dp_min = 100 * pv[0];
    o->dp_rms = 100 * rms; o->dp_rms_unc = 100 * rms_u;
    o->same_top = 100 * top;
    o->same_top_unc = k->count > 1 ? 100 * sqrt(top * (1 - top) / (double)(k->count - 1)) : 0;
}

/* One statistic of the KLD and Δp sections: its label in the report, its
 * key in the section's JSON object, its value and, where ukey is set, its
 * uncertainty under that key. Each section is one table, printed by
 * print_rows and turned into JSON by rows_json, so the two agree. */
struct stat_row {
    const char *label, *key;
    double      v;
    const char *ukey;
    double      u;
};

enum { N_KLD_ROWS = 8, N_DP_ROWS = 7 };

static void kld_rows(const struct kld_stats *o, struct stat_row kld[N_KLD_ROWS], struct stat_row dp[N_DP_ROWS],
                     struct stat_row *top)
{
    const struct stat_row k[N_KLD_ROWS] = {
        { "Mean    KLD", "mean", o->kld, "unc", o->kld_unc }, { "Maximum KLD", "max", o->kld_max, NULL, 0 },
        { "99.9%   KLD", "p99_9", o->kld_999, NULL, 0 },      { "99.0%   KLD", "p99", o->kld_99, NULL, 0 },
        { "90.0%   KLD", "p90", o->kld_90, NULL, 0 },         { "Median  KLD", "median", o->kld_med, NULL, 0 },
        { "10.0%   KLD", "p10", o->kld_10, NULL, 0 },         { "Minimum KLD", "min", o->kld_min, NULL, 0 },
    };
    const struct stat_row d[N_DP_ROWS] = {
        { "Mean    Δp", "mean", o->dp, "unc", o->dp_unc }, { "Maximum Δp", "max", o->dp_max, NULL, 0 },
        { "99.0%   Δp", "p99", o->dp_99, NULL, 0 },        { "Median  Δp", "median", o->dp_med, NULL, 0 },
        { "1.0%    Δp", "p1", o->dp_01, NULL, 0 },         { "Minimum Δp", "min", o->dp_min, NULL, 0 },
        { "RMS Δp    ", "rms", o->dp_rms, "rms_unc", o->dp_rms_unc },
    };
    memcpy(kld, k, sizeof k);
    memcpy(dp, d, sizeof d);
    *top = (struct stat_row){ "Same top p", "mean", o->same_top, "unc", o->same_top_unc };
}

/* "label: value" lines, in fmt_unc (value, uncertainty) or fmt (value). */
static void print_rows(const struct stat_row *r, int n, const char *fmt_unc, const char *fmt)
{
    for (int i = 0; i < n; i++) {
        printf("%s: ", r[i].label);
        if (r[i].ukey) printf(fmt_unc, r[i].v, r[i].u);
        else printf(fmt, r[i].v);
    }
}

static json_t *rows_json(const struct stat_row *r, int n)
{
    json_t *o = json_object();
    for (int i = 0; o && i < n; i++)
        if (json_object_set_new(o, r[i].key, json_real(r[i].v)) ||
            (r[i].ukey && json_object_set_new(o, r[i].ukey, json_real(r[i].u)))) {
            json_decref(o);
            return NULL;
        }
    return o;
}

static void print_kld_summary(const struct kld_stats *o)
{
    struct stat_row kld[N_KLD_ROWS], dp[N_DP_ROWS], top;
    kld_rows(o, kld, dp, &top);
    printf("====== Perplexity statistics ======\n");
    printf("Mean PPL(Q)                   : %10.6f ± %10.6f\n", o->ppl, o->ppl_unc);
    printf("Mean PPL(base)                : %10.6f ± %10.6f\n", o->ppl_base, o->ppl_base_unc);
    printf("Cor(ln(PPL(Q)), ln(PPL(base))): %6.2f%%\n", o->cor);
    printf("Mean ln(PPL(Q)/PPL(base))     : %10.6f ± %10.6f\n", o->ln_ratio, o->ln_ratio_unc);
    printf("Mean PPL(Q)/PPL(base)         : %10.6f ± %10.6f\n", o->ratio, o->ratio_unc);
    printf("Mean PPL(Q)-PPL(base)         : %10.6f\n", o->ppl_diff);
    printf("\n====== KL divergence statistics ======\n");
    print_rows(kld, N_KLD_ROWS, "%10.6f ± %10.6f\n", "%10.6f\n");
    printf("\n====== Token probability statistics ======\n");
    print_rows(dp, N_DP_ROWS, "%6.3f ± %5.3f %%\n", "%6.3f%%\n");
    print_rows(&top, 1, "%6.3f ± %5.3f %%\n", "%6.3f%%\n");
}

/* The KLD statistics as JSON objects added to j (the names follow the
 * human report; Δp and same-top are in percent, as printed). */
static int kld_json(json_t *j, const struct kld_stats *o)
{
    struct stat_row kld[N_KLD_ROWS], dp[N_DP_ROWS], top;
    kld_rows(o, kld, dp, &top);
    return json_object_set_new(j, "ppl", json_real(o->ppl)) | json_object_set_new(j, "ppl_unc", json_real(o->ppl_unc)) |
        json_object_set_new(j, "ppl_base", json_real(o->ppl_base)) |
        json_object_set_new(j, "ppl_base_unc", json_real(o->ppl_base_unc)) |
        json_object_set_new(j, "cor_ln_ppl_pct", json_real(o->cor)) |
        json_object_set_new(j, "ln_ppl_ratio", json_pack("{s:f, s:f}", "mean", o->ln_ratio, "unc", o->ln_ratio_unc)) |
        json_object_set_new(j, "ppl_ratio", json_pack("{s:f, s:f}", "mean", o->ratio, "unc", o->ratio_unc)) |
        json_object_set_new(j, "ppl_diff", json_real(o->ppl_diff)) |
        json_object_set_new(j, "kld", rows_json(kld, N_KLD_ROWS)) |
        json_object_set_new(j, "delta_p_pct", rows_json(dp, N_DP_ROWS)) |
        json_object_set_new(j, "same_top_pct", rows_json(&top, 1));
}

/* Logits that are not numbers would make every statistic nan: name the
 * first one (chunk from 1, position in the chunk) and fail. */
static int check_logits(const float *scored, int n_rows, int n_vocab, int chunk, int first_pos,
                        const char *model)
{
    for (int j = 0; j < n_rows; j++) {
        const float *row = scored + (size_t)j * n_vocab;
        int64_t v = moeq_first_nonfinite_f32(row, n_vocab);
        if (v < 0) continue;
        cli_error("perplexity: %s: chunk %d, position %d: logit of token %lld is %s "
                  "(the model computes values that are not numbers; see moeq info --check)",
                  model, chunk, first_pos + j, (long long)v, isnan(row[v]) ? "nan" : row[v] > 0 ? "inf" : "-inf");
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------- main */

int cmd_perplexity(int argc, char **argv)
{
    const char *model = NULL, *text_path = NULL, *kld_path = NULL;
    int64_t n_ctx = 512, max_chunks = -1, n_batch = 0, n_threads = 0;
    int kld_mode = 0, json = 0, tk = MOEQ_KV_F16, tv = MOEQ_KV_F16, kv;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (cli_is_help(a)) { usage(stdout); return 0; }
        CLI_LOG_OPTION("perplexity", argc, argv, i);
        int has = i + 1 < argc;
#define ARG_I64(flag, var) if (!strcmp(a, flag)) { if (!has || cli_parse_i64(argv[++i], &var) != 0) return cli_usage_error("perplexity", "%s needs an integer", flag); continue; }
        ARG_I64("-c", n_ctx);
        ARG_I64("--ctx-size", n_ctx);
        ARG_I64("--chunks", max_chunks);
        ARG_I64("-b", n_batch);
        ARG_I64("-t", n_threads);
#undef ARG_I64
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) { if (!has) return cli_usage_error("perplexity", "-m needs a file"); model = argv[++i]; }
        else if (!strcmp(a, "-f") || !strcmp(a, "--file")) { if (!has) return cli_usage_error("perplexity", "-f needs a file"); text_path = argv[++i]; }
        else if (!strcmp(a, "--kl-divergence-base")) { if (!has) return cli_usage_error("perplexity", "%s needs a file", a); kld_path = argv[++i]; }
        else if ((kv = cli_kv_option(a, has ? argv[i + 1] : "", &tk, &tv)) != 0) {
            if (kv < 0) return cli_usage_error("perplexity", "%s must be f16 or q8_0, not '%s'", a, has ? argv[i + 1] : "");
            i++;
        }
        else if (!strcmp(a, "--kl-divergence")) kld_mode = 1;
        else if (!strcmp(a, "--json")) json = 1;
        else return cli_usage_error("perplexity", "unknown argument '%s'", a);
    }
    if (!model || !text_path) return cli_usage_error("perplexity", "-m MODEL and -f TEXT are required");
    if (kld_mode && !kld_path) return cli_usage_error("perplexity", "--kl-divergence needs --kl-divergence-base FILE");
    if (n_ctx < 8 || n_ctx > (1 << 20)) return cli_usage_error("perplexity", "-c must be in 8..1048576");
    if (n_batch <= 0 || n_batch > n_ctx) n_batch = n_ctx < 512 ? n_ctx : 512;

    char err[512];
    FILE *kf = NULL;          /* the base file, read (kld_mode) or written (through ko) */
    moeq_outfile *ko = NULL;
    const char *inputs[] = { model, text_path };
    uint16_t *lp = NULL;
    int32_t *tokens = NULL;
    float *logits = NULL, *kld_vals = NULL, *pd_vals = NULL;
    moeq_session *s = NULL;
    int rc = 1;

    if (kld_path && !kld_mode && moeq_outfile_check(kld_path, inputs, 2, err, sizeof err) != 0) {
        cli_error("perplexity: %s", err);
        return 1;
    }
    struct moeq_engine_params ep = { model, (int)n_threads, (int)n_ctx, 1, tk, tv, (int)n_batch };
    moeq_engine *e = moeq_engine_open(&ep, err, sizeof err);
    if (!e) { cli_error("%s", err); return 1; }
    const struct moeq_model_info *mi = moeq_engine_info(e);
    const int n_vocab = mi->n_vocab;
    const int nv = moeq_logprobs_row_len(n_vocab);
    const int first = (int)n_ctx / 2;
    const int n_scored = (int)n_ctx - 1 - first;
    int n_tok = 0, n_chunk = 0;

    if (kld_mode) {
        /* the base file decides the tokens and chunks */
        kf = fopen(kld_path, "rb");
        if (!kf) { cli_error("perplexity: %s: cannot open: %s", kld_path, strerror(errno)); goto out; }
        char magic[8];
        uint32_t f_ctx;
        int32_t f_vocab, f_chunk;
        if (fread(magic, 1, 8, kf) != 8 || memcmp(magic, "_logits_", 8) != 0) {
            cli_error("perplexity: %s: byte 0: not a log-probabilities file (no _logits_ magic)", kld_path);
            goto out;
        }
        if (fread(&f_ctx, 4, 1, kf) != 1 || fread(&f_vocab, 4, 1, kf) != 1 || fread(&f_chunk, 4, 1, kf) != 1) {
            cli_error("perplexity: %s: byte 8: truncated header", kld_path);
            goto out;
        }
        if (f_vocab != n_vocab) {
            cli_error("perplexity: %s: vocabulary of %d tokens, but %s has %d", kld_path, f_vocab, model, n_vocab);
            goto out;
        }
        if (f_ctx < 8 || f_ctx > (1u << 20) || f_chunk < 1 || (int64_t)f_chunk * f_ctx > (1 << 28)) {
            cli_error("perplexity: %s: byte 8: bad n_ctx %u or chunk count %d", kld_path, f_ctx, f_chunk);
            goto out;
        }
        if ((int64_t)f_ctx != n_ctx)
            cli_info("perplexity: using n_ctx %u from %s", f_ctx, kld_path);
        n_ctx = f_ctx;
        n_tok = f_chunk * (int)f_ctx;
        n_chunk = f_chunk;
        if (max_chunks > 0 && max_chunks < n_chunk) n_chunk = (int)max_chunks;
        tokens = malloc((size_t)n_tok * sizeof *tokens);
        if (!tokens || fread(tokens, 4, (size_t)n_tok, kf) != (size_t)n_tok) {
            cli_error("perplexity: %s: truncated token list", kld_path);
            goto out;
        }
        for (int i = 0; i < n_tok; i++)
            if (tokens[i] < 0 || tokens[i] >= n_vocab) {
                cli_error("perplexity: %s: token %d out of range (%d)", kld_path, i, tokens[i]);
                goto out;
            }
    } else {
        size_t tlen;
        char *text = cli_read_file(text_path, &tlen, err, sizeof err);
        if (!text) { cli_error("perplexity: %s", err); goto out; }
        if (tlen == 0) { free(text); cli_error("perplexity: %s is empty", text_path); goto out; }
        tokens = moeq_tokenize_text(e, text, tlen, 1, &n_tok, err, sizeof err);
        free(text);
        if (!tokens) { cli_error("perplexity: cannot tokenize %s: %s", text_path, err); goto out; }
        if (n_tok < 2 * n_ctx) {
            cli_error("perplexity: %s tokenizes to %d tokens; at least %lld (2 x n_ctx) are needed",
                      text_path, n_tok, (long long)(2 * n_ctx));
            goto out;
        }
        n_chunk = n_tok / (int)n_ctx;
        if (max_chunks > 0 && max_chunks < n_chunk) n_chunk = (int)max_chunks;
        if (kld_path) {
            ko = moeq_outfile_open(kld_path, inputs, 2, err, sizeof err);
            if (!ko) { cli_error("perplexity: %s", err); goto out; }
            kf = moeq_outfile_fp(ko);
            uint32_t c32 = (uint32_t)n_ctx;
            int32_t v32 = n_vocab, ch32 = n_chunk;
            if (fwrite("_logits_", 1, 8, kf) != 8 || fwrite(&c32, 4, 1, kf) != 1 || fwrite(&v32, 4, 1, kf) != 1 ||
                fwrite(&ch32, 4, 1, kf) != 1 || fwrite(tokens, 4, (size_t)n_chunk * (size_t)n_ctx, kf) != (size_t)n_chunk * (size_t)n_ctx) {
                moeq_outfile_failed(ko, err, sizeof err);
                cli_error("perplexity: %s", err);
                goto out;
            }
        }
    }

    const int n_scored2 = (int)n_ctx - 1 - (int)n_ctx / 2;
    (void)n_scored;
    logits = malloc((size_t)n_batch * (size_t)n_vocab * sizeof *logits);
    float *scored = malloc((size_t)n_ctx * (size_t)n_vocab * sizeof *scored / 2 + (size_t)n_vocab * 4);
    lp = malloc((size_t)n_scored2 * (size_t)nv * sizeof *lp);
    if (kld_mode) {
        kld_vals = malloc((size_t)n_chunk * (size_t)n_scored2 * sizeof *kld_vals);
        pd_vals = malloc((size_t)n_chunk * (size_t)n_scored2 * sizeof *pd_vals);
    }
    s = moeq_session_new(e, err, sizeof err);
    if (!logits || !scored || !lp || !s || (kld_mode && (!kld_vals || !pd_vals))) {
        free(scored);
        cli_error("perplexity: %s", s ? "out of memory" : err);
        goto out;
    }
    cli_info("perplexity: %d tokens, %d chunks of %lld, batch %lld, scoring the second half of each",
            n_tok, n_chunk, (long long)n_ctx, (long long)n_batch);

    double nll = 0, nll2 = 0;
    long count = 0;
    struct kld_acc k;
    memset(&k, 0, sizeof k);
    double t0 = moeq_now_s();
    const int f0 = (int)n_ctx / 2;
    if (kld_mode && !json)
        printf("\nchunk             PPL               ln(PPL(Q)/PPL(base))          KL Divergence              Δp RMS            Same top p\n");
    for (int c = 0; c < n_chunk; c++) {
        const int32_t *ct = tokens + (size_t)c * (size_t)n_ctx;
        moeq_session_sync(s, NULL, 0);
        for (int b = 0; b < n_ctx; b += (int)n_batch) {
            int nb = (int)(n_ctx - b < n_batch ? n_ctx - b : n_batch);
            int32_t saved = ct[b];
            if (mi->add_bos && b == 0 && !kld_mode) {
                /* llama-perplexity puts BOS at the start of every chunk */
                ((int32_t *)ct)[0] = mi->bos;
            }
            int erc = moeq_session_eval(s, ct + b, nb, logits, err, sizeof err);
            ((int32_t *)ct)[b] = saved;
            if (erc != 0) { free(scored); cli_error("perplexity: %s", err); goto out; }
            /* keep the rows of positions >= first */
            for (int j = 0; j < nb; j++) {
                int pos = b + j;
                if (pos >= f0 && pos < n_ctx - 1)
                    memcpy(scored + (size_t)(pos - f0) * n_vocab, logits + (size_t)j * n_vocab, (size_t)n_vocab * 4);
            }
        }
        if (check_logits(scored, n_scored2, n_vocab, c + 1, f0, model) != 0) { free(scored); goto out; }
        if (kld_mode) {
            if (fread(lp, 2, (size_t)n_scored2 * nv, kf) != (size_t)n_scored2 * nv) {
                free(scored);
                cli_error("perplexity: %s: truncated log-probabilities at chunk %d", kld_path, c + 1);
                goto out;
            }
            for (int j = 0; j < n_scored2; j++)
                kld_row(n_vocab, scored + (size_t)j * n_vocab, lp + (size_t)j * nv, ct[f0 + j + 1], &k,
                        kld_vals + (size_t)c * n_scored2 + j, pd_vals + (size_t)c * n_scored2 + j);
            if (json) goto next;
            double lpm, lpu, lbm, lbu, km, ku;
            mean_unc(k.sum_nll, k.sum_nll2, k.count, &lpm, &lpu);
            mean_unc(k.sum_nll_base, k.sum_nll_base2, k.count, &lbm, &lbu);
            mean_unc(k.sum_kld, k.sum_kld2, k.count, &km, &ku);
            double p2m, p2u;
            mean_unc(k.sum_p_diff2, k.sum_p_diff4, k.count, &p2m, &p2u);
            double top = (double)k.n_same_top / (double)k.count;
            printf("%4d    %9.4f ± %9.4f    %10.5f ± %10.5f    %10.5f ± %10.5f    %6.3f ± %6.3f %%    %6.3f ± %6.3f %%\n",
                   c + 1, exp(lpm), exp(lpm) * lpu, lpm - lbm, sqrt(lpu * lpu + lbu * lbu), km, ku,
                   100 * sqrt(p2m), p2m > 0 ? 100 * 0.5 / sqrt(p2m) * p2u : 0,
                   100 * top, k.count > 1 ? 100 * sqrt(top * (1 - top) / (double)(k.count - 1)) : 0);
        } else {
            for (int j = 0; j < n_scored2; j++) {
                const float *row = scored + (size_t)j * n_vocab;
                double v;
                if (kf) v = moeq_logprobs_encode(n_vocab, row, lp + (size_t)j * nv, ct[f0 + j + 1]);
                else v = cli_token_nll(row, n_vocab, ct[f0 + j + 1]);
                nll += v;
                nll2 += v * v;
                count++;
            }
            if (kf && fwrite(lp, 2, (size_t)n_scored2 * nv, kf) != (size_t)n_scored2 * nv) {
                free(scored);
                moeq_outfile_failed(ko, err, sizeof err);
                cli_error("perplexity: %s", err);
                goto out;
            }
            if (!json) printf("[%d]%.4f,", c + 1, exp(nll / (double)count));
        }
    next:
        fflush(stdout);
        double dt = moeq_now_s() - t0;
        cli_progress("perplexity: chunk %d/%d  %.1fs  ETA %.1fs", c + 1, n_chunk, dt,
                     dt / (c + 1) * (n_chunk - c - 1));
    }
    free(scored);
    cli_progress_end();
    if (!json) printf("\n");
    double secs = moeq_now_s() - t0;
    json_t *j = json ? json_pack("{s:s, s:s, s:i, s:i, s:i, s:i, s:I, s:f}", "model", model,
                                 kld_mode ? "kl_divergence_base" : "text", kld_mode ? kld_path : text_path,
                                 "n_ctx", (int)n_ctx, "n_batch", (int)n_batch, "n_chunks", n_chunk,
                                 "tokens", n_tok, "scored", (json_int_t)(kld_mode ? (long)k.count : count),
                                 "seconds", secs)
                 : NULL;
    if (kld_mode) {
        if (k.count < 2) { json_decref(j); cli_error("perplexity: too few tokens for statistics"); goto out; }
        struct kld_stats st;
        kld_summary(&k, kld_vals, pd_vals, (size_t)n_chunk * n_scored2, &st);
        if (!json) print_kld_summary(&st);
        else if (j && kld_json(j, &st) != 0) { json_decref(j); j = NULL; }
    } else {
        double m = nll / (double)count, m2 = nll2 / (double)count - m * m;
        double ppl = exp(m);
        double unc = m2 > 0 && count > 1 ? sqrt(m2 / (double)(count - 1)) * ppl : 0;
        if (!json) printf("Final estimate: PPL = %.4f +/- %.5f\n", ppl, unc);
        else if (j && (json_object_set_new(j, "ppl", json_real(ppl)) | json_object_set_new(j, "ppl_unc", json_real(unc))))
            { json_decref(j); j = NULL; }
    }
    if (json && cli_print_json(j, "perplexity") != 0) goto out;
    cli_info("perplexity: %d chunks in %.1f s", n_chunk, secs);
    rc = 0;
out:
    if (ko) {
        /* the base file appears only when complete */
        if (rc == 0 && moeq_outfile_commit(ko, err, sizeof err) != 0) { cli_error("perplexity: %s", err); rc = 1; }
        else if (rc != 0) moeq_outfile_abort(ko);
    } else if (kf) {
        fclose(kf);
    }
    moeq_session_free(s);
    moeq_engine_close(e);
    free(tokens); free(logits); free(lp); free(kld_vals); free(pd_vals);
    return rc;
}
