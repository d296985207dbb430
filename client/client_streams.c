/* client_streams: see client_streams.h. */
#include "client_streams.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "client_socks.h"
#include "rb_buf.h"
#include "rb_cidr.h"
#include "rb_imap.h"
#include "rb_log.h"
#include "rb_pump.h"

#define MAX_EXPOSED 64
#define MAX_LISTENERS 32
#define HOST_MAX 255
/* Bytes a local client may send before its stream is open (a SOCKS
 * request included): one DATA frame, within the stream's initial credit. */
#define EARLY_MAX RB_FRAME_MAX_DATA
/* Datagrams of a new --forward udp: flow kept until the gateway has
 * answered its StreamOpen (then sent; beyond this, dropped as UDP may). */
#define FLOW_QUEUE_MAX 16
#define FLOW_QUEUE_BYTES (4 * EARLY_MAX)
#define UDP_BURST 64
/* UDP may lose datagrams, and does here rather than queue them behind this
 * much tunnel output (an uplink slower than a local sender, or an edge
 * that stopped reading): nothing else bounds what local senders push in. */
#define DATAGRAM_BACKLOG (1u << 20)
/* A run of drops is logged at most this often. */
#define DROP_LOG_MS 10000
/* Each stream sends only while its credit lasts (a window); together the
 * streams also stop reading their sockets while this much waits for the
 * uplink, until half of it has gone: on a slow uplink many streams cost
 * the device this, not a window each. */
#define UP_BACKLOG ((size_t)4 << 20)
/* How often a hold looks at the output. The tunnel draining empty ends it
 * at once; this ends it when datagrams keep a little queued. */
#define HOLD_CHECK_MS 5

typedef struct {
    int proto; /* RB__TUNNEL__PROTO__PROTO_TCP / _UDP */
    uint16_t port;
    struct sockaddr_in target;
} exposed_t;

typedef enum { L_FORWARD, L_SOCKS } lkind_t;

typedef struct {
    client_streams_t *cs;
    lkind_t kind;
    bool udp; /* L_FORWARD: a UDP socket, one flow per local source */
    int fd;
    int port;
    char host[HOST_MAX + 1]; /* L_FORWARD: the target */
    uint16_t target_port;
    rb_imap_t *flows; /* udp: (local address << 16 | port) -> cstream_t */
} listener_t;

typedef enum {
    S_SOCKS,   /* reading the SOCKS greeting and request */
    S_OPENING, /* StreamOpen sent, waiting for StreamResult */
    S_OPEN,    /* bytes flow (TCP: pump) */
} sstate_t;

typedef struct cstream {
    client_streams_t *cs;
    uint32_t id;
    bool udp;
    bool socks;
    sstate_t st;
    int fd; /* before the pump exists, and for UDP flows */
    rb_pump_t *pump;
    socks_t sk;
    rb_buf_t early;   /* SOCKS: request bytes, then early data */
    size_t early_sent; /* forward: bytes sent before the open was answered */
    bool early_fin;   /* the local side half-closed before the open */
    bool graceful;    /* a SOCKS reply went out: close, do not reset */
    bool ok_held;     /* exposed: connected, StreamResult{OK} not sent yet */
    listener_t *fl;   /* a --forward udp: flow: its listener ... */
    struct sockaddr_in src; /* ... and the local sender it answers */
    size_t queued;          /* datagrams in early (each behind its 4-byte length) */
} cstream_t;

struct client_streams {
    rb_loop_t *loop;
    rb_tconn_t *t;
    exposed_t exposed[MAX_EXPOSED];
    size_t nexposed;
    listener_t listeners[MAX_LISTENERS];
    size_t nlisteners;
    rb_imap_t *streams;
    uint32_t next_id; /* odd */
    rb_timer_t *ok_timer; /* sends the OKs still held */
    bool up_held;         /* UP_BACKLOG reached: every pump holds its input */
    rb_timer_t *hold_timer;
    uint64_t dgrams_dropped;
    uint64_t dgrams_dropped_logged, drop_log_ms;
};

/* ------------------------------------------------------------------ */
/* Sending to the edge                                                 */

static void s_send_datagram(client_streams_t *cs, uint32_t id, const void *buf, size_t len)
{
    if (!cs->t) return;
    if (rb_tconn_output_pending(cs->t) <= DATAGRAM_BACKLOG) {
        rb_tconn_send_frame(cs->t, RB_FRAME_DATAGRAM, 0, id, buf, len);
        return;
    }
    cs->dgrams_dropped++;
    uint64_t now = rb_now_ms();
    if (cs->drop_log_ms && now - cs->drop_log_ms < DROP_LOG_MS) return;
    rb_info("datagrams_dropped",
            "%llu datagrams dropped (%llu in all): over %u bytes wait for the tunnel",
            (unsigned long long)(cs->dgrams_dropped - cs->dgrams_dropped_logged),
            (unsigned long long)cs->dgrams_dropped, DATAGRAM_BACKLOG);
    cs->dgrams_dropped_logged = cs->dgrams_dropped;
    cs->drop_log_ms = now;
}

