/*
 * cmd_compare.c: `moeq compare`, quantization error of two files side by
 * side. For every tensor present in the source and in both candidates, it
 * dequantizes all three and reports each candidate's RMSE and
 * importance-weighted RMSE against the source, and their ratio (B / A).
 * bench/quantize.sh uses it to put moeq's quantizers next to the
 * reference's on the same tensors and the same imatrix.
 */
#include "cmd.h"
#include "gguf/gguf.h"
#include "quant/gptq.h"
#include "quant/hessian.h"
#include "quant/imatrix.h"
#include "quant/quants.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *out)
{
    fprintf(out,
        "usage: moeq compare SOURCE.gguf A.gguf B.gguf [--imatrix FILE] [--hessian FILE]\n"
        "\n"
        "Per tensor present in all three files: RMSE and imatrix-weighted RMSE of A\n"
        "and of B against SOURCE, and B/A. The last line sums over those tensors.\n"
        "\n"
        "  --imatrix FILE   weights of the weighted RMSE\n"
        "  --hessian FILE   also the layer output error per token, sum over matrices of\n"
        "                   tr((W - Q) H (W - Q)^T) / tokens, with H from moeq imatrix\n"
        "                   --hessian (held-out text measures what rounding did not see)\n"
        "  -q, -v, --log-level L  quiet, verbose, or error|warn|info|debug\n"
        "\nexample:\n"
        "  moeq compare model-f16.gguf ours-iq2_s.gguf ref-iq2_s.gguf --imatrix imatrix.dat\n");
}

struct err_acc { double e2, we2, ws; uint64_t n; };

static int tensor_err(const gguf_tensor *src, const gguf_tensor *q, const float *w_all, int64_t w_len,
                      struct err_acc *acc, char *msg, size_t msglen)
{
    const int64_t ne0 = (int64_t)src->ne[0];
    const int64_t rows = (int64_t)(src->ne[1] * src->ne[2] * src->ne[3]);
    const int64_t rows_per_mat = (int64_t)src->ne[1];
    const size_t rs = moeq_row_size((int)src->type, ne0), rq = moeq_row_size((int)q->type, ne0);
    float *a = malloc((size_t)ne0 * sizeof *a), *b = malloc((size_t)ne0 * sizeof *b);
    if (!a || !b || !rs || !rq) {
        free(a); free(b);
        snprintf(msg, msglen, "cannot decode");
        return -1;
    }
    for (int64_t r = 0; r < rows; r++) {
        if (moeq_dequantize((int)src->type, (const uint8_t *)src->data + (size_t)r * rs, a, ne0) ||
            moeq_dequantize((int)q->type, (const uint8_t *)q->data + (size_t)r * rq, b, ne0)) {
            free(a); free(b);
            snprintf(msg, msglen, "no dequantizer");
            return -1;
        }
        const float *w = NULL;
        if (w_all) {
            int64_t mat = r / rows_per_mat;
            w = w_len == ne0 ? w_all : w_all + mat * ne0;
        }
        for (int64_t j = 0; j < ne0; j++) {
            double d = (double)a[j] - b[j], wj = w ? w[j] : 1.0;
            acc->e2 += d * d;
            acc->we2 += wj * d * d;
            acc->ws += wj;
        }
        acc->n += (uint64_t)ne0;
    }
    free(a); free(b);
    return 0;
}

/* Output error per token of q against src under the Hessians of he, summed
 * over the matrices that have data; -1 when it cannot be computed. */
static double output_err(const gguf_tensor *src, const gguf_tensor *q, const struct moeq_hessian_entry *he)
{
    const int64_t ne0 = (int64_t)src->ne[0], rows = (int64_t)src->ne[1];
    const size_t rs = moeq_row_size((int)src->type, ne0), rq = moeq_row_size((int)q->type, ne0);
    float *W = malloc((size_t)(rows * ne0) * sizeof *W);
    double total = 0;
    for (int64_t m = 0; W && m < he->n_mat; m++) {
        if (!(he->counts[m] > 0)) continue;
        const uint8_t *sm = (const uint8_t *)src->data + (size_t)(m * rows) * rs;
        if (moeq_dequantize((int)src->type, sm, W, rows * ne0) != 0) { total = -1; break; }
        double *H = moeq_hessian_matrix(he, m);
        double e = H ? moeq_gptq_output_error((int)q->type, W, (const uint8_t *)q->data + (size_t)(m * rows) * rq,
                                              rows, ne0, H) : -1;
        free(H);
        if (e < 0) { total = -1; break; }
        total += e / he->counts[m];
    }
    free(W);
    return W ? total : -1;
}

