/* reachback-edge: the TLS tunnel edge. Flags and config, build the service,
 * run the loop until SIGINT/SIGTERM, then let devices hear why. */
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edge.h"
#include "rb_cli.h"
#include "rb_log.h"
#include "rb_loop.h"
#include "rb_zmq.h"

/* inproc:// links threads of one process: only reachback-gateway has the
 * forwarder such an endpoint would name. */
static int s_validate(void *cfg, char *err, size_t errlen)
{
    if (edge_config_validate(cfg, err, errlen) < 0) return -1;
    if (!strstr(((edge_config_t *)cfg)->forwarder_endpoints, "inproc://")) return 0;
    snprintf(err, errlen,
             "key 'forwarder_endpoints': inproc:// endpoints work only in "
             "reachback-gateway");
    return -1;
}

int main(int argc, char **argv)
{
    edge_config_t cfg = {0};
    rb_cli_t cli = {"edge", "the TLS tunnel edge: devices log on here", edge_options, &cfg,
                    s_validate};
    rb_cli_run(&cli, argc, argv);
    /* A device that vanishes mid-write must not kill the edge. */
    signal(SIGPIPE, SIG_IGN);
    edge_raise_nofile();
    rb_loop_t *loop = rb_loop_new();
    if (!loop) rb_fatal("edge_loop", "cannot create the event loop");
    /* Signals are blocked before the password threads start, so that they
     * inherit the mask and every signal reaches the loop. */
    edge_t *edge = NULL;
    if (edge_watch_signals(loop, &edge) < 0)
        rb_fatal("edge_signals", "cannot watch SIGINT/SIGTERM");
    edge = edge_new(loop, &cfg);
    if (!edge) rb_fatal("edge_start", "cannot start the edge");
    int rc = rb_loop_run(loop);
    edge_destroy(&edge);
    rb_loop_destroy(&loop);
    rb_zmq_term();
    rb_config_free(edge_options, &cfg);
    return rc == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
