/* rb_tconn: a server and client connection over real TCP on 127.0.0.1, in
 * one loop, with a throwaway CA made by the openssl command in a temp dir.
 * Covers frames both ways, a 1 MB burst, a graceful close, certificate
 * checks, and peers that break the protocol (garbage before TLS, an
 * oversized frame header) while another connection keeps working. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <unistd.h>

#include "rb_frame.h"
#include "rb_loop.h"
#include "rb_tconn.h"
#include "rb_tls.h"
#include "../tls_fixture.h"

static SSL_CTX *s_sctx, *s_cctx;

static int s_setup(void **state) { return tlsfx_pair_setup("tconn-test", &s_sctx, &s_cctx); }

static int s_teardown(void **state) { return tlsfx_pair_teardown(&s_sctx, &s_cctx); }

/* One side of a connection as the tests see it. */
typedef struct {
    rb_tconn_t *c;
    int opened;
    int closed;
    rb_tconn_end_t end;
    char reason[200];
    int controls;            /* CONTROL frames received */
    uint64_t last_nonce;
    size_t data_bytes;       /* DATA payload received */
    bool data_ok;            /* payload bytes matched the pattern */
    bool echo_ping;          /* answer Ping with Pong */
    bool close_on_ping;      /* answer Ping with Pong, then close_after_flush */
    bool destroy_on_frame;   /* destroy the connection inside on_frame */
    bool close_on_drained;   /* in on_drained: queue a Ping, then close_after_flush */
    int drained;             /* on_drained calls */
    size_t left_at_drain;    /* output pending at any of them (must be 0) */
} side_t;

static void s_on_open(rb_tconn_t *c, void *arg) { ((side_t *)arg)->opened++; }

static int s_send_ping(rb_tconn_t *c, uint64_t nonce)
{
    Rb__Tunnel__TunnelControl m = RB__TUNNEL__TUNNEL_CONTROL__INIT;
    Rb__Tunnel__Ping p = RB__TUNNEL__PING__INIT;
    p.nonce = nonce;
    m.msg_case = RB__TUNNEL__TUNNEL_CONTROL__MSG_PING;
    m.ping = &p;
    return rb_tconn_send_control(c, &m);
}

static void s_on_frame(rb_tconn_t *c, const rb_frame_t *f, void *arg)
{
    side_t *s = arg;
    if (s->destroy_on_frame) {
        rb_tconn_destroy(&s->c);
        return;
    }
    if (f->type == RB_FRAME_DATA) {
        for (uint32_t i = 0; i < f->len; i++)
            if (f->payload[i] != (uint8_t)((s->data_bytes + i) * 7)) s->data_ok = false;
        s->data_bytes += f->len;
        return;
    }
    Rb__Tunnel__TunnelControl *m = rb_frame_control(f);
    assert_non_null(m);
    s->controls++;
    if (m->msg_case == RB__TUNNEL__TUNNEL_CONTROL__MSG_PING) {
        s->last_nonce = m->ping->nonce;
        if (s->echo_ping || s->close_on_ping) {
            Rb__Tunnel__TunnelControl r = RB__TUNNEL__TUNNEL_CONTROL__INIT;
            Rb__Tunnel__Pong p = RB__TUNNEL__PONG__INIT;
            p.nonce = m->ping->nonce;
            r.msg_case = RB__TUNNEL__TUNNEL_CONTROL__MSG_PONG;
            r.pong = &p;
            assert_int_equal(rb_tconn_send_control(c, &r), 0);
        }
        if (s->close_on_ping) rb_tconn_close_after_flush(c);
    } else if (m->msg_case == RB__TUNNEL__TUNNEL_CONTROL__MSG_PONG) {
        s->last_nonce = m->pong->nonce;
    }
    rb__tunnel__tunnel_control__free_unpacked(m, NULL);
}

static void s_on_close(rb_tconn_t *c, rb_tconn_end_t end, const char *reason, void *arg)
{
    side_t *s = arg;
    s->closed++;
    s->end = end;
    snprintf(s->reason, sizeof s->reason, "%s", reason);
    rb_tconn_destroy(&s->c);   /* from inside the callback, as owners do */
}

static void s_on_drained(rb_tconn_t *c, void *arg)
{
    side_t *s = arg;
    s->drained++;
    s->left_at_drain += rb_tconn_output_pending(c);
    if (s->close_on_drained) {
        s->close_on_drained = false;
        assert_int_equal(s_send_ping(c, 77), 0);
        rb_tconn_close_after_flush(c);
    }
}

