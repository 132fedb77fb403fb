/*
 * tokenizer.c: byte-level BPE (GPT-2 style) as GGUF's tokenizer.* keys
 * describe it, the qwen2 pre-tokenizer, detokenization, and the chat: the
 * model's tokenizer.chat_template parsed at load (chat_template.c renders
 * it; a template outside the supported subset fails the load) or, for a
 * model without one, the natively rendered ChatML.
 *
 * Owns: the vocabulary (token texts, types, the decoded bytes of every
 * token), a hash map text -> id, a hash map (left id, right id) -> (rank,
 * merged id) built from the merges, the compiled pre-tokenizer regex, and
 * the special-token list. Everything is built once at load; encoding uses
 * only per-call scratch, so one tokenizer serves many threads.
 *
 * Why ids and not strings in the merge loop: every merge "a b" joins two
 * strings into a third, and the reference compares strings; mapping each
 * string to an id once at load (strings outside the vocabulary get "extra"
 * ids above n_vocab) makes a merge lookup one 64-bit hash probe.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "model/tokenizer.h"
#include "model/chat_parse.h"
#include "model/chat_template.h"
#include "util/util.h"

#include <limits.h>
#include <pcre2.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ structures */

struct merge_slot {
    uint64_t key;      /* (left id << 32) | right id; EMPTY_KEY when free */
    int32_t  rank;
    int32_t  result;
};
#define EMPTY_KEY UINT64_MAX

struct moeq_tokenizer {
    int32_t   n_vocab;
    int32_t   n_str;         /* n_vocab + extra strings (merge parts not in the vocabulary) */
    int32_t   cap_str;
    char     *text;          /* token texts as GGUF stores them (byte-encoded) */
    uint64_t *text_off;      /* n_str + 1 offsets into text */
    uint64_t  text_len, text_cap;
    uint8_t  *types;         /* n_vocab */
    uint8_t  *eog;           /* n_vocab flags */

    int32_t  *tmap;          /* open addressing: string id or -1 */
    uint64_t  tmap_mask;

    struct merge_slot *mmap;
    uint64_t  mmap_mask;

    int32_t   byte_sym[256]; /* id of the one-character string for each raw byte */

    char     *piece;         /* decoded bytes of every token */
    uint64_t *piece_off;     /* n_vocab + 1 */

    int32_t  *special;       /* CONTROL/USER_DEFINED/UNKNOWN ids, longest text first */
    int32_t   n_special;

    int32_t   bos, eos, eot, eom, pad;
    int       add_bos;
    enum moeq_chat_kind chat;
    int       chat_format;   /* enum moeq_chat_format: the template's tool-call syntax */
    moeq_tmpl *tmpl;         /* the model's own template, parsed; NULL: built-in ChatML */

    pcre2_code *re;
    int         jit;         /* JIT compiled */
};

/* ---------------------------------------------------- GPT-2 byte mapping */

/*
 * GPT-2 maps every byte to a printable code point so that BPE works on
 * visible text: printable Latin-1 bytes ('!'..'~', 0xA1..0xAC, 0xAE..0xFF)
 * stand for themselves, the other 68 bytes take 256, 257, ... in byte order.
 * The largest code point used is 323.
 */
#define BYTE_CP_MAX 324
static uint16_t g_byte_cp[256];
static int16_t  g_cp_byte[BYTE_CP_MAX];

static int byte_is_printable(int b)
{
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

static void byte_map_init_once(void)
{
    int n = 0;
    for (int c = 0; c < BYTE_CP_MAX; c++) g_cp_byte[c] = -1;
    for (int b = 0; b < 256; b++) {
        g_byte_cp[b] = byte_is_printable(b) ? (uint16_t)b : (uint16_t)(256 + n++);
        g_cp_byte[g_byte_cp[b]] = (int16_t)b;
    }
}

static void byte_map_init(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, byte_map_init_once);
}

