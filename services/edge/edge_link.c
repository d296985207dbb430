/* edge_link: see edge_link.h.
 *
 * A relayed stream (estream_t) is indexed twice: by its tunnel id in its
 * tunnel's table and by its link id in its forwarder's table. It ends when
 * both sides sent FIN, either side sent RST, the open was refused, or its
 * tunnel or forwarder went away; the side that did not cause the end is
 * told with an RST. */
#include "edge_link.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#include "rb_cidr.h"
#include "rb_imap.h"
#include "rb_smap.h"
#include "rb_link.h"
#include "rb_log.h"
#include "rb_metrics.h"

#define MAX_FORWARDERS 16
#define MAX_CIDRS 16
#define MAX_PORTS 64
#define MAX_GROUPS 64
#define HOST_MAX 255
/* A forwarder that has not answered a Hello for this long is down. */
#define FWD_SILENCE_MS 5000
#define FWD_UP_MS 3000
#define HELLO_TICK_MS 100
#define HELLO_EVERY_TICKS 10
/* Datagrams are dropped (UDP may lose them) rather than queued behind this
 * much TLS output. */
#define DATAGRAM_BACKLOG (4u << 20)
/* A tunnel is told about (Relayed) once this much of its DATA is out. */
#define RELAYED_BATCH (RB_SESSION_WINDOW / 8)

typedef struct estream estream_t;

typedef struct {
    edge_link_t *l;
    void *sock;
    char *endpoint;
    char id[RB_LINK_RID_MAX + 1];
    uint64_t instance; /* 0: not attached to (again) yet */
    uint64_t heard_ms;
    rb_cidr_t cidrs[MAX_CIDRS];
    size_t ncidrs;
    rb_imap_t *streams; /* link id -> estream_t */
    uint32_t next_id;   /* odd */
} fwd_t;

struct edge_tunnel {
    edge_link_t *l;
    edge_tunnel_t *prev, *next;
    rb_tconn_t *t;
    char *session_id, *user;
    char ip[16];
    uint32_t ip_n;
    char **groups;
    size_t ngroups;
    Rb__Tunnel__ExposedPort *ports; /* what the device exposes (nports) */
    size_t nports;
    fwd_t *fwd;         /* the forwarder serving the session's address */
    rb_imap_t *streams; /* tunnel id -> estream_t */
    uint32_t next_id;   /* even */
    uint64_t relayed;   /* DATA queued to the device, not yet told (Relayed) */
    uint64_t dgram_up;  /* the device's datagrams on the link, not yet Relayed */
};

struct estream {
    edge_tunnel_t *tun;
    fwd_t *fwd;
    uint32_t tid, lid;
    bool udp, by_device, fin_up, fin_down;
    uint32_t up_left;   /* bytes the device may still send */
    uint32_t down_left; /* bytes the forwarder may still send */
    uint32_t relayed;   /* this stream's share of tun->relayed */
    uint32_t dgram_up;  /* this flow's share of tun->dgram_up */
};

struct edge_link {
    rb_loop_t *loop;
    edge_link_config_t cfg; /* a copy: callers may pass a temporary */
    fwd_t fwd[MAX_FORWARDERS];
    size_t nfwd;
    edge_tunnel_t *tunnels;
    rb_smap_t *by_session; /* session id -> edge_tunnel_t */
    rb_timer_t *hello;
    uint64_t ticks;
    uint64_t instance; /* this start of the edge, in every Hello */
    size_t nstreams;
    rb_metric_t *m_streams, *m_opened_device, *m_opened_server, *m_overruns, *m_dropped;
    rb_metric_t *m_backlog_resets;
    rb_metric_t *m_link_errors;
};

/* ------------------------------------------------------------------ */
/* Sending                                                             */

static int s_fwd_control(fwd_t *f, Rb__Fwd__LinkControl *m)
{
    if (rb_link_send_control(f->sock, NULL, 0, m) == 0) return 0;
    rb_debug("link_send", "forwarder %s: %s", f->endpoint, zmq_strerror(errno));
    return -1;
}

static int s_fwd_frame(fwd_t *f, uint8_t type, uint8_t flags, uint32_t id, const void *d, size_t n)
{
    if (rb_link_send(f->sock, NULL, 0, type, flags, id, d, n) == 0) return 0;
    rb_debug("link_send", "forwarder %s: %s", f->endpoint, zmq_strerror(errno));
    return -1;
}

static void s_tun_result(edge_tunnel_t *tun, uint32_t tid, Rb__Tunnel__StreamError err,
                         const char *msg, const char *bound, unsigned bound_port)
{
    Rb__Tunnel__TunnelControl m = RB__TUNNEL__TUNNEL_CONTROL__INIT;
    Rb__Tunnel__StreamResult r = RB__TUNNEL__STREAM_RESULT__INIT;
    r.stream_id = tid;
    r.error = err;
    r.message = (char *)(msg ? msg : "");
    r.bound_addr = (char *)(bound ? bound : "");
    r.bound_port = bound_port;
    m.msg_case = RB__TUNNEL__TUNNEL_CONTROL__MSG_STREAM_RESULT;
    m.stream_result = &r;
    rb_tconn_send_control(tun->t, &m);
}

