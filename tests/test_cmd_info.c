/*
 * test_cmd_info.c: `moeq info` and `moeq dump` through the binary. On the
 * tiny-a models, info must report the tensor count, the types per group
 * and the bits per weight given in ../shared/models/tiny-a/ref/README.md.
 */
#include "test.h"
#include "gguf/gguf.h"
#include "quant/quants.h"
#include "quant/tensor_groups.h"

#include <jansson.h>
#include <unistd.h>

struct want_group { const char *group, *type; int count; };

static json_t *info_json(const char *path)
{
    const char *out = test_tmp("info.json");
    int rc = test_run(NULL, "%s info --json '%s' > '%s'", test_moeq_bin(), path, out);
    REQUIREF(rc == 0, "moeq info --json %s exited %d", path, rc);
    json_error_t e;
    json_t *root = json_load_file(out, 0, &e);
    REQUIREF(root, "bad JSON from moeq info: %s (line %d)", e.text, e.line);
    return root;
}

/* The groups object must hold exactly the wanted (group, type, count). */
static void check_groups(const char *file, json_t *root, const struct want_group *w, size_t n)
{
    json_t *groups = json_object_get(root, "groups");
    REQUIRE(json_is_object(groups));
    size_t pairs = 0;
    const char *g;
    json_t *types;
    json_object_foreach(groups, g, types) pairs += json_object_size(types);
    CHECKF(pairs == n, "%s: %zu (group, type) pairs, want %zu", file, pairs, n);
    for (size_t i = 0; i < n; i++) {
        json_t *c = json_object_get(json_object_get(groups, w[i].group), w[i].type);
        CHECKF(json_is_integer(c) && json_integer_value(c) == w[i].count,
               "%s: group %s type %s: want %d", file, w[i].group, w[i].type, w[i].count);
    }
}

static void check_model(const char *name, double bpw, const struct want_group *w, size_t n)
{
    char rel[128];
    snprintf(rel, sizeof rel, "models/tiny-a/%s", name);
    const char *path = test_shared_path(rel);
    json_t *root = info_json(path);
    json_t *tot = json_object_get(root, "totals");
    CHECK(json_integer_value(json_object_get(tot, "tensors")) == 51);
    CHECK(json_array_size(json_object_get(root, "tensors")) == 51);
    CHECK(json_integer_value(json_object_get(tot, "parameters")) == 30050816);
    double got = json_real_value(json_object_get(tot, "bits_per_weight"));
    CHECKF(fabs(got - bpw) < 0.00005, "%s: bpw %.6f, want %.4f", name, got, bpw);
    CHECK(!strcmp(json_string_value(json_object_get(root, "architecture")), "qwen3moe"));
    json_t *hp = json_object_get(root, "hyperparameters");
    CHECK(json_integer_value(json_object_get(hp, "expert_count")) == 32);
    CHECK(json_integer_value(json_object_get(hp, "block_count")) == 4);
    json_t *toks = json_object_get(json_object_get(root, "metadata"), "tokenizer.ggml.tokens");
    CHECK(json_integer_value(json_object_get(toks, "count")) == 8192);
    CHECK(json_array_size(json_object_get(toks, "items")) == 8);
    check_groups(name, root, w, n);
    json_decref(root);

    /* the text form carries the same totals line */
    char *out = NULL;
    int rc = test_run(&out, "%s info '%s'", test_moeq_bin(), path);
    char want[64];
    snprintf(want, sizeof want, "51 tensors, 30050816 parameters");
    CHECK(rc == 0 && out && strstr(out, want));
    snprintf(want, sizeof want, "%.4f bits per weight", bpw);
    CHECKF(out && strstr(out, want), "%s: text lacks '%s'", name, want);
    CHECK(out && strstr(out, "architecture: qwen3moe"));
    CHECK(out && strstr(out, "[str x 8192]"));
    free(out);
}

