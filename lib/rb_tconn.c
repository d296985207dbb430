/* rb_tconn: a non-blocking TLS connection carrying tunnel frames. See
 * rb_tconn.h for the contract.
 *
 * States: CONNECTING (client: waiting for the TCP connect) -> HANDSHAKE ->
 * OPEN -> FLUSHING (close requested, output draining) -> LINGER (close_notify
 * sent, write side shut, reading until the peer closes so that our last
 * frames are not destroyed by a RST for unread input) -> DONE.
 *
 * Callbacks may destroy the object. Every entry from the loop counts itself
 * in c->depth; rb_tconn_destroy inside a callback only marks the object, and
 * the outermost entry frees it on the way out.
 *
 * Output: frames queue as plaintext (wbuf); OpenSSL encrypts them into
 * records that its write BIO (ours) appends to cbuf, and we send cbuf to the
 * socket ourselves. So one send carries many 16 KiB records (a bulk stream
 * costs a syscall per ENCRYPT_BATCH, not per record), the frames queued by
 * every handler of one loop pass go out together (rb_loop_defer), and
 * SSL_write never has to be retried. Input is read ahead (rb_tls.c) and
 * decrypted straight into rbuf, where frames are parsed in place. */
#include "rb_tconn.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "rb_buf.h"
#include "rb_log.h"
#include "rb_tls.h"

/* A peer that neither finishes the handshake nor goes away would otherwise
 * hold a slot forever. */
#define HANDSHAKE_MS 10000
/* How long a closing connection waits for the peer to take what is still
 * queued: one that stopped reading must not hold its buffers and its slot
 * for ever. */
#define FLUSH_MS 10000
/* How long a closing connection waits for the peer to close its side. */
#define LINGER_MS 2000
/* Bytes read per loop event before yielding to other connections. */
#define READ_BUDGET (256u * 1024)
/* Largest TLS record payload; one SSL_read never returns more. */
#define READ_CHUNK 16384
/* Plaintext encrypted per step, then sent before the next: large writes,
 * but ciphertext held back is bounded while the socket is full. */
#define ENCRYPT_BATCH (128u * 1024)
/* A TLS 1.3 record's header, content type byte and tag, with room to spare. */
#define RECORD_OVERHEAD 32u
/* The plaintext queue is compacted once this much was encrypted from it. */
#define WBUF_COMPACT (64u * 1024)
/* A connection keeps its emptied output buffers this long: freeing them
 * on every drain made a bulk stream allocate (and fault in) hundreds of
 * KiB per loop pass, and once glibc served those from mmap the device
 * client spent 90% of a core at a third of the rate. Idle connections
 * still hold none. */
#define TRIM_MS 1000

typedef enum { ST_CONNECTING, ST_HANDSHAKE, ST_OPEN, ST_FLUSHING, ST_LINGER, ST_DONE } st_t;

struct rb_tconn {
    rb_loop_t *loop;
    SSL *ssl;
    int fd;
    st_t st;
    unsigned watched;        /* RB_EV_* currently registered */
    bool blocked;            /* the socket refused output: wait for EPOLLOUT */
    bool wr_shut;            /* our side shut after close_notify */
    bool dead;               /* destroyed inside a callback */
    unsigned depth;
    rb_timer_t *timer;       /* handshake or linger deadline */
    rb_timer_t *resume;      /* continue reading after the budget ran out */
    rb_timer_t *trim;        /* frees the output buffers once idle (TRIM_MS) */
    bool wrote;              /* output since the trim timer was set */
    rb_defer_t flush;        /* output queued outside our own callbacks */
    rb_buf_t rbuf;           /* plaintext not yet whole frames; freed when idle */
    rb_buf_t wbuf;           /* frames; wbuf.data + woff not yet encrypted */
    size_t woff;
    rb_buf_t cbuf;           /* TLS records; cbuf.data + coff not yet sent */
    size_t coff;
    rb_tconn_handlers_t h;
    void *arg;
    char peer[64];
};

static void s_on_io(rb_loop_t *loop, int fd, unsigned events, void *arg);

const char *rb_tconn_end_str(rb_tconn_end_t end)
{
    switch (end) {
    case RB_TCONN_CONNECT_FAILED: return "connect_failed";
    case RB_TCONN_TLS_FAILED: return "tls_failed";
    case RB_TCONN_PEER_CLOSED: return "peer_closed";
    case RB_TCONN_IO_ERROR: return "io_error";
    case RB_TCONN_PROTOCOL: return "protocol";
    case RB_TCONN_LOCAL: return "local";
    }
    return "unknown";
}

