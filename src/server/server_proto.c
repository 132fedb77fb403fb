/*
 * server_proto.c: the server's protocol layer, with no I/O and no threads.
 *
 * Requests in: a JSON body is checked field by field against the OpenAI
 * shapes (wrong types and out-of-range values are a 400 naming the field;
 * so is a known field that would change the reply and that is not applied,
 * unless it has its neutral value: see `unapplied`),
 * the prompt is rendered with the model's chat template and tokenized, and
 * a prompt that leaves no room in the context is refused up front.
 *
 * Text out: generated tokens are bytes, not characters, and a stop string
 * may be split over several tokens, so srv_text holds back whatever tail
 * could still turn into a stop string or is half a UTF-8 character. JSON
 * strings must be valid UTF-8, so every emitted piece goes through
 * srv_utf8_clean.
 *
 * Responses out: the chat.completion / text_completion objects, their
 * streamed chunk forms as server-sent events, logprobs in both shapes, and
 * the error object.
 */
#include "server/server.h"
#include "util/util.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The message of a refused request; returns 400. Messages quote what the
 * client sent (a role, the text jansson saw near a syntax error), so any
 * control character becomes '?': a message is always one line. */
static int fail(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    for (char *c = err; errlen && *c; c++)
        if ((unsigned char)*c < 0x20 || *c == 0x7f) *c = '?';
    return 400;
}

/* ======================================================================
 * Request bodies
 * ====================================================================== */

json_t *srv_parse_body(const char *body, size_t len, char *err, size_t errlen)
{
    if (len == 0) {
        (void)fail(err, errlen, "request body is empty; expected a JSON object");
        return NULL;
    }
    json_error_t je;
    /* JSON_REJECT_DUPLICATES: {"stream":false,"stream":true} is ambiguous. */
    json_t *v = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
    if (!v) {
        (void)fail(err, errlen, "request body is not valid JSON: %s (line %d, column %d)",
                   je.text, je.line, je.column);
        return NULL;
    }
    if (!json_is_object(v)) {
        json_decref(v);
        (void)fail(err, errlen, "request body must be a JSON object");
        return NULL;
    }
    return v;
}

/* A field that is absent or null takes its default: OpenAI clients send
 * null for "not set". */
static const json_t *field(const json_t *o, const char *k)
{
    const json_t *v = json_object_get(o, k);
    return v && !json_is_null(v) ? v : NULL;
}

static int get_number(const json_t *o, const char *k, double lo, double hi, double *out,
                      char *err, size_t errlen)
{
    const json_t *v = field(o, k);
    if (!v) return 0;
    if (!json_is_number(v)) return fail(err, errlen, "'%s' must be a number", k);
    double x = json_number_value(v);
    if (!(x >= lo && x <= hi)) return fail(err, errlen, "'%s' must be between %g and %g", k, lo, hi);
    *out = x;
    return 0;
}

static int get_int(const json_t *o, const char *k, long long lo, long long hi, long long *out,
                   char *err, size_t errlen)
{
    const json_t *v = field(o, k);
    if (!v) return 0;
    if (!json_is_integer(v)) return fail(err, errlen, "'%s' must be an integer", k);
    long long x = json_integer_value(v);
    if (x < lo || x > hi) return fail(err, errlen, "'%s' must be between %lld and %lld", k, lo, hi);
    *out = x;
    return 0;
}

static int get_bool(const json_t *o, const char *k, int *out, char *err, size_t errlen)
{
    const json_t *v = field(o, k);
    if (!v) return 0;
    if (!json_is_boolean(v)) return fail(err, errlen, "'%s' must be true or false", k);
    *out = json_is_true(v);
    return 0;
}

/*
 * Fields of the OpenAI and llama-server APIs that would change the reply
 * and that this server does not apply. Each is accepted only when absent,
 * null or neutral (the value that means "off"), and refused otherwise, so a
 * client never silently gets something other than what it asked for.
 * Fields not listed and not read below are ignored (clients send vendor
 * extras such as "user" or "cache_prompt" that do not change a reply).
 */
