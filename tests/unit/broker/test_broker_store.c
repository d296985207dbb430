/* Tests of broker_store against a real redis-server: the logon steps
 * (begin/commit/abort/end), one session per user, label ownership, the event
 * sequence, snapshots, and unknown sessions. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <hiredis/hiredis.h>
#include "../redis_fixture.h"
#include "broker_store.h"
#include "rb_log.h"
#include "rb_redis.h"

typedef struct {
    rbt_redis_t rs;
    rb_loop_t *loop;
    rb_redis_t *r;
    broker_store_t *s;
} fx_t;

typedef struct {
    bool done;
    int rc;
    broker_begin_result_t res;
    uint64_t seq;
    char sid[64];
    char label[64];
    char ip[16];
    char user[64];
    size_t n;
    char sids[8][64];
    char offer[64];
    char device[64];
    char edge[64];
    char source[64];
} res_t;

static bool s_done(void *arg)
{
    return ((res_t *)arg)->done;
}

static bool s_ok(void *arg)
{
    return rb_redis_ok(arg);
}

static void s_on_begin(void *arg, broker_begin_result_t res, const char *sid, const char *label,
                       uint64_t since_ms, const broker_offer_t *offer)
{
    res_t *r = arg;
    r->done = true;
    r->res = res;
    r->seq = since_ms; /* reused: begin has no seq */
    snprintf(r->sid, sizeof(r->sid), "%s", sid ? sid : "");
    snprintf(r->label, sizeof(r->label), "%s", label ? label : "");
    assert_true((res == BROKER_BEGIN_OFFER) == (offer != NULL));
    if (offer) {
        snprintf(r->offer, sizeof(r->offer), "%s", offer->offer_id);
        snprintf(r->device, sizeof(r->device), "%s", offer->device);
        snprintf(r->edge, sizeof(r->edge), "%s", offer->edge_id);
        snprintf(r->source, sizeof(r->source), "%s", offer->source);
        r->seq = offer->since_ms;
    }
}

static void s_on_seq(void *arg, int rc, uint64_t seq)
{
    res_t *r = arg;
    r->done = true;
    r->rc = rc;
    r->seq = seq;
    assert_true(rc == 0 ? seq > 0 : seq == 0);
}

static void s_on_found(void *arg, int found)
{
    res_t *r = arg;
    r->done = true;
    r->rc = found;
}

static void s_on_end(void *arg, int found, uint64_t seq, const broker_session_t *s)
{
    res_t *r = arg;
    r->done = true;
    r->rc = found;
    r->seq = seq;
    if (s) {
        snprintf(r->ip, sizeof(r->ip), "%s", s->ip);
        snprintf(r->user, sizeof(r->user), "%s", s->user);
        snprintf(r->label, sizeof(r->label), "%s", s->label);
        snprintf(r->sid, sizeof(r->sid), "%s", s->session_id);
    }
}

static void s_on_snapshot(void *arg, int rc, uint64_t seq, const broker_session_t *s, size_t n)
{
    res_t *r = arg;
    r->done = true;
    r->rc = rc;
    r->seq = seq;
    r->n = n;
    for (size_t i = 0; i < n && i < 8; i++)
        snprintf(r->sids[i], sizeof(r->sids[i]), "%s", s[i].session_id);
}

static int setup(void **state)
{
    fx_t *f = calloc(1, sizeof(*f));
    rb_log_init("test", RB_LOG_WARN);
    if (!f || rbt_redis_start(&f->rs) != 0) return -1;
    f->loop = rb_loop_new();
    rb_redis_config_t cfg = {.socket_path = f->rs.sock};
    f->r = rb_redis_new(f->loop, &cfg);
    if (!f->r || !rbt_wait(f->loop, s_ok, f->r, 3000)) return -1;
    f->s = broker_store_new(f->r);
    *state = f;
    return f->s ? 0 : -1;
}

static int teardown(void **state)
{
    fx_t *f = *state;
    broker_store_destroy(&f->s);
    rb_redis_destroy(&f->r);
    rb_loop_destroy(&f->loop);
    rbt_redis_stop(&f->rs);
    free(f);
    return 0;
}

static res_t s_begin(fx_t *f, const char *user, const char *label, const char *alt)
{
    res_t r = {0};
    assert_int_equal(broker_store_begin(f->s, user, label, alt, "laptop", "edge-1",
                                        "127.0.0.1:5000", 120, s_on_begin, &r),
                     0);
    assert_true(rbt_wait(f->loop, s_done, &r, 3000));
    return r;
}

static uint64_t s_commit(fx_t *f, const char *sid, const char *ip)
{
    res_t r = {0};
    assert_int_equal(broker_store_commit(f->s, sid, ip, "x.vpn.test", "ab12", s_on_seq, &r), 0);
    assert_true(rbt_wait(f->loop, s_done, &r, 3000));
    return r.seq;
}

