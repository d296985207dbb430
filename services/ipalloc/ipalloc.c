/* ipalloc: the IP allocator service object (see ipalloc.h).
 *
 * Requests arrive as BrokerToIpalloc envelopes on a ROUTER (rb_rpc_server)
 * and are dispatched by a constant table on the oneof case. Each lease,
 * release or pools request is one asynchronous ipalloc_store call; the
 * request waits in a context that the store's callback answers, so the loop
 * never blocks on Redis. The address plan (which pool a user's groups pick,
 * reservations, groups without addresses) is decided here from
 * ipalloc_pools; Redis only sees the chosen pool. Pool usage for /status
 * and the gauges comes from a stats script run once a second, never per
 * status request. */
#include "ipalloc.h"
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>
#include "broker_ipalloc.pb-c.h"
#include "ipalloc_pools.h"
#include "ipalloc_store.h"
#include "rb_cidr.h"
#include "rb_log.h"
#include "rb_metrics.h"
#include "rb_pb.h"
#include "rb_redis.h"
#include "rb_rpc.h"
#include "rb_zmq.h"

/* A BrokerToIpalloc is a few short strings and a user's groups; refuse
 * anything bigger. The cap also bounds the group lookups of one lease. */
#define IPALLOC_MAX_REQUEST 16384
/* A ReconcileRequest lists every live session with an address (~80 bytes
 * each): only it may be bigger, up to the protocol's limit. */
#define IPALLOC_MAX_RECONCILE RB_PB_MAX_MESSAGE
/* Below this a broker's reconcile could release the lease of a logon it has
 * not committed yet: refused. */
#define IPALLOC_RECONCILE_MIN_GRACE_MS 1000
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
     "comma-separated addresses or blocks never leased (in every pool)"},
    {"group_pools", RB_OPT_STRING, "", offsetof(ipalloc_config_t, group_pools), 0, 0,
     "per-group pools, group=cidr[+cidr...];group2=...: the first of a user's groups with a "
     "pool decides; disjoint from each other and from pool"},
    {"static", RB_OPT_STRING, "", offsetof(ipalloc_config_t, statics), 0, 0,
     "static reservations, user=ip,user2=ip2: the address is only ever leased to its user"},
    {"spillover", RB_OPT_BOOL, "no", offsetof(ipalloc_config_t, spillover), 0, 0,
     "an exhausted pool answers no address (a session without one) instead of an error"},
    {"no_address_groups", RB_OPT_STRING, "", offsetof(ipalloc_config_t, no_address_groups), 0, 0,
     "comma-separated groups whose members never get an address"},
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
    /* Leases: for the answer and the logs. */
    size_t pool;
    char user[257], session[129], old[129];
} ipalloc_ctx_t;

/* One pool of the plan and what Redis last said about it. */
typedef struct {
    ipalloc_t *ia;
    size_t index;
    char digest[65]; /* the config's */
    bool ready, init_pending;
    ipalloc_pool_stats_t stats;
    rb_metric_t *m_leases, *m_free;
} s_pool_state_t;

struct ipalloc {
    rb_loop_t *loop;
    const ipalloc_config_t *cfg;
    ipalloc_pools_t *plan;
    s_pool_state_t *pools; /* one per pool of the plan, same order */
    size_t npools;
    rb_curve_t curve;
    rb_rpc_server_t *server;
    rb_redis_t *redis;
    ipalloc_store_t *store;
    rb_timer_t *stats_timer;
    bool stats_pending;
    uint64_t leased;     /* every lease, from the last stats */
    ipalloc_ctx_t *ctxs; /* requests waiting for Redis */

