/* Tests of broker_store against a real redis-server: the logon steps
 * (begin/commit/abort/end), one session per user, label ownership, the event
 * sequence, snapshots, unknown sessions; transfer offers and accepts (expiry,
 * the last accept wins, racing logoffs and logons), resume, refresh, the
 * expiry sweep, kicks and the admin lists. */
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
    char groups[64];
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
        snprintf(r->groups, sizeof(r->groups), "%s", s->groups);
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
                                        "127.0.0.1:5000", "staff,ops", 120, s_on_begin, &r),
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
    assert_string_equal(e.groups, "staff,ops"); /* kept with the session */
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
    assert_int_equal(broker_store_begin(f->s, "", "x", "y", "", "", "", "", 120, s_on_begin, &r),
                     -1);
    char many[BROKER_GROUPS_MAX + 2];
    memset(many, 'g', sizeof many - 1);
    many[sizeof many - 1] = '\0';
    assert_int_equal(
        broker_store_begin(f->s, "zed", "zed", "zed-1", "", "", "", many, 120, s_on_begin, &r), -1);
    assert_int_equal(broker_store_end(f->s, "", "x", s_on_end, &r), -1);
}

/* ---- issue 3: transfer, resume, refresh, sweep, kick, lists ---- */

typedef struct {
    bool done;
    broker_transfer_t t;
    char old_sid[64], new_sid[64], reason[32], ip[16], label[64], fqdn[64], old_edge[64];
    char old_groups[64], groups[64];
    bool via;
} xfer_t;

static void s_on_xfer(void *arg, const broker_transfer_t *t)
{
    xfer_t *x = arg;
    x->done = true;
    x->t = *t;
    if (t->res == BROKER_XFER_OK) {
        snprintf(x->old_sid, sizeof(x->old_sid), "%s", t->old.session_id);
        snprintf(x->new_sid, sizeof(x->new_sid), "%s", t->cur.session_id);
        snprintf(x->reason, sizeof(x->reason), "%s", t->reason);
        snprintf(x->ip, sizeof(x->ip), "%s", t->cur.ip);
        snprintf(x->label, sizeof(x->label), "%s", t->cur.label);
        snprintf(x->fqdn, sizeof(x->fqdn), "%s", t->cur.fqdn);
        snprintf(x->old_edge, sizeof(x->old_edge), "%s", t->old.edge_id);
        x->via = t->cur.via_transfer;
        snprintf(x->old_groups, sizeof(x->old_groups), "%s", t->old.groups);
        snprintf(x->groups, sizeof(x->groups), "%s", t->cur.groups);
        assert_string_equal(t->old.ip, t->cur.ip);
        assert_string_equal(t->old.fqdn, t->cur.fqdn);
    }
}

static bool s_xdone(void *arg)
{
    return ((xfer_t *)arg)->done;
}

static xfer_t s_transfer(fx_t *f, const char *offer, const char *user, const char *edge)
{
    xfer_t x = {0};
    assert_int_equal(broker_store_transfer(f->s, offer, user, "phone", edge, "127.0.0.2:6000",
                                           "staff", "cd34", s_on_xfer, &x),
                     0);
    assert_true(rbt_wait(f->loop, s_xdone, &x, 3000));
    return x;
}

static res_t s_begin_ttl(fx_t *f, const char *user, unsigned ttl)
{
    res_t r = {0};
    assert_int_equal(broker_store_begin(f->s, user, user, "alt", "laptop", "edge-1",
                                        "127.0.0.1:5000", "", ttl, s_on_begin, &r),
                     0);
    assert_true(rbt_wait(f->loop, s_done, &r, 3000));
    return r;
}

static long long s_seq(fx_t *f)
{
    redisReply *rep = rbt_cmd(&f->rs, "GET rb:events:seq");
    long long v = rep && rep->str ? atoll(rep->str) : 0;
    freeReplyObject(rep);
    return v;
}

/* A ZSET score as an integer (ms), or -1 when the member is absent. */
static long long s_zscore(fx_t *f, const char *key, const char *member)
{
    redisReply *rep = rbt_cmd(&f->rs, "ZSCORE %s %s", key, member);
    long long v = rep && rep->type == REDIS_REPLY_STRING ? atoll(rep->str) : -1;
    freeReplyObject(rep);
    return v;
}

