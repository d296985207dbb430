/* rb_frame: the tunnel's framing (docs/protocol.md). Every frame is a
 * 12-byte header, then the payload:
 *   u8 type | u8 flags | u16 reserved (0) | u32 stream id | u32 length
 * all big-endian. CONTROL frames carry one rb.tunnel.TunnelControl and have
 * stream id 0; DATA frames carry raw stream bytes; DATAGRAM frames carry one
 * UDP datagram of a flow; WINDOW frames grant a stream's sender more credit
 * (a u32 increment, non-zero). Anything else is malformed and closes the
 * connection. The same header frames the edge-forwarder data link
 * (proto/edge_forwarder.proto). */
#ifndef RB_FRAME_H
#define RB_FRAME_H
#include <stddef.h>
#include <stdint.h>
#include "rb_buf.h"
#include "tunnel.pb-c.h"

#define RB_TUNNEL_VERSION 2
/* 3: a forwarder keeps what a device sends before its connect; 4: Relayed,
 * the session's credit (RB_SESSION_WINDOW); 5: datagrams under credit too
 * (RB_LINK_DATAGRAM_WINDOW, Relayed from the forwarder) */
#define RB_LINK_VERSION 5
#define RB_FRAME_HEADER 12
#define RB_FRAME_MAX_CONTROL (16u * 1024)
#define RB_FRAME_MAX_DATA (64u * 1024)

enum { RB_FRAME_CONTROL = 1, RB_FRAME_DATA = 2, RB_FRAME_DATAGRAM = 3, RB_FRAME_WINDOW = 4 };
/* Every stream starts with this much credit in each direction, on every hop:
 * a sender may have this many bytes unacknowledged by WINDOW frames. */
#define RB_STREAM_WINDOW (2048u * 1024)
/* What a forwarder may have sent towards one session's device and not yet
 * heard taken by its tunnel (Relayed, proto/edge_forwarder.proto), all
 * streams together: a device that stops reading makes its edge hold at
 * most this, not a window per stream. */
/* 4 MiB, not more: a deeper queue at the edge goes cold in the caches
 * (bench/dataplane.sh, 100 streams of one session: 2.2 Gbit/s at 8 MiB,
 * 4.0 at 4 MiB; one stream the same). */
#define RB_SESSION_WINDOW (4u * 1024 * 1024)
/* DATA flags */
#define RB_FRAME_FIN 0x01u
#define RB_FRAME_RST 0x02u

typedef struct {
    uint8_t type;
    uint8_t flags;
    uint32_t stream_id;
    uint32_t len;
    const uint8_t *payload;   /* borrowed from the parsed buffer */
} rb_frame_t;

/* Parses one frame at the start of buf. Returns the bytes it spans (> 0), 0
 * when more bytes are needed, or -1 when malformed (*why set to a static
 * reason). Checks the header before the payload arrives, so an oversized
 * length is refused without buffering it. */
long rb_frame_parse(const uint8_t *buf, size_t len, rb_frame_t *out, const char **why);
/* Judges a header alone (the first RB_FRAME_HEADER bytes of hdr): 0 with
 * *out filled (payload NULL), or -1 with *why set. */
int rb_frame_parse_header(const uint8_t *hdr, rb_frame_t *out, const char **why);
/* The payload of a WINDOW frame granting inc (non-zero). */
void rb_frame_window_payload(uint8_t out[4], uint32_t inc);
/* The increment of a WINDOW frame (checked by the parser: 4 bytes). */
uint32_t rb_frame_window(const rb_frame_t *f);
/* Writes a header into dst[RB_FRAME_HEADER]. */
void rb_frame_header(uint8_t *dst, uint8_t type, uint8_t flags, uint32_t stream_id, uint32_t len);
/* Appends a complete CONTROL frame holding msg. 0, or -1 when too large. */
int rb_frame_append_control(rb_buf_t *out, const Rb__Tunnel__TunnelControl *msg);
/* Unpacks a CONTROL frame. NULL when malformed or when no message is set.
 * Free with rb__tunnel__tunnel_control__free_unpacked(m, NULL). */
Rb__Tunnel__TunnelControl *rb_frame_control(const rb_frame_t *f);

#endif
