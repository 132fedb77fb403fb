/*
 * chat_template.c: a Jinja-subset interpreter for chat templates (see
 * chat_template.h for the subset and the environment it mirrors).
 *
 * Three stages. The segmenter cuts the source into text, {{ expression }}
 * and {% statement %} pieces and applies Jinja's whitespace rules there
 * (`-` strips all whitespace on its side; trim_blocks drops the newline
 * after a block or comment tag; lstrip_blocks drops the indentation before
 * one). The parser turns each tag's tokens into expression trees and the
 * statements into a node tree, checking every filter, test and statement
 * name against what the evaluator implements. The evaluator walks the tree
 * with jansson values: undefined is one marker object per render, a
 * namespace or a loop object is a plain JSON object, a macro is looked up
 * by name when called.
 *
 * Tuples are lists here (a tuple literal or an item pair prints as a list
 * would). Output and string conversion follow Python: str(None) is "None", floats
 * print as repr() does, lists and dicts as their repr; `tojson` is
 * json.dumps with ensure_ascii=False and keys in insertion order (jansson
 * keeps it).
 */
#include "model/chat_template.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ===================================================================== */
/* String buffer                                                          */
/* ===================================================================== */

typedef struct { char *p; size_t n, cap; int oom; } sbuf;

static void sb_add(sbuf *b, const char *s, size_t n)
{
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *np = realloc(b->p, cap);
        if (!np) { b->oom = 1; return; }
        b->p = np; b->cap = cap;
    }
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}
static void sb_adds(sbuf *b, const char *s) { sb_add(b, s, strlen(s)); }
static void sb_addc(sbuf *b, char c) { sb_add(b, &c, 1); }
static char *sb_take(sbuf *b, size_t *n)
{
    if (b->oom) { free(b->p); return NULL; }
    if (!b->p) sb_add(b, "", 0);
    if (b->oom) return NULL;
    if (n) *n = b->n;
    return b->p;
}

/* Room for element n of an array of *cap elements (doubling from 8): the
 * array, moved or not, or NULL when out of memory (the old one stays). */
static void *grow_buf(void *v, int *cap, int n, size_t elem)
{
    if (n < *cap) return v;
    int nc = *cap ? *cap * 2 : 8;
    void *p = realloc(v, (size_t)nc * elem);
    if (p) *cap = nc;
    return p;
}

/* ===================================================================== */
/* Segments: text, expressions and statements with whitespace applied     */
/* ===================================================================== */

enum seg_kind { SEG_TEXT, SEG_EXPR, SEG_STMT };
struct seg { enum seg_kind k; const char *s; size_t n; int line; };

struct segs { struct seg *v; int n, cap; };

static int seg_push(struct segs *ss, enum seg_kind k, const char *s, size_t n, int line)
{
    struct seg *nv = grow_buf(ss->v, &ss->cap, ss->n, sizeof *nv);
    if (!nv) return -1;
    ss->v = nv;
    ss->v[ss->n++] = (struct seg){ k, s, n, line };
    return 0;
}

static int count_lines(const char *a, const char *b)
{
    int n = 0;
    for (; a < b; a++) n += *a == '\n';
    return n;
}

/* The end of a tag's body: the closing delimiter outside string literals. */
static const char *tag_end(const char *p, const char *end, char close)
{
    char q = 0;
    for (; p + 1 < end; p++) {
        if (q) {
            if (*p == '\\') { p++; continue; }
            if (*p == q) q = 0;
        } else if (*p == '\'' || *p == '"') {
            q = *p;
        } else if (*p == close && p[1] == '}') {
            return p;
        }
    }
    return NULL;
}

static int segment(const char *src, size_t len, struct segs *ss, char *err, size_t errlen)
{
    const char *p = src, *end = src + len, *text = src;
    int line = 1, strip_next = 0;
    while (p < end) {
        const char *o = NULL;
        for (const char *q = p; q + 1 < end; q++)
            if (q[0] == '{' && (q[1] == '{' || q[1] == '%' || q[1] == '#')) { o = q; break; }
        const char *tend = o ? o : end;
        /* the text before the tag */
        const char *ts = text, *te = tend;
        if (strip_next == 1) while (ts < te && isspace((unsigned char)*ts)) ts++;
        else if (strip_next == 2 && ts < te && *ts == '\n') ts++;
        strip_next = 0;
        if (!o) {
            if (te > ts && seg_push(ss, SEG_TEXT, ts, (size_t)(te - ts), line) != 0) goto oom;
            break;
        }
        char kind = o[1];
        const char *b = o + 2;
        int lminus = b < end && *b == '-', lplus = b < end && *b == '+';
        if (lminus || lplus) b++;
        if (lminus) {
            while (te > ts && isspace((unsigned char)te[-1])) te--;
        } else if (!lplus && kind != '{') {
            /* lstrip_blocks: the tag is the first thing on its line in the
             * source (only blanks before it): drop those blanks */
            const char *q = o;
            while (q > src && (q[-1] == ' ' || q[-1] == '\t')) q--;
            if (q == src || q[-1] == '\n') te = q > ts ? q : ts;
        }
        if (te > ts && seg_push(ss, SEG_TEXT, ts, (size_t)(te - ts), line) != 0) goto oom;
        line += count_lines(text, b);
        const char *c;
        if (kind == '#') {
            c = NULL;
            for (const char *q = b; q + 1 < end; q++)
                if (q[0] == '#' && q[1] == '}') { c = q; break; }
        } else {
            c = tag_end(b, end, kind == '{' ? '}' : '%');
        }
        if (!c) {
            snprintf(err, errlen, "line %d: unclosed %s tag", line,
                     kind == '{' ? "{{" : kind == '%' ? "{%" : "{#");
            return -1;
        }
        const char *be = c;
        int rminus = be > b && be[-1] == '-';
        if (rminus || (be > b && be[-1] == '+')) be--;
        if (kind != '#' &&
            seg_push(ss, kind == '{' ? SEG_EXPR : SEG_STMT, b, (size_t)(be - b), line) != 0)
            goto oom;
        line += count_lines(b, c + 2);
        p = text = c + 2;
        strip_next = rminus ? 1 : kind != '{' ? 2 : 0;
    }
    return 0;
oom:
    snprintf(err, errlen, "out of memory");
    return -1;
}

/* ===================================================================== */
/* Tokens of one tag                                                      */
/* ===================================================================== */

enum tk { T_END, T_NAME, T_STR, T_INT, T_FLOAT, T_OP };
struct tok {
    enum tk k;
    char *s;        /* name or decoded string (malloc'd) */
    size_t n;
    long long i;
    double f;
    char op[3];
};

struct toks { struct tok *v; int n, cap, pos; int line; };

static void toks_free(struct toks *t)
{
    for (int i = 0; i < t->n; i++) free(t->v[i].s);
    free(t->v);
    t->v = NULL; t->n = t->cap = t->pos = 0;
}

static struct tok *tok_new(struct toks *t)
{
    struct tok *nv = grow_buf(t->v, &t->cap, t->n, sizeof *nv);
    if (!nv) return NULL;
    t->v = nv;
    struct tok *k = &t->v[t->n++];
    memset(k, 0, sizeof *k);
    return k;
}

static void put_utf8(sbuf *b, uint32_t c)
{
    char u[4];
    if (c < 0x80) { u[0] = (char)c; sb_add(b, u, 1); }
    else if (c < 0x800) { u[0] = (char)(0xC0 | (c >> 6)); u[1] = (char)(0x80 | (c & 63)); sb_add(b, u, 2); }
    else if (c < 0x10000) {
        u[0] = (char)(0xE0 | (c >> 12)); u[1] = (char)(0x80 | ((c >> 6) & 63)); u[2] = (char)(0x80 | (c & 63));
        sb_add(b, u, 3);
    } else {
        u[0] = (char)(0xF0 | (c >> 18)); u[1] = (char)(0x80 | ((c >> 12) & 63));
        u[2] = (char)(0x80 | ((c >> 6) & 63)); u[3] = (char)(0x80 | (c & 63));
        sb_add(b, u, 4);
    }
}

static int lex(const char *s, size_t n, int line, struct toks *t, char *err, size_t errlen)
{
    static const char *const ops2[] = { "==", "!=", "<=", ">=", "//", "**" };
    const char *p = s, *end = s + n;
    t->line = line;
    while (p < end) {
        if (isspace((unsigned char)*p)) { p++; continue; }
        struct tok *k = tok_new(t);
        if (!k) goto oom;
        if (isalpha((unsigned char)*p) || *p == '_') {
            const char *q = p;
            while (q < end && (isalnum((unsigned char)*q) || *q == '_')) q++;
            k->k = T_NAME;
            k->n = (size_t)(q - p);
            if (!(k->s = strndup(p, k->n))) goto oom;
            p = q;
        } else if (isdigit((unsigned char)*p)) {
            const char *q = p;
            int isf = 0;
            while (q < end && (isdigit((unsigned char)*q) || *q == '_')) q++;
            if (q + 1 < end && *q == '.' && isdigit((unsigned char)q[1])) {
                isf = 1; q++;
                while (q < end && isdigit((unsigned char)*q)) q++;
            }
            if (q < end && (*q == 'e' || *q == 'E')) {
                const char *r = q + 1;
                if (r < end && (*r == '+' || *r == '-')) r++;
                if (r < end && isdigit((unsigned char)*r)) {
                    isf = 1; q = r;
                    while (q < end && isdigit((unsigned char)*q)) q++;
                }
            }
            char num[64];
            size_t m = 0;
            for (const char *r = p; r < q && m + 1 < sizeof num; r++) if (*r != '_') num[m++] = *r;
            num[m] = 0;
            if (isf) { k->k = T_FLOAT; k->f = strtod(num, NULL); }
            else {
                errno = 0;
                k->k = T_INT; k->i = strtoll(num, NULL, 10);
                if (errno) { snprintf(err, errlen, "line %d: integer %s out of range", line, num); return -1; }
            }
            p = q;
        } else if (*p == '\'' || *p == '"') {
            char q = *p++;
            sbuf b = { 0 };
            while (p < end && *p != q) {
                if (*p == '\\' && p + 1 < end) {
                    p++;
                    switch (*p) {
                    case 'n': sb_addc(&b, '\n'); break;
                    case 't': sb_addc(&b, '\t'); break;
                    case 'r': sb_addc(&b, '\r'); break;
                    case '0': sb_addc(&b, '\0'); break;
                    case '\\': sb_addc(&b, '\\'); break;
                    case '\'': sb_addc(&b, '\''); break;
                    case '"': sb_addc(&b, '"'); break;
                    case 'u': case 'x': {
                        int nd = *p == 'u' ? 4 : 2;
                        if (p + nd >= end) { free(b.p); goto badesc; }
                        uint32_t c = 0;
                        for (int i = 1; i <= nd; i++) {
                            int h = p[i];
                            if (!isxdigit(h)) { free(b.p); goto badesc; }
                            c = c * 16 + (uint32_t)(isdigit(h) ? h - '0' : (tolower(h) - 'a' + 10));
                        }
                        put_utf8(&b, c);
                        p += nd;
                        break;
                    }
                    default: sb_addc(&b, '\\'); sb_addc(&b, *p); break;
                    }
                    p++;
                } else {
                    sb_addc(&b, *p++);
                }
            }
            if (p >= end) { free(b.p); snprintf(err, errlen, "line %d: unterminated string", line); return -1; }
            p++;
            k->k = T_STR;
            if (!(k->s = sb_take(&b, &k->n))) goto oom;
        } else {
            k->k = T_OP;
            size_t m = 1;
            for (size_t i = 0; i < sizeof ops2 / sizeof ops2[0]; i++)
                if (p + 1 < end && p[0] == ops2[i][0] && p[1] == ops2[i][1]) { m = 2; break; }
            if (m == 1 && !strchr("()[]{},.:|+-*/%~<>=", *p)) {
                snprintf(err, errlen, "line %d: unexpected character '%c'", line, *p);
                return -1;
            }
            memcpy(k->op, p, m);
            k->op[m] = 0;
            p += m;
        }
    }
    struct tok *k = tok_new(t);
    if (!k) goto oom;
    k->k = T_END;
    return 0;
badesc:
    snprintf(err, errlen, "line %d: bad escape in string", line);
    return -1;
oom:
    snprintf(err, errlen, "out of memory");
    return -1;
}

