/*
 * chat_parse.c: the incremental reply parser of chat_parse.h.
 *
 * A three-state machine over the generated text: reasoning (inside
 * <think>), content, and a tool call being collected (inside <tool_call>).
 * Each feed appends to a pending buffer and consumes what can be decided:
 * in content, everything up to the longest tail that is still a prefix of
 * a marker (plus the blanks before it, which are dropped if a call follows);
 * in reasoning, everything up to a possible "</think>" and trailing
 * newlines; a call is held whole until "</tool_call>" and then parsed. The
 * same text therefore gives the same events however it is split, which the
 * tests check at every byte boundary.
 */
#include "model/chat_parse.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

enum state { S_TEXT, S_THINK, S_CALL };

struct moeq_chat_parser {
    int format, reasoning;
    json_t *tools;
    enum state st;
    char *pend; size_t pn, pcap;      /* undecided text */
    char *call; size_t cn, ccap;      /* body of the call being collected */
    int seen_text;                    /* content other than blanks was emitted */
    int strip_lead;                   /* drop blanks at the start of what follows */
    int think_lead;                   /* drop newlines at the start of reasoning */
    struct moeq_tool_call *calls; int ncalls, capcalls;
    int malformed;
    /* the delta being built */
    char *out_c; size_t out_cn, out_ccap;
    char *out_r; size_t out_rn, out_rcap;
    int oom;
};

static const char TC_OPEN[] = "<tool_call>", TC_CLOSE[] = "</tool_call>";
static const char TH_OPEN[] = "<think>", TH_CLOSE[] = "</think>";

static void grow(struct moeq_chat_parser *p, char **b, size_t *n, size_t *cap, const char *s, size_t k)
{
    if (p->oom || !k) return;
    if (*n + k + 1 > *cap) {
        size_t c = *cap ? *cap : 64;
        while (c < *n + k + 1) c *= 2;
        char *nb = realloc(*b, c);
        if (!nb) { p->oom = 1; return; }
        *b = nb; *cap = c;
    }
    memcpy(*b + *n, s, k);
    *n += k;
    (*b)[*n] = 0;
}

static void emit_content(struct moeq_chat_parser *p, const char *s, size_t k)
{
    if (p->strip_lead) {
        while (k && isspace((unsigned char)*s)) { s++; k--; }
        if (!k) return;
        p->strip_lead = 0;
    }
    for (size_t i = 0; i < k; i++) if (!isspace((unsigned char)s[i])) { p->seen_text = 1; break; }
    grow(p, &p->out_c, &p->out_cn, &p->out_ccap, s, k);
}

static void emit_reasoning(struct moeq_chat_parser *p, const char *s, size_t k)
{
    if (p->think_lead) {
        while (k && *s == '\n') { s++; k--; }
        if (!k) return;
        p->think_lead = 0;
    }
    grow(p, &p->out_r, &p->out_rn, &p->out_rcap, s, k);
}

static void consume(struct moeq_chat_parser *p, size_t k)
{
    if (!k) return;
    memmove(p->pend, p->pend + k, p->pn - k);
    p->pn -= k;
}

static const char *find(const char *h, size_t hn, const char *needle)
{
    size_t n = strlen(needle);
    for (size_t i = 0; i + n <= hn; i++) if (!memcmp(h + i, needle, n)) return h + i;
    return NULL;
}

/* length of the longest tail of s[0..n) that is a proper prefix of m */
static size_t partial(const char *s, size_t n, const char *m)
{
    size_t mn = strlen(m);
    for (size_t k = mn - 1 < n ? mn - 1 : n; k > 0; k--)
        if (!memcmp(s + n - k, m, k)) return k;
    return 0;
}

/* ---- calls ---- */

const json_t *moeq_chat_tool_function(const json_t *tool)
{
    const json_t *f = json_object_get(tool, "function");
    return f ? f : tool;
}