static void s_result(client_streams_t *cs, uint32_t id, Rb__Tunnel__StreamError err,
                     const char *msg)
{
    Rb__Tunnel__TunnelControl m = RB__TUNNEL__TUNNEL_CONTROL__INIT;
    Rb__Tunnel__StreamResult r = RB__TUNNEL__STREAM_RESULT__INIT;
    r.stream_id = id;
    r.error = err;
    r.message = (char *)(msg ? msg : "");
    m.msg_case = RB__TUNNEL__TUNNEL_CONTROL__MSG_STREAM_RESULT;
    m.stream_result = &r;
    if (cs->t) rb_tconn_send_control(cs->t, &m);
}

static void s_reset_fd(int fd)
{
    struct linger lg = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd);
}

/* ------------------------------------------------------------------ */
/* Streams                                                             */

static uint64_t s_flow_key(const struct sockaddr_in *src)
{
    return (uint64_t)ntohl(src->sin_addr.s_addr) << 16 | ntohs(src->sin_port);
}

static void s_stream_free(cstream_t *s)
{
    client_streams_t *cs = s->cs;
    if (rb_imap_get(cs->streams, s->id) == s) rb_imap_del(cs->streams, s->id);
    if (s->fl && rb_imap_get(s->fl->flows, s_flow_key(&s->src)) == s)
        rb_imap_del(s->fl->flows, s_flow_key(&s->src));
    rb_pump_destroy(&s->pump); /* resets a stream that is not over */
    if (s->fd >= 0) {
        rb_loop_del_fd(cs->loop, s->fd);
        if (s->udp || s->graceful)
            close(s->fd);
        else
            s_reset_fd(s->fd);
    }
    rb_buf_free(&s->early);
    free(s);
}

/* Ends a stream the edge knows of (opened or being opened) from our side:
 * the edge and the far end are told with an RST. */
static void s_stream_abort(cstream_t *s)
{
    if (s->st != S_SOCKS && s->cs->t)
        rb_tconn_send_frame(s->cs->t, RB_FRAME_DATA, RB_FRAME_RST, s->id, NULL, 0);
    s_stream_free(s);
}

static cstream_t *s_stream_new(client_streams_t *cs, uint32_t id, bool udp)
{
    cstream_t *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    if (rb_imap_put(cs->streams, id, s) < 0) {
        free(s);
        return NULL;
    }
    s->cs = cs;
    s->id = id;
    s->udp = udp;
    s->fd = -1;
    return s;
}

/* A server-initiated stream's OK rides in front of its first frame (the
 * local service's answer, usually), so the edge and the forwarder wake
 * once for both instead of once each while that answer is on its way;
 * the forwarder needs the OK only for its audit verdict, so a stream that
 * stays quiet gets it from the timer. */
static void s_send_held_ok(cstream_t *s)
{
    if (!s->ok_held) return;
    s->ok_held = false;
    s_result(s->cs, s->id, RB__TUNNEL__STREAM_ERROR__STREAM_OK, "");
}

static void s_flush_held_ok(void *arg, uint64_t key, void *value)
{
    (void)arg;
    (void)key;
    s_send_held_ok(value);
}

static void s_on_ok_timer(rb_loop_t *loop, void *arg)
{
    (void)loop;
    client_streams_t *cs = arg;
    cs->ok_timer = NULL; /* one-shot: the loop frees it */
    rb_imap_each(cs->streams, s_flush_held_ok, NULL);
}

static void s_hold_one(void *arg, uint64_t key, void *value)
{
    (void)key;
    cstream_t *s = value;
    if (s->pump) rb_pump_hold_input(s->pump, *(const bool *)arg);
}

static void s_hold_input(client_streams_t *cs, bool hold);

static void s_on_hold_check(rb_loop_t *loop, void *arg)
{
    (void)loop;
    client_streams_t *cs = arg;
    if (!cs->t || rb_tconn_output_pending(cs->t) <= UP_BACKLOG / 2) s_hold_input(cs, false);
}

static void s_hold_input(client_streams_t *cs, bool hold)
{
    if (cs->up_held == hold) return;
    cs->up_held = hold;
    rb_loop_cancel_timer(cs->loop, cs->hold_timer);
    cs->hold_timer =
        hold ? rb_loop_add_timer(cs->loop, HOLD_CHECK_MS, true, s_on_hold_check, cs) : NULL;
    rb_imap_each(cs->streams, s_hold_one, &hold);
}

/* A new pump joins a hold in force. */
static void s_pump_started(cstream_t *s)
{
    if (s->cs->up_held) rb_pump_hold_input(s->pump, true);
}

