/*
 * synth_vocab.c: the byte-level BPE vocabulary of synthesized models.
 *
 * A synthesized model must carry a tokenizer that a GPT-2-style loader
 * accepts (ours and llama.cpp's): 256 byte tokens spelled in the GPT-2
 * byte-to-unicode alphabet, then merges, then the ChatML control tokens,
 * then unused padding up to the requested vocabulary size. The merges are
 * learned here, deterministically, from a small English text embedded below
 * (written for this purpose), by a plain BPE trainer: count adjacent symbol
 * pairs inside pre-tokenized words, merge the most frequent (ties go to the
 * pair created first), repeat. So a synthesized model tokenizes English into
 * plausible multi-byte tokens and its merges are consistent with its tokens.
 */
#include "synth/synth.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Original prose, ordinary English with digits and punctuation, so that the
 * learned merges cover common words, spaces-before-words and numbers. */
static const char corpus[] =
    "The river town wakes before the sun. Bakers open their doors at four, and the smell of "
    "warm bread drifts down the narrow streets toward the water. Fishermen check their nets, "
    "count the floats, and argue about the weather in low voices. By six the market square is "
    "full: there are carts of apples and pears, baskets of eggs, wheels of cheese wrapped in "
    "cloth, and a man who sells nothing but brooms. Children run between the stalls while "
    "their parents compare prices and trade news from the villages upstream.\n\n"
    "In the spring the river rises. Snow melts in the hills and the water turns brown and "
    "fast, carrying branches, leaves and sometimes an old boat that broke free from its "
    "rope. The town has learned to live with this. Houses near the bank stand on stone "
    "pillars, and every family keeps a small boat tied behind the kitchen. When the water "
    "comes over the road, people visit each other by rowing, and the school closes for a "
    "week. Most of the children think this is the best time of the year.\n\n"
    "Summer is slow and bright. The fields outside the town turn gold, and farmers work from "
    "early morning until the light is gone. At noon everyone rests in the shade. Old men play "
    "cards under the trees by the church, and the sound of their laughter carries across the "
    "square. In the evening the young people walk along the river and watch the boats come "
    "home. Some nights there is music, a fiddle and a drum and a woman who sings songs that "
    "nobody else remembers.\n\n"
    "The town keeps a record of its history in a thick book at the library. The first page "
    "was written in 1642, when twelve families built a mill on the river and a bridge of "
    "wood across it. The bridge burned in 1718 and again in 1803; the stone bridge that "
    "stands today was finished in 1851 and cost 3,400 pounds, which was a great deal of money "
    "at the time. The book lists every flood, every fire, every good harvest and every bad "
    "one. It records that in the winter of 1891 the river froze so hard that a horse and cart "
    "could cross it, and that in 1947 the water reached the second step of the church.\n\n"
    "Learning a new skill takes patience. At first every step feels strange, and the "
    "mistakes seem larger than the progress. A person who wants to play the piano must "
    "practice the same few bars again and again, slowly, until the fingers know the way "
    "without being told. A student of a new language must read simple stories, write short "
    "letters, and speak with other people even when the words come out wrong. What matters "
    "is not talent but time: a little work every day, repeated for months, changes what a "
    "person is able to do.\n\n"
    "Computers follow the same rule in their own way. A program that learns from examples "
    "sees the same data many times, adjusts its numbers a little after each example, and "
    "slowly becomes better at its task. The numbers are stored in large tables, and the "
    "tables can be made smaller by keeping fewer bits for each number. This saves memory "
    "and time, but it also adds a small error to every value. The art is to choose where "
    "the error can be tolerated and where it cannot, so that the smaller program still "
    "gives the same answers as the larger one.\n\n"
    "\"Where are you going?\" asked the girl at the gate. \"To the market,\" said her brother, "
    "\"and then to the mill, if there is time.\" She asked him to bring back some thread, "
    "two needles and a loaf of the dark bread that the baker on the corner makes on "
    "Thursdays. He said he would try, but he could not promise anything, because the baker "
    "often sells out before nine o'clock. She laughed and told him to run, then.\n\n"
    "Weather changes quickly near the water. A clear morning can turn grey by lunch, and a "
    "storm that starts in the west may reach the town in less than an hour. The old people "
    "say they can feel it in their knees. The younger ones watch the sky and the birds: when "
    "the swallows fly low over the river, rain is coming. Both methods are right about as "
    "often as the forecast on the radio, which is to say, most of the time but not always.\n\n"
    "There are 7 days in a week, 12 months in a year, 24 hours in a day and 60 minutes in "
    "an hour. A good loaf needs 500 grams of flour, 350 grams of water, 10 grams of salt and "
    "a little yeast. It should rest for 2 hours, be folded 3 or 4 times, and bake for about "
    "40 minutes in a very hot oven. The crust should be dark and the inside soft. Many people "
    "in the town still bake their own bread, though fewer than before.\n\n"
    "When the autumn comes, the leaves on the hills turn red and yellow and the nights grow "
    "cold. Families gather wood for the winter and store apples in the cellar. The school "
    "opens again, the market moves indoors, and the fishermen paint their boats. The river "
    "is quiet and clear, and on still mornings it holds a perfect picture of the town, the "
    "bridge and the church, upside down in the water.\n";

