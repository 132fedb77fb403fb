/*
 * fuzz_hessian.c: libFuzzer harness for the Hessian file reader (`make
 * fuzz-hessian`, src/quant/hessian.c), the statistics quantize --hessian
 * reads.
 *
 * As fuzz_imatrix.c: the input becomes an in-memory file loaded twice into
 * the same collection (a load merges). The promises checked: a failure is
 * one line naming the file; what loaded once merges with a second copy of
 * itself; a success leaves every entry with a shape, finite sums, finite
 * non-negative counts, and a symmetric full matrix for every expert.
 */
#include "fuzz.h"
#include "quant/hessian.h"

#include <math.h>
#include <sys/mman.h>
#include <unistd.h>

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

FUZZ_ENTRY(hessian)
{
    int fd = memfd_create("fuzz.hessian", 0);
    FUZZ_ASSERT(fd >= 0);
    FUZZ_ASSERT(size == 0 || write(fd, data, size) == (ssize_t)size);
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    struct moeq_hessian *hs = moeq_hessian_new();
    FUZZ_ASSERT(hs);
    for (int pass = 0; pass < 2; pass++) {
        char err[512] = "";
        if (moeq_hessian_load(hs, path, err, sizeof err) != 0) {
            FUZZ_ASSERT(strncmp(err, path, strlen(path)) == 0 && err[strlen(path)] == ':');
            FUZZ_ASSERT(!strchr(err, '\n'));
            FUZZ_ASSERT(pass == 0);
            break;
        }
        hs_check(hs);
    }
    moeq_hessian_free(hs);
    close(fd);
    return 0;
}
