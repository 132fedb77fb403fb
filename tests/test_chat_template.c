/*
 * test_chat_template.c: the Jinja-subset renderer (src/model/chat_template.c)
 * byte for byte against Python's jinja2 in Hugging Face's chat-template
 * environment (tests/chat/render.py): language snippets
 * (tests/chat/snippets.json) and the official Qwen3 and Qwen3-Coder
 * templates from ../shared over tests/chat/conversations.json (system or
 * not, several turns, tools, assistant tool calls, tool results, thinking
 * content, add_generation_prompt, enable_thinking false), and the
 * templates `moeq synth --chat-template` writes (which must also be the
 * official formats: same bytes wherever only the format matters). The comparisons
 * skip where python3's jinja2 is absent; the checks that need no reference
 * (errors at parse time, cases the renderer must refuse) always run.
 */
#include "test.h"
#include "model/chat_template.h"
#include "synth/synth.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

static int have_jinja2(void)
{
    return test_run(NULL, "python3 -c 'import jinja2, jinja2.ext, jinja2.sandbox' >/dev/null 2>&1") == 0;
}

/* Run the reference; its JSON list of {"ok": text} / {"error": msg}. */
static json_t *reference(const char *args)
{
    char *out = NULL;
    int rc = test_run(&out, "python3 tests/chat/render.py %s 2>/dev/null", args);
    json_error_t je;
    json_t *v = rc == 0 && out ? json_loads(out, 0, &je) : NULL;
    free(out);
    return v;
}

static void first_diff(const char *a, const char *b, char *msg, size_t n)
{
    size_t i = 0;
    while (a[i] && a[i] == b[i]) i++;
    size_t from = i > 30 ? i - 30 : 0;
    snprintf(msg, n, "differ at byte %zu: moeq '%.60s' / jinja2 '%.60s'", i, a + from, b + from);
}

/* Render one case and compare with the reference's result for it. */
static void compare_case(const char *what, int i, const char *src, size_t srclen, json_t *ctx, json_t *ref)
{
    char err[512];
    moeq_tmpl *t = moeq_tmpl_parse(src, srclen, err, sizeof err);
    json_t *ok = json_object_get(ref, "ok");
    if (!t) {
        CHECKF(0, "%s case %d: parse failed: %s", what, i, err);
        return;
    }
    size_t n = 0;
    char *out = moeq_tmpl_render(t, ctx, &n, err, sizeof err);
    if (!ok) {
        CHECKF(!out, "%s case %d: jinja2 fails (%s) but moeq rendered '%.80s'", what, i,
               json_string_value(json_object_get(ref, "error")), out ? out : "");
    } else if (!out) {
        CHECKF(0, "%s case %d: moeq failed: %s", what, i, err);
    } else {
        int same = n == json_string_length(ok) && !memcmp(out, json_string_value(ok), n);
        if (!same) {
            char msg[300];
            first_diff(out, json_string_value(ok), msg, sizeof msg);
            CHECKF(0, "%s case %d: %s", what, i, msg);
        }
    }
    free(out);
    moeq_tmpl_free(t);
}

TEST(chat_template_snippets_match_jinja2)
{
    if (!have_jinja2()) SKIP("python3 jinja2 not installed (Debian python3-jinja2)");
    json_t *ref = reference("--snippets tests/chat/snippets.json");
    REQUIRE(ref && json_is_array(ref));
    json_error_t je;
    json_t *cases = json_load_file("tests/chat/snippets.json", 0, &je);
    REQUIRE(cases && json_array_size(cases) == json_array_size(ref));
    for (size_t i = 0; i < json_array_size(cases); i++) {
        json_t *c = json_array_get(cases, i);
        json_t *t = json_object_get(c, "t");
        compare_case("snippet", (int)i, json_string_value(t), json_string_length(t), json_object_get(c, "c"),
                     json_array_get(ref, i));
    }
    printf("  %zu snippets compared\n", json_array_size(cases));
    json_decref(cases);
    json_decref(ref);
}

/* Every conversation of tests/chat/conversations.json rendered by moeq
 * from src (the template file at path) against jinja2 rendering path. */
static void compare_conversations(const char *what, const char *path, const char *src, size_t srclen)
{
    char args[4200];
    snprintf(args, sizeof args, "'%s' tests/chat/conversations.json", path);
    json_t *ref = reference(args);
    REQUIRE(ref && json_is_array(ref));
    json_error_t je;
    json_t *convs = json_load_file("tests/chat/conversations.json", 0, &je);
    REQUIRE(convs && json_array_size(convs) == json_array_size(ref));
    for (size_t i = 0; i < json_array_size(convs); i++)
        compare_case(what, (int)i, src, srclen, json_array_get(convs, i), json_array_get(ref, i));
    printf("  %s: %zu conversations compared\n", what, json_array_size(convs));
    json_decref(convs);
    json_decref(ref);
}

static void compare_template(const char *rel)
{
    const char *path = test_shared_path(rel);
    if (!have_jinja2()) SKIP("python3 jinja2 not installed (Debian python3-jinja2)");
    size_t srclen = 0;
    char *src = test_read_file(path, &srclen);
    REQUIRE(src);
    compare_conversations(rel, path, src, srclen);
    free(src);
}

TEST(chat_template_qwen3_matches_jinja2) { compare_template("data/tokenizer/Qwen-Qwen3-0.6B.jinja"); }
TEST(chat_template_qwen3_coder_matches_jinja2) { compare_template("data/tokenizer/Qwen-Qwen3-Coder-30B-A3B.jinja"); }

