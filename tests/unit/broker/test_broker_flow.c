/* The broker end to end: a broker object in this process's loop, a real
 * reachback-ipalloc process (built next to this test) and a real
 * redis-server, over ipc:// endpoints in a temporary directory without
 * CURVE. A test DEALER speaks edge_broker.proto and a SUB listens to the
 * event stream: logon, SESSION_UP, second logon, logoff, SESSION_DOWN, the
 * lease back in the free set, garbage on the ROUTER, an edge gone before
 * its answer, pool exhaustion and a snapshot; the lease reconcile catching
 * a lost take-over and a lost release. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <limits.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <sys/socket.h>
#include <zmq.h>
#include "../redis_fixture.h"
#include "../rpc_fixture.h"
#include "broker.h"
#include "broker_ipalloc.pb-c.h"
#include "edge_broker.pb-c.h"
#include "rb_log.h"
#include "rb_pb.h"
#include "rb_metrics.h"
#include "rb_rpc.h"
#include "rb_status.h"
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
    char user[32];
    char edge[32];
    char source[32];
    bool via;
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
                snprintf(e->user, sizeof(e->user), "%s", m->event->session->user);
                snprintf(e->edge, sizeof(e->edge), "%s", m->event->session->edge_id);
                snprintf(e->source, sizeof(e->source), "%s", m->event->session->source);
                e->via = m->event->session->via_transfer;
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
    c->reconcile_s = 1;
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
    uint64_t up_seq = lr->up_seq;

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
    assert_int_equal(up_seq, up->seq); /* the edge tells older UPs by it */
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

/* An edge that disconnects before its answer is sent (restarting between a
 * request and the reply): the reply is dropped and counted, and the broker
 * goes on serving. Under ASan this also catches the broker touching the
 * request after rb_rpc_reply has freed it. */
