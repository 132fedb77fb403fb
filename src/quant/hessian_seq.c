/*
 * hessian_seq.c: layer-by-layer input second moments for the quantizer
 * (see hessian_seq.h): the engine with an activation hook that keeps only
 * the current layer stage's inputs, the calibration chunks, the passes
 * and the quantized weights swapped into the engine as they are written.
 */
#include "quant/hessian_seq.h"

#include "engine/engine.h"
#include "quant/hessian.h"
#include "quant/tensor_groups.h"
#include "util/util.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#define STAGES 4   /* moeq_tensor_input_stage's values per layer */
#define OUTPUT_LAYER INT_MAX   /* h->layer of the pass that collects output.weight's input */

struct moeq_hseq {
    moeq_engine *e;
    moeq_session *s;
    int32_t *tok;
    float *logits;             /* n_ctx x n_vocab: the output pass asks for every position's */
    int n_chunks, n_ctx, n_expert;
    int add_bos, bos;
    struct moeq_hessian *hs;   /* the last pass's statistics */
    int layer, stage;          /* what they cover: one stage of one layer */
    int dirty;                 /* lowest position quantized since that pass (INT_MAX: none) */
    void **bufs;               /* quantized weights the engine computes with */
    int n_bufs, cap_bufs;
    int failed;
    char herr[256];
    int passes;
    double seconds;
    const char *text_name;
    FILE *log;
};

/* A weight's place in the model's order of inputs; -1 before every layer
 * (token_embd), INT_MAX after them (output), -2 for no input (norms). */
static int position(const char *name)
{
    const int g = moeq_tensor_group(name);
    if (g == MOEQ_GROUP_TOKEN_EMBD) return -1;
    if (g == MOEQ_GROUP_OUTPUT) return INT_MAX;
    int l = moeq_tensor_layer(name), st = moeq_tensor_input_stage(name);
    return l >= 0 && st >= 0 ? l * STAGES + st : -2;
}

static void hook(void *ud, const char *tensor, int expert, const float *x, int n_rows, int n_cols)
{
    moeq_hseq *h = ud;
    if (h->failed || n_rows <= 0) return;
    if (h->layer == OUTPUT_LAYER) {
        if (moeq_tensor_group(tensor) != MOEQ_GROUP_OUTPUT) return;
    } else if (moeq_tensor_layer(tensor) != h->layer || moeq_tensor_input_stage(tensor) != h->stage) {
        return;
    }
    int64_t n_mat = expert >= 0 ? h->n_expert : 1;
    if (moeq_hessian_add(h->hs, tensor, n_mat, expert >= 0 ? expert : 0, x, n_rows, n_cols, h->herr,
                         sizeof h->herr) != 0)
        h->failed = 1;
}

moeq_hseq *moeq_hseq_open(const struct moeq_hseq_opts *o, char *err, size_t errlen)
{
    moeq_hseq *h = calloc(1, sizeof *h);
    if (!h) { moeq_set_err(err, errlen, "out of memory"); return NULL; }
    h->n_ctx = o->n_ctx > 0 ? o->n_ctx : 512;
    h->layer = -1;
    h->dirty = INT_MAX;
    h->log = o->log;
    h->text_name = o->text_name ? o->text_name : "the calibration text";
    if (h->n_ctx < 8) { moeq_set_err(err, errlen, "quantize: calibration chunks need at least 8 tokens"); goto fail; }
    struct moeq_engine_params ep = { .model_path = o->model_path, .n_threads = o->n_threads, .n_ctx = h->n_ctx,
                                     .n_seq = 1, .n_batch = h->n_ctx < 512 ? h->n_ctx : 512 };
    char e2[512];
    if (!(h->e = moeq_engine_open(&ep, e2, sizeof e2))) { moeq_set_err(err, errlen, "quantize: %s", e2); goto fail; }
    const struct moeq_model_info *mi = moeq_engine_info(h->e);
    h->n_expert = mi->n_expert > 0 ? mi->n_expert : 1;
    h->add_bos = mi->add_bos;
    h->bos = mi->bos;
    int got;
    if (!(h->tok = moeq_tokenize_text(h->e, o->text, o->text_len, 0, &got, e2, sizeof e2))) {
        moeq_set_err(err, errlen, "quantize: %s: cannot tokenize %s: %s", o->model_path, h->text_name, e2);
        goto fail;
    }
    h->n_chunks = got / h->n_ctx;
    if (h->n_chunks < 1) {
        moeq_set_err(err, errlen, "quantize: %s tokenizes to %d tokens, under one chunk of %d", h->text_name, got,
                     h->n_ctx);
        goto fail;
    }
    if (o->max_chunks > 0 && o->max_chunks < h->n_chunks) h->n_chunks = o->max_chunks;
    if (!(h->s = moeq_session_new(h->e, e2, sizeof e2))) { moeq_set_err(err, errlen, "quantize: %s", e2); goto fail; }
    moeq_engine_set_act_hook(h->e, hook, h);
    return h;
fail:
    moeq_hseq_close(h);
    return NULL;
}

