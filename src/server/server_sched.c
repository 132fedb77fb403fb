/*
 * server_sched.c: the scheduler that lets several users share one model.
 *
 * There are N slots, each owning one session (its own KV cells) and the
 * tokens that session holds. One thread runs everything that touches the
 * model, in a loop of steps:
 *
 *   1. admit waiting requests into free slots, choosing for each the free
 *      slot whose cached tokens share the longest prefix with its prompt
 *      (a follow-up turn of a conversation lands where its history is and
 *      only evaluates the new tokens);
 *   2. evaluate one chunk (n_batch tokens) of one slot's prompt, so a long
 *      prompt never stalls the others for more than a chunk;
 *   3. decode one token for every generating slot in a single
 *      backend->decode call: MoE decode is memory-bound, so reading the
 *      weights once for all of them multiplies throughput.
 *
 * Requests therefore join the batch between steps. Requests beyond the
 * slots wait in a bounded FIFO; when it is full, submit fails and the HTTP
 * layer answers 503. A cancelled request (client gone, shutdown) is
 * dropped at the next step and its slot freed; its KV stays cached for
 * prefix reuse.
 *
 * A request with a tool-call constraint (tool_choice) samples from logits
 * masked to the tokens whose text the constraint allows, tested against a
 * table of every token's text built at the first such request; the reply
 * ends when the call closes.
 */
#include "server/server.h"
#include "model/chat_constrain.h"
#include "util/util.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct srv_job {
    pthread_mutex_t mu;
    pthread_cond_t  cv;
    atomic_int      refs;
    atomic_int      cancelled;
    srv_sched      *sched;
    srv_job        *next;        /* queue link (under sched->mu) */
    int             queued;      /* in the queue (under sched->mu) */

    struct srv_gen  g;
    uint64_t        rng;

    /* Progress, under mu. */
    struct srv_text text;
    struct srv_tokprob *probs;
    int             n_probs, cap_probs;
    int             done;
    const char     *finish;
    char            err[256];
    int             err_status;
    struct srv_usage usage;
};

struct slot {
    void    *sess;
    int32_t *cache;              /* tokens held in the session's KV */
    int      n_cache;
    srv_job *job;
    int      n_eval;             /* prompt tokens evaluated so far */
    int32_t  pending;            /* sampled, not yet decoded */
    int      n_gen;
    uint64_t last_used;
};

struct srv_sched {
    struct srv_backend be;
    int            n_slots;
    struct slot   *slots;
    int            queue_max, n_queued;
    srv_job       *qhead, *qtail;
    pthread_mutex_t mu;
    pthread_cond_t  cv;
    int            stopping;
    int            thread_started;
    pthread_t      th;
    uint64_t       tick;
    struct srv_stats st;         /* under mu */
    void         **dec_sess;     /* scratch for decode */
    int32_t       *dec_tok;
    int           *dec_slot;
    int32_t       *eog;          /* end-of-generation token ids (for ignore_eos) */
    int            n_eog;
    float         *masked;       /* n_vocab scratch: logits with the ends removed */
    /* Every token's text, built at the first constrained request: token t's
     * bytes are pc_bytes[pc_off[t] .. pc_off[t + 1]); ends have none. */
    char          *pc_bytes;
    uint32_t      *pc_off;
};

/* ======================================================================
 * Jobs
 * ====================================================================== */

void srv_job_release(srv_job *j)
{
    if (!j || atomic_fetch_sub(&j->refs, 1) != 1) return;
    srv_gen_free(&j->g);
    srv_text_free(&j->text);
    free(j->probs);
    pthread_mutex_destroy(&j->mu);
    pthread_cond_destroy(&j->cv);
    free(j);
}

const struct srv_gen *srv_job_gen(const srv_job *j) { return &j->g; }

static void job_fill_view(srv_job *j, struct srv_job_view *v)
{
    v->text = j->text.buf ? j->text.buf : "";
    v->ready = j->text.ready;
    v->probs = j->probs;
    v->n_probs = j->n_probs;
    v->done = j->done;
    v->finish = j->finish;
    v->err = j->err[0] ? j->err : NULL;
    v->err_status = j->err_status;
    v->usage = j->usage;
}

