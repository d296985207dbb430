/* client_streams: what the device accepts on its command line (--expose,
 * --forward, --socks), with the error a person sees for each mistake, and
 * the local listeners it opens; then, against a stand-in edge (a real TLS
 * listener in the same loop whose side the test plays), when a stream's
 * first frames go out: a forward's early bytes and half-close before the
 * open is answered, and an exposed stream's StreamResult{OK} held for its
 * first frame or the hold's end. The streams themselves run against a real
 * lab in tests/integration (test_expose, test_outbound, test_stream_close). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "client_streams.h"
#include "rb_frame.h"
#include "rb_log.h"
#include "rb_loop.h"
#include "rb_tconn.h"
#include "rb_tls.h"
#include "../tls_fixture.h"

static client_streams_t *s_new(rb_loop_t **loop)
{
    *loop = rb_loop_new();
    assert_non_null(*loop);
    client_streams_t *cs = client_streams_new(*loop);
    assert_non_null(cs);
    return cs;
}

static void s_free(client_streams_t *cs, rb_loop_t *loop)
{
    client_streams_destroy(&cs);
    assert_null(cs);
    client_streams_destroy(NULL);
    rb_loop_destroy(&loop);
}

static void test_expose_specs(void **state)
{
    rb_loop_t *loop;
    client_streams_t *cs = s_new(&loop);
    char err[256];
    const char *good[] = {"tcp:22", "tcp:5900=127.0.0.1:5901", "udp:5353=127.0.0.1:5454", "udp:22",
                          "tcp:65535=10.1.2.3:1"};
    for (size_t i = 0; i < sizeof good / sizeof *good; i++)
        assert_int_equal(client_streams_expose(cs, good[i], err, sizeof err), 0);
    const struct {
        const char *spec, *want;
    } bad[] = {
        {"sctp:22", "want tcp:PORT"},
        {"22", "want tcp:PORT"},
        {"tcp:0", "bad port"},
        {"tcp:65536", "bad port"},
        {"tcp:22x", "bad port"},
        {"tcp:", "bad port"},
        {"tcp:23=localhost:22", "IPv4:PORT"},
        {"tcp:23=127.0.0.1:0", "IPv4:PORT"},
        {"tcp:23=127.0.0.1:99999", "IPv4:PORT"},
        {"tcp:23=:22", "IPv4:PORT"},
        {"tcp:22", "exposed twice"},
        {"tcp:5900=127.0.0.1:7000", "exposed twice"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        err[0] = '\0';
        assert_int_equal(client_streams_expose(cs, bad[i].spec, err, sizeof err), -1);
        if (!strstr(err, bad[i].want) || !strstr(err, bad[i].spec))
            fail_msg("'%s': error '%s' lacks '%s'", bad[i].spec, err, bad[i].want);
    }
    s_free(cs, loop);
}

static void test_expose_limit(void **state)
{
    rb_loop_t *loop;
    client_streams_t *cs = s_new(&loop);
    char err[256], spec[32];
    for (int i = 1; i <= 64; i++) {
        snprintf(spec, sizeof spec, "tcp:%d", 1000 + i);
        assert_int_equal(client_streams_expose(cs, spec, err, sizeof err), 0);
    }
    assert_int_equal(client_streams_expose(cs, "tcp:2000", err, sizeof err), -1);
    assert_non_null(strstr(err, "at most 64"));
    s_free(cs, loop);
}

static void test_forward_and_socks_listen(void **state)
{
    rb_loop_t *loop;
    client_streams_t *cs = s_new(&loop);
    char err[256];
    assert_int_equal(client_streams_listener_port(cs, 0), -1);
    assert_int_equal(client_streams_forward(cs, "0:intranet.example:443", err, sizeof err), 0);
    assert_int_equal(client_streams_forward(cs, "127.0.0.1:0:10.0.0.1:22", err, sizeof err), 0);
    assert_int_equal(client_streams_socks(cs, "127.0.0.1:0", err, sizeof err), 0);
    assert_int_equal(client_streams_socks(cs, "0", err, sizeof err), 0);
    assert_int_equal(client_streams_forward(cs, "udp:0:dns.example:53", err, sizeof err), 0);
    /* The order they were given, each on a port of its own (the UDP one,
     * the fifth, may share its number with a TCP one: another protocol). */
    int p[5];
    for (int i = 0; i < 5; i++) {
        p[i] = client_streams_listener_port(cs, (size_t)i);
        assert_true(p[i] > 0);
        for (int k = 0; k < i && i < 4; k++)
            assert_int_not_equal(p[i], p[k]);
    }
    assert_int_equal(client_streams_listener_port(cs, 5), -1);
    /* A port taken already is a clear error, not a silent failure. */
    char spec[64];
    snprintf(spec, sizeof spec, "127.0.0.1:%d:host:80", p[0]);
    assert_int_equal(client_streams_forward(cs, spec, err, sizeof err), -1);
    assert_non_null(strstr(err, "cannot listen"));
    assert_int_equal(client_streams_count(cs), 0);
    s_free(cs, loop);
}

