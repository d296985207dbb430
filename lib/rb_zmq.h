/* rb_zmq: the process's ZeroMQ context, CURVE keys, and socket set-up.
 *
 * Key files are text: "public = <40 Z85 chars>" and, in a secret key file,
 * "secret = <40 Z85 chars>" ('#' comments allowed). A service with a secret
 * key serves CURVE on its bound sockets and accepts only clients whose public
 * key is in its allow list (checked by a ZAP handler run from the loop);
 * without one, links are in the clear (for ipc:// endpoints in a private
 * directory). */
#ifndef RB_ZMQ_H
#define RB_ZMQ_H
#include <stdbool.h>
#include <stddef.h>
#include "rb_loop.h"

#define RB_Z85_KEY_LEN 40

typedef struct {
    bool enabled;
    char public_key[RB_Z85_KEY_LEN + 1];
    char secret_key[RB_Z85_KEY_LEN + 1];
} rb_curve_t;

/* Process-wide context; created on first use. NULL on error. */
void *rb_zmq_ctx(void);
/* Closes the ZAP handler, then the context; every other socket must be
 * closed first. */
void rb_zmq_term(void);

/* Loads a secret key file into c (enabled = true). path NULL or "" leaves c
 * disabled and returns 0. Returns -1 with err set on a bad file. */
int rb_curve_load(rb_curve_t *c, const char *path, char *err, size_t errlen);
/* Reads the public key of a key file (secret or public). 0 or -1. */
int rb_curve_read_public(const char *path, char out[RB_Z85_KEY_LEN + 1], char *err,
                         size_t errlen);
/* Writes DIR/NAME.key (secret, mode 0600) and DIR/NAME.pub. 0 or -1. */
int rb_curve_generate(const char *dir, const char *name);

/* Endpoint lists are comma- or space-separated (so an endpoint contains
 * neither). Returns the next endpoint after *cursor and its length, and
 * moves *cursor past it; NULL at the end of the list. */
const char *rb_zmq_endpoint_next(const char **cursor, size_t *len);
/* True when every endpoint of a list is ipc:// (a Unix
 * socket in a directory only the service user can open) or inproc:// (two
 * services in one process, reachback-gateway): boundaries as strong as
 * CURVE, so the data link skips CURVE's cost on every byte there (DESIGN
 * §2). */
bool rb_zmq_endpoint_local(const char *endpoints);

/* Creates a socket of type and binds it to endpoint ("tcp://127.0.0.1:5555",
 * "ipc:///run/rb/x"), or to each of a list (at least one). With curve
 * enabled it is a CURVE server on every endpoint but inproc:// ones, whose
 * peers skip the handshake; ipc:// peers then need CURVE too. ROUTER sockets
 * get ZMQ_ROUTER_MANDATORY, so an unroutable reply is an error, not a silent
 * drop. Returns NULL (logged) on error. */
void *rb_zsock_bind(int type, const char *endpoint, const rb_curve_t *curve);
/* Sets options of a new socket before it binds or connects: libzmq copies
 * a socket's options into each endpoint then, so options set afterwards
 * (high-water marks) never reach the endpoint's pipes. */
typedef void rb_zsock_setup_t(void *sock);
/* rb_zsock_bind with setup (may be NULL) called before the bind. */
void *rb_zsock_bind_with(int type, const char *endpoint, const rb_curve_t *curve,
                         rb_zsock_setup_t *setup);
/* Creates a socket and connects it. server_public is the peer's public key
 * (Z85) when curve->enabled. Returns NULL (logged) on error. */
void *rb_zsock_connect(int type, const char *endpoint, const rb_curve_t *curve,
                       const char *server_public);
/* rb_zsock_connect with a routing id (1..255 bytes) the peer's ROUTER sees,
 * or NULL for a random one, and setup (may be NULL) called before the
 * connect. */
void *rb_zsock_connect_as(int type, const char *endpoint, const rb_curve_t *curve,
                          const char *server_public, const char *routing_id,
                          rb_zsock_setup_t *setup);
void rb_zsock_close(void **sock);

/* Starts the ZAP handler on loop. allowed_files is a comma-separated list of
 * public key files whose holders may connect. Call before binding CURVE
 * sockets. 0 or -1 (err set). */
int rb_zap_start(rb_loop_t *loop, const char *allowed_files, char *err, size_t errlen);
/* Closes the ZAP handler (rb_zmq_term does, before it waits for sockets). */
void rb_zap_stop(void);

#endif
