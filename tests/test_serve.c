/*
 * test_serve.c: `moeq serve` end to end, over real HTTP on loopback.
 *
 * Each test starts the binary under test (MOEQ_BIN) on a free port with a
 * tiny model (a `moeq synth` model when that command exists, else
 * ../shared/models/tiny-a/tiny-a-q8_0.gguf, skipping when neither is
 * there), talks to it with curl (and with the official `openai` Node.js
 * client when node and the package are available), and stops it with
 * SIGTERM, which must end it with status 0. The server gets
 * PR_SET_PDEATHSIG, so a test that dies early does not leave it running.
 */
#include "test.h"
#include "gguf/gguf.h"
#include "model/tokenizer.h"
#include "util/util.h"

#include <arpa/inet.h>
#include <jansson.h>
#include <netinet/in.h>
#include <signal.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int http(struct test_srv *s, const char *method, const char *path, const char *body, const char *extra, char **out)
{
    return test_http(s->port, method, path, body, extra, 120, out);
}

/* The text of a JSON completion response (chat or completions). */
static char *response_text(const char *body)
{
    json_t *j = json_loads(body ? body : "", 0, NULL);
    json_t *c = json_array_get(json_object_get(j, "choices"), 0);
    json_t *t = json_object_get(c, "text");
    if (!t) t = json_object_get(json_object_get(c, "message"), "content");
    char *r = json_is_string(t) ? strdup(json_string_value(t)) : NULL;
    json_decref(j);
    return r;
}

static long long metric(struct test_srv *s, const char *name, const char *auth)
{
    return (long long)test_http_metric(s->port, name, auth);
}

static double metric_f(struct test_srv *s, const char *name, const char *auth)
{
    return test_http_metric(s->port, name, auth);
}

/* ====================================================================== */

