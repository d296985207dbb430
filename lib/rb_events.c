/* rb_events: the subscriber half of the Clone pattern.
 *
 * States: while a snapshot is wanted, every event is buffered (nothing is
 * applied); when the answer comes, the handlers see reset(), up() for each
 * session, then the buffered events newer than the snapshot in sequence
 * order. After that, an event with seq == last + 1 is applied at once; one
 * with seq <= last is a duplicate; one further ahead waits in a small
 * reorder buffer, because several brokers publish and their messages can
 * cross. A gap (reorder buffer not empty, or a heartbeat announcing a newer
 * sequence) that is still open after RB_EV_GAP_MS costs a new snapshot, as
 * does a stream that falls silent for RB_EV_SILENT_MS and comes back (a
 * broker may have restarted, or our link dropped messages). One snapshot
 * call is in flight at a time. */
#include "rb_events.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "rb_log.h"
#include "rb_metrics.h"
#include "rb_pb.h"
#include "rb_rpc.h"

#define RB_EV_TICK_MS 50
#define RB_EV_GAP_MS 300
#define RB_EV_SILENT_MS 3000
#define RB_EV_SNAPSHOT_TIMEOUT_MS 2000
/* Events held while waiting for a missing one; beyond this, a snapshot is
 * cheaper than waiting. */
#define RB_EV_REORDER_MAX 256
/* Events buffered while a snapshot is on its way (about 2 s of a busy
 * cluster); later ones are dropped and the gap they leave is healed by the
 * next snapshot. */
#define RB_EV_PENDING_MAX 100000
/* One event or heartbeat; snapshots are bounded by RB_PB_MAX_MESSAGE. */
#define RB_EV_MAX_EVENT (64u * 1024)

typedef Rb__Events__EventMessage ev_msg_t;

typedef struct {
    ev_msg_t **v;
    size_t len, cap;
} ev_list_t;

struct rb_events {
    rb_loop_t *loop;
    const rb_events_handlers_t *h;
    void *arg;
    char *name;
    char *pub_endpoints;
    void *sub;
    rb_rpc_client_t *snap;
    rb_timer_t *tick;

    bool have_snapshot;
    uint64_t last;          /* sequence number the state is current to */
    uint64_t hb_target;     /* newest sequence a heartbeat announced */
    uint64_t gap_since;     /* when the current gap opened; 0: none */
    uint64_t behind_since;  /* heartbeats older than last since; 0: not */
    uint64_t last_heard;    /* any valid message from a broker */
    bool silent;
    bool snap_wanted, snap_in_flight;
    uint64_t snapshots;
    ev_list_t pending;      /* while snap_wanted */
    ev_list_t reorder;      /* sorted by seq, all > last + 1 */
};

/* Per thread: a thread may have a registry of its own (rb_metrics). */
static __thread rb_metric_t *g_applied, *g_snapshots, *g_dropped;

static void s_free_msg(ev_msg_t *m) { protobuf_c_message_free_unpacked(&m->base, NULL); }

static uint64_t s_seq(const ev_msg_t *m) { return m->event->seq; }

static void s_list_clear(ev_list_t *l)
{
    for (size_t i = 0; i < l->len; i++) s_free_msg(l->v[i]);
    free(l->v);
    memset(l, 0, sizeof *l);
}

static int s_list_push(ev_list_t *l, ev_msg_t *m)
{
    if (l->len == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        ev_msg_t **v = realloc(l->v, cap * sizeof *v);
        if (!v) return -1;
        l->v = v;
        l->cap = cap;
    }
    l->v[l->len++] = m;
    return 0;
}

static void s_request_snapshot(rb_events_t *ev, const char *why);

static void s_update_gap(rb_events_t *ev)
{
    bool gap = ev->reorder.len > 0 || ev->hb_target > ev->last;
    if (!gap)
        ev->gap_since = 0;
    else if (!ev->gap_since)
        ev->gap_since = rb_now_ms();
}

