/* forwarder: the reachback-forwarder service object. It follows the session
 * event stream (rb_events) for the cluster's table of live sessions (user,
 * intranet IP, name, edge), runs the data plane (forwarder_plane: the link
 * to the edges, listeners on the sessions' addresses, outbound connections,
 * policy, audit) and the status HTTP server (/readyz = the event stream is
 * current, /status, /metrics). SIGHUP reloads the policy file. Everything
 * runs on one rb_loop thread. */
#ifndef FORWARDER_H
#define FORWARDER_H
#include <stdbool.h>
#include <stddef.h>

#include "rb_config.h"
#include "rb_loop.h"
#include "session_events.pb-c.h"

/* The service's configuration (main.c's option table fills it). */
typedef struct {
    char *log_level;
    char *status_listen;        /* "" or NULL: no status server */
    char *forwarder_id;         /* our name in the brokers' logs */
    char *events_endpoints;     /* broker PUB endpoints, comma-separated */
    char *snapshot_endpoints;   /* broker snapshot ROUTERs, comma-separated */
    char *broker_public_key;    /* key file of the brokers (CURVE) */
    char *curve_secret_key;     /* our secret key file; "" for no CURVE */
    char *curve_allowed_keys;   /* edges' public key files, for the data link */
    char *data_endpoint;        /* the data link the edges connect to */
    char *serve_cidrs;          /* "" or the blocks whose sessions we serve */
    char *policy_file;          /* who may reach which users' ports */
    long connect_timeout_ms;
    long udp_idle_s;
    long max_streams;
    long max_held_per_session_kib;
} forwarder_config_t;

/* The option table main.c hands to rb_cli. */
extern const rb_option_t forwarder_options[];

/* Cross-field checks, for rb_cli's validate. 0 or -1 with err set. */
int forwarder_config_validate(void *cfg, char *err, size_t errlen);

typedef struct forwarder forwarder_t;

/* Loads keys, subscribes to the event stream, starts the status server.
 * cfg is borrowed and must outlive the forwarder. NULL on error (logged). */
forwarder_t *forwarder_new(rb_loop_t *loop, const forwarder_config_t *cfg);
/* Accepts NULL; clears the pointer. */
void forwarder_destroy(forwarder_t **fw);

/* Ready: a snapshot applied and a broker heard within 3 seconds. */
bool forwarder_ready(const forwarder_t *fw);
size_t forwarder_session_count(const forwarder_t *fw);
/* The status HTTP port, or -1 without a status server. */
int forwarder_status_port(const forwarder_t *fw);

/* The event handlers (the stream calls them; so may a test). */
void forwarder_reset(forwarder_t *fw);
int forwarder_session_up(forwarder_t *fw, const Rb__Events__Session *s);
void forwarder_session_down(forwarder_t *fw, const Rb__Events__Session *s, const char *reason);

#endif
