/*
 * pool.c: persistent worker threads. Work is handed out in chunks from an
 * atomic counter so uneven items (experts with different token counts)
 * balance themselves.
 *
 * Generating one token runs a few parallel-fors per layer, each a few
 * microseconds long, so the hand-off itself must cost far less than a
 * futex round trip (tens of microseconds on a VM). Workers therefore
 * spin on the job counter for a while (~100 us) after each job and only
 * then sleep on a condition variable; the caller likewise spins before
 * waiting for stragglers. Spinning is bounded, so an idle pool, or one
 * sharing cores with other work, still sleeps.
 *
 * Lost wake-ups are ruled out by the seq_cst order of two pairs of
 * atomics: the caller bumps `generation` and then reads `sleepers`, a
 * worker raises `sleepers` (under the mutex) and then reads `generation`;
 * so either the caller sees the sleeper and broadcasts under the mutex,
 * or the worker sees the new job. `busy` / `caller_waits` are the same
 * pattern for the end of a job.
 */
#include "engine/pool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
static inline void cpu_relax(void) { _mm_pause(); }
#else
static inline void cpu_relax(void) { }
#endif

struct moeq_pool {
    int              n;          /* threads including the caller */
    pthread_t       *th;
    pthread_mutex_t  mu;
    pthread_cond_t   go, done;
    _Atomic uint64_t generation; /* bumped per job */
    _Atomic int      busy;       /* workers still in the current job */
    _Atomic int      sleepers;   /* workers waiting on `go` */
    _Atomic int      caller_waits;
    _Atomic int      quit;
    int64_t          spin_ns;    /* how long to spin before sleeping */
    /* the current job, published by the generation bump */
    moeq_task_fn     fn;
    void            *ctx;
    int64_t          total, grain;
    _Atomic int64_t  next;
};

int moeq_ncores(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void run_chunks(moeq_pool *p, int tid)
{
    for (;;) {
        int64_t b = atomic_fetch_add(&p->next, p->grain);
        if (b >= p->total) break;
        int64_t e = b + p->grain < p->total ? b + p->grain : p->total;
        p->fn(p->ctx, b, e, tid);
    }
}

/* Spin until cond(p, arg) holds or spin_ns passes; 1 if it holds. The
 * clock is read only every 64 pauses. */
#define SPIN_UNTIL(p, cond)                                                   \
    ({                                                                        \
        int ok_ = 0;                                                          \
        int64_t t0_ = 0;                                                      \
        for (unsigned it_ = 0;; it_++) {                                      \
            if (cond) { ok_ = 1; break; }                                     \
            if ((it_ & 63) == 63) {                                           \
                int64_t t_ = now_ns();                                        \
                if (!t0_) t0_ = t_;                                           \
                else if (t_ - t0_ > (p)->spin_ns) break;                      \
            }                                                                 \
            cpu_relax();                                                      \
        }                                                                     \
        ok_;                                                                  \
    })

struct worker_arg { moeq_pool *p; int tid; };

static void *worker(void *arg)
{
    struct worker_arg *wa = arg;
    moeq_pool *p = wa->p;
    int tid = wa->tid;
    free(wa);
    uint64_t seen = 0;
    for (;;) {
        if (!SPIN_UNTIL(p, atomic_load(&p->generation) != seen || atomic_load(&p->quit))) {
            pthread_mutex_lock(&p->mu);
            atomic_fetch_add(&p->sleepers, 1);
            while (!atomic_load(&p->quit) && atomic_load(&p->generation) == seen)
                pthread_cond_wait(&p->go, &p->mu);
            atomic_fetch_sub(&p->sleepers, 1);
            pthread_mutex_unlock(&p->mu);
        }
        if (atomic_load(&p->quit)) break;
        seen = atomic_load(&p->generation);
        run_chunks(p, tid);
        if (atomic_fetch_sub(&p->busy, 1) == 1 && atomic_load(&p->caller_waits)) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->done);
            pthread_mutex_unlock(&p->mu);
        }
    }
    return NULL;
}

moeq_pool *moeq_pool_new(int n_threads)
{
    if (n_threads <= 0) n_threads = moeq_ncores();
    moeq_pool *p = calloc(1, sizeof *p);
    if (!p) { fprintf(stderr, "moeq: out of memory\n"); exit(1); }
    p->n = n_threads;
    /* Spinning only pays when every thread has a core of its own. */
    p->spin_ns = n_threads <= moeq_ncores() ? 200000 : 0;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->go, NULL);
    pthread_cond_init(&p->done, NULL);
    p->th = calloc((size_t)n_threads, sizeof *p->th);
    if (!p->th) { fprintf(stderr, "moeq: out of memory\n"); exit(1); }
    for (int i = 1; i < n_threads; i++) {
        struct worker_arg *wa = malloc(sizeof *wa);
        if (!wa) { fprintf(stderr, "moeq: out of memory\n"); exit(1); }
        wa->p = p; wa->tid = i;
        int rc = pthread_create(&p->th[i], NULL, worker, wa);
        if (rc != 0) {
            fprintf(stderr, "moeq: cannot start thread %d: %s\n", i, strerror(rc));
            exit(1);
        }
    }
    return p;
}

void moeq_pool_free(moeq_pool *p)
{
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->quit, 1);
    pthread_cond_broadcast(&p->go);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n; i++) pthread_join(p->th[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->go);
    pthread_cond_destroy(&p->done);
    free(p->th);
    free(p);
}

int moeq_pool_size(const moeq_pool *p) { return p->n; }

void moeq_pool_for(moeq_pool *p, int64_t n, int64_t grain, moeq_task_fn fn, void *ctx)
{
    if (n <= 0) return;
    if (grain < 1) grain = 1;
    if (p->n == 1 || n <= grain) { fn(ctx, 0, n, 0); return; }
    p->fn = fn; p->ctx = ctx; p->total = n; p->grain = grain;
    atomic_store(&p->next, 0);
    atomic_store(&p->busy, p->n - 1);
    atomic_fetch_add(&p->generation, 1);
    if (atomic_load(&p->sleepers) > 0) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->go);
        pthread_mutex_unlock(&p->mu);
    }
    run_chunks(p, 0);
    if (!SPIN_UNTIL(p, atomic_load(&p->busy) == 0)) {
        pthread_mutex_lock(&p->mu);
        atomic_store(&p->caller_waits, 1);
        while (atomic_load(&p->busy) > 0) pthread_cond_wait(&p->done, &p->mu);
        atomic_store(&p->caller_waits, 0);
        pthread_mutex_unlock(&p->mu);
    }
}
