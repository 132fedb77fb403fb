/*
 * quant_plan.c: per-tensor type selection for `moeq quantize`.
 *
 * The mix rules follow llama.cpp's llama_tensor_get_type as the reference
 * implementation applies it (the MoE bumps use n_expert >= 4, which is what
 * produced ../shared's reference Q4_K_M file); where the reference would
 * pick one of its own types that plain ggml lacks (IQ4_K, IQ3_K, ...), the
 * nearest ggml type of at least the same size is used instead. The order
 * of precedence matches llama-quantize: mix rules, then --tensor-type
 * (first matching rule wins), then the row-length fallback, then
 * --token-embedding-type / --output-tensor-type.
 */
#include "quant/quant_plan.h"
#include "quant/quants.h"
#include "quant/tensor_groups.h"
#include "util/util.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct moeq_mix mixes[] = {
    { "F32",     MOEQ_FTYPE_ALL_F32, MOEQ_TYPE_F32 },
    { "F16",     MOEQ_FTYPE_F16,     MOEQ_TYPE_F16 },
    { "BF16",    MOEQ_FTYPE_BF16,    MOEQ_TYPE_BF16 },
    { "Q4_0",    MOEQ_FTYPE_Q4_0,    MOEQ_TYPE_Q4_0 },
    { "Q8_0",    MOEQ_FTYPE_Q8_0,    MOEQ_TYPE_Q8_0 },
    { "Q2_K",    MOEQ_FTYPE_Q2_K,    MOEQ_TYPE_Q2_K },
    { "Q3_K_S",  MOEQ_FTYPE_Q3_K_S,  MOEQ_TYPE_Q3_K },
    { "Q3_K_M",  MOEQ_FTYPE_Q3_K_M,  MOEQ_TYPE_Q3_K },
    { "Q3_K_L",  MOEQ_FTYPE_Q3_K_L,  MOEQ_TYPE_Q3_K },
    { "Q4_K_S",  MOEQ_FTYPE_Q4_K_S,  MOEQ_TYPE_Q4_K },
    { "Q4_K_M",  MOEQ_FTYPE_Q4_K_M,  MOEQ_TYPE_Q4_K },
    { "Q5_K_S",  MOEQ_FTYPE_Q5_K_S,  MOEQ_TYPE_Q5_K },
    { "Q5_K_M",  MOEQ_FTYPE_Q5_K_M,  MOEQ_TYPE_Q5_K },
    { "Q6_K",    MOEQ_FTYPE_Q6_K,    MOEQ_TYPE_Q6_K },
    { "IQ2_XXS", MOEQ_FTYPE_IQ2_XXS, MOEQ_TYPE_IQ2_XXS },
    { "IQ2_XS",  MOEQ_FTYPE_IQ2_XS,  MOEQ_TYPE_IQ2_XS },
    { "IQ2_S",   MOEQ_FTYPE_IQ2_S,   MOEQ_TYPE_IQ2_XS }, /* llama.cpp: the IQ2_S mix is IQ2_XS-based */
    { "IQ2_M",   MOEQ_FTYPE_IQ2_M,   MOEQ_TYPE_IQ2_S },
    { "IQ3_XXS", MOEQ_FTYPE_IQ3_XXS, MOEQ_TYPE_IQ3_XXS },
    { "IQ3_XS",  MOEQ_FTYPE_IQ3_XS,  MOEQ_TYPE_IQ3_S },
    { "IQ3_S",   MOEQ_FTYPE_IQ3_S,   MOEQ_TYPE_IQ3_S },
    { "IQ3_M",   MOEQ_FTYPE_IQ3_M,   MOEQ_TYPE_IQ3_S },
    { "IQ4_NL",  MOEQ_FTYPE_IQ4_NL,  MOEQ_TYPE_IQ4_NL },
    { "IQ4_XS",  MOEQ_FTYPE_IQ4_XS,  MOEQ_TYPE_IQ4_XS },
    { NULL, 0, 0 },
};

/* llama-quantize's aliases: a bare K type name means its _M mix. */
static const struct { const char *alias, *mix; } aliases[] = {
    { "Q3_K", "Q3_K_M" }, { "Q4_K", "Q4_K_M" }, { "Q5_K", "Q5_K_M" },
};

static int name_eq(const char *a, const char *b)
{
    while (*a && *b && toupper((unsigned char)*a) == toupper((unsigned char)*b)) a++, b++;
    return *a == 0 && *b == 0;
}

