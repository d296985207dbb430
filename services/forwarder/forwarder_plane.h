/* forwarder_plane: the forwarder's data plane. It binds the data link (a
 * ROUTER the edges connect to), keeps the sessions the edges attach with the
 * ports their devices expose, listens on each session's intranet address for
 * those ports (TCP and UDP), checks every server-initiated connection and
 * flow against the policy, carries them to the session's edge, makes the
 * devices' outbound connections from their intranet addresses, and writes
 * an audit line for every connection it accepted, refused or made.
 *
 * Link streams are relayed with the credit windows of rb_pump: nothing here
 * buffers more than a window per stream. */
#ifndef FORWARDER_PLANE_H
#define FORWARDER_PLANE_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "rb_buf.h"
#include "rb_loop.h"
#include "rb_zmq.h"

typedef struct plane plane_t;

typedef struct {
    const char *endpoint;    /* the data link, tcp:// or ipc:// */
    const rb_curve_t *curve; /* CURVE server keys; may be disabled */
    const char *forwarder_id;
    const char *serve_cidrs;     /* comma-separated: sessions whose address is here */
    const char *policy_file;     /* "" or NULL: deny every server-initiated connection */
    unsigned connect_timeout_ms; /* outbound connects */
    unsigned udp_idle_s;         /* a UDP flow ends after this long without datagrams */
    unsigned max_streams;        /* per session */
    uint64_t max_held_per_session; /* bytes kept for internal peers not reading */
    /* The event stream's view of the cluster, for sources that are devices
     * and names under the suffix: user of an intranet address (NULL when
     * none) and that user's groups (*groups borrowed until the next event),
     * address of a fully qualified name (0 or -1). */
    const char *(*user_of_ip)(void *arg, uint32_t ip, const char *const **groups,
                              size_t *ngroups);
    int (*ip_of_name)(void *arg, const char *name, uint32_t *ip);
    void *lookup_arg;
} plane_config_t;

/* Binds the link, loads the policy. cfg itself (not a copy) and its
 * strings are borrowed for the plane's life. NULL on error (logged). */
plane_t *plane_new(rb_loop_t *loop, const plane_config_t *cfg);
/* Accepts NULL; clears the pointer. Resets every stream. */
void plane_destroy(plane_t **p);
/* The session ended (event stream): close its listeners and streams. */
void plane_session_down(plane_t *p, const char *session_id, const char *reason);
/* Reads the policy file again; live connections stay. 0, or -1 (the old
 * policy stays, the error is logged). */
int plane_reload_policy(plane_t *p);
/* Counts for /status (data_link_port: the bound tcp:// port, else -1). */
void plane_status_json(const plane_t *p, rb_buf_t *json);

#endif