/* A built-in synth template written where render.py can read it. */
static const char *synth_template_file(const char *name)
{
    const char *text = moeq_synth_template_named(name);
    REQUIRE(text);
    const char *path = test_tmp(name);
    FILE *f = fopen(path, "wb");
    REQUIRE(f);
    REQUIRE(fwrite(text, 1, strlen(text), f) == strlen(text));
    REQUIRE(fclose(f) == 0);
    return path;
}

/* The templates moeq synth writes into models render as jinja2 does. */
TEST(chat_template_synth_templates_match_jinja2)
{
    if (!have_jinja2()) SKIP("python3 jinja2 not installed (Debian python3-jinja2)");
    int n;
    const struct moeq_synth_template *t = moeq_synth_templates(&n);
    CHECK(n >= 4);
    for (int i = 0; i < n; i++) {
        const char *path = synth_template_file(t[i].name);
        compare_conversations(t[i].name, path, t[i].text, strlen(t[i].text));
    }
}

/* moeq's qwen3 and qwen3-coder templates are the official formats: every
 * conversation renders to the official template's bytes, except that with
 * tools only the wording of the system turn's tool instructions differs
 * (the turns after it, and the tool signatures, are the same). */
static void same_format_as(const char *name, const char *rel)
{
    const char *official = test_shared_path(rel);
    if (!have_jinja2()) SKIP("python3 jinja2 not installed (Debian python3-jinja2)");
    char args[4200];
    snprintf(args, sizeof args, "'%s' tests/chat/conversations.json", synth_template_file(name));
    json_t *mine = reference(args);
    snprintf(args, sizeof args, "'%s' tests/chat/conversations.json", official);
    json_t *ref = reference(args);
    json_error_t je;
    json_t *convs = json_load_file("tests/chat/conversations.json", 0, &je);
    REQUIRE(mine && ref && convs && json_array_size(mine) == json_array_size(ref));
    int with_tools = 0;
    for (size_t i = 0; i < json_array_size(ref); i++) {
        const char *a = json_string_value(json_object_get(json_array_get(mine, i), "ok"));
        const char *b = json_string_value(json_object_get(json_array_get(ref, i), "ok"));
        CHECKF(!a == !b, "%s case %zu: one template fails and the other renders", name, i);
        if (!a || !b) continue;
        json_t *tools = json_object_get(json_array_get(convs, i), "tools");
        if (json_array_size(tools) == 0) {
            CHECKF(!strcmp(a, b), "%s case %zu: differs from %s without tools", name, i, rel);
            continue;
        }
        with_tools++;
        const char *ea = strstr(a, "<|im_end|>\n"), *eb = strstr(b, "<|im_end|>\n");
        CHECKF(ea && eb && !strcmp(ea, eb), "%s case %zu: turns after the tool system turn differ", name, i);
    }
    CHECK(with_tools >= 2);
    json_decref(mine);
    json_decref(ref);
    json_decref(convs);
}

TEST(chat_template_synth_qwen3_is_the_official_format)
{
    same_format_as("qwen3", "data/tokenizer/Qwen-Qwen3-0.6B.jinja");
}

TEST(chat_template_synth_qwen3_coder_is_the_official_format)
{
    same_format_as("qwen3-coder", "data/tokenizer/Qwen-Qwen3-Coder-30B-A3B.jinja");
}

TEST(chat_template_unsupported_is_a_parse_error)
{
    static const char *const bad[][2] = {
        { "{% include 'x.jinja' %}", "unsupported statement 'include'" },
        { "{{ x | wordwrap }}", "unsupported filter 'wordwrap'" },
        { "{% if x is prime %}{% endif %}", "unsupported test 'prime'" },
        { "a\n{% for x in y %}", "line 2: 'for' without 'endfor'" },
        { "{{ 'open }}", "unclosed {{ tag" },
        { "{% if %}{% endif %}", "unexpected" },
        { "x {{ y", "unclosed {{ tag" },
        { "{% endif %}", "unexpected 'endif'" },
        { "{% for a in b %}{% endif %}", "unexpected 'endif'" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char err[256] = "";
        moeq_tmpl *t = moeq_tmpl_parse(bad[i][0], strlen(bad[i][0]), err, sizeof err);
        CHECKF(!t, "'%s' parsed", bad[i][0]);
        CHECKF(strstr(err, bad[i][1]), "'%s': error '%s', want '%s'", bad[i][0], err, bad[i][1]);
        moeq_tmpl_free(t);
    }
}

TEST(chat_template_render_errors_and_caller_values_untouched)
{
    const char *src = "{% set l = x %}{% set _ = l.append(3) %}{{ l | length }}{{ raise_exception('no ' ~ y) }}";
    char err[256];
    moeq_tmpl *t = moeq_tmpl_parse(src, strlen(src), err, sizeof err);
    REQUIRE(t);
    json_t *ctx = json_pack("{s[ii]ss}", "x", 1, 2, "y", "way");
    char *out = moeq_tmpl_render(t, ctx, NULL, err, sizeof err);
    CHECK(!out);
    CHECKF(strstr(err, "no way"), "error: %s", err);
    CHECKF(json_array_size(json_object_get(ctx, "x")) == 2, "the caller's list was changed");
    json_decref(ctx);
    moeq_tmpl_free(t);
}
