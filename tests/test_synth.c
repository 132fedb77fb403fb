/*
 * test_synth.c: `moeq synth`. The tiny preset opens with the GGUF reader
 * and has llama.cpp's tensors (names, shapes, order, types) and metadata;
 * the vocabulary is consistent (unique tokens, every merge's parts and
 * result are tokens); output is byte-identical for a seed at any thread
 * count and differs between seeds; the asym recipe gives its types per
 * group; rows a block does not divide fall back; the weights have the
 * intended structure (norms near 1, outlier channels, hot experts); directly
 * synthesized blocks of every quantized type reproduce the float model's
 * scale (overall and per column); bad flags exit 2.
 */
#include "test.h"
#include "engine/engine.h"
#include "gguf/gguf.h"
#include "quant/quants.h"
#include "model/tokenizer.h"
#include "synth/synth.h"

#include <stdint.h>
#include <unistd.h>

static const char *synth(const char *name, const char *args)
{
    const char *path = test_tmp(name);
    char *out = NULL;
    int rc = test_run(&out, "%s synth -o %s %s", test_moeq_bin(), path, args);
    if (rc != 0) {
        test_fail(__FILE__, __LINE__, "moeq synth %s: exit %d: %s", args, rc, out ? out : "");
        free(out);
        test_end_now();
    }
    free(out);
    return path;
}

static gguf_file *open_or_die(const char *path)
{
    char err[512];
    gguf_file *f = gguf_open(path, err, sizeof err);
    REQUIREF(f, "%s", err);
    return f;
}

static const gguf_tensor *tensor(const gguf_file *f, const char *name)
{
    int64_t i = gguf_find_tensor(f, name);
    REQUIREF(i >= 0, "tensor %s missing", name);
    return &f->tensors[i];
}

/* Whole tensor as floats (malloc'd); *n receives the element count. */
static float *tensor_f32(const gguf_file *f, const char *name, uint64_t *n)
{
    const gguf_tensor *t = tensor(f, name);
    uint64_t ne = t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
    float *v = malloc(ne * sizeof *v);
    REQUIRE(v);
    REQUIREF(moeq_dequantize((int)t->type, t->data, v, (int64_t)ne) == 0, "%s: no dequantizer", name);
    if (n) *n = ne;
    return v;
}

static uint64_t u64_of(const gguf_file *f, const char *key)
{
    uint64_t v = 0;
    CHECKF(gguf_get_u64(f, key, &v) == 0, "key %s missing", key);
    return v;
}

/* ------------------------------------------------------------- layout */

struct want_tensor { const char *name; uint32_t n_dims; uint64_t ne[3]; };

static void check_layout(const gguf_file *f, int n_layer, uint64_t E, uint64_t Q, uint64_t KV,
                         uint64_t H, uint64_t F, uint64_t X, uint64_t V)
{
    REQUIRE(f->n_tensors == (uint64_t)(3 + 12 * n_layer));
    uint64_t k = 0;
    char nm[96];
#define EXPECT(NAME, ND, A, B, C) do {                                                   \
        const gguf_tensor *t = &f->tensors[k++];                                         \
        CHECKF(t->name.n == strlen(NAME) && !memcmp(t->name.s, NAME, t->name.n),         \
               "tensor %llu is %.*s, want %s", (unsigned long long)(k - 1),              \
               (int)t->name.n, t->name.s, NAME);                                         \
        CHECKF(t->n_dims == ND && t->ne[0] == (A) && (ND < 2 || t->ne[1] == (B)) &&      \
               (ND < 3 || t->ne[2] == (C)), "%s: shape", NAME);                          \
    } while (0)
    EXPECT("token_embd.weight", 2, E, V, 1);
    for (int l = 0; l < n_layer; l++) {
#define L(s) (snprintf(nm, sizeof nm, "blk.%d.%s.weight", l, s), nm)
        EXPECT(L("attn_norm"), 1, E, 1, 1);
        EXPECT(L("attn_q"), 2, E, Q, 1);
        EXPECT(L("attn_k"), 2, E, KV, 1);
        EXPECT(L("attn_v"), 2, E, KV, 1);
        EXPECT(L("attn_output"), 2, Q, E, 1);
        EXPECT(L("attn_q_norm"), 1, H, 1, 1);
        EXPECT(L("attn_k_norm"), 1, H, 1, 1);
        EXPECT(L("ffn_norm"), 1, E, 1, 1);
        EXPECT(L("ffn_gate_inp"), 2, E, X, 1);
        EXPECT(L("ffn_gate_exps"), 3, E, F, X);
        EXPECT(L("ffn_up_exps"), 3, E, F, X);
        EXPECT(L("ffn_down_exps"), 3, F, E, X);
#undef L
    }
    EXPECT("output_norm.weight", 1, E, 1, 1);
    EXPECT("output.weight", 2, E, V, 1);
#undef EXPECT
}

