/*
 * test_golden.c: byte-identity of what moeq writes, recorded as sha256 sums.
 *
 * A fixed synth model (2 layers, 4 experts, F32) is quantized with every
 * mix moeq knows and with the asym-2bitexp recipe, each with and without an
 * importance matrix computed by moeq itself; synth writes two quantized
 * mixes directly; and the logits of a fixed prompt are dumped from the F32
 * model and two quantized files under every ISA this CPU runs. The sums
 * below were recorded before the structural refactors (one home for each
 * piece of knowledge): a refactor that is meant to change nothing must keep
 * every one of them. A change that is meant to change bytes updates the
 * table in the same commit and says why.
 *
 * The imatrix runs under MOEQ_ISA=scalar: the engine's sums come out in
 * another order on each ISA, so the best ISA's imatrix (and every file
 * quantized with it) would differ between an AVX2 and an AVX-512 machine.
 * Logit sums are per ISA; one this machine runs but the table lacks is
 * named in a note (record it with MOEQ_GOLDEN_PRINT=1 on such a machine),
 * not a failure.
 *
 * MOEQ_GOLDEN_PRINT=1 prints the table as C lines instead of checking it.
 * The calibration text is copied in too: its path is recorded in the
 * quantized files' metadata. Release suite only (the sanitizer build computes the same bytes, slowly).
 */
#include "test.h"
#include "kernels/kernels.h"
#include "quant/quant_plan.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct golden { const char *what; const char *sha; };

/* Recorded at cbdbc91 (before issue 12's refactors); the imatrix and what
 * is quantized with it re-recorded when the imatrix moved to the scalar ISA
 * (on an AVX2-only machine, where the AVX-512 logits of those files could
 * not be computed). Logit sums are per ISA. */
