/*
 * Tokenizer: merge order, pre-tokenizer boundaries, special tokens on and
 * off, lossless round trips of arbitrary bytes, GGUF loading and its
 * errors, chat rendering (golden strings from the Qwen3 Jinja template),
 * and the reference's vectors on the real Qwen3 vocabulary and on tiny-a.
 */
#include "test.h"
#include "gguf/gguf.h"
#include "gguf_build.h"
#include "model/tokenizer.h"
#include "synth/synth.h"

#include <pthread.h>
#include <stdint.h>
#include <time.h>

/* ------------------------------------------------------- in-memory vocab */

/*
 * Ids 0..255: the GPT-2 characters of bytes 0..255 (so id == byte). Then
 * merged tokens, then special tokens. Merge ranks are chosen so that the
 * result depends on their order: "b c" (rank 0) beats "a b" (rank 1).
 */
static const char *const MERGES[] = {
    "b c",          /* 0 */
    "a b",          /* 1 */
    "a bc",         /* 2 */
    "a a",          /* 3 */
    "\xC4\xA0 h",   /* 4: "Ġ h", Ġ is the space byte */
    "\xC4\xA0h i",  /* 5 */
    "1 2",          /* 6: never applies: the pre-tokenizer splits digits */
    "a ,",          /* 7: never applies: letters and punctuation are split */
    ", a",          /* 8: applies: one word ",a" */
    "\xC4\xA0 \xC3\xA1", /* 9: "Ġ á": space + first byte of U+180E (E1 A0 8E) */
};
static const char *const EXTRA[] = { "bc", "ab", "abc", "aa", "\xC4\xA0h", "\xC4\xA0hi", "12", "a,", ",a",
                                     "\xC4\xA0\xC3\xA1" };
#define N_MERGES 10
enum { ID_BC = 256, ID_AB, ID_ABC, ID_AA, ID_GH, ID_GHI, ID_12, ID_A_COMMA, ID_COMMA_A, ID_SP_E1,
       ID_IM_START, ID_IM_END, ID_EOT, ID_THINK, ID_X, ID_XY, N_VOCAB };
static const char *const SPECIAL[] = { "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "<x>", "<x><y>" };
static const int SPECIAL_TYPE[] = { MOEQ_TOKEN_CONTROL, MOEQ_TOKEN_CONTROL, MOEQ_TOKEN_CONTROL,
                                    MOEQ_TOKEN_USER_DEFINED, MOEQ_TOKEN_CONTROL, MOEQ_TOKEN_CONTROL };

static char g_bytes[256][3];

static void vocab_fill(gguf_str *toks, int32_t *types, gguf_str *merges)
{
    /* GPT-2 byte mapping, written out independently of the tokenizer. */
    int n = 0;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        int cp = printable ? b : 256 + n++;
        if (cp < 0x80) { g_bytes[b][0] = (char)cp; g_bytes[b][1] = 0; }
        else { g_bytes[b][0] = (char)(0xC0 | (cp >> 6)); g_bytes[b][1] = (char)(0x80 | (cp & 0x3F)); g_bytes[b][2] = 0; }
        toks[b] = (gguf_str){ g_bytes[b], strlen(g_bytes[b]) };
        types[b] = MOEQ_TOKEN_NORMAL;
    }
    for (int i = 0; i < N_MERGES; i++) {
        toks[256 + i] = (gguf_str){ EXTRA[i], strlen(EXTRA[i]) };
        types[256 + i] = MOEQ_TOKEN_NORMAL;
        merges[i] = (gguf_str){ MERGES[i], strlen(MERGES[i]) };
    }
    for (int i = 0; i < 6; i++) {
        toks[ID_IM_START + i] = (gguf_str){ SPECIAL[i], strlen(SPECIAL[i]) };
        types[ID_IM_START + i] = SPECIAL_TYPE[i];
    }
}

/* The tiny vocabulary's description (its arrays static) with chat_template. */
static struct moeq_vocab_desc tiny_desc(const char *chat_template)
{
    static gguf_str toks[N_VOCAB], merges[N_MERGES];
    static int32_t types[N_VOCAB];
    vocab_fill(toks, types, merges);
    return (struct moeq_vocab_desc){
        .model = "gpt2", .pre = "qwen2", .n_tokens = N_VOCAB, .tokens = toks, .types = types,
        .n_merges = N_MERGES, .merges = merges, .bos = -1, .eos = ID_IM_END, .eot = -1, .eom = -1,
        .pad = ID_EOT, .chat_template = chat_template,
    };
}

