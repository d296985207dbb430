/* edge_conn: the per-connection state machine of the edge (edge_conn.h).
 *
 * Every control message from a device goes through one table of {message,
 * name, handler, states allowed}; anything else closes the connection with
 * CLOSE_PROTOCOL and a log line naming the peer. Messages that only the
 * edge sends (HelloAck, LogonOk, ...) are in no row, so a device sending
 * them is refused the same way. */
#include "edge_conn.h"

#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "rb_frame.h"
#include "rb_log.h"
#include "rb_tconn.h"

/* Logon, transfer and resume attempts on one connection before it is
 * closed: retrying on a new connection costs a TLS handshake, which slows
 * guessing down. */
#define MAX_LOGONS_PER_CONN 3
/* How long pings alone keep a connection whose offer lapsed: a person
 * reading the dialogue, not a slot held for ever. */
#define DECIDING_MAX_MS (5 * 60 * 1000)
#define USER_MAX 256
#define PASSWORD_MAX 1024
#define DEVICE_MAX 128
/* Session ids, offer ids and resume tokens come from the broker: short
 * printable strings. Longer ones are not ours. */
#define ID_MAX 128
#define TOKEN_MAX 256

typedef enum { ST_HELLO, ST_LOGON, ST_AUTH, ST_BROKER, ST_OFFERED, ST_ACTIVE, ST_CLOSING } st_t;
#define ST(s) (1u << (s))

static const char *s_st_names[] = {"hello",   "logon",  "auth",   "broker",
                                   "offered", "active", "closing"};

/* What the request in flight in ST_BROKER is. */
typedef enum { BK_LOGON, BK_TRANSFER, BK_RESUME } bk_t;

const char *const edge_logon_result_names[EDGE_LOGON_NRESULTS] = {
    "ok", "bad_credentials", "rate_limited", "exists", "unavailable", "exhausted", "offered"};
const char *const edge_resume_result_names[EDGE_RESUME_NRESULTS] = {"ok", "refused",
                                                                     "rate_limited", "unavailable"};
const char *const edge_transfer_result_names[EDGE_TRANSFER_NRESULTS] = {"ok", "expired",
                                                                         "declined", "unavailable"};
const char *const edge_kick_reason_names[EDGE_KICK_NREASONS] = {
    "transferred", "replaced", "kicked", "expired", "logoff", "other"};

struct edge_conn {
    edge_ctx_t *ctx;
    edge_conn_t *prev, *next;   /* ctx's table */
    rb_tconn_t *t;
    st_t st;
    unsigned logons;            /* attempts on this connection */
    uint64_t last_rx_ms;
    uint64_t logon_start_ms;
    bool pong_owed;             /* a Ping came while its peer read nothing */
    uint64_t pong_nonce;        /* the latest such Ping's */
    rb_timer_t *idle_timer;
    rb_timer_t *offer_timer;    /* ST_OFFERED: the offer's deadline */
    edge_broker_req_t *breq;    /* request in flight (ST_BROKER) */
    bk_t bkind;
    char *user, *device;        /* from the Logon or Resume being handled */
    char *offer_id;             /* the last offer made on this connection */
    uint64_t deciding_ms;       /* its offer lapsed unanswered then: a person may be
                                 * deciding (0: no) */
    bool rl_held;               /* a check counted in flight by the rate limiter */
    bool rl_user;               /* ... for user too (a logon, not a resume) */
    char *session_id;           /* ST_ACTIVE (and in by_session) */
    uint64_t up_seq;            /* ST_ACTIVE: the SESSION_UP our logon or resume made */
    edge_tunnel_t *tun;         /* ST_ACTIVE: the data plane's view */
    char peer[64];
    char addr[64];              /* peer without the port, for rate limits */
};

typedef void(handler_fn)(edge_conn_t *c, const Rb__Tunnel__TunnelControl *m);

static const char *s_user(const edge_conn_t *c) { return c->user ? c->user : "?"; }

/* Ends the rate limiter's count of our check in flight (its outcome, if
 * any, is recorded after this). */
static void s_rl_release(edge_conn_t *c)
{
    if (!c->rl_held) return;
    c->rl_held = false;
    edge_rl_end(c->ctx->rl, c->rl_user ? c->user : NULL, c->addr);
}

/* Counts a logon (user set) or a resume from our address in flight; false
 * when the limiter refuses it (the caller answers the device). */
static bool s_rl_begin(edge_conn_t *c, const char *user)
{
    switch (edge_rl_begin(c->ctx->rl, user, c->addr, c->logon_start_ms)) {
    case EDGE_RL_GO:
        c->rl_held = true;
        c->rl_user = user != NULL;
        return true;
    case EDGE_RL_LOCKED:
        break;
    case EDGE_RL_BUSY:
        rb_info("ratelimit_busy",
                "peer %s (user '%s'): recent failures and checks in flight "
                "reach the limit",
                c->peer, user ? user : "-");
        break;
    }
    return false;
}

/* ------------------------------------------------------------------ */
/* Sending and closing                                                 */

static void s_send(edge_conn_t *c, Rb__Tunnel__TunnelControl *m)
{
    if (rb_tconn_send_control(c->t, m) < 0)
        rb_warn("tunnel_send", "peer %s: cannot queue a control message", c->peer);
}

/* The session is no longer carried here (it may still exist at the
 * broker). */
static void s_detach(edge_conn_t *c)
{
    edge_link_detach(&c->tun, "the tunnel no longer carries the session");
    if (!c->session_id) return;
    rb_smap_del(c->ctx->by_session, c->session_id, c);
    free(c->session_id);
    c->session_id = NULL;
    c->ctx->sessions--;
    rb_metric_set(c->ctx->m_sessions, (double)c->ctx->sessions);
}

static void s_cancel_offer(edge_conn_t *c)
{
    rb_loop_cancel_timer(c->ctx->loop, c->offer_timer);
    c->offer_timer = NULL;
}

