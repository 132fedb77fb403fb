/*
 * test_quantize_lib.c: the quantize job as a library call (src/quant/quantize.h),
 * without the binary: on a small synth model the report's per-tensor types
 * and bytes equal the plan and the written file, the progress callback sees
 * every tensor in order, a caller's type plan is applied and checked, the
 * quantize params reach the row quantizers, and failures leave no file.
 */
#include "test.h"
#include "gguf/gguf.h"
#include "quant/quantize.h"
#include "synth/synth.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>


struct seen { int calls, in_order; uint64_t last_done; };

static void on_progress(void *ctx, const struct moeq_quantize_progress *p)
{
    struct seen *s = ctx;
    if (p->index != s->calls || p->n_tensors <= 0 || p->done_bytes < s->last_done ||
        p->done_bytes > p->total_bytes || !p->tensor || !p->tensor->name)
        s->in_order = 0;
    s->last_done = p->done_bytes;
    s->calls++;
}

/* Options for the small library-written model (qlib_src.gguf) into the
 * temporary file out_name with mix and threads. */
static void opts_for(struct moeq_quantize_opts *o, const char *out_name, const char *mix, int threads)
{
    moeq_quantize_opts_init(o);
    o->in_path = test_synth_moe_lib("qlib_src.gguf");
    o->out_path = test_tmp(out_name);
    o->mix = moeq_mix_find(mix);
    o->n_threads = threads;
    REQUIRE(o->mix != NULL);
}

static int find(const struct moeq_quantize_report *r, const char *name)
{
    for (int i = 0; i < r->n_tensors; i++)
        if (!strcmp(r->tensors[i].name, name)) return i;
    return -1;
}

TEST(quantize_lib_report_equals_plan_and_file)
{
    char err[512];
    struct moeq_quantize_opts o;
    opts_for(&o, "qlib_out.gguf", "Q4_K_M", 2);
    const char *out = o.out_path;

    /* the dry run is the plan; nothing is written */
    struct moeq_quantize_report plan;
    o.dry_run = 1;
    REQUIREF(moeq_quantize_file(&o, &plan, err, sizeof err) == 0, "%s", err);
    CHECK(access(out, F_OK) != 0);
    REQUIRE(plan.n_tensors > 10);

    /* a caller's type plan: one tensor changed, the rest kept */
    int *types = malloc((size_t)plan.n_tensors * sizeof *types);
    REQUIRE(types);
    for (int i = 0; i < plan.n_tensors; i++) types[i] = -1;
    const int down = find(&plan, "blk.0.ffn_down_exps.weight");
    REQUIRE(down >= 0);
    CHECK(plan.tensors[down].type != MOEQ_TYPE_Q8_0);
    types[down] = MOEQ_TYPE_Q8_0;
    o.types = types;
    o.n_types = plan.n_tensors;
    o.dry_run = 0;
    struct seen s = { 0, 1, 0 };
    o.progress = on_progress;
    o.progress_ctx = &s;
    struct moeq_quantize_report r;
    REQUIREF(moeq_quantize_file(&o, &r, err, sizeof err) == 0, "%s", err);
    CHECK(s.calls == r.n_tensors && s.in_order);
    CHECK(s.last_done == r.src_bytes);
    CHECK(r.n_tensors == plan.n_tensors);
    CHECK(r.n_threads == 2);

    gguf_file *f = gguf_open(out, err, sizeof err);
    REQUIREF(f != NULL, "%s", err);
    REQUIRE((int)f->n_tensors == r.n_tensors);
    uint64_t sum = 0;
    for (int i = 0; i < r.n_tensors; i++) {
        const struct moeq_quantize_tensor *t = &r.tensors[i];
        const gguf_tensor *ft = &f->tensors[i];
        CHECKF(ft->name.n == strlen(t->name) && !memcmp(ft->name.s, t->name, ft->name.n), "%s", t->name);
        CHECKF((int)ft->type == t->type && ft->nbytes == t->nbytes, "%s: file %s %llu, report %s %llu", t->name,
               moeq_type_name((int)ft->type), (unsigned long long)ft->nbytes, moeq_type_name(t->type),
               (unsigned long long)t->nbytes);
        if (i == down) {
            CHECK(t->type == MOEQ_TYPE_Q8_0 && t->planned && t->quantized);
        } else {
            CHECKF(t->type == plan.tensors[i].type && t->nbytes == plan.tensors[i].nbytes && !t->planned,
                   "%s: %s vs plan %s", t->name, moeq_type_name(t->type), moeq_type_name(plan.tensors[i].type));
        }
        if (t->quantized) CHECKF(t->rmse > 0 && t->rel > 0 && t->rel < 0.2, "%s: rmse %g rel %g", t->name, t->rmse, t->rel);
        else CHECK(t->rmse == 0 && t->type == t->src_type);
        sum += t->nbytes;
    }
    CHECK(sum == r.out_bytes);
    uint64_t v = 0;
    CHECK(gguf_get_u64(f, "general.file_type", &v) == 0 && v == (uint64_t)MOEQ_FTYPE_Q4_K_M);
    gguf_close(f);
    moeq_quantize_report_free(&r);
    moeq_quantize_report_free(&plan);
    free(types);
}

