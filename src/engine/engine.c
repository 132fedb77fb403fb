/*
 * engine.c: the qwen3moe / qwen3 forward pass, the KV cache and sessions.
 *
 * One forward batch is a list of tokens, each with its own session and
 * position: a prompt chunk (one session, consecutive positions) and a
 * multi-session decode step (one token per session) are the same code. Per
 * layer: RMSNorm, q/k/v projections, per-head RMSNorm of q and k, NeoX RoPE
 * (YaRN when the file asks), K/V written to each token's session cache,
 * causal grouped-query attention over that session's cells, output
 * projection and residual; then RMSNorm and either the routed experts
 * (softmax over all experts, top-k, renormalized weights, SwiGLU, weighted
 * sum) or a dense SwiGLU FFN, and the residual.
 *
 * The batch's tokens are grouped by expert so each expert's weights are
 * read once per batch. All scratch is sized when the engine opens, so eval
 * and decode allocate nothing.
 */
#include "engine/engine.h"

#include "engine/engine_internal.h"
#include "kernels/kernels.h"
#include "model/model.h"
#include "engine/pool.h"
#include "quant/quants.h"
#include "quant/quants_blocks.h"
#include "model/tokenizer.h"
#include "util/util.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Weight rows handed to a thread at a time: ROW_CHUNK (engine_mem.h, it
 * bounds the task list), big enough to amortize the activation reads,
 * small enough that 16 threads share one expert. */

/* With many columns the kernels transpose the activations once per call
 * and unpack each weight row once per call, so a call should cover more
 * rows: still 16+ chunks for a 2048-row matrix. */
static inline int row_chunk(int n_cols) { return n_cols >= 16 ? 128 : ROW_CHUNK; }

/* Rows a task takes in a matmul of n_out rows: for a few columns
 * (decoding) as long a run as still gives every thread four tasks, since
 * each task streams its rows from memory and the prefetchers like long
 * runs; for batches, row_chunk. */
static inline int mm_chunk(const moeq_engine *e, int64_t n_out, int n_cols)
{
    if (n_cols >= 16) return row_chunk(n_cols);
    int64_t c = n_out / (4 * (int64_t)e->n_threads) / ROW_CHUNK * ROW_CHUNK;
    return c < ROW_CHUNK ? ROW_CHUNK : c > 512 ? 512 : (int)c;
}

/* ------------------------------------------------------------ helpers */

/* IEEE half -> float by table: the KV cache and F16 weights are read
 * through it in the inner loops, where the bit-twiddling conversion costs
 * more than the multiply-add it feeds. */
static float f16_table[65536];
static pthread_once_t f16_once = PTHREAD_ONCE_INIT;
static void f16_table_init(void)
{
    for (uint32_t i = 0; i < 65536; i++) f16_table[i] = moeq_f16_to_f32((uint16_t)i);
}
static inline float h2f(uint16_t h) { return f16_table[h]; }

static void *xcalloc(size_t n, size_t size, int *oom)
{
    if (n == 0 || size == 0) n = size = 1;
    void *p = calloc(n, size);
    if (!p) *oom = 1;
    return p;
}

/* Scratch buffer b of the memory plan (NULL when the plan gives it no
 * bytes: the MoE buffers of a dense model), counted in scratch_bytes. */
static void *scratch(moeq_engine *e, enum moeq_mem_buf b, int *oom)
{
    size_t n = e->mem.buf[b];
    if (!n) return NULL;
    void *p = calloc(1, n);
    if (!p) *oom = 1;
    else e->scratch_bytes += n;
    return p;
}

static void rmsnorm(float *y, const float *x, const float *w, int n, float eps)
{
    /* four running sums in a fixed order: a quarter of the add latency */
    double s4[4] = { 0, 0, 0, 0 };
    int i = 0;
    for (; i + 4 <= n; i += 4)
        for (int k = 0; k < 4; k++) s4[k] += (double)x[i + k] * x[i + k];
    for (; i < n; i++) s4[0] += (double)x[i] * x[i];
    double ss = (s4[0] + s4[1]) + (s4[2] + s4[3]);
    float s = (float)(1.0 / sqrt(ss / n + eps));
    for (int i = 0; i < n; i++) y[i] = x[i] * s * w[i];
}

/* ------------------------------------------------------------ matmul */

/*
 * Activations in the weight type's partner format (kernels.h): f32 rows
 * are used in place; Q8_0 / Q8_K rows are quantized once into the buffer
 * of that format and shared by every weight that takes the same format.
 */
struct act {
    const void *data;
    size_t      stride;  /* bytes between rows */
};

struct actq_job { const float *X; uint8_t *dst; size_t stride; int K, wtype; };

static void actq_task(void *ctx, int64_t b, int64_t end, int tid)
{
    (void)tid;
    struct actq_job *j = ctx;
    for (int64_t r = b; r < end; r++)
        moeq_quantize_act(j->wtype, j->X + (size_t)r * j->K, j->dst + (size_t)r * j->stride, j->K);
}

static struct act act_prepare(moeq_engine *e, int wtype, const float *X, int n, int K)
{
    int at = moeq_act_type(wtype);
    if (at == MOEQ_TYPE_F32) {
        struct act a = { X, (size_t)K * sizeof(float) };
        return a;
    }
    struct actq_job j = { X, e->actq[at == MOEQ_TYPE_Q8_K], moeq_act_row_size(wtype, K), K, wtype };
    moeq_pool_for(e->pool, n, 16, actq_task, &j);
    struct act a = { j.dst, j.stride };
    return a;
}

/* Row r of a weight (expert x) as floats (embedding lookup), in tmp
 * unless already f32. */
static const float *weight_row_f32(const struct moeq_weight *w, int x, int64_t r, float *tmp)
{
    const uint8_t *src = w->data + (size_t)x * w->expert_stride + (size_t)r * w->row_size;
    switch (w->type) {
    case MOEQ_TYPE_F32:
        return (const float *)src;
    case MOEQ_TYPE_F16: {
        const uint16_t *h = (const uint16_t *)src;
        for (int64_t i = 0; i < w->n_in; i++) tmp[i] = h2f(h[i]);
        return tmp;
    }
    default:
        moeq_dequantize(w->type, src, tmp, w->n_in);
        return tmp;
    }
}

/* Y[c * ldy + r] = W_x[r] . A[c] for r in [r0, r1), c in [0, n). */
static void rows_kernel(moeq_engine *e, int tid, const struct moeq_weight *w, int x,
                        int64_t r0, int64_t r1, struct act a, int n, float *Y, size_t ldy)
{
    (void)e; (void)tid;
    const uint8_t *W = w->data + (size_t)x * w->expert_stride + (size_t)r0 * w->row_size;
    moeq_gemm(w->type, w->n_in, W, w->row_size, r1 - r0, a.data, a.stride, n, Y + r0, ldy);
}

struct mm_job {
    moeq_engine *e;
    const struct moeq_weight *w;
    struct act a;
    int n, chunk;
    float *Y;
    size_t ldy;
};

static void mm_task(void *ctx, int64_t b, int64_t end, int tid)
{
    struct mm_job *j = ctx;
    for (int64_t c = b; c < end; c++) {
        int64_t r0 = c * j->chunk, r1 = r0 + j->chunk;
        if (r1 > j->w->n_out) r1 = j->w->n_out;
        rows_kernel(j->e, tid, j->w, 0, r0, r1, j->a, j->n, j->Y, j->ldy);
    }
}

static void call_hook(moeq_engine *e, const struct moeq_weight *w, int expert,
                      const float *X, int n)
{
    if (e->hook && n > 0) e->hook(e->hook_ud, w->name, expert, X, n, (int)w->n_in);
}

/*
 * Work this small (multiply-adds) runs on the calling thread: waking the
 * pool costs about as much as a few microseconds of arithmetic, and a
 * decoded token on a small model is dozens of such steps. The result is
 * the same either way (the kernels do not depend on the split).
 */
#define INLINE_MACS 32768
static inline int small_work(int64_t macs) { return macs < INLINE_MACS; }

