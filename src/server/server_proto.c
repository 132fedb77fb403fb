/*
 * server_proto.c: the server's protocol layer, with no I/O and no threads.
 *
 * Requests in: a JSON body is checked field by field against the OpenAI
 * shapes (wrong types and out-of-range values are a 400 naming the field;
 * so is a known field that would change the reply and that is not applied,
 * unless it has its neutral value: see `unapplied`). A chat becomes the
 * template's context (messages with tool calls and tool results, tools,
 * chat_template_kwargs), rendered by the model's own template; tool_choice
 * "required" or a named function appends the opening of a call (the
 * prefill) and gives the request a constraint (chat_constrain.h) that the
 * scheduler applies while sampling, so the reply is one call. The prompt
 * is tokenized, and one that leaves no room in the context is refused up
 * front.
 *
 * Text out: generated tokens are bytes, not characters, and a stop string
 * may be split over several tokens, so srv_text holds back whatever tail
 * could still turn into a stop string or is half a UTF-8 character. JSON
 * strings must be valid UTF-8, so every emitted piece goes through
 * srv_utf8_clean.
 *
 * Responses out: the chat.completion / text_completion objects, their
 * streamed chunk forms as server-sent events, logprobs in both shapes, and
 * the error object. A chat reply is read by srv_reply (chat_parse.h) into
 * content, reasoning_content and tool calls, as one message or as the
 * stream's deltas.
 */
