/*
 * engine_internal.h: the engine's and session's state, shared by engine.c,
 * sample.c and the engine's tests. Not for the CLI or the server, which
 * see only engine.h.
 */
#ifndef MOEQ_ENGINE_INTERNAL_H
#define MOEQ_ENGINE_INTERNAL_H

#include "engine/engine.h"
#include "engine/engine_mem.h"
#include "kernels/kernels.h"
#include "model/model.h"
#include "engine/pool.h"

struct moeq_engine {
    moeq_model            *m;
    struct moeq_model_info info;
    moeq_pool             *pool;
    int                    n_threads, n_ctx, n_seq, n_batch;
    int                    type_k, type_v; /* KV cache formats: MOEQ_TYPE_F16 or MOEQ_TYPE_Q8_0 */
    int                    cap;        /* tokens per forward batch: max(n_batch, n_seq) */
    int                    n_sessions; /* sessions alive */
    struct moeq_tokenizer *tok;        /* NULL when the file has no vocabulary */
    moeq_act_hook          hook;
    void                  *hook_ud;
    int                    layer_limit;   /* > 0: forward only the first layer_limit layers */

    /* KV cache geometry (per session: n_layer x n_ctx rows; the row and
     * head sizes and the attention shape are mem's) */
    size_t kv_layer_bytes_k, kv_layer_bytes_v;
    struct moeq_attn_ops attn;         /* for type_k / type_v and the CPU */
    int attn_rows;                     /* mem.attn_nh * mem.attn_tile: rows of an item, at most */

    /* The memory plan this engine was opened with (engine_mem.h): every
     * buffer below and each session's is allocated with its size; the
     * bytes allocated, counted as they are, for tests to compare with it. */
    struct moeq_mem_layout mem;
    size_t scratch_bytes;              /* the buffers below */
    size_t kv_bytes, session_bytes;    /* live sessions: KV cache; tokens and logits */

    /* scratch, sized once at open (cap tokens; slots = cap * n_expert_used) */
    int32_t       *btok;         /* [cap] batch tokens */
    int           *bpos;         /* [cap] their positions */
    moeq_session **bsess;        /* [cap] their sessions */
    int           *out_rows;     /* [cap] rows whose logits are wanted */
    float *x;                    /* [cap][n_embd] residual stream */
    float *xn;                   /* [cap][max(n_embd, n_q, n_ff)] normed input */
    float *tmp;                  /* [cap][n_embd] projection output */
    float *q, *k, *v;            /* [cap][n_head*hd], [cap][n_head_kv*hd] x2 */
    float *att;                  /* [cap][n_head*hd] attention output */
    float *rope;                 /* [cap][head_dim] cos/sin pairs */
    float *hg, *hu;              /* [slots][n_ff] gate -> hidden, up */
    uint8_t *actq[2];            /* [slots] activation rows in Q8_0 / Q8_K */
    uint8_t *actq_h;             /* [slots] expert hidden rows quantized for down */
    float *rowbuf;               /* [mem.rowbuf_len] a dequantized embedding row */
    struct moeq_attn_tile *attn_tiles; /* [cap] the batch's attention tiles */
    float *attn_buf;             /* [n_threads][mem.attn_buf_len] scores, converted K/V rows */
    float *logits_tmp;           /* [n_seq][n_vocab] decode logits */
    /* MoE routing */
    float *rlog;                 /* [cap][n_expert] router logits -> probs */
    int   *sel;                  /* [slots] selected experts per token */
    float *selw;                 /* [slots] their weights */
    int   *slot_of;              /* [slots] (token, k) -> grouped row */
    int   *ex_count, *ex_off, *ex_fill; /* [n_expert] */
    int   *ex_order;                    /* [n_expert]: active experts, most tokens first */
    float *xg;                   /* [slots][n_embd] inputs grouped by expert */
    float *dout;                 /* [slots][n_embd] expert outputs */
    struct moe_task *tasks;
};

struct moeq_session {
    moeq_engine *e;
    uint8_t     *k, *v;          /* [n_layer][n_ctx] rows of type_k / type_v */
    int32_t     *tokens;         /* [n_ctx] tokens in the cache */
    int          n_past;
    float       *logits;         /* [n_vocab] of the last evaluated token */
    int          logits_valid;
};

/* Attention kernels of at most this ISA (enum moeq_isa; the CPU's best is
 * the default): lets tests compare the scalar and SIMD paths. */
void moeq_engine_attn_isa(moeq_engine *e, int isa);

/* The bound model (tensor names and shapes for tools such as imatrix). */
const moeq_model *moeq_engine_model(const moeq_engine *e);

#endif
