/*
 * test_chat_constrain.c: the tool-call constraint (src/model/chat_constrain.c):
 * which continuations it allows in the Qwen3 and Qwen3-Coder formats (names
 * from the tools, declared keys, JSON syntax down to numbers, literals and
 * escapes, the closing tags), and random walks over a small vocabulary that
 * pick only allowed pieces: every walk can always go on, ends in a closed
 * call, and the reply parser (chat_parse.h) reads it as one call to a
 * listed function with declared arguments.
 */
#include "test.h"
#include "model/chat_constrain.h"
#include "model/chat_parse.h"

#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const char TOOLS[] =
    "[{\"type\":\"function\",\"function\":{\"name\":\"get_time\",\"parameters\":{\"type\":\"object\",\"properties\":{}}}},"
    "{\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"parameters\":{\"type\":\"object\","
    "\"properties\":{\"city\":{\"type\":\"string\"},\"days\":{\"type\":\"integer\"},\"opts\":{\"type\":\"object\"}}}}},"
    "{\"type\":\"function\",\"function\":{\"name\":\"get\"}}]";

static json_t *tools(void)
{
    json_error_t je;
    return json_loads(TOOLS, 0, &je);
}

static int allows(const moeq_call_con *c, const char *s) { return moeq_call_con_allows(c, s, strlen(s)); }
static int feed(moeq_call_con *c, const char *s) { return moeq_call_con_feed(c, s, strlen(s)); }

/* Is every prefix of text allowed byte by byte, and the whole at once? */
static int accepts(int format, const char *name, const char *text)
{
    json_t *t = tools();
    moeq_call_con *c = moeq_call_con_new(format, t, name);
    json_decref(t);
    if (!c) return -1;
    int ok = allows(c, text);
    for (size_t i = 0; ok && text[i]; i++) ok = moeq_call_con_allows(c, text + i, 1) && feed(c, (char[]){ text[i], 0 });
    int done = moeq_call_con_done(c);
    moeq_call_con_free(c);
    return ok ? 1 + done : 0;   /* 0 refused, 1 accepted and open, 2 accepted and closed */
}

