/* rb_link: frames on the edge-forwarder data link, over real ZeroMQ: a
 * ROUTER bound to tcp://127.0.0.1:* (the forwarder) and a DEALER with a
 * routing id (an edge), both driven by an rb_loop. Malformed messages are
 * sent part by part with zmq_send and must be refused with a reason,
 * leaving the link in step for the next message. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "rb_frame.h"
#include "rb_link.h"
#include "rb_log.h"
#include "rb_loop.h"
#include "rb_zmq.h"

#define EDGE "edge-1"

/* ---- what a side received ---- */

typedef struct {
    int rc;
    char why[96];
    uint8_t rid[RB_LINK_RID_MAX];
    size_t rid_len;
    char rid_text[2 * RB_LINK_RID_MAX + 1];
    rb_frame_t f; /* payload points into data */
    uint8_t *data;
    Rb__Fwd__LinkControl *ctl; /* for CONTROL frames */
} got_t;

#define GOT_MAX 64

typedef struct {
    bool router;
    got_t got[GOT_MAX];
    int n;
} side_t;

static void s_on_sock(rb_loop_t *l, void *sock, void *arg)
{
    side_t *s = arg;
    for (;;) {
        rb_link_msg_t m;
        rb_frame_t f;
        const char *why = NULL;
        int rc = rb_link_recv(sock, s->router, &m, &f, &why);
        if (rc == 0) return;
        assert_true(s->n < GOT_MAX);
        got_t *g = &s->got[s->n++];
        memset(g, 0, sizeof *g);
        g->rc = rc;
        memcpy(g->rid, m.rid, m.rid_len);
        g->rid_len = m.rid_len;
        snprintf(g->rid_text, sizeof g->rid_text, "%s", m.rid_text);
        if (rc < 0) {
            assert_non_null(why);
            snprintf(g->why, sizeof g->why, "%s", why);
        } else {
            g->f = f;
            if (f.len) {
                assert_non_null(f.payload);
                g->data = malloc(f.len);
                memcpy(g->data, f.payload, f.len);
            }
            g->f.payload = g->data;
            if (f.type == RB_FRAME_CONTROL) g->ctl = rb_link_control(&g->f);
        }
        rb_link_msg_close(&m);
        assert_int_equal(m.nparts, 0);
    }
}

static void s_side_clear(side_t *s)
{
    for (int i = 0; i < s->n; i++) {
        free(s->got[i].data);
        if (s->got[i].ctl) rb__fwd__link_control__free_unpacked(s->got[i].ctl, NULL);
    }
    memset(s->got, 0, sizeof s->got);
    s->n = 0;
}

/* ---- the loop ---- */

typedef struct {
    side_t *s;
    int want;
} until_t;

static void s_stop(rb_loop_t *l, void *arg)
{
    rb_loop_stop(l);
}

static void s_check(rb_loop_t *l, void *arg)
{
    until_t *u = arg;
    if (u->s->n >= u->want) rb_loop_stop(l);
}

/* Runs the loop until s has received want messages or ms pass. */
static bool s_until(rb_loop_t *l, side_t *s, int want, unsigned ms)
{
    if (s->n >= want) return true;
    until_t u = {s, want};
    rb_timer_t *c = rb_loop_add_timer(l, 1, true, s_check, &u);
    rb_timer_t *d = rb_loop_add_timer(l, ms, true, s_stop, NULL);
    rb_loop_run(l);
    rb_loop_cancel_timer(l, c);
    rb_loop_cancel_timer(l, d);
    return s->n >= want;
}

/* ---- a link ---- */

typedef struct {
    rb_loop_t *l;
    void *router, *dealer;
    side_t fwd, edge; /* what the ROUTER and the DEALER received */
} link_t;

typedef struct {
    link_t *k;
    bool sent;
} hello_t;

static int s_send_hello(void *dealer)
{
    Rb__Fwd__Hello h = RB__FWD__HELLO__INIT;
    h.version = RB_LINK_VERSION;
    h.edge_id = EDGE;
    Rb__Fwd__LinkControl m = RB__FWD__LINK_CONTROL__INIT;
    m.msg_case = RB__FWD__LINK_CONTROL__MSG_HELLO;
    m.hello = &h;
    return rb_link_send_control(dealer, NULL, 0, &m);
}

/* The DEALER refuses to queue until it is connected (ZMQ_IMMEDIATE): try
 * from a timer until it takes the Hello. */
