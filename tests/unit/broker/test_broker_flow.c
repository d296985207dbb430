/* The broker end to end: a broker object in this process's loop, a real
 * reachback-ipalloc process (built next to this test) and a real
 * redis-server, over ipc:// endpoints in a temporary directory without
 * CURVE. A test DEALER speaks edge_broker.proto and a SUB listens to the
 * event stream: logon, SESSION_UP, second logon, logoff, SESSION_DOWN, the
 * lease back in the free set, garbage on the ROUTER, pool exhaustion and
 * a snapshot. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <limits.h>
#include <openssl/evp.h>
#include <zmq.h>
#include "../redis_fixture.h"
#include "broker.h"
#include "broker_ipalloc.pb-c.h"
#include "edge_broker.pb-c.h"
#include "rb_log.h"
#include "rb_pb.h"
#include "rb_rpc.h"
#include "rb_zmq.h"
#include "session_events.pb-c.h"

#define MAX_EVENTS 64

typedef struct {
    uint64_t seq;
    int kind;
    char sid[64];
    char ip[16];
    char fqdn[128];
    char reason[32];
} ev_t;

typedef struct {
    rbt_redis_t rs;
    pid_t ipalloc_pid;
    rb_loop_t *loop;
    broker_config_t cfg;
    broker_t *b;
    rb_rpc_client_t *edge;
    rb_rpc_client_t *snap;
    void *sub;
    ev_t events[MAX_EVENTS];
    size_t nevents;
    size_t heartbeats;
    char ep[4][160];
} fx_t;

static void s_on_sub(rb_loop_t *loop, void *sock, void *arg)
{
    fx_t *f = arg;
    for (;;) {
        zmq_msg_t msg;
        zmq_msg_init(&msg);
        if (zmq_msg_recv(&msg, sock, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&msg);
            return;
        }
        Rb__Events__EventMessage *m = (Rb__Events__EventMessage *)rb_pb_unpack(
            &rb__events__event_message__descriptor, zmq_msg_data(&msg), zmq_msg_size(&msg), 65536,
            "test-sub");
        zmq_msg_close(&msg);
        if (!m) continue;
        if (m->body_case == RB__EVENTS__EVENT_MESSAGE__BODY_HEARTBEAT) {
            f->heartbeats++;
        } else if (m->body_case == RB__EVENTS__EVENT_MESSAGE__BODY_EVENT &&
                   f->nevents < MAX_EVENTS) {
            ev_t *e = &f->events[f->nevents++];
            e->seq = m->event->seq;
            e->kind = m->event->kind;
            snprintf(e->reason, sizeof(e->reason), "%s", m->event->reason);
            if (m->event->session) {
                snprintf(e->sid, sizeof(e->sid), "%s", m->event->session->session_id);
                snprintf(e->ip, sizeof(e->ip), "%s", m->event->session->ip);
                snprintf(e->fqdn, sizeof(e->fqdn), "%s", m->event->session->fqdn);
            }
        }
        protobuf_c_message_free_unpacked(&m->base, NULL);
    }
}

static bool s_ready(void *arg)
{
    rb_buf_t why = RB_BUF_INIT;
    bool ok = broker_ready(arg, &why);
    rb_buf_free(&why);
    return ok;
}

static bool s_heard(void *arg)
{
    return ((fx_t *)arg)->heartbeats > 0;
}

static bool s_never(void *arg)
{
    return false;
}

static size_t g_want_events;
static bool s_have_events(void *arg)
{
    return ((fx_t *)arg)->nevents >= g_want_events;
}

/* Starts reachback-ipalloc from the directory of this test binary. */
static int s_spawn_ipalloc(fx_t *f, const char *pool)
{
    char self[PATH_MAX], bin[PATH_MAX + 32], conf[200], logf[200];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n <= 0) return -1;
    self[n] = '\0';
    char *slash = strrchr(self, '/');
    if (!slash) return -1;
    *slash = '\0';
    snprintf(bin, sizeof(bin), "%s/reachback-ipalloc", self);
    if (access(bin, X_OK) != 0) return -1;
    snprintf(conf, sizeof(conf), "%s/ipalloc.conf", f->rs.dir);
    snprintf(logf, sizeof(logf), "%s/ipalloc.log", f->rs.dir);
    FILE *fp = fopen(conf, "w");
    if (!fp) return -1;
    fprintf(fp,
            "log_level = info\nstatus_listen = 127.0.0.1:0\nlisten = %s\npool = %s\n"
            "redis_socket = %s\n",
            f->ep[3], pool, f->rs.sock);
    fclose(fp);
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        int fd = open(logf, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execl(bin, bin, "--config", conf, (char *)NULL);
        _exit(127);
    }
    f->ipalloc_pid = pid;
    return 0;
}

