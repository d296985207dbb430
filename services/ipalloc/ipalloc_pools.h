/* ipalloc_pools: the address plan from the config, parsed and checked once:
 * the default pool, the per-group pools (`group_pools`), the static
 * reservations (`static`) and the groups that get no address
 * (`no_address_groups`). Read-only after ipalloc_pools_new; the service asks
 * it which pool a user's lease comes from and which address is reserved for
 * whom. Pool 0 is always the default pool. */
#ifndef IPALLOC_POOLS_H
#define IPALLOC_POOLS_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "rb_cidr.h"

#define IPALLOC_DEFAULT_POOL "default"
/* Group names become part of Redis keys: short, and no separators. */
#define IPALLOC_GROUP_MAX 64

typedef struct ipalloc_pools ipalloc_pools_t;

typedef struct {
    const char *user;
    uint32_t ip;
} ipalloc_reservation_t;

/* pool, exclude: the `pool` and `exclude` keys (exclude applies to every
 * pool); group_pools: "group=cidr[+cidr...];group2=..."; statics: "user=ip,
 * ..."; no_address_groups: "g1,g2". Any of the last three may be NULL or "".
 * NULL on error with err naming the key and the bad entry. */
ipalloc_pools_t *ipalloc_pools_new(const char *pool, const char *exclude, const char *group_pools,
                                   const char *statics, const char *no_address_groups, char *err,
                                   size_t errlen);
/* Accepts NULL; clears the pointer. */
void ipalloc_pools_destroy(ipalloc_pools_t **p);

size_t ipalloc_pools_count(const ipalloc_pools_t *p);
/* "default" for pool 0, else the group's name. */
const char *ipalloc_pools_name(const ipalloc_pools_t *p, size_t i);
/* The pool's blocks as configured, comma-separated. */
const char *ipalloc_pools_cidrs(const ipalloc_pools_t *p, size_t i);
const rb_pool_t *ipalloc_pools_pool(const ipalloc_pools_t *p, size_t i);
/* The reservations inside pool i, sorted by address; *n is their number. */
const ipalloc_reservation_t *ipalloc_pools_reservations(const ipalloc_pools_t *p, size_t i,
                                                        size_t *n);

/* The pool of the first group in groups that has one, else 0. */
size_t ipalloc_pools_for_groups(const ipalloc_pools_t *p, char *const *groups, size_t ngroups);
/* True when one of groups is in no_address_groups. */
bool ipalloc_pools_no_address(const ipalloc_pools_t *p, char *const *groups, size_t ngroups);
/* 1 with the address reserved for user and its pool, 0 when it has none. */
int ipalloc_pools_reserved(const ipalloc_pools_t *p, const char *user, uint32_t *ip, size_t *pool);
/* The pool holding ip; -1 when none does. */
int ipalloc_pools_find(const ipalloc_pools_t *p, uint32_t ip);

#endif
