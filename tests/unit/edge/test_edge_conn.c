/* edge_conn, through the whole edge service: a real edge (edge_new) on
 * 127.0.0.1, a stand-in broker on a real ROUTER socket answering through
 * rb_rpc, and devices played by rb_tconn clients in the same loop. Covers
 * the logon dialogue, Ping/Pong, Logoff, messages out of order, refused
 * passwords and the per-connection cap, a dropped session being ended at
 * the broker, and the keepalive rule. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <signal.h>
#include <unistd.h>
#include <zmq.h>

#include "edge.h"
#include "edge_broker.pb-c.h"
#include "rb_frame.h"
#include "rb_loop.h"
#include "rb_metrics.h"
#include "rb_passwd.h"
#include "rb_pb.h"
#include "rb_rpc.h"
#include "rb_tconn.h"
#include "rb_tls.h"
#include "rb_zmq.h"

static char s_dir[64];
static SSL_CTX *s_cctx;

static const char *s_path(const char *name)
{
    static char bufs[8][128];
    static int i;
    char *b = bufs[i++ % 8];
    snprintf(b, 128, "%s/%s", s_dir, name);
    return b;
}

static int s_sh(const char *cmd)
{
    char full[2048];
    snprintf(full, sizeof full, "cd '%s' && (%s) >/dev/null 2>&1", s_dir, cmd);
    return system(full);
}

static int s_setup(void **state)
{
    signal(SIGPIPE, SIG_IGN);
    snprintf(s_dir, sizeof s_dir, "/tmp/rb-edge-conn-XXXXXX");
    if (!mkdtemp(s_dir)) return -1;
    const char *ec = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "openssl req -x509 %s -keyout ca.key -out ca.crt -subj /CN=ca -days 2 && "
             "printf 'subjectAltName=IP:127.0.0.1\\n' > srv.ext && "
             "openssl req %s -keyout srv.key -out srv.csr -subj /CN=edge && "
             "openssl x509 -req -in srv.csr -CA ca.crt -CAkey ca.key -CAcreateserial "
             "-out srv.crt -days 2 -extfile srv.ext",
             ec, ec);
    if (s_sh(cmd) != 0) return -1;
    char h[RB_PASSWD_MAX];
    if (rb_passwd_hash("secret", 1, 8, 1, h) < 0) return -1;
    FILE *f = fopen(s_path("users"), "w");
    if (!f) return -1;
    fprintf(f, "alice:%s\nbob:%s\n", h, h);
    fclose(f);
    char err[256];
    s_cctx = rb_tls_client_ctx(s_path("ca.crt"), NULL, NULL, err, sizeof err);
    return s_cctx ? 0 : -1;
}

static int s_teardown(void **state)
{
    SSL_CTX_free(s_cctx);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", s_dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* ---- the stand-in broker ---- */

typedef struct {
    int logons, logoffs, pings;
    char last_logoff[64];
} broker_t;