/* Y (n rows of w->n_out, ldy apart) = W . A (n prepared rows). */
static void matmul_act(moeq_engine *e, const struct moeq_weight *w, struct act a, int n,
                       float *Y, size_t ldy)
{
    struct mm_job j = { e, w, a, n, mm_chunk(e, w->n_out, n), Y, ldy };
    int64_t chunks = (w->n_out + j.chunk - 1) / j.chunk;
    if (small_work(w->n_out * w->n_in * n)) mm_task(&j, 0, chunks, 0);
    else moeq_pool_for(e->pool, chunks, 1, mm_task, &j);
}

/* Y (n rows of w->n_out, ldy apart) = W . X (n rows of w->n_in, contiguous). */
static void matmul(moeq_engine *e, const struct moeq_weight *w, const float *X, int n,
                   float *Y, size_t ldy)
{
    call_hook(e, w, -1, X, n);
    matmul_act(e, w, act_prepare(e, w->type, X, n, (int)w->n_in), n, Y, ldy);
}

/* Several weights over the same input (q, k, v): the input is quantized
 * once per activation format, not once per weight. */
struct multi_job {
    moeq_engine *e;
    int nw, n;
    const struct moeq_weight *w[3];
    struct act a[3];
    float *Y[3];
    size_t ldy[3];
    int64_t first[4];   /* first chunk index of each weight; first[nw] = total */
    int chunk[3];       /* rows per chunk of each weight */
};

static void multi_task(void *ctx, int64_t b, int64_t end, int tid)
{
    struct multi_job *j = ctx;
    for (int64_t c = b; c < end; c++) {
        int i = 0;
        while (c >= j->first[i + 1]) i++;
        const int chunk = j->chunk[i];
        int64_t r0 = (c - j->first[i]) * chunk, r1 = r0 + chunk;
        if (r1 > j->w[i]->n_out) r1 = j->w[i]->n_out;
        rows_kernel(j->e, tid, j->w[i], 0, r0, r1, j->a[i], j->n, j->Y[i], j->ldy[i]);
    }
}

/* Up to three weights over the same input (q, k, v; gate, up) in one
 * parallel pass: the input is quantized once per activation format, and
 * the threads are woken once rather than once per weight. */
static void matmul_shared(moeq_engine *e, const struct moeq_weight *const *ws, float *const *Ys,
                          const size_t *ldys, int nw, const float *X, int n)
{
    struct act prepared[3];
    int have[3] = { 0, 0, 0 }; /* by format: f32, q8_0, q8_K */
    struct multi_job j = { .e = e, .nw = nw, .n = n };
    j.first[0] = 0;
    for (int i = 0; i < nw; i++) {
        call_hook(e, ws[i], -1, X, n);
        int at = moeq_act_type(ws[i]->type);
        int slot = at == MOEQ_TYPE_F32 ? 0 : at == MOEQ_TYPE_Q8_0 ? 1 : 2;
        if (!have[slot]) {
            prepared[slot] = act_prepare(e, ws[i]->type, X, n, (int)ws[i]->n_in);
            have[slot] = 1;
        }
        j.w[i] = ws[i];
        j.a[i] = prepared[slot];
        j.Y[i] = Ys[i];
        j.ldy[i] = ldys[i];
        j.chunk[i] = mm_chunk(e, ws[i]->n_out, n);
        j.first[i + 1] = j.first[i] + (ws[i]->n_out + j.chunk[i] - 1) / j.chunk[i];
    }
    int64_t macs = 0;
    for (int i = 0; i < nw; i++) macs += ws[i]->n_out * ws[i]->n_in * n;
    if (small_work(macs)) multi_task(&j, 0, j.first[nw], 0);
    else moeq_pool_for(e->pool, j.first[nw], 1, multi_task, &j);
}

/* ------------------------------------------------------------ RoPE */

/* cos/sin pairs for one position over head_dim/2 frequencies, NeoX
 * layout, with ggml's YaRN ramp between interpolation and extrapolation. */
static void rope_table(const struct moeq_hparams *hp, int pos, float *cs)
{
    const int d = hp->head_dim;
    float corr[2] = { 0, 0 };
    if (hp->yarn_ext_factor != 0) {
        /* dimensions where the wavelength crosses beta_fast / beta_slow
         * rotations over the original context */
        double lo = d * log(hp->n_ctx_orig / (hp->yarn_beta_fast * 2 * M_PI)) / (2 * log(hp->rope_base));
        double hi = d * log(hp->n_ctx_orig / (hp->yarn_beta_slow * 2 * M_PI)) / (2 * log(hp->rope_base));
        corr[0] = fmaxf(0.0f, floorf((float)lo));
        corr[1] = fminf((float)(d - 1), ceilf((float)hi));
    }
    for (int i = 0; i < d / 2; i++) {
        double theta_ex = pos * pow(hp->rope_base, -2.0 * i / d);
        double theta = hp->rope_freq_scale * theta_ex;
        float mscale = hp->yarn_attn_factor;
        if (hp->yarn_ext_factor != 0) {
            float y = (i - corr[0]) / fmaxf(0.001f, corr[1] - corr[0]);
            float ramp = (1 - fminf(1, fmaxf(0, y))) * hp->yarn_ext_factor;
            theta = theta * (1 - ramp) + theta_ex * ramp;
            mscale *= 1.0f + 0.1f * logf(1.0f / hp->rope_freq_scale);
        }
        cs[2 * i] = (float)cos(theta) * mscale;
        cs[2 * i + 1] = (float)sin(theta) * mscale;
    }
}

static void rope_apply(float *x, const float *cs, int d)
{
    const int h = d / 2;
    for (int i = 0; i < h; i++) {
        float c = cs[2 * i], s = cs[2 * i + 1];
        float x0 = x[i], x1 = x[i + h];
        x[i] = x0 * c - x1 * s;
        x[i + h] = x0 * s + x1 * c;
    }
}

/* ------------------------------------------------------------ attention */

/*
 * Work is taken as items of (tile, KV head, chunk of that head's query
 * heads): a tile is a run of batch tokens of one session at consecutive
 * positions (a prompt chunk gives many, a multi-session decode step one per
 * token). An item converts each cached K and V row of its KV head to f32
 * once, a block of ATT_POS positions at a time into per-thread scratch, and
 * uses it for all rows (token x query head) of the item.
 *
 * Bit-exactness: the output of a (token, head) must not depend on which
 * other tokens share its batch. Each kernel (kernels_attn.c) therefore
 * computes every row's value with exactly the float operations a
 * single-row call would:
 * a dot product with a fixed lane layout and reduction tree, the softmax
 * over positions in order, V accumulated in position order. Tiling only
 * shares the loads and conversions (which are exact), never the rounding.
 * The sequences are those of the per-(token, head) loops this replaced,
 * except that the SIMD kernels take exponentials eight at a time
 * (attn_exp8, kernels_attn_simd.h).
 */
/* The item and tile sizes (ATT_ROWS, ATT_POS, the heads per item and
 * tokens per tile at a context) are the memory plan's: engine_mem.h. */

struct attn_job {
    moeq_engine *e;
    int layer, ntiles;
    int nh, nchunk;       /* query heads per item, items per (tile, KV head) */
};

/* The kernels for the cache types and the given ISA (at most the CPU's). */
static void attn_pick(moeq_engine *e, int isa)
{
    moeq_attn_pick(isa, e->type_k, e->type_v, e->m->hp.head_dim, &e->attn);
}

void moeq_engine_attn_isa(moeq_engine *e, int isa) { attn_pick(e, isa); }

/*
 * Softmax of nr rows (ld floats apart) over their first n entries, each
 * row as a lone row always was: m = the largest entry, x = expf(x - m) in
 * position order, their sum in position order, x *= 1 / sum (expf is
 * libm's in the scalar kernels, attn_exp8 in the SIMD ones). The maximum
 * is found with four running maxima (the largest value is the same in any
 * order; only the sign of a zero maximum could differ, and x - (+0) and
 * x - (-0) have the same exponential), and the sums of four rows run side
 * by side so that their additions overlap.
 */