/* Progress entries point into the report the call fills. */
struct order { const struct moeq_quantize_report *r; int calls, ok; };

static void check_entry(void *ctx, const struct moeq_quantize_progress *p)
{
    struct order *o = ctx;
    if (p->index != o->calls || p->tensor != &o->r->tensors[p->index] || p->n_tensors != o->r->n_tensors)
        o->ok = 0;
    o->calls++;
}

TEST(quantize_lib_progress_points_into_report)
{
    char err[512];
    struct moeq_quantize_opts o;
    opts_for(&o, "qlib_prog.gguf", "Q8_0", 1);
    struct moeq_quantize_report r;
    struct order ord = { &r, 0, 1 };
    o.progress = check_entry;
    o.progress_ctx = &ord;
    REQUIREF(moeq_quantize_file(&o, &r, err, sizeof err) == 0, "%s", err);
    CHECK(ord.ok && ord.calls == r.n_tensors);
    moeq_quantize_report_free(&r);
}

/* The fit mode travels in the options down to the row quantizers. */
TEST(quantize_lib_params_reach_quantizers)
{
    char err[512];
    struct moeq_quantize_opts o;
    opts_for(&o, "qlib_unbiased.gguf", "IQ3_S", 2);
    struct moeq_quantize_report a, b;
    REQUIREF(moeq_quantize_file(&o, &a, err, sizeof err) == 0, "%s", err);
    o.qp.fit = MOEQ_FIT_MIN_ERROR;
    o.out_path = test_tmp("qlib_minerr.gguf");
    REQUIREF(moeq_quantize_file(&o, &b, err, sizeof err) == 0, "%s", err);
    REQUIRE(a.n_tensors == b.n_tensors);
    int differ = 0;
    double ea = 0, eb = 0;
    for (int i = 0; i < a.n_tensors; i++) {
        CHECK(a.tensors[i].type == b.tensors[i].type);
        if (a.tensors[i].type != MOEQ_TYPE_IQ3_S) continue;
        differ += a.tensors[i].rmse != b.tensors[i].rmse;
        ea += a.tensors[i].rmse * a.tensors[i].rmse * (double)a.tensors[i].nelem;
        eb += b.tensors[i].rmse * b.tensors[i].rmse * (double)b.tensors[i].nelem;
    }
    CHECK(differ > 0);
    CHECKF(eb <= ea, "min-error squared error %g above the unbiased fit's %g", eb, ea);
    moeq_quantize_report_free(&a);
    moeq_quantize_report_free(&b);
}

TEST(quantize_lib_refusals_leave_no_file)
{
    char err[512];
    struct moeq_quantize_opts o;
    opts_for(&o, "qlib_refused.gguf", "Q4_K_M", 1);
    const char *src = o.in_path, *out = o.out_path;
    struct moeq_quantize_report r;
    /* a plan of the wrong length */
    int types[3] = { -1, -1, -1 };
    o.types = types;
    o.n_types = 3;
    CHECK(moeq_quantize_file(&o, &r, err, sizeof err) == -1 && strstr(err, "type plan"));
    CHECK(r.n_tensors == 0 && r.tensors == NULL);
    /* a plan that quantizes a norm */
    struct moeq_quantize_report p;
    o.types = NULL;
    o.dry_run = 1;
    REQUIREF(moeq_quantize_file(&o, &p, err, sizeof err) == 0, "%s", err);
    int *t = malloc((size_t)p.n_tensors * sizeof *t);
    REQUIRE(t);
    for (int i = 0; i < p.n_tensors; i++) t[i] = -1;
    int norm = find(&p, "blk.0.attn_norm.weight");
    REQUIRE(norm >= 0);
    t[norm] = MOEQ_TYPE_Q8_0;
    o.types = t;
    o.n_types = p.n_tensors;
    o.dry_run = 0;
    CHECK(moeq_quantize_file(&o, &r, err, sizeof err) == -1 && strstr(err, "not a tensor quantization may change"));
    /* IQ2_XXS without importance data */
    o.types = NULL;
    o.mix = moeq_mix_find("IQ2_XXS");
    CHECK(moeq_quantize_file(&o, &r, err, sizeof err) == -1 && strstr(err, "no importance data"));
    /* the input as output */
    o.mix = moeq_mix_find("Q8_0");
    o.out_path = src;
    CHECK(moeq_quantize_file(&o, &r, err, sizeof err) == -1 && strstr(err, "refusing to overwrite"));
    CHECK(access(out, F_OK) != 0);
    free(t);
    moeq_quantize_report_free(&p);
}
