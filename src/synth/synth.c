/*
 * synth.c: writes synthesized qwen3moe models (see synth.h).
 *
 * Owns the presets and recipes, the tensor plan (llama.cpp's names, shapes
 * and order), the weight model and the streaming writer loop. The weight
 * model is deliberately not white noise, so that quantization error and
 * routing behave roughly like a trained model's:
 *   - every matrix element is scale(row) * scale(column) * scale(expert) *
 *     std * z, with z a slightly heavy-tailed unit variable, and std about
 *     1/sqrt(fan_in) so activations keep their size through the layers
 *     (outputs into the residual stream are smaller again by 1/sqrt(layers));
 *   - a few residual channels are outliers: large in the embeddings and in
 *     the weight columns that read the residual stream;
 *   - the embeddings share a common direction, and each layer's router has
 *     a per-expert bias along it, so a few experts are hot;
 *   - norms are near 1.
 * Every value is a function of (seed, tensor name, row, column) only, so a
 * file's bytes never depend on the thread count, and an F32 model and a
 * quantized model of the same seed hold the same underlying weights
 * wherever the quantized one was quantized or rounded from them.
 *
 * Quantized tensors take one of three paths. "quantize" generates the float
 * rows and runs the type's quantizer (moeq_type_traits()->quantize): the
 * best quality, but the search-based quantizers manage well under a
 * million weights a second. The direct paths cost a few operations per
 * weight, which is what lets the full 30B-A3B shape stream in two minutes:
 * "round" rounds the float rows of the linear types to the nearest levels
 * with max-based scales (no search); "random" writes the grid types'
 * blocks without floats, random grid points and signs under block and
 * sub-block scales fitted to the row and column scale profile, so outlier
 * channels still show up as large sub-block scales.
 */
#include "synth/synth.h"

#include "gguf/gguf.h"
#include "engine/pool.h"
#include "quant/quants.h"
#include "quant/quants_blocks.h"
#include "quant/quant_plan.h"
#include "util/util.h"

#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SYNTH_DEFAULT_SEED 0x6d6f6571ull /* "moeq" */

/* ------------------------------------------------------------- presets */

static void set_all_types(moeq_synth_cfg *c, int t)
{
    for (int g = 0; g < SYNTH_G_COUNT; g++) c->types[g] = t;
}

int moeq_synth_preset(moeq_synth_cfg *c, const char *name)
{
    memset(c, 0, sizeof *c);
    c->seed = SYNTH_DEFAULT_SEED;
    c->file_type = -1;
    c->mix_ftype = -1;
    c->mode = SYNTH_MODE_AUTO;
    set_all_types(c, MOEQ_TYPE_F32);
    c->rms_eps = 1e-6;
    if (!strcmp(name, "tiny")) {
        /* Small enough for unit tests, yet every row length is a multiple
         * of 256 so K- and i-quant recipes apply without fallbacks. */
        snprintf(c->name, sizeof c->name, "synth-tiny");
        c->n_layer = 2; c->n_embd = 256;
        c->n_head = 4; c->n_head_kv = 2; c->head_dim = 64;
        c->n_expert = 8; c->n_expert_used = 2;
        c->n_ff_exp = 256; c->n_ff = 768;
        c->n_vocab = 512; c->n_ctx = 512;
        c->rope_base = 1e6;
        return 0;
    }
    if (!strcmp(name, "qwen3-30b-a3b")) {
        /* The shape of Qwen3-30B-A3B-Instruct-2507. */
        snprintf(c->name, sizeof c->name, "synth-qwen3-30b-a3b");
        c->n_layer = 48; c->n_embd = 2048;
        c->n_head = 32; c->n_head_kv = 4; c->head_dim = 128;
        c->n_expert = 128; c->n_expert_used = 8;
        c->n_ff_exp = 768; c->n_ff = 6144;
        c->n_vocab = 151936; c->n_ctx = 262144;
        c->rope_base = 1e7;
        return 0;
    }
    return -1;
}

int moeq_synth_recipe(moeq_synth_cfg *c, const char *name)
{
    if (!strcmp(name, "f32") || !strcmp(name, "f16") || !strcmp(name, "bf16")) {
        int t = !strcmp(name, "f32") ? MOEQ_TYPE_F32 : !strcmp(name, "f16") ? MOEQ_TYPE_F16 : MOEQ_TYPE_BF16;
        set_all_types(c, t);
        c->types[SYNTH_G_NORM] = c->types[SYNTH_G_ROUTER] = MOEQ_TYPE_F32;
        c->file_type = -1;
        c->mix_ftype = -1;
        return 0;
    }
    const struct moeq_recipe *rp = moeq_recipe_find(name);
    if (rp) {
        /* the recipe's group types; a group it leaves to the mix gets the
         * mix's base type, norms and router stay F32 */
        static const int group_of[SYNTH_G_COUNT] = {
            [SYNTH_G_EMBD] = MOEQ_GROUP_TOKEN_EMBD, [SYNTH_G_OUTPUT] = MOEQ_GROUP_OUTPUT,
            [SYNTH_G_ATTN_Q] = MOEQ_GROUP_ATTN_Q, [SYNTH_G_ATTN_K] = MOEQ_GROUP_ATTN_K,
            [SYNTH_G_ATTN_V] = MOEQ_GROUP_ATTN_V, [SYNTH_G_ATTN_OUT] = MOEQ_GROUP_ATTN_OUTPUT,
            [SYNTH_G_NORM] = MOEQ_GROUP_NORM, [SYNTH_G_ROUTER] = MOEQ_GROUP_ROUTER,
            [SYNTH_G_EXP_GATE] = MOEQ_GROUP_FFN_GATE_EXPS, [SYNTH_G_EXP_UP] = MOEQ_GROUP_FFN_UP_EXPS,
            [SYNTH_G_EXP_DOWN] = MOEQ_GROUP_FFN_DOWN_EXPS,
        };
        const struct moeq_mix *base = moeq_mix_of_ftype(rp->ftype);
        for (int g = 0; g < SYNTH_G_COUNT; g++) {
            int t = rp->types[group_of[g]];
            if (t < 0) t = g == SYNTH_G_NORM || g == SYNTH_G_ROUTER || !base ? MOEQ_TYPE_F32 : base->base_type;
            c->types[g] = t;
        }
        c->file_type = rp->ftype; /* the recipe's base mix, as the reference writes it */
        c->mix_ftype = -1;
        return 0;
    }
    const struct moeq_mix *mx = moeq_mix_find(name);
    if (mx && moeq_type_traits(mx->base_type) && moeq_type_traits(mx->base_type)->quantized) {
        /* the groups' types are the base type (for checks and the choice of
         * path); plan_tensors applies the mix's per-tensor rules */
        set_all_types(c, mx->base_type);
        c->types[SYNTH_G_NORM] = c->types[SYNTH_G_ROUTER] = MOEQ_TYPE_F32;
        c->file_type = c->mix_ftype = mx->ftype;
        return 0;
    }
    return -1;
}

static const struct moeq_mix *mix_of(const moeq_synth_cfg *c)
{
    return c->mix_ftype < 0 ? NULL : moeq_mix_of_ftype(c->mix_ftype);
}

static const char *const group_names[SYNTH_G_COUNT] = {
    "embd", "output", "attn-q", "attn-k", "attn-v", "attn-output",
    "norm", "router", "exp-gate", "exp-up", "exp-down",
};

const char *moeq_synth_group_name(int g)
{
    return g >= 0 && g < SYNTH_G_COUNT ? group_names[g] : "?";
}

static int is_float_type(int t)
{
    return t == MOEQ_TYPE_F32 || t == MOEQ_TYPE_F16 || t == MOEQ_TYPE_BF16;
}

