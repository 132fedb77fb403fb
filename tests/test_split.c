/*
 * test_split.c: split GGUF sets (llama.cpp's gguf-split layout) through the
 * moeq binary: a synth model written split reads back as the unsplit one
 * (quantize output byte-equal), quantize --keep-split and --split-max-size
 * write sets that read back, and a missing part is a one-line error naming it.
 */
#include "test.h"

#include <stdlib.h>
#include <string.h>

static int files_equal(const char *a, const char *b)
{
    size_t na, nb;
    void *pa = test_read_file(a, &na), *pb = test_read_file(b, &nb);
    int eq = pa && pb && na == nb && memcmp(pa, pb, na) == 0;
    free(pa);
    free(pb);
    return eq;
}

TEST(split_synth_set_reads_as_unsplit)
{
    const char *one = test_synth_model("one.gguf", NULL);
    REQUIRE(one);
    REQUIRE(test_synth_model("set.gguf", "--split-max-size 6M"));
    const char *first = test_tmp("set-00001-of-00003.gguf");
    const char *bin = test_moeq_bin();
    char *out = NULL;
    CHECKF(test_run(&out, "%s info %s", bin, first) == 0, "info: %s", out ? out : "");
    free(out);
    /* quantize of the split set equals quantize of the unsplit file */
    CHECK(test_run(NULL, "%s quantize -q %s %s Q4_K_M", bin, one, test_tmp("q1.gguf")) == 0);
    CHECK(test_run(NULL, "%s quantize -q %s %s Q4_K_M", bin, first, test_tmp("q2.gguf")) == 0);
    CHECK(files_equal(test_tmp("q1.gguf"), test_tmp("q2.gguf")));
    /* --keep-split writes three parts; quantizing them back unsplit is unchanged */
    CHECK(test_run(NULL, "%s quantize -q --keep-split %s %s Q4_K_M", bin, first, test_tmp("k.gguf")) == 0);
    CHECK(test_run(NULL, "%s quantize -q --allow-requantize %s %s Q4_K_M", bin, test_tmp("k-00001-of-00003.gguf"), test_tmp("k1.gguf")) == 0);
    CHECK(test_run(NULL, "%s quantize -q --allow-requantize %s %s Q4_K_M", bin, test_tmp("q1.gguf"), test_tmp("k2.gguf")) == 0);
    CHECK(files_equal(test_tmp("k1.gguf"), test_tmp("k2.gguf")));
    /* --split-max-size */
    CHECK(test_run(NULL, "%s quantize -q --split-max-size 1.5M %s %s Q4_K_M", bin, one, test_tmp("m.gguf")) == 0);
    CHECK(test_run(NULL, "%s info %s", bin, test_tmp("m-00001-of-00002.gguf")) == 0);
    /* a missing part names itself */
    CHECK(test_run(NULL, "rm %s", test_tmp("set-00002-of-00003.gguf")) == 0);
    out = NULL;
    CHECK(test_run(&out, "%s info %s", bin, first) != 0);
    CHECKF(out && strstr(out, "split part 2 of 3") && strstr(out, "set-00002-of-00003.gguf"), "got: %s", out ? out : "");
    free(out);
}
