/*
 * cmd_synth.c: `moeq synth`, a synthesized qwen3moe GGUF of any shape
 * (src/synth/synth.c does the work). Flags are applied in order after the
 * preset, so `--recipe asym-2bitexp --type-attn-v Q8_0` changes one group of
 * the recipe.
 */
#include "cmd.h"
#include "quant/quants.h"
#include "synth/synth.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

static void usage(FILE *out)
{
    fprintf(out,
        "usage: moeq synth -o FILE [options]\n"
        "\n"
        "Write a qwen3moe GGUF with deterministic pseudo-random weights (same\n"
        "options and seed: same bytes, at any thread count) and a byte-level BPE\n"
        "tokenizer with ChatML control tokens.\n"
        "\n"
        "  -o, --output FILE     the file to write (required)\n"
        "  --preset NAME         tiny (default: 2 layers, n_embd 256, 4/2 heads x 64,\n"
        "                        8 experts (2 used) x 256, vocab 512, ctx 512) or\n"
        "                        qwen3-30b-a3b (48 layers, n_embd 2048, 32/4 heads x 128,\n"
        "                        128 experts (8 used) x 768, vocab 151936, ctx 262144,\n"
        "                        rope base 1e7)\n"
        "  --seed N              weight seed (default 1836016993)\n"
        "  --split-max-size N[M|G] write a split set FILE-00001-of-0000N.gguf, parts of\n"
        "                        at most N bytes of tensor data\n"
        "  --name S              general.name\n"
        "  --chat-template FILE  tokenizer.chat_template from FILE (Jinja; default: a\n"
        "                        plain ChatML template)\n"
        "shape (override the preset):\n"
        "  --layers N  --n-embd N  --heads N  --kv-heads N  --head-dim N\n"
        "  --experts N  --experts-used N  --ff-exp N  --ff N (dense, metadata only)\n"
        "  --vocab N  --ctx N  --rope-base X  --rms-eps X\n"
        "types (F32 by default; applied in order):\n"
        "  --recipe NAME         a recipe (norms and router F32):\n");
    cli_print_recipes(out, "                          ");
    fprintf(out,
        "                        also f32, f16, bf16, or a quantize mix (Q4_K_M,\n"
        "                        Q8_0, ...): each tensor gets the type moeq quantize\n"
        "                        gives it, layer rules included (a later --type flag\n"
        "                        sets a whole group)\n"
        "  --type T              every weight group (not norms, router)\n"
        "  --type-embd T  --type-output T  --type-norm T  --type-router T\n"
        "  --type-attn T  (q, k, v, output)  --type-attn-q T  --type-attn-k T\n"
        "  --type-attn-v T  --type-attn-output T\n"
        "  --type-experts T  (gate, up, down)  --type-exp-gate T  --type-exp-up T\n"
        "  --type-exp-down T\n"
        "  A row length a type's block does not divide falls back per tensor as in\n"
        "  llama.cpp: i-quants, Q2_K, Q3_K, IQ4_XS -> IQ4_NL; Q4_K..Q6_K -> Q8_0;\n"
        "  then F16. Norms and router must be F32, F16 or BF16.\n"
        "how quantized tensors are made:\n"
        "  --mode auto|quantize|direct\n"
        "                        quantize: generate the float weights and run the\n"
        "                        type's quantizer, so the file is a quantization of the\n"
        "                        F32 model of the same seed (slow: the search-based\n"
        "                        quantizers do well under 1M weights/s per core).\n"
        "                        direct: a few operations per weight. Q4_0, Q8_0,\n"
        "                        Q2_K..Q6_K, IQ4_NL, IQ4_XS round the same float weights\n"
        "                        to the nearest levels (\"round\"); IQ2_XXS, IQ2_XS, IQ2_S,\n"
        "                        IQ3_XXS, IQ3_S get random grid points and signs with\n"
        "                        block and sub-block scales fitted to the weights'\n"
        "                        row/column scale profile (\"random\").\n"
        "                        auto (default): quantize when the model has at most\n"
        "                        16M quantized weights (tiny), else direct (the\n"
        "                        qwen3-30b-a3b asym file: about 2 minutes, 50 MB RSS).\n"
        "                        A type without a quantizer is always direct.\n"
        "  -t, --threads N       threads (default: all cores)\n"
        "  -v, --verbose         progress on stderr\n"
        "\n"
        "Prints the paths taken, the size, the time and the peak RSS on stderr.\n");
}

struct group_flag { const char *flag; int groups[4]; int n; };