TEST(serve_e2e_endpoints_and_bad_input)
{
    if (!test_have_curl()) SKIP("curl is absent");
    const char *model = test_tiny_model();
    struct test_srv s;
    test_serve_start(&s, model, "-c 256 -np 2 --api-key k3y --max-body 65536 --timeout 30 --alias tiny");
    const char *auth = "-H 'Authorization: Bearer k3y'";
    char *o;

    /* Auth: /health is open, the rest needs the key. */
    CHECK(http(&s, "GET", "/health", NULL, NULL, &o) == 200 && strstr(o, "ok"));
    free(o);
    CHECK(http(&s, "GET", "/v1/models", NULL, NULL, &o) == 401);
    free(o);
    CHECK(http(&s, "POST", "/v1/chat/completions", "{}", "-H 'Authorization: Bearer nope'", &o) == 401);
    free(o);
    CHECK(http(&s, "GET", "/v1/models", NULL, auth, &o) == 200 && strstr(o, "\"id\":\"tiny\""));
    free(o);

    /* tokenize -> detokenize is the identity on plain text. */
    CHECK(http(&s, "POST", "/tokenize", "{\"content\":\"Hello world, again.\"}", auth, &o) == 200);
    json_t *j = json_loads(o, 0, NULL);
    json_t *toks = json_object_get(j, "tokens");
    CHECK(json_array_size(toks) > 0);
    char *tb = json_dumps(json_pack("{s:O}", "tokens", toks), JSON_COMPACT);
    json_decref(j);
    free(o);
    CHECK(http(&s, "POST", "/detokenize", tb, auth, &o) == 200 && strstr(o, "\"content\":\"Hello world, again.\""));
    free(o);
    free(tb);

    /* Chat: plain and streamed answers agree (greedy). */
    const char *chat = "{\"messages\":[{\"role\":\"system\",\"content\":\"Be brief.\"},{\"role\":\"user\",\"content\":\"Hello\"}],"
                       "\"max_tokens\":16,\"temperature\":0%s}";
    char body[1024];
    snprintf(body, sizeof body, chat, "");
    CHECK(http(&s, "POST", "/v1/chat/completions", body, auth, &o) == 200);
    char *plain = response_text(o);
    REQUIREF(plain, "no text in %s", o);
    j = json_loads(o, 0, NULL);
    json_t *u = json_object_get(j, "usage");
    CHECK(json_integer_value(json_object_get(u, "completion_tokens")) > 0);
    CHECK(json_integer_value(json_object_get(u, "total_tokens")) ==
          json_integer_value(json_object_get(u, "prompt_tokens")) + json_integer_value(json_object_get(u, "completion_tokens")));
    const char *fin = json_string_value(json_object_get(json_array_get(json_object_get(j, "choices"), 0), "finish_reason"));
    CHECK(fin && (!strcmp(fin, "stop") || !strcmp(fin, "length")));
    json_decref(j);
    free(o);
    snprintf(body, sizeof body, chat, ",\"stream\":true,\"stream_options\":{\"include_usage\":true}");
    CHECK(http(&s, "POST", "/v1/chat/completions", body, auth, &o) == 200);
    int done;
    char *streamed = test_sse_text(o, &done);
    CHECKF(!strcmp(streamed, plain), "streamed '%s' vs plain '%s'", streamed, plain);
    CHECK(done && strstr(o, "\"usage\":{"));
    free(streamed);
    free(o);
    /* The second turn of that conversation reuses its cached prefix. */
    CHECK(metric(&s, "moeq_prompt_tokens_cached_total", auth) > 0);
    free(plain);

    /* Sampling with a seed is reproducible. */
    const char *seeded = "{\"prompt\":\"Seeds\",\"max_tokens\":12,\"temperature\":1.5,\"top_k\":0,\"top_p\":1,"
                         "\"min_p\":0,\"seed\":77,\"ignore_eos\":true}";
    char *o1 = NULL, *o2 = NULL;
    CHECK(http(&s, "POST", "/v1/completions", seeded, auth, &o1) == 200);
    CHECK(http(&s, "POST", "/v1/completions", seeded, auth, &o2) == 200);
    char *t1 = response_text(o1), *t2 = response_text(o2);
    CHECKF(t1 && t2 && strlen(t1) > 0 && !strcmp(t1, t2), "seeded: '%s' vs '%s'", t1 ? t1 : "", t2 ? t2 : "");
    free(t1); free(t2); free(o1); free(o2);

    /* Completions with a stop string taken from the greedy output: the
     * text ends right before its first occurrence, finish "stop". */
    CHECK(http(&s, "POST", "/v1/completions", "{\"prompt\":\"Once upon a time\",\"max_tokens\":24,\"temperature\":0,"
               "\"ignore_eos\":true}", auth, &o) == 200);
    char *full = response_text(o);
    free(o);
    REQUIRE(full);
    size_t fl = strlen(full);
    /* A stop string of two printable ASCII characters from the second
     * half (a tiny model's text may hold anything else). */
    size_t at = fl / 2;
    while (at + 1 < fl && !(full[at] > ' ' && full[at] < 127 && full[at + 1] > ' ' && full[at + 1] < 127)) at++;
    REQUIREF(at + 1 < fl, "no ASCII pair in '%s'", full);
    {
        char stop[3] = { full[at], full[at + 1], 0 };
        char *first = strstr(full, stop);
        json_t *req = json_pack("{s:s,s:i,s:i,s:b,s:[s]}", "prompt", "Once upon a time", "max_tokens", 24, "temperature", 0,
                                "ignore_eos", 1, "stop", stop);
        char *rb = json_dumps(req, JSON_COMPACT);
        json_decref(req);
        CHECK(http(&s, "POST", "/v1/completions", rb, auth, &o) == 200);
        char *cut = response_text(o);
        CHECKF(cut && strlen(cut) == (size_t)(first - full) && !strncmp(cut, full, strlen(cut)),
               "stop '%s': '%s' from '%s'", stop, cut ? cut : "", full);
        CHECK(strstr(o, "\"finish_reason\":\"stop\""));
        free(cut);
        free(o);
        free(rb);
    }
    free(full);

    /* Every bad input is a 4xx with a message, and the server goes on. */
    test_http_bad_requests(s.port, test_bad_requests_common, test_n_bad_requests_common, auth, 120);
    /* A prompt longer than the context (256 here), a body over --max-body
     * (64 KiB). */
    test_http_too_big(s.port, 20000, 70000, auth, 120);
    CHECK(http(&s, "POST", "/v1/completions", "{\"prompt\":\"Still there?\",\"max_tokens\":2}", auth, &o) == 200);
    free(o);
    CHECK(metric(&s, "moeq_requests_processing", auth) == 0);
    CHECK(test_serve_stop(&s) == 0);
}

