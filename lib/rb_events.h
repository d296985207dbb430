/* rb_events: subscriber side of the session event stream (the Clone
 * pattern, proto/session_events.proto). It subscribes to every broker's PUB
 * endpoint, asks a broker's snapshot endpoint for a snapshot, applies updates
 * in sequence order, and takes a new snapshot when it sees a gap (an update
 * or heartbeat whose sequence number skips ahead) or when brokers fall
 * silent and come back. A service that starts late converges without help. */
#ifndef RB_EVENTS_H
#define RB_EVENTS_H
#include <stdbool.h>
#include <stdint.h>
#include "rb_loop.h"
#include "rb_zmq.h"
#include "session_events.pb-c.h"

typedef struct rb_events rb_events_t;

typedef struct {
    /* A snapshot is about to be applied: forget every session. */
    void (*reset)(void *arg);
    /* seq: the event's; for a snapshot's sessions, the snapshot's. */
    void (*up)(void *arg, uint64_t seq, const Rb__Events__Session *s);
    void (*down)(void *arg, const Rb__Events__Session *s, const char *reason);
} rb_events_handlers_t;

typedef struct {
    const char *pub_endpoints;       /* comma-separated broker PUB endpoints */
    const char *snapshot_endpoints;  /* comma-separated broker snapshot ROUTERs */
    const rb_curve_t *curve;         /* our keys; may be disabled */
    const char *broker_public_key;   /* Z85 key of the brokers, when CURVE */
    const char *name;                /* who we are, for the broker's logs */
} rb_events_config_t;

/* NULL on error (logged). */
rb_events_t *rb_events_new(rb_loop_t *loop, const rb_events_config_t *cfg,
                           const rb_events_handlers_t *h, void *arg);
void rb_events_destroy(rb_events_t **ev);
/* True when a snapshot has been applied and a broker was heard from within
 * the last 3 seconds. */
bool rb_events_ready(const rb_events_t *ev);
uint64_t rb_events_seq(const rb_events_t *ev);
uint64_t rb_events_snapshots(const rb_events_t *ev);

#endif
