/* forwarder_plane: see forwarder_plane.h.
 *
 * Objects and who owns them:
 *   peer_t     an edge on the link (by routing id); owns nothing, indexes
 *              the link streams it carries (link id -> stream_t)
 *   attach_t   a session an edge attached: its listeners and its streams
 *   listener_t one exposed port (TCP listening socket or UDP socket)
 *   stream_t   a TCP stream (with its rb_pump) or a UDP flow
 * A stream belongs to its attachment and is indexed by its peer; freeing it
 * unlinks both. Attachments die with a Detach, a SESSION_DOWN event, a newer
 * attachment of the same address, or their edge falling silent. */
#include "forwarder_plane.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <zmq.h>

#include "forwarder_policy.h"
#include "forwarder_resolve.h"
#include "rb_cidr.h"
#include "rb_imap.h"
#include "rb_smap.h"
#include "rb_link.h"
#include "rb_log.h"
#include "rb_metrics.h"
#include "rb_pump.h"

/* An edge we have not heard from for this long is gone. */
#define PEER_SILENCE_MS 5000
#define MAX_PORTS 64
#define MAX_GROUPS 64
#define ID_MAX 128
#define NAME_MAX_LEN 256
#define UDP_BURST 64
#define MAX_CIDRS 16
#define ACCEPT_PAUSE_MS 100
/* Denied UDP flows kept per listener (each counts the drops of one source
 * until it idles out); beyond that, denied datagrams are only counted. */
#define DENIED_FLOWS_MAX 64

typedef struct stream stream_t;
typedef struct attach attach_t;

typedef struct peer {
    struct peer *next;
    uint8_t rid[RB_LINK_RID_MAX]; /* routing id, bytes */
    size_t rid_len;
    char name[2 * RB_LINK_RID_MAX + 1]; /* printable, for logs */
    uint64_t heard_ms;
    uint64_t instance;  /* the edge's start, from its Hello; 0: none yet */
    uint64_t unhelloed; /* messages dropped because they came before a Hello */
    rb_imap_t *streams; /* link id -> stream_t */
    uint32_t reset_id;  /* the unknown flow last reset (see s_on_frame) */
    uint64_t epoch;     /* which of this edge's links since we started */
} peer_t;

typedef struct listener {
    struct listener *next;
    plane_t *p;
    attach_t *a;
    int fd;
    int proto; /* POLICY_TCP or POLICY_UDP */
    uint16_t port;
    rb_imap_t *flows;  /* UDP: (source address << 16 | port) -> stream_t */
    size_t denied;     /* UDP: denied flows kept until they idle out */
} listener_t;

struct attach {
    char *session_id, *user;
    char ip[16]; /* "" without an intranet address */
    uint32_t ip_n;
    char **groups;
    size_t ngroups;
    peer_t *peer;
    listener_t *listeners;
    stream_t *streams;
    size_t nstreams;
    size_t ndenied;    /* of nstreams: denied UDP flows */
    uint64_t down_out; /* sent towards the device, not yet Relayed by its edge */
    bool down_held;    /* down_out reached RB_SESSION_WINDOW: no stream reads */
    uint64_t up_taken; /* the device's datagrams taken off the link, not yet Relayed */
    stream_t *rr_next; /* where the next release starts (NULL: the first) */
};

typedef enum { K_INBOUND, K_OUTBOUND } kind_t;

struct stream {
    stream_t *prev, *next; /* in a->streams */
    plane_t *p;
    attach_t *a;
    peer_t *peer;
    uint32_t id;
    uint64_t serial; /* for answers that may outlive the stream */
    bool resolving;  /* its name is being looked up (resolve_start took it) */
    kind_t kind;
    int proto;
    rb_pump_t *pump;        /* TCP */
    rb_buf_t early;         /* outbound: the device's bytes while its name is looked up */
    bool early_fin;         /* ... and its half-close */
    listener_t *l;          /* inbound UDP flow: the socket it came in on */
    int fd;                 /* outbound UDP flow: its own connected socket, or -1 */
    struct sockaddr_in src; /* UDP flow: the internal peer */
    bool denied;            /* UDP: a denied flow, kept to count drops */
    bool refused;           /* UDP: the device refused the flow */
    bool open_ok;
    rb_timer_t *connect_timer;
    uint16_t target_port;
    uint64_t start_ms, last_ms;
    uint64_t to_device, from_device, dropped;
    uint64_t down_out; /* this stream's share of a->down_out */
    uint32_t up_taken; /* this flow's share of a->up_taken */
    char peer_desc[64]; /* "ip:port" of the internal side */
    char src_user[NAME_MAX_LEN + 1];
    char dst_user[NAME_MAX_LEN + 1]; /* outbound to a device's address: its user */
    char target[NAME_MAX_LEN + 8];
};

struct plane {
    rb_loop_t *loop;
    const plane_config_t *cfg;
    void *sock;
    int port;
    uint64_t instance;
    char *policy_path;
    policy_t *policy;
    resolve_t *resolve;
    peer_t *peers;
    rb_smap_t *by_session; /* session id -> attach_t */
    rb_imap_t *by_ip;      /* intranet address -> attach_t */
    rb_imap_t *by_serial;  /* streams waiting for a name or a connect */
    uint64_t next_serial;
    uint64_t next_epoch;
    uint32_t next_id; /* even ids for server-initiated streams (s_next_id) */
    rb_timer_t *tick;
    rb_cidr_t cidrs[MAX_CIDRS];
    char *cidr_text[MAX_CIDRS];
    size_t ncidrs;
    size_t nstreams, nflows;
    rb_metric_t *m_attached, *m_streams, *m_flows, *m_to_device, *m_from_device;
    rb_metric_t *m_inbound_allowed, *m_inbound_denied, *m_inbound_refused, *m_inbound_failed;
    rb_metric_t *m_outbound_ok, *m_outbound_failed, *m_udp_dropped, *m_overruns, *m_bad_link;
    rb_metric_t *m_held_resets, *m_before_hello;
};

/* ------------------------------------------------------------------ */
/* Small helpers                                                       */

static void s_addr_str(const struct sockaddr_in *sa, char *out, size_t len)
{
    char ip[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &sa->sin_addr, ip, sizeof ip);
    snprintf(out, len, "%s:%u", ip, ntohs(sa->sin_port));
}

static const char *s_proto_name(int proto)
{
    return proto == POLICY_UDP ? "udp" : "tcp";
}

/* ------------------------------------------------------------------ */
/* Link output                                                         */

static int s_send_control(plane_t *p, peer_t *peer, Rb__Fwd__LinkControl *m)
{
    if (rb_link_send_control(p->sock, peer->rid, peer->rid_len, m) == 0) return 0;
    rb_debug("link_send", "edge %s: %s", peer->name, zmq_strerror(errno));
    return -1;
}

static int s_send_frame(plane_t *p, peer_t *peer, uint8_t type, uint8_t flags, uint32_t id,
                        const void *data, size_t len)
{
    if (rb_link_send(p->sock, peer->rid, peer->rid_len, type, flags, id, data, len) == 0) return 0;
    rb_debug("link_send", "edge %s: %s", peer->name, zmq_strerror(errno));
    return -1;
}

static void s_send_window(plane_t *p, peer_t *peer, uint32_t id, uint32_t inc)
{
    uint8_t b[4];
    rb_frame_window_payload(b, inc);
    s_send_frame(p, peer, RB_FRAME_WINDOW, 0, id, b, 4);
}

static void s_send_result(plane_t *p, peer_t *peer, uint32_t id, Rb__Tunnel__StreamError err,
                          const char *msg, const char *bound, unsigned bound_port)
{
    Rb__Fwd__LinkControl m = RB__FWD__LINK_CONTROL__INIT;
    Rb__Fwd__OpenResult r = RB__FWD__OPEN_RESULT__INIT;
    r.link_id = id;
    r.error = err;
    r.message = (char *)(msg ? msg : "");
    r.bound_addr = (char *)(bound ? bound : "");
    r.bound_port = bound_port;
    m.msg_case = RB__FWD__LINK_CONTROL__MSG_OPEN_RESULT;
    m.open_result = &r;
    s_send_control(p, peer, &m);
}

/* ------------------------------------------------------------------ */
/* Audit                                                               */

/* One line per connection or flow, when it ends (or is refused): who
 * reached whom, what was decided, how much went each way, how long. */
static void s_audit(stream_t *s, const char *verdict, const char *why)
{
    rb_buf_t f = RB_BUF_INIT;
    uint64_t dur = rb_now_ms() - s->start_ms;
    rb_buf_printf(&f, "\"kind\":\"%s\",\"proto\":\"%s\",\"src\":\"",
                  s->kind == K_INBOUND ? (*s->src_user ? "device" : "inbound") : "outbound",
                  s_proto_name(s->proto));
    rb_buf_json_escape(&f, s->kind == K_INBOUND ? s->peer_desc : s->a->ip);
    rb_buf_puts(&f, "\",\"src_user\":\"");
    rb_buf_json_escape(&f, s->kind == K_INBOUND ? s->src_user : s->a->user);
    rb_buf_puts(&f, "\",\"user\":\"");
    rb_buf_json_escape(&f, s->kind == K_INBOUND ? s->a->user : s->dst_user);
    rb_buf_puts(&f, "\",\"dst\":\"");
    rb_buf_json_escape(&f, s->kind == K_INBOUND ? s->a->ip : s->target);
    rb_buf_printf(&f,
                  "\",\"port\":%u,\"verdict\":\"%s\",\"bytes_to_device\":%llu,"
                  "\"bytes_from_device\":%llu,\"dropped\":%llu,\"duration_ms\":%llu,\"reason\":\"",
                  s->target_port, verdict, (unsigned long long)s->to_device,
                  (unsigned long long)s->from_device, (unsigned long long)s->dropped,
                  (unsigned long long)dur);
    rb_buf_json_escape(&f, why ? why : "");
    rb_buf_puts(&f, "\"");
    rb_audit(f.data, "%s %s %s -> %s%s%s port %u: %s (%s)",
             s->kind == K_INBOUND ? "inbound" : "outbound", s_proto_name(s->proto),
             s->kind == K_INBOUND ? s->peer_desc : s->a->user,
             s->kind == K_INBOUND ? s->a->user : s->target, s->kind == K_INBOUND ? " at " : "",
             s->kind == K_INBOUND ? s->a->ip : "", s->target_port, verdict, why ? why : "");
    rb_buf_free(&f);
}

