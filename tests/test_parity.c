/* llama.cpp parity of the command line (issue 16): llama-quantize's numeric
 * file types, --leave-output-tensor, --override-kv, --dry-run and -q;
 * fit's exit status and --json; run's context messages. */
#include "test.h"
#include "gguf/gguf.h"
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
