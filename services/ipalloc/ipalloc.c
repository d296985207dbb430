/* ipalloc: the IP allocator service object (see ipalloc.h).
 *
 * Requests arrive as BrokerToIpalloc envelopes on a ROUTER (rb_rpc_server)
 * and are dispatched by a constant table on the oneof case. Each lease or
 * release is one asynchronous ipalloc_store call; the request waits in a
 * context that the store's callback answers, so the loop never blocks on
 * Redis. Pool usage for /status and the gauges comes from a stats script run
 * once a second, never per status request. */
#include "ipalloc.h"
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>
#include "broker_ipalloc.pb-c.h"
#include "ipalloc_store.h"
#include "rb_cidr.h"
#include "rb_log.h"
#include "rb_metrics.h"
#include "rb_pb.h"
#include "rb_redis.h"
#include "rb_rpc.h"
#include "rb_zmq.h"

/* A BrokerToIpalloc is a few short strings; refuse anything bigger. */
#define IPALLOC_MAX_REQUEST 4096
#define IPALLOC_STATS_MS 1000

const rb_option_t ipalloc_options[] = {
    RB_OPT_COMMON(ipalloc_config_t),
    {"ipalloc_id", RB_OPT_STRING, "ipalloc-1", offsetof(ipalloc_config_t, ipalloc_id), 0, 0,
     "name of this instance in logs and /status"},
    {"listen", RB_OPT_STRING, "tcp://127.0.0.1:7301", offsetof(ipalloc_config_t, listen), 0, 0,
     "ZeroMQ endpoint brokers connect to"},
    {"pool", RB_OPT_STRING, NULL, offsetof(ipalloc_config_t, pool), 0, 0,
     "comma-separated CIDR blocks to lease from"},
    {"exclude", RB_OPT_STRING, "", offsetof(ipalloc_config_t, exclude), 0, 0,
     "comma-separated addresses or blocks never leased"},
    {"redis_host", RB_OPT_STRING, "127.0.0.1", offsetof(ipalloc_config_t, redis_host), 0, 0,
     "Redis address"},
    {"redis_port", RB_OPT_INT, "6379", offsetof(ipalloc_config_t, redis_port), 1, 65535,
     "Redis TCP port"},
    {"redis_socket", RB_OPT_STRING, "", offsetof(ipalloc_config_t, redis_socket), 0, 0,
     "Redis unix socket path; overrides redis_host/redis_port when set"},
    {"redis_password", RB_OPT_STRING, "", offsetof(ipalloc_config_t, redis_password), 0, 0,
     "Redis AUTH password"},
    {"curve_secret_key", RB_OPT_STRING, "", offsetof(ipalloc_config_t, curve_secret_key), 0, 0,
     "our CURVE secret key file; empty: no CURVE"},
    {"curve_allowed_keys", RB_OPT_STRING, "", offsetof(ipalloc_config_t, curve_allowed_keys), 0, 0,
     "comma-separated public key files of the brokers allowed to connect"},
    RB_OPT_END,
};

typedef struct ipalloc_ctx {
    struct ipalloc_ctx *prev, *next;
    ipalloc_t *ia;
    rb_rpc_req_t *req;
    uint64_t start_ms;
} ipalloc_ctx_t;

struct ipalloc {
    rb_loop_t *loop;
    const ipalloc_config_t *cfg;
    rb_pool_t *pool;
    char digest[65];
    rb_curve_t curve;
    rb_rpc_server_t *server;
    rb_redis_t *redis;
    ipalloc_store_t *store;
    rb_timer_t *stats_timer;
    bool pool_ready;
    bool init_pending;
    bool stats_pending;
    ipalloc_stats_t stats;
    ipalloc_ctx_t *ctxs; /* requests waiting for Redis */

    rb_metric_t *m_leases;
    rb_metric_t *m_ok, *m_exhausted, *m_error;
    rb_metric_t *m_duration;
};

/* ---- contexts of requests in progress ---- */

