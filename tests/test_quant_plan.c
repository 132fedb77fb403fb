/* Per-tensor type planning: llama.cpp's mix rules (with the reference's
 * MoE bumps), --tensor-type precedence, overrides and fallbacks. */
#include "test.h"
#include "quant/quant_plan.h"
#include "quant/quants.h"

#include <stdio.h>

/* A qwen3moe tensor list in file order, tiny-a's shape (4 layers,
 * n_embd 256, 8 heads / 2 KV heads of 32, 32 experts of 256). */
struct tlist { struct moeq_plan_tensor t[64]; char names[64][64]; int n; };

static void add(struct tlist *l, const char *name, int type, uint32_t nd, uint64_t a, uint64_t b, uint64_t c)
{
    snprintf(l->names[l->n], 64, "%s", name);
    struct moeq_plan_tensor *t = &l->t[l->n];
    t->name = l->names[l->n];
    t->src_type = type; t->n_dims = nd;
    t->ne[0] = a; t->ne[1] = b; t->ne[2] = c; t->ne[3] = 1;
    l->n++;
}

static void build(struct tlist *l, int src)
{
    l->n = 0;
    add(l, "token_embd.weight", src, 2, 256, 8192, 1);
    for (int i = 0; i < 4; i++) {
        char n[64];
#define T(suffix, nd, a, b, c, ty) snprintf(n, sizeof n, "blk.%d." suffix, i); add(l, n, ty, nd, a, b, c)
        T("attn_norm.weight", 1, 256, 1, 1, MOEQ_TYPE_F32);
        T("attn_q.weight", 2, 256, 256, 1, src);
        T("attn_k.weight", 2, 256, 64, 1, src);
        T("attn_v.weight", 2, 256, 64, 1, src);
        T("attn_output.weight", 2, 256, 256, 1, src);
        T("attn_q_norm.weight", 1, 32, 1, 1, MOEQ_TYPE_F32);
        T("attn_k_norm.weight", 1, 32, 1, 1, MOEQ_TYPE_F32);
        T("ffn_norm.weight", 1, 256, 1, 1, MOEQ_TYPE_F32);
        T("ffn_gate_inp.weight", 2, 256, 32, 1, MOEQ_TYPE_F32);
        T("ffn_gate_exps.weight", 3, 256, 256, 32, src);
        T("ffn_up_exps.weight", 3, 256, 256, 32, src);
        T("ffn_down_exps.weight", 3, 256, 256, 32, src);
#undef T
    }
    add(l, "output_norm.weight", MOEQ_TYPE_F32, 1, 256, 1, 1);
    add(l, "output.weight", src, 2, 256, 8192, 1);
}

static const struct moeq_model_shape tiny_shape = { 4, 8, 2, 32, 1 };

static int type_of(const struct tlist *l, const struct moeq_plan_entry *e, const char *name)
{
    for (int i = 0; i < l->n; i++)
        if (strcmp(l->t[i].name, name) == 0) return e[i].type;
    return -1;
}

TEST(plan_q4_k_m_matches_reference_rules)
{
    struct tlist l;
    build(&l, MOEQ_TYPE_Q8_0);
    struct moeq_plan_opts o = { moeq_mix_find("Q4_K_M"), 0, -1, -1, 1, NULL, 0, NULL };
    REQUIRE(o.mix != NULL);
    struct moeq_plan_entry e[64];
    char err[256];
    REQUIRE(moeq_plan(&o, &tiny_shape, l.t, l.n, e, err, sizeof err) == 0);
    CHECK(type_of(&l, e, "token_embd.weight") == MOEQ_TYPE_Q4_K);
    CHECK(type_of(&l, e, "output.weight") == MOEQ_TYPE_Q6_K);
    CHECK(type_of(&l, e, "blk.0.attn_q.weight") == MOEQ_TYPE_Q4_K);
    CHECK(type_of(&l, e, "blk.0.attn_k.weight") == MOEQ_TYPE_Q8_0);
    CHECK(type_of(&l, e, "blk.3.attn_v.weight") == MOEQ_TYPE_Q8_0);
    CHECK(type_of(&l, e, "blk.1.attn_output.weight") == MOEQ_TYPE_Q5_K);
    CHECK(type_of(&l, e, "blk.2.ffn_gate_exps.weight") == MOEQ_TYPE_Q4_K);
    CHECK(type_of(&l, e, "blk.0.ffn_down_exps.weight") == MOEQ_TYPE_Q4_K);
    CHECK(type_of(&l, e, "blk.1.ffn_down_exps.weight") == MOEQ_TYPE_Q4_K);
    CHECK(type_of(&l, e, "blk.2.ffn_down_exps.weight") == MOEQ_TYPE_Q6_K);
    CHECK(type_of(&l, e, "blk.3.ffn_down_exps.weight") == MOEQ_TYPE_Q6_K);
    CHECK(type_of(&l, e, "blk.0.ffn_gate_inp.weight") == MOEQ_TYPE_F32);
    CHECK(type_of(&l, e, "blk.0.attn_norm.weight") == MOEQ_TYPE_F32);
    /* attn_k stays Q8_0 from a Q8_0 source: copied, not requantized */
    for (int i = 0; i < l.n; i++)
        if (strstr(l.t[i].name, "attn_k.weight")) CHECK(!e[i].quantize);
    /* sizes: Q4_K row of 256 = 144 bytes */
    for (int i = 0; i < l.n; i++)
        if (!strcmp(l.t[i].name, "blk.0.attn_q.weight")) CHECK(e[i].nbytes == 144u * 256u);
}