enum neutral { NEU_NUM, NEU_FALSE, NEU_EMPTY };
static const struct {
    const char  *name;
    enum neutral kind;
    double       value;       /* NEU_NUM */
    int          only;        /* -1 both endpoints, else the one enum srv_kind it exists in */
} unapplied[] = {
    { "best_of",           NEU_NUM, 1, -1 },
    { "frequency_penalty", NEU_NUM, 0, -1 },
    { "presence_penalty",  NEU_NUM, 0, -1 },
    { "repeat_penalty",    NEU_NUM, 1, -1 },
    { "typical_p",         NEU_NUM, 1, -1 },
    { "tfs_z",             NEU_NUM, 1, -1 },
    { "mirostat",          NEU_NUM, 0, -1 },
    { "dynatemp_range",    NEU_NUM, 0, -1 },
    { "dry_multiplier",    NEU_NUM, 0, -1 },
    { "xtc_probability",   NEU_NUM, 0, -1 },
    { "n_probs",           NEU_NUM, 0, -1 },
    { "logit_bias",        NEU_EMPTY, 0, -1 },
    { "grammar",           NEU_EMPTY, 0, -1 },
    { "json_schema",       NEU_EMPTY, 0, -1 },
    { "functions",         NEU_EMPTY, 0, -1 },
    { "prediction",        NEU_EMPTY, 0, -1 },
    { "audio",             NEU_EMPTY, 0, -1 },
    { "reasoning_effort",  NEU_EMPTY, 0, -1 },
    { "web_search_options", NEU_EMPTY, 0, -1 },
    { "suffix",            NEU_EMPTY, 0, SRV_COMPLETION },
    { "echo",              NEU_FALSE, 0, SRV_COMPLETION },
};

/* A value that is "nothing": "", {}, [] or false. */
static int is_empty(const json_t *v)
{
    return (json_is_string(v) && json_string_length(v) == 0) || (json_is_object(v) && json_object_size(v) == 0) ||
           (json_is_array(v) && json_array_size(v) == 0) || json_is_false(v);
}

static int check_unapplied(const json_t *body, enum srv_kind kind, char *err, size_t errlen)
{
    for (size_t i = 0; i < sizeof unapplied / sizeof unapplied[0]; i++) {
        if (unapplied[i].only >= 0 && unapplied[i].only != (int)kind) continue;
        const char *k = unapplied[i].name;
        const json_t *v = field(body, k);
        if (!v) continue;
        switch (unapplied[i].kind) {
        case NEU_NUM:
            if (!json_is_number(v)) return fail(err, errlen, "'%s' must be a number", k);
            if (json_number_value(v) != unapplied[i].value)
                return fail(err, errlen, "'%s' is not supported: only %g (off) is accepted", k, unapplied[i].value);
            break;
        case NEU_FALSE:
            if (!json_is_boolean(v)) return fail(err, errlen, "'%s' must be true or false", k);
            if (json_is_true(v)) return fail(err, errlen, "'%s' is not supported: only false is accepted", k);
            break;
        case NEU_EMPTY:
            if (!is_empty(v)) return fail(err, errlen, "'%s' is not supported: only an empty value or null is accepted", k);
            break;
        }
    }
    /* With no tools, a tool choice can only be "none" or "auto". */
    const json_t *tc = field(body, "tool_choice");
    if (tc && !(json_is_string(tc) && (!strcmp(json_string_value(tc), "none") || !strcmp(json_string_value(tc), "auto"))))
        return fail(err, errlen, "'tool_choice' is not supported: only \"none\" or \"auto\" (there are no tools)");
    const json_t *fc = field(body, "function_call");
    if (fc && !(json_is_string(fc) && (!strcmp(json_string_value(fc), "none") || !strcmp(json_string_value(fc), "auto"))))
        return fail(err, errlen, "'function_call' is not supported: only \"none\" or \"auto\" (there are no functions)");
    const json_t *mod = field(body, "modalities");
    if (mod && !(json_is_array(mod) && json_array_size(mod) <= 1 &&
                 (json_array_size(mod) == 0 || (json_is_string(json_array_get(mod, 0)) &&
                                                !strcmp(json_string_value(json_array_get(mod, 0)), "text")))))
        return fail(err, errlen, "'modalities' is not supported: only [\"text\"]");
    return 0;
}

/* Tokenize into a malloc'd array; the first call sizes the buffer from the
 * byte count (a byte-level BPE never yields more tokens than bytes + a few
 * specials), the second only runs if the backend needs more. */
