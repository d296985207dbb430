/* reachback-dns: the authoritative DNS server for the users' names. Flags
 * and config, build the server, run the loop until SIGINT/SIGTERM. */
#include <stddef.h>
#include <stdlib.h>

#include "dns_server.h"
#include "rb_cli.h"
#include "rb_config.h"
#include "rb_log.h"
#include "rb_loop.h"
#include "rb_zmq.h"

static const rb_option_t s_options[] = {
    RB_OPT_COMMON(dns_config_t),
    {"listen", RB_OPT_STRING, "127.0.0.1:5353", offsetof(dns_config_t, listen), 0, 0,
     "host:port for DNS over UDP and TCP"},
    {"suffix", RB_OPT_STRING, NULL, offsetof(dns_config_t, suffix), 0, 0,
     "the users' zone: <label>.<suffix> names each logged-on user"},
    {"ttl", RB_OPT_INT, "30", offsetof(dns_config_t, ttl), 0, 86400,
     "TTL of every record, and the negative-answer TTL (seconds)"},
    {"pool", RB_OPT_STRING, "", offsetof(dns_config_t, pool), 0, 0,
     "comma-separated CIDRs of the address pool: the reverse zones served"},
    {"ns_address", RB_OPT_STRING, "127.0.0.1", offsetof(dns_config_t, ns_address), 0, 0,
     "address of ns.<suffix>, the zone's name server"},
    {"upstream", RB_OPT_STRING, "", offsetof(dns_config_t, upstream), 0, 0,
     "host:port to forward other names to; empty answers them REFUSED"},
    {"events_endpoints", RB_OPT_STRING, "", offsetof(dns_config_t, events_endpoints), 0, 0,
     "comma-separated broker PUB endpoints of the session event stream"},
    {"snapshot_endpoints", RB_OPT_STRING, "", offsetof(dns_config_t, snapshot_endpoints), 0, 0,
     "comma-separated broker snapshot endpoints"},
    {"broker_public_key", RB_OPT_STRING, "", offsetof(dns_config_t, broker_public_key), 0, 0,
     "key file holding the brokers' CURVE public key"},
    {"curve_secret_key", RB_OPT_STRING, "", offsetof(dns_config_t, curve_secret_key), 0, 0,
     "our CURVE secret key file; empty for links in the clear (ipc://)"},
    {"dns_id", RB_OPT_STRING, "dns", offsetof(dns_config_t, dns_id), 0, 0,
     "this instance's name in the brokers' logs"},
    RB_OPT_END,
};

int main(int argc, char **argv)
{
    dns_config_t cfg = {0};
    rb_cli_t cli = {"dns", "authoritative DNS for the names of logged-on users", s_options, &cfg,
                    dns_config_validate};
    rb_cli_run(&cli, argc, argv);
    rb_loop_t *loop = rb_cli_loop();
    dns_server_t *srv = dns_server_new(loop, &cfg);
    if (!srv) rb_fatal("dns_start", "cannot start the DNS server");
    int rc = rb_loop_run(loop);
    dns_server_destroy(&srv);
    rb_loop_destroy(&loop);
    rb_zmq_term();
    rb_config_free(s_options, &cfg);
    return rc == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