static void s_fwd_result(fwd_t *f, uint32_t lid, Rb__Tunnel__StreamError err, const char *msg)
{
    Rb__Fwd__LinkControl m = RB__FWD__LINK_CONTROL__INIT;
    Rb__Fwd__OpenResult r = RB__FWD__OPEN_RESULT__INIT;
    r.link_id = lid;
    r.error = err;
    r.message = (char *)(msg ? msg : "");
    m.msg_case = RB__FWD__LINK_CONTROL__MSG_OPEN_RESULT;
    m.open_result = &r;
    s_fwd_control(f, &m);
}

static void s_send_attach(edge_tunnel_t *tun)
{
    /* Not before the forwarder answered our Hello: it must know this start
     * of the edge before our sessions (s_on_hello_ack attaches them all). */
    if (!tun->fwd || !tun->fwd->instance) return;
    Rb__Fwd__LinkControl m = RB__FWD__LINK_CONTROL__INIT;
    Rb__Fwd__Attach a = RB__FWD__ATTACH__INIT;
    Rb__Tunnel__ExposedPort *pp[MAX_PORTS];
    for (size_t i = 0; i < tun->nports; i++)
        pp[i] = &tun->ports[i];
    a.session_id = tun->session_id;
    a.user = tun->user;
    a.ip = tun->ip;
    a.groups = tun->groups;
    a.n_groups = tun->ngroups;
    a.ports = pp;
    a.n_ports = tun->nports;
    m.msg_case = RB__FWD__LINK_CONTROL__MSG_ATTACH;
    m.attach = &a;
    s_fwd_control(tun->fwd, &m);
}

/* ------------------------------------------------------------------ */
/* Streams                                                             */

static estream_t *s_stream_new(edge_tunnel_t *tun, fwd_t *f, uint32_t tid, uint32_t lid, bool udp,
                               bool by_device)
{
    estream_t *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    if (rb_imap_put(tun->streams, tid, s) < 0) {
        free(s);
        return NULL;
    }
    if (rb_imap_put(f->streams, lid, s) < 0) {
        rb_imap_del(tun->streams, tid);
        free(s);
        return NULL;
    }
    s->tun = tun;
    s->fwd = f;
    s->tid = tid;
    s->lid = lid;
    s->udp = udp;
    s->by_device = by_device;
    s->up_left = s->down_left = RB_STREAM_WINDOW;
    edge_link_t *l = tun->l;
    l->nstreams++;
    rb_metric_set(l->m_streams, (double)l->nstreams);
    rb_metric_inc(by_device ? l->m_opened_device : l->m_opened_server);
    return s;
}

/* rst_device / rst_fwd: tell that side the stream is gone. */
static void s_stream_free(estream_t *s, bool rst_device, bool rst_fwd)
{
    if (rst_device && s->tun)
        rb_tconn_send_frame(s->tun->t, RB_FRAME_DATA, RB_FRAME_RST, s->tid, NULL, 0);
    if (rst_fwd && s->fwd) s_fwd_frame(s->fwd, RB_FRAME_DATA, RB_FRAME_RST, s->lid, NULL, 0);
    if (s->tun) { /* the forwarder gives its side back itself */
        s->tun->relayed -= s->relayed;
        s->tun->dgram_up -= s->dgram_up;
    }
    if (s->tun && rb_imap_get(s->tun->streams, s->tid) == s) rb_imap_del(s->tun->streams, s->tid);
    if (s->fwd && rb_imap_get(s->fwd->streams, s->lid) == s) rb_imap_del(s->fwd->streams, s->lid);
    edge_link_t *l = s->tun ? s->tun->l : s->fwd->l;
    l->nstreams--;
    rb_metric_set(l->m_streams, (double)l->nstreams);
    free(s);
}

static uint32_t s_next_tid(edge_tunnel_t *tun)
{
    do {
        tun->next_id += 2;
        if (tun->next_id == 0) tun->next_id = 2;
    } while (rb_imap_get(tun->streams, tun->next_id));
    return tun->next_id;
}

static uint32_t s_next_lid(fwd_t *f)
{
    do {
        f->next_id += 2;
        if (f->next_id == 1 || f->next_id == 0) f->next_id = 1;
    } while (rb_imap_get(f->streams, f->next_id));
    return f->next_id;
}

static uint32_t s_add_credit(uint32_t have, uint32_t inc)
{
    uint64_t c = (uint64_t)have + inc;
    return c > RB_STREAM_WINDOW ? RB_STREAM_WINDOW : (uint32_t)c;
}

/* ------------------------------------------------------------------ */
/* Routing sessions to forwarders                                      */

static bool s_fwd_up(const fwd_t *f)
{
    return f->instance && rb_now_ms() - f->heard_ms < FWD_UP_MS;
}

/* The forwarder whose blocks hold ip; before any has answered, the first. */
static fwd_t *s_route(edge_link_t *l, uint32_t ip, bool has_ip)
{
    if (l->nfwd == 0) return NULL;
    for (size_t i = 0; i < l->nfwd; i++) {
        fwd_t *f = &l->fwd[i];
        if (!f->instance) continue;
        if (f->ncidrs == 0) return f;
        for (size_t k = 0; k < f->ncidrs; k++)
            if (!has_ip || rb_cidr_contains(&f->cidrs[k], ip)) return f;
    }
    return &l->fwd[0];
}