int cmd_compare(int argc, char **argv)
{
    const char *pos[3], *im_path = NULL, *h_path = NULL;
    int np = 0;
    for (int i = 1; i < argc; i++) {
        if (cli_is_help(argv[i])) { usage(stdout); return 0; }
        CLI_LOG_OPTION("compare", argc, argv, i);
        if (!strcmp(argv[i], "--imatrix")) {
            if (i + 1 >= argc) return cli_usage_error("compare", "--imatrix needs a file");
            im_path = argv[++i];
        } else if (!strcmp(argv[i], "--hessian")) {
            if (i + 1 >= argc) return cli_usage_error("compare", "--hessian needs a file");
            h_path = argv[++i];
        } else if (argv[i][0] == '-') {
            return cli_usage_error("compare", "unknown option '%s'", argv[i]);
        } else {
            if (np >= 3) return cli_usage_error("compare", "too many files");
            pos[np++] = argv[i];
        }
    }
    if (np != 3) return cli_usage_error("compare", "expected SOURCE.gguf A.gguf B.gguf");
    char err[512];
    gguf_file *f[3] = { NULL, NULL, NULL };
    struct moeq_imatrix *im = NULL;
    struct moeq_hessian *hs = NULL;
    int rc = 1;
    for (int k = 0; k < 3; k++)
        if (!(f[k] = gguf_open(pos[k], err, sizeof err))) { cli_error("%s", err); goto out; }
    if (im_path) {
        im = moeq_imatrix_new();
        if (moeq_imatrix_load(im, im_path, err, sizeof err)) { cli_error("%s", err); goto out; }
    }
    if (h_path) {
        hs = moeq_hessian_new();
        if (moeq_hessian_load(hs, h_path, err, sizeof err)) { cli_error("%s", err); goto out; }
    }
    printf("%-34s %-8s %-8s %11s %11s %11s %11s %7s %7s", "tensor", "A", "B", "rmse A", "rmse B",
           "wrmse A", "wrmse B", "B/A", "wB/wA");
    if (hs) printf(" %11s %11s %7s", "out A", "out B", "oB/oA");
    putchar('\n');
    double toa = 0, tob = 0;
    struct err_acc ta = { 0, 0, 0, 0 }, tb = { 0, 0, 0, 0 };
    int n = 0;
    for (uint64_t t = 0; t < f[0]->n_tensors; t++) {
        const gguf_tensor *s = &f[0]->tensors[t];
        char name[512];
        snprintf(name, sizeof name, "%.*s", (int)s->name.n, s->name.s);
        int64_t ia = gguf_find_tensor(f[1], name), ib = gguf_find_tensor(f[2], name);
        if (ia < 0 || ib < 0) continue;
        const gguf_tensor *qa = &f[1]->tensors[ia], *qb = &f[2]->tensors[ib];
        if (memcmp(s->ne, qa->ne, sizeof s->ne) || memcmp(s->ne, qb->ne, sizeof s->ne)) {
            cli_error("compare: tensor %s has different shapes", name);
            goto out;
        }
        if (s->n_dims < 2) continue;
        float *w = NULL;
        int64_t wl = 0;
        if (im) {
            struct moeq_imatrix_entry *e = moeq_imatrix_find_weight(im, name);
            if (e) {
                int64_t nm = (int64_t)(s->ne[2] * s->ne[3]);
                wl = (int64_t)s->ne[0] * nm;
                w = malloc((size_t)wl * sizeof *w);
                for (int64_t m = 0; w && m < nm; m++)
                    if (moeq_imatrix_weights(e, (int64_t)s->ne[0], nm, m, w + m * (int64_t)s->ne[0]) < 0) {
                        free(w);
                        w = NULL;
                    }
            }
        }
        struct err_acc a = { 0, 0, 0, 0 }, b = { 0, 0, 0, 0 };
        if (tensor_err(s, qa, w, wl, &a, err, sizeof err) || tensor_err(s, qb, w, wl, &b, err, sizeof err)) {
            free(w);
            cli_error("compare: tensor %s: %s", name, err);
            goto out;
        }
        free(w);
        double ra = sqrt(a.e2 / (double)a.n), rb = sqrt(b.e2 / (double)b.n);
        double wa = sqrt(a.we2 / a.ws), wb = sqrt(b.we2 / b.ws);
        printf("%-34s %-8s %-8s %11.4e %11.4e %11.4e %11.4e %7.4f %7.4f", name, moeq_type_name((int)qa->type),
               moeq_type_name((int)qb->type), ra, rb, wa, wb, ra > 0 ? rb / ra : 0, wa > 0 ? wb / wa : 0);
        const struct moeq_hessian_entry *he = hs ? moeq_hessian_find(hs, name) : NULL;
        if (he && (uint64_t)he->n == s->ne[0] && (uint64_t)he->n_mat == s->ne[2] * s->ne[3]) {
            double oa = output_err(s, qa, he), ob = output_err(s, qb, he);
            if (oa < 0 || ob < 0) { putchar('\n'); cli_error("compare: tensor %s: output error failed", name); goto out; }
            printf(" %11.4e %11.4e %7.4f", oa, ob, oa > 0 ? ob / oa : 0);
            toa += oa;
            tob += ob;
        }
        putchar('\n');
        ta.e2 += a.e2; ta.we2 += a.we2; ta.ws += a.ws; ta.n += a.n;
        tb.e2 += b.e2; tb.we2 += b.we2; tb.ws += b.ws; tb.n += b.n;
        n++;
    }
    if (n == 0) { cli_error("compare: no tensor is in all three files"); goto out; }
    double ra = sqrt(ta.e2 / (double)ta.n), rb = sqrt(tb.e2 / (double)tb.n);
    double wa = sqrt(ta.we2 / ta.ws), wb = sqrt(tb.we2 / tb.ws);
    printf("%-34s %-8s %-8s %11.4e %11.4e %11.4e %11.4e %7.4f %7.4f", "all", "", "", ra, rb, wa, wb,
           rb / ra, wb / wa);
    if (hs) printf(" %11.4e %11.4e %7.4f", toa, tob, toa > 0 ? tob / toa : 0);
    putchar('\n');
    rc = 0;
out:
    for (int k = 0; k < 3; k++) gguf_close(f[k]);
    moeq_imatrix_free(im);
    moeq_hessian_free(hs);
    return rc;
}