/* Tells the device why, then closes once that is flushed. The session is
 * no longer carried from now (its streams end at the forwarder), not only
 * when the flush and the linger are over, up to 12 s later for a device
 * that does not read. */
static void s_close(edge_conn_t *c, Rb__Tunnel__CloseReason reason, const char *msg)
{
    if (c->st == ST_CLOSING) return;
    Rb__Tunnel__TunnelControl m = RB__TUNNEL__TUNNEL_CONTROL__INIT;
    Rb__Tunnel__SessionClosed sc = RB__TUNNEL__SESSION_CLOSED__INIT;
    sc.reason = reason;
    sc.message = (char *)msg;
    m.msg_case = RB__TUNNEL__TUNNEL_CONTROL__MSG_SESSION_CLOSED;
    m.session_closed = &sc;
    s_send(c, &m);
    c->st = ST_CLOSING;
    s_cancel_offer(c);
    /* Answers still on their way would act on a closing connection. */
    edge_auth_cancel(c->ctx->auth, c);
    s_rl_release(c);
    edge_broker_abandon(c->ctx->broker, c->breq);
    c->breq = NULL;
    /* Ended sessions (logoff, kicks) were let go already; this one lives
     * on at the broker. */
    if (c->session_id)
        rb_info("session_detached", "session %s (user '%s') from %s: %s; kept for a resume",
                c->session_id, s_user(c), c->peer, msg);
    s_detach(c);
    rb_tconn_close_after_flush(c->t);
}

static void s_protocol_error(edge_conn_t *c, const char *what)
{
    rb_warn("tunnel_protocol", "peer %s (state %s): %s; closing", c->peer, s_st_names[c->st],
            what);
    rb_metric_inc(c->ctx->m_protocol_errors);
    s_close(c, RB__TUNNEL__CLOSE_REASON__CLOSE_PROTOCOL, what);
}

/* Ends the broker side of the session (Logoff), if there is one. */
static void s_end_session(edge_conn_t *c, const char *reason)
{
    if (!c->session_id) return;
    if (edge_broker_logoff(c->ctx->broker, c->session_id, reason) < 0)
        rb_warn("broker_logoff", "session %s: cannot send the logoff; it will expire",
                c->session_id);
    s_detach(c);
}

/* ------------------------------------------------------------------ */
/* Logon, transfer, resume                                             */

/* A refused attempt: the device may try again on this connection, a few
 * times. */
static void s_refuse(edge_conn_t *c, Rb__Tunnel__FailReason reason, const char *msg)
{
    Rb__Tunnel__TunnelControl m = RB__TUNNEL__TUNNEL_CONTROL__INIT;
    Rb__Tunnel__LogonFailed lf = RB__TUNNEL__LOGON_FAILED__INIT;
    lf.reason = reason;
    lf.message = (char *)msg;
    m.msg_case = RB__TUNNEL__TUNNEL_CONTROL__MSG_LOGON_FAILED;
    m.logon_failed = &lf;
    s_send(c, &m);
    c->st = ST_LOGON;
    if (c->logons >= MAX_LOGONS_PER_CONN)
        s_close(c, RB__TUNNEL__CLOSE_REASON__CLOSE_UNSPECIFIED,
                "too many logon attempts on one connection");
}

static void s_logon_failed(edge_conn_t *c, int result, Rb__Tunnel__FailReason reason,
                           const char *msg)
{
    rb_metric_inc(c->ctx->m_logons[result]);
    rb_info("logon_failed", "user '%s' from %s: %s", s_user(c), c->peer,
            edge_logon_result_names[result]);
    s_refuse(c, reason, msg);
}

static void s_resume_failed(edge_conn_t *c, int result, Rb__Tunnel__FailReason reason,
                            const char *msg)
{
    rb_metric_inc(c->ctx->m_resumes[result]);
    rb_info("resume_failed", "from %s (device '%s'): %s", c->peer, c->device ? c->device : "",
            edge_resume_result_names[result]);
    s_refuse(c, reason, msg);
}

static void s_transfer_failed(edge_conn_t *c, int result, Rb__Tunnel__FailReason reason,
                              const char *msg)
{
    rb_metric_inc(c->ctx->m_transfers[result]);
    rb_info("transfer_failed", "user '%s' from %s: %s", s_user(c), c->peer,
            edge_transfer_result_names[result]);
    s_refuse(c, reason, msg);
}

/* A refusal of the request in flight, counted under its kind. */
static void s_broker_failed(edge_conn_t *c, Rb__Tunnel__FailReason reason, const char *msg)
{
    switch (c->bkind) {
    case BK_LOGON:
        s_logon_failed(c,
                       reason == RB__TUNNEL__FAIL_REASON__FAIL_POOL_EXHAUSTED ? EDGE_LOGON_EXHAUSTED
                       : reason == RB__TUNNEL__FAIL_REASON__FAIL_SESSION_EXISTS
                           ? EDGE_LOGON_EXISTS
                           : EDGE_LOGON_UNAVAILABLE,
                       reason, msg);
        return;
    case BK_TRANSFER: s_transfer_failed(c, EDGE_TRANSFER_UNAVAILABLE, reason, msg); return;
    case BK_RESUME: s_resume_failed(c, EDGE_RESUME_UNAVAILABLE, reason, msg); return;
    }
}