static const struct group_flag group_flags[] = {
    { "--type-embd",        { SYNTH_G_EMBD }, 1 },
    { "--type-output",      { SYNTH_G_OUTPUT }, 1 },
    { "--type-norm",        { SYNTH_G_NORM }, 1 },
    { "--type-router",      { SYNTH_G_ROUTER }, 1 },
    { "--type-attn",        { SYNTH_G_ATTN_Q, SYNTH_G_ATTN_K, SYNTH_G_ATTN_V, SYNTH_G_ATTN_OUT }, 4 },
    { "--type-attn-q",      { SYNTH_G_ATTN_Q }, 1 },
    { "--type-attn-k",      { SYNTH_G_ATTN_K }, 1 },
    { "--type-attn-v",      { SYNTH_G_ATTN_V }, 1 },
    { "--type-attn-output", { SYNTH_G_ATTN_OUT }, 1 },
    { "--type-experts",     { SYNTH_G_EXP_GATE, SYNTH_G_EXP_UP, SYNTH_G_EXP_DOWN }, 3 },
    { "--type-exp-gate",    { SYNTH_G_EXP_GATE }, 1 },
    { "--type-exp-up",      { SYNTH_G_EXP_UP }, 1 },
    { "--type-exp-down",    { SYNTH_G_EXP_DOWN }, 1 },
};

struct int_flag { const char *flag; size_t off; };

#define OFF(f) offsetof(moeq_synth_cfg, f)
static const struct int_flag int_flags[] = {
    { "--layers", OFF(n_layer) },     { "--n-embd", OFF(n_embd) },
    { "--heads", OFF(n_head) },       { "--kv-heads", OFF(n_head_kv) },
    { "--head-dim", OFF(head_dim) },  { "--experts", OFF(n_expert) },
    { "--experts-used", OFF(n_expert_used) }, { "--ff-exp", OFF(n_ff_exp) },
    { "--ff", OFF(n_ff) },            { "--vocab", OFF(n_vocab) },
    { "--ctx", OFF(n_ctx) },
};
#undef OFF

/* The command; *tmpl holds a --chat-template file's text for the caller
 * to free whichever way this returns. */
