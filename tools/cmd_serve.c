/*
 * cmd_serve.c: `moeq serve`, an OpenAI-compatible HTTP server for a model.
 *
 * This file owns the command line, the process (signals, the loader
 * thread) and the adapter that presents an engine (engine.h) to the server
 * module as a struct srv_backend. The server listens before the model is
 * loaded, so /health can say 503 while loading and 200 after, as
 * llama-server does; SIGINT/SIGTERM at any point stop it cleanly (exit 0).
 */
#include "cmd.h"
#include "engine/engine.h"
#include "server/server.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

static void usage(FILE *out)
{
    fprintf(out,
        "usage: moeq serve -m MODEL [options]\n"
        "OpenAI-compatible HTTP server: /v1/chat/completions (with tools), /v1/completions,\n"
        "/v1/models, /health, /metrics, /tokenize, /detokenize, /apply-template.\n"
        "  -m, --model FILE      the GGUF model (required)\n"
        "  -c, --ctx-size N      context per parallel sequence (default 4096)\n"
        "  --host ADDR           numeric address to bind (default 127.0.0.1)\n"
        "  --port N              port (default 8080; 0 picks a free one)\n"
        "  -np, --parallel N     sequences decoded together, one session each (default 1)\n"
        "  --queue N             requests that may wait for a sequence (default 4 x parallel,\n"
        "                        at least 8); beyond it the server answers 503\n"
        "  -t, --threads N       threads (default: all cores)\n"
        "  -b, --batch-size N    prompt tokens per evaluation step (default 512)\n"
        "  -ctk, --cache-type-k T  KV cache type for K: f16 (default) or q8_0\n"
        "  -ctv, --cache-type-v T  KV cache type for V: f16 (default) or q8_0\n"
        "  --api-key KEY         require 'Authorization: Bearer KEY' (not for /health);\n"
        "                        MOEQ_API_KEY in the environment does the same\n"
        "  --timeout S           a connection silent this long while its reply is made or\n"
        "                        written is closed (default 600)\n"
        "  --request-timeout S   a request's head and body must arrive whole within S seconds\n"
        "                        of the connection opening or its previous reply ending, or\n"
        "                        it is cut with 408; trickling bytes does not extend it\n"
        "                        (default 30)\n"
        "  --idle-timeout S      a connection with no request under way is closed after S\n"
        "                        seconds (default 5)\n"
        "  --max-conns N         open connections in all (default 256)\n"
        "  --max-conns-per-ip N  open connections from one client address (default 64); at\n"
        "                        either cap a new connection closes the one that has been\n"
        "                        idle or sending its request the longest (never one being\n"
        "                        answered), or is refused if there is none\n"
        "  --max-body BYTES      request body limit (default 8M)\n"
        "  --alias NAME          model id in responses (default: the file name)\n"
        "  --reasoning-format F  deepseek (default): a reply's <think> block goes to\n"
        "                        message.reasoning_content; none: it stays in the content\n"
        "  -ngl N                accepted for llama-server compatibility; ignored (CPU engine)\n"
        "  -q, -v, --log-level L  quiet (errors only on stderr), verbose, or\n"
        "                        error|warn|info|debug\n"
        "Sampling defaults when a request leaves them out: temperature 0.8, top_k 40,\n"
        "top_p 0.95, min_p 0.05 (llama-server's).\n");
}

/* ======================================================================
 * The engine as a server backend
 * ====================================================================== */

struct eng {
    moeq_engine *e;
    int n_vocab;
    moeq_session **dec;          /* scratch for decode, n_seq long */
};

struct eng_sess {
    moeq_session *s;
    struct moeq_sampler sp;      /* keeps its candidate buffer between tokens */
};

static int be_tokenize(void *ud, const char *text, size_t len, int parse_special, int32_t *out, int max)
{
    return moeq_tokenize(((struct eng *)ud)->e, text, len, parse_special, out, max);
}

static int be_piece(void *ud, int32_t tok, char *buf, int cap)
{
    return moeq_token_piece(((struct eng *)ud)->e, tok, buf, cap);
}

static int be_is_eog(void *ud, int32_t tok) { return moeq_token_is_eog(((struct eng *)ud)->e, tok); }

