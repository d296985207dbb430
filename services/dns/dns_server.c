/* dns_server: sockets, forwarding, events and status around dns_zone.
 * See dns_server.h. The UDP path is the hot one: a batch of queries is read
 * with one recvmmsg, answered into preallocated buffers, and sent with one
 * sendmmsg; nothing on it allocates. */
#include "dns_server.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "dns_wire.h"
#include "dns_zone.h"
#include "rb_buf.h"
#include "rb_cidr.h"
#include "rb_events.h"
#include "rb_log.h"
#include "rb_metrics.h"
#include "rb_status.h"
#include "rb_zmq.h"

#define UDP_BATCH 64
#define UDP_BATCHES_PER_WAKE 16   /* then let other fds run */
#define UDP_RBUF 2048             /* larger queries are cut: MSG_TRUNC -> FORMERR */
#define TCP_MAX_CONNS 256
/* Of which one address (IPv6: one /64) may hold. */
#define TCP_MAX_PER_SOURCE 32
#define TCP_IDLE_MS 10000         /* RFC 7766 6.2.3 suggests seconds, not minutes */
#define TCP_WBUF_HIGH (256 * 1024)/* stop reading a client that does not read */
#define TCP_WBUF_MAX (1024 * 1024) /* and close it when answers in flight pile up past this */
#define FWD_MAX_PENDING 2048
/* Of which one TCP connection may have; its further queries wait in its
 * buffer (RFC 7766 6.2.1.1). */
#define TCP_FWD_PER_CONN 64
#define FWD_TIMEOUT_MS 2000
#define FWD_EDNS_PAYLOAD 4096     /* asked of upstream for TCP clients */
#define UP_TCP_MAX 32             /* upstream TCP connections open at once (retries) */
#define UP_TCP_PER_CLIENT 4       /* of which one client connection may hold */
#define SAMPLE_EVERY 16           /* batches between duration samples */
/* A constant's value in a message's text. */
#define S_STR_(x) #x
#define S_STR(x) S_STR_(x)

typedef struct {
    dns_server_t *srv;
    int fd;                       /* -1: free slot */
    uint32_t gen;                 /* tells a reused slot from the one a forward was for */
    uint8_t *rbuf;                /* 2 + 65535 bytes */
    size_t rlen;
    rb_buf_t wbuf;
    uint64_t last_ms;
    unsigned events;              /* what the loop watches for */
    unsigned retries;             /* its forwards being retried over TCP upstream */
    unsigned forwards;            /* its queries waiting upstream */
    uint64_t source;              /* s_source_key of the client's address */
    rb_defer_t resume;            /* reads on once forwards drop below the cap */
} tconn_t;

typedef struct {
    bool used;
    bool tcp;
    bool strip_opt;               /* we added the OPT: the client must not see it */
    uint16_t client_id;
    uint16_t up_id;
    uint16_t flags;
    uint16_t max;                 /* the client's response limit */
    int conn;                     /* tcp: slot */
    uint32_t gen;
    struct sockaddr_storage addr; /* udp: client address */
    socklen_t addrlen;
    uint64_t deadline;
    uint8_t qname[DNS_NAME_MAX];
    uint16_t qname_len, qtype, qclass;
    uint8_t *query; /* tcp: what we sent, kept for a retry over TCP */
    uint16_t query_len;
    int up_conn;                  /* >= 0: being retried on this upstream TCP slot */
    bool wants_tcp;               /* waiting for a retry connection of its own */
    int prev, next;               /* FIFO in deadline order; -1 ends */
} fwd_t;

/* A forward retried to the upstream over TCP (RFC 7766) because its UDP
 * answer came back truncated. One connection per query: it is the rare
 * case, and a connection that owns one query cannot mix up answers. */
typedef struct {
    dns_server_t *srv;
    int fd;          /* -1: free slot */
    int fwd;         /* the forward it serves */
    int conn;        /* its client's connection slot, and that slot's gen then */
    uint32_t gen;
    uint8_t *buf;    /* the query going out, then 2 + 65535 bytes coming in */
    size_t len, off; /* sending: bytes to send, sent; reading: bytes read */
    bool reading;
} uptcp_t;

typedef struct {
    struct mmsghdr in[UDP_BATCH];
    struct iovec in_iov[UDP_BATCH];
    struct sockaddr_storage addr[UDP_BATCH];
    uint8_t rbuf[UDP_BATCH][UDP_RBUF];
    struct mmsghdr out[UDP_BATCH];
    struct iovec out_iov[UDP_BATCH];
    uint8_t wbuf[UDP_BATCH][DNS_EDNS_PAYLOAD];
} udp_batch_t;

/* A log line at most once a second for a class of noise, with a count. */
typedef struct {
    uint64_t last_ms;
    uint64_t count;
} ratelog_t;

enum { RC_NOERROR, RC_FORMERR, RC_SERVFAIL, RC_NXDOMAIN, RC_NOTIMP, RC_REFUSED, RC_BADVERS, RC_N };

struct dns_server {
    rb_loop_t *loop;
    dns_zone_t *zone;
    rb_events_t *events;
    rb_status_t *status;
    int udp_fd, tcp_fd, up_fd;
    int port;
    udp_batch_t *batch;
    uint8_t *scratch;              /* one TCP or relayed message */
    tconn_t conns[TCP_MAX_CONNS];
    size_t nconns;
    rb_timer_t *tick;
    fwd_t *fwd;
    uint16_t *fwd_by_id;           /* up id -> slot + 1 */
    int fwd_free;                  /* free list through next */
    int fwd_head, fwd_tail;
    size_t fwd_pending;
    struct sockaddr_storage up_addr; /* for retries over TCP */
    socklen_t up_addrlen;
    uptcp_t uptcp[UP_TCP_MAX];
    size_t nuptcp;
    size_t nwaiting; /* forwards with wants_tcp: the pump's work */
    uint64_t rng;
    uint64_t batches;
    ratelog_t log_bad, log_fwd_full, log_tcp_full, log_tcp_slow, log_up_tcp;
    rb_metric_t *m_rcode[RC_N];
    rb_metric_t *m_forwarded, *m_records, *m_duration, *m_dropped;
    rb_metric_t *m_tcp_retries, *m_tcp_failures, *m_tcp_refused;
};

/* ---- helpers ---- */

static int s_rc_index(unsigned rcode)
{
    switch (rcode) {
    case DNS_RCODE_NOERROR: return RC_NOERROR;
    case DNS_RCODE_FORMERR: return RC_FORMERR;
    case DNS_RCODE_SERVFAIL: return RC_SERVFAIL;
    case DNS_RCODE_NXDOMAIN: return RC_NXDOMAIN;
    case DNS_RCODE_NOTIMP: return RC_NOTIMP;
    case DNS_RCODE_REFUSED: return RC_REFUSED;
    case DNS_RCODE_BADVERS: return RC_BADVERS;
    default: return -1;
    }
}

static void s_count(dns_server_t *s, unsigned rcode)
{
    int i = s_rc_index(rcode);
    if (i >= 0) rb_metric_inc(s->m_rcode[i]);
}

