/* broker: the session broker service object (see broker.h).
 *
 * A logon walks: begin (claim the user's session and label in Redis) ->
 * LeaseRequest to ipalloc -> commit (session live, sequence bumped) ->
 * publish SESSION_UP -> LogonReply. Each step is asynchronous and carries a
 * logon context; any failure unwinds what was done (abort the claim, release
 * the lease) and answers the edge. A logoff walks: end -> publish
 * SESSION_DOWN -> ReleaseRequest -> LogoffReply. Nothing blocks the loop. */
#include "broker.h"
#include <openssl/evp.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <zmq.h>
#include "broker_events.h"
#include "broker_ipalloc.pb-c.h"
#include "broker_store.h"
#include "edge_broker.pb-c.h"
#include "rb_cidr.h"
#include "rb_label.h"
#include "rb_log.h"
#include "rb_metrics.h"
#include "rb_pb.h"
#include "rb_redis.h"
#include "rb_rpc.h"
#include "rb_zmq.h"

/* An EdgeToBroker is a few short strings; refuse anything bigger. */
#define BROKER_MAX_REQUEST 4096
#define BROKER_MAX_IPALLOC_REPLY 4096
#define BROKER_FIELD_MAX 256
#define BROKER_TICK_MS 1000
/* ipalloc counts as up while it answered a ping within this. */
#define BROKER_IPALLOC_FRESH_MS 3000
/* Leases are idempotent per session, so one resend is safe: 2 x 1 s. */
#define BROKER_LEASE_TIMEOUT_MS 1000
#define BROKER_LEASE_RETRIES 1
#define BROKER_TOKEN_BYTES 32

const rb_option_t broker_options[] = {
    RB_OPT_COMMON(broker_config_t),
    {"broker_id", RB_OPT_STRING, "broker-1", offsetof(broker_config_t, broker_id), 0, 0,
     "name of this instance in heartbeats, logs and /status"},
    {"listen_edge", RB_OPT_STRING, "tcp://127.0.0.1:7201", offsetof(broker_config_t, listen_edge),
     0, 0, "ZeroMQ endpoint edges connect to"},
    {"listen_events", RB_OPT_STRING, "tcp://127.0.0.1:7202",
     offsetof(broker_config_t, listen_events), 0, 0, "ZeroMQ PUB endpoint of session events"},
    {"listen_snapshot", RB_OPT_STRING, "tcp://127.0.0.1:7203",
     offsetof(broker_config_t, listen_snapshot), 0, 0, "ZeroMQ endpoint serving snapshots"},
    {"ipalloc_endpoint", RB_OPT_STRING, "tcp://127.0.0.1:7301",
     offsetof(broker_config_t, ipalloc_endpoint), 0, 0, "ZeroMQ endpoint of ipalloc"},
    {"ipalloc_public_key", RB_OPT_STRING, "", offsetof(broker_config_t, ipalloc_public_key), 0, 0,
     "ipalloc's CURVE public key file (needed with curve_secret_key)"},
    {"dns_suffix", RB_OPT_STRING, NULL, offsetof(broker_config_t, dns_suffix), 0, 0,
     "DNS zone of user names: <label>.<dns_suffix>"},
    {"redis_host", RB_OPT_STRING, "127.0.0.1", offsetof(broker_config_t, redis_host), 0, 0,
     "Redis address"},
    {"redis_port", RB_OPT_INT, "6379", offsetof(broker_config_t, redis_port), 1, 65535,
     "Redis TCP port"},
    {"redis_socket", RB_OPT_STRING, "", offsetof(broker_config_t, redis_socket), 0, 0,
     "Redis unix socket path; overrides redis_host/redis_port when set"},
    {"redis_password", RB_OPT_STRING, "", offsetof(broker_config_t, redis_password), 0, 0,
     "Redis AUTH password"},
    {"curve_secret_key", RB_OPT_STRING, "", offsetof(broker_config_t, curve_secret_key), 0, 0,
     "our CURVE secret key file; empty: no CURVE"},
    {"curve_allowed_keys", RB_OPT_STRING, "", offsetof(broker_config_t, curve_allowed_keys), 0, 0,
     "comma-separated public key files of the peers allowed to connect"},
    {"admin_token", RB_OPT_STRING, "", offsetof(broker_config_t, admin_token), 0, 0,
     "bearer token for admin routes of the status server"},
    RB_OPT_END,
};

