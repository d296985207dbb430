/* reachback-forwarder: the ALG/NAT forwarder (see forwarder.h). Flags and
 * config, build the service, run the loop until SIGINT/SIGTERM. */
#include <signal.h>
#include <stddef.h>

#include "forwarder.h"
#include "rb_cli.h"
#include "rb_log.h"
#include "rb_loop.h"
#include "rb_zmq.h"

static void s_on_signal(rb_loop_t *loop, int signo, void *arg)
{
    rb_info("forwarder_stopping", "signal %d", signo);
    rb_loop_stop(loop);
}

int main(int argc, char **argv)
{
    forwarder_config_t cfg = {0};
    rb_cli_t cli = {"forwarder", "ALG/NAT forwarder between the internal network and the edges",
                    forwarder_options, &cfg, forwarder_config_validate};
    rb_cli_run(&cli, argc, argv);
    rb_loop_t *loop = rb_loop_new();
    if (!loop) rb_fatal("forwarder_loop", "cannot create the event loop");
    if (rb_loop_add_signal(loop, SIGINT, s_on_signal, NULL) < 0 ||
        rb_loop_add_signal(loop, SIGTERM, s_on_signal, NULL) < 0)
        rb_fatal("forwarder_signals", "cannot watch SIGINT/SIGTERM");
    forwarder_t *fw = forwarder_new(loop, &cfg);
    if (!fw) rb_fatal("forwarder_start", "cannot start the forwarder; see the messages above");
    int rc = rb_loop_run(loop);
    forwarder_destroy(&fw);
    rb_zmq_term();
    rb_loop_destroy(&loop);
    rb_config_free(forwarder_options, &cfg);
    return rc == 0 ? 0 : 1;
}