static void s_try_hello(rb_loop_t *l, void *arg)
{
    hello_t *h = arg;
    if (!h->sent && s_send_hello(h->k->dealer) == 0) h->sent = true;
}

static void s_last_endpoint(void *sock, char *out, size_t len)
{
    assert_int_equal(zmq_getsockopt(sock, ZMQ_LAST_ENDPOINT, out, &len), 0);
}

/* The link of the running test, closed by the per-test teardown when an
 * assertion leaves it open (rb_zmq_term would wait for its sockets). */
static link_t *s_cur;

/* A connected link whose forwarder has received the edge's Hello (left in
 * fwd.got[0]). rid NULL: a DEALER without a routing id. */
static link_t *s_link_new(const char *rid)
{
    link_t *k = calloc(1, sizeof *k);
    assert_non_null(k);
    k->l = rb_loop_new();
    assert_non_null(k->l);
    k->router = rb_zsock_bind_with(ZMQ_ROUTER, "tcp://127.0.0.1:*", NULL, rb_link_setup);
    assert_non_null(k->router);
    char ep[256];
    s_last_endpoint(k->router, ep, sizeof ep);
    k->dealer = rb_zsock_connect_as(ZMQ_DEALER, ep, NULL, NULL, rid, rb_link_setup);
    assert_non_null(k->dealer);
    k->fwd.router = true;
    k->edge.router = false;
    s_cur = k;
    assert_int_equal(rb_loop_add_zsock(k->l, k->router, s_on_sock, &k->fwd), 0);
    assert_int_equal(rb_loop_add_zsock(k->l, k->dealer, s_on_sock, &k->edge), 0);
    hello_t h = {k, false};
    rb_timer_t *t = rb_loop_add_timer(k->l, 2, true, s_try_hello, &h);
    bool ok = s_until(k->l, &k->fwd, 1, 5000);
    rb_loop_cancel_timer(k->l, t);
    assert_true(ok);
    return k;
}

static void s_link_free(link_t *k)
{
    if (!k) return;
    s_cur = NULL;
    s_side_clear(&k->fwd);
    s_side_clear(&k->edge);
    rb_loop_del_zsock(k->l, k->router);
    rb_loop_del_zsock(k->l, k->dealer);
    rb_zsock_close(&k->router);
    rb_zsock_close(&k->dealer);
    rb_loop_destroy(&k->l);
    free(k);
}

/* ---- round trips ---- */

