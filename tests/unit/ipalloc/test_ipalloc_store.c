/* Tests of ipalloc_store against a real redis-server: exhaustion without
 * duplicates, sticky addresses, idempotent leases, releases by the wrong
 * session, exclusions, pool changes under live leases, and two stores on two
 * connections racing for the same pool. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <hiredis/hiredis.h>
#include "../redis_fixture.h"
#include "ipalloc_store.h"
#include "rb_cidr.h"
#include "rb_log.h"
#include "rb_redis.h"

typedef struct {
    rbt_redis_t rs;
    rb_loop_t *loop;
    rb_redis_t *r1, *r2;
    ipalloc_store_t *s1, *s2;
} fx_t;

typedef struct {
    bool done;
    int rc;
    bool rebuilt;
    ipalloc_lease_result_t res;
    char ip[16];
} res_t;

static bool s_done(void *arg)
{
    return ((res_t *)arg)->done;
}

static bool s_ok(void *arg)
{
    return rb_redis_ok(arg);
}

static void s_on_init(void *arg, int rc, bool rebuilt)
{
    res_t *r = arg;
    r->done = true;
    r->rc = rc;
    r->rebuilt = rebuilt;
}

static void s_on_lease(void *arg, ipalloc_lease_result_t res, const char *ip)
{
    res_t *r = arg;
    r->done = true;
    r->res = res;
    snprintf(r->ip, sizeof(r->ip), "%s", ip ? ip : "");
}

static void s_on_release(void *arg, int found)
{
    res_t *r = arg;
    r->done = true;
    r->rc = found;
}

static rb_redis_t *s_redis(fx_t *f)
{
    rb_redis_config_t cfg = {.socket_path = f->rs.sock};
    rb_redis_t *r = rb_redis_new(f->loop, &cfg);
    if (r && !rbt_wait(f->loop, s_ok, r, 3000)) rb_redis_destroy(&r);
    return r;
}

static int setup(void **state)
{
    fx_t *f = calloc(1, sizeof(*f));
    rb_log_init("test", RB_LOG_WARN);
    if (!f || rbt_redis_start(&f->rs) != 0) return -1;
    f->loop = rb_loop_new();
    f->r1 = s_redis(f);
    f->r2 = s_redis(f);
    if (!f->r1 || !f->r2) return -1;
    f->s1 = ipalloc_store_new(f->r1);
    f->s2 = ipalloc_store_new(f->r2);
    *state = f;
    return f->s1 && f->s2 ? 0 : -1;
}

static int teardown(void **state)
{
    fx_t *f = *state;
    ipalloc_store_destroy(&f->s1);
    ipalloc_store_destroy(&f->s2);
    rb_redis_destroy(&f->r1);
    rb_redis_destroy(&f->r2);
    rb_loop_destroy(&f->loop);
    rbt_redis_stop(&f->rs);
    free(f);
    return 0;
}

/* Initialises the pool through s1; returns whether it was rebuilt. */
static bool s_init(fx_t *f, const char *cidrs, const char *exclude)
{
    char err[128];
    rb_pool_t *pool = rb_pool_new(cidrs, exclude, err, sizeof(err));
    assert_non_null(pool);
    res_t r = {0};
    assert_int_equal(ipalloc_store_init_pool(f->s1, pool, s_on_init, &r), 0);
    assert_true(rbt_wait(f->loop, s_done, &r, 5000));
    assert_int_equal(r.rc, 0);
    rb_pool_destroy(&pool);
    return r.rebuilt;
}

static res_t s_lease(fx_t *f, ipalloc_store_t *s, const char *user, const char *sid)
{
    res_t r = {0};
    assert_int_equal(ipalloc_store_lease(s, user, sid, s_on_lease, &r), 0);
    assert_true(rbt_wait(f->loop, s_done, &r, 3000));
    return r;
}

static int s_release(fx_t *f, const char *ip, const char *sid)
{
    res_t r = {0};
    assert_int_equal(ipalloc_store_release(f->s1, ip, sid, s_on_release, &r), 0);
    assert_true(rbt_wait(f->loop, s_done, &r, 3000));
    return r.rc;
}