int moeq_synth_check(const moeq_synth_cfg *c, char *err, size_t errlen)
{
    struct { const char *name; int v, lo, hi; } dims[] = {
        { "layers", c->n_layer, 1, 1024 },
        { "n-embd", c->n_embd, 1, 1 << 16 },
        { "heads", c->n_head, 1, 1024 },
        { "kv-heads", c->n_head_kv, 1, 1024 },
        { "head-dim", c->head_dim, 2, 4096 },
        { "experts", c->n_expert, 1, 4096 },
        { "experts-used", c->n_expert_used, 1, 4096 },
        { "ff-exp", c->n_ff_exp, 1, 1 << 20 },
        { "ff", c->n_ff, 1, 1 << 20 },
        { "vocab", c->n_vocab, 259, 1 << 24 },
        { "ctx", c->n_ctx, 1, 1 << 30 },
    };
    for (size_t i = 0; i < sizeof dims / sizeof dims[0]; i++)
        if (dims[i].v < dims[i].lo || dims[i].v > dims[i].hi) {
            snprintf(err, errlen, "--%s %d is out of range [%d, %d]", dims[i].name, dims[i].v, dims[i].lo, dims[i].hi);
            return -1;
        }
    if (c->n_head % c->n_head_kv) {
        snprintf(err, errlen, "--heads %d is not a multiple of --kv-heads %d", c->n_head, c->n_head_kv);
        return -1;
    }
    if (c->n_expert_used > c->n_expert) {
        snprintf(err, errlen, "--experts-used %d exceeds --experts %d", c->n_expert_used, c->n_expert);
        return -1;
    }
    if (c->head_dim % 2) {
        snprintf(err, errlen, "--head-dim %d must be even (rotary pairs)", c->head_dim);
        return -1;
    }
    if (!(c->rope_base > 0) || !(c->rms_eps > 0)) {
        snprintf(err, errlen, "rope base and rms epsilon must be positive");
        return -1;
    }
    if ((int64_t)c->n_head * c->head_dim > (1 << 20)) {
        snprintf(err, errlen, "--heads x --head-dim is too large");
        return -1;
    }
    for (int g = 0; g < SYNTH_G_COUNT; g++) {
        int t = c->types[g];
        if (!moeq_type_traits(t) || t == MOEQ_TYPE_Q8_K) {
            snprintf(err, errlen, "type id %d for group %s cannot be written", t, group_names[g]);
            return -1;
        }
        if ((g == SYNTH_G_NORM || g == SYNTH_G_ROUTER) && !is_float_type(t)) {
            snprintf(err, errlen, "group %s must be F32, F16 or BF16, not %s", group_names[g], moeq_type_name(t));
            return -1;
        }
    }
    return 0;
}

int moeq_synth_tensor_type(const moeq_synth_cfg *c, int g, uint64_t ne0)
{
    int fell_back;
    return moeq_plan_fit_row(c->types[g], ne0, &fell_back);   /* quantize's own rule */
}

/*
 * How a tensor is produced: float rows written as F32/F16/BF16; float rows
 * through the type's quantizer; float rows rounded to the nearest levels
 * (linear types, direct mode); random blocks with fitted scales (grid
 * types, direct mode).
 */
enum { PATH_FLOAT, PATH_QUANT, PATH_ROUND, PATH_RANDOM };

static int rtn_type(int t);

/* Row length and element count of group g in the whole model. */
static uint64_t group_elems(const moeq_synth_cfg *c, int g, uint64_t *ne0)
{
    uint64_t E = (uint64_t)c->n_embd, Q = (uint64_t)c->n_head * c->head_dim,
             KV = (uint64_t)c->n_head_kv * c->head_dim, F = (uint64_t)c->n_ff_exp,
             X = (uint64_t)c->n_expert, V = (uint64_t)c->n_vocab, L = (uint64_t)c->n_layer;
    switch (g) {
    case SYNTH_G_EMBD: case SYNTH_G_OUTPUT: *ne0 = E; return E * V;
    case SYNTH_G_ATTN_Q: *ne0 = E; return E * Q * L;
    case SYNTH_G_ATTN_K: case SYNTH_G_ATTN_V: *ne0 = E; return E * KV * L;
    case SYNTH_G_ATTN_OUT: *ne0 = Q; return Q * E * L;
    case SYNTH_G_ROUTER: *ne0 = E; return E * X * L;
    case SYNTH_G_EXP_GATE: case SYNTH_G_EXP_UP: *ne0 = E; return E * F * X * L;
    case SYNTH_G_EXP_DOWN: *ne0 = F; return E * F * X * L;
    default: *ne0 = E; return E * (2 * L + 1) + 2 * (uint64_t)c->head_dim * L; /* norms */
    }
}

/* Quantized weights in the model: decides SYNTH_MODE_AUTO's path. */
static uint64_t quantized_elems(const moeq_synth_cfg *c)
{
    uint64_t total = 0;
    for (int g = 0; g < SYNTH_G_COUNT; g++) {
        uint64_t ne0, n = group_elems(c, g, &ne0);
        const struct moeq_type_traits *tr = moeq_type_traits(moeq_synth_tensor_type(c, g, ne0));
        if (tr && tr->quantized) total += n;
    }
    return total;
}

static int tensor_path(const moeq_synth_cfg *c, int type)
{
    const struct moeq_type_traits *tr = moeq_type_traits(type);
    if (!tr->quantized) return PATH_FLOAT;
    int direct = !tr->quantize || c->mode == SYNTH_MODE_DIRECT ||
                 (c->mode == SYNTH_MODE_AUTO && quantized_elems(c) > SYNTH_AUTO_QUANTIZE_MAX);
    if (!direct) return PATH_QUANT;
    return rtn_type(type) ? PATH_ROUND : PATH_RANDOM;
}

const char *moeq_synth_path_name(const moeq_synth_cfg *c, int g)
{
    static const char *const names[] = { "float", "quantize", "round", "random" };
    uint64_t ne0;
    group_elems(c, g, &ne0);
    return names[tensor_path(c, moeq_synth_tensor_type(c, g, ne0))];
}


/* ---------------------------------------------------------- randomness */

/* splitmix64: one add and two multiply-xorshift rounds per 64 bits; good
 * enough for weights and fast enough for tens of gigabytes. */
static inline uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static inline uint64_t hash3(uint64_t a, uint64_t b, uint64_t c)
{
    uint64_t s = a ^ 0x243F6A8885A308D3ull;
    rng_next(&s);
    s ^= b * 0x9E3779B97F4A7C15ull;
    rng_next(&s);
    s ^= c * 0xC2B2AE3D27D4EB4Full;
    return rng_next(&s);
}

/* Unit-variance, zero-mean value from 64 random bits: a sum of four
 * 14-bit uniforms (Irwin-Hall, close to Gaussian), and one draw in 256
 * tripled, because trained weights have heavier tails than a Gaussian. */
static inline float unit_z(uint64_t r)
{
    uint32_t s = (uint32_t)(r & 0x3fff) + (uint32_t)((r >> 14) & 0x3fff) +
                 (uint32_t)((r >> 28) & 0x3fff) + (uint32_t)((r >> 42) & 0x3fff);
    float z = ((float)s - 32766.0f) * (1.0f / 9459.13f);
    if ((r >> 56) == 0) z *= 3.0f;
    return z * 0.98f; /* the tail adds variance 8/256; keep the total near 1 */
}

/* exp for the scale factors, from IEEE operations only (no libm), so the
 * same seed gives the same bytes on every platform: e^x = 2^k * e^r with
 * |r| <= ln2/2 and a degree-11 Taylor polynomial (error far below a
 * float's ulp). Arguments here are within +-10. */
static float det_expf(float xf)
{
    double x = xf;
    if (x > 80) x = 80;
    if (x < -80) x = -80;
    const double ln2 = 0.69314718055994530942;
    double kd = x / ln2;
    int k = (int)(kd < 0 ? kd - 0.5 : kd + 0.5);
    double r = x - (double)k * ln2;
    double p = 1.0, term = 1.0;
    for (int i = 1; i <= 11; i++) { term *= r / (double)i; p += term; }
    double two_k = 1.0;
    for (int i = 0; i < (k < 0 ? -k : k); i++) two_k *= 2.0;
    return (float)(k < 0 ? p / two_k : p * two_k);
}

static inline float unit_u(uint64_t r) { return (float)(r >> 40) * (1.0f / 16777216.0f); }

static uint64_t name_hash(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    return h;
}

/* ---------------------------------------------------------- tensor plan */

enum role {
    ROLE_EMBD,       /* token_embd: rows are tokens, columns residual channels */
    ROLE_OUTPUT,     /* output: reads the residual stream */
    ROLE_NORM,       /* attn_norm, ffn_norm, output_norm */
    ROLE_QKNORM,     /* attn_q_norm, attn_k_norm */
    ROLE_READ,       /* attn_q/k/v, ffn_gate_exps, ffn_up_exps: read the residual stream */
    ROLE_WRITE,      /* attn_output, ffn_down_exps: write into the residual stream */
    ROLE_ROUTER,     /* ffn_gate_inp */
};

