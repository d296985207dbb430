/* ipalloc_store: the IP allocator's state in Redis, in domain terms (pool,
 * lease, take-over, release). Every change is one Lua script, so several
 * ipalloc instances can share one Redis without ever handing out an address
 * twice. All calls are asynchronous: they return -1 at once when Redis is
 * not connected or the arguments are invalid (the callback is then not
 * called), otherwise the callback is called exactly once from the loop,
 * unless the store is destroyed first.
 *
 * Pools are named ("default", or a group's name); each has its own free set
 * and digest. Leases, sessions and sticky addresses are shared by all pools
 * (pools never overlap, so an address belongs to at most one). */
#ifndef IPALLOC_STORE_H
#define IPALLOC_STORE_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "ipalloc_pools.h"
#include "rb_cidr.h"
#include "rb_redis.h"

typedef struct ipalloc_store ipalloc_store_t;

typedef enum {
    IPALLOC_LEASE_OK = 0,
    IPALLOC_LEASE_EXHAUSTED,
    IPALLOC_LEASE_ERROR, /* Redis failed or did not answer */
} ipalloc_lease_result_t;

/* What a lease asks for. Strings are borrowed for the call only. */
typedef struct {
    const char *user;
    const char *session;
    const char *take_over;     /* NULL or "": a fresh lease */
    const char *pool;          /* the pool to lease from when nothing else applies */
    uint32_t reserved_ip;      /* 0: the user has no reservation */
    const char *reserved_pool; /* the pool holding reserved_ip */
} ipalloc_lease_req_t;

/* What a lease got; strings valid only during the callback. */
typedef struct {
    ipalloc_lease_result_t res;
    const char *ip;       /* dotted quad when res is OK */
    const char *how;      /* "held" (already this session's), "moved" (taken over),
                             "reserved", "sticky" (the user's last one), "any" */
    bool takeover_missed; /* take_over held no address of this user */
    bool reserved_busy;   /* the user's reserved address is leased to another session */
    bool own_released;    /* moved: the address session held before went back */
} ipalloc_lease_t;

typedef struct {
    const char *name;  /* borrowed from the store */
    uint64_t size;     /* addresses in the pool (Redis's copy) */
    uint64_t used;     /* of them under lease */
    uint64_t free;     /* of them leasable by anyone now */
    uint64_t reserved; /* reservations in the pool */
    char digest[65];   /* the stored digest, "" when none */
} ipalloc_pool_stats_t;

typedef struct {
    uint64_t leased; /* every lease, including any outside the current pools */
    size_t npools;   /* in the order the pools were first initialised */
    const ipalloc_pool_stats_t *pools;
} ipalloc_stats_t;

/* A live session with an address, as the broker sees it. Borrowed. */
typedef struct {
    const char *session;
    const char *ip; /* dotted quad */
    const char *user;
} ipalloc_live_t;

/* Live sessions one reconcile takes: ARGV stays below ~100 MiB. */
#define IPALLOC_RECONCILE_MAX 1000000

/* rc is 0 or -1; rebuilt says whether the free set was rebuilt. */
typedef void(ipalloc_init_fn)(void *arg, int rc, bool rebuilt);
typedef void(ipalloc_lease_fn)(void *arg, const ipalloc_lease_t *lease);
/* found: 1 released, 0 the session did not hold it, -1 error. */
typedef void(ipalloc_release_fn)(void *arg, int found);
/* st is NULL on error; valid only during the call. */
typedef void(ipalloc_stats_fn)(void *arg, const ipalloc_stats_t *st);

/* rc is 0 or -1; moved and released count leases (0 on error). */
typedef void(ipalloc_reconcile_fn)(void *arg, int rc, uint64_t moved, uint64_t released);

/* Borrows redis, which must outlive the store. NULL on error. */
ipalloc_store_t *ipalloc_store_new(rb_redis_t *redis);
/* Accepts NULL; clears the pointer. Pending callbacks are not called. */
void ipalloc_store_destroy(ipalloc_store_t **s);

/* The digest of a pool and its reservations: SHA-256 (hex) of its addresses
 * in order, then of each reservation. 0 or -1. */
int ipalloc_store_pool_digest(const rb_pool_t *pool, const ipalloc_reservation_t *res, size_t nres,
                              char out[65]);

/* Makes Redis's copy of pool `name` match pool and res: when the stored
 * digest differs, the pool's free set is rebuilt in one script as the pool
 * minus the leased and the reserved addresses (leases outside the new pool
 * stay until released; a reserved address leased to someone else is logged
 * and left alone). Remembers name for releases and stats. */
int ipalloc_store_init_pool(ipalloc_store_t *s, const char *name, const rb_pool_t *pool,
                            const ipalloc_reservation_t *res, size_t nres, ipalloc_init_fn *fn,
                            void *arg);
/* Leases an address to req->session, in this order: the one req->take_over
 * holds (moved in the same step, so it is never free in between; only a
 * lease of the same user moves; an address session held before goes back to
 * its pool); the one it holds already; the user's reserved address unless
 * another session holds it; the user's last address when it is free in
 * req->pool; any free address of req->pool. Repeating a request changes
 * nothing. */
int ipalloc_store_lease(ipalloc_store_t *s, const ipalloc_lease_req_t *req, ipalloc_lease_fn *fn,
                        void *arg);
/* Releases ip if session holds it. ip may be "" (the session's address).
 * The address goes back to the free set of its pool unless it is reserved. */
int ipalloc_store_release(ipalloc_store_t *s, const char *ip, const char *session,
                          ipalloc_release_fn *fn, void *arg);
/* Usage of every pool initialised so far, in one script. */
int ipalloc_store_stats(ipalloc_store_t *s, ipalloc_stats_fn *fn, void *arg);
/* The safety net under release and take-over, in one script: every lease
 * whose `since` is at least grace_ms before now_ms and whose session is not
 * in live with that address moves to the live session of the same user
 * with that address (as a take-over would) or else is released (as a
 * release would). Logs each move and release. -1 at once for an invalid
 * entry (nothing is done then: a live session left out would lose its
 * address). */
int ipalloc_store_reconcile(ipalloc_store_t *s, const ipalloc_live_t *live, size_t n,
                            uint64_t grace_ms, uint64_t now_ms, ipalloc_reconcile_fn *fn, void *arg);

#endif