TEST(synth_tiny_layout_and_metadata)
{
    const char *p = synth("tiny.gguf", "");
    gguf_file *f = open_or_die(p);
    check_layout(f, 2, 256, 256, 128, 64, 256, 8, 512);
    for (uint64_t i = 0; i < f->n_tensors; i++)
        CHECK(f->tensors[i].type == MOEQ_TYPE_F32);

    char s[64];
    CHECK(gguf_get_str(f, "general.architecture", s, sizeof s) == 0 && !strcmp(s, "qwen3moe"));
    CHECK(gguf_get_str(f, "general.name", s, sizeof s) == 0 && s[0]);
    CHECK(u64_of(f, "general.file_type") == 0);
    CHECK(gguf_find_kv(f, "general.quantization_version") == NULL);
    CHECK(u64_of(f, "qwen3moe.block_count") == 2);
    CHECK(u64_of(f, "qwen3moe.context_length") == 512);
    CHECK(u64_of(f, "qwen3moe.embedding_length") == 256);
    CHECK(u64_of(f, "qwen3moe.feed_forward_length") == 768);
    CHECK(u64_of(f, "qwen3moe.expert_feed_forward_length") == 256);
    CHECK(u64_of(f, "qwen3moe.attention.head_count") == 4);
    CHECK(u64_of(f, "qwen3moe.attention.head_count_kv") == 2);
    CHECK(u64_of(f, "qwen3moe.attention.key_length") == 64);
    CHECK(u64_of(f, "qwen3moe.attention.value_length") == 64);
    CHECK(u64_of(f, "qwen3moe.expert_count") == 8);
    CHECK(u64_of(f, "qwen3moe.expert_used_count") == 2);
    double d;
    CHECK(gguf_get_f64(f, "qwen3moe.rope.freq_base", &d) == 0 && d == 1e6);
    CHECK(gguf_get_f64(f, "qwen3moe.attention.layer_norm_rms_epsilon", &d) == 0 && fabs(d - 1e-6) < 1e-12);

    CHECK(gguf_get_str(f, "tokenizer.ggml.model", s, sizeof s) == 0 && !strcmp(s, "gpt2"));
    CHECK(gguf_get_str(f, "tokenizer.ggml.pre", s, sizeof s) == 0 && !strcmp(s, "qwen2"));
    int b = 1;
    CHECK(gguf_get_bool(f, "tokenizer.ggml.add_bos_token", &b) == 0 && b == 0);
    CHECK(u64_of(f, "tokenizer.ggml.eos_token_id") == 511);
    CHECK(u64_of(f, "tokenizer.ggml.bos_token_id") == 509);
    CHECK(u64_of(f, "tokenizer.ggml.padding_token_id") == 509);
    char tmpl[1024];
    CHECK(gguf_get_str(f, "tokenizer.chat_template", tmpl, sizeof tmpl) == 0 &&
          strstr(tmpl, "<|im_start|>") && strstr(tmpl, "add_generation_prompt"));

    const gguf_kv *tok = gguf_find_kv(f, "tokenizer.ggml.tokens");
    const gguf_kv *typ = gguf_find_kv(f, "tokenizer.ggml.token_type");
    const gguf_kv *mer = gguf_find_kv(f, "tokenizer.ggml.merges");
    REQUIRE(tok && typ && mer);
    REQUIRE(tok->val.type == GGUF_TYPE_ARRAY && tok->val.v.arr.type == GGUF_TYPE_STRING);
    REQUIRE(typ->val.v.arr.type == GGUF_TYPE_INT32 && mer->val.v.arr.type == GGUF_TYPE_STRING);
    REQUIRE(tok->val.v.arr.n == 512 && typ->val.v.arr.n == 512);
    const gguf_value *tk = tok->val.v.arr.items;
    /* bytes first, in GPT-2's alphabet: byte 0 is U+0100, '!' is itself */
    CHECK(tk[0].v.str.n == 2 && !memcmp(tk[0].v.str.s, "\xc4\x80", 2));
    CHECK(tk['!'].v.str.n == 1 && tk['!'].v.str.s[0] == '!');
    CHECK(tk[' '].v.str.n == 2 && !memcmp(tk[' '].v.str.s, "\xc4\xa0", 2)); /* 'Ġ' */
    const char *spec[3] = { "<|endoftext|>", "<|im_start|>", "<|im_end|>" };
    for (int i = 0; i < 3; i++) {
        CHECK(tk[509 + i].v.str.n == strlen(spec[i]) && !memcmp(tk[509 + i].v.str.s, spec[i], strlen(spec[i])));
        CHECK(gguf_arr_i64(&typ->val, 509 + (uint64_t)i) == 3);
    }
    for (int i = 0; i < 509; i++) CHECK(gguf_arr_i64(&typ->val, (uint64_t)i) == 1);
    /* 509 - 256 merges fill this vocabulary */
    REQUIRE(mer->val.v.arr.n == 253);
    /* every merge "a b": a and b are earlier tokens, ab is token 256 + k */
    for (uint64_t k = 0; k < mer->val.v.arr.n; k++) {
        const gguf_str *m = &mer->val.v.arr.items[k].v.str;
        const char *sp = memchr(m->s, ' ', m->n);
        REQUIREF(sp && sp > m->s && sp < m->s + m->n - 1, "merge %llu has no space", (unsigned long long)k);
        size_t la = (size_t)(sp - m->s), lb = m->n - la - 1;
        const gguf_str *t = &tk[256 + k].v.str;
        CHECKF(t->n == la + lb && !memcmp(t->s, m->s, la) && !memcmp(t->s + la, sp + 1, lb),
               "token %llu is not merge %llu", (unsigned long long)(256 + k), (unsigned long long)k);
        int fa = 0, fb = 0;
        for (uint64_t j = 0; j < 256 + k; j++) {
            if (tk[j].v.str.n == la && !memcmp(tk[j].v.str.s, m->s, la)) fa = 1;
            if (tk[j].v.str.n == lb && !memcmp(tk[j].v.str.s, sp + 1, lb)) fb = 1;
        }
        CHECKF(fa && fb, "merge %llu: a part is not an earlier token", (unsigned long long)k);
    }
    for (int i = 0; i < 512; i++)
        for (int j = i + 1; j < 512; j++)
            CHECKF(tk[i].v.str.n != tk[j].v.str.n || memcmp(tk[i].v.str.s, tk[j].v.str.s, tk[i].v.str.n),
                   "tokens %d and %d are equal", i, j);
    gguf_close(f);
}

