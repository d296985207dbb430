/* rb_pump: one end of a tunnelled TCP stream at a real socket, with the
 * stream's credit windows. A test "peer" stands in for the far side of the
 * tunnel and records data(), window(), connected() and done(); the socket's
 * other end ("the end") is the other half of a socketpair or of a loopback
 * TCP connection, driven by the same rb_loop. Nothing sleeps: the loop runs
 * until a condition holds, or for a short quiet spell to show that nothing
 * more happens. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "rb_frame.h"
#include "rb_log.h"
#include "rb_loop.h"
#include "rb_pump.h"

#define WIN RB_STREAM_WINDOW
#define CHUNK RB_FRAME_MAX_DATA

/* ---- bytes ---- */

static uint8_t s_pat(size_t i)
{
    return (uint8_t)(i % 251);
}

static uint8_t *s_pattern(size_t n)
{
    uint8_t *b = malloc(n ? n : 1);
    assert_non_null(b);
    for (size_t i = 0; i < n; i++)
        b[i] = s_pat(i);
    return b;
}

static bool s_is_pattern(const uint8_t *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (b[i] != s_pat(i)) return false;
    return true;
}

typedef struct {
    uint8_t *d;
    size_t len, cap;
} bytes_t;

static void s_bytes_add(bytes_t *b, const void *p, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n)
            cap *= 2;
        b->d = realloc(b->d, cap);
        assert_non_null(b->d);
        b->cap = cap;
    }
    memcpy(b->d + b->len, p, n);
    b->len += n;
}

/* ---- the peer across the tunnel ---- */

typedef struct {
    rb_pump_t *pump;
    bytes_t got; /* data() bytes */
    size_t nchunks, max_chunk;
    int fin, rst;     /* data() with FIN, with RST */
    bool after_end;   /* data() after FIN (bytes or FIN) or after RST */
    uint64_t granted; /* window() total */
    unsigned nwindows;
    uint32_t min_inc;
    int connected, conn_err;
    size_t written_at_connect;
    int done;
    bool reset;
    bool done_after_fin, done_after_rst;
    char why[128];
    int data_rc, window_rc; /* what data() and window() answer */
    bool destroy_in_done, destroy_in_connect_fail;
    size_t hold_at; /* data() holds the pump's input once this much came */
    bool in_call;   /* the test is inside a call into the pump */
    int calls_back; /* callbacks made while in_call */
} peer_t;

static int s_on_data(void *arg, uint8_t flags, const uint8_t *buf, size_t len)
{
    peer_t *p = arg;
    if (p->in_call) p->calls_back++;
    if (p->rst || p->done || (p->fin && !(flags & RB_FRAME_RST))) p->after_end = true;
    if (flags & RB_FRAME_RST) {
        assert_int_equal(len, 0);
        p->rst++;
        return p->data_rc;
    }
    assert_true(len <= CHUNK);
    if (len) {
        s_bytes_add(&p->got, buf, len);
        p->nchunks++;
        if (len > p->max_chunk) p->max_chunk = len;
    }
    if (flags & RB_FRAME_FIN) {
        assert_int_equal(len, 0);
        p->fin++;
    }
    if (p->hold_at && p->got.len >= p->hold_at) {
        p->hold_at = 0;
        rb_pump_hold_input(p->pump, true);
    }
    return p->data_rc;
}

static int s_on_window(void *arg, uint32_t inc)
{
    peer_t *p = arg;
    if (p->in_call) p->calls_back++;
    assert_true(inc > 0);
    p->granted += inc;
    p->nwindows++;
    if (!p->min_inc || inc < p->min_inc) p->min_inc = inc;
    return p->window_rc;
}

static void s_on_connected(void *arg, int err)
{
    peer_t *p = arg;
    if (p->in_call) p->calls_back++;
    p->connected++;
    p->conn_err = err;
    p->written_at_connect = (size_t)rb_pump_bytes_written(p->pump);
    if (err && p->destroy_in_connect_fail) rb_pump_destroy(&p->pump);
}

static void s_on_done(void *arg, bool reset, const char *why)
{
    peer_t *p = arg;
    if (p->in_call) p->calls_back++;
    p->done++;
    p->reset = reset;
    p->done_after_fin = p->fin > 0;
    p->done_after_rst = p->rst > 0;
    snprintf(p->why, sizeof p->why, "%s", why ? why : "(null)");
    if (p->destroy_in_done) rb_pump_destroy(&p->pump);
}

static const rb_pump_handlers_t s_handlers = {s_on_data, s_on_window, s_on_connected, s_on_done};

/* Calls into the pump, noting that callbacks must not come from them. */
static int s_peer_send(peer_t *p, uint8_t flags, const void *buf, size_t len)
{
    p->in_call = true;
    int rc = rb_pump_peer_data(p->pump, flags, buf, len);
    p->in_call = false;
    return rc;
}

static void s_peer_grant(peer_t *p, uint32_t inc)
{
    p->in_call = true;
    rb_pump_peer_window(p->pump, inc);
    p->in_call = false;
}

/* ---- the socket's other end ---- */

typedef struct {
    rb_loop_t *loop;
    int fd;
    bool added, read_on;
    bytes_t in;
    bool eof;
    int err;
    const uint8_t *src;
    size_t src_len, src_off;
    bool blocked; /* the last write found the socket full */
    bool shut_after, shut;
} end_t;