TEST(call_constrain_qwen3)
{
    const int Q = MOEQ_CALLS_QWEN3;
    CHECK(accepts(Q, NULL, "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>") == 2);
    CHECK(accepts(Q, NULL, "{\"name\": \"get\", \"arguments\": {\"any key\": [1, -2.5e+3, true, null, {}]}}\n</tool_call>") == 2);
    CHECK(accepts(Q, NULL, "{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>\nanything after") == 2);
    CHECK(accepts(Q, NULL, "{\"name\": \"get_") == 1);
    CHECK(accepts(Q, NULL, "{\"name\": \"get_wind\"") == 0);          /* not a tool */
    CHECK(accepts(Q, NULL, "{\"name\":\"get\"") == 0);                /* the template's spacing */
    CHECK(accepts(Q, NULL, "{\"name\": \"get_time\", \"arguments\": {\"x\": 1}") == 0);  /* no declared x */
    /* named: the reply starts at the arguments */
    CHECK(accepts(Q, "get_weather", "{\"city\": \"Oslo\", \"days\": 3}}\n</tool_call>") == 2);
    CHECK(accepts(Q, "get_weather", "{\n  \"city\": \"\\u00e9\\n\\\"\",\n  \"opts\": {\"deep\": [[0.5], \"x\"]}\n}}\n</tool_call>") == 2);
    CHECK(accepts(Q, "get_weather", "{\"cities\"") == 0);
    /* each declared key once; a comma needs one left */
    CHECK(accepts(Q, "get_weather", "{\"city\": \"a\", \"city\"") == 0);
    CHECK(accepts(Q, "get_weather", "{\"city\": 1, \"days\": 2, \"opts\": {\"city\": 4, \"city\": 5}}}\n</tool_call>") == 2);
    CHECK(accepts(Q, "get_weather", "{\"city\": 1, \"days\": 2, \"opts\": 3,") == 0);
    CHECK(accepts(Q, "get_weather", "{\"city\": \"a\",}") == 0);
    CHECK(accepts(Q, "get_weather", "{\"days\": 01}") == 0);
    CHECK(accepts(Q, "get_weather", "{\"days\": -}") == 0);
    CHECK(accepts(Q, "get_weather", "{\"days\": 1.}") == 0);
    CHECK(accepts(Q, "get_weather", "{\"days\": 1e}") == 0);
    CHECK(accepts(Q, "get_weather", "{\"days\": 0.25E-2}}\n</tool_call>") == 2);
    CHECK(accepts(Q, "get_weather", "{\"days\": tru}") == 0);
    /* numbers the reply parser can read: 15 integer digits, 2 exponent digits */
    CHECK(accepts(Q, "get_weather", "{\"days\": -123456789012345.000000000001e-99}") == 1);
    CHECK(accepts(Q, "get_weather", "{\"days\": 1234567890123456") == 0);
    CHECK(accepts(Q, "get_weather", "{\"days\": 1e100") == 0);
    CHECK(accepts(Q, "get_weather", "{\"city\": \"a\tb\"}") == 0);   /* raw control byte in a string */
    CHECK(accepts(Q, "get_weather", "{\"city\": \"\\x\"}") == 0);
    CHECK(accepts(Q, "get_weather", "{\"city\": \"\\u12g4\"}") == 0);
    /* what jansson reads: valid UTF-8, no \u0000, surrogates in pairs */
    CHECK(accepts(Q, "get_weather", "{\"city\": \"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\\ud83d\\ude00\"}}\n</tool_call>") == 2);
    CHECK(accepts(Q, "get_weather", "{\"city\": \"\xc3\"") == 0);
    CHECK(accepts(Q, "get_weather", "{\"city\": \"\x88") == 0);
    CHECK(accepts(Q, "get_weather", "{\"city\": \"\xed\xa0\x80") == 0);   /* an encoded surrogate */
    CHECK(accepts(Q, "get_weather", "{\"city\": \"\\u0000") == 0);
    CHECK(accepts(Q, "get_weather", "{\"city\": \"\\u0001\"") == 1);
    CHECK(accepts(Q, "get_weather", "{\"city\": \"\\udc00") == 0);
    CHECK(accepts(Q, "get_weather", "{\"city\": \"\\ud83d\"") == 0);
    CHECK(accepts(Q, "get_weather", "{\"city\": \"\\ud83d\\u0041") == 0);
    CHECK(accepts(Q, "get_weather", "[1]") == 0);                     /* the arguments are an object */
    CHECK(accepts(Q, "get", "{\"opts\": {\"x\": [}") == 0);
    CHECK(accepts(Q, "get", "{}}</tool_call>") == 0);                 /* the newline before the tag */
    /* free text never closes the call early (the parser ends it at the first tag) */
    CHECK(accepts(Q, "get", "{\"a</tool_call") == 1);
    CHECK(accepts(Q, "get", "{\"a</tool_call>") == 0);
    CHECK(accepts(Q, "get", "{\"a\": \"</tool_call>") == 0);
    /* blanks between tokens are capped (a newline and 4 per level), so a
     * model cannot stall in them; none before the arguments */
    CHECK(accepts(Q, "get", "{\n    \"a\": {\n        \"b\": 1\n    }\n}}\n</tool_call>") == 2);
    CHECK(accepts(Q, "get", "{      ") == 0);
    CHECK(accepts(Q, "get", "{\"a\": [[[                  ") == 0);   /* 18 > 1 + 4 * 4 */
    CHECK(accepts(Q, "get", " {") == 0);
    /* deep nesting: refused past the stack, closable below it */
    char deep[200] = "{\"k\": ";
    for (int i = 0; i < 62; i++) strcat(deep, "[");
    CHECK(accepts(Q, "get", deep) == 1);
    strcat(deep, "[");
    CHECK(accepts(Q, "get", deep) == 0);
    /* unknown function, another format, no tools: no constraint */
    json_t *t = tools();
    CHECK(moeq_call_con_new(Q, t, "nope") == NULL);
    CHECK(moeq_call_con_new(MOEQ_CALLS_PLAIN, t, NULL) == NULL);
    json_t *none = json_array();
    CHECK(moeq_call_con_new(Q, none, NULL) == NULL);
    json_decref(none);
    /* empty text makes no progress; after the close anything goes */
    moeq_call_con *c = moeq_call_con_new(Q, t, "get_time");
    REQUIRE(c);
    CHECK(!moeq_call_con_allows(c, "", 0));
    CHECK(feed(c, "{}}\n</tool_call>") && moeq_call_con_done(c) && allows(c, "<|im_end|>"));
    moeq_call_con_free(c);
    /* a refused feed ends the constraint instead of wedging it */
    c = moeq_call_con_new(Q, t, NULL);
    REQUIRE(c);
    CHECK(!feed(c, "hello") && moeq_call_con_done(c));
    moeq_call_con_free(c);
    json_decref(t);
}