static int setup(void **state)
{
    fx_t *f = calloc(1, sizeof(*f));
    rb_log_init("test", RB_LOG_WARN);
    if (!f || rbt_redis_start(&f->rs) != 0) return -1;
    const char *names[] = {"edge", "events", "snap", "ipalloc"};
    for (int i = 0; i < 4; i++)
        snprintf(f->ep[i], sizeof(f->ep[i]), "ipc://%s/%s.sock", f->rs.dir, names[i]);
    if (s_spawn_ipalloc(f, "10.77.0.0/29") != 0) {
        rbt_redis_stop(&f->rs);
        free(f);
        *state = NULL;
        return 0; /* the tests skip */
    }
    f->loop = rb_loop_new();
    broker_config_t *c = &f->cfg;
    c->broker_id = "broker-test";
    c->listen_edge = f->ep[0];
    c->listen_events = f->ep[1];
    c->listen_snapshot = f->ep[2];
    c->ipalloc_endpoint = f->ep[3];
    c->ipalloc_public_key = "";
    c->dns_suffix = "vpn.test";
    c->redis_host = "127.0.0.1";
    c->redis_port = 6379;
    c->redis_socket = f->rs.sock;
    c->redis_password = "";
    c->curve_secret_key = "";
    c->curve_allowed_keys = "";
    c->admin_token = "";
    c->transfer_offer_ttl = 120;
    c->session_timeout = 60;
    c->session_max_lifetime = 86400;
    f->b = broker_new(f->loop, c);
    if (!f->b) return -1;
    rb_curve_t none = {0};
    f->edge =
        rb_rpc_client_new(f->loop, rb_zsock_connect(ZMQ_DEALER, f->ep[0], &none, NULL), "broker");
    f->snap =
        rb_rpc_client_new(f->loop, rb_zsock_connect(ZMQ_DEALER, f->ep[2], &none, NULL), "snapshot");
    f->sub = rb_zsock_connect(ZMQ_SUB, f->ep[1], &none, NULL);
    if (!f->edge || !f->snap || !f->sub || zmq_setsockopt(f->sub, ZMQ_SUBSCRIBE, "", 0) != 0 ||
        rb_loop_add_zsock(f->loop, f->sub, s_on_sub, f) != 0)
        return -1;
    /* Ready: Redis answers, ipalloc answered a ping, and our SUB is joined
     * (a heartbeat arrived), so no event can be lost to the slow joiner. */
    if (!rbt_wait(f->loop, s_ready, f->b, 8000) || !rbt_wait(f->loop, s_heard, f, 5000)) return -1;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx_t *f = *state;
    if (!f) return 0;
    rb_loop_del_zsock(f->loop, f->sub);
    rb_zsock_close(&f->sub);
    rb_rpc_client_destroy(&f->edge);
    rb_rpc_client_destroy(&f->snap);
    broker_destroy(&f->b);
    if (f->ipalloc_pid > 0) {
        kill(f->ipalloc_pid, SIGTERM);
        waitpid(f->ipalloc_pid, NULL, 0);
    }
    char path[200];
    snprintf(path, sizeof(path), "%s/ipalloc.conf", f->rs.dir);
    unlink(path);
    snprintf(path, sizeof(path), "%s/ipalloc.log", f->rs.dir);
    unlink(path);
    rb_loop_destroy(&f->loop);
    rbt_redis_stop(&f->rs);
    free(f);
    return 0;
}

/* ---- calls ---- */

typedef struct {
    bool done;
    Rb__Edgebroker__BrokerToEdge *reply;
    Rb__Events__SnapshotAnswer *snap;
} call_t;

static bool s_call_done(void *arg)
{
    return ((call_t *)arg)->done;
}

static void s_on_reply(void *arg, const uint8_t *body, size_t len)
{
    call_t *c = arg;
    c->done = true;
    if (body)
        c->reply = (Rb__Edgebroker__BrokerToEdge *)rb_pb_unpack(
            &rb__edgebroker__broker_to_edge__descriptor, body, len, 65536, "broker");
}

