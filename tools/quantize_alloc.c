/*
 * quantize_alloc.c: `moeq quantize`'s allocation flags (see
 * quantize_alloc.h): the budget from a bpw, a file size or the engine's
 * memory plan, the measurement (sampled-row error, and with --measure-kld
 * the engine-measured sensitivity factors) or its saved file, the solver,
 * the dry-run table next to the fixed recipe's, the sensitivity report and
 * the plan file.
 */
#include "quantize_alloc.h"

#include "cmd.h"
#include "engine/engine_mem.h"
#include "engine/pool.h"
#include "gguf/gguf.h"
#include "model/model.h"
#include "quant/alloc.h"
#include "quant/imatrix.h"
#include "quant/quantize.h"
#include "quant/quants.h"
#include "util/outfile.h"
#include "quant/tensor_groups.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void qalloc_init(struct qalloc_cli *c)
{
    memset(c, 0, sizeof *c);
    c->n_ctx = 4096;
    c->n_par = 1;
    c->reserve = 1ull << 30;
    c->type_k = c->type_v = MOEQ_KV_F16;
    c->rows = 1024;
    c->measure_ctx = 512;
}

static int kv_type(const char *v)
{
    if (!strcmp(v, "f16")) return MOEQ_KV_F16;
    if (!strcmp(v, "q8_0")) return MOEQ_KV_Q8_0;
    return -1;
}

int qalloc_arg(struct qalloc_cli *c, int argc, char **argv, int *i, int *rc)
{
    static const char *const flags[] = { "--target-bpw", "--target-size", "--fit", "-c", "--ctx-size", "-ctk", "-ctv",
        "--cache-type-k", "--cache-type-v", "--parallel", "-np", "--reserve", "--allow-types", "--sensitivity",
        "--plan-out", "--recipe-file", "--sample-rows", "--measure-kld", "--measure-units", "--measure-ctx",
        "--calib", NULL };
    const char *a = argv[*i];
    if (!strcmp(a, "--sensitivity-report")) { c->report = 1; *rc = 0; return 1; }
    int k = 0;
    while (flags[k] && strcmp(flags[k], a)) k++;
    if (!flags[k]) return 0;
    *rc = 2;
    if (*i + 1 >= argc) { cli_usage_error("quantize", "%s needs an argument", a); return 1; }
    const char *v = argv[++*i];
    int64_t n;
    if (!strcmp(a, "--target-bpw")) {
        if (cli_parse_f64(v, &c->target_bpw) || c->target_bpw <= 0) { cli_usage_error("quantize", "bad --target-bpw '%s'", v); return 1; }
        c->active = 1;
    } else if (!strcmp(a, "--target-size") || !strcmp(a, "--fit") || !strcmp(a, "--reserve")) {
        uint64_t *dst = a[2] == 't' ? &c->target_size : a[2] == 'f' ? &c->fit_budget : &c->reserve;
        if (cli_parse_size(v, dst)) { cli_usage_error("quantize", "bad %s '%s'", a, v); return 1; }
        if (a[2] != 'r') c->active = 1;
    } else if (!strcmp(a, "-c") || !strcmp(a, "--ctx-size") || !strcmp(a, "--parallel") || !strcmp(a, "-np") ||
               !strcmp(a, "--sample-rows")) {
        if (cli_parse_i64(v, &n) || n < 1 || n > (1 << 24)) { cli_usage_error("quantize", "bad %s '%s'", a, v); return 1; }
        if (a[1] == 'c' || a[2] == 'c') c->n_ctx = (int)n; else if (a[2] == 's') c->rows = (int)n; else c->n_par = (int)n;
    } else if (!strcmp(a, "--measure-kld") || !strcmp(a, "--measure-units") || !strcmp(a, "--measure-ctx")) {
        const int64_t lo = a[10] == 'k' || a[10] == 'u' ? 0 : 8;
        if (cli_parse_i64(v, &n) || n < lo || n > (1 << 20)) { cli_usage_error("quantize", "bad %s '%s'", a, v); return 1; }
        if (a[10] == 'k') c->measure_kld = (int)n; else if (a[10] == 'u') c->measure_units = (int)n; else c->measure_ctx = (int)n;
    } else if (!strcmp(a, "--calib")) {
        c->calib = v;
    } else if (!strcmp(a, "-ctk") || !strcmp(a, "-ctv") || !strcmp(a, "--cache-type-k") || !strcmp(a, "--cache-type-v")) {
        int t = kv_type(v);
        if (t < 0) { cli_usage_error("quantize", "KV type must be f16 or q8_0, not '%s'", v); return 1; }
        if (a[strlen(a) - 1] == 'k') c->type_k = t; else c->type_v = t;
    } else if (!strcmp(a, "--allow-types")) {
        char buf[512], *items[32];
        int cnt = cli_split_list(v, items, 32 - c->n_allow, buf, sizeof buf);
        if (cnt < 0) { cli_usage_error("quantize", "--allow-types wants a comma list of at most 32 types, not '%s'", v); return 1; }
        for (int k = 0; k < cnt; k++) {
            int t = moeq_type_from_name(items[k]);
            if (t < 0) { cli_usage_error("quantize", "--allow-types: unknown type '%s'", items[k]); return 1; }
            c->allow[c->n_allow++] = t;
        }
    } else if (!strcmp(a, "--sensitivity")) c->sensitivity = v;
    else if (!strcmp(a, "--plan-out")) c->plan_out = v;
    else c->recipe_file = v;
    *rc = 0;
    return 1;
}

