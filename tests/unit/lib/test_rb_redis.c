/* Tests of rb_redis against a real redis-server: round trips through the
 * loop, the command timeout, reconnection after the server dies and comes
 * back, NOSCRIPT recovery, cancellation and AUTH. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <hiredis/hiredis.h>
#include "../redis_fixture.h"
#include "rb_log.h"
#include "rb_redis.h"

typedef struct {
    rbt_redis_t rs;
    rb_loop_t *loop;
    rb_redis_t *r;
} fx_t;

/* What a callback saw. */
typedef struct {
    bool called;
    bool null_reply;
    int type;
    long long integer;
    char str[128];
} got_t;

static void s_got(void *arg, const struct redisReply *rep)
{
    got_t *g = arg;
    g->called = true;
    g->null_reply = rep == NULL;
    if (rep) {
        g->type = rep->type;
        g->integer = rep->integer;
        if (rep->str) snprintf(g->str, sizeof(g->str), "%s", rep->str);
    }
}

static bool s_called(void *arg)
{
    return ((got_t *)arg)->called;
}

static bool s_ok(void *arg)
{
    return rb_redis_ok(arg);
}

static bool s_not_ok(void *arg)
{
    return !rb_redis_ok(arg);
}

static rb_redis_t *s_connect(fx_t *f, unsigned timeout_ms, const char *password)
{
    rb_redis_config_t cfg = {
        .socket_path = f->rs.sock, .password = password, .timeout_ms = timeout_ms, .ping_ms = 100};
    return rb_redis_new(f->loop, &cfg);
}

static int setup(void **state)
{
    fx_t *f = calloc(1, sizeof(*f));
    rb_log_init("test", RB_LOG_WARN);
    if (!f || rbt_redis_start(&f->rs) != 0) return -1;
    f->loop = rb_loop_new();
    f->r = s_connect(f, 300, NULL);
    if (!f->loop || !f->r || !rbt_wait(f->loop, s_ok, f->r, 3000)) return -1;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx_t *f = *state;
    rb_redis_destroy(&f->r);
    rb_loop_destroy(&f->loop);
    rbt_redis_stop(&f->rs);
    free(f);
    return 0;
}

static void test_round_trip(void **state)
{
    fx_t *f = *state;
    got_t set = {0}, get = {0};
    const char *a1[] = {"SET", "rb:test:k", "v\0x"};
    size_t l1[] = {3, 9, 3};
    const char *a2[] = {"GET", "rb:test:k"};
    assert_int_equal(rb_redis_command(f->r, 3, a1, l1, s_got, &set), 0);
    assert_int_equal(rb_redis_command(f->r, 2, a2, NULL, s_got, &get), 0);
    assert_true(rbt_wait(f->loop, s_called, &get, 2000));
    assert_true(set.called);
    assert_int_equal(set.type, REDIS_REPLY_STATUS);
    assert_int_equal(get.type, REDIS_REPLY_STRING);
    assert_string_equal(get.str, "v"); /* binary-safe: "v\0x" stored as 3 bytes */
    assert_int_equal(rbt_cmd_int(&f->rs, "STRLEN rb:test:k"), 3);
    assert_int_equal(rb_redis_pending(f->r), 0);
}

static void test_timeout_then_recovers(void **state)
{
    fx_t *f = *state;
    got_t blocked = {0}, after = {0};
    /* BLPOP holds the connection for 2 s, longer than the 300 ms timeout. */
    const char *a[] = {"BLPOP", "rb:test:never", "2"};
    uint64_t t0 = rb_now_ms();
    assert_int_equal(rb_redis_command(f->r, 3, a, NULL, s_got, &blocked), 0);
    assert_true(rbt_wait(f->loop, s_called, &blocked, 3000));
    uint64_t took = rb_now_ms() - t0;
    assert_true(blocked.null_reply);
    assert_true(took >= 250 && took < 1500);
    /* The connection was replaced; the next command works. */
    assert_true(rbt_wait(f->loop, s_ok, f->r, 3000));
    const char *p[] = {"PING"};
    assert_int_equal(rb_redis_command(f->r, 1, p, NULL, s_got, &after), 0);
    assert_true(rbt_wait(f->loop, s_called, &after, 2000));
    assert_string_equal(after.str, "PONG");
    assert_true(rb_redis_reconnects(f->r) >= 1);
}