int srv_job_wait(srv_job *j, size_t seen_ready, int seen_probs, int timeout_ms,
                 struct srv_job_view *v)
{
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += timeout_ms / 1000;
    dl.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (dl.tv_nsec >= 1000000000L) { dl.tv_sec++; dl.tv_nsec -= 1000000000L; }
    pthread_mutex_lock(&j->mu);
    int news;
    while (!(news = j->done || j->text.ready > seen_ready || j->n_probs > seen_probs))
        if (pthread_cond_timedwait(&j->cv, &j->mu, &dl) != 0) break;
    if (!news) news = j->done || j->text.ready > seen_ready || j->n_probs > seen_probs;
    job_fill_view(j, v);
    return news;
}

void srv_job_unlock(srv_job *j) { pthread_mutex_unlock(&j->mu); }

/* Mark a job finished (finish reason, or an error) and wake its reader. */
static void job_finish(srv_job *j, const char *finish, int err_status, const char *err)
{
    pthread_mutex_lock(&j->mu);
    if (!j->done) {
        srv_text_finish(&j->text);
        j->done = 1;
        j->finish = finish;
        if (err) {
            snprintf(j->err, sizeof j->err, "%s", err);
            j->err_status = err_status;
        }
    }
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
}

void srv_job_cancel(srv_job *j)
{
    atomic_store(&j->cancelled, 1);
    srv_sched *s = j->sched;
    /* Still waiting in the queue: take it out now rather than at the
     * scheduler's next step, which may be a long prefill away. */
    pthread_mutex_lock(&s->mu);
    if (j->queued) {
        srv_job **pp = &s->qhead, *prev = NULL;
        while (*pp && *pp != j) { prev = *pp; pp = &(*pp)->next; }
        if (*pp) {
            *pp = j->next;
            if (s->qtail == j) s->qtail = prev;
            s->n_queued--;
            j->queued = 0;
            s->st.cancelled++;
            pthread_mutex_unlock(&s->mu);
            job_finish(j, NULL, 499, "request cancelled");
            srv_job_release(j);
            return;
        }
    }
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

srv_job *srv_sched_submit(srv_sched *s, struct srv_gen *g)
{
    srv_job *j = calloc(1, sizeof *j);
    if (!j) { srv_gen_free(g); return NULL; }
    pthread_mutex_init(&j->mu, NULL);
    pthread_cond_init(&j->cv, NULL);
    atomic_init(&j->refs, 2);      /* submitter + scheduler */
    atomic_init(&j->cancelled, 0);
    j->sched = s;
    j->g = *g;
    memset(g, 0, sizeof *g);
    srv_text_init(&j->text, j->g.stop, j->g.n_stop);
    j->usage.prompt = j->g.n_prompt;
    static atomic_uint_fast64_t counter;
    j->rng = j->g.has_seed ? j->g.seed
           : (uint64_t)time(NULL) * 0x9E3779B97F4A7C15ull ^ (atomic_fetch_add(&counter, 1) + 1) * 0xD1B54A32D192ED03ull
             ^ (uint64_t)(uintptr_t)j;

    pthread_mutex_lock(&s->mu);
    if (s->stopping || s->n_queued >= s->queue_max) {
        s->st.rejected++;
        pthread_mutex_unlock(&s->mu);
        atomic_store(&j->refs, 1);
        srv_job_release(j);
        return NULL;
    }
    j->queued = 1;
    if (s->qtail) s->qtail->next = j; else s->qhead = j;
    s->qtail = j;
    s->n_queued++;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return j;
}

/* ======================================================================
 * Slots
 * ====================================================================== */

static int common_prefix(const int32_t *a, int na, const int32_t *b, int nb)
{
    int n = na < nb ? na : nb, i = 0;
    while (i < n && a[i] == b[i]) i++;
    return i;
}

/* The free slot with the longest common prefix; ties go to the slot used
 * least recently, so other conversations keep their caches longer. */
static struct slot *pick_slot(srv_sched *s, const struct srv_gen *g)
{
    struct slot *best = NULL;
    int best_lcp = -1;
    for (int i = 0; i < s->n_slots; i++) {
        struct slot *sl = &s->slots[i];
        if (sl->job) continue;
        int l = common_prefix(sl->cache, sl->n_cache, g->prompt, g->n_prompt);
        if (l > best_lcp || (l == best_lcp && sl->last_used < best->last_used)) {
            best = sl;
            best_lcp = l;
        }
    }
    return best;
}

static void slot_start(srv_sched *s, struct slot *sl, srv_job *j)
{
    const struct srv_gen *g = &j->g;
    sl->job = j;
    sl->n_gen = 0;
    /* The session keeps the common prefix; at least one prompt token is
     * always evaluated again so that fresh logits exist. */
    int kept = s->be.session_sync(s->be.ud, sl->sess, g->prompt, g->n_prompt);
    if (kept >= g->n_prompt) kept = s->be.session_sync(s->be.ud, sl->sess, g->prompt, g->n_prompt - 1);
    if (kept < 0) kept = 0;
    /* The engine's answer is the truth (it kept a common prefix of what it
     * holds and the prompt); the slot's copy follows it. */
    memcpy(sl->cache, g->prompt, (size_t)kept * sizeof *sl->cache);
    sl->n_cache = kept;
    sl->n_eval = kept;
    pthread_mutex_lock(&j->mu);
    j->usage.cached = kept;
    pthread_mutex_unlock(&j->mu);
    pthread_mutex_lock(&s->mu);
    s->st.prompt_cached += (uint64_t)kept;
    pthread_mutex_unlock(&s->mu);
}

/* Slot fields belong to this thread; metrics read these copies. */
static void publish_gauges(srv_sched *s)
{
    int active = 0;
    uint64_t kv = 0;
    for (int i = 0; i < s->n_slots; i++) {
        if (s->slots[i].job) active++;
        kv += (uint64_t)s->slots[i].n_cache;
    }
    pthread_mutex_lock(&s->mu);
    s->st.active = active;
    s->st.kv_used = kv;
    pthread_mutex_unlock(&s->mu);
}

/* The counters and gauges change before the job's reader wakes, so what
 * it reads next from /metrics already counts this job. */
static void slot_end(srv_sched *s, struct slot *sl, const char *finish, int status, const char *err)
{
    srv_job *j = sl->job;
    if (!j) return;
    sl->job = NULL;
    sl->last_used = ++s->tick;
    pthread_mutex_lock(&s->mu);
    if (finish) s->st.finished++; else if (atomic_load(&j->cancelled)) s->st.cancelled++;
    pthread_mutex_unlock(&s->mu);
    publish_gauges(s);
    job_finish(j, finish, status, err);
    srv_job_release(j);
}

/* log p(tok) and the top-n alternatives from raw logits. */
static void token_logprobs(const float *lg, int n_vocab, int32_t tok, int n_top, struct srv_tokprob *tp)
{
    float mx = -INFINITY;
    for (int i = 0; i < n_vocab; i++) if (lg[i] > mx) mx = lg[i];
    double sum = 0;
    for (int i = 0; i < n_vocab; i++) sum += exp((double)(lg[i] - mx));
    float lse = mx + (float)log(sum);
    tp->tok = tok;
    tp->lp = lg[tok] - lse;
    tp->n_top = 0;
    /* Insertion into a short sorted list: n_top <= 20. */
    for (int i = 0; i < n_vocab && n_top > 0; i++) {
        float v = lg[i];
        if (tp->n_top == n_top && v <= tp->top_lp[n_top - 1]) continue;
        int k = tp->n_top < n_top ? tp->n_top++ : n_top - 1;
        while (k > 0 && tp->top_lp[k - 1] < v) {
            tp->top_lp[k] = tp->top_lp[k - 1];
            tp->top_tok[k] = tp->top_tok[k - 1];
            k--;
        }
        tp->top_lp[k] = v;
        tp->top_tok[k] = i;
    }
    for (int k = 0; k < tp->n_top; k++) tp->top_lp[k] -= lse;
}

/* The vocabulary's texts (s->pc_*); -1 when out of memory. */
static int build_pieces(srv_sched *s)
{
    const struct srv_backend *be = &s->be;
    size_t cap = (size_t)be->n_vocab * 4 + 256, n = 0;
    char *bytes = malloc(cap);
    uint32_t *off = malloc(((size_t)be->n_vocab + 1) * sizeof *off);
    for (int t = 0; bytes && off && t < be->n_vocab; t++) {
        off[t] = (uint32_t)n;
        if (be->is_eog(be->ud, t)) continue;
        if (cap - n < 256) {
            char *nb = realloc(bytes, cap * 2);
            if (!nb) { free(bytes); bytes = NULL; break; }
            bytes = nb;
            cap *= 2;
        }
        int k = be->piece(be->ud, t, bytes + n, 256);
        if (k > 0 && k <= 256) n += (size_t)k;
    }
    if (!bytes || !off || n > UINT32_MAX) { free(bytes); free(off); return -1; }
    off[be->n_vocab] = (uint32_t)n;
    s->pc_bytes = bytes;
    s->pc_off = off;
    return 0;
}

/* The job's tool-call constraint as a mask over logits (into s->masked):
 * the tokens whose text keeps the call valid. NULL when none is left (the
 * constraint is then dropped) or the texts cannot be built. */
static const float *constrained(srv_sched *s, srv_job *j, const float *logits)
{
    const struct srv_backend *be = &s->be;
    if (!s->pc_off && build_pieces(s)) return NULL;
    if (logits != s->masked) memcpy(s->masked, logits, (size_t)be->n_vocab * sizeof *s->masked);
    int any = 0;
    for (int t = 0; t < be->n_vocab; t++) {
        size_t a = s->pc_off[t], b = s->pc_off[t + 1];
        if (s->masked[t] == -INFINITY) continue;
        if (moeq_call_con_allows(j->g.call_con, s->pc_bytes + a, b - a)) any = 1;
        else s->masked[t] = -INFINITY;
    }
    return any ? s->masked : NULL;
}

/* A token was sampled for the slot: record it, check for the end. */
static void slot_token(srv_sched *s, struct slot *sl, const float *logits)
{
    srv_job *j = sl->job;
    const struct srv_backend *be = &s->be;
    if (j->g.ignore_eos && s->n_eog) {
        memcpy(s->masked, logits, (size_t)be->n_vocab * sizeof *s->masked);
        for (int i = 0; i < s->n_eog; i++) s->masked[s->eog[i]] = -INFINITY;
        logits = s->masked;
    }
    const float *raw = logits;
    struct moeq_call_con *con = j->g.call_con && !moeq_call_con_done(j->g.call_con) ? j->g.call_con : NULL;
    if (con) {
        const float *m = constrained(s, j, logits);
        if (m) logits = m;
        else { moeq_call_con_free(con); j->g.call_con = con = NULL; }
    }
    /* The history for the penalties: the prompt and the reply so far. */
    int32_t tok = be->sample(be->ud, sl->sess, &j->g.sp, &j->rng, logits, sl->cache, sl->n_cache);
    if (tok < 0 || tok >= be->n_vocab) {
        slot_end(s, sl, NULL, 500, "sampling failed");
        return;
    }
    if (con) moeq_call_con_feed(con, s->pc_bytes + s->pc_off[tok], s->pc_off[tok + 1] - s->pc_off[tok]);
    struct srv_tokprob tp;
    if (j->g.logprobs) token_logprobs(raw, be->n_vocab, tok, j->g.top_logprobs, &tp);

    pthread_mutex_lock(&s->mu);
    s->st.gen_tokens++;
    pthread_mutex_unlock(&s->mu);
    sl->n_gen++;
    if (be->is_eog(be->ud, tok)) {
        pthread_mutex_lock(&j->mu);
        j->usage.completion = sl->n_gen;
        pthread_mutex_unlock(&j->mu);
        slot_end(s, sl, "stop", 0, NULL);
        return;
    }
    char piece[256];
    int n = be->piece(be->ud, tok, piece, sizeof piece);
    if (n < 0 || n > (int)sizeof piece) n = 0;
    pthread_mutex_lock(&j->mu);
    int stopped = srv_text_push(&j->text, piece, (size_t)n);
    if (j->g.logprobs && stopped >= 0) {
        if (j->n_probs == j->cap_probs) {
            int nc = j->cap_probs ? j->cap_probs * 2 : 16;
            void *np = realloc(j->probs, (size_t)nc * sizeof *j->probs);
            if (np) { j->probs = np; j->cap_probs = nc; }
        }
        if (j->n_probs < j->cap_probs) j->probs[j->n_probs++] = tp;
    }
    j->usage.completion = sl->n_gen;
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);

    if (stopped < 0) slot_end(s, sl, NULL, 500, "out of memory");
    else if (stopped) slot_end(s, sl, "stop", 0, NULL);
    else if (con && moeq_call_con_done(con)) slot_end(s, sl, "stop", 0, NULL);   /* the forced call is the reply */
    else if (sl->n_gen >= j->g.max_tokens || sl->n_cache + 1 >= be->n_ctx) slot_end(s, sl, "length", 0, NULL);
    else sl->pending = tok;
}

