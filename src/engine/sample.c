/*
 * sample.c: next-token sampling from logits: greedy, or temperature with
 * top-k, top-p and min-p filters, in llama.cpp's order (top-k, top-p,
 * min-p on the untempered distribution, then temperature), drawn with a
 * seeded splitmix64 generator so a seed reproduces a run.
 *
 * Repetition, frequency and presence penalties and logit biases (llama.cpp's
 * order: penalties, then biases, then the filters) work on a copy of the
 * logits; only the tokens in the look-back window and the bias list are
 * touched, through a per-token count array that is zeroed again after use.
 *
 * The candidate list, the logit copy and the counts live in the sampler's
 * own buffers, grown once to the vocabulary size (the candidates are
 * sorted in place), so sampling allocates nothing per token.
 */
#include "engine/engine.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* splitmix64: the state advances by a constant; the output is mixed. */
static uint64_t next_u64(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double next_unit(uint64_t *s) { return (double)(next_u64(s) >> 11) * 0x1.0p-53; }

/* Whether x sorts before y: higher logit first, then lower id (a total
 * order, since ids differ, so any correct sort gives the same list). */
static int before(const struct moeq_candidate *x, const struct moeq_candidate *y)
{
    return x->logit != y->logit ? x->logit > y->logit : x->id < y->id;
}

static void sift_down(struct moeq_candidate *c, int i, int n)
{
    for (;;) {
        int k = 2 * i + 1;
        if (k >= n) return;
        if (k + 1 < n && before(&c[k], &c[k + 1])) k++; /* the child that sorts later */
        if (!before(&c[i], &c[k])) return;
        struct moeq_candidate t = c[i];
        c[i] = c[k];
        c[k] = t;
        i = k;
    }
}

/* Heapsort in place into before()'s order. Not qsort: glibc's allocates a
 * merge buffer for all but small arrays, and sampling allocates nothing. */
static void sort_candidates(struct moeq_candidate *c, int n)
{
    for (int i = n / 2 - 1; i >= 0; i--) sift_down(c, i, n);
    for (int m = n - 1; m > 0; m--) {
        struct moeq_candidate t = c[0];
        c[0] = c[m];
        c[m] = t;
        sift_down(c, 0, m);
    }
}

void moeq_sampler_free(struct moeq_sampler *sp)
{
    free(sp->work);
    free(sp->adj);
    free(sp->seen);
    sp->work = NULL;
    sp->adj = NULL;
    sp->seen = NULL;
    sp->work_cap = sp->adj_cap = 0;
}

static int penalties_on(const struct moeq_sampler *sp)
{
    int rep = sp->repeat_penalty > 0 && sp->repeat_penalty != 1.0f;
    return ((rep || sp->frequency_penalty != 0 || sp->presence_penalty != 0) && sp->repeat_last_n != 0) ||
           (sp->bias && sp->n_bias > 0);
}

/* The penalized, biased logits in sp->adj; NULL when out of memory. */
static const float *adjust(struct moeq_sampler *sp, const float *logits, int n_vocab,
                           const int32_t *hist, int n_hist)
{
    if (sp->adj_cap < n_vocab) {
        float *a = realloc(sp->adj, (size_t)n_vocab * sizeof *a);
        if (!a) return NULL;
        sp->adj = a;
        int32_t *c = realloc(sp->seen, (size_t)n_vocab * sizeof *c);
        if (!c) return NULL;
        sp->seen = c;
        memset(sp->seen, 0, (size_t)n_vocab * sizeof *c);
        sp->adj_cap = n_vocab;
    }
    float *a = sp->adj;
    memcpy(a, logits, (size_t)n_vocab * sizeof *a);
    int n = sp->repeat_last_n < 0 || sp->repeat_last_n > n_hist ? n_hist : sp->repeat_last_n;
    const int32_t *w = hist ? hist + (n_hist - n) : NULL;
    if (w) {
        for (int i = 0; i < n; i++) if (w[i] >= 0 && w[i] < n_vocab) sp->seen[w[i]]++;
        const float rp = sp->repeat_penalty > 0 ? sp->repeat_penalty : 1.0f;
        for (int i = 0; i < n; i++) {
            int32_t t = w[i];
            if (t < 0 || t >= n_vocab || !sp->seen[t]) continue;   /* each token once */
            float c = (float)sp->seen[t];
            if (a[t] > 0) a[t] /= rp; else a[t] *= rp;
            a[t] -= c * sp->frequency_penalty + sp->presence_penalty;
            sp->seen[t] = 0;
        }
    }
    for (int i = 0; sp->bias && i < sp->n_bias; i++)
        if (sp->bias[i].id >= 0 && sp->bias[i].id < n_vocab) a[sp->bias[i].id] += sp->bias[i].bias;
    return a;
}

int32_t moeq_sample(struct moeq_sampler *sp, const float *logits, int n_vocab)
{
    return moeq_sample_hist(sp, logits, n_vocab, NULL, 0);
}

/*
 * The distribution sampling draws from: the candidates that survive the
 * filters, in sp->work[0..n), with c[i].p their weight at the temperature
 * (unnormalized; *sum their total). Returns n, or 0 when sampling is
 * greedy (temperature 0, top-k 1, out of memory or NaN logits): then only
 * *best, the argmax of the adjusted logits, is set.
 */
static int distribution(struct moeq_sampler *sp, const float *logits, int n_vocab, const int32_t *hist,
                        int n_hist, int32_t *best_out, double *sum_out)
{
    if (penalties_on(sp)) {
        const float *a = adjust(sp, logits, n_vocab, hist, n_hist);
        if (a) logits = a;   /* out of memory: sample without them, never crash */
    }
    int best = 0;
    for (int i = 1; i < n_vocab; i++)
        if (logits[i] > logits[best]) best = i;
    *best_out = best;
    if (sp->temp <= 0 || sp->top_k == 1) return 0;

    if (sp->work_cap < n_vocab) {
        void *w = realloc(sp->work, (size_t)n_vocab * sizeof(struct moeq_candidate));
        if (!w) return 0; /* out of memory: degrade to greedy, never crash */
        sp->work = w;
        sp->work_cap = n_vocab;
    }
    struct moeq_candidate *c = sp->work;
    /* Tokens more than 40 nats below the best carry less than 1e-17 of the
     * mass each; dropping them before sorting keeps the sort to a few
     * hundred entries instead of the whole vocabulary. */
    const float floor_logit = logits[best] - 40.0f;
    int n = 0;
    for (int i = 0; i < n_vocab; i++)
        if (logits[i] >= floor_logit) { c[n].id = i; c[n].logit = logits[i]; n++; }
    if (n == 0) return 0; /* NaN logits compare false with everything */
    sort_candidates(c, n);
    if (sp->top_k > 0 && sp->top_k < n) n = sp->top_k;

    /* probabilities at temperature 1 for top-p and min-p */
    double sum = 0;
    for (int i = 0; i < n; i++) { c[i].p = (float)exp((double)c[i].logit - c[0].logit); sum += c[i].p; }
    if (sp->top_p < 1.0f && sp->top_p > 0) {
        double cum = 0;
        for (int i = 0; i < n; i++) {
            cum += c[i].p / sum;
            if (cum >= sp->top_p) { n = i + 1; break; }
        }
    }
    if (sp->min_p > 0) {
        /* c[0].p is 1: keep tokens with p >= min_p * p_max */
        int m = 1;
        while (m < n && c[m].p >= sp->min_p) m++;
        n = m;
    }
    sum = 0;
    for (int i = 0; i < n; i++) {
        c[i].p = (float)exp(((double)c[i].logit - c[0].logit) / sp->temp);
        sum += c[i].p;
    }
    *sum_out = sum;
    return n;
}

/* Draw from the candidates c[0..n) of total weight sum, skipping id skip. */
static int32_t draw(struct moeq_sampler *sp, const struct moeq_candidate *c, int n, double sum, int32_t skip)
{
    double r = next_unit(&sp->rng) * sum, acc = 0;
    int last = -1;
    for (int i = 0; i < n; i++) {
        if (c[i].id == skip) continue;
        acc += c[i].p;
        last = i;
        if (r < acc) return c[i].id;
    }
    return last >= 0 ? c[last].id : c[0].id;
}

int32_t moeq_sample_hist(struct moeq_sampler *sp, const float *logits, int n_vocab,
                         const int32_t *hist, int n_hist)
{
    if (n_vocab <= 0) return -1;
    int32_t best;
    double sum = 0;
    int n = distribution(sp, logits, n_vocab, hist, n_hist, &best, &sum);
    return n ? draw(sp, sp->work, n, sum, -1) : best;
}

int32_t moeq_sample_verify(struct moeq_sampler *sp, const float *logits, int n_vocab, const int32_t *hist,
                           int n_hist, int32_t draft, int *accepted)
{
    *accepted = 0;
    if (n_vocab <= 0) return -1;
    int32_t best;
    double sum = 0;
    int n = distribution(sp, logits, n_vocab, hist, n_hist, &best, &sum);
    if (!n) {
        *accepted = draft == best;
        return best;
    }
    const struct moeq_candidate *c = sp->work;
    double w = 0;
    for (int i = 0; i < n; i++)
        if (c[i].id == draft) { w = c[i].p; break; }
    /* the draft was proposed with probability 1: keep it with probability
     * p(draft), else draw from p without it (max(0, p - q), renormalized) */
    if (w > 0 && next_unit(&sp->rng) * sum < w) {
        *accepted = 1;
        return draft;
    }
    if (sum - w <= 0) { *accepted = 1; return draft; }   /* p is all on the draft */
    return draw(sp, c, n, sum - w, w > 0 ? draft : -1);
}
