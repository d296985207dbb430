/* rb_loop: epoll + timer heap + signalfd + ZeroMQ sockets (see rb_loop.h for
 * the ZMQ_FD contract this loop honours). */
#include "rb_loop.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "rb_log.h"

/* epoll data: the fd in the low 32 bits, its registration generation above,
 * so an event for an fd that was removed (and maybe re-added) within the same
 * batch is recognised as stale. ZeroMQ fds are marked by the top bit. */
#define ZSOCK_MARK (1ull << 63)
#define MAX_EVENTS 256
/* Messages handled per ZeroMQ socket before giving other work a turn. */
#define ZSOCK_BUDGET 256

typedef struct {
    rb_io_fn *fn;
    void *arg;
    uint32_t gen;
    bool active;
    unsigned events;      /* what the owner watches */
    rb_timer_t *pause;    /* rb_loop_pause_fd: when watching resumes */
} fd_slot_t;

struct rb_timer {
    uint64_t due;
    uint64_t period;
    rb_timer_fn *fn;
    void *arg;
    size_t heap_idx;
    bool firing;
    bool cancelled;
};

typedef struct {
    void *sock;
    int fd;
    rb_zsock_fn *fn;
    void *arg;
    bool active;
    bool check;   /* ZMQ_EVENTS must be read: its fd fired, it was used, or input is left */
    bool drained; /* the handler's last call on it was a receive that found nothing */
} zsock_slot_t;

typedef struct {
    int signo;
    rb_signal_fn *fn;
    void *arg;
} sig_slot_t;

struct rb_loop {
    int epfd;
    bool running;
    fd_slot_t *fds;
    size_t nfds;
    rb_timer_t **heap;
    size_t heap_len, heap_cap;
    zsock_slot_t *zs;
    size_t zs_len, zs_cap;
    int sigfd;
    sigset_t sigmask;
    sig_slot_t sigs[16];
    size_t nsigs;
    rb_defer_t *defer_head, *defer_tail;
    unsigned defer_pass;
};

uint64_t rb_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

uint64_t rb_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

rb_loop_t *rb_loop_new(void)
{
    rb_loop_t *l = calloc(1, sizeof *l);
    if (!l) return NULL;
    l->epfd = epoll_create1(EPOLL_CLOEXEC);
    l->sigfd = -1;
    sigemptyset(&l->sigmask);
    if (l->epfd < 0) {
        free(l);
        return NULL;
    }
    return l;
}

void rb_loop_destroy(rb_loop_t **lp)
{
    if (!lp || !*lp) return;
    rb_loop_t *l = *lp;
    for (size_t i = 0; i < l->heap_len; i++) free(l->heap[i]);
    free(l->heap);
    free(l->fds);
    free(l->zs);
    if (l->sigfd >= 0) close(l->sigfd);
    close(l->epfd);
    free(l);
    *lp = NULL;
}

static uint32_t s_epoll_mask(unsigned events)
{
    uint32_t m = 0;
    if (events & RB_EV_READ) m |= EPOLLIN | EPOLLRDHUP;
    if (events & RB_EV_WRITE) m |= EPOLLOUT;
    return m;
}

static int s_fd_slot_grow(rb_loop_t *l, int fd)
{
    if ((size_t)fd < l->nfds) return 0;
    size_t n = l->nfds ? l->nfds : 64;
    while (n <= (size_t)fd) n *= 2;
    fd_slot_t *p = realloc(l->fds, n * sizeof *p);
    if (!p) return -1;
    memset(p + l->nfds, 0, (n - l->nfds) * sizeof *p);
    l->fds = p;
    l->nfds = n;
    return 0;
}

