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
#include "engine.h"

#include "engine_internal.h"
#include "kernels.h"
#include "model.h"
#include "pool.h"
#include "quants.h"
#include "quants_blocks.h"
#include "tokenizer.h"
#include "util.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Weight rows handed to a thread at a time: big enough to amortize the
 * activation reads, small enough that 16 threads share one expert. */
#define ROW_CHUNK 32

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

static inline float silu(float x) { return x / (1.0f + expf(-x)); }

/* g[i] = silu(g[i]) * u[i] (the SIMD twin is silu_mul_avx2). */
static void silu_mul_scalar(float *g, const float *u, size_t n)
{
    for (size_t i = 0; i < n; i++) g[i] = silu(g[i]) * u[i];
}

/* Q8_0 row quantization of the KV cache (ggml's block layout: a half
 * scale amax/127 and 32 rounded int8). */
static void kv_quantize_q8_0(const float *x, block_q8_0 *y, int n)
{
    for (int b = 0; b < n / QK8_0; b++) {
        const float *xb = x + b * QK8_0;
        float amax = 0;
        for (int i = 0; i < QK8_0; i++) amax = fmaxf(amax, fabsf(xb[i]));
        float d = amax / 127.0f, id = d != 0 ? 1.0f / d : 0.0f;
        y[b].d = moeq_f32_to_f16(d);
        for (int i = 0; i < QK8_0; i++) y[b].qs[i] = (int8_t)roundf(xb[i] * id);
    }
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
 * other tokens share its batch. Each kernel below therefore computes every
 * row's value with exactly the float operations a single-row call would:
 * a dot product with a fixed lane layout and reduction tree, the softmax
 * over positions in order, V accumulated in position order. Tiling only
 * shares the loads and conversions (which are exact), never the rounding.
 * The sequences are those of the per-(token, head) loops this replaced,
 * except that the SIMD kernels take exponentials eight at a time (exp8).
 */
#define ATT_ROWS 64   /* rows (token x head) per item, at most */
#define ATT_POS  32   /* cached positions converted at a time */

/* Floats between an item's score rows: the context plus one cache line, so
 * that rows a power of two apart do not all land in the same cache sets
 * (the kernels write a column of rows at a time). */
static size_t attn_ld(int n_ctx) { return ((size_t)n_ctx + 15) / 16 * 16 + 16; }

/* A thread's score rows hold at most this many floats (4 MiB): at long
 * contexts tiles get fewer tokens, then items fewer heads, down to one
 * row, which is what the per-head loops this replaced needed. */
#define ATT_SCORES_MAX ((size_t)1 << 20)

/* Heads per item and tokens per tile for a GQA group, a batch capacity and
 * a context (engine_mem.c mirrors this to size the scratch). */
static void attn_shape(int group, int cap, int n_ctx, int *nh, int *tile)
{
    const size_t ld = attn_ld(n_ctx);
    size_t h = group < ATT_ROWS ? (size_t)group : ATT_ROWS;
    if (h * ld > ATT_SCORES_MAX) h = ATT_SCORES_MAX / ld > 1 ? ATT_SCORES_MAX / ld : 1;
    size_t t = ATT_ROWS / h;
    if (t * h * ld > ATT_SCORES_MAX) t = ATT_SCORES_MAX / (h * ld) > 1 ? ATT_SCORES_MAX / (h * ld) : 1;
    if (t > (size_t)cap) t = (size_t)cap;
    *nh = (int)h;
    *tile = (int)t;
}

struct attn_job {
    moeq_engine *e;
    int layer, ntiles;
    int nh, nchunk;       /* query heads per item, items per (tile, KV head) */
};

/*
 * Converters of n cached rows (one KV head each, stride bytes apart) to
 * f32 rows of d values; Q8_0 leaves the int8 values as floats (exact) and
 * the block scales in ds (d / 32 per row), so the kernels can apply the
 * scale where the per-row arithmetic always did.
 */
static void cvt_f16(const uint8_t *src, size_t stride, int n, int d, float *dst, float *ds)
{
    (void)ds;
    for (int p = 0; p < n; p++) {
        const uint16_t *h = (const uint16_t *)(src + (size_t)p * stride);
        for (int i = 0; i < d; i++) dst[(size_t)p * d + i] = h2f(h[i]);
    }
}

static void cvt_q8_0(const uint8_t *src, size_t stride, int n, int d, float *dst, float *ds)
{
    const int nb = d / QK8_0;
    for (int p = 0; p < n; p++) {
        const block_q8_0 *b = (const block_q8_0 *)(src + (size_t)p * stride);
        for (int j = 0; j < nb; j++) {
            ds[p * nb + j] = h2f(b[j].d);
            for (int i = 0; i < QK8_0; i++) dst[(size_t)p * d + j * QK8_0 + i] = (float)b[j].qs[i];
        }
    }
}

/* x[p] = exp(x[p] - m): libm's expf, the reference. */
static void exp_shift(float *x, int n, float m)
{
    for (int p = 0; p < n; p++) x[p] = expf(x[p] - m);
}

/*
 * Scores: sc[r * ld + p] = scale * q[r] . k[p] for nr rows and np
 * positions. Accumulation: out[r] += sum over p < np of w[r * ld + p] *
 * v[p], in position order. The scalar kernels are the reference; the AVX2
 * twins keep their own (different) fixed lane order, so one CPU always
 * gives the same bits for a (token, head).
 */
static void scores_f16(const float *const *q, int nr, const float *k, const float *ks, int np,
                       int d, float scale, float *sc, size_t ld)
{
    (void)ks;
    for (int r = 0; r < nr; r++)
        for (int p = 0; p < np; p++) {
            const float *kp = k + (size_t)p * d;
            float s = 0;
            for (int i = 0; i < d; i++) s += q[r][i] * kp[i];
            sc[(size_t)r * ld + p] = s * scale;
        }
}

static void scores_q8_0(const float *const *q, int nr, const float *k, const float *ks, int np,
                        int d, float scale, float *sc, size_t ld)
{
    const int nb = d / QK8_0;
    for (int r = 0; r < nr; r++)
        for (int p = 0; p < np; p++) {
            const float *kp = k + (size_t)p * d;
            float s = 0;
            for (int j = 0; j < nb; j++) {
                float t = 0;
                for (int i = 0; i < QK8_0; i++) t += q[r][j * QK8_0 + i] * kp[j * QK8_0 + i];
                s += t * ks[p * nb + j];
            }
            sc[(size_t)r * ld + p] = s * scale;
        }
}

static void accum_f16(float *const *out, int nr, const float *w, size_t ld, const float *v,
                      const float *vs, int np, int d)
{
    (void)vs;
    for (int r = 0; r < nr; r++) {
        float *o = out[r];
        const float *wr = w + (size_t)r * ld;
        for (int p = 0; p < np; p++)
            for (int i = 0; i < d; i++) o[i] += wr[p] * v[(size_t)p * d + i];
    }
}

static void accum_q8_0(float *const *out, int nr, const float *w, size_t ld, const float *v,
                       const float *vs, int np, int d)
{
    const int nb = d / QK8_0;
    for (int r = 0; r < nr; r++) {
        float *o = out[r];
        const float *wr = w + (size_t)r * ld;
        for (int p = 0; p < np; p++)
            for (int j = 0; j < nb; j++) {
                float wd = wr[p] * vs[p * nb + j];
                const float *vp = v + (size_t)p * d + j * QK8_0;
                for (int i = 0; i < QK8_0; i++) o[j * QK8_0 + i] += wd * vp[i];
            }
    }
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define AVX2_TARGET __attribute__((target("avx2,fma,f16c")))

/*
 * Horizontal sums of four 8-lane vectors, each by the same tree:
 * ((x0 + x4) + (x2 + x6)) + ((x1 + x5) + (x3 + x7)). Results land in lanes
 * 0 (a), 4 (b), 2 (c) and 6 (d). Every addition has the operands a
 * one-vector reduction in this order would have, so the bits are the same
 * whichever four vectors travel together.
 */
AVX2_TARGET static inline __m256 hsum8x4(__m256 a, __m256 b, __m256 c, __m256 d)
{
    __m256 ab = _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
    __m256 cd = _mm256_add_ps(_mm256_permute2f128_ps(c, d, 0x20), _mm256_permute2f128_ps(c, d, 0x31));
    __m256 x = _mm256_add_ps(_mm256_shuffle_ps(ab, cd, 0x44), _mm256_shuffle_ps(ab, cd, 0xEE));
    return _mm256_add_ps(x, _mm256_movehdup_ps(x));
}

/* Store the four sums of hsum8x4 (rows r, r+1 x positions p, p+1) times
 * scale, leaving out a second row or position that does not exist. */
AVX2_TARGET static inline void store4(__m256 s, float scale, float *sc, size_t ld, int two_r, int two_p)
{
    float t[8];
    _mm256_storeu_ps(t, s);
    sc[0] = t[0] * scale;
    if (two_p) sc[1] = t[4] * scale;
    if (two_r) {
        sc[ld] = t[2] * scale;
        if (two_p) sc[ld + 1] = t[6] * scale;
    }
}

/*
 * The SIMD kernels are written once (as macros) and compiled twice: for
 * AVX2, and for AVX-512VL, which runs the very same 256-bit operations but
 * has 32 registers, so more rows share each load. Same operations in the
 * same order, so the same bits on either.
 */
#define UNROLL _Pragma("GCC unroll 8")
/* Keep a loaded value in a register: the compiler would otherwise fold the
 * load into each FMA that uses it, loading it again for every position. */
#define IN_REG(x) __asm__("" : "+v"(x))

/* F16 K: two accumulators per dot product (even and odd 8-lane chunks),
 * added before the reduction; d is a multiple of 16 (attn_pick). RB rows
 * by two positions at a time; a missing row or position repeats the last
 * one and is not stored. */
#define DEF_SCORES_F16(NAME, TARGET, RB)                                                   \
TARGET static void NAME(const float *const *q, int nr, const float *k, const float *ks,    \
                        int np, int d, float scale, float *sc, size_t ld)                 \
{                                                                                          \
    (void)ks;                                                                              \
    for (int r = 0; r < nr; r += (RB)) {                                                   \
        const float *qr[RB];                                                               \
        UNROLL for (int rr = 0; rr < (RB); rr++) qr[rr] = q[r + rr < nr ? r + rr : nr - 1]; \
        for (int p = 0; p < np; p += 2) {                                                  \
            const float *ka = k + (size_t)p * d;                                           \
            const float *kb = k + (size_t)(p + 1 < np ? p + 1 : p) * d;                    \
            __m256 e0[RB][2], e1[RB][2];                                                   \
            UNROLL for (int rr = 0; rr < (RB); rr++)                                       \
                e0[rr][0] = e0[rr][1] = e1[rr][0] = e1[rr][1] = _mm256_setzero_ps();       \
            for (int i = 0; i < d; i += 16) {                                              \
                __m256 u = _mm256_loadu_ps(ka + i), v = _mm256_loadu_ps(kb + i);           \
                UNROLL for (int rr = 0; rr < (RB); rr++) {                                 \
                    __m256 x = _mm256_loadu_ps(qr[rr] + i);                                \
                    IN_REG(x);                                                             \
                    e0[rr][0] = _mm256_fmadd_ps(x, u, e0[rr][0]);                          \
                    e0[rr][1] = _mm256_fmadd_ps(x, v, e0[rr][1]);                          \
                }                                                                          \
                u = _mm256_loadu_ps(ka + i + 8);                                           \
                v = _mm256_loadu_ps(kb + i + 8);                                           \
                UNROLL for (int rr = 0; rr < (RB); rr++) {                                 \
                    __m256 x = _mm256_loadu_ps(qr[rr] + i + 8);                            \
                    IN_REG(x);                                                             \
                    e1[rr][0] = _mm256_fmadd_ps(x, u, e1[rr][0]);                          \
                    e1[rr][1] = _mm256_fmadd_ps(x, v, e1[rr][1]);                          \
                }                                                                          \
            }                                                                              \
            UNROLL for (int rr = 0; rr < (RB); rr += 2) {                                  \
                if (r + rr >= nr) break;                                                   \
                __m256 s = hsum8x4(_mm256_add_ps(e0[rr][0], e1[rr][0]),                    \
                                   _mm256_add_ps(e0[rr][1], e1[rr][1]),                    \
                                   _mm256_add_ps(e0[rr + 1][0], e1[rr + 1][0]),            \
                                   _mm256_add_ps(e0[rr + 1][1], e1[rr + 1][1]));           \
                store4(s, scale, sc + (size_t)(r + rr) * ld + p, ld, r + rr + 1 < nr,      \
                       p + 1 < np);                                                        \
            }                                                                              \
        }                                                                                  \
    }                                                                                      \
}

/* Q8_0 K: per 32-block an 8-lane product sum t (mul, then three FMAs),
 * then acc += block scale * t; one accumulator per dot product. */
#define DEF_SCORES_Q8_0(NAME, TARGET, RB)                                                  \
TARGET static void NAME(const float *const *q, int nr, const float *k, const float *ks,    \
                        int np, int d, float scale, float *sc, size_t ld)                 \
{                                                                                          \
    const int nb = d / QK8_0;                                                              \
    for (int r = 0; r < nr; r += (RB)) {                                                   \
        const float *qr[RB];                                                               \
        UNROLL for (int rr = 0; rr < (RB); rr++) qr[rr] = q[r + rr < nr ? r + rr : nr - 1]; \
        for (int p = 0; p < np; p += 2) {                                                  \
            const int p1 = p + 1 < np ? p + 1 : p;                                         \
            const float *ka = k + (size_t)p * d, *kb = k + (size_t)p1 * d;                 \
            const float *sa = ks + (size_t)p * nb, *sb = ks + (size_t)p1 * nb;             \
            __m256 acc[RB][2];                                                             \
            UNROLL for (int rr = 0; rr < (RB); rr++)                                       \
                acc[rr][0] = acc[rr][1] = _mm256_setzero_ps();                             \
            for (int j = 0; j < nb; j++) {                                                 \
                const int o = j * QK8_0;                                                   \
                __m256 t[RB][2];                                                           \
                __m256 u = _mm256_loadu_ps(ka + o), v = _mm256_loadu_ps(kb + o);           \
                UNROLL for (int rr = 0; rr < (RB); rr++) {                                 \
                    __m256 x = _mm256_loadu_ps(qr[rr] + o);                                \
                    IN_REG(x);                                                             \
                    t[rr][0] = _mm256_mul_ps(x, u);                                        \
                    t[rr][1] = _mm256_mul_ps(x, v);                                        \
                }                                                                          \
                UNROLL for (int c = 8; c < QK8_0; c += 8) {                                \
                    u = _mm256_loadu_ps(ka + o + c);                                       \
                    v = _mm256_loadu_ps(kb + o + c);                                       \
                    UNROLL for (int rr = 0; rr < (RB); rr++) {                             \
                        __m256 x = _mm256_loadu_ps(qr[rr] + o + c);                        \
                        IN_REG(x);                                                         \
                        t[rr][0] = _mm256_fmadd_ps(x, u, t[rr][0]);                        \
                        t[rr][1] = _mm256_fmadd_ps(x, v, t[rr][1]);                        \
                    }                                                                      \
                }                                                                          \
                __m256 da = _mm256_set1_ps(sa[j]), db = _mm256_set1_ps(sb[j]);             \
                UNROLL for (int rr = 0; rr < (RB); rr++) {                                 \
                    acc[rr][0] = _mm256_fmadd_ps(da, t[rr][0], acc[rr][0]);                \
                    acc[rr][1] = _mm256_fmadd_ps(db, t[rr][1], acc[rr][1]);                \
                }                                                                          \
            }                                                                              \
            UNROLL for (int rr = 0; rr < (RB); rr += 2) {                                  \
                if (r + rr >= nr) break;                                                   \
                __m256 s = hsum8x4(acc[rr][0], acc[rr][1], acc[rr + 1][0], acc[rr + 1][1]); \
                store4(s, scale, sc + (size_t)(r + rr) * ld + p, ld, r + rr + 1 < nr,      \
                       p + 1 < np);                                                        \
            }                                                                              \
        }                                                                                  \
    }                                                                                      \
}

/* out[r + rr][i .. i + 8 NC) += weight(r + rr, p) * v[p][i ..) for p in
 * order, R rows at a time, the outputs held in registers across positions. */
#define ACC_BLOCK(R, NC, WEIGHT)                                                           \
    do {                                                                                   \
        __m256 acc[R][NC];                                                                 \
        UNROLL for (int rr = 0; rr < (R); rr++)                                            \
            UNROLL for (int c = 0; c < (NC); c++)                                          \
                acc[rr][c] = _mm256_loadu_ps(out[r + rr] + i + 8 * c);                     \
        for (int p = 0; p < np; p++) {                                                     \
            __m256 x[NC];                                                                  \
            UNROLL for (int c = 0; c < (NC); c++) {                                        \
                x[c] = _mm256_loadu_ps(v + (size_t)p * d + i + 8 * c);                     \
                IN_REG(x[c]);                                                              \
            }                                                                              \
            UNROLL for (int rr = 0; rr < (R); rr++) {                                      \
                __m256 wp = _mm256_set1_ps(WEIGHT(r + rr, p));                             \
                UNROLL for (int c = 0; c < (NC); c++)                                      \
                    acc[rr][c] = _mm256_fmadd_ps(wp, x[c], acc[rr][c]);                    \
            }                                                                              \
        }                                                                                  \
        UNROLL for (int rr = 0; rr < (R); rr++)                                            \
            UNROLL for (int c = 0; c < (NC); c++)                                          \
                _mm256_storeu_ps(out[r + rr] + i + 8 * c, acc[rr][c]);                     \
    } while (0)

/* F16 V: out = fma(w, v, out) per lane; d is a multiple of 16. */
#define W_F16(row, p) w[(size_t)(row) * ld + (p)]
#define DEF_ACCUM_F16(NAME, TARGET, RB)                                                    \
TARGET static void NAME(float *const *out, int nr, const float *w, size_t ld,              \
                        const float *v, const float *vs, int np, int d)                    \
{                                                                                          \
    (void)vs;                                                                              \
    int r = 0;                                                                             \
    for (; r + (RB) <= nr; r += (RB)) {                                                    \
        int i = 0;                                                                         \
        for (; i + 32 <= d; i += 32) ACC_BLOCK(RB, 4, W_F16);                              \
        for (; i < d; i += 16) ACC_BLOCK(RB, 2, W_F16);                                    \
    }                                                                                      \
    for (; r < nr; r++) {                                                                  \
        int i = 0;                                                                         \
        for (; i + 32 <= d; i += 32) ACC_BLOCK(1, 4, W_F16);                               \
        for (; i < d; i += 16) ACC_BLOCK(1, 2, W_F16);                                     \
    }                                                                                      \
}

/* Q8_0 V: the weight times the block scale first (one float multiply),
 * then out = fma(that, int8 value, out) per lane; i walks whole blocks. */
#define W_Q8_0(row, p) (w[(size_t)(row) * ld + (p)] * vs[(p) * nb + i / QK8_0])
#define DEF_ACCUM_Q8_0(NAME, TARGET, RB)                                                   \
TARGET static void NAME(float *const *out, int nr, const float *w, size_t ld,              \
                        const float *v, const float *vs, int np, int d)                    \
{                                                                                          \
    const int nb = d / QK8_0;                                                              \
    int r = 0;                                                                             \
    for (; r + (RB) <= nr; r += (RB))                                                      \
        for (int i = 0; i < d; i += 32) ACC_BLOCK(RB, 4, W_Q8_0);                          \
    for (; r < nr; r++)                                                                    \
        for (int i = 0; i < d; i += 32) ACC_BLOCK(1, 4, W_Q8_0);                           \
}

DEF_SCORES_F16(scores_f16_avx2, AVX2_TARGET, 2)
DEF_SCORES_Q8_0(scores_q8_0_avx2, AVX2_TARGET, 2)
DEF_ACCUM_F16(accum_f16_avx2, AVX2_TARGET, 3)
DEF_ACCUM_Q8_0(accum_q8_0_avx2, AVX2_TARGET, 3)
#define AVX512_TARGET __attribute__((target("avx2,fma,f16c,avx512f,avx512vl")))
DEF_SCORES_F16(scores_f16_avx512, AVX512_TARGET, 4)
DEF_SCORES_Q8_0(scores_q8_0_avx512, AVX512_TARGET, 4)
DEF_ACCUM_F16(accum_f16_avx512, AVX512_TARGET, 4)
DEF_ACCUM_Q8_0(accum_q8_0_avx512, AVX512_TARGET, 4)
#undef DEF_SCORES_F16
#undef DEF_SCORES_Q8_0
#undef DEF_ACCUM_F16
#undef DEF_ACCUM_Q8_0
#undef ACC_BLOCK
#undef W_F16
#undef W_Q8_0
#undef UNROLL
#undef IN_REG

/*
 * x[p] = exp(x[p] - m), eight at a time: 2^n e^r with n = round(y / ln 2),
 * r = y - n ln 2 (ln 2 split in two so r is nearly exact, |r| <= ln 2 / 2)
 * and e^r by its Taylor polynomial to r^7 (truncation below 1e-8
 * relative), 2^n added to the exponent field. Within about an ulp of
 * expf, and the same bits for a value wherever it sits in the row (a short
 * tail goes through the same code in a padded buffer). y below -87.3
 * (results that would be subnormal) gives 0; NaN stays NaN.
 */
AVX2_TARGET static inline __m256 exp8(__m256 y)
{
    const __m256 log2e = _mm256_set1_ps(1.44269504f);
    const __m256 ln2_hi = _mm256_set1_ps(0.693145751953125f);   /* 12 significant bits */
    const __m256 ln2_lo = _mm256_set1_ps(1.428606765330187e-06f);
    __m256 n = _mm256_round_ps(_mm256_mul_ps(y, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, ln2_hi, y);
    r = _mm256_fnmadd_ps(n, ln2_lo, r);
    __m256 p = _mm256_set1_ps(1.0f / 5040);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    __m256 under = _mm256_cmp_ps(y, _mm256_set1_ps(-87.3f), _CMP_LT_OQ);
    __m256 big = _mm256_cmp_ps(y, _mm256_set1_ps(88.0f), _CMP_GT_OQ);
    n = _mm256_min_ps(_mm256_max_ps(n, _mm256_set1_ps(-126.0f)), _mm256_set1_ps(127.0f));
    __m256i e = _mm256_slli_epi32(_mm256_cvtps_epi32(n), 23);
    __m256 v = _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), e));
    v = _mm256_andnot_ps(under, v);
    v = _mm256_blendv_ps(v, _mm256_set1_ps(INFINITY), big);
    return _mm256_blendv_ps(v, y, _mm256_cmp_ps(y, y, _CMP_UNORD_Q));
}