static int tokenize_all(const struct srv_backend *be, const char *text, size_t len,
                        int32_t **out, int *n, char *err, size_t errlen)
{
    if (len > (size_t)1 << 28) return fail(err, errlen, "prompt is too long (%zu bytes)", len);
    int extra = be->add_bos ? 1 : 0;
    int cap = (int)len + 8;
    int32_t *t = malloc((size_t)(cap + extra) * sizeof *t);
    if (!t) return fail(err, errlen, "out of memory tokenizing the prompt");
    int k = be->tokenize(be->ud, text, len, 1, t + extra, cap);
    if (k > cap) {
        int32_t *nt = realloc(t, (size_t)(k + extra) * sizeof *t);
        if (!nt) { free(t); return fail(err, errlen, "out of memory tokenizing the prompt"); }
        t = nt;
        cap = k;
        k = be->tokenize(be->ud, text, len, 1, t + extra, cap);
    }
    if (k < 0 || k > cap) { free(t); return fail(err, errlen, "the prompt could not be tokenized"); }
    if (extra) t[0] = be->bos;
    *out = t;
    *n = k + extra;
    return 0;
}

/* Message content: a string, or OpenAI's array of parts of which we take
 * the text ones (any other kind is refused rather than silently dropped). */
static int message_text(const json_t *c, int i, char **out, char *err, size_t errlen)
{
    if (json_is_string(c)) {
        *out = strndup(json_string_value(c), json_string_length(c));
        return *out ? 0 : fail(err, errlen, "out of memory");
    }
    if (!json_is_array(c))
        return fail(err, errlen, "'messages[%d].content' must be a string or an array of text parts", i);
    size_t total = 0, k;
    const json_t *p;
    json_array_foreach(c, k, p) {
        const json_t *ty = json_object_get(p, "type"), *tx = json_object_get(p, "text");
        if (!json_is_object(p) || !json_is_string(ty) || strcmp(json_string_value(ty), "text") != 0)
            return fail(err, errlen, "'messages[%d].content[%zu]' must be a part of type \"text\"", i, k);
        if (!json_is_string(tx))
            return fail(err, errlen, "'messages[%d].content[%zu].text' must be a string", i, k);
        total += json_string_length(tx);
    }
    char *s = malloc(total + 1);
    if (!s) return fail(err, errlen, "out of memory");
    size_t at = 0;
    json_array_foreach(c, k, p) {
        const json_t *tx = json_object_get(p, "text");
        memcpy(s + at, json_string_value(tx), json_string_length(tx));
        at += json_string_length(tx);
    }
    s[at] = 0;
    *out = s;
    return 0;
}

static int chat_prompt(const struct srv_backend *be, const json_t *body, char **prompt,
                       char *err, size_t errlen)
{
    const json_t *msgs = json_object_get(body, "messages");
    if (!msgs) return fail(err, errlen, "'messages' is required");
    if (!json_is_array(msgs)) return fail(err, errlen, "'messages' must be an array");
    size_t n = json_array_size(msgs);
    if (n == 0) return fail(err, errlen, "'messages' must not be empty");
    if (n > 100000) return fail(err, errlen, "'messages' has too many entries");
    struct srv_msg *m = calloc(n, sizeof *m);
    char **texts = calloc(n, sizeof *texts);
    int rc = 0;
    if (!m || !texts) { rc = fail(err, errlen, "out of memory"); goto out; }
    for (size_t i = 0; i < n && !rc; i++) {
        const json_t *msg = json_array_get(msgs, i);
        if (!json_is_object(msg)) { rc = fail(err, errlen, "'messages[%zu]' must be an object", i); break; }
        const json_t *role = json_object_get(msg, "role");
        if (!json_is_string(role)) { rc = fail(err, errlen, "'messages[%zu].role' must be a string", i); break; }
        const char *r = json_string_value(role);
        /* "developer" is OpenAI's newer name for the system role. */
        if (!strcmp(r, "developer")) r = "system";
        if (strcmp(r, "system") && strcmp(r, "user") && strcmp(r, "assistant")) {
            rc = fail(err, errlen, "'messages[%zu].role' is '%.40s'; expected system, user or assistant", i, r);
            break;
        }
        const json_t *content = json_object_get(msg, "content");
        if (!content || json_is_null(content)) {
            /* An assistant turn that only called tools has no content; we
             * have no tools, but an empty turn is harmless. */
            if (strcmp(r, "assistant") != 0) {
                rc = fail(err, errlen, "'messages[%zu].content' is required", i);
                break;
            }
            texts[i] = strdup("");
            if (!texts[i]) { rc = fail(err, errlen, "out of memory"); break; }
        } else {
            rc = message_text(content, (int)i, &texts[i], err, errlen);
            if (rc) break;
        }
        m[i].role = r;
        m[i].content = texts[i];
    }
    if (!rc) {
        char rerr[256] = "";
        *prompt = be->chat_render(be->ud, m, (int)n, rerr, sizeof rerr);
        if (!*prompt) rc = fail(err, errlen, "cannot render the chat: %s", rerr[0] ? rerr : "template error");
    }
out:
    if (texts) for (size_t i = 0; i < n; i++) free(texts[i]);
    free(texts);
    free(m);
    return rc;
}