int rb_loop_add_fd(rb_loop_t *l, int fd, unsigned events, rb_io_fn *fn, void *arg)
{
    if (fd < 0 || s_fd_slot_grow(l, fd) < 0) return -1;
    fd_slot_t *s = &l->fds[fd];
    /* The generation moves only when the add succeeds: a refused one (the
     * fd is already watched) must leave the live registration's events
     * valid. */
    uint32_t gen = s->gen + 1;
    struct epoll_event ev = {.events = s_epoll_mask(events),
                             .data.u64 = (uint64_t)(uint32_t)fd | (uint64_t)gen << 32};
    if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) return -1;
    s->gen = gen;
    s->fn = fn;
    s->arg = arg;
    s->active = true;
    s->events = events;
    s->pause = NULL;
    return 0;
}

int rb_loop_mod_fd(rb_loop_t *l, int fd, unsigned events)
{
    if (fd < 0 || (size_t)fd >= l->nfds || !l->fds[fd].active) return -1;
    l->fds[fd].events = events;
    if (l->fds[fd].pause) return 0;   /* applied when the pause ends */
    struct epoll_event ev = {.events = s_epoll_mask(events),
                             .data.u64 = (uint64_t)(uint32_t)fd | (uint64_t)l->fds[fd].gen << 32};
    return epoll_ctl(l->epfd, EPOLL_CTL_MOD, fd, &ev);
}

int rb_loop_del_fd(rb_loop_t *l, int fd)
{
    if (fd < 0 || (size_t)fd >= l->nfds || !l->fds[fd].active) return -1;
    l->fds[fd].active = false;
    l->fds[fd].gen++;
    rb_loop_cancel_timer(l, l->fds[fd].pause);
    l->fds[fd].pause = NULL;
    return epoll_ctl(l->epfd, EPOLL_CTL_DEL, fd, NULL);
}

/* A pause's timer belongs to the registration it paused: del_fd cancels
 * it, so when it fires, fd is still that registration. */
static void s_unpause(rb_loop_t *l, void *arg)
{
    int fd = (int)(intptr_t)arg;
    fd_slot_t *s = &l->fds[fd];
    s->pause = NULL;
    rb_loop_mod_fd(l, fd, s->events);
}

int rb_loop_pause_fd(rb_loop_t *l, int fd, uint64_t ms)
{
    if (fd < 0 || (size_t)fd >= l->nfds || !l->fds[fd].active) return -1;
    fd_slot_t *s = &l->fds[fd];
    if (s->pause) return 0;
    struct epoll_event ev = {.events = 0,
                             .data.u64 = (uint64_t)(uint32_t)fd | (uint64_t)s->gen << 32};
    if (epoll_ctl(l->epfd, EPOLL_CTL_MOD, fd, &ev) < 0) return -1;
    s->pause = rb_loop_add_timer(l, ms, false, s_unpause, (void *)(intptr_t)fd);
    if (!s->pause) {
        rb_loop_mod_fd(l, fd, s->events);
        return -1;
    }
    return 0;
}

/* ---- timers: a binary min-heap on due time ---- */

static void s_heap_swap(rb_loop_t *l, size_t a, size_t b)
{
    rb_timer_t *t = l->heap[a];
    l->heap[a] = l->heap[b];
    l->heap[b] = t;
    l->heap[a]->heap_idx = a;
    l->heap[b]->heap_idx = b;
}

static void s_heap_up(rb_loop_t *l, size_t i)
{
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (l->heap[p]->due <= l->heap[i]->due) break;
        s_heap_swap(l, i, p);
        i = p;
    }
}

static void s_heap_down(rb_loop_t *l, size_t i)
{
    for (;;) {
        size_t m = i, a = 2 * i + 1, b = a + 1;
        if (a < l->heap_len && l->heap[a]->due < l->heap[m]->due) m = a;
        if (b < l->heap_len && l->heap[b]->due < l->heap[m]->due) m = b;
        if (m == i) return;
        s_heap_swap(l, i, m);
        i = m;
    }
}

static int s_heap_push(rb_loop_t *l, rb_timer_t *t)
{
    if (l->heap_len == l->heap_cap) {
        size_t cap = l->heap_cap ? l->heap_cap * 2 : 32;
        rb_timer_t **p = realloc(l->heap, cap * sizeof *p);
        if (!p) return -1;
        l->heap = p;
        l->heap_cap = cap;
    }
    t->heap_idx = l->heap_len;
    l->heap[l->heap_len++] = t;
    s_heap_up(l, t->heap_idx);
    return 0;
}