/* The session is carried here from now on: LogonOk, ACTIVE. */
static void s_attach(edge_conn_t *c, const Rb__Edgebroker__LogonReply *r)
{
    c->session_id = strdup(r->session_id);
    if (!c->session_id) {
        /* The broker has a session we cannot track; it expires unrefreshed. */
        s_broker_failed(c, RB__TUNNEL__FAIL_REASON__FAIL_UNAVAILABLE, "the edge is out of memory");
        return;
    }
    void *old = NULL;
    if (rb_smap_put(c->ctx->by_session, c->session_id, c, &old) < 0) {
        free(c->session_id);
        c->session_id = NULL;
        s_broker_failed(c, RB__TUNNEL__FAIL_REASON__FAIL_UNAVAILABLE, "the edge is out of memory");
        return;
    }
    c->st = ST_ACTIVE;
    c->up_seq = r->up_seq;
    c->ctx->sessions++;
    rb_metric_set(c->ctx->m_sessions, (double)c->ctx->sessions);
    /* A resume over a connection we still hold for the session (its device
     * moved before the old path was noticed dead): the old one goes. */
    if (old && old != c)
        edge_conn_kick(old, RB__TUNNEL__CLOSE_REASON__CLOSE_REPLACED,
                       "the session resumed on another connection");
    const char *ip = r->ip ? r->ip : "";
    const char *fqdn = r->fqdn ? r->fqdn : "";
    switch (c->bkind) {
    case BK_LOGON:
    case BK_TRANSFER:
        if (c->bkind == BK_LOGON) {
            rb_metric_inc(c->ctx->m_logons[EDGE_LOGON_OK]);
            rb_metric_observe(c->ctx->m_logon_duration,
                              (double)(rb_now_ms() - c->logon_start_ms) / 1000);
        } else {
            rb_metric_inc(c->ctx->m_transfers[EDGE_TRANSFER_OK]);
        }
        rb_info(c->bkind == BK_LOGON ? "logon_ok" : "transfer_ok",
                "user '%s' from %s (device '%s'): session %s, ip %s, name %s%s", s_user(c),
                c->peer, c->device, r->session_id, *ip ? ip : "-", *fqdn ? fqdn : "-",
                r->no_address ? " (no address)" : "");
        break;
    case BK_RESUME:
        rb_metric_inc(c->ctx->m_resumes[EDGE_RESUME_OK]);
        rb_info("resume_ok", "session %s from %s (device '%s'): ip %s, name %s", r->session_id,
                c->peer, c->device, *ip ? ip : "-", *fqdn ? fqdn : "-");
        break;
    }
    Rb__Tunnel__TunnelControl m = RB__TUNNEL__TUNNEL_CONTROL__INIT;
    Rb__Tunnel__LogonOk ok = RB__TUNNEL__LOGON_OK__INIT;
    ok.session_id = r->session_id;
    ok.ip = (char *)ip;
    ok.fqdn = (char *)fqdn;
    ok.resume_token = r->resume_token ? r->resume_token : "";
    ok.keepalive_s = c->ctx->keepalive_s;
    ok.no_address = r->no_address;
    m.msg_case = RB__TUNNEL__TUNNEL_CONTROL__MSG_LOGON_OK;
    m.logon_ok = &ok;
    s_send(c, &m);
    if (c->ctx->link) {
        const char *user = r->user && *r->user ? r->user : s_user(c);
        c->tun = edge_link_attach(c->ctx->link, c->t, c->session_id, user, ip,
                                  edge_users_groups(c->ctx->users, user));
        if (!c->tun) rb_warn("link_attach", "session %s: no data plane (out of memory)",
                             c->session_id);
    }
    /* Its end may have overtaken this answer on the event stream. */
    char why[32];
    if (c->ctx->ended && edge_ended_take(c->ctx->ended, c->session_id, why) == 0)
        edge_conn_end(c, why);
}

static void s_on_offer_deadline(rb_loop_t *loop, void *arg)
{
    edge_conn_t *c = arg;
    c->offer_timer = NULL;
    if (c->st != ST_OFFERED) return;
    /* The broker would refuse the accept now; say so before the device
     * asks. A late answer naming this offer is ignored (see the handler). */
    s_transfer_failed(c, EDGE_TRANSFER_EXPIRED, RB__TUNNEL__FAIL_REASON__FAIL_TRANSFER_EXPIRED,
                      "transfer offer expired");
    c->deciding_ms = rb_now_ms();
}

static void s_offer(edge_conn_t *c, const Rb__Edgebroker__TransferOfferInfo *o)
{
    if (!o || !o->offer_id || !*o->offer_id || strlen(o->offer_id) > ID_MAX) {
        rb_warn("broker_bad_reply", "user '%s': transfer offer without a usable id", s_user(c));
        s_logon_failed(c, EDGE_LOGON_UNAVAILABLE, RB__TUNNEL__FAIL_REASON__FAIL_UNAVAILABLE,
                       "the session service gave an incomplete answer");
        return;
    }
    free(c->offer_id);
    c->offer_id = strdup(o->offer_id);
    /* An offer of 0 s could never be taken; one of days would hold the
     * connection (and the broker's offer) longer than anyone waits. */
    unsigned ttl = o->expires_in_s ? o->expires_in_s : 1;
    if (ttl > 3600) ttl = 3600;
    c->offer_timer = rb_loop_add_timer(c->ctx->loop, (uint64_t)ttl * 1000, false,
                                       s_on_offer_deadline, c);
    if (!c->offer_id || !c->offer_timer) {
        s_cancel_offer(c);
        s_logon_failed(c, EDGE_LOGON_UNAVAILABLE, RB__TUNNEL__FAIL_REASON__FAIL_UNAVAILABLE,
                       "the edge is out of memory");
        return;
    }
    rb_metric_inc(c->ctx->m_logons[EDGE_LOGON_OFFERED]);
    rb_info("transfer_offered", "user '%s' from %s (device '%s'): session since %llu on '%s' "
            "(edge %s), offer %s for %u s", s_user(c), c->peer, c->device,
            (unsigned long long)o->session_since_ms, o->device ? o->device : "",
            o->edge_id ? o->edge_id : "", o->offer_id, ttl);
    Rb__Tunnel__TunnelControl m = RB__TUNNEL__TUNNEL_CONTROL__INIT;
    Rb__Tunnel__TransferOffer to = RB__TUNNEL__TRANSFER_OFFER__INIT;
    to.offer_id = o->offer_id;
    to.session_since_ms = o->session_since_ms;
    to.device = o->device ? o->device : "";
    to.edge_id = o->edge_id ? o->edge_id : "";
    to.source = o->source ? o->source : "";
    to.expires_in_s = ttl;
    m.msg_case = RB__TUNNEL__TUNNEL_CONTROL__MSG_TRANSFER_OFFER;
    m.transfer_offer = &to;
    s_send(c, &m);
    c->st = ST_OFFERED;
}

