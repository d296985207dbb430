/* client_streams: the device's end of the data plane. It keeps what the
 * device exposes (--expose: which ports internal servers may reach, and the
 * local address each goes to), the local listeners of --forward and --socks,
 * and every stream and UDP flow on the current tunnel:
 *   server-initiated: StreamOpen from the edge -> connect to the exposed
 *     port's local target -> StreamResult; a port not exposed is refused;
 *   --forward / --socks: a local connection -> StreamOpen(host, port) ->
 *     on StreamResult{OK}, bytes flow; otherwise the local side is reset
 *     (SOCKS: answered with the matching reply code).
 * Streams are pumped with rb_pump (credit windows, half-close, resets).
 * When the tunnel goes, every stream is reset; the listeners stay, and a
 * local connection made while there is no tunnel is reset at once. */
#ifndef CLIENT_STREAMS_H
#define CLIENT_STREAMS_H
#include <stddef.h>
#include "rb_frame.h"
#include "rb_loop.h"
#include "rb_tconn.h"
#include "tunnel.pb-c.h"

typedef struct client_streams client_streams_t;

/* NULL when memory runs out. */
/* How long a connected exposed stream keeps its StreamResult{OK} back
 * waiting for its first frame to ride in front of. */
#define CLIENT_OK_HOLD_MS 50

client_streams_t *client_streams_new(rb_loop_t *loop);
/* Accepts NULL; clears the pointer. Resets every stream, closes the
 * listeners. */
void client_streams_destroy(client_streams_t **cs);

/* --expose PROTO:PORT[=HOST:PORT] ("tcp:22" goes to 127.0.0.1:22). 0, or -1
 * with err set. At most 64. */
int client_streams_expose(client_streams_t *cs, const char *spec, char *err, size_t errlen);
/* --forward [BIND:]LPORT:HOST:PORT (BIND defaults to 127.0.0.1): listens
 * now. 0, or -1 with err set. */
int client_streams_forward(client_streams_t *cs, const char *spec, char *err, size_t errlen);
/* --socks [BIND:]PORT: a SOCKS5 (CONNECT) listener; names are resolved on
 * the gateway side. 0, or -1 with err set. */
int client_streams_socks(client_streams_t *cs, const char *spec, char *err, size_t errlen);
/* The local port a --forward or --socks listener got (index in the order
 * they were added), for tests that ask for port 0. -1 when none. */
int client_streams_listener_port(const client_streams_t *cs, size_t index);

/* The tunnel is up (t: the Expose is sent) or gone (NULL). */
void client_streams_tunnel(client_streams_t *cs, rb_tconn_t *t);
/* From the edge: DATA, DATAGRAM, WINDOW (f) or StreamOpen, StreamResult
 * (m). */
void client_streams_input(client_streams_t *cs, const rb_frame_t *f,
                          const Rb__Tunnel__TunnelControl *m);
/* The tunnel's output has all gone to the socket: streams held for the
 * uplink read again. */
void client_streams_drained(client_streams_t *cs);
size_t client_streams_count(const client_streams_t *cs);
/* Local datagrams dropped because over 1 MiB waited for the tunnel. */
uint64_t client_streams_datagrams_dropped(const client_streams_t *cs);

#endif