static const struct golden golden[] = {
    { "synth-f32", "e9df7ea3daa2137ad3a06b90abd149cd9d2f9ba047fddc3b7dfffcd7bc9bad2b" },
    { "imatrix", "0189a9cefaf42541f565b4b25fa521a48ead8e02799609a252c564caa63a84da" },
    { "quantize-F32", "784d427ac02fef8dc24f97fa5ec1a8a89012a8d58abcf5dc4349279c2754b6ce" },
    { "quantize-F16", "0a487a75765679b7b8911eadf43d9de0412b5f671e0180474aac542071ed3bba" },
    { "quantize-BF16", "3c7611d29dab33444ae49a00ff654b256ececeb0c74f6074227a1dc70ad4ed80" },
    { "quantize-Q4_0", "0e5aaa957368a2ae90484176a8f5ff0a9c6b317c1aada0b61c5f436810580c13" },
    { "quantize-Q4_0-imatrix", "c808fce8bae4bde4a8fc7a8940b9bd8d2985818545bb987ce4b6345fef33f437" },
    { "quantize-Q8_0", "63dab1d3d4a9ae97a9068fc050809d620288ef9c3057dc4f2a352de7688dc53c" },
    { "quantize-Q8_0-imatrix", "0302185140c9a51b631dca4a7b33f67676628fc7ab027290edfa31e2142a4df7" },
    { "quantize-Q2_K", "36ea51fbd5dd218dc064116544aa0d8faf1ea57acbc2247edf6117d467e79454" },
    { "quantize-Q2_K-imatrix", "cb29c20890d56fc2faa38419a721c1c6cd08bae18dec40727fb939f61e114cab" },
    { "quantize-Q3_K_S", "ca3923438c0ef6dfda60a5857d2bd84d829c068efaba10f191aa7f4808f02bd8" },
    { "quantize-Q3_K_S-imatrix", "8f5a5213a8bac6f981d2ebefcb163de85c9e22b7ea3c4e63c305963ab9fbbdda" },
    { "quantize-Q3_K_M", "1c110c0f2716186b0ffb39d20735eea605afa93096a5dd86865c4d11c27c8682" },
    { "quantize-Q3_K_M-imatrix", "a693456915ace1fd0b87dfd183db4dfc8b423185e29a15df848bacd2145fc67f" },
    { "quantize-Q3_K_L", "e9143a937c7bc99b94b1a4d6b8f4ff951caf7d7085c0a3909d4873836c5b4bb4" },
    { "quantize-Q3_K_L-imatrix", "31d853d6d7439bd5b0468c9bd56e6a6775f9266992655a555b9a99f3413da814" },
    { "quantize-Q4_K_S", "e6e2a1c31ed9ef8778fb531ef3148c983c0767b01de0937ba5ffa1c820589e7e" },
    { "quantize-Q4_K_S-imatrix", "d2d83adbb00757ee4cee4ba7d8fca31e93ad3cb63c48d79cba1a480443dc81fd" },
    { "quantize-Q4_K_M", "6ac04d809450c4253cc1190d9c19478d374ece49535c339042bb45244520c6a9" },
    { "quantize-Q4_K_M-imatrix", "bd29c7eee7d15c7a59c3cede7b268325ae805daef6300a0ea54c7c75fedb637d" },
    { "quantize-Q5_K_S", "53d614607a77daa94236bc57522c943442d7f71cb2b40e66f6261ce678cb6fe5" },
    { "quantize-Q5_K_S-imatrix", "8f78be3df05ae0f61f5869936ebbccc11583001dfa0c6b7e4fc76b2ed90cf5f2" },
    { "quantize-Q5_K_M", "a1f9498b1f61bd0666ef97d85c40bf78aa7dafacdae79d07db212307ec4586f7" },
    { "quantize-Q5_K_M-imatrix", "d013a5daa7df00c3da27bcc7458537d45bbd046bb91d2793a84db7af2d19f567" },
    { "quantize-Q6_K", "007db162ec250215f7ed7f644ba4c72abd76151a6e9e821561e0d85227ac3ed6" },
    { "quantize-Q6_K-imatrix", "4e933468944a4f3dba9690ef000047e9a84d8a3c3456a389bf8ed4a41a4a0840" },
    { "quantize-IQ2_XXS", "1d3d614293ef31bc4cc4b5792d2a8a8f742ccb74e0cf198e4407d5debc77c402" },
    { "quantize-IQ2_XXS-imatrix", "3719e9da375092bf938df796992c2778339d15fbfaf37798926ffd513547501a" },
    { "quantize-IQ2_XS", "4e9b5cea3c8e35f25d8b1b5a477dc0aca513c8f0b406e869c85f66345808274a" },
    { "quantize-IQ2_XS-imatrix", "b5ac5b4d39f7a9c1ec3b76b214b9fdac441eb8ada57ec241ed1a5c3b39cd6341" },
    { "quantize-IQ2_S", "d7be6962888564bf3dac284cb686bf03cf327e3c9ccf89dd8d4b98380b426f8d" },
    { "quantize-IQ2_S-imatrix", "96d80ffdc8a5f8c604fe0006b022a1500b612e1ecd4c33d6a904d0bbff59feb7" },
    { "quantize-IQ2_M", "286e5e40d03c7fdcb8c888fcf6e5511148a772675980b7f41849ffe06c6cabcf" },
    { "quantize-IQ2_M-imatrix", "ac57286b075730ad88fa352fff6cacc274b4c8742aa5a784415f432c677253c9" },
    { "quantize-IQ3_XXS", "f970290fa488ae726b9b3088211c9454575f2189f25246451a349861c427333f" },
    { "quantize-IQ3_XXS-imatrix", "47fc9d99e4b7ec8cda8095e300b83281bf12ea76bdab474e2ad7fe73f09e4a07" },
    { "quantize-IQ3_XS", "3ede272d24868155a35684e3657b2fdaa54803121dcf1cb1db94085bb9003be5" },
    { "quantize-IQ3_XS-imatrix", "216998733d3e751dd8a14fdb9fbe5f52ff3f953554addd8abd5eeba3255d88ba" },
    { "quantize-IQ3_S", "0e59a3b9796c1e764e4475aa4c6f0f5e2b85684134dab47d4e6a136a488641f3" },
    { "quantize-IQ3_S-imatrix", "0df2344bad769ff99d0cc983c511c71d2921730cc624d960be25c8df85c5353d" },
    { "quantize-IQ3_M", "74e6b2726a8357a6aeab9ab913e0364da31c530246aaeed52728c77400eef8ca" },
    { "quantize-IQ3_M-imatrix", "87ae2bb171a761ed2d7c76141265b8293905e8b6f5086e54f80d054cb979d8c1" },
    { "quantize-IQ4_NL", "033cedb3d0f32bec3b1c70e1a3dc170662e715afbeefc5bf19393a8f7fb06fe3" },
    { "quantize-IQ4_NL-imatrix", "0837f3396087fb0c4fe600fe069d16bc19e908a19338243f207ced5ae2a91207" },
    { "quantize-IQ4_XS", "469115f7a1181374bd8109e0cb7ebd09b1bc6d726e4a882c35c9830ab56f5921" },
    { "quantize-IQ4_XS-imatrix", "3f520d4d9d9bca12c09d0524901899bd169ca57e07e0589ecb27ba662da0ff2c" },
    { "quantize-asym-2bitexp", "f513d06c2feaa1859a057fa9d78b7e71f6d4b2bc9467e87ce1e5c0b7185199a0" },
    { "quantize-asym-2bitexp-imatrix", "174fb2a4747a5c09cbb9db705278e5a93128849688d6a8cf6c8248e6e182b54a" },
    { "synth-asym-2bitexp", "c1021302999d1f92812fd94842695d01bfc7b071244304bc82881a4ccfe4d5b2" },
    { "synth-Q4_K_M", "acd50c8c8bf05b67e80debf86a9eac9a5af6a912363e81ccf39641d4ea3e65ab" },
    { "logits-f32-scalar", "008e7afaf3fb211ae62eb87654bb77b92d7881726882e05d48ee2efc74512c66" },
    { "logits-Q4_K_M-scalar", "3f64ca46a69f2ffbbc1363aa36ed08aa81192d45456eb994287b2798d2632008" },
    { "logits-asym-scalar", "6a2f4bdc1fad00009f4d03479364cc01964b93cb4ff5049472d30c34436c6809" },
    { "logits-f32-avx2", "d88e5f1331d148356ffa91875429d13e2b15be40aa4e566dd509498e6fa1014b" },
    { "logits-Q4_K_M-avx2", "1aa9d83f109f59f295d5a294a1bf3125d88e74771dd1e2e4868f876c613f42b7" },
    { "logits-asym-avx2", "f57087c901bcc2e703caf6dfb82ff79b578a86abb9344ce9a3ae1e84282952ec" },
    { "logits-f32-avx512", "50252b25f6b0a5f640430b6fa776a568ccc8a98732f1da70563a767ffadd0080" },
    { NULL, NULL }
};