TEST(plan_asym_recipe_spelled_out)
{
    struct tlist l;
    build(&l, MOEQ_TYPE_Q8_0);
    const char *specs[] = { "ffn_gate_exps=IQ2_S", "ffn_up_exps=IQ2_S", "ffn_down_exps=IQ3_S",
                            "attn_q=Q4_K", "attn_k=Q4_K", "attn_v=Q4_K", "attn_output=Q4_K" };
    struct moeq_type_rule rules[7];
    char err[256];
    for (int i = 0; i < 7; i++) REQUIRE(moeq_type_rule_parse(specs[i], &rules[i], err, sizeof err) == 0);
    struct moeq_plan_opts o = { moeq_mix_find("IQ3_S"), 0, MOEQ_TYPE_Q6_K, MOEQ_TYPE_Q6_K, 1, rules, 7, NULL };
    struct moeq_plan_entry e[64];
    REQUIRE(moeq_plan(&o, &tiny_shape, l.t, l.n, e, err, sizeof err) == 0);
    int counts[MOEQ_TYPE_COUNT] = {0};
    for (int i = 0; i < l.n; i++) counts[e[i].type]++;
    CHECK(counts[MOEQ_TYPE_IQ2_S] == 8);
    CHECK(counts[MOEQ_TYPE_IQ3_S] == 4);
    CHECK(counts[MOEQ_TYPE_Q4_K] == 16);
    CHECK(counts[MOEQ_TYPE_Q6_K] == 2);
    CHECK(counts[MOEQ_TYPE_F32] == 21);
    CHECK(type_of(&l, e, "blk.0.attn_k.weight") == MOEQ_TYPE_Q4_K); /* the rule beats the MoE bump */
    for (int i = 0; i < 7; i++) moeq_type_rule_free(&rules[i]);
}

/* The recipe table gives the plan the recipe spelled out as rules gives
 * (the acceptance run checks the same through the binary), and a user's
 * rule still beats it. */
TEST(plan_recipe_table_equals_spelled_out)
{
    struct tlist l;
    build(&l, MOEQ_TYPE_Q8_0);
    const struct moeq_recipe *rp = moeq_recipe_find("asym-2bitexp");
    REQUIRE(rp && rp->ftype == MOEQ_FTYPE_IQ3_S && moeq_mix_of_ftype(rp->ftype));
    CHECK(moeq_recipe_find("asym-9bit") == NULL);
    const char *specs[] = { "ffn_gate_exps=IQ2_S", "ffn_up_exps=IQ2_S", "ffn_down_exps=IQ3_S",
                            "attn_q=Q4_K", "attn_k=Q4_K", "attn_v=Q4_K", "attn_output=Q4_K" };
    struct moeq_type_rule rules[7];
    char err[256];
    for (int i = 0; i < 7; i++) REQUIRE(moeq_type_rule_parse(specs[i], &rules[i], err, sizeof err) == 0);
    const struct moeq_mix *mix = moeq_mix_of_ftype(rp->ftype);
    struct moeq_plan_opts spelled = { mix, 0, MOEQ_TYPE_Q6_K, MOEQ_TYPE_Q6_K, 1, rules, 7, NULL };
    struct moeq_plan_opts table = { mix, 0, -1, -1, 1, NULL, 0, rp };
    struct moeq_plan_entry a[64], b[64];
    REQUIRE(moeq_plan(&spelled, &tiny_shape, l.t, l.n, a, err, sizeof err) == 0);
    REQUIRE(moeq_plan(&table, &tiny_shape, l.t, l.n, b, err, sizeof err) == 0);
    for (int i = 0; i < l.n; i++) {
        CHECKF(a[i].type == b[i].type && a[i].nbytes == b[i].nbytes && a[i].quantize == b[i].quantize,
               "%s: %s vs %s", l.t[i].name, moeq_type_name(a[i].type), moeq_type_name(b[i].type));
        CHECK(b[i].rule == -1);
        CHECK(b[i].recipe == (a[i].rule >= 0));
    }
    /* a user's rule comes first; explicit overrides beat the recipe's */
    struct moeq_type_rule r5;
    REQUIRE(moeq_type_rule_parse("attn_q=Q5_K", &r5, err, sizeof err) == 0);
    struct moeq_plan_opts mixed = { mix, 0, MOEQ_TYPE_Q8_0, -1, 1, &r5, 1, rp };
    REQUIRE(moeq_plan(&mixed, &tiny_shape, l.t, l.n, b, err, sizeof err) == 0);
    CHECK(type_of(&l, b, "blk.0.attn_q.weight") == MOEQ_TYPE_Q5_K);
    CHECK(type_of(&l, b, "blk.0.attn_k.weight") == MOEQ_TYPE_Q4_K);
    CHECK(type_of(&l, b, "token_embd.weight") == MOEQ_TYPE_Q8_0);
    CHECK(type_of(&l, b, "output.weight") == MOEQ_TYPE_Q6_K);
    moeq_type_rule_free(&r5);
    for (int i = 0; i < 7; i++) moeq_type_rule_free(&rules[i]);
}