/* OpenSSL's write BIO for a connection: records are appended to cbuf. It
 * never blocks; only running out of memory fails it. */
static int s_bio_write(BIO *b, const char *data, size_t len, size_t *written)
{
    rb_tconn_t *c = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (rb_buf_append(&c->cbuf, data, len) < 0) return 0;
    *written = len;
    return 1;
}

static long s_bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    (void)b, (void)num, (void)ptr;
    return cmd == BIO_CTRL_FLUSH ? 1 : 0;   /* the send is ours to make */
}

static int s_bio_create(BIO *b)
{
    BIO_set_init(b, 1);
    return 1;
}

static BIO_METHOD *s_out_method;
static void s_out_method_init(void)
{
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "rb_tconn output");
    if (m && BIO_meth_set_write_ex(m, s_bio_write) == 1 && BIO_meth_set_ctrl(m, s_bio_ctrl) == 1 &&
        BIO_meth_set_create(m, s_bio_create) == 1) {
        s_out_method = m;
        return;
    }
    BIO_meth_free(m);
}

/* Releases the socket, TLS state, buffers and timers: everything but the
 * object itself, and the input buffer while a callback may still be looking
 * at a frame in it (keep_rbuf). */
static void s_release_but(rb_tconn_t *c, bool keep_rbuf)
{
    rb_loop_cancel_timer(c->loop, c->timer);
    c->timer = NULL;
    rb_loop_cancel_timer(c->loop, c->resume);
    c->resume = NULL;
    rb_loop_cancel_timer(c->loop, c->trim);
    c->trim = NULL;
    rb_loop_undefer(c->loop, &c->flush);
    if (c->fd >= 0) {
        rb_loop_del_fd(c->loop, c->fd);
        close(c->fd);
        c->fd = -1;
    }
    if (c->ssl) {
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    if (!keep_rbuf) rb_buf_free(&c->rbuf);
    rb_buf_free(&c->wbuf);
    c->woff = 0;
    rb_buf_free(&c->cbuf);
    c->coff = 0;
    c->watched = 0;
}

static void s_release(rb_tconn_t *c) { s_release_but(c, false); }

/* Ends the connection and tells the owner, once. */
static void s_end(rb_tconn_t *c, rb_tconn_end_t end, const char *reason)
{
    if (c->st == ST_DONE) return;
    c->st = ST_DONE;
    s_release(c);
    if (!c->dead && c->h.on_close) c->h.on_close(c, end, reason, c->arg);
}

/* The reason of a failed TLS call: the verify result when the peer's
 * certificate was refused, else OpenSSL's error queue or errno. */
static const char *s_tls_reason(rb_tconn_t *c, int err, char *buf, size_t len)
{
    long vr = SSL_get_verify_result(c->ssl);
    if (vr != X509_V_OK) {
        snprintf(buf, len, "certificate verify failed: %s", X509_verify_cert_error_string(vr));
        return buf;
    }
    if (err == SSL_ERROR_SYSCALL) {
        if (ERR_peek_error() == 0) {
            snprintf(buf, len, "%s", errno ? strerror(errno) : "unexpected EOF");
            return buf;
        }
    }
    return rb_tls_error(buf, len);
}

static void s_watch(rb_tconn_t *c)
{
    if (c->fd < 0) return;
    unsigned want = 0;
    switch (c->st) {
    case ST_CONNECTING: want = RB_EV_WRITE; break;
    case ST_HANDSHAKE:
    case ST_OPEN:
    case ST_FLUSHING:
    case ST_LINGER:
        want = RB_EV_READ;
        if (c->blocked) want |= RB_EV_WRITE;
        break;
    case ST_DONE: return;
    }
    if (want == c->watched) return;
    if (rb_loop_mod_fd(c->loop, c->fd, want) == 0) c->watched = want;
}

/* Hands the frames complete in buf to the owner. Returns the bytes used, or
 * -1 after the connection ended (malformed frame) or was destroyed. */
static long s_frames(rb_tconn_t *c, const uint8_t *buf, size_t len)
{
    size_t used = 0;
    while (c->st == ST_OPEN && !c->dead) {
        rb_frame_t f;
        const char *why = NULL;
        long n = rb_frame_parse(buf + used, len - used, &f, &why);
        if (n == 0) break;
        if (n < 0) {
            char reason[128];
            snprintf(reason, sizeof reason, "malformed frame: %s", why);
            rb_warn("tunnel_bad_frame", "peer %s: %s; closing", c->peer, why);
            s_end(c, RB_TCONN_PROTOCOL, reason);
            return -1;
        }
        used += (size_t)n;
        if (c->h.on_frame) c->h.on_frame(c, &f, c->arg);
    }
    if (c->dead || c->st == ST_DONE) return -1;
    return (long)used;
}

/* New plaintext is in rbuf: hands its whole frames to the owner and keeps
 * the rest. -1 when the connection ended or was destroyed. */
static int s_input(rb_tconn_t *c)
{
    if (c->st != ST_OPEN) {   /* closing: input is discarded */
        rb_buf_reset(&c->rbuf);
        return 0;
    }
    long used = s_frames(c, (const uint8_t *)c->rbuf.data, c->rbuf.len);
    if (used < 0) return -1;
    rb_buf_consume(&c->rbuf, (size_t)used);
    return 0;
}

static void s_on_resume(rb_loop_t *loop, void *arg);

/* Reads until OpenSSL wants more from the socket, or the budget is spent.
 * Returns -1 when the connection ended or was destroyed. */
static int s_read(rb_tconn_t *c)
{
    size_t total = 0;
    while (c->st != ST_DONE && !c->dead) {
        if (total >= READ_BUDGET) {
            /* Bytes OpenSSL already read ahead do not wake epoll again. */
            if (SSL_has_pending(c->ssl) && !c->resume)
                c->resume = rb_loop_add_timer(c->loop, 0, false, s_on_resume, c);
            return 0;
        }
        char *room = rb_buf_space(&c->rbuf, READ_CHUNK);
        if (!room) {
            s_end(c, RB_TCONN_IO_ERROR, "out of memory");
            return -1;
        }
        size_t n = 0;
        ERR_clear_error();
        errno = 0;
        if (SSL_read_ex(c->ssl, room, READ_CHUNK, &n)) {
            total += n;
            rb_buf_added(&c->rbuf, n);
            if (s_input(c) < 0) return -1;
            continue;
        }
        if (c->rbuf.len == 0) rb_buf_free(&c->rbuf);
        int err = SSL_get_error(c->ssl, 0);
        if (err == SSL_ERROR_WANT_READ) return 0;
        if (err == SSL_ERROR_ZERO_RETURN) {
            s_end(c, c->st == ST_LINGER ? RB_TCONN_LOCAL : RB_TCONN_PEER_CLOSED,
                  c->st == ST_LINGER ? "closed" : "peer closed");
            return -1;
        }
        /* OpenSSL 3 reports an EOF without close_notify as an error; for
         * us it is the peer going away, not a fault. */
        bool eof = (err == SSL_ERROR_SYSCALL && ERR_peek_error() == 0 && errno == 0) ||
                   (err == SSL_ERROR_SSL &&
                    ERR_GET_REASON(ERR_peek_error()) == SSL_R_UNEXPECTED_EOF_WHILE_READING);
        if (c->st == ST_LINGER) {
            /* Our part is done; however the peer goes away is fine. */
            s_end(c, RB_TCONN_LOCAL, "closed");
        } else if (eof) {
            s_end(c, RB_TCONN_PEER_CLOSED, "peer closed without close_notify");
        } else {
            char buf[160], reason[200];
            snprintf(reason, sizeof reason, "read: %s", s_tls_reason(c, err, buf, sizeof buf));
            s_end(c, RB_TCONN_IO_ERROR, reason);
        }
        return -1;
    }
    return -1;
}

static void s_on_trim(rb_loop_t *loop, void *arg)
{
    rb_tconn_t *c = arg;
    c->trim = NULL;
    if (c->wrote || rb_tconn_output_pending(c) > 0) {
        c->wrote = false;
        c->trim = rb_loop_add_timer(loop, TRIM_MS, false, s_on_trim, c);
        return;
    }
    rb_buf_free(&c->wbuf);
    c->woff = 0;
    rb_buf_free(&c->cbuf);
    c->coff = 0;
}

/* An output buffer was emptied: keep it for the next output, and free it
 * when none comes for TRIM_MS (without a timer, at once). */
static void s_emptied(rb_tconn_t *c, rb_buf_t *b)
{
    if (!b->data) return;
    rb_buf_reset(b);
    c->wrote = true;
    if (!c->trim) c->trim = rb_loop_add_timer(c->loop, TRIM_MS, false, s_on_trim, c);
    if (!c->trim) rb_buf_free(b);
}

/* Encrypts up to ENCRYPT_BATCH of the queued frames into cbuf. -1 when the
 * connection ended. */
static int s_encrypt(rb_tconn_t *c)
{
    size_t n = c->wbuf.len - c->woff;
    if (n > ENCRYPT_BATCH) n = ENCRYPT_BATCH;
    /* Room for every record up front: the BIO appends without moving. */
    if (!rb_buf_space(&c->cbuf, n + (n / READ_CHUNK + 1) * RECORD_OVERHEAD)) {
        s_end(c, RB_TCONN_IO_ERROR, "out of memory");
        return -1;
    }
    size_t w = 0;
    ERR_clear_error();
    errno = 0;
    if (!SSL_write_ex(c->ssl, c->wbuf.data + c->woff, n, &w)) {
        char buf[160], reason[200];
        snprintf(reason, sizeof reason, "write: %s",
                 s_tls_reason(c, SSL_get_error(c->ssl, 0), buf, sizeof buf));
        s_end(c, RB_TCONN_IO_ERROR, reason);
        return -1;
    }
    c->woff += w;
    if (c->woff == c->wbuf.len) {
        s_emptied(c, &c->wbuf);
        c->woff = 0;
    } else if (c->woff >= WBUF_COMPACT && c->woff * 2 >= c->wbuf.len) {
        rb_buf_consume(&c->wbuf, c->woff);
        c->woff = 0;
    }
    return 0;
}

/* Sends cbuf. 1 when the socket is full, 0 when all went, -1 when the
 * connection ended. */
static int s_send(rb_tconn_t *c)
{
    while (c->coff < c->cbuf.len) {
        ssize_t n = send(c->fd, c->cbuf.data + c->coff, c->cbuf.len - c->coff, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                c->blocked = true;
                return 1;
            }
            char reason[200];
            snprintf(reason, sizeof reason, "write: %s", strerror(errno));
            s_end(c, RB_TCONN_IO_ERROR, reason);
            return -1;
        }
        c->coff += (size_t)n;
    }
    c->blocked = false;
    s_emptied(c, &c->cbuf);
    c->coff = 0;
    return 0;
}

