/* rb_redis: the asynchronous hiredis connection of a service (see rb_redis.h).
 *
 * hiredis 0.14 (the version this project builds against) has neither
 * redisAsyncSetTimeout nor reader element limits, so the command timeout is
 * ours: every command is tracked in a FIFO (Redis answers in order), a 100 ms
 * tick looks at the oldest, and a late answer kills the connection the way
 * hiredis 1.x does: every pending command is answered with NULL and the
 * connection is rebuilt. */
#include "rb_redis.h"
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "rb_log.h"

#define RB_REDIS_TICK_MS 100
#define RB_REDIS_BACKOFF_MIN_MS 100
#define RB_REDIS_BACKOFF_MAX_MS 5000
/* Idle reader buffer kept between replies; a bigger one is freed. */
#define RB_REDIS_READER_MAXBUF (64 * 1024)

struct rb_redis_script {
    struct rb_redis_script *next;
    char *lua;
    char sha[SHA_DIGEST_LENGTH * 2 + 1];
};

typedef struct rb_redis_req {
    struct rb_redis_req *prev, *next;
    rb_redis_t *r;         /* NULL once r is destroyed: free on answer */
    rb_redis_reply_fn *fn; /* NULL once cancelled */
    void *arg;
    uint64_t deadline;
    /* For EVALSHA: what to send again as EVAL on NOSCRIPT. */
    rb_redis_script_t *script;
    bool retried;
    int nkeys, argc;
    char **argv;
    size_t *argvlen;
} rb_redis_req_t;

struct rb_redis {
    rb_loop_t *loop;
    char *host, *socket_path, *password;
    int port;
    unsigned timeout_ms, ping_ms;

    redisAsyncContext *ac; /* NULL while disconnected */
    int fd;
    unsigned fd_events;
    bool fd_registered;
    bool ok;
    bool ping_pending;
    bool ever_up;
    uint64_t last_ping_ms;

    rb_timer_t *tick;
    rb_timer_t *retry;
    unsigned backoff_ms;

    rb_redis_req_t *head, *tail; /* commands sent on ac, oldest first */
    size_t npending;
    rb_redis_script_t *scripts;

    rb_redis_up_fn *up_fn;
    void *up_arg;
    uint64_t reconnects;
};

static void s_connect(rb_redis_t *r);

/* ---- the loop adapter hiredis calls through ac->ev ---- */

static void s_on_io(rb_loop_t *loop, int fd, unsigned events, void *arg)
{
    rb_redis_t *r = arg;
    /* Each handler may free the context (error, EOF): look again each time. */
    if (r->ac && (events & (RB_EV_READ | RB_EV_ERROR))) redisAsyncHandleRead(r->ac);
    if (r->ac && (events & RB_EV_WRITE)) redisAsyncHandleWrite(r->ac);
}

static void s_fd_update(rb_redis_t *r)
{
    if (r->fd < 0) return;
    if (r->fd_events == 0) {
        if (r->fd_registered) rb_loop_del_fd(r->loop, r->fd);
        r->fd_registered = false;
        return;
    }
    if (r->fd_registered) {
        rb_loop_mod_fd(r->loop, r->fd, r->fd_events);
    } else if (rb_loop_add_fd(r->loop, r->fd, r->fd_events, s_on_io, r) == 0) {
        r->fd_registered = true;
    } else {
        rb_error("redis_loop_failed", "cannot watch the Redis socket %d", r->fd);
    }
}

static void s_ev_add_read(void *p)
{
    rb_redis_t *r = p;
    r->fd_events |= RB_EV_READ;
    s_fd_update(r);
}

static void s_ev_del_read(void *p)
{
    rb_redis_t *r = p;
    r->fd_events &= ~RB_EV_READ;
    s_fd_update(r);
}

static void s_ev_add_write(void *p)
{
    rb_redis_t *r = p;
    r->fd_events |= RB_EV_WRITE;
    s_fd_update(r);
}

static void s_ev_del_write(void *p)
{
    rb_redis_t *r = p;
    r->fd_events &= ~RB_EV_WRITE;
    s_fd_update(r);
}

static void s_ev_cleanup(void *p)
{
    rb_redis_t *r = p;
    r->fd_events = 0;
    s_fd_update(r);
    r->fd = -1;
}

/* ---- pending commands ---- */