static void test_control_roundtrip(void **state)
{
    link_t *k = s_link_new(EDGE);
    got_t *g = &k->fwd.got[0];
    assert_int_equal(g->rc, 1);
    assert_int_equal(g->rid_len, strlen(EDGE));
    assert_memory_equal(g->rid, EDGE, strlen(EDGE));
    assert_string_equal(g->rid_text, EDGE);
    assert_int_equal(g->f.type, RB_FRAME_CONTROL);
    assert_int_equal(g->f.stream_id, 0);
    assert_non_null(g->ctl);
    assert_int_equal(g->ctl->msg_case, RB__FWD__LINK_CONTROL__MSG_HELLO);
    assert_int_equal(g->ctl->hello->version, RB_LINK_VERSION);
    assert_string_equal(g->ctl->hello->edge_id, EDGE);

    /* The forwarder answers to the routing id it saw. */
    Rb__Fwd__HelloAck ack = RB__FWD__HELLO_ACK__INIT;
    ack.version = RB_LINK_VERSION;
    ack.forwarder_id = "fwd-a";
    ack.instance = 0x0123456789abcdefULL;
    char *cidrs[] = {"10.0.0.0/8", "192.168.1.0/24"};
    ack.n_cidrs = 2;
    ack.cidrs = cidrs;
    Rb__Fwd__LinkControl r = RB__FWD__LINK_CONTROL__INIT;
    r.msg_case = RB__FWD__LINK_CONTROL__MSG_HELLO_ACK;
    r.hello_ack = &ack;
    assert_int_equal(rb_link_send_control(k->router, g->rid, g->rid_len, &r), 0);
    assert_true(s_until(k->l, &k->edge, 1, 5000));
    got_t *e = &k->edge.got[0];
    assert_int_equal(e->rc, 1);
    assert_int_equal(e->rid_len, 0); /* a DEALER hears no routing id */
    assert_non_null(e->ctl);
    assert_int_equal(e->ctl->msg_case, RB__FWD__LINK_CONTROL__MSG_HELLO_ACK);
    assert_string_equal(e->ctl->hello_ack->forwarder_id, "fwd-a");
    assert_int_equal(e->ctl->hello_ack->instance, 0x0123456789abcdefULL);
    assert_int_equal(e->ctl->hello_ack->n_cidrs, 2);
    assert_string_equal(e->ctl->hello_ack->cidrs[1], "192.168.1.0/24");

    /* An Attach with groups and ports, edge -> forwarder. */
    Rb__Tunnel__ExposedPort p1 = RB__TUNNEL__EXPOSED_PORT__INIT,
                            p2 = RB__TUNNEL__EXPOSED_PORT__INIT;
    p1.proto = RB__TUNNEL__PROTO__PROTO_TCP;
    p1.port = 22;
    p2.proto = RB__TUNNEL__PROTO__PROTO_UDP;
    p2.port = 53;
    Rb__Tunnel__ExposedPort *ports[] = {&p1, &p2};
    char *groups[] = {"staff", "ops"};
    Rb__Fwd__Attach at = RB__FWD__ATTACH__INIT;
    at.session_id = "s-123";
    at.user = "alice";
    at.ip = "100.64.0.7";
    at.n_groups = 2;
    at.groups = groups;
    at.n_ports = 2;
    at.ports = ports;
    Rb__Fwd__LinkControl a = RB__FWD__LINK_CONTROL__INIT;
    a.msg_case = RB__FWD__LINK_CONTROL__MSG_ATTACH;
    a.attach = &at;
    assert_int_equal(rb_link_send_control(k->dealer, NULL, 0, &a), 0);
    assert_true(s_until(k->l, &k->fwd, 2, 5000));
    g = &k->fwd.got[1];
    assert_int_equal(g->rc, 1);
    assert_string_equal(g->rid_text, EDGE);
    assert_non_null(g->ctl);
    assert_int_equal(g->ctl->msg_case, RB__FWD__LINK_CONTROL__MSG_ATTACH);
    assert_string_equal(g->ctl->attach->user, "alice");
    assert_int_equal(g->ctl->attach->n_ports, 2);
    assert_int_equal(g->ctl->attach->ports[1]->proto, RB__TUNNEL__PROTO__PROTO_UDP);
    assert_int_equal(g->ctl->attach->ports[1]->port, 53);
    assert_string_equal(g->ctl->attach->groups[1], "ops");
    s_link_free(k);
}

static void test_data_roundtrip(void **state)
{
    link_t *k = s_link_new(EDGE);
    static uint8_t big[RB_FRAME_MAX_DATA];
    for (size_t i = 0; i < sizeof big; i++)
        big[i] = (uint8_t)(i * 7);
    const uint8_t inc[4] = {0, 0x10, 0, 0};

    /* edge -> forwarder: a full DATA frame, a bare FIN, a WINDOW, a
     * DATAGRAM, an RST. */
    assert_int_equal(rb_link_send(k->dealer, NULL, 0, RB_FRAME_DATA, 0, 1, big, sizeof big), 0);
    assert_int_equal(rb_link_send(k->dealer, NULL, 0, RB_FRAME_DATA, RB_FRAME_FIN, 1, NULL, 0), 0);
    assert_int_equal(rb_link_send(k->dealer, NULL, 0, RB_FRAME_WINDOW, 0, 3, inc, 4), 0);
    assert_int_equal(rb_link_send(k->dealer, NULL, 0, RB_FRAME_DATAGRAM, 0, 5, "dns?", 4), 0);
    assert_int_equal(rb_link_send(k->dealer, NULL, 0, RB_FRAME_DATA, RB_FRAME_RST, 7, NULL, 0), 0);
    assert_true(s_until(k->l, &k->fwd, 6, 5000));
    got_t *g = k->fwd.got;
    for (int i = 1; i < 6; i++) {
        assert_int_equal(g[i].rc, 1);
        assert_string_equal(g[i].rid_text, EDGE);
    }
    assert_int_equal(g[1].f.type, RB_FRAME_DATA);
    assert_int_equal(g[1].f.stream_id, 1);
    assert_int_equal(g[1].f.len, sizeof big);
    assert_memory_equal(g[1].data, big, sizeof big);
    assert_int_equal(g[2].f.flags, RB_FRAME_FIN);
    assert_int_equal(g[2].f.len, 0);
    assert_null(g[2].f.payload);
    assert_int_equal(g[3].f.type, RB_FRAME_WINDOW);
    assert_int_equal(rb_frame_window(&g[3].f), 0x100000);
    assert_int_equal(g[4].f.type, RB_FRAME_DATAGRAM);
    assert_memory_equal(g[4].data, "dns?", 4);
    assert_int_equal(g[5].f.flags, RB_FRAME_RST);
    assert_int_equal(g[5].f.stream_id, 7);

    /* forwarder -> edge, by routing id. */
    assert_int_equal(rb_link_send(k->router, EDGE, strlen(EDGE), RB_FRAME_DATA, 0, 2, "reply", 5),
                     0);
    assert_int_equal(rb_link_send(k->router, EDGE, strlen(EDGE), RB_FRAME_WINDOW, 0, 2, inc, 4), 0);
    assert_true(s_until(k->l, &k->edge, 2, 5000));
    assert_int_equal(k->edge.got[0].rc, 1);
    assert_int_equal(k->edge.got[0].f.stream_id, 2);
    assert_memory_equal(k->edge.got[0].data, "reply", 5);
    assert_int_equal(k->edge.got[1].f.type, RB_FRAME_WINDOW);

    /* No such edge: the ROUTER says so instead of dropping. */
    errno = 0;
    assert_int_equal(rb_link_send(k->router, "edge-2", 6, RB_FRAME_DATA, 0, 2, "x", 1), -1);
    assert_int_equal(errno, EHOSTUNREACH);
    s_link_free(k);
}