static void s_broker_handle(void *arg, rb_rpc_req_t *req, const uint8_t *body, size_t len)
{
    broker_t *b = arg;
    Rb__Edgebroker__EdgeToBroker *m = (Rb__Edgebroker__EdgeToBroker *)rb_pb_unpack(
        &rb__edgebroker__edge_to_broker__descriptor, body, len, RB_PB_MAX_MESSAGE, "edge");
    assert_non_null(m);
    Rb__Edgebroker__BrokerToEdge r = RB__EDGEBROKER__BROKER_TO_EDGE__INIT;
    r.version = RB_PROTO_VERSION;
    Rb__Edgebroker__LogonReply lr = RB__EDGEBROKER__LOGON_REPLY__INIT;
    Rb__Edgebroker__LogoffReply lo = RB__EDGEBROKER__LOGOFF_REPLY__INIT;
    Rb__Edgebroker__PingReply pr = RB__EDGEBROKER__PING_REPLY__INIT;
    switch (m->body_case) {
    case RB__EDGEBROKER__EDGE_TO_BROKER__BODY_LOGON:
        b->logons++;
        r.body_case = RB__EDGEBROKER__BROKER_TO_EDGE__BODY_LOGON;
        r.logon = &lr;
        if (strcmp(m->logon->user, "bob") == 0) {
            lr.status = RB__EDGEBROKER__LOGON_STATUS__LOGON_SESSION_EXISTS;
        } else {
            lr.session_id = "s-1";
            lr.ip = "127.77.0.2";
            lr.fqdn = "alice.vpn.lab";
            lr.resume_token = "tok";
        }
        break;
    case RB__EDGEBROKER__EDGE_TO_BROKER__BODY_LOGOFF:
        b->logoffs++;
        snprintf(b->last_logoff, sizeof b->last_logoff, "%s", m->logoff->session_id);
        r.body_case = RB__EDGEBROKER__BROKER_TO_EDGE__BODY_LOGOFF;
        lo.found = true;
        r.logoff = &lo;
        break;
    default:
        b->pings++;
        r.body_case = RB__EDGEBROKER__BROKER_TO_EDGE__BODY_PING;
        pr.broker_id = "test-broker";
        r.ping = &pr;
    }
    rb_rpc_reply(req, &r.base);
    protobuf_c_message_free_unpacked(&m->base, NULL);
}

/* ---- a device ---- */

typedef struct {
    rb_tconn_t *c;
    bool open;
    int closed;
    int n;                 /* control messages received */
    int cases[16];
    int reasons[16];       /* LogonFailed.reason / SessionClosed.reason */
    char ip[32];
} device_t;

static void s_dev_open(rb_tconn_t *c, void *arg) { ((device_t *)arg)->open = true; }

static void s_dev_frame(rb_tconn_t *c, const rb_frame_t *f, void *arg)
{
    device_t *d = arg;
    Rb__Tunnel__TunnelControl *m = rb_frame_control(f);
    assert_non_null(m);
    if (d->n < 16) {
        d->cases[d->n] = m->msg_case;
        if (m->msg_case == RB__TUNNEL__TUNNEL_CONTROL__MSG_LOGON_FAILED)
            d->reasons[d->n] = m->logon_failed->reason;
        if (m->msg_case == RB__TUNNEL__TUNNEL_CONTROL__MSG_SESSION_CLOSED)
            d->reasons[d->n] = m->session_closed->reason;
        if (m->msg_case == RB__TUNNEL__TUNNEL_CONTROL__MSG_LOGON_OK)
            snprintf(d->ip, sizeof d->ip, "%s", m->logon_ok->ip);
        d->n++;
    }
    rb__tunnel__tunnel_control__free_unpacked(m, NULL);
}

static void s_dev_close(rb_tconn_t *c, rb_tconn_end_t end, const char *reason, void *arg)
{
    device_t *d = arg;
    d->closed++;
    rb_tconn_destroy(&d->c);
}

static const rb_tconn_handlers_t s_dev_handlers = {s_dev_open, s_dev_frame, s_dev_close};

static void s_send(device_t *d, Rb__Tunnel__TunnelControl *m)
{
    assert_int_equal(rb_tconn_send_control(d->c, m), 0);
}

static void s_hello(device_t *d)
{
    Rb__Tunnel__TunnelControl m = RB__TUNNEL__TUNNEL_CONTROL__INIT;
    Rb__Tunnel__Hello h = RB__TUNNEL__HELLO__INIT;
    h.version = RB_TUNNEL_VERSION;
    m.msg_case = RB__TUNNEL__TUNNEL_CONTROL__MSG_HELLO;
    m.hello = &h;
    s_send(d, &m);
}

static void s_logon(device_t *d, const char *user, const char *pw)
{
    Rb__Tunnel__TunnelControl m = RB__TUNNEL__TUNNEL_CONTROL__INIT;
    Rb__Tunnel__Logon l = RB__TUNNEL__LOGON__INIT;
    l.user = (char *)user;
    l.password = (char *)pw;
    l.device = "test";
    m.msg_case = RB__TUNNEL__TUNNEL_CONTROL__MSG_LOGON;
    m.logon = &l;
    s_send(d, &m);
}

