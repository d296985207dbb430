/* rb_loop: timers, fds, signals and the ZeroMQ edge-trigger contract. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <stdbool.h>
#include <sys/socket.h>
#include <unistd.h>
#include <zmq.h>

#include "rb_loop.h"

typedef struct {
    int fired;
    uint64_t first_ms;
    rb_timer_t *self;
} tick_t;

static void s_stop(rb_loop_t *l, void *arg) { rb_loop_stop(l); }

static void s_count(rb_loop_t *l, void *arg)
{
    tick_t *t = arg;
    if (t->fired++ == 0) t->first_ms = rb_now_ms();
    if (t->fired == 5) rb_loop_cancel_timer(l, t->self);   /* cancel from inside itself */
}

static void test_timers_fire_in_order_and_cancel(void **state)
{
    rb_loop_t *l = rb_loop_new();
    assert_non_null(l);
    tick_t t = {0};
    uint64_t start = rb_now_ms();
    t.self = rb_loop_add_timer(l, 10, true, s_count, &t);
    tick_t never = {0};
    rb_timer_t *c = rb_loop_add_timer(l, 20, false, s_count, &never);
    rb_loop_cancel_timer(l, c);
    rb_loop_add_timer(l, 150, false, s_stop, NULL);
    assert_int_equal(rb_loop_run(l), 0);
    assert_int_equal(t.fired, 5);        /* cancelled at 5 although 150 ms passed */
    assert_int_equal(never.fired, 0);
    assert_true(t.first_ms - start >= 10);
    rb_loop_destroy(&l);
    assert_null(l);
    rb_loop_destroy(NULL);
}

typedef struct {
    int reads;
    int fd_other;
} io_t;

static void s_on_read(rb_loop_t *l, int fd, unsigned ev, void *arg)
{
    io_t *io = arg;
    char buf[16];
    ssize_t n = read(fd, buf, sizeof buf);
    if (n > 0) io->reads++;
    /* Removing the other fd from inside a handler must drop its pending
     * event in this batch, not call a stale handler. */
    if (io->fd_other >= 0) {
        rb_loop_del_fd(l, io->fd_other);
        io->fd_other = -1;
    }
    rb_loop_del_fd(l, fd);
}

static void test_fd_events_and_delete_in_batch(void **state)
{
    rb_loop_t *l = rb_loop_new();
    int a[2], b[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, a), 0);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, b), 0);
    io_t ioa = {0, b[0]}, iob = {0, a[0]};
    assert_int_equal(rb_loop_add_fd(l, a[0], RB_EV_READ, s_on_read, &ioa), 0);
    assert_int_equal(rb_loop_add_fd(l, b[0], RB_EV_READ, s_on_read, &iob), 0);
    assert_int_equal(write(a[1], "x", 1), 1);
    assert_int_equal(write(b[1], "y", 1), 1);
    rb_loop_add_timer(l, 50, false, s_stop, NULL);
    rb_loop_run(l);
    /* Exactly one handler ran: the first removed the other. */
    assert_int_equal(ioa.reads + iob.reads, 1);
    close(a[0]), close(a[1]), close(b[0]), close(b[1]);
    rb_loop_destroy(&l);
}

/* Adding an fd that is already watched fails, and leaves the watch that
 * exists working. */
static void test_add_twice_keeps_the_first(void **state)
{
    rb_loop_t *l = rb_loop_new();
    int a[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, a), 0);
    io_t first = {0, -1}, second = {0, -1};
    assert_int_equal(rb_loop_add_fd(l, a[0], RB_EV_READ, s_on_read, &first), 0);
    assert_int_equal(rb_loop_add_fd(l, a[0], RB_EV_READ, s_on_read, &second), -1);
    assert_int_equal(write(a[1], "x", 1), 1);
    rb_loop_add_timer(l, 50, false, s_stop, NULL);
    rb_loop_run(l);
    assert_int_equal(first.reads, 1);
    assert_int_equal(second.reads, 0);
    close(a[0]), close(a[1]);
    rb_loop_destroy(&l);
}