static moeq_tokenizer *tiny_vocab(void)
{
    struct moeq_vocab_desc d = tiny_desc(moeq_synth_template_named("chatml"));
    char err[256];
    moeq_tokenizer *t = moeq_tokenizer_new(&d, err, sizeof err);
    REQUIREF(t, "tokenizer_new: %s", err);
    return t;
}

/* The model's template is parsed when the tokenizer is built: one outside
 * the supported Jinja subset fails the load and names the construct; one
 * inside renders the chat. */
TEST(tok_chat_template_at_load)
{
    struct moeq_vocab_desc d = tiny_desc("{% for m in messages %}{{ m.content }}{% endfor %}{% include 'x' %}");
    char err[256] = "";
    CHECK(moeq_tokenizer_new(&d, err, sizeof err) == NULL);
    CHECKF(strstr(err, "chat_template") && strstr(err, "include"), "%s", err);

    d.chat_template = "{{ bos_token }}[{{ eos_token }}]{% for m in messages %}{{ m.role }}={{ m.content }};{% endfor %}"
                      "{% if add_generation_prompt %}go{% endif %}";
    moeq_tokenizer *t = moeq_tokenizer_new(&d, err, sizeof err);
    REQUIREF(t, "%s", err);
    struct moeq_tok_msg m[2] = { { "user", "hi" }, { "assistant", NULL } };
    char *s = moeq_tokenizer_chat_render(t, m, 2, 1, err, sizeof err);
    REQUIREF(s, "%s", err);
    CHECKF(!strcmp(s, "[<|im_end|>]user=hi;assistant=;go"), "%s", s);
    free(s);
    moeq_tokenizer_free(t);
}

/* Encode into a static buffer; returns the count. */
static int enc(const moeq_tokenizer *t, const char *s, size_t n, int special, int32_t *ids, int max)
{
    int k = moeq_tokenizer_encode(t, s, n, special, ids, max);
    REQUIRE(k >= 0 && k <= max);
    return k;
}

static int ids_eq(const int32_t *got, int n, const int32_t *exp, int m)
{
    return n == m && (n == 0 || memcmp(got, exp, (size_t)n * sizeof *got) == 0);
}

#define EXPECT_IDS(t, str, special, ...)                                                   \
    do {                                                                                   \
        const int32_t exp_[] = { __VA_ARGS__ };                                            \
        int32_t got_[64];                                                                  \
        int n_ = enc(t, str, strlen(str), special, got_, 64);                              \
        CHECKF(ids_eq(got_, n_, exp_, (int)(sizeof exp_ / sizeof exp_[0])),                \
               "encode(\"%s\") gave %d ids, first %d", str, n_, n_ ? got_[0] : -1);        \
    } while (0)

/* Concatenated pieces of ids; malloc'd, length in *len. */
static char *detok(const moeq_tokenizer *t, const int32_t *ids, int n, size_t *len)
{
    size_t cap = 16, k = 0;
    char *o = malloc(cap);
    for (int i = 0; i < n; i++) {
        int pl;
        const char *p = moeq_tokenizer_piece_ref(t, ids[i], &pl);
        REQUIRE(p && pl >= 0);
        while (k + (size_t)pl > cap) { cap *= 2; o = realloc(o, cap); }
        memcpy(o + k, p, (size_t)pl);
        k += (size_t)pl;
    }
    *len = k;
    return o;
}

