/* edge_conn: one device's tunnel connection on the edge, and its logon
 * dialogue (docs/protocol.md):
 *   HELLO  --Hello-->  LOGON  --Logon-->  AUTH (password check in flight)
 *   --ok--> BROKER (LogonRequest in flight) --LOGON_OK--> ACTIVE
 *                                           --offer-->   OFFERED
 *   OFFERED --TransferAnswer{accept}--> BROKER (TransferRequest) --> ACTIVE
 *   OFFERED --TransferAnswer{decline}--> SessionClosed{DECLINED}
 *   LOGON  --Resume--> BROKER (ResumeRequest in flight) --> ACTIVE
 * In ACTIVE the connection also carries streams and flows (Expose,
 * StreamOpen, StreamResult, DATA, DATAGRAM, WINDOW), relayed by edge_link.
 * A refused logon, transfer or resume goes back to LOGON (a few tries per
 * connection). A message the current state does not allow closes with
 * CLOSE_PROTOCOL.
 *
 * A connection that drops leaves its session at the broker: the device may
 * resume it, here or on another edge, until the broker expires it. Only a
 * Logoff ends it. */
#ifndef EDGE_CONN_H
#define EDGE_CONN_H
#include <openssl/ssl.h>
#include <stddef.h>
#include "edge_auth.h"
#include "edge_broker.h"
#include "edge_ratelimit.h"
#include "edge_ended.h"
#include "edge_link.h"
#include "rb_smap.h"
#include "edge_users.h"
#include "rb_buf.h"
#include "rb_loop.h"
#include "rb_metrics.h"
#include "tunnel.pb-c.h"

typedef struct edge_conn edge_conn_t;

/* Logon outcomes, the result label of reachback_logons_total. */
enum {
    EDGE_LOGON_OK,
    EDGE_LOGON_BAD_CREDENTIALS,
    EDGE_LOGON_RATE_LIMITED,
    EDGE_LOGON_EXISTS,
    EDGE_LOGON_UNAVAILABLE,
    EDGE_LOGON_EXHAUSTED,
    EDGE_LOGON_OFFERED,          /* a transfer offer went to the device */
    EDGE_LOGON_NRESULTS
};

/* reachback_edge_resumes_total{result} */
enum { EDGE_RESUME_OK, EDGE_RESUME_REFUSED, EDGE_RESUME_RATE_LIMITED, EDGE_RESUME_UNAVAILABLE,
       EDGE_RESUME_NRESULTS };
/* reachback_edge_transfers_total{result}: "expired" counts both the
 * broker's verdict and offers the device left unanswered. */
enum { EDGE_TRANSFER_OK, EDGE_TRANSFER_EXPIRED, EDGE_TRANSFER_DECLINED,
       EDGE_TRANSFER_UNAVAILABLE, EDGE_TRANSFER_NRESULTS };
/* reachback_edge_kicks_total{reason}: tunnels closed because the session
 * ended elsewhere (event stream or refresh). */
enum { EDGE_KICK_TRANSFERRED, EDGE_KICK_REPLACED, EDGE_KICK_KICKED, EDGE_KICK_EXPIRED,
       EDGE_KICK_LOGOFF, EDGE_KICK_OTHER, EDGE_KICK_NREASONS };

extern const char *const edge_logon_result_names[EDGE_LOGON_NRESULTS];
extern const char *const edge_resume_result_names[EDGE_RESUME_NRESULTS];
extern const char *const edge_transfer_result_names[EDGE_TRANSFER_NRESULTS];
extern const char *const edge_kick_reason_names[EDGE_KICK_NREASONS];

/* What every connection shares; owned by the edge service (edge.c). */
typedef struct {
    rb_loop_t *loop;
    SSL_CTX *tls;
    const char *edge_id;
    unsigned keepalive_s;
    edge_auth_t *auth;
    edge_rl_t *rl;
    edge_broker_t *broker;
    const edge_users_t *users;   /* for the groups of a logon */
    rb_smap_t *by_session;       /* session id -> ACTIVE connection */
    edge_ended_t *ended;         /* sessions that ended before they attached here */
    edge_link_t *link;           /* the data plane: streams to the forwarders */
    rb_metric_t *m_connections, *m_sessions, *m_protocol_errors, *m_logon_duration;
    rb_metric_t *m_logons[EDGE_LOGON_NRESULTS];
    rb_metric_t *m_resumes[EDGE_RESUME_NRESULTS];
    rb_metric_t *m_transfers[EDGE_TRANSFER_NRESULTS];
    rb_metric_t *m_kicks[EDGE_KICK_NREASONS];
    /* The connection table: every live connection, and counts. */
    edge_conn_t *head;
    size_t connections, sessions;
} edge_ctx_t;

/* Takes an accepted socket (fd, owned from here) from peer ("ip:port"),
 * starts TLS, and links the connection into ctx's table. The connection
 * frees itself when it ends. NULL on error (fd closed). */
edge_conn_t *edge_conn_new(edge_ctx_t *ctx, int fd, const char *peer);
/* Closes at once: no message to the device; its session stays at the
 * broker. */
void edge_conn_destroy(edge_conn_t **c);
/* The edge is stopping: SessionClosed{SHUTDOWN}, then close after flush.
 * The session stays at the broker: the device resumes on another edge. */
void edge_conn_shutdown(edge_conn_t *c);
/* The session ended at the broker (transfer, kick, expiry, ...): tell the
 * device why, close after flush; no LogoffRequest. Counted in
 * reachback_edge_kicks_total. */
void edge_conn_kick(edge_conn_t *c, Rb__Tunnel__CloseReason reason, const char *msg);
/* edge_conn_kick with the close reason and words that match a SESSION_DOWN
 * event's reason ("transferred", "replaced", "kicked", "expired",
 * "logoff"; anything else closes as UNSPECIFIED). */
void edge_conn_end(edge_conn_t *c, const char *event_reason);
/* The session id of an ACTIVE connection, else NULL. */
const char *edge_conn_session_id(const edge_conn_t *c);
/* The seq of the SESSION_UP event the broker published for this
 * connection's logon, resume or transfer (0: the broker did not say). */
uint64_t edge_conn_up_seq(const edge_conn_t *c);
/* After the event sequence restarted: 0, so no UP counts as older. */
void edge_conn_forget_up_seq(edge_conn_t *c);
/* The next connection in ctx's table, for walking it. */
edge_conn_t *edge_conn_next(const edge_conn_t *c);

#endif