static void s_on_broker_reply(void *arg, const Rb__Edgebroker__LogonReply *r)
{
    edge_conn_t *c = arg;
    c->breq = NULL;
    s_rl_release(c); /* a resume's check ends here */
    if (!r) {
        s_broker_failed(c, RB__TUNNEL__FAIL_REASON__FAIL_UNAVAILABLE,
                        "the session service did not answer; try again later");
        return;
    }
    switch (r->status) {
    case RB__EDGEBROKER__LOGON_STATUS__LOGON_OK: break;
    case RB__EDGEBROKER__LOGON_STATUS__LOGON_POOL_EXHAUSTED:
        s_broker_failed(c, RB__TUNNEL__FAIL_REASON__FAIL_POOL_EXHAUSTED,
                        "no intranet address is free");
        return;
    case RB__EDGEBROKER__LOGON_STATUS__LOGON_SESSION_EXISTS:
        s_broker_failed(c, RB__TUNNEL__FAIL_REASON__FAIL_SESSION_EXISTS,
                        r->message && *r->message ? r->message : "you already have a session");
        return;
    case RB__EDGEBROKER__LOGON_STATUS__LOGON_TRANSFER_OFFER:
        if (c->bkind == BK_LOGON) {
            s_offer(c, r->offer);
            return;
        }
        break;   /* an offer answering a transfer or resume: not ours */
    case RB__EDGEBROKER__LOGON_STATUS__LOGON_OFFER_EXPIRED:
        if (c->bkind == BK_TRANSFER) {
            s_transfer_failed(c, EDGE_TRANSFER_EXPIRED,
                              RB__TUNNEL__FAIL_REASON__FAIL_TRANSFER_EXPIRED,
                              "transfer offer expired");
            return;
        }
        break;
    case RB__EDGEBROKER__LOGON_STATUS__LOGON_RESUME_REFUSED:
        if (c->bkind == BK_RESUME) {
            /* Counted like a failed password: tokens are not to be guessed. */
            edge_rl_failure(c->ctx->rl, NULL, c->addr, rb_now_ms());
            s_resume_failed(c, EDGE_RESUME_REFUSED, RB__TUNNEL__FAIL_REASON__FAIL_RESUME_REFUSED,
                            "the session cannot be resumed (it ended, or the token is wrong)");
            return;
        }
        break;
    default: break;
    }
    if (r->status != RB__EDGEBROKER__LOGON_STATUS__LOGON_OK) {
        rb_warn("broker_logon_refused", "user '%s': broker says %d to a %s: %s", s_user(c),
                r->status, c->bkind == BK_LOGON ? "logon" : c->bkind == BK_TRANSFER ? "transfer"
                                                                               : "resume",
                r->message ? r->message : "");
        s_broker_failed(c, RB__TUNNEL__FAIL_REASON__FAIL_UNAVAILABLE,
                        "the session service cannot log you on now; try again later");
        return;
    }
    if (!r->session_id || !*r->session_id || strlen(r->session_id) > ID_MAX ||
        (!r->no_address && (!r->ip || !*r->ip))) {
        rb_warn("broker_bad_reply", "user '%s': LOGON_OK without a session or address",
                s_user(c));
        s_broker_failed(c, RB__TUNNEL__FAIL_REASON__FAIL_UNAVAILABLE,
                        "the session service gave an incomplete answer");
        return;
    }
    s_attach(c, r);
}

static void s_on_auth(void *arg, bool ok)
{
    edge_conn_t *c = arg;
    uint64_t now = rb_now_ms();
    c->bkind = BK_LOGON;
    s_rl_release(c);
    if (!ok) {
        edge_rl_failure(c->ctx->rl, c->user, c->addr, now);
        s_logon_failed(c, EDGE_LOGON_BAD_CREDENTIALS, RB__TUNNEL__FAIL_REASON__FAIL_BAD_CREDENTIALS,
                       "invalid user name or password");
        return;
    }
    edge_rl_success(c->ctx->rl, c->user, now);
    const char *groups = edge_users_groups(c->ctx->users, c->user);
    c->breq = edge_broker_logon(c->ctx->broker, c->user, c->device, c->peer, groups,
                                s_on_broker_reply, c);
    if (!c->breq) {
        s_logon_failed(c, EDGE_LOGON_UNAVAILABLE, RB__TUNNEL__FAIL_REASON__FAIL_UNAVAILABLE,
                       "the session service is unreachable; try again later");
        return;
    }
    c->st = ST_BROKER;
}

static bool s_printable(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f) return false;
    return true;
}

/* Replaces *dst with a copy of src. 0 or -1. */
static int s_set(char **dst, const char *src)
{
    char *p = strdup(src);
    if (!p) return -1;
    free(*dst);
    *dst = p;
    return 0;
}

/* ------------------------------------------------------------------ */
/* Handlers, one per control message a device may send                 */

static void s_on_hello(edge_conn_t *c, const Rb__Tunnel__TunnelControl *m)
{
    if (m->hello->version != RB_TUNNEL_VERSION) {
        char why[96];
        snprintf(why, sizeof why, "tunnel protocol version %u is not spoken (this edge: %u)",
                 m->hello->version, RB_TUNNEL_VERSION);
        s_protocol_error(c, why);
        return;
    }
    Rb__Tunnel__TunnelControl r = RB__TUNNEL__TUNNEL_CONTROL__INIT;
    Rb__Tunnel__HelloAck ack = RB__TUNNEL__HELLO_ACK__INIT;
    ack.version = RB_TUNNEL_VERSION;
    ack.edge_id = (char *)c->ctx->edge_id;
    r.msg_case = RB__TUNNEL__TUNNEL_CONTROL__MSG_HELLO_ACK;
    r.hello_ack = &ack;
    s_send(c, &r);
    c->st = ST_LOGON;
}

