/* Tests for dns_server: real servers on 127.0.0.1 (ports read back), their
 * loop in a second thread, queried over real UDP and TCP with packets from
 * dns_wire's encoder and with the real `dig`. Zone entries go in through
 * dns_server_session_up/down, the path the event stream uses.
 *
 * Servers: "srv" serves vpn.lab without upstream (REFUSED outside), "corp"
 * serves corp.lab, "fwd" serves vpn.lab and forwards to corp, "big" forwards
 * to a fake upstream (a socket on the same loop) that answers with 40 A
 * records, too many for 512 bytes, "dead" forwards to a silent socket, and
 * "evs" follows a fake broker's event stream (snapshot ROUTER + XPUB, raw
 * ZeroMQ on the same loop). Two more are made by their tests: "txt"
 * forwards to a real dnsmasq whose UDP answers are truncated, "hostile" to
 * an upstream thread that truncates over UDP and misbehaves over TCP. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <zmq.h>

#include "dns_server.h"
#include "dns_wire.h"
#include "rb_buf.h"
#include "rb_loop.h"
#include "rb_metrics.h"
#include "rb_pb.h"
#include "rb_zmq.h"

typedef struct {
    rb_loop_t *loop;
    pthread_t thread;
    int cmd[2], done[2];
    int fake_fd, silent_fd;
    dns_server_t *srv, *corp, *fwd, *big, *dead, *evs, *txt, *hostile;
    void *xpub, *router;          /* the fake broker */
    rb_timer_t *hb;
    uint64_t seq;
    pid_t dnsmasq; /* > 0 while one runs */
    pthread_t hostile_thread;
    bool hostile_running;
    int hostile_udp, hostile_tcp, hostile_stop[2];
    atomic_int hostile_mode;
    atomic_bool hostile_refusing; /* its TCP listener is closed */
    atomic_int hostile_held;      /* stalled connections it has held, in all */
    atomic_int hostile_open;      /* of which our server has not closed yet */
} fixture_t;

static fixture_t F;

/* ---- running things on the loop thread ---- */

typedef struct {
    void (*fn)(void *);
    void *arg;
} cmd_t;

static void s_cmd_read(rb_loop_t *loop, int fd, unsigned events, void *arg)
{
    cmd_t *c;
    if (read(fd, &c, sizeof c) != sizeof c) return;
    c->fn(c->arg);
    char one = 1;
    assert_int_equal(write(F.done[1], &one, 1), 1);
}

/* Runs fn(arg) on the loop thread and waits for it. */
static void s_in_loop(void (*fn)(void *), void *arg)
{
    cmd_t c = {fn, arg}, *p = &c;
    assert_int_equal(write(F.cmd[1], &p, sizeof p), sizeof p);
    char one;
    assert_int_equal(read(F.done[0], &one, 1), 1);
}

static void *s_loop_main(void *arg)
{
    rb_loop_run(F.loop);
    return NULL;
}

static void s_stop(void *arg) { rb_loop_stop(F.loop); }

/* The fake upstream: 40 A records for any question, truncated (TC, no
 * records) when they exceed what the query's EDNS size allows over UDP. */
static void s_fake_read(rb_loop_t *loop, int fd, unsigned events, void *arg)
{
    uint8_t in[2048], out[4096];
    struct sockaddr_storage from;
    socklen_t fl = sizeof from;
    ssize_t n = recvfrom(fd, in, sizeof in, 0, (struct sockaddr *)&from, &fl);
    if (n <= 0) return;
    dns_query_t q;
    if (dns_wire_parse_query(in, (size_t)n, &q) != 0) return;
    dns_writer_t w;
    assert_int_equal(dns_writer_begin(&w, out, sizeof out, &q, 0, false), 0);
    for (uint32_t i = 0; i < 40; i++)
        dns_writer_a(&w, DNS_SEC_ANSWER, q.qname, q.qname_len, 60, 0x0a000001 + i);
    size_t len = dns_writer_finish(&w);
    if (len > dns_wire_max_response(&q, false))
        len = dns_wire_truncate(out, len, dns_wire_max_response(&q, false));
    sendto(fd, out, len, 0, (struct sockaddr *)&from, fl);
}

/* ---- a fake broker: one session in every snapshot, heartbeats ---- */

static void s_session(Rb__Events__Session *ss, const char *label, const char *ip)
{
    rb__events__session__init(ss);
    ss->session_id = (char *)label;
    ss->user = (char *)label;
    ss->label = (char *)label;
    ss->ip = (char *)ip;
}

static void s_on_snapshot_call(rb_loop_t *l, void *sock, void *arg)
{
    zmq_msg_t rid, id, body;
    zmq_msg_init(&rid);
    while (zmq_msg_recv(&rid, sock, ZMQ_DONTWAIT) >= 0) {
        zmq_msg_init(&id);
        zmq_msg_init(&body);
        assert_true(zmq_msg_recv(&id, sock, 0) >= 0);
        assert_true(zmq_msg_recv(&body, sock, 0) >= 0);
        Rb__Events__Session ss, *ps = &ss;
        s_session(&ss, "erin", "127.77.0.9");
        Rb__Events__Snapshot snap = RB__EVENTS__SNAPSHOT__INIT;
        snap.seq = F.seq;
        snap.n_sessions = 1;
        snap.sessions = &ps;
        Rb__Events__SnapshotAnswer a = RB__EVENTS__SNAPSHOT_ANSWER__INIT;
        a.version = RB_PROTO_VERSION;
        a.snapshot = &snap;
        rb_buf_t out = RB_BUF_INIT;
        assert_int_equal(rb_pb_pack(&a.base, &out), 0);
        assert_true(zmq_msg_send(&rid, sock, ZMQ_SNDMORE) >= 0);
        assert_true(zmq_msg_send(&id, sock, ZMQ_SNDMORE) >= 0);
        assert_true(zmq_send(sock, out.data, out.len, 0) >= 0);
        rb_buf_free(&out);
        zmq_msg_close(&id);
        zmq_msg_close(&body);
        zmq_msg_close(&rid);
        zmq_msg_init(&rid);
    }
    zmq_msg_close(&rid);
}

static void s_on_xpub(rb_loop_t *l, void *sock, void *arg)
{
    char buf[64];
    while (zmq_recv(sock, buf, sizeof buf, ZMQ_DONTWAIT) >= 0) {
    }
}

static void s_publish(Rb__Events__EventMessage *m)
{
    m->version = RB_PROTO_VERSION;
    rb_buf_t out = RB_BUF_INIT;
    assert_int_equal(rb_pb_pack(&m->base, &out), 0);
    zmq_send(F.xpub, out.data, out.len, 0);
    rb_buf_free(&out);
}

static void s_heartbeat(rb_loop_t *l, void *arg)
{
    Rb__Events__Heartbeat hb = RB__EVENTS__HEARTBEAT__INIT;
    hb.seq = F.seq;
    hb.broker_id = "fake";
    Rb__Events__EventMessage m = RB__EVENTS__EVENT_MESSAGE__INIT;
    m.body_case = RB__EVENTS__EVENT_MESSAGE__BODY_HEARTBEAT;
    m.heartbeat = &hb;
    s_publish(&m);
}

