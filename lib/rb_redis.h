/* rb_redis: one asynchronous hiredis connection driven by rb_loop, shared by
 * the services that keep state in Redis (broker, ipalloc).
 *
 * The connection is never blocked on: commands are queued and their replies
 * come back through callbacks from the loop. A context with an error is dead
 * (hiredis's rule), so on any error, drop or command timeout the connection
 * is thrown away, every pending command is answered with NULL, and a new one
 * is made with exponential backoff. Lua scripts are registered once, called
 * with EVALSHA, and re-sent with EVAL when Redis answers NOSCRIPT (a Redis
 * restart or SCRIPT FLUSH empties its script cache). A periodic PING keeps
 * rb_redis_ok() honest.
 *
 * Replies (struct redisReply) reach only the store modules that issued the
 * commands; they turn them into domain results (STYLE habit 12). */
#ifndef RB_REDIS_H
#define RB_REDIS_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "rb_loop.h"

typedef struct rb_redis rb_redis_t;
typedef struct rb_redis_script rb_redis_script_t;
struct redisReply;

typedef struct {
    const char *host;        /* default "127.0.0.1"; a name is resolved (blocking) at
                                each connect, so prefer an address */
    int port;                /* default 6379 */
    const char *socket_path; /* unix socket; overrides host/port when non-empty */
    const char *password;    /* AUTH when non-empty */
    unsigned timeout_ms;     /* command timeout; 0 = 2000 */
    unsigned ping_ms;        /* PING period; 0 = 1000 */
} rb_redis_config_t;

/* reply is NULL when the command failed without an answer (timeout, lost
 * connection). It is owned by rb_redis and valid only during the call; an
 * error reply (REDIS_REPLY_ERROR) is passed on as it is. */
typedef void(rb_redis_reply_fn)(void *arg, const struct redisReply *reply);
/* Told when the connection becomes usable (after AUTH and the first PING). */
typedef void(rb_redis_up_fn)(void *arg);

/* Starts connecting at once. The strings in cfg are copied. NULL on error. */
rb_redis_t *rb_redis_new(rb_loop_t *loop, const rb_redis_config_t *cfg);
/* Accepts NULL; clears the pointer. Pending commands are dropped without
 * their callbacks being called. */
void rb_redis_destroy(rb_redis_t **r);

/* True when the last PING was answered and the connection has not failed
 * since. */
bool rb_redis_ok(const rb_redis_t *r);
/* Called after each successful (re)connection; one per rb_redis. */
void rb_redis_on_up(rb_redis_t *r, rb_redis_up_fn *fn, void *arg);

/* Registers a Lua script. The handle lives as long as r. NULL on error. */
rb_redis_script_t *rb_redis_script(rb_redis_t *r, const char *lua);

/* Sends a command (arguments are copied). fn is called exactly once, unless
 * the call is cancelled or r destroyed. Returns 0, or -1 when there is no
 * connection (fn is not called then). argvlen may be NULL for C strings. */
int rb_redis_command(rb_redis_t *r, int argc, const char **argv, const size_t *argvlen,
                     rb_redis_reply_fn *fn, void *arg);
/* EVALSHA of script with nkeys keys followed by the other arguments in
 * argv; falls back to EVAL on NOSCRIPT. Same contract as rb_redis_command. */
int rb_redis_eval(rb_redis_t *r, rb_redis_script_t *script, int nkeys, int argc, const char **argv,
                  const size_t *argvlen, rb_redis_reply_fn *fn, void *arg);
/* Forgets the pending commands whose callback argument is arg: their
 * callbacks will not be called. */
void rb_redis_cancel(rb_redis_t *r, void *arg);

/* Counters for tests and /status. */
uint64_t rb_redis_reconnects(const rb_redis_t *r);
size_t rb_redis_pending(const rb_redis_t *r);

#endif