const struct moeq_mix *moeq_mix_find(const char *name)
{
    if (!name) return NULL;
    /* llama-quantize's numeric file types: "15" is Q4_K_M */
    if (*name >= '0' && *name <= '9') {
        char *end;
        long ft = strtol(name, &end, 10);
        return *end || ft > 1000 ? NULL : moeq_mix_of_ftype((int)ft);
    }
    for (size_t i = 0; i < sizeof aliases / sizeof aliases[0]; i++)
        if (name_eq(name, aliases[i].alias)) name = aliases[i].mix;
    for (const struct moeq_mix *m = mixes; m->name; m++)
        if (name_eq(name, m->name)) return m;
    return NULL;
}

const struct moeq_mix *moeq_mix_list(void) { return mixes; }

int moeq_ftype_of_type(int type)
{
    const char *name = moeq_type_name(type);
    if (!name) return MOEQ_FTYPE_ALL_F32;
    for (const struct moeq_mix *m = mixes; m->name; m++)   /* the mix of that name */
        if (name_eq(name, m->name)) return m->ftype;
    for (const struct moeq_mix *m = mixes; m->name; m++)   /* else the first built on it */
        if (m->base_type == type) return m->ftype;
    return MOEQ_FTYPE_ALL_F32;
}

const struct moeq_mix *moeq_mix_of_ftype(int ftype)
{
    for (const struct moeq_mix *m = mixes; m->name; m++)
        if (m->ftype == ftype) return m;
    return NULL;
}

/* Every group is named (one left out would silently read 0, F32). */
static const struct moeq_recipe recipes[] = {
    /* routed experts at 2 bits (down, which writes the residual stream, at
     * 3), attention at 4, embeddings and output at 6, the rest IQ3_S */
    { "asym-2bitexp", MOEQ_FTYPE_IQ3_S,
      { [MOEQ_GROUP_FFN_GATE_EXPS] = MOEQ_TYPE_IQ2_S, [MOEQ_GROUP_FFN_UP_EXPS] = MOEQ_TYPE_IQ2_S,
        [MOEQ_GROUP_FFN_DOWN_EXPS] = MOEQ_TYPE_IQ3_S,
        [MOEQ_GROUP_ATTN_Q] = MOEQ_TYPE_Q4_K, [MOEQ_GROUP_ATTN_K] = MOEQ_TYPE_Q4_K,
        [MOEQ_GROUP_ATTN_V] = MOEQ_TYPE_Q4_K, [MOEQ_GROUP_ATTN_OUTPUT] = MOEQ_TYPE_Q4_K,
        [MOEQ_GROUP_TOKEN_EMBD] = MOEQ_TYPE_Q6_K, [MOEQ_GROUP_OUTPUT] = MOEQ_TYPE_Q6_K,
        [MOEQ_GROUP_NORM] = -1, [MOEQ_GROUP_ROUTER] = -1, [MOEQ_GROUP_OTHER] = -1 } },
    { NULL, 0, { 0 } },
};

const struct moeq_recipe *moeq_recipe_find(const char *name)
{
    if (!name) return NULL;
    for (const struct moeq_recipe *r = recipes; r->name; r++)
        if (!strcmp(r->name, name)) return r;
    return NULL;
}

const struct moeq_recipe *moeq_recipe_list(void) { return recipes; }

static int ends_with(const char *s, const char *suf)
{
    size_t n = strlen(s), m = strlen(suf);
    return n >= m && strcmp(s + n - m, suf) == 0;
}

int moeq_plan_is_quantizable(const char *name, uint32_t n_dims)
{
    /* llama-quantize: 2-D+ tensors whose name ends in "weight", except
     * norms and the MoE router (kept in full precision: routing decisions
     * are sensitive and the router is tiny) */
    return n_dims >= 2 && ends_with(name, "weight") && !strstr(name, "_norm.weight") &&
           !strstr(name, "ffn_gate_inp.weight");
}

int moeq_type_needs_imatrix(int type)
{
    return type == MOEQ_TYPE_IQ2_XXS || type == MOEQ_TYPE_IQ2_XS || type == MOEQ_TYPE_IQ2_S;
}

/* The reference's layer pattern for "more bits": first and last eighth and
 * every third layer in between. */
static int use_more_bits(int i, int n)
{
    return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2;
}

static int layer_of(const char *name, int fallback)
{
    int il = moeq_tensor_layer(name);
    return il >= 0 ? il : fallback;
}

struct counters { int i_attn_v, n_attn_v, i_ffn_down; };

