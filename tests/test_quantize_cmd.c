/* `moeq quantize` end to end: plans, sizes, metadata, imatrix handling and
 * every refusal, on a small qwen3moe-shaped model built here (F32 and
 * Q8_0 sources), plus the acceptance runs on ../shared's tiny-a. */
#include "test.h"
#include "gguf/gguf.h"
#include "quant/imatrix.h"
#include "quant/quants.h"
#include "quant/quants_blocks.h"

#include <sys/stat.h>
#include <unistd.h>

static uint64_t rng = 0x1234567;
static float frand(void)
{
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return (float)((rng >> 11) & 0xffffff) / 16777216.0f - 0.5f;
}

/* A 1-layer qwen3moe-shaped file: 256-wide rows so every type fits. */
static void build_model(const char *path, int q8)
{
    char err[256];
    gguf_writer *w = gguf_writer_open(path, NULL, err, sizeof err);
    REQUIREF(w != NULL, "%s", err);
    gguf_writer_add_str(w, "general.architecture", "qwen3moe");
    gguf_writer_add_u32(w, "general.file_type", q8 ? 7 : 0);
    gguf_writer_add_u32(w, "qwen3moe.block_count", 1);
    gguf_writer_add_u32(w, "qwen3moe.attention.head_count", 8);
    gguf_writer_add_u32(w, "qwen3moe.attention.head_count_kv", 2);
    gguf_writer_add_u32(w, "qwen3moe.expert_count", 4);
    struct { const char *name; uint32_t nd; uint64_t ne[4]; int quant; } t[] = {
        { "token_embd.weight", 2, { 256, 64, 1, 1 }, 1 },
        { "blk.0.attn_norm.weight", 1, { 256, 1, 1, 1 }, 0 },
        { "blk.0.attn_q.weight", 2, { 256, 256, 1, 1 }, 1 },
        { "blk.0.attn_v.weight", 2, { 256, 64, 1, 1 }, 1 },
        { "blk.0.ffn_gate_inp.weight", 2, { 256, 4, 1, 1 }, 0 },
        { "blk.0.ffn_gate_exps.weight", 3, { 256, 128, 4, 1 }, 1 },
        { "blk.0.ffn_down_exps.weight", 3, { 256, 128, 4, 1 }, 1 },
        { "output.weight", 2, { 256, 64, 1, 1 }, 1 },
    };
    const int nt = (int)(sizeof t / sizeof t[0]);
    for (int i = 0; i < nt; i++)
        REQUIRE(gguf_writer_add_tensor(w, t[i].name, q8 && t[i].quant ? MOEQ_TYPE_Q8_0 : MOEQ_TYPE_F32,
                                       t[i].nd, t[i].ne) >= 0);
    REQUIRE(gguf_writer_begin_data(w) == 0);
    for (int i = 0; i < nt; i++) {
        uint64_t n = t[i].ne[0] * t[i].ne[1] * t[i].ne[2];
        float *x = malloc(n * sizeof *x);
        for (uint64_t k = 0; k < n; k++) {
            float col = (k % 256) == 7 ? 8.0f : 1.0f; /* an outlier input channel */
            x[k] = frand() * col * (1.0f + (float)((k / 256) % 5));
        }
        if (q8 && t[i].quant) {
            block_q8_0 *b = malloc(n / 32 * sizeof *b);
            for (uint64_t k = 0; k < n / 32; k++) {
                float amax = 0;
                for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[k * 32 + j]));
                float d = amax / 127;
                b[k].d = moeq_f32_to_f16(d);
                for (int j = 0; j < 32; j++) b[k].qs[j] = (int8_t)lrintf(d ? x[k * 32 + j] / d : 0);
            }
            REQUIRE(gguf_writer_write(w, b, n / 32 * sizeof *b) == 0);
            free(b);
        } else {
            REQUIRE(gguf_writer_write(w, x, n * 4) == 0);
        }
        free(x);
    }
    REQUIRE(gguf_writer_finish(w) == 0);
}

