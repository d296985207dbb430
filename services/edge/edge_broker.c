/* edge_broker: see edge_broker.h. */
#include "edge_broker.h"

#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "rb_log.h"
#include "rb_pb.h"
#include "rb_rpc.h"

#define PING_EVERY_MS 1000
#define READY_WITHIN_MS 3000
/* A logon touches Redis and ipalloc; past this the device is told the
 * service is unavailable. Not retried: a second LogonRequest could meet the
 * session the first one created. */
#define LOGON_TIMEOUT_MS 5000
/* LogoffRequest is idempotent (found=false the second time): retry it. */
#define LOGOFF_TIMEOUT_MS 2000
#define LOGOFF_RETRIES 2

typedef struct refresh_call refresh_call_t;

struct edge_broker {
    rb_loop_t *loop;
    rb_rpc_client_t *rpc;
    rb_timer_t *ping_timer;
    char *edge_id;
    char *peer;           /* endpoints, for logs */
    uint64_t last_pong_ms;
    bool ping_out;        /* a ping is in flight */
    bool ever_pong;
    refresh_call_t *refreshes;   /* in flight, freed at destroy */
};

struct edge_broker_req {
    edge_broker_t *b;
    edge_broker_logon_fn *fn;
    void *arg;
    bool keep_if_abandoned;   /* resume: the session is the device's still */
};

struct refresh_call {
    refresh_call_t *prev, *next;
    edge_broker_t *b;
    edge_broker_refresh_fn *fn;
    void *arg;
};

/* Groups from the users file travel as a repeated field. */
#define MAX_GROUPS 32

/* Unpacks a reply and checks its version and body. NULL when unusable. */
static Rb__Edgebroker__BrokerToEdge *s_unpack(edge_broker_t *b, const uint8_t *body, size_t len,
                                              int want_case)
{
    if (!body) return NULL;
    Rb__Edgebroker__BrokerToEdge *m = (Rb__Edgebroker__BrokerToEdge *)rb_pb_unpack(
        &rb__edgebroker__broker_to_edge__descriptor, body, len, RB_PB_MAX_MESSAGE, b->peer);
    if (!m) return NULL;
    if (m->version != RB_PROTO_VERSION || (int)m->body_case != want_case) {
        rb_warn("broker_bad_reply", "broker %s: version %u, body %d (want %d, %d)", b->peer,
                m->version, (int)m->body_case, RB_PROTO_VERSION, want_case);
        protobuf_c_message_free_unpacked(&m->base, NULL);
        return NULL;
    }
    return m;
}

static void s_on_ping_reply(void *arg, const uint8_t *body, size_t len)
{
    edge_broker_t *b = arg;
    b->ping_out = false;
    Rb__Edgebroker__BrokerToEdge *m = s_unpack(b, body, len, RB__EDGEBROKER__BROKER_TO_EDGE__BODY_PING);
    if (!m) return;
    if (!b->ever_pong || rb_now_ms() - b->last_pong_ms > READY_WITHIN_MS)
        rb_info("broker_up", "broker %s answers (%s)", b->peer,
                m->ping->broker_id ? m->ping->broker_id : "?");
    b->ever_pong = true;
    b->last_pong_ms = rb_now_ms();
    protobuf_c_message_free_unpacked(&m->base, NULL);
}

static void s_on_ping_timer(rb_loop_t *loop, void *arg)
{
    edge_broker_t *b = arg;
    if (b->ping_out) return;   /* one at a time: a dead broker gets no pile */
    Rb__Edgebroker__EdgeToBroker m = RB__EDGEBROKER__EDGE_TO_BROKER__INIT;
    Rb__Edgebroker__PingRequest p = RB__EDGEBROKER__PING_REQUEST__INIT;
    p.edge_id = b->edge_id;
    m.version = RB_PROTO_VERSION;
    m.body_case = RB__EDGEBROKER__EDGE_TO_BROKER__BODY_PING;
    m.ping = &p;
    if (rb_rpc_call(b->rpc, &m.base, PING_EVERY_MS, 0, s_on_ping_reply, b) == 0)
        b->ping_out = true;
}

