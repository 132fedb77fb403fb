/*
 * tensor_groups.h: which recipe group a tensor belongs to, and the summary
 * table (group -> type -> count) with the totals that `moeq info` and
 * `moeq quantize` print.
 *
 * The groups are the rows of a quantization recipe for a routed MoE model:
 * routed expert gate/up/down, attention q/k/v/output, token_embd, output,
 * norms, router (ffn_gate_inp) and everything else; and the weight that
 * shares another's input (gate and up). The API takes plain
 * values (name, type, element count, bytes) so any caller can feed it
 * without a gguf_file.
 */
#ifndef MOEQ_TENSOR_GROUPS_H
#define MOEQ_TENSOR_GROUPS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "quant/quants.h"

enum moeq_group {
    MOEQ_GROUP_FFN_GATE_EXPS,   /* routed expert gate */
    MOEQ_GROUP_FFN_UP_EXPS,     /* routed expert up */
    MOEQ_GROUP_FFN_DOWN_EXPS,   /* routed expert down */
    MOEQ_GROUP_ATTN_Q,
    MOEQ_GROUP_ATTN_K,
    MOEQ_GROUP_ATTN_V,
    MOEQ_GROUP_ATTN_OUTPUT,
    MOEQ_GROUP_TOKEN_EMBD,
    MOEQ_GROUP_OUTPUT,
    MOEQ_GROUP_NORM,            /* names ending in norm / norm.weight */
    MOEQ_GROUP_ROUTER,          /* ffn_gate_inp */
    MOEQ_GROUP_OTHER,
    MOEQ_GROUP_COUNT
};

/* Group of a tensor name of len bytes (need not be NUL-terminated). */
int moeq_tensor_group_n(const char *name, size_t len);
/* Same for a NUL-terminated name. */
int moeq_tensor_group(const char *name);

/* N of "blk.N.*", or -1 for a tensor outside the layers. */
int moeq_tensor_layer(const char *name);

/* Where a layer weight's input arises in its layer: 0 the attention input
 * (q, k, v), 1 attn_output's, 2 the FFN input (router, gate, up), 3 down's;
 * -1 for anything else (norms, token_embd, output). A stage's inputs
 * depend on the weights of every earlier stage and layer. */
int moeq_tensor_input_stage(const char *name);

/* The weight that multiplies the same input as name: ffn_gate and ffn_up,
 * routed or dense (tools that fuse them store statistics for only one).
 * 1 with its name in out (truncated to outlen), or 0 when name has none. */
int moeq_shared_input_sibling(const char *name, char *out, size_t outlen);

/* Short key ("ffn_gate_exps", "attn_q", "norm", "router", ...) and a
 * human label ("routed expert gate", ...); "?" for an unknown group. */
const char *moeq_group_key(int group);
const char *moeq_group_label(int group);

/* Per group and type: tensor count, elements and bytes; plus totals. */
struct moeq_group_summary {
    uint64_t count[MOEQ_GROUP_COUNT][MOEQ_TYPE_COUNT];
    uint64_t nelem[MOEQ_GROUP_COUNT][MOEQ_TYPE_COUNT];
    uint64_t nbytes[MOEQ_GROUP_COUNT][MOEQ_TYPE_COUNT];
    uint64_t n_tensors, total_elems, total_bytes;
};

void moeq_group_summary_init(struct moeq_group_summary *s);
/* Add one tensor; a type outside 0..MOEQ_TYPE_COUNT-1 is ignored (-1). */
int  moeq_group_summary_add(struct moeq_group_summary *s, const char *name, size_t name_len,
                            int type, uint64_t nelem, uint64_t nbytes);
/* Effective bits per weight: all tensor bits / all tensor elements (0 if empty). */
double moeq_group_summary_bpw(const struct moeq_group_summary *s);

/*
 * Print the table "group  type  count  bytes  bpw" (one row per group and
 * type present, groups in enum order, types in id order) followed by a
 * totals line: tensors, parameters, GB (1e9), GiB, bits per weight.
 */
void moeq_group_summary_print(FILE *out, const struct moeq_group_summary *s);

/*
 * The same from plain arrays: n tensors with NUL-terminated names, ggml
 * type ids, element counts (ne0*ne1*ne2*ne3) and byte sizes. This is the
 * entry point for tools that hold their own tensor lists (quantize).
 */
void moeq_print_group_table(FILE *out, size_t n, const char *const *names, const int *types,
                            const uint64_t *nelem, const uint64_t *nbytes);

#endif
