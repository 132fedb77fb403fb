/*
 * engine.h: the narrow public API of the inference engine.
 *
 * An engine is a loaded model (weights mmap'd, tokenizer, thread pool); a
 * session is one mutable inference timeline with its own KV cells. The CLI,
 * the server and the tools (run, perplexity, imatrix, bench, serve) reach
 * the model only through this header: they never see tensors.
 *
 * An engine and its sessions are used by one thread at a time (the engine
 * runs its own worker pool inside each call). Weights stay in the file's
 * mapping; the KV cache lives in the sessions; all scratch is allocated at
 * open, so eval, decode and sampling allocate nothing. A measurement tool
 * may point one weight at its own bytes for a while
 * (moeq_engine_override_weight).
 */
#ifndef MOEQ_ENGINE_H
#define MOEQ_ENGINE_H

#include <stddef.h>
#include <stdint.h>

typedef struct moeq_engine  moeq_engine;
typedef struct moeq_session moeq_session;

/* KV cache element types (the engine maps them to its quant formats). */
enum moeq_kv_type { MOEQ_KV_F16 = 0, MOEQ_KV_Q8_0 = 1 };

/* "f16" or "q8_0" (any case) -> enum moeq_kv_type, -1 for anything else;
 * and back to a name ("F16", "Q8_0"; "?" for a bad value). */
int         moeq_kv_type_from_name(const char *name);
const char *moeq_kv_type_name(int type);

struct moeq_engine_params {
    const char *model_path;
    int n_threads;      /* <= 0: all cores */
    int n_ctx;          /* per session; <= 0: the model's training context */
    int n_seq;          /* sessions that may exist at once (server --parallel) */
    enum moeq_kv_type type_k, type_v; /* KV cache types (0: F16) */
    int n_batch;        /* prompt tokens per forward batch (default 512) */
};

struct moeq_model_info {
    char     arch[32];
    char     name[128];
    int      n_vocab, n_ctx_train, n_embd, n_layer, n_head, n_head_kv, head_dim;
    int      n_expert, n_expert_used, n_ff_exp;
    double   rope_base, rms_eps;
    uint64_t n_params, weight_bytes;
    int32_t  bos, eos, eot, pad;
    int      add_bos;
    int      has_vocab; /* 0: no tokenizer metadata (tokenize returns -1) */
};

/* Load and validate a model; NULL with a one-line message in err. */
moeq_engine *moeq_engine_open(const struct moeq_engine_params *p, char *err, size_t errlen);
void         moeq_engine_close(moeq_engine *e);
const struct moeq_model_info *moeq_engine_info(const moeq_engine *e);
/* Threads the engine's pool runs (n_threads <= 0 at open: the cores). */
int moeq_engine_n_threads(const moeq_engine *e);

/* ---- tokenizer (see tokenizer.h for the implementation) ---- */

/* Tokenize; control tokens in text are recognized only with parse_special.
 * Returns the count (may exceed max: call again with a larger buffer), -1
 * when the model has no vocabulary. */
int  moeq_tokenize(const moeq_engine *e, const char *text, size_t len,
                   int parse_special, int32_t *out, int max);
/* A whole text (a calibration or evaluation file) as tokens, control
 * tokens not parsed: a malloc'd array of *n tokens, led by the model's BOS
 * when with_bos is set and the model adds one. NULL with err set when the
 * model has no vocabulary, the text is over 2^30 tokens or memory runs out. */
int32_t *moeq_tokenize_text(const moeq_engine *e, const char *text, size_t len, int with_bos, int *n,
                            char *err, size_t errlen);
/* Bytes of a token's text (not NUL-terminated); returns length or -1. */
int  moeq_token_piece(const moeq_engine *e, int32_t tok, char *buf, int cap);
/* End-of-generation token (eos, eot, im_end)? */
int  moeq_token_is_eog(const moeq_engine *e, int32_t tok);

struct moeq_chat_msg { const char *role, *content; };
/* Render messages with the model's chat template (ChatML family); returns a
 * malloc'd string or NULL with err set (unknown role). */
char *moeq_chat_render(const moeq_engine *e, const struct moeq_chat_msg *msgs, int n,
                       int add_generation_prompt, char *err, size_t errlen);