static int s_pump_data(void *arg, uint8_t flags, const uint8_t *buf, size_t len)
{
    cstream_t *s = arg;
    if (!s->cs->t) return -1;
    s_send_held_ok(s);
    int rc = rb_tconn_send_frame(s->cs->t, RB_FRAME_DATA, flags, s->id, buf, len);
    if (rb_tconn_output_pending(s->cs->t) > UP_BACKLOG) s_hold_input(s->cs, true);
    return rc;
}

static int s_pump_window(void *arg, uint32_t inc)
{
    cstream_t *s = arg;
    if (!s->cs->t) return -1;
    s_send_held_ok(s);
    uint8_t b[4];
    rb_frame_window_payload(b, inc);
    return rb_tconn_send_frame(s->cs->t, RB_FRAME_WINDOW, 0, s->id, b, 4);
}

static void s_pump_connected(void *arg, int err)
{
    cstream_t *s = arg;
    if (err) {
        rb_info("expose_connect_failed", "stream %u: local service: %s", s->id, strerror(err));
        s_result(s->cs, s->id, RB__TUNNEL__STREAM_ERROR__STREAM_REFUSED, strerror(err));
        s_stream_free(s);
        return;
    }
    s->ok_held = true;
    if (!s->cs->ok_timer)
        s->cs->ok_timer =
            rb_loop_add_timer(s->cs->loop, CLIENT_OK_HOLD_MS, false, s_on_ok_timer, s->cs);
    if (!s->cs->ok_timer) s_send_held_ok(s);
}

static void s_pump_done(void *arg, bool reset, const char *why)
{
    cstream_t *s = arg;
    rb_debug("stream_done", "stream %u: %s", s->id, why);
    s_stream_free(s);
}

static const rb_pump_handlers_t s_pump_handlers = {s_pump_data, s_pump_window, s_pump_connected,
                                                   s_pump_done};

/* ---- UDP flows to exposed ports ---- */

static void s_on_flow(rb_loop_t *loop, int fd, unsigned events, void *arg)
{
    cstream_t *s = arg;
    static uint8_t buf[RB_FRAME_MAX_DATA];
    for (int i = 0; i < 64; i++) {
        ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n < 0) return; /* EAGAIN, or an ICMP error: UDP goes on */
        s_send_datagram(s->cs, s->id, buf, (size_t)n);
    }
}

/* ---- server-initiated: StreamOpen from the edge ---- */

static const exposed_t *s_exposed(const client_streams_t *cs, int proto, uint32_t port)
{
    for (size_t i = 0; i < cs->nexposed; i++)
        if (cs->exposed[i].proto == proto && cs->exposed[i].port == port) return &cs->exposed[i];
    return NULL;
}

static void s_on_stream_open(client_streams_t *cs, const Rb__Tunnel__StreamOpen *o)
{
    uint32_t id = o->stream_id;
    if (id == 0 || (id & 1) || rb_imap_get(cs->streams, id)) {
        rb_warn("client_stream_id", "edge opened stream %u (odd, zero or in use); refused", id);
        return;
    }
    const exposed_t *e = s_exposed(cs, o->proto, o->port);
    if (!e) {
        s_result(cs, id, RB__TUNNEL__STREAM_ERROR__STREAM_REFUSED, "port not exposed");
        return;
    }
    bool udp = o->proto == RB__TUNNEL__PROTO__PROTO_UDP;
    int fd = socket(AF_INET, (udp ? SOCK_DGRAM : SOCK_STREAM) | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        s_result(cs, id, RB__TUNNEL__STREAM_ERROR__STREAM_FAILED, strerror(errno));
        return;
    }
    if (connect(fd, (const struct sockaddr *)&e->target, sizeof e->target) < 0 &&
        errno != EINPROGRESS) {
        int err = errno;
        close(fd);
        s_result(cs, id, RB__TUNNEL__STREAM_ERROR__STREAM_REFUSED, strerror(err));
        return;
    }
    cstream_t *s = s_stream_new(cs, id, udp);
    if (!s) {
        close(fd);
        s_result(cs, id, RB__TUNNEL__STREAM_ERROR__STREAM_FAILED, "out of memory");
        return;
    }
    s->st = S_OPEN;
    rb_info("stream_in", "%s from %s:%u%s%s to exposed port %u", udp ? "flow" : "connection",
            o->peer_addr ? o->peer_addr : "?", o->peer_port,
            o->peer_user && *o->peer_user ? " (device of " : "",
            o->peer_user && *o->peer_user ? o->peer_user : "", o->port);
    if (udp) {
        s->fd = fd;
        if (rb_loop_add_fd(cs->loop, fd, RB_EV_READ, s_on_flow, s) < 0) {
            s_result(cs, id, RB__TUNNEL__STREAM_ERROR__STREAM_FAILED, "cannot watch the socket");
            s_stream_free(s);
            return;
        }
        s_result(cs, id, RB__TUNNEL__STREAM_ERROR__STREAM_OK, "");
        return;
    }
    s->pump = rb_pump_new(cs->loop, fd, true, &s_pump_handlers, s);
    if (!s->pump) {
        close(fd);
        s_result(cs, id, RB__TUNNEL__STREAM_ERROR__STREAM_FAILED, "out of memory");
        s_stream_free(s);
        return;
    }
    s_pump_started(s);
}

