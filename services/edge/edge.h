/* edge: the tunnel edge service object. It owns the TLS listener, the
 * connection table, the password-check pool, the rate limiter, the link to
 * the broker(s) and the status server; main.c only builds and runs it. */
#ifndef EDGE_H
#define EDGE_H
#include <stdbool.h>
#include "rb_buf.h"
#include "rb_config.h"
#include "rb_loop.h"

typedef struct {
    char *log_level;
    char *status_listen;
    char *edge_id;
    char *listen;
    char *tls_cert;
    char *tls_key;
    char *tls_client_ca;
    char *users_file;
    char *broker_endpoint;
    char *broker_public_key;
    char *curve_secret_key;
    long keepalive_s;
    long auth_threads;
    long auth_max_failures;
    long auth_max_failures_per_addr;
    long auth_window_s;
    long auth_lockout_s;
    long max_connections;
    long refresh_s;
    char *events_endpoints;
    char *snapshot_endpoints;
    char *forwarder_endpoints;
    char *forwarder_public_key;
    long max_streams;
} edge_config_t;

/* The option table (keys, defaults, help), ending with RB_OPT_END. */
extern const rb_option_t edge_options[];
/* Cross-field checks for rb_cli. */
int edge_config_validate(void *cfg, char *err, size_t errlen);

typedef struct edge edge_t;

/* Loads the users file, TLS key and broker keys, binds the listener and
 * the status server. cfg is borrowed for the edge's life. NULL on error
 * (logged). */
edge_t *edge_new(rb_loop_t *loop, const edge_config_t *cfg);
/* Accepts NULL; clears the pointer. Drops every connection at once. */
void edge_destroy(edge_t **e);
/* Stops accepting, tells every device the edge is stopping, and stops the
 * loop when they are gone (or after a short grace period). */
void edge_shutdown(edge_t *e);
/* SIGINT and SIGTERM start edge_shutdown of *edge (once it is set), through
 * loop. The signals are blocked for this thread only, and threads inherit
 * the mask they start with: call it before any thread starts (password
 * checks, ZeroMQ's), or block both in the whole process first, as
 * reachback-gateway does. 0 or -1. */
int edge_watch_signals(rb_loop_t *loop, edge_t **edge);
/* Every device is a descriptor: takes all the kernel allows this process. */
void edge_raise_nofile(void);
/* The tunnel port actually bound (listen may say port 0). */
int edge_port(const edge_t *e);
/* Ready: the listener is bound, a broker answered within 3 s, and (when
 * configured) the session event stream has a snapshot and is live. */
bool edge_ready(void *e, rb_buf_t *why);
/* The /status fields. */
void edge_status_json(void *e, rb_buf_t *json);

#endif