edge_broker_t *edge_broker_new(rb_loop_t *loop, const char *endpoints, const rb_curve_t *curve,
                               const char *server_public, const char *edge_id)
{
    edge_broker_t *b = calloc(1, sizeof *b);
    if (!b) return NULL;
    b->loop = loop;
    b->edge_id = strdup(edge_id);
    b->peer = strdup(endpoints);
    char *list = strdup(endpoints);
    void *sock = NULL;
    if (!b->edge_id || !b->peer || !list) goto fail;
    char *save = NULL;
    for (char *ep = strtok_r(list, ", ", &save); ep; ep = strtok_r(NULL, ", ", &save)) {
        if (!sock) {
            sock = rb_zsock_connect(ZMQ_DEALER, ep, curve, server_public);
            if (!sock) goto fail;
        } else if (zmq_connect(sock, ep) < 0) {
            /* Further endpoints share the first one's CURVE settings. */
            rb_error("zmq_connect", "%s: %s", ep, zmq_strerror(zmq_errno()));
            goto fail;
        }
    }
    if (!sock) {
        rb_error("broker_config", "no broker endpoint given");
        goto fail;
    }
    b->rpc = rb_rpc_client_new(loop, sock, "broker");
    sock = NULL;   /* owned by rpc now, even on failure */
    if (!b->rpc) goto fail;
    b->ping_timer = rb_loop_add_timer(loop, PING_EVERY_MS, true, s_on_ping_timer, b);
    if (!b->ping_timer) goto fail;
    free(list);
    s_on_ping_timer(loop, b);   /* be ready at once if the broker is */
    return b;
fail:
    rb_zsock_close(&sock);
    free(list);
    edge_broker_destroy(&b);
    return NULL;
}

void edge_broker_destroy(edge_broker_t **bp)
{
    if (!bp || !*bp) return;
    edge_broker_t *b = *bp;
    rb_loop_cancel_timer(b->loop, b->ping_timer);
    /* Pending logon handles are freed by their owners' cancel; rpc drops
     * the calls unanswered. */
    rb_rpc_client_destroy(&b->rpc);
    while (b->refreshes) {
        refresh_call_t *rc = b->refreshes;
        b->refreshes = rc->next;
        free(rc);
    }
    free(b->edge_id);
    free(b->peer);
    free(b);
    *bp = NULL;
}

bool edge_broker_ready(const edge_broker_t *b)
{
    return b->ever_pong && rb_now_ms() - b->last_pong_ms <= READY_WITHIN_MS;
}

static void s_on_logon_reply(void *arg, const uint8_t *body, size_t len)
{
    edge_broker_req_t *req = arg;
    edge_broker_t *b = req->b;
    Rb__Edgebroker__BrokerToEdge *m =
        s_unpack(b, body, len, RB__EDGEBROKER__BROKER_TO_EDGE__BODY_LOGON);
    if (!body) rb_warn("broker_timeout", "broker %s: no answer to a logon", b->peer);
    edge_broker_logon_fn *fn = req->fn;
    void *farg = req->arg;
    free(req);
    fn(farg, m ? m->logon : NULL);
    if (m) protobuf_c_message_free_unpacked(&m->base, NULL);
}

/* Sends m (a logon-like request) and returns its handle. */
static edge_broker_req_t *s_logon_call(edge_broker_t *b, Rb__Edgebroker__EdgeToBroker *m,
                                       edge_broker_logon_fn *fn, void *arg)
{
    edge_broker_req_t *req = calloc(1, sizeof *req);
    if (!req) return NULL;
    req->b = b;
    req->fn = fn;
    req->arg = arg;
    m->version = RB_PROTO_VERSION;
    if (rb_rpc_call(b->rpc, &m->base, LOGON_TIMEOUT_MS, 0, s_on_logon_reply, req) < 0) {
        free(req);
        return NULL;
    }
    return req;
}