int broker_config_validate(void *arg, char *err, size_t errlen)
{
    const broker_config_t *cfg = arg;
    const char *d = cfg->dns_suffix;
    if (!d || !*d || d[0] == '.' || d[strlen(d) - 1] == '.' || strlen(d) > 190) {
        snprintf(err, errlen, "dns_suffix must be a domain like vpn.example.com");
        return -1;
    }
    if (cfg->curve_secret_key[0] && !cfg->ipalloc_public_key[0]) {
        snprintf(err, errlen, "ipalloc_public_key is needed when curve_secret_key is set");
        return -1;
    }
    return 0;
}

typedef struct logon {
    struct logon *prev, *next;
    broker_t *b;
    rb_rpc_req_t *req;
    uint64_t start_ms;
    bool claimed; /* a pending session exists in Redis */
    bool leasing; /* ipalloc may hold an address for it */
    char user[BROKER_FIELD_MAX + 1];
    char device[BROKER_FIELD_MAX + 1];
    char edge_id[BROKER_FIELD_MAX + 1];
    char source[BROKER_FIELD_MAX + 1];
    char label[RB_LABEL_MAX + 1];
    char session_id[BROKER_SESSION_ID_LEN + 1];
    char ip[16];
    char fqdn[RB_LABEL_MAX + 200];
    char token[BROKER_TOKEN_BYTES * 2 + 1];
    uint64_t since_ms;
    char reason[BROKER_FIELD_MAX + 1]; /* logoff */
} logon_t;

struct broker {
    rb_loop_t *loop;
    const broker_config_t *cfg;
    rb_curve_t curve;
    rb_redis_t *redis;
    broker_store_t *store;
    broker_events_t *events;
    rb_rpc_server_t *edge;
    rb_rpc_client_t *ipalloc;
    rb_timer_t *tick;
    logon_t *ctxs;

    bool stats_pending;
    bool ping_pending;
    uint64_t ipalloc_ok_ms; /* last good ping answer; 0: never */
    uint64_t seq;
    uint64_t sessions;

    rb_metric_t *m_sessions;
    rb_metric_t *m_ok, *m_exists, *m_exhausted, *m_unavailable, *m_bad;
    rb_metric_t *m_logoffs;
    rb_metric_t *m_duration;
};

/* ---- helpers ---- */

static int s_random_hex(char *out, size_t nbytes)
{
    unsigned char b[64];
    if (nbytes > sizeof(b) || getrandom(b, nbytes, 0) != (ssize_t)nbytes) return -1;
    for (size_t i = 0; i < nbytes; i++)
        snprintf(out + 2 * i, 3, "%02x", b[i]);
    explicit_bzero(b, sizeof(b));
    return 0;
}

static int s_sha256_hex(const char *in, char out[65])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned len = 0;
    if (EVP_Digest(in, strlen(in), md, &len, EVP_sha256(), NULL) != 1 || len != 32) return -1;
    for (unsigned i = 0; i < len; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
    return 0;
}

/* Copies a peer's string field, refusing empty (when required) or long. */
static bool s_copy_field(char *dst, size_t cap, const char *src, bool required)
{
    size_t n = src ? strlen(src) : 0;
    if ((required && n == 0) || n >= cap) return false;
    memcpy(dst, src ? src : "", n + 1);
    return true;
}

static logon_t *s_ctx_new(broker_t *b, rb_rpc_req_t *req)
{
    logon_t *c = calloc(1, sizeof(*c));
    if (!c) return NULL;
    c->b = b;
    c->req = req;
    c->start_ms = rb_now_ms();
    c->next = b->ctxs;
    if (b->ctxs) b->ctxs->prev = c;
    b->ctxs = c;
    return c;
}

static void s_ctx_free(logon_t *c)
{
    broker_t *b = c->b;
    if (c->prev)
        c->prev->next = c->next;
    else
        b->ctxs = c->next;
    if (c->next) c->next->prev = c->prev;
    rb_rpc_req_free(c->req);
    explicit_bzero(c->token, sizeof(c->token));
    free(c);
}

static void s_reply(rb_rpc_req_t *req, Rb__Edgebroker__BrokerToEdge *env)
{
    env->version = RB_PROTO_VERSION;
    if (rb_rpc_reply(req, &env->base) != 0)
        rb_warn("reply_failed", "could not answer edge %s", rb_rpc_req_peer(req));
}

