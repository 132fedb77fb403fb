/* Traits table and half/bfloat16 conversions. */
#include "test.h"
#include "quant/quants.h"
#include "quant/quants_blocks.h"

#include <immintrin.h>
#include <stdint.h>

TEST(traits_table)
{
    static const struct { const char *name; int id, blck; size_t bytes; } want[] = {
        {"F32",0,1,4},{"F16",1,1,2},{"BF16",30,1,2},{"Q4_0",2,32,18},{"Q8_0",8,32,34},
        {"Q2_K",10,256,84},{"Q3_K",11,256,110},{"Q4_K",12,256,144},{"Q5_K",13,256,176},
        {"Q6_K",14,256,210},{"IQ2_XXS",16,256,66},{"IQ2_XS",17,256,74},{"IQ2_S",22,256,82},
        {"IQ3_XXS",18,256,98},{"IQ3_S",21,256,110},{"IQ4_NL",20,32,18},{"IQ4_XS",23,256,136},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        const struct moeq_type_traits *t = moeq_type_traits(want[i].id);
        REQUIREF(t != NULL, "no traits for %s", want[i].name);
        CHECK(strcmp(t->name, want[i].name) == 0);
        CHECK(t->blck_size == want[i].blck);
        CHECKF(t->type_size == want[i].bytes, "%s: %zu bytes", want[i].name, t->type_size);
        CHECK(moeq_type_from_name(want[i].name) == want[i].id);
    }
    CHECK(moeq_type_from_name("iq2_s") == MOEQ_TYPE_IQ2_S);
    CHECK(moeq_type_from_name("Q4_K_M") == -1);
    CHECK(moeq_type_traits(3) == NULL && moeq_type_traits(-1) == NULL && moeq_type_traits(99) == NULL);
    CHECK(moeq_row_size(MOEQ_TYPE_Q4_K, 512) == 288);
    CHECK(moeq_row_size(MOEQ_TYPE_Q4_K, 100) == 0);
}

TEST(f16_roundtrip_all_halves)
{
    for (uint32_t h = 0; h < 65536; h++) {
        float f = moeq_f16_to_f32((uint16_t)h);
        if (f != f) continue; /* nan */
        CHECKF(moeq_f32_to_f16(f) == h, "half 0x%04x -> %g -> 0x%04x", h, f, moeq_f32_to_f16(f));
    }
}

__attribute__((target("f16c"))) static uint16_t hw_f32_to_f16(float f)
{
    return (uint16_t)_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
}
__attribute__((target("f16c"))) static float hw_f16_to_f32(uint16_t h) { return _cvtsh_ss(h); }

TEST(f16_matches_f16c)
{
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("f16c")) SKIP("no F16C on this CPU");
    uint64_t s = 0x9e3779b97f4a7c15ull;
    int bad = 0;
    for (int i = 0; i < 2000000 && bad < 10; i++) {
        s ^= s << 13; s ^= s >> 7; s ^= s << 17;
        uint32_t bits = (uint32_t)s;
        float f; memcpy(&f, &bits, 4);
        if (f != f) continue;
        if (moeq_f32_to_f16(f) != hw_f32_to_f16(f)) {
            bad++;
            test_fail(__FILE__, __LINE__, "f32 0x%08x: ours 0x%04x f16c 0x%04x", bits, moeq_f32_to_f16(f), hw_f32_to_f16(f));
        }
    }
    for (uint32_t h = 0; h < 65536; h++) {
        float a = moeq_f16_to_f32((uint16_t)h), b = hw_f16_to_f32((uint16_t)h);
        if (a != a && b != b) continue;
        CHECKF(memcmp(&a, &b, 4) == 0, "half 0x%04x", h);
    }
}

TEST(bf16_rounding)
{
    CHECK(moeq_f32_to_bf16(1.0f) == 0x3f80);
    CHECK(moeq_bf16_to_f32(0x3f80) == 1.0f);
    /* 1 + 2^-8 is halfway between two bf16 values: ties to even (down) */
    CHECK(moeq_f32_to_bf16(1.00390625f) == 0x3f80);
    /* 1 + 3*2^-8 is halfway: ties to even (up) */
    CHECK(moeq_f32_to_bf16(1.01171875f) == 0x3f82);
    for (uint32_t h = 0; h < 65536; h++) {
        float f = moeq_bf16_to_f32((uint16_t)h);
        if (f != f) continue;
        CHECK(moeq_f32_to_bf16(f) == h);
    }
}
