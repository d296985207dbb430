/* rb_pb: protobuf-c packing and size-capped unpacking of peer messages. */
#ifndef RB_PB_H
#define RB_PB_H
#include <protobuf-c/protobuf-c.h>
#include <stddef.h>
#include <stdint.h>
#include "rb_buf.h"

/* Version carried in every inter-service envelope; bump on any change. */
#define RB_PROTO_VERSION 1
/* No inter-service message may be larger (snapshots of 100k sessions fit). */
#define RB_PB_MAX_MESSAGE (32u * 1024 * 1024)

/* Appends the packed message to out. 0 or -1. */
int rb_pb_pack(const ProtobufCMessage *msg, rb_buf_t *out);
/* Unpacks data as desc, refusing more than max bytes. Returns NULL (and logs
 * event "bad_message" naming peer) when too large or malformed. Free with
 * protobuf_c_message_free_unpacked(msg, NULL). */
ProtobufCMessage *rb_pb_unpack(const ProtobufCMessageDescriptor *desc, const uint8_t *data,
                               size_t len, size_t max, const char *peer);

#endif
