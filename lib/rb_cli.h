/* rb_cli: the command line every service shares:
 *   --config FILE    read FILE (default: none, built-in defaults + env)
 *   --check-config   validate the config, print it, exit 0 (or 1 naming the
 *                    file, line and key that is wrong)
 *   --help, --version */
#ifndef RB_CLI_H
#define RB_CLI_H
#include <stdbool.h>
#include <stddef.h>
#include "rb_config.h"
#include "rb_log.h"
#include "rb_loop.h"

typedef struct {
    const char *service;   /* "edge": names the binary reachback-edge */
    const char *summary;   /* one line for --help */
    const rb_option_t *opts;
    void *cfg;
    /* Cross-field checks after loading; 0 or -1 with err set. May be NULL. */
    int (*validate)(void *cfg, char *err, size_t errlen);
} rb_cli_t;

/* Parses argv, loads the config, sets up logging (log_level). Returns 0 when
 * the service should run; exits itself for --help, --version,
 * --check-config and errors (status 2 for usage, 1 for bad config). */
int rb_cli_run(rb_cli_t *cli, int argc, char **argv);

/* The pieces of rb_cli_run, for a binary with a command line of its own
 * (reachback-gateway loads two services' configs): rb_cli_load loads and
 * validates path (NULL: defaults and environment) into cli->cfg and parses
 * its log_level, exiting with status 1 and a message naming the file, line
 * and key on error; rb_cli_heap_setup tunes the heap for stream buffers. */
void rb_cli_load(const rb_cli_t *cli, const char *path, rb_log_level_t *level);
void rb_cli_heap_setup(void);

/* The service's loop, with SIGINT and SIGTERM stopping it (logged as event
 * "shutdown"). Exits through rb_fatal when it cannot be made. */
rb_loop_t *rb_cli_loop(void);
/* When curve_secret_key is set, starts the ZAP handler that admits the keys
 * in allowed_keys; exits through rb_fatal on a bad allow list. Call before
 * binding any CURVE socket: without a ZAP handler libzmq admits everyone. */
void rb_cli_zap(rb_loop_t *loop, const char *curve_secret_key, const char *allowed_keys);

/* glibc gives the kernel back only the top of the heap by itself: an edge
 * that carried 10,000 sessions kept their ~170 MB after they ended. A
 * service tells rb_cli_heap_follow how many of its big things (sessions,
 * connections) are live, now and then; once that fell by RB_HEAP_TRIM_DROP
 * from its peak (or to zero), the freed heap goes back to the kernel
 * (malloc_trim) and the peak starts again. Returns true when it trimmed. */
#define RB_HEAP_TRIM_DROP 1000
typedef struct {
    size_t peak;
} rb_heap_follow_t;
bool rb_cli_heap_follow(rb_heap_follow_t *h, size_t live);

#endif