static Rb__Edgebroker__BrokerToEdge *s_call(fx_t *f, Rb__Edgebroker__EdgeToBroker *env)
{
    call_t c = {0};
    env->version = RB_PROTO_VERSION;
    assert_int_equal(rb_rpc_call(f->edge, &env->base, 5000, 0, s_on_reply, &c), 0);
    assert_true(rbt_wait(f->loop, s_call_done, &c, 6000));
    assert_non_null(c.reply);
    return c.reply;
}

static Rb__Edgebroker__BrokerToEdge *s_logon(fx_t *f, const char *user)
{
    Rb__Edgebroker__EdgeToBroker env = RB__EDGEBROKER__EDGE_TO_BROKER__INIT;
    Rb__Edgebroker__LogonRequest lr = RB__EDGEBROKER__LOGON_REQUEST__INIT;
    lr.user = (char *)user;
    lr.device = "test-device";
    lr.edge_id = "edge-test";
    lr.source = "127.0.0.1:40000";
    env.body_case = RB__EDGEBROKER__EDGE_TO_BROKER__BODY_LOGON;
    env.logon = &lr;
    Rb__Edgebroker__BrokerToEdge *r = s_call(f, &env);
    assert_int_equal(r->body_case, RB__EDGEBROKER__BROKER_TO_EDGE__BODY_LOGON);
    return r;
}

static Rb__Edgebroker__BrokerToEdge *s_logoff(fx_t *f, const char *sid)
{
    Rb__Edgebroker__EdgeToBroker env = RB__EDGEBROKER__EDGE_TO_BROKER__INIT;
    Rb__Edgebroker__LogoffRequest lr = RB__EDGEBROKER__LOGOFF_REQUEST__INIT;
    lr.session_id = (char *)sid;
    lr.reason = "logoff";
    env.body_case = RB__EDGEBROKER__EDGE_TO_BROKER__BODY_LOGOFF;
    env.logoff = &lr;
    Rb__Edgebroker__BrokerToEdge *r = s_call(f, &env);
    assert_int_equal(r->body_case, RB__EDGEBROKER__BROKER_TO_EDGE__BODY_LOGOFF);
    return r;
}

static void s_free(Rb__Edgebroker__BrokerToEdge *r)
{
    protobuf_c_message_free_unpacked(&r->base, NULL);
}

static const ev_t *s_wait_event(fx_t *f, size_t index)
{
    g_want_events = index + 1;
    assert_true(rbt_wait(f->loop, s_have_events, f, 3000));
    return &f->events[index];
}

/* ---- tests ---- */

