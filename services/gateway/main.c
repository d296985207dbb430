/* reachback-gateway: an edge and a forwarder in one process, their data
 * link over inproc:// (see gateway.h). Flags and both configs, then run. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway.h"
#include "rb_cli.h"

static void s_usage(FILE *out)
{
    fprintf(out, "Usage: reachback-gateway --edge-config FILE --forwarder-config FILE "
                 "[--check-config]\n"
                 "       reachback-gateway --help | --version\n\n"
                 "An edge and a forwarder in one process, their data link over inproc://: one\n"
                 "ZeroMQ hop without I/O threads, for the lowest connection latency when both\n"
                 "run on one host. Each keeps its own config, status port, metrics and log\n"
                 "name (\"svc\"). SIGHUP reloads the forwarder's policy; SIGINT/SIGTERM stop\n"
                 "the edge as reachback-edge stops, then the forwarder.\n\n"
                 "Options:\n"
                 "  --edge-config FILE       reachback-edge's configuration\n"
                 "  --forwarder-config FILE  reachback-forwarder's configuration; its\n"
                 "                           data_endpoint lists inproc://NAME (and may list\n"
                 "                           tcp:// endpoints for edges elsewhere), and the\n"
                 "                           edge's forwarder_endpoints names inproc://NAME\n"
                 "  --check-config           validate both, print them and exit\n"
                 "  --help                   show this help\n"
                 "  --version                show the version\n\n"
                 "The keys of both files: reachback-edge --help, reachback-forwarder --help.\n"
                 "Logs: one JSON object per line on stdout.\n");
}

int main(int argc, char **argv)
{
    const char *edge_path = NULL, *fwd_path = NULL;
    bool check = false;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--edge-config") == 0 && i + 1 < argc) {
            edge_path = argv[++i];
        } else if (strcmp(argv[i], "--forwarder-config") == 0 && i + 1 < argc) {
            fwd_path = argv[++i];
        } else if (strcmp(argv[i], "--check-config") == 0) {
            check = true;
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            s_usage(stdout);
            return 0;
        } else if (strcmp(argv[i], "--version") == 0) {
            printf("reachback-gateway %s\n", RB_VERSION);
            return 0;
        } else {
            fprintf(stderr, "reachback-gateway: unknown argument '%s' (try --help)\n", argv[i]);
            return 2;
        }
    }
    if (!edge_path || !fwd_path) {
        fprintf(stderr, "reachback-gateway: needs --edge-config and --forwarder-config "
                        "(try --help)\n");
        return 2;
    }
    edge_config_t ecfg = {0};
    forwarder_config_t fcfg = {0};
    rb_cli_t edge = {"edge", NULL, edge_options, &ecfg, edge_config_validate};
    rb_cli_t fwd = {"forwarder", NULL, forwarder_options, &fcfg, forwarder_config_validate};
    rb_log_level_t edge_level, fwd_level;
    rb_cli_load(&edge, edge_path, &edge_level);
    rb_cli_load(&fwd, fwd_path, &fwd_level);
    char err[512];
    int rc = 0;
    if (gateway_check(&ecfg, &fcfg, err, sizeof err) < 0) {
        fprintf(stderr, "reachback-gateway: config error: %s\n", err);
        rc = 1;
    } else if (check) {
        printf("# reachback-gateway: configuration OK in %s and %s\n# edge (%s)\n", edge_path,
               fwd_path, edge_path);
        rb_config_print(stdout, edge_options, &ecfg);
        printf("# forwarder (%s)\n", fwd_path);
        rb_config_print(stdout, forwarder_options, &fcfg);
    } else {
        rb_log_init("gateway", edge_level);
        rb_cli_heap_setup();
        rc = gateway_run(&ecfg, edge_level, &fcfg, fwd_level) == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
    }
    rb_config_free(edge_options, &ecfg);
    rb_config_free(forwarder_options, &fcfg);
    return rc;
}