static ipalloc_ctx_t *s_ctx_new(ipalloc_t *ia, rb_rpc_req_t *req)
{
    ipalloc_ctx_t *c = calloc(1, sizeof(*c));
    if (!c) return NULL;
    c->ia = ia;
    c->req = req;
    c->start_ms = rb_now_ms();
    c->next = ia->ctxs;
    if (ia->ctxs) ia->ctxs->prev = c;
    ia->ctxs = c;
    return c;
}

static void s_ctx_free(ipalloc_ctx_t *c)
{
    ipalloc_t *ia = c->ia;
    if (c->prev)
        c->prev->next = c->next;
    else
        ia->ctxs = c->next;
    if (c->next) c->next->prev = c->prev;
    rb_rpc_req_free(c->req); /* NULL when already answered */
    free(c);
}

/* ---- replies ---- */

static void s_reply(rb_rpc_req_t *req, Rb__Brokeripalloc__IpallocToBroker *env)
{
    env->version = RB_PROTO_VERSION;
    if (rb_rpc_reply(req, &env->base) != 0)
        rb_warn("reply_failed", "could not answer %s", rb_rpc_req_peer(req));
}

static void s_reply_lease(rb_rpc_req_t *req, Rb__Brokeripalloc__LeaseStatus status, const char *ip,
                          const char *pool, const char *message)
{
    Rb__Brokeripalloc__IpallocToBroker env = RB__BROKERIPALLOC__IPALLOC_TO_BROKER__INIT;
    Rb__Brokeripalloc__LeaseReply lr = RB__BROKERIPALLOC__LEASE_REPLY__INIT;
    lr.status = status;
    lr.ip = (char *)(ip ? ip : "");
    lr.pool = (char *)(pool ? pool : "");
    lr.message = (char *)(message ? message : "");
    env.body_case = RB__BROKERIPALLOC__IPALLOC_TO_BROKER__BODY_LEASE;
    env.lease = &lr;
    s_reply(req, &env);
}

/* ---- handlers ---- */

static void s_on_lease(void *arg, ipalloc_lease_result_t res, const char *ip)
{
    ipalloc_ctx_t *c = arg;
    ipalloc_t *ia = c->ia;
    rb_rpc_req_t *req = c->req;
    c->req = NULL;
    rb_metric_observe(ia->m_duration, (double)(rb_now_ms() - c->start_ms) / 1000.0);
    switch (res) {
    case IPALLOC_LEASE_OK:
        rb_metric_inc(ia->m_ok);
        s_reply_lease(req, RB__BROKERIPALLOC__LEASE_STATUS__LEASE_OK, ip, ia->cfg->pool, "");
        break;
    case IPALLOC_LEASE_EXHAUSTED:
        rb_metric_inc(ia->m_exhausted);
        rb_warn("pool_exhausted", "no free address left in pool %s", ia->cfg->pool);
        s_reply_lease(req, RB__BROKERIPALLOC__LEASE_STATUS__LEASE_POOL_EXHAUSTED, NULL,
                      ia->cfg->pool, "the address pool is exhausted");
        break;
    default:
        rb_metric_inc(ia->m_error);
        s_reply_lease(req, RB__BROKERIPALLOC__LEASE_STATUS__LEASE_UNAVAILABLE, NULL, NULL,
                      "Redis did not answer");
        break;
    }
    s_ctx_free(c);
}

static bool s_field_ok(const char *v, size_t max)
{
    size_t n = v ? strlen(v) : 0;
    return n > 0 && n <= max;
}

