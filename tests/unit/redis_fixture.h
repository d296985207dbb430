/* redis_fixture.h: a private redis-server for a unit test, on a unix socket
 * in a temporary directory, without persistence, killed by PID at the end.
 * Header-only (static functions) so that every test binary can include it.
 *
 *   rbt_redis_t rs;
 *   assert_int_equal(rbt_redis_start(&rs), 0);
 *   ... rs.sock is the socket path ...
 *   rbt_redis_stop(&rs);
 *
 * Also: a blocking hiredis context for inspecting what the code under test
 * wrote, and rbt_wait() to run a loop until a condition holds. */
#ifndef RB_REDIS_FIXTURE_H
#define RB_REDIS_FIXTURE_H
#include <errno.h>
#include <hiredis/hiredis.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "rb_loop.h"

#define RBT_UNUSED __attribute__((unused))

typedef struct {
    char dir[64];
    char sock[128];
    pid_t pid;
    redisContext *sync; /* blocking context for test assertions */
} rbt_redis_t;

static RBT_UNUSED void rbt_sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* Starts redis-server on rs->sock (a fresh directory unless one is set) and
 * waits until it answers PING. 0 or -1. */
static RBT_UNUSED int rbt_redis_spawn(rbt_redis_t *rs)
{
    char logfile[160];
    snprintf(logfile, sizeof(logfile), "%s/redis.log", rs->dir);
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        execlp("redis-server", "redis-server", "--port", "0", "--unixsocket", rs->sock,
               "--unixsocketperm", "700", "--save", "", "--appendonly", "no", "--dir", rs->dir,
               "--logfile", logfile, "--daemonize", "no", (char *)NULL);
        _exit(127);
    }
    rs->pid = pid;
    /* Readiness, not a fixed sleep: poll until PING answers (5 s at most). */
    for (int i = 0; i < 500; i++) {
        redisContext *c = redisConnectUnix(rs->sock);
        if (c && !c->err) {
            redisReply *rep = redisCommand(c, "PING");
            bool up = rep && rep->type == REDIS_REPLY_STATUS;
            freeReplyObject(rep);
            if (up) {
                rs->sync = c;
                return 0;
            }
        }
        if (c) redisFree(c);
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            rs->pid = 0;
            return -1;
        }
        rbt_sleep_ms(10);
    }
    return -1;
}

static RBT_UNUSED int rbt_redis_start(rbt_redis_t *rs)
{
    memset(rs, 0, sizeof(*rs));
    snprintf(rs->dir, sizeof(rs->dir), "/tmp/rb-redis-XXXXXX");
    if (!mkdtemp(rs->dir)) return -1;
    snprintf(rs->sock, sizeof(rs->sock), "%s/redis.sock", rs->dir);
    return rbt_redis_spawn(rs);
}

/* Kills the server (SIGKILL: as abrupt as a crash) and reaps it. */
static RBT_UNUSED void rbt_redis_kill(rbt_redis_t *rs)
{
    if (rs->sync) {
        redisFree(rs->sync);
        rs->sync = NULL;
    }
    if (rs->pid > 0) {
        kill(rs->pid, SIGKILL);
        waitpid(rs->pid, NULL, 0);
        rs->pid = 0;
    }
    unlink(rs->sock);
}

static RBT_UNUSED void rbt_redis_stop(rbt_redis_t *rs)
{
    char path[160];
    rbt_redis_kill(rs);
    snprintf(path, sizeof(path), "%s/redis.log", rs->dir);
    unlink(path);
    rmdir(rs->dir);
}

/* A blocking command on the test's own connection; free the reply. */
static RBT_UNUSED redisReply *rbt_cmd(rbt_redis_t *rs, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *rep = redisvCommand(rs->sync, fmt, ap);
    va_end(ap);
    return rep;
}

static RBT_UNUSED long long rbt_cmd_int(rbt_redis_t *rs, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *rep = redisvCommand(rs->sync, fmt, ap);
    va_end(ap);
    long long v = (rep && rep->type == REDIS_REPLY_INTEGER) ? rep->integer : -1;
    freeReplyObject(rep);
    return v;
}

typedef struct {
    bool (*cond)(void *arg);
    void *arg;
    uint64_t deadline;
    bool met;
} rbt_wait_t;

static RBT_UNUSED void rbt_wait_tick(rb_loop_t *loop, void *arg)
{
    rbt_wait_t *w = arg;
    if (w->cond(w->arg)) {
        w->met = true;
        rb_loop_stop(loop);
    } else if (rb_now_ms() >= w->deadline) {
        rb_loop_stop(loop);
    }
}

/* Runs loop until cond(arg) holds or ms pass. Returns whether it held. */
static RBT_UNUSED bool rbt_wait(rb_loop_t *loop, bool (*cond)(void *arg), void *arg, unsigned ms)
{
    rbt_wait_t w = {cond, arg, rb_now_ms() + ms, false};
    if (cond(arg)) return true;
    rb_timer_t *t = rb_loop_add_timer(loop, 2, true, rbt_wait_tick, &w);
    if (!t) return false;
    rb_loop_run(loop);
    rb_loop_cancel_timer(loop, t);
    return w.met;
}

static RBT_UNUSED bool rbt_flag(void *arg)
{
    return *(bool *)arg;
}

#endif