static void s_apply(rb_events_t *ev, const ev_msg_t *m)
{
    const Rb__Events__SessionEvent *e = m->event;
    if (e->kind == RB__EVENTS__EVENT_KIND__SESSION_UP) {
        if (ev->h->up) ev->h->up(ev->arg, e->seq, e->session);
    } else {
        if (ev->h->down) ev->h->down(ev->arg, e->session, e->reason ? e->reason : "");
    }
    ev->last = e->seq;
    ev->behind_since = 0;
    rb_metric_inc(g_applied);
}

/* Applies, holds or drops one event in the live state; takes m. */
static void s_process_live(rb_events_t *ev, ev_msg_t *m)
{
    uint64_t seq = s_seq(m);
    if (seq <= ev->last) {
        rb_debug("event_duplicate", "seq %llu already applied (at %llu)",
                 (unsigned long long)seq, (unsigned long long)ev->last);
        s_free_msg(m);
        return;
    }
    if (seq == ev->last + 1) {
        s_apply(ev, m);
        s_free_msg(m);
        /* The reorder buffer is sorted: drain what is now in sequence. */
        size_t i = 0;
        for (; i < ev->reorder.len && s_seq(ev->reorder.v[i]) <= ev->last + 1; i++) {
            if (s_seq(ev->reorder.v[i]) == ev->last + 1) s_apply(ev, ev->reorder.v[i]);
            s_free_msg(ev->reorder.v[i]);
        }
        if (i)
            memmove(ev->reorder.v, ev->reorder.v + i,
                    (ev->reorder.len - i) * sizeof(ev_msg_t *));
        ev->reorder.len -= i;
        s_update_gap(ev);
        return;
    }
    size_t pos = 0;
    while (pos < ev->reorder.len && s_seq(ev->reorder.v[pos]) < seq) pos++;
    if (pos < ev->reorder.len && s_seq(ev->reorder.v[pos]) == seq) {
        s_free_msg(m);
        return;
    }
    if (ev->reorder.len >= RB_EV_REORDER_MAX || s_list_push(&ev->reorder, m) < 0) {
        s_free_msg(m);
        rb_metric_inc(g_dropped);
        s_request_snapshot(ev, "reorder buffer full");
        return;
    }
    memmove(ev->reorder.v + pos + 1, ev->reorder.v + pos,
            (ev->reorder.len - 1 - pos) * sizeof(ev_msg_t *));
    ev->reorder.v[pos] = m;
    s_update_gap(ev);
}

static int s_cmp_seq(const void *a, const void *b)
{
    uint64_t x = s_seq(*(ev_msg_t *const *)a), y = s_seq(*(ev_msg_t *const *)b);
    return x < y ? -1 : x > y;
}

static void s_on_snapshot(void *arg, const uint8_t *body, size_t len)
{
    rb_events_t *ev = arg;
    ev->snap_in_flight = false;
    if (!body) {
        rb_warn("snapshot_timeout", "no snapshot answer within %d ms; asking again",
                RB_EV_SNAPSHOT_TIMEOUT_MS);
        return;   /* still wanted: the next tick asks again */
    }
    Rb__Events__SnapshotAnswer *a = (Rb__Events__SnapshotAnswer *)rb_pb_unpack(
        &rb__events__snapshot_answer__descriptor, body, len, RB_PB_MAX_MESSAGE, "snapshot");
    if (!a) return;
    if (a->version != RB_PROTO_VERSION || !a->snapshot) {
        rb_warn("bad_message", "snapshot answer with version %u (want %d)%s", a->version,
                RB_PROTO_VERSION, a->snapshot ? "" : " and no snapshot");
        protobuf_c_message_free_unpacked(&a->base, NULL);
        return;
    }
    if (!ev->snap_wanted) {   /* cannot happen with one call in flight */
        protobuf_c_message_free_unpacked(&a->base, NULL);
        return;
    }
    const Rb__Events__Snapshot *s = a->snapshot;
    ev->last_heard = rb_now_ms();
    if (ev->h->reset) ev->h->reset(ev->arg);
    for (size_t i = 0; i < s->n_sessions; i++)
        if (ev->h->up) ev->h->up(ev->arg, s->seq, s->sessions[i]);
    ev->last = s->seq;
    ev->have_snapshot = true;
    ev->snap_wanted = false;
    ev->behind_since = 0;
    /* Heartbeats from before the answer say nothing about it; the next one
     * (within a second) reopens the gap if the snapshot was behind. Keeping
     * the old target would loop forever if the sequence went backwards. */
    ev->hb_target = 0;
    ev->snapshots++;
    rb_metric_inc(g_snapshots);
    rb_info("snapshot_applied", "%zu sessions at seq %llu, %zu buffered events",
            s->n_sessions, (unsigned long long)s->seq, ev->pending.len);
    protobuf_c_message_free_unpacked(&a->base, NULL);

    ev_list_t buffered = ev->pending;
    memset(&ev->pending, 0, sizeof ev->pending);
    if (buffered.len) qsort(buffered.v, buffered.len, sizeof *buffered.v, s_cmp_seq);
    for (size_t i = 0; i < buffered.len; i++) {
        /* A callback may have asked for a new snapshot (reorder overflow):
         * the rest goes back to the pending buffer. */
        if (ev->snap_wanted) {
            if (s_list_push(&ev->pending, buffered.v[i]) < 0) s_free_msg(buffered.v[i]);
        } else {
            s_process_live(ev, buffered.v[i]);
        }
    }
    free(buffered.v);
    s_update_gap(ev);
}