static void write_imatrix(const char *path, const char *name, int64_t n_per_row, int64_t n_mat)
{
    char err[256];
    struct moeq_imatrix *im = moeq_imatrix_new();
    struct moeq_imatrix_entry *e = moeq_imatrix_get(im, name, n_per_row, n_mat, err, sizeof err);
    REQUIRE(e != NULL);
    float *x = malloc((size_t)n_per_row * sizeof *x);
    for (int64_t m = 0; m < n_mat; m++) {
        for (int64_t j = 0; j < n_per_row; j++) x[j] = (j % 256 == 7 ? 10.0f : 1.0f) + frand();
        moeq_imatrix_add(e, m, x, 1);
    }
    free(x);
    e->ncall = 1;
    im->chunk_count = 1;
    REQUIRE(moeq_imatrix_save(im, path, 0, NULL, 0, err, sizeof err) == 0);
    moeq_imatrix_free(im);
}

static int exists(const char *p) { struct stat st; return stat(p, &st) == 0; }

TEST(quantize_cmd_dry_run_sizes_equal_written)
{
    const char *in = test_tmp("m.gguf"), *out = test_tmp("o.gguf");
    build_model(in, 0);
    char *o1 = NULL, *o2 = NULL;
    int rc = test_run(&o1, "%s quantize --dry-run %s %s Q4_K_M", test_moeq_bin(), in, out);
    REQUIREF(rc == 0, "%s", o1);
    CHECK(!exists(out));
    rc = test_run(&o2, "%s quantize -q %s %s Q4_K_M 2", test_moeq_bin(), in, out);
    REQUIREF(rc == 0, "%s", o2);
    gguf_file *f = gguf_open(out, NULL, 0);
    REQUIRE(f != NULL);
    /* every tensor's planned byte count appears in the dry run line */
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        char pat[256];
        snprintf(pat, sizeof pat, "%.*s", (int)f->tensors[i].name.n, f->tensors[i].name.s);
        const char *line = strstr(o1, pat);
        REQUIREF(line != NULL, "%s missing from the plan", pat);
        char want[64];
        snprintf(want, sizeof want, " %llu", (unsigned long long)f->tensors[i].nbytes);
        const char *eol = strchr(line, '\n');
        char *hit = strstr(line, want);
        CHECKF(hit && (!eol || hit < eol), "%s: planned size differs from written %llu", pat,
               (unsigned long long)f->tensors[i].nbytes);
    }
    uint64_t ft = 0;
    CHECK(gguf_get_u64(f, "general.file_type", &ft) == 0 && ft == 15);
    CHECK(gguf_get_u64(f, "general.quantization_version", &ft) == 0 && ft == 2);
    int64_t k = gguf_find_tensor(f, "blk.0.attn_v.weight");
    CHECK(k >= 0 && f->tensors[k].type == MOEQ_TYPE_Q8_0); /* MoE bump */
    k = gguf_find_tensor(f, "blk.0.ffn_gate_inp.weight");
    CHECK(k >= 0 && f->tensors[k].type == MOEQ_TYPE_F32);
    gguf_close(f);
    free(o1); free(o2);
}

TEST(quantize_cmd_recipe_and_imatrix_metadata)
{
    const char *in = test_tmp("m8.gguf"), *out = test_tmp("asym.gguf"), *im = test_tmp("im.dat");
    build_model(in, 1);
    write_imatrix(im, "blk.0.ffn_gate_exps.weight", 256, 4);
    char *o = NULL;
    /* IQ2_S without data for a tensor is refused, with nothing written */
    int rc = test_run(&o, "%s quantize --allow-requantize --recipe asym-2bitexp %s %s", test_moeq_bin(), in, out);
    CHECKF(rc == 1 && strstr(o, "importance"), "%s", o);
    CHECK(!exists(out));
    free(o);
    rc = test_run(&o, "%s quantize --allow-requantize --imatrix %s --recipe asym-2bitexp %s %s", test_moeq_bin(), im, in, out);
    REQUIREF(rc == 0, "%s", o);
    free(o);
    gguf_file *f = gguf_open(out, NULL, 0);
    REQUIRE(f != NULL);
    int64_t k = gguf_find_tensor(f, "blk.0.ffn_gate_exps.weight");
    CHECK(f->tensors[k].type == MOEQ_TYPE_IQ2_S);
    k = gguf_find_tensor(f, "blk.0.ffn_down_exps.weight");
    CHECK(f->tensors[k].type == MOEQ_TYPE_IQ3_S);
    k = gguf_find_tensor(f, "blk.0.attn_q.weight");
    CHECK(f->tensors[k].type == MOEQ_TYPE_Q4_K);
    k = gguf_find_tensor(f, "token_embd.weight");
    CHECK(f->tensors[k].type == MOEQ_TYPE_Q6_K);
    uint64_t v;
    CHECK(gguf_get_u64(f, "general.file_type", &v) == 0 && v == 26);
    char s[512];
    CHECK(gguf_get_str(f, "quantize.imatrix.file", s, sizeof s) == 0 && strstr(s, "im.dat"));
    int64_t iv;
    CHECK(gguf_get_i64(f, "quantize.imatrix.entries_count", &iv) == 0 && iv == 1);
    CHECK(gguf_get_i64(f, "quantize.imatrix.chunks_count", &iv) == 0 && iv == 1);
    gguf_close(f);
}

