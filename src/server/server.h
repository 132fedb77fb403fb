/*
 * server.h: the OpenAI-compatible HTTP server behind `moeq serve`.
 *
 * The server knows nothing of tensors or kernels. It drives a model through
 * a small table of functions (struct srv_backend) that mirrors engine.h:
 * tools/cmd_serve.c fills it from a loaded engine, and the unit tests fill
 * it with a fake model, so request parsing, JSON shaping, stop strings, the
 * scheduler and the HTTP layer are all tested without a model file.
 *
 * Three parts, three files:
 *   server_proto.c  requests in (validation, the chat template's context),
 *                   responses out (JSON, SSE), generated text (stop
 *                   strings, UTF-8 boundaries), chat replies (content,
 *                   reasoning, tool calls)
 *   server_sched.c  the scheduler: N slots (sessions), a bounded queue,
 *                   one batched decode step for all active slots
 *   server_http.c   libmicrohttpd glue: routing, auth, body limits,
 *                   streaming, disconnects, metrics, shutdown, and the
 *                   connection table (caps, deadlines, eviction)
 */
#ifndef MOEQ_SERVER_H
#define MOEQ_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

/* ---- the model, as the server sees it ---- */

/* A logit bias (same layout as engine.h's struct moeq_logit_bias). */
struct srv_bias { int32_t id; float bias; };

/* Sampling parameters of one request (engine semantics: temp <= 0 greedy,
 * top_k <= 0 off, top_p >= 1 off, min_p <= 0 off; the penalties look at
 * the last repeat_last_n tokens of the history, -1 all of it, and are off
 * at repeat_penalty 1 and frequency/presence 0; bias adds to the logits,
 * -INFINITY bans). */
struct srv_sampling {
    float temp, top_p, min_p;
    int   top_k;
    float repeat_penalty, frequency_penalty, presence_penalty;
    int   repeat_last_n;
    const struct srv_bias *bias;  /* n_bias entries, owned by the request */
    int   n_bias;
};

/*
 * Every call except tokenize/piece/is_eog/chat_render comes from the one
 * scheduler thread; those four are also called from HTTP threads and must
 * be safe to call concurrently (they only read the vocabulary).
 * Sessions are opaque pointers owned by the backend.
 */
struct srv_backend {
    void *ud;
    int   n_vocab;
    int   n_ctx;        /* per session */
    int   n_batch;      /* prompt tokens per eval call (chunked prefill) */
    int   add_bos;
    int32_t bos;

    int   (*tokenize)(void *ud, const char *text, size_t len, int parse_special,
                      int32_t *out, int max);
    int   (*piece)(void *ud, int32_t tok, char *buf, int cap);
    int   (*is_eog)(void *ud, int32_t tok);
    /* The model's chat template over a full context (borrowed): messages as
     * the template sees them (tool_calls with object arguments, tool
     * results), tools, add_generation_prompt and chat_template_kwargs'
     * keys. malloc'd text, or NULL with err set. */
    char *(*chat_render)(void *ud, json_t *ctx, char *err, size_t errlen);
    int   chat_format;  /* enum moeq_chat_format (chat_parse.h): the tool-call syntax */
    int   chat_think;   /* the template has <think> reasoning */
    int   reasoning_none; /* --reasoning-format none: <think> stays in the content */

    void *(*session_new)(void *ud, char *err, size_t errlen);
    void  (*session_free)(void *ud, void *s);
    int   (*session_sync)(void *ud, void *s, const int32_t *toks, int n);
    int   (*session_eval)(void *ud, void *s, const int32_t *toks, int n, char *err, size_t errlen);
    const float *(*session_logits)(void *ud, void *s);
    int   (*decode)(void *ud, void **ss, const int32_t *toks, int n, char *err, size_t errlen);
    /* hist: the session's tokens (prompt and reply so far), for the penalties. */
    int32_t (*sample)(void *ud, void *s, const struct srv_sampling *p, uint64_t *rng,
                      const float *logits, const int32_t *hist, int n_hist);
};

/* ---- requests (server_proto.c) ---- */

enum srv_kind { SRV_CHAT, SRV_COMPLETION };

#define SRV_MAX_STOP 16
#define SRV_MAX_TOP_LOGPROBS 20

/* A validated generation request. */
struct srv_gen {
    enum srv_kind kind;
    int32_t *prompt;              /* tokens, malloc'd */
    int      n_prompt;
    int      max_tokens;          /* > 0 */
    struct srv_sampling sp;
    uint64_t seed;
    int      has_seed;
    char    *stop[SRV_MAX_STOP];  /* malloc'd */
    int      n_stop;
    int      stream, include_usage;
    int      logprobs, top_logprobs;
    int      ignore_eos;          /* llama-server extension: never sample an end token */
    struct srv_bias *bias;        /* logit_bias, malloc'd (sp.bias points here) */
    /* How a chat reply is read (SRV_CHAT): */
    int      chat_format;         /* tool-call syntax to parse (PLAIN: none, e.g. tool_choice "none") */
    int      reasoning;           /* split <think> into reasoning_content */
    int      think_open;          /* the prompt left a <think> block open */
    int      parallel_calls;      /* 0: parallel_tool_calls false, keep the first call */
    char    *prefill;             /* the reply's forced start (tool_choice), already in the
                                     prompt; the parser reads it as generated. malloc'd */
    json_t  *tools;               /* the request's tools (owned), for parameter types */
    struct moeq_call_con *call_con; /* tool_choice required or named: decoding is constrained
                                     to one complete call (chat_constrain.h), owned */
};

