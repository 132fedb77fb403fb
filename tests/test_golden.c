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
 * MOEQ_GOLDEN_PRINT=1 prints the table as C lines instead of checking it.
 * Release suite only (the sanitizer build computes the same bytes, slowly).
 */
#include "test.h"
#include "kernels.h"
#include "quant_plan.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct golden { const char *what; const char *sha; };

/* Recorded at cbdbc91 (before issue 12's refactors). Logit sums are per ISA. */
static const struct golden golden[] = {
    { "synth-f32", "e9df7ea3daa2137ad3a06b90abd149cd9d2f9ba047fddc3b7dfffcd7bc9bad2b" },
    { "imatrix", "fa928745910fa1e63688d27bf6edf9f6e4fc3ff74bf03deb2d84bcd560ab2beb" },
    { "quantize-F32", "784d427ac02fef8dc24f97fa5ec1a8a89012a8d58abcf5dc4349279c2754b6ce" },
    { "quantize-F16", "0a487a75765679b7b8911eadf43d9de0412b5f671e0180474aac542071ed3bba" },
    { "quantize-BF16", "3c7611d29dab33444ae49a00ff654b256ececeb0c74f6074227a1dc70ad4ed80" },
    { "quantize-Q4_0", "0e5aaa957368a2ae90484176a8f5ff0a9c6b317c1aada0b61c5f436810580c13" },
    { "quantize-Q4_0-imatrix", "a4d8c61d9c10f7d588056ce984826530125b9fcf93ae63aaf6205d2a72c2a3c1" },
    { "quantize-Q8_0", "63dab1d3d4a9ae97a9068fc050809d620288ef9c3057dc4f2a352de7688dc53c" },
    { "quantize-Q8_0-imatrix", "c8d16effc0f5a34aa96a5934b498d7b6013bd875ae20388eae709d6c8ede1e3d" },
    { "quantize-Q2_K", "36ea51fbd5dd218dc064116544aa0d8faf1ea57acbc2247edf6117d467e79454" },
    { "quantize-Q2_K-imatrix", "d7f94cb4484f206dce0fdbd53495dd90627e9784ba212ee72aba8f2c92012c1d" },
    { "quantize-Q3_K_S", "ca3923438c0ef6dfda60a5857d2bd84d829c068efaba10f191aa7f4808f02bd8" },
    { "quantize-Q3_K_S-imatrix", "f8d667c96e888012fe56e009158d81fc339005d373fe00d8349ab4fae2aeb14e" },
    { "quantize-Q3_K_M", "1c110c0f2716186b0ffb39d20735eea605afa93096a5dd86865c4d11c27c8682" },
    { "quantize-Q3_K_M-imatrix", "0807a8a83a35e8eac4fb675385e00be2ecf3b0ccd36b81b5ae741159bd453cf1" },
    { "quantize-Q3_K_L", "e9143a937c7bc99b94b1a4d6b8f4ff951caf7d7085c0a3909d4873836c5b4bb4" },
    { "quantize-Q3_K_L-imatrix", "2d0734c9e0cafe70970bf208ef80910405b0406ad169d757c9efcd7941fe5a29" },
    { "quantize-Q4_K_S", "e6e2a1c31ed9ef8778fb531ef3148c983c0767b01de0937ba5ffa1c820589e7e" },
    { "quantize-Q4_K_S-imatrix", "7474d97dc97a67f402d3521716b3be91c43cd1aba3d315ba9a442b1df254a1b3" },
    { "quantize-Q4_K_M", "6ac04d809450c4253cc1190d9c19478d374ece49535c339042bb45244520c6a9" },
    { "quantize-Q4_K_M-imatrix", "ca6b704b6e839c4ec644a5113cc6fb8bb6b3ca51bb7ce35f963f13e15268d55b" },
    { "quantize-Q5_K_S", "53d614607a77daa94236bc57522c943442d7f71cb2b40e66f6261ce678cb6fe5" },
    { "quantize-Q5_K_S-imatrix", "8d50334aa1f46c9c9e00e124cb991901358ded9b3bab7a6daac4658f493ae4a9" },
    { "quantize-Q5_K_M", "a1f9498b1f61bd0666ef97d85c40bf78aa7dafacdae79d07db212307ec4586f7" },
    { "quantize-Q5_K_M-imatrix", "48bc29443235db72fb092c7158d2fb568a498952cd5f25188ac6727fe9f13638" },
    { "quantize-Q6_K", "007db162ec250215f7ed7f644ba4c72abd76151a6e9e821561e0d85227ac3ed6" },
    { "quantize-Q6_K-imatrix", "81e8d1f5a5b3e8ed4f84759a1f8dfef691aced6ca83c87bd9e7d5139597176a0" },
    { "quantize-IQ2_XXS", "1d3d614293ef31bc4cc4b5792d2a8a8f742ccb74e0cf198e4407d5debc77c402" },
    { "quantize-IQ2_XXS-imatrix", "a7b1783880a945584dc171964832edceab785ccbdf118dfbc4cc669d82f0c4d9" },
    { "quantize-IQ2_XS", "4e9b5cea3c8e35f25d8b1b5a477dc0aca513c8f0b406e869c85f66345808274a" },
    { "quantize-IQ2_XS-imatrix", "3fd0211c67e67fe7a78b2318b0bd7cf7a6825c02e3aafec03bb5f8097c64c5db" },
    { "quantize-IQ2_S", "d7be6962888564bf3dac284cb686bf03cf327e3c9ccf89dd8d4b98380b426f8d" },
    { "quantize-IQ2_S-imatrix", "f0a76c868858aa39f3f6c6a92c418ae3d0ac3a11f23ada558c638f89c501b858" },
    { "quantize-IQ2_M", "286e5e40d03c7fdcb8c888fcf6e5511148a772675980b7f41849ffe06c6cabcf" },
    { "quantize-IQ2_M-imatrix", "36311d5fd6fb5f19ce52b2abae2b24abf8c216a4f55b354d46226f574c516b43" },
    { "quantize-IQ3_XXS", "f970290fa488ae726b9b3088211c9454575f2189f25246451a349861c427333f" },
    { "quantize-IQ3_XXS-imatrix", "7415756641691f0ead350a1cbd1c1fe431dbd091d75df0d415052521c06f8210" },
    { "quantize-IQ3_XS", "3ede272d24868155a35684e3657b2fdaa54803121dcf1cb1db94085bb9003be5" },
    { "quantize-IQ3_XS-imatrix", "d9c569333f2deecde7da41e8097c4a601d64cf73f090dd5475e676c0283661c5" },
    { "quantize-IQ3_S", "0e59a3b9796c1e764e4475aa4c6f0f5e2b85684134dab47d4e6a136a488641f3" },
    { "quantize-IQ3_S-imatrix", "7c2d34b5766d5e1c61131e13a76b4ca6b5ec71d8874006d2860a6db947a394f8" },
    { "quantize-IQ3_M", "74e6b2726a8357a6aeab9ab913e0364da31c530246aaeed52728c77400eef8ca" },
    { "quantize-IQ3_M-imatrix", "a6b0815a8c03fec3628f23ed0fe70c5b9c1ad9b1e33231491461f705d46b73d8" },
    { "quantize-IQ4_NL", "033cedb3d0f32bec3b1c70e1a3dc170662e715afbeefc5bf19393a8f7fb06fe3" },
    { "quantize-IQ4_NL-imatrix", "242ee16a8eb76aaecbce10fbdec48891b847423378a04ce6fda6df9ee626acc4" },
    { "quantize-IQ4_XS", "469115f7a1181374bd8109e0cb7ebd09b1bc6d726e4a882c35c9830ab56f5921" },
    { "quantize-IQ4_XS-imatrix", "cfb8658b4f89e5636823055417601591e495e349ae0a2f031b1e545a57d4b83a" },
    { "quantize-asym-2bitexp", "f513d06c2feaa1859a057fa9d78b7e71f6d4b2bc9467e87ce1e5c0b7185199a0" },
    { "quantize-asym-2bitexp-imatrix", "02bf150e06ee78aa3080c3560b2eb6f42f2c878aeb60cffe19b2771f5c822bb1" },
    { "synth-asym-2bitexp", "c1021302999d1f92812fd94842695d01bfc7b071244304bc82881a4ccfe4d5b2" },
    { "synth-Q4_K_M", "acd50c8c8bf05b67e80debf86a9eac9a5af6a912363e81ccf39641d4ea3e65ab" },
    { "logits-f32-scalar", "008e7afaf3fb211ae62eb87654bb77b92d7881726882e05d48ee2efc74512c66" },
    { "logits-Q4_K_M-scalar", "430fdd3cc236bff97b272ea5429277123abfdb0283b811c823d75b42a34fdf6f" },
    { "logits-asym-scalar", "191ab95e7312b18a95a406ace9219ba477ebf48d2704338dae5dca099e0c087c" },
    { "logits-f32-avx2", "d88e5f1331d148356ffa91875429d13e2b15be40aa4e566dd509498e6fa1014b" },
    { "logits-Q4_K_M-avx2", "efc2fb5918a47ccf8250acc9c750f9d9359edd6ee7e3568672546bfafe6bf919" },
    { "logits-asym-avx2", "412a9e882c14f4e9795b7bfde027d1ae6d89c2ad14f9f0076a440fdd8e67c32f" },
    { "logits-f32-avx512", "50252b25f6b0a5f640430b6fa776a568ccc8a98732f1da70563a767ffadd0080" },
    { "logits-Q4_K_M-avx512", "c58eff6054520fe05013009f1eaff21b08cb4e085427189f20031573863046f8" },
    { "logits-asym-avx512", "3b69e82b37149ae2e970fd68bc93055113ec713a5d1009fd00d27ec1b90bee6b" },
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

static void check_sum(const char *what, const char *path)
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
    test_fail(__FILE__, __LINE__, "%s: no recorded sum (sha256 %s)", what, sha);
    n_missing++;
}

/* Every command runs inside the test's folder on plain names, so no path
 * that differs between runs (the folder has the pid) lands in a file. */
static char g_dir[4096], g_bin[4096], g_calib[4096];

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
    REQUIRE(realpath("data/calibration.txt", g_calib));
    snprintf(g_dir, sizeof g_dir, "%s", test_tmpdir());
    const char *synth = "synth -o src.gguf --layers 2 --experts 4 --experts-used 2 --seed 7%s%s%s";
    char *log = NULL;
    int rc = run_here(&log, synth, "", "", "");
    REQUIREF(rc == 0, "synth: %s", log ? log : "");
    free(log);
    check_sum("synth-f32", test_tmp("src.gguf"));
    rc = run_here(&log, "imatrix -m src.gguf -f '%s' -c 256 -t 2 -o imat.dat%s%s", g_calib, "", "");
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
            if (rc == 0) check_sum(what, test_tmp("logits.f32"));
        }
    if (!printing()) printf("  golden: %d sums checked, %d without a record\n", n_checked, n_missing);
}
