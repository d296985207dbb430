/* edge_conn: one device's tunnel connection on the edge, and its logon
 * dialogue (docs/protocol.md):
 *   HELLO  --Hello-->  LOGON  --Logon-->  AUTH (password check in flight)
 *   --ok--> BROKER (LogonRequest in flight) --LOGON_OK--> ACTIVE
 * A refused logon goes back to LOGON (a few tries per connection). A
 * message the current state does not allow closes with CLOSE_PROTOCOL. */
#ifndef EDGE_CONN_H
#define EDGE_CONN_H
#include <openssl/ssl.h>
#include <stddef.h>
#include "edge_auth.h"
#include "edge_broker.h"
#include "edge_ratelimit.h"
#include "rb_buf.h"
#include "rb_loop.h"
#include "rb_metrics.h"

typedef struct edge_conn edge_conn_t;

/* Logon outcomes, the result label of reachback_logons_total. */
enum {
    EDGE_LOGON_OK,
    EDGE_LOGON_BAD_CREDENTIALS,
    EDGE_LOGON_RATE_LIMITED,
    EDGE_LOGON_EXISTS,
    EDGE_LOGON_UNAVAILABLE,
    EDGE_LOGON_EXHAUSTED,
    EDGE_LOGON_NRESULTS
};

/* What every connection shares; owned by the edge service (edge.c). */
typedef struct {
    rb_loop_t *loop;
    SSL_CTX *tls;
    const char *edge_id;
    unsigned keepalive_s;
    edge_auth_t *auth;
    edge_rl_t *rl;
    edge_broker_t *broker;
    rb_metric_t *m_connections, *m_sessions, *m_protocol_errors, *m_logon_duration;
    rb_metric_t *m_logons[EDGE_LOGON_NRESULTS];
    /* The connection table: every live connection, and counts. */
    edge_conn_t *head;
    size_t connections, sessions;
} edge_ctx_t;

/* Takes an accepted socket (fd, owned from here) from peer ("ip:port"),
 * starts TLS, and links the connection into ctx's table. The connection
 * frees itself when it ends. NULL on error (fd closed). */
edge_conn_t *edge_conn_new(edge_ctx_t *ctx, int fd, const char *peer);
/* Closes at once: no message to the device; an active session is ended. */
void edge_conn_destroy(edge_conn_t **c);
/* The edge is stopping: SessionClosed{SHUTDOWN}, then close after flush. */
void edge_conn_shutdown(edge_conn_t *c);
/* The next connection in ctx's table, for walking it. */
edge_conn_t *edge_conn_next(const edge_conn_t *c);

#endif