/* A DEALER without a routing id gets a binary one from libzmq: it is
 * reported as bytes (and hex for logs) and answers reach it. */
static void test_binary_routing_id(void **state)
{
    link_t *k = s_link_new(NULL);
    got_t *g = &k->fwd.got[0];
    assert_int_equal(g->rc, 1);
    assert_true(g->rid_len > 0);
    assert_int_equal(strlen(g->rid_text), 2 * g->rid_len);
    assert_int_equal(rb_link_send(k->router, g->rid, g->rid_len, RB_FRAME_DATA, 0, 2, "hi", 2), 0);
    assert_true(s_until(k->l, &k->edge, 1, 5000));
    assert_int_equal(k->edge.got[0].rc, 1);
    assert_memory_equal(k->edge.got[0].data, "hi", 2);
    s_link_free(k);
}

/* ---- malformed messages ---- */

/* Sends the parts of one message as given. */
static void s_raw(void *sock, int nparts, const void *const *parts, const size_t *lens)
{
    for (int i = 0; i < nparts; i++)
        assert_true(zmq_send(sock, parts[i], lens[i], i + 1 < nparts ? ZMQ_SNDMORE : 0) >= 0);
}

static void s_hdr(uint8_t *h, uint8_t type, uint8_t flags, uint32_t id, uint32_t len)
{
    rb_frame_header(h, type, flags, id, len);
}