static void test_forward_socks_specs(void **state)
{
    rb_loop_t *loop;
    client_streams_t *cs = s_new(&loop);
    char err[256];
    const char *bad_fwd[] = {
        "22",          "1:2",       "0:host:0",       "0:host:70000", "0::80",
        "x:0:host:80", "0:host:8x", "999999:host:80", "1.2.3:0:h:80", "0:host:80:extra",
        "udp:",        "udp:0:h:0", "sctp:0:h:80",    "udp:53"};
    for (size_t i = 0; i < sizeof bad_fwd / sizeof *bad_fwd; i++) {
        err[0] = '\0';
        assert_int_equal(client_streams_forward(cs, bad_fwd[i], err, sizeof err), -1);
        if (!strstr(err, "[BIND:]LPORT:HOST:PORT"))
            fail_msg("--forward '%s': error '%s'", bad_fwd[i], err);
    }
    const char *bad_socks[] = {"", "x", "localhost:1080", "127.0.0.1:70000", "1.2.3.4.5:80"};
    for (size_t i = 0; i < sizeof bad_socks / sizeof *bad_socks; i++) {
        err[0] = '\0';
        assert_int_equal(client_streams_socks(cs, bad_socks[i], err, sizeof err), -1);
        if (!strstr(err, "[BIND:]PORT")) fail_msg("--socks '%s': error '%s'", bad_socks[i], err);
    }
    assert_int_equal(client_streams_listener_port(cs, 0), -1);
    s_free(cs, loop);
}

/* ---- against a stand-in edge ---- */

static SSL_CTX *s_sctx, *s_cctx;

static int s_tls_setup(void **state) { return tlsfx_pair_setup("streams", &s_sctx, &s_cctx); }

static int s_tls_teardown(void **state) { return tlsfx_pair_teardown(&s_sctx, &s_cctx); }

/* What the edge received, in order. */
typedef struct {
    char kind; /* 'O' StreamOpen, 'R' StreamResult, 'D' DATA, 'W' WINDOW, 'G' DATAGRAM */
    uint32_t id;
    int proto; /* StreamOpen: its proto, host and port */
    char host[32];
    uint32_t port;
    uint8_t flags;
    int err;
    char data[64];
    size_t len;
    uint64_t ms;
} rec_t;

typedef struct {
    rb_loop_t *loop;
    client_streams_t *cs;
    int lfd;
    rb_tconn_t *edge, *dev;
    int edge_fd;
    bool exposed; /* the device's Expose arrived: its tunnel is up */
    rec_t rec[32];
    int n;
    uint64_t data_bytes; /* DATA payload bytes the edge received, all of them */
    bool deaf_to_drained; /* the device's tunnel never reports it drained */
} rig_t;

static void s_edge_frame(rb_tconn_t *c, const rb_frame_t *f, void *arg)
{
    rig_t *r = arg;
    if (f->type == RB_FRAME_DATA) r->data_bytes += f->len;
    assert_true(r->n <= 32);
    if (r->n == 32) return; /* the first 32 are kept; a test that wants more counts them */
    rec_t *x = &r->rec[r->n];
    memset(x, 0, sizeof *x);
    x->ms = rb_now_ms();
    if (f->type == RB_FRAME_CONTROL) {
        Rb__Tunnel__TunnelControl *m = rb_frame_control(f);
        assert_non_null(m);
        if (m->msg_case == RB__TUNNEL__TUNNEL_CONTROL__MSG_EXPOSE) {
            r->exposed = true;
        } else if (m->msg_case == RB__TUNNEL__TUNNEL_CONTROL__MSG_STREAM_OPEN) {
            x->kind = 'O';
            x->id = m->stream_open->stream_id;
            x->proto = m->stream_open->proto;
            x->port = m->stream_open->port;
            snprintf(x->host, sizeof x->host, "%s",
                     m->stream_open->host ? m->stream_open->host : "");
        } else if (m->msg_case == RB__TUNNEL__TUNNEL_CONTROL__MSG_STREAM_RESULT) {
            x->kind = 'R';
            x->id = m->stream_result->stream_id;
            x->err = m->stream_result->error;
        }
        rb__tunnel__tunnel_control__free_unpacked(m, NULL);
        if (x->kind) r->n++;
        return;
    }
    x->kind = f->type == RB_FRAME_DATA       ? 'D'
              : f->type == RB_FRAME_WINDOW   ? 'W'
              : f->type == RB_FRAME_DATAGRAM ? 'G'
                                             : '?';
    x->id = f->stream_id;
    x->flags = f->flags;
    x->len = f->len;
    memcpy(x->data, f->payload, f->len < sizeof x->data ? f->len : sizeof x->data);
    r->n++;
}