static int synth_main(int argc, char **argv, char **tmpl_out)
{
    const char *cmd = "synth";
    char *tmpl = NULL;
    const char *out = NULL, *preset = "tiny";
    int threads = 0, verbose = 0;
    const char *mix_name = "";

    /* pass 1: help and the preset, which every other flag modifies */
    for (int i = 1; i < argc; i++) {
        if (cli_is_help(argv[i])) { usage(stdout); return 0; }
        if (!strcmp(argv[i], "--preset")) {
            if (i + 1 >= argc) return cli_usage_error(cmd, "--preset needs a value");
            preset = argv[++i];
        }
    }
    moeq_synth_cfg c;
    if (moeq_synth_preset(&c, preset))
        return cli_usage_error(cmd, "unknown preset '%s' (tiny, qwen3-30b-a3b)", preset);

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int lr = cli_log_option(cmd, argc, argv, &i);
        if (lr == 2) return 2;
        if (lr) { verbose = cli_log_level >= CLI_LOG_DEBUG; continue; }
        if (i + 1 >= argc || a[0] != '-') {
            if (a[0] != '-') return cli_usage_error(cmd, "unexpected argument '%s'", a);
            return cli_usage_error(cmd, "%s needs a value", a);
        }
        const char *val = argv[++i];
        int64_t iv;
        double fv;
        if (!strcmp(a, "--preset")) continue;
        if (!strcmp(a, "-o") || !strcmp(a, "--output")) { out = val; continue; }
        if (!strcmp(a, "-t") || !strcmp(a, "--threads")) {
            if (cli_parse_i64(val, &iv) || iv < 1 || iv > 1024)
                return cli_usage_error(cmd, "bad thread count '%s'", val);
            threads = (int)iv;
            continue;
        }
        if (!strcmp(a, "--split-max-size")) {
            if (cli_parse_size(val, &c.split_max_size) || c.split_max_size == 0)
                return cli_usage_error(cmd, "--split-max-size: bad size '%s'", val);
            continue;
        }
        if (!strcmp(a, "--seed")) {
            uint64_t s;
            char *end;
            s = strtoull(val, &end, 0);
            if (!*val || *end || val[0] == '-') return cli_usage_error(cmd, "bad seed '%s'", val);
            c.seed = s;
            continue;
        }
        if (!strcmp(a, "--name")) { snprintf(c.name, sizeof c.name, "%s", val); continue; }
        if (!strcmp(a, "--chat-template")) {
            char rerr[512];
            size_t len;
            free(tmpl);
            tmpl = *tmpl_out = cli_read_file(val, &len, rerr, sizeof rerr);
            if (!tmpl) { cli_error("synth: --chat-template %s", rerr); return 1; }
            c.chat_template = tmpl;
            continue;
        }
        if (!strcmp(a, "--rope-base") || !strcmp(a, "--rms-eps")) {
            if (cli_parse_f64(val, &fv) || !(fv > 0))
                return cli_usage_error(cmd, "bad value '%s' for %s", val, a);
            if (a[2] == 'r' && a[3] == 'o') c.rope_base = fv; else c.rms_eps = fv;
            continue;
        }
        if (!strcmp(a, "--recipe")) {
            mix_name = val;
            char known[256];
            if (moeq_synth_recipe(&c, val))
                return cli_usage_error(cmd, "unknown recipe '%s' (%s, f32, f16, bf16, or a quantize mix such as Q4_K_M)",
                                       val, cli_recipe_names(known, sizeof known));
            continue;
        }
        if (!strcmp(a, "--mode")) {
            if (!strcmp(val, "auto")) c.mode = SYNTH_MODE_AUTO;
            else if (!strcmp(val, "quantize")) c.mode = SYNTH_MODE_QUANTIZE;
            else if (!strcmp(val, "direct")) c.mode = SYNTH_MODE_DIRECT;
            else return cli_usage_error(cmd, "unknown mode '%s' (auto, quantize, direct)", val);
            continue;
        }
        int done = 0;
        for (size_t k = 0; k < sizeof int_flags / sizeof int_flags[0] && !done; k++) {
            if (strcmp(a, int_flags[k].flag)) continue;
            if (cli_parse_i64(val, &iv) || iv < 1 || iv > (1 << 30))
                return cli_usage_error(cmd, "bad value '%s' for %s", val, a);
            *(int *)((char *)&c + int_flags[k].off) = (int)iv;
            done = 1;
        }
        if (!strcmp(a, "--type")) {
            int t = moeq_type_from_name(val);
            if (t < 0 || t == MOEQ_TYPE_Q8_K) return cli_usage_error(cmd, "unknown type '%s'", val);
            for (int g = 0; g < SYNTH_G_COUNT; g++)
                if (g != SYNTH_G_NORM && g != SYNTH_G_ROUTER) c.types[g] = t;
            c.file_type = -1;
            done = 1;
        }
        for (size_t k = 0; k < sizeof group_flags / sizeof group_flags[0] && !done; k++) {
            if (strcmp(a, group_flags[k].flag)) continue;
            int t = moeq_type_from_name(val);
            if (t < 0 || t == MOEQ_TYPE_Q8_K) return cli_usage_error(cmd, "unknown type '%s' for %s", val, a);
            for (int j = 0; j < group_flags[k].n; j++) c.types[group_flags[k].groups[j]] = t;
            c.file_type = -1;
            done = 1;
        }
        if (!done) return cli_usage_error(cmd, "unknown option '%s'", a);
    }
    if (!out) return cli_usage_error(cmd, "-o FILE is required");
    char err[512];
    if (moeq_synth_check(&c, err, sizeof err)) return cli_usage_error(cmd, "%s", err);

    /* which path each group takes, so a reader of the log knows whether
     * the quantized weights are a quantization of the float model */
    fprintf(stderr, "moeq: synth: %s:", out);
    for (int g = 0; g < SYNTH_G_COUNT; g++) {
        int t = c.types[g];
        fprintf(stderr, " %s=%s(%s)", moeq_synth_group_name(g), moeq_type_name(t),
                moeq_synth_path_name(&c, g));
    }
    if (c.mix_ftype >= 0)
        fprintf(stderr, "; the %s mix's rules then pick each tensor's type (see moeq info)", mix_name);
    fputc('\n', stderr);

    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (moeq_synth_write(&c, out, threads, verbose, err, sizeof err)) {
        cli_error("%s", err);
        return 1;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    FILE *f = fopen(out, "rb");
    long long size = -1;
    if (f) { fseek(f, 0, SEEK_END); size = (long long)ftell(f); fclose(f); }
    fprintf(stderr, "moeq: synth: wrote %s: %lld bytes in %.2f s, max RSS %.1f MiB\n", out, size,
            (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec),
            (double)ru.ru_maxrss / 1024.0);
    return 0;
}

int cmd_synth(int argc, char **argv)
{
    char *tmpl = NULL;
    int rc = synth_main(argc, argv, &tmpl);
    free(tmpl);
    return rc;
}
