/*
 * cmd_quantize.c: `moeq quantize`, llama-quantize compatible.
 *
 *   moeq quantize [options] IN.gguf OUT.gguf TYPE [THREADS]
 *
 * Parses the flags into the options of the library job (src/quant/quantize.h:
 * plan, importance data, streaming, temporary file renamed at the end) and
 * prints its progress, the dry-run plan and the final report (or, with
 * --json, the report as one JSON object).
 */
#include "cmd.h"
#include "quant/gptq.h"
#include "quant/quant_plan.h"
#include "quant/quantize.h"
#include "quant/tensor_groups.h"
#include "gguf/gguf.h"
#include "quant/imatrix.h"
#include "engine/pool.h"
#include "quant/quants.h"
#include "util/util.h"
#include "quantize_alloc.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_RULES 256
#define MAX_NAMES 256
#define MAX_KV    64

#define MOEQ_STR_(x) #x
#define MOEQ_STR(x) MOEQ_STR_(x)

static void usage(FILE *out)
{
    fprintf(out,
        "usage: moeq quantize [options] IN.gguf OUT.gguf TYPE [THREADS]\n"
        "\n"
        "TYPE is a llama.cpp mix, by name or by llama-quantize's file type number,\n"
        "or a tensor type:\n");
    int col = 0;
    for (const struct moeq_mix *m = moeq_mix_list(); m->name; m++, col++)
        fprintf(out, "%s%4d  %-8s", col % 5 ? "" : "\n  ", m->ftype, m->name);
    fprintf(out,
        "\n  (Q3_K, Q4_K, Q5_K mean the _M mixes). With --recipe, TYPE may be omitted\n"
        "  (a number in its place is then THREADS).\n"
        "\noptions:\n"
        "  --recipe NAME             a type per tensor group, TYPE the base:\n");
    cli_print_recipes(out, "                              ");
    fprintf(out,
        "  --allow-requantize        allow quantizing already-quantized tensors (e.g. Q8_0)\n"
        "  --imatrix FILE            importance matrix (.dat or GGUF) steering every block\n"
        "  --hessian FILE            full input second moments (moeq imatrix --hessian):\n"
        "                            Hessian-aware rounding (GPTQ inside each format's\n"
        "                            blocks) for every tensor the file covers\n"
        "  --calibration-text FILE   Hessian-aware rounding with the statistics collected\n"
        "                            layer by layer in this run: each weight's from the\n"
        "                            model with every weight before it already quantized\n"
        "                            (four passes over the text per layer)\n"
        "  --calibration-ctx N       tokens per calibration chunk (default 512)\n"
        "  --calibration-chunks N    use at most N chunks (default: all of the text)\n"
        "  --gptq-damp X             damping added to H's diagonal, a fraction of its mean\n"
        "                            (default " MOEQ_STR(MOEQ_GPTQ_DAMP) ")\n"
        "  --gptq-passes N           tries per block: each after the first fits the scales\n"
        "                            to the targets the last one's error feedback left, and\n"
        "                            the block with the lowest output error is kept\n"
        "                            (default " MOEQ_STR(MOEQ_GPTQ_PASSES) ")\n"
        "  --include-weights NAME    use the imatrix only for these tensors (repeatable)\n"
        "  --exclude-weights NAME    do not use the imatrix for these tensors (repeatable)\n"
        "  --tensor-type REGEX=TYPE  type for tensors whose name matches (POSIX ERE,\n"
        "                            searched; repeatable, the first matching rule wins)\n"
        "  --token-embedding-type T  type of token_embd.weight\n"
        "  --output-tensor-type T    type of output.weight\n"
        "  --leave-output-tensor     copy output.weight unchanged (not quantized)\n"
        "  --override-kv KEY=TYPE:VALUE\n"
        "                            set a metadata key in the output; TYPE int, float,\n"
        "                            bool or str (repeatable)\n"
        "  --pure                    no mix rules: every weight gets TYPE's base type\n"
        "  --ignore-imatrix-rules    allow IQ2_* without importance data\n"
        "  --min-error               stop at the least imatrix-weighted error per block;\n"
        "                            by default i-quant and Q4_K blocks are then rescaled\n"
        "                            to be unbiased (a little more error per tensor,\n"
        "                            lower KL divergence of the model)\n"
        "  --target-bpw X            allocate types per tensor by measured importance for\n"
        "                            X bits per weight (all tensor bits / all elements)\n"
        "  --target-size SIZE        ... for a whole output file of at most SIZE (11.4G)\n"
        "  --fit SIZE                ... for the largest file that runs in SIZE of memory\n"
        "                            with -c N, -ctk/-ctv f16|q8_0, --parallel N, --reserve\n"
        "                            SIZE (default 1G), as `moeq fit` computes it\n"
        "  --allow-types LIST        candidate types of the allocation (comma-separated)\n"
        "  --sensitivity FILE        save the measurement, or read it back when FILE exists\n"
        "  --sample-rows N           rows measured per tensor (default 1024)\n"
        "  --measure-kld N           measure each unit's sensitivity factor in the engine:\n"
        "                            the unit alone at ~2.5 bpw, the mean KL-divergence\n"
        "                            change over N chunks of --calib FILE (text)\n"
        "  --measure-units N         measure an even sample of N units (default all); the\n"
        "                            rest take their group's median factor\n"
        "  --measure-ctx N           tokens per measurement chunk (default 512)\n"
        "  --sensitivity-report      also swap at ~3.5 bpw and print the rank correlation\n"
        "                            of predicted damage and measured KLD change\n"
        "  --plan-out FILE           write the allocated plan as --tensor-type lines\n"
        "  --recipe-file FILE        read --tensor-type lines (REGEX=TYPE) from FILE\n"
        "  --dry-run                 print the plan with types and sizes; write nothing\n"
        "                            (with a target: next to --recipe's, or asym-2bitexp's)\n"
        "                            (needs no --allow-requantize)\n"
        "  --split-max-size N[M|G]   write a split set OUT-00001-of-0000N.gguf, a new part\n"
        "                            whenever the next tensor would pass N bytes of data\n"
        "  --keep-split              split the output as the input's split set is split\n"
        "  --json                    print the report (or the dry run's plan) as one JSON\n"
        "                            object on stdout: sizes, bits per weight, per-type and\n"
        "                            per-group totals, the tensors, the time\n"
        "  -q, --quiet               no progress, tables or report; errors and warnings only\n"
        "                            (also -v, --verbose, --log-level L)\n"
        "\nexample:\n"
        "  moeq quantize --allow-requantize --imatrix imatrix.gguf --recipe asym-2bitexp \\\n"
        "      model-q8_0.gguf model-asym.gguf\n");
}

