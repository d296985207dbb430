/* rb_rpc: asynchronous request/reply over DEALER/ROUTER, driven by the loop.
 *
 * Client: a call gets a fresh 8-byte request id and waits in a hash table
 * keyed by it. One one-shot timer, re-armed while calls are pending, checks
 * deadlines every RB_RPC_TICK_MS: a call past its deadline is resent with the
 * same id while it has retries left (so a server may see it twice; only
 * idempotent requests should retry), else answered with NULL. A reply whose
 * id is no longer pending (timed out, or the second answer to a resend) is
 * dropped and counted.
 *
 * Bodies travel as zmq_msg_t: a request is packed once, straight into a
 * message, and each (re)send passes a zmq_msg_copy, which shares the buffer;
 * a received body is handed to the callback in place. */
#include "rb_rpc.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "rb_log.h"
#include "rb_metrics.h"
#include "rb_pb.h"
#include "rb_smap.h"

#define RB_RPC_ID_LEN 8
#define RB_RPC_TICK_MS 50
/* Messages taken per readable callback before the loop gets a turn; the
 * loop calls us again while ZMQ_EVENTS still says POLLIN. */
#define RB_RPC_BATCH 4096
#define RB_RPC_ROUTING_MAX 255

typedef struct rb_rpc_call {
    struct rb_rpc_call *next;   /* hash chain */
    uint64_t id;
    uint64_t deadline;
    unsigned timeout_ms;
    unsigned retries_left;
    bool unsent;                /* the socket refused it (no peer yet) */
    zmq_msg_t body;
    rb_rpc_reply_fn *fn;
    void *arg;
} rb_rpc_call_t;

struct rb_rpc_client {
    rb_loop_t *loop;
    void *sock;
    char peer[64];
    rb_rpc_call_t **buckets;
    size_t nbuckets;   /* power of two */
    size_t count;
    uint64_t next_id;
    rb_timer_t *timer;
    int depth;         /* > 0 while calling back the user */
    bool dead;         /* destroyed during a callback; freed on the way out */
};

/* What one caller (routing id) has in flight at a server. */
typedef struct rpc_peer {
    char key[2 * RB_RPC_ROUTING_MAX + 1]; /* the whole routing id, in hex */
    size_t reqs, bytes;
    uint64_t shed; /* in the current episode */
} rpc_peer_t;

struct rb_rpc_server {
    rb_loop_t *loop;
    void *sock;
    rb_rpc_handler_fn *fn;
    void *arg;
    rb_rpc_req_t *reqs;   /* outstanding requests, so destroy can orphan them */
    rb_smap_t *peers;     /* key -> rpc_peer_t, while it has requests in flight */
    size_t peer_max_reqs, peer_max_bytes;
    int depth;
    bool dead;
};

struct rb_rpc_req {
    rb_rpc_req_t *prev, *next;
    rb_rpc_server_t *srv;   /* NULL once the server is gone */
    rpc_peer_t *caller;     /* its count; NULL once the server is gone */
    size_t body_len;
    uint8_t rid[RB_RPC_ROUTING_MAX];
    size_t rid_len;
    uint8_t reqid[RB_RPC_ID_LEN];
    char peer[2 * 16 + 4];
};

/* The counters are the process's, shared by every client and server;
 * each is registered by the first that needs it, so /metrics shows it at
 * 0 from then on. */
enum { M_LATE, M_BAD, M_UNSENT, M_SHED, M_COUNT };

static rb_metric_t *s_counter(int which)
{
    static const struct {
        const char *name, *help;
    } defs[M_COUNT] = {
        [M_LATE] = {"reachback_rpc_late_replies_total",
                    "RPC replies that arrived after their call timed out or was answered"},
        [M_BAD] = {"reachback_rpc_bad_messages_total",
                   "RPC messages dropped for a wrong frame count or size"},
        [M_UNSENT] = {"reachback_rpc_unsent_replies_total",
                      "RPC replies not sent: the caller disconnected or its queue was full"},
        [M_SHED] = {"reachback_rpc_shed_requests_total",
                    "RPC requests dropped unanswered: their caller had too many in flight"},
    };
    /* Per thread: a thread may have a registry of its own (rb_metrics). */
    static __thread rb_metric_t *m[M_COUNT];
    if (!m[which]) m[which] = rb_counter(defs[which].name, NULL, defs[which].help);
    return m[which];
}

