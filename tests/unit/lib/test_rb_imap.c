/* rb_imap: the u64 -> pointer table behind the stream and flow tables. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "rb_imap.h"

/* Values are fake pointers derived from the key, so no storage is needed
 * and a wrong value is obvious. */
#define V(k) ((void *)(uintptr_t)(((uint64_t)(k) << 4) | 0x8))

static void test_put_get_del_replace(void **state)
{
    rb_imap_t *m = rb_imap_new();
    assert_non_null(m);
    assert_int_equal(rb_imap_count(m), 0);
    assert_null(rb_imap_get(m, 1));
    assert_null(rb_imap_del(m, 1));

    int a, b, c;
    assert_int_equal(rb_imap_put(m, 1, &a), 0);
    assert_int_equal(rb_imap_put(m, 0, &b), 0); /* 0 is a key like any other */
    assert_int_equal(rb_imap_put(m, UINT64_MAX, &c), 0);
    assert_int_equal(rb_imap_count(m), 3);
    assert_ptr_equal(rb_imap_get(m, 1), &a);
    assert_ptr_equal(rb_imap_get(m, 0), &b);
    assert_ptr_equal(rb_imap_get(m, UINT64_MAX), &c);
    assert_null(rb_imap_get(m, 2));

    /* Replacing keeps the count. */
    assert_int_equal(rb_imap_put(m, 1, &c), 0);
    assert_int_equal(rb_imap_count(m), 3);
    assert_ptr_equal(rb_imap_get(m, 1), &c);

    assert_ptr_equal(rb_imap_del(m, 1), &c);
    assert_int_equal(rb_imap_count(m), 2);
    assert_null(rb_imap_get(m, 1));
    assert_null(rb_imap_del(m, 1)); /* twice: absent */
    assert_int_equal(rb_imap_count(m), 2);

    /* A NULL value is stored, though get cannot tell it from absence. */
    assert_int_equal(rb_imap_put(m, 7, NULL), 0);
    assert_int_equal(rb_imap_count(m), 3);
    assert_null(rb_imap_del(m, 7));
    assert_int_equal(rb_imap_count(m), 2);

    rb_imap_destroy(&m);
    assert_null(m);
}

static void test_destroy_null_safe(void **state)
{
    rb_imap_destroy(NULL);
    rb_imap_t *m = NULL;
    rb_imap_destroy(&m);
    assert_null(m);
    assert_int_equal(rb_imap_count(NULL), 0);
    /* A table still holding entries: the values are not the table's. */
    m = rb_imap_new();
    for (uint64_t k = 1; k <= 100; k++)
        assert_int_equal(rb_imap_put(m, k, V(k)), 0);
    rb_imap_destroy(&m);
    assert_null(m);
}

/* 100k keys take the table through many doublings; every key must still
 * be found, with its own value, during growth and after. */
static void test_growth_100k(void **state)
{
    enum { N = 100000 };
    rb_imap_t *m = rb_imap_new();
    assert_non_null(m);
    /* Spread keys: a multiplicative sequence touches high and low bits. */
    for (uint64_t i = 0; i < N; i++) {
        uint64_t k = i * 0x9e3779b97f4a7c15ULL;
        assert_int_equal(rb_imap_put(m, k, V(i)), 0);
        assert_int_equal(rb_imap_count(m), i + 1);
        /* An early key survives every resize so far. */
        assert_ptr_equal(rb_imap_get(m, 0), V(0));
    }
    for (uint64_t i = 0; i < N; i++)
        assert_ptr_equal(rb_imap_get(m, i * 0x9e3779b97f4a7c15ULL), V(i));
    /* Delete every other key; the rest stay. */
    for (uint64_t i = 0; i < N; i += 2)
        assert_ptr_equal(rb_imap_del(m, i * 0x9e3779b97f4a7c15ULL), V(i));
    assert_int_equal(rb_imap_count(m), N / 2);
    for (uint64_t i = 0; i < N; i++) {
        void *v = rb_imap_get(m, i * 0x9e3779b97f4a7c15ULL);
        if (i % 2)
            assert_ptr_equal(v, V(i));
        else
            assert_null(v);
    }
    rb_imap_destroy(&m);
}

/* Stream ids are sequential (odd or even): the mixing must keep them
 * findable, and a dense range must not collide into wrong answers. */