static void s_edge_close(rb_tconn_t *c, rb_tconn_end_t end, const char *reason, void *arg) {}

static const rb_tconn_handlers_t s_edge_h = {NULL, s_edge_frame, s_edge_close, NULL};

static void s_edge_accept(rb_loop_t *loop, int fd, unsigned events, void *arg)
{
    rig_t *r = arg;
    int cfd = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    assert_true(cfd >= 0);
    r->edge_fd = cfd;
    r->edge = rb_tconn_accept(loop, s_sctx, cfd, "device", &s_edge_h, r);
    assert_non_null(r->edge);
}

static void s_dev_open(rb_tconn_t *c, void *arg)
{
    client_streams_tunnel(((rig_t *)arg)->cs, c);
}

static void s_dev_frame(rb_tconn_t *c, const rb_frame_t *f, void *arg)
{
    rig_t *r = arg;
    if (f->type != RB_FRAME_CONTROL) {
        client_streams_input(r->cs, f, NULL);
        return;
    }
    Rb__Tunnel__TunnelControl *m = rb_frame_control(f);
    assert_non_null(m);
    client_streams_input(r->cs, NULL, m);
    rb__tunnel__tunnel_control__free_unpacked(m, NULL);
}

static void s_dev_close(rb_tconn_t *c, rb_tconn_end_t end, const char *reason, void *arg)
{
    client_streams_tunnel(((rig_t *)arg)->cs, NULL);
}

static void s_dev_drained(rb_tconn_t *c, void *arg)
{
    rig_t *r = arg;
    if (!r->deaf_to_drained) client_streams_drained(r->cs);
}

static const rb_tconn_handlers_t s_dev_h = {s_dev_open, s_dev_frame, s_dev_close, s_dev_drained};

typedef bool(cond_fn)(rig_t *r, void *arg);

typedef struct {
    rig_t *r;
    cond_fn *fn;
    void *arg;
    uint64_t deadline;
    bool met;
} until_t;

static void s_until_tick(rb_loop_t *loop, void *arg)
{
    until_t *u = arg;
    if ((u->met = u->fn(u->r, u->arg)) || rb_now_ms() >= u->deadline) rb_loop_stop(loop);
}

/* Runs the loop until fn holds (true) or ms have passed (false). */
static bool s_run_until(rig_t *r, cond_fn *fn, void *arg, uint64_t ms)
{
    if (fn(r, arg)) return true;
    until_t u = {r, fn, arg, rb_now_ms() + ms, false};
    rb_timer_t *t = rb_loop_add_timer(r->loop, 1, true, s_until_tick, &u);
    assert_non_null(t);
    rb_loop_run(r->loop);
    rb_loop_cancel_timer(r->loop, t);
    return u.met;
}

static bool s_has_n(rig_t *r, void *arg)
{
    return r->n >= *(int *)arg;
}

/* Reads a local socket until EOF. */
typedef struct {
    int fd;
    char buf[64];
    size_t have;
} sink_t;

static bool s_drained(rig_t *r, void *arg)
{
    sink_t *k = arg;
    for (;;) {
        ssize_t n = recv(k->fd, k->buf + k->have, sizeof k->buf - k->have, MSG_DONTWAIT);
        if (n <= 0) return n == 0;
        k->have += (size_t)n;
    }
}

/* Accepts on a listening socket (non-blocking). */
typedef struct {
    int lfd, fd;
} svc_t;

static bool s_accepted(rig_t *r, void *arg)
{
    svc_t *v = arg;
    if (v->fd < 0) v->fd = accept4(v->lfd, NULL, NULL, SOCK_CLOEXEC);
    return v->fd >= 0;
}

static bool s_is_exposed(rig_t *r, void *arg)
{
    return r->exposed;
}

/* A non-blocking listener on 127.0.0.1 and a port of its own. */
static int s_listen_any(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof a;
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(fd, 4), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &alen), 0);
    *port = ntohs(a.sin_port);
    return fd;
}

/* edge_rcvbuf: when not 0, the stand-in edge's receive buffer, fixed
 * (loopback's may grow to 32 MiB: a slow uplink needs a small one). */
