/* moeq fit: the memory plan against what the engine allocates (to the
 * byte) and the measured peak RSS of a real run, the full Qwen3-30B-A3B
 * verdicts the mission rests on, and usage errors. */
#include "test.h"
#include "engine/engine_internal.h"
#include "engine/engine_mem.h"
#include "gguf/gguf.h"

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
     * padded beyond a fifth plus a few MiB of runtime: the compute and KV
     * bytes are exact (fit_plan_is_what_the_engine_allocates), what is left
     * is the runtime overhead and pages of the mapping not touched */
    CHECKF(measured <= predicted * 1.05, "measured %.4f GiB > predicted %.4f GiB", measured, predicted);
    CHECKF(predicted <= measured * 1.2 + 8.0 / 1024, "predicted %.4f GiB, measured only %.4f GiB", predicted, measured);
}

/* Scratch, KV and session bytes the engine allocated, against the plan of
 * the same shape and setting: equal, for several shapes, contexts, thread
 * counts, KV types, session counts and batches; and what `moeq fit` prints
 * for the file is that plan. */
TEST(fit_plan_is_what_the_engine_allocates)
{
    static const struct { const char *name, *args; } models[] = {
        { "a.gguf", "--layers 2 --vocab 1024 --experts 16 --experts-used 4 --ctx 8192" },
        { "b.gguf", "--layers 1 --n-embd 128 --heads 8 --kv-heads 1 --head-dim 32 --experts 8 "
                    "--experts-used 2 --ff-exp 96 --vocab 700 --ctx 70000" },
        { "c.gguf", "--layers 3 --n-embd 192 --heads 6 --kv-heads 6 --head-dim 64 --experts 4 "
                    "--experts-used 4 --ff-exp 320 --vocab 300 --ctx 4096" },
    };
    static const struct { int ctx, seq, batch, threads, tk, tv; } opts[] = {
        { 64, 1, 512, 1, MOEQ_KV_F16, MOEQ_KV_F16 },
        { 1000, 3, 512, 2, MOEQ_KV_F16, MOEQ_KV_Q8_0 },
        { 4096, 2, 7, 3, MOEQ_KV_Q8_0, MOEQ_KV_Q8_0 },
        { 16, 4, 100, 2, MOEQ_KV_Q8_0, MOEQ_KV_F16 }, /* batch capped at all the cells */
        { 4096, 1, 1, 1, MOEQ_KV_F16, MOEQ_KV_F16 },
    };
    char err[512];
    for (size_t i = 0; i < sizeof models / sizeof models[0]; i++) {
        const char *path = test_tmp(models[i].name);
        char *o = NULL;
        int rc = test_run(&o, "%s synth -o %s %s", test_moeq_bin(), path, models[i].args);
        REQUIREF(rc == 0, "%s", o);
        free(o);
        for (size_t j = 0; j < sizeof opts / sizeof opts[0]; j++) {
            struct moeq_engine_params ep = { path, opts[j].threads, opts[j].ctx, opts[j].seq,
                                             opts[j].tk, opts[j].tv, opts[j].batch };
            moeq_engine *e = moeq_engine_open(&ep, err, sizeof err);
            REQUIREF(e, "%s: %s", path, err);
            moeq_session *ss[4] = { 0 };
            for (int k = 0; k < opts[j].seq; k++) {
                ss[k] = moeq_session_new(e, err, sizeof err);
                REQUIREF(ss[k], "%s", err);
            }
            struct moeq_mem_shape sh;
            moeq_mem_shape_of(&e->m->hp, &sh);
            const struct moeq_mem_opts mo = { opts[j].ctx, opts[j].seq, opts[j].batch, opts[j].threads,
                                              opts[j].tk, opts[j].tv };
            struct moeq_mem_plan p;
            REQUIRE(moeq_mem_estimate(&sh, &mo, &p) == 0);
            CHECKF(e->scratch_bytes == p.compute && e->kv_bytes == p.kv && e->session_bytes == p.sessions,
                   "%s, setting %zu: allocated %zu / %zu / %zu bytes, planned %llu / %llu / %llu",
                   models[i].name, j, e->scratch_bytes, e->kv_bytes, e->session_bytes,
                   (unsigned long long)p.compute, (unsigned long long)p.kv, (unsigned long long)p.sessions);
            /* a position of a KV head: f16 2 bytes a value, q8_0 34 bytes a block of 32 */
            const uint64_t cells = (uint64_t)sh.n_layer * opts[j].ctx * opts[j].seq * sh.n_head_kv;
            CHECK(p.kv == cells * (opts[j].tk == MOEQ_KV_F16 ? 2 * sh.head_dim : 34 * sh.head_dim / 32) +
                          cells * (opts[j].tv == MOEQ_KV_F16 ? 2 * sh.head_dim : 34 * sh.head_dim / 32));
            for (int k = 0; k < opts[j].seq; k++) moeq_session_free(ss[k]);
            CHECK(e->kv_bytes == 0 && e->session_bytes == 0);
            moeq_engine_close(e);
            /* moeq fit reads the file's header into the same plan */
            rc = test_run(&o, "%s fit -m %s -c %d --parallel %d -b %d -t %d -ctk %s -ctv %s", test_moeq_bin(),
                          path, opts[j].ctx, opts[j].seq, opts[j].batch, opts[j].threads,
                          moeq_kv_type_name(opts[j].tk), moeq_kv_type_name(opts[j].tv));
            REQUIREF(rc == 0, "%s", o);
            CHECKF(fabs(field_gib(o, "compute") - (double)p.compute / (1 << 30)) < 0.0006 &&
                   fabs(field_gib(o, "kv cache") - (double)p.kv / (1 << 30)) < 0.0006, "%s", o);
            free(o);
        }
    }
}