static void test_edge_gone_before_reply(void **state)
{
    fx_t *f = *state;
    if (!f) skip();
    Rb__Edgebroker__EdgeToBroker env = RB__EDGEBROKER__EDGE_TO_BROKER__INIT;
    Rb__Edgebroker__PingRequest pr = RB__EDGEBROKER__PING_REQUEST__INIT;
    pr.edge_id = "edge-gone";
    env.version = RB_PROTO_VERSION;
    env.body_case = RB__EDGEBROKER__EDGE_TO_BROKER__BODY_PING;
    env.ping = &pr;
    assert_true(rbt_caller_vanishes(f->loop, f->ep[0], &env.base));

    Rb__Edgebroker__BrokerToEdge *r = s_call(f, &env);
    assert_int_equal(r->body_case, RB__EDGEBROKER__BROKER_TO_EDGE__BODY_PING);
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

/* ---- issue 3 ---- */

static void s_transfer_env(Rb__Edgebroker__EdgeToBroker *env, Rb__Edgebroker__TransferRequest *tr,
                           const char *offer, const char *user, const char *edge)
{
    rb__edgebroker__edge_to_broker__init(env);
    rb__edgebroker__transfer_request__init(tr);
    tr->offer_id = (char *)offer;
    tr->user = (char *)user;
    tr->device = "device-2";
    tr->edge_id = (char *)edge;
    tr->source = "127.0.0.2:40000";
    env->body_case = RB__EDGEBROKER__EDGE_TO_BROKER__BODY_TRANSFER;
    env->transfer = tr;
    env->version = RB_PROTO_VERSION;
}

/* The index of the first event at or after from for sid with kind; waits. */
static const ev_t *s_find_event(fx_t *f, size_t from, const char *sid, int kind)
{
    for (size_t i = from;; i++) {
        g_want_events = i + 1;
        if (f->nevents <= i && !rbt_wait(f->loop, s_have_events, f, 4000)) return NULL;
        if (strcmp(f->events[i].sid, sid) == 0 && f->events[i].kind == kind) return &f->events[i];
    }
}

typedef struct {
    fx_t *f;
    const char *ip;
    const char *sid;
} lease_q_t;

static bool s_leased_to(void *arg)
{
    lease_q_t *q = arg;
    redisReply *rep = rbt_cmd(&q->f->rs, "HGET rb:ip:lease:%s session", q->ip);
    bool yes = rep && rep->type == REDIS_REPLY_STRING && strcmp(rep->str, q->sid) == 0;
    freeReplyObject(rep);
    return yes;
}

static void s_logoff_all(fx_t *f, const char *user)
{
    redisReply *rep = rbt_cmd(&f->rs, "GET rb:user:%s", user);
    if (rep && rep->type == REDIS_REPLY_STRING) s_free(s_logoff(f, rep->str));
    freeReplyObject(rep);
}

static void test_expiry(void **state)
{
    fx_t *f = *state;
    if (!f) skip();
    /* Every session so far (the pool is full) stops being refreshed. */
    long long live = rbt_cmd_int(&f->rs, "SCARD rb:sessions:live");
    assert_true(live >= 6);
    Rb__Edgebroker__BrokerToEdge *r = s_logon(f, "late");
    assert_int_equal(r->logon->status, RB__EDGEBROKER__LOGON_STATUS__LOGON_POOL_EXHAUSTED);
    s_free(r);
    rb_metric_t *m = rb_counter("reachback_sessions_expired_total", NULL, "");
    double before = rb_metric_value(m);
    size_t base = f->nevents;
    f->cfg.session_timeout = 2; /* the broker reads its config on every sweep */
    g_want_events = base + (size_t)live;
    uint64_t t0 = rb_now_ms();
    assert_true(rbt_wait(f->loop, s_have_events, f, 6000));
    uint64_t took = rb_now_ms() - t0;
    f->cfg.session_timeout = 60;
    assert_true(took < 4500);
    for (size_t i = base; i < f->nevents; i++) {
        assert_int_equal(f->events[i].kind, RB__EVENTS__EVENT_KIND__SESSION_DOWN);
        assert_string_equal(f->events[i].reason, "expired");
    }
    assert_int_equal(rbt_cmd_int(&f->rs, "SCARD rb:sessions:live"), 0);
    assert_int_equal(rb_metric_value(m) - before, (double)live);
    /* The releases went to ipalloc: the whole pool is free again. */
    rbt_wait(f->loop, s_never, NULL, 300);
    assert_int_equal(rbt_cmd_int(&f->rs, "SCARD rb:ip:leased"), 0);
    r = s_logon(f, "late");
    assert_int_equal(r->logon->status, RB__EDGEBROKER__LOGON_STATUS__LOGON_OK);
    s_free(r);
    s_logoff_all(f, "late");
}

static void test_transfer_flow(void **state)
{
    fx_t *f = *state;
    if (!f) skip();
    Rb__Edgebroker__BrokerToEdge *r = s_logon(f, "carol");
    assert_int_equal(r->logon->status, RB__EDGEBROKER__LOGON_STATUS__LOGON_OK);
    char sid0[64], ip[16], tok0[80];
    snprintf(sid0, sizeof(sid0), "%s", r->logon->session_id);
    snprintf(ip, sizeof(ip), "%s", r->logon->ip);
    snprintf(tok0, sizeof(tok0), "%s", r->logon->resume_token);
    s_free(r);

    /* An offer that expires (1 s) changes nothing when accepted late. */
    f->cfg.transfer_offer_ttl = 1;
    r = s_logon(f, "carol");
    f->cfg.transfer_offer_ttl = 120;
    assert_int_equal(r->logon->status, RB__EDGEBROKER__LOGON_STATUS__LOGON_TRANSFER_OFFER);
    assert_int_equal(r->logon->offer->expires_in_s, 1);
    char offer[64];
    snprintf(offer, sizeof(offer), "%s", r->logon->offer->offer_id);
    s_free(r);
    rbt_wait(f->loop, s_never, NULL, 1100);
    size_t base = f->nevents;
    Rb__Edgebroker__EdgeToBroker env;
    Rb__Edgebroker__TransferRequest tr;
    s_transfer_env(&env, &tr, offer, "carol", "edge-2");
    r = s_call(f, &env);
    assert_int_equal(r->logon->status, RB__EDGEBROKER__LOGON_STATUS__LOGON_OFFER_EXPIRED);
    assert_non_null(strstr(r->logon->message, "expired"));
    s_free(r);
    redisReply *rep = rbt_cmd(&f->rs, "GET rb:user:carol");
    assert_string_equal(rep->str, sid0);
    freeReplyObject(rep);
    rbt_wait(f->loop, s_never, NULL, 100);
    assert_int_equal(f->nevents, base); /* nothing published */

    /* A fresh offer, accepted: same address and name, a new session. */
    r = s_logon(f, "carol");
    snprintf(offer, sizeof(offer), "%s", r->logon->offer->offer_id);
    s_free(r);
    s_transfer_env(&env, &tr, offer, "carol", "edge-2");
    r = s_call(f, &env);
    assert_int_equal(r->logon->status, RB__EDGEBROKER__LOGON_STATUS__LOGON_OK);
    assert_string_equal(r->logon->ip, ip);
    assert_string_equal(r->logon->fqdn, "carol.vpn.test");
    assert_string_not_equal(r->logon->session_id, sid0);
    assert_int_equal(strlen(r->logon->resume_token), 64);
    assert_string_not_equal(r->logon->resume_token, tok0);
    assert_false(r->logon->no_address);
    char sid1[64];
    snprintf(sid1, sizeof(sid1), "%s", r->logon->session_id);
    uint64_t up_seq = r->logon->up_seq;
    s_free(r);
    const ev_t *down = s_find_event(f, base, sid0, RB__EVENTS__EVENT_KIND__SESSION_DOWN);
    assert_non_null(down);
    assert_string_equal(down->reason, "transferred");
    const ev_t *up = s_find_event(f, base, sid1, RB__EVENTS__EVENT_KIND__SESSION_UP);
    assert_non_null(up);
    assert_int_equal(up->seq, down->seq + 1);
    assert_int_equal(up_seq, up->seq);
    assert_string_equal(up->ip, ip);
    assert_string_equal(up->edge, "edge-2");
    assert_string_equal(up->source, "127.0.0.2:40000");
    assert_true(up->via);
    /* The lease follows the session, never free in between. */
    lease_q_t q = {f, ip, sid1};
    assert_true(rbt_wait(f->loop, s_leased_to, &q, 3000));
    assert_int_equal(rbt_cmd_int(&f->rs, "SISMEMBER rb:ip:free %s", ip), 0);
    /* The old device's token is dead with its session. */
    Rb__Edgebroker__EdgeToBroker renv = RB__EDGEBROKER__EDGE_TO_BROKER__INIT;
    Rb__Edgebroker__ResumeRequest rr = RB__EDGEBROKER__RESUME_REQUEST__INIT;
    rr.session_id = sid0;
    rr.resume_token = tok0;
    rr.edge_id = "edge-1";
    renv.body_case = RB__EDGEBROKER__EDGE_TO_BROKER__BODY_RESUME;
    renv.resume = &rr;
    r = s_call(f, &renv);
    assert_int_equal(r->logon->status, RB__EDGEBROKER__LOGON_STATUS__LOGON_RESUME_REFUSED);
    s_free(r);
    s_logoff_all(f, "carol");
    assert_int_equal(rbt_cmd_int(&f->rs, "SISMEMBER rb:ip:free %s", ip), 1);
}

/* An offer for a session that has ended, accepted after the user logged
 * on afresh elsewhere: the newer session was never offered, so it stays,
 * and the accept is told the offer no longer applies. */
static void test_stale_offer_leaves_a_newer_session(void **state)
{
    fx_t *f = *state;
    if (!f) skip();
    Rb__Edgebroker__BrokerToEdge *r = s_logon(f, "olga");
    assert_int_equal(r->logon->status, RB__EDGEBROKER__LOGON_STATUS__LOGON_OK);
    char sid0[64];
    snprintf(sid0, sizeof(sid0), "%s", r->logon->session_id);
    s_free(r);
    r = s_logon(f, "olga");
    assert_int_equal(r->logon->status, RB__EDGEBROKER__LOGON_STATUS__LOGON_TRANSFER_OFFER);
    char offer[64];
    snprintf(offer, sizeof(offer), "%s", r->logon->offer->offer_id);
    s_free(r);
    r = s_logoff(f, sid0);
    assert_true(r->logoff->found);
    s_free(r);
    r = s_logon(f, "olga");
    assert_int_equal(r->logon->status, RB__EDGEBROKER__LOGON_STATUS__LOGON_OK);
    char sid1[64];
    snprintf(sid1, sizeof(sid1), "%s", r->logon->session_id);
    s_free(r);
    Rb__Edgebroker__EdgeToBroker env;
    Rb__Edgebroker__TransferRequest tr;
    s_transfer_env(&env, &tr, offer, "olga", "edge-2");
    r = s_call(f, &env);
    assert_int_equal(r->logon->status, RB__EDGEBROKER__LOGON_STATUS__LOGON_OFFER_EXPIRED);
    s_free(r);
    redisReply *rep = rbt_cmd(&f->rs, "GET rb:user:olga");
    assert_string_equal(rep->str, sid1);
    freeReplyObject(rep);
    assert_int_equal(rbt_cmd_int(&f->rs, "SISMEMBER rb:sessions:live %s", sid1), 1);
    s_logoff_all(f, "olga");
}

/* A logoff that finds its session gone (transferred by another broker,
 * while ipalloc still names the old session on the lease until the move)
 * releases nothing: the address belongs to whoever holds it now. */
static void test_late_logoff_keeps_the_lease(void **state)
{
    fx_t *f = *state;
    if (!f) skip();
    Rb__Edgebroker__BrokerToEdge *r = s_logon(f, "ivan");
    assert_int_equal(r->logon->status, RB__EDGEBROKER__LOGON_STATUS__LOGON_OK);
    char sid[64], ip[16];
    snprintf(sid, sizeof(sid), "%s", r->logon->session_id);
    snprintf(ip, sizeof(ip), "%s", r->logon->ip);
    s_free(r);
    lease_q_t q = {f, ip, sid};
    assert_true(rbt_wait(f->loop, s_leased_to, &q, 3000));
    /* The session ends behind this broker's back, its lease not yet moved. */
    freeReplyObject(rbt_cmd(&f->rs, "DEL rb:session:%s rb:user:ivan", sid));
    freeReplyObject(rbt_cmd(&f->rs, "SREM rb:sessions:live %s", sid));
    freeReplyObject(rbt_cmd(&f->rs, "ZREM rb:sessions:seen %s", sid));
    freeReplyObject(rbt_cmd(&f->rs, "ZREM rb:sessions:since %s", sid));
    freeReplyObject(rbt_cmd(&f->rs, "HDEL rb:sessions:by_ip %s", ip));
    r = s_logoff(f, sid);
    assert_false(r->logoff->found);
    s_free(r);
    rbt_wait(f->loop, s_never, NULL, 500);
    assert_true(s_leased_to(&q));
    assert_int_equal(rbt_cmd_int(&f->rs, "SISMEMBER rb:ip:free %s", ip), 0);
}

static void s_cont(rb_loop_t *l, void *arg) { kill((pid_t)(intptr_t)arg, SIGCONT); }

/* Redis and ipalloc both slow: the lease comes back later than a commit
 * could still reach the edge in time, so the broker gives up cleanly (no
 * live session, the lease given back) instead of making a session nobody
 * waits for. */
static void test_slow_logon_is_not_committed(void **state)
{
    fx_t *f = *state;
    if (!f) skip();
    kill(f->rs.pid, SIGSTOP);
    kill(f->ipalloc_pid, SIGSTOP);
    rb_loop_add_timer(f->loop, 1300, false, s_cont, (void *)(intptr_t)f->rs.pid);
    rb_loop_add_timer(f->loop, 2700, false, s_cont, (void *)(intptr_t)f->ipalloc_pid);
    Rb__Edgebroker__BrokerToEdge *r = s_logon(f, "slow");
    assert_int_equal(r->logon->status, RB__EDGEBROKER__LOGON_STATUS__LOGON_UNAVAILABLE);
    s_free(r);
    assert_int_equal(rbt_cmd_int(&f->rs, "EXISTS rb:user:slow"), 0);
    /* The lease made for it goes back to the pool. */
    rbt_wait(f->loop, s_never, NULL, 500);
    redisReply *rep = rbt_cmd(&f->rs, "KEYS rb:ip:lease:*");
    for (size_t i = 0; rep && i < rep->elements; i++) {
        redisReply *u = rbt_cmd(&f->rs, "HGET %s user", rep->element[i]->str);
        assert_false(u && u->type == REDIS_REPLY_STRING && strcmp(u->str, "slow") == 0);
        freeReplyObject(u);
    }
    freeReplyObject(rep);
    /* And the next logon, with nothing slow, works. */
    r = s_logon(f, "slow");
    assert_int_equal(r->logon->status, RB__EDGEBROKER__LOGON_STATUS__LOGON_OK);
    s_free(r);
    s_logoff_all(f, "slow");
}

/* Three accepts of three offers at once, through two brokers sharing Redis
 * and ipalloc: one live session at the end, the last, and the address
 * leased to it alone. */
static void test_concurrent_accepts(void **state)
{
    fx_t *f = *state;
    if (!f) skip();
    broker_config_t c2 = f->cfg;
    char ep[3][160];
    const char *names[] = {"edge2", "events2", "snap2"};
    for (int i = 0; i < 3; i++)
        snprintf(ep[i], sizeof(ep[i]), "ipc://%s/%s.sock", f->rs.dir, names[i]);
    c2.broker_id = "broker-test-2";
    c2.listen_edge = ep[0];
    c2.listen_events = ep[1];
    c2.listen_snapshot = ep[2];
    broker_t *b2 = broker_new(f->loop, &c2);
    assert_non_null(b2);
    rb_curve_t none = {0};
    rb_rpc_client_t *e2 =
        rb_rpc_client_new(f->loop, rb_zsock_connect(ZMQ_DEALER, ep[0], &none, NULL), "broker2");
    assert_non_null(e2);

    Rb__Edgebroker__BrokerToEdge *r = s_logon(f, "dan");
    char sid0[64], ip[16];
    snprintf(sid0, sizeof(sid0), "%s", r->logon->session_id);
    snprintf(ip, sizeof(ip), "%s", r->logon->ip);
    s_free(r);
    char offers[3][64];
    for (int i = 0; i < 3; i++) {
        r = s_logon(f, "dan");
        assert_int_equal(r->logon->status, RB__EDGEBROKER__LOGON_STATUS__LOGON_TRANSFER_OFFER);
        snprintf(offers[i], sizeof(offers[i]), "%s", r->logon->offer->offer_id);
        s_free(r);
    }
    size_t base = f->nevents;
    call_t calls[3] = {{0}};
    for (int i = 0; i < 3; i++) {
        Rb__Edgebroker__EdgeToBroker env;
        Rb__Edgebroker__TransferRequest tr;
        char edge[16];
        snprintf(edge, sizeof(edge), "edge-%d", i + 2);
        s_transfer_env(&env, &tr, offers[i], "dan", edge);
        assert_int_equal(rb_rpc_call(i == 1 ? e2 : f->edge, &env.base, 5000, 0, s_on_reply,
                                     &calls[i]),
                         0);
    }
    for (int i = 0; i < 3; i++) {
        assert_true(rbt_wait(f->loop, s_call_done, &calls[i], 6000));
        assert_non_null(calls[i].reply);
        assert_int_equal(calls[i].reply->logon->status, RB__EDGEBROKER__LOGON_STATUS__LOGON_OK);
        assert_string_equal(calls[i].reply->logon->ip, ip);
    }
    /* Three DOWNs (events of b2 are not on our SUB: read Redis for them)
     * and one live session, the one whose UP came last. */
    assert_int_equal(rbt_cmd_int(&f->rs, "SCARD rb:sessions:live"), 1);
    redisReply *rep = rbt_cmd(&f->rs, "GET rb:user:dan");
    char last[64];
    snprintf(last, sizeof(last), "%s", rep->str);
    freeReplyObject(rep);
    int winners = 0;
    for (int i = 0; i < 3; i++)
        winners += strcmp(calls[i].reply->logon->session_id, last) == 0;
    assert_int_equal(winners, 1);
    /* On our SUB: the DOWNs of the two transfers broker 1 did; the first
     * DOWN (of dan's original session) says transferred, later ones
     * replaced. */
    rbt_wait(f->loop, s_never, NULL, 200);
    int downs = 0;
    for (size_t i = base; i < f->nevents; i++) {
        if (f->events[i].kind != RB__EVENTS__EVENT_KIND__SESSION_DOWN) continue;
        downs++;
        assert_string_equal(f->events[i].reason,
                            strcmp(f->events[i].sid, sid0) == 0 ? "transferred" : "replaced");
    }
    assert_true(downs >= 1);
    lease_q_t q = {f, ip, last};
    assert_true(rbt_wait(f->loop, s_leased_to, &q, 5000));
    assert_int_equal(rbt_cmd_int(&f->rs, "SCARD rb:ip:leased"), 1);
    for (int i = 0; i < 3; i++)
        s_free(calls[i].reply);
    s_logoff_all(f, "dan");
    assert_int_equal(rbt_cmd_int(&f->rs, "SCARD rb:ip:leased"), 0);
    rb_rpc_client_destroy(&e2);
    broker_destroy(&b2);
}

static void test_resume_refresh(void **state)
{
    fx_t *f = *state;
    if (!f) skip();
    Rb__Edgebroker__BrokerToEdge *r = s_logon(f, "erin");
    char sid[64], ip[16], tok[80];
    snprintf(sid, sizeof(sid), "%s", r->logon->session_id);
    snprintf(ip, sizeof(ip), "%s", r->logon->ip);
    snprintf(tok, sizeof(tok), "%s", r->logon->resume_token);
    s_free(r);
    size_t base = f->nevents;
    Rb__Edgebroker__EdgeToBroker env = RB__EDGEBROKER__EDGE_TO_BROKER__INIT;
    Rb__Edgebroker__ResumeRequest rr = RB__EDGEBROKER__RESUME_REQUEST__INIT;
    rr.session_id = sid;
    rr.resume_token = tok;
    rr.edge_id = "edge-7";
    rr.source = "127.0.0.7:1234";
    env.body_case = RB__EDGEBROKER__EDGE_TO_BROKER__BODY_RESUME;
    env.resume = &rr;
    r = s_call(f, &env);
    assert_int_equal(r->logon->status, RB__EDGEBROKER__LOGON_STATUS__LOGON_OK);
    assert_string_equal(r->logon->session_id, sid);
    assert_string_equal(r->logon->ip, ip);
    assert_string_equal(r->logon->fqdn, "erin.vpn.test");
    assert_string_equal(r->logon->resume_token, tok);
    uint64_t up_seq = r->logon->up_seq;
    s_free(r);
    const ev_t *up = s_find_event(f, base, sid, RB__EVENTS__EVENT_KIND__SESSION_UP);
    assert_non_null(up);
    assert_int_equal(up_seq, up->seq);
    assert_string_equal(up->edge, "edge-7");
    assert_string_equal(up->source, "127.0.0.7:1234");
    /* A wrong token, and a token of the wrong size. */
    char bad[80];
    snprintf(bad, sizeof(bad), "%s", tok);
    bad[0] = bad[0] == 'a' ? 'b' : 'a';
    rr.resume_token = bad;
    r = s_call(f, &env);
    assert_int_equal(r->logon->status, RB__EDGEBROKER__LOGON_STATUS__LOGON_RESUME_REFUSED);
    s_free(r);
    static char huge[200];
    memset(huge, 'a', sizeof(huge) - 1);
    rr.resume_token = huge;
    r = s_call(f, &env);
    assert_int_equal(r->logon->status, RB__EDGEBROKER__LOGON_STATUS__LOGON_RESUME_REFUSED);
    s_free(r);

    /* Refresh: edge-7 carries erin; the rest are gone. */
    Rb__Edgebroker__RefreshRequest fr = RB__EDGEBROKER__REFRESH_REQUEST__INIT;
    char *ids[] = {sid, "ffffffffffffffffffffffffffffffff"};
    fr.edge_id = "edge-7";
    fr.session_ids = ids;
    fr.n_session_ids = 2;
    Rb__Edgebroker__EdgeToBroker fenv = RB__EDGEBROKER__EDGE_TO_BROKER__INIT;
    fenv.body_case = RB__EDGEBROKER__EDGE_TO_BROKER__BODY_REFRESH;
    fenv.refresh = &fr;
    r = s_call(f, &fenv);
    assert_int_equal(r->body_case, RB__EDGEBROKER__BROKER_TO_EDGE__BODY_REFRESH);
    assert_int_equal(r->refresh->n_gone, 1);
    assert_string_equal(r->refresh->gone[0], ids[1]);
    s_free(r);
    fr.edge_id = "edge-1"; /* not the edge that has it now */
    r = s_call(f, &fenv);
    assert_int_equal(r->refresh->n_gone, 2);
    s_free(r);
    s_logoff_all(f, "erin");
    rr.resume_token = tok;
    r = s_call(f, &env);
    assert_int_equal(r->logon->status, RB__EDGEBROKER__LOGON_STATUS__LOGON_RESUME_REFUSED);
    s_free(r);
}

/* ---- the admin API over real HTTP, from a client thread ---- */

typedef struct {
    int port;
    const char *method, *path, *token;
    int code;
    char body[8192];
    bool done;
} http_t;

static void *s_http_thread(void *arg)
{
    http_t *h = arg;
    char req[512], buf[9000];
    size_t got = 0;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)h->port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
        int n = snprintf(req, sizeof(req),
                         "%s %s HTTP/1.0\r\nHost: localhost\r\n%s%s%sContent-Length: 0\r\n\r\n",
                         h->method, h->path, h->token ? "Authorization: Bearer " : "",
                         h->token ? h->token : "", h->token ? "\r\n" : "");
        if (write(fd, req, (size_t)n) == n) {
            ssize_t k;
            while (got < sizeof(buf) - 1 && (k = read(fd, buf + got, sizeof(buf) - 1 - got)) > 0)
                got += (size_t)k;
        }
    }
    buf[got] = '\0';
    if (fd >= 0) close(fd);
    sscanf(buf, "HTTP/1.%*d %d", &h->code);
    const char *b = strstr(buf, "\r\n\r\n");
    snprintf(h->body, sizeof(h->body), "%s", b ? b + 4 : "");
    __atomic_store_n(&h->done, true, __ATOMIC_RELEASE);
    return NULL;
}

