/*
 * fuzz_selftest.c: a harness with a planted finding, the check that `make
 * fuzz` fails when a harness finds something (tests/test_fuzz_corpus.c
 * runs `make fuzz-selftest` under make check-long and expects a non-zero
 * exit naming the report). Its seed corpus holds one input starting "UB!",
 * which overflows a signed int: undefined behaviour that UBSan reports and,
 * in the fuzz build (-fno-sanitize-recover=all), must also stop the run.
 * Any other input does nothing. Not one of FUZZ_TARGETS.
 */
#include "fuzz.h"

#include <limits.h>

FUZZ_ENTRY(selftest)
{
    if (size >= 3 && memcmp(data, "UB!", 3) == 0) {
        volatile int big = INT_MAX;
        volatile int one = size >= 3;
        int sum = big + one;
        return sum == 0;
    }
    return 0;
}
