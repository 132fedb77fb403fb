/*
 * test_split.c: split GGUF sets (llama.cpp's gguf-split layout) through the
 * moeq binary: a synth model written split reads back as the unsplit one
 * (quantize output byte-equal), quantize --keep-split and --split-max-size
 * write sets that read back, and a missing part is a one-line error naming it;
 * run, perplexity, dump, fit, tokenize and imatrix read a set as the unsplit
 * file, and a truncated part is a one-line error naming it.
 */
#include "test.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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

/* Output of `moeq ARGS` with stderr dropped (malloc'd), the test ending
 * failed when it exits non-zero. */
static char *stdout_of(const char *fmt, const char *model)
{
    char *o = NULL;
    char cmd[4096];
    snprintf(cmd, sizeof cmd, fmt, model);
    int rc = test_run(&o, "%s %s 2>/dev/null", test_moeq_bin(), cmd);
    CHECKF(rc == 0, "moeq %s: exit %d: %s", cmd, rc, o ? o : "");
    return o;
}

/* Every command that reads a model reads a split set given its first part,
 * with the unsplit file's results; a damaged part is a one-line error. */
TEST(split_set_every_reader)
{
    const char *one = test_synth_model("r1.gguf", NULL);
    REQUIRE(test_synth_model("rs.gguf", "--split-max-size 6M"));
    const char *first = test_tmp("rs-00001-of-00003.gguf");
    static const char *const cmds[] = {
        "run -m %s -p 'the river' -n 12 --temp 0 -t 2",
        "perplexity -m %s -f data/calibration.txt -c 64 --chunks 2 -t 2",
        "fit -m %s -c 256 --budget 4G",
        "tokenize -m %s -p 'the river town'",
    };
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        char *a = stdout_of(cmds[i], one), *b = stdout_of(cmds[i], first);
        /* fit names the file it read; everything else must be equal */
        if (i == 2) {
            CHECKF(a && b && strstr(a, "FITS") && strstr(b, "FITS"), "fit: '%s' / '%s'", a ? a : "", b ? b : "");
        } else {
            CHECKF(a && b && !strcmp(a, b), "%s: unsplit and split differ", cmds[i]);
        }
        free(a);
        free(b);
    }
    /* dump and imatrix over the set write the same bytes */
    const char *bin = test_moeq_bin();
    CHECK(test_run(NULL, "%s dump %s blk.1.ffn_down_exps.weight -o %s", bin, one, test_tmp("d1.f32")) == 0);
    CHECK(test_run(NULL, "%s dump %s blk.1.ffn_down_exps.weight -o %s", bin, first, test_tmp("d2.f32")) == 0);
    CHECK(files_equal(test_tmp("d1.f32"), test_tmp("d2.f32")));
    CHECK(test_run(NULL, "%s imatrix -q -m %s -f data/calibration.txt -c 64 --chunks 2 --no-ppl -o %s", bin, one,
                   test_tmp("i1.dat")) == 0);
    CHECK(test_run(NULL, "%s imatrix -q -m %s -f data/calibration.txt -c 64 --chunks 2 --no-ppl -o %s", bin, first,
                   test_tmp("i2.dat")) == 0);
    CHECK(files_equal(test_tmp("i1.dat"), test_tmp("i2.dat")));
    /* a truncated part: one line naming it, for a reader and for quantize */
    CHECK(test_run(NULL, "truncate -s 100000 %s", test_tmp("rs-00003-of-00003.gguf")) == 0);
    char *o = NULL;
    CHECK(test_run(&o, "%s run -m %s -p x -n 1", bin, first) == 1);
    CHECKF(o && strstr(o, "rs-00003-of-00003.gguf"), "got: %s", o ? o : "");
    free(o);
    o = NULL;
    CHECK(test_run(&o, "%s quantize -q %s %s Q4_K_M", bin, first, test_tmp("never.gguf")) == 1);
    CHECKF(o && strstr(o, "rs-00003-of-00003.gguf"), "got: %s", o ? o : "");
    free(o);
    CHECK(access(test_tmp("never.gguf"), F_OK) != 0);
}