static const char *s_addr_text(const struct sockaddr *sa, socklen_t len, char *out, size_t n)
{
    char host[64], port[16];
    if (!sa || getnameinfo(sa, len, host, sizeof host, port, sizeof port,
                           NI_NUMERICHOST | NI_NUMERICSERV) != 0)
        snprintf(out, n, "?");
    else
        snprintf(out, n, "%s:%s", host, port);
    return out;
}

static void s_ratelog(ratelog_t *r, const char *event, const char *what,
                      const struct sockaddr *from, socklen_t fromlen)
{
    r->count++;
    uint64_t now = rb_now_ms();
    if (r->last_ms && now - r->last_ms < 1000) return;
    char a[80];
    rb_warn(event, "%s from %s (%llu in the last second)", what,
            s_addr_text(from, fromlen, a, sizeof a), (unsigned long long)r->count);
    r->last_ms = now;
    r->count = 0;
}

/* "host:port" (IPv6 hosts in brackets) to a socket address. */
static int s_parse_hostport(const char *text, struct sockaddr_storage *ss, socklen_t *len)
{
    char host[128];
    const char *colon = text ? strrchr(text, ':') : NULL;
    if (!colon || colon == text || (size_t)(colon - text) >= sizeof host || !colon[1]) return -1;
    size_t hl = (size_t)(colon - text);
    memcpy(host, text, hl);
    host[hl] = '\0';
    if (host[0] == '[' && hl > 2 && host[hl - 1] == ']') {
        memmove(host, host + 1, hl - 2);
        host[hl - 2] = '\0';
    }
    for (const char *p = colon + 1; *p; p++)
        if (*p < '0' || *p > '9') return -1;
    if (atol(colon + 1) > 65535) return -1;
    struct addrinfo hints = {.ai_flags = AI_NUMERICSERV, .ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_DGRAM};
    struct addrinfo *ai = NULL;
    if (getaddrinfo(host, colon + 1, &hints, &ai) != 0 || !ai) return -1;
    memcpy(ss, ai->ai_addr, ai->ai_addrlen);
    *len = ai->ai_addrlen;
    freeaddrinfo(ai);
    return 0;
}

static void s_set_port(struct sockaddr_storage *ss, int port)
{
    if (ss->ss_family == AF_INET)
        ((struct sockaddr_in *)ss)->sin_port = htons((uint16_t)port);
    else
        ((struct sockaddr_in6 *)ss)->sin6_port = htons((uint16_t)port);
}

static int s_get_port(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0) return -1;
    return ss.ss_family == AF_INET ? ntohs(((struct sockaddr_in *)&ss)->sin_port)
                                   : ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
}

static uint16_t s_random16(dns_server_t *s)
{
    /* xorshift64*, seeded from getrandom: upstream ids must not be
     * guessable by someone who wants to spoof answers to our clients. */
    s->rng ^= s->rng >> 12;
    s->rng ^= s->rng << 25;
    s->rng ^= s->rng >> 27;
    return (uint16_t)((s->rng * 2685821657736338717ull) >> 48);
}

int dns_config_validate(void *cfgp, char *err, size_t errlen)
{
    const dns_config_t *cfg = cfgp;
    uint8_t name[DNS_NAME_MAX];
    struct sockaddr_storage ss;
    socklen_t sl;
    uint32_t ip;
    if (!cfg->suffix || dns_wire_name_from_text(cfg->suffix, name) <= 1) {
        snprintf(err, errlen, "key 'suffix': '%s' is not a domain name",
                 cfg->suffix ? cfg->suffix : "");
        return -1;
    }
    if (!cfg->listen || s_parse_hostport(cfg->listen, &ss, &sl) < 0) {
        snprintf(err, errlen, "key 'listen': '%s' is not host:port", cfg->listen ? cfg->listen : "");
        return -1;
    }
    if (cfg->upstream && cfg->upstream[0] && s_parse_hostport(cfg->upstream, &ss, &sl) < 0) {
        snprintf(err, errlen, "key 'upstream': '%s' is not host:port", cfg->upstream);
        return -1;
    }
    if (!cfg->ns_address || rb_ip_parse(cfg->ns_address, &ip) < 0) {
        snprintf(err, errlen, "key 'ns_address': '%s' is not an IPv4 address",
                 cfg->ns_address ? cfg->ns_address : "");
        return -1;
    }
    if (cfg->ttl < 0 || cfg->ttl > 86400) {
        snprintf(err, errlen, "key 'ttl': %ld is not in 0..86400", cfg->ttl);
        return -1;
    }
    if (cfg->pool && cfg->pool[0]) {
        char perr[200];
        rb_pool_t *p = rb_pool_new(cfg->pool, NULL, perr, sizeof perr);
        if (!p) {
            snprintf(err, errlen, "key 'pool': %s", perr);
            return -1;
        }
        rb_pool_destroy(&p);
    }
    return 0;
}

/* ---- forwarding ---- */

/* The pending list is kept in deadline order: every deadline is now plus
 * the same timeout, so appending is enough. */
static void s_fwd_append(dns_server_t *s, int i)
{
    fwd_t *f = &s->fwd[i];
    f->deadline = rb_now_ms() + FWD_TIMEOUT_MS;
    f->prev = s->fwd_tail;
    f->next = -1;
    if (s->fwd_tail >= 0)
        s->fwd[s->fwd_tail].next = i;
    else
        s->fwd_head = i;
    s->fwd_tail = i;
}

static void s_fwd_detach(dns_server_t *s, int i)
{
    fwd_t *f = &s->fwd[i];
    if (f->prev >= 0) s->fwd[f->prev].next = f->next; else s->fwd_head = f->next;
    if (f->next >= 0) s->fwd[f->next].prev = f->prev; else s->fwd_tail = f->prev;
}

static void s_uptcp_close(dns_server_t *s, int ui)
{
    uptcp_t *u = &s->uptcp[ui];
    if (u->fd < 0) return;
    rb_loop_del_fd(s->loop, u->fd);
    close(u->fd);
    u->fd = -1;
    free(u->buf);
    u->buf = NULL;
    if (u->fwd >= 0) s->fwd[u->fwd].up_conn = -1;
    u->fwd = -1;
    /* A slot closed meanwhile has a new gen, and its count started over. */
    if (s->conns[u->conn].gen == u->gen) s->conns[u->conn].retries--;
    s->nuptcp--;
}

static void s_set_waiting(dns_server_t *s, fwd_t *f, bool waiting)
{
    if (f->wants_tcp == waiting) return;
    f->wants_tcp = waiting;
    if (waiting)
        s->nwaiting++;
    else
        s->nwaiting--;
}

static void s_tcp_forward_done(dns_server_t *s, int ci, uint32_t gen);

static void s_fwd_unlink(dns_server_t *s, int i)
{
    fwd_t *f = &s->fwd[i];
    if (f->tcp) s_tcp_forward_done(s, f->conn, f->gen);
    s_fwd_detach(s, i);
    if (f->up_conn >= 0) s_uptcp_close(s, f->up_conn);
    free(f->query);
    f->query = NULL;
    s->fwd_by_id[f->up_id] = 0;
    f->used = false;
    s_set_waiting(s, f, false);
    f->next = s->fwd_free;
    s->fwd_free = i;
    s->fwd_pending--;
}

