/* rb_loop: the one event loop per thread. epoll for file descriptors, a
 * min-heap of timers, signalfd for signals, and ZeroMQ sockets.
 *
 * ZeroMQ sockets join through ZMQ_FD, which is edge-triggered and only says
 * the socket's state may have changed. Before each wait the loop reads
 * ZMQ_EVENTS of every registered socket whose fd fired or that was used
 * since (rb_loop_zsock_used) and calls the handler while ZMQ_POLLIN is set,
 * so a send that consumed the edge (the classic ZeroMQ event-loop hang)
 * cannot leave a message unread. */
#ifndef RB_LOOP_H
#define RB_LOOP_H
#include <stdbool.h>
#include <stdint.h>

typedef struct rb_loop rb_loop_t;
typedef struct rb_timer rb_timer_t;

#define RB_EV_READ 0x1u
#define RB_EV_WRITE 0x2u
#define RB_EV_ERROR 0x4u   /* reported only: hang-up or error on the fd */

typedef void(rb_io_fn)(rb_loop_t *loop, int fd, unsigned events, void *arg);
typedef void(rb_timer_fn)(rb_loop_t *loop, void *arg);
typedef void(rb_signal_fn)(rb_loop_t *loop, int signo, void *arg);
/* Called while the ZeroMQ socket has a message to read; it should receive
 * (with ZMQ_DONTWAIT) at least one message, and may receive all of them. */
typedef void(rb_zsock_fn)(rb_loop_t *loop, void *zsock, void *arg);

/* Returns NULL on error. */
rb_loop_t *rb_loop_new(void);
/* Accepts NULL; clears the pointer. Does not close registered fds. */
void rb_loop_destroy(rb_loop_t **loop);

/* Level-triggered watch of fd. Returns 0 or -1. */
int rb_loop_add_fd(rb_loop_t *loop, int fd, unsigned events, rb_io_fn *fn, void *arg);
int rb_loop_mod_fd(rb_loop_t *loop, int fd, unsigned events);
/* Safe to call from inside a handler, for any fd (pending events for it in
 * the current batch are dropped). */
int rb_loop_del_fd(rb_loop_t *loop, int fd);
/* Stops reporting fd's events for ms milliseconds, then watches it again as
 * before (a listener whose accept ran out of descriptors stays readable:
 * retrying at once would spin). Pausing a paused fd changes nothing;
 * del_fd ends the pause. 0 or -1. */
int rb_loop_pause_fd(rb_loop_t *loop, int fd, uint64_t ms);

/* Fires after ms milliseconds, then every ms if repeat. Returns NULL on
 * error. The timer belongs to the loop: a one-shot timer is freed after it
 * fires; cancel any other with rb_loop_cancel_timer (NULL is accepted). */
rb_timer_t *rb_loop_add_timer(rb_loop_t *loop, uint64_t ms, bool repeat, rb_timer_fn *fn,
                              void *arg);
void rb_loop_cancel_timer(rb_loop_t *loop, rb_timer_t *t);

/* Work for the end of the current pass over events, before the loop next
 * sleeps: output that several handlers add to (frames for one connection)
 * goes out in one write instead of one per handler. The owner embeds the
 * rb_defer_t (zeroed before first use) and must rb_loop_undefer it before
 * freeing it. Deferring a queued entry changes nothing. */
typedef struct rb_defer rb_defer_t;
typedef void(rb_defer_fn)(rb_loop_t *loop, void *arg);
struct rb_defer {
    rb_defer_t *prev, *next;
    rb_defer_fn *fn;
    void *arg;
    bool queued;
    unsigned pass; /* the loop's pass it was queued in */
};
void rb_loop_defer(rb_loop_t *loop, rb_defer_t *d, rb_defer_fn *fn, void *arg);
void rb_loop_undefer(rb_loop_t *loop, rb_defer_t *d);

/* Delivers signo through the loop (blocks it for the thread). 0 or -1. */
int rb_loop_add_signal(rb_loop_t *loop, int signo, rb_signal_fn *fn, void *arg);

/* Watches a ZeroMQ socket for input. 0 or -1. */
int rb_loop_add_zsock(rb_loop_t *loop, void *zsock, rb_zsock_fn *fn, void *arg);
int rb_loop_del_zsock(rb_loop_t *loop, void *zsock);
/* Call with every send on a registered socket (and any other call that
 * may process ZeroMQ's commands, such as a connect, outside the socket's
 * own handler), before or after it: such a call can take the notification
 * of new input with it, so the loop asks the socket at its next pass,
 * before it sleeps. Acts on the loop running on this thread; any socket
 * pointer is accepted. */
void rb_loop_zsock_used(void *zsock);
/* Call when a receive with ZMQ_DONTWAIT on a registered socket failed with
 * EAGAIN and the socket is not used again before the handler returns: that
 * receive took ZeroMQ's pending commands, so the loop need not read
 * ZMQ_EVENTS before it sleeps (two system calls saved per batch). */
void rb_loop_zsock_drained(void *zsock);

/* Runs until rb_loop_stop. Returns 0, or -1 on an epoll failure. */
int rb_loop_run(rb_loop_t *loop);
void rb_loop_stop(rb_loop_t *loop);

/* Monotonic milliseconds. */
uint64_t rb_now_ms(void);
/* Wall-clock Unix time in milliseconds. */
uint64_t rb_wall_ms(void);

#endif
