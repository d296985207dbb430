/* rb_rpc: request/reply through the loop over real ZeroMQ sockets on
 * tcp://127.0.0.1:* (and ipc://): round trips, many concurrent calls,
 * timeouts, retries with the same id, late replies, garbage to the server,
 * and the ZMQ_FD edge-trigger hazard. Bodies are Heartbeat messages (any
 * protobuf would do): the server answers seq + 1. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#include "rb_log.h"
#include "rb_loop.h"
#include "rb_metrics.h"
#include "rb_pb.h"
#include "rb_rpc.h"
#include "rb_zmq.h"
#include "session_events.pb-c.h"

typedef Rb__Events__Heartbeat hb_t;

static void s_stop(rb_loop_t *l, void *arg) { rb_loop_stop(l); }

typedef struct {
    bool (*done)(void *);
    void *arg;
} watch_t;

static void s_watch(rb_loop_t *l, void *arg)
{
    watch_t *w = arg;
    if (w->done(w->arg)) rb_loop_stop(l);
}

/* Runs the loop until done(arg) or ms pass. */
static void s_run(rb_loop_t *l, bool (*done)(void *), void *arg, unsigned ms)
{
    watch_t w = {done, arg};
    rb_timer_t *t = rb_loop_add_timer(l, 2, true, s_watch, &w);
    rb_timer_t *d = rb_loop_add_timer(l, ms, true, s_stop, NULL);
    rb_loop_run(l);
    rb_loop_cancel_timer(l, t);
    rb_loop_cancel_timer(l, d);
}

static bool s_never(void *arg) { return false; }

static void s_endpoint(void *sock, char *out, size_t len)
{
    assert_int_equal(zmq_getsockopt(sock, ZMQ_LAST_ENDPOINT, out, &len), 0);
}

/* ---- an echo server ---- */

typedef struct {
    int requests;
    int drop_first;   /* drop this many requests unanswered */
    bool hold_odd;    /* keep requests with an odd seq, unanswered */
    rb_rpc_req_t *held[64];
    uint64_t held_seq[64];
    int nheld;
} server_t;

static void s_echo(void *arg, rb_rpc_req_t *req, const uint8_t *body, size_t len)
{
    server_t *s = arg;
    s->requests++;
    if (s->drop_first > 0) {
        s->drop_first--;
        rb_rpc_req_free(req);
        return;
    }
    hb_t *in = (hb_t *)rb_pb_unpack(&rb__events__heartbeat__descriptor, body, len, 1024,
                                    rb_rpc_req_peer(req));
    if (!in) {
        rb_rpc_req_free(req);
        return;
    }
    if (s->hold_odd && in->seq % 2) {
        assert_true(s->nheld < 64);
        s->held_seq[s->nheld] = in->seq;
        s->held[s->nheld++] = req;
        protobuf_c_message_free_unpacked(&in->base, NULL);
        return;
    }
    hb_t out = RB__EVENTS__HEARTBEAT__INIT;
    out.seq = in->seq + 1;
    out.broker_id = "echo";
    assert_int_equal(rb_rpc_reply(req, &out.base), 0);
    protobuf_c_message_free_unpacked(&in->base, NULL);
}

typedef struct {
    rb_loop_t *loop;
    rb_rpc_server_t *srv;
    rb_rpc_client_t *cli;
    server_t state;
    char ep[256];
} pair_t;

static void s_pair(pair_t *p, const char *bind_ep)
{
    memset(p, 0, sizeof *p);
    p->loop = rb_loop_new();
    assert_non_null(p->loop);
    void *router = rb_zsock_bind(ZMQ_ROUTER, bind_ep, NULL);
    assert_non_null(router);
    s_endpoint(router, p->ep, sizeof p->ep);
    p->srv = rb_rpc_server_new(p->loop, router, s_echo, &p->state);
    assert_non_null(p->srv);
    void *dealer = rb_zsock_connect(ZMQ_DEALER, p->ep, NULL, NULL);
    assert_non_null(dealer);
    p->cli = rb_rpc_client_new(p->loop, dealer, "echo");
    assert_non_null(p->cli);
}