static void test_logon_logoff(void **state)
{
    fx_t *f = *state;
    if (!f) skip();
    size_t base = f->nevents;
    Rb__Edgebroker__BrokerToEdge *r = s_logon(f, "alice");
    Rb__Edgebroker__LogonReply *lr = r->logon;
    assert_int_equal(lr->status, RB__EDGEBROKER__LOGON_STATUS__LOGON_OK);
    assert_true(strncmp(lr->ip, "10.77.0.", 8) == 0);
    assert_string_equal(lr->fqdn, "alice.vpn.test");
    assert_int_equal(strlen(lr->session_id), 32);
    assert_int_equal(strlen(lr->resume_token), 64);
    char sid[64], ip[16];
    snprintf(sid, sizeof(sid), "%s", lr->session_id);
    snprintf(ip, sizeof(ip), "%s", lr->ip);

    /* Only the token's SHA-256 is stored. */
    unsigned char md[32];
    unsigned mdlen = 0;
    char hex[65];
    EVP_Digest(lr->resume_token, strlen(lr->resume_token), md, &mdlen, EVP_sha256(), NULL);
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    redisReply *rep = rbt_cmd(&f->rs, "HGET rb:session:%s token_sha256", sid);
    assert_string_equal(rep->str, hex);
    freeReplyObject(rep);
    s_free(r);

    const ev_t *up = s_wait_event(f, base);
    assert_int_equal(up->kind, RB__EVENTS__EVENT_KIND__SESSION_UP);
    assert_string_equal(up->sid, sid);
    assert_string_equal(up->ip, ip);
    assert_string_equal(up->fqdn, "alice.vpn.test");
    redisReply *seq = rbt_cmd(&f->rs, "GET rb:events:seq");
    assert_int_equal(strtoull(seq->str, NULL, 10), up->seq);
    freeReplyObject(seq);

    /* One session per user: a second logon gets a transfer offer. */
    r = s_logon(f, "alice");
    assert_int_equal(r->logon->status, RB__EDGEBROKER__LOGON_STATUS__LOGON_TRANSFER_OFFER);
    assert_non_null(r->logon->offer);
    assert_int_equal(strlen(r->logon->offer->offer_id), 32);
    assert_string_equal(r->logon->offer->device, "test-device");
    assert_string_equal(r->logon->offer->edge_id, "edge-test");
    assert_string_equal(r->logon->offer->source, "127.0.0.1:40000");
    assert_int_equal(r->logon->offer->expires_in_s, 120);
    assert_true(r->logon->offer->session_since_ms > 1700000000000ull);
    assert_true(rbt_cmd_int(&f->rs, "TTL rb:offer:%s", r->logon->offer->offer_id) > 100);
    s_free(r);

    assert_int_equal(rbt_cmd_int(&f->rs, "SISMEMBER rb:ip:free %s", ip), 0);
    r = s_logoff(f, sid);
    assert_true(r->logoff->found);
    s_free(r);
    const ev_t *down = s_wait_event(f, base + 1);
    assert_int_equal(down->kind, RB__EVENTS__EVENT_KIND__SESSION_DOWN);
    assert_int_equal(down->seq, up->seq + 1);
    assert_string_equal(down->sid, sid);
    assert_string_equal(down->reason, "logoff");
    /* The reply comes after ipalloc released the lease. */
    assert_int_equal(rbt_cmd_int(&f->rs, "SISMEMBER rb:ip:free %s", ip), 1);

    r = s_logoff(f, sid);
    assert_false(r->logoff->found);
    s_free(r);
}

static void test_garbage_then_logon(void **state)
{
    fx_t *f = *state;
    if (!f) skip();
    rb_curve_t none = {0};
    void *raw = rb_zsock_connect(ZMQ_DEALER, f->ep[0], &none, NULL);
    assert_non_null(raw);
    const char junk[] = "\xff\xff\xff\xff not a protobuf";
    zmq_send(raw, "12345678", 8, ZMQ_SNDMORE);
    zmq_send(raw, junk, sizeof(junk), 0); /* id + garbage body */
    zmq_send(raw, "x", 1, 0);             /* one frame only */
    zmq_send(raw, "a", 1, ZMQ_SNDMORE);
    zmq_send(raw, "b", 1, ZMQ_SNDMORE);
    zmq_send(raw, "c", 1, 0); /* three frames */
    zmq_send(raw, "12345678", 8, ZMQ_SNDMORE);
    zmq_send(raw, "", 0, 0); /* empty envelope: version 0 */
    Rb__Edgebroker__EdgeToBroker env = RB__EDGEBROKER__EDGE_TO_BROKER__INIT;
    uint8_t buf[64];
    env.version = RB_PROTO_VERSION; /* valid envelope, no body */
    size_t n = rb__edgebroker__edge_to_broker__pack(&env, buf);
    zmq_send(raw, "12345678", 8, ZMQ_SNDMORE);
    zmq_send(raw, buf, n, 0);

    Rb__Edgebroker__BrokerToEdge *r = s_logon(f, "bob");
    assert_int_equal(r->logon->status, RB__EDGEBROKER__LOGON_STATUS__LOGON_OK);
    assert_string_equal(r->logon->fqdn, "bob.vpn.test");
    s_free(r);
    rb_zsock_close(&raw);

    /* A user name that is not a name at all is a bad request. */
    r = s_logon(f, "");
    assert_int_equal(r->logon->status, RB__EDGEBROKER__LOGON_STATUS__LOGON_BAD_REQUEST);
    s_free(r);
}

static void test_ping(void **state)
{
    fx_t *f = *state;
    if (!f) skip();
    Rb__Edgebroker__EdgeToBroker env = RB__EDGEBROKER__EDGE_TO_BROKER__INIT;
    Rb__Edgebroker__PingRequest pr = RB__EDGEBROKER__PING_REQUEST__INIT;
    pr.edge_id = "edge-test";
    env.body_case = RB__EDGEBROKER__EDGE_TO_BROKER__BODY_PING;
    env.ping = &pr;
    Rb__Edgebroker__BrokerToEdge *r = s_call(f, &env);
    assert_int_equal(r->body_case, RB__EDGEBROKER__BROKER_TO_EDGE__BODY_PING);
    assert_string_equal(r->ping->broker_id, "broker-test");
    assert_true(r->ping->redis_ok);
    assert_true(r->ping->ipalloc_ok);
    s_free(r);
}