static bool s_http_done(void *arg)
{
    return __atomic_load_n(&((http_t *)arg)->done, __ATOMIC_ACQUIRE);
}

static http_t *s_http(fx_t *f, int port, const char *method, const char *path, const char *token)
{
    static http_t h;
    pthread_t t;
    memset(&h, 0, sizeof(h));
    h.port = port;
    h.method = method;
    h.path = path;
    h.token = token;
    assert_int_equal(pthread_create(&t, NULL, s_http_thread, &h), 0);
    assert_true(rbt_wait(f->loop, s_http_done, &h, 5000));
    pthread_join(t, NULL);
    return &h;
}

static void test_admin_http(void **state)
{
    fx_t *f = *state;
    if (!f) skip();
    rb_status_t *st = rb_status_new(f->loop, "127.0.0.1:0", "broker");
    assert_non_null(st);
    rb_status_set_admin_token(st, "s3cret");
    assert_int_equal(broker_admin_attach(f->b, st), 0);
    int port = rb_status_port(st);
    Rb__Edgebroker__BrokerToEdge *r = s_logon(f, "frank");
    char sid[64], ip[16], path[128];
    snprintf(sid, sizeof(sid), "%s", r->logon->session_id);
    snprintf(ip, sizeof(ip), "%s", r->logon->ip);
    s_free(r);

    http_t *h = s_http(f, port, "GET", "/admin/sessions", NULL);
    assert_int_equal(h->code, 401);
    h = s_http(f, port, "GET", "/admin/sessions", "wrong");
    assert_int_equal(h->code, 401);
    h = s_http(f, port, "GET", "/admin/sessions", "s3cret");
    assert_int_equal(h->code, 200);
    assert_int_equal(h->body[0], '[');
    assert_non_null(strstr(h->body, "\"user\":\"frank\""));
    assert_non_null(strstr(h->body, sid));
    assert_non_null(strstr(h->body, "\"fqdn\":\"frank.vpn.test\""));
    assert_non_null(strstr(h->body, "\"last_seen_ms\":1"));
    h = s_http(f, port, "GET", "/admin/sessions/frank", "s3cret");
    assert_int_equal(h->code, 200);
    assert_int_equal(h->body[0], '{');
    assert_non_null(strstr(h->body, "\"device\":\"test-device\""));
    assert_non_null(strstr(h->body, "\"edge\":\"edge-test\""));
    assert_non_null(strstr(h->body, "\"source\":\"127.0.0.1:40000\""));
    assert_non_null(strstr(h->body, "\"since_ms\":1"));
    h = s_http(f, port, "GET", "/admin/sessions/nobody", "s3cret");
    assert_int_equal(h->code, 404);
    assert_non_null(strstr(h->body, "\"error\""));
    snprintf(path, sizeof(path), "/admin/whois/%s", ip);
    h = s_http(f, port, "GET", path, "s3cret");
    assert_int_equal(h->code, 200);
    assert_non_null(strstr(h->body, "\"user\":\"frank\""));
    h = s_http(f, port, "GET", "/admin/whois/10.255.255.1", "s3cret");
    assert_int_equal(h->code, 404);
    h = s_http(f, port, "GET", "/admin/whois/not-an-ip", "s3cret");
    assert_int_equal(h->code, 400);
    h = s_http(f, port, "GET", "/admin/nothing", "s3cret");
    assert_int_equal(h->code, 404);
    h = s_http(f, port, "GET", "/admin/kick/frank", "s3cret");
    assert_int_equal(h->code, 405);
    h = s_http(f, port, "POST", "/admin/kick/frank", NULL);
    assert_int_equal(h->code, 401);
    h = s_http(f, port, "GET", "/admin/pools", "s3cret");
    assert_int_equal(h->code, 200);
    assert_non_null(strstr(h->body, "\"used\":1"));
    assert_non_null(strstr(h->body, "10.77.0.0/29"));

    size_t base = f->nevents;
    rb_metric_t *m = rb_counter("reachback_kicks_total", NULL, "");
    double before = rb_metric_value(m);
    h = s_http(f, port, "POST", "/admin/kick/frank", "s3cret");
    assert_int_equal(h->code, 200);
    assert_non_null(strstr(h->body, "\"kicked\":true"));
    assert_non_null(strstr(h->body, sid));
    const ev_t *down = s_find_event(f, base, sid, RB__EVENTS__EVENT_KIND__SESSION_DOWN);
    assert_non_null(down);
    assert_string_equal(down->reason, "kicked");
    assert_int_equal(rb_metric_value(m) - before, 1);
    rbt_wait(f->loop, s_never, NULL, 200);
    assert_int_equal(rbt_cmd_int(&f->rs, "SISMEMBER rb:ip:free %s", ip), 1);
    h = s_http(f, port, "POST", "/admin/kick/frank", "s3cret");
    assert_int_equal(h->code, 404);
    rb_status_destroy(&st);
}