/* Splits a comma list into v (pointing into buf, which it modifies). */
static size_t s_split_groups(char *buf, char **v, size_t max)
{
    size_t n = 0;
    char *save = NULL;
    for (char *g = strtok_r(buf, ",", &save); g && n < max; g = strtok_r(NULL, ",", &save))
        v[n++] = g;
    return n;
}

edge_broker_req_t *edge_broker_logon(edge_broker_t *b, const char *user, const char *device,
                                     const char *source, const char *groups,
                                     edge_broker_logon_fn *fn, void *arg)
{
    char gbuf[MAX_GROUPS * 66];
    char *gv[MAX_GROUPS];
    snprintf(gbuf, sizeof gbuf, "%s", groups ? groups : "");
    Rb__Edgebroker__EdgeToBroker m = RB__EDGEBROKER__EDGE_TO_BROKER__INIT;
    Rb__Edgebroker__LogonRequest l = RB__EDGEBROKER__LOGON_REQUEST__INIT;
    l.user = (char *)user;
    l.device = (char *)device;
    l.edge_id = b->edge_id;
    l.source = (char *)source;
    l.n_groups = s_split_groups(gbuf, gv, MAX_GROUPS);
    l.groups = gv;
    m.body_case = RB__EDGEBROKER__EDGE_TO_BROKER__BODY_LOGON;
    m.logon = &l;
    return s_logon_call(b, &m, fn, arg);
}

edge_broker_req_t *edge_broker_transfer(edge_broker_t *b, const char *offer_id,
                                        const char *user, const char *device,
                                        const char *source, const char *groups,
                                        edge_broker_logon_fn *fn, void *arg)
{
    char gbuf[MAX_GROUPS * 66];
    char *gv[MAX_GROUPS];
    snprintf(gbuf, sizeof gbuf, "%s", groups ? groups : "");
    Rb__Edgebroker__EdgeToBroker m = RB__EDGEBROKER__EDGE_TO_BROKER__INIT;
    Rb__Edgebroker__TransferRequest t = RB__EDGEBROKER__TRANSFER_REQUEST__INIT;
    t.offer_id = (char *)offer_id;
    t.user = (char *)user;
    t.device = (char *)device;
    t.edge_id = b->edge_id;
    t.source = (char *)source;
    t.n_groups = s_split_groups(gbuf, gv, MAX_GROUPS);
    t.groups = gv;
    m.body_case = RB__EDGEBROKER__EDGE_TO_BROKER__BODY_TRANSFER;
    m.transfer = &t;
    return s_logon_call(b, &m, fn, arg);
}

edge_broker_req_t *edge_broker_resume(edge_broker_t *b, const char *session_id,
                                      const char *token, const char *device,
                                      const char *source, edge_broker_logon_fn *fn, void *arg)
{
    Rb__Edgebroker__EdgeToBroker m = RB__EDGEBROKER__EDGE_TO_BROKER__INIT;
    Rb__Edgebroker__ResumeRequest r = RB__EDGEBROKER__RESUME_REQUEST__INIT;
    r.session_id = (char *)session_id;
    r.resume_token = (char *)token;
    r.device = (char *)device;
    r.edge_id = b->edge_id;
    r.source = (char *)source;
    m.body_case = RB__EDGEBROKER__EDGE_TO_BROKER__BODY_RESUME;
    m.resume = &r;
    edge_broker_req_t *req = s_logon_call(b, &m, fn, arg);
    if (req) req->keep_if_abandoned = true;
    return req;
}


static void s_refresh_unlink(refresh_call_t *rc)
{
    if (rc->prev) rc->prev->next = rc->next;
    else rc->b->refreshes = rc->next;
    if (rc->next) rc->next->prev = rc->prev;
}

