/*
 * quantize.h: quantize a model file, the job behind `moeq quantize`, as one
 * library call: options in, a report out, progress through a callback.
 *
 * The job opens the input, plans every tensor's type (quant_plan: a mix, a
 * recipe, rules, overrides, or a caller's own per-tensor type plan),
 * matches and checks the importance matrix, copies the metadata, and
 * streams the tensors through the row quantizers on a thread pool into the
 * output (written to a temporary file renamed at the end, so a failure
 * never leaves a partial file). The report holds each tensor's type, bytes
 * and error against the source. Anyone may include it; it prints nothing
 * but warnings and notes (to opts.log).
 */
#ifndef MOEQ_QUANTIZE_H
#define MOEQ_QUANTIZE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "gguf/gguf.h"
#include "quant/quant_plan.h"
#include "quant/quants.h"

/* One tensor of the output, in file order. */
struct moeq_quantize_tensor {
    char    *name;
    int      src_type, type;
    int      quantized;       /* 0: copied unchanged */
    int      fallback;        /* the row length forced a compatible type */
    int      rule;            /* index of the rule that chose the type, or -1 */
    int      recipe;          /* the recipe's group type chose it */
    int      planned;         /* the caller's type plan (opts.types) chose it */
    int      imatrix;         /* importance data steered it */
    int      gptq;            /* Hessian-aware rounding (matrices of it that had data) */
    int      gptq_fallback;   /* matrices with too few tokens for it (diagonal rounding) */
    uint32_t n_dims;
    uint64_t ne[4];
    uint64_t nelem, src_bytes, nbytes;
    /* error of the written tensor against the source: RMSE, importance-
     * weighted RMSE and RMS error relative to the RMS of the source; 0 for
     * a copied tensor and in a dry run */
    double   rmse, wrmse, rel;
};

struct moeq_quantize_report {
    int n_tensors;
    struct moeq_quantize_tensor *tensors;
    uint64_t src_bytes, out_bytes;   /* tensor data, all tensors */
    const struct moeq_mix *mix;      /* the one written as general.file_type */
    int imatrix_used;                /* tensors quantized with importance data */
    int n_threads;
    double seconds;                  /* writing the tensor data */
};

/* After each tensor is written (not in a dry run). */
struct moeq_quantize_progress {
    int index, n_tensors;
    const struct moeq_quantize_tensor *tensor;   /* its final report entry */
    uint64_t done_bytes, total_bytes;            /* source tensor data */
    double elapsed_s;
};
typedef void (*moeq_quantize_progress_fn)(void *ctx, const struct moeq_quantize_progress *p);

/* A metadata key set in the output (--override-kv KEY=TYPE:VALUE): an
 * INT64, FLOAT64, BOOL or STRING value; a string points into the caller's
 * memory. */
struct moeq_kv_override {
    char       key[128];
    gguf_value val;
};

/* Parse llama.cpp's KEY=TYPE:VALUE (TYPE int, float, bool or str; bool is
 * true or false). 0, or -1 with err set. */
int moeq_kv_override_parse(const char *spec, struct moeq_kv_override *kv, char *err, size_t errlen);

struct moeq_quantize_opts {
    const char *in_path, *out_path;
    const struct moeq_mix *mix;               /* required: base type, file type, rules */
    const struct moeq_recipe *recipe;         /* NULL or group types over the mix */
    const struct moeq_type_rule *rules;       /* --tensor-type, first match wins */
    int n_rules;
    int token_embd_type, output_type;         /* -1: by the mix and recipe */
    int pure;                                 /* no mix rules */
    int leave_output_tensor;                  /* output.weight copied unchanged */
    const struct moeq_kv_override *kv;        /* set in the output's metadata, in order */
    int n_kv;
    /* NULL, or a type plan of n_types entries, one per input tensor in file
     * order: a type >= 0 replaces what the plan chose for a quantizable
     * tensor (the row length must fit it), -1 keeps the plan's */
    const int *types;
    int n_types;
    const char *plan_meta;                    /* NULL, or written as the moeq.plan string key */
    const char *imatrix_path;                 /* NULL: no importance data */
    const char *hessian_path;                 /* NULL, or full input second moments
                                                 (hessian.h): Hessian-aware rounding (gptq.h)
                                                 for every tensor they cover */
    double gptq_damp;                         /* damping, a fraction of H's mean diagonal (0: MOEQ_GPTQ_DAMP) */
    /* NULL, or calibration text (calib_len bytes, read from calib_path):
     * Hessian-aware rounding with H collected layer by layer as the file
     * is written, each weight's from the model with every weight before
     * it already quantized (hessian_seq.h); not with hessian_path */
    const char *calib_text;
    size_t calib_len;
    const char *calib_path;
    int calib_ctx;                            /* tokens per chunk (<= 0: 512) */
    int calib_chunks;                         /* <= 0: every chunk of the text */
    const char *const *include;               /* use the imatrix only for these */
    int n_include;
    const char *const *exclude;               /* never for these */
    int n_exclude;
    int allow_requantize;                     /* quantized sources allowed */
    int ignore_imatrix_rules;                 /* IQ2_* without importance data */
    struct moeq_quant_params qp;              /* given to every row quantizer */
    int n_threads;                            /* <= 0: all cores */
    int dry_run;                              /* plan and check; write nothing; a
                                                 quantized source is only noted */
    uint64_t split_max_size;                  /* > 0: a split set, parts of at most this
                                                 much tensor data (gguf_writer_split_max_size) */
    int keep_split;                           /* split as the input's split set */
    moeq_quantize_progress_fn progress;       /* NULL: none */
    void *progress_ctx;
    FILE *log;                                /* warnings, notes; NULL: stderr */
};

/* Defaults: no recipe, rules, plan or imatrix, overrides -1, all cores. */
void moeq_quantize_opts_init(struct moeq_quantize_opts *o);

/*
 * Run the job. 0 with *r filled (free with moeq_quantize_report_free);
 * -1 with err set ("quantize: ..." or the reader's or writer's message),
 * *r empty and no output file.
 */
int moeq_quantize_file(const struct moeq_quantize_opts *o, struct moeq_quantize_report *r,
                       char *err, size_t errlen);

void moeq_quantize_report_free(struct moeq_quantize_report *r);

/* Quantize one tensor of an open file into dst (nbytes, exactly what the
 * tensor takes as type), expert by expert with ie's importance weights
 * (NULL: uniform), rows in parallel on pool: for callers that compute with
 * a tensor in memory instead of writing a file (the allocator's measured
 * sensitivities). 0, or -1 with err set. */
struct moeq_imatrix_entry;
typedef struct moeq_pool moeq_pool;
int moeq_quantize_tensor_mem(const gguf_tensor *t, int type, const struct moeq_imatrix_entry *ie,
                             const struct moeq_quant_params *qp, moeq_pool *pool, void *dst, size_t nbytes,
                             char *err, size_t errlen);

#endif
