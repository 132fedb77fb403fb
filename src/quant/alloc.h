/*
 * alloc.h: importance-steered bit allocation, the planner behind
 * `moeq quantize --target-bpw / --target-size / --fit`.
 *
 * It owns the allocation units (one per quantizable weight tensor, the
 * routed gate and up of a layer tied into one unit since decode reads them
 * together; norms and the router are never units and stay as they are),
 * each unit's candidate types (every type moeq quantizes that the row
 * length allows, optionally restricted) with their exact byte sizes, the
 * measurement of each candidate's predicted damage (imatrix-weighted
 * squared quantization error from deterministically sampled rows, scaled to
 * the expected per-token squared error of the unit's output, times a
 * per-unit sensitivity factor: 1, or measured in the engine by
 * alloc_kld.c), the sensitivity file that stores it, the
 * multiple-choice knapsack that picks one candidate per unit under a byte
 * budget, and the plan file (--tensor-type style lines). It writes no
 * model file: the quantize job (quantize.h) takes its per-tensor types.
 */
#ifndef MOEQ_ALLOC_H
#define MOEQ_ALLOC_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "gguf/gguf.h"
#include "quant/imatrix.h"
#include "util/util.h"

#define MOEQ_ALLOC_MAX_CAND 24

struct moeq_alloc_unit {
    char     name[128];       /* tensor name, or blk.N.ffn_gate_up_exps for the tied pair */
    int      layer;           /* -1 outside the layers */
    int      group;           /* enum moeq_group of its (first) tensor */
    int      n_tensors;
    int      tensor[2];       /* indices in file order */
    uint64_t nelem;           /* weights, all its tensors */
    int      n_cand;
    int      type[MOEQ_ALLOC_MAX_CAND];
    uint64_t bytes[MOEQ_ALLOC_MAX_CAND];   /* exact, each tensor padded to the alignment */
    double   err[MOEQ_ALLOC_MAX_CAND];     /* expected per-token squared output error */
    double   sens;            /* sensitivity factor: damage = sens x err */
    /* single-unit swaps measured in the engine (moeq_alloc_measure_kld):
     * the unit alone quantized to meas_type[i], the rest as the source,
     * gives a mean KL-divergence change of meas_kld[i]; the first (about
     * 2.5 bpw, the IQ2_S class) sets sens, a second (about 3.5 bpw) checks it */
    int      n_meas;
    int      meas_type[2];
    double   meas_kld[2];
};

struct moeq_alloc {
    int n_units;
    struct moeq_alloc_unit *units;
    int n_tensors;            /* of the source file */
    uint64_t fixed_bytes;     /* tensors in no unit (norms, router), padded */
    uint64_t header_bytes;    /* upper bound of the output's header, plan key included */
    uint64_t nelem_all;       /* elements of all tensors */
    uint64_t alignment;
};

/* Units and candidates of f. allow: NULL, or n_allow type ids the
 * candidates are restricted to. no_iq2: drop IQ2_* (no importance data)
 * except for token_embd and output. -1 with err when a unit has no
 * candidate. */
int moeq_alloc_init(struct moeq_alloc *a, const gguf_file *f, const int *allow, int n_allow,
                    int no_iq2, char *err, size_t errlen);
void moeq_alloc_free(struct moeq_alloc *a);

/* Measure err[] of every candidate: rows_per_unit rows of each tensor
 * (spread over its experts, picked by a fixed stride) are quantized with
 * their importance weights (im may be NULL: uniform), dequantized and
 * compared. After each unit, progress (when not NULL) with ud, task
 * "measuring", item the unit's name. sens is set to 1. */
int moeq_alloc_measure(struct moeq_alloc *a, const gguf_file *f, const struct moeq_imatrix *im,
                       int rows_per_unit, int n_threads, moeq_progress_fn progress, void *ud,
                       char *err, size_t errlen);

/*
 * Sensitivity file, text, one record a line ('#' starts a comment):
 *   moeq-sensitivity 2
 *   unit NAME SENS NELEM
 *   cand NAME TYPE BYTES ERR
 *   kld NAME TYPE KLD            (version 2: a measured single-unit swap)
 * cand and kld lines follow their unit; version 1 files (no kld lines)
 * still load. Loading matches units and candidates by
 * name and type and checks the byte sizes, so a file made for another
 * model or another --allow-types is refused. Candidates missing from the
 * file are dropped; SENS may be edited by hand.
 */