static void s_unpair(pair_t *p)
{
    rb_rpc_client_destroy(&p->cli);
    assert_null(p->cli);
    rb_rpc_server_destroy(&p->srv);
    assert_null(p->srv);
    rb_loop_destroy(&p->loop);
}

/* ---- client side ---- */

typedef struct {
    int calls;          /* times fn was called */
    int nulls;          /* of which timeouts */
    uint64_t seq;       /* last reply's seq */
} result_t;

static void s_on_reply(void *arg, const uint8_t *body, size_t len)
{
    result_t *r = arg;
    r->calls++;
    if (!body) {
        r->nulls++;
        return;
    }
    hb_t *m = (hb_t *)rb_pb_unpack(&rb__events__heartbeat__descriptor, body, len, 1024, "t");
    assert_non_null(m);
    r->seq = m->seq;
    protobuf_c_message_free_unpacked(&m->base, NULL);
}

static bool s_called(void *arg) { return ((result_t *)arg)->calls > 0; }

static int s_call(rb_rpc_client_t *cli, uint64_t seq, unsigned timeout, unsigned retries,
                  result_t *r)
{
    hb_t m = RB__EVENTS__HEARTBEAT__INIT;
    m.seq = seq;
    m.broker_id = "test";
    return rb_rpc_call(cli, &m.base, timeout, retries, s_on_reply, r);
}

/* Runs first: the counters are in /metrics as soon as a client and a
 * server exist, at 0, not only after their first count. */
static void test_counters_from_the_start(void **state)
{
    pair_t p;
    s_pair(&p, "tcp://127.0.0.1:*");
    rb_buf_t out = RB_BUF_INIT;
    rb_metrics_render(&out);
    s_unpair(&p); /* before any assertion: open sockets would hang the exit */
    assert_non_null(out.data);
    assert_non_null(strstr(out.data, "\nreachback_rpc_late_replies_total 0\n"));
    assert_non_null(strstr(out.data, "\nreachback_rpc_bad_messages_total 0\n"));
    assert_non_null(strstr(out.data, "\nreachback_rpc_unsent_replies_total 0\n"));
    assert_non_null(strstr(out.data, "\nreachback_rpc_shed_requests_total 0\n"));
    rb_buf_free(&out);
}

static void test_round_trip(void **state)
{
    pair_t p;
    s_pair(&p, "tcp://127.0.0.1:*");
    result_t r = {0};
    assert_int_equal(s_call(p.cli, 41, 2000, 0, &r), 0);
    assert_int_equal(rb_rpc_pending(p.cli), 1);
    s_run(p.loop, s_called, &r, 3000);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.nulls, 0);
    assert_int_equal(r.seq, 42);
    assert_int_equal(rb_rpc_pending(p.cli), 0);
    s_unpair(&p);
}

typedef struct {
    result_t r[1000];
    int n;
} many_t;

static bool s_all_called(void *arg)
{
    many_t *m = arg;
    for (int i = 0; i < m->n; i++)
        if (!m->r[i].calls) return false;
    return true;
}

static void test_thousand_concurrent_calls(void **state)
{
    char dir[] = "/tmp/rb_test_rpc_XXXXXX", ep[300];
    assert_non_null(mkdtemp(dir));
    snprintf(ep, sizeof ep, "ipc://%s/rpc.sock", dir);
    pair_t p;
    s_pair(&p, ep);
    static many_t m;
    memset(&m, 0, sizeof m);
    m.n = 1000;
    /* Calls made before the ipc link is up wait as unsent and go out on
     * the client's next tick. */
    for (int i = 0; i < m.n; i++) assert_int_equal(s_call(p.cli, (uint64_t)i * 10, 5000, 0, &m.r[i]), 0);
    assert_int_equal(rb_rpc_pending(p.cli), 1000);
    s_run(p.loop, s_all_called, &m, 5000);
    for (int i = 0; i < m.n; i++) {
        assert_int_equal(m.r[i].calls, 1);
        assert_int_equal(m.r[i].nulls, 0);
        assert_int_equal(m.r[i].seq, (uint64_t)i * 10 + 1);
    }
    assert_int_equal(rb_rpc_pending(p.cli), 0);
    assert_int_equal(p.state.requests, 1000);
    s_unpair(&p);
    rmdir(dir);
}

