/*
 * test_server.c: the server without a model. A fake backend stands in for
 * the engine: its vocabulary is the 256 bytes plus an end token, and its
 * "model" picks the next token from a hash of the whole token history, so
 * a token routed to the wrong session, or a KV prefix reused wrongly,
 * changes the output. Prompts starting with '#' switch it to a predictable
 * mode (each letter is followed by the next one, 'z' by the end token) for
 * the stop-string and finish-reason tests; '~' is the same alphabet
 * without an end, for requests that must run long. With a script set, the
 * reply after the prompt's last "assistant:" is that text, so chat replies
 * with reasoning and tool calls can be played without a model.
 *
 * Covered here: request validation, JSON and SSE shapes, stop strings
 * across token boundaries and UTF-8 hold-back, the scheduler (batching,
 * equality with one-at-a-time runs, prefix reuse, queue limit, cancel),
 * the chat context (tools, tool calls and results, tool_choice prefill,
 * chat_template_kwargs), replies read into content, reasoning and tool
 * calls whole and split at every byte (malformed and parallel calls,
 * Coder syntax), penalties and logit_bias, and the HTTP layer over real
 * loopback sockets with curl (every endpoint, auth, bad input, body limit,
 * disconnect mid-stream, slow clients, streamed tool calls).
 */
#include "test.h"
#include "server/server.h"
#include "model/chat_parse.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* ======================================================================
 * The fake backend
 * ====================================================================== */

#define FK_VOCAB 258
#define FK_EOS   256
#define FK_BOS   257
#define FK_CTX   256
#define FK_CTX_LONG 2048           /* for the client conversations (struct fake.long_ctx) */

struct fake;

struct fake_sess {
    struct fake *f;
    int32_t  toks[FK_CTX_LONG];
    uint64_t hash[FK_CTX_LONG + 1]; /* hash[i]: hash of toks[0..i) */
    int      n;
    float    logits[FK_VOCAB];
    int      valid;
};

struct fake {
    int         delay_us;          /* per decode step / eval call */
    atomic_int  max_batch, n_decode, n_sessions;
    atomic_llong evaluated;        /* prompt tokens evaluated */
    const char *script;            /* set: the reply after "assistant:" is this text, then the end */
    const char *after_tool[3];     /* the reply to a prompt holding k+1 tool results, if set */
    atomic_int  bad_hist;          /* sample calls whose history was not the session's tokens */
    int         long_ctx;          /* sessions hold FK_CTX_LONG tokens, not FK_CTX */
    const char *prefer;            /* where the script has ended: these bytes rank next after
                                      the end, first best (a model that would rather stop) */
};

static int fk_tokenize(void *ud, const char *text, size_t len, int parse_special, int32_t *out, int max)
{
    (void)ud; (void)parse_special;
    for (size_t i = 0; i < len && (int)i < max; i++) out[i] = (unsigned char)text[i];
    return (int)len;
}

static int fk_piece(void *ud, int32_t tok, char *buf, int cap)
{
    (void)ud;
    if (tok < 0 || tok >= FK_VOCAB) return -1;
    if (tok >= 256) return 0;
    if (cap < 1) return 1;
    buf[0] = (char)tok;
    return 1;
}

static int fk_is_eog(void *ud, int32_t tok) { (void)ud; return tok == FK_EOS; }

/* The fake template: "tools:NAME,...\n" when tools are offered, then
 * "role:content\n" per message (an assistant's calls as
 * "call:NAME(ARGS)", a tool result as "tool[ID]:content"), then
 * "assistant:", and "<think>\n" after it when chat_template_kwargs set
 * "think". A "fail" kwarg is a template error. */
static char *fk_render(void *ud, json_t *ctx, char *err, size_t errlen)
{
    (void)ud;
    if (json_object_get(ctx, "fail")) { snprintf(err, errlen, "the template raised: asked to"); return NULL; }
    size_t cap = 4096, n = 0;
    char *s = malloc(cap);
    json_t *tools = json_object_get(ctx, "tools"), *v;
    size_t i;
    if (tools) {
        n += (size_t)snprintf(s + n, cap - n, "tools:");
        json_array_foreach(tools, i, v)
            n += (size_t)snprintf(s + n, cap - n, "%s%s", i ? "," : "",
                                  json_string_value(json_object_get(json_object_get(v, "function"), "name")));
        n += (size_t)snprintf(s + n, cap - n, "\n");
    }
    json_array_foreach(json_object_get(ctx, "messages"), i, v) {
        const char *role = json_string_value(json_object_get(v, "role"));
        const char *id = json_string_value(json_object_get(v, "tool_call_id"));
        if (id) n += (size_t)snprintf(s + n, cap - n, "%s[%s]:%s\n", role, id,
                                      json_string_value(json_object_get(v, "content")));
        else n += (size_t)snprintf(s + n, cap - n, "%s:%s\n", role, json_string_value(json_object_get(v, "content")));
        size_t k;
        json_t *c;
        json_array_foreach(json_object_get(v, "tool_calls"), k, c) {
            json_t *fn = json_object_get(c, "function");
            char *a = json_dumps(json_object_get(fn, "arguments"), JSON_COMPACT | JSON_ENCODE_ANY);
            n += (size_t)snprintf(s + n, cap - n, "call:%s(%s)\n", json_string_value(json_object_get(fn, "name")), a);
            free(a);
        }
        if (n >= cap) break;
    }
    if (n < cap) snprintf(s + n, cap - n, "assistant:%s", json_is_true(json_object_get(ctx, "think")) ? "<think>\n" : "");
    return s;
}

static void *fk_new(void *ud, char *err, size_t errlen)
{
    (void)err; (void)errlen;
    struct fake *f = ud;
    atomic_fetch_add(&f->n_sessions, 1);
    struct fake_sess *s = calloc(1, sizeof *s);
    if (s) s->f = f;
    return s;
}

static void fk_free(void *ud, void *s) { (void)ud; free(s); }

static int fk_sync(void *ud, void *sp, const int32_t *t, int n)
{
    (void)ud;
    struct fake_sess *s = sp;
    int k = 0;
    while (k < s->n && k < n - 1 && s->toks[k] == t[k]) k++;
    if (k != s->n) s->valid = 0;
    s->n = k;
    return k;
}

/* A scripted reply: the script for the number of tool results in the
 * prompt, continued from where the reply so far (a prefill, then what was
 * generated) sits in it, so a reply forced to start with a call's opening
 * goes on with the script's call. */
static int32_t fk_script_next(const struct fake_sess *s, int at)
{
    int results = 0;
    for (int i = 0; i + 5 <= at; i++) {
        int k = 0;
        while (k < 5 && s->toks[i + k] == (unsigned char)"tool["[k]) k++;
        if (k == 5) results++;
    }
    const char *sc = results > 0 && results <= 3 && s->f->after_tool[results - 1] ? s->f->after_tool[results - 1]
                                                                                 : s->f->script;
    size_t sl = strlen(sc), have = (size_t)(s->n - at);
    for (size_t off = 0; off + have < sl; off++) {
        size_t k = 0;
        while (k < have && s->toks[at + (int)k] == (unsigned char)sc[off + k]) k++;
        if (k == have) return (unsigned char)sc[off + have];
    }
    return FK_EOS;
}

/* The fake model: next token from the history. */
static void fk_logits(struct fake_sess *s)
{
    for (int i = 0; i < FK_VOCAB; i++) s->logits[i] = 0;
    int32_t next, last = s->toks[s->n - 1];
    int at = -1;
    for (int i = s->n - 10; s->f->script && i >= 0 && at < 0; i--) {
        int k = 0;
        while (k < 10 && s->toks[i + k] == (unsigned char)"assistant:"[k]) k++;
        if (k == 10) at = i + 10;
    }
    if (at >= 0) {
        next = fk_script_next(s, at);
        if (next == FK_EOS && s->f->prefer) {
            size_t np = strlen(s->f->prefer);
            for (size_t k = 0; k < np; k++) s->logits[(unsigned char)s->f->prefer[k]] = (float)(np - k);
            s->logits[FK_EOS] = 10;
            s->valid = 1;
            return;
        }
    } else if (s->toks[0] == '#') {
        next = last >= 'a' && last < 'z' ? last + 1 : last == 'z' ? FK_EOS : 'a';
    } else if (s->toks[0] == '~') {
        next = last >= 'a' && last < 'z' ? last + 1 : 'a';
    } else {
        uint64_t h = s->hash[s->n] * 0x9E3779B97F4A7C15ull;
        next = 'a' + (int)((h >> 33) % 26);
        if ((h >> 20) % 61 == 0) next = FK_EOS;
    }
    s->logits[next] = 10;
    s->logits[next == FK_EOS ? '.' : next == 'z' ? 'a' : next + 1] = 8;
    s->valid = 1;
}

static int fk_push(struct fake_sess *s, const int32_t *t, int n, char *err, size_t errlen)
{
    int cap = s->f->long_ctx ? FK_CTX_LONG : FK_CTX;
    if (s->n + n > cap) { snprintf(err, errlen, "context of %d tokens is full", cap); return -1; }
    for (int i = 0; i < n; i++) {
        s->toks[s->n] = t[i];
        s->hash[s->n + 1] = (s->hash[s->n] ^ (uint64_t)(t[i] + 1)) * 0x100000001B3ull;
        s->n++;
    }
    fk_logits(s);
    return 0;
}

static int fk_eval(void *ud, void *sp, const int32_t *t, int n, char *err, size_t errlen)
{
    struct fake *f = ud;
    if (f->delay_us) usleep((useconds_t)f->delay_us);
    atomic_fetch_add(&f->evaluated, n);
    return fk_push(sp, t, n, err, errlen);
}

static const float *fk_get_logits(void *ud, void *sp)
{
    (void)ud;
    struct fake_sess *s = sp;
    return s->valid ? s->logits : NULL;
}

static int fk_decode(void *ud, void **ss, const int32_t *t, int n, char *err, size_t errlen)
{
    struct fake *f = ud;
    if (f->delay_us) usleep((useconds_t)f->delay_us);
    atomic_fetch_add(&f->n_decode, 1);
    int m = atomic_load(&f->max_batch);
    while (n > m && !atomic_compare_exchange_weak(&f->max_batch, &m, n)) {}
    for (int i = 0; i < n; i++)
        if (fk_push(ss[i], &t[i], 1, err, errlen)) return -1;
    return 0;
}

/* Greedy over the logits plus logit_bias; the penalties are the engine's
 * (test_sample.c), here only the history they would read is checked. */
static int32_t fk_sample(void *ud, void *sp, const struct srv_sampling *p, uint64_t *rng, const float *lg,
                         const int32_t *hist, int n_hist)
{
    struct fake *f = ud;
    struct fake_sess *s = sp;
    if (n_hist != s->n || memcmp(hist, s->toks, (size_t)n_hist * sizeof *hist) != 0) atomic_fetch_add(&f->bad_hist, 1);
    float l[FK_VOCAB];
    memcpy(l, lg, sizeof l);
    for (int i = 0; i < p->n_bias; i++) l[p->bias[i].id] += p->bias[i].bias;
    int best = 0;
    for (int i = 1; i < FK_VOCAB; i++) if (l[i] > l[best]) best = i;
    if (p->temp <= 0) return best;
    /* Not the engine's sampler: enough to show that seeds reproduce. */
    *rng = *rng * 6364136223846793005ull + 1442695040888963407ull;
    return (*rng >> 40) % 3 ? best : (best == 'z' ? 'a' : best < 'z' && best >= 'a' ? best + 1 : best);
}