static void s_reply_logon(rb_rpc_req_t *req, Rb__Edgebroker__LogonStatus status,
                          const char *message, const logon_t *c)
{
    Rb__Edgebroker__BrokerToEdge env = RB__EDGEBROKER__BROKER_TO_EDGE__INIT;
    Rb__Edgebroker__LogonReply lr = RB__EDGEBROKER__LOGON_REPLY__INIT;
    lr.status = status;
    lr.message = (char *)(message ? message : "");
    if (c && status == RB__EDGEBROKER__LOGON_STATUS__LOGON_OK) {
        lr.session_id = (char *)c->session_id;
        lr.ip = (char *)c->ip;
        lr.fqdn = (char *)c->fqdn;
        lr.resume_token = (char *)c->token;
    }
    env.body_case = RB__EDGEBROKER__BROKER_TO_EDGE__BODY_LOGON;
    env.logon = &lr;
    s_reply(req, &env);
}

/* ---- talking to ipalloc ---- */

static void s_on_release_logged(void *arg, const uint8_t *body, size_t len)
{
    if (!body)
        rb_warn("release_timeout", "ipalloc did not answer a release; the lease stays until "
                                   "released again");
}

/* Sends ReleaseRequest; fn (may be s_on_release_logged) gets the answer. */
static int s_send_release(broker_t *b, const char *ip, const char *session_id, rb_rpc_reply_fn *fn,
                          void *arg)
{
    Rb__Brokeripalloc__BrokerToIpalloc env = RB__BROKERIPALLOC__BROKER_TO_IPALLOC__INIT;
    Rb__Brokeripalloc__ReleaseRequest rr = RB__BROKERIPALLOC__RELEASE_REQUEST__INIT;
    rr.ip = (char *)ip;
    rr.session_id = (char *)session_id;
    env.version = RB_PROTO_VERSION;
    env.body_case = RB__BROKERIPALLOC__BROKER_TO_IPALLOC__BODY_RELEASE;
    env.release = &rr;
    return rb_rpc_call(b->ipalloc, &env.base, BROKER_LEASE_TIMEOUT_MS, BROKER_LEASE_RETRIES, fn,
                       arg);
}

/* Unpacks an ipalloc answer of the expected kind; NULL (logged) otherwise. */
static Rb__Brokeripalloc__IpallocToBroker *
s_unpack_ipalloc(const uint8_t *body, size_t len, Rb__Brokeripalloc__IpallocToBroker__BodyCase want)
{
    Rb__Brokeripalloc__IpallocToBroker *m = (Rb__Brokeripalloc__IpallocToBroker *)rb_pb_unpack(
        &rb__brokeripalloc__ipalloc_to_broker__descriptor, body, len, BROKER_MAX_IPALLOC_REPLY,
        "ipalloc");
    if (m && (m->version != RB_PROTO_VERSION || m->body_case != want)) {
        rb_warn("bad_message", "ipalloc answered version %u kind %d, expected version %u kind %d",
                m->version, (int)m->body_case, RB_PROTO_VERSION, (int)want);
        protobuf_c_message_free_unpacked(&m->base, NULL);
        m = NULL;
    }
    return m;
}

/* ---- logon ---- */

/* Undoes what a failed logon did and answers the edge. */
static void s_logon_fail(logon_t *c, Rb__Edgebroker__LogonStatus status, const char *message)
{
    broker_t *b = c->b;
    if (c->claimed && broker_store_abort(b->store, c->session_id, NULL, NULL) != 0)
        rb_warn("abort_failed", "session %s stays pending until its claim expires", c->session_id);
    if (c->leasing && s_send_release(b, c->ip, c->session_id, s_on_release_logged, b) != 0)
        rb_warn("release_failed", "could not ask ipalloc to release session %s", c->session_id);
    switch (status) {
    case RB__EDGEBROKER__LOGON_STATUS__LOGON_POOL_EXHAUSTED:
        rb_metric_inc(b->m_exhausted);
        break;
    case RB__EDGEBROKER__LOGON_STATUS__LOGON_SESSION_EXISTS:
        rb_metric_inc(b->m_exists);
        break;
    case RB__EDGEBROKER__LOGON_STATUS__LOGON_BAD_REQUEST:
        rb_metric_inc(b->m_bad);
        break;
    default:
        rb_metric_inc(b->m_unavailable);
        break;
    }
    rb_info("logon_failed", "user %s from %s via %s: %s", c->user, c->source, c->edge_id, message);
    s_reply_logon(c->req, status, message, NULL);
    c->req = NULL;
    s_ctx_free(c);
}

