/*
 * util.c: the small helpers of util.h (error buffers, the monotonic
 * clock, freeing entry tables), shared by every stage so that none keeps its own copy.
 */
#include "util/util.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void set_errv(char *err, size_t errlen, const char *fmt, va_list ap)
{
    if (err && errlen) vsnprintf(err, errlen, fmt, ap);
}

void moeq_set_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    set_errv(err, errlen, fmt, ap);
    va_end(ap);
}

int moeq_fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    set_errv(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

double moeq_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void moeq_free_owned(void *entry, const size_t *owned, int n_owned)
{
    for (int k = 0; k < n_owned; k++) {
        void *p;
        memcpy(&p, (char *)entry + owned[k], sizeof p);
        free(p);
    }
}

void moeq_free_entries(void *entries, size_t n, size_t size, const size_t *owned, int n_owned)
{
    for (size_t i = 0; i < n; i++) moeq_free_owned((char *)entries + i * size, owned, n_owned);
    free(entries);
}