/* ------------------------------------------------------------------ */
/* From the forwarders                                                 */

static void s_reset_one(void *arg, uint64_t key, void *value)
{
    /* Frees the entry it is given (and one in the tunnel's table). */
    s_stream_free(value, true, true);
}

/* The forwarder lost its streams (restart, silence, or it dropped us): reset
 * them at the devices, and at the forwarder, which may have taken Opens of
 * ours before its new HelloAck reached us (it ignores ids it does not
 * know). */
static void s_fwd_reset_streams(fwd_t *f)
{
    rb_imap_each(f->streams, s_reset_one, NULL);
}

static void s_on_hello_ack(fwd_t *f, const Rb__Fwd__HelloAck *m)
{
    edge_link_t *l = f->l;
    if (m->version != RB_LINK_VERSION) {
        rb_warn("link_version", "forwarder %s speaks link version %u, we speak %u", f->endpoint,
                m->version, RB_LINK_VERSION);
        return;
    }
    f->heard_ms = rb_now_ms();
    if (m->instance == f->instance) return;
    /* Streams opened before the first answer belong to this instance; a
     * changed instance means the forwarder restarted and lost them. */
    bool restarted = f->instance != 0;
    f->ncidrs = 0;
    for (size_t i = 0; i < m->n_cidrs && f->ncidrs < MAX_CIDRS; i++)
        if (m->cidrs[i] && rb_cidr_parse(m->cidrs[i], &f->cidrs[f->ncidrs]) == 0) f->ncidrs++;
    snprintf(f->id, sizeof f->id, "%s", m->forwarder_id ? m->forwarder_id : "");
    if (restarted) s_fwd_reset_streams(f);
    f->instance = m->instance;
    /* Attach (again) every session this forwarder serves. */
    size_t n = 0;
    for (edge_tunnel_t *t = l->tunnels; t; t = t->next) {
        fwd_t *r = s_route(l, t->ip_n, t->ip[0] != 0);
        if (r != f) continue;
        t->fwd = f;
        s_send_attach(t);
        n++;
    }
    rb_info("forwarder_linked", "forwarder %s (%s) answers; %zu sessions attached", f->id,
            f->endpoint, n);
}

static edge_tunnel_t *s_tunnel_find(edge_link_t *l, const char *session_id)
{
    return rb_smap_get(l->by_session, session_id);
}

static void s_fwd_data(fwd_t *f, const rb_frame_t *fr);

static void s_on_open(fwd_t *f, const Rb__Fwd__Open *m)
{
    edge_link_t *l = f->l;
    uint32_t lid = m->link_id;
    if (lid == 0 || (lid & 1) || rb_imap_get(f->streams, lid)) {
        rb_metric_inc(l->m_link_errors);
        rb_warn("bad_open", "forwarder %s: Open with link id %u (odd, zero or in use)", f->endpoint,
                lid);
        return;
    }
    bool udp = m->proto == RB__TUNNEL__PROTO__PROTO_UDP;
    if (m->early_data.len && (udp || m->early_data.len > RB_LINK_EARLY_MAX)) {
        rb_metric_inc(l->m_link_errors);
        rb_warn("bad_open", "forwarder %s: Open %u with %zu bytes of early data (%s)", f->endpoint,
                lid, m->early_data.len, udp ? "UDP" : "over RB_LINK_EARLY_MAX");
        s_fwd_result(f, lid, RB__TUNNEL__STREAM_ERROR__STREAM_FAILED, "bad early data");
        return;
    }
    edge_tunnel_t *tun = s_tunnel_find(l, m->session_id ? m->session_id : "");
    if (!tun) {
        s_fwd_result(f, lid, RB__TUNNEL__STREAM_ERROR__STREAM_UNREACHABLE,
                     "the session is not on this edge");
        return;
    }
    if (rb_imap_count(tun->streams) >= l->cfg.max_streams) {
        s_fwd_result(f, lid, RB__TUNNEL__STREAM_ERROR__STREAM_LIMIT,
                     "too many streams on the session");
        return;
    }
    estream_t *s = s_stream_new(tun, f, s_next_tid(tun), lid, udp, false);
    if (!s) {
        s_fwd_result(f, lid, RB__TUNNEL__STREAM_ERROR__STREAM_FAILED, "edge out of memory");
        return;
    }
    Rb__Tunnel__TunnelControl c = RB__TUNNEL__TUNNEL_CONTROL__INIT;
    Rb__Tunnel__StreamOpen o = RB__TUNNEL__STREAM_OPEN__INIT;
    o.stream_id = s->tid;
    o.proto = udp ? RB__TUNNEL__PROTO__PROTO_UDP : RB__TUNNEL__PROTO__PROTO_TCP;
    o.port = m->port;
    o.peer_addr = m->peer_addr ? m->peer_addr : "";
    o.peer_port = m->peer_port;
    o.peer_user = m->peer_user ? m->peer_user : "";
    c.msg_case = RB__TUNNEL__TUNNEL_CONTROL__MSG_STREAM_OPEN;
    c.stream_open = &o;
    if (rb_tconn_send_control(tun->t, &c) < 0) {
        s_fwd_result(f, lid, RB__TUNNEL__STREAM_ERROR__STREAM_UNREACHABLE,
                     "the device's tunnel is closing");
        s_stream_free(s, false, false);
        return;
    }
    if (m->early_data.len) {   /* as the DATA frame it stands for */
        rb_frame_t fr = {.type = RB_FRAME_DATA,
                         .stream_id = lid,
                         .len = (uint32_t)m->early_data.len,
                         .payload = m->early_data.data};
        s_fwd_data(f, &fr);
    }
}

