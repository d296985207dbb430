/* broker: the session broker service object (see broker.h).
 *
 * This file holds the object, its options, the 1 s tick (stats, heartbeat,
 * ipalloc ping, expiry sweep) and the conversation with ipalloc that outlives
 * an edge request: releases of ended sessions, lease take-overs after a
 * transfer, and the periodic lease reconcile that catches what those lost. The edge's requests are in broker_edge.c, the admin API in
 * broker_admin.c. Nothing blocks the loop. */
#include "broker.h"
#include <openssl/evp.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <zmq.h>
#include "broker_int.h"
#include "rb_log.h"
#include "rb_pb.h"
#include "rb_redis.h"

#define BROKER_MAX_IPALLOC_REPLY 65536
#define BROKER_TICK_MS 1000
/* ipalloc counts as up while it answered a ping within this. */
#define BROKER_IPALLOC_FRESH_MS 3000
#define BROKER_IPALLOC_TIMEOUT_MS 1000
/* Sessions ended per sweep script: each run keeps Redis busy for a few ms at
 * most; a full run is followed by another at once. */
#define BROKER_SWEEP_LIMIT 500
/* Take-over attempts (1 s apart) before giving up; a predecessor's own
 * take-over may still be on its way (see broker_takeover_start). */
#define BROKER_TAKEOVER_TRIES 30
/* Leases changed more recently than this are left alone by a reconcile (see
 * s_reconcile). Well above the few seconds between a logon's lease and its
 * commit, and a take-over's first tries. */
#define BROKER_RECONCILE_GRACE_MS 10000

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
     "bearer token for the admin API (/admin/...) of the status server; empty: admin API off"},
    {"transfer_offer_ttl", RB_OPT_INT, "120", offsetof(broker_config_t, transfer_offer_ttl), 1,
     86400, "seconds a transfer offer may be accepted"},
    {"session_timeout", RB_OPT_INT, "60", offsetof(broker_config_t, session_timeout), 2, 86400,
     "seconds a session lives without a refresh from its edge (idle timeout)"},
    {"session_max_lifetime", RB_OPT_INT, "86400", offsetof(broker_config_t, session_max_lifetime),
     0, 31536000, "seconds a session may last at most (absolute timeout); 0: no limit"},
    {"reconcile_s", RB_OPT_INT, "5", offsetof(broker_config_t, reconcile_s), 1, 3600,
     "seconds between lease reconciles: ipalloc frees or moves leases whose session ended "
     "without a release or was transferred without a take-over"},
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

/* ---- helpers ---- */

int broker_random_hex(char *out, size_t nbytes)
{
    unsigned char b[64];
    if (nbytes > sizeof(b) || getrandom(b, nbytes, 0) != (ssize_t)nbytes) return -1;
    for (size_t i = 0; i < nbytes; i++)
        snprintf(out + 2 * i, 3, "%02x", b[i]);
    explicit_bzero(b, sizeof(b));
    return 0;
}

int broker_sha256_hex(const char *in, char out[65])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned len = 0;
    if (EVP_Digest(in, strlen(in), md, &len, EVP_sha256(), NULL) != 1 || len != 32) return -1;
    for (unsigned i = 0; i < len; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
    return 0;
}

broker_ctx_t *broker_ctx_new(broker_t *b, rb_rpc_req_t *req)
{
    broker_ctx_t *c = calloc(1, sizeof(*c));
    if (!c) return NULL;
    c->b = b;
    c->req = req;
    c->start_ms = rb_now_ms();
    c->next = b->ctxs;
    if (b->ctxs) b->ctxs->prev = c;
    b->ctxs = c;
    return c;
}

void broker_ctx_free(broker_ctx_t *c)
{
    broker_t *b = c->b;
    if (c->prev)
        c->prev->next = c->next;
    else
        b->ctxs = c->next;
    if (c->next) c->next->prev = c->prev;
    rb_rpc_req_free(c->req);
    for (size_t i = 0; i < c->ngroups; i++)
        free(c->groups[i]);
    explicit_bzero(c->token, sizeof(c->token));
    free(c);
}

