/*
 * sample.c: next-token sampling from logits: greedy, or temperature with
 * top-k, top-p and min-p filters, in llama.cpp's order (top-k, top-p,
 * min-p on the untempered distribution, then temperature), drawn with a
 * seeded splitmix64 generator so a seed reproduces a run.
 *
 * The candidate list lives in the sampler's own buffer, grown once to the
 * vocabulary size, and is sorted in place, so sampling allocates nothing
 * per token.
 */
#include "engine.h"

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
    sp->work = NULL;
    sp->work_cap = 0;
}

int32_t moeq_sample(struct moeq_sampler *sp, const float *logits, int n_vocab)
{
    if (n_vocab <= 0) return -1;
    int best = 0;
    for (int i = 1; i < n_vocab; i++)
        if (logits[i] > logits[best]) best = i;
    if (sp->temp <= 0 || sp->top_k == 1) return best;

    if (sp->work_cap < n_vocab) {
        void *w = realloc(sp->work, (size_t)n_vocab * sizeof(struct moeq_candidate));
        if (!w) return best; /* out of memory: degrade to greedy, never crash */
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
    double r = next_unit(&sp->rng) * sum, acc = 0;
    for (int i = 0; i < n; i++) {
        acc += c[i].p;
        if (r < acc) return c[i].id;
    }
    return c[n - 1].id;
}