TEST(synth_vocab_padding)
{
    /* a vocabulary larger than the text's merges: control tokens after the
     * learned ones, then [PAD<id>] tokens of type UNUSED */
    const char *p = synth("pad.gguf", "--vocab 20000 --layers 1 --experts 2 --experts-used 1");
    gguf_file *f = open_or_die(p);
    const gguf_kv *tok = gguf_find_kv(f, "tokenizer.ggml.tokens");
    const gguf_kv *typ = gguf_find_kv(f, "tokenizer.ggml.token_type");
    const gguf_kv *mer = gguf_find_kv(f, "tokenizer.ggml.merges");
    REQUIRE(tok && typ && mer && tok->val.v.arr.n == 20000);
    uint64_t nm = mer->val.v.arr.n;
    CHECKF(nm > 300 && nm < 20000 - 259, "%llu merges", (unsigned long long)nm);
    uint64_t eot = 256 + nm;
    CHECK(u64_of(f, "tokenizer.ggml.bos_token_id") == eot);
    CHECK(u64_of(f, "tokenizer.ggml.eos_token_id") == eot + 2);
    const gguf_str *s = &tok->val.v.arr.items[eot].v.str;
    CHECK(s->n == 13 && !memcmp(s->s, "<|endoftext|>", 13));
    char want[32];
    snprintf(want, sizeof want, "[PAD%llu]", (unsigned long long)(eot + 3));
    s = &tok->val.v.arr.items[eot + 3].v.str;
    CHECK(s->n == strlen(want) && !memcmp(s->s, want, s->n));
    CHECK(gguf_arr_i64(&typ->val, eot + 3) == 5 && gguf_arr_i64(&typ->val, 19999) == 5);
    CHECK(gguf_arr_i64(&typ->val, eot + 2) == 3);
    check_layout(f, 1, 256, 256, 128, 64, 256, 2, 20000);
    gguf_close(f);
}

TEST(synth_deterministic)
{
    synth("s1.gguf", "-t 1 --recipe asym-2bitexp --mode direct");
    synth("s2.gguf", "-t 3 --recipe asym-2bitexp --mode direct");
    const char *b = synth("s3.gguf", "-t 2 --seed 7 --recipe asym-2bitexp --mode direct");
    const char *f1 = synth("f1.gguf", "-t 1");
    char f1p[4096];
    snprintf(f1p, sizeof f1p, "%s", f1);
    const char *f2 = synth("f2.gguf", "-t 4");
    size_t n1, n2, n3, m1, m2;
    uint8_t *x1 = test_read_file(test_tmp("s1.gguf"), &n1);
    uint8_t *x2 = test_read_file(test_tmp("s2.gguf"), &n2);
    uint8_t *x3 = test_read_file(b, &n3);
    uint8_t *y1 = test_read_file(f1p, &m1);
    uint8_t *y2 = test_read_file(f2, &m2);
    REQUIRE(x1 && x2 && x3 && y1 && y2);
    CHECK(n1 == n2 && !memcmp(x1, x2, n1));
    CHECK(m1 == m2 && !memcmp(y1, y2, m1));
    /* another seed: same layout and size, different weights */
    CHECK(n3 == n1 && memcmp(x1, x3, n1) != 0);
    free(x1); free(x2); free(x3); free(y1); free(y2);
}

TEST(synth_recipe_asym_types)
{
    const char *p = synth("asym.gguf", "--recipe asym-2bitexp --mode direct");
    gguf_file *f = open_or_die(p);
    check_layout(f, 2, 256, 256, 128, 64, 256, 8, 512);
    CHECK(u64_of(f, "general.file_type") == 26);
    CHECK(u64_of(f, "general.quantization_version") == 2);
    static const struct { const char *suffix; int type; } want[] = {
        { "attn_norm.weight", MOEQ_TYPE_F32 }, { "attn_q.weight", MOEQ_TYPE_Q4_K },
        { "attn_k.weight", MOEQ_TYPE_Q4_K }, { "attn_v.weight", MOEQ_TYPE_Q4_K },
        { "attn_output.weight", MOEQ_TYPE_Q4_K }, { "attn_q_norm.weight", MOEQ_TYPE_F32 },
        { "attn_k_norm.weight", MOEQ_TYPE_F32 }, { "ffn_norm.weight", MOEQ_TYPE_F32 },
        { "ffn_gate_inp.weight", MOEQ_TYPE_F32 }, { "ffn_gate_exps.weight", MOEQ_TYPE_IQ2_S },
        { "ffn_up_exps.weight", MOEQ_TYPE_IQ2_S }, { "ffn_down_exps.weight", MOEQ_TYPE_IQ3_S },
        { "token_embd.weight", MOEQ_TYPE_Q6_K }, { "output.weight", MOEQ_TYPE_Q6_K },
        { "output_norm.weight", MOEQ_TYPE_F32 },
    };
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const gguf_tensor *t = &f->tensors[i];
        int found = 0;
        for (size_t k = 0; k < sizeof want / sizeof want[0]; k++) {
            size_t ls = strlen(want[k].suffix);
            if (t->name.n < ls || memcmp(t->name.s + t->name.n - ls, want[k].suffix, ls)) continue;
            if (t->name.n > ls && t->name.s[t->name.n - ls - 1] != '.') continue;
            found = 1;
            CHECKF((int)t->type == want[k].type, "%.*s is %s", (int)t->name.n, t->name.s,
                   moeq_type_name((int)t->type));
        }
        CHECKF(found, "unexpected tensor %.*s", (int)t->name.n, t->name.s);
    }
    gguf_close(f);
    /* moeq info reads it and sees the recipe's groups */
    char *o = NULL;
    CHECK(test_run(&o, "%s info %s", test_moeq_bin(), p) == 0);
    CHECKF(o && strstr(o, "IQ2_S") && strstr(o, "IQ3_S") && strstr(o, "Q6_K"), "info: %s", o ? o : "");
    free(o);
    /* a later flag changes one group of the recipe */
    p = synth("asym2.gguf", "--recipe asym-2bitexp --type-attn-v Q8_0 --type-exp-down IQ4_XS --mode direct");
    f = open_or_die(p);
    CHECK(tensor(f, "blk.1.attn_v.weight")->type == MOEQ_TYPE_Q8_0);
    CHECK(tensor(f, "blk.1.attn_k.weight")->type == MOEQ_TYPE_Q4_K);
    CHECK(tensor(f, "blk.0.ffn_down_exps.weight")->type == MOEQ_TYPE_IQ4_XS);
    CHECK(tensor(f, "blk.0.ffn_up_exps.weight")->type == MOEQ_TYPE_IQ2_S);
    gguf_close(f);
}