static void s_handle_lease(ipalloc_t *ia, rb_rpc_req_t *req,
                           const Rb__Brokeripalloc__BrokerToIpalloc *env)
{
    const Rb__Brokeripalloc__LeaseRequest *lr = env->lease;
    if (!lr || !s_field_ok(lr->user, 256) || !s_field_ok(lr->session_id, 128)) {
        rb_warn("bad_request", "%s: lease without a valid user and session id",
                rb_rpc_req_peer(req));
        s_reply_lease(req, RB__BROKERIPALLOC__LEASE_STATUS__LEASE_BAD_REQUEST, NULL, NULL,
                      "user and session_id are required");
        return;
    }
    if (!ia->pool_ready) {
        rb_metric_inc(ia->m_error);
        s_reply_lease(req, RB__BROKERIPALLOC__LEASE_STATUS__LEASE_UNAVAILABLE, NULL, NULL,
                      "the pool is not initialised yet");
        return;
    }
    ipalloc_ctx_t *c = s_ctx_new(ia, req);
    if (!c || ipalloc_store_lease(ia->store, lr->user, lr->session_id, s_on_lease, c) != 0) {
        if (c) {
            c->req = NULL;
            s_ctx_free(c);
        }
        rb_metric_inc(ia->m_error);
        s_reply_lease(req, RB__BROKERIPALLOC__LEASE_STATUS__LEASE_UNAVAILABLE, NULL, NULL,
                      "Redis is not connected");
    }
}

static void s_on_release(void *arg, int found)
{
    ipalloc_ctx_t *c = arg;
    if (found >= 0) {
        Rb__Brokeripalloc__IpallocToBroker env = RB__BROKERIPALLOC__IPALLOC_TO_BROKER__INIT;
        Rb__Brokeripalloc__ReleaseReply rr = RB__BROKERIPALLOC__RELEASE_REPLY__INIT;
        rr.found = found == 1;
        env.body_case = RB__BROKERIPALLOC__IPALLOC_TO_BROKER__BODY_RELEASE;
        env.release = &rr;
        s_reply(c->req, &env);
        c->req = NULL;
    }
    /* On a Redis failure there is no honest answer: the broker's call times
     * out and it may retry (release is idempotent). */
    s_ctx_free(c);
}

static void s_handle_release(ipalloc_t *ia, rb_rpc_req_t *req,
                             const Rb__Brokeripalloc__BrokerToIpalloc *env)
{
    const Rb__Brokeripalloc__ReleaseRequest *rr = env->release;
    uint32_t addr;
    if (!rr || !s_field_ok(rr->session_id, 128) || !rr->ip ||
        (*rr->ip && rb_ip_parse(rr->ip, &addr) != 0)) {
        rb_warn("bad_request", "%s: release without a valid address and session id",
                rb_rpc_req_peer(req));
        rb_rpc_req_free(req);
        return;
    }
    ipalloc_ctx_t *c = s_ctx_new(ia, req);
    if (!c) {
        rb_rpc_req_free(req);
        return;
    }
    if (ipalloc_store_release(ia->store, rr->ip, rr->session_id, s_on_release, c) != 0)
        s_ctx_free(c);
}

static void s_handle_ping(ipalloc_t *ia, rb_rpc_req_t *req,
                          const Rb__Brokeripalloc__BrokerToIpalloc *env)
{
    Rb__Brokeripalloc__IpallocToBroker out = RB__BROKERIPALLOC__IPALLOC_TO_BROKER__INIT;
    Rb__Brokeripalloc__PingReply pr = RB__BROKERIPALLOC__PING_REPLY__INIT;
    pr.redis_ok = rb_redis_ok(ia->redis) && ia->pool_ready;
    out.body_case = RB__BROKERIPALLOC__IPALLOC_TO_BROKER__BODY_PING;
    out.ping = &pr;
    s_reply(req, &out);
}

typedef void(s_handler_fn)(ipalloc_t *ia, rb_rpc_req_t *req,
                           const Rb__Brokeripalloc__BrokerToIpalloc *env);

static const struct {
    Rb__Brokeripalloc__BrokerToIpalloc__BodyCase body;
    const char *name;
    s_handler_fn *fn;
} s_dispatch[] = {
    {RB__BROKERIPALLOC__BROKER_TO_IPALLOC__BODY_LEASE, "lease", s_handle_lease},
    {RB__BROKERIPALLOC__BROKER_TO_IPALLOC__BODY_RELEASE, "release", s_handle_release},
    {RB__BROKERIPALLOC__BROKER_TO_IPALLOC__BODY_PING, "ping", s_handle_ping},
};