static char *be_render(void *ud, json_t *ctx, char *err, size_t errlen)
{
    return moeq_chat_render_json(((struct eng *)ud)->e, ctx, err, errlen);
}

static void *be_session_new(void *ud, char *err, size_t errlen)
{
    struct eng_sess *s = calloc(1, sizeof *s);
    if (!s) { snprintf(err, errlen, "out of memory"); return NULL; }
    s->s = moeq_session_new(((struct eng *)ud)->e, err, errlen);
    if (!s->s) { free(s); return NULL; }
    return s;
}

static void be_session_free(void *ud, void *sp)
{
    (void)ud;
    struct eng_sess *s = sp;
    moeq_sampler_free(&s->sp);
    moeq_session_free(s->s);
    free(s);
}

static int be_sync(void *ud, void *sp, const int32_t *t, int n)
{
    (void)ud;
    return moeq_session_sync(((struct eng_sess *)sp)->s, t, n);
}

static int be_eval(void *ud, void *sp, const int32_t *t, int n, char *err, size_t errlen)
{
    (void)ud;
    return moeq_session_eval(((struct eng_sess *)sp)->s, t, n, NULL, err, errlen);
}

static const float *be_logits(void *ud, void *sp)
{
    (void)ud;
    return moeq_session_logits(((struct eng_sess *)sp)->s);
}

static int be_decode(void *ud, void **ss, const int32_t *t, int n, char *err, size_t errlen)
{
    struct eng *g = ud;
    for (int i = 0; i < n; i++) g->dec[i] = ((struct eng_sess *)ss[i])->s;
    return moeq_engine_decode(g->e, g->dec, t, n, err, errlen);
}

static int32_t be_sample(void *ud, void *sp, const struct srv_sampling *p, uint64_t *rng, const float *lg,
                         const int32_t *hist, int n_hist)
{
    _Static_assert(sizeof(struct srv_bias) == sizeof(struct moeq_logit_bias), "logit bias layouts must agree");
    struct eng_sess *s = sp;
    s->sp.temp = p->temp;
    s->sp.top_k = p->top_k;
    s->sp.top_p = p->top_p;
    s->sp.min_p = p->min_p;
    s->sp.repeat_penalty = p->repeat_penalty;
    s->sp.repeat_last_n = p->repeat_last_n;
    s->sp.frequency_penalty = p->frequency_penalty;
    s->sp.presence_penalty = p->presence_penalty;
    s->sp.bias = (const struct moeq_logit_bias *)p->bias;
    s->sp.n_bias = p->n_bias;
    s->sp.rng = *rng;
    int32_t t = moeq_sample_hist(&s->sp, lg, ((struct eng *)ud)->n_vocab, hist, n_hist);
    *rng = s->sp.rng;
    return t;
}

/* ======================================================================
 * Loading in the background
 * ====================================================================== */

struct loader {
    struct moeq_engine_params ep;
    srv        *server;
    struct eng  eng;
    atomic_int  state;           /* 0 loading, 1 serving, -1 failed */
    char        err[512];
};