/* ===================================================================== */
/* Syntax trees                                                           */
/* ===================================================================== */

enum ek { E_LIT, E_NAME, E_ATTR, E_INDEX, E_SLICE, E_CALL, E_FILTER, E_TEST, E_BIN, E_NOT, E_NEG,
          E_AND, E_OR, E_COND, E_LIST, E_DICT };

enum binop { B_ADD, B_SUB, B_MUL, B_DIV, B_FDIV, B_MOD, B_POW, B_CAT, B_EQ, B_NE, B_LT, B_LE, B_GT, B_GE,
             B_IN, B_NOTIN };

struct expr {
    enum ek k;
    int line;
    json_t *lit;              /* E_LIT */
    char *name;               /* E_NAME, E_ATTR, E_FILTER, E_TEST */
    int op;                   /* E_BIN */
    int negate;               /* E_TEST: is not */
    struct expr *a, *b, *c;   /* operands; E_SLICE: a[b:c:d] with d in args[0] */
    struct expr **args;       /* positional arguments; E_LIST items; E_DICT keys */
    int nargs;
    char **kwn;               /* keyword names */
    struct expr **kwv;        /* keyword values; E_DICT values */
    int nkw;
};

enum nk { N_TEXT, N_OUT, N_IF, N_FOR, N_SET, N_SETBLOCK, N_MACRO, N_BREAK, N_CONTINUE, N_BLOCK };

struct nodes { struct node **v; int n, cap; };

struct node {
    enum nk k;
    int line;
    char *text; size_t tlen;          /* N_TEXT */
    struct expr *e;                   /* N_OUT, N_SET value */
    struct expr **conds; int ncond;   /* N_IF: conds[i] guards bodies[i]; els */
    struct nodes *bodies;
    struct nodes body, els;           /* N_FOR, N_SETBLOCK, N_MACRO, N_BLOCK: body */
    char **targets; int ntargets;     /* N_FOR targets; N_SET: targets[0] name */
    char *attr;                       /* N_SET: ns.attr */
    struct expr *iter, *filter;       /* N_FOR */
    char **params; struct expr **defaults; int nparams;  /* N_MACRO (targets[0] = name) */
};

struct moeq_tmpl { struct nodes root; };

static void expr_free(struct expr *e);
static void nodes_free(struct nodes *ns);

static void expr_free(struct expr *e)
{
    if (!e) return;
    if (e->lit) json_decref(e->lit);
    free(e->name);
    expr_free(e->a); expr_free(e->b); expr_free(e->c);
    for (int i = 0; i < e->nargs; i++) expr_free(e->args[i]);
    free(e->args);
    for (int i = 0; i < e->nkw; i++) { free(e->kwn ? e->kwn[i] : NULL); expr_free(e->kwv[i]); }
    free(e->kwn); free(e->kwv);
    free(e);
}

static void node_free(struct node *n)
{
    if (!n) return;
    free(n->text);
    expr_free(n->e);
    for (int i = 0; i < n->ncond; i++) { expr_free(n->conds[i]); nodes_free(&n->bodies[i]); }
    free(n->conds); free(n->bodies);
    nodes_free(&n->body); nodes_free(&n->els);
    for (int i = 0; i < n->ntargets; i++) free(n->targets[i]);
    free(n->targets);
    free(n->attr);
    expr_free(n->iter); expr_free(n->filter);
    for (int i = 0; i < n->nparams; i++) { free(n->params[i]); expr_free(n->defaults[i]); }
    free(n->params); free(n->defaults);
    free(n);
}

static void nodes_free(struct nodes *ns)
{
    for (int i = 0; i < ns->n; i++) node_free(ns->v[i]);
    free(ns->v);
    ns->v = NULL; ns->n = ns->cap = 0;
}

static int nodes_push(struct nodes *ns, struct node *n)
{
    struct node **nv = grow_buf(ns->v, &ns->cap, ns->n, sizeof *nv);
    if (!nv) return -1;
    ns->v = nv;
    ns->v[ns->n++] = n;
    return 0;
}

/* ===================================================================== */
/* Expression parser (Jinja's precedence)                                 */
/* ===================================================================== */

struct parser {
    struct segs segs;
    int si;              /* next segment */
    struct toks t;       /* tokens of the current tag */
    char *err; size_t errlen;
    int failed;
};

