/*
 * server_http.c: the HTTP side of `moeq serve`, on libmicrohttpd.
 *
 * MHD runs one thread per connection, so a handler may block while its
 * request waits in the scheduler: a plain response is built when the job
 * is done, a streamed one (SSE) is a content-reader callback that blocks
 * until the next piece of text. Both poll the socket while they wait, so a
 * client that hangs up mid-generation cancels its job at once (its slot is
 * freed at the scheduler's next step) instead of after the reply is
 * written into a dead socket.
 *
 * What reaches the model has passed here first: the route and method, the
 * API key (every endpoint but /health), the body size (413 before reading
 * a body whose Content-Length is over the limit), then the JSON checks of
 * server_proto.c. A streamed reply sends an SSE comment when it has been
 * silent for a while, so a long prompt evaluation does not look like an
 * idle connection.
 *
 * Slow and idle clients: this file keeps its own table of connections,
 * each in one of three phases: idle (accepted, or between requests),
 * reading (the request line has arrived, the head or body is still
 * coming) and busy (the request is whole and being answered). A watchdog
 * thread cuts an idle connection after --idle-timeout and a reading one
 * whose head and body have not arrived whole within --request-timeout of
 * it going idle (a 408; trickling bytes does not extend it). Connections
 * are capped per client address and in total; when a new one would pass a
 * cap, the connection that has been idle or reading the longest makes
 * room for it (a busy one never does), so a table filled by slow clients
 * still admits /health, /metrics and real requests at once. Cutting is
 * shutdown() of the socket from the watchdog (or the accepting thread);
 * the connection's own thread then sees the end and MHD closes it. MHD
 * reports a connection closed before it closes the socket, and the table
 * is locked across both, so a cut never reaches a reused descriptor.
 */
#include "server/server.h"

#include <arpa/inet.h>
#include <limits.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum route { R_HEALTH, R_MODELS, R_METRICS, R_CHAT, R_COMPLETIONS, R_TOKENIZE, R_DETOKENIZE,
             R_APPLY_TEMPLATE, R_OTHER, R_COUNT };
static const char *const route_name[R_COUNT] = {
    "health", "models", "metrics", "chat_completions", "completions", "tokenize", "detokenize",
    "apply_template", "other"
};

struct srv {
    char       *host, *api_key, *alias;
    json_t     *meta;
    int         port, parallel, queue, timeout_s, reasoning_none;
    size_t      max_body;
    struct MHD_Daemon *d;
    int         listen_fd;
    atomic_int  ready;
    atomic_int  stopping;
    struct srv_backend be;
    srv_sched  *sched;
    long long   started;
    atomic_ullong n_req[R_COUNT][4];   /* 2xx, 4xx, 5xx, other */
    atomic_ullong id_counter;
    atomic_int  in_flight;             /* generations being answered */

    /* The connection table (see the top of the file). */
    int         request_s, idle_s, max_conns, max_per_ip;
    pthread_mutex_t cmu;
    pthread_cond_t  ccv;               /* wakes the watchdog to stop */
    struct track   *conns;             /* every open connection */
    int         wd_stop, wd_running;
    pthread_t   wd;
    atomic_ullong n_refused, n_evicted, n_timed_out, n_idle_closed;
};

enum phase { P_IDLE, P_READING, P_BUSY };

/* One open connection in the table; all fields under srv.cmu. */
struct track {
    struct track *prev, *next;
    int        fd;
    int        family;
    unsigned char addr[16];            /* IPv4 or IPv6 address bytes */
    enum phase phase;
    double     since;                  /* accepted, or last reply done */
    int        cut;                    /* shut down; closing */
};

/* Per-connection state: the body as it arrives. */
struct conn {
    enum route route;
    char  *body;
    size_t len, cap;
    int    too_big;
};

/* ======================================================================
 * The connection table: caps, deadlines, eviction
 * ====================================================================== */

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void addr_key(const struct sockaddr *a, int *family, unsigned char key[16])
{
    memset(key, 0, 16);
    *family = a ? a->sa_family : 0;
    if (*family == AF_INET) memcpy(key, &((const struct sockaddr_in *)a)->sin_addr, 4);
    else if (*family == AF_INET6) memcpy(key, &((const struct sockaddr_in6 *)a)->sin6_addr, 16);
}

static struct track *track_of(struct MHD_Connection *c)
{
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci ? ci->socket_context : NULL;
}

enum cut_why { CUT_EVICTED, CUT_TIMED_OUT, CUT_IDLE };

/* Shut a connection down (cmu held). A reading one is told why first: it
 * is not being answered, and MHD is not writing to it. */
static void cut(srv *s, struct track *t, enum cut_why why)
{
    t->cut = 1;
    if (t->phase == P_READING) {
        const char *body = why == CUT_TIMED_OUT
            ? "{\"error\":{\"message\":\"the request did not arrive whole in time\","
              "\"type\":\"invalid_request_error\",\"code\":408}}"
            : "{\"error\":{\"message\":\"too many connections: this slow one was closed to make room\","
              "\"type\":\"unavailable_error\",\"code\":503}}";
        char r[512];
        int n = snprintf(r, sizeof r, "HTTP/1.1 %s\r\nConnection: close\r\nContent-Type: application/json\r\n"
                         "Content-Length: %zu\r\n\r\n%s",
                         why == CUT_TIMED_OUT ? "408 Request Timeout" : "503 Service Unavailable", strlen(body), body);
        ssize_t w = send(t->fd, r, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL);
        (void)w;
    }
    shutdown(t->fd, SHUT_RDWR);
    atomic_fetch_add(why == CUT_EVICTED ? &s->n_evicted : why == CUT_TIMED_OUT ? &s->n_timed_out
                                                                           : &s->n_idle_closed, 1);
}