static void s_on_sig(rb_loop_t *l, int signo, void *arg)
{
    *(int *)arg = signo;
    rb_loop_stop(l);
}

static void s_raise(rb_loop_t *l, void *arg) { raise(SIGUSR1); }

typedef struct {
    int calls;
    uint64_t first_after_pause_ms;
    uint64_t pause_end_ms;
} paused_t;

static void s_on_readable(rb_loop_t *l, int fd, unsigned events, void *arg)
{
    paused_t *p = arg;
    p->calls++;
    if (p->pause_end_ms && !p->first_after_pause_ms) p->first_after_pause_ms = rb_now_ms();
}

/* A paused fd (always readable here, like a listener out of descriptors)
 * reports nothing until the pause ends, then as before; del_fd during a
 * pause ends it without a late timer touching the slot. */
static void test_pause_fd(void **state)
{
    rb_loop_t *l = rb_loop_new();
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    assert_int_equal(write(sv[1], "x", 1), 1);   /* never read: stays readable */
    paused_t p = {0};
    assert_int_equal(rb_loop_add_fd(l, sv[0], RB_EV_READ, s_on_readable, &p), 0);
    assert_int_equal(rb_loop_pause_fd(l, sv[0], 200), 0);
    assert_int_equal(rb_loop_pause_fd(l, sv[0], 5000), 0);   /* already paused: unchanged */
    uint64_t t0 = rb_now_ms();
    p.pause_end_ms = t0 + 200;
    rb_loop_add_timer(l, 150, false, s_stop, NULL);
    rb_loop_run(l);
    assert_int_equal(p.calls, 0);
    rb_loop_add_timer(l, 150, false, s_stop, NULL);
    rb_loop_run(l);
    assert_true(p.calls > 0);
    assert_true(p.first_after_pause_ms >= t0 + 195);

    assert_int_equal(rb_loop_pause_fd(l, sv[0], 50), 0);
    assert_int_equal(rb_loop_del_fd(l, sv[0]), 0);
    assert_int_equal(rb_loop_pause_fd(l, sv[0], 50), -1);   /* not registered */
    int before = p.calls;
    rb_loop_add_timer(l, 120, false, s_stop, NULL);
    rb_loop_run(l);
    assert_int_equal(p.calls, before);
    close(sv[0]);
    close(sv[1]);
    rb_loop_destroy(&l);
}

static void test_signal_through_loop(void **state)
{
    rb_loop_t *l = rb_loop_new();
    int got = 0;
    assert_int_equal(rb_loop_add_signal(l, SIGUSR1, s_on_sig, &got), 0);
    rb_loop_add_timer(l, 5, false, s_raise, NULL);
    rb_loop_add_timer(l, 2000, false, s_stop, NULL);
    rb_loop_run(l);
    assert_int_equal(got, SIGUSR1);
    rb_loop_destroy(&l);
}

/* Ping-pong over a ZeroMQ pair where each side answers from inside its
 * receive handler. A send can consume the ZMQ_FD edge of the same socket;
 * if the loop only waited on ZMQ_FD, the exchange would stall. */
typedef struct {
    void *a, *b;
    int rounds;
} zpp_t;

/* Takes exactly one message and answers it, so the handler's last act is a
 * send: the pattern that consumes the edge while input is still queued. */
static void s_zrecv(rb_loop_t *l, void *sock, void *arg)
{
    zpp_t *z = arg;
    char buf[8];
    if (zmq_recv(sock, buf, sizeof buf, ZMQ_DONTWAIT) < 0) return;
    if (++z->rounds >= 2000) {
        rb_loop_stop(l);
        return;
    }
    zmq_send(sock, "p", 1, ZMQ_DONTWAIT);
}

