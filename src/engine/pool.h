/*
 * pool.h: a persistent pthread pool with a parallel-for. The caller's
 * thread takes part in the work, so a pool of N threads starts N-1
 * workers. Used by the engine (matmuls, experts), quantize and imatrix.
 */
#ifndef MOEQ_POOL_H
#define MOEQ_POOL_H

#include <stdint.h>

typedef struct moeq_pool moeq_pool;

/* fn processes items [begin, end) on thread tid (0..n_threads-1). */
typedef void (*moeq_task_fn)(void *ctx, int64_t begin, int64_t end, int tid);

/* n_threads <= 0 means all online cores. Never NULL (dies on OOM). */
moeq_pool *moeq_pool_new(int n_threads);
void       moeq_pool_free(moeq_pool *p);
int        moeq_pool_size(const moeq_pool *p);

/*
 * Run fn over [0, n) in chunks of at least grain items, handed out
 * dynamically; returns when all are done. Not reentrant: one parallel_for
 * at a time per pool.
 */
void moeq_pool_for(moeq_pool *p, int64_t n, int64_t grain, moeq_task_fn fn, void *ctx);

/* Number of online cores. */
int moeq_ncores(void);

#endif
