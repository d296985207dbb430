/* broker: the session broker service object. Edges ask it (EdgeToBroker on
 * a ROUTER, proto/edge_broker.proto) to log users on and off; it keeps the
 * sessions in Redis (broker_store), leases addresses from ipalloc (a DEALER,
 * proto/broker_ipalloc.proto) and publishes every change on the session
 * event stream (broker_events). It also offers and performs transfers,
 * resumes sessions on other edges, expires sessions nobody refreshes, and
 * answers the admin API (broker_admin.c). */
#ifndef BROKER_H
#define BROKER_H
#include <stdbool.h>
#include "rb_buf.h"
#include "rb_config.h"
#include "rb_loop.h"
#include "rb_status.h"

typedef struct {
    char *log_level;
    char *status_listen;
    char *broker_id;
    char *listen_edge;
    char *listen_events;
    char *listen_snapshot;
    char *ipalloc_endpoint;
    char *ipalloc_public_key;
    char *dns_suffix;
    char *redis_host;
    long redis_port;
    char *redis_socket;
    char *redis_password;
    char *curve_secret_key;
    char *curve_allowed_keys;
    char *admin_token;
    long transfer_offer_ttl;   /* s */
    long session_timeout;      /* s without a refresh */
    long session_max_lifetime; /* s; 0: no limit */
    long reconcile_s;          /* period of the lease reconcile with ipalloc */
} broker_config_t;

/* The option table of reachback-broker (rb_config). */
extern const rb_option_t broker_options[];
/* Cross-field checks for rb_cli: 0 or -1 with err set. */
int broker_config_validate(void *cfg, char *err, size_t errlen);

typedef struct broker broker_t;

/* Binds the edge, event and snapshot endpoints, connects to ipalloc and
 * Redis. cfg is borrowed and must outlive the object. NULL on error. */
broker_t *broker_new(rb_loop_t *loop, const broker_config_t *cfg);
/* Accepts NULL; clears the pointer. Requests in progress are dropped. */
void broker_destroy(broker_t **b);

/* Adds the admin routes (/admin/..., bearer token) to st. Destroy st
 * before b (the routes point at b); answers still pending are then dropped.
 * 0 or -1. */
int broker_admin_attach(broker_t *b, rb_status_t *st);

/* rb_status hooks (arg is the broker_t). */
bool broker_ready(void *arg, rb_buf_t *why);
void broker_status_info(void *arg, rb_buf_t *json);

#endif
