/* client_session: one device session over the tunnel, on the loop: TLS,
 * Hello, Logon, keepalive pings every keepalive_s, Logoff on request. The
 * caller hears the outcome once, as a result code that is also the
 * reachback-client exit code (docs/protocol.md). */
#ifndef CLIENT_SESSION_H
#define CLIENT_SESSION_H
#include <openssl/ssl.h>
#include "rb_loop.h"

typedef struct client_session client_session_t;

typedef enum {
    CLIENT_OK = 0,                /* logged off (or stopped before logging on) */
    CLIENT_CONNECT_FAILED = 3,    /* TCP connect or TLS handshake failed */
    CLIENT_BAD_CREDENTIALS = 4,
    CLIENT_RATE_LIMITED = 5,
    CLIENT_UNAVAILABLE = 6,       /* server unavailable or address pool exhausted */
    CLIENT_SESSION_EXISTS = 7,
    CLIENT_CONNECTION_LOST = 8,   /* dropped, or closed by the edge */
    CLIENT_PROTOCOL = 9,          /* the edge and we do not understand each other */
} client_result_t;

typedef struct {
    const char *server;       /* host:port */
    const char *verify_name;  /* NULL: the host part of server */
    const char *user;
    const char *password;     /* copied; wiped when no longer needed */
    const char *device;
} client_session_config_t;

typedef struct {
    const char *session_id, *ip, *fqdn, *resume_token;
    unsigned keepalive_s;
} client_logon_info_t;

typedef struct {
    /* The session exists; info is only valid during the call. */
    void (*on_logon)(void *arg, const client_logon_info_t *info);
    /* The end, once; message says why, for people. The session may be
     * destroyed from here. */
    void (*on_end)(void *arg, client_result_t result, const char *message);
} client_session_handlers_t;

/* Starts connecting. tls is borrowed. NULL when the server address cannot
 * be used (message logged). */
client_session_t *client_session_new(rb_loop_t *loop, SSL_CTX *tls,
                                     const client_session_config_t *cfg,
                                     const client_session_handlers_t *h, void *arg);
/* Ends the session: Logoff, then wait (at most 2 s) for SessionClosed;
 * on_end(CLIENT_OK) follows from the loop. */
void client_session_logoff(client_session_t *s);
/* Accepts NULL; clears the pointer. Drops the connection, no callback. */
void client_session_destroy(client_session_t **s);
const char *client_result_str(client_result_t r);

#endif