/* Completions prompt: a string, an array holding one string, or an array
 * of token ids. Several prompts at once would mean several choices: n = 1
 * only. */
static int completion_prompt(const struct srv_backend *be, const json_t *body, struct srv_gen *g,
                             char *err, size_t errlen)
{
    const json_t *p = json_object_get(body, "prompt");
    if (!p) return fail(err, errlen, "'prompt' is required");
    if (json_is_array(p) && json_array_size(p) == 1 && json_is_string(json_array_get(p, 0)))
        p = json_array_get(p, 0);
    if (json_is_string(p))
        return tokenize_all(be, json_string_value(p), json_string_length(p), &g->prompt, &g->n_prompt,
                            err, errlen);
    if (!json_is_array(p) || json_array_size(p) == 0)
        return fail(err, errlen, "'prompt' must be a string, or a non-empty array of token ids");
    size_t n = json_array_size(p), i;
    if (n > (size_t)1 << 24) return fail(err, errlen, "'prompt' is too long");
    g->prompt = malloc(n * sizeof *g->prompt);
    if (!g->prompt) return fail(err, errlen, "out of memory");
    const json_t *v;
    json_array_foreach(p, i, v) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= be->n_vocab) {
            free(g->prompt);
            g->prompt = NULL;
            if (json_is_string(v)) return fail(err, errlen, "'prompt' with several strings is not supported (n = 1 only)");
            return fail(err, errlen, "'prompt[%zu]' must be a token id in [0, %d)", i, be->n_vocab);
        }
        g->prompt[i] = (int32_t)json_integer_value(v);
    }
    g->n_prompt = (int)n;
    return 0;
}

static int parse_stop(const json_t *body, struct srv_gen *g, char *err, size_t errlen)
{
    const json_t *s = field(body, "stop");
    if (!s) return 0;
    if (json_is_string(s)) {
        if (json_string_length(s) == 0) return 0;
        g->stop[0] = strndup(json_string_value(s), json_string_length(s));
        if (!g->stop[0]) return fail(err, errlen, "out of memory");
        g->n_stop = 1;
        return 0;
    }
    if (!json_is_array(s)) return fail(err, errlen, "'stop' must be a string or an array of strings");
    if (json_array_size(s) > SRV_MAX_STOP) return fail(err, errlen, "'stop' has more than %d strings", SRV_MAX_STOP);
    size_t i;
    const json_t *v;
    json_array_foreach(s, i, v) {
        if (!json_is_string(v)) return fail(err, errlen, "'stop[%zu]' must be a string", i);
        if (json_string_length(v) == 0) continue;
        if (memchr(json_string_value(v), 0, json_string_length(v)))
            return fail(err, errlen, "'stop[%zu]' contains a NUL character", i);
        g->stop[g->n_stop] = strndup(json_string_value(v), json_string_length(v));
        if (!g->stop[g->n_stop]) return fail(err, errlen, "out of memory");
        g->n_stop++;
    }
    return 0;
}

int srv_parse_gen(const struct srv_backend *be, enum srv_kind kind, const json_t *body,
                  struct srv_gen *g, char *err, size_t errlen)
{
    memset(g, 0, sizeof *g);
    g->kind = kind;
    /* llama-server's defaults: the seed's users get the same sampling when
     * they leave these out. */
    g->sp.temp = 0.8f;
    g->sp.top_k = 40;
    g->sp.top_p = 0.95f;
    g->sp.min_p = 0.05f;
    if (!json_is_object(body)) return fail(err, errlen, "request body must be a JSON object");