static void s_simple(device_t *d, int msg_case)
{
    Rb__Tunnel__TunnelControl m = RB__TUNNEL__TUNNEL_CONTROL__INIT;
    Rb__Tunnel__Ping p = RB__TUNNEL__PING__INIT;
    Rb__Tunnel__Logoff lo = RB__TUNNEL__LOGOFF__INIT;
    m.msg_case = msg_case;
    if (msg_case == RB__TUNNEL__TUNNEL_CONTROL__MSG_PING) {
        p.nonce = 5;
        m.ping = &p;
    } else {
        m.logoff = &lo;
    }
    s_send(d, &m);
}

/* ---- running the loop until something holds ---- */

typedef bool(cond_fn)(void *arg, int want);
typedef struct {
    cond_fn *cond;
    void *arg;
    int want;
    uint64_t deadline;
} wait_t;

static void s_tick(rb_loop_t *loop, void *arg)
{
    wait_t *w = arg;
    if (w->cond(w->arg, w->want) || rb_now_ms() >= w->deadline) rb_loop_stop(loop);
}

static bool s_wait(rb_loop_t *loop, cond_fn *cond, void *arg, int want, unsigned ms)
{
    wait_t w = {cond, arg, want, rb_now_ms() + ms};
    rb_timer_t *t = rb_loop_add_timer(loop, 2, true, s_tick, &w);
    rb_loop_run(loop);
    rb_loop_cancel_timer(loop, t);
    return cond(arg, want);
}

static bool s_msgs(void *arg, int want) { return ((device_t *)arg)->n >= want; }
static bool s_open(void *arg, int want) { return ((device_t *)arg)->open; }
static bool s_closed(void *arg, int want) { return ((device_t *)arg)->closed > 0; }
static bool s_logoffs(void *arg, int want) { return ((broker_t *)arg)->logoffs >= want; }
static bool s_ready(void *arg, int want)
{
    rb_buf_t why = RB_BUF_INIT;
    bool ok = edge_ready(arg, &why);
    rb_buf_free(&why);
    return ok;
}

/* ---- fixture: an edge and a broker ---- */

typedef struct {
    rb_loop_t *loop;
    rb_rpc_server_t *rpc;
    broker_t broker;
    edge_config_t cfg;
    edge_t *edge;
    char server[32];
} fix_t;

static void s_start(fix_t *f, const char *keepalive)
{
    memset(f, 0, sizeof *f);
    f->loop = rb_loop_new();
    void *router = rb_zsock_bind(ZMQ_ROUTER, "tcp://127.0.0.1:*", NULL);
    assert_non_null(router);
    char ep[128];
    size_t len = sizeof ep;
    zmq_getsockopt(router, ZMQ_LAST_ENDPOINT, ep, &len);
    f->rpc = rb_rpc_server_new(f->loop, router, s_broker_handle, &f->broker);
    assert_non_null(f->rpc);
    char conf[160];
    snprintf(conf, sizeof conf, "%s", s_path("edge.conf"));
    FILE *cf = fopen(conf, "w");
    assert_non_null(cf);
    fprintf(cf,
            "listen = 127.0.0.1:0\ntls_cert = %s\ntls_key = %s\nusers_file = %s\n"
            "broker_endpoint = %s\nkeepalive_s = %s\nedge_id = edge-t\n",
            s_path("srv.crt"), s_path("srv.key"), s_path("users"), ep, keepalive);
    fclose(cf);
    char err[256];
    if (rb_config_load(edge_options, &f->cfg, "edge", conf, err, sizeof err) < 0)
        fail_msg("config: %s", err);
    f->edge = edge_new(f->loop, &f->cfg);
    assert_non_null(f->edge);
    snprintf(f->server, sizeof f->server, "127.0.0.1:%d", edge_port(f->edge));
    assert_true(s_wait(f->loop, s_ready, f->edge, 0, 3000));
}

