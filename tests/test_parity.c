/* llama.cpp parity of the command line (issue 16): llama-quantize's numeric
 * file types, --leave-output-tensor, --override-kv, --dry-run and -q;
 * fit's exit status and --json; run's context messages. */
#include "test.h"
#include "gguf/gguf.h"
#include "quant/imatrix.h"
#include "quant/quants.h"

#include <jansson.h>
#include <unistd.h>

static int same_bytes(const char *a, const char *b)
{
    size_t na, nb;
    char *x = test_read_file(a, &na), *y = test_read_file(b, &nb);
    int same = x && y && na == nb && !memcmp(x, y, na);
    free(x); free(y);
    return same;
}

TEST(quantize_numeric_type_equals_name)
{
    const char *m = test_synth_model("par_f32.gguf", NULL);
    const char *a = test_tmp("par_name.gguf"), *b = test_tmp("par_num.gguf");
    char *o = NULL;
    REQUIREF(test_run(&o, "%s quantize -q %s %s Q4_K_M 1", test_moeq_bin(), m, a) == 0, "%s", o);
    free(o);
    REQUIREF(test_run(&o, "%s quantize -q %s %s 15 1", test_moeq_bin(), m, b) == 0, "%s", o);
    free(o);
    CHECK(same_bytes(a, b));
    /* an unknown number is a usage error */
    CHECK(test_run(&o, "%s quantize %s %s 21", test_moeq_bin(), m, test_tmp("par_bad.gguf")) == 2);
    CHECK(o && strstr(o, "unknown type or mix '21'"));
    free(o);
    CHECK(test_run(&o, "%s quantize --help", test_moeq_bin()) == 0);
    CHECK(o && strstr(o, "15  Q4_K_M") && strstr(o, "0  F32"));
    free(o);
}

TEST(quantize_quiet_is_silent)
{
    const char *m = test_synth_model("par_q.gguf", NULL);
    char *o = NULL;
    REQUIRE(test_run(&o, "%s quantize -q %s %s Q8_0 1", test_moeq_bin(), m, test_tmp("par_qo.gguf")) == 0);
    CHECKF(o && !*o, "output: %s", o ? o : "");
    free(o);
    REQUIRE(test_run(&o, "%s quantize %s %s Q8_0 1", test_moeq_bin(), m, test_tmp("par_qo2.gguf")) == 0);
    CHECK(o && strstr(o, "quantized"));
    free(o);
}

TEST(quantize_leave_output_and_override_kv)
{
    const char *m = test_synth_model("par_lo.gguf", NULL);
    const char *q = test_tmp("par_lo_q.gguf");
    char *o = NULL;
    REQUIREF(test_run(&o, "%s quantize -q --leave-output-tensor --override-kv moeq.test.n=int:42 "
                      "--override-kv moeq.test.s=str:hello --override-kv moeq.test.b=bool:true "
                      "--override-kv moeq.test.f=float:0.5 %s %s Q4_K_M 1", test_moeq_bin(), m, q) == 0,
             "%s", o);
    free(o);
    char err[256];
    gguf_file *src = gguf_open(m, err, sizeof err), *dst = gguf_open(q, err, sizeof err);
    REQUIREF(src && dst, "%s", err);
    int64_t si = gguf_find_tensor(src, "output.weight"), di = gguf_find_tensor(dst, "output.weight");
    REQUIRE(si >= 0 && di >= 0);
    CHECK(src->tensors[si].type == dst->tensors[di].type);
    CHECK(src->tensors[si].nbytes == dst->tensors[di].nbytes);
    CHECK(!memcmp(src->tensors[si].data, dst->tensors[di].data, src->tensors[si].nbytes));
    /* the other weights are quantized */
    int64_t qi = gguf_find_tensor(dst, "blk.0.attn_q.weight");
    REQUIRE(qi >= 0);
    CHECK(dst->tensors[qi].type != MOEQ_TYPE_F32);
    const gguf_kv *kn = gguf_find_kv(dst, "moeq.test.n");
    REQUIRE(kn != NULL);
    CHECK(kn->val.type == GGUF_TYPE_INT64 && kn->val.v.i64 == 42);
    gguf_close(src);
    gguf_close(dst);
    REQUIRE(test_run(&o, "%s info %s", test_moeq_bin(), q) == 0);
    CHECKF(o && strstr(o, "moeq.test.n") && strstr(o, "42") && strstr(o, "hello") && strstr(o, "moeq.test.b"),
           "%s", o ? o : "");
    free(o);
    /* llama.cpp's spellings of a bad override */
    CHECK(test_run(&o, "%s quantize --override-kv foo=int %s %s Q8_0", test_moeq_bin(), m, q) == 2);
    CHECK(o && strstr(o, "KEY=TYPE:VALUE"));
    free(o);
    CHECK(test_run(&o, "%s quantize --override-kv foo=u8:1 %s %s Q8_0", test_moeq_bin(), m, q) == 2);
    free(o);
    CHECK(test_run(&o, "%s quantize --override-kv foo=int:x1 %s %s Q8_0", test_moeq_bin(), m, q) == 2);
    free(o);
    CHECK(test_run(&o, "%s quantize --override-kv foo=bool:yes %s %s Q8_0", test_moeq_bin(), m, q) == 2);
    free(o);
}