AVX2_TARGET static void exp_shift_avx2(float *x, int n, float m)
{
    const __m256 vm = _mm256_set1_ps(m);
    int p = 0;
    for (; p + 8 <= n; p += 8)
        _mm256_storeu_ps(x + p, exp8(_mm256_sub_ps(_mm256_loadu_ps(x + p), vm)));
    if (p < n) {
        float t[8] = { 0 };
        memcpy(t, x + p, (size_t)(n - p) * sizeof *t);
        _mm256_storeu_ps(t, exp8(_mm256_sub_ps(_mm256_loadu_ps(t), vm)));
        memcpy(x + p, t, (size_t)(n - p) * sizeof *t);
    }
}

/*
 * The expert hidden rows, g[i] = silu(g[i]) * u[i], a sizeable share of a
 * prompt's time with a libm expf per element: exp8 eight at a time, the
 * tail through the same code in a padded buffer, so a value does not
 * depend on where it sits in the row.
 */
AVX2_TARGET static void silu_mul_avx2(float *g, const float *u, size_t n)
{
    const __m256 one = _mm256_set1_ps(1.0f);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 x = _mm256_loadu_ps(g + i);
        __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), x));
        _mm256_storeu_ps(g + i, _mm256_mul_ps(_mm256_div_ps(x, _mm256_add_ps(one, e)), _mm256_loadu_ps(u + i)));
    }
    if (i < n) {
        float tg[8] = { 0 }, tu[8] = { 0 };
        memcpy(tg, g + i, (n - i) * sizeof *tg);
        memcpy(tu, u + i, (n - i) * sizeof *tu);
        silu_mul_avx2(tg, tu, 8);
        memcpy(g + i, tg, (n - i) * sizeof *tg);
    }
}