/* N streaming clients at once get exactly what each gets alone, and the
 * server batched them. */
TEST(serve_e2e_concurrent_streams)
{
    if (!test_have_curl()) SKIP("curl is absent");
    const char *model = test_tiny_model();
    struct test_srv s;
    test_serve_start(&s, model, "-c 512 -np 4");
    enum { N = 4 };
    static const char *prompts[N] = { "The river", "In 1999 the", "Music is", "A small dog" };
    char *alone[N];
    for (int i = 0; i < N; i++) {
        char body[256], *o;
        snprintf(body, sizeof body, "{\"prompt\":\"%s\",\"max_tokens\":32,\"temperature\":0,\"stream\":true}", prompts[i]);
        CHECK(http(&s, "POST", "/v1/completions", body, NULL, &o) == 200);
        int done;
        alone[i] = test_sse_text(o, &done);
        CHECK(done);
        free(o);
    }
    char bodies[N][256], *outs[N];
    const char *bp[N];
    for (int i = 0; i < N; i++) {
        snprintf(bodies[i], sizeof bodies[i],
                 "{\"prompt\":\"%s\",\"max_tokens\":32,\"temperature\":0,\"stream\":true}", prompts[i]);
        bp[i] = bodies[i];
    }
    CHECK(test_http_concurrent(s.port, "/v1/completions", bp, N, 120, outs) == 0);
    for (int i = 0; i < N; i++) {
        char *got = outs[i];
        int done;
        char *t = test_sse_text(got, &done);
        CHECKF(done && strlen(alone[i]) > 0 && !strcmp(t, alone[i]), "client %d: alone '%s' together '%s'", i, alone[i], t);
        free(t);
        free(got);
        free(alone[i]);
    }
    double mean = metric_f(&s, "moeq_decode_batch_mean", NULL);
    CHECKF(mean > 1.0, "mean decode batch %.3f", mean);
    CHECK(test_serve_stop(&s) == 0);
}

/* A client that goes away mid-stream frees its slot; SIGTERM with a stream
 * running ends the stream and exits 0. */