struct tplan {
    char     name[64];
    int      group, role, layer, n_dims, type, path;
    uint64_t ne[3];
};

/* The types moeq quantize would give an F32 model of this shape under the
 * mix (the same plan, so synth and quantize agree tensor by tensor). */
static int apply_mix(const moeq_synth_cfg *c, const struct moeq_mix *mx, struct tplan *p, int n)
{
    struct moeq_plan_tensor *t = calloc((size_t)n, sizeof *t);
    struct moeq_plan_entry *e = calloc((size_t)n, sizeof *e);
    if (!t || !e) { fprintf(stderr, "moeq: out of memory\n"); exit(1); }
    for (int i = 0; i < n; i++) {
        t[i].name = p[i].name;
        t[i].src_type = MOEQ_TYPE_F32;
        t[i].n_dims = (uint32_t)p[i].n_dims;
        t[i].ne[0] = p[i].ne[0]; t[i].ne[1] = p[i].ne[1]; t[i].ne[2] = p[i].ne[2]; t[i].ne[3] = 1;
    }
    struct moeq_plan_opts o = { .mix = mx, .token_embd_type = -1, .output_type = -1 };
    struct moeq_model_shape sh = { c->n_layer, c->n_head, c->n_head_kv, c->n_expert, 1 };
    char err[256];
    int rc = moeq_plan(&o, &sh, t, n, e, err, sizeof err);
    if (rc) fprintf(stderr, "moeq: synth: recipe %s: %s\n", mx->name, err);
    else
        for (int i = 0; i < n; i++)
            if (p[i].group != SYNTH_G_NORM && p[i].group != SYNTH_G_ROUTER &&
                c->types[p[i].group] == mx->base_type) /* not set by a --type flag */
                p[i].type = e[i].type;
    free(t);
    free(e);
    return rc;
}

static int plan_tensors(const moeq_synth_cfg *c, struct tplan **out)
{
    int n = 2 + 12 * c->n_layer + 1;
    struct tplan *p = calloc((size_t)n, sizeof *p);
    if (!p) { fprintf(stderr, "moeq: out of memory\n"); exit(1); }
    int k = 0;
    uint64_t E = (uint64_t)c->n_embd, Q = (uint64_t)c->n_head * c->head_dim,
             KV = (uint64_t)c->n_head_kv * c->head_dim, F = (uint64_t)c->n_ff_exp,
             X = (uint64_t)c->n_expert, V = (uint64_t)c->n_vocab, H = (uint64_t)c->head_dim;
#define ADD(nm, grp, rl, lay, nd, a, b, d) do {                                  \
        struct tplan *t = &p[k++];                                               \
        snprintf(t->name, sizeof t->name, "%s", nm);                             \
        t->group = grp; t->role = rl; t->layer = lay; t->n_dims = nd;            \
        t->ne[0] = a; t->ne[1] = b; t->ne[2] = d;                                \
    } while (0)
    char nm[64];
    ADD("token_embd.weight", SYNTH_G_EMBD, ROLE_EMBD, -1, 2, E, V, 1);
    for (int l = 0; l < c->n_layer; l++) {
#define NM(s) (snprintf(nm, sizeof nm, "blk.%d.%s.weight", l, s), nm)
        ADD(NM("attn_norm"),     SYNTH_G_NORM,     ROLE_NORM,   l, 1, E, 1, 1);
        ADD(NM("attn_q"),        SYNTH_G_ATTN_Q,   ROLE_READ,   l, 2, E, Q, 1);
        ADD(NM("attn_k"),        SYNTH_G_ATTN_K,   ROLE_READ,   l, 2, E, KV, 1);
        ADD(NM("attn_v"),        SYNTH_G_ATTN_V,   ROLE_READ,   l, 2, E, KV, 1);
        ADD(NM("attn_output"),   SYNTH_G_ATTN_OUT, ROLE_WRITE,  l, 2, Q, E, 1);
        ADD(NM("attn_q_norm"),   SYNTH_G_NORM,     ROLE_QKNORM, l, 1, H, 1, 1);
        ADD(NM("attn_k_norm"),   SYNTH_G_NORM,     ROLE_QKNORM, l, 1, H, 1, 1);
        ADD(NM("ffn_norm"),      SYNTH_G_NORM,     ROLE_NORM,   l, 1, E, 1, 1);
        ADD(NM("ffn_gate_inp"),  SYNTH_G_ROUTER,   ROLE_ROUTER, l, 2, E, X, 1);
        ADD(NM("ffn_gate_exps"), SYNTH_G_EXP_GATE, ROLE_READ,   l, 3, E, F, X);
        ADD(NM("ffn_up_exps"),   SYNTH_G_EXP_UP,   ROLE_READ,   l, 3, E, F, X);
        ADD(NM("ffn_down_exps"), SYNTH_G_EXP_DOWN, ROLE_WRITE,  l, 3, F, E, X);
#undef NM
    }
    ADD("output_norm.weight", SYNTH_G_NORM, ROLE_NORM, -1, 1, E, 1, 1);
    ADD("output.weight", SYNTH_G_OUTPUT, ROLE_OUTPUT, -1, 2, E, V, 1);
#undef ADD
    for (int i = 0; i < k; i++)
        p[i].type = moeq_synth_tensor_type(c, p[i].group, p[i].ne[0]);
    const struct moeq_mix *mx = mix_of(c);
    if (mx && apply_mix(c, mx, p, k)) {
        free(p);
        return -1;
    }
    for (int i = 0; i < k; i++) p[i].path = tensor_path(c, p[i].type);
    *out = p;
    return k;
}

/* -------------------------------------------------------- weight model */

/* What every tensor shares: the residual stream's outlier channels and
 * common direction. */
struct model_ctx {
    const moeq_synth_cfg *c;
    float *outlier;   /* n_embd: 1, or the outlier factor */
    float *mdir;      /* n_embd: +-1/sqrt(n_embd), a unit common direction */
};

/* One tensor being generated. */
struct tgen {
    const struct model_ctx *m;
    const struct tplan     *t;
    uint64_t id;              /* hash of (seed, name) */
    float    std;             /* base standard deviation */
    float   *col;             /* ne[0] column scales, rms 1 */
    float   *sub16, *sub32;   /* rms of col over each 16 / 32 columns */
    float   *hot;             /* router: ne[1] expert biases */
    uint64_t rows;            /* ne[1] * ne[2] */
    size_t   row_bytes;
    const struct moeq_type_traits *tr;
    _Atomic int failed;       /* the quantizer refused (e.g. needs an imatrix) */
    /* per-thread scratch for float rows */
    float  **scratch;
    int64_t  grain;
};

static void model_init(struct model_ctx *m, const moeq_synth_cfg *c)
{
    m->c = c;
    m->outlier = malloc((size_t)c->n_embd * sizeof *m->outlier);
    m->mdir = malloc((size_t)c->n_embd * sizeof *m->mdir);
    if (!m->outlier || !m->mdir) { fprintf(stderr, "moeq: out of memory\n"); exit(1); }
    float inv = 1.0f / sqrtf((float)c->n_embd);
    /* about one channel in 128 is an outlier, at least one */
    int forced = (int)(hash3(c->seed, 0x6f75746c, 0) % (uint64_t)c->n_embd);
    for (int i = 0; i < c->n_embd; i++) {
        uint64_t h = hash3(c->seed, 0x6f75746c, (uint64_t)i + 1);
        m->outlier[i] = (i == forced || (h & 127) == 0) ? 4.0f + 4.0f * unit_u(h) : 1.0f;
        m->mdir[i] = (hash3(c->seed, 0x6d646972, (uint64_t)i) & 1) ? inv : -inv;
    }
}

static void model_free(struct model_ctx *m)
{
    free(m->outlier); free(m->mdir);
}