static struct srv_backend fake_backend(struct fake *f)
{
    struct srv_backend be = {
        .ud = f, .n_vocab = FK_VOCAB, .n_ctx = f->long_ctx ? FK_CTX_LONG : FK_CTX, .n_batch = 16, .add_bos = 0, .bos = FK_BOS,
        .tokenize = fk_tokenize, .piece = fk_piece, .is_eog = fk_is_eog, .chat_render = fk_render,
        .session_new = fk_new, .session_free = fk_free, .session_sync = fk_sync, .session_eval = fk_eval,
        .session_logits = fk_get_logits, .decode = fk_decode, .sample = fk_sample,
        .chat_format = MOEQ_CALLS_QWEN3, .chat_think = 1,
    };
    return be;
}

/* ======================================================================
 * Requests
 * ====================================================================== */

static int parse(const struct srv_backend *be, enum srv_kind k, const char *body, struct srv_gen *g,
                 char *err, size_t errlen)
{
    json_t *j = srv_parse_body(body, strlen(body), err, errlen);
    if (!j) return 400;
    int rc = srv_parse_gen(be, k, j, g, err, errlen);
    json_decref(j);
    return rc;
}

TEST(server_parse_chat)
{
    struct fake f = {0};
    struct srv_backend be = fake_backend(&f);
    struct srv_gen g;
    char err[512];
    int rc = parse(&be, SRV_CHAT,
                   "{\"model\":\"x\",\"messages\":[{\"role\":\"system\",\"content\":\"be brief\"},"
                   "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"hi\"},{\"type\":\"text\",\"text\":\"!\"}]}],"
                   "\"max_tokens\":7,\"temperature\":0,\"top_k\":5,\"top_p\":0.5,\"min_p\":0.1,\"seed\":42,"
                   "\"stop\":[\"ab\",\"\",\"cd\"],\"stream\":true,\"stream_options\":{\"include_usage\":true},"
                   "\"logprobs\":true,\"top_logprobs\":3,\"n\":1,\"frequency_penalty\":0,\"tools\":[],"
                   "\"response_format\":{\"type\":\"text\"}}",
                   &g, err, sizeof err);
    REQUIREF(rc == 0, "rc %d: %s", rc, err);
    const char *want = "system:be brief\nuser:hi!\nassistant:";
    REQUIRE(g.n_prompt == (int)strlen(want));
    for (int i = 0; i < g.n_prompt; i++) CHECK(g.prompt[i] == (unsigned char)want[i]);
    CHECK(g.max_tokens == 7);
    CHECK(g.sp.temp == 0 && g.sp.top_k == 5 && g.sp.top_p == 0.5f && fabsf(g.sp.min_p - 0.1f) < 1e-6f);
    CHECK(g.has_seed && g.seed == 42);
    CHECK(g.n_stop == 2 && !strcmp(g.stop[0], "ab") && !strcmp(g.stop[1], "cd"));
    CHECK(g.stream && g.include_usage && g.logprobs && g.top_logprobs == 3);
    srv_gen_free(&g);

    /* Defaults: llama-server's sampling, the rest of the context. */
    rc = parse(&be, SRV_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"q\"}],\"stop\":\"zz\"}", &g, err, sizeof err);
    REQUIRE(rc == 0);
    CHECK(g.max_tokens == FK_CTX - g.n_prompt);
    CHECK(fabsf(g.sp.temp - 0.8f) < 1e-6f && g.sp.top_k == 40);
    CHECK(!g.stream && !g.logprobs && g.n_stop == 1);
    srv_gen_free(&g);

    /* max_completion_tokens is the newer name; a huge one is clamped. */
    rc = parse(&be, SRV_CHAT, "{\"messages\":[{\"role\":\"developer\",\"content\":\"q\"},{\"role\":\"assistant\",\"content\":null}],"
               "\"max_completion_tokens\":100000}", &g, err, sizeof err);
    REQUIREF(rc == 0, "%s", err);
    CHECK(g.max_tokens == FK_CTX - g.n_prompt);
    srv_gen_free(&g);
}

TEST(server_parse_completion)
{
    struct fake f = {0};
    struct srv_backend be = fake_backend(&f);
    struct srv_gen g;
    char err[512];
    REQUIRE(parse(&be, SRV_COMPLETION, "{\"prompt\":\"abc\",\"logprobs\":2,\"max_tokens\":3}", &g, err, sizeof err) == 0);
    CHECK(g.n_prompt == 3 && g.prompt[2] == 'c' && g.logprobs && g.top_logprobs == 2);
    srv_gen_free(&g);
    REQUIRE(parse(&be, SRV_COMPLETION, "{\"prompt\":[\"xy\"]}", &g, err, sizeof err) == 0);
    CHECK(g.n_prompt == 2 && !g.logprobs);
    srv_gen_free(&g);
    REQUIRE(parse(&be, SRV_COMPLETION, "{\"prompt\":[1,2,257]}", &g, err, sizeof err) == 0);
    CHECK(g.n_prompt == 3 && g.prompt[2] == 257);
    srv_gen_free(&g);
    be.add_bos = 1;
    REQUIRE(parse(&be, SRV_COMPLETION, "{\"prompt\":\"q\"}", &g, err, sizeof err) == 0);
    CHECK(g.n_prompt == 2 && g.prompt[0] == FK_BOS && g.prompt[1] == 'q');
    srv_gen_free(&g);
}