/* ------------------------------------------------------------------ */
/* Streams                                                             */

/* The session's credit towards its device (RB_SESSION_WINDOW): once that
 * much is out and not Relayed, no stream of the session reads its socket,
 * so a device that stops reading its tunnel makes its edge hold at most
 * that, not a window per stream. Reading resumes at half of it. Streams
 * whose sockets are readable are served in the order they are released
 * (epoll queues them so), and the first ones take the credit: each release
 * starts after the stream that used the last of it, round robin. */
static void s_hold_session(attach_t *a, bool hold)
{
    a->down_held = hold;
    if (hold) {
        for (stream_t *s = a->streams; s; s = s->next)
            if (s->pump) rb_pump_hold_input(s->pump, true);
        return;
    }
    stream_t *from = a->rr_next ? a->rr_next : a->streams;
    for (stream_t *s = from; s; s = s->next)
        if (s->pump) rb_pump_hold_input(s->pump, false);
    for (stream_t *s = a->streams; s && s != from; s = s->next)
        if (s->pump) rb_pump_hold_input(s->pump, false);
}

static void s_down_spent(stream_t *s, size_t n)
{
    attach_t *a = s->a;
    s->down_out += n;
    a->down_out += n;
    if (!a->down_held && a->down_out >= RB_SESSION_WINDOW) {
        a->rr_next = s->next;
        s_hold_session(a, true);
    }
}

static void s_down_relayed(stream_t *s, uint64_t n)
{
    s->down_out -= n;
    s->a->down_out -= n;
    if (s->a->down_held && s->a->down_out <= RB_SESSION_WINDOW / 2) s_hold_session(s->a, false);
}

static stream_t *s_stream_new(plane_t *p, attach_t *a, peer_t *peer, uint32_t id, kind_t kind,
                              int proto)
{
    stream_t *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    if (rb_imap_put(peer->streams, id, s) < 0) {
        free(s);
        return NULL;
    }
    s->p = p;
    s->a = a;
    s->peer = peer;
    s->id = id;
    s->kind = kind;
    s->proto = proto;
    s->fd = -1;
    s->serial = ++p->next_serial;
    s->start_ms = s->last_ms = rb_now_ms();
    s->next = a->streams;
    if (a->streams) a->streams->prev = s;
    a->streams = s;
    a->nstreams++;
    if (proto == POLICY_UDP)
        p->nflows++;
    else
        p->nstreams++;
    rb_metric_set(p->m_streams, (double)p->nstreams);
    rb_metric_set(p->m_flows, (double)p->nflows);
    return s;
}

/* A stream's TCP bytes since the last count go to the metrics. */
static void s_count_bytes(stream_t *s)
{
    if (!s->pump) return;
    rb_metric_add(s->p->m_to_device, (double)(rb_pump_bytes_read(s->pump) - s->to_device));
    rb_metric_add(s->p->m_from_device, (double)(rb_pump_bytes_written(s->pump) - s->from_device));
    s->to_device = rb_pump_bytes_read(s->pump);
    s->from_device = rb_pump_bytes_written(s->pump);
}

/* How a stream ended up, for an end that is not its own doing: the
 * policy's word, else the device's (inbound) or the connect's (outbound),
 * else failed (it ended before either answered). */
static const char *s_verdict(const stream_t *s)
{
    if (s->denied) return "denied";
    if (s->refused) return "refused";
    return s->open_ok ? "allowed" : "failed";
}

/* Frees s and unlinks it everywhere; the audit line says how it ended,
 * with every byte it carried. A pump still going resets its socket. */
static void s_stream_free(stream_t *s, const char *verdict, const char *why)
{
    plane_t *p = s->p;
    s_count_bytes(s);
    /* The other inbound verdicts were counted as they were given. */
    if (s->kind == K_INBOUND && !s->open_ok && !s->refused && !s->denied)
        rb_metric_inc(p->m_inbound_failed);
    if (verdict) s_audit(s, verdict, why);
    rb_pump_destroy(&s->pump);
    if (s->a->rr_next == s) s->a->rr_next = s->next;
    /* What the edge never reported is given back: it dropped it, or it
     * will write it out without a stream to report it for. */
    s_down_relayed(s, s->down_out);
    s->a->up_taken -= s->up_taken; /* the edge gives its side back itself */
    if (s->fd >= 0) {
        rb_loop_del_fd(p->loop, s->fd);
        close(s->fd);
    }
    rb_buf_free(&s->early);
    rb_loop_cancel_timer(p->loop, s->connect_timer);
    rb_imap_del(p->by_serial, s->serial);
    if (s->resolving) resolve_cancel(p->resolve, s->serial);
    if (rb_imap_get(s->peer->streams, s->id) == s) rb_imap_del(s->peer->streams, s->id);
    if (s->denied) {
        s->a->ndenied--;
        if (s->l) s->l->denied--;
    }
    if (s->l && s->l->flows) {
        uint64_t key = (uint64_t)ntohl(s->src.sin_addr.s_addr) << 16 | ntohs(s->src.sin_port);
        if (rb_imap_get(s->l->flows, key) == s) rb_imap_del(s->l->flows, key);
    }
    if (s->prev)
        s->prev->next = s->next;
    else
        s->a->streams = s->next;
    if (s->next) s->next->prev = s->prev;
    s->a->nstreams--;
    if (s->proto == POLICY_UDP)
        p->nflows--;
    else
        p->nstreams--;
    rb_metric_set(p->m_streams, (double)p->nstreams);
    rb_metric_set(p->m_flows, (double)p->nflows);
    free(s);
}

/* Byte counts are read from the pump at the end; the metrics follow them. */
static void s_stream_end(stream_t *s, const char *why, bool reset)
{
    s_stream_free(s, s->open_ok ? "allowed" : "failed", reset ? why : "closed");
}

static int s_pump_data(void *arg, uint8_t flags, const uint8_t *buf, size_t len)
{
    stream_t *s = arg;
    if (s_send_frame(s->p, s->peer, RB_FRAME_DATA, flags, s->id, buf, len) < 0) return -1;
    s_down_spent(s, len);
    return 0;
}

static int s_pump_window(void *arg, uint32_t inc)
{
    stream_t *s = arg;
    s_send_window(s->p, s->peer, s->id, inc);
    return 0;
}

static void s_pump_done(void *arg, bool reset, const char *why)
{
    stream_t *s = arg;
    if (s->kind == K_OUTBOUND && !s->open_ok) return; /* connected() answers */
    s_stream_end(s, why, reset);
}

static Rb__Tunnel__StreamError s_errno_error(int err)
{
    switch (err) {
    case ECONNREFUSED:
        return RB__TUNNEL__STREAM_ERROR__STREAM_REFUSED;
    case ETIMEDOUT:
        return RB__TUNNEL__STREAM_ERROR__STREAM_TIMEOUT;
    case ENETUNREACH:
    case EHOSTUNREACH:
        return RB__TUNNEL__STREAM_ERROR__STREAM_UNREACHABLE;
    default:
        return RB__TUNNEL__STREAM_ERROR__STREAM_FAILED;
    }
}

static void s_outbound_fail(stream_t *s, Rb__Tunnel__StreamError err, const char *why)
{
    s_send_result(s->p, s->peer, s->id, err, why, NULL, 0);
    rb_metric_inc(s->p->m_outbound_failed);
    s_stream_free(s, "failed", why);
}

/* Ends a stream the device still holds, for a cause of ours. A device
 * waiting for the answer to its own open gets it (FAILED, why): a result
 * comes before any other frame of a stream it opened, and a SOCKS client
 * then hears a reply, not a reset. Any other stream is reset. */
static void s_stream_cut(stream_t *s, const char *why)
{
    if (s->kind == K_OUTBOUND && !s->open_ok) {
        s_outbound_fail(s, RB__TUNNEL__STREAM_ERROR__STREAM_FAILED, why);
        return;
    }
    if (!s->denied && !s->refused)
        s_send_frame(s->p, s->peer, RB_FRAME_DATA, RB_FRAME_RST, s->id, NULL, 0);
    s_stream_free(s, s_verdict(s), why);
}