static void s_heap_remove(rb_loop_t *l, rb_timer_t *t)
{
    size_t i = t->heap_idx;
    l->heap_len--;
    if (i != l->heap_len) {
        l->heap[i] = l->heap[l->heap_len];
        l->heap[i]->heap_idx = i;
        s_heap_down(l, i);
        s_heap_up(l, i);
    }
}

rb_timer_t *rb_loop_add_timer(rb_loop_t *l, uint64_t ms, bool repeat, rb_timer_fn *fn, void *arg)
{
    rb_timer_t *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    t->due = rb_now_ms() + ms;
    t->period = repeat ? (ms ? ms : 1) : 0;
    t->fn = fn;
    t->arg = arg;
    if (s_heap_push(l, t) < 0) {
        free(t);
        return NULL;
    }
    return t;
}

void rb_loop_cancel_timer(rb_loop_t *l, rb_timer_t *t)
{
    if (!t) return;
    if (t->firing) {
        t->cancelled = true;   /* freed when its callback returns */
        return;
    }
    s_heap_remove(l, t);
    free(t);
}

static void s_run_timers(rb_loop_t *l)
{
    uint64_t now = rb_now_ms();
    while (l->heap_len && l->heap[0]->due <= now) {
        rb_timer_t *t = l->heap[0];
        s_heap_remove(l, t);
        t->firing = true;
        t->fn(l, t->arg);
        t->firing = false;
        if (t->period && !t->cancelled) {
            /* Skip missed periods instead of firing a burst after a stall. */
            t->due += t->period;
            if (t->due <= now) t->due = now + t->period;
            if (s_heap_push(l, t) < 0) free(t);
        } else {
            free(t);
        }
    }
}

static int s_timeout(const rb_loop_t *l)
{
    if (!l->heap_len) return 1000;
    uint64_t now = rb_now_ms(), due = l->heap[0]->due;
    if (due <= now) return 0;
    uint64_t d = due - now;
    return d > 1000 ? 1000 : (int)d;
}

/* ---- signals ---- */

static void s_on_signal(rb_loop_t *l, int fd, unsigned events, void *arg)
{
    struct signalfd_siginfo si;
    while (read(fd, &si, sizeof si) == (ssize_t)sizeof si) {
        for (size_t i = 0; i < l->nsigs; i++)
            if (l->sigs[i].signo == (int)si.ssi_signo) l->sigs[i].fn(l, (int)si.ssi_signo, l->sigs[i].arg);
    }
}

int rb_loop_add_signal(rb_loop_t *l, int signo, rb_signal_fn *fn, void *arg)
{
    if (l->nsigs == sizeof l->sigs / sizeof l->sigs[0]) return -1;
    sigaddset(&l->sigmask, signo);
    if (pthread_sigmask(SIG_BLOCK, &l->sigmask, NULL) != 0) return -1;
    int fd = signalfd(l->sigfd, &l->sigmask, SFD_NONBLOCK | SFD_CLOEXEC);
    if (fd < 0) return -1;
    if (l->sigfd < 0) {
        l->sigfd = fd;
        if (rb_loop_add_fd(l, fd, RB_EV_READ, s_on_signal, NULL) < 0) return -1;
    }
    l->sigs[l->nsigs++] = (sig_slot_t){signo, fn, arg};
    return 0;
}

/* ---- ZeroMQ sockets ---- */

