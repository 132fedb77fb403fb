/*
 * Engine on models made here: `moeq synth` writes a small random qwen3moe
 * in F32 and quantizations of the same weights; the quantized forward
 * passes stay close to the F32 one. A dense qwen3 with YaRN RoPE scaling,
 * written with the GGUF writer, matches a naive reference forward pass
 * written out in this file (one token at a time, no cache, plain loops).
 */
#include "test.h"

#include "engine/engine.h"
#include "engine/engine_internal.h"
#include "gguf/gguf.h"
#include "quant/quants.h"

#include <stdint.h>

static moeq_engine *open_path(const char *path, int n_ctx, int n_batch)
{
    struct moeq_engine_params p = { .model_path = path, .n_threads = 2, .n_ctx = n_ctx,
                                    .n_seq = 1, .n_batch = n_batch };
    char err[512] = "";
    moeq_engine *e = moeq_engine_open(&p, err, sizeof err);
    REQUIREF(e, "open %s: %s", path, err);
    return e;
}

static float *logits_of(const char *path, const int32_t *tok, int n, int *V)
{
    moeq_engine *e = open_path(path, 64, 16);
    *V = moeq_engine_info(e)->n_vocab;
    float *lg = malloc((size_t)n * *V * sizeof *lg);
    char err[256];
    moeq_session *s = moeq_session_new(e, err, sizeof err);
    REQUIRE(s && lg);
    {   /* it allocated its memory plan, dense qwen3 too (tests/test_fit.c
         * compares many more settings on qwen3moe files) */
        struct moeq_mem_shape sh;
        moeq_mem_shape_of(&e->m->hp, &sh);
        const struct moeq_mem_opts mo = { 64, 1, 16, e->n_threads, MOEQ_KV_F16, MOEQ_KV_F16 };
        struct moeq_mem_plan p;
        REQUIRE(moeq_mem_estimate(&sh, &mo, &p) == 0);
        CHECK(e->scratch_bytes == p.compute && e->kv_bytes == p.kv && e->session_bytes == p.sessions);
        CHECK(e->m->hp.moe == (p.layout.buf[MEM_RLOG] != 0));
    }
    REQUIREF(moeq_session_eval(s, tok, n, lg, err, sizeof err) == 0, "%s", err);
    moeq_session_free(s);
    moeq_engine_close(e);
    return lg;
}

static double kld(const float *test, const float *ref, int n, int V, int *same)
{
    double tot = 0;
    *same = 0;
    for (int t = 0; t < n; t++) {
        const float *a = ref + (size_t)t * V, *b = test + (size_t)t * V;
        double ma = a[0], mb = b[0], sa = 0, sb = 0;
        int ia = 0, ib = 0;
        for (int i = 1; i < V; i++) {
            if (a[i] > ma) { ma = a[i]; ia = i; }
            if (b[i] > mb) { mb = b[i]; ib = i; }
        }
        *same += ia == ib;
        for (int i = 0; i < V; i++) { sa += exp(a[i] - ma); sb += exp(b[i] - mb); }
        double la = log(sa), lb = log(sb);
        for (int i = 0; i < V; i++) {
            double lpa = a[i] - ma - la, lpb = b[i] - mb - lb;
            tot += exp(lpa) * (lpa - lpb);
        }
    }
    return tot / n;
}

/* Copy a GGUF with every tensor dequantized to F32: the model the
 * quantized file stands for, exactly. */
