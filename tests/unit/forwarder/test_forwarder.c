/* forwarder: the session table, config checks, and a forwarder that starts,
 * takes a snapshot from a raw-zmq stand-in broker and becomes ready. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <string.h>
#include <zmq.h>

#include "forwarder.h"
#include "rb_log.h"
#include "rb_pb.h"
#include "rb_zmq.h"

static void s_stop(rb_loop_t *l, void *arg) { rb_loop_stop(l); }

static void s_sess(Rb__Events__Session *s, const char *id, const char *user, const char *ip)
{
    rb__events__session__init(s);
    s->session_id = (char *)id;
    s->user = (char *)user;
    s->ip = (char *)ip;
    s->edge_id = "edge-1";
}

/* A stand-in broker: a PUB with heartbeats and a ROUTER answering every
 * SnapshotCall with two sessions at seq 7. */
typedef struct {
    void *pub, *router;
    int answered;
} broker_t;

static void s_on_call(rb_loop_t *l, void *sock, void *arg)
{
    broker_t *b = arg;
    zmq_msg_t f[3];
    for (;;) {
        int n = 0;
        zmq_msg_init(&f[0]);
        if (zmq_msg_recv(&f[0], sock, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&f[0]);
            return;
        }
        for (n = 1; n < 3; n++) {
            zmq_msg_init(&f[n]);
            assert_true(zmq_msg_recv(&f[n], sock, 0) >= 0);
        }
        Rb__Events__Session s1, s2, *ps[2] = {&s1, &s2};
        s_sess(&s1, "s1", "alice", "10.0.0.1");
        s_sess(&s2, "s2", "bob", "10.0.0.2");
        Rb__Events__Snapshot snap = RB__EVENTS__SNAPSHOT__INIT;
        snap.seq = 7;
        snap.n_sessions = 2;
        snap.sessions = ps;
        Rb__Events__SnapshotAnswer a = RB__EVENTS__SNAPSHOT_ANSWER__INIT;
        a.version = RB_PROTO_VERSION;
        a.snapshot = &snap;
        rb_buf_t out = RB_BUF_INIT;
        assert_int_equal(rb_pb_pack(&a.base, &out), 0);
        zmq_msg_send(&f[0], sock, ZMQ_SNDMORE);
        zmq_msg_send(&f[1], sock, ZMQ_SNDMORE);
        zmq_send(sock, out.data, out.len, 0);
        rb_buf_free(&out);
        zmq_msg_close(&f[2]);
        b->answered++;
    }
}

static void s_heartbeat(rb_loop_t *l, void *arg)
{
    broker_t *b = arg;
    Rb__Events__Heartbeat hb = RB__EVENTS__HEARTBEAT__INIT;
    hb.seq = 7;
    Rb__Events__EventMessage m = RB__EVENTS__EVENT_MESSAGE__INIT;
    m.version = RB_PROTO_VERSION;
    m.body_case = RB__EVENTS__EVENT_MESSAGE__BODY_HEARTBEAT;
    m.heartbeat = &hb;
    uint8_t buf[64];
    size_t len = protobuf_c_message_pack(&m.base, buf);
    zmq_send(b->pub, buf, len, ZMQ_DONTWAIT);
}

typedef struct {
    forwarder_t *fw;
} watch_t;

static void s_watch(rb_loop_t *l, void *arg)
{
    watch_t *w = arg;
    if (forwarder_ready(w->fw)) rb_loop_stop(l);
}