    int rc = 0;
    double d;
    long long i64;
    const json_t *mdl = field(body, "model");
    if (mdl && !json_is_string(mdl)) return fail(err, errlen, "'model' must be a string");

    i64 = 1;
    if ((rc = get_int(body, "n", 1, 1, &i64, err, errlen))) return fail(err, errlen, "'n' must be 1 (one choice per request)");
    d = g->sp.temp;
    if ((rc = get_number(body, "temperature", 0, 2, &d, err, errlen))) return rc;
    g->sp.temp = (float)d;
    d = g->sp.top_p;
    if ((rc = get_number(body, "top_p", 0, 1, &d, err, errlen))) return rc;
    g->sp.top_p = (float)d;
    d = g->sp.min_p;
    if ((rc = get_number(body, "min_p", 0, 1, &d, err, errlen))) return rc;
    g->sp.min_p = (float)d;
    i64 = g->sp.top_k;
    if ((rc = get_int(body, "top_k", 0, 1 << 30, &i64, err, errlen))) return rc;
    g->sp.top_k = (int)i64;
    const json_t *seed = field(body, "seed");
    if (seed) {
        if (!json_is_integer(seed)) return fail(err, errlen, "'seed' must be an integer");
        g->seed = (uint64_t)json_integer_value(seed);
        g->has_seed = 1;
    }

    /* n_predict is llama-server's name: -1 for "until the context is full". */
    long long max_tokens = 0;
    if ((rc = get_int(body, "n_predict", -1, 1 << 30, &max_tokens, err, errlen))) return rc;
    if (field(body, "n_predict") && max_tokens == 0)
        return fail(err, errlen, "'n_predict' 0 (evaluate the prompt only) is not supported");
    if (max_tokens < 0) max_tokens = 0;
    if ((rc = get_int(body, "max_tokens", 1, 1 << 30, &max_tokens, err, errlen))) return rc;
    if (kind == SRV_CHAT && (rc = get_int(body, "max_completion_tokens", 1, 1 << 30, &max_tokens, err, errlen)))
        return rc;

    if ((rc = get_bool(body, "stream", &g->stream, err, errlen))) return rc;
    if ((rc = get_bool(body, "ignore_eos", &g->ignore_eos, err, errlen))) return rc;
    const json_t *so = field(body, "stream_options");
    if (so) {
        if (!json_is_object(so)) return fail(err, errlen, "'stream_options' must be an object");
        if (!g->stream) return fail(err, errlen, "'stream_options' is only allowed with \"stream\": true");
        if ((rc = get_bool(so, "include_usage", &g->include_usage, err, errlen)))
            return fail(err, errlen, "'stream_options.include_usage' must be true or false");
    }

    /* logprobs: a boolean plus top_logprobs in chat; a count in completions. */
    if (kind == SRV_CHAT) {
        if ((rc = get_bool(body, "logprobs", &g->logprobs, err, errlen))) return rc;
        i64 = 0;
        if ((rc = get_int(body, "top_logprobs", 0, SRV_MAX_TOP_LOGPROBS, &i64, err, errlen))) return rc;
        if (field(body, "top_logprobs") && !g->logprobs)
            return fail(err, errlen, "'top_logprobs' requires \"logprobs\": true");
        g->top_logprobs = (int)i64;
    } else {
        i64 = -1;
        if ((rc = get_int(body, "logprobs", 0, SRV_MAX_TOP_LOGPROBS, &i64, err, errlen))) return rc;
        g->logprobs = i64 >= 0;
        g->top_logprobs = i64 > 0 ? (int)i64 : 0;
    }
    if ((rc = check_unapplied(body, kind, err, errlen))) return rc;

    /* Features a client would rely on and that we do not have are refused
     * rather than silently ignored. */
    const json_t *tools = field(body, "tools"), *rf = field(body, "response_format");
    if (tools && !(json_is_array(tools) && json_array_size(tools) == 0))
        return fail(err, errlen, "'tools' is not supported (no tool calls)");
    if (rf) {
        const json_t *ty = json_object_get(rf, "type");
        if (!json_is_object(rf) || !json_is_string(ty) || strcmp(json_string_value(ty), "text") != 0)
            return fail(err, errlen, "'response_format' other than {\"type\":\"text\"} is not supported");
    }