static int mix_rule(const struct moeq_mix *mix, const struct moeq_model_shape *s,
                    const char *name, int new_type, uint64_t ne0, int has_imatrix,
                    struct counters *c)
{
    const int ft = mix->ftype;
    const int n_gqa = s->n_head_kv > 0 ? s->n_head / s->n_head_kv : 1;
    const int nexp = s->n_expert > 1 ? s->n_expert : 1;
    const int n_layer = s->n_layer > 0 ? s->n_layer : 1;
    const int is_output = strcmp(name, "output.weight") == 0 ||
                          (!s->has_output && strcmp(name, "token_embd.weight") == 0);
    const int iq2_mix = ft == MOEQ_FTYPE_IQ2_XXS || ft == MOEQ_FTYPE_IQ2_XS ||
                        ft == MOEQ_FTYPE_IQ2_S || ft == MOEQ_FTYPE_IQ2_M;
    const int iq2_s_m = ft == MOEQ_FTYPE_IQ2_S || ft == MOEQ_FTYPE_IQ2_M;

    if (is_output) {
        if (ne0 % 256) return MOEQ_TYPE_Q8_0;
        if (iq2_mix || ft == MOEQ_FTYPE_IQ3_XXS) return MOEQ_TYPE_Q5_K;
        return new_type == MOEQ_TYPE_Q8_0 ? new_type : MOEQ_TYPE_Q6_K;
    }
    if (strcmp(name, "token_embd.weight") == 0) {
        if (ft == MOEQ_FTYPE_IQ2_XXS || ft == MOEQ_FTYPE_IQ2_XS) return MOEQ_TYPE_Q2_K;
        if (iq2_s_m || ft == MOEQ_FTYPE_IQ3_XXS) return MOEQ_TYPE_IQ3_S;
        return new_type;
    }
    if (iq2_mix) {
        if (strstr(name, "attn_v.weight")) {
            c->i_attn_v++;
            if (n_gqa >= 4 || nexp >= 4) return MOEQ_TYPE_Q4_K;
            if (n_gqa >= 2 || nexp >= 2) return MOEQ_TYPE_Q3_K;
            return iq2_s_m ? MOEQ_TYPE_IQ3_S : MOEQ_TYPE_Q2_K;
        }
        if (nexp >= 8 && (strstr(name, "attn_k") || strstr(name, "attn_q"))) return MOEQ_TYPE_Q4_K;
        if (strstr(name, "ffn_down")) {
            int il = layer_of(name, c->i_ffn_down++);
            if (il < n_layer / 8) return iq2_s_m ? MOEQ_TYPE_IQ3_S : MOEQ_TYPE_Q2_K;
            return new_type;
        }
        if (strstr(name, "attn_output.weight")) {
            if (nexp >= 4) return MOEQ_TYPE_Q5_K;
            if (iq2_s_m) return MOEQ_TYPE_IQ3_S;
        }
        return new_type;
    }
    if (strstr(name, "attn_v.weight")) {
        int i = c->i_attn_v++;
        if (nexp >= 4) return MOEQ_TYPE_Q8_0;
        if (ft == MOEQ_FTYPE_Q2_K) return n_gqa >= 4 ? MOEQ_TYPE_Q4_K : MOEQ_TYPE_Q3_K;
        if (ft == MOEQ_FTYPE_IQ3_XXS)
            return n_gqa >= 4 ? MOEQ_TYPE_Q4_K : !has_imatrix ? MOEQ_TYPE_IQ3_S : MOEQ_TYPE_IQ3_XXS;
        if ((ft == MOEQ_FTYPE_IQ3_XS || ft == MOEQ_FTYPE_IQ3_S) && n_gqa >= 4) return MOEQ_TYPE_Q4_K;
        if (ft == MOEQ_FTYPE_IQ3_M) return MOEQ_TYPE_Q4_K;
        if (ft == MOEQ_FTYPE_Q3_K_M) return i < 2 ? MOEQ_TYPE_Q5_K : MOEQ_TYPE_Q4_K;
        if (ft == MOEQ_FTYPE_Q3_K_L) return MOEQ_TYPE_Q5_K;
        if ((ft == MOEQ_FTYPE_IQ4_NL || ft == MOEQ_FTYPE_IQ4_XS) && n_gqa >= 4) return MOEQ_TYPE_Q5_K;
        if ((ft == MOEQ_FTYPE_Q4_K_M || ft == MOEQ_FTYPE_Q5_K_M) && use_more_bits(i, c->n_attn_v))
            return MOEQ_TYPE_Q6_K;
        if (ft == MOEQ_FTYPE_Q4_K_S && i < 4) return MOEQ_TYPE_Q5_K;
        return new_type;
    }
    if (strstr(name, "attn_k")) {
        if (nexp >= 4) return MOEQ_TYPE_Q8_0;
        if (ft == MOEQ_FTYPE_IQ3_XS) return MOEQ_TYPE_IQ3_XXS;
        if (ft == MOEQ_FTYPE_IQ3_XXS) return MOEQ_TYPE_IQ2_S;
        return new_type;
    }
    if (strstr(name, "attn_q")) {
        if (ft == MOEQ_FTYPE_IQ3_XS) return MOEQ_TYPE_IQ3_XXS;
        if (ft == MOEQ_FTYPE_IQ3_XXS) return MOEQ_TYPE_IQ2_S;
        return new_type;
    }
    if (strstr(name, "ffn_down")) {
        int il = layer_of(name, c->i_ffn_down++);
        if (ft == MOEQ_FTYPE_Q2_K) return MOEQ_TYPE_Q3_K;
        if (ft == MOEQ_FTYPE_IQ3_XXS && !has_imatrix)
            return il < n_layer / 8 ? MOEQ_TYPE_Q4_K : MOEQ_TYPE_Q3_K;
        if (ft == MOEQ_FTYPE_Q3_K_M)
            return il < n_layer / 16 ? MOEQ_TYPE_Q5_K : MOEQ_TYPE_Q4_K;
        if (ft == MOEQ_FTYPE_IQ3_M && (il < n_layer / 8 || (nexp >= 4 && use_more_bits(il, n_layer))))
            return MOEQ_TYPE_Q4_K;
        if (ft == MOEQ_FTYPE_Q3_K_L) return MOEQ_TYPE_Q5_K;
        if (ft == MOEQ_FTYPE_Q4_K_M) return use_more_bits(il, n_layer) ? MOEQ_TYPE_Q6_K : new_type;
        if (il < n_layer / 8 && !has_imatrix && (ft == MOEQ_FTYPE_IQ4_NL || ft == MOEQ_FTYPE_IQ4_XS))
            return MOEQ_TYPE_Q5_K;
        if (ft == MOEQ_FTYPE_Q5_K_M && use_more_bits(il, n_layer)) return MOEQ_TYPE_Q6_K;
        if (ft == MOEQ_FTYPE_Q4_K_S && il < n_layer / 8) return MOEQ_TYPE_Q5_K;
        return new_type;
    }
    if (strstr(name, "attn_output.weight")) {
        if (nexp >= 4) {
            switch (ft) {
            case MOEQ_FTYPE_Q2_K: case MOEQ_FTYPE_IQ3_XS: case MOEQ_FTYPE_IQ3_XXS:
            case MOEQ_FTYPE_Q3_K_S: case MOEQ_FTYPE_Q3_K_M: case MOEQ_FTYPE_IQ4_NL:
            case MOEQ_FTYPE_Q4_K_S: case MOEQ_FTYPE_Q4_K_M: case MOEQ_FTYPE_IQ3_S:
            case MOEQ_FTYPE_IQ3_M: case MOEQ_FTYPE_IQ4_XS:
                return MOEQ_TYPE_Q5_K;
            default:
                return new_type;
            }
        }
        if (ft == MOEQ_FTYPE_Q2_K) return MOEQ_TYPE_Q3_K;
        if (ft == MOEQ_FTYPE_IQ3_XXS) return MOEQ_TYPE_IQ3_S;
        if (ft == MOEQ_FTYPE_Q3_K_M || ft == MOEQ_FTYPE_IQ3_M) return MOEQ_TYPE_Q4_K;
        if (ft == MOEQ_FTYPE_Q3_K_L) return MOEQ_TYPE_Q5_K;
        return new_type;
    }
    return new_type;
}