static void tgen_init(struct tgen *g, const struct model_ctx *m, const struct tplan *t, int n_threads)
{
    const moeq_synth_cfg *c = m->c;
    memset(g, 0, sizeof *g);
    g->m = m; g->t = t;
    g->id = hash3(c->seed, name_hash(t->name), 0x77);
    g->rows = t->ne[1] * t->ne[2];
    g->tr = moeq_type_traits(t->type);
    g->row_bytes = moeq_row_size(t->type, (int64_t)t->ne[0]);
    uint64_t ne0 = t->ne[0];
    float fan_in = (float)ne0;

    switch (t->role) {
    case ROLE_EMBD:   g->std = 1.0f; break;
    case ROLE_OUTPUT: g->std = 3.0f / sqrtf(fan_in); break;
    case ROLE_READ:   g->std = 1.0f / sqrtf(fan_in); break;
    case ROLE_WRITE:  g->std = 1.0f / sqrtf(fan_in * (float)c->n_layer); break;
    case ROLE_ROUTER: g->std = 1.0f / sqrtf(fan_in); break;
    case ROLE_NORM:   g->std = 0.10f; break;
    case ROLE_QKNORM: g->std = 0.15f; break;
    }

    g->col = malloc(ne0 * sizeof *g->col);
    if (!g->col) { fprintf(stderr, "moeq: out of memory\n"); exit(1); }
    int reads_resid = t->role == ROLE_EMBD || t->role == ROLE_OUTPUT ||
                      t->role == ROLE_READ || t->role == ROLE_ROUTER;
    double ss = 0;
    for (uint64_t i = 0; i < ne0; i++) {
        float s = det_expf(0.3f * unit_z(hash3(g->id, 0x636f6c, i)));
        if (reads_resid && ne0 == (uint64_t)c->n_embd)
            s *= t->role == ROLE_EMBD ? 0.5f * (1.0f + m->outlier[i]) : m->outlier[i];
        g->col[i] = s;
        ss += (double)s * s;
    }
    float norm = (float)(1.0 / sqrt(ss / (double)ne0));
    for (uint64_t i = 0; i < ne0; i++) g->col[i] *= norm;

    if (ne0 % 16 == 0) {
        g->sub16 = malloc(ne0 / 16 * sizeof *g->sub16);
        g->sub32 = malloc((ne0 / 32 + 1) * sizeof *g->sub32);
        if (!g->sub16 || !g->sub32) { fprintf(stderr, "moeq: out of memory\n"); exit(1); }
        for (uint64_t b = 0; b < ne0 / 16; b++) {
            double s = 0;
            for (int j = 0; j < 16; j++) s += (double)g->col[b * 16 + j] * g->col[b * 16 + j];
            g->sub16[b] = (float)sqrt(s / 16);
        }
        for (uint64_t b = 0; b < ne0 / 32; b++)
            g->sub32[b] = sqrtf(0.5f * (g->sub16[2 * b] * g->sub16[2 * b] + g->sub16[2 * b + 1] * g->sub16[2 * b + 1]));
    }

    if (t->role == ROLE_ROUTER) {
        /* u^4 skews the biases: most experts near zero, a few strongly
         * favoured; the layer index is in the hash so each layer has its
         * own hot set */
        g->hot = malloc(t->ne[1] * sizeof *g->hot);
        if (!g->hot) { fprintf(stderr, "moeq: out of memory\n"); exit(1); }
        for (uint64_t e = 0; e < t->ne[1]; e++) {
            float u = unit_u(hash3(c->seed, 0x686f74 + (uint64_t)t->layer, e));
            g->hot[e] = 2.5f * u * u * u * u - 0.3f;
        }
    }

    /* Float rows are generated in chunks of about 64K values per thread. */
    g->grain = (int64_t)(65536 / ne0);
    if (g->grain < 1) g->grain = 1;
    if (t->path != PATH_RANDOM) {
        g->scratch = calloc((size_t)n_threads, sizeof *g->scratch);
        if (!g->scratch) { fprintf(stderr, "moeq: out of memory\n"); exit(1); }
        for (int i = 0; i < n_threads; i++) {
            g->scratch[i] = malloc((size_t)g->grain * ne0 * sizeof(float));
            if (!g->scratch[i]) { fprintf(stderr, "moeq: out of memory\n"); exit(1); }
        }
    }
}

static void tgen_free(struct tgen *g, int n_threads)
{
    if (g->scratch)
        for (int i = 0; i < n_threads; i++) free(g->scratch[i]);
    free(g->scratch); free(g->col); free(g->sub16); free(g->sub32); free(g->hot);
}

/* Scale of row r (global over experts): row and expert factors. */
static float row_scale(const struct tgen *g, uint64_t r)
{
    uint64_t e = r / g->t->ne[1];
    float s = det_expf(0.2f * unit_z(hash3(g->id, 0x726f77, r)));
    if (g->t->n_dims == 3) s *= det_expf(0.15f * unit_z(hash3(g->id, 0x657870, e)));
    return s;
}

/* The float values of row r. */
static void gen_row(const struct tgen *g, uint64_t r, float *out)
{
    const struct tplan *t = g->t;
    const struct model_ctx *m = g->m;
    uint64_t ne0 = t->ne[0];
    uint64_t s = hash3(g->id, 0x76616c, r);
    if (t->role == ROLE_NORM || t->role == ROLE_QKNORM) {
        for (uint64_t i = 0; i < ne0; i++) {
            float v = det_expf(g->std * unit_z(rng_next(&s)));
            /* trained models damp their massive-activation channels */
            if (t->role == ROLE_NORM && m->outlier[i] > 1.0f) v *= 0.5f;
            out[i] = v;
        }
        return;
    }
    float rs = g->std * row_scale(g, r);
    for (uint64_t i = 0; i < ne0; i++) out[i] = rs * g->col[i] * unit_z(rng_next(&s));
    if (t->role == ROLE_EMBD) {
        /* the common direction carries 0.6 of a unit per channel */
        float a = 0.6f * sqrtf((float)ne0);
        for (uint64_t i = 0; i < ne0; i++) out[i] += a * m->mdir[i];
    } else if (t->role == ROLE_ROUTER) {
        /* after the norm the residual's projection on mdir is about
         * 0.5*sqrt(n_embd); this makes the logit bias about 2*hot */
        float a = g->hot[r] * 4.0f / sqrtf((float)ne0);
        for (uint64_t i = 0; i < ne0; i++) out[i] += a * m->mdir[i];
    }
}

/* ----------------------------------------------------- direct synthesis */

static inline void put_f16(uint8_t *p, float v)
{
    uint16_t h = moeq_f32_to_f16(v);
    if ((h & 0x7fff) == 0 && v != 0) h = 1; /* never a zero scale */
    memcpy(p, &h, 2);
}

static void fill_random(uint8_t *p, size_t n, uint64_t *s)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) { uint64_t r = rng_next(s); memcpy(p + i, &r, 8); }
    if (i < n) { uint64_t r = rng_next(s); memcpy(p + i, &r, n - i); }
}

/* Level statistics of each type with random indices: rms of the grid
 * bytes (i-quants) or of the centred integer levels (linear types). */
static float grid_rms_u64(const uint64_t *g, int n)
{
    double s = 0;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < 8; j++) { double v = (double)((g[i] >> (8 * j)) & 0xff); s += v * v; }
    return (float)sqrt(s / (8.0 * n));
}

static float grid_rms_u32(const uint32_t *g, int n)
{
    double s = 0;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < 4; j++) { double v = (double)((g[i] >> (8 * j)) & 0xff); s += v * v; }
    return (float)sqrt(s / (4.0 * n));
}

static float kvalues_rms(void)
{
    double s = 0;
    for (int i = 0; i < 16; i++) s += (double)kvalues_iq4nl[i] * kvalues_iq4nl[i];
    return (float)sqrt(s / 16);
}

/*
 * A scale layout: ns sub-blocks, each with an integer code in
 * [cmin, cmax] whose multiplier is a*code + b, values of rms unit per unit
 * multiplier. Fits d so the largest target uses cmax and rounds every
 * other sub-block's code; returns d.
 */
static float fit_codes(const float *target, int ns, int cmin, int cmax, float a, float b,
                       float unit, int *code)
{
    float tmax = 0;
    for (int j = 0; j < ns; j++) if (target[j] > tmax) tmax = target[j];
    if (!(tmax > 0)) tmax = 1e-6f;
    float d = tmax / ((a * (float)cmax + b) * unit);
    for (int j = 0; j < ns; j++) {
        float want = target[j] / (d * unit);
        int q = (int)lrintf((want - b) / a);
        code[j] = q < cmin ? cmin : q > cmax ? cmax : q;
    }
    return d;
}

struct unit_rms { float iq2xxs, iq2xs, iq2s, iq3xxs, iq3s, kv; };
static struct unit_rms U;