TEST(call_constrain_coder)
{
    const int C = MOEQ_CALLS_QWEN3_CODER;
    CHECK(accepts(C, NULL, "<function=get_weather>\n<parameter=city>\nOslo\nin <b>Norway</b>\n</parameter>\n"
                           "<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>") == 2);
    CHECK(accepts(C, NULL, "<function=get_time>\n</function>\n</tool_call>") == 2);
    CHECK(accepts(C, NULL, "<function=get>\n<parameter=free name>\nx\n</parameter>\n</function>\n</tool_call>") == 2);
    CHECK(accepts(C, NULL, "<function=get_weathers>") == 0);
    CHECK(accepts(C, NULL, "<function=get_weather>\n<parameter=town>") == 0);
    CHECK(accepts(C, NULL, "<function=get_time>\n<parameter=") == 0);   /* declares none: no parameter */
    CHECK(accepts(C, NULL, "<function=get>\n<parameter=>") == 0);
    CHECK(accepts(C, "get_weather", "<parameter=city>\nOslo\n</parameter>\n</function>\n</tool_call>") == 2);
    CHECK(accepts(C, "get_weather", "</function>\n</tool_call>") == 2);
    CHECK(accepts(C, "get_weather", "<function=") == 0);
    CHECK(accepts(C, "get_weather", "<parameter=city>\nx\n</parameter>\n<parameter=city>") == 0);
    CHECK(accepts(C, "get_weather", "<parameter=city>\nx\n</parameter>\n<parameter=days>\n1\n</parameter>\n"
                                    "<parameter=opts>\n{}\n</parameter>\n<") == 1);
    CHECK(accepts(C, "get_weather", "<parameter=city>\nx\n</parameter>\n<parameter=days>\n1\n</parameter>\n"
                                    "<parameter=opts>\n{}\n</parameter>\n<p") == 0);
    CHECK(accepts(C, "get_weather", "<parameter=city>\nx</tool_call>") == 0);
    CHECK(accepts(C, "get_weather", "<parameter=city>\nx\x88") == 0);
    CHECK(accepts(C, "get", "<parameter=\xc3>") == 0);
}

/* A small vocabulary: every printable byte and newline, and longer pieces. */
static const char *const WORDS[] = {
    "{\"name\": ", "\"", "get", "_weather", "_time", "\", \"arguments\": ", "{\"", "city", "days", "opts",
    "\": ", ", ", "\"Oslo", "Oslo\"", " true", "null", "12", "-3.5", "e+2", "}}", "}\n", "</tool_call>",
    "<function=", "get_weather>\n", "<parameter=", "city>\n", "</parameter>", "\n</parameter>\n",
    "</function>\n</tool_call>", "</function>", "\\n", "\\u00e9", "[[", "]]", "  ", "\n  ", "hello world",
    "<tool_call>", "<|im_end|>", "abc>", "x<y",
};
/* Preferred when the walk should end: pieces that close what is open. */
static const char *const CLOSERS[] = {
    "</function>\n</tool_call>", "}}", "}\n", "</tool_call>", "}", "]", "\"", "</parameter>", "\n", ">",
};