static void s_end_io(rb_loop_t *l, int fd, unsigned ev, void *arg);

static void s_end_watch(end_t *e)
{
    if (e->fd < 0) return;
    unsigned ev = 0;
    if (e->read_on && !e->eof && !e->err) ev |= RB_EV_READ;
    if (e->src_off < e->src_len && !e->err) ev |= RB_EV_WRITE;
    if (!ev) {
        if (e->added) rb_loop_del_fd(e->loop, e->fd);
        e->added = false;
    } else if (!e->added) {
        assert_int_equal(rb_loop_add_fd(e->loop, e->fd, ev, s_end_io, e), 0);
        e->added = true;
    } else {
        assert_int_equal(rb_loop_mod_fd(e->loop, e->fd, ev), 0);
    }
}

static void s_end_write(end_t *e)
{
    e->blocked = false;
    while (e->src_off < e->src_len) {
        ssize_t n =
            send(e->fd, e->src + e->src_off, e->src_len - e->src_off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                e->blocked = true;
            else
                e->err = errno;
            break;
        }
        e->src_off += (size_t)n;
    }
    if (e->src_off == e->src_len && e->shut_after && !e->shut && !e->err) {
        assert_int_equal(shutdown(e->fd, SHUT_WR), 0);
        e->shut = true;
    }
}

static void s_end_drain(end_t *e)
{
    static uint8_t buf[CHUNK];
    for (;;) {
        ssize_t n = recv(e->fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n > 0) {
            s_bytes_add(&e->in, buf, (size_t)n);
            continue;
        }
        if (n == 0) {
            e->eof = true;
        } else if (errno == EINTR) {
            continue;
        } else if (errno != EAGAIN && errno != EWOULDBLOCK) {
            e->err = errno;
        }
        return;
    }
}

static void s_end_io(rb_loop_t *l, int fd, unsigned ev, void *arg)
{
    end_t *e = arg;
    if (e->read_on && (ev & (RB_EV_READ | RB_EV_ERROR))) s_end_drain(e);
    if ((ev & (RB_EV_WRITE | RB_EV_ERROR)) && e->src_off < e->src_len) s_end_write(e);
    s_end_watch(e);
}

static void s_end_init(end_t *e, rb_loop_t *l, int fd)
{
    memset(e, 0, sizeof *e);
    e->loop = l;
    e->fd = fd;
    int fl = fcntl(fd, F_GETFL);
    assert_int_equal(fcntl(fd, F_SETFL, fl | O_NONBLOCK), 0);
}

/* Writes src (borrowed until written) from the loop; shut: shutdown(SHUT_WR)
 * once all of it is written. */
static void s_end_send(end_t *e, const void *src, size_t len, bool shut)
{
    e->src = src;
    e->src_len = len;
    e->src_off = 0;
    e->shut_after = shut;
    s_end_write(e);
    s_end_watch(e);
}

static void s_end_read(end_t *e)
{
    e->read_on = true;
    s_end_watch(e);
}

static void s_end_close(end_t *e, bool reset)
{
    if (e->fd < 0) return;
    if (e->added) rb_loop_del_fd(e->loop, e->fd);
    e->added = false;
    if (reset) {
        struct linger lg = {1, 0};
        assert_int_equal(setsockopt(e->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg), 0);
    }
    close(e->fd);
    e->fd = -1;
}

/* ---- sockets ---- */

static int s_listener(struct sockaddr_in *sa, bool listening)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    memset(sa, 0, sizeof *sa);
    sa->sin_family = AF_INET;
    sa->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)sa, sizeof *sa), 0);
    socklen_t len = sizeof *sa;
    assert_int_equal(getsockname(fd, (struct sockaddr *)sa, &len), 0);
    if (listening) assert_int_equal(listen(fd, 8), 0);
    return fd;
}

/* A connected loopback TCP pair: *a accepted, *b connecting. */
static void s_tcp_pair(int *a, int *b)
{
    struct sockaddr_in sa;
    int l = s_listener(&sa, true);
    *b = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(*b >= 0);
    assert_int_equal(connect(*b, (struct sockaddr *)&sa, sizeof sa), 0);
    *a = accept4(l, NULL, NULL, SOCK_NONBLOCK);
    assert_true(*a >= 0);
    close(l);
}

/* A non-blocking connect to sa, in progress. */
static int s_connecting(const struct sockaddr_in *sa)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    assert_true(fd >= 0);
    int rc = connect(fd, (const struct sockaddr *)sa, sizeof *sa);
    assert_int_equal(rc, -1);
    assert_int_equal(errno, EINPROGRESS);
    return fd;
}

/* ---- running the loop ---- */

typedef struct {
    rb_loop_t *l;
    peer_t p;
    end_t e;
    size_t n; /* what a condition waits for */
} t_t;

typedef bool(cond_fn)(t_t *t);

typedef struct {
    cond_fn *fn;
    t_t *t;
    bool met;
} until_t;

static void s_stop(rb_loop_t *l, void *arg)
{
    rb_loop_stop(l);
}

static void s_check(rb_loop_t *l, void *arg)
{
    until_t *u = arg;
    if (u->fn(u->t)) {
        u->met = true;
        rb_loop_stop(l);
    }
}