static void softmax_rows(const moeq_engine *e, float *w, size_t ld, int nr, int n)
{
    for (int r = 0; r < nr; r++) {
        float *x = w + (size_t)r * ld;
        float m0 = -INFINITY, m1 = m0, m2 = m0, m3 = m0;
        int p = 0;
        for (; p + 4 <= n; p += 4) {
            m0 = x[p] > m0 ? x[p] : m0;
            m1 = x[p + 1] > m1 ? x[p + 1] : m1;
            m2 = x[p + 2] > m2 ? x[p + 2] : m2;
            m3 = x[p + 3] > m3 ? x[p + 3] : m3;
        }
        for (; p < n; p++) m0 = x[p] > m0 ? x[p] : m0;
        m0 = m1 > m0 ? m1 : m0;
        m2 = m3 > m2 ? m3 : m2;
        const float mx = m2 > m0 ? m2 : m0;
        e->attn.exp_shift(x, n, mx);
    }
    int r = 0;
    for (; r + 4 <= nr; r += 4) {
        float *x0 = w + (size_t)r * ld, *x1 = x0 + ld, *x2 = x1 + ld, *x3 = x2 + ld;
        float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        for (int p = 0; p < n; p++) {
            s0 += x0[p];
            s1 += x1[p];
            s2 += x2[p];
            s3 += x3[p];
        }
        const float i0 = 1.0f / s0, i1 = 1.0f / s1, i2 = 1.0f / s2, i3 = 1.0f / s3;
        for (int p = 0; p < n; p++) {
            x0[p] *= i0;
            x1[p] *= i1;
            x2[p] *= i2;
            x3[p] *= i3;
        }
    }
    for (; r < nr; r++) {
        float *x = w + (size_t)r * ld, sum = 0;
        for (int p = 0; p < n; p++) sum += x[p];
        const float inv = 1.0f / sum;
        for (int p = 0; p < n; p++) x[p] *= inv;
    }
}

/*
 * One item: tile tl, KV head g, query heads h0 .. h0+nh. Rows are token
 * major (r = k * nh + head). buf is this thread's scratch: attn_rows x
 * attn_ld scores, then ATT_POS converted rows and their block scales,
 * then (Q8_0 K) the item's query rows quantized.
 */
static void attn_item(moeq_engine *e, int layer, const struct moeq_attn_tile *tl, int g, int h0,
                      int nh, float *buf)
{
    const struct moeq_hparams *hp = &e->m->hp;
    const int HD = hp->head_dim, nq = hp->n_head * HD;
    const float scale = 1.0f / sqrtf((float)HD);
    const int nt = tl->nt, R = nt * nh, p0 = e->bpos[tl->t0], P = p0 + nt;
    const size_t ld = e->mem.attn_ld;
    float *sc = buf, *kv = buf + (size_t)e->attn_rows * ld, *kvs = kv + (size_t)ATT_POS * HD;
    const float *qr[ATT_ROWS];
    float *orow[ATT_ROWS];
    for (int k = 0; k < nt; k++)
        for (int hh = 0; hh < nh; hh++) {
            size_t off = (size_t)(tl->t0 + k) * nq + (size_t)(h0 + hh) * HD;
            qr[k * nh + hh] = e->q + off;
            orow[k * nh + hh] = e->att + off;
        }
    moeq_session *s = e->bsess[tl->t0];
    const uint8_t *kbase = s->k + (size_t)layer * e->kv_layer_bytes_k + e->mem.k_head * g;
    const uint8_t *vbase = s->v + (size_t)layer * e->kv_layer_bytes_v + e->mem.v_head * g;

    /* scores of every row against positions 0 .. P-1; a row's entries past
     * its own position are computed but never read. Q8_0 K: the rows
     * quantized as K is, then integer dot products straight from the
     * cache, all positions in one call */
    if (e->attn.scores_q8) {
        uint8_t *qq = (uint8_t *)(kvs + ATT_POS * (HD / QK8_0 + 1));
        const void *qrow[ATT_ROWS];
        for (int r = 0; r < R; r++) {
            uint8_t *row = qq + (size_t)r * e->mem.k_head;
            moeq_quantize_act(MOEQ_TYPE_Q8_0, qr[r], row, HD);
            qrow[r] = row;
        }
        e->attn.scores_q8(qrow, R, kbase, e->mem.k_row, P, HD, scale, sc, ld);
    } else {
        for (int pb = 0; pb < P; pb += ATT_POS) {
            int np = P - pb < ATT_POS ? P - pb : ATT_POS;
            e->attn.cvt_k(kbase + (size_t)pb * e->mem.k_row, e->mem.k_row, np, HD, kv, kvs);
            e->attn.scores(qr, R, kv, kvs, np, HD, scale, sc + pb, ld);
        }
    }
    /* softmax of each row over the positions its token sees */
    for (int k = 0; k < nt; k++) softmax_rows(e, sc + (size_t)k * nh * ld, ld, nh, p0 + k + 1);
    for (int r = 0; r < R; r++) memset(orow[r], 0, (size_t)HD * sizeof(float));
    /* out += w . V, block by block; tokens k >= kfull see the whole block,
     * the earlier ones (the causal edge of the tile) only its start */
    for (int pb = 0; pb < P; pb += ATT_POS) {
        int np = P - pb < ATT_POS ? P - pb : ATT_POS;
        e->attn.cvt_v(vbase + (size_t)pb * e->mem.v_row, e->mem.v_row, np, HD, kv, kvs);
        int kfull = pb + np - 1 - p0;
        if (kfull < 0) kfull = 0;
        if (kfull < nt)
            e->attn.accum(orow + kfull * nh, R - kfull * nh, sc + (size_t)kfull * nh * ld + pb, ld,
                          kv, kvs, np, HD);
        for (int k = 0; k < kfull && k < nt; k++) {
            int m = p0 + k + 1 - pb;
            if (m > 0)
                e->attn.accum(orow + k * nh, nh, sc + (size_t)k * nh * ld + pb, ld, kv, kvs, m, HD);
        }
    }
}

/* Items are handed out latest tile first: those attend to the most
 * positions, and finishing with the cheap ones balances the threads. */
static void attn_task(void *ctx, int64_t b, int64_t end, int tid)
{
    struct attn_job *j = ctx;
    moeq_engine *e = j->e;
    const int nkv = e->m->hp.n_head_kv, group = e->m->hp.n_head / nkv;
    const int64_t per_tile = (int64_t)nkv * j->nchunk;
    float *buf = e->attn_buf + (size_t)tid * e->mem.attn_buf_len;
    for (int64_t it = b; it < end; it++) {
        int64_t x = (int64_t)j->ntiles * per_tile - 1 - it;
        int tile = (int)(x / per_tile), rest = (int)(x % per_tile);
        int g = rest / j->nchunk, h0 = (rest % j->nchunk) * j->nh;
        int nh = group - h0 < j->nh ? group - h0 : j->nh;
        attn_item(e, j->layer, &e->attn_tiles[tile], g, g * group + h0, nh, buf);
    }
}

/* Split the batch into tiles and size the items: whole GQA groups when
 * there are enough items for the threads, smaller head chunks when not
 * (a single decoded token still spreads over the pool). */
static void attn_plan(moeq_engine *e, int n, struct attn_job *j)
{
    const int nkv = e->m->hp.n_head_kv, group = e->m->hp.n_head / nkv;
    int nt = 0;
    for (int t = 0; t < n; t++) {
        struct moeq_attn_tile *last = nt ? &e->attn_tiles[nt - 1] : NULL;
        if (last && last->nt < e->mem.attn_tile && e->bsess[t] == e->bsess[last->t0] &&
            e->bpos[t] == e->bpos[last->t0] + last->nt) {
            last->nt++;
        } else {
            e->attn_tiles[nt].t0 = t;
            e->attn_tiles[nt].nt = 1;
            nt++;
        }
    }
    j->ntiles = nt;
    int want = 2 * e->n_threads, have = nt * nkv;
    int split = have >= want ? 1 : (want + have - 1) / have;
    int nh = (group + split - 1) / split;
    if (nh > e->mem.attn_nh) nh = e->mem.attn_nh;
    j->nh = nh;
    j->nchunk = (group + nh - 1) / nh;
}