static void s_start_linger(rb_tconn_t *c);

/* Writes what is queued until the socket is full or all is out, then moves
 * a closing connection on (close_notify once the frames are out, our write
 * side shut once that is). -1 when the connection ended. */
static int s_output(rb_tconn_t *c)
{
    bool had_output = rb_tconn_output_pending(c) > 0;
    for (;;) {
        int r = s_send(c);
        if (r != 0) return r < 0 ? -1 : 0;
        if ((c->st == ST_OPEN || c->st == ST_FLUSHING) && c->woff < c->wbuf.len) {
            if (s_encrypt(c) < 0) return -1;
            continue;
        }
        if (c->st == ST_FLUSHING) {
            s_start_linger(c);   /* queues close_notify */
            continue;
        }
        if (c->st == ST_LINGER && !c->wr_shut) {
            shutdown(c->fd, SHUT_WR);
            c->wr_shut = true;
        }
        if (had_output && c->st == ST_OPEN && c->h.on_drained) {
            c->h.on_drained(c, c->arg);
            /* What the owner queued from there, or a close it asked for,
             * goes ahead now, not at the next event (we are inside a
             * callback: nothing was deferred). */
            if (!c->dead && ((c->st == ST_OPEN && rb_tconn_output_pending(c) > 0) ||
                             c->st == ST_FLUSHING))
                continue;
        }
        return 0;
    }
}