/* ---- device-initiated: --forward and --socks ---- */

static void s_open_remote(cstream_t *s, const char *host, uint16_t port)
{
    Rb__Tunnel__TunnelControl m = RB__TUNNEL__TUNNEL_CONTROL__INIT;
    Rb__Tunnel__StreamOpen o = RB__TUNNEL__STREAM_OPEN__INIT;
    o.stream_id = s->id;
    o.proto = s->udp ? RB__TUNNEL__PROTO__PROTO_UDP : RB__TUNNEL__PROTO__PROTO_TCP;
    o.host = (char *)host;
    o.port = port;
    m.msg_case = RB__TUNNEL__TUNNEL_CONTROL__MSG_STREAM_OPEN;
    m.stream_open = &o;
    s->st = S_OPENING;
    if (!s->cs->t || rb_tconn_send_control(s->cs->t, &m) < 0) {
        s->st = S_SOCKS; /* the edge never heard of it */
        s_stream_free(s);
    }
}

/* ---- --forward udp: one flow per local sender ---- */

static void s_flow_opened(cstream_t *s, const Rb__Tunnel__StreamResult *r)
{
    if (r->error != RB__TUNNEL__STREAM_ERROR__STREAM_OK) {
        rb_info("flow_refused", "UDP flow %u to %s:%u: %s", s->id, s->fl->host, s->fl->target_port,
                r->message && *r->message ? r->message : "refused");
        s_stream_free(s);
        return;
    }
    s->st = S_OPEN;
    const uint8_t *q = (const uint8_t *)s->early.data;
    for (size_t i = 0, off = 0; i < s->queued; i++) {
        uint32_t n;
        memcpy(&n, q + off, 4);
        s_send_datagram(s->cs, s->id, q + off + 4, n);
        off += 4 + n;
    }
    s->queued = 0;
    rb_buf_free(&s->early);
}

static cstream_t *s_next_stream(client_streams_t *cs, bool udp)
{
    do {
        cs->next_id += 2;
        if (cs->next_id < 2) cs->next_id = 1;
    } while (rb_imap_get(cs->streams, cs->next_id));
    return s_stream_new(cs, cs->next_id, udp);
}

static void s_on_udp_local(rb_loop_t *loop, int fd, unsigned events, void *arg)
{
    listener_t *l = arg;
    client_streams_t *cs = l->cs;
    static uint8_t buf[RB_FRAME_MAX_DATA];
    for (int i = 0; i < UDP_BURST; i++) {
        struct sockaddr_in src;
        socklen_t slen = sizeof src;
        ssize_t n = recvfrom(fd, buf, sizeof buf, MSG_DONTWAIT, (struct sockaddr *)&src, &slen);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            continue; /* an ICMP error for an answer we relayed: UDP goes on */
        }
        if (!cs->t) continue; /* no tunnel now (resuming): dropped, as UDP may */
        cstream_t *s = rb_imap_get(l->flows, s_flow_key(&src));
        if (!s) {
            s = s_next_stream(cs, true);
            if (!s) continue;
            if (rb_imap_put(l->flows, s_flow_key(&src), s) < 0) {
                s_stream_free(s);
                continue;
            }
            s->fl = l;
            s->src = src;
            s_open_remote(s, l->host, l->target_port);
            if (!rb_imap_get(l->flows, s_flow_key(&src))) continue; /* the open failed */
        }
        if (s->st == S_OPEN) {
            s_send_datagram(cs, s->id, buf, (size_t)n);
            continue;
        }
        uint32_t len = (uint32_t)n;
        size_t before = s->early.len;
        if (s->queued == FLOW_QUEUE_MAX || before + 4 + len > FLOW_QUEUE_BYTES) continue;
        if (rb_buf_append(&s->early, &len, 4) == 0 && rb_buf_append(&s->early, buf, len) == 0)
            s->queued++;
        else
            s->early.len = before; /* out of memory: this one is dropped whole */
    }
}

static uint8_t s_socks_code(Rb__Tunnel__StreamError e)
{
    switch (e) {
    case RB__TUNNEL__STREAM_ERROR__STREAM_OK:
        return SOCKS_OK;
    case RB__TUNNEL__STREAM_ERROR__STREAM_REFUSED:
        return SOCKS_REFUSED;
    case RB__TUNNEL__STREAM_ERROR__STREAM_UNREACHABLE:
        return SOCKS_HOST_UNREACHABLE;
    case RB__TUNNEL__STREAM_ERROR__STREAM_TIMEOUT:
        return SOCKS_TTL_EXPIRED;
    case RB__TUNNEL__STREAM_ERROR__STREAM_NOT_ALLOWED:
        return SOCKS_NOT_ALLOWED;
    case RB__TUNNEL__STREAM_ERROR__STREAM_NO_NAME:
        return SOCKS_HOST_UNREACHABLE;
    default:
        return SOCKS_GENERAL_FAILURE;
    }
}