static void s_send_snapshot_call(rb_events_t *ev)
{
    if (ev->snap_in_flight) return;
    Rb__Events__SnapshotRequest req = RB__EVENTS__SNAPSHOT_REQUEST__INIT;
    req.subscriber = ev->name;
    Rb__Events__SnapshotCall call = RB__EVENTS__SNAPSHOT_CALL__INIT;
    call.version = RB_PROTO_VERSION;
    call.request = &req;
    if (rb_rpc_call(ev->snap, &call.base, RB_EV_SNAPSHOT_TIMEOUT_MS, 0, s_on_snapshot, ev) == 0)
        ev->snap_in_flight = true;
}

static void s_request_snapshot(rb_events_t *ev, const char *why)
{
    if (ev->snap_wanted) return;
    rb_info("snapshot_request", "asking for a snapshot: %s (at seq %llu)", why,
            (unsigned long long)ev->last);
    ev->snap_wanted = true;
    ev->gap_since = 0;
    /* Held events go back to the buffer replayed after the snapshot. */
    for (size_t i = 0; i < ev->reorder.len; i++)
        if (s_list_push(&ev->pending, ev->reorder.v[i]) < 0) s_free_msg(ev->reorder.v[i]);
    ev->reorder.len = 0;
    s_send_snapshot_call(ev);
}

static void s_heard(rb_events_t *ev)
{
    ev->last_heard = rb_now_ms();
    if (ev->silent) {
        ev->silent = false;
        rb_info("events_back", "brokers heard again");
        s_request_snapshot(ev, "brokers were silent");
    }
}

static void s_on_heartbeat(rb_events_t *ev, const Rb__Events__Heartbeat *hb)
{
    if (hb->seq > ev->hb_target) ev->hb_target = hb->seq;
    if (ev->snap_wanted || !ev->have_snapshot) return;
    /* A heartbeat behind us is normal for a moment (another broker's event
     * overtook it); heartbeats that stay behind while nothing is applied
     * mean the sequence went backwards (Redis lost or reset its data), and
     * every new event would look like a duplicate. */
    if (hb->seq < ev->last) {
        uint64_t now = rb_now_ms();
        if (!ev->behind_since)
            ev->behind_since = now;
        else if (now - ev->behind_since >= RB_EV_SILENT_MS)
            s_request_snapshot(ev, "the sequence went backwards");
    } else {
        ev->behind_since = 0;
    }
    s_update_gap(ev);
}

static bool s_event_valid(const ev_msg_t *m)
{
    const Rb__Events__SessionEvent *e = m->event;
    return e && e->seq > 0 && e->session &&
           (e->kind == RB__EVENTS__EVENT_KIND__SESSION_UP ||
            e->kind == RB__EVENTS__EVENT_KIND__SESSION_DOWN);
}