static void unit_rms_init(void)
{
    U.iq2xxs = grid_rms_u64(iq2xxs_grid, 256);
    U.iq2xs = grid_rms_u64(iq2xs_grid, 512);
    U.iq2s = grid_rms_u64(iq2s_grid, 1024);
    U.iq3xxs = grid_rms_u32(iq3xxs_grid, 256);
    U.iq3s = grid_rms_u32(iq3s_grid, 512);
    U.kv = kvalues_rms();
}

/*
 * Random blocks, one function per type (the codec table below lists
 * them): one block of `type` for the 256 (or 32) columns whose column rms values
 * are s16 (16 per 16 columns) / s32, in a row of standard deviation rstd.
 * Quant indices are random; the scale fields carry the profile.
 */
static void syn_q4_0(int type, uint8_t *blk, const float *s16, const float *s32, float rstd)
{
    (void)type;
    (void)s16;
    block_q4_0 *b = (block_q4_0 *)blk;
    put_f16((uint8_t *)&b->d, rstd * s32[0] / 4.6368f);
}

static void syn_q8_0(int type, uint8_t *blk, const float *s16, const float *s32, float rstd)
{
    (void)type;
    (void)s16;
    block_q8_0 *b = (block_q8_0 *)blk;
    put_f16((uint8_t *)&b->d, rstd * s32[0] / 73.9f);
}

static void syn_iq4_nl(int type, uint8_t *blk, const float *s16, const float *s32, float rstd)
{
    (void)type;
    (void)s16;
    block_iq4_nl *b = (block_iq4_nl *)blk;
    put_f16((uint8_t *)&b->d, rstd * s32[0] / U.kv);
}

static void syn_q2_k(int type, uint8_t *blk, const float *s16, const float *s32, float rstd)
{
    (void)type;
    (void)s32;
    float t[16];
    int code[16];
    /* y = d*sc*q - dmin*m with q in 0..3; dmin = 1.5 d and m = sc
     * centre every sub-block on zero */
    block_q2_K *b = (block_q2_K *)blk;
    for (int j = 0; j < 16; j++) t[j] = rstd * s16[j];
    float d = fit_codes(t, 16, 1, 15, 1, 0, 1.1180f, code);
    for (int j = 0; j < 16; j++) q2k_set_scale_min(b->scales, j, code[j], code[j]);
    put_f16((uint8_t *)&b->d, d);
    put_f16((uint8_t *)&b->dmin, 1.5f * d);
}

static void syn_q3_k(int type, uint8_t *blk, const float *s16, const float *s32, float rstd)
{
    (void)type;
    (void)s32;
    float t[16];
    int code[16];
    /* y = d*(s-32)*(q-4*!hbit), levels -4..3; 6-bit s stored 33..63 */
    block_q3_K *b = (block_q3_K *)blk;
    for (int j = 0; j < 16; j++) t[j] = rstd * s16[j];
    float d = fit_codes(t, 16, 1, 31, 1, 0, 2.3452f, code);
    for (int j = 0; j < 16; j++) q3k_set_scale(b->scales, j, code[j]);
    put_f16((uint8_t *)&b->d, d);
}

static void syn_q4_k(int type, uint8_t *blk, const float *s16, const float *s32, float rstd)
{
    (void)s16;
    float t[16];
    int code[16];
    /* y = d*sc*q - dmin*m, q in 0..15 (0..31); dmin = d*mid, m = sc */
    int q5 = type == MOEQ_TYPE_Q5_K;
    for (int j = 0; j < 8; j++) t[j] = rstd * s32[j];
    float d = fit_codes(t, 8, 1, 63, 1, 0, q5 ? 9.2331f : 4.6098f, code);
    uint8_t *sc = q5 ? ((block_q5_K *)blk)->scales : ((block_q4_K *)blk)->scales;
    for (int j = 0; j < 8; j++) k4_set_scale_min(sc, j, code[j], code[j]);
    put_f16(blk, d);                       /* d is first in both layouts */
    put_f16(blk + 2, d * (q5 ? 15.5f : 7.5f));
}

static void syn_q6_k(int type, uint8_t *blk, const float *s16, const float *s32, float rstd)
{
    (void)type;
    (void)s32;
    float t[16];
    int code[16];
    block_q6_K *b = (block_q6_K *)blk;
    for (int j = 0; j < 16; j++) t[j] = rstd * s16[j];
    float d = fit_codes(t, 16, 1, 127, 1, 0, 18.48f, code);
    for (int j = 0; j < 16; j++) b->scales[j] = (int8_t)code[j];
    put_f16((uint8_t *)&b->d, d);
}

static void syn_iq2_xxs(int type, uint8_t *blk, const float *s16, const float *s32, float rstd)
{
    (void)type;
    (void)s16;
    float t[16];
    int code[16];
    /* scale: the top nibble of the second 32-bit word of each 32-group */
    block_iq2_xxs *b = (block_iq2_xxs *)blk;
    for (int j = 0; j < 8; j++) t[j] = rstd * s32[j];
    float d = fit_codes(t, 8, 0, 15, 0.25f, 0.125f, U.iq2xxs, code);
    uint8_t *q = (uint8_t *)b->qs;
    for (int j = 0; j < 8; j++) q[8 * j + 7] = (uint8_t)((q[8 * j + 7] & 0x0f) | code[j] << 4);
    put_f16((uint8_t *)&b->d, d);
}

static void syn_iq2_xs(int type, uint8_t *blk, const float *s16, const float *s32, float rstd)
{
    (void)s32;
    float t[16];
    int code[16];
    int xs = type == MOEQ_TYPE_IQ2_XS;
    for (int j = 0; j < 16; j++) t[j] = rstd * s16[j];
    float d = fit_codes(t, 16, 0, 15, 0.25f, 0.125f, xs ? U.iq2xs : U.iq2s, code);
    uint8_t *sc = xs ? ((block_iq2_xs *)blk)->scales : ((block_iq2_s *)blk)->scales;
    for (int j = 0; j < 8; j++) sc[j] = (uint8_t)(code[2 * j] | code[2 * j + 1] << 4);
    put_f16(blk, d);
}

static void syn_iq3_xxs(int type, uint8_t *blk, const float *s16, const float *s32, float rstd)
{
    (void)type;
    (void)s16;
    float t[16];
    int code[16];
    block_iq3_xxs *b = (block_iq3_xxs *)blk;
    for (int j = 0; j < 8; j++) t[j] = rstd * s32[j];
    float d = fit_codes(t, 8, 0, 15, 0.5f, 0.25f, U.iq3xxs, code);
    uint8_t *ss = b->qs + QK_K / 4;
    for (int j = 0; j < 8; j++) ss[4 * j + 3] = (uint8_t)((ss[4 * j + 3] & 0x0f) | code[j] << 4);
    put_f16((uint8_t *)&b->d, d);
}

static void syn_iq3_s(int type, uint8_t *blk, const float *s16, const float *s32, float rstd)
{
    (void)type;
    (void)s16;
    float t[16];
    int code[16];
    block_iq3_s *b = (block_iq3_s *)blk;
    for (int j = 0; j < 8; j++) t[j] = rstd * s32[j];
    float d = fit_codes(t, 8, 0, 15, 2, 1, U.iq3s, code);
    for (int j = 0; j < 4; j++) b->scales[j] = (uint8_t)(code[2 * j] | code[2 * j + 1] << 4);
    put_f16((uint8_t *)&b->d, d);
}

static void syn_iq4_xs(int type, uint8_t *blk, const float *s16, const float *s32, float rstd)
{
    (void)type;
    (void)s16;
    float t[16];
    int code[16];
    /* dl = d*(ls-32), ls 6-bit: codes 1..31 stored as 33..63 */
    block_iq4_xs *b = (block_iq4_xs *)blk;
    for (int j = 0; j < 8; j++) t[j] = rstd * s32[j];
    float d = fit_codes(t, 8, 1, 31, 1, 0, U.kv, code);
    for (int j = 0; j < 8; j++) iq4xs_set_scale(b, j, code[j]);
    put_f16((uint8_t *)&b->d, d);
}

/* ------------------------------------------------ round-to-nearest blocks */