int moeq_alloc_save(const struct moeq_alloc *a, const char *path, char *err, size_t errlen);
int moeq_alloc_load(struct moeq_alloc *a, const char *path, char *err, size_t errlen);

/*
 * Measured sensitivity factors. The engine runs the source (o->model_path,
 * the file f) over n_chunks chunks of n_ctx tokens of o->text for the base
 * log-probabilities (second half of each chunk scored, as perplexity);
 * then, for each measured unit, the unit alone is quantized in memory to
 * its reference candidate (the one nearest 2.5 bpw; with o->check also the
 * one nearest 3.5 bpw) with its importance data and the mean KL-divergence
 * change against the base is recorded (meas_*). sens = KLD / err at the
 * reference type. With o->max_units below the unit count, token_embd,
 * output and, per group (attn_q, ..., down), an even deterministic sample
 * of its layers from the first to the last are measured (the group's share
 * of o->max_units); the others interpolate their group's factors over the
 * layer index in log space (the nearest measured layer past the ends; the
 * median of all measured units where a group has none, as when factors are
 * read back for some units only). Progress with ETA through o->progress.
 */
struct moeq_alloc_kld_opts {
    const char *model_path;
    const char *text;                 /* calibration text, text_len bytes */
    size_t text_len;
    int n_chunks, n_ctx;              /* <= 0: 4 chunks of 512 tokens */
    int max_units;                    /* <= 0: every unit */
    int check;                        /* also measure at the check type */
    int n_threads;
    const struct moeq_imatrix *im;    /* NULL: uniform weights */
    FILE *log;                        /* notes (the base pass, a short text); NULL: none */
    moeq_progress_fn progress;        /* after each unit (its swaps as the item); NULL: none */
    void *progress_ud;
};
int moeq_alloc_measure_kld(struct moeq_alloc *a, const gguf_file *f, const struct moeq_alloc_kld_opts *o,
                           char *err, size_t errlen);
/* sens of every unit from its meas_kld[0] (as above); units without
 * measurements keep their factor when none has one. */
void moeq_alloc_set_factors(struct moeq_alloc *a);

/* Spearman's rank correlation of x and y (ties get their mean rank); 0
 * when n < 2 or a side is constant. */
double moeq_spearman(const double *x, const double *y, int n);

/* The rank correlations between predicted damage (raw err, and sens x
 * err) and the measured KLD over the single-unit swaps, and a table of
 * them, to out. -1 when no unit has a measurement. */
int moeq_alloc_sensitivity_report(const struct moeq_alloc *a, FILE *out);

/* Budget for the units' bytes given a whole-file size. */
uint64_t moeq_alloc_unit_budget(const struct moeq_alloc *a, uint64_t file_bytes);
/* Bytes of the whole file (upper bound of the header) for a choice. */
uint64_t moeq_alloc_file_bytes(const struct moeq_alloc *a, const int *choice);
double moeq_alloc_damage(const struct moeq_alloc *a, const int *choice);

/*
 * Multiple-choice knapsack: one candidate index per unit into choice[],
 * total unit bytes <= budget, minimising sum of sens x err. Dynamic
 * programming over byte sizes in steps of the largest common divisor (exact)
 * or, when that gives too many states, budget / 2^17 with sizes rounded to
 * the nearest step (the capacity shrinks until the exact sum fits), then an
 * exact greedy fill of what is left. Deterministic. -1 with err when even
 * the smallest candidates do not fit.
 */
int moeq_alloc_solve(const struct moeq_alloc *a, uint64_t budget, int *choice, char *err, size_t errlen);

/* The choice as a per-tensor type plan for quantize.h (types[n_tensors],
 * -1 outside the units). */
void moeq_alloc_types(const struct moeq_alloc *a, const int *choice, int *types);

/* The plan as --tensor-type lines "^NAME$=TYPE" (dots escaped), one per
 * tensor, with a comment header; and as one compact string "NAME=TYPE;..."
 * for the output's metadata (malloc'd). */
int moeq_alloc_write_plan(const struct moeq_alloc *a, const int *choice, FILE *out);
char *moeq_alloc_plan_string(const struct moeq_alloc *a, const int *choice, const gguf_file *f);

#endif