static void s_on_request(void *arg, rb_rpc_req_t *req, const uint8_t *body, size_t len)
{
    ipalloc_t *ia = arg;
    Rb__Brokeripalloc__BrokerToIpalloc *env = (Rb__Brokeripalloc__BrokerToIpalloc *)rb_pb_unpack(
        &rb__brokeripalloc__broker_to_ipalloc__descriptor, body, len, IPALLOC_MAX_REQUEST,
        rb_rpc_req_peer(req));
    if (!env) {
        /* Logged by rb_pb_unpack; nothing to answer a message we cannot read. */
        rb_rpc_req_free(req);
        return;
    }
    if (env->version != RB_PROTO_VERSION) {
        rb_warn("bad_version", "%s speaks protocol version %u, we speak %u", rb_rpc_req_peer(req),
                env->version, RB_PROTO_VERSION);
        s_reply_lease(req, RB__BROKERIPALLOC__LEASE_STATUS__LEASE_BAD_REQUEST, NULL, NULL,
                      "protocol version mismatch");
        goto out;
    }
    for (size_t i = 0; i < sizeof(s_dispatch) / sizeof(s_dispatch[0]); i++) {
        if (s_dispatch[i].body == env->body_case) {
            rb_debug("request", "%s from %s", s_dispatch[i].name, rb_rpc_req_peer(req));
            s_dispatch[i].fn(ia, req, env);
            goto out;
        }
    }
    rb_warn("unknown_request", "%s sent a request of unknown type %d", rb_rpc_req_peer(req),
            (int)env->body_case);
    s_reply_lease(req, RB__BROKERIPALLOC__LEASE_STATUS__LEASE_BAD_REQUEST, NULL, NULL,
                  "unknown request");
out:
    protobuf_c_message_free_unpacked(&env->base, NULL);
}

/* ---- pool initialisation and stats ---- */

static void s_on_init(void *arg, int rc, bool rebuilt)
{
    ipalloc_t *ia = arg;
    ia->init_pending = false;
    if (rc == 0) {
        ia->pool_ready = true;
        rb_info("pool_ready", "pool %s (%llu addresses) %s", ia->cfg->pool,
                (unsigned long long)rb_pool_size(ia->pool),
                rebuilt ? "rebuilt" : "already in Redis");
    }
    /* On failure the next stats tick tries again. */
}

static void s_init_pool(ipalloc_t *ia)
{
    if (ia->init_pending) return;
    if (ipalloc_store_init_pool(ia->store, ia->pool, s_on_init, ia) == 0) ia->init_pending = true;
}

static void s_on_redis_up(void *arg)
{
    /* A Redis that restarted empty has lost the pool: check it each time. */
    s_init_pool(arg);
}

static void s_on_stats(void *arg, const ipalloc_stats_t *st)
{
    ipalloc_t *ia = arg;
    ia->stats_pending = false;
    if (!st) return;
    ia->stats = *st;
    rb_metric_set(ia->m_leases, (double)st->leased);
    if (strcmp(st->digest, ia->digest) != 0) {
        /* Another instance with a different pool, or Redis lost its data. */
        if (ia->pool_ready) rb_warn("pool_changed", "the pool in Redis is not ours; rebuilding it");
        ia->pool_ready = false;
        s_init_pool(ia);
    }
}

static void s_on_stats_tick(rb_loop_t *loop, void *arg)
{
    ipalloc_t *ia = arg;
    if (!rb_redis_ok(ia->redis)) {
        ia->pool_ready = false;
        return;
    }
    if (!ia->stats_pending && ipalloc_store_stats(ia->store, s_on_stats, ia) == 0)
        ia->stats_pending = true;
}

/* ---- object ---- */