/* Open connections (not being cut) from one address, or all when key is
 * NULL; *oldest: the one idle or reading the longest among them. */
static int tracks_count(srv *s, int family, const unsigned char *key, struct track **oldest)
{
    int n = 0;
    *oldest = NULL;
    for (struct track *t = s->conns; t; t = t->next) {
        if (t->cut || (key && (t->family != family || memcmp(t->addr, key, 16) != 0))) continue;
        n++;
        if (t->phase != P_BUSY && (!*oldest || t->since < (*oldest)->since)) *oldest = t;
    }
    return n;
}

/* The accept policy, called by MHD's listening thread for each new
 * connection (before on_connection registers it, in the same thread):
 * make room under both caps or refuse. */
static enum MHD_Result on_accept(void *cls, const struct sockaddr *addr, socklen_t addrlen)
{
    (void)addrlen;
    srv *s = cls;
    int family;
    unsigned char key[16];
    addr_key(addr, &family, key);
    int ok = 1;
    struct track *old;
    pthread_mutex_lock(&s->cmu);
    if (tracks_count(s, family, key, &old) >= s->max_per_ip) {
        if (old) cut(s, old, CUT_EVICTED);
        else ok = 0;
    }
    if (ok && tracks_count(s, 0, NULL, &old) >= s->max_conns) {
        if (old) cut(s, old, CUT_EVICTED);
        else ok = 0;
    }
    pthread_mutex_unlock(&s->cmu);
    if (!ok) atomic_fetch_add(&s->n_refused, 1);
    return ok ? MHD_YES : MHD_NO;
}

/* Move a connection to another phase; -1 when it has been cut (the caller
 * then answers nothing: the client was told, or is gone). */
static int conn_phase(srv *s, struct MHD_Connection *c, enum phase p)
{
    struct track *t = track_of(c);
    if (!t) return 0;
    pthread_mutex_lock(&s->cmu);
    int rc = t->cut ? -1 : 0;
    if (!rc && p == P_IDLE) t->since = mono_s();
    if (!rc) t->phase = p;
    pthread_mutex_unlock(&s->cmu);
    return rc;
}

static int conn_busy(srv *s, struct MHD_Connection *c) { return conn_phase(s, c, P_BUSY); }

/* MHD has the request line: the head is coming. */
static void *on_uri(void *cls, const char *uri, struct MHD_Connection *c)
{
    (void)uri;
    conn_phase(cls, c, P_READING);
    return NULL;
}

static void *watchdog_main(void *arg)
{
    srv *s = arg;
    pthread_mutex_lock(&s->cmu);
    while (!s->wd_stop) {
        double now = mono_s();
        for (struct track *t = s->conns; t; t = t->next) {
            if (t->cut) continue;
            if (t->phase == P_IDLE && now - t->since >= s->idle_s) cut(s, t, CUT_IDLE);
            else if (t->phase == P_READING && now - t->since >= s->request_s) cut(s, t, CUT_TIMED_OUT);
        }
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_nsec += 200 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) { ts.tv_sec++; ts.tv_nsec -= 1000000000L; }
        pthread_cond_timedwait(&s->ccv, &s->cmu, &ts);
    }
    pthread_mutex_unlock(&s->cmu);
    return NULL;
}

static int tracks_open(srv *s)
{
    struct track *old;
    pthread_mutex_lock(&s->cmu);
    int n = tracks_count(s, 0, NULL, &old);
    pthread_mutex_unlock(&s->cmu);
    return n;
}

static void count(srv *s, enum route r, int status)
{
    int k = status >= 200 && status < 300 ? 0 : status >= 400 && status < 500 ? 1 : status >= 500 ? 2 : 3;
    atomic_fetch_add(&s->n_req[r][k], 1);
}

static enum MHD_Result reply_raw(srv *s, struct MHD_Connection *c, enum route r, int status,
                                 const char *ctype, char *body)
{
    if (!body) {
        status = 500;
        body = strdup("{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\",\"code\":500}}");
        ctype = "application/json";
        if (!body) return MHD_NO;
    }
    if (conn_busy(s, c)) { free(body); return MHD_NO; }
    struct MHD_Response *resp = MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
    if (!resp) { free(body); return MHD_NO; }
    MHD_add_response_header(resp, "Content-Type", ctype);
    if (status == 401) MHD_add_response_header(resp, "WWW-Authenticate", "Bearer");
    count(s, r, status);
    enum MHD_Result rc = MHD_queue_response(c, (unsigned)status, resp);
    MHD_destroy_response(resp);
    return rc;
}

static enum MHD_Result reply_json(srv *s, struct MHD_Connection *c, enum route r, int status, json_t *o)
{
    char *body = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    return reply_raw(s, c, r, status, "application/json", body);
}

static enum MHD_Result reply_error(srv *s, struct MHD_Connection *c, enum route r, int status,
                                   const char *msg)
{
    return reply_raw(s, c, r, status, "application/json", srv_error_json(status, msg));
}

/* Has the client closed its end? (It never half-closes while waiting for
 * a reply, so a read hang-up means it is gone.) */
static int peer_gone(struct MHD_Connection *c)
{
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci) return 1;
    struct pollfd p = { .fd = ci->connect_fd, .events = POLLRDHUP };
    return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL));
}

/* Constant-time comparison of the presented key with ours. */
static int authorized(const srv *s, struct MHD_Connection *c)
{
    if (!s->api_key) return 1;
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    if (!h || strncmp(h, "Bearer ", 7) != 0) return 0;
    h += 7;
    size_t a = strlen(h), b = strlen(s->api_key);
    unsigned diff = a != b;
    for (size_t i = 0; i < b; i++) diff |= (unsigned char)s->api_key[i] ^ (unsigned char)(i < a ? h[i] : 0);
    return diff == 0;
}

