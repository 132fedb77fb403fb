/*
 * fuzz_callcon.c: libFuzzer harness for the tool-call decoding constraint
 * (`make fuzz-callcon`, src/model/chat_constrain.c), which reads whatever
 * a model generates.
 *
 * The input's first byte picks the format (Qwen3 or Qwen3-Coder) and the
 * forced function (any, or one of three); the rest is a reply, cut into
 * tokens at every 0xFF byte. The promises checked: each token is accepted
 * by feed exactly when allows said so, a refused token ends the constraint,
 * a closed constraint allows anything; and a reply the constraint accepted
 * all the way to the close is, with its forced opening, read by the reply
 * parser (chat_parse.h) as one call to a listed function whose arguments
 * are a JSON object with only declared keys.
 */
#include "fuzz.h"
#include "model/chat_constrain.h"
#include "model/chat_parse.h"

static const char CALLCON_TOOLS[] =
    "[{\"type\":\"function\",\"function\":{\"name\":\"get_time\",\"parameters\":{\"type\":\"object\",\"properties\":{}}}},"
    "{\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"parameters\":{\"type\":\"object\","
    "\"properties\":{\"city\":{\"type\":\"string\"},\"days\":{\"type\":\"integer\"}}}}},"
    "{\"type\":\"function\",\"function\":{\"name\":\"get\"}}]";

FUZZ_ENTRY(callcon)
{
    if (size < 1) return 0;
    static const char *const names[4] = { NULL, "get_time", "get_weather", "get" };
    const int format = data[0] & 1 ? MOEQ_CALLS_QWEN3_CODER : MOEQ_CALLS_QWEN3;
    const char *name = names[(data[0] >> 1) & 3];
    json_error_t je;
    json_t *tools = json_loads(CALLCON_TOOLS, 0, &je);
    FUZZ_ASSERT(tools);
    moeq_call_con *c = moeq_call_con_new(format, tools, name);
    FUZZ_ASSERT(c && !moeq_call_con_done(c));
    /* the reply as the parser sees it: the forced opening, then the tokens */
    size_t cap = size + 128, n = 0;
    char *text = malloc(cap);
    FUZZ_ASSERT(text);
    n += (size_t)snprintf(text, cap, "<tool_call>\n");
    if (name && format == MOEQ_CALLS_QWEN3)
        n += (size_t)snprintf(text + n, cap - n, "{\"name\": \"%s\", \"arguments\": ", name);
    else if (name)
        n += (size_t)snprintf(text + n, cap - n, "<function=%s>\n", name);
    int refused = 0, closed_clean = 0;
    const uint8_t *p = data + 1, *end = data + size;
    while (p <= end && !closed_clean && !refused) {
        const uint8_t *q = memchr(p, 0xFF, (size_t)(end - p));
        if (!q) q = end;
        size_t len = (size_t)(q - p);
        int ok = moeq_call_con_allows(c, (const char *)p, len);
        if (len > 0) {
            FUZZ_ASSERT(moeq_call_con_feed(c, (const char *)p, len) == ok);
            if (!ok) { refused = 1; FUZZ_ASSERT(moeq_call_con_done(c)); }
            memcpy(text + n, p, len);
            n += len;
        } else {
            FUZZ_ASSERT(ok == moeq_call_con_done(c));
        }
        if (moeq_call_con_done(c)) FUZZ_ASSERT(moeq_call_con_allows(c, "x", 1));
        if (!refused && moeq_call_con_done(c)) closed_clean = 1;
        p = q + 1;
    }
    if (closed_clean) {
        moeq_chat_parser *ps = moeq_chat_parser_new(format, 0, 0, tools);
        struct moeq_chat_delta d;
        FUZZ_ASSERT(ps && moeq_chat_parser_feed(ps, text, n, &d) == 0 && moeq_chat_parser_finish(ps, &d) == 0);
        int nc = 0;
        const struct moeq_tool_call *calls = moeq_chat_parser_calls(ps, &nc);
        /* the close may end mid-token: the token's tail is after the call */
        FUZZ_ASSERT(nc >= 1);
        FUZZ_ASSERT(!name || !strcmp(calls[0].name, name));
        FUZZ_ASSERT(!strcmp(calls[0].name, "get_time") || !strcmp(calls[0].name, "get_weather") ||
                    !strcmp(calls[0].name, "get"));
        json_t *a = json_loads(calls[0].arguments, 0, &je);
        FUZZ_ASSERT(json_is_object(a));
        if (strcmp(calls[0].name, "get")) {
            const char *k;
            json_t *v;
            json_object_foreach(a, k, v) FUZZ_ASSERT(!strcmp(k, "city") || !strcmp(k, "days"));
        }
        json_decref(a);
        moeq_chat_parser_free(ps);
    }
    free(text);
    moeq_call_con_free(c);
    json_decref(tools);
    return 0;
}
