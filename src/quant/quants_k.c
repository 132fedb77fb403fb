/*
 * quants_k.c: encoding rows into the scalar, legacy, K- and 4-bit
 * non-linear ggml formats (F16, BF16, Q4_0, Q8_0, Q2_K..Q6_K, IQ4_NL,
 * IQ4_XS). The i-quant lattices live in quants_iq.c.
 *
 * Every format here is "integer codes times a block scale (minus a block
 * min)", so every quantizer is a weighted least-squares fit. The weights
 * follow ggml's imatrix-aware quantizers: with an importance vector qw the
 * weight of element j is qw[j] * sqrt(sigma2 + x[j]^2) (sigma2 a multiple of
 * the block's mean square; Q6_K takes qw alone); without one, each format
 * uses ggml's fallback (x^2, or |x| + rms). The search has three stages:
 *   1. per sub-block, a scan of candidate inverse scales (ggml's candidates
 *      and a few more), each followed by the closed-form least-squares scale
 *      (and min) for the codes it rounds to, then coordinate refinement;
 *   2. the sub-block scales are themselves quantized against the super-block
 *      scale with the sub-blocks' total weights (a weighted fit again);
 *   3. a refinement ggml lacks: with the stored (fp16-rounded) super-block
 *      scales fixed, each sub-block tries its integer scale (and min) codes
 *      in a small neighbourhood and keeps the best after re-rounding its
 *      codes; then the super-block scales are refit to those codes and the
 *      pass repeats while the error drops.
 * Stages 1-2 follow ggml's search (alone when built with MOEQ_KQ_PLAIN;
 * the sums are accumulated differently here, in four float lanes, so
 * near-ties may fall the other way). Stage 3 judges by the importance
 * alone (qw, the mean squared activation: the error the layer's output
 * sees), or by the fallback weights without an imatrix, and only accepts a
 * change that lowers it, so the result is never worse in that error than
 * the choice of stages 1-2.
 *
 * Rows are independent and all scratch is on the stack: the functions are
 * pure and may run from many threads at once.
 */
#include "quant/quants.h"
#include "quant/quants_blocks.h"

#include <math.h>
#include <string.h>
/* SSE2 forms of a few vector steps (same results as the generic code,
 * which -DMOEQ_KQ_GENERIC selects to check that) */
#if defined(__SSE2__) && !defined(MOEQ_KQ_GENERIC)
#define KQ_SSE2 1
#include <emmintrin.h>
#endif

/* Build with -DMOEQ_KQ_PLAIN to skip the extra search of stages 1 and 3:
 * the blocks then follow ggml's choices, which is how the format and the
 * weighting were checked against reference files. */
#ifdef MOEQ_KQ_PLAIN
enum { KQ_REFINE = 0 };
#else
enum { KQ_REFINE = 1 };
#endif

#define GROUP_EPS 1e-15f
/* Search effort of the refinement (stage 3 radius and passes; candidate
 * density of stage 1 as a multiple of ggml's). Chosen on tiny-a tensors:
 * these keep most of the error reduction at a fraction of the cost of
 * wider searches (radius 2 for the asymmetric formats and denser scans
 * gain under 1% more). */
#ifndef KQ_RA
#define KQ_RA 1        /* (ls, lm) neighbourhood of asymmetric formats */
#endif
#ifndef KQ_RS
#define KQ_RS 2        /* ls neighbourhood of symmetric formats */
#endif
#ifndef KQ_PASSES
#define KQ_PASSES 2
#endif
#ifndef KQ_SYMW
#define KQ_SYMW 18     /* fit_sym scans +-KQ_SYMW/20 around nmax */
#endif
#ifndef KQ_SYMHALF
#define KQ_SYMHALF 0   /* 1: also the half steps of that scan */
#endif
#ifndef KQ_NLSUB
#define KQ_NLSUB 1     /* fit_nl scan steps per code unit */
#endif
#ifndef KQ_DENS
#define KQ_DENS 1      /* fit_asym scan density */
#endif

/* ------------------------------------------------------------ helpers */

/* Round to nearest, ties to even, for |v| < 2^22: adding 1.5*2^23 puts the
 * integer in the low mantissa bits. Outside that range (or for NaN) the
 * result is some bounded integer, never undefined behaviour; every caller
 * clamps it to its code range. */
static inline int iround(float v)
{
    float t = v + 12582912.f;
    int32_t i;
    memcpy(&i, &t, 4);
    return (i & 0x7fffff) - 0x400000;
}

static inline int clampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

static inline float fp16_round(float v) { return moeq_f16_to_f32(moeq_f32_to_f16(v)); }

/*
 * Four-lane float vectors (GCC/Clang vector extensions: SSE2 on baseline
 * x86-64, NEON on ARM, plain code elsewhere) for the inner loops that
 * round a sub-block at one candidate scale: those loops are nearly all of
 * the quantizers' time. Only +, -, * and bit selects are used, in an order
 * the source fixes, and nothing is fused into FMAs (GCC's default for ISO
 * C; Clang is told below), so every build computes the same bits;
 * sub-block lengths are multiples of 4.
 *
 * Codes are kept as floats here: clamping first and then rounding with the
 * 1.5*2^23 trick gives the same integers as iround/clampi (ties to even),
 * and a NaN input clamps to the low end.
 */
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif
typedef float v4f __attribute__((vector_size(16)));
typedef int32_t v4i __attribute__((vector_size(16)));

#define V4_ROUND 12582912.f

static inline v4f v4_load(const float *p) { v4f v; memcpy(&v, p, sizeof v); return v; }
static inline void v4_store(float *p, v4f v) { memcpy(p, &v, sizeof v); }
static inline v4f v4_set(float a) { return (v4f){ a, a, a, a }; }
static inline float v4_sum(v4f a) { return (a[0] + a[1]) + (a[2] + a[3]); }
static inline v4f v4_sel(v4i m, v4f a, v4f b) { return (v4f)((m & (v4i)a) | (~m & (v4i)b)); }
/* Index of the first largest element of p[0..n) if that is > 0, else -1
 * (what a scalar "if (p[i] > best)" loop from best = 0 finds). */
static inline int v4_argmax_pos(const float *p, int n)
{
    v4f m = v4_set(0);
    for (int i = 0; i < n; i += 4) { v4f v = v4_load(p + i); m = v4_sel(v > m, v, m); }
    float mx = m[0];
    for (int k = 1; k < 4; k++) mx = m[k] > mx ? m[k] : mx;
    if (!(mx > 0)) return -1;
#ifdef KQ_SSE2
    /* first match by bit mask: the exit of a search loop mispredicts */
    const __m128 vmx = _mm_set1_ps(mx);
    for (int i = 0; ; i += 4) {
        int bits = _mm_movemask_ps(_mm_cmpeq_ps(_mm_loadu_ps(p + i), vmx));
        if (bits) return i + __builtin_ctz((unsigned)bits);
    }
#else
    int j = 0;
    while (p[j] != mx) j++;
    return j;
#endif
}

/* round(v) clamped to [lo, hi]; NaN -> lo. SSE's maxps/minps are exactly
 * these selects (second operand on NaN), in one instruction each. */
static inline v4f v4_code(v4f v, v4f lo, v4f hi)
{
#ifdef KQ_SSE2
    v = (v4f)_mm_min_ps(_mm_max_ps((__m128)v, (__m128)lo), (__m128)hi);
#else
    v = v4_sel(v > lo, v, lo);
    v = v4_sel(v < hi, v, hi);
#endif
    const v4f r = v4_set(V4_ROUND);
    return (v + r) - r;
}

/* sum of x^2, n a multiple of 4 (four lanes: a 256-long chain of scalar
 * additions showed in profiles) */
static float sum_sq(const float *x, int n)
{
    v4f s = v4_set(0);
    for (int i = 0; i < n; i += 4) { v4f v = v4_load(x + i); s += v * v; }
    return v4_sum(s);
}

