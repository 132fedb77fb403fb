/*
 * pool.c: persistent worker threads that sleep on a condition variable
 * between jobs. Work is handed out in chunks from an atomic counter so
 * uneven items (experts with different token counts) balance themselves.
 */
#include "pool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

struct moeq_pool {
    int              n;          /* threads including the caller */
    pthread_t       *th;
    pthread_mutex_t  mu;
    pthread_cond_t   go, done;
    uint64_t         generation; /* bumped per job */
    int              busy;       /* workers still in the current job */
    int              quit;
    /* the current job */
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

static void run_chunks(moeq_pool *p, int tid)
{
    for (;;) {
        int64_t b = atomic_fetch_add(&p->next, p->grain);
        if (b >= p->total) break;
        int64_t e = b + p->grain < p->total ? b + p->grain : p->total;
        p->fn(p->ctx, b, e, tid);
    }
}

struct worker_arg { moeq_pool *p; int tid; };

static void *worker(void *arg)
{
    struct worker_arg *wa = arg;
    moeq_pool *p = wa->p;
    int tid = wa->tid;
    free(wa);
    uint64_t seen = 0;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->quit && p->generation == seen) pthread_cond_wait(&p->go, &p->mu);
        if (p->quit) break;
        seen = p->generation;
        pthread_mutex_unlock(&p->mu);
        run_chunks(p, tid);
        pthread_mutex_lock(&p->mu);
        if (--p->busy == 0) pthread_cond_signal(&p->done);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

moeq_pool *moeq_pool_new(int n_threads)
{
    if (n_threads <= 0) n_threads = moeq_ncores();
    moeq_pool *p = calloc(1, sizeof *p);
    if (!p) { fprintf(stderr, "moeq: out of memory\n"); exit(1); }
    p->n = n_threads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->go, NULL);
    pthread_cond_init(&p->done, NULL);
    p->th = calloc((size_t)n_threads, sizeof *p->th);
    if (!p->th) { fprintf(stderr, "moeq: out of memory\n"); exit(1); }
    for (int i = 1; i < n_threads; i++) {
        struct worker_arg *wa = malloc(sizeof *wa);
        if (!wa) { fprintf(stderr, "moeq: out of memory\n"); exit(1); }
        wa->p = p; wa->tid = i;
        if (pthread_create(&p->th[i], NULL, worker, wa) != 0) {
            fprintf(stderr, "moeq: cannot start thread %d\n", i);
            exit(1);
        }
    }
    return p;
}

void moeq_pool_free(moeq_pool *p)
{
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->quit = 1;
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
    pthread_mutex_lock(&p->mu);
    p->fn = fn; p->ctx = ctx; p->total = n; p->grain = grain;
    atomic_store(&p->next, 0);
    p->busy = p->n - 1;
    p->generation++;
    pthread_cond_broadcast(&p->go);
    pthread_mutex_unlock(&p->mu);
    run_chunks(p, 0);
    pthread_mutex_lock(&p->mu);
    while (p->busy > 0) pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}