int rb_loop_add_zsock(rb_loop_t *l, void *sock, rb_zsock_fn *fn, void *arg)
{
    int fd;
    size_t sz = sizeof fd;
    if (zmq_getsockopt(sock, ZMQ_FD, &fd, &sz) < 0) return -1;
    if (l->zs_len == l->zs_cap) {
        size_t cap = l->zs_cap ? l->zs_cap * 2 : 8;
        zsock_slot_t *p = realloc(l->zs, cap * sizeof *p);
        if (!p) return -1;
        l->zs = p;
        l->zs_cap = cap;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = ZSOCK_MARK | (uint32_t)fd};
    if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) return -1;
    l->zs[l->zs_len++] = (zsock_slot_t){sock, fd, fn, arg, true, true, false};
    return 0;
}

int rb_loop_del_zsock(rb_loop_t *l, void *sock)
{
    for (size_t i = 0; i < l->zs_len; i++) {
        if (l->zs[i].active && l->zs[i].sock == sock) {
            l->zs[i].active = false;
            epoll_ctl(l->epfd, EPOLL_CTL_DEL, l->zs[i].fd, NULL);
            return 0;
        }
    }
    return -1;
}

/* The loop running on this thread, for rb_loop_zsock_used. */
static __thread rb_loop_t *tl_running;

static zsock_slot_t *s_running_slot(void *sock)
{
    rb_loop_t *l = tl_running;
    if (!l) return NULL; /* outside rb_loop_run: the next run looks at every socket */
    for (size_t i = 0; i < l->zs_len; i++)
        if (l->zs[i].active && l->zs[i].sock == sock) return &l->zs[i];
    return NULL;
}

void rb_loop_zsock_used(void *sock)
{
    zsock_slot_t *z = s_running_slot(sock);
    if (!z) return;
    z->check = true;
    z->drained = false;
}

void rb_loop_zsock_drained(void *sock)
{
    zsock_slot_t *z = s_running_slot(sock);
    if (!z) return;
    z->check = false;
    z->drained = true;
}

static bool s_zsock_readable(void *sock)
{
    int ev = 0;
    size_t sz = sizeof ev;
    if (zmq_getsockopt(sock, ZMQ_EVENTS, &ev, &sz) < 0) return false;
    return (ev & ZMQ_POLLIN) != 0;
}

/* Calls handlers while their sockets have input. Only sockets that may
 * have changed are asked (reading ZMQ_EVENTS costs two system calls): once
 * ZMQ_EVENTS said "no input", new input comes with a command that makes
 * ZMQ_FD readable, unless a send (or other call) on the socket took that
 * command first; rb_loop_zsock_used covers those. A handler that ended
 * with a receive finding nothing (rb_loop_zsock_drained) has asked
 * already: that receive processed the commands as ZMQ_EVENTS would.
 * Returns true when a socket still has input after its budget, so the
 * next wait must not block. */
static bool s_zsock_dispatch(rb_loop_t *l)
{
    bool more = false;
    for (size_t i = 0; i < l->zs_len && l->running; i++) {
        if (!l->zs[i].check) continue;
        l->zs[i].check = false;
        int budget = ZSOCK_BUDGET;
        while (l->zs[i].active) {
            /* Asked after the handler's last call: nothing is owed. */
            if (!s_zsock_readable(l->zs[i].sock)) {
                l->zs[i].check = false;
                break;
            }
            if (budget-- == 0) {
                more = true;
                l->zs[i].check = true;
                break;
            }
            l->zs[i].drained = false;
            l->zs[i].fn(l, l->zs[i].sock, l->zs[i].arg);
            if (l->zs[i].drained) break;
        }
    }
    /* Compact removed sockets outside the dispatch walk. */
    size_t j = 0;
    for (size_t i = 0; i < l->zs_len; i++)
        if (l->zs[i].active) l->zs[j++] = l->zs[i];
    l->zs_len = j;
    return more;
}

/* A socket was used outside its handler since the last dispatch. */
static bool s_zsock_pending(const rb_loop_t *l)
{
    for (size_t i = 0; i < l->zs_len; i++)
        if (l->zs[i].active && l->zs[i].check) return true;
    return false;
}