/* The OK of an outbound stream or flow, with the source the server sees. */
static void s_outbound_ok(stream_t *s, int fd)
{
    struct sockaddr_in me;
    socklen_t len = sizeof me;
    char ip[INET_ADDRSTRLEN] = "";
    unsigned port = 0;
    if (getsockname(fd, (struct sockaddr *)&me, &len) == 0) {
        inet_ntop(AF_INET, &me.sin_addr, ip, sizeof ip);
        port = ntohs(me.sin_port);
    }
    s->open_ok = true;
    rb_metric_inc(s->p->m_outbound_ok);
    s_send_result(s->p, s->peer, s->id, RB__TUNNEL__STREAM_ERROR__STREAM_OK, "", ip, port);
}

static void s_pump_connected(void *arg, int err)
{
    stream_t *s = arg;
    rb_loop_cancel_timer(s->p->loop, s->connect_timer);
    s->connect_timer = NULL;
    rb_imap_del(s->p->by_serial, s->serial);
    if (err) {
        s_outbound_fail(s, s_errno_error(err), strerror(err));
        return;
    }
    s_outbound_ok(s, rb_pump_fd(s->pump));
}

static const rb_pump_handlers_t s_pump_handlers = {s_pump_data, s_pump_window, s_pump_connected,
                                                   s_pump_done};

static void s_connect_timeout(rb_loop_t *loop, void *arg)
{
    stream_t *s = arg;
    s->connect_timer = NULL;
    s_outbound_fail(s, RB__TUNNEL__STREAM_ERROR__STREAM_TIMEOUT, "connect timed out");
}

static bool s_loopback(uint32_t ip)
{
    return ip >> 24 == 127 || ip >> 24 == 0;
}

/* A socket of the device's, bound to its intranet address (or ours,
 * without one), for a connection or flow to ip; -1 after answering the
 * device and freeing s. */
/* Refuses a device's outbound stream or flow as NOT_ALLOWED. */
static void s_outbound_denied(stream_t *s, const char *msg, const char *why)
{
    s_send_result(s->p, s->peer, s->id, RB__TUNNEL__STREAM_ERROR__STREAM_NOT_ALLOWED, msg, NULL, 0);
    rb_metric_inc(s->p->m_outbound_failed);
    s_stream_free(s, "denied", why);
}

/* A device reaching another device's address (served here or by another
 * forwarder, named or resolved) is judged here, with its user known. The
 * listener judges again by source address, which names the same user for
 * a session with an address; a session without one connects from this
 * host's own address, which names no one (or, on an AnyIP pool, the very
 * device it reaches). false when denied (the stream is gone). */
static bool s_device_to_device_ok(stream_t *s, uint32_t ip)
{
    plane_t *p = s->p;
    attach_t *to = rb_imap_get(p->by_ip, ip);
    const char *const *to_groups = NULL;
    size_t n_to_groups = 0;
    const char *to_user = NULL;
    if (to) {
        to_user = to->user;
        to_groups = (const char *const *)to->groups;
        n_to_groups = to->ngroups;
    } else if (p->cfg->user_of_ip) {
        to_user = p->cfg->user_of_ip(p->cfg->lookup_arg, ip, &to_groups, &n_to_groups);
    }
    if (!to_user) return true; /* not a device's address */
    snprintf(s->dst_user, sizeof s->dst_user, "%s", to_user);
    policy_query_t q = {
        .src_ip = s->a->ip[0] ? s->a->ip_n : 0,
        .src_user = s->a->user,
        .src_groups = (const char *const *)s->a->groups,
        .n_src_groups = s->a->ngroups,
        .dst_user = to_user,
        .dst_groups = to_groups,
        .n_dst_groups = n_to_groups,
        .port = s->target_port,
        .proto = s->proto,
    };
    unsigned line = 0;
    if (p->policy && policy_allows(p->policy, &q, &line)) return true;
    char msg[96], why[128];
    snprintf(msg, sizeof msg, "denied by policy (to %s)", to_user);
    if (line)
        snprintf(why, sizeof why, "%s (rule at line %u)", msg, line);
    else
        snprintf(why, sizeof why, "%s (no rule allows it)", msg);
    s_outbound_denied(s, msg, why);
    return false;
}

static int s_outbound_socket(stream_t *s, uint32_t ip, int type)
{
    /* The forwarder host's loopback (its Redis, its status ports) is not
     * part of the intranet. A lab whose pool is itself on loopback is the
     * one exception. */
    if (s_loopback(ip) && !(s->a->ip[0] && s_loopback(s->a->ip_n))) {
        s_outbound_denied(s, "the gateway's loopback is not reachable", "loopback target");
        return -1;
    }
    if (!s_device_to_device_ok(s, ip)) return -1;
    int fd = socket(AF_INET, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        s_outbound_fail(s, RB__TUNNEL__STREAM_ERROR__STREAM_FAILED, strerror(errno));
        return -1;
    }
    if (s->a->ip[0]) {
        /* FREEBIND: with an AnyIP route the address is local without being
         * on an interface; it also lets a lab bind a loopback address. */
        int one = 1;
        setsockopt(fd, IPPROTO_IP, IP_FREEBIND, &one, sizeof one);
        struct sockaddr_in me = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(s->a->ip_n)};
        if (bind(fd, (struct sockaddr *)&me, sizeof me) < 0) {
            int e = errno;
            close(fd);
            s_outbound_fail(s, RB__TUNNEL__STREAM_ERROR__STREAM_FAILED, strerror(e));
            return -1;
        }
    }
    char ipbuf[16];
    snprintf(s->peer_desc, sizeof s->peer_desc, "%s:%u", rb_ip_format(ip, ipbuf), s->target_port);
    return fd;
}

/* A datagram for the device on flow s (dropped and counted when the flow
 * was denied or refused, the session's credit is spent, or the edge cannot
 * take it). Datagrams spend the session's credit as DATA does, so a device
 * that does not read, or an edge that falls behind, holds at most
 * RB_SESSION_WINDOW of them on the link. */
static void s_datagram_to_device(stream_t *s, const uint8_t *buf, size_t n)
{
    s->last_ms = rb_now_ms();
    if (s->denied || s->refused || s->a->down_held ||
        s_send_frame(s->p, s->peer, RB_FRAME_DATAGRAM, 0, s->id, buf, n) < 0) {
        s->dropped++;
        rb_metric_inc(s->p->m_udp_dropped);
        return;
    }
    s_down_spent(s, n);
    s->to_device += n;
    rb_metric_add(s->p->m_to_device, (double)n);
}

static void s_on_outbound_datagram(rb_loop_t *loop, int fd, unsigned events, void *arg)
{
    stream_t *s = arg;
    static uint8_t buf[RB_FRAME_MAX_DATA];
    for (int i = 0; i < UDP_BURST; i++) {
        ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            continue; /* an ICMP error (nobody on that port): UDP goes on */
        }
        s_datagram_to_device(s, buf, (size_t)n);
    }
}

/* The device's UDP flow to ip:port: a connected socket of its own, so
 * the answers come back to this flow alone. */
static void s_outbound_flow(stream_t *s, uint32_t ip)
{
    int fd = s_outbound_socket(s, ip, SOCK_DGRAM);
    if (fd < 0) return;
    struct sockaddr_in to = {
        .sin_family = AF_INET, .sin_addr.s_addr = htonl(ip), .sin_port = htons(s->target_port)};
    if (connect(fd, (struct sockaddr *)&to, sizeof to) < 0) {
        int e = errno;
        close(fd);
        s_outbound_fail(s, s_errno_error(e), strerror(e));
        return;
    }
    if (rb_loop_add_fd(s->p->loop, fd, RB_EV_READ, s_on_outbound_datagram, s) < 0) {
        close(fd);
        s_outbound_fail(s, RB__TUNNEL__STREAM_ERROR__STREAM_FAILED, "cannot watch the socket");
        return;
    }
    s->fd = fd;
    s_outbound_ok(s, fd);
}

/* The device's outbound connection to ip:port. */
static void s_outbound_connect(stream_t *s, uint32_t ip)
{
    plane_t *p = s->p;
    if (s->proto == POLICY_UDP) {
        s_outbound_flow(s, ip);
        return;
    }
    int fd = s_outbound_socket(s, ip, SOCK_STREAM);
    if (fd < 0) return;
    struct sockaddr_in to = {
        .sin_family = AF_INET, .sin_addr.s_addr = htonl(ip), .sin_port = htons(s->target_port)};
    if (connect(fd, (struct sockaddr *)&to, sizeof to) < 0 && errno != EINPROGRESS) {
        int e = errno;
        close(fd);
        s_outbound_fail(s, s_errno_error(e), strerror(e));
        return;
    }
    s->pump = rb_pump_new(p->loop, fd, true, &s_pump_handlers, s);
    if (!s->pump) {
        close(fd);
        s_outbound_fail(s, RB__TUNNEL__STREAM_ERROR__STREAM_FAILED, "out of memory");
        return;
    }
    if (s->a->down_held) rb_pump_hold_input(s->pump, true);
    s->connect_timer =
        rb_loop_add_timer(p->loop, p->cfg->connect_timeout_ms, false, s_connect_timeout, s);
    rb_imap_put(p->by_serial, s->serial, s);
    /* What the device sent while its name was looked up: the connecting
     * pump keeps it for the socket, within the credit it already had. */
    if (s->early.len || s->early_fin) {
        int rc = rb_pump_peer_data(s->pump, s->early_fin ? RB_FRAME_FIN : 0,
                                   (const uint8_t *)s->early.data, s->early.len);
        rb_buf_free(&s->early);
        if (rc == RB_PUMP_OVERRUN)
            s_outbound_fail(s, RB__TUNNEL__STREAM_ERROR__STREAM_FAILED, "out of memory");
    }
}