static void s_on_snap(void *arg, const uint8_t *body, size_t len)
{
    call_t *c = arg;
    c->done = true;
    if (body)
        c->snap = (Rb__Events__SnapshotAnswer *)rb_pb_unpack(
            &rb__events__snapshot_answer__descriptor, body, len, RB_PB_MAX_MESSAGE, "snap");
}

static void test_exhaustion_and_snapshot(void **state)
{
    fx_t *f = *state;
    if (!f) skip();
    /* bob holds one of the 6 addresses of the /29; 5 more fit. */
    for (int i = 0; i < 5; i++) {
        char user[16];
        snprintf(user, sizeof(user), "user%d", i);
        Rb__Edgebroker__BrokerToEdge *r = s_logon(f, user);
        assert_int_equal(r->logon->status, RB__EDGEBROKER__LOGON_STATUS__LOGON_OK);
        s_free(r);
    }
    Rb__Edgebroker__BrokerToEdge *r = s_logon(f, "one-too-many");
    assert_int_equal(r->logon->status, RB__EDGEBROKER__LOGON_STATUS__LOGON_POOL_EXHAUSTED);
    assert_true(strstr(r->logon->message, "exhausted") != NULL);
    s_free(r);
    /* The failed logon was unwound: the user may try again later. */
    assert_int_equal(rbt_cmd_int(&f->rs, "EXISTS rb:user:one-too-many"), 0);

    call_t c = {0};
    Rb__Events__SnapshotCall call = RB__EVENTS__SNAPSHOT_CALL__INIT;
    Rb__Events__SnapshotRequest req = RB__EVENTS__SNAPSHOT_REQUEST__INIT;
    req.subscriber = "test";
    call.version = RB_PROTO_VERSION;
    call.request = &req;
    assert_int_equal(rb_rpc_call(f->snap, &call.base, 3000, 0, s_on_snap, &c), 0);
    assert_true(rbt_wait(f->loop, s_call_done, &c, 4000));
    assert_non_null(c.snap);
    assert_non_null(c.snap->snapshot);
    assert_int_equal(c.snap->snapshot->n_sessions, 6);
    redisReply *seq = rbt_cmd(&f->rs, "GET rb:events:seq");
    assert_int_equal(strtoull(seq->str, NULL, 10), c.snap->snapshot->seq);
    freeReplyObject(seq);
    protobuf_c_message_free_unpacked(&c.snap->base, NULL);
}

static void test_ipalloc_down_unwinds(void **state)
{
    fx_t *f = *state;
    if (!f) skip();
    kill(f->ipalloc_pid, SIGTERM);
    waitpid(f->ipalloc_pid, NULL, 0);
    f->ipalloc_pid = 0;
    uint64_t t0 = rb_now_ms();
    Rb__Edgebroker__BrokerToEdge *r = s_logon(f, "dave");
    uint64_t took = rb_now_ms() - t0;
    assert_int_equal(r->logon->status, RB__EDGEBROKER__LOGON_STATUS__LOGON_UNAVAILABLE);
    s_free(r);
    /* About 2 s (1 s and one resend), and the claim was undone. */
    assert_true(took >= 1500 && took < 4000);
    assert_int_equal(rbt_cmd_int(&f->rs, "EXISTS rb:user:dave"), 0);
    /* Not ready once ipalloc has been silent for 3 s. */
    rb_buf_t why = RB_BUF_INIT;
    rbt_wait(f->loop, s_never, NULL, 2500);
    assert_false(broker_ready(f->b, &why));
    assert_non_null(strstr(why.data, "ipalloc"));
    rb_buf_free(&why);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_logon_logoff),
        cmocka_unit_test(test_garbage_then_logon),
        cmocka_unit_test(test_ping),
        cmocka_unit_test(test_exhaustion_and_snapshot),
        cmocka_unit_test(test_ipalloc_down_unwinds), /* last: stops ipalloc */
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
