/*
 * fuzz_hessian.c: libFuzzer harness for the Hessian file reader (`make
 * fuzz-hessian`, src/quant/hessian.c), the statistics quantize --hessian
 * reads.
 *
 * As fuzz_imatrix.c: fuzz_load_twice (fuzz.h) loads the input as an
 * in-memory file twice into the same collection (a load merges). The promises checked: a failure is
 * one line naming the file; what loaded once merges with a second copy of
 * itself; a success leaves every entry with a shape, finite sums, finite
 * non-negative counts, and a symmetric full matrix for every expert.
 */
#include "fuzz.h"
#include "quant/hessian.h"

#include <math.h>

static void hs_check(const struct moeq_hessian *hs)
{
    for (int64_t i = 0; i < hs->n_entries; i++) {
        const struct moeq_hessian_entry *e = &hs->entries[i];
        FUZZ_ASSERT(e->name && e->n > 0 && e->n_mat > 0);
        FUZZ_ASSERT(moeq_hessian_find(hs, e->name) == e);
        for (int64_t m = 0; m < e->n_mat; m++) {
            FUZZ_ASSERT(isfinite(e->counts[m]) && e->counts[m] >= 0);
            double *H = moeq_hessian_matrix(e, m);
            FUZZ_ASSERT(H);
            for (int64_t r = 0; r < e->n; r++)
                for (int64_t c = 0; c < e->n; c++) {
                    FUZZ_ASSERT(isfinite(H[r * e->n + c]));
                    FUZZ_ASSERT(H[r * e->n + c] == H[c * e->n + r]);
                }
            free(H);
        }
    }
}

static int hs_load(void *hs, const char *path, int pass, char *err, size_t errlen)
{
    (void)pass;
    return moeq_hessian_load(hs, path, err, errlen);
}

static void hs_check_cb(void *hs) { hs_check(hs); }

FUZZ_ENTRY(hessian)
{
    struct moeq_hessian *hs = moeq_hessian_new();
    FUZZ_ASSERT(hs);
    fuzz_load_twice(data, size, hs, hs_load, hs_check_cb);
    moeq_hessian_free(hs);
    return 0;
}