static void s_on_commit(void *arg, int rc, uint64_t seq)
{
    logon_t *c = arg;
    broker_t *b = c->b;
    if (rc != 0) {
        /* When the outcome is unknown the session may be live with this
         * address: keep the lease rather than risk handing it out twice. It
         * goes when the session ends. */
        if (rc < 0) {
            c->leasing = false;
            rb_warn("commit_unknown", "session %s of %s may be live; its lease %s is kept",
                    c->session_id, c->user, c->ip);
        }
        s_logon_fail(c, RB__EDGEBROKER__LOGON_STATUS__LOGON_UNAVAILABLE,
                     "the session could not be stored");
        return;
    }
    c->claimed = c->leasing = false;
    broker_session_t s = {.session_id = c->session_id,
                          .user = c->user,
                          .label = c->label,
                          .fqdn = c->fqdn,
                          .ip = c->ip,
                          .device = c->device,
                          .edge_id = c->edge_id,
                          .since_ms = c->since_ms};
    broker_events_publish(b->events, seq, true, &s, "");
    if (seq > b->seq) b->seq = seq;
    rb_metric_inc(b->m_ok);
    rb_metric_observe(b->m_duration, (double)(rb_now_ms() - c->start_ms) / 1000.0);
    rb_info("logon_ok", "user %s from %s via %s: session %.8s, %s, %s (seq %llu)", c->user,
            c->source, c->edge_id, c->session_id, c->ip, c->fqdn, (unsigned long long)seq);
    s_reply_logon(c->req, RB__EDGEBROKER__LOGON_STATUS__LOGON_OK, "", c);
    c->req = NULL;
    s_ctx_free(c);
}

static void s_on_lease(void *arg, const uint8_t *body, size_t len)
{
    logon_t *c = arg;
    broker_t *b = c->b;
    char token_sha[65];
    uint32_t addr;
    if (!body) {
        rb_warn("ipalloc_timeout", "ipalloc did not answer a lease for %s", c->user);
        s_logon_fail(c, RB__EDGEBROKER__LOGON_STATUS__LOGON_UNAVAILABLE,
                     "the address allocator did not answer");
        return;
    }
    Rb__Brokeripalloc__IpallocToBroker *m =
        s_unpack_ipalloc(body, len, RB__BROKERIPALLOC__IPALLOC_TO_BROKER__BODY_LEASE);
    const Rb__Brokeripalloc__LeaseReply *lr = m ? m->lease : NULL;
    if (!lr) {
        s_logon_fail(c, RB__EDGEBROKER__LOGON_STATUS__LOGON_UNAVAILABLE,
                     "the address allocator answered nonsense");
    } else if (lr->status == RB__BROKERIPALLOC__LEASE_STATUS__LEASE_POOL_EXHAUSTED) {
        c->leasing = false;
        s_logon_fail(c, RB__EDGEBROKER__LOGON_STATUS__LOGON_POOL_EXHAUSTED,
                     "no intranet address is free: the address pool is exhausted");
    } else if (lr->status != RB__BROKERIPALLOC__LEASE_STATUS__LEASE_OK || !lr->ip ||
               rb_ip_parse(lr->ip, &addr) != 0) {
        rb_warn("lease_failed", "ipalloc: status %d: %s", (int)lr->status,
                lr->message ? lr->message : "");
        s_logon_fail(c, RB__EDGEBROKER__LOGON_STATUS__LOGON_UNAVAILABLE,
                     "the address allocator is unavailable");
    } else {
        snprintf(c->ip, sizeof(c->ip), "%s", lr->ip);
        if (s_random_hex(c->token, BROKER_TOKEN_BYTES) != 0 ||
            s_sha256_hex(c->token, token_sha) != 0 ||
            broker_store_commit(b->store, c->session_id, c->ip, c->fqdn, token_sha, s_on_commit,
                                c) != 0)
            s_logon_fail(c, RB__EDGEBROKER__LOGON_STATUS__LOGON_UNAVAILABLE,
                         "the session could not be stored");
    }
    if (m) protobuf_c_message_free_unpacked(&m->base, NULL);
}

