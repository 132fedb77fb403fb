/*
 * fuzz_imatrix.c: libFuzzer harness for the imatrix readers (`make
 * fuzz-imatrix`): the legacy .dat one and the GGUF one, which
 * moeq_imatrix_load picks by the magic.
 *
 * The loader takes a path, so fuzz_load_twice (fuzz.h) makes the input an
 * in-memory file and loads it twice into the same matrix, the second time
 * with a chunk size set, since a load merges into what is there. The promises checked: a failure is one
 * line naming the file; what loaded once merges with a second copy of
 * itself; a success leaves every entry with a shape, finite
 * non-negative sums and counts, and importance weights that are finite
 * for every matrix.
 */
#include "fuzz.h"
#include "quant/imatrix.h"

#include <math.h>

static void imx_check(const struct moeq_imatrix *im)
{
    FUZZ_ASSERT(im->n_entries > 0);
    for (int64_t i = 0; i < im->n_entries; i++) {
        const struct moeq_imatrix_entry *e = &im->entries[i];
        FUZZ_ASSERT(e->name && e->n_per_row > 0 && e->n_mat > 0);
        FUZZ_ASSERT(moeq_imatrix_find(im, e->name) == e);
        for (int64_t m = 0; m < e->n_mat; m++) {
            FUZZ_ASSERT(isfinite(e->counts[m]) && e->counts[m] >= 0);
            for (int64_t j = 0; j < e->n_per_row; j++) {
                double s = e->sums[m * e->n_per_row + j];
                FUZZ_ASSERT(isfinite(s) && s >= 0);
            }
        }
        float *w = malloc((size_t)e->n_per_row * sizeof *w);
        FUZZ_ASSERT(w);
        for (int64_t m = 0; m < e->n_mat; m++) {
            int r = moeq_imatrix_weights(e, e->n_per_row, e->n_mat, m, w);
            FUZZ_ASSERT(r == 0 || r == 1);
            for (int64_t j = 0; j < e->n_per_row; j++) FUZZ_ASSERT(isfinite(w[j]) && w[j] >= 0);
        }
        free(w);
    }
    for (int i = 0; i < im->n_datasets; i++) FUZZ_ASSERT(im->datasets[i]);
}

static int imx_load(void *im, const char *path, int pass, char *err, size_t errlen)
{
    if (pass == 1) ((struct moeq_imatrix *)im)->chunk_size = 512;
    return moeq_imatrix_load(im, path, err, errlen);
}

static void imx_check_cb(void *im) { imx_check(im); }

FUZZ_ENTRY(imatrix)
{
    struct moeq_imatrix *im = moeq_imatrix_new();
    FUZZ_ASSERT(im);
    fuzz_load_twice(data, size, im, imx_load, imx_check_cb);
    moeq_imatrix_free(im);
    return 0;
}
