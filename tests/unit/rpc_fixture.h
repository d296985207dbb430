/* rpc_fixture.h: a caller that vanishes, for the unit tests of services that
 * answer rb_rpc requests. Header-only, like redis_fixture.h (include that
 * first: it brings rbt_wait and rbt_sleep_ms). */
#ifndef RB_RPC_FIXTURE_H
#define RB_RPC_FIXTURE_H
#include <protobuf-c/protobuf-c.h>
#include <zmq.h>
#include "rb_metrics.h"
#include "rb_zmq.h"

static rb_metric_t *rbt_unsent_counter;
static double rbt_unsent_before;

static RBT_UNUSED bool rbt_reply_unsent(void *arg)
{
    (void)arg;
    return rb_metric_value(rbt_unsent_counter) > rbt_unsent_before;
}

/* Sends msg as a request to the ROUTER at ep from a DEALER that disconnects
 * before the answer can come back, as a restarting broker or edge does; the
 * loop does not run meanwhile, so the request waits unread at the server's
 * socket. Then runs loop until the server's reply is counted as unsent.
 * Returns whether it was. */
static RBT_UNUSED bool rbt_caller_vanishes(rb_loop_t *loop, const char *ep,
                                           const ProtobufCMessage *msg)
{
    rbt_unsent_counter = rb_counter("reachback_rpc_unsent_replies_total", NULL, "");
    rbt_unsent_before = rb_metric_value(rbt_unsent_counter);
    uint8_t body[256];
    size_t n = protobuf_c_message_get_packed_size(msg);
    if (n > sizeof(body)) return false;
    protobuf_c_message_pack(msg, body);
    rb_curve_t none = {0};
    void *dealer = rb_zsock_connect(ZMQ_DEALER, ep, &none, NULL);
    if (!dealer) return false;
    bool sent = zmq_send(dealer, "req-id-1", 8, ZMQ_SNDMORE) == 8 &&
                zmq_send(dealer, body, n, 0) == (int)n;
    rbt_sleep_ms(200); /* ZeroMQ's I/O threads carry the request over */
    rb_zsock_close(&dealer);
    rbt_sleep_ms(100);
    return sent && rbt_wait(loop, rbt_reply_unsent, NULL, 2000);
}

#endif