static void make_id(srv *s, const char *prefix, char *out, size_t n)
{
    unsigned long long k = atomic_fetch_add(&s->id_counter, 1) + 1;
    snprintf(out, n, "%s-%llx%08llx", prefix, (unsigned long long)s->started, k);
}

/* ======================================================================
 * Streaming
 * ====================================================================== */

struct stream {
    srv     *srv;
    srv_job *job;
    struct MHD_Connection *conn;
    enum srv_kind kind;
    srv_reply *reply;            /* chat: the reply's meaning (content, reasoning, calls) */
    char     id[64];
    long long created;
    int      phase;              /* 0 role, 1 content, 2 usage, 3 [DONE], 4 end */
    size_t   seen_ready;
    int      seen_probs;
    size_t   text_off;
    char    *out;
    size_t   out_len, out_pos;
    time_t   last_out;
};

static void stream_set(struct stream *st, char *s)
{
    free(st->out);
    st->out = s;
    st->out_len = s ? strlen(s) : 0;
    st->out_pos = 0;
    st->last_out = time(NULL);
}

/* a then b, both freed; NULL when out of memory. */
static char *concat_free(char *a, char *b)
{
    size_t x = a ? strlen(a) : 0, y = b ? strlen(b) : 0;
    char *both = malloc(x + y + 1);
    if (both) {
        memcpy(both, a ? a : "", x);
        memcpy(both + x, b ? b : "", y + 1);
    }
    free(a);
    free(b);
    return both;
}

/* A tool call that did not parse went out as content: say so in the log. */
static void warn_malformed(const char *id, const srv_reply *r)
{
    int n = srv_reply_malformed(r);
    if (n > 0)
        fprintf(stderr, "moeq: serve: warning: %s: %d tool call%s in the reply did not parse; sent as content\n",
                id, n, n > 1 ? "s" : "");
}

/* The events for the next n bytes of a chat reply: one chunk per delta,
 * logprobs (stolen) on the first (or alone on an empty delta). NULL when
 * there is nothing to send. */
static char *chat_events(struct stream *st, const char *text, size_t n, int final, json_t *lp, int inc)
{
    json_t *deltas = srv_reply_feed(st->reply, text, n, final);
    char *ev = NULL;
    size_t i;
    json_t *d;
    json_array_foreach(deltas, i, d) {
        ev = concat_free(ev, srv_sse_delta(st->id, st->created, st->srv->alias, json_incref(d), NULL, lp, inc));
        lp = NULL;
    }
    json_decref(deltas);
    if (lp) ev = srv_sse_delta(st->id, st->created, st->srv->alias, NULL, NULL, lp, inc);
    return ev;
}

/* Build the next piece of the event stream; 0 when nothing is ready yet,
 * -1 when the stream is over (or the client gone). */
static int stream_next(struct stream *st)
{
    srv *s = st->srv;
    const char *model = s->alias;
    int inc = srv_job_gen(st->job)->include_usage;
    switch (st->phase) {
    case 0:
        st->phase = 1;
        if (st->kind == SRV_CHAT) {
            stream_set(st, srv_sse_chunk(st->kind, st->id, st->created, model, "assistant", "", 0,
                                         NULL, NULL, inc, NULL));
            return 1;
        }
        /* completions have no role chunk */
        __attribute__((fallthrough));
    case 1: {
        struct srv_job_view v;
        int news = srv_job_wait(st->job, st->seen_ready, st->seen_probs, 200, &v);
        if (!news) {
            srv_job_unlock(st->job);
            if (peer_gone(st->conn)) return -1;
            int keep = s->timeout_s > 2 ? s->timeout_s / 2 : 1;
            if (keep > 10) keep = 10;
            if (time(NULL) - st->last_out >= keep) { stream_set(st, strdup(": keep-alive\n\n")); return 1; }
            return 0;
        }
        const struct srv_gen *g = srv_job_gen(st->job);
        size_t n = v.ready - st->seen_ready;
        json_t *lp = NULL;
        if (g->logprobs && v.n_probs > st->seen_probs)
            lp = srv_logprobs_json(&s->be, st->kind, v.probs + st->seen_probs, v.n_probs - st->seen_probs,
                                   st->text_off);
        char *ev = NULL;
        if (st->reply)
            ev = chat_events(st, v.text + st->seen_ready, n, v.done && !v.err, lp, inc);
        else if (n || lp)
            ev = srv_sse_chunk(st->kind, st->id, st->created, model, NULL, v.text + st->seen_ready, n,
                               NULL, lp, inc, NULL);
        st->text_off += n;
        st->seen_ready = v.ready;
        st->seen_probs = v.n_probs;
        if (v.done) {
            char *tail;
            if (v.err) {
                char *e = srv_error_json(v.err_status, v.err);
                size_t el = e ? strlen(e) : 0;
                tail = malloc(el + 9);
                if (tail) snprintf(tail, el + 9, "data: %s\n\n", e ? e : "");
                free(e);
                st->phase = 3;
            } else {
                const char *fin = st->reply ? srv_reply_finish(st->reply, v.finish) : v.finish;
                tail = srv_sse_chunk(st->kind, st->id, st->created, model, NULL, NULL, 0, fin, NULL,
                                     inc, NULL);
                st->phase = inc ? 2 : 3;
            }
            if (st->reply) warn_malformed(st->id, st->reply);
            ev = concat_free(ev, tail);
        }
        srv_job_unlock(st->job);
        if (!ev) return 0;
        stream_set(st, ev);
        return 1;
    }
    case 2: {
        struct srv_job_view v;
        srv_job_wait(st->job, SIZE_MAX, INT_MAX, 0, &v);
        struct srv_usage u = v.usage;
        srv_job_unlock(st->job);
        stream_set(st, srv_sse_chunk(st->kind, st->id, st->created, model, NULL, NULL, 0, NULL, NULL, 1, &u));
        st->phase = 3;
        return 1;
    }
    case 3:
        stream_set(st, strdup("data: [DONE]\n\n"));
        st->phase = 4;
        return 1;
    default:
        return -1;
    }
}

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    struct stream *st = cls;
    for (;;) {
        if (st->out_pos < st->out_len) {
            size_t n = st->out_len - st->out_pos;
            if (n > max) n = max;
            memcpy(buf, st->out + st->out_pos, n);
            st->out_pos += n;
            return (ssize_t)n;
        }
        int r = stream_next(st);
        if (r < 0) {
            if (st->phase >= 4) return MHD_CONTENT_READER_END_OF_STREAM;
            srv_job_cancel(st->job);
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
        if (r > 0 && !st->out) return MHD_CONTENT_READER_END_WITH_ERROR;  /* out of memory */
    }
}

