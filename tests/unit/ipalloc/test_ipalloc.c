/* The ipalloc service object over real ZeroMQ (ipc:// in a temporary
 * directory, no CURVE) and a real redis-server: lease and release through
 * BrokerToIpalloc, exhaustion, bad and unknown requests, version mismatch,
 * garbage frames, a caller gone before its answer, readiness and /status
 * fields; take-over through the protocol; an address plan with a group pool,
 * a reservation and a group without addresses; spillover; PoolsRequest;
 * per-pool gauges; config validation. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <hiredis/hiredis.h>
#include <zmq.h>
#include "../redis_fixture.h"
#include "../rpc_fixture.h"
#include "broker_ipalloc.pb-c.h"
#include "ipalloc.h"
#include "rb_log.h"
#include "rb_metrics.h"
#include "rb_pb.h"
#include "rb_rpc.h"
#include "rb_zmq.h"

typedef struct {
    rbt_redis_t rs;
    rb_loop_t *loop;
    ipalloc_config_t cfg;
    char ep[160];
    ipalloc_t *ia;
    rb_rpc_client_t *cli;
} fx_t;

static bool s_ready(void *arg)
{
    rb_buf_t why = RB_BUF_INIT;
    bool ok = ipalloc_ready(arg, &why);
    rb_buf_free(&why);
    return ok;
}

typedef enum { PLAN_NONE, PLAN_GROUPS, PLAN_SPILLOVER } plan_t;

static int s_setup(void **state, plan_t plan)
{
    fx_t *f = calloc(1, sizeof(*f));
    rb_log_init("test", RB_LOG_WARN);
    if (!f || rbt_redis_start(&f->rs) != 0) return -1;
    snprintf(f->ep, sizeof(f->ep), "ipc://%s/ipalloc.sock", f->rs.dir);
    f->loop = rb_loop_new();
    ipalloc_config_t *c = &f->cfg;
    c->ipalloc_id = "ipalloc-test";
    c->listen = f->ep;
    c->pool = "10.66.0.0/30"; /* two usable addresses */
    c->exclude = "";
    c->group_pools = "";
    c->statics = "";
    c->no_address_groups = "";
    if (plan != PLAN_NONE) {
        c->group_pools = " staff = 10.67.0.0/30 ";
        c->statics = "vip = 10.66.0.2";
        c->no_address_groups = "guests";
        c->spillover = plan == PLAN_SPILLOVER;
    }
    c->redis_host = "127.0.0.1";
    c->redis_port = 6379;
    c->redis_socket = f->rs.sock;
    c->redis_password = "";
    c->curve_secret_key = "";
    c->curve_allowed_keys = "";
    f->ia = ipalloc_new(f->loop, c);
    rb_curve_t none = {0};
    f->cli =
        rb_rpc_client_new(f->loop, rb_zsock_connect(ZMQ_DEALER, f->ep, &none, NULL), "ipalloc");
    if (!f->ia || !f->cli || !rbt_wait(f->loop, s_ready, f->ia, 5000)) return -1;
    *state = f;
    return 0;
}

static int setup(void **state)
{
    return s_setup(state, PLAN_NONE);
}

static int setup_groups(void **state)
{
    return s_setup(state, PLAN_GROUPS);
}

static int setup_spillover(void **state)
{
    return s_setup(state, PLAN_SPILLOVER);
}

static int teardown(void **state)
{
    fx_t *f = *state;
    rb_rpc_client_destroy(&f->cli);
    ipalloc_destroy(&f->ia);
    rb_loop_destroy(&f->loop);
    rbt_redis_stop(&f->rs);
    free(f);
    return 0;
}

typedef struct {
    bool done;
    Rb__Brokeripalloc__IpallocToBroker *reply;
} call_t;

static bool s_done(void *arg)
{
    return ((call_t *)arg)->done;
}

static void s_on_reply(void *arg, const uint8_t *body, size_t len)
{
    call_t *c = arg;
    c->done = true;
    if (body)
        c->reply = (Rb__Brokeripalloc__IpallocToBroker *)rb_pb_unpack(
            &rb__brokeripalloc__ipalloc_to_broker__descriptor, body, len, 65536, "ipalloc");
}