static void s_link(rb_redis_t *r, rb_redis_req_t *q)
{
    q->next = NULL;
    q->prev = r->tail;
    if (r->tail)
        r->tail->next = q;
    else
        r->head = q;
    r->tail = q;
    r->npending++;
}

static void s_unlink(rb_redis_t *r, rb_redis_req_t *q)
{
    if (q->prev)
        q->prev->next = q->next;
    else
        r->head = q->next;
    if (q->next)
        q->next->prev = q->prev;
    else
        r->tail = q->prev;
    q->prev = q->next = NULL;
    r->npending--;
}

static void s_req_free(rb_redis_req_t *q)
{
    if (!q) return;
    for (int i = 0; i < q->argc; i++)
        free(q->argv[i]);
    free(q->argv);
    free(q->argvlen);
    free(q);
}

static void s_on_reply(redisAsyncContext *ac, void *reply, void *privdata);

/* Hands a formatted command to hiredis, tracked by q. 0 or -1. */
static int s_submit(rb_redis_t *r, rb_redis_req_t *q, int argc, const char **argv,
                    const size_t *argvlen)
{
    if (!r->ac) return -1;
    if (redisAsyncCommandArgv(r->ac, s_on_reply, q, argc, argv, argvlen) != REDIS_OK) return -1;
    q->deadline = rb_now_ms() + r->timeout_ms;
    s_link(r, q);
    return 0;
}

/* Sends q's saved script as EVAL (after NOSCRIPT). 0 or -1. */
static int s_submit_eval(rb_redis_t *r, rb_redis_req_t *q)
{
    int n = q->argc + 3;
    const char **av = calloc((size_t)n, sizeof(*av));
    size_t *al = calloc((size_t)n, sizeof(*al));
    char nk[16];
    int rc = -1;
    if (!av || !al) goto out;
    snprintf(nk, sizeof(nk), "%d", q->nkeys);
    av[0] = "EVAL";
    al[0] = 4;
    av[1] = q->script->lua;
    al[1] = strlen(q->script->lua);
    av[2] = nk;
    al[2] = strlen(nk);
    for (int i = 0; i < q->argc; i++) {
        av[i + 3] = q->argv[i];
        al[i + 3] = q->argvlen[i];
    }
    rc = s_submit(r, q, n, av, al);
out:
    free(av);
    free(al);
    return rc;
}

static bool s_is_noscript(const redisReply *rep)
{
    return rep && rep->type == REDIS_REPLY_ERROR && rep->str &&
           strncmp(rep->str, "NOSCRIPT", 8) == 0;
}

static void s_on_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    rb_redis_req_t *q = privdata;
    rb_redis_t *r = q->r;
    const redisReply *rep = reply;

    if (r) s_unlink(r, q);
    if (!r || !q->fn) {
        s_req_free(q);
        return;
    }
    if (q->script && !q->retried && s_is_noscript(rep)) {
        /* The script cache was emptied (restart, SCRIPT FLUSH); EVAL both
         * runs the script and caches it again for the next EVALSHA. */
        rb_info("redis_noscript", "script %.12s not cached by Redis; sending it again",
                q->script->sha);
        q->retried = true;
        if (s_submit_eval(r, q) == 0) return;
        rep = NULL;
    }
    q->fn(q->arg, rep);
    s_req_free(q);
}

static rb_redis_req_t *s_req_new(rb_redis_t *r, rb_redis_reply_fn *fn, void *arg)
{
    rb_redis_req_t *q = calloc(1, sizeof(*q));
    if (!q) return NULL;
    q->r = r;
    q->fn = fn;
    q->arg = arg;
    return q;
}

/* ---- connection life ---- */

static void s_on_retry(rb_loop_t *loop, void *arg)
{
    rb_redis_t *r = arg;
    r->retry = NULL;
    s_connect(r);
}

static void s_schedule_reconnect(rb_redis_t *r)
{
    if (r->retry) return;
    unsigned delay = r->backoff_ms;
    r->backoff_ms =
        r->backoff_ms * 2 > RB_REDIS_BACKOFF_MAX_MS ? RB_REDIS_BACKOFF_MAX_MS : r->backoff_ms * 2;
    r->retry = rb_loop_add_timer(r->loop, delay, false, s_on_retry, r);
}