static void s_resolved(void *arg, uint64_t token, int err, uint32_t ip)
{
    plane_t *p = arg;
    stream_t *s = rb_imap_get(p->by_serial, token);
    if (!s) return; /* the stream ended while the name was looked up */
    rb_imap_del(p->by_serial, token);
    s->resolving = false;
    if (err) {
        s_outbound_fail(s, RB__TUNNEL__STREAM_ERROR__STREAM_NO_NAME, gai_strerror(err));
        return;
    }
    s_outbound_connect(s, ip);
}

/* ------------------------------------------------------------------ */
/* Attachments and listeners                                           */

static void s_listener_free(plane_t *p, listener_t *l)
{
    rb_loop_del_fd(p->loop, l->fd);
    close(l->fd);
    rb_imap_destroy(&l->flows);
    free(l);
}

/* Ends every stream of a session; the edge that carried each is told, in
 * case it still holds its side. */
static void s_end_streams(attach_t *a, const char *why)
{
    while (a->streams)
        s_stream_cut(a->streams, why);
}

static void s_attach_free(plane_t *p, attach_t *a, const char *why)
{
    s_end_streams(a, why);
    while (a->listeners) {
        listener_t *l = a->listeners;
        a->listeners = l->next;
        s_listener_free(p, l);
    }
    rb_smap_del(p->by_session, a->session_id, a);
    if (a->ip[0] && rb_imap_get(p->by_ip, a->ip_n) == a) rb_imap_del(p->by_ip, a->ip_n);
    rb_debug("detached", "session %s (user '%s', %s): %s", a->session_id, a->user,
             a->ip[0] ? a->ip : "no address", why);
    for (size_t i = 0; i < a->ngroups; i++)
        free(a->groups[i]);
    free(a->groups);
    free(a->session_id);
    free(a->user);
    free(a);
    rb_metric_set(p->m_attached, (double)rb_smap_count(p->by_session));
}

static attach_t *s_attach_find(plane_t *p, const char *session_id)
{
    return rb_smap_get(p->by_session, session_id);
}

/* The query the policy judges for a connection from src to a's port. */
static bool s_allowed(plane_t *p, attach_t *a, uint32_t src, uint16_t port, int proto,
                      char *src_user, size_t src_user_len, unsigned *line)
{
    const char *const *groups = NULL;
    size_t ngroups = 0;
    const char *su = p->cfg->user_of_ip
                         ? p->cfg->user_of_ip(p->cfg->lookup_arg, src, &groups, &ngroups)
                         : NULL;
    snprintf(src_user, src_user_len, "%s", su ? su : "");
    policy_query_t q = {
        .src_ip = src,
        .src_user = su,
        .src_groups = su ? groups : NULL,
        .n_src_groups = su ? ngroups : 0,
        .dst_user = a->user,
        .dst_groups = (const char *const *)a->groups,
        .n_dst_groups = a->ngroups,
        .port = port,
        .proto = proto,
    };
    *line = 0;
    return p->policy && policy_allows(p->policy, &q, line);
}

static void s_open_to_device(stream_t *s, uint16_t port, const char *peer_ip, unsigned peer_port,
                             const uint8_t *early, size_t early_len)
{
    Rb__Fwd__LinkControl m = RB__FWD__LINK_CONTROL__INIT;
    Rb__Fwd__Open o = RB__FWD__OPEN__INIT;
    o.link_id = s->id;
    o.session_id = s->a->session_id;
    o.proto = s->proto == POLICY_UDP ? RB__TUNNEL__PROTO__PROTO_UDP : RB__TUNNEL__PROTO__PROTO_TCP;
    o.port = port;
    o.peer_addr = (char *)peer_ip;
    o.peer_port = peer_port;
    o.peer_user = s->src_user;
    o.early_data.data = (uint8_t *)early;
    o.early_data.len = early_len;
    m.msg_case = RB__FWD__LINK_CONTROL__MSG_OPEN;
    m.open = &o;
    s_send_control(s->p, s->peer, &m);
}

/* Even ids are counted for the whole forwarder, not per edge link: an
 * edge we dropped (silence) may still hold streams of its old link until
 * our HelloAck makes it reset them, and a new stream must not take one of
 * their ids. */
static uint32_t s_next_id(plane_t *p, peer_t *peer)
{
    do {
        p->next_id += 2;
        if (p->next_id == 0) p->next_id = 2;
    } while (rb_imap_get(peer->streams, p->next_id));
    return p->next_id;
}

static void s_on_accept(rb_loop_t *loop, int lfd, unsigned events, void *arg)
{
    listener_t *l = arg;
    attach_t *a = l->a;
    plane_t *p = l->p;
    struct sockaddr_in src;
    socklen_t slen = sizeof src;
    int fd = accept4(lfd, (struct sockaddr *)&src, &slen, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
        /* Out of descriptors: the listener stays readable, so retrying at
         * once would spin. Pause it; the kernel queues meanwhile. */
        if (errno == EMFILE || errno == ENFILE) {
            rb_warn("accept_paused", "session %s port %u: %s", a->session_id, l->port,
                    strerror(errno));
            rb_loop_pause_fd(loop, lfd, ACCEPT_PAUSE_MS);
        }
        return;
    }
    char src_user[NAME_MAX_LEN + 1], desc[64];
    unsigned line;
    s_addr_str(&src, desc, sizeof desc);
    uint32_t sip = ntohl(src.sin_addr.s_addr);
    bool ok = s_allowed(p, a, sip, l->port, POLICY_TCP, src_user, sizeof src_user, &line);
    stream_t tmp = {.p = p,
                    .a = a,
                    .kind = K_INBOUND,
                    .proto = POLICY_TCP,
                    .target_port = l->port,
                    .start_ms = rb_now_ms()};
    snprintf(tmp.peer_desc, sizeof tmp.peer_desc, "%s", desc);
    snprintf(tmp.src_user, sizeof tmp.src_user, "%s", src_user);
    const char *why = NULL;
    if (!ok)
        why = line ? "denied by policy" : "no policy rule allows it";
    else if (a->nstreams - a->ndenied >= p->cfg->max_streams)
        why = "too many streams on the session";
    else if (!a->peer)
        why = "the session's edge is gone";
    if (why) {
        struct linger lg = {1, 0};
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        close(fd);
        rb_metric_inc(ok ? p->m_inbound_refused : p->m_inbound_denied);
        char reason[96];
        if (line)
            snprintf(reason, sizeof reason, "%s (rule at line %u)", why, line);
        else
            snprintf(reason, sizeof reason, "%s", why);
        s_audit(&tmp, ok ? "refused" : "denied", reason);
        return;
    }
    stream_t *s = s_stream_new(p, a, a->peer, s_next_id(p, a->peer), K_INBOUND, POLICY_TCP);
    if (!s) {
        close(fd);
        return;
    }
    s->target_port = l->port;
    snprintf(s->peer_desc, sizeof s->peer_desc, "%s", desc);
    snprintf(s->src_user, sizeof s->src_user, "%s", src_user);
    s->pump = rb_pump_new(loop, fd, false, &s_pump_handlers, s);
    if (!s->pump) {
        close(fd);
        s_stream_free(s, "failed", "out of memory");
        return;
    }
    if (a->down_held) rb_pump_hold_input(s->pump, true);
    char ip[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &src.sin_addr, ip, sizeof ip);
    /* A client that speaks first has usually sent its first bytes by now:
     * they ride in the Open, so the device has them with StreamOpen and
     * writes them as soon as its local connect completes (sent after the
     * Open, they waited for every process on the way to take its turn). */
    uint8_t early[RB_LINK_EARLY_MAX];
    ssize_t n = a->down_held ? -1 : recv(fd, early, sizeof early, MSG_DONTWAIT);
    size_t early_len = n > 0 ? (size_t)n : 0;
    s_open_to_device(s, l->port, ip, ntohs(src.sin_port), early, early_len);
    if (early_len) {
        rb_pump_note_sent(s->pump, early_len, false);
        s_down_spent(s, early_len);
    }
}

/* ---- UDP: one flow per internal (address, port) per exposed port ---- */

static uint64_t s_flow_key(const struct sockaddr_in *src)
{
    return (uint64_t)ntohl(src->sin_addr.s_addr) << 16 | ntohs(src->sin_port);
}