static void stream_free(void *cls)
{
    struct stream *st = cls;
    /* Whatever the reason the response ends (done, client gone, timeout,
     * shutdown), the job must not keep a slot. */
    srv_job_cancel(st->job);
    srv_job_release(st->job);
    atomic_fetch_sub(&st->srv->in_flight, 1);
    srv_reply_free(st->reply);
    free(st->out);
    free(st);
}

/* ======================================================================
 * Endpoints
 * ====================================================================== */

static enum MHD_Result do_generate(srv *s, struct MHD_Connection *c, struct conn *cn, enum srv_kind kind)
{
    char err[512];
    json_t *body = srv_parse_body(cn->body, cn->len, err, sizeof err);
    if (!body) return reply_error(s, c, cn->route, 400, err);
    struct srv_gen g;
    int st = srv_parse_gen(&s->be, kind, body, &g, err, sizeof err);
    json_decref(body);
    if (st) return reply_error(s, c, cn->route, st, err);
    int stream = g.stream;
    srv_job *j = srv_sched_submit(s->sched, &g);
    if (j) atomic_fetch_add(&s->in_flight, 1);
    if (!j)
        return reply_error(s, c, cn->route, 503, atomic_load(&s->stopping)
                           ? "the server is shutting down"
                           : "the server is busy: all slots and the queue are full, retry later");
    char id[64];
    make_id(s, kind == SRV_CHAT ? "chatcmpl" : "cmpl", id, sizeof id);
    long long created = (long long)time(NULL);
    srv_reply *reply = kind == SRV_CHAT ? srv_reply_new(srv_job_gen(j), id) : NULL;
    if (kind == SRV_CHAT && !reply) {
        srv_job_cancel(j);
        srv_job_release(j);
        atomic_fetch_sub(&s->in_flight, 1);
        return reply_error(s, c, cn->route, 500, "out of memory");
    }

    if (stream) {
        struct stream *sst = calloc(1, sizeof *sst);
        if (!sst) {
            srv_job_cancel(j);
            srv_job_release(j);
            srv_reply_free(reply);
            atomic_fetch_sub(&s->in_flight, 1);
            return reply_error(s, c, cn->route, 500, "out of memory");
        }
        sst->srv = s;
        sst->job = j;
        sst->reply = reply;
        sst->conn = c;
        sst->kind = kind;
        snprintf(sst->id, sizeof sst->id, "%s", id);
        sst->created = created;
        sst->last_out = time(NULL);
        struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, stream_read,
                                                                      sst, stream_free);
        if (!resp) { stream_free(sst); return MHD_NO; }
        MHD_add_response_header(resp, "Content-Type", "text/event-stream");
        MHD_add_response_header(resp, "Cache-Control", "no-cache");
        count(s, cn->route, 200);
        enum MHD_Result rc = MHD_queue_response(c, 200, resp);
        MHD_destroy_response(resp);
        return rc;
    }

    /* While we block here MHD does not see the connection as active; lift
     * its idle timeout for the wait and restore it after, which also
     * restarts the idle clock. */
    MHD_set_connection_option(c, MHD_CONNECTION_OPTION_TIMEOUT, 0u);
    struct srv_job_view v;
    for (;;) {
        if (srv_job_wait(j, SIZE_MAX, INT_MAX, 200, &v)) break;
        srv_job_unlock(j);
        if (peer_gone(c)) {
            srv_job_cancel(j);
            srv_job_release(j);
            srv_reply_free(reply);
            atomic_fetch_sub(&s->in_flight, 1);
            return MHD_NO;
        }
    }
    enum MHD_Result rc;
    if (v.err) {
        int status = v.err_status >= 400 && v.err_status < 600 ? v.err_status : 500;
        char msg[300];
        snprintf(msg, sizeof msg, "%s", v.err);
        srv_job_unlock(j);
        rc = reply_error(s, c, cn->route, status, msg);
    } else {
        const struct srv_gen *gg = srv_job_gen(j);
        json_t *lp = gg->logprobs ? srv_logprobs_json(&s->be, kind, v.probs, v.n_probs, 0) : NULL;
        const char *finish = v.finish ? v.finish : "stop";
        json_t *msg = NULL, *d = reply ? srv_reply_feed(reply, v.text, v.ready, 1) : NULL;
        if (reply && d) {
            msg = srv_reply_message(reply);
            finish = srv_reply_finish(reply, finish);
            warn_malformed(id, reply);
        }
        json_t *o = reply && !d ? NULL
                  : srv_response_json(kind, id, created, s->alias, v.text, v.ready, msg, finish, lp, &v.usage);
        if (!o) json_decref(lp);
        json_decref(d);
        srv_job_unlock(j);
        rc = reply_json(s, c, cn->route, 200, o);
    }
    srv_reply_free(reply);
    srv_job_release(j);
    atomic_fetch_sub(&s->in_flight, 1);
    MHD_set_connection_option(c, MHD_CONNECTION_OPTION_TIMEOUT, (unsigned)s->timeout_s);
    return rc;
}