static res_t s_end(fx_t *f, const char *sid)
{
    res_t r = {0};
    assert_int_equal(broker_store_end(f->s, sid, "logoff", s_on_end, &r), 0);
    assert_true(rbt_wait(f->loop, s_done, &r, 3000));
    return r;
}

static res_t s_snapshot(fx_t *f)
{
    res_t r = {0};
    assert_int_equal(broker_store_snapshot(f->s, s_on_snapshot, &r), 0);
    assert_true(rbt_wait(f->loop, s_done, &r, 3000));
    return r;
}

static void test_begin_commit_end(void **state)
{
    fx_t *f = *state;
    res_t b = s_begin(f, "alice", "alice", "alice-00000001");
    assert_int_equal(b.res, BROKER_BEGIN_CLAIMED);
    assert_int_equal(strlen(b.sid), BROKER_SESSION_ID_LEN);
    assert_string_equal(b.label, "alice");
    assert_true(b.seq > 1700000000000ull); /* since_ms, Unix ms */
    redisReply *since = rbt_cmd(&f->rs, "HGET rb:session:%s since", b.sid);
    assert_int_equal(strtoull(since->str, NULL, 10), b.seq);
    freeReplyObject(since);
    /* Pending: not live yet, and the claim would expire. */
    assert_int_equal(rbt_cmd_int(&f->rs, "SCARD rb:sessions:live"), 0);
    assert_true(rbt_cmd_int(&f->rs, "PTTL rb:user:alice") > 0);

    uint64_t seq = s_commit(f, b.sid, "10.0.0.5");
    assert_int_equal(seq, 1);
    assert_int_equal(rbt_cmd_int(&f->rs, "PTTL rb:user:alice"), -1);
    assert_int_equal(rbt_cmd_int(&f->rs, "SISMEMBER rb:sessions:live %s", b.sid), 1);
    redisReply *rep = rbt_cmd(&f->rs, "HGET rb:session:%s token_sha256", b.sid);
    assert_string_equal(rep->str, "ab12");
    freeReplyObject(rep);
    /* A second commit of the same session changes nothing. */
    assert_int_equal(s_commit(f, b.sid, "10.0.0.6"), 0);

    res_t e = s_end(f, b.sid);
    assert_int_equal(e.rc, 1);
    assert_int_equal(e.seq, 2);
    assert_string_equal(e.ip, "10.0.0.5");
    assert_string_equal(e.user, "alice");
    assert_string_equal(e.label, "alice");
    assert_string_equal(e.sid, b.sid);
    assert_int_equal(rbt_cmd_int(&f->rs, "EXISTS rb:user:alice"), 0);
    assert_int_equal(rbt_cmd_int(&f->rs, "EXISTS rb:session:%s", b.sid), 0);
    /* Ending it again: not found, and the sequence does not move. */
    res_t again = s_end(f, b.sid);
    assert_int_equal(again.rc, 0);
    rep = rbt_cmd(&f->rs, "GET rb:events:seq");
    assert_string_equal(rep->str, "2");
    freeReplyObject(rep);
}

static void test_second_begin_exists(void **state)
{
    fx_t *f = *state;
    res_t a = s_begin(f, "alice", "alice", "alice-1");
    res_t b = s_begin(f, "alice", "alice", "alice-1");
    assert_int_equal(b.res, BROKER_BEGIN_EXISTS);
    assert_string_equal(b.sid, a.sid); /* even while the first is pending */
    s_commit(f, a.sid, "10.0.0.5");
    /* Live: an offer for it, stored with its TTL. */
    res_t c = s_begin(f, "alice", "alice", "alice-1");
    assert_int_equal(c.res, BROKER_BEGIN_OFFER);
    assert_string_equal(c.sid, a.sid);
    assert_int_equal(strlen(c.offer), BROKER_OFFER_ID_LEN);
    assert_string_equal(c.device, "laptop");
    assert_string_equal(c.edge, "edge-1");
    assert_string_equal(c.source, "127.0.0.1:5000");
    assert_int_equal(c.seq, a.seq); /* offer's since = the session's */
    long long ttl = rbt_cmd_int(&f->rs, "TTL rb:offer:%s", c.offer);
    assert_true(ttl > 100 && ttl <= 120);
    redisReply *rep = rbt_cmd(&f->rs, "HGET rb:offer:%s user", c.offer);
    assert_string_equal(rep->str, "alice");
    freeReplyObject(rep);
    /* Abort of a live session does nothing; of a pending one frees the user. */
    res_t ab = {0};
    assert_int_equal(broker_store_abort(f->s, a.sid, s_on_found, &ab), 0);
    assert_true(rbt_wait(f->loop, s_done, &ab, 3000));
    assert_int_equal(ab.rc, 0);
    res_t bob = s_begin(f, "bob", "bob", "bob-1");
    memset(&ab, 0, sizeof(ab));
    assert_int_equal(broker_store_abort(f->s, bob.sid, s_on_found, &ab), 0);
    assert_true(rbt_wait(f->loop, s_done, &ab, 3000));
    assert_int_equal(ab.rc, 1);
    assert_int_equal(rbt_cmd_int(&f->rs, "EXISTS rb:user:bob"), 0);
    res_t bob2 = s_begin(f, "bob", "bob", "bob-1");
    assert_int_equal(bob2.res, BROKER_BEGIN_CLAIMED);
    assert_string_not_equal(bob2.sid, bob.sid);
    /* An aborted session cannot be committed. */
    assert_int_equal(s_commit(f, bob.sid, "10.0.0.9"), 0);
}