static void s_on_datagram(rb_loop_t *loop, int fd, unsigned events, void *arg)
{
    listener_t *l = arg;
    plane_t *p = l->p;
    attach_t *a = l->a;
    static uint8_t buf[RB_FRAME_MAX_DATA];
    for (int i = 0; i < UDP_BURST; i++) {
        struct sockaddr_in src;
        socklen_t slen = sizeof src;
        ssize_t n = recvfrom(fd, buf, sizeof buf, MSG_DONTWAIT, (struct sockaddr *)&src, &slen);
        if (n < 0) return;
        uint64_t key = s_flow_key(&src);
        stream_t *s = rb_imap_get(l->flows, key);
        if (!s) {
            char src_user[NAME_MAX_LEN + 1];
            unsigned line;
            bool ok = s_allowed(p, a, ntohl(src.sin_addr.s_addr), l->port, POLICY_UDP, src_user,
                                sizeof src_user, &line);
            /* Denied flows do not use the session's stream quota: a sprayer
             * must not lock out the sources the policy allows. */
            if (!a->peer || (ok && a->nstreams - a->ndenied >= p->cfg->max_streams) ||
                (!ok && l->denied >= DENIED_FLOWS_MAX)) {
                rb_metric_inc(p->m_udp_dropped);
                continue;
            }
            s = s_stream_new(p, a, a->peer, s_next_id(p, a->peer), K_INBOUND, POLICY_UDP);
            if (!s) continue;
            if (rb_imap_put(l->flows, key, s) < 0) {
                s_stream_free(s, NULL, NULL);
                continue;
            }
            s->l = l;
            s->src = src;
            s->target_port = l->port;
            s_addr_str(&src, s->peer_desc, sizeof s->peer_desc);
            snprintf(s->src_user, sizeof s->src_user, "%s", src_user);
            /* A denied flow is kept until it idles out: one audit line for
             * the whole flow, however many datagrams it sends. */
            s->denied = !ok;
            if (!ok) {
                l->denied++;
                a->ndenied++;
            }
            if (ok) {
                char ip[INET_ADDRSTRLEN];
                inet_ntop(AF_INET, &src.sin_addr, ip, sizeof ip);
                s_open_to_device(s, l->port, ip, ntohs(src.sin_port), NULL, 0);
            } else {
                rb_metric_inc(p->m_inbound_denied);
            }
        }
        s_datagram_to_device(s, buf, (size_t)n);
    }
}

/* A datagram of the device's: an inbound flow answers its internal peer
 * from the exposed port; an outbound one has a connected socket. */
static void s_datagram_from_device(stream_t *s, const uint8_t *data, size_t len)
{
    s->last_ms = rb_now_ms();
    ssize_t n =
        s->l ? sendto(s->l->fd, data, len, MSG_DONTWAIT, (struct sockaddr *)&s->src, sizeof s->src)
             : send(s->fd, data, len, MSG_DONTWAIT);
    if (n < 0) {
        s->dropped++;
        rb_metric_inc(s->p->m_udp_dropped);
        return;
    }
    s->from_device += len;
    rb_metric_add(s->p->m_from_device, (double)len);
}

static listener_t *s_listen(plane_t *p, attach_t *a, int proto, uint16_t port)
{
    int fd =
        socket(AF_INET,
               (proto == POLICY_UDP ? SOCK_DGRAM : SOCK_STREAM) | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return NULL;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(fd, IPPROTO_IP, IP_FREEBIND, &one, sizeof one);
    struct sockaddr_in sa = {
        .sin_family = AF_INET, .sin_addr.s_addr = htonl(a->ip_n), .sin_port = htons(port)};
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 ||
        (proto == POLICY_TCP && listen(fd, 128) < 0)) {
        rb_warn("listen_failed", "session %s (user '%s'): %s %s:%u: %s", a->session_id, a->user,
                s_proto_name(proto), a->ip, port, strerror(errno));
        close(fd);
        return NULL;
    }
    listener_t *l = calloc(1, sizeof *l);
    if (!l || (proto == POLICY_UDP && !(l->flows = rb_imap_new()))) {
        free(l);
        close(fd);
        return NULL;
    }
    l->p = p;
    l->a = a;
    l->fd = fd;
    l->proto = proto;
    l->port = port;
    if (rb_loop_add_fd(p->loop, fd, RB_EV_READ, proto == POLICY_UDP ? s_on_datagram : s_on_accept,
                       l) < 0) {
        close(fd);
        rb_imap_destroy(&l->flows);
        free(l);
        return NULL;
    }
    return l;
}

/* Makes a's listeners the set the device exposes: closes the ports no
 * longer exposed (with their flows), opens the new ones. */
static void s_set_ports(plane_t *p, attach_t *a, Rb__Tunnel__ExposedPort **ports, size_t n)
{
    for (listener_t **pp = &a->listeners; *pp;) {
        listener_t *l = *pp;
        bool keep = false;
        for (size_t i = 0; i < n && !keep; i++) {
            int proto = ports[i]->proto == RB__TUNNEL__PROTO__PROTO_UDP ? POLICY_UDP : POLICY_TCP;
            keep = proto == l->proto && ports[i]->port == l->port;
        }
        if (keep) {
            pp = &l->next;
            continue;
        }
        *pp = l->next;
        for (stream_t *s = a->streams, *next; s; s = next) {
            next = s->next;
            if (s->l == l) s_stream_cut(s, "port no longer exposed");
        }
        s_listener_free(p, l);
    }
    if (!a->ip[0]) return; /* no address: nothing to listen on */
    for (size_t i = 0; i < n; i++) {
        int proto = ports[i]->proto == RB__TUNNEL__PROTO__PROTO_UDP ? POLICY_UDP : POLICY_TCP;
        bool have = false;
        for (listener_t *l = a->listeners; l && !have; l = l->next)
            have = l->proto == proto && l->port == ports[i]->port;
        if (have) continue;
        listener_t *l = s_listen(p, a, proto, (uint16_t)ports[i]->port);
        if (!l) continue;
        l->next = a->listeners;
        a->listeners = l;
    }
}

/* ------------------------------------------------------------------ */
/* Messages from the edges                                             */

static bool s_serves(const plane_t *p, uint32_t ip)
{
    if (p->ncidrs == 0) return true;
    for (size_t i = 0; i < p->ncidrs; i++)
        if (rb_cidr_contains(&p->cidrs[i], ip)) return true;
    return false;
}

static void s_on_attach(plane_t *p, peer_t *peer, const Rb__Fwd__Attach *m)
{
    const char *sid = m->session_id ? m->session_id : "";
    const char *user = m->user ? m->user : "";
    const char *ipstr = m->ip ? m->ip : "";
    uint32_t ip = 0;
    const char *bad = NULL;
    if (!*sid || !rb_str_printable(sid, ID_MAX))
        bad = "bad session id";
    else if (!*user || !rb_str_printable(user, NAME_MAX_LEN))
        bad = "bad user name";
    else if (*ipstr && rb_ip_parse(ipstr, &ip) < 0)
        bad = "bad address";
    else if (m->n_groups > MAX_GROUPS)
        bad = "too many groups";
    else if (m->n_ports > MAX_PORTS)
        bad = "too many ports";
    for (size_t i = 0; !bad && i < m->n_groups; i++)
        if (!m->groups[i] || !rb_str_printable(m->groups[i], NAME_MAX_LEN)) bad = "bad group name";
    for (size_t i = 0; !bad && i < m->n_ports; i++) {
        if (m->ports[i]->port < 1 || m->ports[i]->port > 65535)
            bad = "bad port";
        else if (m->ports[i]->proto != RB__TUNNEL__PROTO__PROTO_TCP &&
                 m->ports[i]->proto != RB__TUNNEL__PROTO__PROTO_UDP)
            bad = "bad protocol";
    }
    if (bad) {
        rb_metric_inc(p->m_bad_link);
        rb_warn("bad_attach", "edge %s: Attach refused: %s", peer->name, bad);
        return;
    }
    if (*ipstr && !s_serves(p, ip)) {
        rb_debug("attach_elsewhere", "session %s at %s: not in serve_cidrs", sid, ipstr);
        return;
    }
    attach_t *a = s_attach_find(p, sid);
    /* A session with a new address (its lease was lost and granted
     * again): its listeners and streams belong to the old one. */
    if (a && (a->ip_n != ip || !a->ip[0] != !*ipstr)) {
        s_attach_free(p, a, "its address changed");
        a = NULL;
    }
    /* The address changed hands (a transfer, or an ended session whose
     * Detach is late): the newer attachment wins. */
    attach_t *holder = *ipstr ? rb_imap_get(p->by_ip, ip) : NULL;
    if (holder && holder != a) s_attach_free(p, holder, "its address was attached again");
    if (!a) {
        a = calloc(1, sizeof *a);
        if (!a || !(a->session_id = strdup(sid)) || !(a->user = strdup(user)) ||
            rb_smap_put(p->by_session, a->session_id, a, NULL) < 0) {
            if (a) {
                free(a->session_id);
                free(a->user);
                free(a);
            }
            rb_error("attach", "out of memory for session %s", sid);
            return;
        }
        snprintf(a->ip, sizeof a->ip, "%s", ipstr);
        a->ip_n = ip;
        if (*ipstr && rb_imap_put(p->by_ip, ip, a) < 0) {
            s_attach_free(p, a, "out of memory");
            return;
        }
    }
    /* A resume moves the session to another edge: its streams died with
     * the old connection, so they go. */
    if (a->peer && a->peer != peer) s_end_streams(a, "the session moved to another edge");
    a->peer = peer;
    char **g = calloc(m->n_groups + 1, sizeof *g);
    if (g) {
        size_t n = 0;
        for (size_t i = 0; i < m->n_groups; i++)
            if ((g[n] = strdup(m->groups[i]))) n++;
        for (size_t i = 0; i < a->ngroups; i++)
            free(a->groups[i]);
        free(a->groups);
        a->groups = g;
        a->ngroups = n;
    }
    s_set_ports(p, a, m->ports, m->n_ports);
    rb_metric_set(p->m_attached, (double)rb_smap_count(p->by_session));
    rb_debug("attached", "session %s (user '%s', %s) via edge %s, %zu ports", sid, user,
             *ipstr ? ipstr : "no address", peer->name, m->n_ports);
}

