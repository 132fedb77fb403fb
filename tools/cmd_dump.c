/*
 * cmd_dump.c: `moeq dump FILE TENSOR [-o OUT]`: one tensor, dequantized to
 * little-endian f32, written to OUT (through src/util/outfile: a temporary file
 * renamed at the end, so a failed dump never leaves half a file, and never
 * the input) or to stdout.
 *
 * Works a chunk of rows at a time so a large tensor never needs its whole
 * f32 copy in memory.
 */
#include "cmd.h"
#include "gguf/gguf.h"
#include "util/outfile.h"
#include "quant/quants.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CHUNK_ELEMS (1u << 20)  /* f32 values converted per step (4 MiB) */

static void usage(FILE *out)
{
    fprintf(out,
            "usage: moeq dump FILE TENSOR [-o OUT]\n"
            "\n"
            "Write tensor TENSOR of the GGUF file FILE dequantized, as little-endian\n"
            "f32 values in ggml order (ne0 fastest), to OUT or to stdout.\n"
            "\n"
            "  -o OUT   output file (written to a temporary file, then renamed)\n"
            "  -q, -v, --log-level L  quiet, verbose, or error|warn|info|debug\n");
}

/* F32/F16/BF16 are converted here when the traits table has no to_float
 * for them, so dump works for unquantized files on its own. */
static int to_f32(int type, const void *src, float *dst, int64_t n)
{
    if (moeq_dequantize(type, src, dst, n) == 0) return 0;
    const uint8_t *p = src;
    switch (type) {
    case MOEQ_TYPE_F32:
        memcpy(dst, src, (size_t)n * 4);
        return 0;
    case MOEQ_TYPE_F16:
        for (int64_t i = 0; i < n; i++) { uint16_t h; memcpy(&h, p + 2 * i, 2); dst[i] = moeq_f16_to_f32(h); }
        return 0;
    case MOEQ_TYPE_BF16:
        for (int64_t i = 0; i < n; i++) { uint16_t h; memcpy(&h, p + 2 * i, 2); dst[i] = moeq_bf16_to_f32(h); }
        return 0;
    default:
        return -1;
    }
}

int cmd_dump(int argc, char **argv)
{
    const char *path = NULL, *name = NULL, *out_path = NULL;
    for (int i = 1; i < argc; i++) {
        if (cli_is_help(argv[i])) { usage(stdout); return 0; }
        CLI_LOG_OPTION("dump", argc, argv, i);
        if (!strcmp(argv[i], "-o")) {
            if (i + 1 >= argc) return cli_usage_error("dump", "-o needs a file name");
            out_path = argv[++i];
        } else if (argv[i][0] == '-' && argv[i][1]) {
            return cli_usage_error("dump", "unknown option '%s'", argv[i]);
        } else if (!path) {
            path = argv[i];
        } else if (!name) {
            name = argv[i];
        } else {
            return cli_usage_error("dump", "unexpected argument '%s'", argv[i]);
        }
    }
    if (!path || !name) return cli_usage_error("dump", "need FILE and TENSOR");
    if (!out_path && isatty(STDOUT_FILENO)) {
        cli_error("dump: refusing to write binary f32 to a terminal (use -o OUT or a pipe)");
        return 1;
    }

    char err[1024];
    gguf_file *f = gguf_open(path, err, sizeof err);
    if (!f) { cli_error("%s", err); return 1; }
    int64_t ti = gguf_find_tensor(f, name);
    if (ti < 0) {
        cli_error("%s: no tensor named '%s' (see 'moeq info %s')", path, name, path);
        gguf_close(f);
        return 1;
    }
    const gguf_tensor *t = &f->tensors[ti];
    const struct moeq_type_traits *tr = moeq_type_traits((int)t->type);
    int rc = 1;
    float *buf = NULL;
    FILE *out = stdout;
    moeq_outfile *of = NULL;

    /* Probe the conversion on one block before creating any output. */
    float probe[256];
    if ((uint64_t)tr->blck_size > sizeof probe / sizeof probe[0] ||
        to_f32((int)t->type, t->data, probe, tr->blck_size) != 0) {
        cli_error("%s: tensor '%s': no dequantizer for type %s in this build", path, name, tr->name);
        goto done;
    }

    if (out_path) {
        of = moeq_outfile_open(out_path, &path, 1, err, sizeof err);
        if (!of) { cli_error("dump: %s", err); goto done; }
        out = moeq_outfile_fp(of);
    }

    /* Whole rows per chunk keep every conversion call on block boundaries. */
    uint64_t nelem = t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
    uint64_t row = t->ne[0];
    uint64_t rows_per = row >= CHUNK_ELEMS ? 1 : CHUNK_ELEMS / row;
    uint64_t row_bytes = t->nbytes / (nelem / row);
    buf = malloc((size_t)(rows_per * row) * sizeof(float));
    if (!buf) { cli_error("out of memory"); goto done; }
    for (uint64_t r = 0; r < nelem / row; r += rows_per) {
        uint64_t nr = nelem / row - r < rows_per ? nelem / row - r : rows_per;
        const uint8_t *src = (const uint8_t *)t->data + r * row_bytes;
        if (to_f32((int)t->type, src, buf, (int64_t)(nr * row)) != 0) {
            cli_error("%s: tensor '%s': dequantization failed", path, name);
            goto done;
        }
        if (fwrite(buf, sizeof(float), (size_t)(nr * row), out) != nr * row) break;
    }
    if (of) {
        moeq_outfile *o = of;
        of = NULL;
        if (moeq_outfile_commit(o, err, sizeof err) != 0) { cli_error("dump: %s", err); goto done; }
    } else if (fflush(out) != 0 || ferror(out)) {
        cli_error("dump: writing stdout: %s", strerror(errno));
        goto done;
    }
    rc = 0;
done:
    moeq_outfile_abort(of);
    free(buf);
    gguf_close(f);
    return rc;
}