/* UTF-8 of a code point < 0x800 (all the mapping needs); returns length. */
static int cp_utf8(uint32_t cp, char *o)
{
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    o[0] = (char)(0xC0 | (cp >> 6));
    o[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
}

/*
 * Decode one UTF-8 sequence at s[0..n); returns its length (1..4) and the
 * code point, or 0 when the bytes there are not valid UTF-8 (overlong,
 * surrogate, truncated, out of range).
 */
static int utf8_decode(const unsigned char *s, size_t n, uint32_t *cp)
{
    unsigned c = s[0];
    if (c < 0x80) { *cp = c; return 1; }
    int len;
    uint32_t v, min;
    if ((c & 0xE0) == 0xC0)      { len = 2; v = c & 0x1F; min = 0x80; }
    else if ((c & 0xF0) == 0xE0) { len = 3; v = c & 0x0F; min = 0x800; }
    else if ((c & 0xF8) == 0xF0) { len = 4; v = c & 0x07; min = 0x10000; }
    else return 0;
    if ((size_t)len > n) return 0;
    for (int i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        v = (v << 6) | (s[i] & 0x3F);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return 0;
    *cp = v;
    return len;
}

/* ------------------------------------------------------------ hash maps */

static uint64_t hash_bytes(const void *p, size_t n)
{
    /* FNV-1a, then a final mix so the low bits (the bucket) are good. */
    const unsigned char *s = p;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) { h ^= s[i]; h *= 0x100000001b3ull; }
    h ^= h >> 29; h *= 0xbf58476d1ce4e5b9ull; h ^= h >> 32;
    return h;
}

static uint64_t hash_u64(uint64_t x)
{
    x ^= x >> 31; x *= 0x7fb5d329728ea185ull;
    x ^= x >> 27; x *= 0x81dadef4bc2dd44dull;
    x ^= x >> 33;
    return x;
}

static const char *str_at(const moeq_tokenizer *t, int32_t id, size_t *n)
{
    *n = (size_t)(t->text_off[id + 1] - t->text_off[id]);
    return t->text + t->text_off[id];
}

/* Id of a string (vocabulary or extra), -1 when unknown. */
static int32_t str_find(const moeq_tokenizer *t, const char *s, size_t n)
{
    uint64_t i = hash_bytes(s, n) & t->tmap_mask;
    for (;;) {
        int32_t id = t->tmap[i];
        if (id < 0) return -1;
        size_t m;
        const char *q = str_at(t, id, &m);
        if (m == n && memcmp(q, s, n) == 0) return id;
        i = (i + 1) & t->tmap_mask;
    }
}

/* Insert id under its text; a later id with the same text replaces the
 * earlier one (the reference's token_to_id map does the same). */
static void str_insert(moeq_tokenizer *t, int32_t id)
{
    size_t n;
    const char *s = str_at(t, id, &n);
    uint64_t i = hash_bytes(s, n) & t->tmap_mask;
    for (;;) {
        int32_t cur = t->tmap[i];
        if (cur < 0) { t->tmap[i] = id; return; }
        size_t m;
        const char *q = str_at(t, cur, &m);
        if (m == n && memcmp(q, s, n) == 0) { t->tmap[i] = id; return; }
        i = (i + 1) & t->tmap_mask;
    }
}

/* Append a string to the text table; returns its id or -1 (no memory). */
static int32_t str_append(moeq_tokenizer *t, const char *s, size_t n)
{
    if (t->n_str == t->cap_str) {
        int32_t nc = t->cap_str ? t->cap_str * 2 : 1024;
        uint64_t *no = realloc(t->text_off, ((size_t)nc + 1) * sizeof *no);
        if (!no) return -1;
        t->text_off = no;
        t->cap_str = nc;
    }
    if (t->text_len + n > t->text_cap) {
        uint64_t nc = t->text_cap ? t->text_cap * 2 : 65536;
        while (nc < t->text_len + n) nc *= 2;
        char *nt = realloc(t->text, nc);
        if (!nt) return -1;
        t->text = nt;
        t->text_cap = nc;
    }
    if (n) memcpy(t->text + t->text_len, s, n);
    t->text_off[t->n_str] = t->text_len;
    t->text_len += n;
    t->text_off[t->n_str + 1] = t->text_len;
    return t->n_str++;
}

/* Id of a string, adding it as an extra string when it is new. */
static int32_t str_intern(moeq_tokenizer *t, const char *s, size_t n)
{
    int32_t id = str_find(t, s, n);
    if (id >= 0) return id;
    id = str_append(t, s, n);
    if (id >= 0) str_insert(t, id);
    return id;
}

static const struct merge_slot *merge_find(const moeq_tokenizer *t, int32_t a, int32_t b)
{
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    uint64_t i = hash_u64(key) & t->mmap_mask;
    for (;;) {
        const struct merge_slot *s = &t->mmap[i];
        if (s->key == key) return s;
        if (s->key == EMPTY_KEY) return NULL;
        i = (i + 1) & t->mmap_mask;
    }
}

/* Keep the first (lowest) rank of a pair that appears twice. */
static void merge_insert(moeq_tokenizer *t, int32_t a, int32_t b, int32_t rank, int32_t result)
{
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    uint64_t i = hash_u64(key) & t->mmap_mask;
    for (;;) {
        struct merge_slot *s = &t->mmap[i];
        if (s->key == key) return;
        if (s->key == EMPTY_KEY) { s->key = key; s->rank = rank; s->result = result; return; }
        i = (i + 1) & t->mmap_mask;
    }
}

static uint64_t pow2_at_least(uint64_t n)
{
    uint64_t p = 16;
    while (p < n) p *= 2;
    return p;
}

/* ------------------------------------------------------- pre-tokenizers */

/*
 * The qwen2 pre-tokenizer, as in Qwen2/Qwen3's tokenizer.json, with two
 * spellings changed so that PCRE2 splits as the reference (and the
 * tokenizers library) do:
 * - (?i:'s|'t|...) is spelled out with classes: in UCP mode (?i) would also
 *   fold U+017F (long s) into 's';
 * - \s is the Unicode White_Space property written out (WS below): PCRE2's
 *   \s also matches U+180E, which Unicode stopped calling a space in 6.3.
 * One difference remains: letters and digits come from PCRE2's Unicode
 * tables (Unicode 14 in PCRE2 10.42), so characters assigned later
 * (Kawi, CJK extension H, ...) are not letters here but are in the
 * reference's tables.
 */
#define WS_CHARS "\\t\\n\\x0B\\f\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"
static const char *const RE_QWEN2 =
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
    "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+"
    "|\\p{N}"
    "| ?[^" WS_CHARS "\\p{L}\\p{N}]+[\\r\\n]*"
    "|[" WS_CHARS "]*[\\r\\n]+"
    "|[" WS_CHARS "]+(?![^" WS_CHARS "])"
    "|[" WS_CHARS "]+";

static const char *pre_regex(const char *pre)
{
    static const char *const qwen2_names[] = { "qwen2", "deepseek-r1-qwen" };
    for (size_t i = 0; i < sizeof qwen2_names / sizeof qwen2_names[0]; i++)
        if (!strcmp(pre, qwen2_names[i])) return RE_QWEN2;
    return NULL;
}

/* ------------------------------------------------------------------ load */

void moeq_tokenizer_free(moeq_tokenizer *t)
{
    if (!t) return;
    moeq_tmpl_free(t->tmpl);
    free(t->text);
    free(t->text_off);
    free(t->types);
    free(t->eog);
    free(t->tmap);
    free(t->mmap);
    free(t->piece);
    free(t->piece_off);
    free(t->special);
    if (t->re) pcre2_code_free(t->re);
    free(t);
}

/* Decoded bytes of token id into o (room for 4x the text); returns length. */
static size_t decode_token(const moeq_tokenizer *t, int32_t id, char *o)
{
    size_t n;
    const char *s = str_at(t, id, &n);
    switch (t->types[id]) {
    case MOEQ_TOKEN_CONTROL:
    case MOEQ_TOKEN_USER_DEFINED:
    case MOEQ_TOKEN_UNKNOWN:
        memcpy(o, s, n);
        return n;
    case MOEQ_TOKEN_NORMAL:
    case MOEQ_TOKEN_BYTE:
        break;
    default:             /* UNUSED, UNDEFINED: the reference renders nothing */
        return 0;
    }
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        int l = utf8_decode((const unsigned char *)s + i, n - i, &cp);
        if (l == 0) { o[k++] = s[i++]; continue; }      /* keep bad bytes as they are */
        if (cp < BYTE_CP_MAX && g_cp_byte[cp] >= 0) o[k++] = (char)g_cp_byte[cp];
        else { memcpy(o + k, s + i, (size_t)l); k += (size_t)l; } /* not a mapped byte: keep */
        i += (size_t)l;
    }
    return k;
}

static int is_special_type(int type)
{
    return type == MOEQ_TOKEN_CONTROL || type == MOEQ_TOKEN_USER_DEFINED || type == MOEQ_TOKEN_UNKNOWN;
}

struct len_id { uint64_t len; int32_t id; };
static int cmp_len_id(const void *pa, const void *pb)
{
    const struct len_id *a = pa, *b = pb;
    if (a->len != b->len) return a->len > b->len ? -1 : 1;
    return (a->id > b->id) - (a->id < b->id);
}