AVX2_TARGET static void cvt_f16_avx2(const uint8_t *src, size_t stride, int n, int d, float *dst,
                                     float *ds)
{
    (void)ds;
    for (int p = 0; p < n; p++) {
        const uint16_t *h = (const uint16_t *)(src + (size_t)p * stride);
        for (int i = 0; i < d; i += 8)
            _mm256_storeu_ps(dst + (size_t)p * d + i,
                             _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i))));
    }
}

AVX2_TARGET static void cvt_q8_0_avx2(const uint8_t *src, size_t stride, int n, int d, float *dst,
                                      float *ds)
{
    const int nb = d / QK8_0;
    for (int p = 0; p < n; p++) {
        const block_q8_0 *b = (const block_q8_0 *)(src + (size_t)p * stride);
        for (int j = 0; j < nb; j++) {
            ds[p * nb + j] = h2f(b[j].d);
            for (int i = 0; i < QK8_0; i += 8) {
                __m128i q8 = _mm_loadl_epi64((const __m128i *)(b[j].qs + i));
                _mm256_storeu_ps(dst + (size_t)p * d + j * QK8_0 + i,
                                 _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q8)));
            }
        }
    }
}
#define HAVE_AVX2_ATTN 1
#endif

static void silu_mul(float *g, const float *u, size_t n)
{
#ifdef HAVE_AVX2_ATTN
    if (moeq_isa_best() >= MOEQ_ISA_AVX2) { silu_mul_avx2(g, u, n); return; }
#endif
    silu_mul_scalar(g, u, n);
}