static void test_exhaust_without_duplicates(void **state)
{
    fx_t *f = *state;
    char seen[8][16];
    assert_true(s_init(f, "10.0.0.0/29", ""));
    /* A /29 has 6 usable addresses (network and broadcast are never used). */
    for (int i = 0; i < 6; i++) {
        char user[16], sid[16];
        snprintf(user, sizeof(user), "u%d", i);
        snprintf(sid, sizeof(sid), "s%d", i);
        res_t r = s_lease(f, f->s1, user, sid);
        assert_int_equal(r.res, IPALLOC_LEASE_OK);
        assert_true(strncmp(r.ip, "10.0.0.", 7) == 0);
        assert_string_not_equal(r.ip, "10.0.0.0");
        assert_string_not_equal(r.ip, "10.0.0.7");
        for (int j = 0; j < i; j++)
            assert_string_not_equal(seen[j], r.ip);
        snprintf(seen[i], sizeof(seen[i]), "%s", r.ip);
    }
    res_t r = s_lease(f, f->s1, "late", "s-late");
    assert_int_equal(r.res, IPALLOC_LEASE_EXHAUSTED);
    assert_int_equal(rbt_cmd_int(&f->rs, "SCARD rb:ip:free"), 0);
    assert_int_equal(rbt_cmd_int(&f->rs, "SCARD rb:ip:leased"), 6);
    /* A release makes room again. */
    assert_int_equal(s_release(f, seen[2], "s2"), 1);
    r = s_lease(f, f->s1, "late", "s-late");
    assert_int_equal(r.res, IPALLOC_LEASE_OK);
    assert_string_equal(r.ip, seen[2]);
}

static void test_sticky_after_release(void **state)
{
    fx_t *f = *state;
    s_init(f, "10.0.0.0/29", "");
    const char *users[] = {"alice", "bob", "carol"};
    for (int i = 0; i < 3; i++) {
        char sid1[32], sid2[32];
        snprintf(sid1, sizeof(sid1), "%s-1", users[i]);
        snprintf(sid2, sizeof(sid2), "%s-2", users[i]);
        res_t a = s_lease(f, f->s1, users[i], sid1);
        assert_int_equal(a.res, IPALLOC_LEASE_OK);
        assert_int_equal(s_release(f, a.ip, sid1), 1);
        /* With 6 free addresses, a random pick would match 1 time in 6. */
        res_t b = s_lease(f, f->s1, users[i], sid2);
        assert_int_equal(b.res, IPALLOC_LEASE_OK);
        assert_string_equal(a.ip, b.ip);
        assert_int_equal(s_release(f, "", sid2), 1); /* by session only */
    }
    assert_int_equal(rbt_cmd_int(&f->rs, "SCARD rb:ip:free"), 6);
}

static void test_lease_idempotent_per_session(void **state)
{
    fx_t *f = *state;
    s_init(f, "10.0.0.0/29", "");
    res_t a = s_lease(f, f->s1, "alice", "sid-a");
    res_t b = s_lease(f, f->s2, "alice", "sid-a");
    assert_int_equal(a.res, IPALLOC_LEASE_OK);
    assert_int_equal(b.res, IPALLOC_LEASE_OK);
    assert_string_equal(a.ip, b.ip);
    assert_int_equal(rbt_cmd_int(&f->rs, "SCARD rb:ip:leased"), 1);
    assert_int_equal(rbt_cmd_int(&f->rs, "SCARD rb:ip:free"), 5);
}

static void test_release_by_wrong_session(void **state)
{
    fx_t *f = *state;
    s_init(f, "10.0.0.0/29", "");
    res_t a = s_lease(f, f->s1, "alice", "sid-a");
    assert_int_equal(s_release(f, a.ip, "sid-mallory"), 0);
    assert_int_equal(s_release(f, "10.0.0.9", "sid-a"), 0);
    assert_int_equal(rbt_cmd_int(&f->rs, "SCARD rb:ip:free"), 5);
    redisReply *rep = rbt_cmd(&f->rs, "HGET rb:ip:lease:%s session", a.ip);
    assert_string_equal(rep->str, "sid-a");
    freeReplyObject(rep);
    assert_int_equal(s_release(f, a.ip, "sid-a"), 1);
    assert_int_equal(s_release(f, a.ip, "sid-a"), 0); /* twice changes nothing */
    assert_int_equal(rbt_cmd_int(&f->rs, "SCARD rb:ip:free"), 6);
    /* Invalid input is refused before reaching Redis. */
    res_t r = {0};
    assert_int_equal(ipalloc_store_release(f->s1, "10.0.0", "sid-a", s_on_release, &r), -1);
    assert_int_equal(ipalloc_store_lease(f->s1, "", "sid-a", s_on_lease, &r), -1);
}

static void test_exclusions_never_leased(void **state)
{
    fx_t *f = *state;
    s_init(f, "10.0.0.0/29", "10.0.0.2,10.0.0.4/31");
    int n = 0;
    for (;; n++) {
        char sid[16];
        snprintf(sid, sizeof(sid), "s%d", n);
        res_t r = s_lease(f, f->s1, sid, sid);
        if (r.res == IPALLOC_LEASE_EXHAUSTED) break;
        assert_int_equal(r.res, IPALLOC_LEASE_OK);
        assert_string_not_equal(r.ip, "10.0.0.2");
        assert_string_not_equal(r.ip, "10.0.0.4");
        assert_string_not_equal(r.ip, "10.0.0.5");
        assert_true(n < 6);
    }
    assert_int_equal(n, 3); /* .1 .3 .6 */
}