TEST(plan_first_rule_wins_and_pure)
{
    struct tlist l;
    build(&l, MOEQ_TYPE_F16);
    struct moeq_type_rule rules[2];
    char err[256];
    REQUIRE(moeq_type_rule_parse("blk\\.[01]\\.ffn_.*_exps=Q2_K", &rules[0], err, sizeof err) == 0);
    REQUIRE(moeq_type_rule_parse("_exps=Q5_K", &rules[1], err, sizeof err) == 0);
    struct moeq_plan_opts o = { moeq_mix_find("Q4_K_M"), 1, -1, -1, 0, rules, 2, NULL };
    struct moeq_plan_entry e[64];
    REQUIRE(moeq_plan(&o, &tiny_shape, l.t, l.n, e, err, sizeof err) == 0);
    CHECK(type_of(&l, e, "blk.1.ffn_up_exps.weight") == MOEQ_TYPE_Q2_K);
    CHECK(type_of(&l, e, "blk.2.ffn_up_exps.weight") == MOEQ_TYPE_Q5_K);
    /* --pure: no mix bumps */
    CHECK(type_of(&l, e, "blk.0.attn_v.weight") == MOEQ_TYPE_Q4_K);
    CHECK(type_of(&l, e, "output.weight") == MOEQ_TYPE_Q4_K);
    for (int i = 0; i < 2; i++) moeq_type_rule_free(&rules[i]);
}

TEST(plan_row_length_fallback)
{
    struct tlist l;
    l.n = 0;
    add(&l, "blk.0.attn_q.weight", MOEQ_TYPE_F32, 2, 96, 64, 1);
    add(&l, "blk.0.ffn_up.weight", MOEQ_TYPE_F32, 2, 100, 64, 1);
    struct moeq_model_shape s = { 1, 4, 4, 0, 0 };
    struct moeq_plan_opts o = { moeq_mix_find("IQ3_S"), 1, -1, -1, 1, NULL, 0, NULL };
    struct moeq_plan_entry e[2];
    char err[256];
    REQUIRE(moeq_plan(&o, &s, l.t, l.n, e, err, sizeof err) == 0);
    CHECK(e[0].type == MOEQ_TYPE_IQ4_NL && e[0].fallback);
    CHECK(e[1].type == MOEQ_TYPE_F16 && e[1].fallback);
}

TEST(plan_rule_parse_errors)
{
    struct moeq_type_rule r;
    char err[256];
    CHECK(moeq_type_rule_parse("attn_q", &r, err, sizeof err) == -1);
    CHECK(moeq_type_rule_parse("attn_q=Q9_K", &r, err, sizeof err) == -1 && strstr(err, "unknown type"));
    CHECK(moeq_type_rule_parse("attn_(q=Q4_K", &r, err, sizeof err) == -1 && strstr(err, "bad regex"));
    CHECK(moeq_mix_find("q4_k") == moeq_mix_find("Q4_K_M"));
    CHECK(moeq_mix_find("nonsense") == NULL);
}