    if ((rc = parse_stop(body, g, err, errlen))) goto bad;

    if (kind == SRV_CHAT) {
        char *text = NULL;
        if ((rc = chat_prompt(be, body, &text, err, errlen))) goto bad;
        rc = tokenize_all(be, text, strlen(text), &g->prompt, &g->n_prompt, err, errlen);
        free(text);
        if (rc) goto bad;
    } else {
        if ((rc = completion_prompt(be, body, g, err, errlen))) goto bad;
    }
    if (g->n_prompt == 0) { rc = fail(err, errlen, "the prompt is empty"); goto bad; }
    if (g->n_prompt >= be->n_ctx) {
        rc = fail(err, errlen, "the prompt has %d tokens but the context holds %d "
                  "(the prompt and the reply must fit)", g->n_prompt, be->n_ctx);
        goto bad;
    }
    int room = be->n_ctx - g->n_prompt;
    g->max_tokens = max_tokens > 0 && max_tokens < room ? (int)max_tokens : room;
    return 0;
bad:
    srv_gen_free(g);
    return rc;
}

void srv_gen_free(struct srv_gen *g)
{
    free(g->prompt);
    g->prompt = NULL;
    for (int i = 0; i < g->n_stop; i++) free(g->stop[i]);
    g->n_stop = 0;
}

static const char *error_type(int status)
{
    switch (status) {
    case 401: return "authentication_error";
    case 404: return "not_found_error";
    case 503: return "unavailable_error";
    default:  return status >= 500 ? "server_error" : "invalid_request_error";
    }
}

char *srv_error_json(int status, const char *message)
{
    size_t n;
    char *clean = srv_utf8_clean(message, strlen(message), &n);
    json_t *o = json_pack("{s:{s:s,s:s,s:i}}", "error", "message", clean ? clean : "error",
                          "type", error_type(status), "code", status);
    free(clean);
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    return s;
}

/* ======================================================================
 * Generated text: UTF-8 and stop strings
 * ====================================================================== */

/* Length of the valid UTF-8 sequence at p (1..4), 0 if invalid, -1 if it
 * is a valid start cut short by the end of the buffer. */
static int utf8_seq(const unsigned char *p, size_t n)
{
    unsigned c = p[0];
    if (c < 0x80) return 1;
    int len;
    unsigned lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c >= 0xE0 && c <= 0xEF) { len = 3; if (c == 0xE0) lo = 0xA0; if (c == 0xED) hi = 0x9F; }
    else if (c >= 0xF0 && c <= 0xF4) { len = 4; if (c == 0xF0) lo = 0x90; if (c == 0xF4) hi = 0x8F; }
    else return 0;
    /* The second byte has the narrowed range (no overlongs, surrogates or
     * code points past U+10FFFF); the rest are plain continuation bytes. */
    for (int i = 1; i < len; i++) {
        if ((size_t)i >= n) return -1;
        unsigned b = p[i];
        if (i == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF)) return 0;
    }
    return len;
}

char *srv_utf8_clean(const char *p, size_t n, size_t *outlen)
{
    char *out = malloc(n * 3 + 1);  /* each bad byte becomes 3 bytes */
    if (!out) return NULL;
    size_t o = 0;
    const unsigned char *s = (const unsigned char *)p;
    for (size_t i = 0; i < n;) {
        int k = utf8_seq(s + i, n - i);
        if (k > 0 && !(k == 1 && s[i] == 0)) {
            memcpy(out + o, s + i, (size_t)k);
            o += (size_t)k;
            i += (size_t)k;
        } else {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i++;
        }
    }
    out[o] = 0;
    if (outlen) *outlen = o;
    return out;
}

void srv_text_init(struct srv_text *t, char *const *stop, int n_stop)
{
    memset(t, 0, sizeof *t);
    t->stop = stop;
    t->n_stop = n_stop;
}

void srv_text_free(struct srv_text *t)
{
    free(t->buf);
    memset(t, 0, sizeof *t);
}

/* Bytes at the end of buf that might still become part of something: the
 * longest suffix that is a proper prefix of a stop string, or an
 * incomplete UTF-8 sequence. */
