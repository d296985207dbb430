/* edge_conn, through the whole edge service: a real edge (edge_new) on
 * 127.0.0.1, a stand-in broker on a real ROUTER socket answering through
 * rb_rpc (plus, where events matter, a raw XPUB and snapshot ROUTER as in
 * test_rb_events.c), and devices played by rb_tconn clients in the same
 * loop. Covers the logon dialogue, Ping/Pong, Logoff, messages out of
 * order, refused passwords and the per-connection cap, transfer offers
 * (accept, decline, expiry at the broker and at the edge), resume (and its
 * rate limit), a dropped connection keeping its session, refresh and its
 * "gone" answer, event-driven closes with their reasons, shutdown, and
 * the keepalive rule. */
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
#include "session_events.pb-c.h"
#include "rb_buf.h"
#include "rb_frame.h"
#include "rb_loop.h"
#include "rb_metrics.h"
#include "rb_passwd.h"
#include "rb_pb.h"
#include "rb_rpc.h"
#include "rb_tconn.h"
#include "rb_tls.h"
#include "rb_zmq.h"
#include "../tls_fixture.h"

static SSL_CTX *s_cctx;

static int s_setup(void **state)
{
    signal(SIGPIPE, SIG_IGN);
    if (tlsfx_setup("edge-conn") != 0) return -1;
    char h[RB_PASSWD_MAX];
    if (rb_passwd_hash("secret", 1, 8, 1, h) < 0) return -1;
    FILE *f = fopen(tlsfx_path("users"), "w");
    if (!f) return -1;
    fprintf(f, "alice:%s\nbob:%s\ncarol:%s:staff,ops\ndave:%s\n", h, h, h, h);
    fclose(f);
    char err[256];
    s_cctx = rb_tls_client_ctx(tlsfx_path("ca.crt"), NULL, NULL, err, sizeof err);
    return s_cctx ? 0 : -1;
}

static int s_teardown(void **state)
{
    SSL_CTX_free(s_cctx);
    return tlsfx_teardown();
}

/* ---- the stand-in broker ---- */

typedef struct {
    int logons, logoffs, pings, transfers, resumes, refreshes;
    char last_logoff[64];
    char last_groups[64];       /* of the last LogonRequest, comma-joined */
    char last_transfer_groups[64];
    size_t last_refresh_n;      /* ids in the last RefreshRequest */
    char last_refresh_first[64];
    unsigned offer_ttl;         /* expires_in_s of carol's offers */
    bool expire_offers;         /* answer transfers with OFFER_EXPIRED */
    const char *gone;           /* answer refreshes with this id gone */
    uint64_t up_seq;            /* LogonReply.up_seq of alice's logons */
    const char *alice_sid;      /* alice's session id, when not "s-1" */
    bool hold_resumes;          /* keep resume requests for s_release_resume */
    rb_rpc_req_t *held_resume;
} broker_t;