int qalloc_read_rules(const char *path, struct moeq_type_rule *rules, int max, int *n)
{
    FILE *fp = fopen(path, "r");
    if (!fp) { cli_error("quantize: cannot read --recipe-file %s", path); return -1; }
    char line[1024], err[512];
    int lineno = 0;
    while (fgets(line, sizeof line, fp)) {
        lineno++;
        line[strcspn(line, "\r\n")] = 0;
        if (!line[0] || line[0] == '#') continue;
        if (*n >= max || moeq_type_rule_parse(line, &rules[*n], err, sizeof err) != 0) {
            cli_error("quantize: %s:%d: %s", path, lineno, *n >= max ? "too many rules" : err);
            fclose(fp);
            return -1;
        }
        (*n)++;
    }
    fclose(fp);
    return 0;
}

/* The weight budget of --fit: what the engine's memory plan leaves for the
 * weights after KV, scratch, sessions, runtime and the reserve. */
static int fit_weight_budget(const struct qalloc_cli *c, const gguf_file *f, const char *path, uint64_t *out)
{
    struct moeq_hparams hp;
    char err[512];
    if (moeq_hparams_read(f, path, &hp, err, sizeof err) != 0) { cli_error("%s", err); return -1; }
    struct moeq_mem_shape s;
    moeq_mem_shape_of(&hp, &s);
    const gguf_kv *m = gguf_find_kv(f, "tokenizer.ggml.merges");
    s.n_merges = m && m->val.type == GGUF_TYPE_ARRAY ? (int)m->val.v.arr.n : 0;
    s.weight_bytes = 0;
    struct moeq_mem_opts o = { c->n_ctx, c->n_par, 512, c->n_threads > 0 ? c->n_threads : moeq_ncores(),
                               c->type_k, c->type_v };
    struct moeq_mem_plan p;
    if (moeq_mem_estimate(&s, &o, &p) != 0) { cli_error("quantize: --fit: the shape cannot be planned"); return -1; }
    uint64_t avail = c->fit_budget > c->reserve ? c->fit_budget - c->reserve : 0;
    if (avail <= p.total) { cli_error("quantize: --fit: KV cache and buffers alone (%llu bytes) exceed the budget", (unsigned long long)p.total); return -1; }
    *out = avail - p.total;
    cli_info("--fit: %.3f GiB less %.3f GiB reserve, %.3f GiB KV and buffers: %.3f GiB for the weights",
            (double)c->fit_budget / (1 << 30), (double)c->reserve / (1 << 30), (double)p.total / (1 << 30),
            (double)*out / (1 << 30));
    return 0;
}

/* The fixed recipe's type of each unit (its first tensor's), -1 where it
 * plans none, from the quantize job's own dry run. */
static int recipe_types(const char *recipe, const char *in_path, const char *imatrix_path,
                        const struct moeq_alloc *a, int *rtype, const char **rname)
{
    const struct moeq_recipe *rec = moeq_recipe_find(recipe ? recipe : "asym-2bitexp");
    if (!rec) return -1;
    *rname = rec->name;
    struct moeq_quantize_opts o;
    moeq_quantize_opts_init(&o);
    o.in_path = in_path;
    o.out_path = "/dev/null";
    o.mix = moeq_mix_of_ftype(rec->ftype);
    o.recipe = rec;
    o.imatrix_path = imatrix_path;
    o.ignore_imatrix_rules = 1;   /* only its types are wanted */
    o.allow_requantize = 1;
    o.dry_run = 1;
    FILE *quiet = fopen("/dev/null", "w");
    o.log = quiet;
    struct moeq_quantize_report r;
    char err[512];
    int rc = o.mix && moeq_quantize_file(&o, &r, err, sizeof err) == 0 ? 0 : -1;
    if (quiet) fclose(quiet);
    if (rc != 0) return -1;
    for (int k = 0; k < a->n_units; k++) {
        const int ti = a->units[k].tensor[0];
        rtype[k] = ti < r.n_tensors && r.tensors[ti].quantized ? r.tensors[ti].type : -1;
    }
    moeq_quantize_report_free(&r);
    return 0;
}

