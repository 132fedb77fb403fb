/*
 * imatrix.h: importance matrices, the per-column activation statistics
 * that steer quantization.
 *
 * For every matmul weight the collector keeps, per matrix (one per expert
 * for the 3-D routed expert tensors), the sum over tokens of the squared
 * input activation of each input column and the number of tokens summed.
 * The quantizer's importance weight of column j of expert e is then
 * sums[e][j] / counts[e].
 *
 * Two file formats, both as llama.cpp writes them:
 *  - legacy .dat: int32 n_entries; per entry int32 name_len, name,
 *    int32 ncall, int32 nval, nval floats holding mean * ncall; then
 *    int32 chunk count and int32 len + dataset name.
 *  - GGUF: general.type = "imatrix", imatrix.datasets (string array),
 *    imatrix.chunk_count, imatrix.chunk_size (u32); per entry the F32
 *    tensors NAME.in_sum2 [n_per_row, n_mat] (raw sums) and NAME.counts
 *    [1, n_mat].
 * Loading either format merges into an existing matrix, so several runs
 * combine (--in-file).
 */
#ifndef MOEQ_IMATRIX_H
#define MOEQ_IMATRIX_H

#include <stddef.h>
#include <stdint.h>

struct moeq_imatrix_entry {
    char    *name;       /* weight tensor name, e.g. blk.0.ffn_up_exps.weight */
    int64_t  n_per_row;  /* input columns of one matrix */
    int64_t  n_mat;      /* matrices (experts); 1 for a 2-D weight */
    double  *sums;       /* [n_mat][n_per_row] sums of squared activations */
    double  *counts;     /* [n_mat] tokens (or calls, for legacy data) summed */
    int64_t  ncall;      /* evaluation calls that touched this entry */
};

struct moeq_imatrix {
    struct moeq_imatrix_entry *entries;
    int64_t  n_entries, cap;
    char   **datasets;
    int      n_datasets;
    int64_t  chunk_count;
    int64_t  chunk_size;  /* tokens per chunk; 0 when unknown */
};

struct moeq_imatrix *moeq_imatrix_new(void);
void moeq_imatrix_free(struct moeq_imatrix *im);

/* Entry by tensor name, or NULL. */
struct moeq_imatrix_entry *moeq_imatrix_find(const struct moeq_imatrix *im, const char *name);

/*
 * The entry whose statistics apply to weight `name`: its own, or, for
 * ffn_gate/ffn_up (which multiply the same input, so tools that fuse them
 * record only one; the reference stores ffn_up_exps for both) the
 * sibling's, as llama-quantize falls back. NULL when neither exists.
 */
struct moeq_imatrix_entry *moeq_imatrix_find_weight(const struct moeq_imatrix *im, const char *name);

/* Entry by name, created (zeroed) when absent; NULL on a shape conflict
 * with an existing entry (err set). */
struct moeq_imatrix_entry *moeq_imatrix_get(struct moeq_imatrix *im, const char *name,
                                            int64_t n_per_row, int64_t n_mat,
                                            char *err, size_t errlen);

/* Add n_rows activation rows (each n_per_row floats) to matrix mat. */
void moeq_imatrix_add(struct moeq_imatrix_entry *e, int64_t mat, const float *x, int64_t n_rows);

/* Add a dataset name (deduplicated). */
void moeq_imatrix_add_dataset(struct moeq_imatrix *im, const char *name);

/*
 * Load path (legacy .dat or GGUF, detected by its magic) and merge it into
 * im. Legacy data carries no chunk size: set im->chunk_size first (tokens
 * per evaluation call) so it merges with GGUF data at its true weight. Returns 0, or -1 with a one-line message naming the file and field.
 */
int moeq_imatrix_load(struct moeq_imatrix *im, const char *path, char *err, size_t errlen);

/*
 * Write im to path (src/util/outfile: temp file + rename, refused when it is one
 * of the command's inputs[0..n_inputs)) as legacy .dat or GGUF. Matrices
 * without data follow llama-imatrix's rule: when fewer than 5% of a
 * tensor's experts are missing they are stored with ones, else the tensor
 * is skipped. Each such case is reported on stderr by tensor and expert
 * id. Refuses (nothing written) what the loader would refuse: no entry to
 * store, or a value that is not a finite non-negative number. The legacy
 * int32 call and chunk counts saturate instead of wrapping. Returns 0, or
 * -1 with err set.
 */
int moeq_imatrix_save(const struct moeq_imatrix *im, const char *path, int gguf_format,
                      const char *const *inputs, int n_inputs, char *err, size_t errlen);

/* How many entries moeq_imatrix_save would write (the rule above). */
int64_t moeq_imatrix_n_storable(const struct moeq_imatrix *im);

/*
 * Importance weights for expert `expert` (0 for a 2-D weight) of a weight
 * with ne0 input columns and n_expert matrices: out[j] = sums / counts,
 * saturated at FLT_MAX (always finite).
 * Accepts per-expert entries and legacy flat vectors of ne0 * n_expert.
 * Returns 0; 1 when that expert has no data (out is the mean of the
 * experts that have, uniform ones when none has); -1 when
 * the entry's size does not fit the weight.
 */
int moeq_imatrix_weights(const struct moeq_imatrix_entry *e, int64_t ne0, int64_t n_expert,
                         int64_t expert, float *out);

/* Whether expert `expert` has data of its own (0 for one never routed,
 * including the placeholder of ones the writers store for it, and for an
 * entry that does not fit the weight): the case moeq_imatrix_weights fills
 * from the other experts. */
int moeq_imatrix_expert_has_data(const struct moeq_imatrix_entry *e, int64_t ne0, int64_t n_expert, int64_t expert);

/*
 * Experts routed to few tokens have noisy statistics. In every per-expert
 * entry, an expert with data whose count c is below frac x the mean count
 * of the entry's experts with data (T) is shrunk toward the entry's
 * count-weighted mean mu (all its experts' sums over all their counts):
 * its mean becomes (sums + (T - c) x mu) / T, as if padded up to T tokens
 * at the mean; continuous at c = T. Counts stay (they are also routing
 * frequencies); unrouted experts stay empty (the weights fill them).
 * Returns the experts changed; *n_tensors (when not NULL) the entries.
 */
#define MOEQ_IMATRIX_LOW_COUNT_FRAC 0.25
int64_t moeq_imatrix_shrink_low_counts(struct moeq_imatrix *im, double frac, int64_t *n_tensors);

#endif