static void s_rig_up_with(rig_t *r, int edge_rcvbuf)
{
    memset(r, 0, sizeof *r);
    r->loop = rb_loop_new();
    assert_non_null(r->loop);
    r->cs = client_streams_new(r->loop);
    assert_non_null(r->cs);
    int port;
    r->lfd = s_listen_any(&port);
    if (edge_rcvbuf)
        assert_int_equal(
            setsockopt(r->lfd, SOL_SOCKET, SO_RCVBUF, &edge_rcvbuf, sizeof edge_rcvbuf), 0);
    assert_int_equal(rb_loop_add_fd(r->loop, r->lfd, RB_EV_READ, s_edge_accept, r), 0);
    char hp[32];
    snprintf(hp, sizeof hp, "127.0.0.1:%d", port);
    r->dev = rb_tconn_dial(r->loop, s_cctx, hp, "127.0.0.1", &s_dev_h, r);
    assert_non_null(r->dev);
}

static void s_rig_up(rig_t *r)
{
    s_rig_up_with(r, 0);
}

/* The tunnel comes up: call after the streams are configured. */
static void s_rig_connect(rig_t *r)
{
    assert_true(s_run_until(r, s_is_exposed, NULL, 5000));
}

/* A rig whose device has the forward spec, its tunnel up. */
static void s_rig_forwarding(rig_t *r, const char *spec, int edge_rcvbuf)
{
    s_rig_up_with(r, edge_rcvbuf);
    char err[256];
    if (client_streams_forward(r->cs, spec, err, sizeof err) < 0)
        fail_msg("--forward %s: %s", spec, err);
    s_rig_connect(r);
}

static void s_rig_down(rig_t *r)
{
    client_streams_destroy(&r->cs);
    rb_tconn_destroy(&r->dev);
    rb_tconn_destroy(&r->edge);
    rb_loop_del_fd(r->loop, r->lfd);
    close(r->lfd);
    rb_loop_destroy(&r->loop);
}

static int s_local_connect(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
                            .sin_port = htons((uint16_t)port)};
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    return fd;
}

static void s_edge_answer(rig_t *r, uint32_t id, Rb__Tunnel__StreamError err)
{
    Rb__Tunnel__TunnelControl m = RB__TUNNEL__TUNNEL_CONTROL__INIT;
    Rb__Tunnel__StreamResult sr = RB__TUNNEL__STREAM_RESULT__INIT;
    sr.stream_id = id;
    sr.error = err;
    m.msg_case = RB__TUNNEL__TUNNEL_CONTROL__MSG_STREAM_RESULT;
    m.stream_result = &sr;
    assert_int_equal(rb_tconn_send_control(r->edge, &m), 0);
}

static void s_edge_send_result(rig_t *r, uint32_t id)
{
    s_edge_answer(r, id, RB__TUNNEL__STREAM_ERROR__STREAM_OK);
}

/* A forward's local client speaks and half-closes at once: its bytes and
 * FIN follow the StreamOpen without waiting for the answer, and the
 * answer does not make them go out twice. */
static void test_forward_sends_before_the_answer(void **state)
{
    rig_t r;
    s_rig_forwarding(&r, "127.0.0.1:0:intranet.example:80", 0);
    int fd = s_local_connect(client_streams_listener_port(r.cs, 0));
    assert_int_equal(send(fd, "hello", 5, 0), 5);
    assert_int_equal(shutdown(fd, SHUT_WR), 0);
    int want = 3;
    assert_true(s_run_until(&r, s_has_n, &want, 5000));
    assert_int_equal(r.rec[0].kind, 'O');
    uint32_t id = r.rec[0].id;
    /* Bytes may come in more than one frame; the FIN ends them. */
    char got[16] = "";
    int i = 1;
    for (; i < r.n && r.rec[i].kind == 'D' && !(r.rec[i].flags & RB_FRAME_FIN); i++) {
        assert_int_equal(r.rec[i].id, id);
        strncat(got, r.rec[i].data, r.rec[i].len);
    }
    if (i == r.n) {
        want = i + 1;
        assert_true(s_run_until(&r, s_has_n, &want, 5000));
    }
    assert_int_equal(r.rec[i].kind, 'D');
    assert_int_equal(r.rec[i].flags, RB_FRAME_FIN);
    strncat(got, r.rec[i].data, r.rec[i].len);
    assert_string_equal(got, "hello");
    int before = r.n;

    /* Now the open is answered, and the server's reply comes back. */
    s_edge_send_result(&r, id);
    assert_int_equal(rb_tconn_send_frame(r.edge, RB_FRAME_DATA, RB_FRAME_FIN, id, "world", 5), 0);
    sink_t k = {.fd = fd};
    assert_true(s_run_until(&r, s_drained, &k, 5000));
    assert_int_equal(k.have, 5);
    assert_memory_equal(k.buf, "world", 5);
    /* Nothing was sent again after the answer. */
    for (int j = before; j < r.n; j++)
        if (r.rec[j].kind == 'D' && r.rec[j].id == id)
            fail_msg("DATA after the open, flags %u", r.rec[j].flags);
    close(fd);
    s_rig_down(&r);
}