/*
 * The linear types (and the two 16-level IQ4 types) are cheap to quantize
 * by plain rounding: per sub-block the scale that maps the largest
 * magnitude onto the extreme level, scales rounded onto their own grid,
 * values rounded to the nearest level. No search, so a few operations per
 * value; the result is a real (if not optimal) quantization of the float
 * weights, keeping per-column outliers and the embeddings' common
 * direction that random blocks cannot carry.
 */


/* The value of largest magnitude, with its sign. */
static float signed_absmax(const float *x, int n)
{
    float m = 0, am = 0;
    for (int i = 0; i < n; i++) {
        float a = fabsf(x[i]);
        if (a > am) { am = a; m = x[i]; }
    }
    return m;
}

static inline int clampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

/* Nearest of the 16 non-linear IQ4 levels to v (levels ascend). */
static int nearest_kvalue(float v)
{
    int best = 0;
    float bd = fabsf(v - (float)kvalues_iq4nl[0]);
    for (int k = 1; k < 16; k++) {
        float d = fabsf(v - (float)kvalues_iq4nl[k]);
        if (d < bd) { bd = d; best = k; }
    }
    return best;
}

/* Symmetric integer levels q in [-nmax, nmax-1] for n values with scale d. */
static void round_sym(const float *x, int n, float d, int lo, int hi, int *q)
{
    float id = d != 0 ? 1.0f / d : 0;
    for (int i = 0; i < n; i++) q[i] = clampi((int)lrintf(x[i] * id), lo, hi);
}

/*
 * Signed sub-block scales (Q3_K, Q6_K, IQ4_XS): ns sub-blocks of w values,
 * each wanting s = its signed absmax / qlo (qlo the most negative level);
 * returns the super-block scale d (the largest s in magnitude / slo) and
 * each sub-block's integer scale ls[j] = s / d in [slo, shi].
 */
static float round_sym_scales(const float *x, int ns, int w, float qlo, int slo, int shi, int *ls)
{
    float s[16], smax = 0;
    for (int j = 0; j < ns; j++) {
        s[j] = signed_absmax(x + w * j, w) / qlo;
        if (fabsf(s[j]) > fabsf(smax)) smax = s[j];
    }
    const float d = smax / (float)slo;
    for (int j = 0; j < ns; j++) ls[j] = d != 0 ? clampi((int)lrintf(s[j] / d), slo, shi) : 0;
    return d;
}

/*
 * Asymmetric sub-blocks (Q2_K, Q4_K, Q5_K): ns sub-blocks of w values,
 * levels 0..nmax, y = d*sc*q - dmin*m, sc and m integers in [0, smax].
 */
static void round_asym(const float *x, int ns, int w, int nmax, int smax,
                       float *d_out, float *dmin_out, int *sc, int *mn, int *q)
{
    float scale[16], mins[16], maxs = 0, maxm = 0;
    for (int j = 0; j < ns; j++) {
        float lo = 0, hi = 0;
        for (int i = 0; i < w; i++) {
            float v = x[j * w + i];
            if (v < lo) lo = v;
            if (v > hi) hi = v;
        }
        scale[j] = (hi - lo) / (float)nmax;
        mins[j] = -lo;
        if (scale[j] > maxs) maxs = scale[j];
        if (mins[j] > maxm) maxm = mins[j];
    }
    float d = maxs / (float)smax, dmin = maxm / (float)smax;
    for (int j = 0; j < ns; j++) {
        sc[j] = d > 0 ? clampi((int)lrintf(scale[j] / d), 0, smax) : 0;
        mn[j] = dmin > 0 ? clampi((int)lrintf(mins[j] / dmin), 0, smax) : 0;
        float ds = d * (float)sc[j], off = dmin * (float)mn[j];
        float id = ds > 0 ? 1.0f / ds : 0;
        for (int i = 0; i < w; i++)
            q[j * w + i] = clampi((int)lrintf((x[j * w + i] + off) * id), 0, nmax);
    }
    *d_out = d;
    *dmin_out = dmin;
}

/* The QK_K levels q as the K-quant level setters take them. */
static const int8_t *levels8(const int *q, int8_t *l8)
{
    for (int i = 0; i < QK_K; i++) l8[i] = (int8_t)q[i];
    return l8;
}

static void rnd_q8_0(int type, const float *x, uint8_t *blk)
{
    (void)type;
    int q[QK_K];
    float d;
    block_q8_0 *b = (block_q8_0 *)blk;
    float m = fabsf(signed_absmax(x, 32));
    d = m / 127.0f;
    round_sym(x, 32, d, -127, 127, q);
    for (int i = 0; i < 32; i++) b->qs[i] = (int8_t)q[i];
    put_f16((uint8_t *)&b->d, d);
}

static void rnd_q4_0(int type, const float *x, uint8_t *blk)
{
    (void)type;
    int q[QK_K];
    float d;
    /* the extreme value maps to level -8, as ggml does */
    block_q4_0 *b = (block_q4_0 *)blk;
    d = signed_absmax(x, 32) / -8.0f;
    round_sym(x, 32, d, -8, 7, q);
    for (int i = 0; i < 16; i++) b->qs[i] = (uint8_t)((q[i] + 8) | (q[i + 16] + 8) << 4);
    put_f16((uint8_t *)&b->d, d);
}

static void rnd_iq4_nl(int type, const float *x, uint8_t *blk)
{
    (void)type;
    int q[QK_K];
    float d;
    block_iq4_nl *b = (block_iq4_nl *)blk;
    d = signed_absmax(x, 32) / (float)kvalues_iq4nl[0];
    float id = d != 0 ? 1.0f / d : 0;
    for (int i = 0; i < 32; i++) q[i] = nearest_kvalue(x[i] * id);
    for (int i = 0; i < 16; i++) b->qs[i] = (uint8_t)(q[i] | q[i + 16] << 4);
    put_f16((uint8_t *)&b->d, d);
}

static void rnd_iq4_xs(int type, const float *x, uint8_t *blk)
{
    (void)type;
    int q[QK_K], ls[8];
    /* sub-block scale s = absmax/-127 as an integer (ls-32) of d */
    block_iq4_xs *b = (block_iq4_xs *)blk;
    const float d = round_sym_scales(x, 8, 32, (float)kvalues_iq4nl[0], -32, 31, ls);
    for (int j = 0; j < 8; j++) {
        const int l = ls[j];
        float dl = d * (float)l, id = dl != 0 ? 1.0f / dl : 0;
        for (int i = 0; i < 32; i++) q[32 * j + i] = nearest_kvalue(x[32 * j + i] * id);
        iq4xs_set_scale(b, j, l);
        for (int i = 0; i < 16; i++)
            b->qs[16 * j + i] = (uint8_t)(q[32 * j + i] | q[32 * j + 16 + i] << 4);
    }
    put_f16((uint8_t *)&b->d, d);
}

static void rnd_q2_k(int type, const float *x, uint8_t *blk)
{
    (void)type;
    int q[QK_K], sc[16], mn[16];
    int8_t l8[QK_K];
    float d, dmin;
    block_q2_K *b = (block_q2_K *)blk;
    round_asym(x, 16, 16, 3, 15, &d, &dmin, sc, mn, q);
    for (int j = 0; j < 16; j++) q2k_set_scale_min(b->scales, j, sc[j], mn[j]);
    q2k_set_levels(b, levels8(q, l8));
    put_f16((uint8_t *)&b->d, d);
    put_f16((uint8_t *)&b->dmin, dmin);
}

static void rnd_q3_k(int type, const float *x, uint8_t *blk)
{
    (void)type;
    int q[QK_K], ls[16];
    int8_t l8[QK_K];
    /* signed sub-block scales (6-bit, stored +32); levels -4..3 with
     * the low two bits in qs (as Q2_K) and the third in hmask */
    block_q3_K *b = (block_q3_K *)blk;
    const float d = round_sym_scales(x, 16, 16, -4.0f, -32, 31, ls);
    for (int j = 0; j < 16; j++) {
        round_sym(x + 16 * j, 16, d * (float)ls[j], -4, 3, q + 16 * j);
        q3k_set_scale(b->scales, j, ls[j]);
    }
    q3k_set_levels(b, levels8(q, l8));
    put_f16((uint8_t *)&b->d, d);
}

