/* A reachback-dns server for benchmarks: serves <suffix> on 127.0.0.1 with
 * N users (user0 .. userN-1, addresses from 127.77.0.1 up) fed through the
 * same session-up path the event stream uses, and no brokers. Stops on
 * SIGINT/SIGTERM.  usage: dns_zone_driver PORT N [SUFFIX] */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

#include "dns_server.h"
#include "rb_cidr.h"
#include "rb_log.h"
#include "rb_loop.h"

static void s_stop(rb_loop_t *loop, int signo, void *arg) { rb_loop_stop(loop); }

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s PORT N [SUFFIX]\n", argv[0]);
        return 2;
    }
    char listen[64];
    snprintf(listen, sizeof listen, "127.0.0.1:%s", argv[1]);
    long n = atol(argv[2]);
    rb_log_init("dns", RB_LOG_WARN);
    rb_loop_t *loop = rb_loop_new();
    rb_loop_add_signal(loop, SIGINT, s_stop, NULL);
    rb_loop_add_signal(loop, SIGTERM, s_stop, NULL);
    dns_config_t cfg = {
        .log_level = "warn", .status_listen = "", .listen = listen,
        .suffix = argc > 3 ? argv[3] : "vpn.lab", .ttl = 30, .pool = "127.77.0.0/16",
        .ns_address = "127.0.0.1", .upstream = "", .events_endpoints = "",
        .snapshot_endpoints = "", .broker_public_key = "", .curve_secret_key = "", .dns_id = "bench",
    };
    dns_server_t *srv = dns_server_new(loop, &cfg);
    if (!srv) return 1;
    for (long i = 0; i < n; i++) {
        char label[32], ip[16];
        snprintf(label, sizeof label, "user%ld", i);
        rb_ip_format(0x7f4d0001u + (uint32_t)i, ip);
        Rb__Events__Session s = RB__EVENTS__SESSION__INIT;
        s.session_id = label;
        s.label = label;
        s.ip = ip;
        if (dns_server_session_up(srv, &s) < 0) return 1;
    }
    printf("ready %zu\n", dns_server_records(srv));
    fflush(stdout);
    rb_loop_run(loop);
    dns_server_destroy(&srv);
    rb_loop_destroy(&loop);
    return 0;
}