static void write_dequantized(const char *src, const char *dst)
{
    char err[512];
    gguf_file *f = gguf_open(src, err, sizeof err);
    REQUIREF(f, "%s", err);
    gguf_writer *w = gguf_writer_open(dst, src, err, sizeof err);
    REQUIREF(w, "%s", err);
    for (uint64_t i = 0; i < f->n_kv; i++) {
        char key[256];
        snprintf(key, sizeof key, "%.*s", (int)f->kv[i].key.n, f->kv[i].key.s);
        if (!strcmp(key, "general.file_type")) continue;
        REQUIRE(gguf_writer_add_kv(w, key, &f->kv[i].val) == 0);
    }
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        char name[256];
        snprintf(name, sizeof name, "%.*s", (int)f->tensors[i].name.n, f->tensors[i].name.s);
        REQUIRE(gguf_writer_add_tensor(w, name, MOEQ_TYPE_F32, f->tensors[i].n_dims, f->tensors[i].ne) >= 0);
    }
    REQUIRE(gguf_writer_begin_data(w) == 0);
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const gguf_tensor *t = &f->tensors[i];
        uint64_t n = t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
        float *buf = malloc(n * sizeof *buf);
        REQUIRE(buf);
        if (t->type == MOEQ_TYPE_F32) memcpy(buf, t->data, n * 4);
        else if (t->type == MOEQ_TYPE_F16)
            for (uint64_t j = 0; j < n; j++) buf[j] = moeq_f16_to_f32(((const uint16_t *)t->data)[j]);
        else REQUIRE(moeq_dequantize((int)t->type, t->data, buf, (int64_t)n) == 0);
        REQUIRE(gguf_writer_write(w, buf, n * 4) == 0);
        free(buf);
    }
    REQUIRE(gguf_writer_finish(w) == 0);
    gguf_close(f);
}

/*
 * Each quantized file against (a) the F32 model it was quantized from and
 * (b) its own weights dequantized to F32. (a) bounds the whole loss; (b)
 * isolates what the engine adds (activations quantized to Q8_0 / Q8_K for
 * the integer kernels), which must stay small for every type, else a
 * kernel or the expert binding is wrong.
 */
TEST(engine_synth_quantized_close_to_f32)
{
    struct { const char *name, *args; double max_vs_f32, max_vs_deq; } files[] = {
        { "f32.gguf",  "", 0, 0 },
        { "q8_0.gguf", "--type Q8_0 --mode quantize", 0.01, 0.005 },
        { "q4_k.gguf", "--type Q4_K --mode quantize", 0.5, 0.005 },
        { "q6_k.gguf", "--type Q6_K --mode quantize", 0.1, 0.005 },
        { "asym.gguf", "--recipe asym-2bitexp --mode quantize", 0.8, 0.01 },
    };
    int32_t tok[24];
    for (int i = 0; i < 24; i++) tok[i] = (i * 37 + 5) % 500;
    float *ref = NULL;
    int V = 0;
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        const char *path = test_synth_model(files[i].name, files[i].args);
        int v;
        float *lg = logits_of(path, tok, 24, &v);
        if (i == 0) { ref = lg; V = v; continue; }
        REQUIRE(v == V);
        char deq[64];
        snprintf(deq, sizeof deq, "deq-%s", files[i].name);
        const char *dpath = test_tmp(deq);
        write_dequantized(path, dpath);
        float *dl = logits_of(dpath, tok, 24, &v);
        int same, same_d;
        double k = kld(lg, ref, 24, V, &same), kd = kld(lg, dl, 24, V, &same_d);
        printf("  %s: KLD vs f32 %.5f (argmax %d/24), vs its dequantized weights %.6f (argmax %d/24)\n",
               files[i].name, k, same, kd, same_d);
        CHECKF(k < files[i].max_vs_f32, "%s: KLD vs f32 %g", files[i].name, k);
        CHECKF(kd < files[i].max_vs_deq, "%s: KLD vs dequantized %g", files[i].name, kd);
        CHECK(k > 0);
        free(lg);
        free(dl);
    }
    free(ref);
}

/* ---------------------------------------------------------------- naive reference */

struct rm {
    int moe, V, E, L, H, HKV, D, F, X, XU, ctx, ctx_orig;
    float base, factor, eps;
    /* weights, row-major [out][in] */
    float *embd, *onorm, *out;
    float *an[4], *wq[4], *wk[4], *wv[4], *wo[4], *qn[4], *kn[4], *fn[4];
    float *router[4], *gate[4], *up[4], *down[4]; /* dense: [F][E]; moe: [X][F][E] */
};

static uint64_t rs = 88172645463325252ull;
static float rnd(float scale)
{
    rs ^= rs << 13; rs ^= rs >> 7; rs ^= rs << 17;
    return ((float)(rs >> 40) / (float)(1u << 24) * 2 - 1) * scale;
}
static float *rvec(size_t n, float scale, float offset)
{
    float *v = malloc(n * sizeof *v);
    for (size_t i = 0; i < n; i++) v[i] = offset + rnd(scale);
    return v;
}