/* Sends env; returns the reply, or NULL when none came within timeout_ms. */
static Rb__Brokeripalloc__IpallocToBroker *s_call(fx_t *f, Rb__Brokeripalloc__BrokerToIpalloc *env,
                                                  unsigned timeout_ms)
{
    call_t c = {0};
    assert_int_equal(rb_rpc_call(f->cli, &env->base, timeout_ms, 0, s_on_reply, &c), 0);
    assert_true(rbt_wait(f->loop, s_done, &c, timeout_ms + 1000));
    return c.reply;
}

/* A lease for user in the groups of a comma-separated list (may be NULL),
 * taking over session old (may be NULL). */
static Rb__Brokeripalloc__IpallocToBroker *s_lease_full(fx_t *f, const char *user, const char *sid,
                                                        const char *groups, const char *old)
{
    Rb__Brokeripalloc__BrokerToIpalloc env = RB__BROKERIPALLOC__BROKER_TO_IPALLOC__INIT;
    Rb__Brokeripalloc__LeaseRequest lr = RB__BROKERIPALLOC__LEASE_REQUEST__INIT;
    char buf[128], *gv[8];
    size_t ng = 0;
    if (groups) {
        snprintf(buf, sizeof(buf), "%s", groups);
        for (char *save = NULL, *g = strtok_r(buf, ",", &save); g && ng < 8;
             g = strtok_r(NULL, ",", &save))
            gv[ng++] = g;
    }
    lr.user = (char *)user;
    lr.session_id = (char *)sid;
    lr.groups = gv;
    lr.n_groups = ng;
    lr.take_over_session = (char *)(old ? old : "");
    env.version = RB_PROTO_VERSION;
    env.body_case = RB__BROKERIPALLOC__BROKER_TO_IPALLOC__BODY_LEASE;
    env.lease = &lr;
    Rb__Brokeripalloc__IpallocToBroker *r = s_call(f, &env, 2000);
    assert_non_null(r);
    assert_int_equal(r->body_case, RB__BROKERIPALLOC__IPALLOC_TO_BROKER__BODY_LEASE);
    return r;
}

static Rb__Brokeripalloc__IpallocToBroker *s_lease(fx_t *f, const char *user, const char *sid)
{
    return s_lease_full(f, user, sid, NULL, NULL);
}

static void s_free(Rb__Brokeripalloc__IpallocToBroker *r)
{
    protobuf_c_message_free_unpacked(&r->base, NULL);
}

/* The status and ip of a lease, freeing the reply. */
static Rb__Brokeripalloc__LeaseStatus s_lease_ip(Rb__Brokeripalloc__IpallocToBroker *r, char ip[16],
                                                 char pool[16])
{
    Rb__Brokeripalloc__LeaseStatus st = r->lease->status;
    snprintf(ip, 16, "%s", r->lease->ip);
    snprintf(pool, 16, "%s", r->lease->pool);
    s_free(r);
    return st;
}