/* A local UDP socket on 127.0.0.1 that sends to the forward on port. */
static int s_udp_sender(int port)
{
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
                            .sin_port = htons((uint16_t)port)};
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    return fd;
}

typedef struct {
    int fd;
    char buf[64];
    ssize_t n;
} dgram_t;

static bool s_dgram_in(rig_t *r, void *arg)
{
    dgram_t *d = arg;
    d->n = recv(d->fd, d->buf, sizeof d->buf - 1, MSG_DONTWAIT);
    return d->n >= 0;
}

static bool s_never(rig_t *r, void *arg)
{
    return false;
}

/* The index of the n-th record of kind k (n from 0), or -1. */
static int s_find(const rig_t *r, char k, int n)
{
    for (int i = 0; i < r->n; i++)
        if (r->rec[i].kind == k && n-- == 0) return i;
    return -1;
}

/* --forward udp: each local sender is a flow: StreamOpen{UDP, host, port},
 * its datagrams held until the answer and then sent in order, the
 * gateway's datagrams back to that sender; a reset flow or a refused open
 * is forgotten, and the sender's next datagram opens a new flow. */
static void test_forward_udp_flows(void **state)
{
    rig_t r;
    s_rig_forwarding(&r, "udp:127.0.0.1:0:alice.vpn.lab:5353", 0);
    int port = client_streams_listener_port(r.cs, 0);
    int u1 = s_udp_sender(port);
    assert_int_equal(send(u1, "q1", 2, 0), 2);
    assert_int_equal(send(u1, "q2", 2, 0), 2);
    int want = 1;
    assert_true(s_run_until(&r, s_has_n, &want, 5000));
    assert_int_equal(r.rec[0].kind, 'O');
    assert_int_equal(r.rec[0].proto, RB__TUNNEL__PROTO__PROTO_UDP);
    assert_string_equal(r.rec[0].host, "alice.vpn.lab");
    assert_int_equal(r.rec[0].port, 5353);
    uint32_t id1 = r.rec[0].id;
    /* Nothing before the answer: the gateway may still be looking the name up. */
    s_run_until(&r, s_never, NULL, 100);
    assert_int_equal(r.n, 1);
    assert_int_equal(client_streams_count(r.cs), 1);

    s_edge_send_result(&r, id1);
    want = 3;
    assert_true(s_run_until(&r, s_has_n, &want, 5000));
    for (int i = 1; i <= 2; i++) {
        assert_int_equal(r.rec[i].kind, 'G');
        assert_int_equal(r.rec[i].id, id1);
        assert_int_equal(r.rec[i].len, 2);
        assert_memory_equal(r.rec[i].data, i == 1 ? "q1" : "q2", 2);
    }
    assert_int_equal(rb_tconn_send_frame(r.edge, RB_FRAME_DATAGRAM, 0, id1, "a1", 2), 0);
    dgram_t d = {.fd = u1};
    assert_true(s_run_until(&r, s_dgram_in, &d, 5000));
    assert_int_equal(d.n, 2);
    assert_memory_equal(d.buf, "a1", 2);

    /* A second sender is a second flow; refused, it is forgotten. */
    int u2 = s_udp_sender(port);
    assert_int_equal(send(u2, "p1", 2, 0), 2);
    want = 4;
    assert_true(s_run_until(&r, s_has_n, &want, 5000));
    int o2 = s_find(&r, 'O', 1);
    assert_true(o2 > 0);
    assert_int_not_equal(r.rec[o2].id, id1);
    assert_int_equal(client_streams_count(r.cs), 2);
    s_edge_answer(&r, r.rec[o2].id, RB__TUNNEL__STREAM_ERROR__STREAM_NOT_ALLOWED);
    s_run_until(&r, s_never, NULL, 100);
    assert_int_equal(client_streams_count(r.cs), 1);
    assert_int_equal(s_find(&r, 'G', 2), -1); /* p1 was never sent */

    /* The gateway ends the first flow (idle); u1's next datagram opens anew. */
    assert_int_equal(rb_tconn_send_frame(r.edge, RB_FRAME_DATA, RB_FRAME_RST, id1, NULL, 0), 0);
    s_run_until(&r, s_never, NULL, 100);
    assert_int_equal(client_streams_count(r.cs), 0);
    assert_int_equal(send(u1, "q3", 2, 0), 2);
    want = r.n + 1;
    assert_true(s_run_until(&r, s_has_n, &want, 5000));
    int o3 = s_find(&r, 'O', 2);
    assert_true(o3 > 0);
    assert_int_not_equal(r.rec[o3].id, id1);
    close(u1);
    close(u2);
    s_rig_down(&r);
}