TEST(info_tiny_a_asym)
{
    static const struct want_group w[] = {
        { "ffn_gate_exps", "IQ2_S", 4 }, { "ffn_up_exps", "IQ2_S", 4 },
        { "ffn_down_exps", "IQ3_S", 4 },
        { "attn_q", "Q4_K", 4 }, { "attn_k", "Q4_K", 4 }, { "attn_v", "Q4_K", 4 },
        { "attn_output", "Q4_K", 4 },
        { "token_embd", "Q6_K", 1 }, { "output", "Q6_K", 1 },
        { "norm", "F32", 17 }, { "router", "F32", 4 },
    };
    check_model("tiny-a-asym.gguf", 3.4419, w, sizeof w / sizeof w[0]);
}

TEST(info_tiny_a_q4_k_m)
{
    static const struct want_group w[] = {
        { "ffn_gate_exps", "Q4_K", 4 }, { "ffn_up_exps", "Q4_K", 4 },
        { "ffn_down_exps", "Q4_K", 2 }, { "ffn_down_exps", "Q6_K", 2 },
        { "attn_q", "Q4_K", 4 }, { "attn_k", "Q8_0", 4 }, { "attn_v", "Q8_0", 4 },
        { "attn_output", "Q5_K", 4 },
        { "token_embd", "Q4_K", 1 }, { "output", "Q6_K", 1 },
        { "norm", "F32", 17 }, { "router", "F32", 4 },
    };
    check_model("tiny-a-q4_k_m.gguf", 4.9903, w, sizeof w / sizeof w[0]);
}

TEST(info_tiny_a_q8_0_and_f16)
{
    static const struct want_group q8[] = {
        { "ffn_gate_exps", "Q8_0", 4 }, { "ffn_up_exps", "Q8_0", 4 },
        { "ffn_down_exps", "Q8_0", 4 },
        { "attn_q", "Q8_0", 4 }, { "attn_k", "Q8_0", 4 }, { "attn_v", "Q8_0", 4 },
        { "attn_output", "Q8_0", 4 },
        { "token_embd", "Q8_0", 1 }, { "output", "Q8_0", 1 },
        { "norm", "F32", 17 }, { "router", "F32", 4 },
    };
    check_model("tiny-a-q8_0.gguf", 8.5276, q8, sizeof q8 / sizeof q8[0]);
    static const struct want_group f16[] = {
        { "ffn_gate_exps", "F16", 4 }, { "ffn_up_exps", "F16", 4 },
        { "ffn_down_exps", "F16", 4 },
        { "attn_q", "F16", 4 }, { "attn_k", "F16", 4 }, { "attn_v", "F16", 4 },
        { "attn_output", "F16", 4 },
        { "token_embd", "F16", 1 }, { "output", "F16", 1 },
        { "norm", "F32", 17 }, { "router", "F32", 4 },
    };
    check_model("tiny-a-f16.gguf", 16.0188, f16, sizeof f16 / sizeof f16[0]);
}

