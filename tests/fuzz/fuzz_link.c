// part: lib
/* Fuzz target for the edge-forwarder data link (rb_link): the input is one
 * link message, its first 12 bytes the header part and the rest the payload
 * part. The header is judged alone, as rb_link_recv does, and checked
 * against the bytes and the stream parser; a CONTROL payload of the right
 * length is unpacked as a LinkControl. */
#include <stddef.h>
#include <stdint.h>

#include "rb_frame.h"
#include "rb_link.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint32_t s_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* The rules of rb_frame.h, restated: what an accepted header must obey. */
static int s_header_ok(const rb_frame_t *f)
{
    switch (f->type) {
    case RB_FRAME_CONTROL:
        return f->stream_id == 0 && f->flags == 0 && f->len > 0 && f->len <= RB_FRAME_MAX_CONTROL;
    case RB_FRAME_DATA:
        return f->stream_id != 0 && (f->flags & ~(RB_FRAME_FIN | RB_FRAME_RST)) == 0 &&
               f->len <= RB_FRAME_MAX_DATA;
    case RB_FRAME_DATAGRAM:
        return f->stream_id != 0 && f->flags == 0 && f->len <= RB_FRAME_MAX_DATA;
    case RB_FRAME_WINDOW:
        return f->stream_id != 0 && f->flags == 0 && f->len == 4;
    default:
        return 0;
    }
}

/* A CONTROL payload is unpacked as the services do; what it holds is
 * protobuf-c's business (strings with NUL bytes, for one, do not survive a
 * repack), so only our promise is checked: accepted means a message is set. */
static void s_control(const rb_frame_t *f)
{
    Rb__Fwd__LinkControl *m = rb_link_control(f);
    if (!m) return;
    if (m->msg_case == RB__FWD__LINK_CONTROL__MSG__NOT_SET) __builtin_trap();
    rb__fwd__link_control__free_unpacked(m, NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    rb_frame_t s;
    long n = rb_frame_parse(data, size, &s, NULL);
    if (size < RB_FRAME_HEADER) {
        if (n != 0) __builtin_trap(); /* a short header waits for more */
        return 0;
    }
    const uint8_t *payload = data + RB_FRAME_HEADER;
    size_t plen = size - RB_FRAME_HEADER;

    rb_frame_t f;
    const char *why = NULL;
    if (rb_frame_parse_header(data, &f, &why) < 0) {
        if (!why || n != -1) __builtin_trap();
        return 0;
    }
    /* The fields are the header's bytes, and they obey the rules. */
    if (f.type != data[0] || f.flags != data[1] || data[2] != 0 || data[3] != 0 ||
        f.stream_id != s_be32(data + 4) || f.len != s_be32(data + 8) || f.payload != NULL ||
        !s_header_ok(&f))
        __builtin_trap();

    /* The stream parser agrees: it waits for a payload that is not all
     * there, refuses a zero window, and otherwise takes header + len. */
    if (plen < f.len) {
        if (n != 0) __builtin_trap();
        return 0;
    }
    if (f.type == RB_FRAME_WINDOW && s_be32(payload) == 0) {
        if (n != -1) __builtin_trap();
        return 0;
    }
    if (n != (long)(RB_FRAME_HEADER + f.len) || s.type != f.type || s.flags != f.flags ||
        s.stream_id != f.stream_id || s.len != f.len || s.payload != payload)
        __builtin_trap();

    /* On the link the payload part is exactly as long as the header says. */
    if (plen != f.len) return 0;
    f.payload = plen ? payload : NULL;
    if (f.type == RB_FRAME_WINDOW && rb_frame_window(&f) != s_be32(payload)) __builtin_trap();
    if (f.type == RB_FRAME_CONTROL) s_control(&f);
    /* Only a CONTROL frame is a LinkControl. */
    if (f.type != RB_FRAME_CONTROL && rb_link_control(&f) != NULL) __builtin_trap();
    return 0;
}
