// part: lib
/* Fuzz target for the tunnel framing: arbitrary bytes as a TLS stream would
 * deliver them, parsed frame by frame the way the edge does, with every
 * CONTROL frame's payload unpacked as protobuf. */
#include <stddef.h>
#include <stdint.h>

#include "rb_frame.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t off = 0;
    for (;;) {
        rb_frame_t f;
        const char *why = NULL;
        long n = rb_frame_parse(data + off, size - off, &f, &why);
        if (n <= 0) break;
        /* The parser's promises: the frame lies inside the input, and its
         * size is the header plus a payload within the type's limit. */
        if ((size_t)n > size - off || (size_t)n != RB_FRAME_HEADER + f.len ||
            f.payload != data + off + RB_FRAME_HEADER)
            __builtin_trap();
        if (f.type == RB_FRAME_CONTROL) {
            Rb__Tunnel__TunnelControl *m = rb_frame_control(&f);
            if (m) rb__tunnel__tunnel_control__free_unpacked(m, NULL);
        }
        off += (size_t)n;
    }
    return 0;
}