/* Runs the loop until fn(t) holds or ms pass; whether it held. */
static bool s_until(t_t *t, cond_fn *fn, unsigned ms)
{
    until_t u = {fn, t, fn(t)};
    if (u.met) return true;
    rb_timer_t *c = rb_loop_add_timer(t->l, 1, true, s_check, &u);
    rb_timer_t *d = rb_loop_add_timer(t->l, ms, true, s_stop, NULL);
    rb_loop_run(t->l);
    rb_loop_cancel_timer(t->l, c);
    rb_loop_cancel_timer(t->l, d);
    return u.met;
}

static double s_cpu_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* Runs the loop for ms with nothing to wait for (to show that nothing
 * more happens). Returns the CPU time it took, in ms: a loop spinning on a
 * level-triggered hang-up burns about ms of it. */
static double s_quiet(t_t *t, unsigned ms)
{
    double cpu = s_cpu_ms();
    rb_timer_t *d = rb_loop_add_timer(t->l, ms, true, s_stop, NULL);
    rb_loop_run(t->l);
    rb_loop_cancel_timer(t->l, d);
    return s_cpu_ms() - cpu;
}

static bool s_got_n(t_t *t)
{
    return t->p.got.len >= t->n;
}
static bool s_got_n_full(t_t *t)
{
    return t->p.got.len >= t->n && t->e.blocked;
}
static bool s_peer_fin(t_t *t)
{
    return t->p.fin > 0 || t->p.rst > 0;
}
static bool s_peer_done(t_t *t)
{
    return t->p.done > 0;
}
static bool s_peer_connected(t_t *t)
{
    return t->p.connected > 0;
}
static bool s_end_eof(t_t *t)
{
    return t->e.eof || t->e.err;
}
static bool s_end_err(t_t *t)
{
    return t->e.err != 0;
}
static bool s_end_n(t_t *t)
{
    return t->e.in.len >= t->n;
}
static bool s_end_sent(t_t *t)
{
    return t->e.src_off == t->e.src_len;
}
static bool s_end_sent_eof(t_t *t)
{
    return s_end_sent(t) && t->e.eof;
}
static bool s_granted_more(t_t *t)
{
    return t->p.granted > t->n;
}

/* The pump's socket reports a hang-up (both directions shut). */
static bool s_pump_hup(t_t *t)
{
    struct pollfd pfd = {rb_pump_fd(t->p.pump), 0, 0};
    return poll(&pfd, 1, 0) == 1 && (pfd.revents & POLLHUP);
}

/* A pump on one half of a socketpair (tcp false) or a loopback TCP
 * connection, the end on the other. */
static t_t *s_new(bool tcp)
{
    t_t *t = calloc(1, sizeof *t);
    assert_non_null(t);
    t->l = rb_loop_new();
    assert_non_null(t->l);
    int a, b;
    if (tcp) {
        s_tcp_pair(&a, &b);
    } else {
        int sv[2];
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
        assert_int_equal(fcntl(sv[0], F_SETFL, O_NONBLOCK), 0);
        a = sv[0];
        b = sv[1];
    }
    t->p.pump = rb_pump_new(t->l, a, false, &s_handlers, &t->p);
    assert_non_null(t->p.pump);
    assert_int_equal(rb_pump_fd(t->p.pump), a);
    s_end_init(&t->e, t->l, b);
    return t;
}

static void s_free(t_t *t)
{
    rb_pump_destroy(&t->p.pump);
    s_end_close(&t->e, false);
    rb_loop_destroy(&t->l);
    free(t->p.got.d);
    free(t->e.in.d);
    free(t);
}

/* ---- socket -> peer ---- */

/* The end writes a window and a half; the pump reads exactly one window in
 * chunks of at most one DATA frame, then waits for grants. */
static void test_read_stops_at_window(void **state)
{
    t_t *t = s_new(false);
    size_t total = WIN + WIN / 2;
    uint8_t *src = s_pattern(total);
    s_end_send(&t->e, src, total, true);

    t->n = WIN;
    assert_true(s_until(t, s_got_n_full, 5000));
    s_quiet(t, 100);
    assert_int_equal(t->p.got.len, WIN);
    assert_int_equal(rb_pump_bytes_read(t->p.pump), WIN);
    assert_true(t->e.src_off > WIN); /* more was there to read */
    assert_true(t->p.max_chunk <= CHUNK);
    assert_true(t->p.nchunks >= WIN / CHUNK);
    assert_int_equal(t->p.fin, 0);

    /* A grant lets exactly that much more through. */
    s_peer_grant(&t->p, 100000);
    t->n = WIN + 100000;
    assert_true(s_until(t, s_got_n, 5000));
    s_quiet(t, 50);
    assert_int_equal(t->p.got.len, WIN + 100000);

    /* A grant larger than what is left: the rest, then FIN. */
    s_peer_grant(&t->p, WIN);
    assert_true(s_until(t, s_peer_fin, 5000));
    assert_int_equal(t->p.got.len, total);
    assert_true(s_is_pattern(t->p.got.d, total));
    assert_int_equal(t->p.fin, 1);
    assert_int_equal(t->p.rst, 0);
    assert_false(t->p.after_end);
    assert_true(t->p.max_chunk <= CHUNK);
    assert_int_equal(rb_pump_bytes_read(t->p.pump), total);
    assert_int_equal(t->p.done, 0); /* our direction is still open */
    assert_int_equal(t->p.calls_back, 0);

    /* The peer's FIN closes the other direction: the stream is over, and
     * the call says so instead of calling back. */
    assert_int_equal(s_peer_send(&t->p, RB_FRAME_FIN, NULL, 0), RB_PUMP_OVER);
    assert_int_equal(t->p.done, 0);
    s_free(t);
    free(src);
}

