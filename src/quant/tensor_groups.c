/*
 * tensor_groups.c: classify tensor names into recipe groups and print the
 * group -> type -> count summary with its totals. Names follow llama.cpp's
 * GGUF conventions ("blk.N.attn_q.weight", "token_embd.weight",
 * "blk.N.ffn_gate_exps.weight"); matching is on whole dot-separated parts,
 * so "attn_q_norm" is a norm, not attention q. Also a tensor's layer and
 * the stage of the layer its input comes from, and which weight shares
 * another's input (gate and up), for the statistics readers.
 */
#include "quant/tensor_groups.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct { const char *key, *label; } groups[MOEQ_GROUP_COUNT] = {
    [MOEQ_GROUP_FFN_GATE_EXPS] = { "ffn_gate_exps", "routed expert gate" },
    [MOEQ_GROUP_FFN_UP_EXPS]   = { "ffn_up_exps",   "routed expert up" },
    [MOEQ_GROUP_FFN_DOWN_EXPS] = { "ffn_down_exps", "routed expert down" },
    [MOEQ_GROUP_ATTN_Q]        = { "attn_q",        "attention q" },
    [MOEQ_GROUP_ATTN_K]        = { "attn_k",        "attention k" },
    [MOEQ_GROUP_ATTN_V]        = { "attn_v",        "attention v" },
    [MOEQ_GROUP_ATTN_OUTPUT]   = { "attn_output",   "attention output" },
    [MOEQ_GROUP_TOKEN_EMBD]    = { "token_embd",    "token embedding" },
    [MOEQ_GROUP_OUTPUT]        = { "output",        "output" },
    [MOEQ_GROUP_NORM]          = { "norm",          "norms" },
    [MOEQ_GROUP_ROUTER]        = { "router",        "router" },
    [MOEQ_GROUP_OTHER]         = { "other",         "other" },
};

const char *moeq_group_key(int g) { return g >= 0 && g < MOEQ_GROUP_COUNT ? groups[g].key : "?"; }
const char *moeq_group_label(int g) { return g >= 0 && g < MOEQ_GROUP_COUNT ? groups[g].label : "?"; }

static int ends_with(const char *s, size_t n, const char *suf)
{
    size_t k = strlen(suf);
    return n >= k && memcmp(s + n - k, suf, k) == 0;
}

/* Whether one dot-separated part of name equals word. */
static int has_part(const char *s, size_t n, const char *word)
{
    size_t k = strlen(word);
    for (size_t i = 0; i + k <= n; i++) {
        if ((i == 0 || s[i - 1] == '.') && memcmp(s + i, word, k) == 0 &&
            (i + k == n || s[i + k] == '.'))
            return 1;
    }
    return 0;
}

int moeq_tensor_group_n(const char *s, size_t n)
{
    if (!s) return MOEQ_GROUP_OTHER;
    if (has_part(s, n, "ffn_gate_exps")) return MOEQ_GROUP_FFN_GATE_EXPS;
    if (has_part(s, n, "ffn_up_exps"))   return MOEQ_GROUP_FFN_UP_EXPS;
    if (has_part(s, n, "ffn_down_exps")) return MOEQ_GROUP_FFN_DOWN_EXPS;
    if (has_part(s, n, "ffn_gate_inp"))  return MOEQ_GROUP_ROUTER;
    /* Norms before attention: "attn_q_norm" must not count as attn_q. */
    size_t base = n;
    if (ends_with(s, n, ".weight")) base = n - 7;
    else if (ends_with(s, n, ".bias")) base = n - 5;
    if (ends_with(s, base, "norm")) return MOEQ_GROUP_NORM;
    if (has_part(s, n, "attn_q"))      return MOEQ_GROUP_ATTN_Q;
    if (has_part(s, n, "attn_k"))      return MOEQ_GROUP_ATTN_K;
    if (has_part(s, n, "attn_v"))      return MOEQ_GROUP_ATTN_V;
    if (has_part(s, n, "attn_output")) return MOEQ_GROUP_ATTN_OUTPUT;
    if (n >= 10 && !memcmp(s, "token_embd", 10) && (n == 10 || s[10] == '.')) return MOEQ_GROUP_TOKEN_EMBD;
    if (n >= 6 && !memcmp(s, "output", 6) && (n == 6 || s[6] == '.')) return MOEQ_GROUP_OUTPUT;
    return MOEQ_GROUP_OTHER;
}

int moeq_tensor_group(const char *name) { return moeq_tensor_group_n(name, name ? strlen(name) : 0); }

