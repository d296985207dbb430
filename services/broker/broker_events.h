/* broker_events: the publishing half of the session event stream
 * (proto/session_events.proto, the Clone pattern). A PUB socket carries
 * EventMessage{SessionEvent | Heartbeat}; a ROUTER answers SnapshotCall with
 * every live session and the sequence number they are current to, read
 * atomically from Redis through broker_store. */
#ifndef BROKER_EVENTS_H
#define BROKER_EVENTS_H
#include <stdbool.h>
#include <stdint.h>
#include "broker_store.h"
#include "rb_loop.h"
#include "rb_zmq.h"

typedef struct broker_events broker_events_t;

/* Binds both endpoints. The store, curve and broker_id are borrowed and must
 * outlive the object. NULL on error (logged). */
broker_events_t *broker_events_new(rb_loop_t *loop, const char *pub_endpoint,
                                   const char *snapshot_endpoint, const rb_curve_t *curve,
                                   broker_store_t *store, const char *broker_id);
/* Accepts NULL; clears the pointer. Snapshot requests in progress are
 * dropped. Call it while the store is still alive. */
void broker_events_destroy(broker_events_t **ev);

/* Publishes a SessionEvent (up, or down with reason). 0 or -1. */
int broker_events_publish(broker_events_t *ev, uint64_t seq, bool up, const broker_session_t *s,
                          const char *reason);
/* Publishes a Heartbeat carrying seq. 0 or -1. */
int broker_events_heartbeat(broker_events_t *ev, uint64_t seq);

#endif