/* A held pump leaves its socket's bytes in the kernel whatever its
 * credit (held from data() as the forwarder does, or before anything
 * came), while the other direction goes on; released, all comes through,
 * FIN last. */
static void test_hold_input(void **state)
{
    t_t *t = s_new(false);
    size_t total = 300000;
    uint8_t *src = s_pattern(total);
    t->p.hold_at = 100000;
    s_end_send(&t->e, src, total, true);
    t->n = 100000;
    assert_true(s_until(t, s_got_n, 5000));
    s_quiet(t, 100);
    assert_true(t->p.got.len < 100000 + CHUNK); /* at most the frame that crossed */
    assert_int_equal(t->p.fin, 0);
    s_end_read(&t->e);
    assert_int_equal(s_peer_send(&t->p, 0, "back", 4), RB_PUMP_GOING);
    t->n = 4;
    assert_true(s_until(t, s_end_n, 5000));
    assert_memory_equal(t->e.in.d, "back", 4);

    rb_pump_hold_input(t->p.pump, false);
    assert_true(s_until(t, s_peer_fin, 5000));
    assert_int_equal(t->p.got.len, total);
    assert_true(s_is_pattern(t->p.got.d, total));
    assert_int_equal(t->p.fin, 1);
    s_free(t);

    t = s_new(false);
    rb_pump_hold_input(t->p.pump, true);
    s_end_send(&t->e, src, 1000, true);
    s_quiet(t, 100);
    assert_int_equal(t->p.got.len, 0);
    rb_pump_hold_input(t->p.pump, false);
    assert_true(s_until(t, s_peer_fin, 5000));
    assert_int_equal(t->p.got.len, 1000);
    s_free(t);
    free(src);
}

/* ---- peer -> socket ---- */

/* The peer sends a whole window while the end does not read: what the
 * socket cannot take waits in the pump (never more than was sent), the FIN
 * waits behind it, and credit comes back in quarter-window batches as the
 * end reads. */
static void test_peer_data_buffered_and_granted(void **state)
{
    t_t *t = s_new(false);
    rb_pump_t *p = t->p.pump;
    uint8_t *src = s_pattern(WIN);
    size_t sent = 0;
    while (sent < WIN) {
        size_t n = WIN - sent < CHUNK ? WIN - sent : CHUNK;
        assert_int_equal(s_peer_send(&t->p, 0, src + sent, n), RB_PUMP_GOING);
        sent += n;
        assert_true(rb_pump_pending(p) <= sent);
        assert_int_equal(rb_pump_pending(p) + rb_pump_bytes_written(p), sent);
    }
    size_t pending = rb_pump_pending(p);
    assert_true(pending > 0); /* a socketpair holds far less than 1 MiB */
    assert_int_equal(s_peer_send(&t->p, RB_FRAME_FIN, NULL, 0), RB_PUMP_GOING);
    s_quiet(t, 50);
    assert_int_equal(rb_pump_pending(p), pending); /* the socket is still full */
    assert_int_equal(rb_pump_pending(p) + rb_pump_bytes_written(p), WIN);

    /* The end reads: every byte, in order, then EOF. */
    s_end_read(&t->e);
    assert_true(s_until(t, s_end_eof, 5000));
    assert_int_equal(t->e.err, 0);
    assert_true(t->e.eof);
    assert_int_equal(t->e.in.len, WIN);
    assert_true(s_is_pattern(t->e.in.d, WIN));
    assert_int_equal(rb_pump_pending(p), 0);
    assert_int_equal(rb_pump_bytes_written(p), WIN);

    /* Credit came back in batches of at least a quarter window, never more
     * than was written, and at most a quarter window is still held. */
    assert_true(t->p.nwindows >= 1);
    assert_true(t->p.min_inc >= WIN / 4);
    assert_true(t->p.granted <= WIN);
    assert_true(WIN - t->p.granted < WIN / 4);
    assert_int_equal(t->p.done, 0);

    /* The end answers and closes: both FINs, the stream is over. */
    s_end_send(&t->e, "bye", 3, true);
    assert_true(s_until(t, s_peer_done, 5000));
    assert_int_equal(t->p.got.len, 3);
    assert_memory_equal(t->p.got.d, "bye", 3);
    assert_int_equal(t->p.fin, 1);
    assert_int_equal(t->p.rst, 0);
    assert_true(t->p.done_after_fin);
    assert_int_equal(t->p.done, 1);
    assert_false(t->p.reset);
    assert_false(t->p.after_end);
    s_free(t);
    free(src);
}

/* With the end reading, credit granted back lets the peer keep sending
 * beyond its first window. */