int moeq_tensor_layer(const char *name)
{
    if (!name || strncmp(name, "blk.", 4) != 0 || name[4] < '0' || name[4] > '9') return -1;
    long il = strtol(name + 4, NULL, 10);
    return il <= 1 << 20 ? (int)il : -1;
}

int moeq_tensor_input_stage(const char *name)
{
    if (moeq_tensor_layer(name) < 0) return -1;
    size_t n = strlen(name);
    switch (moeq_tensor_group_n(name, n)) {
    case MOEQ_GROUP_ATTN_Q: case MOEQ_GROUP_ATTN_K: case MOEQ_GROUP_ATTN_V: return 0;
    case MOEQ_GROUP_ATTN_OUTPUT: return 1;
    case MOEQ_GROUP_FFN_GATE_EXPS: case MOEQ_GROUP_FFN_UP_EXPS: case MOEQ_GROUP_ROUTER: return 2;
    case MOEQ_GROUP_FFN_DOWN_EXPS: return 3;
    case MOEQ_GROUP_OTHER:
        /* dense and shared-expert FFNs */
        if (strstr(name, "ffn_down")) return 3;
        if (strstr(name, "ffn_gate") || strstr(name, "ffn_up")) return 2;
        return -1;
    default: return -1;
    }
}

int moeq_shared_input_sibling(const char *name, char *out, size_t outlen)
{
    static const char *const pairs[][2] = {
        { "ffn_gate_exps.weight", "ffn_up_exps.weight" },
        { "ffn_up_exps.weight", "ffn_gate_exps.weight" },
        { "ffn_gate.weight", "ffn_up.weight" },
        { "ffn_up.weight", "ffn_gate.weight" },
    };
    for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
        const char *hit = strstr(name, pairs[i][0]);
        if (!hit) continue;
        snprintf(out, outlen, "%.*s%s", (int)(hit - name), name, pairs[i][1]);
        return 1;
    }
    return 0;
}

void moeq_group_summary_init(struct moeq_group_summary *s) { memset(s, 0, sizeof *s); }

int moeq_group_summary_add(struct moeq_group_summary *s, const char *name, size_t name_len,
                           int type, uint64_t nelem, uint64_t nbytes)
{
    if (type < 0 || type >= MOEQ_TYPE_COUNT) return -1;
    int g = moeq_tensor_group_n(name, name_len);
    s->count[g][type]++;
    s->nelem[g][type] += nelem;
    s->nbytes[g][type] += nbytes;
    s->n_tensors++;
    s->total_elems += nelem;
    s->total_bytes += nbytes;
    return 0;
}

double moeq_group_summary_bpw(const struct moeq_group_summary *s)
{
    return s->total_elems ? 8.0 * (double)s->total_bytes / (double)s->total_elems : 0.0;
}

void moeq_group_summary_print(FILE *out, const struct moeq_group_summary *s)
{
    fprintf(out, "%-36s %-8s %6s %14s %8s\n", "group", "type", "count", "bytes", "bpw");
    for (int g = 0; g < MOEQ_GROUP_COUNT; g++) {
        for (int t = 0; t < MOEQ_TYPE_COUNT; t++) {
            if (!s->count[g][t]) continue;
            char label[64];
            snprintf(label, sizeof label, "%s (%s)", moeq_group_label(g), moeq_group_key(g));
            double bpw = s->nelem[g][t] ? 8.0 * (double)s->nbytes[g][t] / (double)s->nelem[g][t] : 0;
            fprintf(out, "%-36s %-8s %6llu %14llu %8.4f\n", label, moeq_type_name(t),
                    (unsigned long long)s->count[g][t], (unsigned long long)s->nbytes[g][t], bpw);
        }
    }
    fprintf(out, "total: %llu tensors, %llu parameters, %llu bytes = %.3f GB = %.3f GiB, %.4f bits per weight\n",
            (unsigned long long)s->n_tensors, (unsigned long long)s->total_elems,
            (unsigned long long)s->total_bytes, (double)s->total_bytes / 1e9,
            (double)s->total_bytes / (1024.0 * 1024.0 * 1024.0), moeq_group_summary_bpw(s));
}

void moeq_print_group_table(FILE *out, size_t n, const char *const *names, const int *types,
                            const uint64_t *nelem, const uint64_t *nbytes)
{
    struct moeq_group_summary *s = malloc(sizeof *s);
    if (!s) { fprintf(out, "(out of memory)\n"); return; }
    moeq_group_summary_init(s);
    for (size_t i = 0; i < n; i++)
        moeq_group_summary_add(s, names[i], names[i] ? strlen(names[i]) : 0, types[i], nelem[i], nbytes[i]);
    moeq_group_summary_print(out, s);
    free(s);
}
