/*
 * engine_mem.c: the engine's memory plan (engine_mem.h): every buffer size
 * of the engine and its sessions, computed once here for both
 * moeq_engine_open (which allocates this layout) and `moeq fit`. Also the
 * KV cache types of engine.h: their names and their quant formats.
 */
#include "engine/engine_mem.h"
#include "kernels/kernels.h"
#include "quant/quants.h"
#include "quant/quants_blocks.h"

#include <string.h>
#include <strings.h>

/* Code, libc, PCRE2 JIT, thread stacks actually touched and allocator
 * slack: measured on moeq run with a tiny model (about 6 MiB) plus margin. */
#define RUNTIME_OVERHEAD (12ull << 20)

static const struct { const char *name; int quant; } kv_types[] = {
    [MOEQ_KV_F16]  = { "F16", MOEQ_TYPE_F16 },
    [MOEQ_KV_Q8_0] = { "Q8_0", MOEQ_TYPE_Q8_0 },
};
#define N_KV_TYPES ((int)(sizeof kv_types / sizeof kv_types[0]))

int moeq_kv_type_from_name(const char *name)
{
    for (int t = 0; name && t < N_KV_TYPES; t++)
        if (!strcasecmp(name, kv_types[t].name)) return t;
    return -1;
}

const char *moeq_kv_type_name(int type)
{
    return type >= 0 && type < N_KV_TYPES ? kv_types[type].name : "?";
}

int moeq_kv_quant_type(int type)
{
    return type >= 0 && type < N_KV_TYPES ? kv_types[type].quant : -1;
}

void moeq_mem_shape_of(const struct moeq_hparams *hp, struct moeq_mem_shape *s)
{
    memset(s, 0, sizeof *s);
    s->n_layer = hp->n_layer;
    s->n_embd = hp->n_embd;
    s->n_head = hp->n_head;
    s->n_head_kv = hp->n_head_kv;
    s->head_dim = hp->head_dim;
    s->n_expert = hp->moe ? hp->n_expert : 0;
    s->n_expert_used = hp->moe ? hp->n_expert_used : 0;
    s->n_ff = hp->moe ? hp->n_ff_exp : hp->n_ff;
    s->n_vocab = hp->n_vocab;
}

/* Floats between an item's score rows: the context plus one cache line, so
 * that rows a power of two apart do not all land in the same cache sets
 * (the kernels write a column of rows at a time). */
static size_t attn_ld(size_t n_ctx) { return (n_ctx + 15) / 16 * 16 + 16; }

/* Heads per item and tokens per tile for a GQA group, a batch capacity and
 * a context: as many rows as ATT_ROWS and ATT_SCORES_MAX allow. */
static void attn_shape(size_t group, size_t cap, size_t n_ctx, int *nh, int *tile)
{
    const size_t ld = attn_ld(n_ctx);
    size_t h = group < ATT_ROWS ? group : ATT_ROWS;
    if (h * ld > ATT_SCORES_MAX) h = ATT_SCORES_MAX / ld > 1 ? ATT_SCORES_MAX / ld : 1;
    size_t t = ATT_ROWS / h;
    if (t * h * ld > ATT_SCORES_MAX) t = ATT_SCORES_MAX / (h * ld) > 1 ? ATT_SCORES_MAX / (h * ld) : 1;
    if (t > cap) t = cap;
    *nh = (int)h;
    *tile = (int)t;
}

int moeq_mem_estimate(const struct moeq_mem_shape *s, const struct moeq_mem_opts *o,
                      struct moeq_mem_plan *out)
{
    memset(out, 0, sizeof *out);
    struct moeq_mem_layout *L = &out->layout;
    const int moe = s->n_expert > 0;
    if (s->n_layer <= 0 || s->n_embd <= 0 || s->n_head <= 0 || s->n_head_kv <= 0 ||
        s->head_dim <= 0 || s->n_vocab <= 0 || s->n_ff <= 0 || o->n_ctx <= 0 ||
        (moe && s->n_expert_used <= 0))
        return -1;
    const size_t E = (size_t)s->n_embd, HD = (size_t)s->head_dim;
    const size_t nq = (size_t)s->n_head * HD, nkv = (size_t)s->n_head_kv * HD;
    const size_t K = moe ? (size_t)s->n_expert_used : 1, F = (size_t)s->n_ff;
    const size_t n_seq = o->n_seq > 0 ? (size_t)o->n_seq : 1;
    const size_t n_batch = o->n_batch > 0 ? (size_t)o->n_batch : 512;
    const size_t threads = o->n_threads > 0 ? (size_t)o->n_threads : 1;
    const size_t n_ctx = (size_t)o->n_ctx, n_vocab = (size_t)s->n_vocab;
    size_t cap = n_batch > n_seq ? n_batch : n_seq;
    if (cap > n_ctx * n_seq) cap = n_ctx * n_seq;
    const size_t slots = cap * K;
    size_t maxk = E > nq ? E : nq;
    if (F > maxk) maxk = F;
    L->cap = (int)cap;
    L->slots = slots;
    L->rowbuf_len = maxk;

    /* KV: a row of nkv values per layer and position, K and V */
    L->kq_type = moeq_kv_quant_type((int)o->type_k);
    L->vq_type = moeq_kv_quant_type((int)o->type_v);
    if (L->kq_type < 0 || L->vq_type < 0) return -1;
    L->k_row = moeq_row_size(L->kq_type, (int64_t)nkv);
    L->v_row = moeq_row_size(L->vq_type, (int64_t)nkv);
    L->k_head = moeq_row_size(L->kq_type, (int64_t)HD);
    L->v_head = moeq_row_size(L->vq_type, (int64_t)HD);
    if (!L->k_head || !L->v_head) return -1;
    L->kv_k = (size_t)s->n_layer * n_ctx * L->k_row;
    L->kv_v = (size_t)s->n_layer * n_ctx * L->v_row;
    L->tokens = n_ctx * sizeof(int32_t);
    L->logits = n_vocab * sizeof(float);