static enum MHD_Result do_tokenize(srv *s, struct MHD_Connection *c, struct conn *cn)
{
    char err[512];
    json_t *body = srv_parse_body(cn->body, cn->len, err, sizeof err);
    if (!body) return reply_error(s, c, cn->route, 400, err);
    const json_t *content = json_object_get(body, "content");
    const json_t *as = json_object_get(body, "add_special"), *wp = json_object_get(body, "with_pieces");
    const json_t *ps = json_object_get(body, "parse_special");
    const char *bad = !json_is_string(content) ? "'content' must be a string"
                    : as && !json_is_boolean(as) ? "'add_special' must be true or false"
                    : wp && !json_is_boolean(wp) ? "'with_pieces' must be true or false"
                    : ps && !json_is_boolean(ps) ? "'parse_special' must be true or false" : NULL;
    if (bad) { json_decref(body); return reply_error(s, c, cn->route, 400, bad); }
    size_t len = json_string_length(content);
    int bos = as && json_is_true(as) && s->be.add_bos;
    int cap = (int)(len < (1u << 26) ? len : (1u << 26)) + 8;
    int32_t *t = malloc((size_t)(cap + 1) * sizeof *t);
    int n = t ? s->be.tokenize(s->be.ud, json_string_value(content), len, !ps || json_is_true(ps), t + bos, cap) : -1;
    if (n > cap) {
        int32_t *nt = realloc(t, (size_t)(n + 1) * sizeof *t);
        if (nt) { t = nt; cap = n; n = s->be.tokenize(s->be.ud, json_string_value(content), len, !ps || json_is_true(ps), t + bos, cap); }
        else n = -1;
    }
    if (n < 0 || n > cap) { free(t); json_decref(body); return reply_error(s, c, cn->route, 500, "tokenization failed"); }
    if (bos) t[0] = s->be.bos;
    json_t *arr = json_array();
    for (int i = 0; i < n + bos; i++) {
        if (wp && json_is_true(wp)) {
            char buf[256];
            int pl = s->be.piece(s->be.ud, t[i], buf, sizeof buf);
            if (pl < 0 || pl > (int)sizeof buf) pl = 0;
            size_t cl;
            char *clean = srv_utf8_clean(buf, (size_t)pl, &cl);
            json_array_append_new(arr, json_pack("{s:i,s:s%}", "id", (int)t[i], "piece", clean ? clean : "",
                                                 clean ? cl : (size_t)0));
            free(clean);
        } else {
            json_array_append_new(arr, json_integer(t[i]));
        }
    }
    free(t);
    json_decref(body);
    return reply_json(s, c, cn->route, 200, json_pack("{s:o}", "tokens", arr));
}

static enum MHD_Result do_detokenize(srv *s, struct MHD_Connection *c, struct conn *cn)
{
    char err[512];
    json_t *body = srv_parse_body(cn->body, cn->len, err, sizeof err);
    if (!body) return reply_error(s, c, cn->route, 400, err);
    const json_t *toks = json_object_get(body, "tokens");
    if (!json_is_array(toks)) { json_decref(body); return reply_error(s, c, cn->route, 400, "'tokens' must be an array of token ids"); }
    size_t i, len = 0, cap = 256;
    char *out = malloc(cap);
    const json_t *v;
    json_array_foreach(toks, i, v) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= s->be.n_vocab) {
            free(out);
            json_decref(body);
            snprintf(err, sizeof err, "'tokens[%zu]' must be a token id in [0, %d)", i, s->be.n_vocab);
            return reply_error(s, c, cn->route, 400, err);
        }
        char buf[256];
        int pl = s->be.piece(s->be.ud, (int32_t)json_integer_value(v), buf, sizeof buf);
        if (pl < 0 || pl > (int)sizeof buf) pl = 0;
        if (out && len + (size_t)pl + 1 > cap) {
            while (len + (size_t)pl + 1 > cap) cap *= 2;
            char *no = realloc(out, cap);
            if (!no) { free(out); out = NULL; }
            else out = no;
        }
        if (out) { memcpy(out + len, buf, (size_t)pl); len += (size_t)pl; }
    }
    json_decref(body);
    if (!out) return reply_error(s, c, cn->route, 500, "out of memory");
    size_t cl;
    char *clean = srv_utf8_clean(out, len, &cl);
    free(out);
    json_t *o = clean ? json_pack("{s:s%}", "content", clean, cl) : NULL;
    free(clean);
    return reply_json(s, c, cn->route, 200, o);
}

static enum MHD_Result do_apply_template(srv *s, struct MHD_Connection *c, struct conn *cn)
{
    char err[512];
    json_t *body = srv_parse_body(cn->body, cn->len, err, sizeof err);
    if (!body) return reply_error(s, c, cn->route, 400, err);
    char *prompt = NULL;
    int st = srv_apply_template(&s->be, body, &prompt, err, sizeof err);
    json_decref(body);
    if (st) return reply_error(s, c, cn->route, st, err);
    size_t n = strlen(prompt);
    char *clean = srv_utf8_clean(prompt, n, &n);
    free(prompt);
    json_t *o = clean ? json_pack("{s:s%}", "prompt", clean, n) : NULL;
    free(clean);
    return reply_json(s, c, cn->route, 200, o);
}

static enum MHD_Result do_models(srv *s, struct MHD_Connection *c, enum route r)
{
    json_t *m = json_pack("{s:s,s:s,s:I,s:s}", "id", s->alias, "object", "model",
                          "created", (json_int_t)s->started, "owned_by", "moeq");
    if (m && s->meta) json_object_set(m, "meta", s->meta);
    return reply_json(s, c, r, 200, json_pack("{s:s,s:[o]}", "object", "list", "data", m));
}