static void build(struct rm *m)
{
    size_t E = m->E, q = (size_t)m->H * m->D, kv = (size_t)m->HKV * m->D, F = m->F, X = m->moe ? m->X : 1;
    m->embd = rvec((size_t)m->V * E, 1, 0);
    m->onorm = rvec(E, 0.2f, 1);
    m->out = rvec((size_t)m->V * E, 0.15f, 0);
    for (int l = 0; l < m->L; l++) {
        m->an[l] = rvec(E, 0.2f, 1);
        m->wq[l] = rvec(q * E, 0.15f, 0);
        m->wk[l] = rvec(kv * E, 0.15f, 0);
        m->wv[l] = rvec(kv * E, 0.15f, 0);
        m->wo[l] = rvec(E * q, 0.15f, 0);
        m->qn[l] = rvec((size_t)m->D, 0.2f, 1);
        m->kn[l] = rvec((size_t)m->D, 0.2f, 1);
        m->fn[l] = rvec(E, 0.2f, 1);
        m->router[l] = m->moe ? rvec((size_t)m->X * E, 0.5f, 0) : NULL;
        m->gate[l] = rvec(X * F * E, 0.15f, 0);
        m->up[l] = rvec(X * F * E, 0.15f, 0);
        m->down[l] = rvec(X * E * F, 0.15f, 0);
    }
}

static void free_rm(struct rm *m)
{
    free(m->embd); free(m->onorm); free(m->out);
    for (int l = 0; l < m->L; l++) {
        free(m->an[l]); free(m->wq[l]); free(m->wk[l]); free(m->wv[l]); free(m->wo[l]);
        free(m->qn[l]); free(m->kn[l]); free(m->fn[l]); free(m->router[l]);
        free(m->gate[l]); free(m->up[l]); free(m->down[l]);
    }
}

static void put(gguf_writer *w, const char *name, int nd, uint64_t a, uint64_t b, uint64_t c)
{
    uint64_t ne[3] = { a, b, c };
    REQUIRE(gguf_writer_add_tensor(w, name, MOEQ_TYPE_F32, (uint32_t)nd, ne) >= 0);
}

/* Faults save() can write, for the loader's error tests. */
static enum { OK, BAD_KV_HEADS, NO_K_NORM, BAD_DOWN_SHAPE, BAD_ROPE_TYPE, USED_GT_COUNT } sabotage;