TEST(quantize_dry_run_needs_no_allow_requantize)
{
    const char *m = test_synth_model("par_q8.gguf", "--type Q8_0");
    const char *q = test_tmp("par_q8_q.gguf");
    char *o = NULL;
    CHECK(test_run(&o, "%s quantize --dry-run %s %s Q4_K_M", test_moeq_bin(), m, q) == 0);
    CHECKF(o && strstr(o, "dry run") && strstr(o, "--allow-requantize"), "%s", o ? o : "");
    free(o);
    CHECK(access(q, F_OK) != 0);
    CHECK(test_run(&o, "%s quantize %s %s Q4_K_M", test_moeq_bin(), m, q) == 1);
    CHECK(o && strstr(o, "requantizing is disabled"));
    free(o);
}

TEST(fit_exit_status_and_json)
{
    char *o = NULL;
    /* with a budget: 0 fits, 1 does not */
    CHECK(test_run(&o, "%s fit --preset tiny --budget 16G -t 1 >/dev/null", test_moeq_bin()) == 0);
    free(o);
    CHECK(test_run(&o, "%s fit --preset qwen3-30b-a3b -c 4096 --budget 16G -t 1", test_moeq_bin()) == 1);
    CHECK(o && strstr(o, "DOES NOT FIT"));
    free(o);
    /* without one: the default budget, status 0 either way, said so */
    CHECK(test_run(&o, "%s fit --preset qwen3-30b-a3b -c 4096 -t 1", test_moeq_bin()) == 0);
    CHECK(o && strstr(o, "DOES NOT FIT") && strstr(o, "no --budget"));
    free(o);
    REQUIRE(test_run(&o, "%s fit --preset qwen3-30b-a3b --recipe asym-2bitexp -c 16384 --budget 16G -t 2 --json",
                     test_moeq_bin()) == 0);
    json_error_t je;
    json_t *j = json_loads(o, 0, &je);
    REQUIREF(j != NULL, "%s: %s", je.text, o);
    CHECK(json_is_true(json_object_get(j, "fits")) && json_is_true(json_object_get(j, "budget_given")));
    json_t *b = json_object_get(j, "bytes");
    json_int_t total = json_integer_value(json_object_get(b, "total"));
    json_int_t sum = json_integer_value(json_object_get(b, "weights")) + json_integer_value(json_object_get(b, "kv")) +
                     json_integer_value(json_object_get(b, "compute")) + json_integer_value(json_object_get(b, "sessions")) +
                     json_integer_value(json_object_get(b, "runtime"));
    CHECKF(total > 0 && total == sum, "total %lld, parts %lld", (long long)total, (long long)sum);
    CHECK(json_integer_value(json_object_get(json_object_get(j, "setting"), "n_ctx")) == 16384);
    CHECK(json_integer_value(json_object_get(json_object_get(j, "max_ctx"), "q8_0")) >=
          json_integer_value(json_object_get(json_object_get(j, "max_ctx"), "f16")));
    CHECK(json_integer_value(json_object_get(j, "available")) - total == json_integer_value(json_object_get(j, "margin")));
    json_decref(j);
    free(o);
}

TEST(fit_default_context_clamped_to_the_model)
{
    const char *m = test_synth_model("par_ctx.gguf", "--ctx 256");
    char *o = NULL;
    REQUIREF(test_run(&o, "%s fit -m %s --json", test_moeq_bin(), m) == 0, "%s", o);
    json_t *j = json_loads(o, 0, NULL);
    REQUIREF(j != NULL, "%s", o);
    CHECK(json_integer_value(json_object_get(json_object_get(j, "setting"), "n_ctx")) == 256);
    json_decref(j);
    free(o);
}

TEST(run_says_context_full_and_warns_past_training_context)
{
    const char *m = test_synth_model("par_run.gguf", "--ctx 64");
    char *o = NULL;
    REQUIREF(test_run(&o, "%s run -m %s -c 16 -n 100 -p hello --temp 0 2>&1 >/dev/null", test_moeq_bin(), m) == 0,
             "%s", o);
    CHECKF(o && strstr(o, "context of 16 tokens is full") && strstr(o, "larger -c"), "%s", o ? o : "");
    CHECK(o && !strstr(o, "training context"));
    free(o);
    REQUIREF(test_run(&o, "%s run -m %s -c 128 -n 2 -p hello --temp 0 2>&1 >/dev/null", test_moeq_bin(), m) == 0,
             "%s", o);
    CHECKF(o && strstr(o, "warning: -c 128 exceeds the model's training context of 64"), "%s", o ? o : "");
    CHECK(o && !strstr(o, "is full"));
    free(o);
}