/* The plan next to the fixed recipe's: each unit's type, bytes, bits per
 * weight and predicted damage, and the totals of both. */
static void print_table(const struct moeq_alloc *a, const int *choice, const int *rtype, const char *rname)
{
    printf("%-30s %-8s %12s %7s %12s | %-8s %12s %7s %12s\n", "unit", "type", "bytes", "bpw", "damage",
           rname ? rname : "recipe", "bytes", "bpw", "damage");
    uint64_t tb = 0, rb = 0;
    double td = 0, rd = 0;
    int r_ok = rtype != NULL;
    for (int k = 0; k < a->n_units; k++) {
        const struct moeq_alloc_unit *u = &a->units[k];
        int c = choice[k];
        tb += u->bytes[c];
        td += u->sens * u->err[c];
        printf("%-30s %-8s %12llu %7.3f %12.4e |", u->name, moeq_type_name(u->type[c]),
               (unsigned long long)u->bytes[c], 8.0 * (double)u->bytes[c] / (double)u->nelem, u->sens * u->err[c]);
        int rc = -1;
        for (int i = 0; rtype && rtype[k] >= 0 && i < u->n_cand; i++)
            if (u->type[i] == rtype[k]) rc = i;
        if (rc >= 0) {
            rb += u->bytes[rc];
            rd += u->sens * u->err[rc];
            printf(" %-8s %12llu %7.3f %12.4e\n", moeq_type_name(u->type[rc]), (unsigned long long)u->bytes[rc],
                   8.0 * (double)u->bytes[rc] / (double)u->nelem, u->sens * u->err[rc]);
        } else {
            /* not a candidate (--allow-types, no imatrix): no measurement */
            r_ok = 0;
            printf(" %-8s %12s %7s %12s\n", rtype && rtype[k] >= 0 ? moeq_type_name(rtype[k]) : "-", "-", "-", "-");
        }
    }
    const double nel = (double)a->nelem_all;
    printf("%-30s %-8s %12llu %7.3f %12.4e |", "total (file, header bound)", "",
           (unsigned long long)(tb + a->fixed_bytes + a->header_bytes),
           8.0 * (double)(tb + a->fixed_bytes) / nel, td);
    if (r_ok)
        printf(" %-8s %12llu %7.3f %12.4e\n", "", (unsigned long long)(rb + a->fixed_bytes + a->header_bytes),
               8.0 * (double)(rb + a->fixed_bytes) / nel, rd);
    else
        printf(" %-8s %12s %7s %12s\n", "", "-", "-", "-");
}

/* --measure-kld: the engine-measured factors over the calibration text. */
static int measure_kld(const struct qalloc_cli *c, struct moeq_alloc *a, const gguf_file *f, const char *in_path,
                       const struct moeq_imatrix *im)
{
    if (!c->calib) { cli_error("quantize: --measure-kld needs --calib FILE (calibration text)"); return -1; }
    char err[512];
    size_t len;
    char *text = cli_read_file(c->calib, &len, err, sizeof err);
    if (!text) { cli_error("quantize: %s", err); return -1; }
    const int info = cli_log_level >= CLI_LOG_INFO;
    struct moeq_alloc_kld_opts o = { in_path, text, len, c->measure_kld, c->measure_ctx, c->measure_units,
                                     c->report, c->n_threads, im, info ? stderr : NULL,
                                     info ? cli_progress_cb : NULL, NULL };
    int rc = moeq_alloc_measure_kld(a, f, &o, err, sizeof err);
    cli_progress_end();
    free(text);
    if (rc != 0) cli_error("quantize: %s", err);
    return rc;
}

static int any_measured(const struct moeq_alloc *a)
{
    for (int k = 0; k < a->n_units; k++)
        if (a->units[k].n_meas) return 1;
    return 0;
}