/* Detaches ac from r so that nothing hiredis does with it afterwards
 * reaches r through the event hooks or connection callbacks. */
static void s_detach(rb_redis_t *r, redisAsyncContext *ac)
{
    r->fd_events = 0;
    s_fd_update(r);
    r->fd = -1;
    ac->ev.addRead = ac->ev.delRead = NULL;
    ac->ev.addWrite = ac->ev.delWrite = NULL;
    ac->ev.cleanup = NULL;
    ac->ev.data = NULL;
    ac->onConnect = NULL;
    ac->onDisconnect = NULL;
    ac->data = NULL;
}

/* Throws the connection away (pending commands are answered with NULL,
 * possibly after the current hiredis callback returns) and reconnects. */
static void s_drop(rb_redis_t *r, const char *why)
{
    redisAsyncContext *ac = r->ac;
    if (!ac) return;
    rb_warn("redis_down", "dropping the Redis connection: %s", why);
    r->ac = NULL;
    r->ok = false;
    r->ping_pending = false;
    s_detach(r, ac);
    redisAsyncFree(ac);
    s_schedule_reconnect(r);
}

static void s_on_connect(const redisAsyncContext *ac, int status)
{
    rb_redis_t *r = ac->data;
    if (!r || r->ac != ac || status == REDIS_OK) return;
    /* hiredis frees the context after this callback. */
    rb_warn("redis_connect_failed", "cannot connect to Redis: %s", ac->errstr ? ac->errstr : "?");
    r->ac = NULL;
    r->ok = false;
    r->ping_pending = false;
    s_schedule_reconnect(r);
}

static void s_on_disconnect(const redisAsyncContext *ac, int status)
{
    rb_redis_t *r = ac->data;
    if (!r || r->ac != ac) return;
    rb_warn("redis_down", "lost the Redis connection: %s",
            ac->err ? (ac->errstr ? ac->errstr : "error") : "closed");
    r->ac = NULL;
    r->ok = false;
    r->ping_pending = false;
    s_schedule_reconnect(r);
}

static void s_on_auth(void *arg, const redisReply *rep)
{
    rb_redis_t *r = arg;
    if (!rep) return;
    if (rep->type == REDIS_REPLY_ERROR) {
        rb_error("redis_auth_failed", "Redis refused AUTH: %s", rep->str ? rep->str : "?");
        s_drop(r, "authentication failed");
    }
}

static void s_on_script_load(void *arg, const redisReply *rep)
{
    rb_redis_script_t *s = arg;
    if (!rep) return;
    if (rep->type != REDIS_REPLY_STRING || strcmp(rep->str, s->sha) != 0)
        rb_warn("redis_script_load", "SCRIPT LOAD of %.12s answered %s", s->sha,
                rep->str ? rep->str : "?");
}

static void s_on_ping(void *arg, const redisReply *rep)
{
    rb_redis_t *r = arg;
    r->ping_pending = false;
    bool good = rep && rep->type == REDIS_REPLY_STATUS && rep->str && strcmp(rep->str, "PONG") == 0;
    if (!good) {
        r->ok = false;
        if (rep) rb_warn("redis_ping_failed", "PING answered %s", rep->str ? rep->str : "?");
        return;
    }
    if (!r->ok) {
        r->ok = true;
        r->backoff_ms = RB_REDIS_BACKOFF_MIN_MS;
        if (r->ever_up) r->reconnects++;
        r->ever_up = true;
        rb_info("redis_up", "connected to Redis at %s", r->socket_path ? r->socket_path : r->host);
        if (r->up_fn) r->up_fn(r->up_arg);
    }
}

static int s_simple(rb_redis_t *r, rb_redis_reply_fn *fn, void *arg, int argc, const char **argv)
{
    return rb_redis_command(r, argc, argv, NULL, fn, arg);
}

static void s_send_ping(rb_redis_t *r)
{
    const char *av[] = {"PING"};
    if (s_simple(r, s_on_ping, r, 1, av) == 0) {
        r->ping_pending = true;
        r->last_ping_ms = rb_now_ms();
    }
}

static void s_load_script(rb_redis_t *r, rb_redis_script_t *s)
{
    const char *av[] = {"SCRIPT", "LOAD", s->lua};
    s_simple(r, s_on_script_load, s, 3, av);
}

