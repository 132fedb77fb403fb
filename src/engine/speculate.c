/*
 * speculate.c: greedy generation with prompt-lookup drafting (speculative
 * decoding that changes no token).
 *
 * Drafting: the longest suffix of the history (ngram_max down to
 * ngram_min tokens) that also occurs earlier in it proposes the tokens that
 * followed its most recent earlier occurrence. Verification: the decided
 * next token and the draft are evaluated in one batch with every
 * position's logits; draft token i is kept while it equals the argmax after
 * position i-1, and the first argmax that disagrees is the next decided
 * token. The cache is then cut back to what was kept (moeq_session_sync).
 * Because the engine's logits do not depend on how tokens are batched, the
 * tokens are exactly those of plain greedy decoding, only fewer forward
 * passes run; tests/test_speculate.c checks the equality.
 *
 * Uses only the public engine API (engine.h); the CLI calls it.
 */
#include "engine/engine.h"
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

int moeq_generate_greedy(moeq_engine *e, moeq_session *s, const int32_t *prompt, int n_prompt, int n_predict,
                         const struct moeq_spec_opts *o, moeq_token_cb cb, void *ctx,
                         struct moeq_spec_stats *st, char *err, size_t errlen)
{
    const int V = moeq_engine_info(e)->n_vocab;
    const int room = moeq_session_n_ctx(s) - n_prompt;
    if (n_prompt <= 0) { moeq_set_err(err, errlen, "empty prompt"); return -1; }
    if (n_predict < 0 || n_predict > room) n_predict = room > 0 ? room : 0;
    const int dmax = o && o->lookup ? (o->draft_max > 0 ? o->draft_max : 8) : 0;
    const int gmin = o && o->ngram_min > 0 ? o->ngram_min : 1;
    const int gmax = o && o->ngram_max >= gmin ? o->ngram_max : (gmin > 3 ? gmin : 3);
    struct moeq_spec_stats local = { 0 };
    if (!st) st = &local;
    memset(st, 0, sizeof *st);

    int32_t *hist = malloc(((size_t)n_prompt + (size_t)n_predict + (size_t)dmax + 2) * sizeof *hist);
    float *logits = malloc((size_t)(dmax + 1) * (size_t)V * sizeof *logits);
    if (!hist || !logits) { free(hist); free(logits); moeq_set_err(err, errlen, "out of memory"); return -1; }
    memcpy(hist, prompt, (size_t)n_prompt * sizeof *hist);
    int n = n_prompt, made = 0, rc = 0;

    int kept = moeq_session_sync(s, hist, n);
    if (moeq_session_eval(s, hist + kept, n - kept, NULL, err, errlen) != 0) { rc = -1; goto out; }
    int32_t next = argmax(moeq_session_logits(s), V);
    while (made < n_predict) {
        /* next is decided: report it */
        hist[n++] = next;
        made++;
        if (cb && cb(ctx, next)) break;
        if (moeq_token_is_eog(e, next) || made >= n_predict) break;
        int k = dmax ? moeq_lookup_draft(hist, n, gmin, gmax, dmax, hist + n) : 0;
        if (k > n_predict - made) k = n_predict - made;
        /* evaluate next and the draft behind it: row i predicts after hist[n-1+i] */
        st->steps++;
        st->drafted += k;
        if (moeq_session_eval(s, hist + n - 1, 1 + k, k ? logits : NULL, err, errlen) != 0) { rc = -1; break; }
        if (!k) { next = argmax(moeq_session_logits(s), V); continue; }
        int j = 0;
        int32_t pred = argmax(logits, V);
        int stop = 0;
        while (j < k && pred == hist[n + j]) {
            /* draft token j is what greedy would have chosen: keep it */
            int32_t t = hist[n + j];
            made++;
            st->accepted++;
            if ((cb && cb(ctx, t)) || moeq_token_is_eog(e, t) || made >= n_predict) { stop = 1; j++; break; }
            j++;
            pred = argmax(logits + (size_t)j * V, V);
        }
        n += j;
        if (stop) break;
        next = pred;
        /* cut the cache back to hist[0..n): it holds the rejected draft tail */
        hist[n] = next;
        moeq_session_sync(s, hist, n + 1);
    }
out:
    free(hist);
    free(logits);
    return rc;
}
