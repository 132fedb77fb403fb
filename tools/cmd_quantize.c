/*
 * cmd_quantize.c: `moeq quantize`, llama-quantize compatible.
 *
 *   moeq quantize [options] IN.gguf OUT.gguf TYPE [THREADS]
 *
 * Streams the model tensor by tensor and, inside a tensor, expert by expert
 * and row block by row block: peak memory is a few row blocks, not the
 * model (the real source is a 32 GB Q8_0 on a 24 GB machine), and the
 * source pages already processed are dropped from the page cache mapping.
 * Rows are quantized in parallel; each 3-D expert tensor takes its expert's
 * slice of the importance matrix. The output goes to a temporary file that
 * is renamed at the end, so a failure never leaves a partial OUT.
 */
#include "cmd.h"
#include "gguf.h"
#include "imatrix.h"
#include "pool.h"
#include "quant_plan.h"
#include "quants.h"
#include "tensor_groups.h"
#include "util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define MAX_RULES 256
#define MAX_NAMES 256

static void usage(FILE *out)
{
    fprintf(out,
        "usage: moeq quantize [options] IN.gguf OUT.gguf TYPE [THREADS]\n"
        "\n"
        "TYPE is a tensor type or a llama.cpp mix:\n  ");
    for (const struct moeq_mix *m = moeq_mix_list(); m->name; m++) fprintf(out, " %s", m->name);
    fprintf(out,
        "\n  (Q3_K, Q4_K, Q5_K mean the _M mixes). With --recipe, TYPE may be omitted.\n"
        "\noptions:\n"
        "  --recipe asym-2bitexp     routed gate/up IQ2_S, down IQ3_S, attention Q4_K,\n"
        "                            token_embd/output Q6_K, base IQ3_S\n"
        "  --allow-requantize        allow quantizing already-quantized tensors (e.g. Q8_0)\n"
        "  --imatrix FILE            importance matrix (.dat or GGUF) steering every block\n"
        "  --include-weights NAME    use the imatrix only for these tensors (repeatable)\n"
        "  --exclude-weights NAME    do not use the imatrix for these tensors (repeatable)\n"
        "  --tensor-type REGEX=TYPE  type for tensors whose name matches (POSIX ERE,\n"
        "                            searched; repeatable, the first matching rule wins)\n"
        "  --token-embedding-type T  type of token_embd.weight\n"
        "  --output-tensor-type T    type of output.weight\n"
        "  --pure                    no mix rules: every weight gets TYPE's base type\n"
        "  --ignore-imatrix-rules    allow IQ2_* without importance data\n"
        "  --min-error               stop at the least imatrix-weighted error per block;\n"
        "                            by default i-quant and Q4_K blocks are then rescaled\n"
        "                            to be unbiased (a little more error per tensor,\n"
        "                            lower KL divergence of the model)\n"
        "  --dry-run                 print the plan with types and sizes; write nothing\n"
        "  -q, --quiet               no per-tensor lines\n"
        "\nexample:\n"
        "  moeq quantize --allow-requantize --imatrix imatrix.dat --recipe asym-2bitexp \\\n"
        "      model-q8_0.gguf model-asym.gguf\n");
}

struct recipe { const char *name, *base; const char *rules[8]; const char *embd, *out; };
static const struct recipe recipes[] = {
    { "asym-2bitexp", "IQ3_S",
      { "ffn_gate_exps=IQ2_S", "ffn_up_exps=IQ2_S", "ffn_down_exps=IQ3_S",
        "attn_q=Q4_K", "attn_k=Q4_K", "attn_v=Q4_K", "attn_output=Q4_K", NULL },
      "Q6_K", "Q6_K" },
};

/* ---------------------------------------------------------- row worker */

struct qjob {
    int src_type, dst_type;
    int64_t ne0;
    const uint8_t *src;      /* first row of the block */
    size_t src_row, dst_row; /* bytes per row */
    uint8_t *dst;
    float *f32;              /* [rows][ne0] scratch for the block */
    float *back;             /* [threads][ne0] scratch */
    const float *w;          /* importance weights or NULL */
    double *err2, *werr2, *wsum, *sum2; /* per thread */
    int failed;
};