static void test_starts_and_follows_snapshot(void **state)
{
    rb_loop_t *l = rb_loop_new();
    broker_t b = {0};
    int zero = 0;
    b.pub = zmq_socket(rb_zmq_ctx(), ZMQ_PUB);
    b.router = zmq_socket(rb_zmq_ctx(), ZMQ_ROUTER);
    zmq_setsockopt(b.pub, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(b.router, ZMQ_LINGER, &zero, sizeof zero);
    assert_int_equal(zmq_bind(b.pub, "tcp://127.0.0.1:*"), 0);
    assert_int_equal(zmq_bind(b.router, "tcp://127.0.0.1:*"), 0);
    char pub_ep[128], snap_ep[128];
    size_t len = sizeof pub_ep;
    zmq_getsockopt(b.pub, ZMQ_LAST_ENDPOINT, pub_ep, &len);
    len = sizeof snap_ep;
    zmq_getsockopt(b.router, ZMQ_LAST_ENDPOINT, snap_ep, &len);
    assert_int_equal(rb_loop_add_zsock(l, b.router, s_on_call, &b), 0);
    rb_timer_t *hb = rb_loop_add_timer(l, 50, true, s_heartbeat, &b);

    forwarder_config_t cfg = {.log_level = "warn", .status_listen = "127.0.0.1:0",
                              .forwarder_id = "fwd-test", .events_endpoints = pub_ep,
                              .snapshot_endpoints = snap_ep, .broker_public_key = "",
                              .curve_secret_key = "", .data_endpoint = "tcp://127.0.0.1:*",
                              .connect_timeout_ms = 1000, .udp_idle_s = 60, .max_streams = 64};
    char err[256];
    assert_int_equal(forwarder_config_validate(&cfg, err, sizeof err), 0);
    forwarder_t *fw = forwarder_new(l, &cfg);
    assert_non_null(fw);
    assert_true(forwarder_status_port(fw) > 0);
    assert_false(forwarder_ready(fw));
    watch_t w = {fw};
    rb_timer_t *t = rb_loop_add_timer(l, 5, true, s_watch, &w);
    rb_timer_t *d = rb_loop_add_timer(l, 3000, false, s_stop, NULL);
    rb_loop_run(l);
    rb_loop_cancel_timer(l, t);
    rb_loop_cancel_timer(l, d);
    assert_true(forwarder_ready(fw));
    assert_int_equal(forwarder_session_count(fw), 2);
    assert_int_equal(b.answered, 1);

    forwarder_destroy(&fw);
    assert_null(fw);
    forwarder_destroy(NULL);
    rb_loop_cancel_timer(l, hb);
    rb_loop_del_zsock(l, b.router);
    zmq_close(b.pub);
    zmq_close(b.router);
    rb_loop_destroy(&l);
}

static void test_session_table(void **state)
{
    rb_loop_t *l = rb_loop_new();
    forwarder_config_t cfg = {.status_listen = "", .forwarder_id = "t",
                              .events_endpoints = "tcp://127.0.0.1:1",
                              .snapshot_endpoints = "tcp://127.0.0.1:2",
                              .broker_public_key = "", .curve_secret_key = "",
                              .data_endpoint = "tcp://127.0.0.1:*", .connect_timeout_ms = 1000,
                              .udp_idle_s = 60, .max_streams = 64};
    forwarder_t *fw = forwarder_new(l, &cfg);
    assert_non_null(fw);
    assert_int_equal(forwarder_status_port(fw), -1);
    Rb__Events__Session s;
    char id[32];
    for (int i = 0; i < 3000; i++) {   /* past several table growths */
        snprintf(id, sizeof id, "sess-%d", i);
        s_sess(&s, id, id, "10.0.0.1");
        assert_int_equal(forwarder_session_up(fw, &s), 0);
    }
    assert_int_equal(forwarder_session_count(fw), 3000);
    s_sess(&s, "sess-5", "moved", "10.0.0.9");   /* an update replaces */
    assert_int_equal(forwarder_session_up(fw, &s), 0);
    assert_int_equal(forwarder_session_count(fw), 3000);
    forwarder_session_down(fw, &s, "logoff");
    forwarder_session_down(fw, &s, "logoff");   /* twice: no-op */
    assert_int_equal(forwarder_session_count(fw), 2999);
    s_sess(&s, "", "nobody", "");
    assert_int_equal(forwarder_session_up(fw, &s), -1);
    forwarder_reset(fw);
    assert_int_equal(forwarder_session_count(fw), 0);
    forwarder_destroy(&fw);
    rb_loop_destroy(&l);
}

static void test_config_validate(void **state)
{
    char err[256];
    forwarder_config_t cfg = {.events_endpoints = "", .snapshot_endpoints = "x",
                              .broker_public_key = "", .curve_secret_key = "",
                              .data_endpoint = "tcp://127.0.0.1:*", .connect_timeout_ms = 1000,
                              .udp_idle_s = 60, .max_streams = 64};
    assert_int_equal(forwarder_config_validate(&cfg, err, sizeof err), -1);
    assert_non_null(strstr(err, "events_endpoints"));
    cfg.events_endpoints = "tcp://127.0.0.1:1";
    cfg.curve_secret_key = "/etc/rb/forwarder.key";
    assert_int_equal(forwarder_config_validate(&cfg, err, sizeof err), -1);
    assert_non_null(strstr(err, "broker_public_key"));
    /* A key file that does not exist stops the start. */
    cfg.broker_public_key = "/nonexistent.pub";
    rb_loop_t *l = rb_loop_new();
    assert_null(forwarder_new(l, &cfg));
    rb_loop_destroy(&l);
}

static int s_setup(void **state)
{
    rb_log_init("forwarder-test", RB_LOG_ERROR);
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
        cmocka_unit_test(test_starts_and_follows_snapshot),
        cmocka_unit_test(test_session_table),
        cmocka_unit_test(test_config_validate),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
