/* The i-quant codebooks and sign tables: little-endian bytes must have the
 * published sha256 sums (any slip in one entry breaks every file). */
#include "test.h"
#include "quant/quants_blocks.h"
#include <stdint.h>

static void check_sha(const char *name, const void *data, size_t n, const char *want)
{
    const char *path = test_tmp(name);
    FILE *f = fopen(path, "wb");
    REQUIRE(f != NULL);
    REQUIRE(fwrite(data, 1, n, f) == n); /* x86-64 is little-endian */
    fclose(f);
    char *out = NULL;
    int rc = test_run(&out, "sha256sum '%s'", path);
    REQUIRE(rc == 0 && out != NULL);
    CHECKF(strncmp(out, want, 64) == 0, "%s: sha256 %.64s, want %s", name, out, want);
    free(out);
}

TEST(iq_tables_sha256)
{
    check_sha("iq2s_grid", iq2s_grid, sizeof iq2s_grid, "e1aa1473412b0552c2174c30ef22ab4073f6a181b85a17056e8249bd2932fd88");
    check_sha("iq3s_grid", iq3s_grid, sizeof iq3s_grid, "bd1af4945a1717c65610b0284e4628b9a1ba3b306fae3a06f6e5f597356e349f");
    check_sha("iq2xxs_grid", iq2xxs_grid, sizeof iq2xxs_grid, "05826b5d3e472a3a78f196be62ac78acf81df0f909626e12ab9fa2a5d490dd54");
    check_sha("iq2xs_grid", iq2xs_grid, sizeof iq2xs_grid, "06e47aaca60b4dc1d9b5a3f34540437058a6b142b4d7a59d5ded769b4d1bf1de");
    check_sha("iq3xxs_grid", iq3xxs_grid, sizeof iq3xxs_grid, "46e35f5a997efdee6c99ce57854c8a0d4f0ff8ca57e5e8a60c0793ea580acf5d");
    check_sha("ksigns_iq2xs", ksigns_iq2xs, sizeof ksigns_iq2xs, "a76742a603f8beca5212ecce0f1f02f11a4887fd2f7c8b15aca0ea3eb3380c31");
    check_sha("kmask_iq2xs", kmask_iq2xs, sizeof kmask_iq2xs, "5ac9831b2e30eb285ef34f8501620f878432d5c04331ad1ae47f977a83ba41a5");
    check_sha("kvalues_iq4nl", kvalues_iq4nl, sizeof kvalues_iq4nl, "61aa47540aa024b5d6ddaa839b84ffe59f3d5a349af5c6c7ffcb5e0474b46163");
}
