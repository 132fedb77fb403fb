/*
 * chat_constrain.c: the tool-call constraint of chat_constrain.h.
 *
 * The reply after the forced opening is a sequence of phases. Most are a
 * choice among a sorted set of strings (a literal is a set of one): the
 * state keeps the range of entries that share the bytes read so far, which
 * in a sorted set is contiguous, and the choice ends when an entry is read
 * whole (every entry carries its terminator, a closing quote or ">\n", so
 * no entry is a prefix of another). The others are a JSON object (a
 * pushdown automaton with the container stack as bits, numbers, literals,
 * escapes, and runs of blanks capped so a reluctant model cannot stall in
 * them), a Coder parameter value (anything up to "</parameter>"), and a
 * free parameter name for functions that declare none.
 *
 *   Qwen3:  {"name": <NAME>, "arguments": <JSON object>}\n</tool_call>
 *   Coder:  <function=NAME>\n (<parameter=P>\n VALUE </parameter>\n)* </function>\n</tool_call>
 *
 * The state is a small struct copied per candidate token, so testing a
 * whole vocabulary costs one pass over its text and allocates nothing.
 */
#include "model/chat_constrain.h"

#include "model/chat_parse.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DEPTH 63   /* containers, as bits of a uint64_t */
/* Consecutive blanks between JSON tokens: a newline and four spaces per
 * level of nesting (pretty-printed JSON), none before the arguments (the
 * opening already ends in a space), and never more than MAX_BLANKS, so a
 * model cannot stall in them. */
#define MAX_BLANKS 32
/* Digits of a number's integer part and exponent: the reply parser (jansson)
 * refuses integers past 64 bits and reals past a double's range. */
#define MAX_INT_DIGITS 15
#define MAX_EXP_DIGITS 2

/* A sorted set of strings; orig[i]: what entry i stands for (a function's
 * index in tools for names). */
struct cset {
    char  **s;
    size_t *len;
    int    *orig;
    int     n;
};

/* The fixed sets, and the per-function ones. */
enum { SET_Q_OPEN, SET_Q_ARGS, SET_Q_END, SET_C_FUNC, SET_C_PARAMS, SET_NL_BODY, SET_NL_PARAMS, N_FIXED,
       SET_NAMES = N_FIXED, SET_KEYS };

static const char *const FIXED[N_FIXED][2] = {
    [SET_Q_OPEN] = { "{\"name\": ", NULL },
    [SET_Q_ARGS] = { ", \"arguments\": ", NULL },
    [SET_Q_END] = { "}\n</tool_call>", NULL },
    [SET_C_FUNC] = { "<function=", NULL },
    [SET_C_PARAMS] = { "<parameter=", "</function>\n</tool_call>" },
    [SET_NL_BODY] = { "\n", NULL },
    [SET_NL_PARAMS] = { "\n", NULL },
};

enum phase { PH_CHOICE, PH_JSON, PH_FREENAME, PH_BODY, PH_DONE };
enum jmode { J_TOP, J_VALUE, J_OBJ_FIRST, J_OBJ_KEY, J_COLON, J_AFTER, J_ARR_FIRST, J_STR, J_ESC, J_HEX,
             J_NUM, J_LIT, J_KEYCH };
enum num { N_MINUS, N_ZERO, N_INT, N_DOT, N_FRAC, N_E, N_ESIGN, N_EXP };

struct st {
    uint8_t  ph, set;      /* phase; the set of a choice (or of J_KEYCH) */
    int      tool;         /* the function, once chosen (-1 before) */
    int      lo, hi;       /* entries still possible */
    size_t   pos;          /* bytes of the choice (or free name) read */
    uint8_t  jm, sub, key, blanks, depth, lit, litpos, bm;
    uint8_t  tc;           /* bytes of "</tool_call>" matched in free text */
    uint8_t  u8need, u8lo, u8hi;   /* UTF-8: continuation bytes still due, the next one's range */
    uint8_t  surr;         /* a \u high surrogate was read: its low half must follow */
    uint16_t hexv;         /* the \u escape's digits so far */
    uint64_t stack;        /* bit d: the container at depth d + 1 is an object */
    uint64_t used;         /* bit i: declared key i was given (the first 64) */
};

struct moeq_call_con {
    int format;
    struct cset fixed[N_FIXED], names;
    struct cset *keys;     /* per function, in the order of names' orig */
    uint8_t *declared;     /* per function: it lists its properties (maybe none) */
    int ntools;
    struct st st;
};