/* A type whose block fits a row of ne0, as llama-quantize falls back:
 * 256-wide types to a 32-wide one (ggml has no Q5_0/Q5_1 in moeq, so the
 * K-quants above 4 bits fall back to Q8_0), then to F16. */
int moeq_plan_fit_row(int type, uint64_t ne0, int *fell_back)
{
    const struct moeq_type_traits *t = moeq_type_traits(type);
    *fell_back = 0;
    if (!t || ne0 % (uint64_t)t->blck_size == 0) return type;
    *fell_back = 1;
    int alt;
    switch (type) {
    case MOEQ_TYPE_Q4_K: case MOEQ_TYPE_Q5_K: case MOEQ_TYPE_Q6_K: alt = MOEQ_TYPE_Q8_0; break;
    default: alt = MOEQ_TYPE_IQ4_NL; break;
    }
    if (ne0 % 32 == 0) return alt;
    return MOEQ_TYPE_F16;
}

int moeq_plan(const struct moeq_plan_opts *o, const struct moeq_model_shape *shape,
              const struct moeq_plan_tensor *t, int n, struct moeq_plan_entry *out,
              char *err, size_t errlen)
{
    struct counters c = { 0, 0, 0 };
    for (int i = 0; i < n; i++)
        if (strstr(t[i].name, "attn_v.weight")) c.n_attn_v++;
    const int base = o->mix->base_type;
    const int base_quantized = moeq_type_traits(base) && moeq_type_traits(base)->quantized;
    const struct moeq_recipe *rp = o->recipe;
    const int embd_type = o->token_embd_type >= 0 || !rp ? o->token_embd_type : rp->types[MOEQ_GROUP_TOKEN_EMBD];
    const int output_type = o->output_type >= 0 || !rp ? o->output_type : rp->types[MOEQ_GROUP_OUTPUT];
    for (int i = 0; i < n; i++) {
        struct moeq_plan_entry *e = &out[i];
        memset(e, 0, sizeof *e);
        e->rule = -1;
        e->type = t[i].src_type;
        uint64_t nelem = t[i].ne[0] * t[i].ne[1] * t[i].ne[2] * t[i].ne[3];
        if (moeq_plan_is_quantizable(t[i].name, t[i].n_dims)) {
            int type = base;
            if (!o->pure && base_quantized)
                type = mix_rule(o->mix, shape, t[i].name, type, t[i].ne[0], o->has_imatrix, &c);
            for (int r = 0; r < o->n_rules; r++) {
                if (regexec(&o->rules[r].re, t[i].name, 0, NULL, 0) == 0) {
                    type = o->rules[r].type;
                    e->rule = r;
                    break;
                }
            }
            const int g = moeq_tensor_group(t[i].name);
            if (e->rule < 0 && o->recipe && g != MOEQ_GROUP_TOKEN_EMBD && g != MOEQ_GROUP_OUTPUT &&
                o->recipe->types[g] >= 0) {
                type = o->recipe->types[g];
                e->recipe = 1;
            }
            type = moeq_plan_fit_row(type, t[i].ne[0], &e->fallback);
            if (embd_type >= 0 && strcmp(t[i].name, "token_embd.weight") == 0)
                type = embd_type;
            if (output_type >= 0 && strcmp(t[i].name, "output.weight") == 0)
                type = output_type;
            const struct moeq_type_traits *tt = moeq_type_traits(type);
            if (!tt || t[i].ne[0] % (uint64_t)tt->blck_size) {
                moeq_set_err(err, errlen, "tensor %s: row length %llu does not fit type %s",
                             t[i].name, (unsigned long long)t[i].ne[0], moeq_type_name(type));
                return -1;
            }
            e->type = type;
            e->quantize = type != t[i].src_type;
        }
        int ok;
        e->nbytes = moeq_tensor_nbytes(e->type, t[i].ne[0], nelem, &ok);
        if (!ok) {
            moeq_set_err(err, errlen, "tensor %s: cannot size %s data", t[i].name, moeq_type_name(e->type));
            return -1;
        }
    }
    return 0;
}

