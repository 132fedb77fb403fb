/* Thread pool: every item processed exactly once, at any thread count. */
#include "test.h"
#include "engine/pool.h"
#include <stdatomic.h>

static _Atomic int hits[10007];
static void mark(void *ctx, int64_t b, int64_t e, int tid)
{
    (void)ctx; (void)tid;
    for (int64_t i = b; i < e; i++) atomic_fetch_add(&hits[i], 1);
}

TEST(pool_covers_each_item_once)
{
    for (int nt = 1; nt <= 4; nt++) {
        moeq_pool *p = moeq_pool_new(nt);
        CHECK(moeq_pool_size(p) == nt);
        for (int rep = 0; rep < 20; rep++) {
            for (int i = 0; i < 10007; i++) atomic_store(&hits[i], 0);
            moeq_pool_for(p, 10007, 1 + rep * 7, mark, NULL);
            for (int i = 0; i < 10007; i++) CHECK(atomic_load(&hits[i]) == 1);
        }
        moeq_pool_free(p);
    }
}
