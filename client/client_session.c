/* client_session: the device side of the logon dialogue (client_session.h,
 * docs/protocol.md).
 *
 * States: CONNECTING (TCP + TLS) -> HELLO (Hello sent) -> LOGON (Logon,
 * TransferAnswer{accept} or Resume sent; waiting for the answer) ->
 * ACTIVE -> LOGOFF (Logoff sent) -> DONE. A Logon answered with an offer
 * waits in OFFERED for the caller; a declined offer waits in DECLINED for
 * the edge's SessionClosed. When an ACTIVE connection drops (or the edge
 * stops, or goes silent), the session waits in BACKOFF and reconnects to
 * the next server with Resume instead of Logon, until it is back, the
 * broker refuses, or the resume timeout passes. */
#include "client_session.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rb_frame.h"
#include "rb_log.h"
#include "rb_tconn.h"

#define DEFAULT_KEEPALIVE_S 15
#define LOGOFF_WAIT_MS 2000
/* After declining, the edge's SessionClosed is awaited this long. */
#define DECLINE_WAIT_MS 2000
#define BACKOFF_FIRST_MS 100
#define BACKOFF_MAX_MS 2000
/* An edge that finished TLS but does not answer Hello (frozen, or not an
 * edge): the next server, or the next resume attempt, after this long. */
#define HELLO_TIMEOUT_MS 10000

typedef enum {
    ST_CONNECTING,
    ST_HELLO,
    ST_LOGON,
    ST_OFFERED,
    ST_DECLINED,
    ST_ACTIVE,
    ST_BACKOFF,
    ST_LOGOFF,
    ST_DONE
} st_t;

struct client_session {
    rb_loop_t *loop;
    SSL_CTX *tls;
    rb_tconn_t *t;
    st_t st;
    client_session_handlers_t h;
    void *arg;
    char *servers[CLIENT_MAX_SERVERS];
    size_t n_servers, cur;      /* cur: the server of the current attempt */
    size_t tried;               /* initial logon: servers that failed to connect */
    char *verify_name;
    char *user, *password, *device;
    char *session_id, *token;   /* once logged on: what a resume needs */
    char *offer_id;
    bool offer_lapsed;          /* the edge said the offer ran out before our answer */
    char edge_id[128];
    bool resuming;              /* this connection resumes (Resume, not Logon) */
    bool had_session;
    unsigned resume_timeout_s;
    uint64_t resume_deadline;
    unsigned attempt;           /* resume attempts since the drop */
    unsigned keepalive_s;
    uint64_t last_rx_ms;
    uint64_t nonce;
    rb_timer_t *ping_timer;
    rb_timer_t *hello_timer;    /* from TLS up until the HelloAck */
    rb_timer_t *deadline;       /* logoff/decline wait, or the deferred end */
    rb_timer_t *backoff;
    bool tunnel_up;             /* on_tunnel(t) said, on_tunnel(NULL) not yet */
    client_result_t pending_result;
    char pending_msg[256];
};

const char *client_result_str(client_result_t r)
{
    switch (r) {
    case CLIENT_OK: return "ok";
    case CLIENT_INTERNAL: return "internal error";
    case CLIENT_USAGE: return "usage error";
    case CLIENT_CONNECT_FAILED: return "cannot connect";
    case CLIENT_BAD_CREDENTIALS: return "bad credentials";
    case CLIENT_RATE_LIMITED: return "rate limited";
    case CLIENT_UNAVAILABLE: return "server unavailable";
    case CLIENT_SESSION_EXISTS: return "session exists";
    case CLIENT_CONNECTION_LOST: return "connection lost";
    case CLIENT_PROTOCOL: return "protocol error";
    case CLIENT_DECLINED: return "transfer declined";
    case CLIENT_TRANSFERRED: return "session transferred to another device";
    case CLIENT_REPLACED: return "replaced by a newer logon";
    case CLIENT_KICKED: return "closed by administrator";
    case CLIENT_EXPIRED: return "session expired";
    case CLIENT_OFFER_EXPIRED: return "transfer offer expired";
    case CLIENT_RESUME_REFUSED: return "resume refused";
    }
    return "unknown";
}