static void test_lease_release_exhaust(void **state)
{
    fx_t *f = *state;
    Rb__Brokeripalloc__IpallocToBroker *a = s_lease(f, "alice", "sa");
    Rb__Brokeripalloc__IpallocToBroker *b = s_lease(f, "bob", "sb");
    Rb__Brokeripalloc__IpallocToBroker *c = s_lease(f, "carol", "sc");
    assert_int_equal(a->lease->status, RB__BROKERIPALLOC__LEASE_STATUS__LEASE_OK);
    assert_int_equal(b->lease->status, RB__BROKERIPALLOC__LEASE_STATUS__LEASE_OK);
    assert_string_not_equal(a->lease->ip, b->lease->ip);
    assert_string_equal(a->lease->pool, "default");
    assert_int_equal(c->lease->status, RB__BROKERIPALLOC__LEASE_STATUS__LEASE_POOL_EXHAUSTED);
    assert_true(strstr(c->lease->message, "exhausted") != NULL);

    Rb__Brokeripalloc__BrokerToIpalloc env = RB__BROKERIPALLOC__BROKER_TO_IPALLOC__INIT;
    Rb__Brokeripalloc__ReleaseRequest rr = RB__BROKERIPALLOC__RELEASE_REQUEST__INIT;
    rr.ip = a->lease->ip;
    rr.session_id = "sa";
    env.version = RB_PROTO_VERSION;
    env.body_case = RB__BROKERIPALLOC__BROKER_TO_IPALLOC__BODY_RELEASE;
    env.release = &rr;
    Rb__Brokeripalloc__IpallocToBroker *r = s_call(f, &env, 2000);
    assert_non_null(r);
    assert_true(r->release->found);
    s_free(r);
    r = s_call(f, &env, 2000); /* again: nothing to release */
    assert_non_null(r);
    assert_false(r->release->found);
    s_free(r);
    assert_int_equal(rbt_cmd_int(&f->rs, "SISMEMBER rb:ip:free %s", a->lease->ip), 1);
    s_free(a);
    s_free(b);
    s_free(c);

    rb_buf_t json = RB_BUF_INIT;
    ipalloc_status_info(f->ia, &json);
    assert_non_null(strstr(json.data, "\"pool_size\":2"));
    rb_buf_free(&json);
}

static void test_bad_requests(void **state)
{
    fx_t *f = *state;
    /* Missing session id: answered with LEASE_BAD_REQUEST. */
    Rb__Brokeripalloc__IpallocToBroker *r = s_lease(f, "alice", "");
    assert_int_equal(r->lease->status, RB__BROKERIPALLOC__LEASE_STATUS__LEASE_BAD_REQUEST);
    s_free(r);

    /* Wrong version. */
    Rb__Brokeripalloc__BrokerToIpalloc env = RB__BROKERIPALLOC__BROKER_TO_IPALLOC__INIT;
    Rb__Brokeripalloc__PingRequest pr = RB__BROKERIPALLOC__PING_REQUEST__INIT;
    env.version = RB_PROTO_VERSION + 1;
    env.body_case = RB__BROKERIPALLOC__BROKER_TO_IPALLOC__BODY_PING;
    env.ping = &pr;
    r = s_call(f, &env, 2000);
    assert_non_null(r);
    assert_int_equal(r->lease->status, RB__BROKERIPALLOC__LEASE_STATUS__LEASE_BAD_REQUEST);
    s_free(r);

    /* No body. */
    Rb__Brokeripalloc__BrokerToIpalloc empty = RB__BROKERIPALLOC__BROKER_TO_IPALLOC__INIT;
    empty.version = RB_PROTO_VERSION;
    r = s_call(f, &empty, 2000);
    assert_non_null(r);
    assert_int_equal(r->lease->status, RB__BROKERIPALLOC__LEASE_STATUS__LEASE_BAD_REQUEST);
    s_free(r);

    /* A release with a malformed address is dropped (no answer). */
    Rb__Brokeripalloc__ReleaseRequest rr = RB__BROKERIPALLOC__RELEASE_REQUEST__INIT;
    rr.ip = "10.66.0.999";
    rr.session_id = "sa";
    env.version = RB_PROTO_VERSION;
    env.body_case = RB__BROKERIPALLOC__BROKER_TO_IPALLOC__BODY_RELEASE;
    env.release = &rr;
    assert_null(s_call(f, &env, 300));

    /* Garbage frames, then a ping still works. */
    rb_curve_t none = {0};
    void *raw = rb_zsock_connect(ZMQ_DEALER, f->ep, &none, NULL);
    zmq_send(raw, "12345678", 8, ZMQ_SNDMORE);
    zmq_send(raw, "\x0a\xff\xff\xff", 4, 0);
    zmq_send(raw, "lonely frame", 12, 0);
    env.body_case = RB__BROKERIPALLOC__BROKER_TO_IPALLOC__BODY_PING;
    env.ping = &pr;
    r = s_call(f, &env, 2000);
    assert_non_null(r);
    assert_int_equal(r->body_case, RB__BROKERIPALLOC__IPALLOC_TO_BROKER__BODY_PING);
    assert_true(r->ping->redis_ok);
    s_free(r);
    rb_zsock_close(&raw);
}

