/* gateway: an edge and a forwarder in one process, linked over inproc://.
 *
 * Why: between two processes every message on the data link crosses
 * ZeroMQ's I/O thread on each side, two more thread wake-ups each way than
 * a socket; a connect + first byte crosses that link twice. Inside one
 * process inproc:// hands the message straight to the other service's
 * thread. The services stay what they are: each runs its own loop on its
 * own thread, with its own config, status port, metrics and log name.
 *
 * Threads and signals: the forwarder runs on a thread of its own and takes
 * SIGHUP (policy reload); the edge runs on the caller's thread and takes
 * SIGINT and SIGTERM, shuts down as reachback-edge does, then stops the
 * forwarder. */
#ifndef GATEWAY_H
#define GATEWAY_H
#include <stddef.h>

#include "edge.h"
#include "forwarder.h"
#include "rb_log.h"

/* Cross-config checks: the forwarder's data_endpoint lists one inproc://
 * endpoint (and may list tcp:// ones, for edges in other processes), and
 * the edge's forwarder_endpoints names it and no other inproc:// one.
 * 0, or -1 with err set. */
int gateway_check(const edge_config_t *edge, const forwarder_config_t *fwd, char *err,
                  size_t errlen);

/* Runs both until SIGINT/SIGTERM. Call from the main thread before any
 * other thread exists. Returns 0, or -1 when either could not start. */
int gateway_run(const edge_config_t *edge, rb_log_level_t edge_level, const forwarder_config_t *fwd,
                rb_log_level_t fwd_level);

#endif