#include "server/server.h"
#include "model/chat_constrain.h"
#include "model/chat_parse.h"
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
    { "typical_p",         NEU_NUM, 1, -1 },
    { "tfs_z",             NEU_NUM, 1, -1 },
    { "mirostat",          NEU_NUM, 0, -1 },
    { "dynatemp_range",    NEU_NUM, 0, -1 },
    { "dry_multiplier",    NEU_NUM, 0, -1 },
    { "xtc_probability",   NEU_NUM, 0, -1 },
    { "n_probs",           NEU_NUM, 0, -1 },
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
static int message_text(const json_t *c, size_t i, json_t **out, char *err, size_t errlen)
{
    if (json_is_string(c)) {
        *out = json_stringn_nocheck(json_string_value(c), json_string_length(c));
        return *out ? 0 : fail(err, errlen, "out of memory");
    }
    if (!json_is_array(c))
        return fail(err, errlen, "'messages[%zu].content' must be a string or an array of text parts", i);
    size_t total = 0, k;
    const json_t *p;
    json_array_foreach(c, k, p) {
        const json_t *ty = json_object_get(p, "type"), *tx = json_object_get(p, "text");
        if (!json_is_object(p) || !json_is_string(ty) || strcmp(json_string_value(ty), "text") != 0)
            return fail(err, errlen, "'messages[%zu].content[%zu]' must be a part of type \"text\"", i, k);
        if (!json_is_string(tx))
            return fail(err, errlen, "'messages[%zu].content[%zu].text' must be a string", i, k);
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
    *out = json_stringn_nocheck(s, at);
    free(s);
    return *out ? 0 : fail(err, errlen, "out of memory");
}

/* An assistant turn's tool_calls as the template wants them: arguments
 * sent as a JSON string (OpenAI's shape) are parsed into an object, as
 * llama-server does, so templates that iterate over them work. */
static int message_tool_calls(const json_t *tc, size_t i, json_t **out, char *err, size_t errlen)
{
    if (!json_is_array(tc)) return fail(err, errlen, "'messages[%zu].tool_calls' must be an array", i);
    json_t *arr = json_array();
    if (!arr) return fail(err, errlen, "out of memory");
    size_t k;
    const json_t *c;
    json_array_foreach(tc, k, c) {
        int rc = 0;
        const json_t *ty = field(c, "type"), *fn = json_object_get(c, "function"), *id = field(c, "id");
        const json_t *nm = json_object_get(fn, "name"), *a = field(fn, "arguments");
        if (!json_is_object(c)) rc = fail(err, errlen, "'messages[%zu].tool_calls[%zu]' must be an object", i, k);
        else if (ty && !(json_is_string(ty) && !strcmp(json_string_value(ty), "function")))
            rc = fail(err, errlen, "'messages[%zu].tool_calls[%zu].type' must be \"function\"", i, k);
        else if (!json_is_object(fn))
            rc = fail(err, errlen, "'messages[%zu].tool_calls[%zu].function' must be an object", i, k);
        else if (!json_is_string(nm) || json_string_length(nm) == 0)
            rc = fail(err, errlen, "'messages[%zu].tool_calls[%zu].function.name' must be a non-empty string", i, k);
        else if (id && !json_is_string(id))
            rc = fail(err, errlen, "'messages[%zu].tool_calls[%zu].id' must be a string", i, k);
        json_t *args = NULL;
        if (!rc) {
            size_t blank = 0;
            if (json_is_string(a))
                while (blank < json_string_length(a) && strchr(" \t\r\n", json_string_value(a)[blank])) blank++;
            if (!a || (json_is_string(a) && blank == json_string_length(a))) {
                args = json_object();
            } else if (json_is_string(a)) {
                json_error_t je;
                args = json_loadb(json_string_value(a), json_string_length(a), 0, &je);
                if (!json_is_object(args)) {
                    rc = fail(err, errlen, "'messages[%zu].tool_calls[%zu].function.arguments' is not a JSON object%s%s",
                              i, k, args ? "" : ": ", args ? "" : je.text);
                    json_decref(args);
                    args = NULL;
                }
            } else if (json_is_object(a)) {
                args = json_deep_copy(a);
            } else {
                rc = fail(err, errlen, "'messages[%zu].tool_calls[%zu].function.arguments' must be a JSON string or an object",
                          i, k);
            }
        }
        json_t *o = rc ? NULL : json_pack("{s:s,s:{s:O,s:o}}", "type", "function", "function", "name", nm,
                                          "arguments", args);
        if (!rc && !o) rc = fail(err, errlen, "out of memory");
        if (o && id) json_object_set(o, "id", (json_t *)id);
        if (rc) { json_decref(arr); return rc; }
        json_array_append_new(arr, o);
    }
    *out = arr;
    return 0;
}

/* One message, checked, in the shape the template reads: role, content
 * (text), and per role tool_calls / reasoning_content (assistant),
 * tool_call_id / name (tool). Other fields are dropped. */
static int chat_message(const json_t *msg, size_t i, json_t **out, char *err, size_t errlen)
{
    if (!json_is_object(msg)) return fail(err, errlen, "'messages[%zu]' must be an object", i);
    const json_t *role = json_object_get(msg, "role");
    if (!json_is_string(role)) return fail(err, errlen, "'messages[%zu].role' must be a string", i);
    const char *r = json_string_value(role);
    /* "developer" is OpenAI's newer name for the system role. */
    if (!strcmp(r, "developer")) r = "system";
    int assistant = !strcmp(r, "assistant"), tool = !strcmp(r, "tool");
    if (strcmp(r, "system") && strcmp(r, "user") && !assistant && !tool)
        return fail(err, errlen, "'messages[%zu].role' is '%.40s'; expected system, developer, user, assistant or tool",
                    i, r);
    json_t *m = json_pack("{s:s}", "role", r), *content = NULL;
    if (!m) return fail(err, errlen, "out of memory");
    const json_t *c = field(msg, "content");
    int rc = 0;
    if (!c) {
        /* An assistant turn that only called tools has no content. */
        if (!assistant) rc = fail(err, errlen, "'messages[%zu].content' is required", i);
        else content = json_string("");
    } else {
        rc = message_text(c, i, &content, err, errlen);
    }
    if (!rc) json_object_set_new(m, "content", content);
    static const struct { const char *name; int for_tool; } extra[] = {
        { "reasoning_content", 0 }, { "tool_call_id", 1 }, { "name", 1 },
    };
    for (size_t k = 0; !rc && k < sizeof extra / sizeof extra[0]; k++) {
        const json_t *v = field(msg, extra[k].name);
        if (!v || (extra[k].for_tool ? !tool : !assistant)) continue;
        if (!json_is_string(v)) rc = fail(err, errlen, "'messages[%zu].%s' must be a string", i, extra[k].name);
        else json_object_set(m, extra[k].name, (json_t *)v);
    }
    const json_t *tc = field(msg, "tool_calls");
    if (!rc && tc && assistant && !(json_is_array(tc) && json_array_size(tc) == 0)) {
        json_t *calls = NULL;
        rc = message_tool_calls(tc, i, &calls, err, errlen);
        if (!rc) json_object_set_new(m, "tool_calls", calls);
    }
    if (rc) { json_decref(m); return rc; }
    *out = m;
    return 0;
}

/* The tools offered: OpenAI's [{"type":"function","function":{"name",
 * "description","parameters"}}], checked and passed to the template as
 * sent. Empty or absent: none. */
static int chat_tools(const json_t *body, json_t **out, char *err, size_t errlen)
{
    *out = NULL;
    const json_t *tools = field(body, "tools");
    if (!tools) return 0;
    if (!json_is_array(tools)) return fail(err, errlen, "'tools' must be an array");
    size_t i;
    const json_t *t;
    json_array_foreach(tools, i, t) {
        const json_t *ty = json_object_get(t, "type"), *fn = json_object_get(t, "function");
        const json_t *nm = json_object_get(fn, "name"), *pa = field(fn, "parameters");
        if (!json_is_object(t)) return fail(err, errlen, "'tools[%zu]' must be an object", i);
        if (!json_is_string(ty) || strcmp(json_string_value(ty), "function"))
            return fail(err, errlen, "'tools[%zu].type' must be \"function\"", i);
        if (!json_is_object(fn)) return fail(err, errlen, "'tools[%zu].function' must be an object", i);
        if (!json_is_string(nm) || json_string_length(nm) == 0)
            return fail(err, errlen, "'tools[%zu].function.name' must be a non-empty string", i);
        if (pa && !json_is_object(pa)) return fail(err, errlen, "'tools[%zu].function.parameters' must be an object", i);
    }
    if (json_array_size(tools) == 0) return 0;
    *out = json_deep_copy(tools);
    return *out ? 0 : fail(err, errlen, "out of memory");
}

static int tool_named(const json_t *tools, const char *name)
{
    size_t i;
    const json_t *t;
    json_array_foreach(tools, i, t)
        if (!strcmp(json_string_value(json_object_get(json_object_get(t, "function"), "name")), name)) return 1;
    return 0;
}

/*
 * tool_choice: "auto" (the default), "none" (tools are not offered and
 * calls not parsed, as llama-server), "required", or a named function
 * (*name, borrowed from the body). The last two force a call: see
 * call_prefill.
 */
enum tool_choice { TC_AUTO, TC_NONE, TC_REQUIRED, TC_NAMED };

static int chat_tool_choice(const struct srv_backend *be, const json_t *body, const json_t *tools,
                            enum tool_choice *tc, const json_t **name, char *err, size_t errlen)
{
    const json_t *v = field(body, "tool_choice");
    const char *s = json_string_value(v);
    *tc = TC_AUTO;
    *name = NULL;
    if (!v || (s && !strcmp(s, "auto"))) return 0;
    if (s && !strcmp(s, "none")) { *tc = TC_NONE; return 0; }
    if (s && !strcmp(s, "required")) {
        *tc = TC_REQUIRED;
    } else if (json_is_object(v)) {
        const json_t *ty = json_object_get(v, "type");
        *name = json_object_get(json_object_get(v, "function"), "name");
        if (!json_is_string(ty) || strcmp(json_string_value(ty), "function") || !json_is_string(*name) ||
            json_string_length(*name) == 0)
            return fail(err, errlen, "'tool_choice' object must be {\"type\":\"function\",\"function\":{\"name\":...}}");
        *tc = TC_NAMED;
    } else {
        return fail(err, errlen, "'tool_choice' must be \"none\", \"auto\", \"required\" or {\"type\":\"function\",...}");
    }
    const char *what = *tc == TC_REQUIRED ? "\"required\"" : "with a function";
    if (!tools) return fail(err, errlen, "'tool_choice' %s needs 'tools'", what);
    if (*name && !tool_named(tools, json_string_value(*name)))
        return fail(err, errlen, "'tool_choice' names the function '%.60s', which is not in 'tools'",
                    json_string_value(*name));
    if (be->chat_format == MOEQ_CALLS_PLAIN)
        return fail(err, errlen, "'tool_choice' %s is not supported: the model's chat template has no tool-call syntax",
                    what);
    return 0;
}

/* The start of a forced call in the template's syntax (malloc'd): Qwen3's
 * "<tool_call>\n" and, for a named function, its name and the key of the
 * arguments; Coder's "<tool_call>\n<function=NAME>\n". A reply that would
 * start inside a think block closes it first. */
static char *call_prefill(const struct srv_backend *be, const json_t *name, int think_open)
{
    const char *close = think_open ? "</think>\n\n" : "";
    char *p = NULL, *quoted = NULL;
    int n;
    if (!name)
        n = asprintf(&p, "%s<tool_call>\n", close);
    else if (be->chat_format == MOEQ_CALLS_QWEN3_CODER)
        n = asprintf(&p, "%s<tool_call>\n<function=%s>\n", close, json_string_value(name));
    else if ((quoted = json_dumps(name, JSON_ENCODE_ANY)))
        n = asprintf(&p, "%s<tool_call>\n{\"name\": %s, \"arguments\": ", close, quoted);
    else
        n = -1;
    free(quoted);
    return n < 0 ? NULL : p;
}

/* Does the prompt leave a <think> block open (the reply starts inside it)? */
static int think_left_open(const char *prompt)
{
    const char *open = NULL;
    for (const char *p = prompt; (p = strstr(p, "<think>")); p++) open = p;
    return open && !strstr(open, "</think>");
}

/* The template context of a chat request: validated messages, the tools
 * (unless tool_choice is "none"), add_generation_prompt, and the keys of
 * chat_template_kwargs. *tools gets the tools offered (owned, NULL: none). */
static int chat_context(const json_t *body, json_t **ctx_out, json_t **tools, char *err, size_t errlen)
{
    *ctx_out = NULL;
    *tools = NULL;
    const json_t *msgs = json_object_get(body, "messages");
    if (!msgs) return fail(err, errlen, "'messages' is required");
    if (!json_is_array(msgs)) return fail(err, errlen, "'messages' must be an array");
    size_t n = json_array_size(msgs);
    if (n == 0) return fail(err, errlen, "'messages' must not be empty");
    if (n > 100000) return fail(err, errlen, "'messages' has too many entries");
    json_t *ctx = json_object(), *ms = json_array();
    int rc = ctx && ms ? 0 : fail(err, errlen, "out of memory");
    for (size_t i = 0; i < n && !rc; i++) {
        json_t *m = NULL;
        rc = chat_message(json_array_get(msgs, i), i, &m, err, errlen);
        if (!rc) json_array_append_new(ms, m);
    }
    if (!rc) {
        json_object_set_new(ctx, "messages", ms);
        ms = NULL;
        json_object_set_new(ctx, "add_generation_prompt", json_true());
        rc = chat_tools(body, tools, err, errlen);
    }
    const json_t *kw = field(body, "chat_template_kwargs");
    if (!rc && kw) {
        if (!json_is_object(kw)) rc = fail(err, errlen, "'chat_template_kwargs' must be an object");
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)kw, k, v) {
            if (rc) break;
            if (!strcmp(k, "messages") || !strcmp(k, "tools") || !strcmp(k, "add_generation_prompt"))
                rc = fail(err, errlen, "'chat_template_kwargs.%s' is not allowed (it is a request field)", k);
            else json_object_set(ctx, k, v);
        }
    }
    json_decref(ms);
    if (rc) { json_decref(ctx); json_decref(*tools); *tools = NULL; return rc; }
    *ctx_out = ctx;
    return 0;
}