static const char *const LITS[3] = { "true", "false", "null" };
static const char PARAM_CLOSE[] = "</parameter>", CALL_CLOSE[] = "</tool_call>";

/* A byte of text that must stay valid UTF-8 (jansson, which reads the
 * arguments, refuses anything else): 0 when it cannot continue it. */
static int utf8_byte(struct st *s, unsigned char b)
{
    if (s->u8need) {
        if (b < s->u8lo || b > s->u8hi) return 0;
        s->u8need--;
        s->u8lo = 0x80;
        s->u8hi = 0xBF;
        return 1;
    }
    if (b < 0x80) return 1;
    s->u8lo = 0x80;
    s->u8hi = 0xBF;
    if (b >= 0xC2 && b <= 0xDF) s->u8need = 1;
    else if (b >= 0xE0 && b <= 0xEF) { s->u8need = 2; if (b == 0xE0) s->u8lo = 0xA0; if (b == 0xED) s->u8hi = 0x9F; }
    else if (b >= 0xF0 && b <= 0xF4) { s->u8need = 3; if (b == 0xF0) s->u8lo = 0x90; if (b == 0xF4) s->u8hi = 0x8F; }
    else return 0;
    return 1;
}

/* A byte of free text (a JSON string, a parameter's name or value): valid
 * UTF-8, and never "</tool_call>", since the reply parser ends a call at
 * the first one. 0 when b cannot go on. */
static int free_byte(struct st *s, unsigned char b)
{
    if (!utf8_byte(s, b)) return 0;
    if (b == (unsigned char)CALL_CLOSE[s->tc]) return ++s->tc < sizeof CALL_CLOSE - 1;
    s->tc = b == '<';
    return 1;
}

/* ---- sets ---- */

/* Entries i and j (indices as added) in sorted order; ties by index. */
static int cmp_entry(const struct cset *cs, int i, int j)
{
    size_t n = cs->len[i] < cs->len[j] ? cs->len[i] : cs->len[j];
    int c = memcmp(cs->s[i], cs->s[j], n);
    if (c) return c;
    return cs->len[i] < cs->len[j] ? -1 : cs->len[i] > cs->len[j] ? 1 : i - j;
}

/* Insertion sort (sets are small); duplicates keep the first added.
 * -1 when out of memory. */
static int cset_sort(struct cset *cs)
{
    if (cs->n == 0) return 0;
    int *ix = malloc((size_t)cs->n * sizeof *ix);
    char **s = malloc((size_t)cs->n * sizeof *s);
    size_t *l = malloc((size_t)cs->n * sizeof *l);
    int *o = malloc((size_t)cs->n * sizeof *o);
    if (!ix || !s || !l || !o) { free(ix); free(s); free(l); free(o); return -1; }
    for (int i = 0; i < cs->n; i++) ix[i] = i;
    for (int i = 1; i < cs->n; i++)
        for (int k = i; k > 0 && cmp_entry(cs, ix[k - 1], ix[k]) > 0; k--) { int t = ix[k]; ix[k] = ix[k - 1]; ix[k - 1] = t; }
    /* apply the permutation */
    int m = 0;
    for (int i = 0; i < cs->n; i++) {
        int e = ix[i];
        if (m && l[m - 1] == cs->len[e] && !memcmp(s[m - 1], cs->s[e], cs->len[e])) { free(cs->s[e]); continue; }
        s[m] = cs->s[e];
        l[m] = cs->len[e];
        o[m] = cs->orig[e];
        m++;
    }
    free(ix);
    free(cs->orig);
    cs->orig = o;
    free(cs->s);
    free(cs->len);
    cs->s = s;
    cs->len = l;
    cs->n = m;
    return 0;
}

/* Add str (taken) with orig as what it stands for. */
static int cset_add(struct cset *cs, char *str, int orig)
{
    if (!str) return -1;
    char **s = realloc(cs->s, (size_t)(cs->n + 1) * sizeof *s);
    if (s) cs->s = s;
    size_t *l = s ? realloc(cs->len, (size_t)(cs->n + 1) * sizeof *l) : NULL;
    if (l) cs->len = l;
    int *o = l ? realloc(cs->orig, (size_t)(cs->n + 1) * sizeof *o) : NULL;
    if (!o) { free(str); return -1; }
    cs->orig = o;
    cs->s[cs->n] = str;
    cs->len[cs->n] = strlen(str);
    cs->orig[cs->n] = orig;
    cs->n++;
    return 0;
}