TEST(tok_merges_by_rank)
{
    moeq_tokenizer *t = tiny_vocab();
    EXPECT_IDS(t, "abc", 0, ID_ABC);                 /* b c first, then a bc */
    EXPECT_IDS(t, "abcd", 0, ID_ABC, 'd');
    EXPECT_IDS(t, "abab", 0, ID_AB, ID_AB);
    EXPECT_IDS(t, "aaa", 0, ID_AA, 'a');             /* equal ranks: leftmost first */
    EXPECT_IDS(t, "aaaaa", 0, ID_AA, ID_AA, 'a');
    EXPECT_IDS(t, " hi", 0, ID_GHI);                 /* the space byte is Ġ */
    EXPECT_IDS(t, "hi hi", 0, 'h', 'i', ID_GHI);
    EXPECT_IDS(t, "12", 0, '1', '2');                /* \p{N}: one digit per word */
    EXPECT_IDS(t, "a,", 0, 'a', ',');                /* letter word, then punctuation */
    EXPECT_IDS(t, ",a", 0, ID_COMMA_A);              /* [^\r\n\p{L}\p{N}]?\p{L}+ */
    EXPECT_IDS(t, "it's", 0, 'i', 't', '\'', 's');
    /* U+180E is not White_Space: " \u180E" is one punctuation-like word. */
    EXPECT_IDS(t, " \xE1\xA0\x8Ex", 0, ID_SP_E1, 0xA0, 0x8E, 'x');
    moeq_tokenizer_free(t);
}

/* Merges whose parts or result are not tokens (a broken vocabulary): the
 * chain still merges through them, and a leftover non-token falls back to
 * its bytes, as in the reference. */
TEST(tok_unknown_merge_parts)
{
    static gguf_str toks[N_VOCAB + 1];
    static int32_t types[N_VOCAB + 1];
    static gguf_str merges0[N_MERGES];
    vocab_fill(toks, types, merges0);
    toks[N_VOCAB] = (gguf_str){ "xyz", 3 };
    types[N_VOCAB] = MOEQ_TOKEN_NORMAL;
    const gguf_str merges[] = { { "x y", 3 }, { "xy z", 4 }, { "q r", 3 }, { "qr s", 4 } };
    struct moeq_vocab_desc d = {
        .n_tokens = N_VOCAB + 1, .tokens = toks, .types = types, .n_merges = 4, .merges = merges,
        .bos = -1, .eos = -1, .eot = -1, .eom = -1, .pad = -1,
    };
    char err[256];
    moeq_tokenizer *t = moeq_tokenizer_new(&d, err, sizeof err);
    REQUIREF(t, "%s", err);
    EXPECT_IDS(t, "xyz", 0, N_VOCAB);     /* through "xy", which is no token */
    EXPECT_IDS(t, "xy", 0, 'x', 'y');     /* "xy" left over: its bytes */
    EXPECT_IDS(t, "qrs", 0, 'q', 'r', 's');
    CHECK(moeq_tokenizer_chat_kind(t) == MOEQ_CHAT_CHATML);  /* no template */
    moeq_tokenizer_free(t);
}

TEST(tok_count_exceeds_buffer)
{
    moeq_tokenizer *t = tiny_vocab();
    int32_t ids[4] = { -7, -7, -7, -7 };
    CHECK(moeq_tokenizer_encode(t, "x y z w", 7, 0, ids, 2) == 7);
    CHECK(ids[0] == 'x' && ids[1] == ' ' && ids[2] == -7);
    CHECK(moeq_tokenizer_encode(t, "x y z w", 7, 0, NULL, 0) == 7);
    CHECK(moeq_tokenizer_encode(t, "", 0, 0, ids, 4) == 0);
    moeq_tokenizer_free(t);
}