/* Drains the remaining frames of a multipart message; returns how many. */
static size_t s_drain(void *sock, zmq_msg_t *last)
{
    size_t n = 0;
    while (zmq_msg_more(last)) {
        zmq_msg_close(last);
        zmq_msg_init(last);
        if (zmq_msg_recv(last, sock, 0) < 0) break;
        n++;
    }
    return n;
}

/* Packs msg straight into a zmq message (no intermediate copy). 0 or -1. */
static int s_pack_msg(const ProtobufCMessage *msg, zmq_msg_t *out)
{
    size_t size = protobuf_c_message_get_packed_size(msg);
    if (size > RB_PB_MAX_MESSAGE) {
        rb_error("rpc_pack", "%s of %zu bytes exceeds the message limit",
                 msg->descriptor->name, size);
        return -1;
    }
    if (zmq_msg_init_size(out, size) < 0) {
        rb_error("rpc_pack", "zmq_msg_init_size: %s", zmq_strerror(errno));
        return -1;
    }
    if (size) protobuf_c_message_pack(msg, zmq_msg_data(out));
    return 0;
}

/* ---- client ---- */

static size_t s_hash(uint64_t id, size_t nbuckets)
{
    id ^= id >> 33;
    id *= 0xff51afd7ed558ccdULL;
    id ^= id >> 33;
    return (size_t)id & (nbuckets - 1);
}

static rb_rpc_call_t **s_find(rb_rpc_client_t *cli, uint64_t id)
{
    rb_rpc_call_t **pp = &cli->buckets[s_hash(id, cli->nbuckets)];
    while (*pp && (*pp)->id != id) pp = &(*pp)->next;
    return pp;
}

static void s_grow(rb_rpc_client_t *cli)
{
    size_t n = cli->nbuckets * 2;
    rb_rpc_call_t **b = calloc(n, sizeof *b);
    if (!b) return;   /* longer chains, still correct */
    for (size_t i = 0; i < cli->nbuckets; i++) {
        rb_rpc_call_t *c = cli->buckets[i];
        while (c) {
            rb_rpc_call_t *next = c->next;
            size_t h = s_hash(c->id, n);
            c->next = b[h];
            b[h] = c;
            c = next;
        }
    }
    free(cli->buckets);
    cli->buckets = b;
    cli->nbuckets = n;
}

static void s_call_free(rb_rpc_call_t *c)
{
    zmq_msg_close(&c->body);
    free(c);
}

/* Sends [id][body] without blocking. 0, or -1 with errno (EAGAIN: no peer
 * ready or the high-water mark is reached). */