/* A caller that disconnects before its answer is sent (a broker restarting
 * between its ping and the reply): the reply is dropped and counted, and
 * ipalloc goes on serving. Under ASan this also catches a service touching
 * the request after rb_rpc_reply has freed it. */
static void test_caller_gone_before_reply(void **state)
{
    fx_t *f = *state;
    Rb__Brokeripalloc__BrokerToIpalloc env = RB__BROKERIPALLOC__BROKER_TO_IPALLOC__INIT;
    Rb__Brokeripalloc__PingRequest pr = RB__BROKERIPALLOC__PING_REQUEST__INIT;
    env.version = RB_PROTO_VERSION;
    env.body_case = RB__BROKERIPALLOC__BROKER_TO_IPALLOC__BODY_PING;
    env.ping = &pr;
    assert_true(rbt_caller_vanishes(f->loop, f->ep, &env.base));

    Rb__Brokeripalloc__IpallocToBroker *r = s_call(f, &env, 2000);
    assert_non_null(r);
    assert_int_equal(r->body_case, RB__BROKERIPALLOC__IPALLOC_TO_BROKER__BODY_PING);
    s_free(r);
}

static fx_t *g_fx;
static bool s_rebuilt(void *arg)
{
    return s_ready(arg) && rbt_cmd_int(&g_fx->rs, "SCARD rb:ip:free") == 2;
}

static void test_pool_rebuilt_after_redis_loses_it(void **state)
{
    fx_t *f = *state;
    /* As after a Redis restart without persistence. */
    freeReplyObject(rbt_cmd(&f->rs, "FLUSHALL"));
    /* The once-a-second stats notice the missing pool and rebuild it. */
    g_fx = f;
    assert_true(rbt_wait(f->loop, s_rebuilt, f->ia, 5000));
    Rb__Brokeripalloc__IpallocToBroker *a = s_lease(f, "alice", "sa");
    assert_int_equal(a->lease->status, RB__BROKERIPALLOC__LEASE_STATUS__LEASE_OK);
    s_free(a);
}

static void test_takeover(void **state)
{
    fx_t *f = *state;
    char ip[16], ip2[16], pool[16];
    assert_int_equal(s_lease_ip(s_lease(f, "alice", "sa"), ip, pool),
                     RB__BROKERIPALLOC__LEASE_STATUS__LEASE_OK);
    assert_int_equal(s_lease_ip(s_lease_full(f, "alice", "sb", NULL, "sa"), ip2, pool),
                     RB__BROKERIPALLOC__LEASE_STATUS__LEASE_OK);
    assert_string_equal(ip, ip2);
    assert_string_equal(pool, "default");
    redisReply *rep = rbt_cmd(&f->rs, "HGET rb:ip:lease:%s session", ip);
    assert_string_equal(rep->str, "sb");
    freeReplyObject(rep);
    assert_int_equal(rbt_cmd_int(&f->rs, "EXISTS rb:ip:session:sa"), 0);
    /* Taking over itself is a broker bug, refused. */
    assert_int_equal(s_lease_ip(s_lease_full(f, "alice", "sb", NULL, "sb"), ip2, pool),
                     RB__BROKERIPALLOC__LEASE_STATUS__LEASE_BAD_REQUEST);
    rb_buf_t m = RB_BUF_INIT;
    rb_metrics_render(&m);
    assert_non_null(strstr(m.data, "reachback_lease_takeovers_total "));
    rb_buf_free(&m);
}

/* ReconcileRequest over the wire: the answer counts, the metric, and a
 * request that could do harm (a grace period under 1 s, an invalid live
 * session) gets no answer and changes nothing. */
static Rb__Brokeripalloc__IpallocToBroker *s_reconcile(fx_t *f, Rb__Brokeripalloc__LiveLease **live,
                                                       size_t n, uint64_t grace_ms)
{
    Rb__Brokeripalloc__BrokerToIpalloc env = RB__BROKERIPALLOC__BROKER_TO_IPALLOC__INIT;
    Rb__Brokeripalloc__ReconcileRequest rr = RB__BROKERIPALLOC__RECONCILE_REQUEST__INIT;
    rr.live = live;
    rr.n_live = n;
    rr.grace_ms = grace_ms;
    env.version = RB_PROTO_VERSION;
    env.body_case = RB__BROKERIPALLOC__BROKER_TO_IPALLOC__BODY_RECONCILE;
    env.reconcile = &rr;
    return s_call(f, &env, 1000);
}

