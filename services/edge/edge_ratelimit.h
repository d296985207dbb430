/* edge_ratelimit: failed logons per user name and per source address, in a
 * sliding window. When a key has had max failures within window_s, every
 * attempt on it in the next lockout_s seconds is refused without checking
 * the password (FAIL_RATE_LIMITED); the lockout runs from the failure that
 * reached the limit.
 *
 * Memory is bounded: each table holds at most cap keys; an entry is dropped
 * once its last failure is older than both the window and the lockout, and
 * when a table is full the least recently failed key is evicted (logged).
 * Evicting could shorten a lockout, but filling a table takes cap distinct
 * keys, which the per-address limit makes slow from any one address.
 *
 * A check in flight counts like a failure until it ends: password checks
 * take tens of milliseconds each on a few threads, and without this an
 * address could queue a thousand guesses before the first failure was
 * counted, and all would be checked. */
#ifndef EDGE_RATELIMIT_H
#define EDGE_RATELIMIT_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct edge_rl edge_rl_t;

typedef struct {
    unsigned max_user;    /* failures per user per window (auth_max_failures) */
    unsigned max_addr;    /* failures per address per window */
    unsigned window_s;    /* auth_window_s */
    unsigned lockout_s;   /* auth_lockout_s */
    size_t cap;           /* keys per table; 0 means EDGE_RL_DEFAULT_CAP */
} edge_rl_config_t;

#define EDGE_RL_DEFAULT_CAP 65536
#define EDGE_RL_MAX_FAILURES 1000   /* largest max_user / max_addr taken */

/* NULL when the config is out of range (a max of 0 or over
 * EDGE_RL_MAX_FAILURES, a window of 0) or memory runs out. */
edge_rl_t *edge_rl_new(const edge_rl_config_t *cfg);
void edge_rl_destroy(edge_rl_t **rl);

/* True when an attempt for user from addr must be refused now (locked
 * out). user may be NULL (a resume, which names no user): the address alone
 * decides. */
bool edge_rl_blocked(edge_rl_t *rl, const char *user, const char *addr, uint64_t now_ms);

typedef enum {
    EDGE_RL_GO,     /* counted in flight: call edge_rl_end when it ends */
    EDGE_RL_LOCKED, /* locked out */
    EDGE_RL_BUSY,   /* recent failures and checks in flight reach a limit */
} edge_rl_verdict_t;

/* Whether an attempt may be checked now; EDGE_RL_GO counts it in flight
 * for user (may be NULL) and addr. */
edge_rl_verdict_t edge_rl_begin(edge_rl_t *rl, const char *user, const char *addr, uint64_t now_ms);
/* The attempt edge_rl_begin let go has ended (record its failure or
 * success after this, or nothing when it was abandoned). */
void edge_rl_end(edge_rl_t *rl, const char *user, const char *addr);
/* Checks in flight, for tests. */
unsigned edge_rl_in_flight(const edge_rl_t *rl, const char *key);
/* Records a failed password check (or, with user NULL, a refused resume:
 * it counts against the address, like a failed logon). */
void edge_rl_failure(edge_rl_t *rl, const char *user, const char *addr, uint64_t now_ms);
/* A good password forgets the user's failures (not the address's: one
 * address guessing many users stays limited). */
void edge_rl_success(edge_rl_t *rl, const char *user, uint64_t now_ms);
/* Keys held (users, addresses), for status and tests. */
size_t edge_rl_users(const edge_rl_t *rl);
size_t edge_rl_addrs(const edge_rl_t *rl);

#endif
