/* The ipalloc service object over real ZeroMQ (ipc:// in a temporary
 * directory, no CURVE) and a real redis-server: lease and release through
 * BrokerToIpalloc, exhaustion, bad and unknown requests, version mismatch,
 * garbage frames, readiness and /status fields. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <hiredis/hiredis.h>
#include <zmq.h>
#include "../redis_fixture.h"
#include "broker_ipalloc.pb-c.h"
#include "ipalloc.h"
#include "rb_log.h"
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

static int setup(void **state)
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

static Rb__Brokeripalloc__IpallocToBroker *s_lease(fx_t *f, const char *user, const char *sid)
{
    Rb__Brokeripalloc__BrokerToIpalloc env = RB__BROKERIPALLOC__BROKER_TO_IPALLOC__INIT;
    Rb__Brokeripalloc__LeaseRequest lr = RB__BROKERIPALLOC__LEASE_REQUEST__INIT;
    lr.user = (char *)user;
    lr.session_id = (char *)sid;
    env.version = RB_PROTO_VERSION;
    env.body_case = RB__BROKERIPALLOC__BROKER_TO_IPALLOC__BODY_LEASE;
    env.lease = &lr;
    Rb__Brokeripalloc__IpallocToBroker *r = s_call(f, &env, 2000);
    assert_non_null(r);
    assert_int_equal(r->body_case, RB__BROKERIPALLOC__IPALLOC_TO_BROKER__BODY_LEASE);
    return r;
}

static void s_free(Rb__Brokeripalloc__IpallocToBroker *r)
{
    protobuf_c_message_free_unpacked(&r->base, NULL);
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_lease_release_exhaust, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_requests, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pool_rebuilt_after_redis_loses_it, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