static void s_on_begin(void *arg, broker_begin_result_t res, const char *session_id,
                       const char *label, uint64_t since_ms)
{
    logon_t *c = arg;
    broker_t *b = c->b;
    if (res == BROKER_BEGIN_EXISTS) {
        s_logon_fail(c, RB__EDGEBROKER__LOGON_STATUS__LOGON_SESSION_EXISTS,
                     "the user already has a session");
        return;
    }
    if (res != BROKER_BEGIN_CLAIMED) {
        s_logon_fail(c, RB__EDGEBROKER__LOGON_STATUS__LOGON_UNAVAILABLE,
                     "the session store is unavailable");
        return;
    }
    c->claimed = true;
    c->since_ms = since_ms;
    snprintf(c->session_id, sizeof(c->session_id), "%s", session_id);
    snprintf(c->label, sizeof(c->label), "%s", label);
    snprintf(c->fqdn, sizeof(c->fqdn), "%s.%s", c->label, b->cfg->dns_suffix);

    Rb__Brokeripalloc__BrokerToIpalloc env = RB__BROKERIPALLOC__BROKER_TO_IPALLOC__INIT;
    Rb__Brokeripalloc__LeaseRequest lr = RB__BROKERIPALLOC__LEASE_REQUEST__INIT;
    lr.user = c->user;
    lr.session_id = c->session_id;
    env.version = RB_PROTO_VERSION;
    env.body_case = RB__BROKERIPALLOC__BROKER_TO_IPALLOC__BODY_LEASE;
    env.lease = &lr;
    if (rb_rpc_call(b->ipalloc, &env.base, BROKER_LEASE_TIMEOUT_MS, BROKER_LEASE_RETRIES,
                    s_on_lease, c) != 0) {
        s_logon_fail(c, RB__EDGEBROKER__LOGON_STATUS__LOGON_UNAVAILABLE,
                     "the address allocator is unreachable");
        return;
    }
    c->leasing = true;
}

static void s_handle_logon(broker_t *b, rb_rpc_req_t *req, const Rb__Edgebroker__EdgeToBroker *env)
{
    const Rb__Edgebroker__LogonRequest *lr = env->logon;
    char alt[RB_LABEL_MAX + 1];
    logon_t *c = s_ctx_new(b, req);
    if (!c) {
        rb_rpc_req_free(req);
        return;
    }
    if (!lr || !s_copy_field(c->user, sizeof(c->user), lr->user, true) ||
        !s_copy_field(c->device, sizeof(c->device), lr->device, false) ||
        !s_copy_field(c->edge_id, sizeof(c->edge_id), lr->edge_id, false) ||
        !s_copy_field(c->source, sizeof(c->source), lr->source, false) ||
        rb_label_from_user(c->user, c->label) != 0 ||
        rb_label_disambiguate(c->label, c->user, alt) != 0) {
        rb_warn("bad_request", "edge %s: logon without a valid user", rb_rpc_req_peer(req));
        s_logon_fail(c, RB__EDGEBROKER__LOGON_STATUS__LOGON_BAD_REQUEST,
                     "a logon needs a user name of 1 to 256 bytes");
        return;
    }
    if (broker_store_begin(b->store, c->user, c->label, alt, c->device, c->edge_id, c->source,
                           s_on_begin, c) != 0)
        s_logon_fail(c, RB__EDGEBROKER__LOGON_STATUS__LOGON_UNAVAILABLE,
                     "the session store is unavailable");
}

/* ---- logoff ---- */

static void s_reply_logoff(logon_t *c, bool found)
{
    Rb__Edgebroker__BrokerToEdge env = RB__EDGEBROKER__BROKER_TO_EDGE__INIT;
    Rb__Edgebroker__LogoffReply lr = RB__EDGEBROKER__LOGOFF_REPLY__INIT;
    lr.found = found;
    env.body_case = RB__EDGEBROKER__BROKER_TO_EDGE__BODY_LOGOFF;
    env.logoff = &lr;
    s_reply(c->req, &env);
    c->req = NULL;
    s_ctx_free(c);
}

static void s_on_logoff_release(void *arg, const uint8_t *body, size_t len)
{
    logon_t *c = arg;
    if (!body)
        rb_warn("release_timeout", "ipalloc did not answer the release of %s (session %.8s)", c->ip,
                c->session_id);
    /* The session has ended either way; the edge needs no more. */
    s_reply_logoff(c, true);
}