static int printing(void) { const char *e = getenv("MOEQ_GOLDEN_PRINT"); return e && *e == '1'; }

static void sha_of(const char *path, char out[65])
{
    char *o = NULL;
    int rc = test_run(&o, "sha256sum '%s'", path);
    out[0] = 0;
    if (rc == 0 && o && strlen(o) >= 64) { memcpy(out, o, 64); out[64] = 0; }
    free(o);
}

static int n_checked, n_missing;

/* optional: a sum the table may lack (another ISA's) is a note, not a failure */
static void check_sum_opt(const char *what, const char *path, int optional)
{
    char sha[65];
    sha_of(path, sha);
    CHECKF(sha[0], "%s: no output at %s", what, path);
    if (printing()) { printf("    { \"%s\", \"%s\" },\n", what, sha); return; }
    for (const struct golden *g = golden; g->what; g++)
        if (!strcmp(g->what, what)) {
            CHECKF(!strcmp(g->sha, sha), "%s: sha256 %s, recorded %s", what, sha, g->sha);
            n_checked++;
            return;
        }
    n_missing++;
    if (optional) printf("  golden: note: %s has no recorded sum on this ISA (sha256 %s)\n", what, sha);
    else test_fail(__FILE__, __LINE__, "%s: no recorded sum (sha256 %s)", what, sha);
}

static void check_sum(const char *what, const char *path) { check_sum_opt(what, path, 0); }

/* Every command runs inside the test's folder on plain names, so no path
 * that differs between runs (the folder has the pid) lands in a file. */
static char g_dir[4096], g_bin[4096];

static int run_here(char **log, const char *fmt, const char *a, const char *b, const char *c)
{
    char cmd[4096];
    snprintf(cmd, sizeof cmd, fmt, a, b, c);
    return test_run(log, "cd '%s' && %s %s", g_dir, g_bin, cmd);
}