static void s_assert_hget(fx_t *f, const char *key, const char *field, const char *want)
{
    redisReply *rep = rbt_cmd(&f->rs, "HGET %s %s", key, field);
    assert_non_null(rep);
    assert_int_equal(rep->type, REDIS_REPLY_STRING);
    assert_string_equal(rep->str, want);
    freeReplyObject(rep);
}

static void test_transfer(void **state)
{
    fx_t *f = *state;
    res_t a = s_begin(f, "alice", "alice", "alt");
    s_commit(f, a.sid, "10.0.0.5");
    res_t o = s_begin(f, "alice", "alice", "alt");
    assert_int_equal(o.res, BROKER_BEGIN_OFFER);
    /* Someone else's offer is no offer. */
    assert_int_equal(s_transfer(f, o.offer, "bob", "edge-2").t.res, BROKER_XFER_EXPIRED);
    long long seq0 = s_seq(f);
    xfer_t x = s_transfer(f, o.offer, "alice", "edge-2");
    assert_int_equal(x.t.res, BROKER_XFER_OK);
    assert_string_equal(x.old_sid, a.sid);
    assert_string_not_equal(x.new_sid, a.sid);
    assert_int_equal(strlen(x.new_sid), BROKER_SESSION_ID_LEN);
    assert_string_equal(x.reason, "transferred");
    assert_string_equal(x.ip, "10.0.0.5");
    assert_string_equal(x.label, "alice");
    assert_string_equal(x.old_edge, "edge-1");
    assert_true(x.via);
    /* The new session has the groups its own logon came with. */
    assert_string_equal(x.old_groups, "staff,ops");
    assert_string_equal(x.groups, "staff");
    assert_int_equal(x.t.down_seq, (uint64_t)seq0 + 1);
    assert_int_equal(x.t.up_seq, (uint64_t)seq0 + 2);
    /* Redis: one live session, the new one, with the address; old gone. */
    assert_int_equal(rbt_cmd_int(&f->rs, "SCARD rb:sessions:live"), 1);
    assert_int_equal(rbt_cmd_int(&f->rs, "SISMEMBER rb:sessions:live %s", x.new_sid), 1);
    assert_int_equal(rbt_cmd_int(&f->rs, "EXISTS rb:session:%s", a.sid), 0);
    redisReply *rep = rbt_cmd(&f->rs, "GET rb:user:alice");
    assert_string_equal(rep->str, x.new_sid);
    freeReplyObject(rep);
    char key[80];
    snprintf(key, sizeof(key), "rb:session:%s", x.new_sid);
    s_assert_hget(f, key, "ip", "10.0.0.5");
    s_assert_hget(f, key, "groups", "staff");
    s_assert_hget(f, key, "via_transfer", "1");
    s_assert_hget(f, key, "token_sha256", "cd34");
    s_assert_hget(f, key, "edge", "edge-2");
    s_assert_hget(f, "rb:sessions:by_ip", "10.0.0.5", x.new_sid);
    assert_int_equal(rbt_cmd_int(&f->rs, "ZCARD rb:sessions:seen"), 1);
    assert_true(s_zscore(f, "rb:sessions:seen", x.new_sid) > 1700000000000ll);
    assert_int_equal(rbt_cmd_int(&f->rs, "EXISTS rb:offer:%s", o.offer), 0);
    /* One accept per offer. */
    assert_int_equal(s_transfer(f, o.offer, "alice", "edge-3").t.res, BROKER_XFER_EXPIRED);
    assert_int_equal(s_seq(f), seq0 + 2);
}

static void test_transfer_expired_changes_nothing(void **state)
{
    fx_t *f = *state;
    res_t a = s_begin(f, "alice", "alice", "alt");
    s_commit(f, a.sid, "10.0.0.5");
    res_t o = s_begin_ttl(f, "alice", 1);
    assert_int_equal(o.res, BROKER_BEGIN_OFFER);
    rbt_sleep_ms(1100);
    long long seq0 = s_seq(f);
    assert_int_equal(s_transfer(f, o.offer, "alice", "edge-2").t.res, BROKER_XFER_EXPIRED);
    assert_int_equal(s_seq(f), seq0);
    redisReply *rep = rbt_cmd(&f->rs, "GET rb:user:alice");
    assert_string_equal(rep->str, a.sid);
    freeReplyObject(rep);
    assert_int_equal(rbt_cmd_int(&f->rs, "SISMEMBER rb:sessions:live %s", a.sid), 1);
    assert_int_equal(rbt_cmd_int(&f->rs, "SCARD rb:sessions:live"), 1);
}

