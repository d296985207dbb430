/* broker_events: PUB of session events and heartbeats, ROUTER of snapshots
 * (see broker_events.h). A PUB socket never blocks: a subscriber that cannot
 * keep up loses messages at its high-water mark, notices the gap in the
 * sequence numbers and takes a new snapshot, which is the Clone pattern's
 * answer to slow subscribers. */
#include "broker_events.h"
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>
#include "rb_buf.h"
#include "rb_log.h"
#include "rb_metrics.h"
#include "rb_pb.h"
#include "rb_rpc.h"
#include "session_events.pb-c.h"

/* A SnapshotCall is a subscriber name; refuse anything bigger. */
#define BROKER_MAX_SNAPSHOT_CALL 1024

typedef struct snap_ctx {
    struct snap_ctx *prev, *next;
    broker_events_t *ev;
    rb_rpc_req_t *req;
} snap_ctx_t;

struct broker_events {
    rb_loop_t *loop;
    void *pub;
    rb_rpc_server_t *snap;
    broker_store_t *store;
    const char *broker_id;
    snap_ctx_t *ctxs;
    rb_metric_t *m_published;
    rb_metric_t *m_snapshots;
};

static void s_ctx_free(snap_ctx_t *c)
{
    broker_events_t *ev = c->ev;
    if (c->prev)
        c->prev->next = c->next;
    else
        ev->ctxs = c->next;
    if (c->next) c->next->prev = c->prev;
    rb_rpc_req_free(c->req);
    free(c);
}

static int s_send(broker_events_t *ev, Rb__Events__EventMessage *m)
{
    rb_buf_t b = RB_BUF_INIT;
    int rc = -1;
    m->version = RB_PROTO_VERSION;
    if (rb_pb_pack(&m->base, &b) != 0) goto out;
    if (zmq_send(ev->pub, b.data ? b.data : "", b.len, ZMQ_DONTWAIT) < 0) {
        rb_warn("publish_failed", "PUB send: %s", zmq_strerror(errno));
        goto out;
    }
    rc = 0;
out:
    rb_buf_free(&b);
    return rc;
}

static void s_fill_session(Rb__Events__Session *out, const broker_session_t *s)
{
    out->session_id = (char *)(s->session_id ? s->session_id : "");
    out->user = (char *)(s->user ? s->user : "");
    out->label = (char *)(s->label ? s->label : "");
    out->fqdn = (char *)(s->fqdn ? s->fqdn : "");
    out->ip = (char *)(s->ip ? s->ip : "");
    out->device = (char *)(s->device ? s->device : "");
    out->edge_id = (char *)(s->edge_id ? s->edge_id : "");
    out->since_ms = s->since_ms;
    out->source = (char *)(s->source ? s->source : "");
    out->via_transfer = s->via_transfer;
    out->groups = (char *)(s->groups ? s->groups : "");
}

int broker_events_publish(broker_events_t *ev, uint64_t seq, bool up, const broker_session_t *s,
                          const char *reason)
{
    Rb__Events__EventMessage m = RB__EVENTS__EVENT_MESSAGE__INIT;
    Rb__Events__SessionEvent se = RB__EVENTS__SESSION_EVENT__INIT;
    Rb__Events__Session sess = RB__EVENTS__SESSION__INIT;
    s_fill_session(&sess, s);
    se.seq = seq;
    se.kind = up ? RB__EVENTS__EVENT_KIND__SESSION_UP : RB__EVENTS__EVENT_KIND__SESSION_DOWN;
    se.session = &sess;
    se.reason = (char *)(reason ? reason : "");
    m.body_case = RB__EVENTS__EVENT_MESSAGE__BODY_EVENT;
    m.event = &se;
    if (s_send(ev, &m) != 0) return -1;
    rb_metric_inc(ev->m_published);
    return 0;
}

int broker_events_heartbeat(broker_events_t *ev, uint64_t seq)
{
    Rb__Events__EventMessage m = RB__EVENTS__EVENT_MESSAGE__INIT;
    Rb__Events__Heartbeat hb = RB__EVENTS__HEARTBEAT__INIT;
    hb.seq = seq;
    hb.broker_id = (char *)ev->broker_id;
    m.body_case = RB__EVENTS__EVENT_MESSAGE__BODY_HEARTBEAT;
    m.heartbeat = &hb;
    return s_send(ev, &m);
}

/* ---- snapshots ---- */