/* The edge opens stream 2 to exposed port 5900 (the service v listens
 * behind it), waits for the device's connect to reach v, and returns when
 * StreamOpen was sent. */
static uint64_t s_open_exposed(rig_t *r, svc_t *v)
{
    int port;
    v->fd = -1;
    v->lfd = s_listen_any(&port);
    char spec[64], err[256];
    snprintf(spec, sizeof spec, "tcp:5900=127.0.0.1:%d", port);
    assert_int_equal(client_streams_expose(r->cs, spec, err, sizeof err), 0);
    s_rig_connect(r);
    Rb__Tunnel__TunnelControl m = RB__TUNNEL__TUNNEL_CONTROL__INIT;
    Rb__Tunnel__StreamOpen o = RB__TUNNEL__STREAM_OPEN__INIT;
    o.stream_id = 2;
    o.proto = RB__TUNNEL__PROTO__PROTO_TCP;
    o.port = 5900;
    o.peer_addr = "10.0.0.7";
    o.peer_port = 40000;
    m.msg_case = RB__TUNNEL__TUNNEL_CONTROL__MSG_STREAM_OPEN;
    m.stream_open = &o;
    uint64_t t_open = rb_now_ms();
    assert_int_equal(rb_tconn_send_control(r->edge, &m), 0);
    assert_true(s_run_until(r, s_accepted, v, 5000));
    return t_open;
}

/* A service that answers at once: the OK goes right in front of its first
 * bytes, never behind them (the forwarder would end a stream whose FIN came
 * first as failed). */
static void test_exposed_ok_rides_with_the_first_frame(void **state)
{
    rig_t r;
    s_rig_up(&r);
    svc_t v;
    s_open_exposed(&r, &v);
    assert_int_equal(send(v.fd, "banner", 6, 0), 6);
    int want = 2;
    assert_true(s_run_until(&r, s_has_n, &want, 5000));
    assert_int_equal(r.rec[0].kind, 'R');
    assert_int_equal(r.rec[0].id, 2);
    assert_int_equal(r.rec[0].err, RB__TUNNEL__STREAM_ERROR__STREAM_OK);
    assert_int_equal(r.rec[1].kind, 'D');
    assert_int_equal(r.rec[1].id, 2);
    assert_int_equal(r.rec[1].len, 6);
    assert_memory_equal(r.rec[1].data, "banner", 6);
    close(v.fd);
    close(v.lfd);
    s_rig_down(&r);
}

/* A service that says nothing: the OK is held for CLIENT_OK_HOLD_MS (not
 * sent alone at once), then sent anyway. */
static void test_exposed_quiet_stream_gets_its_ok(void **state)
{
    rig_t r;
    s_rig_up(&r);
    svc_t v;
    uint64_t t_open = s_open_exposed(&r, &v);
    int want = 1;
    assert_true(s_run_until(&r, s_has_n, &want, 5000));
    assert_int_equal(r.rec[0].kind, 'R');
    assert_int_equal(r.rec[0].err, RB__TUNNEL__STREAM_ERROR__STREAM_OK);
    if (r.rec[0].ms - t_open < CLIENT_OK_HOLD_MS)
        fail_msg("the OK came %llu ms after the open, before the hold ended",
                 (unsigned long long)(r.rec[0].ms - t_open));
    assert_int_equal(r.n, 1);
    close(v.fd);
    close(v.lfd);
    s_rig_down(&r);
}

/* Runs the loop for ms, whatever happens. */
static void s_run_for(rig_t *r, uint64_t ms)
{
    s_run_until(r, s_never, NULL, ms);
}

/* Aborts a local socket: the other end sees RST, not FIN. */
static void s_reset_close(int fd)
{
    struct linger lg = {1, 0};
    assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg), 0);
    close(fd);
}

/* The frames of stream id after index from: bytes of DATA without flags,
 * and how many carried FIN and RST. */
static void s_tally(const rig_t *r, int from, uint32_t id, size_t *bytes, int *fins, int *rsts)
{
    *bytes = 0;
    *fins = *rsts = 0;
    for (int i = from; i < r->n; i++) {
        if (r->rec[i].kind != 'D' || r->rec[i].id != id) continue;
        *bytes += r->rec[i].len;
        if (r->rec[i].flags & RB_FRAME_FIN) (*fins)++;
        if (r->rec[i].flags & RB_FRAME_RST) (*rsts)++;
    }
}