static int id_ok(int32_t id, int32_t n) { return id >= 0 && id < n; }

moeq_tokenizer *moeq_tokenizer_new(const struct moeq_vocab_desc *d, char *err, size_t errlen)
{
    byte_map_init();
    const char *model = d->model ? d->model : "gpt2";
    const char *pre = d->pre ? d->pre : "qwen2";
    if (strcmp(model, "gpt2") != 0) {
        moeq_set_err(err, errlen, "tokenizer.ggml.model '%s' is not supported (only 'gpt2' byte-level BPE)", model);
        return NULL;
    }
    const char *re_src = pre_regex(pre);
    if (!re_src) {
        moeq_set_err(err, errlen, "tokenizer.ggml.pre '%s' is not supported (only 'qwen2')", pre);
        return NULL;
    }
    if (d->n_tokens <= 0 || !d->tokens) {
        moeq_set_err(err, errlen, "tokenizer.ggml.tokens is empty");
        return NULL;
    }
    if (d->n_merges < 0 || (d->n_merges > 0 && !d->merges)) {
        moeq_set_err(err, errlen, "tokenizer.ggml.merges is invalid");
        return NULL;
    }

    moeq_tokenizer *t = calloc(1, sizeof *t);
    if (!t) { moeq_set_err(err, errlen, "out of memory"); return NULL; }
    const int32_t nv = d->n_tokens;
    t->n_vocab = nv;
    t->types = malloc((size_t)nv);
    t->eog = calloc((size_t)nv, 1);
    /* Room for every string there can be at a load factor of at most 1/2:
     * the vocabulary, 256 bytes, and three per merge in the worst case (a
     * broken vocabulary whose merges name only unknown strings). The
     * probe loops rely on the table never filling up. */
    t->tmap_mask = pow2_at_least(2 * ((uint64_t)nv + 256 + 3 * (uint64_t)d->n_merges)) - 1;
    t->tmap = malloc((t->tmap_mask + 1) * sizeof *t->tmap);
    t->mmap_mask = pow2_at_least(2 * (uint64_t)d->n_merges + 2) - 1;
    t->mmap = malloc((t->mmap_mask + 1) * sizeof *t->mmap);
    if (!t->types || !t->eog || !t->tmap || !t->mmap) goto oom;
    memset(t->tmap, 0xFF, (t->tmap_mask + 1) * sizeof *t->tmap);
    for (uint64_t i = 0; i <= t->mmap_mask; i++) t->mmap[i].key = EMPTY_KEY;

    for (int32_t i = 0; i < nv; i++) {
        const gguf_str *s = &d->tokens[i];
        if (s->n > (1u << 20)) {
            moeq_set_err(err, errlen, "tokenizer.ggml.tokens[%d] is %llu bytes long", i, (unsigned long long)s->n);
            goto fail;
        }
        if (s->n && !s->s) { moeq_set_err(err, errlen, "tokenizer.ggml.tokens[%d] has no text", i); goto fail; }
        int type = d->types ? d->types[i] : MOEQ_TOKEN_NORMAL;
        if (type < 0 || type > MOEQ_TOKEN_BYTE) type = MOEQ_TOKEN_UNDEFINED;
        t->types[i] = (uint8_t)type;
        if (str_append(t, s->s, s->n) < 0) goto oom;
    }
    /* Empty texts are never looked up (no word is empty); skip them so a
     * vocabulary with placeholders does not map "" to some id. */
    for (int32_t i = 0; i < nv; i++)
        if (t->text_off[i + 1] > t->text_off[i]) str_insert(t, i);

    t->bos = id_ok(d->bos, nv) ? d->bos : -1;
    t->eos = id_ok(d->eos, nv) ? d->eos : -1;
    t->eot = id_ok(d->eot, nv) ? d->eot : -1;
    t->eom = id_ok(d->eom, nv) ? d->eom : -1;
    t->pad = id_ok(d->pad, nv) ? d->pad : -1;
    t->add_bos = d->add_bos != 0;

    /* End-of-generation tokens: the ids the metadata names plus the turn
     * enders the reference recognizes by their text (it does the same,
     * because converters rarely write eot). The first of the four turn
     * enders at the top that exists serves as eot when the metadata names
     * none. */
    {
        static const char *const eog_names[] = {
            "<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
            "<|end_of_text|>", "<|eom_id|>", "<EOT>",
            /* Fill-in-the-middle markers end a completion too. */
            "<|fim_pad|>", "<|repo_name|>", "<|fim_repo|>", "<|file_sep|>",
        };
        for (size_t k = 0; k < sizeof eog_names / sizeof eog_names[0]; k++) {
            int32_t id = str_find(t, eog_names[k], strlen(eog_names[k]));
            if (id < 0 || id >= nv) continue;
            t->eog[id] = 1;
            /* A turn ender that is not CONTROL would be printed and parsed
             * as text; the reference promotes it, so do we. */
            if (t->types[id] != MOEQ_TOKEN_CONTROL) t->types[id] = MOEQ_TOKEN_CONTROL;
            if (t->eot < 0 && k < 4) t->eot = id;
        }
        if (t->eos >= 0) t->eog[t->eos] = 1;
        if (t->eot >= 0) t->eog[t->eot] = 1;
        if (t->eom >= 0) t->eog[t->eom] = 1;
    }

    /* Each raw byte's one-character string. */
    for (int b = 0; b < 256; b++) {
        char u[2];
        int l = cp_utf8(g_byte_cp[b], u);
        t->byte_sym[b] = str_intern(t, u, (size_t)l);
        if (t->byte_sym[b] < 0) goto oom;
    }

    for (int32_t r = 0; r < d->n_merges; r++) {
        const gguf_str *m = &d->merges[r];
        if (!m->s || m->n < 3 || m->n > (1u << 20)) {
            moeq_set_err(err, errlen, "tokenizer.ggml.merges[%d] is not 'left right'", r);
            goto fail;
        }
        /* The separator is the first space after the first byte, as in
         * the reference (a merge's left side is never empty). */
        const char *sp = memchr(m->s + 1, ' ', m->n - 1);
        if (!sp || (size_t)(sp - m->s) + 1 >= m->n) {
            moeq_set_err(err, errlen, "tokenizer.ggml.merges[%d] is not 'left right'", r);
            goto fail;
        }
        size_t nl = (size_t)(sp - m->s), nr = m->n - nl - 1;
        int32_t a = str_intern(t, m->s, nl);
        int32_t b = str_intern(t, sp + 1, nr);
        if (a < 0 || b < 0) goto oom;
        char stackbuf[512];
        char *joined = nl + nr <= sizeof stackbuf ? stackbuf : malloc(nl + nr);
        if (!joined) goto oom;
        memcpy(joined, m->s, nl);
        memcpy(joined + nl, sp + 1, nr);
        int32_t c = str_intern(t, joined, nl + nr);
        if (joined != stackbuf) free(joined);
        if (c < 0) goto oom;
        merge_insert(t, a, b, r, c);
    }

    /* Decoded pieces of every token, once. */
    {
        uint64_t total = 0;
        for (int32_t i = 0; i < nv; i++) total += t->text_off[i + 1] - t->text_off[i];
        t->piece = malloc(total + 1);
        t->piece_off = malloc(((size_t)nv + 1) * sizeof *t->piece_off);
        if (!t->piece || !t->piece_off) goto oom;
        uint64_t k = 0;
        for (int32_t i = 0; i < nv; i++) {
            t->piece_off[i] = k;
            /* A decoded piece is never longer than its text. */
            k += decode_token(t, i, t->piece + k);
        }
        t->piece_off[nv] = k;
    }

    /* Special tokens, longest first: the partition splits the longest
     * ones out of the text first, as the reference does. */
    {
        struct len_id *li = malloc((size_t)nv * sizeof *li);
        t->special = malloc((size_t)nv * sizeof *t->special);
        if (!li || !t->special) { free(li); goto oom; }
        int32_t k = 0;
        for (int32_t i = 0; i < nv; i++) {
            uint64_t n = t->text_off[i + 1] - t->text_off[i];
            if (is_special_type(t->types[i]) && n) li[k++] = (struct len_id){ n, i };
        }
        qsort(li, (size_t)k, sizeof *li, cmp_len_id);
        for (int32_t i = 0; i < k; i++) t->special[i] = li[i].id;
        t->n_special = k;
        free(li);
    }

    /* The pre-tokenizer. MATCH_INVALID_UTF lets invalid UTF-8 through:
     * those bytes never match and come back as gaps between matches. */
    {
        int ec;
        PCRE2_SIZE eo;
        t->re = pcre2_compile((PCRE2_SPTR)re_src, PCRE2_ZERO_TERMINATED,
                              PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &ec, &eo, NULL);
        if (!t->re) {
            PCRE2_UCHAR msg[160];
            pcre2_get_error_message(ec, msg, sizeof msg);
            moeq_set_err(err, errlen, "pre-tokenizer regex: %s at %zu", (const char *)msg, (size_t)eo);
            goto fail;
        }
        t->jit = pcre2_jit_compile(t->re, PCRE2_JIT_COMPLETE) == 0;
    }

    moeq_chat_detect(d->chat_template, &t->chat);
    t->chat_format = moeq_chat_format_of_template(d->chat_template);
    if (d->chat_template && d->chat_template[0]) {
        char terr[256] = "";
        t->tmpl = moeq_tmpl_parse(d->chat_template, strlen(d->chat_template), terr, sizeof terr);
        if (!t->tmpl) {
            moeq_set_err(err, errlen, "tokenizer.chat_template is not supported: %s", terr);
            goto fail;
        }
    } else {
        fprintf(stderr, "moeq: no chat template in the model, using the built-in ChatML\n");
    }
    return t;

oom:
    moeq_set_err(err, errlen, "out of memory building the tokenizer");
fail:
    moeq_tokenizer_free(t);
    return NULL;
}

