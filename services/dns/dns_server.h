/* dns_server: the reachback-dns service object. It serves the zones of
 * dns_zone over UDP (batched with recvmmsg/sendmmsg) and TCP (RFC 7766:
 * length-prefixed, many queries per connection, idle timeout, a cap on
 * connections), forwards names outside its zones to an upstream server over
 * UDP (or refuses them), asking again over TCP when a TCP client's answer
 * comes back truncated, follows the session event stream to keep the zone
 * current, and runs the status HTTP server (/readyz, /metrics, /status).
 * Everything runs on one rb_loop thread. */
#ifndef DNS_SERVER_H
#define DNS_SERVER_H
#include <stdbool.h>
#include <stddef.h>

#include "rb_loop.h"
#include "session_events.pb-c.h"

/* The service's configuration (main.c's option table fills it). */
typedef struct {
    char *log_level;
    char *status_listen;        /* "" or NULL: no status server */
    char *listen;               /* host:port for UDP and TCP; port 0 picks one */
    char *suffix;               /* the user zone, e.g. vpn.lab */
    long ttl;
    char *pool;                 /* CIDR list: reverse zones */
    char *ns_address;           /* A record of ns.<suffix> */
    char *upstream;             /* host:port, "" refuses names outside our zones */
    char *events_endpoints;     /* broker PUB endpoints; "" runs without events */
    char *snapshot_endpoints;
    char *broker_public_key;    /* key file of the brokers (CURVE) */
    char *curve_secret_key;     /* our secret key file; "" for no CURVE */
    char *dns_id;               /* our name in the brokers' logs */
} dns_config_t;

typedef struct dns_server dns_server_t;

/* Cross-field checks (suffix, addresses, pool), for rb_cli's validate.
 * 0 or -1 with err set. */
int dns_config_validate(void *cfg, char *err, size_t errlen);

/* Binds the sockets and joins loop. NULL on error (logged). */
dns_server_t *dns_server_new(rb_loop_t *loop, const dns_config_t *cfg);
/* Accepts NULL; clears the pointer. Unanswered forwarded queries are
 * dropped. */
void dns_server_destroy(dns_server_t **s);

/* The port the UDP and TCP sockets are bound to. */
int dns_server_port(const dns_server_t *s);
/* The status HTTP port, or -1 without a status server. */
int dns_server_status_port(const dns_server_t *s);
/* Ready: sockets bound and, when events are configured, a snapshot applied
 * and a broker heard recently. */
bool dns_server_ready(const dns_server_t *s);
size_t dns_server_records(const dns_server_t *s);

/* The session event handlers. The event stream calls them; so may anything
 * else that learns of sessions (a test, a benchmark driver). A session
 * without an address removes its name. 0 or -1 (logged). */
int dns_server_session_up(dns_server_t *s, const Rb__Events__Session *sess);
int dns_server_session_down(dns_server_t *s, const Rb__Events__Session *sess, const char *reason);
void dns_server_reset(dns_server_t *s);

#endif