void moeq_hseq_close(moeq_hseq *h)
{
    if (!h) return;
    moeq_session_free(h->s);
    moeq_engine_close(h->e);
    for (int i = 0; i < h->n_bufs; i++) free(h->bufs[i]);
    free(h->bufs);
    moeq_hessian_free(h->hs);
    free(h->tok);
    free(h->logits);
    free(h);
}

/* Statistics of one stage of layer, over every chunk; layer OUTPUT_LAYER:
 * output.weight's input, every layer run and every position's logits
 * computed (the buffer allocated for the one pass that needs it). */
static int run_pass(moeq_hseq *h, int layer, int stage, char *err, size_t errlen)
{
    float *logits = NULL;
    if (layer == OUTPUT_LAYER) {
        const size_t n = (size_t)h->n_ctx * (size_t)moeq_engine_info(h->e)->n_vocab;
        if (!h->logits && !(h->logits = malloc(n * sizeof *h->logits)))
            return moeq_fail(err, errlen, "out of memory for %d positions' logits", h->n_ctx);
        logits = h->logits;
    }
    moeq_hessian_free(h->hs);
    h->layer = -1;
    if (!(h->hs = moeq_hessian_new())) return moeq_fail(err, errlen, "out of memory");
    h->layer = layer;
    h->stage = stage;
    h->dirty = INT_MAX;
    h->failed = 0;
    const double t0 = moeq_now_s();
    moeq_engine_set_layer_limit(h->e, logits ? 0 : layer + 1);   /* nothing after the layer matters */
    for (int c = 0; c < h->n_chunks; c++) {
        int32_t *ct = h->tok + (size_t)c * (size_t)h->n_ctx;
        int32_t saved = ct[0];
        if (h->add_bos) ct[0] = h->bos;
        moeq_session_sync(h->s, NULL, 0);
        char e2[512];
        int rc = moeq_session_eval(h->s, ct, h->n_ctx, logits, e2, sizeof e2);
        ct[0] = saved;
        if (rc != 0 || h->failed) {
            moeq_engine_set_layer_limit(h->e, 0);
            h->layer = -1;
            if (rc != 0) return moeq_fail(err, errlen, "quantize: %s", e2);
            return moeq_fail(err, errlen, "quantize: Hessian statistics: %s", h->herr);
        }
    }
    moeq_engine_set_layer_limit(h->e, 0);
    const double dt = moeq_now_s() - t0;
    h->passes++;
    h->seconds += dt;
    if (h->log && logits)
        fprintf(h->log, "moeq: Hessian statistics of output.weight: %d chunks of %d tokens of %s in %.1f s\n",
                h->n_chunks, h->n_ctx, h->text_name, dt);
    else if (h->log)
        fprintf(h->log, "moeq: Hessian statistics of blk.%d stage %d: %d chunks of %d tokens of %s in %.1f s\n",
                layer, stage, h->n_chunks, h->n_ctx, h->text_name, dt);
    return 0;
}

int moeq_hseq_get(moeq_hseq *h, const char *name, const struct moeq_hessian_entry **e, char *err, size_t errlen)
{
    *e = NULL;
    const int pos = position(name);
    if (pos == INT_MAX) {
        /* output.weight: the whole model with every weight so far quantized */
        if (run_pass(h, OUTPUT_LAYER, 0, err, errlen) != 0) return -1;
        *e = moeq_hessian_find(h->hs, name);
        return 0;
    }
    if (pos < 0) return 0;   /* token_embd and the norms: no statistics */
    const int l = pos / STAGES, st = pos % STAGES;
    /* the last pass covers it unless something upstream changed since */
    if (!(h->layer == l && h->stage == st && h->dirty >= pos) && run_pass(h, l, st, err, errlen) != 0) return -1;
    *e = moeq_hessian_find(h->hs, name);
    return 0;
}

int moeq_hseq_quantized(moeq_hseq *h, const char *name, int type, void *data, size_t nbytes,
                        char *err, size_t errlen)
{
    const int pos = position(name);
    /* nothing reads output's result before the logits, and a tensor that is
     * no input (a norm) is not quantized */
    if (pos == INT_MAX || pos == -2) { free(data); return 0; }
    if (h->n_bufs == h->cap_bufs) {
        int cap = h->cap_bufs ? 2 * h->cap_bufs : 64;
        void **b = realloc(h->bufs, (size_t)cap * sizeof *b);
        if (!b) { free(data); return moeq_fail(err, errlen, "out of memory"); }
        h->bufs = b;
        h->cap_bufs = cap;
    }
    h->bufs[h->n_bufs++] = data;
    char e2[512];
    if (moeq_engine_override_weight(h->e, name, type, data, nbytes, e2, sizeof e2) != 0)
        return moeq_fail(err, errlen, "quantize: %s", e2);
    if (pos < h->dirty) h->dirty = pos;
    return 0;
}

void moeq_hseq_stats(const moeq_hseq *h, int *passes, double *seconds)
{
    *passes = h->passes;
    *seconds = h->seconds;
}