static void perr(struct parser *P, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void perr(struct parser *P, const char *fmt, ...)
{
    if (P->failed) return;
    P->failed = 1;
    int n = snprintf(P->err, P->errlen, "line %d: ", P->t.line);
    if (n < 0 || (size_t)n >= P->errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(P->err + n, P->errlen - (size_t)n, fmt, ap);
    va_end(ap);
}

static struct tok *peek(struct parser *P) { return &P->t.v[P->t.pos]; }
static struct tok *peek2(struct parser *P)
{
    return P->t.pos + 1 < P->t.n ? &P->t.v[P->t.pos + 1] : &P->t.v[P->t.n - 1];
}
static struct tok *next(struct parser *P)
{
    struct tok *k = &P->t.v[P->t.pos];
    if (k->k != T_END) P->t.pos++;
    return k;
}
static int is_op(struct tok *k, const char *op) { return k->k == T_OP && !strcmp(k->op, op); }
static int is_name(struct tok *k, const char *nm) { return k->k == T_NAME && !strcmp(k->s, nm); }
static int accept_op(struct parser *P, const char *op)
{
    if (is_op(peek(P), op)) { next(P); return 1; }
    return 0;
}
static int accept_name(struct parser *P, const char *nm)
{
    if (is_name(peek(P), nm)) { next(P); return 1; }
    return 0;
}
static void expect_op(struct parser *P, const char *op)
{
    if (!accept_op(P, op)) perr(P, "expected '%s'", op);
}
static char *expect_name(struct parser *P)
{
    struct tok *k = peek(P);
    if (k->k != T_NAME) { perr(P, "expected a name"); return NULL; }
    next(P);
    char *s = strdup(k->s);
    if (!s) perr(P, "out of memory");
    return s;
}

static void *pcalloc(struct parser *P, size_t size)
{
    void *p = calloc(1, size);
    if (!p) perr(P, "out of memory");
    return p;
}

static struct expr *enew(struct parser *P, enum ek k)
{
    struct expr *e = pcalloc(P, sizeof *e);
    if (e) { e->k = k; e->line = P->t.line; }
    return e;
}

static int add_arg(struct parser *P, struct expr *e, struct expr *a)
{
    struct expr **na = realloc(e->args, (size_t)(e->nargs + 1) * sizeof *na);
    if (!na) { perr(P, "out of memory"); expr_free(a); return -1; }
    e->args = na;
    e->args[e->nargs++] = a;
    return 0;
}

static int add_kw(struct parser *P, struct expr *e, char *name, struct expr *v)
{
    char **nn = realloc(e->kwn, (size_t)(e->nkw + 1) * sizeof *nn);
    if (nn) e->kwn = nn;
    struct expr **nv = realloc(e->kwv, (size_t)(e->nkw + 1) * sizeof *nv);
    if (nv) e->kwv = nv;
    if (!nn || !nv) { perr(P, "out of memory"); free(name); expr_free(v); return -1; }
    e->kwn[e->nkw] = name;
    e->kwv[e->nkw++] = v;
    return 0;
}

static struct expr *parse_expr(struct parser *P);
static struct expr *parse_or(struct parser *P);
static struct expr *parse_unary(struct parser *P);

/* (args, kw=args) after '(' has been read */
static void parse_call_args(struct parser *P, struct expr *e)
{
    while (!P->failed && !is_op(peek(P), ")")) {
        if (peek(P)->k == T_NAME && is_op(peek2(P), "=")) {
            char *nm = expect_name(P);
            next(P);
            add_kw(P, e, nm, parse_expr(P));
        } else {
            add_arg(P, e, parse_expr(P));
        }
        if (!accept_op(P, ",")) break;
    }
    expect_op(P, ")");
}

static const char *const filters_known[] = {
    "tojson", "length", "count", "string", "trim", "items", "safe", "default", "d", "first", "last",
    "join", "upper", "lower", "capitalize", "title", "list", "replace", "int", "float", "abs", "reverse",
    "e", "escape", "dictsort", "unique", "map", "select", "reject", "selectattr", "rejectattr", "sort",
    "min", "max", "sum", "round", "indent", "wordcount", "center", "truncate", NULL
};
static const char *const tests_known[] = {
    "defined", "undefined", "none", "string", "mapping", "sequence", "iterable", "number", "integer",
    "float", "boolean", "true", "false", "callable", "even", "odd", "divisibleby", "eq", "equalto",
    "ne", "lt", "gt", "le", "ge", "lessthan", "greaterthan", "in", "lower", "upper", "sameas", NULL
};
static int known(const char *const *list, const char *nm)
{
    for (int i = 0; list[i]; i++) if (!strcmp(list[i], nm)) return 1;
    return 0;
}

static struct expr *parse_primary(struct parser *P)
{
    struct tok *k = next(P);
    struct expr *e = NULL;
    if (k->k == T_NAME) {
        if (!strcmp(k->s, "true") || !strcmp(k->s, "True")) { if ((e = enew(P, E_LIT))) e->lit = json_true(); }
        else if (!strcmp(k->s, "false") || !strcmp(k->s, "False")) { if ((e = enew(P, E_LIT))) e->lit = json_false(); }
        else if (!strcmp(k->s, "none") || !strcmp(k->s, "None")) { if ((e = enew(P, E_LIT))) e->lit = json_null(); }
        else if ((e = enew(P, E_NAME)) && !(e->name = strdup(k->s))) perr(P, "out of memory");
    } else if (k->k == T_STR) {
        /* adjacent string literals concatenate */
        sbuf b = { 0 };
        sb_add(&b, k->s, k->n);
        while (peek(P)->k == T_STR) { struct tok *s = next(P); sb_add(&b, s->s, s->n); }
        size_t n;
        char *s = sb_take(&b, &n);
        if ((e = enew(P, E_LIT))) e->lit = s ? json_stringn(s, n) : NULL;
        if (e && !e->lit) perr(P, "string literal is not valid UTF-8");
        free(s);
    } else if (k->k == T_INT) {
        if ((e = enew(P, E_LIT))) e->lit = json_integer(k->i);
    } else if (k->k == T_FLOAT) {
        if ((e = enew(P, E_LIT))) e->lit = json_real(k->f);
    } else if (is_op(k, "(")) {
        e = parse_expr(P);
        if (is_op(peek(P), ",")) {   /* a tuple: a list */
            struct expr *l = enew(P, E_LIST);
            if (l) { add_arg(P, l, e); e = l; }
            while (accept_op(P, ",") && !is_op(peek(P), ")")) add_arg(P, e, parse_expr(P));
        }
        expect_op(P, ")");
    } else if (is_op(k, "[")) {
        e = enew(P, E_LIST);
        while (e && !P->failed && !is_op(peek(P), "]")) {
            add_arg(P, e, parse_expr(P));
            if (!accept_op(P, ",")) break;
        }
        expect_op(P, "]");
    } else if (is_op(k, "{")) {
        e = enew(P, E_DICT);
        while (e && !P->failed && !is_op(peek(P), "}")) {
            struct expr *key = parse_expr(P);
            expect_op(P, ":");
            if (add_arg(P, e, key) == 0) add_kw(P, e, NULL, parse_expr(P));
            if (!accept_op(P, ",")) break;
        }
        expect_op(P, "}");
    } else {
        perr(P, k->k == T_END ? "unexpected end of expression" : "unexpected '%s'",
             k->k == T_OP ? k->op : k->s ? k->s : "");
    }
    return e;
}

static struct expr *parse_postfix(struct parser *P, struct expr *e)
{
    while (!P->failed && e) {
        if (accept_op(P, ".")) {
            struct tok *k = next(P);
            struct expr *a = enew(P, E_ATTR);
            if (!a) break;
            a->a = e; e = a;
            if (k->k == T_NAME) { if (!(a->name = strdup(k->s))) perr(P, "out of memory"); }
            else if (k->k == T_INT) {   /* x.0 as x[0] */
                a->k = E_INDEX;
                if ((a->b = enew(P, E_LIT))) a->b->lit = json_integer(k->i);
            } else perr(P, "expected an attribute name after '.'");
        } else if (accept_op(P, "[")) {
            struct expr *lo = NULL, *hi = NULL, *st = NULL;
            int slice = 0;
            if (!is_op(peek(P), ":")) lo = parse_expr(P);
            if (accept_op(P, ":")) {
                slice = 1;
                if (!is_op(peek(P), ":") && !is_op(peek(P), "]")) hi = parse_expr(P);
                if (accept_op(P, ":") && !is_op(peek(P), "]")) st = parse_expr(P);
            }
            expect_op(P, "]");
            struct expr *x = enew(P, slice ? E_SLICE : E_INDEX);
            if (!x) { expr_free(lo); expr_free(hi); expr_free(st); break; }
            x->a = e; e = x;
            if (slice) { x->b = lo; x->c = hi; if (st) add_arg(P, x, st); else add_arg(P, x, NULL); }
            else x->b = lo;
        } else if (accept_op(P, "(")) {
            struct expr *c = enew(P, E_CALL);
            if (!c) break;
            c->a = e; e = c;
            parse_call_args(P, c);
        } else {
            break;
        }
    }
    return e;
}

/* filters (|) and tests (is) bind tighter than any operator */
static struct expr *parse_filters(struct parser *P, struct expr *e)
{
    while (!P->failed && e) {
        if (accept_op(P, "|")) {
            char *nm = expect_name(P);
            if (!nm) break;
            while (accept_op(P, ".")) {   /* dotted filter names are not supported */
                perr(P, "unsupported filter '%s.'", nm);
                break;
            }
            if (!known(filters_known, nm)) { perr(P, "unsupported filter '%s'", nm); free(nm); break; }
            struct expr *f = enew(P, E_FILTER);
            if (!f) { free(nm); break; }
            f->name = nm; f->a = e; e = f;
            if (accept_op(P, "(")) parse_call_args(P, f);
        } else if (is_name(peek(P), "is")) {
            next(P);
            int neg = accept_name(P, "not");
            struct tok *k = next(P);
            if (k->k != T_NAME) { perr(P, "expected a test name after 'is'"); break; }
            if (!known(tests_known, k->s)) { perr(P, "unsupported test '%s'", k->s); break; }
            struct expr *t = enew(P, E_TEST);
            if (!t) break;
            if (!(t->name = strdup(k->s))) perr(P, "out of memory");
            t->a = e; t->negate = neg; e = t;
            if (accept_op(P, "(")) parse_call_args(P, t);
            else {
                /* one argument without parentheses: `is divisibleby 3` */
                struct tok *n = peek(P);
                if (n->k == T_INT || n->k == T_FLOAT || n->k == T_STR ||
                    (n->k == T_NAME && strcmp(n->s, "and") && strcmp(n->s, "or") && strcmp(n->s, "if") &&
                     strcmp(n->s, "else") && strcmp(n->s, "is") && strcmp(n->s, "in") && strcmp(n->s, "not")))
                    add_arg(P, t, parse_postfix(P, parse_primary(P)));
            }
        } else {
            break;
        }
    }
    return e;
}

/* Unary minus binds tighter than a filter (`-3|abs` is 3), as in Jinja. */
static struct expr *parse_unary_nf(struct parser *P)
{
    if (accept_op(P, "-")) {
        struct expr *e = enew(P, E_NEG);
        if (e) e->a = parse_unary_nf(P);
        return e;
    }
    if (accept_op(P, "+")) return parse_unary_nf(P);
    return parse_postfix(P, parse_primary(P));
}

static struct expr *parse_unary(struct parser *P) { return parse_filters(P, parse_unary_nf(P)); }

static struct expr *binop(struct parser *P, int op, struct expr *a, struct expr *b)
{
    struct expr *e = enew(P, E_BIN);
    if (!e) { expr_free(a); expr_free(b); return NULL; }
    e->op = op; e->a = a; e->b = b;
    return e;
}

/* The binary operators by level, loosest first (Jinja's order: comparisons,
 * + and -, ~, * / // %, **); each level's operands come from the next. */
struct binlevel { const char *op; int bin; };
static const struct binlevel L_CMP[] = { { "==", B_EQ }, { "!=", B_NE }, { "<=", B_LE }, { ">=", B_GE },
                                         { "<", B_LT }, { ">", B_GT }, { NULL, 0 } };
static const struct binlevel L_ADD[] = { { "+", B_ADD }, { "-", B_SUB }, { NULL, 0 } };
static const struct binlevel L_CAT[] = { { "~", B_CAT }, { NULL, 0 } };
static const struct binlevel L_MUL[] = { { "*", B_MUL }, { "/", B_DIV }, { "//", B_FDIV }, { "%", B_MOD },
                                         { NULL, 0 } };
static const struct binlevel L_POW[] = { { "**", B_POW }, { NULL, 0 } };
static const struct binlevel *const levels[] = { L_CMP, L_ADD, L_CAT, L_MUL, L_POW };
enum { N_LEVELS = sizeof levels / sizeof levels[0] };

static struct expr *parse_binary(struct parser *P, int level)
{
    if (level == N_LEVELS) return parse_unary(P);
    struct expr *e = parse_binary(P, level + 1);
    while (!P->failed && e) {
        int op = -1;
        for (const struct binlevel *l = levels[level]; l->op && op < 0; l++)
            if (accept_op(P, l->op)) op = l->bin;
        if (op < 0 && level == 0) {   /* `in` and `not in` compare too */
            if (accept_name(P, "in")) op = B_IN;
            else if (is_name(peek(P), "not") && is_name(peek2(P), "in")) { next(P); next(P); op = B_NOTIN; }
        }
        if (op < 0) return e;
        e = binop(P, op, e, parse_binary(P, level + 1));
    }
    return e;
}

static struct expr *parse_compare(struct parser *P) { return parse_binary(P, 0); }

static struct expr *parse_not(struct parser *P)
{
    if (accept_name(P, "not")) {
        struct expr *e = enew(P, E_NOT);
        if (e) e->a = parse_not(P);
        return e;
    }
    return parse_compare(P);
}

/* `and` (is_or 0) binds tighter than `or` (is_or 1); both keep the operand
 * values (Python: `a or b` is a when a is true). */
static struct expr *parse_logic(struct parser *P, int is_or)
{
    struct expr *e = is_or ? parse_logic(P, 0) : parse_not(P);
    while (!P->failed && accept_name(P, is_or ? "or" : "and")) {
        struct expr *x = enew(P, is_or ? E_OR : E_AND);
        if (!x) break;
        x->a = e;
        x->b = is_or ? parse_logic(P, 0) : parse_not(P);
        e = x;
    }
    return e;
}

static struct expr *parse_or(struct parser *P) { return parse_logic(P, 1); }

static struct expr *parse_expr(struct parser *P)
{
    struct expr *e = parse_or(P);
    while (!P->failed && e && is_name(peek(P), "if")) {
        next(P);
        struct expr *c = enew(P, E_COND);
        if (!c) break;
        c->b = e;             /* value when true */
        c->a = parse_or(P);   /* condition */
        if (accept_name(P, "else")) c->c = parse_expr(P);
        e = c;
    }
    return e;
}

/* ===================================================================== */
/* Statement parser                                                       */
/* ===================================================================== */

static int load_tag(struct parser *P, const struct seg *s)
{
    toks_free(&P->t);
    if (lex(s->s, s->n, s->line, &P->t, P->err, P->errlen) != 0) { P->failed = 1; return -1; }
    return 0;
}

static void expect_end(struct parser *P)
{
    if (!P->failed && peek(P)->k != T_END) {
        struct tok *k = peek(P);
        perr(P, "unexpected '%s' in tag", k->k == T_OP ? k->op : k->s ? k->s : "literal");
    }
}

static struct node *nnew(struct parser *P, enum nk k)
{
    struct node *n = pcalloc(P, sizeof *n);
    if (n) { n->k = k; n->line = P->t.line; }
    return n;
}

static int add_target(struct parser *P, struct node *n, char *nm)
{
    if (!nm) return -1;
    char **nt = realloc(n->targets, (size_t)(n->ntargets + 1) * sizeof *nt);
    if (!nt) { free(nm); perr(P, "out of memory"); return -1; }
    n->targets = nt;
    n->targets[n->ntargets++] = nm;
    return 0;
}

/* Parse nodes until a statement whose keyword is in stops (NULL-terminated);
 * returns that keyword's index with its tag loaded, or -1 at the end. */
static int parse_body(struct parser *P, struct nodes *out, const char *const *stops);

/* The body of a block up to its end tag (which must come), that tag's end. */
static void parse_block_to(struct parser *P, struct nodes *body, const char *what, const char *end)
{
    const char *const st[] = { end, NULL };
    if (parse_body(P, body, st) < 0 && !P->failed) perr(P, "'%s' without '%s'", what, end);
    expect_end(P);
}

static struct node *parse_stmt(struct parser *P, const char *kw)
{
    struct node *n = NULL;
    if (!strcmp(kw, "if")) {
        n = nnew(P, N_IF);
        if (!n) return NULL;
        for (;;) {
            struct expr *c = parse_expr(P);
            expect_end(P);
            struct expr **nc = realloc(n->conds, (size_t)(n->ncond + 1) * sizeof *nc);
            struct nodes *nb = nc ? realloc(n->bodies, (size_t)(n->ncond + 1) * sizeof *nb) : NULL;
            if (nc) n->conds = nc;
            if (nb) n->bodies = nb;
            if (!nc || !nb) { expr_free(c); perr(P, "out of memory"); return n; }
            n->conds[n->ncond] = c;
            memset(&n->bodies[n->ncond], 0, sizeof n->bodies[0]);
            n->ncond++;
            if (P->failed) return n;
            static const char *const st[] = { "elif", "else", "endif", NULL };
            int w = parse_body(P, &n->bodies[n->ncond - 1], st);
            if (P->failed) return n;
            if (w < 0) { perr(P, "'if' without 'endif'"); return n; }
            if (w == 0) continue;
            if (w == 1) {
                expect_end(P);
                parse_block_to(P, &n->els, "else", "endif");
            } else {
                expect_end(P);
            }
            return n;
        }
    }
    if (!strcmp(kw, "for")) {
        n = nnew(P, N_FOR);
        if (!n) return NULL;
        do {
            if (add_target(P, n, expect_name(P)) != 0) return n;
        } while (accept_op(P, ","));
        if (!accept_name(P, "in")) { perr(P, "expected 'in' in 'for'"); return n; }
        n->iter = parse_or(P);
        if (accept_name(P, "if")) n->filter = parse_or(P);
        if (accept_name(P, "recursive")) { perr(P, "unsupported: recursive loops"); return n; }
        expect_end(P);
        if (P->failed) return n;
        static const char *const st[] = { "else", "endfor", NULL };
        int w = parse_body(P, &n->body, st);
        if (P->failed) return n;
        if (w < 0) { perr(P, "'for' without 'endfor'"); return n; }
        expect_end(P);
        if (w == 0) parse_block_to(P, &n->els, "for", "endfor");
        return n;
    }
    if (!strcmp(kw, "set")) {
        n = nnew(P, N_SET);
        if (!n) return NULL;
        if (add_target(P, n, expect_name(P)) != 0) return n;
        if (accept_op(P, ".")) { if (!(n->attr = expect_name(P))) return n; }
        while (accept_op(P, ",")) if (add_target(P, n, expect_name(P)) != 0) return n;
        if (n->ntargets > 1 && n->attr) { perr(P, "unsupported: set of several namespace attributes"); return n; }
        if (accept_op(P, "=")) {
            n->e = parse_expr(P);
            expect_end(P);
            return n;
        }
        if (n->ntargets > 1 || n->attr) { perr(P, "expected '=' in 'set'"); return n; }
        expect_end(P);
        n->k = N_SETBLOCK;
        parse_block_to(P, &n->body, "set", "endset");
        return n;
    }
    if (!strcmp(kw, "macro")) {
        n = nnew(P, N_MACRO);
        if (!n) return NULL;
        if (add_target(P, n, expect_name(P)) != 0) return n;
        expect_op(P, "(");
        while (!P->failed && !is_op(peek(P), ")")) {
            char *pn = expect_name(P);
            if (!pn) return n;
            struct expr *d = NULL;
            if (accept_op(P, "=")) d = parse_expr(P);
            char **np = realloc(n->params, (size_t)(n->nparams + 1) * sizeof *np);
            struct expr **nd = np ? realloc(n->defaults, (size_t)(n->nparams + 1) * sizeof *nd) : NULL;
            if (np) n->params = np;
            if (nd) n->defaults = nd;
            if (!np || !nd) { free(pn); expr_free(d); perr(P, "out of memory"); return n; }
            n->params[n->nparams] = pn;
            n->defaults[n->nparams++] = d;
            if (!accept_op(P, ",")) break;
        }
        expect_op(P, ")");
        expect_end(P);
        if (P->failed) return n;
        parse_block_to(P, &n->body, "macro", "endmacro");
        return n;
    }
    if (!strcmp(kw, "break") || !strcmp(kw, "continue")) {
        n = nnew(P, kw[0] == 'b' ? N_BREAK : N_CONTINUE);
        expect_end(P);
        return n;
    }
    if (!strcmp(kw, "generation")) {
        n = nnew(P, N_BLOCK);
        if (!n) return NULL;
        expect_end(P);
        parse_block_to(P, &n->body, "generation", "endgeneration");
        return n;
    }
    if (!strncmp(kw, "end", 3) || !strcmp(kw, "elif") || !strcmp(kw, "else"))
        perr(P, "unexpected '%s'", kw);
    else
        perr(P, "unsupported statement '%s'", kw);
    return NULL;
}

static int parse_body(struct parser *P, struct nodes *out, const char *const *stops)
{
    while (!P->failed && P->si < P->segs.n) {
        const struct seg *s = &P->segs.v[P->si++];
        struct node *n = NULL;
        if (s->k == SEG_TEXT) {
            P->t.line = s->line;
            if ((n = nnew(P, N_TEXT))) {
                n->tlen = s->n;
                if (!(n->text = strndup(s->s, s->n))) perr(P, "out of memory");
            }
        } else {
            if (load_tag(P, s) != 0) return -1;
            if (s->k == SEG_EXPR) {
                if ((n = nnew(P, N_OUT))) n->e = parse_expr(P);
                expect_end(P);
            } else {
                struct tok *k = next(P);
                if (k->k != T_NAME) { perr(P, "expected a statement name"); return -1; }
                for (int i = 0; stops && stops[i]; i++)
                    if (!strcmp(k->s, stops[i])) return i;
                n = parse_stmt(P, k->s);
            }
        }
        if (n && nodes_push(out, n) != 0) { node_free(n); perr(P, "out of memory"); }
    }
    return -1;
}

moeq_tmpl *moeq_tmpl_parse(const char *src, size_t len, char *err, size_t errlen)
{
    struct parser P = { .err = err, .errlen = errlen };
    moeq_tmpl *t = calloc(1, sizeof *t);
    if (!t) { snprintf(err, errlen, "out of memory"); return NULL; }
    if (segment(src, len, &P.segs, err, errlen) != 0) { free(P.segs.v); free(t); return NULL; }
    int w = parse_body(&P, &t->root, NULL);
    if (!P.failed && w >= 0) perr(&P, "unexpected statement");
    if (!P.failed && P.si < P.segs.n) perr(&P, "unexpected statement");
    toks_free(&P.t);
    free(P.segs.v);
    if (P.failed) { moeq_tmpl_free(t); return NULL; }
    return t;
}

void moeq_tmpl_free(moeq_tmpl *t)
{
    if (!t) return;
    nodes_free(&t->root);
    free(t);
}

/* ===================================================================== */
/* Python-style text of values                                            */
/* ===================================================================== */

/* repr() of a float: the shortest digits that read back the same, in
 * fixed notation for exponents -4..15, else d.ddde+XX. */
static void put_float(sbuf *b, double v, int json)
{
    if (isnan(v)) { sb_adds(b, json ? "NaN" : "nan"); return; }
    if (isinf(v)) { sb_adds(b, v < 0 ? (json ? "-Infinity" : "-inf") : (json ? "Infinity" : "inf")); return; }
    char buf[40];
    int prec;
    for (prec = 1; prec <= 17; prec++) {
        snprintf(buf, sizeof buf, "%.*e", prec - 1, v);
        if (strtod(buf, NULL) == v) break;
    }
    /* buf: [-]d[.ddd]e[+-]XX */
    char digits[24];
    int nd = 0, neg = 0;
    const char *p = buf;
    if (*p == '-') { neg = 1; p++; }
    for (; *p && *p != 'e'; p++) if (isdigit((unsigned char)*p)) digits[nd++] = *p;
    int ex = atoi(p + 1);
    while (nd > 1 && digits[nd - 1] == '0') nd--;
    if (neg) sb_addc(b, '-');
    if (ex >= -4 && ex < 16) {
        if (ex < 0) {
            sb_adds(b, "0.");
            for (int i = 0; i < -ex - 1; i++) sb_addc(b, '0');
            sb_add(b, digits, (size_t)nd);
        } else {
            for (int i = 0; i <= ex; i++) sb_addc(b, i < nd ? digits[i] : '0');
            sb_addc(b, '.');
            if (nd > ex + 1) sb_add(b, digits + ex + 1, (size_t)(nd - ex - 1));
            else sb_addc(b, '0');
        }
    } else {
        sb_addc(b, digits[0]);
        if (nd > 1) { sb_addc(b, '.'); sb_add(b, digits + 1, (size_t)(nd - 1)); }
        char e[16];
        snprintf(e, sizeof e, "e%c%02d", ex < 0 ? '-' : '+', ex < 0 ? -ex : ex);
        sb_adds(b, e);
    }
}

static void put_json_string(sbuf *b, const char *s, size_t n)
{
    sb_addc(b, '"');
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        switch (c) {
        case '"': sb_adds(b, "\\\""); break;
        case '\\': sb_adds(b, "\\\\"); break;
        case '\n': sb_adds(b, "\\n"); break;
        case '\r': sb_adds(b, "\\r"); break;
        case '\t': sb_adds(b, "\\t"); break;
        case '\b': sb_adds(b, "\\b"); break;
        case '\f': sb_adds(b, "\\f"); break;
        default:
            if (c < 0x20) { char u[8]; snprintf(u, sizeof u, "\\u%04x", c); sb_adds(b, u); }
            else sb_addc(b, (char)c);
        }
    }
    sb_addc(b, '"');
}

static void put_newline_indent(sbuf *b, int indent, int level)
{
    sb_addc(b, '\n');
    for (int i = 0; i < indent * level; i++) sb_addc(b, ' ');
}

static void put_json(sbuf *b, json_t *v, int indent, int level)
{
    switch (json_typeof(v)) {
    case JSON_NULL: sb_adds(b, "null"); break;
    case JSON_TRUE: sb_adds(b, "true"); break;
    case JSON_FALSE: sb_adds(b, "false"); break;
    case JSON_INTEGER: { char n[32]; snprintf(n, sizeof n, "%" JSON_INTEGER_FORMAT, json_integer_value(v)); sb_adds(b, n); break; }
    case JSON_REAL: put_float(b, json_real_value(v), 1); break;
    case JSON_STRING: put_json_string(b, json_string_value(v), json_string_length(v)); break;
    case JSON_ARRAY: {
        size_t n = json_array_size(v);
        if (!n) { sb_adds(b, "[]"); break; }
        sb_addc(b, '[');
        for (size_t i = 0; i < n; i++) {
            if (i) sb_adds(b, indent >= 0 ? "," : ", ");
            if (indent >= 0) put_newline_indent(b, indent, level + 1);
            put_json(b, json_array_get(v, i), indent, level + 1);
        }
        if (indent >= 0) put_newline_indent(b, indent, level);
        sb_addc(b, ']');
        break;
    }
    case JSON_OBJECT: {
        if (!json_object_size(v)) { sb_adds(b, "{}"); break; }
        sb_addc(b, '{');
        const char *k;
        json_t *x;
        int first = 1;
        json_object_foreach(v, k, x) {
            if (!first) sb_adds(b, indent >= 0 ? "," : ", ");
            first = 0;
            if (indent >= 0) put_newline_indent(b, indent, level + 1);
            put_json_string(b, k, strlen(k));
            sb_adds(b, ": ");
            put_json(b, x, indent, level + 1);
        }
        if (indent >= 0) put_newline_indent(b, indent, level);
        sb_addc(b, '}');
        break;
    }
    }
}

char *moeq_tmpl_tojson(json_t *v, int indent)
{
    sbuf b = { 0 };
    put_json(&b, v, indent, 0);
    return sb_take(&b, NULL);
}

/* Python repr() of a str: single quotes unless it holds ' and no ". */
static void put_repr_string(sbuf *b, const char *s, size_t n)
{
    int sq = memchr(s, '\'', n) != NULL, dq = memchr(s, '"', n) != NULL;
    char q = sq && !dq ? '"' : '\'';
    sb_addc(b, q);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == (unsigned char)q || c == '\\') { sb_addc(b, '\\'); sb_addc(b, (char)c); }
        else if (c == '\n') sb_adds(b, "\\n");
        else if (c == '\r') sb_adds(b, "\\r");
        else if (c == '\t') sb_adds(b, "\\t");
        else if (c < 0x20 || c == 0x7f) { char u[8]; snprintf(u, sizeof u, "\\x%02x", c); sb_adds(b, u); }
        else sb_addc(b, (char)c);
    }
    sb_addc(b, q);
}