/* ======================================================================
 * The loop
 * ====================================================================== */

/* Evaluate the next chunk of one slot's prompt; 1 if work was done. */
static int step_prefill(srv_sched *s)
{
    const struct srv_backend *be = &s->be;
    for (int i = 0; i < s->n_slots; i++) {
        struct slot *sl = &s->slots[i];
        if (!sl->job || sl->n_eval >= sl->job->g.n_prompt) continue;
        const struct srv_gen *g = &sl->job->g;
        int n = g->n_prompt - sl->n_eval;
        if (be->n_batch > 0 && n > be->n_batch) n = be->n_batch;
        char err[256] = "";
        double t0 = moeq_now_s();
        int rc = be->session_eval(be->ud, sl->sess, g->prompt + sl->n_eval, n, err, sizeof err);
        double dt = moeq_now_s() - t0;
        if (rc != 0) {
            sl->n_cache = 0;   /* unknown state: do not offer it for reuse */
            slot_end(s, sl, NULL, 500, err[0] ? err : "prompt evaluation failed");
            return 1;
        }
        memcpy(sl->cache + sl->n_cache, g->prompt + sl->n_eval, (size_t)n * sizeof *sl->cache);
        sl->n_cache += n;
        sl->n_eval += n;
        pthread_mutex_lock(&s->mu);
        s->st.prompt_tokens += (uint64_t)n;
        s->st.prompt_seconds += dt;
        pthread_mutex_unlock(&s->mu);
        if (sl->n_eval == g->n_prompt) {
            const float *lg = be->session_logits(be->ud, sl->sess);
            if (!lg) slot_end(s, sl, NULL, 500, "no logits after the prompt");
            else slot_token(s, sl, lg);
        }
        return 1;
    }
    return 0;
}