/* A quantize mix as recipe: every tensor gets the type, and with the
 * quantize path the very bytes, that moeq quantize gives the F32 model of
 * the same seed (8 layers, so Q4_K_M's per-layer rules pick both Q4_K and
 * Q6_K for ffn_down_exps). */
TEST(synth_recipe_mix_matches_quantize)
{
    char fp[4096], qp[4096], mp[4096];
    snprintf(fp, sizeof fp, "%s", synth("mix_f32.gguf", "--layers 8"));
    snprintf(mp, sizeof mp, "%s", synth("mix_q4km.gguf", "--layers 8 --recipe Q4_K_M --mode quantize"));
    snprintf(qp, sizeof qp, "%s", test_tmp("mix_quant.gguf"));
    char *o = NULL;
    int rc = test_run(&o, "%s quantize %s %s Q4_K_M", test_moeq_bin(), fp, qp);
    REQUIREF(rc == 0, "quantize: %s", o ? o : "");
    free(o);
    gguf_file *fm = open_or_die(mp), *fq = open_or_die(qp);
    CHECK(u64_of(fm, "general.file_type") == 15);
    REQUIRE(fm->n_tensors == fq->n_tensors);
    int down_q4 = 0, down_q6 = 0;
    for (uint64_t i = 0; i < fm->n_tensors; i++) {
        const gguf_tensor *a = &fm->tensors[i];
        char nm[128];
        snprintf(nm, sizeof nm, "%.*s", (int)a->name.n, a->name.s);
        const gguf_tensor *b = tensor(fq, nm);
        CHECKF(a->type == b->type, "%.*s: synth %s, quantize %s", (int)a->name.n, a->name.s,
               moeq_type_name((int)a->type), moeq_type_name((int)b->type));
        if (a->type == b->type && a->nbytes == b->nbytes)
            CHECKF(!memcmp(a->data, b->data, a->nbytes), "%.*s: bytes differ", (int)a->name.n, a->name.s);
        if (strstr(nm, "ffn_down_exps")) {
            down_q4 += a->type == MOEQ_TYPE_Q4_K;
            down_q6 += a->type == MOEQ_TYPE_Q6_K;
        }
    }
    CHECKF(down_q4 > 0 && down_q6 > 0, "ffn_down_exps: %d Q4_K, %d Q6_K", down_q4, down_q6);
    gguf_close(fm);
    gguf_close(fq);
    /* a later --type flag sets its whole group */
    gguf_file *f = open_or_die(synth("mix2.gguf", "--layers 8 --recipe Q4_K_M --type-exp-down Q5_K --mode direct"));
    for (int l = 0; l < 8; l++) {
        char nm[64];
        snprintf(nm, sizeof nm, "blk.%d.ffn_down_exps.weight", l);
        CHECK(tensor(f, nm)->type == MOEQ_TYPE_Q5_K);
    }
    gguf_close(f);
}

TEST(synth_fallback_types)
{
    /* n_embd 64: K/i-quant blocks do not divide it; 48 is not even a
     * multiple of 32, so the 32-blocks fall back to F16 */
    const char *p = synth("fb.gguf", "--n-embd 64 --head-dim 16 --ff-exp 256 --type Q4_K --type-experts IQ2_S --type-embd IQ4_XS --mode direct");
    gguf_file *f = open_or_die(p);
    CHECK(tensor(f, "blk.0.attn_q.weight")->type == MOEQ_TYPE_Q8_0);
    CHECK(tensor(f, "blk.0.attn_output.weight")->type == MOEQ_TYPE_Q8_0); /* row 4*16 */
    CHECK(tensor(f, "blk.0.ffn_gate_exps.weight")->type == MOEQ_TYPE_IQ4_NL);
    CHECK(tensor(f, "blk.0.ffn_down_exps.weight")->type == MOEQ_TYPE_IQ2_S); /* row 256 */
    CHECK(tensor(f, "token_embd.weight")->type == MOEQ_TYPE_IQ4_NL);
    gguf_close(f);
    p = synth("fb2.gguf", "--n-embd 48 --head-dim 8 --heads 6 --kv-heads 2 --type Q8_0 --mode direct");
    f = open_or_die(p);
    CHECK(tensor(f, "blk.0.attn_q.weight")->type == MOEQ_TYPE_F16);
    CHECK(tensor(f, "blk.0.ffn_down_exps.weight")->type == MOEQ_TYPE_Q8_0);
    gguf_close(f);
}

