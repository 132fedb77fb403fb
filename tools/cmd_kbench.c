/*
 * cmd_kbench.c: `moeq kbench`, a single-thread micro-benchmark of the
 * matmul kernels (a benchmark, not a test: it asserts nothing).
 *
 * For each weight type and ISA it times two things on random valid
 * blocks: the decode shape (vec_dot over a weight matrix larger than the
 * caches, reported as GB/s of weights streamed) and the prompt shape
 * (moeq_gemm against a batch of activation columns, reported as billions
 * of multiply-adds per second). The last column is the speed-up over the
 * scalar reference of the same shape.
 */
#include "cmd.h"
#include "kernels/kernels.h"
#include "quant/quants.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const int default_types[] = {
    MOEQ_TYPE_IQ2_S, MOEQ_TYPE_IQ3_S, MOEQ_TYPE_Q4_K, MOEQ_TYPE_Q6_K, MOEQ_TYPE_Q8_0,
    MOEQ_TYPE_Q5_K, MOEQ_TYPE_F16, MOEQ_TYPE_F32, MOEQ_TYPE_BF16, MOEQ_TYPE_Q4_0,
    MOEQ_TYPE_Q2_K, MOEQ_TYPE_Q3_K, MOEQ_TYPE_IQ2_XXS, MOEQ_TYPE_IQ2_XS, MOEQ_TYPE_IQ3_XXS,
    MOEQ_TYPE_IQ4_NL, MOEQ_TYPE_IQ4_XS,
};

/* This thread's CPU time: a kernel's cost without the wait for other
 * processes (util.h's moeq_now_s is wall time). */
static double thread_cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static uint64_t rng = 88172645463325252ull;
static uint64_t next(void) { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return rng; }

/* Random bytes with every half field in a block set to a sane scale. The
 * half fields sit at 0 (and 2) except in Q2_K, Q3_K and Q6_K, where they
 * close the block. */
static void fill_weights(int type, uint8_t *w, int64_t rows, int64_t K)
{
    const struct moeq_type_traits *t = moeq_type_traits(type);
    size_t bytes = moeq_row_size(type, K) * (size_t)rows;
    uint16_t h = moeq_f32_to_f16(0.01f);
    if (!t->quantized) {
        for (size_t i = 0; i + 2 <= bytes; i += 2) {
            uint16_t v = type == MOEQ_TYPE_BF16 ? moeq_f32_to_bf16((float)(next() % 1000) * 1e-3f) : h;
            memcpy(w + i, &v, 2);
        }
        if (type == MOEQ_TYPE_F32)
            for (size_t i = 0; i + 4 <= bytes; i += 4) { float f = (float)(next() % 1000) * 1e-3f; memcpy(w + i, &f, 4); }
        return;
    }
    for (size_t i = 0; i < bytes; i++) w[i] = (uint8_t)next();
    size_t off0 = 0, off1 = 2;
    int two = type == MOEQ_TYPE_Q4_K || type == MOEQ_TYPE_Q5_K;
    if (type == MOEQ_TYPE_Q2_K) { off0 = 80; off1 = 82; two = 1; }
    if (type == MOEQ_TYPE_Q3_K) off0 = 108;
    if (type == MOEQ_TYPE_Q6_K) off0 = 208;
    for (size_t b = 0; b < bytes / t->type_size; b++) {
        memcpy(w + b * t->type_size + off0, &h, 2);
        if (two) memcpy(w + b * t->type_size + off1, &h, 2);
    }
}

static void usage(FILE *f)
{
    fprintf(f,
        "usage: moeq kbench [--types T1,T2,...] [--isa ISA] [-k K] [--cols N] [--mb MB] [-r REPS]\n"
        "       moeq kbench --quantize [--types T1,T2,...]\n"
        "  Times the matmul kernels, one thread, on random weights; with\n"
        "  --quantize the quantizers instead (256 rows of 4096 weights with an\n"
        "  importance matrix; default: the i-quants).\n"
        "  --types  weight types (default: all)\n"
        "  --isa    only this ISA (scalar, avx2, avx512); ratios then print as 0\n"
        "  -k       row length (default 2048)\n"
        "  --cols   activation columns of the gemm shape (default 64)\n"
        "  --mb     weight megabytes streamed by the vec_dot shape (default 64)\n"
        "  -r       repetitions, best one reported (default 3)\n"
        "  -q, -v, --log-level L  quiet, verbose, or error|warn|info|debug\n");
}

