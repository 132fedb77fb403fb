/*
 * test_alloc.c: the bit allocator (src/quant/alloc.c, alloc_kld.c): the
 * knapsack against brute force, units and candidates of a synthetic model,
 * the sensitivity file (with measured factors, version 1 still read) and
 * the plan file round trips, the budget of a written file respected to the
 * byte, measured factors and group medians, Spearman on known cases, and
 * `moeq quantize` end to end: --measure-kld with the report, --fit against
 * `moeq fit`, a 16-expert model with unrouted experts.
 */
#include "test.h"
#include "gguf/gguf.h"
#include "quant/alloc.h"
#include "quant/quantize.h"
#include "quant/quants.h"
#include "quant/tensor_groups.h"
#include "synth/synth.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static uint32_t lcg(uint32_t *s) { *s = *s * 1664525u + 1013904223u; return *s >> 8; }

TEST(alloc_solve_matches_brute_force)
{
    uint32_t seed = 7;
    for (int trial = 0; trial < 200; trial++) {
        struct moeq_alloc a;
        memset(&a, 0, sizeof a);
        a.n_units = 2 + (int)(lcg(&seed) % 4);
        a.units = calloc((size_t)a.n_units, sizeof *a.units);
        REQUIRE(a.units);
        uint64_t maxsum = 0, minsum = 0;
        for (int k = 0; k < a.n_units; k++) {
            struct moeq_alloc_unit *u = &a.units[k];
            u->n_cand = 1 + (int)(lcg(&seed) % 4);
            u->sens = 0.5 + (lcg(&seed) % 100) / 50.0;
            uint64_t mx = 0, mn = UINT64_MAX;
            for (int c = 0; c < u->n_cand; c++) {
                u->bytes[c] = 10 + lcg(&seed) % 200;
                u->err[c] = (double)(lcg(&seed) % 1000);
                if (u->bytes[c] > mx) mx = u->bytes[c];
                if (u->bytes[c] < mn) mn = u->bytes[c];
            }
            maxsum += mx; minsum += mn;
        }
        uint64_t budget = minsum + lcg(&seed) % (maxsum - minsum + 1);
        int choice[8], best[8], cur[8] = { 0 };
        char err[256];
        REQUIREF(moeq_alloc_solve(&a, budget, choice, err, sizeof err) == 0, "%s", err);
        /* brute force */
        double bd = 1e300;
        for (;;) {
            uint64_t b = 0;
            for (int k = 0; k < a.n_units; k++) b += a.units[k].bytes[cur[k]];
            if (b <= budget) {
                double d = moeq_alloc_damage(&a, cur);
                if (d < bd) { bd = d; memcpy(best, cur, sizeof cur); }
            }
            int k = 0;
            while (k < a.n_units && ++cur[k] == a.units[k].n_cand) cur[k++] = 0;
            if (k == a.n_units) break;
        }
        uint64_t got = 0;
        for (int k = 0; k < a.n_units; k++) got += a.units[k].bytes[choice[k]];
        CHECK(got <= budget);
        double d = moeq_alloc_damage(&a, choice);
        CHECKF(d <= bd + 1e-9, "trial %d: damage %g, brute force %g", trial, d, bd);
        /* deterministic */
        int again[8];
        REQUIRE(moeq_alloc_solve(&a, budget, again, err, sizeof err) == 0);
        CHECK(memcmp(again, choice, (size_t)a.n_units * sizeof *choice) == 0);
        (void)best;
        free(a.units);
    }
}