/*
 * Weights of one sub-block. With importance qw: qw * sqrt(sigma2 + x^2)
 * (ggml's form: importance times a magnitude term that keeps large weights
 * from being flattened). Without: the caller's fallback kind. A sub-block
 * whose importances are all zero (never-activated columns) gets the fallback
 * too, so a fit always has something to weigh. n is a multiple of 4.
 */
enum wkind { W_X2, W_RMS_ABS, W_SQRT_SIGMA };

static void make_weights(const float *x, const float *qw, int n, float sigma2,
                         enum wkind fallback, float *w, float *wf)
{
    if (qw) {
        float s = 0;
#ifdef KQ_SSE2
        /* sqrtps rounds as sqrtf does; sqrtf's errno check kept the loop scalar */
        for (int i = 0; i < n; i += 4) {
            v4f v = v4_load(x + i);
            v4f r = v4_load(qw + i) * (v4f)_mm_sqrt_ps((__m128)(v4_set(sigma2) + v * v));
            v4_store(w + i, r);
            s += (r[0] + r[1]) + (r[2] + r[3]);
        }
#else
        for (int i = 0; i < n; i++) {
            w[i] = qw[i] * sqrtf(sigma2 + x[i] * x[i]);
            s += w[i];
        }
#endif
        if (s > 0 && isfinite(s)) {
            if (wf) memcpy(wf, qw, (size_t)n * sizeof *wf);
            return;
        }
    }
    float av = sqrtf(sigma2);
    switch (fallback) {
    case W_X2:
        for (int i = 0; i < n; i++) w[i] = x[i] * x[i];
        break;
    case W_RMS_ABS:
        for (int i = 0; i < n; i++) w[i] = av + fabsf(x[i]);
        break;
    case W_SQRT_SIGMA:
#ifdef KQ_SSE2
        for (int i = 0; i < n; i += 4) {
            v4f v = v4_load(x + i);
            v4_store(w + i, (v4f)_mm_sqrt_ps((__m128)(v4_set(sigma2) + v * v)));
        }
#else
        for (int i = 0; i < n; i++) w[i] = sqrtf(sigma2 + x[i] * x[i]);
#endif
        break;
    }
    /* all-zero sub-block with x^2 weights: uniform keeps fits defined */
    float s = 0;
    for (int i = 0; i < n; i++) s += w[i];
    if (!(s > 0)) for (int i = 0; i < n; i++) w[i] = 1;
    if (wf) memcpy(wf, w, (size_t)n * sizeof *wf);
}

/* ------------------------------------------------- symmetric sub-block fit */

/* Codes round(iscale * x) in [-nmax, nmax-1] into T (unless NULL) and their sums
 * out = {sum w x l, sum w l^2}. */
static inline void sym_round(int n, int nmax, float iscale, const float *x, const float *w,
                             const float *wx, float *T, float out[2])
{
    const v4f vi = v4_set(iscale), lo = v4_set((float)-nmax), hi = v4_set((float)(nmax - 1));
    v4f sxl = v4_set(0), sll = sxl;
    for (int i = 0; i < n; i += 4) {
        v4f l = v4_code(vi * v4_load(x + i), lo, hi);
        if (T) v4_store(T + i, l);
        sxl += v4_load(wx + i) * l;
        sll += v4_load(w + i) * l * l;
    }
    out[0] = v4_sum(sxl); out[1] = v4_sum(sll);
}

/*
 * Fit x ~ s*l, l integer in [-nmax, nmax-1], minimising sum w (x - s l)^2.
 * For fixed codes the best s is sum(wxl)/sum(wll) and the error drop is
 * sum(wxl)^2/sum(wll), so candidates compare on that ratio. Candidate
 * inverse scales map the largest |x| to -nmax or nmax-1 (give or take a
 * fraction); then a greedy pass moves single codes by one while that helps,
 * and a final alternation re-rounds all codes at the fitted scale.
 * Writes signed codes to L and returns s (0 for an all-zero input).
 * n is a multiple of 4, at most 32.
 */
static float fit_sym(int n, int nmax, const float *x, const float *w, int8_t *L)
{
    float amax = 0, max = 0;
    for (int i = 0; i < n; i++) {
        float a = fabsf(x[i]);
        if (a > amax) { amax = a; max = x[i]; }
    }
    if (amax < GROUP_EPS) { memset(L, 0, (size_t)n); return 0; }

    /* candidates: two sides of up to 2 * max(KQ_SYMW, 18) + 1 steps */
    enum { NCAND = 2 * (2 * (KQ_SYMW > 18 ? KQ_SYMW : 18) + 1) };
    float best = -1, cs[2], cxl[NCAND], cll[NCAND], ci[NCAND];
    float wx[32], T[32], B[32];
    for (int i = 0; i < n; i++) wx[i] = w[i] * x[i];
    /* ggml's grid is 0.1 steps over +-0.9; the refined search adds the half
     * steps between them and a wider reach. Candidates are independent:
     * their sums first, the choice after (no branch in the hot loop). */
    const int lo = KQ_REFINE ? -KQ_SYMW : -18, hi = KQ_REFINE ? KQ_SYMW : 18;
    int nc = 0;
    for (int side = 0; side < 2; side++) {
        for (int is = lo; is <= hi; is++) {
            if ((!KQ_REFINE || KQ_SYMHALF == 0) && (is & 1)) continue;
            float target = side == 0 ? -(nmax + 0.05f * is) : (nmax - 1 + 0.05f * is);
            ci[nc] = target / max;
            sym_round(n, nmax, ci[nc], x, w, wx, NULL, cs);
            cxl[nc] = cs[0]; cll[nc] = cs[1]; nc++;
        }
    }
    int bc = -1;
    for (int c = 0; c < nc; c++) {
        if (cll[c] > 0 && (best < 0 || cxl[c] * cxl[c] > best * cll[c])) {
            best = cxl[c] * cxl[c] / cll[c]; bc = c;
        }
    }
    if (bc < 0) { memset(L, 0, (size_t)n); return 0; }
    sym_round(n, nmax, ci[bc], x, w, wx, B, cs);
    float sxl = cxl[bc], sll = cll[bc], s = sxl / sll;

    /* greedy: move the code whose weighted residual pulls hardest */
    const v4f vlo = v4_set((float)-nmax), vhi = v4_set((float)(nmax - 1)), zero = v4_set(0);
    for (int iter = 0; iter < n * (2 * nmax - 1); iter++) {
        float pull[32];
        const v4f vs = v4_set(s);
        for (int i = 0; i < n; i += 4) {
            v4f l = v4_load(B + i), g = vs * v4_load(w + i) * (v4_load(x + i) - vs * l);
            v4i movable = ((g > zero) & (l < vhi)) | ((g < zero) & (l > vlo));
            v4_store(pull + i, v4_sel(movable, v4_sel(g < zero, -g, g), zero));
        }
        int j = v4_argmax_pos(pull, n);
        if (j < 0) break;
        float g = s * w[j] * (x[j] - s * B[j]);
        int d = g > 0 ? 1 : -1, lj = (int)B[j];
        float nxl = sxl + d * w[j] * x[j];
        float nll = sll + w[j] * (2 * lj * d + 1);
        if (nll > 0 && nxl * nxl > best * nll) {
            sxl = nxl; sll = nll; best = sxl * sxl / sll; s = sxl / sll;
            B[j] = (float)(lj + d);
        } else {
            break;
        }
    }

    if (KQ_REFINE) {
        for (int it = 0; it < 4; it++) {
            sym_round(n, nmax, 1 / s, x, w, wx, T, cs);
            float nxl = cs[0], nll = cs[1];
            if (!(nll > 0 && nxl * nxl > best * nll * (1 + 1e-7f))) break;
            sxl = nxl; sll = nll; best = sxl * sxl / sll; s = sxl / sll;
            memcpy(B, T, (size_t)n * sizeof *T);
        }
    }
    for (int i = 0; i < n; i++) L[i] = (int8_t)B[i];
    return s;
}

/* ------------------------------------------------ asymmetric sub-block fit */

/* Weighted error of x ~ s*l - m from the sums, in double (cancellation). */
static double asym_err(double sw, double sx, double sx2, double sl, double sll, double sxl,
                       double s, double m)
{
    /* sum w (s l - m - x)^2 */
    return sx2 + s * s * sll + m * m * sw - 2 * s * sxl + 2 * m * sx - 2 * s * m * sl;
}

