/*
 * hessian_seq.h: the input second moments H of each weight collected
 * layer by layer while the model is being quantized (GPTQ's sequential
 * order), for `moeq quantize --calibration-text`. The source model runs in
 * the engine over calibration chunks; every weight already quantized is
 * computed from its quantized bytes (moeq_engine_override_weight), so the
 * statistics of a weight see the errors of everything before it and its
 * rounding can correct them. Only the statistics of one layer stage are in
 * memory at a time (hessian.h's entries, as `moeq imatrix --hessian`
 * writes them for the whole model at once from the unquantized one).
 *
 * A weight's statistics come from the last pass when it collected the
 * weight's layer stage (moeq_tensor_input_stage: q/k/v, attn_output,
 * gate/up, down) and nothing upstream of it was quantized since; else a
 * new pass over the chunks collects that stage. With the usual tensor
 * order that is one pass per stage, 4 per layer, each a forward pass over
 * the chunks of the layers up to the weight's (moeq_engine_set_layer_limit).
 * output.weight's statistics come from a pass of the whole model (every
 * position's logits computed, so every position's input counted) with every
 * weight quantized before it in the file, all of them in the usual order.
 */
#ifndef MOEQ_HESSIAN_SEQ_H
#define MOEQ_HESSIAN_SEQ_H

#include <stddef.h>
#include <stdio.h>

struct moeq_hessian_entry;
typedef struct moeq_hseq moeq_hseq;

struct moeq_hseq_opts {
    const char *model_path;    /* the source the quantizer reads */
    const char *text;          /* calibration text (need not be NUL-terminated) */
    size_t text_len;
    const char *text_name;     /* for messages */
    int n_ctx;                 /* tokens per chunk (<= 0: 512) */
    int max_chunks;            /* <= 0: every chunk of the text */
    int n_threads;             /* <= 0: all cores */
    FILE *log;                 /* one line per pass; NULL: none */
};

/* Open the engine on the model and tokenize the text; NULL with err set. */
moeq_hseq *moeq_hseq_open(const struct moeq_hseq_opts *o, char *err, size_t errlen);
void moeq_hseq_close(moeq_hseq *h);

/* The statistics of weight name (its own or its gate/up sibling's) with
 * every weight handed to moeq_hseq_quantized so far computed quantized,
 * running a pass when needed; *e NULL for token_embd, a norm, or a weight
 * the chunks never reached. 0, or -1 with err set. The entry stays
 * valid until the next call. */
int moeq_hseq_get(moeq_hseq *h, const char *name, const struct moeq_hessian_entry **e, char *err, size_t errlen);

/* Weight name is now data (nbytes of type); the engine computes with it
 * from here on. Takes data (malloc'd) even on failure. 0, or -1 with err. */
int moeq_hseq_quantized(moeq_hseq *h, const char *name, int type, void *data, size_t nbytes,
                        char *err, size_t errlen);

/* Passes run and their seconds so far. */
void moeq_hseq_stats(const moeq_hseq *h, int *passes, double *seconds);

#endif
