/* edge_broker: the edge's link to the broker(s): logon, transfer, resume,
 * refresh and logoff requests over rb_rpc (one DEALER connected to every broker endpoint, which
 * round-robins), and a readiness ping every second. */
#ifndef EDGE_BROKER_H
#define EDGE_BROKER_H
#include <stdbool.h>
#include "edge_broker.pb-c.h"
#include "rb_loop.h"
#include "rb_zmq.h"

typedef struct edge_broker edge_broker_t;
typedef struct edge_broker_req edge_broker_req_t;

/* reply is NULL when no broker answered in time (or the answer was
 * malformed, logged). reply is only valid during the call. */
typedef void(edge_broker_logon_fn)(void *arg, const Rb__Edgebroker__LogonReply *reply);

/* endpoints: comma-separated ZeroMQ endpoints. curve (may be NULL or
 * disabled) and server_public (the brokers' public key, Z85) set up CURVE.
 * NULL on error (logged). */
edge_broker_t *edge_broker_new(rb_loop_t *loop, const char *endpoints, const rb_curve_t *curve,
                               const char *server_public, const char *edge_id);
void edge_broker_destroy(edge_broker_t **b);
/* True when a broker answered a ping within the last 3 s. */
bool edge_broker_ready(const edge_broker_t *b);
/* Asks for a session. groups is the user's comma list ("" for none).
 * Returns a handle for edge_broker_cancel (valid until fn is called), or
 * NULL when it could not be sent (fn is not called). */
edge_broker_req_t *edge_broker_logon(edge_broker_t *b, const char *user, const char *device,
                                     const char *source, const char *groups,
                                     edge_broker_logon_fn *fn, void *arg);
/* The device accepted offer_id: TransferRequest, answered by a LogonReply
 * (LOGON_OK or LOGON_OFFER_EXPIRED). Handle as for edge_broker_logon; an
 * abandoned transfer that succeeds is ended like an abandoned logon. */
edge_broker_req_t *edge_broker_transfer(edge_broker_t *b, const char *offer_id,
                                        const char *user, const char *device,
                                        const char *source, const char *groups,
                                        edge_broker_logon_fn *fn, void *arg);
/* A device came back: ResumeRequest, answered by a LogonReply (LOGON_OK or
 * LOGON_RESUME_REFUSED). An abandoned resume is left alone: the session
 * stays for the device's next try, or expires. */
edge_broker_req_t *edge_broker_resume(edge_broker_t *b, const char *session_id,
                                      const char *token, const char *device,
                                      const char *source, edge_broker_logon_fn *fn, void *arg);
/* reply is NULL when no broker answered; only valid during the call. */
typedef void(edge_broker_refresh_fn)(void *arg, const Rb__Edgebroker__RefreshReply *reply);
/* One RefreshRequest for n session ids (the caller keeps batches small).
 * fn is called once, later. 0, or -1 when it could not be sent. */
int edge_broker_refresh(edge_broker_t *b, const char *const *ids, size_t n,
                        unsigned timeout_ms, edge_broker_refresh_fn *fn, void *arg);
/* fn will not be called; req is freed. Accepts NULL. */
void edge_broker_cancel(edge_broker_t *b, edge_broker_req_t *req);
/* The asker went away while its logon was in flight: should the broker
 * create the session anyway, it is ended at once rather than left to
 * expire. req is taken over (and freed) here. Accepts NULL. */
void edge_broker_abandon(edge_broker_t *b, edge_broker_req_t *req);
/* Ends a session; retried, answered in the log only. 0 or -1. */
int edge_broker_logoff(edge_broker_t *b, const char *session_id, const char *reason);
/* Requests in flight (for status). */
size_t edge_broker_pending(const edge_broker_t *b);

#endif