static void s_stop(fix_t *f)
{
    edge_destroy(&f->edge);
    rb_rpc_server_destroy(&f->rpc);
    rb_config_free(edge_options, &f->cfg);
    rb_loop_destroy(&f->loop);
}

static void s_dial(fix_t *f, device_t *d)
{
    memset(d, 0, sizeof *d);
    d->c = rb_tconn_dial(f->loop, s_cctx, f->server, NULL, &s_dev_handlers, d);
    assert_non_null(d->c);
    assert_true(s_wait(f->loop, s_open, d, 0, 3000));
}

/* The value on the sample line that starts with name (not the HELP line). */
static double s_metric(const char *name)
{
    rb_buf_t b = RB_BUF_INIT;
    rb_metrics_render(&b);
    char key[128];
    snprintf(key, sizeof key, "\n%s", name);
    const char *p = strstr(b.data, key);
    double v = p ? atof(p + strlen(key)) : -1;
    rb_buf_free(&b);
    return v;
}

static void test_logon_ping_logoff(void **state)
{
    fix_t f;
    s_start(&f, "15");
    device_t d;
    s_dial(&f, &d);
    s_hello(&d);
    s_logon(&d, "alice", "secret");
    assert_true(s_wait(f.loop, s_msgs, &d, 2, 3000));
    assert_int_equal(d.cases[0], RB__TUNNEL__TUNNEL_CONTROL__MSG_HELLO_ACK);
    assert_int_equal(d.cases[1], RB__TUNNEL__TUNNEL_CONTROL__MSG_LOGON_OK);
    assert_string_equal(d.ip, "127.77.0.2");
    s_simple(&d, RB__TUNNEL__TUNNEL_CONTROL__MSG_PING);
    assert_true(s_wait(f.loop, s_msgs, &d, 3, 3000));
    assert_int_equal(d.cases[2], RB__TUNNEL__TUNNEL_CONTROL__MSG_PONG);
    assert_true(s_metric("reachback_edge_sessions ") == 1);
    s_simple(&d, RB__TUNNEL__TUNNEL_CONTROL__MSG_LOGOFF);
    assert_true(s_wait(f.loop, s_closed, &d, 0, 3000));
    assert_int_equal(d.n, 4);
    assert_int_equal(d.cases[3], RB__TUNNEL__TUNNEL_CONTROL__MSG_SESSION_CLOSED);
    assert_int_equal(d.reasons[3], RB__TUNNEL__CLOSE_REASON__CLOSE_LOGOFF);
    assert_true(s_wait(f.loop, s_logoffs, &f.broker, 1, 3000));
    assert_string_equal(f.broker.last_logoff, "s-1");
    assert_true(s_metric("reachback_edge_sessions ") == 0);
    s_stop(&f);
}

static void test_out_of_order_closes(void **state)
{
    fix_t f;
    s_start(&f, "15");
    double before = s_metric("reachback_tunnel_protocol_errors_total ");
    device_t d;
    s_dial(&f, &d);
    s_logon(&d, "alice", "secret");   /* before Hello */
    assert_true(s_wait(f.loop, s_closed, &d, 0, 3000));
    assert_int_equal(d.n, 1);
    assert_int_equal(d.cases[0], RB__TUNNEL__TUNNEL_CONTROL__MSG_SESSION_CLOSED);
    assert_int_equal(d.reasons[0], RB__TUNNEL__CLOSE_REASON__CLOSE_PROTOCOL);
    assert_true(s_metric("reachback_tunnel_protocol_errors_total ") == before + 1);
    assert_int_equal(f.broker.logons, 0);

    /* A message only the edge sends is refused the same way. */
    device_t e;
    s_dial(&f, &e);
    s_hello(&e);
    Rb__Tunnel__TunnelControl m = RB__TUNNEL__TUNNEL_CONTROL__INIT;
    Rb__Tunnel__HelloAck ack = RB__TUNNEL__HELLO_ACK__INIT;
    m.msg_case = RB__TUNNEL__TUNNEL_CONTROL__MSG_HELLO_ACK;
    m.hello_ack = &ack;
    s_send(&e, &m);
    assert_true(s_wait(f.loop, s_closed, &e, 0, 3000));
    assert_int_equal(e.cases[e.n - 1], RB__TUNNEL__TUNNEL_CONTROL__MSG_SESSION_CLOSED);
    assert_int_equal(e.reasons[e.n - 1], RB__TUNNEL__CLOSE_REASON__CLOSE_PROTOCOL);
    s_stop(&f);
}

