/*
 * util.h: small helpers every stage may include (library, tools, tests):
 * writing an error message into a caller's buffer, reading the monotonic
 * clock, freeing a table of entries that own heap members, and the one
 * progress callback type of the library's long steps.
 * Nothing here knows about models, quants or the engine.
 */
#ifndef MOEQ_UTIL_H
#define MOEQ_UTIL_H

#include <stddef.h>

/* printf into err[errlen]; nothing when err is NULL or errlen is 0. */
void moeq_set_err(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* moeq_set_err, then -1: `return moeq_fail(err, errlen, ...)`. */
int moeq_fail(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Seconds on the monotonic clock (for durations, not dates). */
double moeq_now_s(void);

/* Entry tables whose elements own heap members (imatrix, Hessian: a name
 * and arrays) list those members' byte offsets once, in owned[0..n_owned).
 * moeq_free_owned frees them in one element; moeq_free_entries in each of
 * the n elements (size bytes each) of entries, then entries itself. */
void moeq_free_owned(void *entry, const size_t *owned, int n_owned);
void moeq_free_entries(void *entries, size_t n, size_t size, const size_t *owned, int n_owned);

/* Progress of a long library step. Libraries never print progress: they
 * call a moeq_progress_fn after each item (the CLI's cli_progress_cb
 * prints it, one line per step when stderr is not a terminal). done of
 * total items finished, item the one just finished (may be NULL),
 * seconds since the start and the estimate of those left. */
struct moeq_progress {
    const char *task, *item;
    int         done, total;
    double      elapsed_s, eta_s;
};
typedef void (*moeq_progress_fn)(void *ud, const struct moeq_progress *p);

#endif
