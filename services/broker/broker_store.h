/* broker_store: the session truth in Redis, in domain terms. A logon is
 * begin (claim the user's one session and a DNS label, or get a transfer
 * offer for the session the user has) -> commit (the session is live; the
 * event sequence moves on) or abort; a transfer ends the user's session and
 * makes the accepting device's live in one step; a resume moves a live
 * session to another edge; logoff, kick and expiry end sessions. Every step
 * is one Lua script, so brokers sharing one Redis never see two sessions for
 * one user. Calls return -1 at once when they cannot be sent (the callback
 * is not called then); otherwise the callback is called exactly once from
 * the loop, unless the store is destroyed first. */
#ifndef BROKER_STORE_H
#define BROKER_STORE_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "rb_redis.h"

#define BROKER_SESSION_ID_LEN 32 /* 128 random bits, hex */
#define BROKER_OFFER_ID_LEN 32   /* 128 random bits, hex */

typedef struct broker_store broker_store_t;

/* A session as stored. The strings are valid only during the callback. */
/* A session's groups, comma-separated, are kept with it for the policy of
 * forwarders that do not serve it. */
#define BROKER_GROUPS_MAX 2048

typedef struct {
    const char *session_id;
    const char *user;
    const char *label;
    const char *fqdn;
    const char *ip;
    const char *device;
    const char *edge_id;
    const char *source;
    uint64_t since_ms;
    uint64_t last_seen_ms; /* 0: unknown */
    bool via_transfer;     /* created by accepting a transfer offer */
    const char *groups;    /* comma-separated (at most BROKER_GROUPS_MAX bytes) */
} broker_session_t;

/* A transfer offer: the session it offers, as the device is shown it. */
typedef struct {
    const char *offer_id;
    const char *session_id;
    uint64_t since_ms;
    const char *device;
    const char *edge_id;
    const char *source;
} broker_offer_t;

typedef enum {
    BROKER_BEGIN_CLAIMED = 0, /* session_id is new, label is the one to use */
    BROKER_BEGIN_EXISTS,      /* a logon of the user is in flight: session_id is its claim */
    BROKER_BEGIN_OFFER,       /* the user has a live session: offer made (see offer) */
    BROKER_BEGIN_ERROR,       /* Redis failed, or no label could be had */
} broker_begin_result_t;

/* since_ms: when the claimed session started (as stored). offer is set
 * with BROKER_BEGIN_OFFER. */
typedef void(broker_begin_fn)(void *arg, broker_begin_result_t res, const char *session_id,
                              const char *label, uint64_t since_ms, const broker_offer_t *offer);
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

typedef enum {
    BROKER_XFER_OK = 0, /* old ended (down_seq, reason), new live (up_seq) */
    BROKER_XFER_EXPIRED, /* no such offer for this user (expired, used or unknown): nothing changed */
    BROKER_XFER_GONE,    /* offer consumed, but the user has no session any more */
    BROKER_XFER_PENDING, /* offer consumed, but a logon of the user is in flight */
    BROKER_XFER_ERROR,   /* Redis failed or did not answer (the script may have run) */
} broker_xfer_result_t;

typedef struct {
    broker_xfer_result_t res;
    uint64_t down_seq, up_seq;
    const char *reason;   /* "transferred", or "replaced" when old was itself transferred */
    broker_session_t old; /* the session that ended */
    broker_session_t cur; /* the new session: old's address and name, via_transfer */
} broker_transfer_t;
typedef void(broker_transfer_fn)(void *arg, const broker_transfer_t *t);

/* rc 1: resumed (seq bumped, s is the session as it is now); 0: refused (why
 * says "unknown session" or "wrong token"); -1: error. */
typedef void(broker_resume_fn)(void *arg, int rc, const char *why, uint64_t seq,
                               const broker_session_t *s);
/* rc 0 or -1; gone[0..n) are the ids of the request that are not live (or
 * live on another edge). */
/* gone[i] is not live on the refreshing edge; reasons[i] says why (see
 * RefreshReply.reasons in proto/edge_broker.proto). */
typedef void(broker_refresh_fn)(void *arg, int rc, const char *const *gone,
                                const char *const *reasons, size_t n);
