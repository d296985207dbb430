/* forwarder_resolve: names the devices ask for (--socks, --forward to a
 * name) resolved with the system resolver (getaddrinfo, IPv4) off the loop,
 * on two worker threads, answers delivered on the loop. A name under the
 * session suffix never comes here: the forwarder answers those from its
 * session table. */
#ifndef FORWARDER_RESOLVE_H
#define FORWARDER_RESOLVE_H
#include <stddef.h>
#include <stdint.h>
#include "rb_loop.h"

typedef struct resolve resolve_t;

/* token is the caller's; err 0 with ip (host byte order), or an EAI_*
 * code. */
typedef void(resolve_fn)(void *arg, uint64_t token, int err, uint32_t ip);

/* NULL on error. */
resolve_t *resolve_new(rb_loop_t *loop, resolve_fn *fn, void *arg);
/* Accepts NULL; clears the pointer. Waits for lookups in progress;
 * answers not yet delivered are dropped. */
void resolve_destroy(resolve_t **r);
/* Most lookups one owner may have queued or running at once. */
#define RESOLVE_PER_OWNER 4

/* Queues a lookup (host at most 255 bytes) for owner (the caller's id of
 * whom it is for: a session). 0, or -1 when the owner has
 * RESOLVE_PER_OWNER lookups already, the queue is full (256) or memory
 * runs out. */
int resolve_start(resolve_t *r, const char *host, uint64_t token, uint64_t owner);
/* The owner's lookups queued or running; an answer delivered ends one. */
size_t resolve_pending(const resolve_t *r, uint64_t owner);

#endif