static void save(const struct rm *m, const char *path)
{
    char err[256], k[128], n[128];
    gguf_writer *w = gguf_writer_open(path, NULL, err, sizeof err);
    REQUIREF(w, "%s", err);
    const char *arch = m->moe ? "qwen3moe" : "qwen3";
    gguf_writer_add_str(w, "general.architecture", arch);
#define U32(s, v) (snprintf(k, sizeof k, "%s." s, arch), gguf_writer_add_u32(w, k, (uint32_t)(v)))
#define F32(s, v) (snprintf(k, sizeof k, "%s." s, arch), gguf_writer_add_f32(w, k, (float)(v)))
    U32("block_count", m->L);
    U32("context_length", m->ctx);
    U32("embedding_length", m->E);
    U32("attention.head_count", m->H);
    U32("attention.head_count_kv", sabotage == BAD_KV_HEADS ? 3 : m->HKV);
    U32("attention.key_length", m->D);
    U32("attention.value_length", m->D);
    F32("attention.layer_norm_rms_epsilon", m->eps);
    F32("rope.freq_base", m->base);
    if (m->factor > 0) {
        snprintf(k, sizeof k, "%s.rope.scaling.type", arch);
        gguf_writer_add_str(w, k, sabotage == BAD_ROPE_TYPE ? "longrope" : "yarn");
        F32("rope.scaling.factor", m->factor);
        U32("rope.scaling.original_context_length", m->ctx_orig);
    }
    if (m->moe) {
        U32("expert_count", m->X);
        U32("expert_used_count", sabotage == USED_GT_COUNT ? m->X + 1 : m->XU);
        U32("expert_feed_forward_length", m->F);
    } else {
        U32("feed_forward_length", m->F);
    }
#undef U32
#undef F32
    size_t E = m->E, q = (size_t)m->H * m->D, kv = (size_t)m->HKV * m->D;
    put(w, "token_embd.weight", 2, E, m->V, 1);
    put(w, "output_norm.weight", 1, E, 1, 1);
    put(w, "output.weight", 2, E, m->V, 1);
#define T(s, nd, a, b, c) (snprintf(n, sizeof n, "blk.%d." s ".weight", l), put(w, n, nd, a, b, c))
    for (int l = 0; l < m->L; l++) {
        T("attn_norm", 1, E, 1, 1);
        T("attn_q", 2, E, q, 1);
        T("attn_k", 2, E, kv, 1);
        T("attn_v", 2, E, kv, 1);
        T("attn_output", 2, q, E, 1);
        T("attn_q_norm", 1, m->D, 1, 1);
        if (sabotage == NO_K_NORM && l == 1) snprintf(n, sizeof n, "blk.1.attn_k_nrm.weight"), put(w, n, 1, m->D, 1, 1);
        else T("attn_k_norm", 1, m->D, 1, 1);
        T("ffn_norm", 1, E, 1, 1);
        if (m->moe) {
            T("ffn_gate_inp", 2, E, m->X, 1);
            T("ffn_gate_exps", 3, E, m->F, m->X);
            T("ffn_up_exps", 3, E, m->F, m->X);
            if (sabotage == BAD_DOWN_SHAPE) T("ffn_down_exps", 3, E, m->F, m->X);
            else T("ffn_down_exps", 3, m->F, E, m->X);
        } else {
            T("ffn_gate", 2, E, m->F, 1);
            T("ffn_up", 2, E, m->F, 1);
            T("ffn_down", 2, m->F, E, 1);
        }
    }
#undef T
    REQUIRE(gguf_writer_begin_data(w) == 0);
    size_t X = m->moe ? m->X : 1, F = m->F;
#define W(p, cnt) REQUIRE(gguf_writer_write(w, p, (cnt) * sizeof(float)) == 0)
    W(m->embd, (size_t)m->V * E); W(m->onorm, E); W(m->out, (size_t)m->V * E);
    for (int l = 0; l < m->L; l++) {
        W(m->an[l], E); W(m->wq[l], q * E); W(m->wk[l], kv * E); W(m->wv[l], kv * E);
        W(m->wo[l], E * q); W(m->qn[l], (size_t)m->D); W(m->kn[l], (size_t)m->D); W(m->fn[l], E);
        if (m->moe) W(m->router[l], (size_t)m->X * E);
        W(m->gate[l], X * F * E); W(m->up[l], X * F * E); W(m->down[l], X * E * F);
    }
#undef W
    REQUIRE(gguf_writer_finish(w) == 0);
}

static void ref_rms(const float *x, const float *w, int n, float eps, double *y)
{
    double ss = 0;
    for (int i = 0; i < n; i++) ss += (double)x[i] * x[i];
    double s = 1 / sqrt(ss / n + eps);
    for (int i = 0; i < n; i++) y[i] = x[i] * s * w[i];
}

/* y[o] = sum_i W[o][i] x[i] */
static void ref_mv(const float *W, const double *x, int nin, int nout, double *y)
{
    for (int o = 0; o < nout; o++) {
        double s = 0;
        for (int i = 0; i < nin; i++) s += (double)W[(size_t)o * nin + i] * x[i];
        y[o] = s;
    }
}

/* NeoX rotation of one head at position pos, with llama.cpp's YaRN when
 * factor > 0: per dimension pair, a ramp between interpolated (theta /
 * factor) and extrapolated theta, and a magnitude 1 + 0.1 ln(factor). */