TEST(serve_e2e_disconnect_and_sigterm)
{
    if (!test_have_curl()) SKIP("curl is absent");
    const char *model = test_tiny_model();
    struct test_srv s;
    test_serve_start(&s, model, "-c 2048 -np 1 --timeout 20");
    const char *body = "{\"prompt\":\"Tell me a long story.\",\"max_tokens\":2000,\"temperature\":0,\"stream\":true,\"ignore_eos\":true}";
    FILE *fp = fopen(test_tmp("long.json"), "w");
    fputs(body, fp);
    fclose(fp);
    /* The client leaves once the stream is generating, long before 2000
     * tokens; the slot is then freed. */
    test_run(NULL, "curl -sS -N --data-binary @%s http://127.0.0.1:%d/v1/completions >/dev/null 2>&1 & echo $! > %s",
             test_tmp("long.json"), s.port, test_tmp("curl.pid"));
    size_t n;
    char *pid = test_read_file(test_tmp("curl.pid"), &n);
    REQUIRE(pid && atoi(pid) > 0);
    test_wait_metric(s.port, "moeq_requests_processing", 1, NULL);
    kill(atoi(pid), SIGKILL);
    free(pid);
    test_wait_metric(s.port, "moeq_requests_processing", 0, NULL);
    long long gen = metric(&s, "moeq_generated_tokens_total", NULL);
    /* The slot is usable again, and the tokens generated since are this
     * request's only: nothing went on for the client that left. */
    char *o;
    CHECK(http(&s, "POST", "/v1/completions", "{\"prompt\":\"Hi\",\"max_tokens\":3}", NULL, &o) == 200);
    json_t *j = o ? json_loads(o, 0, NULL) : NULL;
    long long used = j ? (long long)json_integer_value(json_object_get(json_object_get(j, "usage"), "completion_tokens")) : -1;
    json_decref(j);
    free(o);
    CHECKF(used > 0 && metric(&s, "moeq_generated_tokens_total", NULL) == gen + used,
           "still generating after the client left (%lld + %lld)", gen, used);

    /* SIGTERM while a stream runs: the stream ends, the server exits 0 by
     * itself (server_stop kills it only when it has not). */
    test_run(NULL, "(curl -sS -N -m 60 --data-binary @%s http://127.0.0.1:%d/v1/completions > %s 2>&1; "
                   "touch %s) >/dev/null 2>&1 &", test_tmp("long.json"), s.port, test_tmp("sig.txt"), test_tmp("sig.done"));
    test_wait_metric(s.port, "moeq_requests_processing", 1, NULL);
    CHECK(test_serve_stop(&s) == 0);
    while (access(test_tmp("sig.done"), F_OK) != 0) usleep(10000);   /* curl has finished */
    char *got = test_read_file(test_tmp("sig.txt"), &n);
    CHECKF(got && (strstr(got, "shutting down") || strstr(got, "[DONE]")), "%s", got ? got : "(none)");
    free(got);
}

/* A client that stops reading a stream is cut after --timeout once the
 * server's writes block, and its generation is cancelled. */
TEST(serve_e2e_slow_reader_times_out)
{
    if (!test_have_curl()) SKIP("curl is absent");
    const char *model = test_tiny_model();
    struct test_srv s;
    test_serve_start(&s, model, "-c 8192 -np 1 --timeout 2");
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int small = 4096;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)s.port) };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(connect(fd, (struct sockaddr *)&a, sizeof a) == 0);
    const char *body = "{\"prompt\":\"x\",\"max_tokens\":8000,\"stream\":true,\"ignore_eos\":true,\"temperature\":0}";
    char req[512];
    snprintf(req, sizeof req, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %zu\r\n\r\n%s", strlen(body), body);
    REQUIRE(write(fd, req, strlen(req)) == (ssize_t)strlen(req));
    /* Never read. */
    test_wait_metric(s.port, "moeq_requests_cancelled_total", 1, NULL);
    test_wait_metric(s.port, "moeq_requests_processing", 0, NULL);
    CHECKF(metric(&s, "moeq_generated_tokens_total", NULL) < 8000, "generated %lld", metric(&s, "moeq_generated_tokens_total", NULL));
    close(fd);
    CHECK(test_serve_stop(&s) == 0);
}

TEST(serve_e2e_usage_errors)
{
    char *o;
    CHECK(test_run(&o, "%s serve", test_moeq_bin()) == 2);
    free(o);
    CHECK(test_run(&o, "%s serve -m x.gguf --port 99999", test_moeq_bin()) == 2);
    free(o);
    CHECK(test_run(&o, "%s serve -m x.gguf -ctk q4_0", test_moeq_bin()) == 2);
    free(o);
    CHECK(test_run(&o, "%s serve -m x.gguf --reasoning-format r1", test_moeq_bin()) == 2 && strstr(o, "deepseek or none"));
    free(o);
    CHECK(test_run(&o, "%s serve --help", test_moeq_bin()) == 0 && strstr(o, "--api-key"));
    free(o);
    /* A missing model: listening first, then a one-line error and exit 1. */
    CHECK(test_run(&o, "%s serve -m %s --port 0", test_moeq_bin(), test_tmp("absent.gguf")) == 1);
    CHECKF(o && strstr(o, "moeq: serve: ") && strstr(o, "absent.gguf"), "%s", o ? o : "");
    free(o);
    /* Not an address. */
    CHECK(test_run(&o, "%s serve -m x.gguf --host example.com", test_moeq_bin()) == 1);
    CHECK(o && strstr(o, "numeric"));
    free(o);
}