static const rb_tconn_handlers_t s_handlers = {s_on_open, s_on_frame, s_on_close, s_on_drained};

/* The server: a listener whose accepted connections go to the next free
 * side in servers[]. */
typedef struct {
    rb_loop_t *loop;
    int lfd;
    int port;
    side_t servers[8];
    int accepted;
    side_t tmpl;   /* flags copied into each accepted side */
} srv_t;

static void s_on_accept(rb_loop_t *loop, int fd, unsigned ev, void *arg)
{
    srv_t *srv = arg;
    int cfd = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (cfd < 0) return;
    assert_true(srv->accepted < 8);
    side_t *s = &srv->servers[srv->accepted++];
    *s = srv->tmpl;
    s->data_ok = true;
    s->c = rb_tconn_accept(loop, s_sctx, cfd, "test-peer", &s_handlers, s);
    assert_non_null(s->c);
}

static void s_srv_start(srv_t *srv, rb_loop_t *loop)
{
    memset(srv, 0, sizeof *srv);
    srv->loop = loop;
    srv->lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    assert_true(srv->lfd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(srv->lfd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(srv->lfd, 16), 0);
    socklen_t al = sizeof a;
    getsockname(srv->lfd, (struct sockaddr *)&a, &al);
    srv->port = ntohs(a.sin_port);
    assert_int_equal(rb_loop_add_fd(loop, srv->lfd, RB_EV_READ, s_on_accept, srv), 0);
}

static void s_srv_stop(srv_t *srv)
{
    for (int i = 0; i < srv->accepted; i++) rb_tconn_destroy(&srv->servers[i].c);
    rb_loop_del_fd(srv->loop, srv->lfd);
    close(srv->lfd);
}

static rb_tconn_t *s_dial(rb_loop_t *loop, srv_t *srv, const char *name, side_t *s)
{
    char hp[64];
    snprintf(hp, sizeof hp, "127.0.0.1:%d", srv->port);
    s->data_ok = true;
    s->c = rb_tconn_dial(loop, s_cctx, hp, name, &s_handlers, s);
    return s->c;
}

/* Runs the loop until cond(arg) holds or ms pass. Returns cond's value. */
typedef bool(cond_fn)(void *arg);
typedef struct {
    cond_fn *cond;
    void *arg;
    uint64_t deadline;
} wait_t;

static void s_tick(rb_loop_t *loop, void *arg)
{
    wait_t *w = arg;
    if (w->cond(w->arg) || rb_now_ms() >= w->deadline) rb_loop_stop(loop);
}

static bool s_wait(rb_loop_t *loop, cond_fn *cond, void *arg, unsigned ms)
{
    wait_t w = {cond, arg, rb_now_ms() + ms};
    rb_timer_t *t = rb_loop_add_timer(loop, 2, true, s_tick, &w);
    rb_loop_run(loop);
    rb_loop_cancel_timer(loop, t);
    return cond(arg);
}

static bool s_is_open(void *arg) { return ((side_t *)arg)->opened > 0; }
static bool s_is_closed(void *arg) { return ((side_t *)arg)->closed > 0; }
static bool s_got_control(void *arg) { return ((side_t *)arg)->controls > 0; }
static bool s_got_mb(void *arg)
{
    side_t *s = arg;
    return s->closed || s->data_bytes >= 1024 * 1024;
}

static void test_frames_both_ways_and_burst(void **state)
{
    rb_loop_t *loop = rb_loop_new();
    srv_t srv;
    s_srv_start(&srv, loop);
    srv.tmpl.echo_ping = true;
    side_t cli = {0};
    assert_non_null(s_dial(loop, &srv, "edge.test", &cli));
    assert_true(s_wait(loop, s_is_open, &cli, 3000));

    assert_int_equal(s_send_ping(cli.c, 42), 0);
    assert_true(s_wait(loop, s_got_control, &cli, 3000));
    assert_int_equal(srv.servers[0].last_nonce, 42);
    assert_int_equal(cli.last_nonce, 42);

    /* 1 MB queued at once, in maximum-size DATA frames: all of it must
     * arrive, in order, and the sender's queue must drain to nothing. */
    static uint8_t chunk[RB_FRAME_MAX_DATA];
    size_t total = 1024 * 1024;
    for (size_t off = 0; off < total; off += sizeof chunk) {
        for (size_t i = 0; i < sizeof chunk; i++) chunk[i] = (uint8_t)((off + i) * 7);
        assert_int_equal(rb_tconn_send_frame(cli.c, RB_FRAME_DATA, 0, 1, chunk, sizeof chunk), 0);
    }
    assert_true(rb_tconn_output_pending(cli.c) >= total);
    int drained = cli.drained;
    side_t *sv = &srv.servers[0];
    assert_true(s_wait(loop, s_got_mb, sv, 5000));
    assert_int_equal(sv->data_bytes, total);
    assert_true(sv->data_ok);
    assert_int_equal(rb_tconn_output_pending(cli.c), 0);
    assert_int_equal(sv->closed, 0);
    /* The drain was told, once the queue was empty, and only then. */
    assert_true(cli.drained > drained);
    assert_int_equal(cli.left_at_drain, 0);
    drained = cli.drained;
    s_wait(loop, s_is_closed, &cli, 100); /* nothing queued: nothing to tell */
    assert_int_equal(cli.drained, drained);

    /* Frames over the limits are refused at the sender. */
    assert_int_equal(rb_tconn_send_frame(cli.c, RB_FRAME_DATA, 0, 1, chunk, sizeof chunk + 1), -1);

    /* The server answers a ping and closes gracefully: the client gets the
     * Pong, then sees the peer close; the server ends as LOCAL. */
    sv->close_on_ping = true;
    cli.controls = 0;
    assert_int_equal(s_send_ping(cli.c, 7), 0);
    assert_true(s_wait(loop, s_is_closed, &cli, 3000));
    assert_int_equal(cli.controls, 1);
    assert_int_equal(cli.last_nonce, 7);
    assert_int_equal(cli.end, RB_TCONN_PEER_CLOSED);
    assert_true(s_wait(loop, s_is_closed, sv, 3000));
    assert_int_equal(sv->end, RB_TCONN_LOCAL);
    assert_null(cli.c);
    assert_null(sv->c);

    s_srv_stop(&srv);
    rb_loop_destroy(&loop);
}

static bool s_never(void *arg)
{
    return false;
}

/* A bulk sender's emptied output buffers stay for its next output (freeing
 * them on every drain cost a reallocation, and page faults, per loop pass)
 * and go once it has been idle for a second, so idle connections hold none. */
static void test_output_memory_kept_while_busy(void **state)
{
    rb_loop_t *loop = rb_loop_new();
    srv_t srv;
    s_srv_start(&srv, loop);
    side_t cli = {0};
    assert_non_null(s_dial(loop, &srv, "edge.test", &cli));
    assert_true(s_wait(loop, s_is_open, &cli, 3000));
    static uint8_t chunk[RB_FRAME_MAX_DATA];
    for (size_t i = 0; i < sizeof chunk; i++)
        chunk[i] = (uint8_t)(i * 7);
    side_t *sv = &srv.servers[0];
    for (int round = 1; round <= 2; round++) {
        for (size_t off = 0; off < 1024 * 1024; off += sizeof chunk)
            assert_int_equal(rb_tconn_send_frame(cli.c, RB_FRAME_DATA, 0, 1, chunk, sizeof chunk),
                             0);
        assert_true(s_wait(loop, s_got_mb, sv, 5000));
        sv->data_bytes = 0;
        s_wait(loop, s_never, NULL, 20);
        assert_int_equal(rb_tconn_output_pending(cli.c), 0);
        assert_true(rb_tconn_output_memory(cli.c) >= RB_FRAME_MAX_DATA);
    }
    s_wait(loop, s_never, NULL, 2500);
    assert_int_equal(rb_tconn_output_memory(cli.c), 0);
    assert_int_equal(cli.closed, 0);
    rb_tconn_destroy(&cli.c);
    s_srv_stop(&srv);
    rb_loop_destroy(&loop);
}

static void test_certificate_name_checked(void **state)
{
    rb_loop_t *loop = rb_loop_new();
    srv_t srv;
    s_srv_start(&srv, loop);
    side_t ip = {0}, bad = {0};
    /* The IP literal is checked against the IP SAN. */
    assert_non_null(s_dial(loop, &srv, NULL, &ip));
    assert_non_null(s_dial(loop, &srv, "other.test", &bad));
    assert_true(s_wait(loop, s_is_closed, &bad, 3000));
    assert_int_equal(bad.end, RB_TCONN_TLS_FAILED);
    assert_non_null(strstr(bad.reason, "certificate verify failed"));
    assert_true(s_wait(loop, s_is_open, &ip, 3000));
    assert_int_equal(ip.closed, 0);
    rb_tconn_destroy(&ip.c);
    s_srv_stop(&srv);
    rb_loop_destroy(&loop);
}

static void test_connect_refused(void **state)
{
    rb_loop_t *loop = rb_loop_new();
    srv_t srv;
    s_srv_start(&srv, loop);
    int port = srv.port;
    s_srv_stop(&srv);   /* nothing listens there now */
    side_t cli = {0};
    char hp[64];
    snprintf(hp, sizeof hp, "127.0.0.1:%d", port);
    cli.c = rb_tconn_dial(loop, s_cctx, hp, NULL, &s_handlers, &cli);
    assert_non_null(cli.c);
    assert_true(s_wait(loop, s_is_closed, &cli, 3000));
    assert_int_equal(cli.end, RB_TCONN_CONNECT_FAILED);
    assert_null(rb_tconn_dial(loop, s_cctx, "no-port", NULL, &s_handlers, &cli));
    rb_loop_destroy(&loop);
}

/* A raw client in a thread: connects, optionally does TLS, writes bytes,
 * then waits for the server to close. */
typedef struct {
    int port;
    bool tls;
    const uint8_t *bytes;
    size_t len;
    bool saw_eof;
    atomic_bool stalled; /* after the handshake, read nothing until cleared */
} raw_t;

static void *s_raw_client(void *arg)
{
    raw_t *r = arg;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)r->port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) return NULL;
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char buf[256];
    if (r->tls) {
        SSL *ssl = SSL_new(s_cctx);
        SSL_set_fd(ssl, fd);
        SSL_set1_host(ssl, "edge.test");
        if (SSL_connect(ssl) == 1) {
            if (r->len) SSL_write(ssl, r->bytes, (int)r->len);
            while (atomic_load(&r->stalled))
                usleep(10 * 1000);
            int n;
            while ((n = SSL_read(ssl, buf, sizeof buf)) > 0) {
            }
            r->saw_eof = SSL_get_error(ssl, n) != SSL_ERROR_WANT_READ;
        }
        SSL_free(ssl);
    } else {
        if (write(fd, r->bytes, r->len) == (ssize_t)r->len) {
            ssize_t n;
            while ((n = read(fd, buf, sizeof buf)) > 0) {
            }
            r->saw_eof = n == 0 || n < 0;
        }
    }
    close(fd);
    return NULL;
}