static void rnd_q4_k(int type, const float *x, uint8_t *blk)
{
    int q[QK_K], sc[16], mn[16];
    int8_t l8[QK_K];
    float d, dmin;
    int q5 = type == MOEQ_TYPE_Q5_K;
    round_asym(x, 8, 32, q5 ? 31 : 15, 63, &d, &dmin, sc, mn, q);
    uint8_t *scales = q5 ? ((block_q5_K *)blk)->scales : ((block_q4_K *)blk)->scales;
    for (int j = 0; j < 8; j++) k4_set_scale_min(scales, j, sc[j], mn[j]);
    if (q5) q5k_set_levels((block_q5_K *)blk, levels8(q, l8));
    else    q4k_set_levels((block_q4_K *)blk, levels8(q, l8));
    put_f16(blk, d);
    put_f16(blk + 2, dmin);
}

static void rnd_q6_k(int type, const float *x, uint8_t *blk)
{
    (void)type;
    int q[QK_K], ls[16];
    int8_t l8[QK_K];
    /* signed 8-bit sub-block scales; levels -32..31 stored +32 as a
     * low nibble (ql) and two high bits (qh) */
    block_q6_K *b = (block_q6_K *)blk;
    const float d = round_sym_scales(x, 16, 16, -32.0f, -128, 127, ls);
    for (int j = 0; j < 16; j++) {
        b->scales[j] = (int8_t)ls[j];
        round_sym(x + 16 * j, 16, d * (float)ls[j], -32, 31, q + 16 * j);
    }
    q6k_set_levels(b, levels8(q, l8));
    put_f16((uint8_t *)&b->d, d);
}

/* Each type's two block writers: random codes with profiled scales
 * (synth_block), and round-to-nearest of float weights (round_block;
 * NULL: the type is made by its real quantizer instead). Adding a type to
 * synth is one row here. */
struct synth_codec {
    void (*random)(int type, uint8_t *blk, const float *s16, const float *s32, float rstd);
    void (*round)(int type, const float *x, uint8_t *blk);
};
static const struct synth_codec codecs[MOEQ_TYPE_COUNT] = {
    [MOEQ_TYPE_Q4_0] = { syn_q4_0, rnd_q4_0 },
    [MOEQ_TYPE_Q8_0] = { syn_q8_0, rnd_q8_0 },
    [MOEQ_TYPE_IQ4_NL] = { syn_iq4_nl, rnd_iq4_nl },
    [MOEQ_TYPE_Q2_K] = { syn_q2_k, rnd_q2_k },
    [MOEQ_TYPE_Q3_K] = { syn_q3_k, rnd_q3_k },
    [MOEQ_TYPE_Q4_K] = { syn_q4_k, rnd_q4_k },
    [MOEQ_TYPE_Q5_K] = { syn_q4_k, rnd_q4_k },
    [MOEQ_TYPE_Q6_K] = { syn_q6_k, rnd_q6_k },
    [MOEQ_TYPE_IQ2_XXS] = { syn_iq2_xxs, NULL },
    [MOEQ_TYPE_IQ2_XS] = { syn_iq2_xs, NULL },
    [MOEQ_TYPE_IQ2_S] = { syn_iq2_xs, NULL },
    [MOEQ_TYPE_IQ3_XXS] = { syn_iq3_xxs, NULL },
    [MOEQ_TYPE_IQ3_S] = { syn_iq3_s, NULL },
    [MOEQ_TYPE_IQ4_XS] = { syn_iq4_xs, rnd_iq4_xs },
};

static const struct synth_codec *codec(int type)
{
    return type >= 0 && type < MOEQ_TYPE_COUNT ? &codecs[type] : NULL;
}

/*
 * One block of `type` for the 256 (or 32) columns whose column rms values
 * are s16 (16 per 16 columns) / s32, in a row of standard deviation rstd.
 * Quant indices are random; the scale fields carry the profile.
 */
static void synth_block(int type, uint8_t *blk, size_t bsz, const float *s16, const float *s32,
                        float rstd, uint64_t *rng)
{
    fill_random(blk, bsz, rng);
    const struct synth_codec *c = codec(type);
    if (c && c->random) c->random(type, blk, s16, s32, rstd);
}

/* Encode 256 (or 32) floats x as one block of type by rounding. */
static void round_block(int type, const float *x, uint8_t *blk)
{
    const struct synth_codec *c = codec(type);
    if (c && c->round) c->round(type, x, blk);
}

static int rtn_type(int t)
{
    const struct synth_codec *c = codec(t);
    return c && c->round;
}

/* ---------------------------------------------------------- row workers */

struct slab {
    struct tgen *g;
    uint8_t     *out;   /* rows [r0, r0 + n) */
    uint64_t     r0;
};

static void slab_task(void *ctx, int64_t begin, int64_t end, int tid)
{
    struct slab *sl = ctx;
    struct tgen *g = sl->g;
    const struct tplan *t = g->t;
    uint64_t ne0 = t->ne[0];
    uint8_t *dst = sl->out + (size_t)begin * g->row_bytes;

    if (t->path == PATH_RANDOM) {
        int bs = g->tr->blck_size;
        size_t bsz = g->tr->type_size;
        for (int64_t i = begin; i < end; i++) {
            uint64_t r = sl->r0 + (uint64_t)i;
            uint64_t s = hash3(g->id, 0x626c6b, r);
            float rstd = g->std * row_scale(g, r);
            uint8_t *p = sl->out + (size_t)i * g->row_bytes;
            for (uint64_t c0 = 0; c0 < ne0; c0 += (uint64_t)bs, p += bsz)
                synth_block(t->type, p, bsz, g->sub16 + c0 / 16, g->sub32 + c0 / 32, rstd, &s);
        }
        return;
    }

    /* the pool may hand over more than the grain (one thread runs the
     * whole range): the scratch holds one grain of rows */
    if (end - begin > g->grain) {
        for (int64_t b = begin; b < end; b += g->grain)
            slab_task(ctx, b, b + g->grain < end ? b + g->grain : end, tid);
        return;
    }
    float *f = g->scratch[tid];
    int64_t n = end - begin;
    for (int64_t i = 0; i < n; i++) gen_row(g, sl->r0 + (uint64_t)(begin + i), f + (size_t)i * ne0);
    size_t count = (size_t)n * ne0;
    switch (t->type) {
    case MOEQ_TYPE_F32:
        memcpy(dst, f, count * sizeof(float));
        break;
    case MOEQ_TYPE_F16:
        for (size_t i = 0; i < count; i++) { uint16_t h = moeq_f32_to_f16(f[i]); memcpy(dst + 2 * i, &h, 2); }
        break;
    case MOEQ_TYPE_BF16:
        for (size_t i = 0; i < count; i++) { uint16_t h = moeq_f32_to_bf16(f[i]); memcpy(dst + 2 * i, &h, 2); }
        break;
    default:
        if (t->path == PATH_ROUND) {
            int bs = g->tr->blck_size;
            size_t bsz = g->tr->type_size;
            for (size_t c0 = 0; c0 < count; c0 += (size_t)bs, dst += bsz) round_block(t->type, f + c0, dst);
        } else {
            size_t got = g->tr->quantize(f, dst, n, (int64_t)ne0, NULL, NULL);
            if (got != (size_t)n * g->row_bytes) atomic_store(&g->failed, 1);
        }
        break;
    }
}

/* ------------------------------------------------------------- writing */

#define SLAB_BYTES ((size_t)32 << 20)

