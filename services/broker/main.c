/* reachback-broker: the session broker (see broker.h). */
#include <stdio.h>
#include <stdlib.h>
#include "broker.h"
#include "rb_cli.h"
#include "rb_log.h"
#include "rb_loop.h"
#include "rb_status.h"
#include "rb_zmq.h"

int main(int argc, char **argv)
{
    broker_config_t cfg = {0};
    rb_cli_t cli = {.service = "broker",
                    .summary = "session broker (sessions in Redis, events to subscribers)",
                    .opts = broker_options,
                    .cfg = &cfg,
                    .validate = broker_config_validate};
    int rc = 1;
    rb_cli_run(&cli, argc, argv);
    rb_loop_t *loop = rb_cli_loop();
    rb_cli_zap(loop, cfg.curve_secret_key, cfg.curve_allowed_keys);

    broker_t *b = broker_new(loop, &cfg);
    rb_status_t *st = b ? rb_status_new(loop, cfg.status_listen, "broker") : NULL;
    if (b && st) {
        rb_status_set_ready(st, broker_ready, b);
        rb_status_set_info(st, broker_status_info, b);
        if (cfg.admin_token[0]) rb_status_set_admin_token(st, cfg.admin_token);
        if (broker_admin_attach(b, st) != 0) rb_fatal("startup_failed", "cannot add admin routes");
        rc = rb_loop_run(loop) == 0 ? 0 : 1;
    } else {
        rb_error("startup_failed", "could not start; see the messages above");
    }
    rb_status_destroy(&st);
    broker_destroy(&b);
    rb_zmq_term();
    rb_loop_destroy(&loop);
    rb_config_free(broker_options, &cfg);
    return rc;
}