/* Publishes frank up (or erin down) as the next event. */
static void s_event(void *arg)
{
    bool up = arg != NULL;
    Rb__Events__Session ss;
    s_session(&ss, up ? "frank" : "erin", up ? "127.77.0.10" : "127.77.0.9");
    Rb__Events__SessionEvent ev = RB__EVENTS__SESSION_EVENT__INIT;
    ev.seq = ++F.seq;
    ev.kind = up ? RB__EVENTS__EVENT_KIND__SESSION_UP : RB__EVENTS__EVENT_KIND__SESSION_DOWN;
    ev.session = &ss;
    ev.reason = up ? "" : "logoff";
    Rb__Events__EventMessage m = RB__EVENTS__EVENT_MESSAGE__INIT;
    m.body_case = RB__EVENTS__EVENT_MESSAGE__BODY_EVENT;
    m.event = &ev;
    s_publish(&m);
}

static void s_broker_start(char *pub_ep, char *snap_ep, size_t n)
{
    void *ctx = rb_zmq_ctx();
    F.xpub = zmq_socket(ctx, ZMQ_XPUB);
    F.router = zmq_socket(ctx, ZMQ_ROUTER);
    int zero = 0;
    zmq_setsockopt(F.xpub, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(F.router, ZMQ_LINGER, &zero, sizeof zero);
    assert_int_equal(zmq_bind(F.xpub, "tcp://127.0.0.1:*"), 0);
    assert_int_equal(zmq_bind(F.router, "tcp://127.0.0.1:*"), 0);
    size_t len = n;
    zmq_getsockopt(F.xpub, ZMQ_LAST_ENDPOINT, pub_ep, &len);
    len = n;
    zmq_getsockopt(F.router, ZMQ_LAST_ENDPOINT, snap_ep, &len);
    assert_int_equal(rb_loop_add_zsock(F.loop, F.xpub, s_on_xpub, NULL), 0);
    assert_int_equal(rb_loop_add_zsock(F.loop, F.router, s_on_snapshot_call, NULL), 0);
    F.seq = 5;
    F.hb = rb_loop_add_timer(F.loop, 100, true, s_heartbeat, NULL);
}

static int s_udp_socket(int *port)
{
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t l = sizeof a;
    getsockname(fd, (struct sockaddr *)&a, &l);
    *port = ntohs(a.sin_port);
    return fd;
}

static dns_server_t *s_server_ev(const char *suffix, const char *pool, const char *upstream,
                                 char *pub, char *snap)
{
    dns_config_t cfg = {
        .log_level = "info", .status_listen = "", .listen = "127.0.0.1:0",
        .suffix = (char *)suffix, .ttl = 30, .pool = (char *)pool, .ns_address = "127.0.0.1",
        .upstream = (char *)upstream, .events_endpoints = pub, .snapshot_endpoints = snap,
        .broker_public_key = "", .curve_secret_key = "", .dns_id = "test",
    };
    dns_server_t *s = dns_server_new(F.loop, &cfg);
    assert_non_null(s);
    assert_true(dns_server_port(s) > 0);
    return s;
}

static dns_server_t *s_server(const char *suffix, const char *pool, const char *upstream)
{
    return s_server_ev(suffix, pool, upstream, "", "");
}

static void s_up(dns_server_t *s, const char *sid, const char *label, const char *fqdn,
                 const char *ip)
{
    Rb__Events__Session sess = RB__EVENTS__SESSION__INIT;
    sess.session_id = (char *)sid;
    sess.label = (char *)label;
    sess.fqdn = (char *)fqdn;
    sess.ip = (char *)ip;
    assert_int_equal(dns_server_session_up(s, &sess), 0);
}

static int s_setup(void **state)
{
    memset(&F, 0, sizeof F);
    F.loop = rb_loop_new();
    assert_non_null(F.loop);
    assert_int_equal(pipe(F.cmd), 0);
    assert_int_equal(pipe(F.done), 0);
    assert_int_equal(rb_loop_add_fd(F.loop, F.cmd[0], RB_EV_READ, s_cmd_read, NULL), 0);
    int fake_port, silent_port;
    F.fake_fd = s_udp_socket(&fake_port);
    F.silent_fd = s_udp_socket(&silent_port);
    assert_int_equal(rb_loop_add_fd(F.loop, F.fake_fd, RB_EV_READ, s_fake_read, NULL), 0);

    F.srv = s_server("vpn.lab", "127.77.0.0/16", "");
    F.corp = s_server("corp.lab", "", "");
    char up[64];
    snprintf(up, sizeof up, "127.0.0.1:%d", dns_server_port(F.corp));
    F.fwd = s_server("vpn.lab", "127.77.0.0/16", up);
    snprintf(up, sizeof up, "127.0.0.1:%d", fake_port);
    F.big = s_server("vpn.lab", "", up);
    snprintf(up, sizeof up, "127.0.0.1:%d", silent_port);
    F.dead = s_server("vpn.lab", "", up);
    char pub[128], snap[128];
    s_broker_start(pub, snap, sizeof pub);
    F.evs = s_server_ev("vpn.lab", "127.77.0.0/16", "", pub, snap);
    assert_false(dns_server_ready(F.evs));

    s_up(F.srv, "s1", "alice", "alice.vpn.lab", "127.77.0.2");
    s_up(F.srv, "s2", "carol", "", "127.77.0.3");
    s_up(F.fwd, "s1", "alice", "alice.vpn.lab", "127.77.0.2");
    s_up(F.corp, "s9", "bob", "bob.corp.lab", "10.20.30.40");
    assert_int_equal(dns_server_records(F.srv), 2);
    assert_true(dns_server_ready(F.srv));
    assert_int_equal(pthread_create(&F.thread, NULL, s_loop_main, NULL), 0);
    return 0;
}

static void s_dnsmasq_stop(void);
static void s_hostile_stop(void);

static int s_teardown(void **state)
{
    s_dnsmasq_stop();
    s_hostile_stop();
    s_in_loop(s_stop, NULL);
    pthread_join(F.thread, NULL);
    dns_server_t **all[] = {&F.srv, &F.corp, &F.fwd, &F.big, &F.dead, &F.evs, &F.txt, &F.hostile};
    for (size_t i = 0; i < 8; i++)
        dns_server_destroy(all[i]);
    assert_null(F.srv);
    rb_loop_cancel_timer(F.loop, F.hb);
    rb_loop_del_zsock(F.loop, F.xpub);
    rb_loop_del_zsock(F.loop, F.router);
    zmq_close(F.xpub);
    zmq_close(F.router);
    rb_zmq_term();
    rb_loop_del_fd(F.loop, F.cmd[0]);
    rb_loop_del_fd(F.loop, F.fake_fd);
    close(F.fake_fd);
    close(F.silent_fd);
    close(F.cmd[0]);
    close(F.cmd[1]);
    close(F.done[0]);
    close(F.done[1]);
    rb_loop_destroy(&F.loop);
    return 0;
}

/* ---- clients ---- */

/* Sends pkt over UDP to port; returns the answer's length, or -1 when none
 * comes within timeout_ms. */
static ssize_t s_udp(int port, const uint8_t *pkt, size_t len, uint8_t *resp, size_t cap,
                     int timeout_ms)
{
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(send(fd, pkt, len, 0), (ssize_t)len);
    struct pollfd p = {fd, POLLIN, 0};
    ssize_t n = -1;
    if (poll(&p, 1, timeout_ms) == 1) n = recv(fd, resp, cap, 0);
    close(fd);
    return n;
}

static ssize_t s_ask(int port, uint16_t id, const char *name, uint16_t type, uint16_t edns,
                     uint8_t *resp, size_t cap)
{
    uint8_t q[512];
    size_t n = dns_wire_build_query(q, sizeof q, id, name, type, edns);
    assert_true(n > 0);
    return s_udp(port, q, n, resp, cap, 3000);
}

static int s_tcp_connect(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    struct timeval tv = {3, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
}

/* Reads one length-prefixed message. */
static ssize_t s_tcp_read(int fd, uint8_t *buf, size_t cap)
{
    uint8_t pre[2];
    if (recv(fd, pre, 2, MSG_WAITALL) != 2) return -1;
    size_t len = (size_t)pre[0] << 8 | pre[1];
    if (len > cap || recv(fd, buf, len, MSG_WAITALL) != (ssize_t)len) return -1;
    return (ssize_t)len;
}

/* Runs a shell command (dig) and returns its output (static buffer). */
static const char *s_run(const char *fmt, ...)
{
    static char out[16384];
    char cmd[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t n = fread(out, 1, sizeof out - 1, p);
    out[n] = '\0';
    pclose(p);
    return out;
}

static int s_lines(const char *s)
{
    int n = 0;
    for (; *s; s++) n += *s == '\n';
    return n;
}

#define DIG "dig @127.0.0.1 -p %d +time=3 +tries=1 "

/* ---- tests ---- */

static void test_a_ptr_and_case(void **state)
{
    uint8_t r[1500];
    ssize_t n = s_ask(dns_server_port(F.srv), 0x4242, "aLiCe.VPN.lab", DNS_TYPE_A, 0, r, sizeof r);
    assert_true(n > 12);
    assert_int_equal(r[0], 0x42);
    assert_int_equal(r[1], 0x42);
    assert_true(r[2] & 0x04);                 /* AA */
    assert_int_equal(r[3] & 0xf, 0);
    assert_int_equal(r[7], 1);
    dns_query_t q;
    assert_int_equal(dns_wire_parse_response_question(r, (size_t)n, &q), 0);
    size_t pos = 12 + q.qname_len + 4u;
    dns_rr_t rr;
    assert_int_equal(dns_wire_read_rr(r, (size_t)n, &pos, &rr), 0);
    assert_memory_equal(rr.name, "\x05" "aLiCe\x03VPN\x03lab", 15);
    assert_int_equal(rr.type, DNS_TYPE_A);
    assert_int_equal(rr.ttl, 30);
    assert_memory_equal(r + rr.rdata, "\x7f\x4d\x00\x02", 4);

    const char *o = s_run(DIG "alice.vpn.lab A +short", dns_server_port(F.srv));
    assert_string_equal(o, "127.77.0.2\n");
    o = s_run(DIG "-x 127.77.0.3 +short", dns_server_port(F.srv));
    assert_string_equal(o, "carol.vpn.lab.\n");
    o = s_run(DIG "ns.vpn.lab +short", dns_server_port(F.srv));
    assert_string_equal(o, "127.0.0.1\n");
    o = s_run(DIG "vpn.lab SOA +short", dns_server_port(F.srv));
    assert_non_null(strstr(o, "ns.vpn.lab. hostmaster.vpn.lab. "));
}

static void test_negative_answers(void **state)
{
    const char *o = s_run(DIG "nobody.vpn.lab A", dns_server_port(F.srv));
    assert_non_null(strstr(o, "status: NXDOMAIN"));
    assert_non_null(strstr(o, "flags: qr aa"));
    assert_non_null(strstr(o, "AUTHORITY: 1"));
    assert_non_null(strstr(o, "SOA\tns.vpn.lab. hostmaster.vpn.lab."));
    o = s_run(DIG "alice.vpn.lab AAAA", dns_server_port(F.srv));
    assert_non_null(strstr(o, "status: NOERROR"));
    assert_non_null(strstr(o, "ANSWER: 0, AUTHORITY: 1"));
    o = s_run(DIG "-x 127.77.9.9", dns_server_port(F.srv));
    assert_non_null(strstr(o, "status: NXDOMAIN"));
    o = s_run(DIG "www.example.com A", dns_server_port(F.srv));
    assert_non_null(strstr(o, "status: REFUSED"));
    /* Not our reverse zone either. */
    o = s_run(DIG "-x 10.1.2.3", dns_server_port(F.srv));
    assert_non_null(strstr(o, "status: REFUSED"));
}

static void s_down_alice(void *arg)
{
    Rb__Events__Session sess = RB__EVENTS__SESSION__INIT;
    sess.session_id = "s1";
    sess.label = "alice";
    sess.fqdn = "alice.vpn.lab";
    sess.ip = "127.77.0.2";
    assert_int_equal(dns_server_session_down(F.srv, &sess, "logoff"), 0);
    s_up(F.srv, "s5", "dave", "", "127.77.0.2");
}

static void s_restore_alice(void *arg)
{
    Rb__Events__Session sess = RB__EVENTS__SESSION__INIT;
    sess.session_id = "s5";
    sess.label = "dave";
    sess.fqdn = "";
    assert_int_equal(dns_server_session_down(F.srv, &sess, "logoff"), 0);
    s_up(F.srv, "s1", "alice", "alice.vpn.lab", "127.77.0.2");
}

static void test_updates_visible(void **state)
{
    s_in_loop(s_down_alice, NULL);
    const char *o = s_run(DIG "alice.vpn.lab A", dns_server_port(F.srv));
    assert_non_null(strstr(o, "status: NXDOMAIN"));
    o = s_run(DIG "-x 127.77.0.2 +short", dns_server_port(F.srv));
    assert_string_equal(o, "dave.vpn.lab.\n");
    s_in_loop(s_restore_alice, NULL);
    o = s_run(DIG "-x 127.77.0.2 +short", dns_server_port(F.srv));
    assert_string_equal(o, "alice.vpn.lab.\n");
}

static void test_forwarding(void **state)
{
    uint8_t r[1500];
    ssize_t n = s_ask(dns_server_port(F.fwd), 0x1111, "bob.corp.lab", DNS_TYPE_A, 0, r, sizeof r);
    assert_true(n > 12);
    assert_int_equal(r[0], 0x11);   /* the client's id, not ours */
    assert_int_equal(r[1], 0x11);
    assert_int_equal(r[3] & 0xf, 0);
    assert_int_equal(r[7], 1);
    assert_memory_equal(r + n - 4, "\x0a\x14\x1e\x28", 4);
    const char *o = s_run(DIG "bob.corp.lab +short", dns_server_port(F.fwd));
    assert_string_equal(o, "10.20.30.40\n");
    o = s_run(DIG "+tcp bob.corp.lab +short", dns_server_port(F.fwd));
    assert_string_equal(o, "10.20.30.40\n");
    o = s_run(DIG "nobody.corp.lab", dns_server_port(F.fwd));
    assert_non_null(strstr(o, "status: NXDOMAIN"));
    /* Its own zone is still answered locally. */
    o = s_run(DIG "alice.vpn.lab +short", dns_server_port(F.fwd));
    assert_string_equal(o, "127.77.0.2\n");
    /* Many at once: each answer reaches the client that asked. */
    for (int i = 0; i < 20; i++) {
        n = s_ask(dns_server_port(F.fwd), (uint16_t)(1000 + i), "bob.corp.lab", DNS_TYPE_A, 1232,
                  r, sizeof r);
        assert_true(n > 12);
        assert_int_equal(r[0] << 8 | r[1], 1000 + i);
    }
    /* A silent upstream: SERVFAIL after the 2 s timeout. */
    n = s_ask(dns_server_port(F.dead), 7, "www.example.com", DNS_TYPE_A, 0, r, sizeof r);
    assert_true(n >= 12);
    assert_int_equal(r[3] & 0xf, DNS_RCODE_SERVFAIL);
}

static void test_truncation_and_tcp(void **state)
{
    int port = dns_server_port(F.big);
    /* 40 records do not fit in 512 bytes: TC, no records. */
    const char *o = s_run(DIG "+ignore +noedns many.example A", port);
    assert_non_null(strstr(o, "flags: qr tc rd"));
    assert_non_null(strstr(o, "ANSWER: 0"));
    /* dig falls back to TCP by itself, and +tcp asks there directly. */
    o = s_run(DIG "+noedns many.example A +short", port);
    assert_int_equal(s_lines(o), 40);
    o = s_run(DIG "+tcp many.example A +short", port);
    assert_int_equal(s_lines(o), 40);
    /* Over TCP a client's EDNS size (512 here, too small for 40 records)
     * says nothing: the upstream is asked for a full answer. */
    o = s_run(DIG "+tcp +bufsize=512 many.example A +short", port);
    assert_int_equal(s_lines(o), 40);
    /* A client that sent no OPT gets none back (RFC 6891 6.1.1), though
     * the upstream was asked with ours and answered with its own. */
    o = s_run(DIG "+tcp +noedns many.example A", port);
    assert_non_null(strstr(o, "ANSWER: 40"));
    assert_null(strstr(o, "OPT PSEUDOSECTION"));
    /* With EDNS (1232) they fit over UDP. */
    o = s_run(DIG "+bufsize=1232 many.example A +short", port);
    assert_int_equal(s_lines(o), 40);

    /* Our own TCP client: three queries in one write, then one sent a byte
     * at a time, on one connection. */
    int fd = s_tcp_connect(dns_server_port(F.srv));
    uint8_t buf[1024], r[65536];
    size_t len = 0;
    const char *names[] = {"alice.vpn.lab", "nobody.vpn.lab", "www.example.org"};
    for (int i = 0; i < 3; i++) {
        size_t n = dns_wire_build_query(buf + len + 2, sizeof buf - len - 2, (uint16_t)(i + 1),
                                        names[i], DNS_TYPE_A, 0);
        buf[len] = (uint8_t)(n >> 8);
        buf[len + 1] = (uint8_t)n;
        len += 2 + n;
    }
    assert_int_equal(send(fd, buf, len, 0), (ssize_t)len);
    const int rcodes[] = {0, 3, 5};
    for (int i = 0; i < 3; i++) {
        ssize_t n = s_tcp_read(fd, r, sizeof r);
        assert_true(n > 12);
        assert_int_equal(r[1], i + 1);
        assert_int_equal(r[3] & 0xf, rcodes[i]);
    }
    size_t n = dns_wire_build_query(buf + 2, sizeof buf - 2, 77, "carol.vpn.lab", DNS_TYPE_A, 0);
    buf[0] = 0;
    buf[1] = (uint8_t)n;
    for (size_t i = 0; i < n + 2; i++) {
        assert_int_equal(send(fd, buf + i, 1, 0), 1);
        usleep(1000);
    }
    ssize_t m = s_tcp_read(fd, r, sizeof r);
    assert_true(m > 12);
    assert_int_equal(r[1], 77);
    assert_memory_equal(r + m - 4, "\x7f\x4d\x00\x03", 4);
    close(fd);

    /* Forwarded over TCP: the whole answer, beyond 512 bytes. */
    fd = s_tcp_connect(port);
    n = dns_wire_build_query(buf + 2, sizeof buf - 2, 78, "many.example", DNS_TYPE_A, 0);
    buf[0] = 0;
    buf[1] = (uint8_t)n;
    assert_int_equal(send(fd, buf, n + 2, 0), (ssize_t)n + 2);
    m = s_tcp_read(fd, r, sizeof r);
    assert_true(m > 512);
    assert_int_equal(r[7], 40);
    close(fd);
}

static void test_malformed(void **state)
{
    int port = dns_server_port(F.srv);
    uint8_t pkt[600], r[1500];
    srand(12345);
    for (int i = 0; i < 300; i++) {
        size_t len = (size_t)(rand() % 600);
        for (size_t k = 0; k < len; k++) pkt[k] = (uint8_t)rand();
        pkt[2] &= 0x7f;   /* mostly queries, so most get FORMERR rather than silence */
        ssize_t n = s_udp(port, pkt, len, r, sizeof r, i < 20 ? 300 : 5);
        if (n >= 0 && i < 20) {
            assert_true(n >= 12);
            assert_int_equal(r[0], pkt[0]);
        }
    }
    /* A compression loop in the question: FORMERR, echoing the id. */
    static const uint8_t loop[] = {0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0,
                                   0x01, 'a', 0xc0, 0x0e, 0, 1, 0, 1};
    ssize_t n = s_udp(port, loop, sizeof loop, r, sizeof r, 2000);
    assert_int_equal(n, 12);
    assert_int_equal(r[0], 0xab);
    assert_int_equal(r[3] & 0xf, DNS_RCODE_FORMERR);
    /* A response (QR=1) and a runt get no answer at all. */
    uint8_t resp[64];
    size_t qn = dns_wire_build_query(resp, sizeof resp, 5, "alice.vpn.lab", DNS_TYPE_A, 0);
    resp[2] |= 0x80;
    assert_int_equal(s_udp(port, resp, qn, r, sizeof r, 300), -1);
    assert_int_equal(s_udp(port, resp, 5, r, sizeof r, 300), -1);
    /* Another opcode: NOTIMP. EDNS version 1: BADVERS (extended rcode). */
    qn = dns_wire_build_query(resp, sizeof resp, 6, "alice.vpn.lab", DNS_TYPE_A, 1232);
    resp[2] = 0x01 | (2 << 3);
    n = s_udp(port, resp, qn, r, sizeof r, 2000);
    assert_true(n >= 12);
    assert_int_equal(r[3] & 0xf, DNS_RCODE_NOTIMP);
    resp[2] = 0x01;
    resp[qn - 5] = 1;
    n = s_udp(port, resp, qn, r, sizeof r, 2000);
    assert_true(n > 12);
    assert_int_equal(r[3] & 0xf, 0);
    assert_int_equal(r[n - 11 + 5], 1);
    /* And the server still answers. */
    const char *o = s_run(DIG "alice.vpn.lab A +short", port);
    assert_string_equal(o, "127.77.0.2\n");
    /* A TCP message claiming a length shorter than a header closes the
     * connection. */
    int fd = s_tcp_connect(port);
    assert_int_equal(send(fd, "\x00\x03" "abc", 5, 0), 5);
    assert_true(recv(fd, r, sizeof r, 0) <= 0);
    close(fd);
}

/* Polls dig until it prints want (at most ~5 s). */
static bool s_dig_until(int port, const char *args, const char *want)
{
    for (int i = 0; i < 50; i++) {
        if (strcmp(s_run(DIG "%s", port, args), want) == 0) return true;
        usleep(100 * 1000);
    }
    return false;
}

static void s_check_ready(void *arg) { *(bool *)arg = dns_server_ready(F.evs); }

static void test_event_stream(void **state)
{
    int port = dns_server_port(F.evs);
    /* erin comes with the snapshot; then frank's up and erin's down arrive
     * as events. */
    assert_true(s_dig_until(port, "erin.vpn.lab +short", "127.77.0.9\n"));
    bool ready = false;
    s_in_loop(s_check_ready, &ready);
    assert_true(ready);
    s_in_loop(s_event, (void *)1);
    assert_true(s_dig_until(port, "-x 127.77.0.10 +short", "frank.vpn.lab.\n"));
    s_in_loop(s_event, NULL);
    assert_true(s_dig_until(port, "erin.vpn.lab +short", ""));
    assert_string_equal(s_run(DIG "frank.vpn.lab +short", port), "127.77.0.10\n");
}

/* ---- truncated upstream answers for TCP clients ---- */

static double s_metric(const char *name)
{
    return rb_metric_value(rb_counter(name, NULL, ""));
}
#define RETRIES "reachback_dns_upstream_tcp_retries_total"
#define FAILURES "reachback_dns_upstream_tcp_failures_total"

static uint64_t s_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* dig's header flags ("qr aa tc rd ra"), from its ";; flags:" line. */
static const char *s_flags(const char *dig_out)
{
    static char flags[64];
    const char *p = strstr(dig_out, ";; flags:");
    assert_non_null(p);
    p += strlen(";; flags:");
    size_t n = strcspn(p, ";");
    assert_true(n < sizeof flags);
    memcpy(flags, p, n);
    flags[n] = '\0';
    return flags;
}

typedef struct {
    dns_server_t **out;
    const char *upstream;
} new_server_t;

static void s_new_server(void *arg)
{
    new_server_t *n = arg;
    *n->out = s_server("vpn.lab", "", n->upstream);
}

/* Starts *out (in the loop) forwarding to an upstream on 127.0.0.1:up;
 * returns its port. */
static int s_forwarding_server(dns_server_t **out, int up)
{
    char upstream[64];
    snprintf(upstream, sizeof upstream, "127.0.0.1:%d", up);
    new_server_t ns = {out, upstream};
    s_in_loop(s_new_server, &ns);
    return dns_server_port(*out);
}

/* A port free for both UDP and TCP on 127.0.0.1 (for a moment). */
static int s_free_port(void)
{
    for (int i = 0; i < 16; i++) {
        int port;
        int u = s_udp_socket(&port);
        int t = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET,
                                .sin_port = htons((uint16_t)port),
                                .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        int ok = bind(t, (struct sockaddr *)&a, sizeof a) == 0;
        close(u);
        close(t);
        if (ok) return port;
    }
    fail_msg("no free port");
    return -1;
}

#define DNSMASQ "/usr/sbin/dnsmasq"
#define TXT_RECORDS 24

/* Starts dnsmasq with TXT_RECORDS TXT records of 240 bytes for big.example
 * (about 6 KB): --edns-packet-max=512 makes its UDP answers truncated (TC,
 * a few records), while over TCP it answers in full. Returns its port. */
static int s_dnsmasq_start(void)
{
    static char txt[TXT_RECORDS][300], port_opt[32];
    char *argv[16 + TXT_RECORDS];
    for (int attempt = 0; attempt < 5; attempt++) {
        int port = s_free_port();
        int n = 0;
        snprintf(port_opt, sizeof port_opt, "--port=%d", port);
        argv[n++] = DNSMASQ;
        argv[n++] = "--no-daemon";
        argv[n++] = "--conf-file=/dev/null";
        argv[n++] = "--no-resolv";
        argv[n++] = "--no-hosts";
        argv[n++] = port_opt;
        argv[n++] = "--listen-address=127.0.0.1";
        argv[n++] = "--bind-interfaces";
        argv[n++] = "--edns-packet-max=512";
        argv[n++] = "--pid-file=";
        argv[n++] = "--log-facility=-";
        for (int i = 0; i < TXT_RECORDS; i++) {
            snprintf(txt[i], sizeof txt[i], "--txt-record=big.example,r%02d-%0236d", i, i);
            argv[n++] = txt[i];
        }
        argv[n] = NULL;
        posix_spawn_file_actions_t fa;
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
        posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
        extern char **environ;
        int rc = posix_spawn(&F.dnsmasq, DNSMASQ, &fa, NULL, argv, environ);
        posix_spawn_file_actions_destroy(&fa);
        assert_int_equal(rc, 0);
        /* Ready when it answers; gone when the port was taken after all. */
        uint8_t r[1500];
        for (int i = 0; i < 50; i++) {
            int st;
            if (waitpid(F.dnsmasq, &st, WNOHANG) == F.dnsmasq) {
                F.dnsmasq = 0;
                break;
            }
            if (s_ask(port, 1, "big.example", DNS_TYPE_TXT, 0, r, sizeof r) > 12) return port;
            usleep(100 * 1000);
        }
        s_dnsmasq_stop();
    }
    fail_msg("dnsmasq did not start");
    return -1;
}

static void s_dnsmasq_stop(void)
{
    if (F.dnsmasq <= 0) return;
    kill(F.dnsmasq, SIGTERM);
    waitpid(F.dnsmasq, NULL, 0);
    F.dnsmasq = 0;
}

/* Writes one length-prefixed query for name/type with id (and an OPT
 * advertising edns bytes unless it is 0). */
static void s_tcp_query_edns(int fd, uint16_t id, const char *name, uint16_t type, uint16_t edns)
{
    uint8_t buf[600];
    size_t n = dns_wire_build_query(buf + 2, sizeof buf - 2, id, name, type, edns);
    assert_true(n > 0);
    buf[0] = (uint8_t)(n >> 8);
    buf[1] = (uint8_t)n;
    assert_int_equal(send(fd, buf, n + 2, 0), (ssize_t)n + 2);
}

static void s_tcp_query(int fd, uint16_t id, const char *name, uint16_t type)
{
    s_tcp_query_edns(fd, id, name, type, 0);
}

static void test_upstream_tcp_retry(void **state)
{
    if (access(DNSMASQ, X_OK) != 0)
        fail_msg("%s is missing: scripts/install-deps installs dnsmasq-base", DNSMASQ);
    int up = s_dnsmasq_start();
    int port = s_forwarding_server(&F.txt, up);
    double retries = s_metric(RETRIES), failures = s_metric(FAILURES);

    /* The set-up: dnsmasq itself truncates over UDP, even when asked for
     * 4096 bytes as we ask it. */
    const char *o = s_run(DIG "+notcp +ignore +bufsize=4096 big.example TXT", up);
    assert_non_null(strstr(s_flags(o), " tc"));

    /* Over TCP through us: every record, no TC. */
    o = s_run(DIG "+tcp big.example TXT", port);
    assert_non_null(strstr(o, "status: NOERROR"));
    assert_non_null(strstr(o, "ANSWER: 24,"));
    assert_null(strstr(s_flags(o), " tc"));
    o = s_run(DIG "+tcp big.example TXT +short", port);
    assert_int_equal(s_lines(o), TXT_RECORDS);
    for (int i = 0; i < TXT_RECORDS; i++) {
        char want[16];
        snprintf(want, sizeof want, "\"r%02d-", i);
        assert_non_null(strstr(o, want));
    }
    /* A TCP client without EDNS: the whole answer, and not our OPT. */
    o = s_run(DIG "+tcp +noedns big.example TXT", port);
    assert_non_null(strstr(o, "ANSWER: 24,"));
    assert_null(strstr(s_flags(o), " tc"));
    assert_null(strstr(o, "OPT PSEUDOSECTION"));
    /* A UDP client gets the truncated answer as before, and its own retry
     * over TCP (dig's fallback) then gets everything. */
    o = s_run(DIG "+notcp +ignore big.example TXT", port);
    assert_non_null(strstr(s_flags(o), " tc"));
    o = s_run(DIG "+notcp big.example TXT +short", port);
    assert_int_equal(s_lines(o), TXT_RECORDS);
    assert_true(s_metric(RETRIES) - retries == 4);

    /* Many pipelined on one connection: each answer whole, to its id. */
    int fd = s_tcp_connect(port);
    for (int i = 0; i < 10; i++)
        s_tcp_query(fd, (uint16_t)(500 + i), "big.example", DNS_TYPE_TXT);
    bool seen[10] = {false};
    static uint8_t r[65536];
    for (int i = 0; i < 10; i++) {
        ssize_t n = s_tcp_read(fd, r, sizeof r);
        assert_true(n > 4096);
        int id = r[0] << 8 | r[1];
        assert_true(id >= 500 && id < 510 && !seen[id - 500]);
        seen[id - 500] = true;
        assert_int_equal(r[2] & 0x02, 0); /* no TC */
        assert_int_equal(r[3] & 0xf, 0);
        assert_int_equal(r[6] << 8 | r[7], TXT_RECORDS);
    }
    close(fd);
    assert_true(s_metric(RETRIES) - retries == 14);
    assert_true(s_metric(FAILURES) == failures);
    s_dnsmasq_stop();
}

/* The hostile upstream: over UDP every answer is TC without records; over
 * TCP it does what hostile_mode says. */
enum { H_GOOD, H_GARBAGE, H_TINY, H_SHORT, H_CLOSE, H_BADID, H_OTHERQ, H_STALL, H_BIG };
#define H_BIG_LEN 60000 /* the answer's length in H_BIG: padded with zeros */

/* Blocking, and the messages are small: one send writes it all. */
static void s_send_all(int fd, const void *p, size_t n)
{
    (void)!send(fd, p, n, MSG_NOSIGNAL);
}

/* Answers one accepted connection; returns true when it keeps it open. */
static bool s_hostile_conn(int fd)
{
    struct timeval tv = {2, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    uint8_t in[1024], out[1024];
    ssize_t n = s_tcp_read(fd, in, sizeof in);
    dns_query_t q;
    if (n < 12 || dns_wire_parse_query(in, (size_t)n, &q) != 0) return false;
    dns_writer_t w;
    dns_writer_begin(&w, out + 2, sizeof out - 2, &q, 0, false);
    dns_writer_a(&w, DNS_SEC_ANSWER, q.qname, q.qname_len, 60, 0x0a090807);
    size_t len = dns_writer_finish(&w);
    out[0] = (uint8_t)(len >> 8);
    out[1] = (uint8_t)len;
    switch (atomic_load(&F.hostile_mode)) {
    case H_GOOD:
        break;
    case H_GARBAGE:
        memset(out + 2, 0xff, 64);
        out[0] = 0;
        out[1] = 64;
        len = 64;
        break;
    case H_TINY:
        out[0] = 0;
        out[1] = 5;
        memcpy(out + 2, "abcde", 5);
        len = 5;
        break;
    case H_SHORT: /* claims 4096, sends less, closes */
        out[0] = 0x10;
        out[1] = 0;
        break;
    case H_CLOSE:
        return false;
    case H_BADID:
        out[3] ^= 1;
        break;
    case H_OTHERQ:
        out[2 + 13] = out[2 + 13] == 'x' ? 'y' : 'x';
        break;
    case H_STALL: /* claims more, sends less, stays */
        out[0] = 0x01;
        s_send_all(fd, out, 2 + 12);
        return true;
    case H_BIG: {
        static uint8_t big[2 + H_BIG_LEN];
        memset(big, 0, sizeof big);
        memcpy(big, out, 2 + len);
        big[0] = (uint8_t)(H_BIG_LEN >> 8);
        big[1] = (uint8_t)H_BIG_LEN;
        for (size_t off = 0; off < sizeof big;) {
            ssize_t k = send(fd, big + off, sizeof big - off, MSG_NOSIGNAL);
            if (k <= 0) break;
            off += (size_t)k;
        }
        return false;
    }
    }
    s_send_all(fd, out, 2 + len);
    return false;
}

static void *s_hostile_main(void *arg)
{
    int held[128], nheld = 0, total = 0;
    for (;;) {
        struct pollfd p[3 + 128] = {
            {F.hostile_stop[0], POLLIN, 0}, {F.hostile_udp, POLLIN, 0}, {F.hostile_tcp, POLLIN, 0}};
        for (int i = 0; i < nheld; i++)
            p[3 + i] = (struct pollfd){held[i], POLLIN, 0};
        if (poll(p, (nfds_t)(3 + nheld), -1) < 0) continue;
        /* A held connection our server closed (EOF): let it go. */
        for (int i = nheld - 1; i >= 0; i--) {
            char b;
            if (!p[3 + i].revents || recv(held[i], &b, 1, MSG_DONTWAIT) > 0) continue;
            close(held[i]);
            held[i] = held[--nheld];
            atomic_store(&F.hostile_open, nheld);
        }
        if (p[0].revents) {
            /* "r": close the listener (connections are refused), else stop. */
            char c = 0;
            if (read(F.hostile_stop[0], &c, 1) == 1 && c == 'r' && F.hostile_tcp >= 0) {
                close(F.hostile_tcp);
                F.hostile_tcp = -1;
                atomic_store(&F.hostile_refusing, true);
                continue;
            }
            break;
        }
        if (p[1].revents) {
            uint8_t in[2048];
            struct sockaddr_storage from;
            socklen_t fl = sizeof from;
            ssize_t n = recvfrom(F.hostile_udp, in, sizeof in, 0, (struct sockaddr *)&from, &fl);
            dns_query_t q;
            if (n > 0 && dns_wire_parse_query(in, (size_t)n, &q) == 0) {
                /* Header and question only: QR and TC, no records. */
                size_t len = 12u + q.qname_len + 4u;
                in[2] |= 0x82;
                memset(in + 6, 0, 6);
                sendto(F.hostile_udp, in, len, 0, (struct sockaddr *)&from, fl);
            }
        }
        if (p[2].revents) {
            int fd = accept(F.hostile_tcp, NULL, NULL);
            if (fd < 0) continue;
            if (s_hostile_conn(fd) && nheld < 128) {
                held[nheld++] = fd;
                atomic_store(&F.hostile_held, ++total);
                atomic_store(&F.hostile_open, nheld);
            } else
                close(fd);
        }
    }
    for (int i = 0; i < nheld; i++)
        close(held[i]);
    return NULL;
}

static int s_hostile_start(void)
{
    int port = 0;
    for (int i = 0; i < 16; i++) {
        F.hostile_udp = s_udp_socket(&port);
        fcntl(F.hostile_udp, F_SETFL, 0);
        F.hostile_tcp = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET,
                                .sin_port = htons((uint16_t)port),
                                .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        if (bind(F.hostile_tcp, (struct sockaddr *)&a, sizeof a) == 0 &&
            listen(F.hostile_tcp, 128) == 0)
            break;
        close(F.hostile_udp);
        close(F.hostile_tcp);
        port = 0;
    }
    assert_true(port > 0);
    assert_int_equal(pipe(F.hostile_stop), 0);
    atomic_store(&F.hostile_mode, H_GOOD);
    assert_int_equal(pthread_create(&F.hostile_thread, NULL, s_hostile_main, NULL), 0);
    F.hostile_running = true;
    return port;
}

static void s_hostile_stop(void)
{
    if (!F.hostile_running) return;
    assert_int_equal(write(F.hostile_stop[1], "x", 1), 1);
    pthread_join(F.hostile_thread, NULL);
    F.hostile_running = false;
    close(F.hostile_udp);
    if (F.hostile_tcp >= 0) close(F.hostile_tcp);
    close(F.hostile_stop[0]);
    close(F.hostile_stop[1]);
}

/* Asks hostile.example over TCP on fd; returns the rcode and how long the
 * answer took. */
static int s_hostile_ask(int fd, uint16_t id, uint64_t *ms)
{
    static uint8_t r[65536];
    uint64_t t0 = s_ms();
    s_tcp_query(fd, id, "hostile.example", DNS_TYPE_A);
    ssize_t n = s_tcp_read(fd, r, sizeof r);
    *ms = s_ms() - t0;
    assert_true(n >= 12);
    assert_int_equal(r[0] << 8 | r[1], id);
    return r[3] & 0xf;
}

static void test_upstream_tcp_hostile(void **state)
{
    int up = s_hostile_start();
    int port = s_forwarding_server(&F.hostile, up);
    double retries = s_metric(RETRIES), failures = s_metric(FAILURES);

    /* A good TCP answer first: the retry path works with this upstream. */
    const char *o = s_run(DIG "+tcp hostile.example A +short", port);
    assert_string_equal(o, "10.9.8.7\n");
    /* Each kind of bad answer: SERVFAIL to the client at once (well before
     * the 2 s forward timeout), on a connection that keeps working. */
    int fd = s_tcp_connect(port);
    const int modes[] = {H_GARBAGE, H_TINY, H_SHORT, H_CLOSE, H_BADID, H_OTHERQ};
    uint64_t ms;
    for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++) {
        atomic_store(&F.hostile_mode, modes[i]);
        assert_int_equal(s_hostile_ask(fd, (uint16_t)(100 + i), &ms), DNS_RCODE_SERVFAIL);
        assert_true(ms < 1500);
        atomic_store(&F.hostile_mode, H_GOOD);
        assert_int_equal(s_hostile_ask(fd, (uint16_t)(200 + i), &ms), DNS_RCODE_NOERROR);
    }
    /* A length larger than what comes, on a connection left open: the
     * forward timeout answers. */
    atomic_store(&F.hostile_mode, H_STALL);
    assert_int_equal(s_hostile_ask(fd, 300, &ms), DNS_RCODE_SERVFAIL);
    assert_true(ms >= 1500);
    assert_true(s_metric(RETRIES) - retries == 14);
    assert_true(s_metric(FAILURES) - failures == 7);

    /* One client may have 4 retries open: its fifth waits for one of them
     * to end (here: the stalled ones time out), and is then answered
     * within its own deadline; another client is served at once. */
    static uint8_t r[65536];
    int held0 = atomic_load(&F.hostile_held);
    for (int i = 0; i < 4; i++)
        s_tcp_query(fd, (uint16_t)(400 + i), "hostile.example", 1);
    for (int i = 0; i < 200 && atomic_load(&F.hostile_held) < held0 + 4; i++)
        usleep(10 * 1000);
    assert_int_equal(atomic_load(&F.hostile_held), held0 + 4);
    atomic_store(&F.hostile_mode, H_GOOD);
    usleep(500 * 1000);
    s_tcp_query(fd, 404, "hostile.example", 1);
    int other = s_tcp_connect(port);
    assert_int_equal(s_hostile_ask(other, 405, &ms), DNS_RCODE_NOERROR);
    assert_true(ms < 1000);
    /* 404 waited until one of the four timed out (freeing a connection
     * of this client's): at least one SERVFAIL comes before its answer. */
    int pos404 = -1;
    for (int i = 0; i < 5; i++) {
        ssize_t n = s_tcp_read(fd, r, sizeof r);
        assert_true(n >= 12);
        int id = r[0] << 8 | r[1];
        if (id == 404) pos404 = i;
        assert_int_equal(r[3] & 0xf, id == 404 ? DNS_RCODE_NOERROR : DNS_RCODE_SERVFAIL);
    }
    assert_true(pos404 >= 1);
    close(other);
    assert_true(s_metric(FAILURES) - failures == 7 + 4);

    /* At most 32 at once over all clients: eight clients with 4 stalled
     * each hold them all, and a ninth client's query waits its turn. */
    int busy[8];
    held0 = atomic_load(&F.hostile_held);
    atomic_store(&F.hostile_mode, H_STALL);
    for (int c = 0; c < 8; c++) {
        busy[c] = s_tcp_connect(port);
        for (int i = 0; i < 4; i++)
            s_tcp_query(busy[c], (uint16_t)(700 + 4 * c + i), "hostile.example", 1);
    }
    for (int i = 0; i < 300 && atomic_load(&F.hostile_held) < held0 + 32; i++)
        usleep(10 * 1000);
    assert_int_equal(atomic_load(&F.hostile_held), held0 + 32);
    atomic_store(&F.hostile_mode, H_GOOD);
    usleep(500 * 1000);
    int ninth = s_tcp_connect(port);
    assert_int_equal(s_hostile_ask(ninth, 800, &ms), DNS_RCODE_NOERROR);
    close(ninth);
    /* It was answered only once a stalled one had timed out (they may do
     * so on different ticks): some busy client has its SERVFAIL already. */
    int readable = 0;
    for (int c = 0; c < 8; c++) {
        struct pollfd pf = {busy[c], POLLIN, 0};
        readable += poll(&pf, 1, 0) == 1;
    }
    assert_true(readable >= 1);
    for (int c = 0; c < 8; c++) {
        for (int i = 0; i < 4; i++) {
            assert_true(s_tcp_read(busy[c], r, sizeof r) >= 12);
            assert_int_equal(r[3] & 0xf, DNS_RCODE_SERVFAIL);
        }
        close(busy[c]);
    }
    assert_true(s_metric(FAILURES) - failures == 7 + 4 + 32);

    /* A client that asks for big answers and does not read them: answers
     * to queries already taken pile up past what reading stops at; past
     * 1 MiB (and the kernel's buffers) the client is closed, not kept. */
    atomic_store(&F.hostile_mode, H_BIG);
    int slow = socket(AF_INET, SOCK_STREAM, 0);
    int small = 4096;
    setsockopt(slow, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(connect(slow, (struct sockaddr *)&sa, sizeof sa), 0);
    const int nbig = 150; /* 9 MB of answers */
    for (int i = 0; i < nbig; i++)
        s_tcp_query_edns(slow, (uint16_t)(900 + i), "hostile.example", DNS_TYPE_A, 4096);
    usleep(3000 * 1000); /* every retry is over (answered or not) */
    struct timeval rtv = {2, 0};
    setsockopt(slow, SOL_SOCKET, SO_RCVTIMEO, &rtv, sizeof rtv);
    int got = 0;
    while (got < nbig && s_tcp_read(slow, r, sizeof r) >= 12)
        got++;
    /* Closed by the server (EOF or reset), not merely quiet. */
    char b;
    ssize_t k = recv(slow, &b, 1, 0);
    assert_true(k == 0 || (k < 0 && errno == ECONNRESET));
    assert_true(got < nbig);
    close(slow);

    /* A client that goes away gives its retries' connections back at
     * once, not at their deadline (2 s): else closing and coming back
     * would hold them all. */
    atomic_store(&F.hostile_mode, H_STALL);
    held0 = atomic_load(&F.hostile_held);
    int gone = s_tcp_connect(port);
    for (int i = 0; i < 4; i++)
        s_tcp_query(gone, (uint16_t)(950 + i), "hostile.example", 1);
    for (int i = 0; i < 200 && atomic_load(&F.hostile_held) < held0 + 4; i++)
        usleep(10 * 1000);
    assert_int_equal(atomic_load(&F.hostile_held), held0 + 4);
    assert_true(atomic_load(&F.hostile_open) >= 4);
    uint64_t closed_at = s_ms();
    close(gone);
    for (int i = 0; i < 300 && atomic_load(&F.hostile_open) > 0; i++)
        usleep(5 * 1000);
    assert_int_equal(atomic_load(&F.hostile_open), 0);
    assert_true(s_ms() - closed_at < 1000);

    /* And afterwards the server still serves: the retry path, and UDP
     * clients still see the TC answer. */
    atomic_store(&F.hostile_mode, H_GOOD);
    assert_int_equal(s_hostile_ask(fd, 500, &ms), DNS_RCODE_NOERROR);
    o = s_run(DIG "+notcp +ignore hostile.example A", port);
    assert_non_null(strstr(s_flags(o), " tc"));
    o = s_run(DIG "+tcp hostile.example A +short", port);
    assert_string_equal(o, "10.9.8.7\n");

    /* An upstream that answers over UDP only: the refused connection is
     * SERVFAIL at once. */
    assert_int_equal(write(F.hostile_stop[1], "r", 1), 1);
    for (int i = 0; i < 100 && !atomic_load(&F.hostile_refusing); i++)
        usleep(10 * 1000);
    assert_true(atomic_load(&F.hostile_refusing));
    assert_int_equal(s_hostile_ask(fd, 600, &ms), DNS_RCODE_SERVFAIL);
    assert_true(ms < 1500);
    assert_true(s_metric(FAILURES) - failures == 7 + 4 + 32 + 1);
    close(fd);
    s_hostile_stop();
}

static void test_metrics(void **state)
{
    /* Counters are process-wide, shared by the servers of this test. */
    const char *rc[] = {"NOERROR", "NXDOMAIN", "REFUSED", "FORMERR", "SERVFAIL", "NOTIMP"};
    for (size_t i = 0; i < 6; i++) {
        char label[32];
        snprintf(label, sizeof label, "rcode=\"%s\"", rc[i]);
        assert_true(rb_metric_value(rb_counter("reachback_dns_queries_total", label, "")) > 0);
    }
    assert_true(rb_metric_value(rb_counter("reachback_dns_forwarded_total", NULL, "")) > 20);
    assert_true(rb_metric_value(rb_counter("reachback_dns_dropped_total", NULL, "")) >= 2);
}

/* One TCP client cannot take every forward slot: past 64 queries waiting
 * upstream, its further queries wait in its buffer, however long. Against a silent
 * upstream, 2100 queries in one connection give 64 SERVFAILs at the 2 s
 * timeout (without the cap: 2048 then, and the rest at once for lack of
 * room), and a UDP client asking meanwhile is forwarded too: its SERVFAIL
 * is the timeout's, not the immediate "no room" one. */
static void test_tcp_client_forward_cap(void **state)
{
    int port = dns_server_port(F.dead);
    int fd = s_tcp_connect(port);
    enum { QUERIES = 2100 };
    uint8_t *all = malloc(QUERIES * 64);
    assert_non_null(all);
    size_t len = 0;
    for (int i = 0; i < QUERIES; i++) {
        char name[32];
        snprintf(name, sizeof name, "n%d.example.com", i);
        size_t n = dns_wire_build_query(all + len + 2, 62, (uint16_t)(i + 1), name, DNS_TYPE_A, 0);
        assert_true(n > 0);
        all[len] = (uint8_t)(n >> 8);
        all[len + 1] = (uint8_t)n;
        len += 2 + n;
    }
    uint64_t t0 = s_ms();
    assert_int_equal(send(fd, all, len, 0), (ssize_t)len);
    free(all);
    uint8_t r[DNS_TCP_MAX];
    ssize_t n = s_ask(port, 7, "udp.example.com", DNS_TYPE_A, 0, r, sizeof r);
    uint64_t udp_ms = s_ms() - t0;
    assert_true(n >= 12);
    assert_int_equal(r[3] & 0xf, DNS_RCODE_SERVFAIL);
    assert_true(udp_ms >= 1500);
    int got = 0, at_3s = -1;
    /* Rounds of 64 end every 2-2.25 s (the timeout, then the 250 ms tick)
     * and the server reads on: the 6th by 13.5 s, past the 10 s after
     * which a client that sends nothing is closed as idle. The queries
     * held at the cap are the server's work, not the client idling. */
    while (s_ms() - t0 < 14500) {
        if (at_3s < 0 && s_ms() - t0 >= 3300) at_3s = got;
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, 100) != 1) continue;
        if (s_tcp_read(fd, r, sizeof r) < 12) break;
        assert_int_equal(r[3] & 0xf, DNS_RCODE_SERVFAIL);
        got++;
    }
    assert_int_equal(at_3s, 64);
    assert_true(got >= 6 * 64);
    close(fd);
}

/* A TCP connection from src (an address on lo) to the server's port. */
static int s_tcp_connect_from(int port, const char *src)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in b = {.sin_family = AF_INET};
    assert_int_equal(inet_pton(AF_INET, src, &b.sin_addr), 1);
    assert_int_equal(bind(fd, (struct sockaddr *)&b, sizeof b), 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    struct timeval tv = {3, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
}

/* Asks for alice over fd: true when the answer comes. */
static bool s_tcp_answers(int fd)
{
    uint8_t q[128], r[512];
    size_t n = dns_wire_build_query(q + 2, sizeof q - 2, 0x5151, "alice.vpn.lab", DNS_TYPE_A, 0);
    q[0] = (uint8_t)(n >> 8);
    q[1] = (uint8_t)n;
    if (send(fd, q, n + 2, MSG_NOSIGNAL) != (ssize_t)(n + 2)) return false;
    return s_tcp_read(fd, r, sizeof r) >= 12 && r[0] == 0x51 && r[1] == 0x51;
}

/* One address may hold 32 of the 256 TCP connections: its 33rd is closed
 * at once and counted, while another address is still served, and a
 * connection that ends makes room again. */
static void test_tcp_connections_per_address(void **state)
{
    int port = dns_server_port(F.srv);
    double refused = s_metric("reachback_dns_tcp_refused_total");
    int fds[32];
    for (int i = 0; i < 32; i++) {
        fds[i] = s_tcp_connect_from(port, "127.0.0.41");
        assert_true(s_tcp_answers(fds[i]));
    }
    int extra = s_tcp_connect_from(port, "127.0.0.41");
    assert_false(s_tcp_answers(extra));
    close(extra);
    assert_true(s_metric("reachback_dns_tcp_refused_total") >= refused + 1);
    int other = s_tcp_connect_from(port, "127.0.0.42");
    assert_true(s_tcp_answers(other));
    close(other);
    close(fds[0]);
    bool again = false;
    for (int tries = 0; tries < 50 && !again; tries++) {
        usleep(20000); /* until the server has seen the close */
        int fd = s_tcp_connect_from(port, "127.0.0.41");
        again = s_tcp_answers(fd);
        close(fd);
    }
    assert_true(again);
    for (int i = 1; i < 32; i++)
        close(fds[i]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_a_ptr_and_case),
        cmocka_unit_test(test_negative_answers),
        cmocka_unit_test(test_updates_visible),
        cmocka_unit_test(test_forwarding),
        cmocka_unit_test(test_truncation_and_tcp),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_event_stream),
        cmocka_unit_test(test_upstream_tcp_retry),
        cmocka_unit_test(test_upstream_tcp_hostile),
        cmocka_unit_test(test_metrics),
        cmocka_unit_test(test_tcp_client_forward_cap),
        cmocka_unit_test(test_tcp_connections_per_address),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
