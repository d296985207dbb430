/* rb_link: frames on the edge-forwarder data link (proto/edge_forwarder.proto).
 * A ZeroMQ message is [routing id, on a ROUTER][12-byte header][payload];
 * the header is the tunnel's (rb_frame.h) and is judged by the same rules,
 * and the payload part must be exactly as long as the header says. The
 * link's sockets have no high-water mark: credit bounds what can be queued
 * (the streams' windows, the session's RB_SESSION_WINDOW towards the device
 * for DATA and datagrams alike, RB_LINK_DATAGRAM_WINDOW for the device's
 * datagrams), and a ROUTER never drops (ZMQ_ROUTER_MANDATORY). */
#ifndef RB_LINK_H
#define RB_LINK_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <zmq.h>
#include "edge_forwarder.pb-c.h"
#include "rb_frame.h"

/* Routing ids are edge ids; longer ones are refused. */
#define RB_LINK_RID_MAX 64
/* Bytes an Open may carry as early data (it is a control message, at most
 * RB_FRAME_MAX_CONTROL with everything else). */
#define RB_LINK_EARLY_MAX 4096
/* A session's datagrams from its device that its edge may have on the link
 * before the forwarder reports them taken (Relayed): past it the edge drops
 * them, so a forwarder that falls behind, or stops, costs the edge at most
 * this per session. The forwarder reports every eighth of it. */
#define RB_LINK_DATAGRAM_WINDOW (1024u * 1024)

typedef struct {
    zmq_msg_t part[3];
    int nparts;
    uint8_t rid[RB_LINK_RID_MAX]; /* ROUTER: the sender's routing id (bytes) */
    size_t rid_len;
    char rid_text[2 * RB_LINK_RID_MAX + 1]; /* printable: as is, or hex */
} rb_link_msg_t;

/* Sets the link's socket options (no HWM either way, no linger); for
 * rb_zsock_bind_with / rb_zsock_connect_as, before the socket has pipes. */
void rb_link_setup(void *sock);
/* Sends one frame; rid is NULL (rid_len 0) on a DEALER. Routing ids are
 * bytes (libzmq makes binary ones for peers that set none). 0, or -1 with
 * errno (a ROUTER says EHOSTUNREACH when no such peer is connected). */
int rb_link_send(void *sock, const void *rid, size_t rid_len, uint8_t type, uint8_t flags,
                 uint32_t id, const void *data, size_t len);
int rb_link_send_control(void *sock, const void *rid, size_t rid_len,
                         const Rb__Fwd__LinkControl *m);
/* Entries in one Relayed: packed, an id and a count take at most 10
 * bytes, so the message stays under RB_FRAME_MAX_CONTROL. A session with
 * more streams to report sends several. */
#define RB_LINK_RELAYED_MAX 1024
/* Fills c (and m, which c points to) as a Relayed for n streams (at most
 * RB_LINK_RELAYED_MAX): link id ids[i] took bytes[i]. Both sides of the
 * link send one. */
void rb_link_relayed(Rb__Fwd__LinkControl *c, Rb__Fwd__Relayed *m, uint32_t *ids, uint32_t *bytes,
                     size_t n);
/* Receives one message without waiting. 1: *f describes it (payload valid
 * until rb_link_msg_close); 0: nothing to read; -1: a malformed message was
 * read and dropped (*why says why; rid is filled when known). Close m after
 * 1 and -1. */
int rb_link_recv(void *sock, bool router, rb_link_msg_t *m, rb_frame_t *f, const char **why);
void rb_link_msg_close(rb_link_msg_t *m);
/* Unpacks a CONTROL frame's LinkControl; NULL when malformed or empty. */
Rb__Fwd__LinkControl *rb_link_control(const rb_frame_t *f);

#endif