static size_t held_tail(const struct srv_text *t)
{
    size_t hold = 0;
    for (int i = 0; i < t->n_stop; i++) {
        size_t sl = strlen(t->stop[i]);
        size_t k = sl - 1 < t->len ? sl - 1 : t->len;
        for (; k > hold; k--)
            if (memcmp(t->buf + t->len - k, t->stop[i], k) == 0) { hold = k; break; }
    }
    const unsigned char *b = (const unsigned char *)t->buf;
    for (size_t back = 1; back <= 3 && back <= t->len; back++) {
        unsigned c = b[t->len - back];
        if ((c & 0xC0) == 0x80) continue;      /* continuation: look further back */
        if (c >= 0xC0 && utf8_seq(b + t->len - back, back) < 0 && back > hold) hold = back;
        break;
    }
    return hold;
}

int srv_text_push(struct srv_text *t, const char *p, size_t n)
{
    if (t->stopped) return 1;
    size_t old = t->len;
    if (t->len + n + 1 > t->cap) {
        size_t nc = t->cap ? t->cap : 64;
        while (nc < t->len + n + 1) nc *= 2;
        char *nb = realloc(t->buf, nc);
        if (!nb) return -1;
        t->buf = nb;
        t->cap = nc;
    }
    memcpy(t->buf + t->len, p, n);
    t->len += n;
    t->buf[t->len] = 0;

    /* A match must end in the new bytes; it may start up to len(stop)-1
     * bytes before them. The earliest match wins. */
    size_t cut = (size_t)-1;
    for (int i = 0; i < t->n_stop; i++) {
        size_t sl = strlen(t->stop[i]);
        size_t from = old >= sl - 1 ? old - (sl - 1) : 0;
        const char *m = memmem(t->buf + from, t->len - from, t->stop[i], sl);
        if (m && (size_t)(m - t->buf) < cut) cut = (size_t)(m - t->buf);
    }
    if (cut != (size_t)-1) {
        t->len = cut;
        t->buf[cut] = 0;
        t->stopped = 1;
        t->ready = t->len;
        return 1;
    }
    size_t r = t->len - held_tail(t);
    if (r > t->ready) t->ready = r;
    return 0;
}

void srv_text_finish(struct srv_text *t) { t->ready = t->len; }

/* ======================================================================
 * Responses
 * ====================================================================== */

json_t *srv_usage_json(const struct srv_usage *u)
{
    return json_pack("{s:i,s:i,s:i,s:{s:i}}", "prompt_tokens", u->prompt,
                     "completion_tokens", u->completion, "total_tokens", u->prompt + u->completion,
                     "prompt_tokens_details", "cached_tokens", u->cached);
}

/* A token's text for JSON (lossy) and its exact bytes. */
static json_t *token_entry(const struct srv_backend *be, int32_t tok, float lp, int with_bytes)
{
    char buf[256];
    int n = be->piece(be->ud, tok, buf, sizeof buf);
    if (n < 0 || n > (int)sizeof buf) n = 0;
    size_t cl;
    char *clean = srv_utf8_clean(buf, (size_t)n, &cl);
    json_t *o = json_object();
    json_object_set_new(o, "token", json_stringn(clean ? clean : "", clean ? cl : 0));
    json_object_set_new(o, "logprob", json_real(isfinite(lp) ? lp : -9999.0));
    if (with_bytes) {
        json_t *b = json_array();
        for (int i = 0; i < n; i++) json_array_append_new(b, json_integer((unsigned char)buf[i]));
        json_object_set_new(o, "bytes", b);
    }
    free(clean);
    return o;
}