/* rc 0 or -1; ended[i] ended with event sequence seqs[i]. */
typedef void(broker_sweep_fn)(void *arg, int rc, const uint64_t *seqs,
                              const broker_session_t *ended, size_t n);

typedef enum { BROKER_LIST_ALL, BROKER_LIST_USER, BROKER_LIST_IP } broker_list_by_t;

/* Borrows redis, which must outlive the store. NULL on error. */
broker_store_t *broker_store_new(rb_redis_t *redis);
/* Accepts NULL; clears the pointer. Pending callbacks are not called. */
void broker_store_destroy(broker_store_t **s);

/* Forgets the calls in progress whose callback argument is arg. */
void broker_store_cancel(broker_store_t *s, void *arg);

/* Claims a new session for user unless one exists, and the DNS label:
 * label when it is free or already the user's (labels are owned for ever),
 * otherwise alt_label (see rb_label_disambiguate). The claim is pending: it
 * expires unless committed within 30 s. When the user has a live session, a
 * transfer offer valid for offer_ttl_s seconds is stored instead. */
int broker_store_begin(broker_store_t *s, const char *user, const char *label,
                       const char *alt_label, const char *device, const char *edge_id,
                       const char *source, const char *groups, unsigned offer_ttl_s,
                       broker_begin_fn *fn, void *arg);
/* Makes a pending session live with its address, name and the SHA-256 (hex)
 * of its resume token, and bumps the event sequence, in one script. */
int broker_store_commit(broker_store_t *s, const char *session_id, const char *ip, const char *fqdn,
                        const char *token_sha256, broker_seq_fn *fn, void *arg);
/* Drops a pending session (a logon that failed half way). */
int broker_store_abort(broker_store_t *s, const char *session_id, broker_found_fn *fn, void *arg);
/* Uses offer_id (once): ends the user's session as it is NOW (whichever
 * device has it; the last accept wins) and makes a new live session with its
 * address and name for this device, bumping the sequence for both. */
int broker_store_transfer(broker_store_t *s, const char *offer_id, const char *user,
                          const char *device, const char *edge_id, const char *source,
                          const char *groups, const char *token_sha256, broker_transfer_fn *fn,
                          void *arg);
/* Moves a live session whose token hashes to token_sha256 to edge_id (device
 * too when not empty), marks it seen and bumps the sequence. */
int broker_store_resume(broker_store_t *s, const char *session_id, const char *token_sha256,
                        const char *device, const char *edge_id, const char *source,
                        broker_resume_fn *fn, void *arg);
/* Marks the live sessions of ids[0..n) carried by edge_id (any edge when
 * empty) as seen now, in one script. */
int broker_store_refresh(broker_store_t *s, const char *edge_id, const char *const *ids, size_t n,
                         broker_refresh_fn *fn, void *arg);
/* Ends up to limit sessions not seen for idle_ms, or older than life_ms
 * (0: no limit), in one script. */
int broker_store_sweep(broker_store_t *s, uint64_t idle_ms, uint64_t life_ms, unsigned limit,
                       broker_sweep_fn *fn, void *arg);
/* Ends a live session and bumps the event sequence. */
int broker_store_end(broker_store_t *s, const char *session_id, const char *reason,
                     broker_end_fn *fn, void *arg);
/* Ends the user's live session (kick). */
int broker_store_end_user(broker_store_t *s, const char *user, const char *reason,
                          broker_end_fn *fn, void *arg);
/* found 1 when the address ip is still wanted: session_id is live, or the
 * user's live session (a transfer's successor) has the address. */
int broker_store_lease_wanted(broker_store_t *s, const char *session_id, const char *user,
                              const char *ip, broker_found_fn *fn, void *arg);
/* Every live session and the sequence number they are current to, read in
 * one script (atomic). */
int broker_store_snapshot(broker_store_t *s, broker_snapshot_fn *fn, void *arg);
/* The live sessions of one user or one address (key), or all (key unused). */
int broker_store_list(broker_store_t *s, broker_list_by_t by, const char *key,
                      broker_snapshot_fn *fn, void *arg);
int broker_store_stats(broker_store_t *s, broker_stats_fn *fn, void *arg);

#endif