static void test_label_owned_by_other_user(void **state)
{
    fx_t *f = *state;
    res_t a = s_begin(f, "alice", "alice", "alice-aaaa");
    assert_string_equal(a.label, "alice");
    s_commit(f, a.sid, "10.0.0.1");
    /* "CORP\alice" maps to the same label; alice owns it. */
    res_t b = s_begin(f, "CORP\\alice", "alice", "alice-bbbb");
    assert_int_equal(b.res, BROKER_BEGIN_CLAIMED);
    assert_string_equal(b.label, "alice-bbbb");
    s_commit(f, b.sid, "10.0.0.2");
    /* Labels are owned for ever: after alice logs off, still hers. */
    s_end(f, a.sid);
    s_end(f, b.sid);
    res_t b2 = s_begin(f, "CORP\\alice", "alice", "alice-bbbb");
    assert_string_equal(b2.label, "alice-bbbb");
    res_t a2 = s_begin(f, "alice", "alice", "alice-aaaa");
    assert_string_equal(a2.label, "alice");
    redisReply *rep = rbt_cmd(&f->rs, "GET rb:label:alice");
    assert_string_equal(rep->str, "alice");
    freeReplyObject(rep);
}

static void test_seq_and_snapshot(void **state)
{
    fx_t *f = *state;
    res_t snap = s_snapshot(f);
    assert_int_equal(snap.rc, 0);
    assert_int_equal(snap.seq, 0);
    assert_int_equal(snap.n, 0);

    const char *users[] = {"u1", "u2", "u3"};
    char sids[3][64];
    for (int i = 0; i < 3; i++) {
        res_t b = s_begin(f, users[i], users[i], "alt");
        snprintf(sids[i], sizeof(sids[i]), "%s", b.sid);
        assert_int_equal(s_commit(f, b.sid, "10.0.0.1"), (uint64_t)i + 1);
    }
    /* A pending session is not in the snapshot and does not bump seq. */
    res_t pending = s_begin(f, "u4", "u4", "alt4");
    assert_int_equal(pending.res, BROKER_BEGIN_CLAIMED);
    assert_int_equal(s_end(f, sids[1]).seq, 4);

    snap = s_snapshot(f);
    assert_int_equal(snap.rc, 0);
    assert_int_equal(snap.seq, 4);
    assert_int_equal(snap.n, 2);
    bool saw0 = false, saw2 = false;
    for (size_t i = 0; i < snap.n; i++) {
        saw0 = saw0 || strcmp(snap.sids[i], sids[0]) == 0;
        saw2 = saw2 || strcmp(snap.sids[i], sids[2]) == 0;
        assert_string_not_equal(snap.sids[i], sids[1]);
    }
    assert_true(saw0 && saw2);
}

static void s_on_stats(void *arg, int rc, uint64_t seq, uint64_t sessions)
{
    res_t *r = arg;
    r->done = true;
    r->rc = rc;
    r->seq = seq;
    r->n = (size_t)sessions;
}

static void test_end_unknown_and_stats(void **state)
{
    fx_t *f = *state;
    res_t e = s_end(f, "0123456789abcdef0123456789abcdef");
    assert_int_equal(e.rc, 0);
    res_t b = s_begin(f, "alice", "alice", "alt");
    s_commit(f, b.sid, "10.0.0.1");
    res_t st = {0};
    assert_int_equal(broker_store_stats(f->s, s_on_stats, &st), 0);
    assert_true(rbt_wait(f->loop, s_done, &st, 3000));
    assert_int_equal(st.rc, 0);
    assert_int_equal(st.seq, 1);
    assert_int_equal(st.n, 1);
    /* Bad input never reaches Redis. */
    res_t r = {0};
    assert_int_equal(broker_store_begin(f->s, "", "x", "y", "", "", "", 120, s_on_begin, &r), -1);
    assert_int_equal(broker_store_end(f->s, "", "x", s_on_end, &r), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_begin_commit_end, setup, teardown),
        cmocka_unit_test_setup_teardown(test_second_begin_exists, setup, teardown),
        cmocka_unit_test_setup_teardown(test_label_owned_by_other_user, setup, teardown),
        cmocka_unit_test_setup_teardown(test_seq_and_snapshot, setup, teardown),
        cmocka_unit_test_setup_teardown(test_end_unknown_and_stats, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