static void put_str(sbuf *b, json_t *v, int repr);

static void put_repr(sbuf *b, json_t *v) { put_str(b, v, 1); }

/* str(v) (repr = 0) or repr(v) */
static void put_str(sbuf *b, json_t *v, int repr)
{
    switch (json_typeof(v)) {
    case JSON_NULL: sb_adds(b, "None"); break;
    case JSON_TRUE: sb_adds(b, "True"); break;
    case JSON_FALSE: sb_adds(b, "False"); break;
    case JSON_INTEGER: { char n[32]; snprintf(n, sizeof n, "%" JSON_INTEGER_FORMAT, json_integer_value(v)); sb_adds(b, n); break; }
    case JSON_REAL: put_float(b, json_real_value(v), 0); break;
    case JSON_STRING:
        if (repr) put_repr_string(b, json_string_value(v), json_string_length(v));
        else sb_add(b, json_string_value(v), json_string_length(v));
        break;
    case JSON_ARRAY:
        sb_addc(b, '[');
        for (size_t i = 0; i < json_array_size(v); i++) {
            if (i) sb_adds(b, ", ");
            put_repr(b, json_array_get(v, i));
        }
        sb_addc(b, ']');
        break;
    case JSON_OBJECT: {
        sb_addc(b, '{');
        const char *k;
        json_t *x;
        int first = 1;
        json_object_foreach(v, k, x) {
            if (!first) sb_adds(b, ", ");
            first = 0;
            put_repr_string(b, k, strlen(k));
            sb_adds(b, ": ");
            put_repr(b, x);
        }
        sb_addc(b, '}');
        break;
    }
    }
}

/* ===================================================================== */
/* Evaluation                                                             */
/* ===================================================================== */

#define MAX_DEPTH 64

struct macro_ref { const char *name; const struct node *n; };

struct rctx {
    json_t *undef;              /* the undefined marker of this render */
    json_t **scopes; int nscope, capscope, base;
    struct macro_ref *macros; int nmacro, capmacro;
    int brk, cont;              /* loop control pending */
    int depth;
    char *err; size_t errlen;
    int failed;
    int line;
};