/*
 * Validate a request body (a parsed JSON value) for /v1/chat/completions or
 * /v1/completions, render and tokenize its prompt. Returns 0, or the HTTP
 * status to answer (400) with a one-line message in err. On error *g holds
 * nothing to free; on success release it with srv_gen_free.
 */
int  srv_parse_gen(const struct srv_backend *be, enum srv_kind kind, const json_t *body,
                   struct srv_gen *g, char *err, size_t errlen);
void srv_gen_free(struct srv_gen *g);

/* POST /apply-template: the chat request's messages, tools and
 * chat_template_kwargs rendered as the prompt (malloc'd). Returns 0, or 400
 * with a one-line message. */
int  srv_apply_template(const struct srv_backend *be, const json_t *body, char **prompt,
                        char *err, size_t errlen);

/* Parse a body (bytes) into a JSON object; NULL with a one-line message on error. */
json_t *srv_parse_body(const char *body, size_t len, char *err, size_t errlen);

/* {"error":{"message","type","code"}} for an HTTP status; malloc'd text. */
char *srv_error_json(int status, const char *message);

/* ---- generated text (server_proto.c) ---- */

/*
 * The text of one completion as tokens arrive. Stop strings may span token
 * boundaries, so the tail that could still become a stop string is held
 * back, and so is an incomplete UTF-8 sequence at the end; `ready` says how
 * many bytes can be shown to the client now.
 */
struct srv_text {
    char  *buf;
    size_t len, cap;
    size_t ready;                 /* bytes [0, ready) are final */
    char *const *stop;
    int    n_stop;
    int    stopped;               /* a stop string matched; buf ends before it */
};
void srv_text_init(struct srv_text *t, char *const *stop, int n_stop);
void srv_text_free(struct srv_text *t);
/* Append a token's bytes; returns 1 when a stop string has matched (the
 * text is cut before it), 0 otherwise, -1 on allocation failure. */
int  srv_text_push(struct srv_text *t, const char *p, size_t n);
/* Generation ended: everything left is final. */
void srv_text_finish(struct srv_text *t);
/* Copy of p[0..n) with invalid UTF-8 replaced by U+FFFD (malloc'd,
 * NUL-terminated; *outlen gets its length). */
char *srv_utf8_clean(const char *p, size_t n, size_t *outlen);

/* ---- responses (server_proto.c) ---- */

struct srv_tokprob {
    int32_t tok;
    float   lp;
    int     n_top;
    int32_t top_tok[SRV_MAX_TOP_LOGPROBS];
    float   top_lp[SRV_MAX_TOP_LOGPROBS];
};

struct srv_usage { int prompt, completion, cached; };

/* The logprobs object of a choice for tokens probs[0..n), in the chat shape
 * ({"content":[...]}) or the completions shape ({"tokens", ...}). text_base
 * is the text offset of the first token (completions). */
json_t *srv_logprobs_json(const struct srv_backend *be, enum srv_kind kind,
                          const struct srv_tokprob *probs, int n, size_t text_base);

json_t *srv_usage_json(const struct srv_usage *u);

/* A whole (non-streamed) response. finish: "stop", "length" or
 * "tool_calls". message (chat, stolen): the message object (see
 * srv_reply_message); NULL makes one of text as its content. */
json_t *srv_response_json(enum srv_kind kind, const char *id, long long created,
                          const char *model, const char *text, size_t len, json_t *message,
                          const char *finish, json_t *logprobs /* stolen, may be NULL */,
                          const struct srv_usage *u);

/*
 * One streamed chunk as SSE text ("data: {...}\n\n", malloc'd). role and
 * finish may be NULL; text may be NULL (no content field); usage, when
 * non-NULL, makes this the usage-only chunk ("choices": []); with
 * include_usage set, other chunks carry "usage": null.
 */
char *srv_sse_chunk(enum srv_kind kind, const char *id, long long created, const char *model,
                    const char *role, const char *text, size_t len, const char *finish,
                    json_t *logprobs /* stolen */, int include_usage,
                    const struct srv_usage *usage);

/* A chat chunk with a delta object (stolen; NULL: {}), e.g. from srv_reply_feed. */
char *srv_sse_delta(const char *id, long long created, const char *model, json_t *delta,
                    const char *finish, json_t *logprobs /* stolen */, int include_usage);

/* ---- chat replies (server_proto.c) ---- */

/*
 * What a chat reply means, read as it is generated (chat_parse.h):
 * content, reasoning_content (<think>, unless --reasoning-format none) and
 * tool calls in the template's syntax, with the request's tool_choice
 * prefill read first as if generated. A call that does not parse stays
 * content and is counted (srv_reply_malformed) for the log.
 */
