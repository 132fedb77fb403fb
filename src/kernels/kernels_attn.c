/*
 * kernels_attn.c: the attention kernels the engine runs over its KV cache
 * (row conversion, scores, weighted V sums, exp; for Q8_0 K the integer
 * scores over rows moeq_quantize_act quantized), the SwiGLU product
 * silu(g) * u, and the choice of their ISA. Public through kernels.h;
 * the SIMD twins are written once in kernels_attn_simd.h and compiled
 * into each ISA file (kernels_avx2.c, kernels_avx512.c), whose tables
 * (kernels_isa.h) this file picks from.
 *
 * The scalar code below is the reference: libm's expf, plain loops. The
 * SIMD twins keep their own (different) fixed lane order, so one CPU
 * always gives the same bits for a (token, head), and the AVX2 and AVX-512
 * compilations of the twins run the same operations in the same order.
 */
#include "kernels/kernels.h"
#include "kernels/kernels_isa.h"
#include "quant/quants.h"
#include "quant/quants_blocks.h"

#include <math.h>

static inline float silu(float x) { return x / (1.0f + expf(-x)); }

/* g[i] = silu(g[i]) * u[i]. */
static void silu_mul_scalar(float *g, const float *u, size_t n)
{
    for (size_t i = 0; i < n; i++) g[i] = silu(g[i]) * u[i];
}

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
        for (int i = 0; i < d; i++) dst[(size_t)p * d + i] = moeq_f16_to_f32(h[i]);
    }
}

static void cvt_q8_0(const uint8_t *src, size_t stride, int n, int d, float *dst, float *ds)
{
    const int nb = d / QK8_0;
    for (int p = 0; p < n; p++) {
        const block_q8_0 *b = (const block_q8_0 *)(src + (size_t)p * stride);
        for (int j = 0; j < nb; j++) {
            ds[p * nb + j] = moeq_f16_to_f32(b[j].d);
            for (int i = 0; i < QK8_0; i++) dst[(size_t)p * d + j * QK8_0 + i] = (float)b[j].qs[i];
        }
    }
}

/* Q8_0 K against Q8_0 query rows (kernels.h): exact integer block sums,
 * then the float steps every ISA's twin performs in the same order. */
static void scores_q8(const void *const *q, int nr, const uint8_t *k, size_t stride, int np, int d,
                      float scale, float *sc, size_t ld)
{
    const int nb = d / QK8_0;
    for (int r = 0; r < nr; r++) {
        const block_q8_0 *qr = q[r];
        for (int p = 0; p < np; p++) {
            const block_q8_0 *kp = (const block_q8_0 *)(k + (size_t)p * stride);
            float acc = 0;
            for (int j = 0; j < nb; j++) {
                int32_t s = 0;
                for (int i = 0; i < QK8_0; i++) s += (int32_t)qr[j].qs[i] * kp[j].qs[i];
                acc = fmaf((float)s, moeq_f16_to_f32(qr[j].d) * moeq_f16_to_f32(kp[j].d), acc);
            }
            sc[(size_t)r * ld + p] = acc * scale;
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

/* The SIMD row where the ISA (at most the CPU's best) has one. */
static const struct moeq_attn_simd *simd_of(int isa)
{
    int best = moeq_isa_best();
    const struct moeq_isa_kernels *k = moeq_isa_kernels_of(isa < best ? isa : best);
    return k ? k->attn : NULL;
}

void moeq_attn_pick(int isa, int type_k, int type_v, int d, struct moeq_attn_ops *o)
{
    const int k16 = type_k == MOEQ_TYPE_F16, v16 = type_v == MOEQ_TYPE_F16;
    const struct moeq_attn_simd *s = d % 16 == 0 ? simd_of(isa) : NULL;
    if (s) {
        o->cvt_k = k16 ? s->f16.cvt : s->q8_0.cvt;
        o->cvt_v = v16 ? s->f16.cvt : s->q8_0.cvt;
        o->scores = k16 ? s->f16.scores : NULL;
        o->accum = v16 ? s->f16.accum : s->q8_0.accum;
        o->scores_q8 = k16 ? NULL : d / QK8_0 <= ATTN_Q8_MAXB ? s->scores_q8 : scores_q8;
        o->exp_shift = s->exp_shift;
        return;
    }
    o->cvt_k = k16 ? cvt_f16 : cvt_q8_0;
    o->cvt_v = v16 ? cvt_f16 : cvt_q8_0;
    o->scores = k16 ? scores_f16 : NULL;
    o->accum = v16 ? accum_f16 : accum_q8_0;
    o->scores_q8 = k16 ? NULL : scores_q8;
    o->exp_shift = exp_shift;
}

void moeq_silu_mul(float *g, const float *u, size_t n)
{
    const struct moeq_attn_simd *s = simd_of(MOEQ_ISA_COUNT);
    if (s) s->silu_mul(g, u, n);
    else silu_mul_scalar(g, u, n);
}
