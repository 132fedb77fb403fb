/*
 * cmd_fit.c: `moeq fit`, will this model and context fit this memory?
 *
 * Reads only the GGUF header, with the engine's hyperparameter reader
 * (src/model/model.h), or a synth preset's shape, so the full Qwen3-30B-A3B can
 * be checked without writing 11 GB; and predicts the engine's memory with
 * the plan the engine allocates from (src/engine/engine_mem.h): weights, exact KV
 * cache per layer, compute buffers, per-session buffers and runtime
 * overhead. Prints a verdict against the budget (less a reserve for the
 * OS) and the largest context that fits with F16 and with Q8_0 KV.
 */
#include "cmd.h"
#include "engine/engine_mem.h"
#include "gguf/gguf.h"
#include "model/model.h"
#include "engine/pool.h"
#include "synth/synth.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *out)
{
    char known[256];
    fprintf(out,
        "usage: moeq fit (-m MODEL | --preset NAME [--recipe R]) [options]\n"
        "\n"
        "Predict the memory moeq run/serve needs and whether it fits a budget.\n"
        "  -m FILE            GGUF model (only the header is read)\n"
        "  --preset NAME      a synth shape instead (tiny, qwen3-30b-a3b)\n"
        "  --recipe R         with --preset: %s, f32, f16, bf16 or a\n"
        "                     quantize mix such as Q4_K_M (default f32)\n"
        "  -c N               context per session (default 4096, or the model's\n"
        "                     training context if smaller, as run does)\n"
        "  --parallel N       sessions (default 1)\n"
        "  -ctk T, -ctv T     KV cache types f16 (default) or q8_0\n"
        "  -b N               prompt batch (default 512)\n"
        "  -t N               threads (default: all cores)\n"
        "  --budget SIZE      memory budget, e.g. 16G (GiB; default 16G)\n"
        "  --reserve SIZE     left for the OS and other programs (default 1G)\n"
        "  --json             print one JSON object with all the numbers\n"
        "  -q, -v, --log-level L  quiet, verbose, or error|warn|info|debug\n"
        "\nexit status: with --budget, 0 when it fits and 1 when it does not (or on\n"
        "an error); without --budget the verdict is against the default 16G and the\n"
        "status is 0 either way (1 only on an error).\n"
        "\nexample:\n"
        "  moeq fit --preset qwen3-30b-a3b --recipe asym-2bitexp -c 16384 --budget 16G\n",
        cli_recipe_names(known, sizeof known));
}

/* Shape and weight bytes of a synth preset, tensor by tensor as synth
 * writes them. */
static int preset_shape(const char *preset, const char *recipe, struct moeq_mem_shape *s,
                        int *ctx_train, char *name, size_t nlen)
{
    moeq_synth_cfg c;
    if (moeq_synth_preset(&c, preset) != 0) return -1;
    if (recipe && moeq_synth_recipe(&c, recipe) != 0) return -2;
    memset(s, 0, sizeof *s);
    s->n_layer = c.n_layer; s->n_embd = c.n_embd; s->n_head = c.n_head; s->n_head_kv = c.n_head_kv;
    s->head_dim = c.head_dim; s->n_expert = c.n_expert; s->n_expert_used = c.n_expert_used;
    s->n_ff = c.n_ff_exp; s->n_vocab = c.n_vocab; s->n_merges = c.n_vocab;
    s->weight_bytes = moeq_synth_weight_bytes(&c);
    *ctx_train = c.n_ctx;
    snprintf(name, nlen, "synth preset %s (%s)", preset, recipe ? recipe : "f32");
    return 0;
}

static int file_shape(const char *path, struct moeq_mem_shape *s, int *ctx_train, char *name,
                      size_t nlen, char *err, size_t errlen)
{
    gguf_file *f = gguf_open(path, err, errlen);
    if (!f) return -1;
    struct moeq_hparams hp;
    int rc = moeq_hparams_read(f, path, &hp, err, errlen);
    if (rc == 0) {
        moeq_mem_shape_of(&hp, s);
        *ctx_train = hp.n_ctx_train;
        const gguf_kv *m = gguf_find_kv(f, "tokenizer.ggml.merges");
        s->n_merges = m && m->val.type == GGUF_TYPE_ARRAY ? (int)m->val.v.arr.n : 0;
        for (uint64_t i = 0; i < f->n_tensors; i++) s->weight_bytes += f->tensors[i].nbytes;
        snprintf(name, nlen, "%s (%s)", path, hp.arch);
    }
    gguf_close(f);
    return rc;
}