static void s_on_linger_timeout(rb_loop_t *loop, void *arg);

/* Frames drained after close_after_flush: queue close_notify (s_output
 * sends it and shuts our write side) and wait (bounded) for the peer to
 * close. */
static void s_start_linger(rb_tconn_t *c)
{
    ERR_clear_error();
    SSL_shutdown(c->ssl);
    c->st = ST_LINGER;
    rb_loop_cancel_timer(c->loop, c->timer);
    /* Without a timer (no memory) the peer's EOF still ends it. */
    c->timer = rb_loop_add_timer(c->loop, LINGER_MS, false, s_on_linger_timeout, c);
}

static void s_open(rb_tconn_t *c)
{
    rb_loop_cancel_timer(c->loop, c->timer);
    c->timer = NULL;
    c->st = ST_OPEN;
    if (c->h.on_open) c->h.on_open(c, c->arg);
}

static void s_handshake(rb_tconn_t *c)
{
    ERR_clear_error();
    errno = 0;
    int r = SSL_do_handshake(c->ssl);
    if (r == 1) {
        s_open(c);
        return;
    }
    int err = SSL_get_error(c->ssl, r);
    if (err == SSL_ERROR_WANT_READ) return;   /* its flight is in cbuf */
    char buf[160], reason[200];
    snprintf(reason, sizeof reason, "handshake: %s", s_tls_reason(c, err, buf, sizeof buf));
    s_end(c, RB_TCONN_TLS_FAILED, reason);
}

