/*
 * engine_mem.h: the engine's memory plan, the one place its sizes are
 * computed.
 *
 * moeq_mem_estimate lays out every buffer the engine allocates for a shape
 * and a setting: the KV cache (layers x context x KV heads x head size in
 * the cache types, per session), each scratch buffer of a forward batch,
 * the per-session buffers, plus the weights (mapped) and a fixed runtime
 * overhead. moeq_engine_open allocates exactly the plan's layout, so
 * `moeq fit`, which calls the same function from a GGUF header or a synth
 * preset without loading anything, predicts what the engine allocates to
 * the byte (tests/test_fit.c checks this, and the peak RSS of a real run).
 *
 * It also owns the constants that fix those sizes (the attention tiling,
 * the smallest matmul task) and the element types of the scratch buffers
 * that are not plain numbers, and maps engine.h's KV cache types to quant
 * formats (engine.c and the kernels work on those). Included by engine.c
 * (via engine_internal.h), `moeq fit` and the tests.
 */
#ifndef MOEQ_ENGINE_MEM_H
#define MOEQ_ENGINE_MEM_H

#include <stddef.h>
#include <stdint.h>

#include "engine/engine.h"
#include "model/model.h"

/* Attention (engine.c) takes items of at most ATT_ROWS rows (token x query
 * head) and converts cached K/V rows ATT_POS positions at a time into a
 * thread's scratch; a thread's score rows hold at most ATT_SCORES_MAX
 * floats (4 MiB): at long contexts tiles get fewer tokens, then items fewer
 * heads, down to one row. */
#define ATT_ROWS 64
#define ATT_POS  32
#define ATT_SCORES_MAX ((size_t)1 << 20)

/* The fewest rows a matmul task takes (engine.c), which bounds the MoE
 * task list. */
#define ROW_CHUNK 32

/* A run of batch tokens t0 .. t0+nt of one session at consecutive positions. */
struct moeq_attn_tile { int t0, nt; };
/* Rows r0 .. r1 of one expert's matmul. */
struct moe_task { int expert, r0, r1; };

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
    enum moeq_kv_type type_k, type_v;
};

/* The engine's scratch buffers, in the order engine_internal.h lists them. */
enum moeq_mem_buf {
    MEM_BTOK, MEM_BPOS, MEM_BSESS, MEM_OUT_ROWS, MEM_X, MEM_XN, MEM_TMP, MEM_Q, MEM_K, MEM_V,
    MEM_ATT, MEM_ROPE, MEM_HG, MEM_HU, MEM_ACTQ0, MEM_ACTQ1, MEM_ACTQ_H, MEM_ROWBUF,
    MEM_ATTN_TILES, MEM_ATTN_BUF, MEM_LOGITS_TMP,
    /* MoE only (0 bytes for a dense model) */
    MEM_RLOG, MEM_SEL, MEM_SELW, MEM_SLOT_OF, MEM_EX_COUNT, MEM_EX_OFF, MEM_EX_FILL,
    MEM_EX_ORDER, MEM_XG, MEM_DOUT, MEM_TASKS,
    MEM_BUF_COUNT
};

/* Buffer by buffer, what the engine allocates. */
struct moeq_mem_layout {
    int    cap;                    /* tokens per forward batch: max(n_batch, n_seq), at most all cells */
    size_t slots;                  /* cap x experts used per token */
    size_t buf[MEM_BUF_COUNT];     /* bytes of each scratch buffer */
    size_t rowbuf_len;             /* floats of a dequantized embedding row */
    int    attn_nh, attn_tile;     /* query heads per attention item, tokens per tile (at most) */
    size_t attn_ld;                /* floats between an item's score rows (>= n_ctx) */
    size_t attn_buf_len;           /* floats of one thread's attention scratch */
    size_t k_row, v_row;           /* KV bytes of one position, all KV heads */
    size_t k_head, v_head;         /* ... of one KV head */
    int    kq_type, vq_type;       /* the cache types as quant types (MOEQ_TYPE_*) */
    /* per session */
    size_t kv_k, kv_v;             /* bytes of its K and V cache, all layers */
    size_t tokens, logits;         /* bytes of its token history and last logits */
};

struct moeq_mem_plan {
    uint64_t weights;
    uint64_t kv;        /* all sessions */
    uint64_t kv_per_token; /* one more token of context, all sessions */
    uint64_t compute;   /* engine scratch: the sum of layout.buf */
    uint64_t sessions;  /* per-session buffers other than KV */
    uint64_t overhead;  /* tokenizer tables, code, libc, thread stacks in use */
    uint64_t total;
    struct moeq_mem_layout layout;
};

/* The shape of a model's hyperparameters (n_merges and weight_bytes are
 * left 0: they are not hyperparameters). */
void moeq_mem_shape_of(const struct moeq_hparams *hp, struct moeq_mem_shape *s);

/* The quant type (MOEQ_TYPE_*) of a KV cache type, -1 for a bad value. */
int moeq_kv_quant_type(int kv_type);

/* Fill out for shape s and options o; -1 on a nonsensical shape or a KV
 * type the shape cannot hold (q8_0 needs head sizes in blocks of 32). */
int moeq_mem_estimate(const struct moeq_mem_shape *s, const struct moeq_mem_opts *o,
                      struct moeq_mem_plan *out);

/* Largest context (a multiple of 256) whose total stays within budget
 * bytes; 0 when not even 256 tokens fit. Other fields of o are kept. */
int moeq_mem_max_ctx(const struct moeq_mem_shape *s, const struct moeq_mem_opts *o,
                     uint64_t budget, int ctx_limit);

#endif