/* Render a chat request: the prompt text (with any tool_choice prefill at
 * its end) and, in g when given, how its reply is to be read. */
static int chat_prompt(const struct srv_backend *be, const json_t *body, struct srv_gen *g, char **prompt,
                       char *err, size_t errlen)
{
    json_t *ctx, *tools;
    int rc = chat_context(body, &ctx, &tools, err, errlen);
    if (rc) return rc;
    int parallel = 1;
    char *prefill = NULL, *text = NULL;
    enum tool_choice tc;
    const json_t *name;
    if ((rc = get_bool(body, "parallel_tool_calls", &parallel, err, errlen))) goto out;
    if ((rc = chat_tool_choice(be, body, tools, &tc, &name, err, errlen))) goto out;
    if (tc == TC_NONE) { json_decref(tools); tools = NULL; }
    if (tools) json_object_set(ctx, "tools", tools);
    char rerr[256] = "";
    text = be->chat_render(be->ud, ctx, rerr, sizeof rerr);
    if (!text) { rc = fail(err, errlen, "cannot render the chat: %s", rerr[0] ? rerr : "template error"); goto out; }
    int reasoning = be->chat_think && !be->reasoning_none;
    int think_open = reasoning && think_left_open(text);
    if (tc == TC_REQUIRED || tc == TC_NAMED) {
        prefill = call_prefill(be, name, think_open);
        size_t a = strlen(text), b = prefill ? strlen(prefill) : 0;
        char *both = prefill ? realloc(text, a + b + 1) : NULL;
        if (!both) { rc = fail(err, errlen, "out of memory"); goto out; }
        memcpy(both + a, prefill, b + 1);
        text = both;
    }
    if (g) {
        g->chat_format = tools ? be->chat_format : MOEQ_CALLS_PLAIN;
        g->reasoning = reasoning;
        g->think_open = think_open;
        g->parallel_calls = parallel;
        g->prefill = prefill;
        /* the forced call is also constrained, so the model cannot leave it */
        if (tc == TC_REQUIRED || tc == TC_NAMED)
            g->call_con = moeq_call_con_new(be->chat_format, tools, name ? json_string_value(name) : NULL);
        g->tools = tools;
        prefill = NULL;
        tools = NULL;
    }
    *prompt = text;
    text = NULL;
out:
    free(text);
    free(prefill);
    json_decref(tools);
    json_decref(ctx);
    return rc;
}