/* ---- the lease reconcile ---- */

static void s_stop_ipalloc(fx_t *f)
{
    kill(f->ipalloc_pid, SIGTERM);
    waitpid(f->ipalloc_pid, NULL, 0);
    f->ipalloc_pid = 0;
}

static void s_start_ipalloc(fx_t *f)
{
    assert_int_equal(s_spawn_ipalloc(f, "10.77.0.0/29"), 0);
    assert_true(rbt_wait(f->loop, s_ready, f->b, 8000));
}

/* The reconcile leaves leases changed within its 10 s grace period alone;
 * rather than wait, the test makes the lease look a minute older. */
static void s_age_lease(fx_t *f, const char *ip)
{
    freeReplyObject(rbt_cmd(&f->rs, "HSET rb:ip:lease:%s since %llu", ip,
                            (unsigned long long)(rb_wall_ms() - 60000)));
}

static bool s_ip_free(void *arg)
{
    lease_q_t *q = arg;
    return rbt_cmd_int(&q->f->rs, "SISMEMBER rb:ip:free %s", q->ip) == 1 &&
           rbt_cmd_int(&q->f->rs, "SISMEMBER rb:ip:leased %s", q->ip) == 0;
}

/* A transfer while ipalloc is down, then the broker dies (as SIGKILL would:
 * its take-over retries die with it): ipalloc still leases the address to
 * the replaced session. The next broker's reconcile moves it to the live
 * successor within reconcile_s (1 s here). */
