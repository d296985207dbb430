/* client_session against stand-in edges: real TLS listeners on 127.0.0.1
 * whose side of the dialogue the test scripts (rb_tconn servers in the
 * same loop). Covers answering a transfer offer, an offer that runs out
 * while the person thinks (yes -> 15, no -> 10), an offer withdrawn when
 * its edge drops before the next edge offers, an edge that never answers
 * Hello, close reasons as results,
 * resuming on the next server after a drop and after SHUTDOWN (Resume with
 * the session and token, no Logon), a refused resume (16), giving up after
 * the resume timeout (8), and the backoff schedule. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "client_session.h"
#include "rb_frame.h"
#include "rb_loop.h"
#include "rb_tconn.h"
#include "rb_tls.h"
#include "../tls_fixture.h"

static SSL_CTX *s_sctx, *s_cctx;

static int s_setup(void **state) { return tlsfx_pair_setup("client", &s_sctx, &s_cctx); }

static int s_teardown(void **state) { return tlsfx_pair_teardown(&s_sctx, &s_cctx); }

/* ---- a stand-in edge ---- */

typedef enum {
    LOGON_OK,
    LOGON_OFFER,
    LOGON_OFFER_LAPSES,
    LOGON_OFFER_SHUTDOWN, /* offers, then stops when the offer is accepted */
    LOGON_DROP,
    LOGON_SHUTDOWN,
    MUTE,         /* finishes TLS, then answers nothing (not even Hello) */
    HELLO_SHUTDOWN /* answers Hello with SessionClosed{SHUTDOWN} */
} logon_mode_t;

typedef struct {
    rb_loop_t *loop;
    const char *name;
    int lfd;
    char addr[32];
    rb_tconn_t *c;           /* the current device connection */
    logon_mode_t logon_mode;
    bool resume_ok;
    int logons, resumes, answers;
    bool last_accept;
    char resume_sid[32], resume_tok[32];
} edge_t;

static void s_reply(edge_t *e, Rb__Tunnel__TunnelControl *m)
{
    assert_int_equal(rb_tconn_send_control(e->c, m), 0);
}

static void s_logon_ok(edge_t *e, const char *sid, const char *token)
{
    Rb__Tunnel__TunnelControl m = RB__TUNNEL__TUNNEL_CONTROL__INIT;
    Rb__Tunnel__LogonOk ok = RB__TUNNEL__LOGON_OK__INIT;
    ok.session_id = (char *)sid;
    ok.ip = "127.77.0.2";
    ok.fqdn = "alice.vpn.lab";
    ok.resume_token = (char *)token;
    ok.keepalive_s = 15;
    m.msg_case = RB__TUNNEL__TUNNEL_CONTROL__MSG_LOGON_OK;
    m.logon_ok = &ok;
    s_reply(e, &m);
}

static void s_failed(edge_t *e, Rb__Tunnel__FailReason r)
{
    Rb__Tunnel__TunnelControl m = RB__TUNNEL__TUNNEL_CONTROL__INIT;
    Rb__Tunnel__LogonFailed lf = RB__TUNNEL__LOGON_FAILED__INIT;
    lf.reason = r;
    m.msg_case = RB__TUNNEL__TUNNEL_CONTROL__MSG_LOGON_FAILED;
    m.logon_failed = &lf;
    s_reply(e, &m);
}

static void s_closed(edge_t *e, Rb__Tunnel__CloseReason r)
{
    Rb__Tunnel__TunnelControl m = RB__TUNNEL__TUNNEL_CONTROL__INIT;
    Rb__Tunnel__SessionClosed sc = RB__TUNNEL__SESSION_CLOSED__INIT;
    sc.reason = r;
    m.msg_case = RB__TUNNEL__TUNNEL_CONTROL__MSG_SESSION_CLOSED;
    m.session_closed = &sc;
    s_reply(e, &m);
    rb_tconn_close_after_flush(e->c);
}