TEST(tensor_group_names)
{
    CHECK(moeq_tensor_group("blk.0.ffn_gate_exps.weight") == MOEQ_GROUP_FFN_GATE_EXPS);
    CHECK(moeq_tensor_group("blk.47.ffn_up_exps.weight") == MOEQ_GROUP_FFN_UP_EXPS);
    CHECK(moeq_tensor_group("blk.3.ffn_down_exps.weight") == MOEQ_GROUP_FFN_DOWN_EXPS);
    CHECK(moeq_tensor_group("blk.3.ffn_gate_inp.weight") == MOEQ_GROUP_ROUTER);
    CHECK(moeq_tensor_group("blk.0.attn_q.weight") == MOEQ_GROUP_ATTN_Q);
    CHECK(moeq_tensor_group("blk.0.attn_k.weight") == MOEQ_GROUP_ATTN_K);
    CHECK(moeq_tensor_group("blk.0.attn_v.weight") == MOEQ_GROUP_ATTN_V);
    CHECK(moeq_tensor_group("blk.0.attn_output.weight") == MOEQ_GROUP_ATTN_OUTPUT);
    CHECK(moeq_tensor_group("blk.0.attn_q_norm.weight") == MOEQ_GROUP_NORM);
    CHECK(moeq_tensor_group("blk.0.attn_k_norm.weight") == MOEQ_GROUP_NORM);
    CHECK(moeq_tensor_group("blk.0.ffn_norm.weight") == MOEQ_GROUP_NORM);
    CHECK(moeq_tensor_group("output_norm.weight") == MOEQ_GROUP_NORM);
    CHECK(moeq_tensor_group("output.weight") == MOEQ_GROUP_OUTPUT);
    CHECK(moeq_tensor_group("token_embd.weight") == MOEQ_GROUP_TOKEN_EMBD);
    CHECK(moeq_tensor_group("blk.0.ffn_gate.weight") == MOEQ_GROUP_OTHER);
    CHECK(moeq_tensor_group("rope_freqs.weight") == MOEQ_GROUP_OTHER);
    CHECK(moeq_tensor_group("blk.0.attn_qkv.weight") == MOEQ_GROUP_OTHER);
    CHECK(moeq_tensor_group_n("output.weightXYZ", 13) == MOEQ_GROUP_OUTPUT);

    /* the array printer: totals and bits per weight */
    const char *names[] = { "blk.0.ffn_up_exps.weight", "blk.0.attn_norm.weight" };
    int types[] = { MOEQ_TYPE_Q8_0, MOEQ_TYPE_F32 };
    uint64_t nelem[] = { 256, 64 }, nbytes[] = { 272, 256 };
    FILE *fp = fopen(test_tmp("table.txt"), "w+");
    REQUIRE(fp);
    moeq_print_group_table(fp, 2, names, types, nelem, nbytes);
    fclose(fp);
    char *txt = test_read_file(test_tmp("table.txt"), NULL);
    REQUIRE(txt);
    /* (272 + 256) * 8 / 320 = 13.2 */
    CHECKF(strstr(txt, "2 tensors, 320 parameters, 528 bytes") && strstr(txt, "13.2000 bits per weight"), "%s", txt);
    CHECK(strstr(txt, "routed expert up (ffn_up_exps)") && strstr(txt, "Q8_0"));
    free(txt);
}

/* One line on stderr, starting "moeq: ", exit status want. */
static void check_error_run(int want, const char *must, const char *cmd)
{
    const char *errf = test_tmp("stderr.txt");
    int rc = test_run(NULL, "%s >/dev/null 2>'%s'", cmd, errf);
    CHECKF(rc == want, "'%s' exited %d, want %d", cmd, rc, want);
    size_t n = 0;
    char *e = test_read_file(errf, &n);
    REQUIRE(e);
    int lines = 0;
    for (size_t i = 0; i < n; i++) lines += e[i] == '\n';
    CHECKF(lines == 1 && !strncmp(e, "moeq: ", 6) && strstr(e, must), "'%s' stderr: %s", cmd, e);
    free(e);
}

TEST(info_errors)
{
    char cmd[4200];
    const char *bin = test_moeq_bin();
    snprintf(cmd, sizeof cmd, "%s info '%s'", bin, test_tmp("missing.gguf"));
    check_error_run(1, "missing.gguf: cannot open", cmd);
    snprintf(cmd, sizeof cmd, "%s info", bin);
    check_error_run(2, "missing FILE", cmd);
    snprintf(cmd, sizeof cmd, "%s info --bogus x", bin);
    check_error_run(2, "unknown option", cmd);
    CHECK(test_run(NULL, "%s info --help >/dev/null", bin) == 0);
    CHECK(test_run(NULL, "%s dump --help >/dev/null", bin) == 0);
    snprintf(cmd, sizeof cmd, "%s dump x", bin);
    check_error_run(2, "need FILE and TENSOR", cmd);
}