TEST(server_parse_errors)
{
    struct fake f = {0};
    struct srv_backend be = fake_backend(&f);
    char longp[FK_CTX + 64];
    memset(longp, 'a', sizeof longp - 1);
    longp[sizeof longp - 1] = 0;
    char longreq[FK_CTX + 200];
    snprintf(longreq, sizeof longreq, "{\"prompt\":\"%s\"}", longp);
    static const struct { int kind; const char *body, *needle; } cases[] = {
        { SRV_CHAT, "{\"messages\":[", "not valid JSON" },
        { SRV_CHAT, "", "empty" },
        { SRV_CHAT, "[1,2]", "JSON object" },
        { SRV_CHAT, "{\"messages\":[],\"x\":1,\"x\":2}", "not valid JSON" },
        { SRV_CHAT, "{}", "'messages' is required" },
        { SRV_CHAT, "{\"messages\":{}}", "'messages' must be an array" },
        { SRV_CHAT, "{\"messages\":[]}", "must not be empty" },
        { SRV_CHAT, "{\"messages\":[3]}", "'messages[0]' must be an object" },
        { SRV_CHAT, "{\"messages\":[{\"role\":\"wizard\",\"content\":\"x\"}]}", "'wizard'" },
        { SRV_CHAT, "{\"messages\":[{\"role\":1,\"content\":\"x\"}]}", "role' must be a string" },
        { SRV_CHAT, "{\"messages\":[{\"role\":\"user\"}]}", "content' is required" },
        { SRV_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":5}]}", "content' must be" },
        { SRV_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\"}]}]}", "type \\\"text\\\"" },
        { SRV_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"temperature\":\"hot\"}", "'temperature' must be a number" },
        { SRV_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"temperature\":7}", "'temperature' must be between" },
        { SRV_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":1.5}", "'max_tokens' must be an integer" },
        { SRV_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":0}", "'max_tokens' must be between" },
        { SRV_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stream\":\"yes\"}", "'stream' must be true or false" },
        { SRV_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stop\":5}", "'stop' must be" },
        { SRV_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stop\":[\"a\",1]}", "'stop[1]'" },
        { SRV_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"n\":2}", "'n' must be 1" },
        { SRV_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"top_logprobs\":2}", "requires" },
        { SRV_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"logprobs\":true,\"top_logprobs\":50}", "'top_logprobs' must be between" },
        { SRV_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stream_options\":{\"include_usage\":true}}", "only allowed" },
        { SRV_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"seed\":\"s\"}", "'seed' must be an integer" },
        { SRV_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"model\":3}", "'model' must be a string" },
        { SRV_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{\"type\":\"function\"}]}", "'tools[0].function' must be an object" },
        { SRV_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"response_format\":{\"type\":\"json_object\"}}", "'response_format'" },
        { SRV_COMPLETION, "{\"prompt\":3}", "'prompt' must be" },
        { SRV_COMPLETION, "{\"prompt\":\"\"}", "the prompt is empty" },
        { SRV_COMPLETION, "{\"prompt\":[\"a\",\"b\"]}", "n = 1 only" },
        { SRV_COMPLETION, "{\"prompt\":[1,99999]}", "'prompt[1]'" },
        { SRV_COMPLETION, "{\"prompt\":\"a\",\"logprobs\":true}", "'logprobs' must be an integer" },
        { SRV_COMPLETION, "{\"prompt\":\"a\",\"echo\":true}", "'echo'" },
        { SRV_COMPLETION, NULL, "context holds 256" },
        /* a backslash before a raw newline: jansson quotes both in its
         * message (fuzz_server) */
        { SRV_COMPLETION, "{\"prompt\":\"a\\\nb\"}", "invalid escape" },
        /* the role is quoted, with its escaped newline made harmless */
        { SRV_CHAT, "{\"messages\":[{\"role\":\"assist\\nt\",\"content\":\"x\"}]}", "'assist?t'" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct srv_gen g;
        char err[512] = "";
        const char *body = cases[i].body ? cases[i].body : longreq;
        int rc = parse(&be, cases[i].kind, body, &g, err, sizeof err);
        CHECKF(rc == 400, "case %zu (%s): rc %d", i, body, rc);
        CHECKF(!strchr(err, '\n'), "case %zu: message of more than one line: '%s'", i, err);
        char *ej = srv_error_json(400, err);
        CHECKF(strstr(ej, cases[i].needle) != NULL, "case %zu: message '%s' lacks '%s'", i, ej, cases[i].needle);
        free(ej);
        if (rc == 0) srv_gen_free(&g);
    }
}

/* ======================================================================
 * Generated text
 * ====================================================================== */

TEST(server_stop_across_tokens)
{
    char *stops[] = { "END", "xyz" };
    struct srv_text t;
    srv_text_init(&t, stops, 2);
    CHECK(srv_text_push(&t, "Hello E", 7) == 0);
    CHECK(t.ready == 6);                 /* "E" might start "END" */
    CHECK(srv_text_push(&t, "N", 1) == 0);
    CHECK(t.ready == 6);
    CHECK(srv_text_push(&t, "Dless", 5) == 1);  /* "END" completed across three tokens */
    CHECK(t.stopped && t.len == 6 && !memcmp(t.buf, "Hello ", 6) && t.ready == 6);
    srv_text_free(&t);

    /* A false start is released once it cannot match. */
    srv_text_init(&t, stops, 2);
    CHECK(srv_text_push(&t, "ab x", 4) == 0 && t.ready == 3);
    CHECK(srv_text_push(&t, "y", 1) == 0 && t.ready == 3);
    CHECK(srv_text_push(&t, "q", 1) == 0 && t.ready == 6);
    srv_text_finish(&t);
    CHECK(t.ready == 6 && !t.stopped);
    srv_text_free(&t);

    /* The earliest match wins, even inside one token. */
    srv_text_init(&t, stops, 2);
    CHECK(srv_text_push(&t, "..xyzEND", 8) == 1);
    CHECK(t.len == 2);
    srv_text_free(&t);
}

TEST(server_utf8_boundaries)
{
    struct srv_text t;
    srv_text_init(&t, NULL, 0);
    /* "é" = C3 A9 and "€" = E2 82 AC arriving byte by byte. */
    CHECK(srv_text_push(&t, "a\xC3", 2) == 0 && t.ready == 1);
    CHECK(srv_text_push(&t, "\xA9\xE2", 2) == 0 && t.ready == 3);
    CHECK(srv_text_push(&t, "\x82", 1) == 0 && t.ready == 3);
    CHECK(srv_text_push(&t, "\xAC", 1) == 0 && t.ready == 6);
    srv_text_free(&t);

    size_t n;
    char *c = srv_utf8_clean("a\xC3(\xED\xA0\x80\xF4\x90\x80\x80\xC0\xAFz\xE2\x82\xAC", 16, &n);
    /* a, bad C3, (, three bad bytes (surrogate), four bad (> U+10FFFF), two bad (overlong), z, € */
    const char *want = "a\xEF\xBF\xBD(" "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"
                       "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD" "\xEF\xBF\xBD\xEF\xBF\xBD" "z\xE2\x82\xAC";
    CHECKF(n == strlen(want) && !strcmp(c, want), "got %zu bytes", n);
    free(c);
}

/* ======================================================================
 * Response shapes
 * ====================================================================== */

TEST(server_response_shapes)
{
    struct fake f = {0};
    struct srv_backend be = fake_backend(&f);
    struct srv_usage u = { 5, 3, 2 };
    struct srv_tokprob tp[2] = {
        { .tok = 'h', .lp = -0.25f, .n_top = 2, .top_tok = { 'h', 'i' }, .top_lp = { -0.25f, -1.5f } },
        { .tok = 'i', .lp = -0.5f, .n_top = 0 },
    };
    json_t *r = srv_response_json(SRV_CHAT, "chatcmpl-1", 1700000000, "m", "hi\xFF", 3, NULL, "length",
                                  srv_logprobs_json(&be, SRV_CHAT, tp, 2, 0), &u);
    REQUIRE(r);
    CHECK(!strcmp(json_string_value(json_object_get(r, "object")), "chat.completion"));
    json_t *ch = json_array_get(json_object_get(r, "choices"), 0);
    CHECK(!strcmp(json_string_value(json_object_get(json_object_get(ch, "message"), "content")), "hi\xEF\xBF\xBD"));
    CHECK(!strcmp(json_string_value(json_object_get(json_object_get(ch, "message"), "role")), "assistant"));
    CHECK(!strcmp(json_string_value(json_object_get(ch, "finish_reason")), "length"));
    json_t *us = json_object_get(r, "usage");
    CHECK(json_integer_value(json_object_get(us, "total_tokens")) == 8);
    CHECK(json_integer_value(json_object_get(json_object_get(us, "prompt_tokens_details"), "cached_tokens")) == 2);
    json_t *c0 = json_array_get(json_object_get(json_object_get(ch, "logprobs"), "content"), 0);
    CHECK(!strcmp(json_string_value(json_object_get(c0, "token")), "h"));
    CHECK(json_real_value(json_object_get(c0, "logprob")) == -0.25);
    CHECK(json_integer_value(json_array_get(json_object_get(c0, "bytes"), 0)) == 'h');
    CHECK(json_array_size(json_object_get(c0, "top_logprobs")) == 2);
    json_decref(r);

    r = srv_response_json(SRV_COMPLETION, "cmpl-1", 1, "m", "xy", 2, NULL, "stop",
                          srv_logprobs_json(&be, SRV_COMPLETION, tp, 2, 0), &u);
    ch = json_array_get(json_object_get(r, "choices"), 0);
    CHECK(!strcmp(json_string_value(json_object_get(r, "object")), "text_completion"));
    CHECK(!strcmp(json_string_value(json_object_get(ch, "text")), "xy"));
    json_t *lp = json_object_get(ch, "logprobs");
    CHECK(json_array_size(json_object_get(lp, "tokens")) == 2);
    CHECK(json_integer_value(json_array_get(json_object_get(lp, "text_offset"), 1)) == 1);
    CHECK(json_real_value(json_object_get(json_array_get(json_object_get(lp, "top_logprobs"), 0), "i")) == -1.5);
    json_decref(r);

    /* SSE: one event per chunk, "data: " + compact JSON + blank line. */
    char *ev = srv_sse_chunk(SRV_CHAT, "id1", 5, "m", "assistant", "", 0, NULL, NULL, 1, NULL);
    REQUIRE(ev && !strncmp(ev, "data: {", 7));
    size_t n = strlen(ev);
    CHECK(n > 2 && ev[n - 1] == '\n' && ev[n - 2] == '\n' && !strchr(ev, '\n') == 0 && strchr(ev, '\n') == ev + n - 2);
    json_t *j = json_loads(ev + 6, 0, NULL);
    REQUIRE(j);
    CHECK(!strcmp(json_string_value(json_object_get(j, "object")), "chat.completion.chunk"));
    CHECK(json_is_null(json_object_get(j, "usage")));
    json_t *d = json_object_get(json_array_get(json_object_get(j, "choices"), 0), "delta");
    CHECK(!strcmp(json_string_value(json_object_get(d, "role")), "assistant"));
    CHECK(json_is_null(json_object_get(json_array_get(json_object_get(j, "choices"), 0), "finish_reason")));
    json_decref(j);
    free(ev);
    ev = srv_sse_chunk(SRV_CHAT, "id1", 5, "m", NULL, NULL, 0, NULL, NULL, 1, &u);
    j = json_loads(ev + 6, 0, NULL);
    CHECK(json_array_size(json_object_get(j, "choices")) == 0);
    CHECK(json_integer_value(json_object_get(json_object_get(j, "usage"), "completion_tokens")) == 3);
    json_decref(j);
    free(ev);
    ev = srv_sse_chunk(SRV_COMPLETION, "id2", 5, "m", NULL, "a\nb", 3, "stop", NULL, 0, NULL);
    j = json_loads(ev + 6, 0, NULL);
    json_t *c = json_array_get(json_object_get(j, "choices"), 0);
    CHECK(!strcmp(json_string_value(json_object_get(c, "text")), "a\nb"));
    CHECK(!strcmp(json_string_value(json_object_get(c, "finish_reason")), "stop"));
    CHECK(json_object_get(j, "usage") == NULL);
    json_decref(j);
    free(ev);

    char *e = srv_error_json(413, "too big");
    j = json_loads(e, 0, NULL);
    json_t *eo = json_object_get(j, "error");
    CHECK(!strcmp(json_string_value(json_object_get(eo, "message")), "too big"));
    CHECK(!strcmp(json_string_value(json_object_get(eo, "type")), "invalid_request_error"));
    CHECK(json_integer_value(json_object_get(eo, "code")) == 413);
    json_decref(j);
    free(e);
}

/* ======================================================================
 * Scheduler
 * ====================================================================== */

static srv_job *submit_completion(srv_sched *s, const struct srv_backend *be, const char *prompt, int max_tokens)
{
    char body[512], err[256];
    snprintf(body, sizeof body, "{\"prompt\":\"%s\",\"max_tokens\":%d,\"temperature\":0}", prompt, max_tokens);
    struct srv_gen g;
    if (parse(be, SRV_COMPLETION, body, &g, err, sizeof err)) return NULL;
    return srv_sched_submit(s, &g);
}

/* Wait for the job; copy its text; return the finish reason (static) or
 * "error". */
static const char *job_result(srv_job *j, char *text, size_t cap, struct srv_usage *u)
{
    struct srv_job_view v;
    for (int i = 0; i < 600; i++) {
        if (srv_job_wait(j, SIZE_MAX, 1 << 30, 100, &v)) break;
        srv_job_unlock(j);
    }
    const char *r = !v.done ? "timeout" : v.err ? "error" : v.finish;
    snprintf(text, cap, "%.*s", (int)v.ready, v.text);
    if (u) *u = v.usage;
    srv_job_unlock(j);
    return r;
}

TEST(server_sched_batching_matches_sequential)
{
    static const char *prompts[6] = { "one", "two two", "three", "fourfour", "5", "six!" };
    char seq[6][300], par[6][300];
    const char *fin_seq[6], *fin_par[6];
    struct fake f = { .delay_us = 2000 };
    struct srv_backend be = fake_backend(&f);
    char err[256];

    srv_sched *s = srv_sched_new(&be, 1, 8, err, sizeof err);
    REQUIRE(s);
    for (int i = 0; i < 6; i++) {
        srv_job *j = submit_completion(s, &be, prompts[i], 40);
        REQUIRE(j);
        fin_seq[i] = job_result(j, seq[i], sizeof seq[i], NULL);
        srv_job_release(j);
    }
    srv_sched_free(s);
    CHECK(atomic_load(&f.max_batch) == 1);

    struct fake f2 = { .delay_us = 2000 };
    be = fake_backend(&f2);
    s = srv_sched_new(&be, 4, 8, err, sizeof err);
    REQUIRE(s);
    srv_job *jobs[6];
    for (int i = 0; i < 6; i++) REQUIRE((jobs[i] = submit_completion(s, &be, prompts[i], 40)));
    for (int i = 0; i < 6; i++) {
        fin_par[i] = job_result(jobs[i], par[i], sizeof par[i], NULL);
        srv_job_release(jobs[i]);
        CHECKF(!strcmp(fin_par[i], fin_seq[i]) && !strcmp(par[i], seq[i]),
               "prompt %d: '%s' (%s) alone vs '%s' (%s) batched", i, seq[i], fin_seq[i], par[i], fin_par[i]);
        CHECK(strlen(par[i]) > 0);
    }
    struct srv_stats st;
    srv_sched_stats(s, &st);
    CHECK(st.finished == 6 && st.active == 0 && st.queued == 0);
    CHECK(st.decode_rows > st.decode_steps);
    srv_sched_free(s);
    CHECKF(atomic_load(&f2.max_batch) >= 3, "max batch %d", atomic_load(&f2.max_batch));
    CHECK(atomic_load(&f2.n_sessions) == 4);
}

TEST(server_sched_finish_and_prefix_reuse)
{
    struct fake f = {0};
    struct srv_backend be = fake_backend(&f);
    char err[256], text[300];
    struct srv_usage u;
    srv_sched *s = srv_sched_new(&be, 2, 4, err, sizeof err);
    REQUIRE(s);
    /* '#' mode: "#...w" continues "xyz" and ends: finish "stop". */
    srv_job *j = submit_completion(s, &be, "#w", 50);
    CHECK(!strcmp(job_result(j, text, sizeof text, &u), "stop"));
    CHECK(!strcmp(text, "xyz") && u.completion == 4 && u.prompt == 2);
    srv_job_release(j);
    /* max_tokens: "length". */
    j = submit_completion(s, &be, "#a", 3);
    CHECK(!strcmp(job_result(j, text, sizeof text, &u), "length"));
    CHECK(!strcmp(text, "bcd") && u.completion == 3);
    srv_job_release(j);

    /* A second turn that extends the first reuses its tokens. */
    /* The slot that ran "#w" (holding "#wxyz") shares "#" with "#a"; the
     * empty one shares nothing. "#a" then leaves "#abc" (d was sampled,
     * never decoded). */
    CHECK(u.cached == 1);
    long long before = atomic_load(&f.evaluated);
    j = submit_completion(s, &be, "#abcdefghijklmnop", 2);
    CHECK(!strcmp(job_result(j, text, sizeof text, &u), "length"));
    srv_job_release(j);
    CHECKF(u.cached == 4, "cached %d", u.cached);
    long long mid = atomic_load(&f.evaluated);
    j = submit_completion(s, &be, "#abcdefghijklmnopqrstu", 2);
    CHECK(!strcmp(job_result(j, text, sizeof text, &u), "length"));
    CHECK(!strcmp(text, "vw"));
    srv_job_release(j);
    CHECKF(u.cached == 18, "cached %d", u.cached);  /* prompt + the reply's decoded token */
    CHECKF(atomic_load(&f.evaluated) - mid == 22 - 18, "evaluated %lld", atomic_load(&f.evaluated) - mid);
    CHECK(mid - before == 17 - 4);

    /* Stop strings: finish "stop" and the text ends before the match. */
    struct srv_gen g;
    REQUIRE(parse(&be, SRV_COMPLETION, "{\"prompt\":\"#c\",\"stop\":[\"ij\"],\"temperature\":0}", &g, err, sizeof err) == 0);
    j = srv_sched_submit(s, &g);
    CHECK(!strcmp(job_result(j, text, sizeof text, &u), "stop"));
    CHECK(!strcmp(text, "defgh"));
    srv_job_release(j);

    /* ignore_eos: the end token is never sampled; the runner-up ('.')
     * comes instead and the alphabet starts again. */
    REQUIRE(parse(&be, SRV_COMPLETION, "{\"prompt\":\"#x\",\"ignore_eos\":true,\"max_tokens\":5,\"temperature\":0}",
                  &g, err, sizeof err) == 0);
    j = srv_sched_submit(s, &g);
    CHECK(!strcmp(job_result(j, text, sizeof text, &u), "length"));
    CHECKF(!strcmp(text, "yz.ab"), "'%s'", text);
    srv_job_release(j);
    srv_sched_free(s);
}

/* Wait until the scheduler holds `active` jobs in slots and `queued` in
 * its queue (a state, not a time; the runner's limit ends a hang). */
static void wait_sched(srv_sched *s, int active, int queued)
{
    struct srv_stats st;
    for (srv_sched_stats(s, &st); st.active != active || st.queued != queued; srv_sched_stats(s, &st))
        usleep(1000);
}

TEST(server_sched_queue_and_cancel)
{
    struct fake f = { .delay_us = 5000 };
    struct srv_backend be = fake_backend(&f);
    char err[256], text[300];
    srv_sched *s = srv_sched_new(&be, 1, 2, err, sizeof err);
    REQUIRE(s);
    srv_job *a = submit_completion(s, &be, "~a", 200);
    REQUIRE(a);
    wait_sched(s, 1, 0);   /* the scheduler has taken it into the slot */
    srv_job *b = submit_completion(s, &be, "#b", 5);
    srv_job *c = submit_completion(s, &be, "#c", 5);
    srv_job *d = submit_completion(s, &be, "#d", 5);
    CHECK(b && c);
    CHECK(d == NULL);    /* one running, two waiting: the queue is full */
    /* Cancelling a waiting job ends it at once. */
    srv_job_cancel(c);
    CHECK(!strcmp(job_result(c, text, sizeof text, NULL), "error"));
    srv_job_release(c);
    /* Cancelling the running one frees the slot for b. */
    srv_job_cancel(a);
    CHECK(!strcmp(job_result(a, text, sizeof text, NULL), "error"));
    CHECK(strlen(text) < 100);
    srv_job_release(a);
    CHECK(!strcmp(job_result(b, text, sizeof text, NULL), "length"));
    CHECK(!strcmp(text, "cdefg"));
    srv_job_release(b);
    struct srv_stats st;
    srv_sched_stats(s, &st);
    CHECK(st.rejected == 1 && st.cancelled == 2 && st.finished == 1);

    /* Shutdown ends waiting and running jobs with an error. */
    a = submit_completion(s, &be, "~a", 200);
    b = submit_completion(s, &be, "~b", 200);
    wait_sched(s, 1, 1);
    srv_sched_stop(s);
    CHECK(!strcmp(job_result(a, text, sizeof text, NULL), "error"));
    CHECK(!strcmp(job_result(b, text, sizeof text, NULL), "error"));
    CHECK(submit_completion(s, &be, "#a", 2) == NULL);
    srv_job_release(a);
    srv_job_release(b);
    srv_sched_free(s);
}

/* ======================================================================
 * HTTP over loopback
 * ====================================================================== */

struct http_env {
    struct fake f;
    struct srv_backend be;
    srv *s;
    int port;
};

/* Every HTTP test's prologue: skip without curl, else a server on a free
 * loopback port over the fake, attached to it when attach is set. */
static void env_start(struct http_env *e, const char *key, int parallel, int queue, int delay_us, int timeout_s,
                      int attach)
{
    if (!test_have_curl()) SKIP("curl is absent");
    memset(e, 0, sizeof *e);
    e->f.delay_us = delay_us;
    e->be = fake_backend(&e->f);
    struct srv_config c = { .host = "127.0.0.1", .port = 0, .parallel = parallel, .queue = queue,
                            .api_key = key, .timeout_s = timeout_s, .max_body = 4096, .alias = "fake-model" };
    char err[256];
    e->s = srv_start(&c, err, sizeof err);
    REQUIREF(e->s, "srv_start: %s", err);
    e->port = srv_port(e->s);
    REQUIRE(e->port > 0);
    if (attach) REQUIREF(srv_attach(e->s, &e->be, NULL, err, sizeof err) == 0, "attach: %s", err);
}

static int http(struct http_env *e, const char *method, const char *path, const char *body,
                const char *extra, char **out)
{
    return test_http(e->port, method, path, body, extra, 20, out);
}

static json_t *json_of(const char *s)
{
    return s ? json_loads(s, 0, NULL) : NULL;
}


static const char *err_msg(json_t *j)
{
    const char *m = json_string_value(json_object_get(json_object_get(j, "error"), "message"));
    return m ? m : "";
}

TEST(server_http_endpoints)
{
    struct http_env e;
    env_start(&e, NULL, 2, 4, 0, 10, 0);
    char *o;
    /* Loading: health 503, generation 503. */
    CHECK(http(&e, "GET", "/health", NULL, NULL, &o) == 503);
    free(o);
    CHECK(http(&e, "POST", "/v1/completions", "{\"prompt\":\"a\"}", NULL, &o) == 503);
    free(o);
    char err[256];
    REQUIRE(srv_attach(e.s, &e.be, NULL, err, sizeof err) == 0);
    CHECK(http(&e, "GET", "/health", NULL, NULL, &o) == 200 && strstr(o, "\"ok\""));
    free(o);

    CHECK(http(&e, "GET", "/v1/models", NULL, NULL, &o) == 200);
    json_t *j = json_of(o);
    CHECK(!strcmp(json_string_value(json_object_get(json_array_get(json_object_get(j, "data"), 0), "id")), "fake-model"));
    json_decref(j);
    free(o);

    CHECK(http(&e, "POST", "/v1/chat/completions",
               "{\"messages\":[{\"role\":\"user\",\"content\":\"#hi\"}],\"temperature\":0,\"max_tokens\":5}",
               NULL, &o) == 200);
    j = json_of(o);
    REQUIREF(j, "not JSON: %s", o);
    json_t *ch = json_array_get(json_object_get(j, "choices"), 0);
    const char *content = json_string_value(json_object_get(json_object_get(ch, "message"), "content"));
    CHECK(content && strlen(content) > 0);
    CHECK(json_integer_value(json_object_get(json_object_get(j, "usage"), "prompt_tokens")) == (json_int_t)strlen("user:#hi\nassistant:"));
    CHECK(!strncmp(json_string_value(json_object_get(j, "id")), "chatcmpl-", 9));
    CHECK(!strcmp(json_string_value(json_object_get(j, "model")), "fake-model"));
    json_decref(j);
    free(o);

    CHECK(http(&e, "POST", "/v1/completions", "{\"prompt\":\"#k\",\"max_tokens\":3,\"logprobs\":1,\"temperature\":0}", NULL, &o) == 200);
    j = json_of(o);
    ch = json_array_get(json_object_get(j, "choices"), 0);
    CHECK(!strcmp(json_string_value(json_object_get(ch, "text")), "lmn"));
    CHECK(!strcmp(json_string_value(json_object_get(ch, "finish_reason")), "length"));
    CHECK(json_array_size(json_object_get(json_object_get(ch, "logprobs"), "tokens")) == 3);
    json_decref(j);
    free(o);

    CHECK(http(&e, "POST", "/tokenize", "{\"content\":\"hey\",\"with_pieces\":true}", NULL, &o) == 200);
    j = json_of(o);
    CHECK(json_array_size(json_object_get(j, "tokens")) == 3);
    CHECK(!strcmp(json_string_value(json_object_get(json_array_get(json_object_get(j, "tokens"), 1), "piece")), "e"));
    json_decref(j);
    free(o);
    CHECK(http(&e, "POST", "/tokenize", "{\"content\":\"hey\"}", NULL, &o) == 200 && strstr(o, "[104,101,121]"));
    free(o);
    CHECK(http(&e, "POST", "/detokenize", "{\"tokens\":[104,105,256]}", NULL, &o) == 200 && strstr(o, "\"content\":\"hi\""));
    free(o);

    CHECK(http(&e, "GET", "/metrics", NULL, NULL, &o) == 200);
    CHECK(strstr(o, "# TYPE moeq_requests_total counter") != NULL);
    CHECK(strstr(o, "moeq_requests_total{endpoint=\"completions\",status=\"2xx\"} 1") != NULL);
    char *gt = strstr(o, "\nmoeq_generated_tokens_total ");
    CHECK(gt && atoi(gt + strlen("\nmoeq_generated_tokens_total ")) >= 4);
    CHECK(strstr(o, "moeq_kv_cache_usage_ratio") != NULL && strstr(o, "moeq_generated_tokens_per_second") != NULL);
    CHECK(strstr(o, "moeq_kv_cache_total_cells 512") != NULL);
    free(o);
    srv_stop(e.s);
}

TEST(server_http_streaming)
{
    struct http_env e;
    env_start(&e, NULL, 2, 4, 0, 10, 1);
    char *o;
    CHECK(http(&e, "POST", "/v1/chat/completions",
               "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stream\":true,\"temperature\":0,"
               "\"max_tokens\":6,\"stream_options\":{\"include_usage\":true}}", "-N", &o) == 200);
    REQUIRE(o);
    /* Walk the events: role first, content, a finish chunk, usage, [DONE]. */
    int n_ev = 0, saw_role = 0, saw_finish = 0, saw_usage = 0, done = 0;
    char text[256] = "";
    for (char *line = strtok(o, "\n"); line; line = strtok(NULL, "\n")) {
        if (strncmp(line, "data: ", 6) != 0) { CHECKF(line[0] == ':', "stray line '%s'", line); continue; }
        CHECK(!done);
        if (!strcmp(line + 6, "[DONE]")) { done = 1; continue; }
        json_t *j = json_loads(line + 6, 0, NULL);
        REQUIREF(j, "bad event %s", line);
        n_ev++;
        json_t *c = json_array_get(json_object_get(j, "choices"), 0);
        if (!c) {
            saw_usage = 1;
            CHECK(json_integer_value(json_object_get(json_object_get(j, "usage"), "completion_tokens")) == 6);
        } else {
            CHECK(json_object_get(j, "usage") && json_is_null(json_object_get(j, "usage")));
            json_t *d = json_object_get(c, "delta");
            if (json_object_get(d, "role")) { CHECK(n_ev == 1); saw_role = 1; }
            if (json_is_string(json_object_get(d, "content")))
                strncat(text, json_string_value(json_object_get(d, "content")), sizeof text - strlen(text) - 1);
            if (json_is_string(json_object_get(c, "finish_reason"))) {
                saw_finish = 1;
                CHECK(!strcmp(json_string_value(json_object_get(c, "finish_reason")), "length"));
            }
        }
        json_decref(j);
    }
    CHECK(saw_role && saw_finish && saw_usage && done);
    free(o);

    /* The same request without streaming gives the same text. */
    CHECK(http(&e, "POST", "/v1/chat/completions",
               "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"temperature\":0,\"max_tokens\":6}", NULL, &o) == 200);
    json_t *j = json_of(o);
    const char *full = json_string_value(json_object_get(json_object_get(json_array_get(json_object_get(j, "choices"), 0), "message"), "content"));
    CHECKF(full && !strcmp(full, text), "streamed '%s' vs '%s'", text, full ? full : "(null)");
    json_decref(j);
    free(o);

    /* Completions stream with a stop string split over tokens. */
    CHECK(http(&e, "POST", "/v1/completions", "{\"prompt\":\"#a\",\"stream\":true,\"stop\":\"fgh\",\"temperature\":0}", "-N", &o) == 200);
    char *st = test_sse_text(o, NULL);
    CHECKF(!strcmp(st, "bcde"), "streamed '%s'", st);
    free(st);
    CHECK(strstr(o, "\"finish_reason\":\"stop\"") && strstr(o, "data: [DONE]"));
    CHECK(!strstr(o, "\"usage\""));
    free(o);
    srv_stop(e.s);
}

TEST(server_http_bad_input_and_auth)
{
    struct http_env e;
    env_start(&e, "sekret", 1, 2, 0, 10, 1);
    char *o;
    const char *auth = "-H 'Authorization: Bearer sekret'";
    /* /health needs no key; everything else does. */
    CHECK(http(&e, "GET", "/health", NULL, NULL, &o) == 200);
    free(o);
    CHECK(http(&e, "GET", "/v1/models", NULL, NULL, &o) == 401);
    json_t *j = json_of(o);
    CHECK(j && !strcmp(json_string_value(json_object_get(json_object_get(j, "error"), "type")), "authentication_error"));
    json_decref(j);
    free(o);
    CHECK(http(&e, "GET", "/metrics", NULL, "-H 'Authorization: Bearer wrong'", &o) == 401);
    free(o);
    CHECK(http(&e, "POST", "/tokenize", "{\"content\":\"a\"}", "-H 'Authorization: Bearer sekre'", &o) == 401);
    free(o);
    CHECK(http(&e, "GET", "/v1/models", NULL, auth, &o) == 200);
    free(o);

    test_http_bad_requests(e.port, test_bad_requests_common, test_n_bad_requests_common, auth, 20);
    CHECK(http(&e, "GET", "/v1/chat/completions", NULL, auth, &o) == 405);
    free(o);

    /* A prompt over the context (256 tokens, one a byte here), a body over
     * the limit (4096 here): 413 whether or not the length is announced. */
    test_http_too_big(e.port, 256, 6000, auth, 20);
    char *big = malloc(6000);
    memset(big, ' ', 5999);
    big[0] = '{';
    big[5998] = '}';
    big[5999] = 0;
    CHECK(http(&e, "POST", "/v1/completions", big, "-H 'Authorization: Bearer sekret' -H 'Transfer-Encoding: chunked'", &o) == 413);
    free(o);
    free(big);

    /* After all that, it still serves. */
    CHECK(http(&e, "POST", "/v1/completions", "{\"prompt\":\"#x\",\"temperature\":0}", auth, &o) == 200 && strstr(o, "\"text\":\"yz\""));
    free(o);
    srv_stop(e.s);
}

/* N streaming clients at once get what each gets alone. */
TEST(server_http_concurrent_equals_sequential)
{
    struct http_env e;
    env_start(&e, NULL, 4, 8, 3000, 10, 1);
    enum { N = 6 };
    static char alone[N][16384];
    for (int i = 0; i < N; i++) {
        char body[256], *o;
        snprintf(body, sizeof body, "{\"prompt\":\"client %d says\",\"max_tokens\":24,\"temperature\":0,\"stream\":true}", i);
        CHECK(http(&e, "POST", "/v1/completions", body, "-N", &o) == 200);
        snprintf(alone[i], sizeof alone[i], "%s", o ? o : "");
        free(o);
    }
    /* All at once, from background curls. */
    char bodies[N][256], *outs[N];
    const char *bp[N];
    for (int i = 0; i < N; i++) {
        snprintf(bodies[i], sizeof bodies[i],
                 "{\"prompt\":\"client %d says\",\"max_tokens\":24,\"temperature\":0,\"stream\":true}", i);
        bp[i] = bodies[i];
    }
    CHECK(test_http_concurrent(e.port, "/v1/completions", bp, N, 30, outs) == 0);
    for (int i = 0; i < N; i++) {
        char *got = outs[i];
        REQUIRE(got);
        /* Compare the texts, not the ids. */
        char *ta = test_sse_text(alone[i], NULL), *tb = test_sse_text(got, NULL);
        CHECKF(strlen(ta) > 0 && !strcmp(ta, tb), "client %d: alone '%s' together '%s'", i, ta, tb);
        free(ta);
        free(tb);
        CHECK(strstr(got, "data: [DONE]") != NULL);
        free(got);
    }
    CHECKF(atomic_load(&e.f.max_batch) >= 2, "max batch %d", atomic_load(&e.f.max_batch));
    srv_stop(e.s);
}

/* Open a raw connection to the server. */
static int raw_connect(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) { close(fd); return -1; }
    return fd;
}

static long long metric_value(struct http_env *e, const char *name)
{
    return (long long)test_http_metric(e->port, name, NULL);
}

TEST(server_http_disconnect_and_timeouts)
{
    struct http_env e;
    env_start(&e, NULL, 1, 2, 10000, 2, 1);
    /* A stream of ~200 tokens at 10 ms each; the client leaves after a few. */
    int fd = raw_connect(e.port);
    REQUIRE(fd >= 0);
    const char *body = "{\"prompt\":\"~a\",\"max_tokens\":250,\"stream\":true,\"temperature\":0}";
    char req[512];
    snprintf(req, sizeof req, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             "Content-Length: %zu\r\n\r\n%s", strlen(body), body);
    REQUIRE(write(fd, req, strlen(req)) == (ssize_t)strlen(req));
    char buf[2048];
    ssize_t r = read(fd, buf, sizeof buf - 1);
    REQUIRE(r > 0);
    buf[r] = 0;
    CHECK(strstr(buf, "200") && strstr(buf, "text/event-stream"));
    test_wait_metric(e.port, "moeq_requests_processing", 1, NULL);
    close(fd);
    /* The job is cancelled and the slot is free well before 250 tokens. */
    test_wait_metric(e.port, "moeq_requests_cancelled_total", 1, NULL);
    test_wait_metric(e.port, "moeq_requests_processing", 0, NULL);
    CHECKF(metric_value(&e, "moeq_generated_tokens_total") < 150, "%lld tokens", metric_value(&e, "moeq_generated_tokens_total"));

    /* The same for a plain (non-streamed) request. */
    fd = raw_connect(e.port);
    body = "{\"prompt\":\"~a\",\"max_tokens\":250,\"temperature\":0}";
    snprintf(req, sizeof req, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %zu\r\n\r\n%s", strlen(body), body);
    REQUIRE(write(fd, req, strlen(req)) == (ssize_t)strlen(req));
    test_wait_metric(e.port, "moeq_requests_processing", 1, NULL);
    close(fd);
    test_wait_metric(e.port, "moeq_requests_cancelled_total", 2, NULL);
    test_wait_metric(e.port, "moeq_requests_processing", 0, NULL);

    /* A client that sends half its headers and stalls is dropped after
     * the idle timeout (2 s here): the server closes the connection (end of
     * file, not our own receive timeout, which only guards a hang). */
    fd = raw_connect(e.port);
    REQUIRE(write(fd, "POST /v1/completions HTTP/1.1\r\nHost:", 36) == 36);
    struct timeval tv = { .tv_sec = 120 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    r = read(fd, buf, sizeof buf);
    CHECKF(r == 0 || (r < 0 && errno == ECONNRESET), "read %zd (%s)", r, r < 0 ? strerror(errno) : "data");
    close(fd);

    /* A plain request that takes longer than the idle timeout still gets
     * its answer (the wait is not idleness). */
    char *o;
    CHECK(http(&e, "POST", "/v1/completions", "{\"prompt\":\"~a\",\"max_tokens\":300,\"temperature\":0}", NULL, &o) == 200);
    CHECK(o && strstr(o, "\"finish_reason\":\"length\""));
    free(o);
    srv_stop(e.s);
}

/* Shutdown with a stream in flight: the stream ends with an error event
 * and [DONE], srv_stop returns. */
static void *stop_later(void *arg)
{
    struct http_env *e = arg;
    while (atomic_load(&e->f.n_decode) < 5) usleep(1000);   /* the stream is generating */
    srv_stop(e->s);
    return NULL;
}

TEST(server_http_shutdown_mid_stream)
{
    struct http_env e;
    env_start(&e, NULL, 1, 2, 10000, 5, 1);
    pthread_t th;
    pthread_create(&th, NULL, stop_later, &e);
    char *o;
    int st = http(&e, "POST", "/v1/completions", "{\"prompt\":\"~a\",\"max_tokens\":250,\"stream\":true}", "-N", &o);
    pthread_join(th, NULL);
    CHECK(st == 200);
    CHECKF(o && strstr(o, "shutting down") && strstr(o, "data: [DONE]"), "%s", o);
    free(o);
}

/* Beyond the slots and the queue, requests are refused with 503 at once;
 * the ones admitted finish normally. */
TEST(server_http_queue_full)
{
    struct http_env e;
    env_start(&e, NULL, 1, 1, 10000, 10, 1);
    FILE *fp = fopen(test_tmp("slow.json"), "w");
    fputs("{\"prompt\":\"~a\",\"max_tokens\":60,\"temperature\":0}", fp);
    fclose(fp);
    /* One takes the slot, one waits. */
    for (int i = 1; i <= 2; i++) {
        test_run(NULL, "(curl -sS -m 30 -o %s/bg%d.txt -w '%%{http_code}' --data-binary @%s "
                       "http://127.0.0.1:%d/v1/completions > %s/st%d.txt 2>/dev/null &)",
                 test_tmpdir(), i, test_tmp("slow.json"), e.port, test_tmpdir(), i);
        test_wait_metric(e.port, i == 1 ? "moeq_requests_processing" : "moeq_requests_queued", 1, NULL);
    }
    char *o;
    CHECK(http(&e, "POST", "/v1/completions", "{\"prompt\":\"~a\",\"max_tokens\":2}", NULL, &o) == 503);
    json_t *j = json_of(o);
    CHECKF(j && strstr(err_msg(j), "busy"), "%s", o ? o : "(none)");
    CHECK(j && !strcmp(json_string_value(json_object_get(json_object_get(j, "error"), "type")), "unavailable_error"));
    json_decref(j);
    free(o);
    /* Both admitted requests complete: each curl writes its status when it
     * ends (the file is empty until then). */
    int ok = 0;
    for (int done = 0; done < 2; usleep(10000)) {
        done = ok = 0;
        for (int i = 1; i <= 2; i++) {
            char nm[32];
            snprintf(nm, sizeof nm, "st%d.txt", i);
            size_t n = 0;
            char *st = test_read_file(test_tmp(nm), &n);
            done += st && n > 0;
            ok += st && !strcmp(st, "200");
            free(st);
        }
    }
    CHECK(ok == 2);
    CHECK(metric_value(&e, "moeq_requests_rejected_total") == 1);
    srv_stop(e.s);
}

/* Random damage to valid bodies: every outcome is a clean 0 or 400, and
 * an accepted request always fits the context. (Run under ASan by make
 * test, this is the parser's fuzz test.) */
TEST(server_parse_mutations)
{
    struct fake f = {0};
    struct srv_backend be = fake_backend(&f);
    static const struct { int kind; const char *body; } seeds[] = {
        { SRV_CHAT, "{\"messages\":[{\"role\":\"system\",\"content\":\"s\"},{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"hi\"}]}],"
                    "\"max_tokens\":7,\"temperature\":0.5,\"top_k\":5,\"stop\":[\"ab\",\"c\"],\"stream\":true,"
                    "\"stream_options\":{\"include_usage\":true},\"logprobs\":true,\"top_logprobs\":3,\"seed\":1}" },
        { SRV_COMPLETION, "{\"prompt\":[1,2,3,4],\"max_tokens\":300,\"logprobs\":2,\"stop\":\"x\",\"min_p\":0.1}" },
        { SRV_COMPLETION, "{\"prompt\":\"hello there\",\"top_p\":0.9,\"ignore_eos\":true}" },
    };
    uint64_t rng = 12345;
    int accepted = 0, refused = 0;
    for (size_t si = 0; si < sizeof seeds / sizeof seeds[0]; si++) {
        size_t n = strlen(seeds[si].body);
        char *buf = malloc(n + 1);
        for (int it = 0; it < 3000; it++) {
            memcpy(buf, seeds[si].body, n + 1);
            size_t len = n;
            int edits = 1 + (int)(rng % 3);
            for (int e = 0; e < edits; e++) {
                rng = rng * 6364136223846793005ull + 1442695040888963407ull;
                size_t pos = (size_t)(rng >> 33) % len;
                switch ((rng >> 20) % 4) {
                case 0: buf[pos] = (char)(rng >> 40); break;                    /* any byte */
                case 1: buf[pos] = "{}[]\",:0-9.aetn\\ "[(rng >> 40) % 17]; break; /* JSON-ish */
                case 2: len = pos; break;                                        /* truncate */
                default: memmove(buf + pos, buf + pos + 1, len - pos); len--;    /* delete */
                }
                if (len == 0) break;
            }
            char err[512] = "";
            json_t *j = srv_parse_body(buf, len, err, sizeof err);
            if (!j) { refused++; CHECK(err[0] != 0); continue; }
            struct srv_gen g;
            int rc = srv_parse_gen(&be, seeds[si].kind, j, &g, err, sizeof err);
            json_decref(j);
            CHECKF(rc == 0 || rc == 400, "rc %d", rc);
            if (rc == 0) {
                accepted++;
                CHECK(g.n_prompt > 0 && g.max_tokens >= 1 && g.n_prompt + g.max_tokens <= FK_CTX);
                CHECK(g.n_stop >= 0 && g.n_stop <= SRV_MAX_STOP && g.top_logprobs <= SRV_MAX_TOP_LOGPROBS);
                srv_gen_free(&g);
            } else {
                refused++;
                CHECK(err[0] != 0);
            }
        }
        free(buf);
    }
    CHECK(accepted > 100 && refused > 1000);
}

/* Three conversations fill three slots; each follow-up lands in the slot
 * holding its own history (the longest common prefix), not the least
 * recently used one, and evaluates only its new tokens. */
TEST(server_sched_prefix_picks_own_slot)
{
    struct fake f = {0};
    struct srv_backend be = fake_backend(&f);
    char err[256], text[300];
    struct srv_usage u;
    srv_sched *s = srv_sched_new(&be, 3, 4, err, sizeof err);
    REQUIRE(s);
    static const char *first[3] = { "alpha conversation", "beta conversation", "gamma conversation" };
    char hist[3][200];
    for (int i = 0; i < 3; i++) {
        srv_job *j = submit_completion(s, &be, first[i], 4);
        REQUIRE(j);
        const char *fin = job_result(j, text, sizeof text, &u);
        srv_job_release(j);
        /* The slot holds the prompt and the decoded tokens: after
         * "length" the last sampled token was never decoded; after an end
         * token every text token was. */
        int kept_text = (int)strlen(text) - (!strcmp(fin, "length") ? 1 : 0);
        snprintf(hist[i], sizeof hist[i], "%s%.*s", first[i], kept_text, text);
    }
    /* Follow-ups in the order beta, alpha, gamma (alpha is the least
     * recently used slot when beta's comes). */
    static const int order[3] = { 1, 0, 2 };
    for (int k = 0; k < 3; k++) {
        int i = order[k];
        char p[256];
        snprintf(p, sizeof p, "%s and more", hist[i]);
        long long before = atomic_load(&f.evaluated);
        srv_job *j = submit_completion(s, &be, p, 2);
        REQUIRE(j);
        job_result(j, text, sizeof text, &u);
        srv_job_release(j);
        CHECKF(u.cached == (int)strlen(hist[i]), "conversation %d: cached %d of %zu", i, u.cached, strlen(hist[i]));
        CHECK(atomic_load(&f.evaluated) - before == (long long)(strlen(p) - strlen(hist[i])));
    }
    srv_sched_free(s);
}

/* ======================================================================
 * Tools, reasoning, penalties
 * ====================================================================== */

/* What a client rebuilds from a stream's deltas: content and reasoning
 * concatenated, tool calls by index (id and name from the head,
 * arguments from the fragments). */
struct assembled {
    char content[1024], reasoning[1024];
    int  n_calls;
    char id[4][64], name[4][64], args[4][256];
    int  bad;                      /* a delta that breaks OpenAI's shape */
};

static void cat(char *dst, size_t cap, const json_t *s)
{
    if (json_is_string(s)) strncat(dst, json_string_value(s), cap - strlen(dst) - 1);
}

static void assemble(struct assembled *a, const json_t *d)
{
    cat(a->content, sizeof a->content, json_object_get(d, "content"));
    cat(a->reasoning, sizeof a->reasoning, json_object_get(d, "reasoning_content"));
    size_t i;
    json_t *tc;
    json_array_foreach(json_object_get(d, "tool_calls"), i, tc) {
        json_int_t k = json_integer_value(json_object_get(tc, "index"));
        json_t *fn = json_object_get(tc, "function");
        if (json_object_get(tc, "id")) {
            if (k != a->n_calls || k >= 4 || strcmp(json_string_value(json_object_get(tc, "type")), "function")) {
                a->bad++;
                continue;
            }
            a->n_calls++;
            snprintf(a->id[k], sizeof a->id[k], "%s", json_string_value(json_object_get(tc, "id")));
            cat(a->name[k], sizeof a->name[k], json_object_get(fn, "name"));
        } else if (k < 0 || k >= a->n_calls) {
            a->bad++;
            continue;
        }
        cat(a->args[k], sizeof a->args[k], json_object_get(fn, "arguments"));
    }
}

static void assemble_all(struct assembled *a, json_t *deltas)
{
    size_t i;
    json_t *d;
    json_array_foreach(deltas, i, d) assemble(a, d);
    json_decref(deltas);
}

/* The same from a whole message. */
static void assemble_message(struct assembled *a, const json_t *m)
{
    memset(a, 0, sizeof *a);
    cat(a->content, sizeof a->content, json_object_get(m, "content"));
    cat(a->reasoning, sizeof a->reasoning, json_object_get(m, "reasoning_content"));
    size_t i;
    json_t *tc;
    json_array_foreach(json_object_get(m, "tool_calls"), i, tc) {
        if (i >= 4) break;
        snprintf(a->id[i], sizeof a->id[i], "%s", json_string_value(json_object_get(tc, "id")));
        cat(a->name[i], sizeof a->name[i], json_object_get(json_object_get(tc, "function"), "name"));
        cat(a->args[i], sizeof a->args[i], json_object_get(json_object_get(tc, "function"), "arguments"));
        a->n_calls++;
    }
}

static int assembled_eq(const struct assembled *x, const struct assembled *y)
{
    if (strcmp(x->content, y->content) || strcmp(x->reasoning, y->reasoning) || x->n_calls != y->n_calls || x->bad ||
        y->bad)
        return 0;
    for (int i = 0; i < x->n_calls; i++)
        if (strcmp(x->id[i], y->id[i]) || strcmp(x->name[i], y->name[i]) || strcmp(x->args[i], y->args[i])) return 0;
    return 1;
}

TEST(server_parse_chat_tools)
{
    struct fake f = {0};
    struct srv_backend be = fake_backend(&f);
    struct srv_gen g;
    char err[512];
    const char *conv =
        "\"messages\":[{\"role\":\"user\",\"content\":\"weather?\"},"
        "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"call_1\",\"type\":\"function\","
        "\"function\":{\"name\":\"get_weather\",\"arguments\":\"{\\\"city\\\": \\\"Paris\\\"}\"}}]},"
        "{\"role\":\"tool\",\"tool_call_id\":\"call_1\",\"content\":[{\"type\":\"text\",\"text\":\"18C\"}]}],"
        "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"parameters\":{\"type\":\"object\"}}},"
        "{\"type\":\"function\",\"function\":{\"name\":\"get_time\"}}]";
    char body[2048];
    /* The template sees the tools, the call with its arguments as an
     * object, and the tool result with its id. */
    snprintf(body, sizeof body, "{%s}", conv);
    char *prompt = NULL;
    json_t *jb = json_loads(body, 0, NULL);
    REQUIREF(srv_apply_template(&be, jb, &prompt, err, sizeof err) == 0, "%s", err);
    const char *want = "tools:get_weather,get_time\nuser:weather?\nassistant:\ncall:get_weather({\"city\":\"Paris\"})\n"
                       "tool[call_1]:18C\nassistant:";
    CHECKF(!strcmp(prompt, want), "prompt '%s'", prompt);
    free(prompt);
    json_decref(jb);
    REQUIREF(parse(&be, SRV_CHAT, body, &g, err, sizeof err) == 0, "%s", err);
    CHECK(g.n_prompt == (int)strlen(want) && g.chat_format == MOEQ_CALLS_QWEN3 && g.reasoning && !g.think_open);
    CHECK(g.parallel_calls && !g.prefill && json_array_size(g.tools) == 2);
    srv_gen_free(&g);

    /* tool_choice: required and named prefill the reply; none hides the
     * tools and parses no calls. */
    static const struct { const char *extra, *prefill; int format; } tc[] = {
        { ",\"tool_choice\":\"required\"", "<tool_call>\n", MOEQ_CALLS_QWEN3 },
        { ",\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"get_time\"}}",
          "<tool_call>\n{\"name\": \"get_time\", \"arguments\": ", MOEQ_CALLS_QWEN3 },
        { ",\"tool_choice\":\"required\",\"chat_template_kwargs\":{\"think\":true}", "</think>\n\n<tool_call>\n",
          MOEQ_CALLS_QWEN3 },
        { ",\"tool_choice\":\"none\"", NULL, MOEQ_CALLS_PLAIN },
        { ",\"tool_choice\":\"auto\",\"parallel_tool_calls\":false", NULL, MOEQ_CALLS_QWEN3 },
    };
    for (size_t i = 0; i < sizeof tc / sizeof tc[0]; i++) {
        snprintf(body, sizeof body, "{%s%s}", conv, tc[i].extra);
        REQUIREF(parse(&be, SRV_CHAT, body, &g, err, sizeof err) == 0, "case %zu: %s", i, err);
        CHECKF(tc[i].prefill ? g.prefill && !strcmp(g.prefill, tc[i].prefill) : !g.prefill, "case %zu: prefill '%s'",
               i, g.prefill ? g.prefill : "(none)");
        size_t pl = tc[i].prefill ? strlen(tc[i].prefill) : 0;
        int ends = g.n_prompt >= (int)pl + 10;
        for (size_t k = 0; ends && k < pl; k++) ends = g.prompt[g.n_prompt - (int)pl + (int)k] == (unsigned char)tc[i].prefill[k];
        CHECKF(ends, "case %zu: the prompt does not end with the prefill", i);
        CHECK(g.chat_format == tc[i].format);
        CHECK((g.prompt[0] == 't') == (tc[i].format != MOEQ_CALLS_PLAIN));   /* "tools:" rendered or not */
        CHECK(g.parallel_calls == (i == 4 ? 0 : 1));
        CHECK(g.think_open == (i == 2));
        srv_gen_free(&g);
    }
    /* Coder's syntax for a named function. */
    be.chat_format = MOEQ_CALLS_QWEN3_CODER;
    snprintf(body, sizeof body, "{%s%s}", conv, tc[1].extra);
    REQUIREF(parse(&be, SRV_CHAT, body, &g, err, sizeof err) == 0, "%s", err);
    CHECK(g.prefill && !strcmp(g.prefill, "<tool_call>\n<function=get_time>\n"));
    srv_gen_free(&g);
    be.chat_format = MOEQ_CALLS_QWEN3;

    /* Penalties and logit_bias reach the sampling parameters. */
    REQUIREF(parse(&be, SRV_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"q\"}],\"frequency_penalty\":0.5,"
                   "\"presence_penalty\":-0.25,\"repeat_penalty\":1.1,\"repeat_last_n\":32,"
                   "\"logit_bias\":{\"65\":5,\"66\":false}}", &g, err, sizeof err) == 0, "%s", err);
    CHECK(g.sp.frequency_penalty == 0.5f && g.sp.presence_penalty == -0.25f && fabsf(g.sp.repeat_penalty - 1.1f) < 1e-6f);
    CHECK(g.sp.repeat_last_n == 32 && g.sp.n_bias == 2 && g.sp.bias == g.bias);
    CHECK(g.bias[0].id == 65 && g.bias[0].bias == 5 && g.bias[1].id == 66 && isinf(g.bias[1].bias) && g.bias[1].bias < 0);
    srv_gen_free(&g);
    REQUIRE(parse(&be, SRV_COMPLETION, "{\"prompt\":\"q\",\"logit_bias\":[[7,-1.5],[8,false]]}", &g, err, sizeof err) == 0);
    CHECK(g.sp.n_bias == 2 && g.bias[0].id == 7 && g.bias[0].bias == -1.5f && isinf(g.bias[1].bias));
    CHECK(g.sp.repeat_penalty == 1.0f && g.sp.repeat_last_n == 64 && g.sp.frequency_penalty == 0);
    srv_gen_free(&g);

    static const struct { const char *extra, *needle; } bad[] = {
        { ",\"tool_choice\":\"sometimes\"", "'tool_choice' must be" },
        { ",\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"nope\"}}", "'nope', which is not in 'tools'" },
        { ",\"tools\":[{\"type\":\"retrieval\"}]", "'tools[0].type'" },
        { ",\"tools\":{}", "'tools' must be an array" },
        { ",\"chat_template_kwargs\":[1]", "'chat_template_kwargs' must be an object" },
        { ",\"chat_template_kwargs\":{\"messages\":[]}", "'chat_template_kwargs.messages'" },
        { ",\"chat_template_kwargs\":{\"fail\":1}", "cannot render the chat: the template raised" },
        { ",\"parallel_tool_calls\":1", "'parallel_tool_calls' must be true or false" },
        { ",\"logit_bias\":{\"999\":1}", "'logit_bias' key '999'" },
        { ",\"logit_bias\":{\"x\":1}", "'logit_bias' key 'x'" },
        { ",\"logit_bias\":{\"5\":\"big\"}", "must be a number or false" },
        { ",\"logit_bias\":[[5]]", "'logit_bias[0]' must be [token id, bias]" },
        { ",\"logit_bias\":7", "'logit_bias' must be an object" },
        { ",\"frequency_penalty\":3", "'frequency_penalty' must be between" },
        { ",\"repeat_last_n\":-2", "'repeat_last_n' must be between" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (!strncmp(bad[i].extra, ",\"tools\"", 8))
            snprintf(body, sizeof body, "{\"messages\":[{\"role\":\"user\",\"content\":\"q\"}]%s}", bad[i].extra);
        else
            snprintf(body, sizeof body, "{%s%s}", conv, bad[i].extra);
        int rc = parse(&be, SRV_CHAT, body, &g, err, sizeof err);
        CHECKF(rc == 400 && strstr(err, bad[i].needle), "case %zu: %d '%s'", i, rc, err);
        if (rc == 0) srv_gen_free(&g);
    }
    static const struct { const char *body, *needle; } badmsg[] = {
        { "{\"messages\":[{\"role\":\"assistant\",\"tool_calls\":[{\"function\":{\"name\":\"f\",\"arguments\":\"{oops\"}}]}]}",
          "'messages[0].tool_calls[0].function.arguments' is not a JSON object" },
        { "{\"messages\":[{\"role\":\"assistant\",\"tool_calls\":[{\"function\":{\"arguments\":\"{}\"}}]}]}",
          "'messages[0].tool_calls[0].function.name'" },
        { "{\"messages\":[{\"role\":\"assistant\",\"tool_calls\":{}}]}", "'messages[0].tool_calls' must be an array" },
        { "{\"messages\":[{\"role\":\"tool\",\"tool_call_id\":3,\"content\":\"x\"}]}", "'messages[0].tool_call_id' must be a string" },
        { "{\"messages\":[{\"role\":\"tool\"}]}", "'messages[0].content' is required" },
        { "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tool_choice\":\"required\"}", "needs 'tools'" },
    };
    for (size_t i = 0; i < sizeof badmsg / sizeof badmsg[0]; i++) {
        int rc = parse(&be, SRV_CHAT, badmsg[i].body, &g, err, sizeof err);
        CHECKF(rc == 400 && strstr(err, badmsg[i].needle), "message case %zu: %d '%s'", i, rc, err);
        if (rc == 0) srv_gen_free(&g);
    }
    /* --reasoning-format none: the think block is not split out, and a
     * prompt's open one is not tracked. */
    be.reasoning_none = 1;
    snprintf(body, sizeof body, "{%s,\"chat_template_kwargs\":{\"think\":true}}", conv);
    REQUIREF(parse(&be, SRV_CHAT, body, &g, err, sizeof err) == 0, "%s", err);
    CHECK(!g.reasoning && !g.think_open && !g.prefill);
    srv_reply *r = srv_reply_new(&g, "chatcmpl-x");
    json_decref(srv_reply_feed(r, "<think>\nhmm\n</think>\n\nok", 24, 1));
    json_t *m = srv_reply_message(r);
    CHECKF(!json_object_get(m, "reasoning_content") &&
           !strcmp(json_string_value(json_object_get(m, "content")), "<think>\nhmm\n</think>\n\nok"),
           "%s", json_string_value(json_object_get(m, "content")));
    json_decref(m);
    srv_reply_free(r);
    srv_gen_free(&g);
    be.reasoning_none = 0;

    /* A template without a tool-call syntax cannot force a call. */
    be.chat_format = MOEQ_CALLS_PLAIN;
    snprintf(body, sizeof body, "{%s%s}", conv, tc[0].extra);
    CHECK(parse(&be, SRV_CHAT, body, &g, err, sizeof err) == 400 && strstr(err, "no tool-call syntax"));
}

/* A reply read whole and read in pieces (every split into two, and byte
 * by byte) gives the same message; each case's meaning is checked too. */
TEST(server_reply_splits_at_every_byte)
{
    static const struct {
        int format, parallel;
        const char *prefill, *text;
        const char *content, *reasoning;
        int n_calls;
        const char *name0, *args0;
        int malformed;
    } cases[] = {
        { MOEQ_CALLS_QWEN3, 1, NULL, "Hello, world", "Hello, world", "", 0, NULL, NULL, 0 },
        { MOEQ_CALLS_QWEN3, 1, NULL, "<think>\nfirst plan\n</think>\n\nThe answer.", "The answer.", "first plan", 0,
          NULL, NULL, 0 },
        { MOEQ_CALLS_QWEN3, 1, NULL,
          "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
          "Let me check.", "", 1, "get_weather", "{\"city\":\"Paris\"}", 0 },
        { MOEQ_CALLS_QWEN3, 1, NULL,
          "<tool_call>\n{\"name\": \"a\", \"arguments\": {}}\n</tool_call>\n<tool_call>\n{\"name\": \"b\", "
          "\"arguments\": {\"x\": [1, 2]}}\n</tool_call>", "", "", 2, "a", "{}", 0 },
        { MOEQ_CALLS_QWEN3, 0, NULL,
          "<tool_call>\n{\"name\": \"a\", \"arguments\": {}}\n</tool_call>\n<tool_call>\n{\"name\": \"b\", "
          "\"arguments\": {}}\n</tool_call>", "", "", 1, "a", "{}", 0 },
        { MOEQ_CALLS_QWEN3, 1, NULL, "Sure: <tool_call>\n{\"name\": oops}\n</tool_call>",
          "Sure:<tool_call>\n{\"name\": oops}\n</tool_call>", "", 0, NULL, NULL, 1 },
        { MOEQ_CALLS_QWEN3_CODER, 1, NULL,
          "<tool_call>\n<function=run>\n<parameter=cmd>\nls -l\n</parameter>\n<parameter=n>\n3\n</parameter>\n"
          "</function>\n</tool_call>", "", "", 1, "run", "{\"cmd\":\"ls -l\",\"n\":3}", 0 },
        { MOEQ_CALLS_QWEN3, 1, "<tool_call>\n{\"name\": \"get_time\", \"arguments\": ",
          "{\"tz\": \"UTC\"}}\n</tool_call>", "", "", 1, "get_time", "{\"tz\":\"UTC\"}", 0 },
        { MOEQ_CALLS_PLAIN, 1, NULL, "<tool_call>\n{\"name\": \"a\", \"arguments\": {}}\n</tool_call>",
          "<tool_call>\n{\"name\": \"a\", \"arguments\": {}}\n</tool_call>", "", 0, NULL, NULL, 0 },
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        struct srv_gen g = { .kind = SRV_CHAT, .chat_format = cases[c].format, .reasoning = 1,
                             .parallel_calls = cases[c].parallel, .prefill = (char *)cases[c].prefill };
        const char *t = cases[c].text;
        size_t n = strlen(t);
        /* Whole. */
        srv_reply *r = srv_reply_new(&g, "chatcmpl-abc");
        REQUIRE(r);
        struct assembled whole = {0}, msg;
        assemble_all(&whole, srv_reply_feed(r, t, n, 1));
        json_t *m = srv_reply_message(r);
        assemble_message(&msg, m);
        CHECKF(assembled_eq(&whole, &msg), "case %zu: deltas and message differ", c);
        CHECKF(!strcmp(msg.content, cases[c].content), "case %zu: content '%s'", c, msg.content);
        CHECKF(!strcmp(msg.reasoning, cases[c].reasoning), "case %zu: reasoning '%s'", c, msg.reasoning);
        CHECKF(msg.n_calls == cases[c].n_calls, "case %zu: %d calls", c, msg.n_calls);
        if (cases[c].n_calls) {
            CHECK(!strcmp(msg.name[0], cases[c].name0) && !strcmp(msg.args[0], cases[c].args0));
            CHECK(!strcmp(msg.id[0], "call_abc_0"));
            CHECK(json_is_null(json_object_get(m, "content")) == !cases[c].content[0]);
            CHECK(!strcmp(srv_reply_finish(r, "stop"), "tool_calls") && !strcmp(srv_reply_finish(r, "length"), "length"));
        } else {
            CHECK(!strcmp(srv_reply_finish(r, "stop"), "stop") && !json_object_get(m, "tool_calls"));
        }
        CHECK(srv_reply_malformed(r) == cases[c].malformed);
        json_decref(m);
        srv_reply_free(r);
        /* Two pieces at every split, then byte by byte. */
        for (size_t cut = 0; cut <= n + 1; cut++) {
            r = srv_reply_new(&g, "chatcmpl-abc");
            struct assembled a = {0};
            if (cut <= n) {
                assemble_all(&a, srv_reply_feed(r, t, cut, 0));
                assemble_all(&a, srv_reply_feed(r, t + cut, n - cut, 0));
            } else {
                for (size_t i = 0; i < n; i++) assemble_all(&a, srv_reply_feed(r, t + i, 1, 0));
            }
            assemble_all(&a, srv_reply_feed(r, NULL, 0, 1));
            CHECKF(assembled_eq(&a, &whole), "case %zu, split at %zu: content '%s' reasoning '%s' calls %d", c, cut,
                   a.content, a.reasoning, a.n_calls);
            srv_reply_free(r);
        }
    }
}

/* Events of an SSE body assembled; finish: the last finish_reason. */
static void assemble_sse(struct assembled *a, char *sse, char *finish, size_t fcap)
{
    memset(a, 0, sizeof *a);
    finish[0] = 0;
    for (char *line = strtok(sse, "\n"); line; line = strtok(NULL, "\n")) {
        if (strncmp(line, "data: {", 7) != 0) continue;
        json_t *j = json_loads(line + 6, 0, NULL);
        json_t *c = json_array_get(json_object_get(j, "choices"), 0);
        if (c) assemble(a, json_object_get(c, "delta"));
        if (json_is_string(json_object_get(c, "finish_reason")))
            snprintf(finish, fcap, "%s", json_string_value(json_object_get(c, "finish_reason")));
        json_decref(j);
    }
}

TEST(server_http_tool_calls)
{
    struct http_env e;
    env_start(&e, NULL, 1, 4, 0, 10, 1);
    const char *tools = "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\","
                        "\"parameters\":{\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\"}}}}}]";
    char body[1024], *o;
    e.f.script = "<think>\ncity first\n</think>\n\nChecking.\n<tool_call>\n{\"name\": \"get_weather\", "
                 "\"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";
    snprintf(body, sizeof body, "{\"messages\":[{\"role\":\"user\",\"content\":\"Weather in Paris?\"}],%s,"
             "\"temperature\":0}", tools);
    CHECK(http(&e, "POST", "/v1/chat/completions", body, NULL, &o) == 200);
    json_t *j = json_of(o);
    json_t *ch = json_array_get(json_object_get(j, "choices"), 0), *m = json_object_get(ch, "message");
    struct assembled plain, streamed;
    assemble_message(&plain, m);
    CHECKF(!strcmp(plain.content, "Checking.") && !strcmp(plain.reasoning, "city first"), "%s", o);
    CHECK(plain.n_calls == 1 && !strcmp(plain.name[0], "get_weather") && !strncmp(plain.id[0], "call_", 5));
    json_t *args = json_loads(plain.args[0], 0, NULL);
    CHECKF(args && !strcmp(json_string_value(json_object_get(args, "city")), "Paris"), "arguments %s", plain.args[0]);
    json_decref(args);
    CHECK(!strcmp(json_string_value(json_object_get(ch, "finish_reason")), "tool_calls"));
    json_decref(j);
    free(o);

    /* Streamed: the same message from the deltas. */
    snprintf(body, sizeof body, "{\"messages\":[{\"role\":\"user\",\"content\":\"Weather in Paris?\"}],%s,"
             "\"temperature\":0,\"stream\":true}", tools);
    CHECK(http(&e, "POST", "/v1/chat/completions", body, "-N", &o) == 200);
    char finish[32];
    assemble_sse(&streamed, o, finish, sizeof finish);
    free(o);
    /* ids differ per request; the rest is the same */
    snprintf(streamed.id[0], sizeof streamed.id[0], "%s", plain.id[0]);
    CHECKF(assembled_eq(&streamed, &plain), "streamed content '%s' reasoning '%s' calls %d bad %d", streamed.content,
           streamed.reasoning, streamed.n_calls, streamed.bad);
    CHECK(!strcmp(finish, "tool_calls"));

    /* A call that does not parse is content, never an error. */
    e.f.script = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": }\n</tool_call>";
    snprintf(body, sizeof body, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],%s,\"temperature\":0,"
             "\"stream\":true}", tools);
    /* ... and says so in the server's log: stderr, caught in a file (the
     * line is written before the reply's last event is sent) */
    const char *logf = test_tmp("server.log");
    fflush(stderr);
    int saved_err = dup(2), logfd = open(logf, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    REQUIRE(saved_err >= 0 && logfd >= 0 && dup2(logfd, 2) == 2);
    close(logfd);
    int st_mal = http(&e, "POST", "/v1/chat/completions", body, "-N", &o);
    fflush(stderr);
    dup2(saved_err, 2);
    close(saved_err);
    CHECK(st_mal == 200);
    assemble_sse(&streamed, o, finish, sizeof finish);
    free(o);
    CHECKF(!strcmp(streamed.content, e.f.script) && streamed.n_calls == 0 && !strcmp(finish, "stop"),
           "content '%s' finish %s", streamed.content, finish);
    char *logtext = test_read_file(logf, NULL);
    CHECKF(logtext && strstr(logtext, "warning: chatcmpl-") &&
           strstr(logtext, "1 tool call in the reply did not parse; sent as content"), "log: %s",
           logtext ? logtext : "(none)");
    free(logtext);

    /* tool_choice names the function: the reply starts inside the call
     * (the prefill is in the prompt, the script continues it). */
    e.f.script = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>";
    snprintf(body, sizeof body, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],%s,\"temperature\":0,"
             "\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"get_weather\"}}}", tools);
    CHECK(http(&e, "POST", "/v1/chat/completions", body, NULL, &o) == 200);
    j = json_of(o);
    assemble_message(&plain, json_object_get(json_array_get(json_object_get(j, "choices"), 0), "message"));
    CHECKF(plain.n_calls == 1 && !strcmp(plain.args[0], "{\"city\":\"Oslo\"}"), "%s", o);
    /* only the generated part counts as completion; the closed call ends
     * the reply (no end token is sampled after it) */
    CHECK(json_integer_value(json_object_get(json_object_get(j, "usage"), "completion_tokens")) ==
          (json_int_t)(strlen(e.f.script) - strlen("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": ")));
    json_decref(j);
    free(o);

    /* tool_choice constrains decoding, so a call comes out even from a model
     * that would not write one (or not this one): "required" with a model
     * that wants to answer in prose, a named function with a key it does
     * not declare. The fake then falls back on '"', '}', '{', ':' in that
     * order; the constraint allows only what keeps the call valid. */
    e.f.prefer = "\"}{:";
    const char *forced[][2] = {
        { "It is sunny in Oslo.", "\"tool_choice\":\"required\"" },
        { "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"town\": \"Oslo\"}}\n</tool_call>",
          "\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"get_weather\"}}" },
    };
    for (int k = 0; k < 2; k++)
        for (int stream = 0; stream < 2; stream++) {
            e.f.script = forced[k][0];
            snprintf(body, sizeof body, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],%s,\"temperature\":0,"
                     "\"max_tokens\":100,\"stream\":%s,%s}", tools, stream ? "true" : "false", forced[k][1]);
            CHECK(http(&e, "POST", "/v1/chat/completions", body, NULL, &o) == 200);
            char fin[32] = "";
            if (stream) {
                assemble_sse(&plain, o, fin, sizeof fin);
            } else {
                j = json_of(o);
                json_t *c0 = json_array_get(json_object_get(j, "choices"), 0);
                assemble_message(&plain, json_object_get(c0, "message"));
                snprintf(fin, sizeof fin, "%s", json_string_value(json_object_get(c0, "finish_reason")));
                json_decref(j);
            }
            CHECKF(plain.n_calls == 1 && !strcmp(plain.name[0], "get_weather") && !strcmp(plain.args[0], "{\"city\":\"\"}") &&
                   !strcmp(fin, "tool_calls") && !plain.content[0], "case %d stream %d: %d calls, %s(%s), finish %s, content '%s'",
                   k, stream, plain.n_calls, plain.name[0], plain.args[0], fin, plain.content);
            free(o);
        }
    /* "auto" is not constrained: the same model answers in prose */
    e.f.script = forced[0][0];
    snprintf(body, sizeof body, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],%s,\"temperature\":0}", tools);
    CHECK(http(&e, "POST", "/v1/chat/completions", body, NULL, &o) == 200 && strstr(o, "\"content\":\"It is sunny in Oslo.\""));
    free(o);
    e.f.prefer = NULL;

    /* /apply-template: the prompt the chat would evaluate. */
    CHECK(http(&e, "POST", "/apply-template", "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", NULL, &o) == 200);
    j = json_of(o);
    CHECKF(!strcmp(json_string_value(json_object_get(j, "prompt")), "user:hi\nassistant:"), "%s", o);
    json_decref(j);
    free(o);
    CHECK(http(&e, "POST", "/apply-template", "{\"messages\":[]}", NULL, &o) == 400 && strstr(o, "must not be empty"));
    free(o);

    /* logit_bias reaches the sampler: '#' makes the alphabet, b banned. */
    e.f.script = NULL;
    CHECK(http(&e, "POST", "/v1/completions", "{\"prompt\":\"#a\",\"max_tokens\":3,\"temperature\":0}", NULL, &o) == 200 &&
          strstr(o, "\"text\":\"bcd\""));
    free(o);
    CHECK(http(&e, "POST", "/v1/completions", "{\"prompt\":\"#a\",\"max_tokens\":3,\"temperature\":0,"
               "\"logit_bias\":{\"98\":false}}", NULL, &o) == 200 && strstr(o, "\"text\":\"cde\""));
    free(o);
    CHECK(http(&e, "POST", "/v1/completions", "{\"prompt\":\"#a\",\"max_tokens\":3,\"temperature\":0,"
               "\"logit_bias\":[[98,-100]]}", NULL, &o) == 200 && strstr(o, "\"text\":\"cde\""));
    free(o);
    CHECK(atomic_load(&e.f.bad_hist) == 0);
    srv_stop(e.s);
}

/* The fake with room for a client's conversation, attached. */
static void long_fake(struct http_env *e)
{
    e->f.long_ctx = 1;
    e->be = fake_backend(&e->f);
    char err[256];
    REQUIREF(srv_attach(e->s, &e->be, NULL, err, sizeof err) == 0, "attach: %s", err);
}

/* The official openai Node.js client (tests/serve_tools.mjs) against the
 * scripted fake: tools, streamed calls, tool_choice, a round trip. */
TEST(server_http_openai_node_tools)
{
    const char *mod = test_npm_package("openai", "tests/serve_tools.mjs");
    struct http_env e;
    env_start(&e, NULL, 2, 8, 0, 10, 0);
    long_fake(&e);
    e.f.script = "<think>\nThe user wants weather.\n</think>\n\nChecking.\n<tool_call>\n{\"name\": \"get_weather\", "
                 "\"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";
    e.f.after_tool[0] = "It is 18C and sunny in Paris.";
    char *o = NULL;
    int rc = test_run(&o, "OPENAI_MODULE=%s timeout 60 node tests/serve_tools.mjs http://127.0.0.1:%d", mod, e.port);
    CHECKF(rc == 0 && o && strstr(o, "openai-tools: ok"), "node: %d %s", rc, o ? o : "");
    free(o);
    srv_stop(e.s);
}

/* LangChain.js (tests/serve_langchain.mjs): bindTools and an agent loop of
 * two tool turns against the scripted fake. */
TEST(server_http_langchain_agent)
{
    const char *mod = test_npm_package("@langchain/openai", "tests/serve_langchain.mjs");
    (void)test_npm_package("@langchain/core", "tests/serve_langchain.mjs");
    char root[4096];
    snprintf(root, sizeof root, "%s", mod);
    *strstr(root, "/node_modules/") = 0;
    struct http_env e;
    env_start(&e, NULL, 2, 8, 0, 10, 0);
    long_fake(&e);
    e.f.script = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";
    e.f.after_tool[0] = "<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"tz\": \"Europe/Paris\"}}\n</tool_call>";
    e.f.after_tool[1] = "It is 18C and 12:00 in Paris.";
    char *o = NULL;
    int rc = test_run(&o, "NPM_ROOT=%s timeout 60 node tests/serve_langchain.mjs http://127.0.0.1:%d", root, e.port);
    CHECKF(rc == 0 && o && strstr(o, "langchain: ok"), "node: %d %s", rc, o ? o : "");
    free(o);
    srv_stop(e.s);
}