static void test_reinit_keeps_live_leases(void **state)
{
    fx_t *f = *state;
    assert_true(s_init(f, "10.0.0.0/29", ""));
    assert_false(s_init(f, "10.0.0.0/29", "")); /* same pool: nothing to do */
    res_t a = s_lease(f, f->s1, "alice", "sid-a");
    res_t b = s_lease(f, f->s1, "bob", "sid-b");

    /* A wider pool holding both leases: neither becomes free. */
    assert_true(s_init(f, "10.0.0.0/28", ""));
    assert_int_equal(rbt_cmd_int(&f->rs, "SCARD rb:ip:free"), 14 - 2);
    assert_int_equal(rbt_cmd_int(&f->rs, "SISMEMBER rb:ip:free %s", a.ip), 0);
    assert_int_equal(rbt_cmd_int(&f->rs, "SISMEMBER rb:ip:free %s", b.ip), 0);

    /* A different pool: the old leases stay until released, and are not
     * returned to the free set when they are. */
    assert_true(s_init(f, "10.0.1.0/29", ""));
    assert_int_equal(rbt_cmd_int(&f->rs, "SCARD rb:ip:free"), 6);
    res_t again = s_lease(f, f->s1, "alice", "sid-a");
    assert_string_equal(again.ip, a.ip);
    assert_int_equal(s_release(f, a.ip, "sid-a"), 1);
    assert_int_equal(rbt_cmd_int(&f->rs, "SISMEMBER rb:ip:free %s", a.ip), 0);
    assert_int_equal(rbt_cmd_int(&f->rs, "SCARD rb:ip:free"), 6);
    /* Alice's sticky address is outside the pool now: she gets a new one. */
    res_t c = s_lease(f, f->s1, "alice", "sid-a2");
    assert_int_equal(c.res, IPALLOC_LEASE_OK);
    assert_true(strncmp(c.ip, "10.0.1.", 7) == 0);
}

static void test_big_pool_initialises_fast(void **state)
{
    fx_t *f = *state;
    uint64_t t0 = rb_now_ms();
    assert_true(s_init(f, "10.8.0.0/16", ""));
    uint64_t took = rb_now_ms() - t0;
    assert_true(took < 1000);
    assert_int_equal(rbt_cmd_int(&f->rs, "SCARD rb:ip:free"), 65534);
}

#define RACE_N 40

static void test_two_stores_race(void **state)
{
    fx_t *f = *state;
    res_t r[RACE_N];
    memset(r, 0, sizeof(r));
    s_init(f, "10.0.0.0/27", ""); /* 30 addresses */
    /* Every request is in flight at once, alternating connections. */
    for (int i = 0; i < RACE_N; i++) {
        char name[16];
        snprintf(name, sizeof(name), "r%d", i);
        assert_int_equal(ipalloc_store_lease(i % 2 ? f->s2 : f->s1, name, name, s_on_lease, &r[i]),
                         0);
    }
    for (int i = 0; i < RACE_N; i++)
        assert_true(rbt_wait(f->loop, s_done, &r[i], 5000));
    int ok = 0, exhausted = 0;
    for (int i = 0; i < RACE_N; i++) {
        if (r[i].res == IPALLOC_LEASE_EXHAUSTED) {
            exhausted++;
            continue;
        }
        assert_int_equal(r[i].res, IPALLOC_LEASE_OK);
        ok++;
        for (int j = 0; j < i; j++)
            if (r[j].res == IPALLOC_LEASE_OK) assert_string_not_equal(r[i].ip, r[j].ip);
    }
    assert_int_equal(ok, 30);
    assert_int_equal(exhausted, RACE_N - 30);
}

static void test_destroy_drops_callbacks(void **state)
{
    fx_t *f = *state;
    s_init(f, "10.0.0.0/29", "");
    res_t r = {0};
    assert_int_equal(ipalloc_store_lease(f->s2, "x", "x", s_on_lease, &r), 0);
    ipalloc_store_destroy(&f->s2);
    assert_false(rbt_wait(f->loop, s_done, &r, 200));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_exhaust_without_duplicates, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sticky_after_release, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lease_idempotent_per_session, setup, teardown),
        cmocka_unit_test_setup_teardown(test_release_by_wrong_session, setup, teardown),
        cmocka_unit_test_setup_teardown(test_exclusions_never_leased, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reinit_keeps_live_leases, setup, teardown),
        cmocka_unit_test_setup_teardown(test_big_pool_initialises_fast, setup, teardown),
        cmocka_unit_test_setup_teardown(test_two_stores_race, setup, teardown),
        cmocka_unit_test_setup_teardown(test_destroy_drops_callbacks, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
