/*
 * alloc_count.c: counts the heap allocation calls of the test binary, so a
 * test can assert that a stretch of code (the engine's decode step) makes
 * none. In the release build this file defines malloc, calloc, realloc,
 * free and the aligned allocators, forwarding each to glibc's own
 * (__libc_malloc, ...) and counting every call while counting is on.
 * Under AddressSanitizer the sanitizer owns those symbols, so nothing is
 * defined and test_alloc_counting() says no (its tests skip there; the
 * release suite carries them). Only test.h's declarations are its
 * interface; no other file includes anything from it.
 */
#include "test.h"

#include <errno.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#if defined(__SANITIZE_ADDRESS__)
#define MOEQ_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MOEQ_ASAN 1
#endif
#endif

#ifdef MOEQ_ASAN

int test_alloc_counting(void) { return 0; }
void test_alloc_count_start(void) {}
long test_alloc_count_stop(void) { return -1; }

#else

void *__libc_malloc(size_t n);
void *__libc_calloc(size_t n, size_t size);
void *__libc_realloc(void *p, size_t n);
void *__libc_memalign(size_t align, size_t n);
void  __libc_free(void *p);

static atomic_int  counting;
static atomic_long calls;

static inline void count(void)
{
    if (atomic_load_explicit(&counting, memory_order_relaxed))
        atomic_fetch_add_explicit(&calls, 1, memory_order_relaxed);
}

void *malloc(size_t n) { count(); return __libc_malloc(n); }
void *calloc(size_t n, size_t size) { count(); return __libc_calloc(n, size); }
void *realloc(void *p, size_t n) { count(); return __libc_realloc(p, n); }
void free(void *p) { if (p) count(); __libc_free(p); }
void *memalign(size_t align, size_t n) { count(); return __libc_memalign(align, n); }
void *aligned_alloc(size_t align, size_t n) { count(); return __libc_memalign(align, n); }

int posix_memalign(void **out, size_t align, size_t n)
{
    if (align < sizeof(void *) || (align & (align - 1))) return EINVAL;
    count();
    void *p = __libc_memalign(align, n);
    if (!p && n) return ENOMEM;
    *out = p;
    return 0;
}

int test_alloc_counting(void) { return 1; }

void test_alloc_count_start(void)
{
    atomic_store(&calls, 0);
    atomic_store(&counting, 1);
}

long test_alloc_count_stop(void)
{
    atomic_store(&counting, 0);
    return atomic_load(&calls);
}

#endif