static void test_timeout_without_server(void **state)
{
    rb_loop_t *l = rb_loop_new();
    /* Find a free port, then close it: nobody listens there. */
    void *tmp = rb_zsock_bind(ZMQ_ROUTER, "tcp://127.0.0.1:*", NULL);
    char ep[256];
    s_endpoint(tmp, ep, sizeof ep);
    rb_zsock_close(&tmp);
    rb_rpc_client_t *cli = rb_rpc_client_new(l, rb_zsock_connect(ZMQ_DEALER, ep, NULL, NULL),
                                             "nobody");
    assert_non_null(cli);
    result_t r = {0};
    uint64_t start = rb_now_ms();
    assert_int_equal(s_call(cli, 1, 100, 1, &r), 0);
    s_run(l, s_called, &r, 2000);
    uint64_t took = rb_now_ms() - start;
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.nulls, 1);
    assert_true(took >= 200);   /* 100 ms x (1 retry + 1) */
    assert_true(took < 1000);
    /* Never a second call. */
    s_run(l, s_never, NULL, 300);
    assert_int_equal(r.calls, 1);
    assert_int_equal(rb_rpc_pending(cli), 0);

    /* Cancel forgets calls without calling back. */
    result_t c = {0};
    assert_int_equal(s_call(cli, 2, 50, 0, &c), 0);
    assert_int_equal(s_call(cli, 3, 50, 0, &c), 0);
    rb_rpc_cancel(cli, &c);
    assert_int_equal(rb_rpc_pending(cli), 0);
    s_run(l, s_never, NULL, 200);
    assert_int_equal(c.calls, 0);

    /* Destroy with a call pending: dropped unanswered. */
    assert_int_equal(s_call(cli, 4, 50, 0, &c), 0);
    rb_rpc_client_destroy(&cli);
    rb_rpc_client_destroy(&cli);
    s_run(l, s_never, NULL, 150);
    assert_int_equal(c.calls, 0);
    rb_loop_destroy(&l);
}

static void test_retry_answered(void **state)
{
    pair_t p;
    s_pair(&p, "tcp://127.0.0.1:*");
    p.state.drop_first = 2;
    result_t r = {0};
    assert_int_equal(s_call(p.cli, 7, 150, 3, &r), 0);
    s_run(p.loop, s_called, &r, 3000);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.nulls, 0);
    assert_int_equal(r.seq, 8);
    assert_int_equal(p.state.requests, 3);
    s_unpair(&p);
}

/* ---- a raw ROUTER standing in for a server ---- */

typedef struct {
    int n;
    zmq_msg_t rid[4], id[4];
} raw_t;

static void s_raw_recv(rb_loop_t *l, void *sock, void *arg)
{
    raw_t *r = arg;
    zmq_msg_t rid, id, body;
    zmq_msg_init(&rid);
    while (zmq_msg_recv(&rid, sock, ZMQ_DONTWAIT) >= 0) {
        zmq_msg_init(&id);
        zmq_msg_init(&body);
        assert_true(zmq_msg_recv(&id, sock, 0) >= 0);
        assert_true(zmq_msg_recv(&body, sock, 0) >= 0);
        assert_false(zmq_msg_more(&body));
        if (r->n < 4) {
            zmq_msg_init(&r->rid[r->n]);
            zmq_msg_init(&r->id[r->n]);
            zmq_msg_move(&r->rid[r->n], &rid);
            zmq_msg_move(&r->id[r->n], &id);
        }
        r->n++;
        zmq_msg_close(&id);
        zmq_msg_close(&body);
        zmq_msg_close(&rid);
        zmq_msg_init(&rid);
    }
    zmq_msg_close(&rid);
}