static void s_on_detach(plane_t *p, peer_t *peer, const Rb__Fwd__Detach *m)
{
    attach_t *a = s_attach_find(p, m->session_id ? m->session_id : "");
    /* Only the edge that carries the session may let it go: a Detach from
     * the edge a device just left must not undo its resume elsewhere. */
    if (!a || a->peer != peer) return;
    s_attach_free(p, a, m->reason && *m->reason ? m->reason : "detached");
}

static void s_on_open(plane_t *p, peer_t *peer, const Rb__Fwd__Open *m)
{
    uint32_t id = m->link_id;
    if (id == 0 || (id & 1) == 0 || rb_imap_get(peer->streams, id)) {
        rb_metric_inc(p->m_bad_link);
        rb_warn("bad_open", "edge %s: Open with link id %u refused (even, zero or in use)",
                peer->name, id);
        if (id && !rb_imap_get(peer->streams, id))
            s_send_result(p, peer, id, RB__TUNNEL__STREAM_ERROR__STREAM_FAILED, "bad link id", NULL,
                          0);
        return;
    }
    attach_t *a = s_attach_find(p, m->session_id ? m->session_id : "");
    const char *host = m->host ? m->host : "";
    if (!a || a->peer != peer) {
        s_send_result(p, peer, id, RB__TUNNEL__STREAM_ERROR__STREAM_UNREACHABLE,
                      "the session is not attached to this forwarder", NULL, 0);
        return;
    }
    if (m->proto != RB__TUNNEL__PROTO__PROTO_TCP && m->proto != RB__TUNNEL__PROTO__PROTO_UDP) {
        s_send_result(p, peer, id, RB__TUNNEL__STREAM_ERROR__STREAM_FAILED, "unknown protocol",
                      NULL, 0);
        return;
    }
    int proto = m->proto == RB__TUNNEL__PROTO__PROTO_UDP ? POLICY_UDP : POLICY_TCP;
    if (!*host || !rb_str_printable(host, 255) || m->port < 1 || m->port > 65535) {
        s_send_result(p, peer, id, RB__TUNNEL__STREAM_ERROR__STREAM_FAILED, "bad host or port",
                      NULL, 0);
        return;
    }
    if (a->nstreams - a->ndenied >= p->cfg->max_streams) {
        s_send_result(p, peer, id, RB__TUNNEL__STREAM_ERROR__STREAM_LIMIT,
                      "too many streams on the session", NULL, 0);
        return;
    }
    stream_t *s = s_stream_new(p, a, peer, id, K_OUTBOUND, proto);
    if (!s) {
        s_send_result(p, peer, id, RB__TUNNEL__STREAM_ERROR__STREAM_FAILED, "out of memory", NULL,
                      0);
        return;
    }
    s->target_port = (uint16_t)m->port;
    snprintf(s->target, sizeof s->target, "%s", host);
    uint32_t ip;
    if (rb_ip_parse(host, &ip) == 0 ||
        (p->cfg->ip_of_name && p->cfg->ip_of_name(p->cfg->lookup_arg, host, &ip) == 0)) {
        s_outbound_connect(s, ip);
        return;
    }
    s->resolving = rb_imap_put(p->by_serial, s->serial, s) == 0 &&
                   resolve_start(p->resolve, host, s->serial, a->user) == 0;
    if (!s->resolving) {
        s_outbound_fail(s, RB__TUNNEL__STREAM_ERROR__STREAM_FAILED,
                        resolve_pending(p->resolve, a->user) >= RESOLVE_PER_OWNER
                            ? "too many name lookups for this user at once"
                            : "too many name lookups");
    }
}

static void s_on_open_result(plane_t *p, peer_t *peer, const Rb__Fwd__OpenResult *m)
{
    stream_t *s = rb_imap_get(peer->streams, m->link_id);
    if (!s || s->kind != K_INBOUND) return; /* ended meanwhile */
    /* One verdict per connection or flow, as in its audit line: the
     * policy's (denied), else the device's (allowed or refused). */
    if (s->open_ok || s->refused) return;
    if (m->error == RB__TUNNEL__STREAM_ERROR__STREAM_OK) {
        s->open_ok = true;
        rb_metric_inc(p->m_inbound_allowed);
        return;
    }
    rb_metric_inc(p->m_inbound_refused);
    char why[160];
    snprintf(why, sizeof why, "the device refused: %.120s", m->message ? m->message : "");
    if (s->proto == POLICY_UDP) {
        s->refused = true; /* dropped until it idles out */
        /* The edge has no stream to report its datagrams for. */
        s_down_relayed(s, s->down_out);
        return;
    }
    s_stream_free(s, "refused", why);
}

static void s_on_relayed(plane_t *p, peer_t *peer, const Rb__Fwd__Relayed *m)
{
    if (m->n_link_ids != m->n_bytes) {
        rb_metric_inc(p->m_bad_link);
        rb_warn("bad_relayed", "edge %s: Relayed with %zu ids and %zu counts", peer->name,
                m->n_link_ids, m->n_bytes);
        return;
    }
    for (size_t i = 0; i < m->n_link_ids; i++) {
        stream_t *s = rb_imap_get(peer->streams, m->link_ids[i]);
        if (!s) continue; /* ended meanwhile: its bytes were given back then */
        uint64_t n = m->bytes[i];
        if (n > s->down_out) {
            rb_metric_inc(p->m_bad_link);
            rb_warn("bad_relayed", "edge %s: stream %u relayed %llu bytes of %llu sent", peer->name,
                    s->id, (unsigned long long)n, (unsigned long long)s->down_out);
            n = s->down_out;
        }
        s_down_relayed(s, n);
    }
}

static void s_peer_drop(plane_t *p, peer_t *peer, const char *why);
static peer_t *s_peer(plane_t *p, const rb_link_msg_t *m);

/* Returns the peer to go on with: a restarted edge (same routing id, new
 * instance) lost its streams; what we held for its old self goes first. */
static peer_t *s_on_hello(plane_t *p, peer_t *peer, const rb_link_msg_t *lm,
                          const Rb__Fwd__Hello *m)
{
    const char *refused = m->version != RB_LINK_VERSION ? "speaks another link version"
                          : m->instance == 0            ? "gave no instance"
                                                        : NULL;
    if (refused) {
        rb_metric_inc(p->m_bad_link);
        rb_warn("link_version", "edge %s: Hello refused: it %s (version %u, ours %u)", peer->name,
                refused, m->version, RB_LINK_VERSION);
        /* A peer we knew said Hello again as something we cannot take (an
         * edge restarted with another version under the same name): what
         * its old self held goes now, not at a silence its Hellos would
         * keep away. */
        if (peer->instance) {
            rb_info("edge_dropped", "edge %s said Hello again and was refused; what it held goes",
                    peer->name);
            s_peer_drop(p, peer, "it said Hello again and was refused");
            peer = s_peer(p, lm);
        }
        return peer;
    }
    if (peer->instance && m->instance != peer->instance) {
        rb_info("edge_restarted", "edge %s restarted; its old streams and sessions are dropped",
                peer->name);
        s_peer_drop(p, peer, "the edge restarted");
        peer = s_peer(p, lm);
        if (!peer) return NULL;
        peer->heard_ms = rb_now_ms();
    }
    if (peer->unhelloed) {
        rb_info("link_hello", "edge %s said Hello after %" PRIu64 " dropped messages", peer->name,
                peer->unhelloed);
        peer->unhelloed = 0;
    }
    peer->instance = m->instance;
    Rb__Fwd__LinkControl r = RB__FWD__LINK_CONTROL__INIT;
    Rb__Fwd__HelloAck ack = RB__FWD__HELLO_ACK__INIT;
    ack.version = RB_LINK_VERSION;
    ack.forwarder_id = (char *)p->cfg->forwarder_id;
    /* What the edge must attach again after: our restart, or our dropping
     * it (silent for PEER_SILENCE_MS), which it may not have noticed (a
     * pause, a partition: its own messages arrive first and say it is
     * heard). */
    ack.instance = p->instance + peer->epoch;
    ack.n_cidrs = p->ncidrs;
    ack.cidrs = p->cidr_text;
    r.msg_case = RB__FWD__LINK_CONTROL__MSG_HELLO_ACK;
    r.hello_ack = &ack;
    s_send_control(p, peer, &r);
    return peer;
}

static int s_send_relayed(plane_t *p, peer_t *peer, uint32_t *ids, uint32_t *bytes, size_t n)
{
    Rb__Fwd__LinkControl c;
    Rb__Fwd__Relayed m;
    rb_link_relayed(&c, &m, ids, bytes, n);
    return s_send_control(p, peer, &c);
}

/* The device's datagram on flow s is off the link (sent on or dropped):
 * its edge hears so per eighth of RB_LINK_DATAGRAM_WINDOW, for the whole
 * session at once, and sends more. (An attachment's streams all have its
 * edge: one from another edge replaces it with its streams.) What could not
 * be sent is told with the next datagram. */
static void s_up_taken(stream_t *s, size_t n)
{
    attach_t *a = s->a;
    s->up_taken += (uint32_t)n;
    a->up_taken += n;
    if (a->up_taken < RB_LINK_DATAGRAM_WINDOW / 8) return;
    uint32_t ids[RB_LINK_RELAYED_MAX], bytes[RB_LINK_RELAYED_MAX];
    for (stream_t *from = a->streams, *x; from; from = x) {
        size_t k = 0;
        for (x = from; x && k < RB_LINK_RELAYED_MAX; x = x->next) {
            if (!x->up_taken) continue;
            ids[k] = x->id;
            bytes[k++] = x->up_taken;
        }
        /* Unsent counts stay for the next try. */
        if (!k || s_send_relayed(s->p, s->peer, ids, bytes, k) < 0) return;
        for (stream_t *y = from; y != x; y = y->next) {
            a->up_taken -= y->up_taken;
            y->up_taken = 0;
        }
    }
}