/* ------------------------------------------------------- byte alphabet */

/* GPT-2's byte-to-unicode map: printable Latin-1 bytes stand for
 * themselves, the other 68 bytes take code points 256, 257, ... in byte
 * order, so every byte becomes a visible character. */
static unsigned byte_codepoint(int b)
{
    int printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    if (printable) return (unsigned)b;
    unsigned n = 0;
    for (int x = 0; x < b; x++) {
        int p = (x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255);
        if (!p) n++;
    }
    return 256 + n;
}

static int utf8_put(char *out, unsigned cp)
{
    if (cp < 0x80) { out[0] = (char)cp; return 1; }
    out[0] = (char)(0xC0 | (cp >> 6));
    out[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
}

/* ------------------------------------------------------ pre-tokenizer */

static int is_alpha(int c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
static int is_digit(int c) { return c >= '0' && c <= '9'; }
static int is_space(int c) { return c == ' ' || c == '\n' || c == '\t' || c == '\r'; }

/*
 * Split ASCII text into words the way the qwen2 pre-tokenizer would for
 * such text: a letter run with one optional leading non-letter (usually the
 * space), single digits, punctuation runs with an optional leading space,
 * newline runs, space runs. Calls fn(word, len) for each.
 */
static void pretokenize(const char *s, size_t n, void (*fn)(void *, const char *, size_t), void *ctx)
{
    size_t i = 0;
    while (i < n) {
        size_t j = i;
        int c = (unsigned char)s[i];
        if (c == '\'' && i + 1 < n && strchr("stmd", s[i + 1]) && !(i + 2 < n && is_alpha(s[i + 2]))) {
            j = i + 2;
        } else if (is_alpha(c) || (!is_digit(c) && c != '\n' && i + 1 < n && is_alpha(s[i + 1]))) {
            j = i + 1;
            while (j < n && is_alpha(s[j])) j++;
        } else if (is_digit(c)) {
            j = i + 1;
        } else if (c == '\n') {
            while (j < n && s[j] == '\n') j++;
        } else if (c == ' ' && i + 1 < n && !is_space(s[i + 1]) && !is_alpha(s[i + 1]) && !is_digit(s[i + 1])) {
            j = i + 1;
            while (j < n && !is_space(s[j]) && !is_alpha(s[j]) && !is_digit(s[j])) j++;
        } else if (is_space(c)) {
            while (j < n && s[j] == ' ') j++;
            /* a space run before a word leaves its last space to the word */
            if (j < n && j - i > 1 && !is_space(s[j])) j--;
            if (j == i) j = i + 1;
        } else {
            while (j < n && !is_space(s[j]) && !is_alpha(s[j]) && !is_digit(s[j])) j++;
            if (j == i) j = i + 1;
        }
        fn(ctx, s + i, j - i);
        i = j;
    }
}

/* ------------------------------------------------------------- trainer */

struct word { int *sym; int n; int count; };

struct words { struct word *w; int n, cap; };

static void add_word(void *ctx, const char *s, size_t len)
{
    struct words *ws = ctx;
    for (int i = 0; i < ws->n; i++) {
        struct word *w = &ws->w[i];
        if ((size_t)w->n != len) continue;
        int same = 1;
        for (size_t k = 0; k < len && same; k++) same = w->sym[k] == (unsigned char)s[k];
        if (same) { w->count++; return; }
    }
    if (ws->n == ws->cap) {
        ws->cap = ws->cap ? ws->cap * 2 : 256;
        ws->w = realloc(ws->w, (size_t)ws->cap * sizeof *ws->w);
        if (!ws->w) { fprintf(stderr, "moeq: out of memory\n"); exit(1); }
    }
    struct word *w = &ws->w[ws->n++];
    w->sym = malloc(len * sizeof *w->sym);
    if (!w->sym) { fprintf(stderr, "moeq: out of memory\n"); exit(1); }
    for (size_t k = 0; k < len; k++) w->sym[k] = (unsigned char)s[k];
    w->n = (int)len;
    w->count = 1;
}

/* Pair counts in an open-addressed table keyed by (left << 32 | right). */
struct pairtab { uint64_t *key; int *cnt; size_t cap; };

static void pair_add(struct pairtab *t, uint64_t key, int c)
{
    size_t h = (size_t)((key * 0x9E3779B97F4A7C15ull) >> 40) & (t->cap - 1);
    while (t->cnt[h] && t->key[h] != key) h = (h + 1) & (t->cap - 1);
    t->key[h] = key;
    t->cnt[h] += c;
}

static char *xstrdup(const char *s)
{
    char *d = strdup(s);
    if (!d) { fprintf(stderr, "moeq: out of memory\n"); exit(1); }
    return d;
}

int moeq_synth_vocab_build(int n_vocab, moeq_synth_vocab *v, char *err, size_t errlen)
{
    memset(v, 0, sizeof *v);
    if (n_vocab < 256 + 3) {
        snprintf(err, errlen, "vocabulary of %d tokens is too small (at least 259: 256 bytes and 3 control tokens)", n_vocab);
        return -1;
    }
    int max_merges = n_vocab - 256 - 3;

    v->tokens = calloc((size_t)n_vocab, sizeof *v->tokens);
    v->types = calloc((size_t)n_vocab, sizeof *v->types);
    v->merges = calloc((size_t)(max_merges > 0 ? max_merges : 1), sizeof *v->merges);
    if (!v->tokens || !v->types || !v->merges) { fprintf(stderr, "moeq: out of memory\n"); exit(1); }
    v->n_tokens = n_vocab;

    for (int b = 0; b < 256; b++) {
        char buf[4];
        int k = utf8_put(buf, byte_codepoint(b));
        buf[k] = 0;
        v->tokens[b] = xstrdup(buf);
        v->types[b] = 1; /* NORMAL */
    }

    struct words ws = { 0 };
    pretokenize(corpus, sizeof corpus - 1, add_word, &ws);

    struct pairtab t;
    t.cap = 1 << 16;
    t.key = malloc(t.cap * sizeof *t.key);
    t.cnt = malloc(t.cap * sizeof *t.cnt);
    if (!t.key || !t.cnt) { fprintf(stderr, "moeq: out of memory\n"); exit(1); }

    int next = 256;
    for (int m = 0; m < max_merges; m++) {
        memset(t.cnt, 0, t.cap * sizeof *t.cnt);
        for (int i = 0; i < ws.n; i++)
            for (int k = 0; k + 1 < ws.w[i].n; k++)
                pair_add(&t, (uint64_t)ws.w[i].sym[k] << 32 | (uint32_t)ws.w[i].sym[k + 1], ws.w[i].count);
        /* most frequent pair; ties to the smallest ids (the pair whose
         * parts were created first), so the result never depends on the
         * table's layout */
        uint64_t best = 0;
        int bestc = 0;
        for (size_t h = 0; h < t.cap; h++)
            if (t.cnt[h] > bestc || (t.cnt[h] == bestc && bestc && t.key[h] < best))
                best = t.key[h], bestc = t.cnt[h];
        if (bestc < 2) break; /* nothing repeats: padding fills the rest */
        int a = (int)(best >> 32), b = (int)(best & 0xffffffffu);
        size_t la = strlen(v->tokens[a]), lb = strlen(v->tokens[b]);
        char *tok = malloc(la + lb + 1), *mer = malloc(la + lb + 2);
        if (!tok || !mer) { fprintf(stderr, "moeq: out of memory\n"); exit(1); }
        memcpy(tok, v->tokens[a], la); memcpy(tok + la, v->tokens[b], lb + 1);
        memcpy(mer, v->tokens[a], la); mer[la] = ' '; memcpy(mer + la + 1, v->tokens[b], lb + 1);
        v->tokens[next] = tok;
        v->types[next] = 1;
        v->merges[v->n_merges++] = mer;
        for (int i = 0; i < ws.n; i++) {
            struct word *w = &ws.w[i];
            int o = 0;
            for (int k = 0; k < w->n; k++) {
                if (k + 1 < w->n && w->sym[k] == a && w->sym[k + 1] == b) { w->sym[o++] = next; k++; }
                else w->sym[o++] = w->sym[k];
            }
            w->n = o;
        }
        next++;
    }
    free(t.key); free(t.cnt);
    for (int i = 0; i < ws.n; i++) free(ws.w[i].sym);
    free(ws.w);

    /* ChatML control tokens right after the learned ones (as in Qwen's
     * vocabulary), then unused padding named by id, as llama.cpp's
     * converter pads a vocabulary to the embedding's size. */
    static const char *const specials[3] = { "<|endoftext|>", "<|im_start|>", "<|im_end|>" };
    for (int k = 0; k < 3; k++) {
        v->tokens[next] = xstrdup(specials[k]);
        v->types[next] = 3; /* CONTROL */
        next++;
    }
    v->bos = v->pad = next - 3;
    v->eos = next - 1;
    for (; next < n_vocab; next++) {
        char buf[32];
        snprintf(buf, sizeof buf, "[PAD%d]", next);
        v->tokens[next] = xstrdup(buf);
        v->types[next] = 5; /* UNUSED */
    }
    return 0;
}

void moeq_synth_vocab_free(moeq_synth_vocab *v)
{
    if (v->tokens)
        for (int i = 0; i < v->n_tokens; i++) free(v->tokens[i]);
    if (v->merges)
        for (int i = 0; i < v->n_merges; i++) free(v->merges[i]);
    free(v->tokens); free(v->types); free(v->merges);
    memset(v, 0, sizeof *v);
}