static float unit(void) { return (float)(next() >> 40) * 0x1.0p-24f; }

/* One-thread encode speed of each type's quantizer, in thread CPU time. */
static int bench_quantize(const int *types, int ntypes)
{
    enum { R = 256, C = 4096 };
    float *x = malloc(sizeof(float) * R * C), *imat = malloc(sizeof(float) * C);
    uint8_t *q = malloc(sizeof(float) * R * C);
    if (!x || !imat || !q) {
        free(x); free(imat); free(q);
        cli_error("kbench: out of memory");
        return 1;
    }
    for (int i = 0; i < R * C; i++) x[i] = (unit() + unit() + unit() - 1.5f) * 0.02f;
    for (int c = 0; c < C; c++) imat[c] = 0.05f + unit() * 4;
    printf("quantizer benchmark: 1 thread (timed in thread CPU time), %d rows of %d weights with an imatrix\n", R, C);
    for (int k = 0; k < ntypes; k++) {
        const struct moeq_type_traits *t = moeq_type_traits(types[k]);
        if (!t || !t->quantize) continue;
        t->quantize(x, q, 1, C, imat, NULL); /* builds the type's tables */
        double t0 = thread_cpu_s();
        t->quantize(x, q, R, C, imat, NULL);
        double sec = thread_cpu_s() - t0;
        printf("%-8s %8.2f M weights/s\n", moeq_type_name(types[k]), sec > 0 ? R * C / sec / 1e6 : 0);
        fflush(stdout);
    }
    free(x); free(imat); free(q);
    return 0;
}