static void s_edge_frame(rb_tconn_t *c, const rb_frame_t *f, void *arg)
{
    edge_t *e = arg;
    Rb__Tunnel__TunnelControl *m = rb_frame_control(f);
    assert_non_null(m);
    Rb__Tunnel__TunnelControl r = RB__TUNNEL__TUNNEL_CONTROL__INIT;
    switch (m->msg_case) {
    case RB__TUNNEL__TUNNEL_CONTROL__MSG_HELLO: {
        if (e->logon_mode == MUTE) break;
        if (e->logon_mode == HELLO_SHUTDOWN) {
            s_closed(e, RB__TUNNEL__CLOSE_REASON__CLOSE_SHUTDOWN);
            break;
        }
        Rb__Tunnel__HelloAck ack = RB__TUNNEL__HELLO_ACK__INIT;
        ack.version = RB_TUNNEL_VERSION;
        ack.edge_id = (char *)e->name;
        r.msg_case = RB__TUNNEL__TUNNEL_CONTROL__MSG_HELLO_ACK;
        r.hello_ack = &ack;
        s_reply(e, &r);
        break;
    }
    case RB__TUNNEL__TUNNEL_CONTROL__MSG_LOGON:
        e->logons++;
        if (e->logon_mode == LOGON_DROP) {
            rb_tconn_destroy(&e->c);   /* the edge dies mid-logon */
        } else if (e->logon_mode == LOGON_SHUTDOWN) {
            s_closed(e, RB__TUNNEL__CLOSE_REASON__CLOSE_SHUTDOWN);
        } else if (e->logon_mode == LOGON_OK) {
            s_logon_ok(e, "s-1", "tok-1");
        } else {
            Rb__Tunnel__TransferOffer o = RB__TUNNEL__TRANSFER_OFFER__INIT;
            o.offer_id = "o-1";
            o.session_since_ms = 1764092412000ull;
            o.device = "laptop";
            o.edge_id = "edge1";
            o.expires_in_s = 120;
            r.msg_case = RB__TUNNEL__TUNNEL_CONTROL__MSG_TRANSFER_OFFER;
            r.transfer_offer = &o;
            s_reply(e, &r);
            if (e->logon_mode == LOGON_OFFER_LAPSES)
                s_failed(e, RB__TUNNEL__FAIL_REASON__FAIL_TRANSFER_EXPIRED);
        }
        break;
    case RB__TUNNEL__TUNNEL_CONTROL__MSG_TRANSFER_ANSWER:
        e->answers++;
        e->last_accept = m->transfer_answer->accept;
        assert_string_equal(m->transfer_answer->offer_id, "o-1");
        if (e->logon_mode == LOGON_OFFER_LAPSES) break;   /* a real edge drops it */
        if (e->logon_mode == LOGON_OFFER_SHUTDOWN)
            s_closed(e, RB__TUNNEL__CLOSE_REASON__CLOSE_SHUTDOWN);
        else if (m->transfer_answer->accept)
            s_logon_ok(e, "s-2", "tok-2");
        else s_closed(e, RB__TUNNEL__CLOSE_REASON__CLOSE_DECLINED);
        break;
    case RB__TUNNEL__TUNNEL_CONTROL__MSG_RESUME:
        e->resumes++;
        snprintf(e->resume_sid, sizeof e->resume_sid, "%s", m->resume->session_id);
        snprintf(e->resume_tok, sizeof e->resume_tok, "%s", m->resume->resume_token);
        if (e->resume_ok) s_logon_ok(e, m->resume->session_id, "tok-r");
        else s_failed(e, RB__TUNNEL__FAIL_REASON__FAIL_RESUME_REFUSED);
        break;
    case RB__TUNNEL__TUNNEL_CONTROL__MSG_LOGOFF:
        s_closed(e, RB__TUNNEL__CLOSE_REASON__CLOSE_LOGOFF);
        break;
    default: break;
    }
    rb__tunnel__tunnel_control__free_unpacked(m, NULL);
}

static void s_edge_close(rb_tconn_t *c, rb_tconn_end_t end, const char *reason, void *arg)
{
    edge_t *e = arg;
    if (e->c == c) rb_tconn_destroy(&e->c);
    else rb_tconn_destroy(&c);
}

static const rb_tconn_handlers_t s_edge_handlers = {NULL, s_edge_frame, s_edge_close, NULL};

static void s_edge_accept(rb_loop_t *loop, int fd, unsigned events, void *arg)
{
    edge_t *e = arg;
    int cfd = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (cfd < 0) return;
    rb_tconn_destroy(&e->c);   /* one device at a time */
    e->c = rb_tconn_accept(loop, s_sctx, cfd, "device", &s_edge_handlers, e);
}