static void test_reconcile(void **state)
{
    fx_t *f = *state;
    char ipa[16], ipb[16], pool[16];
    s_lease_ip(s_lease(f, "alice", "sa"), ipa, pool);
    s_lease_ip(s_lease(f, "bob", "sb"), ipb, pool);
    /* Both leases look a minute old; alice's session moved on to sa2
     * without its take-over, bob's ended without its release. */
    freeReplyObject(rbt_cmd(&f->rs, "HSET rb:ip:lease:%s since 1", ipa));
    freeReplyObject(rbt_cmd(&f->rs, "HSET rb:ip:lease:%s since 1", ipb));
    Rb__Brokeripalloc__LiveLease l = RB__BROKERIPALLOC__LIVE_LEASE__INIT, *lv[] = {&l};
    l.session_id = "sa2";
    l.ip = ipa;
    l.user = "alice";
    /* Refused: a grace period that would cut logons in progress. */
    assert_null(s_reconcile(f, lv, 1, 10));
    l.ip = "10.9.9.300";
    assert_null(s_reconcile(f, lv, 1, 10000));
    assert_int_equal(rbt_cmd_int(&f->rs, "SCARD rb:ip:leased"), 2);
    l.ip = ipa;
    Rb__Brokeripalloc__IpallocToBroker *r = s_reconcile(f, lv, 1, 10000);
    assert_non_null(r);
    assert_int_equal(r->body_case, RB__BROKERIPALLOC__IPALLOC_TO_BROKER__BODY_RECONCILE);
    assert_int_equal(r->reconcile->moved, 1);
    assert_int_equal(r->reconcile->released, 1);
    s_free(r);
    redisReply *rep = rbt_cmd(&f->rs, "HGET rb:ip:lease:%s session", ipa);
    assert_string_equal(rep->str, "sa2");
    freeReplyObject(rep);
    assert_int_equal(rbt_cmd_int(&f->rs, "SISMEMBER rb:ip:free %s", ipb), 1);
    rb_buf_t m = RB_BUF_INIT;
    rb_metrics_render(&m);
    assert_non_null(strstr(m.data, "reachback_lease_reconciled_total{action=\"moved\"} 1"));
    assert_non_null(strstr(m.data, "reachback_lease_reconciled_total{action=\"released\"} 1"));
    rb_buf_free(&m);
}

static Rb__Brokeripalloc__PoolsReply *s_pools(fx_t *f, Rb__Brokeripalloc__IpallocToBroker **r)
{
    Rb__Brokeripalloc__BrokerToIpalloc env = RB__BROKERIPALLOC__BROKER_TO_IPALLOC__INIT;
    Rb__Brokeripalloc__PoolsRequest pr = RB__BROKERIPALLOC__POOLS_REQUEST__INIT;
    env.version = RB_PROTO_VERSION;
    env.body_case = RB__BROKERIPALLOC__BROKER_TO_IPALLOC__BODY_POOLS;
    env.pools = &pr;
    *r = s_call(f, &env, 2000);
    assert_non_null(*r);
    assert_int_equal((*r)->body_case, RB__BROKERIPALLOC__IPALLOC_TO_BROKER__BODY_POOLS);
    return (*r)->pools;
}

static bool s_staff_gauge(void *arg)
{
    (void)arg;
    rb_buf_t m = RB_BUF_INIT;
    rb_metrics_render(&m);
    bool ok = strstr(m.data, "reachback_leases{pool=\"staff\"} 1\n") &&
              strstr(m.data, "reachback_leases{pool=\"default\"} 2\n");
    rb_buf_free(&m);
    return ok;
}