TEST(alloc_solve_large_is_fast_and_close)
{
    /* 48 layers x 6 units + 2, 14 candidates, sizes of a 30B model */
    struct moeq_alloc a;
    memset(&a, 0, sizeof a);
    a.n_units = 290;
    a.units = calloc((size_t)a.n_units, sizeof *a.units);
    REQUIRE(a.units);
    uint32_t seed = 3;
    uint64_t lo = 0, hi = 0;
    for (int k = 0; k < a.n_units; k++) {
        struct moeq_alloc_unit *u = &a.units[k];
        u->n_cand = 14;
        u->sens = 1;
        uint64_t base = 1000000 + lcg(&seed) % 100000000;
        for (int c = 0; c < u->n_cand; c++) {
            u->bytes[c] = base * (uint64_t)(2 + c) / 4 + (lcg(&seed) % 97);
            u->err[c] = (double)base / (double)(1u << c) * (1.0 + (lcg(&seed) % 10) / 100.0);
        }
        lo += u->bytes[0]; hi += u->bytes[13];
    }
    uint64_t budget = lo + (hi - lo) / 3;
    int choice[290];
    char err[256];
    REQUIREF(moeq_alloc_solve(&a, budget, choice, err, sizeof err) == 0, "%s", err);
    uint64_t got = 0;
    for (int k = 0; k < a.n_units; k++) got += a.units[k].bytes[choice[k]];
    CHECK(got <= budget);
    CHECKF((double)got >= 0.999 * (double)budget, "%llu of %llu", (unsigned long long)got, (unsigned long long)budget);
    free(a.units);
}


TEST(alloc_plan_round_trip_and_budget)
{
    const char *src = test_synth_moe_lib("alloc_src.gguf");
    char err[512];
    gguf_file *f = gguf_open(src, err, sizeof err);
    REQUIREF(f, "%s", err);
    struct moeq_alloc a;
    REQUIREF(moeq_alloc_init(&a, f, NULL, 0, 1, err, sizeof err) == 0, "%s", err);
    /* gate and up are one unit; norms and the router none */
    int tied = 0;
    for (int k = 0; k < a.n_units; k++) {
        if (strstr(a.units[k].name, "ffn_gate_up_exps")) { tied++; CHECK(a.units[k].n_tensors == 2); }
        CHECK(!strstr(a.units[k].name, "norm") && !strstr(a.units[k].name, "gate_inp"));
        for (int c = 0; c < a.units[k].n_cand; c++)
            CHECK(!moeq_type_needs_imatrix(a.units[k].type[c]) || strstr(a.units[k].name, "token_embd") ||
                  strstr(a.units[k].name, "output"));
    }
    CHECK(tied > 0);
    REQUIREF(moeq_alloc_measure(&a, f, NULL, 64, 2, NULL, NULL, err, sizeof err) == 0, "%s", err);
    /* sensitivity file round trip */
    const char *sp = test_tmp("alloc.sens");
    REQUIRE(moeq_alloc_save(&a, sp, err, sizeof err) == 0);
    struct moeq_alloc b;
    REQUIRE(moeq_alloc_init(&b, f, NULL, 0, 1, err, sizeof err) == 0);
    REQUIREF(moeq_alloc_load(&b, sp, err, sizeof err) == 0, "%s", err);
    for (int k = 0; k < a.n_units; k++) {
        CHECK(b.units[k].n_cand == a.units[k].n_cand);
        for (int c = 0; c < a.units[k].n_cand; c++)
            CHECK(b.units[k].err[c] == 0 ? a.units[k].err[c] == 0
                                         : fabs(b.units[k].err[c] / a.units[k].err[c] - 1) < 1e-6);
    }
    moeq_alloc_free(&b);
    /* a budget between the smallest and largest plans, to the byte */
    uint64_t lo = a.fixed_bytes + a.header_bytes, hi = lo;
    for (int k = 0; k < a.n_units; k++) { lo += a.units[k].bytes[0]; hi += a.units[k].bytes[a.units[k].n_cand - 1]; }
    uint64_t target = lo + (hi - lo) / 2;
    int *choice = calloc((size_t)a.n_units, sizeof *choice);
    int *types = calloc((size_t)a.n_tensors, sizeof *types);
    REQUIRE(choice && types);
    REQUIREF(moeq_alloc_solve(&a, moeq_alloc_unit_budget(&a, target), choice, err, sizeof err) == 0, "%s", err);
    moeq_alloc_types(&a, choice, types);
    char *meta = moeq_alloc_plan_string(&a, choice, f);
    struct moeq_quantize_opts o;
    moeq_quantize_opts_init(&o);
    o.in_path = src;
    o.out_path = test_tmp("alloc_out.gguf");
    o.mix = moeq_mix_find("Q4_K_M");
    o.types = types; o.n_types = a.n_tensors;
    o.plan_meta = meta;
    o.ignore_imatrix_rules = 1;
    o.n_threads = 2;
    struct moeq_quantize_report r;
    REQUIREF(moeq_quantize_file(&o, &r, err, sizeof err) == 0, "%s", err);
    struct stat st;
    REQUIRE(stat(o.out_path, &st) == 0);
    CHECKF((uint64_t)st.st_size <= target, "file %lld bytes, target %llu", (long long)st.st_size, (unsigned long long)target);
    CHECK((uint64_t)st.st_size <= moeq_alloc_file_bytes(&a, choice));
    gguf_file *g = gguf_open(o.out_path, err, sizeof err);
    REQUIRE(g);
    char got[8192];
    REQUIRE(gguf_get_str(g, "moeq.plan", got, sizeof got) == 0);
    CHECK(strcmp(got, meta) == 0);
    /* the plan file read back as rules gives the same types */
    const char *pp = test_tmp("alloc.plan");
    FILE *fp = fopen(pp, "w");
    REQUIRE(fp && moeq_alloc_write_plan(&a, choice, fp) == 0);
    fclose(fp);
    fp = fopen(pp, "r");
    REQUIRE(fp);
    struct moeq_type_rule rules[256];
    int n_rules = 0;
    char line[512];
    while (fgets(line, sizeof line, fp)) {
        line[strcspn(line, "\n")] = 0;
        if (line[0] == '#' || !line[0]) continue;
        REQUIREF(n_rules < 256 && moeq_type_rule_parse(line, &rules[n_rules], err, sizeof err) == 0, "%s", err);
        n_rules++;
    }
    fclose(fp);
    struct moeq_quantize_opts o2 = o;
    o2.types = NULL; o2.n_types = 0; o2.plan_meta = NULL;
    o2.rules = rules; o2.n_rules = n_rules;
    o2.dry_run = 1;
    struct moeq_quantize_report r2;
    REQUIREF(moeq_quantize_file(&o2, &r2, err, sizeof err) == 0, "%s", err);
    for (int i = 0; i < r.n_tensors; i++) CHECKF(r.tensors[i].type == r2.tensors[i].type, "%s", r.tensors[i].name);
    for (int i = 0; i < n_rules; i++) moeq_type_rule_free(&rules[i]);
    moeq_quantize_report_free(&r2);
    moeq_quantize_report_free(&r);
    gguf_close(g);
    free(meta); free(types); free(choice);
    moeq_alloc_free(&a);
    gguf_close(f);
}