static bool s_has_rst(rig_t *r, void *arg)
{
    size_t bytes;
    int fins, rsts;
    s_tally(r, 0, *(uint32_t *)arg, &bytes, &fins, &rsts);
    return rsts > 0;
}

/* A local client that sends more than a frame before the open's answer,
 * then aborts: the gateway is told RST once (not a FIN, which would pass
 * a cut-off request for a whole one), and the client does not spin on
 * the hang-up meanwhile. */
static void test_local_reset_while_the_open_waits(void **state)
{
    static char big[RB_FRAME_MAX_DATA + 4096];
    memset(big, 'x', sizeof big);
    for (int socks = 0; socks <= 1; socks++) {
        rig_t r;
        if (socks) {
            s_rig_up(&r);
            char err[256];
            assert_int_equal(client_streams_socks(r.cs, "127.0.0.1:0", err, sizeof err), 0);
            s_rig_connect(&r);
        } else {
            s_rig_forwarding(&r, "127.0.0.1:0:intranet.example:80", 0);
        }
        int fd = s_local_connect(client_streams_listener_port(r.cs, 0));
        if (socks) {
            const uint8_t hello[] = {5, 1, 0};
            const uint8_t req[] = {5,   1,   0,   3,   16,  'i', 'n', 't', 'r', 'a', 'n', 'e',
                                   't', '.', 'e', 'x', 'a', 'm', 'p', 'l', 'e', 0,   80};
            assert_int_equal(send(fd, hello, sizeof hello, 0), (ssize_t)sizeof hello);
            assert_int_equal(send(fd, req, sizeof req, 0), (ssize_t)sizeof req);
        }
        assert_int_equal(send(fd, big, sizeof big, 0), (ssize_t)sizeof big);
        /* The open, and (a forward) its frame of early bytes. */
        int want = 1;
        assert_true(s_run_until(&r, s_has_n, &want, 5000));
        assert_int_equal(r.rec[0].kind, 'O');
        uint32_t id = r.rec[0].id;
        s_run_for(&r, 200);
        size_t bytes;
        int fins, rsts;
        s_tally(&r, 1, id, &bytes, &fins, &rsts);
        assert_int_equal(bytes, socks ? 0 : RB_FRAME_MAX_DATA);
        assert_int_equal(fins + rsts, 0);

        s_reset_close(fd);
        assert_true(s_run_until(&r, s_has_rst, &id, 5000));
        s_run_for(&r, 200);
        s_tally(&r, 1, id, &bytes, &fins, &rsts);
        assert_int_equal(rsts, 1);
        assert_int_equal(fins, 0);
        s_rig_down(&r);
    }
}

/* Local datagrams wait for the tunnel at most 1 MiB deep: an edge that
 * stops reading (or an uplink slower than the sender) makes the client
 * drop and count them, not queue them for ever. */
static void test_forward_udp_drops_past_the_backlog(void **state)
{
    rig_t r;
    s_rig_forwarding(&r, "udp:127.0.0.1:0:alice.vpn.lab:5353", 0);
    int u = s_udp_sender(client_streams_listener_port(r.cs, 0));
    assert_int_equal(send(u, "q", 1, 0), 1);
    int want = 1;
    assert_true(s_run_until(&r, s_has_n, &want, 5000));
    s_edge_send_result(&r, r.rec[0].id);
    want = 2;
    assert_true(s_run_until(&r, s_has_n, &want, 5000));
    assert_int_equal(r.rec[1].kind, 'G');

    /* The edge stops reading; 54 MB are offered, a few datagrams at a
     * time (the local socket's buffer holds only a few). */
    assert_int_equal(rb_loop_pause_fd(r.loop, r.edge_fd, 30000), 0);
    static char big[60000];
    for (int i = 0; i < 300; i++) {
        for (int k = 0; k < 3; k++)
            if (send(u, big, sizeof big, 0) < 0 && errno != EAGAIN)
                fail_msg("send: %s", strerror(errno));
        s_run_for(&r, 2);
    }
    size_t pending = rb_tconn_output_pending(r.dev);
    if (pending > (1u << 20) + 2 * sizeof big)
        fail_msg("%zu bytes of datagrams wait for the tunnel", pending);
    assert_true(client_streams_datagrams_dropped(r.cs) > 0);
    close(u);
    s_rig_down(&r);
}

static bool s_data_at_least(rig_t *r, void *arg)
{
    return r->data_bytes >= *(uint64_t *)arg;
}

static bool s_streams_at_least(rig_t *r, void *arg)
{
    return client_streams_count(r->cs) >= *(size_t *)arg;
}

