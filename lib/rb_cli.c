/* rb_cli: the command line all services share. */
#include "rb_cli.h"

#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rb_log.h"
#include "rb_zmq.h"

static void s_usage(const rb_cli_t *cli, FILE *out)
{
    fprintf(out,
            "Usage: reachback-%s [--config FILE] [--check-config]\n"
            "       reachback-%s --help | --version\n\n"
            "%s\n\n"
            "Options:\n"
            "  --config FILE    read the configuration from FILE\n"
            "  --check-config   validate the configuration, print it and exit\n"
            "                   (exit 1 naming file, line and key when it is wrong)\n"
            "  --help           show this help\n"
            "  --version        show the version\n\n",
            cli->service, cli->service, cli->summary);
    rb_config_print_help(out, cli->opts, cli->service);
    fprintf(out, "\nLogs: one JSON object per line on stdout.\n");
}

/* log_level is in every option table (RB_OPT_COMMON); find its value. */
static const char *s_log_level(const rb_cli_t *cli)
{
    for (const rb_option_t *o = cli->opts; o->key; o++)
        if (strcmp(o->key, "log_level") == 0)
            return *(char **)((char *)cli->cfg + o->offset);
    return "info";
}

void rb_cli_load(const rb_cli_t *cli, const char *path, rb_log_level_t *level)
{
    char err[512];
    if (rb_config_load(cli->opts, cli->cfg, cli->service, path, err, sizeof err) < 0 ||
        (cli->validate && cli->validate(cli->cfg, err, sizeof err) < 0)) {
        fprintf(stderr, "reachback-%s: config error: %s\n", cli->service, err);
        exit(1);
    }
    if (rb_log_level_parse(s_log_level(cli), level) < 0) {
        fprintf(stderr,
                "reachback-%s: config error: %s: key 'log_level': '%s' is not one of "
                "debug, info, warn, error\n",
                cli->service, path ? path : "(no file)", s_log_level(cli));
        exit(1);
    }
}

void rb_cli_heap_setup(void)
{
    /* Stream data lives in 64-256 KiB buffers that one thread allocates
     * and another frees (ZeroMQ's I/O thread): with glibc's defaults each
     * free gave the heap's top back to the kernel and the next allocation
     * faulted it in again (25,000 page faults in 4 s of one bulk stream at
     * the forwarder). Keep a few MiB; setting this turns off glibc's own
     * threshold tuning, so large buffers go to the heap as that tuning
     * would end up doing (its ceiling), not to mmap for every use. */
    mallopt(M_TRIM_THRESHOLD, 8 * 1024 * 1024);
    mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024);
}

int rb_cli_run(rb_cli_t *cli, int argc, char **argv)
{
    const char *path = NULL;
    bool check = false;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--config") == 0 && i + 1 < argc) {
            path = argv[++i];
        } else if (strncmp(argv[i], "--config=", 9) == 0) {
            path = argv[i] + 9;
        } else if (strcmp(argv[i], "--check-config") == 0) {
            check = true;
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            s_usage(cli, stdout);
            exit(0);
        } else if (strcmp(argv[i], "--version") == 0) {
            printf("reachback-%s %s\n", cli->service, RB_VERSION);
            exit(0);
        } else {
            fprintf(stderr, "reachback-%s: unknown argument '%s' (try --help)\n", cli->service,
                    argv[i]);
            exit(2);
        }
    }
    rb_log_level_t level;
    rb_cli_load(cli, path, &level);
    if (check) {
        printf("# reachback-%s: configuration OK%s%s\n", cli->service, path ? " in " : "",
               path ? path : "");
        rb_config_print(stdout, cli->opts, cli->cfg);
        exit(0);
    }
    rb_log_init(cli->service, level);
    rb_cli_heap_setup();
    return 0;
}

bool rb_cli_heap_follow(rb_heap_follow_t *h, size_t live)
{
    if (live > h->peak) h->peak = live;
    if (h->peak == 0 || (h->peak - live < RB_HEAP_TRIM_DROP && live > 0)) return false;
    h->peak = live;
    malloc_trim(0);
    return true;
}

static void s_on_stop_signal(rb_loop_t *loop, int signo, void *arg)
{
    rb_info("shutdown", "signal %d: stopping", signo);
    rb_loop_stop(loop);
}

rb_loop_t *rb_cli_loop(void)
{
    rb_loop_t *loop = rb_loop_new();
    if (!loop) rb_fatal("startup_failed", "cannot create the event loop");
    if (rb_loop_add_signal(loop, SIGINT, s_on_stop_signal, NULL) < 0 ||
        rb_loop_add_signal(loop, SIGTERM, s_on_stop_signal, NULL) < 0)
        rb_fatal("startup_failed", "cannot watch SIGINT and SIGTERM");
    return loop;
}

void rb_cli_zap(rb_loop_t *loop, const char *curve_secret_key, const char *allowed_keys)
{
    char err[256];
    if (curve_secret_key && *curve_secret_key &&
        rb_zap_start(loop, allowed_keys, err, sizeof err) != 0)
        rb_fatal("startup_failed", "CURVE allow list: %s", err);
}