int srv_apply_template(const struct srv_backend *be, const json_t *body, char **prompt, char *err, size_t errlen)
{
    if (!json_is_object(body)) return fail(err, errlen, "request body must be a JSON object");
    return chat_prompt(be, body, NULL, prompt, err, errlen);
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

/* One logit_bias entry: a token id (a JSON integer, or its decimal text as
 * OpenAI's map keys are) and a number, or false for a ban. */
static int bias_entry(const struct srv_backend *be, const char *key, const json_t *idv, const json_t *v,
                      struct srv_bias *out, char *err, size_t errlen)
{
    long long id = -1;
    if (idv) {
        if (json_is_integer(idv)) id = json_integer_value(idv);
    } else {
        char *end;
        errno = 0;
        id = strtoll(key, &end, 10);
        if (end == key || *end || errno) id = -1;
    }
    if (id < 0 || id >= be->n_vocab)
        return fail(err, errlen, "'logit_bias' key '%.40s' must be a token id in [0, %d)", key, be->n_vocab);
    if (json_is_false(v)) out->bias = -INFINITY;
    else if (json_is_number(v) && isfinite(json_number_value(v))) out->bias = (float)json_number_value(v);
    else return fail(err, errlen, "'logit_bias' value for token %lld must be a number or false", id);
    out->id = (int32_t)id;
    return 0;
}

/* frequency_penalty, presence_penalty (OpenAI), repeat_penalty and
 * repeat_last_n (llama-server), logit_bias: OpenAI's {"id": bias} map or
 * llama-server's [[id, bias], ...]; a bias of false bans the token. */
static int parse_penalties(const struct srv_backend *be, const json_t *body, struct srv_gen *g,
                           char *err, size_t errlen)
{
    int rc;
    double d;
    long long i64;
    d = g->sp.frequency_penalty;
    if ((rc = get_number(body, "frequency_penalty", -2, 2, &d, err, errlen))) return rc;
    g->sp.frequency_penalty = (float)d;
    d = g->sp.presence_penalty;
    if ((rc = get_number(body, "presence_penalty", -2, 2, &d, err, errlen))) return rc;
    g->sp.presence_penalty = (float)d;
    d = g->sp.repeat_penalty;
    if ((rc = get_number(body, "repeat_penalty", 0, 100, &d, err, errlen))) return rc;
    g->sp.repeat_penalty = (float)d;
    i64 = g->sp.repeat_last_n;
    if ((rc = get_int(body, "repeat_last_n", -1, 1 << 30, &i64, err, errlen))) return rc;
    g->sp.repeat_last_n = (int)i64;

    const json_t *lb = field(body, "logit_bias");
    if (!lb || is_empty(lb)) return 0;
    size_t n = json_is_object(lb) ? json_object_size(lb) : json_is_array(lb) ? json_array_size(lb) : 0;
    if (!n) return fail(err, errlen, "'logit_bias' must be an object {\"token id\": bias} or an array [[id, bias], ...]");
    if (n > (size_t)be->n_vocab) return fail(err, errlen, "'logit_bias' has more entries than the vocabulary");
    g->bias = malloc(n * sizeof *g->bias);
    if (!g->bias) return fail(err, errlen, "out of memory");
    size_t k = 0;
    if (json_is_object(lb)) {
        const char *key;
        json_t *v;
        json_object_foreach((json_t *)lb, key, v)
            if ((rc = bias_entry(be, key, NULL, v, &g->bias[k++], err, errlen))) return rc;
    } else {
        size_t i;
        const json_t *e;
        json_array_foreach(lb, i, e) {
            if (!json_is_array(e) || json_array_size(e) != 2 || !json_is_integer(json_array_get(e, 0)))
                return fail(err, errlen, "'logit_bias[%zu]' must be [token id, bias]", i);
            char key[32];
            snprintf(key, sizeof key, "%lld", (long long)json_integer_value(json_array_get(e, 0)));
            if ((rc = bias_entry(be, key, json_array_get(e, 0), json_array_get(e, 1), &g->bias[k++], err, errlen)))
                return rc;
        }
    }
    g->sp.bias = g->bias;
    g->sp.n_bias = (int)k;
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
    g->sp.repeat_penalty = 1.0f;
    g->sp.repeat_last_n = 64;
    g->parallel_calls = 1;
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

    if ((rc = parse_penalties(be, body, g, err, errlen))) goto bad;

    /* Features a client would rely on and that we do not have are refused
     * rather than silently ignored. */
    const json_t *rf = field(body, "response_format");
    const json_t *tools = field(body, "tools");
    if (kind == SRV_COMPLETION && tools && !(json_is_array(tools) && json_array_size(tools) == 0)) {
        rc = fail(err, errlen, "'tools' is only for /v1/chat/completions");
        goto bad;
    }
    if (rf) {
        const json_t *ty = json_object_get(rf, "type");
        if (!json_is_object(rf) || !json_is_string(ty) || strcmp(json_string_value(ty), "text") != 0) {
            rc = fail(err, errlen, "'response_format' other than {\"type\":\"text\"} is not supported");
            goto bad;
        }
    }

    if ((rc = parse_stop(body, g, err, errlen))) goto bad;

    if (kind == SRV_CHAT) {
        char *text = NULL;
        if ((rc = chat_prompt(be, body, g, &text, err, errlen))) goto bad;
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
    free(g->bias);
    g->bias = NULL;
    g->sp.bias = NULL;
    g->sp.n_bias = 0;
    free(g->prefill);
    g->prefill = NULL;
    json_decref(g->tools);
    g->tools = NULL;
    moeq_call_con_free(g->call_con);
    g->call_con = NULL;
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

/* Bytes as a JSON string, invalid UTF-8 replaced. */
static json_t *clean_string(const char *s, size_t n)
{
    size_t cl;
    char *c = srv_utf8_clean(s, n, &cl);
    json_t *v = c ? json_stringn(c, cl) : NULL;
    free(c);
    return v;
}

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
                          const char *model, const char *text, size_t len, json_t *message,
                          const char *finish, json_t *logprobs, const struct srv_usage *u)
{
    json_t *choice;
    if (kind == SRV_CHAT) {
        if (!message) message = json_pack("{s:s,s:o}", "role", "assistant", "content", clean_string(text, len));
        choice = json_pack("{s:i,s:o,s:o,s:s}", "index", 0, "message", message,
                           "logprobs", logprobs ? logprobs : json_null(), "finish_reason", finish);
    } else {
        json_decref(message);
        choice = json_pack("{s:i,s:o,s:o,s:s}", "index", 0, "text", clean_string(text, len),
                           "logprobs", logprobs ? logprobs : json_null(), "finish_reason", finish);
    }
    return json_pack("{s:s,s:s,s:I,s:s,s:[o],s:o}", "id", id,
                     "object", kind == SRV_CHAT ? "chat.completion" : "text_completion",
                     "created", (json_int_t)created, "model", model, "choices", choice,
                     "usage", srv_usage_json(u));
}

/* One chunk as an SSE event. body: the choice's delta (chat, stolen) or
 * its text (completions). */
static char *sse_event(enum srv_kind kind, const char *id, long long created, const char *model,
                       json_t *body, const char *finish, json_t *logprobs, int include_usage,
                       const struct srv_usage *usage)
{
    json_t *o = json_pack("{s:s,s:s,s:I,s:s}", "id", id,
                          "object", kind == SRV_CHAT ? "chat.completion.chunk" : "text_completion",
                          "created", (json_int_t)created, "model", model);
    json_t *choices = json_array();
    if (usage) {
        json_decref(logprobs);
        json_decref(body);
        json_object_set_new(o, "usage", srv_usage_json(usage));
    } else {
        json_t *c = json_pack("{s:i}", "index", 0);
        json_object_set_new(c, kind == SRV_CHAT ? "delta" : "text", body ? body : json_string(""));
        json_object_set_new(c, "logprobs", logprobs ? logprobs : json_null());
        json_object_set_new(c, "finish_reason", finish ? json_string(finish) : json_null());
        json_array_append_new(choices, c);
        if (include_usage) json_object_set_new(o, "usage", json_null());
    }
    json_object_set_new(o, "choices", choices);
    char *text = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (!text) return NULL;
    size_t bl = strlen(text);
    char *s = malloc(bl + 9);
    if (s) {
        memcpy(s, "data: ", 6);
        memcpy(s + 6, text, bl);
        memcpy(s + 6 + bl, "\n\n", 3);
    }
    free(text);
    return s;
}

char *srv_sse_chunk(enum srv_kind kind, const char *id, long long created, const char *model,
                    const char *role, const char *text, size_t len, const char *finish,
                    json_t *logprobs, int include_usage, const struct srv_usage *usage)
{
    json_t *body = NULL;
    if (!usage && kind == SRV_CHAT) {
        body = json_object();
        if (role) json_object_set_new(body, "role", json_string(role));
        if (text) json_object_set_new(body, "content", clean_string(text, len));
    } else if (!usage) {
        body = clean_string(text ? text : "", text ? len : 0);
    }
    return sse_event(kind, id, created, model, body, finish, logprobs, include_usage, usage);
}

char *srv_sse_delta(const char *id, long long created, const char *model, json_t *delta,
                    const char *finish, json_t *logprobs, int include_usage)
{
    return sse_event(SRV_CHAT, id, created, model, delta ? delta : json_object(), finish, logprobs,
                     include_usage, NULL);
}

/* ======================================================================
 * Chat replies: content, reasoning and tool calls
 * ====================================================================== */

struct srv_reply {
    moeq_chat_parser *p;
    int    parallel;
    char   id[64];                /* the request id: call ids derive from it */
    char  *content, *reasoning;   /* everything so far (raw bytes) */
    size_t cn, ccap, rn, rcap;
    json_t *calls;                /* message.tool_calls kept so far */
    int    oom;
};

static void buf_add(srv_reply *r, char **b, size_t *n, size_t *cap, const char *s, size_t k)
{
    if (r->oom || !k) return;
    if (*n + k + 1 > *cap) {
        size_t c = *cap ? *cap : 256;
        while (c < *n + k + 1) c *= 2;
        char *nb = realloc(*b, c);
        if (!nb) { r->oom = 1; return; }
        *b = nb;
        *cap = c;
    }
    memcpy(*b + *n, s, k);
    *n += k;
    (*b)[*n] = 0;
}

srv_reply *srv_reply_new(const struct srv_gen *g, const char *id)
{
    srv_reply *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->p = moeq_chat_parser_new(g->chat_format, g->reasoning, g->think_open, g->tools);
    r->calls = json_array();
    r->parallel = g->parallel_calls;
    const char *dash = strrchr(id, '-');
    snprintf(r->id, sizeof r->id, "%s", dash ? dash + 1 : id);
    if (!r->p || !r->calls) { srv_reply_free(r); return NULL; }
    /* The forced start of the reply is in the prompt; the parser reads it
     * as if generated, and it produces nothing to show yet (it is the
     * opening of a call, held until the call closes). */
    if (g->prefill) {
        json_t *d = srv_reply_feed(r, g->prefill, strlen(g->prefill), 0);
        if (!d) { srv_reply_free(r); return NULL; }
        json_decref(d);
    }
    return r;
}

void srv_reply_free(srv_reply *r)
{
    if (!r) return;
    moeq_chat_parser_free(r->p);
    free(r->content);
    free(r->reasoning);
    json_decref(r->calls);
    free(r);
}

json_t *srv_reply_feed(srv_reply *r, const char *text, size_t n, int final)
{
    if (final && n) {
        /* the parser's finish takes no text: feed it first */
        json_t *a = srv_reply_feed(r, text, n, 0), *b = a ? srv_reply_feed(r, NULL, 0, 1) : NULL;
        if (a && b) json_array_extend(a, b);
        json_decref(b);
        if (!b) { json_decref(a); return NULL; }
        return a;
    }
    struct moeq_chat_delta d;
    int rc = final ? moeq_chat_parser_finish(r->p, &d) : moeq_chat_parser_feed(r->p, text, n, &d);
    json_t *out = json_array();
    if (rc != 0 || !out || r->oom) { json_decref(out); return NULL; }
    if (d.reasoning_len) {
        buf_add(r, &r->reasoning, &r->rn, &r->rcap, d.reasoning, d.reasoning_len);
        json_array_append_new(out, json_pack("{s:o}", "reasoning_content", clean_string(d.reasoning, d.reasoning_len)));
    }
    if (d.content_len) {
        buf_add(r, &r->content, &r->cn, &r->ccap, d.content, d.content_len);
        json_array_append_new(out, json_pack("{s:o}", "content", clean_string(d.content, d.content_len)));
    }
    int nc;
    const struct moeq_tool_call *calls = moeq_chat_parser_calls(r->p, &nc);
    for (int i = d.first_call; i < d.first_call + d.n_calls; i++) {
        if (!r->parallel && json_array_size(r->calls) >= 1) break;   /* parallel_tool_calls false */
        int index = (int)json_array_size(r->calls);
        char cid[96];
        snprintf(cid, sizeof cid, "call_%s_%d", r->id, index);
        json_t *name = clean_string(calls[i].name, strlen(calls[i].name));
        json_t *args = clean_string(calls[i].arguments, strlen(calls[i].arguments));
        json_array_append_new(r->calls, json_pack("{s:s,s:s,s:{s:O,s:O}}", "id", cid, "type", "function",
                                                  "function", "name", name, "arguments", args));
        /* OpenAI's streamed shape: the call's head, then its arguments. */
        json_array_append_new(out, json_pack("{s:[{s:i,s:s,s:s,s:{s:O,s:s}}]}", "tool_calls", "index", index,
                                             "id", cid, "type", "function", "function", "name", name,
                                             "arguments", ""));
        json_array_append_new(out, json_pack("{s:[{s:i,s:{s:O}}]}", "tool_calls", "index", index,
                                             "function", "arguments", args));
        json_decref(name);
        json_decref(args);
    }
    if (r->oom) { json_decref(out); return NULL; }
    return out;
}

json_t *srv_reply_message(const srv_reply *r)
{
    int calls = json_array_size(r->calls) > 0;
    json_t *m = json_pack("{s:s}", "role", "assistant");
    /* OpenAI: content is null when the reply is only tool calls. */
    json_object_set_new(m, "content", calls && !r->cn ? json_null() : clean_string(r->content ? r->content : "", r->cn));
    if (r->rn) json_object_set_new(m, "reasoning_content", clean_string(r->reasoning, r->rn));
    if (calls) json_object_set(m, "tool_calls", r->calls);
    return m;
}

const char *srv_reply_finish(const srv_reply *r, const char *finish)
{
    return json_array_size(r->calls) > 0 && finish && !strcmp(finish, "stop") ? "tool_calls" : finish;
}

int srv_reply_malformed(const srv_reply *r) { return moeq_chat_parser_malformed(r->p); }
