/*
 * cmd_imatrix.c: `moeq imatrix`, importance matrices from calibration text.
 *
 * Runs the model over the text in chunks of n_ctx tokens with the engine's
 * activation hook installed: for every matmul weight the hook receives the
 * input rows (for a routed expert tensor, only the tokens routed to that
 * expert: the FFN-normed input for gate/up, the expert's SwiGLU output for
 * down) and adds their squares per column into src/quant/imatrix. The output is
 * llama.cpp's legacy .dat or its GGUF imatrix format; --in-file merges
 * earlier runs. Like llama-imatrix, output.weight is skipped unless
 * --process-output, and each chunk's perplexity is reported unless --no-ppl.
 */
#include "cmd.h"
#include "engine/engine.h"
#include "gguf/gguf.h"
#include "quant/hessian.h"
#include "quant/imatrix.h"
#include "util/outfile.h"
#include "quant/quants.h"
#include "util/util.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_IN_FILES 64

static void usage(FILE *out)
{
    fprintf(out,
        "usage: moeq imatrix -m MODEL -f TEXT [options]\n"
        "\n"
        "  -c N                  tokens per chunk (default 512)\n"
        "  --chunks N            process at most N chunks\n"
        "  --chunk N             skip the first N chunks\n"
        "  -o FILE               output (default imatrix.gguf, GGUF as llama-imatrix\n"
        "                        writes it; a .dat name selects the legacy format)\n"
        "  --output-format F     gguf or dat\n"
        "  --in-file F           merge an existing imatrix (repeatable; without -f just merge)\n"
        "  --output-frequency N, --save-frequency N\n"
        "                        save every N chunks (default 10)\n"
        "  --show-statistics     per-tensor statistics of the --in-file imatrix (sum, mean,\n"
        "                        active columns, experts with data, calls); writes nothing\n"
        "  --process-output      also collect output.weight\n"
        "  --hessian FILE        also collect each weight's full input second moment\n"
        "                        (x^T x, n^2 per matrix) for moeq quantize --hessian\n"
        "                        (Hessian-aware rounding); for models of moderate width\n"
        "  --no-ppl              do not compute perplexity per chunk\n"
        "  -t N                  threads (default: all cores)\n"
        "  -q, -v, --log-level L quiet, verbose, or error|warn|info|debug\n"
        "\nexample:\n"
        "  moeq imatrix -m model-q8_0.gguf -f calibration.txt -c 512 -o imatrix.gguf\n"
        "  moeq imatrix --in-file imatrix.gguf --show-statistics\n");
}

struct collector {
    struct moeq_imatrix *im;
    struct moeq_hessian *hs;   /* --hessian: full second moments too */
    pthread_mutex_t mu;
    int n_expert;
    int process_output;
    int failed;
    char err[256];
    unsigned char *touched;  /* per entry: seen in this run */
    int64_t touched_cap;
};

static void hook(void *ud, const char *tensor, int expert, const float *x, int n_rows, int n_cols)
{
    struct collector *c = ud;
    if (!c->process_output && strcmp(tensor, "output.weight") == 0) return;
    pthread_mutex_lock(&c->mu);
    int64_t n_mat = expert >= 0 ? c->n_expert : 1;
    struct moeq_imatrix_entry *e = moeq_imatrix_get(c->im, tensor, n_cols, n_mat, c->err, sizeof c->err);
    if (!e) {
        c->failed = 1;
    } else {
        int64_t idx = e - c->im->entries;
        if (idx >= c->touched_cap) {
            int64_t cap = c->touched_cap ? c->touched_cap : 64;
            while (cap <= idx) cap *= 2;
            unsigned char *t = realloc(c->touched, (size_t)cap);
            if (!t) { fprintf(stderr, "moeq: out of memory\n"); exit(1); }
            memset(t + c->touched_cap, 0, (size_t)(cap - c->touched_cap));
            c->touched = t;
            c->touched_cap = cap;
        }
        c->touched[idx] = 1;
        if (n_rows > 0) moeq_imatrix_add(e, expert >= 0 ? expert : 0, x, n_rows);
        if (c->hs && n_rows > 0 &&
            moeq_hessian_add(c->hs, tensor, n_mat, expert >= 0 ? expert : 0, x, n_rows, n_cols, c->err,
                             sizeof c->err) != 0)
            c->failed = 1;
    }
    pthread_mutex_unlock(&c->mu);
}