static bool s_raw_n2(void *arg) { return ((raw_t *)arg)->n >= 2; }
static bool s_raw_n3(void *arg) { return ((raw_t *)arg)->n >= 3; }

static void s_raw_reply(void *router, raw_t *r, int i, uint64_t seq)
{
    hb_t m = RB__EVENTS__HEARTBEAT__INIT;
    m.seq = seq;
    uint8_t buf[64];
    size_t len = protobuf_c_message_pack(&m.base, buf);
    assert_true(zmq_send(router, zmq_msg_data(&r->rid[i]), zmq_msg_size(&r->rid[i]), ZMQ_SNDMORE) >= 0);
    assert_true(zmq_send(router, zmq_msg_data(&r->id[i]), zmq_msg_size(&r->id[i]), ZMQ_SNDMORE) >= 0);
    assert_true(zmq_send(router, buf, len, 0) >= 0);
}

static void test_retry_same_id_and_late_reply_dropped(void **state)
{
    rb_loop_t *l = rb_loop_new();
    void *router = rb_zsock_bind(ZMQ_ROUTER, "tcp://127.0.0.1:*", NULL);
    char ep[256];
    s_endpoint(router, ep, sizeof ep);
    raw_t raw = {0};
    assert_int_equal(rb_loop_add_zsock(l, router, s_raw_recv, &raw), 0);
    rb_rpc_client_t *cli = rb_rpc_client_new(l, rb_zsock_connect(ZMQ_DEALER, ep, NULL, NULL),
                                             "raw");
    result_t r = {0};
    assert_int_equal(s_call(cli, 1, 100, 1, &r), 0);
    s_run(l, s_raw_n2, &raw, 2000);
    assert_int_equal(raw.n, 2);
    /* The resend carries the same request id. */
    assert_int_equal(zmq_msg_size(&raw.id[0]), 8);
    assert_memory_equal(zmq_msg_data(&raw.id[0]), zmq_msg_data(&raw.id[1]), 8);
    s_run(l, s_called, &r, 2000);
    assert_int_equal(r.nulls, 1);

    /* Both answers arrive after the call ended: dropped and counted. */
    rb_metric_t *late = rb_counter("reachback_rpc_late_replies_total", NULL, "");
    double before = rb_metric_value(late);
    s_raw_reply(router, &raw, 0, 99);
    s_raw_reply(router, &raw, 1, 99);
    s_run(l, s_never, NULL, 200);
    assert_int_equal(r.calls, 1);
    assert_true(rb_metric_value(late) - before == 2.0);

    /* A fresh call is still answered normally (the id is new). */
    result_t r2 = {0};
    assert_int_equal(s_call(cli, 5, 2000, 0, &r2), 0);
    s_run(l, s_raw_n3, &raw, 2000);
    assert_int_equal(raw.n, 3);
    assert_memory_not_equal(zmq_msg_data(&raw.id[2]), zmq_msg_data(&raw.id[0]), 8);
    s_raw_reply(router, &raw, 2, 6);
    s_run(l, s_called, &r2, 2000);
    assert_int_equal(r2.seq, 6);

    for (int i = 0; i < 3; i++) {
        zmq_msg_close(&raw.rid[i]);
        zmq_msg_close(&raw.id[i]);
    }
    rb_rpc_client_destroy(&cli);
    rb_loop_del_zsock(l, router);
    rb_zsock_close(&router);
    rb_loop_destroy(&l);
}