/* The example: with the attention scratch counted once and capped
 * as the engine caps it, 64K of context for the full model on 16 threads
 * needs 0.190 GiB of compute, and 45056 tokens fit 15 GiB with F16 KV. */
TEST(fit_qwen3_30b_a3b_compute_at_64k)
{
    char *o = NULL;
    int rc = test_run(&o, "%s fit --preset qwen3-30b-a3b --recipe asym-2bitexp -c 65536 -t 16", test_moeq_bin());
    REQUIREF(rc == 0, "%s", o);
    double c = field_gib(o, "compute");
    CHECKF(fabs(c - 0.190) < 0.0006, "compute %.4f GiB\n%s", c, o);
    CHECKF(strstr(o, "max ctx   45056 tokens with F16 KV"), "%s", o);
    free(o);
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
    CHECKF(rc == 1 && strstr(o, "DOES NOT FIT"), "%s", o);
    free(o);
    /* the F32 model does not fit 16 GB at all */
    rc = test_run(&o, "%s fit --preset qwen3-30b-a3b -c 4096 --budget 16G", test_moeq_bin());
    CHECKF(rc == 1 && strstr(o, "DOES NOT FIT"), "%s", o);
    free(o);
}

/* fit reads a header with the engine's own reader: what the engine would
 * refuse, fit refuses with the same message; the counts a partial header
 * has are still read (quantize's mix rules take them). */
TEST(fit_reads_hyperparameters_as_the_engine_does)
{
    const char *path = test_tmp("partial.gguf");
    char err[256];
    gguf_writer *w = gguf_writer_open(path, NULL, err, sizeof err);
    REQUIREF(w != NULL, "%s", err);
    gguf_writer_add_str(w, "general.architecture", "qwen3moe");
    gguf_writer_add_u32(w, "qwen3moe.block_count", 3);
    gguf_writer_add_u32(w, "qwen3moe.attention.head_count", 8);
    gguf_writer_add_u32(w, "qwen3moe.attention.head_count_kv", 2);
    gguf_writer_add_u32(w, "qwen3moe.expert_count", 4);
    REQUIRE(gguf_writer_begin_data(w) == 0);
    REQUIRE(gguf_writer_finish(w) == 0);
    gguf_file *f = gguf_open(path, err, sizeof err);
    REQUIREF(f != NULL, "%s", err);
    struct moeq_hparams hp;
    CHECK(moeq_hparams_read(f, path, &hp, err, sizeof err) == -1);
    CHECKF(strstr(err, "partial.gguf: missing key qwen3moe.context_length"), "%s", err);
    CHECK(hp.n_layer == 3 && hp.n_head == 8 && hp.n_head_kv == 2 && hp.n_expert == 4 && hp.moe == 1);
    gguf_close(f);
    char *o = NULL;
    int rc = test_run(&o, "%s fit -m %s", test_moeq_bin(), path);
    CHECKF(rc == 1 && strstr(o, "partial.gguf: missing key qwen3moe.context_length"), "%s", o);
    free(o);
}

TEST(fit_kv_is_exact_and_usage_errors)
{
    struct moeq_mem_shape s = { 2, 256, 4, 2, 64, 8, 2, 256, 512, 100, 1000000 };
    struct moeq_mem_opts op = { 1000, 3, 512, 2, MOEQ_KV_F16, MOEQ_KV_Q8_0 };
    struct moeq_mem_plan p;
    REQUIRE(moeq_mem_estimate(&s, &op, &p) == 0);
    /* 2 layers x 1000 positions x 128 values: K f16 256 B, V q8_0 136 B; 3 sessions */
    CHECK(p.kv == 2ull * 1000 * (256 + 136) * 3);
    CHECK(p.total == p.weights + p.kv + p.compute + p.sessions + p.overhead);
    CHECK(moeq_mem_max_ctx(&s, &op, p.total, 1 << 20) >= 768);
    CHECK(moeq_mem_max_ctx(&s, &op, p.total, 1 << 20) <= 1024);
    /* the engine's KV types, by name (the -ctk/-ctv flags) */
    CHECK(moeq_kv_type_from_name("f16") == MOEQ_KV_F16 && moeq_kv_type_from_name("F16") == MOEQ_KV_F16);
    CHECK(moeq_kv_type_from_name("q8_0") == MOEQ_KV_Q8_0 && moeq_kv_type_from_name("Q8_0") == MOEQ_KV_Q8_0);
    CHECK(moeq_kv_type_from_name("q4_0") == -1 && moeq_kv_type_from_name("f32") == -1);
    CHECK(!strcmp(moeq_kv_type_name(MOEQ_KV_Q8_0), "Q8_0") && !strcmp(moeq_kv_type_name(7), "?"));
    op.type_k = (enum moeq_kv_type)7;
    CHECK(moeq_mem_estimate(&s, &op, &p) == -1);
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