static void test_malformed_refused(void **state)
{
    link_t *k = s_link_new(EDGE);
    void *d = k->dealer;
    static uint8_t big[RB_FRAME_MAX_DATA + 1];
    uint8_t h[RB_FRAME_HEADER + 1];
    const uint8_t zero[4] = {0};
    struct {
        const char *needle; /* in the reason */
        int nparts;
        const void *parts[12];
        size_t lens[12];
        uint8_t hdr[RB_FRAME_HEADER + 1];
    } cases[16];
    int n = 0;

#define CASE(nd, np)                                                                               \
    do {                                                                                           \
        memset(&cases[n], 0, sizeof cases[n]);                                                     \
        cases[n].needle = (nd);                                                                    \
        cases[n].nparts = (np);                                                                    \
        memcpy(cases[n].hdr, h, sizeof h);                                                         \
        cases[n].parts[0] = cases[n].hdr;                                                          \
        cases[n].lens[0] = RB_FRAME_HEADER;                                                        \
    } while (0)

    /* An empty message. */
    memset(h, 0, sizeof h);
    CASE("12 bytes", 1);
    cases[n++].lens[0] = 0;
    /* A header one byte short, one byte long. */
    s_hdr(h, RB_FRAME_DATA, 0, 1, 0);
    CASE("12 bytes", 1);
    cases[n++].lens[0] = RB_FRAME_HEADER - 1;
    CASE("12 bytes", 1);
    cases[n++].lens[0] = RB_FRAME_HEADER + 1;
    /* The payload part is not as long as the header says. */
    s_hdr(h, RB_FRAME_DATA, 0, 1, 5);
    CASE("length", 2);
    cases[n].parts[1] = "abcd";
    cases[n++].lens[1] = 4;
    CASE("length", 1); /* no payload part at all */
    n++;
    s_hdr(h, RB_FRAME_DATA, 0, 1, 0);
    CASE("length", 2);
    cases[n].parts[1] = "abc";
    cases[n++].lens[1] = 3;
    /* Too many parts: header, payload and more. */
    s_hdr(h, RB_FRAME_DATA, 0, 1, 1);
    CASE("parts", 3);
    cases[n].parts[1] = "a";
    cases[n].lens[1] = 1;
    cases[n].parts[2] = "extra";
    cases[n++].lens[2] = 5;
    CASE("parts", 12);
    for (int i = 1; i < 12; i++) {
        cases[n].parts[i] = "p";
        cases[n].lens[i] = 1;
    }
    n++;
    /* Unknown type. */
    s_hdr(h, 9, 0, 1, 1);
    CASE("type", 2);
    cases[n].parts[1] = "a";
    cases[n++].lens[1] = 1;
    /* A window of 0. */
    s_hdr(h, RB_FRAME_WINDOW, 0, 1, 4);
    CASE("zero", 2);
    cases[n].parts[1] = zero;
    cases[n++].lens[1] = 4;
    /* Oversized DATA and CONTROL, payload and all. */
    s_hdr(h, RB_FRAME_DATA, 0, 1, RB_FRAME_MAX_DATA + 1);
    CASE("large", 2);
    cases[n].parts[1] = big;
    cases[n++].lens[1] = RB_FRAME_MAX_DATA + 1;
    s_hdr(h, RB_FRAME_CONTROL, 0, 0, RB_FRAME_MAX_CONTROL + 1);
    CASE("large", 2);
    cases[n].parts[1] = big;
    cases[n++].lens[1] = RB_FRAME_MAX_CONTROL + 1;
    /* Reserved bits; CONTROL on a stream. */
    s_hdr(h, RB_FRAME_DATA, 0, 1, 1);
    h[2] = 0x80;
    CASE("reserved", 2);
    cases[n].parts[1] = "a";
    cases[n++].lens[1] = 1;
    s_hdr(h, RB_FRAME_CONTROL, 0, 4, 2);
    CASE("stream id", 2);
    cases[n].parts[1] = "\x0a\x00";
    cases[n++].lens[1] = 2;
#undef CASE

    /* Each bad message, then a good one: the bad one is refused with a
     * reason that names the sender, and the good one still arrives whole. */
    for (int i = 0; i < n; i++) {
        int base = k->fwd.n;
        s_raw(d, cases[i].nparts, cases[i].parts, cases[i].lens);
        char tag[16];
        snprintf(tag, sizeof tag, "ok%d", i);
        assert_int_equal(rb_link_send(d, NULL, 0, RB_FRAME_DATA, 0, 11, tag, strlen(tag)), 0);
        assert_true(s_until(k->l, &k->fwd, base + 2, 5000));
        got_t *bad = &k->fwd.got[base], *good = &k->fwd.got[base + 1];
        if (bad->rc != -1) fail_msg("case %d accepted", i);
        if (!strstr(bad->why, cases[i].needle))
            fail_msg("case %d: reason '%s' lacks '%s'", i, bad->why, cases[i].needle);
        /* rb_link.h: "rid is filled when known": from the first part on,
         * so every refusal can name the sender. */
        if (strcmp(bad->rid_text, EDGE) != 0)
            fail_msg("case %d (%s): sender '%s'", i, bad->why, bad->rid_text);
        assert_int_equal(good->rc, 1);
        assert_int_equal(good->f.stream_id, 11);
        assert_int_equal(good->f.len, strlen(tag));
        assert_memory_equal(good->data, tag, strlen(tag));
        s_side_clear(&k->fwd);
    }

    /* The DEALER side too: the forwarder sends the edge a payload with an
     * extra part, then a short header, then a good frame. */
    const void *p3[] = {EDGE, h, "a", "extra"};
    size_t l3[] = {strlen(EDGE), RB_FRAME_HEADER, 1, 5};
    s_hdr(h, RB_FRAME_DATA, 0, 2, 1);
    s_raw(k->router, 4, p3, l3);
    const void *p2[] = {EDGE, h};
    size_t l2[] = {strlen(EDGE), 7};
    s_raw(k->router, 2, p2, l2);
    assert_int_equal(rb_link_send(k->router, EDGE, strlen(EDGE), RB_FRAME_DATA, 0, 2, "ok", 2), 0);
    assert_true(s_until(k->l, &k->edge, 3, 5000));
    assert_int_equal(k->edge.got[0].rc, -1);
    assert_non_null(strstr(k->edge.got[0].why, "header and a payload"));
    assert_int_equal(k->edge.got[1].rc, -1);
    assert_non_null(strstr(k->edge.got[1].why, "12 bytes"));
    assert_int_equal(k->edge.got[2].rc, 1);
    assert_memory_equal(k->edge.got[2].data, "ok", 2);
    s_link_free(k);
}