bool broker_ctx_set_groups(broker_ctx_t *c, char *const *groups, size_t n)
{
    if (n > BROKER_MAX_GROUPS) return false;
    size_t used = 0;
    for (size_t i = 0; i < n; i++) {
        size_t len = groups[i] ? strlen(groups[i]) : 0;
        if (!groups[i] || len > BROKER_FIELD_MAX || used + !!i + len > BROKER_GROUPS_MAX)
            return false;
        if (!(c->groups[c->ngroups] = strdup(groups[i]))) return false;
        c->ngroups++;
        used += (size_t)snprintf(c->groups_csv + used, sizeof c->groups_csv - used, "%s%s",
                                 i ? "," : "", groups[i]);
    }
    return true;
}

/* ---- talking to ipalloc ---- */

Rb__Brokeripalloc__IpallocToBroker *
broker_unpack_ipalloc(const uint8_t *body, size_t len,
                      Rb__Brokeripalloc__IpallocToBroker__BodyCase want)
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

int broker_send_lease(broker_t *b, const char *user, const char *session_id,
                      char *const *groups, size_t ngroups, const char *take_over,
                      unsigned retries, rb_rpc_reply_fn *fn, void *arg)
{
    Rb__Brokeripalloc__BrokerToIpalloc env = RB__BROKERIPALLOC__BROKER_TO_IPALLOC__INIT;
    Rb__Brokeripalloc__LeaseRequest lr = RB__BROKERIPALLOC__LEASE_REQUEST__INIT;
    lr.user = (char *)user;
    lr.session_id = (char *)session_id;
    lr.groups = (char **)groups;
    lr.n_groups = ngroups;
    lr.take_over_session = (char *)(take_over ? take_over : "");
    env.version = RB_PROTO_VERSION;
    env.body_case = RB__BROKERIPALLOC__BROKER_TO_IPALLOC__BODY_LEASE;
    env.lease = &lr;
    return rb_rpc_call(b->ipalloc, &env.base, BROKER_IPALLOC_TIMEOUT_MS, retries, fn, arg);
}

static void s_on_release_logged(void *arg, const uint8_t *body, size_t len)
{
    if (!body)
        rb_warn("release_timeout", "ipalloc did not answer a release; the lease stays until "
                                   "released again");
}

int broker_send_release(broker_t *b, const char *ip, const char *session_id, rb_rpc_reply_fn *fn,
                        void *arg)
{
    Rb__Brokeripalloc__BrokerToIpalloc env = RB__BROKERIPALLOC__BROKER_TO_IPALLOC__INIT;
    Rb__Brokeripalloc__ReleaseRequest rr = RB__BROKERIPALLOC__RELEASE_REQUEST__INIT;
    rr.ip = (char *)ip;
    rr.session_id = (char *)session_id;
    env.version = RB_PROTO_VERSION;
    env.body_case = RB__BROKERIPALLOC__BROKER_TO_IPALLOC__BODY_RELEASE;
    env.release = &rr;
    /* Releases are idempotent per session: one resend is safe. */
    return rb_rpc_call(b->ipalloc, &env.base, BROKER_IPALLOC_TIMEOUT_MS, 1,
                       fn ? fn : s_on_release_logged, fn ? arg : b);
}

int broker_send_pools(broker_t *b, rb_rpc_reply_fn *fn, void *arg)
{
    Rb__Brokeripalloc__BrokerToIpalloc env = RB__BROKERIPALLOC__BROKER_TO_IPALLOC__INIT;
    Rb__Brokeripalloc__PoolsRequest pr = RB__BROKERIPALLOC__POOLS_REQUEST__INIT;
    env.version = RB_PROTO_VERSION;
    env.body_case = RB__BROKERIPALLOC__BROKER_TO_IPALLOC__BODY_POOLS;
    env.pools = &pr;
    return rb_rpc_call(b->ipalloc, &env.base, 2 * BROKER_IPALLOC_TIMEOUT_MS, 0, fn, arg);
}

void broker_session_ended(broker_t *b, uint64_t seq, const broker_session_t *s,
                          const char *reason)
{
    broker_events_publish(b->events, seq, false, s, reason);
    if (seq > b->seq) b->seq = seq;
    rb_info("session_ended", "user %s: session %.8s ended (%s), %s released (seq %llu)", s->user,
            s->session_id, reason, s->ip[0] ? s->ip : "no address", (unsigned long long)seq);
    if (s->ip[0] && broker_send_release(b, s->ip, s->session_id, NULL, NULL) != 0)
        rb_warn("release_failed", "could not ask ipalloc to release %s of session %.8s", s->ip,
                s->session_id);
}