int qalloc_plan(const struct qalloc_cli *c, const char *in_path, const char *imatrix_path, int ignore_rules,
                int dry_run, const char *recipe, int **types, int *n_types, char **plan_meta, const char **mix_name)
{
    char err[512];
    gguf_file *f = gguf_open(in_path, err, sizeof err);
    if (!f) { cli_error("%s", err); return 1; }
    struct moeq_alloc a;
    struct moeq_imatrix *im = NULL;
    int rc = 1, *choice = NULL, *rtype = NULL, changed = 0;
    if (moeq_alloc_init(&a, f, c->n_allow ? c->allow : NULL, c->n_allow, !imatrix_path && !ignore_rules, err, sizeof err) != 0) {
        cli_error("quantize: %s", err);
        goto out;
    }
    if (imatrix_path) {
        im = moeq_imatrix_new();
        if (moeq_imatrix_load(im, imatrix_path, err, sizeof err) != 0) { cli_error("%s", err); goto out; }
        /* as the quantize job does (it says so) */
        moeq_imatrix_shrink_low_counts(im, MOEQ_IMATRIX_LOW_COUNT_FRAC, NULL);
    }
    FILE *sf = c->sensitivity ? fopen(c->sensitivity, "r") : NULL;
    if (sf) {
        fclose(sf);
        if (moeq_alloc_load(&a, c->sensitivity, err, sizeof err) != 0) { cli_error("quantize: %s", err); goto out; }
        cli_info("measurement read from %s%s", c->sensitivity,
                 any_measured(&a) ? " (with measured sensitivity factors)" : "");
    } else {
        if (moeq_alloc_measure(&a, f, im, c->rows, c->n_threads,
                               cli_log_level >= CLI_LOG_INFO ? cli_progress_cb : NULL, NULL, err, sizeof err) != 0) { cli_error("quantize: %s", err); goto out; }
        changed = 1;
    }
    /* measured factors: unless the file read back has them */
    if (c->measure_kld && (changed || !any_measured(&a))) {
        if (measure_kld(c, &a, f, in_path, im) != 0) goto out;
        changed = 1;
    }
    if (c->sensitivity && changed && moeq_alloc_save(&a, c->sensitivity, err, sizeof err) != 0) { cli_error("quantize: %s", err); goto out; }
    if (c->report && moeq_alloc_sensitivity_report(&a, stdout) != 0) {
        cli_error("quantize: --sensitivity-report: no unit has a measured KLD (pass --measure-kld N --calib FILE)");
        goto out;
    }
    uint64_t budget;
    if (c->fit_budget) {
        uint64_t wb;
        if (fit_weight_budget(c, f, in_path, &wb) != 0) goto out;
        budget = wb > a.fixed_bytes ? wb - a.fixed_bytes : 0;
    } else if (c->target_size) {
        budget = moeq_alloc_unit_budget(&a, c->target_size);
    } else {
        uint64_t tb = (uint64_t)(c->target_bpw * (double)a.nelem_all / 8.0);
        budget = tb > a.fixed_bytes ? tb - a.fixed_bytes : 0;
    }
    if (!(choice = calloc((size_t)a.n_units + 1, sizeof *choice)) || !(*types = calloc((size_t)a.n_tensors + 1, sizeof **types))) {
        cli_error("out of memory");
        goto out;
    }
    if (moeq_alloc_solve(&a, budget, choice, err, sizeof err) != 0) { cli_error("quantize: %s", err); goto out; }
    moeq_alloc_types(&a, choice, *types);
    *n_types = a.n_tensors;
    *plan_meta = moeq_alloc_plan_string(&a, choice, f);
    /* the file type: the mix of the type holding most weights */
    uint64_t by_type[MOEQ_TYPE_COUNT] = { 0 };
    uint64_t ub = 0;
    for (int k = 0; k < a.n_units; k++) {
        by_type[a.units[k].type[choice[k]]] += a.units[k].nelem;
        ub += a.units[k].bytes[choice[k]];
    }
    int top = 0;
    for (int t = 0; t < MOEQ_TYPE_COUNT; t++) if (by_type[t] > by_type[top]) top = t;
    *mix_name = moeq_type_name(top);
    cli_info("plan: %llu of %llu bytes for the %d units (%.4f%% of the budget), file at most %llu bytes, "
             "%.4f bpw, predicted damage %.4e", (unsigned long long)ub, (unsigned long long)budget, a.n_units,
            budget ? 100.0 * (double)ub / (double)budget : 0.0, (unsigned long long)moeq_alloc_file_bytes(&a, choice),
            8.0 * (double)(ub + a.fixed_bytes) / (double)a.nelem_all, moeq_alloc_damage(&a, choice));
    if (dry_run) {
        const char *rname = NULL;
        rtype = calloc((size_t)a.n_units + 1, sizeof *rtype);
        int ok = rtype && recipe_types(recipe, in_path, imatrix_path, &a, rtype, &rname) == 0;
        print_table(&a, choice, ok ? rtype : NULL, rname);
    }
    if (c->plan_out) {
        const char *inputs[2] = { in_path, imatrix_path };
        moeq_outfile *po = moeq_outfile_open(c->plan_out, inputs, imatrix_path ? 2 : 1, err, sizeof err);
        if (!po) { cli_error("quantize: --plan-out: %s", err); goto out; }
        moeq_alloc_write_plan(&a, choice, moeq_outfile_fp(po));
        if (moeq_outfile_commit(po, err, sizeof err) != 0) { cli_error("quantize: --plan-out: %s", err); goto out; }
    }
    rc = 0;
out:
    if (rc) { free(*types); *types = NULL; }
    free(choice);
    free(rtype);
    moeq_alloc_free(&a);
    moeq_imatrix_free(im);
    gguf_close(f);
    return rc;
}
