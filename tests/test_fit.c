/* moeq fit: the prediction against the measured peak RSS of a real run,
 * the full Qwen3-30B-A3B verdicts the mission rests on, and usage errors. */
#include "test.h"
#include "engine_mem.h"
#include "quants.h"

static double field_gib(const char *out, const char *label)
{
    const char *p = strstr(out, label);
    return p ? atof(p + strlen(label)) : -1;
}

TEST(fit_predicts_measured_peak_rss)
{
    if (test_sanitized()) SKIP("ASan's shadow memory inflates RSS");
    const char *m = test_tmp("m.gguf");
    char *o = NULL;
    int rc = test_run(&o, "%s synth -o %s --layers 4 --vocab 4096 --experts 16 --ctx 1024", test_moeq_bin(), m);
    REQUIREF(rc == 0, "%s", o);
    free(o);
    /* bench holds a context of max(p, n) tokens */
    rc = test_run(&o, "%s bench -m %s -p 512 -n 16 -r 1 -t 2", test_moeq_bin(), m);
    REQUIREF(rc == 0, "%s", o);
    const char *r = strstr(o, "peak RSS:");
    REQUIREF(r != NULL, "%s", o);
    double measured = atof(r + 9) / 1024.0; /* MiB -> GiB */
    free(o);
    rc = test_run(&o, "%s fit -m %s -c 512 -t 2", test_moeq_bin(), m);
    REQUIREF(rc == 0, "%s", o);
    double predicted = field_gib(o, "total");
    free(o);
    /* never an underestimate (5% slack for allocator rounding), and not
     * padded beyond a third plus a few MiB of runtime */
    CHECKF(measured <= predicted * 1.05, "measured %.4f GiB > predicted %.4f GiB", measured, predicted);
    CHECKF(predicted <= measured * 1.33 + 8.0 / 1024, "predicted %.4f GiB, measured only %.4f GiB", predicted, measured);
}

TEST(fit_qwen3_30b_a3b_asym_verdicts)
{
    char *o = NULL;
    int rc = test_run(&o, "%s fit --preset qwen3-30b-a3b --recipe asym-2bitexp -c 16384 --budget 16G -t 2", test_moeq_bin());
    REQUIREF(rc == 0, "%s", o);
    CHECKF(strstr(o, "verdict   FITS"), "%s", o);
    double w = field_gib(o, "weights");
    CHECKF(w > 10.4 && w < 10.9, "asym weights %.3f GiB (11.4 GB expected)", w);
    double kv = field_gib(o, "kv cache");
    CHECKF(fabs(kv - 1.5) < 0.001, "16K f16 KV %.4f GiB", kv); /* 48 x 16384 x 512 x 2 x 2 bytes */
    const char *mc = strstr(o, "max ctx");
    REQUIRE(mc != NULL);
    int cf = 0, cq = 0;
    REQUIRE(sscanf(mc, "max ctx %d tokens with F16 KV, %d tokens with Q8_0 KV", &cf, &cq) == 2);
    CHECK(cf >= 16384 && cq > cf);
    free(o);
    /* Q8_0 KV stretches the context: 64K fits with Q8_0, not with F16 */
    rc = test_run(&o, "%s fit --preset qwen3-30b-a3b --recipe asym-2bitexp -c 65536 -ctk q8_0 -ctv q8_0 --budget 16G -t 2", test_moeq_bin());
    CHECKF(rc == 0 && strstr(o, "verdict   FITS"), "%s", o);
    free(o);
    rc = test_run(&o, "%s fit --preset qwen3-30b-a3b --recipe asym-2bitexp -c 65536 --budget 16G -t 2", test_moeq_bin());
    CHECKF(rc == 0 && strstr(o, "DOES NOT FIT"), "%s", o);
    free(o);
    /* the F32 model does not fit 16 GB at all */
    rc = test_run(&o, "%s fit --preset qwen3-30b-a3b -c 4096 --budget 16G", test_moeq_bin());
    CHECKF(rc == 0 && strstr(o, "DOES NOT FIT"), "%s", o);
    free(o);
}

TEST(fit_kv_is_exact_and_usage_errors)
{
    struct moeq_mem_shape s = { 2, 256, 4, 2, 64, 8, 2, 256, 512, 100, 1000000 };
    struct moeq_mem_opts op = { 1000, 3, 512, 2, MOEQ_TYPE_F16, MOEQ_TYPE_Q8_0 };
    struct moeq_mem_plan p;
    REQUIRE(moeq_mem_estimate(&s, &op, &p) == 0);
    /* 2 layers x 1000 positions x 128 values: K f16 256 B, V q8_0 136 B; 3 sessions */
    CHECK(p.kv == 2ull * 1000 * (256 + 136) * 3);
    CHECK(p.total == p.weights + p.kv + p.compute + p.sessions + p.overhead);
    CHECK(moeq_mem_max_ctx(&s, &op, p.total, 1 << 20) >= 768);
    CHECK(moeq_mem_max_ctx(&s, &op, p.total, 1 << 20) <= 1024);
    char *o = NULL;
    CHECK(test_run(&o, "%s fit", test_moeq_bin()) == 2);
    free(o);
    CHECK(test_run(&o, "%s fit --preset nope", test_moeq_bin()) == 2);
    free(o);
    CHECK(test_run(&o, "%s fit --preset tiny -ctk q4_0", test_moeq_bin()) == 2);
    free(o);
    int rc = test_run(&o, "%s fit -m %s/none.gguf", test_moeq_bin(), test_tmpdir());
    CHECKF(rc == 1 && strstr(o, "none.gguf"), "%s", o);
    free(o);
}