static const char serve_tools[] =
    "[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"description\":\"Weather now\","
    "\"parameters\":{\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\"}},"
    "\"required\":[\"city\"]}}}]";

/* A synth model carrying an official template from ../shared, served. */
static const char *serve_with_template(struct test_srv *s, const char *jinja, const char *name)
{
    const char *tmpl = test_shared_path(jinja);
    char args[4200];
    snprintf(args, sizeof args, "--preset tiny --chat-template %s", tmpl);
    const char *model = test_synth_model(name, args);
    test_serve_start(s, model, "-c 2048 -np 1");
    return model;
}

/* /apply-template for a conversation with tools, a call (arguments as a
 * JSON string), its result and enable_thinking false equals the library's
 * rendering of the same context (arguments as an object); that text,
 * malloc'd, for template-specific checks. */
static char *apply_template_matches(struct test_srv *s, const char *model)
{
    char body[4096], *o;
    snprintf(body, sizeof body,
             "{\"messages\":[{\"role\":\"system\",\"content\":\"Be brief.\"},{\"role\":\"user\",\"content\":\"Paris?\"},"
             "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"call_7\",\"type\":\"function\","
             "\"function\":{\"name\":\"get_weather\",\"arguments\":\"{\\\"city\\\": \\\"Paris\\\"}\"}}]},"
             "{\"role\":\"tool\",\"tool_call_id\":\"call_7\",\"content\":\"18C, sunny\"}],"
             "\"tools\":%s,\"chat_template_kwargs\":{\"enable_thinking\":false}}", serve_tools);
    CHECK(http(s, "POST", "/apply-template", body, NULL, &o) == 200);
    json_t *j = json_loads(o ? o : "", 0, NULL);
    const char *got = json_string_value(json_object_get(j, "prompt"));
    REQUIREF(got, "%s", o ? o : "");
    char err[512];
    gguf_file *f = gguf_open(model, err, sizeof err);
    REQUIREF(f, "%s", err);
    moeq_tokenizer *tk = moeq_tokenizer_load(f, err, sizeof err);
    gguf_close(f);
    REQUIREF(tk, "%s", err);
    json_t *ctx = json_pack("{s:[{s:s,s:s},{s:s,s:s},{s:s,s:s,s:[{s:s,s:s,s:{s:s,s:{s:s}}}]},{s:s,s:s,s:s}],s:o,s:b,s:b}",
                            "messages", "role", "system", "content", "Be brief.", "role", "user", "content", "Paris?",
                            "role", "assistant", "content", "", "tool_calls", "type", "function", "id", "call_7",
                            "function", "name", "get_weather", "arguments", "city", "Paris",
                            "role", "tool", "content", "18C, sunny", "tool_call_id", "call_7",
                            "tools", json_loads(serve_tools, 0, NULL), "add_generation_prompt", 1, "enable_thinking", 0);
    REQUIRE(ctx);
    char *want = moeq_tokenizer_chat_render_json(tk, ctx, err, sizeof err);
    REQUIREF(want, "%s", err);
    CHECKF(!strcmp(got, want), "apply-template:\n%s\nlibrary:\n%s", got, want);
    json_decref(ctx);
    json_decref(j);
    free(o);
    moeq_tokenizer_free(tk);
    return want;
}

/* A synth model carrying the official Qwen3 template: /apply-template
 * gives exactly what the library renders, and a tool round trip
 * (tool_choice naming the function, then the result sent back) is
 * answered; logit_bias changes what the engine samples. */
