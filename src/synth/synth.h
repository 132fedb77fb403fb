/*
 * synth.h: synthesized qwen3moe models (moeq synth, and tests that need a
 * model of a given shape without shipping one).
 *
 * A configuration (shape, seed, one tensor type per group) becomes a GGUF
 * file with llama.cpp's tensor names, shapes and order, the metadata its
 * qwen3moe loader reads, and a byte-level BPE tokenizer. Weights are
 * deterministic pseudo-random values with structure (row, column and expert
 * scales, outlier input channels, hot experts, norms near 1), written in a
 * stream: memory stays bounded whatever the model's size. The same
 * configuration always gives the same bytes, at any thread count.
 */
#ifndef MOEQ_SYNTH_H
#define MOEQ_SYNTH_H

#include <stddef.h>
#include <stdint.h>

/* Tensor groups that take one type each (the recipe table's rows). */
enum moeq_synth_group {
    SYNTH_G_EMBD,       /* token_embd */
    SYNTH_G_OUTPUT,     /* output */
    SYNTH_G_ATTN_Q,
    SYNTH_G_ATTN_K,
    SYNTH_G_ATTN_V,
    SYNTH_G_ATTN_OUT,
    SYNTH_G_NORM,       /* every *_norm: attn, q, k, ffn, output */
    SYNTH_G_ROUTER,     /* ffn_gate_inp */
    SYNTH_G_EXP_GATE,   /* ffn_gate_exps */
    SYNTH_G_EXP_UP,     /* ffn_up_exps */
    SYNTH_G_EXP_DOWN,   /* ffn_down_exps */
    SYNTH_G_COUNT
};

/*
 * How quantized tensors are produced. "quantize" runs the type's quantizer
 * on the float weights (the file is then a quantization of the F32 model
 * of the same seed; the search-based quantizers manage well under a
 * million weights a second per core). "direct" costs a few operations per
 * weight: linear types (Q4_0, Q8_0, Q2_K..Q6_K, IQ4_NL, IQ4_XS) round the
 * same float weights to the nearest levels; grid types (IQ2_*, IQ3_*) get
 * random grid points and signs with block and sub-block scales fitted to
 * the weights' row and column scale profile (16/32-column resolution).
 */
enum moeq_synth_mode {
    SYNTH_MODE_AUTO,     /* quantize when the model has at most
                            SYNTH_AUTO_QUANTIZE_MAX quantized weights, else direct */
    SYNTH_MODE_QUANTIZE, /* quantize wherever the type has a quantizer */
    SYNTH_MODE_DIRECT,   /* direct everywhere */
};

#define SYNTH_AUTO_QUANTIZE_MAX (1ull << 24)

typedef struct {
    char     name[64];          /* general.name */
    int      n_layer;
    int      n_embd;
    int      n_head, n_head_kv, head_dim;
    int      n_expert, n_expert_used;
    int      n_ff_exp;          /* expert FFN length */
    int      n_ff;              /* feed_forward_length (dense; unused by qwen3moe) */
    int      n_vocab;
    int      n_ctx;
    double   rope_base;
    double   rms_eps;
    uint64_t seed;
    int      types[SYNTH_G_COUNT];
    int      file_type;         /* general.file_type; -1: derived from the types */
    int      mix_ftype;         /* a llama.cpp mix (e.g. Q4_K_M) whose per-tensor rules
                                   pick the types, as moeq quantize would; -1: none */
    int      mode;              /* enum moeq_synth_mode */
    uint64_t split_max_size;    /* > 0: write a split set (gguf_writer_split_max_size) */
    const char *chat_template;  /* tokenizer.chat_template (borrowed); NULL: the built-in ChatML */
} moeq_synth_cfg;

/* Fill c with a preset ("tiny", "qwen3-30b-a3b"); -1 when unknown.
 * Every type is F32, the seed is the default. */
int moeq_synth_preset(moeq_synth_cfg *c, const char *name);

/* Set the types of a recipe: "asym-2bitexp", "f32", "f16", "bf16", or the
 * name of a quantize mix ("Q4_K_M", "Q8_0", ...: every tensor gets the type
 * moeq quantize would give it, layer rules included); -1 when unknown. */
int moeq_synth_recipe(moeq_synth_cfg *c, const char *name);

/* Bytes of tensor data of the model c describes, tensor by tensor as
 * moeq_synth_write lays it out; 0 when the configuration is invalid. */
uint64_t moeq_synth_weight_bytes(const moeq_synth_cfg *c);

/* Group name as used in flags ("embd", "attn-q", "exp-gate", ...). */
const char *moeq_synth_group_name(int g);

/*
 * Validate the shape and types; 0 or -1 with a message. Types that cannot
 * hold a group's row length are not errors: they fall back per tensor
 * (see moeq_synth_tensor_type).
 */
int moeq_synth_check(const moeq_synth_cfg *c, char *err, size_t errlen);

/*
 * The type a tensor of group g with row length ne0 is written in: the
 * group's type, or, when ne0 is not a multiple of its block size, a
 * fallback as llama.cpp picks one (i-quants and low K-quants -> IQ4_NL,
 * Q4_K..Q6_K -> Q8_0, then F16).
 */
int moeq_synth_tensor_type(const moeq_synth_cfg *c, int g, uint64_t ne0);

/* How group g is produced: "float", "quantize", "round" or "random" (see
 * enum moeq_synth_mode). */
const char *moeq_synth_path_name(const moeq_synth_cfg *c, int g);

/*
 * Write the model to path with n_threads (<= 0: all cores). verbose prints
 * progress to stderr. 0 on success; -1 with a message (the target is left
 * untouched).
 */
int moeq_synth_write(const moeq_synth_cfg *c, const char *path, int n_threads,
                     int verbose, char *err, size_t errlen);

/* ------------------------------------------------------------ vocabulary */

typedef struct {
    char   **tokens;    /* n_tokens UTF-8 strings */
    int32_t *types;     /* 1 normal, 3 control, 5 unused */
    char   **merges;    /* "left right" */
    int      n_tokens, n_merges;
    int      bos, eos, pad;
} moeq_synth_vocab;

/* Build the vocabulary of n_vocab tokens (>= 259); -1 with a message. */
int  moeq_synth_vocab_build(int n_vocab, moeq_synth_vocab *v, char *err, size_t errlen);
void moeq_synth_vocab_free(moeq_synth_vocab *v);

extern const char moeq_synth_chat_template[];

#endif