static void s_bad_peer(const uint8_t *bytes, size_t len, bool tls, rb_tconn_end_t want_end,
                       const char *want_reason)
{
    rb_loop_t *loop = rb_loop_new();
    srv_t srv;
    s_srv_start(&srv, loop);
    srv.tmpl.echo_ping = true;

    side_t good = {0};
    assert_non_null(s_dial(loop, &srv, "edge.test", &good));
    assert_true(s_wait(loop, s_is_open, &good, 3000));

    raw_t r = {.port = srv.port, .tls = tls, .bytes = bytes, .len = len};
    pthread_t th;
    pthread_create(&th, NULL, s_raw_client, &r);
    side_t *bad = &srv.servers[1];
    s_wait(loop, s_is_closed, bad, 5000);
    pthread_join(th, NULL);
    assert_int_equal(bad->closed, 1);
    assert_int_equal(bad->end, want_end);
    assert_non_null(strstr(bad->reason, want_reason));
    assert_true(r.saw_eof);

    /* The other connection did not notice. */
    assert_int_equal(s_send_ping(good.c, 99), 0);
    assert_true(s_wait(loop, s_got_control, &good, 3000));
    assert_int_equal(good.last_nonce, 99);
    assert_int_equal(good.closed, 0);
    rb_tconn_destroy(&good.c);
    s_srv_stop(&srv);
    rb_loop_destroy(&loop);
}