static int ends_with(const char *s, const char *suf)
{
    size_t n = strlen(s), m = strlen(suf);
    return n >= m && strcmp(s + n - m, suf) == 0;
}

/* Save im; the count printed is the count written (entries without data
 * are skipped). A periodic save with nothing to store yet is skipped with
 * a note, since later chunks may route the missing experts; the final
 * save fails instead. inputs[0..n_inputs): every file the command reads
 * (never overwritten). */
static int save(const struct moeq_imatrix *im, const char *path, int gguf, int chunks, int periodic,
                const char *const *inputs, int n_inputs)
{
    char err[512];
    const int64_t n = moeq_imatrix_n_storable(im);
    if (periodic && n == 0) {
        cli_warn("imatrix: after %d chunks no entry has data to store yet; %s not written",
                chunks, path);
        return 0;
    }
    if (moeq_imatrix_save(im, path, gguf, inputs, n_inputs, err, sizeof err) != 0) {
        cli_error("imatrix: %s", err);
        return -1;
    }
    cli_info("imatrix: saved %lld entries after %d chunks to %s", (long long)n, chunks, path);
    return 0;
}

/* Per tensor: sum and mean of the importance values (mean squared
 * activation per column), the fraction of columns with nonzero importance,
 * the experts with data and the calls. */
static void show_statistics(const struct moeq_imatrix *im)
{
    printf("%-40s %12s %12s %8s %9s %8s\n", "tensor", "sum", "mean", "active", "experts", "calls");
    for (int64_t k = 0; k < im->n_entries; k++) {
        const struct moeq_imatrix_entry *e = &im->entries[k];
        double sum = 0;
        int64_t active = 0, covered = 0, n = e->n_per_row * e->n_mat;
        for (int64_t m = 0; m < e->n_mat; m++) {
            if (e->counts[m] > 0) covered++;
            for (int64_t j = 0; j < e->n_per_row; j++) {
                double v = e->counts[m] > 0 ? e->sums[m * e->n_per_row + j] / e->counts[m] : 0;
                sum += v;
                active += v != 0;
            }
        }
        printf("%-40s %12.6g %12.6g %7.2f%% %4lld/%-4lld %8lld\n", e->name, sum, n ? sum / (double)n : 0,
               n ? 100.0 * (double)active / (double)n : 0, (long long)covered, (long long)e->n_mat,
               (long long)e->ncall);
    }
    printf("%lld entries, %lld chunks of %lld tokens%s\n", (long long)im->n_entries, (long long)im->chunk_count,
           (long long)im->chunk_size, im->chunk_size > 0 ? "" : " (unknown)");
}

/* The chunk size stored in a GGUF imatrix, or 0 (a legacy .dat has none). */
static int64_t file_chunk_size(const char *path)
{
    char err[256];
    FILE *fp = fopen(path, "rb");
    char magic[4] = { 0 };
    int is_gguf = fp && fread(magic, 1, 4, fp) == 4 && !memcmp(magic, "GGUF", 4);
    if (fp) fclose(fp);
    if (!is_gguf) return 0;
    gguf_file *f = gguf_open(path, err, sizeof err);
    uint64_t u = 0;
    if (!f || gguf_get_u64(f, "imatrix.chunk_size", &u) != 0) u = 0;
    if (f) gguf_close(f);
    return (int64_t)u;
}

