/*
 * engine_mem.h: what the engine allocates, computed ahead of time.
 *
 * `moeq fit` answers "does this model with this context fit this machine"
 * without loading anything: the weights (mapped, so resident as they are
 * touched), the KV cache (exact: layers x context x KV heads x head size
 * in the cache types, per session), the engine's scratch buffers (the same
 * sizes engine.c allocates for a batch), the per-session buffers and a
 * fixed runtime overhead. A test compares the prediction with the peak RSS
 * of a real run.
 */
#ifndef MOEQ_ENGINE_MEM_H
#define MOEQ_ENGINE_MEM_H

#include <stdint.h>

struct moeq_mem_shape {
    int n_layer, n_embd, n_head, n_head_kv, head_dim;
    int n_expert, n_expert_used, n_ff;  /* n_ff: expert FFN length (dense FFN when n_expert == 0) */
    int n_vocab, n_merges;
    uint64_t weight_bytes;              /* all tensor data */
};

struct moeq_mem_opts {
    int n_ctx;       /* per session */
    int n_seq;       /* sessions (server --parallel) */
    int n_batch;     /* prompt tokens per forward batch */
    int n_threads;
    int type_k, type_v;
};

struct moeq_mem_plan {
    uint64_t weights;
    uint64_t kv;        /* all sessions */
    uint64_t kv_per_token; /* one more token of context, all sessions */
    uint64_t compute;   /* engine scratch */
    uint64_t sessions;  /* per-session buffers other than KV */
    uint64_t overhead;  /* tokenizer tables, code, libc, thread stacks in use */
    uint64_t total;
};

/* Fill out for shape s and options o; -1 on a nonsensical shape. */
int moeq_mem_estimate(const struct moeq_mem_shape *s, const struct moeq_mem_opts *o,
                      struct moeq_mem_plan *out);

/* Largest context (a multiple of 256) whose total stays within budget
 * bytes; 0 when not even 256 tokens fit. Other fields of o are kept. */
int moeq_mem_max_ctx(const struct moeq_mem_shape *s, const struct moeq_mem_opts *o,
                     uint64_t budget, int ctx_limit);

#endif