static double gib(uint64_t b) { return (double)b / (1024.0 * 1024 * 1024); }

int cmd_fit(int argc, char **argv)
{
    const char *model = NULL, *preset = NULL, *recipe = NULL;
    int64_t n_ctx = 0, n_par = 1, n_batch = 512, n_threads = 0;
    int tk = MOEQ_KV_F16, tv = MOEQ_KV_F16;
    uint64_t budget = 16ull << 30, reserve = 1ull << 30;
    int have_budget = 0, json = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (cli_is_help(a)) { usage(stdout); return 0; }
        CLI_LOG_OPTION("fit", argc, argv, i);
        if (!strcmp(a, "--json")) { json = 1; continue; }
        if (i + 1 >= argc) return cli_usage_error("fit", "unknown argument or missing value: '%s'", a);
        const char *v = argv[++i];
        int kv;
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) model = v;
        else if (!strcmp(a, "--preset")) preset = v;
        else if (!strcmp(a, "--recipe")) recipe = v;
        else if (!strcmp(a, "-c") || !strcmp(a, "--ctx-size")) { if (cli_parse_i64(v, &n_ctx) || n_ctx < 1) return cli_usage_error("fit", "bad -c '%s'", v); }
        else if (!strcmp(a, "--parallel") || !strcmp(a, "-np")) { if (cli_parse_i64(v, &n_par) || n_par < 1) return cli_usage_error("fit", "bad --parallel '%s'", v); }
        else if (!strcmp(a, "-b")) { if (cli_parse_i64(v, &n_batch) || n_batch < 1) return cli_usage_error("fit", "bad -b '%s'", v); }
        else if (!strcmp(a, "-t")) { if (cli_parse_i64(v, &n_threads)) return cli_usage_error("fit", "bad -t '%s'", v); }
        else if ((kv = cli_kv_option(a, v, &tk, &tv)) != 0) { if (kv < 0) return cli_usage_error("fit", "KV type must be f16 or q8_0, not '%s'", v); }
        else if (!strcmp(a, "--budget")) { if (cli_parse_size(v, &budget)) return cli_usage_error("fit", "bad --budget '%s'", v); have_budget = 1; }
        else if (!strcmp(a, "--reserve")) { if (cli_parse_size(v, &reserve)) return cli_usage_error("fit", "bad --reserve '%s'", v); }
        else return cli_usage_error("fit", "unknown argument '%s'", a);
    }
    if (!!model == !!preset) return cli_usage_error("fit", "give exactly one of -m MODEL or --preset NAME");
    if (recipe && !preset) return cli_usage_error("fit", "--recipe goes with --preset");

    struct moeq_mem_shape s;
    int ctx_train = 0;
    char name[512], err[512];
    if (preset) {
        int r = preset_shape(preset, recipe, &s, &ctx_train, name, sizeof name);
        if (r == -1) return cli_usage_error("fit", "unknown preset '%s'", preset);
        if (r == -2) return cli_usage_error("fit", "unknown recipe '%s'", recipe);
    } else if (file_shape(model, &s, &ctx_train, name, sizeof name, err, sizeof err) != 0) {
        cli_error("%s", err);
        return 1;
    }
    if (n_ctx == 0) n_ctx = ctx_train > 0 && ctx_train < 4096 ? ctx_train : 4096;
    else if (ctx_train > 0 && n_ctx > ctx_train) {
        cli_error("fit: context %lld exceeds the model's %d", (long long)n_ctx, ctx_train);
        return 1;
    }
    if (n_threads <= 0) n_threads = moeq_ncores();
    struct moeq_mem_opts o = { (int)n_ctx, (int)n_par, (int)n_batch, (int)n_threads, tk, tv };
    struct moeq_mem_plan p;
    if (moeq_mem_estimate(&s, &o, &p) != 0) {
        cli_error("fit: %s: the shape cannot be planned", name);
        return 1;
    }
    uint64_t avail = budget > reserve ? budget - reserve : 0;
    int fits = p.total <= avail;
    int limit = ctx_train > 0 ? ctx_train : 1 << 20;
    struct moeq_mem_opts of = o, oq = o;
    of.type_k = of.type_v = MOEQ_KV_F16;
    oq.type_k = oq.type_v = MOEQ_KV_Q8_0;
    int cf = moeq_mem_max_ctx(&s, &of, avail, limit), cq = moeq_mem_max_ctx(&s, &oq, avail, limit);
    int rc = have_budget && !fits ? 1 : 0;
    if (json) {
        json_t *j = json_pack("{s:s, s:{s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i},"
                              " s:{s:I, s:I, s:s, s:s, s:I, s:I},"
                              " s:{s:I, s:I, s:I, s:I, s:I, s:I},"
                              " s:I, s:I, s:I, s:b, s:b, s:I, s:{s:i, s:i}}",
            "model", name,
            "shape", "n_layer", s.n_layer, "n_embd", s.n_embd, "n_head", s.n_head, "n_head_kv", s.n_head_kv,
            "head_dim", s.head_dim, "n_expert", s.n_expert, "n_expert_used", s.n_expert_used,
            "n_ff", s.n_ff, "n_vocab", s.n_vocab, "n_ctx_train", ctx_train,
            "setting", "n_ctx", (json_int_t)n_ctx, "parallel", (json_int_t)n_par,
            "type_k", moeq_kv_type_name(tk), "type_v", moeq_kv_type_name(tv),
            "n_batch", (json_int_t)n_batch, "n_threads", (json_int_t)n_threads,
            "bytes", "weights", (json_int_t)p.weights, "kv", (json_int_t)p.kv,
            "compute", (json_int_t)p.compute, "sessions", (json_int_t)p.sessions,
            "runtime", (json_int_t)p.overhead, "total", (json_int_t)p.total,
            "budget", (json_int_t)budget, "reserve", (json_int_t)reserve, "available", (json_int_t)avail,
            "budget_given", have_budget, "fits", fits,
            "margin", (json_int_t)((int64_t)avail - (int64_t)p.total),
            "max_ctx", "f16", cf, "q8_0", cq);
        return cli_print_json(j, "fit") ? 1 : rc;
    }
    printf("model     %s\n", name);
    printf("shape     %d layers, n_embd %d, %d/%d heads x %d, %d experts (%d used) x %d, vocab %d\n",
           s.n_layer, s.n_embd, s.n_head, s.n_head_kv, s.head_dim, s.n_expert, s.n_expert_used, s.n_ff, s.n_vocab);
    printf("setting   context %lld x %lld session(s), KV %s/%s, batch %lld, %lld threads\n",
           (long long)n_ctx, (long long)n_par, moeq_kv_type_name(tk), moeq_kv_type_name(tv),
           (long long)n_batch, (long long)n_threads);
    printf("weights   %8.3f GiB  (%.2f GB, mapped)\n", gib(p.weights), (double)p.weights / 1e9);
    printf("kv cache  %8.3f GiB  (%d layers x %lld tokens x %d values x K+V, %lld session(s))\n",
           gib(p.kv), s.n_layer, (long long)n_ctx, s.n_head_kv * s.head_dim, (long long)n_par);
    printf("compute   %8.3f GiB\n", gib(p.compute));
    printf("sessions  %8.3f GiB\n", gib(p.sessions));
    printf("runtime   %8.3f GiB\n", gib(p.overhead));
    printf("total     %8.3f GiB  (%.2f GB)\n", gib(p.total), (double)p.total / 1e9);
    printf("budget    %8.3f GiB  less %.3f GiB reserve = %.3f GiB%s\n", gib(budget), gib(reserve), gib(avail),
           have_budget ? "" : "  (default; no --budget: exit status 0 either way)");
    if (fits) printf("verdict   FITS (%.3f GiB to spare)\n", gib(avail - p.total));
    else printf("verdict   DOES NOT FIT (%.3f GiB over)\n", gib(p.total - avail));
    printf("max ctx   %d tokens with F16 KV, %d tokens with Q8_0 KV (per session, %lld session(s))\n",
           cf, cq, (long long)n_par);
    return rc;
}