static int s_send_call(rb_rpc_client_t *cli, rb_rpc_call_t *c)
{
    zmq_msg_t copy;
    zmq_msg_init(&copy);
    if (zmq_msg_copy(&copy, &c->body) < 0) return -1;
    uint8_t id[RB_RPC_ID_LEN];
    memcpy(id, &c->id, sizeof id);
    rb_loop_zsock_used(cli->sock);
    if (zmq_send(cli->sock, id, sizeof id, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) {
        int e = errno;
        zmq_msg_close(&copy);
        errno = e;
        return -1;
    }
    /* After the first frame the rest of the message is always accepted. */
    if (zmq_msg_send(&copy, cli->sock, ZMQ_DONTWAIT) < 0) {
        int e = errno;
        zmq_msg_close(&copy);
        errno = e;
        return -1;
    }
    return 0;
}

static void s_client_tick(rb_loop_t *loop, void *arg);

static void s_arm(rb_rpc_client_t *cli)
{
    if (!cli->timer && cli->count)
        cli->timer = rb_loop_add_timer(cli->loop, RB_RPC_TICK_MS, false, s_client_tick, cli);
}

static void s_client_free(rb_rpc_client_t *cli)
{
    for (size_t i = 0; i < cli->nbuckets; i++) {
        rb_rpc_call_t *c = cli->buckets[i];
        while (c) {
            rb_rpc_call_t *next = c->next;
            s_call_free(c);
            c = next;
        }
    }
    free(cli->buckets);
    if (cli->timer) rb_loop_cancel_timer(cli->loop, cli->timer);
    rb_loop_del_zsock(cli->loop, cli->sock);
    zmq_close(cli->sock);
    free(cli);
}

static void s_client_tick(rb_loop_t *loop, void *arg)
{
    rb_rpc_client_t *cli = arg;
    cli->timer = NULL;   /* one-shot: the loop frees it */
    uint64_t now = rb_now_ms();
    /* Collect expired ids first: callbacks may add or cancel calls, so the
     * table is not walked while they run. */
    uint64_t *expired = NULL;
    size_t nexp = 0, cap = 0;
    for (size_t i = 0; i < cli->nbuckets; i++) {
        for (rb_rpc_call_t *c = cli->buckets[i]; c; c = c->next) {
            if (now < c->deadline) {
                if (c->unsent && s_send_call(cli, c) == 0) c->unsent = false;
                continue;
            }
            if (c->retries_left) {
                c->retries_left--;
                c->deadline = now + c->timeout_ms;
                c->unsent = s_send_call(cli, c) < 0;
                rb_debug("rpc_retry", "%s: resending request %016llx", cli->peer,
                         (unsigned long long)c->id);
                continue;
            }
            if (nexp == cap) {
                size_t ncap = cap ? cap * 2 : 16;
                uint64_t *e = realloc(expired, ncap * sizeof *e);
                if (!e) break;   /* the rest expire on the next tick */
                expired = e;
                cap = ncap;
            }
            expired[nexp++] = c->id;
        }
    }
    cli->depth++;
    for (size_t i = 0; i < nexp && !cli->dead; i++) {
        rb_rpc_call_t **pp = s_find(cli, expired[i]);
        rb_rpc_call_t *c = *pp;
        if (!c) continue;   /* cancelled by an earlier callback */
        *pp = c->next;
        cli->count--;
        rb_debug("rpc_timeout", "%s: request %016llx timed out", cli->peer,
                 (unsigned long long)c->id);
        rb_rpc_reply_fn *fn = c->fn;
        void *carg = c->arg;
        s_call_free(c);
        fn(carg, NULL, 0);
    }
    cli->depth--;
    free(expired);
    if (cli->dead && cli->depth == 0) {
        s_client_free(cli);
        return;
    }
    s_arm(cli);
}

static void s_client_readable(rb_loop_t *loop, void *sock, void *arg)
{
    rb_rpc_client_t *cli = arg;
    cli->depth++;
    for (int n = 0; n < RB_RPC_BATCH && !cli->dead; n++) {
        zmq_msg_t id, body;
        zmq_msg_init(&id);
        if (zmq_msg_recv(&id, sock, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&id);
            if (errno == EAGAIN) rb_loop_zsock_drained(sock);
            break;
        }
        zmq_msg_init(&body);
        bool ok = zmq_msg_more(&id) && zmq_msg_recv(&body, sock, 0) >= 0;
        size_t extra = ok ? s_drain(sock, &body) : 0;
        if (!ok || extra || zmq_msg_size(&id) != RB_RPC_ID_LEN) {
            rb_warn("rpc_bad_reply", "%s: dropped a reply with %s", cli->peer,
                    !ok ? "one frame" : extra ? "too many frames" : "a bad request id");
            rb_metric_inc(s_counter(M_BAD));
            zmq_msg_close(&id);
            zmq_msg_close(&body);
            continue;
        }
        uint64_t rid;
        memcpy(&rid, zmq_msg_data(&id), sizeof rid);
        zmq_msg_close(&id);
        rb_rpc_call_t **pp = s_find(cli, rid);
        rb_rpc_call_t *c = *pp;
        if (!c) {
            rb_debug("rpc_late_reply", "%s: reply to %016llx after its call ended", cli->peer,
                     (unsigned long long)rid);
            rb_metric_inc(s_counter(M_LATE));
            zmq_msg_close(&body);
            continue;
        }
        *pp = c->next;
        cli->count--;
        rb_rpc_reply_fn *fn = c->fn;
        void *carg = c->arg;
        s_call_free(c);
        fn(carg, zmq_msg_data(&body), zmq_msg_size(&body));
        zmq_msg_close(&body);
    }
    cli->depth--;
    if (cli->dead && cli->depth == 0) s_client_free(cli);
}

rb_rpc_client_t *rb_rpc_client_new(rb_loop_t *loop, void *dealer, const char *peer_name)
{
    if (!loop || !dealer) return NULL;
    rb_rpc_client_t *cli = calloc(1, sizeof *cli);
    if (!cli) goto fail;
    cli->nbuckets = 64;
    cli->buckets = calloc(cli->nbuckets, sizeof *cli->buckets);
    if (!cli->buckets) goto fail;
    cli->loop = loop;
    cli->sock = dealer;
    snprintf(cli->peer, sizeof cli->peer, "%s", peer_name ? peer_name : "rpc");
    /* Ids only need to be unique among this client's pending calls; a
     * random start keeps a restarted client from matching replies meant for
     * its previous life on a long-lived server queue. */
    uint8_t seed[8];
    FILE *f = fopen("/dev/urandom", "rb");
    if (f && fread(seed, 1, sizeof seed, f) == sizeof seed) memcpy(&cli->next_id, seed, 8);
    if (f) fclose(f);
    if (rb_loop_add_zsock(loop, dealer, s_client_readable, cli) < 0) goto fail;
    /* In /metrics from the start, at 0, not from their first count. */
    s_counter(M_LATE);
    s_counter(M_BAD);
    return cli;
fail:
    rb_error("rpc_client", "%s: cannot create the RPC client", peer_name ? peer_name : "rpc");
    if (cli) free(cli->buckets);
    free(cli);
    zmq_close(dealer);
    return NULL;
}

void rb_rpc_client_destroy(rb_rpc_client_t **pcli)
{
    if (!pcli || !*pcli) return;
    rb_rpc_client_t *cli = *pcli;
    *pcli = NULL;
    if (cli->depth) {
        /* Called from one of our callbacks: the dispatch loop stops at
         * the flag and frees the client on its way out. */
        cli->dead = true;
        return;
    }
    s_client_free(cli);
}

int rb_rpc_call(rb_rpc_client_t *cli, const ProtobufCMessage *msg, unsigned timeout_ms,
                unsigned retries, rb_rpc_reply_fn *fn, void *arg)
{
    if (!cli || cli->dead || !msg || !fn) return -1;
    rb_rpc_call_t *c = calloc(1, sizeof *c);
    if (!c) return -1;
    if (s_pack_msg(msg, &c->body) < 0) {
        free(c);
        return -1;
    }
    /* Skip ids still pending after a wrap-around (never in practice). */
    do c->id = ++cli->next_id;
    while (*s_find(cli, c->id));
    c->timeout_ms = timeout_ms ? timeout_ms : 1;
    c->retries_left = retries;
    c->deadline = rb_now_ms() + c->timeout_ms;
    c->fn = fn;
    c->arg = arg;
    if (s_send_call(cli, c) < 0) {
        if (errno != EAGAIN) {
            rb_warn("rpc_send_failed", "%s: %s", cli->peer, zmq_strerror(errno));
            s_call_free(c);
            return -1;
        }
        /* No connected peer yet (DEALERs are IMMEDIATE) or the queue is
         * full: keep the call and try again on each tick until it expires. */
        c->unsent = true;
    }
    if (cli->count + 1 > cli->nbuckets) s_grow(cli);
    rb_rpc_call_t **head = &cli->buckets[s_hash(c->id, cli->nbuckets)];
    c->next = *head;
    *head = c;
    cli->count++;
    s_arm(cli);
    return 0;
}

void rb_rpc_cancel(rb_rpc_client_t *cli, void *arg)
{
    if (!cli) return;
    for (size_t i = 0; i < cli->nbuckets; i++) {
        rb_rpc_call_t **pp = &cli->buckets[i];
        while (*pp) {
            rb_rpc_call_t *c = *pp;
            if (c->arg == arg) {
                *pp = c->next;
                cli->count--;
                s_call_free(c);
            } else {
                pp = &c->next;
            }
        }
    }
}

size_t rb_rpc_pending(const rb_rpc_client_t *cli) { return cli ? cli->count : 0; }

/* ---- server ---- */

/* A request is counted against its caller from arrival until it is
 * answered or dropped; the caller's entry lives only while it counts. */
static void s_peer_release(rb_rpc_server_t *srv, rb_rpc_req_t *req)
{
    rpc_peer_t *c = req->caller;
    if (!c) return;
    req->caller = NULL;
    c->reqs--;
    c->bytes -= req->body_len;
    if (c->reqs) return;
    if (c->shed)
        rb_info("rpc_shed_end", "%s: nothing in flight now; %llu requests were dropped", req->peer,
                (unsigned long long)c->shed);
    rb_smap_del(srv->peers, c->key, c);
    free(c);
}

static void s_free_peer(void *arg, const char *key, void *val)
{
    rb_smap_del(arg, key, val);
    free(val);
}

/* Takes len bytes of the caller's allowance for req; false when its
 * caller is over its limits (the request is dropped then, unanswered:
 * the caller's deadline answers it, and every other caller keeps its
 * share of the server). */
static bool s_peer_admit(rb_rpc_server_t *srv, rb_rpc_req_t *req, size_t len)
{
    char key[sizeof((rpc_peer_t *)0)->key];
    for (size_t i = 0; i < req->rid_len; i++)
        snprintf(key + 2 * i, 3, "%02x", req->rid[i]);
    rpc_peer_t *c = rb_smap_get(srv->peers, key);
    if (!c) {
        if (!(c = calloc(1, sizeof *c))) return false;
        memcpy(c->key, key, sizeof key);
        if (rb_smap_put(srv->peers, c->key, c, NULL) < 0) {
            free(c);
            return false;
        }
    }
    /* One request is always let through, however large (the protobuf
     * limits of the handler judge its size). */
    if (c->reqs && (c->reqs >= srv->peer_max_reqs || c->bytes + len > srv->peer_max_bytes)) {
        if (!c->shed++)
            rb_warn("rpc_shed",
                    "%s has %zu requests (%zu bytes) in flight; dropping more until "
                    "some are answered",
                    req->peer, c->reqs, c->bytes);
        rb_metric_inc(s_counter(M_SHED));
        return false;
    }
    c->reqs++;
    c->bytes += len;
    req->caller = c;
    req->body_len = len;
    return true;
}

static void s_req_unlink(rb_rpc_req_t *req)
{
    if (!req->srv) return;
    s_peer_release(req->srv, req);
    if (req->prev)
        req->prev->next = req->next;
    else
        req->srv->reqs = req->next;
    if (req->next) req->next->prev = req->prev;
    req->prev = req->next = NULL;
}

static void s_server_free(rb_rpc_server_t *srv)
{
    for (rb_rpc_req_t *r = srv->reqs; r; r = r->next) {
        r->srv = NULL;
        r->caller = NULL;
    }
    rb_smap_each(srv->peers, s_free_peer, srv->peers);
    rb_smap_destroy(&srv->peers);
    rb_loop_del_zsock(srv->loop, srv->sock);
    zmq_close(srv->sock);
    free(srv);
}

static void s_server_readable(rb_loop_t *loop, void *sock, void *arg)
{
    rb_rpc_server_t *srv = arg;
    srv->depth++;
    for (int n = 0; n < RB_RPC_BATCH && !srv->dead; n++) {
        zmq_msg_t rid, id, body;
        zmq_msg_init(&rid);
        if (zmq_msg_recv(&rid, sock, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&rid);
            if (errno == EAGAIN) rb_loop_zsock_drained(sock);
            break;
        }
        zmq_msg_init(&id);
        zmq_msg_init(&body);
        int frames = 1;
        if (zmq_msg_more(&rid) && zmq_msg_recv(&id, sock, 0) >= 0) frames++;
        if (frames == 2 && zmq_msg_more(&id) && zmq_msg_recv(&body, sock, 0) >= 0) frames++;
        size_t extra = frames == 3 ? s_drain(sock, &body) : 0;
        rb_rpc_req_t *req = NULL;
        if (frames != 3 || extra || zmq_msg_size(&id) != RB_RPC_ID_LEN ||
            zmq_msg_size(&rid) == 0 || zmq_msg_size(&rid) > RB_RPC_ROUTING_MAX ||
            !(req = calloc(1, sizeof *req))) {
            rb_warn("rpc_bad_request", "dropped a request with %s",
                    frames != 3 || extra ? "a wrong frame count"
                    : zmq_msg_size(&id) != RB_RPC_ID_LEN ? "a bad request id"
                                                         : "a bad routing id");
            rb_metric_inc(s_counter(M_BAD));
            goto next;
        }
        req->srv = srv;
        req->rid_len = zmq_msg_size(&rid);
        memcpy(req->rid, zmq_msg_data(&rid), req->rid_len);
        memcpy(req->reqid, zmq_msg_data(&id), RB_RPC_ID_LEN);
        /* Routing ids are 5 bytes by default; show up to 16, in hex. */
        {
            size_t shown = req->rid_len > 16 ? 16 : req->rid_len;
            for (size_t i = 0; i < shown; i++)
                snprintf(req->peer + 2 * i, 3, "%02x", req->rid[i]);
            if (shown < req->rid_len) strcat(req->peer, "...");
        }
        if (!s_peer_admit(srv, req, zmq_msg_size(&body))) {
            free(req);
            goto next;
        }
        req->next = srv->reqs;
        if (srv->reqs) srv->reqs->prev = req;
        srv->reqs = req;
        srv->fn(srv->arg, req, zmq_msg_data(&body), zmq_msg_size(&body));
    next:
        zmq_msg_close(&rid);
        zmq_msg_close(&id);
        zmq_msg_close(&body);
    }
    srv->depth--;
    if (srv->dead && srv->depth == 0) s_server_free(srv);
}

rb_rpc_server_t *rb_rpc_server_new(rb_loop_t *loop, void *router, rb_rpc_handler_fn *fn,
                                   void *arg)
{
    if (!loop || !router || !fn) return NULL;
    rb_rpc_server_t *srv = calloc(1, sizeof *srv);
    if (!srv) goto fail;
    srv->loop = loop;
    srv->sock = router;
    srv->fn = fn;
    srv->arg = arg;
    srv->peer_max_reqs = RB_RPC_PEER_MAX_REQS;
    srv->peer_max_bytes = RB_RPC_PEER_MAX_BYTES;
    if (!(srv->peers = rb_smap_new())) goto fail;
    if (rb_loop_add_zsock(loop, router, s_server_readable, srv) < 0) goto fail;
    s_counter(M_BAD);
    s_counter(M_UNSENT);
    s_counter(M_SHED);
    return srv;
fail:
    rb_error("rpc_server", "cannot create the RPC server");
    if (srv) rb_smap_destroy(&srv->peers);
    free(srv);
    zmq_close(router);
    return NULL;
}

void rb_rpc_server_limit(rb_rpc_server_t *srv, size_t max_reqs, size_t max_bytes)
{
    srv->peer_max_reqs = max_reqs;
    srv->peer_max_bytes = max_bytes;
}

void rb_rpc_server_destroy(rb_rpc_server_t **psrv)
{
    if (!psrv || !*psrv) return;
    rb_rpc_server_t *srv = *psrv;
    *psrv = NULL;
    if (srv->depth) {
        srv->dead = true;
        return;
    }
    s_server_free(srv);
}

int rb_rpc_reply(rb_rpc_req_t *req, const ProtobufCMessage *msg)
{
    if (!req) return -1;
    rb_rpc_server_t *srv = req->srv;
    int rc = -1;
    zmq_msg_t body;
    if (!srv || srv->dead) {
        rb_debug("rpc_reply_dropped", "%s: the server is gone", req->peer);
        goto out;
    }
    if (!msg || s_pack_msg(msg, &body) < 0) goto out;
    rb_loop_zsock_used(srv->sock);
    if (zmq_send(srv->sock, req->rid, req->rid_len, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) {
        /* ROUTER_MANDATORY: EHOSTUNREACH when the peer disconnected, EAGAIN
         * when its queue is full. */
        rb_warn("rpc_reply_failed", "reply to %s: %s", req->peer,
                errno == EHOSTUNREACH ? "peer gone" : zmq_strerror(errno));
        rb_metric_inc(s_counter(M_UNSENT));
        zmq_msg_close(&body);
        goto out;
    }
    if (zmq_send(srv->sock, req->reqid, RB_RPC_ID_LEN, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0 ||
        zmq_msg_send(&body, srv->sock, ZMQ_DONTWAIT) < 0) {
        rb_warn("rpc_reply_failed", "reply to %s: %s", req->peer, zmq_strerror(errno));
        rb_metric_inc(s_counter(M_UNSENT));
        zmq_msg_close(&body);
        goto out;
    }
    rc = 0;
out:
    rb_rpc_req_free(req);
    return rc;
}

void rb_rpc_req_free(rb_rpc_req_t *req)
{
    if (!req) return;
    s_req_unlink(req);
    free(req);
}

const char *rb_rpc_req_peer(const rb_rpc_req_t *req) { return req ? req->peer : "?"; }