/* ---------------------------------------------------------------- encode */

/* Growable per-call scratch for the merge loop. */
struct sym {
    int32_t id;      /* string id of the symbol's text */
    int32_t start;   /* byte offset in the word */
    int32_t len;     /* 0 once merged into its left neighbour */
    int32_t prev, next;
};

struct bigram {
    int32_t rank;
    int32_t left;    /* symbol index */
    int32_t lid, rid;/* ids when queued; a change means the entry is stale */
    int32_t result;  /* id of the merged string */
};

struct enc {
    const moeq_tokenizer *t;
    int32_t *out;
    int      max;
    int64_t  n;
    struct sym    *syms;
    size_t         syms_cap;
    struct bigram *heap;
    size_t         heap_n, heap_cap;
    pcre2_match_data *md;
    int oom;
};

static void emit(struct enc *e, int32_t id)
{
    if (e->n < e->max) e->out[e->n] = id;
    e->n++;
}

/* Lower rank first; among equal ranks the leftmost pair (the reference's
 * priority queue orders them the same way). */
static int bigram_before(const struct bigram *a, const struct bigram *b)
{
    return a->rank < b->rank || (a->rank == b->rank && a->left < b->left);
}

static void heap_push(struct enc *e, struct bigram g)
{
    if (e->heap_n == e->heap_cap) {
        size_t nc = e->heap_cap ? e->heap_cap * 2 : 256;
        struct bigram *nh = realloc(e->heap, nc * sizeof *nh);
        if (!nh) { e->oom = 1; return; }
        e->heap = nh;
        e->heap_cap = nc;
    }
    size_t i = e->heap_n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!bigram_before(&g, &e->heap[p])) break;
        e->heap[i] = e->heap[p];
        i = p;
    }
    e->heap[i] = g;
}

static struct bigram heap_pop(struct enc *e)
{
    struct bigram top = e->heap[0];
    struct bigram last = e->heap[--e->heap_n];
    size_t i = 0, n = e->heap_n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && bigram_before(&e->heap[c + 1], &e->heap[c])) c++;
        if (!bigram_before(&e->heap[c], &last)) break;
        e->heap[i] = e->heap[c];
        i = c;
    }
    if (n) e->heap[i] = last;
    return top;
}

static void try_pair(struct enc *e, int32_t left)
{
    if (left < 0) return;
    int32_t right = e->syms[left].next;
    if (right < 0) return;
    const struct merge_slot *m = merge_find(e->t, e->syms[left].id, e->syms[right].id);
    if (!m) return;
    struct bigram g = { m->rank, left, e->syms[left].id, e->syms[right].id, m->result };
    heap_push(e, g);
}

/* A symbol whose text is not a token (an extra string): its raw bytes as
 * byte tokens, those that exist. */
static void emit_bytes(struct enc *e, const unsigned char *w, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int32_t id = e->t->byte_sym[w[i]];
        if (id < e->t->n_vocab) emit(e, id);
    }
}