static void s_sub_readable(rb_loop_t *loop, void *sock, void *arg)
{
    rb_events_t *ev = arg;
    for (int n = 0; n < 4096; n++) {
        zmq_msg_t msg;
        zmq_msg_init(&msg);
        if (zmq_msg_recv(&msg, sock, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&msg);
            if (errno == EAGAIN) rb_loop_zsock_drained(sock);
            return;
        }
        if (zmq_msg_more(&msg)) {
            size_t frames = 1;
            while (zmq_msg_more(&msg)) {
                zmq_msg_close(&msg);
                zmq_msg_init(&msg);
                if (zmq_msg_recv(&msg, sock, 0) < 0) break;
                frames++;
            }
            zmq_msg_close(&msg);
            rb_warn("bad_message", "event message of %zu frames dropped (want 1)", frames);
            continue;
        }
        ev_msg_t *m = (ev_msg_t *)rb_pb_unpack(&rb__events__event_message__descriptor,
                                               zmq_msg_data(&msg), zmq_msg_size(&msg),
                                               RB_EV_MAX_EVENT, ev->pub_endpoints);
        zmq_msg_close(&msg);
        if (!m) continue;
        if (m->version != RB_PROTO_VERSION) {
            rb_warn("bad_message", "event message version %u dropped (want %d)", m->version,
                    RB_PROTO_VERSION);
            s_free_msg(m);
            continue;
        }
        if (m->body_case == RB__EVENTS__EVENT_MESSAGE__BODY_HEARTBEAT && m->heartbeat) {
            s_heard(ev);
            s_on_heartbeat(ev, m->heartbeat);
            s_free_msg(m);
            continue;
        }
        if (m->body_case != RB__EVENTS__EVENT_MESSAGE__BODY_EVENT || !s_event_valid(m)) {
            rb_warn("bad_message", "event message without a valid event or heartbeat dropped");
            s_free_msg(m);
            continue;
        }
        s_heard(ev);
        if (ev->snap_wanted) {
            if (ev->pending.len >= RB_EV_PENDING_MAX || s_list_push(&ev->pending, m) < 0) {
                rb_metric_inc(g_dropped);
                s_free_msg(m);
            }
            continue;
        }
        s_process_live(ev, m);
    }
}

static void s_tick(rb_loop_t *loop, void *arg)
{
    rb_events_t *ev = arg;
    uint64_t now = rb_now_ms();
    if (!ev->silent && now - ev->last_heard >= RB_EV_SILENT_MS) {
        ev->silent = true;
        rb_warn("events_silent", "no message from any broker for %d ms", RB_EV_SILENT_MS);
    }
    if (ev->snap_wanted) {
        s_send_snapshot_call(ev);
    } else if (ev->gap_since && now - ev->gap_since >= RB_EV_GAP_MS) {
        char why[96];
        snprintf(why, sizeof why, "gap after seq %llu not filled within %d ms",
                 (unsigned long long)ev->last, RB_EV_GAP_MS);
        s_request_snapshot(ev, why);
    }
}

/* Connects sock to every endpoint of a comma-separated list after the
 * first (which rb_zsock_connect took). 0 or -1. */
static int s_connect_rest(void *sock, const char *list)
{
    const char *comma = strchr(list, ',');
    while (comma) {
        const char *p = comma + 1;
        comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        while (len && *p == ' ') p++, len--;
        while (len && p[len - 1] == ' ') len--;
        if (!len) continue;
        char *ep = strndup(p, len);
        if (!ep) return -1;
        int rc = zmq_connect(sock, ep);
        if (rc < 0) rb_error("zmq_connect", "%s: %s", ep, zmq_strerror(errno));
        free(ep);
        if (rc < 0) return -1;
    }
    return 0;
}

/* The first endpoint of a list, trimmed; NULL when there is none. */
static char *s_first(const char *list)
{
    if (!list) return NULL;
    while (*list == ' ') list++;
    size_t len = strcspn(list, ",");
    while (len && list[len - 1] == ' ') len--;
    return len ? strndup(list, len) : NULL;
}

