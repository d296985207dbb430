/* rb_config: one table of option descriptors drives a service's config.
 *
 * File syntax: "key = value" lines; '#' starts a comment line; blank lines
 * are ignored; values may be wrapped in double quotes. Order of precedence:
 * built-in default < file < environment variable RB_<SERVICE>_<KEY> (upper
 * case, e.g. RB_DNS_TTL=5). Unknown keys, bad values and missing required
 * keys are errors naming file, line and key. */
#ifndef RB_CONFIG_H
#define RB_CONFIG_H
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

typedef enum { RB_OPT_STRING, RB_OPT_INT, RB_OPT_BOOL } rb_opt_type_t;

typedef struct {
    const char *key;
    rb_opt_type_t type;
    const char *def;   /* default, as text; NULL means required */
    size_t offset;     /* of the field: char * (owned), long, or bool */
    long min, max;     /* RB_OPT_INT range, inclusive */
    const char *help;
} rb_option_t;

/* The table ends with an entry whose key is NULL. */
#define RB_OPT_END {NULL, RB_OPT_STRING, NULL, 0, 0, 0, NULL}

/* Options every service has; its config struct must have
 * char *log_level and char *status_listen. */
#define RB_OPT_COMMON(type)                                                              \
    {"log_level", RB_OPT_STRING, "info", offsetof(type, log_level), 0, 0,                \
     "debug, info, warn or error"},                                                      \
    {"status_listen", RB_OPT_STRING, "127.0.0.1:0", offsetof(type, status_listen), 0, 0, \
     "host:port of the status HTTP server (/healthz /readyz /metrics /status)"}

/* Fills cfg from defaults, then path (may be NULL), then the environment.
 * Returns 0, or -1 with a message "FILE:LINE: key 'K': reason" in err. */
int rb_config_load(const rb_option_t *opts, void *cfg, const char *service, const char *path,
                   char *err, size_t errlen);
/* Sets one option from text, as the file would. Returns 0 or -1 (err set). */
int rb_config_set(const rb_option_t *opts, void *cfg, const char *key, const char *value,
                  char *err, size_t errlen);
/* Frees the strings rb_config_load allocated. */
void rb_config_free(const rb_option_t *opts, void *cfg);
/* Writes the option table (key, default, env name, help) for --help. */
void rb_config_print_help(FILE *out, const rb_option_t *opts, const char *service);
/* Writes the effective config as key = value lines (for --check-config). */
void rb_config_print(FILE *out, const rb_option_t *opts, const void *cfg);

#endif