static void s_on_logon(edge_conn_t *c, const Rb__Tunnel__TunnelControl *m)
{
    const Rb__Tunnel__Logon *l = m->logon;
    const char *user = l->user ? l->user : "";
    const char *pw = l->password ? l->password : "";
    const char *dev = l->device ? l->device : "";
    if (strlen(user) > USER_MAX || strlen(pw) > PASSWORD_MAX || strlen(dev) > DEVICE_MAX ||
        !s_printable(user) || !s_printable(dev)) {
        s_protocol_error(c, "logon fields too long or not printable");
        return;
    }
    if (s_set(&c->user, user) < 0 || s_set(&c->device, *dev ? dev : "unnamed") < 0) {
        s_close(c, RB__TUNNEL__CLOSE_REASON__CLOSE_UNSPECIFIED, "edge out of memory");
        return;
    }
    c->logons++;
    c->logon_start_ms = rb_now_ms();
    if (!s_rl_begin(c, c->user)) {
        s_logon_failed(c, EDGE_LOGON_RATE_LIMITED, RB__TUNNEL__FAIL_REASON__FAIL_RATE_LIMITED,
                       "too many failed logons; wait a minute and try again");
        return;
    }
    if (edge_auth_check(c->ctx->auth, c->user, pw, s_on_auth, c) < 0) {
        s_rl_release(c);
        s_logon_failed(c, EDGE_LOGON_UNAVAILABLE, RB__TUNNEL__FAIL_REASON__FAIL_UNAVAILABLE,
                       "the edge is out of memory");
        return;
    }
    c->st = ST_AUTH;
}

static void s_on_transfer_answer(edge_conn_t *c, const Rb__Tunnel__TunnelControl *m)
{
    const Rb__Tunnel__TransferAnswer *a = m->transfer_answer;
    const char *id = a->offer_id ? a->offer_id : "";
    bool ours = c->offer_id && strcmp(id, c->offer_id) == 0;
    if (c->st == ST_LOGON) {
        /* The answer crossed our "offer expired": the device has been told
         * already. Anything else here is out of order. */
        if (ours) {
            rb_debug("transfer_late", "peer %s: answer to expired offer %s ignored", c->peer, id);
            /* Accepted a moment too late: the person now reads why. Once:
             * a second answer is out of order (and would otherwise renew
             * the exemption for ever). */
            c->deciding_ms = rb_now_ms();
            free(c->offer_id);
            c->offer_id = NULL;
            return;
        }
        s_protocol_error(c, "TransferAnswer without an offer");
        return;
    }
    if (!ours) {
        s_protocol_error(c, "TransferAnswer names another offer");
        return;
    }
    s_cancel_offer(c);
    if (!a->accept) {
        rb_metric_inc(c->ctx->m_transfers[EDGE_TRANSFER_DECLINED]);
        rb_info("transfer_declined", "user '%s' from %s: offer %s declined", s_user(c), c->peer,
                id);
        s_close(c, RB__TUNNEL__CLOSE_REASON__CLOSE_DECLINED,
                "transfer declined; the existing session is left alone");
        return;
    }
    c->bkind = BK_TRANSFER;
    c->logons++;
    const char *groups = edge_users_groups(c->ctx->users, c->user);
    c->breq = edge_broker_transfer(c->ctx->broker, c->offer_id, c->user, c->device, c->peer,
                                   groups, s_on_broker_reply, c);
    if (!c->breq) {
        s_transfer_failed(c, EDGE_TRANSFER_UNAVAILABLE, RB__TUNNEL__FAIL_REASON__FAIL_UNAVAILABLE,
                          "the session service is unreachable; try again later");
        return;
    }
    c->st = ST_BROKER;
}

static void s_on_resume(edge_conn_t *c, const Rb__Tunnel__TunnelControl *m)
{
    const Rb__Tunnel__Resume *r = m->resume;
    const char *sid = r->session_id ? r->session_id : "";
    const char *tok = r->resume_token ? r->resume_token : "";
    const char *dev = r->device ? r->device : "";
    if (!*sid || strlen(sid) > ID_MAX || strlen(tok) > TOKEN_MAX || strlen(dev) > DEVICE_MAX ||
        !s_printable(sid) || !s_printable(dev)) {
        s_protocol_error(c, "resume fields empty, too long or not printable");
        return;
    }
    if (s_set(&c->device, *dev ? dev : "unnamed") < 0) {
        s_close(c, RB__TUNNEL__CLOSE_REASON__CLOSE_UNSPECIFIED, "edge out of memory");
        return;
    }
    c->bkind = BK_RESUME;
    c->logons++;
    c->logon_start_ms = rb_now_ms();
    if (!s_rl_begin(c, NULL)) {
        s_resume_failed(c, EDGE_RESUME_RATE_LIMITED, RB__TUNNEL__FAIL_REASON__FAIL_RATE_LIMITED,
                        "too many failed attempts from your address; wait a minute");
        return;
    }
    c->breq = edge_broker_resume(c->ctx->broker, sid, tok, c->device, c->peer,
                                 s_on_broker_reply, c);
    if (!c->breq) {
        s_rl_release(c);
        s_resume_failed(c, EDGE_RESUME_UNAVAILABLE, RB__TUNNEL__FAIL_REASON__FAIL_UNAVAILABLE,
                        "the session service is unreachable; try again later");
        return;
    }
    c->st = ST_BROKER;
}