/* The kernels for the cache types and the given ISA (at most the CPU's). */
static void attn_pick(moeq_engine *e, int isa)
{
    const int d = e->m->hp.head_dim, k16 = e->type_k == MOEQ_TYPE_F16, v16 = e->type_v == MOEQ_TYPE_F16;
    struct moeq_attn_ops *o = &e->attn;
    o->cvt_k = k16 ? cvt_f16 : cvt_q8_0;
    o->cvt_v = v16 ? cvt_f16 : cvt_q8_0;
    o->scores = k16 ? scores_f16 : scores_q8_0;
    o->accum = v16 ? accum_f16 : accum_q8_0;
    o->exp_shift = exp_shift;
#ifdef HAVE_AVX2_ATTN
    if (isa >= MOEQ_ISA_AVX2 && moeq_isa_best() >= MOEQ_ISA_AVX2 && d % 16 == 0) {
        o->cvt_k = k16 ? cvt_f16_avx2 : cvt_q8_0_avx2;
        o->cvt_v = v16 ? cvt_f16_avx2 : cvt_q8_0_avx2;
        o->scores = k16 ? scores_f16_avx2 : scores_q8_0_avx2;
        o->accum = v16 ? accum_f16_avx2 : accum_q8_0_avx2;
        o->exp_shift = exp_shift_avx2;
        if (isa >= MOEQ_ISA_AVX512 && moeq_isa_best() >= MOEQ_ISA_AVX512) {
            o->scores = k16 ? scores_f16_avx512 : scores_q8_0_avx512;
            o->accum = v16 ? accum_f16_avx512 : accum_q8_0_avx512;
        }
    }
#else
    (void)d; (void)isa;
#endif
}