static void quant_rows(void *ctx, int64_t b, int64_t e, int tid)
{
    struct qjob *j = ctx;
    const struct moeq_type_traits *st = moeq_type_traits(j->src_type);
    const struct moeq_type_traits *dt = moeq_type_traits(j->dst_type);
    float *x = j->f32 + b * j->ne0;
    for (int64_t r = b; r < e; r++)
        st->to_float(j->src + r * j->src_row, j->f32 + r * j->ne0, j->ne0);
    if (dt->quantize) {
        dt->quantize(x, j->dst + b * j->dst_row, e - b, j->ne0, j->w);
    } else if (j->dst_type == MOEQ_TYPE_F32) {
        memcpy(j->dst + b * j->dst_row, x, (size_t)((e - b) * j->ne0) * 4);
    } else {
        j->failed = 1;
        return;
    }
    /* error against the source, plain and importance-weighted */
    float *back = j->back + (int64_t)tid * j->ne0;
    double e2 = 0, we2 = 0, ws = 0, s2 = 0;
    for (int64_t r = b; r < e; r++) {
        dt->to_float(j->dst + r * j->dst_row, back, j->ne0);
        const float *xr = j->f32 + r * j->ne0;
        for (int64_t c = 0; c < j->ne0; c++) {
            double d = (double)xr[c] - back[c];
            double w = j->w ? j->w[c] : 1.0;
            e2 += d * d;
            we2 += w * d * d;
            ws += w;
            s2 += (double)xr[c] * xr[c];
        }
    }
    j->err2[tid] += e2;
    j->werr2[tid] += we2;
    j->wsum[tid] += ws;
    j->sum2[tid] += s2;
}

/* ----------------------------------------------------------- helpers */

static int name_listed(const char *name, char **list, int n)
{
    for (int i = 0; i < n; i++)
        if (strcmp(list[i], name) == 0) return 1;
    return 0;
}

static void fmt_bytes(char *buf, size_t n, double b)
{
    if (b >= 1024.0 * 1024 * 1024) snprintf(buf, n, "%.2f GiB", b / (1024.0 * 1024 * 1024));
    else if (b >= 1024.0 * 1024) snprintf(buf, n, "%.2f MiB", b / (1024.0 * 1024));
    else snprintf(buf, n, "%.1f KiB", b / 1024.0);
}

static char *tensor_name(const gguf_tensor *t)
{
    char *s = malloc((size_t)t->name.n + 1);
    if (!s) { fprintf(stderr, "moeq: out of memory\n"); exit(1); }
    memcpy(s, t->name.s, (size_t)t->name.n);
    s[t->name.n] = 0;
    return s;
}

static int is_source_type_ok(int type)
{
    const struct moeq_type_traits *t = moeq_type_traits(type);
    return t && t->to_float && type != MOEQ_TYPE_Q8_K;
}

/* ------------------------------------------------------------- main */

int cmd_quantize(int argc, char **argv)
{
    const char *imatrix_path = NULL, *recipe_name = NULL;
    int allow_requant = 0, pure = 0, dry_run = 0, ignore_rules = 0, quiet = 0;
    int embd_type = -1, out_type = -1;
    char *include[MAX_NAMES], *exclude[MAX_NAMES];
    int n_include = 0, n_exclude = 0;
    struct moeq_type_rule rules[MAX_RULES];
    int n_rules = 0;
    const char *pos[4];
    int n_pos = 0;
    char err[512];
    int rc = 2;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (cli_is_help(a)) { usage(stdout); rc = 0; goto out_rules; }
#define NEED_ARG() do { if (i + 1 >= argc) { rc = cli_usage_error("quantize", "%s needs an argument", a); goto out_rules; } } while (0)
        if (!strcmp(a, "--allow-requantize")) allow_requant = 1;
        else if (!strcmp(a, "--pure")) pure = 1;
        else if (!strcmp(a, "--dry-run")) dry_run = 1;
        else if (!strcmp(a, "--ignore-imatrix-rules")) ignore_rules = 1;
        else if (!strcmp(a, "--min-error")) moeq_quant_set_fit(MOEQ_FIT_MIN_ERROR);
        else if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) quiet = 1;
        else if (!strcmp(a, "--imatrix")) { NEED_ARG(); imatrix_path = argv[++i]; }
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
        } else if (a[0] == '-' && a[1]) {
            rc = cli_usage_error("quantize", "unknown option '%s'", a);
            goto out_rules;
        } else {
            if (n_pos >= 4) { rc = cli_usage_error("quantize", "too many arguments"); goto out_rules; }
            pos[n_pos++] = a;
        }