static void test_plan(void **state)
{
    fx_t *f = *state;
    char ip[16], pool[16];
    /* The first group with a pool decides. */
    assert_int_equal(s_lease_ip(s_lease_full(f, "sam", "ss", "devs,staff", NULL), ip, pool),
                     RB__BROKERIPALLOC__LEASE_STATUS__LEASE_OK);
    assert_true(strncmp(ip, "10.67.0.", 8) == 0);
    assert_string_equal(pool, "staff");
    /* Others use the default pool, whose .2 is vip's: one address left. */
    assert_int_equal(s_lease_ip(s_lease_full(f, "dora", "sd", "devs", NULL), ip, pool),
                     RB__BROKERIPALLOC__LEASE_STATUS__LEASE_OK);
    assert_string_equal(ip, "10.66.0.1");
    assert_string_equal(pool, "default");
    assert_int_equal(s_lease_ip(s_lease(f, "eve", "se"), ip, pool),
                     RB__BROKERIPALLOC__LEASE_STATUS__LEASE_POOL_EXHAUSTED);
    assert_string_equal(pool, "default");
    assert_int_equal(s_lease_ip(s_lease(f, "vip", "sv"), ip, pool),
                     RB__BROKERIPALLOC__LEASE_STATUS__LEASE_OK);
    assert_string_equal(ip, "10.66.0.2");
    /* A group without addresses: no lease at all, pools untouched. */
    long leased = rbt_cmd_int(&f->rs, "SCARD rb:ip:leased");
    assert_int_equal(s_lease_ip(s_lease_full(f, "gus", "sg", "staff,guests", NULL), ip, pool),
                     RB__BROKERIPALLOC__LEASE_STATUS__LEASE_NO_ADDRESS);
    assert_string_equal(ip, "");
    assert_int_equal(rbt_cmd_int(&f->rs, "SCARD rb:ip:leased"), leased);
    assert_int_equal(rbt_cmd_int(&f->rs, "EXISTS rb:ip:session:sg"), 0);

    Rb__Brokeripalloc__IpallocToBroker *r;
    Rb__Brokeripalloc__PoolsReply *pr = s_pools(f, &r);
    assert_int_equal(pr->n_pools, 2);
    assert_string_equal(pr->pools[0]->name, "default");
    assert_string_equal(pr->pools[0]->cidrs, "10.66.0.0/30");
    assert_int_equal(pr->pools[0]->size, 2);
    assert_int_equal(pr->pools[0]->used, 2);
    assert_int_equal(pr->pools[0]->free, 0);
    assert_string_equal(pr->pools[1]->name, "staff");
    assert_string_equal(pr->pools[1]->cidrs, "10.67.0.0/30");
    assert_int_equal(pr->pools[1]->size, 2);
    assert_int_equal(pr->pools[1]->used, 1);
    assert_int_equal(pr->pools[1]->free, 1);
    s_free(r);

    /* The gauges and /status follow within a stats tick. */
    assert_true(rbt_wait(f->loop, s_staff_gauge, NULL, 3000));
    rb_buf_t json = RB_BUF_INIT;
    ipalloc_status_info(f->ia, &json);
    assert_non_null(strstr(json.data, "{\"name\":\"staff\",\"cidrs\":\"10.67.0.0/30\",\"size\":2,"
                                      "\"used\":1,\"free\":1,\"reserved\":0,\"ready\":true}"));
    assert_non_null(strstr(json.data, "\"spillover\":false"));
    rb_buf_free(&json);
}

static void test_spillover(void **state)
{
    fx_t *f = *state;
    char ip[16], pool[16];
    assert_int_equal(s_lease_ip(s_lease(f, "dora", "sd"), ip, pool),
                     RB__BROKERIPALLOC__LEASE_STATUS__LEASE_OK);
    /* Full: a session without an address instead of an error. */
    assert_int_equal(s_lease_ip(s_lease(f, "eve", "se"), ip, pool),
                     RB__BROKERIPALLOC__LEASE_STATUS__LEASE_NO_ADDRESS);
    assert_string_equal(ip, "");
    assert_string_equal(pool, "default");
    /* The reservation still holds for its user. */
    assert_int_equal(s_lease_ip(s_lease(f, "vip", "sv"), ip, pool),
                     RB__BROKERIPALLOC__LEASE_STATUS__LEASE_OK);
    assert_string_equal(ip, "10.66.0.2");
}