static void s_step(rb_tconn_t *c, unsigned events)
{
    if (c->st == ST_CONNECTING) {
        int soerr = 0;
        socklen_t sl = sizeof soerr;
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0) soerr = errno;
        if (soerr) {
            char reason[160];
            snprintf(reason, sizeof reason, "connect: %s", strerror(soerr));
            s_end(c, RB_TCONN_CONNECT_FAILED, reason);
            return;
        }
        c->st = ST_HANDSHAKE;
    }
    if (c->st == ST_HANDSHAKE) {
        s_handshake(c);
        if (c->st == ST_DONE || c->dead) return;
        /* Application data may have arrived with the last handshake
         * flight: read it. */
        if (c->st != ST_HANDSHAKE) events |= RB_EV_READ;
    }
    if (c->st != ST_HANDSHAKE && (events & (RB_EV_READ | RB_EV_ERROR))) {
        if (s_read(c) < 0) return;
    }
    s_output(c);
}

/* Every entry from the loop goes through here: counts the nesting so that a
 * destroy from a callback is deferred to the way out. */
static void s_enter(rb_tconn_t *c) { c->depth++; }

static void s_leave(rb_tconn_t *c)
{
    if (--c->depth > 0) return;
    if (c->dead) {
        s_release(c);
        free(c);
        return;
    }
    s_watch(c);
}

static void s_on_flush(rb_loop_t *loop, void *arg)
{
    rb_tconn_t *c = arg;
    s_enter(c);
    if (c->fd >= 0) s_output(c);
    s_leave(c);
}

static void s_on_io(rb_loop_t *loop, int fd, unsigned events, void *arg)
{
    rb_tconn_t *c = arg;
    s_enter(c);
    s_step(c, events);
    s_leave(c);
}

static void s_on_resume(rb_loop_t *loop, void *arg)
{
    rb_tconn_t *c = arg;
    c->resume = NULL;   /* one-shot timers free themselves */
    s_enter(c);
    s_step(c, RB_EV_READ);
    s_leave(c);
}

static void s_on_hs_timeout(rb_loop_t *loop, void *arg)
{
    rb_tconn_t *c = arg;
    c->timer = NULL;
    s_enter(c);
    s_end(c, c->st == ST_CONNECTING ? RB_TCONN_CONNECT_FAILED : RB_TCONN_TLS_FAILED,
          c->st == ST_CONNECTING ? "connect timed out" : "handshake timed out");
    s_leave(c);
}

static void s_on_linger_timeout(rb_loop_t *loop, void *arg)
{
    rb_tconn_t *c = arg;
    c->timer = NULL;
    s_enter(c);
    s_end(c, RB_TCONN_LOCAL, "closed");
    s_leave(c);
}

static void s_on_flush_timeout(rb_loop_t *loop, void *arg)
{
    rb_tconn_t *c = arg;
    c->timer = NULL;
    char why[128];
    snprintf(why, sizeof why, "closed; the peer did not take the last %zu bytes in %d s",
             rb_tconn_output_pending(c), FLUSH_MS / 1000);
    s_enter(c);
    s_end(c, RB_TCONN_LOCAL, why);
    s_leave(c);
}

static int s_sock_setup(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) return -1;
    /* Frames are small and latency matters (keepalives, stream opens);
     * output is already batched per loop iteration. */
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return 0;
}