int moeq_type_rule_parse(const char *spec, struct moeq_type_rule *r, char *err, size_t errlen)
{
    memset(r, 0, sizeof *r);
    const char *eq = strrchr(spec, '=');
    if (!eq || eq == spec || !eq[1]) {
        moeq_set_err(err, errlen, "--tensor-type '%s': expected REGEX=TYPE", spec);
        return -1;
    }
    r->type = moeq_type_from_name(eq + 1);
    const struct moeq_type_traits *tt = moeq_type_traits(r->type);
    if (!tt || r->type == MOEQ_TYPE_Q8_K) {
        moeq_set_err(err, errlen, "--tensor-type '%s': unknown type '%s'", spec, eq + 1);
        return -1;
    }
    r->pattern = strndup(spec, (size_t)(eq - spec));
    if (!r->pattern) { moeq_set_err(err, errlen, "out of memory"); return -1; }
    int rc = regcomp(&r->re, r->pattern, REG_EXTENDED | REG_NOSUB);
    if (rc != 0) {
        char msg[128];
        regerror(rc, &r->re, msg, sizeof msg);
        moeq_set_err(err, errlen, "--tensor-type '%s': bad regex '%s': %s", spec, r->pattern, msg);
        free(r->pattern);
        r->pattern = NULL;
        return -1;
    }
    return 0;
}

void moeq_type_rule_free(struct moeq_type_rule *r)
{
    if (r && r->pattern) {
        regfree(&r->re);
        free(r->pattern);
        r->pattern = NULL;
    }
}