int cmd_imatrix(int argc, char **argv)
{
    const char *model = NULL, *text_path = NULL, *out_path = "imatrix.gguf", *fmt = NULL, *hessian_path = NULL;
    const char *in_files[MAX_IN_FILES];
    int n_in = 0, no_ppl = 0, process_output = 0, show_stats = 0;
    int64_t n_ctx = 512, max_chunks = -1, skip = 0, out_freq = 10, n_threads = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (cli_is_help(a)) { usage(stdout); return 0; }
        CLI_LOG_OPTION("imatrix", argc, argv, i);
        int has = i + 1 < argc;
#define ARG_I64(flag, var) if (!strcmp(a, flag)) { if (!has || cli_parse_i64(argv[++i], &var) != 0) return cli_usage_error("imatrix", "%s needs an integer", flag); continue; }
        ARG_I64("-c", n_ctx);
        ARG_I64("--chunks", max_chunks);
        ARG_I64("--chunk", skip);
        ARG_I64("--output-frequency", out_freq);
        ARG_I64("--save-frequency", out_freq);
        ARG_I64("-t", n_threads);
#undef ARG_I64
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) { if (!has) return cli_usage_error("imatrix", "-m needs a file"); model = argv[++i]; }
        else if (!strcmp(a, "-f") || !strcmp(a, "--file")) { if (!has) return cli_usage_error("imatrix", "-f needs a file"); text_path = argv[++i]; }
        else if (!strcmp(a, "-o") || !strcmp(a, "--output")) { if (!has) return cli_usage_error("imatrix", "-o needs a file"); out_path = argv[++i]; }
        else if (!strcmp(a, "--output-format")) { if (!has) return cli_usage_error("imatrix", "%s needs dat or gguf", a); fmt = argv[++i]; }
        else if (!strcmp(a, "--in-file")) {
            if (!has) return cli_usage_error("imatrix", "--in-file needs a file");
            if (n_in >= MAX_IN_FILES) return cli_usage_error("imatrix", "too many --in-file");
            in_files[n_in++] = argv[++i];
        }
        else if (!strcmp(a, "--no-ppl")) no_ppl = 1;
        else if (!strcmp(a, "--show-statistics")) show_stats = 1;
        else if (!strcmp(a, "--process-output")) process_output = 1;
        else if (!strcmp(a, "--hessian")) { if (!has) return cli_usage_error("imatrix", "--hessian needs a file"); hessian_path = argv[++i]; }
        else return cli_usage_error("imatrix", "unknown argument '%s'", a);
    }
    if (fmt && strcmp(fmt, "dat") != 0 && strcmp(fmt, "gguf") != 0)
        return cli_usage_error("imatrix", "--output-format must be dat or gguf, not '%s'", fmt);
    int gguf = fmt ? strcmp(fmt, "gguf") == 0 : !ends_with(out_path, ".dat");
    if (show_stats) {
        if (n_in == 0 || text_path) return cli_usage_error("imatrix", "--show-statistics reads --in-file FILE (and no -f)");
        struct moeq_imatrix *im = moeq_imatrix_new();
        char serr[512];
        for (int i = 0; i < n_in; i++)
            if (moeq_imatrix_load(im, in_files[i], serr, sizeof serr) != 0) {
                cli_error("imatrix: %s", serr);
                moeq_imatrix_free(im);
                return 1;
            }
        show_statistics(im);
        moeq_imatrix_free(im);
        return 0;
    }
    if (!text_path && n_in == 0) return cli_usage_error("imatrix", "-f TEXT (or --in-file to merge) is required");
    if (text_path && !model) return cli_usage_error("imatrix", "-m MODEL is required with -f");
    if (n_ctx < 8 || skip < 0 || out_freq < 0) return cli_usage_error("imatrix", "bad -c, --chunk or --output-frequency");
    /* the model, the text and every --in-file are inputs, never the output */
    const char *inputs[MAX_IN_FILES + 2];
    int n_inputs = 0;
    inputs[n_inputs++] = model;
    inputs[n_inputs++] = text_path;
    for (int i = 0; i < n_in; i++) inputs[n_inputs++] = in_files[i];
    char err[512];
    if (moeq_outfile_check(out_path, inputs, n_inputs, err, sizeof err) != 0 ||
        (hessian_path && moeq_outfile_check(hessian_path, inputs, n_inputs, err, sizeof err) != 0)) {
        cli_error("imatrix: %s", err);
        return 1;
    }
    if (hessian_path && !text_path) return cli_usage_error("imatrix", "--hessian needs -f TEXT");
    if (hessian_path && !strcmp(hessian_path, out_path))
        return cli_usage_error("imatrix", "--hessian and -o must be different files");

    struct collector col;
    memset(&col, 0, sizeof col);
    pthread_mutex_init(&col.mu, NULL);
    col.im = moeq_imatrix_new();
    col.process_output = process_output;
    if (hessian_path) col.hs = moeq_hessian_new();
    int rc = 1;
    moeq_engine *e = NULL;
    moeq_session *s = NULL;
    int32_t *tokens = NULL;
    float *logits = NULL;

    col.im->chunk_size = n_ctx; /* weight of legacy .dat data when merging */
    /* merged data should come from one chunk size; a .dat does not say */
    int64_t first_cs = text_path ? n_ctx : 0;
    const char *first_src = text_path ? "-c" : NULL;
    for (int i = 0; i < n_in; i++) {
        int64_t cs = file_chunk_size(in_files[i]);
        if (cs == 0) {
            cli_info("imatrix: note: %s stores no chunk size (legacy .dat); taken as %lld tokens",
                    in_files[i], (long long)n_ctx);
            continue;
        }
        if (!first_src) { first_cs = cs; first_src = in_files[i]; }
        else if (cs != first_cs)
            cli_warn("imatrix: warning: %s was computed with chunks of %lld tokens, %s with %lld; "
                     "the merged statistics mix chunk sizes", in_files[i], (long long)cs, first_src, (long long)first_cs);
    }
    for (int i = 0; i < n_in; i++) {
        if (moeq_imatrix_load(col.im, in_files[i], err, sizeof err) != 0) { cli_error("imatrix: %s", err); goto out; }
        cli_info("imatrix: merged %s", in_files[i]);
    }
    if (!text_path) {
        rc = save(col.im, out_path, gguf, (int)col.im->chunk_count, 0, inputs, n_inputs) ? 1 : 0;
        goto out;
    }

    struct moeq_engine_params ep = { model, (int)n_threads, (int)n_ctx, 1, MOEQ_KV_F16, MOEQ_KV_F16, (int)(n_ctx < 512 ? n_ctx : 512) };
    e = moeq_engine_open(&ep, err, sizeof err);
    if (!e) { cli_error("%s", err); goto out; }
    const struct moeq_model_info *mi = moeq_engine_info(e);
    col.n_expert = mi->n_expert > 0 ? mi->n_expert : 1;
    const int64_t n_loaded = col.im->n_entries;

    size_t tlen;
    char *text = cli_read_file(text_path, &tlen, err, sizeof err);
    if (!text) { cli_error("imatrix: %s", err); goto out; }
    if (tlen == 0) { free(text); cli_error("imatrix: %s is empty", text_path); goto out; }
    int got;
    tokens = moeq_tokenize_text(e, text, tlen, 0, &got, err, sizeof err);
    free(text);
    if (!tokens) { cli_error("imatrix: cannot tokenize %s: %s", text_path, err); goto out; }
    int n_chunk = got / (int)n_ctx;
    if (n_chunk - skip < 1) {
        cli_error("imatrix: %s tokenizes to %d tokens: not enough for one chunk of %lld after skipping %lld",
                  text_path, got, (long long)n_ctx, (long long)skip);
        goto out;
    }
    int last = n_chunk;
    if (max_chunks > 0 && skip + max_chunks < last) last = (int)(skip + max_chunks);

    logits = malloc((size_t)n_ctx * (size_t)mi->n_vocab * sizeof *logits);
    s = moeq_session_new(e, err, sizeof err);
    if (!logits || !s) { cli_error("imatrix: %s", s ? "out of memory" : err); goto out; }
    moeq_imatrix_add_dataset(col.im, text_path);
    col.im->chunk_size = n_ctx;
    moeq_engine_set_act_hook(e, hook, &col);
    cli_info("imatrix: %d tokens, chunks %lld..%d of %lld tokens", got, (long long)skip, last - 1, (long long)n_ctx);

    double nll = 0;
    long count = 0;
    double t0 = moeq_now_s();
    int done = 0;
    for (int c = (int)skip; c < last; c++) {
        int32_t *ct = tokens + (size_t)c * (size_t)n_ctx;
        moeq_session_sync(s, NULL, 0);
        int32_t saved = ct[0];
        if (mi->add_bos) ct[0] = mi->bos;
        /* every position's logits for the perplexity, and for output.weight's
         * statistics to count every position's input (without them only the
         * last token reaches the output matmul) */
        int erc = moeq_session_eval(s, ct, (int)n_ctx, no_ppl && !process_output ? NULL : logits, err, sizeof err);
        ct[0] = saved;
        if (erc != 0) { cli_error("imatrix: %s", err); goto out; }
        if (col.failed) {
            cli_error("imatrix: %s: %s (is an --in-file from a different model?)", model, col.err);
            goto out;
        }
        done++;
        col.im->chunk_count++;
        for (int64_t k = 0; k < col.im->n_entries && k < col.touched_cap; k++)
            if (col.touched[k]) col.im->entries[k].ncall++;
        /* merged files must belong to this model: each of their entries is
         * a weight this model multiplies (shape conflicts fail in the hook) */
        if (done == 1)
            for (int64_t k = 0; k < n_loaded; k++)
                if (k >= col.touched_cap || !col.touched[k]) {
                    cli_error("imatrix: %s has no weight %s from the merged imatrix (a different model?)",
                              model, col.im->entries[k].name);
                    goto out;
                }
        if (!no_ppl) {
            for (int j = (int)n_ctx / 2; j < n_ctx - 1; j++) {
                nll += cli_token_nll(logits + (size_t)j * mi->n_vocab, mi->n_vocab, ct[j + 1]);
                count++;
            }
            printf("[%d]%.4f,", done, exp(nll / (double)count));
            fflush(stdout);
        }
        double el = moeq_now_s() - t0;
        cli_progress("imatrix: chunk %d/%d  %.1fs  ETA %.1fs", done, last - (int)skip, el,
                     el / done * (last - (int)skip - done));
        if (out_freq > 0 && done % out_freq == 0 && c + 1 < last) {
            cli_progress_end();
            if (save(col.im, out_path, gguf, done, 1, inputs, n_inputs) != 0) goto out;
        }
    }
    cli_progress_end();
    if (!no_ppl) printf("\nFinal estimate: PPL = %.4f\n", exp(nll / (double)count));
    rc = save(col.im, out_path, gguf, done, 0, inputs, n_inputs) ? 1 : 0;
    if (rc == 0 && col.hs) {
        if (moeq_hessian_save(col.hs, hessian_path, inputs, n_inputs, err, sizeof err) != 0) {
            cli_error("imatrix: %s", err);
            rc = 1;
        } else {
            cli_info("imatrix: saved %lld Hessian entries to %s", (long long)col.hs->n_entries, hessian_path);
        }
    }
out:
    moeq_hessian_free(col.hs);
    moeq_session_free(s);
    moeq_engine_close(e);
    moeq_imatrix_free(col.im);
    free(col.touched);
    pthread_mutex_destroy(&col.mu);
    free(tokens);
    free(logits);
    return rc;
}