/* BPE over one pre-tokenized word (raw bytes). */
static void bpe_word(struct enc *e, const unsigned char *w, size_t n)
{
    const moeq_tokenizer *t = e->t;
    if (n == 0) return;
    if (n == 1) {
        int32_t id = t->byte_sym[w[0]];
        if (id < t->n_vocab) emit(e, id);
        return;
    }
    if (n > (size_t)INT32_MAX / 2) { emit_bytes(e, w, n); return; }
    if (n > e->syms_cap) {
        size_t nc = e->syms_cap ? e->syms_cap : 64;
        while (nc < n) nc *= 2;
        struct sym *ns = realloc(e->syms, nc * sizeof *ns);
        if (!ns) { e->oom = 1; emit_bytes(e, w, n); return; }
        e->syms = ns;
        e->syms_cap = nc;
    }
    struct sym *s = e->syms;
    for (size_t i = 0; i < n; i++) {
        s[i].id = t->byte_sym[w[i]];
        s[i].start = (int32_t)i;
        s[i].len = 1;
        s[i].prev = (int32_t)i - 1;
        s[i].next = i + 1 < n ? (int32_t)i + 1 : -1;
    }
    e->heap_n = 0;
    for (size_t i = 0; i + 1 < n; i++) try_pair(e, (int32_t)i);

    while (e->heap_n) {
        struct bigram g = heap_pop(e);
        struct sym *l = &s[g.left];
        if (l->len == 0 || l->id != g.lid || l->next < 0) continue;
        struct sym *r = &s[l->next];
        if (r->id != g.rid) continue;
        /* Still current: merge r into l. */
        l->id = g.result;
        l->len += r->len;
        r->len = 0;
        l->next = r->next;
        if (r->next >= 0) s[r->next].prev = g.left;
        try_pair(e, l->prev);
        try_pair(e, g.left);
    }

    for (int32_t i = 0; i >= 0; i = s[i].next) {
        if (s[i].id < t->n_vocab) emit(e, s[i].id);
        else emit_bytes(e, w + s[i].start, (size_t)s[i].len);
    }
}