/* ---- lease take-over after a transfer ----
 *
 * The transfer script already made the new session live with the address;
 * ipalloc still has it leased to the replaced session until it hears
 * LeaseRequest{session_id = new, take_over_session = old}. The address is
 * never free in between, so no one else can get it. What can go wrong:
 * - the request or its answer is lost: ask again (a take-over is idempotent
 *   per new session);
 * - accepts in quick succession (A: s0 -> s1, B: s1 -> s2, perhaps on two
 *   brokers) whose take-overs reach ipalloc out of order: s2's finds s1
 *   holding nothing and ipalloc leases s2 another address (its fallback).
 *   That address is given back at once and s2 asks again until s1's
 *   take-over has landed;
 * - the new session ends (logoff, kick, expiry, or another transfer) before
 *   its take-over landed: its release found nothing, so once the take-over
 *   is done we ask Redis whether the address is still wanted (by the session
 *   or by the user's live session, a successor that will take it over from
 *   this one) and release it when not. */

struct broker_takeover {
    broker_takeover_t *prev, *next;
    broker_t *b;
    rb_timer_t *timer;
    unsigned tries;
    char user[BROKER_FIELD_MAX + 1];
    char new_sid[BROKER_SESSION_ID_LEN + 1];
    char old_sid[BROKER_SESSION_ID_LEN + 1];
    char ip[16];
    char wrong_ip[16];
    char *groups[BROKER_MAX_GROUPS];
    size_t ngroups;
};

static void s_takeover_free(broker_takeover_t *t)
{
    broker_t *b = t->b;
    if (t->prev)
        t->prev->next = t->next;
    else
        b->takeovers = t->next;
    if (t->next) t->next->prev = t->prev;
    /* At most one thing is outstanding: the timer, or the call whose
     * callback frees t (cancelling that from inside its callback would
     * free it twice). broker_destroy drops calls before freeing these. */
    rb_loop_cancel_timer(b->loop, t->timer);
    for (size_t i = 0; i < t->ngroups; i++)
        free(t->groups[i]);
    free(t);
}

static void s_takeover_send(broker_takeover_t *t);

static void s_takeover_timer(rb_loop_t *loop, void *arg)
{
    broker_takeover_t *t = arg;
    t->timer = NULL;
    s_takeover_send(t);
}

static void s_takeover_later(broker_takeover_t *t)
{
    if (++t->tries >= BROKER_TAKEOVER_TRIES) {
        rb_metric_inc(t->b->m_takeover_failed);
        rb_error("lease_takeover_failed",
                 "user %s: ipalloc did not move %s from session %.8s to %.8s after %u tries; "
                 "the address stays leased to the old session until it is released by hand",
                 t->user, t->ip, t->old_sid, t->new_sid, t->tries);
        s_takeover_free(t);
        return;
    }
    t->timer = rb_loop_add_timer(t->b->loop, BROKER_IPALLOC_TIMEOUT_MS, false, s_takeover_timer, t);
    if (!t->timer) s_takeover_free(t);
}

static void s_on_wanted(void *arg, int found)
{
    broker_takeover_t *t = arg;
    if (found == 0) {
        rb_info("lease_takeover_late", "session %.8s of %s ended before its lease of %s moved; "
                "releasing it", t->new_sid, t->user, t->ip);
        broker_send_release(t->b, t->ip, t->new_sid, NULL, NULL);
    }
    s_takeover_free(t);
}

static void s_on_wrong_released(void *arg, const uint8_t *body, size_t len)
{
    broker_takeover_t *t = arg;
    /* Whatever the answer, ask again a little later: by then a predecessor's
     * take-over may have landed. A lost release is retried by the next
     * mismatch. */
    s_takeover_later(t);
}