TEST(alloc_spearman_known_cases)
{
    const double x[5] = { 1, 2, 3, 4, 5 }, cube[5] = { 1, 8, 27, 64, 125 }, rev[5] = { 9, 7, 5, 3, 1 };
    CHECK(fabs(moeq_spearman(x, cube, 5) - 1) < 1e-12);    /* monotone: 1 whatever the scale */
    CHECK(fabs(moeq_spearman(x, rev, 5) + 1) < 1e-12);
    /* ties take their mean rank: ranks (1, 2.5, 2.5, 4) and (1, 3, 2, 4) */
    const double tx[4] = { 1, 2, 2, 3 }, ty[4] = { 10, 30, 20, 40 };
    CHECKF(fabs(moeq_spearman(tx, ty, 4) - 4.5 / sqrt(22.5)) < 1e-12, "%g", moeq_spearman(tx, ty, 4));
    const double flat[4] = { 2, 2, 2, 2 };
    CHECK(moeq_spearman(flat, ty, 4) == 0);
    CHECK(moeq_spearman(x, cube, 1) == 0);
}

/* Factors from measured swaps: KLD / err at the measured type; a unit not
 * measured takes its group's median, or all measured units' median. */
TEST(alloc_factors_from_measurements_and_depth)
{
    struct moeq_alloc a;
    memset(&a, 0, sizeof a);
    a.n_units = 6;
    a.units = calloc(6, sizeof *a.units);
    REQUIRE(a.units);
    const int group[6] = { MOEQ_GROUP_ATTN_Q, MOEQ_GROUP_ATTN_Q, MOEQ_GROUP_ATTN_Q, MOEQ_GROUP_ATTN_Q,
                           MOEQ_GROUP_ATTN_Q, MOEQ_GROUP_OUTPUT };
    const int layer[6] = { 1, 2, 3, 5, 0, -1 };
    for (int k = 0; k < 6; k++) {
        struct moeq_alloc_unit *u = &a.units[k];
        u->group = group[k];
        u->layer = layer[k];
        u->n_cand = 2;
        u->type[0] = MOEQ_TYPE_Q2_K; u->type[1] = MOEQ_TYPE_Q4_K;
        u->err[0] = 10.0 * (k + 1); u->err[1] = 1.0;
        u->sens = 1;
    }
    /* layers 1, 2 and 5 measured at Q2_K: factors 0.1, 0.3, 0.075 */
    const int meas[3] = { 0, 1, 3 };
    const double kld[3] = { 1.0, 6.0, 3.0 };
    for (int k = 0; k < 3; k++) {
        a.units[meas[k]].n_meas = 1;
        a.units[meas[k]].meas_type[0] = MOEQ_TYPE_Q2_K;
        a.units[meas[k]].meas_kld[0] = kld[k];
    }
    moeq_alloc_set_factors(&a);
    CHECK(fabs(a.units[0].sens - 0.1) < 1e-12 && fabs(a.units[1].sens - 0.3) < 1e-12 && fabs(a.units[3].sens - 0.075) < 1e-12);
    /* layer 3: a third of the way from layer 2 to layer 5, in log space */
    CHECKF(fabs(a.units[2].sens - exp(log(0.3) * 2.0 / 3.0 + log(0.075) / 3.0)) < 1e-12, "%g", a.units[2].sens);
    CHECKF(fabs(a.units[4].sens - 0.1) < 1e-12, "%g", a.units[4].sens);   /* layer 0: the nearest, layer 1 */
    CHECKF(fabs(a.units[5].sens - 0.1) < 1e-12, "%g", a.units[5].sens);   /* no output measured: median of all */
    moeq_alloc_free(&a);
}