static void test_three_accepts(void **state)
{
    fx_t *f = *state;
    res_t a = s_begin(f, "alice", "alice", "alt");
    s_commit(f, a.sid, "10.0.0.5");
    /* Three devices get offers for the same session, then accept in turn:
     * each accept ends whatever session is current; the last one wins. */
    res_t o[3];
    for (int i = 0; i < 3; i++) {
        o[i] = s_begin(f, "alice", "alice", "alt");
        assert_int_equal(o[i].res, BROKER_BEGIN_OFFER);
        assert_string_equal(o[i].sid, a.sid);
    }
    const char *want[] = {"transferred", "replaced", "replaced"};
    char prev[64];
    snprintf(prev, sizeof(prev), "%s", a.sid);
    xfer_t x;
    for (int i = 0; i < 3; i++) {
        char edge[16];
        snprintf(edge, sizeof(edge), "edge-%d", i + 2);
        x = s_transfer(f, o[i].offer, "alice", edge);
        assert_int_equal(x.t.res, BROKER_XFER_OK);
        assert_string_equal(x.reason, want[i]);
        assert_string_equal(x.old_sid, prev); /* the current one, not the offered one */
        assert_string_equal(x.ip, "10.0.0.5");
        snprintf(prev, sizeof(prev), "%s", x.new_sid);
        assert_int_equal(rbt_cmd_int(&f->rs, "SCARD rb:sessions:live"), 1);
    }
    assert_int_equal(rbt_cmd_int(&f->rs, "SISMEMBER rb:sessions:live %s", x.new_sid), 1);
    s_assert_hget(f, "rb:sessions:by_ip", "10.0.0.5", x.new_sid);
}

static void test_transfer_gone_and_pending(void **state)
{
    fx_t *f = *state;
    res_t a = s_begin(f, "alice", "alice", "alt");
    s_commit(f, a.sid, "10.0.0.5");
    res_t o1 = s_begin(f, "alice", "alice", "alt");
    res_t o2 = s_begin(f, "alice", "alice", "alt");
    s_end(f, a.sid); /* logoff races the accept, and wins */
    assert_int_equal(s_transfer(f, o1.offer, "alice", "edge-2").t.res, BROKER_XFER_GONE);
    assert_int_equal(rbt_cmd_int(&f->rs, "EXISTS rb:user:alice"), 0);
    res_t p = s_begin(f, "alice", "alice", "alt"); /* a logon in flight */
    assert_int_equal(p.res, BROKER_BEGIN_CLAIMED);
    assert_int_equal(s_transfer(f, o2.offer, "alice", "edge-2").t.res, BROKER_XFER_PENDING);
    redisReply *rep = rbt_cmd(&f->rs, "GET rb:user:alice");
    assert_string_equal(rep->str, p.sid);
    freeReplyObject(rep);
    /* A pending claim gets no offer either. */
    assert_int_equal(s_begin(f, "alice", "alice", "alt").res, BROKER_BEGIN_EXISTS);
}

typedef struct {
    bool done;
    int rc;
    char why[32];
    uint64_t seq;
    char edge[32], device[32], ip[16];
    uint64_t seen;
} resume_t;

static void s_on_resume(void *arg, int rc, const char *why, uint64_t seq, const broker_session_t *s)
{
    resume_t *r = arg;
    r->done = true;
    r->rc = rc;
    r->seq = seq;
    snprintf(r->why, sizeof(r->why), "%s", why);
    if (s) {
        snprintf(r->edge, sizeof(r->edge), "%s", s->edge_id);
        snprintf(r->device, sizeof(r->device), "%s", s->device);
        snprintf(r->ip, sizeof(r->ip), "%s", s->ip);
        r->seen = s->last_seen_ms;
    }
}

static bool s_rdone(void *arg)
{
    return ((resume_t *)arg)->done;
}

static resume_t s_resume(fx_t *f, const char *sid, const char *tok, const char *device)
{
    resume_t r = {0};
    assert_int_equal(
        broker_store_resume(f->s, sid, tok, device, "edge-9", "127.0.0.9:1", s_on_resume, &r), 0);
    assert_true(rbt_wait(f->loop, s_rdone, &r, 3000));
    return r;
}

