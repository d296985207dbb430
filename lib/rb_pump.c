/* rb_pump: see rb_pump.h. */
#include "rb_pump.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "rb_buf.h"
#include "rb_frame.h"
#include "rb_log.h"

struct rb_pump {
    rb_loop_t *loop;
    int fd;
    const rb_pump_handlers_t *h;
    void *arg;
    bool connecting;
    bool eof_in;   /* the socket said EOF; FIN sent to the peer */
    bool fin_in;   /* the peer sent FIN */
    bool shut_out; /* shutdown(SHUT_WR) done */
    bool over;
    bool parked;       /* out of the loop: hung up, nothing to do now */
    bool held;         /* the owner stopped reading the socket (rb_pump_hold_input) */
    unsigned watching; /* RB_EV_* registered with the loop */
    uint32_t credit;   /* bytes we may still send the peer */
    uint32_t rx_left;  /* bytes the peer may still send us */
    uint32_t unacked;  /* written to the socket, not yet granted back */
    rb_buf_t out;      /* peer bytes the socket has not taken yet */
    uint64_t nread, nwritten;
};

/* DATA frames read per wake-up while the socket has more: the peer's
 * side handles them in one pass (one wake-up of each thread on the way)
 * while streams still take turns. */
#define READ_FRAMES 4
/* One DATA frame's worth, shared by the thread's pumps: its loop runs one
 * handler at a time. */
static __thread uint8_t s_chunk[RB_FRAME_MAX_DATA];

static void s_on_io(rb_loop_t *loop, int fd, unsigned events, void *arg);

static void s_watch(rb_pump_t *p)
{
    if (p->over) return;
    unsigned ev = 0;
    if (p->connecting || p->out.len || p->unacked >= RB_STREAM_WINDOW / 4) ev |= RB_EV_WRITE;
    if (!p->connecting && !p->eof_in && !p->held && p->credit > 0) ev |= RB_EV_READ;
    if (p->parked) {
        if (!ev) return;
        p->parked = false;
        p->watching = ev;
        rb_loop_add_fd(p->loop, p->fd, ev, s_on_io, p);
        return;
    }
    if (ev == p->watching) return;
    p->watching = ev;
    rb_loop_mod_fd(p->loop, p->fd, ev);
}

/* Out of the loop for good: a finished socket would report its hang-up to
 * epoll forever, whatever the mask, until the owner destroys the pump. */
static void s_leave(rb_pump_t *p)
{
    p->over = true;
    p->watching = 0;
    if (!p->parked) rb_loop_del_fd(p->loop, p->fd);
    p->parked = true;
}

/* Ends the stream abortively: the socket's peer sees RST when the owner
 * destroys the pump (a shutdown here would send a FIN first). */
static void s_abort(rb_pump_t *p)
{
    struct linger lg = {1, 0};
    setsockopt(p->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    s_leave(p);
}

static void s_finish(rb_pump_t *p, bool reset, const char *why)
{
    if (reset)
        s_abort(p);
    else
        s_leave(p);
    p->h->done(p->arg, reset, why);
}

/* Gives the peer its credit back in batches of a quarter window, so a fast
 * stream costs one WINDOW per 512 KiB. Only from the loop (calls into the
 * pump never call back). */
static int s_grant(rb_pump_t *p)
{
    if (p->unacked < RB_STREAM_WINDOW / 4) return 0;
    uint32_t inc = p->unacked;
    p->unacked = 0;
    p->rx_left += inc;
    return p->h->window(p->arg, inc);
}

/* Writes what it can. 0, or -1 on a socket error (errno set). */
static int s_flush(rb_pump_t *p)
{
    while (p->out.len) {
        ssize_t n = send(p->fd, p->out.data, p->out.len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
            return -1;
        }
        rb_buf_consume(&p->out, (size_t)n);
        p->nwritten += (uint64_t)n;
        p->unacked += (uint32_t)n;
    }
    rb_buf_free(&p->out);
    if (p->fin_in && !p->shut_out) {
        shutdown(p->fd, SHUT_WR);
        p->shut_out = true;
    }
    return 0;
}

/* A socket error: tell the peer, end the stream. */
static void s_fail(rb_pump_t *p, const char *why)
{
    p->h->data(p->arg, RB_FRAME_RST, NULL, 0);
    s_finish(p, true, why);
}

static void s_on_io(rb_loop_t *loop, int fd, unsigned events, void *arg)
{
    rb_pump_t *p = arg;
    if (p->over) return;
    bool acted = false;
    if (p->connecting) {
        if (!(events & (RB_EV_WRITE | RB_EV_ERROR))) return;
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) err = errno;
        if (err) {
            s_leave(p);
            if (p->h->connected) p->h->connected(p->arg, err);
            return;
        }
        p->connecting = false;
        if (p->h->connected) p->h->connected(p->arg, 0);
        /* What the peer sent while we connected, and maybe its FIN. */
        if (s_flush(p) < 0) {
            s_fail(p, strerror(errno));
            return;
        }
        acted = true;
    } else if (p->out.len && (events & (RB_EV_WRITE | RB_EV_ERROR))) {
        if (s_flush(p) < 0) {
            s_fail(p, strerror(errno));
            return;
        }
        acted = true;
    }
    if (p->unacked >= RB_STREAM_WINDOW / 4) {
        if (s_grant(p) < 0) {
            s_finish(p, true, "the peer cannot be reached");
            return;
        }
        acted = true;
    }
    for (int frames = 0; frames < READ_FRAMES && !p->eof_in && !p->held && p->credit > 0 &&
                         (events & (RB_EV_READ | RB_EV_ERROR));
         frames++) {
        acted = true;
        size_t want = p->credit < sizeof s_chunk ? p->credit : sizeof s_chunk;
        ssize_t n = recv(fd, s_chunk, want, 0);
        if (n > 0) {
            p->credit -= (uint32_t)n;
            p->nread += (uint64_t)n;
            if (p->h->data(p->arg, 0, s_chunk, (size_t)n) < 0) {
                s_finish(p, true, "the peer cannot be reached");
                return;
            }
            if ((size_t)n < want) break;   /* the socket is drained */
        } else if (n == 0) {
            p->eof_in = true;
            if (p->h->data(p->arg, RB_FRAME_FIN, NULL, 0) < 0) {
                s_finish(p, true, "the peer cannot be reached");
                return;
            }
        } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            s_fail(p, strerror(errno));
            return;
        } else {
            break;
        }
    }
    if (!acted && (events & RB_EV_ERROR)) {
        /* Hang-up or error while we neither read nor write (no credit, or
         * our side is done), which epoll reports whatever the mask. An
         * error ends the stream. A hang-up is both directions shut: the
         * peer closed after our FIN, and what it sent may still wait for
         * credit. Leave the loop until there is something to do. */
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) {
            s_fail(p, strerror(err));
            return;
        }
        p->parked = true;
        p->watching = 0;
        rb_loop_del_fd(loop, fd);
        return;
    }
    if (p->eof_in && p->shut_out) {
        s_finish(p, false, "closed");
        return;
    }
    s_watch(p);
}

