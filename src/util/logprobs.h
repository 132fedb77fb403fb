/*
 * logprobs.h: one row of log-probabilities stored in 16 bits (llama.cpp's
 * --kl-divergence-base layout: two floats, scale and minimum, in the first
 * four uint16, then n_vocab quantized log-probabilities), and the KL
 * divergence of a row of logits against such a stored row. Shared by
 * `moeq perplexity` (its base file) and the allocator's measured
 * sensitivities (base rows kept in memory). Nothing here knows the engine.
 */
#ifndef MOEQ_LOGPROBS_H
#define MOEQ_LOGPROBS_H

#include <stdint.h>

/* uint16 of one encoded row (header and padding included). */
static inline int moeq_logprobs_row_len(int n_vocab) { return 4 + n_vocab + (n_vocab & 1); }

/* log(sum(exp(logits))) as max + log(sum(exp(logits - max))); *imax gets
 * the index of the largest logit (when not NULL). */
float moeq_logsumexp(const float *logits, int n_vocab, int *imax);

/* Encode the log-softmax of logits into out (moeq_logprobs_row_len
 * uint16) and return the negative log-likelihood of tok. */
double moeq_logprobs_encode(int n_vocab, const float *logits, uint16_t *out, int tok);

/* KL(base || softmax(logits)), norm = moeq_logsumexp(logits); *imax_base
 * gets the base's most likely token (when not NULL). Tokens whose base
 * log-probability is below -16 are left out, as llama-perplexity does. */
double moeq_logprobs_kld(int n_vocab, const float *logits, float norm, const uint16_t *base, int *imax_base);

/* The base row's log-probability of tok. */
float moeq_logprobs_at(const uint16_t *base, int tok);

#endif