TEST(quantize_cmd_refusals_leave_no_output)
{
    const char *in = test_tmp("m8.gguf"), *out = test_tmp("out.gguf");
    build_model(in, 1);
    struct { const char *args; int rc; const char *msg; } cases[] = {
        { "%s quantize %s %s Q4_K_M", 1, "requantiz" },
        { "%s quantize --allow-requantize %s %s Q9_Z", 2, "unknown type" },
        { "%s quantize --allow-requantize --tensor-type 'attn_(q=Q4_K' %s %s Q4_K_M", 2, "bad regex" },
        { "%s quantize --allow-requantize --tensor-type attn_q=Q7_K %s %s Q4_K_M", 2, "unknown type" },
        { "%s quantize --allow-requantize %s/none.gguf %s Q4_K_M", 1, "none.gguf" },
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        char *o = NULL;
        int rc;
        if (c == 4) rc = test_run(&o, cases[c].args, test_moeq_bin(), test_tmpdir(), out);
        else rc = test_run(&o, cases[c].args, test_moeq_bin(), in, out);
        CHECKF(rc == cases[c].rc && o && strstr(o, cases[c].msg), "case %zu: rc %d: %s", c, rc, o ? o : "");
        CHECKF(!exists(out), "case %zu left %s", c, out);
        free(o);
    }
    /* output equal to input */
    char *o = NULL;
    int rc = test_run(&o, "%s quantize --allow-requantize %s %s Q4_K_M", test_moeq_bin(), in, in);
    CHECKF(rc == 1 && strstr(o, "input"), "%s", o);
    free(o);
    /* the same file under another name */
    char alias[4200];
    snprintf(alias, sizeof alias, "%s/./m8.gguf", test_tmpdir());
    rc = test_run(&o, "%s quantize --allow-requantize %s %s Q4_K_M", test_moeq_bin(), in, alias);
    CHECKF(rc == 1, "%s", o);
    free(o);
    gguf_file *f = gguf_open(in, NULL, 0);
    CHECK(f != NULL);
    gguf_close(f);
    /* unwritable folder */
    rc = test_run(&o, "%s quantize --allow-requantize %s /proc/nope/out.gguf Q4_K_M", test_moeq_bin(), in);
    CHECKF(rc == 1 && strstr(o, "/proc/nope"), "%s", o);
    free(o);
    /* imatrix from a different model, and one with the wrong length */
    const char *im1 = test_tmp("other.dat"), *im2 = test_tmp("short.dat");
    write_imatrix(im1, "blk.0.ffn_up.weight", 4096, 1);
    write_imatrix(im2, "blk.0.attn_q.weight", 128, 1);
    rc = test_run(&o, "%s quantize --allow-requantize --imatrix %s %s %s Q4_K_M", test_moeq_bin(), im1, in, out);
    CHECKF(rc == 1 && strstr(o, "different model"), "%s", o);
    free(o);
    rc = test_run(&o, "%s quantize --allow-requantize --imatrix %s %s %s Q4_K_M", test_moeq_bin(), im2, in, out);
    CHECKF(rc == 1 && strstr(o, "blk.0.attn_q.weight") && strstr(o, "256"), "%s", o);
    free(o);
    CHECK(!exists(out));
    /* a mix that keeps every tensor as it is quantizes none, so no imatrix
     * can match one: that is not an error (an allocation's plan can be so) */
    rc = test_run(&o, "%s quantize --allow-requantize --imatrix %s %s %s Q8_0", test_moeq_bin(), im1, in, out);
    CHECKF(rc == 0 && exists(out), "rc %d: %s", rc, o);
    free(o);
    unlink(out);
}

