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

/* Recorded at cbdbc91 (before issue 12's refactors). Logit sums are per ISA. */
static const struct golden golden[] = {
    { "synth-f32", "e9df7ea3daa2137ad3a06b90abd149cd9d2f9ba047fddc3b7dfffcd7bc9bad2b" },
    { "imatrix", "bde59be4ea8b149de7947a9d91dcfccdfe745f48d7a1e296ae50ca96b0cb5abd" },
    { "quantize-F32", "784d427ac02fef8dc24f97fa5ec1a8a89012a8d58abcf5dc4349279c2754b6ce" },
    { "quantize-F16", "0a487a75765679b7b8911eadf43d9de0412b5f671e0180474aac542071ed3bba" },
    { "quantize-BF16", "3c7611d29dab33444ae49a00ff654b256ececeb0c74f6074227a1dc70ad4ed80" },
    { "quantize-Q4_0", "0e5aaa957368a2ae90484176a8f5ff0a9c6b317c1aada0b61c5f436810580c13" },
    { "quantize-Q4_0-imatrix", "a3c617b4ef721b6816707d77ba1ce9846f8eaf6b6c98da8d8aa7b69f2bfedd58" },
    { "quantize-Q8_0", "63dab1d3d4a9ae97a9068fc050809d620288ef9c3057dc4f2a352de7688dc53c" },
    { "quantize-Q8_0-imatrix", "0877ce578e0e3693d8c4b0a4ca314bab25df0a637604aef8b1c5a956684d44d5" },
    { "quantize-Q2_K", "36ea51fbd5dd218dc064116544aa0d8faf1ea57acbc2247edf6117d467e79454" },
    { "quantize-Q2_K-imatrix", "7770e7343bb74a958e516709b903421db1b648a4bc2d7fe3cda90489802f68cb" },
    { "quantize-Q3_K_S", "ca3923438c0ef6dfda60a5857d2bd84d829c068efaba10f191aa7f4808f02bd8" },
    { "quantize-Q3_K_S-imatrix", "7bc9d53d89c4f82dada0c7d7c9ce32e83b0f700a25da4344c452b2de83c6c2ad" },
    { "quantize-Q3_K_M", "1c110c0f2716186b0ffb39d20735eea605afa93096a5dd86865c4d11c27c8682" },
    { "quantize-Q3_K_M-imatrix", "a227cecaac1fc79b740fbe919b17b7dcda1cc0862dff97d688e663ae2310807d" },
    { "quantize-Q3_K_L", "e9143a937c7bc99b94b1a4d6b8f4ff951caf7d7085c0a3909d4873836c5b4bb4" },
    { "quantize-Q3_K_L-imatrix", "2f9103b3825dc301d1c766e7e22a73ea768913f48d1723a8d1ab96a48b93a193" },
    { "quantize-Q4_K_S", "e6e2a1c31ed9ef8778fb531ef3148c983c0767b01de0937ba5ffa1c820589e7e" },
    { "quantize-Q4_K_S-imatrix", "ff809381d0360c6d96b18a977e399c8e13acdfd0df9c1937cf5374291f8a179f" },
    { "quantize-Q4_K_M", "6ac04d809450c4253cc1190d9c19478d374ece49535c339042bb45244520c6a9" },
    { "quantize-Q4_K_M-imatrix", "5ae63b9f4ef3f2d45d061f3667ea0586ad4e83d58440a1650e08a9ea0ed1b4e3" },
    { "quantize-Q5_K_S", "53d614607a77daa94236bc57522c943442d7f71cb2b40e66f6261ce678cb6fe5" },
    { "quantize-Q5_K_S-imatrix", "466d6adf7a4763503cadd58181ea78baec237a24eca571465e8f264b8f50c923" },
    { "quantize-Q5_K_M", "a1f9498b1f61bd0666ef97d85c40bf78aa7dafacdae79d07db212307ec4586f7" },
    { "quantize-Q5_K_M-imatrix", "8603c87cb7833c61381b25f19c323965d5a8c89281c73c85cf7436ea65981b57" },
    { "quantize-Q6_K", "007db162ec250215f7ed7f644ba4c72abd76151a6e9e821561e0d85227ac3ed6" },
    { "quantize-Q6_K-imatrix", "548425d2c647bf21fd7430803274e7fc98aa8bbd7779f10bfd816f1be9ff7fc0" },
    { "quantize-IQ2_XXS", "1d3d614293ef31bc4cc4b5792d2a8a8f742ccb74e0cf198e4407d5debc77c402" },
    { "quantize-IQ2_XXS-imatrix", "2a892cf1b7131304c9d4eb12d192892466e36a4cb146c6b9c365c27887372008" },
    { "quantize-IQ2_XS", "4e9b5cea3c8e35f25d8b1b5a477dc0aca513c8f0b406e869c85f66345808274a" },
    { "quantize-IQ2_XS-imatrix", "0174f29e9a2381e1c76dbcedd8b1573e154aeb8e62c84f9e4282af137c4dbc8a" },
    { "quantize-IQ2_S", "d7be6962888564bf3dac284cb686bf03cf327e3c9ccf89dd8d4b98380b426f8d" },
    { "quantize-IQ2_S-imatrix", "5c8903e34b755ffc88d7efac5a61e24e994b6de99cb0ea477fd3bfd8e31aadf7" },
    { "quantize-IQ2_M", "286e5e40d03c7fdcb8c888fcf6e5511148a772675980b7f41849ffe06c6cabcf" },
    { "quantize-IQ2_M-imatrix", "68493bceb08ced9df02a074f41a19b4ca7c0a7aa974be570f2deb37ca40e3fd4" },
    { "quantize-IQ3_XXS", "f970290fa488ae726b9b3088211c9454575f2189f25246451a349861c427333f" },
    { "quantize-IQ3_XXS-imatrix", "92aa6a49607a91c93ca563a27690ad3c1e30159d6468743a6d314826febf4c5d" },
    { "quantize-IQ3_XS", "3ede272d24868155a35684e3657b2fdaa54803121dcf1cb1db94085bb9003be5" },
    { "quantize-IQ3_XS-imatrix", "d5ce74fcaedfcd5970d5f322812b8faed3f519dd964b007eb2e57926139d597d" },
    { "quantize-IQ3_S", "0e59a3b9796c1e764e4475aa4c6f0f5e2b85684134dab47d4e6a136a488641f3" },
    { "quantize-IQ3_S-imatrix", "72e467c9bae0e166bad99344f9c7d614e782be2fa815baf56aad930288116446" },
    { "quantize-IQ3_M", "74e6b2726a8357a6aeab9ab913e0364da31c530246aaeed52728c77400eef8ca" },
    { "quantize-IQ3_M-imatrix", "22440f6521d027c79f0bc36757e97429b129be5d801c8a08dd0e55be7f138fb6" },
    { "quantize-IQ4_NL", "033cedb3d0f32bec3b1c70e1a3dc170662e715afbeefc5bf19393a8f7fb06fe3" },
    { "quantize-IQ4_NL-imatrix", "c3782026c2d5e7e5e01373709312fb2277ca94b8b5bd9433634b0d7a7164c383" },
    { "quantize-IQ4_XS", "469115f7a1181374bd8109e0cb7ebd09b1bc6d726e4a882c35c9830ab56f5921" },
    { "quantize-IQ4_XS-imatrix", "8e320c497a521667e8d358e855603531a9512d4c446e88283852b2dc06a5dac1" },
    { "quantize-asym-2bitexp", "f513d06c2feaa1859a057fa9d78b7e71f6d4b2bc9467e87ce1e5c0b7185199a0" },
    { "quantize-asym-2bitexp-imatrix", "3c31b7a23d8a3ce6aa4af92e5ca109cbb1c5ddea40a4f1a6987a36a83e060a1d" },
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
    rc = run_here(&log, "imatrix -m src.gguf -f calib.txt -c 256 -t 2 -o imat.dat%s%s%s", "", "", "");
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
