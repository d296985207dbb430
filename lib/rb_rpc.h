/* rb_rpc: asynchronous request/reply over DEALER (client) and ROUTER
 * (server) sockets driven by the loop. Every ZeroMQ message is two frames:
 * [request id: 8 bytes][body: a protobuf envelope]; the ROUTER sees the
 * peer's routing id in front. Calls have a deadline and optional retries
 * (only for idempotent requests); a reply that arrives after its call timed
 * out is dropped and counted. Never a blocking REQ socket. */
#ifndef RB_RPC_H
#define RB_RPC_H
#include <protobuf-c/protobuf-c.h>
#include <stddef.h>
#include <stdint.h>
#include "rb_loop.h"

typedef struct rb_rpc_client rb_rpc_client_t;
typedef struct rb_rpc_server rb_rpc_server_t;
typedef struct rb_rpc_req rb_rpc_req_t;

/* body is NULL (len 0) when the call timed out after its retries. The body
 * is only valid during the call. */
typedef void(rb_rpc_reply_fn)(void *arg, const uint8_t *body, size_t len);

/* Takes ownership of dealer (a connected DEALER socket). NULL on error. */
rb_rpc_client_t *rb_rpc_client_new(rb_loop_t *loop, void *dealer, const char *peer_name);
/* Accepts NULL; clears the pointer; pending calls are dropped unanswered. */
void rb_rpc_client_destroy(rb_rpc_client_t **cli);
/* Sends msg; fn is called exactly once, with the reply or NULL after
 * timeout_ms x (retries + 1). Returns 0, or -1 when it could not send (fn is
 * not called then). */
int rb_rpc_call(rb_rpc_client_t *cli, const ProtobufCMessage *msg, unsigned timeout_ms,
                unsigned retries, rb_rpc_reply_fn *fn, void *arg);
/* Forgets pending calls whose arg is arg, without calling back. */
void rb_rpc_cancel(rb_rpc_client_t *cli, void *arg);
size_t rb_rpc_pending(const rb_rpc_client_t *cli);

/* Called for each request; answer now or later with rb_rpc_reply (or drop it
 * with rb_rpc_req_free). body is only valid during the call. */
typedef void(rb_rpc_handler_fn)(void *arg, rb_rpc_req_t *req, const uint8_t *body, size_t len);

/* Takes ownership of router (a bound ROUTER socket). NULL on error. */
rb_rpc_server_t *rb_rpc_server_new(rb_loop_t *loop, void *router, rb_rpc_handler_fn *fn,
                                   void *arg);
void rb_rpc_server_destroy(rb_rpc_server_t **srv);
/* A caller (one routing id) may have this many requests, of this many body
 * bytes, waiting for their answers; past that the server drops its requests
 * unanswered (logged, counted in reachback_rpc_shed_requests_total) until
 * some are answered, so one flooding peer cannot take the server's memory
 * or its backend from the others. */
#define RB_RPC_PEER_MAX_REQS 8192
#define RB_RPC_PEER_MAX_BYTES (16u << 20)
void rb_rpc_server_limit(rb_rpc_server_t *srv, size_t max_reqs, size_t max_bytes);
/* Sends the reply and frees req. 0, or -1 when it could not be sent (logged
 * and counted here). req is freed either way: do not touch it afterwards. */
int rb_rpc_reply(rb_rpc_req_t *req, const ProtobufCMessage *msg);
void rb_rpc_req_free(rb_rpc_req_t *req);
/* Printable peer routing id, for logs. */
const char *rb_rpc_req_peer(const rb_rpc_req_t *req);

#endif