static void s_on_stream_result(client_streams_t *cs, const Rb__Tunnel__StreamResult *r)
{
    cstream_t *s = rb_imap_get(cs->streams, r->stream_id);
    if (!s || s->st != S_OPENING) return;
    if (s->fl) {
        s_flow_opened(s, r);
        return;
    }
    int fd = s->fd;
    if (r->error != RB__TUNNEL__STREAM_ERROR__STREAM_OK) {
        rb_info("stream_refused", "stream %u: %s", s->id,
                r->message && *r->message ? r->message : "refused");
        if (s->socks) {
            uint8_t rep[10];
            socks_reply(rep, s_socks_code(r->error), 0, 0);
            if (send(fd, rep, sizeof rep, MSG_NOSIGNAL) < 0) { /* closing anyway */
            }
            s->graceful = true;
        }
        s_stream_free(s);
        return;
    }
    if (s->socks) {
        uint8_t rep[10];
        uint32_t bound = 0;
        if (r->bound_addr && rb_ip_parse(r->bound_addr, &bound) < 0) bound = 0;
        socks_reply(rep, SOCKS_OK, bound, (uint16_t)r->bound_port);
        /* The socket is fresh and the reply small: it goes out whole. */
        if (send(fd, rep, sizeof rep, MSG_NOSIGNAL) != (ssize_t)sizeof rep) {
            s_stream_abort(s);
            return;
        }
    }
    rb_loop_del_fd(cs->loop, fd);
    s->fd = -1;
    s->st = S_OPEN;
    s->pump = rb_pump_new(cs->loop, fd, false, &s_pump_handlers, s);
    if (!s->pump) {
        s->fd = fd;
        s_stream_abort(s);
        return;
    }
    s_pump_started(s);
    /* What a SOCKS client sent behind its request (and maybe its
     * half-close); a forward's early bytes have gone already. */
    if ((s->early.len || (s->socks && s->early_fin)) && cs->t &&
        rb_tconn_send_frame(cs->t, RB_FRAME_DATA, s->early_fin ? RB_FRAME_FIN : 0, s->id,
                            s->early.data, s->early.len) < 0) {
        s_stream_abort(s);
        return;
    }
    rb_pump_note_sent(s->pump, s->early_sent + s->early.len, s->early_fin);
    rb_buf_free(&s->early);
}

/* A forward's local client that talks first is not made to wait for the
 * open's answer (a round trip through the gateway and the server's
 * connect): what it sends goes right behind the StreamOpen, as much as one
 * DATA frame, and the forwarder keeps it until its connect is done. */
static void s_forward_early(cstream_t *s, int fd)
{
    static uint8_t buf[EARLY_MAX];
    size_t room = EARLY_MAX - s->early_sent;
    ssize_t n = recv(fd, buf, room, MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (n < 0 || !s->cs->t ||
        rb_tconn_send_frame(s->cs->t, RB_FRAME_DATA, n == 0 ? RB_FRAME_FIN : 0, s->id, buf,
                            (size_t)(n > 0 ? n : 0)) < 0) {
        s_stream_abort(s);
        return;
    }
    if (n == 0)
        s->early_fin = true;
    else
        s->early_sent += (size_t)n;
    /* The rest waits in TCP's window until the stream is open. */
    if (s->early_fin || s->early_sent == EARLY_MAX) rb_loop_mod_fd(s->cs->loop, fd, 0);
}

/* A local connection that has sent all it may before its StreamResult
 * (a frame's worth, or its FIN) is watched for nothing, yet epoll reports
 * its error or hang-up anyway, on every turn. Reading would not tell: a
 * read of zero bytes returns 0 while data waits, which looks like EOF. A
 * reset ends the stream (the gateway is told RST, not FIN); any other
 * hang-up waits out of the loop for the open, whose pump sees it. */
static void s_local_waiting_woken(cstream_t *s, int fd)
{
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) err = errno;
    if (err) {
        rb_info("stream_local_reset",
                "stream %u: the local side went (%s) before the open's answer", s->id,
                strerror(err));
        s_stream_abort(s);
        return;
    }
    rb_loop_del_fd(s->cs->loop, fd);
}

/* A local connection waiting for its StreamResult: read the SOCKS
 * dialogue, or notice the local side giving up. */