static void kv_store(int type, uint8_t *dst, const float *x, int n)
{
    if (type == MOEQ_TYPE_F16) {
        uint16_t *h = (uint16_t *)dst;
        for (int i = 0; i < n; i++) h[i] = moeq_f32_to_f16(x[i]);
    } else {
        moeq_quantize_act(MOEQ_TYPE_Q8_0, x, dst, n);   /* the activations' Q8_0 */
    }
}

/* ------------------------------------------------------------ per token */

/* Per-token steps of a batch (norms, routing, gathers, q/k): fn computes
 * token t from the job (its layer l, layer index il, norm weight w, as the
 * step needs). per_token runs them on the pool when the batch is long
 * enough to repay the hand-off; each token's result is computed by the
 * same code either way. */
struct tok_job {
    moeq_engine *e;
    const struct moeq_layer *l;
    int il;
    const float *w;
    void (*fn)(const struct tok_job *j, int64_t t);
};

static void tok_task(void *ctx, int64_t b, int64_t end, int tid)
{
    (void)tid;
    const struct tok_job *j = ctx;
    for (int64_t t = b; t < end; t++) j->fn(j, t);
}

static void per_token(struct tok_job *j, int n)
{
    if (n < 32) tok_task(j, 0, n, 0);
    else moeq_pool_for(j->e->pool, n, 8, tok_task, j);
}

/* softmax over all experts, top-k (ties to the lower id), renormalized */
static void route_tok(const struct tok_job *j, int64_t t)
{
    moeq_engine *e = j->e;
    const int NX = e->m->hp.n_expert, K = e->m->hp.n_expert_used;
    float *p = e->rlog + (size_t)t * NX;
    float mx = p[0];
    for (int x = 1; x < NX; x++) mx = fmaxf(mx, p[x]);
    float sum = 0;
    for (int x = 0; x < NX; x++) { p[x] = expf(p[x] - mx); sum += p[x]; }
    for (int x = 0; x < NX; x++) p[x] /= sum;
    int *sel = e->sel + (size_t)t * K;
    float *w = e->selw + (size_t)t * K, wsum = 0;
    for (int k = 0; k < K; k++) {
        /* repeated arg-max: k is small */
        int best = -1;
        for (int x = 0; x < NX; x++) {
            int taken = 0;
            for (int kk = 0; kk < k; kk++) taken |= sel[kk] == x;
            if (!taken && (best < 0 || p[x] > p[best])) best = x;
        }
        sel[k] = best;
        w[k] = p[best];
        wsum += p[best];
    }
    for (int k = 0; k < K; k++) w[k] /= wsum;
}

/* each token's normed row to its K expert slots */
static void gather_tok(const struct tok_job *j, int64_t t)
{
    moeq_engine *e = j->e;
    const int E = e->m->hp.n_embd, K = e->m->hp.n_expert_used;
    for (int k = 0; k < K; k++)
        memcpy(e->xg + (size_t)e->slot_of[(size_t)t * K + k] * E, e->xn + (size_t)t * E,
               (size_t)E * sizeof(float));
}

/* weighted sum of the expert outputs in selection order, so the result
 * does not depend on which other tokens share the batch */
static void combine_tok(const struct tok_job *j, int64_t t)
{
    moeq_engine *e = j->e;
    const int E = e->m->hp.n_embd, K = e->m->hp.n_expert_used;
    float *restrict xr = e->x + (size_t)t * E;
    for (int k = 0; k < K; k++) {
        float w = e->selw[(size_t)t * K + k];
        const float *restrict d = e->dout + (size_t)e->slot_of[(size_t)t * K + k] * E;
        for (int i = 0; i < E; i++) xr[i] += w * d[i];
    }
}

/* rmsnorm of every token's residual row into xn with weight w */
static void norm_tok(const struct tok_job *j, int64_t t)
{
    const int E = j->e->m->hp.n_embd;
    rmsnorm(j->e->xn + (size_t)t * E, j->e->x + (size_t)t * E, j->w, E, j->e->m->hp.rms_eps);
}

static void norm_rows(moeq_engine *e, const float *w, int n)
{
    struct tok_job j = { .e = e, .w = w, .fn = norm_tok };
    per_token(&j, n);
}

/* ------------------------------------------------------------ MoE */

struct moe_job {
    moeq_engine *e;
    const struct moeq_layer *l;
    struct act a;       /* gathered inputs for gate (phase 0), hidden rows (phase 1) */
    struct act a_up;    /* gathered inputs for up (phase 0) */
    int phase;          /* 0: gate+up -> hidden, 1: down */
};

static void moe_task_fn(void *ctx, int64_t b, int64_t end, int tid)
{
    struct moe_job *j = ctx;
    moeq_engine *e = j->e;
    const int F = e->m->hp.n_ff_exp, E = e->m->hp.n_embd;
    for (int64_t i = b; i < end; i++) {
        const struct moe_task *t = &e->tasks[i];
        int x = t->expert, off = e->ex_off[x], cnt = e->ex_count[x];
        struct act a = { (const uint8_t *)j->a.data + (size_t)off * j->a.stride, j->a.stride };
        if (j->phase == 0) {
            struct act au = { (const uint8_t *)j->a_up.data + (size_t)off * j->a_up.stride,
                              j->a_up.stride };
            float *G = e->hg + (size_t)off * F, *U = e->hu + (size_t)off * F;
            rows_kernel(e, tid, &j->l->gate_exps, x, t->r0, t->r1, a, cnt, G, (size_t)F);
            rows_kernel(e, tid, &j->l->up_exps, x, t->r0, t->r1, au, cnt, U, (size_t)F);
            for (int c = 0; c < cnt; c++)
                moeq_silu_mul(G + (size_t)c * F + t->r0, U + (size_t)c * F + t->r0,
                              (size_t)(t->r1 - t->r0));
        } else {
            float *D = e->dout + (size_t)off * E;
            rows_kernel(e, tid, &j->l->down_exps, x, t->r0, t->r1, a, cnt, D, (size_t)E);
        }
    }
}

/*
 * One active expert start to end: gate and up over all its rows, SwiGLU,
 * the hidden rows quantized for down (into actq_h, at the expert's own
 * slots, so experts running at once never share a buffer), then down.
 * Used when there are enough active experts to keep every thread busy
 * (decoding), where it needs one pool hand-off instead of two; the
 * arithmetic is the same as the row-split path's.
 */
static void moe_whole_fn(void *ctx, int64_t b, int64_t end, int tid)
{
    struct moe_job *j = ctx;
    moeq_engine *e = j->e;
    const int F = e->m->hp.n_ff_exp, E = e->m->hp.n_embd;
    const int dtype = j->l->down_exps.type;
    const int dact = moeq_act_type(dtype);
    const size_t hstride = dact == MOEQ_TYPE_F32 ? (size_t)F * sizeof(float)
                                                 : moeq_act_row_size(dtype, F);
    for (int64_t i = b; i < end; i++) {
        int x = e->tasks[i].expert, off = e->ex_off[x], cnt = e->ex_count[x];
        struct act a = { (const uint8_t *)j->a.data + (size_t)off * j->a.stride, j->a.stride };
        struct act au = { (const uint8_t *)j->a_up.data + (size_t)off * j->a_up.stride, j->a_up.stride };
        float *G = e->hg + (size_t)off * F, *U = e->hu + (size_t)off * F;
        rows_kernel(e, tid, &j->l->gate_exps, x, 0, F, a, cnt, G, (size_t)F);
        rows_kernel(e, tid, &j->l->up_exps, x, 0, F, au, cnt, U, (size_t)F);
        moeq_silu_mul(G, U, (size_t)cnt * F);
        struct act h = { G, hstride };
        if (dact != MOEQ_TYPE_F32) {
            uint8_t *hq = e->actq_h + (size_t)off * hstride;
            for (int c = 0; c < cnt; c++)
                moeq_quantize_act(dtype, G + (size_t)c * F, hq + (size_t)c * hstride, F);
            h.data = hq;
        }
        rows_kernel(e, tid, &j->l->down_exps, x, 0, E, h, cnt, e->dout + (size_t)off * E, (size_t)E);
    }
}