/* Closed-form weighted least squares for (s, m) with m >= 0 (the format
 * subtracts a non-negative min); returns 0 when degenerate. */
static int asym_solve(double sw, double sx, double sl, double sll, double sxl,
                      double *s, double *m)
{
    double D = sw * sll - sl * sl;
    if (!(D > 0)) return 0;
    double ss = (sw * sxl - sx * sl) / D;
    double mm = (sl * sxl - sll * sx) / D;   /* x ~ ss*l - mm */
    if (mm < 0) { mm = 0; if (!(sll > 0)) return 0; ss = sxl / sll; }
    *s = ss; *m = mm;
    return 1;
}

/*
 * Whether the least-squares (s, m) of asym_solve for these sums has an
 * error below best, decided without dividing (the scan's hot path): at the
 * optimum the error is sx2 less the explained part N/D, or sxl^2/sll when
 * the min is clamped to 0.
 */
static inline int asym_beats(double sw, double sx, double sx2, double sl, double sll, double sxl,
                             double best)
{
    double D = sw * sll - sl * sl;
    if (!(D > 0)) return 0;
    double c = sx2 - best;
    if (sl * sxl - sll * sx >= 0)
        return sw * sxl * sxl - 2 * sl * sx * sxl + sll * sx * sx > c * D;
    return sll > 0 && sxl * sxl > c * sll;
}

/*
 * Codes of one asymmetric candidate, round(iscale * (x - min)) in [0, nmax],
 * into T, and their weighted sums: out = {sum w l, sum w l^2, sum w x l}.
 */
static inline void asym_round(int n, float nmax, float iscale, float min, const float *x,
                              const float *w, const float *wx, float *T, float out[3])
{
    const v4f vi = v4_set(iscale), vm = v4_set(min), lo = v4_set(0), hi = v4_set(nmax);
    v4f sl = lo, sll = lo, sxl = lo, sl2 = lo, sll2 = lo, sxl2 = lo;
    for (int i = 0; i < n; i += 8) {
        v4f l = v4_code(vi * (v4_load(x + i) - vm), lo, hi);
        v4f l2 = v4_code(vi * (v4_load(x + i + 4) - vm), lo, hi);
        v4_store(T + i, l); v4_store(T + i + 4, l2);
        v4f wl = v4_load(w + i) * l, wl2 = v4_load(w + i + 4) * l2;
        sl += wl; sll += wl * l; sxl += v4_load(wx + i) * l;
        sl2 += wl2; sll2 += wl2 * l2; sxl2 += v4_load(wx + i + 4) * l2;
    }
    out[0] = v4_sum(sl + sl2); out[1] = v4_sum(sll + sll2); out[2] = v4_sum(sxl + sxl2);
}

/* Weighted error sum w (s l - m - x)^2 of the codes T, computed directly. */
static inline double asym_direct(int n, const float *x, const float *w, const float *T,
                                 float s, float m)
{
    const v4f vs = v4_set(s), vm = v4_set(m);
    v4f e = v4_set(0), e2 = e;
    for (int i = 0; i < n; i += 8) {
        v4f r = vs * v4_load(T + i) - vm - v4_load(x + i);
        v4f r2 = vs * v4_load(T + i + 4) - vm - v4_load(x + i + 4);
        e += v4_load(w + i) * r * r;
        e2 += v4_load(w + i + 4) * r2 * r2;
    }
    return v4_sum(e + e2);
}

/*
 * Fit x ~ s*l - m, l in [0, nmax], s >= 0, m >= 0, minimising the weighted
 * squared error. Candidates: inverse scales (nmax + rmin + k*rdelta)/(max -
 * min) from the block's own min, each solved in closed form for (s, m); the
 * best then goes through single-code moves and (refined search) full
 * re-rounding at its own (s, m). Codes go to B (as floats); returns s,
 * stores m in *mout. n is 16 or 32.
 *
 * The candidates' sums are float (four lanes): they only screen, through
 * the division-free error formula with a margin for its cancellation; a
 * candidate that may win is judged by its error summed directly. The
 * single-code moves work on double sums of the chosen codes.
 */
static float fit_asym(int n, int nmax, const float *x, const float *w, float *B,
                      float *mout, float rmin, float rdelta, int nstep)
{
    float min = x[0], max = x[0];
    float wx[32], T[32], cs[3];
    double sw = 0, sx = 0, sx2 = 0;
    for (int i = 0; i < n; i++) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        wx[i] = w[i] * x[i];
        sw += w[i]; sx += (double)w[i] * x[i]; sx2 += (double)w[i] * x[i] * x[i];
    }
    if (min > 0) min = 0;
    if (max - min < 1e-10f) { memset(B, 0, (size_t)n * sizeof *B); *mout = -min; return 0; }

    const float fnmax = (float)nmax;
    double s = (max - min) / nmax, m = -min, best;
    asym_round(n, fnmax, nmax / (max - min), min, x, w, wx, B, cs);
    best = asym_direct(n, x, w, B, (float)s, (float)m);
    float bs[3] = { -1, -1, -1 };   /* sums of the best fitted codes */
    /* float sums make the formula's error uncertain by a few 1e-7 of sx2:
     * candidates within tol of the best are judged by their direct error
     * (exact fits, as when re-quantizing, hinge on that) */
    const double tol = 1e-5 * sx2;
    int steps = KQ_REFINE ? KQ_DENS * nstep : nstep;
    float dstep = KQ_REFINE ? rdelta / KQ_DENS : rdelta;
    for (int is = 0; is <= steps; is++) {
        /* like ggml, later candidates round from the best min found so far
         * (min tracks -m), which lets the scan follow the fit */
        float iscale = (rmin + dstep * is + nmax) / (max - min);
        asym_round(n, fnmax, iscale, min, x, w, wx, T, cs);
        double ts, tm;
        if (!asym_beats(sw, sx, sx2, cs[0], cs[1], cs[2], best + tol)) continue;
        /* neighbouring scales often round to the winner's codes again */
        if (cs[0] == bs[0] && cs[1] == bs[1] && cs[2] == bs[2]) continue;
        if (!asym_solve(sw, sx, cs[0], cs[1], cs[2], &ts, &tm)) continue;
        double e = asym_direct(n, x, w, T, (float)ts, (float)tm);
        if (e < best) {
            best = e; s = ts; m = tm; min = (float)-tm;
            memcpy(bs, cs, sizeof bs);
            memcpy(B, T, (size_t)n * sizeof *T);
        }
    }

    double sl = 0, sll = 0, sxl = 0;
    for (int i = 0; i < n; i++) {
        sl += (double)w[i] * B[i]; sll += (double)w[i] * B[i] * B[i]; sxl += (double)w[i] * B[i] * x[i];
    }
    /* single-code moves toward the residual, each refitting (s, m) */
    const v4f zero = v4_set(0), top = v4_set(fnmax);
    int last_j = -1, last_d = 0;
    for (int it = 0; it < nmax * n; it++) {
        float pull[32];
        const v4f vs = v4_set((float)s), vm = v4_set((float)m);
        for (int i = 0; i < n; i += 4) {
            v4f l = v4_load(B + i), g = v4_load(x + i) - vs * l + vm;
            v4i up = (g > zero) & (l < top), down = (g < zero) & (l > zero);
            v4_store(pull + i, v4_sel(up, g, v4_sel(down, -g, zero)));
        }
        int j = v4_argmax_pos(pull, n);
        if (j < 0) break;
        int d = x[j] - (float)s * B[j] + (float)m > 0 ? 1 : -1, lj = (int)B[j];
        if (j == last_j && d == -last_d) break;
        double nl = sl + w[j] * d, nll = sll + w[j] * (2.0 * lj * d + 1), nxl = sxl + (double)w[j] * x[j] * d;
        double ts, tm;
        if (!asym_solve(sw, sx, nl, nll, nxl, &ts, &tm) || ts < 0) break;
        double e = asym_err(sw, sx, sx2, nl, nll, nxl, ts, tm);
        if (!(e < best)) break;
        best = e; s = ts; m = tm; sl = nl; sll = nll; sxl = nxl;
        B[j] = (float)(lj + d);
        last_j = j; last_d = d;
    }

    if (KQ_REFINE && s > 0) {
        for (int it = 0; it < 4; it++) {
            asym_round(n, fnmax, (float)(1 / s), (float)-m, x, w, wx, T, cs);
            double ts, tm;
            if (!asym_solve(sw, sx, cs[0], cs[1], cs[2], &ts, &tm)) break;
            double e = asym_direct(n, x, w, T, (float)ts, (float)tm);
            if (!(e < best * (1 - 1e-9))) break;
            best = e; s = ts; m = tm;
            memcpy(B, T, (size_t)n * sizeof *T);
        }
    }
    *mout = (float)m;
    return (float)s;
}

