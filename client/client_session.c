/* client_session: the device side of the logon dialogue (client_session.h,
 * docs/protocol.md). States: CONNECTING (TLS) -> HELLO (Hello sent) ->
 * LOGON (Logon sent) -> ACTIVE -> LOGOFF (Logoff sent) -> DONE. */
#include "client_session.h"

#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rb_frame.h"
#include "rb_log.h"
#include "rb_tconn.h"

#define DEFAULT_KEEPALIVE_S 15
#define LOGOFF_WAIT_MS 2000

typedef enum { ST_CONNECTING, ST_HELLO, ST_LOGON, ST_ACTIVE, ST_LOGOFF, ST_DONE } st_t;

struct client_session {
    rb_loop_t *loop;
    rb_tconn_t *t;
    st_t st;
    client_session_handlers_t h;
    void *arg;
    char *user, *password, *device;
    unsigned keepalive_s;
    uint64_t last_rx_ms;
    uint64_t nonce;
    rb_timer_t *ping_timer;
    rb_timer_t *deadline;     /* logoff wait, or the deferred end */
    client_result_t pending_result;
    char pending_msg[256];
};

const char *client_result_str(client_result_t r)
{
    switch (r) {
    case CLIENT_OK: return "ok";
    case CLIENT_CONNECT_FAILED: return "cannot connect";
    case CLIENT_BAD_CREDENTIALS: return "bad credentials";
    case CLIENT_RATE_LIMITED: return "rate limited";
    case CLIENT_UNAVAILABLE: return "server unavailable";
    case CLIENT_SESSION_EXISTS: return "session exists";
    case CLIENT_CONNECTION_LOST: return "connection lost";
    case CLIENT_PROTOCOL: return "protocol error";
    }
    return "unknown";
}

static void s_wipe_password(client_session_t *s)
{
    if (!s->password) return;
    OPENSSL_cleanse(s->password, strlen(s->password));
    free(s->password);
    s->password = NULL;
}

/* The end: stop everything, then tell the caller (who may destroy us). */
static void s_end(client_session_t *s, client_result_t r, const char *msg)
{
    if (s->st == ST_DONE) return;
    s->st = ST_DONE;
    rb_loop_cancel_timer(s->loop, s->ping_timer);
    s->ping_timer = NULL;
    rb_loop_cancel_timer(s->loop, s->deadline);
    s->deadline = NULL;
    s_wipe_password(s);
    if (s->t) rb_tconn_close_after_flush(s->t);
    s->h.on_end(s->arg, r, msg);
}

static int s_send(client_session_t *s, Rb__Tunnel__TunnelControl *m)
{
    if (rb_tconn_send_control(s->t, m) < 0) {
        rb_warn("client_send", "cannot queue a control message");
        return -1;
    }
    return 0;
}

static void s_on_ping_timer(rb_loop_t *loop, void *arg)
{
    client_session_t *s = arg;
    /* The edge answers every Ping: silence for three periods means the
     * path is gone even if TCP has not noticed. */
    if (rb_now_ms() - s->last_rx_ms > 3ull * s->keepalive_s * 1000) {
        s_end(s, CLIENT_CONNECTION_LOST, "the edge stopped answering");
        return;
    }
    Rb__Tunnel__TunnelControl m = RB__TUNNEL__TUNNEL_CONTROL__INIT;
    Rb__Tunnel__Ping p = RB__TUNNEL__PING__INIT;
    p.nonce = ++s->nonce;
    m.msg_case = RB__TUNNEL__TUNNEL_CONTROL__MSG_PING;
    m.ping = &p;
    s_send(s, &m);
}

static client_result_t s_fail_result(Rb__Tunnel__FailReason r)
{
    switch (r) {
    case RB__TUNNEL__FAIL_REASON__FAIL_BAD_CREDENTIALS: return CLIENT_BAD_CREDENTIALS;
    case RB__TUNNEL__FAIL_REASON__FAIL_RATE_LIMITED: return CLIENT_RATE_LIMITED;
    case RB__TUNNEL__FAIL_REASON__FAIL_POOL_EXHAUSTED:
    case RB__TUNNEL__FAIL_REASON__FAIL_UNAVAILABLE: return CLIENT_UNAVAILABLE;
    case RB__TUNNEL__FAIL_REASON__FAIL_SESSION_EXISTS: return CLIENT_SESSION_EXISTS;
    case RB__TUNNEL__FAIL_REASON__FAIL_PROTOCOL: return CLIENT_PROTOCOL;
    default: return CLIENT_UNAVAILABLE;
    }
}