static void test_peer_keeps_sending_with_grants(void **state)
{
    t_t *t = s_new(false);
    size_t total = 3 * WIN;
    uint8_t *src = s_pattern(total);
    s_end_read(&t->e);
    size_t sent = 0;
    while (sent < total) {
        uint64_t credit = WIN + t->p.granted - sent;
        size_t n = total - sent < CHUNK ? total - sent : CHUNK;
        if (n > credit) n = (size_t)credit;
        if (n == 0) {
            /* Out of credit: the end reads until some comes back. */
            t->n = (size_t)t->p.granted;
            assert_true(s_until(t, s_granted_more, 5000));
            continue;
        }
        assert_int_equal(s_peer_send(&t->p, 0, src + sent, n), RB_PUMP_GOING);
        sent += n;
        assert_true(rb_pump_pending(t->p.pump) <= WIN);
    }
    t->n = total;
    assert_true(s_until(t, s_end_n, 5000));
    assert_int_equal(t->e.in.len, total);
    assert_true(s_is_pattern(t->e.in.d, total));
    assert_true(t->p.min_inc >= WIN / 4);
    assert_true(total - t->p.granted < WIN / 4);
    s_free(t);
    free(src);
}

static void test_overrun(void **state)
{
    /* More than the credit. */
    t_t *t = s_new(false);
    uint8_t *src = s_pattern(WIN + 1);
    size_t sent = 0;
    while (sent < WIN) {
        assert_int_equal(s_peer_send(&t->p, 0, src, CHUNK), RB_PUMP_GOING);
        sent += CHUNK;
    }
    size_t credit = (size_t)(WIN + t->p.granted - sent);
    assert_int_equal(s_peer_send(&t->p, 0, src, credit + 1), RB_PUMP_OVERRUN);
    /* Over: later calls change nothing and nothing calls back. */
    assert_int_equal(s_peer_send(&t->p, 0, src, 1), RB_PUMP_OVER);
    rb_pump_peer_window(t->p.pump, 100);
    s_quiet(t, 20);
    assert_int_equal(t->p.done, 0);
    assert_int_equal(t->p.rst, 0);
    s_free(t);

    /* Exactly the credit, in one call, is fine; a byte more is not. */
    t = s_new(false);
    assert_int_equal(s_peer_send(&t->p, 0, src, WIN), RB_PUMP_GOING);
    assert_int_equal(s_peer_send(&t->p, 0, src, (size_t)t->p.granted + 1), RB_PUMP_OVERRUN);
    s_free(t);

    /* Data after the peer's FIN. */
    t = s_new(false);
    assert_int_equal(s_peer_send(&t->p, RB_FRAME_FIN, "abc", 3), RB_PUMP_GOING);
    assert_int_equal(s_peer_send(&t->p, 0, "x", 1), RB_PUMP_OVERRUN);
    s_free(t);
    free(src);
}

/* ---- FIN, both ways ---- */

/* EOF on the socket is FIN to the peer; the peer's data and FIN still go
 * out; the FIN that closes the second direction ends the stream (the call
 * says so) and destroying the finished pump does not reset it. */
static void test_socket_eof_then_peer_fin(void **state)
{
    t_t *t = s_new(true);
    s_end_send(&t->e, "hello", 5, true);
    assert_true(s_until(t, s_peer_fin, 5000));
    assert_int_equal(t->p.got.len, 5);
    assert_memory_equal(t->p.got.d, "hello", 5);
    assert_int_equal(t->p.fin, 1);
    assert_int_equal(t->p.rst, 0);
    s_quiet(t, 20);
    assert_int_equal(t->p.done, 0);

    s_end_read(&t->e);
    assert_int_equal(s_peer_send(&t->p, 0, "world", 5), RB_PUMP_GOING);
    assert_int_equal(s_peer_send(&t->p, RB_FRAME_FIN, NULL, 0), RB_PUMP_OVER);
    assert_int_equal(t->p.done, 0);
    rb_pump_destroy(&t->p.pump);
    assert_null(t->p.pump);
    assert_true(s_until(t, s_end_eof, 5000));
    assert_int_equal(t->e.err, 0); /* a clean close, no RST */
    assert_int_equal(t->e.in.len, 5);
    assert_memory_equal(t->e.in.d, "world", 5);
    assert_false(t->p.after_end);
    s_free(t);
}

/* FIN with data in the same frame, on TCP: the end reads the data, then
 * EOF; the pump's TCP_NODELAY and O_NONBLOCK are set. */
static void test_peer_fin_with_data(void **state)
{
    t_t *t = s_new(true);
    int fd = rb_pump_fd(t->p.pump);
    int one = 0;
    socklen_t len = sizeof one;
    assert_int_equal(getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, &len), 0);
    assert_int_equal(one, 1);
    assert_true(fcntl(fd, F_GETFL) & O_NONBLOCK);

    s_end_read(&t->e);
    assert_int_equal(s_peer_send(&t->p, RB_FRAME_FIN, "abc", 3), RB_PUMP_GOING);
    assert_true(s_until(t, s_end_eof, 5000));
    assert_true(t->e.eof);
    assert_int_equal(t->e.in.len, 3);
    assert_memory_equal(t->e.in.d, "abc", 3);
    assert_int_equal(rb_pump_bytes_written(t->p.pump), 3);
    /* Then the end closes too: done from the loop. */
    s_end_send(&t->e, "", 0, true);
    assert_true(s_until(t, s_peer_done, 5000));
    assert_false(t->p.reset);
    assert_int_equal(t->p.fin, 1);
    s_free(t);
}