static void s_on_end(void *arg, int found, uint64_t seq, const broker_session_t *s)
{
    logon_t *c = arg;
    broker_t *b = c->b;
    if (found < 0) {
        /* No honest answer: the edge's call times out and it may ask again. */
        s_ctx_free(c);
        return;
    }
    if (found == 0) {
        /* Perhaps a first attempt ended it and its answer was lost before
         * the release: releasing by session id is harmless when there is
         * nothing to release, and otherwise frees a lease nobody holds. */
        s_send_release(b, "", c->session_id, s_on_release_logged, b);
        s_reply_logoff(c, false);
        return;
    }
    rb_metric_inc(b->m_logoffs);
    broker_events_publish(b->events, seq, false, s, c->reason);
    if (seq > b->seq) b->seq = seq;
    rb_info("logoff", "user %s: session %.8s ended (%s), %s released (seq %llu)", s->user,
            s->session_id, c->reason, s->ip, (unsigned long long)seq);
    snprintf(c->ip, sizeof(c->ip), "%s", s->ip);
    if (!s->ip[0] || s_send_release(b, s->ip, c->session_id, s_on_logoff_release, c) != 0)
        s_reply_logoff(c, true);
}

static void s_handle_logoff(broker_t *b, rb_rpc_req_t *req, const Rb__Edgebroker__EdgeToBroker *env)
{
    const Rb__Edgebroker__LogoffRequest *lr = env->logoff;
    logon_t *c = s_ctx_new(b, req);
    if (!c) {
        rb_rpc_req_free(req);
        return;
    }
    if (!lr || !s_copy_field(c->session_id, sizeof(c->session_id), lr->session_id, true) ||
        !s_copy_field(c->reason, sizeof(c->reason), lr->reason, false)) {
        rb_warn("bad_request", "edge %s: logoff without a valid session id", rb_rpc_req_peer(req));
        s_ctx_free(c); /* dropped: LogoffReply cannot say "bad request" */
        return;
    }
    if (!c->reason[0]) snprintf(c->reason, sizeof(c->reason), "logoff");
    if (broker_store_end(b->store, c->session_id, c->reason, s_on_end, c) != 0) s_ctx_free(c);
}

/* ---- ping ---- */

static bool s_ipalloc_ok(const broker_t *b)
{
    return b->ipalloc_ok_ms && rb_now_ms() - b->ipalloc_ok_ms <= BROKER_IPALLOC_FRESH_MS;
}

static void s_handle_ping(broker_t *b, rb_rpc_req_t *req, const Rb__Edgebroker__EdgeToBroker *env)
{
    Rb__Edgebroker__BrokerToEdge out = RB__EDGEBROKER__BROKER_TO_EDGE__INIT;
    Rb__Edgebroker__PingReply pr = RB__EDGEBROKER__PING_REPLY__INIT;
    pr.broker_id = b->cfg->broker_id;
    pr.redis_ok = rb_redis_ok(b->redis);
    pr.ipalloc_ok = s_ipalloc_ok(b);
    out.body_case = RB__EDGEBROKER__BROKER_TO_EDGE__BODY_PING;
    out.ping = &pr;
    s_reply(req, &out);
}

/* ---- dispatch ---- */

typedef void(s_handler_fn)(broker_t *b, rb_rpc_req_t *req, const Rb__Edgebroker__EdgeToBroker *env);

static const struct {
    Rb__Edgebroker__EdgeToBroker__BodyCase body;
    const char *name;
    s_handler_fn *fn;
} s_dispatch[] = {
    {RB__EDGEBROKER__EDGE_TO_BROKER__BODY_LOGON, "logon", s_handle_logon},
    {RB__EDGEBROKER__EDGE_TO_BROKER__BODY_LOGOFF, "logoff", s_handle_logoff},
    {RB__EDGEBROKER__EDGE_TO_BROKER__BODY_PING, "ping", s_handle_ping},
};