json_t *srv_logprobs_json(const struct srv_backend *be, enum srv_kind kind,
                          const struct srv_tokprob *probs, int n, size_t text_base)
{
    if (kind == SRV_CHAT) {
        json_t *content = json_array();
        for (int i = 0; i < n; i++) {
            json_t *e = token_entry(be, probs[i].tok, probs[i].lp, 1);
            json_t *top = json_array();
            for (int k = 0; k < probs[i].n_top; k++)
                json_array_append_new(top, token_entry(be, probs[i].top_tok[k], probs[i].top_lp[k], 1));
            json_object_set_new(e, "top_logprobs", top);
            json_array_append_new(content, e);
        }
        return json_pack("{s:o}", "content", content);
    }
    json_t *toks = json_array(), *lps = json_array(), *tops = json_array(), *offs = json_array();
    size_t off = text_base;
    for (int i = 0; i < n; i++) {
        json_t *e = token_entry(be, probs[i].tok, probs[i].lp, 0);
        json_array_append(toks, json_object_get(e, "token"));
        json_array_append(lps, json_object_get(e, "logprob"));
        json_array_append_new(offs, json_integer((json_int_t)off));
        char buf[256];
        int pl = be->piece(be->ud, probs[i].tok, buf, sizeof buf);
        if (pl > 0 && pl <= (int)sizeof buf) off += (size_t)pl;
        json_decref(e);
        json_t *top = json_object();
        for (int k = 0; k < probs[i].n_top; k++) {
            json_t *t = token_entry(be, probs[i].top_tok[k], probs[i].top_lp[k], 0);
            json_object_set(top, json_string_value(json_object_get(t, "token")), json_object_get(t, "logprob"));
            json_decref(t);
        }
        json_array_append_new(tops, top);
    }
    return json_pack("{s:o,s:o,s:o,s:o}", "tokens", toks, "token_logprobs", lps,
                     "top_logprobs", tops, "text_offset", offs);
}

json_t *srv_response_json(enum srv_kind kind, const char *id, long long created,
                          const char *model, const char *text, size_t len,
                          const char *finish, json_t *logprobs, const struct srv_usage *u)
{
    size_t cl;
    char *clean = srv_utf8_clean(text, len, &cl);
    json_t *choice;
    if (kind == SRV_CHAT)
        choice = json_pack("{s:i,s:{s:s,s:s%},s:o,s:s}", "index", 0, "message", "role", "assistant",
                           "content", clean ? clean : "", clean ? cl : (size_t)0,
                           "logprobs", logprobs ? logprobs : json_null(), "finish_reason", finish);
    else
        choice = json_pack("{s:i,s:s%,s:o,s:s}", "index", 0, "text", clean ? clean : "",
                           clean ? cl : (size_t)0, "logprobs", logprobs ? logprobs : json_null(),
                           "finish_reason", finish);
    free(clean);
    return json_pack("{s:s,s:s,s:I,s:s,s:[o],s:o}", "id", id,
                     "object", kind == SRV_CHAT ? "chat.completion" : "text_completion",
                     "created", (json_int_t)created, "model", model, "choices", choice,
                     "usage", srv_usage_json(u));
}

char *srv_sse_chunk(enum srv_kind kind, const char *id, long long created, const char *model,
                    const char *role, const char *text, size_t len, const char *finish,
                    json_t *logprobs, int include_usage, const struct srv_usage *usage)
{
    json_t *o = json_pack("{s:s,s:s,s:I,s:s}", "id", id,
                          "object", kind == SRV_CHAT ? "chat.completion.chunk" : "text_completion",
                          "created", (json_int_t)created, "model", model);
    json_t *choices = json_array();
    if (usage) {
        json_decref(logprobs);
        json_object_set_new(o, "usage", srv_usage_json(usage));
    } else {
        size_t cl = 0;
        char *clean = text ? srv_utf8_clean(text, len, &cl) : NULL;
        json_t *c = json_pack("{s:i}", "index", 0);
        if (kind == SRV_CHAT) {
            json_t *delta = json_object();
            if (role) json_object_set_new(delta, "role", json_string(role));
            if (clean) json_object_set_new(delta, "content", json_stringn(clean, cl));
            json_object_set_new(c, "delta", delta);
        } else {
            json_object_set_new(c, "text", json_stringn(clean ? clean : "", cl));
        }
        free(clean);
        json_object_set_new(c, "logprobs", logprobs ? logprobs : json_null());
        json_object_set_new(c, "finish_reason", finish ? json_string(finish) : json_null());
        json_array_append_new(choices, c);
        if (include_usage) json_object_set_new(o, "usage", json_null());
    }
    json_object_set_new(o, "choices", choices);
    char *body = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (!body) return NULL;
    size_t bl = strlen(body);
    char *s = malloc(bl + 9);
    if (s) {
        memcpy(s, "data: ", 6);
        memcpy(s + 6, body, bl);
        memcpy(s + 6 + bl, "\n\n", 3);
    }
    free(body);
    return s;
}