/* Each stream's window bounds what the forwarder keeps for an internal
 * peer that does not read (or for a connect still waiting for its name),
 * but a session has up to max_streams of them (256 x 2 MiB). Past
 * max_held_per_session kept for one session, the stream holding the most
 * is reset: that frees the most, and it is the one whose peer reads least
 * (a stream stuck at its full window sends nothing more, so resetting the
 * stream that brings more would hit the streams still moving). Called
 * when a DATA frame leaves bytes waiting, so the sum is rarely taken. */
static size_t s_held(const stream_t *s)
{
    return s->pump ? rb_pump_pending(s->pump) : s->early.len;
}

static void s_check_held(plane_t *p, attach_t *a)
{
    uint64_t held = 0;
    size_t most_held = 0;
    stream_t *most = NULL;
    for (stream_t *x = a->streams; x; x = x->next) {
        size_t h = s_held(x);
        held += h;
        if (!most || h > most_held) {
            most = x;
            most_held = h;
        }
    }
    if (held <= p->cfg->max_held_per_session) return;
    rb_metric_inc(p->m_held_resets);
    rb_warn("session_held_full",
            "session %s (user '%s'): %" PRIu64 " bytes wait for internal peers that do not read "
            "(max_held_per_session_kib %" PRIu64 "); stream %u, holding %zu, reset",
            a->session_id, a->user, held, p->cfg->max_held_per_session / 1024, most->id, most_held);
    s_stream_cut(most, "the session's internal peers are not reading");
}

static void s_on_frame(plane_t *p, peer_t *peer, const rb_frame_t *f)
{
    stream_t *s = rb_imap_get(peer->streams, f->stream_id);
    if (!s) {
        /* Ended here already; the edge hears or heard why. A flow the
         * edge still sends on is reset (once): its datagrams would hold
         * the session's datagram window there for good. */
        if (f->type == RB_FRAME_DATAGRAM && peer->reset_id != f->stream_id) {
            s_send_frame(p, peer, RB_FRAME_DATA, RB_FRAME_RST, f->stream_id, NULL, 0);
            peer->reset_id = f->stream_id;
        }
        return;
    }
    switch (f->type) {
    case RB_FRAME_DATA:
        if (!s->pump) {
            if (f->flags & RB_FRAME_RST) {
                s_stream_free(s, s_verdict(s), "closed by the device");
                return;
            }
            /* A connect still waiting for its name: a device may send
             * before the open is answered, within its first window. */
            if (s->proto == POLICY_TCP && !s->early_fin &&
                s->early.len + f->len <= RB_STREAM_WINDOW &&
                rb_buf_append(&s->early, f->payload, f->len) == 0) {
                s->early_fin = (f->flags & RB_FRAME_FIN) != 0;
                if (f->len) s_check_held(p, s->a);
                return;
            }
            if (s->proto == POLICY_TCP) {
                rb_metric_inc(p->m_overruns);
                rb_warn("window_overrun",
                        "edge %s: stream %u sent past its window or its FIN before the open; reset",
                        peer->name, f->stream_id);
                s_send_frame(p, peer, RB_FRAME_DATA, RB_FRAME_RST, f->stream_id, NULL, 0);
                s_stream_free(s, "failed", "window overrun");
            }
            return;
        }
        switch (rb_pump_peer_data(s->pump, f->flags, f->payload, f->len)) {
        case RB_PUMP_GOING:
            if (rb_pump_pending(s->pump)) s_check_held(p, s->a);
            return;
        case RB_PUMP_OVER:
            s_stream_end(s, "reset by the device", (f->flags & RB_FRAME_RST) != 0);
            return;
        default:
            rb_metric_inc(p->m_overruns);
            rb_warn("window_overrun", "edge %s: stream %u sent more than its window; reset",
                    peer->name, f->stream_id);
            s_send_frame(p, peer, RB_FRAME_DATA, RB_FRAME_RST, f->stream_id, NULL, 0);
            s_stream_end(s, "window overrun", true);
            return;
        }
    case RB_FRAME_WINDOW:
        if (s->pump) rb_pump_peer_window(s->pump, rb_frame_window(f));
        return;
    case RB_FRAME_DATAGRAM:
        if (s->proto != POLICY_UDP) return;
        if ((s->l && !s->denied) || s->fd >= 0) {
            s_datagram_from_device(s, f->payload, f->len);
        } else {
            s->dropped++; /* a flow whose name is still being looked up */
            rb_metric_inc(p->m_udp_dropped);
        }
        s_up_taken(s, f->len);
        return;
    }
}

static peer_t *s_peer(plane_t *p, const rb_link_msg_t *m)
{
    for (peer_t *x = p->peers; x; x = x->next)
        if (x->rid_len == m->rid_len && memcmp(x->rid, m->rid, m->rid_len) == 0) return x;
    peer_t *x = calloc(1, sizeof *x);
    if (!x || !(x->streams = rb_imap_new())) {
        free(x);
        return NULL;
    }
    memcpy(x->rid, m->rid, m->rid_len);
    x->rid_len = m->rid_len;
    snprintf(x->name, sizeof x->name, "%s", m->rid_text);
    x->epoch = ++p->next_epoch;
    x->next = p->peers;
    p->peers = x;
    rb_info("edge_linked", "edge %s is on the data link", x->name);
    return x;
}

typedef struct {
    plane_t *p;
    peer_t *peer;
    const char *why;
} drop_t;

static void s_drop_attach(void *arg, const char *key, void *value)
{
    drop_t *d = arg;
    attach_t *a = value;
    /* Frees the by_session entry it is given, and nothing else of it. */
    if (a->peer == d->peer) s_attach_free(d->p, a, d->why);
}

static void s_drop_stream(void *arg, uint64_t key, void *value)
{
    drop_t *d = arg;
    stream_t *s = value;
    s_stream_free(s, s_verdict(s), d->why);
}

/* The edge fell silent or restarted (or the plane stops): its attachments
 * and every stream it carried go with it. */
static void s_peer_drop(plane_t *p, peer_t *peer, const char *why)
{
    drop_t d = {p, peer, why};
    rb_smap_each(p->by_session, s_drop_attach, &d);
    rb_imap_each(peer->streams, s_drop_stream, &d);
    for (peer_t **pp = &p->peers; *pp; pp = &(*pp)->next) {
        if (*pp == peer) {
            *pp = peer->next;
            break;
        }
    }
    rb_imap_destroy(&peer->streams);
    free(peer);
}

/* Until its Hello is accepted a peer has not shown which link version it
 * speaks, nor which start of its edge it is: what it sends is dropped.
 * An edge sends Hello first when it connects; messages before it come
 * from an edge we dropped for silence (its next Hello, within a second,
 * makes it attach again) or from something that is not an edge. */
static void s_before_hello(plane_t *p, peer_t *peer)
{
    rb_metric_inc(p->m_before_hello);
    if (peer->unhelloed++ == 0)
        rb_warn("link_before_hello", "edge %s: messages before its Hello are dropped", peer->name);
}

static void s_on_link(rb_loop_t *loop, void *sock, void *arg)
{
    plane_t *p = arg;
    for (int i = 0; i < 256; i++) {
        rb_link_msg_t m;
        rb_frame_t f;
        const char *why = NULL;
        int rc = rb_link_recv(sock, true, &m, &f, &why);
        if (rc == 0) return;
        if (rc < 0) {
            rb_metric_inc(p->m_bad_link);
            rb_warn("bad_link_message", "edge %s: %s; dropped", m.rid_len ? m.rid_text : "?", why);
            rb_link_msg_close(&m);
            continue;
        }
        peer_t *peer = m.rid_len ? s_peer(p, &m) : NULL;
        if (!peer) {
            rb_link_msg_close(&m);
            continue;
        }
        peer->heard_ms = rb_now_ms();
        if (f.type != RB_FRAME_CONTROL) {
            if (peer->instance)
                s_on_frame(p, peer, &f);
            else
                s_before_hello(p, peer);
            rb_link_msg_close(&m);
            continue;
        }
        Rb__Fwd__LinkControl *c = rb_link_control(&f);
        if (!c) {
            rb_metric_inc(p->m_bad_link);
            rb_warn("bad_link_message", "edge %s: undecodable control message; dropped",
                    peer->name);
            rb_link_msg_close(&m);
            continue;
        }
        if (!peer->instance && c->msg_case != RB__FWD__LINK_CONTROL__MSG_HELLO) {
            s_before_hello(p, peer);
            rb__fwd__link_control__free_unpacked(c, NULL);
            rb_link_msg_close(&m);
            continue;
        }
        switch (c->msg_case) {
        case RB__FWD__LINK_CONTROL__MSG_HELLO:
            s_on_hello(p, peer, &m, c->hello);
            break;
        case RB__FWD__LINK_CONTROL__MSG_ATTACH:
            s_on_attach(p, peer, c->attach);
            break;
        case RB__FWD__LINK_CONTROL__MSG_DETACH:
            s_on_detach(p, peer, c->detach);
            break;
        case RB__FWD__LINK_CONTROL__MSG_OPEN:
            s_on_open(p, peer, c->open);
            break;
        case RB__FWD__LINK_CONTROL__MSG_OPEN_RESULT:
            s_on_open_result(p, peer, c->open_result);
            break;
        case RB__FWD__LINK_CONTROL__MSG_RELAYED:
            s_on_relayed(p, peer, c->relayed);
            break;
        default:
            rb_metric_inc(p->m_bad_link);
            rb_warn("bad_link_message", "edge %s: message %d is not for a forwarder; dropped",
                    peer->name, (int)c->msg_case);
        }
        rb__fwd__link_control__free_unpacked(c, NULL);
        rb_link_msg_close(&m);
    }
}