/* Tasks over (active expert, chunk of rows of n_rows), the experts with
 * the most tokens first: the pool hands tasks out in order, so the big
 * ones start early and the last to finish are small (less waiting at the
 * end of the pass). Each task's result does not depend on the order. */
static int moe_make_tasks(moeq_engine *e, int n_rows)
{
    int na = 0;
    for (int x = 0; x < e->m->hp.n_expert; x++) {
        if (!e->ex_count[x]) continue;
        int i = na++;
        for (; i > 0 && e->ex_count[e->ex_order[i - 1]] < e->ex_count[x]; i--) e->ex_order[i] = e->ex_order[i - 1];
        e->ex_order[i] = x;
    }
    /* with many experts active there are tasks enough for every thread
     * in longer runs of rows: each tiled call transposes its expert's
     * columns, so fewer calls transpose less */
    const int wide = na >= 8 * e->n_threads;
    int nt = 0;
    for (int k = 0; k < na; k++) {
        const int x = e->ex_order[k];
        const int chunk = wide && e->ex_count[x] >= 16 ? 256 : row_chunk(e->ex_count[x]);
        for (int r = 0; r < n_rows; r += chunk) {
            e->tasks[nt].expert = x;
            e->tasks[nt].r0 = r;
            e->tasks[nt].r1 = r + chunk < n_rows ? r + chunk : n_rows;
            nt++;
        }
    }
    return nt;
}

/* x += MoE(xn) for n tokens. */
static void moe_ffn(moeq_engine *e, const struct moeq_layer *l, int n)
{
    const struct moeq_hparams *hp = &e->m->hp;
    const int E = hp->n_embd, F = hp->n_ff_exp, NX = hp->n_expert, K = hp->n_expert_used;

    /* router: softmax over all experts, top-k, renormalize the k weights */
    matmul(e, &l->router, e->xn, n, e->rlog, (size_t)NX);
    struct tok_job rj = { .e = e, .l = l, .fn = route_tok };
    per_token(&rj, n);
    memset(e->ex_count, 0, (size_t)NX * sizeof *e->ex_count);
    for (int i = 0; i < n * K; i++) e->ex_count[e->sel[i]]++;

    /* group the (token, slot) pairs by expert: each expert's rows are
     * contiguous, so its weights are read once for all its tokens */
    int acc = 0;
    for (int x = 0; x < NX; x++) { e->ex_off[x] = acc; acc += e->ex_count[x]; e->ex_fill[x] = 0; }
    for (int t = 0; t < n; t++)
        for (int k = 0; k < K; k++) {
            int x = e->sel[(size_t)t * K + k];
            e->slot_of[(size_t)t * K + k] = e->ex_off[x] + e->ex_fill[x]++;
        }
    rj.fn = gather_tok;
    per_token(&rj, n);
    int n_slots = n * K;

    if (e->hook)
        for (int x = 0; x < NX; x++) {
            if (!e->ex_count[x]) continue;
            const float *X = e->xg + (size_t)e->ex_off[x] * E;
            call_hook(e, &l->gate_exps, x, X, e->ex_count[x]);
            call_hook(e, &l->up_exps, x, X, e->ex_count[x]);
        }
    struct moe_job j = { e, l, act_prepare(e, l->gate_exps.type, e->xg, n_slots, E), { 0, 0 }, 0 };
    j.a_up = moeq_act_type(l->up_exps.type) == moeq_act_type(l->gate_exps.type)
           ? j.a : act_prepare(e, l->up_exps.type, e->xg, n_slots, E);
    /* the active experts in id order: the tasks of the one-pass path */
    int n_active = 0;
    for (int x = 0; x < NX; x++)
        if (e->ex_count[x]) e->tasks[n_active++].expert = x;
    if (!e->hook && (e->n_threads == 1 || n_active >= 2 * e->n_threads) && n_slots <= 2 * n_active) {
        moeq_pool_for(e->pool, n_active, 1, moe_whole_fn, &j);
    } else {
        int nt = moe_make_tasks(e, F);
        moeq_pool_for(e->pool, nt, 1, moe_task_fn, &j);

        if (e->hook)
            for (int x = 0; x < NX; x++)
                if (e->ex_count[x])
                    call_hook(e, &l->down_exps, x, e->hg + (size_t)e->ex_off[x] * F, e->ex_count[x]);
        j.a = act_prepare(e, l->down_exps.type, e->hg, n_slots, F);
        j.phase = 1;
        nt = moe_make_tasks(e, E);
        moeq_pool_for(e->pool, nt, 1, moe_task_fn, &j);
    }
    rj.fn = combine_tok;
    per_token(&rj, n);
}

static void dense_ffn(moeq_engine *e, const struct moeq_layer *l, int n)
{
    const int E = e->m->hp.n_embd, F = e->m->hp.n_ff;
    const struct moeq_weight *gu[2] = { &l->gate, &l->up };
    float *gu_out[2] = { e->hg, e->hu };
    const size_t gu_ld[2] = { (size_t)F, (size_t)F };
    matmul_shared(e, gu, gu_out, gu_ld, 2, e->xn, n);
    moeq_silu_mul(e->hg, e->hu, (size_t)n * F);
    matmul(e, &l->down, e->hg, n, e->tmp, (size_t)E);
    for (size_t i = 0; i < (size_t)n * E; i++) e->x[i] += e->tmp[i];
}

/* Per-head RMSNorm and RoPE of q and k, and the token's K/V into its
 * session's cache (each token writes its own cells). */
static void qk_tok(const struct tok_job *j, int64_t t)
{
    moeq_engine *e = j->e;
    const struct moeq_hparams *hp = &e->m->hp;
    const int HD = hp->head_dim, nq = hp->n_head * HD, nkv = hp->n_head_kv * HD;
    const float *cs = e->rope + (size_t)t * HD;
    for (int h = 0; h < hp->n_head; h++) {
        float *q = e->q + (size_t)t * nq + (size_t)h * HD;
        rmsnorm(q, q, j->l->q_norm, HD, hp->rms_eps);
        rope_apply(q, cs, HD);
    }
    for (int h = 0; h < hp->n_head_kv; h++) {
        float *k = e->k + (size_t)t * nkv + (size_t)h * HD;
        rmsnorm(k, k, j->l->k_norm, HD, hp->rms_eps);
        rope_apply(k, cs, HD);
    }
    moeq_session *s = e->bsess[t];
    size_t p = (size_t)e->bpos[t];
    kv_store(e->type_k, s->k + (size_t)j->il * e->kv_layer_bytes_k + p * e->mem.k_row,
             e->k + (size_t)t * nkv, nkv);
    kv_store(e->type_v, s->v + (size_t)j->il * e->kv_layer_bytes_v + p * e->mem.v_row,
             e->v + (size_t)t * nkv, nkv);
}

/* ------------------------------------------------------------ forward */

/*
 * Run the model over the batch in e->btok / bsess / bpos (n tokens, n <=
 * e->cap). Leaves the final hidden states (before output_norm) in e->x.
 */