    rb_metric_t *m_ok, *m_exhausted, *m_no_address, *m_error;
    rb_metric_t *m_moved;
    rb_metric_t *m_rec_moved, *m_rec_released;
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
    rb_rpc_reply(req, &env->base); /* logs a failure itself, and frees req */
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

static bool s_all_ready(const ipalloc_t *ia)
{
    for (size_t i = 0; i < ia->npools; i++)
        if (!ia->pools[i].ready) return false;
    return true;
}

static void s_on_lease(void *arg, const ipalloc_lease_t *l)
{
    ipalloc_ctx_t *c = arg;
    ipalloc_t *ia = c->ia;
    rb_rpc_req_t *req = c->req;
    const char *pool = ipalloc_pools_name(ia->plan, c->pool);
    c->req = NULL;
    rb_metric_observe(ia->m_duration, (double)(rb_now_ms() - c->start_ms) / 1000.0);
    if (l->takeover_missed)
        rb_info("takeover_missed", "session %s of %s held no address; %s lease for %s", c->old,
                c->user, l->res == IPALLOC_LEASE_OK ? l->how : "no", c->session);
    if (l->reserved_busy)
        rb_warn("reserved_address_busy",
                "the address reserved for %s is leased to another session; session %s gets "
                "another one",
                c->user, c->session);
    switch (l->res) {
    case IPALLOC_LEASE_OK: {
        uint32_t ip = 0;
        int k = rb_ip_parse(l->ip, &ip) == 0 ? ipalloc_pools_find(ia->plan, ip) : -1;
        rb_metric_inc(ia->m_ok);
        if (strcmp(l->how, "moved") == 0) {
            rb_metric_inc(ia->m_moved);
            rb_info("lease_moved", "%s moved from session %s to %s for %s%s", l->ip, c->old,
                    c->session, c->user,
                    l->own_released ? "; the address the new session held went back" : "");
        }
        s_reply_lease(req, RB__BROKERIPALLOC__LEASE_STATUS__LEASE_OK, l->ip,
                      k >= 0 ? ipalloc_pools_name(ia->plan, (size_t)k) : "", "");
        break;
    }
    case IPALLOC_LEASE_EXHAUSTED:
        if (ia->cfg->spillover) {
            rb_metric_inc(ia->m_no_address);
            rb_warn("pool_exhausted",
                    "no free address left in pool %s; spillover: session %s of "
                    "%s gets none",
                    pool, c->session, c->user);
            s_reply_lease(req, RB__BROKERIPALLOC__LEASE_STATUS__LEASE_NO_ADDRESS, NULL, pool,
                          "the address pool is exhausted; a session without an address");
        } else {
            rb_metric_inc(ia->m_exhausted);
            rb_warn("pool_exhausted", "no free address left in pool %s", pool);
            s_reply_lease(req, RB__BROKERIPALLOC__LEASE_STATUS__LEASE_POOL_EXHAUSTED, NULL, pool,
                          "the address pool is exhausted");
        }
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
    /* Groups are only compared with the configured names: one that matches
     * none (empty, too long) is simply not a group with a pool. */
    if (!lr || !s_field_ok(lr->user, 256) || !s_field_ok(lr->session_id, 128) ||
        (lr->take_over_session && *lr->take_over_session &&
         (!s_field_ok(lr->take_over_session, 128) ||
          strcmp(lr->take_over_session, lr->session_id) == 0))) {
        rb_warn("bad_request", "%s: lease without a valid user, session id and take-over session",
                rb_rpc_req_peer(req));
        s_reply_lease(req, RB__BROKERIPALLOC__LEASE_STATUS__LEASE_BAD_REQUEST, NULL, NULL,
                      "user and session_id are required; take_over_session must differ from "
                      "session_id");
        return;
    }
    /* Not even a take-over: these users have no address, whatever they
     * held before (the broker releases the old session's lease). */
    if (ipalloc_pools_no_address(ia->plan, lr->groups, lr->n_groups)) {
        rb_metric_inc(ia->m_no_address);
        rb_debug("no_address", "%s is in a group without addresses", lr->user);
        s_reply_lease(req, RB__BROKERIPALLOC__LEASE_STATUS__LEASE_NO_ADDRESS, NULL, NULL,
                      "the user's group gets no address");
        return;
    }
    if (!s_all_ready(ia)) {
        rb_metric_inc(ia->m_error);
        s_reply_lease(req, RB__BROKERIPALLOC__LEASE_STATUS__LEASE_UNAVAILABLE, NULL, NULL,
                      "the pools are not initialised yet");
        return;
    }
    ipalloc_lease_req_t q = {
        .user = lr->user, .session = lr->session_id, .take_over = lr->take_over_session};
    size_t pool = ipalloc_pools_for_groups(ia->plan, lr->groups, lr->n_groups), rpool = 0;
    q.pool = ipalloc_pools_name(ia->plan, pool);
    if (ipalloc_pools_reserved(ia->plan, lr->user, &q.reserved_ip, &rpool))
        q.reserved_pool = ipalloc_pools_name(ia->plan, rpool);
    ipalloc_ctx_t *c = s_ctx_new(ia, req);
    if (c) {
        c->pool = pool;
        snprintf(c->user, sizeof(c->user), "%s", lr->user);
        snprintf(c->session, sizeof(c->session), "%s", lr->session_id);
        snprintf(c->old, sizeof(c->old), "%s", q.take_over ? q.take_over : "");
    }
    if (!c || ipalloc_store_lease(ia->store, &q, s_on_lease, c) != 0) {
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
    pr.redis_ok = rb_redis_ok(ia->redis) && s_all_ready(ia);
    out.body_case = RB__BROKERIPALLOC__IPALLOC_TO_BROKER__BODY_PING;
    out.ping = &pr;
    s_reply(req, &out);
}

static void s_on_pools(void *arg, const ipalloc_stats_t *st)
{
    ipalloc_ctx_t *c = arg;
    ipalloc_t *ia = c->ia;
    if (st) {
        Rb__Brokeripalloc__IpallocToBroker env = RB__BROKERIPALLOC__IPALLOC_TO_BROKER__INIT;
        Rb__Brokeripalloc__PoolsReply pr = RB__BROKERIPALLOC__POOLS_REPLY__INIT;
        Rb__Brokeripalloc__PoolStats *ps = calloc(ia->npools, sizeof(*ps));
        Rb__Brokeripalloc__PoolStats **pp = calloc(ia->npools, sizeof(*pp));
        if (ps && pp) {
            /* In the plan's order, each from Redis's answer by name; a pool
             * Redis has not heard of yet counts as empty. */
            for (size_t i = 0; i < ia->npools; i++) {
                rb__brokeripalloc__pool_stats__init(&ps[i]);
                ps[i].name = (char *)ipalloc_pools_name(ia->plan, i);
                ps[i].cidrs = (char *)ipalloc_pools_cidrs(ia->plan, i);
                for (size_t j = 0; j < st->npools; j++) {
                    if (strcmp(st->pools[j].name, ps[i].name) != 0) continue;
                    ps[i].size = st->pools[j].size;
                    ps[i].used = st->pools[j].used;
                    ps[i].free = st->pools[j].free;
                }
                pp[i] = &ps[i];
            }
            pr.n_pools = ia->npools;
            pr.pools = pp;
            env.body_case = RB__BROKERIPALLOC__IPALLOC_TO_BROKER__BODY_POOLS;
            env.pools = &pr;
            s_reply(c->req, &env);
            c->req = NULL;
        }
        free(ps);
        free(pp);
    }
    /* Without an answer from Redis there is nothing true to say: the
     * broker's call times out, as for a release. */
    s_ctx_free(c);
}

static void s_handle_pools(ipalloc_t *ia, rb_rpc_req_t *req,
                           const Rb__Brokeripalloc__BrokerToIpalloc *env)
{
    (void)env;
    ipalloc_ctx_t *c = s_ctx_new(ia, req);
    if (!c) {
        rb_rpc_req_free(req);
        return;
    }
    if (ipalloc_store_stats(ia->store, s_on_pools, c) != 0) s_ctx_free(c);
}

static void s_on_reconcile(void *arg, int rc, uint64_t moved, uint64_t released)
{
    ipalloc_ctx_t *c = arg;
    ipalloc_t *ia = c->ia;
    if (rc == 0) {
        Rb__Brokeripalloc__IpallocToBroker env = RB__BROKERIPALLOC__IPALLOC_TO_BROKER__INIT;
        Rb__Brokeripalloc__ReconcileReply rr = RB__BROKERIPALLOC__RECONCILE_REPLY__INIT;
        rb_metric_add(ia->m_rec_moved, (double)moved);
        rb_metric_add(ia->m_rec_released, (double)released);
        rr.moved = moved > UINT32_MAX ? UINT32_MAX : (uint32_t)moved;
        rr.released = released > UINT32_MAX ? UINT32_MAX : (uint32_t)released;
        env.body_case = RB__BROKERIPALLOC__IPALLOC_TO_BROKER__BODY_RECONCILE;
        env.reconcile = &rr;
        s_reply(c->req, &env);
        c->req = NULL;
    }
    /* On a Redis failure the broker's call times out; the next period
     * tries again. */
    s_ctx_free(c);
}

static void s_handle_reconcile(ipalloc_t *ia, rb_rpc_req_t *req,
                               const Rb__Brokeripalloc__BrokerToIpalloc *env)
{
    const Rb__Brokeripalloc__ReconcileRequest *rr = env->reconcile;
    ipalloc_live_t *live = NULL;
    ipalloc_ctx_t *c = NULL;
    if (!rr || rr->grace_ms < IPALLOC_RECONCILE_MIN_GRACE_MS ||
        rr->n_live > IPALLOC_RECONCILE_MAX) {
        rb_warn("bad_request", "%s: reconcile with a grace period under %d ms or too many sessions",
                rb_rpc_req_peer(req), IPALLOC_RECONCILE_MIN_GRACE_MS);
        goto drop;
    }
    /* Pool prefixes the store does not know yet would keep released
     * addresses out of their free sets: wait until every pool is ready. */
    if (!s_all_ready(ia)) goto drop;
    live = calloc(rr->n_live ? rr->n_live : 1, sizeof(*live));
    if (!live) goto drop;
    for (size_t i = 0; i < rr->n_live; i++) {
        const Rb__Brokeripalloc__LiveLease *l = rr->live[i];
        uint32_t addr;
        /* One bad entry spoils the list: a live session left out of it
         * would lose its address. */
        if (!l || !s_field_ok(l->session_id, 128) || !s_field_ok(l->user, 256) || !l->ip ||
            rb_ip_parse(l->ip, &addr) != 0) {
            rb_warn("bad_request", "%s: reconcile with an invalid live session (#%zu)",
                    rb_rpc_req_peer(req), i);
            goto drop;
        }
        live[i] = (ipalloc_live_t){.session = l->session_id, .ip = l->ip, .user = l->user};
    }
    if (!(c = s_ctx_new(ia, req))) goto drop;
    if (ipalloc_store_reconcile(ia->store, live, rr->n_live, rr->grace_ms, rb_wall_ms(),
                                s_on_reconcile, c) != 0)
        s_ctx_free(c);
    free(live);
    return;
drop:
    free(live);
    rb_rpc_req_free(req);
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
    {RB__BROKERIPALLOC__BROKER_TO_IPALLOC__BODY_POOLS, "pools", s_handle_pools},
    {RB__BROKERIPALLOC__BROKER_TO_IPALLOC__BODY_RECONCILE, "reconcile", s_handle_reconcile},
};

static void s_on_request(void *arg, rb_rpc_req_t *req, const uint8_t *body, size_t len)
{
    ipalloc_t *ia = arg;
    Rb__Brokeripalloc__BrokerToIpalloc *env = (Rb__Brokeripalloc__BrokerToIpalloc *)rb_pb_unpack(
        &rb__brokeripalloc__broker_to_ipalloc__descriptor, body, len, IPALLOC_MAX_RECONCILE,
        rb_rpc_req_peer(req));
    if (!env) {
        /* Logged by rb_pb_unpack; nothing to answer a message we cannot read. */
        rb_rpc_req_free(req);
        return;
    }
    if (len > IPALLOC_MAX_REQUEST &&
        env->body_case != RB__BROKERIPALLOC__BROKER_TO_IPALLOC__BODY_RECONCILE) {
        rb_warn("oversized_request", "%s sent a %zu-byte request; only a reconcile may exceed %d",
                rb_rpc_req_peer(req), len, IPALLOC_MAX_REQUEST);
        rb_rpc_req_free(req);
        goto out;
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
    s_pool_state_t *ps = arg;
    ipalloc_t *ia = ps->ia;
    ps->init_pending = false;
    if (rc == 0) {
        ps->ready = true;
        rb_info("pool_ready", "pool %s: %s (%llu addresses) %s",
                ipalloc_pools_name(ia->plan, ps->index), ipalloc_pools_cidrs(ia->plan, ps->index),
                (unsigned long long)rb_pool_size(ipalloc_pools_pool(ia->plan, ps->index)),
                rebuilt ? "rebuilt" : "already in Redis");
    }
    /* On failure the next stats tick tries again. */
}

static void s_init_pool(s_pool_state_t *ps)
{
    ipalloc_t *ia = ps->ia;
    size_t nres;
    if (ps->init_pending) return;
    const ipalloc_reservation_t *res = ipalloc_pools_reservations(ia->plan, ps->index, &nres);
    if (ipalloc_store_init_pool(ia->store, ipalloc_pools_name(ia->plan, ps->index),
                                ipalloc_pools_pool(ia->plan, ps->index), res, nres, s_on_init,
                                ps) == 0)
        ps->init_pending = true;
}

static void s_on_redis_up(void *arg)
{
    ipalloc_t *ia = arg;
    /* A Redis that restarted empty has lost the pools: check them each time.
     * In the plan's order, so the store's stats come in that order too. */
    for (size_t i = 0; i < ia->npools; i++)
        s_init_pool(&ia->pools[i]);
}

static void s_on_stats(void *arg, const ipalloc_stats_t *st)
{
    ipalloc_t *ia = arg;
    ia->stats_pending = false;
    if (!st) return;
    ia->leased = st->leased;
    for (size_t j = 0; j < st->npools; j++) {
        s_pool_state_t *ps = NULL;
        for (size_t i = 0; i < ia->npools && !ps; i++)
            if (strcmp(ipalloc_pools_name(ia->plan, i), st->pools[j].name) == 0) ps = &ia->pools[i];
        if (!ps) continue;
        ps->stats = st->pools[j];
        ps->stats.name = NULL; /* borrowed from the answer */
        rb_metric_set(ps->m_leases, (double)ps->stats.used);
        rb_metric_set(ps->m_free, (double)ps->stats.free);
        if (strcmp(st->pools[j].digest, ps->digest) != 0) {
            /* Another instance with a different plan, or Redis lost its data. */
            if (ps->ready)
                rb_warn("pool_changed", "pool %s in Redis is not ours; rebuilding it",
                        ipalloc_pools_name(ia->plan, ps->index));
            ps->ready = false;
            s_init_pool(ps);
        }
    }
}

static void s_on_stats_tick(rb_loop_t *loop, void *arg)
{
    ipalloc_t *ia = arg;
    (void)loop;
    if (!rb_redis_ok(ia->redis)) {
        for (size_t i = 0; i < ia->npools; i++)
            ia->pools[i].ready = false;
        return;
    }
    for (size_t i = 0; i < ia->npools; i++)
        if (!ia->pools[i].ready) s_init_pool(&ia->pools[i]);
    if (!ia->stats_pending && ipalloc_store_stats(ia->store, s_on_stats, ia) == 0)
        ia->stats_pending = true;
}

/* ---- object ---- */

int ipalloc_config_validate(void *arg, char *err, size_t errlen)
{
    const ipalloc_config_t *cfg = arg;
    ipalloc_pools_t *plan = ipalloc_pools_new(cfg->pool, cfg->exclude, cfg->group_pools,
                                              cfg->statics, cfg->no_address_groups, err, errlen);
    if (!plan) return -1;
    ipalloc_pools_destroy(&plan);
    return 0;
}

static int s_pools_new(ipalloc_t *ia)
{
    ia->npools = ipalloc_pools_count(ia->plan);
    ia->pools = calloc(ia->npools, sizeof(*ia->pools));
    if (!ia->pools) return -1;
    for (size_t i = 0; i < ia->npools; i++) {
        s_pool_state_t *ps = &ia->pools[i];
        size_t nres;
        const ipalloc_reservation_t *res = ipalloc_pools_reservations(ia->plan, i, &nres);
        char labels[32 + IPALLOC_GROUP_MAX];
        ps->ia = ia;
        ps->index = i;
        if (ipalloc_store_pool_digest(ipalloc_pools_pool(ia->plan, i), res, nres, ps->digest) != 0)
            return -1;
        /* Group names are [A-Za-z0-9._-]: nothing to escape in a label. */
        snprintf(labels, sizeof(labels), "pool=\"%s\"", ipalloc_pools_name(ia->plan, i));
        ps->m_leases = rb_gauge("reachback_leases", labels, "addresses under lease, per pool");
        ps->m_free =
            rb_gauge("reachback_pool_free", labels, "addresses anyone may lease now, per pool");
    }
    return 0;
}

ipalloc_t *ipalloc_new(rb_loop_t *loop, const ipalloc_config_t *cfg)
{
    char err[256];
    ipalloc_t *ia = calloc(1, sizeof(*ia));
    if (!ia) return NULL;
    ia->loop = loop;
    ia->cfg = cfg;
    ia->plan = ipalloc_pools_new(cfg->pool, cfg->exclude, cfg->group_pools, cfg->statics,
                                 cfg->no_address_groups, err, sizeof(err));
    if (!ia->plan) {
        rb_error("bad_pool", "%s", err);
        goto fail;
    }
    if (s_pools_new(ia) != 0) goto fail;
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

    ia->m_ok = rb_counter("reachback_leases_total", "result=\"ok\"", "lease requests by result");
    ia->m_exhausted =
        rb_counter("reachback_leases_total", "result=\"exhausted\"", "lease requests by result");
    ia->m_no_address =
        rb_counter("reachback_leases_total", "result=\"no_address\"", "lease requests by result");
    ia->m_error =
        rb_counter("reachback_leases_total", "result=\"error\"", "lease requests by result");
    ia->m_moved = rb_counter("reachback_lease_takeovers_total", NULL,
                             "leases moved to a new session by a transfer");
    ia->m_rec_moved =
        rb_counter("reachback_lease_reconciled_total", "action=\"moved\"",
                   "leases the periodic reconcile moved to a live session or released");
    ia->m_rec_released =
        rb_counter("reachback_lease_reconciled_total", "action=\"released\"",
                   "leases the periodic reconcile moved to a live session or released");
    ia->m_duration =
        rb_histogram("reachback_lease_duration_seconds", NULL, "time from lease request to answer");
    rb_info("ipalloc_started", "%s listening on %s, %zu pools, default pool %s (%llu addresses)",
            cfg->ipalloc_id, cfg->listen, ia->npools, ipalloc_pools_cidrs(ia->plan, 0),
            (unsigned long long)rb_pool_size(ipalloc_pools_pool(ia->plan, 0)));
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
    free(ia->pools);
    ipalloc_pools_destroy(&ia->plan);
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
    for (size_t i = 0; i < ia->npools; i++) {
        if (!ia->pools[i].ready) {
            rb_buf_printf(why, "the address pool %s is not initialised",
                          ipalloc_pools_name(ia->plan, i));
            return false;
        }
    }
    return true;
}

void ipalloc_status_info(void *arg, rb_buf_t *json)
{
    ipalloc_t *ia = arg;
    uint64_t nfree = 0;
    for (size_t i = 0; i < ia->npools; i++)
        nfree += ia->pools[i].stats.free;
    rb_buf_puts(json, "\"ipalloc_id\":\"");
    rb_buf_json_escape(json, ia->cfg->ipalloc_id);
    rb_buf_puts(json, "\",\"pool\":\"");
    rb_buf_json_escape(json, ipalloc_pools_cidrs(ia->plan, 0));
    /* pool and pool_size: the default pool; leased and free: every pool. */
    rb_buf_printf(json,
                  "\",\"pool_size\":%llu,\"leased\":%llu,\"free\":%llu,"
                  "\"pool_ready\":%s,\"redis_ok\":%s,\"spillover\":%s,\"pools\":[",
                  (unsigned long long)rb_pool_size(ipalloc_pools_pool(ia->plan, 0)),
                  (unsigned long long)ia->leased, (unsigned long long)nfree,
                  s_all_ready(ia) ? "true" : "false", rb_redis_ok(ia->redis) ? "true" : "false",
                  ia->cfg->spillover ? "true" : "false");
    for (size_t i = 0; i < ia->npools; i++) {
        const s_pool_state_t *ps = &ia->pools[i];
        rb_buf_puts(json, i ? ",{\"name\":\"" : "{\"name\":\"");
        rb_buf_json_escape(json, ipalloc_pools_name(ia->plan, i));
        rb_buf_puts(json, "\",\"cidrs\":\"");
        rb_buf_json_escape(json, ipalloc_pools_cidrs(ia->plan, i));
        rb_buf_printf(json,
                      "\",\"size\":%llu,\"used\":%llu,\"free\":%llu,\"reserved\":%llu,"
                      "\"ready\":%s}",
                      (unsigned long long)rb_pool_size(ipalloc_pools_pool(ia->plan, i)),
                      (unsigned long long)ps->stats.used, (unsigned long long)ps->stats.free,
                      (unsigned long long)ps->stats.reserved, ps->ready ? "true" : "false");
    }
    rb_buf_puts(json, "]");
}