static rb_tconn_t *s_new(rb_loop_t *loop, SSL_CTX *ctx, int fd, const char *peer,
                         const rb_tconn_handlers_t *h, void *arg)
{
    rb_tconn_t *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->loop = loop;
    c->fd = fd;
    c->h = *h;
    c->arg = arg;
    snprintf(c->peer, sizeof c->peer, "%s", peer ? peer : "?");
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, s_out_method_init);
    c->ssl = SSL_new(ctx);
    BIO *rbio = BIO_new_socket(fd, BIO_NOCLOSE);
    BIO *wbio = s_out_method ? BIO_new(s_out_method) : NULL;
    if (!c->ssl || !rbio || !wbio) {
        char buf[160];
        rb_warn("tls_new", "peer %s: %s", c->peer, rb_tls_error(buf, sizeof buf));
        BIO_free(rbio);
        BIO_free(wbio);
        SSL_free(c->ssl);
        free(c);
        return NULL;
    }
    BIO_set_data(wbio, c);
    SSL_set_bio(c->ssl, rbio, wbio);
    c->timer = rb_loop_add_timer(loop, HANDSHAKE_MS, false, s_on_hs_timeout, c);
    if (!c->timer) {
        SSL_free(c->ssl);
        free(c);
        return NULL;
    }
    return c;
}

rb_tconn_t *rb_tconn_accept(rb_loop_t *loop, SSL_CTX *ctx, int fd, const char *peer,
                            const rb_tconn_handlers_t *h, void *arg)
{
    if (s_sock_setup(fd) < 0) {
        close(fd);
        return NULL;
    }
    rb_tconn_t *c = s_new(loop, ctx, fd, peer, h, arg);
    if (!c) {
        close(fd);
        return NULL;
    }
    SSL_set_accept_state(c->ssl);
    c->st = ST_HANDSHAKE;
    /* the client speaks first */
    if (rb_loop_add_fd(loop, fd, RB_EV_READ, s_on_io, c) < 0) {
        c->fd = -1;
        s_release(c);
        free(c);
        close(fd);
        return NULL;
    }
    c->watched = RB_EV_READ;
    return c;
}

/* Splits "host:port" or "[v6]:port". 0 or -1. */
static int s_split(const char *hostport, char *host, size_t hlen, char *port, size_t plen)
{
    const char *colon;
    const char *h = hostport;
    size_t hl;
    if (*h == '[') {
        const char *end = strchr(h, ']');
        if (!end || end[1] != ':') return -1;
        h++;
        hl = (size_t)(end - h);
        colon = end + 1;
    } else {
        colon = strrchr(h, ':');
        if (!colon) return -1;
        hl = (size_t)(colon - h);
    }
    size_t pl = strlen(colon + 1);
    if (hl == 0 || hl >= hlen || pl == 0 || pl >= plen) return -1;
    memcpy(host, h, hl);
    host[hl] = '\0';
    memcpy(port, colon + 1, pl + 1);
    return 0;
}

rb_tconn_t *rb_tconn_dial(rb_loop_t *loop, SSL_CTX *ctx, const char *hostport,
                          const char *verify_name, const rb_tconn_handlers_t *h, void *arg)
{
    char host[256], port[16];
    if (s_split(hostport, host, sizeof host, port, sizeof port) < 0) {
        rb_warn("tunnel_dial", "bad address '%s' (want HOST:PORT)", hostport);
        return NULL;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *ai = NULL;
    int gai = getaddrinfo(host, port, &hints, &ai);
    if (gai != 0) {
        rb_warn("tunnel_dial", "cannot resolve '%s': %s", host, gai_strerror(gai));
        return NULL;
    }
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0 || s_sock_setup(fd) < 0) {
        rb_warn("tunnel_dial", "socket: %s", strerror(errno));
        if (fd >= 0) close(fd);
        freeaddrinfo(ai);
        return NULL;
    }
    int r = connect(fd, ai->ai_addr, ai->ai_addrlen);
    int cerr = errno;
    freeaddrinfo(ai);
    if (r < 0 && cerr != EINPROGRESS) {
        rb_warn("tunnel_dial", "connect %s: %s", hostport, strerror(cerr));
        close(fd);
        return NULL;
    }
    rb_tconn_t *c = s_new(loop, ctx, fd, hostport, h, arg);
    if (!c) {
        close(fd);
        return NULL;
    }
    const char *name = verify_name ? verify_name : host;
    /* An IP literal is checked against the certificate's IP SANs, a name
     * against its DNS SANs (and sent as SNI). */
    unsigned char tmp[sizeof(struct in6_addr)];
    int ok;
    if (inet_pton(AF_INET, name, tmp) == 1 || inet_pton(AF_INET6, name, tmp) == 1) {
        ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl), name);
    } else {
        ok = SSL_set1_host(c->ssl, name) == 1 && SSL_set_tlsext_host_name(c->ssl, name) == 1;
    }
    SSL_set_connect_state(c->ssl);
    c->st = ST_CONNECTING;
    if (ok != 1 || rb_loop_add_fd(loop, fd, RB_EV_WRITE, s_on_io, c) < 0) {
        rb_warn("tunnel_dial", "cannot set up the connection to %s", hostport);
        c->fd = -1;
        s_release(c);
        free(c);
        close(fd);
        return NULL;
    }
    c->watched = RB_EV_WRITE;
    return c;
}