static void rerr(struct rctx *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void rerr(struct rctx *r, const char *fmt, ...)
{
    if (r->failed) return;
    r->failed = 1;
    int n = snprintf(r->err, r->errlen, "template line %d: ", r->line);
    if (n < 0 || (size_t)n >= r->errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->err + n, r->errlen - (size_t)n, fmt, ap);
    va_end(ap);
}

static json_t *U(struct rctx *r) { return json_incref(r->undef); }
static int is_undef(struct rctx *r, json_t *v) { return v == r->undef; }

static const char *type_name(struct rctx *r, json_t *v)
{
    if (is_undef(r, v)) return "undefined";
    switch (json_typeof(v)) {
    case JSON_NULL: return "None";
    case JSON_TRUE: case JSON_FALSE: return "bool";
    case JSON_INTEGER: return "int";
    case JSON_REAL: return "float";
    case JSON_STRING: return "str";
    case JSON_ARRAY: return "list";
    case JSON_OBJECT: return "dict";
    }
    return "?";
}

static int truthy(struct rctx *r, json_t *v)
{
    if (is_undef(r, v)) return 0;
    switch (json_typeof(v)) {
    case JSON_NULL: case JSON_FALSE: return 0;
    case JSON_TRUE: return 1;
    case JSON_INTEGER: return json_integer_value(v) != 0;
    case JSON_REAL: return json_real_value(v) != 0;
    case JSON_STRING: return json_string_length(v) != 0;
    case JSON_ARRAY: return json_array_size(v) != 0;
    case JSON_OBJECT: return json_object_size(v) != 0;
    }
    return 0;
}

static int is_num(json_t *v) { return json_is_integer(v) || json_is_real(v) || json_is_boolean(v); }
static double num(json_t *v)
{
    if (json_is_integer(v)) return (double)json_integer_value(v);
    if (json_is_real(v)) return json_real_value(v);
    return json_is_true(v) ? 1 : 0;
}
static int is_int(json_t *v) { return json_is_integer(v) || json_is_boolean(v); }
static json_int_t ival(json_t *v) { return json_is_integer(v) ? json_integer_value(v) : json_is_true(v); }

static int values_equal(struct rctx *r, json_t *a, json_t *b)
{
    if (is_undef(r, a) || is_undef(r, b)) return is_undef(r, a) && is_undef(r, b);
    if (is_num(a) && is_num(b)) return num(a) == num(b);
    if (json_is_array(a) && json_is_array(b)) {
        if (json_array_size(a) != json_array_size(b)) return 0;
        for (size_t i = 0; i < json_array_size(a); i++)
            if (!values_equal(r, json_array_get(a, i), json_array_get(b, i))) return 0;
        return 1;
    }
    return json_equal(a, b);
}

/* --- UTF-8 code points (string length, indexing and slicing) --- */
static size_t cp_count(const char *s, size_t n)
{
    size_t c = 0;
    for (size_t i = 0; i < n; i++) c += ((unsigned char)s[i] & 0xC0) != 0x80;
    return c;
}
/* byte offsets of each code point start (malloc'd, n_cp + 1 entries) */
static size_t *cp_offsets(const char *s, size_t n, size_t *ncp)
{
    size_t c = cp_count(s, n);
    size_t *o = malloc((c + 1) * sizeof *o);
    if (!o) return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) if (((unsigned char)s[i] & 0xC0) != 0x80) o[k++] = i;
    o[k] = n;
    *ncp = c;
    return o;
}

static json_t *scope_lookup(struct rctx *r, const char *name)
{
    for (int i = r->nscope - 1; i >= r->base; i--) {
        json_t *v = json_object_get(r->scopes[i], name);
        if (v) return v;
    }
    if (r->base > 0) {
        json_t *v = json_object_get(r->scopes[0], name);
        if (v) return v;
    }
    return NULL;
}

static int push_scope(struct rctx *r)
{
    json_t **ns = grow_buf(r->scopes, &r->capscope, r->nscope, sizeof *ns);
    if (!ns) { rerr(r, "out of memory"); return -1; }
    r->scopes = ns;
    if (!(r->scopes[r->nscope] = json_object())) { rerr(r, "out of memory"); return -1; }
    r->nscope++;
    return 0;
}
static void pop_scope(struct rctx *r) { json_decref(r->scopes[--r->nscope]); }

static void set_var(struct rctx *r, const char *name, json_t *v /* stolen */)
{
    if (json_object_set_new(r->scopes[r->nscope - 1], name, v) != 0) rerr(r, "out of memory");
}

static json_t *eval(struct rctx *r, const struct expr *e);
static void exec_nodes(struct rctx *r, const struct nodes *ns, sbuf *out);

/* The buffer's text as a JSON string; the buffer is freed. */
static json_t *sb_json(struct rctx *r, sbuf *b)
{
    size_t n;
    char *s = sb_take(b, &n);
    json_t *o = s ? json_stringn(s, n) : NULL;
    free(s);
    if (!o) rerr(r, "out of memory");
    return o;
}

static json_t *str_value(struct rctx *r, json_t *v)
{
    if (json_is_string(v)) return json_incref(v);
    sbuf b = { 0 };
    if (!is_undef(r, v)) put_str(&b, v, 0);
    return sb_json(r, &b);
}

/* Python str.strip family: chars NULL means whitespace. which: 1 left, 2 right, 3 both */
static json_t *do_strip(struct rctx *r, json_t *s, json_t *chars, int which)
{
    const char *p = json_string_value(s), *q = p + json_string_length(s);
    const char *set = chars && json_is_string(chars) ? json_string_value(chars) : NULL;
    size_t setn = set ? json_string_length(chars) : 0;
#define STRIPS(c) (set ? memchr(set, (c), setn) != NULL : isspace((unsigned char)(c)))
    if (which & 1) while (p < q && STRIPS(*p)) p++;
    if (which & 2) while (q > p && STRIPS(q[-1])) q--;
#undef STRIPS
    json_t *o = json_stringn(p, (size_t)(q - p));
    if (!o) rerr(r, "out of memory");
    return o;
}

static json_t *do_split(struct rctx *r, json_t *s, json_t *sep, json_int_t maxsplit)
{
    json_t *out = json_array();
    if (!out) { rerr(r, "out of memory"); return NULL; }
    const char *p = json_string_value(s), *end = p + json_string_length(s);
    if (!sep || json_is_null(sep) || is_undef(r, sep)) {
        /* whitespace split: runs of whitespace, no empty strings */
        json_int_t done = 0;
        while (p < end) {
            while (p < end && isspace((unsigned char)*p)) p++;
            if (p >= end) break;
            const char *q = p;
            if (maxsplit >= 0 && done >= maxsplit) q = end;
            else while (q < end && !isspace((unsigned char)*q)) q++;
            if (maxsplit >= 0 && done >= maxsplit) { while (q > p && isspace((unsigned char)q[-1])) q--; }
            json_array_append_new(out, json_stringn(p, (size_t)(q - p)));
            done++;
            p = q;
        }
        return out;
    }
    if (!json_is_string(sep) || !json_string_length(sep)) { json_decref(out); rerr(r, "split: empty separator"); return NULL; }
    const char *sp = json_string_value(sep);
    size_t sn = json_string_length(sep);
    json_int_t done = 0;
    for (;;) {
        const char *hit = NULL;
        if (maxsplit < 0 || done < maxsplit)
            for (const char *q = p; q + sn <= end; q++) if (!memcmp(q, sp, sn)) { hit = q; break; }
        if (!hit) { json_array_append_new(out, json_stringn(p, (size_t)(end - p))); break; }
        json_array_append_new(out, json_stringn(p, (size_t)(hit - p)));
        p = hit + sn;
        done++;
    }
    return out;
}

static json_t *do_replace(struct rctx *r, json_t *s, json_t *a, json_t *b, json_int_t count)
{
    if (!json_is_string(a) || !json_is_string(b)) { rerr(r, "replace: arguments must be strings"); return NULL; }
    const char *p = json_string_value(s), *end = p + json_string_length(s);
    const char *ap = json_string_value(a);
    size_t an = json_string_length(a);
    sbuf o = { 0 };
    json_int_t done = 0;
    if (!an) {   /* Python inserts the replacement between every code point */
        sb_add(&o, json_string_value(b), json_string_length(b));
        for (const char *q = p; q < end;) {
            const char *c = q + 1;
            while (c < end && ((unsigned char)*c & 0xC0) == 0x80) c++;
            sb_add(&o, q, (size_t)(c - q));
            if (count < 0 || ++done < count) sb_add(&o, json_string_value(b), json_string_length(b));
            q = c;
        }
    } else {
        while (p < end) {
            if ((count < 0 || done < count) && (size_t)(end - p) >= an && !memcmp(p, ap, an)) {
                sb_add(&o, json_string_value(b), json_string_length(b));
                p += an;
                done++;
            } else {
                sb_addc(&o, *p++);
            }
        }
    }
    return sb_json(r, &o);
}

static json_t *case_map(struct rctx *r, json_t *s, int mode /* 0 lower 1 upper 2 capitalize 3 title */)
{
    size_t n = json_string_length(s);
    char *t = malloc(n + 1);
    if (!t) { rerr(r, "out of memory"); return NULL; }
    memcpy(t, json_string_value(s), n);
    int start = 1;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)t[i];
        if (mode == 0) t[i] = (char)tolower(c);
        else if (mode == 1) t[i] = (char)toupper(c);
        else if (mode == 2) t[i] = (char)(i == 0 ? toupper(c) : tolower(c));
        else { t[i] = (char)(start ? toupper(c) : tolower(c)); start = !isalnum(c); }
    }
    json_t *v = json_stringn(t, n);
    free(t);
    if (!v) rerr(r, "out of memory");
    return v;
}

static json_t *items_of(struct rctx *r, json_t *d)
{
    json_t *out = json_array();
    if (!out) { rerr(r, "out of memory"); return NULL; }
    const char *k;
    json_t *v;
    json_object_foreach(d, k, v) json_array_append_new(out, json_pack("[sO]", k, v));
    return out;
}

/* Arguments of a call or filter, evaluated: positional then keyword by name. */
struct args { json_t *pos[8]; int npos; const char *kwn[8]; json_t *kwv[8]; int nkw; };

static void args_free(struct args *a)
{
    for (int i = 0; i < a->npos; i++) json_decref(a->pos[i]);
    for (int i = 0; i < a->nkw; i++) json_decref(a->kwv[i]);
}

static int eval_args(struct rctx *r, const struct expr *e, struct args *a)
{
    memset(a, 0, sizeof *a);
    if (e->nargs > 8 || e->nkw > 8) { rerr(r, "too many arguments"); return -1; }
    for (int i = 0; i < e->nargs; i++) {
        if (!(a->pos[i] = eval(r, e->args[i]))) { args_free(a); return -1; }
        a->npos++;
    }
    for (int i = 0; i < e->nkw; i++) {
        if (!(a->kwv[i] = eval(r, e->kwv[i]))) { args_free(a); return -1; }
        a->kwn[i] = e->kwn[i];
        a->nkw++;
    }
    return 0;
}

/* argument i by position or by keyword name, else NULL (borrowed) */
static json_t *arg(const struct args *a, int i, const char *name)
{
    if (i < a->npos) return a->pos[i];
    for (int k = 0; k < a->nkw; k++) if (name && !strcmp(a->kwn[k], name)) return a->kwv[k];
    return NULL;
}

static json_t *do_length(struct rctx *r, json_t *v)
{
    if (json_is_string(v)) return json_integer((json_int_t)cp_count(json_string_value(v), json_string_length(v)));
    if (json_is_array(v)) return json_integer((json_int_t)json_array_size(v));
    if (json_is_object(v)) return json_integer((json_int_t)json_object_size(v));
    if (is_undef(r, v)) return json_integer(0);
    rerr(r, "object of type '%s' has no len()", type_name(r, v));
    return NULL;
}