TEST(synth_preset_qwen3_30b_a3b_metadata)
{
    /* the preset's shape, cut to one layer, two experts and a small
     * vocabulary so the file stays a few MB */
    const char *p = synth("q3.gguf", "--preset qwen3-30b-a3b --layers 1 --experts 2 --experts-used 2 --vocab 1024 --recipe asym-2bitexp --mode direct");
    gguf_file *f = open_or_die(p);
    check_layout(f, 1, 2048, 4096, 512, 128, 768, 2, 1024);
    CHECK(u64_of(f, "qwen3moe.context_length") == 262144);
    CHECK(u64_of(f, "qwen3moe.feed_forward_length") == 6144);
    CHECK(u64_of(f, "qwen3moe.attention.head_count") == 32);
    CHECK(u64_of(f, "qwen3moe.attention.head_count_kv") == 4);
    CHECK(u64_of(f, "qwen3moe.attention.key_length") == 128);
    CHECK(u64_of(f, "qwen3moe.expert_used_count") == 2);
    double d;
    CHECK(gguf_get_f64(f, "qwen3moe.rope.freq_base", &d) == 0 && d == 1e7);
    CHECK(tensor(f, "blk.0.ffn_down_exps.weight")->type == MOEQ_TYPE_IQ3_S);
    gguf_close(f);
}

/* ------------------------------------------------------ weight structure */

static double col_rms_ratio(const float *w, uint64_t ne0, uint64_t rows)
{
    /* max over columns of the column rms, divided by the median */
    double *c = calloc(ne0, sizeof *c);
    for (uint64_t r = 0; r < rows; r++)
        for (uint64_t i = 0; i < ne0; i++) c[i] += (double)w[r * ne0 + i] * w[r * ne0 + i];
    double mx = 0;
    for (uint64_t i = 0; i < ne0; i++) { c[i] = sqrt(c[i] / (double)rows); if (c[i] > mx) mx = c[i]; }
    /* median by counting */
    double med = 0;
    for (uint64_t i = 0; i < ne0; i++) {
        uint64_t below = 0;
        for (uint64_t j = 0; j < ne0; j++) below += c[j] < c[i];
        if (below == ne0 / 2) { med = c[i]; break; }
    }
    free(c);
    return med > 0 ? mx / med : 0;
}

TEST(synth_weight_structure)
{
    const char *p = synth("ws.gguf", "--experts 16 --experts-used 2");
    gguf_file *f = open_or_die(p);
    uint64_t n;
    /* norms near 1 */
    float *nw = tensor_f32(f, "blk.0.attn_norm.weight", &n);
    double mean = 0;
    for (uint64_t i = 0; i < n; i++) { mean += nw[i]; CHECK(nw[i] > 0.2f && nw[i] < 2.0f); }
    mean /= (double)n;
    CHECKF(mean > 0.85 && mean < 1.15, "attn_norm mean %.3f", mean);
    free(nw);

    /* outlier residual channels show in the embeddings and in the columns
     * of the matrices that read the residual stream */
    float *emb = tensor_f32(f, "token_embd.weight", &n);
    double re = col_rms_ratio(emb, 256, 512);
    CHECKF(re > 2.0, "token_embd column rms max/median %.2f", re);
    float *wq = tensor_f32(f, "blk.0.attn_q.weight", &n);
    double rq = col_rms_ratio(wq, 256, 256);
    CHECKF(rq > 2.5, "attn_q column rms max/median %.2f", rq);
    free(wq);

    /* matrices scaled by 1/sqrt(fan_in): a unit input keeps its size */
    float *wg = tensor_f32(f, "blk.0.ffn_gate_exps.weight", &n);
    double ss = 0;
    for (uint64_t i = 0; i < n; i++) ss += (double)wg[i] * wg[i];
    double rms = sqrt(ss / (double)n) * sqrt(256.0);
    CHECKF(rms > 0.7 && rms < 1.4, "gate_exps rms*sqrt(fan_in) %.3f", rms);
    free(wg);

    /* hot experts: route every token's normalized embedding through each
     * layer's router; the busiest expert gets well over its fair share */
    for (int l = 0; l < 2; l++) {
        char nm[64];
        snprintf(nm, sizeof nm, "blk.%d.ffn_gate_inp.weight", l);
        float *rw = tensor_f32(f, nm, &n);
        snprintf(nm, sizeof nm, "blk.%d.ffn_norm.weight", l);
        float *fn = tensor_f32(f, nm, &n);
        int count[16] = { 0 };
        for (int t = 0; t < 509; t++) {
            const float *x = emb + (size_t)t * 256;
            double s = 0;
            for (int i = 0; i < 256; i++) s += (double)x[i] * x[i];
            float inv = (float)(1.0 / sqrt(s / 256 + 1e-6));
            float lg[16];
            for (int e = 0; e < 16; e++) {
                double a = 0;
                for (int i = 0; i < 256; i++) a += (double)rw[e * 256 + i] * x[i] * inv * fn[i];
                lg[e] = (float)a;
            }
            for (int k = 0; k < 2; k++) {
                int best = -1;
                for (int e = 0; e < 16; e++) if (lg[e] > -1e30f && (best < 0 || lg[e] > lg[best])) best = e;
                count[best]++;
                lg[best] = -1e31f;
            }
        }
        int mx = 0;
        for (int e = 0; e < 16; e++) if (count[e] > mx) mx = count[e];
        double fair = 509.0 * 2 / 16;
        CHECKF(mx > 2.0 * fair, "layer %d: busiest expert %d of %.0f fair", l, mx, fair);
        free(rw); free(fn);
    }
    free(emb);
    gguf_close(f);
}

/* Directly synthesized blocks of every quantized type: the dequantized
 * tensor has the float model's overall scale and column profile. */
