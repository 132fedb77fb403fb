/*
 * speculate.c: generation with drafts from prompt lookup or a draft model
 * (speculative decoding that changes no token, or at a temperature no
 * distribution).
 *
 * Drafting: the longest suffix of the history (ngram_max down to
 * ngram_min tokens) that also occurs earlier in it proposes the tokens that
 * followed its most recent earlier occurrence; or a small draft model with
 * the same vocabulary, in a session of its own, proposes its greedy
 * continuation. Either way a draft is proposed with probability 1, which
 * is what the verification rule below assumes. Verification: the decided
 * next token and the draft are evaluated in one batch with every
 * position's logits; draft token i is kept while it equals the argmax after
 * position i-1, and the first argmax that disagrees is the next decided
 * token. The cache is then cut back to what was kept (moeq_session_sync).
 * Because the engine's logits do not depend on how tokens are batched, the
 * tokens are exactly those of plain greedy decoding, only fewer forward
 * passes run; tests/test_speculate.c checks the equality. With a sampler
 * at a temperature, each draft token is kept or replaced by the standard
 * accept/reject rule (moeq_sample_verify), so every token is distributed
 * exactly as plain sampling's.
 *
 * Uses only the public engine API (engine.h); the CLI calls it.
 */
#include "engine/engine.h"
#include "quant/finite.h"
#include "util/util.h"

#include <stdlib.h>
#include <string.h>

int moeq_lookup_draft(const int32_t *hist, int n, int ngram_min, int ngram_max, int max, int32_t *draft)
{
    if (max <= 0 || ngram_min < 1) return 0;
    for (int g = ngram_max < n - 1 ? ngram_max : n - 1; g >= ngram_min; g--) {
        const int32_t *key = hist + n - g;
        /* most recent earlier occurrence first: its continuation is freshest */
        for (int i = n - g - 1; i >= 0; i--) {
            if (memcmp(hist + i, key, (size_t)g * sizeof *key) != 0) continue;
            int k = 0;
            while (k < max && i + g + k < n) { draft[k] = hist[i + g + k]; k++; }
            if (k > 0) return k;
        }
    }
    return 0;
}

/* The first index of the largest logit (the greedy sampler's choice). */
static int32_t argmax(const float *l, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++) if (l[i] > l[best]) best = i;
    return best;
}

/* Logits that hold a NaN or an infinity: an error naming the position. */
static int bad_logits(const float *l, int V, int pos, char *err, size_t errlen)
{
    int64_t bad = moeq_first_nonfinite_f32(l, V);
    if (bad < 0) return 0;
    moeq_set_err(err, errlen, "logit of token %lld after position %d is not a number "
                 "(the model computes NaN or Inf; see moeq info --check)", (long long)bad, pos);
    return 1;
}

/* Up to max tokens a draft model proposes greedily after hist[0..n) (its
 * session keeps what it already holds of the history); the count, or -1. */
static int model_draft(moeq_engine *e, moeq_session *d, const int32_t *hist, int n, int max, int32_t *out,
                       char *err, size_t errlen)
{
    const int V = moeq_engine_info(e)->n_vocab;
    int room = moeq_session_n_ctx(d) - n;
    if (max > room) max = room;
    if (max <= 0) return 0;
    /* keep at most n - 1 tokens so the eval below yields the logits after hist[n-1] */
    int kept = moeq_session_sync(d, hist, n - 1);
    if (moeq_session_eval(d, hist + kept, n - kept, NULL, err, errlen) != 0) return -1;
    for (int i = 0; i < max; i++) {
        out[i] = argmax(moeq_session_logits(d), V);
        if (i + 1 == max || moeq_token_is_eog(e, out[i])) return i + 1;
        if (moeq_session_eval(d, out + i, 1, NULL, err, errlen) != 0) return -1;
    }
    return max;
}

