/*
 * test_chat_parse.c: the reply parser (src/model/chat_parse.c): content,
 * reasoning and tool calls of the Qwen3 and Qwen3-Coder formats, malformed
 * and unclosed calls returned as content, and the same result however the
 * text is split (every two-piece split and byte by byte), as streaming
 * needs.
 */
#include "test.h"
#include "model/chat_parse.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

struct result { char content[2048]; char reasoning[2048]; char calls[2048]; int malformed; };

static void add(char *dst, size_t cap, const char *s, size_t n)
{
    size_t l = strlen(dst);
    if (l + n >= cap) n = cap - l - 1;
    memcpy(dst + l, s, n);
    dst[l + n] = 0;
}

static void collect(struct result *r, const struct moeq_chat_delta *d)
{
    if (d->content) add(r->content, sizeof r->content, d->content, d->content_len);
    if (d->reasoning) add(r->reasoning, sizeof r->reasoning, d->reasoning, d->reasoning_len);
}

/* Parse text fed in pieces of `step` bytes (0: split once at `at`). */
static void parse(int fmt, int reasoning, int think_open, json_t *tools, const char *text, size_t step, size_t at,
                  struct result *r)
{
    memset(r, 0, sizeof *r);
    moeq_chat_parser *p = moeq_chat_parser_new(fmt, reasoning, think_open, tools);
    REQUIRE(p);
    struct moeq_chat_delta d;
    size_t n = strlen(text);
    if (step) {
        for (size_t i = 0; i < n; i += step) {
            REQUIRE(moeq_chat_parser_feed(p, text + i, i + step <= n ? step : n - i, &d) == 0);
            collect(r, &d);
        }
    } else {
        REQUIRE(moeq_chat_parser_feed(p, text, at, &d) == 0);
        collect(r, &d);
        REQUIRE(moeq_chat_parser_feed(p, text + at, n - at, &d) == 0);
        collect(r, &d);
    }
    REQUIRE(moeq_chat_parser_finish(p, &d) == 0);
    collect(r, &d);
    int nc;
    const struct moeq_tool_call *c = moeq_chat_parser_calls(p, &nc);
    for (int i = 0; i < nc; i++) {
        char one[512];
        snprintf(one, sizeof one, "%s%s%s", i ? ";" : "", c[i].name, c[i].arguments);
        add(r->calls, sizeof r->calls, one, strlen(one));
    }
    r->malformed = moeq_chat_parser_malformed(p);
    moeq_chat_parser_free(p);
}

struct pcase {
    int fmt, reasoning, think_open;
    const char *text;
    const char *content, *reasoning_text, *calls;
    int malformed;
};

static const struct pcase cases[] = {
    { MOEQ_CALLS_PLAIN, 0, 0, "Hello <b>world</b> a < b", "Hello <b>world</b> a < b", "", "", 0 },
    { MOEQ_CALLS_QWEN3, 0, 0,
      "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"n\": 2}}\n</tool_call>",
      "Let me check.", "", "get_weather{\"city\":\"Paris\",\"n\":2}", 0 },
    { MOEQ_CALLS_QWEN3, 0, 0,
      "<tool_call>\n{\"name\": \"a\", \"arguments\": {}}\n</tool_call>\n<tool_call>\n{\"name\": \"b\", \"arguments\": \"{\\\"x\\\": [1, 2]}\"}\n</tool_call>\n",
      "", "", "a{};b{\"x\":[1,2]}", 0 },
    { MOEQ_CALLS_QWEN3, 0, 0, "<tool_call>\n{not json}\n</tool_call> after",
      "<tool_call>\n{not json}\n</tool_call> after", "", "", 1 },
    { MOEQ_CALLS_QWEN3, 0, 0, "Sure <tool_call>\n{\"name\": \"x\", \"argu",
      "Sure<tool_call>\n{\"name\": \"x\", \"argu", "", "", 1 },
    { MOEQ_CALLS_QWEN3, 0, 0, "a < b <tool", "a < b <tool", "", "", 0 },
    { MOEQ_CALLS_QWEN3, 1, 0, "<think>\nI think.\n\n</think>\n\nAnswer.", "Answer.", "I think.", "", 0 },
    { MOEQ_CALLS_QWEN3, 1, 1, "I think.\n</think>\n\nAnswer.\n", "Answer.\n", "I think.", "", 0 },
    { MOEQ_CALLS_QWEN3, 1, 0,
      "<think>\nNeed the weather.\n</think>\n\n<tool_call>\n{\"name\": \"w\", \"arguments\": {\"c\": \"P\"}}\n</tool_call>",
      "", "Need the weather.", "w{\"c\":\"P\"}", 0 },
    { MOEQ_CALLS_QWEN3, 0, 0, "<think>x</think>y", "<think>x</think>y", "", "", 0 },
    { MOEQ_CALLS_QWEN3, 1, 0, "no think <think>x</think>", "no think <think>x</think>", "", "", 0 },
    { MOEQ_CALLS_QWEN3_CODER, 0, 0,
      "I will search.\n<tool_call>\n<function=search>\n<parameter=q>\ncats and <dogs>\n</parameter>\n<parameter=n>\n3\n</parameter>\n"
      "<parameter=opts>\n{\"deep\": true}\n</parameter>\n</function>\n</tool_call>",
      "I will search.", "", "search{\"q\":\"cats and <dogs>\",\"n\":3,\"opts\":{\"deep\":true}}", 0 },
    { MOEQ_CALLS_QWEN3_CODER, 0, 0, "<tool_call>\n<function=f>\n<parameter=x>\n1\n</function>\n</tool_call>",
      "<tool_call>\n<function=f>\n<parameter=x>\n1\n</function>\n</tool_call>", "", "", 1 },
};