static void test_resume(void **state)
{
    fx_t *f = *state;
    res_t a = s_begin(f, "alice", "alice", "alt");
    s_commit(f, a.sid, "10.0.0.5"); /* token sha "ab12" */
    long long seq0 = s_seq(f);
    resume_t r = s_resume(f, a.sid, "ab12", "");
    assert_int_equal(r.rc, 1);
    assert_int_equal(r.seq, (uint64_t)seq0 + 1);
    assert_string_equal(r.edge, "edge-9");
    assert_string_equal(r.device, "laptop"); /* kept: none given */
    assert_string_equal(r.ip, "10.0.0.5");
    assert_true(r.seen > 1700000000000ull);
    char key[80];
    snprintf(key, sizeof(key), "rb:session:%s", a.sid);
    s_assert_hget(f, key, "edge", "edge-9");
    s_assert_hget(f, key, "source", "127.0.0.9:1");
    r = s_resume(f, a.sid, "ab12", "tablet");
    assert_string_equal(r.device, "tablet");
    r = s_resume(f, a.sid, "ab13", "");
    assert_int_equal(r.rc, 0);
    assert_string_equal(r.why, "wrong token");
    r = s_resume(f, "0123456789abcdef0123456789abcdef", "ab12", "");
    assert_int_equal(r.rc, 0);
    assert_string_equal(r.why, "unknown session");
    s_end(f, a.sid);
    r = s_resume(f, a.sid, "ab12", "");
    assert_int_equal(r.rc, 0);
    assert_string_equal(r.why, "unknown session");
    /* A refused resume changes nothing. */
    assert_int_equal(s_seq(f), seq0 + 3);
}

typedef struct {
    bool done;
    int rc;
    size_t n;
    char gone[8][64];
    char why[8][32];
} refresh_t;

static void s_on_refresh(void *arg, int rc, const char *const *gone, const char *const *reasons,
                         size_t n)
{
    refresh_t *r = arg;
    r->done = true;
    r->rc = rc;
    r->n = n;
    for (size_t i = 0; i < n && i < 8; i++) {
        snprintf(r->gone[i], sizeof(r->gone[i]), "%s", gone[i]);
        snprintf(r->why[i], sizeof(r->why[i]), "%s", reasons[i]);
    }
}

static bool s_fdone(void *arg)
{
    return ((refresh_t *)arg)->done;
}

static void test_refresh(void **state)
{
    fx_t *f = *state;
    char sids[3][64];
    const char *users[] = {"u1", "u2", "u3"};
    for (int i = 0; i < 3; i++) {
        res_t b = s_begin(f, users[i], users[i], "alt");
        s_commit(f, b.sid, "");
        snprintf(sids[i], sizeof(sids[i]), "%s", b.sid);
        assert_int_equal(rbt_cmd_int(&f->rs, "ZADD rb:sessions:seen 1000 %s", b.sid), 0);
    }
    s_end(f, sids[1]);
    assert_int_equal(s_resume(f, sids[2], "ab12", "").rc, 1); /* now on edge-9 */
    assert_int_equal(rbt_cmd_int(&f->rs, "ZADD rb:sessions:seen 1000 %s", sids[2]), 0);
    const char *ids[] = {sids[0], sids[1], sids[2], "ffffffffffffffffffffffffffffffff"};
    refresh_t r = {0};
    assert_int_equal(broker_store_refresh(f->s, "edge-1", ids, 4, s_on_refresh, &r), 0);
    assert_true(rbt_wait(f->loop, s_fdone, &r, 3000));
    assert_int_equal(r.rc, 0);
    assert_int_equal(r.n, 3);
    assert_string_equal(r.gone[0], sids[1]);
    assert_string_equal(r.why[0], "logoff"); /* the reason it ended with */
    assert_string_equal(r.gone[1], sids[2]); /* live, but on another edge */
    assert_string_equal(r.why[1], "moved");
    assert_string_equal(r.gone[2], ids[3]);
    assert_string_equal(r.why[2], ""); /* never known */
    assert_true(s_zscore(f, "rb:sessions:seen", sids[0]) > 1700000000000ll);
    assert_int_equal(s_zscore(f, "rb:sessions:seen", sids[2]), 1000);
    assert_int_equal(s_zscore(f, "rb:sessions:seen", sids[1]), -1);
    /* Thousands of ids in one call. */
    enum { MANY = 5000 };
    static char many[MANY][40];
    static const char *mp[MANY];
    for (int i = 0; i < MANY; i++) {
        snprintf(many[i], sizeof(many[i]), "%032x", i);
        mp[i] = many[i];
    }
    mp[MANY - 1] = sids[0];
    memset(&r, 0, sizeof(r));
    assert_int_equal(broker_store_refresh(f->s, "", mp, MANY, s_on_refresh, &r), 0);
    assert_true(rbt_wait(f->loop, s_fdone, &r, 5000));
    assert_int_equal(r.rc, 0);
    assert_int_equal(r.n, MANY - 1);
}