static void s_on_logoff(edge_conn_t *c, const Rb__Tunnel__TunnelControl *m)
{
    if (c->session_id) rb_info("logoff", "user '%s' from %s: session %s", s_user(c), c->peer,
                               c->session_id);
    s_end_session(c, "logoff");
    s_close(c, RB__TUNNEL__CLOSE_REASON__CLOSE_LOGOFF, "logged off");
}

static void s_send_pong(edge_conn_t *c, uint64_t nonce)
{
    Rb__Tunnel__TunnelControl r = RB__TUNNEL__TUNNEL_CONTROL__INIT;
    Rb__Tunnel__Pong p = RB__TUNNEL__PONG__INIT;
    p.nonce = nonce;
    r.msg_case = RB__TUNNEL__TUNNEL_CONTROL__MSG_PONG;
    r.pong = &p;
    s_send(c, &r);
}

/* A peer that sends Pings and reads nothing must not grow its queue
 * without bound: past this backlog only the latest Ping is answered, once
 * the queue has drained. */
#define PONG_MAX_BACKLOG (64 * 1024)

static void s_on_ping(edge_conn_t *c, const Rb__Tunnel__TunnelControl *m)
{
    if (rb_tconn_output_pending(c->t) > PONG_MAX_BACKLOG) {
        c->pong_owed = true;
        c->pong_nonce = m->ping->nonce;
        return;
    }
    s_send_pong(c, m->ping->nonce);
}

/* The edge does not ping yet; a Pong only proves liveness, which receiving
 * it already did. */
static void s_on_pong(edge_conn_t *c, const Rb__Tunnel__TunnelControl *m) {}

/* Streams need the data plane; a session without one (out of memory at
 * attach) refuses the streams it opens. rc and why come from edge_link: a
 * device that broke the stream rules is closed. */
static void s_link_result(edge_conn_t *c, int rc, const char *why)
{
    if (rc < 0) s_protocol_error(c, why);
}

static void s_on_expose(edge_conn_t *c, const Rb__Tunnel__TunnelControl *m)
{
    const char *why = "";
    if (!c->tun) return;
    int rc = edge_link_expose(c->tun, m->expose, &why);
    s_link_result(c, rc, why);
}

static void s_on_stream_open(edge_conn_t *c, const Rb__Tunnel__TunnelControl *m)
{
    const char *why = "";
    if (c->tun) {
        int rc = edge_link_stream_open(c->tun, m->stream_open, &why);
        s_link_result(c, rc, why);
        return;
    }
    Rb__Tunnel__TunnelControl r = RB__TUNNEL__TUNNEL_CONTROL__INIT;
    Rb__Tunnel__StreamResult sr = RB__TUNNEL__STREAM_RESULT__INIT;
    sr.stream_id = m->stream_open->stream_id;
    sr.error = RB__TUNNEL__STREAM_ERROR__STREAM_UNREACHABLE;
    sr.message = "no data plane on this edge";
    r.msg_case = RB__TUNNEL__TUNNEL_CONTROL__MSG_STREAM_RESULT;
    r.stream_result = &sr;
    s_send(c, &r);
}

static void s_on_stream_result(edge_conn_t *c, const Rb__Tunnel__TunnelControl *m)
{
    const char *why = "";
    if (!c->tun) return;
    int rc = edge_link_stream_result(c->tun, m->stream_result, &why);
    s_link_result(c, rc, why);
}

#define AFTER_HELLO (ST(ST_LOGON) | ST(ST_AUTH) | ST(ST_BROKER) | ST(ST_OFFERED) | ST(ST_ACTIVE))

static const struct {
    Rb__Tunnel__TunnelControl__MsgCase msg;
    const char *name;
    handler_fn *fn;
    unsigned states;
} s_dispatch[] = {
    {RB__TUNNEL__TUNNEL_CONTROL__MSG_HELLO, "Hello", s_on_hello, ST(ST_HELLO)},
    {RB__TUNNEL__TUNNEL_CONTROL__MSG_LOGON, "Logon", s_on_logon, ST(ST_LOGON)},
    {RB__TUNNEL__TUNNEL_CONTROL__MSG_RESUME, "Resume", s_on_resume, ST(ST_LOGON)},
    /* In LOGON only to drop an answer that crossed the offer's expiry. */
    {RB__TUNNEL__TUNNEL_CONTROL__MSG_TRANSFER_ANSWER, "TransferAnswer", s_on_transfer_answer,
     ST(ST_OFFERED) | ST(ST_LOGON)},
    /* While a check or broker request is in flight the device must wait for
     * its answer; a Logoff then would race the session's creation. */
    {RB__TUNNEL__TUNNEL_CONTROL__MSG_LOGOFF, "Logoff", s_on_logoff,
     ST(ST_LOGON) | ST(ST_OFFERED) | ST(ST_ACTIVE)},
    {RB__TUNNEL__TUNNEL_CONTROL__MSG_PING, "Ping", s_on_ping, AFTER_HELLO},
    {RB__TUNNEL__TUNNEL_CONTROL__MSG_PONG, "Pong", s_on_pong, AFTER_HELLO},
    {RB__TUNNEL__TUNNEL_CONTROL__MSG_EXPOSE, "Expose", s_on_expose, ST(ST_ACTIVE)},
    {RB__TUNNEL__TUNNEL_CONTROL__MSG_STREAM_OPEN, "StreamOpen", s_on_stream_open, ST(ST_ACTIVE)},
    {RB__TUNNEL__TUNNEL_CONTROL__MSG_STREAM_RESULT, "StreamResult", s_on_stream_result,
     ST(ST_ACTIVE)},
};

static const char *s_msg_name(int msg)
{
    static const char *names[] = {"empty",         "Hello",         "HelloAck",
                                  "Logon",         "LogonOk",       "LogonFailed",
                                  "Logoff",        "Ping",          "Pong",
                                  "SessionClosed", "Resume",        "TransferOffer",
                                  "TransferAnswer", "Expose",       "StreamOpen",
                                  "StreamResult"};
    return msg >= 0 && (size_t)msg < sizeof names / sizeof names[0] ? names[msg] : "unknown";
}