static void forward(moeq_engine *e, int n)
{
    const moeq_model *m = e->m;
    const struct moeq_hparams *hp = &m->hp;
    const int E = hp->n_embd, HD = hp->head_dim;
    const int nq = hp->n_head * HD, nkv = hp->n_head_kv * HD;

    /* embeddings */
    for (int t = 0; t < n; t++) {
        const float *row = weight_row_f32(&m->tok_embd, 0, e->btok[t], e->rowbuf);
        memcpy(e->x + (size_t)t * E, row, (size_t)E * sizeof(float));
        rope_table(hp, e->bpos[t], e->rope + (size_t)t * HD);
    }

    const int n_layer = e->layer_limit > 0 && e->layer_limit < hp->n_layer ? e->layer_limit : hp->n_layer;
    for (int il = 0; il < n_layer; il++) {
        const struct moeq_layer *l = &m->layers[il];
        norm_rows(e, l->attn_norm, n);
        const struct moeq_weight *qkv[3] = { &l->wq, &l->wk, &l->wv };
        float *qkv_out[3] = { e->q, e->k, e->v };
        const size_t qkv_ld[3] = { (size_t)nq, (size_t)nkv, (size_t)nkv };
        matmul_shared(e, qkv, qkv_out, qkv_ld, 3, e->xn, n);
        struct tok_job qj = { .e = e, .l = l, .il = il, .fn = qk_tok };
        per_token(&qj, n);
        struct attn_job aj = { .e = e, .layer = il };
        attn_plan(e, n, &aj);
        int64_t span = 0;   /* positions attended, over the batch */
        for (int t = 0; t < n; t++) span += e->bpos[t] + 1;
        int64_t items = (int64_t)aj.ntiles * hp->n_head_kv * aj.nchunk;
        if (small_work(span * hp->n_head * HD * 2)) attn_task(&aj, 0, items, 0);
        else moeq_pool_for(e->pool, items, 1, attn_task, &aj);
        matmul(e, &l->wo, e->att, n, e->tmp, (size_t)E);
        for (size_t i = 0; i < (size_t)n * E; i++) e->x[i] += e->tmp[i];

        norm_rows(e, l->ffn_norm, n);
        if (hp->moe) moe_ffn(e, l, n);
        else dense_ffn(e, l, n);
    }
}

/* Logits of the batch rows rows[0..n_out) into dst (n_out x n_vocab). */
static void output_logits(moeq_engine *e, const int *rows, int n_out, float *dst)
{
    const int E = e->m->hp.n_embd;
    for (int i = 0; i < n_out; i++)
        rmsnorm(e->xn + (size_t)i * E, e->x + (size_t)rows[i] * E, e->m->output_norm, E,
                e->m->hp.rms_eps);
    matmul(e, &e->m->output, e->xn, n_out, dst, (size_t)e->m->hp.n_vocab);
}

/* ------------------------------------------------------------ engine */

static int weight_supported(const struct moeq_weight *w)
{
    if (!w->data) return 1;
    if (!moeq_vec_dot(w->type) || moeq_act_row_size(w->type, w->n_in) == 0) return 0;
    /* the embedding rows are looked up, not multiplied */
    if (w->type == MOEQ_TYPE_F32 || w->type == MOEQ_TYPE_F16) return 1;
    const struct moeq_type_traits *t = moeq_type_traits(w->type);
    return t && t->to_float;
}

static const struct moeq_weight *unsupported_weight(const moeq_model *m)
{
    if (!weight_supported(&m->tok_embd)) return &m->tok_embd;
    if (!weight_supported(&m->output)) return &m->output;
    for (int il = 0; il < m->hp.n_layer; il++) {
        const struct moeq_layer *l = &m->layers[il];
        const struct moeq_weight *ws[] = { &l->wq, &l->wk, &l->wv, &l->wo, &l->router,
            &l->gate_exps, &l->up_exps, &l->down_exps, &l->gate, &l->up, &l->down };
        for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++)
            if (!weight_supported(ws[i])) return ws[i];
    }
    return NULL;
}