static void s_on_open_result(fwd_t *f, const Rb__Fwd__OpenResult *m)
{
    estream_t *s = rb_imap_get(f->streams, m->link_id);
    if (!s || !s->by_device) return;
    s_tun_result(s->tun, s->tid, m->error, m->message, m->bound_addr, m->bound_port);
    if (m->error != RB__TUNNEL__STREAM_ERROR__STREAM_OK) s_stream_free(s, false, false);
}

/* The forwarder took these flows' datagrams off the link. */
static void s_on_relayed(fwd_t *f, const Rb__Fwd__Relayed *m)
{
    if (m->n_link_ids != m->n_bytes) {
        rb_metric_inc(f->l->m_link_errors);
        rb_warn("bad_link_message", "forwarder %s: Relayed with %zu ids and %zu counts",
                f->endpoint, m->n_link_ids, m->n_bytes);
        return;
    }
    for (size_t i = 0; i < m->n_link_ids; i++) {
        estream_t *s = rb_imap_get(f->streams, m->link_ids[i]);
        if (!s || !s->tun) continue; /* ended meanwhile: given back then */
        uint32_t n = m->bytes[i];
        if (n > s->dgram_up) {
            rb_metric_inc(f->l->m_link_errors);
            rb_warn("bad_link_message", "forwarder %s: stream %u took %u datagram bytes of %u sent",
                    f->endpoint, s->lid, n, s->dgram_up);
            n = s->dgram_up;
        }
        s->dgram_up -= n;
        s->tun->dgram_up -= n;
    }
}

static void s_fwd_data(fwd_t *f, const rb_frame_t *fr)
{
    edge_link_t *l = f->l;
    estream_t *s = rb_imap_get(f->streams, fr->stream_id);
    if (!s) return; /* ended here; the forwarder heard or hears why */
    switch (fr->type) {
    case RB_FRAME_DATA:
        if (fr->len > s->down_left || (s->udp && !(fr->flags & RB_FRAME_RST))) {
            rb_metric_inc(l->m_overruns);
            rb_warn("window_overrun", "forwarder %s: link stream %u broke its window; reset",
                    f->endpoint, fr->stream_id);
            s_stream_free(s, true, true);
            return;
        }
        if (fr->len && rb_tconn_output_pending(s->tun->t) > EDGE_TUNNEL_BACKLOG_MAX) {
            rb_metric_inc(l->m_backlog_resets);
            rb_info("tunnel_backlog", "session %s: %zu bytes wait for a device that does not "
                    "read; stream %u reset", s->tun->session_id,
                    rb_tconn_output_pending(s->tun->t), s->tid);
            s_stream_free(s, true, true);
            return;
        }
        s->down_left -= fr->len;
        rb_tconn_send_frame(s->tun->t, RB_FRAME_DATA, fr->flags, s->tid, fr->payload, fr->len);
        s->relayed += fr->len;
        s->tun->relayed += fr->len;
        if (fr->flags & RB_FRAME_RST) {
            s_stream_free(s, false, false);
            return;
        }
        if (fr->flags & RB_FRAME_FIN) s->fin_down = true;
        if (s->fin_down && s->fin_up) s_stream_free(s, false, false);
        return;
    case RB_FRAME_WINDOW:
        s->up_left = s_add_credit(s->up_left, rb_frame_window(fr));
        rb_tconn_send_frame(s->tun->t, RB_FRAME_WINDOW, 0, s->tid, fr->payload, fr->len);
        return;
    case RB_FRAME_DATAGRAM:
        /* Taken off the link either way: the session's credit comes back. */
        s->relayed += fr->len;
        s->tun->relayed += fr->len;
        if (!s->udp || rb_tconn_output_pending(s->tun->t) > DATAGRAM_BACKLOG) {
            rb_metric_inc(l->m_dropped);
            return;
        }
        rb_tconn_send_frame(s->tun->t, RB_FRAME_DATAGRAM, 0, s->tid, fr->payload, fr->len);
        return;
    }
}

