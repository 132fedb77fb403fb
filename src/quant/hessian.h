/*
 * hessian.h: full input second moments H = sum over tokens of x^T x, per
 * weight matrix (one per expert for the routed expert tensors), the data
 * behind Hessian-aware rounding (gptq.h). The importance matrix keeps only
 * H's diagonal; this keeps all of it, so it costs n^2 doubles per matrix
 * (a 2048-wide input: 32 MiB; the full Qwen3-30B-A3B shape's 128 experts
 * per layer would need 4 GiB a layer, so it is for models of moderate width
 * or for a subset of layers).
 *
 * File format (moeq's own; a GGUF so the usual tools can list it):
 * general.type = "moeq.hessian", per entry the F32 tensors NAME.hessian
 * [n, n, n_mat] (raw sums) and NAME.hcounts [n_mat] (tokens summed).
 */
#ifndef MOEQ_HESSIAN_H
#define MOEQ_HESSIAN_H

#include <stddef.h>
#include <stdint.h>

struct moeq_hessian_entry {
    char    *name;     /* weight tensor name */
    int64_t  n;        /* input columns */
    int64_t  n_mat;    /* matrices (experts); 1 for a 2-D weight */
    double  *h;        /* [n_mat][n][n]; only the lower triangle while collecting */
    double  *counts;   /* [n_mat] tokens summed */
};

struct moeq_hessian {
    struct moeq_hessian_entry *entries;
    int64_t n_entries, cap;
};

struct moeq_hessian *moeq_hessian_new(void);
void moeq_hessian_free(struct moeq_hessian *hs);

/* Entry by name, or NULL; the gate/up sibling's when the name has none
 * (they multiply the same input). */
struct moeq_hessian_entry *moeq_hessian_find(const struct moeq_hessian *hs, const char *name);

/* Add n_rows inputs of n columns for matrix m of weight name (n_mat
 * matrices); the entry is created on first use. -1 with err set on out of
 * memory or a shape conflict. */
int moeq_hessian_add(struct moeq_hessian *hs, const char *name, int64_t n_mat, int64_t m, const float *x,
                     int n_rows, int64_t n, char *err, size_t errlen);

/* Matrix m of e as a full symmetric n x n array (malloc'd), or NULL. */
double *moeq_hessian_matrix(const struct moeq_hessian_entry *e, int64_t m);

/* Save through the temp-and-rename writer (never over one of inputs). */
int moeq_hessian_save(const struct moeq_hessian *hs, const char *path, const char *const *inputs, int n_inputs,
                      char *err, size_t errlen);
/* Load (merging into hs); -1 with err naming the file and the field. */
int moeq_hessian_load(struct moeq_hessian *hs, const char *path, char *err, size_t errlen);

#endif
