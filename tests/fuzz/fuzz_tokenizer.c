/*
 * fuzz_tokenizer.c: libFuzzer harness for the BPE tokenizer (`make
 * fuzz-tokenizer`), on the small vocabulary of fuzz.h.
 *
 * Arbitrary bytes are encoded with and without special-token parsing. The
 * promises checked: the count does not depend on the buffer (a sizing call
 * with max 0 returns what the real call writes), every id is in the
 * vocabulary, and the pieces of the ids concatenate back to the input byte
 * for byte: tokenizer.h promises decode(encode(s)) == s for any bytes, and
 * CONTROL and USER_DEFINED tokens decode to their own text, so the round
 * trip holds with parse_special too. The input as a NUL-terminated string
 * also goes through chat template detection.
 */
#include "fuzz.h"

static void tok_round_trip(const moeq_tokenizer *t, const uint8_t *data, size_t size, int special)
{
    int n = moeq_tokenizer_encode(t, (const char *)data, size, special, NULL, 0);
    FUZZ_ASSERT(n >= 0 && (size_t)n <= size);
    int32_t *ids = malloc(((size_t)n + 1) * sizeof *ids);
    char *back = malloc(size + 1);
    FUZZ_ASSERT(ids && back);
    FUZZ_ASSERT(moeq_tokenizer_encode(t, (const char *)data, size, special, ids, n) == n);
    size_t at = 0;
    for (int i = 0; i < n; i++) {
        FUZZ_ASSERT(ids[i] >= 0 && ids[i] < moeq_tokenizer_n_vocab(t));
        int len = 0;
        const char *p = moeq_tokenizer_piece_ref(t, ids[i], &len);
        FUZZ_ASSERT(p && len >= 0 && (size_t)len <= size - at);
        memcpy(back + at, p, (size_t)len);
        at += (size_t)len;
    }
    FUZZ_ASSERT(at == size && (size == 0 || memcmp(back, data, size) == 0));
    free(ids);
    free(back);
}

FUZZ_ENTRY(tokenizer)
{
    const moeq_tokenizer *t = fuzz_tokenizer();
    tok_round_trip(t, data, size, 0);
    tok_round_trip(t, data, size, 1);

    char *s = malloc(size + 1);
    FUZZ_ASSERT(s);
    memcpy(s, data, size);
    s[size] = 0;
    enum moeq_chat_kind kind;
    (void)moeq_chat_detect(s, &kind);
    free(s);
    return 0;
}