/* ------------------------------------------- positive scale quantization */

/*
 * Quantize non-negative values v (sub-block scales or mins) to integers in
 * [0, nmax] times one scale, weighted by each sub-block's total weight.
 * Scans inverse scales near nmax/max, then moves single codes while the
 * weighted fit improves. Returns the scale.
 */
static float fit_pos(int n, int nmax, const float *v, const float *w, uint8_t *L)
{
    float max = 0;
    for (int i = 0; i < n; i++) if (v[i] > max) max = v[i];
    if (max < 1e-16f) { memset(L, 0, (size_t)n); return 0; }

    float iscale = nmax / max, best_mse = 0;
    {
        float s = 1 / iscale;
        for (int i = 0; i < n; i++) {
            int l = clampi(iround(iscale * v[i]), 0, nmax);
            float d = v[i] - s * l;
            best_mse += w[i] * d * d;
        }
    }
    for (int is = -4; is <= 4; is++) {
        if (is == 0) continue;
        float ti = (0.1f * is + nmax) / max, ts = 1 / ti, mse = 0;
        for (int i = 0; i < n; i++) {
            int l = clampi(iround(ti * v[i]), 0, nmax);
            float d = v[i] - ts * l;
            mse += w[i] * d * d;
        }
        if (mse < best_mse) { best_mse = mse; iscale = ti; }
    }
    float sxl = 0, sll = 0;
    for (int i = 0; i < n; i++) {
        int l = clampi(iround(iscale * v[i]), 0, nmax);
        L[i] = (uint8_t)l;
        sxl += w[i] * v[i] * l;
        sll += w[i] * l * l;
    }
    for (int it = 0; it < 5; it++) {
        int changed = 0;
        for (int i = 0; i < n; i++) {
            float rxl = sxl - w[i] * v[i] * L[i];
            float rll = sll - w[i] * L[i] * L[i];
            if (rxl > 0 && rll > 0) {
                int l = iround(v[i] * rll / rxl);
                if (l > nmax) l = nmax;
                if (l < 0) l = 0;
                if (l != L[i]) {
                    float nxl = rxl + w[i] * v[i] * l, nll = rll + w[i] * l * l;
                    if (nxl * nxl * sll > sxl * sxl * nll) {
                        L[i] = (uint8_t)l; sxl = nxl; sll = nll; changed++;
                    }
                }
            }
        }
        if (!changed) break;
    }
    return sll > 0 ? sxl / sll : 0;
}

/* ============================================================ F16 / BF16 */

static size_t quant_rows_f16(const float *src, void *dst, int64_t nrows, int64_t n, const float *qw)
{
    (void)qw;
    uint16_t *y = dst;
    for (int64_t i = 0; i < nrows * n; i++) y[i] = moeq_f32_to_f16(src[i]);
    return (size_t)(nrows * n) * 2;
}

static size_t quant_rows_bf16(const float *src, void *dst, int64_t nrows, int64_t n, const float *qw)
{
    (void)qw;
    uint16_t *y = dst;
    for (int64_t i = 0; i < nrows * n; i++) y[i] = moeq_f32_to_bf16(src[i]);
    return (size_t)(nrows * n) * 2;
}

size_t quantize_f16(const float *src, void *dst, int64_t nrows, int64_t n, const float *qw,
                    const struct moeq_quant_params *qp)
{ (void)qp; return quant_rows_f16(src, dst, nrows, n, qw); }
size_t quantize_bf16(const float *src, void *dst, int64_t nrows, int64_t n, const float *qw,
                     const struct moeq_quant_params *qp)
{ (void)qp; return quant_rows_bf16(src, dst, nrows, n, qw); }

/* ======================================================= the row driver */

/*
 * One block's encoder: x the block's values, qw its importance (NULL: none),
 * ms the row's mean square (only for formats that ask for it), unbias
 * whether to rescale the finished block (moeq_quant_unbiased), fb NULL or
 * Hessian-aware rounding's hook (the K-quants and IQ4_XS re-pick their
 * codes one column at a time through it); y the block.
 */
typedef void (*block_enc_fn)(const float *x, const float *qw, float ms, int unbias,
                             const struct moeq_quant_feedback *fb, void *y);

/* The row driver every block format here shares: each row of n values is
 * nb = n / qk blocks of `bytes` bytes, encoded by enc in order. */
static size_t quant_block_rows(block_enc_fn enc, int qk, size_t bytes, int row_ms,
                               const float *src, void *dst, int64_t nrows, int64_t n,
                               const float *qw, const struct moeq_quant_params *qp)
{
    const int64_t nb = n / qk;
    const int unbias = moeq_quant_unbiased(qp);
    uint8_t *y = dst;
    for (int64_t r = 0; r < nrows; r++, src += n) {
        /* ggml's Q4_0 / Q8_0 take sigma2 over the whole row, not the block */
        const float ms = row_ms ? sum_sq(src, (int)n) / (float)n : 0;
        for (int64_t ib = 0; ib < nb; ib++, y += bytes)
            enc(src + ib * qk, qw ? qw + ib * qk : NULL, ms, unbias, qp ? qp->fb : NULL, y);
    }
    return (size_t)(nrows * nb) * bytes;
}

/* quantize_NAME, the moeq_quant_fn of a block format: enc over every block
 * of QK values (BLOCK bytes); ROW_MS: enc wants the row's mean square. */
#define BLOCK_QUANTIZER(NAME, enc, QK, BLOCK, ROW_MS)                                   \
    size_t quantize_##NAME(const float *src, void *dst, int64_t nrows, int64_t n,      \
                           const float *qw, const struct moeq_quant_params *qp)        \
    { return quant_block_rows(enc, QK, sizeof(BLOCK), ROW_MS, src, dst, nrows, n, qw, qp); }

/* ============================================= single-scale linear blocks */

/*
 * Stage 3 for a block with one fp16 scale and codes in [lo, hi] (Q4_0,
 * Q8_0): the stored scale is the fp16 rounding of the fitted one, at which
 * the fitted codes may no longer be best. Tries re-rounding at the stored
 * scale, a few refit/re-round rounds, and the neighbouring fp16 values;
 * keeps whichever has the least weighted error. L holds signed codes.
 */
static float refine_linear(int n, int lo, int hi, const float *x, const float *w,
                           float d, int8_t *L)
{
    float best_d = fp16_round(d), best_e = 0;
    for (int i = 0; i < n; i++) { float r = x[i] - best_d * L[i]; best_e += w[i] * r * r; }
    if (!KQ_REFINE) return best_d;

    int8_t T[QK8_0];
    uint16_t h0 = moeq_f32_to_f16(best_d);
    float cand[8]; int nc = 0;
    for (int k = -2; k <= 2; k++) {
        int hv = (int)h0 + k;
        if (hv < 0 || hv > 0xffff) continue;
        float c = moeq_f16_to_f32((uint16_t)hv);
        if (c != c || isinf(c) || (c > 0) != (best_d > 0) || c == 0) continue;
        cand[nc++] = c;
    }
    for (int k = 0; k < nc + 3; k++) {
        float c;
        if (k < nc) c = cand[k];
        else {
            /* refit at the current best codes, then round to fp16 */
            float sxl = 0, sll = 0;
            for (int i = 0; i < n; i++) { sxl += w[i] * x[i] * L[i]; sll += w[i] * L[i] * L[i]; }
            if (!(sll > 0)) break;
            c = fp16_round(sxl / sll);
            if (c == 0 || c == best_d) break;
        }
        float ic = 1 / c, e = 0;
        for (int i = 0; i < n; i++) {
            int l = clampi(iround(ic * x[i]), lo, hi);
            T[i] = (int8_t)l;
            float r = x[i] - c * l;
            e += w[i] * r * r;
        }
        if (e < best_e) { best_e = e; best_d = c; memcpy(L, T, (size_t)n); }
    }
    return best_d;
}

