/* Tests of ipalloc_store against a real redis-server: exhaustion without
 * duplicates, sticky addresses, idempotent leases, releases by the wrong
 * session, exclusions, pool changes under live leases, two stores on two
 * connections racing for the same pool; take-overs (moved, idempotent,
 * fallback, racing with leases), static reservations, group pools and their
 * stats; the reconcile (leases of ended sessions released, moved to the live
 * successor of the same user only, young leases and reservations kept). */
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
    char how[16];
    bool takeover_missed, reserved_busy, own_released;
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

static void s_on_lease(void *arg, const ipalloc_lease_t *l)
{
    res_t *r = arg;
    r->done = true;
    r->res = l->res;
    snprintf(r->ip, sizeof(r->ip), "%s", l->ip ? l->ip : "");
    snprintf(r->how, sizeof(r->how), "%s", l->how ? l->how : "");
    r->takeover_missed = l->takeover_missed;
    r->reserved_busy = l->reserved_busy;
    r->own_released = l->own_released;
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

/* Initialises pool `name` through store s; returns whether it was rebuilt. */
static bool s_init_pool(fx_t *f, ipalloc_store_t *s, const char *name, const char *cidrs,
                        const char *exclude, const ipalloc_reservation_t *res, size_t nres)
{
    char err[128];
    rb_pool_t *pool = rb_pool_new(cidrs, exclude, err, sizeof(err));
    assert_non_null(pool);
    res_t r = {0};
    assert_int_equal(ipalloc_store_init_pool(s, name, pool, res, nres, s_on_init, &r), 0);
    assert_true(rbt_wait(f->loop, s_done, &r, 5000));
    assert_int_equal(r.rc, 0);
    rb_pool_destroy(&pool);
    return r.rebuilt;
}

/* The default pool, through s1. */
static bool s_init(fx_t *f, const char *cidrs, const char *exclude)
{
    return s_init_pool(f, f->s1, IPALLOC_DEFAULT_POOL, cidrs, exclude, NULL, 0);
}

static res_t s_lease_req(fx_t *f, ipalloc_store_t *s, const ipalloc_lease_req_t *q)
{
    res_t r = {0};
    assert_int_equal(ipalloc_store_lease(s, q, s_on_lease, &r), 0);
    assert_true(rbt_wait(f->loop, s_done, &r, 3000));
    return r;
}

static res_t s_lease(fx_t *f, ipalloc_store_t *s, const char *user, const char *sid)
{
    ipalloc_lease_req_t q = {.user = user, .session = sid, .pool = IPALLOC_DEFAULT_POOL};
    return s_lease_req(f, s, &q);
}

static res_t s_take_over(fx_t *f, ipalloc_store_t *s, const char *user, const char *sid,
                         const char *old)
{
    ipalloc_lease_req_t q = {
        .user = user, .session = sid, .take_over = old, .pool = IPALLOC_DEFAULT_POOL};
    return s_lease_req(f, s, &q);
}

/* The string value of a Redis key, "" when missing. */
static void s_get(fx_t *f, const char *key, char out[64])
{
    redisReply *rep = rbt_cmd(&f->rs, "GET %s", key);
    snprintf(out, 64, "%s", rep && rep->type == REDIS_REPLY_STRING ? rep->str : "");
    freeReplyObject(rep);
}

static void s_hget(fx_t *f, const char *key, const char *field, char out[64])
{
    redisReply *rep = rbt_cmd(&f->rs, "HGET %s %s", key, field);
    snprintf(out, 64, "%s", rep && rep->type == REDIS_REPLY_STRING ? rep->str : "");
    freeReplyObject(rep);
}

static int s_release(fx_t *f, const char *ip, const char *sid)
{
    res_t r = {0};
    assert_int_equal(ipalloc_store_release(f->s1, ip, sid, s_on_release, &r), 0);
    assert_true(rbt_wait(f->loop, s_done, &r, 3000));
    return r.rc;
}

typedef struct {
    bool done;
    int rc;
    uint64_t moved, released;
} rec_t;

static void s_on_reconcile(void *arg, int rc, uint64_t moved, uint64_t released)
{
    rec_t *r = arg;
    r->done = true;
    r->rc = rc;
    r->moved = moved;
    r->released = released;
}

static bool s_rec_done(void *arg)
{
    return ((rec_t *)arg)->done;
}

#define GRACE_MS 10000

/* A reconcile run as if at now + ahead_ms (so leases look that old). */
static rec_t s_reconcile(fx_t *f, const ipalloc_live_t *live, size_t n, uint64_t ahead_ms)
{
    rec_t r = {0};
    assert_int_equal(
        ipalloc_store_reconcile(f->s1, live, n, GRACE_MS, rb_wall_ms() + ahead_ms, s_on_reconcile, &r),
        0);
    assert_true(rbt_wait(f->loop, s_rec_done, &r, 3000));
    assert_int_equal(r.rc, 0);
    return r;
}

static void test_reconcile_releases_and_moves(void **state)
{
    fx_t *f = *state;
    char v[64];
    s_init(f, "10.0.0.0/29", "");
    /* gone: ended, its release lost. old: ended predecessor of alice's live
     * "new" (take-over lost). bob: live and fine. */
    res_t gone = s_lease(f, f->s1, "carol", "gone");
    res_t old = s_lease(f, f->s1, "alice", "old");
    res_t bob = s_lease(f, f->s1, "bob", "bobs");
    assert_int_equal(rbt_cmd_int(&f->rs, "SCARD rb:ip:free"), 3);
    const ipalloc_live_t live[] = {{"new", old.ip, "alice"}, {"bobs", bob.ip, "bob"}};
    /* Young leases are left alone: a logon or take-over may be under way. */
    rec_t r = s_reconcile(f, live, 2, 0);
    assert_int_equal(r.moved, 0);
    assert_int_equal(r.released, 0);
    r = s_reconcile(f, live, 2, GRACE_MS + 1);
    assert_int_equal(r.moved, 1);
    assert_int_equal(r.released, 1);
    /* gone's address is back in the free set, its keys gone. */
    char k[64];
    snprintf(k, sizeof(k), "rb:ip:lease:%s", gone.ip);
    assert_int_equal(rbt_cmd_int(&f->rs, "EXISTS %s", k), 0);
    assert_int_equal(rbt_cmd_int(&f->rs, "SISMEMBER rb:ip:free %s", gone.ip), 1);
    assert_int_equal(rbt_cmd_int(&f->rs, "SISMEMBER rb:ip:leased %s", gone.ip), 0);
    assert_int_equal(rbt_cmd_int(&f->rs, "EXISTS rb:ip:session:gone"), 0);
    /* old's address now new's, as a take-over would have left it. */
    snprintf(k, sizeof(k), "rb:ip:lease:%s", old.ip);
    s_hget(f, k, "session", v);
    assert_string_equal(v, "new");
    s_hget(f, k, "user", v);
    assert_string_equal(v, "alice");
    s_get(f, "rb:ip:session:new", v);
    assert_string_equal(v, old.ip);
    s_get(f, "rb:ip:user:alice", v);
    assert_string_equal(v, old.ip);
    assert_int_equal(rbt_cmd_int(&f->rs, "EXISTS rb:ip:session:old"), 0);
    assert_int_equal(rbt_cmd_int(&f->rs, "SISMEMBER rb:ip:free %s", old.ip), 0);
    /* The move counts as a change: the grace period starts again. */
    s_hget(f, k, "since", v);
    assert_true(strtoull(v, NULL, 10) > rb_wall_ms() + GRACE_MS / 2);
    /* bob untouched. */
    snprintf(k, sizeof(k), "rb:ip:lease:%s", bob.ip);
    s_hget(f, k, "session", v);
    assert_string_equal(v, "bobs");
    /* A take-over arriving late finds the work done. */
    res_t t = s_take_over(f, f->s1, "alice", "new", "old");
    assert_string_equal(t.ip, old.ip);
    /* Idempotent: a second run (another broker's) changes nothing. */
    r = s_reconcile(f, live, 2, 3 * GRACE_MS);
    assert_int_equal(r.moved, 0);
    assert_int_equal(r.released, 0);
    assert_int_equal(rbt_cmd_int(&f->rs, "SCARD rb:ip:leased"), 2);
    assert_int_equal(rbt_cmd_int(&f->rs, "SCARD rb:ip:free"), 4);
    /* Nobody live: everything goes back. */
    r = s_reconcile(f, NULL, 0, 3 * GRACE_MS);
    assert_int_equal(r.released, 2);
    assert_int_equal(rbt_cmd_int(&f->rs, "SCARD rb:ip:leased"), 0);
    assert_int_equal(rbt_cmd_int(&f->rs, "SCARD rb:ip:free"), 6);
}

static void test_reconcile_never_moves_across_users(void **state)
{
    fx_t *f = *state;
    char v[64], k[64];
    s_init(f, "10.0.0.0/29", "");
    res_t a = s_lease(f, f->s1, "alice", "sa");
    /* A live session of bob claims alice's address (a broker gone wrong):
     * it is not bob's to take. Alice's session ended: released. */
    const ipalloc_live_t live[] = {{"sb", a.ip, "bob"}};
    rec_t r = s_reconcile(f, live, 1, GRACE_MS + 1);
    assert_int_equal(r.moved, 0);
    assert_int_equal(r.released, 1);
    snprintf(k, sizeof(k), "rb:ip:lease:%s", a.ip);
    assert_int_equal(rbt_cmd_int(&f->rs, "EXISTS %s", k), 0);
    assert_int_equal(rbt_cmd_int(&f->rs, "EXISTS rb:ip:session:sb"), 0);
    /* Alice live again with it: never moved to bob, kept for her. */
    a = s_lease(f, f->s1, "alice", "sa2");
    const ipalloc_live_t live2[] = {{"sa2", a.ip, "alice"}, {"sb", a.ip, "bob"}};
    r = s_reconcile(f, live2, 2, GRACE_MS + 1);
    assert_int_equal(r.moved + r.released, 0);
    snprintf(k, sizeof(k), "rb:ip:lease:%s", a.ip);
    s_hget(f, k, "session", v);
    assert_string_equal(v, "sa2");
}

static void test_reconcile_keeps_reservations(void **state)
{
    fx_t *f = *state;
    const ipalloc_reservation_t res[] = {{"alice", 0x0a000005}}; /* 10.0.0.5 */
    s_init_pool(f, f->s1, IPALLOC_DEFAULT_POOL, "10.0.0.0/29", "", res, 1);
    ipalloc_lease_req_t q = {.user = "alice",
                             .session = "sa",
                             .pool = IPALLOC_DEFAULT_POOL,
                             .reserved_ip = 0x0a000005,
                             .reserved_pool = IPALLOC_DEFAULT_POOL};
    assert_string_equal(s_lease_req(f, f->s1, &q).ip, "10.0.0.5");
    res_t other = s_lease(f, f->s1, "bob", "sb");
    rec_t r = s_reconcile(f, NULL, 0, GRACE_MS + 1);
    assert_int_equal(r.released, 2);
    /* The reserved address waits for alice; bob's is free for anyone. */
    assert_int_equal(rbt_cmd_int(&f->rs, "SISMEMBER rb:ip:free 10.0.0.5"), 0);
    assert_int_equal(rbt_cmd_int(&f->rs, "SISMEMBER rb:ip:leased 10.0.0.5"), 0);
    assert_int_equal(rbt_cmd_int(&f->rs, "SISMEMBER rb:ip:free %s", other.ip), 1);
    q.session = "sa2";
    assert_string_equal(s_lease_req(f, f->s1, &q).ip, "10.0.0.5");
}

/* The live successor holds a stand-in (a take-over that fell back): the
 * stand-in goes back and the successor gets its address, as a take-over
 * would. */
static void test_reconcile_replaces_stand_in(void **state)
{
    fx_t *f = *state;
    char v[64];
    s_init(f, "10.0.0.0/29", "");
    res_t old = s_lease(f, f->s1, "alice", "old");
    res_t stand = s_lease(f, f->s1, "alice", "new");
    assert_string_not_equal(old.ip, stand.ip);
    const ipalloc_live_t live[] = {{"new", old.ip, "alice"}};
    rec_t r = s_reconcile(f, live, 1, GRACE_MS + 1);
    assert_int_equal(r.moved, 1);
    assert_int_equal(r.released, 1);
    s_get(f, "rb:ip:session:new", v);
    assert_string_equal(v, old.ip);
    assert_int_equal(rbt_cmd_int(&f->rs, "SISMEMBER rb:ip:free %s", stand.ip), 1);
    assert_int_equal(rbt_cmd_int(&f->rs, "SCARD rb:ip:leased"), 1);
    assert_int_equal(rbt_cmd_int(&f->rs, "SCARD rb:ip:free"), 5);
}

static void test_reconcile_refuses_bad_entries(void **state)
{
    fx_t *f = *state;
    s_init(f, "10.0.0.0/29", "");
    res_t a = s_lease(f, f->s1, "alice", "sa");
    rec_t r = {0};
    const ipalloc_live_t bad[] = {{"sa", a.ip, "alice"}, {"sb", "10.0.0.300", "bob"}};
    assert_int_equal(ipalloc_store_reconcile(f->s1, bad, 2, GRACE_MS, rb_wall_ms() + 2 * GRACE_MS,
                                             s_on_reconcile, &r),
                     -1);
    const ipalloc_live_t bad2[] = {{"", a.ip, "alice"}};
    assert_int_equal(ipalloc_store_reconcile(f->s1, bad2, 1, GRACE_MS, rb_wall_ms() + 2 * GRACE_MS,
                                             s_on_reconcile, &r),
                     -1);
    rbt_wait(f->loop, s_rec_done, &r, 100);
    assert_false(r.done);
    assert_int_equal(rbt_cmd_int(&f->rs, "SCARD rb:ip:leased"), 1);
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
    ipalloc_lease_req_t q = {.user = "", .session = "sid-a", .pool = IPALLOC_DEFAULT_POOL};
    assert_int_equal(ipalloc_store_lease(f->s1, &q, s_on_lease, &r), -1);
    q.user = "alice";
    q.take_over = "sid-a"; /* taking over itself */
    assert_int_equal(ipalloc_store_lease(f->s1, &q, s_on_lease, &r), -1);
    q.take_over = NULL;
    q.pool = "bad:name";
    assert_int_equal(ipalloc_store_lease(f->s1, &q, s_on_lease, &r), -1);
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

static void test_takeover_moves_lease(void **state)
{
    fx_t *f = *state;
    char v[64];
    s_init(f, "10.0.0.0/29", "");
    res_t a = s_lease(f, f->s1, "alice", "s0");
    assert_int_equal(a.res, IPALLOC_LEASE_OK);
    res_t b = s_take_over(f, f->s2, "alice", "s1", "s0");
    assert_int_equal(b.res, IPALLOC_LEASE_OK);
    assert_string_equal(b.ip, a.ip);
    assert_string_equal(b.how, "moved");
    assert_false(b.takeover_missed);
    /* The lease hash, both session keys and the sticky address moved. */
    char key[64];
    snprintf(key, sizeof(key), "rb:ip:lease:%s", a.ip);
    s_hget(f, key, "session", v);
    assert_string_equal(v, "s1");
    s_get(f, "rb:ip:session:s0", v);
    assert_string_equal(v, "");
    s_get(f, "rb:ip:session:s1", v);
    assert_string_equal(v, a.ip);
    s_get(f, "rb:ip:user:alice", v);
    assert_string_equal(v, a.ip);
    assert_int_equal(rbt_cmd_int(&f->rs, "SCARD rb:ip:leased"), 1);
    assert_int_equal(rbt_cmd_int(&f->rs, "SCARD rb:ip:free"), 5);
    assert_int_equal(rbt_cmd_int(&f->rs, "SISMEMBER rb:ip:free %s", a.ip), 0);

    /* Idempotent: the same request again (a retry) returns the same. */
    res_t c = s_take_over(f, f->s1, "alice", "s1", "s0");
    assert_string_equal(c.ip, a.ip);
    assert_string_equal(c.how, "held");
    assert_int_equal(rbt_cmd_int(&f->rs, "SCARD rb:ip:leased"), 1);

    /* The old session's late release changes nothing; the new one's frees. */
    assert_int_equal(s_release(f, a.ip, "s0"), 0);
    assert_int_equal(s_release(f, "", "s0"), 0);
    assert_int_equal(rbt_cmd_int(&f->rs, "SISMEMBER rb:ip:free %s", a.ip), 0);
    assert_int_equal(s_release(f, a.ip, "s1"), 1);
    assert_int_equal(rbt_cmd_int(&f->rs, "SCARD rb:ip:free"), 6);
}

static void test_takeover_falls_back(void **state)
{
    fx_t *f = *state;
    s_init(f, "10.0.0.0/29", "");
    res_t a = s_lease(f, f->s1, "alice", "s0");
    assert_int_equal(s_release(f, a.ip, "s0"), 1);
    /* The old session is gone: a normal lease, her last address first. */
    res_t b = s_take_over(f, f->s1, "alice", "s1", "s0");
    assert_int_equal(b.res, IPALLOC_LEASE_OK);
    assert_string_equal(b.ip, a.ip);
    assert_string_equal(b.how, "sticky");
    assert_true(b.takeover_missed);

    /* Another user cannot take alice's address by naming her session. */
    res_t m = s_take_over(f, f->s1, "mallory", "sm", "s1");
    assert_int_equal(m.res, IPALLOC_LEASE_OK);
    assert_string_not_equal(m.ip, a.ip);
    assert_true(m.takeover_missed);
    char v[64], key[64];
    snprintf(key, sizeof(key), "rb:ip:lease:%s", a.ip);
    s_hget(f, key, "session", v);
    assert_string_equal(v, "s1");

    /* Take-over with an exhausted pool and nothing to take: exhausted. */
    for (int i = 0; i < 4; i++) {
        char sid[16];
        snprintf(sid, sizeof(sid), "fill%d", i);
        assert_int_equal(s_lease(f, f->s1, sid, sid).res, IPALLOC_LEASE_OK);
    }
    res_t x = s_take_over(f, f->s1, "bob", "sb1", "sb0");
    assert_int_equal(x.res, IPALLOC_LEASE_EXHAUSTED);
    assert_true(x.takeover_missed);
    /* But a take-over of a live lease needs no free address. */
    res_t y = s_take_over(f, f->s2, "alice", "s2", "s1");
    assert_int_equal(y.res, IPALLOC_LEASE_OK);
    assert_string_equal(y.ip, a.ip);
}

/* Out of order: the newest session asked first, found nothing to take and
 * got a stand-in address; asked again once the address is where it said,
 * it gets it, and the stand-in goes back. */
static void test_takeover_replaces_stand_in(void **state)
{
    fx_t *f = *state;
    s_init(f, "10.0.0.0/29", "");
    res_t a = s_lease(f, f->s1, "alice", "s0");
    res_t y = s_take_over(f, f->s1, "alice", "s2", "s1"); /* s1 holds nothing yet */
    assert_true(y.takeover_missed);
    assert_string_not_equal(y.ip, a.ip);
    res_t m = s_take_over(f, f->s1, "alice", "s2", "s0");
    assert_string_equal(m.ip, a.ip);
    assert_string_equal(m.how, "moved");
    assert_true(m.own_released);
    assert_int_equal(rbt_cmd_int(&f->rs, "SISMEMBER rb:ip:free %s", y.ip), 1);
    assert_int_equal(rbt_cmd_int(&f->rs, "EXISTS rb:ip:lease:%s", y.ip), 0);
    assert_int_equal(rbt_cmd_int(&f->rs, "SCARD rb:ip:leased"), 1);
    assert_int_equal(rbt_cmd_int(&f->rs, "SCARD rb:ip:free"), 5);
    /* Again: nothing left to move, she holds it. */
    res_t again = s_take_over(f, f->s2, "alice", "s2", "s0");
    assert_string_equal(again.ip, a.ip);
    assert_string_equal(again.how, "held");
    assert_false(again.takeover_missed);
}

/* The invariants every script keeps, checked from Redis: every lease hash
 * is in the leased set and its session points back at it, free and leased
 * never share an address, and the pool is exactly free + leased (no
 * reservations in these tests). */
static void s_check_invariants(fx_t *f, long pool_size)
{
    redisReply *keys = rbt_cmd(&f->rs, "KEYS rb:ip:lease:*");
    assert_int_equal(keys->type, REDIS_REPLY_ARRAY);
    assert_int_equal((long)keys->elements, rbt_cmd_int(&f->rs, "SCARD rb:ip:leased"));
    for (size_t i = 0; i < keys->elements; i++) {
        const char *ip = keys->element[i]->str + strlen("rb:ip:lease:");
        char sid[64], back[64], skey[96];
        s_hget(f, keys->element[i]->str, "session", sid);
        snprintf(skey, sizeof(skey), "rb:ip:session:%s", sid);
        s_get(f, skey, back);
        assert_string_equal(back, ip);
        assert_int_equal(rbt_cmd_int(&f->rs, "SISMEMBER rb:ip:leased %s", ip), 1);
        assert_int_equal(rbt_cmd_int(&f->rs, "SISMEMBER rb:ip:free %s", ip), 0);
    }
    freeReplyObject(keys);
    assert_int_equal(rbt_cmd_int(&f->rs, "SCARD rb:ip:free") +
                         rbt_cmd_int(&f->rs, "SCARD rb:ip:leased"),
                     pool_size);
}

#define TO_USERS 8

static void test_takeover_race(void **state)
{
    fx_t *f = *state;
    char ips[TO_USERS][16];
    s_init(f, "10.0.0.0/28", ""); /* 14 addresses */
    for (int u = 0; u < TO_USERS; u++) {
        char user[16], sid[16];
        snprintf(user, sizeof(user), "u%d", u);
        snprintf(sid, sizeof(sid), "u%d-0", u);
        res_t r = s_lease(f, f->s1, user, sid);
        assert_int_equal(r.res, IPALLOC_LEASE_OK);
        snprintf(ips[u], sizeof(ips[u]), "%s", r.ip);
    }
    /* All at once on two connections: per user three devices taking over
     * the first session, and a fresh user per user racing for the free
     * addresses (6 left for 8). */
    enum { PER = 4 };
    res_t r[TO_USERS][PER];
    char names[TO_USERS][PER][2][16];
    memset(r, 0, sizeof(r));
    for (int u = 0; u < TO_USERS; u++) {
        for (int d = 0; d < PER; d++) {
            ipalloc_lease_req_t q = {.pool = IPALLOC_DEFAULT_POOL};
            char *user = names[u][d][0], *sid = names[u][d][1], old[16];
            if (d < PER - 1) {
                snprintf(user, 16, "u%d", u);
                snprintf(sid, 16, "u%d-%d", u, d + 1);
                snprintf(old, sizeof(old), "u%d-0", u);
                q.take_over = old;
            } else {
                snprintf(user, 16, "fresh%d", u);
                snprintf(sid, 16, "fresh%d", u);
            }
            q.user = user;
            q.session = sid;
            assert_int_equal(
                ipalloc_store_lease((u + d) % 2 ? f->s2 : f->s1, &q, s_on_lease, &r[u][d]), 0);
        }
    }
    for (int u = 0; u < TO_USERS; u++)
        for (int d = 0; d < PER; d++)
            assert_true(rbt_wait(f->loop, s_done, &r[u][d], 5000));
    int moved = 0, ok = 0;
    for (int u = 0; u < TO_USERS; u++) {
        int got_old = 0;
        for (int d = 0; d < PER; d++) {
            if (r[u][d].res != IPALLOC_LEASE_OK) continue;
            ok++;
            if (strcmp(r[u][d].how, "moved") == 0) {
                moved++;
                assert_string_equal(r[u][d].ip, ips[u]);
            }
            if (strcmp(r[u][d].ip, ips[u]) == 0) got_old++;
        }
        /* Exactly one device of each user got the address. */
        assert_int_equal(got_old, 1);
    }
    assert_int_equal(moved, TO_USERS);
    /* Every answer is a different address: nothing was handed out twice
     * (the first sessions lost theirs to the take-overs). */
    for (int i = 0; i < TO_USERS * PER; i++) {
        const res_t *a = &r[i / PER][i % PER];
        if (a->res != IPALLOC_LEASE_OK) continue;
        for (int j = 0; j < i; j++) {
            const res_t *b = &r[j / PER][j % PER];
            if (b->res == IPALLOC_LEASE_OK) assert_string_not_equal(a->ip, b->ip);
        }
    }
    assert_int_equal(ok, 14); /* the pool, exactly */
    s_check_invariants(f, 14);
}

static void test_static_reservation(void **state)
{
    fx_t *f = *state;
    const ipalloc_reservation_t res[] = {{"alice", 0x0a000005}}; /* 10.0.0.5 */
    s_init_pool(f, f->s1, IPALLOC_DEFAULT_POOL, "10.0.0.0/29", "", res, 1);
    assert_int_equal(rbt_cmd_int(&f->rs, "SISMEMBER rb:ip:free 10.0.0.5"), 0);
    assert_int_equal(rbt_cmd_int(&f->rs, "SCARD rb:ip:free"), 5);
    /* Everyone else fills the pool without ever getting .5, even with a
     * sticky address pointing at it. */
    freeReplyObject(rbt_cmd(&f->rs, "SET rb:ip:user:u0 10.0.0.5"));
    for (int i = 0; i < 5; i++) {
        char u[16];
        snprintf(u, sizeof(u), "u%d", i);
        res_t r = s_lease(f, f->s2, u, u);
        assert_int_equal(r.res, IPALLOC_LEASE_OK);
        assert_string_not_equal(r.ip, "10.0.0.5");
    }
    assert_int_equal(s_lease(f, f->s1, "late", "late").res, IPALLOC_LEASE_EXHAUSTED);
    /* Its user gets it, in a full pool. */
    ipalloc_lease_req_t q = {.user = "alice",
                             .session = "sa",
                             .pool = IPALLOC_DEFAULT_POOL,
                             .reserved_ip = 0x0a000005,
                             .reserved_pool = IPALLOC_DEFAULT_POOL};
    res_t a = s_lease_req(f, f->s1, &q);
    assert_int_equal(a.res, IPALLOC_LEASE_OK);
    assert_string_equal(a.ip, "10.0.0.5");
    assert_string_equal(a.how, "reserved");
    /* Released, it waits for her instead of going back to the free set. */
    assert_int_equal(s_release(f, "", "sa"), 1);
    assert_int_equal(rbt_cmd_int(&f->rs, "SISMEMBER rb:ip:free 10.0.0.5"), 0);
    assert_int_equal(s_lease(f, f->s1, "late", "late").res, IPALLOC_LEASE_EXHAUSTED);
    q.session = "sa2";
    assert_string_equal(s_lease_req(f, f->s1, &q).ip, "10.0.0.5");
}

static void test_reservation_added_under_a_live_lease(void **state)
{
    fx_t *f = *state;
    s_init(f, "10.0.0.0/29", "");
    freeReplyObject(rbt_cmd(&f->rs, "SET rb:ip:user:bob 10.0.0.5"));
    res_t b = s_lease(f, f->s1, "bob", "sb");
    assert_string_equal(b.ip, "10.0.0.5");
    /* The config now reserves bob's address for alice: bob keeps it. */
    const ipalloc_reservation_t res[] = {{"alice", 0x0a000005}};
    assert_true(s_init_pool(f, f->s1, IPALLOC_DEFAULT_POOL, "10.0.0.0/29", "", res, 1));
    char v[64];
    s_hget(f, "rb:ip:lease:10.0.0.5", "session", v);
    assert_string_equal(v, "sb");
    ipalloc_lease_req_t q = {.user = "alice",
                             .session = "sa",
                             .pool = IPALLOC_DEFAULT_POOL,
                             .reserved_ip = 0x0a000005,
                             .reserved_pool = IPALLOC_DEFAULT_POOL};
    res_t a = s_lease_req(f, f->s1, &q);
    assert_int_equal(a.res, IPALLOC_LEASE_OK);
    assert_true(a.reserved_busy);
    assert_string_not_equal(a.ip, "10.0.0.5");
    /* When bob lets go, the address is alice's, not the pool's. */
    assert_int_equal(s_release(f, "", "sb"), 1);
    assert_int_equal(rbt_cmd_int(&f->rs, "SISMEMBER rb:ip:free 10.0.0.5"), 0);
    res_t b2 = s_lease(f, f->s1, "bob", "sb2");
    assert_string_not_equal(b2.ip, "10.0.0.5");
    assert_int_equal(s_release(f, "", "sa"), 1);
    q.session = "sa2";
    a = s_lease_req(f, f->s1, &q);
    assert_string_equal(a.ip, "10.0.0.5");
    assert_false(a.reserved_busy);
    /* Dropping the reservation gives the address back to everyone. */
    assert_int_equal(s_release(f, "", "sa2"), 1);
    assert_true(s_init(f, "10.0.0.0/29", ""));
    assert_int_equal(rbt_cmd_int(&f->rs, "SISMEMBER rb:ip:free 10.0.0.5"), 1);
}

typedef struct {
    bool done;
    ipalloc_stats_t st;
    ipalloc_pool_stats_t pools[4];
} stats_res_t;

static void s_on_stats(void *arg, const ipalloc_stats_t *st)
{
    stats_res_t *r = arg;
    r->done = true;
    assert_non_null(st);
    assert_true(st->npools <= 4);
    r->st = *st;
    memcpy(r->pools, st->pools, st->npools * sizeof(*st->pools));
}

static bool s_stats_done(void *arg)
{
    return ((stats_res_t *)arg)->done;
}

static void test_group_pools_and_stats(void **state)
{
    fx_t *f = *state;
    const ipalloc_reservation_t res[] = {{"vip", 0x0a000106}}; /* 10.0.1.6 */
    s_init(f, "10.0.0.0/29", "");
    s_init_pool(f, f->s1, "staff", "10.0.1.0/29", "", res, 1);
    assert_int_equal(rbt_cmd_int(&f->rs, "SCARD rb:ip:g:staff:free"), 5);
    assert_int_equal(rbt_cmd_int(&f->rs, "SCARD rb:ip:free"), 6);
    ipalloc_lease_req_t q = {.user = "sam", .session = "ss", .pool = "staff"};
    res_t s1 = s_lease_req(f, f->s1, &q);
    assert_int_equal(s1.res, IPALLOC_LEASE_OK);
    assert_true(strncmp(s1.ip, "10.0.1.", 7) == 0);
    assert_string_not_equal(s1.ip, "10.0.1.6");
    res_t d = s_lease(f, f->s1, "dora", "sd");
    assert_true(strncmp(d.ip, "10.0.0.", 7) == 0);
    /* A reservation in the staff pool for someone leasing from default. */
    q = (ipalloc_lease_req_t){.user = "vip",
                              .session = "sv",
                              .pool = IPALLOC_DEFAULT_POOL,
                              .reserved_ip = 0x0a000106,
                              .reserved_pool = "staff"};
    assert_string_equal(s_lease_req(f, f->s1, &q).ip, "10.0.1.6");

    stats_res_t r = {0};
    assert_int_equal(ipalloc_store_stats(f->s1, s_on_stats, &r), 0);
    assert_true(rbt_wait(f->loop, s_stats_done, &r, 3000));
    assert_int_equal(r.st.leased, 3);
    assert_int_equal(r.st.npools, 2);
    assert_string_equal(r.pools[0].name, "default");
    assert_int_equal(r.pools[0].size, 6);
    assert_int_equal(r.pools[0].used, 1);
    assert_int_equal(r.pools[0].free, 5);
    assert_string_equal(r.pools[1].name, "staff");
    assert_int_equal(r.pools[1].size, 6);
    assert_int_equal(r.pools[1].used, 2);
    assert_int_equal(r.pools[1].free, 4);
    assert_int_equal(r.pools[1].reserved, 1);

    /* Releases go back to their own pool; the reserved one to nobody. */
    assert_int_equal(s_release(f, "", "ss"), 1);
    assert_int_equal(s_release(f, "", "sv"), 1);
    assert_int_equal(rbt_cmd_int(&f->rs, "SISMEMBER rb:ip:g:staff:free %s", s1.ip), 1);
    assert_int_equal(rbt_cmd_int(&f->rs, "SISMEMBER rb:ip:free %s", s1.ip), 0);
    memset(&r, 0, sizeof(r));
    assert_int_equal(ipalloc_store_stats(f->s1, s_on_stats, &r), 0);
    assert_true(rbt_wait(f->loop, s_stats_done, &r, 3000));
    assert_int_equal(r.pools[1].used, 0);
    assert_int_equal(r.pools[1].free, 5); /* .6 stays reserved, idle */
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
        ipalloc_lease_req_t q = {.user = name, .session = name, .pool = IPALLOC_DEFAULT_POOL};
        assert_int_equal(ipalloc_store_lease(i % 2 ? f->s2 : f->s1, &q, s_on_lease, &r[i]), 0);
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
    ipalloc_lease_req_t q = {.user = "x", .session = "x", .pool = IPALLOC_DEFAULT_POOL};
    assert_int_equal(ipalloc_store_lease(f->s2, &q, s_on_lease, &r), 0);
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
        cmocka_unit_test_setup_teardown(test_takeover_moves_lease, setup, teardown),
        cmocka_unit_test_setup_teardown(test_takeover_falls_back, setup, teardown),
        cmocka_unit_test_setup_teardown(test_takeover_replaces_stand_in, setup, teardown),
        cmocka_unit_test_setup_teardown(test_takeover_race, setup, teardown),
        cmocka_unit_test_setup_teardown(test_static_reservation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reservation_added_under_a_live_lease, setup, teardown),
        cmocka_unit_test_setup_teardown(test_group_pools_and_stats, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reconcile_releases_and_moves, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reconcile_never_moves_across_users, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reconcile_keeps_reservations, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reconcile_replaces_stand_in, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reconcile_refuses_bad_entries, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