static void cset_free(struct cset *cs)
{
    for (int i = 0; i < cs->n; i++) free(cs->s[i]);
    free(cs->s);
    free(cs->len);
    free(cs->orig);
    memset(cs, 0, sizeof *cs);
}

/* s + suffix, malloc'd; quoted as a JSON string first when quote is set. */
static char *entry(const char *s, int quote, const char *suffix)
{
    char *q = NULL, *out = NULL;
    if (quote) {
        json_t *j = json_string(s);
        q = j ? json_dumps(j, JSON_ENCODE_ANY) : NULL;
        json_decref(j);
        if (!q) return NULL;
        s = q;
    }
    size_t a = strlen(s), b = strlen(suffix);
    if ((out = malloc(a + b + 1))) { memcpy(out, s, a); memcpy(out + a, suffix, b + 1); }
    free(q);
    return out;
}

static const struct cset *set_of(const moeq_call_con *c, const struct st *s, int set)
{
    if (set < N_FIXED) return &c->fixed[set];
    if (set == SET_NAMES) return &c->names;
    return &c->keys[s->tool];
}

/* ---- phases ---- */

static void enter_choice(struct st *s, int set, const struct cset *cs)
{
    s->ph = PH_CHOICE;
    s->set = (uint8_t)set;
    s->lo = 0;
    s->hi = cs->n - 1;
    s->pos = 0;
}

static void enter_json(struct st *s)
{
    s->ph = PH_JSON;
    s->jm = J_TOP;
    s->depth = 0;
    s->stack = 0;
    s->blanks = 0;
}

/* One byte of a choice: 0 refused, 1 read, 2 an entry completed (*done).
 * skip: bit i set, entry i is not offered. */
static int choice_step(const struct cset *cs, struct st *s, unsigned char b, int *done, uint64_t skip)
{
    int lo = -1, hi = -1;
    for (int i = s->lo; i <= s->hi; i++)
        if (!(i < 64 && (skip >> i & 1)) && cs->len[i] > s->pos && (unsigned char)cs->s[i][s->pos] == b) { if (lo < 0) lo = i; hi = i; }
    if (lo < 0) return 0;
    s->lo = lo;
    s->hi = hi;
    s->pos++;
    for (int i = lo; i <= hi; i++)
        if (cs->len[i] == s->pos) { *done = i; return 2; }
    return 1;
}

/* Has every declared key been given? (Never, past 64 keys.) */
static int all_used(const moeq_call_con *c, const struct st *s)
{
    int n = c->keys[s->tool].n;
    return n <= 64 && s->used == (n == 64 ? ~0ull : (1ull << n) - 1);
}

/* One byte of a declared key (Qwen3's quoted or Coder's "P>\n"), each key
 * offered once: choice_step over the function's keys minus those given,
 * marking the key given when it completes. */
static int key_step(const moeq_call_con *c, struct st *s, unsigned char b, int *done)
{
    int r = choice_step(&c->keys[s->tool], s, b, done, s->used);
    if (r == 2 && *done < 64) s->used |= 1ull << *done;
    return r;
}

/* The index of "<parameter=" in SET_C_PARAMS. */
static int param_entry(const struct cset *cs) { return cs->s[0][1] == 'p' ? 0 : 1; }

/* What follows a completed choice. */
static void after_choice(const moeq_call_con *c, struct st *s, int e)
{
    const struct cset *cs = set_of(c, s, s->set);
    switch (s->set) {
    case SET_Q_OPEN: case SET_C_FUNC: enter_choice(s, SET_NAMES, &c->names); break;
    case SET_NAMES:
        s->tool = c->names.orig[e];
        if (c->format == MOEQ_CALLS_QWEN3) enter_choice(s, SET_Q_ARGS, &c->fixed[SET_Q_ARGS]);
        else enter_choice(s, SET_C_PARAMS, &c->fixed[SET_C_PARAMS]);
        break;
    case SET_Q_ARGS: enter_json(s); break;
    case SET_C_PARAMS:
        if (cs->s[e][1] != 'p') { s->ph = PH_DONE; break; }       /* "</function>..." */
        if (c->declared[s->tool]) { enter_choice(s, SET_KEYS, &c->keys[s->tool]); }
        else { s->ph = PH_FREENAME; s->pos = 0; }
        break;
    case SET_KEYS: s->ph = PH_BODY; s->bm = 0; break;              /* Coder: "P>\n" read */
    case SET_NL_BODY: s->ph = PH_BODY; s->bm = 0; break;
    case SET_NL_PARAMS: enter_choice(s, SET_C_PARAMS, &c->fixed[SET_C_PARAMS]); break;
    default: s->ph = PH_DONE; break;                               /* SET_Q_END */
    }
}

