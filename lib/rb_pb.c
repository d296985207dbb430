/* rb_pb: protobuf-c packing into rb_buf and size-capped unpacking of
 * messages from peers. */
#include "rb_pb.h"

#include <stdbool.h>

#include "rb_log.h"

typedef struct {
    ProtobufCBuffer base;   /* first: protobuf-c calls us with its address */
    rb_buf_t *out;
    bool failed;
} rb_pb_sink_t;

static void s_sink_append(ProtobufCBuffer *buffer, size_t len, const uint8_t *data)
{
    rb_pb_sink_t *s = (rb_pb_sink_t *)buffer;
    if (!s->failed && rb_buf_append(s->out, data, len) < 0) s->failed = true;
}

int rb_pb_pack(const ProtobufCMessage *msg, rb_buf_t *out)
{
    if (!msg) return -1;
    size_t size = protobuf_c_message_get_packed_size(msg);
    if (size > RB_PB_MAX_MESSAGE) {
        rb_error("pb_pack", "%s of %zu bytes exceeds the %u-byte message limit",
                 msg->descriptor->name, size, RB_PB_MAX_MESSAGE);
        return -1;
    }
    size_t before = out->len;
    rb_pb_sink_t sink = {.base = {.append = s_sink_append}, .out = out, .failed = false};
    protobuf_c_message_pack_to_buffer(msg, &sink.base);
    if (sink.failed || out->len - before != size) {
        rb_error("pb_pack", "%s: out of memory", msg->descriptor->name);
        out->len = before;
        if (out->data) out->data[before] = '\0';
        return -1;
    }
    return 0;
}

ProtobufCMessage *rb_pb_unpack(const ProtobufCMessageDescriptor *desc, const uint8_t *data,
                               size_t len, size_t max, const char *peer)
{
    if (len > max) {
        rb_warn("bad_message", "%s from %s: %zu bytes exceeds the %zu-byte limit", desc->name,
                peer ? peer : "?", len, max);
        return NULL;
    }
    ProtobufCMessage *m = protobuf_c_message_unpack(desc, NULL, len, data);
    if (!m) rb_warn("bad_message", "%s from %s: %zu bytes do not parse", desc->name,
                    peer ? peer : "?", len);
    return m;
}