static void s_send_logon(client_session_t *s)
{
    Rb__Tunnel__TunnelControl m = RB__TUNNEL__TUNNEL_CONTROL__INIT;
    Rb__Tunnel__Logon l = RB__TUNNEL__LOGON__INIT;
    l.user = s->user;
    l.password = s->password;
    l.device = s->device;
    m.msg_case = RB__TUNNEL__TUNNEL_CONTROL__MSG_LOGON;
    m.logon = &l;
    if (s_send(s, &m) == 0) s->st = ST_LOGON;
    /* The password is in the output queue now; our copy is done with. */
    s_wipe_password(s);
}

static void s_on_logon_ok(client_session_t *s, const Rb__Tunnel__LogonOk *ok)
{
    s->st = ST_ACTIVE;
    s->keepalive_s = ok->keepalive_s ? ok->keepalive_s : DEFAULT_KEEPALIVE_S;
    s->ping_timer =
        rb_loop_add_timer(s->loop, (uint64_t)s->keepalive_s * 1000, true, s_on_ping_timer, s);
    client_logon_info_t info = {ok->session_id, ok->ip, ok->fqdn, ok->resume_token,
                                s->keepalive_s};
    s->h.on_logon(s->arg, &info);
}

static void s_on_control(client_session_t *s, const Rb__Tunnel__TunnelControl *m)
{
    /* Logging off: only the edge's confirmation matters now. */
    if (s->st == ST_LOGOFF && m->msg_case != RB__TUNNEL__TUNNEL_CONTROL__MSG_SESSION_CLOSED)
        return;
    switch (m->msg_case) {
    case RB__TUNNEL__TUNNEL_CONTROL__MSG_HELLO_ACK:
        if (s->st != ST_HELLO) break;
        if (m->hello_ack->version != RB_TUNNEL_VERSION) {
            s_end(s, CLIENT_PROTOCOL, "the edge speaks another protocol version");
            return;
        }
        s_send_logon(s);
        return;
    case RB__TUNNEL__TUNNEL_CONTROL__MSG_LOGON_OK:
        if (s->st != ST_LOGON) break;
        s_on_logon_ok(s, m->logon_ok);
        return;
    case RB__TUNNEL__TUNNEL_CONTROL__MSG_LOGON_FAILED: {
        if (s->st != ST_LOGON) break;
        const char *msg = m->logon_failed->message && *m->logon_failed->message
                              ? m->logon_failed->message
                              : "logon refused";
        /* The command line client does not retry: its input will not
         * change. */
        s_end(s, s_fail_result(m->logon_failed->reason), msg);
        return;
    }
    case RB__TUNNEL__TUNNEL_CONTROL__MSG_PING: {
        Rb__Tunnel__TunnelControl r = RB__TUNNEL__TUNNEL_CONTROL__INIT;
        Rb__Tunnel__Pong p = RB__TUNNEL__PONG__INIT;
        p.nonce = m->ping->nonce;
        r.msg_case = RB__TUNNEL__TUNNEL_CONTROL__MSG_PONG;
        r.pong = &p;
        s_send(s, &r);
        return;
    }
    case RB__TUNNEL__TUNNEL_CONTROL__MSG_PONG: return;
    case RB__TUNNEL__TUNNEL_CONTROL__MSG_SESSION_CLOSED: {
        const Rb__Tunnel__SessionClosed *sc = m->session_closed;
        const char *msg = sc->message && *sc->message ? sc->message : "session closed";
        if (s->st == ST_LOGOFF || sc->reason == RB__TUNNEL__CLOSE_REASON__CLOSE_LOGOFF)
            s_end(s, CLIENT_OK, "logged off");
        else if (sc->reason == RB__TUNNEL__CLOSE_REASON__CLOSE_PROTOCOL)
            s_end(s, CLIENT_PROTOCOL, msg);
        else
            s_end(s, CLIENT_CONNECTION_LOST, msg);
        return;
    }
    default: break;
    }
    rb_warn("client_protocol", "unexpected message %d from the edge", (int)m->msg_case);
    s_end(s, CLIENT_PROTOCOL, "unexpected message from the edge");
}

static void s_on_open(rb_tconn_t *t, void *arg)
{
    client_session_t *s = arg;
    s->last_rx_ms = rb_now_ms();
    Rb__Tunnel__TunnelControl m = RB__TUNNEL__TUNNEL_CONTROL__INIT;
    Rb__Tunnel__Hello h = RB__TUNNEL__HELLO__INIT;
    h.version = RB_TUNNEL_VERSION;
    h.software = "reachback-client " RB_VERSION;
    m.msg_case = RB__TUNNEL__TUNNEL_CONTROL__MSG_HELLO;
    m.hello = &h;
    if (s_send(s, &m) == 0) s->st = ST_HELLO;
}