/* ------------------------------------------------------------------ */
/* Timers                                                              */

typedef struct {
    plane_t *p;
    uint64_t now;
} idle_t;

/* Ends the idle UDP flows of one attachment (not the attachment). */
static void s_expire_flows(void *arg, const char *key, void *value)
{
    idle_t *c = arg;
    attach_t *a = value;
    for (stream_t *s = a->streams, *next; s; s = next) {
        next = s->next;
        if (s->proto != POLICY_UDP || c->now - s->last_ms < c->p->cfg->udp_idle_s * 1000ull)
            continue;
        s_stream_cut(s, "idle");
    }
}

static void s_on_tick(rb_loop_t *loop, void *arg)
{
    plane_t *p = arg;
    uint64_t now = rb_now_ms();
    for (peer_t *x = p->peers, *next; x; x = next) {
        next = x->next;
        if (now - x->heard_ms > PEER_SILENCE_MS) {
            rb_warn("edge_silent", "edge %s: nothing for %d s; its sessions are detached", x->name,
                    PEER_SILENCE_MS / 1000);
            s_peer_drop(p, x, "the edge fell silent");
        }
    }
    idle_t c = {p, now};
    rb_smap_each(p->by_session, s_expire_flows, &c);
}

/* ------------------------------------------------------------------ */
/* The plane                                                           */

static int s_load_policy(plane_t *p)
{
    if (!p->cfg->policy_file || !*p->cfg->policy_file) {
        rb_warn("no_policy", "no policy_file: every server-initiated connection is denied");
        return 0;
    }
    char err[512];
    policy_t *np = policy_load(p->cfg->policy_file, err, sizeof err);
    if (!np) {
        rb_error("policy", "%s", err);
        return -1;
    }
    policy_destroy(&p->policy);
    p->policy = np;
    rb_info("policy_loaded", "%s: %zu rules", p->cfg->policy_file, policy_rule_count(np));
    return 0;
}

int plane_reload_policy(plane_t *p)
{
    return s_load_policy(p);
}

static int s_parse_cidrs(plane_t *p, const char *list)
{
    if (!list || !*list) return 0;
    char *copy = strdup(list), *save = NULL;
    if (!copy) return -1;
    int rc = 0;
    for (char *t = strtok_r(copy, ", ", &save); t; t = strtok_r(NULL, ", ", &save)) {
        if (p->ncidrs == MAX_CIDRS || rb_cidr_parse(t, &p->cidrs[p->ncidrs]) < 0 ||
            !(p->cidr_text[p->ncidrs] = strdup(t))) {
            rb_error("serve_cidrs", "bad block '%s' (or more than %d)", t, MAX_CIDRS);
            rc = -1;
            break;
        }
        p->ncidrs++;
    }
    free(copy);
    return rc;
}

plane_t *plane_new(rb_loop_t *loop, const plane_config_t *cfg)
{
    plane_t *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->loop = loop;
    p->cfg = cfg;
    p->port = -1;
    /* A restarted forwarder must look new to the edges, so they attach
     * their sessions again. */
    p->instance = rb_wall_ms() << 16 ^ (uint64_t)getpid();
    p->by_session = rb_smap_new();
    p->by_ip = rb_imap_new();
    p->by_serial = rb_imap_new();
    if (!p->by_session || !p->by_ip || !p->by_serial || s_parse_cidrs(p, cfg->serve_cidrs) < 0 ||
        s_load_policy(p) < 0)
        goto fail;
    p->m_attached = rb_gauge("reachback_forwarder_attached_sessions", NULL,
                             "Sessions attached by edges, with their listeners");
    p->m_streams = rb_gauge("reachback_forwarder_streams", NULL, "TCP streams open");
    p->m_flows = rb_gauge("reachback_forwarder_udp_flows", NULL, "UDP flows open");
    p->m_to_device = rb_counter("reachback_forwarder_bytes_total", "direction=\"to_device\"",
                                "Stream and datagram bytes carried");
    p->m_from_device = rb_counter("reachback_forwarder_bytes_total", "direction=\"from_device\"",
                                  "Stream and datagram bytes carried");
    const char *h = "Server-initiated and device-to-device connections and flows by verdict";
    p->m_inbound_allowed =
        rb_counter("reachback_forwarder_inbound_total", "verdict=\"allowed\"", h);
    p->m_inbound_denied = rb_counter("reachback_forwarder_inbound_total", "verdict=\"denied\"", h);
    p->m_inbound_refused =
        rb_counter("reachback_forwarder_inbound_total", "verdict=\"refused\"", h);
    p->m_inbound_failed = rb_counter("reachback_forwarder_inbound_total", "verdict=\"failed\"", h);
    h = "Outbound connections made for devices";
    p->m_outbound_ok = rb_counter("reachback_forwarder_outbound_total", "result=\"ok\"", h);
    p->m_outbound_failed = rb_counter("reachback_forwarder_outbound_total", "result=\"failed\"", h);
    p->m_udp_dropped =
        rb_counter("reachback_forwarder_udp_dropped_total", NULL,
                   "Datagrams dropped (denied, refused, no edge, session credit spent, full)");
    p->m_overruns = rb_counter("reachback_forwarder_window_overruns_total", NULL,
                               "Streams reset because an edge sent more than the window");
    p->m_bad_link = rb_counter("reachback_forwarder_link_errors_total", NULL,
                               "Malformed or out-of-place messages on the data link");
    /* Apart from link errors: after a restart, an edge's messages in
     * flight land here, and an alert on errors should not fire for it. */
    p->m_before_hello =
        rb_counter("reachback_forwarder_link_before_hello_total", NULL,
                   "Data link messages dropped because their peer had not said Hello");
    p->m_held_resets = rb_counter(
        "reachback_forwarder_held_resets_total", NULL,
        "Streams reset: their session had max_held_per_session kept for peers not reading");
    p->resolve = resolve_new(loop, s_resolved, p);
    if (!p->resolve) goto fail;
    bool local = rb_zmq_endpoint_local(cfg->endpoint);
    p->sock =
        rb_zsock_bind_with(ZMQ_ROUTER, cfg->endpoint, local ? NULL : cfg->curve, rb_link_setup);
    if (!p->sock) goto fail;
    /* An edge that restarts reconnects with the same routing id before the
     * old connection is noticed dead: the new one must win. */
    int one = 1;
    zmq_setsockopt(p->sock, ZMQ_ROUTER_HANDOVER, &one, sizeof one);
    char ep[256];
    size_t eplen = sizeof ep;
    if (zmq_getsockopt(p->sock, ZMQ_LAST_ENDPOINT, ep, &eplen) == 0) {
        char *colon = strrchr(ep, ':');
        if (strncmp(ep, "tcp://", 6) == 0 && colon) p->port = atoi(colon + 1);
    }
    if (rb_loop_add_zsock(loop, p->sock, s_on_link, p) < 0) goto fail;
    p->tick = rb_loop_add_timer(loop, 1000, true, s_on_tick, p);
    if (!p->tick) goto fail;
    if (p->port >= 0)
        rb_info("data_link", "data link on %s (port %d)", cfg->endpoint, p->port);
    else
        rb_info("data_link", "data link on %s", cfg->endpoint);
    return p;
fail:
    plane_destroy(&p);
    return NULL;
}

void plane_destroy(plane_t **pp)
{
    if (!pp || !*pp) return;
    plane_t *p = *pp;
    *pp = NULL;
    while (p->peers)
        s_peer_drop(p, p->peers, "the forwarder is stopping");
    rb_loop_cancel_timer(p->loop, p->tick);
    if (p->sock) {
        rb_loop_del_zsock(p->loop, p->sock);
        rb_zsock_close(&p->sock);
    }
    resolve_destroy(&p->resolve);
    policy_destroy(&p->policy);
    rb_smap_destroy(&p->by_session);
    rb_imap_destroy(&p->by_ip);
    rb_imap_destroy(&p->by_serial);
    for (size_t i = 0; i < p->ncidrs; i++)
        free(p->cidr_text[i]);
    free(p);
}

void plane_session_down(plane_t *p, const char *session_id, const char *reason)
{
    attach_t *a = s_attach_find(p, session_id ? session_id : "");
    if (a) s_attach_free(p, a, reason && *reason ? reason : "session ended");
}

void plane_status_json(const plane_t *p, rb_buf_t *json)
{
    size_t edges = 0;
    for (peer_t *x = p->peers; x; x = x->next)
        edges++;
    rb_buf_printf(json,
                  "\"data_link_port\":%d,\"edges_linked\":%zu,\"attached_sessions\":%zu,"
                  "\"streams\":%zu,\"udp_flows\":%zu,\"policy_rules\":%zu",
                  p->port, edges, rb_smap_count(p->by_session), p->nstreams, p->nflows,
                  policy_rule_count(p->policy));
}