TEST(synth_direct_blocks_follow_profile)
{
    const char *ref = synth("ref.gguf", "");
    char refp[4096];
    snprintf(refp, sizeof refp, "%s", ref);
    gguf_file *fr = open_or_die(refp);
    static const char *const types[] = {
        "Q4_0", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ2_XXS", "IQ2_XS",
        "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ4_NL", "IQ4_XS",
    };
    static const char *const names[] = {
        "token_embd.weight", "blk.0.attn_q.weight", "blk.1.attn_output.weight",
        "blk.0.ffn_up_exps.weight", "blk.1.ffn_down_exps.weight",
    };
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        char args[128], fn[64];
        snprintf(args, sizeof args, "--mode direct --type %s", types[ti]);
        snprintf(fn, sizeof fn, "d_%s.gguf", types[ti]);
        gguf_file *fq = open_or_die(synth(fn, args));
        for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
            const gguf_tensor *tq = tensor(fq, names[k]);
            CHECK((int)tq->type == moeq_type_from_name(types[ti]));
            uint64_t n, ne0 = tq->ne[0], rows;
            float *a = tensor_f32(fr, names[k], &n);
            float *b = tensor_f32(fq, names[k], &n);
            rows = n / ne0;
            double sa = 0, sb = 0;
            for (uint64_t i = 0; i < n; i++) {
                CHECK(isfinite(b[i]));
                sa += (double)a[i] * a[i];
                sb += (double)b[i] * b[i];
            }
            double ratio = sqrt(sb / sa);
            CHECKF(ratio > 0.75 && ratio < 1.33, "%s %s: rms ratio %.3f", types[ti], names[k], ratio);
            /* column profiles: rms per group of 32 columns (the finest
             * scale a direct block carries), correlated with the float
             * model's */
            uint64_t ng = ne0 / 32;
            double *ca = calloc(ng, sizeof *ca), *cb = calloc(ng, sizeof *cb);
            for (uint64_t r = 0; r < rows; r++)
                for (uint64_t i = 0; i < ne0; i++) {
                    ca[i / 32] += (double)a[r * ne0 + i] * a[r * ne0 + i];
                    cb[i / 32] += (double)b[r * ne0 + i] * b[r * ne0 + i];
                }
            double ma = 0, mb = 0, xy = 0, xx = 0, yy = 0;
            for (uint64_t i = 0; i < ng; i++) { ca[i] = sqrt(ca[i]); cb[i] = sqrt(cb[i]); ma += ca[i]; mb += cb[i]; }
            ma /= (double)ng; mb /= (double)ng;
            for (uint64_t i = 0; i < ng; i++) {
                xy += (ca[i] - ma) * (cb[i] - mb);
                xx += (ca[i] - ma) * (ca[i] - ma);
                yy += (cb[i] - mb) * (cb[i] - mb);
            }
            double corr = xy / sqrt(xx * yy + 1e-30);
            CHECKF(corr > 0.8, "%s %s: column profile correlation %.3f", types[ti], names[k], corr);
            free(ca); free(cb); free(a); free(b);
        }
        gguf_close(fq);
    }
    gguf_close(fr);
}

/* Where a type has a quantizer, --mode quantize writes exactly the
 * quantization of the F32 model's weights of the same seed. */
TEST(synth_quantize_path_matches_f32)
{
    static const int types[] = {
        MOEQ_TYPE_Q4_0, MOEQ_TYPE_Q8_0, MOEQ_TYPE_Q2_K, MOEQ_TYPE_Q3_K, MOEQ_TYPE_Q4_K,
        MOEQ_TYPE_Q5_K, MOEQ_TYPE_Q6_K, MOEQ_TYPE_IQ2_XXS, MOEQ_TYPE_IQ2_XS, MOEQ_TYPE_IQ2_S,
        MOEQ_TYPE_IQ3_XXS, MOEQ_TYPE_IQ3_S, MOEQ_TYPE_IQ4_NL, MOEQ_TYPE_IQ4_XS,
    };
    int tested = 0;
    gguf_file *fr = NULL;
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        const struct moeq_type_traits *tr = moeq_type_traits(types[ti]);
        if (!tr->quantize) continue;
        if (!fr) {
            const char *ref = synth("qref.gguf", "--layers 1");
            char refp[4096];
            snprintf(refp, sizeof refp, "%s", ref);
            fr = open_or_die(refp);
        }
        char args[128], fn[64];
        snprintf(args, sizeof args, "--layers 1 --mode quantize --type-attn-q %s", tr->name);
        snprintf(fn, sizeof fn, "q_%s.gguf", tr->name);
        gguf_file *fq = open_or_die(synth(fn, args));
        const gguf_tensor *tq = tensor(fq, "blk.0.attn_q.weight");
        const gguf_tensor *tf = tensor(fr, "blk.0.attn_q.weight");
        REQUIRE((int)tq->type == types[ti]);
        uint8_t *buf = malloc(tq->nbytes);
        REQUIRE(buf);
        tr->quantize(tf->data, buf, (int64_t)tf->ne[1], (int64_t)tf->ne[0], NULL, NULL);
        CHECKF(!memcmp(buf, tq->data, tq->nbytes), "%s: quantize path differs from quantizing the F32 model", tr->name);
        free(buf);
        gguf_close(fq);
        tested++;
    }
    if (fr) gguf_close(fr);
    if (!tested) SKIP("no type has a quantizer yet");
}

/* Direct mode rounds the linear types' float weights: the result is a
 * quantization of the F32 model, with the error each format allows. This
 * also proves every bit of the block packing (a misplaced bit is a large
 * error). */