static void s_on_fwd(rb_loop_t *loop, void *sock, void *arg)
{
    fwd_t *f = arg;
    edge_link_t *l = f->l;
    for (int i = 0; i < 256; i++) {
        rb_link_msg_t m;
        rb_frame_t fr;
        const char *why = NULL;
        int rc = rb_link_recv(sock, false, &m, &fr, &why);
        if (rc == 0) return;
        if (rc < 0) {
            rb_metric_inc(l->m_link_errors);
            rb_warn("bad_link_message", "forwarder %s: %s; dropped", f->endpoint, why);
            rb_link_msg_close(&m);
            continue;
        }
        f->heard_ms = rb_now_ms();
        if (fr.type != RB_FRAME_CONTROL) {
            s_fwd_data(f, &fr);
            rb_link_msg_close(&m);
            continue;
        }
        Rb__Fwd__LinkControl *c = rb_link_control(&fr);
        if (!c) {
            rb_metric_inc(l->m_link_errors);
            rb_warn("bad_link_message", "forwarder %s: undecodable control message; dropped",
                    f->endpoint);
            rb_link_msg_close(&m);
            continue;
        }
        switch (c->msg_case) {
        case RB__FWD__LINK_CONTROL__MSG_HELLO_ACK:
            s_on_hello_ack(f, c->hello_ack);
            break;
        case RB__FWD__LINK_CONTROL__MSG_OPEN:
            s_on_open(f, c->open);
            break;
        case RB__FWD__LINK_CONTROL__MSG_OPEN_RESULT:
            s_on_open_result(f, c->open_result);
            break;
        case RB__FWD__LINK_CONTROL__MSG_RELAYED:
            s_on_relayed(f, c->relayed);
            break;
        default:
            rb_metric_inc(l->m_link_errors);
            rb_warn("bad_link_message", "forwarder %s: message %d is not for an edge; dropped",
                    f->endpoint, (int)c->msg_case);
        }
        rb__fwd__link_control__free_unpacked(c, NULL);
        rb_link_msg_close(&m);
    }
}

static void s_on_hello_timer(rb_loop_t *loop, void *arg)
{
    edge_link_t *l = arg;
    uint64_t now = rb_now_ms();
    l->ticks++;
    for (size_t i = 0; i < l->nfwd; i++) {
        fwd_t *f = &l->fwd[i];
        /* Every tick until a forwarder answers (a Hello sent before the
         * link is up is dropped: ZMQ_IMMEDIATE), then once a second. */
        if (f->instance && l->ticks % HELLO_EVERY_TICKS != 0 && now - f->heard_ms <= FWD_SILENCE_MS)
            continue;
        if (f->instance && now - f->heard_ms > FWD_SILENCE_MS) {
            rb_warn("forwarder_silent", "forwarder %s: no answer for %d s; its streams are reset",
                    f->endpoint, FWD_SILENCE_MS / 1000);
            s_fwd_reset_streams(f);
            f->instance = 0; /* it will have dropped us: attach again */
        }
        Rb__Fwd__LinkControl m = RB__FWD__LINK_CONTROL__INIT;
        Rb__Fwd__Hello h = RB__FWD__HELLO__INIT;
        h.version = RB_LINK_VERSION;
        h.edge_id = (char *)l->cfg.edge_id;
        h.instance = l->instance;
        m.msg_case = RB__FWD__LINK_CONTROL__MSG_HELLO;
        m.hello = &h;
        s_fwd_control(f, &m);
    }
}

/* ------------------------------------------------------------------ */
/* From the devices                                                    */

edge_tunnel_t *edge_link_attach(edge_link_t *l, rb_tconn_t *t, const char *session_id,
                                const char *user, const char *ip, const char *groups)
{
    edge_tunnel_t *tun = calloc(1, sizeof *tun);
    if (!tun) return NULL;
    tun->l = l;
    tun->t = t;
    tun->session_id = strdup(session_id);
    tun->user = strdup(user ? user : "");
    tun->streams = rb_imap_new();
    /* Sized to the user's groups: an idle session should cost little. */
    size_t ngroups = 1;
    for (const char *g = groups; g && *g; g++)
        ngroups += *g == ',';
    if (ngroups > MAX_GROUPS) ngroups = MAX_GROUPS;
    tun->groups = calloc(ngroups + 1, sizeof *tun->groups);
    if (!tun->session_id || !tun->user || !tun->streams || !tun->groups) goto fail;
    if (ip && *ip && rb_ip_parse(ip, &tun->ip_n) == 0) snprintf(tun->ip, sizeof tun->ip, "%s", ip);
    if (groups) {
        char buf[4096], *save = NULL;
        snprintf(buf, sizeof buf, "%s", groups);
        for (char *g = strtok_r(buf, ",", &save); g && tun->ngroups < ngroups;
             g = strtok_r(NULL, ",", &save))
            if ((tun->groups[tun->ngroups] = strdup(g))) tun->ngroups++;
    }
    if (rb_smap_put(l->by_session, tun->session_id, tun, NULL) < 0) goto fail;
    tun->next = l->tunnels;
    if (l->tunnels) l->tunnels->prev = tun;
    l->tunnels = tun;
    tun->fwd = s_route(l, tun->ip_n, tun->ip[0] != 0);
    /* Outbound streams work before the device exposes anything. */
    s_send_attach(tun);
    return tun;
fail:
    rb_imap_destroy(&tun->streams);
    if (tun->groups)
        for (size_t i = 0; i < tun->ngroups; i++)
            free(tun->groups[i]);
    free(tun->groups);
    free(tun->session_id);
    free(tun->user);
    free(tun);
    return NULL;
}