static void s_tcp_send(dns_server_t *s, int ci, const uint8_t *msg, size_t len);

/* Delivers a finished response to the client of a forward. */
static void s_fwd_deliver(dns_server_t *s, const fwd_t *f, const uint8_t *msg, size_t len)
{
    if (f->tcp) {
        if (f->conn >= 0 && s->conns[f->conn].fd >= 0 && s->conns[f->conn].gen == f->gen)
            s_tcp_send(s, f->conn, msg, len);
    } else if (sendto(s->udp_fd, msg, len, MSG_DONTWAIT, (const struct sockaddr *)&f->addr,
                      f->addrlen) < 0) {
        rb_metric_inc(s->m_dropped);
    }
}

/* SERVFAIL for a forward that got no usable answer. */
static void s_fwd_fail(dns_server_t *s, const fwd_t *f)
{
    dns_query_t q;
    memset(&q, 0, sizeof q);
    q.id = f->client_id;
    q.flags = f->flags;
    q.has_question = true;
    memcpy(q.qname, f->qname, f->qname_len);
    q.qname_len = f->qname_len;
    q.qtype = f->qtype;
    q.qclass = f->qclass;
    uint8_t out[DNS_UDP_PLAIN];
    dns_writer_t w;
    if (dns_writer_begin(&w, out, sizeof out, &q, DNS_RCODE_SERVFAIL, false) < 0) return;
    size_t len = dns_writer_finish(&w);
    s_count(s, DNS_RCODE_SERVFAIL);
    s_fwd_deliver(s, f, out, len);
}

/* Sends q upstream on behalf of a client. Returns 0, or -1 when it could
 * not (the caller answers SERVFAIL). */
static int s_forward(dns_server_t *s, const uint8_t *pkt, size_t len, const dns_query_t *q,
                     bool tcp, int conn, const struct sockaddr_storage *from, socklen_t fromlen)
{
    if (s->fwd_free < 0) {
        s_ratelog(&s->log_fwd_full, "dns_forward_full", "too many queries waiting upstream",
                  tcp ? NULL : (const struct sockaddr *)from, fromlen);
        return -1;
    }
    uint16_t id = 0;
    int tries = 0;
    do {
        id = s_random16(s);
    } while (s->fwd_by_id[id] && ++tries < 64);
    if (s->fwd_by_id[id]) return -1;
    /* Our copy: id rewritten, and for TCP clients an OPT record asking
     * for FWD_EDNS_PAYLOAD, so that the upstream answers in full over UDP
     * (it would truncate at 512, or at the size a client's own OPT names,
     * which is for UDP and means nothing over TCP). */
    uint8_t out[UDP_RBUF + 16];
    if (len > UDP_RBUF) return -1;
    memcpy(out, pkt, len);
    out[0] = (uint8_t)(id >> 8);
    out[1] = (uint8_t)id;
    size_t olen = len;
    bool added = false;
    if (tcp && !q->edns) {
        size_t n = dns_wire_add_opt(out, olen, sizeof out, FWD_EDNS_PAYLOAD);
        if (n) olen = n;
        added = n != 0;
    } else if (tcp && q->edns_size < FWD_EDNS_PAYLOAD && q->edns_size_off + 2u <= olen) {
        out[q->edns_size_off] = (uint8_t)(FWD_EDNS_PAYLOAD >> 8);
        out[q->edns_size_off + 1] = (uint8_t)(FWD_EDNS_PAYLOAD & 0xff);
    }
    /* A TCP client's answer may come back truncated, and only we can
     * retry it over TCP: keep what we sent. */
    uint8_t *copy = NULL;
    if (tcp && !(copy = malloc(olen))) return -1;
    if (copy) memcpy(copy, out, olen);
    if (send(s->up_fd, out, olen, MSG_DONTWAIT) < 0) {
        rb_debug("dns_forward_send", "send upstream: %s", strerror(errno));
        free(copy);
        return -1;
    }
    int i = s->fwd_free;
    fwd_t *f = &s->fwd[i];
    s->fwd_free = f->next;
    f->used = true;
    f->query = copy;
    f->query_len = (uint16_t)olen;
    f->up_conn = -1;
    f->tcp = tcp;
    f->strip_opt = added;
    f->client_id = q->id;
    f->up_id = id;
    f->flags = q->flags;
    f->max = (uint16_t)dns_wire_max_response(q, tcp);
    f->conn = conn;
    f->gen = conn >= 0 ? s->conns[conn].gen : 0;
    if (!tcp) {
        memcpy(&f->addr, from, fromlen);
        f->addrlen = fromlen;
    }
    memcpy(f->qname, q->qname, q->qname_len);
    f->qname_len = q->qname_len;
    f->qtype = q->qtype;
    f->qclass = q->qclass;
    s_fwd_append(s, i);
    s->fwd_by_id[id] = (uint16_t)(i + 1);
    s->fwd_pending++;
    if (tcp) s->conns[conn].forwards++;
    rb_metric_inc(s->m_forwarded);
    return 0;
}

/* Relays an upstream answer (msg is ours to rewrite) to the client of
 * forward i, within the client's limits, and ends the forward. Returns -1
 * when the client got SERVFAIL instead. */
static int s_fwd_answer(dns_server_t *s, int i, uint8_t *msg, size_t len)
{
    fwd_t *f = &s->fwd[i];
    int r = 0;
    msg[0] = (uint8_t)(f->client_id >> 8);
    msg[1] = (uint8_t)f->client_id;
    if (f->strip_opt && !(len = dns_wire_strip_opt(msg, len))) {
        rb_metric_inc(s->m_dropped);
        s_ratelog(&s->log_bad, "dns_upstream_malformed",
                  "an upstream answer does not parse, or its rcode needs the OPT a client "
                  "without EDNS cannot get; SERVFAIL",
                  NULL, 0);
        s_fwd_fail(s, f);
        r = -1;
    } else {
        if (len > f->max) len = dns_wire_truncate(msg, len, f->max);
        if (len) {
            s_count(s, msg[3] & 0xfu);
            s_fwd_deliver(s, f, msg, len);
        }
    }
    s_fwd_unlink(s, i);
    return r;
}

/* Ends a retry over TCP that got no usable answer: SERVFAIL to that one
 * client. */
static void s_uptcp_fail(dns_server_t *s, int i, const char *why)
{
    rb_metric_inc(s->m_tcp_failures);
    s_ratelog(&s->log_up_tcp, "dns_upstream_tcp_failed", why, (const struct sockaddr *)&s->up_addr,
              s->up_addrlen);
    s_fwd_fail(s, &s->fwd[i]);
    s_fwd_unlink(s, i);
}

static bool s_matches(const fwd_t *f, const dns_query_t *rq)
{
    return rq->qtype == f->qtype && rq->qclass == f->qclass &&
           dns_wire_name_equal(rq->qname, rq->qname_len, f->qname, f->qname_len);
}

