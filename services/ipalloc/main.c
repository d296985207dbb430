/* reachback-ipalloc: leases intranet addresses to sessions (see ipalloc.h). */
#include <stdio.h>
#include <stdlib.h>
#include "ipalloc.h"
#include "rb_cli.h"
#include "rb_log.h"
#include "rb_loop.h"
#include "rb_status.h"
#include "rb_zmq.h"

int main(int argc, char **argv)
{
    ipalloc_config_t cfg = {0};
    rb_cli_t cli = {.service = "ipalloc",
                    .summary = "intranet IP address allocator (leases in Redis)",
                    .opts = ipalloc_options,
                    .cfg = &cfg,
                    .validate = ipalloc_config_validate};
    int rc = 1;
    rb_cli_run(&cli, argc, argv);
    rb_loop_t *loop = rb_cli_loop();
    rb_cli_zap(loop, cfg.curve_secret_key, cfg.curve_allowed_keys);

    ipalloc_t *ia = ipalloc_new(loop, &cfg);
    rb_status_t *st = ia ? rb_status_new(loop, cfg.status_listen, "ipalloc") : NULL;
    if (ia && st) {
        rb_status_set_ready(st, ipalloc_ready, ia);
        rb_status_set_info(st, ipalloc_status_info, ia);
        rc = rb_loop_run(loop) == 0 ? 0 : 1;
    } else {
        rb_error("startup_failed", "could not start; see the messages above");
    }
    rb_status_destroy(&st);
    ipalloc_destroy(&ia);
    rb_zmq_term();
    rb_loop_destroy(&loop);
    rb_config_free(ipalloc_options, &cfg);
    return rc;
}