static void s_on_frame(rb_tconn_t *t, const rb_frame_t *f, void *arg)
{
    client_session_t *s = arg;
    s->last_rx_ms = rb_now_ms();
    if (s->st == ST_DONE) return;
    if (f->type != RB_FRAME_CONTROL) {
        s_end(s, CLIENT_PROTOCOL, "data frame before streams exist");
        return;
    }
    Rb__Tunnel__TunnelControl *m = rb_frame_control(f);
    if (!m) {
        s_end(s, CLIENT_PROTOCOL, "undecodable control message from the edge");
        return;
    }
    s_on_control(s, m);
    rb__tunnel__tunnel_control__free_unpacked(m, NULL);
}

static void s_on_close(rb_tconn_t *t, rb_tconn_end_t end, const char *reason, void *arg)
{
    client_session_t *s = arg;
    rb_tconn_destroy(&s->t);
    if (s->st == ST_DONE) return;
    char msg[256];
    switch (end) {
    case RB_TCONN_CONNECT_FAILED:
    case RB_TCONN_TLS_FAILED:
        snprintf(msg, sizeof msg, "cannot connect: %s", reason);
        s_end(s, CLIENT_CONNECT_FAILED, msg);
        return;
    case RB_TCONN_PROTOCOL:
        snprintf(msg, sizeof msg, "protocol error: %s", reason);
        s_end(s, CLIENT_PROTOCOL, msg);
        return;
    default:
        if (s->st == ST_LOGOFF) {
            s_end(s, CLIENT_OK, "logged off");
            return;
        }
        snprintf(msg, sizeof msg, "connection lost: %s", reason);
        s_end(s, CLIENT_CONNECTION_LOST, msg);
    }
}

static const rb_tconn_handlers_t s_handlers = {s_on_open, s_on_frame, s_on_close};

client_session_t *client_session_new(rb_loop_t *loop, SSL_CTX *tls,
                                     const client_session_config_t *cfg,
                                     const client_session_handlers_t *h, void *arg)
{
    client_session_t *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->loop = loop;
    s->h = *h;
    s->arg = arg;
    s->user = strdup(cfg->user);
    s->password = strdup(cfg->password);
    s->device = strdup(cfg->device ? cfg->device : "");
    if (!s->user || !s->password || !s->device) goto fail;
    s->t = rb_tconn_dial(loop, tls, cfg->server, cfg->verify_name, &s_handlers, s);
    if (!s->t) goto fail;
    return s;
fail:
    client_session_destroy(&s);
    return NULL;
}

static void s_on_deadline(rb_loop_t *loop, void *arg)
{
    client_session_t *s = arg;
    s->deadline = NULL;
    s_end(s, s->pending_result, s->pending_msg);
}

/* Ends from the loop, never from inside a caller's call. */
static void s_end_later(client_session_t *s, uint64_t ms, client_result_t r, const char *msg)
{
    s->pending_result = r;
    snprintf(s->pending_msg, sizeof s->pending_msg, "%s", msg);
    rb_loop_cancel_timer(s->loop, s->deadline);
    s->deadline = rb_loop_add_timer(s->loop, ms, false, s_on_deadline, s);
}

void client_session_logoff(client_session_t *s)
{
    if (!s || s->st == ST_DONE || s->st == ST_LOGOFF) return;
    if (s->st != ST_ACTIVE) {
        /* Nothing to log off from yet; the edge ends a logon whose
         * connection drops. */
        s_end_later(s, 0, CLIENT_OK, "stopped before logging on");
        s->st = ST_LOGOFF;
        return;
    }
    Rb__Tunnel__TunnelControl m = RB__TUNNEL__TUNNEL_CONTROL__INIT;
    Rb__Tunnel__Logoff lo = RB__TUNNEL__LOGOFF__INIT;
    m.msg_case = RB__TUNNEL__TUNNEL_CONTROL__MSG_LOGOFF;
    m.logoff = &lo;
    s_send(s, &m);
    s->st = ST_LOGOFF;
    rb_loop_cancel_timer(s->loop, s->ping_timer);
    s->ping_timer = NULL;
    s_end_later(s, LOGOFF_WAIT_MS, CLIENT_OK, "logged off (the edge did not confirm)");
}

void client_session_destroy(client_session_t **sp)
{
    if (!sp || !*sp) return;
    client_session_t *s = *sp;
    rb_loop_cancel_timer(s->loop, s->ping_timer);
    rb_loop_cancel_timer(s->loop, s->deadline);
    rb_tconn_destroy(&s->t);
    s_wipe_password(s);
    free(s->user);
    free(s->device);
    free(s);
    *sp = NULL;
}