static void s_on_takeover(void *arg, const uint8_t *body, size_t len)
{
    broker_takeover_t *t = arg;
    broker_t *b = t->b;
    if (!body) {
        rb_warn("lease_takeover_timeout", "ipalloc did not answer the take-over of %s by %.8s",
                t->ip, t->new_sid);
        s_takeover_later(t);
        return;
    }
    Rb__Brokeripalloc__IpallocToBroker *m =
        broker_unpack_ipalloc(body, len, RB__BROKERIPALLOC__IPALLOC_TO_BROKER__BODY_LEASE);
    const Rb__Brokeripalloc__LeaseReply *lr = m ? m->lease : NULL;
    bool ok = lr && lr->status == RB__BROKERIPALLOC__LEASE_STATUS__LEASE_OK && lr->ip;
    if (ok && strcmp(lr->ip, t->ip) == 0) {
        rb_debug("lease_takeover", "%s moved from %.8s to %.8s", t->ip, t->old_sid, t->new_sid);
        if (broker_store_lease_wanted(b->store, t->new_sid, t->user, t->ip, s_on_wanted, t) != 0)
            s_takeover_free(t);
    } else if (ok && strlen(lr->ip) < sizeof(t->wrong_ip)) {
        /* Another address for the new session: give it back. */
        snprintf(t->wrong_ip, sizeof(t->wrong_ip), "%s", lr->ip);
        rb_warn("lease_takeover_mismatch", "ipalloc leased %s instead of %s to session %.8s; "
                "giving it back", t->wrong_ip, t->ip, t->new_sid);
        if (broker_send_release(b, t->wrong_ip, t->new_sid, s_on_wrong_released, t) != 0)
            s_takeover_later(t);
    } else {
        rb_warn("lease_takeover_refused", "ipalloc: status %d: %s", lr ? (int)lr->status : -1,
                lr && lr->message ? lr->message : "");
        s_takeover_later(t);
    }
    if (m) protobuf_c_message_free_unpacked(&m->base, NULL);
}

static void s_takeover_send(broker_takeover_t *t)
{
    if (broker_send_lease(t->b, t->user, t->new_sid, t->groups, t->ngroups,
                          t->old_sid, 0, s_on_takeover, t) != 0)
        s_takeover_later(t);
}

void broker_takeover_start(broker_t *b, const char *user, const char *new_sid,
                           const char *old_sid, const char *ip, char *const *groups,
                           size_t ngroups)
{
    broker_takeover_t *t = calloc(1, sizeof(*t));
    if (!t) {
        rb_error("lease_takeover_failed", "out of memory: %s stays with session %.8s", ip,
                 old_sid);
        return;
    }
    t->b = b;
    snprintf(t->user, sizeof(t->user), "%s", user);
    snprintf(t->new_sid, sizeof(t->new_sid), "%s", new_sid);
    snprintf(t->old_sid, sizeof(t->old_sid), "%s", old_sid);
    snprintf(t->ip, sizeof(t->ip), "%s", ip);
    for (size_t i = 0; i < ngroups && i < BROKER_MAX_GROUPS; i++)
        if ((t->groups[t->ngroups] = strdup(groups[i]))) t->ngroups++;
    t->next = b->takeovers;
    if (b->takeovers) b->takeovers->prev = t;
    b->takeovers = t;
    s_takeover_send(t);
}

static bool s_ipalloc_ok(const broker_t *b);

/* ---- the lease reconcile ----
 *
 * Releases and take-overs live in one broker's memory and retry for a while
 * only: a broker killed at the wrong moment, or ipalloc down for longer than
 * the retries, leaves a lease with an ended session for ever, or with the
 * predecessor of a transferred one. Every reconcile_s this broker lists the
 * live sessions with an address (one script) and sends them to ipalloc,
 * whose one script moves each lease not changed within the grace period and
 * held by a session not in the list to the listed session of the same user
 * with that address, or else releases it.
 *
 * Every broker does this; that is harmless: the script is idempotent and a
 * second run right after the first finds nothing to do. No retry: the next
 * period is the retry.
 *
 * Races between our list and ipalloc's script:
 * - a session that starts, or is transferred, after the list: its lease was
 *   made or moved less than the grace period ago (a logon's lease exists
 *   before the broker commits the session; a take-over may be on its way),
 *   so ipalloc leaves it alone; the next period sees the session;
 * - a transfer before the list whose take-over has not landed: the lease
 *   moves to the listed successor, which is what the take-over does (it
 *   then finds its work done);
 * - a session that ends after the list: ipalloc sees it live and keeps its
 *   lease; the normal release frees it, or else the next reconcile. */

static void s_on_reconcile(void *arg, const uint8_t *body, size_t len)
{
    broker_t *b = arg;
    b->reconcile_pending = false;
    if (!body) {
        rb_warn("reconcile_timeout", "ipalloc did not answer a lease reconcile; next period "
                                     "tries again");
        return;
    }
    Rb__Brokeripalloc__IpallocToBroker *m =
        broker_unpack_ipalloc(body, len, RB__BROKERIPALLOC__IPALLOC_TO_BROKER__BODY_RECONCILE);
    if (m && m->reconcile && (m->reconcile->moved || m->reconcile->released))
        rb_info("leases_reconciled",
                "ipalloc moved %u leases to live sessions and released %u of ended ones",
                m->reconcile->moved, m->reconcile->released);
    if (m) protobuf_c_message_free_unpacked(&m->base, NULL);
}

