/* rb_events: the Clone-pattern subscriber against a test broker written
 * here with raw ZeroMQ (an XPUB, so the test knows when the subscriber is
 * listening, and a ROUTER answering SnapshotCall), over tcp://127.0.0.1:*. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "rb_buf.h"
#include "rb_events.h"
#include "rb_log.h"
#include "rb_loop.h"
#include "rb_pb.h"
#include "rb_zmq.h"

#define MAXS 64

/* ---- the test broker ---- */

typedef struct {
    char user[32], ip[32];
} row_t;

typedef struct {
    rb_loop_t *loop;
    void *xpub, *router;
    char pub_ep[256], snap_ep[256];
    uint64_t seq;
    row_t rows[MAXS];
    int nrows;
    int subscribed;
    int snap_requests;
    bool hold;                 /* keep the next answer until released */
    int held;
    zmq_msg_t held_rid, held_id;
    rb_buf_t held_answer;
    uint32_t answer_version;   /* version of the next answer (0: current) */
    bool hb_on;
    rb_timer_t *hb;
} broker_t;

static void s_fill_session(Rb__Events__Session *s, const char *user, const char *ip)
{
    s->session_id = (char *)user;
    s->user = (char *)user;
    s->label = (char *)user;
    s->ip = (char *)ip;
    s->edge_id = "edge-1";
}

static void s_pack_answer(broker_t *b, rb_buf_t *out)
{
    Rb__Events__Session ss[MAXS], *ps[MAXS];
    for (int i = 0; i < b->nrows; i++) {
        rb__events__session__init(&ss[i]);
        s_fill_session(&ss[i], b->rows[i].user, b->rows[i].ip);
        ps[i] = &ss[i];
    }
    Rb__Events__Snapshot snap = RB__EVENTS__SNAPSHOT__INIT;
    snap.seq = b->seq;
    snap.n_sessions = (size_t)b->nrows;
    snap.sessions = ps;
    Rb__Events__SnapshotAnswer a = RB__EVENTS__SNAPSHOT_ANSWER__INIT;
    a.version = b->answer_version ? b->answer_version : RB_PROTO_VERSION;
    b->answer_version = 0;
    a.snapshot = &snap;
    assert_int_equal(rb_pb_pack(&a.base, out), 0);
}

static void s_send_answer(broker_t *b, zmq_msg_t *rid, zmq_msg_t *id, rb_buf_t *answer)
{
    assert_true(zmq_msg_send(rid, b->router, ZMQ_SNDMORE) >= 0);
    assert_true(zmq_msg_send(id, b->router, ZMQ_SNDMORE) >= 0);
    assert_true(zmq_send(b->router, answer->data, answer->len, 0) >= 0);
}

static void s_on_snapshot_call(rb_loop_t *l, void *sock, void *arg)
{
    broker_t *b = arg;
    zmq_msg_t rid, id, body;
    zmq_msg_init(&rid);
    while (zmq_msg_recv(&rid, sock, ZMQ_DONTWAIT) >= 0) {
        zmq_msg_init(&id);
        zmq_msg_init(&body);
        assert_true(zmq_msg_recv(&id, sock, 0) >= 0);
        assert_true(zmq_msg_recv(&body, sock, 0) >= 0);
        Rb__Events__SnapshotCall *c = (Rb__Events__SnapshotCall *)rb_pb_unpack(
            &rb__events__snapshot_call__descriptor, zmq_msg_data(&body), zmq_msg_size(&body),
            4096, "test");
        assert_non_null(c);
        assert_int_equal(c->version, RB_PROTO_VERSION);
        assert_non_null(c->request);
        assert_string_equal(c->request->subscriber, "tester");
        protobuf_c_message_free_unpacked(&c->base, NULL);
        b->snap_requests++;
        rb_buf_t answer = RB_BUF_INIT;
        s_pack_answer(b, &answer);
        if (b->hold) {
            b->hold = false;
            b->held = 1;
            zmq_msg_init(&b->held_rid);
            zmq_msg_init(&b->held_id);
            zmq_msg_move(&b->held_rid, &rid);
            zmq_msg_move(&b->held_id, &id);
            b->held_answer = answer;
        } else {
            s_send_answer(b, &rid, &id, &answer);
            rb_buf_free(&answer);
        }
        zmq_msg_close(&id);
        zmq_msg_close(&body);
        zmq_msg_close(&rid);
        zmq_msg_init(&rid);
    }
    zmq_msg_close(&rid);
}

