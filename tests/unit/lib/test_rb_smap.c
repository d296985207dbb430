/* rb_smap: the string -> pointer table behind the session maps of the edge
 * and the forwarder. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rb_smap.h"

/* Two session ids with the same 64-bit FNV-1a hash (found by a birthday
 * search). A table that keyed by the hash alone let the second replace the
 * first, and the forwarder then used an attachment its map no longer held
 * after the attachment's edge was freed. */
static const char COLLIDE_A[] = "shlkjdaaphmgmcagk";
static const char COLLIDE_B[] = "smgcjjihomfkdopfj";

static void test_colliding_keys_are_two_entries(void **state)
{
    rb_smap_t *m = rb_smap_new();
    assert_non_null(m);
    int a, b;
    assert_int_equal(rb_smap_put(m, COLLIDE_A, &a, NULL), 0);
    void *old = &old;
    assert_int_equal(rb_smap_put(m, COLLIDE_B, &b, &old), 0);
    assert_null(old);
    assert_int_equal(rb_smap_count(m), 2);
    assert_ptr_equal(rb_smap_get(m, COLLIDE_A), &a);
    assert_ptr_equal(rb_smap_get(m, COLLIDE_B), &b);
    rb_smap_del(m, COLLIDE_A, &a);
    assert_null(rb_smap_get(m, COLLIDE_A));
    assert_ptr_equal(rb_smap_get(m, COLLIDE_B), &b);
    rb_smap_destroy(&m);
    assert_null(m);
    rb_smap_destroy(NULL);
}

static void test_replace_and_del_by_owner(void **state)
{
    rb_smap_t *m = rb_smap_new();
    int a, b;
    /* Keys are borrowed: a replacing owner brings its own copy. */
    char k1[] = "sess-1", k2[] = "sess-1";
    assert_int_equal(rb_smap_put(m, k1, &a, NULL), 0);
    void *old = NULL;
    assert_int_equal(rb_smap_put(m, k2, &b, &old), 0);
    assert_ptr_equal(old, &a);
    assert_int_equal(rb_smap_count(m), 1);
    memset(k1, 'x', sizeof k1 - 1); /* the first owner's key is gone */
    assert_ptr_equal(rb_smap_get(m, "sess-1"), &b);
    /* Only the current owner removes the entry. */
    rb_smap_del(m, "sess-1", &a);
    assert_ptr_equal(rb_smap_get(m, "sess-1"), &b);
    rb_smap_del(m, "sess-1", &b);
    assert_null(rb_smap_get(m, "sess-1"));
    assert_int_equal(rb_smap_count(m), 0);
    rb_smap_del(m, "never", &a);
    rb_smap_destroy(&m);
}

typedef struct {
    rb_smap_t *m;
    size_t seen;
    long sum;
} walk_t;

static void s_visit(void *arg, const char *key, void *val)
{
    walk_t *w = arg;
    w->seen++;
    w->sum += strtol(key + 1, NULL, 10);
    if (w->seen % 2) rb_smap_del(w->m, key, val); /* drops every other one */
}

static void test_grows_and_walks_with_deletes(void **state)
{
    enum { N = 5000 };
    char(*keys)[16] = calloc(N, sizeof *keys);
    rb_smap_t *m = rb_smap_new();
    assert_non_null(keys);
    for (int i = 0; i < N; i++) {
        snprintf(keys[i], sizeof keys[i], "s%d", i);
        assert_int_equal(rb_smap_put(m, keys[i], keys[i], NULL), 0);
    }
    assert_int_equal(rb_smap_count(m), N);
    for (int i = 0; i < N; i++)
        assert_ptr_equal(rb_smap_get(m, keys[i]), keys[i]);
    walk_t w = {m, 0, 0};
    rb_smap_each(m, s_visit, &w);
    assert_int_equal(w.seen, N);
    assert_int_equal(w.sum, (long)N * (N - 1) / 2);
    assert_int_equal(rb_smap_count(m), N / 2);
    size_t left = 0;
    for (int i = 0; i < N; i++)
        left += rb_smap_get(m, keys[i]) != NULL;
    assert_int_equal(left, N / 2);
    rb_smap_destroy(&m);
    free(keys);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_colliding_keys_are_two_entries),
        cmocka_unit_test(test_replace_and_del_by_owner),
        cmocka_unit_test(test_grows_and_walks_with_deletes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