rb_pump_t *rb_pump_new(rb_loop_t *loop, int fd, bool connecting, const rb_pump_handlers_t *h,
                       void *arg)
{
    rb_pump_t *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    /* Non-blocking is the caller's (SOCK_NONBLOCK): setting it here cost two
     * system calls on every stream's way to its first byte. */
    assert(fcntl(fd, F_GETFL) & O_NONBLOCK);
    /* Interactive streams (ssh keystrokes, a request and its answer) must
     * not wait for Nagle; bulk streams send full frames anyway. */
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    p->loop = loop;
    p->fd = fd;
    p->h = h;
    p->arg = arg;
    p->connecting = connecting;
    p->credit = RB_STREAM_WINDOW;
    p->rx_left = RB_STREAM_WINDOW;
    p->watching = connecting ? RB_EV_WRITE : RB_EV_READ;
    if (rb_loop_add_fd(loop, fd, p->watching, s_on_io, p) < 0) {
        free(p);
        return NULL;
    }
    return p;
}

void rb_pump_destroy(rb_pump_t **pp)
{
    if (!pp || !*pp) return;
    rb_pump_t *p = *pp;
    *pp = NULL;
    if (!p->over) s_abort(p);
    s_leave(p);
    close(p->fd);
    rb_buf_free(&p->out);
    free(p);
}

int rb_pump_peer_data(rb_pump_t *p, uint8_t flags, const uint8_t *buf, size_t len)
{
    if (p->over) return RB_PUMP_OVER;
    if (flags & RB_FRAME_RST) {
        s_abort(p);
        return RB_PUMP_OVER;
    }
    if (len > p->rx_left || (p->fin_in && len)) {
        s_abort(p);
        return RB_PUMP_OVERRUN;
    }
    p->rx_left -= (uint32_t)len;
    if (len) {
        size_t off = 0;
        if (!p->connecting && p->out.len == 0) {
            /* A hard error is left for the loop: its flush meets it again
             * and tells the peer (data(RST), done) as calls here cannot. */
            ssize_t n = send(p->fd, buf, len, MSG_NOSIGNAL);
            if (n > 0) {
                off = (size_t)n;
                p->nwritten += (uint64_t)n;
                p->unacked += (uint32_t)n;
            }
        }
        if (off < len && rb_buf_append(&p->out, buf + off, len - off) < 0) {
            s_abort(p);
            return RB_PUMP_OVERRUN;
        }
    }
    if (flags & RB_FRAME_FIN) {
        p->fin_in = true;
        if (!p->connecting && p->out.len == 0 && !p->shut_out) {
            shutdown(p->fd, SHUT_WR);
            p->shut_out = true;
        }
    }
    if (p->eof_in && p->shut_out) { /* no credit is owed after both FINs */
        s_leave(p);
        return RB_PUMP_OVER;
    }
    s_watch(p);
    return RB_PUMP_GOING;
}

void rb_pump_peer_window(rb_pump_t *p, uint32_t inc)
{
    if (p->over) return;
    /* More than a window outstanding would be the peer's bug; cap it so
     * the arithmetic cannot wrap. */
    uint64_t c = (uint64_t)p->credit + inc;
    p->credit = c > RB_STREAM_WINDOW ? RB_STREAM_WINDOW : (uint32_t)c;
    s_watch(p);
}

void rb_pump_hold_input(rb_pump_t *p, bool hold)
{
    if (p->over || p->held == hold) return;
    p->held = hold;
    s_watch(p);
}

void rb_pump_note_sent(rb_pump_t *p, size_t n, bool fin)
{
    p->credit = n >= p->credit ? 0 : p->credit - (uint32_t)n;
    p->nread += n;
    if (fin) p->eof_in = true;
    s_watch(p);
}

uint64_t rb_pump_bytes_read(const rb_pump_t *p)
{
    return p->nread;
}
uint64_t rb_pump_bytes_written(const rb_pump_t *p)
{
    return p->nwritten;
}
size_t rb_pump_pending(const rb_pump_t *p)
{
    return p->out.len;
}
int rb_pump_fd(const rb_pump_t *p)
{
    return p->fd;
}
