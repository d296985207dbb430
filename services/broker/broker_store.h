/* broker_store: the session truth in Redis, in domain terms. A logon is
 * begin (claim the user's one session and a DNS label) -> commit (the session
 * is live; the event sequence moves on) or abort; a logoff is end. Every
 * step is one Lua script, so brokers sharing one Redis never see two sessions
 * for one user. Calls return -1 at once when they cannot be sent (the
 * callback is not called then); otherwise the callback is called exactly once
 * from the loop, unless the store is destroyed first. */
#ifndef BROKER_STORE_H
#define BROKER_STORE_H
#include <stddef.h>
#include <stdint.h>
#include "rb_redis.h"

#define BROKER_SESSION_ID_LEN 32 /* 128 random bits, hex */

typedef struct broker_store broker_store_t;

/* A session as stored. The strings are valid only during the callback. */
typedef struct {
    const char *session_id;
    const char *user;
    const char *label;
    const char *fqdn;
    const char *ip;
    const char *device;
    const char *edge_id;
    uint64_t since_ms;
} broker_session_t;

typedef enum {
    BROKER_BEGIN_CLAIMED = 0, /* session_id is new, label is the one to use */
    BROKER_BEGIN_EXISTS,      /* the user has a session: session_id is it */
    BROKER_BEGIN_ERROR,       /* Redis failed, or no label could be had */
} broker_begin_result_t;

/* since_ms: when the claimed session started (as stored). */
typedef void(broker_begin_fn)(void *arg, broker_begin_result_t res, const char *session_id,
                              const char *label, uint64_t since_ms);
/* rc 0: committed, seq is the new event sequence number; 1: not committed
 * (the pending session expired or was aborted); -1: unknown (Redis failed or
 * did not answer, the script may have run). */
typedef void(broker_seq_fn)(void *arg, int rc, uint64_t seq);
/* found: 1 done, 0 no such session (in the needed state), -1 error. */
typedef void(broker_found_fn)(void *arg, int found);
/* found as above; seq and s are set when found is 1. */
typedef void(broker_end_fn)(void *arg, int found, uint64_t seq, const broker_session_t *s);
/* rc 0 or -1; sessions[0..n) are the live sessions as of seq. */
typedef void(broker_snapshot_fn)(void *arg, int rc, uint64_t seq, const broker_session_t *sessions,
                                 size_t n);
/* rc 0 or -1: the current sequence number and the number of live sessions. */
typedef void(broker_stats_fn)(void *arg, int rc, uint64_t seq, uint64_t sessions);

/* Borrows redis, which must outlive the store. NULL on error. */
broker_store_t *broker_store_new(rb_redis_t *redis);
/* Accepts NULL; clears the pointer. Pending callbacks are not called. */
void broker_store_destroy(broker_store_t **s);

/* Forgets the calls in progress whose callback argument is arg. */
void broker_store_cancel(broker_store_t *s, void *arg);

/* Claims a new session for user unless one exists, and the DNS label:
 * label when it is free or already the user's (labels are owned for ever),
 * otherwise alt_label (see rb_label_disambiguate). The claim is pending: it
 * expires unless committed within 30 s. */
int broker_store_begin(broker_store_t *s, const char *user, const char *label,
                       const char *alt_label, const char *device, const char *edge_id,
                       const char *source, broker_begin_fn *fn, void *arg);
/* Makes a pending session live with its address, name and the SHA-256 (hex)
 * of its resume token, and bumps the event sequence, in one script. */
int broker_store_commit(broker_store_t *s, const char *session_id, const char *ip, const char *fqdn,
                        const char *token_sha256, broker_seq_fn *fn, void *arg);
/* Drops a pending session (a logon that failed half way). */
int broker_store_abort(broker_store_t *s, const char *session_id, broker_found_fn *fn, void *arg);
/* Ends a live session and bumps the event sequence. */
int broker_store_end(broker_store_t *s, const char *session_id, const char *reason,
                     broker_end_fn *fn, void *arg);
/* Every live session and the sequence number they are current to, read in
 * one script (atomic). */
int broker_store_snapshot(broker_store_t *s, broker_snapshot_fn *fn, void *arg);
int broker_store_stats(broker_store_t *s, broker_stats_fn *fn, void *arg);

#endif
