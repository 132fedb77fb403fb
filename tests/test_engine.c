/*
 * Engine: logits of the reference tokens on tiny-a match the reference
 * (PyTorch fp32) logits; quantized tiny-a files stay close; KV cache types,
 * prefix reuse, batched decode, context limits and allocation-free decode.
 */
#include "test.h"

#include "engine.h"
#include "engine_internal.h"
#include "quants.h"

#include <malloc.h>
#include <stdint.h>

static moeq_engine *open_model(const char *path, int n_ctx, int n_seq, int tk, int tv, int n_batch)
{
    struct moeq_engine_params p = { .model_path = path, .n_threads = 2, .n_ctx = n_ctx,
                                    .n_seq = n_seq, .type_k = tk, .type_v = tv, .n_batch = n_batch };
    char err[512] = "";
    moeq_engine *e = moeq_engine_open(&p, err, sizeof err);
    REQUIREF(e, "open %s: %s", path, err);
    return e;
}

/* The 64 reference tokens and their reference logits [64][8192]. */
static int load_ref(int32_t **tok, float **ref)
{
    size_t nt, nl;
    *tok = test_read_file(test_shared_path("models/tiny-a/ref/logits-tokens.i32"), &nt);
    *ref = test_read_file(test_shared_path("models/tiny-a/ref/logits-f16.bin"), &nl);
    REQUIRE(*tok && *ref);
    int n = (int)(nt / 4);
    REQUIRE(nl == (size_t)n * 8192 * 4);
    return n;
}

static int argmax(const float *x, int n)
{
    int b = 0;
    for (int i = 1; i < n; i++) if (x[i] > x[b]) b = i;
    return b;
}

/* Evaluate tokens (in batches of n_batch) and return all logits. */
static float *eval_all(moeq_engine *e, const int32_t *tok, int n)
{
    const int V = moeq_engine_info(e)->n_vocab;
    float *lg = malloc((size_t)n * V * sizeof *lg);
    char err[256];
    moeq_session *s = moeq_session_new(e, err, sizeof err);
    REQUIREF(s, "%s", err);
    REQUIREF(moeq_session_eval(s, tok, n, lg, err, sizeof err) == 0, "%s", err);
    CHECK(moeq_session_n_past(s) == n);
    CHECK(memcmp(moeq_session_logits(s), lg + (size_t)(n - 1) * V, (size_t)V * 4) == 0);
    moeq_session_free(s);
    return lg;
}

static void compare(const float *a, const float *b, int n, int V, double *maxdiff, int *same_argmax)
{
    *maxdiff = 0;
    *same_argmax = 0;
    for (int t = 0; t < n; t++) {
        for (int i = 0; i < V; i++) {
            double d = fabs((double)a[(size_t)t * V + i] - b[(size_t)t * V + i]);
            if (d > *maxdiff) *maxdiff = d;
        }
        *same_argmax += argmax(a + (size_t)t * V, V) == argmax(b + (size_t)t * V, V);
    }
}

TEST(engine_tiny_a_f16_logits_match_reference)
{
    const char *path = test_shared_path("models/tiny-a/tiny-a-f16.gguf");
    int32_t *tok;
    float *ref;
    int n = load_ref(&tok, &ref);
    /* n_batch 24: the 64 tokens take three batches, so batching is covered */
    moeq_engine *e = open_model(path, 128, 1, 0, 0, 24);
    const struct moeq_model_info *in = moeq_engine_info(e);
    CHECK(!strcmp(in->arch, "qwen3moe"));
    CHECK(in->n_vocab == 8192 && in->n_layer == 4 && in->n_expert == 32 && in->n_expert_used == 4);
    CHECK(in->n_params == 30050816);
    float *lg = eval_all(e, tok, n);
    double md;
    int same;
    compare(lg, ref, n, 8192, &md, &same);
    printf("  f16: max |logit - ref| = %.5f, same argmax %d/%d\n", md, same, n);
    CHECKF(md < 0.01, "max abs diff %g", md);
    CHECK(same == n);
    free(lg);
    moeq_engine_close(e);
    free(tok);
    free(ref);
}