static void s_on_live(void *arg, int rc, uint64_t seq, const broker_session_t *s, size_t n)
{
    broker_t *b = arg;
    Rb__Brokeripalloc__LiveLease *lv = NULL, **lp = NULL;
    size_t k = 0;
    (void)seq;
    if (rc != 0) goto fail; /* logged by the store */
    lv = calloc(n ? n : 1, sizeof(*lv));
    lp = calloc(n ? n : 1, sizeof(*lp));
    if (!lv || !lp) goto fail;
    for (size_t i = 0; i < n; i++) {
        if (!s[i].ip[0]) continue; /* no address, nothing to keep */
        rb__brokeripalloc__live_lease__init(&lv[k]);
        lv[k].session_id = (char *)s[i].session_id;
        lv[k].ip = (char *)s[i].ip;
        lv[k].user = (char *)s[i].user;
        lp[k] = &lv[k];
        k++;
    }
    Rb__Brokeripalloc__BrokerToIpalloc env = RB__BROKERIPALLOC__BROKER_TO_IPALLOC__INIT;
    Rb__Brokeripalloc__ReconcileRequest rr = RB__BROKERIPALLOC__RECONCILE_REQUEST__INIT;
    rr.live = lp;
    rr.n_live = k;
    rr.grace_ms = BROKER_RECONCILE_GRACE_MS;
    env.version = RB_PROTO_VERSION;
    env.body_case = RB__BROKERIPALLOC__BROKER_TO_IPALLOC__BODY_RECONCILE;
    env.reconcile = &rr;
    if (rb_rpc_call(b->ipalloc, &env.base, BROKER_IPALLOC_TIMEOUT_MS, 0, s_on_reconcile, b) != 0)
        goto fail;
    free(lv);
    free(lp);
    return;
fail:
    b->reconcile_pending = false;
    free(lv);
    free(lp);
}

static void s_reconcile(rb_loop_t *loop, void *arg)
{
    broker_t *b = arg;
    (void)loop;
    /* Without ipalloc the request would only time out. */
    if (b->reconcile_pending || !s_ipalloc_ok(b)) return;
    if (broker_store_list(b->store, BROKER_LIST_ALL, NULL, s_on_live, b) == 0)
        b->reconcile_pending = true;
}

/* ---- the 1 s tick: stats, heartbeat, ipalloc ping, expiry ---- */

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
        broker_unpack_ipalloc(body, len, RB__BROKERIPALLOC__IPALLOC_TO_BROKER__BODY_PING);
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

static void s_sweep(broker_t *b);

/* Every broker sweeps; the script ends each session once, whoever runs it. */
static void s_on_sweep(void *arg, int rc, const uint64_t *seqs, const broker_session_t *ended,
                       size_t n)
{
    broker_t *b = arg;
    b->sweep_pending = false;
    if (rc != 0) return;
    for (size_t i = 0; i < n; i++) {
        rb_metric_inc(b->m_expired);
        broker_session_ended(b, seqs[i], &ended[i], "expired");
    }
    if (n == BROKER_SWEEP_LIMIT) s_sweep(b); /* more are due: go on, in bounded steps */
}

static void s_on_redis_up(void *arg)
{
    broker_t *b = arg;
    b->redis_up_ms = rb_now_ms();
}

static void s_sweep(broker_t *b)
{
    if (b->sweep_pending) return;
    /* Idle time only counts while refreshes can land: while Redis was away
     * (or before this broker started) edges refreshed into the void, so for
     * one session_timeout after Redis comes back a broker expires sessions
     * by their absolute lifetime only. Otherwise a Redis restart would end
     * live sessions whose edges had no chance to refresh them. */
    uint64_t idle_ms = (uint64_t)b->cfg->session_timeout * 1000;
    if (!b->redis_up_ms || rb_now_ms() - b->redis_up_ms < idle_ms)
        idle_ms = UINT64_C(1) << 52;   /* longer than any session can have lived */
    if (broker_store_sweep(b->store, idle_ms, (uint64_t)b->cfg->session_max_lifetime * 1000,
                           BROKER_SWEEP_LIMIT, s_on_sweep, b) == 0)
        b->sweep_pending = true;
}

