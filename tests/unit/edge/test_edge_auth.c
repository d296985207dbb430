/* edge_auth: real worker threads answering through the loop. A good
 * password is accepted, a wrong one and an unknown user refused, the unknown
 * user costing about as much time as a known one; cancelled checks are
 * never answered. Hashes use the default cost, as in production. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <unistd.h>

#include "edge_auth.h"
#include "edge_users.h"
#include "rb_loop.h"
#include "rb_passwd.h"

typedef struct {
    int calls;
    bool ok;
    uint64_t at_ms;
} answer_t;

static void s_done(void *arg, bool ok)
{
    answer_t *a = arg;
    a->calls++;
    a->ok = ok;
    a->at_ms = rb_now_ms();
}

static void s_stop(rb_loop_t *loop, void *arg) { rb_loop_stop(loop); }

typedef struct {
    answer_t *a;
    int n;
    uint64_t deadline;
} wait_t;

static void s_tick(rb_loop_t *loop, void *arg)
{
    wait_t *w = arg;
    bool all = true;
    for (int i = 0; i < w->n; i++) all = all && w->a[i].calls > 0;
    if (all || rb_now_ms() > w->deadline) rb_loop_stop(loop);
}

/* Runs the loop until every answer came (or 10 s). */
static void s_wait(rb_loop_t *loop, answer_t *a, int n)
{
    wait_t w = {a, n, rb_now_ms() + 10000};
    rb_timer_t *t = rb_loop_add_timer(loop, 1, true, s_tick, &w);
    rb_loop_run(loop);
    rb_loop_cancel_timer(loop, t);
}

static edge_users_t *s_users(void)
{
    char h[RB_PASSWD_MAX];
    assert_int_equal(rb_passwd_hash("correct horse", RB_PASSWD_DEFAULT_LN, 8, 1, h), 0);
    char path[] = "/tmp/rb-auth-users-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    dprintf(fd, "alice:%s\n", h);
    close(fd);
    char err[256];
    edge_users_t *u = edge_users_load(path, err, sizeof err);
    unlink(path);
    assert_non_null(u);
    return u;
}

/* Times one check alone, in ms. */
static uint64_t s_time_one(rb_loop_t *loop, edge_auth_t *auth, const char *user, const char *pw,
                           bool *ok)
{
    answer_t a = {0};
    uint64_t start = rb_now_ms();
    assert_int_equal(edge_auth_check(auth, user, pw, s_done, &a), 0);
    assert_int_equal(a.calls, 0);   /* never answered from inside the call */
    s_wait(loop, &a, 1);
    assert_int_equal(a.calls, 1);
    *ok = a.ok;
    return a.at_ms - start;
}

static void test_answers_and_timing(void **state)
{
    rb_loop_t *loop = rb_loop_new();
    edge_users_t *users = s_users();
    edge_auth_t *auth = edge_auth_new(loop, users, 2);
    assert_non_null(auth);

    bool ok;
    uint64_t t_good = s_time_one(loop, auth, "alice", "correct horse", &ok);
    assert_true(ok);
    uint64_t t_bad = s_time_one(loop, auth, "alice", "wrong", &ok);
    assert_false(ok);
    uint64_t t_unknown = s_time_one(loop, auth, "mallory", "correct horse", &ok);
    assert_false(ok);
    uint64_t t_empty = s_time_one(loop, auth, "", "", &ok);
    assert_false(ok);
    print_message("good %llu ms, bad %llu ms, unknown %llu ms, empty %llu ms\n",
                  (unsigned long long)t_good, (unsigned long long)t_bad,
                  (unsigned long long)t_unknown, (unsigned long long)t_empty);
    /* The unknown user is hashed at the same cost: same order of time as a
     * known user's wrong password (generous bounds for a busy machine). */
    uint64_t known = t_bad > t_good ? t_bad : t_good;
    assert_true(t_unknown * 3 >= known);
    assert_true(t_unknown <= known * 3 + 20);
    assert_true(known >= 5);   /* really scrypt at the default cost */

    edge_auth_destroy(&auth);
    assert_null(auth);
    edge_auth_destroy(NULL);
    edge_users_destroy(&users);
    rb_loop_destroy(&loop);
}

static void test_many_and_cancel(void **state)
{
    rb_loop_t *loop = rb_loop_new();
    edge_users_t *users = s_users();
    edge_auth_t *auth = edge_auth_new(loop, users, 2);
    assert_non_null(auth);
    answer_t a[6] = {{0}};
    answer_t cancelled[2] = {{0}};
    for (int i = 0; i < 6; i++)
        assert_int_equal(edge_auth_check(auth, "alice", i % 2 ? "x" : "correct horse", s_done,
                                         &a[i]), 0);
    /* One queued behind the others, one probably running already. */
    assert_int_equal(edge_auth_check(auth, "alice", "correct horse", s_done, &cancelled[0]), 0);
    assert_int_equal(edge_auth_pending(auth), 7);
    edge_auth_cancel(auth, &cancelled[0]);
    edge_auth_cancel(auth, &a[0]);
    s_wait(loop, a + 1, 5);
    /* Leave time for a cancelled answer to (wrongly) arrive. */
    rb_loop_add_timer(loop, 300, false, s_stop, NULL);
    rb_loop_run(loop);
    for (int i = 1; i < 6; i++) {
        assert_int_equal(a[i].calls, 1);
        assert_int_equal(a[i].ok, i % 2 == 0);
    }
    assert_int_equal(a[0].calls, 0);
    assert_int_equal(cancelled[0].calls, 0);
    assert_int_equal(edge_auth_pending(auth), 0);
    /* Destroy with checks still queued: no callback, no leak, no hang. */
    for (int i = 0; i < 2; i++)
        assert_int_equal(edge_auth_check(auth, "alice", "x", s_done, &cancelled[1]), 0);
    edge_auth_destroy(&auth);
    assert_int_equal(cancelled[1].calls, 0);
    edge_users_destroy(&users);
    rb_loop_destroy(&loop);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_answers_and_timing),
        cmocka_unit_test(test_many_and_cancel),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