unsigned client_backoff_ms(unsigned attempt, unsigned rnd)
{
    unsigned ms = BACKOFF_FIRST_MS;
    for (unsigned i = 0; i < attempt && ms < BACKOFF_MAX_MS; i++) ms *= 2;
    if (ms > BACKOFF_MAX_MS) ms = BACKOFF_MAX_MS;
    /* Jitter: a whole edge's devices drop at once; spread them out. */
    return ms / 2 + (unsigned)(((uint64_t)(ms / 2) * (rnd & 0xffff)) / 0xffff);
}

static void s_wipe(char **p)
{
    if (!*p) return;
    OPENSSL_cleanse(*p, strlen(*p));
    free(*p);
    *p = NULL;
}

/* The Hello deadline belongs to one connection: ended with it, or by the
 * HelloAck. */
static void s_hello_done(client_session_t *s)
{
    rb_loop_cancel_timer(s->loop, s->hello_timer);
    s->hello_timer = NULL;
}

static void s_stop_timers(client_session_t *s)
{
    rb_loop_cancel_timer(s->loop, s->ping_timer);
    s->ping_timer = NULL;
    s_hello_done(s);
    rb_loop_cancel_timer(s->loop, s->deadline);
    s->deadline = NULL;
    rb_loop_cancel_timer(s->loop, s->backoff);
    s->backoff = NULL;
}

/* The end: stop everything, then tell the caller (who may destroy us). */
static void s_tunnel_gone(client_session_t *s)
{
    if (!s->tunnel_up) return;
    s->tunnel_up = false;
    if (s->h.on_tunnel) s->h.on_tunnel(s->arg, NULL);
}