static const char *param_type(json_t *tools, const char *fn, const char *param)
{
    size_t i;
    json_t *t;
    json_array_foreach(tools, i, t) {
        const json_t *f = moeq_chat_tool_function(t);
        const char *nm = json_string_value(json_object_get(f, "name"));
        if (!nm || strcmp(nm, fn)) continue;
        json_t *props = json_object_get(json_object_get(f, "parameters"), "properties");
        return json_string_value(json_object_get(json_object_get(props, param), "type"));
    }
    return NULL;
}

static char *trimmed(const char *s, size_t n, size_t *out_n)
{
    while (n && isspace((unsigned char)*s)) { s++; n--; }
    while (n && isspace((unsigned char)s[n - 1])) n--;
    *out_n = n;
    return strndup(s, n);
}

/* {"name": ..., "arguments": {...}} */
static int parse_qwen3(const char *body, size_t n, char **name, char **args)
{
    size_t tn;
    char *t = trimmed(body, n, &tn);
    if (!t) return -1;
    json_error_t je;
    json_t *v = json_loadb(t, tn, 0, &je);
    free(t);
    if (!v) return -1;
    int rc = -1;
    const char *nm = json_string_value(json_object_get(v, "name"));
    json_t *a = json_object_get(v, "arguments");
    if (!a) a = json_object_get(v, "parameters");
    if (nm && *nm && a) {
        if (json_is_string(a)) {
            json_t *parsed = json_loads(json_string_value(a), 0, &je);
            if (parsed && json_is_object(parsed)) { *args = json_dumps(parsed, JSON_COMPACT); rc = 0; }
            if (parsed) json_decref(parsed);
        } else if (json_is_object(a)) {
            *args = json_dumps(a, JSON_COMPACT);
            rc = *args ? 0 : -1;
        }
        if (rc == 0 && !(*name = strdup(nm))) { free(*args); rc = -1; }
    }
    json_decref(v);
    return rc;
}

/* <function=NAME>\n<parameter=P>\nVALUE\n</parameter>\n...</function> */
static int parse_coder(const char *body, size_t n, json_t *tools, char **name, char **args)
{
    const char *p = body, *end = body + n;
    const char *f = find(p, n, "<function=");
    if (!f) return -1;
    for (const char *q = p; q < f; q++) if (!isspace((unsigned char)*q)) return -1;
    f += strlen("<function=");
    const char *fe = memchr(f, '>', (size_t)(end - f));
    if (!fe || fe == f) return -1;
    const char *close = NULL;
    for (const char *q = fe; q + 11 <= end; q++) if (!memcmp(q, "</function>", 11)) close = q;
    if (!close) return -1;
    for (const char *q = close + 11; q < end; q++) if (!isspace((unsigned char)*q)) return -1;
    char *fn = strndup(f, (size_t)(fe - f));
    json_t *obj = json_object();
    if (!fn || !obj) { free(fn); if (obj) json_decref(obj); return -1; }
    p = fe + 1;
    int bad = 0;
    for (;;) {
        while (p < close && isspace((unsigned char)*p)) p++;
        if (p >= close) break;
        if ((size_t)(close - p) < 11 || memcmp(p, "<parameter=", 11)) { bad = 1; break; }
        const char *pn = p + 11;
        const char *pe = memchr(pn, '>', (size_t)(close - pn));
        if (!pe || pe == pn) { bad = 1; break; }
        const char *v = pe + 1;
        const char *ve = find(v, (size_t)(close - v), "</parameter>");
        if (!ve) { bad = 1; break; }
        p = ve + strlen("</parameter>");
        /* one newline after the tag and one before the closing tag belong to the format */
        if (v < ve && *v == '\n') v++;
        if (ve > v && ve[-1] == '\n') ve--;
        char *pname = strndup(pn, (size_t)(pe - pn));
        char *val = strndup(v, (size_t)(ve - v));
        if (!pname || !val) { free(pname); free(val); bad = 1; break; }
        const char *ty = tools ? param_type(tools, fn, pname) : NULL;
        json_t *jv = NULL;
        if (!ty || strcmp(ty, "string")) {
            json_error_t je;
            jv = json_loads(val, JSON_DECODE_ANY, &je);
        }
        if (!jv) jv = json_string(val);
        if (!jv || json_object_set_new(obj, pname, jv) != 0) bad = 1;
        free(pname);
        free(val);
        if (bad) break;
    }
    if (!bad) *args = json_dumps(obj, JSON_COMPACT);
    json_decref(obj);
    if (bad || !*args) { free(fn); return -1; }
    *name = fn;
    return 0;
}