static void s_drop_stream(void *arg, uint64_t key, void *value)
{
    estream_t *s = value;
    /* The device's side is gone with its tunnel, whose table is destroyed
     * whole after this walk. */
    s->tun = NULL;
    s_stream_free(s, false, true);
}

void edge_link_detach(edge_tunnel_t **ptun, const char *reason)
{
    if (!ptun || !*ptun) return;
    edge_tunnel_t *tun = *ptun;
    *ptun = NULL;
    edge_link_t *l = tun->l;
    rb_imap_each(tun->streams, s_drop_stream, NULL);
    rb_imap_destroy(&tun->streams);
    /* A tunnel replaced by a newer one of its session (a device resuming
     * while the old connection still closes) must not detach the session
     * from the forwarder the newer tunnel uses. */
    edge_tunnel_t *cur = rb_smap_get(l->by_session, tun->session_id);
    if (tun->fwd && (cur == tun || !cur || cur->fwd != tun->fwd)) {
        Rb__Fwd__LinkControl m = RB__FWD__LINK_CONTROL__INIT;
        Rb__Fwd__Detach d = RB__FWD__DETACH__INIT;
        d.session_id = tun->session_id;
        d.reason = (char *)(reason ? reason : "");
        m.msg_case = RB__FWD__LINK_CONTROL__MSG_DETACH;
        m.detach = &d;
        s_fwd_control(tun->fwd, &m);
    }
    rb_smap_del(l->by_session, tun->session_id, tun);
    if (tun->prev)
        tun->prev->next = tun->next;
    else
        l->tunnels = tun->next;
    if (tun->next) tun->next->prev = tun->prev;
    for (size_t i = 0; i < tun->ngroups; i++)
        free(tun->groups[i]);
    free(tun->groups);
    free(tun->ports);
    free(tun->session_id);
    free(tun->user);
    free(tun);
}

int edge_link_expose(edge_tunnel_t *tun, const Rb__Tunnel__Expose *m, const char **why)
{
    if (m->n_ports > MAX_PORTS) {
        *why = "more than 64 exposed ports";
        return -1;
    }
    for (size_t i = 0; i < m->n_ports; i++) {
        const Rb__Tunnel__ExposedPort *p = m->ports[i];
        if (p->port < 1 || p->port > 65535 ||
            (p->proto != RB__TUNNEL__PROTO__PROTO_TCP &&
             p->proto != RB__TUNNEL__PROTO__PROTO_UDP)) {
            *why = "bad exposed port";
            return -1;
        }
    }
    Rb__Tunnel__ExposedPort *ports = NULL;
    if (m->n_ports && !(ports = calloc(m->n_ports, sizeof *ports))) {
        *why = "edge out of memory";
        return -1;
    }
    free(tun->ports);
    tun->ports = ports;
    tun->nports = m->n_ports;
    for (size_t i = 0; i < m->n_ports; i++) {
        rb__tunnel__exposed_port__init(&tun->ports[i]);
        tun->ports[i].proto = m->ports[i]->proto;
        tun->ports[i].port = m->ports[i]->port;
    }
    s_send_attach(tun);
    return 0;
}

int edge_link_stream_open(edge_tunnel_t *tun, const Rb__Tunnel__StreamOpen *m, const char **why)
{
    uint32_t tid = m->stream_id;
    if (tid == 0 || !(tid & 1)) {
        *why = "a device's stream id must be odd";
        return -1;
    }
    if (rb_imap_get(tun->streams, tid)) {
        *why = "stream id in use";
        return -1;
    }
    const char *host = m->host ? m->host : "";
    if (!*host || !rb_str_printable(host, HOST_MAX) || m->port < 1 || m->port > 65535) {
        s_tun_result(tun, tid, RB__TUNNEL__STREAM_ERROR__STREAM_FAILED, "bad host or port", NULL,
                     0);
        return 0;
    }
    if (m->proto != RB__TUNNEL__PROTO__PROTO_TCP && m->proto != RB__TUNNEL__PROTO__PROTO_UDP) {
        s_tun_result(tun, tid, RB__TUNNEL__STREAM_ERROR__STREAM_FAILED, "unknown protocol", NULL,
                     0);
        return 0;
    }
    bool udp = m->proto == RB__TUNNEL__PROTO__PROTO_UDP;
    edge_link_t *l = tun->l;
    if (rb_imap_count(tun->streams) >= l->cfg.max_streams) {
        s_tun_result(tun, tid, RB__TUNNEL__STREAM_ERROR__STREAM_LIMIT,
                     "too many streams on the session", NULL, 0);
        return 0;
    }
    fwd_t *f = tun->fwd;
    if (!f || !s_fwd_up(f)) {
        s_tun_result(tun, tid, RB__TUNNEL__STREAM_ERROR__STREAM_UNREACHABLE,
                     "no forwarder is reachable", NULL, 0);
        return 0;
    }
    estream_t *s = s_stream_new(tun, f, tid, s_next_lid(f), udp, true);
    if (!s) {
        s_tun_result(tun, tid, RB__TUNNEL__STREAM_ERROR__STREAM_FAILED, "edge out of memory", NULL,
                     0);
        return 0;
    }
    Rb__Fwd__LinkControl c = RB__FWD__LINK_CONTROL__INIT;
    Rb__Fwd__Open o = RB__FWD__OPEN__INIT;
    o.link_id = s->lid;
    o.session_id = tun->session_id;
    o.proto = m->proto;
    o.host = (char *)host;
    o.port = m->port;
    c.msg_case = RB__FWD__LINK_CONTROL__MSG_OPEN;
    c.open = &o;
    if (s_fwd_control(f, &c) < 0) {
        s_tun_result(tun, tid, RB__TUNNEL__STREAM_ERROR__STREAM_UNREACHABLE,
                     "the forwarder cannot be reached", NULL, 0);
        s_stream_free(s, false, false);
    }
    return 0;
}