TEST(serve_e2e_tools_and_apply_template)
{
    if (!test_have_curl()) SKIP("curl is absent");
    struct test_srv s;
    const char *model = serve_with_template(&s, "data/tokenizer/Qwen-Qwen3-0.6B.jinja", "qwen3-tmpl.gguf");
    const char *tools = serve_tools;
    char body[4096], *o;
    json_t *j;
    char *want = apply_template_matches(&s, model);
    CHECK(strstr(want, "<tool_response>\n18C, sunny\n</tool_response>") && strstr(want, "\"name\": \"get_weather\""));
    CHECK(strstr(want, "<tools>") && strstr(want, "<think>\n\n</think>\n\n"));
    free(want);

    /* Turn 1: the tool is forced, and decoding is constrained to a call in
     * the template's syntax: unless the reply ran out of tokens inside it
     * (random weights may write a long string), it is a parsed call. */
    snprintf(body, sizeof body,
             "{\"messages\":[{\"role\":\"user\",\"content\":\"Paris?\"}],\"tools\":%s,\"max_tokens\":64,\"temperature\":0,"
             "\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"get_weather\"}}}", tools);
    CHECK(http(&s, "POST", "/v1/chat/completions", body, NULL, &o) == 200);
    j = json_loads(o ? o : "", 0, NULL);
    json_t *ch = json_array_get(json_object_get(j, "choices"), 0), *m = json_object_get(ch, "message");
    const char *fin = json_string_value(json_object_get(ch, "finish_reason"));
    json_t *calls = json_object_get(m, "tool_calls");
    if (!fin || strcmp(fin, "length")) {
        CHECKF(calls && fin && !strcmp(fin, "tool_calls"), "%s", o);
        json_t *fn = json_object_get(json_array_get(calls, 0), "function");
        CHECK(!strcmp(json_string_value(json_object_get(fn, "name")), "get_weather"));
        json_t *args = json_loads(json_string_value(json_object_get(fn, "arguments")), 0, NULL);
        CHECKF(json_is_object(args) && (json_object_size(args) == 0 || json_object_get(args, "city")), "%s", o);
        json_decref(args);
    }
    long long p1 = json_integer_value(json_object_get(json_object_get(j, "usage"), "prompt_tokens"));
    json_decref(j);
    free(o);
    /* Turn 2: the call and its result go back; the reply is answered. */
    snprintf(body, sizeof body,
             "{\"messages\":[{\"role\":\"user\",\"content\":\"Paris?\"},{\"role\":\"assistant\",\"content\":\"\","
             "\"tool_calls\":[{\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\","
             "\"arguments\":\"{\\\"city\\\":\\\"Paris\\\"}\"}}]},{\"role\":\"tool\",\"tool_call_id\":\"call_1\","
             "\"content\":\"18C\"}],\"tools\":%s,\"max_tokens\":8,\"temperature\":0,\"stream\":true}", tools);
    CHECK(http(&s, "POST", "/v1/chat/completions", body, NULL, &o) == 200);
    int done = 0;
    char *t = test_sse_text(o, &done);
    CHECKF(done && !strstr(o, "\"error\""), "%s", o ? o : "");
    free(t);
    free(o);
    CHECK(p1 > 0);

    /* logit_bias: ban the tokens of the greedy first piece; it changes. */
    const char *c1 = "{\"prompt\":\"Once upon\",\"max_tokens\":1,\"temperature\":0,\"ignore_eos\":true%s}";
    snprintf(body, sizeof body, c1, "");
    CHECK(http(&s, "POST", "/v1/completions", body, NULL, &o) == 200);
    char *first = response_text(o);
    free(o);
    REQUIRE(first && *first);
    json_t *tk_req = json_pack("{s:s}", "content", first);
    char *tb = json_dumps(tk_req, JSON_COMPACT);
    json_decref(tk_req);
    CHECK(http(&s, "POST", "/tokenize", tb, NULL, &o) == 200);
    free(tb);
    j = json_loads(o ? o : "", 0, NULL);
    free(o);
    json_t *bias = json_object();
    size_t i;
    json_t *v;
    json_array_foreach(json_object_get(j, "tokens"), i, v) {
        char key[32];
        snprintf(key, sizeof key, "%lld", (long long)json_integer_value(v));
        json_object_set_new(bias, key, json_false());
    }
    json_decref(j);
    char *bj = json_dumps(bias, JSON_COMPACT);
    json_decref(bias);
    char extra[2048];
    snprintf(extra, sizeof extra, ",\"logit_bias\":%s", bj);
    free(bj);
    snprintf(body, sizeof body, c1, extra);
    CHECK(http(&s, "POST", "/v1/completions", body, NULL, &o) == 200);
    char *second = response_text(o);
    CHECKF(second && strcmp(first, second) != 0, "banned '%s' came back: %s", first, o ? o : "");
    free(second);
    free(first);
    free(o);
    CHECK(test_serve_stop(&s) == 0);
}