static void test_zmq_edge_trigger_never_strands_messages(void **state)
{
    void *ctx = zmq_ctx_new();
    zpp_t z = {zmq_socket(ctx, ZMQ_PAIR), zmq_socket(ctx, ZMQ_PAIR), 0};
    assert_int_equal(zmq_bind(z.a, "inproc://pp"), 0);
    assert_int_equal(zmq_connect(z.b, "inproc://pp"), 0);
    rb_loop_t *l = rb_loop_new();
    assert_int_equal(rb_loop_add_zsock(l, z.a, s_zrecv, &z), 0);
    assert_int_equal(rb_loop_add_zsock(l, z.b, s_zrecv, &z), 0);
    /* Several messages in flight at once. */
    for (int i = 0; i < 4; i++) zmq_send(z.a, "p", 1, 0);
    rb_loop_add_timer(l, 5000, false, s_stop, NULL);
    uint64_t t0 = rb_now_ms();
    rb_loop_run(l);
    assert_true(z.rounds >= 2000);
    /* No round waited for the loop's idle timeout. */
    assert_true(rb_now_ms() - t0 < 2500);
    rb_loop_del_zsock(l, z.a);
    rb_loop_del_zsock(l, z.b);
    zmq_close(z.a);
    zmq_close(z.b);
    zmq_ctx_term(ctx);
    rb_loop_destroy(&l);
}

/* A call outside a socket's handler that processes ZeroMQ's commands (here
 * ZMQ_EVENTS; a send does the same) takes the notification of a pending
 * message with it: ZMQ_FD stays quiet. The loop must still deliver the
 * message before it sleeps, because the caller said rb_loop_zsock_used. */
typedef struct {
    void *a, *b;
    int got;
    uint64_t sent_ms, got_ms;
} quiet_t;

static void s_quiet_recv(rb_loop_t *l, void *sock, void *arg)
{
    quiet_t *q = arg;
    char buf[8];
    while (zmq_recv(sock, buf, sizeof buf, ZMQ_DONTWAIT) >= 0) {
        q->got++;
        q->got_ms = rb_now_ms();
        rb_loop_stop(l);
    }
}

static void s_quiet_send(rb_loop_t *l, void *arg)
{
    quiet_t *q = arg;
    zmq_send(q->a, "x", 1, 0);
    int ev = 0;
    size_t sz = sizeof ev;
    zmq_getsockopt(q->b, ZMQ_EVENTS, &ev, &sz);   /* consumes the notification */
    rb_loop_zsock_used(q->b);
    q->sent_ms = rb_now_ms();
}

static void test_zsock_used_outside_handler(void **state)
{
    void *ctx = zmq_ctx_new();
    quiet_t q = {zmq_socket(ctx, ZMQ_PAIR), zmq_socket(ctx, ZMQ_PAIR), 0, 0, 0};
    assert_int_equal(zmq_bind(q.b, "inproc://quiet"), 0);
    assert_int_equal(zmq_connect(q.a, "inproc://quiet"), 0);
    rb_loop_t *l = rb_loop_new();
    assert_int_equal(rb_loop_add_zsock(l, q.b, s_quiet_recv, &q), 0);
    rb_loop_add_timer(l, 50, false, s_quiet_send, &q);
    rb_loop_add_timer(l, 3000, false, s_stop, NULL);
    rb_loop_run(l);
    assert_int_equal(q.got, 1);
    assert_true(q.got_ms - q.sent_ms < 500);
    rb_loop_del_zsock(l, q.b);
    zmq_close(q.a);
    zmq_close(q.b);
    zmq_ctx_term(ctx);
    rb_loop_destroy(&l);
}

/* Every zmq_getsockopt(ZMQ_EVENTS) of this test binary, rb_loop's included
 * (linked with --wrap=zmq_getsockopt). */
int __real_zmq_getsockopt(void *s, int option, void *value, size_t *len);
int __wrap_zmq_getsockopt(void *s, int option, void *value, size_t *len);
static int s_events_reads;
int __wrap_zmq_getsockopt(void *s, int option, void *value, size_t *len)
{
    if (option == ZMQ_EVENTS) s_events_reads++;
    return __real_zmq_getsockopt(s, option, value, len);
}