/* The same over a full template context (a JSON object, borrowed:
 * messages with tool_calls and tool results, tools, add_generation_prompt,
 * chat_template_kwargs' keys), as tokenizer.h's
 * moeq_tokenizer_chat_render_json. */
struct json_t;
char *moeq_chat_render_json(const moeq_engine *e, struct json_t *ctx, char *err, size_t errlen);
/* The template's tool-call syntax (enum moeq_chat_format, chat_parse.h);
 * *think: whether it has <think> reasoning. */
int   moeq_chat_format(const moeq_engine *e, int *think);

/* ---- sessions ---- */

moeq_session *moeq_session_new(moeq_engine *e, char *err, size_t errlen);
void          moeq_session_free(moeq_session *s);
int           moeq_session_n_past(const moeq_session *s);
int           moeq_session_n_ctx(const moeq_session *s);

/* Keep the longest common prefix of the cached tokens and tokens[0..n),
 * but at most n-1 so that the caller always evaluates at least one token
 * and gets fresh logits; returns how many were kept (prefix reuse). The
 * caller then evaluates tokens[kept..n). */
int moeq_session_sync(moeq_session *s, const int32_t *tokens, int n);

/*
 * Append n tokens and run the forward pass. The logits of the last token
 * are then available from moeq_session_logits; when all_logits is non-NULL
 * it receives n x n_vocab floats (every position). Returns 0, or -1 with err
 * set (context full: "context of N tokens is full").
 */
int moeq_session_eval(moeq_session *s, const int32_t *tokens, int n,
                      float *all_logits, char *err, size_t errlen);
/* Logits of the last evaluated token (n_vocab floats), NULL when none are
 * valid (fresh session, or sync dropped cached tokens). */
const float *moeq_session_logits(const moeq_session *s);

/* One decode step for several distinct sessions at once (one token
 * each), reading the weights once for all of them; each session's logits
 * are then available. Returns 0 or -1 with err set (context full). */
int moeq_engine_decode(moeq_engine *e, moeq_session **ss, const int32_t *tokens, int n,
                       char *err, size_t errlen);

/* ---- sampling ---- */

struct moeq_candidate { int32_t id; float logit, p; };

/*
 * Filters apply in llama.cpp's order: top-k, top-p, min-p (on the
 * temperature-1 distribution), then temperature. Zero-initialize, set the
 * fields, and call moeq_sampler_free when done: the candidate buffer is
 * grown once to the vocabulary and reused, so sampling allocates nothing
 * per token.
 */
struct moeq_logit_bias { int32_t id; float bias; };

struct moeq_sampler {
    float    temp;      /* <= 0: greedy */
    int      top_k;     /* <= 0: off */
    float    top_p;     /* >= 1: off */
    float    min_p;     /* <= 0: off */
    uint64_t rng;       /* splitmix64 state, seeded by the caller */
    /* Penalties over the last repeat_last_n tokens of the history given to
     * moeq_sample_hist, applied before any filter as llama.cpp does: a token
     * seen c times has its logit divided (if > 0) or multiplied (if < 0) by
     * repeat_penalty, then lowered by c * frequency_penalty and, once, by
     * presence_penalty. Then logit_bias adds its values (-inf bans). */
    float    repeat_penalty;     /* <= 0 or 1: off */
    int      repeat_last_n;      /* tokens looked back; 0: off, -1: the whole history */
    float    frequency_penalty, presence_penalty;   /* 0: off */
    const struct moeq_logit_bias *bias;  /* borrowed */
    int      n_bias;
    struct moeq_candidate *work; /* internal */
    int      work_cap;           /* internal */
    float   *adj;                /* internal: adjusted logits */
    int32_t *seen;               /* internal: per-token counts, kept zero between calls */
    int      adj_cap;            /* internal */
};
int32_t moeq_sample(struct moeq_sampler *sp, const float *logits, int n_vocab);
/* The same with the token history (prompt and output so far) for the penalties. */
int32_t moeq_sample_hist(struct moeq_sampler *sp, const float *logits, int n_vocab,
                         const int32_t *hist, int n_hist);