ipalloc_t *ipalloc_new(rb_loop_t *loop, const ipalloc_config_t *cfg)
{
    char err[256];
    ipalloc_t *ia = calloc(1, sizeof(*ia));
    if (!ia) return NULL;
    ia->loop = loop;
    ia->cfg = cfg;
    ia->pool = rb_pool_new(cfg->pool, cfg->exclude, err, sizeof(err));
    if (!ia->pool) {
        rb_error("bad_pool", "pool '%s': %s", cfg->pool ? cfg->pool : "", err);
        goto fail;
    }
    if (ipalloc_store_pool_digest(ia->pool, ia->digest) != 0) goto fail;
    if (rb_curve_load(&ia->curve, cfg->curve_secret_key, err, sizeof(err)) != 0) {
        rb_error("bad_curve_key", "%s", err);
        goto fail;
    }
    void *router = rb_zsock_bind(ZMQ_ROUTER, cfg->listen, &ia->curve);
    if (!router) goto fail;
    ia->server = rb_rpc_server_new(loop, router, s_on_request, ia);
    if (!ia->server) {
        rb_zsock_close(&router);
        goto fail;
    }
    rb_redis_config_t rc = {.host = cfg->redis_host,
                            .port = (int)cfg->redis_port,
                            .socket_path = cfg->redis_socket,
                            .password = cfg->redis_password};
    ia->redis = rb_redis_new(loop, &rc);
    if (!ia->redis || !(ia->store = ipalloc_store_new(ia->redis))) goto fail;
    rb_redis_on_up(ia->redis, s_on_redis_up, ia);
    ia->stats_timer = rb_loop_add_timer(loop, IPALLOC_STATS_MS, true, s_on_stats_tick, ia);
    if (!ia->stats_timer) goto fail;

    ia->m_leases = rb_gauge("reachback_leases", NULL, "addresses under lease");
    ia->m_ok = rb_counter("reachback_leases_total", "result=\"ok\"", "lease requests by result");
    ia->m_exhausted =
        rb_counter("reachback_leases_total", "result=\"exhausted\"", "lease requests by result");
    ia->m_error =
        rb_counter("reachback_leases_total", "result=\"error\"", "lease requests by result");
    ia->m_duration =
        rb_histogram("reachback_lease_duration_seconds", NULL, "time from lease request to answer");
    rb_info("ipalloc_started", "%s listening on %s, pool %s (%llu addresses)", cfg->ipalloc_id,
            cfg->listen, cfg->pool, (unsigned long long)rb_pool_size(ia->pool));
    return ia;
fail:
    ipalloc_destroy(&ia);
    return NULL;
}

void ipalloc_destroy(ipalloc_t **iap)
{
    if (!iap || !*iap) return;
    ipalloc_t *ia = *iap;
    *iap = NULL;
    rb_loop_cancel_timer(ia->loop, ia->stats_timer);
    /* Store before Redis: it cancels its commands in rb_redis. */
    ipalloc_store_destroy(&ia->store);
    rb_redis_destroy(&ia->redis);
    while (ia->ctxs)
        s_ctx_free(ia->ctxs);
    rb_rpc_server_destroy(&ia->server);
    rb_pool_destroy(&ia->pool);
    memset(ia->curve.secret_key, 0, sizeof(ia->curve.secret_key));
    free(ia);
}

bool ipalloc_ready(void *arg, rb_buf_t *why)
{
    ipalloc_t *ia = arg;
    if (!rb_redis_ok(ia->redis)) {
        rb_buf_puts(why, "Redis does not answer");
        return false;
    }
    if (!ia->pool_ready) {
        rb_buf_puts(why, "the address pool is not initialised");
        return false;
    }
    return true;
}

void ipalloc_status_info(void *arg, rb_buf_t *json)
{
    ipalloc_t *ia = arg;
    rb_buf_puts(json, "\"ipalloc_id\":\"");
    rb_buf_json_escape(json, ia->cfg->ipalloc_id);
    rb_buf_puts(json, "\",\"pool\":\"");
    rb_buf_json_escape(json, ia->cfg->pool);
    rb_buf_printf(json,
                  "\",\"pool_size\":%llu,\"leased\":%llu,\"free\":%llu,"
                  "\"pool_ready\":%s,\"redis_ok\":%s",
                  (unsigned long long)rb_pool_size(ia->pool), (unsigned long long)ia->stats.leased,
                  (unsigned long long)ia->stats.free, ia->pool_ready ? "true" : "false",
                  rb_redis_ok(ia->redis) ? "true" : "false");
}