/* Reads whole messages from sock until n have come or none comes for 5 s;
 * returns how many came. */
static int s_drain_frames(void *sock, int n)
{
    int timeout = 5000, got = 0;
    zmq_setsockopt(sock, ZMQ_RCVTIMEO, &timeout, sizeof timeout);
    zmq_msg_t part;
    zmq_msg_init(&part);
    while (got < n && zmq_msg_recv(&part, sock, 0) >= 0)
        if (!zmq_msg_more(&part)) got++;
    zmq_msg_close(&part);
    return got;
}

/* The link has no high-water mark either way (credit bounds it): with
 * libzmq's 100,000-message marks a peer that is not reading makes sends
 * fail after about 270,000 messages (both sides' pipes and the kernel). */
static void test_no_high_water_mark(void **state)
{
    link_t *k = s_link_new(EDGE);
    got_t *g = &k->fwd.got[0];
    enum { N = 300000 };
    for (int i = 0; i < N; i++)
        assert_int_equal(rb_link_send(k->dealer, NULL, 0, RB_FRAME_DATA, 0, 1, "x", 1), 0);
    for (int i = 0; i < N; i++)
        assert_int_equal(rb_link_send(k->router, g->rid, g->rid_len, RB_FRAME_DATA, 0, 1, "y", 1),
                         0);
    /* Every frame arrives; and the link closes empty: libzmq 4.3 asserts in
     * session_base's clean_pipes when a connection goes down with half a
     * multipart message read (libzmq issue 3442). */
    assert_int_equal(s_drain_frames(k->router, N), N);
    assert_int_equal(s_drain_frames(k->dealer, N), N);
}

/* rb_link_send_control refuses what the peer would refuse. */
static void test_send_control_limits(void **state)
{
    link_t *k = s_link_new(EDGE);
    Rb__Fwd__LinkControl empty = RB__FWD__LINK_CONTROL__INIT;
    errno = 0;
    assert_int_equal(rb_link_send_control(k->dealer, NULL, 0, &empty), -1);
    assert_int_equal(errno, EMSGSIZE);

    static char huge[RB_FRAME_MAX_CONTROL + 1];
    memset(huge, 'x', sizeof huge - 1);
    Rb__Fwd__Hello h = RB__FWD__HELLO__INIT;
    h.edge_id = huge;
    Rb__Fwd__LinkControl m = RB__FWD__LINK_CONTROL__INIT;
    m.msg_case = RB__FWD__LINK_CONTROL__MSG_HELLO;
    m.hello = &h;
    errno = 0;
    assert_int_equal(rb_link_send_control(k->dealer, NULL, 0, &m), -1);
    assert_int_equal(errno, EMSGSIZE);
    /* Nothing went out. */
    assert_int_equal(rb_link_send(k->dealer, NULL, 0, RB_FRAME_DATA, 0, 1, "z", 1), 0);
    assert_true(s_until(k->l, &k->fwd, 2, 5000));
    assert_int_equal(k->fwd.got[1].rc, 1);
    assert_int_equal(k->fwd.got[1].f.type, RB_FRAME_DATA);

    /* The largest Relayed a side sends (RB_LINK_RELAYED_MAX entries, the
     * longest varints) fits a control frame, and arrives whole. */
    static uint32_t ids[RB_LINK_RELAYED_MAX], bytes[RB_LINK_RELAYED_MAX];
    for (size_t i = 0; i < RB_LINK_RELAYED_MAX; i++)
        ids[i] = bytes[i] = UINT32_MAX - (uint32_t)i;
    Rb__Fwd__Relayed rel;
    rb_link_relayed(&m, &rel, ids, bytes, RB_LINK_RELAYED_MAX);
    assert_int_equal(rb_link_send_control(k->dealer, NULL, 0, &m), 0);
    assert_true(s_until(k->l, &k->fwd, 3, 5000));
    assert_int_equal(k->fwd.got[2].rc, 1);
    const Rb__Fwd__LinkControl *got = k->fwd.got[2].ctl;
    assert_non_null(got);
    assert_int_equal(got->msg_case, RB__FWD__LINK_CONTROL__MSG_RELAYED);
    assert_int_equal(got->relayed->n_link_ids, RB_LINK_RELAYED_MAX);
    assert_int_equal(got->relayed->bytes[RB_LINK_RELAYED_MAX - 1],
                     UINT32_MAX - (RB_LINK_RELAYED_MAX - 1));
    s_link_free(k);
}