#undef NEED_ARG
    }

    const struct recipe *rec = NULL;
    if (recipe_name) {
        for (size_t r = 0; r < sizeof recipes / sizeof recipes[0]; r++)
            if (!strcmp(recipes[r].name, recipe_name)) rec = &recipes[r];
        if (!rec) { rc = cli_usage_error("quantize", "unknown recipe '%s' (known: asym-2bitexp)", recipe_name); goto out_rules; }
    }
    if (n_pos < 2 || (n_pos < 3 && !rec)) { rc = cli_usage_error("quantize", "expected IN.gguf OUT.gguf TYPE [THREADS]"); goto out_rules; }
    const char *in_path = pos[0], *out_path = pos[1];
    const char *type_name = n_pos >= 3 ? pos[2] : rec->base;
    int64_t nthreads = 0;
    /* with a recipe and no TYPE, a third positional that is a number is THREADS */
    if (rec && n_pos == 3 && cli_parse_i64(pos[2], &nthreads) == 0) type_name = rec->base;
    else if (n_pos == 4 && (cli_parse_i64(pos[3], &nthreads) != 0 || nthreads < 1)) {
        rc = cli_usage_error("quantize", "THREADS must be a positive integer, got '%s'", pos[3]);
        goto out_rules;
    }
    const struct moeq_mix *mix = moeq_mix_find(type_name);
    if (!mix) { rc = cli_usage_error("quantize", "unknown type or mix '%s'", type_name); goto out_rules; }
    if (rec) {
        /* the recipe's rules come after any the user gave, so the user's win */
        for (int k = 0; rec->rules[k]; k++) {
            if (n_rules >= MAX_RULES) break;
            if (moeq_type_rule_parse(rec->rules[k], &rules[n_rules], err, sizeof err) != 0) {
                cli_error("quantize: %s", err);
                rc = 1;
                goto out_rules;
            }
            n_rules++;
        }
        if (embd_type < 0) embd_type = moeq_type_from_name(rec->embd);
        if (out_type < 0) out_type = moeq_type_from_name(rec->out);
    }
    if (!strcmp(in_path, out_path)) {
        cli_error("quantize: output %s is the input file; refusing to overwrite it", out_path);
        rc = 1;
        goto out_rules;
    }

    rc = 1;
    gguf_file *f = gguf_open(in_path, err, sizeof err);
    if (!f) { cli_error("%s", err); goto out_rules; }

    struct moeq_imatrix *im = NULL;
    if (imatrix_path) {
        im = moeq_imatrix_new();
        if (moeq_imatrix_load(im, imatrix_path, err, sizeof err) != 0) {
            cli_error("%s", err);
            goto out_file;
        }
    }

    /* model shape for the mix rules */
    char arch[64] = "", key[160];
    gguf_get_str(f, "general.architecture", arch, sizeof arch);
    struct moeq_model_shape shape = { 0, 0, 0, 0, 0 };
    uint64_t u;
    snprintf(key, sizeof key, "%s.block_count", arch);
    if (gguf_get_u64(f, key, &u) == 0) shape.n_layer = (int)u;
    snprintf(key, sizeof key, "%s.attention.head_count", arch);
    if (gguf_get_u64(f, key, &u) == 0) shape.n_head = (int)u;
    snprintf(key, sizeof key, "%s.attention.head_count_kv", arch);
    if (gguf_get_u64(f, key, &u) == 0) shape.n_head_kv = (int)u;
    snprintf(key, sizeof key, "%s.expert_count", arch);
    if (gguf_get_u64(f, key, &u) == 0) shape.n_expert = (int)u;
    shape.has_output = gguf_find_tensor(f, "output.weight") >= 0;

    int n = (int)f->n_tensors;
    struct moeq_plan_tensor *pt = calloc((size_t)n + 1, sizeof *pt);
    struct moeq_plan_entry *pe = calloc((size_t)n + 1, sizeof *pe);
    char **names = calloc((size_t)n + 1, sizeof *names);
    if (!pt || !pe || !names) { cli_error("out of memory"); goto out_plan; }
    for (int i = 0; i < n; i++) {
        const gguf_tensor *t = &f->tensors[i];
        names[i] = tensor_name(t);
        pt[i].name = names[i];
        pt[i].src_type = (int)t->type;
        pt[i].n_dims = t->n_dims;
        memcpy(pt[i].ne, t->ne, sizeof pt[i].ne);
    }
    struct moeq_plan_opts po = { mix, pure, embd_type, out_type, im != NULL, rules, n_rules };
    if (moeq_plan(&po, &shape, pt, n, pe, err, sizeof err) != 0) {
        cli_error("quantize: %s: %s", in_path, err);
        goto out_plan;
    }

    /* importance data per tensor, checked before anything is written */
    struct moeq_imatrix_entry **ie = calloc((size_t)n + 1, sizeof *ie);
    if (!ie) { cli_error("out of memory"); goto out_plan; }
    int im_matched = 0, im_used = 0;
    for (int i = 0; i < n; i++) {
        if (!pe[i].quantize) continue;
        const gguf_tensor *t = &f->tensors[i];
        if (im) {
            struct moeq_imatrix_entry *e = moeq_imatrix_find_weight(im, names[i]);
            if (e) {
                im_matched++;
                uint64_t n_mat = t->ne[2] * t->ne[3];
                if (!(e->n_per_row == (int64_t)t->ne[0] && e->n_mat == (int64_t)n_mat) &&
                    !(e->n_mat == 1 && e->n_per_row == (int64_t)(t->ne[0] * n_mat))) {
                    cli_error("quantize: imatrix %s: entry %s has %lld values, but tensor %s in %s needs %llu x %llu",
                              imatrix_path, e->name, (long long)(e->n_per_row * e->n_mat), names[i], in_path,
                              (unsigned long long)t->ne[0], (unsigned long long)n_mat);
                    goto out_ie;
                }
                int use = 1;
                if (n_include && !name_listed(names[i], include, n_include)) use = 0;
                if (n_exclude && name_listed(names[i], exclude, n_exclude)) use = 0;
                if (use) { ie[i] = e; im_used++; }
            } else if (strcmp(names[i], "token_embd.weight") != 0) {
                fprintf(stderr, "moeq: warning: imatrix %s has no entry for %s\n", imatrix_path, names[i]);
            }
        }
        if (!ie[i] && moeq_type_needs_imatrix(pe[i].type) && !ignore_rules &&
            strcmp(names[i], "token_embd.weight") != 0 && strcmp(names[i], "output.weight") != 0) {
            cli_error("quantize: no importance data for %s, needed for %s (pass --imatrix, or --ignore-imatrix-rules)",
                      names[i], moeq_type_name(pe[i].type));
            goto out_ie;
        }
        const struct moeq_type_traits *st = moeq_type_traits(pt[i].src_type);
        if (st && st->quantized && !allow_requant) {
            cli_error("quantize: %s: tensor %s is already %s; requantizing is disabled (use --allow-requantize)",
                      in_path, names[i], st->name);
            goto out_ie;
        }
        if (!is_source_type_ok(pt[i].src_type) || !moeq_type_traits(pe[i].type)->to_float ||
            (!moeq_type_traits(pe[i].type)->quantize && pe[i].type != MOEQ_TYPE_F32)) {
            cli_error("quantize: cannot convert %s from %s to %s", names[i],
                      moeq_type_name(pt[i].src_type), moeq_type_name(pe[i].type));
            goto out_ie;
        }
    }
    if (im && im_matched == 0) {
        cli_error("quantize: imatrix %s matches no tensor of %s (computed for a different model?)",
                  imatrix_path, in_path);
        goto out_ie;
    }
    /* report experts without calibration data */
    if (im) {
        for (int i = 0; i < n; i++) {
            if (!ie[i] || ie[i]->n_mat <= 1) continue;
            int first = 1;
            for (int64_t m = 0; m < ie[i]->n_mat; m++) {
                if (ie[i]->counts[m] > 0) continue;
                if (first) fprintf(stderr, "moeq: warning: %s: no imatrix data for experts:", names[i]);
                fprintf(stderr, " %lld", (long long)m);
                first = 0;
            }
            if (!first) fprintf(stderr, " (uniform weights used)\n");
        }
    }

    /* the plan */
    uint64_t total_in = 0, total_out = 0;
    for (int i = 0; i < n; i++) { total_in += f->tensors[i].nbytes; total_out += pe[i].nbytes; }
    if (dry_run) {
        printf("%-36s %-8s %-8s %-20s %14s\n", "tensor", "from", "to", "shape", "bytes");
        for (int i = 0; i < n; i++) {
            char shp[64];
            const gguf_tensor *t = &f->tensors[i];
            snprintf(shp, sizeof shp, "%llu x %llu x %llu", (unsigned long long)t->ne[0],
                     (unsigned long long)t->ne[1], (unsigned long long)t->ne[2]);
            printf("%-36s %-8s %-8s %-20s %14llu%s%s\n", names[i], moeq_type_name(pt[i].src_type),
                   moeq_type_name(pe[i].type), shp, (unsigned long long)pe[i].nbytes,
                   pe[i].fallback ? "  (row-length fallback)" : "", pe[i].rule >= 0 ? "  (rule)" : "");
        }
    }
    for (int i = 0; i < n; i++)
        if (pe[i].fallback)
            fprintf(stderr, "moeq: note: %s: row length %llu does not fit the planned type; using %s\n",
                    names[i], (unsigned long long)f->tensors[i].ne[0], moeq_type_name(pe[i].type));

    {
        int *types = calloc((size_t)n + 1, sizeof *types);
        uint64_t *nb = calloc((size_t)n + 1, sizeof *nb);
        const char **cn = calloc((size_t)n + 1, sizeof *cn);
        uint64_t *nel = calloc((size_t)n + 1, sizeof *nel);
        if (!types || !nb || !cn || !nel) { cli_error("out of memory"); goto out_ie; }
        for (int i = 0; i < n; i++) {
            types[i] = pe[i].type; nb[i] = pe[i].nbytes; cn[i] = names[i];
            const gguf_tensor *t = &f->tensors[i];
            nel[i] = t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
        }
        if (dry_run) {
            moeq_print_group_table(stdout, (size_t)n, cn, types, nel, nb);
            printf("dry run: %s would be %llu bytes (%s %s); nothing written\n", out_path,
                   (unsigned long long)total_out, mix->name, rec ? rec->name : "");
            free(types); free(nb); free(cn); free(nel);
            rc = 0;
            goto out_ie;
        }
        free(types); free(nb); free(cn); free(nel);
    }

    /* ----------------------------------------------------------- write */
    gguf_writer *w = gguf_writer_open(out_path, in_path, err, sizeof err);
    if (!w) { cli_error("%s", err); goto out_ie; }
    gguf_writer_set_version(w, f->version >= 3 ? 3 : f->version);
    int ok = 1;
    for (uint64_t k = 0; ok && k < f->n_kv; k++) {
        char kname[512];
        size_t kl = f->kv[k].key.n < sizeof kname - 1 ? (size_t)f->kv[k].key.n : sizeof kname - 1;
        memcpy(kname, f->kv[k].key.s, kl);
        kname[kl] = 0;
        if (!strncmp(kname, "quantize.imatrix.", 17)) continue; /* stale from an earlier run */
        ok = gguf_writer_add_kv(w, kname, &f->kv[k].val) == 0;
    }
    gguf_value v;
    memset(&v, 0, sizeof v);
    v.type = GGUF_TYPE_UINT32; v.v.u64 = 2;
    ok = ok && gguf_writer_set_kv(w, "general.quantization_version", &v) == 0;
    v.v.u64 = (uint64_t)mix->ftype;
    ok = ok && gguf_writer_set_kv(w, "general.file_type", &v) == 0;
    if (im && ok) {
        gguf_value s;
        memset(&s, 0, sizeof s);
        s.type = GGUF_TYPE_STRING;
        s.v.str.s = imatrix_path; s.v.str.n = strlen(imatrix_path);
        ok = gguf_writer_set_kv(w, "quantize.imatrix.file", &s) == 0;
        if (ok && im->n_datasets) {
            s.v.str.s = im->datasets[0]; s.v.str.n = strlen(im->datasets[0]);
            ok = gguf_writer_set_kv(w, "quantize.imatrix.dataset", &s) == 0;
        }
        gguf_value iv;
        memset(&iv, 0, sizeof iv);
        iv.type = GGUF_TYPE_INT32;
        iv.v.i64 = im_used;
        ok = ok && gguf_writer_set_kv(w, "quantize.imatrix.entries_count", &iv) == 0;
        iv.v.i64 = im->chunk_count;
        ok = ok && gguf_writer_set_kv(w, "quantize.imatrix.chunks_count", &iv) == 0;
    }
    for (int i = 0; ok && i < n; i++)
        ok = gguf_writer_add_tensor(w, names[i], (uint32_t)pe[i].type, f->tensors[i].n_dims, f->tensors[i].ne) >= 0;
    ok = ok && gguf_writer_begin_data(w) == 0;
    if (!ok) {
        cli_error("%s", gguf_writer_error(w));
        gguf_writer_abort(w);
        goto out_ie;
    }

    moeq_pool *pool = moeq_pool_new((int)nthreads);
    int nth = moeq_pool_size(pool);
    double t0 = moeq_now_s();
    uint64_t done_bytes = 0;
    float *wbuf = NULL;
    double *acc = calloc((size_t)nth * 4, sizeof(double));
    struct { double rmse, wrmse, rel; } *stats = calloc((size_t)n + 1, sizeof *stats);
    if (!acc || !stats) { cli_error("out of memory"); ok = 0; }
    for (int i = 0; ok && i < n; i++) {
        const gguf_tensor *t = &f->tensors[i];
        if (!pe[i].quantize) {
            ok = gguf_writer_write(w, t->data, (size_t)t->nbytes) == 0;
        } else {
            const int64_t ne0 = (int64_t)t->ne[0], ne1 = (int64_t)t->ne[1];
            const int64_t n_mat = (int64_t)(t->ne[2] * t->ne[3]);
            const size_t src_row = moeq_row_size(pt[i].src_type, ne0);
            const size_t dst_row = moeq_row_size(pe[i].type, ne0);
            /* row blocks of about 16M values bound memory on huge matrices */
            int64_t block = (16 << 20) / ne0;
            if (block < 1) block = 1;
            if (block > ne1) block = ne1;
            float *f32 = malloc((size_t)(block * ne0) * sizeof(float));
            float *back = malloc((size_t)(nth * ne0) * sizeof(float));
            uint8_t *dst = malloc((size_t)block * dst_row);
            free(wbuf);
            wbuf = malloc((size_t)ne0 * sizeof(float));
            if (!f32 || !back || !dst || !wbuf) { cli_error("out of memory"); ok = 0; }
            memset(acc, 0, (size_t)nth * 4 * sizeof(double));
            for (int64_t m = 0; ok && m < n_mat; m++) {
                const float *wts = NULL;
                if (ie[i]) {
                    moeq_imatrix_weights(ie[i], ne0, n_mat, m, wbuf);
                    wts = wbuf;
                }
                const uint8_t *msrc = (const uint8_t *)t->data + (size_t)m * (size_t)ne1 * src_row;
                for (int64_t r0 = 0; ok && r0 < ne1; r0 += block) {
                    int64_t nr = ne1 - r0 < block ? ne1 - r0 : block;
                    struct qjob j = { pt[i].src_type, pe[i].type, ne0, msrc + (size_t)r0 * src_row,
                                      src_row, dst_row, dst, f32, back, wts,
                                      acc, acc + nth, acc + 2 * nth, acc + 3 * nth, 0 };
                    moeq_pool_for(pool, nr, 4, quant_rows, &j);
                    if (j.failed) { cli_error("quantize: no quantizer for %s", moeq_type_name(pe[i].type)); ok = 0; break; }
                    ok = gguf_writer_write(w, dst, (size_t)nr * dst_row) == 0;
                }
                /* this expert's source pages are done: drop them from our RSS */
                uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE);
                uintptr_t a0 = ((uintptr_t)msrc + pg - 1) & ~(pg - 1);
                uintptr_t a1 = ((uintptr_t)msrc + (size_t)ne1 * src_row) & ~(pg - 1);
                if (a1 > a0) madvise((void *)a0, a1 - a0, MADV_DONTNEED);
            }
            double e2 = 0, we2 = 0, ws = 0, s2 = 0;
            for (int k = 0; k < nth; k++) { e2 += acc[k]; we2 += acc[nth + k]; ws += acc[2 * nth + k]; s2 += acc[3 * nth + k]; }
            double nel = (double)ne0 * (double)ne1 * (double)n_mat;
            stats[i].rmse = sqrt(e2 / nel);
            stats[i].wrmse = ws > 0 ? sqrt(we2 / ws * (double)ne0) / sqrt((double)ne0) : 0;
            stats[i].rel = s2 > 0 ? sqrt(e2 / s2) : 0;
            free(f32); free(back); free(dst);
        }
        done_bytes += t->nbytes;
        if (ok && !quiet) {
            double el = moeq_now_s() - t0;
            double eta = done_bytes ? el * (double)(total_in - done_bytes) / (double)done_bytes : 0;
            char bin[32], bout[32];
            fmt_bytes(bin, sizeof bin, (double)t->nbytes);
            fmt_bytes(bout, sizeof bout, (double)pe[i].nbytes);
            if (pe[i].quantize)
                fprintf(stderr, "[%4d/%4d] %-34s %-7s -> %-7s %10s -> %10s  rmse %.3e wrmse %.3e  %5.1fs ETA %5.1fs\n",
                        i + 1, n, names[i], moeq_type_name(pt[i].src_type), moeq_type_name(pe[i].type),
                        bin, bout, stats[i].rmse, stats[i].wrmse, el, eta);
            else
                fprintf(stderr, "[%4d/%4d] %-34s %-7s    (copied)  %10s  %5.1fs ETA %5.1fs\n",
                        i + 1, n, names[i], moeq_type_name(pt[i].src_type), bout, el, eta);
        }
    }
    free(wbuf);
    moeq_pool_free(pool);
    if (!ok) {
        const char *we = gguf_writer_error(w);
        if (we && *we) cli_error("%s", we);
        gguf_writer_abort(w);
        free(acc); free(stats);
        goto out_ie;
    }
    if (gguf_writer_finish(w) != 0) {
        cli_error("quantize: writing %s failed", out_path);
        free(acc); free(stats);
        goto out_ie;
    }

    /* report */
    printf("\n%-36s %-8s %12s %12s %12s\n", "tensor", "type", "bytes", "rmse", "wrmse");
    for (int i = 0; i < n; i++)
        if (pe[i].quantize)
            printf("%-36s %-8s %12llu %12.4e %12.4e\n", names[i], moeq_type_name(pe[i].type),
                   (unsigned long long)pe[i].nbytes, stats[i].rmse, stats[i].wrmse);
    {
        int *types = calloc((size_t)n + 1, sizeof *types);
        uint64_t *nb = calloc((size_t)n + 1, sizeof *nb), *nel = calloc((size_t)n + 1, sizeof *nel);
        const char **cn = calloc((size_t)n + 1, sizeof *cn);
        if (types && nb && nel && cn) {
            for (int i = 0; i < n; i++) {
                const gguf_tensor *t = &f->tensors[i];
                types[i] = pe[i].type; nb[i] = pe[i].nbytes; cn[i] = names[i];
                nel[i] = t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
            }
            printf("\n");
            moeq_print_group_table(stdout, (size_t)n, cn, types, nel, nb);
        }
        free(types); free(nb); free(nel); free(cn);
    }
    fprintf(stderr, "moeq: quantized %s -> %s (%s%s%s) in %.1fs\n", in_path, out_path, mix->name,
            rec ? ", recipe " : "", rec ? rec->name : "", moeq_now_s() - t0);
    free(acc);
    free(stats);
    rc = 0;

out_ie:
    free(ie);
out_plan:
    if (names) for (int i = 0; i < n; i++) free(names[i]);
    free(names); free(pt); free(pe);
out_file:
    moeq_imatrix_free(im);
    gguf_close(f);
out_rules:
    for (int r = 0; r < n_rules; r++) moeq_type_rule_free(&rules[r]);
    return rc;
}