TEST(synth_direct_round_matches_f32)
{
    const char *ref = synth("rref.gguf", "--layers 1");
    char refp[4096];
    snprintf(refp, sizeof refp, "%s", ref);
    gguf_file *fr = open_or_die(refp);
    static const struct { const char *type; double max_rel; } types[] = {
        /* limits about 1.25x the errors measured when this was written */
        { "Q8_0", 0.01 }, { "Q6_K", 0.03 }, { "Q5_K", 0.06 }, { "Q4_K", 0.12 },
        { "Q4_0", 0.15 }, { "IQ4_NL", 0.125 }, { "IQ4_XS", 0.125 }, { "Q3_K", 0.23 },
        { "Q2_K", 0.45 },
    };
    static const char *const names[] = {
        "token_embd.weight", "blk.0.attn_q.weight", "blk.0.attn_output.weight",
        "blk.0.ffn_gate_exps.weight", "blk.0.ffn_down_exps.weight", "output.weight",
    };
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        char args[128], fn[64];
        snprintf(args, sizeof args, "--layers 1 --mode direct --type %s", types[ti].type);
        snprintf(fn, sizeof fn, "r_%s.gguf", types[ti].type);
        gguf_file *fq = open_or_die(synth(fn, args));
        for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
            uint64_t n;
            float *a = tensor_f32(fr, names[k], &n);
            float *b = tensor_f32(fq, names[k], &n);
            double se = 0, sa = 0;
            for (uint64_t i = 0; i < n; i++) {
                se += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
                sa += (double)a[i] * a[i];
            }
            double rel = sqrt(se / sa);
            CHECKF(rel < types[ti].max_rel, "%s %s: relative rms error %.4f (limit %.2f)",
                   types[ti].type, names[k], rel, types[ti].max_rel);
            free(a); free(b);
        }
        gguf_close(fq);
    }
    gguf_close(fr);
}

/* ------------------------------------------------------ through the engine */

struct expert_use { long rows[2][16]; };

static void count_experts(void *ud, const char *tensor, int expert, const float *x, int n_rows, int n_cols)
{
    (void)x; (void)n_cols;
    struct expert_use *u = ud;
    int layer = -1;
    if (expert < 0 || expert >= 16 || !strstr(tensor, "ffn_gate_exps")) return;
    if (sscanf(tensor, "blk.%d.", &layer) != 1 || layer < 0 || layer > 1) return;
    u->rows[layer][expert] += n_rows;
}

/* Our loader, tokenizer and engine take a synthesized model: the text
 * tokenizes into merged tokens and back, the control tokens and template
 * work, logits are finite and of a trained model's spread, and routing
 * favours a few experts. */
static void check_engine(const char *path, int check_routing)
{
    char err[512] = "";
    gguf_file *f = open_or_die(path);
    moeq_tokenizer *tk = moeq_tokenizer_load(f, err, sizeof err);
    REQUIREF(tk, "tokenizer: %s", err);
    char tmpl[1024];
    enum moeq_chat_kind kind;
    CHECK(gguf_get_str(f, "tokenizer.chat_template", tmpl, sizeof tmpl) == 0 &&
          moeq_chat_detect(tmpl, &kind) == 0 && kind == MOEQ_CHAT_CHATML);
    gguf_close(f);
    const char *text = "The river town wakes before the sun. Bakers open their doors at four, "
                       "and the smell of warm bread drifts down the narrow streets toward the water. "
                       "Children run between the stalls while their parents compare prices.";
    int32_t tok[256];
    int n = moeq_tokenizer_encode(tk, text, strlen(text), 0, tok, 256);
    REQUIRE(n > 0 && n <= 256);
    /* 253 merges in the tiny vocabulary: about 2.3 bytes a token */
    CHECKF(n < (int)strlen(text) / 2, "%d tokens for %zu bytes: merges not used", n, strlen(text));
    char back[1024];
    int len = 0;
    for (int i = 0; i < n; i++) {
        int k = moeq_tokenizer_piece(tk, tok[i], back + len, (int)sizeof back - len);
        REQUIRE(k >= 0);
        len += k;
    }
    CHECK(len == (int)strlen(text) && !memcmp(back, text, (size_t)len));
    int32_t sp[4];
    CHECK(moeq_tokenizer_encode(tk, "<|im_end|>", 10, 1, sp, 4) == 1 && moeq_tokenizer_is_eog(tk, sp[0]));
    struct moeq_token_specials spc;
    moeq_tokenizer_specials(tk, &spc);
    CHECK(spc.eos == sp[0] && spc.add_bos == 0);
    moeq_tokenizer_free(tk);

    struct moeq_engine_params ep = { .model_path = path, .n_threads = 2, .n_ctx = 512, .n_seq = 1,
                                     .type_k = MOEQ_KV_F16, .type_v = MOEQ_KV_F16, .n_batch = 64 };
    moeq_engine *e = moeq_engine_open(&ep, err, sizeof err);
    REQUIREF(e, "open %s: %s", path, err);

    struct expert_use use;
    memset(&use, 0, sizeof use);
    moeq_engine_set_act_hook(e, count_experts, &use);
    moeq_session *s = moeq_session_new(e, err, sizeof err);
    REQUIREF(s, "%s", err);
    int nv = moeq_engine_info(e)->n_vocab;
    float *lg = malloc((size_t)n * (size_t)nv * sizeof *lg);
    REQUIRE(lg);
    REQUIREF(moeq_session_eval(s, tok, n, lg, err, sizeof err) == 0, "%s", err);
    for (int t = 0; t < n; t += 7) {
        double m = 0, v = 0;
        for (int i = 0; i < nv; i++) { CHECK(isfinite(lg[(size_t)t * nv + i])); m += lg[(size_t)t * nv + i]; }
        m /= nv;
        for (int i = 0; i < nv; i++) v += (lg[(size_t)t * nv + i] - m) * (lg[(size_t)t * nv + i] - m);
        double sd = sqrt(v / nv);
        CHECKF(sd > 0.5 && sd < 20, "%s: position %d: logit std %.2f", path, t, sd);
    }
    if (check_routing) {
        for (int l = 0; l < 2; l++) {
            long mx = 0, tot = 0;
            for (int x = 0; x < 16; x++) { tot += use.rows[l][x]; if (use.rows[l][x] > mx) mx = use.rows[l][x]; }
            CHECKF(tot == 2L * n, "layer %d: %ld expert rows for %d tokens", l, tot, n);
            CHECKF(mx > 2 * tot / 16, "layer %d: busiest expert %ld of %ld rows", l, mx, tot);
        }
    }
    free(lg);
    moeq_session_free(s);
    moeq_engine_close(e);
}