static int blank(unsigned char b) { return b == ' ' || b == '\t' || b == '\n' || b == '\r'; }
static int digit(unsigned char b) { return b >= '0' && b <= '9'; }
static int hexdigit(unsigned char b) { return digit(b) || (b >= 'a' && b <= 'f') || (b >= 'A' && b <= 'F'); }

static int max_blanks(const struct st *s)
{
    int m = s->jm == J_TOP ? 0 : 1 + 4 * s->depth;
    return m < MAX_BLANKS ? m : MAX_BLANKS;
}

static int top_is_object(const struct st *s) { return (int)((s->stack >> (s->depth - 1)) & 1); }

static int push(struct st *s, int object, int mode)
{
    if (s->depth >= MAX_DEPTH) return 0;
    s->stack = (s->stack & ~(1ull << s->depth)) | ((uint64_t)object << s->depth);
    s->depth++;
    s->jm = (uint8_t)mode;
    return 1;
}

/* Close a container: 2 when it was the arguments object. */
static int pop(struct st *s)
{
    s->depth--;
    s->jm = J_AFTER;
    return s->depth == 0 ? 2 : 1;
}

static int value_start(struct st *s, unsigned char b)
{
    switch (b) {
    case '{': return push(s, 1, J_OBJ_FIRST);
    case '[': return push(s, 0, J_ARR_FIRST);
    case '"': s->jm = J_STR; s->key = 0; return 1;
    case '-': s->jm = J_NUM; s->sub = N_MINUS; s->litpos = 0; return 1;
    case 't': case 'f': case 'n':
        s->jm = J_LIT; s->lit = b == 't' ? 0 : b == 'f' ? 1 : 2; s->litpos = 1; return 1;
    default:
        if (!digit(b)) return 0;
        s->jm = J_NUM;
        s->sub = b == '0' ? N_ZERO : N_INT;
        s->litpos = 1;   /* digits of the part being read */
        return 1;
    }
}

static int key_start(const moeq_call_con *c, struct st *s, unsigned char b)
{
    const struct cset *keys = s->tool >= 0 ? &c->keys[s->tool] : NULL;
    if (s->depth == 1 && keys && c->declared[s->tool]) {
        int e = 0;
        if (all_used(c, s)) return 0;              /* none left (or none declared: {} only) */
        enter_choice(s, SET_KEYS, keys);
        s->ph = PH_JSON;
        s->jm = J_KEYCH;
        return key_step(c, s, b, &e) == 1;   /* the opening quote */
    }
    s->jm = J_STR;
    s->key = 1;
    return 1;
}