static void metric(char **buf, size_t *len, size_t *cap, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void metric(char **buf, size_t *len, size_t *cap, const char *fmt, ...)
{
    for (;;) {
        if (!*buf) return;
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(*buf + *len, *cap - *len, fmt, ap);
        va_end(ap);
        if (n < 0) return;
        if ((size_t)n < *cap - *len) { *len += (size_t)n; return; }
        char *nb = realloc(*buf, *cap * 2);
        if (!nb) { free(*buf); *buf = NULL; return; }
        *buf = nb;
        *cap *= 2;
    }
}

static enum MHD_Result do_metrics(srv *s, struct MHD_Connection *c, enum route r)
{
    struct srv_stats st = {0};
    if (atomic_load(&s->ready)) srv_sched_stats(s->sched, &st);
    size_t len = 0, cap = 4096;
    char *b = malloc(cap);
    static const char *const cls[4] = { "2xx", "4xx", "5xx", "other" };
    metric(&b, &len, &cap, "# HELP moeq_requests_total HTTP requests answered, by endpoint and status class.\n"
                           "# TYPE moeq_requests_total counter\n");
    for (int i = 0; i < R_COUNT; i++)
        for (int k = 0; k < 4; k++) {
            unsigned long long v = atomic_load(&s->n_req[i][k]);
            if (v || k == 0)
                metric(&b, &len, &cap, "moeq_requests_total{endpoint=\"%s\",status=\"%s\"} %llu\n",
                       route_name[i], cls[k], v);
        }
#define M(name, type, help, fmt, val) \
    metric(&b, &len, &cap, "# HELP moeq_" name " " help "\n# TYPE moeq_" name " " type "\nmoeq_" name " " fmt "\n", val)
    M("prompt_tokens_total", "counter", "Prompt tokens evaluated (not counting reused ones).", "%llu", (unsigned long long)st.prompt_tokens);
    M("prompt_tokens_cached_total", "counter", "Prompt tokens reused from a slot's cache.", "%llu", (unsigned long long)st.prompt_cached);
    M("generated_tokens_total", "counter", "Tokens generated.", "%llu", (unsigned long long)st.gen_tokens);
    M("prompt_tokens_per_second", "gauge", "Prompt evaluation throughput over the time spent evaluating.", "%.3f",
      st.prompt_seconds > 0 ? (double)st.prompt_tokens / st.prompt_seconds : 0.0);
    M("generated_tokens_per_second", "gauge", "Generation throughput (all slots) over the time spent decoding.", "%.3f",
      st.gen_seconds > 0 ? (double)st.decode_rows / st.gen_seconds : 0.0);
    M("decode_batch_mean", "gauge", "Mean sequences per batched decode step.", "%.3f",
      st.decode_steps ? (double)st.decode_rows / (double)st.decode_steps : 0.0);
    M("requests_processing", "gauge", "Requests holding a slot.", "%d", st.active);
    M("requests_queued", "gauge", "Requests waiting for a slot.", "%d", st.queued);
    M("requests_rejected_total", "counter", "Requests refused because the queue was full.", "%llu", (unsigned long long)st.rejected);
    M("requests_cancelled_total", "counter", "Requests cancelled (client gone).", "%llu", (unsigned long long)st.cancelled);
    M("slots", "gauge", "Parallel sequences (sessions).", "%d", st.n_slots);
    M("kv_cache_used_cells", "gauge", "KV cells holding tokens, all slots.", "%llu", (unsigned long long)st.kv_used);
    M("kv_cache_total_cells", "gauge", "KV cells, all slots.", "%llu", (unsigned long long)st.kv_total);
    M("kv_cache_usage_ratio", "gauge", "Used share of the KV cells.", "%.6f",
      st.kv_total ? (double)st.kv_used / (double)st.kv_total : 0.0);
    M("connections_open", "gauge", "Open client connections.", "%d", tracks_open(s));
    M("connections_refused_total", "counter", "Connections refused at a cap with no idle or slow one to close.", "%llu",
      (unsigned long long)atomic_load(&s->n_refused));
    M("connections_evicted_total", "counter", "Idle or slow connections closed to make room for a new one.", "%llu",
      (unsigned long long)atomic_load(&s->n_evicted));
    M("requests_timed_out_total", "counter", "Connections cut because the request head and body were late (408).", "%llu",
      (unsigned long long)atomic_load(&s->n_timed_out));
    M("connections_idle_closed_total", "counter", "Connections closed after the idle timeout between requests.", "%llu",
      (unsigned long long)atomic_load(&s->n_idle_closed));
#undef M
    return reply_raw(s, c, r, 200, "text/plain; version=0.0.4", b);
}

/* ======================================================================
 * Dispatch
 * ====================================================================== */

static enum route route_of(const char *url, const char **method_needed)
{
    static const struct { const char *path; enum route r; const char *method; } table[] = {
        { "/health", R_HEALTH, "GET" },           { "/v1/health", R_HEALTH, "GET" },
        { "/v1/models", R_MODELS, "GET" },        { "/models", R_MODELS, "GET" },
        { "/metrics", R_METRICS, "GET" },
        { "/v1/chat/completions", R_CHAT, "POST" }, { "/chat/completions", R_CHAT, "POST" },
        { "/v1/completions", R_COMPLETIONS, "POST" }, { "/completions", R_COMPLETIONS, "POST" },
        { "/tokenize", R_TOKENIZE, "POST" },       { "/detokenize", R_DETOKENIZE, "POST" },
        { "/apply-template", R_APPLY_TEMPLATE, "POST" },
    };
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (!strcmp(url, table[i].path)) { *method_needed = table[i].method; return table[i].r; }
    *method_needed = NULL;
    return R_OTHER;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **con_cls)
{
    (void)version;
    srv *s = cls;
    struct conn *cn = *con_cls;
    if (!cn) {
        /* First call: headers only. Everything that can be refused without
         * the body is refused now, before reading it. */
        cn = calloc(1, sizeof *cn);
        if (!cn) return MHD_NO;
        *con_cls = cn;
        const char *need;
        cn->route = route_of(url, &need);
        char msg[300];
        if (cn->route == R_OTHER) {
            snprintf(msg, sizeof msg, "no such endpoint: %s %.200s", method, url);
            return reply_error(s, c, cn->route, 404, msg);
        }
        if (strcmp(method, need) != 0) {
            snprintf(msg, sizeof msg, "%.200s takes %s, not %s", url, need, method);
            return reply_error(s, c, cn->route, 405, msg);
        }
        if (cn->route == R_HEALTH) {
            if (!atomic_load(&s->ready))
                return reply_raw(s, c, cn->route, 503, "application/json",
                                 strdup("{\"status\":\"loading model\",\"error\":{\"message\":\"the model is loading\","
                                        "\"type\":\"unavailable_error\",\"code\":503}}"));
            return reply_raw(s, c, cn->route, 200, "application/json", strdup("{\"status\":\"ok\"}"));
        }
        if (!authorized(s, c))
            return reply_error(s, c, cn->route, 401, "invalid or missing API key (send 'Authorization: Bearer KEY')");
        if (cn->route == R_METRICS) return do_metrics(s, c, cn->route);
        if (!atomic_load(&s->ready)) return reply_error(s, c, cn->route, 503, "the model is loading, retry later");
        if (cn->route == R_MODELS) return do_models(s, c, cn->route);
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
        if (cl) {
            char *end;
            unsigned long long v = strtoull(cl, &end, 10);
            if (*end == 0 && v > s->max_body) {
                snprintf(msg, sizeof msg, "request body of %llu bytes is over the limit of %zu bytes", v, s->max_body);
                return reply_error(s, c, cn->route, 413, msg);
            }
        }
        return MHD_YES;
    }
    if (*upload_size) {
        /* A chunked body has no length up front: count as it comes and
         * drop it once it is over the limit. */
        size_t n = *upload_size;
        *upload_size = 0;
        if (cn->too_big || cn->len + n > s->max_body) { cn->too_big = 1; return MHD_YES; }
        if (cn->len + n + 1 > cn->cap) {
            size_t nc = cn->cap ? cn->cap : 4096;
            while (nc < cn->len + n + 1) nc *= 2;
            char *nb = realloc(cn->body, nc);
            if (!nb) { cn->too_big = 1; return MHD_YES; }
            cn->body = nb;
            cn->cap = nc;
        }
        memcpy(cn->body + cn->len, upload, n);
        cn->len += n;
        return MHD_YES;
    }
    /* The request is whole: from here on it is answered, not read. */
    if (conn_busy(s, c)) return MHD_NO;
    if (cn->too_big) {
        char msg[200];
        snprintf(msg, sizeof msg, "request body is over the limit of %zu bytes", s->max_body);
        return reply_error(s, c, cn->route, 413, msg);
    }
    if (atomic_load(&s->stopping)) return reply_error(s, c, cn->route, 503, "the server is shutting down");
    switch (cn->route) {
    case R_CHAT:        return do_generate(s, c, cn, SRV_CHAT);
    case R_COMPLETIONS: return do_generate(s, c, cn, SRV_COMPLETION);
    case R_TOKENIZE:    return do_tokenize(s, c, cn);
    case R_DETOKENIZE:  return do_detokenize(s, c, cn);
    case R_APPLY_TEMPLATE: return do_apply_template(s, c, cn);
    default:            return reply_error(s, c, cn->route, 404, "no such endpoint");
    }
}

/* A connection opened or closed: the table follows. A small send buffer
 * per connection: a client that stops reading a stream then blocks the
 * writes within ~64 KiB instead of letting the kernel absorb megabytes, so
 * the idle timeout ends it (and its job). */
static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode code)
{
    srv *s = cls;
    if (code == MHD_CONNECTION_NOTIFY_CLOSED) {
        struct track *t = *socket_context;
        if (!t) return;
        pthread_mutex_lock(&s->cmu);
        if (t->prev) t->prev->next = t->next; else s->conns = t->next;
        if (t->next) t->next->prev = t->prev;
        pthread_mutex_unlock(&s->cmu);
        free(t);
        *socket_context = NULL;
        return;
    }
    if (code != MHD_CONNECTION_NOTIFY_STARTED) return;
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci) return;
    int fd = ci->connect_fd, sz = 64 * 1024;
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz);
    struct track *t = calloc(1, sizeof *t);
    if (!t) { shutdown(fd, SHUT_RDWR); return; }
    t->fd = fd;
    ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    addr_key(ci ? ci->client_addr : NULL, &t->family, t->addr);
    t->phase = P_IDLE;
    t->since = mono_s();
    pthread_mutex_lock(&s->cmu);
    t->next = s->conns;
    if (s->conns) s->conns->prev = t;
    s->conns = t;
    pthread_mutex_unlock(&s->cmu);
    *socket_context = t;
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode tc)
{
    (void)tc;
    struct conn *cn = *con_cls;
    if (cn) {
        free(cn->body);
        free(cn);
        *con_cls = NULL;
    }
    /* Between requests: the idle clock starts. */
    conn_phase(cls, c, P_IDLE);
}