TEST(imatrix_default_output_is_gguf_and_loads_back)
{
    const char *m = test_synth_model("par_im.gguf", NULL);
    char *o = NULL;
    char cwd[4096];
    REQUIRE(getcwd(cwd, sizeof cwd) != NULL);
    REQUIREF(test_run(&o, "cd %s && %s imatrix -m %s -f %s/data/calibration.txt -c 32 --chunks 2 --no-ppl --save-frequency 1",
                      test_tmpdir(), test_moeq_bin()[0] == '/' ? test_moeq_bin() : "$OLDPWD/moeq", m, cwd) == 0, "%s", o);
    free(o);
    const char *path = test_tmp("imatrix.gguf");
    size_t n;
    char *b = test_read_file(path, &n);
    REQUIRE(b != NULL && n > 4);
    CHECK(!memcmp(b, "GGUF", 4));
    free(b);
    char err[256];
    struct moeq_imatrix *im = moeq_imatrix_new();
    REQUIREF(moeq_imatrix_load(im, path, err, sizeof err) == 0, "%s", err);
    CHECK(im->chunk_count == 2 && im->chunk_size == 32 && im->n_entries > 0);
    moeq_imatrix_free(im);
    /* a .dat name still writes the legacy format */
    REQUIRE(test_run(&o, "%s imatrix --in-file %s -o %s", test_moeq_bin(), path, test_tmp("par_leg.dat")) == 0);
    free(o);
    b = test_read_file(test_tmp("par_leg.dat"), &n);
    REQUIRE(b != NULL && n > 4);
    CHECK(memcmp(b, "GGUF", 4) != 0);
    free(b);
}

TEST(imatrix_show_statistics_and_chunk_size_warning)
{
    char err[256];
    struct moeq_imatrix *im = moeq_imatrix_new();
    struct moeq_imatrix_entry *e = moeq_imatrix_get(im, "blk.0.ffn_up_exps.weight", 4, 2, err, sizeof err);
    REQUIRE(e != NULL);
    const float r0[4] = { 1, 2, 0, 3 }, r1[8] = { 2, 0, 0, 0, 2, 0, 0, 0 };
    moeq_imatrix_add(e, 0, r0, 1);
    moeq_imatrix_add(e, 1, r1, 2);
    e->ncall = 3;
    im->chunk_count = 1;
    im->chunk_size = 64;
    const char *a = test_tmp("par_stats.gguf");
    REQUIREF(moeq_imatrix_save(im, a, 1, NULL, 0, err, sizeof err) == 0, "%s", err);
    im->chunk_size = 128;
    const char *b = test_tmp("par_stats128.gguf");
    REQUIREF(moeq_imatrix_save(im, b, 1, NULL, 0, err, sizeof err) == 0, "%s", err);
    moeq_imatrix_free(im);
    char *o = NULL;
    REQUIREF(test_run(&o, "%s imatrix --in-file %s --show-statistics", test_moeq_bin(), a) == 0, "%s", o);
    /* values 1 4 0 9 and 4 0 0 0: sum 18, mean 2.25, 4 of 8 active */
    const char *l = o ? strstr(o, "blk.0.ffn_up_exps.weight") : NULL;
    REQUIREF(l != NULL, "%s", o ? o : "");
    char name[64];
    double sum = 0, mean = 0, act = 0;
    int cov = 0, nexp = 0, calls = 0;
    REQUIREF(sscanf(l, "%63s %lf %lf %lf%% %d/%d %d", name, &sum, &mean, &act, &cov, &nexp, &calls) == 7, "%s", l);
    CHECKF(fabs(sum - 18) < 1e-9 && fabs(mean - 2.25) < 1e-9 && fabs(act - 50) < 1e-9, "%s", l);
    CHECKF(cov == 2 && nexp == 2 && calls >= 1, "%s", l);
    CHECK(strstr(o, "chunks of 64 tokens"));
    free(o);
    CHECK(test_run(&o, "%s imatrix --show-statistics", test_moeq_bin()) == 2);
    free(o);
    /* merging files of different chunk sizes warns */
    REQUIRE(test_run(&o, "%s imatrix --in-file %s --in-file %s -o %s", test_moeq_bin(), a, b,
                     test_tmp("par_merged.gguf")) == 0);
    CHECKF(o && strstr(o, "warning") && strstr(o, "chunks of 128 tokens") && strstr(o, "with 64"), "%s", o ? o : "");
    free(o);
    REQUIRE(test_run(&o, "%s imatrix --in-file %s --in-file %s -o %s", test_moeq_bin(), a, a,
                     test_tmp("par_merged2.gguf")) == 0);
    CHECKF(o && !strstr(o, "chunk sizes"), "%s", o ? o : "");
    free(o);
    /* a .dat stores none: said so */
    REQUIRE(test_run(&o, "%s imatrix --in-file %s -o %s", test_moeq_bin(), a, test_tmp("par_s.dat")) == 0);
    free(o);
    REQUIRE(test_run(&o, "%s imatrix --in-file %s --in-file %s -o %s", test_moeq_bin(), test_tmp("par_s.dat"), a,
                     test_tmp("par_merged3.gguf")) == 0);
    CHECKF(o && strstr(o, "stores no chunk size"), "%s", o ? o : "");
    free(o);
}