static void ref_rope(double *x, int d, int pos, const struct rm *m)
{
    double lo = 0, hi = 0, fs = 1, ms = 1;
    if (m->factor > 0) {
        fs = 1.0 / m->factor;
        lo = floor(d * log(m->ctx_orig / (32 * 2 * M_PI)) / (2 * log(m->base)));
        hi = ceil(d * log(m->ctx_orig / (1 * 2 * M_PI)) / (2 * log(m->base)));
        if (lo < 0) lo = 0;
        if (hi > d - 1) hi = d - 1;
        ms = 1 + 0.1 * log(m->factor);
    }
    for (int i = 0; i < d / 2; i++) {
        double te = pos * pow(m->base, -2.0 * i / d), th = fs * te;
        if (m->factor > 0) {
            double y = (i - lo) / fmax(0.001, hi - lo);
            double mix = 1 - fmin(1, fmax(0, y));
            th = th * (1 - mix) + te * mix;
        }
        double c = cos(th) * ms, s = sin(th) * ms, a = x[i], b = x[i + d / 2];
        x[i] = a * c - b * s;
        x[i + d / 2] = a * s + b * c;
    }
}

static double silu_d(double x) { return x / (1 + exp(-x)); }

/* Logits of every position, recomputing keys and values from scratch. */
static double *ref_forward(const struct rm *m, const int32_t *tok, int n)
{
    const int E = m->E, D = m->D, q = m->H * D, kv = m->HKV * D;
    float *x = malloc((size_t)n * E * sizeof *x);
    double *K = malloc((size_t)n * kv * sizeof *K), *Vv = malloc((size_t)n * kv * sizeof *Vv);
    double *Q = malloc((size_t)n * q * sizeof *Q), *xn = malloc((size_t)(E > m->F ? E : m->F) * 8 * sizeof *xn);
    double *att = malloc((size_t)q * sizeof *att), *tmp = malloc((size_t)(E + m->F * 2 + m->X + 8) * sizeof *tmp);
    double *logits = malloc((size_t)n * m->V * sizeof *logits);
    for (int t = 0; t < n; t++) memcpy(x + (size_t)t * E, m->embd + (size_t)tok[t] * E, E * sizeof(float));
    for (int l = 0; l < m->L; l++) {
        for (int t = 0; t < n; t++) {
            ref_rms(x + (size_t)t * E, m->an[l], E, m->eps, xn);
            ref_mv(m->wq[l], xn, E, q, Q + (size_t)t * q);
            ref_mv(m->wk[l], xn, E, kv, K + (size_t)t * kv);
            ref_mv(m->wv[l], xn, E, kv, Vv + (size_t)t * kv);
            for (int h = 0; h < m->H + m->HKV; h++) {
                double *v = h < m->H ? Q + (size_t)t * q + h * D : K + (size_t)t * kv + (h - m->H) * D;
                float tmpf[256];
                for (int i = 0; i < D; i++) tmpf[i] = (float)v[i];
                ref_rms(tmpf, h < m->H ? m->qn[l] : m->kn[l], D, m->eps, v);
                ref_rope(v, D, t, m);
            }
        }
        for (int t = 0; t < n; t++) {
            for (int h = 0; h < m->H; h++) {
                int g = h / (m->H / m->HKV);
                double sc[256], mx = -1e300, sum = 0;
                for (int p = 0; p <= t; p++) {
                    double s = 0;
                    for (int i = 0; i < D; i++) s += Q[(size_t)t * q + h * D + i] * K[(size_t)p * kv + g * D + i];
                    sc[p] = s / sqrt(D);
                    mx = fmax(mx, sc[p]);
                }
                for (int p = 0; p <= t; p++) { sc[p] = exp(sc[p] - mx); sum += sc[p]; }
                for (int i = 0; i < D; i++) {
                    double o = 0;
                    for (int p = 0; p <= t; p++) o += sc[p] / sum * Vv[(size_t)p * kv + g * D + i];
                    att[h * D + i] = o;
                }
            }
            ref_mv(m->wo[l], att, q, E, tmp);
            for (int i = 0; i < E; i++) x[(size_t)t * E + i] += (float)tmp[i];
        }
        for (int t = 0; t < n; t++) {
            float *xr = x + (size_t)t * E;
            ref_rms(xr, m->fn[l], E, m->eps, xn);
            double *g = tmp, *u = tmp + m->F, *o = tmp + 2 * m->F + m->X + 4;
            double acc[256] = { 0 };
            int nx = m->moe ? m->XU : 1;
            int sel[8];
            double wsel[8];
            if (m->moe) {
                double pr[64], mx = -1e300, sum = 0;
                ref_mv(m->router[l], xn, E, m->X, pr);
                for (int e = 0; e < m->X; e++) mx = fmax(mx, pr[e]);
                for (int e = 0; e < m->X; e++) { pr[e] = exp(pr[e] - mx); sum += pr[e]; }
                double ws = 0;
                for (int k = 0; k < m->XU; k++) {
                    int b = -1;
                    for (int e = 0; e < m->X; e++) {
                        int taken = 0;
                        for (int kk = 0; kk < k; kk++) taken |= sel[kk] == e;
                        if (!taken && (b < 0 || pr[e] > pr[b])) b = e;
                    }
                    sel[k] = b;
                    wsel[k] = pr[b] / sum;
                    ws += wsel[k];
                }
                for (int k = 0; k < m->XU; k++) wsel[k] /= ws;
            } else {
                sel[0] = 0;
                wsel[0] = 1;
            }
            for (int k = 0; k < nx; k++) {
                size_t off = (size_t)sel[k] * m->F * E;
                ref_mv(m->gate[l] + off, xn, E, m->F, g);
                ref_mv(m->up[l] + off, xn, E, m->F, u);
                double hbuf[512];
                for (int i = 0; i < m->F; i++) hbuf[i] = silu_d(g[i]) * u[i];
                ref_mv(m->down[l] + (size_t)sel[k] * E * m->F, hbuf, m->F, E, o);
                for (int i = 0; i < E; i++) acc[i] += wsel[k] * o[i];
            }
            for (int i = 0; i < E; i++) xr[i] += (float)acc[i];
        }
    }
    for (int t = 0; t < n; t++) {
        ref_rms(x + (size_t)t * E, m->onorm, E, m->eps, xn);
        ref_mv(m->out, xn, E, m->V, logits + (size_t)t * m->V);
    }
    free(x); free(K); free(Vv); free(Q); free(xn); free(att); free(tmp);
    return logits;
}

