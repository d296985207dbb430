/* broker_int: what the broker's modules share (broker.c: the object, the
 * tick, expiry, leases; broker_edge.c: the requests of edges;
 * broker_admin.c: the admin routes). Not for use outside services/broker. */
#ifndef BROKER_INT_H
#define BROKER_INT_H
#include <stdbool.h>
#include <stdint.h>
#include "broker.h"
#include "broker_events.h"
#include "broker_ipalloc.pb-c.h"
#include "broker_store.h"
#include "rb_label.h"
#include "rb_metrics.h"
#include "rb_rpc.h"
#include "rb_zmq.h"

#define BROKER_FIELD_MAX 256
#define BROKER_TOKEN_BYTES 32
/* Groups of one user (users file); more are a mistake or abuse. */
#define BROKER_MAX_GROUPS 32

typedef struct broker_admin broker_admin_t;
typedef struct broker_takeover broker_takeover_t;

/* One request of an edge in progress (logon, transfer, resume, logoff,
 * refresh): what it needs across its asynchronous steps. */
typedef struct broker_ctx {
    struct broker_ctx *prev, *next;
    broker_t *b;
    rb_rpc_req_t *req;
    uint64_t start_ms;
    bool claimed;  /* a pending session exists in Redis */
    bool leasing;  /* ipalloc may hold an address for it */
    bool fallback; /* a transfer whose session had ended, done as a logon */
    char user[BROKER_FIELD_MAX + 1];
    char device[BROKER_FIELD_MAX + 1];
    char edge_id[BROKER_FIELD_MAX + 1];
    char source[BROKER_FIELD_MAX + 1];
    char label[RB_LABEL_MAX + 1];
    char alt_label[RB_LABEL_MAX + 1];
    char session_id[BROKER_SESSION_ID_LEN + 1];
    char ip[16];
    char fqdn[RB_LABEL_MAX + 200];
    char token[BROKER_TOKEN_BYTES * 2 + 1];
    uint64_t since_ms;
    uint64_t up_seq;                   /* the SESSION_UP this call published */
    char reason[BROKER_FIELD_MAX + 1]; /* logoff */
    char *groups[BROKER_MAX_GROUPS];   /* owned */
    size_t ngroups;
    char groups_csv[BROKER_GROUPS_MAX + 1]; /* the same, comma-separated */
} broker_ctx_t;

struct broker {
    rb_loop_t *loop;
    const broker_config_t *cfg;
    rb_curve_t curve;
    rb_redis_t *redis;
    broker_store_t *store;
    broker_events_t *events;
    rb_rpc_server_t *edge;
    rb_rpc_client_t *ipalloc;
    rb_timer_t *tick;
    rb_timer_t *reconcile_timer;
    broker_ctx_t *ctxs;
    broker_takeover_t *takeovers;
    broker_admin_t *admin;

    bool stats_pending;
    bool ping_pending;
    bool sweep_pending;
    uint64_t redis_up_ms;   /* when the Redis connection last came up; 0: never */
    bool reconcile_pending;
    uint64_t ipalloc_ok_ms; /* last good ping answer; 0: never */
    uint64_t seq;
    uint64_t sessions;

    rb_metric_t *m_sessions;
    rb_metric_t *m_ok, *m_exists, *m_offer, *m_exhausted, *m_unavailable, *m_bad;
    rb_metric_t *m_logoffs;
    rb_metric_t *m_duration;
    rb_metric_t *m_xfer_ok, *m_xfer_expired, *m_xfer_failed;
    rb_metric_t *m_resume_ok, *m_resume_refused;
    rb_metric_t *m_expired, *m_kicked, *m_takeover_failed;
};

broker_ctx_t *broker_ctx_new(broker_t *b, rb_rpc_req_t *req);
/* Frees c and drops its unanswered request. */
void broker_ctx_free(broker_ctx_t *c);
/* Copies groups into c (at most BROKER_MAX_GROUPS of at most
 * BROKER_FIELD_MAX bytes, BROKER_GROUPS_MAX in all with their commas).
 * false when there are too many or too long. */
bool broker_ctx_set_groups(broker_ctx_t *c, char *const *groups, size_t n);

int broker_random_hex(char *out, size_t nbytes);
int broker_sha256_hex(const char *in, char out[65]);

/* ipalloc answered a ping within the last 3 s. */
bool broker_ipalloc_ok(const broker_t *b);

/* The edge ROUTER's handler (broker_edge.c). */
void broker_edge_request(void *arg, rb_rpc_req_t *req, const uint8_t *body, size_t len);

/* Unpacks an ipalloc answer of the expected kind; NULL (logged) otherwise. */
Rb__Brokeripalloc__IpallocToBroker *
broker_unpack_ipalloc(const uint8_t *body, size_t len,
                      Rb__Brokeripalloc__IpallocToBroker__BodyCase want);
/* Sends LeaseRequest (take_over may be NULL). 0 or -1. */
int broker_send_lease(broker_t *b, const char *user, const char *session_id,
                      char *const *groups, size_t ngroups, const char *take_over,
                      unsigned retries, rb_rpc_reply_fn *fn, void *arg);
/* Sends ReleaseRequest; fn NULL: the answer is only logged. 0 or -1. */
int broker_send_release(broker_t *b, const char *ip, const char *session_id, rb_rpc_reply_fn *fn,
                        void *arg);
/* A transfer made new_sid live with old_sid's address ip: moves the lease in
 * ipalloc (LeaseRequest.take_over_session), retrying until it is done. */
void broker_takeover_start(broker_t *b, const char *user, const char *new_sid,
                           const char *old_sid, const char *ip, char *const *groups,
                           size_t ngroups);
/* A session ended (kick, expiry): publishes SESSION_DOWN and releases its
 * address (the answer is only logged). */
void broker_session_ended(broker_t *b, uint64_t seq, const broker_session_t *s,
                          const char *reason);

/* Sends PoolsRequest to ipalloc. 0 or -1. */
int broker_send_pools(broker_t *b, rb_rpc_reply_fn *fn, void *arg);

/* broker_admin.c: frees the admin state (pending answers are dropped). */
void broker_admin_destroy(broker_admin_t **a);

#endif
