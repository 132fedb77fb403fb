/*
 * quantize_alloc.h: the allocation flags of `moeq quantize` (--target-bpw,
 * --target-size, --fit with -c/-ctk/-ctv/--parallel/--reserve,
 * --allow-types, --sensitivity, --plan-out, --recipe-file, and the
 * measured sensitivities: --measure-kld N --calib FILE [--measure-units N]
 * [--measure-ctx N] [--sensitivity-report]), parsed here and
 * turned into the quantize job's per-tensor type plan by src/quant/alloc.c,
 * so cmd_quantize.c only forwards them.
 */
#ifndef MOEQ_QUANTIZE_ALLOC_H
#define MOEQ_QUANTIZE_ALLOC_H

#include <stdint.h>

#include "quant/quant_plan.h"

struct qalloc_cli {
    int active;                  /* a target was given */
    double target_bpw;
    uint64_t target_size, fit_budget, reserve;
    int n_ctx, n_par, type_k, type_v, n_threads, rows;
    const char *sensitivity, *plan_out, *recipe_file;
    int allow[32], n_allow;
    int measure_kld, measure_units, measure_ctx, report;   /* chunks (0: off), units (0: all), chunk tokens */
    const char *calib;
};

void qalloc_init(struct qalloc_cli *c);
/* Consume argv[*i] (and its value) when it is an allocation flag: 1 with
 * *rc 0, 1 with *rc 2 on a usage error, 0 when not ours. */
int qalloc_arg(struct qalloc_cli *c, int argc, char **argv, int *i, int *rc);
/* --recipe-file: append its REGEX=TYPE lines to rules; -1 with a message. */
int qalloc_read_rules(const char *path, struct moeq_type_rule *rules, int max, int *n);
/* Plan: types[] (malloc'd, one per tensor), the moeq.plan string and the
 * name of the mix for general.file_type. Prints the dry-run table when
 * dry_run, next to the fixed recipe's types (recipe, NULL: asym-2bitexp),
 * and the sensitivity report when asked. 0, or 1 after printing the error. */
int qalloc_plan(const struct qalloc_cli *c, const char *in_path, const char *imatrix_path, int ignore_rules,
                int dry_run, const char *recipe, int **types, int *n_types, char **plan_meta, const char **mix_name);

#endif