TEST(tok_special_tokens)
{
    moeq_tokenizer *t = tiny_vocab();
    const char *s = "<|im_start|>user\nhi<|im_end|>";
    int32_t ids[64];
    int n = enc(t, s, strlen(s), 1, ids, 64);
    REQUIRE(n >= 3);
    CHECK(ids[0] == ID_IM_START);
    CHECK(ids[n - 1] == ID_IM_END);
    /* Without parse_special the same text is plain text... */
    n = enc(t, s, strlen(s), 0, ids, 64);
    for (int i = 0; i < n; i++) CHECK(ids[i] != ID_IM_START && ids[i] != ID_IM_END);
    size_t dl;
    char *back = detok(t, ids, n, &dl);
    CHECK(dl == strlen(s) && memcmp(back, s, dl) == 0);
    free(back);
    /* ...but USER_DEFINED tokens are split out either way. */
    EXPECT_IDS(t, "<think>ab", 0, ID_THINK, ID_AB);
    EXPECT_IDS(t, "<think>ab", 1, ID_THINK, ID_AB);
    /* Longest special token first: "<x><y>" wins over "<x>". */
    EXPECT_IDS(t, "<x><y><x>", 1, ID_XY, ID_X);
    EXPECT_IDS(t, "a<x>a", 1, 'a', ID_X, 'a');
    /* Pieces: control tokens give their text. */
    char buf[32];
    int pl = moeq_tokenizer_piece(t, ID_IM_START, buf, sizeof buf);
    CHECK(pl == 12 && memcmp(buf, "<|im_start|>", 12) == 0);
    CHECK(moeq_tokenizer_piece(t, ID_IM_START, buf, 4) == 12);  /* too small: length only */
    CHECK(moeq_tokenizer_piece(t, N_VOCAB, buf, sizeof buf) == -1);
    CHECK(moeq_tokenizer_piece(t, -1, buf, sizeof buf) == -1);
    pl = moeq_tokenizer_piece(t, ID_GHI, buf, sizeof buf);
    CHECK(pl == 3 && memcmp(buf, " hi", 3) == 0);
    pl = moeq_tokenizer_piece(t, 0x0A, buf, sizeof buf);
    CHECK(pl == 1 && buf[0] == '\n');
    CHECK(moeq_tokenizer_is_eog(t, ID_IM_END));
    CHECK(moeq_tokenizer_is_eog(t, ID_EOT));
    CHECK(!moeq_tokenizer_is_eog(t, ID_IM_START));
    CHECK(!moeq_tokenizer_is_eog(t, 'a'));
    CHECK(moeq_tokenizer_n_vocab(t) == N_VOCAB);
    CHECK(moeq_tokenizer_token_type(t, ID_THINK) == MOEQ_TOKEN_USER_DEFINED);
    struct moeq_token_specials sp;
    moeq_tokenizer_specials(t, &sp);
    CHECK(sp.eos == ID_IM_END && sp.bos == -1 && sp.eot == ID_IM_END && sp.pad == ID_EOT && !sp.add_bos);
    moeq_tokenizer_free(t);
}

static void check_roundtrip(const moeq_tokenizer *t, const char *s, size_t n, int special)
{
    int32_t *ids = malloc((n + 1) * sizeof *ids);
    int k = moeq_tokenizer_encode(t, s, n, special, ids, (int)n + 1);
    REQUIRE(k >= 0 && (size_t)k <= n);
    size_t dl;
    char *back = detok(t, ids, k, &dl);
    CHECKF(dl == n && memcmp(back, s, n) == 0, "round trip of %zu bytes gave %zu", n, dl);
    free(back);
    free(ids);
}

TEST(tok_roundtrip_any_bytes)
{
    moeq_tokenizer *t = tiny_vocab();
    static const char *const bad[] = {
        "\xff", "\xc3", "a\xe2\x82" "b", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xc0\xaf",
        "caf\xc3", "\xe2\x82\xac\x80\x80 x", " \xf0\x9f\xa6\x99.cpp\xf0\x9f", "\n\n\xfe \t\r\n",
        "<|im_start|>\xff<|im_end|>", "<think>\xc3<x><y>",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        check_roundtrip(t, bad[i], strlen(bad[i]), 0);
        check_roundtrip(t, bad[i], strlen(bad[i]), 1);
    }
    /* Random bytes, biased towards ASCII, spaces and UTF-8 lead bytes. */
    uint64_t r = 0x9E3779B97F4A7C15ull;
    char buf[512];
    for (int it = 0; it < 300; it++) {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        size_t n = (size_t)(r >> 33) % sizeof buf;
        for (size_t i = 0; i < n; i++) {
            r = r * 6364136223846793005ull + 1442695040888963407ull;
            unsigned v = (unsigned)(r >> 40);
            static const char pool[] = " \n\tab,1'<|>";
            buf[i] = (v & 3) == 0 ? pool[(v >> 2) % (sizeof pool - 1)] : (char)(v >> 8);
        }
        check_roundtrip(t, buf, n, it & 1);
    }
    moeq_tokenizer_free(t);
}

/* One tokenizer, several threads: the same ids as one thread gets. */
struct mt_job {
    const moeq_tokenizer *t;
    const char *text;
    size_t len;
    int32_t ids[4096];
    int n;
};

static void *mt_run(void *p)
{
    struct mt_job *j = p;
    for (int rep = 0; rep < 50; rep++)
        j->n = moeq_tokenizer_encode(j->t, j->text, j->len, rep & 1, j->ids, 4096);
    return NULL;
}