/* One batched decode step for every generating slot; 1 if work was done. */
static int step_decode(srv_sched *s)
{
    const struct srv_backend *be = &s->be;
    int n = 0;
    for (int i = 0; i < s->n_slots; i++) {
        struct slot *sl = &s->slots[i];
        if (!sl->job || sl->n_eval < sl->job->g.n_prompt) continue;
        s->dec_sess[n] = sl->sess;
        s->dec_tok[n] = sl->pending;
        s->dec_slot[n] = i;
        n++;
    }
    if (n == 0) return 0;
    char err[256] = "";
    double t0 = moeq_now_s();
    int rc = be->decode(be->ud, s->dec_sess, s->dec_tok, n, err, sizeof err);
    double dt = moeq_now_s() - t0;
    pthread_mutex_lock(&s->mu);
    s->st.gen_seconds += dt;
    s->st.decode_steps++;
    s->st.decode_rows += (uint64_t)n;
    pthread_mutex_unlock(&s->mu);
    for (int k = 0; k < n; k++) {
        struct slot *sl = &s->slots[s->dec_slot[k]];
        if (rc != 0) {
            sl->n_cache = 0;
            slot_end(s, sl, NULL, 500, err[0] ? err : "decode failed");
            continue;
        }
        sl->cache[sl->n_cache++] = s->dec_tok[k];
        const float *lg = be->session_logits(be->ud, sl->sess);
        if (!lg) slot_end(s, sl, NULL, 500, "no logits after decode");
        else slot_token(s, sl, lg);
    }
    return 1;
}

