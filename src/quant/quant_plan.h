/*
 * quant_plan.h: which type each tensor gets when a model is quantized.
 *
 * Pure planning, no I/O: given the model's shape and the user's choices
 * (a named mix such as Q4_K_M, a named recipe such as asym-2bitexp,
 * --tensor-type rules, --pure, embedding and output overrides) it returns
 * the type for every tensor, following
 * llama.cpp's per-tensor rules for the mixes (with the MoE bumps of the
 * reference implementation: attn_k/attn_v to Q8_0 and attn_output to Q5_K
 * for models with >= 4 experts). The quantize command prints and executes
 * the plan; tests check it without touching a file.
 */
#ifndef MOEQ_QUANT_PLAN_H
#define MOEQ_QUANT_PLAN_H

#include <regex.h>
#include <stddef.h>
#include <stdint.h>

#include "quant/tensor_groups.h"

/* llama.cpp's file types (general.file_type), the ones moeq can produce. */
enum moeq_ftype {
    MOEQ_FTYPE_ALL_F32 = 0, MOEQ_FTYPE_F16 = 1, MOEQ_FTYPE_Q4_0 = 2, MOEQ_FTYPE_Q8_0 = 7,
    MOEQ_FTYPE_Q2_K = 10, MOEQ_FTYPE_Q3_K_S = 11, MOEQ_FTYPE_Q3_K_M = 12, MOEQ_FTYPE_Q3_K_L = 13,
    MOEQ_FTYPE_Q4_K_S = 14, MOEQ_FTYPE_Q4_K_M = 15, MOEQ_FTYPE_Q5_K_S = 16, MOEQ_FTYPE_Q5_K_M = 17,
    MOEQ_FTYPE_Q6_K = 18, MOEQ_FTYPE_IQ2_XXS = 19, MOEQ_FTYPE_IQ2_XS = 20, MOEQ_FTYPE_IQ3_XS = 22,
    MOEQ_FTYPE_IQ3_XXS = 23, MOEQ_FTYPE_IQ4_NL = 25, MOEQ_FTYPE_IQ3_S = 26, MOEQ_FTYPE_IQ3_M = 27,
    MOEQ_FTYPE_IQ2_S = 28, MOEQ_FTYPE_IQ2_M = 29, MOEQ_FTYPE_IQ4_XS = 30, MOEQ_FTYPE_BF16 = 32,
};

/* A named mix: its name, llama.cpp file type and base tensor type. */
struct moeq_mix {
    const char *name;
    int ftype;
    int base_type;
};

/* Mix by name ("Q4_K_M", "q4_k", "IQ2_S", ...; a plain type name maps to
 * the mix llama-quantize uses for it) or by llama.cpp file type number
 * ("15" is Q4_K_M), or NULL. */
const struct moeq_mix *moeq_mix_find(const char *name);
/* All mixes, terminated by a NULL name (for --help). */
const struct moeq_mix *moeq_mix_list(void);

/* Mix by llama.cpp file type, or NULL. */
const struct moeq_mix *moeq_mix_of_ftype(int ftype);
/* llama.cpp's general.file_type for a file mostly of one tensor type: the
 * mix of that name (IQ2_S, Q6_K, ...), else the first built on it (Q4_K:
 * Q4_K_S); F32 for a type no mix names. */
int moeq_ftype_of_type(int type);
/* The type a tensor of row length ne0 gets for `type` (llama.cpp's
 * fallback when the block does not divide the row: i-quants, Q2_K, Q3_K,
 * IQ4_XS -> IQ4_NL; Q4_K..Q6_K -> Q8_0; then F16); *fell_back 1 if so. */
int moeq_plan_fit_row(int type, uint64_t ne0, int *fell_back);

/*
 * A named recipe: a type per tensor group over a base mix. The one table of
 * recipes, read by quantize (--recipe, where it also gives the file type
 * and base type when TYPE is omitted), synth (--recipe, group by group) and
 * fit (through synth's presets).
 */
struct moeq_recipe {
    const char *name;
    int ftype;                    /* general.file_type; its mix is the base */
    int types[MOEQ_GROUP_COUNT];  /* per enum moeq_group; -1: as the mix says */
};

/* Recipe by name (exact), or NULL. */
const struct moeq_recipe *moeq_recipe_find(const char *name);
/* All recipes, terminated by a NULL name (for --help and error messages). */
const struct moeq_recipe *moeq_recipe_list(void);

struct moeq_type_rule {
    char   *pattern;  /* POSIX extended regex, searched in the tensor name */
    regex_t re;
    int     type;
};

struct moeq_plan_opts {
    const struct moeq_mix *mix;
    int  pure;                 /* every quantizable tensor gets the base type */
    int  token_embd_type;      /* -1: by the mix rules */
    int  output_type;          /* -1: by the mix rules */
    int  has_imatrix;
    const struct moeq_type_rule *rules;  /* first match wins */
    int  n_rules;
    /* NULL, or group types applied where no rule matched (token_embd and
     * output as the overrides above, where those are -1) */
    const struct moeq_recipe *recipe;
};

struct moeq_model_shape {
    int n_layer, n_head, n_head_kv, n_expert;
    int has_output;            /* a separate output.weight exists */
};

struct moeq_plan_tensor {
    const char *name;
    int      src_type;
    uint32_t n_dims;
    uint64_t ne[4];
};

/* Per-tensor result. */
struct moeq_plan_entry {
    int quantize;    /* 0: copied unchanged (norms, router, already the target type) */
    int type;        /* output type */
    int fallback;    /* 1 when the row length forced a compatible type */
    int rule;        /* index of the --tensor-type rule that chose it, or -1 */
    int recipe;      /* 1 when the recipe's group type chose it */
    uint64_t nbytes; /* output bytes */
};

/*
 * Plan every tensor (in file order: the layer counters of the mix rules
 * depend on it). Returns 0, or -1 with err set (e.g. a tensor whose row
 * fits no type).
 */
int moeq_plan(const struct moeq_plan_opts *o, const struct moeq_model_shape *shape,
              const struct moeq_plan_tensor *t, int n, struct moeq_plan_entry *out,
              char *err, size_t errlen);

/* Whether a tensor is a weight matrix that quantization may change. */
int moeq_plan_is_quantizable(const char *name, uint32_t n_dims);

/* Types for which llama-quantize demands importance data. */
int moeq_type_needs_imatrix(int type);

/* Parse "REGEX=TYPE" into r (compiles the regex). -1 with err on error. */
int moeq_type_rule_parse(const char *spec, struct moeq_type_rule *r, char *err, size_t errlen);
void moeq_type_rule_free(struct moeq_type_rule *r);

#endif