/* ======================================================================
 * Lifecycle
 * ====================================================================== */

srv *srv_start(const struct srv_config *c, char *err, size_t errlen)
{
    srv *s = calloc(1, sizeof *s);
    if (!s) { snprintf(err, errlen, "out of memory"); return NULL; }
    s->listen_fd = -1;
    s->host = strdup(c->host ? c->host : "127.0.0.1");
    s->api_key = c->api_key && *c->api_key ? strdup(c->api_key) : NULL;
    s->alias = strdup(c->alias && *c->alias ? c->alias : "moeq");
    s->parallel = c->parallel > 0 ? c->parallel : 1;
    s->queue = c->queue >= 0 ? c->queue : 0;
    s->timeout_s = c->timeout_s > 0 ? c->timeout_s : 600;
    s->reasoning_none = c->reasoning_none;
    s->max_body = c->max_body ? c->max_body : (size_t)8 << 20;
    s->request_s = c->request_timeout_s > 0 ? c->request_timeout_s : 30;
    s->idle_s = c->idle_timeout_s > 0 ? c->idle_timeout_s : 5;
    s->max_conns = c->max_conns > 0 ? c->max_conns : 256;
    s->max_per_ip = c->max_conns_per_ip > 0 ? c->max_conns_per_ip : 64;
    pthread_mutex_init(&s->cmu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->ccv, &ca);
    pthread_condattr_destroy(&ca);
    s->started = (long long)time(NULL);
    if (!s->host || !s->alias) { snprintf(err, errlen, "out of memory"); goto fail; }

    const char *h = !strcmp(s->host, "localhost") ? "127.0.0.1" : s->host;
    struct sockaddr_in a4 = { .sin_family = AF_INET, .sin_port = htons((uint16_t)c->port) };
    struct sockaddr_in6 a6 = { .sin6_family = AF_INET6, .sin6_port = htons((uint16_t)c->port) };
    const struct sockaddr *addr;
    /* poll(), not select(): descriptors past FD_SETSIZE are fine. */
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_ITC | MHD_USE_POLL;
    if (inet_pton(AF_INET, h, &a4.sin_addr) == 1) {
        addr = (const struct sockaddr *)&a4;
    } else if (inet_pton(AF_INET6, h, &a6.sin6_addr) == 1) {
        addr = (const struct sockaddr *)&a6;
        flags |= MHD_USE_IPv6;
    } else {
        snprintf(err, errlen, "--host '%s' is not a numeric IPv4 or IPv6 address", s->host);
        goto fail;
    }
    if (c->port < 0 || c->port > 65535) { snprintf(err, errlen, "port %d is out of range", c->port); goto fail; }
    /* The caps are ours (on_accept); MHD's own limit only has to leave
     * room for connections being cut and not yet closed. */
    unsigned limit = (unsigned)s->max_conns * 2 + 16;
    errno = 0;
    s->d = MHD_start_daemon(flags, (uint16_t)c->port, on_accept, s, on_request, s,
                            MHD_OPTION_SOCK_ADDR, addr,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)s->timeout_s,
                            MHD_OPTION_CONNECTION_LIMIT, limit,
                            /* Over 32 KiB MHD maps each connection's buffer
                             * (request head and reply staging) instead of
                             * taking it from malloc, so it goes back to the
                             * system when the connection closes; a storm of
                             * slow clients leaves no fragmented heap. */
                            MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)64 * 1024,
                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
                            MHD_OPTION_NOTIFY_CONNECTION, on_connection, s,
                            MHD_OPTION_URI_LOG_CALLBACK, on_uri, s,
                            MHD_OPTION_END);
    if (!s->d) {
        int e = errno;
        snprintf(err, errlen, "cannot listen on %s port %d: %s", s->host, c->port,
                 e ? strerror(e) : "in use, or not an address of this machine");
        goto fail;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
    s->port = di ? di->port : c->port;
    int prc = pthread_create(&s->wd, NULL, watchdog_main, s);
    if (prc != 0) {
        snprintf(err, errlen, "cannot start the connection watchdog thread: %s", strerror(prc));
        goto fail;
    }
    s->wd_running = 1;
    return s;
fail:
    srv_stop(s);
    return NULL;
}