static void s_end(client_session_t *s, client_result_t r, const char *msg)
{
    if (s->st == ST_DONE) return;
    s_tunnel_gone(s);
    s->st = ST_DONE;
    s_stop_timers(s);
    s_wipe(&s->password);
    s_wipe(&s->token);
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

static const rb_tconn_handlers_t s_handlers;
static void s_lost(client_session_t *s, const char *why);

/* Dials servers[cur]. 0, or -1 when the address cannot be used. */
static int s_dial(client_session_t *s)
{
    s->edge_id[0] = '\0';
    s_hello_done(s); /* the last connection's */
    /* An offer belongs to the connection it came on: the next edge makes
     * its own. */
    if (s->st == ST_OFFERED && s->h.on_offer) s->h.on_offer(s->arg, NULL);
    free(s->offer_id);
    s->offer_id = NULL;
    s->offer_lapsed = false;
    s->t = rb_tconn_dial(s->loop, s->tls, s->servers[s->cur], s->verify_name, &s_handlers, s);
    if (!s->t) {
        rb_warn("client_dial", "cannot use the server address '%s'", s->servers[s->cur]);
        return -1;
    }
    s->st = ST_CONNECTING;
    return 0;
}

static void s_on_backoff(rb_loop_t *loop, void *arg)
{
    client_session_t *s = arg;
    s->backoff = NULL;
    s->cur = (s->cur + 1) % s->n_servers;
    s->resuming = true;
    if (s_dial(s) < 0) s_lost(s, "unusable server address");
}

/* The connection of a session went away (or an attempt to resume failed
 * short of a verdict): wait, then try the next server. */
static void s_lost(client_session_t *s, const char *why)
{
    s_hello_done(s);
    s_tunnel_gone(s);
    rb_loop_cancel_timer(s->loop, s->ping_timer);
    s->ping_timer = NULL;
    rb_tconn_destroy(&s->t);
    uint64_t now = rb_now_ms();
    if (!s->resuming) {
        s->resume_deadline = now + (uint64_t)s->resume_timeout_s * 1000;
        s->attempt = 0;
        if (s->h.on_resuming) s->h.on_resuming(s->arg, why);
    }
    s->resuming = true;
    if (!s->session_id || !s->token || s->resume_timeout_s == 0 || now >= s->resume_deadline) {
        char msg[256];
        snprintf(msg, sizeof msg, "connection lost (%s); the session could not be resumed%s",
                 why, s->resume_timeout_s ? " in time" : "");
        s_end(s, CLIENT_CONNECTION_LOST, msg);
        return;
    }
    unsigned short rnd = 0;
    RAND_bytes((unsigned char *)&rnd, sizeof rnd);
    uint64_t ms = client_backoff_ms(s->attempt++, rnd);
    if (now + ms > s->resume_deadline) ms = s->resume_deadline - now;
    rb_info("client_resume_wait", "%s; resuming in %llu ms", why, (unsigned long long)ms);
    s->st = ST_BACKOFF;
    s->backoff = rb_loop_add_timer(s->loop, ms, false, s_on_backoff, s);
    if (!s->backoff) s_end(s, CLIENT_INTERNAL, "cannot set a timer");
}

static void s_on_ping_timer(rb_loop_t *loop, void *arg)
{
    client_session_t *s = arg;
    /* The edge answers every Ping: silence for three periods means the
     * path is gone even if TCP has not noticed. */
    if (rb_now_ms() - s->last_rx_ms > 3ull * s->keepalive_s * 1000) {
        if (s->st == ST_ACTIVE || s->resuming)
            s_lost(s, "the edge stopped answering");
        else
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

static void s_start_pings(client_session_t *s, unsigned keepalive_s)
{
    s->keepalive_s = keepalive_s ? keepalive_s : DEFAULT_KEEPALIVE_S;
    rb_loop_cancel_timer(s->loop, s->ping_timer);
    s->ping_timer =
        rb_loop_add_timer(s->loop, (uint64_t)s->keepalive_s * 1000, true, s_on_ping_timer, s);
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
    case RB__TUNNEL__FAIL_REASON__FAIL_TRANSFER_EXPIRED: return CLIENT_OFFER_EXPIRED;
    case RB__TUNNEL__FAIL_REASON__FAIL_RESUME_REFUSED: return CLIENT_RESUME_REFUSED;
    default: return CLIENT_UNAVAILABLE;
    }
}

/* SessionClosed reasons that end the session for good, and their codes;
 * -1 for those after which the session may still be resumed. */
static int s_close_result(Rb__Tunnel__CloseReason r)
{
    switch (r) {
    case RB__TUNNEL__CLOSE_REASON__CLOSE_LOGOFF: return CLIENT_OK;
    case RB__TUNNEL__CLOSE_REASON__CLOSE_PROTOCOL: return CLIENT_PROTOCOL;
    case RB__TUNNEL__CLOSE_REASON__CLOSE_TRANSFERRED: return CLIENT_TRANSFERRED;
    case RB__TUNNEL__CLOSE_REASON__CLOSE_REPLACED: return CLIENT_REPLACED;
    case RB__TUNNEL__CLOSE_REASON__CLOSE_KICKED: return CLIENT_KICKED;
    case RB__TUNNEL__CLOSE_REASON__CLOSE_EXPIRED: return CLIENT_EXPIRED;
    case RB__TUNNEL__CLOSE_REASON__CLOSE_DECLINED: return CLIENT_DECLINED;
    default: return -1;   /* SHUTDOWN, IDLE, UNSPECIFIED */
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
    /* Kept until LogonOk: a connection lost before it logs on again
     * through the next server. */
}

static void s_send_resume(client_session_t *s)
{
    Rb__Tunnel__TunnelControl m = RB__TUNNEL__TUNNEL_CONTROL__INIT;
    Rb__Tunnel__Resume r = RB__TUNNEL__RESUME__INIT;
    r.session_id = s->session_id;
    r.resume_token = s->token;
    r.device = s->device;
    m.msg_case = RB__TUNNEL__TUNNEL_CONTROL__MSG_RESUME;
    m.resume = &r;
    if (s_send(s, &m) == 0) s->st = ST_LOGON;
}

static int s_set(char **dst, const char *src)
{
    char *p = strdup(src ? src : "");
    if (!p) return -1;
    s_wipe(dst);
    *dst = p;
    return 0;
}

static void s_on_logon_ok(client_session_t *s, const Rb__Tunnel__LogonOk *ok)
{
    bool resumed = s->resuming;
    if (!ok->session_id || !*ok->session_id) {
        s_end(s, CLIENT_PROTOCOL, "the edge sent LogonOk without a session");
        return;
    }
    /* A resume may hand out a new token; keep whichever is current. */
    if (s_set(&s->session_id, ok->session_id) < 0 ||
        (ok->resume_token && *ok->resume_token && s_set(&s->token, ok->resume_token) < 0)) {
        s_end(s, CLIENT_INTERNAL, "out of memory");
        return;
    }
    s->st = ST_ACTIVE;
    s->resuming = false;
    s->had_session = true;
    s_wipe(&s->password);
    s->attempt = 0;
    s_start_pings(s, ok->keepalive_s);
    client_logon_info_t info = {ok->session_id,
                                ok->ip ? ok->ip : "",
                                ok->fqdn ? ok->fqdn : "",
                                ok->resume_token,
                                s->edge_id,
                                s->servers[s->cur],
                                s->keepalive_s,
                                ok->no_address,
                                resumed};
    s->h.on_logon(s->arg, &info);
    if (s->st == ST_ACTIVE && s->t && s->h.on_tunnel) {
        s->tunnel_up = true;
        s->h.on_tunnel(s->arg, s->t);
    }
}

static void s_on_offer(client_session_t *s, const Rb__Tunnel__TransferOffer *o)
{
    if (!o->offer_id || !*o->offer_id || s_set(&s->offer_id, o->offer_id) < 0) {
        s_end(s, CLIENT_PROTOCOL, "the edge sent an offer without an id");
        return;
    }
    s->st = ST_OFFERED;
    client_offer_t offer = {o->offer_id,
                            o->session_since_ms,
                            o->device ? o->device : "",
                            o->edge_id ? o->edge_id : "",
                            o->source ? o->source : "",
                            o->expires_in_s};
    s->h.on_offer(s->arg, &offer);
}

static void s_on_session_closed(client_session_t *s, const Rb__Tunnel__SessionClosed *sc)
{
    const char *msg = sc->message && *sc->message ? sc->message : "session closed";
    if (s->st == ST_LOGOFF) {
        s_end(s, CLIENT_OK, "logged off");
        return;
    }
    int r = s_close_result(sc->reason);
    if (r >= 0) {
        if (r == CLIENT_OK) msg = "logged off";
        s_end(s, (client_result_t)r, msg);
        return;
    }
    /* An edge stopping mid-logon: log on through the next one. */
    if (!s->had_session && s->password && ++s->tried < s->n_servers) {
        rb_tconn_destroy(&s->t);
        s->cur = (s->cur + 1) % s->n_servers;
        if (s_dial(s) == 0) return;
    }
    /* The edge stopped or lost patience: the session lives on at the
     * broker; come back through another edge. */
    if (s->had_session && (s->st == ST_ACTIVE || s->resuming)) {
        s_lost(s, msg);
        return;
    }
    s_end(s, CLIENT_CONNECTION_LOST, msg);
}

static void s_on_logon_failed(client_session_t *s, const Rb__Tunnel__LogonFailed *lf)
{
    if (s->st == ST_OFFERED) {
        /* The offer ran out while the person thinks it over. Their answer
         * still decides what they are told: yes -> "expired", no ->
         * declined. Nothing more happens on this connection meanwhile. */
        s->offer_lapsed = true;
        return;
    }
    const char *msg =
        lf->message && *lf->message ? lf->message : client_result_str(s_fail_result(lf->reason));
    client_result_t r = s_fail_result(lf->reason);
    if (s->resuming) {
        /* Only the broker's verdict on the token ends a resume; anything
         * else (an edge without a broker, a rate limit) is tried again. */
        if (r == CLIENT_RESUME_REFUSED || r == CLIENT_PROTOCOL) {
            s_end(s, r, msg);
            return;
        }
        s_lost(s, msg);
        return;
    }
    /* The command line client does not retry a logon: its input will not
     * change. */
    s_end(s, r, msg);
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
        snprintf(s->edge_id, sizeof s->edge_id, "%s",
                 m->hello_ack->edge_id && *m->hello_ack->edge_id ? m->hello_ack->edge_id
                                                                 : s->servers[s->cur]);
        s_hello_done(s);
        /* Pings from here on: a person answering an offer takes longer
         * than the edge's idle limit. */
        s_start_pings(s, s->keepalive_s);
        if (s->resuming) s_send_resume(s);
        else s_send_logon(s);
        return;
    case RB__TUNNEL__TUNNEL_CONTROL__MSG_LOGON_OK:
        if (s->st != ST_LOGON) break;
        s_on_logon_ok(s, m->logon_ok);
        return;
    case RB__TUNNEL__TUNNEL_CONTROL__MSG_TRANSFER_OFFER:
        if (s->st != ST_LOGON || s->resuming || s->offer_id) break;
        s_on_offer(s, m->transfer_offer);
        return;
    case RB__TUNNEL__TUNNEL_CONTROL__MSG_LOGON_FAILED:
        /* In OFFERED: the edge says the offer ran out before an answer. */
        if (s->st != ST_LOGON && s->st != ST_OFFERED) break;
        s_on_logon_failed(s, m->logon_failed);
        return;
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
    case RB__TUNNEL__TUNNEL_CONTROL__MSG_STREAM_OPEN:
    case RB__TUNNEL__TUNNEL_CONTROL__MSG_STREAM_RESULT:
        if (!s->tunnel_up) break;
        if (s->h.on_stream) s->h.on_stream(s->arg, NULL, m);
        return;
    case RB__TUNNEL__TUNNEL_CONTROL__MSG_SESSION_CLOSED:
        s_on_session_closed(s, m->session_closed);
        return;
    default: break;
    }
    rb_warn("client_protocol", "unexpected message %d from the edge", (int)m->msg_case);
    s_end(s, CLIENT_PROTOCOL, "unexpected message from the edge");
}

static void s_on_close(rb_tconn_t *t, rb_tconn_end_t end, const char *reason, void *arg);

static void s_on_hello_timeout(rb_loop_t *loop, void *arg)
{
    client_session_t *s = arg;
    s->hello_timer = NULL;
    /* As a connection that failed before the dialogue began. */
    s_on_close(s->t, RB_TCONN_TLS_FAILED, "no HelloAck from the edge in time", s);
}

static void s_on_open(rb_tconn_t *t, void *arg)
{
    client_session_t *s = arg;
    s->last_rx_ms = rb_now_ms();
    s->hello_timer = rb_loop_add_timer(s->loop, HELLO_TIMEOUT_MS, false, s_on_hello_timeout, s);
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
        if (!s->tunnel_up) {
            /* Frames in flight when we logged off or the session ended. */
            if (s->st == ST_LOGOFF || s->had_session) return;
            s_end(s, CLIENT_PROTOCOL, "stream frame before the session is active");
            return;
        }
        if (s->h.on_stream) s->h.on_stream(s->arg, f, NULL);
        return;
    }
    Rb__Tunnel__TunnelControl *m = rb_frame_control(f);
    if (!m) {
        s_end(s, CLIENT_PROTOCOL, "undecodable control message from the edge");
        return;
    }
    s_on_control(s, m);
    if (m->msg_case == RB__TUNNEL__TUNNEL_CONTROL__MSG_LOGON_OK && m->logon_ok->resume_token)
        OPENSSL_cleanse(m->logon_ok->resume_token, strlen(m->logon_ok->resume_token));
    rb__tunnel__tunnel_control__free_unpacked(m, NULL);
}

static void s_on_close(rb_tconn_t *t, rb_tconn_end_t end, const char *reason, void *arg)
{
    client_session_t *s = arg;
    s_tunnel_gone(s);
    rb_tconn_destroy(&s->t);
    if (s->st == ST_DONE) return;
    char msg[256];
    if (s->st == ST_LOGOFF) {
        s_end(s, CLIENT_OK, "logged off");
        return;
    }
    if (s->st == ST_DECLINED) {
        s_end(s, CLIENT_DECLINED, "transfer declined");
        return;
    }
    if (end == RB_TCONN_PROTOCOL) {
        snprintf(msg, sizeof msg, "protocol error: %s", reason);
        s_end(s, CLIENT_PROTOCOL, msg);
        return;
    }
    /* A session (or a resume of one) that loses its path tries again. */
    if (s->had_session && (s->st == ST_ACTIVE || s->resuming)) {
        snprintf(msg, sizeof msg, "%s", reason);
        s_lost(s, msg);
        return;
    }
    bool no_connect = end == RB_TCONN_CONNECT_FAILED || end == RB_TCONN_TLS_FAILED;
    if (no_connect || s->password) {
        /* First logon: the next server, once each (an edge that dies
         * mid-logon is like one that refuses the connection). */
        if (++s->tried < s->n_servers) {
            rb_info("client_next_server", "%s: %s; trying the next server", s->servers[s->cur],
                    reason);
            s->cur = (s->cur + 1) % s->n_servers;
            if (s_dial(s) == 0) return;
        }
        if (no_connect) {
            snprintf(msg, sizeof msg, "cannot connect: %s", reason);
            s_end(s, CLIENT_CONNECT_FAILED, msg);
            return;
        }
    }
    snprintf(msg, sizeof msg, "connection lost: %s", reason);
    s_end(s, CLIENT_CONNECTION_LOST, msg);
}

static void s_on_drained(rb_tconn_t *t, void *arg)
{
    client_session_t *s = arg;
    if (s->tunnel_up && s->h.on_drained) s->h.on_drained(s->arg);
}

static const rb_tconn_handlers_t s_handlers = {s_on_open, s_on_frame, s_on_close, s_on_drained};

client_session_t *client_session_new(rb_loop_t *loop, SSL_CTX *tls,
                                     const client_session_config_t *cfg,
                                     const client_session_handlers_t *h, void *arg)
{
    if (cfg->n_servers == 0 || cfg->n_servers > CLIENT_MAX_SERVERS) return NULL;
    client_session_t *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->loop = loop;
    s->tls = tls;
    s->h = *h;
    s->arg = arg;
    s->resume_timeout_s = cfg->resume_timeout_s;
    s->keepalive_s = DEFAULT_KEEPALIVE_S;
    for (size_t i = 0; i < cfg->n_servers; i++) {
        s->servers[i] = strdup(cfg->servers[i]);
        if (!s->servers[i]) goto fail;
        s->n_servers++;
    }
    if (cfg->verify_name && !(s->verify_name = strdup(cfg->verify_name))) goto fail;
    s->user = strdup(cfg->user);
    s->password = strdup(cfg->password);
    s->device = strdup(cfg->device ? cfg->device : "");
    if (!s->user || !s->password || !s->device) goto fail;
    /* An unusable first address is tried past like a refused connect. */
    while (s_dial(s) < 0) {
        if (++s->tried >= s->n_servers) goto fail;
        s->cur++;
    }
    return s;
fail:
    client_session_destroy(&s);
    return NULL;
}

void client_session_answer(client_session_t *s, bool accept)
{
    if (!s || s->st != ST_OFFERED) return;
    if (s->offer_lapsed) {
        s->st = ST_DECLINED;
        if (accept) s_end_later(s, 0, CLIENT_OFFER_EXPIRED, "transfer offer expired");
        else s_end_later(s, 0, CLIENT_DECLINED, "transfer declined");
        return;
    }
    Rb__Tunnel__TunnelControl m = RB__TUNNEL__TUNNEL_CONTROL__INIT;
    Rb__Tunnel__TransferAnswer a = RB__TUNNEL__TRANSFER_ANSWER__INIT;
    a.offer_id = s->offer_id;
    a.accept = accept;
    m.msg_case = RB__TUNNEL__TUNNEL_CONTROL__MSG_TRANSFER_ANSWER;
    m.transfer_answer = &a;
    s_send(s, &m);
    if (accept) {
        s->st = ST_LOGON;
        return;
    }
    /* The edge answers SessionClosed{DECLINED} and closes; should it not,
     * the outcome is the same. */
    s->st = ST_DECLINED;
    s_end_later(s, DECLINE_WAIT_MS, CLIENT_DECLINED, "transfer declined");
}

void client_session_logoff(client_session_t *s)
{
    if (!s || s->st == ST_DONE || s->st == ST_LOGOFF) return;
    if (s->st != ST_ACTIVE) {
        /* Nothing to log off from yet (the edge ends a logon whose
         * connection drops), or no connection to say it on (the broker
         * expires a session nobody refreshes). */
        s_end_later(s, 0, CLIENT_OK,
                    s->had_session ? "stopped while resuming; the session will expire"
                                   : "stopped before logging on");
        s->st = ST_LOGOFF;
        return;
    }
    s_tunnel_gone(s);
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
    s_stop_timers(s);
    rb_tconn_destroy(&s->t);
    s_wipe(&s->password);
    s_wipe(&s->token);
    for (size_t i = 0; i < s->n_servers; i++) free(s->servers[i]);
    free(s->verify_name);
    free(s->user);
    free(s->device);
    free(s->session_id);
    free(s->offer_id);
    free(s);
    *sp = NULL;
}
