/* reachback-forwarder: the ALG/NAT forwarder (see forwarder.h). Flags and
 * config, build the service, run the loop until SIGINT/SIGTERM. */
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "forwarder.h"
#include "rb_cli.h"
#include "rb_log.h"
#include "rb_loop.h"
#include "rb_zmq.h"

/* inproc:// links threads of one process: only reachback-gateway has the
 * edge that could reach such an endpoint. */
static int s_validate(void *cfg, char *err, size_t errlen)
{
    if (forwarder_config_validate(cfg, err, errlen) < 0) return -1;
    if (!strstr(((forwarder_config_t *)cfg)->data_endpoint, "inproc://")) return 0;
    snprintf(err, errlen,
             "key 'data_endpoint': inproc:// endpoints work only in "
             "reachback-gateway");
    return -1;
}

int main(int argc, char **argv)
{
    forwarder_config_t cfg = {0};
    rb_cli_t cli = {"forwarder", "ALG/NAT forwarder between the internal network and the edges",
                    forwarder_options, &cfg, s_validate};
    rb_cli_run(&cli, argc, argv);
    rb_loop_t *loop = rb_cli_loop();
    /* SIGHUP (reload the policy) reaches the loop through a signalfd; it
     * must be blocked before any thread exists (ZeroMQ's, the resolver's),
     * or one of them takes it and the default action ends the process. */
    sigset_t hup;
    sigemptyset(&hup);
    sigaddset(&hup, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &hup, NULL);
    rb_cli_zap(loop, cfg.curve_secret_key, cfg.curve_allowed_keys);
    forwarder_t *fw = forwarder_new(loop, &cfg);
    if (!fw) rb_fatal("forwarder_start", "cannot start the forwarder; see the messages above");
    int rc = rb_loop_run(loop);
    forwarder_destroy(&fw);
    rb_zmq_term();
    rb_loop_destroy(&loop);
    rb_config_free(forwarder_options, &cfg);
    return rc == 0 ? 0 : 1;
}