static void s_connect(rb_redis_t *r)
{
    redisAsyncContext *ac;
    if (r->socket_path)
        ac = redisAsyncConnectUnix(r->socket_path);
    else
        ac = redisAsyncConnect(r->host, r->port);
    if (!ac) {
        rb_error("redis_connect_failed", "out of memory");
        s_schedule_reconnect(r);
        return;
    }
    if (ac->err) {
        rb_warn("redis_connect_failed", "cannot connect to Redis at %s: %s",
                r->socket_path ? r->socket_path : r->host, ac->errstr);
        redisAsyncFree(ac);
        s_schedule_reconnect(r);
        return;
    }
    ac->data = r;
    ac->ev.data = r;
    ac->ev.addRead = s_ev_add_read;
    ac->ev.delRead = s_ev_del_read;
    ac->ev.addWrite = s_ev_add_write;
    ac->ev.delWrite = s_ev_del_write;
    ac->ev.cleanup = s_ev_cleanup;
    if (ac->c.reader) ac->c.reader->maxbuf = RB_REDIS_READER_MAXBUF;
#if HIREDIS_MAJOR >= 1
    /* A snapshot of 100k sessions is ~1M elements; more is a bug. */
    ac->c.reader->maxelements = 16 * 1024 * 1024;
#endif
    redisAsyncSetConnectCallback(ac, s_on_connect);
    redisAsyncSetDisconnectCallback(ac, s_on_disconnect);
    r->fd = ac->c.fd;
    r->fd_events = 0;
    r->fd_registered = false;
    r->ac = ac;

    /* Pipelined in this order before anything a caller sends: AUTH, the
     * scripts, then the PING whose answer declares the connection up. */
    if (r->password) {
        const char *av[] = {"AUTH", r->password};
        s_simple(r, s_on_auth, r, 2, av);
    }
    for (rb_redis_script_t *s = r->scripts; s; s = s->next)
        s_load_script(r, s);
    s_send_ping(r);
}

static void s_on_tick(rb_loop_t *loop, void *arg)
{
    rb_redis_t *r = arg;
    uint64_t now = rb_now_ms();
    if (!r->ac) return;
    if (r->head && r->head->deadline <= now) {
        rb_warn("redis_timeout", "Redis did not answer within %u ms", r->timeout_ms);
        s_drop(r, "command timeout");
        return;
    }
    if (!r->ping_pending && now - r->last_ping_ms >= r->ping_ms) s_send_ping(r);
}

/* ---- public ---- */

static char *s_dup_or_null(const char *s)
{
    return (s && *s) ? strdup(s) : NULL;
}

rb_redis_t *rb_redis_new(rb_loop_t *loop, const rb_redis_config_t *cfg)
{
    rb_redis_t *r = calloc(1, sizeof(*r));
    if (!r) return NULL;
    r->loop = loop;
    r->host = strdup(cfg->host && *cfg->host ? cfg->host : "127.0.0.1");
    r->port = cfg->port > 0 ? cfg->port : 6379;
    r->socket_path = s_dup_or_null(cfg->socket_path);
    r->password = s_dup_or_null(cfg->password);
    r->timeout_ms = cfg->timeout_ms ? cfg->timeout_ms : 2000;
    r->ping_ms = cfg->ping_ms ? cfg->ping_ms : 1000;
    r->fd = -1;
    r->backoff_ms = RB_REDIS_BACKOFF_MIN_MS;
    if (!r->host || (cfg->socket_path && *cfg->socket_path && !r->socket_path) ||
        (cfg->password && *cfg->password && !r->password))
        goto fail;
    r->tick = rb_loop_add_timer(loop, RB_REDIS_TICK_MS, true, s_on_tick, r);
    if (!r->tick) goto fail;
    s_connect(r);
    return r;
fail:
    rb_redis_destroy(&r);
    return NULL;
}