static void test_refusals_and_cap(void **state)
{
    fix_t f;
    s_start(&f, "15");
    device_t d;
    s_dial(&f, &d);
    s_hello(&d);
    s_logon(&d, "alice", "wrong");
    assert_true(s_wait(f.loop, s_msgs, &d, 2, 3000));
    assert_int_equal(d.cases[1], RB__TUNNEL__TUNNEL_CONTROL__MSG_LOGON_FAILED);
    assert_int_equal(d.reasons[1], RB__TUNNEL__FAIL_REASON__FAIL_BAD_CREDENTIALS);
    assert_int_equal(d.closed, 0);   /* open for another try */
    s_logon(&d, "bob", "secret");    /* the broker says bob has a session */
    assert_true(s_wait(f.loop, s_msgs, &d, 3, 3000));
    assert_int_equal(d.cases[2], RB__TUNNEL__TUNNEL_CONTROL__MSG_LOGON_FAILED);
    assert_int_equal(d.reasons[2], RB__TUNNEL__FAIL_REASON__FAIL_SESSION_EXISTS);
    s_logon(&d, "nobody", "secret");   /* third try: answered, then closed */
    assert_true(s_wait(f.loop, s_closed, &d, 0, 3000));
    assert_int_equal(d.n, 5);
    assert_int_equal(d.reasons[3], RB__TUNNEL__FAIL_REASON__FAIL_BAD_CREDENTIALS);
    assert_int_equal(d.cases[4], RB__TUNNEL__TUNNEL_CONTROL__MSG_SESSION_CLOSED);
    s_stop(&f);
}

static void test_drop_ends_session_and_idle(void **state)
{
    fix_t f;
    s_start(&f, "1");
    device_t d;
    s_dial(&f, &d);
    s_hello(&d);
    s_logon(&d, "alice", "secret");
    assert_true(s_wait(f.loop, s_msgs, &d, 2, 3000));
    assert_int_equal(d.cases[1], RB__TUNNEL__TUNNEL_CONTROL__MSG_LOGON_OK);
    rb_tconn_destroy(&d.c);   /* the device vanishes */
    assert_true(s_wait(f.loop, s_logoffs, &f.broker, 1, 3000));

    /* Silent for 3 x keepalive_s (1 s here): closed with CLOSE_IDLE. */
    device_t q;
    s_dial(&f, &q);
    s_hello(&q);
    uint64_t start = rb_now_ms();
    assert_true(s_wait(f.loop, s_closed, &q, 0, 6000));
    uint64_t took = rb_now_ms() - start;
    assert_true(took >= 3000);
    assert_int_equal(q.cases[q.n - 1], RB__TUNNEL__TUNNEL_CONTROL__MSG_SESSION_CLOSED);
    assert_int_equal(q.reasons[q.n - 1], RB__TUNNEL__CLOSE_REASON__CLOSE_IDLE);
    s_stop(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_logon_ping_logoff),
        cmocka_unit_test(test_out_of_order_closes),
        cmocka_unit_test(test_refusals_and_cap),
        cmocka_unit_test(test_drop_ends_session_and_idle),
    };
    /* No rb_zmq_term: after a failed test sockets stay open, and
     * terminating the context would wait for them forever. */
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