static int write_metadata(gguf_writer *w, const moeq_synth_cfg *c, const struct tplan *p, int np,
                          char *err, size_t errlen)
{
    moeq_synth_vocab v;
    if (moeq_synth_vocab_build(c->n_vocab, &v, err, errlen)) return -1;

    /* file type: the recipe's, else that of the type holding most weights */
    int ftype = c->file_type;
    int any_quant = 0;
    if (ftype < 0) {
        uint64_t by_type[MOEQ_TYPE_COUNT] = { 0 };
        for (int i = 0; i < np; i++)
            if (p[i].n_dims > 1) by_type[p[i].type] += p[i].ne[0] * p[i].ne[1] * p[i].ne[2];
        int best = MOEQ_TYPE_F32;
        for (int t = 0; t < MOEQ_TYPE_COUNT; t++) if (by_type[t] > by_type[best]) best = t;
        ftype = moeq_ftype_of_type(best);
    }
    for (int i = 0; i < np; i++) any_quant |= moeq_type_traits(p[i].type)->quantized;

    int rc = 0;
    /* the key order follows llama.cpp's converter and quantizer */
    rc |= gguf_writer_add_str(w, "general.architecture", "qwen3moe");
    rc |= gguf_writer_add_str(w, "general.name", c->name);
    rc |= gguf_writer_add_u32(w, "qwen3moe.block_count", (uint32_t)c->n_layer);
    rc |= gguf_writer_add_u32(w, "qwen3moe.context_length", (uint32_t)c->n_ctx);
    rc |= gguf_writer_add_u32(w, "qwen3moe.embedding_length", (uint32_t)c->n_embd);
    rc |= gguf_writer_add_u32(w, "qwen3moe.feed_forward_length", (uint32_t)c->n_ff);
    rc |= gguf_writer_add_u32(w, "qwen3moe.attention.head_count", (uint32_t)c->n_head);
    rc |= gguf_writer_add_u32(w, "qwen3moe.attention.head_count_kv", (uint32_t)c->n_head_kv);
    rc |= gguf_writer_add_f32(w, "qwen3moe.rope.freq_base", (float)c->rope_base);
    rc |= gguf_writer_add_f32(w, "qwen3moe.attention.layer_norm_rms_epsilon", (float)c->rms_eps);
    rc |= gguf_writer_add_u32(w, "qwen3moe.expert_used_count", (uint32_t)c->n_expert_used);
    rc |= gguf_writer_add_u32(w, "qwen3moe.attention.key_length", (uint32_t)c->head_dim);
    rc |= gguf_writer_add_u32(w, "qwen3moe.attention.value_length", (uint32_t)c->head_dim);
    rc |= gguf_writer_add_u32(w, "general.file_type", (uint32_t)ftype);
    rc |= gguf_writer_add_u32(w, "qwen3moe.expert_count", (uint32_t)c->n_expert);
    rc |= gguf_writer_add_u32(w, "qwen3moe.expert_feed_forward_length", (uint32_t)c->n_ff_exp);
    if (any_quant) rc |= gguf_writer_add_u32(w, "general.quantization_version", 2);
    rc |= gguf_writer_add_str(w, "tokenizer.ggml.model", "gpt2");
    rc |= gguf_writer_add_str(w, "tokenizer.ggml.pre", "qwen2");
    rc |= gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)v.tokens, (uint64_t)v.n_tokens);
    rc |= gguf_writer_add_arr(w, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, v.types, (uint64_t)v.n_tokens);
    rc |= gguf_writer_add_arr_str(w, "tokenizer.ggml.merges", (const char *const *)v.merges, (uint64_t)v.n_merges);
    rc |= gguf_writer_add_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)v.eos);
    rc |= gguf_writer_add_u32(w, "tokenizer.ggml.padding_token_id", (uint32_t)v.pad);
    rc |= gguf_writer_add_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)v.bos);
    rc |= gguf_writer_add_bool(w, "tokenizer.ggml.add_bos_token", 0);
    rc |= gguf_writer_add_str(w, "tokenizer.chat_template",
                              c->chat_template ? c->chat_template : moeq_synth_template_named("chatml"));
    moeq_synth_vocab_free(&v);
    if (rc) {
        snprintf(err, errlen, "%s", gguf_writer_error(w));
        return -1;
    }
    return 0;
}

uint64_t moeq_synth_weight_bytes(const moeq_synth_cfg *c)
{
    char err[64];
    if (moeq_synth_check(c, err, sizeof err)) return 0;
    struct tplan *p;
    int np = plan_tensors(c, &p);
    if (np < 0) return 0;
    uint64_t b = 0;
    for (int i = 0; i < np; i++) {
        int ok;
        b += moeq_tensor_nbytes(p[i].type, p[i].ne[0], p[i].ne[0] * p[i].ne[1] * p[i].ne[2], &ok);
    }
    free(p);
    return b;
}

int moeq_synth_write(const moeq_synth_cfg *c, const char *path, int n_threads,
                     moeq_progress_fn progress, void *ud, char *err, size_t errlen)
{
    if (moeq_synth_check(c, err, errlen)) return -1;
    static int init;
    if (!init) { unit_rms_init(); init = 1; }

    struct tplan *p;
    int np = plan_tensors(c, &p);
    if (np < 0) {
        snprintf(err, errlen, "recipe's tensor plan failed");
        return -1;
    }

    /* a fallback changes what the user asked for: say so, once per group
     * (a mix's types differ from its base type by design) */
    int noted[SYNTH_G_COUNT] = { 0 };
    for (int i = 0; i < np && c->mix_ftype < 0; i++) {
        int g = p[i].group;
        if (p[i].type != c->types[g] && !noted[g]) {
            noted[g] = 1;
            fprintf(stderr, "moeq: synth: note: %s: row length %llu is not a multiple of %s's block; writing %s\n",
                    p[i].name, (unsigned long long)p[i].ne[0], moeq_type_name(c->types[g]),
                    moeq_type_name(p[i].type));
        }
    }

    gguf_writer *w = gguf_writer_open(path, NULL, err, errlen);
    if (!w) { free(p); return -1; }
    if (write_metadata(w, c, p, np, err, errlen)) goto fail;
    for (int i = 0; i < np; i++) {
        if (gguf_writer_add_tensor(w, p[i].name, (uint32_t)p[i].type, (uint32_t)p[i].n_dims, p[i].ne) < 0) {
            snprintf(err, errlen, "%s", gguf_writer_error(w));
            goto fail;
        }
    }
    if ((c->split_max_size && gguf_writer_split_max_size(w, c->split_max_size, NULL)) || gguf_writer_begin_data(w)) {
        snprintf(err, errlen, "%s", gguf_writer_error(w));
        goto fail;
    }

    moeq_pool *pool = moeq_pool_new(n_threads);
    int nt = moeq_pool_size(pool);
    struct model_ctx m;
    model_init(&m, c);
    uint8_t *buf = NULL;
    size_t buf_cap = 0;
    double t0 = moeq_now_s();
    uint64_t written = 0, total_bytes = 0;
    for (int i = 0; i < np; i++)
        total_bytes += (uint64_t)moeq_row_size(p[i].type, (int64_t)p[i].ne[0]) * p[i].ne[1] * p[i].ne[2];
    int rc = 0;
    for (int i = 0; i < np && !rc; i++) {
        struct tgen g;
        tgen_init(&g, &m, &p[i], nt);
        uint64_t slab_rows = SLAB_BYTES / g.row_bytes;
        if (slab_rows < 1) slab_rows = 1;
        if (slab_rows > g.rows) slab_rows = g.rows;
        size_t need = (size_t)slab_rows * g.row_bytes;
        if (need > buf_cap) {
            free(buf);
            buf = malloc(need);
            if (!buf) { fprintf(stderr, "moeq: out of memory\n"); exit(1); }
            buf_cap = need;
        }
        int64_t grain = p[i].path == PATH_RANDOM ? (int64_t)(slab_rows / (uint64_t)(4 * nt) + 1) : g.grain;
        for (uint64_t r0 = 0; r0 < g.rows && !rc; r0 += slab_rows) {
            uint64_t n = g.rows - r0 < slab_rows ? g.rows - r0 : slab_rows;
            struct slab sl = { &g, buf, r0 };
            moeq_pool_for(pool, (int64_t)n, grain, slab_task, &sl);
            if (atomic_load(&g.failed)) {
                snprintf(err, errlen, "%s: the %s quantizer failed (it may need an importance matrix); "
                         "use --mode direct", p[i].name, moeq_type_name(p[i].type));
                rc = -1;
                break;
            }
            if (gguf_writer_write(w, buf, (size_t)n * g.row_bytes)) {
                snprintf(err, errlen, "%s", gguf_writer_error(w));
                rc = -1;
            }
            written += n * g.row_bytes;
        }
        if (progress && (p[i].n_dims == 3 || i == np - 1)) {
            double el = moeq_now_s() - t0;
            struct moeq_progress pr = { "synth", p[i].name, i + 1, np, el,
                                        written ? el * (double)(total_bytes - written) / (double)written : 0.0 };
            progress(ud, &pr);
        }
        tgen_free(&g, nt);
    }
    free(buf);
    model_free(&m);
    moeq_pool_free(pool);
    free(p);
    if (rc) { gguf_writer_abort(w); return -1; }
    if (gguf_writer_finish(w)) {
        snprintf(err, errlen, "%s", gguf_writer_error(NULL));
        return -1;
    }
    return 0;

fail:
    gguf_writer_abort(w);
    free(p);
    return -1;
}