static void check_against_reference(int moe, float factor)
{
    struct rm m = { .moe = moe, .V = 96, .E = 64, .L = 2, .H = 4, .HKV = 2, .D = 32, .F = 96,
                    .X = 6, .XU = 2, .ctx = 64, .ctx_orig = 16, .base = 10000, .factor = factor,
                    .eps = 1e-5f };
    build(&m);
    const char *path = test_tmp(moe ? "ref-moe.gguf" : "ref-dense.gguf");
    save(&m, path);
    int32_t tok[20];
    for (int i = 0; i < 20; i++) tok[i] = (i * 29 + 3) % m.V;
    double *want = ref_forward(&m, tok, 20);
    int V;
    float *got = logits_of(path, tok, 20, &V);
    REQUIRE(V == m.V);
    double md = 0, mx = 0;
    for (size_t i = 0; i < (size_t)20 * V; i++) {
        md = fmax(md, fabs(got[i] - want[i]));
        mx = fmax(mx, fabs(want[i]));
    }
    printf("  %s%s: max |engine - reference| = %.2e (max |logit| %.2f)\n", moe ? "qwen3moe" : "qwen3",
           factor > 0 ? " + YaRN" : "", md, mx);
    CHECKF(md < 2e-3 * fmax(1, mx), "max diff %g", md);
    free(got);
    free(want);
    free_rm(&m);
}

TEST(engine_dense_qwen3_yarn_matches_reference)
{
    check_against_reference(0, 4.0f);
    check_against_reference(0, 0);
}

TEST(engine_moe_matches_reference)
{
    check_against_reference(1, 0);
    check_against_reference(1, 2.0f);
}