typedef struct {
    bool done;
    int rc;
    size_t n;
    char sids[8][64];
    uint64_t seqs[8];
} sweep_t;

static void s_on_sweep(void *arg, int rc, const uint64_t *seqs, const broker_session_t *s, size_t n)
{
    sweep_t *r = arg;
    r->done = true;
    r->rc = rc;
    r->n = n;
    for (size_t i = 0; i < n && i < 8; i++) {
        snprintf(r->sids[i], sizeof(r->sids[i]), "%s", s[i].session_id);
        r->seqs[i] = seqs[i];
    }
}

static bool s_sdone(void *arg)
{
    return ((sweep_t *)arg)->done;
}

static sweep_t s_sweep(fx_t *f, uint64_t idle, uint64_t life, unsigned limit)
{
    sweep_t r = {0};
    assert_int_equal(broker_store_sweep(f->s, idle, life, limit, s_on_sweep, &r), 0);
    assert_true(rbt_wait(f->loop, s_sdone, &r, 3000));
    assert_int_equal(r.rc, 0);
    return r;
}

static void test_sweep(void **state)
{
    fx_t *f = *state;
    char sids[5][64];
    for (int i = 0; i < 5; i++) {
        char user[8];
        snprintf(user, sizeof(user), "u%d", i);
        res_t b = s_begin(f, user, user, "alt");
        s_commit(f, b.sid, "");
        snprintf(sids[i], sizeof(sids[i]), "%s", b.sid);
    }
    assert_int_equal(s_sweep(f, 60000, 0, 500).n, 0); /* all fresh */
    /* Three idle for long; one too old (lifetime). */
    for (int i = 0; i < 3; i++)
        rbt_cmd_int(&f->rs, "ZADD rb:sessions:seen 1000 %s", sids[i]);
    rbt_cmd_int(&f->rs, "ZADD rb:sessions:since 1000 %s", sids[3]);
    long long seq0 = s_seq(f);
    sweep_t r = s_sweep(f, 60000, 0, 2); /* bounded: two per run */
    assert_int_equal(r.n, 2);
    assert_int_equal(r.seqs[0], (uint64_t)seq0 + 1);
    assert_int_equal(r.seqs[1], (uint64_t)seq0 + 2);
    r = s_sweep(f, 60000, 0, 2);
    assert_int_equal(r.n, 1);
    assert_int_equal(rbt_cmd_int(&f->rs, "SCARD rb:sessions:live"), 2);
    for (int i = 0; i < 3; i++)
        assert_int_equal(rbt_cmd_int(&f->rs, "EXISTS rb:session:%s", sids[i]), 0);
    assert_int_equal(s_sweep(f, 60000, 0, 500).n, 0); /* no lifetime limit */
    r = s_sweep(f, 60000, 86400000, 500);
    assert_int_equal(r.n, 1);
    assert_string_equal(r.sids[0], sids[3]);
    assert_int_equal(rbt_cmd_int(&f->rs, "SCARD rb:sessions:live"), 1);
    assert_int_equal(rbt_cmd_int(&f->rs, "ZCARD rb:sessions:seen"), 1);
    assert_int_equal(rbt_cmd_int(&f->rs, "ZCARD rb:sessions:since"), 1);
}

typedef struct {
    bool done;
    int rc;
    size_t n;
    char user[8][32];
    char ip[8][16];
} list_t;