static void s_join(char *out, size_t len, char **v, size_t n)
{
    out[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        if (i) strncat(out, ",", len - strlen(out) - 1);
        strncat(out, v[i], len - strlen(out) - 1);
    }
}

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
    Rb__Edgebroker__RefreshReply rr = RB__EDGEBROKER__REFRESH_REPLY__INIT;
    Rb__Edgebroker__TransferOfferInfo oi = RB__EDGEBROKER__TRANSFER_OFFER_INFO__INIT;
    char *gone[1];
    switch (m->body_case) {
    case RB__EDGEBROKER__EDGE_TO_BROKER__BODY_LOGON:
        b->logons++;
        s_join(b->last_groups, sizeof b->last_groups, m->logon->groups, m->logon->n_groups);
        r.body_case = RB__EDGEBROKER__BROKER_TO_EDGE__BODY_LOGON;
        r.logon = &lr;
        if (strcmp(m->logon->user, "bob") == 0) {
            lr.status = RB__EDGEBROKER__LOGON_STATUS__LOGON_SESSION_EXISTS;
        } else if (strcmp(m->logon->user, "carol") == 0) {
            lr.status = RB__EDGEBROKER__LOGON_STATUS__LOGON_TRANSFER_OFFER;
            oi.offer_id = "o-1";
            oi.session_since_ms = 1764092412000ull;
            oi.device = "laptop";
            oi.edge_id = "edge-x";
            oi.source = "127.0.0.1:51234";
            oi.expires_in_s = b->offer_ttl ? b->offer_ttl : 120;
            lr.offer = &oi;
        } else if (strcmp(m->logon->user, "dave") == 0) {
            lr.session_id = "s-4";
            lr.no_address = true;
            lr.resume_token = "tok4";
        } else {
            lr.session_id = (char *)(b->alice_sid ? b->alice_sid : "s-1");
            lr.ip = "127.77.0.2";
            lr.fqdn = "alice.vpn.lab";
            lr.resume_token = "tok";
            lr.up_seq = b->up_seq;
        }
        break;
    case RB__EDGEBROKER__EDGE_TO_BROKER__BODY_TRANSFER:
        b->transfers++;
        s_join(b->last_transfer_groups, sizeof b->last_transfer_groups, m->transfer->groups,
               m->transfer->n_groups);
        r.body_case = RB__EDGEBROKER__BROKER_TO_EDGE__BODY_LOGON;
        r.logon = &lr;
        if (b->expire_offers || strcmp(m->transfer->offer_id, "o-1") != 0) {
            lr.status = RB__EDGEBROKER__LOGON_STATUS__LOGON_OFFER_EXPIRED;
        } else {
            lr.session_id = "s-3";
            lr.ip = "127.77.0.3";
            lr.fqdn = "carol.vpn.lab";
            lr.resume_token = "tok3";
        }
        break;
    case RB__EDGEBROKER__EDGE_TO_BROKER__BODY_RESUME:
        b->resumes++;
        if (b->hold_resumes && !b->held_resume) {
            b->held_resume = req;
            protobuf_c_message_free_unpacked(&m->base, NULL);
            return;
        }
        r.body_case = RB__EDGEBROKER__BROKER_TO_EDGE__BODY_LOGON;
        r.logon = &lr;
        if (strcmp(m->resume->session_id, "s-1") == 0 &&
            strcmp(m->resume->resume_token, "tok") == 0) {
            lr.session_id = "s-1";
            lr.ip = "127.77.0.2";
            lr.fqdn = "alice.vpn.lab";
            lr.resume_token = "tok";
        } else {
            lr.status = RB__EDGEBROKER__LOGON_STATUS__LOGON_RESUME_REFUSED;
        }
        break;
    case RB__EDGEBROKER__EDGE_TO_BROKER__BODY_REFRESH:
        b->refreshes++;
        b->last_refresh_n = m->refresh->n_session_ids;
        snprintf(b->last_refresh_first, sizeof b->last_refresh_first, "%s",
                 m->refresh->n_session_ids ? m->refresh->session_ids[0] : "");
        r.body_case = RB__EDGEBROKER__BROKER_TO_EDGE__BODY_REFRESH;
        r.refresh = &rr;
        if (b->gone) {
            gone[0] = (char *)b->gone;
            rr.gone = gone;
            rr.n_gone = 1;
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

/* Answers the held resume: alice's session s-1, resumed. */
static void s_release_resume(broker_t *b)
{
    assert_non_null(b->held_resume);
    Rb__Edgebroker__BrokerToEdge r = RB__EDGEBROKER__BROKER_TO_EDGE__INIT;
    Rb__Edgebroker__LogonReply lr = RB__EDGEBROKER__LOGON_REPLY__INIT;
    r.version = RB_PROTO_VERSION;
    r.body_case = RB__EDGEBROKER__BROKER_TO_EDGE__BODY_LOGON;
    r.logon = &lr;
    lr.session_id = "s-1";
    lr.ip = "127.77.0.2";
    lr.fqdn = "alice.vpn.lab";
    lr.resume_token = "tok";
    rb_rpc_reply(b->held_resume, &r.base);
    b->held_resume = NULL;
}

/* ---- the stand-in event stream: an XPUB and a snapshot ROUTER ---- */

typedef struct {
    rb_loop_t *loop;
    void *xpub, *router;
    char pub_ep[128], snap_ep[128];
    uint64_t seq;
    int subscribed;
    rb_timer_t *hb;
} events_t;

static void s_ev_publish(events_t *ev, Rb__Events__EventMessage *m)
{
    m->version = RB_PROTO_VERSION;
    rb_buf_t out = RB_BUF_INIT;
    assert_int_equal(rb_pb_pack(&m->base, &out), 0);
    assert_true(zmq_send(ev->xpub, out.data, out.len, 0) >= 0);
    rb_buf_free(&out);
}

static void s_ev_heartbeat(rb_loop_t *l, void *arg)
{
    events_t *ev = arg;
    Rb__Events__Heartbeat hb = RB__EVENTS__HEARTBEAT__INIT;
    hb.seq = ev->seq;
    hb.broker_id = "test-broker";
    Rb__Events__EventMessage m = RB__EVENTS__EVENT_MESSAGE__INIT;
    m.body_case = RB__EVENTS__EVENT_MESSAGE__BODY_HEARTBEAT;
    m.heartbeat = &hb;
    s_ev_publish(ev, &m);
}

/* One SESSION_UP or SESSION_DOWN, next in sequence. */
static void s_ev_event(events_t *ev, bool up, const char *sid, const char *edge,
                       const char *reason)
{
    Rb__Events__Session ss = RB__EVENTS__SESSION__INIT;
    ss.session_id = (char *)sid;
    ss.user = "alice";
    ss.edge_id = (char *)edge;
    Rb__Events__SessionEvent e = RB__EVENTS__SESSION_EVENT__INIT;
    e.seq = ++ev->seq;
    e.kind = up ? RB__EVENTS__EVENT_KIND__SESSION_UP : RB__EVENTS__EVENT_KIND__SESSION_DOWN;
    e.session = &ss;
    e.reason = (char *)(reason ? reason : "");
    Rb__Events__EventMessage m = RB__EVENTS__EVENT_MESSAGE__INIT;
    m.body_case = RB__EVENTS__EVENT_MESSAGE__BODY_EVENT;
    m.event = &e;
    s_ev_publish(ev, &m);
}

static void s_ev_on_xpub(rb_loop_t *l, void *sock, void *arg)
{
    events_t *ev = arg;
    char buf[64];
    int n;
    while ((n = zmq_recv(sock, buf, sizeof buf, ZMQ_DONTWAIT)) >= 0)
        if (n >= 1 && buf[0] == 1) ev->subscribed++;
}

/* Answers every SnapshotCall with an empty snapshot at the current seq. */
static void s_ev_on_router(rb_loop_t *l, void *sock, void *arg)
{
    events_t *ev = arg;
    zmq_msg_t rid, id, body;
    zmq_msg_init(&rid);
    while (zmq_msg_recv(&rid, sock, ZMQ_DONTWAIT) >= 0) {
        zmq_msg_init(&id);
        zmq_msg_init(&body);
        assert_true(zmq_msg_recv(&id, sock, 0) >= 0);
        assert_true(zmq_msg_recv(&body, sock, 0) >= 0);
        Rb__Events__Snapshot snap = RB__EVENTS__SNAPSHOT__INIT;
        snap.seq = ev->seq;
        Rb__Events__SnapshotAnswer a = RB__EVENTS__SNAPSHOT_ANSWER__INIT;
        a.version = RB_PROTO_VERSION;
        a.snapshot = &snap;
        rb_buf_t out = RB_BUF_INIT;
        assert_int_equal(rb_pb_pack(&a.base, &out), 0);
        assert_true(zmq_msg_send(&rid, sock, ZMQ_SNDMORE) >= 0);
        assert_true(zmq_msg_send(&id, sock, ZMQ_SNDMORE) >= 0);
        assert_true(zmq_send(sock, out.data, out.len, 0) >= 0);
        rb_buf_free(&out);
        zmq_msg_close(&id);
        zmq_msg_close(&body);
        zmq_msg_close(&rid);
        zmq_msg_init(&rid);
    }
    zmq_msg_close(&rid);
}

static void s_ev_start(events_t *ev, rb_loop_t *l)
{
    memset(ev, 0, sizeof *ev);
    ev->loop = l;
    ev->xpub = zmq_socket(rb_zmq_ctx(), ZMQ_XPUB);
    ev->router = zmq_socket(rb_zmq_ctx(), ZMQ_ROUTER);
    int zero = 0;
    zmq_setsockopt(ev->xpub, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(ev->router, ZMQ_LINGER, &zero, sizeof zero);
    assert_int_equal(zmq_bind(ev->xpub, "tcp://127.0.0.1:*"), 0);
    assert_int_equal(zmq_bind(ev->router, "tcp://127.0.0.1:*"), 0);
    size_t len = sizeof ev->pub_ep;
    zmq_getsockopt(ev->xpub, ZMQ_LAST_ENDPOINT, ev->pub_ep, &len);
    len = sizeof ev->snap_ep;
    zmq_getsockopt(ev->router, ZMQ_LAST_ENDPOINT, ev->snap_ep, &len);
    assert_int_equal(rb_loop_add_zsock(l, ev->xpub, s_ev_on_xpub, ev), 0);
    assert_int_equal(rb_loop_add_zsock(l, ev->router, s_ev_on_router, ev), 0);
    ev->hb = rb_loop_add_timer(l, 100, true, s_ev_heartbeat, ev);
}

static void s_ev_stop(events_t *ev)
{
    if (!ev->xpub) return;
    rb_loop_cancel_timer(ev->loop, ev->hb);
    rb_loop_del_zsock(ev->loop, ev->xpub);
    rb_loop_del_zsock(ev->loop, ev->router);
    zmq_close(ev->xpub);
    zmq_close(ev->router);
    ev->xpub = NULL;
}

/* ---- a device ---- */

typedef struct {
    rb_tconn_t *c;
    bool open;
    int closed;
    int n;                 /* control messages received */
    int cases[64];
    int reasons[64]; /* LogonFailed.reason / SessionClosed.reason */
    char ip[32];
    char session[32];
    bool no_address;
    char offer_id[32];
    char offer_device[32];
    unsigned offer_ttl;
    uint64_t closed_at;    /* when the last SessionClosed arrived */
} device_t;

static void s_dev_open(rb_tconn_t *c, void *arg) { ((device_t *)arg)->open = true; }

static void s_dev_frame(rb_tconn_t *c, const rb_frame_t *f, void *arg)
{
    device_t *d = arg;
    Rb__Tunnel__TunnelControl *m = rb_frame_control(f);
    assert_non_null(m);
    if (d->n < 64) {
        d->cases[d->n] = m->msg_case;
        if (m->msg_case == RB__TUNNEL__TUNNEL_CONTROL__MSG_LOGON_FAILED)
            d->reasons[d->n] = m->logon_failed->reason;
        if (m->msg_case == RB__TUNNEL__TUNNEL_CONTROL__MSG_SESSION_CLOSED) {
            d->reasons[d->n] = m->session_closed->reason;
            d->closed_at = rb_now_ms();
        }
        if (m->msg_case == RB__TUNNEL__TUNNEL_CONTROL__MSG_LOGON_OK) {
            snprintf(d->ip, sizeof d->ip, "%s", m->logon_ok->ip);
            snprintf(d->session, sizeof d->session, "%s", m->logon_ok->session_id);
            d->no_address = m->logon_ok->no_address;
        }
        if (m->msg_case == RB__TUNNEL__TUNNEL_CONTROL__MSG_TRANSFER_OFFER) {
            snprintf(d->offer_id, sizeof d->offer_id, "%s", m->transfer_offer->offer_id);
            snprintf(d->offer_device, sizeof d->offer_device, "%s", m->transfer_offer->device);
            d->offer_ttl = m->transfer_offer->expires_in_s;
        }
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

static const rb_tconn_handlers_t s_dev_handlers = {s_dev_open, s_dev_frame, s_dev_close, NULL};

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

static void s_answer(device_t *d, const char *offer_id, bool accept)
{
    Rb__Tunnel__TunnelControl m = RB__TUNNEL__TUNNEL_CONTROL__INIT;
    Rb__Tunnel__TransferAnswer a = RB__TUNNEL__TRANSFER_ANSWER__INIT;
    a.offer_id = (char *)offer_id;
    a.accept = accept;
    m.msg_case = RB__TUNNEL__TUNNEL_CONTROL__MSG_TRANSFER_ANSWER;
    m.transfer_answer = &a;
    s_send(d, &m);
}

static void s_resume(device_t *d, const char *sid, const char *token)
{
    Rb__Tunnel__TunnelControl m = RB__TUNNEL__TUNNEL_CONTROL__INIT;
    Rb__Tunnel__Resume r = RB__TUNNEL__RESUME__INIT;
    r.session_id = (char *)sid;
    r.resume_token = (char *)token;
    r.device = "phone";
    m.msg_case = RB__TUNNEL__TUNNEL_CONTROL__MSG_RESUME;
    m.resume = &r;
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
static bool s_refreshes(void *arg, int want) { return ((broker_t *)arg)->refreshes >= want; }
static bool s_never(void *arg, int want) { return false; }
static bool s_held(void *arg, int want)
{
    return ((broker_t *)arg)->held_resume != NULL;
}
/* The edge's event stream has applied seq want (from its status). */
static bool s_events_at(void *arg, int want)
{
    rb_buf_t b = RB_BUF_INIT;
    edge_status_json(arg, &b);
    const char *p = b.data ? strstr(b.data, "\"events_seq\":") : NULL;
    long long seq = p ? atoll(p + strlen("\"events_seq\":")) : -1;
    rb_buf_free(&b);
    return seq == want;
}
static bool s_subscribed(void *arg, int want) { return ((events_t *)arg)->subscribed > 0; }
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
    events_t events;
    edge_config_t cfg;
    edge_t *edge;
    char server[32];
    device_t *devs[16];   /* dialled, closed at s_stop */
    int ndevs;
} fix_t;

/* extra: more config lines; with_events: a stand-in event stream. */
static void s_start_with(fix_t *f, const char *keepalive, const char *extra, bool with_events)
{
    memset(f, 0, sizeof *f);
    f->loop = rb_loop_new();
    if (with_events) s_ev_start(&f->events, f->loop);
    void *router = rb_zsock_bind(ZMQ_ROUTER, "tcp://127.0.0.1:*", NULL);
    assert_non_null(router);
    char ep[128];
    size_t len = sizeof ep;
    zmq_getsockopt(router, ZMQ_LAST_ENDPOINT, ep, &len);
    f->rpc = rb_rpc_server_new(f->loop, router, s_broker_handle, &f->broker);
    assert_non_null(f->rpc);
    char conf[160];
    snprintf(conf, sizeof conf, "%s", tlsfx_path("edge.conf"));
    FILE *cf = fopen(conf, "w");
    assert_non_null(cf);
    fprintf(cf,
            "listen = 127.0.0.1:0\ntls_cert = %s\ntls_key = %s\nusers_file = %s\n"
            "broker_endpoint = %s\nkeepalive_s = %s\nedge_id = edge-t\n",
            tlsfx_path("srv.crt"), tlsfx_path("srv.key"), tlsfx_path("users"), ep, keepalive);
    if (extra) fputs(extra, cf);
    if (with_events)
        fprintf(cf, "events_endpoints = %s\nsnapshot_endpoints = %s\n", f->events.pub_ep,
                f->events.snap_ep);
    fclose(cf);
    char err[256];
    if (rb_config_load(edge_options, &f->cfg, "edge", conf, err, sizeof err) < 0)
        fail_msg("config: %s", err);
    f->edge = edge_new(f->loop, &f->cfg);
    assert_non_null(f->edge);
    snprintf(f->server, sizeof f->server, "127.0.0.1:%d", edge_port(f->edge));
    assert_true(s_wait(f->loop, s_ready, f->edge, 0, 3000));
    if (with_events) assert_true(s_wait(f->loop, s_subscribed, &f->events, 0, 3000));
}

static void s_start(fix_t *f, const char *keepalive) { s_start_with(f, keepalive, NULL, false); }

static void s_stop(fix_t *f)
{
    for (int i = 0; i < f->ndevs; i++) rb_tconn_destroy(&f->devs[i]->c);
    edge_destroy(&f->edge);
    s_ev_stop(&f->events);
    rb_rpc_server_destroy(&f->rpc);
    rb_config_free(edge_options, &f->cfg);
    rb_loop_destroy(&f->loop);
}

static void s_dial(fix_t *f, device_t *d)
{
    memset(d, 0, sizeof *d);
    d->c = rb_tconn_dial(f->loop, s_cctx, f->server, NULL, &s_dev_handlers, d);
    assert_non_null(d->c);
    assert_true(f->ndevs < 16);
    f->devs[f->ndevs++] = d;
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

/* Dials, says Hello and logs on as alice; LogonOk is the second message. */
static void s_alice_on(fix_t *f, device_t *d)
{
    s_dial(f, d);
    s_hello(d);
    s_logon(d, "alice", "secret");
    assert_true(s_wait(f->loop, s_msgs, d, 2, 3000));
    assert_int_equal(d->cases[1], RB__TUNNEL__TUNNEL_CONTROL__MSG_LOGON_OK);
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

/* A dropped connection keeps its session (no logoff); the device comes
 * back with Resume. Then the keepalive rule. */
static void s_ping_tick(rb_loop_t *loop, void *arg)
{
    device_t *d = arg;
    if (d->c && !d->closed) s_simple(d, RB__TUNNEL__TUNNEL_CONTROL__MSG_PING);
}

static void test_drop_keeps_session_and_idle(void **state)
{
    fix_t f;
    s_start(&f, "1");
    device_t d;
    s_alice_on(&f, &d);
    rb_tconn_destroy(&d.c);   /* the device vanishes */
    s_wait(f.loop, s_never, NULL, 0, 300);
    assert_int_equal(f.broker.logoffs, 0);
    assert_true(s_metric("reachback_edge_sessions ") == 0);

    device_t r;
    s_dial(&f, &r);
    s_hello(&r);
    s_resume(&r, "s-1", "tok");
    assert_true(s_wait(f.loop, s_msgs, &r, 2, 3000));
    assert_int_equal(r.cases[1], RB__TUNNEL__TUNNEL_CONTROL__MSG_LOGON_OK);
    assert_string_equal(r.session, "s-1");
    assert_string_equal(r.ip, "127.77.0.2");
    assert_int_equal(f.broker.resumes, 1);
    assert_true(s_metric("reachback_edge_resumes_total{result=\"ok\"} ") == 1);
    rb_tconn_destroy(&r.c);

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
    assert_int_equal(f.broker.logoffs, 0);

    /* Pings alone are not progress before a logon: a peer that pings and
     * never logs on is closed like a silent one (each Ping is answered). */
    device_t pinger;
    s_dial(&f, &pinger);
    s_hello(&pinger);
    rb_timer_t *pt = rb_loop_add_timer(f.loop, 500, true, s_ping_tick, &pinger);
    assert_non_null(pt);
    start = rb_now_ms();
    assert_true(s_wait(f.loop, s_closed, &pinger, 0, 6000));
    took = rb_now_ms() - start;
    rb_loop_cancel_timer(f.loop, pt);
    assert_true(took >= 3000);
    assert_int_equal(pinger.cases[1], RB__TUNNEL__TUNNEL_CONTROL__MSG_PONG);
    assert_int_equal(pinger.cases[pinger.n - 1], RB__TUNNEL__TUNNEL_CONTROL__MSG_SESSION_CLOSED);
    assert_int_equal(pinger.reasons[pinger.n - 1], RB__TUNNEL__CLOSE_REASON__CLOSE_IDLE);
    s_stop(&f);
}

/* A wrong token is refused and counted against the address like a failed
 * password: with 2 failures allowed per address, the third attempt is
 * refused without asking the broker, even with the right token. */
static void test_resume_refused_and_rate_limited(void **state)
{
    fix_t f;
    s_start_with(&f, "15", "auth_max_failures_per_addr = 2\n", false);
    device_t d;
    s_dial(&f, &d);
    s_hello(&d);
    s_resume(&d, "s-1", "guess1");
    assert_true(s_wait(f.loop, s_msgs, &d, 2, 3000));
    assert_int_equal(d.cases[1], RB__TUNNEL__TUNNEL_CONTROL__MSG_LOGON_FAILED);
    assert_int_equal(d.reasons[1], RB__TUNNEL__FAIL_REASON__FAIL_RESUME_REFUSED);
    assert_int_equal(d.closed, 0);
    s_resume(&d, "s-9", "guess2");
    assert_true(s_wait(f.loop, s_msgs, &d, 3, 3000));
    assert_int_equal(d.reasons[2], RB__TUNNEL__FAIL_REASON__FAIL_RESUME_REFUSED);
    s_resume(&d, "s-1", "tok");   /* third try: rate limited, then the cap closes */
    assert_true(s_wait(f.loop, s_closed, &d, 0, 3000));
    assert_int_equal(d.cases[3], RB__TUNNEL__TUNNEL_CONTROL__MSG_LOGON_FAILED);
    assert_int_equal(d.reasons[3], RB__TUNNEL__FAIL_REASON__FAIL_RATE_LIMITED);
    assert_int_equal(f.broker.resumes, 2);
    assert_true(s_metric("reachback_edge_resumes_total{result=\"refused\"} ") == 2);
    assert_true(s_metric("reachback_edge_resumes_total{result=\"rate_limited\"} ") == 1);

    /* The address is locked for logons too. */
    device_t e;
    s_dial(&f, &e);
    s_hello(&e);
    s_logon(&e, "alice", "secret");
    assert_true(s_wait(f.loop, s_msgs, &e, 2, 3000));
    assert_int_equal(e.reasons[1], RB__TUNNEL__FAIL_REASON__FAIL_RATE_LIMITED);
    assert_int_equal(f.broker.logons, 0);

    /* Resume fields are checked like Logon's. */
    device_t g;
    s_dial(&f, &g);
    s_hello(&g);
    s_resume(&g, "", "tok");
    assert_true(s_wait(f.loop, s_closed, &g, 0, 3000));
    assert_int_equal(g.reasons[g.n - 1], RB__TUNNEL__CLOSE_REASON__CLOSE_PROTOCOL);
    s_stop(&f);
}

/* Eight wrong logons from one address at once, with 3 failures allowed
 * per address: checks in flight count like failures, so exactly 3 are
 * checked (unknown users: the dummy hash's full cost, so all 8 arrive
 * before the first answer) and the other 5 are refused at once. */
static void test_parallel_logons_get_no_extra_guesses(void **state)
{
    fix_t f;
    s_start_with(&f, "15", "auth_max_failures_per_addr = 3\n", false);
    const char *m_bad = "reachback_logons_total{result=\"bad_credentials\"} ";
    const char *m_limited = "reachback_logons_total{result=\"rate_limited\"} ";
    double bad0 = s_metric(m_bad), limited0 = s_metric(m_limited);
    static device_t d[8];
    for (int i = 0; i < 8; i++) {
        s_dial(&f, &d[i]);
        s_hello(&d[i]);
    }
    for (int i = 0; i < 8; i++) {
        char user[16];
        snprintf(user, sizeof user, "nobody%d", i);
        s_logon(&d[i], user, "guess");
    }
    int bad = 0, limited = 0;
    for (int i = 0; i < 8; i++) {
        assert_true(s_wait(f.loop, s_msgs, &d[i], 2, 5000));
        assert_int_equal(d[i].cases[1], RB__TUNNEL__TUNNEL_CONTROL__MSG_LOGON_FAILED);
        if (d[i].reasons[1] == RB__TUNNEL__FAIL_REASON__FAIL_BAD_CREDENTIALS) bad++;
        if (d[i].reasons[1] == RB__TUNNEL__FAIL_REASON__FAIL_RATE_LIMITED) limited++;
    }
    assert_int_equal(bad, 3);
    assert_int_equal(limited, 5);
    assert_true(s_metric(m_bad) - bad0 == 3);
    assert_true(s_metric(m_limited) - limited0 == 5);
    /* The address is locked now, even for the right password. */
    s_logon(&d[0], "alice", "secret");
    assert_true(s_wait(f.loop, s_msgs, &d[0], 3, 3000));
    assert_int_equal(d[0].reasons[2], RB__TUNNEL__FAIL_REASON__FAIL_RATE_LIMITED);
    assert_int_equal(f.broker.logons, 0);
    s_stop(&f);
}

/* carol has a session elsewhere: the logon gets an offer; accepting gets
 * the session (groups go with both requests). */
static void test_offer_accept(void **state)
{
    fix_t f;
    s_start(&f, "15");
    device_t d;
    s_dial(&f, &d);
    s_hello(&d);
    s_logon(&d, "carol", "secret");
    assert_true(s_wait(f.loop, s_msgs, &d, 2, 3000));
    assert_int_equal(d.cases[1], RB__TUNNEL__TUNNEL_CONTROL__MSG_TRANSFER_OFFER);
    assert_string_equal(d.offer_id, "o-1");
    assert_string_equal(d.offer_device, "laptop");
    assert_int_equal(d.offer_ttl, 120);
    assert_string_equal(f.broker.last_groups, "staff,ops");
    /* Waiting for the person: pings are fine, a Logon is not. */
    s_simple(&d, RB__TUNNEL__TUNNEL_CONTROL__MSG_PING);
    assert_true(s_wait(f.loop, s_msgs, &d, 3, 3000));
    assert_int_equal(d.cases[2], RB__TUNNEL__TUNNEL_CONTROL__MSG_PONG);
    s_answer(&d, "o-1", true);
    assert_true(s_wait(f.loop, s_msgs, &d, 4, 3000));
    assert_int_equal(d.cases[3], RB__TUNNEL__TUNNEL_CONTROL__MSG_LOGON_OK);
    assert_string_equal(d.ip, "127.77.0.3");
    assert_string_equal(d.session, "s-3");
    assert_int_equal(f.broker.transfers, 1);
    assert_string_equal(f.broker.last_transfer_groups, "staff,ops");
    assert_true(s_metric("reachback_edge_transfers_total{result=\"ok\"} ") == 1);
    assert_true(s_metric("reachback_logons_total{result=\"offered\"} ") == 1);
    assert_true(s_metric("reachback_edge_sessions ") == 1);

    /* A second offer on another connection; answering with the wrong id
     * is a protocol error. */
    device_t e;
    s_dial(&f, &e);
    s_hello(&e);
    s_logon(&e, "carol", "secret");
    assert_true(s_wait(f.loop, s_msgs, &e, 2, 3000));
    s_answer(&e, "o-other", true);
    assert_true(s_wait(f.loop, s_closed, &e, 0, 3000));
    assert_int_equal(e.reasons[e.n - 1], RB__TUNNEL__CLOSE_REASON__CLOSE_PROTOCOL);
    /* And an answer with no offer at all. */
    device_t g;
    s_dial(&f, &g);
    s_hello(&g);
    s_answer(&g, "o-1", true);
    assert_true(s_wait(f.loop, s_closed, &g, 0, 3000));
    assert_int_equal(g.reasons[g.n - 1], RB__TUNNEL__CLOSE_REASON__CLOSE_PROTOCOL);
    assert_int_equal(f.broker.transfers, 1);
    s_stop(&f);
}

static void test_offer_decline_and_expiry(void **state)
{
    fix_t f;
    s_start(&f, "15");
    /* Declined: SessionClosed{DECLINED}, nothing asked of the broker. */
    device_t d;
    s_dial(&f, &d);
    s_hello(&d);
    s_logon(&d, "carol", "secret");
    assert_true(s_wait(f.loop, s_msgs, &d, 2, 3000));
    s_answer(&d, "o-1", false);
    assert_true(s_wait(f.loop, s_closed, &d, 0, 3000));
    assert_int_equal(d.cases[2], RB__TUNNEL__TUNNEL_CONTROL__MSG_SESSION_CLOSED);
    assert_int_equal(d.reasons[2], RB__TUNNEL__CLOSE_REASON__CLOSE_DECLINED);
    assert_int_equal(f.broker.transfers, 0);
    assert_true(s_metric("reachback_edge_transfers_total{result=\"declined\"} ") == 1);

    /* The broker says the offer expired: LogonFailed, the connection stays. */
    f.broker.expire_offers = true;
    device_t e;
    s_dial(&f, &e);
    s_hello(&e);
    s_logon(&e, "carol", "secret");
    assert_true(s_wait(f.loop, s_msgs, &e, 2, 3000));
    s_answer(&e, "o-1", true);
    assert_true(s_wait(f.loop, s_msgs, &e, 3, 3000));
    assert_int_equal(e.cases[2], RB__TUNNEL__TUNNEL_CONTROL__MSG_LOGON_FAILED);
    assert_int_equal(e.reasons[2], RB__TUNNEL__FAIL_REASON__FAIL_TRANSFER_EXPIRED);
    assert_int_equal(e.closed, 0);
    s_logon(&e, "alice", "secret");   /* a new try on the same connection */
    assert_true(s_wait(f.loop, s_msgs, &e, 4, 3000));
    assert_int_equal(e.cases[3], RB__TUNNEL__TUNNEL_CONTROL__MSG_LOGON_OK);

    /* Unanswered past expires_in_s: the edge says expired by itself; an
     * answer that crosses it is dropped without closing. */
    f.broker.expire_offers = false;
    f.broker.offer_ttl = 1;
    device_t g;
    s_dial(&f, &g);
    s_hello(&g);
    s_logon(&g, "carol", "secret");
    assert_true(s_wait(f.loop, s_msgs, &g, 2, 3000));
    assert_int_equal(g.offer_ttl, 1);
    uint64_t start = rb_now_ms();
    assert_true(s_wait(f.loop, s_msgs, &g, 3, 3000));
    assert_true(rb_now_ms() - start >= 900);
    assert_int_equal(g.cases[2], RB__TUNNEL__TUNNEL_CONTROL__MSG_LOGON_FAILED);
    assert_int_equal(g.reasons[2], RB__TUNNEL__FAIL_REASON__FAIL_TRANSFER_EXPIRED);
    s_answer(&g, "o-1", true);
    s_simple(&g, RB__TUNNEL__TUNNEL_CONTROL__MSG_PING);
    assert_true(s_wait(f.loop, s_msgs, &g, 4, 3000));
    assert_int_equal(g.cases[3], RB__TUNNEL__TUNNEL_CONTROL__MSG_PONG);
    assert_int_equal(g.closed, 0);
    /* Once: a second answer to the lapsed offer is out of order. */
    s_answer(&g, "o-1", true);
    assert_true(s_wait(f.loop, s_closed, &g, 0, 3000));
    assert_int_equal(g.reasons[g.n - 1], RB__TUNNEL__CLOSE_REASON__CLOSE_PROTOCOL);
    assert_int_equal(f.broker.transfers, 1);   /* only e's */
    assert_true(s_metric("reachback_edge_transfers_total{result=\"expired\"} ") == 2);
    s_stop(&f);
}

/* A lapsed offer lets a device that only pings stay (a person may be
 * deciding); once it says anything else (here a wrong logon), pings alone
 * are no longer progress and the idle rule closes it. */
static void test_deciding_ends_with_the_next_message(void **state)
{
    fix_t f;
    s_start(&f, "1");
    f.broker.offer_ttl = 1;
    device_t g;
    s_dial(&f, &g);
    s_hello(&g);
    s_logon(&g, "carol", "secret");
    assert_true(s_wait(f.loop, s_msgs, &g, 3, 3000));
    assert_int_equal(g.reasons[2], RB__TUNNEL__FAIL_REASON__FAIL_TRANSFER_EXPIRED);
    rb_timer_t *pt = rb_loop_add_timer(f.loop, 400, true, s_ping_tick, &g);
    assert_non_null(pt);
    s_wait(f.loop, s_never, NULL, 0, 4500); /* past 3 x keepalive_s */
    assert_int_equal(g.closed, 0);
    s_logon(&g, "carol", "wrong");
    uint64_t start = rb_now_ms();
    assert_true(s_wait(f.loop, s_closed, &g, 0, 8000));
    rb_loop_cancel_timer(f.loop, pt);
    assert_true(rb_now_ms() - start >= 2500);
    assert_int_equal(g.cases[g.n - 1], RB__TUNNEL__TUNNEL_CONTROL__MSG_SESSION_CLOSED);
    assert_int_equal(g.reasons[g.n - 1], RB__TUNNEL__CLOSE_REASON__CLOSE_IDLE);
    s_stop(&f);
}

/* LogonOk without an address (spillover): ip and fqdn empty, flag set. */
static void test_no_address(void **state)
{
    fix_t f;
    s_start(&f, "15");
    device_t d;
    s_dial(&f, &d);
    s_hello(&d);
    s_logon(&d, "dave", "secret");
    assert_true(s_wait(f.loop, s_msgs, &d, 2, 3000));
    assert_int_equal(d.cases[1], RB__TUNNEL__TUNNEL_CONTROL__MSG_LOGON_OK);
    assert_true(d.no_address);
    assert_string_equal(d.ip, "");
    assert_string_equal(d.session, "s-4");
    s_stop(&f);
}

/* Every refresh_s the edge lists its sessions; a "gone" answer closes the
 * tunnel with EXPIRED, without a logoff. */
static void test_refresh_gone(void **state)
{
    fix_t f;
    s_start_with(&f, "15", "refresh_s = 1\n", false);
    device_t d;
    s_dial(&f, &d);
    s_hello(&d);
    s_logon(&d, "alice", "secret");
    assert_true(s_wait(f.loop, s_msgs, &d, 2, 3000));
    int before = f.broker.refreshes;
    assert_true(s_wait(f.loop, s_refreshes, &f.broker, before + 1, 2500));
    assert_int_equal(f.broker.last_refresh_n, 1);
    assert_string_equal(f.broker.last_refresh_first, "s-1");
    assert_int_equal(d.closed, 0);
    f.broker.gone = "s-1";
    assert_true(s_wait(f.loop, s_closed, &d, 0, 3000));
    assert_int_equal(d.cases[d.n - 1], RB__TUNNEL__TUNNEL_CONTROL__MSG_SESSION_CLOSED);
    assert_int_equal(d.reasons[d.n - 1], RB__TUNNEL__CLOSE_REASON__CLOSE_EXPIRED);
    assert_int_equal(f.broker.logoffs, 0);
    assert_true(s_metric("reachback_edge_kicks_total{reason=\"expired\"} ") == 1);
    /* Nothing carried: the next round is empty (the edge is alive). */
    before = f.broker.refreshes;
    assert_true(s_wait(f.loop, s_refreshes, &f.broker, before + 1, 2500));
    assert_int_equal(f.broker.last_refresh_n, 0);
    s_stop(&f);
}

/* SESSION_DOWN of a session carried here closes its tunnel at once, with
 * the reason the event names; SESSION_UP on another edge closes it as
 * REPLACED; events about other sessions change nothing. */
static void test_event_closes(void **state)
{
    static const struct {
        const char *reason;
        int close;
    } cases[] = {
        {"transferred", RB__TUNNEL__CLOSE_REASON__CLOSE_TRANSFERRED},
        {"replaced", RB__TUNNEL__CLOSE_REASON__CLOSE_REPLACED},
        {"kicked", RB__TUNNEL__CLOSE_REASON__CLOSE_KICKED},
        {"expired", RB__TUNNEL__CLOSE_REASON__CLOSE_EXPIRED},
        {"logoff", RB__TUNNEL__CLOSE_REASON__CLOSE_LOGOFF},
        {NULL, RB__TUNNEL__CLOSE_REASON__CLOSE_REPLACED},   /* UP elsewhere */
    };
    fix_t f;
    s_start_with(&f, "15", NULL, true);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        /* A session of its own each time: an ended one stays ended. */
        char sid[16];
        snprintf(sid, sizeof sid, "s-e%zu", i);
        f.broker.alice_sid = sid;
        device_t d;
        s_alice_on(&f, &d);
        /* Not ours, or ours and still here: nothing happens. */
        s_ev_event(&f.events, false, "s-other", "edge-t", "kicked");
        s_ev_event(&f.events, true, sid, "edge-t", NULL);
        s_wait(f.loop, s_never, NULL, 0, 200);
        assert_int_equal(d.closed, 0);
        uint64_t sent = rb_now_ms();
        if (cases[i].reason)
            s_ev_event(&f.events, false, sid, "edge-t", cases[i].reason);
        else
            s_ev_event(&f.events, true, sid, "edge-9", NULL);
        assert_true(s_wait(f.loop, s_closed, &d, 0, 3000));
        assert_true(d.closed_at - sent < 1000);
        assert_int_equal(d.cases[d.n - 1], RB__TUNNEL__TUNNEL_CONTROL__MSG_SESSION_CLOSED);
        assert_int_equal(d.reasons[d.n - 1], cases[i].close);
        f.ndevs--;   /* d goes out of scope */
    }
    assert_int_equal(f.broker.logoffs, 0);
    assert_true(s_metric("reachback_edge_kicks_total{reason=\"transferred\"} ") == 1);
    assert_true(s_metric("reachback_edge_kicks_total{reason=\"replaced\"} ") == 2);
    assert_true(s_metric("reachback_edge_kicks_total{reason=\"kicked\"} ") == 1);
    s_stop(&f);
}

/* alice's device visited edge-9 and came back: the broker answered its
 * logon here with up_seq N, and the UP of the visit (seq N - 1) arrives
 * only now. It is older than ours and must not close the live tunnel; an
 * UP elsewhere after ours still does. */
/* The end of a session reaches the edge before the answer to a resume of
 * it, while an older connection here still carries it: the end closes that
 * connection, and the resumed one too when its answer comes. */
static void test_end_before_the_resume_answer(void **state)
{
    fix_t f;
    s_start_with(&f, "15", NULL, true);
    device_t old;
    s_alice_on(&f, &old);
    f.broker.hold_resumes = true;
    device_t d;
    s_dial(&f, &d);
    s_hello(&d);
    s_resume(&d, "s-1", "tok");
    assert_true(s_wait(f.loop, s_held, &f.broker, 0, 3000));
    s_ev_event(&f.events, false, "s-1", "edge-t", "transferred");
    assert_true(s_wait(f.loop, s_closed, &old, 0, 3000));
    s_release_resume(&f.broker);
    assert_true(s_wait(f.loop, s_closed, &d, 0, 3000));
    assert_int_equal(d.cases[1], RB__TUNNEL__TUNNEL_CONTROL__MSG_LOGON_OK);
    assert_int_equal(d.cases[d.n - 1], RB__TUNNEL__TUNNEL_CONTROL__MSG_SESSION_CLOSED);
    assert_int_equal(d.reasons[d.n - 1], RB__TUNNEL__CLOSE_REASON__CLOSE_TRANSFERRED);
    s_stop(&f);
}

static void test_stale_up_event_ignored(void **state)
{
    fix_t f;
    s_start_with(&f, "15", NULL, true);
    f.broker.up_seq = f.events.seq + 2;
    device_t d;
    s_alice_on(&f, &d);
    s_ev_event(&f.events, true, "s-1", "edge-9", NULL); /* the visit: older */
    s_ev_event(&f.events, true, "s-1", "edge-t", NULL); /* ours */
    assert_int_equal(f.events.seq, f.broker.up_seq);
    /* Applied, both: only then does "not closed" mean anything. */
    assert_true(s_wait(f.loop, s_events_at, f.edge, (int)f.events.seq, 3000));
    s_wait(f.loop, s_never, NULL, 0, 100);
    assert_int_equal(d.closed, 0);
    s_ev_event(&f.events, true, "s-1", "edge-9", NULL); /* newer: it moved */
    assert_true(s_wait(f.loop, s_closed, &d, 0, 3000));
    assert_int_equal(d.cases[d.n - 1], RB__TUNNEL__TUNNEL_CONTROL__MSG_SESSION_CLOSED);
    assert_int_equal(d.reasons[d.n - 1], RB__TUNNEL__CLOSE_REASON__CLOSE_REPLACED);
    s_stop(&f);
}

/* Redis lost its data and the event sequence starts again low: the seq
 * alice's logon got (1000) is of the old numbering, and an UP elsewhere
 * in the new one must still close her tunnel. */
static void test_stale_up_rule_after_the_sequence_restarts(void **state)
{
    fix_t f;
    s_start_with(&f, "15", NULL, true);
    f.broker.up_seq = 1000;
    device_t d;
    s_alice_on(&f, &d);
    s_ev_event(&f.events, true, "s-1", "edge-9", NULL); /* below 1000: ignored */
    assert_true(s_wait(f.loop, s_events_at, f.edge, (int)f.events.seq, 3000));
    s_wait(f.loop, s_never, NULL, 0, 100);
    assert_int_equal(d.closed, 0);
    /* The brokers' heartbeats now say 0: after 3 s behind, a snapshot. */
    f.events.seq = 0;
    assert_true(s_wait(f.loop, s_events_at, f.edge, 0, 8000));
    s_ev_event(&f.events, true, "s-1", "edge-9", NULL); /* seq 1, new numbering */
    assert_true(s_wait(f.loop, s_closed, &d, 0, 3000));
    assert_int_equal(d.reasons[d.n - 1], RB__TUNNEL__CLOSE_REASON__CLOSE_REPLACED);
    s_stop(&f);
}

/* SIGTERM: SessionClosed{SHUTDOWN} to every device, no logoffs. */
static void test_shutdown_keeps_sessions(void **state)
{
    fix_t f;
    s_start(&f, "15");
    device_t d;
    s_dial(&f, &d);
    s_hello(&d);
    s_logon(&d, "alice", "secret");
    assert_true(s_wait(f.loop, s_msgs, &d, 2, 3000));
    edge_shutdown(f.edge);
    /* The edge stops the loop once its connections are gone; run on. */
    for (int i = 0; i < 10 && !d.closed; i++) s_wait(f.loop, s_closed, &d, 0, 500);
    assert_int_equal(d.closed, 1);
    assert_int_equal(d.cases[d.n - 1], RB__TUNNEL__TUNNEL_CONTROL__MSG_SESSION_CLOSED);
    assert_int_equal(d.reasons[d.n - 1], RB__TUNNEL__CLOSE_REASON__CLOSE_SHUTDOWN);
    s_wait(f.loop, s_never, NULL, 0, 200);
    assert_int_equal(f.broker.logoffs, 0);
    s_stop(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_logon_ping_logoff),
        cmocka_unit_test(test_out_of_order_closes),
        cmocka_unit_test(test_refusals_and_cap),
        cmocka_unit_test(test_drop_keeps_session_and_idle),
        cmocka_unit_test(test_resume_refused_and_rate_limited),
        cmocka_unit_test(test_parallel_logons_get_no_extra_guesses),
        cmocka_unit_test(test_offer_accept),
        cmocka_unit_test(test_offer_decline_and_expiry),
        cmocka_unit_test(test_deciding_ends_with_the_next_message),
        cmocka_unit_test(test_no_address),
        cmocka_unit_test(test_refresh_gone),
        cmocka_unit_test(test_event_closes),
        cmocka_unit_test(test_end_before_the_resume_answer),
        cmocka_unit_test(test_stale_up_event_ignored),
        cmocka_unit_test(test_stale_up_rule_after_the_sequence_restarts),
        cmocka_unit_test(test_shutdown_keeps_sessions),
    };
    /* No rb_zmq_term: after a failed test sockets stay open, and
     * terminating the context would wait for them forever. */
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