TEST(tok_threads_share_a_tokenizer)
{
    moeq_tokenizer *t = tiny_vocab();
    static const char text[] = "<|im_start|>user\nabc, hi 12 aaa <x><y> it's\xff\xc3 done<|im_end|>\n";
    static struct mt_job jobs[4];
    int32_t ref[4096];
    int nref = enc(t, text, sizeof text - 1, 1, ref, 4096);
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        jobs[i] = (struct mt_job){ .t = t, .text = text, .len = sizeof text - 1 };
        REQUIRE(pthread_create(&th[i], NULL, mt_run, &jobs[i]) == 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        CHECK(ids_eq(jobs[i].ids, jobs[i].n, ref, nref));
    }
    moeq_tokenizer_free(t);
}

/* --------------------------------------------------------- GGUF loading */

/* A vocabulary-only GGUF of the in-memory vocabulary; the hooks let a
 * test break one key. */
struct vocab_gguf_opts {
    const char *model, *pre;
    int n_types;            /* token_type entries (default all) */
    const char *merge0;     /* replaces merges[0] */
    int64_t eos;
};

static gbuf vocab_gguf(const struct vocab_gguf_opts *o)
{
    static gguf_str toks[N_VOCAB], merges[N_MERGES];
    static int32_t types[N_VOCAB];
    vocab_fill(toks, types, merges);
    gbuf b = { 0 };
    gb_header(&b, 3, 0, 9);
    gb_kv(&b, "general.architecture", GGUF_TYPE_STRING); gb_str(&b, "qwen3moe");
    gb_kv(&b, "tokenizer.ggml.model", GGUF_TYPE_STRING); gb_str(&b, o->model ? o->model : "gpt2");
    gb_kv(&b, "tokenizer.ggml.pre", GGUF_TYPE_STRING); gb_str(&b, o->pre ? o->pre : "qwen2");
    gb_kv(&b, "tokenizer.ggml.tokens", GGUF_TYPE_ARRAY);
    gb_u32(&b, GGUF_TYPE_STRING); gb_u64(&b, N_VOCAB);
    for (int i = 0; i < N_VOCAB; i++) { gb_u64(&b, toks[i].n); gb_put(&b, toks[i].s, toks[i].n); }
    int nt = o->n_types ? o->n_types : N_VOCAB;
    gb_kv(&b, "tokenizer.ggml.token_type", GGUF_TYPE_ARRAY);
    gb_u32(&b, GGUF_TYPE_INT32); gb_u64(&b, (uint64_t)nt);
    for (int i = 0; i < nt; i++) gb_u32(&b, (uint32_t)types[i % N_VOCAB]);
    gb_kv(&b, "tokenizer.ggml.merges", GGUF_TYPE_ARRAY);
    gb_u32(&b, GGUF_TYPE_STRING); gb_u64(&b, N_MERGES);
    for (int i = 0; i < N_MERGES; i++) gb_str(&b, i == 0 && o->merge0 ? o->merge0 : MERGES[i]);
    gb_kv(&b, "tokenizer.ggml.eos_token_id", GGUF_TYPE_UINT32); gb_u32(&b, (uint32_t)(o->eos ? o->eos : ID_IM_END));
    gb_kv(&b, "tokenizer.ggml.add_bos_token", GGUF_TYPE_BOOL); gb_u8(&b, 0);
    gb_kv(&b, "tokenizer.chat_template", GGUF_TYPE_STRING); gb_str(&b, "{{ '<|im_start|>' }}<think>");
    return b;
}

/* Load from a built file: the tokenizer or NULL with the message in err. */
static moeq_tokenizer *load_built(const struct vocab_gguf_opts *o, char *err, size_t errlen)
{
    gbuf b = vocab_gguf(o);
    gguf_file *f = gguf_open_buffer(b.p, b.n, "v.gguf", err, errlen);
    REQUIREF(f, "gguf_open_buffer: %s", err);
    moeq_tokenizer *t = moeq_tokenizer_load(f, err, errlen);
    gguf_close(f);
    free(b.p);
    return t;
}