static void fill_info(moeq_engine *e)
{
    const moeq_model *m = e->m;
    const struct moeq_hparams *hp = &m->hp;
    struct moeq_model_info *in = &e->info;
    snprintf(in->arch, sizeof in->arch, "%s", hp->arch);
    if (gguf_get_str(m->file, "general.name", in->name, sizeof in->name) != 0) in->name[0] = 0;
    in->n_vocab = hp->n_vocab;
    in->n_ctx_train = hp->n_ctx_train;
    in->n_embd = hp->n_embd;
    in->n_layer = hp->n_layer;
    in->n_head = hp->n_head;
    in->n_head_kv = hp->n_head_kv;
    in->head_dim = hp->head_dim;
    in->n_expert = hp->n_expert;
    in->n_expert_used = hp->n_expert_used;
    in->n_ff_exp = hp->moe ? hp->n_ff_exp : hp->n_ff;
    in->rope_base = hp->rope_base;
    in->rms_eps = hp->rms_eps;
    in->n_params = m->n_params;
    in->weight_bytes = m->weight_bytes;
    const char *keys[4] = { "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                            "tokenizer.ggml.eot_token_id", "tokenizer.ggml.padding_token_id" };
    int32_t *dst[4] = { &in->bos, &in->eos, &in->eot, &in->pad };
    for (int i = 0; i < 4; i++) {
        uint64_t v;
        *dst[i] = gguf_get_u64(m->file, keys[i], &v) == 0 && v < (uint64_t)hp->n_vocab ? (int32_t)v : -1;
    }
    int b = 0;
    in->add_bos = gguf_get_bool(m->file, "tokenizer.ggml.add_bos_token", &b) == 0 ? b : 0;
    if (e->tok) {
        struct moeq_token_specials sp;
        moeq_tokenizer_specials(e->tok, &sp);
        in->bos = sp.bos;
        in->eos = sp.eos;
        in->eot = sp.eot;
        in->pad = sp.pad;
        in->add_bos = sp.add_bos;
    }
    in->has_vocab = e->tok != NULL;
}

moeq_engine *moeq_engine_open(const struct moeq_engine_params *p, char *err, size_t errlen)
{
    pthread_once(&f16_once, f16_table_init);
    moeq_engine *e = calloc(1, sizeof *e);
    if (!e) { moeq_set_err(err, errlen, "out of memory"); return NULL; }
    e->m = moeq_model_load(p->model_path, err, errlen);
    if (!e->m) { free(e); return NULL; }
    const struct moeq_hparams *hp = &e->m->hp;
    const struct moeq_weight *bad = unsupported_weight(e->m);
    if (bad) {
        moeq_set_err(err, errlen, "%s: tensor %s: type %s is not supported by the engine",
                     p->model_path, bad->name, moeq_type_name(bad->type));
        goto fail;
    }
    /* A file without tokenizer metadata still runs (benchmarks, synthetic
     * models); one with broken metadata is refused. */
    if (gguf_find_kv(e->m->file, "tokenizer.ggml.model")) {
        e->tok = moeq_tokenizer_load(e->m->file, err, errlen);
        if (!e->tok) goto fail;
        if (moeq_tokenizer_n_vocab(e->tok) > hp->n_vocab) {
            moeq_set_err(err, errlen, "%s: the vocabulary has %d tokens but token_embd.weight only %d rows",
                         p->model_path, moeq_tokenizer_n_vocab(e->tok), hp->n_vocab);
            goto fail;
        }
    }
    e->n_ctx = p->n_ctx > 0 ? p->n_ctx : hp->n_ctx_train;
    e->n_seq = p->n_seq > 0 ? p->n_seq : 1;
    e->n_batch = p->n_batch > 0 ? p->n_batch : 512;
    for (int i = 0; i < 2; i++) {
        int t = i ? (int)p->type_v : (int)p->type_k;
        if (moeq_kv_quant_type(t) < 0) {
            moeq_set_err(err, errlen, "KV cache type %d is not supported (f16 or q8_0)", t);
            goto fail;
        }
        if (t == MOEQ_KV_Q8_0 && hp->head_dim % QK8_0) {
            moeq_set_err(err, errlen, "%s: head size %d is not a multiple of 32, needed for a q8_0 KV cache",
                         p->model_path, hp->head_dim);
            goto fail;
        }
    }
    if (e->n_ctx > (1 << 24)) {
        moeq_set_err(err, errlen, "context of %d tokens is too large", e->n_ctx);
        goto fail;
    }
    e->pool = moeq_pool_new(p->n_threads);
    e->n_threads = moeq_pool_size(e->pool);

    /* every size comes from the memory plan, which `moeq fit` shares */
    struct moeq_mem_shape ms;
    moeq_mem_shape_of(hp, &ms);
    ms.weight_bytes = e->m->weight_bytes;
    const struct moeq_mem_opts mo = { e->n_ctx, e->n_seq, e->n_batch, e->n_threads, p->type_k, p->type_v };
    struct moeq_mem_plan plan;
    if (moeq_mem_estimate(&ms, &mo, &plan) != 0) {
        moeq_set_err(err, errlen, "%s: no memory plan for this shape", p->model_path);
        goto fail;
    }
    const struct moeq_mem_layout *L = &e->mem;
    e->mem = plan.layout;
    e->cap = L->cap;
    e->type_k = L->kq_type;
    e->type_v = L->vq_type;
    e->kv_layer_bytes_k = L->k_row * (size_t)e->n_ctx;
    e->kv_layer_bytes_v = L->v_row * (size_t)e->n_ctx;
    e->attn_rows = e->mem.attn_nh * e->mem.attn_tile;

    int oom = 0;
#define SCRATCH(b) scratch(e, b, &oom)
    e->btok = SCRATCH(MEM_BTOK);
    e->bpos = SCRATCH(MEM_BPOS);
    e->bsess = SCRATCH(MEM_BSESS);
    e->out_rows = SCRATCH(MEM_OUT_ROWS);
    e->x = SCRATCH(MEM_X);
    e->xn = SCRATCH(MEM_XN);
    e->tmp = SCRATCH(MEM_TMP);
    e->q = SCRATCH(MEM_Q);
    e->k = SCRATCH(MEM_K);
    e->v = SCRATCH(MEM_V);
    e->att = SCRATCH(MEM_ATT);
    e->rope = SCRATCH(MEM_ROPE);
    e->hg = SCRATCH(MEM_HG);
    e->hu = SCRATCH(MEM_HU);
    e->actq[0] = SCRATCH(MEM_ACTQ0);
    e->actq[1] = SCRATCH(MEM_ACTQ1);
    e->actq_h = SCRATCH(MEM_ACTQ_H);
    e->rowbuf = SCRATCH(MEM_ROWBUF);
    e->attn_tiles = SCRATCH(MEM_ATTN_TILES);
    e->attn_buf = SCRATCH(MEM_ATTN_BUF);
    e->logits_tmp = SCRATCH(MEM_LOGITS_TMP);
    e->rlog = SCRATCH(MEM_RLOG);
    e->sel = SCRATCH(MEM_SEL);
    e->selw = SCRATCH(MEM_SELW);
    e->slot_of = SCRATCH(MEM_SLOT_OF);
    e->ex_count = SCRATCH(MEM_EX_COUNT);
    e->ex_off = SCRATCH(MEM_EX_OFF);
    e->ex_fill = SCRATCH(MEM_EX_FILL);
    e->ex_order = SCRATCH(MEM_EX_ORDER);
    e->xg = SCRATCH(MEM_XG);
    e->dout = SCRATCH(MEM_DOUT);
    e->tasks = SCRATCH(MEM_TASKS);
#undef SCRATCH
    if (oom) {
        moeq_set_err(err, errlen, "out of memory allocating scratch for %d tokens per batch", e->cap);
        goto fail;
    }
    attn_pick(e, MOEQ_ISA_COUNT);
    fill_info(e);
    return e;
fail:
    moeq_engine_close(e);
    return NULL;
}

void moeq_engine_close(moeq_engine *e)
{
    if (!e) return;
    if (e->pool) moeq_pool_free(e->pool);
    void *bufs[] = { e->x, e->xn, e->tmp, e->q, e->k, e->v, e->att, e->rope, e->hg, e->hu,
                     e->btok, e->bpos, e->bsess, e->out_rows, e->rowbuf, e->attn_buf, e->attn_tiles,
                     e->logits_tmp, e->actq[0], e->actq[1], e->actq_h, e->rlog, e->sel, e->selw, e->slot_of, e->ex_count,
                     e->ex_off, e->ex_fill, e->ex_order, e->xg, e->dout, e->tasks };
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
    moeq_tokenizer_free(e->tok);
    moeq_model_free(e->m);
    free(e);
}

const struct moeq_model_info *moeq_engine_info(const moeq_engine *e) { return &e->info; }
int moeq_engine_n_threads(const moeq_engine *e) { return e->n_threads; }

void moeq_engine_set_act_hook(moeq_engine *e, moeq_act_hook fn, void *ud)
{
    e->hook = fn;
    e->hook_ud = ud;
}

void moeq_engine_set_layer_limit(moeq_engine *e, int n_layer) { e->layer_limit = n_layer > 0 ? n_layer : 0; }

const moeq_model *moeq_engine_model(const moeq_engine *e) { return e->m; }

int moeq_engine_override_weight(moeq_engine *e, const char *tensor, int type, const void *data, size_t nbytes,
                                char *err, size_t errlen)
{
    moeq_model *m = e->m;
    if (!data) {
        const int64_t ti = gguf_find_tensor(m->file, tensor);
        if (ti < 0) { moeq_set_err(err, errlen, "no weight %s", tensor); return -1; }
        data = m->file->tensors[ti].data;
        type = (int)m->file->tensors[ti].type;
        nbytes = 0;   /* the file's own: its size was checked at load */
    }
    struct moeq_weight *hit[2] = { NULL, NULL };
    int n_hit = 0;
    /* token_embd twice when the output is tied to it */
    if (!strcmp(m->tok_embd.name, tensor)) hit[n_hit++] = &m->tok_embd;
    if (m->output.data && !strcmp(m->output.name, tensor)) hit[n_hit++] = &m->output;
    for (int il = 0; il < m->hp.n_layer && !n_hit; il++) {
        struct moeq_layer *l = &m->layers[il];
        struct moeq_weight *ws[] = { &l->wq, &l->wk, &l->wv, &l->wo, &l->router,
            &l->gate_exps, &l->up_exps, &l->down_exps, &l->gate, &l->up, &l->down };
        for (size_t i = 0; i < sizeof ws / sizeof ws[0] && !n_hit; i++)
            if (ws[i]->data && !strcmp(ws[i]->name, tensor)) hit[n_hit++] = ws[i];
    }
    if (!n_hit) { moeq_set_err(err, errlen, "no weight %s", tensor); return -1; }
    struct moeq_weight w = *hit[0];
    w.type = type;
    w.data = data;
    w.row_size = moeq_row_size(type, w.n_in);
    w.expert_stride = w.row_size * (size_t)w.n_out;
    if (w.row_size == 0 || !weight_supported(&w)) {
        moeq_set_err(err, errlen, "%s: type %s is not supported by the engine here", tensor, moeq_type_name(type));
        return -1;
    }
    if (nbytes && nbytes != w.expert_stride * (size_t)w.n_expert) {
        moeq_set_err(err, errlen, "%s: %zu bytes given, %s needs %zu", tensor, nbytes, moeq_type_name(type),
                     w.expert_stride * (size_t)w.n_expert);
        return -1;
    }
    for (int i = 0; i < n_hit; i++) *hit[i] = w;
    return 0;
}

/* ------------------------------------------------------------ sessions */

moeq_session *moeq_session_new(moeq_engine *e, char *err, size_t errlen)
{
    if (e->n_sessions >= e->n_seq) {
        moeq_set_err(err, errlen, "all %d sessions are in use", e->n_seq);
        return NULL;
    }
    moeq_session *s = calloc(1, sizeof *s);
    int oom = !s;
    if (s) {
        s->e = e;
        s->k = xcalloc(1, e->mem.kv_k, &oom);
        s->v = xcalloc(1, e->mem.kv_v, &oom);
        s->tokens = xcalloc(1, e->mem.tokens, &oom);
        s->logits = xcalloc(1, e->mem.logits, &oom);
    }
    if (oom) {
        moeq_set_err(err, errlen, "out of memory for a KV cache of %d tokens", e->n_ctx);
        moeq_session_free(s);
        return NULL;
    }
    /* Touch the whole cache now, as llama.cpp clears its KV buffer: memory
     * runs out at start rather than mid-answer, and resident memory is what
     * `moeq fit` predicts from the first token on. */
    memset(s->k, 0, e->mem.kv_k);
    memset(s->v, 0, e->mem.kv_v);
    e->n_sessions++;
    e->kv_bytes += e->mem.kv_k + e->mem.kv_v;
    e->session_bytes += e->mem.tokens + e->mem.logits;
    return s;
}

void moeq_session_free(moeq_session *s)
{
    if (!s) return;
    if (s->k && s->v && s->tokens && s->logits) {
        moeq_engine *e = s->e;
        e->n_sessions--;
        e->kv_bytes -= e->mem.kv_k + e->mem.kv_v;
        e->session_bytes -= e->mem.tokens + e->mem.logits;
    }
    free(s->k);
    free(s->v);
    free(s->tokens);
    free(s->logits);
    free(s);
}

int moeq_session_n_past(const moeq_session *s) { return s->n_past; }
int moeq_session_n_ctx(const moeq_session *s) { return s->e->n_ctx; }

int moeq_session_sync(moeq_session *s, const int32_t *tokens, int n)
{
    int k = 0;
    while (k < s->n_past && k < n && s->tokens[k] == tokens[k]) k++;
    /* keep at least one token to evaluate, so the logits are fresh */
    if (n > 0 && k >= n) k = n - 1;
    if (k != s->n_past) s->logits_valid = 0;
    s->n_past = k;
    return k;
}

int moeq_session_eval(moeq_session *s, const int32_t *tokens, int n,
                      float *all_logits, char *err, size_t errlen)
{
    moeq_engine *e = s->e;
    const int V = e->m->hp.n_vocab;
    if (n <= 0) return 0;
    if (n > e->n_ctx - s->n_past) {
        moeq_set_err(err, errlen, "context of %d tokens is full", e->n_ctx);
        return -1;
    }
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= V) {
            moeq_set_err(err, errlen, "token id %d is outside the vocabulary of %d", tokens[i], V);
            return -1;
        }
    for (int done = 0; done < n;) {
        int c = n - done < e->cap ? n - done : e->cap;
        for (int i = 0; i < c; i++) {
            e->btok[i] = tokens[done + i];
            e->bpos[i] = s->n_past + i;
            e->bsess[i] = s;
            s->tokens[s->n_past + i] = tokens[done + i];
        }
        forward(e, c);
        s->n_past += c;
        done += c;
        if (all_logits) {
            for (int i = 0; i < c; i++) e->out_rows[i] = i;
            output_logits(e, e->out_rows, c, all_logits + (size_t)(done - c) * V);
            if (done == n) memcpy(s->logits, all_logits + (size_t)(n - 1) * V, (size_t)V * sizeof(float));
        } else if (done == n) {
            e->out_rows[0] = c - 1;
            output_logits(e, e->out_rows, 1, s->logits);
        }
    }
    s->logits_valid = 1;
    return 0;
}