void rb_tconn_destroy(rb_tconn_t **cp)
{
    if (!cp || !*cp) return;
    rb_tconn_t *c = *cp;
    *cp = NULL;
    if (c->depth > 0) {
        /* Inside one of our callbacks: stop everything now, free on the
         * way out of the loop entry (the frame being handled stays
         * readable until then). */
        c->dead = true;
        c->st = ST_DONE;
        s_release_but(c, true);
        return;
    }
    s_release(c);
    free(c);
}

/* Makes sure the loop will call us to write: inside our callbacks the
 * loop entry writes on its way out; a full socket wakes us when it drains. */
static void s_want_write(rb_tconn_t *c)
{
    if (c->depth == 0 && !c->blocked) rb_loop_defer(c->loop, &c->flush, s_on_flush, c);
}

int rb_tconn_send_frame(rb_tconn_t *c, uint8_t type, uint8_t flags, uint32_t stream_id,
                        const void *data, size_t len)
{
    if (!c || c->st != ST_OPEN) return -1;
    size_t max = type == RB_FRAME_CONTROL ? RB_FRAME_MAX_CONTROL : RB_FRAME_MAX_DATA;
    if (len > max) return -1;
    uint8_t hdr[RB_FRAME_HEADER];
    rb_frame_header(hdr, type, flags, stream_id, (uint32_t)len);
    size_t before = c->wbuf.len;
    if (rb_buf_append(&c->wbuf, hdr, sizeof hdr) < 0 ||
        (len > 0 && rb_buf_append(&c->wbuf, data, len) < 0)) {
        c->wbuf.len = before;   /* drop a half-queued frame */
        return -1;
    }
    s_want_write(c);
    return 0;
}

int rb_tconn_send_control(rb_tconn_t *c, const Rb__Tunnel__TunnelControl *msg)
{
    if (!c || c->st != ST_OPEN) return -1;
    if (rb_frame_append_control(&c->wbuf, msg) < 0) return -1;
    s_want_write(c);
    return 0;
}

void rb_tconn_close_after_flush(rb_tconn_t *c)
{
    if (!c) return;
    if (c->st == ST_OPEN) {
        c->st = ST_FLUSHING;
        rb_loop_cancel_timer(c->loop, c->timer);
        /* Without a timer (no memory) a peer that reads still ends it. */
        c->timer = rb_loop_add_timer(c->loop, FLUSH_MS, false, s_on_flush_timeout, c);
        /* Inside a callback the loop entry finishes the job (and may be
         * parsing from rbuf right now). */
        if (c->depth > 0) return;
        rb_buf_free(&c->rbuf);
        /* Even with nothing queued: close_notify goes out from the loop. */
        rb_loop_defer(c->loop, &c->flush, s_on_flush, c);
        return;
    }
    if (c->st == ST_CONNECTING || c->st == ST_HANDSHAKE) {
        /* Drop the socket now, report from the loop (never from inside
         * this call). */
        s_release(c);
        c->st = ST_FLUSHING;
        c->timer = rb_loop_add_timer(c->loop, 0, false, s_on_linger_timeout, c);
    }
}

size_t rb_tconn_output_pending(const rb_tconn_t *c)
{
    return c ? (c->wbuf.len - c->woff) + (c->cbuf.len - c->coff) : 0;
}

size_t rb_tconn_output_memory(const rb_tconn_t *c)
{
    return c ? c->wbuf.cap + c->cbuf.cap : 0;
}

const char *rb_tconn_peer(const rb_tconn_t *c) { return c ? c->peer : "?"; }

bool rb_tconn_is_open(const rb_tconn_t *c) { return c && c->st == ST_OPEN; }