static void s_on_local(rb_loop_t *loop, int fd, unsigned events, void *arg)
{
    cstream_t *s = arg;
    if (s->early_fin || (s->socks ? s->early.len >= EARLY_MAX : s->early_sent == EARLY_MAX)) {
        s_local_waiting_woken(s, fd);
        return;
    }
    if (!s->socks) {
        s_forward_early(s, fd);
        return;
    }
    uint8_t buf[512];
    /* Never more than one DATA frame's worth before the open: it goes out
     * as one frame then. */
    size_t room = EARLY_MAX - s->early.len;
    ssize_t n = recv(fd, buf, room < sizeof buf ? room : sizeof buf, MSG_DONTWAIT);
    if (n == 0 && s->st == S_OPENING && !s->early_fin) {
        /* Half-closed early (a request, then shutdown): the FIN follows
         * the open. Nothing more to read meanwhile. */
        s->early_fin = true;
        rb_loop_mod_fd(loop, fd, 0);
        return;
    }
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
        /* Gone before the stream opened. */
        s_stream_abort(s);
        return;
    }
    if (n < 0) return;
    if (rb_buf_append(&s->early, buf, (size_t)n) < 0) {
        s_stream_abort(s);
        return;
    }
    /* Enough kept before the open: the local client waits in TCP's
     * window until the stream is open. */
    if (s->early.len >= EARLY_MAX) rb_loop_mod_fd(loop, fd, 0);
    /* Bytes behind the request are kept for after the open. */
    if (s->st != S_SOCKS) return;
    for (;;) {
        size_t used = 0;
        socks_step_t step = socks_feed(&s->sk, (const uint8_t *)s->early.data, s->early.len, &used);
        rb_buf_consume(&s->early, used);
        if (step == SOCKS_NEED_MORE) return;
        if (step == SOCKS_REPLY_METHOD) {
            if (send(fd, s->sk.reply, s->sk.reply_len, MSG_NOSIGNAL) < 0) {
                s_stream_free(s);
                return;
            }
            continue;
        }
        if (step == SOCKS_ERROR) {
            rb_info("socks_refused", "local SOCKS client: %s", s->sk.why ? s->sk.why : "error");
            if (s->sk.reply_len && send(fd, s->sk.reply, s->sk.reply_len, MSG_NOSIGNAL) < 0) {
                /* closing anyway */
            }
            s->graceful = true;
            s_stream_free(s);
            return;
        }
        /* SOCKS_REQUEST: what is left in early is application data. */
        s_open_remote(s, s->sk.host, s->sk.port);
        return;
    }
}

static void s_on_accept(rb_loop_t *loop, int lfd, unsigned events, void *arg)
{
    listener_t *l = arg;
    client_streams_t *cs = l->cs;
    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
        /* Out of descriptors: the listener stays readable, so retrying at
         * once would spin. Pause it; the kernel queues meanwhile. */
        if (errno == EMFILE || errno == ENFILE) {
            rb_warn("accept_paused", "local port %d: %s", l->port, strerror(errno));
            rb_loop_pause_fd(loop, lfd, 100);
        }
        return;
    }
    if (!cs->t) {
        /* No tunnel now (resuming): refuse rather than hang. */
        s_reset_fd(fd);
        return;
    }
    cstream_t *s = s_next_stream(cs, false);
    if (!s) {
        s_reset_fd(fd);
        return;
    }
    s->fd = fd;
    s->socks = l->kind == L_SOCKS;
    if (rb_loop_add_fd(loop, fd, RB_EV_READ, s_on_local, s) < 0) {
        s_stream_free(s);
        return;
    }
    if (s->socks) {
        socks_init(&s->sk);
        s->st = S_SOCKS;
        return;
    }
    s_open_remote(s, l->host, l->target_port);
}

/* ------------------------------------------------------------------ */
/* Configuration                                                       */

/* "HOST:PORT" or "PORT" into a numeric IPv4 address. */
static int s_parse_hostport(const char *s, const char *def_host, struct sockaddr_in *out)
{
    char host[64];
    const char *colon = strrchr(s, ':');
    const char *port = s;
    if (colon) {
        size_t n = (size_t)(colon - s);
        if (n == 0 || n >= sizeof host) return -1;
        memcpy(host, s, n);
        host[n] = '\0';
        port = colon + 1;
    } else {
        snprintf(host, sizeof host, "%s", def_host);
    }
    char *end;
    long p = strtol(port, &end, 10);
    uint32_t ip;
    if (*port == '\0' || *end || p < 0 || p > 65535 || rb_ip_parse(host, &ip) < 0) return -1;
    memset(out, 0, sizeof *out);
    out->sin_family = AF_INET;
    out->sin_addr.s_addr = htonl(ip);
    out->sin_port = htons((uint16_t)p);
    return 0;
}