/* ---------------------------------------------------------- printing */

static void fmt_bytes(char *buf, size_t n, double b)
{
    if (b >= 1024.0 * 1024 * 1024) snprintf(buf, n, "%.2f GiB", b / (1024.0 * 1024 * 1024));
    else if (b >= 1024.0 * 1024) snprintf(buf, n, "%.2f MiB", b / (1024.0 * 1024));
    else snprintf(buf, n, "%.1f KiB", b / 1024.0);
}

/* One line per tensor as it is written. */
static void progress(void *ctx, const struct moeq_quantize_progress *p)
{
    (void)ctx;
    const struct moeq_quantize_tensor *t = p->tensor;
    double el = p->elapsed_s;
    double eta = p->done_bytes ? el * (double)(p->total_bytes - p->done_bytes) / (double)p->done_bytes : 0;
    char bin[32], bout[32];
    fmt_bytes(bin, sizeof bin, (double)t->src_bytes);
    fmt_bytes(bout, sizeof bout, (double)t->nbytes);
    if (t->quantized)
        cli_progress("quantize: [%4d/%4d] %-34s %-7s -> %-7s %10s -> %10s  rmse %.3e wrmse %.3e  %5.1fs ETA %5.1fs",
                p->index + 1, p->n_tensors, t->name, moeq_type_name(t->src_type), moeq_type_name(t->type),
                bin, bout, t->rmse, t->wrmse, el, eta);
    else
        cli_progress("quantize: [%4d/%4d] %-34s %-7s    (copied)  %10s  %5.1fs ETA %5.1fs",
                p->index + 1, p->n_tensors, t->name, moeq_type_name(t->src_type), bout, el, eta);
}

