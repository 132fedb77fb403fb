/*
 * util.c: the small helpers of util.h (error buffers, the monotonic
 * clock), shared by every stage so that none keeps its own copy.
 */
#include "util/util.h"

#include <stdarg.h>
#include <stdio.h>
#include <time.h>

void moeq_set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

double moeq_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