/* A file with F32, F16, BF16 and Q8_0 tensors of known values. */
static const char *make_dump_file(void)
{
    const char *path = test_tmp("dump.gguf");
    char err[512];
    gguf_writer *w = gguf_writer_open(path, NULL, err, sizeof err);
    REQUIREF(w, "%s", err);
    uint64_t ne[2] = { 32, 2 };
    REQUIRE(gguf_writer_add_tensor(w, "f32", MOEQ_TYPE_F32, 2, ne) == 0);
    REQUIRE(gguf_writer_add_tensor(w, "f16", MOEQ_TYPE_F16, 2, ne) == 1);
    REQUIRE(gguf_writer_add_tensor(w, "bf16", MOEQ_TYPE_BF16, 2, ne) == 2);
    REQUIRE(gguf_writer_add_tensor(w, "q8", MOEQ_TYPE_Q8_0, 2, ne) == 3);
    float v[64];
    uint16_t h[64], b[64];
    for (int i = 0; i < 64; i++) {
        v[i] = (float)(i - 32) * 0.5f;
        h[i] = moeq_f32_to_f16(v[i]);
        b[i] = moeq_f32_to_bf16(v[i]);
    }
    REQUIRE(gguf_writer_write(w, v, sizeof v) == 0);
    REQUIRE(gguf_writer_write(w, h, sizeof h) == 0);
    REQUIRE(gguf_writer_write(w, b, sizeof b) == 0);
    /* two Q8_0 blocks: d = 0.5 (f16 0x3800), qs = i - 32 */
    uint8_t q[68];
    for (int blk = 0; blk < 2; blk++) {
        q[blk * 34] = 0x00;
        q[blk * 34 + 1] = 0x38;
        for (int i = 0; i < 32; i++) q[blk * 34 + 2 + i] = (uint8_t)(int8_t)(blk * 32 + i - 32);
    }
    REQUIRE(gguf_writer_write(w, q, sizeof q) == 0);
    REQUIRE(gguf_writer_finish(w) == 0);
    return path;
}

TEST(dump_tensors)
{
    const char *path = make_dump_file();
    const char *bin = test_moeq_bin();
    const char *out = test_tmp("out.f32");
    static const char *const names[] = { "f32", "f16", "bf16" };
    for (int k = 0; k < 3; k++) {
        unlink(out);
        int rc = test_run(NULL, "%s dump '%s' %s -o '%s'", bin, path, names[k], out);
        CHECKF(rc == 0, "dump %s exited %d", names[k], rc);
        size_t n = 0;
        float *x = test_read_file(out, &n);
        REQUIRE(x);
        CHECKF(n == 256, "dump %s: %zu bytes", names[k], n);
        int bad = 0;
        for (int i = 0; i < 64 && n == 256; i++) bad += x[i] != (float)(i - 32) * 0.5f;
        CHECKF(bad == 0, "dump %s: %d wrong values", names[k], bad);
        free(x);
    }
    /* stdout, through a pipe */
    CHECK(test_run(NULL, "%s dump '%s' f16 | cat > '%s'", bin, path, out) == 0);
    size_t n = 0;
    float *x = test_read_file(out, &n);
    CHECK(x && n == 256 && x[63] == 15.5f);
    free(x);

    /* Q8_0: values when the dequantizer exists, else one clear error */
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "%s dump '%s' q8 -o '%s'", bin, path, test_tmp("q8.f32"));
    const struct moeq_type_traits *tr = moeq_type_traits(MOEQ_TYPE_Q8_0);
    if (tr->to_float) {
        CHECK(test_run(NULL, "%s", cmd) == 0);
        x = test_read_file(test_tmp("q8.f32"), &n);
        CHECK(x && n == 256 && x[0] == -16.0f && x[63] == 15.5f);
        free(x);
    } else {
        check_error_run(1, "no dequantizer for type Q8_0", cmd);
        CHECK(access(test_tmp("q8.f32"), F_OK) != 0);
    }

    snprintf(cmd, sizeof cmd, "%s dump '%s' nope -o '%s'", bin, path, out);
    check_error_run(1, "no tensor named 'nope'", cmd);
    snprintf(cmd, sizeof cmd, "%s dump '%s' f32 -o '%s'", bin, path, path);
    check_error_run(1, "refusing to overwrite the input", cmd);
    snprintf(cmd, sizeof cmd, "%s dump '%s' f32 -o '%s'", bin, path, test_tmp("no/dir/x.f32"));
    check_error_run(1, "cannot create a temporary file", cmd);
}