TEST(golden_quantized_files_and_logits_unchanged)
{
    if (test_sanitized()) SKIP("release suite checks the recorded bytes");
    REQUIRE(realpath(test_moeq_bin(), g_bin));
    snprintf(g_dir, sizeof g_dir, "%s", test_tmpdir());
    REQUIRE(test_run(NULL, "cp data/calibration.txt '%s/calib.txt'", g_dir) == 0);
    const char *synth = "synth -o src.gguf --layers 2 --experts 4 --experts-used 2 --seed 7%s%s%s";
    char *log = NULL;
    int rc = run_here(&log, synth, "", "", "");
    REQUIREF(rc == 0, "synth: %s", log ? log : "");
    free(log);
    check_sum("synth-f32", test_tmp("src.gguf"));
    rc = test_run(&log, "cd '%s' && MOEQ_ISA=scalar %s imatrix -m src.gguf -f calib.txt -c 256 -t 2 -o imat.dat", g_dir,
                  g_bin);
    REQUIREF(rc == 0, "imatrix: %s", log ? log : "");
    free(log);
    check_sum("imatrix", test_tmp("imat.dat"));

    for (const struct moeq_mix *m = moeq_mix_list(); m->name; m++) {
        int is_float = !strcmp(m->name, "F32") || !strcmp(m->name, "F16") || !strcmp(m->name, "BF16");
        for (int wi = 0; wi < (is_float ? 1 : 2); wi++) {
            char what[64];
            snprintf(what, sizeof what, "quantize-%s%s", m->name, wi ? "-imatrix" : "");
            rc = run_here(&log, "quantize -q %s src.gguf q.gguf %s 2%s",
                          wi ? "--imatrix imat.dat" : "--ignore-imatrix-rules", m->name, "");
            CHECKF(rc == 0, "%s: %s", what, log ? log : "");
            free(log);
            if (rc == 0) check_sum(what, test_tmp("q.gguf"));
        }
    }
    for (int wi = 0; wi < 2; wi++) {
        const char *what = wi ? "quantize-asym-2bitexp-imatrix" : "quantize-asym-2bitexp";
        rc = run_here(&log, "quantize -q --recipe asym-2bitexp %s src.gguf q.gguf 2%s%s",
                      wi ? "--imatrix imat.dat" : "--ignore-imatrix-rules", "", "");
        CHECKF(rc == 0, "%s: %s", what, log ? log : "");
        free(log);
        if (rc == 0) check_sum(what, test_tmp("q.gguf"));
    }
    static const char *const synth_recipes[] = { "asym-2bitexp", "Q4_K_M" };
    for (int i = 0; i < 2; i++) {
        char what[64];
        snprintf(what, sizeof what, "synth-%s", synth_recipes[i]);
        rc = run_here(&log, "synth -o q.gguf --layers 2 --experts 4 --experts-used 2 --seed 7 --recipe %s%s%s",
                      synth_recipes[i], "", "");
        CHECKF(rc == 0, "%s: %s", what, log ? log : "");
        free(log);
        if (rc == 0) check_sum(what, test_tmp("q.gguf"));
    }

    /* Logits of one prompt: F32 model, Q4_K_M and asym-2bitexp (with imatrix). */
    REQUIRE(run_here(NULL, "quantize -q --imatrix imat.dat src.gguf q4km.gguf Q4_K_M 2%s%s%s", "", "", "") == 0);
    REQUIRE(run_here(NULL, "quantize -q --imatrix imat.dat --recipe asym-2bitexp src.gguf asym.gguf 2%s%s%s",
                     "", "", "") == 0);
    FILE *fp = fopen(test_tmp("prompt.txt"), "w");
    REQUIRE(fp);
    fputs("The quick brown fox jumps over the lazy dog. 1234567890 <|im_start|>user\nhello", fp);
    fclose(fp);
    static const char *const mname[3] = { "f32", "Q4_K_M", "asym" };
    static const char *const mfile[3] = { "src.gguf", "q4km.gguf", "asym.gguf" };
    for (int isa = 0; isa <= moeq_isa_best(); isa++)
        for (int k = 0; k < 3; k++) {
            char what[64];
            snprintf(what, sizeof what, "logits-%s-%s", mname[k], moeq_isa_name(isa));
            rc = test_run(&log, "cd '%s' && MOEQ_ISA=%s %s run -m %s -f prompt.txt -n 0 -t 2 "
                          "--dump-logits logits.f32", g_dir, moeq_isa_name(isa), g_bin, mfile[k]);
            CHECKF(rc == 0, "%s: %s", what, log ? log : "");
            free(log);
            if (rc == 0) check_sum_opt(what, test_tmp("logits.f32"), isa > 0);
        }
    if (!printing()) printf("  golden: %d sums checked, %d without a record\n", n_checked, n_missing);
}