typedef struct srv_reply srv_reply;
/* id: the request's id; call ids ("call_...") derive from it. */
srv_reply *srv_reply_new(const struct srv_gen *g, const char *id);
void       srv_reply_free(srv_reply *r);
/* The next n bytes of the reply (final: it has ended; flush what was held
 * back). Returns the stream's deltas for them, in order, as a JSON array
 * of delta objects ({"content"}, {"reasoning_content"}, and per call
 * {"tool_calls":[{index, id, type, function:{name, arguments:""}}]} then
 * {"tool_calls":[{index, function:{arguments}}]}); NULL when out of memory. */
json_t    *srv_reply_feed(srv_reply *r, const char *text, size_t n, int final);
/* The whole message so far: {role, content (null when only calls),
 * reasoning_content?, tool_calls?} (a new reference). */
json_t    *srv_reply_message(const srv_reply *r);
/* "tool_calls" for a reply that stopped after making calls, else finish. */
const char *srv_reply_finish(const srv_reply *r, const char *finish);
int        srv_reply_malformed(const srv_reply *r);

/* ---- scheduler (server_sched.c) ---- */

typedef struct srv_sched srv_sched;
typedef struct srv_job   srv_job;

/*
 * A job is shared by the HTTP thread that submitted it and the scheduler;
 * both hold a reference. The HTTP side reads its progress under the job's
 * lock (srv_job_wait) and may cancel it at any time.
 */
struct srv_job_view {
    const char *text;             /* generated text (valid while locked) */
    size_t      ready;            /* bytes final so far */
    const struct srv_tokprob *probs;
    int         n_probs;
    int         done;             /* 1: finished (finish/err set) */
    const char *finish;           /* "stop", "length", or NULL on error */
    const char *err;              /* engine failure or shutdown */
    int         err_status;
    struct srv_usage usage;
};

/* Start the scheduler over backend be with n_slots sessions (created now)
 * and a queue of queue_max waiting requests. NULL with err set. */
srv_sched *srv_sched_new(const struct srv_backend *be, int n_slots, int queue_max,
                         char *err, size_t errlen);
/* Stop: end every running and waiting job (503 "shutting down"), join
 * the thread; submit fails from then on. */
void srv_sched_stop(srv_sched *s);
/* Stop if needed, then free the sessions. */
void srv_sched_free(srv_sched *s);

/* Submit a request (ownership of g moves in). NULL when the queue is full
 * (g is then released) or the scheduler is stopping. */
srv_job *srv_sched_submit(srv_sched *s, struct srv_gen *g);
void     srv_job_cancel(srv_job *j);
void     srv_job_release(srv_job *j);
/* Wait until the job has news beyond (seen_ready, seen_probs) or is done,
 * at most timeout_ms; fill *v under the job's lock and return with the
 * lock held: call srv_job_unlock after reading. Returns 1 when there is
 * news, 0 on timeout. */
int  srv_job_wait(srv_job *j, size_t seen_ready, int seen_probs, int timeout_ms,
                  struct srv_job_view *v);
void srv_job_unlock(srv_job *j);
const struct srv_gen *srv_job_gen(const srv_job *j);

struct srv_stats {
    uint64_t prompt_tokens, prompt_cached, gen_tokens;
    double   prompt_seconds, gen_seconds;  /* time spent in eval / decode */
    uint64_t decode_steps, decode_rows;    /* rows/steps = mean batch */
    int      active, queued, n_slots, queue_max;
    uint64_t kv_used, kv_total;
    uint64_t finished, cancelled, rejected;
};
void srv_sched_stats(srv_sched *s, struct srv_stats *st);

/* ---- HTTP server (server_http.c) ---- */

struct srv_config {
    const char *host;       /* numeric IPv4/IPv6 address to bind */
    int         port;       /* 0: any free port (see srv_port) */
    int         parallel;   /* slots */
    int         queue;      /* waiting requests beyond the slots */
    const char *api_key;    /* NULL: no auth */
    int         timeout_s;  /* a connection silent this long is closed */
    size_t      max_body;   /* request body limit in bytes */
    const char *alias;      /* model id in responses */
    int         reasoning_none; /* --reasoning-format none: <think> stays in content */
    /* Slow and idle clients (0: the default in parentheses). */
    int         request_timeout_s;  /* head and body must arrive within (30) */
    int         idle_timeout_s;     /* a connection between requests (5) */
    int         max_conns;          /* connections in all (256) */
    int         max_conns_per_ip;   /* connections from one address (64) */
};

typedef struct srv srv;

/* Bind and serve; /health answers 503 until srv_attach. NULL with err. */
srv *srv_start(const struct srv_config *c, char *err, size_t errlen);
int  srv_port(const srv *s);
/* Attach a loaded model: create the slots and start the scheduler. meta
 * (borrowed, may be NULL) is shown as "meta" in /v1/models. */
int  srv_attach(srv *s, const struct srv_backend *be, const json_t *meta, char *err, size_t errlen);
/* Stop accepting, cancel running work, close connections, free. */
void srv_stop(srv *s);

#endif