/* ================================================================ Q4_0 */

static void enc_q4_0(const float *x, const float *qw, float sigma2, int unbias,
                     const struct moeq_quant_feedback *fb, void *out)
{
    (void)unbias; (void)fb;   /* 32-weight blocks: GPTQ works between blocks */
    block_q4_0 *y = out;
    float w[QK4_0], wf[QK4_0];
    int8_t L[QK4_0];
    make_weights(x, qw, QK4_0, sigma2, W_SQRT_SIGMA, w, wf);
    float d = fit_sym(QK4_0, 8, x, w, L);
    d = refine_linear(QK4_0, -8, 7, x, wf, d, L);
    y->d = moeq_f32_to_f16(d);
    for (int j = 0; j < 16; j++)
        y->qs[j] = (uint8_t)((L[j] + 8) | ((L[j + 16] + 8) << 4));
}
BLOCK_QUANTIZER(q4_0, enc_q4_0, QK4_0, block_q4_0, 1)

/* ================================================================ Q8_0 */

static void enc_q8_0(const float *x, const float *qw, float sigma2, int unbias,
                     const struct moeq_quant_feedback *fb, void *out)
{
    (void)unbias; (void)fb;
    block_q8_0 *y = out;
    float w[QK8_0], wf[QK8_0];
    int8_t L[QK8_0];
    float amax = 0;
    for (int j = 0; j < QK8_0; j++) amax = fmaxf(amax, fabsf(x[j]));
    float d = amax / 127, id = d ? 1 / d : 0;
    /* ggml's q8_0 is plain absmax; weights only steer the refinement.
     * Codes stay in [-127, 127]: -128 trips sign-based SIMD dots. */
    for (int j = 0; j < QK8_0; j++) L[j] = (int8_t)clampi(iround(x[j] * id), -127, 127);
    if (d > 0) {
        make_weights(x, qw, QK8_0, sigma2, W_SQRT_SIGMA, w, wf);
        d = refine_linear(QK8_0, -127, 127, x, wf, d, L);
    }
    y->d = moeq_f32_to_f16(d);
    memcpy(y->qs, L, QK8_0);
}
BLOCK_QUANTIZER(q8_0, enc_q8_0, QK8_0, block_q8_0, 1)

/* ====================================================== asymmetric K-quants */

/*
 * One super-block of an asymmetric K-quant (Q2_K: 16 x 16, 4-bit scales;
 * Q4_K / Q5_K: 8 x 32, 6-bit scales): value = d*ls*q - dmin*lm.
 * Outputs fp16-representable d and dmin, integer ls/lm and codes L.
 */
struct asym_shape {
    int nsub, sublen, nmax, smax;
    float rmin, rdelta; int nstep;
    float sigma_mul;           /* sigma2 = sigma_mul * mean(x^2) */
    enum wkind fallback;
};

/* Weighted error of one sub-block at (s, m) after rounding its codes (to
 * T, as floats; all 0 when s <= 0). */
static float asym_sub_err(const float *x, const float *w, int len, float nmax,
                          float s, float m, float *T)
{
    const v4f vi = v4_set(s > 0 ? 1 / s : 0), vm = v4_set(m), vs = v4_set(s);
    const v4f lo = v4_set(0), hi = v4_set(nmax);
    v4f e = lo;
    for (int i = 0; i < len; i += 4) {
        v4f xv = v4_load(x + i);
        v4f l = v4_code((xv + vm) * vi, lo, hi);
        v4_store(T + i, l);
        v4f r = vs * l - vm - xv;
        e += v4_load(w + i) * r * r;
    }
    return v4_sum(e);
}

/* Sums of codes T against weights w: out = {sum w l, sum w l^2, sum w x l}. */
static inline void code_sums(int n, const float *x, const float *w, const float *T, double out[3])
{
    v4f sl = v4_set(0), sll = sl, sxl = sl;
    for (int i = 0; i < n; i += 4) {
        v4f l = v4_load(T + i), wl = v4_load(w + i) * l;
        sl += wl; sll += wl * l; sxl += wl * v4_load(x + i);
    }
    out[0] = v4_sum(sl); out[1] = v4_sum(sll); out[2] = v4_sum(sxl);
}

static void quant_asym_block(const struct asym_shape *sh, const float *x, const float *qw,
                             float *pd, float *pdmin, uint8_t *ls, uint8_t *lm, uint8_t *L)
{
    float w[QK_K], wf[QK_K], scales[16], mins[16], sw[16];
    float Lf[QK_K], NT[QK_K], T[32];   /* codes as floats; trial codes */
    const int len = sh->sublen;
    const float fnmax = (float)sh->nmax;
    float sigma2 = sh->sigma_mul * sum_sq(x, QK_K) / QK_K;

    for (int j = 0; j < sh->nsub; j++) {
        const float *xs = x + j * len;
        float *ws = w + j * len;
        make_weights(xs, qw ? qw + j * len : NULL, len, sigma2, sh->fallback, ws, wf + j * len);
        float s = 0;
        for (int i = 0; i < len; i++) s += ws[i];
        sw[j] = s;
        scales[j] = fit_asym(len, sh->nmax, xs, ws, Lf + j * len, &mins[j],
                             sh->rmin, sh->rdelta, sh->nstep);
    }
    float d = fp16_round(fit_pos(sh->nsub, sh->smax, scales, sw, ls));
    float dmin = fp16_round(fit_pos(sh->nsub, sh->smax, mins, sw, lm));

    float err[16];
    for (int j = 0; j < sh->nsub; j++) {
        float s = d * ls[j], m = dmin * lm[j];
        /* ggml leaves the codes of a zero-scale sub-block as fitted */
        err[j] = asym_sub_err(x + j * len, wf + j * len, len, fnmax, s, m, T);
        if (s > 0) memcpy(Lf + j * len, T, (size_t)len * sizeof *T);
    }

    if (KQ_REFINE) {
        const int R = KQ_RA;
        /* per sub-block sum w and sum w x of the judging weights */
        double cw[16], cx[16];
        for (int j = 0; j < sh->nsub; j++) {
            cw[j] = cx[j] = 0;
            for (int i = 0; i < len; i++) {
                cw[j] += wf[j * len + i]; cx[j] += (double)wf[j * len + i] * x[j * len + i];
            }
        }
        for (int pass = 0; pass < KQ_PASSES; pass++) {
            /* each sub-block: best integer (ls, lm) near the current ones */
            for (int j = 0; j < sh->nsub; j++) {
                const float *xs = x + j * len, *ws = wf + j * len;
                int bls = ls[j], blm = lm[j];
                for (int a = ls[j] - R; a <= ls[j] + R; a++) {
                    if (a < 0 || a > sh->smax) continue;
                    for (int b = lm[j] - R; b <= lm[j] + R; b++) {
                        if (b < 0 || b > sh->smax || (a == ls[j] && b == lm[j])) continue;
                        float e = asym_sub_err(xs, ws, len, fnmax, d * a, dmin * b, T);
                        if (e < err[j]) {
                            err[j] = e; bls = a; blm = b;
                            if (a > 0) memcpy(Lf + j * len, T, (size_t)len * sizeof *T);
                        }
                    }
                }
                ls[j] = (uint8_t)bls; lm[j] = (uint8_t)blm;
            }
            /* refit (d, dmin) to the integer structure: x ~ d*(ls*q) - dmin*lm,
             * from each sub-block's sums (ls and lm are constant in it) */
            double aa = 0, ab = 0, bb = 0, ax = 0, bx = 0;
            for (int j = 0; j < sh->nsub; j++) {
                double q[3], a = ls[j], b = lm[j];
                code_sums(len, x + j * len, wf + j * len, Lf + j * len, q);
                aa += a * a * q[1]; ab += a * b * q[0]; bb += b * b * cw[j];
                ax += a * q[2]; bx += b * cx[j];
            }
            double D = aa * bb - ab * ab;
            float nd, ndmin;
            if (D > 0) {
                nd = (float)((ax * bb - bx * ab) / D);
                ndmin = (float)((ax * ab - bx * aa) / D);  /* x ~ nd*a - ndmin*b */
            } else if (aa > 0) {
                nd = (float)(ax / aa); ndmin = dmin;
            } else break;
            if (!(nd > 0)) break;
            if (!(ndmin >= 0)) ndmin = 0;
            nd = fp16_round(nd); ndmin = fp16_round(ndmin);
            if (nd == d && ndmin == dmin) break;
            float tot_old = 0, tot_new = 0, nerr[16];
            for (int j = 0; j < sh->nsub; j++) {
                tot_old += err[j];
                nerr[j] = asym_sub_err(x + j * len, wf + j * len, len, fnmax,
                                       nd * ls[j], ndmin * lm[j], NT + j * len);
                tot_new += nerr[j];
            }
            if (!(tot_new < tot_old)) break;
            d = nd; dmin = ndmin;
            for (int j = 0; j < sh->nsub; j++) {
                err[j] = nerr[j];
                if (d * ls[j] > 0) memcpy(Lf + j * len, NT + j * len, (size_t)len * sizeof *NT);
            }
        }
    }
    for (int i = 0; i < QK_K; i++) L[i] = (uint8_t)Lf[i];
    *pd = d; *pdmin = dmin;
}