/* The sensitivity file keeps measured factors and swaps (version 2), and a
 * version 1 file (no kld lines) still loads. */
TEST(alloc_sensitivity_file_keeps_factors)
{
    const char *src = test_synth_moe_lib("alloc_sens_src.gguf");
    char err[512];
    gguf_file *f = gguf_open(src, err, sizeof err);
    REQUIREF(f, "%s", err);
    struct moeq_alloc a, b;
    REQUIREF(moeq_alloc_init(&a, f, NULL, 0, 1, err, sizeof err) == 0, "%s", err);
    REQUIREF(moeq_alloc_measure(&a, f, NULL, 32, 2, NULL, NULL, err, sizeof err) == 0, "%s", err);
    for (int k = 0; k < a.n_units; k += 2) {
        struct moeq_alloc_unit *u = &a.units[k];
        u->n_meas = 2;
        u->meas_type[0] = u->type[0]; u->meas_kld[0] = 1e-3 * (k + 1);
        u->meas_type[1] = u->type[u->n_cand - 1]; u->meas_kld[1] = 1e-5 * (k + 1);
    }
    moeq_alloc_set_factors(&a);
    const char *sp = test_tmp("alloc_v2.sens");
    REQUIREF(moeq_alloc_save(&a, sp, err, sizeof err) == 0, "%s", err);
    REQUIRE(moeq_alloc_init(&b, f, NULL, 0, 1, err, sizeof err) == 0);
    REQUIREF(moeq_alloc_load(&b, sp, err, sizeof err) == 0, "%s", err);
    int distinct = 0;
    for (int k = 0; k < a.n_units; k++) {
        const struct moeq_alloc_unit *x = &a.units[k], *y = &b.units[k];
        CHECKF(fabs(y->sens / x->sens - 1) < 1e-8, "%s: %g vs %g", x->name, y->sens, x->sens);
        distinct += fabs(x->sens - 1) > 1e-6;
        CHECK(y->n_meas == x->n_meas);
        for (int m = 0; m < x->n_meas && m < y->n_meas; m++)
            CHECK(y->meas_type[m] == x->meas_type[m] && fabs(y->meas_kld[m] / x->meas_kld[m] - 1) < 1e-8);
    }
    CHECK(distinct > 0);
    moeq_alloc_free(&b);
    /* version 1: the same file less its kld lines */
    size_t n;
    char *text = test_read_file(sp, &n);
    REQUIRE(text);
    const char *v1 = test_tmp("alloc_v1.sens");
    FILE *fp = fopen(v1, "w");
    REQUIRE(fp);
    fputs("moeq-sensitivity 1\n", fp);
    for (char *line = strchr(text, '\n') + 1; line && *line;) {
        char *nl = strchr(line, '\n');
        if (strncmp(line, "kld ", 4)) fwrite(line, 1, nl ? (size_t)(nl - line + 1) : strlen(line), fp);
        line = nl ? nl + 1 : NULL;
    }
    fclose(fp);
    free(text);
    REQUIRE(moeq_alloc_init(&b, f, NULL, 0, 1, err, sizeof err) == 0);
    REQUIREF(moeq_alloc_load(&b, v1, err, sizeof err) == 0, "%s", err);
    for (int k = 0; k < a.n_units; k++) {
        CHECK(b.units[k].n_meas == 0);
        CHECK(fabs(b.units[k].sens / a.units[k].sens - 1) < 1e-8);
    }
    moeq_alloc_free(&b);
    moeq_alloc_free(&a);
    gguf_close(f);
}