static void test_reconcile_lost_takeover(void **state)
{
    fx_t *f = *state;
    if (!f) skip();
    Rb__Edgebroker__BrokerToEdge *r = s_logon(f, "gina");
    assert_int_equal(r->logon->status, RB__EDGEBROKER__LOGON_STATUS__LOGON_OK);
    char sid0[64], sid1[64], ip[16], offer[64];
    snprintf(sid0, sizeof(sid0), "%s", r->logon->session_id);
    snprintf(ip, sizeof(ip), "%s", r->logon->ip);
    s_free(r);
    r = s_logon(f, "gina");
    assert_int_equal(r->logon->status, RB__EDGEBROKER__LOGON_STATUS__LOGON_TRANSFER_OFFER);
    snprintf(offer, sizeof(offer), "%s", r->logon->offer->offer_id);
    s_free(r);

    s_stop_ipalloc(f);
    Rb__Edgebroker__EdgeToBroker env;
    Rb__Edgebroker__TransferRequest tr;
    s_transfer_env(&env, &tr, offer, "gina", "edge-2");
    r = s_call(f, &env);
    assert_int_equal(r->logon->status, RB__EDGEBROKER__LOGON_STATUS__LOGON_OK);
    assert_string_equal(r->logon->ip, ip);
    snprintf(sid1, sizeof(sid1), "%s", r->logon->session_id);
    s_free(r);
    broker_destroy(&f->b);
    f->b = broker_new(f->loop, &f->cfg);
    assert_non_null(f->b);
    s_start_ipalloc(f);

    /* Nothing moved it: the take-over is gone, and the lease is young. */
    lease_q_t q0 = {f, ip, sid0}, q1 = {f, ip, sid1};
    rbt_wait(f->loop, s_never, NULL, 1500);
    assert_true(s_leased_to(&q0));
    s_age_lease(f, ip);
    uint64_t t0 = rb_now_ms();
    assert_true(rbt_wait(f->loop, s_leased_to, &q1, 3000));
    assert_true(rb_now_ms() - t0 <= 2500);
    char want[64];
    redisReply *rep = rbt_cmd(&f->rs, "GET rb:ip:session:%s", sid1);
    snprintf(want, sizeof(want), "%s", rep && rep->type == REDIS_REPLY_STRING ? rep->str : "");
    freeReplyObject(rep);
    assert_string_equal(want, ip);
    assert_int_equal(rbt_cmd_int(&f->rs, "EXISTS rb:ip:session:%s", sid0), 0);
    /* The successor's logoff releases it the normal way. */
    s_free(s_logoff(f, sid1));
    assert_true(s_ip_free(&q1));
}