/* Sends the query, then reads one length-prefixed answer. The upstream is
 * not trusted with anything: every length is checked against the buffer,
 * and anything short of a whole answer to our query ends in SERVFAIL (or,
 * when it just stalls, in the forward's timeout). */
static void s_uptcp_step(uptcp_t *u, int fd)
{
    dns_server_t *s = u->srv;
    int i = u->fwd;
    if (!u->reading) {
        ssize_t n = send(fd, u->buf + u->off, u->len - u->off, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
        if (n < 0) {
            s_uptcp_fail(s, i, "a TCP retry could not connect or send; SERVFAIL");
            return;
        }
        u->off += (size_t)n;
        if (u->off < u->len) return;
        u->reading = true;
        u->len = 0;
        rb_loop_mod_fd(s->loop, fd, RB_EV_READ);
        return;
    }
    ssize_t n = recv(fd, u->buf + u->len, 2 + DNS_TCP_MAX - u->len, MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (n <= 0) {
        s_uptcp_fail(s, i, "a TCP retry was closed before a whole answer; SERVFAIL");
        return;
    }
    u->len += (size_t)n;
    if (u->len < 2) return;
    size_t mlen = (size_t)u->buf[0] << 8 | u->buf[1];
    if (mlen < DNS_HEADER_LEN) {
        s_uptcp_fail(s, i, "a TCP retry got a length shorter than a header; SERVFAIL");
        return;
    }
    if (u->len < 2 + mlen) return;
    /* Bytes after the answer are ignored: the connection ends here. */
    dns_query_t rq;
    if (dns_wire_parse_response_question(u->buf + 2, mlen, &rq) < 0) {
        s_uptcp_fail(s, i, "a TCP retry got an answer that does not parse; SERVFAIL");
        return;
    }
    if (rq.id != s->fwd[i].up_id || !s_matches(&s->fwd[i], &rq)) {
        s_uptcp_fail(s, i, "a TCP retry got an answer to another query; SERVFAIL");
        return;
    }
    /* The buffer is freed with the forward, after the client has its copy. */
    if (s_fwd_answer(s, i, u->buf + 2, mlen) < 0) rb_metric_inc(s->m_tcp_failures);
}

static void s_uptcp_pump(dns_server_t *s);

static void s_uptcp_io(rb_loop_t *loop, int fd, unsigned events, void *arg)
{
    uptcp_t *u = arg;
    dns_server_t *s = u->srv;
    s_uptcp_step(u, fd);
    s_uptcp_pump(s); /* a connection may have closed: the next one's turn */
}

/* Opens forward i's retry connection when one may be opened now (at most
 * UP_TCP_MAX, UP_TCP_PER_CLIENT for one client); otherwise it keeps
 * waiting (wants_tcp) for one to close, within its deadline. */
static void s_uptcp_try(dns_server_t *s, int i)
{
    fwd_t *f = &s->fwd[i];
    /* A forward is only retried for a TCP client: f->conn is its slot. */
    tconn_t *client = &s->conns[f->conn];
    if (client->fd < 0 || client->gen != f->gen) {
        s_fwd_unlink(s, i); /* the client is gone: nobody to answer */
        return;
    }
    if (s->nuptcp >= UP_TCP_MAX || client->retries >= UP_TCP_PER_CLIENT) return;
    int ui = 0;
    while (s->uptcp[ui].fd >= 0)
        ui++; /* nuptcp < UP_TCP_MAX: there is one */
    uptcp_t *u = &s->uptcp[ui];
    int fd = socket(s->up_addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    uint8_t *buf = fd >= 0 ? malloc(2 + DNS_TCP_MAX) : NULL;
    if (!buf ||
        (connect(fd, (const struct sockaddr *)&s->up_addr, s->up_addrlen) < 0 &&
         errno != EINPROGRESS) ||
        rb_loop_add_fd(s->loop, fd, RB_EV_WRITE, s_uptcp_io, u) < 0) {
        free(buf);
        if (fd >= 0) close(fd);
        s_uptcp_fail(s, i, "a TCP retry could not connect; SERVFAIL");
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    buf[0] = (uint8_t)(f->query_len >> 8);
    buf[1] = (uint8_t)f->query_len;
    memcpy(buf + 2, f->query, f->query_len);
    free(f->query);
    f->query = NULL;
    s_set_waiting(s, f, false);
    *u = (uptcp_t){.srv = s,
                   .fd = fd,
                   .fwd = i,
                   .conn = f->conn,
                   .gen = f->gen,
                   .buf = buf,
                   .len = 2u + f->query_len};
    client->retries++;
    s->nuptcp++;
    f->up_conn = ui;
}

/* Starts waiting retries, oldest first, while connections may be opened.
 * Called from the top of a callback only: it may end forwards. */
static void s_uptcp_pump(dns_server_t *s)
{
    for (int i = s->fwd_head; i >= 0 && s->nwaiting && s->nuptcp < UP_TCP_MAX;) {
        int next = s->fwd[i].next;
        if (s->fwd[i].wants_tcp) s_uptcp_try(s, i);
        i = next;
    }
}

/* The upstream's UDP answer for a TCP client is truncated. That client is
 * on TCP already and cannot be told to retry there, so we do, on our own
 * connection, with the query we sent and a fresh timeout for the wait and
 * the retry together. */
static void s_uptcp_start(dns_server_t *s, int i)
{
    fwd_t *f = &s->fwd[i];
    rb_metric_inc(s->m_tcp_retries);
    /* f->query is set: s_forward keeps it for every TCP client, and a
     * forward gets here once (later UDP answers are dropped). */
    s_set_waiting(s, f, true);
    s_fwd_detach(s, i);
    s_fwd_append(s, i);
    s_uptcp_try(s, i);
}

/* Answers from upstream: the socket is connected, so only the upstream's
 * address gets here; the id and the question must match what we sent. */
static void s_upstream_read(rb_loop_t *loop, int fd, unsigned events, void *arg)
{
    dns_server_t *s = arg;
    for (int n = 0; n < 256; n++) {
        ssize_t len = recv(fd, s->scratch, DNS_TCP_MAX, MSG_DONTWAIT);
        if (len < 0) return;   /* EAGAIN, or ECONNREFUSED from a dead upstream: timeouts answer */
        dns_query_t rq;
        if (dns_wire_parse_response_question(s->scratch, (size_t)len, &rq) < 0) {
            rb_metric_inc(s->m_dropped);
            continue;
        }
        uint16_t slot = s->fwd_by_id[rq.id];
        if (!slot) continue;   /* late answer to a query we gave up on */
        fwd_t *f = &s->fwd[slot - 1];
        /* A second UDP answer while the TCP retry runs is not the answer. */
        if (f->up_conn >= 0 || f->wants_tcp || !s_matches(f, &rq)) {
            rb_metric_inc(s->m_dropped);
            continue;
        }
        if (f->tcp && (rq.flags & DNS_FLAG_TC))
            s_uptcp_start(s, slot - 1);
        else
            s_fwd_answer(s, slot - 1, s->scratch, (size_t)len);
    }
}

static void s_fwd_expire(dns_server_t *s, uint64_t now)
{
    while (s->fwd_head >= 0 && s->fwd[s->fwd_head].deadline <= now) {
        int i = s->fwd_head;
        if (s->fwd[i].up_conn >= 0 || s->fwd[i].wants_tcp) {
            s_uptcp_fail(s, i,
                         s->fwd[i].wants_tcp
                             ? "a TCP retry waited too long for a connection; SERVFAIL"
                             : "a TCP retry got no whole answer in time; SERVFAIL");
            continue;
        }
        s_fwd_fail(s, &s->fwd[i]);
        s_fwd_unlink(s, i);
    }
    s_uptcp_pump(s);
}

/* ---- answering ---- */

/* Answers one query into out (cap bytes). Returns the response length, or
 * 0 when there is nothing to send now (dropped, or forwarded). */
static size_t s_answer(dns_server_t *s, const uint8_t *pkt, size_t len, uint8_t *out, size_t cap,
                       bool tcp, int conn, const struct sockaddr_storage *from, socklen_t fromlen)
{
    dns_query_t q;
    int rc = dns_wire_parse_query(pkt, len, &q);
    if (rc < 0) {
        /* Not worth an answer: too short for a header, or a response (which
         * could be a reflection attempt). */
        rb_metric_inc(s->m_dropped);
        s_ratelog(&s->log_bad, "dns_malformed", "dropped an unanswerable packet",
                  (const struct sockaddr *)from, fromlen);
        return 0;
    }
    size_t max = dns_wire_max_response(&q, tcp);
    if (max > cap) max = cap;
    if (rc == DNS_RCODE_NOERROR) {
        size_t n = 0;
        int zr = dns_zone_answer(s->zone, &q, out, max, &n);
        if (zr >= 0) {
            s_count(s, (unsigned)zr);
            return n;
        }
        if (s->up_fd >= 0) {
            if (s_forward(s, pkt, len, &q, tcp, conn, from, fromlen) == 0) return 0;
            rc = DNS_RCODE_SERVFAIL;
        } else {
            rc = DNS_RCODE_REFUSED;
        }
    } else if (rc == DNS_RCODE_FORMERR) {
        s_ratelog(&s->log_bad, "dns_malformed", "answered a malformed query with FORMERR",
                  (const struct sockaddr *)from, fromlen);
    }
    dns_writer_t w;
    if (dns_writer_begin(&w, out, max, &q, (unsigned)rc, false) < 0) return 0;
    s_count(s, (unsigned)rc);
    return dns_writer_finish(&w);
}

/* ---- UDP ---- */

static void s_udp_read(rb_loop_t *loop, int fd, unsigned events, void *arg)
{
    dns_server_t *s = arg;
    udp_batch_t *b = s->batch;
    for (int round = 0; round < UDP_BATCHES_PER_WAKE; round++) {
        for (int i = 0; i < UDP_BATCH; i++) {
            b->in[i].msg_hdr.msg_namelen = sizeof b->addr[i];
            b->in[i].msg_hdr.msg_flags = 0;
        }
        int n = recvmmsg(fd, b->in, UDP_BATCH, MSG_DONTWAIT, NULL);
        if (n <= 0) return;
        bool sample = (s->batches++ % SAMPLE_EVERY) == 0;
        struct timespec t0;
        if (sample) clock_gettime(CLOCK_MONOTONIC, &t0);
        int nout = 0;
        for (int i = 0; i < n; i++) {
            struct msghdr *h = &b->in[i].msg_hdr;
            size_t len = b->in[i].msg_len;
            /* A cut datagram parses as garbage at the cut: FORMERR. */
            if (h->msg_flags & MSG_TRUNC) len = UDP_RBUF;
            size_t r = s_answer(s, b->rbuf[i], len, b->wbuf[nout], DNS_EDNS_PAYLOAD, false, -1,
                                &b->addr[i], h->msg_namelen);
            if (!r) continue;
            b->out_iov[nout].iov_base = b->wbuf[nout];
            b->out_iov[nout].iov_len = r;
            b->out[nout].msg_hdr.msg_name = &b->addr[i];
            b->out[nout].msg_hdr.msg_namelen = h->msg_namelen;
            nout++;
        }
        for (int sent = 0; sent < nout;) {
            int k = sendmmsg(fd, b->out + sent, (unsigned)(nout - sent), MSG_DONTWAIT);
            if (k <= 0) {
                /* A full socket buffer or an unreachable client: UDP may
                 * drop, and the client retries. */
                rb_metric_add(s->m_dropped, nout - sent);
                break;
            }
            sent += k;
        }
        if (sample && n > 0) {
            struct timespec t1;
            clock_gettime(CLOCK_MONOTONIC, &t1);
            double dt = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
            rb_metric_observe(s->m_duration, dt / n);
        }
        if (n < UDP_BATCH) return;
    }
}

/* ---- TCP ---- */

static void s_tcp_close(dns_server_t *s, int ci)
{
    tconn_t *c = &s->conns[ci];
    if (c->fd < 0) return;
    rb_loop_del_fd(s->loop, c->fd);
    close(c->fd);
    c->fd = -1;
    c->gen++;
    c->retries = 0;
    c->forwards = 0;
    rb_loop_undefer(s->loop, &c->resume);
    free(c->rbuf);
    c->rbuf = NULL;
    rb_buf_free(&c->wbuf);
    s->nconns--;
}

static void s_tcp_io(rb_loop_t *loop, int fd, unsigned events, void *arg);
static void s_tcp_consume(dns_server_t *s, int ci);

/* Reads a client only while it reads its answers and has room upstream. */
static void s_tcp_watch(dns_server_t *s, int ci)
{
    tconn_t *c = &s->conns[ci];
    bool take = c->wbuf.len < TCP_WBUF_HIGH && c->forwards < TCP_FWD_PER_CONN;
    unsigned ev = (take ? RB_EV_READ : 0) | (c->wbuf.len ? RB_EV_WRITE : 0);
    if (ev != c->events) {
        c->events = ev;
        rb_loop_mod_fd(s->loop, c->fd, ev);
    }
}

/* Writes what is queued; watches for writability while some remains, and
 * stops reading a client whose answers pile up. */
static void s_tcp_flush(dns_server_t *s, int ci)
{
    tconn_t *c = &s->conns[ci];
    while (c->wbuf.len > 0) {
        ssize_t n = send(c->fd, c->wbuf.data, c->wbuf.len, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) break;
            s_tcp_close(s, ci);
            return;
        }
        rb_buf_consume(&c->wbuf, (size_t)n);
    }
    s_tcp_watch(s, ci);
}

static void s_tcp_send(dns_server_t *s, int ci, const uint8_t *msg, size_t len)
{
    tconn_t *c = &s->conns[ci];
    uint8_t pre[2] = {(uint8_t)(len >> 8), (uint8_t)len};
    /* Reading stopped at TCP_WBUF_HIGH, but answers to queries already
     * taken keep coming (up to 64 KiB each over TCP). */
    if (c->wbuf.len + 2 + len > TCP_WBUF_MAX) {
        s_ratelog(&s->log_tcp_slow, "dns_tcp_not_reading",
                  "a TCP client does not read its answers; closed", NULL, 0);
        s_tcp_close(s, ci);
        return;
    }
    if (rb_buf_append(&c->wbuf, pre, 2) < 0 || rb_buf_append(&c->wbuf, msg, len) < 0) {
        s_tcp_close(s, ci);
        return;
    }
    s_tcp_flush(s, ci);
}

static void s_tcp_io(rb_loop_t *loop, int fd, unsigned events, void *arg)
{
    tconn_t *c = arg;
    dns_server_t *s = c->srv;
    int ci = (int)(c - s->conns);
    c->last_ms = rb_now_ms();
    if (events & RB_EV_WRITE) {
        s_tcp_flush(s, ci);
        if (c->fd < 0) return;
    }
    if (!(events & (RB_EV_READ | RB_EV_ERROR)) || c->rlen == 2 + DNS_TCP_MAX) return;
    ssize_t n = recv(fd, c->rbuf + c->rlen, 2 + DNS_TCP_MAX - c->rlen, MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
        s_tcp_close(s, ci);
        return;
    }
    if (n < 0) return;
    c->rlen += (size_t)n;
    s_tcp_consume(s, ci);
}

static void s_tcp_resume(rb_loop_t *loop, void *arg)
{
    tconn_t *c = arg;
    dns_server_t *s = c->srv;
    if (c->fd < 0) return;
    /* Queries held at the cap are ours to work on, not the client idling. */
    c->last_ms = rb_now_ms();
    s_tcp_consume(s, (int)(c - s->conns));
}

/* A forward of connection ci (as it was at gen) ended. Below the cap
 * again, the connection's waiting queries go on: after the current pass,
 * as this runs inside the walks over forwards. */
static void s_tcp_forward_done(dns_server_t *s, int ci, uint32_t gen)
{
    if (ci < 0) return;
    tconn_t *c = &s->conns[ci];
    if (c->fd < 0 || c->gen != gen || c->forwards == 0) return;
    if (c->forwards-- == TCP_FWD_PER_CONN) rb_loop_defer(s->loop, &c->resume, s_tcp_resume, c);
}

/* Answers the whole queries in connection ci's buffer, until its
 * forwards reach the cap; the rest waits there. */
static void s_tcp_consume(dns_server_t *s, int ci)
{
    tconn_t *c = &s->conns[ci];
    size_t off = 0;
    while (c->fd >= 0 && c->forwards < TCP_FWD_PER_CONN && c->rlen - off >= 2) {
        size_t mlen = (size_t)c->rbuf[off] << 8 | c->rbuf[off + 1];
        if (mlen < DNS_HEADER_LEN) {
            s_ratelog(&s->log_bad, "dns_malformed", "TCP message shorter than a header", NULL, 0);
            s_tcp_close(s, ci);
            return;
        }
        if (c->rlen - off - 2 < mlen) break;
        size_t r = s_answer(s, c->rbuf + off + 2, mlen, s->scratch, DNS_TCP_MAX, true, ci, NULL, 0);
        off += 2 + mlen;
        if (r) s_tcp_send(s, ci, s->scratch, r);
    }
    if (c->fd < 0) return;
    memmove(c->rbuf, c->rbuf + off, c->rlen - off);
    c->rlen -= off;
    s_tcp_watch(s, ci);
}

/* What TCP_MAX_PER_SOURCE counts by: the IPv4 address, or the /64 of an
 * IPv6 one (one subscriber's usual share); the top bit tells them apart. */
static uint64_t s_source_key(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET6) {
        const uint8_t *a = ((const struct sockaddr_in6 *)ss)->sin6_addr.s6_addr;
        if (!IN6_IS_ADDR_V4MAPPED((const struct in6_addr *)a)) {
            uint64_t k = 0;
            for (int i = 0; i < 8; i++)
                k = k << 8 | a[i];
            return k | 1ull << 63;
        }
        return (uint64_t)a[12] << 24 | (uint64_t)a[13] << 16 | (uint64_t)a[14] << 8 | a[15];
    }
    return ntohl(((const struct sockaddr_in *)ss)->sin_addr.s_addr);
}

static bool s_source_full(const dns_server_t *s, uint64_t source)
{
    unsigned n = 0;
    for (int i = 0; i < TCP_MAX_CONNS; i++)
        if (s->conns[i].fd >= 0 && s->conns[i].source == source && ++n >= TCP_MAX_PER_SOURCE)
            return true;
    return false;
}

static void s_tcp_accept(rb_loop_t *loop, int fd, unsigned events, void *arg)
{
    dns_server_t *s = arg;
    for (;;) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        int cfd = accept4(fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (cfd < 0) return;
        uint64_t source = s_source_key(&ss);
        if (s_source_full(s, source)) {
            rb_metric_inc(s->m_tcp_refused);
            s_ratelog(
                &s->log_tcp_full, "dns_tcp_full",
                "refused a TCP connection (" S_STR(TCP_MAX_PER_SOURCE) " open from its address)",
                (struct sockaddr *)&ss, sl);
            close(cfd);
            continue;
        }
        int ci = -1;
        for (int i = 0; i < TCP_MAX_CONNS && s->nconns < TCP_MAX_CONNS; i++)
            if (s->conns[i].fd < 0) {
                ci = i;
                break;
            }
        uint8_t *rbuf = ci >= 0 ? malloc(2 + DNS_TCP_MAX) : NULL;
        if (!rbuf || rb_loop_add_fd(s->loop, cfd, RB_EV_READ, s_tcp_io, &s->conns[ci]) < 0) {
            rb_metric_inc(s->m_tcp_refused);
            s_ratelog(&s->log_tcp_full, "dns_tcp_full",
                      "refused a TCP connection (" S_STR(TCP_MAX_CONNS) " open)",
                      (struct sockaddr *)&ss, sl);
            free(rbuf);
            close(cfd);
            continue;
        }
        int one = 1;
        setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        tconn_t *c = &s->conns[ci];
        c->fd = cfd;
        c->rbuf = rbuf;
        c->rlen = 0;
        c->wbuf = (rb_buf_t)RB_BUF_INIT;
        c->last_ms = rb_now_ms();
        c->events = RB_EV_READ;
        c->srv = s;
        c->source = source;
        s->nconns++;
    }
}

/* Retries whose client has gone answer nobody: they give their
 * connection back now, or a client that closes and comes back could hold
 * every one of them (its new connection starts a fresh count). Not done
 * in s_tcp_close, which runs inside the delivery of a retry's answer. */
static void s_uptcp_reap(dns_server_t *s)
{
    for (int k = 0; k < UP_TCP_MAX; k++) {
        uptcp_t *u = &s->uptcp[k];
        if (u->fd < 0 || u->fwd < 0) continue;
        const tconn_t *client = &s->conns[u->conn];
        if (client->fd < 0 || client->gen != u->gen) s_fwd_unlink(s, u->fwd);
    }
}

static void s_tick(rb_loop_t *loop, void *arg)
{
    dns_server_t *s = arg;
    uint64_t now = rb_now_ms();
    for (int i = 0; i < TCP_MAX_CONNS; i++)
        if (s->conns[i].fd >= 0 && now - s->conns[i].last_ms > TCP_IDLE_MS) s_tcp_close(s, i);
    s_uptcp_reap(s);
    s_fwd_expire(s, now); /* and starts retries waiting for a connection */
}

/* ---- events and status ---- */

int dns_server_session_up(dns_server_t *s, const Rb__Events__Session *sess)
{
    if (!sess->ip || !sess->ip[0]) {
        /* A user without an intranet address has no name either. */
        dns_zone_down(s->zone, NULL, sess->label, sess->fqdn);
    } else {
        uint32_t ip;
        if (rb_ip_parse(sess->ip, &ip) < 0) {
            rb_warn("dns_bad_ip", "session %s: '%s' is not an IPv4 address", sess->session_id,
                    sess->ip);
            return -1;
        }
        if (dns_zone_up(s->zone, sess->session_id, sess->label, sess->fqdn, ip) < 0) return -1;
    }
    rb_metric_set(s->m_records, (double)dns_zone_records(s->zone));
    return 0;
}

int dns_server_session_down(dns_server_t *s, const Rb__Events__Session *sess, const char *reason)
{
    int r = dns_zone_down(s->zone, sess->session_id, sess->label, sess->fqdn);
    if (r > 0) rb_debug("dns_record_removed", "%s (%s)", sess->fqdn, reason ? reason : "");
    rb_metric_set(s->m_records, (double)dns_zone_records(s->zone));
    return r < 0 ? -1 : 0;
}

void dns_server_reset(dns_server_t *s)
{
    dns_zone_reset(s->zone);
    rb_metric_set(s->m_records, 0);
}

static void s_ev_reset(void *arg) { dns_server_reset(arg); }
static void s_ev_up(void *arg, uint64_t seq, const Rb__Events__Session *sess)
{
    dns_server_session_up(arg, sess);
}
static void s_ev_down(void *arg, const Rb__Events__Session *sess, const char *reason)
{
    dns_server_session_down(arg, sess, reason);
}

bool dns_server_ready(const dns_server_t *s)
{
    return s->udp_fd >= 0 && s->tcp_fd >= 0 && (!s->events || rb_events_ready(s->events));
}

static bool s_ready(void *arg, rb_buf_t *why)
{
    dns_server_t *s = arg;
    if (dns_server_ready(s)) return true;
    rb_buf_puts(why, "no session snapshot yet, or the brokers are silent");
    return false;
}

static void s_info(void *arg, rb_buf_t *json)
{
    dns_server_t *s = arg;
    rb_buf_printf(json,
                  "\"records\":%zu,\"serial\":%u,\"events_seq\":%llu,\"snapshots\":%llu,"
                  "\"port\":%d,\"tcp_connections\":%zu,\"forwards_pending\":%zu,"
                  "\"reverse_zones\":%zu,\"upstream_tcp_connections\":%zu",
                  dns_zone_records(s->zone), dns_zone_serial(s->zone),
                  (unsigned long long)rb_events_seq(s->events),
                  (unsigned long long)rb_events_snapshots(s->events), s->port, s->nconns,
                  s->fwd_pending, dns_zone_reverse_count(s->zone), s->nuptcp);
}

/* ---- set-up ---- */

static int s_bind(dns_server_t *s, const char *where)
{
    struct sockaddr_storage ss;
    socklen_t sl;
    if (s_parse_hostport(where, &ss, &sl) < 0) {
        rb_error("dns_listen_invalid", "listen '%s' is not host:port", where);
        return -1;
    }
    int want = ss.ss_family == AF_INET ? ntohs(((struct sockaddr_in *)&ss)->sin_port)
                                       : ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    /* Port 0: take a free UDP port, then the same TCP port; retry when
     * that TCP port happens to be taken. */
    for (int attempt = 0; attempt < 16; attempt++) {
        s->udp_fd = socket(ss.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        s->tcp_fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (s->udp_fd < 0 || s->tcp_fd < 0) break;
        int one = 1, rcv = 4 << 20;
        setsockopt(s->tcp_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        setsockopt(s->udp_fd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof rcv);
        s_set_port(&ss, want);
        if (bind(s->udp_fd, (struct sockaddr *)&ss, sl) == 0) {
            s->port = s_get_port(s->udp_fd);
            s_set_port(&ss, s->port);
            if (bind(s->tcp_fd, (struct sockaddr *)&ss, sl) == 0 && listen(s->tcp_fd, 128) == 0)
                return 0;
        }
        int e = errno;
        close(s->udp_fd);
        close(s->tcp_fd);
        s->udp_fd = s->tcp_fd = -1;
        if (want != 0) {
            errno = e;
            break;
        }
    }
    rb_error("dns_bind_failed", "cannot bind UDP and TCP on %s: %s", where, strerror(errno));
    return -1;
}

static int s_upstream(dns_server_t *s, const char *upstream)
{
    struct sockaddr_storage ss;
    socklen_t sl;
    if (s_parse_hostport(upstream, &ss, &sl) < 0) {
        rb_error("dns_upstream_invalid", "upstream '%s' is not host:port", upstream);
        return -1;
    }
    memcpy(&s->up_addr, &ss, sl);
    s->up_addrlen = sl;
    s->up_fd = socket(ss.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s->up_fd < 0 || connect(s->up_fd, (struct sockaddr *)&ss, sl) < 0) {
        rb_error("dns_upstream_failed", "cannot reach upstream %s: %s", upstream, strerror(errno));
        return -1;
    }
    s->fwd = calloc(FWD_MAX_PENDING, sizeof *s->fwd);
    s->fwd_by_id = calloc(65536, sizeof *s->fwd_by_id);
    if (!s->fwd || !s->fwd_by_id) return -1;
    for (int i = 0; i < FWD_MAX_PENDING; i++) s->fwd[i].next = i + 1 < FWD_MAX_PENDING ? i + 1 : -1;
    s->fwd_free = 0;
    return rb_loop_add_fd(s->loop, s->up_fd, RB_EV_READ, s_upstream_read, s);
}

static int s_events(dns_server_t *s, const dns_config_t *cfg)
{
    rb_curve_t curve;
    char err[256], broker_key[RB_Z85_KEY_LEN + 1] = "";
    memset(&curve, 0, sizeof curve);
    if (rb_curve_load(&curve, cfg->curve_secret_key, err, sizeof err) < 0) {
        rb_error("dns_curve_key", "%s", err);
        return -1;
    }
    if (curve.enabled && rb_curve_read_public(cfg->broker_public_key, broker_key, err,
                                              sizeof err) < 0) {
        rb_error("dns_broker_key", "%s", err);
        return -1;
    }
    rb_events_config_t ec = {
        .pub_endpoints = cfg->events_endpoints,
        .snapshot_endpoints = cfg->snapshot_endpoints,
        .curve = &curve,
        .broker_public_key = broker_key,
        .name = cfg->dns_id && cfg->dns_id[0] ? cfg->dns_id : "dns",
    };
    /* rb_events keeps the pointer to the handlers: they must outlive it. */
    static const rb_events_handlers_t h = {s_ev_reset, s_ev_up, s_ev_down};
    s->events = rb_events_new(s->loop, &ec, &h, s);
    return s->events ? 0 : -1;
}

static void s_metrics(dns_server_t *s)
{
    static const char *names[RC_N] = {"NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN",
                                      "NOTIMP",  "REFUSED", "BADVERS"};
    for (int i = 0; i < RC_N; i++) {
        char label[32];
        snprintf(label, sizeof label, "rcode=\"%s\"", names[i]);
        s->m_rcode[i] = rb_counter("reachback_dns_queries_total", label,
                                   "DNS responses sent, by rcode");
    }
    s->m_forwarded = rb_counter("reachback_dns_forwarded_total", NULL,
                                "Queries forwarded to the upstream server");
    s->m_dropped = rb_counter("reachback_dns_dropped_total", NULL,
                              "Packets dropped unanswered (malformed, responses, send failures)");
    s->m_tcp_refused =
        rb_counter("reachback_dns_tcp_refused_total", NULL,
                   "TCP connections closed at once: " S_STR(TCP_MAX_CONNS) " open, or " S_STR(
                       TCP_MAX_PER_SOURCE) " from the client's address (IPv6: its /64)");
    s->m_tcp_retries = rb_counter("reachback_dns_upstream_tcp_retries_total", NULL,
                                  "Truncated upstream answers for TCP clients, retried over TCP");
    s->m_tcp_failures =
        rb_counter("reachback_dns_upstream_tcp_failures_total", NULL,
                   "Retries over TCP that ended in SERVFAIL (error, garbage, timeout)");
    s->m_records = rb_gauge("reachback_dns_records", NULL, "User records in the zone");
    s->m_duration = rb_histogram("reachback_dns_query_duration_seconds", NULL,
                                 "Time to answer a UDP query (sampled per batch)");
}

dns_server_t *dns_server_new(rb_loop_t *loop, const dns_config_t *cfg)
{
    char err[256];
    if (dns_config_validate((void *)cfg, err, sizeof err) < 0) {
        rb_error("dns_config", "%s", err);
        return NULL;
    }
    dns_server_t *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->loop = loop;
    s->udp_fd = s->tcp_fd = s->up_fd = -1;
    s->fwd_head = s->fwd_tail = s->fwd_free = -1;
    for (int i = 0; i < TCP_MAX_CONNS; i++) s->conns[i].fd = -1;
    for (int i = 0; i < UP_TCP_MAX; i++)
        s->uptcp[i].fd = s->uptcp[i].fwd = -1;
    if (getrandom(&s->rng, sizeof s->rng, 0) != sizeof s->rng || s->rng == 0)
        s->rng = (uint64_t)time(NULL) * 0x9E3779B97F4A7C15ull | 1;
    s_metrics(s);
    uint32_t ns_ip = 0;
    rb_ip_parse(cfg->ns_address, &ns_ip);
    dns_zone_config_t zc = {cfg->suffix, cfg->pool, ns_ip, (uint32_t)cfg->ttl};
    s->zone = dns_zone_new(&zc, err, sizeof err);
    if (!s->zone) {
        rb_error("dns_zone", "%s", err);
        goto fail;
    }
    s->batch = calloc(1, sizeof *s->batch);
    s->scratch = malloc(DNS_TCP_MAX + 2);
    if (!s->batch || !s->scratch) goto fail;
    for (int i = 0; i < UDP_BATCH; i++) {
        udp_batch_t *b = s->batch;
        b->in_iov[i] = (struct iovec){b->rbuf[i], UDP_RBUF};
        b->in[i].msg_hdr.msg_iov = &b->in_iov[i];
        b->in[i].msg_hdr.msg_iovlen = 1;
        b->in[i].msg_hdr.msg_name = &b->addr[i];
        b->out[i].msg_hdr.msg_iov = &b->out_iov[i];
        b->out[i].msg_hdr.msg_iovlen = 1;
    }
    if (s_bind(s, cfg->listen) < 0) goto fail;
    if (rb_loop_add_fd(loop, s->udp_fd, RB_EV_READ, s_udp_read, s) < 0 ||
        rb_loop_add_fd(loop, s->tcp_fd, RB_EV_READ, s_tcp_accept, s) < 0)
        goto fail;
    if (cfg->upstream && cfg->upstream[0] && s_upstream(s, cfg->upstream) < 0) goto fail;
    s->tick = rb_loop_add_timer(loop, 250, true, s_tick, s);
    if (!s->tick) goto fail;
    if (cfg->events_endpoints && cfg->events_endpoints[0] && s_events(s, cfg) < 0) goto fail;
    if (cfg->status_listen && cfg->status_listen[0]) {
        s->status = rb_status_new(loop, cfg->status_listen, "dns");
        if (!s->status) goto fail;
        rb_status_set_ready(s->status, s_ready, s);
        rb_status_set_info(s->status, s_info, s);
    }
    char rz[512] = "";
    for (size_t i = 0; i < dns_zone_reverse_count(s->zone); i++)
        snprintf(rz + strlen(rz), sizeof rz - strlen(rz), "%s%s", i ? "," : "",
                 dns_zone_reverse_name(s->zone, i));
    rb_info("dns_started", "serving %s and [%s] on %s (UDP+TCP port %d), upstream %s",
            cfg->suffix, rz, cfg->listen, s->port,
            cfg->upstream && cfg->upstream[0] ? cfg->upstream : "none (REFUSED)");
    return s;
fail:
    dns_server_destroy(&s);
    return NULL;
}

void dns_server_destroy(dns_server_t **sp)
{
    if (!sp || !*sp) return;
    dns_server_t *s = *sp;
    rb_status_destroy(&s->status);
    rb_events_destroy(&s->events);
    for (int i = 0; i < TCP_MAX_CONNS; i++)
        if (s->conns[i].fd >= 0) s_tcp_close(s, i);
    if (s->tick) rb_loop_cancel_timer(s->loop, s->tick);
    for (int i = 0; i < UP_TCP_MAX; i++)
        s_uptcp_close(s, i);
    for (int i = 0; s->fwd && i < FWD_MAX_PENDING; i++)
        free(s->fwd[i].query);
    int *fds[] = {&s->udp_fd, &s->tcp_fd, &s->up_fd};
    for (size_t i = 0; i < 3; i++)
        if (*fds[i] >= 0) {
            rb_loop_del_fd(s->loop, *fds[i]);
            close(*fds[i]);
        }
    dns_zone_destroy(&s->zone);
    free(s->fwd);
    free(s->fwd_by_id);
    free(s->batch);
    free(s->scratch);
    free(s);
    *sp = NULL;
}

int dns_server_port(const dns_server_t *s) { return s->port; }
int dns_server_status_port(const dns_server_t *s)
{
    return s->status ? rb_status_port(s->status) : -1;
}
size_t dns_server_records(const dns_server_t *s) { return dns_zone_records(s->zone); }