static void *s_connect_all(int type, const char *list, const rb_events_config_t *cfg)
{
    char *first = s_first(list);
    if (!first) {
        rb_error("events_config", "no endpoint in '%s'", list ? list : "");
        return NULL;
    }
    void *s = rb_zsock_connect(type, first, cfg->curve, cfg->broker_public_key);
    free(first);
    if (s && type == ZMQ_SUB && zmq_setsockopt(s, ZMQ_SUBSCRIBE, "", 0) < 0) {
        rb_error("zmq_sockopt", "ZMQ_SUBSCRIBE: %s", zmq_strerror(errno));
        zmq_close(s);
        return NULL;
    }
    if (s && s_connect_rest(s, list) < 0) {
        zmq_close(s);
        return NULL;
    }
    return s;
}

rb_events_t *rb_events_new(rb_loop_t *loop, const rb_events_config_t *cfg,
                           const rb_events_handlers_t *h, void *arg)
{
    if (!loop || !cfg || !h) return NULL;
    rb_events_t *ev = calloc(1, sizeof *ev);
    if (!ev) return NULL;
    ev->loop = loop;
    ev->h = h;
    ev->arg = arg;
    ev->name = strdup(cfg->name ? cfg->name : "subscriber");
    ev->pub_endpoints = strdup(cfg->pub_endpoints ? cfg->pub_endpoints : "");
    if (!ev->name || !ev->pub_endpoints) goto fail;
    if (!g_applied) {
        g_applied = rb_counter("reachback_events_applied_total", NULL,
                               "Session events applied in sequence");
        g_snapshots = rb_counter("reachback_events_snapshots_total", NULL,
                                 "Session snapshots applied");
        g_dropped = rb_counter("reachback_events_dropped_total", NULL,
                               "Session events dropped for lack of buffer (healed by snapshot)");
    }
    ev->sub = s_connect_all(ZMQ_SUB, cfg->pub_endpoints, cfg);
    if (!ev->sub) goto fail;
    void *dealer = s_connect_all(ZMQ_DEALER, cfg->snapshot_endpoints, cfg);
    if (!dealer) goto fail;
    ev->snap = rb_rpc_client_new(loop, dealer, "snapshot");
    if (!ev->snap) goto fail;
    if (rb_loop_add_zsock(loop, ev->sub, s_sub_readable, ev) < 0) {
        zmq_close(ev->sub);
        ev->sub = NULL;
        goto fail;
    }
    ev->tick = rb_loop_add_timer(loop, RB_EV_TICK_MS, true, s_tick, ev);
    if (!ev->tick) goto fail;
    ev->last_heard = rb_now_ms();
    s_request_snapshot(ev, "start");
    return ev;
fail:
    rb_error("events_start", "cannot subscribe to session events from %s",
             cfg->pub_endpoints ? cfg->pub_endpoints : "(none)");
    rb_events_destroy(&ev);
    return NULL;
}

void rb_events_destroy(rb_events_t **pev)
{
    if (!pev || !*pev) return;
    rb_events_t *ev = *pev;
    *pev = NULL;
    rb_loop_cancel_timer(ev->loop, ev->tick);
    rb_rpc_client_destroy(&ev->snap);
    if (ev->sub) {
        rb_loop_del_zsock(ev->loop, ev->sub);
        zmq_close(ev->sub);
    }
    s_list_clear(&ev->pending);
    s_list_clear(&ev->reorder);
    free(ev->name);
    free(ev->pub_endpoints);
    free(ev);
}

bool rb_events_ready(const rb_events_t *ev)
{
    return ev && ev->have_snapshot && rb_now_ms() - ev->last_heard < RB_EV_SILENT_MS;
}

uint64_t rb_events_seq(const rb_events_t *ev) { return ev ? ev->last : 0; }

uint64_t rb_events_snapshots(const rb_events_t *ev) { return ev ? ev->snapshots : 0; }