static void test_garbage_to_server_is_dropped(void **state)
{
    pair_t p;
    s_pair(&p, "tcp://127.0.0.1:*");
    rb_metric_t *bad = rb_counter("reachback_rpc_bad_messages_total", NULL, "");
    double before = rb_metric_value(bad);
    void *raw = zmq_socket(rb_zmq_ctx(), ZMQ_DEALER);
    int zero = 0;
    zmq_setsockopt(raw, ZMQ_LINGER, &zero, sizeof zero);
    assert_int_equal(zmq_connect(raw, p.ep), 0);
    /* One frame; a 3-byte id; four frames; an empty body that does not
     * parse as the server expects is the handler's business, not tested. */
    assert_true(zmq_send(raw, "x", 1, 0) >= 0);
    assert_true(zmq_send(raw, "abc", 3, ZMQ_SNDMORE) >= 0);
    assert_true(zmq_send(raw, "body", 4, 0) >= 0);
    assert_true(zmq_send(raw, "12345678", 8, ZMQ_SNDMORE) >= 0);
    assert_true(zmq_send(raw, "a", 1, ZMQ_SNDMORE) >= 0);
    assert_true(zmq_send(raw, "b", 1, ZMQ_SNDMORE) >= 0);
    assert_true(zmq_send(raw, "c", 1, 0) >= 0);
    /* An 8-byte id and a body that is not protobuf reaches the handler,
     * which drops it (rb_pb_unpack logs bad_message). */
    assert_true(zmq_send(raw, "12345678", 8, ZMQ_SNDMORE) >= 0);
    assert_true(zmq_send(raw, "\xff\xff\xff", 3, 0) >= 0);
    s_run(p.loop, s_never, NULL, 200);
    assert_true(rb_metric_value(bad) - before == 3.0);
    assert_int_equal(p.state.requests, 1);

    result_t r = {0};
    assert_int_equal(s_call(p.cli, 100, 2000, 0, &r), 0);
    s_run(p.loop, s_called, &r, 3000);
    assert_int_equal(r.seq, 101);

    /* Garbage replies to the client are dropped too. */
    void *router = zmq_socket(rb_zmq_ctx(), ZMQ_ROUTER);
    zmq_setsockopt(router, ZMQ_LINGER, &zero, sizeof zero);
    assert_int_equal(zmq_bind(router, "tcp://127.0.0.1:*"), 0);
    char ep[256];
    s_endpoint(router, ep, sizeof ep);
    rb_rpc_client_t *cli = rb_rpc_client_new(p.loop, rb_zsock_connect(ZMQ_DEALER, ep, NULL, NULL),
                                             "garbage");
    result_t g = {0};
    assert_int_equal(s_call(cli, 1, 300, 0, &g), 0);
    char rid[256];
    int n = -1;
    for (int i = 0; i < 200 && n < 0; i++) {
        s_run(p.loop, s_never, NULL, 5);
        n = zmq_recv(router, rid, sizeof rid, ZMQ_DONTWAIT);
    }
    assert_true(n > 0);
    char junk[64];
    while (zmq_recv(router, junk, sizeof junk, ZMQ_DONTWAIT) >= 0) {}
    before = rb_metric_value(bad);
    zmq_send(router, rid, (size_t)n, ZMQ_SNDMORE);
    zmq_send(router, "only-one-frame", 14, 0);
    zmq_send(router, rid, (size_t)n, ZMQ_SNDMORE);
    zmq_send(router, "short", 5, ZMQ_SNDMORE);
    zmq_send(router, "body", 4, 0);
    s_run(p.loop, s_called, &g, 2000);
    assert_int_equal(g.nulls, 1);   /* garbage never counts as the answer */
    assert_true(rb_metric_value(bad) - before == 2.0);

    rb_rpc_client_destroy(&cli);
    zmq_close(router);
    zmq_close(raw);
    s_unpair(&p);
}

/* ---- one flooding caller ---- */