/* ---- resets ---- */

/* An RST from the peer ends the stream; the socket's other end sees
 * ECONNRESET, not a clean EOF. */
static void test_peer_rst_resets_socket(void **state)
{
    t_t *t = s_new(true);
    s_end_read(&t->e);
    assert_int_equal(s_peer_send(&t->p, 0, "abc", 3), RB_PUMP_GOING);
    t->n = 3;
    assert_true(s_until(t, s_end_n, 5000));
    assert_int_equal(s_peer_send(&t->p, RB_FRAME_RST, NULL, 0), RB_PUMP_OVER);
    assert_int_equal(s_peer_send(&t->p, 0, "x", 1), RB_PUMP_OVER);
    rb_pump_destroy(&t->p.pump);
    assert_true(s_until(t, s_end_err, 5000));
    assert_int_equal(t->e.err, ECONNRESET);
    assert_int_equal(t->p.done, 0);
    assert_int_equal(t->p.rst, 0);
    assert_int_equal(t->p.calls_back, 0);
    s_free(t);
}

/* The socket is reset: the peer is sent RST and done(reset) follows; the
 * owner may destroy the pump from done(). With credit and without. */
static void test_socket_reset(void **state)
{
    for (int nocredit = 0; nocredit < 2; nocredit++) {
        t_t *t = s_new(true);
        t->p.destroy_in_done = true;
        if (nocredit) rb_pump_note_sent(t->p.pump, WIN, false);
        s_end_close(&t->e, true);
        assert_true(s_until(t, s_peer_done, 5000));
        assert_int_equal(t->p.rst, 1);
        assert_true(t->p.done_after_rst);
        assert_int_equal(t->p.done, 1);
        assert_true(t->p.reset);
        assert_int_equal(t->p.fin, 0);
        assert_null(t->p.pump); /* destroyed in done() */
        s_quiet(t, 20);
        assert_int_equal(t->p.done, 1);
        s_free(t);
    }
}

/* data() failing (the peer cannot be reached) resets the stream: done with
 * reset, no RST to the unreachable peer, and the socket's end sees the
 * reset. */
static void test_data_refused_resets(void **state)
{
    t_t *t = s_new(true);
    t->p.data_rc = -1;
    t->p.destroy_in_done = true;
    s_end_read(&t->e);
    s_end_send(&t->e, "x", 1, false);
    assert_true(s_until(t, s_peer_done, 5000));
    assert_true(t->p.reset);
    assert_int_equal(t->p.rst, 0);
    assert_null(t->p.pump);
    assert_true(s_until(t, s_end_err, 5000));
    assert_int_equal(t->e.err, ECONNRESET);
    s_free(t);
}

/* Destroying a pump that is not over resets the connection. */
static void test_destroy_live_resets(void **state)
{
    t_t *t = s_new(true);
    s_end_read(&t->e);
    assert_int_equal(s_peer_send(&t->p, 0, "abc", 3), RB_PUMP_GOING);
    t->n = 3;
    assert_true(s_until(t, s_end_n, 5000));
    rb_pump_destroy(&t->p.pump);
    assert_null(t->p.pump);
    rb_pump_destroy(&t->p.pump); /* a cleared pointer is fine */
    rb_pump_destroy(NULL);
    assert_true(s_until(t, s_end_err, 5000));
    assert_int_equal(t->e.err, ECONNRESET);
    assert_int_equal(t->p.done, 0);
    assert_int_equal(t->p.calls_back, 0);
    s_free(t);
}

/* ---- connecting ---- */

static void test_connect_refused(void **state)
{
    for (int destroy = 0; destroy < 2; destroy++) {
        /* Bound but not listening: the port stays ours and refuses. */
        struct sockaddr_in sa;
        int closed = s_listener(&sa, false);
        t_t *t = calloc(1, sizeof *t);
        t->l = rb_loop_new();
        t->e.fd = -1;
        t->p.destroy_in_connect_fail = destroy;
        t->p.pump = rb_pump_new(t->l, s_connecting(&sa), true, &s_handlers, &t->p);
        assert_non_null(t->p.pump);
        /* The peer may send before the connect is done; it waits. */
        assert_int_equal(s_peer_send(&t->p, 0, "early", 5), RB_PUMP_GOING);
        assert_int_equal(rb_pump_pending(t->p.pump), 5);
        assert_true(s_until(t, s_peer_connected, 5000));
        assert_int_equal(t->p.connected, 1);
        assert_int_equal(t->p.conn_err, ECONNREFUSED);
        assert_int_equal(t->p.done, 0);
        assert_int_equal(t->p.got.len, 0);
        assert_int_equal(t->p.fin + t->p.rst, 0);
        if (destroy) {
            assert_null(t->p.pump);
        } else {
            /* Finished: what the peer sends now is refused. */
            assert_int_equal(s_peer_send(&t->p, 0, "x", 1), RB_PUMP_OVER);
        }
        s_free(t);
        close(closed);
    }
}

static void s_on_accept(rb_loop_t *l, int fd, unsigned ev, void *arg)
{
    t_t *t = arg;
    int c = accept(fd, NULL, NULL);
    if (c < 0) return;
    rb_loop_del_fd(l, fd);
    s_end_init(&t->e, l, c);
    s_end_read(&t->e);
}