static void *sched_main(void *arg)
{
    srv_sched *s = arg;
    for (;;) {
        /* Admit: pop as many waiting jobs as there are free slots. */
        srv_job *admit[256];
        int n_admit = 0;
        pthread_mutex_lock(&s->mu);
        for (;;) {
            int active = 0, free_slots = 0;
            for (int i = 0; i < s->n_slots; i++) s->slots[i].job ? active++ : free_slots++;
            if (s->stopping || active || s->qhead) {
                while (s->qhead && free_slots > n_admit && n_admit < 256) {
                    srv_job *j = s->qhead;
                    s->qhead = j->next;
                    if (!s->qhead) s->qtail = NULL;
                    j->next = NULL;
                    j->queued = 0;
                    s->n_queued--;
                    admit[n_admit++] = j;
                }
                break;
            }
            pthread_cond_wait(&s->cv, &s->mu);
        }
        int stopping = s->stopping;
        pthread_mutex_unlock(&s->mu);
        if (stopping) {
            for (int k = 0; k < n_admit; k++) {
                job_finish(admit[k], NULL, 503, "the server is shutting down");
                srv_job_release(admit[k]);
            }
            break;
        }
        for (int k = 0; k < n_admit; k++) {
            if (atomic_load(&admit[k]->cancelled)) {
                job_finish(admit[k], NULL, 499, "request cancelled");
                srv_job_release(admit[k]);
                continue;
            }
            slot_start(s, pick_slot(s, &admit[k]->g), admit[k]);
        }
        for (int i = 0; i < s->n_slots; i++)
            if (s->slots[i].job && atomic_load(&s->slots[i].job->cancelled))
                slot_end(s, &s->slots[i], NULL, 499, "request cancelled");
        step_prefill(s);
        step_decode(s);
        publish_gauges(s);
    }
    for (int i = 0; i < s->n_slots; i++)
        slot_end(s, &s->slots[i], NULL, 503, "the server is shutting down");
    pthread_mutex_lock(&s->mu);
    while (s->qhead) {
        srv_job *j = s->qhead;
        s->qhead = j->next;
        j->queued = 0;
        s->n_queued--;
        job_finish(j, NULL, 503, "the server is shutting down");
        srv_job_release(j);
    }
    s->qtail = NULL;
    pthread_mutex_unlock(&s->mu);
    publish_gauges(s);
    return NULL;
}