static void s_on_edge_request(void *arg, rb_rpc_req_t *req, const uint8_t *body, size_t len)
{
    broker_t *b = arg;
    Rb__Edgebroker__EdgeToBroker *env = (Rb__Edgebroker__EdgeToBroker *)rb_pb_unpack(
        &rb__edgebroker__edge_to_broker__descriptor, body, len, BROKER_MAX_REQUEST,
        rb_rpc_req_peer(req));
    if (!env) {
        rb_rpc_req_free(req); /* logged by rb_pb_unpack */
        return;
    }
    if (env->version != RB_PROTO_VERSION) {
        rb_warn("bad_version", "edge %s speaks protocol version %u, we speak %u",
                rb_rpc_req_peer(req), env->version, RB_PROTO_VERSION);
        if (env->body_case == RB__EDGEBROKER__EDGE_TO_BROKER__BODY_LOGON)
            s_reply_logon(req, RB__EDGEBROKER__LOGON_STATUS__LOGON_BAD_REQUEST,
                          "protocol version mismatch", NULL);
        else
            rb_rpc_req_free(req);
        goto out;
    }
    for (size_t i = 0; i < sizeof(s_dispatch) / sizeof(s_dispatch[0]); i++) {
        if (s_dispatch[i].body == env->body_case) {
            rb_debug("request", "%s from edge %s", s_dispatch[i].name, rb_rpc_req_peer(req));
            s_dispatch[i].fn(b, req, env);
            goto out;
        }
    }
    rb_warn("unknown_request", "edge %s sent a request of unknown type %d; dropped",
            rb_rpc_req_peer(req), (int)env->body_case);
    rb_rpc_req_free(req);
out:
    protobuf_c_message_free_unpacked(&env->base, NULL);
}

/* ---- the 1 s tick: stats, heartbeat, ipalloc ping ---- */

static void s_on_stats(void *arg, int rc, uint64_t seq, uint64_t sessions)
{
    broker_t *b = arg;
    b->stats_pending = false;
    if (rc != 0) return;
    b->sessions = sessions;
    if (seq > b->seq) b->seq = seq;
    rb_metric_set(b->m_sessions, (double)sessions);
    broker_events_heartbeat(b->events, seq);
}

static void s_on_ipalloc_ping(void *arg, const uint8_t *body, size_t len)
{
    broker_t *b = arg;
    b->ping_pending = false;
    if (!body) return;
    Rb__Brokeripalloc__IpallocToBroker *m =
        s_unpack_ipalloc(body, len, RB__BROKERIPALLOC__IPALLOC_TO_BROKER__BODY_PING);
    if (m && m->ping && m->ping->redis_ok) b->ipalloc_ok_ms = rb_now_ms();
    if (m) protobuf_c_message_free_unpacked(&m->base, NULL);
}

static void s_ping_ipalloc(broker_t *b)
{
    Rb__Brokeripalloc__BrokerToIpalloc env = RB__BROKERIPALLOC__BROKER_TO_IPALLOC__INIT;
    Rb__Brokeripalloc__PingRequest pr = RB__BROKERIPALLOC__PING_REQUEST__INIT;
    env.version = RB_PROTO_VERSION;
    env.body_case = RB__BROKERIPALLOC__BROKER_TO_IPALLOC__BODY_PING;
    env.ping = &pr;
    if (rb_rpc_call(b->ipalloc, &env.base, BROKER_TICK_MS, 0, s_on_ipalloc_ping, b) == 0)
        b->ping_pending = true;
}

static void s_on_tick(rb_loop_t *loop, void *arg)
{
    broker_t *b = arg;
    if (!b->stats_pending && broker_store_stats(b->store, s_on_stats, b) == 0)
        b->stats_pending = true;
    if (!b->ping_pending) s_ping_ipalloc(b);
}

/* ---- object ---- */