/* `moeq quantize --measure-kld`: every unit swapped alone in the engine,
 * the factors and swaps saved (version 2) and read back, the report with
 * its rank correlations, the dry-run table next to the fixed recipe's. */
TEST(alloc_cmd_measure_kld_report_and_file)
{
    const char *src = test_synth_model("akld.gguf", "");
    const char *sp = test_tmp("akld.sens");
    unlink(sp);
    char *out = NULL;
    int rc = test_run(&out, "%s quantize --target-bpw 5 --dry-run --sample-rows 64 --measure-kld 2 --measure-ctx 64 --calib data/calibration.txt "
                      "--sensitivity-report --sensitivity %s %s %s 2", test_moeq_bin(), sp, src, test_tmp("akld-out.gguf"));
    REQUIREF(rc == 0, "%s", out ? out : "");
    CHECKF(strstr(out, "moeq: kld [  2/ 14] output.weight") && strstr(out, "moeq: kld [ 14/ 14] blk.1.ffn_down_exps") && strstr(out, "ETA"), "%s", out);
    CHECK(strstr(out, "check types") && strstr(out, "factor x error"));
    CHECK(strstr(out, "| asym-2bitexp") && strstr(out, "total (file, header bound)"));
    size_t n;
    char *text = test_read_file(sp, &n);
    REQUIRE(text);
    CHECK(strncmp(text, "moeq-sensitivity 2\n", 19) == 0);
    int n_kld = 0, n_not1 = 0;
    for (char *l = text; (l = strchr(l, '\n')); l++) {
        if (!strncmp(l + 1, "kld ", 4)) n_kld++;
        char name[160];
        double sens;
        if (sscanf(l + 1, "unit %159s %lf", name, &sens) == 2 && fabs(sens - 1) > 1e-6) n_not1++;
    }
    CHECKF(n_kld == 28, "%d kld lines", n_kld);   /* 14 units x 2 types */
    CHECK(n_not1 == 14);
    free(text);
    /* read back: the same report, no new measurement */
    char *again = NULL;
    rc = test_run(&again, "%s quantize --target-bpw 5 --dry-run --sensitivity-report --sensitivity %s %s %s 2",
                  test_moeq_bin(), sp, src, test_tmp("akld-out.gguf"));
    REQUIREF(rc == 0, "%s", again ? again : "");
    CHECK(strstr(again, "with measured sensitivity factors") && !strstr(again, "moeq: kld ["));
    const char *r1 = strstr(out, "rank correlation"), *r2 = strstr(again, "rank correlation");
    REQUIRE(r1 && r2);
    const char *e1 = strstr(r1, "both pooled");
    REQUIRE(e1 && strchr(e1, '\n'));
    CHECK(strncmp(r1, r2, (size_t)(strchr(e1, '\n') - r1)) == 0);
    /* a sample: token_embd, output and an even share of the layers' units */
    unlink(sp);
    char *smp = NULL;
    rc = test_run(&smp, "%s quantize -q --target-bpw 5 --dry-run --sample-rows 64 --measure-kld 1 --measure-ctx 32 "
                  "--measure-units 5 --calib data/calibration.txt --sensitivity %s %s %s 2", test_moeq_bin(), sp, src,
                  test_tmp("akld-out.gguf"));
    REQUIREF(rc == 0, "%s", smp ? smp : "");
    free(smp);
    text = test_read_file(sp, &n);
    REQUIRE(text);
    n_kld = 0;
    for (char *l = text; (l = strstr(l, "\nkld ")); l++) n_kld++;
    CHECKF(n_kld == 5 && strstr(text, "\nkld token_embd.weight ") && strstr(text, "\nkld output.weight "), "%s", text);
    free(text);
    /* a report with nothing measured is refused, naming the flags */
    unlink(sp);
    char *none = NULL;
    rc = test_run(&none, "%s quantize --target-bpw 5 --dry-run --sensitivity-report %s %s 2", test_moeq_bin(), src,
                  test_tmp("akld-out.gguf"));
    CHECK(rc == 1 && none && strstr(none, "--measure-kld"));
    /* and the measurement flags without a target, a usage error */
    char *nt = NULL;
    rc = test_run(&nt, "%s quantize --measure-kld 2 --calib data/calibration.txt %s %s Q4_K_M", test_moeq_bin(), src,
                  test_tmp("akld-out.gguf"));
    CHECKF(rc == 2 && nt && strstr(nt, "need a target"), "%d %s", rc, nt ? nt : "");
    free(nt);
    free(out); free(again); free(none);
}