static void print_plan(const struct moeq_quantize_report *r)
{
    printf("%-36s %-8s %-8s %-20s %14s\n", "tensor", "from", "to", "shape", "bytes");
    for (int i = 0; i < r->n_tensors; i++) {
        const struct moeq_quantize_tensor *t = &r->tensors[i];
        char shp[64];
        snprintf(shp, sizeof shp, "%llu x %llu x %llu", (unsigned long long)t->ne[0],
                 (unsigned long long)t->ne[1], (unsigned long long)t->ne[2]);
        printf("%-36s %-8s %-8s %-20s %14llu%s%s\n", t->name, moeq_type_name(t->src_type),
               moeq_type_name(t->type), shp, (unsigned long long)t->nbytes,
               t->fallback ? "  (row-length fallback)" : "",
               t->rule >= 0 ? "  (rule)" : t->recipe ? "  (recipe)" : t->planned ? "  (plan)" : "");
    }
}

/* The group -> type table of the output. */
static void print_groups(const struct moeq_quantize_report *r)
{
    size_t n = (size_t)r->n_tensors;
    int *types = calloc(n + 1, sizeof *types);
    uint64_t *nb = calloc(n + 1, sizeof *nb), *nel = calloc(n + 1, sizeof *nel);
    const char **cn = calloc(n + 1, sizeof *cn);
    if (types && nb && nel && cn) {
        for (size_t i = 0; i < n; i++) {
            types[i] = r->tensors[i].type; nb[i] = r->tensors[i].nbytes;
            cn[i] = r->tensors[i].name; nel[i] = r->tensors[i].nelem;
        }
        moeq_print_group_table(stdout, n, cn, types, nel, nb);
    }
    free(types); free(nb); free(nel); free(cn);
}

/* The report as JSON: sizes are tensor data bytes; "types" and "groups"
 * total the output tensors as the group table does. */
static json_t *report_json(const struct moeq_quantize_report *r, const char *in, const char *out,
                           const struct moeq_mix *mix, const struct moeq_recipe *rec, int dry_run)
{
    struct moeq_group_summary *gs = malloc(sizeof *gs);
    if (!gs) return NULL;
    moeq_group_summary_init(gs);
    uint64_t src_elems = 0;
    json_t *ts = json_array();
    for (int i = 0; i < r->n_tensors; i++) {
        const struct moeq_quantize_tensor *t = &r->tensors[i];
        moeq_group_summary_add(gs, t->name, strlen(t->name), t->type, t->nelem, t->nbytes);
        src_elems += t->nelem;
        json_array_append_new(ts, json_pack("{s:s, s:s, s:s, s:I, s:I, s:b, s:f, s:f}", "name", t->name,
            "from", moeq_type_name(t->src_type), "to", moeq_type_name(t->type),
            "src_bytes", (json_int_t)t->src_bytes, "bytes", (json_int_t)t->nbytes, "quantized", t->quantized,
            "rmse", t->rmse, "wrmse", t->wrmse));
    }
    json_t *types = json_object(), *groups = json_object();
    for (int ty = 0; ty < MOEQ_TYPE_COUNT; ty++) {
        uint64_t c = 0, b = 0, e = 0;
        for (int g = 0; g < MOEQ_GROUP_COUNT; g++) {
            if (!gs->count[g][ty]) continue;
            c += gs->count[g][ty]; b += gs->nbytes[g][ty]; e += gs->nelem[g][ty];
            json_t *gj = json_object_get(groups, moeq_group_key(g));
            if (!gj) json_object_set_new(groups, moeq_group_key(g), gj = json_object());
            json_object_set_new(gj, moeq_type_name(ty), json_pack("{s:I, s:I, s:I, s:f}",
                "tensors", (json_int_t)gs->count[g][ty], "bytes", (json_int_t)gs->nbytes[g][ty],
                "parameters", (json_int_t)gs->nelem[g][ty], "bits_per_weight",
                gs->nelem[g][ty] ? 8.0 * (double)gs->nbytes[g][ty] / (double)gs->nelem[g][ty] : 0.0));
        }
        if (c) json_object_set_new(types, moeq_type_name(ty), json_pack("{s:I, s:I, s:I, s:f}",
            "tensors", (json_int_t)c, "bytes", (json_int_t)b, "parameters", (json_int_t)e,
            "bits_per_weight", e ? 8.0 * (double)b / (double)e : 0.0));
    }
    json_t *j = json_pack("{s:s, s:s, s:s, s:o, s:b, s:i, s:I, s:I, s:I, s:f, s:f, s:i, s:i, s:f, s:o, s:o, s:o}",
        "input", in, "output", out, "mix", mix->name, "recipe", rec ? json_string(rec->name) : json_null(),
        "dry_run", dry_run, "n_tensors", r->n_tensors,
        "input_bytes", (json_int_t)r->src_bytes, "output_bytes", (json_int_t)r->out_bytes,
        "parameters", (json_int_t)gs->total_elems,
        "input_bits_per_weight", src_elems ? 8.0 * (double)r->src_bytes / (double)src_elems : 0.0,
        "bits_per_weight", moeq_group_summary_bpw(gs), "imatrix_tensors", r->imatrix_used,
        "n_threads", r->n_threads, "seconds", r->seconds, "types", types, "groups", groups, "tensors", ts);
    free(gs);
    return j;
}