void    moeq_sampler_free(struct moeq_sampler *sp);
/*
 * Speculative verification of a draft token proposed with probability 1
 * (prompt lookup): the standard accept/reject rule, so the token returned
 * is distributed exactly as moeq_sample_hist's. It is the draft (*accepted
 * 1) with probability p(draft), else a draw from p with the draft removed.
 * Greedy samplers accept the draft exactly when it is the argmax.
 */
int32_t moeq_sample_verify(struct moeq_sampler *sp, const float *logits, int n_vocab, const int32_t *hist,
                           int n_hist, int32_t draft, int *accepted);

/* ---- generation, optionally with prompt-lookup drafting ---- */

/* Called with each generated token in order; nonzero stops generation. */
typedef int (*moeq_token_cb)(void *ctx, int32_t tok);

struct moeq_spec_opts {
    int lookup;          /* draft from n-grams of the prompt and output so far */
    int draft_max;       /* tokens drafted per step (<= 0: 8) */
    int ngram_min, ngram_max;   /* n-gram lengths tried, longest first (1..3 by default) */
    struct moeq_sampler *sampler; /* NULL: greedy; temp <= 0: greedy over its penalized logits */
    moeq_session *draft;          /* non-NULL: drafts are this session's model's greedy
                                     continuation (same vocabulary) instead of lookups */
};
struct moeq_spec_stats { int steps, drafted, accepted, ctx_full; };   /* ctx_full: stopped by the context */

/* Up to max tokens that followed the most recent earlier occurrence of the
 * history's longest matching suffix (ngram_max..ngram_min tokens); the count. */
int moeq_lookup_draft(const int32_t *hist, int n, int ngram_min, int ngram_max, int max, int32_t *draft);

/*
 * Generation of up to n_predict tokens (< 0: until the context is full)
 * after prompt, stopping after an end-of-generation token; greedy, or
 * sampled with o->sampler. With o->lookup or o->draft, drafts are verified in batches:
 * greedy tokens are exactly plain greedy decoding's (the logits do not
 * depend on the batch), sampled ones have plain sampling's distribution
 * (moeq_sample_verify), in fewer forward passes. Returns 0, or -1 with err set.
 */
int moeq_generate(moeq_engine *e, moeq_session *s, const int32_t *prompt, int n_prompt, int n_predict,
                  const struct moeq_spec_opts *o, moeq_token_cb cb, void *ctx,
                  struct moeq_spec_stats *st, char *err, size_t errlen);

/* ---- activation statistics (imatrix) ----
 * When set, called for every matmul input during eval and decode, on the
 * calling thread, before the matmul: the weight's GGUF tensor name
 * ("blk.3.attn_q.weight", "blk.3.ffn_gate_inp.weight", "output.weight"),
 * the expert id for the stacked expert tensors (ffn_*_exps, called once per
 * expert with just the rows routed to it; -1 for every other weight), and
 * n_rows rows of n_cols floats (the activations that multiply that weight;
 * valid only during the call). q/k/v share one input and are reported once
 * each; output.weight sees only the rows whose logits are computed (all of
 * them when eval is given all_logits). */
typedef void (*moeq_act_hook)(void *ud, const char *tensor, int expert,
                              const float *x, int n_rows, int n_cols);
void moeq_engine_set_act_hook(moeq_engine *e, moeq_act_hook fn, void *ud);

/* For statistics passes that need only the early layers' inputs: eval and
 * decode run the first n_layer layers only (<= 0: all of them) until the
 * next call. Their logits are then meaningless and the later layers' KV
 * cells stale: start from position 0 after lifting the limit. */
void moeq_engine_set_layer_limit(moeq_engine *e, int n_layer);

/* ---- one weight computed from other bytes (measurement tools) ----
 * Until the next call for the same weight, the engine computes with
 * `data` in `type` instead of the file's bytes for weight `tensor` (all
 * its experts; the same shape, nbytes exactly what the type needs; data
 * must stay valid meanwhile). data NULL restores the file's bytes. A
 * session's KV cells computed before the swap are stale: start its next
 * eval from position 0. Returns 0, or -1 with err (no such weight, a type
 * the engine cannot compute with, a size that does not match). */
int moeq_engine_override_weight(moeq_engine *e, const char *tensor, int type, const void *data, size_t nbytes,
                                char *err, size_t errlen);

#endif