/* What the peer sends while the connect is in progress (more than the
 * socket takes at once) and its FIN go out once connected. */
static void test_connect_flushes_early_data(void **state)
{
    struct sockaddr_in sa;
    int lfd = s_listener(&sa, true);
    t_t *t = calloc(1, sizeof *t);
    t->l = rb_loop_new();
    t->e.fd = -1;
    assert_int_equal(rb_loop_add_fd(t->l, lfd, RB_EV_READ, s_on_accept, t), 0);
    t->p.pump = rb_pump_new(t->l, s_connecting(&sa), true, &s_handlers, &t->p);
    assert_non_null(t->p.pump);

    size_t total = WIN / 2 + 12345;
    uint8_t *src = s_pattern(total);
    for (size_t off = 0; off < total; off += CHUNK) {
        size_t n = total - off < CHUNK ? total - off : CHUNK;
        assert_int_equal(s_peer_send(&t->p, 0, src + off, n), RB_PUMP_GOING);
    }
    assert_int_equal(s_peer_send(&t->p, RB_FRAME_FIN, NULL, 0), RB_PUMP_GOING);
    assert_int_equal(rb_pump_pending(t->p.pump), total);
    assert_int_equal(rb_pump_bytes_written(t->p.pump), 0);

    assert_true(s_until(t, s_end_eof, 5000));
    assert_int_equal(t->p.connected, 1);
    assert_int_equal(t->p.conn_err, 0);
    assert_int_equal(t->p.written_at_connect, 0); /* nothing went out before */
    assert_int_equal(t->e.err, 0);
    assert_int_equal(t->e.in.len, total);
    assert_true(s_is_pattern(t->e.in.d, total));
    assert_int_equal(rb_pump_pending(t->p.pump), 0);
    assert_true(t->p.granted >= WIN / 4);
    assert_true(total - t->p.granted < WIN / 4);
    int one = 0;
    socklen_t len = sizeof one;
    assert_int_equal(getsockopt(rb_pump_fd(t->p.pump), IPPROTO_TCP, TCP_NODELAY, &one, &len), 0);
    assert_int_equal(one, 1);

    /* The answer comes back, then the end closes: done, no reset. */
    s_end_send(&t->e, "late", 4, true);
    assert_true(s_until(t, s_peer_done, 5000));
    assert_int_equal(t->p.got.len, 4);
    assert_memory_equal(t->p.got.d, "late", 4);
    assert_int_equal(t->p.fin, 1);
    assert_false(t->p.reset);
    s_free(t);
    close(lfd);
    free(src);
}

/* ---- rb_pump_note_sent ---- */

static void test_note_sent(void **state)
{
    t_t *t = s_new(false);
    rb_pump_note_sent(t->p.pump, WIN - 10, false);
    assert_int_equal(rb_pump_bytes_read(t->p.pump), WIN - 10);
    uint8_t *src = s_pattern(100);
    s_end_send(&t->e, src, 100, false);
    t->n = 10;
    assert_true(s_until(t, s_got_n, 5000));
    s_quiet(t, 50);
    assert_int_equal(t->p.got.len, 10); /* the credit left */
    s_peer_grant(&t->p, 1000);
    t->n = 100;
    assert_true(s_until(t, s_got_n, 5000));
    assert_true(s_is_pattern(t->p.got.d, 100));
    assert_int_equal(rb_pump_bytes_read(t->p.pump), WIN + 90);

    /* More than the credit left counts as all of it. */
    rb_pump_note_sent(t->p.pump, 5 * WIN, false);
    s_end_send(&t->e, "zz", 2, false);
    s_quiet(t, 50);
    assert_int_equal(t->p.got.len, 100);

    /* A FIN the owner sent: the socket is not read again. */
    s_peer_grant(&t->p, WIN);
    t->n = 102;
    assert_true(s_until(t, s_got_n, 5000));
    rb_pump_note_sent(t->p.pump, 0, true);
    s_end_send(&t->e, "ignored", 7, false);
    s_quiet(t, 50);
    assert_int_equal(t->p.got.len, 102);
    assert_int_equal(t->p.fin, 0); /* the owner sent it */
    /* The peer's FIN then ends the stream. */
    assert_int_equal(s_peer_send(&t->p, RB_FRAME_FIN, NULL, 0), RB_PUMP_OVER);
    s_free(t);
    free(src);
}

/* ---- hang-up while parked ---- */

/* Our side is shut (the peer's FIN went out) and the end sends its last
 * bytes and closes while the peer has given no credit. epoll reports the
 * hang-up whatever the mask: the pump must not spin on it, and once credit
 * comes it must deliver what is left, then FIN, then done. */