/* One byte of the arguments: 0 refused, 1 read, 2 the object closed. */
static int json_step(const moeq_call_con *c, struct st *s, unsigned char b)
{
    if (blank(b) && (s->jm == J_TOP || s->jm == J_VALUE || s->jm == J_OBJ_FIRST || s->jm == J_OBJ_KEY ||
                     s->jm == J_COLON || s->jm == J_AFTER || s->jm == J_ARR_FIRST))
        return ++s->blanks <= max_blanks(s);
    if (s->jm != J_NUM) s->blanks = 0;
    switch (s->jm) {
    case J_TOP: return b == '{' && push(s, 1, J_OBJ_FIRST);
    case J_VALUE: return value_start(s, b);
    case J_ARR_FIRST: return b == ']' ? pop(s) : value_start(s, b);
    case J_OBJ_FIRST: if (b == '}') return pop(s); /* fall through */
    case J_OBJ_KEY: return b == '"' && key_start(c, s, b);
    case J_COLON: if (b != ':') return 0; s->jm = J_VALUE; return 1;
    case J_AFTER:
        if (b == ',') {
            if (s->depth == 1 && s->tool >= 0 && c->declared[s->tool] && all_used(c, s)) return 0;
            s->jm = top_is_object(s) ? J_OBJ_KEY : J_VALUE;
            return 1;
        }
        if (b == (top_is_object(s) ? '}' : ']')) return pop(s);
        return 0;
    case J_STR:
        if (b < 0x20 || (s->u8need && b < 0x80)) return 0;
        if (s->surr && b != '\\') return 0;            /* the low surrogate's escape is due */
        if (b == '"') { s->jm = s->key ? J_COLON : J_AFTER; s->tc = 0; }
        else if (b == '\\') s->jm = J_ESC;
        else return free_byte(s, b);
        return 1;
    case J_ESC:
        if (b == 'u') { s->jm = J_HEX; s->litpos = 0; s->hexv = 0; return 1; }
        if (s->surr || !b || !strchr("\"\\/bfnrt", b)) return 0;
        s->jm = J_STR;
        return 1;
    case J_HEX: {
        /* jansson refuses \u0000 and unpaired surrogates: decided by the
         * digit that makes them, so another digit always remains */
        if (!hexdigit(b)) return 0;
        unsigned v = (unsigned)(digit(b) ? b - '0' : (b | 0x20) - 'a' + 10);
        unsigned h = (unsigned)s->hexv << 4 | v;
        int k = ++s->litpos;
        if (k == 1 && s->surr && v != 0xD) return 0;
        if (k == 2 && s->surr && (h & 0xF) < 0xC) return 0;          /* DC..DF */
        if (k == 2 && !s->surr && h >= 0xDC && h <= 0xDF) return 0;  /* a lone low half */
        if (k == 4 && h == 0) return 0;
        s->hexv = (uint16_t)h;
        if (k == 4) {
            s->jm = J_STR;
            s->surr = !s->surr && h >= 0xD800 && h <= 0xDBFF;
        }
        return 1;
    }
    case J_LIT:
        if (b != (unsigned char)LITS[s->lit][s->litpos]) return 0;
        if (!LITS[s->lit][++s->litpos]) s->jm = J_AFTER;
        return 1;
    case J_KEYCH: {
        int e = 0, r = key_step(c, s, b, &e);
        if (r == 2) s->jm = J_COLON;
        return r != 0;
    }
    case J_NUM:
        switch (s->sub) {
        case N_MINUS: if (!digit(b)) return 0; s->sub = b == '0' ? N_ZERO : N_INT; s->litpos = 1; return 1;
        case N_DOT: if (!digit(b)) return 0; s->sub = N_FRAC; return 1;
        case N_ESIGN: if (!digit(b)) return 0; s->sub = N_EXP; s->litpos = 1; return 1;
        case N_E:
            if (b == '+' || b == '-') { s->sub = N_ESIGN; return 1; }
            if (!digit(b)) return 0;
            s->sub = N_EXP;
            s->litpos = 1;
            return 1;
        default: break;
        }
        if (digit(b) && s->sub == N_FRAC) return 1;
        if (digit(b) && s->sub != N_ZERO) return ++s->litpos <= (s->sub == N_INT ? MAX_INT_DIGITS : MAX_EXP_DIGITS);
        if (b == '.' && (s->sub == N_ZERO || s->sub == N_INT)) { s->sub = N_DOT; return 1; }
        if ((b == 'e' || b == 'E') && s->sub != N_EXP) { s->sub = N_E; return 1; }
        s->jm = J_AFTER;          /* the number ended: the byte belongs to what follows */
        return json_step(c, s, b);
    }
    return 0;
}

/* One byte of the reply: 0 refused, 1 read. */
static int step(const moeq_call_con *c, struct st *s, unsigned char b)
{
    int e = 0, r;
    switch (s->ph) {
    case PH_DONE: return 1;
    case PH_CHOICE: {
        const struct cset *cs = set_of(c, s, s->set);
        /* with every declared parameter given (or none declared) only the close is offered */
        uint64_t skip = s->set == SET_C_PARAMS && c->declared[s->tool] && all_used(c, s) ? 1ull << param_entry(cs) : 0;
        r = s->set == SET_KEYS ? key_step(c, s, b, &e) : choice_step(cs, s, b, &e, skip);
        if (r == 2) after_choice(c, s, e);
        return r != 0;
    }
    case PH_JSON:
        r = json_step(c, s, b);
        if (r == 2) enter_choice(s, SET_Q_END, &c->fixed[SET_Q_END]);
        return r != 0;
    case PH_FREENAME:
        if (b == '>' && s->pos > 0 && !s->u8need) { enter_choice(s, SET_NL_BODY, &c->fixed[SET_NL_BODY]); return 1; }
        if (b == '>' || b == '<' || b == '\n' || !utf8_byte(s, b)) return 0;
        s->pos++;
        return 1;
    case PH_BODY:
        if (!free_byte(s, b)) return 0;
        if (b == (unsigned char)PARAM_CLOSE[s->bm]) {
            if (++s->bm == sizeof PARAM_CLOSE - 1) {
                enter_choice(s, SET_NL_PARAMS, &c->fixed[SET_NL_PARAMS]);
                s->tc = 0;
            }
        } else {
            s->bm = b == '<';
        }
        return 1;
    }
    return 0;
}