void rb_redis_destroy(rb_redis_t **rp)
{
    if (!rp || !*rp) return;
    rb_redis_t *r = *rp;
    *rp = NULL;
    /* Orphan the pending commands: hiredis frees them through s_on_reply,
     * now or (when destroyed from a reply callback) once that returns. */
    for (rb_redis_req_t *q = r->head; q; q = q->next)
        q->r = NULL;
    r->head = r->tail = NULL;
    if (r->ac) {
        redisAsyncContext *ac = r->ac;
        r->ac = NULL;
        s_detach(r, ac);
        redisAsyncFree(ac);
    }
    rb_loop_cancel_timer(r->loop, r->tick);
    rb_loop_cancel_timer(r->loop, r->retry);
    while (r->scripts) {
        rb_redis_script_t *s = r->scripts;
        r->scripts = s->next;
        free(s->lua);
        free(s);
    }
    free(r->host);
    free(r->socket_path);
    if (r->password) {
        /* The password does not outlive the connection in our memory. */
        memset(r->password, 0, strlen(r->password));
        free(r->password);
    }
    free(r);
}

bool rb_redis_ok(const rb_redis_t *r)
{
    return r && r->ac && r->ok;
}

void rb_redis_on_up(rb_redis_t *r, rb_redis_up_fn *fn, void *arg)
{
    r->up_fn = fn;
    r->up_arg = arg;
}

rb_redis_script_t *rb_redis_script(rb_redis_t *r, const char *lua)
{
    rb_redis_script_t *s = calloc(1, sizeof(*s));
    unsigned char md[SHA_DIGEST_LENGTH];
    if (!s || !(s->lua = strdup(lua))) {
        free(s);
        return NULL;
    }
    SHA1((const unsigned char *)lua, strlen(lua), md);
    for (int i = 0; i < SHA_DIGEST_LENGTH; i++)
        snprintf(s->sha + 2 * i, 3, "%02x", md[i]);
    s->next = r->scripts;
    r->scripts = s;
    if (r->ac) s_load_script(r, s);
    return s;
}

int rb_redis_command(rb_redis_t *r, int argc, const char **argv, const size_t *argvlen,
                     rb_redis_reply_fn *fn, void *arg)
{
    if (!r->ac) return -1;
    rb_redis_req_t *q = s_req_new(r, fn, arg);
    if (!q) return -1;
    if (s_submit(r, q, argc, argv, argvlen) != 0) {
        s_req_free(q);
        return -1;
    }
    return 0;
}

int rb_redis_eval(rb_redis_t *r, rb_redis_script_t *script, int nkeys, int argc, const char **argv,
                  const size_t *argvlen, rb_redis_reply_fn *fn, void *arg)
{
    if (!r->ac || nkeys < 0 || nkeys > argc) return -1;
    rb_redis_req_t *q = s_req_new(r, fn, arg);
    const char **av = calloc((size_t)argc + 3, sizeof(*av));
    size_t *al = calloc((size_t)argc + 3, sizeof(*al));
    char nk[16];
    int rc = -1;
    if (!q || !av || !al) goto out;
    q->script = script;
    q->nkeys = nkeys;
    q->argv = calloc((size_t)argc + 1, sizeof(*q->argv));
    q->argvlen = calloc((size_t)argc + 1, sizeof(*q->argvlen));
    if (!q->argv || !q->argvlen) goto out;
    /* Keep our own copy of the arguments for the EVAL fallback. */
    for (int i = 0; i < argc; i++) {
        size_t len = argvlen ? argvlen[i] : strlen(argv[i]);
        q->argv[i] = malloc(len + 1);
        if (!q->argv[i]) goto out;
        q->argc = i + 1;
        memcpy(q->argv[i], argv[i], len);
        q->argv[i][len] = '\0';
        q->argvlen[i] = len;
    }
    q->argc = argc;
    snprintf(nk, sizeof(nk), "%d", nkeys);
    av[0] = "EVALSHA";
    al[0] = 7;
    av[1] = script->sha;
    al[1] = strlen(script->sha);
    av[2] = nk;
    al[2] = strlen(nk);
    for (int i = 0; i < argc; i++) {
        av[i + 3] = q->argv[i];
        al[i + 3] = q->argvlen[i];
    }
    rc = s_submit(r, q, argc + 3, av, al);
out:
    if (rc != 0) s_req_free(q);
    free(av);
    free(al);
    return rc;
}

void rb_redis_cancel(rb_redis_t *r, void *arg)
{
    for (rb_redis_req_t *q = r->head; q; q = q->next)
        if (q->arg == arg) q->fn = NULL;
}

uint64_t rb_redis_reconnects(const rb_redis_t *r)
{
    return r->reconnects;
}

size_t rb_redis_pending(const rb_redis_t *r)
{
    return r->npending;
}
