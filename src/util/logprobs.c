/*
 * logprobs.c: 16-bit log-probability rows and the KL divergence against
 * them (see logprobs.h).
 */
#include "util/logprobs.h"

#include <math.h>
#include <string.h>

float moeq_logsumexp(const float *logits, int n_vocab, int *imax)
{
    float mx = logits[0];
    int im = 0;
    for (int i = 1; i < n_vocab; i++)
        if (logits[i] > mx) { mx = logits[i]; im = i; }
    double sum = 0;
    for (int i = 0; i < n_vocab; i++) sum += expf(logits[i] - mx);
    if (imax) *imax = im;
    return mx + (float)log(sum);
}

double moeq_logprobs_encode(int n_vocab, const float *logits, uint16_t *out, int tok)
{
    float mx = logits[0], mn = logits[0];
    for (int i = 1; i < n_vocab; i++) {
        if (logits[i] > mx) mx = logits[i];
        if (logits[i] < mn) mn = logits[i];
    }
    if (mn < mx - 24) mn = mx - 24;
    double sum = 0;
    for (int i = 0; i < n_vocab; i++) sum += expf(logits[i] - mx);
    const float lse = (float)log(sum);
    const float min_log_prob = mn - mx - lse;
    const float scale = (mx - mn) / 65535.f;
    /* two floats (scale, min) in the first four uint16, as llama.cpp */
    memcpy(out, &scale, 4);
    memcpy(out + 2, &min_log_prob, 4);
    uint16_t *q = out + 4;
    if (scale > 0) {
        const float inv = 1 / scale;
        for (int i = 0; i < n_vocab; i++)
            q[i] = logits[i] > mn ? (uint16_t)lrintf(inv * (logits[i] - mn)) : 0;
    } else {
        memset(q, 0, (size_t)n_vocab * sizeof *q);
    }
    if (n_vocab & 1) q[n_vocab] = 0;
    return (double)(mx + lse - logits[tok]);
}

float moeq_logprobs_at(const uint16_t *base, int tok)
{
    float scale, min_lp;
    memcpy(&scale, base, 4);
    memcpy(&min_lp, base + 2, 4);
    return scale * base[4 + tok] + min_lp;
}

double moeq_logprobs_kld(int n_vocab, const float *logits, float norm, const uint16_t *base, int *imax_base)
{
    float scale, min_lp;
    memcpy(&scale, base, 4);
    memcpy(&min_lp, base + 2, 4);
    const uint16_t *q = base + 4;
    double kl = 0;
    int ib = 0;
    float best = -INFINITY;
    for (int i = 0; i < n_vocab; i++) {
        const float lpb = scale * q[i] + min_lp;
        if (lpb > best) { best = lpb; ib = i; }
        if (lpb > -16.f) kl += expf(lpb) * (lpb - logits[i] + norm);
    }
    if (imax_base) *imax_base = ib;
    return kl;
}