int srv_port(const srv *s) { return s->port; }

int srv_attach(srv *s, const struct srv_backend *be, const json_t *meta, char *err, size_t errlen)
{
    s->be = *be;
    s->be.reasoning_none = s->reasoning_none;
    s->meta = meta ? json_deep_copy(meta) : NULL;
    s->sched = srv_sched_new(&s->be, s->parallel, s->queue, err, errlen);
    if (!s->sched) return -1;
    atomic_store(&s->ready, 1);
    return 0;
}

void srv_stop(srv *s)
{
    if (!s) return;
    atomic_store(&s->stopping, 1);
    /* Order matters: stop accepting; end every job (handlers waiting on
     * one wake up and answer); then join the connection threads, the only
     * users of the scheduler; only then free it. */
    if (s->d) s->listen_fd = MHD_quiesce_daemon(s->d);
    if (s->sched) srv_sched_stop(s->sched);
    /* Give the answers of the jobs just ended a moment to reach their
     * clients (a stream's error event and [DONE]) before connections are
     * closed; a client that does not read is cut after 5 s. */
    for (int i = 0; i < 500 && atomic_load(&s->in_flight) > 0; i++) usleep(10000);
    if (s->d) MHD_stop_daemon(s->d);
    if (s->wd_running) {
        pthread_mutex_lock(&s->cmu);
        s->wd_stop = 1;
        pthread_cond_signal(&s->ccv);
        pthread_mutex_unlock(&s->cmu);
        pthread_join(s->wd, NULL);
    }
    pthread_mutex_destroy(&s->cmu);
    pthread_cond_destroy(&s->ccv);
    if (s->listen_fd >= 0) close(s->listen_fd);
    srv_sched_free(s->sched);
    json_decref(s->meta);
    free(s->host);
    free(s->api_key);
    free(s->alias);
    free(s);
}