static void test_hangup_while_parked(void **state)
{
    t_t *t = s_new(true);
    rb_pump_note_sent(t->p.pump, WIN, false); /* no credit */
    assert_int_equal(s_peer_send(&t->p, RB_FRAME_FIN, NULL, 0), RB_PUMP_GOING);

    size_t total = 60000; /* fits in the socket's buffers unread */
    uint8_t *src = s_pattern(total);
    s_end_read(&t->e);
    s_end_send(&t->e, src, total, true);
    assert_true(s_until(t, s_end_sent_eof, 5000)); /* it saw our FIN */
    s_end_close(&t->e, false);
    assert_true(s_until(t, s_pump_hup, 5000)); /* the case under test */

    double cpu = s_quiet(t, 300);
    if (cpu > 150) fail_msg("the loop spun: %.0f ms of CPU in 300 ms", cpu);
    assert_int_equal(t->p.got.len, 0);
    assert_int_equal(t->p.done, 0);

    /* Some credit: that much, and again no spinning. */
    s_peer_grant(&t->p, 30000);
    t->n = 30000;
    assert_true(s_until(t, s_got_n, 5000));
    cpu = s_quiet(t, 200);
    if (cpu > 100) fail_msg("the loop spun: %.0f ms of CPU in 200 ms", cpu);
    assert_int_equal(t->p.got.len, 30000);
    assert_int_equal(t->p.fin, 0);

    /* The rest, FIN, done. */
    s_peer_grant(&t->p, WIN);
    assert_true(s_until(t, s_peer_done, 5000));
    assert_int_equal(t->p.got.len, total);
    assert_true(s_is_pattern(t->p.got.d, total));
    assert_int_equal(t->p.fin, 1);
    assert_true(t->p.done_after_fin);
    assert_false(t->p.reset);
    assert_int_equal(t->p.rst, 0);
    s_free(t);
    free(src);
}

/* ---- contract checks an earlier rb_pump.c failed ---- */

/* rb_pump.h: "Calls into the pump never call back; callbacks come from
 * the loop only." rb_pump_peer_data grants credit (window()) from inside
 * the call when the socket takes a quarter window at once. */
static void test_calls_never_call_back(void **state)
{
    t_t *t = s_new(false);
    uint8_t *src = s_pattern(WIN);
    s_end_read(&t->e);
    for (size_t sent = 0; sent < WIN; sent += CHUNK) {
        assert_int_equal(s_peer_send(&t->p, 0, src + sent, CHUNK), RB_PUMP_GOING);
        /* Let the end drain the socket, so the next send goes straight in. */
        t->n = sent + CHUNK;
        assert_true(s_until(t, s_end_n, 5000));
    }
    assert_int_equal(t->p.calls_back, 0);
    assert_true(t->p.granted >= WIN / 2); /* credit did come back, from the loop */
    s_free(t);
    free(src);
}

/* A write to the socket that fails inside rb_pump_peer_data (the local
 * program closed; loopback answers the first write with RST at once) must
 * not end the stream silently: RB_PUMP_OVER tells the owner "over, nothing
 * to send", so the peer never hears of it. Either the call reports it as a
 * reset for the owner to pass on (RB_PUMP_OVERRUN), or the loop sends
 * data(RST) and done(reset). */
static void test_write_error_resets_peer(void **state)
{
    t_t *t = s_new(true);
    s_end_close(&t->e, false);
    int rc = RB_PUMP_GOING;
    for (int i = 0; i < 10 && rc == RB_PUMP_GOING; i++)
        rc = s_peer_send(&t->p, 0, "data", 4);
    if (rc == RB_PUMP_GOING || rc == RB_PUMP_OVER) {
        if (rc == RB_PUMP_GOING) {
            assert_true(s_until(t, s_peer_done, 5000));
        } else {
            s_until(t, s_peer_done, 200);
        }
        assert_int_equal(t->p.rst, 1);
        assert_int_equal(t->p.done, 1);
        assert_true(t->p.reset);
    }
    s_free(t);
}

/* rb_pump.h: "The owner destroys the pump now or later." A finished pump
 * that is not destroyed at once leaves its fd in the loop with an empty
 * mask; epoll keeps reporting the socket's hang-up and the loop spins. */
static void test_finished_pump_left_alone_does_not_spin(void **state)
{
    t_t *t = s_new(true);
    s_end_close(&t->e, true);
    assert_true(s_until(t, s_peer_done, 5000));
    assert_true(t->p.reset);
    double cpu = s_quiet(t, 300);
    if (cpu > 150) fail_msg("the loop spun after done(): %.0f ms of CPU in 300 ms", cpu);
    s_free(t);
}

static int s_setup(void **state)
{
    rb_log_init("test", RB_LOG_WARN);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_read_stops_at_window),
        cmocka_unit_test(test_hold_input),
        cmocka_unit_test(test_peer_data_buffered_and_granted),
        cmocka_unit_test(test_peer_keeps_sending_with_grants),
        cmocka_unit_test(test_overrun),
        cmocka_unit_test(test_socket_eof_then_peer_fin),
        cmocka_unit_test(test_peer_fin_with_data),
        cmocka_unit_test(test_peer_rst_resets_socket),
        cmocka_unit_test(test_socket_reset),
        cmocka_unit_test(test_data_refused_resets),
        cmocka_unit_test(test_destroy_live_resets),
        cmocka_unit_test(test_connect_refused),
        cmocka_unit_test(test_connect_flushes_early_data),
        cmocka_unit_test(test_note_sent),
        cmocka_unit_test(test_hangup_while_parked),
        cmocka_unit_test(test_calls_never_call_back),
        cmocka_unit_test(test_write_error_resets_peer),
        cmocka_unit_test(test_finished_pump_left_alone_does_not_spin),
    };
    return cmocka_run_group_tests(tests, s_setup, NULL);
}