static void s_invalid(const char *pool, const char *groups, const char *statics, const char *noaddr,
                      const char *want)
{
    ipalloc_config_t c = {.pool = (char *)pool,
                          .exclude = "10.1.0.1",
                          .group_pools = (char *)groups,
                          .statics = (char *)statics,
                          .no_address_groups = (char *)noaddr};
    char err[256] = "";
    assert_int_equal(ipalloc_config_validate(&c, err, sizeof(err)), -1);
    if (!strstr(err, want)) fail_msg("error '%s' does not say '%s'", err, want);
}

static void test_config_validation(void **state)
{
    (void)state;
    ipalloc_config_t good = {.pool = "10.1.0.0/16",
                             .exclude = "10.1.0.1",
                             .group_pools = "staff=10.2.0.0/24+10.3.0.0/24; ops=10.4.0.0/30",
                             .statics = " alice = 10.1.0.5 , bob=10.3.0.9,carol=10.4.0.1",
                             .no_address_groups = "guests, visitors"};
    char err[256];
    assert_int_equal(ipalloc_config_validate(&good, err, sizeof(err)), 0);

    s_invalid("10.1.0.0/16", "staff=10.1.2.0/24", "", "",
              "key 'group_pools': pool 'staff' (10.1.2.0/24) overlaps pool 'default'");
    s_invalid("10.1.0.0/16", "a=10.2.0.0/24;b=10.3.0.0/24+10.2.0.128/25", "", "",
              "pool 'b' (10.2.0.128/25) overlaps pool 'a'");
    s_invalid("10.1.0.0/16", "", "alice=10.1.0.5,bob=10.1.0.5", "",
              "key 'static': 10.1.0.5 is reserved for both 'alice' and 'bob'");
    s_invalid("10.1.0.0/16", "", "alice=10.1.0.5,alice=10.1.0.6", "",
              "key 'static': user 'alice' has two reservations");
    s_invalid("10.1.0.0/16", "staff=10.2.0.0/24", "alice=10.9.0.5", "",
              "key 'static': entry 'alice=10.9.0.5': the address is in no pool");
    /* Excluded, and a network address: no pool hands them out. */
    s_invalid("10.1.0.0/16", "", "alice=10.1.0.1", "",
              "entry 'alice=10.1.0.1': the address is in no");
    s_invalid("10.1.0.0/16", "", "alice=10.1.0.0", "",
              "entry 'alice=10.1.0.0': the address is in no");
    s_invalid("10.1.0.0/16", "", "alice", "", "key 'static': entry 'alice' is not user=ip");
    s_invalid("10.1.0.0/16", "", "alice=10.1.0.256", "", "is not an IPv4 address");
    s_invalid("10.1.0.0/16", "default=10.2.0.0/24", "", "", "key 'group_pools'");
    s_invalid("10.1.0.0/16", "st:aff=10.2.0.0/24", "", "", "is not a group name");
    s_invalid("10.1.0.0/16", "staff=10.2.0.0/24;staff=10.3.0.0/24", "", "",
              "group 'staff' has two pools");
    s_invalid("10.1.0.0/16", "staff", "", "", "is not group=cidr");
    s_invalid("10.1.0.0/16", "staff=10.2.0.0/24", "", "staff", "key 'no_address_groups'");
    s_invalid("10.1.0.0/16", "", "alice=10.1.0.5,", "", "empty entry");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_lease_release_exhaust, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_requests, setup, teardown),
        cmocka_unit_test_setup_teardown(test_caller_gone_before_reply, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pool_rebuilt_after_redis_loses_it, setup, teardown),
        cmocka_unit_test_setup_teardown(test_takeover, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reconcile, setup, teardown),
        cmocka_unit_test_setup_teardown(test_plan, setup_groups, teardown),
        cmocka_unit_test_setup_teardown(test_spillover, setup_spillover, teardown),
        cmocka_unit_test(test_config_validation),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