void moeq_engine_attn_isa(moeq_engine *e, int isa) { attn_pick(e, isa); }

/*
 * Softmax of nr rows (ld floats apart) over their first n entries, each
 * row as a lone row always was: m = the largest entry, x = expf(x - m) in
 * position order, their sum in position order, x *= 1 / sum (expf is
 * libm's in the scalar kernels, exp8 in the SIMD ones). The maximum
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
 * attn_ld scores, then ATT_POS converted rows and their block scales.
 */
static void attn_item(moeq_engine *e, int layer, const struct moeq_attn_tile *tl, int g, int h0,
                      int nh, float *buf)
{
    const struct moeq_hparams *hp = &e->m->hp;
    const int HD = hp->head_dim, nq = hp->n_head * HD;
    const float scale = 1.0f / sqrtf((float)HD);
    const int nt = tl->nt, R = nt * nh, p0 = e->bpos[tl->t0], P = p0 + nt;
    const size_t ld = e->attn_ld;
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
    const uint8_t *kbase = s->k + (size_t)layer * e->kv_layer_bytes_k + e->k_head_bytes * g;
    const uint8_t *vbase = s->v + (size_t)layer * e->kv_layer_bytes_v + e->v_head_bytes * g;

    /* scores of every row against positions 0 .. P-1; a row's entries past
     * its own position are computed but never read */
    for (int pb = 0; pb < P; pb += ATT_POS) {
        int np = P - pb < ATT_POS ? P - pb : ATT_POS;
        e->attn.cvt_k(kbase + (size_t)pb * e->k_row_bytes, e->k_row_bytes, np, HD, kv, kvs);
        e->attn.scores(qr, R, kv, kvs, np, HD, scale, sc + pb, ld);
    }
    /* softmax of each row over the positions its token sees */
    for (int k = 0; k < nt; k++) softmax_rows(e, sc + (size_t)k * nh * ld, ld, nh, p0 + k + 1);
    for (int r = 0; r < R; r++) memset(orow[r], 0, (size_t)HD * sizeof(float));
    /* out += w . V, block by block; tokens k >= kfull see the whole block,
     * the earlier ones (the causal edge of the tile) only its start */
    for (int pb = 0; pb < P; pb += ATT_POS) {
        int np = P - pb < ATT_POS ? P - pb : ATT_POS;
        e->attn.cvt_v(vbase + (size_t)pb * e->v_row_bytes, e->v_row_bytes, np, HD, kv, kvs);
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
    float *buf = e->attn_buf + (size_t)tid * e->attn_buf_len;
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
        if (last && last->nt < e->attn_tile && e->bsess[t] == e->bsess[last->t0] &&
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
    if (nh > e->attn_nh) nh = e->attn_nh;
    j->nh = nh;
    j->nchunk = (group + nh - 1) / nh;
}

static void kv_store(int type, uint8_t *dst, const float *x, int n)
{
    if (type == MOEQ_TYPE_F16) {
        uint16_t *h = (uint16_t *)dst;
        for (int i = 0; i < n; i++) h[i] = moeq_f32_to_f16(x[i]);
    } else {
        kv_quantize_q8_0(x, (block_q8_0 *)dst, n);
    }
}

/* ------------------------------------------------------------ per token */

/* Per-token steps of a batch (norms, routing, gathers) on the pool when
 * the batch is long enough to repay the hand-off; each token's result is
 * computed by the same code either way. */
struct tok_job { moeq_engine *e; const struct moeq_layer *l; };

static void per_token(moeq_engine *e, int n, moeq_task_fn fn, void *ctx)
{
    if (n < 32) fn(ctx, 0, n, 0);
    else moeq_pool_for(e->pool, n, 8, fn, ctx);
}

/* softmax over all experts, top-k (ties to the lower id), renormalized */
static void route_task(void *ctx, int64_t b, int64_t end, int tid)
{
    (void)tid;
    struct tok_job *j = ctx;
    moeq_engine *e = j->e;
    const int NX = e->m->hp.n_expert, K = e->m->hp.n_expert_used;
    for (int64_t t = b; t < end; t++) {
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
}

/* each token's normed row to its K expert slots */
static void gather_task(void *ctx, int64_t b, int64_t end, int tid)
{
    (void)tid;
    struct tok_job *j = ctx;
    moeq_engine *e = j->e;
    const int E = e->m->hp.n_embd, K = e->m->hp.n_expert_used;
    for (int64_t t = b; t < end; t++)
        for (int k = 0; k < K; k++)
            memcpy(e->xg + (size_t)e->slot_of[(size_t)t * K + k] * E, e->xn + (size_t)t * E,
                   (size_t)E * sizeof(float));
}

/* weighted sum of the expert outputs in selection order, so the result
 * does not depend on which other tokens share the batch */
static void combine_task(void *ctx, int64_t b, int64_t end, int tid)
{
    (void)tid;
    struct tok_job *j = ctx;
    moeq_engine *e = j->e;
    const int E = e->m->hp.n_embd, K = e->m->hp.n_expert_used;
    for (int64_t t = b; t < end; t++) {
        float *restrict xr = e->x + (size_t)t * E;
        for (int k = 0; k < K; k++) {
            float w = e->selw[(size_t)t * K + k];
            const float *restrict d = e->dout + (size_t)e->slot_of[(size_t)t * K + k] * E;
            for (int i = 0; i < E; i++) xr[i] += w * d[i];
        }
    }
}

/* rmsnorm of every token's residual row into xn with weight w */
struct norm_job { moeq_engine *e; const float *w; };

static void norm_task(void *ctx, int64_t b, int64_t end, int tid)
{
    (void)tid;
    struct norm_job *j = ctx;
    const int E = j->e->m->hp.n_embd;
    for (int64_t t = b; t < end; t++)
        rmsnorm(j->e->xn + (size_t)t * E, j->e->x + (size_t)t * E, j->w, E, j->e->m->hp.rms_eps);
}

static void norm_rows(moeq_engine *e, const float *w, int n)
{
    struct norm_job j = { e, w };
    per_token(e, n, norm_task, &j);
}

/* ------------------------------------------------------------ MoE */

struct moe_task { int expert, r0, r1; };

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
                silu_mul(G + (size_t)c * F + t->r0, U + (size_t)c * F + t->r0, (size_t)(t->r1 - t->r0));
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
        silu_mul(G, U, (size_t)cnt * F);
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
    struct tok_job rj = { e, l };
    per_token(e, n, route_task, &rj);
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
    per_token(e, n, gather_task, &rj);
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
    per_token(e, n, combine_task, &rj);
}

static void dense_ffn(moeq_engine *e, const struct moeq_layer *l, int n)
{
    const int E = e->m->hp.n_embd, F = e->m->hp.n_ff;
    const struct moeq_weight *gu[2] = { &l->gate, &l->up };
    float *gu_out[2] = { e->hg, e->hu };
    const size_t gu_ld[2] = { (size_t)F, (size_t)F };
    matmul_shared(e, gu, gu_out, gu_ld, 2, e->xn, n);
    silu_mul(e->hg, e->hu, (size_t)n * F);
    matmul(e, &l->down, e->hg, n, e->tmp, (size_t)E);
    for (size_t i = 0; i < (size_t)n * E; i++) e->x[i] += e->tmp[i];
}

/* Per-head RMSNorm and RoPE of q and k, and the token's K/V into its
 * session's cache (each token writes its own cells). */
struct qk_job { moeq_engine *e; const struct moeq_layer *l; int il; };

static void qk_task(void *ctx, int64_t b, int64_t end, int tid)
{
    (void)tid;
    struct qk_job *j = ctx;
    moeq_engine *e = j->e;
    const struct moeq_hparams *hp = &e->m->hp;
    const int HD = hp->head_dim, nq = hp->n_head * HD, nkv = hp->n_head_kv * HD;
    for (int64_t t = b; t < end; t++) {
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
        kv_store(e->type_k, s->k + (size_t)j->il * e->kv_layer_bytes_k + p * e->k_row_bytes,
                 e->k + (size_t)t * nkv, nkv);
        kv_store(e->type_v, s->v + (size_t)j->il * e->kv_layer_bytes_v + p * e->v_row_bytes,
                 e->v + (size_t)t * nkv, nkv);
    }
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

    for (int il = 0; il < hp->n_layer; il++) {
        const struct moeq_layer *l = &m->layers[il];
        norm_rows(e, l->attn_norm, n);
        const struct moeq_weight *qkv[3] = { &l->wq, &l->wk, &l->wv };
        float *qkv_out[3] = { e->q, e->k, e->v };
        const size_t qkv_ld[3] = { (size_t)nq, (size_t)nkv, (size_t)nkv };
        matmul_shared(e, qkv, qkv_out, qkv_ld, 3, e->xn, n);
        struct qk_job qj = { e, l, il };
        per_token(e, n, qk_task, &qj);
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
    e->type_k = p->type_k ? p->type_k : MOEQ_TYPE_F16;
    e->type_v = p->type_v ? p->type_v : MOEQ_TYPE_F16;
    /* MOEQ_TYPE_F32 is 0, which reads as "default": F16 */
    for (int i = 0; i < 2; i++) {
        int t = i ? e->type_v : e->type_k;
        if (t != MOEQ_TYPE_F16 && t != MOEQ_TYPE_Q8_0) {
            moeq_set_err(err, errlen, "KV cache type %s is not supported (f16 or q8_0)", moeq_type_name(t));
            goto fail;
        }
        if (t == MOEQ_TYPE_Q8_0 && hp->head_dim % QK8_0) {
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
    e->cap = e->n_batch > e->n_seq ? e->n_batch : e->n_seq;
    if ((int64_t)e->cap > (int64_t)e->n_ctx * e->n_seq) e->cap = e->n_ctx * e->n_seq;

    const int E = hp->n_embd, HD = hp->head_dim;
    const int nq = hp->n_head * HD, nkv = hp->n_head_kv * HD;
    const int K = hp->moe ? hp->n_expert_used : 1;
    const int F = hp->moe ? hp->n_ff_exp : hp->n_ff;
    const size_t cap = (size_t)e->cap, slots = cap * (size_t)K;
    int maxk = E > nq ? E : nq;
    if (F > maxk) maxk = F;
    e->rowbuf_len = (size_t)maxk;

    e->k_row_bytes = moeq_row_size(e->type_k, nkv);
    e->v_row_bytes = moeq_row_size(e->type_v, nkv);
    e->k_head_bytes = moeq_row_size(e->type_k, HD);
    e->v_head_bytes = moeq_row_size(e->type_v, HD);
    e->kv_layer_bytes_k = e->k_row_bytes * (size_t)e->n_ctx;
    e->kv_layer_bytes_v = e->v_row_bytes * (size_t)e->n_ctx;

    int oom = 0;
    e->x = xcalloc(cap * E, sizeof(float), &oom);
    e->xn = xcalloc(cap * (size_t)maxk, sizeof(float), &oom);
    e->tmp = xcalloc(cap * E, sizeof(float), &oom);
    e->q = xcalloc(cap * nq, sizeof(float), &oom);
    e->k = xcalloc(cap * nkv, sizeof(float), &oom);
    e->v = xcalloc(cap * nkv, sizeof(float), &oom);
    e->att = xcalloc(cap * nq, sizeof(float), &oom);
    e->rope = xcalloc(cap * HD, sizeof(float), &oom);
    e->hg = xcalloc(slots * F, sizeof(float), &oom);
    e->hu = xcalloc(slots * F, sizeof(float), &oom);
    e->btok = xcalloc(cap, sizeof *e->btok, &oom);
    e->bpos = xcalloc(cap, sizeof *e->bpos, &oom);
    e->bsess = xcalloc(cap, sizeof *e->bsess, &oom);
    e->out_rows = xcalloc(cap, sizeof *e->out_rows, &oom);
    e->rowbuf = xcalloc(e->rowbuf_len, sizeof(float), &oom);
    {
        /* widest activation row of each quantized format */
        int64_t k32 = (maxk + 31) / 32 * 32, k256 = (maxk + 255) / 256 * 256;
        size_t rows = slots > cap ? slots : cap;
        e->actq[0] = xcalloc(rows, moeq_act_row_size(MOEQ_TYPE_Q8_0, k32), &oom);
        e->actq[1] = xcalloc(rows, moeq_act_row_size(MOEQ_TYPE_Q4_K, k256), &oom);
        /* expert hidden rows for down, in either format */
        size_t h0 = moeq_act_row_size(MOEQ_TYPE_Q8_0, (F + 31) / 32 * 32);
        size_t h1 = moeq_act_row_size(MOEQ_TYPE_Q4_K, (F + 255) / 256 * 256);
        e->actq_h = xcalloc(slots, h0 > h1 ? h0 : h1, &oom);
    }
    attn_shape(hp->n_head / hp->n_head_kv, e->cap, e->n_ctx, &e->attn_nh, &e->attn_tile);
    e->attn_rows = e->attn_nh * e->attn_tile;
    e->attn_ld = attn_ld(e->n_ctx);
    e->attn_buf_len = (size_t)e->attn_rows * e->attn_ld + (size_t)ATT_POS * HD + (size_t)ATT_POS * (HD / QK8_0 + 1);
    e->attn_buf = xcalloc((size_t)e->n_threads * e->attn_buf_len, sizeof(float), &oom);
    e->attn_tiles = xcalloc(cap, sizeof *e->attn_tiles, &oom);
    e->logits_tmp = xcalloc((size_t)e->n_seq * hp->n_vocab, sizeof(float), &oom);
    if (hp->moe) {
        int NX = hp->n_expert;
        e->rlog = xcalloc(cap * NX, sizeof(float), &oom);
        e->sel = xcalloc(slots, sizeof *e->sel, &oom);
        e->selw = xcalloc(slots, sizeof *e->selw, &oom);
        e->slot_of = xcalloc(slots, sizeof *e->slot_of, &oom);
        e->ex_count = xcalloc((size_t)NX, sizeof *e->ex_count, &oom);
        e->ex_off = xcalloc((size_t)NX, sizeof *e->ex_off, &oom);
        e->ex_fill = xcalloc((size_t)NX, sizeof *e->ex_fill, &oom);
        e->ex_order = xcalloc((size_t)NX, sizeof *e->ex_order, &oom);
        e->xg = xcalloc(slots * E, sizeof(float), &oom);
        e->dout = xcalloc(slots * E, sizeof(float), &oom);
        int maxr = F > E ? F : E;
        e->tasks = xcalloc((size_t)NX * ((maxr + ROW_CHUNK - 1) / ROW_CHUNK), sizeof *e->tasks, &oom);
    }
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

void moeq_engine_set_act_hook(moeq_engine *e, moeq_act_hook fn, void *ud)
{
    e->hook = fn;
    e->hook_ud = ud;
}

const moeq_model *moeq_engine_model(const moeq_engine *e) { return e->m; }

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
        size_t nl = (size_t)e->m->hp.n_layer;
        s->k = xcalloc(nl, e->kv_layer_bytes_k, &oom);
        s->v = xcalloc(nl, e->kv_layer_bytes_v, &oom);
        s->tokens = xcalloc((size_t)e->n_ctx, sizeof *s->tokens, &oom);
        s->logits = xcalloc((size_t)e->m->hp.n_vocab, sizeof *s->logits, &oom);
    }
    if (oom) {
        moeq_set_err(err, errlen, "out of memory for a KV cache of %d tokens", e->n_ctx);
        moeq_session_free(s);
        return NULL;
    }
    /* Touch the whole cache now, as llama.cpp clears its KV buffer: memory
     * runs out at start rather than mid-answer, and resident memory is what
     * `moeq fit` predicts from the first token on. */
    memset(s->k, 0, (size_t)e->m->hp.n_layer * e->kv_layer_bytes_k);
    memset(s->v, 0, (size_t)e->m->hp.n_layer * e->kv_layer_bytes_v);
    e->n_sessions++;
    return s;
}

void moeq_session_free(moeq_session *s)
{
    if (!s) return;
    if (s->k && s->v && s->tokens && s->logits) s->e->n_sessions--;
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