static const struct asym_shape shape_q2_K = { 16, 16, 3, 15, -0.9f, 0.05f, 36, 0.75f, W_SQRT_SIGMA };
static const struct asym_shape shape_q4_K = { 8, 32, 15, 63, -0.9f, 0.05f, 36, 2.0f, W_RMS_ABS };
static const struct asym_shape shape_q5_K = { 8, 32, 31, 63, -0.9f, 0.05f, 36, 2.0f, W_RMS_ABS };

/*
 * The fits minimise weighted squared error, and at 4 bits that fit is
 * slightly shrunk (sum(x*y)/sum(x*x) about 0.995 on tiny-a's attention).
 * As for the i-quants (see unbias_scale in quants_iq.c), a shrink that
 * every layer shares adds up in the residual stream, so Q4_K rescales a
 * finished super-block, d and dmin together (the whole decoded block), until
 * sum(qw*x*y) = sum(qw*x*x) under the plain importance weighting (unit
 * weights without one). Ratios outside [0.8, 1.25] mean a degenerate block
 * and are left as fitted.
 */
static void unbias_q4_K(block_q4_K *y, const float *x, const float *qw)
{
    const double f = moeq_unbias_factor(MOEQ_TYPE_Q4_K, y, x, qw);
    if (f == 0) return;
    const double d = moeq_f16_to_f32(y->d) * f, dmin = moeq_f16_to_f32(y->dmin) * f;
    if (!(fabs(d) < 65504.0) || !(fabs(dmin) < 65504.0)) return;
    y->d = moeq_f32_to_f16((float)d);
    y->dmin = moeq_f32_to_f16((float)dmin);
}

/* Fits an asymmetric super-block of shape sh and stores it in its
 * format's layout (Q2_K, Q4_K or Q5_K); a Q4_K block is then unbiased when
 * unbias asks it. */
static void enc_asym(const struct asym_shape *sh, const float *x, const float *qw, int unbias,
                     const struct moeq_quant_feedback *fb, void *out)
{
    uint8_t L[QK_K], ls[16], lm[16];
    float d, dmin;
    quant_asym_block(sh, fb && fb->fit ? fb->fit : x, qw, &d, &dmin, ls, lm, L);
    if (fb) {
        /* Hessian-aware codes: the scales stay, each column's code is
         * re-picked against the target the earlier columns' errors moved */
        const float dh = fp16_round(d), mh = fp16_round(dmin);   /* what decodes */
        float xt[QK_K];
        memcpy(xt, x, sizeof xt);
        for (int i = 0; i < QK_K; i++) {
            const int j = i / sh->sublen;
            const float s = dh * ls[j], m = mh * lm[j];
            if (s > 0) L[i] = (uint8_t)clampi(iround((xt[i] + m) / s), 0, sh->nmax);
            const float q = s * L[i] - m;
            fb->fn(fb->ctx, i, 1, &q, xt);
        }
    }
    const ggml_half hd = moeq_f32_to_f16(d), hm = moeq_f32_to_f16(dmin);
    const int8_t *q = (const int8_t *)L;
    if (sh == &shape_q2_K) {
        block_q2_K *y = out;
        y->d = hd;
        y->dmin = hm;
        for (int j = 0; j < 16; j++) q2k_set_scale_min(y->scales, j, ls[j], lm[j]);
        q2k_set_levels(y, q);
    } else if (sh == &shape_q4_K) {
        block_q4_K *y = out;
        y->d = hd;
        y->dmin = hm;
        for (int j = 0; j < 8; j++) k4_set_scale_min(y->scales, j, ls[j], lm[j]);
        q4k_set_levels(y, q);
        if (unbias) unbias_q4_K(y, x, qw);
    } else {
        block_q5_K *y = out;
        y->d = hd;
        y->dmin = hm;
        for (int j = 0; j < 8; j++) k4_set_scale_min(y->scales, j, ls[j], lm[j]);
        q5k_set_levels(y, q);
    }
}

static void enc_q2_K(const float *x, const float *qw, float ms, int unbias,
                     const struct moeq_quant_feedback *fb, void *y)
{ (void)ms; enc_asym(&shape_q2_K, x, qw, unbias, fb, y); }
static void enc_q4_K(const float *x, const float *qw, float ms, int unbias,
                     const struct moeq_quant_feedback *fb, void *y)
{ (void)ms; enc_asym(&shape_q4_K, x, qw, unbias, fb, y); }
static void enc_q5_K(const float *x, const float *qw, float ms, int unbias,
                     const struct moeq_quant_feedback *fb, void *y)
{ (void)ms; enc_asym(&shape_q5_K, x, qw, unbias, fb, y); }
BLOCK_QUANTIZER(q2_K, enc_q2_K, QK_K, block_q2_K, 0)
BLOCK_QUANTIZER(q4_K, enc_q4_K, QK_K, block_q4_K, 0)
BLOCK_QUANTIZER(q5_K, enc_q5_K, QK_K, block_q5_K, 0)

/* ======================================================= non-linear codes */

/* Index of the IQ4 code value nearest v (ties go up, as ggml's table). */
static const float nl_mid[15] = {   /* midpoints of kvalues_iq4nl */
    -115.5f, -93.5f, -74.f, -57.f, -42.f, -28.5f, -16.f, -4.5f,
    7.f, 19.f, 31.5f, 45.5f, 61.f, 79.f, 101.f,
};
static inline int nl_index(float v)
{
    /* branchless binary search: four compares the compiler turns into
     * conditional moves (mispredicted branches dominated otherwise) */
    int i = v >= nl_mid[7] ? 8 : 0;
    i += v >= nl_mid[i + 3] ? 4 : 0;
    i += v >= nl_mid[i + 1] ? 2 : 0;
    i += v >= nl_mid[i] ? 1 : 0;
    return i;
}

/*
 * Fit x ~ d * kvalues[L] for one 32-element block: candidate inverse scales
 * put the largest |x| on the first or last code value (give or take), each
 * followed by the least-squares d; then single-code moves that need the
 * smallest scale change, while the fit improves. Returns d.
 */