static uint64_t json_u64(const char *json, const char *key)
{
    char k[64];
    snprintf(k, sizeof k, "\"%s\": ", key);
    const char *p = json ? strstr(json, k) : NULL;
    REQUIREF(p, "no %s in %s", key, json ? json : "(null)");
    return strtoull(p + strlen(k), NULL, 10);
}

/* `quantize --fit`: the budget comes from the engine's memory plan, and
 * `moeq fit` on the written file agrees that it fits, to the byte, using
 * nearly all of it. */
TEST(alloc_cmd_fit_agrees_with_moeq_fit)
{
    const char *src = test_synth_model("afit.gguf", "");
    char *js = NULL;
    REQUIRE(test_run(&js, "%s fit -m %s -c 256 -t 2 --json", test_moeq_bin(), src) == 0);
    const uint64_t others = json_u64(js, "total") - json_u64(js, "weights");
    const uint64_t wbudget = 2500000, budget = others + wbudget;
    free(js);
    const char *out = test_tmp("afit-out.gguf");
    char *o = NULL;
    REQUIREF(test_run(&o, "%s quantize -q --sample-rows 64 --fit %llu --reserve 0 -c 256 %s %s 2", test_moeq_bin(),
                      (unsigned long long)budget, src, out) == 0, "%s", o ? o : "");
    free(o);
    js = NULL;
    int rc = test_run(&js, "%s fit -m %s -c 256 -t 2 --budget %llu --reserve 0 --json", test_moeq_bin(), out,
                      (unsigned long long)budget);
    CHECKF(rc == 0 && strstr(js, "\"fits\": true"), "%s", js);
    const uint64_t w = json_u64(js, "weights"), margin = json_u64(js, "margin");
    CHECKF(w <= wbudget && w >= wbudget * 97 / 100, "weights %llu of %llu", (unsigned long long)w, (unsigned long long)wbudget);
    CHECK(json_u64(js, "total") + margin == budget);
    free(js);
}