/* A handler that reads until a receive finds nothing and says so
 * (rb_loop_zsock_drained) spares the loop its ZMQ_EVENTS read after the
 * handler, and still gets every later message, including one that arrives
 * after it used the socket again (rb_loop_zsock_used undoes the drain). */
typedef struct {
    void *a, *b;
    int got, batches;
    bool drain_says, reply_after_drain;
} drain_t;

static void s_drain_recv(rb_loop_t *l, void *sock, void *arg)
{
    drain_t *d = arg;
    char buf[8];
    d->batches++;
    while (zmq_recv(sock, buf, sizeof buf, ZMQ_DONTWAIT) >= 0)
        d->got++;
    if (errno == EAGAIN && d->drain_says) rb_loop_zsock_drained(sock);
    if (d->reply_after_drain) {
        zmq_send(sock, "r", 1, ZMQ_DONTWAIT);
        rb_loop_zsock_used(sock);
    }
}

static void s_drain_send(rb_loop_t *l, void *arg)
{
    drain_t *d = arg;
    zmq_send(d->a, "x", 1, 0);
}

static void s_drain_reply(rb_loop_t *l, void *sock, void *arg)
{
    char buf[8];
    while (zmq_recv(sock, buf, sizeof buf, ZMQ_DONTWAIT) >= 0) {
        drain_t *d = arg;
        zmq_send(d->a, "x", 1, 0); /* the next message answers the reply */
        if (d->got >= 20) rb_loop_stop(l);
    }
}

static int s_drain_run(bool drain_says, bool reply_after_drain, drain_t *out)
{
    void *ctx = zmq_ctx_new();
    drain_t d = {zmq_socket(ctx, ZMQ_PAIR), zmq_socket(ctx, ZMQ_PAIR), 0, 0, drain_says,
                 reply_after_drain};
    assert_int_equal(zmq_bind(d.b, "inproc://drain"), 0);
    assert_int_equal(zmq_connect(d.a, "inproc://drain"), 0);
    rb_loop_t *l = rb_loop_new();
    assert_int_equal(rb_loop_add_zsock(l, d.b, s_drain_recv, &d), 0);
    if (reply_after_drain) {
        assert_int_equal(rb_loop_add_zsock(l, d.a, s_drain_reply, &d), 0);
        zmq_send(d.a, "x", 1, 0);
    } else {
        for (int i = 1; i <= 20; i++)
            rb_loop_add_timer(l, 10u * i, false, s_drain_send, &d);
        rb_loop_add_timer(l, 300, false, s_stop, NULL);
    }
    rb_loop_add_timer(l, 3000, false, s_stop, NULL);
    s_events_reads = 0;
    rb_loop_run(l);
    int reads = s_events_reads;
    rb_loop_del_zsock(l, d.b);
    if (reply_after_drain) rb_loop_del_zsock(l, d.a);
    zmq_close(d.a);
    zmq_close(d.b);
    zmq_ctx_term(ctx);
    rb_loop_destroy(&l);
    *out = d;
    return reads;
}

static void test_drained_socket_is_not_asked_again(void **state)
{
    drain_t plain, drained, replying;
    int asked_plain = s_drain_run(false, false, &plain);
    int asked_drained = s_drain_run(true, false, &drained);
    assert_int_equal(plain.got, 20);
    assert_int_equal(drained.got, 20);
    /* Twenty lone messages: without the drain, the loop asks before and
     * after each handler call; with it, only before. */
    assert_true(asked_plain >= 2 * plain.batches);
    assert_true(asked_drained <= drained.batches + 2);
    assert_true(asked_drained < asked_plain);
    /* A send after the drain brings the check back: no message strands. */
    assert_int_equal(s_drain_run(true, true, &replying) > 0, 1);
    assert_true(replying.got >= 20);
}

/* Deferred work: runs once per queuing, in queuing order, at the end of
 * the pass; what a deferred callback defers waits for the next pass, and
 * the loop does not sleep while anything is queued. */
typedef struct {
    rb_defer_t a, b, c, d;
    char order[64];
    size_t n;
    int a_runs;
} deferred_t;