static void walk(int format, const char *name, unsigned seed, int *closed)
{
    json_t *t = tools();
    moeq_call_con *c = moeq_call_con_new(format, t, name);
    REQUIRE(c);
    const char *vocab[200];
    int nv = 0;
    static char bytes[128][2];
    for (int b = 32; b < 127; b++) { bytes[b][0] = (char)b; bytes[b][1] = 0; vocab[nv++] = bytes[b]; }
    bytes[10][0] = '\n';
    bytes[10][1] = 0;
    vocab[nv++] = bytes[10];
    for (size_t i = 0; i < sizeof WORDS / sizeof *WORDS; i++) vocab[nv++] = WORDS[i];
    static char text[1 << 16];
    int n = 0;
    n += snprintf(text, sizeof text, "<tool_call>\n");
    if (name && format == MOEQ_CALLS_QWEN3) n += snprintf(text + n, sizeof text - (size_t)n, "{\"name\": \"%s\", \"arguments\": ", name);
    if (name && format == MOEQ_CALLS_QWEN3_CODER) n += snprintf(text + n, sizeof text - (size_t)n, "<function=%s>\n", name);
    uint64_t r = seed * 0x9E3779B97F4A7C15ull + 1;
    int steps = 0;
    while (!moeq_call_con_done(c) && steps < 3000) {
        const char *ok[200];
        int nok = 0;
        for (int i = 0; i < nv; i++) if (allows(c, vocab[i])) ok[nok++] = vocab[i];
        REQUIREF(nok > 0, "walk %u stuck after '%s'", seed, text);
        const char *pick = NULL;
        /* late in the walk, closers in a rotating order (so each gets its turn) */
        const size_t ncl = sizeof CLOSERS / sizeof *CLOSERS;
        if (steps > 60)
            for (size_t k = 0; !pick && k < ncl; k++)
                if (allows(c, CLOSERS[(k + (size_t)steps) % ncl])) pick = CLOSERS[(k + (size_t)steps) % ncl];
        r ^= r << 13; r ^= r >> 7; r ^= r << 17;
        if (!pick) pick = ok[r % (uint64_t)nok];
        size_t pl = strlen(pick);
        REQUIRE(n + (int)pl < (int)sizeof text - 1);
        CHECK(feed(c, pick));
        memcpy(text + n, pick, pl + 1);
        n += (int)pl;
        steps++;
    }
    CHECKF(moeq_call_con_done(c), "walk %u did not close: '%s'", seed, text);
    moeq_call_con_free(c);
    /* the reply parser reads one call to a listed function with declared arguments */
    moeq_chat_parser *p = moeq_chat_parser_new(format, 0, 0, t);
    struct moeq_chat_delta d;
    REQUIRE(p && moeq_chat_parser_feed(p, text, (size_t)n, &d) == 0 && moeq_chat_parser_finish(p, &d) == 0);
    int nc = 0;
    const struct moeq_tool_call *calls = moeq_chat_parser_calls(p, &nc);
    CHECKF(nc == 1 && moeq_chat_parser_malformed(p) == 0, "walk %u: %d calls from '%s'", seed, nc, text);
    if (nc == 1) {
        CHECKF(!strcmp(calls[0].name, "get_time") || !strcmp(calls[0].name, "get_weather") || !strcmp(calls[0].name, "get"),
               "walk %u: name %s", seed, calls[0].name);
        CHECK(!name || !strcmp(calls[0].name, name));
        json_error_t je;
        json_t *a = json_loads(calls[0].arguments, 0, &je);
        CHECKF(json_is_object(a), "walk %u: arguments %s", seed, calls[0].arguments);
        if (strcmp(calls[0].name, "get")) {
            const char *k;
            json_t *v;
            json_object_foreach(a, k, v)
                CHECKF(!strcmp(k, "city") || !strcmp(k, "days") || !strcmp(k, "opts"), "walk %u: key %s", seed, k);
        }
        json_decref(a);
        (*closed)++;
    }
    moeq_chat_parser_free(p);
    json_decref(t);
}

TEST(call_constrain_random_walks)
{
    const char *names[] = { NULL, "get_weather", "get" };
    for (int f = MOEQ_CALLS_QWEN3; f <= MOEQ_CALLS_QWEN3_CODER; f++)
        for (int k = 0; k < 3; k++) {
            int closed = 0;
            for (unsigned s = 1; s <= 250; s++) walk(f, names[k], s + 1000u * (unsigned)k, &closed);
            CHECKF(closed == 250, "format %d name %s: %d of 250 walks gave a call", f, names[k] ? names[k] : "-", closed);
        }
}