    /* attention: per thread, the score rows of an item over the padded
     * context, then ATT_POS converted K/V rows and their block scales
     * (and for Q8_0 K the quantized query rows) */
    attn_shape((size_t)(s->n_head / s->n_head_kv), cap, n_ctx, &L->attn_nh, &L->attn_tile);
    L->attn_ld = attn_ld(n_ctx);
    L->attn_buf_len = (size_t)L->attn_nh * (size_t)L->attn_tile * L->attn_ld + ATT_POS * HD +
                      ATT_POS * (HD / QK8_0 + 1);
    /* Q8_0 K: an item's query rows quantized as K rows are */
    if (L->kq_type == MOEQ_TYPE_Q8_0)
        L->attn_buf_len += ((size_t)L->attn_nh * (size_t)L->attn_tile * L->k_head + sizeof(float) - 1) /
                           sizeof(float);

    size_t *b = L->buf;
    b[MEM_BTOK] = cap * sizeof(int32_t);
    b[MEM_BPOS] = cap * sizeof(int);
    b[MEM_BSESS] = cap * sizeof(moeq_session *);
    b[MEM_OUT_ROWS] = cap * sizeof(int);
    b[MEM_X] = cap * E * sizeof(float);
    b[MEM_XN] = cap * maxk * sizeof(float);
    b[MEM_TMP] = cap * E * sizeof(float);
    b[MEM_Q] = cap * nq * sizeof(float);
    b[MEM_K] = cap * nkv * sizeof(float);
    b[MEM_V] = cap * nkv * sizeof(float);
    b[MEM_ATT] = cap * nq * sizeof(float);
    b[MEM_ROPE] = cap * HD * sizeof(float);
    b[MEM_HG] = slots * F * sizeof(float);
    b[MEM_HU] = slots * F * sizeof(float);
    {   /* the widest activation row of each quantized format, for every
         * batch row or expert slot; expert hidden rows for down in either */
        const size_t rows = slots > cap ? slots : cap;
        b[MEM_ACTQ0] = rows * moeq_act_row_size(MOEQ_TYPE_Q8_0, (int64_t)((maxk + 31) / 32 * 32));
        b[MEM_ACTQ1] = rows * moeq_act_row_size(MOEQ_TYPE_Q4_K, (int64_t)((maxk + 255) / 256 * 256));
        const size_t h0 = moeq_act_row_size(MOEQ_TYPE_Q8_0, (int64_t)((F + 31) / 32 * 32));
        const size_t h1 = moeq_act_row_size(MOEQ_TYPE_Q4_K, (int64_t)((F + 255) / 256 * 256));
        b[MEM_ACTQ_H] = slots * (h0 > h1 ? h0 : h1);
    }
    b[MEM_ROWBUF] = maxk * sizeof(float);
    b[MEM_ATTN_TILES] = cap * sizeof(struct moeq_attn_tile);
    b[MEM_ATTN_BUF] = threads * L->attn_buf_len * sizeof(float);
    b[MEM_LOGITS_TMP] = n_seq * n_vocab * sizeof(float);
    if (moe) {
        const size_t NX = (size_t)s->n_expert, maxr = F > E ? F : E;
        b[MEM_RLOG] = cap * NX * sizeof(float);
        b[MEM_SEL] = slots * sizeof(int);
        b[MEM_SELW] = slots * sizeof(float);
        b[MEM_SLOT_OF] = slots * sizeof(int);
        b[MEM_EX_COUNT] = b[MEM_EX_OFF] = b[MEM_EX_FILL] = b[MEM_EX_ORDER] = NX * sizeof(int);
        b[MEM_XG] = slots * E * sizeof(float);
        b[MEM_DOUT] = slots * E * sizeof(float);
        b[MEM_TASKS] = NX * ((maxr + ROW_CHUNK - 1) / ROW_CHUNK) * sizeof(struct moe_task);
    }
    for (int i = 0; i < MEM_BUF_COUNT; i++) out->compute += b[i];

    out->kv_per_token = (uint64_t)s->n_layer * (L->k_row + L->v_row) * n_seq;
    out->kv = (uint64_t)(L->kv_k + L->kv_v) * n_seq;
    out->sessions = (uint64_t)(L->tokens + L->logits) * n_seq;
    /* tokenizer: token strings, lookup tables and the merge ranks */
    out->overhead = RUNTIME_OVERHEAD + (uint64_t)s->n_vocab * 96 + (uint64_t)s->n_merges * 48;
    out->weights = s->weight_bytes;
    out->total = out->weights + out->kv + out->compute + out->sessions + out->overhead;
    return 0;
}

int moeq_mem_max_ctx(const struct moeq_mem_shape *s, const struct moeq_mem_opts *o,
                     uint64_t budget, int ctx_limit)
{
    struct moeq_mem_opts t = *o;
    struct moeq_mem_plan p;
    int lo = 0, hi = ctx_limit / 256;
    while (lo < hi) {   /* largest k with total(256 k) <= budget */
        int mid = lo + (hi - lo + 1) / 2;
        t.n_ctx = mid * 256;
        if (moeq_mem_estimate(s, &t, &p) == 0 && p.total <= budget) lo = mid;
        else hi = mid - 1;
    }
    return lo * 256;
}