static void s_dispatch_control(edge_conn_t *c, const Rb__Tunnel__TunnelControl *m)
{
    for (size_t i = 0; i < sizeof s_dispatch / sizeof s_dispatch[0]; i++) {
        if (s_dispatch[i].msg != m->msg_case) continue;
        if (!(s_dispatch[i].states & ST(c->st))) break;
        s_dispatch[i].fn(c, m);
        return;
    }
    char why[96];
    snprintf(why, sizeof why, "%s not allowed in state %s", s_msg_name(m->msg_case),
             s_st_names[c->st]);
    s_protocol_error(c, why);
}

/* ------------------------------------------------------------------ */
/* Connection events                                                   */

static void s_on_open(rb_tconn_t *t, void *arg)
{
    edge_conn_t *c = arg;
    c->last_rx_ms = rb_now_ms();
}

/* What waits for a device is bounded by its windows (DATA, past
 * EDGE_TUNNEL_BACKLOG_MAX streams are reset) and by the answers to what it
 * sends, which nothing else bounds: a refused StreamOpen is answered at
 * once, so a device that sends them and reads nothing would grow its queue
 * for ever. Sending while this much waits for it breaks the protocol. */
#define DEVICE_BACKLOG_MAX (EDGE_TUNNEL_BACKLOG_MAX + ((size_t)1 << 20))

static void s_on_frame(rb_tconn_t *t, const rb_frame_t *f, void *arg)
{
    edge_conn_t *c = arg;
    if (c->st == ST_CLOSING) return;
    if (rb_tconn_output_pending(c->t) > DEVICE_BACKLOG_MAX) {
        char why[128];
        snprintf(why, sizeof why, "the device sends but does not read (%zu bytes wait for it)",
                 rb_tconn_output_pending(c->t));
        s_protocol_error(c, why);
        return;
    }
    if (f->type != RB_FRAME_CONTROL) {
        c->last_rx_ms = rb_now_ms();
        if (c->st != ST_ACTIVE) {
            s_protocol_error(c, "stream frames before the session is active");
            return;
        }
        const char *why = "";
        if (c->tun && edge_link_frame(c->tun, f, &why) < 0) s_protocol_error(c, why);
        return;
    }
    Rb__Tunnel__TunnelControl *m = rb_frame_control(f);
    if (!m) {
        s_protocol_error(c, "undecodable control message");
        return;
    }
    /* Before a logon is under way keepalives are not progress: a peer that
     * only pings must not hold its slot for ever (the idle rule closes it).
     * A person still deciding on a lapsed transfer offer is let be, until
     * the device says anything else or DECIDING_MAX_MS pass. */
    bool keepalive = m->msg_case == RB__TUNNEL__TUNNEL_CONTROL__MSG_PING ||
                     m->msg_case == RB__TUNNEL__TUNNEL_CONTROL__MSG_PONG;
    uint64_t now = rb_now_ms();
    bool deciding = c->deciding_ms && now - c->deciding_ms < DECIDING_MAX_MS;
    if (!keepalive) c->deciding_ms = 0;
    if (!keepalive || !(c->st == ST_HELLO || (c->st == ST_LOGON && !deciding))) c->last_rx_ms = now;
    s_dispatch_control(c, m);
    /* The Logon's password and the Resume's token are in the unpacked
     * copy: wipe them. */
    if (m->msg_case == RB__TUNNEL__TUNNEL_CONTROL__MSG_LOGON && m->logon->password)
        OPENSSL_cleanse(m->logon->password, strlen(m->logon->password));
    if (m->msg_case == RB__TUNNEL__TUNNEL_CONTROL__MSG_RESUME && m->resume->resume_token)
        OPENSSL_cleanse(m->resume->resume_token, strlen(m->resume->resume_token));
    rb__tunnel__tunnel_control__free_unpacked(m, NULL);
}

static void s_free(edge_conn_t *c)
{
    edge_ctx_t *ctx = c->ctx;
    rb_loop_cancel_timer(ctx->loop, c->idle_timer);
    edge_auth_cancel(ctx->auth, c);
    s_rl_release(c);
    rb_loop_cancel_timer(ctx->loop, c->offer_timer);
    /* A logon still at the broker may yet create a session: end it then. */
    edge_broker_abandon(ctx->broker, c->breq);
    /* A dropped device keeps its session: it may resume, here or on
     * another edge; unrefreshed, the broker expires it. */
    s_detach(c);
    rb_tconn_destroy(&c->t);
    if (c->prev) c->prev->next = c->next;
    else ctx->head = c->next;
    if (c->next) c->next->prev = c->prev;
    ctx->connections--;
    rb_metric_set(ctx->m_connections, (double)ctx->connections);
    free(c->user);
    free(c->device);
    free(c->offer_id);
    free(c);
}

static void s_on_close(rb_tconn_t *t, rb_tconn_end_t end, const char *reason, void *arg)
{
    edge_conn_t *c = arg;
    if (end == RB_TCONN_PROTOCOL) rb_metric_inc(c->ctx->m_protocol_errors);
    /* Failed handshakes are what a wrong CA, an old client or a scanner
     * looks like: worth a line, but not a warning. */
    if (end == RB_TCONN_TLS_FAILED)
        rb_info("tls_handshake_failed", "peer %s: %s", c->peer, reason);
    else
        rb_debug("tunnel_closed", "peer %s (state %s): %s: %s", c->peer, s_st_names[c->st],
                 rb_tconn_end_str(end), reason);
    if (c->session_id)
        rb_info("session_detached", "session %s (user '%s') from %s: connection ended (%s); "
                "kept for a resume", c->session_id, s_user(c), c->peer, reason);
    s_free(c);
}