int moeq_generate(moeq_engine *e, moeq_session *s, const int32_t *prompt, int n_prompt, int n_predict,
                  const struct moeq_spec_opts *o, moeq_token_cb cb, void *ctx,
                  struct moeq_spec_stats *st, char *err, size_t errlen)
{
    const int V = moeq_engine_info(e)->n_vocab;
    const int room = moeq_session_n_ctx(s) - n_prompt;
    if (n_prompt <= 0) { moeq_set_err(err, errlen, "empty prompt"); return -1; }
    /* the last token is decided from the last position's logits and never
     * evaluated, so a full context holds room + 1 generated tokens, as in
     * plain decoding */
    if (n_predict < 0 || n_predict > room + 1) n_predict = room >= 0 ? room + 1 : 0;
    const int dmax = o && (o->lookup || o->draft) ? (o->draft_max > 0 ? o->draft_max : 8) : 0;
    const int gmin = o && o->ngram_min > 0 ? o->ngram_min : 1;
    const int gmax = o && o->ngram_max >= gmin ? o->ngram_max : (gmin > 3 ? gmin : 3);
    /* no sampler: greedy (the sampler's argmax, the same first index of
     * the largest logit) */
    struct moeq_sampler greedy = { 0 };
    struct moeq_sampler *sp = o && o->sampler ? o->sampler : &greedy;
    struct moeq_spec_stats local = { 0 };
    if (!st) st = &local;
    memset(st, 0, sizeof *st);

    int32_t *hist = malloc(((size_t)n_prompt + (size_t)n_predict + (size_t)dmax + 2) * sizeof *hist);
    float *logits = malloc((size_t)(dmax + 1) * (size_t)V * sizeof *logits);
    if (!hist || !logits) { free(hist); free(logits); moeq_set_err(err, errlen, "out of memory"); return -1; }
    memcpy(hist, prompt, (size_t)n_prompt * sizeof *hist);
    int n = n_prompt, made = 0, rc = 0, kcur = dmax;

    int kept = moeq_session_sync(s, hist, n);
    if (moeq_session_eval(s, hist + kept, n - kept, NULL, err, errlen) != 0) { rc = -1; goto out; }
    if (bad_logits(moeq_session_logits(s), V, n - 1, err, errlen)) { rc = -1; goto out; }
    int32_t next = moeq_sample_hist(sp, moeq_session_logits(s), V, hist, n);
    while (made < n_predict) {
        /* next is decided: report it */
        hist[n++] = next;
        made++;
        if (cb && cb(ctx, next)) break;
        if (moeq_token_is_eog(e, next) || made >= n_predict) break;
        int k = n_predict - made < kcur ? n_predict - made : kcur;
        if (k > moeq_session_n_ctx(s) - n) k = moeq_session_n_ctx(s) - n;   /* drafts must fit the cache */
        if (o && o->draft) k = model_draft(e, o->draft, hist, n, k, hist + n, err, errlen);
        else if (k) k = moeq_lookup_draft(hist, n, gmin, gmax, k, hist + n);
        if (k < 0) { rc = -1; break; }
        /* evaluate next and the draft behind it: row i predicts after hist[n-1+i] */
        st->steps++;
        st->drafted += k;
        if (moeq_session_eval(s, hist + n - 1, 1 + k, k ? logits : NULL, err, errlen) != 0) { rc = -1; break; }
        if (!k) {
            if (bad_logits(moeq_session_logits(s), V, n - 1, err, errlen)) { rc = -1; break; }
            next = moeq_sample_hist(sp, moeq_session_logits(s), V, hist, n);
            continue;
        }
        int bad = 0;
        for (int r = 0; r <= k && !bad; r++) bad = bad_logits(logits + (size_t)r * V, V, n - 1 + r, err, errlen);
        if (bad) { rc = -1; break; }
        int j = 0, stop = 0, acc = 0;
        int32_t pred = -1;
        for (; j < k; j++) {
            pred = moeq_sample_verify(sp, logits + (size_t)j * V, V, hist, n + j, hist[n + j], &acc);
            if (!acc) break;
            /* draft token j stands: keep it */
            int32_t t = hist[n + j];
            made++;
            st->accepted++;
            if ((cb && cb(ctx, t)) || moeq_token_is_eog(e, t) || made >= n_predict) { stop = 1; j++; break; }
        }
        if (!stop && j == k) pred = moeq_sample_hist(sp, logits + (size_t)k * V, V, hist, n + k);
        n += j;
        if (stop) break;
        /* the draft length follows the acceptance: all kept doubles it
         * (up to dmax), a rejection sets it to what was kept plus one */
        kcur = j == k ? (2 * kcur < dmax ? 2 * kcur : dmax) : j + 1;
        next = pred;
        /* cut the cache back to hist[0..n): it holds the rejected draft tail */
        hist[n] = next;
        moeq_session_sync(s, hist, n + 1);
    }
    st->ctx_full = made == room + 1 && room >= 0;
out:
    moeq_sampler_free(&greedy);
    free(hist);
    free(logits);
    return rc;
}