/* The acceptance runs: the recipe via --recipe and spelled out, and
 * Q4_K_M, against the reference files' group types and sizes. */
static void compare_with_reference(const char *ours, const char *ref)
{
    gguf_file *a = gguf_open(ours, NULL, 0), *b = gguf_open(ref, NULL, 0);
    REQUIRE(a && b);
    CHECK(a->n_tensors == b->n_tensors);
    uint64_t sa = 0, sb = 0;
    for (uint64_t i = 0; i < a->n_tensors && i < b->n_tensors; i++) {
        CHECKF(a->tensors[i].type == b->tensors[i].type, "%.*s: %s vs reference %s",
               (int)a->tensors[i].name.n, a->tensors[i].name.s,
               moeq_type_name((int)a->tensors[i].type), moeq_type_name((int)b->tensors[i].type));
        sa += a->tensors[i].nbytes;
        sb += b->tensors[i].nbytes;
    }
    CHECKF(fabs((double)sa - (double)sb) <= 0.005 * (double)sb, "tensor bytes %llu vs %llu",
           (unsigned long long)sa, (unsigned long long)sb);
    CHECKF(fabs((double)a->size - (double)b->size) <= 0.005 * (double)b->size, "file %llu vs %llu",
           (unsigned long long)a->size, (unsigned long long)b->size);
    gguf_close(a);
    gguf_close(b);
}

TEST(quantize_cmd_tiny_a_acceptance)
{
    if (test_sanitized()) SKIP("three whole-model quantizations: checked by the release suite");
    const char *src = test_shared_path("models/tiny-a/tiny-a-q8_0.gguf");
    const char *im = test_shared_path("models/tiny-a/imatrix.dat");
    const char *ref_asym = test_shared_path("models/tiny-a/tiny-a-asym.gguf");
    const char *ref_q4 = test_shared_path("models/tiny-a/tiny-a-q4_k_m.gguf");
    const char *o1 = test_tmp("asym1.gguf"), *o2 = test_tmp("asym2.gguf"), *o3 = test_tmp("q4km.gguf");
    char *o = NULL;
    int rc = test_run(&o, "%s quantize -q --allow-requantize --imatrix %s --recipe asym-2bitexp %s %s",
                      test_moeq_bin(), im, src, o1);
    REQUIREF(rc == 0, "%s", o);
    free(o);
    rc = test_run(&o, "%s quantize -q --allow-requantize --imatrix %s --tensor-type ffn_gate_exps=IQ2_S "
                      "--tensor-type ffn_up_exps=IQ2_S --tensor-type ffn_down_exps=IQ3_S --tensor-type attn_q=Q4_K "
                      "--tensor-type attn_k=Q4_K --tensor-type attn_v=Q4_K --tensor-type attn_output=Q4_K "
                      "--token-embedding-type Q6_K --output-tensor-type Q6_K %s %s IQ3_S",
                  test_moeq_bin(), im, src, o2);
    REQUIREF(rc == 0, "%s", o);
    free(o);
    rc = test_run(&o, "%s quantize -q --allow-requantize --imatrix %s %s %s Q4_K_M", test_moeq_bin(), im, src, o3);
    REQUIREF(rc == 0, "%s", o);
    free(o);
    compare_with_reference(o1, ref_asym);
    compare_with_reference(o2, ref_asym);
    compare_with_reference(o3, ref_q4);
    /* the info tool agrees on bits per weight */
    rc = test_run(&o, "%s info %s", test_moeq_bin(), o1);
    CHECKF(rc == 0 && strstr(o, "3.44"), "%s", o);
    free(o);
}