static void *load_main(void *arg)
{
    struct loader *L = arg;
    moeq_engine *e = moeq_engine_open(&L->ep, L->err, sizeof L->err);
    if (!e) { atomic_store(&L->state, -1); return NULL; }
    const struct moeq_model_info *mi = moeq_engine_info(e);
    L->eng.e = e;
    L->eng.n_vocab = mi->n_vocab;
    L->eng.dec = calloc((size_t)L->ep.n_seq, sizeof *L->eng.dec);
    /* The context each session really has (the engine may clamp it). */
    moeq_session *probe = moeq_session_new(e, L->err, sizeof L->err);
    if (!L->eng.dec || !probe) {
        if (!L->eng.dec) snprintf(L->err, sizeof L->err, "out of memory");
        atomic_store(&L->state, -1);
        return NULL;
    }
    int n_ctx = moeq_session_n_ctx(probe);
    moeq_session_free(probe);
    int think = 0, format = moeq_chat_format(e, &think);

    struct srv_backend be = {
        .ud = &L->eng, .n_vocab = mi->n_vocab, .n_ctx = n_ctx, .n_batch = L->ep.n_batch,
        .add_bos = mi->add_bos, .bos = mi->bos, .chat_format = format, .chat_think = think,
        .tokenize = be_tokenize, .piece = be_piece, .is_eog = be_is_eog, .chat_render = be_render,
        .session_new = be_session_new, .session_free = be_session_free, .session_sync = be_sync,
        .session_eval = be_eval, .session_logits = be_logits, .decode = be_decode, .sample = be_sample,
    };
    json_t *meta = json_pack("{s:s,s:s,s:i,s:i,s:i,s:i,s:i,s:I,s:I,s:i}", "arch", mi->arch, "name", mi->name,
                             "n_ctx", n_ctx, "n_ctx_train", mi->n_ctx_train, "n_vocab", mi->n_vocab,
                             "n_expert", mi->n_expert, "n_expert_used", mi->n_expert_used,
                             "n_params", (json_int_t)mi->n_params, "size", (json_int_t)mi->weight_bytes,
                             "parallel", L->ep.n_seq);
    int rc = srv_attach(L->server, &be, meta, L->err, sizeof L->err);
    json_decref(meta);
    atomic_store(&L->state, rc == 0 ? 1 : -1);
    return NULL;
}

