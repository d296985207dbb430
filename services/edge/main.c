/* reachback-edge: the TLS tunnel edge. Flags and config, build the service,
 * run the loop until SIGINT/SIGTERM, then let devices hear why. */
#include <signal.h>
#include <stddef.h>
#include <stdlib.h>
#include <sys/resource.h>

#include "edge.h"
#include "rb_cli.h"
#include "rb_log.h"
#include "rb_loop.h"
#include "rb_zmq.h"

static void s_on_signal(rb_loop_t *loop, int signo, void *arg)
{
    edge_t **edge = arg;
    rb_info("edge_signal", "signal %d", signo);
    edge_shutdown(*edge);
}

/* Every device is a descriptor: take all the kernel allows this process. */
static void s_raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
            rb_warn("edge_rlimit", "cannot raise the descriptor limit");
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
        rb_info("edge_rlimit", "descriptor limit %llu", (unsigned long long)rl.rlim_cur);
}

int main(int argc, char **argv)
{
    edge_config_t cfg = {0};
    rb_cli_t cli = {"edge", "the TLS tunnel edge: devices log on here", edge_options, &cfg,
                    edge_config_validate};
    rb_cli_run(&cli, argc, argv);
    /* A device that vanishes mid-write must not kill the edge. */
    signal(SIGPIPE, SIG_IGN);
    s_raise_nofile();
    rb_loop_t *loop = rb_loop_new();
    if (!loop) rb_fatal("edge_loop", "cannot create the event loop");
    /* Signals are blocked before the password threads start, so that they
     * inherit the mask and every signal reaches the loop. */
    edge_t *edge = NULL;
    if (rb_loop_add_signal(loop, SIGINT, s_on_signal, &edge) < 0 ||
        rb_loop_add_signal(loop, SIGTERM, s_on_signal, &edge) < 0)
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