int client_streams_expose(client_streams_t *cs, const char *spec, char *err, size_t errlen)
{
    if (cs->nexposed == MAX_EXPOSED) {
        snprintf(err, errlen, "--expose: at most %d ports", MAX_EXPOSED);
        return -1;
    }
    exposed_t e = {0};
    const char *rest;
    if (strncmp(spec, "tcp:", 4) == 0)
        e.proto = RB__TUNNEL__PROTO__PROTO_TCP;
    else if (strncmp(spec, "udp:", 4) == 0)
        e.proto = RB__TUNNEL__PROTO__PROTO_UDP;
    else {
        snprintf(err, errlen, "--expose '%s': want tcp:PORT[=HOST:PORT] or udp:PORT[=HOST:PORT]",
                 spec);
        return -1;
    }
    rest = spec + 4;
    char *end;
    long port = strtol(rest, &end, 10);
    if (end == rest || port < 1 || port > 65535 || (*end && *end != '=')) {
        snprintf(err, errlen, "--expose '%s': bad port", spec);
        return -1;
    }
    e.port = (uint16_t)port;
    char def[16];
    snprintf(def, sizeof def, "%ld", port);
    if (s_parse_hostport(*end == '=' ? end + 1 : def, "127.0.0.1", &e.target) < 0 ||
        e.target.sin_port == 0) {
        snprintf(err, errlen, "--expose '%s': the target must be IPv4:PORT", spec);
        return -1;
    }
    if (s_exposed(cs, e.proto, e.port)) {
        snprintf(err, errlen, "--expose '%s': that port is exposed twice", spec);
        return -1;
    }
    cs->exposed[cs->nexposed++] = e;
    return 0;
}

static int s_listen(client_streams_t *cs, lkind_t kind, bool udp, const struct sockaddr_in *bind_to,
                    char *err, size_t errlen, const char *spec)
{
    if (cs->nlisteners == MAX_LISTENERS) {
        snprintf(err, errlen, "at most %d --forward and --socks", MAX_LISTENERS);
        return -1;
    }
    int fd = socket(AF_INET, (udp ? SOCK_DGRAM : SOCK_STREAM) | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd >= 0 && !udp) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (fd < 0 || bind(fd, (const struct sockaddr *)bind_to, sizeof *bind_to) < 0 ||
        (!udp && listen(fd, 128) < 0)) {
        snprintf(err, errlen, "'%s': cannot listen: %s", spec, strerror(errno));
        if (fd >= 0) close(fd);
        return -1;
    }
    listener_t *l = &cs->listeners[cs->nlisteners];
    l->flows = udp ? rb_imap_new() : NULL;
    if (udp && !l->flows) {
        snprintf(err, errlen, "'%s': out of memory", spec);
        close(fd);
        return -1;
    }
    struct sockaddr_in me;
    socklen_t len = sizeof me;
    getsockname(fd, (struct sockaddr *)&me, &len);
    l->cs = cs;
    l->kind = kind;
    l->udp = udp;
    l->fd = fd;
    l->port = ntohs(me.sin_port);
    if (rb_loop_add_fd(cs->loop, fd, RB_EV_READ, udp ? s_on_udp_local : s_on_accept, l) < 0) {
        snprintf(err, errlen, "'%s': cannot watch the listener", spec);
        rb_imap_destroy(&l->flows);
        close(fd);
        return -1;
    }
    cs->nlisteners++;
    return 0;
}

int client_streams_forward(client_streams_t *cs, const char *spec, char *err, size_t errlen)
{
    /* [tcp:|udp:][BIND:]LPORT:HOST:PORT: split from the right. */
    bool udp = strncmp(spec, "udp:", 4) == 0;
    char buf[512];
    snprintf(buf, sizeof buf, "%s", udp || strncmp(spec, "tcp:", 4) == 0 ? spec + 4 : spec);
    char *c3 = strrchr(buf, ':');
    if (!c3) goto bad;
    *c3 = '\0';
    char *c2 = strrchr(buf, ':');
    if (!c2) goto bad;
    *c2 = '\0';
    const char *host = c2 + 1, *rport = c3 + 1;
    char *end;
    long tp = strtol(rport, &end, 10);
    if (!*host || strlen(host) > HOST_MAX || *end || tp < 1 || tp > 65535) goto bad;
    struct sockaddr_in b;
    if (s_parse_hostport(buf, "127.0.0.1", &b) < 0) goto bad;
    if (s_listen(cs, L_FORWARD, udp, &b, err, errlen, spec) < 0) return -1;
    listener_t *l = &cs->listeners[cs->nlisteners - 1];
    snprintf(l->host, sizeof l->host, "%s", host);
    l->target_port = (uint16_t)tp;
    return 0;
bad:
    snprintf(err, errlen, "--forward '%s': want [tcp:|udp:][BIND:]LPORT:HOST:PORT", spec);
    return -1;
}

int client_streams_socks(client_streams_t *cs, const char *spec, char *err, size_t errlen)
{
    struct sockaddr_in b;
    if (s_parse_hostport(spec, "127.0.0.1", &b) < 0) {
        snprintf(err, errlen, "--socks '%s': want [BIND:]PORT", spec);
        return -1;
    }
    return s_listen(cs, L_SOCKS, false, &b, err, errlen, spec);
}

int client_streams_listener_port(const client_streams_t *cs, size_t index)
{
    return index < cs->nlisteners ? cs->listeners[index].port : -1;
}

