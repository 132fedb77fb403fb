/*
 * model.h: a qwen3moe (or dense qwen3) model bound to an mmap'd GGUF file,
 * and the one reader of its hyperparameters.
 *
 * moeq_model_load reads the hyperparameters, checks them against each
 * other and against every tensor's type and shape, and binds each weight to
 * its bytes inside the mapping: no weight is copied (1-D norm vectors stored
 * in another type than F32 are the one exception, converted once because
 * they are tiny and read every token). The engine computes directly on
 * these pointers. moeq_hparams_read is the same reading and checking of the
 * hyperparameters alone, for tools that look at a file without loading it
 * (fit, quantize). Internal to the engine, its memory plan and those tools;
 * the CLI and the server use engine.h.
 */
#ifndef MOEQ_MODEL_H
#define MOEQ_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "gguf/gguf.h"

/*
 * A weight matrix in ggml order: n_out rows of n_in elements (ne = [n_in,
 * n_out] or, for the stacked experts, [n_in, n_out, n_expert]). Row r of
 * expert x starts at data + x * expert_stride + r * row_size.
 */
struct moeq_weight {
    const uint8_t *data;
    int            type;
    int64_t        n_in, n_out, n_expert; /* n_expert 1 for a 2-D weight */
    size_t         row_size, expert_stride;
    char           name[64];              /* GGUF tensor name, for hooks and errors */
};

struct moeq_layer {
    const float        *attn_norm;      /* [n_embd] */
    struct moeq_weight  wq;             /* n_embd -> n_head * head_dim */
    struct moeq_weight  wk, wv;         /* n_embd -> n_head_kv * head_dim */
    struct moeq_weight  wo;             /* n_head * head_dim -> n_embd */
    const float        *q_norm, *k_norm;/* [head_dim], per-head RMSNorm */
    const float        *ffn_norm;       /* [n_embd] */
    /* MoE (qwen3moe) */
    struct moeq_weight  router;         /* ffn_gate_inp: n_embd -> n_expert */
    struct moeq_weight  gate_exps, up_exps; /* n_embd -> n_ff_exp, x n_expert */
    struct moeq_weight  down_exps;      /* n_ff_exp -> n_embd, x n_expert */
    /* dense (qwen3) */
    struct moeq_weight  gate, up;       /* n_embd -> n_ff */
    struct moeq_weight  down;           /* n_ff -> n_embd */
};

struct moeq_hparams {
    char   arch[32];
    int    moe;                 /* 1 for qwen3moe, 0 for qwen3 */
    int    n_vocab, n_ctx_train, n_embd, n_layer;
    int    n_head, n_head_kv, head_dim;
    int    n_ff;                /* dense FFN width (qwen3) */
    int    n_expert, n_expert_used, n_ff_exp;
    float  rms_eps;
    /* RoPE, NeoX style over all head_dim dimensions */
    float  rope_base;
    float  rope_freq_scale;     /* 1 / rope.scaling.factor (1 when none) */
    float  yarn_ext_factor;     /* 0 unless YaRN */
    float  yarn_attn_factor;    /* magnitude scale (attn_factor) */
    float  yarn_beta_fast, yarn_beta_slow;
    int    n_ctx_orig;          /* YaRN original context */
};

typedef struct moeq_model {
    gguf_file          *file;
    struct moeq_hparams hp;
    struct moeq_weight  tok_embd;      /* n_vocab rows of n_embd (get-rows) */
    const float        *output_norm;   /* [n_embd] */
    struct moeq_weight  output;        /* n_embd -> n_vocab (token_embd when tied) */
    struct moeq_layer  *layers;
    uint64_t            n_params, weight_bytes;
    float             **owned;         /* converted norm vectors */
    int                 n_owned;
} moeq_model;

/*
 * Read and check the hyperparameters of f (opened from path, which names
 * the file in messages), n_vocab included (token_embd.weight's rows).
 * Returns 0, or -1 with the first problem in err ("PATH: missing key
 * qwen3moe.context_length"); hp then still holds every count the file has
 * (0 where absent), for tools that work with what there is.
 */
int moeq_hparams_read(const gguf_file *f, const char *path, struct moeq_hparams *hp,
                      char *err, size_t errlen);

/*
 * Open path and bind its tensors. Returns NULL with a one-line message
 * naming the file and the key or tensor at fault.
 */
moeq_model *moeq_model_load(const char *path, char *err, size_t errlen);
void        moeq_model_free(moeq_model *m);

#endif
