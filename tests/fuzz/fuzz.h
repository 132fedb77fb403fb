/*
 * fuzz.h: what the libFuzzer harnesses of tests/fuzz/ share: the entry
 * point macro and the small tokenizer the tokenizer and server harnesses
 * run on.
 *
 * FUZZ_ENTRY(name) is libFuzzer's LLVMFuzzerTestOneInput in a fuzz build
 * (`make fuzz`); with MOEQ_FUZZ_REPLAY defined it is fuzz_one_NAME, so
 * tests/test_fuzz_corpus.c can include every harness and replay each seed
 * corpus through the very same checks in `make test`, without libFuzzer.
 * A harness reports a broken promise with abort(): a crash to libFuzzer,
 * a failed test to the replay.
 *
 * fuzz_tokenizer() is the byte-level BPE vocabulary `moeq synth` writes
 * (src/synth_vocab.c, FUZZ_VOCAB tokens), built once per process, with its
 * last padding token turned into the USER_DEFINED "<think>" so that path is
 * covered too.
 *
 * fuzz_load_twice() is the file-loader harnesses' (imatrix, Hessian) one
 * body: the input as an in-memory file loaded twice into one collection.
 */
#ifndef MOEQ_FUZZ_H
#define MOEQ_FUZZ_H

#include "synth/synth.h"
#include "model/tokenizer.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#ifdef MOEQ_FUZZ_REPLAY
#define FUZZ_ENTRY(name) int fuzz_one_##name(const uint8_t *data, size_t size)
#else
#define FUZZ_ENTRY(name) int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
#endif

/* The input being replayed (set by the replay, named in a failure). */
static const char *fuzz_input = "this input";

/* abort() with a line saying which promise broke. */
#define FUZZ_ASSERT(cond)                                                         \
    do {                                                                          \
        if (!(cond)) {                                                            \
            fprintf(stderr, "%s:%d: fuzz check failed on %s: %s\n", __FILE__,     \
                    __LINE__, fuzz_input, #cond);                                 \
            abort();                                                              \
        }                                                                         \
    } while (0)

#define FUZZ_VOCAB 1000
#define FUZZ_USER_TOKEN "<think>"

static inline const moeq_tokenizer *fuzz_tokenizer(void)
{
    static moeq_tokenizer *tok;
    if (tok) return tok;
    moeq_synth_vocab v;
    char err[256];
    if (moeq_synth_vocab_build(FUZZ_VOCAB, &v, err, sizeof err)) {
        fprintf(stderr, "fuzz: %s\n", err);
        abort();
    }
    gguf_str *toks = calloc((size_t)v.n_tokens, sizeof *toks);
    gguf_str *merges = calloc((size_t)v.n_merges + 1, sizeof *merges);
    int32_t *types = calloc((size_t)v.n_tokens, sizeof *types);
    if (!toks || !merges || !types) abort();
    for (int i = 0; i < v.n_tokens; i++) {
        const char *s = i == v.n_tokens - 1 ? FUZZ_USER_TOKEN : v.tokens[i];
        toks[i] = (gguf_str){ s, strlen(s) };
        types[i] = i == v.n_tokens - 1 ? MOEQ_TOKEN_USER_DEFINED : v.types[i];
    }
    for (int i = 0; i < v.n_merges; i++) merges[i] = (gguf_str){ v.merges[i], strlen(v.merges[i]) };
    struct moeq_vocab_desc d = {
        .n_tokens = v.n_tokens, .tokens = toks, .types = types,
        .n_merges = v.n_merges, .merges = merges,
        .bos = v.bos, .eos = v.eos, .eot = -1, .eom = -1, .pad = v.pad,
        .chat_template = moeq_synth_template_named("chatml"),
    };
    tok = moeq_tokenizer_new(&d, err, sizeof err);
    if (!tok) {
        fprintf(stderr, "fuzz: %s\n", err);
        abort();
    }
    free(toks);
    free(merges);
    free(types);
    moeq_synth_vocab_free(&v);
    return tok;
}

/* The loaders take a path, so the input becomes an in-memory file (memfd,
 * opened as /proc/self/fd/N: no disk traffic), loaded twice by
 * load(ctx, path, pass, ...) into the same collection, since a load merges
 * into what is there. Checked: a failure is one line naming the file; only
 * the first load may fail (what loaded once merges with a second copy of
 * itself); check(ctx) after each load that succeeds. */
typedef int (*fuzz_load_fn)(void *ctx, const char *path, int pass, char *err, size_t errlen);

static inline void fuzz_load_twice(const uint8_t *data, size_t size, void *ctx, fuzz_load_fn load,
                                   void (*check)(void *ctx))
{
    int fd = memfd_create("fuzz.input", 0);
    FUZZ_ASSERT(fd >= 0);
    FUZZ_ASSERT(size == 0 || write(fd, data, size) == (ssize_t)size);
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    for (int pass = 0; pass < 2; pass++) {
        char err[512] = "";
        if (load(ctx, path, pass, err, sizeof err) != 0) {
            FUZZ_ASSERT(strncmp(err, path, strlen(path)) == 0 && err[strlen(path)] == ':');
            FUZZ_ASSERT(!strchr(err, '\n'));
            FUZZ_ASSERT(pass == 0);
            break;
        }
        check(ctx);
    }
    close(fd);
}

#endif