static json_t *filter(struct rctx *r, const char *f, json_t *v, const struct args *a)
{
    if (!strcmp(f, "safe") || !strcmp(f, "e") || !strcmp(f, "escape")) {
        /* no autoescape in chat templates: escape would be a no-op on a Markup string */
        if (!strcmp(f, "safe")) return json_incref(v);
        return str_value(r, v);
    }
    if (!strcmp(f, "tojson")) {
        json_t *ind = arg(a, 0, "indent");
        if (is_undef(r, v)) { rerr(r, "tojson of an undefined value"); return NULL; }
        char *s = moeq_tmpl_tojson(v, ind && is_int(ind) ? (int)ival(ind) : -1);
        json_t *o = s ? json_string(s) : NULL;
        free(s);
        if (!o) rerr(r, "out of memory");
        return o;
    }
    if (!strcmp(f, "length") || !strcmp(f, "count")) return do_length(r, v);
    if (!strcmp(f, "string")) return str_value(r, v);
    if (!strcmp(f, "trim")) {
        json_t *s = str_value(r, v);
        if (!s) return NULL;
        json_t *o = do_strip(r, s, arg(a, 0, "chars"), 3);
        json_decref(s);
        return o;
    }
    if (!strcmp(f, "items")) {
        if (is_undef(r, v)) return json_array();
        if (!json_is_object(v)) { rerr(r, "items of a %s", type_name(r, v)); return NULL; }
        return items_of(r, v);
    }
    if (!strcmp(f, "default") || !strcmp(f, "d")) {
        json_t *d = arg(a, 0, "default_value");
        json_t *boolean = arg(a, 1, "boolean");
        int use = is_undef(r, v) || (boolean && truthy(r, boolean) && !truthy(r, v));
        if (use) return d ? json_incref(d) : json_string("");
        return json_incref(v);
    }
    if (!strcmp(f, "first") || !strcmp(f, "last")) {
        int last = f[0] == 'l';
        if (json_is_array(v)) {
            size_t n = json_array_size(v);
            return n ? json_incref(json_array_get(v, last ? n - 1 : 0)) : U(r);
        }
        if (json_is_string(v)) {
            size_t ncp, *o = cp_offsets(json_string_value(v), json_string_length(v), &ncp);
            if (!o) { rerr(r, "out of memory"); return NULL; }
            json_t *x = ncp ? json_stringn(json_string_value(v) + o[last ? ncp - 1 : 0],
                                           o[last ? ncp : 1] - o[last ? ncp - 1 : 0]) : U(r);
            free(o);
            return x;
        }
        rerr(r, "%s of a %s", f, type_name(r, v));
        return NULL;
    }
    if (!strcmp(f, "join")) {
        json_t *sep = arg(a, 0, "d");
        json_t *attr = arg(a, 1, "attribute");
        if (!json_is_array(v)) { rerr(r, "join of a %s", type_name(r, v)); return NULL; }
        sbuf b = { 0 };
        for (size_t i = 0; i < json_array_size(v); i++) {
            if (i && sep) put_str(&b, sep, 0);
            json_t *x = json_array_get(v, i);
            if (attr && json_is_object(x) && json_is_string(attr)) x = json_object_get(x, json_string_value(attr));
            if (x) put_str(&b, x, 0);
        }
        return sb_json(r, &b);
    }
    if (!strcmp(f, "upper") || !strcmp(f, "lower") || !strcmp(f, "capitalize") || !strcmp(f, "title")) {
        json_t *s = str_value(r, v);
        if (!s) return NULL;
        json_t *o = case_map(r, s, f[0] == 'l' ? 0 : f[0] == 'u' ? 1 : f[0] == 'c' ? 2 : 3);
        json_decref(s);
        return o;
    }
    if (!strcmp(f, "list")) {
        if (json_is_array(v)) return json_copy(v);
        json_t *out = json_array();
        if (!out) { rerr(r, "out of memory"); return NULL; }
        if (json_is_object(v)) {
            const char *k; json_t *x;
            json_object_foreach(v, k, x) json_array_append_new(out, json_string(k));
        } else if (json_is_string(v)) {
            size_t ncp, *o = cp_offsets(json_string_value(v), json_string_length(v), &ncp);
            for (size_t i = 0; o && i < ncp; i++)
                json_array_append_new(out, json_stringn(json_string_value(v) + o[i], o[i + 1] - o[i]));
            free(o);
        } else if (!is_undef(r, v)) { json_decref(out); rerr(r, "list of a %s", type_name(r, v)); return NULL; }
        return out;
    }
    if (!strcmp(f, "replace")) {
        json_t *s = str_value(r, v);
        if (!s) return NULL;
        json_t *old = arg(a, 0, "old"), *new = arg(a, 1, "new"), *cnt = arg(a, 2, "count");
        if (!old || !new) { json_decref(s); rerr(r, "replace needs two arguments"); return NULL; }
        json_t *o = do_replace(r, s, old, new, cnt && is_int(cnt) ? ival(cnt) : -1);
        json_decref(s);
        return o;
    }
    if (!strcmp(f, "int")) {
        if (is_num(v)) return json_integer((json_int_t)num(v));
        if (json_is_string(v)) return json_integer(strtoll(json_string_value(v), NULL, 10));
        json_t *d = arg(a, 0, "default");
        return d ? json_incref(d) : json_integer(0);
    }
    if (!strcmp(f, "float")) {
        if (is_num(v)) return json_real(num(v));
        if (json_is_string(v)) return json_real(strtod(json_string_value(v), NULL));
        return json_real(0);
    }
    if (!strcmp(f, "abs")) {
        if (json_is_integer(v)) return json_integer(llabs(json_integer_value(v)));
        if (is_num(v)) return json_real(fabs(num(v)));
        rerr(r, "abs of a %s", type_name(r, v));
        return NULL;
    }
    if (!strcmp(f, "reverse")) {
        if (json_is_array(v)) {
            json_t *out = json_array();
            for (size_t i = json_array_size(v); out && i > 0; i--) json_array_append(out, json_array_get(v, i - 1));
            return out;
        }
        if (json_is_string(v)) {
            size_t ncp, *o = cp_offsets(json_string_value(v), json_string_length(v), &ncp);
            sbuf b = { 0 };
            for (size_t i = ncp; o && i > 0; i--) sb_add(&b, json_string_value(v) + o[i - 1], o[i] - o[i - 1]);
            free(o);
            return sb_json(r, &b);
        }
        rerr(r, "reverse of a %s", type_name(r, v));
        return NULL;
    }
    rerr(r, "filter '%s' is not supported", f);
    return NULL;
}

static int test(struct rctx *r, const char *t, json_t *v, const struct args *a)
{
    json_t *x = arg(a, 0, NULL);
    if (!strcmp(t, "defined")) return !is_undef(r, v);
    if (!strcmp(t, "undefined")) return is_undef(r, v);
    if (is_undef(r, v) && strcmp(t, "iterable") && strcmp(t, "eq") && strcmp(t, "equalto") && strcmp(t, "ne"))
        return 0;
    if (!strcmp(t, "none")) return json_is_null(v);
    if (!strcmp(t, "string")) return json_is_string(v);
    if (!strcmp(t, "mapping")) return json_is_object(v);
    if (!strcmp(t, "sequence")) return json_is_string(v) || json_is_array(v) || json_is_object(v);
    if (!strcmp(t, "iterable")) return is_undef(r, v) || json_is_string(v) || json_is_array(v) || json_is_object(v);
    if (!strcmp(t, "number")) return is_num(v);
    if (!strcmp(t, "integer")) return json_is_integer(v);
    if (!strcmp(t, "float")) return json_is_real(v);
    if (!strcmp(t, "boolean")) return json_is_boolean(v);
    if (!strcmp(t, "true")) return json_is_true(v);
    if (!strcmp(t, "false")) return json_is_false(v);
    if (!strcmp(t, "callable")) return 0;
    if (!strcmp(t, "even") || !strcmp(t, "odd")) return is_int(v) && (ival(v) % 2 != 0) == (t[0] == 'o');
    if (!strcmp(t, "divisibleby")) return is_int(v) && x && is_int(x) && ival(x) && ival(v) % ival(x) == 0;
    if (!strcmp(t, "eq") || !strcmp(t, "equalto") || !strcmp(t, "sameas")) return x && values_equal(r, v, x);
    if (!strcmp(t, "ne")) return !(x && values_equal(r, v, x));
    if (!strcmp(t, "lower") || !strcmp(t, "upper")) {
        if (!json_is_string(v)) return 0;
        const char *s = json_string_value(v);
        for (size_t i = 0; i < json_string_length(v); i++)
            if (t[0] == 'l' ? isupper((unsigned char)s[i]) : islower((unsigned char)s[i])) return 0;
        return 1;
    }
    if (!x) { rerr(r, "test '%s' needs an argument", t); return 0; }
    if (!strcmp(t, "in")) {
        if (json_is_array(x)) {
            for (size_t i = 0; i < json_array_size(x); i++) if (values_equal(r, v, json_array_get(x, i))) return 1;
            return 0;
        }
        if (json_is_object(x) && json_is_string(v)) return json_object_get(x, json_string_value(v)) != NULL;
        if (json_is_string(x) && json_is_string(v))
            return memmem(json_string_value(x), json_string_length(x), json_string_value(v), json_string_length(v)) != NULL;
        return 0;
    }
    if (!is_num(v) || !is_num(x)) { rerr(r, "test '%s' on a %s", t, type_name(r, v)); return 0; }
    double p = num(v), q = num(x);
    if (!strcmp(t, "lt") || !strcmp(t, "lessthan")) return p < q;
    if (!strcmp(t, "gt") || !strcmp(t, "greaterthan")) return p > q;
    if (!strcmp(t, "le")) return p <= q;
    if (!strcmp(t, "ge")) return p >= q;
    rerr(r, "test '%s' is not supported", t);
    return 0;
}

static json_t *method(struct rctx *r, json_t *obj, const char *m, const struct args *a)
{
    if (json_is_string(obj)) {
        if (!strcmp(m, "startswith") || !strcmp(m, "endswith")) {
            json_t *x = arg(a, 0, NULL);
            const char *s = json_string_value(obj);
            size_t n = json_string_length(obj);
            int hit = 0;
            for (size_t i = 0; x && i < (json_is_array(x) ? json_array_size(x) : 1); i++) {
                json_t *p = json_is_array(x) ? json_array_get(x, i) : x;
                if (!json_is_string(p)) { rerr(r, "%s: argument must be a string", m); return NULL; }
                size_t pn = json_string_length(p);
                if (pn <= n && !memcmp(m[0] == 's' ? s : s + n - pn, json_string_value(p), pn)) hit = 1;
            }
            return json_boolean(hit);
        }
        if (!strcmp(m, "strip")) return do_strip(r, obj, arg(a, 0, NULL), 3);
        if (!strcmp(m, "lstrip")) return do_strip(r, obj, arg(a, 0, NULL), 1);
        if (!strcmp(m, "rstrip")) return do_strip(r, obj, arg(a, 0, NULL), 2);
        if (!strcmp(m, "split")) {
            json_t *ms = arg(a, 1, "maxsplit");
            return do_split(r, obj, arg(a, 0, "sep"), ms && is_int(ms) ? ival(ms) : -1);
        }
        if (!strcmp(m, "upper")) return case_map(r, obj, 1);
        if (!strcmp(m, "lower")) return case_map(r, obj, 0);
        if (!strcmp(m, "capitalize")) return case_map(r, obj, 2);
        if (!strcmp(m, "title")) return case_map(r, obj, 3);
        if (!strcmp(m, "replace")) {
            json_t *cnt = arg(a, 2, NULL);
            return do_replace(r, obj, arg(a, 0, NULL), arg(a, 1, NULL), cnt && is_int(cnt) ? ival(cnt) : -1);
        }
        if (!strcmp(m, "find")) {
            json_t *x = arg(a, 0, NULL);
            if (!x || !json_is_string(x)) { rerr(r, "find: argument must be a string"); return NULL; }
            const char *s = json_string_value(obj);
            const char *h = memmem(s, json_string_length(obj), json_string_value(x), json_string_length(x));
            return json_integer(h ? (json_int_t)cp_count(s, (size_t)(h - s)) : -1);
        }
        if (!strcmp(m, "join")) {
            json_t *x = arg(a, 0, NULL);
            if (!x || !json_is_array(x)) { rerr(r, "join: argument must be a list"); return NULL; }
            struct args b = { .npos = 1, .pos = { obj } };
            return filter(r, "join", x, &b);
        }
    } else if (json_is_object(obj)) {
        if (!strcmp(m, "items")) return items_of(r, obj);
        if (!strcmp(m, "keys") || !strcmp(m, "values")) {
            json_t *out = json_array();
            const char *k; json_t *v;
            json_object_foreach(obj, k, v) json_array_append_new(out, m[0] == 'k' ? json_string(k) : json_incref(v));
            return out;
        }
        if (!strcmp(m, "get")) {
            json_t *k = arg(a, 0, NULL), *d = arg(a, 1, NULL);
            json_t *v = k && json_is_string(k) ? json_object_get(obj, json_string_value(k)) : NULL;
            return v ? json_incref(v) : d ? json_incref(d) : json_null();
        }
    } else if (json_is_array(obj)) {
        if (!strcmp(m, "append")) {
            json_t *x = arg(a, 0, NULL);
            if (!x || is_undef(r, x)) { rerr(r, "append: no value"); return NULL; }
            json_array_append(obj, x);
            return json_null();
        }
    }
    rerr(r, "'%s' has no method '%s'", type_name(r, obj), m);
    return NULL;
}