static void test_reconnect_after_restart(void **state)
{
    fx_t *f = *state;
    got_t inflight = {0}, after = {0};
    const char *a[] = {"BLPOP", "rb:test:never", "1"};
    assert_int_equal(rb_redis_command(f->r, 3, a, NULL, s_got, &inflight), 0);
    rbt_redis_kill(&f->rs);
    /* The command in flight is answered (with NULL), the link goes down. */
    assert_true(rbt_wait(f->loop, s_called, &inflight, 3000));
    assert_true(inflight.null_reply);
    assert_true(rbt_wait(f->loop, s_not_ok, f->r, 3000));
    const char *p[] = {"PING"};
    got_t refused = {0};
    assert_int_equal(rb_redis_command(f->r, 1, p, NULL, s_got, &refused), -1);

    uint64_t before = rb_redis_reconnects(f->r);
    assert_int_equal(rbt_redis_spawn(&f->rs), 0);
    assert_true(rbt_wait(f->loop, s_ok, f->r, 8000));
    assert_true(rb_redis_reconnects(f->r) > before);
    assert_int_equal(rb_redis_command(f->r, 1, p, NULL, s_got, &after), 0);
    assert_true(rbt_wait(f->loop, s_called, &after, 2000));
    assert_string_equal(after.str, "PONG");
    assert_false(refused.called);
}

static void test_noscript_recovery(void **state)
{
    fx_t *f = *state;
    rb_redis_script_t *s =
        rb_redis_script(f->r, "redis.call('SET', KEYS[1], ARGV[1]) return tonumber(ARGV[1]) + 1");
    assert_non_null(s);
    const char *a[] = {"rb:test:lua", "41"};
    got_t g1 = {0}, flushed = {0}, g2 = {0};
    assert_int_equal(rb_redis_eval(f->r, s, 1, 2, a, NULL, s_got, &g1), 0);
    assert_true(rbt_wait(f->loop, s_called, &g1, 2000));
    assert_int_equal(g1.type, REDIS_REPLY_INTEGER);
    assert_int_equal(g1.integer, 42);

    const char *fl[] = {"SCRIPT", "FLUSH"};
    assert_int_equal(rb_redis_command(f->r, 2, fl, NULL, s_got, &flushed), 0);
    assert_true(rbt_wait(f->loop, s_called, &flushed, 2000));

    const char *b[] = {"rb:test:lua", "99"};
    assert_int_equal(rb_redis_eval(f->r, s, 1, 2, b, NULL, s_got, &g2), 0);
    assert_true(rbt_wait(f->loop, s_called, &g2, 2000));
    assert_int_equal(g2.type, REDIS_REPLY_INTEGER);
    assert_int_equal(g2.integer, 100);
    redisReply *v = rbt_cmd(&f->rs, "GET rb:test:lua");
    assert_string_equal(v->str, "99");
    freeReplyObject(v);
}

static void test_cancel(void **state)
{
    fx_t *f = *state;
    got_t cancelled = {0}, later = {0};
    const char *p[] = {"PING"};
    assert_int_equal(rb_redis_command(f->r, 1, p, NULL, s_got, &cancelled), 0);
    rb_redis_cancel(f->r, &cancelled);
    assert_int_equal(rb_redis_command(f->r, 1, p, NULL, s_got, &later), 0);
    assert_true(rbt_wait(f->loop, s_called, &later, 2000));
    assert_false(cancelled.called);
}

static void test_auth(void **state)
{
    fx_t *f = *state;
    redisReply *rep = rbt_cmd(&f->rs, "CONFIG SET requirepass s3cret");
    freeReplyObject(rep);
    rb_redis_t *bad = s_connect(f, 300, "wrong");
    rb_redis_t *good = s_connect(f, 300, "s3cret");
    assert_true(rbt_wait(f->loop, s_ok, good, 3000));
    /* Give the bad one time to fail its AUTH and its PING. */
    assert_false(rbt_wait(f->loop, s_ok, bad, 500));
    rb_redis_destroy(&bad);
    rb_redis_destroy(&good);
    assert_null(good);
    rep = redisCommand(f->rs.sync, "AUTH s3cret");
    freeReplyObject(rep);
}

static void test_destroy_with_pending(void **state)
{
    fx_t *f = *state;
    got_t g = {0};
    rb_redis_t *r = s_connect(f, 300, NULL);
    assert_true(rbt_wait(f->loop, s_ok, r, 3000));
    const char *a[] = {"BLPOP", "rb:test:never", "1"};
    assert_int_equal(rb_redis_command(r, 3, a, NULL, s_got, &g), 0);
    rb_redis_destroy(&r);
    rb_redis_destroy(&r); /* NULL is accepted */
    /* Dropped without a callback. */
    assert_false(rbt_wait(f->loop, s_called, &g, 200));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timeout_then_recovers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reconnect_after_restart, setup, teardown),
        cmocka_unit_test_setup_teardown(test_noscript_recovery, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel, setup, teardown),
        cmocka_unit_test_setup_teardown(test_auth, setup, teardown),
        cmocka_unit_test_setup_teardown(test_destroy_with_pending, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
