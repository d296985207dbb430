/* rb_cli_heap_follow: when a service's live count has fallen far enough
 * from its peak, the heap freed meanwhile goes back to the kernel. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "rb_cli.h"

/* ASan keeps freed memory in quarantine and has its own allocator: what
 * malloc_trim gives back there says nothing. gcc names it one way, clang
 * the other. */
#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif

static void test_trims_after_a_big_drop_or_at_zero(void **state)
{
    rb_heap_follow_t h = {0};
    assert_false(rb_cli_heap_follow(&h, 0)); /* never had any */
    assert_false(rb_cli_heap_follow(&h, 5000));
    assert_false(rb_cli_heap_follow(&h, 4500)); /* a small dip */
    assert_int_equal(h.peak, 5000);
    assert_true(rb_cli_heap_follow(&h, 5000 - RB_HEAP_TRIM_DROP));
    assert_int_equal(h.peak, 5000 - RB_HEAP_TRIM_DROP); /* the peak starts again */
    assert_false(rb_cli_heap_follow(&h, 4000 - RB_HEAP_TRIM_DROP / 2));
    assert_true(rb_cli_heap_follow(&h, 0)); /* everyone gone: always */
    assert_false(rb_cli_heap_follow(&h, 0));
    assert_false(rb_cli_heap_follow(&h, 3));
    assert_true(rb_cli_heap_follow(&h, 0));
}

#ifndef UNDER_ASAN
static long s_rss_kib(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = 0, rss = 0;
    assert_non_null(f);
    assert_int_equal(fscanf(f, "%ld %ld", &pages, &rss), 2);
    fclose(f);
    return rss * 4;
}

/* 100 MB in 1 KiB blocks, all freed but every 1000th (which keeps glibc
 * from giving any back by itself): the trim returns most of it. */
static void test_freed_heap_goes_back(void **state)
{
    enum { N = 100000 };
    char **p = malloc(N * sizeof *p);
    assert_non_null(p);
    for (size_t i = 0; i < N; i++) {
        p[i] = malloc(1024);
        assert_non_null(p[i]);
        memset(p[i], 1, 1024);
    }
    for (size_t i = 0; i < N; i++)
        if (i % 1000) free(p[i]);
    long before = s_rss_kib();
    rb_heap_follow_t h = {.peak = N};
    assert_true(rb_cli_heap_follow(&h, N / 1000));
    long after = s_rss_kib();
    if (before - after < 50 * 1024)
        fail_msg("RSS %ld -> %ld KiB: the freed heap was not given back", before, after);
    for (size_t i = 0; i < N; i += 1000) free(p[i]);
    free(p);
}
#endif

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_trims_after_a_big_drop_or_at_zero),
#ifndef UNDER_ASAN
        cmocka_unit_test(test_freed_heap_goes_back),
#endif
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