static void s_edge_start(edge_t *e, rb_loop_t *loop, const char *name)
{
    memset(e, 0, sizeof *e);
    e->loop = loop;
    e->name = name;
    e->resume_ok = true;
    e->lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof sa;
    assert_int_equal(bind(e->lfd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(listen(e->lfd, 16), 0);
    getsockname(e->lfd, (struct sockaddr *)&sa, &sl);
    snprintf(e->addr, sizeof e->addr, "127.0.0.1:%d", ntohs(sa.sin_port));
    assert_int_equal(rb_loop_add_fd(loop, e->lfd, RB_EV_READ, s_edge_accept, e), 0);
}

/* Stops listening: connects are refused from now on. */
static void s_edge_stop(edge_t *e)
{
    if (e->lfd < 0) return;
    rb_loop_del_fd(e->loop, e->lfd);
    close(e->lfd);
    e->lfd = -1;
    rb_tconn_destroy(&e->c);
}

/* ---- the device under test ---- */

typedef struct {
    rb_loop_t *loop;
    client_session_t *s;
    int logons, offers, resuming;
    int withdrawn;           /* on_offer(NULL): the pending offer is gone */
    char end_msg[256];
    bool resumed, no_address;
    char edge_id[32], session[32];
    int answer;              /* on_offer: 1 accept, 0 decline, -1 later */
    bool ended;
    client_result_t result;
    uint64_t ended_at;
} device_t;

static void s_on_logon(void *arg, const client_logon_info_t *i)
{
    device_t *d = arg;
    d->logons++;
    d->resumed = i->resumed;
    d->no_address = i->no_address;
    snprintf(d->edge_id, sizeof d->edge_id, "%s", i->edge_id);
    snprintf(d->session, sizeof d->session, "%s", i->session_id);
}

static void s_on_offer(void *arg, const client_offer_t *o)
{
    device_t *d = arg;
    if (!o) {
        d->withdrawn++;
        return;
    }
    /* A new offer only after the last unanswered one was withdrawn. */
    if (d->answer < 0) assert_int_equal(d->withdrawn, d->offers);
    d->offers++;
    assert_string_equal(o->device, "laptop");
    assert_int_equal(o->expires_in_s, 120);
    if (d->answer >= 0) client_session_answer(d->s, d->answer == 1);
}

static void s_on_resuming(void *arg, const char *why) { ((device_t *)arg)->resuming++; }

static void s_on_end(void *arg, client_result_t r, const char *msg)
{
    device_t *d = arg;
    d->ended = true;
    d->result = r;
    snprintf(d->end_msg, sizeof d->end_msg, "%s", msg);
    d->ended_at = rb_now_ms();
}

static const client_session_handlers_t s_dev_handlers = {
    s_on_logon, s_on_offer, s_on_resuming, s_on_end, NULL, NULL, NULL};

static void s_dev_start(device_t *d, rb_loop_t *loop, const char *const *servers, size_t n,
                        int answer, unsigned resume_timeout_s)
{
    memset(d, 0, sizeof *d);
    d->loop = loop;
    d->answer = answer;
    client_session_config_t cfg = {servers, n, NULL, "alice", "pw", "phone", resume_timeout_s};
    d->s = client_session_new(loop, s_cctx, &cfg, &s_dev_handlers, d);
    assert_non_null(d->s);
}

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

static bool s_logged_on(void *arg, int want) { return ((device_t *)arg)->logons >= want; }
static bool s_ended(void *arg, int want) { return ((device_t *)arg)->ended; }
static bool s_offered(void *arg, int want) { return ((device_t *)arg)->offers >= want; }
static bool s_never(void *arg, int want) { return false; }

static void test_offer_accept_then_transferred(void **state)
{
    rb_loop_t *loop = rb_loop_new();
    edge_t a;
    s_edge_start(&a, loop, "edge-a");
    a.logon_mode = LOGON_OFFER;
    const char *servers[] = {a.addr};
    device_t d;
    s_dev_start(&d, loop, servers, 1, 1, 60);
    assert_true(s_wait(loop, s_logged_on, &d, 1, 5000));
    assert_int_equal(d.offers, 1);
    assert_int_equal(a.answers, 1);
    assert_true(a.last_accept);
    assert_string_equal(d.session, "s-2");
    assert_false(d.resumed);
    s_closed(&a, RB__TUNNEL__CLOSE_REASON__CLOSE_TRANSFERRED);
    assert_true(s_wait(loop, s_ended, &d, 0, 3000));
    assert_int_equal(d.result, CLIENT_TRANSFERRED);
    assert_int_equal(d.resuming, 0);   /* a final reason: no resume */
    client_session_destroy(&d.s);

    /* Declined: the edge's SessionClosed{DECLINED} -> 10. */
    s_dev_start(&d, loop, servers, 1, 0, 60);
    assert_true(s_wait(loop, s_ended, &d, 0, 5000));
    assert_int_equal(d.result, CLIENT_DECLINED);
    assert_false(a.last_accept);
    client_session_destroy(&d.s);
    s_edge_stop(&a);
    rb_loop_destroy(&loop);
}

/* The edge stops right after the offer was accepted: the logon goes on at
 * the next edge, whose own offer is answered too (an offer belongs to the
 * connection it came on; the first one's id once made the second offer
 * look like a protocol error, exit 9). */
static void test_offer_then_edge_stops(void **state)
{
    rb_loop_t *loop = rb_loop_new();
    edge_t a, b;
    s_edge_start(&a, loop, "edge-a");
    s_edge_start(&b, loop, "edge-b");
    a.logon_mode = LOGON_OFFER_SHUTDOWN;
    b.logon_mode = LOGON_OFFER;
    const char *servers[] = {a.addr, b.addr};
    device_t d;
    s_dev_start(&d, loop, servers, 2, 1, 60);
    assert_true(s_wait(loop, s_logged_on, &d, 1, 5000));
    assert_false(d.ended);
    assert_int_equal(d.offers, 2);
    assert_int_equal(a.answers, 1);
    assert_int_equal(b.answers, 1);
    assert_string_equal(d.edge_id, "edge-b");
    assert_string_equal(d.session, "s-2");
    client_session_destroy(&d.s);
    s_edge_stop(&a);
    s_edge_stop(&b);
    rb_loop_destroy(&loop);
}

/* The edge drops the connection while the person thinks about its offer:
 * the question is withdrawn before the next edge asks its own, and the
 * answer to that one counts. */
static void test_offer_withdrawn_when_the_edge_drops(void **state)
{
    rb_loop_t *loop = rb_loop_new();
    edge_t a, b;
    s_edge_start(&a, loop, "edge-a");
    s_edge_start(&b, loop, "edge-b");
    a.logon_mode = LOGON_OFFER;
    b.logon_mode = LOGON_OFFER;
    const char *servers[] = {a.addr, b.addr};
    device_t d;
    s_dev_start(&d, loop, servers, 2, -1, 60);
    assert_true(s_wait(loop, s_offered, &d, 1, 5000));
    assert_int_equal(d.withdrawn, 0);
    rb_tconn_destroy(&a.c); /* edge A vanishes mid-question */
    assert_true(s_wait(loop, s_offered, &d, 2, 5000));
    assert_int_equal(d.withdrawn, 1);
    client_session_answer(d.s, true);
    assert_true(s_wait(loop, s_logged_on, &d, 1, 5000));
    assert_false(d.ended);
    assert_int_equal(a.answers, 0);
    assert_int_equal(b.answers, 1);
    assert_string_equal(d.edge_id, "edge-b");
    client_session_destroy(&d.s);
    s_edge_stop(&a);
    s_edge_stop(&b);
    rb_loop_destroy(&loop);
}

/* An edge that finishes TLS and then says nothing: after 10 s the device
 * logs on through the next server. */
static void test_mute_edge_is_left(void **state)
{
    rb_loop_t *loop = rb_loop_new();
    edge_t a, b;
    s_edge_start(&a, loop, "edge-a");
    s_edge_start(&b, loop, "edge-b");
    a.logon_mode = MUTE;
    b.logon_mode = LOGON_OK;
    const char *servers[] = {a.addr, b.addr};
    device_t d;
    s_dev_start(&d, loop, servers, 2, 1, 60);
    uint64_t t0 = rb_now_ms();
    assert_true(s_wait(loop, s_logged_on, &d, 1, 15000));
    uint64_t took = rb_now_ms() - t0;
    assert_true(took >= 9500 && took < 13000);
    assert_false(d.ended);
    assert_int_equal(a.logons, 0);
    assert_int_equal(b.logons, 1);
    assert_string_equal(d.edge_id, "edge-b");
    client_session_destroy(&d.s);
    s_edge_stop(&a);
    s_edge_stop(&b);
    rb_loop_destroy(&loop);
}

/* An edge that stops at Hello, then one that never finishes TLS: the first
 * connection's Hello deadline must not cut the second attempt short (it
 * ends on its own handshake deadline, with its own reason). */
static void test_hello_deadline_belongs_to_its_connection(void **state)
{
    rb_loop_t *loop = rb_loop_new();
    edge_t a;
    s_edge_start(&a, loop, "edge-a");
    a.logon_mode = HELLO_SHUTDOWN;
    int lfd = socket(AF_INET, SOCK_STREAM, 0); /* accepts TCP, never speaks TLS */
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(lfd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(listen(lfd, 4), 0);
    socklen_t sl = sizeof sa;
    getsockname(lfd, (struct sockaddr *)&sa, &sl);
    char b_addr[32];
    snprintf(b_addr, sizeof b_addr, "127.0.0.1:%d", ntohs(sa.sin_port));
    const char *servers[] = {a.addr, b_addr};
    device_t d;
    s_dev_start(&d, loop, servers, 2, 1, 60);
    assert_true(s_wait(loop, s_ended, &d, 1, 15000));
    assert_int_equal(d.result, CLIENT_CONNECT_FAILED);
    assert_null(strstr(d.end_msg, "HelloAck"));
    client_session_destroy(&d.s);
    close(lfd);
    s_edge_stop(&a);
    rb_loop_destroy(&loop);
}

/* The offer runs out while the person thinks: yes -> 15, no -> 10; the
 * late answer is not sent, the edge having said the offer expired. */
static void test_offer_lapses(void **state)
{
    rb_loop_t *loop = rb_loop_new();
    edge_t a;
    s_edge_start(&a, loop, "edge-a");
    a.logon_mode = LOGON_OFFER_LAPSES;
    const char *servers[] = {a.addr};
    for (int yes = 0; yes <= 1; yes++) {
        device_t d;
        s_dev_start(&d, loop, servers, 1, -1, 60);
        assert_true(s_wait(loop, s_offered, &d, 1, 5000));
        s_wait(loop, s_never, NULL, 0, 200);   /* the LogonFailed arrives */
        assert_false(d.ended);                  /* still asking */
        client_session_answer(d.s, yes);
        assert_true(s_wait(loop, s_ended, &d, 0, 3000));
        assert_int_equal(d.result, yes ? CLIENT_OFFER_EXPIRED : CLIENT_DECLINED);
        client_session_destroy(&d.s);
    }
    assert_int_equal(a.answers, 0);
    s_edge_stop(&a);
    rb_loop_destroy(&loop);
}

/* A drop, then SHUTDOWN: each time the next server gets Resume with the
 * session and the newest token; a refused resume ends with 16. */
static void test_resume_round_robin(void **state)
{
    rb_loop_t *loop = rb_loop_new();
    edge_t a, b;
    s_edge_start(&a, loop, "edge-a");
    s_edge_start(&b, loop, "edge-b");
    const char *servers[] = {a.addr, b.addr};
    device_t d;
    s_dev_start(&d, loop, servers, 2, 1, 60);
    assert_true(s_wait(loop, s_logged_on, &d, 1, 5000));
    assert_string_equal(d.edge_id, "edge-a");
    rb_tconn_destroy(&a.c);   /* the path dies */
    uint64_t t0 = rb_now_ms();
    assert_true(s_wait(loop, s_logged_on, &d, 2, 5000));
    assert_true(rb_now_ms() - t0 < 1000);   /* first backoff: 50..100 ms */
    assert_int_equal(d.resuming, 1);
    assert_true(d.resumed);
    assert_string_equal(d.edge_id, "edge-b");
    assert_int_equal(b.resumes, 1);
    assert_int_equal(b.logons, 0);
    assert_string_equal(b.resume_sid, "s-1");
    assert_string_equal(b.resume_tok, "tok-1");

    s_closed(&b, RB__TUNNEL__CLOSE_REASON__CLOSE_SHUTDOWN);
    assert_true(s_wait(loop, s_logged_on, &d, 3, 5000));
    assert_string_equal(d.edge_id, "edge-a");
    assert_int_equal(a.resumes, 1);
    assert_string_equal(a.resume_tok, "tok-r");   /* the token the resume handed out */

    a.resume_ok = b.resume_ok = false;
    rb_tconn_destroy(&a.c);
    assert_true(s_wait(loop, s_ended, &d, 0, 5000));
    assert_int_equal(d.result, CLIENT_RESUME_REFUSED);
    assert_int_equal(d.logons, 3);
    client_session_destroy(&d.s);
    s_edge_stop(&a);
    s_edge_stop(&b);
    rb_loop_destroy(&loop);
}

/* Nobody to resume with: exit 8 once --resume-timeout has passed. */
static void test_resume_gives_up(void **state)
{
    rb_loop_t *loop = rb_loop_new();
    edge_t a, b;
    s_edge_start(&a, loop, "edge-a");
    s_edge_start(&b, loop, "edge-b");
    s_edge_stop(&b);   /* its port now refuses */
    const char *servers[] = {a.addr, b.addr};
    device_t d;
    s_dev_start(&d, loop, servers, 2, 1, 1);
    assert_true(s_wait(loop, s_logged_on, &d, 1, 5000));
    s_edge_stop(&a);
    uint64_t t0 = rb_now_ms();
    assert_true(s_wait(loop, s_ended, &d, 0, 5000));
    uint64_t took = d.ended_at - t0;
    assert_int_equal(d.result, CLIENT_CONNECTION_LOST);
    assert_true(took >= 900 && took < 2500);
    client_session_destroy(&d.s);
    rb_loop_destroy(&loop);

    /* First logon: an unreachable first server is skipped. */
    loop = rb_loop_new();
    s_edge_start(&b, loop, "edge-b");
    const char *two[] = {a.addr, b.addr};   /* a's port is closed */
    s_dev_start(&d, loop, two, 2, 1, 60);
    assert_true(s_wait(loop, s_logged_on, &d, 1, 5000));
    assert_string_equal(d.edge_id, "edge-b");
    client_session_destroy(&d.s);

    /* An edge that dies, or stops, mid-logon: the Logon goes to the next
     * one; with none left the result is 8. */
    for (int mode = LOGON_DROP; mode <= LOGON_SHUTDOWN; mode++) {
        s_edge_start(&a, loop, "edge-a");
        a.logon_mode = (logon_mode_t)mode;
        const char *ab[] = {a.addr, b.addr};
        s_dev_start(&d, loop, ab, 2, 1, 60);
        assert_true(s_wait(loop, s_logged_on, &d, 1, 5000));
        assert_string_equal(d.edge_id, "edge-b");
        assert_int_equal(a.logons, 1);
        assert_false(d.resumed);
        client_session_destroy(&d.s);
        const char *only[] = {a.addr};
        s_dev_start(&d, loop, only, 1, 1, 60);
        assert_true(s_wait(loop, s_ended, &d, 0, 5000));
        assert_int_equal(d.result, CLIENT_CONNECTION_LOST);
        client_session_destroy(&d.s);
        s_edge_stop(&a);
    }
    s_edge_stop(&b);
    rb_loop_destroy(&loop);
}

static void test_backoff(void **state)
{
    assert_int_equal(client_backoff_ms(0, 0xffff), 100);
    assert_int_equal(client_backoff_ms(0, 0), 50);
    assert_int_equal(client_backoff_ms(1, 0xffff), 200);
    assert_int_equal(client_backoff_ms(4, 0xffff), 1600);
    assert_int_equal(client_backoff_ms(5, 0xffff), 2000);
    assert_int_equal(client_backoff_ms(1000, 0xffff), 2000);
    assert_int_equal(client_backoff_ms(1000, 0), 1000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_offer_accept_then_transferred),
        cmocka_unit_test(test_offer_lapses),
        cmocka_unit_test(test_offer_withdrawn_when_the_edge_drops),
        cmocka_unit_test(test_mute_edge_is_left),
        cmocka_unit_test(test_hello_deadline_belongs_to_its_connection),
        cmocka_unit_test(test_offer_then_edge_stops),
        cmocka_unit_test(test_resume_round_robin),
        cmocka_unit_test(test_resume_gives_up),
        cmocka_unit_test(test_backoff),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
