/*
 * moeq.c: the single binary. Dispatches to one subcommand per file
 * (tools/cmd_*.c); "moeq help" lists them, "moeq --version" prints the
 * version (the VERSION file) and the git commit it was built from (both
 * written into build/version.h by the Makefile).
 */
#include "cmd.h"
#include "version.h"

#include <stdio.h>
#include <string.h>

struct command {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *summary;
};

static const struct command commands[] = {
    { "help",  NULL,      "list the commands" },
    { "version", NULL,    "print the version and the git commit (also --version, -v)" },
    { "info",  cmd_info,  "show a GGUF file: metadata, tensors, group summary, bits per weight" },
    { "dump",  cmd_dump,  "write one tensor dequantized as little-endian f32" },
    { "quantize", cmd_quantize, "quantize a GGUF (llama-quantize compatible; --recipe asym-2bitexp)" },
    { "imatrix", cmd_imatrix, "compute an importance matrix over calibration text" },
    { "perplexity", cmd_perplexity, "perplexity and KL-divergence (llama-perplexity method)" },
    { "compare", cmd_compare, "quantization error of two files against a source, side by side" },
    { "fit",   cmd_fit,   "predict memory use and the largest context that fits a budget" },
    { "tokenize", cmd_tokenize, "print the token ids of a text" },
    { "synth", cmd_synth, "write a synthesized qwen3moe GGUF (any shape, deterministic)" },
    { "run",   cmd_run,   "generate text, or chat (no prompt)" },
    { "bench", cmd_bench, "prompt and generation speed (tokens/s), peak RSS" },
    { "kbench", cmd_kbench, "time the matmul kernels per type and ISA" },
    { "serve", cmd_serve, "OpenAI-compatible HTTP server (chat, completions, streaming, several users)" },
};

static void help(FILE *out)
{
    fprintf(out, "usage: moeq COMMAND [options]   (moeq COMMAND --help for details)\n"
                 "       moeq --version\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(out, "  %-11s %s\n", commands[i].name, commands[i].summary);
}

int main(int argc, char **argv)
{
    if (argc < 2) { help(stderr); return 2; }
    if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "-v") || !strcmp(argv[1], "version")) {
        printf("moeq %s (commit %s)\n", MOEQ_VERSION, MOEQ_COMMIT);
        return 0;
    }
    if (!strcmp(argv[1], "help") || cli_is_help(argv[1])) {
        if (argc > 2 && strcmp(argv[1], "help") == 0) {
            for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
                if (commands[i].fn && !strcmp(commands[i].name, argv[2])) {
                    char *hargv[] = { argv[2], "--help", NULL };
                    return commands[i].fn(2, hargv);
                }
        }
        help(stdout);
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (commands[i].fn && !strcmp(commands[i].name, argv[1]))
            return commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "moeq: unknown command '%s' (see 'moeq help')\n", argv[1]);
    return 2;
}