TEST(synth_runs_in_engine)
{
    char f32[4096];
    snprintf(f32, sizeof f32, "%s", synth("eng.gguf", "--experts 16"));
    check_engine(f32, 1);
    /* the recipe, quantized (direct) */
    check_engine(synth("eng_asym.gguf", "--experts 16 --recipe asym-2bitexp --mode direct"), 1);
}

/* ------------------------------------------------------------ the CLI */

/* tokenizer.chat_template of a synth model: chatml by default, a built-in
 * by name, or a file's bytes; a template moeq cannot render is refused. */
static void check_template_key(const char *path, const char *want)
{
    char err[512];
    gguf_file *g = gguf_open(path, err, sizeof err);
    REQUIRE(g);
    static char got[65536];
    CHECK(gguf_get_str(g, "tokenizer.chat_template", got, sizeof got) == 0);
    CHECKF(!strcmp(got, want), "%s: tokenizer.chat_template is '%.60s...'", path, got);
    gguf_close(g);
}

TEST(synth_chat_template)
{
    check_template_key(synth("t_default.gguf", ""), moeq_synth_template_named("chatml"));
    int n;
    const struct moeq_synth_template *t = moeq_synth_templates(&n);
    for (int i = 0; i < n; i++) {
        char args[128], name[64];
        snprintf(args, sizeof args, "--chat-template %s", t[i].name);
        snprintf(name, sizeof name, "t_%d.gguf", i);
        check_template_key(synth(name, args), t[i].text);
    }
    /* a file, e.g. a model's official template */
    const char *file = test_tmp("mine.jinja");
    static const char mine[] = "{%- for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}";
    FILE *f = fopen(file, "wb");
    REQUIRE(f && fputs(mine, f) >= 0 && fclose(f) == 0);
    char args[4200];
    snprintf(args, sizeof args, "--chat-template '%s'", file);
    check_template_key(synth("t_file.gguf", args), mine);
    /* the model's template is the one the engine renders with */
    char err[512];
    struct moeq_engine_params ep = { .model_path = test_tmp("t_file.gguf"), .n_ctx = 64, .n_threads = 1 };
    moeq_engine *e = moeq_engine_open(&ep, err, sizeof err);
    REQUIRE(e);
    struct moeq_chat_msg m[2] = { { "system", "S" }, { "user", "hi" } };
    char *r = moeq_chat_render(e, m, 2, 0, err, sizeof err);
    CHECKF(r && !strcmp(r, "[system]S[user]hi"), "rendered '%s'", r ? r : err);
    free(r);
    moeq_engine_close(e);
    /* not renderable: refused with the line and the reason, nothing written */
    f = fopen(file, "wb");
    REQUIRE(f && fputs("{% include 'x' %}", f) >= 0 && fclose(f) == 0);
    char *o = NULL;
    const char *out = test_tmp("t_bad.gguf");
    CHECK(test_run(&o, "%s synth -o %s --chat-template '%s'", test_moeq_bin(), out, file) == 2);
    CHECKF(o && strstr(o, "line 1") && strstr(o, "include"), "message: %s", o ? o : "");
    free(o);
    CHECK(access(out, F_OK) != 0);
}

TEST(synth_bad_flags_exit_2)
{
    static const char *const bad[] = {
        "",                                   /* no -o */
        "-o %s --bogus",
        "-o %s --preset huge",
        "-o %s --recipe q9",
        "-o %s --type Q9_K",
        "-o %s --type Q8_K",
        "-o %s --type-norm Q4_K",
        "-o %s --type-router IQ2_S",
        "-o %s --layers 0",
        "-o %s --layers x",
        "-o %s --heads 6 --kv-heads 4",
        "-o %s --experts 4 --experts-used 5",
        "-o %s --vocab 100",
        "-o %s --head-dim 7",
        "-o %s --mode fast",
        "-o %s --seed -1",
        "-o %s -t 0",
        "-o %s --layers",
        "-o %s stray",
        "-o %s --chat-template no-such-template",
        "-o %s --chat-template /nonexistent/t.jinja",
    };
    const char *out = test_tmp("bad.gguf");
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char args[256];
        snprintf(args, sizeof args, bad[i], out);
        char *o = NULL;
        int rc = test_run(&o, "%s synth %s", test_moeq_bin(), args);
        CHECKF(rc == 2, "'synth %s' exited %d: %s", args, rc, o ? o : "");
        CHECKF(o && strstr(o, "moeq: synth: "), "'synth %s': no usage message", args);
        free(o);
        FILE *f = fopen(out, "rb");
        CHECKF(!f, "'synth %s' wrote a file", args);
        if (f) { fclose(f); remove(out); }
    }
    char *o = NULL;
    CHECK(test_run(&o, "%s synth --help", test_moeq_bin()) == 0);
    CHECK(o && strstr(o, "--recipe") && strstr(o, "direct"));
    free(o);
    /* an unwritable folder is an error, not a usage error */
    CHECK(test_run(NULL, "%s synth -o /nonexistent/dir/x.gguf", test_moeq_bin()) == 1);
}