int cmd_kbench(int argc, char **argv)
{
    int types[64], ntypes = 0;
    int64_t K = 2048, cols = 64, mb = 64, reps = 3;
    int only_isa = -1, quant = 0;
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i];
        if (cli_is_help(o)) { usage(stdout); return 0; }
        CLI_LOG_OPTION("kbench", argc, argv, i);
        if (!strcmp(o, "--quantize")) { quant = 1; continue; }
        if (i + 1 >= argc) return cli_usage_error("kbench", "unknown or incomplete option '%s'", o);
        const char *v = argv[++i];
        if (!strcmp(o, "--types")) {
            char buf[512], *items[CLI_LIST_MAX];
            int n = cli_split_list(v, items, CLI_LIST_MAX, buf, sizeof buf);
            if (n < 0) return cli_usage_error("kbench", "--types wants a comma list of types, not '%s'", v);
            for (int k = 0; k < n; k++) {
                int t = moeq_type_from_name(items[k]);
                if (t < 0 || t == MOEQ_TYPE_Q8_K || !moeq_vec_dot_isa(t, MOEQ_ISA_SCALAR))
                    return cli_usage_error("kbench", "no kernel for type '%s'", items[k]);
                if (ntypes < 64) types[ntypes++] = t;
            }
        } else if (!strcmp(o, "--isa")) {
            for (only_isa = 0; only_isa < MOEQ_ISA_COUNT; only_isa++)
                if (!strcmp(v, moeq_isa_name(only_isa))) break;
            if (only_isa == MOEQ_ISA_COUNT)
                return cli_usage_error("kbench", "--isa wants scalar, avx2 or avx512, got '%s'", v);
        } else if (!strcmp(o, "-k")) {
            if (cli_parse_i64(v, &K) || K <= 0 || K % 256 || K > (1 << 20))
                return cli_usage_error("kbench", "-k wants a positive multiple of 256, got '%s'", v);
        } else if (!strcmp(o, "--cols")) {
            if (cli_parse_i64(v, &cols) || cols <= 0 || cols > 4096)
                return cli_usage_error("kbench", "--cols wants 1..4096, got '%s'", v);
        } else if (!strcmp(o, "--mb")) {
            if (cli_parse_i64(v, &mb) || mb <= 0 || mb > 4096)
                return cli_usage_error("kbench", "--mb wants 1..4096, got '%s'", v);
        } else if (!strcmp(o, "-r")) {
            if (cli_parse_i64(v, &reps) || reps <= 0 || reps > 100)
                return cli_usage_error("kbench", "-r wants 1..100, got '%s'", v);
        } else {
            return cli_usage_error("kbench", "unknown option '%s'", o);
        }
    }
    if (quant) {
        static const int iq[] = { MOEQ_TYPE_IQ2_XXS, MOEQ_TYPE_IQ2_XS, MOEQ_TYPE_IQ2_S, MOEQ_TYPE_IQ3_XXS,
                                  MOEQ_TYPE_IQ3_S };
        return ntypes ? bench_quantize(types, ntypes) : bench_quantize(iq, (int)(sizeof iq / sizeof iq[0]));
    }
    if (!ntypes) {
        ntypes = (int)(sizeof default_types / sizeof default_types[0]);
        memcpy(types, default_types, sizeof default_types);
    }

    printf("kernel benchmark: 1 thread (timed in thread CPU time), K=%lld, vec_dot over %lld MB, gemm %lld columns; best ISA %s\n",
           (long long)K, (long long)mb, (long long)cols, moeq_isa_name(moeq_isa_best()));
    printf("%-8s %-7s %12s %8s %14s %8s\n", "type", "isa", "vec_dot GB/s", "x scal", "gemm GMAC/s", "x scal");

    for (int ti = 0; ti < ntypes; ti++) {
        int type = types[ti];
        size_t wrow = moeq_row_size(type, K), arow = moeq_act_row_size(type, K);
        int64_t rows = (int64_t)((uint64_t)mb * 1024 * 1024 / wrow);
        if (rows < 16) rows = 16;
        /* the gemm shape: a weight block small enough to be compute-bound */
        int64_t grows = rows < 256 ? rows : 256;
        uint8_t *w = malloc(wrow * (size_t)rows);
        uint8_t *a = malloc(arow * (size_t)cols);
        float *x = malloc(sizeof(float) * (size_t)K);
        float *out = malloc(sizeof(float) * (size_t)(rows > grows * cols ? rows : grows * cols));
        if (!w || !a || !x || !out) {
            free(w); free(a); free(x); free(out);
            cli_error("kbench: out of memory for %s", moeq_type_name(type));
            return 1;
        }
        fill_weights(type, w, rows, K);
        for (int64_t c = 0; c < cols; c++) {
            for (int64_t i = 0; i < K; i++) x[i] = (float)((int64_t)(next() % 2001) - 1000) * 1e-3f;
            moeq_quantize_act(type, x, a + (size_t)c * arow, K);
        }
        double gbs_scalar = 0, gmac_scalar = 0;
        for (int isa = 0; isa < MOEQ_ISA_COUNT; isa++) {
            moeq_vec_dot_fn dot = moeq_vec_dot_isa(type, isa);
            if (isa > moeq_isa_best() || (isa > 0 && !dot)) continue;
            if (only_isa >= 0 && isa != only_isa) continue;
            double best = 1e30;
            for (int r = 0; r < reps; r++) {
                double t0 = thread_cpu_s();
                for (int64_t i = 0; i < rows; i++) dot(K, out + i, w + (size_t)i * wrow, a);
                double t = thread_cpu_s() - t0;
                if (t < best) best = t;
            }
            double gbs = (double)wrow * rows / best / 1e9;
            best = 1e30;
            for (int r = 0; r < reps; r++) {
                double t0 = thread_cpu_s();
                moeq_gemm_isa(isa, type, K, w, wrow, grows, a, arow, cols, out, (size_t)grows);
                double t = thread_cpu_s() - t0;
                if (t < best) best = t;
            }
            double gmac = (double)K * grows * cols / best / 1e9;
            if (isa == 0) { gbs_scalar = gbs; gmac_scalar = gmac; }
            printf("%-8s %-7s %12.2f %8.2f %14.2f %8.2f\n", moeq_type_name(type), moeq_isa_name(isa),
                   gbs, gbs_scalar > 0 ? gbs / gbs_scalar : 0, gmac, gmac_scalar > 0 ? gmac / gmac_scalar : 0);
            fflush(stdout);
        }
        free(w); free(a); free(x); free(out);
    }
    return 0;
}