/* ---- the interface ---- */

void moeq_call_con_free(moeq_call_con *c)
{
    if (!c) return;
    for (int i = 0; i < N_FIXED; i++) cset_free(&c->fixed[i]);
    cset_free(&c->names);
    for (int i = 0; c->keys && i < c->ntools; i++) cset_free(&c->keys[i]);
    free(c->keys);
    free(c->declared);
    free(c);
}

moeq_call_con *moeq_call_con_new(int format, const json_t *tools, const char *name)
{
    if ((format != MOEQ_CALLS_QWEN3 && format != MOEQ_CALLS_QWEN3_CODER) || !json_is_array(tools) ||
        json_array_size(tools) == 0 || json_array_size(tools) > 100000)
        return NULL;
    moeq_call_con *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->format = format;
    c->ntools = (int)json_array_size(tools);
    c->keys = calloc((size_t)c->ntools, sizeof *c->keys);
    c->declared = calloc((size_t)c->ntools, 1);
    int ok = c->keys && c->declared, forced = -1;
    const int qwen3 = format == MOEQ_CALLS_QWEN3;
    for (int i = 0; ok && i < N_FIXED; i++)
        for (int k = 0; ok && k < 2 && FIXED[i][k]; k++) ok = cset_add(&c->fixed[i], strdup(FIXED[i][k]), k) == 0;
    for (int i = 0; ok && i < c->ntools; i++) {
        const json_t *f = moeq_chat_tool_function(json_array_get(tools, (size_t)i));
        const char *nm = json_string_value(json_object_get(f, "name"));
        /* a name the syntax cannot carry is never offered */
        int usable = nm && *nm && (qwen3 || !strpbrk(nm, "<>\n"));
        if (usable) ok = cset_add(&c->names, entry(nm, qwen3, qwen3 ? "" : ">\n"), i) == 0;
        if (ok && usable && name && !strcmp(nm, name) && forced < 0) forced = i;
        const json_t *props = json_object_get(json_object_get(f, "parameters"), "properties");
        c->declared[i] = json_is_object(props);
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)props, k, v) {
            if (!ok) break;
            if (!*k || (!qwen3 && strpbrk(k, "<>\n"))) continue;
            ok = cset_add(&c->keys[i], entry(k, qwen3, qwen3 ? "" : ">\n"), c->keys[i].n) == 0;
        }
    }
    if (ok) {
        for (int i = 0; i < N_FIXED; i++) ok = ok && cset_sort(&c->fixed[i]) == 0;
        ok = ok && cset_sort(&c->names) == 0;
        for (int i = 0; i < c->ntools; i++) ok = ok && cset_sort(&c->keys[i]) == 0;
    }
    ok = ok && c->names.n > 0 && (!name || forced >= 0);
    if (!ok) { moeq_call_con_free(c); return NULL; }
    struct st *s = &c->st;
    s->tool = forced;
    if (qwen3 && forced >= 0) enter_json(s);
    else if (qwen3) enter_choice(s, SET_Q_OPEN, &c->fixed[SET_Q_OPEN]);
    else if (forced >= 0) enter_choice(s, SET_C_PARAMS, &c->fixed[SET_C_PARAMS]);
    else enter_choice(s, SET_C_FUNC, &c->fixed[SET_C_FUNC]);
    return c;
}

int moeq_call_con_allows(const moeq_call_con *c, const char *text, size_t n)
{
    if (c->st.ph == PH_DONE) return 1;
    if (n == 0) return 0;
    struct st s = c->st;
    for (size_t i = 0; i < n; i++) {
        if (!step(c, &s, (unsigned char)text[i])) return 0;
        if (s.ph == PH_DONE) return 1;
    }
    return 1;
}

int moeq_call_con_feed(moeq_call_con *c, const char *text, size_t n)
{
    for (size_t i = 0; i < n && c->st.ph != PH_DONE; i++)
        if (!step(c, &c->st, (unsigned char)text[i])) { c->st.ph = PH_DONE; return 0; }
    return 1;
}

int moeq_call_con_done(const moeq_call_con *c) { return c->st.ph == PH_DONE; }