static void s_on_idle_check(rb_loop_t *loop, void *arg)
{
    edge_conn_t *c = arg;
    if (c->st == ST_CLOSING) return;
    uint64_t limit = 3ull * c->ctx->keepalive_s * 1000;
    if (c->last_rx_ms && rb_now_ms() - c->last_rx_ms > limit) {
        rb_info("tunnel_idle", "peer %s (state %s): nothing for %u s; closing", c->peer,
                s_st_names[c->st], 3 * c->ctx->keepalive_s);
        s_close(c, RB__TUNNEL__CLOSE_REASON__CLOSE_IDLE, "no keepalive in time");
    }
}

static void s_on_drained(rb_tconn_t *t, void *arg)
{
    edge_conn_t *c = arg;
    if (c->pong_owed && c->st != ST_CLOSING) {
        c->pong_owed = false;
        s_send_pong(c, c->pong_nonce);
    }
    edge_link_drained(c->tun);
}

static const rb_tconn_handlers_t s_handlers = {s_on_open, s_on_frame, s_on_close, s_on_drained};

edge_conn_t *edge_conn_new(edge_ctx_t *ctx, int fd, const char *peer)
{
    edge_conn_t *c = calloc(1, sizeof *c);
    if (!c) {
        close(fd);
        return NULL;
    }
    c->ctx = ctx;
    c->st = ST_HELLO;
    snprintf(c->peer, sizeof c->peer, "%s", peer);
    snprintf(c->addr, sizeof c->addr, "%s", peer);
    char *colon = strrchr(c->addr, ':');
    if (colon) *colon = '\0';
    /* Before the handshake completes rb_tconn's own deadline applies;
     * after it, the keepalive rule (checked every keepalive_s). */
    c->idle_timer = rb_loop_add_timer(ctx->loop, (uint64_t)ctx->keepalive_s * 1000, true,
                                      s_on_idle_check, c);
    if (!c->idle_timer) {
        free(c);
        close(fd);
        return NULL;
    }
    c->t = rb_tconn_accept(ctx->loop, ctx->tls, fd, peer, &s_handlers, c);
    if (!c->t) {
        rb_loop_cancel_timer(ctx->loop, c->idle_timer);
        free(c);
        return NULL;
    }
    c->next = ctx->head;
    if (ctx->head) ctx->head->prev = c;
    ctx->head = c;
    ctx->connections++;
    rb_metric_set(ctx->m_connections, (double)ctx->connections);
    return c;
}

void edge_conn_destroy(edge_conn_t **cp)
{
    if (!cp || !*cp) return;
    s_free(*cp);
    *cp = NULL;
}

void edge_conn_shutdown(edge_conn_t *c)
{
    if (!c) return;
    if (!rb_tconn_is_open(c->t)) {
        /* Still in the TLS handshake: nothing to say. */
        rb_tconn_close_after_flush(c->t);
        return;
    }
    /* No logoff: the device resumes its session on another edge. */
    s_close(c, RB__TUNNEL__CLOSE_REASON__CLOSE_SHUTDOWN, "the edge is stopping");
}

static int s_kick_index(Rb__Tunnel__CloseReason reason)
{
    switch (reason) {
    case RB__TUNNEL__CLOSE_REASON__CLOSE_TRANSFERRED: return EDGE_KICK_TRANSFERRED;
    case RB__TUNNEL__CLOSE_REASON__CLOSE_REPLACED: return EDGE_KICK_REPLACED;
    case RB__TUNNEL__CLOSE_REASON__CLOSE_KICKED: return EDGE_KICK_KICKED;
    case RB__TUNNEL__CLOSE_REASON__CLOSE_EXPIRED: return EDGE_KICK_EXPIRED;
    case RB__TUNNEL__CLOSE_REASON__CLOSE_LOGOFF: return EDGE_KICK_LOGOFF;
    default: return EDGE_KICK_OTHER;
    }
}

void edge_conn_kick(edge_conn_t *c, Rb__Tunnel__CloseReason reason, const char *msg)
{
    if (!c || c->st == ST_CLOSING) return;
    rb_metric_inc(c->ctx->m_kicks[s_kick_index(reason)]);
    rb_info("session_kicked", "session %s (user '%s') from %s: %s", c->session_id ? c->session_id : "-",
            s_user(c), c->peer, msg);
    s_detach(c);
    s_close(c, reason, msg);
}

void edge_conn_end(edge_conn_t *c, const char *event_reason)
{
    static const struct {
        const char *reason;
        Rb__Tunnel__CloseReason close;
        const char *msg;
    } map[] = {
        {"transferred", RB__TUNNEL__CLOSE_REASON__CLOSE_TRANSFERRED,
         "session transferred to another device"},
        {"replaced", RB__TUNNEL__CLOSE_REASON__CLOSE_REPLACED, "replaced by a newer logon"},
        {"kicked", RB__TUNNEL__CLOSE_REASON__CLOSE_KICKED, "closed by administrator"},
        {"expired", RB__TUNNEL__CLOSE_REASON__CLOSE_EXPIRED, "session expired"},
        {"logoff", RB__TUNNEL__CLOSE_REASON__CLOSE_LOGOFF, "logged off"},
    };
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++) {
        if (strcmp(event_reason, map[i].reason) == 0) {
            edge_conn_kick(c, map[i].close, map[i].msg);
            return;
        }
    }
    char msg[160];
    snprintf(msg, sizeof msg, "session ended (%.100s)", event_reason);
    edge_conn_kick(c, RB__TUNNEL__CLOSE_REASON__CLOSE_UNSPECIFIED, msg);
}

const char *edge_conn_session_id(const edge_conn_t *c)
{
    return c->st == ST_ACTIVE ? c->session_id : NULL;
}

uint64_t edge_conn_up_seq(const edge_conn_t *c)
{
    return c->up_seq;
}

void edge_conn_forget_up_seq(edge_conn_t *c)
{
    c->up_seq = 0;
}

edge_conn_t *edge_conn_next(const edge_conn_t *c) { return c->next; }