static json_t *call_macro(struct rctx *r, const struct node *m, const struct args *a)
{
    if (a->npos > m->nparams) { rerr(r, "macro '%s' takes %d arguments", m->targets[0], m->nparams); return NULL; }
    if (r->depth >= MAX_DEPTH) { rerr(r, "macro calls nested too deep"); return NULL; }
    int saved_base = r->base;
    if (push_scope(r) != 0) return NULL;
    r->base = r->nscope - 1;
    for (int i = 0; i < m->nparams && !r->failed; i++) {
        json_t *v = arg(a, i, m->params[i]);
        if (v) set_var(r, m->params[i], json_incref(v));
        else if (m->defaults[i]) { json_t *d = eval(r, m->defaults[i]); if (d) set_var(r, m->params[i], d); }
        else set_var(r, m->params[i], U(r));
    }
    sbuf out = { 0 };
    r->depth++;
    if (!r->failed) exec_nodes(r, &m->body, &out);
    r->depth--;
    pop_scope(r);
    r->base = saved_base;
    size_t n;
    char *s = sb_take(&out, &n);
    if (r->failed) { free(s); return NULL; }
    json_t *v = s ? json_stringn(s, n) : NULL;
    free(s);
    if (!v) rerr(r, "out of memory");
    return v;
}

static json_t *call(struct rctx *r, const struct expr *e)
{
    struct args a;
    if (e->a->k == E_ATTR) {
        json_t *obj = eval(r, e->a->a);
        if (!obj) return NULL;
        if (eval_args(r, e, &a) != 0) { json_decref(obj); return NULL; }
        json_t *v = method(r, obj, e->a->name, &a);
        args_free(&a);
        json_decref(obj);
        return v;
    }
    if (e->a->k != E_NAME) { rerr(r, "only names and methods can be called"); return NULL; }
    const char *fn = e->a->name;
    if (eval_args(r, e, &a) != 0) return NULL;
    json_t *v = NULL;
    const struct node *m = NULL;
    for (int i = r->nmacro - 1; i >= 0; i--) if (!strcmp(r->macros[i].name, fn)) { m = r->macros[i].n; break; }
    if (m) v = call_macro(r, m, &a);
    else if (!strcmp(fn, "namespace") || !strcmp(fn, "dict")) {
        v = json_object();
        for (int i = 0; v && i < a.nkw; i++) json_object_set(v, a.kwn[i], a.kwv[i]);
        for (int i = 0; v && i < a.npos; i++)
            if (json_is_object(a.pos[i])) json_object_update(v, a.pos[i]);
    } else if (!strcmp(fn, "range")) {
        json_int_t lo = 0, hi = 0, st = 1;
        if (a.npos == 1 && is_int(a.pos[0])) hi = ival(a.pos[0]);
        else if (a.npos >= 2 && is_int(a.pos[0]) && is_int(a.pos[1])) {
            lo = ival(a.pos[0]); hi = ival(a.pos[1]);
            if (a.npos == 3 && is_int(a.pos[2])) st = ival(a.pos[2]);
        } else { rerr(r, "range needs integers"); args_free(&a); return NULL; }
        if (st == 0 || (hi - lo) / st > 100000) { rerr(r, "range too long"); args_free(&a); return NULL; }
        v = json_array();
        for (json_int_t i = lo; v && (st > 0 ? i < hi : i > hi); i += st) json_array_append_new(v, json_integer(i));
    } else if (!strcmp(fn, "raise_exception")) {
        json_t *msg = arg(&a, 0, NULL);
        rerr(r, "%s", msg && json_is_string(msg) ? json_string_value(msg) : "raise_exception");
    } else if (!strcmp(fn, "strftime_now")) {
        json_t *f = arg(&a, 0, NULL);
        char buf[256] = "";
        time_t now = time(NULL);
        struct tm tm;
        localtime_r(&now, &tm);
        if (f && json_is_string(f)) strftime(buf, sizeof buf, json_string_value(f), &tm);
        v = json_string(buf);
    } else {
        rerr(r, "'%s' is undefined or not callable", fn);
    }
    args_free(&a);
    return v;
}

static json_t *subscript(struct rctx *r, json_t *o, json_t *k)
{
    if (json_is_object(o)) {
        if (!json_is_string(k)) return U(r);
        json_t *v = json_object_get(o, json_string_value(k));
        return v ? json_incref(v) : U(r);
    }
    if ((json_is_array(o) || json_is_string(o)) && is_int(k)) {
        json_int_t i = ival(k);
        if (json_is_array(o)) {
            json_int_t n = (json_int_t)json_array_size(o);
            if (i < 0) i += n;
            return i >= 0 && i < n ? json_incref(json_array_get(o, (size_t)i)) : U(r);
        }
        size_t ncp, *off = cp_offsets(json_string_value(o), json_string_length(o), &ncp);
        if (!off) { rerr(r, "out of memory"); return NULL; }
        if (i < 0) i += (json_int_t)ncp;
        json_t *v = i >= 0 && i < (json_int_t)ncp
            ? json_stringn(json_string_value(o) + off[i], off[i + 1] - off[i]) : U(r);
        free(off);
        return v;
    }
    if (is_undef(r, o)) { rerr(r, "subscript of an undefined value"); return NULL; }
    return U(r);
}

/* Python slice semantics over n items: the selected indices */
static json_t *slice(struct rctx *r, json_t *o, json_t *lo, json_t *hi, json_t *st)
{
    int isstr = json_is_string(o);
    if (!isstr && !json_is_array(o)) { rerr(r, "slice of a %s", type_name(r, o)); return NULL; }
    size_t ncp = 0, *off = NULL;
    if (isstr && !(off = cp_offsets(json_string_value(o), json_string_length(o), &ncp))) { rerr(r, "out of memory"); return NULL; }
    json_int_t n = isstr ? (json_int_t)ncp : (json_int_t)json_array_size(o);
    json_int_t step = st && !json_is_null(st) && !is_undef(r, st) ? ival(st) : 1;
    if (step == 0) { free(off); rerr(r, "slice step cannot be zero"); return NULL; }
    json_int_t a, b;
    int has_lo = lo && !json_is_null(lo) && !is_undef(r, lo), has_hi = hi && !json_is_null(hi) && !is_undef(r, hi);
    if (step > 0) {
        a = has_lo ? ival(lo) : 0; b = has_hi ? ival(hi) : n;
        if (a < 0) a += n;
        if (a < 0) a = 0;
        if (a > n) a = n;
        if (b < 0) b += n;
        if (b < 0) b = 0;
        if (b > n) b = n;
    } else {
        a = has_lo ? ival(lo) : n - 1; b = has_hi ? ival(hi) : -n - 1;
        if (a < 0) a += n;
        if (a < -1) a = -1;
        if (a > n - 1) a = n - 1;
        if (has_hi) {
            if (b < 0) b += n;
            if (b < -1) b = -1;
        } else {
            b = -1;
        }
    }
    json_t *out = NULL;
    sbuf sb = { 0 };
    if (!isstr) out = json_array();
    for (json_int_t i = a; step > 0 ? i < b : i > b; i += step) {
        if (isstr) sb_add(&sb, json_string_value(o) + off[i], off[i + 1] - off[i]);
        else json_array_append(out, json_array_get(o, (size_t)i));
    }
    free(off);
    if (isstr) {
        size_t m;
        char *s = sb_take(&sb, &m);
        out = s ? json_stringn(s, m) : NULL;
        free(s);
    }
    if (!out) rerr(r, "out of memory");
    return out;
}

static json_t *arith(struct rctx *r, int op, json_t *a, json_t *b)
{
    if (op == B_CAT) {
        sbuf s = { 0 };
        if (!is_undef(r, a)) put_str(&s, a, 0);
        if (!is_undef(r, b)) put_str(&s, b, 0);
        return sb_json(r, &s);
    }
    if (op >= B_EQ && op <= B_GE) {
        if (op == B_EQ) return json_boolean(values_equal(r, a, b));
        if (op == B_NE) return json_boolean(!values_equal(r, a, b));
        int c;
        if (is_num(a) && is_num(b)) c = num(a) < num(b) ? -1 : num(a) > num(b);
        else if (json_is_string(a) && json_is_string(b)) {
            size_t la = json_string_length(a), lb = json_string_length(b);
            c = memcmp(json_string_value(a), json_string_value(b), la < lb ? la : lb);
            if (!c) c = la < lb ? -1 : la > lb;
        } else { rerr(r, "cannot compare %s with %s", type_name(r, a), type_name(r, b)); return NULL; }
        return json_boolean(op == B_LT ? c < 0 : op == B_LE ? c <= 0 : op == B_GT ? c > 0 : c >= 0);
    }
    if (op == B_IN || op == B_NOTIN) {
        struct args t = { .npos = 1, .pos = { b } };
        int hit = is_undef(r, b) ? 0 : test(r, "in", a, &t);
        return json_boolean(op == B_IN ? hit : !hit);
    }
    if (is_undef(r, a) || is_undef(r, b)) { rerr(r, "arithmetic on an undefined value"); return NULL; }
    if (op == B_ADD && json_is_string(a) && json_is_string(b)) {
        size_t la = json_string_length(a), lb = json_string_length(b);
        char *t = malloc(la + lb + 1);
        if (!t) { rerr(r, "out of memory"); return NULL; }
        memcpy(t, json_string_value(a), la);
        memcpy(t + la, json_string_value(b), lb);
        json_t *v = json_stringn(t, la + lb);
        free(t);
        return v;
    }
    if (op == B_ADD && json_is_array(a) && json_is_array(b)) {
        json_t *v = json_copy(a);
        if (v) json_array_extend(v, b);
        return v;
    }
    if (op == B_MUL && json_is_string(a) && is_int(b)) {
        sbuf s = { 0 };
        for (json_int_t i = 0; i < ival(b) && i < 100000; i++) sb_add(&s, json_string_value(a), json_string_length(a));
        return sb_json(r, &s);
    }
    if (!is_num(a) || !is_num(b)) {
        rerr(r, "unsupported operand types %s and %s", type_name(r, a), type_name(r, b));
        return NULL;
    }
    int ints = is_int(a) && is_int(b);
    double x = num(a), y = num(b);
    switch (op) {
    case B_ADD: return ints ? json_integer(ival(a) + ival(b)) : json_real(x + y);
    case B_SUB: return ints ? json_integer(ival(a) - ival(b)) : json_real(x - y);
    case B_MUL: return ints ? json_integer(ival(a) * ival(b)) : json_real(x * y);
    case B_DIV: if (y == 0) break; return json_real(x / y);
    case B_FDIV:
        if (y == 0) break;
        if (ints) { json_int_t q = ival(a) / ival(b); if ((ival(a) % ival(b) != 0) && ((ival(a) < 0) != (ival(b) < 0))) q--; return json_integer(q); }
        return json_real(floor(x / y));
    case B_MOD:
        if (y == 0) break;
        if (ints) { json_int_t m = ival(a) % ival(b); if (m && ((m < 0) != (ival(b) < 0))) m += ival(b); return json_integer(m); }
        return json_real(x - floor(x / y) * y);
    case B_POW: return ints && ival(b) >= 0 ? json_integer((json_int_t)llround(pow(x, y))) : json_real(pow(x, y));
    }
    rerr(r, "division by zero");
    return NULL;
}