broker_t *broker_new(rb_loop_t *loop, const broker_config_t *cfg)
{
    char err[256];
    char ipalloc_pub[RB_Z85_KEY_LEN + 1] = "";
    broker_t *b = calloc(1, sizeof(*b));
    if (!b) return NULL;
    b->loop = loop;
    b->cfg = cfg;
    if (rb_curve_load(&b->curve, cfg->curve_secret_key, err, sizeof(err)) != 0) {
        rb_error("bad_curve_key", "%s", err);
        goto fail;
    }
    if (b->curve.enabled &&
        rb_curve_read_public(cfg->ipalloc_public_key, ipalloc_pub, err, sizeof(err)) != 0) {
        rb_error("bad_curve_key", "ipalloc_public_key: %s", err);
        goto fail;
    }
    rb_redis_config_t rc = {.host = cfg->redis_host,
                            .port = (int)cfg->redis_port,
                            .socket_path = cfg->redis_socket,
                            .password = cfg->redis_password};
    b->redis = rb_redis_new(loop, &rc);
    if (!b->redis || !(b->store = broker_store_new(b->redis))) goto fail;
    b->events = broker_events_new(loop, cfg->listen_events, cfg->listen_snapshot, &b->curve,
                                  b->store, cfg->broker_id);
    if (!b->events) goto fail;
    void *dealer = rb_zsock_connect(ZMQ_DEALER, cfg->ipalloc_endpoint, &b->curve, ipalloc_pub);
    if (!dealer) goto fail;
    b->ipalloc = rb_rpc_client_new(loop, dealer, "ipalloc");
    if (!b->ipalloc) {
        rb_zsock_close(&dealer);
        goto fail;
    }
    void *router = rb_zsock_bind(ZMQ_ROUTER, cfg->listen_edge, &b->curve);
    if (!router) goto fail;
    b->edge = rb_rpc_server_new(loop, router, s_on_edge_request, b);
    if (!b->edge) {
        rb_zsock_close(&router);
        goto fail;
    }
    b->tick = rb_loop_add_timer(loop, BROKER_TICK_MS, true, s_on_tick, b);
    if (!b->tick) goto fail;

    const char *h = "logon requests by result";
    b->m_sessions = rb_gauge("reachback_sessions", NULL, "live sessions in the cluster");
    b->m_ok = rb_counter("reachback_logons_total", "result=\"ok\"", h);
    b->m_exists = rb_counter("reachback_logons_total", "result=\"exists\"", h);
    b->m_exhausted = rb_counter("reachback_logons_total", "result=\"exhausted\"", h);
    b->m_unavailable = rb_counter("reachback_logons_total", "result=\"unavailable\"", h);
    b->m_bad = rb_counter("reachback_logons_total", "result=\"bad_request\"", h);
    b->m_logoffs = rb_counter("reachback_logoffs_total", NULL, "sessions ended by a logoff");
    b->m_duration =
        rb_histogram("reachback_logon_duration_seconds", NULL, "time from logon request to answer");
    s_ping_ipalloc(b);
    rb_info("broker_started", "%s: edges on %s, events on %s, snapshots on %s, ipalloc at %s",
            cfg->broker_id, cfg->listen_edge, cfg->listen_events, cfg->listen_snapshot,
            cfg->ipalloc_endpoint);
    return b;
fail:
    broker_destroy(&b);
    return NULL;
}

void broker_destroy(broker_t **bp)
{
    if (!bp || !*bp) return;
    broker_t *b = *bp;
    *bp = NULL;
    rb_loop_cancel_timer(b->loop, b->tick);
    /* Order: whatever may call back into a logon context goes first (the
     * edge server, ipalloc calls, store calls), then the contexts. */
    rb_rpc_server_destroy(&b->edge);
    rb_rpc_client_destroy(&b->ipalloc);
    broker_events_destroy(&b->events); /* needs the store */
    broker_store_destroy(&b->store);
    rb_redis_destroy(&b->redis);
    while (b->ctxs)
        s_ctx_free(b->ctxs);
    explicit_bzero(b->curve.secret_key, sizeof(b->curve.secret_key));
    free(b);
}

bool broker_ready(void *arg, rb_buf_t *why)
{
    broker_t *b = arg;
    bool ok = true;
    if (!rb_redis_ok(b->redis)) {
        rb_buf_puts(why, "Redis does not answer");
        ok = false;
    }
    if (!s_ipalloc_ok(b)) {
        rb_buf_puts(why, ok ? "" : "; ");
        rb_buf_puts(why, "ipalloc did not answer a ping within 3 s");
        ok = false;
    }
    return ok;
}

void broker_status_info(void *arg, rb_buf_t *json)
{
    broker_t *b = arg;
    rb_buf_puts(json, "\"broker_id\":\"");
    rb_buf_json_escape(json, b->cfg->broker_id);
    rb_buf_printf(json, "\",\"sessions\":%llu,\"seq\":%llu,\"ipalloc_ok\":%s,\"redis_ok\":%s",
                  (unsigned long long)b->sessions, (unsigned long long)b->seq,
                  s_ipalloc_ok(b) ? "true" : "false", rb_redis_ok(b->redis) ? "true" : "false");
}