/* The same with Qwen3-Coder's template: its XML-like calls, and a named
 * tool_choice prefilled in its syntax. */
TEST(serve_e2e_coder_template)
{
    if (!test_have_curl()) SKIP("curl is absent");
    struct test_srv s;
    const char *model = serve_with_template(&s, "data/tokenizer/Qwen-Qwen3-Coder-30B-A3B.jinja", "coder-tmpl.gguf");
    char *want = apply_template_matches(&s, model);
    CHECKF(strstr(want, "<function=get_weather>\n<parameter=city>\nParis\n</parameter>"), "%s", want);
    free(want);
    char body[2048], *o;
    snprintf(body, sizeof body, "{\"messages\":[{\"role\":\"user\",\"content\":\"Paris?\"}],\"tools\":%s,"
             "\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"get_weather\"}}}", serve_tools);
    CHECK(http(&s, "POST", "/apply-template", body, NULL, &o) == 200);
    json_t *j = json_loads(o ? o : "", 0, NULL);
    const char *p = json_string_value(json_object_get(j, "prompt"));
    const char *tail = "<|im_start|>assistant\n<tool_call>\n<function=get_weather>\n";
    CHECKF(p && strlen(p) > strlen(tail) && !strcmp(p + strlen(p) - strlen(tail), tail), "%s", o ? o : "");
    json_decref(j);
    free(o);
    /* "required" is decoded under the constraint: a call in Coder's syntax
     * (a declared parameter or none), unless the tokens ran out inside it */
    snprintf(body, sizeof body, "{\"messages\":[{\"role\":\"user\",\"content\":\"Paris?\"}],\"tools\":%s,"
             "\"tool_choice\":\"required\",\"max_tokens\":64,\"temperature\":0}", serve_tools);
    CHECK(http(&s, "POST", "/v1/chat/completions", body, NULL, &o) == 200);
    j = json_loads(o ? o : "", 0, NULL);
    json_t *ch = json_array_get(json_object_get(j, "choices"), 0);
    const char *fin = json_string_value(json_object_get(ch, "finish_reason"));
    json_t *fn = json_object_get(json_array_get(json_object_get(json_object_get(ch, "message"), "tool_calls"), 0), "function");
    if (!fin || strcmp(fin, "length")) {
        json_t *args = json_loads(json_string_value(json_object_get(fn, "arguments")) ? json_string_value(json_object_get(fn, "arguments")) : "", 0, NULL);
        CHECKF(fin && !strcmp(fin, "tool_calls") && !strcmp(json_string_value(json_object_get(fn, "name")), "get_weather") &&
               json_is_object(args) && (json_object_size(args) == 0 || json_object_get(args, "city")), "%s", o);
        json_decref(args);
    }
    json_decref(j);
    free(o);
    CHECK(test_serve_stop(&s) == 0);
}

/* The official OpenAI Node.js client. It is installed once into
 * build/npm (ignored by git); without node or the registry, skip. */
TEST(serve_e2e_openai_node_client)
{
    const char *mod = test_npm_package("openai", "tests/serve_openai.mjs");
    const char *model = test_tiny_model();
    struct test_srv s;
    test_serve_start(&s, model, "-c 512 -np 2 --api-key node-key");
    char *o;
    int rc = test_run(&o, "OPENAI_MODULE=%s timeout 120 node tests/serve_openai.mjs http://127.0.0.1:%d node-key",
                      mod, s.port);
    CHECKF(rc == 0 && o && strstr(o, "openai-client: ok"), "node: %d %s", rc, o ? o : "");
    free(o);
    CHECK(test_serve_stop(&s) == 0);
}