static void s_answer_held(server_t *s)
{
    for (int i = 0; i < s->nheld; i++) {
        hb_t out = RB__EVENTS__HEARTBEAT__INIT;
        out.seq = s->held_seq[i] + 1;
        out.broker_id = "echo";
        assert_int_equal(rb_rpc_reply(s->held[i], &out.base), 0);
    }
    s->nheld = 0;
}

static bool s_five_called(void *arg)
{
    for (int i = 0; i < 5; i++)
        if (!((result_t *)arg)[i].calls) return false;
    return true;
}

/* A pair whose server holds odd seqs unanswered, with these limits per
 * caller; returns the shed counter's value before. */
static double s_shed_count(void)
{
    return rb_metric_value(rb_counter("reachback_rpc_shed_requests_total", NULL, ""));
}

static double s_limited_pair(pair_t *p, size_t max_reqs, size_t max_bytes)
{
    s_pair(p, "tcp://127.0.0.1:*");
    rb_rpc_server_limit(p->srv, max_reqs, max_bytes);
    p->state.hold_odd = true;
    return s_shed_count();
}

/* A caller past its share is dropped, counted, and served again once its
 * requests are answered; another caller is served all along. */
static void test_flooding_caller_is_shed(void **state)
{
    pair_t p;
    double before = s_limited_pair(&p, 10, 1u << 20);

    static result_t flood[30];
    memset(flood, 0, sizeof flood);
    for (int i = 0; i < 30; i++)
        assert_int_equal(s_call(p.cli, (uint64_t)(2 * i + 1), 800, 0, &flood[i]), 0);
    s_run(p.loop, s_never, NULL, 300);
    assert_int_equal(p.state.nheld, 10);
    assert_true(s_shed_count() - before == 20.0);

    /* Another caller (its own routing id) is answered at once. */
    rb_rpc_client_t *other =
        rb_rpc_client_new(p.loop, rb_zsock_connect(ZMQ_DEALER, p.ep, NULL, NULL), "other");
    assert_non_null(other);
    result_t r = {0};
    assert_int_equal(s_call(other, 1000, 2000, 0, &r), 0);
    s_run(p.loop, s_called, &r, 3000);
    assert_int_equal(r.nulls, 0);
    assert_int_equal(r.seq, 1001);

    /* The 20 dropped calls time out; the 10 held are answered late. */
    s_run(p.loop, s_never, NULL, 700);
    s_answer_held(&p.state);
    s_run(p.loop, s_never, NULL, 200);
    int nulls = 0;
    for (int i = 0; i < 30; i++)
        nulls += flood[i].nulls;
    assert_int_equal(nulls, 30); /* held past 800 ms: late replies, dropped */

    /* Answered, the flooding caller has its share back. */
    static result_t again[5];
    memset(again, 0, sizeof again);
    for (int i = 0; i < 5; i++)
        assert_int_equal(s_call(p.cli, (uint64_t)(2 * i), 2000, 0, &again[i]), 0);
    s_run(p.loop, s_five_called, again, 3000);
    for (int i = 0; i < 5; i++)
        assert_int_equal(again[i].seq, (uint64_t)(2 * i + 1));
    assert_true(s_shed_count() - before == 20.0);

    rb_rpc_client_destroy(&other);
    s_unpair(&p);
}

/* The bytes a caller has in flight are bounded too, but one request of any
 * size always gets through. */
static void test_bytes_in_flight_are_bounded(void **state)
{
    pair_t p;
    double before = s_limited_pair(&p, 1000, 5);
    /* Calls made before the link is up go out later, in any order. */
    result_t warm = {0};
    assert_int_equal(s_call(p.cli, 0, 2000, 0, &warm), 0);
    s_run(p.loop, s_called, &warm, 3000);
    assert_int_equal(warm.seq, 1);
    static result_t r[5];
    memset(r, 0, sizeof r);
    /* Each body is 9 bytes (seq 1..9 and broker_id "test"), over the 5
     * allowed: the first is admitted all the same, the others not. */
    for (int i = 0; i < 5; i++)
        assert_int_equal(s_call(p.cli, (uint64_t)(2 * i + 1), 2000, 0, &r[i]), 0);
    s_run(p.loop, s_never, NULL, 300);
    assert_int_equal(p.state.nheld, 1);
    assert_true(s_shed_count() - before == 4.0);
    s_answer_held(&p.state);
    s_run(p.loop, s_called, &r[0], 2000);
    assert_int_equal(r[0].seq, 2);
    s_unpair(&p);
}