static void s_on_snapshot(void *arg, int rc, uint64_t seq, const broker_session_t *list, size_t n)
{
    snap_ctx_t *c = arg;
    Rb__Events__SnapshotAnswer ans = RB__EVENTS__SNAPSHOT_ANSWER__INIT;
    Rb__Events__Snapshot snap = RB__EVENTS__SNAPSHOT__INIT;
    Rb__Events__Session *sessions = NULL;
    Rb__Events__Session **ptrs = NULL;
    if (rc != 0) {
        /* No answer is better than a wrong one: the subscriber asks again. */
        rb_warn("snapshot_failed", "cannot read sessions for %s", rb_rpc_req_peer(c->req));
        goto out;
    }
    sessions = calloc(n ? n : 1, sizeof(*sessions));
    ptrs = calloc(n ? n : 1, sizeof(*ptrs));
    if (!sessions || !ptrs) goto out;
    for (size_t i = 0; i < n; i++) {
        rb__events__session__init(&sessions[i]);
        s_fill_session(&sessions[i], &list[i]);
        ptrs[i] = &sessions[i];
    }
    snap.seq = seq;
    snap.n_sessions = n;
    snap.sessions = ptrs;
    ans.version = RB_PROTO_VERSION;
    ans.snapshot = &snap;
    rb_metric_inc(c->ev->m_snapshots);
    rb_debug("snapshot", "%zu sessions at seq %llu to %s", n, (unsigned long long)seq,
             rb_rpc_req_peer(c->req));
    rb_rpc_reply(c->req, &ans.base);
    c->req = NULL;
out:
    free(sessions);
    free(ptrs);
    s_ctx_free(c);
}

static void s_on_snapshot_call(void *arg, rb_rpc_req_t *req, const uint8_t *body, size_t len)
{
    broker_events_t *ev = arg;
    Rb__Events__SnapshotCall *call =
        (Rb__Events__SnapshotCall *)rb_pb_unpack(&rb__events__snapshot_call__descriptor, body, len,
                                                 BROKER_MAX_SNAPSHOT_CALL, rb_rpc_req_peer(req));
    if (!call) {
        rb_rpc_req_free(req);
        return;
    }
    uint32_t version = call->version;
    protobuf_c_message_free_unpacked(&call->base, NULL);
    if (version != RB_PROTO_VERSION) {
        rb_warn("bad_version", "%s asked for a snapshot with protocol version %u, we speak %u",
                rb_rpc_req_peer(req), version, RB_PROTO_VERSION);
        rb_rpc_req_free(req);
        return;
    }
    snap_ctx_t *c = calloc(1, sizeof(*c));
    if (!c) {
        rb_rpc_req_free(req);
        return;
    }
    c->ev = ev;
    c->req = req;
    c->next = ev->ctxs;
    if (ev->ctxs) ev->ctxs->prev = c;
    ev->ctxs = c;
    if (broker_store_snapshot(ev->store, s_on_snapshot, c) != 0) {
        rb_warn("snapshot_failed", "Redis is not connected; %s gets no snapshot",
                rb_rpc_req_peer(req));
        s_ctx_free(c);
    }
}

/* ---- object ---- */

broker_events_t *broker_events_new(rb_loop_t *loop, const char *pub_endpoint,
                                   const char *snapshot_endpoint, const rb_curve_t *curve,
                                   broker_store_t *store, const char *broker_id)
{
    broker_events_t *ev = calloc(1, sizeof(*ev));
    if (!ev) return NULL;
    ev->loop = loop;
    ev->store = store;
    ev->broker_id = broker_id;
    ev->pub = rb_zsock_bind(ZMQ_PUB, pub_endpoint, curve);
    if (!ev->pub) goto fail;
    void *router = rb_zsock_bind(ZMQ_ROUTER, snapshot_endpoint, curve);
    if (!router) goto fail;
    ev->snap = rb_rpc_server_new(loop, router, s_on_snapshot_call, ev);
    if (!ev->snap) {
        rb_zsock_close(&router);
        goto fail;
    }
    ev->m_published =
        rb_counter("reachback_events_published_total", NULL, "session events published");
    ev->m_snapshots =
        rb_counter("reachback_snapshots_served_total", NULL, "snapshots sent to subscribers");
    return ev;
fail:
    broker_events_destroy(&ev);
    return NULL;
}

void broker_events_destroy(broker_events_t **evp)
{
    if (!evp || !*evp) return;
    broker_events_t *ev = *evp;
    *evp = NULL;
    /* The store must still be alive: our pending snapshot reads are
     * cancelled there before their contexts go. */
    while (ev->ctxs) {
        broker_store_cancel(ev->store, ev->ctxs);
        s_ctx_free(ev->ctxs);
    }
    rb_rpc_server_destroy(&ev->snap);
    rb_zsock_close(&ev->pub);
    free(ev);
}