static void s_on_refresh_reply(void *arg, const uint8_t *body, size_t len)
{
    refresh_call_t *rc = arg;
    Rb__Edgebroker__BrokerToEdge *m =
        s_unpack(rc->b, body, len, RB__EDGEBROKER__BROKER_TO_EDGE__BODY_REFRESH);
    if (!body) rb_warn("broker_timeout", "broker %s: no answer to a refresh", rc->b->peer);
    s_refresh_unlink(rc);
    rc->fn(rc->arg, m ? m->refresh : NULL);
    if (m) protobuf_c_message_free_unpacked(&m->base, NULL);
    free(rc);
}

int edge_broker_refresh(edge_broker_t *b, const char *const *ids, size_t n,
                        unsigned timeout_ms, edge_broker_refresh_fn *fn, void *arg)
{
    refresh_call_t *rc = calloc(1, sizeof *rc);
    if (!rc) return -1;
    rc->b = b;
    rc->fn = fn;
    rc->arg = arg;
    Rb__Edgebroker__EdgeToBroker m = RB__EDGEBROKER__EDGE_TO_BROKER__INIT;
    Rb__Edgebroker__RefreshRequest r = RB__EDGEBROKER__REFRESH_REQUEST__INIT;
    r.edge_id = b->edge_id;
    r.n_session_ids = n;
    r.session_ids = (char **)ids;
    m.version = RB_PROTO_VERSION;
    m.body_case = RB__EDGEBROKER__EDGE_TO_BROKER__BODY_REFRESH;
    m.refresh = &r;
    /* Not retried: the next round says the same, with fresher news. */
    if (rb_rpc_call(b->rpc, &m.base, timeout_ms, 0, s_on_refresh_reply, rc) < 0) {
        free(rc);
        return -1;
    }
    rc->next = b->refreshes;
    if (rc->next) rc->next->prev = rc;
    b->refreshes = rc;
    return 0;
}

void edge_broker_cancel(edge_broker_t *b, edge_broker_req_t *req)
{
    if (!req) return;
    rb_rpc_cancel(b->rpc, req);
    free(req);
}

static void s_on_abandoned_logon(void *arg, const Rb__Edgebroker__LogonReply *r)
{
    edge_broker_t *b = arg;
    if (r && r->status == RB__EDGEBROKER__LOGON_STATUS__LOGON_OK && r->session_id)
        edge_broker_logoff(b, r->session_id, "connection lost during logon");
}

static void s_on_abandoned_resume(void *arg, const Rb__Edgebroker__LogonReply *r) {}

void edge_broker_abandon(edge_broker_t *b, edge_broker_req_t *req)
{
    if (!req) return;
    req->fn = req->keep_if_abandoned ? s_on_abandoned_resume : s_on_abandoned_logon;
    req->arg = b;
}

static void s_on_logoff_reply(void *arg, const uint8_t *body, size_t len)
{
    edge_broker_t *b = arg;
    Rb__Edgebroker__BrokerToEdge *m =
        s_unpack(b, body, len, RB__EDGEBROKER__BROKER_TO_EDGE__BODY_LOGOFF);
    if (!m) {
        rb_warn("broker_logoff_lost",
                "broker %s: no answer to a logoff; the session stays until it expires", b->peer);
        return;
    }
    protobuf_c_message_free_unpacked(&m->base, NULL);
}

int edge_broker_logoff(edge_broker_t *b, const char *session_id, const char *reason)
{
    Rb__Edgebroker__EdgeToBroker m = RB__EDGEBROKER__EDGE_TO_BROKER__INIT;
    Rb__Edgebroker__LogoffRequest l = RB__EDGEBROKER__LOGOFF_REQUEST__INIT;
    l.session_id = (char *)session_id;
    l.reason = (char *)reason;
    m.version = RB_PROTO_VERSION;
    m.body_case = RB__EDGEBROKER__EDGE_TO_BROKER__BODY_LOGOFF;
    m.logoff = &l;
    return rb_rpc_call(b->rpc, &m.base, LOGOFF_TIMEOUT_MS, LOGOFF_RETRIES, s_on_logoff_reply, b);
}

size_t edge_broker_pending(const edge_broker_t *b) { return rb_rpc_pending(b->rpc); }
