/*
 * util.h: small helpers every stage may include (library, tools, tests):
 * writing an error message into a caller's buffer and reading the
 * monotonic clock. Nothing here knows about models, quants or the engine.
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

#endif
