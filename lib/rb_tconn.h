/* rb_tconn: one non-blocking TLS connection carrying tunnel frames
 * (rb_frame.h), driven by the loop. Used by the edge (server side) and by
 * the client and load generator (client side, many per process).
 *
 * Memory: an idle connection holds no read or write buffer of its own; they
 * are allocated while they hold bytes and freed when empty. Together with
 * SSL_MODE_RELEASE_BUFFERS (set by rb_tls.c) an idle session costs little
 * more than OpenSSL's SSL object.
 *
 * Callbacks are only made from the loop (never from inside an rb_tconn_*
 * call), and any of them may call rb_tconn_destroy on the connection.
 *
 * Output is sent with send(MSG_NOSIGNAL): a peer that resets mid-write
 * ends the connection (RB_TCONN_IO_ERROR), it does not raise SIGPIPE.
 * Frames queued while the loop handles one pass of events leave in one
 * write at the end of the pass (rb_loop_defer). */
#ifndef RB_TCONN_H
#define RB_TCONN_H
#include <openssl/ssl.h>
#include <stddef.h>
#include "rb_frame.h"
#include "rb_loop.h"

typedef struct rb_tconn rb_tconn_t;

/* Why a connection ended, for the owner's bookkeeping (exit codes,
 * metrics); the reason text says more. */
typedef enum {
    RB_TCONN_CONNECT_FAILED = 1, /* TCP connect failed (client side) */
    RB_TCONN_TLS_FAILED,         /* handshake failed or timed out */
    RB_TCONN_PEER_CLOSED,        /* EOF, with or without close_notify */
    RB_TCONN_IO_ERROR,           /* socket or TLS error after the handshake */
    RB_TCONN_PROTOCOL,           /* malformed frame (logged here) */
    RB_TCONN_LOCAL,              /* rb_tconn_close_after_flush completed */
} rb_tconn_end_t;

typedef struct {
    /* The handshake completed. May be NULL. */
    void (*on_open)(rb_tconn_t *c, void *arg);
    /* One complete frame; f->payload is only valid during the call. No
     * further frames are delivered once close_after_flush was called. */
    void (*on_frame)(rb_tconn_t *c, const rb_frame_t *f, void *arg);
    /* The connection has ended (fd closed, TLS freed); called once, except
     * after rb_tconn_destroy. The owner must still destroy the object, and
     * may do so from here. */
    void (*on_close)(rb_tconn_t *c, rb_tconn_end_t end, const char *reason, void *arg);
    /* Everything queued has been handed to the socket (there was output
     * to send): the peer is reading. May be NULL. */
    void (*on_drained)(rb_tconn_t *c, void *arg);
} rb_tconn_handlers_t;

/* Server side: takes ownership of fd (an accepted socket; made non-blocking
 * with TCP_NODELAY here) and starts the handshake. peer is a printable
 * address for logs ("ip:port"). NULL on error (fd is closed then). */
rb_tconn_t *rb_tconn_accept(rb_loop_t *loop, SSL_CTX *ctx, int fd, const char *peer,
                            const rb_tconn_handlers_t *h, void *arg);
/* Client side: resolves host:port (numeric or a name; "[v6]:port"), starts
 * a non-blocking connect, then the handshake. The server certificate must
 * match verify_name (a DNS name or an IP literal; NULL means the host part
 * of hostport). NULL when the address cannot be parsed or resolved. */
rb_tconn_t *rb_tconn_dial(rb_loop_t *loop, SSL_CTX *ctx, const char *hostport,
                          const char *verify_name, const rb_tconn_handlers_t *h, void *arg);
/* Accepts NULL; clears the pointer. Closes at once without a callback. */
void rb_tconn_destroy(rb_tconn_t **c);

/* Queue one frame. 0, or -1 when the connection is not open (or closing),
 * the frame is over the limits of rb_frame.h, or memory runs out. */
int rb_tconn_send_control(rb_tconn_t *c, const Rb__Tunnel__TunnelControl *msg);
int rb_tconn_send_frame(rb_tconn_t *c, uint8_t type, uint8_t flags, uint32_t stream_id,
                        const void *data, size_t len);
/* Stops reading frames, flushes what is queued, sends close_notify, then
 * ends with RB_TCONN_LOCAL. Before the handshake completes it just closes. */
void rb_tconn_close_after_flush(rb_tconn_t *c);

/* Bytes queued and not yet taken by the socket (for back-pressure). */
size_t rb_tconn_output_pending(const rb_tconn_t *c);
/* Memory held for output, queued or not: emptied buffers are kept while
 * output keeps coming and given back after a second without any. */
size_t rb_tconn_output_memory(const rb_tconn_t *c);
/* "ip:port" of the peer, for logs. */
const char *rb_tconn_peer(const rb_tconn_t *c);
/* True between on_open and the end (or close_after_flush). */
bool rb_tconn_is_open(const rb_tconn_t *c);
const char *rb_tconn_end_str(rb_tconn_end_t end);

#endif