/* A logoff while ipalloc is down: its release times out and is dropped.
 * Back up, ipalloc still leases the address to the ended session until the
 * reconcile releases it. */
static void test_reconcile_lost_release(void **state)
{
    fx_t *f = *state;
    if (!f) skip();
    Rb__Edgebroker__BrokerToEdge *r = s_logon(f, "hank");
    assert_int_equal(r->logon->status, RB__EDGEBROKER__LOGON_STATUS__LOGON_OK);
    char sid[64], ip[16];
    snprintf(sid, sizeof(sid), "%s", r->logon->session_id);
    snprintf(ip, sizeof(ip), "%s", r->logon->ip);
    s_free(r);
    s_stop_ipalloc(f);
    r = s_logoff(f, sid);
    assert_true(r->logoff->found);
    s_free(r);
    s_start_ipalloc(f);
    lease_q_t q = {f, ip, sid};
    rbt_wait(f->loop, s_never, NULL, 1500);
    assert_true(s_leased_to(&q));
    s_age_lease(f, ip);
    uint64_t t0 = rb_now_ms();
    assert_true(rbt_wait(f->loop, s_ip_free, &q, 3000));
    assert_true(rb_now_ms() - t0 <= 2500);
    assert_int_equal(rbt_cmd_int(&f->rs, "EXISTS rb:ip:lease:%s", ip), 0);
    assert_int_equal(rbt_cmd_int(&f->rs, "EXISTS rb:ip:session:%s", sid), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_logon_logoff),
        cmocka_unit_test(test_garbage_then_logon),
        cmocka_unit_test(test_ping),
        cmocka_unit_test(test_edge_gone_before_reply),
        cmocka_unit_test(test_exhaustion_and_snapshot),
        cmocka_unit_test(test_expiry), /* right after: expires the full pool */
        cmocka_unit_test(test_transfer_flow),
        cmocka_unit_test(test_concurrent_accepts),
        cmocka_unit_test(test_resume_refresh),
        cmocka_unit_test(test_admin_http),
        cmocka_unit_test(test_reconcile_lost_takeover),
        cmocka_unit_test(test_reconcile_lost_release),
        cmocka_unit_test(test_stale_offer_leaves_a_newer_session),
        cmocka_unit_test(test_late_logoff_keeps_the_lease),
        cmocka_unit_test(test_slow_logon_is_not_committed),
        cmocka_unit_test(test_ipalloc_down_unwinds), /* last: stops ipalloc */
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