int cmd_serve(int argc, char **argv)
{
    const char *model = NULL, *host = "127.0.0.1", *api_key = getenv("MOEQ_API_KEY"), *alias = NULL;
    int64_t ctx = 4096, port = 8080, parallel = 1, threads = 0, timeout = 600, queue = -1, batch = 512;
    int64_t req_timeout = 30, idle_timeout = 5, max_conns = 256, max_per_ip = 64;
    uint64_t max_body = 8u << 20;
    int type_k = MOEQ_KV_F16, type_v = MOEQ_KV_F16, reasoning_none = 0;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (cli_is_help(a)) { usage(stdout); return 0; }
        CLI_LOG_OPTION("serve", argc, argv, i);
        if (i + 1 >= argc) return cli_usage_error("serve", "%s needs a value or is unknown", a);
        const char *v = argv[++i];
        int64_t *num = NULL, lo = 0, hi = 0;
        int kv;
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) model = v;
        else if (!strcmp(a, "--host")) host = v;
        else if (!strcmp(a, "--api-key")) api_key = v;
        else if (!strcmp(a, "--alias")) alias = v;
        else if (!strcmp(a, "--reasoning-format")) {
            if (strcmp(v, "deepseek") && strcmp(v, "none"))
                return cli_usage_error("serve", "--reasoning-format wants deepseek or none, got '%s'", v);
            reasoning_none = !strcmp(v, "none");
        }
        else if (!strcmp(a, "-c") || !strcmp(a, "--ctx-size")) { num = &ctx; lo = 16; hi = 1 << 22; }
        else if (!strcmp(a, "--port")) { num = &port; lo = 0; hi = 65535; }
        else if (!strcmp(a, "-np") || !strcmp(a, "--parallel")) { num = &parallel; lo = 1; hi = 256; }
        else if (!strcmp(a, "--queue")) { num = &queue; lo = 0; hi = 100000; }
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) { num = &threads; lo = 0; hi = 4096; }
        else if (!strcmp(a, "-b") || !strcmp(a, "--batch-size")) { num = &batch; lo = 1; hi = 1 << 16; }
        else if (!strcmp(a, "--timeout")) { num = &timeout; lo = 1; hi = 86400; }
        else if (!strcmp(a, "--request-timeout")) { num = &req_timeout; lo = 1; hi = 86400; }
        else if (!strcmp(a, "--idle-timeout")) { num = &idle_timeout; lo = 1; hi = 86400; }
        else if (!strcmp(a, "--max-conns")) { num = &max_conns; lo = 1; hi = 100000; }
        else if (!strcmp(a, "--max-conns-per-ip")) { num = &max_per_ip; lo = 1; hi = 100000; }
        else if (!strcmp(a, "-ngl") || !strcmp(a, "--n-gpu-layers")) { int64_t x; if (cli_parse_i64(v, &x)) return cli_usage_error("serve", "%s wants an integer, got '%s'", a, v); }
        else if (!strcmp(a, "--max-body")) {
            if (cli_parse_size(v, &max_body) || max_body < 1024)
                return cli_usage_error("serve", "--max-body wants a size of at least 1024 bytes, got '%s'", v);
        } else if ((kv = cli_kv_option(a, v, &type_k, &type_v)) != 0) {
            if (kv < 0) return cli_usage_error("serve", "%s wants f16 or q8_0, got '%s'", a, v);
        } else return cli_usage_error("serve", "unknown option '%s'", a);
        if (num && (cli_parse_i64(v, num) || *num < lo || *num > hi))
            return cli_usage_error("serve", "%s wants an integer in [%lld, %lld], got '%s'", a, (long long)lo,
                                   (long long)hi, v);
    }
    if (!model) return cli_usage_error("serve", "-m MODEL is required");
    if (queue < 0) queue = parallel * 4 > 8 ? parallel * 4 : 8;
    if (!alias) {
        const char *slash = strrchr(model, '/');
        alias = slash ? slash + 1 : model;
    }

    /* Every thread started from here on inherits this mask, so the
     * signals are taken only by sigtimedwait below. SIGPIPE: a client
     * gone mid-write must not kill the server. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    struct srv_config c = { .host = host, .port = (int)port, .parallel = (int)parallel, .queue = (int)queue,
                            .api_key = api_key, .timeout_s = (int)timeout, .max_body = (size_t)max_body,
                            .alias = alias, .request_timeout_s = (int)req_timeout,
                            .idle_timeout_s = (int)idle_timeout, .max_conns = (int)max_conns,
                            .max_conns_per_ip = (int)max_per_ip, .reasoning_none = reasoning_none };
    /* A descriptor per connection (and room for those being closed):
     * raise the soft limit toward the hard one if it is short. */
    struct rlimit rl;
    rlim_t want = (rlim_t)max_conns * 2 + 64;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < want) {
        rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > want ? want : rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    char err[512];
    srv *s = srv_start(&c, err, sizeof err);
    if (!s) { cli_error("serve: %s", err); return 1; }
    int v6 = strchr(host, ':') != NULL;
    cli_info("serve: listening on http://%s%s%s:%d (loading %s)",
            v6 ? "[" : "", host, v6 ? "]" : "", srv_port(s), model);

    struct loader *L = calloc(1, sizeof *L);
    if (!L) { srv_stop(s); cli_error("serve: out of memory"); return 1; }
    L->server = s;
    L->ep = (struct moeq_engine_params){ .model_path = model, .n_threads = (int)threads, .n_ctx = (int)ctx,
                                         .n_seq = (int)parallel, .type_k = type_k, .type_v = type_v,
                                         .n_batch = (int)batch };
    pthread_t th;
    int prc = pthread_create(&th, NULL, load_main, L);
    if (prc != 0) {
        srv_stop(s);
        free(L);
        cli_error("serve: cannot start the loader thread: %s", strerror(prc));
        return 1;
    }

    int rc = 0, announced = 0;
    for (;;) {
        struct timespec ts = { 0, 200 * 1000000L };
        int sig = sigtimedwait(&set, NULL, &ts);
        if (sig == SIGINT || sig == SIGTERM) {
            cli_info("serve: %s, stopping", sig == SIGINT ? "SIGINT" : "SIGTERM");
            break;
        }
        int st = atomic_load(&L->state);
        if (st < 0) {
            cli_error("serve: %s", L->err);
            rc = 1;
            break;
        }
        if (st == 1 && !announced) {
            cli_info("serve: model loaded, serving as '%s' with %d parallel sequence%s",
                    alias, (int)parallel, parallel > 1 ? "s" : "");
            announced = 1;
        }
    }
    /* The loader cannot be interrupted mid-load; wait for it, then stop
     * the server (which ends the running requests) before the engine
     * goes. */
    pthread_join(th, NULL);
    srv_stop(s);
    free(L->eng.dec);
    if (L->eng.e) moeq_engine_close(L->eng.e);
    free(L);
    return rc;
}