/* Streams sending into a tunnel that does not drain hold at most 4 MiB
 * between them in the device's output, not a window (2 MiB) each; a stream
 * opened during the hold joins it; all read again once the output drains.
 * deaf: the tunnel never reports itself drained (as when datagrams keep
 * its output from ever emptying), so only the periodic check, at 2 MiB
 * left, can end the hold. */
static void s_slow_uplink(bool deaf)
{
    rig_t r;
    s_rig_forwarding(&r, "127.0.0.1:0:intranet.example:80", 64 * 1024);
    r.deaf_to_drained = deaf;
    enum { N = 12 };
    int fds[N + 1];
    for (int i = 0; i < N; i++)
        fds[i] = s_local_connect(client_streams_listener_port(r.cs, 0));
    int want = N;
    assert_true(s_run_until(&r, s_has_n, &want, 5000));
    uint32_t late_id = 0;
    for (int i = 0; i < N; i++) {
        assert_int_equal(r.rec[i].kind, 'O');
        s_edge_send_result(&r, r.rec[i].id);
        if (r.rec[i].id > late_id) late_id = r.rec[i].id;
    }
    late_id += 2; /* the device gives its ids out in order; the edge cannot
                   * read the late Open while it stalls */
    s_run_for(&r, 100);

    /* The uplink stalls for 3 s; meanwhile every local client offers far
     * more than its stream's credit, and one more connects halfway and
     * has its open answered during the hold. */
    uint64_t t0 = rb_now_ms();
    assert_int_equal(rb_loop_pause_fd(r.loop, r.edge_fd, 3000), 0);
    static char chunk[65536];
    int n = N;
    for (int round = 0; round < 150; round++) {
        if (round == 75) {
            fds[n++] = s_local_connect(client_streams_listener_port(r.cs, 0));
            size_t all_streams = N + 1;
            assert_true(s_run_until(&r, s_streams_at_least, &all_streams, 1000));
            s_edge_send_result(&r, late_id);
        }
        for (int i = 0; i < n; i++)
            (void)send(fds[i], chunk, sizeof chunk, MSG_DONTWAIT);
        s_run_for(&r, 2);
    }
    size_t pending = rb_tconn_output_pending(r.dev);
    assert_true(rb_now_ms() - t0 < 3000); /* measured while it stalled */
    assert_int_equal(r.data_bytes, 0);
    assert_int_equal(client_streams_count(r.cs), N + 1);
    /* Without a common limit each stream would queue its whole credit:
     * 26 MiB less what the kernel's buffers took. */
    if (pending > (4u << 20) + 2 * RB_FRAME_MAX_DATA)
        fail_msg("%zu bytes wait for the uplink (%d streams)", pending, n);

    /* It drains: the held streams read again, to the end of their credit. */
    uint64_t all = (uint64_t)n * RB_STREAM_WINDOW;
    for (int round = 0; round < 600 && r.data_bytes < all; round++) {
        for (int i = 0; i < n; i++)
            (void)send(fds[i], chunk, sizeof chunk, MSG_DONTWAIT);
        s_run_until(&r, s_data_at_least, &all, 10);
    }
    if (r.data_bytes != all)
        fail_msg("the edge got %llu bytes, want every stream's window (%llu)%s",
                 (unsigned long long)r.data_bytes, (unsigned long long)all,
                 deaf ? ", without drained events" : "");
    for (int i = 0; i < n; i++)
        close(fds[i]);
    s_rig_down(&r);
}

static void test_streams_wait_for_a_slow_uplink(void **state)
{
    s_slow_uplink(false);
}

static void test_a_hold_ends_without_drained_events(void **state)
{
    s_slow_uplink(true);
}

int main(void)
{
    rb_log_init("test", RB_LOG_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_expose_specs),
        cmocka_unit_test(test_expose_limit),
        cmocka_unit_test(test_forward_and_socks_listen),
        cmocka_unit_test(test_forward_socks_specs),
        cmocka_unit_test(test_forward_sends_before_the_answer),
        cmocka_unit_test(test_forward_udp_flows),
        cmocka_unit_test(test_exposed_ok_rides_with_the_first_frame),
        cmocka_unit_test(test_exposed_quiet_stream_gets_its_ok),
        cmocka_unit_test(test_local_reset_while_the_open_waits),
        cmocka_unit_test(test_forward_udp_drops_past_the_backlog),
        cmocka_unit_test(test_streams_wait_for_a_slow_uplink),
        cmocka_unit_test(test_a_hold_ends_without_drained_events),
    };
    return cmocka_run_group_tests(tests, s_tls_setup, s_tls_teardown);
}