/* ---- the edge-trigger hazard ---- */

/* Each reply triggers the next call from inside the reply callback: the
 * client's send consumes the DEALER's ZMQ_FD edge while a reply may already
 * be queued. If the loop trusted epoll alone, the chain would stall until
 * the next timer; the step latencies show it does not. */
typedef struct {
    rb_rpc_client_t *cli;
    int done, target, burst;
    uint64_t last_ms, worst_ms;
} chain_t;

static void s_chain_reply(void *arg, const uint8_t *body, size_t len)
{
    chain_t *c = arg;
    assert_non_null(body);
    c->done++;
    uint64_t now = rb_now_ms();
    if (now - c->last_ms > c->worst_ms) c->worst_ms = now - c->last_ms;
    c->last_ms = now;
    if (c->done % c->burst == 0 && c->done < c->target) {
        for (int i = 0; i < c->burst; i++) {
            hb_t m = RB__EVENTS__HEARTBEAT__INIT;
            m.seq = (uint64_t)c->done;
            assert_int_equal(rb_rpc_call(c->cli, &m.base, 10000, 0, s_chain_reply, c), 0);
        }
    }
}

static bool s_chain_done(void *arg)
{
    chain_t *c = arg;
    return c->done >= c->target;
}

static void test_calls_from_reply_callbacks_never_stall(void **state)
{
    pair_t p;
    s_pair(&p, "tcp://127.0.0.1:*");
    chain_t c = {p.cli, 0, 3000, 3, 0, 0};
    /* Warm the link up so that connection set-up is not measured. */
    result_t r = {0};
    assert_int_equal(s_call(p.cli, 1, 2000, 0, &r), 0);
    s_run(p.loop, s_called, &r, 3000);
    assert_int_equal(r.seq, 2);

    c.last_ms = rb_now_ms();
    for (int i = 0; i < c.burst; i++) {
        hb_t m = RB__EVENTS__HEARTBEAT__INIT;
        assert_int_equal(rb_rpc_call(p.cli, &m.base, 10000, 0, s_chain_reply, &c), 0);
    }
    uint64_t start = rb_now_ms();
    /* The watcher polls only every 2 ms; the deadline is what a stall
     * would hit. */
    s_run(p.loop, s_chain_done, &c, 20000);
    uint64_t took = rb_now_ms() - start;
    assert_int_equal(c.done, c.target);
    /* 1000 round trips on loopback take well under a second; a stall waits
     * for the client's 50 ms tick or the loop's 1 s maximum wait. */
    if (c.worst_ms >= 40) fail_msg("a step took %llu ms", (unsigned long long)c.worst_ms);
    assert_true(took < 5000);
    s_unpair(&p);
}

static int s_setup(void **state)
{
    rb_log_init("test", RB_LOG_ERROR);
    return 0;
}

static int s_teardown(void **state)
{
    rb_zmq_term();
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_counters_from_the_start),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_thousand_concurrent_calls),
        cmocka_unit_test(test_timeout_without_server),
        cmocka_unit_test(test_retry_answered),
        cmocka_unit_test(test_retry_same_id_and_late_reply_dropped),
        cmocka_unit_test(test_garbage_to_server_is_dropped),
        cmocka_unit_test(test_calls_from_reply_callbacks_never_stall),
        cmocka_unit_test(test_flooding_caller_is_shed),
        cmocka_unit_test(test_bytes_in_flight_are_bounded),

    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