static void s_on_tick(rb_loop_t *loop, void *arg)
{
    broker_t *b = arg;
    if (!b->stats_pending && broker_store_stats(b->store, s_on_stats, b) == 0)
        b->stats_pending = true;
    if (!b->ping_pending) s_ping_ipalloc(b);
    s_sweep(b);
}

/* ---- object ---- */

static bool s_ipalloc_ok(const broker_t *b)
{
    return b->ipalloc_ok_ms && rb_now_ms() - b->ipalloc_ok_ms <= BROKER_IPALLOC_FRESH_MS;
}

static void s_metrics(broker_t *b)
{
    const char *h = "logon requests by result";
    b->m_sessions = rb_gauge("reachback_sessions", NULL, "live sessions in the cluster");
    b->m_ok = rb_counter("reachback_logons_total", "result=\"ok\"", h);
    b->m_exists = rb_counter("reachback_logons_total", "result=\"exists\"", h);
    b->m_offer = rb_counter("reachback_logons_total", "result=\"offer\"", h);
    b->m_exhausted = rb_counter("reachback_logons_total", "result=\"exhausted\"", h);
    b->m_unavailable = rb_counter("reachback_logons_total", "result=\"unavailable\"", h);
    b->m_bad = rb_counter("reachback_logons_total", "result=\"bad_request\"", h);
    b->m_logoffs = rb_counter("reachback_logoffs_total", NULL, "sessions ended by a logoff");
    b->m_duration =
        rb_histogram("reachback_logon_duration_seconds", NULL, "time from logon request to answer");
    h = "accepted transfer offers by result";
    b->m_xfer_ok = rb_counter("reachback_transfers_total", "result=\"ok\"", h);
    b->m_xfer_expired = rb_counter("reachback_transfers_total", "result=\"expired\"", h);
    b->m_xfer_failed = rb_counter("reachback_transfers_total", "result=\"failed\"", h);
    h = "resume requests by result";
    b->m_resume_ok = rb_counter("reachback_resumes_total", "result=\"ok\"", h);
    b->m_resume_refused = rb_counter("reachback_resumes_total", "result=\"refused\"", h);
    b->m_expired = rb_counter("reachback_sessions_expired_total", NULL,
                              "sessions ended by the idle or absolute timeout");
    b->m_kicked = rb_counter("reachback_kicks_total", NULL, "sessions ended by an administrator");
    b->m_takeover_failed = rb_counter("reachback_lease_takeover_failures_total", NULL,
                                      "transfers whose lease ipalloc did not move");
}

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
    rb_redis_on_up(b->redis, s_on_redis_up, b);
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
    b->edge = rb_rpc_server_new(loop, router, broker_edge_request, b);
    if (!b->edge) {
        rb_zsock_close(&router);
        goto fail;
    }
    b->tick = rb_loop_add_timer(loop, BROKER_TICK_MS, true, s_on_tick, b);
    if (!b->tick) goto fail;
    /* The option table keeps reconcile_s in 1..3600; a config built by hand
     * without it reconciles every second. */
    b->reconcile_timer = rb_loop_add_timer(
        loop, (uint64_t)(cfg->reconcile_s > 0 ? cfg->reconcile_s : 1) * 1000, true, s_reconcile, b);
    if (!b->reconcile_timer) goto fail;
    s_metrics(b);
    s_ping_ipalloc(b);
    rb_info("broker_started",
            "%s: edges on %s, events on %s, snapshots on %s, ipalloc at %s; offers %lds, "
            "idle timeout %lds, lifetime %lds, lease reconcile every %lds",
            cfg->broker_id, cfg->listen_edge, cfg->listen_events, cfg->listen_snapshot,
            cfg->ipalloc_endpoint, cfg->transfer_offer_ttl, cfg->session_timeout,
            cfg->session_max_lifetime, cfg->reconcile_s);
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
    rb_loop_cancel_timer(b->loop, b->reconcile_timer);
    /* Order: whatever may call back into a context goes first (the edge
     * server, ipalloc calls, store calls), then the contexts. */
    rb_rpc_server_destroy(&b->edge);
    rb_rpc_client_destroy(&b->ipalloc);
    broker_events_destroy(&b->events); /* needs the store */
    broker_store_destroy(&b->store);
    rb_redis_destroy(&b->redis);
    while (b->takeovers)
        s_takeover_free(b->takeovers);
    broker_admin_destroy(&b->admin);
    while (b->ctxs)
        broker_ctx_free(b->ctxs);
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

bool broker_ipalloc_ok(const broker_t *b)
{
    return s_ipalloc_ok(b);
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
