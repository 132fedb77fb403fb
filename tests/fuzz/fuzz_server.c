/*
 * fuzz_server.c: libFuzzer harness for the server's request parser (`make
 * fuzz-server`): a request body in, a validated generation request out,
 * with no model. The backend has only what parsing calls: the tokenizer of
 * fuzz.h for tokenize, piece and the chat template.
 *
 * The input is the body of both /v1/chat/completions and /v1/completions
 * (srv_parse_body, then srv_parse_gen). The promises checked: a refusal is
 * a 400 with a one-line message that srv_error_json turns into JSON; an
 * accepted request has a prompt of valid ids that leaves room in the
 * context, a max_tokens within that room, sampling values in range, and
 * non-empty NUL-free stop strings, which then cut the prompt's own text in
 * srv_text as generated text would be cut; that text, read as a chat reply
 * (srv_reply: tool calls, reasoning, the tool_choice prefill), gives a
 * message that is valid JSON; and a forced call's decoding constraint
 * (chat_constrain.h) fed that text token by token agrees with itself:
 * what it allows it accepts, what it refuses it refuses, and once the
 * call is closed it allows anything.
 */
#include "fuzz.h"
#include "model/chat_constrain.h"
#include "model/chat_parse.h"
#include "server/server.h"

static int srvf_tokenize(void *ud, const char *text, size_t len, int parse_special, int32_t *out, int max)
{
    return moeq_tokenizer_encode(ud, text, len, parse_special, out, max);
}

static int srvf_piece(void *ud, int32_t tok, char *buf, int cap)
{
    return moeq_tokenizer_piece(ud, tok, buf, cap);
}

static int srvf_is_eog(void *ud, int32_t tok) { return moeq_tokenizer_is_eog(ud, tok); }

static char *srvf_render(void *ud, json_t *ctx, char *err, size_t errlen)
{
    return moeq_tokenizer_chat_render_json(ud, ctx, err, errlen);
}

static void srvf_check_error(int status, const char *err)
{
    FUZZ_ASSERT(err[0] && !strchr(err, '\n'));
    char *j = srv_error_json(status, err);
    FUZZ_ASSERT(j);
    json_error_t je;
    json_t *v = json_loads(j, 0, &je);
    FUZZ_ASSERT(v && json_is_object(v));
    json_decref(v);
    free(j);
}

/* The stop strings cut the prompt's text as they would cut generated text. */
static void srvf_check_text(const struct srv_backend *be, const struct srv_gen *g)
{
    struct srv_text t;
    srv_text_init(&t, g->stop, g->n_stop);
    size_t ready = 0;
    for (int i = 0; i < g->n_prompt && !t.stopped; i++) {
        char buf[256];
        int n = be->piece(be->ud, g->prompt[i], buf, sizeof buf);
        FUZZ_ASSERT(n >= 0 && n <= (int)sizeof buf);
        if (g->call_con && n > 0) {
            int done = moeq_call_con_done(g->call_con), ok = moeq_call_con_allows(g->call_con, buf, (size_t)n);
            FUZZ_ASSERT(!done || ok);
            FUZZ_ASSERT(moeq_call_con_feed(g->call_con, buf, (size_t)n) == ok);
        }
        FUZZ_ASSERT(srv_text_push(&t, buf, (size_t)n) >= 0);
        FUZZ_ASSERT(t.ready >= ready && t.ready <= t.len);
        ready = t.ready;
    }
    srv_text_finish(&t);
    for (int i = 0; i < g->n_stop; i++)
        FUZZ_ASSERT(!t.len || !memmem(t.buf, t.len, g->stop[i], strlen(g->stop[i])));
    /* A chat reply made of that text, read as the request says (calls,
     * reasoning, prefill), gives a message of valid JSON in both halves. */
    if (g->kind == SRV_CHAT) {
        srv_reply *r = srv_reply_new(g, "chatcmpl-fuzz");
        FUZZ_ASSERT(r);
        json_t *a = srv_reply_feed(r, t.buf ? t.buf : "", t.len / 2, 0);
        json_t *b = srv_reply_feed(r, t.buf ? t.buf + t.len / 2 : "", t.len - t.len / 2, 1);
        FUZZ_ASSERT(a && b);
        json_t *m = srv_reply_message(r);
        char *js = m ? json_dumps(m, JSON_COMPACT) : NULL;
        FUZZ_ASSERT(js);
        free(js);
        json_decref(m);
        json_decref(a);
        json_decref(b);
        srv_reply_free(r);
    }
    srv_text_free(&t);
}

static void srvf_check_gen(const struct srv_backend *be, const struct srv_gen *g)
{
    FUZZ_ASSERT(g->prompt && g->n_prompt > 0 && g->n_prompt < be->n_ctx);
    for (int i = 0; i < g->n_prompt; i++) FUZZ_ASSERT(g->prompt[i] >= 0 && g->prompt[i] < be->n_vocab);
    FUZZ_ASSERT(g->max_tokens >= 1 && g->max_tokens <= be->n_ctx - g->n_prompt);
    FUZZ_ASSERT(g->sp.temp >= 0 && g->sp.temp <= 2 && g->sp.top_p >= 0 && g->sp.top_p <= 1);
    FUZZ_ASSERT(g->sp.min_p >= 0 && g->sp.min_p <= 1 && g->sp.top_k >= 0);
    FUZZ_ASSERT(g->top_logprobs >= 0 && g->top_logprobs <= SRV_MAX_TOP_LOGPROBS);
    FUZZ_ASSERT(g->n_stop >= 0 && g->n_stop <= SRV_MAX_STOP);
    for (int i = 0; i < g->n_stop; i++) FUZZ_ASSERT(g->stop[i] && g->stop[i][0]);
    FUZZ_ASSERT(!g->include_usage || g->stream);
    srvf_check_text(be, g);
}

FUZZ_ENTRY(server)
{
    const moeq_tokenizer *tok = fuzz_tokenizer();
    struct moeq_token_specials sp;
    moeq_tokenizer_specials(tok, &sp);
    struct srv_backend be = {
        .ud = (void *)tok, .n_vocab = moeq_tokenizer_n_vocab(tok), .n_ctx = 512, .n_batch = 64,
        .bos = sp.bos, .tokenize = srvf_tokenize, .piece = srvf_piece, .is_eog = srvf_is_eog,
        .chat_render = srvf_render,
        /* The template is ChatML, but replies are read as Qwen3's (calls,
         * <think>) so tool_choice's prefill and the reply parser are
         * reached too. */
        .chat_format = MOEQ_CALLS_QWEN3, .chat_think = 1,
    };
    char err[512] = "";
    json_t *body = srv_parse_body((const char *)data, size, err, sizeof err);
    if (!body) {
        srvf_check_error(400, err);
        return 0;
    }
    for (int k = 0; k < 2; k++) {
        enum srv_kind kind = k ? SRV_COMPLETION : SRV_CHAT;
        be.add_bos = k;   /* both prompt shapes, with and without a BOS */
        struct srv_gen g;
        err[0] = 0;
        int st = srv_parse_gen(&be, kind, body, &g, err, sizeof err);
        if (st) {
            FUZZ_ASSERT(st == 400);
            srvf_check_error(st, err);
            continue;
        }
        srvf_check_gen(&be, &g);
        srv_gen_free(&g);
    }
    json_decref(body);
    return 0;
}
