/*
 * cmd_tokenize.c: `moeq tokenize`, the tokenizer alone. It opens only the
 * GGUF header (the tokenizer.* metadata), never the weights or the engine,
 * and prints the ids of a text as llama-tokenize does: one
 * "  ID -> 'PIECE'" line per token, or with --ids a Python-style list.
 */
#include "cmd.h"
#include "gguf/gguf.h"
#include "model/tokenizer.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *o)
{
    fprintf(o,
        "usage: moeq tokenize -m MODEL (-p TEXT | -f FILE) [--ids] [--special]\n"
        "\n"
        "Tokenize a text with the model's tokenizer and print the token ids.\n"
        "\n"
        "  -m, --model FILE    GGUF file (only its tokenizer metadata is read)\n"
        "  -p, --prompt TEXT   the text\n"
        "  -f, --file FILE     read the text from FILE ('-' for standard input)\n"
        "  --ids               print only the ids, as a list: [1, 2, 3]\n"
        "  --special           recognize control tokens such as <|im_start|> in the text\n"
        "  --show-count        print the number of tokens at the end\n"
        "  -q, -v, --log-level L  quiet, verbose, or error|warn|info|debug\n"
        "  -h, --help          this help\n"
        "\n"
        "No BOS token is added; the model's add_bos_token is reported on stderr when set.\n");
}

/* Is p[0..n) valid UTF-8? (Pieces may end inside a character.) */
static int valid_utf8(const unsigned char *p, int n)
{
    for (int i = 0; i < n;) {
        unsigned c = p[i];
        int k = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
        if (!k || (k == 2 && c < 0xC2) || i + k > n) return 0;
        for (int j = 1; j < k; j++)
            if ((p[i + j] & 0xC0) != 0x80) return 0;
        i += k;
    }
    return 1;
}

int cmd_tokenize(int argc, char **argv)
{
    const char *model = NULL, *prompt = NULL, *file = NULL;
    int ids_only = 0, special = 0, show_count = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (cli_is_help(a)) { usage(stdout); return 0; }
        CLI_LOG_OPTION("tokenize", argc, argv, i);
        int has_val = i + 1 < argc;
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
            if (!has_val) return cli_usage_error("tokenize", "%s needs a file", a);
            model = argv[++i];
        } else if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) {
            if (!has_val) return cli_usage_error("tokenize", "%s needs a text", a);
            prompt = argv[++i];
        } else if (!strcmp(a, "-f") || !strcmp(a, "--file")) {
            if (!has_val) return cli_usage_error("tokenize", "%s needs a file", a);
            file = argv[++i];
        } else if (!strcmp(a, "--ids")) {
            ids_only = 1;
        } else if (!strcmp(a, "--special")) {
            special = 1;
        } else if (!strcmp(a, "--show-count")) {
            show_count = 1;
        } else {
            return cli_usage_error("tokenize", "unknown option '%s'", a);
        }
    }
    if (!model) return cli_usage_error("tokenize", "-m MODEL is required");
    if (!prompt == !file) return cli_usage_error("tokenize", "give exactly one of -p TEXT and -f FILE");

    char *text = NULL;
    size_t len;
    if (file) {
        char rerr[512];
        text = cli_read_file(file, &len, rerr, sizeof rerr);
        if (!text) { cli_error("%s", rerr); return 1; }
    } else {
        len = strlen(prompt);
    }

    char err[512];
    gguf_file *g = gguf_open(model, err, sizeof err);
    if (!g) { cli_error("%s", err); free(text); return 1; }
    moeq_tokenizer *t = moeq_tokenizer_load(g, err, sizeof err);
    gguf_close(g);
    if (!t) { cli_error("%s", err); free(text); return 1; }

    const char *src = text ? text : prompt;
    if (len >= (size_t)INT32_MAX) {
        cli_error("tokenize: the text is %zu bytes, more than one call can take", len);
        moeq_tokenizer_free(t);
        free(text);
        return 1;
    }
    int rc = 0;
    /* Every token covers at least one byte, so len + 1 ids always suffice. */
    int32_t *ids = malloc((len + 1) * sizeof *ids);
    int n = ids ? moeq_tokenizer_encode(t, src, len, special, ids, (int)(len + 1)) : -1;
    if (n < 0) {
        cli_error("tokenize: %s", ids ? "text too long" : "out of memory");
        rc = 1;
    } else {
        struct moeq_token_specials sp;
        moeq_tokenizer_specials(t, &sp);
        if (sp.add_bos)
            cli_info("note: this model adds BOS %d before a prompt; not shown", sp.bos);
        if (ids_only) {
            fputc('[', stdout);
            for (int i = 0; i < n; i++) printf(i ? ", %d" : "%d", ids[i]);
            fputs("]\n", stdout);
        } else {
            for (int i = 0; i < n; i++) {
                int pl;
                const unsigned char *p = (const unsigned char *)moeq_tokenizer_piece_ref(t, ids[i], &pl);
                printf("%6d -> '", ids[i]);
                if (valid_utf8(p, pl)) {
                    fwrite(p, 1, (size_t)pl, stdout);
                    fputs("'\n", stdout);
                } else {
                    /* Part of a character: show the bytes. */
                    fputc('<', stdout);
                    for (int j = 0; j < pl; j++) printf(j ? " %02x" : "%02x", p[j]);
                    fputs(">' (utf-8 decode failure)\n", stdout);
                }
            }
        }
        if (show_count) printf("Total number of tokens: %d\n", n);
        if (fflush(stdout) != 0) { cli_error("tokenize: writing the output: %s", strerror(errno)); rc = 1; }
    }
    free(ids);
    moeq_tokenizer_free(t);
    free(text);
    return rc;
}