static void s_note(deferred_t *x, char what)
{
    if (x->n + 1 < sizeof x->order) x->order[x->n++] = what;
}
static void s_run_b(rb_loop_t *l, void *arg) { s_note(arg, 'b'); }
static void s_run_c(rb_loop_t *l, void *arg) { s_note(arg, 'c'); }
static void s_run_d(rb_loop_t *l, void *arg) { s_note(arg, 'd'); }
static void s_run_a(rb_loop_t *l, void *arg)
{
    deferred_t *x = arg;
    s_note(x, 'a');
    if (++x->a_runs == 1) {
        rb_loop_defer(l, &x->d, s_run_d, x);   /* next pass, before a */
        rb_loop_defer(l, &x->a, s_run_a, x);
        rb_loop_defer(l, &x->a, s_run_a, x);   /* queued already: once */
    } else if (x->a_runs < 1000) {
        rb_loop_defer(l, &x->a, s_run_a, x);
    } else {
        rb_loop_stop(l);
    }
}

static void test_defer_runs_once_per_pass_in_order(void **state)
{
    rb_loop_t *l = rb_loop_new();
    deferred_t x = {0};
    rb_loop_defer(l, &x.a, s_run_a, &x);
    rb_loop_defer(l, &x.b, s_run_b, &x);
    rb_loop_defer(l, &x.c, s_run_c, &x);
    rb_loop_defer(l, &x.c, s_run_c, &x);
    rb_loop_undefer(l, &x.b);
    rb_loop_undefer(l, &x.b);   /* not queued: nothing happens */
    rb_loop_add_timer(l, 5000, false, s_stop, NULL);
    uint64_t t0 = rb_now_ms();
    rb_loop_run(l);
    assert_int_equal(x.a_runs, 1000);
    assert_memory_equal(x.order, "acdaaa", 6);
    /* A thousand passes, none of them waiting for the timer. */
    assert_true(rb_now_ms() - t0 < 2500);
    rb_loop_destroy(&l);
}

/* Work deferred in a run that is then stopped is not lost: the next run
 * does it first, and does not spin meanwhile (tests run the loop again and
 * again, until a condition holds). */
static void s_defer_b_and_stop(rb_loop_t *l, void *arg)
{
    deferred_t *x = arg;
    rb_loop_defer(l, &x->b, s_run_b, x);
    rb_loop_stop(l);
}
static void s_run_d_and_stop(rb_loop_t *l, void *arg)
{
    s_note(arg, 'd');
    rb_loop_stop(l);
}

static void test_a_stopped_run_leaves_deferred_work_to_the_next(void **state)
{
    rb_loop_t *l = rb_loop_new();
    deferred_t x = {0};
    rb_loop_add_timer(l, 1, false, s_defer_b_and_stop, &x);
    rb_loop_run(l);
    assert_int_equal(x.n, 0);
    rb_loop_defer(l, &x.d, s_run_d_and_stop, &x);
    rb_timer_t *guard = rb_loop_add_timer(l, 3000, false, s_stop, NULL);
    uint64_t t0 = rb_now_ms();
    rb_loop_run(l);
    assert_string_equal(x.order, "bd");
    assert_true(rb_now_ms() - t0 < 1500);
    rb_loop_cancel_timer(l, guard);
    rb_loop_destroy(&l);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_timers_fire_in_order_and_cancel),
        cmocka_unit_test(test_fd_events_and_delete_in_batch),
        cmocka_unit_test(test_add_twice_keeps_the_first),
        cmocka_unit_test(test_pause_fd),
        cmocka_unit_test(test_signal_through_loop),
        cmocka_unit_test(test_zmq_edge_trigger_never_strands_messages),
        cmocka_unit_test(test_defer_runs_once_per_pass_in_order),
        cmocka_unit_test(test_a_stopped_run_leaves_deferred_work_to_the_next),
        cmocka_unit_test(test_zsock_used_outside_handler),
        cmocka_unit_test(test_drained_socket_is_not_asked_again),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