/* ------------------------------------------------------------------ */
/* The tunnel                                                          */

static void s_drop(void *arg, uint64_t key, void *value)
{
    s_stream_free(value);
}

void client_streams_tunnel(client_streams_t *cs, rb_tconn_t *t)
{
    s_hold_input(cs, false); /* a new tunnel, or none: no stream is held */
    if (!t) {
        cs->t = NULL;
        rb_imap_each(cs->streams, s_drop, NULL);
        return;
    }
    cs->t = t;
    Rb__Tunnel__TunnelControl m = RB__TUNNEL__TUNNEL_CONTROL__INIT;
    Rb__Tunnel__Expose ex = RB__TUNNEL__EXPOSE__INIT;
    Rb__Tunnel__ExposedPort ports[MAX_EXPOSED], *pp[MAX_EXPOSED];
    for (size_t i = 0; i < cs->nexposed; i++) {
        rb__tunnel__exposed_port__init(&ports[i]);
        ports[i].proto = cs->exposed[i].proto;
        ports[i].port = cs->exposed[i].port;
        pp[i] = &ports[i];
    }
    ex.n_ports = cs->nexposed;
    ex.ports = pp;
    m.msg_case = RB__TUNNEL__TUNNEL_CONTROL__MSG_EXPOSE;
    m.expose = &ex;
    rb_tconn_send_control(t, &m);
}

void client_streams_input(client_streams_t *cs, const rb_frame_t *f,
                          const Rb__Tunnel__TunnelControl *m)
{
    if (m) {
        if (m->msg_case == RB__TUNNEL__TUNNEL_CONTROL__MSG_STREAM_OPEN)
            s_on_stream_open(cs, m->stream_open);
        else if (m->msg_case == RB__TUNNEL__TUNNEL_CONTROL__MSG_STREAM_RESULT)
            s_on_stream_result(cs, m->stream_result);
        return;
    }
    cstream_t *s = rb_imap_get(cs->streams, f->stream_id);
    if (!s) return; /* ended here; the edge has been or will be told */
    switch (f->type) {
    case RB_FRAME_DATA:
        if (f->flags & RB_FRAME_RST) {
            s_stream_free(s);
            return;
        }
        if (!s->pump) return; /* not open: nothing may arrive yet */
        switch (rb_pump_peer_data(s->pump, f->flags, f->payload, f->len)) {
        case RB_PUMP_GOING:
            return;
        case RB_PUMP_OVERRUN:
            rb_warn("window_overrun", "stream %u: the edge sent more than its window", s->id);
            if (cs->t) rb_tconn_send_frame(cs->t, RB_FRAME_DATA, RB_FRAME_RST, s->id, NULL, 0);
            s_stream_free(s);
            return;
        default:
            s_stream_free(s);
            return;
        }
    case RB_FRAME_WINDOW:
        if (s->pump) rb_pump_peer_window(s->pump, rb_frame_window(f));
        return;
    case RB_FRAME_DATAGRAM: {
        /* A local peer that is not listening (ICMP) loses it, as UDP may. */
        ssize_t n = 0;
        if (s->fl && s->st == S_OPEN)
            n = sendto(s->fl->fd, f->payload, f->len, MSG_DONTWAIT, (struct sockaddr *)&s->src,
                       sizeof s->src);
        else if (s->udp && s->fd >= 0)
            n = send(s->fd, f->payload, f->len, MSG_DONTWAIT);
        (void)n;
        return;
    }
    }
}

client_streams_t *client_streams_new(rb_loop_t *loop)
{
    client_streams_t *cs = calloc(1, sizeof *cs);
    if (!cs) return NULL;
    cs->loop = loop;
    cs->next_id = 1;
    cs->streams = rb_imap_new();
    if (!cs->streams) {
        free(cs);
        return NULL;
    }
    return cs;
}

void client_streams_destroy(client_streams_t **pcs)
{
    if (!pcs || !*pcs) return;
    client_streams_t *cs = *pcs;
    *pcs = NULL;
    cs->t = NULL;
    rb_loop_cancel_timer(cs->loop, cs->ok_timer);
    rb_loop_cancel_timer(cs->loop, cs->hold_timer);
    rb_imap_each(cs->streams, s_drop, NULL);
    rb_imap_destroy(&cs->streams);
    for (size_t i = 0; i < cs->nlisteners; i++) {
        rb_loop_del_fd(cs->loop, cs->listeners[i].fd);
        close(cs->listeners[i].fd);
        rb_imap_destroy(&cs->listeners[i].flows);
    }
    free(cs);
}

void client_streams_drained(client_streams_t *cs)
{
    s_hold_input(cs, false);
}

uint64_t client_streams_datagrams_dropped(const client_streams_t *cs)
{
    return cs->dgrams_dropped;
}

size_t client_streams_count(const client_streams_t *cs)
{
    return rb_imap_count(cs->streams);
}