static json_t *eval(struct rctx *r, const struct expr *e)
{
    if (r->failed || !e) { if (!r->failed) rerr(r, "missing expression"); return NULL; }
    r->line = e->line;
    switch (e->k) {
    case E_LIT: return json_incref(e->lit);
    case E_NAME: {
        json_t *v = scope_lookup(r, e->name);
        if (v) return json_incref(v);
        if (!strcmp(e->name, "loop")) return U(r);
        return U(r);
    }
    case E_ATTR: {
        json_t *o = eval(r, e->a);
        if (!o) return NULL;
        if (is_undef(r, o)) { json_decref(o); rerr(r, "'%s' of an undefined value", e->name); return NULL; }
        json_t *v = json_is_object(o) ? json_object_get(o, e->name) : NULL;
        v = v ? json_incref(v) : U(r);
        json_decref(o);
        return v;
    }
    case E_INDEX: {
        json_t *o = eval(r, e->a);
        if (!o) return NULL;
        json_t *k = eval(r, e->b);
        if (!k) { json_decref(o); return NULL; }
        json_t *v = subscript(r, o, k);
        json_decref(o); json_decref(k);
        return v;
    }
    case E_SLICE: {
        json_t *o = eval(r, e->a);
        json_t *lo = o && e->b ? eval(r, e->b) : NULL;
        json_t *hi = o && e->c ? eval(r, e->c) : NULL;
        json_t *st = o && e->args[0] ? eval(r, e->args[0]) : NULL;
        json_t *v = r->failed ? NULL : slice(r, o, lo, hi, st);
        if (o) json_decref(o);
        if (lo) json_decref(lo);
        if (hi) json_decref(hi);
        if (st) json_decref(st);
        return v;
    }
    case E_CALL: return call(r, e);
    case E_FILTER: {
        json_t *v = eval(r, e->a);
        if (!v) return NULL;
        struct args a;
        if (eval_args(r, e, &a) != 0) { json_decref(v); return NULL; }
        r->line = e->line;
        json_t *o = filter(r, e->name, v, &a);
        args_free(&a);
        json_decref(v);
        return o;
    }
    case E_TEST: {
        json_t *v = eval(r, e->a);
        if (!v) return NULL;
        struct args a;
        if (eval_args(r, e, &a) != 0) { json_decref(v); return NULL; }
        int t = test(r, e->name, v, &a);
        args_free(&a);
        json_decref(v);
        if (r->failed) return NULL;
        return json_boolean(e->negate ? !t : t);
    }
    case E_BIN: {
        json_t *a = eval(r, e->a);
        if (!a) return NULL;
        json_t *b = eval(r, e->b);
        if (!b) { json_decref(a); return NULL; }
        r->line = e->line;
        json_t *v = arith(r, e->op, a, b);
        json_decref(a); json_decref(b);
        return v;
    }
    case E_NOT: {
        json_t *a = eval(r, e->a);
        if (!a) return NULL;
        int t = truthy(r, a);
        json_decref(a);
        return json_boolean(!t);
    }
    case E_NEG: {
        json_t *a = eval(r, e->a);
        if (!a) return NULL;
        json_t *v = NULL;
        if (json_is_integer(a)) v = json_integer(-json_integer_value(a));
        else if (is_num(a)) v = json_real(-num(a));
        else rerr(r, "cannot negate a %s", type_name(r, a));
        json_decref(a);
        return v;
    }
    case E_AND: case E_OR: {
        json_t *a = eval(r, e->a);
        if (!a) return NULL;
        int t = truthy(r, a);
        if ((e->k == E_AND) != t) return a;   /* and: first falsy; or: first truthy */
        json_decref(a);
        return eval(r, e->b);
    }
    case E_COND: {
        json_t *c = eval(r, e->a);
        if (!c) return NULL;
        int t = truthy(r, c);
        json_decref(c);
        if (t) return eval(r, e->b);
        return e->c ? eval(r, e->c) : U(r);
    }
    case E_LIST: {
        json_t *l = json_array();
        for (int i = 0; l && i < e->nargs; i++) {
            json_t *v = eval(r, e->args[i]);
            if (!v) { json_decref(l); return NULL; }
            if (is_undef(r, v)) { json_decref(v); v = json_null(); }
            json_array_append_new(l, v);
        }
        return l;
    }
    case E_DICT: {
        json_t *d = json_object();
        for (int i = 0; d && i < e->nargs; i++) {
            json_t *k = eval(r, e->args[i]);
            if (!k) { json_decref(d); return NULL; }
            if (!json_is_string(k)) { json_decref(k); json_decref(d); rerr(r, "dict keys must be strings"); return NULL; }
            json_t *v = eval(r, e->kwv[i]);
            if (!v) { json_decref(k); json_decref(d); return NULL; }
            if (is_undef(r, v)) { json_decref(v); v = json_null(); }
            json_object_set_new(d, json_string_value(k), v);
            json_decref(k);
        }
        return d;
    }
    }
    rerr(r, "bad expression");
    return NULL;
}

static void output(struct rctx *r, sbuf *out, json_t *v)
{
    if (is_undef(r, v)) return;
    put_str(out, v, 0);
}

static void exec_for(struct rctx *r, const struct node *n, sbuf *out)
{
    json_t *it = eval(r, n->iter);
    if (!it) return;
    json_t *items = NULL;
    if (json_is_array(it)) items = json_incref(it);
    else if (json_is_object(it)) {
        items = json_array();
        const char *k; json_t *v;
        json_object_foreach(it, k, v) json_array_append_new(items, json_string(k));
    } else if (json_is_string(it)) {
        struct args none = { 0 };
        items = filter(r, "list", it, &none);
    } else if (is_undef(r, it)) items = json_array();
    else rerr(r, "'%s' is not iterable", type_name(r, it));
    json_decref(it);
    if (!items) return;
    /* the loop filter runs first: loop.length and loop.index count what it kept */
    if (n->filter) {
        json_t *kept = json_array();
        for (size_t i = 0; kept && i < json_array_size(items) && !r->failed; i++) {
            json_t *x = json_array_get(items, i);
            if (push_scope(r) != 0) break;
            if (n->ntargets == 1) set_var(r, n->targets[0], json_incref(x));
            else for (int t = 0; t < n->ntargets; t++) set_var(r, n->targets[t], json_is_array(x) && json_array_get(x, (size_t)t) ? json_incref(json_array_get(x, (size_t)t)) : U(r));
            json_t *c = eval(r, n->filter);
            pop_scope(r);
            if (c && truthy(r, c)) json_array_append(kept, x);
            if (c) json_decref(c);
        }
        json_decref(items);
        items = kept;
        if (!items || r->failed) { if (items) json_decref(items); return; }
    }
    size_t len = json_array_size(items);
    for (size_t i = 0; i < len && !r->failed; i++) {
        json_t *x = json_array_get(items, i);
        if (push_scope(r) != 0) break;
        if (n->ntargets == 1) set_var(r, n->targets[0], json_incref(x));
        else {
            if (!json_is_array(x) || json_array_size(x) != (size_t)n->ntargets) {
                rerr(r, "cannot unpack a %s into %d names", type_name(r, x), n->ntargets);
                pop_scope(r);
                break;
            }
            for (int t = 0; t < n->ntargets; t++) set_var(r, n->targets[t], json_incref(json_array_get(x, (size_t)t)));
        }
        json_t *loop = json_pack("{sIsIsIsIsbsbsIsIsI}", "index", (json_int_t)i + 1, "index0", (json_int_t)i,
                                 "revindex", (json_int_t)(len - i), "revindex0", (json_int_t)(len - i - 1),
                                 "first", i == 0, "last", i + 1 == len, "length", (json_int_t)len,
                                 "depth", (json_int_t)1, "depth0", (json_int_t)0);
        if (loop && i > 0) json_object_set(loop, "previtem", json_array_get(items, i - 1));
        if (loop && i + 1 < len) json_object_set(loop, "nextitem", json_array_get(items, i + 1));
        if (!loop) { rerr(r, "out of memory"); pop_scope(r); break; }
        set_var(r, "loop", loop);
        exec_nodes(r, &n->body, out);
        pop_scope(r);
        r->cont = 0;
        if (r->brk) { r->brk = 0; break; }
    }
    if (!len && !r->failed) exec_nodes(r, &n->els, out);
    json_decref(items);
}

static void exec_node(struct rctx *r, const struct node *n, sbuf *out)
{
    r->line = n->line;
    switch (n->k) {
    case N_TEXT: sb_add(out, n->text, n->tlen); break;
    case N_OUT: {
        json_t *v = eval(r, n->e);
        if (v) { output(r, out, v); json_decref(v); }
        break;
    }
    case N_IF:
        for (int i = 0; i < n->ncond; i++) {
            json_t *c = eval(r, n->conds[i]);
            if (!c) return;
            int t = truthy(r, c);
            json_decref(c);
            if (t) { exec_nodes(r, &n->bodies[i], out); return; }
        }
        exec_nodes(r, &n->els, out);
        break;
    case N_FOR: exec_for(r, n, out); break;
    case N_SET: {
        json_t *v = eval(r, n->e);
        if (!v) return;
        if (n->attr) {
            json_t *ns = scope_lookup(r, n->targets[0]);
            if (!ns || !json_is_object(ns)) { json_decref(v); rerr(r, "'%s' is not a namespace", n->targets[0]); return; }
            if (is_undef(r, v)) { json_decref(v); v = json_null(); }
            json_object_set_new(ns, n->attr, v);
        } else if (n->ntargets == 1) {
            set_var(r, n->targets[0], v);
        } else {
            if (!json_is_array(v) || json_array_size(v) != (size_t)n->ntargets) {
                rerr(r, "cannot unpack a %s into %d names", type_name(r, v), n->ntargets);
            } else {
                for (int t = 0; t < n->ntargets; t++) set_var(r, n->targets[t], json_incref(json_array_get(v, (size_t)t)));
            }
            json_decref(v);
        }
        break;
    }
    case N_SETBLOCK: {
        sbuf b = { 0 };
        exec_nodes(r, &n->body, &b);
        size_t len;
        char *s = sb_take(&b, &len);
        if (!r->failed && s) set_var(r, n->targets[0], json_stringn(s, len));
        free(s);
        break;
    }
    case N_MACRO:
        {
            struct macro_ref *nm = grow_buf(r->macros, &r->capmacro, r->nmacro, sizeof *nm);
            if (!nm) { rerr(r, "out of memory"); return; }
            r->macros = nm;
        }
        r->macros[r->nmacro++] = (struct macro_ref){ n->targets[0], n };
        break;
    case N_BREAK: r->brk = 1; break;
    case N_CONTINUE: r->cont = 1; break;
    case N_BLOCK: exec_nodes(r, &n->body, out); break;
    }
}

static void exec_nodes(struct rctx *r, const struct nodes *ns, sbuf *out)
{
    for (int i = 0; i < ns->n && !r->failed && !r->brk && !r->cont; i++) exec_node(r, ns->v[i], out);
    if (out->oom) rerr(r, "out of memory");
}

char *moeq_tmpl_render(const moeq_tmpl *t, json_t *ctx, size_t *out_len, char *err, size_t errlen)
{
    struct rctx r = { .err = err, .errlen = errlen };
    if (!json_is_object(ctx)) { snprintf(err, errlen, "template context must be an object"); return NULL; }
    if (!(r.undef = json_object()) || push_scope(&r) != 0) {
        if (r.undef) json_decref(r.undef);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    /* a deep copy of the caller's values: `set`, namespaces and
     * list.append() never edit the caller's objects */
    json_t *copy = json_deep_copy(ctx);
    if (!copy || json_object_update(r.scopes[0], copy) != 0) rerr(&r, "out of memory");
    if (copy) json_decref(copy);
    sbuf out = { 0 };
    exec_nodes(&r, &t->root, &out);
    while (r.nscope) pop_scope(&r);
    free(r.scopes);
    free(r.macros);
    json_decref(r.undef);
    size_t n;
    char *s = sb_take(&out, &n);
    if (r.failed) { free(s); return NULL; }
    if (!s) { snprintf(err, errlen, "out of memory"); return NULL; }
    if (out_len) *out_len = n;
    return s;
}
