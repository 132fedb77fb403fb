/*
 * test_sample.c: the sampler's penalties and logit biases (src/engine/sample.c):
 * repetition, frequency and presence penalties over the look-back window,
 * biases and bans, and the per-token counts left clean between calls.
 */
#include "test.h"
#include "engine/engine.h"

#include <math.h>

TEST(sample_penalties_and_bias)
{
    const float logits[6] = { 2.0f, 1.0f, -1.0f, 0.5f, 0.0f, 0.0f };
    struct moeq_sampler sp = { .temp = 0, .repeat_penalty = 4.0f, .repeat_last_n = 64 };
    int32_t h1[] = { 0, 2 };
    CHECK(moeq_sample_hist(&sp, logits, 6, h1, 2) == 1);          /* 2/4 = 0.5 < 1 */
    CHECK(moeq_sample_hist(&sp, logits, 6, NULL, 0) == 0);        /* counts left at zero */
    sp.repeat_last_n = 1;                                         /* only token 2 is in the window */
    CHECK(moeq_sample_hist(&sp, logits, 6, h1, 2) == 0);
    sp.repeat_last_n = -1;
    CHECK(moeq_sample_hist(&sp, logits, 6, h1, 2) == 1);

    struct moeq_sampler fq = { .temp = 0, .repeat_last_n = 64, .frequency_penalty = 0.5f };
    int32_t h2[] = { 0, 0, 0 };
    CHECK(moeq_sample_hist(&fq, logits, 6, h2, 2) == 0);          /* 2 - 2*0.5 = 1.0: ties keep 0 */
    CHECK(moeq_sample_hist(&fq, logits, 6, h2, 3) == 1);          /* 2 - 3*0.5 = 0.5 */

    struct moeq_sampler pr = { .temp = 0, .repeat_last_n = 64, .presence_penalty = 1.5f };
    CHECK(moeq_sample_hist(&pr, logits, 6, h2, 3) == 1);          /* once, however often seen */
    pr.presence_penalty = 0.5f;
    CHECK(moeq_sample_hist(&pr, logits, 6, h2, 3) == 0);

    struct moeq_logit_bias b[2] = { { 3, 10.0f }, { 9, 5.0f } };  /* an id out of range is ignored */
    struct moeq_sampler bs = { .temp = 0, .bias = b, .n_bias = 2 };
    CHECK(moeq_sample(&bs, logits, 6) == 3);
    struct moeq_logit_bias ban[1] = { { 0, -INFINITY } };
    bs.bias = ban; bs.n_bias = 1;
    CHECK(moeq_sample(&bs, logits, 6) == 1);
    /* sampling at a temperature never draws a banned token */
    bs.temp = 1.0f; bs.rng = 7;
    const float flat[6] = { 0, 0, 0, 0, 0, 0 };
    for (int i = 0; i < 200; i++) CHECK(moeq_sample(&bs, flat, 6) != 0);
    moeq_sampler_free(&sp); moeq_sampler_free(&fq); moeq_sampler_free(&pr); moeq_sampler_free(&bs);
}