TEST(chat_parse_formats_and_any_split)
{
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const struct pcase *c = &cases[i];
        struct result whole, r;
        parse(c->fmt, c->reasoning, c->think_open, NULL, c->text, 0, strlen(c->text), &whole);
        CHECKF(!strcmp(whole.content, c->content), "case %zu: content '%s', want '%s'", i, whole.content, c->content);
        CHECKF(!strcmp(whole.reasoning, c->reasoning_text), "case %zu: reasoning '%s', want '%s'", i, whole.reasoning,
               c->reasoning_text);
        CHECKF(!strcmp(whole.calls, c->calls), "case %zu: calls '%s', want '%s'", i, whole.calls, c->calls);
        CHECKF(whole.malformed == c->malformed, "case %zu: malformed %d, want %d", i, whole.malformed, c->malformed);
        size_t n = strlen(c->text);
        for (size_t at = 0; at <= n; at++) {
            parse(c->fmt, c->reasoning, c->think_open, NULL, c->text, 0, at, &r);
            CHECKF(!strcmp(r.content, whole.content) && !strcmp(r.reasoning, whole.reasoning) &&
                   !strcmp(r.calls, whole.calls) && r.malformed == whole.malformed,
                   "case %zu split at %zu: content '%s' reasoning '%s' calls '%s'", i, at, r.content, r.reasoning,
                   r.calls);
        }
        parse(c->fmt, c->reasoning, c->think_open, NULL, c->text, 1, 0, &r);
        CHECKF(!strcmp(r.content, whole.content) && !strcmp(r.reasoning, whole.reasoning) &&
               !strcmp(r.calls, whole.calls), "case %zu byte by byte differs", i);
    }
}

TEST(chat_parse_coder_parameters_typed_by_schema)
{
    json_error_t je;
    json_t *tools = json_loads("[{\"type\": \"function\", \"function\": {\"name\": \"search\", \"parameters\": "
                               "{\"type\": \"object\", \"properties\": {\"q\": {\"type\": \"string\"}, "
                               "\"n\": {\"type\": \"string\"}, \"k\": {\"type\": \"integer\"}}}}}]", 0, &je);
    REQUIRE(tools);
    struct result r;
    parse(MOEQ_CALLS_QWEN3_CODER, 0, 0, tools,
          "<tool_call>\n<function=search>\n<parameter=q>\n42\n</parameter>\n<parameter=n>\n3\n</parameter>\n"
          "<parameter=k>\n7\n</parameter>\n</function>\n</tool_call>", 0, 0, &r);
    CHECKF(!strcmp(r.calls, "search{\"q\":\"42\",\"n\":\"3\",\"k\":7}"), "calls '%s'", r.calls);
    json_decref(tools);
}

TEST(chat_parse_format_of_template)
{
    CHECK(moeq_chat_format_of_template("... <tool_call>\\n{\"name\": ...") == MOEQ_CALLS_QWEN3);
    CHECK(moeq_chat_format_of_template("<tool_call>\\n<function=example>\\n<parameter=p>") == MOEQ_CALLS_QWEN3_CODER);
    CHECK(moeq_chat_format_of_template("{{ messages }}") == MOEQ_CALLS_PLAIN);
    CHECK(moeq_chat_format_of_template(NULL) == MOEQ_CALLS_PLAIN);
}