static void test_garbage_before_tls(void **state)
{
    static const char http[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    s_bad_peer((const uint8_t *)http, sizeof http - 1, false, RB_TCONN_TLS_FAILED, "handshake");
}

static void test_oversized_frame_header(void **state)
{
    uint8_t hdr[RB_FRAME_HEADER];
    rb_frame_header(hdr, RB_FRAME_DATA, 0, 1, 10u * 1024 * 1024);
    s_bad_peer(hdr, sizeof hdr, true, RB_TCONN_PROTOCOL, "too large");
}

/* A peer that stops reading: a close with output queued for it ends after
 * the flush deadline instead of holding the buffers for ever. */
static void test_close_to_a_peer_that_does_not_read(void **state)
{
    rb_loop_t *loop = rb_loop_new();
    srv_t srv;
    s_srv_start(&srv, loop);
    raw_t r = {.port = srv.port, .tls = true};
    atomic_init(&r.stalled, true);
    pthread_t th;
    pthread_create(&th, NULL, s_raw_client, &r);
    side_t *s = &srv.servers[0];
    assert_true(s_wait(loop, s_is_open, s, 5000));
    static uint8_t chunk[16384];
    for (int i = 0; i < 8 * 64; i++) /* 8 MiB, far more than socket buffers take */
        assert_int_equal(rb_tconn_send_frame(s->c, RB_FRAME_DATA, 0, 1, chunk, sizeof chunk), 0);
    uint64_t t0 = rb_now_ms();
    rb_tconn_close_after_flush(s->c);
    assert_true(s_wait(loop, s_is_closed, s, 15000));
    uint64_t took = rb_now_ms() - t0;
    atomic_store(&r.stalled, false);
    pthread_join(th, NULL);
    assert_int_equal(s->end, RB_TCONN_LOCAL);
    assert_non_null(strstr(s->reason, "did not take the last"));
    assert_true(took >= 9000 && took < 13000);
    s_srv_stop(&srv);
    rb_loop_destroy(&loop);
}

/* A close asked for from on_drained, with a last frame queued there: both
 * go out at once, close_notify included. */
static void test_close_from_on_drained(void **state)
{
    rb_loop_t *loop = rb_loop_new();
    srv_t srv;
    s_srv_start(&srv, loop);
    srv.tmpl.echo_ping = true;
    srv.tmpl.close_on_drained = true;
    side_t cli = {0};
    assert_non_null(s_dial(loop, &srv, "edge.test", &cli));
    assert_true(s_wait(loop, s_is_open, &cli, 3000));
    assert_int_equal(s_send_ping(cli.c, 5), 0);
    uint64_t t0 = rb_now_ms();
    assert_true(s_wait(loop, s_is_closed, &cli, 5000));
    assert_true(rb_now_ms() - t0 < 2000);
    assert_int_equal(cli.last_nonce, 77); /* the Pong (5), then the last Ping */
    assert_int_equal(cli.controls, 2);
    assert_int_equal(cli.end, RB_TCONN_PEER_CLOSED);
    assert_null(strstr(cli.reason, "without"));
    s_srv_stop(&srv);
    rb_loop_destroy(&loop);
}

static void test_destroy_inside_on_frame(void **state)
{
    rb_loop_t *loop = rb_loop_new();
    srv_t srv;
    s_srv_start(&srv, loop);
    srv.tmpl.destroy_on_frame = true;
    side_t cli = {0};
    assert_non_null(s_dial(loop, &srv, "edge.test", &cli));
    assert_true(s_wait(loop, s_is_open, &cli, 3000));
    /* Two pings in one write: the second must not be delivered to a
     * destroyed connection. */
    assert_int_equal(s_send_ping(cli.c, 1), 0);
    assert_int_equal(s_send_ping(cli.c, 2), 0);
    assert_true(s_wait(loop, s_is_closed, &cli, 3000));
    assert_null(srv.servers[0].c);
    assert_int_equal(srv.servers[0].closed, 0);
    s_srv_stop(&srv);
    rb_loop_destroy(&loop);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_frames_both_ways_and_burst),
        cmocka_unit_test(test_output_memory_kept_while_busy),
        cmocka_unit_test(test_certificate_name_checked),
        cmocka_unit_test(test_connect_refused),
        cmocka_unit_test(test_garbage_before_tls),
        cmocka_unit_test(test_oversized_frame_header),
        cmocka_unit_test(test_close_to_a_peer_that_does_not_read),
        cmocka_unit_test(test_close_from_on_drained),
        cmocka_unit_test(test_destroy_inside_on_frame),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