int edge_link_stream_result(edge_tunnel_t *tun, const Rb__Tunnel__StreamResult *m, const char **why)
{
    estream_t *s = rb_imap_get(tun->streams, m->stream_id);
    if (!s) return 0; /* reset by the forwarder meanwhile */
    if (s->by_device) {
        *why = "StreamResult for a stream the device opened";
        return -1;
    }
    s_fwd_result(s->fwd, s->lid, m->error, m->message);
    if (m->error != RB__TUNNEL__STREAM_ERROR__STREAM_OK) s_stream_free(s, false, false);
    return 0;
}

int edge_link_frame(edge_tunnel_t *tun, const rb_frame_t *f, const char **why)
{
    estream_t *s = rb_imap_get(tun->streams, f->stream_id);
    /* A stream that ended here may still have frames in flight from the
     * device: they are dropped, not an error. */
    if (!s) return 0;
    switch (f->type) {
    case RB_FRAME_DATA:
        if (s->udp && !(f->flags & RB_FRAME_RST)) {
            *why = "DATA on a UDP flow";
            return -1;
        }
        if (f->len > s->up_left) {
            rb_metric_inc(tun->l->m_overruns);
            *why = "stream window overrun";
            return -1;
        }
        /* It says nothing, and would cost the link a message each. */
        if (f->len == 0 && f->flags == 0) {
            *why = "empty DATA frame";
            return -1;
        }
        /* After its FIN a stream may only be reset (a FIN again would be
         * the same flood). */
        if (s->fin_up && !(f->flags & RB_FRAME_RST)) {
            *why = "DATA after FIN";
            return -1;
        }
        s->up_left -= f->len;
        if (s_fwd_frame(s->fwd, RB_FRAME_DATA, f->flags, s->lid, f->payload, f->len) < 0) {
            /* Lost bytes would corrupt the stream: end it instead. */
            s_stream_free(s, true, false);
            return 0;
        }
        if (f->flags & RB_FRAME_RST) {
            s_stream_free(s, false, false);
            return 0;
        }
        if (f->flags & RB_FRAME_FIN) s->fin_up = true;
        if (s->fin_up && s->fin_down) s_stream_free(s, false, false);
        return 0;
    case RB_FRAME_WINDOW:
        /* A device gives back only what it was sent: more would be a
         * message to the forwarder per frame for nothing. */
        if ((uint64_t)s->down_left + rb_frame_window(f) > RB_STREAM_WINDOW) {
            *why = "WINDOW grants more than the stream's window";
            return -1;
        }
        s->down_left += rb_frame_window(f);
        if (s_fwd_frame(s->fwd, RB_FRAME_WINDOW, 0, s->lid, f->payload, f->len) < 0)
            s_stream_free(s, true, false); /* lost credit would stall it for good */
        return 0;
    case RB_FRAME_DATAGRAM:
        if (!s->udp) {
            *why = "DATAGRAM on a TCP stream";
            return -1;
        }
        if (tun->dgram_up + f->len > RB_LINK_DATAGRAM_WINDOW ||
            s_fwd_frame(s->fwd, RB_FRAME_DATAGRAM, 0, s->lid, f->payload, f->len) < 0) {
            rb_metric_inc(tun->l->m_dropped);
            return 0;
        }
        s->dgram_up += f->len;
        tun->dgram_up += f->len;
        return 0;
    }
    *why = "unexpected frame";
    return -1;
}

static void s_send_relayed(fwd_t *f, uint32_t *ids, uint32_t *bytes, size_t n)
{
    Rb__Fwd__LinkControl c;
    Rb__Fwd__Relayed m;
    rb_link_relayed(&c, &m, ids, bytes, n);
    s_fwd_control(f, &c);
}

/* Relayed: the streams' bytes the device's connection has taken, in as
 * few messages to the session's forwarder as their size allows. */
typedef struct {
    fwd_t *f;
    uint32_t ids[RB_LINK_RELAYED_MAX], bytes[RB_LINK_RELAYED_MAX];
    size_t n;
} relayed_t;

static void s_collect_relayed(void *arg, uint64_t key, void *value)
{
    relayed_t *r = arg;
    estream_t *s = value;
    if (!s->relayed) return;
    if (s->fwd == r->f) {
        r->ids[r->n] = s->lid;
        r->bytes[r->n++] = s->relayed;
        if (r->n == RB_LINK_RELAYED_MAX) {
            s_send_relayed(r->f, r->ids, r->bytes, r->n);
            r->n = 0;
        }
    } else if (s->fwd) {
        s_send_relayed(s->fwd, &s->lid, &s->relayed, 1); /* opened by another forwarder */
    }
    s->tun->relayed -= s->relayed;
    s->relayed = 0;
}