static void s_release(broker_t *b)
{
    assert_int_equal(b->held, 1);
    s_send_answer(b, &b->held_rid, &b->held_id, &b->held_answer);
    zmq_msg_close(&b->held_rid);
    zmq_msg_close(&b->held_id);
    rb_buf_free(&b->held_answer);
    b->held = 0;
}

static void s_on_xpub(rb_loop_t *l, void *sock, void *arg)
{
    broker_t *b = arg;
    char buf[64];
    int n;
    while ((n = zmq_recv(sock, buf, sizeof buf, ZMQ_DONTWAIT)) >= 0)
        if (n >= 1 && buf[0] == 1) b->subscribed++;
}

static void s_publish_raw(broker_t *b, const void *data, size_t len)
{
    assert_true(zmq_send(b->xpub, data, len, 0) >= 0);
}

static void s_heartbeat(rb_loop_t *l, void *arg)
{
    broker_t *b = arg;
    if (!b->hb_on) return;
    Rb__Events__Heartbeat hb = RB__EVENTS__HEARTBEAT__INIT;
    hb.seq = b->seq;
    hb.broker_id = "test-broker";
    Rb__Events__EventMessage m = RB__EVENTS__EVENT_MESSAGE__INIT;
    m.version = RB_PROTO_VERSION;
    m.body_case = RB__EVENTS__EVENT_MESSAGE__BODY_HEARTBEAT;
    m.heartbeat = &hb;
    rb_buf_t out = RB_BUF_INIT;
    assert_int_equal(rb_pb_pack(&m.base, &out), 0);
    s_publish_raw(b, out.data, out.len);
    rb_buf_free(&out);
}

