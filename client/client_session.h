/* client_session: one device session over the tunnel, on the loop: TLS,
 * Hello, Logon (or a transfer offer the caller answers), keepalive pings
 * every keepalive_s, resume on another edge when the connection drops,
 * Logoff on request. The caller hears the outcome once, as a result code
 * that is also the reachback-client exit code (docs/protocol.md). */
#ifndef CLIENT_SESSION_H
#define CLIENT_SESSION_H
#include <openssl/ssl.h>
#include <stdbool.h>
#include <stdint.h>
#include "rb_frame.h"
#include "rb_loop.h"
#include "rb_tconn.h"

typedef struct client_session client_session_t;

typedef enum {
    CLIENT_OK = 0,                /* logged off (or stopped before logging on) */
    CLIENT_INTERNAL = 1,
    CLIENT_USAGE = 2,
    CLIENT_CONNECT_FAILED = 3,    /* TCP connect or TLS handshake failed (every server) */
    CLIENT_BAD_CREDENTIALS = 4,
    CLIENT_RATE_LIMITED = 5,
    CLIENT_UNAVAILABLE = 6,       /* server unavailable or address pool exhausted */
    CLIENT_SESSION_EXISTS = 7,    /* and no transfer offer could be made */
    CLIENT_CONNECTION_LOST = 8,   /* dropped, and no resume within the resume timeout */
    CLIENT_PROTOCOL = 9,          /* the edge and we do not understand each other */
    CLIENT_DECLINED = 10,         /* a transfer offer was declined */
    CLIENT_TRANSFERRED = 11,      /* the session was transferred to another device */
    CLIENT_REPLACED = 12,         /* replaced by a newer logon */
    CLIENT_KICKED = 13,           /* closed by an administrator */
    CLIENT_EXPIRED = 14,          /* the session reached its timeout */
    CLIENT_OFFER_EXPIRED = 15,    /* the transfer offer was accepted too late */
    CLIENT_RESUME_REFUSED = 16,   /* the session is gone or the token was refused */
} client_result_t;

#define CLIENT_MAX_SERVERS 16

typedef struct {
    const char *const *servers;  /* host:port of every edge; tried in turn */
    size_t n_servers;
    const char *verify_name;     /* NULL: the host part of each server */
    const char *user;
    const char *password;        /* copied; wiped when no longer needed */
    const char *device;
    unsigned resume_timeout_s;   /* 0: never resume */
} client_session_config_t;

typedef struct {
    const char *session_id, *ip, *fqdn, *resume_token;
    const char *edge_id;         /* from HelloAck */
    const char *server;          /* the host:port it came through */
    unsigned keepalive_s;
    bool no_address;             /* logged on without an intranet address */
    bool resumed;                /* a resume, not a new logon */
} client_logon_info_t;

typedef struct {
    const char *offer_id;
    uint64_t since_ms;
    const char *device, *edge_id, *source;
    unsigned expires_in_s;
} client_offer_t;

typedef struct {
    /* The session exists (again, when resumed); info is only valid during
     * the call. */
    void (*on_logon)(void *arg, const client_logon_info_t *info);
    /* The user has a session already: answer with client_session_answer,
     * now or later. The offer is only valid during the call. offer NULL:
     * the unanswered offer is gone with its connection (the next edge
     * makes its own); a question put to the person about it is moot. */
    void (*on_offer)(void *arg, const client_offer_t *offer);
    /* The connection dropped; resuming (for people; may be NULL). */
    void (*on_resuming)(void *arg, const char *why);
    /* The end, once; message says why, for people. The session may be
     * destroyed from here. */
    void (*on_end)(void *arg, client_result_t result, const char *message);
    /* The tunnel can carry streams (t, after every LogonOk) or no longer
     * can (NULL: the connection dropped or the session is ending); streams
     * on the old tunnel are gone. May be NULL. */
    void (*on_tunnel)(void *arg, rb_tconn_t *t);
    /* A stream frame (DATA, DATAGRAM, WINDOW: f set) or a stream control
     * message (StreamOpen, StreamResult: m set) from the edge, while the
     * tunnel is up. */
    void (*on_stream)(void *arg, const rb_frame_t *f, const Rb__Tunnel__TunnelControl *m);
    /* What was queued for the tunnel has all gone to the socket, while the
     * tunnel is up. May be NULL. */
    void (*on_drained)(void *arg);
} client_session_handlers_t;

/* Starts connecting to the first server. tls is borrowed. NULL when no
 * server address can be used (message logged). */
client_session_t *client_session_new(rb_loop_t *loop, SSL_CTX *tls,
                                     const client_session_config_t *cfg,
                                     const client_session_handlers_t *h, void *arg);
/* Answers the pending transfer offer; ignored when there is none. */
void client_session_answer(client_session_t *s, bool accept);
/* Ends the session: Logoff, then wait (at most 2 s) for SessionClosed;
 * on_end(CLIENT_OK) follows from the loop. Without a connection (between
 * resume attempts) it ends at once; the broker expires the session. */
void client_session_logoff(client_session_t *s);
/* Accepts NULL; clears the pointer. Drops the connection, no callback. */
void client_session_destroy(client_session_t **s);
const char *client_result_str(client_result_t r);
/* The delay before resume attempt n (0-based): 100 ms doubling to 2 s,
 * then scaled by a jitter factor in [0.5, 1.0] from rnd (0..65535). */
unsigned client_backoff_ms(unsigned attempt, unsigned rnd);

#endif