void edge_link_drained(edge_tunnel_t *tun)
{
    if (!tun || tun->relayed < RELAYED_BATCH) return;
    relayed_t r = {.f = tun->fwd};
    rb_imap_each(tun->streams, s_collect_relayed, &r);
    if (r.n && r.f) s_send_relayed(r.f, r.ids, r.bytes, r.n);
}

/* ------------------------------------------------------------------ */
/* The link                                                            */

edge_link_t *edge_link_new(rb_loop_t *loop, const edge_link_config_t *cfg)
{
    edge_link_t *l = calloc(1, sizeof *l);
    if (!l) return NULL;
    l->loop = loop;
    l->cfg = *cfg;
    l->instance = rb_wall_ms() << 16 ^ (uint64_t)getpid();
    l->by_session = rb_smap_new();
    if (!l->by_session) goto fail;
    l->m_streams = rb_gauge("reachback_edge_streams", NULL, "Streams and flows relayed now");
    const char *h = "Streams and flows opened, by who opened them";
    l->m_opened_device = rb_counter("reachback_edge_streams_total", "opened_by=\"device\"", h);
    l->m_opened_server = rb_counter("reachback_edge_streams_total", "opened_by=\"forwarder\"", h);
    l->m_overruns = rb_counter("reachback_edge_window_overruns_total", NULL,
                               "Streams whose sender broke its credit window");
    l->m_dropped =
        rb_counter("reachback_edge_datagrams_dropped_total", NULL,
                   "Datagrams dropped (tunnel backlog; forwarder behind or unreachable)");
    l->m_link_errors = rb_counter("reachback_edge_link_errors_total", NULL,
                                  "Malformed or out-of-place messages from forwarders");
    l->m_backlog_resets = rb_counter("reachback_edge_backlog_resets_total", NULL,
                                     "Streams reset because their device let too much wait");
    if (cfg->endpoints && *cfg->endpoints) {
        char *copy = strdup(cfg->endpoints), *save = NULL;
        if (!copy) goto fail;
        for (char *ep = strtok_r(copy, ", ", &save); ep; ep = strtok_r(NULL, ", ", &save)) {
            if (l->nfwd == MAX_FORWARDERS) {
                rb_error("forwarder_endpoints", "more than %d forwarders", MAX_FORWARDERS);
                free(copy);
                goto fail;
            }
            fwd_t *f = &l->fwd[l->nfwd];
            f->l = l;
            f->next_id = 1;
            f->endpoint = strdup(ep);
            f->streams = rb_imap_new();
            l->nfwd++;
            if (!f->endpoint || !f->streams) {
                free(copy);
                goto fail;
            }
            bool local = rb_zmq_endpoint_local(ep);
            f->sock = rb_zsock_connect_as(ZMQ_DEALER, ep, local ? NULL : cfg->curve,
                                          cfg->forwarder_public, cfg->edge_id, rb_link_setup);
            if (!f->sock) {
                free(copy);
                goto fail;
            }
            if (rb_loop_add_zsock(loop, f->sock, s_on_fwd, f) < 0) {
                free(copy);
                goto fail;
            }
        }
        free(copy);
    }
    l->hello = rb_loop_add_timer(loop, HELLO_TICK_MS, true, s_on_hello_timer, l);
    if (!l->hello) goto fail;
    s_on_hello_timer(loop, l);
    return l;
fail:
    edge_link_destroy(&l);
    return NULL;
}

void edge_link_destroy(edge_link_t **pl)
{
    if (!pl || !*pl) return;
    edge_link_t *l = *pl;
    *pl = NULL;
    while (l->tunnels) {
        edge_tunnel_t *t = l->tunnels;
        edge_link_detach(&t, "the edge is stopping");
    }
    rb_loop_cancel_timer(l->loop, l->hello);
    for (size_t i = 0; i < l->nfwd; i++) {
        fwd_t *f = &l->fwd[i];
        if (f->streams) s_fwd_reset_streams(f);
        if (f->sock) {
            rb_loop_del_zsock(l->loop, f->sock);
            rb_zsock_close(&f->sock);
        }
        rb_imap_destroy(&f->streams);
        free(f->endpoint);
    }
    rb_smap_destroy(&l->by_session);
    free(l);
}

size_t edge_link_forwarders(const edge_link_t *l)
{
    return l ? l->nfwd : 0;
}

size_t edge_link_forwarders_up(const edge_link_t *l)
{
    size_t n = 0;
    for (size_t i = 0; l && i < l->nfwd; i++)
        n += s_fwd_up(&l->fwd[i]);
    return n;
}

void edge_link_status_json(const edge_link_t *l, rb_buf_t *json)
{
    rb_buf_printf(json, "\"forwarders\":%zu,\"forwarders_up\":%zu,\"streams\":%zu", l->nfwd,
                  edge_link_forwarders_up(l), l->nstreams);
}