static void s_broker_start(broker_t *b, rb_loop_t *l)
{
    memset(b, 0, sizeof *b);
    b->loop = l;
    void *ctx = rb_zmq_ctx();
    b->xpub = zmq_socket(ctx, ZMQ_XPUB);
    b->router = zmq_socket(ctx, ZMQ_ROUTER);
    int zero = 0;
    zmq_setsockopt(b->xpub, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(b->router, ZMQ_LINGER, &zero, sizeof zero);
    assert_int_equal(zmq_bind(b->xpub, "tcp://127.0.0.1:*"), 0);
    assert_int_equal(zmq_bind(b->router, "tcp://127.0.0.1:*"), 0);
    size_t len = sizeof b->pub_ep;
    zmq_getsockopt(b->xpub, ZMQ_LAST_ENDPOINT, b->pub_ep, &len);
    len = sizeof b->snap_ep;
    zmq_getsockopt(b->router, ZMQ_LAST_ENDPOINT, b->snap_ep, &len);
    assert_int_equal(rb_loop_add_zsock(l, b->xpub, s_on_xpub, b), 0);
    assert_int_equal(rb_loop_add_zsock(l, b->router, s_on_snapshot_call, b), 0);
    b->hb_on = true;
    b->hb = rb_loop_add_timer(l, 100, true, s_heartbeat, b);
}

static void s_broker_stop(broker_t *b)
{
    rb_loop_cancel_timer(b->loop, b->hb);
    rb_loop_del_zsock(b->loop, b->xpub);
    rb_loop_del_zsock(b->loop, b->router);
    zmq_close(b->xpub);
    zmq_close(b->router);
    if (b->held) {
        zmq_msg_close(&b->held_rid);
        zmq_msg_close(&b->held_id);
        rb_buf_free(&b->held_answer);
    }
}

/* Changes the broker's state (next seq) and packs the event into out. */
static void s_change(broker_t *b, bool up, const char *user, const char *ip, rb_buf_t *out)
{
    int i;
    for (i = 0; i < b->nrows && strcmp(b->rows[i].user, user) != 0; i++) {}
    if (up) {
        if (i == b->nrows) b->nrows++;
        snprintf(b->rows[i].user, sizeof b->rows[i].user, "%s", user);
        snprintf(b->rows[i].ip, sizeof b->rows[i].ip, "%s", ip);
    } else if (i < b->nrows) {
        b->rows[i] = b->rows[--b->nrows];
    }
    b->seq++;
    Rb__Events__Session s = RB__EVENTS__SESSION__INIT;
    s_fill_session(&s, user, ip);
    Rb__Events__SessionEvent e = RB__EVENTS__SESSION_EVENT__INIT;
    e.seq = b->seq;
    e.kind = up ? RB__EVENTS__EVENT_KIND__SESSION_UP : RB__EVENTS__EVENT_KIND__SESSION_DOWN;
    e.session = &s;
    e.reason = up ? "" : "logoff";
    Rb__Events__EventMessage m = RB__EVENTS__EVENT_MESSAGE__INIT;
    m.version = RB_PROTO_VERSION;
    m.body_case = RB__EVENTS__EVENT_MESSAGE__BODY_EVENT;
    m.event = &e;
    rb_buf_reset(out);
    assert_int_equal(rb_pb_pack(&m.base, out), 0);
}

/* Changes the state and publishes the event at once. */
static void s_pub(broker_t *b, bool up, const char *user, const char *ip)
{
    rb_buf_t out = RB_BUF_INIT;
    s_change(b, up, user, ip, &out);
    s_publish_raw(b, out.data, out.len);
    rb_buf_free(&out);
}

/* ---- the subscriber's view ---- */

typedef struct {
    row_t rows[MAXS];
    int nrows;
    int resets, ups, downs;
    char order[MAXS][32];   /* users of applied events, in order */
    uint64_t up_seq;        /* the seq the last up() was given */
    int norder;
} view_t;

static void s_reset(void *arg)
{
    view_t *v = arg;
    v->nrows = 0;
    v->resets++;
}

static void s_up(void *arg, uint64_t seq, const Rb__Events__Session *s)
{
    view_t *v = arg;
    v->up_seq = seq;
    int i;
    for (i = 0; i < v->nrows && strcmp(v->rows[i].user, s->user) != 0; i++) {}
    assert_true(i < MAXS);
    if (i == v->nrows) v->nrows++;
    snprintf(v->rows[i].user, sizeof v->rows[i].user, "%s", s->user);
    snprintf(v->rows[i].ip, sizeof v->rows[i].ip, "%s", s->ip);
    v->ups++;
    if (v->norder < MAXS) snprintf(v->order[v->norder++], 32, "+%s", s->user);
}

static void s_down(void *arg, const Rb__Events__Session *s, const char *reason)
{
    view_t *v = arg;
    for (int i = 0; i < v->nrows; i++)
        if (strcmp(v->rows[i].user, s->user) == 0) v->rows[i] = v->rows[--v->nrows];
    v->downs++;
    if (v->norder < MAXS) snprintf(v->order[v->norder++], 32, "-%s", s->user);
}

static const rb_events_handlers_t s_handlers = {s_reset, s_up, s_down};

static bool s_same(const broker_t *b, const view_t *v)
{
    if (b->nrows != v->nrows) return false;
    for (int i = 0; i < b->nrows; i++) {
        int j;
        for (j = 0; j < v->nrows; j++)
            if (strcmp(b->rows[i].user, v->rows[j].user) == 0 &&
                strcmp(b->rows[i].ip, v->rows[j].ip) == 0)
                break;
        if (j == v->nrows) return false;
    }
    return true;
}

/* ---- running ---- */

typedef struct {
    bool (*done)(void *);
    void *arg;
} watch_t;

static void s_watch(rb_loop_t *l, void *arg)
{
    watch_t *w = arg;
    if (w->done(w->arg)) rb_loop_stop(l);
}

static void s_stop(rb_loop_t *l, void *arg) { rb_loop_stop(l); }

static void s_run(rb_loop_t *l, bool (*done)(void *), void *arg, unsigned ms)
{
    watch_t w = {done, arg};
    rb_timer_t *t = rb_loop_add_timer(l, 2, true, s_watch, &w);
    rb_timer_t *d = rb_loop_add_timer(l, ms, true, s_stop, NULL);
    rb_loop_run(l);
    rb_loop_cancel_timer(l, t);
    rb_loop_cancel_timer(l, d);
}

static bool s_never(void *arg) { return false; }

typedef struct {
    rb_loop_t *loop;
    broker_t b;
    view_t v;
    rb_events_t *ev;
} fix_t;

static bool s_ready(void *arg) { return rb_events_ready(((fix_t *)arg)->ev); }

static bool s_caught_up(void *arg)
{
    fix_t *f = arg;
    return rb_events_seq(f->ev) == f->b.seq && s_same(&f->b, &f->v);
}

static uint64_t s_want_snapshots;
static bool s_snapshots_reached(void *arg)
{
    fix_t *f = arg;
    return rb_events_snapshots(f->ev) >= s_want_snapshots && s_caught_up(f);
}

static bool s_listening(void *arg)
{
    fix_t *f = arg;
    return f->b.subscribed > 0 && (f->b.held || rb_events_ready(f->ev));
}

static void s_fix_start(fix_t *f, bool start_sub)
{
    memset(f, 0, sizeof *f);
    f->loop = rb_loop_new();
    assert_non_null(f->loop);
    s_broker_start(&f->b, f->loop);
}

static void s_sub_start(fix_t *f)
{
    rb_curve_t off = {0};
    rb_events_config_t cfg = {f->b.pub_ep, f->b.snap_ep, &off, NULL, "tester"};
    f->ev = rb_events_new(f->loop, &cfg, &s_handlers, &f->v);
    assert_non_null(f->ev);
}

static void s_fix_stop(fix_t *f)
{
    rb_events_destroy(&f->ev);
    assert_null(f->ev);
    s_broker_stop(&f->b);
    rb_loop_destroy(&f->loop);
}

/* ---- tests ---- */

static void test_snapshot_then_updates(void **state)
{
    fix_t f;
    s_fix_start(&f, false);
    s_pub(&f.b, true, "alice", "10.0.0.1");
    s_pub(&f.b, true, "bob", "10.0.0.2");
    s_pub(&f.b, true, "carol", "10.0.0.3");
    /* The first answer has a version we do not speak: ignored, asked again. */
    f.b.answer_version = RB_PROTO_VERSION + 1;
    s_sub_start(&f);
    assert_false(rb_events_ready(f.ev));
    s_run(f.loop, s_ready, &f, 3000);
    assert_true(rb_events_ready(f.ev));
    assert_int_equal(f.b.snap_requests, 2);
    assert_int_equal(rb_events_snapshots(f.ev), 1);
    assert_int_equal(rb_events_seq(f.ev), 3);
    assert_true(s_same(&f.b, &f.v));
    assert_int_equal(f.v.resets, 1);
    assert_int_equal(f.v.up_seq, 3); /* a snapshot's sessions carry its seq */

    /* Wait until the SUB side is connected, then live updates flow. */
    s_run(f.loop, s_listening, &f, 3000);
    s_pub(&f.b, true, "dave", "10.0.0.4");
    s_pub(&f.b, false, "alice", "10.0.0.1");
    s_pub(&f.b, true, "bob", "10.0.0.22");   /* moved */
    s_run(f.loop, s_caught_up, &f, 3000);
    assert_int_equal(rb_events_seq(f.ev), 6);
    assert_int_equal(f.v.up_seq, 6); /* bob's move */
    assert_true(s_same(&f.b, &f.v));
    assert_int_equal(rb_events_snapshots(f.ev), 1);
    s_fix_stop(&f);
}

static void test_late_start_with_events_during_snapshot(void **state)
{
    fix_t f;
    s_fix_start(&f, false);
    char u[32];
    /* History nobody heard. */
    for (int i = 0; i < 25; i++) {
        snprintf(u, sizeof u, "user%d", i);
        s_pub(&f.b, true, u, "10.1.0.1");
    }
    for (int i = 0; i < 5; i++) {
        snprintf(u, sizeof u, "user%d", i * 2);
        s_pub(&f.b, false, u, "");
    }
    /* Hold the snapshot answer (taken at seq 30) while three more events
     * are published: the subscriber must buffer them and apply them after
     * the snapshot. */
    f.b.hold = true;
    s_sub_start(&f);
    s_run(f.loop, s_listening, &f, 3000);
    assert_int_equal(f.b.held, 1);
    assert_true(f.b.subscribed > 0);
    s_pub(&f.b, true, "late1", "10.2.0.1");
    s_pub(&f.b, false, "user1", "");
    s_pub(&f.b, true, "late2", "10.2.0.2");
    s_run(f.loop, s_never, NULL, 50);
    assert_false(rb_events_ready(f.ev));
    s_release(&f.b);
    s_run(f.loop, s_caught_up, &f, 3000);
    assert_int_equal(rb_events_seq(f.ev), 33);
    assert_true(s_same(&f.b, &f.v));
    assert_int_equal(rb_events_snapshots(f.ev), 1);
    assert_true(rb_events_ready(f.ev));
    s_fix_stop(&f);
}

static void test_gap_takes_new_snapshot(void **state)
{
    fix_t f;
    s_fix_start(&f, false);
    s_pub(&f.b, true, "alice", "10.0.0.1");
    s_sub_start(&f);
    s_run(f.loop, s_ready, &f, 3000);
    s_run(f.loop, s_listening, &f, 3000);
    assert_int_equal(rb_events_snapshots(f.ev), 1);

    /* Event 2 is lost; event 3 arrives and waits; after 300 ms without 2,
     * a new snapshot. */
    rb_buf_t lost = RB_BUF_INIT;
    s_change(&f.b, true, "bob", "10.0.0.2", &lost);
    rb_buf_free(&lost);
    uint64_t start = rb_now_ms();
    s_pub(&f.b, true, "carol", "10.0.0.3");
    s_want_snapshots = 2;
    s_run(f.loop, s_snapshots_reached, &f, 3000);
    uint64_t took = rb_now_ms() - start;
    assert_int_equal(rb_events_snapshots(f.ev), 2);
    assert_int_equal(rb_events_seq(f.ev), 3);
    assert_true(s_same(&f.b, &f.v));
    assert_true(took >= 300);
    assert_int_equal(f.b.snap_requests, 2);

    /* A lost event that only a heartbeat reveals. */
    s_change(&f.b, false, "alice", "", &lost);
    rb_buf_free(&lost);
    s_want_snapshots = 3;
    s_run(f.loop, s_snapshots_reached, &f, 3000);
    assert_int_equal(rb_events_snapshots(f.ev), 3);
    assert_int_equal(rb_events_seq(f.ev), 4);
    assert_true(s_same(&f.b, &f.v));

    /* No further snapshots while nothing is missing. */
    s_run(f.loop, s_never, NULL, 600);
    assert_int_equal(rb_events_snapshots(f.ev), 3);
    s_fix_stop(&f);
}

static void test_duplicates_and_reordering(void **state)
{
    fix_t f;
    s_fix_start(&f, false);
    s_sub_start(&f);
    s_run(f.loop, s_ready, &f, 3000);
    s_run(f.loop, s_listening, &f, 3000);
    f.v.norder = 0;

    rb_buf_t e1 = RB_BUF_INIT, e2 = RB_BUF_INIT, e3 = RB_BUF_INIT;
    s_change(&f.b, true, "alice", "10.0.0.1", &e1);
    s_change(&f.b, true, "bob", "10.0.0.2", &e2);
    s_change(&f.b, false, "alice", "", &e3);
    /* Crossed: 3, 1, 2; and 1 and 3 again (a second broker's copy). */
    s_publish_raw(&f.b, e3.data, e3.len);
    s_publish_raw(&f.b, e1.data, e1.len);
    s_publish_raw(&f.b, e1.data, e1.len);
    s_publish_raw(&f.b, e2.data, e2.len);
    s_publish_raw(&f.b, e3.data, e3.len);
    s_run(f.loop, s_caught_up, &f, 3000);
    assert_int_equal(rb_events_seq(f.ev), 3);
    assert_int_equal(f.v.norder, 3);
    assert_string_equal(f.v.order[0], "+alice");
    assert_string_equal(f.v.order[1], "+bob");
    assert_string_equal(f.v.order[2], "-alice");
    assert_int_equal(f.v.up_seq, 2); /* bob's, applied after alice's */
    assert_true(s_same(&f.b, &f.v));

    /* An old sequence number with other content is ignored too. */
    s_publish_raw(&f.b, e1.data, e1.len);
    s_run(f.loop, s_never, NULL, 400);
    assert_int_equal(f.v.norder, 3);
    assert_true(s_same(&f.b, &f.v));
    assert_int_equal(rb_events_snapshots(f.ev), 1);
    rb_buf_free(&e1);
    rb_buf_free(&e2);
    rb_buf_free(&e3);
    s_fix_stop(&f);
}

static void test_garbage_on_pub_ignored(void **state)
{
    fix_t f;
    s_fix_start(&f, false);
    s_sub_start(&f);
    s_run(f.loop, s_ready, &f, 3000);
    s_run(f.loop, s_listening, &f, 3000);

    s_publish_raw(&f.b, "garbage", 7);
    s_publish_raw(&f.b, "", 0);
    assert_true(zmq_send(f.b.xpub, "two", 3, ZMQ_SNDMORE) >= 0);
    assert_true(zmq_send(f.b.xpub, "frames", 6, 0) >= 0);
    /* Right shape, wrong version; an event without a session; no body. */
    Rb__Events__Session s = RB__EVENTS__SESSION__INIT;
    s_fill_session(&s, "mallory", "10.6.6.6");
    Rb__Events__SessionEvent e = RB__EVENTS__SESSION_EVENT__INIT;
    e.seq = 1;
    e.session = &s;
    Rb__Events__EventMessage m = RB__EVENTS__EVENT_MESSAGE__INIT;
    m.version = RB_PROTO_VERSION + 1;
    m.body_case = RB__EVENTS__EVENT_MESSAGE__BODY_EVENT;
    m.event = &e;
    rb_buf_t out = RB_BUF_INIT;
    assert_int_equal(rb_pb_pack(&m.base, &out), 0);
    s_publish_raw(&f.b, out.data, out.len);
    m.version = RB_PROTO_VERSION;
    e.session = NULL;
    rb_buf_reset(&out);
    assert_int_equal(rb_pb_pack(&m.base, &out), 0);
    s_publish_raw(&f.b, out.data, out.len);
    m.body_case = RB__EVENTS__EVENT_MESSAGE__BODY__NOT_SET;
    rb_buf_reset(&out);
    assert_int_equal(rb_pb_pack(&m.base, &out), 0);
    s_publish_raw(&f.b, out.data, out.len);
    rb_buf_free(&out);

    s_pub(&f.b, true, "alice", "10.0.0.1");
    s_run(f.loop, s_caught_up, &f, 3000);
    assert_int_equal(rb_events_seq(f.ev), 1);
    assert_true(s_same(&f.b, &f.v));
    assert_int_equal(f.v.ups, 1);
    assert_int_equal(rb_events_snapshots(f.ev), 1);
    s_fix_stop(&f);
}

static bool s_not_ready(void *arg) { return !rb_events_ready(((fix_t *)arg)->ev); }

static void test_silence_then_new_snapshot(void **state)
{
    fix_t f;
    s_fix_start(&f, false);
    s_pub(&f.b, true, "alice", "10.0.0.1");
    s_sub_start(&f);
    s_run(f.loop, s_ready, &f, 3000);
    s_run(f.loop, s_listening, &f, 3000);
    assert_int_equal(rb_events_snapshots(f.ev), 1);

    f.b.hb_on = false;
    uint64_t start = rb_now_ms();
    s_run(f.loop, s_not_ready, &f, 5000);
    assert_false(rb_events_ready(f.ev));
    assert_true(rb_now_ms() - start >= 2800);
    /* Meanwhile the "restarted" broker has a different state. */
    rb_buf_t lost = RB_BUF_INIT;
    s_change(&f.b, true, "bob", "10.0.0.2", &lost);
    rb_buf_free(&lost);
    f.b.hb_on = true;
    s_want_snapshots = 2;
    s_run(f.loop, s_snapshots_reached, &f, 3000);
    assert_int_equal(rb_events_snapshots(f.ev), 2);
    assert_true(rb_events_ready(f.ev));
    assert_true(s_same(&f.b, &f.v));
    s_fix_stop(&f);
}

static void test_bad_config(void **state)
{
    rb_loop_t *l = rb_loop_new();
    view_t v = {0};
    rb_curve_t off = {0};
    rb_events_config_t cfg = {"", "tcp://127.0.0.1:1", &off, NULL, "tester"};
    assert_null(rb_events_new(l, &cfg, &s_handlers, &v));
    rb_events_config_t cfg2 = {"tcp://127.0.0.1:1", " , ", &off, NULL, "tester"};
    assert_null(rb_events_new(l, &cfg2, &s_handlers, &v));
    rb_events_config_t cfg3 = {"tcp://127.0.0.1:1,nonsense://x", "tcp://127.0.0.1:2", &off,
                               NULL, "tester"};
    assert_null(rb_events_new(l, &cfg3, &s_handlers, &v));
    rb_events_destroy(NULL);
    assert_false(rb_events_ready(NULL));
    rb_loop_destroy(&l);
}

static int s_setup(void **state)
{
    rb_log_init("test", RB_LOG_ERROR);
    return 0;
}

static int s_teardown(void **state)
{
    rb_zmq_term();
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_snapshot_then_updates),
        cmocka_unit_test(test_late_start_with_events_during_snapshot),
        cmocka_unit_test(test_gap_takes_new_snapshot),
        cmocka_unit_test(test_duplicates_and_reordering),
        cmocka_unit_test(test_garbage_on_pub_ignored),
        cmocka_unit_test(test_silence_then_new_snapshot),
        cmocka_unit_test(test_bad_config),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