/* ------------------------------------------------------------- main */

int cmd_quantize(int argc, char **argv)
{
    const char *imatrix_path = NULL, *recipe_name = NULL, *hessian_path = NULL, *calib_path = NULL;
    int64_t calib_ctx = 512, calib_chunks = 0;
    char *calib_text = NULL;
    size_t calib_len = 0;
    double gptq_damp = 0;
    int allow_requant = 0, pure = 0, leave_output = 0, dry_run = 0, json = 0, ignore_rules = 0, logopt = 0, keep_split = 0;
    uint64_t split_max_size = 0;
    int embd_type = -1, out_type = -1;
    struct moeq_quant_params qp = { .fit = MOEQ_FIT_UNBIASED };
    const char *include[MAX_NAMES], *exclude[MAX_NAMES];
    int n_include = 0, n_exclude = 0;
    struct moeq_type_rule rules[MAX_RULES];
    int n_rules = 0;
    struct moeq_kv_override kvs[MAX_KV];
    int n_kv = 0;
    const char *pos[4];
    int n_pos = 0;
    struct qalloc_cli qa;
    qalloc_init(&qa);
    int *plan_types = NULL, n_plan_types = 0;
    char *plan_meta = NULL;
    const char *alloc_mix = NULL;
    char err[512];
    int rc = 2;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (cli_is_help(a)) { usage(stdout); rc = 0; goto out_rules; }
#define NEED_ARG() do { if (i + 1 >= argc) { rc = cli_usage_error("quantize", "%s needs an argument", a); goto out_rules; } } while (0)
        if (!strcmp(a, "--allow-requantize")) allow_requant = 1;
        else if (!strcmp(a, "--pure")) pure = 1;
        else if (!strcmp(a, "--leave-output-tensor")) leave_output = 1;
        else if (!strcmp(a, "--override-kv")) {
            NEED_ARG();
            if (n_kv >= MAX_KV) { rc = cli_usage_error("quantize", "too many --override-kv"); goto out_rules; }
            if (moeq_kv_override_parse(argv[++i], &kvs[n_kv], err, sizeof err) != 0) {
                rc = cli_usage_error("quantize", "%s", err);
                goto out_rules;
            }
            n_kv++;
        }
        else if (!strcmp(a, "--dry-run")) dry_run = 1;
        else if (!strcmp(a, "--json")) json = 1;
        else if (!strcmp(a, "--keep-split")) keep_split = 1;
        else if (!strcmp(a, "--split-max-size")) {
            NEED_ARG();
            if (cli_parse_size(argv[++i], &split_max_size) || split_max_size == 0) {
                rc = cli_usage_error("quantize", "--split-max-size: bad size '%s'", argv[i]);
                goto out_rules;
            }
        }
        else if (!strcmp(a, "--ignore-imatrix-rules")) ignore_rules = 1;
        else if (!strcmp(a, "--min-error")) qp.fit = MOEQ_FIT_MIN_ERROR;
        else if ((logopt = cli_log_option("quantize", argc, argv, &i)) != 0) { if (logopt == 2) goto out_rules; }
        else if (!strcmp(a, "--imatrix")) { NEED_ARG(); imatrix_path = argv[++i]; }
        else if (!strcmp(a, "--hessian")) { NEED_ARG(); hessian_path = argv[++i]; }
        else if (!strcmp(a, "--calibration-text")) { NEED_ARG(); calib_path = argv[++i]; }
        else if (!strcmp(a, "--calibration-ctx") || !strcmp(a, "--calibration-chunks")) {
            NEED_ARG();
            const int is_ctx = !strcmp(a, "--calibration-ctx");
            int64_t v;
            if (cli_parse_i64(argv[++i], &v) || v < (is_ctx ? 8 : 1) || v > 1 << 20) {
                rc = cli_usage_error("quantize", "%s needs a count of at least %d, not '%s'", a, is_ctx ? 8 : 1, argv[i]);
                goto out_rules;
            }
            if (is_ctx) calib_ctx = v; else calib_chunks = v;
        }
        else if (!strcmp(a, "--gptq-passes")) {
            NEED_ARG();
            int64_t v;
            if (cli_parse_i64(argv[++i], &v) || v < 1 || v > 16)
                return cli_usage_error("quantize", "--gptq-passes needs a count from 1 to 16, not '%s'", argv[i]);
            qp.gptq_passes = (int)v;
        }
        else if (!strcmp(a, "--gptq-damp")) {
            NEED_ARG();
            if (cli_parse_f64(argv[++i], &gptq_damp) || !(gptq_damp > 0) || gptq_damp > 100)
                return cli_usage_error("quantize", "--gptq-damp needs a number in (0, 100], not '%s'", argv[i]);
        }
        else if (!strcmp(a, "--recipe")) { NEED_ARG(); recipe_name = argv[++i]; }
        else if (!strcmp(a, "--include-weights") || !strcmp(a, "--exclude-weights")) {
            NEED_ARG();
            int inc = a[2] == 'i';
            if ((inc ? n_include : n_exclude) >= MAX_NAMES) { rc = cli_usage_error("quantize", "too many %s", a); goto out_rules; }
            if (inc) include[n_include++] = argv[++i]; else exclude[n_exclude++] = argv[++i];
        } else if (!strcmp(a, "--tensor-type")) {
            NEED_ARG();
            if (n_rules >= MAX_RULES) { rc = cli_usage_error("quantize", "too many --tensor-type rules"); goto out_rules; }
            if (moeq_type_rule_parse(argv[++i], &rules[n_rules], err, sizeof err) != 0) {
                rc = cli_usage_error("quantize", "%s", err);
                goto out_rules;
            }
            n_rules++;
        } else if (!strcmp(a, "--token-embedding-type") || !strcmp(a, "--output-tensor-type")) {
            NEED_ARG();
            int t = moeq_type_from_name(argv[++i]);
            if (t < 0 || t == MOEQ_TYPE_Q8_K) { rc = cli_usage_error("quantize", "%s: unknown type '%s'", a, argv[i]); goto out_rules; }
            if (a[2] == 't') embd_type = t; else out_type = t;
        } else if (qalloc_arg(&qa, argc, argv, &i, &rc)) {
            if (rc) goto out_rules;
            rc = 2;
        } else if (a[0] == '-' && a[1]) {
            rc = cli_usage_error("quantize", "unknown option '%s'", a);
            goto out_rules;
        } else {
            if (n_pos >= 4) { rc = cli_usage_error("quantize", "too many arguments"); goto out_rules; }
            pos[n_pos++] = a;
        }
#undef NEED_ARG
    }

    if (calib_path && hessian_path) {
        rc = cli_usage_error("quantize", "--calibration-text and --hessian are two sources of the same statistics: give one");
        goto out_rules;
    }
    const struct moeq_recipe *rec = NULL;
    if (recipe_name && !(rec = moeq_recipe_find(recipe_name))) {
        char known[256];
        rc = cli_usage_error("quantize", "unknown recipe '%s' (known: %s)", recipe_name,
                             cli_recipe_names(known, sizeof known));
        goto out_rules;
    }
    if (qa.recipe_file && qalloc_read_rules(qa.recipe_file, rules, MAX_RULES, &n_rules) != 0) { rc = 1; goto out_rules; }
    if (!qa.active && (qa.measure_kld || qa.report)) {
        rc = cli_usage_error("quantize", "--measure-kld and --sensitivity-report need a target (--target-bpw, --target-size or --fit)");
        goto out_rules;
    }
    if (n_pos < 2 || (n_pos < 3 && !rec && !qa.active)) { rc = cli_usage_error("quantize", "expected IN.gguf OUT.gguf TYPE [THREADS]"); goto out_rules; }
    const char *in_path = pos[0], *out_path = pos[1];
    const char *rec_base = rec ? moeq_mix_of_ftype(rec->ftype)->name : NULL;
    const char *type_name = n_pos >= 3 ? pos[2] : rec_base;
    int64_t nthreads = 0;
    /* with a recipe and no TYPE, a third positional that is a number is THREADS */
    if (rec && n_pos == 3 && cli_parse_i64(pos[2], &nthreads) == 0) type_name = rec_base;
    else if (n_pos == 4 && (cli_parse_i64(pos[3], &nthreads) != 0 || nthreads < 1)) {
        rc = cli_usage_error("quantize", "THREADS must be a positive integer, got '%s'", pos[3]);
        goto out_rules;
    }
    qa.n_threads = (int)nthreads;
    if (qa.active) {
        if (qalloc_plan(&qa, in_path, imatrix_path, ignore_rules, dry_run, recipe_name, &plan_types, &n_plan_types, &plan_meta, &alloc_mix) != 0) {
            rc = 1;
            goto out_rules;
        }
        if (!type_name || (n_pos < 3 && !rec)) type_name = alloc_mix;
    }
    const struct moeq_mix *mix = moeq_mix_find(type_name);
    if (!mix) { rc = cli_usage_error("quantize", "unknown type or mix '%s'", type_name); goto out_rules; }
    struct moeq_quantize_opts qo;
    moeq_quantize_opts_init(&qo);
    qo.in_path = in_path; qo.out_path = out_path;
    qo.mix = mix; qo.recipe = rec;
    qo.rules = rules; qo.n_rules = n_rules;
    qo.token_embd_type = embd_type; qo.output_type = out_type;
    qo.pure = pure;
    qo.leave_output_tensor = leave_output;
    qo.kv = kvs; qo.n_kv = n_kv;
    qo.imatrix_path = imatrix_path;
    qo.hessian_path = hessian_path;
    qo.gptq_damp = gptq_damp;
    if (calib_path && !dry_run) {
        if (!(calib_text = cli_read_file(calib_path, &calib_len, err, sizeof err))) {
            cli_error("quantize: %s", err);
            rc = 1;
            goto out_rules;
        }
        qo.calib_text = calib_text;
        qo.calib_len = calib_len;
        qo.calib_path = calib_path;
        qo.calib_ctx = (int)calib_ctx;
        qo.calib_chunks = (int)calib_chunks;
    }
    qo.include = include; qo.n_include = n_include;
    qo.exclude = exclude; qo.n_exclude = n_exclude;
    qo.allow_requantize = allow_requant;
    qo.ignore_imatrix_rules = ignore_rules;
    qo.qp = qp;
    qo.n_threads = (int)nthreads;
    qo.dry_run = dry_run;
    qo.types = plan_types; qo.n_types = n_plan_types;
    qo.plan_meta = plan_meta;
    qo.keep_split = keep_split;
    qo.split_max_size = split_max_size;
    if (cli_log_level >= CLI_LOG_INFO) qo.progress = progress;
    struct moeq_quantize_report rep;
    if (moeq_quantize_file(&qo, &rep, err, sizeof err) != 0) {
        cli_error("%s", err);
        rc = 1;
        goto out_rules;
    }
    cli_progress_end();
    if (json) {
        if (cli_print_json(report_json(&rep, in_path, out_path, mix, rec, dry_run), "quantize") != 0) {
            moeq_quantize_report_free(&rep);
            rc = 1;
            goto out_rules;
        }
        if (!dry_run)
            cli_info("quantized %s -> %s (%s%s%s) in %.1fs", in_path, out_path, mix->name,
                     rec ? ", recipe " : "", rec ? rec->name : "", rep.seconds);
    } else if (cli_log_level < CLI_LOG_INFO) {
        /* errors and warnings only */
    } else if (dry_run) {
        print_plan(&rep);
        print_groups(&rep);
        printf("dry run: %s would be %llu bytes (%s %s); nothing written\n", out_path,
               (unsigned long long)rep.out_bytes, mix->name, rec ? rec->name : "");
    } else {
        printf("\n%-36s %-8s %12s %12s %12s\n", "tensor", "type", "bytes", "rmse", "wrmse");
        for (int i = 0; i < rep.n_tensors; i++) {
            const struct moeq_quantize_tensor *t = &rep.tensors[i];
            if (t->quantized)
                printf("%-36s %-8s %12llu %12.4e %12.4e\n", t->name, moeq_type_name(t->type),
                       (unsigned long long)t->nbytes, t->rmse, t->wrmse);
        }
        printf("\n");
        print_groups(&rep);
        cli_info("quantized %s -> %s (%s%s%s) in %.1fs", in_path, out_path, mix->name,
                rec ? ", recipe " : "", rec ? rec->name : "", rep.seconds);
    }
    moeq_quantize_report_free(&rep);
    rc = 0;

out_rules:
    free(calib_text);
    free(plan_types);
    free(plan_meta);
    for (int r = 0; r < n_rules; r++) moeq_type_rule_free(&rules[r]);
    return rc;
}