const float *moeq_session_logits(const moeq_session *s) { return s->logits_valid ? s->logits : NULL; }

int moeq_engine_decode(moeq_engine *e, moeq_session **ss, const int32_t *tokens, int n,
                       char *err, size_t errlen)
{
    const int V = e->m->hp.n_vocab;
    for (int i = 0; i < n; i++) {
        if (ss[i]->e != e) {
            moeq_set_err(err, errlen, "session %d belongs to another engine", i);
            return -1;
        }
        if (ss[i]->n_past >= e->n_ctx) {
            moeq_set_err(err, errlen, "context of %d tokens is full", e->n_ctx);
            return -1;
        }
        if (tokens[i] < 0 || tokens[i] >= V) {
            moeq_set_err(err, errlen, "token id %d is outside the vocabulary of %d", tokens[i], V);
            return -1;
        }
        for (int j = 0; j < i; j++)
            if (ss[j] == ss[i]) {
                moeq_set_err(err, errlen, "session appears twice in one decode batch");
                return -1;
            }
    }
    for (int done = 0; done < n;) {
        int c = n - done;
        if (c > e->cap) c = e->cap;
        if (c > e->n_seq) c = e->n_seq;
        for (int i = 0; i < c; i++) {
            moeq_session *s = ss[done + i];
            e->btok[i] = tokens[done + i];
            e->bpos[i] = s->n_past;
            e->bsess[i] = s;
            s->tokens[s->n_past] = tokens[done + i];
            e->out_rows[i] = i;
        }
        forward(e, c);
        output_logits(e, e->out_rows, c, e->logits_tmp);
        for (int i = 0; i < c; i++) {
            moeq_session *s = ss[done + i];
            s->n_past++;
            memcpy(s->logits, e->logits_tmp + (size_t)i * V, (size_t)V * sizeof(float));
            s->logits_valid = 1;
        }
        done += c;
    }
    return 0;
}

/* ------------------------------------------------------------ tokenizer */

int moeq_tokenize(const moeq_engine *e, const char *text, size_t len, int parse_special,
                  int32_t *out, int max)
{
    if (!e->tok) return -1;
    return moeq_tokenizer_encode(e->tok, text, len, parse_special, out, max);
}

int32_t *moeq_tokenize_text(const moeq_engine *e, const char *text, size_t len, int with_bos, int *n,
                            char *err, size_t errlen)
{
    const size_t lim = (size_t)1 << 30;
    if (!e->tok) { moeq_set_err(err, errlen, "the model has no vocabulary"); return NULL; }
    const int off = with_bos && e->info.add_bos ? 1 : 0;
    /* byte-level BPE gives at most one token per byte: one pass suffices
     * unless the vocabulary says otherwise, and then a second one does */
    int cap = (int)(len + 16 < lim ? len + 16 : lim);
    for (int pass = 0; pass < 2; pass++) {
        int32_t *t = malloc((size_t)cap * sizeof *t);
        if (!t) { moeq_set_err(err, errlen, "out of memory for %d tokens", cap); return NULL; }
        if (off) t[0] = e->info.bos;
        int got = moeq_tokenizer_encode(e->tok, text, len, 0, t + off, cap - off);
        if (got >= 0 && got <= cap - off) { *n = off + got; return t; }
        free(t);
        if (got < 0 || (size_t)got + (size_t)off > lim) break;
        cap = got + off;
    }
    moeq_set_err(err, errlen, "the text does not tokenize into at most 2^30 tokens");
    return NULL;
}

int moeq_token_piece(const moeq_engine *e, int32_t tok, char *buf, int cap)
{
    if (!e->tok) return -1;
    return moeq_tokenizer_piece(e->tok, tok, buf, cap);
}

int moeq_token_is_eog(const moeq_engine *e, int32_t tok)
{
    if (e->tok) return moeq_tokenizer_is_eog(e->tok, tok);
    return tok >= 0 && (tok == e->info.eos || tok == e->info.eot);
}

char *moeq_chat_render(const moeq_engine *e, const struct moeq_chat_msg *msgs, int n,
                       int add_generation_prompt, char *err, size_t errlen)
{
    _Static_assert(sizeof(struct moeq_chat_msg) == sizeof(struct moeq_tok_msg),
                   "chat message layouts must agree");
    if (!e->tok) {
        moeq_set_err(err, errlen, "the model has no tokenizer");
        return NULL;
    }
    return moeq_tokenizer_chat_render(e->tok, (const struct moeq_tok_msg *)msgs, n,
                                      add_generation_prompt, err, errlen);
}

char *moeq_chat_render_json(const moeq_engine *e, json_t *ctx, char *err, size_t errlen)
{
    if (!e->tok) {
        moeq_set_err(err, errlen, "the model has no tokenizer");
        return NULL;
    }
    return moeq_tokenizer_chat_render_json(e->tok, ctx, err, errlen);
}

int moeq_chat_format(const moeq_engine *e, int *think)
{
    *think = e->tok && moeq_tokenizer_chat_kind(e->tok) == MOEQ_CHAT_QWEN3;
    return e->tok ? moeq_tokenizer_chat_format(e->tok) : 0;
}