TEST(tok_gguf_load_and_errors)
{
    char err[512];
    struct vocab_gguf_opts o = { 0 };
    moeq_tokenizer *t = load_built(&o, err, sizeof err);
    REQUIREF(t, "load: %s", err);
    EXPECT_IDS(t, "abc hi", 0, ID_ABC, ID_GHI);
    EXPECT_IDS(t, "<|im_start|>", 1, ID_IM_START);
    CHECK(moeq_tokenizer_chat_kind(t) == MOEQ_CHAT_QWEN3);
    moeq_tokenizer_free(t);

    struct { struct vocab_gguf_opts o; const char *want; } bad[] = {
        { { .model = "llama" }, "tokenizer.ggml.model" },
        { { .pre = "falcon" }, "tokenizer.ggml.pre" },
        { { .n_types = 7 }, "tokenizer.ggml.token_type" },
        { { .merge0 = "ab" }, "tokenizer.ggml.merges[0]" },
        { { .merge0 = "a " }, "tokenizer.ggml.merges[0]" },
        { { .eos = N_VOCAB }, "tokenizer.ggml.eos_token_id" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = 0;
        t = load_built(&bad[i].o, err, sizeof err);
        CHECKF(!t, "bad case %zu loaded", i);
        CHECKF(strstr(err, bad[i].want) && strstr(err, "v.gguf"), "case %zu: '%s' lacks '%s'", i, err, bad[i].want);
        moeq_tokenizer_free(t);
    }
}

/* ------------------------------------------------------------------ chat */

TEST(tok_chat_render)
{
    char err[256];
    /* Golden strings: what the Qwen3 Jinja template (Qwen-Qwen3-0.6B.jinja)
     * renders for these conversations. */
    const struct moeq_tok_msg a[] = {
        { "system", "You are terse." }, { "user", "Hi" }, { "assistant", "Hello." }, { "user", "Name a prime." },
    };
    const char *a_exp =
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nName a prime.<|im_end|>\n"
        "<|im_start|>assistant\n";
    char *s = moeq_chat_render_kind(MOEQ_CHAT_QWEN3, a, 4, 1, err, sizeof err);
    REQUIREF(s, "%s", err);
    CHECKF(!strcmp(s, a_exp), "got: %s", s);
    free(s);
    /* Plain ChatML renders the same plain chat identically. */
    s = moeq_chat_render_kind(MOEQ_CHAT_CHATML, a, 4, 1, err, sizeof err);
    REQUIRE(s);
    CHECK(!strcmp(s, a_exp));
    free(s);

    /* Qwen3: reasoning in history is dropped; a final assistant turn after
     * the last query gets an (empty) think block. */
    const struct moeq_tok_msg b[] = {
        { "user", "Hi" }, { "assistant", "<think>\nplan\n</think>\n\nHello." }, { "user", "2+2?" }, { "assistant", "4" },
    };
    s = moeq_chat_render_kind(MOEQ_CHAT_QWEN3, b, 4, 0, err, sizeof err);
    REQUIRE(s);
    CHECKF(!strcmp(s, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n"
                      "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n4<|im_end|>\n"),
           "got: %s", s);
    free(s);
    s = moeq_chat_render_kind(MOEQ_CHAT_QWEN3, b, 2, 0, err, sizeof err);
    REQUIRE(s);
    CHECKF(!strcmp(s, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\nplan\n</think>\n\nHello.<|im_end|>\n"),
           "got: %s", s);
    free(s);

    const struct moeq_tok_msg c[] = { { "user", "x" }, { "narrator", "y" } };
    err[0] = 0;
    CHECK(moeq_chat_render_kind(MOEQ_CHAT_CHATML, c, 2, 1, err, sizeof err) == NULL);
    CHECK(strstr(err, "narrator") != NULL);
    const struct moeq_tok_msg d[] = { { NULL, "y" } };
    CHECK(moeq_chat_render_kind(MOEQ_CHAT_QWEN3, d, 1, 1, err, sizeof err) == NULL);

    enum moeq_chat_kind k;
    CHECK(moeq_chat_detect("{{'<|im_start|>' + m.role}}", &k) == 0 && k == MOEQ_CHAT_CHATML);
    CHECK(moeq_chat_detect("<|im_start|>{% if '</think>' in c %}<think>", &k) == 0 && k == MOEQ_CHAT_QWEN3);
    CHECK(moeq_chat_detect("[INST] {{ m }} [/INST]", &k) == -1 && k == MOEQ_CHAT_CHATML);
    CHECK(moeq_chat_detect(NULL, &k) == -1 && k == MOEQ_CHAT_CHATML);

    /* Through a tokenizer: its template picks the family. */
    moeq_tokenizer *t = tiny_vocab();
    CHECK(moeq_tokenizer_chat_kind(t) == MOEQ_CHAT_CHATML);
    s = moeq_tokenizer_chat_render(t, a, 4, 1, err, sizeof err);
    REQUIRE(s);
    CHECK(!strcmp(s, a_exp));
    int32_t ids[512];
    int n = enc(t, s, strlen(s), 1, ids, 512);
    int starts = 0, ends = 0;
    for (int i = 0; i < n; i++) { starts += ids[i] == ID_IM_START; ends += ids[i] == ID_IM_END; }
    CHECK(starts == 5 && ends == 4);
    free(s);
    moeq_tokenizer_free(t);
}

/* ------------------------------------------------- reference vectors */

static moeq_tokenizer *load_path(const char *path)
{
    char err[512];
    gguf_file *f = gguf_open(path, err, sizeof err);
    REQUIREF(f, "%s", err);
    moeq_tokenizer *t = moeq_tokenizer_load(f, err, sizeof err);
    gguf_close(f);
    REQUIREF(t, "%s", err);
    return t;
}

/* Check every string of a __ggml_vocab_test__ file against its ids
 * (no BOS, no special parsing, as the reference's test does). */
static void check_vectors(const moeq_tokenizer *t, const char *inp_path, const char *out_path, int n_expected)
{
    size_t ni, no;
    char *inp = test_read_file(inp_path, &ni);
    char *out = test_read_file(out_path, &no);
    REQUIRE(inp && out);
    out = realloc(out, no + 1);
    out[no] = 0;
    const char *sep = "\n__ggml_vocab_test__\n";
    size_t sl = strlen(sep), pos = 0;
    char *line = out;
    int cases = 0, bad = 0;
    int32_t ids[2048];
    while (pos < ni) {
        const char *hit = memmem(inp + pos, ni - pos, sep, sl);
        size_t len = hit ? (size_t)(hit - (inp + pos)) : ni - pos;
        char *nl = strchr(line, '\n');
        REQUIREF(nl, "%s: fewer lines than strings", out_path);
        *nl = 0;
        int32_t exp[2048];
        int ne = 0;
        for (char *p = line; *p;) {
            char *e;
            long v = strtol(p, &e, 10);
            if (e == p) break;
            REQUIRE(ne < 2048);
            exp[ne++] = (int32_t)v;
            p = e;
        }
        int n = moeq_tokenizer_encode(t, inp + pos, len, 0, ids, 2048);
        if (!ids_eq(ids, n, exp, ne)) {
            bad++;
            test_fail(__FILE__, __LINE__, "string %d ('%.*s'): %d ids, expected %d", cases, (int)(len > 40 ? 40 : len),
                      inp + pos, n, ne);
        }
        cases++;
        line = nl + 1;
        if (!hit) break;
        pos += len + sl;
    }
    CHECKF(cases == n_expected, "%d strings, expected %d", cases, n_expected);
    CHECK(bad == 0);
    free(inp);
    free(out);
}

/* The tokenizer of model (paths under ../shared), checked to hold n_vocab
 * tokens and to encode the n reference strings of inp as out has them. */
static moeq_tokenizer *load_with_vectors(const char *model, const char *inp, const char *out,
                                         int n_vocab, int n)
{
    const char *m = test_shared_path(model), *i = test_shared_path(inp), *o = test_shared_path(out);
    moeq_tokenizer *t = load_path(m);
    CHECK(moeq_tokenizer_n_vocab(t) == n_vocab);
    check_vectors(t, i, o, n);
    return t;
}

TEST(tok_reference_qwen3_vocab)
{
    moeq_tokenizer *t = load_with_vectors("data/tokenizer/qwen3-vocab.gguf",
                                          "data/tokenizer/ggml-vocab-qwen2.gguf.inp",
                                          "data/tokenizer/ggml-vocab-qwen2.gguf.out", 151936, 46);
    struct moeq_token_specials sp;
    moeq_tokenizer_specials(t, &sp);
    CHECK(sp.eos == 151645 && sp.pad == 151643 && !sp.add_bos);
    CHECK(moeq_tokenizer_is_eog(t, 151645) && moeq_tokenizer_is_eog(t, 151643));
    CHECK(moeq_tokenizer_is_eog(t, 151662) && moeq_tokenizer_is_eog(t, 151663) && moeq_tokenizer_is_eog(t, 151664));
    CHECK(!moeq_tokenizer_is_eog(t, 151644) && !moeq_tokenizer_is_eog(t, 151667) && !moeq_tokenizer_is_eog(t, 198));
    CHECK(moeq_tokenizer_chat_kind(t) == MOEQ_CHAT_QWEN3);
    /* Special parsing on the rendered chat; <think> is USER_DEFINED and
     * is split out even without it. */
    EXPECT_IDS(t, "<|im_start|>user\n", 1, 151644, 872, 198);
    EXPECT_IDS(t, "<think>", 0, 151667);
    moeq_tokenizer_free(t);
}

TEST(tok_reference_tiny_a)
{
    moeq_tokenizer *t = load_with_vectors("models/tiny-a/tiny-a-f16.gguf", "models/tiny-a/ref/tokenize.inp",
                                          "models/tiny-a/ref/tokenize.out", 8192, 49);
    /* logits-prompt.txt tokenizes to logits-tokens.i32. */
    size_t np, nt;
    char *prompt = test_read_file(test_shared_path("models/tiny-a/ref/logits-prompt.txt"), &np);
    int32_t *ref = test_read_file(test_shared_path("models/tiny-a/ref/logits-tokens.i32"), &nt);
    REQUIRE(prompt && ref && nt == 64 * 4);
    int32_t ids[256];
    int n = moeq_tokenizer_encode(t, prompt, np, 0, ids, 256);
    CHECKF(ids_eq(ids, n, ref, 64), "logits prompt: %d ids", n);
    free(prompt);
    free(ref);
    moeq_tokenizer_free(t);
}

/* 1.3 MB of WikiText in one call: lossless (its speed is the business of
 * bench/, not of a test). */
TEST(tok_wiki_round_trip)
{
    const char *g = test_shared_path("models/tiny-a/tiny-a-f16.gguf");
    size_t n;
    char *text = test_read_file(test_shared_path("data/text/wiki.test.raw"), &n);
    REQUIRE(text);
    moeq_tokenizer *t = load_path(g);
    int32_t *ids = malloc((n + 1) * sizeof *ids);
    int k = moeq_tokenizer_encode(t, text, n, 0, ids, (int)n + 1);
    REQUIRE(k > 0);
    size_t dl;
    char *back = detok(t, ids, k, &dl);
    CHECK(dl == n && memcmp(back, text, n) == 0);
    free(back);
    free(ids);
    free(text);
    moeq_tokenizer_free(t);
}

/* ------------------------------------------------------------------- CLI */

TEST(tok_cli)
{
    const char *g = test_shared_path("models/tiny-a/tiny-a-f16.gguf");
    char *out = test_run_ok("%s tokenize -m %s -p 'Hello world' --ids", test_moeq_bin(), g);
    CHECKF(!strcmp(out, "[72, 494, 111, 1348]\n"), "got: %s", out);
    free(out);
    out = test_run_ok("%s tokenize -m %s -p ' Hello world'", test_moeq_bin(), g);
    CHECKF(strstr(out, "   413 -> ' H'\n") && strstr(out, "  1348 -> ' world'\n"), "got: %s", out);
    free(out);
    out = test_run_ok("printf '<|im_start|>user' > %s && %s tokenize -m %s -f %s --ids --special",
                      test_tmp("p.txt"), test_moeq_bin(), g, test_tmp("p.txt"));
    CHECKF(!strcmp(out, "[8190, 464, 267]\n"), "got: %s", out);
    free(out);
    int rc = test_run(&out, "%s tokenize -p x", test_moeq_bin());
    CHECK(rc == 2);
    free(out);
    rc = test_run(&out, "%s tokenize -m %s -p x -f y", test_moeq_bin(), g);
    CHECK(rc == 2);
    free(out);
    rc = test_run(&out, "%s tokenize -m %s -p x", test_moeq_bin(), test_tmp("missing.gguf"));
    CHECK(rc == 1 && out && strstr(out, "moeq: ") && strstr(out, "missing.gguf"));
    free(out);
    rc = test_run(&out, "%s tokenize --help", test_moeq_bin());
    CHECK(rc == 0 && out && strstr(out, "usage: moeq tokenize"));
    free(out);
}