/* The loader names the file and the key or tensor at fault. */
TEST(engine_model_errors_name_the_field)
{
    struct { int fault; const char *want; } cases[] = {
        { BAD_KV_HEADS, "head_count_kv" },
        { NO_K_NORM, "missing tensor blk.1.attn_k_norm.weight" },
        { BAD_DOWN_SHAPE, "blk.0.ffn_down_exps.weight has shape" },
        { BAD_ROPE_TYPE, "rope.scaling.type" },
        { USED_GT_COUNT, "expert_used_count" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct rm m = { .moe = 1, .V = 32, .E = 64, .L = 2, .H = 4, .HKV = 2, .D = 32, .F = 32,
                        .X = 4, .XU = 2, .ctx = 64, .ctx_orig = 16, .base = 10000, .factor = 2,
                        .eps = 1e-5f };
        build(&m);
        char name[32];
        snprintf(name, sizeof name, "bad%zu.gguf", i);
        const char *path = test_tmp(name);
        sabotage = cases[i].fault;
        save(&m, path);
        sabotage = OK;
        free_rm(&m);
        struct moeq_engine_params p = { .model_path = path, .n_threads = 1, .n_ctx = 16 };
        char err[512] = "";
        moeq_engine *e = moeq_engine_open(&p, err, sizeof err);
        CHECKF(e == NULL, "case %zu opened", i);
        CHECKF(strstr(err, cases[i].want) && strstr(err, path), "case %zu: '%s'", i, err);
        printf("  %s\n", err);
        moeq_engine_close(e);
    }
}

/* Computing with another file's bytes for every weight gives that file's
 * logits exactly; restoring gives the first file's again; bad overrides
 * are refused with the weight named. */
TEST(engine_override_weight_matches_the_other_file)
{
    const char *f32 = test_synth_model("ov-f32.gguf", "");
    const char *q8 = test_synth_model("ov-q8.gguf", "--type Q8_0 --mode quantize");
    int32_t tok[12];
    for (int i = 0; i < 12; i++) tok[i] = (i * 53 + 7) % 400;
    int V;
    float *ref32 = logits_of(f32, tok, 12, &V), *ref8 = logits_of(q8, tok, 12, &V);
    moeq_engine *e = open_path(f32, 64, 16);
    char err[512];
    gguf_file *g = gguf_open(q8, err, sizeof err);
    REQUIREF(g, "%s", err);
    int swapped = 0;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const gguf_tensor *t = &g->tensors[i];
        char name[128];
        snprintf(name, sizeof name, "%.*s", (int)t->name.n, t->name.s);
        if (t->type == MOEQ_TYPE_F32 || t->n_dims < 2) continue;
        REQUIREF(moeq_engine_override_weight(e, name, (int)t->type, t->data, t->nbytes, err, sizeof err) == 0, "%s", err);
        swapped++;
    }
    CHECK(swapped > 4);
    float *lg = malloc((size_t)12 * V * sizeof *lg);
    REQUIRE(lg);
    for (int pass = 0; pass < 2; pass++) {
        moeq_session *s = moeq_session_new(e, err, sizeof err);
        REQUIRE(s);
        REQUIREF(moeq_session_eval(s, tok, 12, lg, err, sizeof err) == 0, "%s", err);
        CHECK(memcmp(lg, pass ? ref32 : ref8, (size_t)12 * V * sizeof *lg) == 0);
        moeq_session_free(s);
        for (uint64_t i = 0; !pass && i < g->n_tensors; i++) {
            char name[128];
            snprintf(name, sizeof name, "%.*s", (int)g->tensors[i].name.n, g->tensors[i].name.s);
            if (g->tensors[i].type != MOEQ_TYPE_F32 && g->tensors[i].n_dims >= 2)
                REQUIRE(moeq_engine_override_weight(e, name, 0, NULL, 0, err, sizeof err) == 0);
        }
    }
    const gguf_tensor *t = &g->tensors[gguf_find_tensor(g, "blk.0.attn_q.weight")];
    CHECK(moeq_engine_override_weight(e, "blk.0.attn_q.weight", (int)t->type, t->data, t->nbytes - 1, err, sizeof err) == -1 &&
          strstr(err, "blk.0.attn_q.weight"));
    CHECK(moeq_engine_override_weight(e, "blk.9.nothing", (int)t->type, t->data, t->nbytes, err, sizeof err) == -1 &&
          strstr(err, "blk.9.nothing"));
    free(lg); free(ref32); free(ref8);
    gguf_close(g);
    moeq_engine_close(e);
}
