/* edge_link: the edge's half of the data plane. It connects a DEALER to
 * every forwarder (routing id = edge_id), says Hello every second, attaches
 * the sessions carried here (with the ports their devices expose) to the
 * forwarder that serves their address, and relays streams and flows between
 * tunnels and forwarders: stream ids are translated (tunnel id <-> link id),
 * nothing is buffered here beyond what TLS has not taken yet, and both
 * directions' credit windows are policed (a device that overruns its window
 * breaks the protocol; a forwarder that does gets that stream reset).
 *
 * A forwarder that restarts (a new instance in its HelloAck) gets every
 * session attached again; one that falls silent for 5 s has its streams
 * reset. */
#ifndef EDGE_LINK_H
#define EDGE_LINK_H
#include <stdbool.h>
#include <stddef.h>
#include "rb_buf.h"
#include "rb_frame.h"
#include "rb_loop.h"
#include "rb_tconn.h"
#include "rb_zmq.h"
#include "tunnel.pb-c.h"

/* A device's forwarder stops at RB_SESSION_WINDOW until the tunnel
 * drains; past this, DATA comes only because streams that ended gave
 * their credit back (a device resetting streams it never read): further
 * DATA resets its stream instead of growing the queue. */
#define EDGE_TUNNEL_BACKLOG_MAX ((size_t)4 * RB_SESSION_WINDOW)

typedef struct edge_link edge_link_t;
typedef struct edge_tunnel edge_tunnel_t; /* the link's view of one ACTIVE tunnel */

typedef struct {
    const char *endpoints;        /* forwarders' data links, comma-separated */
    const rb_curve_t *curve;      /* our keys; may be disabled */
    const char *forwarder_public; /* Z85 key of the forwarders, with CURVE */
    const char *edge_id;          /* our routing id */
    unsigned max_streams;         /* per tunnel */
} edge_link_config_t;

/* NULL on error (logged). With no endpoints, every stream a device opens
 * is answered STREAM_UNREACHABLE. cfg is copied; its strings and curve are
 * borrowed and must outlive the link. */
edge_link_t *edge_link_new(rb_loop_t *loop, const edge_link_config_t *cfg);
/* Accepts NULL; clears the pointer. Tunnels must be detached first. */
void edge_link_destroy(edge_link_t **l);

/* The session on t is carried here from now on. groups is a comma list
 * (may be NULL); ip "" without an address. NULL when memory runs out. */
edge_tunnel_t *edge_link_attach(edge_link_t *l, rb_tconn_t *t, const char *session_id,
                                const char *user, const char *ip, const char *groups);
/* The tunnel no longer carries its session (closed, kicked, logged off):
 * its streams are reset at the forwarder, which is told. Accepts NULL;
 * clears the pointer. */
void edge_link_detach(edge_tunnel_t **tun, const char *reason);

/* From the device. Each returns 0, or -1 with *why set when the device
 * broke the protocol (the caller closes the connection). */
int edge_link_expose(edge_tunnel_t *tun, const Rb__Tunnel__Expose *m, const char **why);
int edge_link_stream_open(edge_tunnel_t *tun, const Rb__Tunnel__StreamOpen *m, const char **why);
int edge_link_stream_result(edge_tunnel_t *tun, const Rb__Tunnel__StreamResult *m,
                            const char **why);
/* DATA, DATAGRAM and WINDOW frames. */
int edge_link_frame(edge_tunnel_t *tun, const rb_frame_t *f, const char **why);
/* The tunnel's connection has taken all that was queued: its forwarder
 * hears, in batches, how much of each stream's DATA went out (Relayed),
 * which gives the session's credit back. Accepts NULL. */
void edge_link_drained(edge_tunnel_t *tun);

/* Forwarders that answered within the last 3 s, and all configured. */
size_t edge_link_forwarders_up(const edge_link_t *l);
size_t edge_link_forwarders(const edge_link_t *l);
/* /status fields (no leading comma). */
void edge_link_status_json(const edge_link_t *l, rb_buf_t *json);

#endif
