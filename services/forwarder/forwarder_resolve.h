/* forwarder_resolve: names the devices ask for (--socks, --forward to a
 * name) resolved with the system resolver (getaddrinfo, IPv4) off the loop,
 * on worker threads, answers delivered on the loop. A name under the
 * session suffix never comes here: the forwarder answers those from its
 * session table. */
#ifndef FORWARDER_RESOLVE_H
#define FORWARDER_RESOLVE_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "rb_loop.h"

typedef struct resolve resolve_t;

/* token is the caller's; err 0 with ip (host byte order), or an EAI_*
 * code. */
typedef void(resolve_fn)(void *arg, uint64_t token, int err, uint32_t ip);
/* How a worker looks a name up: 0 with *ip (host byte order), or an EAI_*
 * code. The default is getaddrinfo; tests give one they can hold. */
typedef int(resolve_lookup_fn)(const char *host, uint32_t *ip);

/* NULL on error. */
resolve_t *resolve_new(rb_loop_t *loop, resolve_fn *fn, void *arg);
/* The same with another lookup (NULL: getaddrinfo). */
resolve_t *resolve_new_with(rb_loop_t *loop, resolve_fn *fn, void *arg, resolve_lookup_fn *lookup);
/* Accepts NULL; clears the pointer. Waits for lookups in progress;
 * answers not yet delivered are dropped. */
void resolve_destroy(resolve_t **r);

/* A lookup whose name servers do not answer holds its worker for the
 * resolver's whole timeout. One owner may have RESOLVE_PER_OWNER lookups
 * queued or running, but at most RESOLVE_RUNNING_PER_OWNER of them on
 * workers, and a free worker takes a job of the owner with the fewest
 * running: a few users asking for such names cannot hold every worker,
 * and when they do, the next free one serves someone else first. */
#define RESOLVE_WORKERS 8
#define RESOLVE_PER_OWNER 32
#define RESOLVE_RUNNING_PER_OWNER 2

/* Queues a lookup (host at most 255 bytes) for owner (whom it is for: the
 * user, the same across their sessions and re-attaches). 0, or -1 when
 * the owner has RESOLVE_PER_OWNER lookups already, the queue is full
 * (1024) or memory runs out. */
int resolve_start(resolve_t *r, const char *host, uint64_t token, const char *owner);
/* Drops the queued lookup of token (its answer is no longer wanted: the
 * stream ended), so it neither takes a worker nor counts for its owner.
 * A lookup already running still answers. true when one was dropped. */
bool resolve_cancel(resolve_t *r, uint64_t token);
/* The owner's lookups queued or running; an answer delivered ends one. */
size_t resolve_pending(const resolve_t *r, const char *owner);

#endif