static void finish_call(struct moeq_chat_parser *p, int closed)
{
    char *name = NULL, *args = NULL;
    int rc = -1;
    if (closed)
        rc = p->format == MOEQ_CALLS_QWEN3_CODER ? parse_coder(p->call, p->cn, p->tools, &name, &args)
                                                : parse_qwen3(p->call, p->cn, &name, &args);
    if (rc == 0 && p->ncalls == p->capcalls) {
        int cap = p->capcalls ? p->capcalls * 2 : 4;
        struct moeq_tool_call *nc = realloc(p->calls, (size_t)cap * sizeof *nc);
        if (!nc) { p->oom = 1; rc = -1; }
        else { p->calls = nc; p->capcalls = cap; }
    }
    if (rc == 0) {
        p->calls[p->ncalls++] = (struct moeq_tool_call){ name, args };
        p->strip_lead = 1;
    } else {
        free(name);
        free(args);
        p->malformed++;
        emit_content(p, TC_OPEN, strlen(TC_OPEN));
        emit_content(p, p->call ? p->call : "", p->cn);
        if (closed) emit_content(p, TC_CLOSE, strlen(TC_CLOSE));
    }
    p->cn = 0;
    p->st = S_TEXT;
}

/* ---- the machine ---- */

static void run(struct moeq_chat_parser *p, int final)
{
    for (;;) {
        if (p->oom) return;
        if (p->st == S_THINK) {
            const char *c = find(p->pend, p->pn, TH_CLOSE);
            if (c) {
                size_t k = (size_t)(c - p->pend), e = k;
                while (e && p->pend[e - 1] == '\n') e--;   /* trailing newlines of the reasoning */
                emit_reasoning(p, p->pend, e);
                consume(p, k + strlen(TH_CLOSE));
                p->st = S_TEXT;
                p->strip_lead = 1;
                continue;
            }
            size_t keep = final ? 0 : partial(p->pend, p->pn, TH_CLOSE);
            size_t e = p->pn - keep;
            while (!final && e && p->pend[e - 1] == '\n') e--;
            if (final) while (e && p->pend[e - 1] == '\n') e--;
            emit_reasoning(p, p->pend, e);
            consume(p, final ? p->pn : e);
            return;
        }
        if (p->st == S_CALL) {
            const char *c = find(p->pend, p->pn, TC_CLOSE);
            if (c) {
                size_t k = (size_t)(c - p->pend);
                grow(p, &p->call, &p->cn, &p->ccap, p->pend, k);
                consume(p, k + strlen(TC_CLOSE));
                finish_call(p, 1);
                continue;
            }
            size_t keep = final ? 0 : partial(p->pend, p->pn, TC_CLOSE);
            grow(p, &p->call, &p->cn, &p->ccap, p->pend, p->pn - keep);
            consume(p, p->pn - keep);
            if (final) finish_call(p, 0);
            return;
        }
        /* content */
        const char *tc = p->format != MOEQ_CALLS_PLAIN ? find(p->pend, p->pn, TC_OPEN) : NULL;
        const char *th = p->reasoning && !p->seen_text && !p->ncalls ? find(p->pend, p->pn, TH_OPEN) : NULL;
        if (th) {   /* <think> only before any content */
            for (const char *q = p->pend; q < th; q++) if (!isspace((unsigned char)*q)) { th = NULL; break; }
        }
        const char *m = tc && (!th || tc < th) ? tc : th;
        if (m) {
            size_t k = (size_t)(m - p->pend), e = k;
            if (m == tc) while (e && isspace((unsigned char)p->pend[e - 1])) e--;   /* blanks before a call */
            emit_content(p, p->pend, e);
            consume(p, k + strlen(m == tc ? TC_OPEN : TH_OPEN));
            if (m == tc) p->st = S_CALL;
            else { p->st = S_THINK; p->think_lead = 1; }
            continue;
        }
        if (final) {
            size_t e = p->pn;
            if (p->ncalls) while (e && isspace((unsigned char)p->pend[e - 1])) e--;
            emit_content(p, p->pend, e);
            consume(p, p->pn);
            return;
        }
        size_t keep = 0;
        if (p->format != MOEQ_CALLS_PLAIN) keep = partial(p->pend, p->pn, TC_OPEN);
        if (p->reasoning && !p->seen_text && !p->ncalls) {
            size_t k2 = partial(p->pend, p->pn, TH_OPEN);
            if (k2 > keep) keep = k2;
        }
        size_t e = p->pn - keep;
        /* blanks before a possible marker wait too: they go if a call follows */
        if (p->format != MOEQ_CALLS_PLAIN) while (e && isspace((unsigned char)p->pend[e - 1])) e--;
        /* nothing but blanks so far may still precede <think> */
        if (p->reasoning && !p->seen_text && !p->ncalls) {
            size_t q = 0;
            while (q < e && isspace((unsigned char)p->pend[q])) q++;
            if (q == e) e = 0;
        }
        emit_content(p, p->pend, e);
        consume(p, e);
        return;
    }
}

