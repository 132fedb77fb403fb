/*
 * model.c: hyperparameters and weight binding of qwen3moe / qwen3 GGUF
 * files.
 *
 * Everything that comes from the file is checked before the engine sees it:
 * each hyperparameter against its sane range and the others (heads divide
 * evenly, the expert counts agree), each tensor's presence, type and exact
 * shape against those hyperparameters. The first problem ends the load with
 * one message "FILE: what is wrong (key or tensor)". Weights stay in the
 * mapping; only norm vectors that are not F32 are converted, once.
 *
 * Values that are not numbers are refused in what is small and read by
 * every token: the norm vectors and the routers. The big matrices
 * (embeddings, attention, experts) are not scanned here: even reading only
 * their block scales touches every page of the mapping, so opening a model
 * would read all of it from disk (tens of GB, more than the memory of the
 * machines the engine is sized for, which page experts in as they are
 * routed). `moeq info --check` and quantize scan them instead.
 */
#include "model/model.h"

#include "quant/finite.h"

#include "quant/quants.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct loader {
    const gguf_file     *f;
    struct moeq_hparams *hp;
    moeq_model          *m;   /* NULL when only the hyperparameters are read */
    const char *path;
    char       *err;
    size_t      errlen;
    int         failed;
};

static void fail(struct loader *L, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail(struct loader *L, const char *fmt, ...)
{
    if (L->failed) return; /* the first error wins */
    L->failed = 1;
    if (!L->err || !L->errlen) return;
    int k = snprintf(L->err, L->errlen, "%s: ", L->path);
    if (k < 0 || (size_t)k >= L->errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(L->err + k, L->errlen - (size_t)k, fmt, ap);
    va_end(ap);
}

/* ------------------------------------------------------------ metadata */

/* Integer key "arch.suffix": required ones fail when absent; the value must
 * lie in [lo, hi]. Returns the value or def. */
static int key_int(struct loader *L, const char *suffix, int required, int64_t def,
                   int64_t lo, int64_t hi)
{
    char key[128];
    snprintf(key, sizeof key, "%s.%s", L->hp->arch, suffix);
    const gguf_kv *kv = gguf_find_kv(L->f, key);
    if (!kv) {
        if (required) fail(L, "missing key %s", key);
        return (int)def;
    }
    uint64_t u;
    int64_t v;
    if (gguf_get_u64(L->f, key, &u) == 0) {
        v = u > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)u;
    } else if (gguf_get_i64(L->f, key, &v) != 0) {
        if (kv->val.type == GGUF_TYPE_ARRAY)
            fail(L, "key %s is a per-layer array; only one value for all layers is supported", key);
        else
            fail(L, "key %s has type %s, expected an integer", key, gguf_type_name(kv->val.type));
        return (int)def;
    }
    if (v < lo || v > hi) {
        fail(L, "key %s = %lld is out of range [%lld, %lld]", key, (long long)v,
             (long long)lo, (long long)hi);
        return (int)def;
    }
    return (int)v;
}

static double key_float(struct loader *L, const char *suffix, int required, double def)
{
    char key[128];
    snprintf(key, sizeof key, "%s.%s", L->hp->arch, suffix);
    const gguf_kv *kv = gguf_find_kv(L->f, key);
    if (!kv) {
        if (required) fail(L, "missing key %s", key);
        return def;
    }
    double v;
    if (gguf_get_f64(L->f, key, &v) != 0) {
        fail(L, "key %s has type %s, expected a float", key, gguf_type_name(kv->val.type));
        return def;
    }
    if (!isfinite(v)) {
        fail(L, "key %s is not finite", key);
        return def;
    }
    return v;
}

/*
 * The keys are all read even after a problem (the first one is reported),
 * so that a tool that takes what a file has, as quantize's mix rules do,
 * gets every count that is there; the checks between keys need them all.
 */
static void load_hparams(struct loader *L)
{
    const gguf_file *f = L->f;
    struct moeq_hparams *hp = L->hp;
    memset(hp, 0, sizeof *hp);
    if (gguf_get_str(f, "general.architecture", hp->arch, sizeof hp->arch) != 0) {
        fail(L, "missing key general.architecture");
        return;
    }
    if (!strcmp(hp->arch, "qwen3moe")) hp->moe = 1;
    else if (!strcmp(hp->arch, "qwen3")) hp->moe = 0;
    else {
        fail(L, "architecture '%s' is not supported (qwen3moe or qwen3)", hp->arch);
        char key[128];
        snprintf(key, sizeof key, "%s.expert_count", hp->arch);
        hp->moe = gguf_find_kv(f, key) != NULL;
    }
    const int64_t big = 1 << 24;
    hp->n_layer     = key_int(L, "block_count", 1, 0, 1, 4096);
    hp->n_ctx_train = key_int(L, "context_length", 1, 0, 1, big);
    hp->n_embd      = key_int(L, "embedding_length", 1, 0, 1, 1 << 16);
    hp->n_head      = key_int(L, "attention.head_count", 1, 0, 1, 4096);
    hp->n_head_kv   = key_int(L, "attention.head_count_kv", 0, hp->n_head, 1, 4096);
    int hd_def = hp->n_head ? hp->n_embd / hp->n_head : 0;
    hp->head_dim = key_int(L, "attention.key_length", 0, hd_def, 2, 4096);
    int vlen = key_int(L, "attention.value_length", 0, hp->head_dim, 2, 4096);
    hp->rms_eps = (float)key_float(L, "attention.layer_norm_rms_epsilon", 1, 1e-6);
    hp->rope_base = (float)key_float(L, "rope.freq_base", 0, 10000.0);
    if (hp->moe) {
        hp->n_expert      = key_int(L, "expert_count", 1, 0, 1, 4096);
        hp->n_expert_used = key_int(L, "expert_used_count", 1, 0, 1, 4096);
        hp->n_ff_exp      = key_int(L, "expert_feed_forward_length", 1, 0, 1, big);
    } else {
        hp->n_ff = key_int(L, "feed_forward_length", 1, 0, 1, big);
    }
    if (L->failed) return;

    if (vlen != hp->head_dim) {
        fail(L, "%s.attention.value_length %d differs from key_length %d (not supported)",
             hp->arch, vlen, hp->head_dim);
        return;
    }
    if (hp->head_dim % 2) {
        fail(L, "%s.attention.key_length %d is odd (RoPE needs pairs)", hp->arch, hp->head_dim);
        return;
    }
    if (hp->n_head % hp->n_head_kv) {
        fail(L, "%s.attention.head_count %d is not a multiple of head_count_kv %d",
             hp->arch, hp->n_head, hp->n_head_kv);
        return;
    }
    if (hp->moe && hp->n_expert_used > hp->n_expert) {
        fail(L, "%s.expert_used_count %d exceeds expert_count %d", hp->arch,
             hp->n_expert_used, hp->n_expert);
        return;
    }
    if (!(hp->rms_eps > 0 && hp->rms_eps < 1)) {
        fail(L, "%s.attention.layer_norm_rms_epsilon %g is out of range", hp->arch, hp->rms_eps);
        return;
    }
    if (!(hp->rope_base > 1)) {
        fail(L, "%s.rope.freq_base %g is out of range", hp->arch, hp->rope_base);
        return;
    }

    /* RoPE scaling, as llama.cpp reads it: type none/linear/yarn, factor
     * (freq_scale is its inverse), YaRN's original context and factors. */
    char key[128], stype[32] = "linear";
    snprintf(key, sizeof key, "%s.rope.scaling.type", hp->arch);
    if (gguf_find_kv(f, key) && gguf_get_str(f, key, stype, sizeof stype) != 0) {
        fail(L, "key %s is not a string", key);
        return;
    }
    int yarn = 0;
    if (!strcmp(stype, "yarn")) yarn = 1;
    else if (strcmp(stype, "none") && strcmp(stype, "linear")) {
        fail(L, "key %s = '%s' is not supported (none, linear, yarn)", key, stype);
        return;
    }
    double factor = key_float(L, "rope.scaling.factor", 0, 0.0);
    if (factor == 0.0) factor = key_float(L, "rope.scale_linear", 0, 0.0);
    if (factor < 0 || (factor > 0 && factor < 1e-3) || factor > 1e6) {
        fail(L, "%s.rope.scaling.factor %g is out of range", hp->arch, factor);
        return;
    }
    hp->rope_freq_scale = factor == 0.0 ? 1.0f : (float)(1.0 / factor);
    if (!strcmp(stype, "none")) hp->rope_freq_scale = 1.0f;
    hp->n_ctx_orig = key_int(L, "rope.scaling.original_context_length", 0, hp->n_ctx_train, 1, big);
    hp->yarn_ext_factor  = (float)key_float(L, "rope.scaling.yarn_ext_factor", 0, yarn ? 1.0 : 0.0);
    hp->yarn_attn_factor = (float)key_float(L, "rope.scaling.yarn_attn_factor", 0, 1.0);
    hp->yarn_attn_factor *= (float)key_float(L, "rope.scaling.attn_factor", 0, 1.0);
    hp->yarn_beta_fast   = (float)key_float(L, "rope.scaling.yarn_beta_fast", 0, 32.0);
    hp->yarn_beta_slow   = (float)key_float(L, "rope.scaling.yarn_beta_slow", 0, 1.0);
    if (L->failed) return;

    /* The vocabulary size is the embedding's row count. */
    int64_t te = gguf_find_tensor(f, "token_embd.weight");
    if (te < 0) {
        fail(L, "missing tensor token_embd.weight");
        return;
    }
    if (f->tensors[te].ne[1] < 1 || f->tensors[te].ne[1] > (1u << 24)) {
        fail(L, "tensor token_embd.weight has %llu rows", (unsigned long long)f->tensors[te].ne[1]);
        return;
    }
    hp->n_vocab = (int)f->tensors[te].ne[1];
}

int moeq_hparams_read(const gguf_file *f, const char *path, struct moeq_hparams *hp,
                      char *err, size_t errlen)
{
    struct loader L = { f, hp, NULL, path, err, errlen, 0 };
    load_hparams(&L);
    return L.failed ? -1 : 0;
}

/* ------------------------------------------------------------ tensors */

static const gguf_tensor *find(struct loader *L, const char *name, int required)
{
    int64_t i = gguf_find_tensor(L->m->file, name);
    if (i < 0) {
        if (required) fail(L, "missing tensor %s", name);
        return NULL;
    }
    return &L->m->file->tensors[i];
}

/* Shape check: ne must equal want[0..3] (unused dims 1). */
static int check_shape(struct loader *L, const gguf_tensor *t, const char *name,
                       int64_t a, int64_t b, int64_t c)
{
    int64_t want[GGUF_MAX_DIMS] = { a, b, c, 1 };
    for (int d = 0; d < GGUF_MAX_DIMS; d++) {
        if ((int64_t)t->ne[d] != want[d]) {
            fail(L, "tensor %s has shape [%llu, %llu, %llu], expected [%lld, %lld, %lld]",
                 name, (unsigned long long)t->ne[0], (unsigned long long)t->ne[1],
                 (unsigned long long)t->ne[2], (long long)a, (long long)b, (long long)c);
            return -1;
        }
    }
    if (!moeq_type_traits((int)t->type)) {
        fail(L, "tensor %s has unknown type %u", name, t->type);
        return -1;
    }
    return 0;
}

static void account(moeq_model *m, const gguf_tensor *t)
{
    m->n_params += t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
    m->weight_bytes += t->nbytes;
}

/* Refuse a tensor holding a NaN or an infinity (see the top of the file
 * for which tensors are checked). */
static int check_finite(struct loader *L, const gguf_tensor *t)
{
    char msg[256];
    if (moeq_tensor_check_finite(t, msg, sizeof msg) == 0) return 0;
    fail(L, "%s", msg);
    return -1;
}

/* Bind a weight matrix of n_out rows x n_in, stacked n_expert times (1:
 * a plain 2-D weight). Returns -1 (failed) or 0; absent and optional: 0
 * with w->data NULL. */
static int bind_weight(struct loader *L, struct moeq_weight *w, const char *name,
                       int64_t n_in, int64_t n_out, int64_t n_expert, int required)
{
    memset(w, 0, sizeof *w);
    if (L->failed) return -1;
    const gguf_tensor *t = find(L, name, required);
    if (!t) return required ? -1 : 0;
    if (check_shape(L, t, name, n_in, n_out, n_expert) != 0) return -1;
    size_t rs = moeq_row_size((int)t->type, n_in);
    if (rs == 0) {
        fail(L, "tensor %s: row of %lld is not a whole number of %s blocks", name,
             (long long)n_in, moeq_type_name((int)t->type));
        return -1;
    }
    if ((uint64_t)rs * (uint64_t)n_out * (uint64_t)n_expert > t->nbytes) {
        fail(L, "tensor %s: data is smaller than its shape", name);
        return -1;
    }
    w->data = t->data;
    w->type = (int)t->type;
    w->n_in = n_in;
    w->n_out = n_out;
    w->n_expert = n_expert;
    w->row_size = rs;
    w->expert_stride = rs * (size_t)n_out;
    snprintf(w->name, sizeof w->name, "%s", name);
    account(L->m, t);
    return 0;
}

/* A 1-D vector of n floats: in place when F32, else converted once. */
static const float *bind_vector(struct loader *L, const char *name, int64_t n)
{
    if (L->failed) return NULL;
    const gguf_tensor *t = find(L, name, 1);
    if (!t || check_shape(L, t, name, n, 1, 1) != 0 || check_finite(L, t) != 0) return NULL;
    account(L->m, t);
    if (t->type == MOEQ_TYPE_F32 && ((uintptr_t)t->data % sizeof(float)) == 0)
        return (const float *)t->data;
    float *v = malloc((size_t)n * sizeof *v);
    float **o = realloc(L->m->owned, (size_t)(L->m->n_owned + 1) * sizeof *o);
    if (!v || !o) {
        free(v);
        if (o) L->m->owned = o;
        fail(L, "out of memory converting %s", name);
        return NULL;
    }
    L->m->owned = o;
    o[L->m->n_owned++] = v;
    if (t->type == MOEQ_TYPE_F32) memcpy(v, t->data, (size_t)n * sizeof *v);
    else if (moeq_dequantize((int)t->type, t->data, v, n) != 0) {
        fail(L, "tensor %s: type %s is not supported for a norm vector", name,
             moeq_type_name((int)t->type));
        return NULL;
    }
    return v;
}

static void bind_tensors(struct loader *L)
{
    moeq_model *m = L->m;
    struct moeq_hparams *hp = &m->hp;
    const int E = hp->n_embd, HD = hp->head_dim;
    const int64_t nq = (int64_t)hp->n_head * HD, nkv = (int64_t)hp->n_head_kv * HD;

    if (bind_weight(L, &m->tok_embd, "token_embd.weight", E, hp->n_vocab, 1, 1)) return;
    m->output_norm = bind_vector(L, "output_norm.weight", E);
    if (L->failed) return;
    bind_weight(L, &m->output, "output.weight", E, hp->n_vocab, 1, 0);
    if (L->failed) return;
    if (!m->output.data) m->output = m->tok_embd; /* tied embeddings */

    m->layers = calloc((size_t)hp->n_layer, sizeof *m->layers);
    if (!m->layers) { fail(L, "out of memory"); return; }
    char name[96];
#define NAME(s) (snprintf(name, sizeof name, "blk.%d." s ".weight", il), name)
    for (int il = 0; il < hp->n_layer && !L->failed; il++) {
        struct moeq_layer *l = &m->layers[il];
        l->attn_norm = bind_vector(L, NAME("attn_norm"), E);
        bind_weight(L, &l->wq, NAME("attn_q"), E, nq, 1, 1);
        bind_weight(L, &l->wk, NAME("attn_k"), E, nkv, 1, 1);
        bind_weight(L, &l->wv, NAME("attn_v"), E, nkv, 1, 1);
        bind_weight(L, &l->wo, NAME("attn_output"), nq, E, 1, 1);
        l->q_norm = bind_vector(L, NAME("attn_q_norm"), HD);
        l->k_norm = bind_vector(L, NAME("attn_k_norm"), HD);
        l->ffn_norm = bind_vector(L, NAME("ffn_norm"), E);
        if (hp->moe) {
            if (bind_weight(L, &l->router, NAME("ffn_gate_inp"), E, hp->n_expert, 1, 1) == 0)
                check_finite(L, find(L, name, 1));
            bind_weight(L, &l->gate_exps, NAME("ffn_gate_exps"), E, hp->n_ff_exp, hp->n_expert, 1);
            bind_weight(L, &l->up_exps, NAME("ffn_up_exps"), E, hp->n_ff_exp, hp->n_expert, 1);
            bind_weight(L, &l->down_exps, NAME("ffn_down_exps"), hp->n_ff_exp, E, hp->n_expert, 1);
        } else {
            bind_weight(L, &l->gate, NAME("ffn_gate"), E, hp->n_ff, 1, 1);
            bind_weight(L, &l->up, NAME("ffn_up"), E, hp->n_ff, 1, 1);
            bind_weight(L, &l->down, NAME("ffn_down"), hp->n_ff, E, 1, 1);
        }
    }
#undef NAME
}

moeq_model *moeq_model_load(const char *path, char *err, size_t errlen)
{
    moeq_model *m = calloc(1, sizeof *m);
    if (!m) {
        snprintf(err, errlen, "%s: out of memory", path);
        return NULL;
    }
    m->file = gguf_open(path, err, errlen);
    if (!m->file) { free(m); return NULL; }
    struct loader L = { m->file, &m->hp, m, path, err, errlen, 0 };
    load_hparams(&L);
    if (!L.failed) bind_tensors(&L);
    if (L.failed) { moeq_model_free(m); return NULL; }
    return m;
}

void moeq_model_free(moeq_model *m)
{
    if (!m) return;
    for (int i = 0; i < m->n_owned; i++) free(m->owned[i]);
    free(m->owned);
    free(m->layers);
    gguf_close(m->file);
    free(m);
}
