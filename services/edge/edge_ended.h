/* edge_ended: sessions that ended before this edge knew it carried them.
 *
 * The broker answers a transfer or resume on the request socket and
 * publishes the end of a session on the event stream; the two travel apart,
 * so the SESSION_DOWN of a session can reach the edge before the answer that
 * attaches it. The edge notes such ends here for a few seconds and checks
 * every session it attaches, so a replaced device is closed at once instead
 * of at the next refresh. Bounded: the oldest note makes room. */
#ifndef EDGE_ENDED_H
#define EDGE_ENDED_H
#include <stddef.h>
#include <stdint.h>

typedef struct edge_ended edge_ended_t;

/* Keeps up to cap notes, each for keep_ms. NULL when memory runs out. */
edge_ended_t *edge_ended_new(size_t cap, uint64_t keep_ms);
/* Accepts NULL; clears the pointer. */
void edge_ended_destroy(edge_ended_t **e);
/* Notes that session sid ended for reason (the event's word, e.g.
 * "replaced"). Ids or reasons too long to keep are ignored. */
void edge_ended_note(edge_ended_t *e, const char *sid, const char *reason);
/* When sid was noted within keep_ms: copies its reason into reason (at
 * least 32 bytes), forgets the note, returns 0. Otherwise -1. */
int edge_ended_take(edge_ended_t *e, const char *sid, char reason[32]);

#endif