static float fit_nl(int n, const float *x, const float *w, uint8_t *L)
{
    const int8_t *kv = kvalues_iq4nl;
    float amax = 0, max = 0;
    for (int i = 0; i < n; i++) {
        float a = fabsf(x[i]);
        if (a > amax) { amax = a; max = x[i]; }
    }
    if (amax < GROUP_EPS) { memset(L, 0, (size_t)n); return 0; }

    uint8_t T[32];
    float d = -max / kv[0], id = 1 / d, sqx = 0, sqq = 0;
    for (int i = 0; i < n; i++) {
        int l = nl_index(id * x[i]);
        L[i] = (uint8_t)l;
        sqx += w[i] * kv[l] * x[i];
        sqq += w[i] * kv[l] * kv[l];
    }
    d = sqq > 0 ? sqx / sqq : 0;
    float best = d * sqx, bqx = sqx, bqq = sqq;
    const int ntry = 7, sub = KQ_REFINE ? KQ_NLSUB : 1;
    for (int k = -ntry * sub; k <= ntry * sub; k++) {
        for (int side = 0; side < 2; side++) {
            float ti = ((float)k / sub + (side ? kv[15] : kv[0])) / max;
            float qx = 0, qq = 0;
            for (int i = 0; i < n; i++) {
                int l = nl_index(ti * x[i]);
                T[i] = (uint8_t)l;
                qx += w[i] * kv[l] * x[i];
                qq += w[i] * kv[l] * kv[l];
            }
            if (qq > 0 && qx * qx > best * qq) {
                d = qx / qq; best = d * qx; bqx = qx; bqq = qq;
                memcpy(L, T, (size_t)n);
            }
        }
    }
    sqx = bqx; sqq = bqq;
    for (int it = 0; it < 32 * n; it++) {
        float min_step = INFINITY; int j = -1, dir = 0;
        for (int i = 0; i < n; i++) {
            float g = d * w[i] * (x[i] - d * kv[L[i]]);
            if (g > 0 && L[i] < 15) {
                float st = (kv[L[i] + 1] - kv[L[i]]) / g;
                if (st < min_step) { min_step = st; j = i; dir = 1; }
            } else if (g < 0 && L[i] > 0) {
                float st = (kv[L[i] - 1] - kv[L[i]]) / g;
                if (st < min_step) { min_step = st; j = i; dir = -1; }
            }
        }
        if (j < 0) break;
        int a = kv[L[j]], b = kv[L[j] + dir];
        float qx = sqx + w[j] * x[j] * (b - a), qq = sqq + w[j] * (b * b - a * a);
        if (qq > 0 && qx * qx > best * qq) {
            sqx = qx; sqq = qq; d = sqx / sqq; best = d * sqx;
            L[j] = (uint8_t)(L[j] + dir);
        } else break;
    }
    if (KQ_REFINE && d != 0) {
        for (int it = 0; it < 4; it++) {
            float ti = 1 / d, qx = 0, qq = 0;
            for (int i = 0; i < n; i++) {
                int l = nl_index(ti * x[i]);
                T[i] = (uint8_t)l;
                qx += w[i] * kv[l] * x[i];
                qq += w[i] * kv[l] * kv[l];
            }
            if (!(qq > 0 && qx * qx > best * qq * (1 + 1e-7f))) break;
            sqx = qx; sqq = qq; d = qx / qq; best = d * qx;
            memcpy(L, T, (size_t)n);
        }
    }
    return d;
}

/* ====================================================== symmetric K-quants */

/*
 * One super-block of a symmetric format (Q3_K 16 x 16, Q6_K 16 x 16,
 * IQ4_XS 8 x 32): value = d * ls * code, ls a signed integer in
 * [smin, smax], code linear in [-nmax, nmax-1] or an IQ4 value (nl).
 */
enum super_rule { SUPER_FIT, SUPER_MAX };

struct sym_shape {
    int nsub, sublen, nl, nmax, smin, smax;
    enum super_rule rule;      /* SUPER_FIT: weighted fit of the scales */
    float max_div;             /* SUPER_MAX: d = max_scale / max_div */
    float sigma_mul;
    enum wkind fallback;
    int qw_alone;              /* Q6_K weighs by importance alone */
};

static inline float code_val(const struct sym_shape *sh, int l)
{
    return sh->nl ? (float)kvalues_iq4nl[l] : (float)l;
}

/* Weighted error of one sub-block at scale s after choosing its codes
 * (stored to L unless NULL). */
static float sym_sub_err(const struct sym_shape *sh, const float *x, const float *w,
                         float s, int8_t *L)
{
    float e = 0, is = s != 0 ? 1 / s : 0;
    if (!sh->nl) {
        const v4f vi = v4_set(is), vs = v4_set(s);
        const v4f lo = v4_set((float)-sh->nmax), hi = v4_set((float)(sh->nmax - 1));
        v4f ev = v4_set(0);
        float T[32];
        for (int i = 0; i < sh->sublen; i += 4) {
            v4f xv = v4_load(x + i), l = v4_code(vi * xv, lo, hi);
            v4_store(T + i, l);
            v4f r = xv - vs * l;
            ev += v4_load(w + i) * r * r;
        }
        if (L) for (int i = 0; i < sh->sublen; i++) L[i] = (int8_t)T[i];
        return v4_sum(ev);
    }
    for (int i = 0; i < sh->sublen; i++) {
        int l = sh->nl ? nl_index(is * x[i]) : clampi(iround(is * x[i]), -sh->nmax, sh->nmax - 1);
        if (L) L[i] = (int8_t)l;
        float r = x[i] - s * code_val(sh, l);
        e += w[i] * r * r;
    }
    return e;
}

static void quant_sym_block(const struct sym_shape *sh, const float *x, const float *qw,
                            float *pd, int8_t *ls, int8_t *L)
{
    float w[QK_K], wf[QK_K], scales[16] = { 0 }, sw[16] = { 0 };  /* zeroed: GCC cannot see nsub bounds them */
    const int len = sh->sublen;
    float sigma2 = sh->sigma_mul * sum_sq(x, QK_K) / QK_K;

    float max_scale = 0, amax_scale = 0;
    for (int j = 0; j < sh->nsub; j++) {
        const float *xs = x + j * len;
        float *ws = w + j * len;
        if (sh->qw_alone && qw) {
            float s = 0;
            for (int i = 0; i < len; i++) { ws[i] = qw[j * len + i]; s += ws[i]; }
            if (!(s > 0)) make_weights(xs, NULL, len, sigma2, sh->fallback, ws, NULL);
            memcpy(wf + j * len, ws, (size_t)len * sizeof *ws);
        } else {
            make_weights(xs, qw ? qw + j * len : NULL, len, sigma2, sh->fallback, ws, wf + j * len);
        }
        float s = 0;
        for (int i = 0; i < len; i++) s += ws[i];
        sw[j] = s;
        if (sh->nl) scales[j] = fit_nl(len, xs, ws, (uint8_t *)L + j * len);
        else        scales[j] = fit_sym(len, sh->nmax, xs, ws, L + j * len);
        if (fabsf(scales[j]) > amax_scale) { amax_scale = fabsf(scales[j]); max_scale = scales[j]; }
    }

    float d;
    if (sh->rule == SUPER_FIT) {
        int8_t Ls[16];
        /* fit_sym gives codes in [-smax-1, smax]: the scale range [-32, 31] */
        d = fit_sym(sh->nsub, sh->smax + 1, scales, sw, Ls);
        for (int j = 0; j < sh->nsub; j++) ls[j] = Ls[j];
    } else {
        if (amax_scale < GROUP_EPS) d = 0;
        else d = max_scale / sh->max_div;
        float id = d ? 1 / d : 0;
        for (int j = 0; j < sh->nsub; j++) ls[j] = (int8_t)clampi(iround(id * scales[j]), sh->smin, sh->smax);
    }
    d = fp16_round(d);
    if (d == 0) {
        memset(ls, 0, (size_t)sh->nsub);
        memset(L, sh->nl ? nl_index(0) : 0, QK_K);
        *pd = 0;
        return;
    }

    float err[16];
    for (int j = 0; j < sh->nsub; j++) {
        float s = d * ls[j];
        /* a zero-scale linear sub-block keeps its fitted codes, as ggml */
        int keep = s == 0 && !sh->nl;
        err[j] = sym_sub_err(sh, x + j * len, wf + j * len, s, keep ? NULL : L + j * len);
    }

    if (KQ_REFINE) {
        int8_t T[32];
        const int R = sh->nl ? 1 : KQ_RS;  /* IQ4 codes re-pick slowly; 1 suffices */
        for (int pass = 0; pass < KQ_PASSES; pass++) {
            for (int j = 0; j < sh->nsub; j++) {
                const float *xs = x + j * len, *ws = wf + j * len;
                int b = ls[j];
                for (int a = ls[j] - R; a <= ls[j] + R; a++) {
                    if (a < sh->smin || a > sh->smax || a == ls[j]) continue;
                    float e = sym_sub_err(sh, xs, ws, d * a, T);
                    if (e < err[j]) { err[j] = e; b = a; memcpy(L + j * len, T, (size_t)len); }
                }
                ls[j] = (int8_t)b;
            }
            double aa = 0, ax = 0;
            for (int j = 0; j < sh->nsub; j++)
                for (int i = 0; i < len; i++) {
                    double a = (double)ls[j] * code_val(sh, L[j * len + i]), wi = wf[j * len + i];
                    aa += wi * a * a; ax += wi * a * x[j * len + i];
                }
            if (!(aa > 0)) break;
            float nd = fp16_round((float)(ax / aa));
            if (nd == d || nd == 0) break;
            float tot_old = 0, tot_new = 0, nerr[16];
            for (int j = 0; j < sh->nsub; j++) {
                tot_old += err[j];
                nerr[j] = sym_sub_err(sh, x + j * len, wf + j * len, nd * ls[j], NULL);
                tot_new += nerr[j];
            }
            if (!(tot_new < tot_old)) break;
            d = nd;
            for (int j = 0; j < sh->nsub; j++) {
                err[j] = nerr[j];
                sym_sub_err(sh, x + j * len, wf + j * len, d * ls[j], L + j * len);
            }
        }
    }
    *pd = d;
}