srv_sched *srv_sched_new(const struct srv_backend *be, int n_slots, int queue_max,
                         char *err, size_t errlen)
{
    if (n_slots < 1 || n_slots > 256) {
        snprintf(err, errlen, "parallel must be between 1 and 256 (got %d)", n_slots);
        return NULL;
    }
    srv_sched *s = calloc(1, sizeof *s);
    if (!s) { snprintf(err, errlen, "out of memory"); return NULL; }
    s->be = *be;
    s->n_slots = n_slots;
    s->queue_max = queue_max < 0 ? 0 : queue_max;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    s->slots = calloc((size_t)n_slots, sizeof *s->slots);
    s->dec_sess = calloc((size_t)n_slots, sizeof *s->dec_sess);
    s->dec_tok = calloc((size_t)n_slots, sizeof *s->dec_tok);
    s->dec_slot = calloc((size_t)n_slots, sizeof *s->dec_slot);
    if (!s->slots || !s->dec_sess || !s->dec_tok || !s->dec_slot) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    /* The end tokens, found once, so ignore_eos costs a copy per token. */
    s->masked = malloc((size_t)(be->n_vocab > 0 ? be->n_vocab : 1) * sizeof *s->masked);
    s->eog = malloc(16 * sizeof *s->eog);
    if (!s->masked || !s->eog) { snprintf(err, errlen, "out of memory"); goto fail; }
    for (int t = 0; t < be->n_vocab && s->n_eog < 16; t++)
        if (be->is_eog(be->ud, t)) s->eog[s->n_eog++] = t;
    for (int i = 0; i < n_slots; i++) {
        s->slots[i].cache = malloc((size_t)(be->n_ctx > 0 ? be->n_ctx : 1) * sizeof(int32_t));
        if (!s->slots[i].cache) { snprintf(err, errlen, "out of memory"); goto fail; }
        s->slots[i].sess = be->session_new(be->ud, err, errlen);
        if (!s->slots[i].sess) goto fail;
    }
    int prc = pthread_create(&s->th, NULL, sched_main, s);
    if (prc != 0) {
        snprintf(err, errlen, "cannot start the scheduler thread: %s", strerror(prc));
        goto fail;
    }
    s->thread_started = 1;
    return s;
fail:
    srv_sched_free(s);
    return NULL;
}

void srv_sched_stop(srv_sched *s)
{
    if (!s || !s->thread_started) return;
    pthread_mutex_lock(&s->mu);
    s->stopping = 1;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->th, NULL);
    s->thread_started = 0;
}

void srv_sched_free(srv_sched *s)
{
    if (!s) return;
    srv_sched_stop(s);
    for (int i = 0; s->slots && i < s->n_slots; i++) {
        if (s->slots[i].sess) s->be.session_free(s->be.ud, s->slots[i].sess);
        free(s->slots[i].cache);
    }
    free(s->slots);
    free(s->dec_sess);
    free(s->dec_tok);
    free(s->dec_slot);
    free(s->eog);
    free(s->masked);
    free(s->pc_bytes);
    free(s->pc_off);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s);
}

void srv_sched_stats(srv_sched *s, struct srv_stats *st)
{
    pthread_mutex_lock(&s->mu);
    *st = s->st;
    st->queued = s->n_queued;
    st->n_slots = s->n_slots;
    st->queue_max = s->queue_max;
    st->kv_total = (uint64_t)s->n_slots * (uint64_t)(s->be.n_ctx > 0 ? s->be.n_ctx : 0);
    pthread_mutex_unlock(&s->mu);
}