static void test_sequential_keys(void **state)
{
    enum { N = 20000 };
    rb_imap_t *m = rb_imap_new();
    for (uint64_t k = 1; k <= 2 * N; k += 2)
        assert_int_equal(rb_imap_put(m, k, V(k)), 0);
    assert_int_equal(rb_imap_count(m), N);
    for (uint64_t k = 1; k <= 2 * N; k++) {
        if (k & 1)
            assert_ptr_equal(rb_imap_get(m, k), V(k));
        else
            assert_null(rb_imap_get(m, k));
    }
    /* Keys differing only in the high word are distinct too. */
    for (uint64_t h = 1; h <= 64; h++)
        assert_int_equal(rb_imap_put(m, h << 32 | 1, V(h)), 0);
    assert_int_equal(rb_imap_count(m), N + 64);
    assert_ptr_equal(rb_imap_get(m, 1), V(1));
    for (uint64_t h = 1; h <= 64; h++)
        assert_ptr_equal(rb_imap_get(m, h << 32 | 1), V(h));
    rb_imap_destroy(&m);
}

typedef struct {
    rb_imap_t *m;
    size_t n;
    bool del;
    uint8_t *seen; /* indexed by key */
    size_t nkeys;
} visit_t;

static void s_visit(void *arg, uint64_t key, void *value)
{
    visit_t *v = arg;
    assert_true(key < v->nkeys);
    assert_ptr_equal(value, V(key));
    assert_int_equal(v->seen[key], 0); /* each entry once */
    v->seen[key] = 1;
    v->n++;
    if (v->del) assert_ptr_equal(rb_imap_del(v->m, key), V(key));
}

static void test_each_visits_all(void **state)
{
    enum { N = 5000 };
    rb_imap_t *m = rb_imap_new();
    for (uint64_t k = 0; k < N; k++)
        assert_int_equal(rb_imap_put(m, k, V(k)), 0);
    uint8_t *seen = calloc(N, 1);
    visit_t v = {m, 0, false, seen, N};
    rb_imap_each(m, s_visit, &v);
    assert_int_equal(v.n, N);
    for (size_t k = 0; k < N; k++)
        assert_int_equal(seen[k], 1);
    assert_int_equal(rb_imap_count(m), N);

    /* Deleting the visited entry from inside the callback: every entry is
     * still visited exactly once and the table ends empty. */
    memset(seen, 0, N);
    v = (visit_t){m, 0, true, seen, N};
    rb_imap_each(m, s_visit, &v);
    assert_int_equal(v.n, N);
    for (size_t k = 0; k < N; k++)
        assert_int_equal(seen[k], 1);
    assert_int_equal(rb_imap_count(m), 0);
    for (uint64_t k = 0; k < N; k++)
        assert_null(rb_imap_get(m, k));

    /* An empty table calls nothing; the table is still usable. */
    v = (visit_t){m, 0, false, seen, N};
    rb_imap_each(m, s_visit, &v);
    assert_int_equal(v.n, 0);
    assert_int_equal(rb_imap_put(m, 3, V(3)), 0);
    assert_ptr_equal(rb_imap_get(m, 3), V(3));
    free(seen);
    rb_imap_destroy(&m);
}

/* Deleting only some entries from the callback (every third), chained in
 * the same buckets as survivors. */
typedef struct {
    rb_imap_t *m;
    size_t visits;
} thirds_t;

static void s_del_thirds(void *arg, uint64_t key, void *value)
{
    thirds_t *t = arg;
    t->visits++;
    if (key % 3 == 0) rb_imap_del(t->m, key);
}

static void test_each_partial_delete(void **state)
{
    enum { N = 3000 };
    rb_imap_t *m = rb_imap_new();
    for (uint64_t k = 0; k < N; k++)
        assert_int_equal(rb_imap_put(m, k, V(k)), 0);
    thirds_t t = {m, 0};
    rb_imap_each(m, s_del_thirds, &t);
    assert_int_equal(t.visits, N);
    assert_int_equal(rb_imap_count(m), N - N / 3);
    for (uint64_t k = 0; k < N; k++) {
        if (k % 3 == 0)
            assert_null(rb_imap_get(m, k));
        else
            assert_ptr_equal(rb_imap_get(m, k), V(k));
    }
    rb_imap_destroy(&m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_put_get_del_replace), cmocka_unit_test(test_destroy_null_safe),
        cmocka_unit_test(test_growth_100k),         cmocka_unit_test(test_sequential_keys),
        cmocka_unit_test(test_each_visits_all),     cmocka_unit_test(test_each_partial_delete),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