static void s_on_list(void *arg, int rc, uint64_t seq, const broker_session_t *s, size_t n)
{
    list_t *r = arg;
    r->done = true;
    r->rc = rc;
    r->n = n;
    for (size_t i = 0; i < n && i < 8; i++) {
        snprintf(r->user[i], sizeof(r->user[i]), "%s", s[i].user);
        snprintf(r->ip[i], sizeof(r->ip[i]), "%s", s[i].ip);
    }
}

static bool s_ldone(void *arg)
{
    return ((list_t *)arg)->done;
}

static list_t s_list(fx_t *f, broker_list_by_t by, const char *key)
{
    list_t r = {0};
    assert_int_equal(broker_store_list(f->s, by, key, s_on_list, &r), 0);
    assert_true(rbt_wait(f->loop, s_ldone, &r, 3000));
    assert_int_equal(r.rc, 0);
    return r;
}

static void test_kick_and_lists(void **state)
{
    fx_t *f = *state;
    res_t a = s_begin(f, "alice", "alice", "alt");
    s_commit(f, a.sid, "10.0.0.5");
    res_t b = s_begin(f, "bob", "bob", "alt");
    s_commit(f, b.sid, "10.0.0.6");
    assert_int_equal(s_list(f, BROKER_LIST_ALL, NULL).n, 2);
    list_t l = s_list(f, BROKER_LIST_USER, "bob");
    assert_int_equal(l.n, 1);
    assert_string_equal(l.ip[0], "10.0.0.6");
    l = s_list(f, BROKER_LIST_IP, "10.0.0.5");
    assert_int_equal(l.n, 1);
    assert_string_equal(l.user[0], "alice");
    assert_int_equal(s_list(f, BROKER_LIST_USER, "carol").n, 0);
    assert_int_equal(s_list(f, BROKER_LIST_IP, "10.0.0.7").n, 0);

    res_t k = {0};
    assert_int_equal(broker_store_end_user(f->s, "alice", "kicked", s_on_end, &k), 0);
    assert_true(rbt_wait(f->loop, s_done, &k, 3000));
    assert_int_equal(k.rc, 1);
    assert_string_equal(k.sid, a.sid);
    assert_string_equal(k.ip, "10.0.0.5");
    assert_int_equal(s_list(f, BROKER_LIST_IP, "10.0.0.5").n, 0);
    assert_int_equal(rbt_cmd_int(&f->rs, "HEXISTS rb:sessions:by_ip 10.0.0.5"), 0);
    memset(&k, 0, sizeof(k));
    assert_int_equal(broker_store_end_user(f->s, "alice", "kicked", s_on_end, &k), 0);
    assert_true(rbt_wait(f->loop, s_done, &k, 3000));
    assert_int_equal(k.rc, 0);

    /* lease_wanted: by the session, by the user's successor, or not. */
    res_t w = {0};
    assert_int_equal(broker_store_lease_wanted(f->s, b.sid, "bob", "10.0.0.6", s_on_found, &w), 0);
    assert_true(rbt_wait(f->loop, s_done, &w, 3000));
    assert_int_equal(w.rc, 1);
    memset(&w, 0, sizeof(w));
    assert_int_equal(broker_store_lease_wanted(f->s, a.sid, "bob", "10.0.0.6", s_on_found, &w), 0);
    assert_true(rbt_wait(f->loop, s_done, &w, 3000));
    assert_int_equal(w.rc, 1);
    memset(&w, 0, sizeof(w));
    assert_int_equal(broker_store_lease_wanted(f->s, a.sid, "alice", "10.0.0.5", s_on_found, &w),
                     0);
    assert_true(rbt_wait(f->loop, s_done, &w, 3000));
    assert_int_equal(w.rc, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_begin_commit_end, setup, teardown),
        cmocka_unit_test_setup_teardown(test_second_begin_exists, setup, teardown),
        cmocka_unit_test_setup_teardown(test_label_owned_by_other_user, setup, teardown),
        cmocka_unit_test_setup_teardown(test_seq_and_snapshot, setup, teardown),
        cmocka_unit_test_setup_teardown(test_end_unknown_and_stats, setup, teardown),
        cmocka_unit_test_setup_teardown(test_transfer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_transfer_expired_changes_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_three_accepts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_transfer_gone_and_pending, setup, teardown),
        cmocka_unit_test_setup_teardown(test_resume, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refresh, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sweep, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kick_and_lists, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
