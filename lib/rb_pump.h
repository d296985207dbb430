/* rb_pump: the end of a tunnelled TCP stream at a real socket. The client
 * (local services, forwards) and the forwarder (internal servers) both pump
 * bytes between a socket and a stream whose other end is a peer across the
 * edge, with the stream's credit windows (rb_frame.h, RB_STREAM_WINDOW):
 *   socket -> peer: read only while the peer has granted credit, at most
 *     a few DATA frames per wake-up (so streams take turns);
 *   peer -> socket: what the socket cannot take at once is kept (never more
 *     than the window, which the peer must respect) and credit is granted
 *     back as the socket takes it.
 * EOF on the socket is sent as FIN, a FIN from the peer becomes
 * shutdown(SHUT_WR), and resets travel both ways (SO_LINGER 0 on our side).
 *
 * Calls into the pump never call back; callbacks come from the loop only.
 * The owner may destroy the pump from done() and from connected() with an
 * error, not from data(), window() or a successful connected(). */
#ifndef RB_PUMP_H
#define RB_PUMP_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "rb_loop.h"

typedef struct rb_pump rb_pump_t;

typedef struct {
    /* Bytes from the socket for the peer: flags RB_FRAME_FIN (len 0) at
     * EOF. Returns 0, or -1 when they cannot be sent (the pump resets). */
    int (*data)(void *arg, uint8_t flags, const uint8_t *buf, size_t len);
    /* Grant the peer inc more bytes. 0 or -1 as for data. */
    int (*window)(void *arg, uint32_t inc);
    /* A connecting socket is connected (err 0) or failed (err an errno);
     * after a failure the pump is finished. May be NULL. */
    void (*connected)(void *arg, int err);
    /* The stream is over: both directions closed (reset false), or it was
     * reset or failed (reset true; the peer has been sent RST unless the
     * reset came from it). The owner destroys the pump now or later. */
    void (*done)(void *arg, bool reset, const char *why);
} rb_pump_handlers_t;

/* Takes fd, which must be non-blocking (TCP_NODELAY is set here, where it
 * applies).
 * connecting: a non-blocking connect is in progress. NULL on error (fd is
 * left open). */
rb_pump_t *rb_pump_new(rb_loop_t *loop, int fd, bool connecting, const rb_pump_handlers_t *h,
                       void *arg);
/* Accepts NULL; clears the pointer. A stream that is not over is reset
 * (the socket's peer sees RST). No callback. */
void rb_pump_destroy(rb_pump_t **p);

/* What a call from the owner did to the pump. */
enum { RB_PUMP_GOING = 0, RB_PUMP_OVER = 1, RB_PUMP_OVERRUN = -1 };
/* Bytes from the peer (flags FIN/RST). RB_PUMP_OVER when the stream is now
 * over (an RST, or the last FIN flushed); RB_PUMP_OVERRUN when the peer sent
 * more than its credit, or memory ran out (the socket is reset; the owner
 * resets the peer). Either way the owner destroys the pump. A socket error
 * met here is reported from the loop (data(RST), done). */
int rb_pump_peer_data(rb_pump_t *p, uint8_t flags, const uint8_t *buf, size_t len);
/* The owner sent n bytes of this stream itself (data read before the
 * pump existed), and a FIN after them when fin: they count against the
 * peer's credit, and the socket is not read again after a FIN. */
void rb_pump_note_sent(rb_pump_t *p, size_t n, bool fin);
/* The peer granted inc more bytes. */
void rb_pump_peer_window(rb_pump_t *p, uint32_t inc);
/* hold: stop reading the socket (its bytes wait in the kernel, TCP holds
 * the sender back) whatever the credit, until called with false; the
 * other direction goes on. The forwarder holds every stream of a session
 * whose device has not taken what it was sent (RB_SESSION_WINDOW). May be
 * called from data(). */
void rb_pump_hold_input(rb_pump_t *p, bool hold);
/* Bytes taken from the socket and bytes written to it. */
uint64_t rb_pump_bytes_read(const rb_pump_t *p);
uint64_t rb_pump_bytes_written(const rb_pump_t *p);
/* The socket (for getsockname and the like). */
int rb_pump_fd(const rb_pump_t *p);
/* Bytes waiting for the socket to take them. */
size_t rb_pump_pending(const rb_pump_t *p);

#endif