static const struct sym_shape shape_q3_K = { 16, 16, 0, 4, -32, 31, SUPER_FIT, 0, 2.0f, W_X2, 0 };
static const struct sym_shape shape_q6_K = { 16, 16, 0, 32, -128, 127, SUPER_MAX, -128.f, 0.0f, W_X2, 1 };
static const struct sym_shape shape_iq4_xs = { 8, 32, 1, 0, -32, 31, SUPER_MAX, -32.f, 2.0f, W_X2, 0 };

/* Fits a symmetric super-block of shape sh and stores it in its format's
 * layout (Q3_K, Q6_K or IQ4_XS). */
static void enc_sym(const struct sym_shape *sh, const float *x, const float *qw,
                    const struct moeq_quant_feedback *fb, void *out)
{
    int8_t L[QK_K], ls[16];
    float d;
    quant_sym_block(sh, fb && fb->fit ? fb->fit : x, qw, &d, ls, L);
    if (fb) {
        /* Hessian-aware codes, as enc_asym's */
        const float dh = fp16_round(d);
        float xt[QK_K];
        memcpy(xt, x, sizeof xt);
        for (int i = 0; i < QK_K; i++) {
            const float s = dh * ls[i / sh->sublen];
            if (s != 0) L[i] = (int8_t)(sh->nl ? nl_index(xt[i] / s) : clampi(iround(xt[i] / s), -sh->nmax, sh->nmax - 1));
            const float q = s * code_val(sh, L[i]);
            fb->fn(fb->ctx, i, 1, &q, xt);
        }
    }
    const ggml_half hd = moeq_f32_to_f16(d);
    if (sh == &shape_q3_K) {
        block_q3_K *y = out;
        y->d = hd;
        for (int j = 0; j < 16; j++) q3k_set_scale(y->scales, j, ls[j]);
        q3k_set_levels(y, L);
    } else if (sh == &shape_q6_K) {
        block_q6_K *y = out;
        y->d = hd;
        memcpy(y->scales, ls, 16);
        q6k_set_levels(y, L);
    } else {
        block_iq4_xs *y = out;
        y->d = hd;
        for (int j = 0; j < 8; j++) iq4xs_set_scale(y, j, ls[j]);
        for (int s = 0; s < 8; s++)
            for (int j = 0; j < 16; j++)
                y->qs[16 * s + j] = (uint8_t)(L[32 * s + j] | (L[32 * s + 16 + j] << 4));
    }
}

static void enc_q3_K(const float *x, const float *qw, float ms, int unbias,
                     const struct moeq_quant_feedback *fb, void *y)
{ (void)ms; (void)unbias; enc_sym(&shape_q3_K, x, qw, fb, y); }
static void enc_q6_K(const float *x, const float *qw, float ms, int unbias,
                     const struct moeq_quant_feedback *fb, void *y)
{ (void)ms; (void)unbias; enc_sym(&shape_q6_K, x, qw, fb, y); }
static void enc_iq4_xs(const float *x, const float *qw, float ms, int unbias,
                     const struct moeq_quant_feedback *fb, void *y)
{ (void)ms; (void)unbias; enc_sym(&shape_iq4_xs, x, qw, fb, y); }
BLOCK_QUANTIZER(q3_K, enc_q3_K, QK_K, block_q3_K, 0)
BLOCK_QUANTIZER(q6_K, enc_q6_K, QK_K, block_q6_K, 0)
BLOCK_QUANTIZER(iq4_xs, enc_iq4_xs, QK_K, block_iq4_xs, 0)

static void enc_iq4_nl(const float *x, const float *qw, float ms, int unbias,
                     const struct moeq_quant_feedback *fb, void *out)
{
    (void)ms; (void)unbias; (void)fb;
    block_iq4_nl *y = out;
    const int8_t *kv = kvalues_iq4nl;
    float w[QK4_NL], wf[QK4_NL];
    uint8_t L[QK4_NL], T[QK4_NL];
    float sigma2 = 2 * sum_sq(x, QK4_NL) / QK4_NL;
    make_weights(x, qw, QK4_NL, sigma2, W_X2, w, wf);
    float d = fit_nl(QK4_NL, x, w, L);
    memcpy(w, wf, sizeof w);   /* the final choice is judged by importance */
    /* ggml re-picks codes at the unrounded scale, stores it in fp16 */
    float best_d = fp16_round(d), best_e = 0;
    if (d != 0) {
        float id = 1 / d;
        for (int i = 0; i < QK4_NL; i++) L[i] = (uint8_t)nl_index(id * x[i]);
    }
    for (int i = 0; i < QK4_NL; i++) { float e = x[i] - best_d * kv[L[i]]; best_e += w[i] * e * e; }
    if (KQ_REFINE && best_d != 0) {
        /* the stored scale and its fp16 neighbours, codes re-picked */
        uint16_t h0 = moeq_f32_to_f16(best_d);
        for (int k = -1; k <= 2; k++) {
            float c;
            if (k <= 1) {
                c = moeq_f16_to_f32((uint16_t)(h0 + k));
                if (c != c || isinf(c) || (c > 0) != (best_d > 0) || c == 0) continue;
            } else {
                float qx = 0, qq = 0;
                for (int i = 0; i < QK4_NL; i++) { qx += w[i] * kv[L[i]] * x[i]; qq += w[i] * kv[L[i]] * kv[L[i]]; }
                if (!(qq > 0)) break;
                c = fp16_round(qx / qq);
                if (c == 0) break;
            }
            float ic = 1 / c, e = 0;
            for (int i = 0; i < QK4_NL; i++) {
                int l = nl_index(ic * x[i]);
                T[i] = (uint8_t)l;
                float t = x[i] - c * kv[l];
                e += w[i] * t * t;
            }
            if (e < best_e) { best_e = e; best_d = c; memcpy(L, T, QK4_NL); }
        }
    }
    y->d = moeq_f32_to_f16(best_d);
    for (int j = 0; j < 16; j++) y->qs[j] = (uint8_t)(L[j] | (L[j + 16] << 4));
}
BLOCK_QUANTIZER(iq4_nl, enc_iq4_nl, QK4_NL, block_iq4_nl, 0)
