/*
 * engine_mem.c: the engine's memory, predicted. The scratch sizes mirror
 * moeq_engine_open in engine.c buffer for buffer (a change there must be
 * made here too; tests/test_fit.c compares the prediction with the
 * measured peak RSS of moeq bench, so a drift shows).
 */
#include "engine_mem.h"
#include "quants.h"

#include <string.h>

/* Code, libc, PCRE2 JIT, thread stacks actually touched and allocator
 * slack: measured on moeq run with a tiny model (about 6 MiB) plus margin. */
#define RUNTIME_OVERHEAD (12ull << 20)

int moeq_mem_estimate(const struct moeq_mem_shape *s, const struct moeq_mem_opts *o,
                      struct moeq_mem_plan *out)
{
    memset(out, 0, sizeof *out);
    if (s->n_layer <= 0 || s->n_embd <= 0 || s->n_head <= 0 || s->n_head_kv <= 0 ||
        s->head_dim <= 0 || s->n_vocab <= 0 || o->n_ctx <= 0)
        return -1;
    const uint64_t E = (uint64_t)s->n_embd, HD = (uint64_t)s->head_dim;
    const uint64_t nq = (uint64_t)s->n_head * HD, nkv = (uint64_t)s->n_head_kv * HD;
    const int moe = s->n_expert > 0;
    const uint64_t K = moe ? (uint64_t)s->n_expert_used : 1, F = (uint64_t)s->n_ff;
    const uint64_t n_seq = o->n_seq > 0 ? (uint64_t)o->n_seq : 1;
    const uint64_t n_batch = o->n_batch > 0 ? (uint64_t)o->n_batch : 512;
    const uint64_t threads = o->n_threads > 0 ? (uint64_t)o->n_threads : 1;
    const uint64_t n_ctx = (uint64_t)o->n_ctx;
    uint64_t cap = n_batch > n_seq ? n_batch : n_seq;
    if (cap > n_ctx * n_seq) cap = n_ctx * n_seq;
    const uint64_t slots = cap * K;
    uint64_t maxk = E > nq ? E : nq;
    if (F > maxk) maxk = F;

    /* KV: a row of nkv values per layer and position, K and V */
    const int tk = o->type_k ? o->type_k : MOEQ_TYPE_F16, tv = o->type_v ? o->type_v : MOEQ_TYPE_F16;
    const uint64_t kr = moeq_row_size(tk, (int64_t)nkv), vr = moeq_row_size(tv, (int64_t)nkv);
    if (!kr || !vr) return -1;
    out->kv_per_token = (uint64_t)s->n_layer * (kr + vr) * n_seq;
    out->kv = out->kv_per_token * n_ctx;

    /* engine scratch, as moeq_engine_open allocates it */
    uint64_t f = 0;
    f += cap * E;            /* x */
    f += cap * maxk;         /* xn */
    f += cap * E;            /* tmp */
    f += cap * nq * 2;       /* q, att */
    f += cap * nkv * 2;      /* k, v */
    f += cap * HD;           /* rope */
    f += slots * F * 2;      /* hg, hu */
    f += maxk;               /* rowbuf (one embedding row) */
    {   /* attention, per thread: an item's score rows (a GQA group's heads,
         * at most 64, times a tile's tokens, fewer at long contexts: as
         * attn_shape in engine.c) over the padded context, plus 32
         * converted K/V rows and their block scales; and the batch's tiles */
        const uint64_t group = (uint64_t)(s->n_head / s->n_head_kv), amax = 1u << 20;
        const uint64_t ld = (n_ctx + 15) / 16 * 16 + 16;   /* attn_ld */
        uint64_t nh = group < 64 ? group : 64;
        if (nh * ld > amax) nh = amax / ld > 1 ? amax / ld : 1;
        uint64_t tile = 64 / nh;
        if (tile * nh * ld > amax) tile = amax / (nh * ld) > 1 ? amax / (nh * ld) : 1;
        if (tile > cap) tile = cap;
        f += threads * (nh * tile * ld + 32 * HD + 32 * (HD / 32 + 1));
        f += cap * 2;        /* attn_tiles: two ints a token */
    }
    f += maxk;               /* rowbuf (one embedding row) */
    {   /* attention: per thread, scores of an item's rows (a GQA group's
         * heads, at most 64, times the tokens of a tile, at most cap) over
         * the context, plus 32 converted K/V rows and their block scales;
         * and the batch's tiles. As attn_shape in engine.c. */
        const uint64_t group = (uint64_t)(s->n_head / s->n_head_kv);
        const uint64_t nh = group < 64 ? group : 64;
        uint64_t tile = 64 / nh;
        if (tile > cap) tile = cap;
        const uint64_t ld = (n_ctx + 15) / 16 * 16 + 16;   /* attn_ld */
        f += threads * (nh * tile * ld + 32 * HD + 32 * (HD / 32 + 1));
        f += cap * 2;        /* attn_tiles: two ints a token */
    }
    f += n_seq * (uint64_t)s->n_vocab; /* logits_tmp */
    uint64_t bytes = f * 4 + cap * (4 + 4 + 8 + 4); /* btok, bpos, bsess, out_rows */
    const uint64_t k32 = (maxk + 31) / 32 * 32, k256 = (maxk + 255) / 256 * 256;
    const uint64_t rows = slots > cap ? slots : cap;
    bytes += rows * moeq_row_size(MOEQ_TYPE_Q8_0, (int64_t)k32);
    bytes += rows * (k256 / 256) * 292;   /* Q8_K activation rows */
    {   /* expert hidden rows for down (actq_h), the wider format */
        const uint64_t h0 = moeq_row_size(MOEQ_TYPE_Q8_0, (int64_t)((F + 31) / 32 * 32));
        const uint64_t h1 = (F + 255) / 256 * 292;
        bytes += slots * (h0 > h1 ? h0 : h1);
    }
    if (moe) {
        const uint64_t NX = (uint64_t)s->n_expert;
        const uint64_t maxr = F > E ? F : E;
        bytes += cap * NX * 4;                 /* rlog */
        bytes += slots * (4 + 4 + 4);          /* sel, selw, slot_of */
        bytes += NX * 4 * 4;                   /* ex_count, ex_off, ex_fill, ex_order */
        bytes += slots * E * 4 * 2;            /* xg, dout */
        bytes += NX * ((maxr + 15) / 16) * 16; /* tasks (upper bound) */
    }
    out->compute = bytes;
    /* per session: token history and last logits */
    out->sessions = n_seq * (n_ctx * 4 + (uint64_t)s->n_vocab * 4);
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