/* Pre-tokenize one fragment of plain text and BPE each word. */
static void encode_fragment(struct enc *e, const unsigned char *p, size_t n)
{
    const moeq_tokenizer *t = e->t;
    size_t pos = 0, gap = 0;   /* gap: start of bytes not yet emitted */
    uint32_t opts = 0;
    while (pos < n) {
        int rc = pcre2_match(t->re, p, n, pos, opts, e->md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            /* The JIT stack or a match limit: retry this position with the
             * interpreter, whose frames live on the heap. */
            if (!(opts & PCRE2_NO_JIT) && t->jit) { opts |= PCRE2_NO_JIT; continue; }
            break;
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(e->md);
        size_t ms = ov[0], me = ov[1];
        if (me <= ms) { pos = ms + 1; continue; }   /* no alternative is empty; be safe */
        if (ms > gap) bpe_word(e, p + gap, ms - gap);   /* invalid UTF-8 between words */
        bpe_word(e, p + ms, me - ms);
        pos = gap = me;
        opts &= ~(uint32_t)PCRE2_NO_JIT;
    }
    if (gap < n) bpe_word(e, p + gap, n - gap);
}

/*
 * A fragment of the input: plain text [off, off+len) or one special token.
 * The partition splits special tokens out of the text one token at a time,
 * longest first, every occurrence in every remaining text fragment: the
 * reference's order, which decides overlaps such as "<a><a>" vs "<a>".
 */
struct frag {
    size_t  off, len;
    int32_t tok;      /* -1: text */
};

struct frags {
    struct frag *v;
    size_t n, cap;
};

static int frags_push(struct frags *f, size_t off, size_t len, int32_t tok)
{
    if (f->n == f->cap) {
        size_t nc = f->cap ? f->cap * 2 : 16;
        struct frag *nv = realloc(f->v, nc * sizeof *nv);
        if (!nv) return -1;
        f->v = nv;
        f->cap = nc;
    }
    f->v[f->n++] = (struct frag){ off, len, tok };
    return 0;
}

static int partition(const moeq_tokenizer *t, const char *text, size_t len, int parse_special,
                     struct frags *cur, struct frags *nxt)
{
    cur->n = 0;
    if (frags_push(cur, 0, len, -1)) return -1;
    for (int32_t k = 0; k < t->n_special; k++) {
        int32_t id = t->special[k];
        if (!parse_special && t->types[id] != MOEQ_TOKEN_USER_DEFINED) continue;
        size_t sn;
        const char *st = str_at(t, id, &sn);
        /* Cheap test first: most tokens never occur. */
        int any = 0;
        for (size_t i = 0; i < cur->n && !any; i++)
            if (cur->v[i].tok < 0 && memmem(text + cur->v[i].off, cur->v[i].len, st, sn)) any = 1;
        if (!any) continue;
        nxt->n = 0;
        for (size_t i = 0; i < cur->n; i++) {
            struct frag f = cur->v[i];
            if (f.tok >= 0) { if (frags_push(nxt, f.off, f.len, f.tok)) return -1; continue; }
            size_t a = f.off, end = f.off + f.len;
            while (a < end) {
                const char *hit = memmem(text + a, end - a, st, sn);
                if (!hit) break;
                size_t h = (size_t)(hit - text);
                if (h > a && frags_push(nxt, a, h - a, -1)) return -1;
                if (frags_push(nxt, h, sn, id)) return -1;
                a = h + sn;
            }
            if (a < end && frags_push(nxt, a, end - a, -1)) return -1;
        }
        struct frags tmp = *cur; *cur = *nxt; *nxt = tmp;
    }
    return 0;
}

int moeq_tokenizer_encode(const moeq_tokenizer *t, const char *text, size_t len,
                          int parse_special, int32_t *out, int max)
{
    if (len > INT_MAX) return -1;
    if (!text || len == 0) return 0;
    struct enc e = { .t = t, .out = out, .max = out ? (max > 0 ? max : 0) : 0 };
    struct frags a = { 0 }, b = { 0 };
    e.md = pcre2_match_data_create_from_pattern(t->re, NULL);
    int ok = e.md && partition(t, text, len, parse_special, &a, &b) == 0;
    if (ok) {
        for (size_t i = 0; i < a.n; i++) {
            if (a.v[i].tok >= 0) emit(&e, a.v[i].tok);
            else encode_fragment(&e, (const unsigned char *)text + a.v[i].off, a.v[i].len);
        }
    }
    free(a.v);
    free(b.v);
    free(e.syms);
    free(e.heap);
    if (e.md) pcre2_match_data_free(e.md);
    if (!ok || e.oom) return -1;
    return (int)e.n;
}

/* ---------------------------------------------------------------- decode */

const char *moeq_tokenizer_piece_ref(const moeq_tokenizer *t, int32_t id, int *len)
{
    if (id < 0 || id >= t->n_vocab) { if (len) *len = -1; return NULL; }
    if (len) *len = (int)(t->piece_off[id + 1] - t->piece_off[id]);
    return t->piece + t->piece_off[id];
}

int moeq_tokenizer_piece(const moeq_tokenizer *t, int32_t id, char *buf, int cap)
{
    int n;
    const char *p = moeq_tokenizer_piece_ref(t, id, &n);
    if (!p) return -1;
    if (n <= cap && n > 0) memcpy(buf, p, (size_t)n);
    return n;
}

int32_t moeq_tokenizer_n_vocab(const moeq_tokenizer *t) { return t->n_vocab; }

int moeq_tokenizer_token_type(const moeq_tokenizer *t, int32_t id)
{
    return id >= 0 && id < t->n_vocab ? t->types[id] : -1;
}

void moeq_tokenizer_specials(const moeq_tokenizer *t, struct moeq_token_specials *o)
{
    o->bos = t->bos;
    o->eos = t->eos;
    o->eot = t->eot;
    o->pad = t->pad;
    o->add_bos = t->add_bos;
}

int moeq_tokenizer_is_eog(const moeq_tokenizer *t, int32_t id)
{
    return id >= 0 && id < t->n_vocab && t->eog[id];
}

enum moeq_chat_kind moeq_tokenizer_chat_kind(const moeq_tokenizer *t) { return t->chat; }
int moeq_tokenizer_chat_format(const moeq_tokenizer *t) { return t->chat_format; }

/* ---------------------------------------------------------- GGUF loading */

static const gguf_value *kv_find(const gguf_file *f, const char *key)
{
    const gguf_kv *kv = gguf_find_kv(f, key);
    return kv ? &kv->val : NULL;
}

static int is_int_type(uint32_t ty)
{
    return ty == GGUF_TYPE_UINT8 || ty == GGUF_TYPE_INT8 || ty == GGUF_TYPE_UINT16 ||
           ty == GGUF_TYPE_INT16 || ty == GGUF_TYPE_UINT32 || ty == GGUF_TYPE_INT32 ||
           ty == GGUF_TYPE_UINT64 || ty == GGUF_TYPE_INT64;
}

static int is_signed_type(uint32_t ty)
{
    return ty == GGUF_TYPE_INT8 || ty == GGUF_TYPE_INT16 || ty == GGUF_TYPE_INT32 || ty == GGUF_TYPE_INT64;
}

/* An id key: -1 when absent; -2 when present but not an integer in range. */
static int32_t kv_id(const gguf_file *f, const char *key)
{
    const gguf_value *v = kv_find(f, key);
    if (!v) return -1;
    if (!is_int_type(v->type)) return -2;
    int64_t x = is_signed_type(v->type) ? v->v.i64 : (v->v.u64 > INT32_MAX ? -2 : (int64_t)v->v.u64);
    return x >= -1 && x <= INT32_MAX ? (int32_t)x : -2;
}

/* A copy of a string value (NUL-terminated) or NULL; *bad when of another type. */
static char *kv_strdup(const gguf_file *f, const char *key, int *bad)
{
    const gguf_value *v = kv_find(f, key);
    if (!v) return NULL;
    if (v->type != GGUF_TYPE_STRING || v->v.str.n > (1u << 26)) { *bad = 1; return NULL; }
    char *s = malloc(v->v.str.n + 1);
    if (!s) { *bad = 1; return NULL; }
    if (v->v.str.n) memcpy(s, v->v.str.s, v->v.str.n);
    s[v->v.str.n] = 0;
    return s;
}

static const gguf_value *kv_str_array(const gguf_file *f, const char *key, const char **why)
{
    const gguf_value *v = kv_find(f, key);
    if (!v) { *why = "is missing"; return NULL; }
    if (v->type != GGUF_TYPE_ARRAY || v->v.arr.type != GGUF_TYPE_STRING || !v->v.arr.items) {
        *why = "is not an array of strings";
        return NULL;
    }
    if (v->v.arr.n > INT32_MAX) { *why = "is too long"; return NULL; }
    return v;
}

moeq_tokenizer *moeq_tokenizer_load(const gguf_file *f, char *err, size_t errlen)
{
    const char *path = f->path ? f->path : "GGUF";
    char e2[256];
    struct moeq_vocab_desc d = { 0 };
    gguf_str *toks = NULL, *merges = NULL;
    int32_t *types = NULL;
    char *model = NULL, *pre = NULL, *tmpl = NULL;
    moeq_tokenizer *t = NULL;
    int bad = 0;
    const char *why = NULL;

    model = kv_strdup(f, "tokenizer.ggml.model", &bad);
    if (bad || !model) {
        moeq_set_err(err, errlen, "%s: tokenizer.ggml.model %s", path, bad ? "is not a string" : "is missing");
        goto out;
    }
    pre = kv_strdup(f, "tokenizer.ggml.pre", &bad);
    if (bad) { moeq_set_err(err, errlen, "%s: tokenizer.ggml.pre is not a string", path); goto out; }
    if (!pre) {
        moeq_set_err(err, errlen, "%s: tokenizer.ggml.pre is missing (the pre-tokenizer must be named)", path);
        goto out;
    }
    tmpl = kv_strdup(f, "tokenizer.chat_template", &bad);
    if (bad) { moeq_set_err(err, errlen, "%s: tokenizer.chat_template is not a string", path); goto out; }

    const gguf_value *vt = kv_str_array(f, "tokenizer.ggml.tokens", &why);
    if (!vt) { moeq_set_err(err, errlen, "%s: tokenizer.ggml.tokens %s", path, why); goto out; }
    const gguf_value *vm = kv_find(f, "tokenizer.ggml.merges");
    if (vm) {
        vm = kv_str_array(f, "tokenizer.ggml.merges", &why);
        if (!vm) { moeq_set_err(err, errlen, "%s: tokenizer.ggml.merges %s", path, why); goto out; }
    } else {
        moeq_set_err(err, errlen, "%s: tokenizer.ggml.merges is missing", path);
        goto out;
    }
    const gguf_value *vy = kv_find(f, "tokenizer.ggml.token_type");
    if (vy && (vy->type != GGUF_TYPE_ARRAY || !is_int_type(vy->v.arr.type) ||
               vy->v.arr.n != vt->v.arr.n)) {
        moeq_set_err(err, errlen, "%s: tokenizer.ggml.token_type is not an integer array of %llu entries",
                     path, (unsigned long long)vt->v.arr.n);
        goto out;
    }

    d.n_tokens = (int32_t)vt->v.arr.n;
    d.n_merges = (int32_t)vm->v.arr.n;
    toks = malloc(((size_t)d.n_tokens + 1) * sizeof *toks);
    merges = malloc(((size_t)d.n_merges + 1) * sizeof *merges);
    types = vy ? malloc(((size_t)d.n_tokens + 1) * sizeof *types) : NULL;
    if (!toks || !merges || (vy && !types)) { moeq_set_err(err, errlen, "%s: out of memory", path); goto out; }
    for (int32_t i = 0; i < d.n_tokens; i++) {
        const gguf_value *it = &vt->v.arr.items[i];
        if (it->type != GGUF_TYPE_STRING) { moeq_set_err(err, errlen, "%s: tokenizer.ggml.tokens[%d] is not a string", path, i); goto out; }
        toks[i] = it->v.str;
        if (types) {
            int64_t ty = gguf_arr_i64(vy, (uint64_t)i);
            types[i] = ty >= 0 && ty <= MOEQ_TOKEN_BYTE ? (int32_t)ty : MOEQ_TOKEN_UNDEFINED;
        }
    }
    for (int32_t i = 0; i < d.n_merges; i++) {
        const gguf_value *it = &vm->v.arr.items[i];
        if (it->type != GGUF_TYPE_STRING) { moeq_set_err(err, errlen, "%s: tokenizer.ggml.merges[%d] is not a string", path, i); goto out; }
        merges[i] = it->v.str;
    }

    static const char *const id_keys[5] = {
        "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
        "tokenizer.ggml.eom_token_id", "tokenizer.ggml.padding_token_id",
    };
    int32_t ids[5];
    for (int k = 0; k < 5; k++) {
        ids[k] = kv_id(f, id_keys[k]);
        if (ids[k] == -2 || ids[k] >= d.n_tokens) {
            moeq_set_err(err, errlen, "%s: %s is not a token id below %d", path, id_keys[k], d.n_tokens);
            goto out;
        }
    }
    d.bos = ids[0]; d.eos = ids[1]; d.eot = ids[2]; d.eom = ids[3]; d.pad = ids[4];
    const gguf_value *vb = kv_find(f, "tokenizer.ggml.add_bos_token");
    if (vb) {
        if (vb->type != GGUF_TYPE_BOOL) { moeq_set_err(err, errlen, "%s: tokenizer.ggml.add_bos_token is not a bool", path); goto out; }
        d.add_bos = vb->v.u64 != 0;
    }
    if (d.add_bos && d.bos < 0) {
        moeq_set_err(err, errlen, "%s: tokenizer.ggml.add_bos_token is true but there is no bos_token_id", path);
        goto out;
    }
    d.model = model;
    d.pre = pre;
    d.tokens = toks;
    d.types = types;
    d.merges = merges;
    d.chat_template = tmpl;
    t = moeq_tokenizer_new(&d, e2, sizeof e2);
    if (!t) moeq_set_err(err, errlen, "%s: %s", path, e2);
out:
    free(toks);
    free(merges);
    free(types);
    free(model);
    free(pre);
    free(tmpl);
    return t;
}

/* ------------------------------------------------------------------ chat */

int moeq_chat_detect(const char *tmpl, enum moeq_chat_kind *kind)
{
    *kind = MOEQ_CHAT_CHATML;
    if (!tmpl || !strstr(tmpl, "<|im_start|>")) return -1;
    /* Qwen3's template strips and re-emits <think> blocks of assistant turns. */
    if (strstr(tmpl, "<think>") || strstr(tmpl, "reasoning_content")) *kind = MOEQ_CHAT_QWEN3;
    return 0;
}

struct sbuf {
    char  *s;
    size_t n, cap;
    int    oom;
};

static void sb_put(struct sbuf *b, const char *s, size_t n)
{
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t nc = b->cap ? b->cap : 256;
        while (nc < b->n + n + 1) nc *= 2;
        char *ns = realloc(b->s, nc);
        if (!ns) { b->oom = 1; return; }
        b->s = ns;
        b->cap = nc;
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = 0;
}

static void sb_str(struct sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

/* A view of bytes [s, s+n) (Python-style strip/split on views). */
struct view { const char *s; size_t n; };

static struct view v_lstrip_nl(struct view v)
{
    while (v.n && v.s[0] == '\n') { v.s++; v.n--; }
    return v;
}

static struct view v_rstrip_nl(struct view v)
{
    while (v.n && v.s[v.n - 1] == '\n') v.n--;
    return v;
}

/* Last occurrence of needle in v, or NULL. */
static const char *v_rfind(struct view v, const char *needle)
{
    size_t k = strlen(needle);
    const char *last = NULL, *p = v.s;
    size_t left = v.n;
    const char *h;
    while (left >= k && (h = memmem(p, left, needle, k)) != NULL) {
        last = h;
        left -= (size_t)(h - p) + 1;
        p = h + 1;
    }
    return last;
}

static int starts_with(const char *s, const char *p) { return strncmp(s, p, strlen(p)) == 0; }

static int ends_with(const char *s, const char *p)
{
    size_t n = strlen(s), k = strlen(p);
    return n >= k && memcmp(s + n - k, p, k) == 0;
}

static int role_known(const char *r)
{
    return !strcmp(r, "system") || !strcmp(r, "user") || !strcmp(r, "assistant") || !strcmp(r, "tool");
}

/*
 * Qwen3's template for a chat without tools, rule by rule:
 * - a first system message, and every user message (and a later system
 *   message), as "<|im_start|>ROLE\nCONTENT<|im_end|>\n";
 * - an assistant message loses any "...</think>" prefix (its reasoning);
 *   when it comes after the last real user query and is the last message
 *   or had reasoning, the reasoning is re-emitted as
 *   "<think>\nREASONING\n</think>\n\n" before the content;
 * - consecutive tool messages share one user turn of <tool_response> blocks.
 */
static void render_qwen3(struct sbuf *b, const struct moeq_tok_msg *m, int n)
{
    int last_query = n - 1;
    for (int i = n - 1; i >= 0; i--) {
        const char *c = m[i].content ? m[i].content : "";
        if (!strcmp(m[i].role, "user") &&
            !(starts_with(c, "<tool_response>") && ends_with(c, "</tool_response>"))) {
            last_query = i;
            break;
        }
    }
    for (int i = 0; i < n; i++) {
        const char *role = m[i].role;
        const char *c = m[i].content ? m[i].content : "";
        if (!strcmp(role, "user") || !strcmp(role, "system")) {
            sb_str(b, "<|im_start|>");
            sb_str(b, role);
            sb_str(b, "\n");
            sb_str(b, c);
            sb_str(b, "<|im_end|>\n");
        } else if (!strcmp(role, "assistant")) {
            struct view content = { c, strlen(c) }, reasoning = { "", 0 };
            const char *end_tag = v_rfind(content, "</think>");
            if (end_tag) {
                struct view all = content;
                const char *after = end_tag + strlen("</think>");
                content = v_lstrip_nl((struct view){ after, (size_t)(all.s + all.n - after) });
                /* split('</think>')[0]: up to the first closing tag */
                const char *first = memmem(all.s, all.n, "</think>", 8);
                struct view head = v_rstrip_nl((struct view){ all.s, (size_t)(first - all.s) });
                const char *open = v_rfind(head, "<think>");
                if (open) {
                    const char *a = open + strlen("<think>");
                    head = (struct view){ a, (size_t)(head.s + head.n - a) };
                }
                reasoning = v_lstrip_nl(head);
            }
            sb_str(b, "<|im_start|>assistant\n");
            if (i > last_query && (i == n - 1 || reasoning.n)) {
                struct view r = v_rstrip_nl(v_lstrip_nl(reasoning));
                sb_str(b, "<think>\n");
                sb_put(b, r.s, r.n);
                sb_str(b, "\n</think>\n\n");
                content = v_lstrip_nl(content);
            }
            sb_put(b, content.s, content.n);
            sb_str(b, "<|im_end|>\n");
        } else { /* tool */
            if (i == 0 || strcmp(m[i - 1].role, "tool") != 0) sb_str(b, "<|im_start|>user");
            sb_str(b, "\n<tool_response>\n");
            sb_str(b, c);
            sb_str(b, "\n</tool_response>");
            if (i == n - 1 || strcmp(m[i + 1].role, "tool") != 0) sb_str(b, "<|im_end|>\n");
        }
    }
}

char *moeq_chat_render_kind(enum moeq_chat_kind kind, const struct moeq_tok_msg *msgs, int n,
                            int add_generation_prompt, char *err, size_t errlen)
{
    if (n < 0 || (n > 0 && !msgs)) { moeq_set_err(err, errlen, "chat: no messages"); return NULL; }
    for (int i = 0; i < n; i++) {
        if (!msgs[i].role) { moeq_set_err(err, errlen, "chat: message %d has no role", i); return NULL; }
        if (!role_known(msgs[i].role)) {
            moeq_set_err(err, errlen, "chat: unknown role '%s' in message %d (system, user, assistant, tool)",
                         msgs[i].role, i);
            return NULL;
        }
    }
    struct sbuf b = { 0 };
    sb_put(&b, "", 0);
    if (kind == MOEQ_CHAT_QWEN3) {
        render_qwen3(&b, msgs, n);
    } else {
        for (int i = 0; i < n; i++) {
            sb_str(&b, "<|im_start|>");
            sb_str(&b, msgs[i].role);
            sb_str(&b, "\n");
            sb_str(&b, msgs[i].content ? msgs[i].content : "");
            sb_str(&b, "<|im_end|>\n");
        }
    }
    if (add_generation_prompt) sb_str(&b, "<|im_start|>assistant\n");
    if (b.oom) { free(b.s); moeq_set_err(err, errlen, "chat: out of memory"); return NULL; }
    return b.s;
}

/* A token's text as a JSON string ("" when absent). */
static json_t *token_text(const moeq_tokenizer *t, int32_t id)
{
    int len = 0;
    const char *p = id >= 0 ? moeq_tokenizer_piece_ref(t, id, &len) : NULL;
    return p && len > 0 ? json_stringn_nocheck(p, (size_t)len) : json_string("");
}

char *moeq_tokenizer_chat_render_json(const moeq_tokenizer *t, json_t *ctx, char *err, size_t errlen)
{
    if (!t->tmpl) {
        /* Built-in ChatML over the messages' roles and contents. */
        json_t *msgs = json_object_get(ctx, "messages");
        size_t n = json_array_size(msgs);
        struct moeq_tok_msg *m = calloc(n ? n : 1, sizeof *m);
        if (!m) { moeq_set_err(err, errlen, "chat: out of memory"); return NULL; }
        for (size_t i = 0; i < n; i++) {
            json_t *mi = json_array_get(msgs, i);
            m[i].role = json_string_value(json_object_get(mi, "role"));
            m[i].content = json_string_value(json_object_get(mi, "content"));
        }
        char *r = moeq_chat_render_kind(MOEQ_CHAT_CHATML, m, (int)n,
                                        json_is_true(json_object_get(ctx, "add_generation_prompt")), err, errlen);
        free(m);
        return r;
    }
    json_t *c = json_copy(ctx);
    if (!c) { moeq_set_err(err, errlen, "chat: out of memory"); return NULL; }
    if (!json_object_get(c, "bos_token")) json_object_set_new(c, "bos_token", token_text(t, t->bos));
    if (!json_object_get(c, "eos_token")) json_object_set_new(c, "eos_token", token_text(t, t->eos));
    char *r = moeq_tmpl_render(t->tmpl, c, NULL, err, errlen);
    json_decref(c);
    return r;
}

char *moeq_tokenizer_chat_render(const moeq_tokenizer *t, const struct moeq_tok_msg *msgs, int n,
                                 int add_generation_prompt, char *err, size_t errlen)
{
    if (!t->tmpl) return moeq_chat_render_kind(MOEQ_CHAT_CHATML, msgs, n, add_generation_prompt, err, errlen);
    if (n < 0 || (n > 0 && !msgs)) { moeq_set_err(err, errlen, "chat: no messages"); return NULL; }
    json_t *ctx = json_object(), *ms = json_array();
    for (int i = 0; ctx && ms && i < n; i++) {
        if (!msgs[i].role || !role_known(msgs[i].role)) {
            moeq_set_err(err, errlen, "chat: unknown role '%s' in message %d (system, user, assistant, tool)",
                         msgs[i].role ? msgs[i].role : "(none)", i);
            json_decref(ctx);
            json_decref(ms);
            return NULL;
        }
        json_array_append_new(ms, json_pack("{s:s, s:s}", "role", msgs[i].role, "content",
                                            msgs[i].content ? msgs[i].content : ""));
    }
    if (!ctx || !ms) { json_decref(ctx); json_decref(ms); moeq_set_err(err, errlen, "chat: out of memory"); return NULL; }
    json_object_set_new(ctx, "messages", ms);
    json_object_set_new(ctx, "add_generation_prompt", json_boolean(add_generation_prompt));
    char *r = moeq_tokenizer_chat_render_json(t, ctx, err, errlen);
    json_decref(ctx);
    return r;
}