void rb_loop_defer(rb_loop_t *l, rb_defer_t *d, rb_defer_fn *fn, void *arg)
{
    if (d->queued) return;
    d->fn = fn;
    d->arg = arg;
    d->queued = true;
    d->pass = l->defer_pass;
    d->next = NULL;
    d->prev = l->defer_tail;
    if (l->defer_tail)
        l->defer_tail->next = d;
    else
        l->defer_head = d;
    l->defer_tail = d;
}

void rb_loop_undefer(rb_loop_t *l, rb_defer_t *d)
{
    if (!d->queued) return;
    if (d->prev)
        d->prev->next = d->next;
    else
        l->defer_head = d->next;
    if (d->next)
        d->next->prev = d->prev;
    else
        l->defer_tail = d->prev;
    d->prev = d->next = NULL;
    d->queued = false;
}

/* Runs what was deferred before this call; what those callbacks defer
 * waits for the next pass (the loop does not sleep while any is queued). */
static void s_run_deferred(rb_loop_t *l)
{
    /* What these callbacks defer is stamped with the next pass and waits
     * for it. Anything older runs now, also what a run stopped before its
     * end left queued: matching one pass exactly would strand it (and every
     * later item behind it) and keep the loop from ever sleeping. */
    unsigned next = ++l->defer_pass;
    while (l->defer_head && l->defer_head->pass != next && l->running) {
        rb_defer_t *d = l->defer_head;
        rb_loop_undefer(l, d);
        d->fn(l, d->arg);
    }
}

void rb_loop_stop(rb_loop_t *l) { l->running = false; }

/* A ZeroMQ socket's fd fired: read its ZMQ_EVENTS in the next pass. */
static void s_zsock_fired(rb_loop_t *l, int fd)
{
    for (size_t i = 0; i < l->zs_len; i++)
        if (l->zs[i].active && l->zs[i].fd == fd) l->zs[i].check = true;
}

/* One pass: wait, file descriptors, timers, ZeroMQ sockets, then the
 * deferred work. ZeroMQ input is handled after the descriptors so that
 * what their handlers sent is asked about in the same pass, and the
 * deferred writes it caused (a frame for a device) go out before the loop
 * waits again rather than after another wait with no timeout. */
int rb_loop_run(rb_loop_t *l)
{
    struct epoll_event evs[MAX_EVENTS];
    l->running = true;
    rb_loop_t *outer = tl_running;
    tl_running = l;
    /* Sockets may have been used since the last run. */
    for (size_t i = 0; i < l->zs_len; i++) l->zs[i].check = true;
    bool zmore = false;
    while (l->running) {
        bool busy = zmore || l->defer_head || s_zsock_pending(l);
        int n = epoll_wait(l->epfd, evs, MAX_EVENTS, busy ? 0 : s_timeout(l));
        if (n < 0) {
            if (errno == EINTR) continue;
            rb_error("loop_failed", "epoll_wait: %s", strerror(errno));
            tl_running = outer;
            return -1;
        }
        for (int i = 0; i < n && l->running; i++) {
            uint64_t d = evs[i].data.u64;
            if (d & ZSOCK_MARK) {
                s_zsock_fired(l, (int)(uint32_t)d);
                continue;
            }
            int fd = (int)(uint32_t)d;
            uint32_t gen = (uint32_t)(d >> 32);
            if ((size_t)fd >= l->nfds) continue;
            fd_slot_t *s = &l->fds[fd];
            if (!s->active || s->gen != gen) continue;
            unsigned e = 0;
            if (evs[i].events & (EPOLLIN | EPOLLRDHUP)) e |= RB_EV_READ;
            if (evs[i].events & EPOLLOUT) e |= RB_EV_WRITE;
            if (evs[i].events & (EPOLLERR | EPOLLHUP)) e |= RB_EV_ERROR | RB_EV_READ;
            s->fn(l, fd, e, s->arg);
        }
        if (!l->running) break;
        s_run_timers(l);
        zmore = s_zsock_dispatch(l);
        s_run_deferred(l);
    }
    tl_running = outer;
    return 0;
}
