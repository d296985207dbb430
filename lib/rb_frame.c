/* rb_frame: parsing and building tunnel frames (layout in rb_frame.h and
 * docs/protocol.md). The parser only reads through a bounded cursor and
 * judges the header before the payload is there, so a peer cannot make the
 * edge buffer more than one maximum-size frame. */
#include "rb_frame.h"

#include "rb_cursor.h"

int rb_frame_parse_header(const uint8_t *hdr, rb_frame_t *out, const char **why)
{
    static const char *unused;
    if (!why) why = &unused;
    rb_cursor_t c;
    rb_cur_init(&c, hdr, RB_FRAME_HEADER);
    uint8_t type = rb_cur_u8(&c);
    uint8_t flags = rb_cur_u8(&c);
    uint16_t reserved = rb_cur_u16(&c);
    uint32_t stream_id = rb_cur_u32(&c);
    uint32_t plen = rb_cur_u32(&c);

    /* Reserved bits must be zero so that a later version can give them a
     * meaning without old peers silently misreading the frame. */
    if (reserved != 0) {
        *why = "reserved bits set";
        return -1;
    }
    switch (type) {
    case RB_FRAME_CONTROL:
        if (stream_id != 0) {
            *why = "control frame with a stream id";
            return -1;
        }
        if (flags != 0) {
            *why = "flags on a control frame";
            return -1;
        }
        if (plen == 0) {
            *why = "empty control frame";
            return -1;
        }
        if (plen > RB_FRAME_MAX_CONTROL) {
            *why = "control frame too large";
            return -1;
        }
        break;
    case RB_FRAME_DATA:
    case RB_FRAME_DATAGRAM:
    case RB_FRAME_WINDOW:
        if (stream_id == 0) {
            *why = "data frame on stream 0";
            return -1;
        }
        if (type == RB_FRAME_DATA && (flags & ~(RB_FRAME_FIN | RB_FRAME_RST)) != 0) {
            *why = "unknown data flags";
            return -1;
        }
        if (type != RB_FRAME_DATA && flags != 0) {
            *why = "flags on a datagram or window frame";
            return -1;
        }
        if (plen > RB_FRAME_MAX_DATA) {
            *why = "data frame too large";
            return -1;
        }
        if (type == RB_FRAME_WINDOW && plen != 4) {
            *why = "window frame not 4 bytes";
            return -1;
        }
        break;
    default:
        *why = "unknown frame type";
        return -1;
    }
    out->type = type;
    out->flags = flags;
    out->stream_id = stream_id;
    out->len = plen;
    out->payload = NULL;
    return 0;
}

long rb_frame_parse(const uint8_t *buf, size_t len, rb_frame_t *out, const char **why)
{
    if (len < RB_FRAME_HEADER) return 0;
    rb_frame_t f;
    if (rb_frame_parse_header(buf, &f, why) < 0) return -1;
    if (len - RB_FRAME_HEADER < f.len) return 0;
    if (f.type == RB_FRAME_WINDOW && rb_frame_window(&(rb_frame_t){.len = 4,
                                                   .payload = buf + RB_FRAME_HEADER}) == 0) {
        if (why) *why = "window increment of zero";
        return -1;
    }
    f.payload = buf + RB_FRAME_HEADER;
    *out = f;
    return (long)(RB_FRAME_HEADER + f.len);
}

void rb_frame_window_payload(uint8_t out[4], uint32_t inc)
{
    out[0] = (uint8_t)(inc >> 24);
    out[1] = (uint8_t)(inc >> 16);
    out[2] = (uint8_t)(inc >> 8);
    out[3] = (uint8_t)inc;
}

uint32_t rb_frame_window(const rb_frame_t *f)
{
    if (f->len != 4 || !f->payload) return 0;
    const uint8_t *p = f->payload;
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

void rb_frame_header(uint8_t *dst, uint8_t type, uint8_t flags, uint32_t stream_id, uint32_t len)
{
    dst[0] = type;
    dst[1] = flags;
    dst[2] = 0;
    dst[3] = 0;
    dst[4] = (uint8_t)(stream_id >> 24);
    dst[5] = (uint8_t)(stream_id >> 16);
    dst[6] = (uint8_t)(stream_id >> 8);
    dst[7] = (uint8_t)stream_id;
    dst[8] = (uint8_t)(len >> 24);
    dst[9] = (uint8_t)(len >> 16);
    dst[10] = (uint8_t)(len >> 8);
    dst[11] = (uint8_t)len;
}

int rb_frame_append_control(rb_buf_t *out, const Rb__Tunnel__TunnelControl *msg)
{
    size_t n = rb__tunnel__tunnel_control__get_packed_size(msg);
    /* An empty message would be refused by the peer's parser, and so would
     * one over the limit: fail here rather than send a frame that kills the
     * connection. */
    if (n == 0 || n > RB_FRAME_MAX_CONTROL) return -1;
    uint8_t frame[RB_FRAME_HEADER + RB_FRAME_MAX_CONTROL];
    rb_frame_header(frame, RB_FRAME_CONTROL, 0, 0, (uint32_t)n);
    rb__tunnel__tunnel_control__pack(msg, frame + RB_FRAME_HEADER);
    return rb_buf_append(out, frame, RB_FRAME_HEADER + n);
}

Rb__Tunnel__TunnelControl *rb_frame_control(const rb_frame_t *f)
{
    if (f->type != RB_FRAME_CONTROL || f->len == 0 || f->len > RB_FRAME_MAX_CONTROL) return NULL;
    Rb__Tunnel__TunnelControl *m = rb__tunnel__tunnel_control__unpack(NULL, f->len, f->payload);
    if (!m) return NULL;
    if (m->msg_case == RB__TUNNEL__TUNNEL_CONTROL__MSG__NOT_SET) {
        rb__tunnel__tunnel_control__free_unpacked(m, NULL);
        return NULL;
    }
    return m;
}