static int feed(struct moeq_chat_parser *p, const char *text, size_t n, int final, struct moeq_chat_delta *d)
{
    p->out_cn = p->out_rn = 0;
    int before = p->ncalls;
    grow(p, &p->pend, &p->pn, &p->pcap, text, n);
    run(p, final);
    memset(d, 0, sizeof *d);
    if (p->oom) return -1;
    d->content = p->out_cn ? p->out_c : NULL;
    d->content_len = p->out_cn;
    d->reasoning = p->out_rn ? p->out_r : NULL;
    d->reasoning_len = p->out_rn;
    d->first_call = before;
    d->n_calls = p->ncalls - before;
    return 0;
}

int moeq_chat_parser_feed(moeq_chat_parser *p, const char *text, size_t n, struct moeq_chat_delta *d)
{
    return feed(p, text, n, 0, d);
}

int moeq_chat_parser_finish(moeq_chat_parser *p, struct moeq_chat_delta *d)
{
    return feed(p, "", 0, 1, d);
}

moeq_chat_parser *moeq_chat_parser_new(int format, int reasoning, int think_open, json_t *tools)
{
    struct moeq_chat_parser *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->format = format;
    p->reasoning = reasoning;
    p->tools = json_is_array(tools) ? tools : NULL;
    if (reasoning && think_open) { p->st = S_THINK; p->think_lead = 1; }
    return p;
}

void moeq_chat_parser_free(moeq_chat_parser *p)
{
    if (!p) return;
    for (int i = 0; i < p->ncalls; i++) { free(p->calls[i].name); free(p->calls[i].arguments); }
    free(p->calls);
    free(p->pend); free(p->call); free(p->out_c); free(p->out_r);
    free(p);
}

const struct moeq_tool_call *moeq_chat_parser_calls(const moeq_chat_parser *p, int *n)
{
    *n = p->ncalls;
    return p->calls;
}

int moeq_chat_parser_malformed(const moeq_chat_parser *p) { return p->malformed; }

int moeq_chat_format_of_template(const char *tmpl)
{
    if (!tmpl) return MOEQ_CALLS_PLAIN;
    if (strstr(tmpl, "<function=") && strstr(tmpl, "<parameter=")) return MOEQ_CALLS_QWEN3_CODER;
    if (strstr(tmpl, "<tool_call>")) return MOEQ_CALLS_QWEN3;
    return MOEQ_CALLS_PLAIN;
}