/* Tried as a new user would: 16 experts, 4 used, an imatrix from one chunk
 * leaves experts unrouted; quantize --recipe asym-2bitexp (IQ2_S experts)
 * still succeeds with both imatrix formats, naming the experts it filled,
 * and the allocation runs on the same data. */
TEST(alloc_cmd_16_experts_partial_imatrix)
{
    const char *src = test_synth_model("a16.gguf", "--experts 16 --experts-used 4");
    const char *fmt[2] = { "a16-imatrix.dat", "a16-imatrix.gguf" };
    for (int k = 0; k < 2; k++) {
        char im[4096];
        snprintf(im, sizeof im, "%s", test_tmp(fmt[k]));
        char *o = NULL;
        REQUIREF(test_run(&o, "%s imatrix -m %s -f data/calibration.txt -c 512 --chunks 1 -o %s", test_moeq_bin(), src, im) == 0,
                 "%s", o ? o : "");
        REQUIREF(strstr(o, "experts never routed"), "no unrouted expert to test with: %s", o);
        free(o);
        o = NULL;
        int rc = test_run(&o, "%s quantize -q --imatrix %s --recipe asym-2bitexp %s %s", test_moeq_bin(), im, src,
                          test_tmp("a16-out.gguf"));
        CHECKF(rc == 0, "%s: %s", fmt[k], o ? o : "");
        CHECKF(o && strstr(o, "warning: blk.0.ffn_gate_exps.weight: no imatrix data for experts:") &&
               strstr(o, "(filled from the tensor's other experts)") && !strstr(o, "no importance data"), "%s: %s", fmt[k], o);
        /* GGUF data has per-expert counts: the rarely routed are shrunk, said once */
        if (k == 1) {
            const char *m = o ? strstr(o, "saw under 25% of their tensor's mean token count") : NULL;
            CHECKF(m && !strstr(m + 1, "saw under 25%"), "%s", o);
        }
        free(o);
        o = NULL;
        rc = test_run(&o, "%s quantize -q --sample-rows 64 --imatrix %s --target-bpw 3 %s %s", test_moeq_bin(), im, src,
                      test_tmp("a16-alloc.gguf"));
        CHECKF(rc == 0, "%s", o ? o : "");
        free(o);
    }
}

/* The dry-run table next to the fixed recipe's: at the recipe's own size
 * (its plan then fits the budget) the allocation predicts no more damage
 * than the recipe, within that size. */
TEST(alloc_cmd_dry_run_beats_the_recipe_at_its_size)
{
    const char *src = test_synth_model("atab.gguf", "");
    const char *sp = test_tmp("atab.sens");
    unlink(sp);
    unsigned long long ab[2], rb[2];
    double abpw, ad[2], rbpw, rd[2];
    char *o = NULL;
    for (int pass = 0; pass < 2; pass++) {
        char target[64];
        if (pass) snprintf(target, sizeof target, "--target-size %llu", rb[0]);
        else snprintf(target, sizeof target, "--target-bpw 4");
        o = NULL;
        int rc = test_run(&o, "%s quantize --dry-run --ignore-imatrix-rules --sample-rows 64 --sensitivity %s %s %s %s",
                          test_moeq_bin(), sp, target, src, test_tmp("atab-out.gguf"));
        REQUIREF(rc == 0, "%s", o ? o : "");
        const char *t = strstr(o, "total (file, header bound)");
        REQUIREF(t && sscanf(t + 30, "%llu %lf %lf | %llu %lf %lf", &ab[pass], &abpw, &ad[pass], &rb[pass], &rbpw, &rd[pass]) == 6,
                 "%s", o);
        CHECK(strstr(o, "| asym-2bitexp"));
        free(o);
    }
    CHECK(rb[0] == rb[1] && rd[0] == rd[1]);     /* the recipe's side does not depend on the target */
    CHECKF(ab[1] <= rb[0], "%llu > %llu", ab[1], rb[0]);
    CHECKF(ad[1] <= rd[1] * (1 + 1e-9), "allocated %g, recipe %g", ad[1], rd[1]);
}