/* ---- rb_link_control ---- */

static void test_control_garbage(void **state)
{
    rb_frame_t f = {.type = RB_FRAME_CONTROL};
    /* Hello (field 1) claims 100 bytes, has 2. */
    const uint8_t trunc[] = {0x0a, 100, 0x08, 0x01};
    f.payload = trunc;
    f.len = sizeof trunc;
    assert_null(rb_link_control(&f));
    /* Only an unknown field: no message set. */
    const uint8_t unknown[] = {0x78, 0x01};
    f.payload = unknown;
    f.len = sizeof unknown;
    assert_null(rb_link_control(&f));
    /* Not protobuf at all. */
    const uint8_t junk[] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    f.payload = junk;
    f.len = sizeof junk;
    assert_null(rb_link_control(&f));
    /* A wrong wire type for the oneof field. */
    const uint8_t wire[] = {0x08, 0x01};
    f.payload = wire;
    f.len = sizeof wire;
    assert_null(rb_link_control(&f));

    /* A valid Detach unpacks, but not from a DATA frame, an empty frame or
     * one over the limit. */
    const uint8_t detach[] = {0x22, 0x05, 0x0a, 0x03, 's', '-', '1'};
    f.payload = detach;
    f.len = sizeof detach;
    Rb__Fwd__LinkControl *m = rb_link_control(&f);
    assert_non_null(m);
    assert_int_equal(m->msg_case, RB__FWD__LINK_CONTROL__MSG_DETACH);
    assert_string_equal(m->detach->session_id, "s-1");
    rb__fwd__link_control__free_unpacked(m, NULL);
    f.type = RB_FRAME_DATA;
    assert_null(rb_link_control(&f));
    f.type = RB_FRAME_CONTROL;
    f.len = 0;
    assert_null(rb_link_control(&f));
    f.len = RB_FRAME_MAX_CONTROL + 1;
    assert_null(rb_link_control(&f));
}

/* rb_link.h: "Routing ids are edge ids; longer ones are refused." Cut to
 * RB_LINK_RID_MAX bytes, a peer whose id merely starts like another's would
 * be taken for it, and answers to the cut id would go nowhere. */
static void test_long_routing_id_refused(void **state)
{
    char rid[RB_LINK_RID_MAX + 2];
    memset(rid, 'e', sizeof rid - 1);
    rid[sizeof rid - 1] = '\0';
    link_t *k = s_link_new(rid);
    assert_int_equal(k->fwd.got[0].rc, -1);
    s_link_free(k);
}

static int s_setup(void **state)
{
    rb_log_init("test", RB_LOG_WARN);
    return 0;
}

static int s_test_teardown(void **state)
{
    s_link_free(s_cur);
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
        cmocka_unit_test_teardown(test_control_roundtrip, s_test_teardown),
        cmocka_unit_test_teardown(test_data_roundtrip, s_test_teardown),
        cmocka_unit_test_teardown(test_binary_routing_id, s_test_teardown),
        cmocka_unit_test_teardown(test_malformed_refused, s_test_teardown),
        cmocka_unit_test_teardown(test_no_high_water_mark, s_test_teardown),
        cmocka_unit_test_teardown(test_send_control_limits, s_test_teardown),
        cmocka_unit_test_teardown(test_control_garbage, s_test_teardown),
        cmocka_unit_test_teardown(test_long_routing_id_refused, s_test_teardown),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
