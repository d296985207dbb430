/* ipalloc_store: the IP allocator's state in Redis, in domain terms (pool,
 * lease, release). Every change is one Lua script, so several ipalloc
 * instances can share one Redis without ever handing out an address twice.
 * All calls are asynchronous: they return -1 at once when Redis is not
 * connected (the callback is then not called), otherwise the callback is
 * called exactly once from the loop, unless the store is destroyed first. */
#ifndef IPALLOC_STORE_H
#define IPALLOC_STORE_H
#include <stdbool.h>
#include <stdint.h>
#include "rb_cidr.h"
#include "rb_redis.h"

typedef struct ipalloc_store ipalloc_store_t;

typedef enum {
    IPALLOC_LEASE_OK = 0,
    IPALLOC_LEASE_EXHAUSTED,
    IPALLOC_LEASE_ERROR, /* Redis failed or did not answer */
} ipalloc_lease_result_t;

typedef struct {
    uint64_t pool;   /* addresses in the configured pool */
    uint64_t leased; /* leases, including any outside the current pool */
    uint64_t free;
    char digest[65]; /* the stored pool digest, "" when none */
} ipalloc_stats_t;

/* rc is 0 or -1; rebuilt says whether the free set was rebuilt. */
typedef void(ipalloc_init_fn)(void *arg, int rc, bool rebuilt);
/* ip is a dotted quad for IPALLOC_LEASE_OK, valid only during the call. */
typedef void(ipalloc_lease_fn)(void *arg, ipalloc_lease_result_t res, const char *ip);
/* found: 1 released, 0 the session did not hold it, -1 error. */
typedef void(ipalloc_release_fn)(void *arg, int found);
/* st is NULL on error. */
typedef void(ipalloc_stats_fn)(void *arg, const ipalloc_stats_t *st);

/* Borrows redis, which must outlive the store. NULL on error. */
ipalloc_store_t *ipalloc_store_new(rb_redis_t *redis);
/* Accepts NULL; clears the pointer. Pending callbacks are not called. */
void ipalloc_store_destroy(ipalloc_store_t **s);

/* The digest of a pool: SHA-256 (hex) of its addresses in order. 0 or -1. */
int ipalloc_store_pool_digest(const rb_pool_t *pool, char out[65]);

/* Makes Redis's free set match pool: when the stored digest differs, the
 * free set is rebuilt in one script as pool minus the leased addresses
 * (leases outside the new pool stay until released). */
int ipalloc_store_init_pool(ipalloc_store_t *s, const rb_pool_t *pool, ipalloc_init_fn *fn,
                            void *arg);
/* Leases an address to session: the same one again when the session already
 * holds one, the user's last address when it is free, else any free one. */
int ipalloc_store_lease(ipalloc_store_t *s, const char *user, const char *session,
                        ipalloc_lease_fn *fn, void *arg);
/* Releases ip if session holds it. ip may be "" (the session's address). */
int ipalloc_store_release(ipalloc_store_t *s, const char *ip, const char *session,
                          ipalloc_release_fn *fn, void *arg);
int ipalloc_store_stats(ipalloc_store_t *s, ipalloc_stats_fn *fn, void *arg);

#endif
